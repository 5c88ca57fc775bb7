//! The turmoil side of dftpd's environment seam ([`dftpd::env`]): sockets
//! are turmoil's simulated TCP, wall-clock time is the simulation's epoch
//! plus its elapsed time, and every host's RNG seed derives from the one
//! scenario seed. Only usable inside a turmoil host.
//!
//! turmoil binds only the unspecified address or loopback, so a bind to any
//! other IP (a slave's own data address, the address a master session was
//! reached on) becomes a bind to `0.0.0.0` on the same port; the host has
//! one address, so nothing else could have reached it anyway.
//!
//! Every simulated connection, the cluster's and the scripted clients',
//! is a [`SimStream`]: turmoil's stream with a send window one segment
//! smaller than turmoil's receive queue, so that turmoil never strands a
//! FIN (see [`WINDOW`]).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dftpd::env::{BoxStream, Clock, Env, Net, NetListener, NetStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wall-clock start of every simulation: 2026-01-01T00:00:00Z. Fixed, so
/// listings and MDTM replies are the same in every run.
pub const EPOCH_SECS: u64 = 1_767_225_600;

pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS)
}

/// turmoil TCP behind the dftpd `Net` trait.
pub struct SimNet;

/// Segments a writer may have in flight on one direction of a connection:
/// written, and not yet taken off turmoil's receive queue by the reader.
///
/// turmoil 0.7.2 gives each direction of a stream a receive queue (a
/// bounded channel) of `tcp_capacity` segments, and the writer as many
/// credits: a write (one segment, whatever its size) takes a credit, the
/// reader taking the segment off the queue gives it back. A FIN takes no
/// credit. Arriving segments go through a reorder buffer that is drained
/// into the queue, in sequence order, only when a segment arrives
/// (`StreamSocket::buffer` in turmoil's `host.rs`); a segment that finds
/// the queue full stays in the buffer. With all credits taken, the queue
/// holds `tcp_capacity` data segments when the FIN arrives: the FIN stays
/// in the buffer, the reader empties the queue, and since the writer has
/// shut down no later segment comes to drain the buffer again. The reader
/// waits for an EOF that never comes (an upload ended with `426 no
/// progress`, a download's client stalled). Whole windows arriving in one
/// step, as with a fixed `latency`, make this the usual case.
///
/// So every [`SimStream`] writes at most `WINDOW` segments ahead of its
/// reader, and turmoil's capacity is [`TCP_CAPACITY`], one more. That is
/// enough: the queue only ever holds segments written and not yet taken,
/// so at most `WINDOW` data segments, whatever the reader does; the FIN
/// comes after the last of them, so when the buffer reaches it the queue
/// has a free slot for it, however the writer ended (shutdown, drop, or
/// its host crashing, when nothing could wait for room any more). Data
/// segments never need more room than that. `WINDOW` is turmoil's default
/// capacity, so a writer blocks exactly where it did before (turmoil
/// blocked it at zero credits, also when the reader had gone away).
pub const WINDOW: usize = 64;

/// turmoil's per-stream capacity (`Builder::tcp_capacity`): [`WINDOW`]
/// data segments and the FIN.
pub const TCP_CAPACITY: usize = WINDOW + 1;

/// Listener side of [`SimNet`], and the scripted clients' active-mode
/// listener.
pub struct SimListener(turmoil::net::TcpListener);

/// A turmoil stream whose writer keeps at most [`WINDOW`] segments ahead of
/// the reader at the other end. Both ends share one [`Window`] per
/// direction; the accepting end creates them, the connecting end picks
/// them up (see [`HANDSHAKES`]).
pub struct SimStream {
    inner: turmoil::net::TcpStream,
    dirs: Arc<Mutex<[Window; 2]>>,
    /// 0 on the connecting end, 1 on the accepting end: this end writes
    /// into `dirs[side]` and reads from `dirs[1 - side]`.
    side: usize,
}

/// One direction of a connection: what its writer sent that its reader has
/// not yet taken off turmoil's queue.
#[derive(Default)]
struct Window {
    /// Stream offset where each such segment starts, oldest first. turmoil
    /// takes a segment off the queue when a read reaches its first byte, so
    /// a segment is taken once more bytes than its offset have been read.
    unread: VecDeque<u64>,
    written: u64,
    read: u64,
    /// The writer waiting for room.
    waker: Option<Waker>,
    /// The writer reset the connection ([`SimStream::reset`]): the reader
    /// gets `ConnectionReset` instead of the end of the stream, and its own
    /// writes fail.
    reset: bool,
}

thread_local! {
    /// Connections accepted whose connecting end has not yet resumed,
    /// keyed by the connecting end's address. turmoil completes a connect
    /// inside the listener's `accept` (the SYN-ACK is sent there and the
    /// accepted stream is built in the same poll), and the connecting task
    /// runs only later, so the accepting end always registers first. A
    /// connect given up after its accept leaves an entry that the next
    /// accept from that address replaces. Each simulation runs on one
    /// thread.
    static HANDSHAKES: RefCell<BTreeMap<SocketAddr, Arc<Mutex<[Window; 2]>>>> =
        const { RefCell::new(BTreeMap::new()) };
}

fn lock_dirs(dirs: &Mutex<[Window; 2]>) -> std::sync::MutexGuard<'_, [Window; 2]> {
    dirs.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimListener {
    pub async fn bind(addr: SocketAddr) -> io::Result<SimListener> {
        Ok(SimListener(
            turmoil::net::TcpListener::bind(bindable(addr)).await?,
        ))
    }

    /// The next connection; the window is set up in the same poll as
    /// turmoil's accept (see [`HANDSHAKES`]).
    pub async fn accept(&self) -> io::Result<(SimStream, SocketAddr)> {
        let (inner, peer) = self.0.accept().await?;
        let dirs = Arc::new(Mutex::new(<[Window; 2]>::default()));
        HANDSHAKES.with(|h| h.borrow_mut().insert(peer, dirs.clone()));
        Ok((
            SimStream {
                inner,
                dirs,
                side: 1,
            },
            peer,
        ))
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl SimStream {
    pub async fn connect(addr: SocketAddr) -> io::Result<SimStream> {
        let inner = turmoil::net::TcpStream::connect(addr).await?;
        let local = inner.local_addr()?;
        let dirs = HANDSHAKES
            .with(|h| h.borrow_mut().remove(&local))
            .expect("a simulated connection accepted by a listener other than SimListener");
        Ok(SimStream {
            inner,
            dirs,
            side: 0,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }

    /// Bytes the other end has written into this connection so far (read
    /// by this end or still in flight).
    pub fn peer_written(&self) -> u64 {
        lock_dirs(&self.dirs)[1 - self.side].written
    }

    /// Ends the connection as a reset (a process that dies or gives up
    /// mid-transfer): the other end's reads end with `ConnectionReset`
    /// once the close reaches it, and its writes fail. turmoil itself sends
    /// a reset only for a reader that drops unread data.
    pub fn reset(self) {
        let waker = {
            let mut dirs = lock_dirs(&self.dirs);
            dirs[self.side].reset = true;
            // The other end may wait for room towards us: it fails now.
            dirs[1 - self.side].waker.take()
        };
        drop(self);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

fn reset_error() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, "Connection reset by peer")
}

/// The address turmoil will accept for a bind of `addr`.
pub fn bindable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        addr
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port())
    }
}

#[async_trait]
impl Net for SimNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn NetListener>> {
        if !addr.is_ipv4() {
            // The simulated network is IPv4; turmoil panics on a mismatch.
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "IPv6 is not simulated",
            ));
        }
        Ok(Box::new(SimListener::bind(addr).await?))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        if !addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "IPv6 is not simulated",
            ));
        }
        Ok(Box::new(SimStream::connect(addr).await?))
    }
}

#[async_trait]
impl NetListener for SimListener {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (s, a) = SimListener::accept(self).await?;
        Ok((Box::new(s), a))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        SimListener::local_addr(self)
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n == 0 && buf.remaining() > 0 && matches!(r, Poll::Ready(Ok(()))) {
            // The end of the stream: a reset, if the peer reset it.
            if lock_dirs(&self.dirs)[1 - self.side].reset {
                return Poll::Ready(Err(reset_error()));
            }
        }
        if n > 0 {
            let waker = {
                let mut dirs = lock_dirs(&self.dirs);
                let w = &mut dirs[1 - self.side];
                w.read += n as u64;
                let mut taken = false;
                while w.unread.front().is_some_and(|&start| start < w.read) {
                    w.unread.pop_front();
                    taken = true;
                }
                if taken {
                    w.waker.take()
                } else {
                    None
                }
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
        r
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Pin::new(&mut self.inner).poll_write(cx, buf);
        }
        {
            let mut dirs = lock_dirs(&self.dirs);
            if dirs[1 - self.side].reset {
                return Poll::Ready(Err(reset_error()));
            }
            let w = &mut dirs[self.side];
            if w.unread.len() >= WINDOW {
                w.waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                let mut dirs = lock_dirs(&self.dirs);
                let w = &mut dirs[self.side];
                let start = w.written;
                w.unread.push_back(start);
                w.written += n as u64;
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl NetStream for SimStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        SimStream::local_addr(self)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        SimStream::peer_addr(self)
    }
}

/// Simulated wall clock: the fixed epoch plus simulated elapsed time.
pub struct SimClock;

impl Clock for SimClock {
    fn unix_now(&self) -> i64 {
        let since = turmoil::since_epoch().unwrap_or(Duration::from_secs(EPOCH_SECS));
        since.as_secs() as i64
    }
}

/// Seed for one host: the scenario seed mixed with the host name and how
/// many times the host has started, so a restarted slave draws new nonces
/// yet the whole run stays a function of the scenario seed.
pub fn host_seed(seed: u64, host: &str, incarnation: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(seed ^ h ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One step of splitmix64: a fast, well-mixed function of its input.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The environment of one simulated master or slave.
pub fn sim_env(seed: u64, host: &str, incarnation: u64) -> Env {
    Env::new(
        Arc::new(SimNet),
        Arc::new(SimClock),
        host_seed(seed, host, incarnation),
    )
}

/// Deterministic file content: `size` bytes from a splitmix64 stream.
pub fn content(seed: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut state = seed;
    while (out.len() as u64) < size {
        state = state.wrapping_add(1);
        let word = splitmix(state).to_le_bytes();
        let take = ((size - out.len() as u64) as usize).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_map_to_unspecified() {
        let a: SocketAddr = "192.168.0.3:50000".parse().unwrap();
        assert_eq!(bindable(a), "0.0.0.0:50000".parse().unwrap());
        let l: SocketAddr = "127.0.0.1:21".parse().unwrap();
        assert_eq!(bindable(l), l);
    }

    /// How a writer ends its side of the stream.
    #[derive(Clone, Copy)]
    enum End {
        Shutdown,
        Drop,
    }

    /// A client writes `segments` segments of 100 bytes and ends its side;
    /// the server starts reading 100 ms later, once everything has arrived.
    /// Every message takes exactly 10 ms, so each window of segments and
    /// the FIN after the last one arrive in one step. Returns what the
    /// server read before EOF, or `None` if no EOF came within 5 s.
    fn transfer(wrapped: bool, capacity: usize, segments: usize, end: End) -> Option<usize> {
        use std::cell::Cell;
        use std::rc::Rc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let got = Rc::new(Cell::new(None));
        let mut sim = turmoil::Builder::new()
            .tcp_capacity(capacity)
            .min_message_latency(Duration::from_millis(10))
            .max_message_latency(Duration::from_millis(10))
            .simulation_duration(Duration::from_secs(60))
            .build();
        let out = got.clone();
        sim.host("server", move || {
            let out = out.clone();
            async move {
                let addr: SocketAddr = "0.0.0.0:7000".parse().unwrap();
                let mut buf = Vec::new();
                let read = if wrapped {
                    let l = SimListener::bind(addr).await?;
                    let (mut s, _) = l.accept().await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await
                } else {
                    let l = turmoil::net::TcpListener::bind(addr).await?;
                    let (mut s, _) = l.accept().await?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await
                };
                out.set(Some(read.ok().map(|r| r.map(|_| buf.len()))));
                Ok(())
            }
        });
        sim.client("client", async move {
            let server = SocketAddr::new(turmoil::lookup("server"), 7000);
            let chunk = [7u8; 100];
            if wrapped {
                let mut s = SimStream::connect(server).await?;
                for _ in 0..segments {
                    s.write_all(&chunk).await?;
                }
                match end {
                    End::Shutdown => s.shutdown().await?,
                    End::Drop => drop(s),
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            } else {
                let mut s = turmoil::net::TcpStream::connect(server).await?;
                for _ in 0..segments {
                    s.write_all(&chunk).await?;
                }
                match end {
                    End::Shutdown => s.shutdown().await?,
                    End::Drop => drop(s),
                }
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Ok(())
        });
        sim.run().unwrap();
        got.take()
            .expect("the server finished")
            .map(|r| r.expect("read"))
    }

    /// The turmoil 0.7.2 defect `WINDOW` works around: a FIN that arrives
    /// while the receive queue is full stays in the reorder buffer for
    /// good. If this starts failing, turmoil has fixed it and `SimStream`'s
    /// window can go.
    #[test]
    fn turmoil_strands_a_fin_behind_a_full_queue() {
        assert_eq!(transfer(false, 64, 64, End::Shutdown), None);
        assert_eq!(transfer(false, 64, 64, End::Drop), None);
        // One segment less and the FIN fits.
        assert_eq!(transfer(false, 64, 63, End::Shutdown), Some(6300));
    }

    #[test]
    fn sim_streams_always_deliver_the_fin() {
        for segments in [1, WINDOW - 1, WINDOW, WINDOW + 1, 3 * WINDOW] {
            for end in [End::Shutdown, End::Drop] {
                assert_eq!(
                    transfer(true, TCP_CAPACITY, segments, end),
                    Some(segments * 100),
                    "{segments} segments"
                );
            }
        }
    }

    #[test]
    fn seeds_and_content_are_stable() {
        assert_eq!(host_seed(1, "s1", 0), host_seed(1, "s1", 0));
        assert_ne!(host_seed(1, "s1", 0), host_seed(1, "s2", 0));
        assert_ne!(host_seed(1, "s1", 0), host_seed(1, "s1", 1));
        assert_ne!(host_seed(1, "s1", 0), host_seed(2, "s1", 0));
        let c = content(7, 21);
        assert_eq!(c.len(), 21);
        assert_eq!(c, content(7, 21));
        assert_eq!(&content(7, 30)[..21], &c[..]);
        assert_ne!(content(8, 21), c);
    }
}

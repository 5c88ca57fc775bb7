//! Downloads on the real disk: `sendfile(2)` from a file to a TCP socket
//! under tokio's readiness API, and the byte count it reports when the data
//! connection fails part-way (a stream wrapper cannot count these bytes).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::storage::{on_data, StorageError};

/// `sendfile(2)` from `file` to the socket under tokio's readiness API:
/// the bytes never enter user space.
pub(super) async fn sendfile_all(
    tcp: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    offset: u64,
    end: u64,
    idle: Duration,
) -> Result<u64, StorageError> {
    let mut sent = 0u64;
    match sendfile_loop(tcp, file, offset, end, idle, &mut sent).await {
        Err(StorageError::Network(e)) => Err(StorageError::Network(io::Error::new(
            e.kind(),
            SentBefore {
                bytes: sent,
                source: e,
            },
        ))),
        other => other,
    }
}

/// A data connection that failed after `bytes` went out through
/// `sendfile(2)` (bytes a stream wrapper cannot count); displays as
/// `source`.
#[derive(Debug)]
pub struct SentBefore {
    pub bytes: u64,
    source: io::Error,
}

impl std::fmt::Display for SentBefore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for SentBefore {}

/// The bytes a failed send had moved, when the error says.
pub fn sent_before(e: &StorageError) -> Option<u64> {
    match e {
        StorageError::Network(e) => e
            .get_ref()
            .and_then(|x| x.downcast_ref::<SentBefore>())
            .map(|s| s.bytes),
        _ => None,
    }
}

/// Sends of at least this many bytes go out through blocking
/// `sendfile(2)` calls on a thread of tokio's blocking pool: the thread
/// sleeps in the kernel until the socket has room, like vsftpd's process,
/// instead of a wake-up through the event loop for every socket buffer
/// (about 10% on a 1 GiB RETR over loopback, bench.py).
const BLOCKING_FROM: i64 = 4 << 20;

/// Blocking sends at once at most; more wait on readiness as before.
const BLOCKING_MAX: usize = 64;

static BLOCKING: AtomicUsize = AtomicUsize::new(0);

/// One of the [`BLOCKING_MAX`] blocking sends.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        BLOCKING
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < BLOCKING_MAX).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        BLOCKING.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The socket in blocking mode with a send timeout of the data timeout,
/// for the sending thread; back to non-blocking (tokio's) when dropped.
/// Dropped early (the transfer was aborted and this future with it), it
/// shuts the socket down, which ends the thread's `sendfile(2)` at once.
struct BlockingSocket {
    sock: Arc<OwnedFd>,
    flags: i32,
    done: bool,
}

impl BlockingSocket {
    fn set(sock: Arc<OwnedFd>, idle: Duration) -> io::Result<BlockingSocket> {
        use nix::libc;
        let fd = sock.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        let timeout = libc::timeval {
            tv_sec: idle.as_secs().min(i32::MAX as u64) as libc::time_t,
            tv_usec: idle.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: setsockopt with a timeval of the size given.
        let r = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let guard = BlockingSocket {
            sock,
            flags,
            done: false,
        };
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(guard)
    }
}

impl Drop for BlockingSocket {
    fn drop(&mut self) {
        use nix::libc;
        let fd = self.sock.as_raw_fd();
        if !self.done {
            // SAFETY: shutdown(2) on a socket we hold a descriptor of.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        let zero = libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        };
        // SAFETY: as in `set`; restores what `set` changed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_SNDTIMEO,
                (&zero as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            libc::fcntl(fd, libc::F_SETFL, self.flags);
        }
    }
}

/// Sends `off..end` of `file` with blocking `sendfile(2)` calls on a
/// blocking-pool thread, which has its own descriptors of the socket and
/// the file (so nothing it uses is closed under it). Returns where it
/// stopped (before `end` only when the file shrank).
async fn blocking(
    tcp: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    off: i64,
    end: i64,
    idle: Duration,
    sent: &mut u64,
    slot: Slot,
) -> Result<i64, StorageError> {
    let sock = Arc::new(
        tcp.as_fd()
            .try_clone_to_owned()
            .map_err(StorageError::Network)?,
    );
    let file = file.try_clone().map_err(StorageError::Disk)?;
    let mut guard = BlockingSocket::set(sock.clone(), idle).map_err(StorageError::Network)?;
    let thread = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut o = off;
        while o < end {
            let chunk = ((end - o) as usize).min(1 << 30);
            match nix::sys::sendfile::sendfile64(sock.as_fd(), file.as_fd(), Some(&mut o), chunk) {
                Ok(0) => break, // the file shrank under us
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return (o, Some(e)),
            }
        }
        (o, None)
    });
    let (o, failed) = thread
        .await
        .map_err(|e| StorageError::Network(io::Error::other(e.to_string())))?;
    guard.done = true;
    drop(guard);
    *sent += (o - off) as u64;
    match failed {
        None => Ok(o),
        Some(nix::errno::Errno::EAGAIN) => Err(StorageError::Network(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no progress on the data connection for {} ms",
                idle.as_millis()
            ),
        ))),
        Some(nix::errno::Errno::EIO) => {
            Err(StorageError::Disk(io::Error::from(nix::errno::Errno::EIO)))
        }
        Some(e) => Err(StorageError::Network(io::Error::from(e))),
    }
}

async fn sendfile_loop(
    tcp: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    offset: u64,
    end: u64,
    idle: Duration,
    sent: &mut u64,
) -> Result<u64, StorageError> {
    let mut off = offset as i64;
    let end = end as i64;
    if end - off >= BLOCKING_FROM {
        if let Some(slot) = Slot::take() {
            off = blocking(tcp, file, off, end, idle, sent, slot).await?;
        }
    }
    while off < end {
        let chunk = ((end - off) as usize).min(1 << 30);
        on_data(idle, tcp.writable()).await?;
        let r = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(tcp.as_fd(), file.as_fd(), Some(&mut off), chunk)
                .map_err(io::Error::from)
        });
        match r {
            Ok(0) => break, // the file shrank under us
            Ok(n) => *sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc_eio) if libc_eio == nix::libc::EIO) => {
                return Err(StorageError::Disk(e))
            }
            Err(e) => return Err(StorageError::Network(e)),
        }
    }
    Ok(*sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use tokio::io::AsyncReadExt;

    /// A file of `len` bytes with a pattern that shows misplaced bytes.
    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&body).unwrap();
        (f, body)
    }

    /// A connected pair: (the sending side, the client's side).
    async fn pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (server, client)
    }

    fn nonblocking(tcp: &tokio::net::TcpStream) -> bool {
        // SAFETY: F_GETFL on a descriptor the stream owns.
        let flags = unsafe { nix::libc::fcntl(tcp.as_raw_fd(), nix::libc::F_GETFL) };
        flags & nix::libc::O_NONBLOCK != 0
    }

    /// A download long enough for the blocking thread arrives whole, and
    /// the socket is non-blocking again afterwards (tokio's again).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_long_download_arrives_whole_and_the_socket_is_tokios_again() {
        let len = (BLOCKING_FROM as usize) * 2 + 12_345;
        let (f, body) = file_of(len);
        let (mut server, mut client) = pair().await;
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let file = std::fs::File::open(f.path()).unwrap();
        let sent = sendfile_all(&mut server, &file, 100, len as u64, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(sent, len as u64 - 100);
        assert!(nonblocking(&server), "left in blocking mode");
        drop(server);
        assert!(reader.await.unwrap() == body[100..], "other bytes arrived");
    }

    /// A client that stops reading: the blocking send gives up after the
    /// data timeout, like the readiness loop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_blocking_send_to_a_client_that_stops_reading_times_out() {
        let len = 256 << 20;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let (mut server, _client) = pair().await;
        let file = std::fs::File::open(f.path()).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(20),
            sendfile_all(&mut server, &file, 0, len, Duration::from_millis(300)),
        )
        .await
        .expect("the send timed out by itself");
        match r {
            Err(StorageError::Network(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
                assert!(sent_before(&StorageError::Network(e)).unwrap() > 0);
            }
            other => panic!("{other:?}"),
        }
        assert!(nonblocking(&server));
    }

    /// An aborted transfer (its future dropped) stops the blocking thread
    /// at once (the socket is shut down and non-blocking again): the client
    /// sees the end of the data, not a stalled socket or the rest of it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_aborted_blocking_send_stops_its_thread() {
        let len = 256 << 20;
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(len).unwrap();
        let (mut server, mut client) = pair().await;
        let file = std::fs::File::open(f.path()).unwrap();
        let send = tokio::spawn(async move {
            let _ = sendfile_all(&mut server, &file, 0, len, Duration::from_secs(60)).await;
            server
        });
        // The client reads a little, then stops; the send blocks.
        let mut buf = vec![0u8; 1 << 16];
        client.read_exact(&mut buf).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        send.abort();
        assert!(send.await.unwrap_err().is_cancelled());
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            let mut n = 0u64;
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => return n,
                    Ok(k) => n += k as u64,
                }
            }
        })
        .await
        .expect("the socket was shut down, not left blocked");
        // Only what was in the socket buffers: the thread sent no more.
        assert!(drained < len / 4, "{drained} bytes after the abort");
    }
}

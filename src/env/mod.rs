//! The environment seam: everything master and slave logic takes from the
//! outside world — network, wall clock, randomness — comes through [`Env`],
//! and a slave's files through [`crate::slave::storage::Storage`].
//!
//! Two implementations exist: [`Env::real`] (tokio sockets, the system clock,
//! OS-seeded randomness), and the simulator's (turmoil sockets, simulated
//! time, one seed) in the `dftpd-sim` crate. Logic may use tokio's
//! `AsyncRead`/`AsyncWrite`, `tokio::time` and `tokio::spawn` (turmoil
//! simulates all three) but never `tokio::net`, `std::fs`, `SystemTime::now`
//! or an unseeded RNG directly: that is what keeps one seed one trace.

use std::future::Future as _;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};

mod idle;
mod relay;
pub use idle::{IdleListeners, Pooled};
pub use relay::{pump, pump_counted, relay_counted, Leg, Relay, RelayError, COPY_BUF};

/// A connected byte stream (control, data or link connection).
pub trait NetStream: AsyncRead + AsyncWrite + Send + Unpin {
    fn local_addr(&self) -> io::Result<SocketAddr>;
    fn peer_addr(&self) -> io::Result<SocketAddr>;
    /// The real TCP socket under this stream, when there is one: the fast
    /// path (`sendfile(2)`) needs its file descriptor. The simulator has none
    /// and so takes the copy loop.
    fn as_tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        None
    }
}

pub type BoxStream = Box<dyn NetStream>;

#[async_trait]
pub trait NetListener: Send + Sync {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)>;
    fn local_addr(&self) -> io::Result<SocketAddr>;
    /// Closes every connection already waiting to be accepted, without
    /// waiting for more; returns how many. A listener reused for another
    /// transfer starts with nothing made before it was handed out again.
    fn drain(&self) -> usize {
        let mut closed = 0;
        while let Some(Ok(_)) = poll_once(self.accept()) {
            closed += 1;
        }
        closed
    }
}

/// Polls `f` exactly once: its value if ready now, else `None`. (Not
/// `timeout(Duration::ZERO, ..)`: tokio rounds that deadline up to its next
/// 1 ms timer tick, which cost every RETR a millisecond.)
pub fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let f = std::pin::pin!(f);
    match f.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

#[async_trait]
pub trait Net: Send + Sync + 'static {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn NetListener>>;
    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream>;
    /// Connects from `local` (a slave's data address, so the peer sees
    /// the address it expects: another slave's listener accepts only it).
    /// Where `local` cannot be bound (not an address of this host, as
    /// behind NAT) the system picks, as with [`Net::connect`].
    async fn connect_from(
        &self,
        local: std::net::IpAddr,
        addr: SocketAddr,
    ) -> io::Result<BoxStream> {
        let _ = local;
        self.connect(addr).await
    }
    /// The ports this host hands out when asked for "any" (Linux:
    /// `net.ipv4.ip_local_port_range`), for [`bind_in_range`] to pick from
    /// itself; `None`: bind port 0 and let the system choose.
    fn any_port_range(&self) -> Option<(u16, u16)> {
        None
    }
}

/// Wall-clock time, for MDTM, listings and file times. Monotonic time and
/// sleeping go through `tokio::time`, which the simulator already controls.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since the Unix epoch.
    fn unix_now(&self) -> i64;
}

/// The world as seen by one master or one slave.
#[derive(Clone)]
pub struct Env {
    pub net: Arc<dyn Net>,
    pub clock: Arc<dyn Clock>,
    rng: Arc<Mutex<StdRng>>,
    /// CPU-heavy calls go to the bounded [`CpuPool`] (production); the
    /// simulator runs them inline (no OS threads there).
    offload: bool,
}

impl Env {
    pub fn new(net: Arc<dyn Net>, clock: Arc<dyn Clock>, seed: u64) -> Env {
        Env {
            net,
            clock,
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(seed))),
            offload: false,
        }
    }

    /// Production: tokio sockets, the system clock, an OS-seeded RNG.
    pub fn real() -> Env {
        Env {
            net: Arc::new(TokioNet),
            clock: Arc::new(SystemClock),
            rng: Arc::new(Mutex::new(StdRng::from_entropy())),
            offload: true,
        }
    }

    /// Runs a CPU-heavy function (password hashing) without stalling the
    /// runtime's workers in production: on the bounded [`CpuPool`], so at
    /// most a few run at once however many sessions ask; the others wait
    /// in its queue (a closure each, a few hundred bytes).
    pub async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if self.offload {
            CpuPool::global().run(f).await
        } else {
            Some(f())
        }
    }

    pub fn unix_now(&self) -> i64 {
        self.clock.unix_now()
    }

    pub fn rng_u64(&self) -> u64 {
        self.with_rng(|r| r.next_u64())
    }

    pub fn rng_fill(&self, buf: &mut [u8]) {
        self.with_rng(|r| r.fill_bytes(buf))
    }

    /// A uniformly random value in `lo..=hi`.
    pub fn rng_range(&self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        self.with_rng(|r| r.gen_range(lo..=hi))
    }

    fn with_rng<T>(&self, f: impl FnOnce(&mut StdRng) -> T) -> T {
        // A poisoned lock only means another task panicked mid-draw; the RNG
        // state is still a valid RNG state.
        let mut guard = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut guard)
    }
}

/// Binds a listener on `ip` at a random port of `range` (inclusive), trying
/// other ports when one is taken. `range` of `(0, 0)` asks the system for any
/// free port. Random ports make data-port guessing harder (RFC 2577 §5).
pub async fn bind_in_range(
    env: &Env,
    ip: std::net::IpAddr,
    range: (u16, u16),
) -> io::Result<Box<dyn NetListener>> {
    let (mut lo, mut hi) = range;
    if lo == 0 || hi < lo {
        // "Any port". Not port 0: for port 0 Linux scans for a port with
        // no socket at all, and every finished data connection leaves one
        // in TIME_WAIT on its port for a minute; at a few thousand
        // transfers a second every port has some, and each bind cost the
        // slave over a millisecond (742 small files/s against 8,000). A
        // port named explicitly with SO_REUSEADDR binds over TIME_WAIT.
        match env.net.any_port_range() {
            Some((a, b)) if a > 0 && b >= a => (lo, hi) = (a, b),
            _ => return env.net.bind(SocketAddr::new(ip, 0)).await,
        }
    }
    let span = u64::from(hi - lo) + 1;
    let start = env.rng_range(0, span - 1);
    let attempts = span.min(64);
    let mut last_err = None;
    for i in 0..attempts {
        // Start at a random port, then walk: bounded attempts, no busy loop.
        let port = lo as u64 + (start + i * 7919) % span;
        match env.net.bind(SocketAddr::new(ip, port as u16)).await {
            Ok(l) => return Ok(l),
            Err(e) => last_err = Some(e),
        }
    }
    if range.0 == 0 {
        // "Any" really means any: the system's choice as a last resort.
        return env.net.bind(SocketAddr::new(ip, 0)).await;
    }
    Err(last_err.unwrap_or_else(|| io::Error::new(io::ErrorKind::AddrInUse, "no free port")))
}

/// The next connection on a server's listener, or `None` once `shutdown`
/// turns true. Accept errors (EMFILE and friends) are logged and backed off
/// briefly instead of spinning.
pub async fn next_connection(
    listener: &dyn NetListener,
    shutdown: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<(BoxStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return None,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(x) => return Some(x),
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Accepts one connection from `from` (any peer when `None`) within
/// `deadline`. Connections from other addresses are dropped and the listener
/// keeps waiting: a port thief cannot take the transfer (RFC 2577 §5).
pub async fn accept_from(
    listener: &dyn NetListener,
    from: Option<std::net::IpAddr>,
    deadline: std::time::Duration,
) -> io::Result<BoxStream> {
    let wait = async {
        // One line a second at most: a flood of refused connections must
        // not flood the log.
        let mut logged: Option<tokio::time::Instant> = None;
        let mut unlogged = 0u64;
        loop {
            let (stream, peer) = listener.accept().await?;
            match from {
                Some(ip) if peer.ip() != ip => {
                    let now = tokio::time::Instant::now();
                    if logged
                        .is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1))
                    {
                        tracing::warn!(%peer, expected = %ip, also_refused = unlogged,
                            "data connection from a foreign address refused");
                        logged = Some(now);
                        unlogged = 0;
                    } else {
                        unlogged += 1;
                    }
                }
                _ => return Ok(stream),
            }
        }
    };
    match tokio::time::timeout(deadline, wait).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no data connection in time",
        )),
    }
}

// ---------------------------------------------------------------------------
// The real implementation.

pub struct TokioNet;

struct TokioListener(tokio::net::TcpListener);

impl NetStream for tokio::net::TcpStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::local_addr(self)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::TcpStream::peer_addr(self)
    }
    fn as_tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        Some(self)
    }
}

#[async_trait]
impl NetListener for TokioListener {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        s.set_nodelay(true)?;
        Ok((Box::new(s), a))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
    /// Straight from the kernel's queue: tokio's `accept` would first ask
    /// its cached readiness, which may not yet know of the newest ones.
    #[cfg(target_os = "linux")]
    fn drain(&self) -> usize {
        use std::os::fd::AsRawFd;
        let fd = self.0.as_raw_fd();
        let mut closed = 0;
        loop {
            // SAFETY: a listening socket we own (non-blocking, as tokio
            // keeps it); no address is asked for; the accepted descriptor
            // is ours and closed at once.
            let c = unsafe {
                nix::libc::accept4(
                    fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    nix::libc::SOCK_CLOEXEC | nix::libc::SOCK_NONBLOCK,
                )
            };
            if c < 0 {
                match io::Error::last_os_error().raw_os_error() {
                    Some(nix::libc::EINTR | nix::libc::ECONNABORTED) => continue,
                    _ => return closed,
                }
            }
            // SAFETY: `c` was just returned by accept4 and is used nowhere else.
            unsafe { nix::libc::close(c) };
            closed += 1;
        }
    }
}

#[async_trait]
impl Net for TokioNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn NetListener>> {
        // SO_REUSEADDR so a restarted master or slave gets its port back
        // while old connections sit in TIME_WAIT.
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Box::new(TokioListener(socket.listen(1024)?)))
    }
    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
    async fn connect_from(
        &self,
        local: std::net::IpAddr,
        addr: SocketAddr,
    ) -> io::Result<BoxStream> {
        if local.is_unspecified() || local.is_ipv4() != addr.is_ipv4() {
            return self.connect(addr).await;
        }
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        if socket.bind(SocketAddr::new(local, 0)).is_err() {
            return self.connect(addr).await;
        }
        let s = socket.connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
    fn any_port_range(&self) -> Option<(u16, u16)> {
        static RANGE: std::sync::OnceLock<Option<(u16, u16)>> = std::sync::OnceLock::new();
        *RANGE.get_or_init(|| {
            let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
            let mut it = text.split_whitespace().map(str::parse::<u16>);
            match (it.next()?.ok()?, it.next()?.ok()?) {
                (a, b) if a > 0 && b >= a => Some((a, b)),
                _ => None,
            }
        })
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_now(&self) -> i64 {
        match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        }
    }
}

/// A clock that reads a fixed or manually advanced time (tests).
pub struct FixedClock(pub std::sync::atomic::AtomicI64);

impl Clock for FixedClock {
    fn unix_now(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// An in-memory stream with fixed addresses: one end of [`pipe`].
pub struct PipeStream {
    inner: tokio::io::DuplexStream,
    local: SocketAddr,
    peer: SocketAddr,
}

/// A connected pair of in-memory streams (`a` at `a_addr`, `b` at
/// `b_addr`): drivers tested without sockets.
pub fn pipe(a_addr: SocketAddr, b_addr: SocketAddr) -> (BoxStream, BoxStream) {
    let (a, b) = tokio::io::duplex(256 * 1024);
    (
        Box::new(PipeStream {
            inner: a,
            local: a_addr,
            peer: b_addr,
        }),
        Box::new(PipeStream {
            inner: b,
            local: b_addr,
            peer: a_addr,
        }),
    )
}

impl AsyncRead for PipeStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PipeStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl NetStream for PipeStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.peer)
    }
}

/// A stream whose writes are paced to `rate` bytes per second (a token
/// bucket refilled every 50 ms): copies between slaves leave room for
/// client transfers. Reads pass through. It hides the socket (`as_tcp`), so
/// a paced send takes the copy loop, not `sendfile`.
pub struct Paced {
    inner: BoxStream,
    rate: u64,
    tokens: u64,
    refill: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Paced {
    pub fn new(inner: BoxStream, rate: u64) -> Paced {
        let rate = rate.max(1);
        Paced {
            inner,
            rate,
            tokens: (rate / 20).max(1),
            refill: None,
        }
    }
}

impl AsyncRead for Paced {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Paced {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        while this.tokens == 0 {
            let sleep = this.refill.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50)))
            });
            match sleep.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    this.refill = None;
                    this.tokens = (this.rate / 20).max(1);
                }
            }
        }
        let n = buf.len().min(this.tokens as usize);
        match std::pin::Pin::new(&mut this.inner).poll_write(cx, &buf[..n]) {
            Poll::Ready(Ok(w)) => {
                this.tokens -= w as u64;
                Poll::Ready(Ok(w))
            }
            other => other,
        }
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl NetStream for Paced {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
}

type Job = Box<dyn FnOnce() + Send>;

thread_local! {
    /// Set on the [`CpuPool`]'s threads.
    static ON_POOL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// What jobs on this pool thread keep from one to the next
    /// ([`with_pool_scratch`]).
    static SCRATCH: std::cell::RefCell<Option<Box<dyn std::any::Any>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with a `T` that a [`CpuPool`] thread keeps from one job to the
/// next while jobs are queued (argon2's 19 MiB of working memory: mapped,
/// faulted in and zeroed once for a burst of logins, not once per login)
/// and drops as soon as its queue is empty, so the memory goes back to the
/// system between bursts. Elsewhere (the simulator runs jobs inline) `f`
/// gets a fresh `T`.
pub fn with_pool_scratch<T: Default + 'static, R>(f: impl FnOnce(&mut T) -> R) -> R {
    if !ON_POOL.with(|p| p.get()) {
        return f(&mut T::default());
    }
    let kept = SCRATCH.with(|s| s.borrow_mut().take());
    let mut value = kept
        .and_then(|b| b.downcast::<T>().ok())
        .unwrap_or_default();
    let r = f(&mut value);
    SCRATCH.with(|s| *s.borrow_mut() = Some(value));
    r
}

/// A fixed set of worker threads for CPU-heavy work (argon2 password
/// verification and hashing, 19 MiB of memory each at the default cost).
/// `spawn_blocking` would run every waiting login at once (up to 512
/// threads: 400 simultaneous PASS once took the master to 7.5 GB), so
/// concurrency is bounded by the number of cores (at most 4); waiting jobs
/// cost only their closure. Production only: the simulator runs such work
/// inline.
pub struct CpuPool {
    queue: Arc<JobQueue>,
    threads: usize,
}

/// The pool's waiting jobs. A worker waits on the condition variable,
/// which releases the lock: an idle worker never blocks another one that
/// finished a job from seeing the queue empty and freeing its scratch
/// (a blocking `recv` under a shared receiver's mutex did, and kept a
/// login's 19 MiB until the next login).
#[derive(Default)]
struct JobQueue {
    jobs: Mutex<std::collections::VecDeque<Job>>,
    ready: std::sync::Condvar,
}

impl JobQueue {
    /// The next job; frees this thread's scratch before it waits.
    fn next(&self) -> Job {
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = jobs.pop_front() {
            return job;
        }
        drop(jobs);
        // Nothing queued: what jobs kept goes back to the system before
        // this thread waits.
        SCRATCH.with(|s| s.borrow_mut().take());
        let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(job) = jobs.pop_front() {
                return job;
            }
            jobs = self.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn push(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(job);
        self.ready.notify_one();
    }
}

impl CpuPool {
    /// The process's pool, started on first use.
    pub fn global() -> &'static CpuPool {
        static POOL: std::sync::OnceLock<CpuPool> = std::sync::OnceLock::new();
        POOL.get_or_init(|| {
            let threads = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .clamp(1, 4);
            CpuPool::start(threads)
        })
    }

    fn start(threads: usize) -> CpuPool {
        // glibc raises its mmap threshold after the first large free, and
        // then keeps argon2's 19 MiB blocks in per-thread arenas for good.
        // A fixed threshold of 1 MiB keeps large blocks in mmap, so they go
        // back to the system as soon as a verification ends.
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only sets an allocator parameter.
        unsafe {
            nix::libc::mallopt(nix::libc::M_MMAP_THRESHOLD, 1 << 20);
        }
        let queue = Arc::new(JobQueue::default());
        for i in 0..threads {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("dftpd-cpu-{i}"))
                .spawn(move || {
                    ON_POOL.with(|p| p.set(true));
                    loop {
                        (queue.next())();
                    }
                })
                .expect("cannot start a CPU worker thread");
        }
        CpuPool { queue, threads }
    }

    /// How many jobs run at once.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r.ok());
        });
        self.queue.push(job);
        rx.await.ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_env_is_deterministic() {
        let clock = Arc::new(FixedClock(0.into()));
        let a = Env::new(Arc::new(TokioNet), clock.clone(), 7);
        let b = Env::new(Arc::new(TokioNet), clock, 7);
        let xs: Vec<u64> = (0..5).map(|_| a.rng_u64()).collect();
        let ys: Vec<u64> = (0..5).map(|_| b.rng_u64()).collect();
        assert_eq!(xs, ys);
        assert!(a.rng_range(10, 20) >= 10);
        assert_eq!(a.rng_range(5, 5), 5);
    }

    #[tokio::test]
    async fn bind_in_range_picks_a_port_in_range() {
        let env = Env::real();
        let l = bind_in_range(&env, "127.0.0.1".parse().unwrap(), (47000, 47999))
            .await
            .unwrap();
        let p = l.local_addr().unwrap().port();
        assert!((47000..=47999).contains(&p), "{p}");
        let any = bind_in_range(&env, "127.0.0.1".parse().unwrap(), (0, 0))
            .await
            .unwrap();
        assert_ne!(any.local_addr().unwrap().port(), 0);
    }

    /// A network that records the binds it is asked for and refuses the
    /// first `refuse` of them.
    struct Binds {
        asked: Mutex<Vec<SocketAddr>>,
        refuse: usize,
        range: Option<(u16, u16)>,
    }

    #[async_trait]
    impl Net for Binds {
        async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn NetListener>> {
            let n = {
                let mut asked = self.asked.lock().unwrap();
                asked.push(addr);
                asked.len()
            };
            if n <= self.refuse {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "taken"));
            }
            TokioNet.bind(SocketAddr::new(addr.ip(), 0)).await
        }
        async fn connect(&self, _: SocketAddr) -> io::Result<BoxStream> {
            Err(io::Error::other("not here"))
        }
        fn any_port_range(&self) -> Option<(u16, u16)> {
            self.range
        }
    }

    #[tokio::test]
    async fn any_port_is_named_from_the_system_range_never_port_0_first() {
        // The ports asked of a network that refuses the first `refuse`
        // binds and names `range` as "any port", for one bind in `wanted`;
        // and whether that bind succeeded.
        async fn asked(refuse: usize, range: (u16, u16), wanted: (u16, u16)) -> (Vec<u16>, bool) {
            let net = Arc::new(Binds {
                asked: Mutex::new(vec![]),
                refuse,
                range: Some(range),
            });
            let env = Env::new(net.clone(), Arc::new(FixedClock(0.into())), 1);
            let ip = "127.0.0.1".parse().unwrap();
            let ok = bind_in_range(&env, ip, wanted).await.is_ok();
            let ports = net.asked.lock().unwrap().iter().map(|a| a.port()).collect();
            (ports, ok)
        }
        let (ports, ok) = asked(3, (40000, 40999), (0, 0)).await;
        assert!(ok);
        assert_eq!(ports.len(), 4, "{ports:?}");
        assert!(
            ports.iter().all(|p| (40000..=40999).contains(p)),
            "{ports:?}"
        );
        // Every named port taken: the system's choice after all.
        let (mut ports, ok) = asked(2, (40000, 40001), (0, 0)).await;
        assert!(ok);
        assert_eq!(ports.pop(), Some(0), "{ports:?}");
        ports.sort();
        assert_eq!(ports, [40000, 40001]);
        // A configured range is never left.
        let (ports, ok) = asked(2, (40000, 40999), (47000, 47001)).await;
        assert!(!ok);
        assert_eq!(ports.len(), 2, "{ports:?}");
        assert!(
            ports.iter().all(|p| (47000..=47001).contains(p)),
            "{ports:?}"
        );
        // This host's range is read (Linux).
        if let Some((a, b)) = TokioNet.any_port_range() {
            assert!(a > 0 && b >= a);
        }
    }

    #[tokio::test]
    async fn the_cpu_pool_bounds_concurrency_and_survives_a_panic() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = CpuPool::start(2);
        let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..12)
            .map(|i| {
                let (now, max) = (now.clone(), max.clone());
                pool.run(move || {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    max.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    now.fetch_sub(1, Ordering::SeqCst);
                    i
                })
            })
            .collect();
        let mut got = Vec::new();
        for j in jobs {
            got.push(j.await.unwrap());
        }
        assert_eq!(got, (0..12).collect::<Vec<_>>());
        assert!(max.load(Ordering::SeqCst) <= 2, "{max:?}");
        assert_eq!(pool.run(|| panic!("boom")).await, None::<()>);
        assert_eq!(pool.run(|| 7).await, Some(7), "the pool outlives a panic");
    }

    /// How many `Tracked<K>` were made, and are alive, per test `K` (the
    /// tests run in parallel, so each counts its own).
    static MADE: [std::sync::atomic::AtomicUsize; 2] =
        [const { std::sync::atomic::AtomicUsize::new(0) }; 2];
    static LIVE: [std::sync::atomic::AtomicUsize; 2] =
        [const { std::sync::atomic::AtomicUsize::new(0) }; 2];

    /// Scratch that counts itself in `MADE[K]` and `LIVE[K]`.
    struct Tracked<const K: usize>;

    impl<const K: usize> Default for Tracked<K> {
        fn default() -> Tracked<K> {
            MADE[K].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            LIVE[K].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Tracked
        }
    }

    impl<const K: usize> Drop for Tracked<K> {
        fn drop(&mut self) {
            LIVE[K].fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn pool_scratch_is_kept_through_a_burst_and_dropped_when_idle() {
        use std::sync::atomic::Ordering;
        let pool: &'static CpuPool = Box::leak(Box::new(CpuPool::start(1)));
        // A burst: the first job holds the thread while the others queue.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let first = tokio::spawn(pool.run(move || {
            let _ = wait.recv();
            with_pool_scratch(|_: &mut Tracked<0>| ())
        }));
        let rest: Vec<_> = (0..5)
            .map(|_| tokio::spawn(pool.run(|| with_pool_scratch(|_: &mut Tracked<0>| ()))))
            .collect();
        // Let every task queue its job.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        go.send(()).unwrap();
        first.await.unwrap().unwrap();
        for r in rest {
            r.await.unwrap().unwrap();
        }
        assert_eq!(MADE[0].load(Ordering::SeqCst), 1, "one value for the burst");
        // Dropped once the queue is empty (the thread then waits).
        let mut dropped = false;
        for _ in 0..400 {
            if LIVE[0].load(Ordering::SeqCst) == 0 {
                dropped = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(dropped, "the scratch outlived the burst");
        // Outside the pool: a fresh value each time, none kept.
        with_pool_scratch(|_: &mut Tracked<0>| ());
        with_pool_scratch(|_: &mut Tracked<0>| ());
        assert_eq!(MADE[0].load(Ordering::SeqCst), 3);
        assert_eq!(LIVE[0].load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn one_job_on_a_pool_of_several_threads_keeps_no_scratch() {
        use std::sync::atomic::Ordering;
        // Two threads: one waits idle while the other runs the job; the
        // one that ran it must still see the queue empty and free.
        let pool: &'static CpuPool = Box::leak(Box::new(CpuPool::start(2)));
        for _ in 0..3 {
            // As long as a login takes: the idle thread is waiting again
            // well before the job ends.
            pool.run(|| {
                with_pool_scratch(|_: &mut Tracked<1>| {
                    std::thread::sleep(std::time::Duration::from_millis(30))
                })
            })
            .await
            .unwrap();
            let freed = (0..400).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(5));
                LIVE[1].load(Ordering::SeqCst) == 0
            });
            assert!(freed, "a lone job's scratch kept until the next job");
        }
    }

    /// The idle bound of the relays that stall in these tests.
    const IDLE: std::time::Duration = std::time::Duration::from_millis(500);

    /// Two connected sockets on loopback, as boxed streams.
    async fn tcp_pair() -> (BoxStream, BoxStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (a, b) = tokio::join!(tokio::net::TcpStream::connect(addr), l.accept());
        (Box::new(a.unwrap()), Box::new(b.unwrap().0))
    }

    #[tokio::test]
    async fn a_relay_between_sockets_moves_every_byte_in_order() {
        for how in [Relay::Splice, Relay::Copy] {
            relay_moves_every_byte_in_order(how).await;
        }
    }

    async fn relay_moves_every_byte_in_order(how: Relay) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let data: Vec<u8> = (0..(9u32 << 20) + 12345)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let (mut sender, mut from) = tcp_pair().await;
        let (mut to, mut receiver) = tcp_pair().await;
        let progress = std::sync::atomic::AtomicU64::new(0);
        let send = {
            let data = data.clone();
            async move {
                sender.write_all(&data).await.unwrap();
                sender.shutdown().await.unwrap();
            }
        };
        let receive = async move {
            let mut got = Vec::new();
            receiver.read_to_end(&mut got).await.unwrap();
            got
        };
        let (_, moved, got) = tokio::join!(
            send,
            relay_counted(&mut from, &mut to, how, Some(&progress), IDLE * 60),
            receive
        );
        assert_eq!(moved.unwrap(), data.len() as u64, "{how:?}");
        assert_eq!(
            progress.load(std::sync::atomic::Ordering::Relaxed),
            data.len() as u64
        );
        assert!(got == data, "{how:?}: the bytes differ");
    }

    #[tokio::test]
    async fn a_relay_whose_reader_or_writer_stalls_fails_within_its_idle_bound() {
        for how in [Relay::Splice, Relay::Copy] {
            relay_fails_on_a_stalled_leg(how).await;
        }
    }

    async fn relay_fails_on_a_stalled_leg(how: Relay) {
        use tokio::io::AsyncWriteExt;
        // The receiver never reads: once the socket buffers are full the
        // writing leg makes no progress.
        let (mut sender, mut from) = tcp_pair().await;
        let (mut to, _receiver) = tcp_pair().await;
        let data = vec![7u8; 1 << 20];
        let send = async move {
            loop {
                if sender.write_all(&data).await.is_err() {
                    break;
                }
            }
        };
        let started = tokio::time::Instant::now();
        let failed = tokio::select! {
            r = relay_counted(&mut from, &mut to, how, None, IDLE) => r.unwrap_err(),
            _ = send => panic!("the sender stopped first"),
        };
        assert_eq!(failed.leg, Leg::To, "{how:?}: {failed}");
        assert_eq!(failed.error.kind(), io::ErrorKind::TimedOut, "{how:?}");
        assert!(failed.to_string().contains("no progress"), "{failed}");
        assert!(started.elapsed() < IDLE * 20, "{how:?}");
        // The sender sends a little, then nothing, without closing.
        let (mut sender, mut from) = tcp_pair().await;
        let (mut to, _receiver) = tcp_pair().await;
        sender.write_all(b"some bytes").await.unwrap();
        let started = tokio::time::Instant::now();
        let failed = relay_counted(&mut from, &mut to, how, None, IDLE)
            .await
            .unwrap_err();
        assert_eq!(failed.leg, Leg::From, "{how:?}: {failed}");
        assert_eq!(failed.error.kind(), io::ErrorKind::TimedOut, "{how:?}");
        assert!(started.elapsed() >= IDLE, "{how:?}");
        drop(sender);
    }
}

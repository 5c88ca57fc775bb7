//! The master's shared state as the drivers hold it: the IO-free
//! [`MasterState`] and the table of live slave links behind one mutex
//! ([`Core`]), plus the handles that perform effects (the store writer, the
//! recording sink, TLS). Control sessions and link servers share one
//! [`Hub`] (`Shared`).
//!
//! Effects leave the core only through [`Hub::flush`], called under the
//! lock after every decision: the core's journals go to the store (the
//! returned [`Durable`] is awaited before the client hears "done") and new
//! entries of the slaves' operation logs go to their links, in the order
//! the decisions were made (a transfer order sent after a decision can
//! never overtake it on that slave's link).

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::db::SlaveId;
use super::record::RecordSink;
use super::store::{Durable, StoreHandle};
use super::MasterTls;
use crate::link::{Frames, MasterMsg, OpOutcome, Request, Response, LOG_CHUNK_BYTES};
use crate::ops::{Metrics, OpsSinks};
use dftpd_core::master::MasterState;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent between statements; a panic
    // elsewhere must not take the whole master down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pending request replies of one link, keyed by request id. Dropping the
/// map's senders (link closed) wakes every waiter with an error.
pub type PendingReplies = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Response>>>>;

/// What the queue of a slave's link writer carries: a message, or two that
/// leave in one write (a listener's claim and the order that uses it: the
/// slave wakes once for both).
#[derive(Debug)]
pub enum Outbound {
    One(MasterMsg),
    Two(Box<(MasterMsg, MasterMsg)>),
}

impl Outbound {
    /// The messages, in order.
    pub fn into_vec(self) -> Vec<MasterMsg> {
        match self {
            Outbound::One(m) => vec![m],
            Outbound::Two(b) => vec![b.0, b.1],
        }
    }
}

impl Frames for Outbound {
    fn encode_frames(&self, buf: &mut Vec<u8>) {
        match self {
            Outbound::One(m) => m.encode_frames(buf),
            Outbound::Two(b) => {
                b.0.encode_frames(buf);
                b.1.encode_frames(buf);
            }
        }
    }
}

/// Handle to send messages to one connected slave.
#[derive(Clone)]
pub struct SlaveLink {
    pub epoch: u64,
    tx: mpsc::UnboundedSender<Outbound>,
    pending: PendingReplies,
    /// Set by [`SlaveLink::close`]: the link server ends the link with
    /// this reason.
    closing: Arc<(tokio::sync::Notify, Mutex<Option<&'static str>>)>,
}

impl SlaveLink {
    pub fn new(epoch: u64, tx: mpsc::UnboundedSender<Outbound>, pending: PendingReplies) -> Self {
        SlaveLink {
            epoch,
            tx,
            pending,
            closing: Arc::new((tokio::sync::Notify::new(), Mutex::new(None))),
        }
    }

    /// Ends the link (SITE KICKSLAVE, REMERGE, DELSLAVE): the slave sees it
    /// close and reconnects (a removed one is refused then).
    pub fn close(&self, reason: &'static str) {
        *lock(&self.closing.1) = Some(reason);
        self.closing.0.notify_one();
    }

    /// Resolves with the reason once [`SlaveLink::close`] is called.
    pub fn closed(&self) -> impl std::future::Future<Output = &'static str> + Send + 'static {
        let closing = self.closing.clone();
        async move {
            loop {
                if let Some(reason) = *lock(&closing.1) {
                    return reason;
                }
                closing.0.notified().await;
            }
        }
    }

    /// Sends a request; the receiver yields its response, or an error when
    /// the link goes down first.
    pub fn request(&self, rid: u64, request: Request) -> oneshot::Receiver<Response> {
        self.request_after(None, rid, request)
    }

    /// [`SlaveLink::request`], with `first` sent just before it in the
    /// same write.
    pub fn request_after(
        &self,
        first: Option<MasterMsg>,
        rid: u64,
        request: Request,
    ) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(rid, tx);
        let msg = MasterMsg::Request { rid, request };
        let out = match first {
            Some(first) => Outbound::Two(Box::new((first, msg))),
            None => Outbound::One(msg),
        };
        if self.tx.send(out).is_err() {
            lock(&self.pending).remove(&rid);
        }
        rx
    }

    pub fn send(&self, msg: MasterMsg) {
        let _ = self.tx.send(Outbound::One(msg));
    }

    /// Sends `a` then `b` in one write.
    pub fn send_two(&self, a: MasterMsg, b: MasterMsg) {
        let _ = self.tx.send(Outbound::Two(Box::new((a, b))));
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// What the hub's mutex guards: the core state and the live links. A slave
/// is in `links` exactly while the registry shows it remerging or online.
pub struct Core {
    pub st: MasterState,
    pub links: BTreeMap<SlaveId, SlaveLink>,
}

impl Deref for Core {
    type Target = MasterState;
    fn deref(&self) -> &MasterState {
        &self.st
    }
}

impl DerefMut for Core {
    fn deref_mut(&mut self) -> &mut MasterState {
        &mut self.st
    }
}

impl Core {
    /// The link of a slave that serves (online, or remerging: see
    /// `SlaveInfo::serves`).
    pub fn link(&self, id: SlaveId) -> Option<SlaveLink> {
        if self.st.slaves.serves(id) {
            self.links.get(&id).cloned()
        } else {
            None
        }
    }
}

/// Why a control session must end between commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The master stops (SIGTERM): `421 Server shutting down`; a session
    /// in a transfer ends after its final reply.
    Shutdown,
    /// SITE KICK: `421 Disconnected by an administrator`; a running
    /// transfer is cancelled first.
    Kicked,
}

/// Everything the master's tasks share.
pub struct Hub {
    core: Mutex<Core>,
    /// The durable store's writer; `None`: changes are not persisted
    /// (unit tests).
    pub store: Option<StoreHandle>,
    /// Where session recordings go (`record_dir`); `None`: not recording.
    pub record: Option<Arc<dyn RecordSink>>,
    /// FTPS, when `tls_cert`/`tls_key` are set (never in the simulator);
    /// replaced by a config reload ([`Hub::tls`], [`Hub::set_tls`]).
    tls: std::sync::RwLock<Option<Arc<MasterTls>>>,
    /// Monotonic origin for the guard's clock ([`Hub::mono_ms`]).
    started: tokio::time::Instant,
    /// Random per master process (from the environment): uploads a slave
    /// keeps waiting for their commit belong to this master only.
    pub instance: u64,
    /// Transfers waiting for a slave to acknowledge their commit entry, by
    /// (slave, sequence number). They outlive the link: an entry resent
    /// after a reconnect answers them too.
    commit_waiters: Mutex<BTreeMap<(SlaveId, u64), oneshot::Sender<OpOutcome>>>,
    /// Metrics and the transfer log, once the master's operations are
    /// started (`Master::start_ops`); never in the simulator. Kept here,
    /// not in the IO-free `MasterState`.
    ops: std::sync::OnceLock<OpsSinks>,
    /// Each open control session's stop signal, by session id.
    stops: Mutex<BTreeMap<u64, tokio::sync::watch::Sender<Option<Stop>>>>,
    /// Set once the master shuts down: sessions registered later start
    /// stopped.
    shutting_down: std::sync::atomic::AtomicBool,
    /// FTPS at the FTP level only ([`Hub::simulate_tls`]).
    tls_in_clear: std::sync::atomic::AtomicBool,
    /// Wall-clock seconds when the master started ([`Hub::started_unix`]).
    started_unix: std::sync::atomic::AtomicI64,
    /// The TLS tokens of control sessions with their users and addresses:
    /// the sessions a data connection may resume besides its own
    /// ([`Hub::resumed_sibling`]); `tls_logins` wakes those waiting for a
    /// login to be decided.
    tls_siblings: Mutex<crate::tls::Siblings>,
    tls_logins: tokio::sync::Notify,
    /// The catch listeners (`control::data::catch_listener`) between
    /// transfers, by port.
    pub idle_catch: Arc<crate::env::IdleListeners>,
}

/// Catch listeners kept idle at most: enough for the ready listeners of
/// 32 slaves at the default `passive_pool`.
const IDLE_CATCH: usize = 256;

pub type Shared = Arc<Hub>;

impl Hub {
    pub fn new(
        st: MasterState,
        store: Option<StoreHandle>,
        record: Option<Arc<dyn RecordSink>>,
        tls: Option<Arc<MasterTls>>,
        instance: u64,
    ) -> Hub {
        Hub {
            core: Mutex::new(Core {
                st,
                links: BTreeMap::new(),
            }),
            store,
            record,
            tls: std::sync::RwLock::new(tls),
            started: tokio::time::Instant::now(),
            instance,
            commit_waiters: Mutex::new(BTreeMap::new()),
            ops: std::sync::OnceLock::new(),
            stops: Mutex::new(BTreeMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            tls_in_clear: std::sync::atomic::AtomicBool::new(false),
            started_unix: std::sync::atomic::AtomicI64::new(0),
            tls_siblings: Mutex::new(crate::tls::Siblings::default()),
            tls_logins: tokio::sync::Notify::new(),
            idle_catch: crate::env::IdleListeners::new(IDLE_CATCH),
        }
    }

    /// A hub over `st` with no store, recording or TLS (tests, tools).
    pub fn bare(st: MasterState) -> Shared {
        Arc::new(Hub::new(st, None, None, None, 1))
    }

    pub fn lock(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    /// The master's TLS settings now.
    pub fn tls(&self) -> Option<Arc<MasterTls>> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// New TLS settings (a reload); sessions pick them up at their next
    /// AUTH TLS.
    pub fn set_tls(&self, tls: Option<Arc<MasterTls>>) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
    }

    /// TLS control session `id` (token `token`, client address `ip`) is
    /// now in state `login` (`LoginState::None`: it ended or is not logging
    /// in).
    pub fn list_tls_session(
        &self,
        id: u64,
        login: crate::tls::LoginState<'_>,
        ip: std::net::IpAddr,
        token: &[u8],
    ) {
        lock(&self.tls_siblings).set(id, login, ip, token);
        self.tls_logins.notify_waiters();
    }

    /// A data connection of the control session tagged `own` resumed the
    /// TLS session tagged `resumed`: whether that is a sibling's (the same
    /// logged-in user's control connection from the same address). A
    /// sibling still logging in is waited for, up to `limit`.
    pub async fn resumed_sibling(
        &self,
        own: &[u8],
        resumed: &[u8],
        limit: std::time::Duration,
    ) -> bool {
        use crate::tls::Verdict;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before the look, so a change in between wakes it.
            let changed = self.tls_logins.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match lock(&self.tls_siblings).verdict(own, resumed) {
                Verdict::Sibling => return true,
                Verdict::Refused => return false,
                Verdict::Wait => {}
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return false;
            }
        }
    }

    /// Where sessions report commands, logins and transfers (`None`:
    /// nowhere, as in the simulator and unit tests).
    pub fn ops(&self) -> Option<&OpsSinks> {
        self.ops.get().filter(|o| !o.is_empty())
    }

    /// Sets the sinks of [`Hub::ops`] (once; later calls are ignored).
    pub fn set_ops(&self, sinks: OpsSinks) {
        let _ = self.ops.set(sinks);
    }

    /// The metrics, when the master has them.
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.ops().and_then(|o| o.metrics.as_ref())
    }

    /// A new control session's stop signal.
    pub fn register_session(&self, id: u64) -> tokio::sync::watch::Receiver<Option<Stop>> {
        let initial = self
            .shutting_down
            .load(std::sync::atomic::Ordering::Acquire)
            .then_some(Stop::Shutdown);
        let (tx, rx) = tokio::sync::watch::channel(initial);
        lock(&self.stops).insert(id, tx);
        rx
    }

    /// The session ended.
    pub fn unregister_session(&self, id: u64) {
        lock(&self.stops).remove(&id);
    }

    /// Tells every session the master is shutting down: idle ones answer
    /// 421 and end, ones in a transfer after its final reply.
    pub fn stop_sessions(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        for tx in lock(&self.stops).values() {
            tx.send_if_modified(|s| {
                let first = s.is_none();
                s.get_or_insert(Stop::Shutdown);
                first
            });
        }
    }

    /// Ends slave `id`'s link, if it has one (SITE KICKSLAVE, REMERGE,
    /// DELSLAVE).
    pub fn drop_link(&self, id: SlaveId, reason: &'static str) {
        if let Some(link) = self.lock().links.get(&id) {
            link.close(reason);
        }
    }

    /// SITE KICK of session `id`; false when no such session is open.
    pub fn kick(&self, id: u64) -> bool {
        match lock(&self.stops).get(&id) {
            Some(tx) => {
                tx.send_replace(Some(Stop::Kicked));
                true
            }
            None => false,
        }
    }

    /// FTPS at the FTP level only, for the simulator's replay of FTPS
    /// sessions (TLS itself is never run there): AUTH TLS, PBSZ and PROT are
    /// answered as by a master with a certificate, slaves count as having
    /// one, and every connection stays in clear.
    pub fn simulate_tls(&self) {
        self.tls_in_clear
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.lock().st.tls_available = true;
    }

    /// See [`Hub::simulate_tls`].
    pub fn tls_in_clear(&self) -> bool {
        self.tls_in_clear.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Wall-clock seconds when the master started: with [`Hub::clock`],
    /// what names a moment across the sessions of one master run.
    pub fn started_unix(&self) -> i64 {
        self.started_unix.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_started_unix(&self, t: i64) {
        self.started_unix
            .store(t, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the hub was made (the master started): the clock all
    /// sessions share (simulated time in the simulator).
    pub fn clock(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Milliseconds since the hub was made (simulated time in the
    /// simulator): the clock of the login guard and the rate limits.
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Performs the effects of the decisions made under this lock: hands
    /// the journals to the store writer (await the result before telling a
    /// client that what it asked for is done) and sends the registry's
    /// outbox on the slaves' links, in order.
    pub fn flush(&self, core: &mut Core) -> Option<Durable> {
        while core.st.slaves.has_unsent() {
            for (id, entries) in core.st.slaves.take_unsent(LOG_CHUNK_BYTES) {
                if let Some(link) = core.links.get(&id) {
                    link.send(MasterMsg::Log(entries));
                }
            }
        }
        let changes = core.st.take_changes();
        if changes.is_empty() {
            return None;
        }
        self.store.as_ref().map(|s| s.submit(changes))
    }
}

impl Hub {
    /// Waits for slave `slave` to acknowledge its log entry `seq`.
    pub fn await_commit(&self, slave: SlaveId, seq: u64) -> oneshot::Receiver<OpOutcome> {
        let (tx, rx) = oneshot::channel();
        lock(&self.commit_waiters).insert((slave, seq), tx);
        rx
    }

    /// Gives up waiting for `(slave, seq)`.
    pub fn forget_commit(&self, slave: SlaveId, seq: u64) {
        lock(&self.commit_waiters).remove(&(slave, seq));
    }

    /// The slave acknowledged log entry `seq`: tells a waiting transfer.
    pub fn commit_acked(&self, slave: SlaveId, seq: u64, outcome: &OpOutcome) {
        if let Some(w) = lock(&self.commit_waiters).remove(&(slave, seq)) {
            let _ = w.send(outcome.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::MasterConfig;
    use crate::tls::LoginState;

    fn ask(
        hub: &Shared,
        own: &'static [u8],
        resumed: &'static [u8],
    ) -> tokio::task::JoinHandle<bool> {
        let hub = hub.clone();
        tokio::spawn(async move {
            hub.resumed_sibling(own, resumed, Duration::from_secs(5))
                .await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_sibling_still_logging_in_is_waited_for() {
        let hub = Hub::bare(MasterState::new(Arc::new(MasterConfig::default())));
        let ip = "192.0.2.1".parse().unwrap();
        hub.list_tls_session(1, LoginState::LoggedIn("alice"), ip, b"one");
        hub.list_tls_session(2, LoginState::Pending("alice"), ip, b"two");
        hub.list_tls_session(3, LoginState::LoggedIn("bob"), ip, b"three");
        assert!(!ask(&hub, b"one", b"three").await.unwrap(), "another user");
        // The password is still being checked: the answer waits for it.
        let asked = ask(&hub, b"one", b"two");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!asked.is_finished());
        hub.list_tls_session(2, LoginState::LoggedIn("alice"), ip, b"two");
        assert!(asked.await.unwrap());
        // A failed login: refused as soon as it fails.
        hub.list_tls_session(4, LoginState::Pending("alice"), ip, b"four");
        let asked = ask(&hub, b"one", b"four");
        tokio::time::sleep(Duration::from_millis(100)).await;
        hub.list_tls_session(4, LoginState::None, ip, b"four");
        assert!(!asked.await.unwrap());
        // Never decided: refused at the limit.
        hub.list_tls_session(5, LoginState::Pending("alice"), ip, b"five");
        let started = tokio::time::Instant::now();
        assert!(!ask(&hub, b"one", b"five").await.unwrap());
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }
}

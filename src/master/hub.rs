//! The master's shared state as the drivers hold it: the IO-free
//! [`MasterState`] and the table of live slave links behind one mutex
//! ([`Core`]), plus the handles that perform effects (the store writer, the
//! recording sink, TLS). Control sessions and link servers share one
//! [`Hub`] (`Shared`).
//!
//! Effects leave the core only through [`Hub::flush`], called under the
//! lock after every decision: the core's journals go to the store (the
//! returned [`Durable`] is awaited before the client hears "done") and the
//! registry's outbox goes to the slaves' links, in the order the decisions
//! were made.

use std::collections::BTreeMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::db::SlaveId;
use super::record::RecordSink;
use super::store::{Durable, StoreHandle};
use super::MasterTls;
use crate::link::{MasterMsg, Request, Response};
use dftpd_core::master::MasterState;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // State behind these locks stays consistent between statements; a panic
    // elsewhere must not take the whole master down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Pending request replies of one link, keyed by request id. Dropping the
/// map's senders (link closed) wakes every waiter with an error.
pub type PendingReplies = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Response>>>>;

/// Handle to send messages to one connected slave.
#[derive(Clone)]
pub struct SlaveLink {
    pub epoch: u64,
    tx: mpsc::UnboundedSender<MasterMsg>,
    pending: PendingReplies,
}

impl SlaveLink {
    pub fn new(epoch: u64, tx: mpsc::UnboundedSender<MasterMsg>, pending: PendingReplies) -> Self {
        SlaveLink { epoch, tx, pending }
    }

    /// Sends a request; the receiver yields its response, or an error when
    /// the link goes down first.
    pub fn request(&self, rid: u64, request: Request) -> oneshot::Receiver<Response> {
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(rid, tx);
        if self.tx.send(MasterMsg::Request { rid, request }).is_err() {
            lock(&self.pending).remove(&rid);
        }
        rx
    }

    pub fn send(&self, msg: MasterMsg) {
        let _ = self.tx.send(msg);
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
    /// The link of an online slave.
    pub fn link(&self, id: SlaveId) -> Option<SlaveLink> {
        if self.st.slaves.is_online(id) {
            self.links.get(&id).cloned()
        } else {
            None
        }
    }
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
    /// FTPS at the FTP level only ([`Hub::simulate_tls`]).
    tls_in_clear: std::sync::atomic::AtomicBool,
    /// Wall-clock seconds when the master started ([`Hub::started_unix`]).
    started_unix: std::sync::atomic::AtomicI64,
}

pub type Shared = Arc<Hub>;

impl Hub {
    pub fn new(
        st: MasterState,
        store: Option<StoreHandle>,
        record: Option<Arc<dyn RecordSink>>,
        tls: Option<Arc<MasterTls>>,
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
            tls_in_clear: std::sync::atomic::AtomicBool::new(false),
            started_unix: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// A hub over `st` with no store, recording or TLS (tests, tools).
    pub fn bare(st: MasterState) -> Shared {
        Arc::new(Hub::new(st, None, None, None))
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
        for (id, op) in core.st.slaves.take_outbox() {
            if let Some(link) = core.links.get(&id) {
                link.send(MasterMsg::Ops(vec![op]));
            }
        }
        let changes = core.st.take_changes();
        if changes.is_empty() {
            return None;
        }
        self.store.as_ref().map(|s| s.submit(changes))
    }
}

//! Received uploads waiting for the master's commit decision. The decision
//! arrives as a `Commit` entry of the slave's operation log, normally a
//! round trip after `Received`, but possibly after the link was lost and
//! re-established (the master resends unacknowledged entries): so an upload
//! waits here, outside any one link, for at most `commit_grace_ms`, then is
//! discarded. Uploads held for another master process (a restarted master
//! reuses transfer ids) are discarded when that master connects.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::storage::{PendingUpload, Storage};
use crate::link::{FileVersion, OpOutcome};
use crate::proto::VPath;

#[derive(Default)]
struct Held {
    /// The master process these uploads belong to.
    instance: u64,
    /// Each with the moment it is discarded unless committed.
    uploads: BTreeMap<u64, (PendingUpload, tokio::time::Instant)>,
    /// Transfers the master aborted before their upload arrived here (the
    /// Abort overtook the transfer task between `Received` and
    /// [`Awaiting::hold`]), each until a grace period after the abort: the
    /// upload is discarded on arrival.
    aborted: BTreeMap<u64, tokio::time::Instant>,
}

/// The waiting room (cheap to clone; one per slave process).
#[derive(Clone)]
pub struct Awaiting {
    held: Arc<Mutex<Held>>,
    grace: Duration,
}

impl Awaiting {
    pub fn new(grace: Duration) -> Awaiting {
        Awaiting {
            held: Arc::new(Mutex::new(Held::default())),
            grace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Master process `instance` connected: uploads held for another one
    /// are discarded.
    pub async fn master(&self, instance: u64, storage: &Arc<dyn Storage>) {
        let stale: Vec<PendingUpload> = {
            let mut h = self.lock();
            if h.instance == instance {
                return;
            }
            h.instance = instance;
            h.aborted.clear();
            std::mem::take(&mut h.uploads)
                .into_values()
                .map(|(up, _)| up)
                .collect()
        };
        for up in stale {
            storage.discard(&up).await;
        }
    }

    /// Holds transfer `xfer`'s received upload until its commit, an abort
    /// or the grace period's end.
    pub fn hold(&self, xfer: u64, up: PendingUpload, storage: Arc<dyn Storage>) {
        let deadline = tokio::time::Instant::now() + self.grace;
        {
            let mut h = self.lock();
            if h.aborted.remove(&xfer).is_some() {
                drop(h);
                tracing::debug!(xfer, path = %up.path, "upload discarded: aborted before it was held");
                tokio::spawn(async move { storage.discard(&up).await });
                return;
            }
            h.uploads.insert(xfer, (up, deadline));
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut wake = deadline;
            loop {
                tokio::time::sleep_until(wake).await;
                let expired = {
                    let mut h = me.lock();
                    match h.uploads.get(&xfer) {
                        None => return,
                        // Lent for a synchronous copy meanwhile: later.
                        Some((_, d)) if *d > tokio::time::Instant::now() => {
                            wake = *d;
                            None
                        }
                        Some(_) => h.uploads.remove(&xfer).map(|(up, _)| up),
                    }
                };
                if let Some(up) = expired {
                    tracing::info!(xfer, path = %up.path, "upload discarded: no commit in time");
                    storage.discard(&up).await;
                    return;
                }
            }
        });
    }

    /// The upload of transfer `xfer`, to send it to another slave (a
    /// synchronous copy): it waits a full grace period again from now.
    pub fn lend(&self, xfer: u64) -> Option<PendingUpload> {
        let grace = self.grace;
        let mut h = self.lock();
        let (up, deadline) = h.uploads.get_mut(&xfer)?;
        *deadline = tokio::time::Instant::now() + grace;
        Some(up.clone())
    }

    /// A new order for transfer `xfer` (a listener claimed or opened for
    /// it, or its transfer): an earlier abort under that id, such as the
    /// master dropping the listener it claimed before relaying the same
    /// transfer, no longer applies.
    pub fn forget_abort(&self, xfer: u64) {
        self.lock().aborted.remove(&xfer);
    }

    /// The master aborted transfer `xfer` (ABOR, a lost race): discard it.
    /// An upload that arrives later (the abort overtook it) is discarded
    /// on arrival.
    pub async fn discard(&self, xfer: u64, storage: &Arc<dyn Storage>) {
        let up = {
            let mut h = self.lock();
            let up = h.uploads.remove(&xfer);
            if up.is_none() {
                let now = tokio::time::Instant::now();
                h.aborted.retain(|_, until| *until > now);
                h.aborted.insert(xfer, now + self.grace);
            }
            up
        };
        if let Some((up, _)) = up {
            storage.discard(&up).await;
        }
    }

    /// Applies a `Commit` entry. Idempotent: when the upload is no longer
    /// here, the file on disk answers (it is there with that version, or
    /// the commit failed).
    pub async fn commit(
        &self,
        xfer: u64,
        path: &VPath,
        version: &FileVersion,
        storage: &Arc<dyn Storage>,
    ) -> OpOutcome {
        let up = self.lock().uploads.remove(&xfer).map(|(up, _)| up);
        match up {
            Some(up) if up.path == *path => match storage.commit(&up, version).await {
                Ok((size, mtime)) => OpOutcome::Committed { size, mtime },
                Err(e) => {
                    storage.discard(&up).await;
                    OpOutcome::Failed(format!("commit of {path}: {e}"))
                }
            },
            Some(up) => {
                storage.discard(&up).await;
                OpOutcome::Failed(format!("transfer {xfer} was not an upload of {path}"))
            }
            None => match storage.version_of(path).await {
                Ok(Some((size, mtime, Some(v))))
                    if v.store == version.store && v.gen == version.gen =>
                {
                    OpOutcome::Committed { size, mtime }
                }
                _ => OpOutcome::Failed(format!(
                    "the upload of {path} is no longer on this slave (discarded or never received)"
                )),
            },
        }
    }
}

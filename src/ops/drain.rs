//! Graceful stop of a slave: [`CountingStorage`] wraps the slave's
//! [`Storage`] and counts the transfers that are running on it (a `send`
//! or `receive` under way, or a received upload waiting for the master's
//! commit), so SIGTERM can wait for them ([`TransferCount::wait_idle`])
//! before the link and the process go. Nothing inside the slave changes:
//! every transfer goes through its storage.
//!
//! An upload whose commit never comes (the link dropped and the pending
//! upload was dropped without `discard`) stays counted; the grace period
//! bounds the wait.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::env::BoxStream;
use crate::link::{FileOp, FileVersion, OpOutcome, RemoteFile};
use crate::proto::VPath;
use crate::slave::storage::{PendingUpload, Storage, StorageError};

/// Transfers running through a [`CountingStorage`].
#[derive(Debug, Default)]
pub struct TransferCount {
    moving: AtomicUsize,
    awaiting_commit: AtomicUsize,
}

impl TransferCount {
    /// Transfers moving bytes plus uploads waiting for their commit.
    pub fn running(&self) -> usize {
        self.moving.load(Ordering::Acquire) + self.awaiting_commit.load(Ordering::Acquire)
    }

    /// Waits until nothing runs or `grace` has passed; returns what still
    /// runs (0: idle).
    pub async fn wait_idle(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let n = self.running();
            if n == 0 || tokio::time::Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn committed(&self) {
        let _ = self
            .awaiting_commit
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Decrements `moving` when the transfer ends, however it ends.
struct Moving<'a>(&'a TransferCount);

impl<'a> Moving<'a> {
    fn start(c: &'a TransferCount) -> Moving<'a> {
        c.moving.fetch_add(1, Ordering::AcqRel);
        Moving(c)
    }
}

impl Drop for Moving<'_> {
    fn drop(&mut self) {
        self.0.moving.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A [`Storage`] that counts its running transfers.
pub struct CountingStorage {
    inner: Arc<dyn Storage>,
    count: Arc<TransferCount>,
}

impl CountingStorage {
    pub fn new(inner: Arc<dyn Storage>) -> CountingStorage {
        CountingStorage {
            inner,
            count: Arc::new(TransferCount::default()),
        }
    }

    pub fn count(&self) -> Arc<TransferCount> {
        self.count.clone()
    }
}

#[async_trait]
impl Storage for CountingStorage {
    async fn list(&self) -> io::Result<Vec<RemoteFile>> {
        self.inner.list().await
    }
    async fn free_space(&self) -> io::Result<u64> {
        self.inner.free_space().await
    }
    async fn send(
        &self,
        path: &VPath,
        offset: u64,
        version: Option<&FileVersion>,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        let _moving = Moving::start(&self.count);
        self.inner.send(path, offset, version, out, idle).await
    }
    async fn send_upload(
        &self,
        up: &PendingUpload,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        let _moving = Moving::start(&self.count);
        self.inner.send_upload(up, out, idle).await
    }
    async fn receive(
        &self,
        path: &VPath,
        offset: Option<u64>,
        base: Option<&FileVersion>,
        xfer: u64,
        input: &mut BoxStream,
        idle: Duration,
    ) -> Result<PendingUpload, StorageError> {
        let _moving = Moving::start(&self.count);
        let up = self
            .inner
            .receive(path, offset, base, xfer, input, idle)
            .await?;
        self.count.awaiting_commit.fetch_add(1, Ordering::AcqRel);
        Ok(up)
    }
    async fn commit(
        &self,
        up: &PendingUpload,
        version: &FileVersion,
    ) -> Result<(u64, i64), StorageError> {
        let r = self.inner.commit(up, version).await;
        self.count.committed();
        r
    }
    async fn discard(&self, up: &PendingUpload) {
        self.inner.discard(up).await;
        self.count.committed();
    }
    async fn cleanup_one(&self, xfer: u64) {
        self.inner.cleanup_one(xfer).await
    }
    async fn version_of(
        &self,
        path: &VPath,
    ) -> io::Result<Option<(u64, i64, Option<FileVersion>)>> {
        self.inner.version_of(path).await
    }
    async fn checksum(
        &self,
        path: &VPath,
        rate: u64,
    ) -> io::Result<Option<(Option<FileVersion>, u32)>> {
        self.inner.checksum(path, rate).await
    }
    async fn apply(&self, op: &FileOp) -> io::Result<OpOutcome> {
        self.inner.apply(op).await
    }
    async fn cleanup_temp(&self) -> io::Result<u64> {
        self.inner.cleanup_temp().await
    }
}

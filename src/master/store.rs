//! The master's durable metadata: the file database, directory metadata,
//! owner and slave names, and the operations queued for offline slaves,
//! kept in an embedded transactional store ([redb]: pure Rust, ACID, no
//! server; ARCHITECTURE.md says why).
//!
//! The in-memory [`FileDb`](super::db::FileDb) serves every request; the
//! store is its durable copy. Mutations append [`Change`]s to a journal
//! (`db.rs`, `registry.rs`); the driver that made them hands the journal to
//! the store's writer with [`MasterState::flush`] and waits for the commit
//! before telling the client "done". The writer commits whatever batches
//! are queued in one transaction (group commit), so concurrent sessions
//! share one sync.
//!
//! Layout: one record per path (`/a/b` → postcard [`StoredNode`]); a
//! directory's subtree is the key range `/a/b/` .. `/a/b0` ('0' follows '/'),
//! so a rename or a recursive delete is one range move. Parents sort
//! before their children, so loading in key order rebuilds the tree.
//!
//! Backends: a file for real masters (commits are `Durability::Immediate`,
//! i.e. fsynced), run on a dedicated writer thread; a [`SharedMemory`]
//! buffer for the simulator and tests, applied inline on the runtime and
//! kept outside the master so a crashed master restarts with its store.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use super::db::{Change, StoredNode};
use super::MasterState;
use crate::link::FileOp;
use crate::proto::VPath;

const FILES: TableDefinition<&str, &[u8]> = TableDefinition::new("files");
const NAMES: TableDefinition<u32, &str> = TableDefinition::new("names");
const SLAVES: TableDefinition<u16, &str> = TableDefinition::new("slaves");
const OPS: TableDefinition<(u16, u64), &[u8]> = TableDefinition::new("ops");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Slave id -> lifecycle flags (bit 0: draining, bit 1: removed).
const SLAVE_FLAGS: TableDefinition<u16, u8> = TableDefinition::new("slave_flags");
/// The repair queue: paths that may lack copies.
const REPAIRS: TableDefinition<&str, ()> = TableDefinition::new("repairs");
/// User name -> postcard `Option<User>` (`None`: deleted by an admin, a
/// tombstone over the config's entry).
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");

/// Bumped when the layout changes; a store of another version is refused.
const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("metadata store {path}: {reason}")]
    Open { path: String, reason: String },
    #[error("metadata store: {0}")]
    Io(String),
    #[error("metadata store record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("metadata store writer stopped")]
    Stopped,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// What a load found, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct LoadStats {
    pub files: u64,
    pub dirs: u64,
    pub slaves: u64,
    pub queued_ops: u64,
    /// Users changed by SITE commands (they override the config).
    pub users: u64,
    /// Records that could not be decoded or placed (logged, skipped).
    pub skipped: u64,
}

/// An in-memory store image that outlives the master using it, like a disk:
/// the simulator keeps one per master host across crash and restart.
#[derive(Debug, Clone, Default)]
pub struct SharedMemory(Arc<RwLock<Vec<u8>>>);

impl SharedMemory {
    pub fn new() -> SharedMemory {
        SharedMemory::default()
    }
    /// Loses everything (the simulator's "store lost").
    pub fn wipe(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

impl redb::StorageBackend for SharedMemory {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.0.read().unwrap_or_else(|e| e.into_inner()).len() as u64)
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let buf = self.0.read().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        let end = start.saturating_add(out.len());
        let Some(src) = buf.get(start..end) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "read past the end",
            ));
        };
        out.copy_from_slice(src);
        Ok(())
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .resize(len as usize, 0);
        Ok(())
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut buf = self.0.write().unwrap_or_else(|e| e.into_inner());
        let start = offset as usize;
        let end = start.saturating_add(data.len());
        let Some(dst) = buf.get_mut(start..end) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "write past the end",
            ));
        };
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// The opened store.
pub struct MetaStore {
    db: Database,
    /// Commits run on the async runtime (simulator) instead of a thread.
    inline: bool,
    label: String,
}

impl MetaStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open_file(path: &Path) -> Result<MetaStore, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Open {
            path: path.display().to_string(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let db = Database::create(path).map_err(|e| err(&e))?;
        let s = MetaStore {
            db,
            inline: false,
            label: path.display().to_string(),
        };
        s.init()?;
        Ok(s)
    }

    /// Opens (or creates) a store in `mem`.
    pub fn open_memory(mem: &SharedMemory) -> Result<MetaStore, StoreError> {
        let db = redb::Builder::new()
            .create_with_backend(mem.clone())
            .map_err(|e| StoreError::Open {
                path: "(memory)".into(),
                reason: e.to_string(),
            })?;
        let s = MetaStore {
            db,
            inline: true,
            label: "(memory)".into(),
        };
        s.init()?;
        Ok(s)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    fn init(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            tx.open_table(FILES).map_err(io)?;
            tx.open_table(NAMES).map_err(io)?;
            tx.open_table(SLAVES).map_err(io)?;
            tx.open_table(OPS).map_err(io)?;
            tx.open_table(USERS).map_err(io)?;
            tx.open_table(SLAVE_FLAGS).map_err(io)?;
            tx.open_table(REPAIRS).map_err(io)?;
            let mut meta = tx.open_table(META).map_err(io)?;
            let version = meta.get("schema").map_err(io)?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema", SCHEMA_VERSION).map_err(io)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => {
                    return Err(StoreError::Open {
                        path: self.label.clone(),
                        reason: format!(
                            "schema version {v}, this dftpd reads {SCHEMA_VERSION}; \
                             rebuild it with `dftpd master --rebuild`"
                        ),
                    })
                }
            }
        }
        tx.commit().map_err(io)
    }

    /// Drops the file records and queued operations, keeping names
    /// (`dftpd master --rebuild`: the slaves' remerges refill it).
    pub fn clear_files(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        let n;
        {
            let mut files = tx.open_table(FILES).map_err(io)?;
            n = files.len().map_err(io)?;
            files.retain(|_, _| false).map_err(io)?;
            let mut ops = tx.open_table(OPS).map_err(io)?;
            ops.retain(|_, _| false).map_err(io)?;
            let mut repairs = tx.open_table(REPAIRS).map_err(io)?;
            repairs.retain(|_, _| false).map_err(io)?;
            // A new identity: the slaves' copies carry the old one, so the
            // remerges adopt them instead of taking them for stale copies.
            let mut meta = tx.open_table(META).map_err(io)?;
            meta.remove("store_id").map_err(io)?;
        }
        tx.commit().map_err(io)?;
        Ok(n)
    }

    /// Fills a fresh master state from the store (before it serves).
    pub fn load(&self, st: &mut MasterState) -> Result<LoadStats, StoreError> {
        let mut stats = LoadStats::default();
        let tx = self.db.begin_read().map_err(io)?;
        {
            let meta = tx.open_table(META).map_err(io)?;
            if let Some(id) = meta.get("store_id").map_err(io)? {
                st.store_id = id.value();
            }
            if let Some(v) = meta.get("versions_reserved").map_err(io)? {
                st.db.load_versions_reserved(v.value());
            }
        }
        for row in tx.open_table(NAMES).map_err(io)?.iter().map_err(io)? {
            let (id, name) = row.map_err(io)?;
            st.db.load_name(id.value(), name.value());
        }
        for row in tx.open_table(SLAVES).map_err(io)?.iter().map_err(io)? {
            let (id, name) = row.map_err(io)?;
            st.slaves.load_slave(id.value(), name.value());
            stats.slaves += 1;
        }
        for row in tx.open_table(FILES).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let placed = VPath::parse_absolute(k.value())
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    let node: StoredNode =
                        postcard::from_bytes(v.value()).map_err(|e| e.to_string())?;
                    let dir = matches!(node, StoredNode::Dir { .. });
                    st.db.load(&p, node).map_err(|e| e.to_string())?;
                    Ok(dir)
                });
            match placed {
                Ok(true) => stats.dirs += 1,
                Ok(false) => stats.files += 1,
                Err(reason) => {
                    tracing::warn!(key = k.value(), %reason, "store record skipped");
                    stats.skipped += 1;
                }
            }
        }
        for row in tx.open_table(SLAVE_FLAGS).map_err(io)?.iter().map_err(io)? {
            let (id, flags) = row.map_err(io)?;
            let f = flags.value();
            st.slaves.load_flags(id.value(), f & 1 != 0, f & 2 != 0);
        }
        for row in tx.open_table(REPAIRS).map_err(io)?.iter().map_err(io)? {
            let (k, _) = row.map_err(io)?;
            if let Ok(p) = VPath::parse_absolute(k.value()) {
                crate::master::replica::load(st, p);
            }
        }
        for row in tx.open_table(USERS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            match postcard::from_bytes::<Option<crate::master::users::User>>(v.value()) {
                Ok(Some(u)) => {
                    st.users.insert(u);
                    stats.users += 1;
                }
                Ok(None) => {
                    st.users.remove(k.value());
                }
                Err(e) => {
                    tracing::warn!(user = k.value(), error = %e, "stored user skipped");
                    stats.skipped += 1;
                }
            }
        }
        for row in tx.open_table(OPS).map_err(io)?.iter().map_err(io)? {
            let (k, v) = row.map_err(io)?;
            let (slave, seq) = k.value();
            match postcard::from_bytes::<FileOp>(v.value()) {
                Ok(op) => {
                    st.slaves.load_op(slave, seq, op);
                    stats.queued_ops += 1;
                }
                Err(e) => {
                    tracing::warn!(slave, seq, error = %e, "queued operation skipped");
                    stats.skipped += 1;
                }
            }
        }
        Ok(stats)
    }

    /// Applies changes in one transaction, durable when this returns.
    pub fn apply(&self, changes: &[Change]) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(io)?;
        {
            let mut files = tx.open_table(FILES).map_err(io)?;
            let mut names = tx.open_table(NAMES).map_err(io)?;
            let mut slaves = tx.open_table(SLAVES).map_err(io)?;
            let mut ops = tx.open_table(OPS).map_err(io)?;
            let mut users = tx.open_table(USERS).map_err(io)?;
            let mut meta = tx.open_table(META).map_err(io)?;
            let mut flags = tx.open_table(SLAVE_FLAGS).map_err(io)?;
            let mut repairs = tx.open_table(REPAIRS).map_err(io)?;
            let mut buf = Vec::new();
            for c in changes {
                match c {
                    Change::Put(p, node) => {
                        buf.clear();
                        buf = postcard::to_extend(node, buf).map_err(io)?;
                        files.insert(p.as_str(), buf.as_slice()).map_err(io)?;
                    }
                    Change::Remove(p) => {
                        files.remove(p.as_str()).map_err(io)?;
                        let (lo, hi) = subtree(p);
                        files
                            .retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                            .map_err(io)?;
                    }
                    Change::Rename(from, to) => {
                        let (lo, hi) = subtree(from);
                        let mut moved: Vec<(String, Vec<u8>)> = Vec::new();
                        if let Some(v) = files.remove(from.as_str()).map_err(io)? {
                            moved.push((to.as_str().to_string(), v.value().to_vec()));
                        }
                        for row in files.range(lo.as_str()..hi.as_str()).map_err(io)? {
                            let (k, v) = row.map_err(io)?;
                            let rest = &k.value()[from.as_str().len()..];
                            moved.push((format!("{}{rest}", to.as_str()), v.value().to_vec()));
                        }
                        files
                            .retain_in(lo.as_str()..hi.as_str(), |_, _| false)
                            .map_err(io)?;
                        for (k, v) in moved {
                            files.insert(k.as_str(), v.as_slice()).map_err(io)?;
                        }
                    }
                    Change::Name(id, name) => {
                        names.insert(*id, name.as_str()).map_err(io)?;
                    }
                    Change::Slave(id, name) => {
                        slaves.insert(*id, name.as_str()).map_err(io)?;
                    }
                    Change::QueueOp(slave, seq, op) => {
                        let v = postcard::to_allocvec(op).map_err(io)?;
                        ops.insert((*slave, *seq), v.as_slice()).map_err(io)?;
                    }
                    Change::DequeueOps(slave, seq) => {
                        ops.retain_in((*slave, 0)..=(*slave, *seq), |_, _| false)
                            .map_err(io)?;
                    }
                    Change::PutUser(u) => {
                        let v = postcard::to_allocvec(&Some(u)).map_err(io)?;
                        users.insert(u.name.as_str(), v.as_slice()).map_err(io)?;
                    }
                    Change::SlaveFlags(id, draining, removed) => {
                        let f = u8::from(*draining) | (u8::from(*removed) << 1);
                        flags.insert(*id, f).map_err(io)?;
                    }
                    Change::Repair(p, true) => {
                        repairs.insert(p.as_str(), ()).map_err(io)?;
                    }
                    Change::Repair(p, false) => {
                        repairs.remove(p.as_str()).map_err(io)?;
                    }
                    Change::StoreId(id) => {
                        meta.insert("store_id", *id).map_err(io)?;
                    }
                    Change::VersionsReserved(upto) => {
                        meta.insert("versions_reserved", *upto).map_err(io)?;
                    }
                    Change::DeleteUser(name) => {
                        let none: Option<crate::master::users::User> = None;
                        let v = postcard::to_allocvec(&none).map_err(io)?;
                        users.insert(name.as_str(), v.as_slice()).map_err(io)?;
                    }
                }
            }
        }
        tx.commit().map_err(io)
    }

    /// Starts the writer and returns the handle sessions flush through.
    pub fn start_writer(self) -> StoreHandle {
        let (tx, rx) = mpsc::unbounded_channel::<Batch>();
        let timer: Arc<OnceLock<CommitTimer>> = Arc::new(OnceLock::new());
        if self.inline {
            // The simulator's store: never timed (no wall clock there).
            tokio::spawn(async move {
                let mut rx = rx;
                while let Some(first) = rx.recv().await {
                    commit_group(&self, first, &mut rx);
                }
            });
        } else {
            // A real store syncs to disk on every commit: a blocking call
            // that must not stall the runtime's workers. Production only;
            // the simulator's store is inline (no OS threads there).
            let timing = timer.clone();
            let spawned = std::thread::Builder::new()
                .name("dftpd-store".into())
                .spawn(move || {
                    let mut rx = rx;
                    while let Some(first) = rx.blocking_recv() {
                        let started = std::time::Instant::now();
                        commit_group(&self, first, &mut rx);
                        if let Some(t) = timing.get() {
                            t(started.elapsed());
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the metadata store writer");
            }
        }
        StoreHandle { tx, timer }
    }
}

/// The key range strictly below `p`: `p/` up to (not including) `p0`.
fn subtree(p: &VPath) -> (String, String) {
    let base = p.as_str().trim_end_matches('/');
    (format!("{base}/"), format!("{base}0"))
}

type Batch = (Vec<Change>, Option<oneshot::Sender<Result<(), String>>>);

/// Commits `first` and every batch already queued behind it in one
/// transaction, then tells each waiter.
fn commit_group(store: &MetaStore, first: Batch, rx: &mut mpsc::UnboundedReceiver<Batch>) {
    let (mut changes, waiter) = first;
    let mut waiters: Vec<_> = waiter.into_iter().collect();
    while let Ok((more, w)) = rx.try_recv() {
        changes.extend(more);
        waiters.extend(w);
        if changes.len() > 200_000 {
            break;
        }
    }
    let result = store.apply(&changes).map_err(|e| e.to_string());
    if let Err(e) = &result {
        tracing::error!(error = %e, changes = changes.len(), "metadata store commit failed");
    }
    for w in waiters {
        let _ = w.send(result.clone());
    }
}

/// Told how long each commit of the file store took (the metrics'
/// `dftpd_store_commit_seconds`).
pub type CommitTimer = Arc<dyn Fn(std::time::Duration) + Send + Sync>;

/// Where sessions and links send their journals.
#[derive(Clone)]
pub struct StoreHandle {
    tx: mpsc::UnboundedSender<Batch>,
    timer: Arc<OnceLock<CommitTimer>>,
}

/// A flushed batch: await [`Durable::wait`] before replying.
pub struct Durable(oneshot::Receiver<Result<(), String>>);

impl Durable {
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Io(e)),
            Err(_) => Err(StoreError::Stopped),
        }
    }
}

impl StoreHandle {
    /// Reports the duration of every later commit of a file store (once;
    /// later calls are ignored). The simulator's store is not timed.
    pub fn time_commits(&self, timer: CommitTimer) {
        let _ = self.timer.set(timer);
    }

    /// Queues `changes`; the returned [`Durable`] resolves once committed.
    pub fn submit(&self, changes: Vec<Change>) -> Durable {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send((changes, Some(tx)));
        Durable(rx)
    }
}

/// Where `dftpd master --rebuild` leaves the old store file when it cannot
/// be opened at all.
pub fn aside_path(path: &Path, now: i64) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".unreadable-{now}"));
    PathBuf::from(s)
}

/// `dftpd master --rebuild`: forget the file database so the slaves'
/// remerges rebuild it. A readable store keeps its names (owners, slave
/// ids) and loses its file records and queued operations; an unreadable
/// one is moved aside (kept for inspection) and a new one is created.
/// Returns what was done, for the operator.
pub fn rebuild(path: &Path, now: i64) -> Result<String, StoreError> {
    if !path.exists() {
        MetaStore::open_file(path)?;
        return Ok(format!(
            "no store at {}; created an empty one",
            path.display()
        ));
    }
    match MetaStore::open_file(path) {
        Ok(store) => {
            let n = store.clear_files()?;
            Ok(format!(
                "store {}: dropped {n} file and directory records; the slaves' remerges rebuild them",
                path.display()
            ))
        }
        Err(e) => {
            let aside = aside_path(path, now);
            std::fs::rename(path, &aside).map_err(|io| StoreError::Open {
                path: path.display().to_string(),
                reason: format!("unreadable ({e}) and cannot be moved aside: {io}"),
            })?;
            MetaStore::open_file(path)?;
            Ok(format!(
                "store {} was unreadable ({e}); moved to {} and started empty; the slaves' remerges rebuild it",
                path.display(),
                aside.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;
    use crate::master::db::{FileMeta, Holders};

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn fresh(mem: &SharedMemory) -> (MetaStore, MasterState) {
        let store = MetaStore::open_memory(mem).unwrap();
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        store.load(&mut st).unwrap();
        st.db.open_journal();
        st.slaves.open_journal();
        (store, st)
    }

    fn file(size: u64, holders: &[u16]) -> FileMeta {
        FileMeta {
            version: 1,
            size,
            mtime: 5,
            owner: 0,
            group: 0,
            crc32: Some(7),
            holders: Holders::from_slice(holders),
        }
    }

    fn listing(st: &MasterState) -> Vec<(String, u64, Vec<u16>)> {
        st.db
            .files_under(&VPath::root())
            .into_iter()
            .map(|(p, f)| (p.to_string(), f.size, f.holders.to_vec()))
            .collect()
    }

    fn persist(store: &MetaStore, st: &mut MasterState) {
        let mut c = st.db.take_journal();
        c.extend(st.slaves.take_journal());
        store.apply(&c).unwrap();
    }

    #[test]
    fn every_mutation_survives_a_reload() {
        let mem = SharedMemory::new();
        let (store, mut st) = fresh(&mem);
        let a = st.slaves.id_for("a");
        let b = st.slaves.id_for("b");
        st.db.mkdir_all(&p("/x/y"), "alice", 10).unwrap();
        st.db.mkdir(&p("/empty"), "bob", 11).unwrap();
        st.db.put_file(&p("/x/y/1"), file(10, &[a])).unwrap();
        st.db.put_file(&p("/x/y/2"), file(20, &[a, b])).unwrap();
        st.db.put_file(&p("/x-y"), file(30, &[b])).unwrap();
        st.db.put_file(&p("/gone"), file(1, &[a])).unwrap();
        persist(&store, &mut st);
        st.db.rename(&p("/x"), &p("/z"), 12).unwrap();
        st.db.remove_file(&p("/gone")).unwrap();
        st.db.remove_holder(&p("/z/y/2"), a).unwrap();
        st.db.set_mtime(&p("/x-y"), 99).unwrap();
        st.slaves.log_op(
            a,
            FileOp::Rename {
                from: p("/x"),
                to: p("/z"),
            },
        );
        persist(&store, &mut st);
        let before = listing(&st);
        let alice = st.db.intern("alice");
        drop(store);

        let (_store, st2) = fresh(&mem);
        assert_eq!(listing(&st2), before);
        assert_eq!(st2.db.file(&p("/x-y")).unwrap().mtime, 99);
        assert_eq!(st2.db.file(&p("/z/y/1")).unwrap().crc32, Some(7));
        assert_eq!(st2.db.dir(&p("/z/y")).unwrap().owner, alice);
        assert_eq!(st2.db.name(alice), "alice");
        assert_eq!(st2.db.name(st2.db.dir(&p("/empty")).unwrap().owner), "bob");
        assert!(st2.db.get(&p("/x")).is_none());
        assert_eq!(st2.slaves.name(a), "a");
        assert_eq!(st2.slaves.name(b), "b");
        assert_eq!(st2.slaves.get(a).unwrap().log.len(), 1);
        assert_eq!(st2.db.held_by(a), 1);
        assert_eq!(st2.db.held_by(b), 2);
    }

    #[test]
    fn rename_moves_only_the_subtree() {
        let mem = SharedMemory::new();
        let (store, mut st) = fresh(&mem);
        // "/a-b" and "/a0" sort around "/a/..." and must not move with "/a".
        for f in ["/a/1", "/a/sub/2", "/a-b", "/a0", "/ab"] {
            st.db.mkdir_all(&p(f).parent().unwrap(), "x", 0).unwrap();
            st.db.put_file(&p(f), file(1, &[0])).unwrap();
        }
        st.db.rename(&p("/a"), &p("/q/a"), 1).unwrap_err();
        st.db.mkdir(&p("/q"), "x", 1).unwrap();
        st.db.rename(&p("/a"), &p("/q/a"), 1).unwrap();
        persist(&store, &mut st);
        let before = listing(&st);
        drop(store);
        let (_s, st2) = fresh(&mem);
        assert_eq!(listing(&st2), before);
        assert_eq!(
            before.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/a-b", "/a0", "/ab", "/q/a/1", "/q/a/sub/2"]
        );
    }

    #[test]
    fn delete_of_a_directory_tree_and_dequeue() {
        let mem = SharedMemory::new();
        let (store, mut st) = fresh(&mem);
        let a = st.slaves.id_for("a");
        st.db.mkdir_all(&p("/d/e"), "x", 0).unwrap();
        st.db.put_file(&p("/d/e/f"), file(1, &[a])).unwrap();
        for i in 0..3 {
            st.slaves.log_op(
                a,
                FileOp::Delete {
                    path: p(&format!("/{i}")),
                },
            );
        }
        persist(&store, &mut st);
        st.db.remove_file(&p("/d/e/f")).unwrap();
        st.db.rmdir(&p("/d/e")).unwrap();
        let upto = st.slaves.get(a).unwrap().log[1].0;
        st.slaves.acked(a, upto);
        persist(&store, &mut st);
        drop(store);
        let (_s, st2) = fresh(&mem);
        assert!(st2.db.get(&p("/d/e")).is_none());
        assert!(st2.db.dir(&p("/d")).is_ok());
        let left = &st2.slaves.get(a).unwrap().log;
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].1, FileOp::Delete { path: p("/2") });
    }

    #[test]
    fn stored_users_override_the_config_and_deletions_stick() {
        let mem = SharedMemory::new();
        let cfg = MasterConfig {
            users: vec![
                crate::config::UserConfig {
                    name: "cfg".into(),
                    password: "x".into(),
                    ..Default::default()
                },
                crate::config::UserConfig {
                    name: "keep".into(),
                    password: "y".into(),
                    ..Default::default()
                },
            ],
            password_cost: crate::master::users::PasswordCost::FAST,
            ..MasterConfig::default()
        };
        let store = MetaStore::open_memory(&mem).unwrap();
        let mut st = MasterState::new(Arc::new(cfg.clone()));
        let mut added = st.users.get("keep").unwrap().clone();
        added.name = "added".into();
        added.uploaded = 42;
        store
            .apply(&[Change::PutUser(added), Change::DeleteUser("cfg".into())])
            .unwrap();
        drop(store);
        let store = MetaStore::open_memory(&mem).unwrap();
        let mut st2 = MasterState::new(Arc::new(cfg));
        assert_eq!(store.load(&mut st2).unwrap().users, 1);
        assert!(st2.users.get("cfg").is_none());
        assert!(st2.users.get("keep").is_some());
        assert_eq!(st2.users.get("added").unwrap().uploaded, 42);
        st.users.remove("x");
    }

    #[test]
    fn clear_files_keeps_names() {
        let mem = SharedMemory::new();
        let (store, mut st) = fresh(&mem);
        st.slaves.id_for("a");
        st.db.put_file(&p("/f"), file(1, &[0])).unwrap();
        persist(&store, &mut st);
        assert_eq!(store.clear_files().unwrap(), 1);
        drop(store);
        let (_s, st2) = fresh(&mem);
        assert_eq!(st2.db.file_count(), 0);
        assert_eq!(st2.slaves.name(0), "a");
    }

    #[test]
    fn a_file_store_survives_reopen_and_a_wiped_memory_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/master.redb");
        {
            let store = MetaStore::open_file(&path).unwrap();
            let mut st = MasterState::new(Arc::new(MasterConfig::default()));
            st.db.open_journal();
            st.db.put_file(&p("/f"), file(3, &[0])).unwrap();
            store.apply(&st.db.take_journal()).unwrap();
        }
        let store = MetaStore::open_file(&path).unwrap();
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        assert_eq!(store.load(&mut st).unwrap().files, 1);

        let mem = SharedMemory::new();
        {
            let (store, mut st) = fresh(&mem);
            st.db.put_file(&p("/f"), file(3, &[0])).unwrap();
            persist(&store, &mut st);
        }
        mem.wipe();
        let (_s, st) = fresh(&mem);
        assert_eq!(st.db.file_count(), 0);
    }

    #[test]
    fn rebuild_clears_a_good_store_and_moves_a_bad_one_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.redb");
        assert!(rebuild(&path, 1).unwrap().contains("created an empty one"));
        {
            let store = MetaStore::open_file(&path).unwrap();
            let mut st = MasterState::new(Arc::new(MasterConfig::default()));
            st.db.open_journal();
            st.db.put_file(&p("/f"), file(3, &[0])).unwrap();
            store.apply(&st.db.take_journal()).unwrap();
        }
        assert!(rebuild(&path, 2).unwrap().contains("dropped 1"));
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        MetaStore::open_file(&path).unwrap().load(&mut st).unwrap();
        assert_eq!(st.db.file_count(), 0);
        std::fs::write(&path, b"this is not a redb file, not at all").unwrap();
        assert!(MetaStore::open_file(&path).is_err());
        let msg = rebuild(&path, 3).unwrap();
        assert!(msg.contains("unreadable"), "{msg}");
        assert!(aside_path(&path, 3).exists());
        assert!(MetaStore::open_file(&path).is_ok());
    }

    #[tokio::test]
    async fn writer_groups_batches_and_reports_durability() {
        let mem = SharedMemory::new();
        let (store, mut st) = fresh(&mem);
        let h = store.start_writer();
        let mut waits = Vec::new();
        for i in 0..10 {
            st.db
                .put_file(&p(&format!("/f{i}")), file(i, &[0]))
                .unwrap();
            waits.push(h.submit(st.db.take_journal()));
        }
        for w in waits {
            w.wait().await.unwrap();
        }
        let (_s, st2) = fresh(&mem);
        assert_eq!(st2.db.file_count(), 10);
    }
}

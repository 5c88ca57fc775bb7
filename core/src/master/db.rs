//! The master's file database: the directory tree every client sees, with
//! each file's size, time, owner, checksum and the set of slaves holding it.
//! Directories exist only here; slaves create parent directories on demand.
//!
//! A tree of `BTreeMap`s: listings come out sorted, iteration order never
//! depends on hashing, and a directory rename moves one subtree.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;

use crate::proto::VPath;

/// Index of a slave in the master's registry.
pub type SlaveId = u16;

/// Slaves holding a file: sorted, no duplicates, inline up to four (no heap
/// allocation per file in the common case).
pub type Holders = SmallVec<[SlaveId; 4]>;

/// An owner or group, interned in the database ([`FileDb::intern`]): sites
/// have few users and millions of files.
pub type NameId = u32;

/// One file. Kept small: the database holds every file of the site (10M
/// files in < 2 GB is a goal; see ARCHITECTURE.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMeta {
    pub size: u64,
    pub mtime: i64,
    pub owner: NameId,
    pub group: NameId,
    pub crc32: Option<u32>,
    /// The version's generation ([`FileDb::new_version`]): only copies of
    /// this version count; any other copy is stale.
    pub version: u64,
    pub holders: Holders,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DirMeta {
    pub mtime: i64,
    pub owner: NameId,
    pub group: NameId,
    pub children: BTreeMap<Box<str>, Node>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    File(FileMeta),
    Dir(Box<DirMeta>),
}

impl Node {
    pub fn is_dir(&self) -> bool {
        matches!(self, Node::Dir(_))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    #[error("No such file or directory")]
    NotFound,
    #[error("Not a directory")]
    NotADirectory,
    #[error("Is a directory")]
    IsADirectory,
    #[error("File exists")]
    Exists,
    #[error("Directory not empty")]
    NotEmpty,
    #[error("Cannot move a directory into itself")]
    IntoItself,
    #[error("Cannot change the root directory")]
    Root,
}

impl DbError {
    /// RFC 959 reply code for this error.
    pub fn code(&self) -> u16 {
        match self {
            DbError::Exists => 553,
            _ => 550,
        }
    }
}

/// A node as the metadata store keeps it: one record per path, children
/// found by key order (see `store.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredNode {
    Dir {
        mtime: i64,
        owner: NameId,
        group: NameId,
    },
    /// A file record written before versions (read, never written).
    File {
        size: u64,
        mtime: i64,
        owner: NameId,
        group: NameId,
        crc32: Option<u32>,
        holders: Vec<SlaveId>,
    },
    /// A file with its version.
    VFile {
        size: u64,
        mtime: i64,
        owner: NameId,
        group: NameId,
        crc32: Option<u32>,
        holders: Vec<SlaveId>,
        version: u64,
    },
}

/// One change to the master's durable state, in the order it happened.
/// The database (and the slave registry) append these to a journal while
/// one is open; the driver hands the journal to the store and waits for it
/// to be durable before telling a client "done".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The node at this path is now this (replaces any earlier record).
    Put(VPath, StoredNode),
    /// The node at this path and everything below it are gone.
    Remove(VPath),
    /// The node at `from` and everything below it moved to `to`.
    Rename(VPath, VPath),
    /// An owner/group name got this id.
    Name(NameId, String),
    /// A slave name got this id.
    Slave(SlaveId, String),
    /// An operation queued for an offline slave, in its queue order.
    QueueOp(SlaveId, u64, crate::link::FileOp),
    /// The slave applied every queued operation up to this sequence number.
    DequeueOps(SlaveId, u64),
    /// A user was added or changed (SITE commands, upload accounting).
    PutUser(crate::master::users::User),
    /// A user was deleted (kept as a tombstone over the config's users).
    DeleteUser(String),
    /// The store's identity (drawn when it is created; versions carry it).
    StoreId(u64),
    /// Version generations below this may have been handed out: a restart
    /// continues above it.
    VersionsReserved(u64),
    /// A slave's lifecycle flags: draining, removed.
    SlaveFlags(SlaveId, bool, bool),
    /// A path that may have fewer copies than its rule wants (the repair
    /// queue), or (`false`) no longer.
    Repair(VPath, bool),
}

/// Changes waiting for the store; closed (recording nothing) until opened,
/// so tests and tools that never persist pay nothing.
#[derive(Debug, Default)]
pub struct Journal(Option<Vec<Change>>);

impl Journal {
    pub fn open(&mut self) {
        self.0.get_or_insert_with(Vec::new);
    }
    pub fn is_open(&self) -> bool {
        self.0.is_some()
    }
    pub fn record(&mut self, c: Change) {
        if let Some(j) = &mut self.0 {
            j.push(c);
        }
    }
    /// The changes recorded since the last call.
    pub fn take(&mut self) -> Vec<Change> {
        self.0.as_mut().map(std::mem::take).unwrap_or_default()
    }
}

/// Generations are reserved in the store this many at a time.
const VERSION_BLOCK: u64 = 1024;

#[derive(Debug, Default)]
pub struct FileDb {
    root: DirMeta,
    /// The next version generation, and the reserved bound below which the
    /// store guarantees none was handed out before a restart.
    next_version: u64,
    versions_reserved: u64,
    /// Records loaded in the pre-version form, given a version at load:
    /// written back once the journal is open ([`FileDb::rewrite_converted`]).
    converted: Vec<VPath>,
    files: u64,
    /// Files held per slave, indexed by `SlaveId`.
    held: Vec<u64>,
    names: Vec<Box<str>>,
    name_ids: BTreeMap<Box<str>, NameId>,
    /// Changes not yet handed to the store.
    journal: Journal,
}

impl FileDb {
    pub fn new() -> FileDb {
        let mut db = FileDb::default();
        // Id 0 is the site itself (files found on slaves, the root).
        db.intern("dftpd");
        db
    }

    /// A new version generation (never one handed out before, across
    /// restarts: the store keeps a reserved bound).
    pub fn new_version(&mut self) -> u64 {
        self.next_version = self.next_version.max(1);
        let v = self.next_version;
        self.next_version += 1;
        if self.next_version > self.versions_reserved {
            self.versions_reserved = self.next_version + VERSION_BLOCK;
            let upto = self.versions_reserved;
            self.record(Change::VersionsReserved(upto));
        }
        v
    }

    /// After a load, with the journal open: writes back the records that
    /// got their version at load, and the reserved bound, so the versions
    /// handed out survive the next restart.
    pub fn rewrite_converted(&mut self) -> usize {
        let paths = std::mem::take(&mut self.converted);
        for p in &paths {
            self.record_node(p);
        }
        if !paths.is_empty() || self.next_version > 1 {
            let upto = self.versions_reserved.max(self.next_version);
            self.versions_reserved = upto;
            self.record(Change::VersionsReserved(upto));
        }
        paths.len()
    }

    /// Restores the reserved bound from the store (before any record).
    pub fn load_versions_reserved(&mut self, upto: u64) {
        self.versions_reserved = self.versions_reserved.max(upto);
        self.next_version = self.next_version.max(upto);
    }

    /// Starts recording changes for the store ([`FileDb::take_journal`]).
    pub fn open_journal(&mut self) {
        self.journal.open();
    }

    /// The changes made since the last call (empty when no journal is open).
    pub fn take_journal(&mut self) -> Vec<Change> {
        self.journal.take()
    }

    fn record(&mut self, c: Change) {
        self.journal.record(c);
    }

    /// Journals a change that is not about one node (store metadata).
    pub fn record_change(&mut self, c: Change) {
        self.journal.record(c);
    }

    /// Records the current state of the node at `path` (a `Put`, or a
    /// `Remove` if it is gone). The root has no record of its own.
    fn record_node(&mut self, path: &VPath) {
        if !self.journal.is_open() || path.is_root() {
            return;
        }
        let c = match self.get(path) {
            Some(n) => Change::Put(path.clone(), stored(n)),
            None => Change::Remove(path.clone()),
        };
        self.record(c);
    }

    /// Rebuilds one node from its store record (loading at start). Parents
    /// come first in store order; a missing one is created.
    pub fn load(&mut self, path: &VPath, node: StoredNode) -> Result<(), DbError> {
        if let Some(parent) = path.parent() {
            if self.dir(&parent).is_err() {
                self.mkdir_all(&parent, "dftpd", 0)?;
            }
        }
        let (parent, name) = Self::split(path)?;
        match node {
            StoredNode::Dir {
                mtime,
                owner,
                group,
            } => {
                let dir = self.dir_mut(&parent)?;
                match dir.children.get_mut(name) {
                    Some(Node::Dir(d)) => {
                        d.mtime = mtime;
                        d.owner = owner;
                        d.group = group;
                    }
                    Some(Node::File(_)) => return Err(DbError::Exists),
                    None => {
                        dir.children.insert(
                            name.into(),
                            Node::Dir(Box::new(DirMeta {
                                mtime,
                                owner,
                                group,
                                children: BTreeMap::new(),
                            })),
                        );
                    }
                }
            }
            StoredNode::File {
                size,
                mtime,
                owner,
                group,
                crc32,
                holders,
            } => {
                // Written before versions: it gets one now (its copies are
                // unversioned and adopted at their next remerge).
                let version = self.new_version();
                self.converted.push(path.clone());
                return self.load(
                    path,
                    StoredNode::VFile {
                        size,
                        mtime,
                        owner,
                        group,
                        crc32,
                        holders,
                        version,
                    },
                );
            }
            StoredNode::VFile {
                size,
                mtime,
                owner,
                group,
                crc32,
                mut holders,
                version,
            } => {
                holders.sort_unstable();
                holders.dedup();
                let keep = self.dir(&parent)?.mtime;
                self.next_version = self.next_version.max(version + 1);
                self.put_file(
                    path,
                    FileMeta {
                        size,
                        mtime,
                        owner,
                        group,
                        crc32,
                        version,
                        holders: Holders::from_vec(holders),
                    },
                )?;
                // Loading a file must not make its directory look newer.
                self.dir_mut(&parent)?.mtime = keep;
            }
        }
        Ok(())
    }

    /// Restores a name id from the store: ids must come back as they were.
    pub fn load_name(&mut self, id: NameId, name: &str) {
        let i = id as usize;
        if self.names.len() <= i {
            self.names.resize(i + 1, "?".into());
        }
        self.names[i] = name.into();
        self.name_ids.insert(name.into(), id);
    }

    /// The id of an owner or group name, adding it when new.
    pub fn intern(&mut self, name: &str) -> NameId {
        if let Some(&id) = self.name_ids.get(name) {
            return id;
        }
        let id = self.names.len() as NameId;
        self.names.push(name.into());
        self.name_ids.insert(name.into(), id);
        self.record(Change::Name(id, name.to_string()));
        id
    }

    pub fn name(&self, id: NameId) -> &str {
        self.names.get(id as usize).map(|n| &**n).unwrap_or("?")
    }

    pub fn file_count(&self) -> u64 {
        self.files
    }

    pub fn held_by(&self, slave: SlaveId) -> u64 {
        self.held.get(slave as usize).copied().unwrap_or(0)
    }

    pub fn root(&self) -> &DirMeta {
        &self.root
    }

    pub fn get(&self, path: &VPath) -> Option<&Node> {
        let mut dir = &self.root;
        let mut comps = path.components().peekable();
        // The root has no Node of its own; use dir().
        comps.peek()?;
        while let Some(c) = comps.next() {
            let node = dir.children.get(c)?;
            if comps.peek().is_none() {
                return Some(node);
            }
            match node {
                Node::Dir(d) => dir = d,
                Node::File(_) => return None,
            }
        }
        None
    }

    pub fn dir(&self, path: &VPath) -> Result<&DirMeta, DbError> {
        if path.is_root() {
            return Ok(&self.root);
        }
        match self.get(path) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(DbError::NotADirectory),
            None => Err(DbError::NotFound),
        }
    }

    pub fn file(&self, path: &VPath) -> Result<&FileMeta, DbError> {
        match self.get(path) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(DbError::IsADirectory),
            None if path.is_root() => Err(DbError::IsADirectory),
            None => Err(DbError::NotFound),
        }
    }

    fn dir_mut(&mut self, path: &VPath) -> Result<&mut DirMeta, DbError> {
        let mut dir = &mut self.root;
        for c in path.components() {
            match dir.children.get_mut(c) {
                Some(Node::Dir(d)) => dir = d,
                Some(Node::File(_)) => return Err(DbError::NotADirectory),
                None => return Err(DbError::NotFound),
            }
        }
        Ok(dir)
    }

    fn split(path: &VPath) -> Result<(VPath, &str), DbError> {
        match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) => Ok((p, n)),
            _ => Err(DbError::Root),
        }
    }

    pub fn mkdir(&mut self, path: &VPath, owner: &str, now: i64) -> Result<(), DbError> {
        let (parent, name) = Self::split(path)?;
        let owner = self.intern(owner);
        let dir = self.dir_mut(&parent)?;
        if dir.children.contains_key(name) {
            return Err(DbError::Exists);
        }
        dir.children.insert(
            name.into(),
            Node::Dir(Box::new(DirMeta {
                mtime: now,
                owner,
                group: owner,
                children: BTreeMap::new(),
            })),
        );
        dir.mtime = now;
        self.record_node(path);
        self.record_node(&parent);
        Ok(())
    }

    /// Creates `path` and every missing parent; existing directories are fine.
    pub fn mkdir_all(&mut self, path: &VPath, owner: &str, now: i64) -> Result<(), DbError> {
        let mut cur = VPath::root();
        for c in path.components().map(str::to_string).collect::<Vec<_>>() {
            cur = cur.join(&c).map_err(|_| DbError::NotFound)?;
            match self.get(&cur) {
                Some(Node::Dir(_)) => {}
                Some(Node::File(_)) => return Err(DbError::NotADirectory),
                None => self.mkdir(&cur, owner, now)?,
            }
        }
        Ok(())
    }

    pub fn rmdir(&mut self, path: &VPath) -> Result<(), DbError> {
        let (parent, name) = Self::split(path)?;
        let dir = self.dir_mut(&parent)?;
        match dir.children.get(name) {
            Some(Node::Dir(d)) if d.children.is_empty() => {
                dir.children.remove(name);
                self.record(Change::Remove(path.clone()));
                Ok(())
            }
            Some(Node::Dir(_)) => Err(DbError::NotEmpty),
            Some(Node::File(_)) => Err(DbError::NotADirectory),
            None => Err(DbError::NotFound),
        }
    }

    /// Records a complete file, replacing any earlier file of that name.
    /// Returns the replaced file's metadata.
    pub fn put_file(&mut self, path: &VPath, meta: FileMeta) -> Result<Option<FileMeta>, DbError> {
        let (parent, name) = Self::split(path)?;
        let new_holders = meta.holders.clone();
        let dir = self.dir_mut(&parent)?;
        let dir_changed = meta.mtime > dir.mtime;
        dir.mtime = dir.mtime.max(meta.mtime);
        let old = match dir.children.get(name) {
            Some(Node::Dir(_)) => return Err(DbError::IsADirectory),
            Some(Node::File(_)) | None => dir.children.insert(name.into(), Node::File(meta)),
        };
        let old = match old {
            Some(Node::File(f)) => {
                self.count_holders(&f.holders, -1);
                self.files -= 1;
                Some(f)
            }
            _ => None,
        };
        self.count_holders(&new_holders, 1);
        self.files += 1;
        self.record_node(path);
        if dir_changed {
            self.record_node(&parent);
        }
        Ok(old)
    }

    pub fn remove_file(&mut self, path: &VPath) -> Result<FileMeta, DbError> {
        let (parent, name) = Self::split(path)?;
        let dir = self.dir_mut(&parent)?;
        match dir.children.get(name) {
            Some(Node::File(_)) => {}
            Some(Node::Dir(_)) => return Err(DbError::IsADirectory),
            None => return Err(DbError::NotFound),
        }
        let Some(Node::File(f)) = dir.children.remove(name) else {
            return Err(DbError::NotFound);
        };
        self.count_holders(&f.holders, -1);
        self.files -= 1;
        self.record(Change::Remove(path.clone()));
        Ok(f)
    }

    /// Adds `slave` to the holders of an existing file.
    pub fn add_holder(&mut self, path: &VPath, slave: SlaveId) -> Result<(), DbError> {
        let f = self.file_mut(path)?;
        if let Err(pos) = f.holders.binary_search(&slave) {
            f.holders.insert(pos, slave);
            self.count_holders(&[slave], 1);
            self.record_node(path);
        }
        Ok(())
    }

    /// Removes `slave` from a file's holders; the file itself is dropped when
    /// no copy is left anywhere. Returns whether the file was dropped.
    pub fn remove_holder(&mut self, path: &VPath, slave: SlaveId) -> Result<bool, DbError> {
        let f = self.file_mut(path)?;
        let Ok(pos) = f.holders.binary_search(&slave) else {
            return Ok(false);
        };
        f.holders.remove(pos);
        let empty = f.holders.is_empty();
        self.count_holders(&[slave], -1);
        if empty {
            self.remove_file(path)?;
        } else {
            self.record_node(path);
        }
        Ok(empty)
    }

    fn file_mut(&mut self, path: &VPath) -> Result<&mut FileMeta, DbError> {
        let (parent, name) = Self::split(path)?;
        match self.dir_mut(&parent)?.children.get_mut(name) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(DbError::IsADirectory),
            None => Err(DbError::NotFound),
        }
    }

    pub fn set_mtime(&mut self, path: &VPath, mtime: i64) -> Result<(), DbError> {
        match self.file_mut(path) {
            Ok(f) => f.mtime = mtime,
            Err(DbError::IsADirectory) => self.dir_mut(path)?.mtime = mtime,
            Err(e) => return Err(e),
        }
        self.record_node(path);
        Ok(())
    }

    /// Moves a file or a whole directory. The target must not exist.
    pub fn rename(&mut self, from: &VPath, to: &VPath, now: i64) -> Result<(), DbError> {
        let (from_parent, from_name) = Self::split(from)?;
        let (to_parent, to_name) = Self::split(to)?;
        if to.starts_with(from) {
            return Err(if to == from {
                DbError::Exists
            } else {
                DbError::IntoItself
            });
        }
        // Check everything before changing anything.
        self.dir(&from_parent)?
            .children
            .get(from_name)
            .ok_or(DbError::NotFound)?;
        if self.dir(&to_parent)?.children.contains_key(to_name) {
            return Err(DbError::Exists);
        }
        let src = self.dir_mut(&from_parent)?;
        let Some(node) = src.children.remove(from_name) else {
            return Err(DbError::NotFound);
        };
        src.mtime = now;
        let dst = self.dir_mut(&to_parent)?;
        dst.children.insert(to_name.into(), node);
        dst.mtime = now;
        self.record(Change::Rename(from.clone(), to.clone()));
        self.record_node(&from_parent);
        self.record_node(&to_parent);
        Ok(())
    }

    /// Every file at or below `path`, in path order, with its metadata.
    pub fn files_under(&self, path: &VPath) -> Vec<(VPath, &FileMeta)> {
        let mut out = Vec::new();
        if path.is_root() {
            walk(&self.root, &VPath::root(), &mut out);
            return out;
        }
        match self.get(path) {
            Some(Node::File(f)) => out.push((path.clone(), f)),
            Some(Node::Dir(d)) => walk(d, path, &mut out),
            None => {}
        }
        out
    }

    /// The slaves holding any file at or below `path`, sorted.
    pub fn holders_under(&self, path: &VPath) -> Vec<SlaveId> {
        let mut set: Vec<SlaveId> = self
            .files_under(path)
            .into_iter()
            .flat_map(|(_, f)| f.holders.iter().copied())
            .collect();
        set.sort_unstable();
        set.dedup();
        set
    }

    /// Visits up to `limit` files in path order, starting after `after`
    /// (`None`: from the start). Returns the visited files held by `slave`,
    /// and the cursor to continue from (`None` when the walk is complete).
    /// Lets a caller sweep millions of files in slices, releasing the lock
    /// between them.
    pub fn scan_held(
        &self,
        slave: SlaveId,
        after: Option<&VPath>,
        limit: usize,
    ) -> (Vec<VPath>, Option<VPath>) {
        let cursor: Option<Vec<&str>> = after.map(|p| p.components().collect());
        let mut scan = Scan {
            slave,
            left: limit.max(1),
            held: Vec::new(),
            last: None,
        };
        let stopped = scan.dir(&self.root, &VPath::root(), cursor.as_deref());
        let next = if stopped { scan.last } else { None };
        (scan.held, next)
    }

    fn count_holders(&mut self, holders: &[SlaveId], delta: i64) {
        for &h in holders {
            let i = h as usize;
            if self.held.len() <= i {
                self.held.resize(i + 1, 0);
            }
            self.held[i] = (self.held[i] as i64 + delta).max(0) as u64;
        }
    }
}

struct Scan {
    slave: SlaveId,
    left: usize,
    held: Vec<VPath>,
    last: Option<VPath>,
}

impl Scan {
    /// Returns true when the limit stopped the walk.
    fn dir(&mut self, dir: &DirMeta, at: &VPath, cursor: Option<&[&str]>) -> bool {
        let first = cursor.and_then(|c| c.first().copied());
        let range = match first {
            Some(f) => dir
                .children
                .range::<str, _>((Bound::Included(f), Bound::Unbounded)),
            None => dir.children.range::<str, _>(..),
        };
        for (name, node) in range {
            let sub = match (cursor, first) {
                (Some(c), Some(f)) if f == &**name => Some(&c[1..]),
                _ => None,
            };
            let Ok(path) = at.join(name) else { continue };
            match node {
                Node::File(f) => {
                    if sub.is_some() {
                        continue; // the cursor itself: visited last time
                    }
                    if f.holders.contains(&self.slave) {
                        self.held.push(path.clone());
                    }
                    self.last = Some(path);
                    self.left -= 1;
                    if self.left == 0 {
                        return true;
                    }
                }
                Node::Dir(d) => {
                    if self.dir(d, &path, sub.filter(|c| !c.is_empty())) {
                        return true;
                    }
                }
            }
        }
        false
    }
}

/// The store record of a node (its children are records of their own).
pub fn stored(n: &Node) -> StoredNode {
    match n {
        Node::Dir(d) => StoredNode::Dir {
            mtime: d.mtime,
            owner: d.owner,
            group: d.group,
        },
        Node::File(f) => StoredNode::VFile {
            size: f.size,
            mtime: f.mtime,
            owner: f.owner,
            group: f.group,
            crc32: f.crc32,
            holders: f.holders.to_vec(),
            version: f.version,
        },
    }
}

fn walk<'a>(dir: &'a DirMeta, at: &VPath, out: &mut Vec<(VPath, &'a FileMeta)>) {
    for (name, node) in &dir.children {
        let Ok(p) = at.join(name) else { continue };
        match node {
            Node::File(f) => out.push((p, f)),
            Node::Dir(d) => walk(d, &p, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn file(size: u64, holders: &[SlaveId]) -> FileMeta {
        FileMeta {
            size,
            mtime: 1,
            owner: 0,
            group: 0,
            crc32: None,
            version: 1,
            holders: Holders::from_slice(holders),
        }
    }

    #[test]
    fn scan_held_walks_in_slices_and_survives_changes() {
        let mut db = FileDb::new();
        for i in 0..50 {
            let d = format!("/d{}", i % 7);
            db.mkdir_all(&p(&d), "u", 1).unwrap();
            db.put_file(&p(&format!("{d}/f{i:02}")), file(1, &[(i % 2) as SlaveId]))
                .unwrap();
        }
        let all: Vec<VPath> = db
            .files_under(&VPath::root())
            .into_iter()
            .filter(|(_, f)| f.holders.contains(&1))
            .map(|(p, _)| p)
            .collect();
        for limit in [1, 3, 8, 100] {
            let mut got = Vec::new();
            let mut cursor = None;
            loop {
                let (held, next) = db.scan_held(1, cursor.as_ref(), limit);
                got.extend(held);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            assert_eq!(got, all, "limit {limit}");
        }
        // The cursor's file vanishing between slices does not lose the rest.
        let (first, cursor) = db.scan_held(1, None, 5);
        let c = cursor.unwrap();
        db.remove_file(&c).unwrap();
        let (rest, _) = db.scan_held(1, Some(&c), 1000);
        let mut joined = first;
        joined.extend(rest);
        let expect: Vec<VPath> = all.into_iter().filter(|x| *x != c).collect();
        assert_eq!(joined, expect);
    }

    #[test]
    fn names_are_interned_and_records_stay_small() {
        let mut db = FileDb::new();
        assert_eq!(db.intern("dftpd"), 0);
        let a = db.intern("alice");
        assert_eq!(db.intern("alice"), a);
        assert_eq!(db.name(a), "alice");
        assert_eq!(db.name(999), "?");
        assert!(
            std::mem::size_of::<Node>() <= 64,
            "{}",
            std::mem::size_of::<Node>()
        );
    }

    #[test]
    fn mkdir_put_list_remove() {
        let mut db = FileDb::new();
        assert_eq!(db.mkdir(&p("/a/b"), "u", 1), Err(DbError::NotFound));
        db.mkdir(&p("/a"), "u", 1).unwrap();
        assert_eq!(db.mkdir(&p("/a"), "u", 1), Err(DbError::Exists));
        db.put_file(&p("/a/f"), file(3, &[0, 1])).unwrap();
        assert_eq!(db.file_count(), 1);
        assert_eq!(db.held_by(1), 1);
        assert_eq!(db.file(&p("/a/f")).unwrap().size, 3);
        assert_eq!(db.file(&p("/a")), Err(DbError::IsADirectory));
        assert_eq!(db.dir(&p("/a/f")).err(), Some(DbError::NotADirectory));
        assert_eq!(db.rmdir(&p("/a")), Err(DbError::NotEmpty));
        assert_eq!(db.mkdir(&p("/a/f/x"), "u", 1), Err(DbError::NotADirectory));
        db.remove_file(&p("/a/f")).unwrap();
        assert_eq!(db.held_by(1), 0);
        db.rmdir(&p("/a")).unwrap();
        assert!(db.root().children.is_empty());
        assert_eq!(db.rmdir(&VPath::root()), Err(DbError::Root));
    }

    #[test]
    fn holders_drop_file_when_last_copy_goes() {
        let mut db = FileDb::new();
        db.put_file(&p("/f"), file(3, &[2])).unwrap();
        db.add_holder(&p("/f"), 0).unwrap();
        db.add_holder(&p("/f"), 0).unwrap();
        assert_eq!(db.file(&p("/f")).unwrap().holders.as_slice(), &[0, 2]);
        assert!(!db.remove_holder(&p("/f"), 2).unwrap());
        assert!(db.remove_holder(&p("/f"), 0).unwrap());
        assert_eq!(db.get(&p("/f")), None);
        assert_eq!(db.file_count(), 0);
    }

    #[test]
    fn rename_moves_subtrees_and_refuses_bad_targets() {
        let mut db = FileDb::new();
        db.mkdir_all(&p("/a/b"), "u", 1).unwrap();
        db.put_file(&p("/a/b/f"), file(1, &[0])).unwrap();
        db.put_file(&p("/g"), file(1, &[1])).unwrap();
        assert_eq!(
            db.rename(&p("/a"), &p("/a/b/c"), 2),
            Err(DbError::IntoItself)
        );
        assert_eq!(db.rename(&p("/a"), &p("/g"), 2), Err(DbError::Exists));
        assert_eq!(db.rename(&p("/nope"), &p("/x"), 2), Err(DbError::NotFound));
        db.rename(&p("/a"), &p("/z"), 2).unwrap();
        assert!(db.file(&p("/z/b/f")).is_ok());
        assert_eq!(db.holders_under(&VPath::root()), vec![0, 1]);
        assert_eq!(db.holders_under(&p("/z")), vec![0]);
        let all: Vec<String> = db
            .files_under(&VPath::root())
            .into_iter()
            .map(|(p, _)| p.to_string())
            .collect();
        assert_eq!(all, vec!["/g", "/z/b/f"]);
    }

    #[test]
    fn put_file_replaces_and_recounts() {
        let mut db = FileDb::new();
        db.put_file(&p("/f"), file(1, &[0])).unwrap();
        let old = db.put_file(&p("/f"), file(2, &[1])).unwrap();
        assert_eq!(old.unwrap().holders.as_slice(), &[0]);
        assert_eq!((db.held_by(0), db.held_by(1), db.file_count()), (0, 1, 1));
        db.mkdir(&p("/d"), "u", 1).unwrap();
        assert_eq!(
            db.put_file(&p("/d"), file(1, &[0])),
            Err(DbError::IsADirectory)
        );
    }
}

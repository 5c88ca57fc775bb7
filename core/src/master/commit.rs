//! The upload commit path, the linearisation point of every write.
//!
//! 1. `planning`/`transfers` fix what the upload expects of its path when
//!    the data command comes ([`Expect`]: absent for STOR without
//!    overwrite and STOU, the version it appends to or resumes for APPE and
//!    REST+STOR, anything for an overwriting STOR).
//! 2. The slave receives the bytes under a temporary name and reports size
//!    and CRC-32; the transfer machine checks the client is still there.
//! 3. [`decide`] (under the state lock) compares the path's current
//!    version with the expectation (compare-and-swap): the loser of a race
//!    gets a clear reply and the slave discards its temporary file. The
//!    winner gets a new version, recorded at once (with its owner), and a
//!    `Commit` entry in the slave's operation log, ordered with every other
//!    operation on that slave.
//! 4. The slave renames the file into place with its version and
//!    acknowledges the entry; [`acked`] finishes the record (mtime) and
//!    orders the removal of the previous version's other copies, or, if the
//!    commit failed, restores the previous version.
//! 5. The client's `226` waits for that acknowledgement and for the store.
//!    A slave lost in between leaves the outcome unknown until the entry,
//!    resent after it reconnects, is acknowledged: the client waits a
//!    bounded time, then hears that the outcome is unknown.

use super::db::{FileMeta, Holders, Node, SlaveId};
use super::MasterState;
use crate::link::{FileOp, FileVersion, OpOutcome};
use crate::proto::{Reply, VPath};

/// What an upload expects its path to be when it commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No file there (STOR without overwrite, STOU).
    Absent,
    /// This version (APPE and REST+STOR build on it).
    Version(u64),
    /// Whatever is there (an overwriting STOR replaces it).
    Any,
}

/// Where an upload goes and what it expects there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadTarget {
    pub path: VPath,
    pub expect: Expect,
}

/// A decided commit waiting for the slave's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommit {
    /// Where the record is now (renames move it).
    pub path: VPath,
    pub version: u64,
    /// The record it replaced, restored if the commit fails.
    pub prev: Option<FileMeta>,
}

/// The version as slaves keep it.
pub fn file_version(st: &MasterState, meta: &FileMeta) -> FileVersion {
    FileVersion {
        store: st.store_id,
        gen: meta.version,
        size: meta.size,
        crc32: meta.crc32,
    }
}

/// Step 3: the compare-and-swap and the new version. Returns the sequence
/// number of the `Commit` entry in `slave`'s log, or the reply for a lost
/// race.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    st: &mut MasterState,
    slave: SlaveId,
    xfer: u64,
    target: &UploadTarget,
    size: u64,
    crc32: u32,
    owner: &str,
) -> Result<u64, Reply> {
    let path = &target.path;
    let current = match st.db.get(path) {
        Some(Node::Dir(_)) => {
            return Err(Reply::new(
                550,
                format!("{path}: a directory was made there during the upload; nothing stored"),
            ))
        }
        Some(Node::File(f)) => Some(f.version),
        None => None,
    };
    match (target.expect, current) {
        (Expect::Absent, Some(_)) => {
            return Err(Reply::new(
                553,
                format!("{path}: another upload created it meanwhile (overwriting is not allowed); yours was not stored"),
            ))
        }
        (Expect::Version(v), c) if c != Some(v) => {
            return Err(Reply::new(
                450,
                format!("{path}: changed during the upload (another upload, a rename or a delete); yours was not stored, try again"),
            ))
        }
        _ => {}
    }
    let now = st.now;
    if let Some(parent) = path.parent() {
        // The directory may have been removed during the upload.
        let _ = st.db.mkdir_all(&parent, owner, now);
    }
    let owner_id = st.db.intern(owner);
    let gen = st.db.new_version();
    let meta = FileMeta {
        size,
        mtime: now,
        owner: owner_id,
        group: owner_id,
        crc32: Some(crc32),
        version: gen,
        holders: Holders::from_slice(&[slave]),
    };
    let version = file_version(st, &meta);
    let prev = match st.db.put_file(path, meta) {
        Ok(prev) => prev,
        Err(e) => return Err(Reply::new(550, format!("{path}: {e}; nothing stored"))),
    };
    st.slaves.touch(path);
    let seq = st.slaves.log_op(
        slave,
        FileOp::Commit {
            xfer,
            path: path.clone(),
            version,
        },
    );
    st.commits.insert(
        (slave, seq),
        PendingCommit {
            path: path.clone(),
            version: gen,
            prev,
        },
    );
    Ok(seq)
}

/// Step 4: slave `slave` acknowledged log entry `seq`; if it was a commit,
/// finish it.
pub fn acked(st: &mut MasterState, slave: SlaveId, seq: u64, outcome: &OpOutcome) {
    let Some(pc) = st.commits.remove(&(slave, seq)) else {
        return;
    };
    let ours = st.db.file(&pc.path).is_ok_and(|f| f.version == pc.version);
    let committed = !matches!(outcome, OpOutcome::Failed(_));
    if committed {
        if let (true, OpOutcome::Committed { mtime, .. }) = (ours, outcome) {
            let _ = st.db.set_mtime(&pc.path, *mtime);
        }
        // A new version has one copy: the rules may want more.
        super::replica::note(st, &pc.path);
    } else if ours {
        // The commit did not happen: the previous version is current again.
        match pc.prev.clone() {
            Some(prev) => {
                let _ = st.db.put_file(&pc.path, prev);
            }
            None => {
                let _ = st.db.remove_file(&pc.path);
            }
        }
        return;
    }
    // The previous version is superseded (or its path is gone): its other
    // copies are stale.
    if let Some(prev) = pc.prev {
        let version = file_version(st, &prev);
        for h in prev.holders.iter().copied().filter(|&h| h != slave) {
            st.slaves.log_op(
                h,
                FileOp::DropStale {
                    path: pc.path.clone(),
                    version: Some(version),
                    size: prev.size,
                },
            );
        }
    }
}

/// A rename moved `from` to `to`: pending commits below it move along.
pub fn renamed(st: &mut MasterState, from: &VPath, to: &VPath) {
    for pc in st.commits.values_mut() {
        if pc.path == *from || pc.path.starts_with(from) {
            if let Some(rest) = pc.path.strip_prefix(from) {
                let mut p = to.clone();
                for c in rest {
                    if let Ok(q) = p.join(c) {
                        p = q;
                    }
                }
                pc.path = p;
            }
        }
    }
}

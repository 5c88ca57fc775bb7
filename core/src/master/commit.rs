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
    /// Copies on other slaves its 226 waits for (`sync_copies` - 1): made
    /// from the received upload before the commit decision, committed
    /// with it.
    pub sync: u32,
}

/// A decided commit waiting for the slave's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCommit {
    /// Where the record is now (renames move it).
    pub path: VPath,
    pub version: u64,
    /// The record it replaced, restored if the commit fails.
    pub prev: Option<FileMeta>,
    /// The uploading slave's commit (else a synchronous copy's: its
    /// failure only drops that copy).
    pub primary: bool,
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

/// Step 3: the compare-and-swap and the new version. `copies`: the
/// uploading slave and its transfer, then the synchronous copies' (slave,
/// transfer) waiting on other slaves; every one becomes a holder and gets
/// a `Commit` entry. Returns (slave, sequence number) of each entry, the
/// uploading slave's first, or the reply for a lost race.
pub fn decide(
    st: &mut MasterState,
    copies: &[(SlaveId, u64)],
    target: &UploadTarget,
    size: u64,
    crc32: u32,
    owner: &str,
) -> Result<Vec<(SlaveId, u64)>, Reply> {
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
    let mut holders: Vec<SlaveId> = copies.iter().map(|(s, _)| *s).collect();
    holders.sort_unstable();
    holders.dedup();
    let meta = FileMeta {
        size,
        mtime: now,
        owner: owner_id,
        group: owner_id,
        crc32: Some(crc32),
        version: gen,
        holders: Holders::from_vec(holders),
    };
    let version = file_version(st, &meta);
    let prev = match st.db.put_file(path, meta) {
        Ok(prev) => prev,
        Err(e) => return Err(Reply::new(550, format!("{path}: {e}; nothing stored"))),
    };
    st.slaves.touch(path);
    let mut seqs = Vec::with_capacity(copies.len());
    for (i, &(slave, xfer)) in copies.iter().enumerate() {
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
                prev: if i == 0 { prev.clone() } else { None },
                primary: i == 0,
            },
        );
        seqs.push((slave, seq));
    }
    Ok(seqs)
}

/// Step 4: slave `slave` acknowledged log entry `seq`; if it was a commit,
/// finish it.
pub fn acked(st: &mut MasterState, slave: SlaveId, seq: u64, outcome: &OpOutcome) {
    let Some(pc) = st.commits.remove(&(slave, seq)) else {
        return;
    };
    let ours = st.db.file(&pc.path).is_ok_and(|f| f.version == pc.version);
    let committed = !matches!(outcome, OpOutcome::Failed(_));
    if !pc.primary {
        // A synchronous copy: a failed one is just not a holder; one whose
        // upload did not commit after all (the record went back) is stale.
        match (committed, ours) {
            (false, true) => {
                let _ = st.db.remove_holder(&pc.path, slave);
            }
            (true, false)
                if !st
                    .db
                    .file(&pc.path)
                    .is_ok_and(|f| f.holders.contains(&slave)) =>
            {
                let size = match outcome {
                    OpOutcome::Committed { size, .. } => *size,
                    _ => 0,
                };
                st.slaves.log_op(
                    slave,
                    FileOp::DropStale {
                        path: pc.path.clone(),
                        version: Some(FileVersion {
                            store: st.store_id,
                            gen: pc.version,
                            size,
                            crc32: None,
                        }),
                        size,
                    },
                );
            }
            _ => {}
        }
        super::replica::note(st, &pc.path);
        return;
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;
    use std::sync::Arc;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn state() -> MasterState {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        for name in ["a", "b", "c"] {
            st.slaves.id_for(name);
        }
        st
    }

    fn target(path: &str) -> UploadTarget {
        UploadTarget {
            path: p(path),
            expect: Expect::Any,
            sync: 1,
        }
    }

    #[test]
    fn synchronous_copies_are_committed_with_the_upload() {
        let mut st = state();
        let seqs = decide(&mut st, &[(0, 10), (2, 11)], &target("/f"), 5, 7, "u").unwrap();
        assert_eq!(seqs.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 2]);
        let f = st.db.file(&p("/f")).unwrap();
        assert_eq!(f.holders.to_vec(), vec![0, 2]);
        for (slave, xfer) in [(0, 10), (2, 11)] {
            assert!(matches!(
                st.slaves.get(slave).unwrap().log.back(),
                Some((_, FileOp::Commit { xfer: x, .. })) if *x == xfer
            ));
        }
        // The copy on c fails to commit: c is no holder; the upload stays.
        acked(&mut st, 2, seqs[1].1, &OpOutcome::Failed("disk".into()));
        acked(
            &mut st,
            0,
            seqs[0].1,
            &OpOutcome::Committed { size: 5, mtime: 3 },
        );
        let f = st.db.file(&p("/f")).unwrap();
        assert_eq!((f.holders.to_vec(), f.mtime), (vec![0], 3));
    }

    #[test]
    fn a_copy_of_an_upload_that_did_not_commit_is_removed() {
        let mut st = state();
        let seqs = decide(&mut st, &[(0, 10), (1, 11)], &target("/g"), 5, 7, "u").unwrap();
        // The upload's own commit fails: the record goes (nothing before).
        acked(&mut st, 0, seqs[0].1, &OpOutcome::Failed("disk".into()));
        assert!(st.db.file(&p("/g")).is_err());
        // Its copy on b committed meanwhile: stale, removed.
        acked(
            &mut st,
            1,
            seqs[1].1,
            &OpOutcome::Committed { size: 5, mtime: 3 },
        );
        assert!(matches!(
            st.slaves.get(1).unwrap().log.back(),
            Some((_, FileOp::DropStale { path, .. })) if *path == p("/g")
        ));
    }
}

//! Remerge: reconciling a (re)joining slave's file list with the database.
//! The slave applied its operation log before listing (the master resends
//! every unacknowledged entry first), so its list is trusted, except for
//! paths changed since it connected ([`SlaveRegistry::touched`]): a change
//! made while a slave remerges wins over its older list.
//!
//! Each reported copy carries the version kept with the file. Rules:
//! - a copy of the recorded version counts: the slave becomes a holder;
//! - any other versioned copy of this store is stale (an older version, a
//!   deleted or renamed file): never counted, never served, removed by a
//!   `DropStale` order (only if the file is still that copy). Not on a
//!   fresh slave, one the master records no copy on and had no orders
//!   logged for when its link came up (new, or brought back
//!   by SITE ADDSLAVE after SITE DELSLAVE dropped its copies and its
//!   operation log): its copies are taken like an earlier store's (below),
//!   so a re-added slave's files come back, never deleted;
//! - an unversioned copy (placed by hand, or from before versions) or one
//!   from an earlier store (before `--rebuild`) is adopted when it agrees
//!   with the record (same size, and CRC-32 when known) or when the
//!   database has no other copy of that path (a new file, or the only copy
//!   changed behind the master's back: the disk wins); adopted copies get
//!   the record's version (`Stamp`). It is stale when another holder has
//!   the recorded version and it disagrees;
//! - a copy of the recorded size whose CRC-32 is unknown while the record's
//!   is known is checked first ([`Verify`]: the slave reads it and answers
//!   its CRC-32, then [`verified`] decides). Until then it does not count
//!   when another slave holds the file; the only copy keeps serving (the
//!   disk wins either way), and takes the new CRC-32 if it differs;
//! - a file where the database has a directory is stale;
//! - after the last chunk, files the slave did not report lose it as a
//!   holder (and leave the database when no holder is left).
//!
//! [`SlaveRegistry::touched`]: super::registry::SlaveRegistry::touched

use std::collections::BTreeSet;

use super::db::{FileMeta, Holders, Node, SlaveId};
use super::MasterState;
use crate::link::{FileOp, FileVersion, OpOutcome, RemoteFile};
use crate::proto::VPath;

/// Files visited per slice of the end-of-remerge sweep: the lock is
/// released between slices, so sessions keep getting replies.
pub const SWEEP_SLICE: usize = 20_000;

/// What to do with one reported copy.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// It is the recorded version.
    Holder,
    /// Adopt it into the existing record (same content) and stamp it.
    Adopt,
    /// A new record (or a changed only copy) from this copy, stamped.
    New,
    /// Same size, CRC-32 unknown, the record's known: read it first.
    Verify,
    /// Not counted; removed from the slave's disk.
    Stale(&'static str),
}

fn verdict(st: &MasterState, id: SlaveId, f: &RemoteFile, fresh: bool) -> Verdict {
    // A fresh slave's versions are taken like an earlier store's: nothing
    // the master recorded makes them stale.
    let this_store = |v: &FileVersion| v.store == st.store_id;
    let ours = |v: &FileVersion| this_store(v) && !fresh;
    match st.db.get(&f.path) {
        Some(Node::Dir(_)) => Verdict::Stale("a file where the database has a directory"),
        Some(Node::File(meta)) => match &f.version {
            Some(v) if this_store(v) && v.gen == meta.version && v.size == meta.size => {
                Verdict::Holder
            }
            Some(v) if ours(v) => Verdict::Stale("an older version"),
            _ => {
                let crc_agrees = match (f.version.and_then(|v| v.crc32), meta.crc32) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                };
                let others = meta.holders.iter().any(|&h| h != id);
                let crc_unknown = f.version.and_then(|v| v.crc32).is_none();
                if f.size == meta.size && crc_unknown && meta.crc32.is_some() {
                    Verdict::Verify
                } else if f.size == meta.size && crc_agrees {
                    Verdict::Adopt
                } else if others {
                    Verdict::Stale("another content than the recorded version")
                } else {
                    Verdict::New
                }
            }
        },
        None => match &f.version {
            Some(v) if ours(v) => Verdict::Stale("a deleted or renamed file"),
            _ => Verdict::New,
        },
    }
}

/// A copy to read before it counts: ask its slave for the CRC-32
/// ([`crate::link::Request::Checksum`]) and give the answer to [`verified`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verify {
    pub path: VPath,
    /// The record's version when the copy was listed.
    pub gen: u64,
}

/// Reconciles one chunk of a slave's file list (see the module rules).
/// Returns the copies to check before they count.
pub fn remerge_chunk(
    st: &mut MasterState,
    id: SlaveId,
    files: Vec<RemoteFile>,
    seen: &mut BTreeSet<VPath>,
) -> Vec<Verify> {
    let mut verify = Vec::new();
    let slave = st.slaves.name(id).to_string();
    // Fresh: the master records no copy on it but those this remerge
    // found (a new slave, or one SITE ADDSLAVE brought back after SITE
    // DELSLAVE dropped it and its operation log). Its versioned copies of
    // paths the master has no record of are then its files, not stale.
    // Not when its log held orders at link-up: those were for copies the
    // master recorded on it, deleted or replaced since (it would bring
    // deleted files back).
    // Nor with copies left behind by failed renames: it has the master's.
    let logged = st
        .slaves
        .get(id)
        .is_some_and(|s| s.logged_at_link_up || !s.misplaced.is_empty());
    let fresh = !logged && st.db.held_by(id) <= seen.len() as u64;
    for f in files {
        if f.path.is_root() {
            continue;
        }
        if st.slaves.touched(id, &f.path) {
            // Changed since the slave listed it: the log decides.
            seen.insert(f.path);
            continue;
        }
        if misplaced(st, id, &f, seen) {
            continue;
        }
        match verdict(st, id, &f, fresh) {
            Verdict::Holder => {
                let _ = st.db.add_holder(&f.path, id);
            }
            Verdict::Adopt => {
                let Ok(meta) = st.db.file(&f.path) else {
                    continue;
                };
                let version = FileVersion {
                    store: st.store_id,
                    gen: meta.version,
                    size: meta.size,
                    crc32: meta.crc32.or(f.version.and_then(|v| v.crc32)),
                };
                let _ = st.db.add_holder(&f.path, id);
                st.slaves.log_op(
                    id,
                    FileOp::Stamp {
                        path: f.path.clone(),
                        version,
                        mtime: f.mtime,
                    },
                );
            }
            Verdict::New => {
                if let Some(parent) = f.path.parent() {
                    if st.db.mkdir_all(&parent, "dftpd", f.mtime).is_err() {
                        tracing::warn!(%slave, path = %f.path, "slave has a file below a database file; ignored");
                        continue;
                    }
                }
                if let Ok(old) = st.db.file(&f.path) {
                    tracing::warn!(%slave, path = %f.path, recorded = old.size, found = f.size, "the only copy changed on the slave's disk; taking it");
                }
                let gen = st.db.new_version();
                let crc32 = f.version.and_then(|v| v.crc32);
                let _ = st.db.put_file(
                    &f.path,
                    FileMeta {
                        size: f.size,
                        mtime: f.mtime,
                        owner: 0,
                        group: 0,
                        crc32,
                        version: gen,
                        holders: Holders::from_slice(&[id]),
                    },
                );
                let version = FileVersion {
                    store: st.store_id,
                    gen,
                    size: f.size,
                    crc32,
                };
                st.slaves.log_op(
                    id,
                    FileOp::Stamp {
                        path: f.path.clone(),
                        version,
                        mtime: f.mtime,
                    },
                );
            }
            Verdict::Verify => {
                let Ok(meta) = st.db.file(&f.path) else {
                    continue;
                };
                let gen = meta.version;
                if meta.holders.iter().any(|&h| h != id) {
                    // Another slave has the recorded version: this copy
                    // counts only once its bytes are known to match.
                    if meta.holders.contains(&id) {
                        let _ = st.db.remove_holder(&f.path, id);
                    }
                    super::replica::note(st, &f.path);
                    verify.push(Verify { path: f.path, gen });
                    continue;
                }
                // The only copy: the disk wins whatever the check finds.
                let _ = st.db.add_holder(&f.path, id);
                verify.push(Verify {
                    path: f.path.clone(),
                    gen,
                });
            }
            Verdict::Stale(why) => {
                tracing::info!(%slave, path = %f.path, size = f.size, "stale copy ({why}): not used, removed from the slave");
                if st.db.file(&f.path).is_ok_and(|m| m.holders.contains(&id)) {
                    let _ = st.db.remove_holder(&f.path, id);
                    super::replica::note(st, &f.path);
                }
                st.slaves.log_op(
                    id,
                    FileOp::DropStale {
                        path: f.path.clone(),
                        version: f.version,
                        size: f.size,
                    },
                );
                // Not `seen`: the sweep drops the slave as a holder.
                continue;
            }
        }
        // A new file, or a copy back: copies per the replication rules.
        super::replica::note(st, &f.path);
        seen.insert(f.path);
    }
    verify
}

/// Where a copy left behind by a failed rename on slave `id` belongs: the
/// rename's target for `path` (at or below its `from`).
fn misplaced_target(st: &MasterState, id: SlaveId, path: &VPath) -> Option<VPath> {
    let moved = &st.slaves.get(id)?.misplaced;
    if moved.is_empty() {
        return None;
    }
    // The nearest of `path` and its directories that a failed rename left.
    let mut at = Some(path.clone());
    while let Some(from) = at {
        if let Some(to) = moved.get(&from) {
            let mut t = to.clone();
            for c in path.strip_prefix(&from)? {
                t = t.join(c).ok()?;
            }
            return Some(t);
        }
        at = from.parent();
    }
    None
}

/// A copy (stale by its path) that is the recorded version of the file a
/// failed rename on this slave was moving (its copy stayed at the old
/// name): kept, never dropped, and the rename asked again (it succeeds
/// once the slave's disk allows it). The slave keeps counting as a holder
/// where the record has it. Returns whether it was such a copy.
fn misplaced(
    st: &mut MasterState,
    id: SlaveId,
    f: &RemoteFile,
    seen: &mut BTreeSet<VPath>,
) -> bool {
    let Some(target) = misplaced_target(st, id, &f.path) else {
        return false;
    };
    let current = match (st.db.file(&target), &f.version) {
        (Ok(meta), Some(v)) => {
            v.store == st.store_id && v.gen == meta.version && v.size == meta.size
        }
        _ => false,
    };
    if !current {
        // The file was replaced or deleted since: nothing is left behind
        // here any more (a directory's entry stays for its other files).
        if let Some(info) = st.slaves.get_mut(id) {
            info.misplaced.remove(&f.path);
        }
        return false;
    }
    tracing::warn!(slave = %st.slaves.name(id), path = %f.path, to = %target, "copy left at its old name by a failed rename: kept, moving it again");
    if st.db.file(&target).is_ok_and(|m| m.holders.contains(&id)) {
        seen.insert(target.clone());
    }
    st.slaves.log_op(
        id,
        FileOp::Rename {
            from: f.path.clone(),
            to: target,
        },
    );
    true
}

/// Slave `id` acknowledged log entry `seq` with `outcome` (called before
/// the entry leaves the log). A rename it could not apply leaves its copy
/// at the old name: remembered (see [`SlaveInfo::misplaced`]), the copies
/// under the new name that other slaves hold stop counting this one (and
/// are repaired), and the operator is told. A rename that worked clears
/// what an earlier failure of it left.
///
/// [`SlaveInfo::misplaced`]: super::registry::SlaveInfo::misplaced
pub fn applied(st: &mut MasterState, id: SlaveId, seq: u64, outcome: &OpOutcome) {
    let Some(info) = st.slaves.get(id) else {
        return;
    };
    // The log is in sequence order and acknowledged from its front: the
    // entry is found at once.
    let entry = info
        .log
        .iter()
        .take_while(|(n, _)| *n <= seq)
        .find(|(n, _)| *n == seq);
    let Some((_, FileOp::Rename { from, to })) = entry else {
        return;
    };
    let (from, to) = (from.clone(), to.clone());
    let Some(info) = st.slaves.get_mut(id) else {
        return;
    };
    if !matches!(outcome, OpOutcome::Failed(_)) {
        if info.misplaced.get(&from) == Some(&to) {
            info.misplaced.remove(&from);
        }
        // A file left behind was renamed on: it belongs at the new name.
        for target in info.misplaced.values_mut() {
            if let Some(rest) = target.strip_prefix(&from) {
                let mut t = to.clone();
                for c in rest {
                    if let Ok(next) = t.join(c) {
                        t = next;
                    }
                }
                *target = t;
            }
        }
        return;
    }
    if info.misplaced.len() >= MISPLACED_MAX && !info.misplaced.contains_key(&from) {
        info.misplaced.pop_first();
    }
    info.misplaced.insert(from.clone(), to.clone());
    tracing::error!(slave = %info.name, %from, %to, "the slave could not rename its copy: it stays at the old name there (kept) and is moved again when the slave reconnects; fix its disk (a symbolic link in the way?)");
    let shared: Vec<VPath> = st
        .db
        .files_under(&to)
        .into_iter()
        .filter(|(_, m)| m.holders.contains(&id) && m.holders.len() > 1)
        .map(|(p, _)| p)
        .collect();
    for p in shared {
        let _ = st.db.remove_holder(&p, id);
        super::replica::note(st, &p);
    }
}

/// Failed renames remembered per slave, at most.
const MISPLACED_MAX: usize = 1024;

/// What slave `id` read of a copy [`remerge_chunk`] asked to check:
/// `Some((size, mtime, crc32))`, or `None` when it could not (the file is
/// gone, a disk error). A copy that matches the record is adopted and
/// stamped; one that does not is stale when another slave holds the file,
/// and otherwise (the only copy) becomes the record, with its CRC-32.
/// Nothing happens when the record changed since (the next remerge
/// decides).
pub fn verified(st: &mut MasterState, id: SlaveId, check: &Verify, read: Option<(u64, i64, u32)>) {
    let Ok(meta) = st.db.file(&check.path).cloned() else {
        return;
    };
    if meta.version != check.gen {
        return;
    }
    let slave = st.slaves.name(id).to_string();
    let path = &check.path;
    let Some((size, mtime, crc32)) = read else {
        tracing::info!(%slave, %path, "copy could not be read for its check: not counted");
        if meta.holders.iter().any(|&h| h != id) && meta.holders.contains(&id) {
            let _ = st.db.remove_holder(path, id);
            super::replica::note(st, path);
        }
        return;
    };
    let others = meta.holders.iter().any(|&h| h != id);
    let gen = if size == meta.size && Some(crc32) == meta.crc32 {
        let _ = st.db.add_holder(path, id);
        meta.version
    } else if others {
        tracing::info!(%slave, %path, size, crc32 = format_args!("{crc32:08x}"), "stale copy (another content than the recorded version): not used, removed from the slave");
        if meta.holders.contains(&id) {
            let _ = st.db.remove_holder(path, id);
        }
        st.slaves.log_op(
            id,
            FileOp::DropStale {
                path: path.clone(),
                version: None,
                size,
            },
        );
        super::replica::note(st, path);
        return;
    } else {
        tracing::warn!(%slave, %path, recorded = format_args!("{:08x}", meta.crc32.unwrap_or(0)), found = format_args!("{crc32:08x}"), "the only copy changed on the slave's disk; taking it");
        let gen = st.db.new_version();
        let _ = st.db.put_file(
            path,
            FileMeta {
                size,
                mtime,
                crc32: Some(crc32),
                version: gen,
                holders: Holders::from_slice(&[id]),
                ..meta
            },
        );
        gen
    };
    // Adopted as the record's version, or the new record: stamped.
    let version = FileVersion {
        store: st.store_id,
        gen,
        size,
        crc32: Some(crc32),
    };
    st.slaves.log_op(
        id,
        FileOp::Stamp {
            path: path.clone(),
            version,
            mtime,
        },
    );
    super::replica::note(st, path);
}

/// One slice of the end-of-remerge sweep: drops `id` from files it no
/// longer reported, visiting at most [`SWEEP_SLICE`] files after `cursor`.
/// Returns how many were dropped and where to continue (`None`: done).
pub fn remerge_sweep(
    st: &mut MasterState,
    id: SlaveId,
    seen: &BTreeSet<VPath>,
    cursor: Option<&VPath>,
) -> (u64, Option<VPath>) {
    let (held, next) = st.db.scan_held(id, cursor, SWEEP_SLICE);
    let mut dropped = 0;
    for p in held.iter().filter(|p| !seen.contains(*p)) {
        if st.slaves.touched(id, p) {
            continue;
        }
        let _ = st.db.remove_holder(p, id);
        super::replica::note(st, p);
        dropped += 1;
    }
    (dropped, next)
}

/// The whole sweep in one go (tests, tools).
pub fn remerge_finish(st: &mut MasterState, id: SlaveId, seen: &BTreeSet<VPath>) -> u64 {
    let mut cursor = None;
    let mut total = 0;
    loop {
        let (n, next) = remerge_sweep(st, id, seen, cursor.as_ref());
        total += n;
        match next {
            Some(c) => cursor = Some(c),
            None => return total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;
    use crate::master::registry::SlaveState;
    use std::sync::Arc;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn rf(path: &str, size: u64, version: Option<FileVersion>) -> RemoteFile {
        RemoteFile {
            path: p(path),
            size,
            mtime: 7,
            version,
        }
    }

    fn remerge(st: &mut MasterState, id: SlaveId, files: Vec<RemoteFile>) -> u64 {
        st.slaves.link_up(id);
        let mut seen = BTreeSet::new();
        remerge_chunk(st, id, files, &mut seen);
        let dropped = remerge_finish(st, id, &seen);
        st.slaves.remerged(id);
        dropped
    }

    fn last_op(st: &MasterState, id: SlaveId) -> Option<FileOp> {
        st.slaves
            .get(id)
            .unwrap()
            .log
            .back()
            .map(|(_, op)| op.clone())
    }

    #[test]
    fn a_same_size_copy_counts_only_once_its_crc_matches_the_record() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let (a, b) = (st.slaves.id_for("a"), st.slaves.id_for("b"));
        remerge(&mut st, a, vec![rf("/f", 10, None), rf("/g", 10, None)]);
        for f in ["/f", "/g"] {
            let mut m = st.db.file(&p(f)).unwrap().clone();
            m.crc32 = Some(0xAAAA);
            st.db.put_file(&p(f), m).unwrap();
        }
        let gen = |st: &MasterState, f: &str| st.db.file(&p(f)).unwrap().version;
        // b lists both unversioned, the record's size: neither counts yet.
        st.slaves.link_up(b);
        let mut seen = BTreeSet::new();
        let checks = remerge_chunk(
            &mut st,
            b,
            vec![rf("/f", 10, None), rf("/g", 10, None)],
            &mut seen,
        );
        assert_eq!(
            checks.iter().map(|c| c.path.as_str()).collect::<Vec<_>>(),
            ["/f", "/g"]
        );
        assert_eq!(st.db.file(&p("/f")).unwrap().holders.as_slice(), &[a]);
        // /f matches: adopted and stamped. /g differs while a has it: stale.
        verified(&mut st, b, &checks[0], Some((10, 7, 0xAAAA)));
        assert_eq!(st.db.file(&p("/f")).unwrap().holders.as_slice(), &[a, b]);
        assert!(
            matches!(last_op(&st, b), Some(FileOp::Stamp { version, .. }) if version.gen == gen(&st, "/f"))
        );
        verified(&mut st, b, &checks[1], Some((10, 7, 0xBBBB)));
        assert_eq!(st.db.file(&p("/g")).unwrap().holders.as_slice(), &[a]);
        assert_eq!(
            last_op(&st, b),
            Some(FileOp::DropStale {
                path: p("/g"),
                version: None,
                size: 10
            })
        );
        // The only copy (a alone holds /g): it keeps serving while checked, and
        // its new bytes become the record, CRC-32 included.
        assert_eq!(remerge(&mut st, b, vec![rf("/f", 10, None)]), 0);
        st.slaves.link_up(a);
        let old = gen(&st, "/g");
        let checks = remerge_chunk(&mut st, a, vec![rf("/g", 10, None)], &mut BTreeSet::new());
        assert_eq!(st.db.file(&p("/g")).unwrap().holders.as_slice(), &[a]);
        verified(&mut st, a, &checks[0], Some((10, 7, 0xCCCC)));
        let g = st.db.file(&p("/g")).unwrap();
        assert_eq!((g.crc32, g.holders.as_slice()), (Some(0xCCCC), &[a][..]));
        assert_ne!(g.version, old);
        // A check answered after the record changed decides nothing.
        let stale = Verify {
            path: p("/f"),
            gen: old,
        };
        verified(&mut st, b, &stale, Some((10, 7, 0xDDDD)));
        assert_eq!(st.db.file(&p("/f")).unwrap().crc32, Some(0xAAAA));
    }

    #[test]
    fn unversioned_copies_are_adopted_and_stamped() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        let b = st.slaves.id_for("b");
        remerge(&mut st, a, vec![rf("/x/1", 10, None), rf("/x/2", 20, None)]);
        assert_eq!(st.db.file_count(), 2);
        assert!(st.db.dir(&p("/x")).is_ok());
        let v1 = st.db.file(&p("/x/1")).unwrap().version;
        assert!(matches!(
            st.slaves.get(a).unwrap().log.front(),
            Some((_, FileOp::Stamp { version, .. })) if version.gen == v1 && version.store == 5
        ));
        // b: /x/1 same size (adopted); /x/2 another size while a holds the
        // record: stale, removed from b.
        remerge(&mut st, b, vec![rf("/x/1", 10, None), rf("/x/2", 99, None)]);
        assert_eq!(st.db.file(&p("/x/1")).unwrap().holders.as_slice(), &[a, b]);
        assert_eq!(st.db.file(&p("/x/2")).unwrap().holders.as_slice(), &[a]);
        assert_eq!(st.db.file(&p("/x/2")).unwrap().size, 20);
        assert_eq!(
            last_op(&st, b),
            Some(FileOp::DropStale {
                path: p("/x/2"),
                version: None,
                size: 99
            })
        );
        // a comes back having lost /x/2 (its only copy) and /x/1.
        assert_eq!(remerge(&mut st, a, vec![]), 2);
        assert!(st.db.get(&p("/x/2")).is_none());
        assert_eq!(st.db.file(&p("/x/1")).unwrap().holders.as_slice(), &[b]);
        // The only copy changed behind the master's back: the disk wins.
        remerge(&mut st, b, vec![rf("/x/1", 11, None)]);
        assert_eq!(st.db.file(&p("/x/1")).unwrap().size, 11);
        assert_ne!(st.db.file(&p("/x/1")).unwrap().version, v1);
    }

    #[test]
    fn versioned_copies_count_only_when_current() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        remerge(&mut st, a, vec![rf("/f", 10, None)]);
        let gen = st.db.file(&p("/f")).unwrap().version;
        let ours = |gen, size| {
            Some(FileVersion {
                store: 5,
                gen,
                size,
                crc32: None,
            })
        };
        // The current version: a holder, nothing logged.
        let before = st.slaves.get(a).unwrap().log.len();
        remerge(&mut st, a, vec![rf("/f", 10, ours(gen, 10))]);
        assert_eq!(st.slaves.get(a).unwrap().log.len(), before);
        // An older version of the same size: stale, never counted.
        let dropped = remerge(&mut st, a, vec![rf("/f", 10, ours(gen - 1, 10))]);
        assert_eq!(
            dropped, 0,
            "not seen, but the holder went with the stale verdict"
        );
        assert!(st.db.get(&p("/f")).is_none());
        assert!(matches!(last_op(&st, a), Some(FileOp::DropStale { .. })));
        // A deleted file's copy (our store) never comes back on a slave
        // the master records copies on.
        remerge(&mut st, a, vec![rf("/h", 1, None)]);
        let h = st.db.file(&p("/h")).unwrap().version;
        remerge(
            &mut st,
            a,
            vec![rf("/h", 1, ours(h, 1)), rf("/gone", 3, ours(999, 3))],
        );
        assert!(st.db.get(&p("/gone")).is_none());
        assert!(matches!(last_op(&st, a), Some(FileOp::DropStale { .. })));
        // A copy from an earlier store (after --rebuild) is adopted.
        let old = Some(FileVersion {
            store: 4,
            gen: 1,
            size: 3,
            crc32: Some(7),
        });
        remerge(&mut st, a, vec![rf("/old", 3, old)]);
        assert_eq!(st.db.file(&p("/old")).unwrap().crc32, Some(7));
    }

    #[test]
    fn a_slave_removed_then_added_again_keeps_its_files() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        let b = st.slaves.id_for("b");
        remerge(
            &mut st,
            a,
            vec![rf("/keep", 10, None), rf("/both", 4, None)],
        );
        remerge(&mut st, b, vec![rf("/both", 4, None)]);
        let stamped = |st: &MasterState, path: &str| {
            Some(crate::master::commit::file_version(
                st,
                st.db.file(&p(path)).unwrap(),
            ))
        };
        let keep = stamped(&st, "/keep");
        let both = stamped(&st, "/both");
        // SITE DELSLAVE a: /keep (its only copy) leaves the tree.
        let gone = crate::master::fleet::remove(&mut st, a);
        assert_eq!(gone.lost, 1);
        assert!(st.db.get(&p("/keep")).is_none());
        // SITE ADDSLAVE a: its remerge brings its files back, deletes none.
        crate::master::fleet::add(&mut st, "a").unwrap();
        let logged = st.slaves.get(a).unwrap().log.len();
        remerge(
            &mut st,
            a,
            vec![rf("/keep", 10, keep), rf("/both", 4, both)],
        );
        assert_eq!(st.db.file(&p("/keep")).unwrap().holders.to_vec(), vec![a]);
        assert_eq!(
            st.db.file(&p("/both")).unwrap().holders.to_vec(),
            vec![a, b]
        );
        assert!(
            !st.slaves
                .get(a)
                .unwrap()
                .log
                .iter()
                .skip(logged)
                .any(|(_, op)| matches!(op, FileOp::DropStale { .. })),
            "nothing removed from its disk"
        );
    }

    /// A slave whose every copy was replaced or deleted while it was away
    /// is not a new slave: the master logged orders for it. Its copy of a
    /// deleted file stays deleted (the order it got named a version its
    /// disk never had: an upload that died with it).
    #[test]
    fn a_slave_whose_only_copies_were_deleted_while_away_gets_none_back() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        remerge(&mut st, a, vec![rf("/n2", 10, None)]);
        let on_disk = Some(crate::master::commit::file_version(
            &st,
            st.db.file(&p("/n2")).unwrap(),
        ));
        st.slaves.link_down(a, 0);
        // Away: a newer version recorded on it (its upload died with the
        // slave), then /n2 deleted, which drops that newer version there.
        let mut newer = st.db.file(&p("/n2")).unwrap().clone();
        newer.version += 1;
        newer.size = 20;
        st.db.put_file(&p("/n2"), newer.clone()).unwrap();
        st.db.remove_file(&p("/n2")).unwrap();
        let seq = st.slaves.log_op(
            a,
            FileOp::DropStale {
                path: p("/n2"),
                version: Some(crate::master::commit::file_version(&st, &newer)),
                size: 20,
            },
        );
        // Back: the log is applied (nothing matched) and acknowledged,
        // then the slave lists the copy it still has.
        st.slaves.link_up(a);
        st.slaves.acked(a, seq);
        let mut seen = BTreeSet::new();
        remerge_chunk(&mut st, a, vec![rf("/n2", 10, on_disk)], &mut seen);
        remerge_finish(&mut st, a, &seen);
        st.slaves.remerged(a);
        assert!(st.db.get(&p("/n2")).is_none(), "a deleted file came back");
        assert!(
            matches!(last_op(&st, a), Some(FileOp::DropStale { size: 10, .. })),
            "{:?}",
            last_op(&st, a)
        );
    }

    /// RNTO /d/f /x/f while the slave's /x is a symbolic link (refused):
    /// the copy stays at /d/f on its disk.
    fn failed_rename(st: &mut MasterState, id: SlaveId) {
        st.db.mkdir_all(&p("/x"), "u", 0).unwrap();
        st.db.rename(&p("/d/f"), &p("/x/f"), 0).unwrap();
        let seq = st.slaves.log_op(
            id,
            FileOp::Rename {
                from: p("/d/f"),
                to: p("/x/f"),
            },
        );
        applied(
            st,
            id,
            seq,
            &OpOutcome::Failed("symbolic links are not followed".into()),
        );
        st.slaves.acked(id, seq);
    }

    #[test]
    fn the_only_copy_left_behind_by_a_failed_rename_is_kept_and_moved_again() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        remerge(&mut st, a, vec![rf("/d/f", 10, None)]);
        let gen = st.db.file(&p("/d/f")).unwrap().version;
        let v = Some(FileVersion {
            store: 5,
            gen,
            size: 10,
            crc32: None,
        });
        failed_rename(&mut st, a);
        // The slave comes back listing the copy at its old name: not
        // stale, not removed; the record keeps it; the rename is asked again.
        remerge(&mut st, a, vec![rf("/d/f", 10, v)]);
        assert_eq!(st.db.file(&p("/x/f")).unwrap().holders.as_slice(), &[a]);
        assert!(st.db.get(&p("/d/f")).is_none());
        let log: Vec<FileOp> = st
            .slaves
            .get(a)
            .unwrap()
            .log
            .iter()
            .map(|(_, o)| o.clone())
            .collect();
        assert!(
            !log.iter().any(|o| matches!(o, FileOp::DropStale { .. })),
            "{log:?}"
        );
        assert_eq!(
            last_op(&st, a),
            Some(FileOp::Rename {
                from: p("/d/f"),
                to: p("/x/f")
            })
        );
        // Renamed on meanwhile: the copy left behind follows.
        st.db.rename(&p("/x/f"), &p("/x/g"), 0).unwrap();
        let seq = st.slaves.log_op(
            a,
            FileOp::Rename {
                from: p("/x/f"),
                to: p("/x/g"),
            },
        );
        applied(&mut st, a, seq, &OpOutcome::Done);
        st.slaves.acked(a, seq);
        remerge(&mut st, a, vec![rf("/d/f", 10, v)]);
        assert_eq!(
            last_op(&st, a),
            Some(FileOp::Rename {
                from: p("/d/f"),
                to: p("/x/g")
            })
        );
        // This time it works: nothing is remembered any more, and the copy
        // at the new name is the holder.
        let seq = st.slaves.get(a).unwrap().log.back().unwrap().0;
        applied(&mut st, a, seq, &OpOutcome::Done);
        st.slaves.acked(a, seq);
        assert!(st.slaves.get(a).unwrap().misplaced.is_empty());
        remerge(&mut st, a, vec![rf("/x/g", 10, v)]);
        assert_eq!(st.db.file(&p("/x/g")).unwrap().holders.as_slice(), &[a]);
    }

    #[test]
    fn copies_below_a_directory_whose_rename_failed_are_kept_file_by_file() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let a = st.slaves.id_for("a");
        remerge(&mut st, a, vec![rf("/d/e/f", 10, None)]);
        let gen = st.db.file(&p("/d/e/f")).unwrap().version;
        st.db.mkdir_all(&p("/x"), "u", 0).unwrap();
        st.db.rename(&p("/d"), &p("/x/d"), 0).unwrap();
        let rename = FileOp::Rename {
            from: p("/d"),
            to: p("/x/d"),
        };
        let seq = st.slaves.log_op(a, rename);
        applied(&mut st, a, seq, &OpOutcome::Failed("refused".into()));
        st.slaves.acked(a, seq);
        let v = Some(FileVersion {
            store: 5,
            gen,
            size: 10,
            crc32: None,
        });
        remerge(&mut st, a, vec![rf("/d/e/f", 10, v)]);
        assert_eq!(st.db.file(&p("/x/d/e/f")).unwrap().holders.as_slice(), &[a]);
        assert_eq!(
            last_op(&st, a),
            Some(FileOp::Rename {
                from: p("/d/e/f"),
                to: p("/x/d/e/f")
            })
        );
    }

    #[test]
    fn a_failed_rename_stops_counting_the_copy_where_others_hold_the_file() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.store_id = 5;
        let (a, b) = (st.slaves.id_for("a"), st.slaves.id_for("b"));
        remerge(&mut st, a, vec![rf("/d/f", 10, None)]);
        let gen = st.db.file(&p("/d/f")).unwrap().version;
        let v = Some(FileVersion {
            store: 5,
            gen,
            size: 10,
            crc32: None,
        });
        remerge(&mut st, b, vec![rf("/d/f", 10, v)]);
        assert_eq!(st.db.file(&p("/d/f")).unwrap().holders.as_slice(), &[a, b]);
        failed_rename(&mut st, a);
        // b moved its copy; a's did not: downloads go to b only.
        assert_eq!(st.db.file(&p("/x/f")).unwrap().holders.as_slice(), &[b]);
        // a's old copy is kept and moved when it reconnects.
        remerge(&mut st, a, vec![rf("/d/f", 10, v)]);
        assert!(matches!(last_op(&st, a), Some(FileOp::Rename { .. })));
        // A copy at the old name of another version (the file was replaced
        // since) is stale as ever.
        let mut m = st.db.file(&p("/x/f")).unwrap().clone();
        m.version = st.db.new_version();
        st.db.put_file(&p("/x/f"), m).unwrap();
        remerge(&mut st, a, vec![rf("/d/f", 10, v)]);
        assert!(matches!(last_op(&st, a), Some(FileOp::DropStale { .. })));
        assert!(st.slaves.get(a).unwrap().misplaced.is_empty());
    }

    #[test]
    fn a_change_made_while_remerging_wins_over_the_list() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        let a = st.slaves.id_for("a");
        remerge(&mut st, a, vec![rf("/x", 1, None), rf("/y", 1, None)]);
        st.slaves.link_up(a);
        assert_eq!(st.slaves.get(a).unwrap().state, SlaveState::Remerging);
        // DELE /x while a remerges; its list still has /x.
        st.db.remove_file(&p("/x")).unwrap();
        st.slaves.touch(&p("/x"));
        let mut seen = BTreeSet::new();
        remerge_chunk(
            &mut st,
            a,
            vec![rf("/x", 1, None), rf("/y", 1, None)],
            &mut seen,
        );
        remerge_finish(&mut st, a, &seen);
        assert!(st.db.get(&p("/x")).is_none(), "not brought back");
        assert!(st.db.get(&p("/y")).is_some());
    }
}

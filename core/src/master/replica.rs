//! Replication decisions: which paths lack copies, which copy to make next
//! (fewest copies first), from which holder to which slave, and what a
//! finished copy changes. The copies themselves run slave to slave (the
//! copy machine, [`super::copy`], performed by the master's replicator);
//! this module only decides.
//!
//! A copy counts toward a path's rule (`[replication]`) when its slave is
//! not draining, not removed, and online or away for less than
//! `slave_lost_after_ms`. Paths that may lack copies sit in the repair
//! queue (kept in the store), ordered by the copies they had when queued;
//! the scheduler takes the fewest first and re-checks each. A path whose
//! copy failed waits before its next try (1 s, doubling up to 5 min), so
//! a copy that cannot be made (its only source is corrupt) neither spins
//! nor keeps other paths from their copies.

use std::collections::{BTreeMap, BTreeSet};

use super::commit::file_version;
use super::db::{Change, FileMeta, SlaveId};
use super::registry::SlaveState;
use super::MasterState;
use crate::link::{FileOp, FileVersion, OpOutcome};
use crate::proto::VPath;

/// One copy from a holder to another slave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyJob {
    pub id: u64,
    pub path: VPath,
    pub version: FileVersion,
    pub from: SlaveId,
    pub to: SlaveId,
}

/// The replication state in [`MasterState`].
#[derive(Debug, Default)]
pub struct Replication {
    /// The repair queue: (copies when queued, path).
    queue: BTreeSet<(u32, VPath)>,
    queued: BTreeMap<VPath, u32>,
    /// Copies running, by job id.
    pub running: BTreeMap<u64, CopyJob>,
    /// Copies committed on their target and not yet acknowledged:
    /// (target, log sequence number) -> job.
    committing: BTreeMap<(SlaveId, u64), CopyJob>,
    next_job: u64,
    /// Copies finished (for SITE SLAVES and tests).
    pub done: u64,
    /// Paths whose last copies failed: (failures in a row, no new try
    /// before this `now_ms`, of the version then recorded; a new version
    /// starts afresh).
    retry: BTreeMap<VPath, (u32, u64, u64)>,
}

/// The wait before the next try of a path whose copy failed `failures`
/// times in a row: 1 s, doubling, at most 5 min.
pub fn retry_delay_ms(failures: u32) -> u64 {
    (1000u64 << failures.saturating_sub(1).min(9)).min(300_000)
}

impl Replication {
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Queued paths a slave holds (SITE SLAVES: under-replicated files on it).
    pub fn queued_paths(&self) -> impl Iterator<Item = &VPath> {
        self.queued.keys()
    }
}

/// (copies wanted, copies an upload waits for) for `path`.
pub fn rule(st: &MasterState, path: &VPath) -> (u32, u32) {
    st.config.replication.rule_for(path.as_str())
}

/// Copies of `meta` that count now.
pub fn live_copies(st: &MasterState, meta: &FileMeta) -> u32 {
    let lost_after = st.config.replication.slave_lost_after_ms;
    meta.holders
        .iter()
        .filter(|&&h| {
            st.slaves
                .get(h)
                .is_some_and(|s| s.counts(st.now_ms, lost_after))
        })
        .count() as u32
}

/// Puts `path` in the repair queue when it may lack copies.
pub fn note(st: &mut MasterState, path: &VPath) {
    let Ok(meta) = st.db.file(path) else {
        unqueue(st, path);
        return;
    };
    let have = live_copies(st, meta);
    let (want, _) = rule(st, path);
    if have >= want {
        unqueue(st, path);
        return;
    }
    if let Some(old) = st.replication.queued.insert(path.clone(), have) {
        st.replication.queue.remove(&(old, path.clone()));
    } else {
        st.db.record_change(Change::Repair(path.clone(), true));
    }
    st.replication.queue.insert((have, path.clone()));
}

fn unqueue(st: &mut MasterState, path: &VPath) {
    st.replication.retry.remove(path);
    if let Some(old) = st.replication.queued.remove(path) {
        st.replication.queue.remove(&(old, path.clone()));
        st.db.record_change(Change::Repair(path.clone(), false));
    }
}

/// Restores a queued path from the store.
pub fn load(st: &mut MasterState, path: VPath) {
    st.replication.queued.insert(path.clone(), 0);
    st.replication.queue.insert((0, path));
}

/// Every file `slave` holds may now lack copies (it is lost, draining or
/// removed), or every file at all (`None`: after a rule change, at start).
pub fn note_all(st: &mut MasterState, slave: Option<SlaveId>) {
    let files: Vec<VPath> = match slave {
        Some(id) => {
            let mut out = Vec::new();
            let mut cursor = None;
            loop {
                let (held, next) = st.db.scan_held(id, cursor.as_ref(), 50_000);
                out.extend(held);
                match next {
                    Some(c) => cursor = Some(c),
                    None => break,
                }
            }
            out
        }
        None => st
            .db
            .files_under(&VPath::root())
            .into_iter()
            .map(|(p, _)| p)
            .collect(),
    };
    for p in files {
        note(st, &p);
    }
}

/// Slaves just past `slave_lost_after_ms` since they went offline: their
/// files join the repair queue. Returns them (each once: the caller
/// remembers).
pub fn newly_lost(st: &MasterState, seen: &BTreeSet<SlaveId>) -> Vec<SlaveId> {
    let lost_after = st.config.replication.slave_lost_after_ms;
    st.slaves
        .iter()
        .filter(|(id, s)| {
            s.state == SlaveState::Offline
                && !seen.contains(id)
                && s.offline_since_ms
                    .is_some_and(|t| st.now_ms.saturating_sub(t) >= lost_after)
        })
        .map(|(id, _)| id)
        .collect()
}

/// A target for a new copy of `meta`: online, not a holder, not draining,
/// with room and a free copy slot; a zone no holder is in first, then the
/// most free space.
fn target(st: &MasterState, meta: &FileMeta, size: u64) -> Option<SlaveId> {
    pick_target(st, &meta.holders, &meta.holders, size, true)
}

/// A target for a synchronous copy of an upload of `size` bytes whose
/// copies are on `holders` (the uploading slave first), never one of
/// `tried`: as for background copies, without the per-slave copy limit
/// (the client waits).
pub fn sync_target(
    st: &MasterState,
    holders: &[SlaveId],
    tried: &BTreeSet<SlaveId>,
    size: u64,
) -> Option<SlaveId> {
    let tried: Vec<SlaveId> = tried.iter().copied().collect();
    pick_target(st, holders, &tried, size, false)
}

fn pick_target(
    st: &MasterState,
    holders: &[SlaveId],
    exclude: &[SlaveId],
    size: u64,
    limited: bool,
) -> Option<SlaveId> {
    let zones: BTreeSet<&str> = holders
        .iter()
        .filter_map(|h| st.slaves.get(*h)?.zone.as_deref())
        .collect();
    let limit = st.config.replication.jobs_per_slave.max(1);
    st.slaves
        .iter()
        .filter(|(id, s)| {
            s.is_online()
                && !s.draining
                && !s.removed
                && !holders.contains(id)
                && !exclude.contains(id)
                && (!limited || s.copy_jobs < limit)
                && s.free > size.saturating_add(st.config.min_free_bytes)
        })
        .max_by_key(|(id, s)| {
            let new_zone = s.zone.as_deref().is_some_and(|z| !zones.contains(z));
            (new_zone, s.free, std::cmp::Reverse(*id))
        })
        .map(|(id, _)| id)
}

/// Right after the master starts, a known slave that has not connected
/// yet, or is still remerging, may hold copies the database does not list
/// (every copy, after `--rebuild`): no copy starts until every slave has
/// remerged, or `slave_lost_after_ms` after the start.
fn starting(st: &MasterState) -> bool {
    st.now_ms < st.config.replication.slave_lost_after_ms
        && st.slaves.iter().any(|(_, s)| {
            !s.removed
                && match s.state {
                    SlaveState::Remerging => true,
                    SlaveState::Offline => s.offline_since_ms.is_none(),
                    SlaveState::Online => false,
                }
        })
}

/// A source for a copy of `meta`: an online holder with a free copy slot,
/// the least busy (a draining slave is a fine source).
fn source(st: &MasterState, meta: &FileMeta) -> Option<SlaveId> {
    let limit = st.config.replication.jobs_per_slave.max(1);
    meta.holders
        .iter()
        .copied()
        .filter(|&h| {
            st.slaves
                .get(h)
                .is_some_and(|s| s.is_online() && !s.removed && s.copy_jobs < limit)
        })
        .min_by_key(|&h| (st.slaves.get(h).map_or(0, |s| s.copy_jobs + s.load()), h))
}

/// The next copies to start (fewest copies first), at most `max`. Paths
/// that need no copy leave the queue; paths that cannot get one now (no
/// source, no target) stay.
pub fn next_jobs(st: &mut MasterState, max: usize) -> Vec<CopyJob> {
    let mut jobs = Vec::new();
    if starting(st) {
        return jobs;
    }
    let busy: BTreeSet<VPath> = st
        .replication
        .running
        .values()
        .map(|j| j.path.clone())
        .collect();
    let waiting: Vec<(u32, VPath)> = st.replication.queue.iter().cloned().collect();
    for (_, path) in waiting {
        if jobs.len() >= max {
            break;
        }
        if busy.contains(&path) {
            continue;
        }
        let Ok(meta) = st.db.file(&path).cloned() else {
            unqueue(st, &path);
            continue;
        };
        if st
            .replication
            .retry
            .get(&path)
            .is_some_and(|&(_, at, gen)| gen == meta.version && at > st.now_ms)
        {
            continue;
        }
        let have = live_copies(st, &meta);
        let (want, _) = rule(st, &path);
        if have >= want {
            unqueue(st, &path);
            continue;
        }
        let (Some(from), Some(to)) = (source(st, &meta), target(st, &meta, meta.size)) else {
            continue;
        };
        st.replication.next_job += 1;
        let job = CopyJob {
            id: st.replication.next_job,
            path: path.clone(),
            version: file_version(st, &meta),
            from,
            to,
        };
        for id in [from, to] {
            if let Some(s) = st.slaves.get_mut(id) {
                s.copy_jobs += 1;
            }
        }
        st.replication.running.insert(job.id, job.clone());
        jobs.push(job);
    }
    jobs
}

/// The target received the copy (`size`, `crc32`): if the record is still
/// that version and the bytes match it, commit it on the target (a `Commit`
/// entry with the same version). Returns the entry's sequence number.
pub fn received(
    st: &mut MasterState,
    job: &CopyJob,
    xfer: u64,
    size: u64,
    crc32: u32,
) -> Result<u64, String> {
    let current = st
        .db
        .file(&job.path)
        .ok()
        .map(|m| (m.version, m.size, m.crc32));
    match current {
        Some((gen, _, _)) if gen != job.version.gen => {
            return Err(format!("{} changed during the copy", job.path))
        }
        None => return Err(format!("{} is gone", job.path)),
        Some((_, s, _)) if s != size => {
            return Err(format!(
                "{}: copied {size} bytes, the record says {s}",
                job.path
            ))
        }
        Some((_, _, Some(c))) if c != crc32 => {
            // Every byte arrived and the CRC-32 differs: the source's copy
            // is not the recorded version (bit rot, or changed in place
            // behind the master's back), as if its scrub had said so.
            let slave = st.slaves.name(job.from).to_string();
            let path = &job.path;
            match corrupt(st, job.from, path, &job.version) {
                Corruption::Repairing => {
                    tracing::error!(%slave, %path, expected = format_args!("{c:08x}"), found = format_args!("{crc32:08x}"), "corrupt copy (found by a copy from it): dropped, repaired from a good copy")
                }
                Corruption::OnlyCopy => {
                    tracing::error!(%slave, %path, expected = format_args!("{c:08x}"), found = format_args!("{crc32:08x}"), "corrupt copy (found by a copy from it) and no other copy: kept, restore it from a backup")
                }
                Corruption::NotCurrent => {}
            }
            return Err(format!(
                "{}: the copy's CRC-32 {crc32:08x} is not the record's {c:08x}",
                job.path
            ));
        }
        _ => {}
    }
    // A copy of a file whose CRC-32 was not known teaches it.
    let mut version = job.version;
    if version.crc32.is_none() {
        version.crc32 = Some(crc32);
        if let Ok(m) = st.db.file(&job.path) {
            let mut m = m.clone();
            m.crc32 = Some(crc32);
            let _ = st.db.put_file(&job.path, m);
        }
    }
    st.slaves.touch(&job.path);
    let seq = st.slaves.log_op(
        job.to,
        FileOp::Commit {
            xfer,
            path: job.path.clone(),
            version,
        },
    );
    st.replication.committing.insert((job.to, seq), job.clone());
    Ok(seq)
}

/// The copy failed (or was given up) before its commit: free its slots;
/// the path stays queued. When both slaves are still online the failure
/// is the file's (or would happen again): the path waits
/// [`retry_delay_ms`] before its next try. A copy lost with a slave is
/// tried again at once, between the slaves still there. Returns the wait
/// (`None`: no such job running).
pub fn failed(st: &mut MasterState, job_id: u64) -> Option<u64> {
    let job = st.replication.running.remove(&job_id)?;
    release(st, &job);
    let online = |id: SlaveId| st.slaves.get(id).is_some_and(|s| s.is_online());
    if !(online(job.from) && online(job.to)) {
        note(st, &job.path);
        return Some(0);
    }
    let now = st.now_ms;
    let gen = job.version.gen;
    let entry = st
        .replication
        .retry
        .entry(job.path.clone())
        .or_insert((0, 0, gen));
    if entry.2 != gen {
        *entry = (0, 0, gen);
    }
    entry.0 = entry.0.saturating_add(1);
    let delay = retry_delay_ms(entry.0);
    entry.1 = now.saturating_add(delay);
    note(st, &job.path);
    Some(delay)
}

fn release(st: &mut MasterState, job: &CopyJob) {
    for id in [job.from, job.to] {
        if let Some(s) = st.slaves.get_mut(id) {
            s.copy_jobs = s.copy_jobs.saturating_sub(1);
        }
    }
}

/// The target acknowledged log entry `seq`: if it was a copy's commit, the
/// target becomes a holder (if the record is still that version; else the
/// copy is stale and removed).
pub fn acked(st: &mut MasterState, slave: SlaveId, seq: u64, outcome: &OpOutcome) {
    let Some(job) = st.replication.committing.remove(&(slave, seq)) else {
        return;
    };
    if st.replication.running.remove(&job.id).is_some() {
        release(st, &job);
    }
    let still = st
        .db
        .file(&job.path)
        .is_ok_and(|m| m.version == job.version.gen);
    match outcome {
        OpOutcome::Failed(_) => {}
        _ if still => {
            let _ = st.db.add_holder(&job.path, slave);
            st.replication.retry.remove(&job.path);
            st.replication.done += 1;
            if let Some(s) = st.slaves.get_mut(job.from) {
                s.copied_out += job.version.size;
            }
            if let Some(s) = st.slaves.get_mut(slave) {
                s.copied_in += job.version.size;
            }
        }
        _ => {
            st.slaves.log_op(
                slave,
                FileOp::DropStale {
                    path: job.path.clone(),
                    version: Some(job.version),
                    size: job.version.size,
                },
            );
        }
    }
    note(st, &job.path);
}

/// What a corrupt copy reported by a slave's scrub led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// Dropped as a holder (and from its disk); a copy from a good holder
    /// is queued.
    Repairing,
    /// The only copy: kept (dropping it loses the file for good), and
    /// reported for the operator.
    OnlyCopy,
    /// A copy of another version than the record's: removed as stale.
    NotCurrent,
}

/// The scrub of `slave` found its copy of `path` (of `version`) corrupt.
pub fn corrupt(
    st: &mut MasterState,
    slave: SlaveId,
    path: &VPath,
    version: &FileVersion,
) -> Corruption {
    let drop_it = |st: &mut MasterState| {
        st.slaves.log_op(
            slave,
            FileOp::DropStale {
                path: path.clone(),
                version: Some(*version),
                size: version.size,
            },
        );
    };
    let current = st
        .db
        .file(path)
        .ok()
        .filter(|m| m.version == version.gen && version.store == st.store_id)
        .map(|m| m.holders.iter().filter(|&&h| h != slave).count());
    match current {
        None => {
            drop_it(st);
            Corruption::NotCurrent
        }
        Some(0) => Corruption::OnlyCopy,
        Some(_) => {
            // Changed now: a remerge in flight must not take it back.
            st.slaves.touch(path);
            let _ = st.db.remove_holder(path, slave);
            drop_it(st);
            note(st, path);
            Corruption::Repairing
        }
    }
}

/// What a slave's refusal of a copy it was asked to send led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing changed: the record moved on since the order, or an
    /// operation on the path has not reached the slave yet (a commit or a
    /// rename on its way: the refusal is passing).
    Passing,
    /// The slave is no longer a holder (its copy is removed if it is
    /// still that version) and the file joins the repair queue; `others`:
    /// another holder serves it now, so the client may try again.
    Dropped { others: bool },
    /// Its only copy: kept (dropping it loses the file), reported.
    OnlyCopy,
}

/// `slave` answered an order to send version `version` of `path` with
/// "not found" or "not the current version" (a download or a copy's
/// source): its copy was deleted, truncated or replaced behind the
/// master's back. Unless the refusal is passing (see [`Refusal`]), it
/// stops being a holder at once, as DrFTPD drops a slave from a file's
/// list, so the next download goes to a good holder and the repair makes
/// a new copy.
pub fn refused(
    st: &mut MasterState,
    slave: SlaveId,
    path: &VPath,
    version: Option<&FileVersion>,
) -> Refusal {
    let Ok(meta) = st.db.file(path) else {
        return Refusal::Passing;
    };
    if version.is_some_and(|v| v.gen != meta.version || v.store != st.store_id)
        || !meta.holders.contains(&slave)
    {
        return Refusal::Passing;
    }
    let pending = st.slaves.get(slave).is_some_and(|s| {
        s.log.iter().any(|(_, op)| {
            let touches = |p: &VPath| path.starts_with(p);
            match op {
                FileOp::Delete { path: p }
                | FileOp::RemoveDir { path: p }
                | FileOp::DropStale { path: p, .. }
                | FileOp::Stamp { path: p, .. }
                | FileOp::Commit { path: p, .. } => touches(p),
                FileOp::Rename { from, to } => touches(from) || touches(to),
            }
        })
    });
    if pending {
        return Refusal::Passing;
    }
    let name = st.slaves.name(slave).to_string();
    if meta.holders.iter().all(|&h| h == slave) {
        tracing::error!(slave = %name, %path, "the only copy is missing or not the recorded version on its slave's disk; kept (SITE REMERGE rereads the disk)");
        return Refusal::OnlyCopy;
    }
    let recorded = file_version(st, meta);
    let others = meta
        .holders
        .iter()
        .any(|&h| h != slave && st.slaves.serves(h));
    tracing::warn!(slave = %name, %path, "copy missing or not the recorded version on the slave's disk: no longer used, copied again from a good one");
    // A remerge in flight must not take it back from its older list.
    st.slaves.touch(path);
    let _ = st.db.remove_holder(path, slave);
    st.slaves.log_op(
        slave,
        FileOp::DropStale {
            path: path.clone(),
            version: Some(recorded),
            size: recorded.size,
        },
    );
    note(st, path);
    Refusal::Dropped { others }
}

/// A rename moved `from` to `to`: queued and running paths move along.
pub fn renamed(st: &mut MasterState, from: &VPath, to: &VPath) {
    let moved: Vec<VPath> = st
        .replication
        .queued
        .keys()
        .filter(|p| *p == from || p.starts_with(from))
        .cloned()
        .collect();
    for p in moved {
        unqueue(st, &p);
    }
    for p in st
        .db
        .files_under(to)
        .into_iter()
        .map(|(p, _)| p)
        .collect::<Vec<_>>()
    {
        note(st, &p);
    }
    if let Ok(_f) = st.db.file(to) {
        note(st, to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;
    use crate::master::db::Holders;
    use std::sync::Arc;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn state(copies: u32) -> MasterState {
        let mut cfg = MasterConfig::default();
        cfg.replication.copies = copies;
        cfg.replication.slave_lost_after_ms = 1000;
        let mut st = MasterState::new(Arc::new(cfg));
        for (name, zone) in [("a", "z1"), ("b", "z1"), ("c", "z2")] {
            let id = st.slaves.id_for(name);
            let s = st.slaves.get_mut(id).unwrap();
            s.state = SlaveState::Online;
            s.free = 1 << 30;
            s.zone = Some(zone.into());
        }
        st
    }

    fn put(st: &mut MasterState, path: &str, holders: &[SlaveId]) {
        let gen = st.db.new_version();
        st.db
            .put_file(
                &p(path),
                FileMeta {
                    size: 10,
                    mtime: 0,
                    owner: 0,
                    group: 0,
                    crc32: Some(7),
                    version: gen,
                    holders: Holders::from_slice(holders),
                },
            )
            .unwrap();
        note(st, &p(path));
    }

    #[test]
    fn a_corrupt_copy_is_dropped_and_repaired_unless_it_is_the_only_one() {
        let mut st = state(2);
        put(&mut st, "/two", &[0, 1]);
        put(&mut st, "/one", &[0]);
        let v = |st: &MasterState, path: &str| file_version(st, st.db.file(&p(path)).unwrap());
        let two = v(&st, "/two");
        assert_eq!(corrupt(&mut st, 0, &p("/two"), &two), Corruption::Repairing);
        assert_eq!(st.db.file(&p("/two")).unwrap().holders.to_vec(), vec![1]);
        assert!(matches!(
            st.slaves.get(0).unwrap().log.back(),
            Some((_, FileOp::DropStale { .. }))
        ));
        let jobs = next_jobs(&mut st, 10);
        assert!(
            jobs.iter().any(|j| j.path == p("/two") && j.from == 1),
            "repaired from the good copy: {jobs:?}"
        );
        // The only copy: kept.
        let one = v(&st, "/one");
        let logged = st.slaves.get(0).unwrap().log.len();
        assert_eq!(corrupt(&mut st, 0, &p("/one"), &one), Corruption::OnlyCopy);
        assert_eq!(st.db.file(&p("/one")).unwrap().holders.to_vec(), vec![0]);
        assert_eq!(st.slaves.get(0).unwrap().log.len(), logged);
        // Another version than the record's: removed as stale.
        let mut old = one;
        old.gen -= 1;
        assert_eq!(
            corrupt(&mut st, 0, &p("/one"), &old),
            Corruption::NotCurrent
        );
        assert_eq!(st.db.file(&p("/one")).unwrap().holders.to_vec(), vec![0]);
    }

    #[test]
    fn a_copy_its_slave_refuses_to_send_is_dropped_and_repaired() {
        let mut st = state(2);
        put(&mut st, "/two", &[0, 1]);
        put(&mut st, "/one", &[0]);
        let v = |st: &MasterState, path: &str| file_version(st, st.db.file(&p(path)).unwrap());
        // An older order (the record moved on): passing, nothing changes.
        let mut old = v(&st, "/two");
        old.gen -= 1;
        assert_eq!(
            refused(&mut st, 1, &p("/two"), Some(&old)),
            Refusal::Passing
        );
        // An operation on the path not yet applied there: passing.
        let two = v(&st, "/two");
        let seq = st.slaves.log_op(
            1,
            FileOp::Stamp {
                path: p("/two"),
                version: two,
                mtime: 0,
            },
        );
        assert_eq!(
            refused(&mut st, 1, &p("/two"), Some(&two)),
            Refusal::Passing
        );
        assert_eq!(st.db.file(&p("/two")).unwrap().holders.to_vec(), vec![0, 1]);
        st.slaves.acked(1, seq);
        // Deleted or damaged behind the master's back: dropped at once,
        // the other holder serves, and the repair copies it again.
        assert_eq!(
            refused(&mut st, 1, &p("/two"), Some(&two)),
            Refusal::Dropped { others: true }
        );
        assert_eq!(st.db.file(&p("/two")).unwrap().holders.to_vec(), vec![0]);
        let jobs = next_jobs(&mut st, 10);
        assert!(
            jobs.iter().any(|j| j.path == p("/two") && j.from == 0),
            "repaired from the good copy: {jobs:?}"
        );
        // The only copy: kept.
        let one = v(&st, "/one");
        assert_eq!(
            refused(&mut st, 0, &p("/one"), Some(&one)),
            Refusal::OnlyCopy
        );
        assert_eq!(st.db.file(&p("/one")).unwrap().holders.to_vec(), vec![0]);
    }

    #[test]
    fn a_missing_copy_goes_to_another_zone_and_counts_once_acknowledged() {
        let mut st = state(2);
        put(&mut st, "/f", &[0]);
        put(&mut st, "/ok", &[0, 1]);
        assert_eq!(st.replication.queued(), 1);
        let jobs = next_jobs(&mut st, 10);
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].from, jobs[0].to), (0, 2), "the other zone");
        let seq = received(&mut st, &jobs[0], 99, 10, 7).unwrap();
        acked(
            &mut st,
            2,
            seq,
            &OpOutcome::Committed { size: 10, mtime: 1 },
        );
        assert_eq!(st.db.file(&p("/f")).unwrap().holders.as_slice(), &[0, 2]);
        assert_eq!(st.replication.queued(), 0);
        assert_eq!(st.slaves.get(0).unwrap().copy_jobs, 0);
    }

    #[test]
    fn a_bad_copy_is_refused_and_a_changed_file_not_counted() {
        let mut st = state(2);
        put(&mut st, "/f", &[0]);
        let job = next_jobs(&mut st, 10).remove(0);
        assert!(received(&mut st, &job, 1, 10, 8).is_err(), "CRC differs");
        assert_eq!(failed(&mut st, job.id), Some(1000));
        assert!(next_jobs(&mut st, 10).is_empty(), "not again at once");
        st.now_ms += 1000;
        let job = next_jobs(&mut st, 10).remove(0);
        let seq = received(&mut st, &job, 2, 10, 7).unwrap();
        // Overwritten meanwhile: the copy is stale.
        put(&mut st, "/f", &[1]);
        acked(
            &mut st,
            job.to,
            seq,
            &OpOutcome::Committed { size: 10, mtime: 1 },
        );
        assert!(!st.db.file(&p("/f")).unwrap().holders.contains(&job.to));
        assert!(matches!(
            st.slaves.get(job.to).unwrap().log.back(),
            Some((_, FileOp::DropStale { .. }))
        ));
    }

    #[test]
    fn a_copy_that_keeps_failing_backs_off_and_lets_other_paths_through() {
        let mut st = state(2);
        let mut cfg = (*st.config).clone();
        cfg.replication.jobs_per_slave = 1;
        st.config = Arc::new(cfg);
        put(&mut st, "/bad", &[0]);
        put(&mut st, "/good", &[0]);
        let mut waits = Vec::new();
        for _ in 0..4 {
            // /bad first (same copies, smaller name), once its wait is over.
            let job = next_jobs(&mut st, 10).remove(0);
            assert_eq!(job.path, p("/bad"));
            assert!(received(&mut st, &job, 1, 10, 8).is_err());
            // The only copy is corrupt: kept, for the operator.
            assert_eq!(st.db.file(&p("/bad")).unwrap().holders.as_slice(), &[0]);
            waits.push(failed(&mut st, job.id).unwrap());
            // Meanwhile the next path gets its copy.
            let jobs = next_jobs(&mut st, 10);
            assert_eq!(
                jobs.iter().map(|j| j.path.clone()).collect::<Vec<_>>(),
                [p("/good")]
            );
            failed(&mut st, jobs[0].id);
            st.replication.retry.remove(&p("/good"));
            st.now_ms += waits.last().unwrap();
        }
        assert_eq!(waits, [1000, 2000, 4000, 8000]);
        assert_eq!(retry_delay_ms(30), 300_000);
        // A new version starts afresh.
        let job = next_jobs(&mut st, 10).remove(0);
        failed(&mut st, job.id);
        put(&mut st, "/bad", &[0]);
        assert_eq!(next_jobs(&mut st, 10)[0].path, p("/bad"));
    }

    #[test]
    fn a_copy_with_the_wrong_crc_marks_its_source_corrupt() {
        let mut st = state(3);
        put(&mut st, "/f", &[0, 1]);
        let job = next_jobs(&mut st, 10).remove(0);
        assert!(received(&mut st, &job, 1, 10, 8).is_err());
        let holders = st.db.file(&p("/f")).unwrap().holders.to_vec();
        assert!(!holders.contains(&job.from), "{holders:?}");
        assert!(matches!(
            st.slaves.get(job.from).unwrap().log.back(),
            Some((_, FileOp::DropStale { .. }))
        ));
    }

    #[test]
    fn no_copy_starts_before_every_slave_has_remerged_once() {
        let mut st = state(2);
        // c has not connected since the start (after --rebuild its copies
        // are not in the database yet).
        st.slaves.get_mut(2).unwrap().state = SlaveState::Offline;
        put(&mut st, "/f", &[0]);
        assert!(next_jobs(&mut st, 10).is_empty());
        st.slaves.link_up(2);
        assert!(next_jobs(&mut st, 10).is_empty(), "still remerging");
        st.slaves.remerged(2);
        assert_eq!(next_jobs(&mut st, 10).len(), 1);
        // One that never comes: copies start slave_lost_after_ms after the
        // start.
        let mut st = state(2);
        st.slaves.get_mut(2).unwrap().state = SlaveState::Offline;
        put(&mut st, "/f", &[0]);
        st.now_ms = 999;
        assert!(next_jobs(&mut st, 10).is_empty());
        st.now_ms = 1000;
        assert_eq!(next_jobs(&mut st, 10).len(), 1);
    }

    #[test]
    fn a_lost_or_draining_slave_stops_counting() {
        let mut st = state(2);
        put(&mut st, "/f", &[0, 1]);
        assert_eq!(st.replication.queued(), 0);
        st.now_ms = 5000;
        st.slaves.link_down(1, 4500);
        note(&mut st, &p("/f"));
        assert_eq!(st.replication.queued(), 0, "away, not yet lost");
        st.now_ms = 6000;
        assert_eq!(newly_lost(&st, &BTreeSet::new()), vec![1]);
        note_all(&mut st, Some(1));
        assert_eq!(st.replication.queued(), 1, "lost");
        let mut st = state(2);
        put(&mut st, "/g", &[0, 1]);
        st.slaves.set_flags(0, true, false);
        note_all(&mut st, Some(0));
        let jobs = next_jobs(&mut st, 10);
        assert_eq!(jobs[0].to, 2, "never to the draining slave");
    }
}

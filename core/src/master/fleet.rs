//! The slave lifecycle an administrator drives (SITE ADDSLAVE, SLAVE DRAIN,
//! DELSLAVE) and the figures SITE SLAVES shows: plain functions on
//! [`MasterState`]. Dropping or re-syncing a live link (KICKSLAVE,
//! REMERGE) is the driver's part; the session asks for it with
//! `Action::SlaveLink`.

use super::db::SlaveId;
use super::registry::valid_slave_name;
use super::{replica, MasterState};
use crate::proto::VPath;

/// Why a lifecycle command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    #[error("no slave named {0}; SITE SLAVES lists them")]
    Unknown(String),
    #[error("{0} is not a valid slave name (letters, digits, '-', '_', '.')")]
    BadName(String),
    #[error("slave {0} is already known")]
    Exists(String),
    #[error("slave {0} was removed; SITE ADDSLAVE {0} brings it back")]
    Removed(String),
}

impl FleetError {
    pub fn code(&self) -> u16 {
        match self {
            FleetError::BadName(_) => 501,
            _ => 550,
        }
    }
}

/// A known slave by name (removed ones too).
pub fn find(st: &MasterState, name: &str) -> Result<SlaveId, FleetError> {
    st.slaves
        .knows(name)
        .ok_or_else(|| FleetError::Unknown(name.to_string()))
}

/// A slave still in service (not removed) by name.
pub fn find_live(st: &MasterState, name: &str) -> Result<SlaveId, FleetError> {
    let id = find(st, name)?;
    if st.slaves.get(id).is_some_and(|s| s.removed) {
        return Err(FleetError::Removed(name.to_string()));
    }
    Ok(id)
}

/// SITE ADDSLAVE: the name is known from now on (kept in the store), so a
/// slave of that name may join; a removed one comes back (empty: its files
/// are what its next remerge reports).
pub fn add(st: &mut MasterState, name: &str) -> Result<SlaveId, FleetError> {
    if !valid_slave_name(name) {
        return Err(FleetError::BadName(name.to_string()));
    }
    if let Some(id) = st.slaves.knows(name) {
        let removed = st.slaves.get(id).is_some_and(|s| s.removed);
        if !removed {
            return Err(FleetError::Exists(name.to_string()));
        }
        st.slaves.set_flags(id, false, false);
        return Ok(id);
    }
    Ok(st.slaves.id_for(name))
}

/// SITE SLAVE <name> DRAIN / UNDRAIN: a draining slave takes no new upload
/// and its copies stop counting, so every file it holds gets its copies
/// elsewhere (it stays a source meanwhile).
pub fn set_draining(st: &mut MasterState, id: SlaveId, on: bool) {
    let removed = st.slaves.get(id).is_some_and(|s| s.removed);
    st.slaves.set_flags(id, on, removed);
    replica::note_all(st, Some(id));
}

/// What SITE DELSLAVE did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Removal {
    /// Files it held.
    pub files: u64,
    /// Of those, files whose only copy it was (gone from the tree).
    pub lost: u64,
    /// Entries of its operation log dropped.
    pub ops_dropped: usize,
}

/// SITE DELSLAVE: the slave leaves every holder set (a file it alone held
/// is gone), its operation log is dropped, its name is refused until SITE
/// ADDSLAVE, and the files it held join the repair queue.
pub fn remove(st: &mut MasterState, id: SlaveId) -> Removal {
    let mut out = Removal {
        ops_dropped: st.slaves.get(id).map_or(0, |s| s.log.len()),
        ..Removal::default()
    };
    st.slaves.set_flags(id, false, true);
    st.slaves.drop_log(id);
    let mut held: Vec<VPath> = Vec::new();
    let mut cursor = None;
    loop {
        let (chunk, next) = st.db.scan_held(id, cursor.as_ref(), 50_000);
        held.extend(chunk);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    for path in held {
        out.files += 1;
        if st.db.remove_holder(&path, id).unwrap_or(false) {
            out.lost += 1;
        }
        replica::note(st, &path);
    }
    out
}

/// Drain progress: (files it holds that have their copies elsewhere, files
/// it holds).
pub fn drain_progress(st: &MasterState, id: SlaveId) -> (u64, u64) {
    let mut done = 0;
    let mut total = 0;
    let mut cursor = None;
    loop {
        let (chunk, next) = st.db.scan_held(id, cursor.as_ref(), 50_000);
        for path in &chunk {
            total += 1;
            let Ok(meta) = st.db.file(path) else { continue };
            let (want, _) = replica::rule(st, path);
            if replica::live_copies(st, meta) >= want {
                done += 1;
            }
        }
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    (done, total)
}

/// Per slave for SITE SLAVES: under-replicated files it holds and copies
/// it takes part in.
pub fn queue_figures(st: &MasterState, id: SlaveId) -> (u64, u64) {
    let under = st
        .replication
        .queued_paths()
        .filter(|p| st.db.file(p).is_ok_and(|m| m.holders.contains(&id)))
        .count() as u64;
    let jobs = st
        .replication
        .running
        .values()
        .filter(|j| j.from == id || j.to == id)
        .count() as u64;
    (under, jobs)
}

/// Samples every slave's byte counters (call about once a second): its
/// `rate_out`/`rate_in` become the bytes per second since the last sample.
/// Client transfers count when they end, copies when they are committed.
pub fn sample_rates(st: &mut MasterState, now_ms: u64) {
    let ids: Vec<SlaveId> = st.slaves.iter().map(|(id, _)| id).collect();
    for id in ids {
        let Some(s) = st.slaves.get_mut(id) else {
            continue;
        };
        let out = s.bytes_sent + s.copied_out;
        let inn = s.bytes_received + s.copied_in;
        if let Some((t, o, i)) = s.rate_mark {
            let dt = now_ms.saturating_sub(t);
            if dt < 500 {
                continue;
            }
            s.rate_out = out.saturating_sub(o) * 1000 / dt;
            s.rate_in = inn.saturating_sub(i) * 1000 / dt;
        }
        s.rate_mark = Some((now_ms, out, inn));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MasterConfig, ReplicationConfig};
    use crate::master::db::{FileMeta, Holders};
    use crate::master::registry::SlaveState;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn cluster(copies: u32) -> MasterState {
        let config = MasterConfig {
            replication: ReplicationConfig {
                copies,
                ..Default::default()
            },
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(std::sync::Arc::new(config));
        for name in ["a", "b", "c"] {
            let id = st.slaves.id_for(name);
            let s = st.slaves.get_mut(id).unwrap();
            s.state = SlaveState::Online;
            s.free = 1 << 30;
        }
        for (path, holders) in [("/one", &[0][..]), ("/two", &[0, 1][..])] {
            let version = st.db.new_version();
            let meta = FileMeta {
                size: 10,
                mtime: 0,
                owner: 0,
                group: 0,
                crc32: Some(7),
                version,
                holders: Holders::from_slice(holders),
            };
            st.db.put_file(&p(path), meta).unwrap();
        }
        st
    }

    #[test]
    fn drain_moves_the_copies_that_count_elsewhere_and_shows_progress() {
        let mut st = cluster(1);
        let a = find_live(&st, "a").unwrap();
        assert_eq!(drain_progress(&st, a), (2, 2));
        set_draining(&mut st, a, true);
        // /one's only copy is on the draining slave; /two has one on b.
        assert_eq!(drain_progress(&st, a), (1, 2));
        assert_eq!(queue_figures(&st, a), (1, 0));
        for _ in 0..6 {
            assert_ne!(
                st.slaves.choose_upload(0),
                Some(a),
                "no upload to a draining slave"
            );
        }
        let jobs = replica::next_jobs(&mut st, 10);
        assert_eq!(jobs.len(), 1);
        assert_eq!((jobs[0].path.as_str(), jobs[0].from), ("/one", a));
        assert_ne!(jobs[0].to, a);
        assert_eq!(queue_figures(&st, a), (1, 1));
    }

    #[test]
    fn rates_are_bytes_per_second_between_samples() {
        let mut st = cluster(1);
        sample_rates(&mut st, 1_000);
        let s = st.slaves.get_mut(0).unwrap();
        s.bytes_sent += 4_000;
        s.copied_in += 1_000;
        sample_rates(&mut st, 3_000);
        let s = st.slaves.get(0).unwrap();
        assert_eq!((s.rate_out, s.rate_in), (2_000, 500));
        // Too soon for a new sample: the rate stays.
        sample_rates(&mut st, 3_100);
        assert_eq!(st.slaves.get(0).unwrap().rate_out, 2_000);
        sample_rates(&mut st, 4_000);
        assert_eq!(st.slaves.get(0).unwrap().rate_out, 0);
    }

    #[test]
    fn delslave_forgets_the_slave_and_its_log_and_starts_repair() {
        let mut st = cluster(2);
        let a = find_live(&st, "a").unwrap();
        st.slaves
            .log_op(a, crate::link::FileOp::Delete { path: p("/x") });
        let r = remove(&mut st, a);
        assert_eq!(
            r,
            Removal {
                files: 2,
                lost: 1,
                ops_dropped: 1
            }
        );
        assert!(
            st.db.file(&p("/one")).is_err(),
            "its only copy went with it"
        );
        assert_eq!(st.db.file(&p("/two")).unwrap().holders.to_vec(), vec![1]);
        assert!(st.slaves.get(a).unwrap().log.is_empty());
        assert_eq!(find_live(&st, "a"), Err(FleetError::Removed("a".into())));
        // /two lacks a copy (rule: 2): queued.
        assert_eq!(st.replication.queued(), 1);
        // ADDSLAVE brings the name back, holding nothing.
        assert_eq!(add(&mut st, "a"), Ok(a));
        assert_eq!(add(&mut st, "a"), Err(FleetError::Exists("a".into())));
        assert_eq!(st.db.held_by(a), 0);
        assert!(matches!(add(&mut st, "../x"), Err(FleetError::BadName(_))));
        let d = add(&mut st, "d").unwrap();
        assert_eq!(st.slaves.knows("d"), Some(d));
        assert!(matches!(find(&st, "zz"), Err(FleetError::Unknown(_))));
    }
}

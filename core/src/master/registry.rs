//! The slave registry: every slave the master has seen, its state, load and
//! link handle, and the selection policy that picks a slave for a transfer.
//!
//! Selection is one pure function per direction ([`pick_download`],
//! [`pick_upload`]) over a list of [`Candidate`]s, so the policy is unit
//! tested without a cluster. "Load" counts transfers running on the slave
//! plus those planned by PRET and not yet started: two clients that PRET at
//! the same moment are spread over two slaves.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use super::db::{Change, Journal, SlaveId};
use crate::link::FileOp;
use crate::proto::VPath;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveState {
    Offline,
    /// Connected and authenticated, sending its file list.
    Remerging,
    Online,
}

impl SlaveState {
    pub fn as_str(self) -> &'static str {
        match self {
            SlaveState::Offline => "offline",
            SlaveState::Remerging => "remerging",
            SlaveState::Online => "online",
        }
    }
}

pub struct SlaveInfo {
    pub name: String,
    /// Online/remerging only while the driver holds a live link to it
    /// (the driver's link table and this state change together).
    pub state: SlaveState,
    pub data_ip: Option<IpAddr>,
    pub free: u64,
    /// Transfers running on this slave (started by the master).
    pub active: u32,
    /// PRET plans naming this slave that have not started yet.
    pub reserved: u32,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub relayed_bytes: u64,
    /// The slave's operation log: every operation the master asked of its
    /// disk and the slave has not acknowledged yet, with its sequence
    /// number, in order (and in the store). Sent to the link in order,
    /// resent in full after every reconnect, removed when acknowledged.
    pub log: VecDeque<(u64, FileOp)>,
    /// Entries up to this sequence number were handed to the current link.
    pub sent_upto: u64,
    /// While remerging: paths changed since the slave connected. Its file
    /// list may predate those changes, so it is not trusted for them.
    pub touched: Option<Vec<VPath>>,
    /// Its operation log held entries when its current link came up: the
    /// master has been giving it orders, so it is not a new slave even if
    /// no copy is recorded on it now (all were deleted or replaced while
    /// it was away); see `remerge`.
    pub logged_at_link_up: bool,
    /// Passive listeners the slave opened ahead: (token, address).
    pub ready_listeners: std::collections::VecDeque<(u64, std::net::SocketAddr)>,
    /// The slave has a certificate for `PROT P` data connections (said in
    /// its `Hello`).
    pub data_tls: bool,
    /// Its zone label (said in its `Hello`): copies prefer distinct zones.
    pub zone: Option<String>,
    /// SITE SLAVE name DRAIN: no new uploads; its copies do not count, so
    /// every file it holds gets its copies elsewhere (kept in the store).
    pub draining: bool,
    /// SITE DELSLAVE: forgotten; refused until added again (in the store).
    pub removed: bool,
    /// When it went offline (the master's monotonic milliseconds).
    pub offline_since_ms: Option<u64>,
    /// Copies between slaves it takes part in now.
    pub copy_jobs: u32,
    /// Bytes it sent and received for copies.
    pub copied_out: u64,
    pub copied_in: u64,
    /// Bytes per second out and in (client transfers and copies) over the
    /// last sample ([`super::fleet::sample_rates`]).
    pub rate_out: u64,
    pub rate_in: u64,
    /// The last sample: (milliseconds, bytes out, bytes in so far).
    pub rate_mark: Option<(u64, u64, u64)>,
    /// Renames it could not apply (a symbolic link on its disk, a full or
    /// read-only disk): from -> to. Its copy stays at `from`, kept by
    /// remerge (never dropped as stale) and moved again on every remerge
    /// until a rename succeeds (see `remerge::applied`). In memory only.
    pub misplaced: std::collections::BTreeMap<VPath, VPath>,
}

impl SlaveInfo {
    pub fn is_online(&self) -> bool {
        self.state == SlaveState::Online
    }
    /// Whether it may serve downloads: online, or remerging (its link is
    /// up; the files the master records for it are served at once, each
    /// order naming the version, which a stale copy refuses).
    pub fn serves(&self) -> bool {
        matches!(self.state, SlaveState::Online | SlaveState::Remerging) && !self.removed
    }
    /// Whether its copies count toward a file's copies at `now_ms`: not
    /// draining, and online or away for less than `lost_after_ms`.
    pub fn counts(&self, now_ms: u64, lost_after_ms: u64) -> bool {
        !self.draining
            && !self.removed
            && match self.offline_since_ms {
                Some(t) if self.state == SlaveState::Offline => {
                    now_ms.saturating_sub(t) < lost_after_ms
                }
                _ => true,
            }
    }
    pub fn load(&self) -> u32 {
        self.active + self.reserved
    }
}

#[derive(Default)]
pub struct SlaveRegistry {
    slaves: Vec<SlaveInfo>,
    by_name: BTreeMap<String, SlaveId>,
    /// Round-robin counter for ties, advanced on every pick.
    rr: u64,
    next_epoch: u64,
    /// Sequence number of the last logged operation (any slave).
    op_seq: u64,
    /// Changes for the store.
    journal: Journal,
    /// Slaves whose log has entries not yet handed to their link.
    unsent: BTreeSet<SlaveId>,
}

impl SlaveRegistry {
    /// Starts recording changes for the store.
    pub fn open_journal(&mut self) {
        self.journal.open();
    }

    pub fn take_journal(&mut self) -> Vec<Change> {
        self.journal.take()
    }

    fn record(&mut self, c: Change) {
        self.journal.record(c);
    }

    /// Restores a slave's id from the store (ids are kept in the file
    /// records, so they must come back unchanged).
    pub fn load_slave(&mut self, id: SlaveId, name: &str) {
        while self.slaves.len() < id as usize {
            let filler = format!("?{}", self.slaves.len());
            self.register(&filler);
        }
        if self.slaves.len() == id as usize {
            self.register(name);
        }
    }

    /// Restores an entry of a slave's operation log from the store.
    pub fn load_op(&mut self, id: SlaveId, seq: u64, op: FileOp) {
        self.op_seq = self.op_seq.max(seq);
        if let Some(s) = self.get_mut(id) {
            s.log.push_back((seq, op));
        }
    }

    /// The id of a known slave.
    pub fn find(&self, name: &str) -> Option<SlaveId> {
        self.by_name.get(name).copied()
    }

    /// The id of `name`, registering it (offline) when new.
    pub fn id_for(&mut self, name: &str) -> SlaveId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let id = self.register(name);
        self.record(Change::Slave(id, name.to_string()));
        id
    }

    fn register(&mut self, name: &str) -> SlaveId {
        let id = self.slaves.len() as SlaveId;
        self.slaves.push(SlaveInfo {
            name: name.to_string(),
            state: SlaveState::Offline,
            data_ip: None,
            free: 0,
            active: 0,
            reserved: 0,
            bytes_sent: 0,
            bytes_received: 0,
            relayed_bytes: 0,
            log: VecDeque::new(),
            sent_upto: 0,
            touched: None,
            logged_at_link_up: false,
            ready_listeners: Default::default(),
            data_tls: false,
            zone: None,
            draining: false,
            removed: false,
            offline_since_ms: None,
            copy_jobs: 0,
            copied_out: 0,
            copied_in: 0,
            rate_out: 0,
            rate_in: 0,
            rate_mark: None,
            misplaced: Default::default(),
        });
        self.by_name.insert(name.to_string(), id);
        id
    }

    pub fn next_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    pub fn get(&self, id: SlaveId) -> Option<&SlaveInfo> {
        self.slaves.get(id as usize)
    }

    pub fn get_mut(&mut self, id: SlaveId) -> Option<&mut SlaveInfo> {
        self.slaves.get_mut(id as usize)
    }

    pub fn name(&self, id: SlaveId) -> &str {
        self.get(id).map(|s| s.name.as_str()).unwrap_or("?")
    }

    pub fn iter(&self) -> impl Iterator<Item = (SlaveId, &SlaveInfo)> {
        self.slaves
            .iter()
            .enumerate()
            .map(|(i, s)| (i as SlaveId, s))
    }

    pub fn is_online(&self, id: SlaveId) -> bool {
        self.get(id).is_some_and(SlaveInfo::is_online)
    }

    /// See [`SlaveInfo::serves`].
    pub fn serves(&self, id: SlaveId) -> bool {
        self.get(id).is_some_and(SlaveInfo::serves)
    }

    /// Whether `addr` is on the address slave `id` announced at its
    /// handshake. A listener elsewhere is refused: a compromised slave must
    /// not send clients (or the relaying master) to a third host.
    pub fn is_own_address(&self, id: SlaveId, addr: std::net::SocketAddr) -> bool {
        self.get(id).and_then(|s| s.data_ip) == Some(addr.ip())
    }

    fn candidates(&self, ids: impl Iterator<Item = SlaveId>) -> Vec<Candidate> {
        ids.filter_map(|id| {
            let s = self.get(id)?;
            (s.is_online() && !s.removed).then_some(Candidate {
                id,
                load: s.load(),
                free: s.free,
            })
        })
        .collect()
    }

    /// A holder for a download: an online one, else one still remerging
    /// (a rejoining slave serves what the master records for it at once);
    /// `None` when no holder's link is up.
    pub fn choose_download(&mut self, holders: &[SlaveId]) -> Option<SlaveId> {
        let mut c = self.candidates(holders.iter().copied());
        if c.is_empty() {
            c = holders
                .iter()
                .filter_map(|&id| {
                    let s = self.get(id)?;
                    s.serves().then_some(Candidate {
                        id,
                        load: s.load(),
                        free: s.free,
                    })
                })
                .collect();
        }
        let pick = pick_download(&c, self.rr);
        self.rr = self.rr.wrapping_add(1);
        pick
    }

    pub fn choose_upload(&mut self, min_free: u64) -> Option<SlaveId> {
        // A draining slave takes no new uploads.
        let ids =
            (0..self.slaves.len() as SlaveId).filter(|&i| self.get(i).is_some_and(|s| !s.draining));
        let c = self.candidates(ids);
        let pick = pick_upload(&c, min_free, self.rr);
        self.rr = self.rr.wrapping_add(1);
        pick
    }

    /// Appends `op` to slave `id`'s operation log (and the store's copy of
    /// it); the driver hands it to the slave's link in order when the slave
    /// is connected. Returns its sequence number (0: no such slave).
    pub fn log_op(&mut self, id: SlaveId, op: FileOp) -> u64 {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return 0;
        };
        self.op_seq += 1;
        let seq = self.op_seq;
        s.log.push_back((seq, op.clone()));
        if s.state != SlaveState::Offline {
            self.unsent.insert(id);
        }
        self.record(Change::QueueOp(id, seq, op));
        seq
    }

    /// The slave acknowledged its log up to `seq`: those entries leave the
    /// log (and the store).
    pub fn acked(&mut self, id: SlaveId, seq: u64) {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return;
        };
        let before = s.log.len();
        while s.log.front().is_some_and(|(n, _)| *n <= seq) {
            s.log.pop_front();
        }
        if s.log.len() != before {
            self.record(Change::DequeueOps(id, seq));
        }
    }

    /// A link to slave `id` is up: it is remerging, and its whole log is to
    /// be sent again. Returns the log's last sequence number (the slave
    /// applies up to it before it lists its files).
    pub fn link_up(&mut self, id: SlaveId) -> u64 {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return 0;
        };
        s.state = SlaveState::Remerging;
        s.sent_upto = 0;
        s.touched = Some(Vec::new());
        s.logged_at_link_up = !s.log.is_empty();
        s.ready_listeners.clear();
        let upto = s.log.back().map_or(0, |(n, _)| *n);
        if !s.log.is_empty() {
            self.unsent.insert(id);
        }
        upto
    }

    /// The remerge of slave `id` is complete: it serves transfers.
    pub fn remerged(&mut self, id: SlaveId) {
        if let Some(s) = self.get_mut(id) {
            s.state = SlaveState::Online;
            s.touched = None;
        }
    }

    /// The link to slave `id` is gone (at `now_ms`).
    pub fn link_down(&mut self, id: SlaveId, now_ms: u64) {
        if let Some(s) = self.get_mut(id) {
            s.state = SlaveState::Offline;
            s.touched = None;
            s.ready_listeners.clear();
            s.offline_since_ms = Some(now_ms);
        }
        self.unsent.remove(&id);
    }

    /// Sets a slave's lifecycle flags (SITE SLAVE DRAIN, DELSLAVE,
    /// ADDSLAVE), kept in the store.
    pub fn set_flags(&mut self, id: SlaveId, draining: bool, removed: bool) {
        if let Some(s) = self.get_mut(id) {
            if (s.draining, s.removed) == (draining, removed) {
                return;
            }
            s.draining = draining;
            s.removed = removed;
        }
        self.record(Change::SlaveFlags(id, draining, removed));
    }

    /// Restores lifecycle flags from the store.
    pub fn load_flags(&mut self, id: SlaveId, draining: bool, removed: bool) {
        if let Some(s) = self.get_mut(id) {
            s.draining = draining;
            s.removed = removed;
        }
    }

    /// Forgets slave `id`'s operation log (SITE DELSLAVE).
    pub fn drop_log(&mut self, id: SlaveId) {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return;
        };
        s.misplaced.clear();
        if let Some((last, _)) = s.log.back() {
            let last = *last;
            s.log.clear();
            self.record(Change::DequeueOps(id, last));
        }
    }

    /// Whether a slave of this name was ever registered.
    pub fn knows(&self, name: &str) -> Option<SlaveId> {
        self.by_name.get(name).copied()
    }

    /// Records that `path` (and everything below it) changed, for the
    /// slaves now remerging: their lists are not trusted there.
    pub fn touch(&mut self, path: &VPath) {
        for s in &mut self.slaves {
            if let Some(t) = s.touched.as_mut() {
                t.push(path.clone());
            }
        }
    }

    /// Whether a remerging slave's report of `path` may predate a change.
    pub fn touched(&self, id: SlaveId, path: &VPath) -> bool {
        self.get(id)
            .and_then(|s| s.touched.as_ref())
            .is_some_and(|t| t.iter().any(|p| path == p || path.starts_with(p)))
    }

    /// Log entries not yet handed to slave links, per slave, in order: at
    /// most about `max_bytes` of paths per slave and call (the driver calls
    /// again while there is more).
    pub fn take_unsent(&mut self, max_bytes: usize) -> Vec<(SlaveId, Vec<(u64, FileOp)>)> {
        let mut out = Vec::new();
        let ids: Vec<SlaveId> = std::mem::take(&mut self.unsent).into_iter().collect();
        for id in ids {
            let Some(s) = self.slaves.get_mut(id as usize) else {
                continue;
            };
            if s.state == SlaveState::Offline {
                continue;
            }
            let mut chunk = Vec::new();
            let mut bytes = 0;
            for (seq, op) in s.log.iter().filter(|(n, _)| *n > s.sent_upto) {
                if bytes >= max_bytes {
                    break;
                }
                bytes += op_size(op);
                chunk.push((*seq, op.clone()));
            }
            if let Some((last, _)) = chunk.last() {
                s.sent_upto = *last;
                if s.log.back().is_some_and(|(n, _)| n > last) {
                    self.unsent.insert(id);
                }
                out.push((id, chunk));
            }
        }
        out
    }

    /// Whether some log entries still wait for a link.
    pub fn has_unsent(&self) -> bool {
        !self.unsent.is_empty()
    }
}

/// About the bytes an operation takes in a frame.
fn op_size(op: &FileOp) -> usize {
    32 + match op {
        FileOp::Rename { from, to } => from.as_str().len() + to.as_str().len(),
        FileOp::Delete { path }
        | FileOp::RemoveDir { path }
        | FileOp::DropStale { path, .. }
        | FileOp::Stamp { path, .. }
        | FileOp::Commit { path, .. } => path.as_str().len(),
    }
}

/// Load accounting: the registry owns `reserved`, `active` and the byte
/// counters; sessions only say what happened.
impl SlaveRegistry {
    /// A PRET planned a transfer on `id` (selection counts it as load until
    /// the transfer starts or the plan is dropped).
    pub fn reserve(&mut self, id: SlaveId) {
        if let Some(s) = self.get_mut(id) {
            s.reserved += 1;
        }
    }

    /// A plan on `id` was dropped without a transfer.
    pub fn unreserve(&mut self, id: SlaveId) {
        if let Some(s) = self.get_mut(id) {
            s.reserved = s.reserved.saturating_sub(1);
        }
    }

    /// A transfer starts on `id`; `planned`: it consumes a PRET reservation.
    pub fn start_transfer(&mut self, id: SlaveId, planned: bool) {
        if let Some(s) = self.get_mut(id) {
            if planned {
                s.reserved = s.reserved.saturating_sub(1);
            }
            s.active += 1;
        }
    }

    /// A transfer on `id` ended, having moved `sent` bytes to a client and
    /// stored `received` bytes; `relayed`: the master carried them.
    pub fn finish_transfer(&mut self, id: SlaveId, sent: u64, received: u64, relayed: bool) {
        if let Some(s) = self.get_mut(id) {
            s.active = s.active.saturating_sub(1);
            s.bytes_sent += sent;
            s.bytes_received += received;
            if relayed {
                s.relayed_bytes += sent + received;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: SlaveId,
    pub load: u32,
    pub free: u64,
}

/// Download: among online holders, the least loaded; ties go round robin.
pub fn pick_download(cands: &[Candidate], rr: u64) -> Option<SlaveId> {
    let min = cands.iter().map(|c| c.load).min()?;
    let tied: Vec<&Candidate> = cands.iter().filter(|c| c.load == min).collect();
    Some(tied[(rr % tied.len() as u64) as usize].id)
}

/// Upload: among online slaves with more than `min_free` bytes free, the
/// least loaded; among those, the most free space; ties go round robin.
pub fn pick_upload(cands: &[Candidate], min_free: u64, rr: u64) -> Option<SlaveId> {
    let roomy: Vec<&Candidate> = cands.iter().filter(|c| c.free > min_free).collect();
    let min_load = roomy.iter().map(|c| c.load).min()?;
    let least: Vec<&&Candidate> = roomy.iter().filter(|c| c.load == min_load).collect();
    let max_free = least.iter().map(|c| c.free).max()?;
    let tied: Vec<&&&Candidate> = least.iter().filter(|c| c.free == max_free).collect();
    Some(tied[(rr % tied.len() as u64) as usize].id)
}

/// Valid slave names: short, printable, no spaces (they appear in replies).
pub fn valid_slave_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: SlaveId, load: u32, free: u64) -> Candidate {
        Candidate { id, load, free }
    }

    #[test]
    fn download_prefers_least_loaded_and_round_robins_ties() {
        assert_eq!(pick_download(&[], 0), None);
        let cs = [c(0, 2, 0), c(1, 1, 0), c(2, 1, 0)];
        assert_eq!(pick_download(&cs, 0), Some(1));
        assert_eq!(pick_download(&cs, 1), Some(2));
        assert_eq!(pick_download(&cs, 2), Some(1));
        assert_eq!(pick_download(&[c(5, 9, 0)], 7), Some(5));
    }

    #[test]
    fn upload_needs_room_then_load_then_free_space() {
        let cs = [c(0, 0, 100), c(1, 0, 500), c(2, 1, 900), c(3, 0, 10)];
        assert_eq!(pick_upload(&cs, 0, 0), Some(1));
        // Least loaded wins over most free.
        assert_eq!(pick_upload(&[c(0, 1, 900), c(1, 0, 5)], 0, 0), Some(1));
        // Full slaves get nothing.
        assert_eq!(pick_upload(&[c(0, 0, 10)], 10, 0), None);
        assert_eq!(pick_upload(&[c(0, 0, 10), c(1, 3, 50)], 10, 0), Some(1));
        // Exact ties rotate.
        let tie = [c(0, 0, 5), c(1, 0, 5)];
        assert_eq!(pick_upload(&tie, 0, 0), Some(0));
        assert_eq!(pick_upload(&tie, 0, 1), Some(1));
    }

    #[test]
    fn a_remerging_holder_serves_when_no_online_one_does_but_takes_no_upload() {
        let mut r = SlaveRegistry::default();
        let a = r.id_for("a");
        let b = r.id_for("b");
        for (id, state) in [(a, SlaveState::Remerging), (b, SlaveState::Online)] {
            let s = r.get_mut(id).unwrap();
            s.state = state;
            s.free = 100;
        }
        // An online holder first.
        for _ in 0..4 {
            assert_eq!(r.choose_download(&[a, b]), Some(b));
        }
        // Only the remerging one holds it: it serves.
        assert_eq!(r.choose_download(&[a]), Some(a));
        assert!(r.serves(a) && !r.is_online(a));
        // Uploads go to online slaves only.
        for _ in 0..4 {
            assert_eq!(r.choose_upload(0), Some(b));
        }
        r.get_mut(b).unwrap().state = SlaveState::Offline;
        assert_eq!(r.choose_upload(0), None);
        assert_eq!(r.choose_download(&[b]), None);
    }

    #[test]
    fn registry_only_chooses_online_slaves() {
        let mut r = SlaveRegistry::default();
        let a = r.id_for("a");
        let b = r.id_for("b");
        assert_eq!(r.id_for("a"), a);
        assert_eq!(r.choose_download(&[a, b]), None);
        let s = r.get_mut(b).unwrap();
        s.state = SlaveState::Online;
        s.free = 10;
        assert_eq!(r.choose_download(&[a, b]), Some(b));
        assert_eq!(r.choose_upload(0), Some(b));
        assert_eq!(r.choose_upload(10), None);
    }

    #[test]
    fn the_log_is_sent_in_order_resent_after_reconnect_and_acked() {
        let mut r = SlaveRegistry::default();
        let a = r.id_for("a");
        let del = |p: &str| FileOp::Delete {
            path: VPath::parse_absolute(p).unwrap(),
        };
        // Offline: logged, nothing to send.
        let s1 = r.log_op(a, del("/1"));
        assert!(r.take_unsent(1 << 20).is_empty());
        // Connected: the whole log goes out, then only what is new.
        assert_eq!(r.link_up(a), s1);
        let s2 = r.log_op(a, del("/2"));
        assert_eq!(
            r.take_unsent(1 << 20),
            vec![(a, vec![(s1, del("/1")), (s2, del("/2"))])]
        );
        assert!(r.take_unsent(1 << 20).is_empty());
        // Acked entries leave; a reconnect resends the rest.
        r.acked(a, s1);
        r.link_down(a, 0);
        assert_eq!(r.link_up(a), s2);
        assert_eq!(r.take_unsent(1 << 20), vec![(a, vec![(s2, del("/2"))])]);
        // A long log goes out in chunks.
        for i in 0..100 {
            r.log_op(a, del(&format!("/{}", "x".repeat(200) + &i.to_string())));
        }
        let first = r.take_unsent(2000);
        assert!(first[0].1.len() < 100 && r.has_unsent());
        let mut n = first[0].1.len();
        while r.has_unsent() {
            n += r
                .take_unsent(2000)
                .iter()
                .map(|(_, c)| c.len())
                .sum::<usize>();
        }
        assert_eq!(n, 100);
        // Paths touched while remerging are not trusted from its list.
        r.touch(&VPath::parse_absolute("/d").unwrap());
        assert!(r.touched(a, &VPath::parse_absolute("/d/f").unwrap()));
        assert!(!r.touched(a, &VPath::parse_absolute("/e").unwrap()));
        r.remerged(a);
        assert!(!r.touched(a, &VPath::parse_absolute("/d/f").unwrap()));
    }
}

//! The slave registry: every slave the master has seen, its state, load and
//! link handle, and the selection policy that picks a slave for a transfer.
//!
//! Selection is one pure function per direction ([`pick_download`],
//! [`pick_upload`]) over a list of [`Candidate`]s, so the policy is unit
//! tested without a cluster. "Load" counts transfers running on the slave
//! plus those planned by PRET and not yet started: two clients that PRET at
//! the same moment are spread over two slaves.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::db::{Change, Journal, SlaveId};
use crate::link::FileOp;

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
    /// Changes to apply when it rejoins (it was offline when they happened).
    /// Operations for this slave made while it was offline, with their
    /// sequence numbers; kept (and in the store) until a remerge proves
    /// the slave applied them.
    pub pending_ops: Vec<(u64, FileOp)>,
    /// Passive listeners the slave opened ahead: (token, address).
    pub ready_listeners: std::collections::VecDeque<(u64, std::net::SocketAddr)>,
    /// The slave has a certificate for `PROT P` data connections (said in
    /// its `Hello`).
    pub data_tls: bool,
}

impl SlaveInfo {
    pub fn is_online(&self) -> bool {
        self.state == SlaveState::Online
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
    /// Sequence number of the last queued operation (any slave).
    op_seq: u64,
    /// Changes for the store.
    journal: Journal,
    /// Operations for connected slaves, in order, not yet handed to their
    /// links (the driver drains it under the state lock: [`Self::take_outbox`]).
    outbox: Vec<(SlaveId, FileOp)>,
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

    /// Restores an operation queued for an offline slave.
    pub fn load_op(&mut self, id: SlaveId, seq: u64, op: FileOp) {
        self.op_seq = self.op_seq.max(seq);
        if let Some(s) = self.get_mut(id) {
            s.pending_ops.push((seq, op));
        }
    }

    /// The slave has applied its queued operations up to `seq`.
    pub fn ops_applied(&mut self, id: SlaveId, seq: u64) {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return;
        };
        let before = s.pending_ops.len();
        s.pending_ops.retain(|(n, _)| *n > seq);
        if s.pending_ops.len() != before {
            self.record(Change::DequeueOps(id, seq));
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
            pending_ops: Vec::new(),
            ready_listeners: Default::default(),
            data_tls: false,
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

    /// Whether `addr` is on the address slave `id` announced at its
    /// handshake. A listener elsewhere is refused: a compromised slave must
    /// not send clients (or the relaying master) to a third host.
    pub fn is_own_address(&self, id: SlaveId, addr: std::net::SocketAddr) -> bool {
        self.get(id).and_then(|s| s.data_ip) == Some(addr.ip())
    }

    fn candidates(&self, ids: impl Iterator<Item = SlaveId>) -> Vec<Candidate> {
        ids.filter_map(|id| {
            let s = self.get(id)?;
            s.is_online().then_some(Candidate {
                id,
                load: s.load(),
                free: s.free,
            })
        })
        .collect()
    }

    /// An online holder for a download, or `None` when no copy is online.
    pub fn choose_download(&mut self, holders: &[SlaveId]) -> Option<SlaveId> {
        let c = self.candidates(holders.iter().copied());
        let pick = pick_download(&c, self.rr);
        self.rr = self.rr.wrapping_add(1);
        pick
    }

    pub fn choose_upload(&mut self, min_free: u64) -> Option<SlaveId> {
        let c = self.candidates(0..self.slaves.len() as SlaveId);
        let pick = pick_upload(&c, min_free, self.rr);
        self.rr = self.rr.wrapping_add(1);
        pick
    }

    /// Queues `op` for `id` when offline (kept, and stored, until a
    /// remerge proves it applied), or puts it in the outbox for its link.
    pub fn apply_op(&mut self, id: SlaveId, op: FileOp) {
        let Some(s) = self.slaves.get_mut(id as usize) else {
            return;
        };
        if matches!(s.state, SlaveState::Online | SlaveState::Remerging) {
            self.outbox.push((id, op));
            return;
        }
        self.op_seq += 1;
        let seq = self.op_seq;
        s.pending_ops.push((seq, op.clone()));
        self.record(Change::QueueOp(id, seq, op));
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

    /// Operations for connected slaves since the last call, in order.
    pub fn take_outbox(&mut self) -> Vec<(SlaveId, FileOp)> {
        std::mem::take(&mut self.outbox)
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
        r.apply_op(
            a,
            FileOp::Delete {
                path: crate::proto::VPath::root(),
            },
        );
        assert_eq!(r.get(a).unwrap().pending_ops.len(), 1);
        let root = crate::proto::VPath::root();
        r.apply_op(b, FileOp::Delete { path: root.clone() });
        assert_eq!(r.take_outbox(), vec![(b, FileOp::Delete { path: root })]);
        assert!(r.take_outbox().is_empty());
    }
}

//! The transfer machine: one slave transfer, from the order to the outcome
//! that becomes the client's final reply. Sans-IO: the driver feeds it
//! [`Event`]s (the slave's answers, ABOR, the control connection closing,
//! a client caught at the master's address, the relay's legs) and performs
//! the [`Step`]s it returns (link requests, the 150 reply, the relay).
//!
//! ```text
//!  start ──▶ [RelaySetup] ──RelayReady──▶ Running ──Sent/Failed/lost──▶ Done
//!    │                                      │   └─Sent/Received, relayed─▶ [Draining] ──RelayBroken──▶ Done
//!    └──────────── Order + 150 ────────────▶│ Received                        │ RelayDone
//!                                           ▼                                  ▼
//!                                        Probing ◀──────────────────── (Received) / Done (Sent)
//!                                           │──alive──▶ [Syncing] ──▶ Deciding ──▶ Committing ──▶ Done
//!                                           └──ABOR/closed──▶ Done (aborted)   └─lost race─▶ Done
//! ```
//!
//! A relayed transfer is over only when the relay is: the slave's `Sent`
//! means its bytes reached the master, not the client (`Draining` waits for
//! the relay's last bytes). A relay leg that fails or makes no progress for
//! `data_timeout_ms` (`RelayBroken`) cancels the slave's side, and the
//! transfer fails with the relay's reason whatever the slave answers.
//!
//! `Syncing` (`sync_copies` > 1): the received upload is copied to other
//! slaves before the commit decision, which then commits every copy; the
//! 226 waits for all of them. Fewer copies than wanted: nothing is
//! committed anywhere.
//!
//! Decisions made here, not in the driver:
//! - an upload is committed only after the slave has it all, the control
//!   connection is still open and no ABOR came (two-phase upload);
//! - a client that connected to the master's address instead of the slave's
//!   (it ignores 227 addresses) is relayed when relaying is allowed, else
//!   answered with a 425 that names the fix;
//! - ABOR or a lost control connection cancel the slave's side, and the
//!   slave's answer is still awaited (every order gets exactly one answer);
//! - a relay that broke cancels the slave's side the same way, and a failed
//!   slave side ends the relay at once.

use std::net::SocketAddr;

use super::db::SlaveId;
use super::replica::{self, Refusal};
use super::session::{Route, TransferJob, TransferOutcome};
use super::MasterState;
use crate::link::{DataConn, OpOutcome, Response, TransferFailure, TransferOrder};
use crate::proto::Reply;

/// The client's side of a relayed transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayClient {
    /// The client will connect to the master's own passive listener.
    Listener,
    /// The client is already connected, caught at the master's address.
    Caught,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the transfer order on the link.
    Order(DataConn),
    /// Write this reply (the 150) to the client.
    Reply(Reply),
    /// Cancel the slave's side of this transfer (`MasterMsg::Abort`).
    AbortSlave,
    /// Relay: ask the slave for a listener, connect to it, then report
    /// [`Event::RelayReady`] or [`Event::RelayFailed`].
    SetUpRelay(RelayClient),
    /// Start moving bytes between the relay's two legs.
    StartRelay,
    /// Stop the relay: cancel it and close both legs (`cancel`), or wait
    /// for its last bytes (bounded by the relay's idle timeout) and report
    /// [`Event::RelayDone`] or [`Event::RelayBroken`].
    EndRelay { cancel: bool },
    /// Look at the control connection once before committing, then report
    /// [`Event::ControlAlive`], [`Event::Abor`] or [`Event::ControlClosed`].
    ProbeControl,
    /// Copy the received (uncommitted) upload to `want` other slaves, then
    /// report [`Event::Synced`] with each copy's (slave, transfer).
    SyncCopies { size: u64, crc32: u32, want: u32 },
    /// Make the commit decision (`Session::decide_commit`, under the state
    /// lock) for the upload and its synchronous `copies`, and report
    /// [`Event::Decided`].
    Decide {
        size: u64,
        crc32: u32,
        copies: Vec<(SlaveId, u64)>,
    },
    /// Wait for the acknowledgement of each (slave, log entry) (the
    /// commits; the uploading slave's first), across reconnects, for a
    /// bounded time; report [`Event::CommitAck`] (the uploading slave's,
    /// every copy committed) or [`Event::CommitUnknown`].
    AwaitCommit { seqs: Vec<(SlaveId, u64)> },
    /// Hold the caught data connection open until the final reply is sent
    /// (a client must read the 425 before its data connection closes).
    Park,
    /// The transfer is over. `aborted`: the client sent ABOR (it gets ABOR's
    /// own 226 after the transfer's reply).
    Finish {
        outcome: TransferOutcome,
        aborted: bool,
    },
}

/// What happened, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The slave answered the order or the commit.
    Slave(Response),
    /// The slave's link went down.
    SlaveLost,
    /// The client sent ABOR.
    Abor,
    /// The control connection closed.
    ControlClosed,
    /// The probe before a commit found the control connection open.
    ControlAlive,
    /// The client connected to the master's address at the announced port.
    Caught,
    /// Both legs of the relay are connected.
    RelayReady,
    /// The relay could not be set up. `listening`: the slave had opened a
    /// listener for it (which must be released).
    RelayFailed { listening: bool, lost: bool },
    /// The running relay failed: the client never connected, or a leg
    /// broke or made no progress for `data_timeout_ms`.
    RelayBroken(TransferFailure),
    /// The relay moved its last byte (answers `EndRelay` without cancel).
    RelayDone,
    /// The synchronous copies: each (slave, transfer) holding the upload
    /// uncommitted, or why fewer than wanted could be made.
    Synced(Result<Vec<(SlaveId, u64)>, String>),
    /// The commit decision: the log entries to wait for, or the reply of
    /// an upload that lost a race.
    Decided(Result<Vec<(SlaveId, u64)>, Reply>),
    /// The slave applied the commit entry.
    CommitAck(OpOutcome),
    /// No acknowledgement within the bound.
    CommitUnknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RelaySetup,
    Running,
    /// The slave's side is done; the relay still moves its last bytes.
    Draining(Drained),
    Probing {
        size: u64,
        crc32: u32,
    },
    Syncing {
        size: u64,
        crc32: u32,
    },
    Deciding {
        crc32: u32,
    },
    Committing {
        crc32: u32,
    },
    Done,
}

/// What the slave answered before the relay drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Drained {
    Sent { bytes: u64 },
    Received { size: u64, crc32: u32 },
}

/// One slave transfer in progress.
#[derive(Debug)]
pub struct TransferMachine {
    route: Route,
    opening: Reply,
    relay_allowed: bool,
    /// The slave address announced in the 227/229 reply (passive routes).
    announced: Option<SocketAddr>,
    /// The control connection's local address (the master's own address).
    local: SocketAddr,
    phase: Phase,
    opening_sent: bool,
    relaying: bool,
    aborted: bool,
    control_closed: bool,
    /// A client was caught mid-transfer; the slave's side is being aborted.
    caught: bool,
    /// The relay broke (why); the slave's side is being aborted.
    relay_broken: Option<TransferFailure>,
    /// The relay moved its last byte while the slave's side was running
    /// (the client has everything the slave sent, or sent everything).
    relay_drained: bool,
    /// Synchronous copies an upload waits for (`UploadTarget::sync`).
    sync: u32,
}

impl TransferMachine {
    pub fn new(
        job: &TransferJob,
        relay_allowed: bool,
        announced: Option<SocketAddr>,
        local: SocketAddr,
    ) -> TransferMachine {
        TransferMachine {
            route: job.route.clone(),
            opening: job.opening.clone(),
            relay_allowed,
            announced,
            local,
            phase: Phase::Running,
            opening_sent: false,
            relaying: false,
            aborted: false,
            control_closed: false,
            caught: false,
            relay_broken: None,
            relay_drained: false,
            sync: job.upload.as_ref().map_or(0, |u| u.sync),
        }
    }

    /// The first steps. `link_up`: the slave's link is there;
    /// `master_listener`: the client's passive listener is the master's own
    /// (relay route); `caught_now`: a client already waits at the master's
    /// address (it ignored the 227 reply and connected at once).
    pub fn start(&mut self, link_up: bool, master_listener: bool, caught_now: bool) -> Vec<Step> {
        if !link_up {
            return self.finish_with_opening(TransferOutcome::SlaveLost);
        }
        if self.route == Route::Relay {
            if !master_listener {
                return self.finish_with_opening(TransferOutcome::Failed(
                    TransferFailure::NoDataConnection("no passive listener".into()),
                ));
            }
            self.relaying = true;
            self.phase = Phase::RelaySetup;
            return vec![Step::SetUpRelay(RelayClient::Listener)];
        }
        if caught_now {
            let mut steps = vec![Step::AbortSlave];
            steps.extend(self.client_caught());
            return steps;
        }
        let data = match &self.route {
            Route::Active(a) => DataConn::Active(*a),
            _ => DataConn::Passive,
        };
        self.opening_sent = true;
        vec![Step::Order(data), Step::Reply(self.opening.clone())]
    }

    /// Whether the driver should read the control connection (ABOR, loss)
    /// and watch the master's catch address now.
    pub fn watching(&self) -> bool {
        self.phase == Phase::Running
    }

    /// Whether a caught client may still be reported.
    pub fn may_catch(&self) -> bool {
        self.phase == Phase::Running && !self.caught && !self.relaying
    }

    /// Whether the transfer goes through the master (for the counters).
    pub fn relaying(&self) -> bool {
        self.relaying
    }

    pub fn on(&mut self, event: Event) -> Vec<Step> {
        match (self.phase, event) {
            (Phase::Done, _) => Vec::new(),
            (Phase::RelaySetup, Event::RelayReady) => {
                self.phase = Phase::Running;
                let mut steps = vec![Step::Order(DataConn::Passive)];
                if !self.opening_sent {
                    self.opening_sent = true;
                    steps.push(Step::Reply(self.opening.clone()));
                }
                steps.push(Step::StartRelay);
                steps
            }
            (Phase::RelaySetup, Event::RelayFailed { listening, lost }) => {
                let outcome = if lost {
                    TransferOutcome::SlaveLost
                } else if listening {
                    TransferOutcome::Failed(TransferFailure::NoDataConnection(
                        "cannot reach the slave".into(),
                    ))
                } else {
                    TransferOutcome::Failed(TransferFailure::NoDataConnection(
                        "slave listener".into(),
                    ))
                };
                let mut steps = Vec::new();
                if listening {
                    steps.push(Step::AbortSlave);
                }
                steps.push(self.finish(outcome));
                steps
            }
            (Phase::Running, Event::Abor) => {
                self.aborted = true;
                vec![Step::AbortSlave]
            }
            (Phase::Running, Event::ControlClosed) => {
                // The client is gone: cancel, then wait for the slave to
                // confirm.
                self.control_closed = true;
                vec![Step::AbortSlave]
            }
            (Phase::Running, Event::Caught) if self.may_catch() => {
                self.caught = true;
                vec![Step::AbortSlave]
            }
            (Phase::Running, Event::RelayBroken(why))
                if self.relaying && self.relay_broken.is_none() =>
            {
                // The slave's answer (to the abort, or what it had already
                // sent) ends the transfer.
                self.relay_broken = Some(why);
                vec![Step::AbortSlave]
            }
            (Phase::Running, Event::RelayDone) if self.relaying => {
                // The slave's answer follows; `EndRelay` then finds it done.
                self.relay_drained = true;
                Vec::new()
            }
            (Phase::Draining(drained), e @ (Event::Abor | Event::ControlClosed)) => {
                // The client gave up before the relay's last byte: not
                // complete, whatever the slave had sent or received.
                if e == Event::Abor {
                    self.aborted = true;
                } else {
                    self.control_closed = true;
                }
                let mut steps = vec![Step::EndRelay { cancel: true }];
                if matches!(drained, Drained::Received { .. }) {
                    // The slave discards what it received.
                    steps.push(Step::AbortSlave);
                }
                steps.push(self.finish(TransferOutcome::Failed(TransferFailure::Aborted)));
                steps
            }
            (Phase::Draining(drained), Event::RelayDone) => match drained {
                Drained::Sent { bytes } => vec![self.finish(TransferOutcome::Sent { bytes })],
                Drained::Received { size, crc32 } => {
                    self.phase = Phase::Probing { size, crc32 };
                    vec![Step::ProbeControl]
                }
            },
            (Phase::Draining(drained), Event::RelayBroken(why)) => {
                let mut steps = Vec::new();
                if matches!(drained, Drained::Received { .. }) {
                    // The slave discards what it received.
                    steps.push(Step::AbortSlave);
                }
                steps.push(self.finish(TransferOutcome::Failed(why)));
                steps
            }
            (Phase::Running, Event::Slave(_)) if self.caught && !self.gone() => {
                // The slave's side was cancelled for a client that ignored
                // the 227 address: serve that client instead.
                self.client_caught()
            }
            (Phase::Running, Event::Slave(response)) => self.answered(response),
            (Phase::Running, Event::SlaveLost) => self.end(TransferOutcome::SlaveLost),
            (Phase::Probing { .. }, Event::Abor) => {
                self.aborted = true;
                self.cancel_commit()
            }
            (Phase::Probing { .. }, Event::ControlClosed) => {
                self.control_closed = true;
                self.cancel_commit()
            }
            (Phase::Probing { size, crc32 }, Event::ControlAlive) => {
                if self.gone() {
                    return self.cancel_commit();
                }
                if self.sync > 0 {
                    self.phase = Phase::Syncing { size, crc32 };
                    return vec![Step::SyncCopies {
                        size,
                        crc32,
                        want: self.sync,
                    }];
                }
                self.phase = Phase::Deciding { crc32 };
                vec![Step::Decide {
                    size,
                    crc32,
                    copies: Vec::new(),
                }]
            }
            (Phase::Syncing { size, crc32 }, Event::Synced(Ok(copies))) => {
                self.phase = Phase::Deciding { crc32 };
                vec![Step::Decide {
                    size,
                    crc32,
                    copies,
                }]
            }
            (Phase::Syncing { .. }, Event::Synced(Err(why))) => {
                // Nothing committed anywhere: the slave discards the upload
                // (the driver released the copies it made).
                vec![
                    Step::AbortSlave,
                    self.finish(TransferOutcome::Failed(TransferFailure::Storage(format!(
                        "could not make the synchronous {} ({why}); nothing stored",
                        if self.sync == 1 { "copy" } else { "copies" }
                    )))),
                ]
            }
            (Phase::Deciding { crc32 }, Event::Decided(Ok(seqs))) => {
                self.phase = Phase::Committing { crc32 };
                vec![Step::AwaitCommit { seqs }]
            }
            (Phase::Deciding { .. }, Event::Decided(Err(reply))) => {
                // Lost a race: the slave discards the received file.
                vec![
                    Step::AbortSlave,
                    self.finish(TransferOutcome::Refused(reply)),
                ]
            }
            (Phase::Committing { crc32 }, Event::CommitAck(outcome)) => {
                let outcome = match outcome {
                    OpOutcome::Committed { size, mtime } => {
                        TransferOutcome::Committed { size, mtime, crc32 }
                    }
                    OpOutcome::Failed(f) => TransferOutcome::Failed(TransferFailure::Storage(f)),
                    OpOutcome::Done => TransferOutcome::Failed(TransferFailure::Storage(
                        "unexpected answer to a commit".into(),
                    )),
                };
                vec![self.finish(outcome)]
            }
            (Phase::Committing { .. }, Event::CommitUnknown) => {
                vec![self.finish(TransferOutcome::Unknown)]
            }
            // Anything else cannot happen in that phase; ignore it.
            _ => Vec::new(),
        }
    }

    /// ABOR came or the client left.
    fn gone(&self) -> bool {
        self.aborted || self.control_closed
    }

    /// The slave answered a running transfer.
    fn answered(&mut self, response: Response) -> Vec<Step> {
        if let Some(why) = self.relay_broken.clone() {
            // Whatever the slave did, the client did not get (or send)
            // it all through the relay.
            let mut steps = self.end_relay();
            if matches!(response, Response::Received { .. }) {
                steps.push(Step::AbortSlave);
            }
            steps.push(self.finish(TransferOutcome::Failed(why)));
            return steps;
        }
        match response {
            Response::Sent { bytes } if self.relaying && !self.gone() => {
                self.phase = Phase::Draining(Drained::Sent { bytes });
                vec![Step::EndRelay { cancel: false }]
            }
            // ABOR (or the client gone) during a relayed download: the
            // slave's `Sent` means its bytes reached the master, not the
            // client. Complete only if the relay had delivered them all.
            Response::Sent { .. } if self.relaying && !self.relay_drained => {
                self.end(TransferOutcome::Failed(TransferFailure::Aborted))
            }
            Response::Sent { bytes } => self.end(TransferOutcome::Sent { bytes }),
            Response::Failed(f) => self.end(TransferOutcome::Failed(f)),
            Response::Received { size, crc32, .. } => {
                // Second phase: commit only while the client is still there
                // and did not abort. A client that died mid-upload leaves a
                // partial file, which must never be recorded.
                if self.gone() {
                    let mut steps = self.end_relay();
                    steps.extend(self.cancel_commit());
                    return steps;
                }
                if self.relaying {
                    self.phase = Phase::Draining(Drained::Received { size, crc32 });
                    return vec![Step::EndRelay { cancel: false }];
                }
                self.phase = Phase::Probing { size, crc32 };
                vec![Step::ProbeControl]
            }
            other => self.end(TransferOutcome::Failed(TransferFailure::Storage(format!(
                "unexpected answer {other:?}"
            )))),
        }
    }

    fn cancel_commit(&mut self) -> Vec<Step> {
        vec![
            Step::AbortSlave,
            self.finish(TransferOutcome::Failed(TransferFailure::Aborted)),
        ]
    }

    /// The client connected to the master's address instead of the slave's.
    fn client_caught(&mut self) -> Vec<Step> {
        self.caught = false;
        if self.relay_allowed {
            self.relaying = true;
            self.phase = Phase::RelaySetup;
            return vec![Step::SetUpRelay(RelayClient::Caught)];
        }
        let announced = self.announced.unwrap_or(self.local);
        let used = SocketAddr::new(self.local.ip(), self.announced.map_or(0, |a| a.port()));
        vec![
            Step::Park,
            self.finish(TransferOutcome::IgnoredPasvAddress { announced, used }),
        ]
    }

    /// Cancels the relay (the transfer ends without it).
    fn end_relay(&self) -> Vec<Step> {
        if self.relaying {
            vec![Step::EndRelay { cancel: true }]
        } else {
            Vec::new()
        }
    }

    fn end(&mut self, outcome: TransferOutcome) -> Vec<Step> {
        let mut steps = self.end_relay();
        steps.push(self.finish(outcome));
        steps
    }

    fn finish_with_opening(&mut self, outcome: TransferOutcome) -> Vec<Step> {
        self.opening_sent = true;
        vec![Step::Reply(self.opening.clone()), self.finish(outcome)]
    }

    fn finish(&mut self, outcome: TransferOutcome) -> Step {
        self.phase = Phase::Done;
        Step::Finish {
            outcome,
            aborted: self.aborted,
        }
    }
}

/// A download's slave answered "not found" or "not the current version"
/// for the copy the master records on it: unless that is passing (see
/// [`Refusal`]), the slave stops being a holder ([`replica::refused`]);
/// when another holder serves the file now, the client gets a 450 to try
/// again (the next RETR goes there) instead of the 550 or the "being
/// replaced". Any other outcome is returned as it is.
pub fn download_refused(
    st: &mut MasterState,
    job: &TransferJob,
    outcome: TransferOutcome,
) -> TransferOutcome {
    let TransferOrder::Send {
        path,
        version,
        pending: None,
        ..
    } = &job.order
    else {
        return outcome;
    };
    if !matches!(
        outcome,
        TransferOutcome::Failed(TransferFailure::FileNotFound | TransferFailure::NotCurrent)
    ) {
        return outcome;
    }
    match replica::refused(st, job.slave, path, version.as_ref()) {
        Refusal::Dropped { others: true } => TransferOutcome::Refused(Reply::new(
            450,
            format!(
                "{path}: the copy on slave {} is missing or damaged (no longer used, repair started); try again",
                job.slave_name
            ),
        )),
        _ => outcome,
    }
}

/// The reply to an upload whose commit was not acknowledged in time
/// ([`TransferOutcome::Unknown`]). The master recorded the new version at
/// its decision, so it is listed (with its new size) until the slave
/// reconnects and answers the resent commit; if the slave had not stored
/// it, it goes away then (or the previous version returns). The reply says
/// so rather than send the client to check a listing that may change.
pub fn unknown_commit_reply(job: &TransferJob) -> Reply {
    let path = job
        .upload
        .as_ref()
        .map(|u| u.path.to_string())
        .unwrap_or_default();
    Reply::new(
        451,
        format!(
            "{path}: upload outcome unknown: slave {} was lost while committing it; decided when it reconnects (until then it is listed as stored, and it goes away if the slave had not stored it)",
            job.slave_name
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::VPath;

    fn job(route: Route, upload: bool) -> TransferJob {
        let path = VPath::parse_absolute("/f").unwrap();
        TransferJob {
            slave: 0,
            slave_name: "s1".into(),
            xfer: 7,
            order: if upload {
                TransferOrder::Receive {
                    path: path.clone(),
                    offset: None,
                    base: None,
                }
            } else {
                TransferOrder::Send {
                    path,
                    offset: 0,
                    version: None,
                    rate: None,
                    pending: None,
                }
            },
            route,
            opening: Reply::new(150, "Opening"),
            upload: None,
        }
    }

    fn local() -> SocketAddr {
        "127.0.0.1:21".parse().unwrap()
    }

    fn announced() -> Option<SocketAddr> {
        Some("127.0.0.11:5000".parse().unwrap())
    }

    fn machine(route: Route, upload: bool, relay: bool) -> TransferMachine {
        TransferMachine::new(&job(route, upload), relay, announced(), local())
    }

    fn finish(steps: &[Step]) -> Option<(TransferOutcome, bool)> {
        steps.iter().find_map(|s| match s {
            Step::Finish { outcome, aborted } => Some((outcome.clone(), *aborted)),
            _ => None,
        })
    }

    #[test]
    fn an_unknown_commit_says_the_listing_may_change() {
        let r = unknown_commit_reply(&job(Route::SlavePassive, true));
        assert_eq!(r.code, 451);
        let text = r.to_string();
        assert!(text.contains("outcome unknown"), "{text}");
        assert!(text.contains("decided when it reconnects"), "{text}");
        assert!(!text.contains("check SIZE"), "{text}");
    }

    #[test]
    fn a_download_refused_for_a_lost_copy_drops_it_and_says_try_again() {
        use crate::config::MasterConfig;
        use crate::master::db::{FileMeta, Holders};
        use crate::master::registry::SlaveState;
        let mut cfg = MasterConfig::default();
        cfg.replication.copies = 2;
        let mut st = MasterState::new(std::sync::Arc::new(cfg));
        for name in ["s1", "s2"] {
            let id = st.slaves.id_for(name);
            st.slaves.get_mut(id).unwrap().state = SlaveState::Online;
        }
        let path = VPath::parse_absolute("/f").unwrap();
        let gen = st.db.new_version();
        let meta = FileMeta {
            size: 10,
            mtime: 0,
            owner: 0,
            group: 0,
            crc32: Some(7),
            version: gen,
            holders: Holders::from_slice(&[0, 1]),
        };
        st.db.put_file(&path, meta.clone()).unwrap();
        let mut j = job(Route::SlavePassive, false);
        if let TransferOrder::Send { version, .. } = &mut j.order {
            *version = Some(crate::master::commit::file_version(&st, &meta));
        }
        // Another failure is left as it is.
        let other = TransferOutcome::Failed(TransferFailure::Aborted);
        assert_eq!(download_refused(&mut st, &j, other.clone()), other);
        for failure in [TransferFailure::FileNotFound, TransferFailure::NotCurrent] {
            st.db.put_file(&path, meta.clone()).unwrap();
            st.slaves.acked(0, u64::MAX);
            match download_refused(&mut st, &j, TransferOutcome::Failed(failure)) {
                TransferOutcome::Refused(r) => {
                    assert_eq!(r.code, 450);
                    assert!(r.to_string().contains("try again"), "{r}");
                }
                o => panic!("{o:?}"),
            }
            assert_eq!(st.db.file(&path).unwrap().holders.to_vec(), vec![1]);
            assert!(st.replication.queued() > 0, "repair queued");
        }
        // The only copy left: kept, the failure stays.
        let nf = TransferOutcome::Failed(TransferFailure::FileNotFound);
        j.slave = 1;
        assert_eq!(download_refused(&mut st, &j, nf.clone()), nf);
        assert_eq!(st.db.file(&path).unwrap().holders.to_vec(), vec![1]);
    }

    #[test]
    fn a_download_orders_then_opens_then_finishes() {
        let mut m = machine(Route::SlavePassive, false, false);
        let s = m.start(true, false, false);
        assert_eq!(s[0], Step::Order(DataConn::Passive));
        assert!(matches!(s[1], Step::Reply(ref r) if r.code == 150));
        assert!(m.watching());
        let s = m.on(Event::Slave(Response::Sent { bytes: 5 }));
        assert_eq!(
            finish(&s),
            Some((TransferOutcome::Sent { bytes: 5 }, false))
        );
        assert!(!m.watching());
        assert!(m.on(Event::Abor).is_empty(), "nothing after the end");
    }

    #[test]
    fn an_upload_is_committed_only_after_the_probe() {
        let mut m = machine(
            Route::Active("127.0.0.1:4000".parse().unwrap()),
            true,
            false,
        );
        let s = m.start(true, false, false);
        assert_eq!(
            s[0],
            Step::Order(DataConn::Active("127.0.0.1:4000".parse().unwrap()))
        );
        let s = m.on(Event::Slave(Response::Received {
            bytes: 3,
            size: 3,
            crc32: 9,
        }));
        assert_eq!(s, vec![Step::ProbeControl]);
        assert_eq!(
            m.on(Event::ControlAlive),
            vec![Step::Decide {
                size: 3,
                crc32: 9,
                copies: Vec::new()
            }]
        );
        assert_eq!(
            m.on(Event::Decided(Ok(vec![(0, 41)]))),
            vec![Step::AwaitCommit {
                seqs: vec![(0, 41)]
            }]
        );
        // A lost link does not end it: the entry is resent on reconnect.
        assert!(m.on(Event::SlaveLost).is_empty());
        let s = m.on(Event::CommitAck(OpOutcome::Committed { size: 3, mtime: 1 }));
        assert_eq!(
            finish(&s),
            Some((
                TransferOutcome::Committed {
                    size: 3,
                    mtime: 1,
                    crc32: 9
                },
                false
            ))
        );
    }

    #[test]
    fn synchronous_copies_come_before_the_decision_or_nothing_is_stored() {
        let received = Event::Slave(Response::Received {
            bytes: 3,
            size: 3,
            crc32: 9,
        });
        let with_sync = |sync| {
            let mut j = job(Route::SlavePassive, true);
            j.upload = Some(crate::master::commit::UploadTarget {
                path: VPath::parse_absolute("/f").unwrap(),
                expect: crate::master::commit::Expect::Any,
                sync,
            });
            let mut m = TransferMachine::new(&j, false, announced(), local());
            m.start(true, false, false);
            m.on(received.clone());
            m
        };
        let mut m = with_sync(2);
        assert_eq!(
            m.on(Event::ControlAlive),
            vec![Step::SyncCopies {
                size: 3,
                crc32: 9,
                want: 2
            }]
        );
        assert_eq!(
            m.on(Event::Synced(Ok(vec![(1, 70), (2, 71)]))),
            vec![Step::Decide {
                size: 3,
                crc32: 9,
                copies: vec![(1, 70), (2, 71)]
            }]
        );
        assert_eq!(
            m.on(Event::Decided(Ok(vec![(0, 5), (1, 6), (2, 7)]))),
            vec![Step::AwaitCommit {
                seqs: vec![(0, 5), (1, 6), (2, 7)]
            }]
        );
        // Too few copies: the upload is discarded, nothing decided.
        let mut m = with_sync(1);
        m.on(Event::ControlAlive);
        let s = m.on(Event::Synced(Err("no other slave".into())));
        assert_eq!(s[0], Step::AbortSlave);
        assert!(!s.iter().any(|s| matches!(s, Step::Decide { .. })));
        match finish(&s) {
            Some((TransferOutcome::Failed(TransferFailure::Storage(why)), false)) => {
                assert!(why.contains("nothing stored"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_lost_race_or_an_unknown_outcome_end_it_honestly() {
        let received = Event::Slave(Response::Received {
            bytes: 1,
            size: 1,
            crc32: 1,
        });
        let mut m = machine(Route::SlavePassive, true, false);
        m.start(true, false, false);
        m.on(received.clone());
        m.on(Event::ControlAlive);
        let refused = Reply::new(553, "raced");
        let s = m.on(Event::Decided(Err(refused.clone())));
        assert_eq!(s[0], Step::AbortSlave);
        assert_eq!(finish(&s).unwrap().0, TransferOutcome::Refused(refused));
        let mut m = machine(Route::SlavePassive, true, false);
        m.start(true, false, false);
        m.on(received);
        m.on(Event::ControlAlive);
        m.on(Event::Decided(Ok(vec![(0, 3)])));
        let s = m.on(Event::CommitUnknown);
        assert_eq!(finish(&s).unwrap().0, TransferOutcome::Unknown);
    }

    #[test]
    fn abor_or_a_closed_control_connection_never_commits() {
        for event in [Event::Abor, Event::ControlClosed] {
            // During the transfer.
            let mut m = machine(Route::SlavePassive, true, false);
            m.start(true, false, false);
            assert_eq!(m.on(event.clone()), vec![Step::AbortSlave]);
            let s = m.on(Event::Slave(Response::Received {
                bytes: 1,
                size: 1,
                crc32: 1,
            }));
            assert!(!s.iter().any(|x| matches!(x, Step::Decide { .. })));
            let (outcome, aborted) = finish(&s).unwrap();
            assert_eq!(outcome, TransferOutcome::Failed(TransferFailure::Aborted));
            assert_eq!(aborted, event == Event::Abor);
            // Seen only by the probe.
            let mut m = machine(Route::SlavePassive, true, false);
            m.start(true, false, false);
            m.on(Event::Slave(Response::Received {
                bytes: 1,
                size: 1,
                crc32: 1,
            }));
            let s = m.on(event.clone());
            assert_eq!(s[0], Step::AbortSlave);
            assert_eq!(
                finish(&s).unwrap().0,
                TransferOutcome::Failed(TransferFailure::Aborted)
            );
        }
    }

    #[test]
    fn a_caught_client_gets_the_fix_or_is_relayed() {
        // At once, no relay: no 150, the connection parked, a 425 outcome.
        let mut m = machine(Route::SlavePassive, false, false);
        let s = m.start(true, false, true);
        assert_eq!(s[0], Step::AbortSlave);
        assert_eq!(s[1], Step::Park);
        assert!(!s.iter().any(|x| matches!(x, Step::Reply(_))));
        assert!(matches!(
            finish(&s).unwrap().0,
            TransferOutcome::IgnoredPasvAddress { .. }
        ));
        // Mid-transfer, relay allowed: abort, wait for the slave, relay.
        let mut m = machine(Route::SlavePassive, false, true);
        m.start(true, false, false);
        assert_eq!(m.on(Event::Caught), vec![Step::AbortSlave]);
        assert!(!m.may_catch());
        let s = m.on(Event::Slave(Response::Failed(TransferFailure::Aborted)));
        assert_eq!(s, vec![Step::SetUpRelay(RelayClient::Caught)]);
        let s = m.on(Event::RelayReady);
        // The 150 was already sent: only the order and the relay.
        assert_eq!(s, vec![Step::Order(DataConn::Passive), Step::StartRelay]);
        assert!(m.relaying());
        // The slave's bytes are at the master: done when the relay is.
        let s = m.on(Event::Slave(Response::Sent { bytes: 9 }));
        assert_eq!(s, vec![Step::EndRelay { cancel: false }]);
        let s = m.on(Event::RelayDone);
        assert_eq!(finish(&s).unwrap().0, TransferOutcome::Sent { bytes: 9 });
    }

    fn relaying(upload: bool) -> TransferMachine {
        let mut m = machine(Route::Relay, upload, true);
        m.start(true, true, false);
        let s = m.on(Event::RelayReady);
        assert_eq!(s.last(), Some(&Step::StartRelay));
        m
    }

    #[test]
    fn abor_during_a_relayed_download_is_complete_only_if_the_relay_delivered_it_all() {
        // ABOR before the relay delivered anything: the slave's `Sent`
        // (its bytes reached the master) is not a completed transfer.
        let mut m = relaying(false);
        assert_eq!(m.on(Event::Abor), vec![Step::AbortSlave]);
        let s = m.on(Event::Slave(Response::Sent { bytes: 9 }));
        assert_eq!(s[0], Step::EndRelay { cancel: true });
        assert_eq!(
            finish(&s).unwrap(),
            (TransferOutcome::Failed(TransferFailure::Aborted), true)
        );
        // The relay had delivered every byte: complete.
        let mut m = relaying(false);
        assert!(m.on(Event::RelayDone).is_empty());
        m.on(Event::Abor);
        let s = m.on(Event::Slave(Response::Sent { bytes: 9 }));
        assert_eq!(finish(&s).unwrap().0, TransferOutcome::Sent { bytes: 9 });
        // ABOR while the relay drains the slave's last bytes: cancelled.
        for upload in [false, true] {
            let mut m = relaying(upload);
            let answer = if upload {
                Response::Received {
                    bytes: 3,
                    size: 3,
                    crc32: 1,
                }
            } else {
                Response::Sent { bytes: 9 }
            };
            assert_eq!(
                m.on(Event::Slave(answer)),
                vec![Step::EndRelay { cancel: false }]
            );
            let s = m.on(Event::Abor);
            assert_eq!(s[0], Step::EndRelay { cancel: true });
            assert_eq!(s.contains(&Step::AbortSlave), upload);
            assert_eq!(
                finish(&s).unwrap(),
                (TransferOutcome::Failed(TransferFailure::Aborted), true)
            );
        }
    }

    fn stalled() -> TransferFailure {
        TransferFailure::Network("client data connection: no progress for 2000 ms".into())
    }

    #[test]
    fn a_broken_relay_cancels_the_slave_and_fails_whatever_it_answers() {
        let answers = [
            Response::Failed(TransferFailure::Aborted),
            Response::Sent { bytes: 9 },
            Response::Received {
                bytes: 3,
                size: 3,
                crc32: 1,
            },
        ];
        for answer in answers {
            let upload = matches!(answer, Response::Received { .. });
            let mut m = relaying(upload);
            assert_eq!(m.on(Event::RelayBroken(stalled())), vec![Step::AbortSlave]);
            assert!(m.watching(), "ABOR and the slave's answer still count");
            assert!(m.on(Event::RelayBroken(stalled())).is_empty(), "once");
            let s = m.on(Event::Slave(answer.clone()));
            assert_eq!(s[0], Step::EndRelay { cancel: true }, "{answer:?}");
            // A received upload is discarded, never decided.
            assert_eq!(s.contains(&Step::AbortSlave), upload, "{answer:?}");
            assert!(!s.contains(&Step::ProbeControl));
            assert_eq!(
                finish(&s),
                Some((TransferOutcome::Failed(stalled()), false)),
                "{answer:?}"
            );
        }
    }

    #[test]
    fn a_relay_that_fails_while_draining_fails_the_transfer() {
        // A download: the slave sent it all, the client stopped reading.
        let mut m = relaying(false);
        let s = m.on(Event::Slave(Response::Sent { bytes: 9 }));
        assert_eq!(s, vec![Step::EndRelay { cancel: false }]);
        assert!(!m.watching());
        let s = m.on(Event::RelayBroken(stalled()));
        assert_eq!(s, vec![m_finish(TransferOutcome::Failed(stalled()))]);
        // An upload: drained, then probed and decided as a direct one.
        let received = Response::Received {
            bytes: 3,
            size: 3,
            crc32: 1,
        };
        let mut m = relaying(true);
        let s = m.on(Event::Slave(received.clone()));
        assert_eq!(s, vec![Step::EndRelay { cancel: false }]);
        assert_eq!(m.on(Event::RelayDone), vec![Step::ProbeControl]);
        // Broken instead: discarded.
        let mut m = relaying(true);
        m.on(Event::Slave(received));
        let s = m.on(Event::RelayBroken(stalled()));
        assert_eq!(
            s,
            vec![
                Step::AbortSlave,
                m_finish(TransferOutcome::Failed(stalled()))
            ]
        );
    }

    #[test]
    fn a_failed_slave_side_or_a_lost_slave_cancels_the_relay_at_once() {
        for event in [
            Event::Slave(Response::Failed(TransferFailure::Network(
                "no progress on the data connection for 2000 ms".into(),
            ))),
            Event::SlaveLost,
        ] {
            let mut m = relaying(false);
            let s = m.on(event.clone());
            assert_eq!(s[0], Step::EndRelay { cancel: true }, "{event:?}");
            assert!(finish(&s).is_some(), "{event:?}");
        }
    }

    fn m_finish(outcome: TransferOutcome) -> Step {
        Step::Finish {
            outcome,
            aborted: false,
        }
    }

    #[test]
    fn relay_setup_failures_and_a_lost_link() {
        let mut m = machine(Route::Relay, false, true);
        assert_eq!(
            m.start(true, false, false).last(),
            Some(&Step::Finish {
                outcome: TransferOutcome::Failed(TransferFailure::NoDataConnection(
                    "no passive listener".into()
                )),
                aborted: false
            })
        );
        let mut m = machine(Route::Relay, false, true);
        assert_eq!(
            m.start(true, true, false),
            vec![Step::SetUpRelay(RelayClient::Listener)]
        );
        let s = m.on(Event::RelayFailed {
            listening: true,
            lost: false,
        });
        assert_eq!(s[0], Step::AbortSlave);
        let mut m = machine(Route::SlavePassive, false, false);
        let s = m.start(false, false, false);
        assert!(matches!(s[0], Step::Reply(_)));
        assert_eq!(finish(&s).unwrap().0, TransferOutcome::SlaveLost);
    }
}

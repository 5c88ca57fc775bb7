//! The copy machine: one copy of a file from a holder (`from`) to another
//! slave (`to`), over a data connection between the two slaves, never
//! through the master; the slave-to-slave sibling of the transfer machine
//! ([`super::transfer`]). Sans-IO: the master's replicator performs its
//! [`CopyStep`]s on the two links and feeds it [`CopyEvent`]s.
//!
//! ```text
//!  Listening ──addr──▶ Copying ──Received──▶ Deciding ──seq──▶ Committing ──ack──▶ Done
//!      └────────────── failure / lost slave / refused ──────────────▶ Failed
//! ```
//!
//! The target receives into a temporary file like any upload; the copy
//! counts only after the master checked its size and CRC-32 against the
//! record ([`super::replica::received`]) and the target committed it with
//! the same version (two-phase, as an upload).
//!
//! A synchronous copy ([`CopyMachine::synchronous`], `sync_copies`) is
//! made from an upload still waiting for its commit on the source, before
//! the commit decision: it ends once the target holds the bytes (size and
//! CRC-32 as received from the client), uncommitted; the upload's commit
//! decision then commits it on every such target at once.

use std::net::SocketAddr;

use super::replica::CopyJob;
use crate::link::{DataConn, OpOutcome, Response, TransferOrder};

/// Which end of the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    From,
    To,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStep {
    /// Ask the target for a listener that accepts only the source.
    Listen,
    /// Send a transfer order to one end.
    Order {
        end: End,
        order: TransferOrder,
        data: DataConn,
    },
    /// Check the received copy and commit it (`replica::received`), then
    /// report [`CopyEvent::Decided`].
    Decide { size: u64, crc32: u32 },
    /// Wait for the target's acknowledgement of its commit entry.
    AwaitCommit { seq: u64 },
    /// Cancel one end's transfer.
    Abort(End),
    /// Over: `Ok`: the target holds the copy.
    Finish(Result<(), String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    Listening(SocketAddr),
    /// An answer from one end to its order.
    Answer(End, Response),
    /// One end's link went down.
    Lost(End),
    Decided(Result<u64, String>),
    CommitAck(OpOutcome),
    /// Nothing happened for too long.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Listening,
    Copying,
    Deciding,
    Committing,
    Done,
}

#[derive(Debug)]
pub struct CopyMachine {
    job: CopyJob,
    rate: Option<u64>,
    /// A synchronous copy of the source's upload waiting as transfer N.
    pending: Option<u64>,
    phase: Phase,
}

impl CopyMachine {
    /// `rate`: bytes per second the source may send (None: no cap).
    pub fn new(job: CopyJob, rate: Option<u64>) -> CopyMachine {
        CopyMachine {
            job,
            rate,
            pending: None,
            phase: Phase::Listening,
        }
    }

    /// A synchronous copy of the upload of transfer `pending`, waiting for
    /// its commit on `job.from`; `job.version` holds the size and CRC-32
    /// it was received with. Done when the target holds it uncommitted.
    pub fn synchronous(job: CopyJob, pending: u64) -> CopyMachine {
        CopyMachine {
            job,
            rate: None,
            pending: Some(pending),
            phase: Phase::Listening,
        }
    }

    pub fn job(&self) -> &CopyJob {
        &self.job
    }

    pub fn start(&mut self) -> Vec<CopyStep> {
        vec![CopyStep::Listen]
    }

    pub fn on(&mut self, event: CopyEvent) -> Vec<CopyStep> {
        match (self.phase, event) {
            (Phase::Done, _) => Vec::new(),
            (Phase::Listening, CopyEvent::Listening(addr)) => {
                self.phase = Phase::Copying;
                vec![
                    CopyStep::Order {
                        end: End::To,
                        order: TransferOrder::Receive {
                            path: self.job.path.clone(),
                            offset: None,
                            base: None,
                        },
                        data: DataConn::Passive,
                    },
                    CopyStep::Order {
                        end: End::From,
                        order: TransferOrder::Send {
                            path: self.job.path.clone(),
                            offset: 0,
                            version: self.pending.is_none().then_some(self.job.version),
                            rate: self.rate,
                            pending: self.pending,
                        },
                        data: DataConn::Active(addr),
                    },
                ]
            }
            (
                Phase::Copying,
                CopyEvent::Answer(End::To, Response::Received { size, crc32, .. }),
            ) if self.pending.is_some() => {
                let v = self.job.version;
                if size == v.size && Some(crc32) == v.crc32 {
                    self.phase = Phase::Done;
                    vec![CopyStep::Finish(Ok(()))]
                } else {
                    self.fail(
                        vec![CopyStep::Abort(End::To)],
                        format!(
                            "the copy arrived as {size} bytes crc32 {crc32:08x}, not as uploaded"
                        ),
                    )
                }
            }
            (
                Phase::Copying,
                CopyEvent::Answer(End::To, Response::Received { size, crc32, .. }),
            ) => {
                self.phase = Phase::Deciding;
                vec![CopyStep::Decide { size, crc32 }]
            }
            // The source finished sending: the target's answer decides.
            (Phase::Copying, CopyEvent::Answer(End::From, Response::Sent { .. })) => Vec::new(),
            (Phase::Copying, CopyEvent::Answer(end, r)) => {
                let other = if end == End::From { End::To } else { End::From };
                self.fail(
                    vec![CopyStep::Abort(other)],
                    format!("{end:?} answered {r:?}"),
                )
            }
            (Phase::Deciding, CopyEvent::Decided(Ok(seq))) => {
                self.phase = Phase::Committing;
                vec![CopyStep::AwaitCommit { seq }]
            }
            (Phase::Deciding, CopyEvent::Decided(Err(why))) => {
                self.fail(vec![CopyStep::Abort(End::To)], why)
            }
            (Phase::Deciding | Phase::Committing, CopyEvent::Answer(..)) => Vec::new(),
            (Phase::Committing, CopyEvent::CommitAck(OpOutcome::Failed(why))) => {
                self.fail(Vec::new(), why)
            }
            (Phase::Committing, CopyEvent::CommitAck(_)) => {
                self.phase = Phase::Done;
                vec![CopyStep::Finish(Ok(()))]
            }
            // A lost link before the commit ends the copy (the target
            // discards what it received); after it, the acknowledgement
            // still comes (the entry is resent on reconnect).
            (Phase::Committing, CopyEvent::Lost(_)) => Vec::new(),
            (_, CopyEvent::Lost(end)) => {
                let other = if end == End::From { End::To } else { End::From };
                self.fail(vec![CopyStep::Abort(other)], format!("{end:?} slave lost"))
            }
            (_, CopyEvent::TimedOut) => self.fail(
                vec![CopyStep::Abort(End::From), CopyStep::Abort(End::To)],
                "no progress".into(),
            ),
            (_, e) => self.fail(
                vec![CopyStep::Abort(End::From), CopyStep::Abort(End::To)],
                format!("unexpected {e:?}"),
            ),
        }
    }

    fn fail(&mut self, mut steps: Vec<CopyStep>, why: String) -> Vec<CopyStep> {
        self.phase = Phase::Done;
        steps.push(CopyStep::Finish(Err(why)));
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::FileVersion;
    use crate::proto::VPath;

    fn job() -> CopyJob {
        CopyJob {
            id: 1,
            path: VPath::parse_absolute("/f").unwrap(),
            version: FileVersion {
                store: 1,
                gen: 2,
                size: 3,
                crc32: Some(4),
            },
            from: 0,
            to: 1,
        }
    }

    #[test]
    fn a_synchronous_copy_sends_the_waiting_upload_and_ends_uncommitted() {
        let mut m = CopyMachine::synchronous(job(), 77);
        assert_eq!(m.start(), vec![CopyStep::Listen]);
        let addr: SocketAddr = "127.0.0.12:5000".parse().unwrap();
        let s = m.on(CopyEvent::Listening(addr));
        assert!(
            s.iter().any(|s| matches!(
                s,
                CopyStep::Order {
                    end: End::From,
                    order: TransferOrder::Send {
                        pending: Some(77),
                        version: None,
                        rate: None,
                        ..
                    },
                    ..
                }
            )),
            "{s:?}"
        );
        // Received as uploaded (size 3, crc 4): done, no decision.
        let s = m.on(CopyEvent::Answer(
            End::To,
            Response::Received {
                bytes: 3,
                size: 3,
                crc32: 4,
            },
        ));
        assert_eq!(s, vec![CopyStep::Finish(Ok(()))]);
        // Other bytes: the target's copy is dropped, the copy failed.
        let mut m = CopyMachine::synchronous(job(), 77);
        m.start();
        m.on(CopyEvent::Listening(addr));
        let s = m.on(CopyEvent::Answer(
            End::To,
            Response::Received {
                bytes: 3,
                size: 3,
                crc32: 5,
            },
        ));
        assert_eq!(s[0], CopyStep::Abort(End::To));
        assert!(matches!(s[1], CopyStep::Finish(Err(_))));
    }

    #[test]
    fn a_copy_listens_orders_both_ends_decides_and_commits() {
        let mut m = CopyMachine::new(job(), Some(1000));
        assert_eq!(m.start(), vec![CopyStep::Listen]);
        let addr: SocketAddr = "127.0.0.12:6000".parse().unwrap();
        let s = m.on(CopyEvent::Listening(addr));
        assert!(matches!(&s[0], CopyStep::Order { end: End::To, .. }));
        assert!(matches!(
            &s[1],
            CopyStep::Order { end: End::From, data: DataConn::Active(a), order: TransferOrder::Send { rate: Some(1000), .. } } if *a == addr
        ));
        assert!(m
            .on(CopyEvent::Answer(End::From, Response::Sent { bytes: 3 }))
            .is_empty());
        let s = m.on(CopyEvent::Answer(
            End::To,
            Response::Received {
                bytes: 3,
                size: 3,
                crc32: 4,
            },
        ));
        assert_eq!(s, vec![CopyStep::Decide { size: 3, crc32: 4 }]);
        assert_eq!(
            m.on(CopyEvent::Decided(Ok(8))),
            vec![CopyStep::AwaitCommit { seq: 8 }]
        );
        assert!(
            m.on(CopyEvent::Lost(End::To)).is_empty(),
            "the ack still comes"
        );
        assert_eq!(
            m.on(CopyEvent::CommitAck(OpOutcome::Committed {
                size: 3,
                mtime: 1
            })),
            vec![CopyStep::Finish(Ok(()))]
        );
    }

    #[test]
    fn a_lost_source_or_a_refused_copy_fails_and_releases_the_other_end() {
        let mut m = CopyMachine::new(job(), None);
        m.start();
        m.on(CopyEvent::Listening("127.0.0.12:6000".parse().unwrap()));
        let s = m.on(CopyEvent::Lost(End::From));
        assert_eq!(s[0], CopyStep::Abort(End::To));
        assert!(matches!(s[1], CopyStep::Finish(Err(_))));
        let mut m = CopyMachine::new(job(), None);
        m.start();
        m.on(CopyEvent::Listening("127.0.0.12:6000".parse().unwrap()));
        m.on(CopyEvent::Answer(
            End::To,
            Response::Received {
                bytes: 3,
                size: 3,
                crc32: 9,
            },
        ));
        let s = m.on(CopyEvent::Decided(Err("crc".into())));
        assert_eq!(s[0], CopyStep::Abort(End::To));
    }
}

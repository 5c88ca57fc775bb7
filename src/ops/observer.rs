//! The session observer that feeds operations: every control session of a
//! master with metrics or a transfer log gets one [`OpsObserver`]
//! (`ControlSession::attach_observers`). From the session's events it
//! counts commands by verb and logins ok/failed, and for each finished
//! transfer counts it (direction, slave, bytes, duration, relayed bytes)
//! and writes its xferlog line.
//!
//! It only reads events and the state it is handed; what the session
//! decides never depends on it.

use std::net::IpAddr;
use std::sync::Arc;

use super::metrics::{Direction, Metrics};
use super::xferlog::{XferLog, XferRecord};
use crate::link::{TransferOrder, APPEND};
use dftpd_core::master::observe::{SessionEvent, SessionObserver};
use dftpd_core::master::session::TransferOutcome;
use dftpd_core::master::MasterState;

/// Where a master's operational records go; either may be off.
#[derive(Clone, Default)]
pub struct OpsSinks {
    pub metrics: Option<Arc<Metrics>>,
    pub xferlog: Option<Arc<XferLog>>,
}

impl OpsSinks {
    pub fn is_empty(&self) -> bool {
        self.metrics.is_none() && self.xferlog.is_none()
    }
}

/// One session's feed into the metrics and the transfer log.
pub struct OpsObserver {
    sinks: OpsSinks,
    /// The client's address (from [`SessionEvent::Opened`]).
    remote: Option<IpAddr>,
    /// The logged-in user (from [`SessionEvent::LoggedIn`]).
    user: Option<String>,
}

impl OpsObserver {
    pub fn new(sinks: OpsSinks) -> OpsObserver {
        OpsObserver {
            sinks,
            remote: None,
            user: None,
        }
    }
}

/// What a finished transfer moved, and whether it completed.
fn transfer_bytes(order: &TransferOrder, outcome: &TransferOutcome, aborted: bool) -> (u64, bool) {
    match outcome {
        TransferOutcome::Sent { bytes } => (*bytes, !aborted),
        TransferOutcome::Committed { size, .. } => {
            // A resumed or appended upload moved only the new part; an
            // append's base is the version it was built on.
            let moved = match order {
                TransferOrder::Receive {
                    offset: Some(APPEND),
                    base,
                    ..
                } => size.saturating_sub(base.map_or(0, |b| b.size)),
                TransferOrder::Receive {
                    offset: Some(n), ..
                } => size.saturating_sub(*n),
                _ => *size,
            };
            (moved, true)
        }
        _ => (0, false),
    }
}

impl SessionObserver for OpsObserver {
    fn on(&mut self, event: &SessionEvent<'_>, _st: &MasterState) {
        self.on_event(event)
    }

    /// Everything it needs is in the events: it never holds up the state
    /// lock.
    fn reads_state(&self) -> bool {
        false
    }

    fn on_event(&mut self, event: &SessionEvent<'_>) {
        match event {
            SessionEvent::Opened { peer, .. } => self.remote = Some(peer.ip()),
            SessionEvent::Command { verb, .. } => {
                if let (Some(m), Some(verb)) = (&self.sinks.metrics, verb) {
                    m.command(verb);
                }
            }
            SessionEvent::LoggedIn { user } => {
                self.user = Some(user.to_string());
                if let Some(m) = &self.sinks.metrics {
                    m.login(true);
                }
            }
            SessionEvent::LoginFailed { .. } => {
                if let Some(m) = &self.sinks.metrics {
                    m.login(false);
                }
            }
            SessionEvent::TransferFinished {
                job,
                outcome,
                aborted,
                duration,
                data,
                unix_now,
            } => {
                let direction = if job.is_upload() {
                    Direction::Upload
                } else {
                    Direction::Download
                };
                let (bytes, complete) = transfer_bytes(&job.order, outcome, *aborted);
                // A failed or aborted transfer: the bytes the master knows
                // (what it relayed; 0 when they went straight to a slave).
                let bytes = match (complete, data.relayed, data.bytes) {
                    (false, true, Some(moved)) => moved,
                    _ => bytes,
                };
                let path = match &job.order {
                    TransferOrder::Send { path, .. } | TransferOrder::Receive { path, .. } => path,
                };
                let record = XferRecord {
                    end_unix: *unix_now,
                    duration: *duration,
                    remote: self
                        .remote
                        // The xferlog's "unknown" remote, not a bind.
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)), // bind-ok
                    bytes,
                    path: path.as_str(),
                    direction,
                    user: self.user.as_deref().unwrap_or(""),
                    slave: &job.slave_name,
                    complete,
                };
                super::transfer_finished(
                    self.sinks.metrics.as_deref(),
                    self.sinks.xferlog.as_deref(),
                    &record,
                    data.relayed,
                );
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;
    use crate::proto::{Command, Reply, VPath};
    use dftpd_core::master::session::{Route, TransferJob};
    use std::time::Duration;

    fn job(upload: bool, offset: Option<u64>) -> TransferJob {
        let path = VPath::parse_absolute("/d/f.bin").unwrap();
        TransferJob {
            slave: 0,
            slave_name: "slave-2".into(),
            xfer: 1,
            order: if upload {
                TransferOrder::Receive {
                    path: path.clone(),
                    offset,
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
            route: Route::SlavePassive,
            opening: Reply::new(150, "Opening"),
            upload: None,
        }
    }

    #[test]
    fn an_append_counts_the_bytes_past_its_base() {
        let committed = TransferOutcome::Committed {
            size: 150,
            mtime: 0,
            crc32: 0,
        };
        let mut up = job(true, Some(APPEND));
        assert_eq!(transfer_bytes(&up.order, &committed, false), (150, true));
        if let TransferOrder::Receive { base, .. } = &mut up.order {
            *base = Some(crate::link::FileVersion {
                store: 1,
                gen: 4,
                size: 120,
                crc32: None,
            });
        }
        assert_eq!(transfer_bytes(&up.order, &committed, false), (30, true));
        let rest = job(true, Some(100));
        assert_eq!(transfer_bytes(&rest.order, &committed, false), (50, true));
    }

    #[test]
    fn commands_logins_and_transfers_reach_metrics_and_the_transfer_log() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("xferlog");
        let metrics = Arc::new(Metrics::new());
        let xferlog = Arc::new(XferLog::open(&log_path).unwrap());
        let mut o = OpsObserver::new(OpsSinks {
            metrics: Some(metrics.clone()),
            xferlog: Some(xferlog),
        });
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        st.now = 1_078_387_950;
        let cwd = VPath::root();
        let at = Duration::ZERO;
        o.on(
            &SessionEvent::Opened {
                session: 1,
                peer: "127.0.0.9:4000".parse().unwrap(),
                unix_now: 0,
                clock: Duration::ZERO,
            },
            &st,
        );
        for text in ["USER bob", "PASS x", "PASV", "RETR f.bin", "NOT A VERB"] {
            o.on(
                &SessionEvent::Command {
                    at,
                    text,
                    cwd: &cwd,
                    verb: Command::parse(text).ok().map(|c| c.verb()),
                },
                &st,
            );
        }
        o.on(&SessionEvent::LoginFailed { user: "bob" }, &st);
        o.on(&SessionEvent::LoggedIn { user: "bob" }, &st);
        let down = job(false, None);
        o.on(
            &SessionEvent::TransferFinished {
                job: &down,
                outcome: &TransferOutcome::Sent { bytes: 4096 },
                aborted: false,
                unix_now: st.now,
                duration: Duration::from_millis(30),
                data: dftpd_core::master::observe::DataFacts {
                    relayed: true,
                    ..Default::default()
                },
            },
            &st,
        );
        let up = job(true, Some(100));
        o.on(
            &SessionEvent::TransferFinished {
                job: &up,
                outcome: &TransferOutcome::Committed {
                    size: 150,
                    mtime: 0,
                    crc32: 0,
                },
                aborted: false,
                unix_now: st.now,
                duration: Duration::from_secs(2),
                data: dftpd_core::master::observe::DataFacts {
                    relayed: false,
                    ..Default::default()
                },
            },
            &st,
        );
        o.on(
            &SessionEvent::TransferFinished {
                job: &up,
                outcome: &TransferOutcome::SlaveLost,
                aborted: false,
                unix_now: st.now,
                duration: Duration::from_secs(1),
                data: dftpd_core::master::observe::DataFacts {
                    relayed: false,
                    ..Default::default()
                },
            },
            &st,
        );
        // A relayed download cut after 1000 bytes: the bytes the master
        // relayed, in the log and the relayed counter.
        o.on(
            &SessionEvent::TransferFinished {
                job: &down,
                outcome: &TransferOutcome::SlaveLost,
                aborted: false,
                unix_now: st.now,
                duration: Duration::from_secs(1),
                data: dftpd_core::master::observe::DataFacts {
                    relayed: true,
                    bytes: Some(1000),
                    ..Default::default()
                },
            },
            &st,
        );
        let t = metrics.encode();
        for want in [
            "dftpd_commands_total{verb=\"RETR\"} 1\n",
            "dftpd_commands_total{verb=\"PASS\"} 1\n",
            "dftpd_logins_total{outcome=\"ok\"} 1\n",
            "dftpd_logins_total{outcome=\"failed\"} 1\n",
            "dftpd_transfer_bytes_total{direction=\"download\",slave=\"slave-2\"} 4096\n",
            "dftpd_relayed_bytes_total{slave=\"slave-2\"} 5096\n",
            "dftpd_transfer_bytes_total{direction=\"upload\",slave=\"slave-2\"} 50\n",
            "dftpd_transfers_failed_total{direction=\"upload\",slave=\"slave-2\"} 1\n",
        ] {
            assert!(t.contains(want), "{want} missing in\n{t}");
        }
        let log = std::fs::read_to_string(&log_path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines,
            [
                "Thu Mar  4 08:12:30 2004 1 127.0.0.9 4096 /d/f.bin b _ o r bob ftp@slave-2 0 * c",
                "Thu Mar  4 08:12:30 2004 2 127.0.0.9 50 /d/f.bin b _ i r bob ftp@slave-2 0 * c",
                "Thu Mar  4 08:12:30 2004 1 127.0.0.9 0 /d/f.bin b _ i r bob ftp@slave-2 0 * i",
                "Thu Mar  4 08:12:30 2004 1 127.0.0.9 1000 /d/f.bin b _ o r bob ftp@slave-2 0 * i",
            ]
        );
    }
}

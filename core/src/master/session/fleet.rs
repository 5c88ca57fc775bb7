//! The admin SITE commands for slaves, with DrFTPD's names where it has
//! them: SLAVES, SLAVE <name> [DRAIN|UNDRAIN], ADDSLAVE, DELSLAVE,
//! KICKSLAVE, REMERGE. The decisions are in [`crate::master::fleet`];
//! dropping a live link is the driver's (`Action::DropLinks`).

use super::{r, Action, Session};
use crate::master::fleet::{self, FleetError};
use crate::master::registry::SlaveState;
use crate::master::MasterState;
use crate::proto::Reply;

/// The SITE verbs this module answers (all admin-only).
pub(super) const VERBS: &[&str] = &[
    "SLAVES",
    "SLAVE",
    "ADDSLAVE",
    "DELSLAVE",
    "KICKSLAVE",
    "REMERGE",
];

fn err(e: FleetError) -> Action {
    r(e.code(), e.to_string())
}

impl Session {
    pub(super) fn site_fleet(&mut self, verb: &str, args: &str, st: &mut MasterState) -> Action {
        let words: Vec<&str> = args.split_whitespace().collect();
        let admin = self.user().unwrap_or("-").to_string();
        match (verb, words.as_slice()) {
            ("SLAVES", []) => slaves(st),
            ("SLAVE", [name]) => match fleet::find(st, name) {
                Ok(id) => Action::Reply(Reply::multi(200, vec![line(st, id), "End".into()])),
                Err(e) => err(e),
            },
            ("SLAVE", [name, what]) => {
                let on = match what.to_ascii_uppercase().as_str() {
                    "DRAIN" => true,
                    "UNDRAIN" => false,
                    _ => return r(501, "Usage: SITE SLAVE <name> [DRAIN|UNDRAIN]"),
                };
                let id = match fleet::find_live(st, name) {
                    Ok(id) => id,
                    Err(e) => return err(e),
                };
                fleet::set_draining(st, id, on);
                tracing::info!(target: "dftpd::audit", user = %admin, slave = %name, draining = on, "slave drain set");
                let (done, total) = fleet::drain_progress(st, id);
                if on {
                    r(
                        200,
                        format!(
                            "{name} is draining: no new uploads; {done} of {total} files have their copies elsewhere (SITE SLAVE {name} shows progress)"
                        ),
                    )
                } else {
                    r(
                        200,
                        format!("{name} takes uploads again and its copies count"),
                    )
                }
            }
            ("ADDSLAVE", [name]) => match fleet::add(st, name) {
                Ok(_) => {
                    tracing::info!(target: "dftpd::audit", user = %admin, slave = %name, "slave added");
                    r(200, format!("Slave {name} added: it may connect now"))
                }
                Err(e) => err(e),
            },
            ("DELSLAVE", [name]) => {
                let id = match fleet::find_live(st, name) {
                    Ok(id) => id,
                    Err(e) => return err(e),
                };
                let done = fleet::remove(st, id);
                tracing::warn!(
                    target: "dftpd::audit",
                    user = %admin,
                    slave = %name,
                    files = done.files,
                    lost = done.lost,
                    ops_dropped = done.ops_dropped,
                    "slave removed"
                );
                let lost = if done.lost > 0 {
                    format!("; {} of them had no other copy and are gone", done.lost)
                } else {
                    String::new()
                };
                Action::DropLinks {
                    slaves: vec![id],
                    reason: "removed by an administrator (SITE DELSLAVE)",
                    reply: Reply::new(
                        200,
                        format!(
                            "Slave {name} removed: it held {} files{lost}; {} queued operations dropped; repair started",
                            done.files, done.ops_dropped
                        ),
                    ),
                }
            }
            ("KICKSLAVE" | "REMERGE", [name]) => {
                let id = match fleet::find_live(st, name) {
                    Ok(id) => id,
                    Err(e) => return err(e),
                };
                let connected = st
                    .slaves
                    .get(id)
                    .is_some_and(|s| s.state != SlaveState::Offline);
                if !connected {
                    return r(550, format!("{name} is not connected"));
                }
                tracing::info!(target: "dftpd::audit", user = %admin, slave = %name, verb, "slave link dropped");
                let (reason, text) = if verb == "KICKSLAVE" {
                    (
                        "kicked by an administrator (SITE KICKSLAVE)",
                        format!("{name} disconnected; it reconnects and remerges"),
                    )
                } else {
                    (
                        "remerge asked by an administrator (SITE REMERGE)",
                        format!(
                            "{name} reconnects and remerges; the files it holds are served meanwhile"
                        ),
                    )
                };
                Action::DropLinks {
                    slaves: vec![id],
                    reason,
                    reply: Reply::new(200, text),
                }
            }
            ("SLAVES", _) => r(501, "Usage: SITE SLAVES"),
            ("SLAVE", _) => r(501, "Usage: SITE SLAVE <name> [DRAIN|UNDRAIN]"),
            (v, _) => r(501, format!("Usage: SITE {v} <slave name>")),
        }
    }
}

/// SITE SLAVES: a summary, then one line per slave, sorted by name.
fn slaves(st: &MasterState) -> Action {
    let mut all: Vec<_> = st.slaves.iter().collect();
    all.sort_by(|a, b| a.1.name.cmp(&b.1.name));
    let rep = &st.replication;
    let mut lines = vec![format!(
        "{} slaves; repair queue {} files, {} copies running, {} copies made",
        all.len(),
        rep.queued(),
        rep.running.len(),
        rep.done
    )];
    lines.extend(all.iter().map(|(id, _)| line(st, *id)));
    lines.push("End".into());
    Action::Reply(Reply::multi(200, lines))
}

/// One slave: state (draining with its progress, removed), zone, free
/// space, files held, under-replicated files among them, copies it takes
/// part in, current rates, transfers and byte counters.
fn line(st: &MasterState, id: crate::master::db::SlaveId) -> String {
    let Some(s) = st.slaves.get(id) else {
        return String::new();
    };
    let state = if s.removed {
        "removed".to_string()
    } else if s.draining {
        let (done, total) = fleet::drain_progress(st, id);
        format!("{} draining={done}/{total}", s.state.as_str())
    } else {
        s.state.as_str().to_string()
    };
    let (under, jobs) = fleet::queue_figures(st, id);
    // Copies a failed rename left at their old names (see remerge): shown
    // only when there are some, the operator's cue to fix that disk.
    let left = match s.misplaced.len() {
        0 => String::new(),
        n => format!(" left-behind={n}"),
    };
    format!(
        "{} {state} zone={} free={} files={} under-replicated={under} copying={jobs} out={}B/s in={}B/s active={} planned={} sent={} received={} relayed={} copied-out={} copied-in={}",
        s.name,
        s.zone.as_deref().unwrap_or("-"),
        s.free,
        st.db.held_by(id),
        s.rate_out,
        s.rate_in,
        s.active,
        s.reserved,
        s.bytes_sent,
        s.bytes_received,
        s.relayed_bytes,
        s.copied_out,
        s.copied_in,
    ) + &left
}

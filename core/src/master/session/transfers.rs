//! File transfers: RETR, STOR, APPE, STOU become a [`TransferJob`] for the
//! driver (an upload with what it expects of its path, see `commit.rs`),
//! [`Session::decide_commit`] is the upload's commit decision, and
//! [`Session::transfer_done`] turns the outcome into the final reply.

use super::{db_reply, r, Action, DataSetup, Plan, PlanVerb, Route, Session, Target};
use super::{TransferJob, TransferOutcome};
use crate::link::{TransferFailure, TransferOrder, APPEND};
use crate::master::commit::{self, Expect, UploadTarget};
use crate::master::db::{DbError, Node, SlaveId};
use crate::master::users::Perm;
use crate::master::MasterState;
use crate::master::TransferInfo;
use crate::proto::{Reply, TransferType, VPath};

impl Session {
    pub(super) fn retr(&mut self, arg: &str, st: &mut MasterState) -> Action {
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        let plan = match self.check_plan(PlanVerb::Retr, Some(&path), st) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let meta = match st.db.file(&path) {
            Ok(f) => f.clone(),
            Err(e) => {
                self.clear_plan(st);
                return match e {
                    DbError::NotFound | DbError::IsADirectory => {
                        Action::ResetData(Reply::new(550, format!("{path}: {e}")))
                    }
                    _ => db_reply(e),
                };
            }
        };
        if self.rest > meta.size {
            let rest = self.rest;
            self.rest = 0;
            return r(
                554,
                format!(
                    "Send a smaller REST: {rest} is beyond the end of the file ({} bytes)",
                    meta.size
                ),
            );
        }
        let (slave, route, xfer) = match self.route(PlanVerb::Retr, plan, Some(&path), st) {
            Ok(x) => x,
            Err(a) => return a,
        };
        if !meta.holders.contains(&slave) {
            self.data = DataSetup::None;
            return Action::ResetData(Reply::new(
                550,
                format!("Send PRET again: the planned slave no longer holds {path}"),
            ));
        }
        let offset = std::mem::take(&mut self.rest);
        let name = st.slaves.name(slave).to_string();
        let mode = if self.ttype == TransferType::Ascii {
            "ASCII"
        } else {
            "BINARY"
        };
        let opening = Reply::new(
            150,
            format!(
                "Opening {mode} mode data connection for {path} ({} bytes) on slave {name}",
                meta.size
            ),
        );
        self.start_job(
            st,
            TransferJob {
                slave,
                slave_name: name,
                xfer,
                order: TransferOrder::Send {
                    path,
                    offset,
                    version: Some(commit::file_version(st, &meta)),
                    rate: None,
                    pending: None,
                },
                route,
                opening,
                upload: None,
            },
        )
    }

    pub(super) fn start_job(&mut self, st: &mut MasterState, job: TransferJob) -> Action {
        if let Some(refused) = self.tls_slave_check(st, &job) {
            return refused;
        }
        // The plan (if any) becomes a running transfer.
        let planned = matches!(
            self.plan.take(),
            Some(Plan {
                target: Target::Slave(_),
                ..
            })
        );
        st.slaves.start_transfer(job.slave, planned);
        let what = match &job.order {
            TransferOrder::Send { path, .. } => format!("RETR {path} on {}", job.slave_name),
            TransferOrder::Receive { path, .. } => format!("STOR {path} on {}", job.slave_name),
        };
        let info = TransferInfo {
            what,
            started: st.now,
            bytes: Default::default(),
            counted: job.route == Route::Relay,
        };
        self.update_info(st, Some(Some(info)));
        Action::Transfer(Box::new(job))
    }

    pub(super) fn stor(
        &mut self,
        verb: PlanVerb,
        arg: Option<&str>,
        st: &mut MasterState,
    ) -> Action {
        let mut path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => Some(p),
                Err(e) => return e,
            },
            None => None,
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        let check_path = if verb == PlanVerb::Stou {
            None
        } else {
            path.as_ref()
        };
        let plan = match self.check_plan(verb, check_path, st) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if verb == PlanVerb::Stou {
            // A unique name in the named directory (or the cwd).
            let dir = match &path {
                Some(p) if st.db.dir(p).is_ok() => p.clone(),
                Some(p) => p.parent().unwrap_or_else(VPath::root),
                None => self.cwd.clone(),
            };
            // A name a replay pinned, if free (see `master::pins`).
            let pinned = st
                .pins
                .take_stou(self.peer.ip())
                .and_then(|name| dir.join(&name).ok())
                .filter(|p| st.db.get(p).is_none());
            let mut n = self.id;
            let unique = loop {
                if let Some(p) = &pinned {
                    break p.clone();
                }
                let Ok(candidate) = dir.join(&format!("stou.{}.{n}", self.id)) else {
                    return r(553, "Cannot make a unique name here");
                };
                if st.db.get(&candidate).is_none() {
                    break candidate;
                }
                n += 1;
            };
            path = Some(unique);
        }
        let Some(path) = path else {
            return r(501, "Missing file name");
        };
        if plan.is_none() {
            // No PRET: the checks PRET would have made happen now.
            if let Err(a) = self.upload_slave(verb, Some(&path), false, st).map(|_| ()) {
                self.rest = 0;
                return a;
            }
        } else if verb != PlanVerb::Stou && st.db.file(&path).is_ok() {
            // PRET left the checks on an existing file to this command
            // (REST may come after it).
            if let Err(Action::Reply(refused)) = self.may_change(verb, &path, st) {
                self.clear_plan(st);
                self.rest = 0;
                return Action::ResetData(refused);
            }
        }
        let offset = match verb {
            PlanVerb::Appe => Some(APPEND),
            _ if self.rest > 0 => Some(self.rest),
            _ => None,
        };
        let (slave, route, xfer) = match self.route(verb, plan, Some(&path), st) {
            Ok(x) => x,
            Err(a) => return a,
        };
        if offset.is_some() {
            if let Ok(f) = st.db.file(&path) {
                if !f.holders.contains(&slave) {
                    self.rest = 0;
                    return Action::ResetData(Reply::new(
                        550,
                        format!("Send PRET again: a resume must go to a slave holding {path}"),
                    ));
                }
            }
        }
        self.rest = 0;
        // What the commit will compare the path with (compare-and-swap):
        // the version this upload builds on, or that it creates the file.
        let current = match st.db.get(&path) {
            Some(Node::File(f)) => Some(f.version),
            _ => None,
        };
        // APPE and REST+STOR build on the version the master records, and
        // only on it: a slave whose copy is not that one yet (its commit
        // entry still on the way) refuses rather than append to another.
        let base = match (offset, st.db.get(&path)) {
            (Some(_), Some(Node::File(f))) => Some(commit::file_version(st, f)),
            _ => None,
        };
        let expect = match (verb, offset, current) {
            (PlanVerb::Stou, ..) => Expect::Absent,
            (_, Some(_), Some(v)) => Expect::Version(v),
            (_, Some(_), None) => Expect::Absent,
            // A file that appears meanwhile is replaced only by a user
            // who may overwrite it.
            (_, None, _)
                if st.config.allow_overwrite && self.permit(st, Perm::Overwrite, &path).is_ok() =>
            {
                Expect::Any
            }
            (_, None, _) => Expect::Absent,
        };
        let name = st.slaves.name(slave).to_string();
        let opening = if verb == PlanVerb::Stou {
            // RFC 1123 §4.1.2.9: the reply names the file.
            Reply::new(150, format!("FILE: {}", path.file_name().unwrap_or("")))
        } else {
            Reply::new(
                150,
                format!("Opening BINARY mode data connection for {path} on slave {name}"),
            )
        };
        self.start_job(
            st,
            TransferJob {
                slave,
                slave_name: name,
                xfer,
                order: TransferOrder::Receive {
                    path: path.clone(),
                    offset,
                    base,
                },
                route,
                opening,
                upload: Some(UploadTarget {
                    sync: crate::master::replica::rule(st, &path).1.saturating_sub(1),
                    path,
                    expect,
                }),
            },
        )
    }

    /// The upload's bytes are on the slave and the client is still there:
    /// the commit decision (`commit::decide`, a compare-and-swap on the
    /// path's version). Returns the slave's log entry to wait for, or the
    /// final reply for an upload that lost a race.
    pub fn decide_commit(
        &mut self,
        st: &mut MasterState,
        job: &TransferJob,
        size: u64,
        crc32: u32,
        copies: &[(SlaveId, u64)],
    ) -> Result<Vec<(SlaveId, u64)>, Reply> {
        let Some(target) = &job.upload else {
            return Err(Reply::new(451, "Local error: not an upload"));
        };
        let owner = self.owner();
        let mut all = vec![(job.slave, job.xfer)];
        all.extend_from_slice(copies);
        commit::decide(st, &all, target, size, crc32, &owner)
    }

    /// The driver finished a slave transfer (successfully or not).
    /// `relayed`: the master carried the bytes (the relay route, or a
    /// client caught at the master's address and relayed there).
    pub fn transfer_done(
        &mut self,
        st: &mut MasterState,
        job: &TransferJob,
        outcome: TransferOutcome,
        relayed: bool,
    ) -> Reply {
        self.update_info(st, Some(None));
        let (mut sent, mut received) = (0, 0);
        let reply = match outcome {
            TransferOutcome::Sent { bytes } => {
                sent = bytes;
                Reply::new(
                    226,
                    format!("Transfer complete, {bytes} bytes from {}", job.slave_name),
                )
            }
            TransferOutcome::Committed { size, .. } => {
                // Recorded at the commit decision; here the accounting.
                if let Some(name) = self.user().map(str::to_string) {
                    let counted = st.users.get_mut(&name).is_some_and(|u| {
                        u.uploaded = u.uploaded.saturating_add(size);
                        u.upload_quota.is_some()
                    });
                    // Only quota users' counters are worth a write.
                    if counted {
                        st.user_changed(&name);
                    }
                }
                received = size;
                // With synchronous copies: every slave that holds it now.
                let mut on = job.slave_name.clone();
                if job.upload.as_ref().is_some_and(|u| u.sync > 0) {
                    if let Some(f) = job.upload.as_ref().and_then(|u| st.db.file(&u.path).ok()) {
                        for h in f.holders.iter().filter(|&&h| h != job.slave) {
                            on.push_str(" and ");
                            on.push_str(st.slaves.name(*h));
                        }
                    }
                }
                Reply::new(226, format!("Transfer complete, {size} bytes stored on {on}"))
            }
            TransferOutcome::Refused(reply) => reply,
            TransferOutcome::Unknown => {
                let path = job.upload.as_ref().map(|u| u.path.to_string()).unwrap_or_default();
                Reply::new(
                    451,
                    format!(
                        "{path}: upload outcome unknown: slave {} was lost while committing it; it is listed (check SIZE) only if it was stored",
                        job.slave_name
                    ),
                )
            }
            TransferOutcome::Failed(f) => failure_reply(&f, &job.slave_name),
            // The fix first and short (see README, "Clients" for each
            // client's setting); the recording and the log say more.
            TransferOutcome::IgnoredPasvAddress { announced, used } => Reply::new(
                425,
                format!(
                    "Connect to the 227 address {announced} (curl --no-ftp-skip-pasv-ip) or use PORT, not {}",
                    used.ip()
                ),
            ),
            TransferOutcome::SlaveLost => Reply::new(
                426,
                format!(
                    "Connection closed; transfer aborted: slave {} went offline",
                    job.slave_name
                ),
            ),
        };
        st.slaves
            .finish_transfer(job.slave, sent, received, relayed);
        reply
    }
}

/// The reply for a failed slave transfer.
pub fn failure_reply(f: &TransferFailure, slave: &str) -> Reply {
    match f {
        TransferFailure::NoDataConnection(why) => Reply::new(
            425,
            format!("Can't open data connection on slave {slave}: {why}"),
        ),
        TransferFailure::FileNotFound => {
            Reply::new(550, format!("File not found on slave {slave}"))
        }
        TransferFailure::Storage(why) => {
            Reply::new(451, format!("Local error on slave {slave}: {why}"))
        }
        TransferFailure::Network(why) => {
            Reply::new(426, format!("Connection closed; transfer aborted: {why}"))
        }
        TransferFailure::Aborted => Reply::new(426, "Connection closed; transfer aborted"),
        TransferFailure::NotCurrent => Reply::new(
            450,
            format!("The copy on slave {slave} is not the current version (it is being replaced); try again"),
        ),
    }
}

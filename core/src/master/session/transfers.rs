//! File transfers: RETR, STOR, APPE, STOU become a [`TransferJob`] for the
//! driver, and [`Session::transfer_done`] turns the outcome into the final
//! reply and the recorded file (two-phase uploads: the master records an
//! upload only once the slave has committed it).

use super::{db_reply, r, Action, DataSetup, Plan, PlanVerb, Route, Session, Target};
use super::{TransferJob, TransferOutcome};
use crate::link::{FileOp, TransferFailure, TransferOrder, APPEND};
use crate::master::db::{DbError, FileMeta, Holders};
use crate::master::MasterState;
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
                    "Restart offset {rest} is beyond the end of the file ({})",
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
                format!("{path}: the planned slave no longer holds the file; send PRET again"),
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
                order: TransferOrder::Send { path, offset },
                route,
                opening,
                upload_path: None,
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
        let doing = match &job.order {
            TransferOrder::Send { path, .. } => format!("RETR {path} on {}", job.slave_name),
            TransferOrder::Receive { path, .. } => format!("STOR {path} on {}", job.slave_name),
        };
        self.set_doing(st, Some(doing));
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
            if let Err(a) = self.upload_slave(verb, Some(&path), st).map(|_| ()) {
                return a;
            }
        } else if verb == PlanVerb::Stor && !st.config.allow_overwrite && st.db.get(&path).is_some()
        {
            self.clear_plan(st);
            return Action::ResetData(Reply::new(
                553,
                format!("{path}: file exists and overwriting is not allowed"),
            ));
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
                        format!(
                            "{path}: resume must go to a slave holding the file; send PRET again"
                        ),
                    ));
                }
            }
        }
        self.rest = 0;
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
                },
                route,
                opening,
                upload_path: Some(path),
            },
        )
    }

    /// The driver finished a slave transfer (successfully or not).
    pub fn transfer_done(
        &mut self,
        st: &mut MasterState,
        job: &TransferJob,
        outcome: TransferOutcome,
    ) -> Reply {
        self.set_doing(st, None);
        let (mut sent, mut received) = (0, 0);
        let reply = match outcome {
            TransferOutcome::Sent { bytes } => {
                sent = bytes;
                Reply::new(
                    226,
                    format!("Transfer complete, {bytes} bytes from {}", job.slave_name),
                )
            }
            TransferOutcome::Committed { size, mtime, crc32 } => {
                let Some(path) = job.upload_path.clone() else {
                    st.slaves.finish_transfer(job.slave, 0, 0, false);
                    return Reply::new(226, "Transfer complete");
                };
                let owner = self.owner();
                if let Some(parent) = path.parent() {
                    // The directory may have been removed during the upload.
                    let _ = st.db.mkdir_all(&parent, &owner, mtime);
                }
                let owner = st.db.intern(&owner);
                let meta = FileMeta {
                    size,
                    mtime,
                    owner,
                    group: owner,
                    crc32: Some(crc32),
                    holders: Holders::from_slice(&[job.slave]),
                };
                match st.db.put_file(&path, meta) {
                    Ok(old) => {
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
                        // Other copies of an overwritten file are stale.
                        for h in old.map(|o| o.holders).unwrap_or_default() {
                            if h != job.slave {
                                st.slaves.apply_op(h, FileOp::Delete { path: path.clone() });
                            }
                        }
                        received = size;
                        Reply::new(
                            226,
                            format!(
                                "Transfer complete, {size} bytes stored on {}",
                                job.slave_name
                            ),
                        )
                    }
                    Err(e) => {
                        // A directory appeared at that name meanwhile.
                        st.slaves
                            .apply_op(job.slave, FileOp::Delete { path: path.clone() });
                        Reply::new(550, format!("{path}: {e}"))
                    }
                }
            }
            TransferOutcome::Failed(f) => failure_reply(&f, &job.slave_name),
            TransferOutcome::IgnoredPasvAddress { announced, used } => Reply::new(
                425,
                format!(
                    "Can't open data connection: your client connected to {used} instead of {announced} (slave {}) from the 227 reply. Make it use that address: curl --no-ftp-skip-pasv-ip; Python ftplib: ftp.trust_server_pasv_ipv4_address = True; or use active mode (PORT)",
                    job.slave_name
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
            .finish_transfer(job.slave, sent, received, job.route == Route::Relay);
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
    }
}

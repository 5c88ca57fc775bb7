//! The namespace: CWD/CDUP, MKD, RMD, DELE, RNFR/RNTO, and the file facts
//! SIZE, MDTM, MFMT, XCRC and HASH (RFC 959 §4.1.1, §4.1.3; RFC 3659 SIZE
//! and MDTM). Every path goes through [`Session::resolve`] (home
//! confinement, reserved names) and every change through the permission
//! rules; changes that slaves must apply to their disks are appended to
//! their operation logs (`registry::log_op`), never sent from here.
//!
//! Every change made (never a refused one) is logged at INFO under the
//! target `dftpd::audit` with the user, the client's address and the paths
//! (`DFTPD_LOG=dftpd::audit=info` selects them; one JSON object each with
//! `--log-format json`).

use super::{db_reply, path_reply, r, Action, Session};
use crate::link::FileOp;
use crate::master::db::{DbError, FileMeta, SlaveId};
use crate::master::users::Perm;
use crate::master::{commit, replica, MasterState};
use crate::proto::listing;
use crate::proto::reply::quote_path;
use crate::proto::VPath;

/// A change to the file tree, for the audit log.
#[derive(Debug, Clone, Copy)]
enum Change<'a> {
    Mkdir(&'a VPath),
    Rmdir(&'a VPath),
    Delete(&'a VPath),
    Rename(&'a VPath, &'a VPath),
}

impl Session {
    /// Logs a namespace change at INFO (target `dftpd::audit`).
    fn audit(&self, change: Change<'_>) {
        let user = self.user().unwrap_or("-");
        let peer = self.peer.ip();
        match change {
            Change::Rename(from, to) => tracing::info!(
                target: "dftpd::audit",
                user,
                %peer,
                verb = "RNTO",
                from = %from,
                to = %to,
                "renamed {from} to {to}"
            ),
            Change::Mkdir(path) | Change::Rmdir(path) | Change::Delete(path) => {
                let (verb, what) = match change {
                    Change::Mkdir(_) => ("MKD", "directory made"),
                    Change::Rmdir(_) => ("RMD", "directory removed"),
                    _ => ("DELE", "deleted"),
                };
                tracing::info!(target: "dftpd::audit", user, %peer, verb, path = %path, "{what} {path}")
            }
        }
    }

    pub(super) fn cwd(&mut self, arg: &str, st: &mut MasterState) -> Action {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if let Err(a) = self.permit(st, Perm::List, &p) {
            return a;
        }
        match st.db.dir(&p) {
            Ok(_) => {
                self.cwd = p;
                r(250, format!("Directory changed to {}", self.cwd))
            }
            Err(e) => path_reply(&p, e),
        }
    }

    pub(super) fn mkd(&mut self, arg: &str, st: &mut MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) => {
                if let Err(a) = self.permit(st, Perm::Mkdir, &p) {
                    return a;
                }
                let now = st.now;
                match st.db.mkdir(&p, &self.owner(), now) {
                    Ok(()) => {
                        self.audit(Change::Mkdir(&p));
                        r(257, format!("{} created", quote_path(p.as_str())))
                    }
                    // 550 as vsftpd: sync tools (rclone) read it as "exists".
                    Err(DbError::Exists) => r(550, format!("{p}: {}", DbError::Exists)),
                    Err(e) => path_reply(&p, e),
                }
            }
            Err(a) => a,
        }
    }

    pub(super) fn rmd(&mut self, arg: &str, st: &mut MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) if p == self.cwd && !p.is_root() => r(550, "Cannot remove the current directory"),
            Ok(p) if self.permit(st, Perm::Rmdir, &p).is_err() => {
                self.permit(st, Perm::Rmdir, &p).unwrap_err()
            }
            Ok(p) => match st.db.rmdir(&p) {
                Ok(()) => {
                    // Directories exist on slaves only as parents of files;
                    // an empty one left on a slave that is away is harmless.
                    let ids: Vec<SlaveId> = st
                        .slaves
                        .iter()
                        .filter(|(_, s)| s.is_online())
                        .map(|(i, _)| i)
                        .collect();
                    for id in ids {
                        st.slaves.log_op(id, FileOp::RemoveDir { path: p.clone() });
                    }
                    st.slaves.touch(&p);
                    self.audit(Change::Rmdir(&p));
                    r(250, format!("{} removed", quote_path(p.as_str())))
                }
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }

    pub(super) fn dele(&mut self, arg: &str, st: &mut MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) if self.permit(st, Perm::Delete, &p).is_err() => {
                self.permit(st, Perm::Delete, &p).unwrap_err()
            }
            Ok(p) => match st.db.remove_file(&p) {
                Ok(meta) => {
                    for h in meta.holders {
                        st.slaves.log_op(h, FileOp::Delete { path: p.clone() });
                    }
                    st.slaves.touch(&p);
                    replica::note(st, &p);
                    self.audit(Change::Delete(&p));
                    r(250, format!("{} deleted", quote_path(p.as_str())))
                }
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }

    pub(super) fn rnfr(&mut self, arg: &str, st: &mut MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) if self.permit(st, Perm::Rename, &p).is_err() => {
                self.rnfr = None;
                self.permit(st, Perm::Rename, &p).unwrap_err()
            }
            Ok(p) if st.db.get(&p).is_some() => {
                self.rnfr = Some(p);
                r(350, "File exists, ready for destination name")
            }
            Ok(_) => {
                self.rnfr = None;
                r(550, "No such file or directory")
            }
            Err(a) => a,
        }
    }

    pub(super) fn rnto(&mut self, arg: &str, st: &mut MasterState) -> Action {
        let Some(from) = self.rnfr.take() else {
            return r(503, "Send RNFR first");
        };
        let to = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if let Err(a) = self.permit(st, Perm::Rename, &to) {
            return a;
        }
        let holders = st.db.holders_under(&from);
        let now = st.now;
        match st.db.rename(&from, &to, now) {
            Ok(()) => {
                self.audit(Change::Rename(&from, &to));
                for h in holders {
                    st.slaves.log_op(
                        h,
                        FileOp::Rename {
                            from: from.clone(),
                            to: to.clone(),
                        },
                    );
                }
                st.slaves.touch(&from);
                st.slaves.touch(&to);
                commit::renamed(st, &from, &to);
                replica::renamed(st, &from, &to);
                if self.cwd.starts_with(&from) {
                    // Keep the session inside the directory it was in.
                    if let Some(rest) = self.cwd.strip_prefix(&from) {
                        let mut p = to.clone();
                        for c in rest {
                            if let Ok(q) = p.join(c) {
                                p = q;
                            }
                        }
                        self.cwd = p;
                    }
                }
                r(250, "Rename successful")
            }
            Err(e) => db_reply(e),
        }
    }

    pub(super) fn size(&self, arg: &str, st: &MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) => match st.db.file(&p) {
                Ok(f) => r(213, f.size.to_string()),
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }

    pub(super) fn mdtm(&self, arg: &str, st: &MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) => match st.db.file(&p) {
                Ok(f) => r(213, listing::mdtm(f.mtime)),
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }

    pub(super) fn mfmt(&mut self, time: &str, path: &str, st: &mut MasterState) -> Action {
        let Some(t) = listing::parse_mdtm(time) else {
            return r(501, "Invalid time, use YYYYMMDDHHMMSS");
        };
        match self.resolve(path) {
            Ok(p) if self.permit(st, Perm::Overwrite, &p).is_err() => {
                self.permit(st, Perm::Overwrite, &p).unwrap_err()
            }
            Ok(p) => match st.db.set_mtime(&p, t) {
                Ok(()) => r(213, format!("Modify={time}; {path}")),
                Err(e) => db_reply(e),
            },
            Err(a) => a,
        }
    }

    /// XCRC (250 with the CRC) and HASH (213, RFC draft-bryan-ftpext-hash)
    /// of the CRC-32 recorded at upload.
    pub(super) fn checksum(&self, arg: &str, hash: bool, st: &MasterState) -> Action {
        match self.resolve(arg) {
            Ok(p) => match st.db.file(&p) {
                Ok(FileMeta {
                    crc32: Some(c),
                    size,
                    ..
                }) if hash => r(213, format!("CRC32 0-{size} {c:08x} {p}")),
                Ok(FileMeta { crc32: Some(c), .. }) => r(250, format!("XCRC Successful. {c:08X}")),
                Ok(_) => r(
                    550,
                    format!(
                        "{p}: no checksum recorded (the file was found on a slave's disk, \
                         not uploaded through dftpd)"
                    ),
                ),
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }
}

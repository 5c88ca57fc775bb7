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
use crate::master::db::{DbError, FileMeta, Node, SlaveId};
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
        if to == from {
            // rename(2) onto the same name: nothing to do.
            return match st.db.get(&from) {
                Some(_) => r(250, "Rename successful (same name, nothing changed)"),
                None => path_reply(&from, DbError::NotFound),
            };
        }
        // A file renamed onto an existing file replaces it, as rename(2)
        // does (safe uploaders write a temporary name, then rename it over
        // the target), where overwriting is allowed.
        let replaced = match (st.db.get(&from), st.db.get(&to)) {
            _ if to.starts_with(&from) => None,
            (Some(Node::File(_)), Some(Node::File(old))) => {
                let old = old.clone();
                if let Err(a) = self.may_overwrite(&to, st) {
                    return a;
                }
                Some(old)
            }
            (Some(_), Some(Node::Dir(_))) => {
                return r(
                    553,
                    format!("{to}: a directory is there; a rename never replaces a directory"),
                )
            }
            (Some(Node::Dir(_)), Some(Node::File(_))) => {
                return r(
                    553,
                    format!("{to}: a file is there; a directory cannot replace a file"),
                )
            }
            _ => None,
        };
        let holders = st.db.holders_under(&from);
        let now = st.now;
        if replaced.is_some() {
            let _ = st.db.remove_file(&to);
        }
        match st.db.rename(&from, &to, now) {
            Ok(()) => {
                self.audit(Change::Rename(&from, &to));
                if let Some(old) = &replaced {
                    // The holders of the replaced file that do not get the
                    // source drop that copy (only that version: a later
                    // one is never touched); the others' rename replaces it.
                    let version = commit::file_version(st, old);
                    for &h in old.holders.iter().filter(|h| !holders.contains(h)) {
                        st.slaves.log_op(
                            h,
                            FileOp::DropStale {
                                path: to.clone(),
                                version: Some(version),
                                size: old.size,
                            },
                        );
                    }
                }
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
            Err(e) => {
                if let Some(old) = replaced {
                    // Nothing changed after all: the target stays.
                    let _ = st.db.put_file(&to, old);
                }
                db_reply(e)
            }
        }
    }

    pub(super) fn size(&self, arg: &str, st: &MasterState) -> Action {
        match self.resolve(arg) {
            // What LIST shows: its `list` right.
            Ok(p) if !self.may(st, Perm::List, &p) => self.permit(st, Perm::List, &p).unwrap_err(),
            Ok(p) => match st.db.file(&p) {
                Ok(f) => r(213, f.size.to_string()),
                Err(e) => path_reply(&p, e),
            },
            Err(a) => a,
        }
    }

    pub(super) fn mdtm(&self, arg: &str, st: &MasterState) -> Action {
        match self.resolve(arg) {
            // What LIST shows: its `list` right.
            Ok(p) if !self.may(st, Perm::List, &p) => self.permit(st, Perm::List, &p).unwrap_err(),
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
            // Derived from the content: the `download` right.
            Ok(p) if !self.may(st, Perm::Download, &p) => {
                self.permit(st, Perm::Download, &p).unwrap_err()
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MasterConfig, UserConfig};
    use crate::master::db::Holders;
    use crate::master::registry::SlaveState;
    use crate::master::users;
    use crate::proto::Command;
    use std::sync::Arc;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    /// Slaves s1 (0), s2 (1), s3 (2), online; /src v10 on s1+s2, /dst v20
    /// on s2+s3, directory /d.
    fn fixture(allow_overwrite: bool) -> (MasterState, Session) {
        let cfg = MasterConfig {
            users: vec![UserConfig {
                name: "u".into(),
                password: "p".into(),
                home: "/".into(),
                ..Default::default()
            }],
            allow_overwrite,
            password_cost: users::PasswordCost::FAST,
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(Arc::new(cfg));
        for name in ["s1", "s2", "s3"] {
            let id = st.slaves.id_for(name);
            st.slaves.get_mut(id).unwrap().state = SlaveState::Online;
        }
        let meta = |version, size, holders: &[SlaveId]| FileMeta {
            version,
            size,
            mtime: 0,
            owner: 0,
            group: 0,
            crc32: Some(7),
            holders: Holders::from_slice(holders),
        };
        st.db.put_file(&p("/src"), meta(10, 3, &[0, 1])).unwrap();
        st.db.put_file(&p("/dst"), meta(20, 5, &[1, 2])).unwrap();
        st.db.mkdir(&p("/d"), "u", 0).unwrap();
        let s = super::super::test_login(&mut st);
        (st, s)
    }

    fn run(s: &mut Session, st: &mut MasterState, line: &str) -> String {
        match s.handle(Command::parse(line).unwrap(), st) {
            Action::Reply(r) => r.to_string(),
            other => format!("{other:?}"),
        }
    }

    fn rename(s: &mut Session, st: &mut MasterState, from: &str, to: &str) -> String {
        let a = run(s, st, &format!("RNFR {from}"));
        assert!(a.starts_with("350"), "{a}");
        run(s, st, &format!("RNTO {to}"))
    }

    #[test]
    fn rnto_onto_a_file_replaces_it_atomically_where_overwriting_is_allowed() {
        let (mut st, mut s) = fixture(true);
        let reply = rename(&mut s, &mut st, "/src", "/dst");
        assert!(reply.starts_with("250"), "{reply}");
        assert!(st.db.get(&p("/src")).is_none());
        // The target takes the source's record: version, size, holders.
        let f = st.db.file(&p("/dst")).unwrap();
        assert_eq!((f.version, f.size), (10, 3));
        assert_eq!(f.holders.as_slice(), &[0, 1]);
        let rename_op = FileOp::Rename {
            from: p("/src"),
            to: p("/dst"),
        };
        // Source holders rename (rename(2) replaces the old copy on s2).
        let ops = |st: &MasterState, i| -> Vec<FileOp> {
            st.slaves
                .get(i)
                .unwrap()
                .log
                .iter()
                .map(|(_, o)| o.clone())
                .collect()
        };
        assert_eq!(ops(&st, 0), vec![rename_op.clone()]);
        assert_eq!(ops(&st, 1), vec![rename_op]);
        // s3 held only the replaced file: it drops exactly that version.
        let log = &st.slaves.get(2).unwrap().log;
        assert_eq!(log.len(), 1);
        match &log[0].1 {
            FileOp::DropStale {
                path,
                version: Some(v),
                size: 5,
            } => assert_eq!((path, v.gen), (&p("/dst"), 20)),
            other => panic!("{other:?}"),
        }
        // The replaced version is not resurrected by a slave that reports
        // it: it is an older version of /dst.
        assert_eq!(st.db.files_under(&VPath::root()).len(), 1);
    }

    #[test]
    fn rnto_refuses_directories_and_overwriting_off_and_same_name_is_a_no_op() {
        let (mut st, mut s) = fixture(true);
        let reply = rename(&mut s, &mut st, "/src", "/d");
        assert!(
            reply.starts_with("553") && reply.contains("directory"),
            "{reply}"
        );
        let reply = rename(&mut s, &mut st, "/d", "/dst");
        assert!(
            reply.starts_with("553") && reply.contains("directory"),
            "{reply}"
        );
        let reply = rename(&mut s, &mut st, "/src", "/src");
        assert!(reply.starts_with("250"), "{reply}");
        let reply = rename(&mut s, &mut st, "/d", "/d");
        assert!(reply.starts_with("250"), "{reply}");
        assert_eq!(st.db.file(&p("/dst")).unwrap().version, 20);
        assert_eq!(st.db.file(&p("/src")).unwrap().version, 10);
        assert!((0..3).all(|i| st.slaves.get(i).unwrap().log.is_empty()));

        let (mut st, mut s) = fixture(false);
        let reply = rename(&mut s, &mut st, "/src", "/dst");
        assert!(
            reply.starts_with("553") && reply.contains("overwriting is off"),
            "{reply}"
        );
        assert_eq!(st.db.file(&p("/dst")).unwrap().version, 20);
        assert_eq!(st.db.file(&p("/src")).unwrap().version, 10);
        assert!((0..3).all(|i| st.slaves.get(i).unwrap().log.is_empty()));
    }
}

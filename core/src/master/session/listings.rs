//! Listings, all served by the master from its database: LIST, NLST, MLSD
//! (data connection), MLST and STAT with a path (control connection); RFC
//! 959 §4.1.3, RFC 3659 §7.

use super::{db_reply, r, Action, DataSetup, ListingJob, PlanVerb, Session, Target};
use crate::master::db::{DbError, FileDb, Node};
use crate::master::users::Perm;
use crate::master::MasterState;
use crate::proto::listing::{self, ListEntry};
use crate::proto::{ListArgs, Reply, VPath};

impl Session {
    /// STAT with a path: its listing on the control connection.
    pub(super) fn stat_path(&self, arg: &str, st: &MasterState) -> Action {
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        match self.entries(st, &path) {
            Ok(entries) => {
                let now = st.now;
                let mut lines = vec![format!("Status of {path}:")];
                lines.extend(entries.iter().map(|e| listing::list_line(e, now)));
                lines.push("End of status".into());
                Action::Reply(Reply::multi(213, lines))
            }
            Err(e) => db_reply(e),
        }
    }

    pub(super) fn listing(
        &mut self,
        verb: PlanVerb,
        args: ListArgs,
        st: &mut MasterState,
    ) -> Action {
        let path = match args.path.as_deref() {
            Some(a) => match self.resolve(a) {
                Ok(p) => p,
                Err(e) => return e,
            },
            None => self.cwd.clone(),
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        if let Err(a) = self.check_plan(verb, Some(&path), st) {
            return a;
        }
        self.clear_plan(st);
        if let Err(a) = self.permit(st, Perm::List, &path) {
            return match a {
                Action::Reply(r) => Action::ResetData(r),
                other => other,
            };
        }
        let active = match &self.data {
            DataSetup::Active(a) => Some(*a),
            DataSetup::Passive {
                target: Target::Master,
                ..
            } => None,
            DataSetup::Passive { .. } => {
                self.data = DataSetup::None;
                return Action::ResetData(Reply::new(
                    503,
                    "Listings are served by the master: send PRET LIST, then PASV",
                ));
            }
            DataSetup::None => return self.no_data(),
        };
        let entries = match self.entries(st, &path) {
            Ok(e) => e,
            Err(e) => return Action::ResetData(Reply::new(e.code(), format!("{path}: {e}"))),
        };
        if verb == PlanVerb::Mlsd && st.db.dir(&path).is_err() {
            return Action::ResetData(Reply::new(501, format!("{path}: not a directory")));
        }
        let now = st.now;
        let mut out = String::new();
        for e in &entries {
            match verb {
                PlanVerb::List => out.push_str(&listing::list_line(e, now)),
                PlanVerb::Mlsd => out.push_str(&listing::mlsx_facts(e)),
                _ => match args.path.as_deref() {
                    Some(a) if st.db.dir(&path).is_ok() => {
                        out.push_str(a.trim_end_matches('/'));
                        out.push('/');
                        out.push_str(&e.name);
                    }
                    _ => out.push_str(&e.name),
                },
            }
            out.push_str("\r\n");
        }
        self.data = DataSetup::None;
        Action::Listing(Box::new(ListingJob {
            bytes: out.into_bytes(),
            opening: Reply::new(
                150,
                format!(
                    "Opening ASCII mode data connection for {} of {path}",
                    verb.as_str()
                ),
            ),
            active,
        }))
    }

    /// Entries of a directory, or the one entry of a file.
    pub(super) fn entries(
        &self,
        st: &MasterState,
        path: &VPath,
    ) -> Result<Vec<ListEntry>, DbError> {
        if let Ok(dir) = st.db.dir(path) {
            return Ok(dir
                .children
                .iter()
                .map(|(name, n)| entry(&st.db, name, n))
                .collect());
        }
        match st.db.get(path) {
            Some(n @ Node::File(_)) => Ok(vec![entry(&st.db, path.file_name().unwrap_or(""), n)]),
            _ => Err(DbError::NotFound),
        }
    }

    pub(super) fn mlst(&mut self, arg: Option<&str>, st: &mut MasterState) -> Action {
        let path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => p,
                Err(e) => return e,
            },
            None => self.cwd.clone(),
        };
        let e = if path.is_root() {
            let d = st.db.root();
            ListEntry {
                name: "/".into(),
                is_dir: true,
                size: 0,
                mtime: d.mtime,
                owner: "root".into(),
                group: "root".into(),
            }
        } else {
            match st.db.get(&path) {
                Some(n) => {
                    let mut e = entry(&st.db, path.as_str(), n);
                    e.name = path.to_string();
                    e
                }
                None => return r(550, format!("{path}: No such file or directory")),
            }
        };
        Action::Reply(Reply::multi(
            250,
            vec![
                format!("Listing {path}"),
                format!(" {}", listing::mlsx_facts(&e)),
                "End".into(),
            ],
        ))
    }
}

fn entry(db: &FileDb, name: &str, n: &Node) -> ListEntry {
    match n {
        Node::File(f) => ListEntry {
            name: name.to_string(),
            is_dir: false,
            size: f.size,
            mtime: f.mtime,
            owner: db.name(f.owner).to_string(),
            group: db.name(f.group).to_string(),
        },
        Node::Dir(d) => ListEntry {
            name: name.to_string(),
            is_dir: true,
            size: 0,
            mtime: d.mtime,
            owner: db.name(d.owner).to_string(),
            group: db.name(d.group).to_string(),
        },
    }
}

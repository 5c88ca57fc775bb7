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
        // LIST and NLST expand `*`, `?` and `[...]` in the last component
        // (as vsftpd does; MLSD takes exact paths, RFC 3659): a path that
        // exists as named is listed as such.
        let pattern = match verb {
            PlanVerb::List | PlanVerb::Nlst if st.db.get(&path).is_none() => glob_parts(&path),
            _ => None,
        };
        let entries = match &pattern {
            Some((dir, pat)) => matching_entries(st, dir, pat),
            None => self.entries(st, &path),
        };
        let entries = match entries {
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
                PlanVerb::Mlsd => out.push_str(&self.select_facts(&listing::mlsx_facts(e))),
                _ => match args.path.as_deref() {
                    // Names as the pattern was given: `/g/*.txt` -> `/g/a.txt`.
                    Some(a) if pattern.is_some() => {
                        out.push_str(a.rfind('/').map_or("", |i| &a[..=i]));
                        out.push_str(&e.name);
                    }
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
                format!(" {}", self.select_facts(&listing::mlsx_facts(&e))),
                "End".into(),
            ],
        ))
    }
}

/// The directory and the pattern of a path whose last component has a
/// wildcard (`*`, `?`, `[`).
fn glob_parts(path: &VPath) -> Option<(VPath, String)> {
    let name = path.file_name()?;
    if !name.contains(['*', '?', '[']) {
        return None;
    }
    Some((path.parent()?, name.to_string()))
}

/// The entries of directory `dir` whose names match `pattern`, in name
/// order; none is an empty listing (vsftpd's 226), a missing directory 550.
fn matching_entries(
    st: &MasterState,
    dir: &VPath,
    pattern: &str,
) -> Result<Vec<ListEntry>, DbError> {
    let d = st.db.dir(dir).map_err(|_| DbError::NotFound)?;
    let mut out: Vec<ListEntry> = d
        .children
        .iter()
        .filter(|(name, _)| glob_match(pattern, name))
        .map(|(name, n)| entry(&st.db, name, n))
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Shell-style matching of one name: `*` any run, `?` one character,
/// `[abc]`, `[a-z]`, `[!x]`/`[^x]` one of (or none of) a set; an
/// unterminated `[` is literal. A leading `.` is matched only literally,
/// as in a shell, so `*` leaves dotfiles (temporary uploads) out.
pub(super) fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    if n.first() == Some(&'.') && p.first() != Some(&'.') {
        return false;
    }
    // Iterative matching with one backtrack point (the last `*`).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        let step = match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
                continue;
            }
            Some('?') => Some(pi + 1),
            Some('[') => match class(&p[pi..], n[ni]) {
                Some((true, len)) => Some(pi + len),
                Some((false, _)) => None,
                None if n[ni] == '[' => Some(pi + 1),
                None => None,
            },
            Some(&c) if c == n[ni] => Some(pi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                pi = next;
                ni += 1;
            }
            (None, Some((sp, sn))) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// A `[...]` class at the start of `p`: whether `c` is in it and the
/// class's length; `None` when the `[` is not closed.
fn class(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!') | Some('^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let lo = *p.get(i)?;
        if lo == ']' && !first {
            return Some((hit != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|&hi| hi != ']') {
            let hi = p[i + 2];
            hit |= lo <= c && c <= hi;
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MasterConfig, UserConfig};
    use crate::master::db::{FileMeta, Holders};
    use crate::master::users;
    use crate::proto::Command;
    use std::sync::Arc;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    /// /g holds a.txt, b.txt, c.bin, .hidden.txt, [x].txt and directory
    /// d.txt; the session is in /g.
    fn fixture() -> (MasterState, Session) {
        let cfg = MasterConfig {
            users: vec![UserConfig {
                name: "u".into(),
                password: "p".into(),
                home: "/".into(),
                ..Default::default()
            }],
            password_cost: users::PasswordCost::FAST,
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(Arc::new(cfg));
        st.db.mkdir(&p("/g"), "u", 0).unwrap();
        for name in ["c.bin", "b.txt", "a.txt", ".hidden.txt", "[x].txt"] {
            let meta = FileMeta {
                version: 1,
                size: 1,
                mtime: 0,
                owner: 0,
                group: 0,
                crc32: None,
                holders: Holders::from_slice(&[0]),
            };
            st.db.put_file(&p("/g").join(name).unwrap(), meta).unwrap();
        }
        st.db.mkdir(&p("/g/d.txt"), "u", 0).unwrap();
        let mut s = super::super::test_login(&mut st);
        s.handle(Command::parse("CWD /g").unwrap(), &mut st);
        (st, s)
    }

    /// The listing's lines, or the reply.
    fn list(s: &mut Session, st: &mut MasterState, line: &str) -> Result<Vec<String>, String> {
        s.handle(Command::parse("PORT 127,0,0,1,200,10").unwrap(), st);
        match s.handle(Command::parse(line).unwrap(), st) {
            Action::Listing(job) => Ok(String::from_utf8(job.bytes)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect()),
            Action::Reply(r) | Action::ResetData(r) => Err(r.to_string()),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn list_and_nlst_expand_wildcards_in_the_last_component() {
        let (mut st, mut s) = fixture();
        let (st, s) = (&mut st, &mut s);
        assert_eq!(
            list(s, st, "NLST *.txt").unwrap(),
            ["[x].txt", "a.txt", "b.txt", "d.txt"]
        );
        assert_eq!(
            list(s, st, "NLST /g/*.txt").unwrap(),
            ["/g/[x].txt", "/g/a.txt", "/g/b.txt", "/g/d.txt"]
        );
        assert_eq!(list(s, st, "NLST ../g/?.bin").unwrap(), ["../g/c.bin"]);
        assert_eq!(list(s, st, "NLST [ab].txt").unwrap(), ["a.txt", "b.txt"]);
        assert_eq!(list(s, st, "NLST [!a].txt").unwrap(), ["b.txt", "d.txt"]);
        assert_eq!(list(s, st, "NLST .h*").unwrap(), [".hidden.txt"]);
        let lines = list(s, st, "LIST -la *.txt").unwrap();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].ends_with(" [x].txt") && lines[3].starts_with('d'),
            "{lines:?}"
        );
        // A name that exists as given is listed as such.
        assert_eq!(list(s, st, "NLST [x].txt").unwrap(), ["[x].txt"]);
        // Nothing matching: an empty listing (226), as vsftpd.
        assert_eq!(list(s, st, "NLST *.zzz").unwrap(), Vec::<String>::new());
        assert_eq!(list(s, st, "LIST *.zzz").unwrap(), Vec::<String>::new());
        // A missing directory stays 550; MLSD takes exact paths.
        let r = list(s, st, "NLST /nodir/*.txt").unwrap_err();
        assert!(r.starts_with("550"), "{r}");
        let r = list(s, st, "MLSD *.txt").unwrap_err();
        assert!(r.starts_with("550"), "{r}");
    }

    #[test]
    fn glob_matching() {
        for (pat, name, want) in [
            ("*", "abc", true),
            ("*", ".abc", false),
            ("a*c", "abbbc", true),
            ("a*c", "abcd", false),
            ("*.t?t", "x.txt", true),
            ("[a-c]x", "bx", true),
            ("[a-c]x", "dx", false),
            ("[^a]", "b", true),
            ("[]]", "]", true),
            ("[ab", "[ab", true),
            ("**a", "a", true),
            ("é*", "été", true),
        ] {
            assert_eq!(glob_match(pat, name), want, "{pat} {name}");
        }
    }
}

//! SITE commands: HELP, WHO, CHMOD, and the admin commands ADDUSER,
//! DELUSER, CHPASS, CHGRP (kept in the store, overriding the config), KICK,
//! UNBAN, USERS; the slave commands are in `fleet.rs`.

use super::{r, Action, Session};
use crate::master::{users, MasterState};
use crate::proto::Reply;

/// SITE HELP's lines: one per SITE command, its syntax first (HELP and
/// HELP SITE list the verbs from here).
pub(super) const SITE_HELP: &[&str] = &[
    "SITE WHO     your session (admins: every session, address, transfer)",
    "SITE CHMOD <mode> <path>                 (accepted, modes are not kept)",
    "SITE SLAVES  each slave: state, space, files, copies, rates (admins)",
    "SITE SLAVE <name> [DRAIN|UNDRAIN]        (admins; one slave, drain it)",
    "SITE ADDSLAVE <name>                     (admins; a new slave may join)",
    "SITE DELSLAVE <name>                     (admins; forget it, repair)",
    "SITE KICKSLAVE <name>                    (admins; drop its link)",
    "SITE REMERGE <name>                      (admins; it lists its files again)",
    "SITE USERS                               (admins)",
    "SITE KICK <session id|user>              (admins)",
    "SITE UNBAN <address|user>                (admins; lifts login bans)",
    "SITE ADDUSER <user> <password> [group]   (admins)",
    "SITE DELUSER <user>                      (admins)",
    "SITE CHPASS <user> <password>            (admins)",
    "SITE CHGRP <user> <group> [group...]     (admins; replaces the groups)",
];

impl Session {
    pub(super) fn site(&mut self, verb: &str, args: &str, st: &mut MasterState) -> Action {
        let admin_only = matches!(
            verb,
            "ADDUSER" | "DELUSER" | "CHPASS" | "CHGRP" | "KICK" | "UNBAN" | "USERS"
        ) || super::fleet::VERBS.contains(&verb);
        if admin_only && !self.is_admin(st) {
            return r(550, format!("SITE {verb}: permission denied (admins only)"));
        }
        if super::fleet::VERBS.contains(&verb) {
            return self.site_fleet(verb, args, st);
        }
        if matches!(verb, "ADDUSER" | "DELUSER" | "CHPASS" | "CHGRP") {
            return match self.site_user(verb, args, st) {
                Ok(UserOutcome::Done(text)) => r(200, text),
                Ok(UserOutcome::Hash(job)) => Action::HashPassword(Box::new(job)),
                Err(e) => r(e.code(), e.to_string()),
            };
        }
        match verb {
            "HELP" => {
                let mut lines = vec!["SITE commands:".to_string()];
                lines.extend(SITE_HELP.iter().map(|l| l.to_string()));
                lines.push("End".into());
                Action::Reply(Reply::multi(214, lines))
            }
            "WHO" => self.who(st),
            "USERS" => {
                let mut lines = vec![format!("{} users:", st.users.len())];
                for u in st.users.iter() {
                    let open = st
                        .sessions
                        .values()
                        .filter(|s| s.user.as_deref() == Some(u.name.as_str()))
                        .count();
                    let mut flags = Vec::new();
                    if u.admin {
                        flags.push("admin");
                    }
                    if u.fxp {
                        flags.push("fxp");
                    }
                    lines.push(format!(
                        "{} groups={} home={} sessions={open} uploaded={}{}{}",
                        u.name,
                        if u.groups.is_empty() {
                            "-".to_string()
                        } else {
                            u.groups.join(",")
                        },
                        u.home,
                        u.uploaded,
                        u.upload_quota
                            .map(|q| format!(" quota={q}"))
                            .unwrap_or_default(),
                        if flags.is_empty() {
                            String::new()
                        } else {
                            format!(" {}", flags.join(" "))
                        },
                    ));
                }
                lines.push("End".into());
                Action::Reply(Reply::multi(200, lines))
            }
            "KICK" => self.kick(args.trim(), st),
            "UNBAN" => {
                let who = args.trim();
                if who.is_empty() {
                    return r(501, "Usage: SITE UNBAN <address|user>");
                }
                let lifted = match who.parse::<std::net::IpAddr>() {
                    Ok(ip) => st.login_guard.unban_ip(ip),
                    Err(_) => st.login_guard.unban_name(who),
                };
                if lifted {
                    tracing::info!(admin = ?self.user(), who, "login ban lifted");
                    r(200, format!("Failed logins and bans of {who} forgotten"))
                } else {
                    r(550, format!("{who}: no failed logins or ban on record"))
                }
            }
            // lftp (mirror -R) and others send SITE CHMOD after uploads and
            // fail on an error. Modes are not kept (each slave's disk has its
            // own), so it is accepted and ignored, and says so.
            "CHMOD" => self.site_chmod(args, st),
            _ => r(500, format!("Unknown SITE command {verb}; try SITE HELP")),
        }
    }

    /// SITE WHO: admins see every session with its address and running
    /// transfer; others see their own session only.
    fn who(&self, st: &MasterState) -> Action {
        let admin = self.is_admin(st);
        let shown: Vec<_> = st
            .sessions
            .iter()
            .filter(|(id, _)| admin || **id == self.id)
            .collect();
        let mut lines = vec![format!("{} sessions:", shown.len())];
        for (id, s) in shown {
            let doing = match &s.transfer {
                None => "idle".to_string(),
                Some(t) => {
                    let secs = (st.now - t.started).max(0);
                    if t.counted {
                        let bytes = t.bytes.load(std::sync::atomic::Ordering::Relaxed);
                        let rate = bytes / secs.max(1) as u64;
                        format!("{} for {secs} s, {bytes} bytes, {rate} bytes/s", t.what)
                    } else {
                        format!("{} for {secs} s (bytes go straight to the slave)", t.what)
                    }
                }
            };
            lines.push(format!(
                "#{id} {} from {} in {} {doing}",
                s.user.as_deref().unwrap_or("-"),
                s.peer,
                s.cwd,
            ));
        }
        lines.push("End".into());
        Action::Reply(Reply::multi(200, lines))
    }

    /// SITE KICK <session id|user>: ends another session (or all of a
    /// user's sessions but this one).
    fn kick(&self, arg: &str, st: &MasterState) -> Action {
        if arg.is_empty() {
            return r(501, "Usage: SITE KICK <session id|user>");
        }
        let by_id = arg.trim_start_matches('#').parse::<u64>().ok();
        let sessions: Vec<u64> = st
            .sessions
            .iter()
            .filter(|(id, s)| match by_id {
                Some(n) => **id == n,
                None => s.user.as_deref() == Some(arg),
            })
            .map(|(id, _)| *id)
            .filter(|id| *id != self.id)
            .collect();
        if sessions.is_empty() {
            return r(550, format!("{arg}: no other session matches"));
        }
        tracing::info!(admin = ?self.user(), target = arg, count = sessions.len(), "sessions kicked");
        let reply = Reply::new(
            200,
            format!("Kicked {} session(s) of {arg}", sessions.len()),
        );
        Action::Kick { sessions, reply }
    }

    /// SITE CHMOD <mode> <path>: 200 for a file or directory the user may
    /// name, and nothing changes.
    fn site_chmod(&self, args: &str, st: &MasterState) -> Action {
        let (mode, path) = args.trim().split_once(' ').unwrap_or((args.trim(), ""));
        let path = path.trim();
        if mode.is_empty() || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) || path.is_empty() {
            return r(501, "Usage: SITE CHMOD <octal mode> <path>");
        }
        match self.resolve(path) {
            Ok(p) if st.db.get(&p).is_some() => {
                r(200, "SITE CHMOD ignored: dftpd does not keep Unix modes")
            }
            Ok(p) => r(550, format!("{p}: No such file or directory")),
            Err(a) => a,
        }
    }

    /// SITE ADDUSER / DELUSER / CHPASS / CHGRP (the caller checked that the
    /// user is an admin). Changes are stored and override the config. A new
    /// password is hashed by the driver, off the state lock
    /// ([`Action::HashPassword`], then [`Session::password_hashed`]).
    fn site_user(
        &mut self,
        verb: &str,
        args: &str,
        st: &mut MasterState,
    ) -> Result<UserOutcome, users::UserError> {
        use users::UserError;
        let w = users::words(args);
        let name = w.first().copied().unwrap_or("");
        let cost = st.config.password_cost;
        match (verb, w.len()) {
            ("ADDUSER", 2 | 3) => {
                if !users::valid_name(name) {
                    return Err(UserError::BadName(name.into()));
                }
                if let Some(g) = w.get(2).filter(|g| !users::valid_name(g)) {
                    return Err(UserError::BadName(g.to_string()));
                }
                if st.users.get(name).is_some() {
                    return Err(UserError::Exists(name.into()));
                }
                Ok(UserOutcome::Hash(HashJob {
                    change: PasswordChange::Add {
                        name: name.into(),
                        group: w.get(2).map(|g| g.to_string()),
                    },
                    password: w[1].to_string(),
                    cost,
                }))
            }
            ("DELUSER", 1) => {
                if Some(name) == self.user() {
                    return Err(UserError::Usage("SITE DELUSER <user> (not yourself)"));
                }
                st.remove_user(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "user deleted");
                Ok(UserOutcome::Done(format!("User {name} deleted")))
            }
            ("CHPASS", 2) => {
                if st.users.get(name).is_none() {
                    return Err(UserError::Unknown(name.into()));
                }
                Ok(UserOutcome::Hash(HashJob {
                    change: PasswordChange::Set { name: name.into() },
                    password: w[1].to_string(),
                    cost,
                }))
            }
            ("CHGRP", n) if n >= 2 => {
                if let Some(g) = w[1..].iter().find(|g| !users::valid_name(g)) {
                    return Err(UserError::BadName(g.to_string()));
                }
                let u = st
                    .users
                    .get_mut(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                u.groups = w[1..].iter().map(|g| g.to_string()).collect();
                let text = format!("Groups of {name}: {}", u.groups.join(" "));
                st.user_changed(name);
                Ok(UserOutcome::Done(text))
            }
            ("ADDUSER", _) => Err(UserError::Usage("SITE ADDUSER <user> <password> [group]")),
            ("DELUSER", _) => Err(UserError::Usage("SITE DELUSER <user>")),
            ("CHPASS", _) => Err(UserError::Usage("SITE CHPASS <user> <password>")),
            _ => Err(UserError::Usage("SITE CHGRP <user> <group> [group...]")),
        }
    }

    /// The driver hashed the password of a SITE ADDUSER or CHPASS: apply
    /// the change (checked again: another admin may have acted meanwhile).
    pub fn password_hashed(
        &mut self,
        st: &mut MasterState,
        job: &HashJob,
        hash: Result<String, users::UserError>,
    ) -> Action {
        use users::UserError;
        let hash = match hash {
            Ok(h) => h,
            Err(e) => return r(e.code(), e.to_string()),
        };
        let done = match &job.change {
            PasswordChange::Add { name, group } => {
                if st.users.get(name).is_some() {
                    Err(UserError::Exists(name.clone()))
                } else {
                    st.users.insert(users::User {
                        name: name.clone(),
                        password_hash: hash,
                        groups: group.iter().cloned().collect(),
                        home: "/".into(),
                        admin: false,
                        fxp: false,
                        tls: users::TlsPolicy::Optional,
                        max_sessions: None,
                        upload_quota: None,
                        uploaded: 0,
                    });
                    st.user_changed(name);
                    tracing::info!(admin = ?self.user(), user = %name, "user added");
                    Ok(format!("User {name} added"))
                }
            }
            PasswordChange::Set { name } => match st.users.get_mut(name) {
                Some(u) => {
                    u.password_hash = hash;
                    st.user_changed(name);
                    tracing::info!(admin = ?self.user(), user = %name, "password changed");
                    Ok(format!("Password of {name} changed"))
                }
                None => Err(UserError::Unknown(name.clone())),
            },
        };
        match done {
            Ok(text) => r(200, text),
            Err(e) => r(e.code(), e.to_string()),
        }
    }
}

enum UserOutcome {
    Done(String),
    Hash(HashJob),
}

/// Which account a new password is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordChange {
    /// SITE ADDUSER: a new user, with an optional primary group.
    Add { name: String, group: Option<String> },
    /// SITE CHPASS.
    Set { name: String },
}

/// A password to hash off the state lock (argon2 takes tens of ms): the
/// driver draws a salt, hashes with `cost`, and calls
/// [`Session::password_hashed`].
#[derive(Clone, PartialEq, Eq)]
pub struct HashJob {
    pub change: PasswordChange,
    pub password: String,
    pub cost: users::PasswordCost,
}

impl std::fmt::Debug for HashJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HashJob {{ change: {:?}, password: <redacted> }}",
            self.change
        )
    }
}

//! SITE commands: HELP, SLAVES, WHO, CHMOD, and the admin commands ADDUSER,
//! DELUSER, CHPASS, CHGRP (kept in the store, overriding the config).

use super::{r, Action, Session};
use crate::master::{users, MasterState};
use crate::proto::Reply;

impl Session {
    pub(super) fn site(&mut self, verb: &str, args: &str, st: &mut MasterState) -> Action {
        if matches!(verb, "ADDUSER" | "DELUSER" | "CHPASS" | "CHGRP") {
            if !self.is_admin(st) {
                return r(550, format!("SITE {verb}: permission denied (admins only)"));
            }
            return match self.site_user(verb, args, st) {
                Ok(text) => r(200, text),
                Err(e) => r(e.code(), e.to_string()),
            };
        }
        match verb {
            "HELP" => Action::Reply(Reply::multi(
                214,
                vec![
                    "SITE commands:".into(),
                    "SITE SLAVES  each slave: state, free space, files, active transfers".into(),
                    "SITE WHO     sessions on this master".into(),
                    "SITE ADDUSER <user> <password> [group]   (admins)".into(),
                    "SITE DELUSER <user>                      (admins)".into(),
                    "SITE CHPASS <user> <password>            (admins)".into(),
                    "SITE CHGRP <user> <group> [group...]     (admins; replaces the groups)".into(),
                    "End".into(),
                ],
            )),
            "SLAVES" => {
                let mut lines = vec![format!("{} slaves:", st.slaves.iter().count())];
                for (id, s) in st.slaves.iter() {
                    lines.push(format!(
                        "{} {} free={} files={} active={} planned={} sent={} received={} relayed={}",
                        s.name,
                        s.state.as_str(),
                        s.free,
                        st.db.held_by(id),
                        s.active,
                        s.reserved,
                        s.bytes_sent,
                        s.bytes_received,
                        s.relayed_bytes
                    ));
                }
                lines.push("End".into());
                Action::Reply(Reply::multi(200, lines))
            }
            "WHO" => {
                let mut lines = vec![format!("{} sessions:", st.sessions.len())];
                for (id, s) in &st.sessions {
                    lines.push(format!(
                        "#{id} {} from {} in {} {}",
                        s.user.as_deref().unwrap_or("-"),
                        s.peer,
                        s.cwd,
                        s.doing.as_deref().unwrap_or("idle")
                    ));
                }
                lines.push("End".into());
                Action::Reply(Reply::multi(200, lines))
            }
            // lftp sends SITE CHMOD after uploads; modes are not kept (each
            // slave's disk has its own), so say exactly that.
            "CHMOD" => r(
                502,
                "SITE CHMOD is not implemented: dftpd does not keep Unix modes",
            ),
            _ => r(500, format!("Unknown SITE command {verb}; try SITE HELP")),
        }
    }

    /// SITE ADDUSER / DELUSER / CHPASS / CHGRP (the caller checked that the
    /// user is an admin). Changes are stored and override the config.
    fn site_user(
        &mut self,
        verb: &str,
        args: &str,
        st: &mut MasterState,
    ) -> Result<String, users::UserError> {
        use users::UserError;
        let w = users::words(args);
        let name = w.first().copied().unwrap_or("");
        let cost = st.config.password_cost;
        let salt = st.salt;
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
                let hash = users::hash_password(w[1], salt, cost)?;
                st.users.insert(users::User {
                    name: name.into(),
                    password_hash: hash,
                    groups: w.get(2).map(|g| vec![g.to_string()]).unwrap_or_default(),
                    home: "/".into(),
                    admin: false,
                    fxp: false,
                    tls: users::TlsPolicy::Optional,
                    max_sessions: None,
                    upload_quota: None,
                    uploaded: 0,
                });
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "user added");
                Ok(format!("User {name} added"))
            }
            ("DELUSER", 1) => {
                if Some(name) == self.user() {
                    return Err(UserError::Usage("SITE DELUSER <user> (not yourself)"));
                }
                st.users
                    .remove(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "user deleted");
                Ok(format!("User {name} deleted"))
            }
            ("CHPASS", 2) => {
                let hash = users::hash_password(w[1], salt, cost)?;
                let u = st
                    .users
                    .get_mut(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                u.password_hash = hash;
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "password changed");
                Ok(format!("Password of {name} changed"))
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
                Ok(text)
            }
            ("ADDUSER", _) => Err(UserError::Usage("SITE ADDUSER <user> <password> [group]")),
            ("DELUSER", _) => Err(UserError::Usage("SITE DELUSER <user>")),
            ("CHPASS", _) => Err(UserError::Usage("SITE CHPASS <user> <password>")),
            _ => Err(UserError::Usage("SITE CHGRP <user> <group> [group...]")),
        }
    }
}

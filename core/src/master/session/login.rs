//! Logging in: USER and PASS (RFC 959 §4.1.1), with the defences of
//! RFC 2577: every PASS costs one password verification, done by the
//! driver off the state lock ([`Action::CheckPassword`]), then
//! [`Session::login_result`] applies the guard (delays, bans, session
//! limits) and the user's TLS policy.

use super::{r, Action, Login, LoginCheck, Session};
use crate::master::{users, MasterState};
use crate::proto::Reply;

impl Session {
    pub(super) fn user_cmd(&mut self, name: String, st: &mut MasterState) -> Action {
        // Always 331, whether the user exists or not (RFC 2577 §6).
        self.clear_plan(st);
        self.login = Login::NeedPass(name.clone());
        r(331, format!("Password required for {name}"))
    }

    pub(super) fn pass(&mut self, pass: String, st: &mut MasterState) -> Action {
        let name = match &self.login {
            Login::NeedPass(n) => n.clone(),
            Login::LoggedIn { .. } => return r(503, "Already logged in"),
            Login::NeedUser => return r(503, "Login with USER first"),
        };
        // Every attempt costs one verification, known user or not.
        let (hash, _known) = st.users.hash_for(&name);
        Action::CheckPassword(Box::new(LoginCheck {
            user: name,
            password: pass,
            hash,
        }))
    }

    /// The password check came back. Returns the reply and how long to wait
    /// before sending it (failed logins: the same delay for every user name,
    /// growing with repeated failures).
    pub fn login_result(
        &mut self,
        st: &mut MasterState,
        check: &LoginCheck,
        verified: bool,
        now_ms: u64,
    ) -> (Action, std::time::Duration) {
        let ip = self.peer.ip();
        let name = check.user.clone();
        let guard = st.config.guard.clone();
        if let Err(e) = st.login_guard.check(&guard, ip, &name, now_ms) {
            self.login = Login::NeedUser;
            tracing::warn!(user = %name, %ip, "login refused: banned after repeated failures");
            return (
                Action::Close(Reply::new(e.code(), e.to_string())),
                Default::default(),
            );
        }
        let user = st.users.get(&name).filter(|_| verified).cloned();
        let Some(u) = user else {
            self.login = Login::NeedUser;
            let delay = st.login_guard.failure(&guard, ip, &name, now_ms);
            tracing::info!(user = %name, %ip, "login failed");
            return (r(530, "Login incorrect"), delay);
        };
        st.login_guard.success(ip, &name);
        // Checked only once the password is proven: refusing earlier would
        // tell a guesser which names exist.
        if u.tls != users::TlsPolicy::Optional && !self.tls.control {
            self.login = Login::NeedUser;
            return (
                r(
                    530,
                    "This account requires TLS: send AUTH TLS before logging in",
                ),
                Default::default(),
            );
        }
        let limit = u.max_sessions.unwrap_or(guard.max_sessions_per_user);
        if let Err(e) = st.limits.login(&name, limit) {
            self.login = Login::NeedUser;
            return (
                Action::Close(Reply::new(e.code(), e.to_string())),
                Default::default(),
            );
        }
        self.home = u.home_path();
        self.cwd = self.home.clone();
        if st.db.dir(&self.cwd).is_err() {
            // A home that does not exist yet is created for the user.
            let now = st.now;
            if st.db.mkdir_all(&self.cwd, &u.name, now).is_err() {
                self.cwd = self.home.clone();
            }
        }
        self.login = Login::LoggedIn {
            user: u.name.clone(),
            admin: u.admin,
        };
        self.update_info(st, None);
        tracing::info!(user = %u.name, "logged in");
        (
            r(230, format!("User {} logged in", u.name)),
            Default::default(),
        )
    }
}

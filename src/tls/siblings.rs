//! Which control connections' TLS sessions a data connection may resume.
//!
//! Every control connection tags its TLS sessions with a random token
//! (see "Tying a data connection to its control connection" in the module
//! overview). A data connection that resumes the session of its own control
//! connection shows that token. One that resumes a *sibling's* (another
//! control connection of the same logged-in user from the same client
//! address) shows the sibling's: rclone, like Go clients generally, keeps
//! one TLS session cache for all its connections to a server, so a data
//! connection resumes whichever control connection's ticket came last.
//! That is accepted; another user's session, or one from another address,
//! is refused.
//!
//! [`Siblings`] keeps the tokens of the open control sessions with the user
//! they log in as and their client address. A session is listed from USER
//! on: a client caches the new connection's tickets as it reads the 331
//! and may resume them on another connection's data connection while the
//! password is still being checked. [`Siblings::verdict`] then says
//! "wait": the answer comes once that login is decided.

use std::collections::BTreeMap;
use std::net::IpAddr;

/// The TLS tokens of open control sessions, with their users and
/// addresses.
#[derive(Debug, Default)]
pub struct Siblings {
    sessions: BTreeMap<u64, Entry>,
    by_token: BTreeMap<Vec<u8>, u64>,
}

#[derive(Debug)]
struct Entry {
    user: String,
    ip: IpAddr,
    /// Logged in as `user`; `false`: named by USER, password not checked
    /// yet.
    logged_in: bool,
    token: Vec<u8>,
}

/// The state of a control session, as [`Siblings::set`] lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginState<'a> {
    /// Not logged in (and not logging in): not listed.
    None,
    /// USER given, the password not checked yet.
    Pending(&'a str),
    LoggedIn(&'a str),
}

/// Whether a data connection that resumed another control connection's
/// session may serve ([`Siblings::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A session of the same logged-in user from the same address.
    Sibling,
    /// Someone else's, an unknown one (ended, or never logged in), or the
    /// data connection's own session is not logged in.
    Refused,
    /// The same user name from the same address, still logging in: ask
    /// again once it is decided.
    Wait,
}

impl Siblings {
    /// Session `id` (TLS token `token`, client address `ip`) is now in
    /// state `login`.
    pub fn set(&mut self, id: u64, login: LoginState<'_>, ip: IpAddr, token: &[u8]) {
        self.remove(id);
        let (user, logged_in) = match login {
            LoginState::None => return,
            LoginState::Pending(u) => (u, false),
            LoginState::LoggedIn(u) => (u, true),
        };
        let token = token.to_vec();
        if self.by_token.contains_key(&token) {
            // Tokens are random: a duplicate is a bug or a forgery, and
            // must not make one session another's sibling.
            return;
        }
        self.by_token.insert(token.clone(), id);
        let user = user.to_owned();
        self.sessions.insert(
            id,
            Entry {
                user,
                ip,
                logged_in,
                token,
            },
        );
    }

    /// Session `id` ended.
    pub fn remove(&mut self, id: u64) {
        if let Some(e) = self.sessions.remove(&id) {
            self.by_token.remove(&e.token);
        }
    }

    /// A data connection of the session tagged `own` resumed the session
    /// tagged `resumed`: may it serve?
    pub fn verdict(&self, own: &[u8], resumed: &[u8]) -> Verdict {
        let entry = |token: &[u8]| {
            let id = self.by_token.get(token)?;
            self.sessions.get(id)
        };
        let (Some(own), Some(other)) = (entry(own), entry(resumed)) else {
            return Verdict::Refused;
        };
        if !own.logged_in || own.user != other.user || own.ip != other.ip {
            return Verdict::Refused;
        }
        if other.logged_in {
            Verdict::Sibling
        } else {
            Verdict::Wait
        }
    }

    /// Sessions listed.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    fn token(n: u8) -> Vec<u8> {
        vec![n; 16]
    }

    #[test]
    fn a_sibling_is_the_same_logged_in_user_from_the_same_address() {
        let mut s = Siblings::default();
        s.set(1, LoginState::LoggedIn("alice"), A, &token(1));
        s.set(2, LoginState::LoggedIn("alice"), A, &token(2));
        s.set(3, LoginState::LoggedIn("bob"), A, &token(3));
        s.set(4, LoginState::LoggedIn("alice"), B, &token(4));
        assert_eq!(s.verdict(&token(1), &token(2)), Verdict::Sibling);
        assert_eq!(s.verdict(&token(2), &token(1)), Verdict::Sibling);
        // Another user, another address.
        assert_eq!(s.verdict(&token(1), &token(3)), Verdict::Refused);
        assert_eq!(s.verdict(&token(3), &token(1)), Verdict::Refused);
        assert_eq!(s.verdict(&token(1), &token(4)), Verdict::Refused);
        // A token nobody holds, or the asking session unknown.
        assert_eq!(s.verdict(&token(1), &token(9)), Verdict::Refused);
        assert_eq!(s.verdict(&token(9), &token(1)), Verdict::Refused);
    }

    #[test]
    fn a_session_still_logging_in_is_waited_for() {
        let mut s = Siblings::default();
        s.set(1, LoginState::LoggedIn("alice"), A, &token(1));
        s.set(2, LoginState::Pending("alice"), A, &token(2));
        s.set(3, LoginState::Pending("bob"), A, &token(3));
        assert_eq!(s.verdict(&token(1), &token(2)), Verdict::Wait);
        assert_eq!(s.verdict(&token(1), &token(3)), Verdict::Refused);
        // A session that is not logged in has no data connection to
        // vouch for.
        assert_eq!(s.verdict(&token(2), &token(1)), Verdict::Refused);
        // The login succeeds, or fails.
        s.set(2, LoginState::LoggedIn("alice"), A, &token(2));
        assert_eq!(s.verdict(&token(1), &token(2)), Verdict::Sibling);
        s.set(2, LoginState::None, A, &token(2));
        assert_eq!(s.verdict(&token(1), &token(2)), Verdict::Refused);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn an_ended_session_is_forgotten_and_tokens_stay_unique() {
        let mut s = Siblings::default();
        s.set(1, LoginState::LoggedIn("alice"), A, &token(1));
        s.set(2, LoginState::LoggedIn("alice"), A, &token(2));
        s.remove(2);
        s.remove(2);
        assert_eq!(s.verdict(&token(1), &token(2)), Verdict::Refused);
        // Another session showing a listed token is not listed.
        s.set(3, LoginState::LoggedIn("alice"), A, &token(1));
        assert_eq!(s.len(), 1);
        s.remove(3);
        assert_eq!(s.verdict(&token(1), &token(1)), Verdict::Sibling);
        s.remove(1);
        assert!(s.is_empty() && s.by_token.is_empty());
    }
}

//! Users, groups, passwords and per-path permissions (RFC 2577 §5-6).
//!
//! Passwords are kept as argon2id PHC strings (memory-hard; the cost is in
//! the string, so old hashes keep verifying after the configured cost
//! changes). A login always runs exactly one verification, against a dummy
//! hash for an unknown user, so timing does not tell whether a user exists.
//! Hashing takes its salt from the caller (the injected RNG) and is done by
//! the driver off the state lock: it takes tens of milliseconds by design.
//!
//! Permissions follow DrFTPD's model: an ordered list of rules, each naming
//! actions, a path glob and who it applies to (`*`, `name`, `=group`,
//! `!` to negate); the first rule matching the action and path decides, by
//! the first `who` entry matching the user. No matching rule: allowed.
//! Admins may do everything. A user never reaches outside their home.

use std::collections::BTreeMap;

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use serde::{Deserialize, Serialize};

pub use crate::config::{PasswordCost, Perm, PermRule, TlsPolicy};
use crate::proto::VPath;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("no such user: {0}")]
    Unknown(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("invalid name '{0}': 1 to 32 of A-Z a-z 0-9 _ . -, not starting with . or -")]
    BadName(String),
    #[error("usage: {0}")]
    Usage(&'static str),
    #[error("password hashing failed: {0}")]
    Hash(String),
}

impl UserError {
    /// The FTP reply code for this error.
    pub fn code(&self) -> u16 {
        match self {
            UserError::Unknown(_) => 550,
            UserError::Exists(_) | UserError::BadName(_) => 553,
            UserError::Usage(_) => 501,
            UserError::Hash(_) => 451,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// The first is the primary group (owner group of new files).
    pub groups: Vec<String>,
    /// Absolute virtual path; the user cannot reach outside it.
    pub home: String,
    pub admin: bool,
    /// May use FXP: PORT/EPRT to an address other than the control peer.
    pub fxp: bool,
    pub tls: TlsPolicy,
    /// Concurrent sessions allowed (None: the global limit only).
    pub max_sessions: Option<u32>,
    /// Bytes this user may upload in total (None: unlimited).
    pub upload_quota: Option<u64>,
    /// Bytes uploaded so far (counted against the quota).
    pub uploaded: u64,
}

impl User {
    pub fn primary_group(&self) -> &str {
        self.groups
            .first()
            .map(String::as_str)
            .unwrap_or(&self.name)
    }
    pub fn in_group(&self, g: &str) -> bool {
        self.groups.iter().any(|x| x == g)
    }
    pub fn home_path(&self) -> VPath {
        VPath::parse_absolute(&self.home).unwrap_or_else(|_| VPath::root())
    }
    /// Whether `path` is the home directory or below it.
    pub fn may_reach(&self, path: &VPath) -> bool {
        let home = self.home_path();
        home.is_root() || path == &home || path.starts_with(&home)
    }
}

pub fn hash_password(
    password: &str,
    salt: [u8; 16],
    cost: PasswordCost,
) -> Result<String, UserError> {
    let params = Params::new(cost.memory_kib.max(8), cost.iterations.max(1), 1, None)
        .map_err(|e| UserError::Hash(e.to_string()))?;
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_with_salt(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Hash(e.to_string()))
}

/// Largest argon2 memory cost a stored hash may ask for: a hostile or
/// corrupt hash must not make the master allocate gigabytes per login.
pub const MAX_MEMORY_KIB: u32 = 1 << 20;

/// Verifies with the parameters stored in `phc`; false for a malformed hash
/// or one whose cost is beyond [`MAX_MEMORY_KIB`] / 64 passes.
pub fn verify_password(phc: &str, password: &str) -> bool {
    let Some(hash) = usable(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .is_ok()
}

/// Argon2's working memory, kept by a caller that verifies one login after
/// another ([`verify_password_with`]).
pub type Argon2Memory = Vec<argon2::Block>;

/// [`verify_password`] with `memory` as argon2's working memory, grown to
/// the hash's cost when needed: a thread that verifies logins back to back
/// reuses it instead of mapping (and faulting in, and zeroing) 19 MiB per
/// login, a third of a login's CPU time at the default cost.
pub fn verify_password_with(phc: &str, password: &str, memory: &mut Argon2Memory) -> bool {
    let Some(hash) = usable(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let mut out = [0u8; argon2::password_hash::phc::Output::MAX_LENGTH];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params);
    if argon2
        .hash_password_into_with_memory(password.as_bytes(), salt, out, &mut memory[..blocks])
        .is_err()
    {
        return false;
    }
    // `Output`'s comparison takes constant time.
    argon2::password_hash::phc::Output::new(out).is_ok_and(|o| &o == expected)
}

/// `phc` parsed, if it is an argon2 hash with a sane cost.
fn usable(phc: &str) -> Option<PasswordHash> {
    let hash = PasswordHash::new(phc).ok()?;
    let params = Params::try_from(&hash).ok()?;
    (params.m_cost() <= MAX_MEMORY_KIB && params.t_cost() <= 64).then_some(hash)
}

pub fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The site's users, by name.
#[derive(Debug, Clone, Default)]
pub struct UserDb {
    users: BTreeMap<String, User>,
    /// Verified against for unknown users (same cost as real ones).
    dummy: String,
}

impl UserDb {
    pub fn new(dummy_hash: String) -> UserDb {
        UserDb {
            users: BTreeMap::new(),
            dummy: dummy_hash,
        }
    }
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }
    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.get_mut(name)
    }
    pub fn insert(&mut self, u: User) {
        self.users.insert(u.name.clone(), u);
    }
    pub fn remove(&mut self, name: &str) -> Option<User> {
        self.users.remove(name)
    }
    pub fn len(&self) -> usize {
        self.users.len()
    }
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }
    /// The hash a login for `name` must be verified against: the user's,
    /// or the dummy one (so an unknown user costs the same time).
    pub fn hash_for(&self, name: &str) -> (String, bool) {
        match self.users.get(name) {
            // A locked or corrupt hash fails at once; verifying the dummy
            // instead keeps its timing equal to any other failure.
            Some(u) if usable(&u.password_hash).is_some() => (u.password_hash.clone(), true),
            Some(_) => (self.dummy.clone(), false),
            None => (self.dummy.clone(), false),
        }
    }
}

impl PermRule {
    fn covers(&self, action: Perm, path: &str) -> bool {
        (self.actions.is_empty() || self.actions.contains(&action))
            && (crate::config::glob(&self.path, path)
                || self
                    .path
                    .strip_suffix("/*")
                    .is_some_and(|dir| (if dir.is_empty() { "/" } else { dir }) == path))
    }

    /// `Some(allowed)` from the first `who` entry matching the user.
    fn decides(&self, user: &User) -> bool {
        for w in &self.who {
            let (neg, w) = match w.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, w.as_str()),
            };
            let hit = match w.strip_prefix('=') {
                Some(g) => user.in_group(g),
                None => w == "*" || w == user.name,
            };
            if hit {
                return !neg;
            }
        }
        false
    }
}

/// Whether `user` may do `action` on `path` under `rules`.
pub fn allows(rules: &[PermRule], user: &User, action: Perm, path: &VPath) -> bool {
    if user.admin {
        return true;
    }
    match rules.iter().find(|r| r.covers(action, path.as_str())) {
        Some(rule) => rule.decides(user),
        None => true,
    }
}

/// A command line with any password in it replaced by `****` (PASS, SITE
/// ADDUSER, SITE CHPASS), for logs and recordings; `None` when there is
/// nothing to hide.
pub fn redacted(line: &str) -> Option<String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let verb = w.first()?.to_ascii_uppercase();
    if verb == "PASS" {
        return Some("PASS ****".into());
    }
    if verb != "SITE" {
        return None;
    }
    let sub = w.get(1)?.to_ascii_uppercase();
    if sub != "ADDUSER" && sub != "CHPASS" {
        return None;
    }
    let mut out: Vec<String> = w.iter().map(|s| s.to_string()).collect();
    if let Some(pw) = out.get_mut(3) {
        *pw = "****".into();
    }
    Some(out.join(" "))
}

/// Splits a SITE argument into words (names and passwords have no spaces).
pub fn words(args: &str) -> Vec<&str> {
    args.split_whitespace().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> User {
        User {
            name: name.into(),
            password_hash: String::new(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            home: "/".into(),
            admin: false,
            fxp: false,
            tls: TlsPolicy::Optional,
            max_sessions: None,
            upload_quota: None,
            uploaded: 0,
        }
    }

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    #[test]
    fn hashes_verify_and_wrong_or_malformed_do_not() {
        let h = hash_password("secret", [7; 16], PasswordCost::FAST).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{h}");
        assert!(verify_password(&h, "secret"));
        assert!(!verify_password(&h, "Secret"));
        assert!(!verify_password("not a hash", "secret"));
        assert!(!verify_password("", ""));
        // A stored hash asking for 4 TiB of memory is refused, not run.
        let greedy = h.replace("m=64", "m=4294967295");
        assert!(!verify_password(&greedy, "secret"));
        // Another salt, another hash.
        assert_ne!(
            h,
            hash_password("secret", [8; 16], PasswordCost::FAST).unwrap()
        );
    }

    #[test]
    fn verifying_with_kept_memory_agrees_with_verifying() {
        let mut memory = Argon2Memory::new();
        let cheap = hash_password("secret", [7; 16], PasswordCost::FAST).unwrap();
        let dearer = hash_password(
            "other",
            [9; 16],
            PasswordCost {
                memory_kib: 256,
                iterations: 2,
            },
        )
        .unwrap();
        // The same memory across hashes of both costs, in both orders, and
        // against argon2's own verification.
        for (h, right, wrong) in [
            (&cheap, "secret", "Secret"),
            (&dearer, "other", "othe"),
            (&cheap, "secret", ""),
        ] {
            assert!(verify_password_with(h, right, &mut memory), "{h}");
            assert!(!verify_password_with(h, wrong, &mut memory), "{h}");
            assert!(verify_password(h, right));
        }
        assert_eq!(memory.len(), 256);
        assert!(!verify_password_with("not a hash", "secret", &mut memory));
        let greedy = cheap.replace("m=64", "m=4294967295");
        assert!(!verify_password_with(&greedy, "secret", &mut memory));
        // A hash made elsewhere (the example config's) verifies too.
        let text = include_str!("../../../master.example.toml");
        let m: crate::config::MasterConfig = toml::from_str(text).unwrap();
        let alice = m.users.iter().find(|u| u.name == "alice").unwrap();
        let hash = alice.password_hash.as_deref().unwrap();
        assert!(verify_password_with(
            hash,
            "alice-example-password",
            &mut memory
        ));
        assert!(!verify_password_with(hash, "alice", &mut memory));
    }

    #[test]
    fn unknown_users_are_verified_against_the_dummy() {
        let dummy = hash_password("x", [1; 16], PasswordCost::FAST).unwrap();
        let mut db = UserDb::new(dummy.clone());
        let mut u = user("alice", &[]);
        u.password_hash = hash_password("pw", [2; 16], PasswordCost::FAST).unwrap();
        db.insert(u);
        let (h, known) = db.hash_for("bob");
        assert_eq!((h.as_str(), known), (dummy.as_str(), false));
        assert!(PasswordHash::new(&h).is_ok());
        let (h, known) = db.hash_for("alice");
        assert!(known && verify_password(&h, "pw"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redacted("PASS hunter2").as_deref(), Some("PASS ****"));
        assert_eq!(
            redacted("site adduser bob s3cret staff").as_deref(),
            Some("site adduser bob **** staff")
        );
        assert_eq!(
            redacted("SITE CHPASS bob n3w").as_deref(),
            Some("SITE CHPASS bob ****")
        );
        assert_eq!(redacted("SITE WHO"), None);
        assert_eq!(redacted("RETR x"), None);
    }

    #[test]
    fn names() {
        for ok in ["a", "alice_2", "x.y-z", &"n".repeat(32)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", ".hidden", "-x", "a b", "a/b", "é", &"n".repeat(33)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn glob_matches() {
        assert!(crate::config::glob("/incoming/*", "/incoming/a/b.zip"));
        assert!(crate::config::glob("*", "/anything"));
        assert!(crate::config::glob("/a?c", "/abc"));
        assert!(!crate::config::glob("/a?c", "/ac"));
        assert!(!crate::config::glob("/incoming/*", "/incoming2/x"));
        assert!(crate::config::glob("*.nfo", "/x/y/release.nfo"));
        // No exponential blow-up on adversarial patterns.
        assert!(!crate::config::glob(&"*a".repeat(30), &"a".repeat(29)));
    }

    #[test]
    fn first_matching_rule_decides_by_first_matching_who() {
        let rules: Vec<PermRule> = toml::from_str::<BTreeMap<String, Vec<PermRule>>>(
            r#"
            [[permissions]]
            actions = ["upload", "mkdir"]
            path = "/incoming/*"
            who = ["!=guests", "*"]

            [[permissions]]
            actions = ["delete", "rename", "overwrite"]
            path = "*"
            who = ["=siteops"]

            [[permissions]]
            path = "/private/*"
            who = ["bob"]
            "#,
        )
        .unwrap()
        .remove("permissions")
        .unwrap();
        let alice = user("alice", &["users"]);
        let guest = user("gus", &["guests"]);
        let op = user("olga", &["users", "siteops"]);
        let bob = user("bob", &[]);
        assert!(allows(&rules, &alice, Perm::Upload, &p("/incoming/x.zip")));
        assert!(allows(&rules, &alice, Perm::Mkdir, &p("/incoming")));
        assert!(!allows(&rules, &guest, Perm::Upload, &p("/incoming/x.zip")));
        assert!(!allows(&rules, &alice, Perm::Delete, &p("/incoming/x.zip")));
        assert!(allows(&rules, &op, Perm::Delete, &p("/incoming/x.zip")));
        // No rule for downloads outside /private: allowed.
        assert!(allows(&rules, &guest, Perm::Download, &p("/pub/a")));
        assert!(!allows(&rules, &alice, Perm::Download, &p("/private/a")));
        assert!(!allows(&rules, &alice, Perm::List, &p("/private")));
        assert!(allows(&rules, &bob, Perm::List, &p("/private")));
        let mut admin = user("root", &[]);
        admin.admin = true;
        assert!(allows(&rules, &admin, Perm::Download, &p("/private/a")));
    }

    #[test]
    fn home_confinement_is_by_component() {
        let mut u = user("al", &[]);
        u.home = "/home/al".into();
        assert!(u.may_reach(&p("/home/al")));
        assert!(u.may_reach(&p("/home/al/x")));
        assert!(!u.may_reach(&p("/home/al2")));
        assert!(!u.may_reach(&p("/home")));
        assert!(!u.may_reach(&p("/")));
    }

    #[test]
    fn the_example_user_has_the_documented_password() {
        let text = include_str!("../../../master.example.toml");
        assert!(text.contains("alice's password is \"alice-example-password\""));
        let m: crate::config::MasterConfig = toml::from_str(text).unwrap();
        let alice = m.users.iter().find(|u| u.name == "alice").unwrap();
        let hash = alice.password_hash.as_deref().unwrap();
        assert!(verify_password(hash, "alice-example-password"));
        assert!(!text.contains("plain text in this file"), "stale comment");
    }
}

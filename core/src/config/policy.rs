//! Policy settings of the master's config: defences against hostile clients
//! (`[guard]`), password hashing cost, permission rules (`[[permissions]]`)
//! and per-user TLS requirements. Data only: `master::guard` and
//! `master::users` apply them.

use serde::{Deserialize, Serialize};

/// `[guard]` in the master's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardConfig {
    /// Failed logins (per IP, and per user name) within `window_ms` before
    /// a ban; 0 disables delays and bans.
    pub max_failures: u32,
    pub window_ms: u64,
    /// Every failed PASS is answered after this delay (the same whether the
    /// user exists or not); it doubles from the third failure on, up to
    /// `max_delay_ms`.
    pub failure_delay_ms: u64,
    pub max_delay_ms: u64,
    pub ban_ms: u64,
    /// Concurrent control sessions per client IP (0: unlimited).
    pub max_sessions_per_ip: u32,
    /// Concurrent sessions per user unless the user sets its own (0: unlimited).
    pub max_sessions_per_user: u32,
    /// A session may send this many commands at once, refilled at
    /// `commands_per_second`; beyond that its replies are delayed (a flood
    /// sent ahead while throttled is closed with 421). The defaults stay
    /// above what one busy client of tiny files sends (about 2,000
    /// commands/s for 4 KiB files on loopback): they bound a flood, not
    /// ordinary use.
    pub command_burst: u32,
    pub commands_per_second: u32,
    /// A connection must log in within this (421 otherwise).
    pub login_timeout_ms: u64,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_failures: 5,
            window_ms: 10 * 60_000,
            failure_delay_ms: 1000,
            max_delay_ms: 8000,
            ban_ms: 15 * 60_000,
            max_sessions_per_ip: 20,
            max_sessions_per_user: 0,
            command_burst: 10_000,
            commands_per_second: 5000,
            login_timeout_ms: 60_000,
        }
    }
}

/// Per-user TLS requirement (FTPS), on top of the global settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsPolicy {
    #[default]
    Optional,
    Control,
    ControlAndData,
}

/// argon2id cost. Default: OWASP's recommendation (19 MiB, 2 passes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for PasswordCost {
    fn default() -> Self {
        PasswordCost {
            memory_kib: argon2::Params::DEFAULT_M_COST,
            iterations: argon2::Params::DEFAULT_T_COST,
        }
    }
}

impl PasswordCost {
    /// For tests and the simulator: still argon2id, a thousand times cheaper.
    pub const FAST: PasswordCost = PasswordCost {
        memory_kib: 64,
        iterations: 1,
    };
}

/// What a permission rule can allow or forbid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    List,
    Download,
    Upload,
    Overwrite,
    Rename,
    Delete,
    Mkdir,
    Rmdir,
}

impl Perm {
    pub fn as_str(self) -> &'static str {
        match self {
            Perm::List => "list",
            Perm::Download => "download",
            Perm::Upload => "upload",
            Perm::Overwrite => "overwrite",
            Perm::Rename => "rename",
            Perm::Delete => "delete",
            Perm::Mkdir => "mkdir",
            Perm::Rmdir => "rmdir",
        }
    }
}

/// One permission rule (config `[[permissions]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermRule {
    /// Actions it covers; empty: every action.
    #[serde(default)]
    pub actions: Vec<Perm>,
    /// Glob: `*` any characters (also `/`), `?` one; `/dir/*` also matches
    /// `/dir` itself.
    pub path: String,
    /// `*` everyone, `name`, `=group`, `!` before any of them negates.
    pub who: Vec<String>,
}

/// Glob match without backtracking blow-up (iterative, one star memory).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A path glob as `[[permissions]]` and `[[replication.rules]]` read it:
/// `/dir/*` also matches `/dir` itself.
pub fn glob_path(pattern: &str, path: &str) -> bool {
    glob(pattern, path)
        || pattern
            .strip_suffix("/*")
            .is_some_and(|dir| (if dir.is_empty() { "/" } else { dir }) == path)
}

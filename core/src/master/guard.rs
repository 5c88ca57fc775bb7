//! Defences against hostile clients that need memory across sessions
//! (RFC 2577 §5): failed-login delays and temporary bans per IP and per user
//! name, concurrent-session limits per IP and per user, and a per-session
//! command rate. Sans-IO: time comes in as milliseconds from the injected
//! clock; the driver applies the delays and closes connections.
//!
//! Limits slow clients down; they cut off only abuse. A session that uses
//! up its command budget has its next replies delayed until the budget
//! refills ([`Pace::After`]): a legitimate client, which waits for each
//! reply, is throttled to `commands_per_second` and never closed. Only a
//! client that keeps sending while throttled (more than
//! [`FLOOD_BACKLOG`] commands already waiting: thousands a second, not
//! reading replies) or that sends [`MAX_BAD_RUN`] invalid lines in a row is
//! closed with 421.

use std::collections::{BTreeMap, VecDeque};
use std::net::IpAddr;
use std::time::Duration;

pub use crate::config::GuardConfig;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("Too many failed logins; try again in {0} s")]
    Banned(u64),
    #[error("Too many sessions from your address (limit {0})")]
    TooManyFromIp(u32),
    #[error("Too many sessions for this user (limit {0})")]
    TooManyForUser(u32),
}

impl GuardError {
    pub fn code(&self) -> u16 {
        421
    }
}

/// Failure history of one key (an IP or a user name).
#[derive(Debug, Default, Clone)]
struct Record {
    failures: VecDeque<u64>,
    banned_until: u64,
}

/// The key an address is counted under: IPv4 as is (also IPv4-mapped
/// IPv6), IPv6 per /64, since one host commonly owns a whole /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                IpAddr::V6(seg.into())
            }
        },
    }
}

/// Longest user name the guard keeps (longer ones are cut): a spray of
/// long names cannot inflate its memory.
const MAX_NAME: usize = 64;

fn name_key(user: &str) -> &str {
    match user.char_indices().nth(MAX_NAME) {
        Some((i, _)) => &user[..i],
        None => user,
    }
}

const PRUNE_EVERY: u32 = 1024;

/// Bound on tracked user names (and addresses): a spray of random names cannot grow the
/// map without limit (the oldest entries go first).
const MAX_TRACKED_NAMES: usize = 100_000;

#[derive(Debug, Default)]
pub struct LoginGuard {
    /// Failures since the last [`LoginGuard::prune`]: expired records are
    /// dropped every [`PRUNE_EVERY`] failures, so an attack from many
    /// addresses cannot grow the maps for long.
    since_prune: u32,
    ips: BTreeMap<IpAddr, Record>,
    names: BTreeMap<String, Record>,
    /// Insertion order of `names`, for eviction.
    name_order: VecDeque<String>,
}

impl LoginGuard {
    /// Refuses a login attempt from a banned IP or for a banned name.
    pub fn check(
        &self,
        cfg: &GuardConfig,
        ip: IpAddr,
        user: &str,
        now: u64,
    ) -> Result<(), GuardError> {
        if cfg.max_failures == 0 {
            return Ok(());
        }
        let (ip, user) = (client_key(ip), name_key(user));
        let until = [self.ips.get(&ip), self.names.get(user)]
            .into_iter()
            .flatten()
            .map(|r| r.banned_until)
            .max()
            .unwrap_or(0);
        if until > now {
            return Err(GuardError::Banned((until - now).div_ceil(1000)));
        }
        Ok(())
    }

    /// Records a failed login; returns how long to wait before the 530.
    pub fn failure(&mut self, cfg: &GuardConfig, ip: IpAddr, user: &str, now: u64) -> Duration {
        if cfg.max_failures == 0 {
            return Duration::ZERO;
        }
        let (ip, user) = (client_key(ip), name_key(user));
        self.since_prune += 1;
        if self.since_prune >= PRUNE_EVERY {
            self.prune(cfg, now);
        }
        if self.ips.len() >= MAX_TRACKED_NAMES && !self.ips.contains_key(&ip) {
            // Still full of live records after pruning: forget the one
            // whose ban ends first (bans of active attackers survive).
            let soonest = self
                .ips
                .iter()
                .min_by_key(|(_, r)| (r.banned_until, r.failures.back().copied()))
                .map(|(k, _)| *k);
            if let Some(k) = soonest {
                self.ips.remove(&k);
            }
        }
        let n_ip = bump(self.ips.entry(ip).or_default(), cfg, now);
        if !self.names.contains_key(user) {
            if self.name_order.len() >= MAX_TRACKED_NAMES {
                if let Some(old) = self.name_order.pop_front() {
                    self.names.remove(&old);
                }
            }
            self.name_order.push_back(user.to_string());
        }
        let n_name = bump(self.names.entry(user.to_string()).or_default(), cfg, now);
        let n = n_ip.max(n_name);
        let doublings = n.saturating_sub(2).min(16);
        let delay = cfg
            .failure_delay_ms
            .saturating_mul(1 << doublings)
            .min(cfg.max_delay_ms.max(cfg.failure_delay_ms));
        Duration::from_millis(delay)
    }

    /// A successful login clears that IP's and that name's history.
    pub fn success(&mut self, ip: IpAddr, user: &str) {
        self.ips.remove(&client_key(ip));
        self.names.remove(name_key(user));
    }

    /// SITE UNBAN: forgets the failures and any ban of an address (its
    /// /64 for IPv6). Returns whether there was any on record.
    pub fn unban_ip(&mut self, ip: IpAddr) -> bool {
        self.ips.remove(&client_key(ip)).is_some()
    }

    /// SITE UNBAN: forgets the failures and any ban of a user name.
    /// Returns whether there was any on record.
    pub fn unban_name(&mut self, user: &str) -> bool {
        let key = name_key(user);
        self.name_order.retain(|n| n != key);
        self.names.remove(key).is_some()
    }

    /// Drops expired records (done every `PRUNE_EVERY` failures).
    pub fn prune(&mut self, cfg: &GuardConfig, now: u64) {
        self.since_prune = 0;
        let stale = |r: &Record| {
            r.banned_until <= now && r.failures.back().is_none_or(|&t| t + cfg.window_ms <= now)
        };
        self.ips.retain(|_, r| !stale(r));
        self.names.retain(|_, r| !stale(r));
        let names = &self.names;
        self.name_order.retain(|n| names.contains_key(n));
    }

    pub fn tracked(&self) -> (usize, usize) {
        (self.ips.len(), self.names.len())
    }
}

/// Adds a failure at `now`; bans at `max_failures` within the window.
/// Returns the failures within the window.
fn bump(r: &mut Record, cfg: &GuardConfig, now: u64) -> u32 {
    while r
        .failures
        .front()
        .is_some_and(|&t| t + cfg.window_ms <= now)
    {
        r.failures.pop_front();
    }
    r.failures.push_back(now);
    let n = r.failures.len() as u32;
    if n >= cfg.max_failures {
        r.banned_until = now + cfg.ban_ms;
        r.failures.clear();
    }
    n
}

/// Concurrent sessions per IP and per user.
#[derive(Debug, Default)]
pub struct SessionLimits {
    ips: BTreeMap<IpAddr, u32>,
    users: BTreeMap<String, u32>,
}

impl SessionLimits {
    pub fn open(&mut self, cfg: &GuardConfig, ip: IpAddr) -> Result<(), GuardError> {
        let ip = client_key(ip);
        let n = self.ips.entry(ip).or_default();
        if cfg.max_sessions_per_ip > 0 && *n >= cfg.max_sessions_per_ip {
            if *n == 0 {
                self.ips.remove(&ip);
            }
            return Err(GuardError::TooManyFromIp(cfg.max_sessions_per_ip));
        }
        *n += 1;
        Ok(())
    }

    pub fn close(&mut self, ip: IpAddr) {
        let ip = client_key(ip);
        if let Some(n) = self.ips.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.ips.remove(&ip);
            }
        }
    }

    /// `limit`: the user's own, or the global one (0: unlimited).
    pub fn login(&mut self, user: &str, limit: u32) -> Result<(), GuardError> {
        let n = self.users.entry(user.to_string()).or_default();
        if limit > 0 && *n >= limit {
            if *n == 0 {
                self.users.remove(user);
            }
            return Err(GuardError::TooManyForUser(limit));
        }
        *n += 1;
        Ok(())
    }

    pub fn logout(&mut self, user: &str) {
        if let Some(n) = self.users.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }
}

/// Commands a throttled client may have sent ahead, unanswered, before it
/// counts as a flood and is closed.
pub const FLOOD_BACKLOG: usize = 16;

/// Invalid lines in a row (unknown verbs, bad arguments, empty, too long,
/// not UTF-8) after which a session is closed: garbage, not a client.
pub const MAX_BAD_RUN: u32 = 50;

/// When the next command may be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Now.
    Now,
    /// After this delay (the budget is used up; it refills meanwhile).
    After(std::time::Duration),
    /// Never: the client floods while throttled. Close it (421).
    Flood,
}

/// A session's command budget (token bucket) and its run of invalid lines.
#[derive(Debug, Clone)]
pub struct CommandRate {
    tokens: f64,
    last: u64,
    bad_run: u32,
}

impl CommandRate {
    pub fn new(cfg: &GuardConfig, now: u64) -> CommandRate {
        CommandRate {
            tokens: f64::from(cfg.command_burst),
            last: now,
            bad_run: 0,
        }
    }

    /// Takes one command at `now` (ms). `waiting`: commands the client has
    /// already sent behind this one. Within the budget: [`Pace::Now`].
    /// Over it: [`Pace::After`] the time the budget needs to refill one
    /// command (the token is taken ahead: the budget goes into debt, so
    /// each further command waits one more interval), or [`Pace::Flood`]
    /// when more than [`FLOOD_BACKLOG`] commands wait (or nothing ever
    /// refills the budget).
    pub fn take(&mut self, cfg: &GuardConfig, now: u64, waiting: usize) -> Pace {
        if cfg.command_burst == 0 {
            return Pace::Now;
        }
        let rate = f64::from(cfg.commands_per_second);
        let elapsed = now.saturating_sub(self.last) as f64 / 1000.0;
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(cfg.command_burst));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Pace::Now;
        }
        if waiting > FLOOD_BACKLOG || rate <= 0.0 {
            return Pace::Flood;
        }
        let wait = (1.0 - self.tokens) / rate;
        self.tokens -= 1.0;
        Pace::After(std::time::Duration::from_secs_f64(wait))
    }

    /// Records whether a line was a valid command; false once
    /// [`MAX_BAD_RUN`] invalid lines came in a row (close the session).
    pub fn line(&mut self, valid: bool) -> bool {
        if valid {
            self.bad_run = 0;
        } else {
            self.bad_run += 1;
        }
        self.bad_run < MAX_BAD_RUN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn failures_grow_the_delay_then_ban_until_it_expires() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        let delays: Vec<u64> = (0..4)
            .map(|i| g.failure(&cfg, ip(1), "alice", i * 1000).as_millis() as u64)
            .collect();
        assert_eq!(delays, [1000, 1000, 2000, 4000]);
        assert!(g.check(&cfg, ip(1), "alice", 4000).is_ok());
        g.failure(&cfg, ip(1), "alice", 4000);
        // Fifth failure within the window: banned, for that IP and that name.
        assert_eq!(
            g.check(&cfg, ip(1), "bob", 5000),
            Err(GuardError::Banned(899))
        );
        assert!(g.check(&cfg, ip(2), "alice", 5000).is_err());
        assert!(g.check(&cfg, ip(2), "bob", 5000).is_ok());
        assert!(g.check(&cfg, ip(1), "bob", 4000 + cfg.ban_ms).is_ok());
    }

    #[test]
    fn failures_spread_over_ips_ban_the_name() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        for i in 0..5 {
            g.failure(&cfg, ip(i), "root", 10);
        }
        assert!(g.check(&cfg, ip(99), "root", 20).is_err());
        assert!(g.check(&cfg, ip(99), "other", 20).is_ok());
    }

    #[test]
    fn the_window_forgets_and_success_clears() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        for i in 0..4 {
            g.failure(&cfg, ip(1), "a", i);
        }
        // Outside the window: counting starts again.
        assert_eq!(
            g.failure(&cfg, ip(1), "a", cfg.window_ms + 10),
            Duration::from_millis(1000)
        );
        g.success(ip(1), "a");
        assert_eq!(g.tracked(), (0, 0));
        let off = GuardConfig {
            max_failures: 0,
            ..cfg
        };
        assert_eq!(g.failure(&off, ip(1), "a", 0), Duration::ZERO);
    }

    #[test]
    fn unban_lifts_a_ban_by_address_or_by_name() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        for i in 0..5 {
            g.failure(&cfg, ip(1), "alice", i);
        }
        assert!(g.check(&cfg, ip(1), "bob", 10).is_err(), "address banned");
        assert!(g.check(&cfg, ip(2), "alice", 10).is_err(), "name banned");
        assert!(g.unban_ip(ip(1)));
        assert!(g.check(&cfg, ip(1), "bob", 10).is_ok());
        assert!(
            g.check(&cfg, ip(1), "alice", 10).is_err(),
            "the name still is"
        );
        assert!(g.unban_name("alice"));
        assert!(g.check(&cfg, ip(2), "alice", 10).is_ok());
        assert!(!g.unban_name("alice") && !g.unban_ip(ip(3)), "nothing left");
    }

    #[test]
    fn a_spray_of_names_stays_bounded() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        for i in 0..(MAX_TRACKED_NAMES + 5000) {
            g.failure(&cfg, ip((i % 200) as u8), &format!("u{i}"), 1);
        }
        assert!(g.tracked().1 <= MAX_TRACKED_NAMES);
        g.prune(&cfg, cfg.ban_ms + cfg.window_ms + 10);
        assert_eq!(g.tracked(), (0, 0));
    }

    #[test]
    fn a_spray_of_addresses_is_pruned_as_it_goes() {
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        // One failure each from 300k addresses, a minute apart in bursts:
        // old records expire (window 10 min) and are pruned on the way.
        for i in 0..300_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            g.failure(&cfg, a, "x", u64::from(i / 1000) * 60_000);
        }
        assert!(g.tracked().0 <= MAX_TRACKED_NAMES, "{:?}", g.tracked());
    }

    #[test]
    fn ipv6_counts_per_64_and_long_names_are_cut() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), ip(1));
        let cfg = GuardConfig::default();
        let mut g = LoginGuard::default();
        for i in 0..5 {
            g.failure(&cfg, a, &format!("{}{i}", "x".repeat(200)), 0);
        }
        // One /64 banned, whatever address of it comes next.
        assert!(g.check(&cfg, b, "anyone", 1).is_err());
        assert!(g.check(&cfg, other, "anyone", 1).is_ok());
        // The five long names differ only past the cut: one name, banned.
        assert!(g.check(&cfg, other, &"x".repeat(64), 1).is_err());
    }

    #[test]
    fn session_limits() {
        let cfg = GuardConfig {
            max_sessions_per_ip: 2,
            ..GuardConfig::default()
        };
        let mut l = SessionLimits::default();
        assert!(l.open(&cfg, ip(1)).is_ok());
        assert!(l.open(&cfg, ip(1)).is_ok());
        assert_eq!(l.open(&cfg, ip(1)), Err(GuardError::TooManyFromIp(2)));
        assert!(l.open(&cfg, ip(2)).is_ok());
        l.close(ip(1));
        assert!(l.open(&cfg, ip(1)).is_ok());
        assert!(l.login("a", 1).is_ok());
        assert_eq!(l.login("a", 1), Err(GuardError::TooManyForUser(1)));
        l.logout("a");
        assert!(l.login("a", 1).is_ok());
        assert!(l.login("b", 0).is_ok());
        assert!(l.login("b", 0).is_ok());
    }

    #[test]
    fn command_rate_delays_past_the_burst_and_closes_only_a_flood() {
        let cfg = GuardConfig {
            command_burst: 3,
            commands_per_second: 2,
            ..GuardConfig::default()
        };
        let ms = |d: Pace| match d {
            Pace::After(d) => d.as_millis() as u64,
            other => panic!("{other:?}"),
        };
        let mut r = CommandRate::new(&cfg, 0);
        for _ in 0..3 {
            assert_eq!(r.take(&cfg, 0, 0), Pace::Now);
        }
        // A client that waits for each reply: delayed, never closed.
        assert_eq!(ms(r.take(&cfg, 0, 0)), 500);
        // It comes back when told (500 ms later): the next waits 500 more.
        assert_eq!(ms(r.take(&cfg, 500, 0)), 500);
        // After a pause the budget has refilled.
        assert_eq!(r.take(&cfg, 3000, 0), Pace::Now);
        // A client with many commands queued while throttled: a flood.
        let mut f = CommandRate::new(&cfg, 0);
        for _ in 0..3 {
            assert_eq!(f.take(&cfg, 0, 40), Pace::Now);
        }
        assert_eq!(f.take(&cfg, 0, FLOOD_BACKLOG + 1), Pace::Flood);
        // Fast but legitimate over a long time: 100 commands, each sent
        // when the previous one's delay ended, never a flood.
        let mut t = 0;
        let mut g = CommandRate::new(&cfg, 0);
        for _ in 0..100 {
            if let Pace::After(d) = g.take(&cfg, t, 1) {
                t += d.as_millis() as u64;
            }
        }
        assert!((45_000..=50_000).contains(&t), "{t}");
        // Garbage: MAX_BAD_RUN invalid lines in a row close the session; a
        // valid command in between resets the run.
        let mut b = CommandRate::new(&cfg, 0);
        for _ in 0..MAX_BAD_RUN - 1 {
            assert!(b.line(false));
        }
        assert!(b.line(true));
        for _ in 0..MAX_BAD_RUN - 1 {
            assert!(b.line(false));
        }
        assert!(!b.line(false));
    }
}

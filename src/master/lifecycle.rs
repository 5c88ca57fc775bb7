//! What a running master does for its operator, outside any session:
//! reload the config on SIGHUP ([`Master::reload`]), stop gracefully on
//! SIGTERM ([`Master::drain`]), say whether it is ready
//! ([`Master::readiness`]) and bring the metrics read from its state up
//! to date ([`Master::observe`]).
//!
//! **Reload** applies what can change under running sessions: users,
//! permissions, limits (`guard`), timeouts, `allow_overwrite`,
//! `pasv_without_pret`, `min_free_bytes`, TLS certificate and key (read
//! again even when the paths are the same: a renewed certificate is picked
//! up; the session-ticket key is kept, so resumption keeps working), and
//! every other field that is read per command. Fields bound at start
//! (`listen`, `link_listen`, `store`, `record_dir`, `link_tls`,
//! `admin_listen`, `xferlog`) keep their running value and are named in
//! the report as needing a restart. A config that does not validate is refused whole.
//!
//! Users follow the rule applied at start, where users changed with SITE
//! commands (kept in the store) win over the config: a user whose entry
//! still matches the old config entry takes the new entry (or goes, when
//! the config no longer has it); a user added, changed or deleted with SITE
//! commands keeps that. Open sessions go on; a removed user's next login
//! fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::registry::SlaveState;
use super::users::{self, User};
use super::{Master, MasterTls, Shared};
use crate::config::{ConfigError, MasterConfig, UserConfig};
use crate::env::Env;
use crate::ops::admin::{self, AdminService};
use crate::ops::metrics::{Metrics, SlaveStatus};
use crate::ops::{Ops, OpsError, XferLog};
use crate::tls::{CertPair, SharedTicketer, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("TLS certificate: {0}")]
    Tls(#[from] TlsError),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Top-level fields whose value changed and now apply (names only:
    /// values may be secrets).
    pub applied: Vec<String>,
    /// Fields that changed in the file but need a restart.
    pub need_restart: Vec<String>,
    pub users_added: Vec<String>,
    pub users_removed: Vec<String>,
    pub users_changed: Vec<String>,
    /// Users whose config entry changed but whose SITE-made version
    /// (store) is kept.
    pub users_kept: Vec<String>,
    /// The TLS certificate's fingerprint changed (slaves pinning the old
    /// one refuse the link at their next reconnect).
    pub new_certificate: Option<String>,
}

impl ReloadReport {
    pub fn is_empty(&self) -> bool {
        *self == ReloadReport::default()
    }
}

impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return write!(f, "nothing changed");
        }
        let mut parts = Vec::new();
        let list = |label: &str, v: &[String]| format!("{label} {}", v.join(", "));
        for (label, v) in [
            ("applied", &self.applied),
            ("users added", &self.users_added),
            ("users removed", &self.users_removed),
            ("users changed", &self.users_changed),
            ("users kept as changed by SITE", &self.users_kept),
            ("need a restart (running value kept)", &self.need_restart),
        ] {
            if !v.is_empty() {
                parts.push(list(label, v));
            }
        }
        if let Some(fp) = &self.new_certificate {
            parts.push(format!("new TLS certificate sha256 {fp}"));
        }
        write!(f, "{}", parts.join("; "))
    }
}

/// After the last transfer of a drain ends, time for its 226 to be sent.
const FINAL_REPLY_SETTLE: Duration = Duration::from_millis(250);

/// Fields bound when the master starts.
const RESTART_ONLY: [&str; 7] = [
    "listen",
    "link_listen",
    "store",
    "record_dir",
    "link_tls",
    "admin_listen",
    "xferlog",
];

/// Whether `u` is still what config entry `c` made of it (`uploaded`
/// aside). Verifying a plain-text password costs one argon2 hash.
fn made_by(u: &User, c: &UserConfig) -> bool {
    let password = match &c.password_hash {
        Some(h) => &u.password_hash == h,
        None => users::verify_password(&u.password_hash, &c.password),
    };
    u.groups == c.groups
        && u.home == c.home
        && u.admin == c.admin
        && u.fxp == c.fxp
        && u.tls == c.tls
        && u.max_sessions == c.max_sessions
        && u.upload_quota == c.upload_quota
        && password
}

/// The names of the top-level fields that differ (serialised views).
fn changed_fields(old: &MasterConfig, new: &MasterConfig) -> Vec<String> {
    let table = |c: &MasterConfig| toml::Table::try_from(c).unwrap_or_default();
    let (a, b) = (table(old), table(new));
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

impl Master {
    /// Applies `new` (already read and with command-line overrides
    /// applied) to the running master; see the module docs. Hashes plain
    /// passwords and may verify some: call it off the runtime's workers
    /// (a blocking thread). On error nothing changed.
    pub fn reload(&self, env: &Env, mut new: MasterConfig) -> Result<ReloadReport, ReloadError> {
        new.validate()?;
        let (old, old_tls) = {
            let st = self.state.lock();
            (st.config.clone(), self.state.tls())
        };
        let mut report = ReloadReport::default();
        for field in changed_fields(&old, &new) {
            if RESTART_ONLY.contains(&field.as_str()) {
                report.need_restart.push(field);
            } else if field != "users" {
                report.applied.push(field);
            }
        }
        new.listen = old.listen;
        new.link_listen = old.link_listen;
        new.store = old.store.clone();
        new.record_dir = old.record_dir.clone();
        new.link_tls = old.link_tls;
        new.admin_listen = old.admin_listen;
        new.xferlog = old.xferlog.clone();
        // link_tls kept means its requirement must still hold.
        new.validate()?;

        let tls = self.reload_tls(&new, old_tls.as_deref())?;
        report.new_certificate = match (&tls, &old_tls) {
            (Some(n), Some(o)) if n.fingerprint != o.fingerprint => Some(n.fingerprint.clone()),
            (Some(n), None) => Some(n.fingerprint.clone()),
            _ => None,
        };

        // Users: decide from a snapshot, hash and verify off the lock.
        let old_users: BTreeMap<&str, &UserConfig> =
            old.users.iter().map(|u| (u.name.as_str(), u)).collect();
        let new_users: BTreeMap<&str, &UserConfig> =
            new.users.iter().map(|u| (u.name.as_str(), u)).collect();
        let names: BTreeSet<&str> = old_users.keys().chain(new_users.keys()).copied().collect();
        let touched: Vec<&str> = names
            .into_iter()
            .filter(|n| old_users.get(n) != new_users.get(n))
            .collect();
        let snapshot: BTreeMap<&str, Option<User>> = {
            let st = self.state.lock();
            touched
                .iter()
                .map(|n| (*n, st.users.get(n).cloned()))
                .collect()
        };
        // Some(entry): put the new config entry; None: remove.
        let mut plan: Vec<(&str, Option<&UserConfig>)> = Vec::new();
        for name in &touched {
            let current = snapshot.get(name).and_then(Option::as_ref);
            let from_config = match (old_users.get(name), current) {
                (Some(c), Some(u)) => made_by(u, c),
                // New in the config: free unless SITE ADDUSER made it.
                (None, None) => true,
                // Deleted by SITE DELUSER, or added by SITE ADDUSER.
                _ => false,
            };
            if from_config {
                plan.push((name, new_users.get(name).copied()));
            } else {
                report.users_kept.push(name.to_string());
            }
        }
        let to_hash = MasterConfig {
            users: plan
                .iter()
                .filter_map(|(_, c)| c.map(|c| (*c).clone()))
                .collect(),
            password_cost: new.password_cost,
            ..MasterConfig::default()
        };
        let mut hashed = super::users_from_config(&to_hash, &mut |_| {
            let mut salt = [0u8; 16];
            env.rng_fill(&mut salt);
            salt
        });

        let mut st = self.state.lock();
        for (name, entry) in plan {
            // A SITE command may have changed the user meanwhile: it wins.
            let now = st.users.get(name).cloned();
            if now != *snapshot.get(name).unwrap_or(&None) {
                report.users_kept.push(name.to_string());
                continue;
            }
            match (entry, now) {
                (Some(_), before) => {
                    let Some(mut user) = hashed.remove(name) else {
                        continue; // hashing failed: logged by users_from_config
                    };
                    match before {
                        Some(b) => {
                            user.uploaded = b.uploaded;
                            report.users_changed.push(name.to_string());
                        }
                        None => report.users_added.push(name.to_string()),
                    }
                    st.users.insert(user);
                }
                (None, Some(_)) => {
                    st.remove_user(name);
                    report.users_removed.push(name.to_string());
                }
                (None, None) => {}
            }
        }
        report.users_kept.sort();
        report.users_kept.dedup();
        st.config = Arc::new(new);
        st.tls_available = tls.is_some();
        self.state.set_tls(tls);
        Ok(report)
    }

    /// The TLS settings of `new`, keeping the running session-ticket key
    /// (slaves got it over the link; tickets stay valid).
    fn reload_tls(
        &self,
        new: &MasterConfig,
        old: Option<&MasterTls>,
    ) -> Result<Option<Arc<MasterTls>>, TlsError> {
        let (Some(cert), Some(key)) = (&new.tls_cert, &new.tls_key) else {
            return Ok(None);
        };
        let Some(old) = old else {
            return MasterTls::load(new);
        };
        let pair = CertPair::load_pem(cert, key)?;
        let ticketer = SharedTicketer::new(&old.ticket_key, crate::tls::DEFAULT_TICKET_LIFETIME)?;
        let server = crate::tls::server_config(&pair, Arc::new(ticketer))?;
        Ok(Some(Arc::new(MasterTls {
            data: crate::tls::data_server_config(&server),
            server,
            ticket_key: old.ticket_key.clone(),
            fingerprint: pair.fingerprint_sha256(),
        })))
    }

    /// Transfers running on slaves (or relayed) right now.
    pub fn running_transfers(&self) -> u32 {
        let st = self.state.lock();
        st.slaves.iter().map(|(_, s)| s.active).sum()
    }

    /// The first half of a graceful stop: no new control or link
    /// connections, then wait until no transfer runs or `grace` has passed.
    /// Returns the transfers still running at the end (0: all finished).
    /// Open sessions are not told anything here (see README, "Graceful
    /// stop"); the caller exits afterwards.
    pub async fn drain(&self, grace: Duration) -> u32 {
        self.stop();
        let deadline = tokio::time::Instant::now() + grace;
        let mut waited = false;
        loop {
            let running = self.running_transfers();
            if running == 0 && waited {
                // A transfer is counted out just before its final reply is
                // written: give that reply time to reach the client.
                tokio::time::sleep(FINAL_REPLY_SETTLE).await;
            }
            if running == 0 || tokio::time::Instant::now() >= deadline {
                return running;
            }
            waited = true;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Opens what `admin_listen` and `xferlog` ask for: the admin listener
    /// (readiness and the read metrics wired to this master) and the
    /// transfer log.
    pub async fn start_ops(
        &self,
        admin_listen: Option<std::net::SocketAddr>,
        xferlog: Option<&std::path::Path>,
    ) -> Result<Ops, OpsError> {
        let metrics = Arc::new(Metrics::new());
        let xferlog = match xferlog {
            Some(p) => Some(Arc::new(XferLog::open(p)?)),
            None => None,
        };
        let admin = match admin_listen {
            Some(addr) => {
                let (ready, observed) = (self.state.clone(), self.state.clone());
                let service = AdminService {
                    metrics: metrics.clone(),
                    ready: Arc::new(move || readiness(&ready)),
                    refresh: Some(Arc::new(move |m: &Metrics| observe(&observed, m))),
                };
                Some(admin::start(addr, service).await?)
            }
            None => None,
        };
        let ops = Ops {
            metrics,
            xferlog,
            admin,
        };
        // Sessions opened from now on feed the metrics and the transfer
        // log; the store writer times its commits.
        self.state.set_ops(ops.sinks());
        if let Some(store) = &self.state.store {
            let m = ops.metrics.clone();
            store.time_commits(Arc::new(move |took| m.store_commit(took)));
        }
        Ok(ops)
    }

    /// `/ready`: the store is open (it is, from [`Master::start`] on) and
    /// at least one slave is online.
    pub fn readiness(&self) -> Result<(), String> {
        readiness(&self.state)
    }

    /// Sets the metrics that are read from the master's state: sessions,
    /// each slave's state and free space. (Commands, logins and transfers
    /// come from each session's `OpsObserver`, remerge progress from the
    /// link server, commit latency from the store writer.)
    pub fn observe(&self, metrics: &Metrics) {
        observe(&self.state, metrics)
    }
}

/// [`Master::readiness`] of a master's shared state.
fn readiness(state: &Shared) -> Result<(), String> {
    if state.store.is_none() {
        return Err("metadata store not open".into());
    }
    let st = state.lock();
    let known = st
        .slaves
        .iter()
        .filter(|(_, s)| !is_filler(&s.name))
        .count();
    if st.slaves.iter().any(|(_, s)| s.is_online()) {
        Ok(())
    } else {
        Err(format!("no slave online (0 of {known} known)"))
    }
}

/// A slave id the registry filled in while loading the store (`?N`), not
/// a slave anyone named.
fn is_filler(name: &str) -> bool {
    name.starts_with('?')
}

/// [`Master::observe`] of a master's shared state.
fn observe(state: &Shared, metrics: &Metrics) {
    let st = state.lock();
    metrics.set_sessions(st.sessions.len());
    for (_, s) in st.slaves.iter().filter(|(_, s)| !is_filler(&s.name)) {
        let status = match s.state {
            SlaveState::Online => SlaveStatus::Online,
            SlaveState::Remerging => SlaveStatus::Remerging,
            _ => SlaveStatus::Offline,
        };
        metrics.set_slave(&s.name, status, s.free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::users::PasswordCost;

    fn user(name: &str, password: &str) -> UserConfig {
        UserConfig {
            name: name.into(),
            password: password.into(),
            ..Default::default()
        }
    }

    fn config(users: Vec<UserConfig>) -> MasterConfig {
        MasterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            link_listen: "127.0.0.1:0".parse().unwrap(),
            link_key: "k".into(),
            store: None,
            users,
            password_cost: PasswordCost::FAST,
            ..MasterConfig::default()
        }
    }

    #[tokio::test]
    async fn reload_adds_changes_and_removes_config_users_but_keeps_site_changes() {
        let env = Env::real();
        let m = Master::start(
            env.clone(),
            config(vec![
                user("stay", "a"),
                user("edit", "b"),
                user("gone", "c"),
                user("sited", "d"),
            ]),
        )
        .await
        .unwrap();
        // SITE CHPASS of `sited`: the store's version.
        {
            let mut st = m.state.lock();
            let u = st.users.get_mut("sited").unwrap();
            u.password_hash = users::hash_password("site", [9; 16], PasswordCost::FAST).unwrap();
        }
        let mut new = config(vec![
            user("stay", "a"),
            user("edit", "b2"),
            user("new", "n"),
            user("sited", "d2"),
        ]);
        new.allow_overwrite = false;
        new.listen = "127.0.0.1:1".parse().unwrap();
        let report = m.reload(&env, new).unwrap();
        assert_eq!(report.users_added, ["new"]);
        assert_eq!(report.users_changed, ["edit"]);
        assert_eq!(report.users_removed, ["gone"]);
        assert_eq!(report.users_kept, ["sited"]);
        assert_eq!(report.applied, ["allow_overwrite"]);
        assert_eq!(report.need_restart, ["listen"]);
        let st = m.state.lock();
        assert!(!st.config.allow_overwrite);
        let running: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(st.config.listen, running, "restart-only: kept");
        assert!(users::verify_password(
            &st.users.get("edit").unwrap().password_hash,
            "b2"
        ));
        assert!(users::verify_password(
            &st.users.get("new").unwrap().password_hash,
            "n"
        ));
        assert!(users::verify_password(
            &st.users.get("sited").unwrap().password_hash,
            "site"
        ));
        assert!(st.users.get("gone").is_none());
        drop(st);
        m.stop();
    }

    #[tokio::test]
    async fn an_invalid_config_is_refused_whole() {
        let env = Env::real();
        let m = Master::start(env.clone(), config(vec![user("a", "a")]))
            .await
            .unwrap();
        let mut bad = config(vec![user("b", "b")]);
        bad.passive_ports = "9-1".into();
        assert!(m.reload(&env, bad).is_err());
        {
            let st = m.state.lock();
            assert!(st.users.get("a").is_some() && st.users.get("b").is_none());
        }
        assert!(m.readiness().unwrap_err().contains("no slave online"));
        assert_eq!(m.drain(Duration::from_millis(10)).await, 0);
    }
}

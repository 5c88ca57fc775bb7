//! Configuration of a master and of a slave: TOML files read with serde.
//! Every field has a default that works on loopback, so an empty file is a
//! valid configuration; command-line flags override fields. See
//! `master.example.toml` and `slave.example.toml` for the commented forms.

use serde::{Deserialize, Serialize};

mod policy;
mod replication;
pub use policy::{glob, glob_path, GuardConfig, PasswordCost, Perm, PermRule, TlsPolicy};
pub use replication::{ReplicationConfig, ReplicationRule};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// One line: where, then what (toml's own text spans several lines
    /// with a snippet of the file).
    #[error("{path}: {}", toml_one_line(error))]
    Parse {
        path: String,
        error: toml::de::Error,
    },
    #[error("invalid port range '{0}': use LOW-HIGH, e.g. 50000-50999, or 0 for any")]
    PortRange(String),
    #[error("invalid setting: {0}")]
    Invalid(String),
}

/// Default of `shutdown_grace_ms` (master and slave): 30 s.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 30_000;

/// What PASV/EPSV do when no PRET came first (DESIGN.md, PRET semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PasvWithoutPret {
    /// The master's own address: listings work, file transfers get a 503
    /// that names PRET.
    #[default]
    Listings,
    /// DrFTPD's behaviour: PASV itself is refused.
    Refuse,
    /// The master relays file bytes between client and slave.
    Relay,
}

/// A user in the master's config (`[[users]]`). Give `password_hash` (an
/// argon2id PHC string, `dftpd hash-password`); a plain `password` is
/// accepted and hashed at start, with a warning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
    pub password_hash: Option<String>,
    pub home: String,
    pub admin: bool,
    /// Groups; the first is the primary one.
    pub groups: Vec<String>,
    /// May use FXP (PORT/EPRT to another host, CPSV/SSCN).
    pub fxp: bool,
    pub tls: TlsPolicy,
    pub max_sessions: Option<u32>,
    /// Total bytes this user may upload.
    pub upload_quota: Option<u64>,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            name: String::new(),
            password: String::new(),
            password_hash: None,
            home: "/".into(),
            admin: false,
            groups: Vec::new(),
            fxp: false,
            tls: TlsPolicy::Optional,
            max_sessions: None,
            upload_quota: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterConfig {
    /// FTP control address.
    pub listen: SocketAddr,
    /// Where slaves connect.
    pub link_listen: SocketAddr,
    /// Shared secret slaves must prove (never logged).
    pub link_key: String,
    /// Address the master announces in its own PASV replies; default: the
    /// local address of the client's control connection.
    pub pasv_address: Option<IpAddr>,
    /// Master passive ports (listings, relay), "LOW-HIGH" or "0" for any.
    pub passive_ports: String,
    pub pasv_without_pret: PasvWithoutPret,
    /// May STOR replace an existing file? (Default: yes, as sync tools
    /// expect. The replacement is atomic: the old version is served until
    /// the new one is committed, and a failed upload leaves it intact.)
    pub allow_overwrite: bool,
    /// The master sends a heartbeat this often and expects one from each
    /// slave; `heartbeat_misses` silent intervals mark the slave offline.
    pub heartbeat_interval_ms: u64,
    pub heartbeat_misses: u32,
    /// How long a passive listener waits for the client, and an active
    /// connection may take; no progress on a data connection for this long
    /// ends its transfer. The slaves follow the master's value (sent when
    /// they connect).
    pub data_timeout_ms: u64,
    /// A slave's whole handshake (connect, prove the key, welcome) must
    /// fit in this, separately from the steady-state heartbeat bound: a
    /// slave far away (a long round trip) can still rejoin.
    pub handshake_timeout_ms: u64,
    /// How long an upload waits for its slave to acknowledge the commit
    /// when the slave was lost at that moment (the entry is resent when it
    /// reconnects); after that the client hears that the outcome is
    /// unknown.
    pub commit_wait_ms: u64,
    /// Idle control connections are closed after this long (421).
    pub idle_timeout_ms: u64,
    /// Slaves with less free space than this get no uploads.
    pub min_free_bytes: u64,
    /// When set, every control session is recorded as a replayable
    /// scenario, `DIR/session-<id>.scn` (`dftpd-sim replay FILE`). Off by
    /// default; off costs nothing.
    pub record_dir: Option<PathBuf>,
    /// The metadata store (file database, directories, queued operations
    /// for offline slaves): a redb file, created when missing. Unset: kept
    /// in memory only, so a restart rebuilds everything from the slaves'
    /// remerges and loses empty directories, owners and queued operations.
    pub store: Option<PathBuf>,
    // --- FTPS (RFC 4217) ---------------------------------------------------
    /// PEM certificate chain (leaf first) of the master: `AUTH TLS` on the
    /// control connection, its own data connections (listings, relay) and,
    /// with `link_tls`, the slave link. TLS is offered only when set.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (may be the same file).
    pub tls_key: Option<PathBuf>,
    /// Refuse USER/PASS before `AUTH TLS` (530).
    pub require_tls_control: bool,
    /// Refuse file transfers and listings under `PROT C` (521).
    pub require_tls_data: bool,
    /// The slave link listener speaks TLS with `tls_cert`; slaves must set
    /// `master_cert_pin`. Only then is the session-ticket key shared with
    /// the slaves, so that data connections resume the control session.
    pub link_tls: bool,
    pub users: Vec<UserConfig>,
    /// Per-path permission rules, first match wins (README, "Users and
    /// permissions").
    pub permissions: Vec<PermRule>,
    /// Brute-force, session and rate limits.
    pub guard: GuardConfig,
    /// argon2id cost for hashing passwords.
    pub password_cost: PasswordCost,
    // --- Operations (README, "Running it in production") -------------------
    /// The HTTP admin listener: `GET /metrics` (Prometheus), `/health`,
    /// `/ready`. Off when unset. Keep it on loopback or a private network:
    /// it has no authentication.
    pub admin_listen: Option<SocketAddr>,
    /// The transfer log, one line per transfer in the xferlog format
    /// vsftpd writes (`xferlog(5)`); reopened on SIGHUP. Off when unset.
    pub xferlog: Option<PathBuf>,
    /// On SIGTERM/SIGINT: how long running transfers may go on after the
    /// listeners close, before the process exits anyway.
    pub shutdown_grace_ms: u64,
    // --- Slaves and replication (README, "Replication and slave lifecycle")
    /// Slaves this master knows by name (also those added with SITE
    /// ADDSLAVE, and every slave it has seen, kept in the store).
    pub slaves: Vec<String>,
    /// Accept a slave whose name is not known yet (and know it from then
    /// on). Off: an unknown name is refused, with a log line on both sides.
    pub accept_new_slaves: bool,
    pub replication: ReplicationConfig,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            listen: ([127, 0, 0, 1], 2121).into(),
            link_listen: ([127, 0, 0, 1], 2100).into(),
            link_key: "change-me".into(),
            pasv_address: None,
            passive_ports: "50000-59999".into(),
            pasv_without_pret: PasvWithoutPret::Listings,
            allow_overwrite: true,
            heartbeat_interval_ms: 2000,
            heartbeat_misses: 3,
            data_timeout_ms: 30_000,
            handshake_timeout_ms: 30_000,
            commit_wait_ms: 30_000,
            idle_timeout_ms: 900_000,
            min_free_bytes: 0,
            record_dir: None,
            store: Some("dftpd-master.redb".into()),
            tls_cert: None,
            tls_key: None,
            require_tls_control: false,
            require_tls_data: false,
            link_tls: false,
            users: Vec::new(),
            permissions: Vec::new(),
            guard: GuardConfig::default(),
            password_cost: PasswordCost::default(),
            admin_listen: None,
            xferlog: None,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
            slaves: Vec::new(),
            accept_new_slaves: false,
            replication: ReplicationConfig::default(),
        }
    }
}

impl MasterConfig {
    pub fn passive_range(&self) -> Result<(u16, u16), ConfigError> {
        parse_port_range(&self.passive_ports)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
    /// Silence after which a link is declared dead.
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval() * self.heartbeat_misses.max(1)
    }
    pub fn data_timeout(&self) -> Duration {
        Duration::from_millis(self.data_timeout_ms.max(1))
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1000))
    }
    pub fn commit_wait(&self) -> Duration {
        Duration::from_millis(self.commit_wait_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms.max(1))
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.passive_range()?;
        if self.link_key.is_empty() {
            return Err(ConfigError::Invalid("link_key must not be empty".into()));
        }
        self.replication.validate().map_err(ConfigError::Invalid)?;
        for u in &self.users {
            // A home that is not a usable path must not fall back to `/`.
            if let Err(e) = crate::proto::VPath::parse_absolute(&u.home) {
                return Err(ConfigError::Invalid(format!(
                    "users.home of {}: '{}' is not usable: {e}",
                    u.name, u.home
                )));
            }
        }
        self.validate_tls()
    }

    /// Whether FTPS is configured (`tls_cert` and `tls_key`).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        cert_and_key(&self.tls_cert, &self.tls_key)?;
        for (set, name) in [
            (self.require_tls_control, "require_tls_control"),
            (self.require_tls_data, "require_tls_data"),
            (self.link_tls, "link_tls"),
        ] {
            if set && !self.tls_enabled() {
                return Err(ConfigError::Invalid(format!(
                    "{name} needs tls_cert and tls_key"
                )));
            }
        }
        Ok(())
    }
}

/// `tls_cert` and `tls_key` come together or not at all.
fn cert_and_key(cert: &Option<PathBuf>, key: &Option<PathBuf>) -> Result<(), ConfigError> {
    match (cert, key) {
        (Some(_), None) => Err(ConfigError::Invalid(
            "tls_cert is set but tls_key is not".into(),
        )),
        (None, Some(_)) => Err(ConfigError::Invalid(
            "tls_key is set but tls_cert is not".into(),
        )),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlaveConfig {
    /// Unique name of this slave in the cluster.
    pub name: String,
    /// The master's link address.
    pub master: SocketAddr,
    pub link_key: String,
    /// Storage root: every file of this slave lives below it.
    pub root: PathBuf,
    /// Local address data listeners bind (never 0.0.0.0 by default: a PASV
    /// reply must name an address the client can reach).
    pub data_ip: IpAddr,
    /// Address announced to clients for PASV; default `data_ip`.
    pub pasv_address: Option<IpAddr>,
    pub passive_ports: String,
    /// Passive listeners kept open ahead and reported to the master, so it
    /// answers PASV without a round trip to this slave (0: none).
    pub passive_pool: usize,
    /// Used only until the master's value arrives (the master's
    /// `data_timeout_ms` rules every data connection).
    pub data_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub heartbeat_misses: u32,
    /// The whole handshake with the master must fit in this (separate from
    /// the heartbeat bound, so a long round trip does not keep it out).
    pub handshake_timeout_ms: u64,
    /// How long a received upload waits for its commit after the link to
    /// the master is lost (the master resends the commit when the slave
    /// reconnects); then it is discarded.
    pub commit_grace_ms: u64,
    /// Reconnect backoff bounds.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
    // --- FTPS (RFC 4217) ---------------------------------------------------
    /// PEM certificate chain of this slave, for encrypted data connections
    /// (`PROT P`). Without it, `PROT P` transfers to this slave are refused.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert` (may be the same file).
    pub tls_key: Option<PathBuf>,
    /// The master's certificate: its SHA-256 fingerprint in hex (colons
    /// allowed) or the path of its PEM file. When set, the link runs over
    /// TLS and accepts exactly that certificate (the master needs
    /// `link_tls`).
    pub master_cert_pin: Option<String>,
    /// A zone label (a rack, a room, a site): copies of a file prefer
    /// slaves of distinct zones.
    pub zone: Option<String>,
    /// Bytes per second this slave may read to verify its copies' CRC-32 in
    /// the background (scrub); 0: no scrub.
    pub scrub_rate: u64,
    /// A scrub pass over every file starts this long after the previous
    /// one began (the first a minute after the slave joins).
    pub scrub_interval_ms: u64,
    /// Create `root` when it does not exist. Off: a missing root is an
    /// error at start (a disk that is not mounted must not fill the
    /// system disk instead). `dftpd cluster` sets it.
    pub create_root: bool,
    /// On SIGTERM/SIGINT: how long running transfers may go on before the
    /// process exits anyway.
    pub shutdown_grace_ms: u64,
}

impl Default for SlaveConfig {
    fn default() -> Self {
        SlaveConfig {
            name: "slave-1".into(),
            master: ([127, 0, 0, 1], 2100).into(),
            link_key: "change-me".into(),
            root: PathBuf::from("./dftpd-data/slave-1"),
            data_ip: [127, 0, 0, 1].into(),
            pasv_address: None,
            passive_ports: "50000-59999".into(),
            passive_pool: 8,
            data_timeout_ms: 30_000,
            heartbeat_interval_ms: 2000,
            heartbeat_misses: 3,
            handshake_timeout_ms: 30_000,
            commit_grace_ms: 60_000,
            zone: None,
            scrub_rate: 8 << 20,
            scrub_interval_ms: 24 * 3600 * 1000,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
            tls_cert: None,
            tls_key: None,
            master_cert_pin: None,
            create_root: false,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

impl SlaveConfig {
    pub fn passive_range(&self) -> Result<(u16, u16), ConfigError> {
        parse_port_range(&self.passive_ports)
    }
    pub fn advertised_ip(&self) -> IpAddr {
        self.pasv_address.unwrap_or(self.data_ip)
    }
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(10))
    }
    pub fn heartbeat_deadline(&self) -> Duration {
        self.heartbeat_interval() * self.heartbeat_misses.max(1)
    }
    pub fn data_timeout(&self) -> Duration {
        Duration::from_millis(self.data_timeout_ms.max(1))
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms.max(1000))
    }
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.passive_range()?;
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(ConfigError::Invalid(
                "name must be 1 to 64 characters".into(),
            ));
        }
        if self.link_key.is_empty() {
            return Err(ConfigError::Invalid("link_key must not be empty".into()));
        }
        cert_and_key(&self.tls_cert, &self.tls_key)?;
        if self
            .master_cert_pin
            .as_deref()
            .is_some_and(|p| p.trim().is_empty())
        {
            return Err(ConfigError::Invalid(
                "master_cert_pin must not be empty (a SHA-256 fingerprint or a PEM file)".into(),
            ));
        }
        Ok(())
    }

    /// Whether this slave can serve `PROT P` data connections.
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

/// "LOW-HIGH", a single port, or "0" (any free port).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), ConfigError> {
    let err = || ConfigError::PortRange(s.to_string());
    let s = s.trim();
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (s, s),
    };
    let lo: u16 = lo.parse().map_err(|_| err())?;
    let hi: u16 = hi.parse().map_err(|_| err())?;
    if (lo == 0) != (hi == 0) || hi < lo {
        return Err(err());
    }
    Ok((lo, hi))
}

pub fn load<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.display().to_string(),
        error,
    })
}

/// `TOML parse error at line 1, column 1: unknown field ...`: toml's
/// first line (where) and its message, without the snippet.
fn toml_one_line(e: &toml::de::Error) -> String {
    let text = e.to_string();
    let at = text.lines().next().unwrap_or("").trim();
    let message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
    if at.is_empty() || at == message {
        message
    } else {
        format!("{at}: {message}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_is_one_line_naming_the_place() {
        let error = toml::from_str::<MasterConfig>("bogus_field = 1\n").unwrap_err();
        let e = ConfigError::Parse {
            path: "bad.toml".into(),
            error,
        };
        // No source either: printing the chain must not repeat it.
        assert!(std::error::Error::source(&e).is_none());
        let e = e.to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(
            e.starts_with("bad.toml: TOML parse error at line 1, column 1: "),
            "{e}"
        );
        assert!(e.contains("unknown field `bogus_field`"), "{e}");
    }

    #[test]
    fn empty_files_are_valid_configs() {
        let m: MasterConfig = toml::from_str("").unwrap();
        m.validate().unwrap();
        assert_eq!(m.listen.port(), 2121);
        let s: SlaveConfig = toml::from_str("").unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn example_configs_parse() {
        let m: MasterConfig = toml::from_str(include_str!("../../../master.example.toml")).unwrap();
        m.validate().unwrap();
        assert!(!m.users.is_empty());
        let s: SlaveConfig = toml::from_str(include_str!("../../../slave.example.toml")).unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn a_home_that_is_not_a_path_is_refused() {
        for home in ["/.dftpd-tmp", "relative", "/a/../b"] {
            let m: MasterConfig = toml::from_str(&format!(
                "[[users]]\nname = \"al\"\npassword = \"x\"\nhome = \"{home}\""
            ))
            .unwrap();
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains("users.home of al"), "{home}: {err}");
        }
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("50000-50999").unwrap(), (50000, 50999));
        assert_eq!(parse_port_range("0").unwrap(), (0, 0));
        assert_eq!(parse_port_range("2000").unwrap(), (2000, 2000));
        assert!(parse_port_range("9-1").is_err());
        assert!(parse_port_range("0-5").is_err());
        assert!(parse_port_range("x").is_err());
        let bad: Result<MasterConfig, _> = toml::from_str("pasv_without_pret = \"maybe\"");
        assert!(bad.is_err());
        let relay: MasterConfig = toml::from_str("pasv_without_pret = \"relay\"").unwrap();
        assert_eq!(relay.pasv_without_pret, PasvWithoutPret::Relay);
    }

    #[test]
    fn tls_settings_come_with_a_certificate() {
        let m: MasterConfig = toml::from_str("").unwrap();
        assert!(!m.tls_enabled() && !m.link_tls && !m.require_tls_control);
        let ok: MasterConfig = toml::from_str(
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nlink_tls = true\nrequire_tls_data = true",
        )
        .unwrap();
        ok.validate().unwrap();
        assert!(ok.tls_enabled());
        for bad in [
            "tls_cert = \"c.pem\"",
            "tls_key = \"k.pem\"",
            "link_tls = true",
            "require_tls_control = true",
            "require_tls_data = true",
        ] {
            let m: MasterConfig = toml::from_str(bad).unwrap();
            let err = m.validate().unwrap_err().to_string();
            assert!(err.contains("tls_"), "{bad}: {err}");
        }
        let s: SlaveConfig = toml::from_str("tls_cert = \"c.pem\"").unwrap();
        assert!(s.validate().is_err());
        let s: SlaveConfig = toml::from_str("master_cert_pin = \" \"").unwrap();
        assert!(s.validate().is_err());
        let s: SlaveConfig =
            toml::from_str("tls_cert = \"c.pem\"\ntls_key = \"c.pem\"\nmaster_cert_pin = \"ab\"")
                .unwrap();
        s.validate().unwrap();
        assert!(s.tls_enabled());
    }
}

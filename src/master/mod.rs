//! The master: FTP control server, file database, slave registry and
//! transfer planning. [`session`] decides (sans-IO), [`control`] drives one
//! control connection, [`slaves`] runs the link side, [`Master::start`] ties
//! them together on an [`Env`].

pub mod control;
pub mod db;
pub mod guard;
pub mod lifecycle;
pub mod record;
pub mod registry;
pub mod session;
pub mod slaves;
pub mod store;
pub mod users;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::MasterConfig;
use crate::env::Env;
use crate::tls::{CertPair, SharedTicketer, TicketKey, TlsError};
use db::FileDb;
use registry::SlaveRegistry;

/// What SITE WHO shows of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub user: Option<String>,
    pub cwd: String,
    pub doing: Option<String>,
}

/// Everything sessions and links share. Guarded by one mutex that is never
/// held across an `.await`: each command or link message takes it briefly.
pub struct MasterState {
    pub config: Arc<MasterConfig>,
    pub db: FileDb,
    pub slaves: SlaveRegistry,
    pub sessions: BTreeMap<u64, SessionInfo>,
    /// Wall-clock seconds, refreshed from the environment by whoever takes
    /// the lock to act (the state never reads a clock itself).
    pub now: i64,
    /// Where session recordings go (`record_dir`); `None`: not recording.
    pub record: Option<Arc<dyn record::RecordSink>>,
    /// The durable store's writer; `None`: changes are not persisted
    /// (unit tests).
    pub store: Option<store::StoreHandle>,
    pub users: users::UserDb,
    pub login_guard: guard::LoginGuard,
    pub limits: guard::SessionLimits,
    /// User changes not yet handed to the store.
    pub user_changes: Vec<db::Change>,
    /// Random bytes for a password hash made under the lock (SITE ADDUSER,
    /// CHPASS); the driver fills it from the environment's RNG first.
    pub salt: [u8; 16],
    /// Monotonic origin for the guard's clock ([`MasterState::mono_ms`]).
    started: tokio::time::Instant,
    /// FTPS, when `tls_cert`/`tls_key` are set (never in the simulator).
    pub tls: Option<Arc<MasterTls>>,
    next_id: u64,
}

impl MasterState {
    /// A state with the config's users hashed with fixed salts (tests and
    /// tools; [`Master::start`] salts them from the environment's RNG).
    pub fn new(config: Arc<MasterConfig>) -> MasterState {
        let users = users_from_config(&config, &mut |i| [i as u8; 16]);
        MasterState::with_users(config, users)
    }

    pub fn with_users(config: Arc<MasterConfig>, users: users::UserDb) -> MasterState {
        MasterState {
            users,
            login_guard: Default::default(),
            limits: Default::default(),
            user_changes: Vec::new(),
            salt: [0; 16],
            started: tokio::time::Instant::now(),
            config,
            db: FileDb::new(),
            slaves: SlaveRegistry::default(),
            sessions: BTreeMap::new(),
            now: 0,
            record: None,
            store: None,
            tls: None,
            next_id: 0,
        }
    }

    /// Hands the changes made since the last flush to the store. Await the
    /// result before telling a client that what it asked for is done.
    pub fn flush(&mut self) -> Option<store::Durable> {
        let store = self.store.as_ref()?;
        let mut changes = self.db.take_journal();
        changes.extend(self.slaves.take_journal());
        changes.append(&mut self.user_changes);
        if changes.is_empty() {
            return None;
        }
        Some(store.submit(changes))
    }

    /// Milliseconds since this state was made (simulated time in the
    /// simulator): the clock of the login guard and the rate limits.
    pub fn mono_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records a user change for the store.
    pub fn user_changed(&mut self, name: &str) {
        let c = match self.users.get(name) {
            Some(u) => db::Change::PutUser(u.clone()),
            None => db::Change::DeleteUser(name.to_string()),
        };
        if self.store.is_some() {
            self.user_changes.push(c);
        }
    }

    /// A fresh id for sessions, transfers and link requests (one counter:
    /// ids are unique across all three, which makes logs easy to follow).
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// The config's users, hashed (plain `password` entries are hashed here,
/// with a warning), and the dummy hash unknown users are verified against.
pub fn users_from_config(
    config: &MasterConfig,
    salt: &mut dyn FnMut(usize) -> [u8; 16],
) -> users::UserDb {
    let cost = config.password_cost;
    let dummy = users::hash_password("no such user", salt(usize::MAX), cost).unwrap_or_default();
    let mut db = users::UserDb::new(dummy);
    for (i, u) in config.users.iter().enumerate() {
        let hash = match &u.password_hash {
            Some(h) => h.clone(),
            None => {
                if !u.password.is_empty() {
                    tracing::debug!(user = %u.name, "plain-text password in the config, hashed at start");
                }
                match users::hash_password(&u.password, salt(i), cost) {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::error!(user = %u.name, error = %e, "cannot hash the password; user disabled");
                        continue;
                    }
                }
            }
        };
        db.insert(users::User {
            name: u.name.clone(),
            password_hash: hash,
            groups: u.groups.clone(),
            home: u.home.clone(),
            admin: u.admin,
            fxp: u.fxp,
            tls: u.tls,
            max_sessions: u.max_sessions,
            upload_quota: u.upload_quota,
            uploaded: 0,
        });
    }
    db
}

pub type Shared = Arc<Mutex<MasterState>>;

/// FTPS on the master (README, "FTPS"): one rustls server configuration for
/// the control connections after `AUTH TLS`, the master's own data
/// connections and the TLS link, built once; and the session-ticket key,
/// which reaches slaves only over a TLS link (`link_tls`), so their data
/// connections resume the sessions clients made with the master.
pub struct MasterTls {
    /// Control connections and the link.
    pub server: Arc<rustls::ServerConfig>,
    /// The master's data connections (listings, relay): no TLS 1.3
    /// tickets (`tls::data_server_config`).
    pub data: Arc<rustls::ServerConfig>,
    pub ticket_key: TicketKey,
    /// SHA-256 of the certificate, hex: what slaves pin.
    pub fingerprint: String,
}

impl MasterTls {
    /// Loads the certificate named in the config; `None` when TLS is off.
    pub fn load(config: &MasterConfig) -> Result<Option<Arc<MasterTls>>, TlsError> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let pair = CertPair::load_pem(cert, key)?;
        let ticket_key = TicketKey::generate()?;
        let ticketer = SharedTicketer::new(&ticket_key, crate::tls::DEFAULT_TICKET_LIFETIME)?;
        let server = crate::tls::server_config(&pair, Arc::new(ticketer))?;
        Ok(Some(Arc::new(MasterTls {
            data: crate::tls::data_server_config(&server),
            server,
            ticket_key,
            fingerprint: pair.fingerprint_sha256(),
        })))
    }
}

/// A running master: its bound addresses and a way to stop it.
pub struct Master {
    pub control_addr: SocketAddr,
    pub link_addr: SocketAddr,
    pub state: Shared,
    shutdown: watch::Sender<bool>,
}

impl Master {
    /// Opens the store named in the config (`store`; none: in memory, not
    /// kept), binds the control and link listeners and starts serving.
    pub async fn start(env: Env, config: MasterConfig) -> std::io::Result<Master> {
        let store = match &config.store {
            Some(path) => store::MetaStore::open_file(path),
            None => store::MetaStore::open_memory(&store::SharedMemory::new()),
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Master::start_with_store(env, config, store).await
    }

    /// Like [`Master::start`] with a store opened by the caller (the
    /// simulator keeps one per master across crashes).
    pub async fn start_with_store(
        env: Env,
        config: MasterConfig,
        store: store::MetaStore,
    ) -> std::io::Result<Master> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = MasterTls::load(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        if let Some(t) = &tls {
            tracing::info!(
                sha256 = %t.fingerprint,
                link_tls = config.link_tls,
                require_tls_control = config.require_tls_control,
                require_tls_data = config.require_tls_data,
                "FTPS offered (AUTH TLS)"
            );
            if config.link_tls {
                tracing::info!("link over TLS: slaves get the session-ticket key, data connections to them resume the control session");
            } else {
                tracing::warn!("link_tls is off: the session-ticket key stays on the master, so PROT P data connections to slaves make full TLS handshakes (clients that require session resumption on data connections will fail)");
            }
        }
        let config = Arc::new(config);
        let users = users_from_config(&config, &mut |_| {
            let mut salt = [0u8; 16];
            env.rng_fill(&mut salt);
            salt
        });
        let mut st = MasterState::with_users(config.clone(), users);
        for u in config.users.iter().filter(|u| u.password_hash.is_none()) {
            tracing::warn!(user = %u.name, "plain-text password in the config: store password_hash instead (dftpd hash-password)");
        }
        st.tls = tls;
        let stats = store
            .load(&mut st)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!(
            store = store.label(),
            files = stats.files,
            dirs = stats.dirs,
            slaves = stats.slaves,
            queued_ops = stats.queued_ops,
            skipped = stats.skipped,
            "metadata store loaded"
        );
        st.db.open_journal();
        st.slaves.open_journal();
        st.store = Some(store.start_writer());
        if let Some(dir) = &config.record_dir {
            let sink = record::DirSink::create(dir.clone()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("record_dir {}: {e}", dir.display()))
            })?;
            st.record = Some(Arc::new(sink));
        }
        let state: Shared = Arc::new(Mutex::new(st));
        let control = env.net.bind(config.listen).await?;
        let link = env.net.bind(config.link_listen).await?;
        let control_addr = control.local_addr()?;
        let link_addr = link.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(slaves::accept_links(
            env.clone(),
            state.clone(),
            link,
            rx.clone(),
        ));
        tokio::spawn(control::accept_sessions(env, state.clone(), control, rx));
        tracing::info!(%control_addr, %link_addr, "master listening");
        Ok(Master {
            control_addr,
            link_addr,
            state,
            shutdown,
        })
    }

    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
    }
}

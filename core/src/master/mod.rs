//! The master's decisions, as plain data and functions: the per-connection
//! [`session`] state machine, the [`transfer`] machine that carries one
//! transfer from order to final reply, the file database ([`db`]), the
//! slave registry and selection policy ([`registry`]), users and
//! permissions ([`users`]), and the defences with memory across sessions
//! ([`guard`]). [`MasterState`] is what all sessions and links share; the
//! drivers in the `dftpd` crate hold it behind one lock.

pub mod commit;
pub mod copy;
pub mod db;
pub mod fleet;
pub mod guard;
pub mod observe;
pub mod pins;
pub mod registry;
pub mod remerge;
pub mod replica;
pub mod session;
pub mod transfer;
pub mod users;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::config::MasterConfig;
use db::FileDb;
use registry::SlaveRegistry;

/// What SITE WHO shows of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub peer: SocketAddr,
    pub user: Option<String>,
    pub cwd: String,
    /// The transfer running now, if any.
    pub transfer: Option<TransferInfo>,
}

impl SessionInfo {
    pub fn new(peer: SocketAddr) -> SessionInfo {
        SessionInfo {
            peer,
            user: None,
            cwd: "/".into(),
            transfer: None,
        }
    }
}

/// A session's running transfer, as SITE WHO shows it.
#[derive(Debug, Clone)]
pub struct TransferInfo {
    /// `RETR /path on slave-2`.
    pub what: String,
    /// Wall-clock second it started (`MasterState::now`).
    pub started: i64,
    /// Bytes moved so far, counted by the driver where the bytes pass
    /// through the master (a relay); `counted` says whether it does.
    pub bytes: Arc<AtomicU64>,
    pub counted: bool,
}

/// Everything sessions and links share. Drivers guard it with one mutex
/// that is never held across an `.await`: each command or link message
/// takes it briefly. It holds no handle to the outside world: changes for
/// the store accumulate in journals ([`MasterState::take_changes`]),
/// operations for slaves in their operation logs (`registry`), and the
/// driver performs both.
pub struct MasterState {
    pub config: Arc<MasterConfig>,
    pub db: FileDb,
    pub slaves: SlaveRegistry,
    pub sessions: BTreeMap<u64, SessionInfo>,
    /// Wall-clock seconds, refreshed from the environment by whoever takes
    /// the lock to act (the state never reads a clock itself).
    pub now: i64,
    /// Monotonic milliseconds (the driver's clock), refreshed the same way:
    /// how long slaves have been away.
    pub now_ms: u64,
    /// Copies between slaves: the repair queue and running copies.
    pub replication: replica::Replication,
    pub users: users::UserDb,
    /// Users deleted (SITE DELUSER, or gone from the config at a reload)
    /// while this master runs: their open sessions go on with these rights
    /// until they end; nobody can log in as them.
    departed_users: std::collections::BTreeMap<String, users::User>,
    pub login_guard: guard::LoginGuard,
    pub limits: guard::SessionLimits,
    /// User changes not yet taken by the driver for the store (recorded
    /// only once [`MasterState::open_journals`] was called).
    user_changes: Option<Vec<db::Change>>,
    /// FTPS is configured on this master (AUTH TLS is offered).
    pub tls_available: bool,
    /// The store's identity: versions carry it, so copies made under an
    /// earlier store (before `--rebuild`) are told apart.
    pub store_id: u64,
    /// Commits decided and not yet acknowledged by their slave, by (slave,
    /// log sequence number).
    pub commits: BTreeMap<(db::SlaveId, u64), commit::PendingCommit>,
    /// Decisions a replay imposes (the simulator's; empty otherwise).
    pub pins: pins::Pins,
    next_id: u64,
}

impl MasterState {
    /// A state with the config's users hashed with fixed salts (tests and
    /// tools; the master's start salts them from the environment's RNG).
    pub fn new(config: Arc<MasterConfig>) -> MasterState {
        let users = users_from_config(&config, &mut |i| [i as u8; 16]);
        MasterState::with_users(config, users)
    }

    pub fn with_users(config: Arc<MasterConfig>, users: users::UserDb) -> MasterState {
        MasterState {
            users,
            departed_users: Default::default(),
            login_guard: Default::default(),
            limits: Default::default(),
            user_changes: None,
            config,
            db: FileDb::new(),
            slaves: SlaveRegistry::default(),
            sessions: BTreeMap::new(),
            now: 0,
            now_ms: 0,
            replication: replica::Replication::default(),
            tls_available: false,
            store_id: 0,
            commits: BTreeMap::new(),
            pins: Default::default(),
            next_id: 0,
        }
    }

    /// Starts recording every durable change (database, registry, users)
    /// for [`MasterState::take_changes`].
    pub fn open_journals(&mut self) {
        self.db.open_journal();
        self.slaves.open_journal();
        self.user_changes.get_or_insert_with(Vec::new);
    }

    /// The durable changes made since the last call, in the order they
    /// happened: what the driver must commit before telling a client
    /// "done".
    pub fn take_changes(&mut self) -> Vec<db::Change> {
        let mut changes = self.db.take_journal();
        changes.extend(self.slaves.take_journal());
        if let Some(u) = self.user_changes.as_mut() {
            changes.append(u);
        }
        changes
    }

    /// Sets the store's identity (a new store: also recorded in it).
    pub fn set_store_id(&mut self, id: u64, new: bool) {
        self.store_id = id;
        if new {
            self.db.record_change(db::Change::StoreId(id));
        }
    }

    /// Records a user change for the store.
    /// The rights of a logged-in session's user: the current record, or
    /// the last one of a user deleted since the session logged in.
    pub fn session_user(&self, name: &str) -> Option<&users::User> {
        self.users
            .get(name)
            .or_else(|| self.departed_users.get(name))
    }

    /// Deletes user `name` (no new login); its open sessions keep the
    /// rights it had ([`MasterState::session_user`]).
    pub fn remove_user(&mut self, name: &str) -> Option<users::User> {
        let u = self.users.remove(name)?;
        self.departed_users.insert(name.to_string(), u.clone());
        Some(u)
    }

    pub fn user_changed(&mut self, name: &str) {
        let c = match self.users.get(name) {
            Some(u) => db::Change::PutUser(u.clone()),
            None => db::Change::DeleteUser(name.to_string()),
        };
        if let Some(u) = self.user_changes.as_mut() {
            u.push(c);
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

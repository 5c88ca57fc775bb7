//! The master: FTP control server, file database, slave registry and
//! transfer planning. [`session`] decides (sans-IO), [`control`] drives one
//! control connection, [`slaves`] runs the link side, [`Master::run`] ties
//! them together on an [`Env`].

pub mod control;
pub mod db;
pub mod record;
pub mod registry;
pub mod session;
pub mod slaves;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::MasterConfig;
use crate::env::Env;
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
    next_id: u64,
}

impl MasterState {
    pub fn new(config: Arc<MasterConfig>) -> MasterState {
        MasterState {
            config,
            db: FileDb::new(),
            slaves: SlaveRegistry::default(),
            sessions: BTreeMap::new(),
            now: 0,
            record: None,
            next_id: 0,
        }
    }

    /// A fresh id for sessions, transfers and link requests (one counter:
    /// ids are unique across all three, which makes logs easy to follow).
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

pub type Shared = Arc<Mutex<MasterState>>;

/// A running master: its bound addresses and a way to stop it.
pub struct Master {
    pub control_addr: SocketAddr,
    pub link_addr: SocketAddr,
    pub state: Shared,
    shutdown: watch::Sender<bool>,
}

impl Master {
    /// Binds the control and link listeners and starts serving.
    pub async fn start(env: Env, config: MasterConfig) -> std::io::Result<Master> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let config = Arc::new(config);
        let mut st = MasterState::new(config.clone());
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

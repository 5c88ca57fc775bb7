//! `dftpd cluster`: a master and N slaves in one process on loopback, the
//! default embedded setup. Slaves get distinct loopback addresses
//! (127.0.0.11, .12, ...) so a PASV reply shows which slave serves, and
//! storage under `<data-dir>/slave-N/`. The link runs over real loopback TCP:
//! the same code path as separate processes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{MasterConfig, PasvWithoutPret, SlaveConfig, UserConfig};
use crate::env::Env;
use crate::master::registry::lock;
use crate::master::Master;
use crate::slave::storage::DiskStorage;

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub listen: SocketAddr,
    pub link_listen: SocketAddr,
    pub slaves: usize,
    pub data_dir: PathBuf,
    pub users: Vec<UserConfig>,
    pub pasv_without_pret: PasvWithoutPret,
    pub passive_ports: String,
    pub allow_overwrite: bool,
    /// Passive listeners wait this long for the client (master and slaves).
    pub data_timeout_ms: u64,
    /// The first slave's data address; the next ones count up.
    pub first_slave_ip: Ipv4Addr,
    /// Record sessions there (`MasterConfig::record_dir`).
    pub record_dir: Option<PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            listen: ([127, 0, 0, 1], 2121).into(),
            link_listen: ([127, 0, 0, 1], 0).into(),
            slaves: 3,
            data_dir: PathBuf::from("./dftpd-data"),
            users: Vec::new(),
            pasv_without_pret: PasvWithoutPret::Listings,
            passive_ports: "50000-59999".into(),
            allow_overwrite: false,
            data_timeout_ms: 30_000,
            first_slave_ip: Ipv4Addr::new(127, 0, 0, 11),
            record_dir: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlaveSummary {
    pub name: String,
    pub data_ip: IpAddr,
    pub root: PathBuf,
}

pub struct Cluster {
    pub master: Master,
    pub slaves: Vec<SlaveSummary>,
    shutdown: watch::Sender<bool>,
}

impl Cluster {
    pub fn stop(&self) {
        self.master.stop();
        let _ = self.shutdown.send(true);
    }
}

/// Starts the cluster and waits until every slave is online.
pub async fn start(opts: ClusterOptions) -> std::io::Result<Cluster> {
    let env = Env::real();
    let mut key = [0u8; 24];
    env.rng_fill(&mut key);
    let link_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let master_config = MasterConfig {
        listen: opts.listen,
        link_listen: opts.link_listen,
        link_key: link_key.clone(),
        passive_ports: opts.passive_ports.clone(),
        pasv_without_pret: opts.pasv_without_pret,
        allow_overwrite: opts.allow_overwrite,
        data_timeout_ms: opts.data_timeout_ms,
        users: opts.users.clone(),
        record_dir: opts.record_dir.clone(),
        store: Some(opts.data_dir.join("master.redb")),
        ..MasterConfig::default()
    };
    let master = Master::start(env.clone(), master_config).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut slaves = Vec::new();
    for i in 0..opts.slaves {
        let ip = Ipv4Addr::from(u32::from(opts.first_slave_ip).wrapping_add(i as u32));
        let name = format!("slave-{}", i + 1);
        let root = opts.data_dir.join(&name);
        let config = SlaveConfig {
            name: name.clone(),
            master: master.link_addr,
            link_key: link_key.clone(),
            root: root.clone(),
            data_ip: IpAddr::V4(ip),
            pasv_address: None,
            passive_ports: opts.passive_ports.clone(),
            data_timeout_ms: opts.data_timeout_ms,
            ..SlaveConfig::default()
        };
        let storage = Arc::new(DiskStorage::new(&root)?);
        tokio::spawn(crate::slave::run(
            Env::real(),
            config,
            storage,
            shutdown_rx.clone(),
            Some(ready_tx.clone()),
        ));
        slaves.push(SlaveSummary {
            name,
            data_ip: IpAddr::V4(ip),
            root,
        });
    }
    // Online means: authenticated and remerged, as the master sees it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let online = {
            let st = lock(&master.state);
            st.slaves.iter().filter(|(_, s)| s.is_online()).count()
        };
        if online >= opts.slaves {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("only {online} of {} slaves came online", opts.slaves),
            ));
        }
        tokio::select! {
            _ = ready_rx.recv() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    Ok(Cluster {
        master,
        slaves,
        shutdown,
    })
}

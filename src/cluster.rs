//! `dftpd cluster`: a master and N slaves in one process on loopback, the
//! default embedded setup. Slaves get distinct loopback addresses
//! (127.0.0.11, .12, ...) so a PASV reply shows which slave serves, and
//! storage under `<data-dir>/slave-N/`. The link runs over real loopback TCP:
//! the same code path as separate processes.
//!
//! With `tls` (`dftpd cluster --tls`): one self-signed certificate for
//! 127.0.0.1, localhost and every slave address, made once under
//! `<data-dir>/tls/` and reused; the master offers `AUTH TLS` with it, the
//! slaves serve `PROT P` data connections with it, and the link runs over
//! TLS with the slaves pinning its fingerprint, so data connections resume
//! the control session.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::{MasterConfig, PasvWithoutPret, SlaveConfig, UserConfig};
use crate::env::Env;
use crate::master::Master;
use crate::ops::Ops;
use crate::slave::storage::DiskStorage;
use crate::slave::SlaveTls;
use crate::tls::CertPair;

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
    /// FTPS with a generated certificate (see the module docs).
    pub tls: bool,
    /// `MasterConfig::require_tls_control` / `require_tls_data` (need `tls`).
    pub require_tls_control: bool,
    pub require_tls_data: bool,
    /// The admin listener (`/metrics`, `/health`, `/ready`); `None`: off.
    pub admin_listen: Option<SocketAddr>,
    /// The transfer log; `None`: off.
    pub xferlog: Option<PathBuf>,
    /// `[replication] copies` and `sync_copies` (1 and 1: one copy).
    pub copies: u32,
    pub sync_copies: u32,
    /// `[replication] rate_per_slave` (bytes/s; 0: no cap).
    pub copy_rate: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            listen: ([127, 0, 0, 1], 2121).into(),
            link_listen: ([127, 0, 0, 1], 0).into(),
            slaves: 3,
            data_dir: PathBuf::from("./dftpd-data"),
            users: Vec::new(),
            pasv_without_pret: PasvWithoutPret::Relay,
            passive_ports: "50000-59999".into(),
            allow_overwrite: true,
            data_timeout_ms: 30_000,
            first_slave_ip: Ipv4Addr::new(127, 0, 0, 11),
            record_dir: None,
            tls: false,
            require_tls_control: false,
            require_tls_data: false,
            admin_listen: Some(([127, 0, 0, 1], 0).into()),
            xferlog: Some(PathBuf::from("./dftpd-data/xferlog")),
            copies: 1,
            sync_copies: 1,
            copy_rate: crate::config::ReplicationConfig::default().rate_per_slave,
        }
    }
}

#[derive(Debug, Clone)]
pub struct SlaveSummary {
    pub name: String,
    pub data_ip: IpAddr,
    pub root: PathBuf,
}

/// The certificate of a `--tls` cluster.
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// SHA-256 of the certificate, hex.
    pub fingerprint: String,
}

/// The cluster's certificate under `<data-dir>/tls/`: reused when it was
/// made for the same names, else made (self-signed, rcgen) and written.
pub fn cluster_certificate(data_dir: &Path, names: &[String]) -> std::io::Result<ClusterTls> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir)?;
    let (cert, key, names_file) = (
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("names.txt"),
    );
    let wanted = names.join("\n") + "\n";
    let io = |e: crate::tls::TlsError| std::io::Error::other(e.to_string());
    let same_names = std::fs::read_to_string(&names_file).is_ok_and(|n| n == wanted);
    if same_names {
        if let Ok(pair) = CertPair::load_pem(&cert, &key) {
            return Ok(ClusterTls {
                cert,
                key,
                fingerprint: pair.fingerprint_sha256(),
            });
        }
    }
    let pair = CertPair::self_signed(names).map_err(io)?;
    pair.write_pem(&cert, &key).map_err(io)?;
    std::fs::write(&names_file, wanted)?;
    tracing::info!(cert = %cert.display(), "generated a self-signed certificate");
    Ok(ClusterTls {
        cert,
        key,
        fingerprint: pair.fingerprint_sha256(),
    })
}

pub struct Cluster {
    pub master: Master,
    pub slaves: Vec<SlaveSummary>,
    /// `Some` with `--tls`.
    pub tls: Option<ClusterTls>,
    /// Metrics, transfer log and admin listener.
    pub ops: Ops,
    shutdown: watch::Sender<bool>,
}

impl Cluster {
    pub fn stop(&self) {
        self.master.stop();
        let _ = self.shutdown.send(true);
    }

    /// A graceful stop: no new connections, running transfers finish
    /// within `grace`, then the slaves stop. Returns the transfers that
    /// were still running (0: none was cut).
    pub async fn drain(&self, grace: Duration) -> u32 {
        let left = self.master.drain(grace).await;
        self.stop();
        left
    }
}

/// Starts the cluster and waits until every slave is online.
pub async fn start(opts: ClusterOptions) -> std::io::Result<Cluster> {
    let env = Env::real();
    let mut key = [0u8; 24];
    env.rng_fill(&mut key);
    let link_key: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let slave_ip = |i: usize| Ipv4Addr::from(u32::from(opts.first_slave_ip).wrapping_add(i as u32));
    let tls = if opts.tls {
        let mut names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        if !opts.listen.ip().is_unspecified() && !opts.listen.ip().is_loopback() {
            names.push(opts.listen.ip().to_string());
        }
        names.extend((0..opts.slaves).map(|i| slave_ip(i).to_string()));
        Some(cluster_certificate(&opts.data_dir, &names)?)
    } else {
        None
    };
    let master_config = MasterConfig {
        tls_cert: tls.as_ref().map(|t| t.cert.clone()),
        tls_key: tls.as_ref().map(|t| t.key.clone()),
        link_tls: tls.is_some(),
        require_tls_control: opts.require_tls_control,
        require_tls_data: opts.require_tls_data,
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
        admin_listen: opts.admin_listen,
        xferlog: opts.xferlog.clone(),
        slaves: (0..opts.slaves)
            .map(|i| format!("slave-{}", i + 1))
            .collect(),
        // A slave started by hand against the demo cluster joins.
        accept_new_slaves: true,
        replication: crate::config::ReplicationConfig {
            copies: opts.copies,
            sync_copies: opts.sync_copies,
            rate_per_slave: opts.copy_rate,
            ..Default::default()
        },
        ..MasterConfig::default()
    };
    let master = Master::start(env.clone(), master_config).await?;
    let ops = master
        .start_ops(opts.admin_listen, opts.xferlog.as_deref())
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut slaves = Vec::new();
    for i in 0..opts.slaves {
        let ip = slave_ip(i);
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
            tls_cert: tls.as_ref().map(|t| t.cert.clone()),
            tls_key: tls.as_ref().map(|t| t.key.clone()),
            master_cert_pin: tls.as_ref().map(|t| t.fingerprint.clone()),
            create_root: true,
            ..SlaveConfig::default()
        };
        let storage = Arc::new(DiskStorage::new(&root)?);
        let slave_tls =
            SlaveTls::load(&config).map_err(|e| std::io::Error::other(e.to_string()))?;
        tokio::spawn(crate::slave::run_with_tls(
            Env::real(),
            config,
            slave_tls,
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
            let st = master.state.lock();
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
        tls,
        ops,
        shutdown,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_certificate_is_reused_for_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["127.0.0.1".to_string(), "127.0.0.11".to_string()];
        let first = cluster_certificate(dir.path(), &names).unwrap();
        let again = cluster_certificate(dir.path(), &names).unwrap();
        assert_eq!(first.fingerprint, again.fingerprint, "reused");
        assert_eq!(
            CertPair::load_pem(&again.cert, &again.key)
                .unwrap()
                .fingerprint_sha256(),
            again.fingerprint
        );
        let more = [names.clone(), vec!["127.0.0.12".to_string()]].concat();
        let other = cluster_certificate(dir.path(), &more).unwrap();
        assert_ne!(
            first.fingerprint, other.fingerprint,
            "new names, new certificate"
        );
    }
}

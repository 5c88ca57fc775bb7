//! The `dftpd` command line: `cluster` (everything on loopback in one
//! process), `master` and `slave` (separate processes from config files).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::sync::watch;

use dftpd::cluster::{self, ClusterOptions};
use dftpd::config::{self, MasterConfig, PasvWithoutPret, SlaveConfig, UserConfig};
use dftpd::env::Env;
use dftpd::master::Master;
use dftpd::slave::storage::DiskStorage;
use dftpd::slave::SlaveTls;

#[derive(Parser)]
#[command(
    name = "dftpd",
    version,
    about = "Distributed FTP daemon: one master, many storage slaves"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a master and N slaves on loopback in one process.
    Cluster {
        /// FTP control address.
        #[arg(long, default_value = "127.0.0.1:2121")]
        listen: SocketAddr,
        /// Number of slaves (data addresses 127.0.0.11, .12, ...).
        #[arg(long, default_value_t = 3)]
        slaves: usize,
        /// Storage root; slave N stores under DIR/slave-N.
        #[arg(long, default_value = "./dftpd-data")]
        data_dir: PathBuf,
        /// A user as NAME:PASSWORD (repeatable). Without it, a default user
        /// is created and its password printed.
        #[arg(long = "user", value_name = "NAME:PASSWORD")]
        users: Vec<String>,
        /// Address of the master<->slave link (default: any free port).
        #[arg(long, default_value = "127.0.0.1:0")]
        link_listen: SocketAddr,
        /// PASV without PRET: listings, refuse or relay.
        #[arg(long, default_value = "listings")]
        pasv_without_pret: String,
        /// Passive port range for master and slaves.
        #[arg(long, default_value = "50000-59999")]
        passive_ports: String,
        /// Let STOR replace existing files.
        #[arg(long)]
        allow_overwrite: bool,
        /// How long a passive listener waits for the client (ms).
        #[arg(long, default_value_t = 30_000)]
        data_timeout_ms: u64,
        /// Record every control session as a replayable scenario,
        /// DIR/session-<id>.scn (`dftpd-sim replay FILE`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// FTPS: a self-signed certificate (made once under DATA_DIR/tls/),
        /// AUTH TLS on the master, PROT P on the slaves, the link over TLS.
        #[arg(long)]
        tls: bool,
        /// Refuse login before AUTH TLS (needs --tls).
        #[arg(long, requires = "tls")]
        require_tls_control: bool,
        /// Refuse transfers and listings under PROT C (needs --tls).
        #[arg(long, requires = "tls")]
        require_tls_data: bool,
        /// Let the --user users do server-to-server transfers (FXP: PORT to
        /// another host, passive connections from another host, SSCN, CPSV).
        #[arg(long)]
        fxp: bool,
        /// Data address of the first slave; the next ones count up.
        #[arg(long, default_value = "127.0.0.11")]
        first_slave_ip: std::net::Ipv4Addr,
    },
    /// Run a master from a config file (see master.example.toml).
    Master {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `listen` from the config.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Record every control session as a replayable scenario,
        /// DIR/session-<id>.scn (overrides `record_dir`).
        #[arg(long, value_name = "DIR")]
        record: Option<PathBuf>,
        /// The metadata store file (overrides `store`).
        #[arg(long, value_name = "FILE")]
        store: Option<PathBuf>,
        /// Forget the file database (a lost, stale or unreadable store) and
        /// rebuild it from the slaves' remerges as they connect. Names and
        /// slave ids are kept when the store is readable; an unreadable
        /// store is moved aside to FILE.unreadable-<time>.
        #[arg(long)]
        rebuild: bool,
    },
    /// Print the argon2id hash of a password (read from standard input, one
    /// line) for `password_hash` in the master's config.
    HashPassword,
    /// Run a slave from a config file (see slave.example.toml).
    Slave {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DFTPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dftpd=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn parse_mode(s: &str) -> anyhow::Result<PasvWithoutPret> {
    Ok(match s {
        "listings" => PasvWithoutPret::Listings,
        "refuse" => PasvWithoutPret::Refuse,
        "relay" => PasvWithoutPret::Relay,
        other => bail!("--pasv-without-pret: '{other}' is not one of listings, refuse, relay"),
    })
}

/// The default user's password: made once, kept in the data directory so a
/// restarted cluster accepts the same login.
fn default_user(data_dir: &std::path::Path) -> anyhow::Result<UserConfig> {
    let file = data_dir.join("default-user.txt");
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Some((name, password)) = text.trim().split_once(':') {
            return Ok(UserConfig {
                name: name.into(),
                password: password.into(),
                home: "/".into(),
                admin: true,
                ..Default::default()
            });
        }
    }
    let env = Env::real();
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let password: String = (0..16)
        .map(|_| ALPHABET[env.rng_range(0, ALPHABET.len() as u64 - 1) as usize] as char)
        .collect();
    std::fs::create_dir_all(data_dir)?;
    std::fs::write(&file, format!("dftpd:{password}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(UserConfig {
        name: "dftpd".into(),
        password,
        home: "/".into(),
        admin: true,
        ..Default::default()
    })
}

async fn wait_for_ctrl_c() {
    let _ = tokio::signal::ctrl_c().await;
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("DFTPD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    rt.enable_all().build()?.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Cluster {
            listen,
            slaves,
            data_dir,
            users,
            link_listen,
            pasv_without_pret,
            passive_ports,
            allow_overwrite,
            data_timeout_ms,
            record,
            tls,
            require_tls_control,
            require_tls_data,
            fxp,
            first_slave_ip,
        } => {
            let mut user_configs = Vec::new();
            for u in &users {
                let Some((name, password)) = u.split_once(':') else {
                    bail!("--user takes NAME:PASSWORD, got '{u}'");
                };
                user_configs.push(UserConfig {
                    name: name.into(),
                    password: password.into(),
                    home: "/".into(),
                    admin: true,
                    fxp,
                    ..Default::default()
                });
            }
            let printed_user = if user_configs.is_empty() {
                let u = default_user(&data_dir)?;
                user_configs.push(u.clone());
                Some(u)
            } else {
                None
            };
            config::parse_port_range(&passive_ports)?;
            let opts = ClusterOptions {
                listen,
                link_listen,
                slaves,
                data_dir,
                users: user_configs,
                pasv_without_pret: parse_mode(&pasv_without_pret)?,
                passive_ports,
                allow_overwrite,
                data_timeout_ms,
                record_dir: record,
                tls,
                require_tls_control,
                require_tls_data,
                first_slave_ip,
            };
            let c = cluster::start(opts).await.context("starting the cluster")?;
            println!(
                "master ready on {} (slave link {})",
                c.master.control_addr, c.master.link_addr
            );
            for s in &c.slaves {
                println!(
                    "{} ready: data address {}, storage {}",
                    s.name,
                    s.data_ip,
                    s.root.display()
                );
            }
            if let Some(t) = &c.tls {
                println!(
                    "tls: certificate {} sha256 {} (self-signed: curl -k or --cacert; AUTH TLS on the master, PROT P on the slaves, link over TLS)",
                    t.cert.display(),
                    t.fingerprint
                );
            }
            if let Some(u) = printed_user {
                println!("login: user {} password {}", u.name, u.password);
            }
            println!(
                "cluster ready: ftp://{} (Ctrl-C to stop)",
                c.master.control_addr
            );
            wait_for_ctrl_c().await;
            c.stop();
            println!("cluster stopped");
        }
        Cmd::Master {
            config,
            listen,
            record,
            store,
            rebuild,
        } => {
            let mut cfg: MasterConfig = match &config {
                Some(p) => config::load(p)?,
                None => MasterConfig::default(),
            };
            if let Some(l) = listen {
                cfg.listen = l;
            }
            if record.is_some() {
                cfg.record_dir = record;
            }
            if store.is_some() {
                cfg.store = store;
            }
            cfg.validate()?;
            if rebuild {
                let Some(path) = &cfg.store else {
                    bail!("--rebuild needs a store file (`store` in the config or --store)");
                };
                let done = dftpd::master::store::rebuild(path, Env::real().unix_now())?;
                println!("{done}");
            }
            let m = Master::start(Env::real(), cfg)
                .await
                .context("starting the master")?;
            println!(
                "master ready on {} (slave link {})",
                m.control_addr, m.link_addr
            );
            let fingerprint = m.state.tls.as_ref().map(|t| t.fingerprint.clone());
            if let Some(fp) = fingerprint {
                println!("tls: certificate sha256 {fp} (slaves pin it with master_cert_pin)");
            }
            wait_for_ctrl_c().await;
            m.stop();
            println!("master stopped");
        }
        Cmd::HashPassword => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let password = line.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("give the password on standard input");
            }
            let mut salt = [0u8; 16];
            Env::real().rng_fill(&mut salt);
            let hash = dftpd::master::users::hash_password(
                password,
                salt,
                dftpd::master::users::PasswordCost::default(),
            )?;
            println!("{hash}");
        }
        Cmd::Slave { config } => {
            let cfg: SlaveConfig = match &config {
                Some(p) => config::load(p)?,
                None => SlaveConfig::default(),
            };
            cfg.validate()?;
            let tls = SlaveTls::load(&cfg).context("TLS settings")?;
            let storage = Arc::new(
                DiskStorage::new(&cfg.root)
                    .with_context(|| format!("storage root {}", cfg.root.display()))?,
            );
            let (tx, rx) = watch::channel(false);
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
            let name = cfg.name.clone();
            let ip = cfg.advertised_ip();
            let task = tokio::spawn(dftpd::slave::run_with_tls(
                Env::real(),
                cfg,
                tls,
                storage,
                rx,
                Some(ready_tx),
            ));
            tokio::select! {
                _ = ready_rx.recv() => println!("{name} ready: data address {ip}, connected to master"),
                _ = wait_for_ctrl_c() => { let _ = tx.send(true); return Ok(()); }
            }
            wait_for_ctrl_c().await;
            let _ = tx.send(true);
            let _ = task.await;
            println!("{name} stopped");
        }
    }
    Ok(())
}

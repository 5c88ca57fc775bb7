//! The `dftpd` command line: `cluster` (everything on loopback in one
//! process), `master` and `slave` (separate processes from config files).
//!
//! Every long-running command handles signals the way a service manager
//! expects (README, "Running it in production"): SIGHUP reloads the master's
//! config and reopens the transfer log, SIGTERM and SIGINT stop gracefully
//! (no new connections, running transfers finish within the grace period,
//! exit 0; a second signal stops at once), and systemd is told when the
//! service is ready (`Type=notify`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use dftpd::cluster::{self, ClusterOptions};
use dftpd::config::{self, MasterConfig, PasvWithoutPret, SlaveConfig, UserConfig};
use dftpd::env::Env;
use dftpd::master::Master;
use dftpd::ops::drain::CountingStorage;
use dftpd::ops::preflight::{self, Mode};
use dftpd::ops::{notify, Ops};
use dftpd::slave::storage::DiskStorage;
use dftpd::slave::SlaveTls;

/// Prints a line on standard output, ignoring a closed stdout: a service
/// must not die because whoever read its banner went away.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Parser)]
#[command(
    name = "dftpd",
    version,
    about = "Distributed FTP daemon: one master, many storage slaves"
)]
struct Cli {
    /// Log format on standard error: `text`, or `json` (one JSON object a
    /// line). The level comes from DFTPD_LOG (default: warn,dftpd=info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
        /// PASV without PRET: relay (default: the master carries the bytes
        /// of what cannot go straight to a slave, so every client works),
        /// listings (only listings; file transfers need PRET or active mode)
        /// or refuse.
        #[arg(long, default_value = "relay")]
        pasv_without_pret: String,
        /// Passive port range for master and slaves.
        #[arg(long, default_value = "50000-59999")]
        passive_ports: String,
        /// Let STOR replace existing files (the default; kept for old
        /// command lines).
        #[arg(long, conflicts_with = "no_overwrite")]
        allow_overwrite: bool,
        /// Refuse a STOR onto an existing file (553).
        #[arg(long)]
        no_overwrite: bool,
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
        /// Admin HTTP listener: /metrics (Prometheus), /health, /ready.
        /// Default: a free port on loopback (printed at start).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
        admin_listen: SocketAddr,
        /// No admin listener.
        #[arg(long)]
        no_admin: bool,
        /// Transfer log in the xferlog format (default: DATA_DIR/xferlog).
        #[arg(long, value_name = "FILE")]
        xferlog: Option<PathBuf>,
        /// On SIGTERM/Ctrl-C: how long running transfers may go on (ms).
        #[arg(long, default_value_t = config::DEFAULT_SHUTDOWN_GRACE_MS)]
        shutdown_grace_ms: u64,
        /// Copies of every file on distinct slaves (`[replication] copies`).
        #[arg(long, default_value_t = 1)]
        copies: u32,
        /// Copies an upload waits for before its 226 (`sync_copies`).
        #[arg(long, default_value_t = 1)]
        sync_copies: u32,
        /// Bytes/s a slave may send for background copies
        /// (`rate_per_slave`; 0: no cap).
        #[arg(long, default_value_t = config::ReplicationConfig::default().rate_per_slave)]
        copy_rate: u64,
    },
    /// Run a master from a config file (see master.example.toml).
    Master {
        /// The master's config file (TOML, see master.example.toml).
        /// Without it: the defaults, which refuse to start (link_key).
        #[arg(long, value_name = "FILE")]
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
        /// Check the config (fields, key, TLS files, addresses) and exit:
        /// 0 when it is usable, 1 with the error.
        #[arg(long)]
        check: bool,
    },
    /// Print the argon2id hash of a password (read from standard input, one
    /// line) for `password_hash` in the master's config.
    HashPassword,
    /// Run a slave from a config file (see slave.example.toml).
    Slave {
        /// The slave's config file (TOML, see slave.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Check the config (fields, key, data_ip, root, TLS files) and
        /// exit: 0 when it is usable, 1 with the error.
        #[arg(long)]
        check: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("DFTPD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,dftpd=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn parse_mode(s: &str) -> anyhow::Result<PasvWithoutPret> {
    Ok(match s {
        "listings" => PasvWithoutPret::Listings,
        "refuse" => PasvWithoutPret::Refuse,
        "relay" => PasvWithoutPret::Relay,
        other => bail!("--pasv-without-pret: '{other}' is not one of listings, refuse, relay"),
    })
}

/// The default user's password: made once, kept in the data directory
/// (readable by its owner only) so a restarted cluster accepts the same
/// login.
fn default_user(data_dir: &Path) -> anyhow::Result<UserConfig> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = data_dir.join("default-user.txt");
    let user = |name: &str, password: &str| UserConfig {
        name: name.into(),
        password: password.into(),
        home: "/".into(),
        admin: true,
        ..Default::default()
    };
    if let Ok(text) = std::fs::read_to_string(&file) {
        if let Some((name, password)) = text.trim().split_once(':') {
            // Made world-readable by an older version: close it.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 600 {}", file.display()))?;
            return Ok(user(name, password));
        }
    }
    let env = Env::real();
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let password: String = (0..16)
        .map(|_| ALPHABET[env.rng_range(0, ALPHABET.len() as u64 - 1) as usize] as char)
        .collect();
    std::fs::create_dir_all(data_dir)?;
    let _ = std::fs::remove_file(&file);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .and_then(|mut f| f.write_all(format!("dftpd:{password}\n").as_bytes()))
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(user("dftpd", &password))
}

/// What a signal asks of a running service.
enum Ask {
    Reload,
    Stop(&'static str),
}

/// SIGHUP, SIGTERM and SIGINT, handled from start on (a SIGHUP never
/// kills the process).
struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Signals> {
        Ok(Signals {
            hup: signal(SignalKind::hangup()).context("SIGHUP handler")?,
            term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> Ask {
        tokio::select! {
            _ = self.hup.recv() => Ask::Reload,
            _ = self.term.recv() => Ask::Stop("SIGTERM"),
            _ = self.int.recv() => Ask::Stop("SIGINT"),
        }
    }

    /// Runs `drain` unless a second SIGTERM/SIGINT comes first (then
    /// `None`: stop now). SIGHUP meanwhile is ignored.
    async fn drain<F: std::future::Future<Output = u32>>(&mut self, drain: F) -> Option<u32> {
        tokio::pin!(drain);
        loop {
            tokio::select! {
                left = &mut drain => return Some(left),
                ask = self.next() => match ask {
                    Ask::Reload => tracing::info!("SIGHUP while stopping: ignored"),
                    Ask::Stop(sig) => {
                        tracing::warn!("{sig} again: stopping now");
                        return None;
                    }
                },
            }
        }
    }
}

/// Logs how a graceful stop went.
fn log_drained(outcome: Option<u32>, grace: Duration) {
    match outcome {
        Some(0) => tracing::info!("no transfer running; stopping"),
        Some(n) => tracing::warn!(
            running = n,
            "grace period of {} ms over: cutting the transfers still running",
            grace.as_millis()
        ),
        None => {}
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("DFTPD_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    let result = rt
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dftpd: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error once, on one line: its context chain joined with ": ", each
/// cause left out when the text before already says it (errors whose
/// message includes their source), line breaks folded.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn run(cmd: Cmd) -> anyhow::Result<()> {
    match cmd {
        Cmd::Cluster {
            listen,
            slaves,
            data_dir,
            users,
            link_listen,
            pasv_without_pret,
            passive_ports,
            allow_overwrite: _,
            no_overwrite,
            data_timeout_ms,
            record,
            tls,
            require_tls_control,
            require_tls_data,
            fxp,
            first_slave_ip,
            admin_listen,
            no_admin,
            xferlog,
            shutdown_grace_ms,
            copies,
            sync_copies,
            copy_rate,
        } => {
            let mut signals = Signals::install()?;
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
            config::parse_port_range(&passive_ports).context("--passive-ports")?;
            config::ReplicationConfig {
                copies,
                sync_copies,
                ..Default::default()
            }
            .validate()
            .map_err(anyhow::Error::msg)?;
            let admin_listen = (!no_admin).then_some(admin_listen);
            let mut addrs = vec![("--listen", listen), ("--link-listen", link_listen)];
            addrs.extend(admin_listen.map(|a| ("--admin-listen", a)));
            preflight::check_listen_addrs(&addrs, Mode::Start, &mut Vec::new())?;
            let printed_user = if user_configs.is_empty() {
                let u = default_user(&data_dir)?;
                user_configs.push(u.clone());
                Some(u)
            } else {
                None
            };
            let opts = ClusterOptions {
                listen,
                link_listen,
                slaves,
                xferlog: Some(xferlog.unwrap_or_else(|| data_dir.join("xferlog"))),
                data_dir,
                users: user_configs,
                pasv_without_pret: parse_mode(&pasv_without_pret)?,
                passive_ports,
                allow_overwrite: !no_overwrite,
                data_timeout_ms,
                record_dir: record,
                tls,
                require_tls_control,
                require_tls_data,
                first_slave_ip,
                admin_listen,
                copies,
                sync_copies,
                copy_rate,
            };
            let c = cluster::start(opts).await.context("starting the cluster")?;
            say!(
                "master ready on {} (slave link {})",
                c.master.control_addr,
                c.master.link_addr
            );
            for s in &c.slaves {
                say!(
                    "{} ready: data address {}, storage {}",
                    s.name,
                    s.data_ip,
                    s.root.display()
                );
            }
            if let Some(t) = &c.tls {
                say!(
                    "tls: certificate {} sha256 {} (self-signed: curl -k or --cacert; AUTH TLS on the master, PROT P on the slaves, link over TLS)",
                    t.cert.display(),
                    t.fingerprint
                );
            }
            print_ops(&c.ops);
            for line in routing_lines(opts_mode(&c), true) {
                say!("{line}");
            }
            if let Some(u) = printed_user {
                say!("login: user {} password {}", u.name, u.password);
            }
            say!(
                "cluster ready: ftp://{} (Ctrl-C to stop)",
                c.master.control_addr
            );
            notify::ready(&format!("serving ftp://{}", c.master.control_addr));
            let grace = Duration::from_millis(shutdown_grace_ms);
            loop {
                match signals.next().await {
                    Ask::Reload => {
                        tracing::info!("SIGHUP: the cluster has no config file to reload");
                        c.ops.reopen_logs();
                    }
                    Ask::Stop(sig) => {
                        stopping(sig, c.master.running_transfers(), grace);
                        let outcome = signals.drain(c.drain(grace)).await;
                        log_drained(outcome, grace);
                        c.stop();
                        break;
                    }
                }
            }
            say!("cluster stopped");
        }
        Cmd::Master {
            config,
            listen,
            record,
            store,
            rebuild,
            check,
        } => {
            let load = || -> anyhow::Result<MasterConfig> {
                let mut cfg: MasterConfig = match &config {
                    Some(p) => config::load(p)?,
                    None => MasterConfig::default(),
                };
                if let Some(l) = listen {
                    cfg.listen = l;
                }
                if record.is_some() {
                    cfg.record_dir = record.clone();
                }
                if store.is_some() {
                    cfg.store = store.clone();
                }
                Ok(cfg)
            };
            let label = config_label(config.as_deref());
            let cfg = load()?;
            if check {
                let warnings =
                    preflight::check_master(&cfg, Mode::Check).with_context(|| label.clone())?;
                dftpd::master::MasterTls::load(&cfg)
                    .with_context(|| format!("{label}: tls_cert/tls_key"))?;
                for w in warnings {
                    say!("warning: {w}");
                }
                say!("{label}: ok");
                return Ok(());
            }
            let mut signals = Signals::install()?;
            for w in preflight::check_master(&cfg, Mode::Start).with_context(|| label.clone())? {
                tracing::warn!("{w}");
            }
            if rebuild {
                let Some(path) = &cfg.store else {
                    bail!("--rebuild needs a store file (`store` in the config or --store)");
                };
                let done = dftpd::master::store::rebuild(path, Env::real().unix_now())?;
                say!("{done}");
            }
            let addrs = preflight::master_addrs(&cfg);
            let (admin_listen, xferlog) = (cfg.admin_listen, cfg.xferlog.clone());
            let m = Master::start(Env::real(), cfg).await.map_err(|e| {
                anyhow::anyhow!(
                    "starting the master: {}",
                    preflight::explain_bind_error(&addrs, &e)
                )
            })?;
            let m = Arc::new(m);
            let ops = m.start_ops(admin_listen, xferlog.as_deref()).await?;
            say!(
                "master ready on {} (slave link {})",
                m.control_addr,
                m.link_addr
            );
            let fingerprint = m.state.tls().map(|t| t.fingerprint.clone());
            if let Some(fp) = fingerprint {
                say!("tls: certificate sha256 {fp} (slaves pin it with master_cert_pin)");
            }
            print_ops(&ops);
            let mode = m.state.lock().config.pasv_without_pret;
            for line in routing_lines(mode, false) {
                say!("{line}");
            }
            tracing::info!(pasv_without_pret = ?mode, "transfers without PRET: {}", mode_summary(mode));
            notify::ready(&format!("serving ftp://{}", m.control_addr));
            loop {
                match signals.next().await {
                    Ask::Reload => {
                        notify::reloading();
                        reload_master(&m, config.as_deref(), &load).await;
                        ops.reopen_logs();
                        notify::reloaded(&format!("serving ftp://{}", m.control_addr));
                    }
                    Ask::Stop(sig) => {
                        let grace = m.state.lock().config.shutdown_grace();
                        stopping(sig, m.running_transfers(), grace);
                        let outcome = signals.drain(m.drain(grace)).await;
                        log_drained(outcome, grace);
                        break;
                    }
                }
            }
            say!("master stopped");
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
            say!("{hash}");
        }
        Cmd::Slave { config, check } => {
            let label = config_label(config.as_deref());
            let cfg: SlaveConfig = match &config {
                Some(p) => config::load(p)?,
                None => SlaveConfig::default(),
            };
            let mode = if check { Mode::Check } else { Mode::Start };
            let warnings = preflight::check_slave(&cfg, mode).with_context(|| label.clone())?;
            let tls = SlaveTls::load(&cfg).with_context(|| format!("{label}: TLS settings"))?;
            if check {
                for w in warnings {
                    say!("warning: {w}");
                }
                say!("{label}: ok");
                return Ok(());
            }
            for w in warnings {
                tracing::warn!("{w}");
            }
            let mut signals = Signals::install()?;
            if !cfg.root.exists() {
                std::fs::create_dir_all(&cfg.root)
                    .with_context(|| format!("{label}: root {}", cfg.root.display()))?;
                tracing::info!(root = %cfg.root.display(), "storage root created (create_root = true)");
            }
            let disk = DiskStorage::new(&cfg.root)
                .with_context(|| format!("{label}: root {}", cfg.root.display()))?;
            let storage = Arc::new(CountingStorage::new(Arc::new(disk)));
            let transfers = storage.count();
            let (tx, rx) = watch::channel(false);
            let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel();
            let name = cfg.name.clone();
            let ip = cfg.advertised_ip();
            let grace = cfg.shutdown_grace();
            let task = tokio::spawn(dftpd::slave::run_with_tls(
                Env::real(),
                cfg,
                tls,
                storage,
                rx,
                Some(ready_tx),
            ));
            let mut announced = false;
            loop {
                tokio::select! {
                    // Each reconnection reports ready again: say it once.
                    Some(_) = ready_rx.recv(), if !announced => {
                        announced = true;
                        say!("{name} ready: data address {ip}, connected to master");
                        notify::ready(&format!("{name} connected to master"));
                    }
                    ask = signals.next() => match ask {
                        Ask::Reload => tracing::info!("SIGHUP: a slave reads its config at start only; restart it to apply changes"),
                        Ask::Stop(sig) => {
                            stopping(sig, transfers.running() as u32, grace);
                            let outcome = signals
                                .drain(async { transfers.wait_idle(grace).await as u32 })
                                .await;
                            log_drained(outcome, grace);
                            break;
                        }
                    },
                }
            }
            let _ = tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            say!("{name} stopped");
        }
    }
    Ok(())
}

/// How a config file is named in errors.
fn config_label(path: Option<&Path>) -> String {
    match path {
        Some(p) => p.display().to_string(),
        None => "the default config".to_string(),
    }
}

/// The running mode of a cluster's master.
fn opts_mode(c: &cluster::Cluster) -> PasvWithoutPret {
    c.master.state.lock().config.pasv_without_pret
}

/// What happens to a passive transfer without PRET, in a few words.
fn mode_summary(mode: PasvWithoutPret) -> &'static str {
    match mode {
        PasvWithoutPret::Relay => "relayed through the master",
        PasvWithoutPret::Listings => {
            "listings only; file transfers get a 503 naming PRET (pasv_without_pret = listings)"
        }
        PasvWithoutPret::Refuse => "PASV refused (pasv_without_pret = refuse)",
    }
}

/// The banner lines saying which transfers go straight to the slaves,
/// which the master relays, and how to change that (`cluster`: as flags,
/// else as the config field).
fn routing_lines(mode: PasvWithoutPret, cluster: bool) -> Vec<String> {
    let (off, on) = if cluster {
        ("--pasv-without-pret listings", "--pasv-without-pret relay")
    } else {
        (
            "pasv_without_pret = \"listings\"",
            "pasv_without_pret = \"relay\"",
        )
    };
    let direct = "direct: PRET then PASV (lftp, rclone, curl --ftp-pret --no-ftp-skip-pasv-ip) and active mode (PORT) go straight to the slaves";
    let other = match mode {
        PasvWithoutPret::Relay => format!("relayed: PASV without PRET, and clients that ignore the 227 address, go through the master ({off} turns relaying off)"),
        PasvWithoutPret::Listings => format!("not relayed: PASV without PRET serves listings only, file transfers get a 503 naming PRET ({on} relays them)"),
        PasvWithoutPret::Refuse => format!("not relayed: PASV without PRET is refused with DrFTPD's 500 ({on} relays such transfers)"),
    };
    vec![direct.to_string(), other]
}

/// The admin and transfer-log lines of the ready banner.
fn print_ops(ops: &Ops) {
    if let Some(a) = &ops.admin {
        say!(
            "metrics: http://{}/metrics (health: /health, readiness: /ready)",
            a.addr
        );
    }
    if let Some(x) = &ops.xferlog {
        say!("transfer log: {}", x.path().display());
    }
}

fn stopping(sig: &str, running: u32, grace: Duration) {
    notify::stopping(&format!("{sig}: stopping"));
    tracing::info!(
        running,
        "{sig}: stopping: no new connections; running transfers get up to {} ms",
        grace.as_millis()
    );
}

/// SIGHUP on a master: reads the config file again and applies it, or
/// keeps the running one and says why.
async fn reload_master(
    m: &Arc<Master>,
    path: Option<&Path>,
    load: &dyn Fn() -> anyhow::Result<MasterConfig>,
) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: started without --config, nothing to reload");
        return;
    };
    let cfg = match load().and_then(|c| {
        for w in preflight::check_master(&c, Mode::Reload)? {
            tracing::warn!("{w}");
        }
        Ok(c)
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(config = %path.display(), "reload refused, the running config is kept: {}", one_line(&e));
            return;
        }
    };
    let master = m.clone();
    // Hashing new passwords takes a while: off the runtime's workers.
    let done = tokio::task::spawn_blocking(move || master.reload(&Env::real(), cfg)).await; // seam-ok: main.rs is production only
    match done {
        Ok(Ok(report)) => {
            tracing::info!(config = %path.display(), "config reloaded: {report}");
            if !report.need_restart.is_empty() {
                tracing::warn!(
                    "changed but not applied until a restart: {}",
                    report.need_restart.join(", ")
                );
            }
            if report.new_certificate.is_some() {
                let link_tls = m.state.lock().config.link_tls;
                if link_tls {
                    tracing::warn!("the TLS certificate changed: slaves pinning the old one (master_cert_pin) will refuse the link when they reconnect; update their pins");
                }
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(config = %path.display(), "reload refused, the running config is kept: {}", one_line(&anyhow::Error::from(e)))
        }
        Err(e) => tracing::error!("reload failed: {e}"),
    }
}

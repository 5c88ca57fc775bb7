//! The scenario runner: builds one turmoil simulation per (scenario, seed)
//! — the real master, one host per slave over a [`MemDisk`] kept outside
//! the host, one scripted client host per scenario client — then drives the
//! script step by step from outside the simulation and checks the
//! invariants.
//!
//! Cluster events (slave online/remerging/offline) are read from the
//! master's own registry: the runner holds the `MasterState` handle the
//! master host publishes when it starts, and looks at it after every
//! simulation step (never while the master holds the lock: the lock is
//! never held across an `.await`, and the runner only runs between steps).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dftpd::config::{MasterConfig, SlaveConfig, UserConfig};
use dftpd::master::lock;
use dftpd::master::registry::SlaveState;
use dftpd::master::store::{MetaStore, SharedMemory};
use dftpd::master::{Master, Shared};
use dftpd::proto::VPath;
use dftpd::slave::mem::{MemDisk, MemStorage};
use tokio::sync::{mpsc, watch};

use crate::client::{self, ClientWorld, SharedTranscript, Transcript};
use crate::env::{content, epoch, sim_env, splitmix, SimClock, EPOCH_SECS, TCP_CAPACITY};
use crate::script::{ClientOp, Scenario, SlaveStateWanted, StepKind};

mod checks;
mod steps;

/// The FTP control port and the link port inside the simulation.
pub const CONTROL_PORT: u16 = 21;
pub const LINK_PORT: u16 = 2100;
const LINK_KEY: &str = "sim-link-key";
/// How long the cluster may take to come up, and to settle at the end.
const SETTLE: Duration = Duration::from_secs(90);
/// The longest a foreground client step may take.
const STEP_LIMIT: Duration = Duration::from_secs(600);
/// Lower bound of every message's latency.
const MIN_LATENCY: Duration = Duration::from_millis(1);
/// Simulated time a run may use in total.
const SIM_LIMIT: Duration = Duration::from_secs(4 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("config {key}={value}: {msg}")]
    Config {
        key: String,
        value: String,
        msg: String,
    },
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub transcript: String,
    /// Invariants violated, in the order seen.
    pub violations: Vec<String>,
    /// Simulated time the run took.
    pub sim_time: Duration,
    /// Differences between the scenario's expected replies (`NAME< TEXT`)
    /// and the ones received, after normalisation; empty when they agree
    /// or the scenario expects none.
    pub reply_diff: Vec<String>,
}

impl Outcome {
    /// Violations that the scenario did not declare with `expect-violation`,
    /// plus declared ones that did not happen.
    pub fn failures(&self, sc: &Scenario) -> Vec<String> {
        let mut out: Vec<String> = self
            .violations
            .iter()
            .filter(|v| {
                !sc.expected_violations
                    .iter()
                    .any(|e| v.contains(e.as_str()))
            })
            .cloned()
            .collect();
        if !self.reply_diff.is_empty() {
            out.push(format!(
                "replies differ from the expected ones ({} difference line(s)):\n{}",
                self.reply_diff.len(),
                self.reply_diff.join("\n")
            ));
        }
        for e in &sc.expected_violations {
            if !self.violations.iter().any(|v| v.contains(e.as_str())) {
                out.push(format!(
                    "expected violation '{e}' did not happen (fixed? remove the expect-violation line)"
                ));
            }
        }
        out
    }
}

thread_local! {
    /// Panics seen while a simulation runs on this thread (a panicking
    /// tokio task inside a host is otherwise swallowed by its runtime).
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let recorded = PANICS.with(|p| {
                if let Some(v) = p.borrow_mut().as_mut() {
                    v.push(info.to_string());
                    true
                } else {
                    false
                }
            });
            if !recorded {
                previous(info);
            }
        }));
    });
}

/// Builds the master configuration: defaults, the simulation's addresses,
/// the scenario's users, then its `config key=value` overrides (parsed as
/// TOML values so the master's own validation applies).
fn master_config(sc: &Scenario) -> Result<MasterConfig, SetupError> {
    let base = MasterConfig {
        listen: ([0, 0, 0, 0], CONTROL_PORT).into(),
        link_listen: ([0, 0, 0, 0], LINK_PORT).into(),
        link_key: LINK_KEY.into(),
        users: sc
            .topology
            .users
            .iter()
            .map(|u| UserConfig {
                name: u.name.clone(),
                // A recording's placeholder: the client's `$PASSWORD`
                // expands to the same value.
                password: if u.password == dftpd::master::record::PASSWORD_PLACEHOLDER {
                    crate::script::REPLAY_PASSWORD.to_string()
                } else {
                    u.password.clone()
                },
                home: u.home.clone(),
                admin: u.admin,
                ..Default::default()
            })
            .collect(),
        // Still argon2id, cheap: scenarios log in a lot.
        password_cost: dftpd::master::users::PasswordCost::FAST,
        // The scenario's slaves are the ones this master knows.
        slaves: sc.topology.slaves.iter().map(|s| s.name.clone()).collect(),
        ..MasterConfig::default()
    };
    let cfg: MasterConfig = overlay(&base, &sc.topology.master_config)?;
    cfg.validate().map_err(|e| SetupError::Config {
        key: "config".into(),
        value: String::new(),
        msg: e.to_string(),
    })?;
    Ok(cfg)
}

fn slave_config(
    sc: &Scenario,
    master: &MasterConfig,
    name: &str,
) -> Result<SlaveConfig, SetupError> {
    let base = SlaveConfig {
        name: name.to_string(),
        master: ([0, 0, 0, 0], LINK_PORT).into(),
        link_key: LINK_KEY.into(),
        // The runner fills in the host's own address when it starts.
        data_ip: [0, 0, 0, 0].into(),
        heartbeat_interval_ms: master.heartbeat_interval_ms,
        heartbeat_misses: master.heartbeat_misses,
        ..SlaveConfig::default()
    };
    overlay(&base, &sc.topology.slave_config)
}

fn overlay<T>(base: &T, overrides: &[(String, String)]) -> Result<T, SetupError>
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let err = |k: &str, v: &str, msg: String| SetupError::Config {
        key: k.to_string(),
        value: v.to_string(),
        msg,
    };
    let mut table = toml::Table::try_from(base).map_err(|e| err("", "", e.to_string()))?;
    for (k, v) in overrides {
        // A TOML value if it is one (numbers, booleans), else a string.
        let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(v.clone()));
        // `a.b = v` sets key b of table a (`replication.copies=2`).
        let mut at = &mut table;
        let mut parts = k.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                at.insert(part.to_string(), value.clone());
                break;
            }
            let next = at
                .entry(part.to_string())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(t) = next.as_table_mut() else {
                return Err(err(k, v, format!("{part} is not a table")));
            };
            at = t;
        }
    }
    let text = toml::to_string(&table).map_err(|e| err("", "", e.to_string()))?;
    toml::from_str(&text).map_err(|e| {
        let (k, v) = overrides.last().cloned().unwrap_or_default();
        err(&k, &v, e.message().to_string())
    })
}

struct ClientHandle {
    tx: mpsc::UnboundedSender<ClientOp>,
    pending: Rc<Cell<usize>>,
    data_bytes: Rc<Cell<u64>>,
    link_faults: Rc<Cell<u64>>,
    /// Operations given, and begun by the client.
    given: Cell<usize>,
    started: Rc<Cell<usize>>,
}

/// How simulated time and the network run. Scenarios: 1 ms steps and a
/// latency between 1 ms and a seed-chosen 2-21 ms per message. A replay
/// runs finer and faster, like the loopback it was recorded on (see
/// `replay`), so commands keep their recorded times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// One simulation step.
    pub tick: Duration,
    /// Every message's latency, fixed; `None`: the seed's range.
    pub latency: Option<Duration>,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            tick: Duration::from_millis(1),
            latency: None,
        }
    }
}

struct World<'a> {
    sim: turmoil::Sim<'a>,
    sc: &'a Scenario,
    transcript: SharedTranscript,
    master_slot: Arc<Mutex<Option<Shared>>>,
    master_epoch: Rc<Cell<u64>>,
    clients: BTreeMap<String, ClientHandle>,
    probe: ClientHandle,
    probe_transcript: SharedTranscript,
    disks: Rc<BTreeMap<String, MemDisk>>,
    /// The master's metadata store: outlives the master host, like a disk.
    master_store: SharedMemory,
    crashed: BTreeSet<String>,
    /// Host pairs (sorted) that are partitioned or held.
    cut: BTreeSet<(String, String)>,
    states: BTreeMap<String, &'static str>,
    /// Running transfers per slave, as last seen.
    active: BTreeMap<String, u32>,
    /// Set when the simulation itself failed; the run stops.
    broken: Option<String>,
    /// This run's latency bounds.
    min_latency: Duration,
    max_latency: Duration,
    /// See [`ClientWorld::head_start`].
    head_start: Duration,
    /// When the script's steps began (the cluster was up): `at` counts
    /// from here.
    script_start: Duration,
    /// The master's store was wiped: what only it knew is gone, so the
    /// history check does not apply.
    store_wiped: bool,
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_string(), b.to_string())
    } else {
        (b.to_string(), a.to_string())
    }
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}s", d.as_secs(), d.subsec_millis())
}

/// Runs `sc` under `seed`. Never panics on account of the scenario: a
/// panic anywhere in the simulation becomes a violation.
pub fn run(sc: &Scenario, seed: u64) -> Outcome {
    run_timed(sc, seed, Timing::default())
}

/// [`run`] with another [`Timing`].
pub fn run_timed(sc: &Scenario, seed: u64, timing: Timing) -> Outcome {
    install_panic_hook();
    PANICS.with(|p| *p.borrow_mut() = Some(Vec::new()));
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_inner(sc, seed, timing)));
    let panics = PANICS.with(|p| p.borrow_mut().take()).unwrap_or_default();
    let mut outcome = match result {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome {
            transcript: format!("# setup failed: {e}\n"),
            violations: vec![format!("setup: {e}")],
            sim_time: Duration::ZERO,
            reply_diff: Vec::new(),
        },
        Err(_) => Outcome {
            transcript: String::from("# the simulation panicked\n"),
            violations: Vec::new(),
            sim_time: Duration::ZERO,
            reply_diff: Vec::new(),
        },
    };
    for p in panics {
        let line = format!("panic: {p}");
        outcome
            .transcript
            .push_str(&format!("!! INVARIANT: {line}\n"));
        outcome.violations.push(line);
    }
    outcome
}

fn run_inner(sc: &Scenario, seed: u64, timing: Timing) -> Result<Outcome, SetupError> {
    let mcfg = master_config(sc)?;
    let mut slave_cfgs = Vec::new();
    for s in &sc.topology.slaves {
        slave_cfgs.push(slave_config(sc, &mcfg, &s.name)?);
    }
    // Latency bounds vary with the seed; turmoil draws each message's
    // latency between them from the same seed.
    let (min_latency, max_latency) = match timing.latency {
        Some(l) => (l, l),
        None => (MIN_LATENCY, Duration::from_millis(2 + splitmix(seed) % 20)),
    };
    let sim = turmoil::Builder::new()
        .rng_seed(seed)
        .epoch(epoch())
        .simulation_duration(SIM_LIMIT)
        .tick_duration(timing.tick)
        .min_message_latency(min_latency)
        .max_message_latency(max_latency)
        // One slot more than a `SimStream` ever has in flight: a FIN always
        // finds room in the receive queue (see `env::WINDOW`).
        .tcp_capacity(TCP_CAPACITY)
        .enable_random_order()
        .build();
    let transcript: SharedTranscript = Rc::new(RefCell::new(Transcript::default()));
    let mut disks = BTreeMap::new();
    for s in &sc.topology.slaves {
        let capacity = match s.avail {
            // `avail=`: what is free once the declared files are stored.
            Some(avail) => sc
                .topology
                .files
                .iter()
                .filter(|f| f.slaves.contains(&s.name))
                .fold(avail, |c, f| c.saturating_add(f.size)),
            None => s.free,
        };
        disks.insert(s.name.clone(), MemDisk::new(capacity));
    }
    for f in &sc.topology.files {
        let data = content(f.seed, f.size);
        for s in &f.slaves {
            if let Some(d) = disks.get(s) {
                d.put(f.path.clone(), data.clone(), EPOCH_SECS as i64);
            }
        }
    }
    let mut d = World {
        sim,
        sc,
        transcript: transcript.clone(),
        master_slot: Arc::new(Mutex::new(None)),
        master_epoch: Rc::new(Cell::new(0)),
        clients: BTreeMap::new(),
        probe: ClientHandle {
            tx: mpsc::unbounded_channel().0,
            pending: Rc::new(Cell::new(0)),
            data_bytes: Rc::new(Cell::new(0)),
            link_faults: Rc::new(Cell::new(0)),
            given: Cell::new(0),
            started: Rc::new(Cell::new(0)),
        },
        probe_transcript: Rc::new(RefCell::new(Transcript::default())),
        disks: Rc::new(disks),
        master_store: SharedMemory::new(),
        crashed: BTreeSet::new(),
        store_wiped: false,
        cut: BTreeSet::new(),
        states: BTreeMap::new(),
        active: BTreeMap::new(),
        broken: None,
        min_latency,
        max_latency,
        head_start: match timing.latency {
            Some(l) => 2 * l + timing.tick,
            None => client::IGNORED_ADDRESS_HEAD_START,
        },
        script_start: Duration::ZERO,
    };
    d.declare_dirs()?;
    d.add_hosts(seed, mcfg, slave_cfgs);
    d.log(format!(
        "# scenario {} seed {seed}: {} slaves, {} clients",
        sc.name,
        sc.topology.slaves.len(),
        sc.topology.clients.len()
    ));
    d.start();
    d.script_start = d.sim.elapsed();
    for step in &sc.steps {
        if d.broken.is_some() {
            break;
        }
        d.exec(step.line, &step.kind);
    }
    if d.broken.is_none() {
        d.finish();
    }
    if let Some(b) = d.broken.clone() {
        d.violation(format!("simulation: {b}"));
    }
    let reply_diff = crate::diff::reply_diff(sc, &transcript.borrow().lines);
    let t = transcript.borrow();
    let mut text = String::new();
    for l in &t.lines {
        text.push_str(l);
        text.push('\n');
    }
    for l in &reply_diff {
        text.push_str(&format!("!! REPLY DIFF {l}\n"));
    }
    text.push_str(&format!(
        "# end at {}: {} violation(s)\n",
        secs(d.sim.elapsed()),
        t.violations.len()
    ));
    Ok(Outcome {
        transcript: text,
        violations: t.violations.clone(),
        sim_time: d.sim.elapsed(),
        reply_diff,
    })
}

impl<'a> World<'a> {
    /// `dir` lines: directories (and their parents) the master's store
    /// holds before it starts, owned by `dftpd`.
    fn declare_dirs(&mut self) -> Result<(), SetupError> {
        use dftpd::master::db::{Change, StoredNode};
        let mut all = BTreeSet::new();
        for d in &self.sc.topology.dirs {
            let mut p = Some(d.path.clone());
            while let Some(x) = p.filter(|x| !x.is_root()) {
                p = x.parent();
                all.insert(x);
            }
        }
        if all.is_empty() {
            return Ok(());
        }
        let err = |e: String| SetupError::Config {
            key: "dir".into(),
            value: String::new(),
            msg: e,
        };
        let store = MetaStore::open_memory(&self.master_store).map_err(|e| err(e.to_string()))?;
        let mut changes = vec![Change::Name(0, "dftpd".into())];
        // Parents sort before their children.
        for p in all {
            changes.push(Change::Put(
                p,
                StoredNode::Dir {
                    mtime: EPOCH_SECS as i64,
                    owner: 0,
                    group: 0,
                },
            ));
        }
        store.apply(&changes).map_err(|e| err(e.to_string()))
    }

    fn log(&self, line: String) {
        self.transcript.borrow_mut().lines.push(line);
    }

    fn event(&self, what: String) {
        self.log(format!("== [{}] {what}", secs(self.sim.elapsed())));
    }

    fn violation(&self, what: String) {
        self.log(format!("!! INVARIANT: {what}"));
        self.transcript.borrow_mut().violations.push(what);
    }

    fn add_hosts(&mut self, seed: u64, mcfg: MasterConfig, slave_cfgs: Vec<SlaveConfig>) {
        let slot = self.master_slot.clone();
        let incarnation = Rc::new(Cell::new(0u64));
        let mcfg = Arc::new(mcfg);
        let mem = self.master_store.clone();
        let ftps = self.sc.topology.ftps;
        self.sim.host("master", move || {
            let slot = slot.clone();
            let cfg = (*mcfg).clone();
            let n = incarnation.get();
            incarnation.set(n + 1);
            let mem = mem.clone();
            async move {
                let env = sim_env(seed, "master", n);
                let store = MetaStore::open_memory(&mem)?;
                let master = Master::start_with_store(env, cfg, store).await?;
                if ftps {
                    master.state.simulate_tls();
                }
                *lock(&slot) = Some(master.state.clone());
                std::future::pending::<()>().await;
                drop(master);
                Ok(())
            }
        });
        let master_ip = self.sim.lookup("master");
        for mut cfg in slave_cfgs {
            cfg.master = SocketAddr::new(master_ip, LINK_PORT);
            let disk = self.disks.get(&cfg.name).cloned().unwrap_or_default();
            let incarnation = Rc::new(Cell::new(0u64));
            let name = cfg.name.clone();
            self.sim.host(name.as_str(), move || {
                let mut cfg = cfg.clone();
                let disk = disk.clone();
                let n = incarnation.get();
                incarnation.set(n + 1);
                async move {
                    cfg.data_ip = turmoil::lookup(cfg.name.as_str());
                    let env = sim_env(seed, &cfg.name, n);
                    let storage = Arc::new(MemStorage::new(disk, Arc::new(SimClock)));
                    let (keep, shutdown) = watch::channel(false);
                    dftpd::slave::run(env, cfg, storage, shutdown, None).await;
                    drop(keep);
                    Ok(())
                }
            });
        }
        let master = SocketAddr::new(master_ip, CONTROL_PORT);
        let names: Vec<String> = self.sc.topology.clients.iter().cloned().collect();
        for name in names {
            let (handle, world, rx) = self.client_world(&name, master, self.transcript.clone());
            // A host, not a turmoil "client", so that it can be crashed; it
            // is not restarted (its channel is taken by the first start).
            let parts = RefCell::new(Some((world, rx)));
            self.sim.host(name.as_str(), move || {
                let parts = parts.borrow_mut().take();
                async move {
                    match parts {
                        Some((world, rx)) => client::run(world, rx).await,
                        None => Ok(()),
                    }
                }
            });
            self.clients.insert(name, handle);
        }
        let (probe, world, rx) = self.client_world("probe", master, self.probe_transcript.clone());
        self.sim.client("probe", client::run(world, rx));
        self.probe = probe;
    }

    fn client_world(
        &self,
        name: &str,
        master: SocketAddr,
        transcript: SharedTranscript,
    ) -> (ClientHandle, ClientWorld, mpsc::UnboundedReceiver<ClientOp>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = ClientHandle {
            tx,
            pending: Rc::new(Cell::new(0)),
            data_bytes: Rc::new(Cell::new(0)),
            link_faults: Rc::new(Cell::new(0)),
            given: Cell::new(0),
            started: Rc::new(Cell::new(0)),
        };
        let world = ClientWorld {
            name: name.to_string(),
            master,
            transcript,
            disks: self.disks.clone(),
            pending: handle.pending.clone(),
            data_bytes: handle.data_bytes.clone(),
            link_faults: handle.link_faults.clone(),
            master_epoch: self.master_epoch.clone(),
            started: handle.started.clone(),
            head_start: self.head_start,
            latency: self.max_latency,
            master_state: self.master_slot.clone(),
        };
        (handle, world, rx)
    }

    /// One simulation step, then a look at the master's registry.
    fn step(&mut self) {
        if self.broken.is_some() {
            return;
        }
        if let Err(e) = self.sim.step() {
            self.broken = Some(e.to_string());
            return;
        }
        self.poll_events();
    }

    /// Steps until `done` holds or `limit` of simulated time passes.
    /// Returns whether `done` held.
    fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let end = self.sim.elapsed() + limit;
        loop {
            if done(self) {
                return true;
            }
            if self.broken.is_some() || self.sim.elapsed() >= end {
                return false;
            }
            self.step();
        }
    }

    fn master_state(&self) -> Option<Shared> {
        lock(&self.master_slot).clone()
    }

    fn slave_state(&self, name: &str) -> &'static str {
        self.states.get(name).copied().unwrap_or("offline")
    }

    /// Records what changed in the master's registry since the last look:
    /// slave states (with the file count a remerge left), and running
    /// transfers per slave (a transfer's start and end).
    fn poll_events(&mut self) {
        let Some(state) = self.master_state() else {
            return;
        };
        let now: Vec<(String, &'static str, u64, u32)> = {
            let st = state.lock();
            st.slaves
                .iter()
                .map(|(id, s)| {
                    let shown = if s.state == SlaveState::Online && !st.links.contains_key(&id) {
                        "offline"
                    } else {
                        s.state.as_str()
                    };
                    (s.name.clone(), shown, st.db.held_by(id), s.active)
                })
                .collect()
        };
        for (name, s, files, active) in now {
            // A slave first seen offline (known from the config, not yet
            // connected) was offline all along: no event.
            let before = self.states.get(&name).copied().unwrap_or("offline");
            if self.states.get(&name) != Some(&s) {
                self.states.insert(name.clone(), s);
                if before == s {
                } else if s == "online" {
                    self.event(format!("slave {name} online ({files} files)"));
                } else {
                    self.event(format!("slave {name} {s}"));
                }
            }
            let before = self.active.get(&name).copied().unwrap_or(0);
            if before != active {
                self.active.insert(name.clone(), active);
                self.event(format!("slave {name} transfers {before} -> {active}"));
            }
        }
    }

    fn client_idle(&mut self, name: &str) -> bool {
        let pending = self.clients.get(name).map_or(0, |c| c.pending.get());
        pending == 0 || self.crashed.contains(name) || !self.sim.is_host_running(name)
    }

    fn master_up(&self) -> bool {
        !self.crashed.contains("master")
    }

    fn reachable(&self, slave: &str) -> bool {
        self.master_up()
            && !self.crashed.contains(slave)
            && !self.cut.contains(&pair("master", slave))
    }

    fn all_reachable_online(&self) -> Vec<String> {
        self.sc
            .topology
            .slaves
            .iter()
            .filter(|s| self.reachable(&s.name) && self.slave_state(&s.name) != "online")
            .map(|s| s.name.clone())
            .collect()
    }

    fn start(&mut self) {
        let ok = self.run_until(SETTLE, |d| d.all_reachable_online().is_empty());
        if ok {
            self.event("cluster up".into());
        } else {
            let missing = self.all_reachable_online().join(", ");
            self.violation(format!("cluster did not come up: {missing} not online"));
        }
    }

    fn give(&mut self, client: &str, op: ClientOp) {
        if self.crashed.contains(client) {
            self.log(format!("{client}! is down (crashed); step skipped"));
            return;
        }
        if let Some(c) = self.clients.get(client) {
            c.pending.set(c.pending.get() + 1);
            c.given.set(c.given.get() + 1);
            let _ = c.tx.send(op);
        }
    }

    fn wait_clients(&mut self, line: usize, names: &[String]) {
        let names: Vec<String> = if names.iter().any(|n| n == "all") {
            self.clients.keys().cloned().collect()
        } else {
            names.to_vec()
        };
        let ok = self.run_until(STEP_LIMIT, |d| names.iter().all(|n| d.client_idle(n)));
        if !ok && self.broken.is_none() {
            self.violation(format!(
                "line {line}: clients still busy after {}",
                secs(STEP_LIMIT)
            ));
        }
    }

    /// Runs a crash or bounce with every message latency fixed.
    ///
    /// Dropping a host's runtime drops its tasks in an order that depends
    /// on tokio's process-global task ids (`task_id % 4` picks the shard
    /// shut down first), so the connection closes it sends (FIN/RST) leave
    /// in an order that differs between runs in one process, or between
    /// runs on parallel threads. Each message draws its latency from the
    /// seeded RNG in send order; with min = max latency every draw gives the
    /// same delay, so the order no longer matters and the run stays a
    /// function of its seed.
    fn without_latency_variance(&mut self, f: impl FnOnce(&mut turmoil::Sim<'a>)) {
        self.sim.set_max_message_latency(self.min_latency);
        f(&mut self.sim);
        self.sim.set_max_message_latency(self.max_latency);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

    fn scenario(text: &str) -> Scenario {
        parse("t", "t.scn", text).unwrap()
    }

    const LOGIN: &str = "alice: connect\nalice> USER alice\nalice> PASS secret\n";

    #[test]
    fn a_clean_run_is_deterministic() {
        let sc = scenario(&format!(
            "slave s1\nslave s2\nfile s1,s2 /a size=50k\nuser alice secret\n{LOGIN}\
             alice> PRET RETR /a\nalice> PASV\nalice> RETR /a\nalice> QUIT\n"
        ));
        let a = run(&sc, 3);
        assert!(a.violations.is_empty(), "{}", a.transcript);
        assert!(a.transcript.contains("alice< 226 "), "{}", a.transcript);
        assert_eq!(a.transcript, run(&sc, 3).transcript);
        assert!(a.failures(&sc).is_empty());
    }

    #[test]
    fn an_unmet_expectation_is_a_violation() {
        let sc = scenario("slave s1\nawait slave s1 offline within 1s\n");
        let o = run(&sc, 0);
        assert_eq!(o.violations.len(), 1, "{}", o.transcript);
        assert!(o.violations[0].contains("not offline within 1.000s"));
        assert_eq!(o.failures(&sc).len(), 1);
        // Declared, the same violation is expected and passes...
        let mut declared = sc.clone();
        declared.expected_violations.push("not offline".into());
        assert!(o.failures(&declared).is_empty());
        // ...and a declared violation that does not happen fails.
        let mut wrong = sc.clone();
        wrong.expected_violations = vec!["something else".into()];
        assert_eq!(o.failures(&wrong).len(), 2);
    }

    #[test]
    fn a_leaked_partial_upload_is_caught() {
        // The slave dies mid-STOR; then a prefix of the upload "appears" on
        // its disk, as a buggy commit would leave it (content() is a stream,
        // so the first 64k of seed 3 are the upload's first 64k).
        let sc = scenario(&format!(
            "slave s1\nuser alice secret\n{LOGIN}\
             alice> PRET STOR /up\nalice> PASV\nalice: data send 2M seed=3\n\
             & alice> STOR /up\nawait alice bytes 256k within 30s\ncrash s1\nwait alice\n\
             disk s1 put /up size=64k seed=3\nrestart s1\nawait slave s1 online within 60s\n"
        ));
        let o = run(&sc, 0);
        let all = o.violations.join("\n");
        assert!(
            all.contains("partial upload /up by alice stored complete on slave s1"),
            "{all}"
        );
        assert!(
            all.contains("partial upload /up by alice listed by the master"),
            "{all}"
        );
    }

    #[test]
    fn missing_copies_are_caught() {
        // A copy vanishes behind the master's back on a slave that stays
        // online (nothing tells the master), and a file whose rule wants
        // two copies keeps one: both are violations of invariant 8.
        let sc = scenario(
            "slave s1\nslave s2\nfile s1,s2 /a size=4k\nfile s1 /b size=4k\n\
             config replication.copies=2\nconfig replication.jobs_per_slave=1\n\
             disk s2 remove /a\n",
        );
        let o = run(&sc, 0);
        let all = o.violations.join("\n");
        assert!(
            all.contains("replication: /a lists s2 as a holder, but its disk lacks it"),
            "{all}"
        );
        // /b got its second copy: no violation names it.
        assert!(!all.contains("/b"), "{all}");
    }

    #[test]
    fn expected_replies_are_checked_and_password_placeholders_resolve() {
        let text = "slave s1\nuser alice $PASSWORD\nalice: connect\nalice< 220 dftpd ready\n\
             at 1500ms\nalice> USER alice\nalice< 331 Password required for alice\n\
             alice> PASS $PASSWORD\nalice< 230 User alice logged in\n";
        let o = run(&scenario(text), 0);
        assert!(
            o.reply_diff.is_empty(),
            "{:?}\n{}",
            o.reply_diff,
            o.transcript
        );
        assert!(o.failures(&scenario(text)).is_empty());
        // `at` counts from the script's start: USER left after 1.5 s.
        assert!(o.sim_time >= Duration::from_millis(1500));
        let wrong = text.replace("230 User alice", "230 User bob");
        let sc = scenario(&wrong);
        let o = run(&sc, 0);
        assert_eq!(o.reply_diff[1], "@@ t.scn:9 @@");
        assert_eq!(
            o.reply_diff[4..],
            [
                "-     9  230 User bob logged in",
                "+        230 User alice logged in"
            ]
        );
        assert!(
            o.transcript.contains("!! REPLY DIFF @@ t.scn:9 @@\n"),
            "{}",
            o.transcript
        );
        assert_eq!(o.failures(&sc).len(), 1);
    }

    #[test]
    fn bad_config_is_a_setup_failure_not_a_panic() {
        let sc = scenario("slave s1\nconfig no_such_key=1\n");
        let o = run(&sc, 0);
        assert_eq!(o.violations.len(), 1);
        assert!(
            o.violations[0].starts_with("setup: config no_such_key=1"),
            "{:?}",
            o.violations
        );
        let sc = scenario("slave s1\nconfig passive_ports=9-1\n");
        assert!(run(&sc, 0).violations[0].contains("port range"));
    }

    #[test]
    fn a_missing_reply_is_a_violation() {
        // The client's link to the master is held: its command never gets a
        // reply within the client's patience.
        let sc = scenario(&format!(
            "slave s1\nuser alice secret\n{LOGIN}hold master alice\nalice> NOOP\nrelease master alice\n"
        ));
        let o = run(&sc, 0);
        assert!(
            o.violations
                .iter()
                .any(|v| v.contains("NOOP: no reply within 60s")),
            "{}",
            o.transcript
        );
    }
}

//! `dftpd-sim run [PATH...] [--seed S | --seeds N] [--check-determinism]
//! [--print]`: runs scenarios (files, or directories of `*.scn`; default
//! `scenarios/`) under one or many seeds, checks the invariants, prints each
//! failure with the command that reproduces it, and ends with
//! `N passed, M failed`. Exits non-zero on any failure.
//!
//! `dftpd-sim replay PATH... [--seed S] [--trace] [--print] [--json]
//! [--crash-slave NAME (--at T | --at-command [SESSION:]N)] [--partition
//! A,B ...]`: replays sessions recorded by a real master (`--record DIR`),
//! all files and directories given together, prints each session's
//! summary and the differences between recorded and replayed replies, and
//! exits 1 when there is one.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use dftpd_sim::script::{parse_file, Scenario};

const USAGE: &str =
    "usage: dftpd-sim run [PATH...] [--seed S | --seeds N] [--check-determinism] [--print]
  PATH                 a .scn file or a directory of them (default: scenarios/)
  --seed S             run under seed S only (default 0, the snapshot seed)
  --seeds N            run under seeds 0..N
  --check-determinism  run every (scenario, seed) twice and compare transcripts
  --print              print each transcript
usage: dftpd-sim replay PATH... [--seed S] [--trace] [--print] [--json] [--tick D] [FAULT (--at T | --at-command [SESSION:]N)]...
  PATH                 a session recorded with `dftpd master|cluster --record DIR`, or DIR:
                       every session given is replayed together, on the clock they shared
  --trace              print the master's and slaves' tracing events (simulated time)
  --print              print the replay's transcript
  --json               the result as JSON (one object per session) instead of text
  --tick D             the simulation step (default: a quarter of the median recorded gap
                       between commands, 10us-1ms)
  --crash-slave NAME   FAULT: crash that slave
  --partition A,B      FAULT: cut the link between hosts A and B (master, a slave, a session's client:
                       `client` for one file, else its file's name, e.g. session-12); a client and
                       a slave share only direct data connections (a note says when there are none)
  --at T               when: T after the first session started (e.g. 1.5s); lands after every
                       command recorded before T and before those recorded after it
  --at-command [S:]N   when: just before command N of session S (default: the first), once
                       that session's earlier commands are answered
  exit status: 0 replies agree, 1 they differ (or an invariant broke), 2 bad input
environment: RUST_LOG=dftpd=debug shows the cluster's own logs";

struct ReplayArgs {
    paths: Vec<PathBuf>,
    opts: dftpd_sim::ReplayOptions,
    trace: bool,
    print: bool,
    json: bool,
}

fn parse_replay_args(args: &[String]) -> Result<ReplayArgs, String> {
    use dftpd_sim::{Fault, When};
    let mut paths = Vec::new();
    let mut opts = dftpd_sim::ReplayOptions::default();
    let (mut trace, mut print, mut json) = (false, false, false);
    // A fault waits for its --at or --at-command.
    type Pending = Box<dyn Fn(When) -> Fault>;
    let mut pending: Option<Pending> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--seed" => {
                let v = value()?;
                opts.seed = v
                    .parse()
                    .map_err(|_| format!("--seed: '{v}' is not a number"))?;
            }
            "--tick" => {
                let v = value()?;
                opts.tick = Some(
                    dftpd_sim::script::parse_duration(v)
                        .filter(|d| !d.is_zero())
                        .ok_or(format!("--tick: invalid duration '{v}' (e.g. 50us, 1ms)"))?,
                );
            }
            "--trace" => trace = true,
            "--print" => print = true,
            "--json" => json = true,
            "--crash-slave" | "--partition" => {
                if pending.is_some() {
                    return Err("each fault needs its --at or --at-command".into());
                }
                let v = value()?.clone();
                pending = Some(if a == "--crash-slave" {
                    Box::new(move |when| Fault::CrashSlave {
                        slave: v.clone(),
                        when,
                    })
                } else {
                    let (x, y) = v
                        .split_once(',')
                        .ok_or(format!("--partition takes A,B, got '{v}'"))?;
                    let (x, y) = (x.to_string(), y.to_string());
                    Box::new(move |when| Fault::Partition {
                        a: x.clone(),
                        b: y.clone(),
                        when,
                    })
                });
            }
            "--at" | "--at-command" => {
                let v = value()?;
                let when = if a == "--at" {
                    When::At(
                        dftpd_sim::script::parse_duration(v)
                            .ok_or(format!("--at: invalid duration '{v}' (e.g. 1.5s, 1500ms)"))?,
                    )
                } else {
                    let (session, n) = match v.rsplit_once(':') {
                        Some((s, n)) => (Some(s.to_string()), n),
                        None => (None, v.as_str()),
                    };
                    let n: usize = n
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or(format!("--at-command: '{v}' is not [SESSION:]N"))?;
                    When::Command { session, n }
                };
                let f = pending
                    .take()
                    .ok_or(format!("{a} follows --crash-slave or --partition"))?;
                opts.faults.push(f(when));
            }
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            p => paths.push(PathBuf::from(p)),
        }
    }
    if pending.is_some() {
        return Err("a fault needs --at T or --at-command N".into());
    }
    if paths.is_empty() {
        return Err("replay needs a recording (a file or a directory)".into());
    }
    Ok(ReplayArgs {
        paths,
        opts,
        trace,
        print,
        json,
    })
}

/// Prints simulated time in trace lines: the order of events is the
/// simulation's, and wall-clock time means nothing there.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(t) => write!(w, "[{}.{:03}s]", t.as_secs(), t.subsec_millis()),
            None => write!(w, "[-]"),
        }
    }
}

fn replay_main(args: &[String]) -> ExitCode {
    let r = match parse_replay_args(args) {
        Ok(r) => r,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("dftpd-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let default = if r.trace { "dftpd=debug" } else { "off" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_timer(SimTime)
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
    let started = Instant::now();
    let report = match dftpd_sim::replay_paths(&r.paths, &r.opts) {
        Ok(rep) => rep,
        Err(e) => {
            eprintln!("dftpd-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let wall = started.elapsed();
    if r.print {
        print!("{}", report.outcome.transcript);
    }
    let violations = report.violations();
    if r.json {
        println!("{}", dftpd_sim::replay::report_json(&report, wall));
    } else {
        for f in &report.faults {
            println!("fault: {f}");
        }
        for s in &report.sessions {
            let ftps = if s.ftps {
                " [FTPS in production: TLS not replayed, the FTP conversation is]"
            } else {
                ""
            };
            if s.diff.agrees() {
                println!("{}{ftps}", s.diff.summary());
            } else {
                for l in s.diff.render() {
                    println!("{l}");
                }
                if !ftps.is_empty() {
                    println!("  {}", ftps.trim());
                }
            }
        }
        for v in &violations {
            println!("!! {v}");
        }
    }
    let _ = std::io::stdout().flush();
    let differ = report.sessions.iter().filter(|s| !s.diff.agrees()).count();
    eprintln!(
        "{} session(s) replayed ({} commands) in {:.3}s ({} simulated, step {}us), seed {}: {}",
        report.sessions.len(),
        report.sessions.iter().map(|s| s.commands).sum::<usize>(),
        wall.as_secs_f64(),
        format_args!("{:.3}s", report.outcome.sim_time.as_secs_f64()),
        report.timing.tick.as_micros(),
        r.opts.seed,
        if differ == 0 && violations.is_empty() {
            "all agree".to_string()
        } else {
            format!("{differ} differ, {} violation(s)", violations.len())
        }
    );
    if differ == 0 && violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Options {
    paths: Vec<PathBuf>,
    seeds: Vec<u64>,
    determinism: bool,
    print: bool,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut it = args.iter();
    match it.next().map(String::as_str) {
        Some("run") => {}
        Some("-h" | "--help" | "help") => return Err(String::new()),
        Some(other) => return Err(format!("unknown command '{other}'")),
        None => return Err("missing command".into()),
    }
    let mut o = Options {
        paths: Vec::new(),
        seeds: vec![0],
        determinism: false,
        print: false,
    };
    let mut seed_given = false;
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" | "--seeds" => {
                if seed_given {
                    return Err("give one of --seed and --seeds".into());
                }
                seed_given = true;
                let v = it.next().ok_or(format!("{a} needs a number"))?;
                let n: u64 = v
                    .parse()
                    .map_err(|_| format!("{a}: '{v}' is not a number"))?;
                o.seeds = if a == "--seed" {
                    vec![n]
                } else {
                    (0..n.max(1)).collect()
                };
            }
            "--check-determinism" => o.determinism = true,
            "--print" => o.print = true,
            "-h" | "--help" => return Err(String::new()),
            s if s.starts_with("--") => return Err(format!("unknown option '{s}'")),
            p => o.paths.push(PathBuf::from(p)),
        }
    }
    if o.paths.is_empty() {
        o.paths.push(default_dir());
    }
    Ok(o)
}

fn default_dir() -> PathBuf {
    let here = PathBuf::from("scenarios");
    if here.is_dir() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut files: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "scn"))
                .collect();
            files.sort();
            out.extend(files);
        } else if p.is_file() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("replay") {
        return replay_main(&args[1..]);
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("dftpd-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let files = match collect(&opts.paths) {
        Ok(f) if !f.is_empty() => f,
        Ok(_) => {
            eprintln!("dftpd-sim: no .scn files found");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("dftpd-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let mut scenarios: Vec<Scenario> = Vec::new();
    let mut failed = 0u64;
    for f in &files {
        match parse_file(f) {
            Ok(s) => scenarios.push(s),
            Err(e) => {
                println!("FAIL {e}");
                failed += 1;
            }
        }
    }
    let started = Instant::now();
    let results = run_all(&scenarios, &opts);
    let mut passed = 0u64;
    let mut runs = 0u64;
    for (sc, per_seed) in scenarios.iter().zip(&results) {
        for r in per_seed {
            runs += r.runs;
            if opts.print {
                print!("{}", r.transcript);
            }
            if r.failures.is_empty() {
                passed += 1;
                continue;
            }
            failed += 1;
            for v in &r.failures {
                println!("FAIL {} seed {}: {v}", sc.path, r.seed);
            }
            println!(
                "  reproduce: cargo run -p dftpd-sim -- run {} --seed {} --print",
                sc.path, r.seed
            );
        }
    }
    let _ = std::io::stdout().flush();
    let secs = started.elapsed().as_secs_f64();
    if runs > 0 {
        eprintln!(
            "{runs} runs in {secs:.1}s ({:.1} scenario-seeds/s)",
            runs as f64 / secs.max(1e-9)
        );
    }
    println!("{passed} passed, {failed} failed");
    let _ = std::io::stdout().flush();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// One (scenario, seed) result.
struct SeedResult {
    seed: u64,
    runs: u64,
    failures: Vec<String>,
    transcript: String,
}

/// Runs every scenario under every seed: (scenario, seed) pairs spread over
/// one worker thread per core (each simulation is single-threaded and
/// independent). Results come back in scenario and seed order whatever the
/// scheduling.
fn run_all(scenarios: &[Scenario], opts: &Options) -> Vec<Vec<SeedResult>> {
    let seeds = opts.seeds.len();
    let total = scenarios.len() * seeds;
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<SeedResult>>> = (0..total).map(|_| Mutex::new(None)).collect();
    let left: Vec<AtomicUsize> = scenarios.iter().map(|_| AtomicUsize::new(seeds)).collect();
    let started: Vec<Instant> = scenarios.iter().map(|_| Instant::now()).collect();
    let failed: Vec<AtomicUsize> = scenarios.iter().map(|_| AtomicUsize::new(0)).collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(total.max(1));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let (s, k) = (i / seeds, i % seeds);
                let sc = &scenarios[s];
                let r = run_one(sc, opts.seeds[k], opts);
                if !r.failures.is_empty() {
                    failed[s].fetch_add(1, Ordering::Relaxed);
                }
                *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                // Progress: one line per scenario when its last seed is in.
                if seeds > 1 && left[s].fetch_sub(1, Ordering::AcqRel) == 1 {
                    let bad = failed[s].load(Ordering::Relaxed);
                    eprintln!(
                        "{} {} ({seeds} seeds, {bad} failed; done at {:.1}s)",
                        if bad == 0 { "ok  " } else { "FAIL" },
                        sc.name,
                        started[s].elapsed().as_secs_f64()
                    );
                }
            });
        }
    });
    let mut all = slots
        .into_iter()
        .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()));
    scenarios
        .iter()
        .map(|_| all.by_ref().take(seeds).flatten().collect())
        .collect()
}

fn run_one(sc: &Scenario, seed: u64, opts: &Options) -> SeedResult {
    let outcome = dftpd_sim::run(sc, seed);
    let mut failures = outcome.failures(sc);
    let mut runs = 1;
    if opts.determinism {
        runs += 1;
        let again = dftpd_sim::run(sc, seed);
        if again.transcript != outcome.transcript {
            let (n, a, b) = first_difference(&outcome.transcript, &again.transcript);
            failures.push(format!(
                "not deterministic: two runs differ first at transcript line {n}: {a:?} vs {b:?}"
            ));
        }
    }
    SeedResult {
        seed,
        runs,
        failures,
        transcript: if opts.print {
            outcome.transcript
        } else {
            String::new()
        },
    }
}

/// The first line (1-based) where two transcripts differ, and both lines.
fn first_difference<'t>(a: &'t str, b: &'t str) -> (usize, &'t str, &'t str) {
    let mut la = a.lines();
    let mut lb = b.lines();
    let mut n = 1;
    loop {
        match (la.next(), lb.next()) {
            (Some(x), Some(y)) if x == y => n += 1,
            (x, y) => return (n, x.unwrap_or("<end>"), y.unwrap_or("<end>")),
        }
    }
}

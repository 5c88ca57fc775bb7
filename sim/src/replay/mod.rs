//! Replaying sessions recorded by a real master (`dftpd master --record
//! DIR`). A recording is a scenario; a replay of one or several recordings
//! is a run with these differences:
//!
//! - every session is a client of its own, its steps in the background at
//!   their recorded times on the clock the master's sessions shared, so
//!   sessions that overlapped in production overlap here, in the same
//!   order ([`merge`]);
//! - the simulated network and hosts run at the speed of the loopback the
//!   recordings come from (steps of 10 us to 1 ms, chosen from the
//!   recordings' length; every message one step): commands leave at their
//!   recorded times;
//! - faults given on the command line are inserted: `--at T` lands once
//!   every command recorded before T was sent and before any recorded
//!   after it, `--at-command N` just before command N (its session's
//!   earlier commands all answered);
//! - the result is one diff per session between its recorded replies and
//!   the replayed ones ([`crate::diff`]).

pub mod merge;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::diff::{self, SessionDiff};
use crate::runner::{run_timed, Outcome, Timing};
use crate::script::{ClientOp, Pace, ParseError, Payload, ReadPlan, Scenario, Step, StepKind};

/// When a fault happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// This long after the first session started.
    At(Duration),
    /// Just before command `n` (1-based) of a session (its client name;
    /// `None`: the first session).
    Command { session: Option<String>, n: usize },
}

/// A "what if" for a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `--crash-slave NAME --at T`
    CrashSlave { slave: String, when: When },
    /// `--partition A,B --at T`: messages between the two hosts vanish.
    Partition { a: String, b: String, when: When },
}

impl Fault {
    fn when(&self) -> &When {
        match self {
            Fault::CrashSlave { when, .. } | Fault::Partition { when, .. } => when,
        }
    }

    fn describe(&self) -> String {
        match self {
            Fault::CrashSlave { slave, .. } => format!("crash {slave}"),
            Fault::Partition { a, b, .. } => format!("partition {a} {b}"),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub seed: u64,
    pub faults: Vec<Fault>,
    /// The simulation step; `None`: chosen from the recordings' length.
    pub tick: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Fault(String),
    #[error("no recordings given")]
    Empty,
}

/// One session's result.
#[derive(Debug, Clone)]
pub struct SessionReport {
    pub file: String,
    /// Its client in the replay's transcript.
    pub client: String,
    /// The session ran over TLS in production (replayed in clear).
    pub ftps: bool,
    pub commands: usize,
    /// When it started, after the first session.
    pub offset: Duration,
    pub diff: SessionDiff,
}

/// A replay's result.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub sessions: Vec<SessionReport>,
    /// Every session's differences, rendered; empty when all agree.
    pub diff: Vec<String>,
    /// Where each fault landed.
    pub faults: Vec<String>,
    pub timing: Timing,
    pub outcome: Outcome,
}

impl ReplayReport {
    /// Every session agrees with its recording (violations aside).
    pub fn agrees(&self) -> bool {
        self.sessions.iter().all(|s| s.diff.agrees())
    }

    /// Broken invariants (other than reply differences).
    pub fn violations(&self) -> Vec<&String> {
        self.outcome.violations.iter().collect()
    }
}

/// Replays one recording.
pub fn replay_file(path: &Path, opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    replay_paths(&[path.to_path_buf()], opts)
}

/// Replays recordings together: files, or directories of them.
pub fn replay_paths(paths: &[PathBuf], opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let recs = merge::load(paths)?;
    if recs.is_empty() {
        return Err(ReplayError::Empty);
    }
    let (merged, offsets) = merge::merge(&recs);
    let length = recs
        .iter()
        .zip(&offsets)
        .map(|(r, o)| *o + r.length)
        .max()
        .unwrap_or_default();
    let mut gaps = Vec::new();
    for r in &recs {
        let mut last = None;
        for st in &r.sc.steps {
            if let StepKind::At(t) = st.kind {
                if let Some(l) = last {
                    gaps.push(t.saturating_sub(l));
                }
                last = Some(t);
            }
        }
    }
    let timing = timing(length, &mut gaps, opts.tick);
    let (sc, faults) = prepare(merged, &recs, &opts.faults)?;
    let outcome = run_timed(&sc, opts.seed, timing);
    let lines: Vec<String> = outcome.transcript.lines().map(String::from).collect();
    let mut sessions = Vec::new();
    for (r, offset) in recs.iter().zip(offsets) {
        let expected: Vec<(usize, &str)> =
            r.sc.expectations
                .iter()
                .map(|e| (e.line, e.text.as_str()))
                .collect();
        let got = diff::received(&lines, &r.client);
        sessions.push(SessionReport {
            file: r.file.clone(),
            client: r.client.clone(),
            ftps: r.ftps,
            commands: r.commands,
            offset,
            diff: diff::compare(&r.file, &r.client, &expected, &got),
        });
    }
    let diff = sessions
        .iter()
        .filter(|s| !s.diff.agrees())
        .flat_map(|s| s.diff.render())
        .collect();
    Ok(ReplayReport {
        sessions,
        diff,
        faults,
        timing,
        outcome,
    })
}

/// The replay's step, from the recorded gaps between commands: a quarter
/// of the median gap, so that a command (a message each way, a step each)
/// is answered before the next one is due; between 10 us (a loopback round
/// trip is tens of microseconds) and 1 ms, and at most 400,000 steps over
/// the recordings' length. Every message takes one step.
pub fn timing(length: Duration, gaps: &mut [Duration], tick: Option<Duration>) -> Timing {
    let tick = tick.unwrap_or_else(|| {
        gaps.sort();
        let median = gaps.get(gaps.len() / 2).copied().unwrap_or(length);
        let floor = (length.as_micros() / 400_000) as u64;
        let us = (median.as_micros() as u64 / 4).max(floor);
        Duration::from_micros(us.clamp(10, 1000))
    });
    Timing {
        tick,
        latency: Some(tick),
    }
}

/// Turns the merged recordings into the run: expected replies are taken out
/// (the replay compares them per session), faults are inserted. Returns
/// the scenario and where each fault goes, in words.
pub fn prepare(
    mut sc: Scenario,
    recs: &[merge::Recording],
    faults: &[Fault],
) -> Result<(Scenario, Vec<String>), ReplayError> {
    let expectations = std::mem::take(&mut sc.expectations);
    let clients: Vec<String> = recs.iter().map(|r| r.client.clone()).collect();
    let mut placed = Vec::new();
    for f in faults {
        let hosts: Vec<&String> = match f {
            Fault::CrashSlave { slave, .. } => {
                if !sc.topology.slaves.iter().any(|s| &s.name == slave) {
                    return Err(ReplayError::Fault(format!(
                        "--crash-slave {slave}: no such slave in the recording"
                    )));
                }
                vec![slave]
            }
            Fault::Partition { a, b, .. } => vec![a, b],
        };
        for h in hosts {
            let known = h == "master"
                || sc.topology.slaves.iter().any(|s| &s.name == h)
                || sc.topology.clients.contains(h);
            if !known {
                return Err(ReplayError::Fault(format!(
                    "unknown host '{h}' (master, a slave, or a client of the recording: {})",
                    clients.join(", ")
                )));
            }
        }
        let kind = match f {
            Fault::CrashSlave { slave, .. } => StepKind::Crash(slave.clone()),
            Fault::Partition { a, b, .. } => StepKind::Partition(a.clone(), b.clone()),
        };
        let (pos, mut inserted, words) = match f.when() {
            When::At(t) => {
                // Before the first step due after the fault, once every
                // client has begun every step given to it.
                let pos = sc
                    .steps
                    .iter()
                    .position(|s| matches!(s.kind, StepKind::At(x) if x > *t))
                    .unwrap_or(sc.steps.len());
                let before = last_command(&sc.steps[..pos]);
                let after = first_command(&sc.steps[pos..]);
                let mut words = format!(
                    "{} at {}: after {}, before {}",
                    f.describe(),
                    secs(*t),
                    before.unwrap_or_else(|| "the start".into()),
                    after.unwrap_or_else(|| "the end".into())
                );
                if let Some(running) = running_at(&sc.steps[..pos], *t) {
                    words.push_str(&format!("; during the transfer of {running}"));
                }
                (
                    pos,
                    vec![StepKind::At(*t), StepKind::CatchUp(clients.clone())],
                    words,
                )
            }
            When::Command { session, n } => {
                let client = match session {
                    Some(s) => s.clone(),
                    None => clients[0].clone(),
                };
                if !clients.contains(&client) {
                    return Err(ReplayError::Fault(format!(
                        "--at-command {client}:{n}: no such session (sessions: {})",
                        clients.join(", ")
                    )));
                }
                let idx = sc
                    .steps
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| is_command_of(s, &client))
                    .nth(n.saturating_sub(1))
                    .map(|(i, _)| i)
                    .ok_or_else(|| {
                        ReplayError::Fault(format!(
                            "--at-command {n}: session {client} has fewer commands"
                        ))
                    })?;
                // Before the command's own preparations (pins, data steps).
                let mut pos = idx;
                while pos > 0
                    && matches!(&sc.steps[pos - 1].kind,
                        StepKind::Client { client: c, op, .. }
                            if *c == client && !matches!(op, ClientOp::Command(_)))
                {
                    pos -= 1;
                }
                let words = format!(
                    "{} before command {n} of {client} ({})",
                    f.describe(),
                    describe_step(&sc.steps[idx]).unwrap_or_default()
                );
                (pos, vec![StepKind::Wait(vec![client])], words)
            }
        };
        let words = match f {
            Fault::Partition { a, b, .. } => {
                match partition_note(&sc, &expectations, pos, a, b, &clients) {
                    Some(note) => format!("{words}; note: {note}"),
                    None => words,
                }
            }
            Fault::CrashSlave { .. } => words,
        };
        inserted.push(kind);
        for (k, kind) in inserted.into_iter().enumerate() {
            sc.steps.insert(pos + k, Step { line: 0, kind });
        }
        placed.push(words);
    }
    Ok((sc, placed))
}

/// Why a partition between a client and a slave will not touch the
/// client's transfers, if it will not: a client reaches a slave only by
/// the data connections of transfers on it, and the recording says how
/// each went. One whose client connected to the master's address (`data
/// connect ignore-address`) or used EPSV (229: the master's address) was
/// relayed through the master, in production and in the replay, so a cut
/// between client and slave leaves it alone: say so, and which cut would
/// reach it, rather than replaying in silence as if nothing had been cut.
fn partition_note(
    sc: &Scenario,
    expectations: &[crate::script::Expectation],
    from: usize,
    a: &str,
    b: &str,
    clients: &[String],
) -> Option<String> {
    let is_slave = |h: &str| sc.topology.slaves.iter().any(|s| s.name == h);
    let (client, slave) = if clients.iter().any(|c| c == a) && is_slave(b) {
        (a, b)
    } else if clients.iter().any(|c| c == b) && is_slave(a) {
        (b, a)
    } else {
        return None;
    };
    let (direct, relayed) = transfers_on(sc, expectations, from, client, slave);
    if direct > 0 {
        return None;
    }
    Some(if relayed > 0 {
        format!(
            "{client}'s {relayed} transfer(s) on {slave} from then on were relayed through \
             the master (the client connected to the master's address: EPSV, or a 227 \
             address it ignored), so this cut does not reach them; --partition \
             {client},master or master,{slave} does"
        )
    } else {
        format!("{client} has no transfer on {slave} from then on: this cut changes nothing")
    })
}

/// Transfers of `client` on `slave` from step `from` on, and the one it
/// may have under way there: (direct, relayed through the master). A
/// transfer is a data command whose first recorded reply (a 150) names the
/// slave (`... on slave NAME`).
fn transfers_on(
    sc: &Scenario,
    expectations: &[crate::script::Expectation],
    from: usize,
    client: &str,
    slave: &str,
) -> (usize, usize) {
    let mut mine: Vec<&crate::script::Expectation> =
        expectations.iter().filter(|e| e.client == client).collect();
    mine.sort_by_key(|e| e.line);
    let on_slave = |text: &str| {
        let tag = format!("on slave {slave}");
        text.match_indices(&tag).any(|(i, _)| {
            !text[i + tag.len()..]
                .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    };
    const DATA: [&str; 7] = ["RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"];
    let verb_of = |op: &ClientOp| match op {
        ClientOp::Command(cmd) => cmd
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase(),
        _ => String::new(),
    };
    // The client's last data command before the cut may still be moving.
    let first = sc.steps[..from]
        .iter()
        .rposition(|st| {
            matches!(&st.kind, StepKind::Client { client: c, op, .. }
                if c == client && DATA.contains(&verb_of(op).as_str()))
        })
        .unwrap_or(from);
    let (mut direct, mut relayed) = (0, 0);
    let (mut ignore, mut epsv) = (false, false);
    for (i, st) in sc.steps.iter().enumerate() {
        let StepKind::Client { client: c, op, .. } = &st.kind else {
            continue;
        };
        if c != client {
            continue;
        }
        match op {
            ClientOp::DataConnectIgnoringAddress => ignore = true,
            ClientOp::Command(_) => {
                let verb = verb_of(op);
                let reply = mine
                    .iter()
                    .find(|e| e.line > st.line)
                    .map_or("", |e| e.text.as_str());
                match verb.as_str() {
                    "PASV" | "PORT" | "EPRT" => epsv = false,
                    "EPSV" => epsv = reply.starts_with("229"),
                    v if DATA.contains(&v) => {
                        if i >= first && reply.starts_with('1') && on_slave(reply) {
                            if ignore || epsv {
                                relayed += 1;
                            } else {
                                direct += 1;
                            }
                        }
                        ignore = false;
                        epsv = false;
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    (direct, relayed)
}

/// The report as JSON, for tools: one object per session with its counts
/// and hunks, the faults' placement, the violations and the timing.
pub fn report_json(r: &ReplayReport, wall: Duration) -> String {
    use serde_json::json;
    let sessions: Vec<serde_json::Value> = r
        .sessions
        .iter()
        .map(|s| {
            let hunks: Vec<serde_json::Value> = s
                .diff
                .hunks
                .iter()
                .map(|h| {
                    let lines: Vec<serde_json::Value> = h
                        .iter()
                        .map(|l| {
                            json!({
                                "tag": match l.tag {
                                    diff::Tag::Same => "same",
                                    diff::Tag::Recorded => "recorded",
                                    diff::Tag::Replayed => "replayed",
                                },
                                "line": l.line,
                                "text": l.text,
                            })
                        })
                        .collect();
                    json!({ "lines": lines })
                })
                .collect();
            json!({
                "file": s.file,
                "client": s.client,
                "ftps": s.ftps,
                "commands": s.commands,
                "start_offset_us": s.offset.as_micros() as u64,
                "agrees": s.diff.agrees(),
                "recorded_lines": s.diff.recorded,
                "replayed_lines": s.diff.replayed,
                "removed": s.diff.removed,
                "added": s.diff.added,
                "hunks": hunks,
            })
        })
        .collect();
    json!({
        "agrees": r.agrees() && r.outcome.violations.is_empty(),
        "sessions": sessions,
        "faults": r.faults,
        "violations": r.outcome.violations,
        "simulated_s": r.outcome.sim_time.as_secs_f64(),
        "tick_us": r.timing.tick.as_micros() as u64,
        "wall_s": wall.as_secs_f64(),
    })
    .to_string()
}

fn is_command_of(s: &Step, client: &str) -> bool {
    matches!(&s.kind, StepKind::Client { client: c, op: ClientOp::Command(_), .. } if c == client)
}

fn describe_step(s: &Step) -> Option<String> {
    match &s.kind {
        StepKind::Client {
            client,
            op: ClientOp::Command(c),
            ..
        } => Some(format!("{client}> {c} (line {})", s.line)),
        _ => None,
    }
}

/// The transfer the recording shows running at `t` (a data step with
/// `over=`, and its command), in words, if one was.
fn running_at(steps: &[Step], t: Duration) -> Option<String> {
    let mut at = Duration::ZERO;
    let mut paced: std::collections::BTreeMap<&str, Duration> = Default::default();
    let mut found = None;
    for s in steps {
        match &s.kind {
            StepKind::At(x) => at = *x,
            StepKind::Client { client, op, .. } => match op {
                ClientOp::DataSend(Payload { over: Some(d), .. })
                | ClientOp::DataRead(ReadPlan {
                    pace: Some(Pace { over: d, .. }),
                    ..
                }) => {
                    paced.insert(client, *d);
                }
                ClientOp::Command(_) => {
                    if let Some(d) = paced.remove(client.as_str()) {
                        if at <= t && t < at + d {
                            found = Some(format!(
                                "{}, recorded from {} to {}",
                                describe_step(s).unwrap_or_default(),
                                secs(at),
                                secs(at + d)
                            ));
                        }
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    found
}

/// The last command in `steps`, with its recorded time.
fn last_command(steps: &[Step]) -> Option<String> {
    let mut at = Duration::ZERO;
    let mut last = None;
    for s in steps {
        if let StepKind::At(t) = s.kind {
            at = t;
        }
        if let Some(d) = describe_step(s) {
            last = Some(format!("{d} recorded at {}", secs(at)));
        }
    }
    last
}

/// The first command in `steps`, with its recorded time.
fn first_command(steps: &[Step]) -> Option<String> {
    let mut at = None;
    for s in steps {
        if let StepKind::At(t) = s.kind {
            at = Some(t);
        }
        if let Some(d) = describe_step(s) {
            return Some(match at {
                Some(t) => format!("{d} recorded at {}", secs(t)),
                None => d,
            });
        }
    }
    None
}

fn secs(d: Duration) -> String {
    format!("{}.{:06}s", d.as_secs(), d.subsec_micros())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

    fn recs(text: &str) -> (Scenario, Vec<merge::Recording>) {
        let sc = parse("r", "r.scn", text).unwrap();
        let r = merge::Recording {
            file: "r.scn".into(),
            sc,
            client: "client".into(),
            start: Duration::ZERO,
            length: Duration::from_secs(3),
            ftps: false,
            commands: 2,
        };
        let (merged, _) = merge::merge(std::slice::from_ref(&r));
        (merged, vec![r])
    }

    #[test]
    fn a_command_cut_off_by_a_partition_says_how_long_the_replay_waited() {
        // Steps shorter than a millisecond: a host's timers still advance by
        // at least a millisecond a step, so the client's 60 s patience runs
        // out long before 60 s of the replay's clock.
        let sc = parse(
            "t",
            "t.scn",
            "slave s1\nuser alice secret\nalice: connect\nalice> USER alice\n\
             alice> PASS secret\npartition alice master\nalice> NOOP\n",
        )
        .unwrap();
        let tick = Duration::from_micros(50);
        let o = run_timed(
            &sc,
            0,
            Timing {
                tick,
                latency: Some(tick),
            },
        );
        let v: Vec<&String> = o.violations.iter().filter(|v| v.contains("NOOP")).collect();
        assert_eq!(v.len(), 1, "{}", o.transcript);
        assert!(o.sim_time < Duration::from_secs(60), "{:?}", o.sim_time);
        assert!(
            !v[0].contains("no reply within 60s,"),
            "claims 60 s passed at {:?}: {}",
            o.sim_time,
            v[0]
        );
        assert!(v[0].contains("s of simulated time"), "{}", v[0]);
    }

    #[test]
    fn faults_land_between_the_commands_recorded_around_them() {
        let (sc, r) =
            recs("slave s1\nclient: connect\nat 10ms\nclient> NOOP\nat 2000ms\nclient> QUIT\n");
        let f = Fault::CrashSlave {
            slave: "s1".into(),
            when: When::At(Duration::from_millis(1500)),
        };
        let (p, words) = prepare(sc.clone(), &r, std::slice::from_ref(&f)).unwrap();
        let kinds: Vec<&StepKind> = p.steps.iter().map(|s| &s.kind).collect();
        let at = kinds
            .iter()
            .position(|k| **k == StepKind::At(Duration::from_millis(1500)))
            .unwrap();
        assert_eq!(kinds[at + 1], &StepKind::CatchUp(vec!["client".into()]));
        assert_eq!(kinds[at + 2], &StepKind::Crash("s1".into()));
        assert_eq!(kinds[at + 3], &StepKind::At(Duration::from_secs(2)));
        assert!(
            words[0].contains("after client> NOOP (line 4) recorded at 0.010000s"),
            "{words:?}"
        );
        assert!(!words[0].contains("during"), "{words:?}");
        // In the middle of a recorded slow transfer: said so.
        let (slow, r2) = recs(
            "slave s1\nclient: connect\nat 10ms\nclient: data send 5000 over=2s\nclient> STOR /f\nat 2100ms\nclient> QUIT\n",
        );
        let (_, words) = prepare(slow, &r2, &[f]).unwrap();
        assert!(
            words[0].ends_with("; during the transfer of client> STOR /f (line 5), recorded from 0.010000s to 2.010000s"),
            "{words:?}"
        );
        // By command: before the second one, once the first is answered.
        let f = Fault::CrashSlave {
            slave: "s1".into(),
            when: When::Command {
                session: None,
                n: 2,
            },
        };
        let (p, _) = prepare(sc.clone(), &r, &[f]).unwrap();
        let quit = p.steps.iter().position(|s| is_command_of(s, "client") && matches!(&s.kind, StepKind::Client { op: ClientOp::Command(c), .. } if c == "QUIT")).unwrap();
        assert_eq!(p.steps[quit - 1].kind, StepKind::Crash("s1".into()));
        assert_eq!(
            p.steps[quit - 2].kind,
            StepKind::Wait(vec!["client".into()])
        );
        let bad = Fault::CrashSlave {
            slave: "nope".into(),
            when: When::At(Duration::ZERO),
        };
        assert!(prepare(sc.clone(), &r, &[bad]).is_err());
        let far = Fault::CrashSlave {
            slave: "s1".into(),
            when: When::Command {
                session: None,
                n: 9,
            },
        };
        assert!(prepare(sc, &r, &[far]).is_err());
    }

    #[test]
    fn a_partition_of_a_client_and_a_slave_says_when_it_cannot_reach_a_transfer() {
        let text = "slave s1\nslave s10\nclient: connect\nat 10ms\nclient> PASV\n\
            client< 227 Entering Passive Mode (1,2,3,4,5,6) on slave s10\n\
            {IGNORE}client> RETR /f\n\
            client< 150 Opening BINARY mode data connection for /f (5 bytes) on slave s10\n\
            client< 226 Transfer complete, 5 bytes from s10\nat 20ms\nclient> QUIT\n";
        let partition = |a: &str, b: &str| Fault::Partition {
            a: a.into(),
            b: b.into(),
            when: When::At(Duration::from_millis(5)),
        };
        let (sc, r) = recs(&text.replace("{IGNORE}", ""));
        let (_, words) = prepare(sc.clone(), &r, &[partition("client", "s10")]).unwrap();
        assert!(!words[0].contains("note"), "{words:?}");
        let (_, words) = prepare(sc.clone(), &r, &[partition("s1", "client")]).unwrap();
        assert!(
            words[0].ends_with(
                "note: client has no transfer on s1 from then on: this cut changes nothing"
            ),
            "{words:?}"
        );
        let (_, words) = prepare(sc, &r, &[partition("master", "s10")]).unwrap();
        assert!(!words[0].contains("note"), "{words:?}");
        let (sc, r) = recs(&text.replace("{IGNORE}", "client: data connect ignore-address\n"));
        let (_, words) = prepare(sc, &r, &[partition("s10", "client")]).unwrap();
        assert!(
            words[0].contains("note: client's 1 transfer(s) on s10 from then on were relayed"),
            "{words:?}"
        );
    }

    #[test]
    fn the_step_follows_the_gaps_between_commands() {
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let tick = |len, gaps: &[Duration]| timing(len, &mut gaps.to_vec(), None).tick;
        // Dense: 70 us between commands.
        assert_eq!(tick(ms(350), &[us(70); 5000]), us(17));
        assert_eq!(tick(ms(350), &[us(20); 5000]), us(10));
        // Paced every 20 ms.
        assert_eq!(tick(ms(2000), &[ms(20); 100]), us(1000));
        assert_eq!(tick(ms(2000), &[ms(2); 100]), us(500));
        // A long idle session: at most 400,000 steps.
        assert_eq!(tick(Duration::from_secs(100), &[us(40); 10]), us(250));
        assert_eq!(tick(ms(1), &[]), us(250));
    }
}

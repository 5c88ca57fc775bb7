//! Replaying a recorded session (`dftpd master --record DIR`): the
//! recording is a scenario, so replay is a run with three differences —
//! the client's steps are paced by their recorded `at` times instead of
//! waiting for each other (so an injected fault lands at its time even
//! mid-transfer), faults given on the command line are inserted, and the
//! result is the difference between the recorded replies (`client< ...`)
//! and the replayed ones.
//!
//! Normalisation (what legitimately differs between a real run and a
//! simulated one, applied to both sides before comparing): IPv4 addresses
//! and ports (`h1,h2,h3,h4,p1,p2` in 227, `(|||port|)` in 229, `a.b.c.d`
//! or `a.b.c.d:port` anywhere), times (`213 YYYYMMDDHHMMSS`, `modify=`
//! facts), the byte count of a listing's 226 (listings carry owners and
//! mtimes the simulation does not reproduce), and trailing blanks.

use std::path::Path;
use std::time::Duration;

use crate::runner::{run, Outcome};
use crate::script::{parse_file, ClientOp, ParseError, Scenario, Step, StepKind};

/// A "what if" for a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `--crash-slave NAME --at T`
    CrashSlave { slave: String, at: Duration },
    /// `--partition A,B --at T`: messages between the two hosts vanish.
    Partition { a: String, b: String, at: Duration },
}

impl Fault {
    fn at(&self) -> Duration {
        match self {
            Fault::CrashSlave { at, .. } | Fault::Partition { at, .. } => *at,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub seed: u64,
    pub faults: Vec<Fault>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0}")]
    Fault(String),
}

/// A replay's result.
#[derive(Debug, Clone)]
pub struct ReplayReport {
    /// Recorded vs replayed replies; empty when they agree.
    pub diff: Vec<String>,
    pub outcome: Outcome,
}

impl ReplayReport {
    pub fn agrees(&self) -> bool {
        self.diff.is_empty()
    }
}

/// Parses, prepares and runs a recording.
pub fn replay_file(path: &Path, opts: &ReplayOptions) -> Result<ReplayReport, ReplayError> {
    let sc = prepare(parse_file(path)?, &opts.faults)?;
    let outcome = run(&sc, opts.seed);
    Ok(ReplayReport {
        diff: outcome.reply_diff.clone(),
        outcome,
    })
}

/// Turns a recording into a replay: client steps run in the background
/// (their `at` lines pace them), faults are inserted at their times.
pub fn prepare(mut sc: Scenario, faults: &[Fault]) -> Result<Scenario, ReplayError> {
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
                    "unknown host '{h}' (master, a slave, or a client of the recording)"
                )));
            }
        }
    }
    for step in &mut sc.steps {
        if let StepKind::Client { background, op, .. } = &mut step.kind {
            // The connect stays in the foreground: `at` counts from the
            // start of the script, as the recording counts from the
            // session's start.
            if !matches!(op, ClientOp::Connect) {
                *background = true;
            }
        }
    }
    let mut faults = faults.to_vec();
    faults.sort_by_key(Fault::at);
    for f in faults {
        // Before the first recorded step due after the fault.
        let pos = sc
            .steps
            .iter()
            .position(|s| matches!(s.kind, StepKind::At(t) if t > f.at()))
            .unwrap_or(sc.steps.len());
        let kind = match &f {
            Fault::CrashSlave { slave, .. } => StepKind::Crash(slave.clone()),
            Fault::Partition { a, b, .. } => StepKind::Partition(a.clone(), b.clone()),
        };
        sc.steps.insert(
            pos,
            Step {
                line: 0,
                kind: StepKind::At(f.at()),
            },
        );
        sc.steps.insert(pos + 1, Step { line: 0, kind });
    }
    Ok(sc)
}

/// Compares a scenario's expected replies with a run's transcript lines,
/// per client and in order. Empty when they agree (or none are expected).
pub fn reply_diff(sc: &Scenario, transcript: &[String]) -> Vec<String> {
    const MAX: usize = 40;
    let mut out = Vec::new();
    for client in &sc.topology.clients {
        let expected: Vec<_> = sc
            .expectations
            .iter()
            .filter(|e| &e.client == client)
            .collect();
        if expected.is_empty() {
            continue;
        }
        let prefix = format!("{client}< ");
        let got: Vec<&str> = transcript
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        let n = expected.len().max(got.len());
        for i in 0..n {
            if out.len() >= MAX {
                out.push("... (more differences not shown)".into());
                return out;
            }
            match (expected.get(i), got.get(i)) {
                (Some(e), Some(g)) if normalize(&e.text) == normalize(g) => {}
                (Some(e), Some(g)) => {
                    out.push(format!("{}:{}: {client}", sc.path, e.line));
                    out.push(format!("-  {}", e.text));
                    out.push(format!("+  {g}"));
                }
                (Some(e), None) => {
                    out.push(format!("{}:{}: {client}", sc.path, e.line));
                    out.push(format!("-  {}", e.text));
                    out.push("+  (no reply)".into());
                }
                (None, Some(g)) => {
                    out.push(format!("{}: {client}: reply not in the recording", sc.path));
                    out.push(format!("+  {g}"));
                }
                (None, None) => {}
            }
        }
    }
    out
}

/// A reply line with what legitimately differs between a real run and a
/// simulation replaced by a fixed token (see the module documentation).
pub fn normalize(line: &str) -> String {
    let line = line.trim_end();
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    let mut after_word = false;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() && !after_word {
            let end = rest
                .find(|ch: char| !(ch.is_ascii_digit() || matches!(ch, '.' | ',' | ':')))
                .unwrap_or(rest.len());
            // Trailing punctuation belongs to the sentence.
            let run = rest[..end].trim_end_matches(['.', ',', ':']);
            match address_token(run) {
                Some(token) => out.push_str(token),
                None if run.len() == 14 && run.bytes().all(|x| x.is_ascii_digit()) => {
                    out.push_str("<time>")
                }
                None => out.push_str(run),
            }
            rest = &rest[run.len()..];
            after_word = true;
            continue;
        }
        out.push(c);
        after_word = c.is_alphanumeric() || c == '_';
        rest = &rest[c.len_utf8()..];
    }
    let out = replace_between(&out, "(|||", "|)", "port");
    let out = replace_between(&out, "modify=", ";", "<time>");
    let listing_size = out
        .strip_prefix("226 Transfer complete, ")
        .and_then(|r| r.strip_suffix(" bytes"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|x| x.is_ascii_digit()));
    if listing_size {
        return "226 Transfer complete, <listing size> bytes".into();
    }
    out
}

/// `h1,h2,h3,h4,p1,p2` or `a.b.c.d[:port]` as a token.
fn address_token(run: &str) -> Option<&'static str> {
    let nums = |parts: &[&str]| {
        parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|x| x.is_ascii_digit()))
    };
    let commas: Vec<&str> = run.split(',').collect();
    if commas.len() == 6 && nums(&commas) {
        return Some("h1,h2,h3,h4,p1,p2");
    }
    let (host, port) = match run.split_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()) => (h, true),
        Some(_) => return None,
        None => (run, false),
    };
    let dots: Vec<&str> = host.split('.').collect();
    if dots.len() == 4 && nums(&dots) {
        return Some(if port { "ADDR:PORT" } else { "ADDR" });
    }
    None
}

/// Replaces what lies between each `open` and the next `close`.
fn replace_between(s: &str, open: &str, close: &str, with: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(close) else { break };
        out.push_str(&rest[..i + open.len()]);
        out.push_str(with);
        rest = &after[j..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

    #[test]
    fn normalisation_hides_addresses_ports_times_and_listing_sizes() {
        assert_eq!(
            normalize("227 Entering Passive Mode (127,0,0,11,213,99) on slave slave-1"),
            "227 Entering Passive Mode (h1,h2,h3,h4,p1,p2) on slave slave-1"
        );
        assert_eq!(
            normalize("229 Entering Extended Passive Mode (|||50123|)"),
            "229 Entering Extended Passive Mode (|||port|)"
        );
        assert_eq!(normalize("213 20261124063834"), "213 <time>");
        assert_eq!(
            normalize("425 used 127.0.0.1:5000, not 10.0.0.2:5000."),
            "425 used ADDR:PORT, not ADDR:PORT."
        );
        assert_eq!(
            normalize("226 Transfer complete, 62 bytes"),
            "226 Transfer complete, <listing size> bytes"
        );
        // Everything else is compared as it is.
        for same in [
            "226 Transfer complete, 5000 bytes stored on slave-1",
            "150 Opening BINARY mode data connection for /f.bin (5000 bytes) on slave slave-1",
            "213 5000",
            "200 Type set to I",
            "550 /é.bin: not found",
            "211-Features:",
        ] {
            assert_eq!(normalize(same), same);
        }
    }

    #[test]
    fn a_changed_reply_is_a_difference() {
        let sc = parse(
            "r",
            "r.scn",
            "slave s1\nc: connect\nc< 220 dftpd ready\nc> NOOP\nc< 200 NOOP ok\n",
        )
        .unwrap();
        let same = vec![
            "c< 220 dftpd ready".to_string(),
            "c< 200 NOOP ok".to_string(),
        ];
        assert!(reply_diff(&sc, &same).is_empty());
        let changed = vec!["c< 220 dftpd ready".to_string(), "c< 500 no".to_string()];
        assert_eq!(
            reply_diff(&sc, &changed),
            ["r.scn:5: c", "-  200 NOOP ok", "+  500 no"]
        );
        let missing = vec!["c< 220 dftpd ready".to_string()];
        assert_eq!(reply_diff(&sc, &missing)[2], "+  (no reply)");
    }

    #[test]
    fn faults_land_before_the_first_later_step() {
        let sc = parse(
            "r",
            "r.scn",
            "slave s1\nc: connect\nat 10ms\nc> NOOP\nat 2000ms\nc> QUIT\n",
        )
        .unwrap();
        let f = Fault::CrashSlave {
            slave: "s1".into(),
            at: Duration::from_millis(1500),
        };
        let p = prepare(sc.clone(), &[f]).unwrap();
        let kinds: Vec<&StepKind> = p.steps.iter().map(|s| &s.kind).collect();
        assert_eq!(kinds[3], &StepKind::At(Duration::from_millis(1500)));
        assert_eq!(kinds[4], &StepKind::Crash("s1".into()));
        assert!(matches!(
            kinds[2],
            StepKind::Client {
                background: true,
                ..
            }
        ));
        let bad = Fault::CrashSlave {
            slave: "nope".into(),
            at: Duration::ZERO,
        };
        assert!(prepare(sc, &[bad]).is_err());
    }
}

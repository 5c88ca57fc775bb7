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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

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

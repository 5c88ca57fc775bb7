//! Several recordings as one scenario: each session becomes a client of its
//! own, its steps placed on the clock all sessions of the master shared
//! (`# clock:` in each recording's header), and the cluster state they
//! declared merged so that each path starts as the earliest session that
//! named it found it (a file another session made later is not declared
//! from the start; a file another session deleted first is).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use dftpd::proto::VPath;

use crate::script::{
    parse, ClientOp, DirDecl, FileDecl, ParseError, Scenario, Step, StepKind, Topology,
};

/// One recording, parsed, with what its header says.
#[derive(Debug, Clone)]
pub struct Recording {
    /// The file as given (for messages and diffs).
    pub file: String,
    pub sc: Scenario,
    /// Its client's name in the merged scenario.
    pub client: String,
    /// When the session started on the master's clock (seconds since the
    /// master started, plus the master's start in Unix seconds: sessions of
    /// two master runs stay in order).
    pub start: Duration,
    /// When the session ended, after its start.
    pub length: Duration,
    /// The session ran AUTH TLS (answered 234).
    pub ftps: bool,
    /// Commands (`client> ...`) in the recording.
    pub commands: usize,
}

/// The recordings named by `paths`: files, or directories whose `*.scn`
/// files are taken (in name order). One file given alone is the client
/// `client`; otherwise (several, or a directory, even of one) each client
/// is named after its file (`session-12`), as `--partition` expects.
pub fn load(paths: &[PathBuf]) -> Result<Vec<Recording>, ParseError> {
    let mut files = Vec::new();
    let mut from_dir = false;
    for p in paths {
        if p.is_dir() {
            let rd = std::fs::read_dir(p).map_err(|e| ParseError {
                file: p.display().to_string(),
                line: 0,
                msg: format!("cannot read the directory: {e}"),
            })?;
            let mut found: Vec<PathBuf> = rd
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|x| x == "scn"))
                .collect();
            found.sort();
            files.extend(found);
            from_dir = true;
        } else {
            files.push(p.clone());
        }
    }
    let many = files.len() > 1 || from_dir;
    let mut out = Vec::new();
    for f in files {
        out.push(read(&f, many)?);
    }
    // Distinct client names, whatever the file names.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &mut out {
        let n = seen.entry(r.client.clone()).or_insert(0);
        *n += 1;
        if *n > 1 {
            r.client = format!("{}-{n}", r.client);
        }
    }
    Ok(out)
}

fn read(path: &Path, many: bool) -> Result<Recording, ParseError> {
    let (shown, text) = crate::script::read_text(path)?;
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session".into());
    let sc = parse(&stem, &shown, &text)?;
    let mut start = None;
    let mut length = None;
    let mut date = None;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("# clock: ") {
            start = clock(rest);
        } else if let Some(rest) = l.strip_prefix("# session ended at ") {
            length = crate::script::parse_duration(rest.trim());
        } else if let Some(rest) = l.strip_prefix("# date: ") {
            date = iso_secs(rest.trim());
        }
    }
    let last_at = sc
        .steps
        .iter()
        .filter_map(|s| match s.kind {
            StepKind::At(t) => Some(t),
            _ => None,
        })
        .max()
        .unwrap_or_default();
    let client = if many {
        client_name(&stem)
    } else {
        dftpd::master::record::CLIENT.to_string()
    };
    let ftps = uses_tls(&sc);
    let commands = sc
        .steps
        .iter()
        .filter(|s| {
            matches!(
                s.kind,
                StepKind::Client {
                    op: ClientOp::Command(_),
                    ..
                }
            )
        })
        .count();
    Ok(Recording {
        file: shown,
        client,
        // Old recordings have the date only (to the second).
        start: start.unwrap_or_else(|| Duration::from_secs(date.unwrap_or(0))),
        length: length.unwrap_or(last_at).max(last_at),
        ftps,
        commands,
        sc,
    })
}

/// `master-start=UNIX session-start=SECONDS`.
fn clock(rest: &str) -> Option<Duration> {
    let mut master = None;
    let mut session = None;
    for w in rest.split_whitespace() {
        if let Some(v) = w.strip_prefix("master-start=") {
            master = v.parse::<u64>().ok();
        } else if let Some(v) = w.strip_prefix("session-start=") {
            session = crate::script::parse_duration(v);
        }
    }
    Some(Duration::from_secs(master?) + session?)
}

/// `YYYY-MM-DDTHH:MM:SSZ` as Unix seconds.
fn iso_secs(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 19 {
        return None;
    }
    let n = |a: usize, z: usize| s.get(a..z)?.parse::<i64>().ok();
    let (y, m, d) = (n(0, 4)?, n(5, 7)?, n(8, 10)?);
    let (hh, mm, ss) = (n(11, 13)?, n(14, 16)?, n(17, 19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A client name from a file stem: `session-3.1` -> `session-3-1`.
fn client_name(stem: &str) -> String {
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(32)
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        name = format!("s{name}");
        name.truncate(32);
    }
    name
}

/// AUTH answered 234: the session was encrypted in production.
fn uses_tls(sc: &Scenario) -> bool {
    // The reply lines between each AUTH command and the next command.
    let mut lines: Vec<(usize, bool)> = Vec::new();
    for s in &sc.steps {
        if let StepKind::Client {
            op: ClientOp::Command(c),
            ..
        } = &s.kind
        {
            let upper = c.trim().to_ascii_uppercase();
            lines.push((s.line, upper.starts_with("AUTH ")));
        }
    }
    lines.iter().enumerate().any(|(i, (line, is_auth))| {
        if !is_auth {
            return false;
        }
        let next = lines.get(i + 1).map_or(usize::MAX, |(l, _)| *l);
        sc.expectations
            .iter()
            .find(|e| e.line > *line && e.line < next)
            .is_some_and(|e| e.text.starts_with("234"))
    })
}

/// When, after its session's start, each line of a recording happened: the
/// time of the first `at` after it (declarations are written just before
/// the command that named them), or the session's end.
fn line_time(r: &Recording, line: usize) -> Duration {
    r.sc.steps
        .iter()
        .find_map(|s| match s.kind {
            StepKind::At(t) if s.line > line => Some(t),
            _ => None,
        })
        .unwrap_or(r.length)
}

/// What the earliest mention of a path found there.
#[derive(Debug, Clone)]
enum Found {
    File(FileDecl),
    Dir(DirDecl),
    Absent,
}

/// One scenario replaying all `recs` together; `recs[i]`'s client is
/// `recs[i].client`. Also returns each recording's offset on the merged
/// clock (its start after the earliest start).
pub fn merge(recs: &[Recording]) -> (Scenario, Vec<Duration>) {
    let t0 = recs.iter().map(|r| r.start).min().unwrap_or_default();
    let offsets: Vec<Duration> = recs.iter().map(|r| r.start - t0).collect();
    // The earliest recording gives the cluster at the start.
    let first = (0..recs.len())
        .min_by_key(|&i| (offsets[i], i))
        .unwrap_or(0);
    let mut top = Topology {
        master_config: recs[first].sc.topology.master_config.clone(),
        slave_config: recs[first].sc.topology.slave_config.clone(),
        ..Topology::default()
    };
    for i in std::iter::once(first).chain((0..recs.len()).filter(|&i| i != first)) {
        let t = &recs[i].sc.topology;
        for s in &t.slaves {
            if !top.slaves.iter().any(|x| x.name == s.name) {
                top.slaves.push(s.clone());
            }
        }
        for u in &t.users {
            if !top.users.iter().any(|x| x.name == u.name) {
                top.users.push(u.clone());
            }
        }
        top.ftps |= t.ftps;
    }
    // Each path as its earliest mention found it.
    let mut earliest: BTreeMap<VPath, (Duration, usize, Found)> = BTreeMap::new();
    for (i, r) in recs.iter().enumerate() {
        let t = &r.sc.topology;
        let mentions = t
            .files
            .iter()
            .map(|f| (f.line, f.path.clone(), Found::File(f.clone())))
            .chain(
                t.dirs
                    .iter()
                    .map(|d| (d.line, d.path.clone(), Found::Dir(d.clone()))),
            )
            .chain(
                t.absent
                    .iter()
                    .map(|d| (d.line, d.path.clone(), Found::Absent)),
            );
        for (line, path, found) in mentions {
            let when = offsets[i] + line_time(r, line);
            let key = (when, i);
            match earliest.get(&path) {
                Some((w, j, _)) if (*w, *j) <= key => {}
                _ => {
                    earliest.insert(path, (when, i, found));
                }
            }
        }
    }
    for (_, (_, _, found)) in earliest {
        match found {
            Found::File(f) => top.files.push(f),
            Found::Dir(d) => top.dirs.push(d),
            Found::Absent => {}
        }
    }
    // Steps on the shared clock.
    let mut timed: Vec<(Duration, usize, usize, StepKind)> = Vec::new();
    let mut expectations = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        let rename = |n: &String| {
            if n == dftpd::master::record::CLIENT {
                r.client.clone()
            } else {
                n.clone()
            }
        };
        top.clients.insert(r.client.clone());
        let mut now = offsets[i];
        for (k, s) in r.sc.steps.iter().enumerate() {
            let kind = match &s.kind {
                StepKind::At(t) => {
                    now = offsets[i] + *t;
                    continue;
                }
                StepKind::Client { client, op, .. } => StepKind::Client {
                    client: rename(client),
                    op: op.clone(),
                    background: true,
                },
                // Slaves offline at the first session's start.
                StepKind::Crash(h) if i == first => StepKind::Crash(h.clone()),
                StepKind::Crash(_) => continue,
                other => other.clone(),
            };
            timed.push((now, i, k, kind));
        }
        for e in &r.sc.expectations {
            let mut e = e.clone();
            e.client = rename(&e.client);
            expectations.push(e);
        }
    }
    timed.sort_by_key(|(t, i, k, _)| (*t, *i, *k));
    let mut steps = Vec::new();
    let mut at = None;
    for (t, i, k, kind) in timed {
        if at != Some(t) {
            steps.push(Step {
                line: 0,
                kind: StepKind::At(t),
            });
            at = Some(t);
        }
        steps.push(Step {
            line: recs[i].sc.steps[k].line,
            kind,
        });
    }
    let sc = Scenario {
        name: if recs.len() == 1 {
            recs[0].sc.name.clone()
        } else {
            format!("{} recordings", recs.len())
        },
        path: if recs.len() == 1 {
            recs[0].file.clone()
        } else {
            "(recordings)".into()
        },
        topology: top,
        steps,
        expected_violations: Vec::new(),
        expectations,
    };
    (sc, offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, start_ms: u64, text: &str) -> Recording {
        let sc = parse(name, &format!("{name}.scn"), text).unwrap();
        Recording {
            file: format!("{name}.scn"),
            client: name.to_string(),
            start: Duration::from_millis(start_ms),
            length: Duration::from_millis(100),
            ftps: false,
            commands: 0,
            sc,
        }
    }

    #[test]
    fn sessions_interleave_on_the_shared_clock_and_the_earliest_mention_wins() {
        // a makes /new at 10 ms and deletes /old at 20 ms; b (started 5 ms
        // later) finds /new at 30 ms, /old gone.
        let a = rec(
            "a",
            1000,
            "slave s1\nclient: connect\nat 10ms\nabsent /new\nclient> STOR /new\n\
             file s1 /old size=5\nat 20ms\nclient> DELE /old\n",
        );
        let b = rec(
            "b",
            1005,
            "slave s1\nclient: connect\nfile s1 /new size=9\nat 25ms\nclient> RETR /new\n\
             absent /old\ndir /d\nat 26ms\nclient> RETR /old\n",
        );
        let (sc, offsets) = merge(&[a, b]);
        assert_eq!(offsets, [Duration::ZERO, Duration::from_millis(5)]);
        let files: Vec<&str> = sc.topology.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(files, ["/old"]);
        assert_eq!(sc.topology.dirs[0].path.as_str(), "/d");
        let order: Vec<String> = sc
            .steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::At(t) => format!("at {}", t.as_millis()),
                StepKind::Client {
                    client,
                    op: ClientOp::Command(c),
                    ..
                } => format!("{client}> {c}"),
                StepKind::Client { client, .. } => format!("{client}: ..."),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            order,
            [
                "at 0",
                "a: ...",
                "at 5",
                "b: ...",
                "at 10",
                "a> STOR /new",
                "at 20",
                "a> DELE /old",
                "at 30",
                "b> RETR /new",
                "at 31",
                "b> RETR /old",
            ]
        );
    }

    #[test]
    fn header_clock_and_names() {
        assert_eq!(
            clock("master-start=100 session-start=1.500000s"),
            Some(Duration::from_millis(101_500))
        );
        assert_eq!(iso_secs("2023-11-14T22:13:20Z"), Some(1_700_000_000));
        assert_eq!(client_name("session-3.1"), "session-3-1");
        assert_eq!(client_name("7"), "s7");
    }
}

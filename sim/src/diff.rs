//! Comparing the replies a scenario expects (`NAME< TEXT`, what a recording
//! holds) with the ones a run received: both sides are normalised (what
//! legitimately differs between a real network and the simulated one), then
//! aligned with a real diff ([`similar`], Myers), so one missing line is one
//! difference and not a shift of every later line. Used by the runner (any
//! scenario with expected replies) and by the replay (one diff per session).
//!
//! Normalisation, applied to both sides: IPv4 addresses and ports
//! (`h1,h2,h3,h4,p1,p2` in 227, `(|||port|)` in 229, `a.b.c.d` or
//! `a.b.c.d:port` anywhere), times (`213 YYYYMMDDHHMMSS`, `modify=` facts),
//! the byte count of a listing's 226 (listings carry owners and mtimes the
//! simulation does not reproduce), the counters of `SITE SLAVES` (cluster
//! wide, outside the session), session numbers in `SITE WHO`, the operating
//! system's wording of a failed data connection in a 425, 426 or 451 (its
//! `(os error N)`, and the words for a lost connection, after whatever
//! prefix names the side), and trailing blanks.

use std::collections::BTreeMap;

use similar::{capture_diff_slices, group_diff_ops, Algorithm, DiffTag};

use crate::script::Scenario;

/// Lines of unchanged context shown around each difference.
pub const CONTEXT: usize = 2;

/// One line of a hunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HunkLine {
    pub tag: Tag,
    /// The line as recorded or received (not normalised).
    pub text: String,
    /// Its line in the recording (recorded and context lines).
    pub line: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The same on both sides.
    Same,
    /// Recorded, not received in the replay.
    Recorded,
    /// Received in the replay, not recorded.
    Replayed,
}

/// The differences of one client's replies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionDiff {
    /// The file the expected lines come from.
    pub file: String,
    pub client: String,
    /// Reply lines on each side.
    pub recorded: usize,
    pub replayed: usize,
    /// Recorded lines the replay did not get (changed or missing).
    pub removed: usize,
    /// Replayed lines the recording does not have (changed or new).
    pub added: usize,
    /// Each place that differs, with [`CONTEXT`] lines around it.
    pub hunks: Vec<Vec<HunkLine>>,
}

impl SessionDiff {
    pub fn agrees(&self) -> bool {
        self.removed == 0 && self.added == 0
    }

    /// One line: the counts.
    pub fn summary(&self) -> String {
        if self.agrees() {
            return format!(
                "{}: {}: agrees ({} reply lines)",
                self.file, self.client, self.recorded
            );
        }
        format!(
            "{}: {}: {} difference(s): {} recorded line(s) not replayed, {} replayed line(s) not recorded ({} recorded, {} replayed)",
            self.file,
            self.client,
            self.hunks.len(),
            self.removed,
            self.added,
            self.recorded,
            self.replayed
        )
    }

    /// The summary, then each hunk: `@@ FILE:LINE @@`, context lines with
    /// two blanks, recorded lines with `-`, replayed ones with `+`.
    pub fn render(&self) -> Vec<String> {
        let mut out = vec![self.summary()];
        for hunk in &self.hunks {
            let first = hunk
                .iter()
                .find(|l| l.tag != Tag::Same)
                .and_then(|l| l.line)
                .or_else(|| hunk.iter().find_map(|l| l.line))
                .map_or(String::new(), |n| format!(":{n}"));
            out.push(format!("@@ {}{first} @@", self.file));
            for l in hunk {
                let mark = match l.tag {
                    Tag::Same => ' ',
                    Tag::Recorded => '-',
                    Tag::Replayed => '+',
                };
                let at = l.line.map_or(String::new(), |n| n.to_string());
                out.push(format!("{mark} {at:>5}  {}", l.text));
            }
        }
        out
    }
}

/// Aligns `expected` (recorded lines with their line numbers) and `got`
/// (received lines) after normalisation.
pub fn compare(file: &str, client: &str, expected: &[(usize, &str)], got: &[&str]) -> SessionDiff {
    let old: Vec<String> = expected.iter().map(|(_, t)| normalize(t)).collect();
    let new: Vec<String> = got.iter().map(|t| normalize(t)).collect();
    let ops = capture_diff_slices(Algorithm::Myers, &old, &new);
    let mut d = SessionDiff {
        file: file.to_string(),
        client: client.to_string(),
        recorded: old.len(),
        replayed: new.len(),
        ..SessionDiff::default()
    };
    for group in group_diff_ops(ops, CONTEXT) {
        let mut hunk = Vec::new();
        for op in group {
            let (tag, o, n) = op.as_tag_tuple();
            match tag {
                DiffTag::Equal => {
                    for i in o {
                        hunk.push(HunkLine {
                            tag: Tag::Same,
                            text: expected[i].1.to_string(),
                            line: Some(expected[i].0),
                        });
                    }
                }
                DiffTag::Delete | DiffTag::Insert | DiffTag::Replace => {
                    d.removed += o.len();
                    d.added += n.len();
                    for i in o {
                        hunk.push(HunkLine {
                            tag: Tag::Recorded,
                            text: expected[i].1.to_string(),
                            line: Some(expected[i].0),
                        });
                    }
                    for i in n {
                        hunk.push(HunkLine {
                            tag: Tag::Replayed,
                            text: got[i].to_string(),
                            line: None,
                        });
                    }
                }
            }
        }
        d.hunks.push(hunk);
    }
    d
}

/// The lines client `name` received, from a transcript (`name< TEXT`).
pub fn received<'t>(transcript: &'t [String], name: &str) -> Vec<&'t str> {
    let prefix = format!("{name}< ");
    transcript
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .collect()
}

/// Compares a scenario's expected replies with a run's transcript, per
/// client; one [`SessionDiff`] per client that has expectations.
pub fn scenario_diffs(sc: &Scenario, transcript: &[String]) -> Vec<SessionDiff> {
    let mut expected: BTreeMap<&str, Vec<(usize, &str)>> = BTreeMap::new();
    for e in &sc.expectations {
        expected
            .entry(e.client.as_str())
            .or_default()
            .push((e.line, e.text.as_str()));
    }
    expected
        .into_iter()
        .map(|(client, exp)| compare(&sc.path, client, &exp, &received(transcript, client)))
        .collect()
}

/// The differences of every client with expected replies, rendered (see
/// [`SessionDiff::render`]); empty when they all agree.
pub fn reply_diff(sc: &Scenario, transcript: &[String]) -> Vec<String> {
    scenario_diffs(sc, transcript)
        .iter()
        .filter(|d| !d.agrees())
        .flat_map(SessionDiff::render)
        .collect()
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
    let out = slave_counters(&out);
    let out = session_numbers(&out);
    lost_connection(&out)
}

/// `SITE SLAVES` lines: `NAME STATE free=N files=N active=N ...`; the
/// counters are the whole cluster's, not the session's.
fn slave_counters(line: &str) -> String {
    const KEYS: [&str; 7] = [
        "free=",
        "files=",
        "active=",
        "planned=",
        "sent=",
        "received=",
        "relayed=",
    ];
    if !line.contains(" free=") || !line.contains(" relayed=") {
        return line.to_string();
    }
    line.split(' ')
        .map(|w| match KEYS.iter().find(|k| w.starts_with(**k)) {
            Some(k) if w[k.len()..].bytes().all(|b| b.is_ascii_digit()) => format!("{k}<n>"),
            _ => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `SITE WHO` lines: `#ID USER from ADDR in CWD DOING`.
fn session_numbers(line: &str) -> String {
    let trimmed = line.trim_start();
    let Some(rest) = trimmed.strip_prefix('#') else {
        return line.to_string();
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || !rest[digits..].starts_with(' ') || !rest.contains(" from ") {
        return line.to_string();
    }
    format!(
        "{}#<session>{}",
        &line[..line.len() - trimmed.len()],
        &rest[digits..]
    )
}

/// The operating system's words for a failed data connection, in the
/// replies that carry them (425, 426, 451): a real run's `std::io` errors
/// end in ` (os error N)`, the simulator's do not, and a connection the
/// peer dropped is `Connection reset by peer`, `Broken pipe`, `Connection
/// aborted` or the simulator's `Connection reset`: one `<connection lost>`,
/// whatever names the side before it (`client data connection: `...).
fn lost_connection(line: &str) -> String {
    if !["425 ", "426 ", "451 "].iter().any(|c| line.starts_with(c)) {
        return line.to_string();
    }
    let line = strip_os_error(line);
    const LOST: [&str; 3] = ["connection reset", "broken pipe", "connection aborted"];
    let mut at = 4;
    loop {
        let lower = line[at..].to_ascii_lowercase();
        if LOST.iter().any(|w| lower.starts_with(w)) {
            return format!("{}<connection lost>", &line[..at]);
        }
        match line[at..].find(": ") {
            Some(i) => at += i + 2,
            None => return line,
        }
    }
}

/// Drops every ` (os error N)`.
fn strip_os_error(line: &str) -> String {
    const OPEN: &str = " (os error ";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(OPEN) {
        let after = &rest[i + OPEN.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..i]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..i + OPEN.len()]);
            rest = after;
        }
    }
    out.push_str(rest);
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
        assert_eq!(
            normalize(" slave-1 online free=123 files=4 active=0 planned=1 sent=9 received=0 relayed=0"),
            " slave-1 online free=<n> files=<n> active=<n> planned=<n> sent=<n> received=<n> relayed=<n>"
        );
        assert_eq!(
            normalize(" #17 u from 127.0.0.1:4000 in / idle"),
            " #<session> u from ADDR:PORT in / idle"
        );
        for lost in [
            "426 Connection closed; transfer aborted: Connection reset by peer (os error 104)",
            "426 Connection closed; transfer aborted: Connection reset",
            "426 Connection closed; transfer aborted: Broken pipe (os error 32)",
        ] {
            assert_eq!(
                normalize(lost),
                "426 Connection closed; transfer aborted: <connection lost>"
            );
        }
    }

    #[test]
    fn os_words_for_a_lost_connection_are_one_thing_after_any_prefix() {
        // Real (std::io, with the OS error number) and simulated (turmoil)
        // wordings of the same failure, behind whatever names the side.
        for (real, simulated, normal) in [
            (
                "426 Connection closed; transfer aborted: client data connection: Connection reset by peer (os error 104)",
                "426 Connection closed; transfer aborted: client data connection: Connection reset by peer",
                "426 Connection closed; transfer aborted: client data connection: <connection lost>",
            ),
            (
                "426 Connection closed; transfer aborted: slave data connection: Broken pipe (os error 32)",
                "426 Connection closed; transfer aborted: slave data connection: Connection reset",
                "426 Connection closed; transfer aborted: slave data connection: <connection lost>",
            ),
            (
                "451 Local error on slave slave-1: data connection: Connection aborted (os error 103)",
                "451 Local error on slave slave-1: data connection: connection aborted",
                "451 Local error on slave slave-1: data connection: <connection lost>",
            ),
            (
                "425 Can't open data connection: Connection refused (os error 111)",
                "425 Can't open data connection: Connection refused",
                "425 Can't open data connection: Connection refused",
            ),
            (
                "426 Connection closed; transfer aborted: client data connection: Connection timed out (os error 110)",
                "426 Connection closed; transfer aborted: client data connection: Connection timed out",
                "426 Connection closed; transfer aborted: client data connection: Connection timed out",
            ),
        ] {
            assert_eq!(normalize(real), normal, "{real}");
            assert_eq!(normalize(simulated), normal, "{simulated}");
        }
        // Only in the replies of a failed data connection.
        for same in [
            "550 /x (os error 2): not found",
            "226 Transfer complete: connection reset by peer.bin",
        ] {
            assert_eq!(normalize(same), same);
        }
        // Everything else is compared as it is.
        for same in [
            "226 Transfer complete, 5000 bytes stored on slave-1",
            "150 Opening BINARY mode data connection for /f.bin (5000 bytes) on slave slave-1",
            "213 5000",
            "200 Type set to I",
            "550 /é.bin: not found",
            "211-Features:",
            "426 Connection closed; transfer aborted: slave slave-1 went offline",
            "#notes from here",
        ] {
            assert_eq!(normalize(same), same);
        }
    }

    #[test]
    fn one_missing_line_is_one_difference_with_context() {
        let exp: Vec<(usize, &str)> = vec![
            (10, "200 a"),
            (11, "200 b"),
            (12, "200 c"),
            (13, "200 d"),
            (14, "200 e"),
        ];
        let got = ["200 a", "200 b", "200 d", "200 e"];
        let d = compare("r.scn", "c", &exp, &got);
        assert_eq!((d.removed, d.added, d.hunks.len()), (1, 0, 1));
        assert_eq!(
            d.render(),
            [
                "r.scn: c: 1 difference(s): 1 recorded line(s) not replayed, 0 replayed line(s) not recorded (5 recorded, 4 replayed)",
                "@@ r.scn:12 @@",
                "     10  200 a",
                "     11  200 b",
                "-    12  200 c",
                "     13  200 d",
                "     14  200 e",
            ]
        );
        // A changed line: one removed, one added; the later lines align.
        let got = ["200 a", "200 b", "200 X", "200 d", "200 e"];
        let d = compare("r.scn", "c", &exp, &got);
        assert_eq!((d.removed, d.added, d.hunks.len()), (1, 1, 1));
        assert_eq!(d.hunks[0][3].text, "200 X");
        assert!(compare(
            "r.scn",
            "c",
            &exp,
            &["200 a", "200 b", "200 c", "200 d", "200 e"]
        )
        .agrees());
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
        let d = reply_diff(&sc, &changed);
        assert_eq!(d[1], "@@ r.scn:5 @@");
        assert_eq!(d[3..], ["-     5  200 NOOP ok", "+        500 no"]);
    }
}

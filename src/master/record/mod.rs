//! Session recording (`record_dir`, `--record DIR`): each control session
//! is written as one scenario file that `dftpd-sim replay` runs in the
//! simulator. The file is in the scenario language (`scenarios/README.md`):
//! a header comment, the slice of cluster state the session touched
//! (`slave`, `file`, `user`, `config` lines: topology may appear anywhere
//! in a scenario, so a path is declared where the session first uses it),
//! then per command an `at Nms` line, the command, its replies as
//! expectation lines (`client< 226 ...`) and `#` notes on PRET/PASV
//! decisions and data outcomes.
//!
//! The [`Recorder`] only formats; where the bytes go is a [`RecordSink`]
//! (files in a directory in production, a buffer in tests). Recording is
//! off unless configured, and then costs one `Option` check per event. The
//! output is buffered in memory and handed to a writer thread in 16 KiB
//! chunks and at session end: a crash of the master may lose a session's
//! tail.
//!
//! Here: the recorder's state and the formatting of commands, replies and
//! transfers. `declare.rs`: the slice of cluster state a session touches
//! (`file`, `dir`, `user` lines). `sink.rs`: the production sink and its
//! writer thread.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::db::{FileMeta, Node};
use super::observe::{BadLine, DataFacts, SessionEvent, SessionObserver};
use super::session::{PlanVerb, Route, Target, TransferJob, TransferOutcome};
use super::MasterState;
use crate::config::PasvWithoutPret;
use crate::link::{TransferFailure, TransferOrder};
use crate::proto::{Reply, VPath};

mod declare;
mod sink;
pub use sink::DirSink;

/// The client's name in a recording.
pub const CLIENT: &str = "client";
/// Stands for the user's password in a recording; the replayer resolves it.
pub const PASSWORD_PLACEHOLDER: &str = "$PASSWORD";
/// What a PASS that failed to log in is recorded as (a wrong password in
/// the replay too, so it fails there as well).
pub const WRONG_PASSWORD: &str = "<redacted-wrong-password>";
/// A listed directory declares at most this many of its files.
const DIR_FILES: usize = 200;

/// Where recordings go: one writer per session.
pub trait RecordSink: Send + Sync {
    fn open(&self, session: u64) -> Option<Box<dyn Write + Send>>;
}

/// What the header says about a session.
pub struct Header {
    pub session: u64,
    pub peer: SocketAddr,
    /// Wall-clock seconds at session start.
    pub unix_now: i64,
    /// The master's monotonic clock at session start (time since the master
    /// started), shared by all its sessions.
    pub clock: Duration,
    /// Wall-clock seconds when the master started (names the master run).
    pub master_start: i64,
}

/// The lines of one command (or the connect), written when the next one
/// starts: what the data connection carried is known only at the
/// transfer's end, and must precede the command in the scenario.
#[derive(Default)]
struct Entry {
    /// `at`, then client steps that go before the command (pins, `data
    /// listen`).
    prelude: Vec<String>,
    lines: Vec<String>,
    /// The data connection of this command, once its transfer ended.
    data: Option<DataStep>,
    /// Index in `lines` of a PASS command, filled in at flush.
    pass_at: Option<usize>,
    /// The client connected to the master instead of the 227 address.
    ignored_address: bool,
    pass_ok: bool,
    /// The transfer of this command ended...
    transfer_done: bool,
    /// ...and a final reply followed.
    final_after_transfer: bool,
}

/// What a command's data connection did, for the replayed client.
struct DataStep {
    upload: bool,
    /// Bytes it carried (0 when nobody reported them).
    bytes: u64,
    /// How the client cut it short, if it did.
    cut: Option<CutKind>,
    /// How long it took, when that is long enough to matter to a replay
    /// (see [`PACE_FROM`]): the replayed client moves its bytes at that
    /// pace, so a fault injected in the middle finds the transfer running.
    over: Option<Duration>,
}

/// Transfers that took at least this long are paced in the replay.
const PACE_FROM: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, PartialEq, Eq)]
enum CutKind {
    /// ABOR during the transfer.
    Abort,
    /// The data connection broke on the client's side (reset).
    Reset,
    /// The client went away (control connection closed).
    Gone,
    /// The client stopped moving bytes: the data timeout ended it.
    Stall,
}

impl DataStep {
    /// The scenario line; `final_reply`: a final reply was sent after the
    /// transfer (a client that died only after reading it was still there).
    fn line(&self, final_reply: bool) -> String {
        let cut = self.cut.map(|c| match c {
            CutKind::Abort => "abort-after",
            CutKind::Reset => "reset-after",
            CutKind::Gone if final_reply => "reset-after",
            CutKind::Gone => "gone-after",
            CutKind::Stall => "stall-after",
        });
        let n = self.bytes;
        let over = self
            .over
            .map(|d| format!(" over={}", micros(d, "s")))
            .unwrap_or_default();
        match (self.upload, cut) {
            (true, None) => format!("{CLIENT}: data send {n}{over}"),
            (true, Some(c)) => format!("{CLIENT}: data send {n} {c}={n}{over}"),
            (false, Some(c)) => format!("{CLIENT}: data read {c}={n}{over}"),
            (false, None) if self.over.is_some() => {
                format!("{CLIENT}: data read bytes={n}{over}")
            }
            (false, None) => String::new(),
        }
    }
}

/// Formats one session's recording.
pub struct Recorder {
    out: Box<dyn Write + Send>,
    /// Every path already declared (`file`, `dir`) or found absent.
    named: BTreeSet<VPath>,
    users: BTreeSet<String>,
    /// The slave the last PRET planned (its decision was pinned then).
    planned: Option<String>,
    entry: Entry,
    last_verb: String,
    /// When the current command arrived (after session start).
    last_at: Duration,
    /// The slaves at session start (name, free bytes, online), written at
    /// the session's first upload decision or at its end, whichever comes
    /// first (see [`Self::upload_decision`]).
    slaves: Option<Vec<(String, u64, bool)>>,
    failed: bool,
    finished: bool,
}

fn split_verb(text: &str) -> (String, &str) {
    let text = text.trim_start();
    match text.split_once(' ') {
        Some((v, a)) => (v.to_ascii_uppercase(), a.trim()),
        None => (text.trim_end().to_ascii_uppercase(), ""),
    }
}

fn mode_name(m: PasvWithoutPret) -> &'static str {
    match m {
        PasvWithoutPret::Listings => "listings",
        PasvWithoutPret::Refuse => "refuse",
        PasvWithoutPret::Relay => "relay",
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix seconds.
fn iso(t: i64) -> String {
    let m = crate::proto::listing::mdtm(t);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &m[0..4],
        &m[4..6],
        &m[6..8],
        &m[8..10],
        &m[10..12],
        &m[12..14]
    )
}

/// `12.345ms` / `1.000250s`: a duration to the microsecond.
fn micros(d: Duration, unit: &str) -> String {
    let us = d.as_micros();
    match unit {
        "s" => format!("{}.{:06}s", us / 1_000_000, us % 1_000_000),
        _ => format!("{}.{:03}ms", us / 1000, us % 1000),
    }
}

/// A path the scenario language can carry in a `file` line.
fn declarable(p: &VPath) -> bool {
    !p.as_str().contains(|c: char| c.is_whitespace() || c == '#')
}

impl Recorder {
    /// Starts a recording: header, the cluster slice every session needs
    /// (master settings that change replies, the slaves), the connect.
    pub fn start(out: Box<dyn Write + Send>, h: &Header, st: &MasterState) -> Recorder {
        let mut r = Recorder {
            out,
            named: BTreeSet::new(),
            users: BTreeSet::new(),
            planned: None,
            entry: Entry::default(),
            last_verb: String::new(),
            last_at: Duration::ZERO,
            slaves: Some(
                st.slaves
                    .iter()
                    .map(|(_, s)| (s.name.clone(), s.free, s.is_online()))
                    .collect(),
            ),
            failed: false,
            finished: false,
        };
        let mut head = vec![
            "# dftpd session recording".to_string(),
            format!("# date: {}", iso(h.unix_now)),
            format!("# session: {}  peer: {}", h.session, h.peer),
            // The clock all sessions of this master share: a replay of
            // several recordings orders them by it.
            format!(
                "# clock: master-start={} session-start={}",
                h.master_start,
                micros(h.clock, "s")
            ),
            format!("# dftpd version: {}", env!("CARGO_PKG_VERSION")),
            "# replay: dftpd-sim replay THIS_FILE (or the directory) [--seed S] [--trace]"
                .to_string(),
            "# cluster at session start".to_string(),
            format!(
                "config pasv_without_pret={}",
                mode_name(st.config.pasv_without_pret)
            ),
            format!("config allow_overwrite={}", st.config.allow_overwrite),
        ];
        let defaults = crate::config::MasterConfig::default();
        if st.config.min_free_bytes > 0 {
            head.push(format!(
                "config min_free_bytes={}",
                st.config.min_free_bytes
            ));
        }
        for (key, value, default) in [
            (
                "data_timeout_ms",
                st.config.data_timeout_ms,
                defaults.data_timeout_ms,
            ),
            (
                "idle_timeout_ms",
                st.config.idle_timeout_ms,
                defaults.idle_timeout_ms,
            ),
        ] {
            if value != default {
                head.push(format!("config {key}={value}"));
            }
        }
        if st.tls_available {
            head.push("ftps  # FTPS offered: replayed at the FTP level, in clear".into());
        }
        head.push(format!("{CLIENT}: connect"));
        r.write_lines(&head);
        r
    }

    /// The session's first upload went to `chosen`: now the slaves are
    /// written, `chosen` with 1 byte more free space than any other online
    /// slave when it did not already have the most. The master picks the
    /// roomiest of the least loaded slaves and breaks ties with a counter
    /// all sessions share, and slaves on one disk report nearly the same
    /// free space, changing by the second: without this the replay could
    /// place the upload elsewhere. Later calls do nothing.
    pub fn upload_decision(&mut self, chosen: Option<&str>) {
        let Some(slaves) = self.slaves.take() else {
            return;
        };
        let most_other = slaves
            .iter()
            .filter(|(n, _, online)| *online && Some(n.as_str()) != chosen)
            .map(|(_, free, _)| *free)
            .max()
            .unwrap_or(0);
        let mut lines = vec!["# slaves at session start (free space as `avail=`)".to_string()];
        let mut offline = Vec::new();
        for (name, free, online) in &slaves {
            let avail = if Some(name.as_str()) == chosen && *free <= most_other {
                most_other.saturating_add(1)
            } else {
                *free
            };
            if *online {
                lines.push(format!("slave {name} avail={avail}"));
            } else {
                lines.push(format!("slave {name} avail={avail}  # offline"));
                offline.push(name);
            }
        }
        // Offline at session start: crashed once the replay's cluster is
        // up (the step runs before the client's first command).
        for name in offline {
            lines.push(format!("crash {name}"));
        }
        self.write_lines(&lines);
    }

    fn write_lines(&mut self, lines: &[String]) {
        if self.failed {
            return;
        }
        for l in lines {
            if let Err(e) = writeln!(self.out, "{l}") {
                tracing::warn!(error = %e, "session recording failed; stopping it");
                self.failed = true;
                return;
            }
        }
    }

    fn flush_entry(&mut self) {
        let mut e = std::mem::take(&mut self.entry);
        if let Some(i) = e.pass_at {
            let pw = if e.pass_ok {
                PASSWORD_PLACEHOLDER
            } else {
                WRONG_PASSWORD
            };
            e.lines[i] = format!("{CLIENT}> PASS {pw}");
        }
        let mut all = e.prelude;
        if let Some(d) = &e.data {
            let line = d.line(e.final_after_transfer);
            if !line.is_empty() {
                all.push(line);
            }
        }
        if e.ignored_address {
            all.push(format!("{CLIENT}: data connect ignore-address"));
        }
        all.extend(e.lines);
        self.write_lines(&all);
    }

    /// A command line arrives, `at` after session start: starts its entry.
    /// When [`Self::names_paths`], the driver then calls [`Self::touch`].
    pub fn command(&mut self, at: Duration, text: &str) {
        self.flush_entry();
        let (verb, _) = split_verb(text);
        let at_line = format!("at {}", micros(at, "ms"));
        let (prelude, line) = match verb.as_str() {
            "PASS" => {
                self.entry.pass_at = Some(0);
                (vec![], format!("{CLIENT}> PASS ****"))
            }
            // The client's own address cannot be replayed: the simulated
            // client listens and names its listener instead.
            "PORT" => (
                vec![format!("{CLIENT}: data listen")],
                format!("{CLIENT}> PORT $PORT"),
            ),
            "EPRT" => (
                vec![format!("{CLIENT}: data listen")],
                format!("{CLIENT}> EPRT $EPRT"),
            ),
            _ => match crate::master::users::redacted(text) {
                Some(safe) => (vec![], format!("{CLIENT}> {safe}")),
                None => (vec![], format!("{CLIENT}> {text}")),
            },
        };
        self.entry.prelude = vec![at_line];
        self.entry.prelude.extend(prelude);
        self.entry.lines.push(line);
        self.last_verb = verb;
        self.last_at = at;
    }

    /// One reply sent to the client.
    pub fn reply(&mut self, r: &Reply) {
        for l in r.to_wire().split("\r\n").filter(|l| !l.is_empty()) {
            self.entry.lines.push(format!("{CLIENT}< {l}"));
        }
        if self.entry.transfer_done && r.code >= 200 {
            self.entry.final_after_transfer = true;
        }
        if self.entry.pass_at.is_some() && r.code == 230 {
            self.entry.pass_ok = true;
        }
    }

    /// The session logged in as `user`: declare the account, its
    /// password replaced by the placeholder.
    pub fn logged_in(&mut self, user: &str, st: &MasterState) {
        if !self.users.insert(user.to_string()) {
            return;
        }
        let Some(u) = st.config.users.iter().find(|u| u.name == user) else {
            return;
        };
        if u.name.contains(char::is_whitespace) || u.name.is_empty() {
            return;
        }
        let mut line = format!("user {} {PASSWORD_PLACEHOLDER}", u.name);
        if u.admin {
            line.push_str(" admin");
        }
        if u.home != "/" && !u.home.contains(char::is_whitespace) {
            line.push_str(&format!(" home={}", u.home));
        }
        self.write_lines(&[line]);
    }

    /// A `#` note in the current entry (decisions, data outcomes).
    pub fn note(&mut self, text: &str) {
        self.entry.lines.push(format!("# {text}"));
    }

    /// The client of the current data command connected to the master's
    /// address instead of the one in the 227 reply (curl's default): the
    /// replayed client does the same.
    pub fn ignored_address(&mut self) {
        self.entry.ignored_address = true;
    }

    /// The current command is an upload of `size` bytes (`None`: unknown).
    pub fn upload(&mut self, size: Option<u64>) {
        self.entry.data = Some(DataStep {
            upload: true,
            bytes: size.unwrap_or(0),
            cut: None,
            over: None,
        });
    }

    /// The master's choice of slave for `path` (a PRET's, or a data
    /// command's without PRET), pinned for the replay when there was a
    /// choice to make.
    fn decision(&mut self, verb: PlanVerb, path: Option<&VPath>, slave: &str, st: &MasterState) {
        let online = |ids: &mut dyn Iterator<Item = super::db::SlaveId>| {
            ids.filter(|&id| st.slaves.is_online(id)).count()
        };
        let existing = path.and_then(|p| st.db.file(p).ok());
        let choices = match (verb, existing) {
            (PlanVerb::Retr, Some(f)) | (PlanVerb::Stor | PlanVerb::Appe, Some(f)) => {
                online(&mut f.holders.iter().copied())
            }
            _ => online(&mut st.slaves.iter().map(|(id, _)| id)),
        };
        if choices < 2 {
            return;
        }
        let shown = match path {
            Some(p) if declarable(p) => p.to_string(),
            Some(_) => return,
            None => "-".to_string(),
        };
        self.entry
            .prelude
            .push(format!("{CLIENT}: pin {shown} {slave}"));
    }

    /// A transfer started: pins a decision made by the data command itself
    /// (no PRET) and the name a STOU picked.
    fn transfer_started(&mut self, job: &TransferJob, st: &MasterState) {
        let planned = self.planned.take();
        let path = match &job.order {
            TransferOrder::Send { path, .. } | TransferOrder::Receive { path, .. } => path,
        };
        if self.last_verb == "STOU" {
            if let Some(name) = path
                .file_name()
                .filter(|n| !n.contains(char::is_whitespace))
            {
                self.entry
                    .prelude
                    .push(format!("{CLIENT}: pin-stou {name}"));
            }
        }
        if job.is_upload() {
            self.upload_decision(Some(&job.slave_name));
        }
        let fresh = job.route != Route::SlavePassive && planned.as_deref() != Some(&job.slave_name);
        if fresh {
            let verb = match (job.is_upload(), self.last_verb.as_str()) {
                (false, _) => PlanVerb::Retr,
                (true, "APPE") => PlanVerb::Appe,
                (true, _) => PlanVerb::Stor,
            };
            self.decision(verb, Some(path), &job.slave_name, st);
        }
    }

    /// A transfer ended: notes what happened, and what the replayed
    /// client must do with its data connection to get the same.
    fn transfer_finished(
        &mut self,
        job: &TransferJob,
        outcome: &TransferOutcome,
        aborted: bool,
        duration: Duration,
        data: &DataFacts,
    ) {
        let slave = &job.slave_name;
        let carried = data.bytes.map_or(" (bytes not reported)".to_string(), |n| {
            format!(" after {n} bytes")
        });
        self.note(&match outcome {
            TransferOutcome::Sent { bytes } => format!("data: slave {slave} sent {bytes} bytes"),
            TransferOutcome::Committed { size, crc32, .. } => format!(
                "data: slave {slave} stored {size} bytes crc32={crc32:08x} ({} received)",
                data.bytes.unwrap_or(*size)
            ),
            TransferOutcome::Failed(f) => format!("data: slave {slave} failed: {f:?}{carried}"),
            // A fault of the cluster is not replayed by itself: say how.
            TransferOutcome::SlaveLost => format!(
                "data: slave {slave} lost{carried}, {} into the session (to replay it with this session alone: --crash-slave {slave} --at {})",
                micros(self.last_at + duration, "s"),
                micros(self.last_at + duration / 2, "s")
            ),
            TransferOutcome::IgnoredPasvAddress { announced, used } => {
                format!("data: the client connected to {used}, not the announced {announced}")
            }
            TransferOutcome::Refused(r) => {
                format!("data: slave {slave} received it; commit refused: {}", r.code)
            }
            TransferOutcome::Unknown => {
                format!("data: slave {slave} lost while committing: outcome unknown")
            }
        });
        if data.relayed {
            self.note("data: relayed through the master");
        }
        if data.caught {
            self.ignored_address();
        }
        if aborted {
            self.note("the client sent ABOR during the transfer");
        }
        if data.client_gone {
            self.note("the client went away during the transfer");
        }
        let cut = if aborted {
            Some(CutKind::Abort)
        } else if data.client_gone {
            Some(CutKind::Gone)
        } else {
            match outcome {
                TransferOutcome::Failed(TransferFailure::Network(why)) => {
                    Some(if why.contains("no progress") {
                        CutKind::Stall
                    } else {
                        CutKind::Reset
                    })
                }
                _ => None,
            }
        };
        let bytes = match outcome {
            TransferOutcome::Committed { size, .. } => data.bytes.unwrap_or(*size),
            _ => data.bytes.unwrap_or(0),
        };
        let over = (duration >= PACE_FROM && bytes > 0).then_some(duration);
        if job.is_upload() || cut.is_some() || over.is_some() {
            self.entry.data = Some(DataStep {
                upload: job.is_upload(),
                bytes,
                cut,
                over,
            });
        }
        self.entry.transfer_done = true;
    }

    /// The session ended `at` after its start; `client_closed`: the client
    /// went away (not after QUIT, not closed by the server).
    pub fn finish(&mut self, at: Duration, client_closed: bool) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.upload_decision(None);
        self.flush_entry();
        let mut tail = Vec::new();
        if client_closed && self.last_verb != "QUIT" {
            tail.push(format!("at {}", micros(at, "ms")));
            tail.push(format!("{CLIENT}: close"));
        }
        tail.push(format!("# session ended at {}", micros(at, "ms")));
        self.write_lines(&tail);
        if !self.failed {
            if let Err(e) = self.out.flush() {
                tracing::warn!(error = %e, "session recording: flush failed");
            }
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // A session task cancelled mid-way (master shutdown) still leaves
        // what it saw.
        if !self.finished {
            self.upload_decision(None);
            self.flush_entry();
            let _ = self.out.flush();
        }
    }
}

/// The recorder watches a session through its events (the driver has no
/// other hook for it): each event becomes lines of the scenario.
impl SessionObserver for Recorder {
    fn on(&mut self, event: &SessionEvent<'_>, st: &MasterState) {
        match event {
            // The header is written by `start`.
            SessionEvent::Opened { .. } => {}
            SessionEvent::Command { at, text, cwd, .. } => {
                self.command(*at, text);
                if Recorder::names_paths(text) {
                    self.touch(text, cwd, st);
                }
            }
            SessionEvent::BadLine(BadLine::TooLong) => {
                self.note("a command line too long to record")
            }
            SessionEvent::BadLine(BadLine::NotUtf8) => {
                self.note("a command line that is not UTF-8")
            }
            SessionEvent::Reply(r) => self.reply(r),
            SessionEvent::Planned(plan) => {
                let on = match plan.target {
                    Target::Master => "the master".to_string(),
                    Target::Slave(s) => {
                        let name = st.slaves.name(s).to_string();
                        if matches!(plan.verb, PlanVerb::Stor | PlanVerb::Appe | PlanVerb::Stou) {
                            self.upload_decision(Some(&name));
                        }
                        self.decision(plan.verb, plan.path.as_ref(), &name, st);
                        self.planned = Some(name.clone());
                        format!("slave {name}")
                    }
                };
                self.note(&format!("PRET decision: {on}"));
            }
            SessionEvent::PassiveOpened {
                target,
                xfer,
                result,
            } => {
                let on = match target {
                    Target::Master => "the master".to_string(),
                    Target::Slave(s) => format!("slave {}", st.slaves.name(*s)),
                };
                self.note(&match result {
                    Ok(a) => format!("passive decision: {on} at {a} (transfer {xfer})"),
                    Err(e) => format!("passive decision: {on} failed: {e}"),
                });
            }
            SessionEvent::TransferStarted(job) => self.transfer_started(job, st),
            SessionEvent::TransferFinished {
                job,
                outcome,
                aborted,
                duration,
                data,
                ..
            } => self.transfer_finished(job, outcome, *aborted, *duration, data),
            SessionEvent::ListingSent(result) => self.note(&match result {
                Ok(n) => format!("data: listing of {n} bytes sent"),
                Err(e) => format!("data: listing failed: {e}"),
            }),
            SessionEvent::LoggedIn { user } => self.logged_in(user, st),
            // The 530 reply is in the transcript already.
            SessionEvent::LoginFailed { .. } => {}
            SessionEvent::TlsStarted => self.note("control connection encrypted (AUTH TLS)"),
            SessionEvent::Closed { at, client_closed } => self.finish(*at, *client_closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MasterConfig, UserConfig};
    use crate::master::db::FileMeta;
    use std::sync::{Arc, Mutex};

    /// A writer whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn state() -> MasterState {
        let cfg = MasterConfig {
            users: vec![UserConfig {
                name: "alice".into(),
                password: "hunter2".into(),
                home: "/".into(),
                admin: false,
                ..Default::default()
            }],
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(Arc::new(cfg));
        let s1 = st.slaves.id_for("s1");
        let p = VPath::parse_absolute("/pub/a.bin").unwrap();
        st.db.mkdir_all(&p.parent().unwrap(), "x", 0).unwrap();
        let owner = st.db.intern("x");
        st.db
            .put_file(
                &p,
                FileMeta {
                    version: 1,
                    size: 1234,
                    mtime: 0,
                    owner,
                    group: owner,
                    crc32: Some(0xabcd),
                    holders: [s1].into_iter().collect(),
                },
            )
            .unwrap();
        st
    }

    fn text(b: &Buf) -> String {
        String::from_utf8(b.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn a_session_is_recorded_as_a_scenario_with_the_password_redacted() {
        let st = state();
        let buf = Buf::default();
        let h = Header {
            session: 7,
            peer: "10.0.0.9:4000".parse().unwrap(),
            unix_now: 1_700_000_000,
            clock: Duration::from_micros(2_500_000),
            master_start: 1_699_999_998,
        };
        let mut r = Recorder::start(Box::new(buf.clone()), &h, &st);
        let root = VPath::root();
        r.reply(&Reply::new(220, "dftpd ready"));
        r.command(Duration::from_millis(3), "USER alice");
        r.touch("USER alice", &root, &st);
        r.reply(&Reply::new(331, "Password required"));
        r.command(Duration::from_millis(5), "PASS hunter2");
        r.touch("PASS hunter2", &root, &st);
        r.reply(&Reply::new(230, "User alice logged in"));
        r.logged_in("alice", &st);
        r.command(Duration::from_millis(9), "PRET RETR /pub/a.bin");
        r.touch("PRET RETR /pub/a.bin", &root, &st);
        r.reply(&Reply::new(200, "OK"));
        r.command(Duration::from_millis(12), "STOR /pub/new");
        r.touch("STOR /pub/new", &root, &st);
        // Now it exists (the upload committed); naming it again declares
        // nothing.
        let mut st = st;
        let owner = st.db.intern("x");
        let new = VPath::parse_absolute("/pub/new").unwrap();
        let meta = FileMeta {
            version: 1,
            size: 10,
            mtime: 0,
            owner,
            group: owner,
            crc32: None,
            holders: [0].into_iter().collect(),
        };
        st.db.put_file(&new, meta).unwrap();
        r.touch("SIZE /pub/new", &root, &st);
        r.reply(&Reply::new(150, "go"));
        r.note("data: stored 10 bytes");
        r.upload(Some(10));
        r.reply(&Reply::new(226, "Transfer complete"));
        r.command(Duration::from_millis(20), "PASS again");
        r.touch("PASS again", &root, &st);
        r.reply(&Reply::new(503, "Already logged in"));
        r.command(Duration::from_millis(21), "PORT 10,0,0,9,20,1");
        r.touch("PORT 10,0,0,9,20,1", &root, &st);
        r.reply(&Reply::new(200, "PORT command successful"));
        r.finish(Duration::from_millis(30), true);
        let t = text(&buf);
        assert!(!t.contains("hunter2"), "{t}");
        assert!(!t.contains("again"), "{t}");
        assert!(t.contains("# date: 2023-11-14T22:13:20Z\n"), "{t}");
        assert!(
            t.contains("client: connect\nclient< 220 dftpd ready\n"),
            "{t}"
        );
        assert!(t.contains("slave s1 avail=0  # offline\ncrash s1\n"), "{t}");
        assert!(
            t.contains("at 5.000ms\nclient> PASS $PASSWORD\nclient< 230 User alice logged in\n"),
            "{t}"
        );
        assert!(t.contains("user alice $PASSWORD\n"), "{t}");
        assert!(
            t.contains("file s1 /pub/a.bin size=1234  # crc32=0000abcd\n"),
            "{t}"
        );
        assert!(t.contains("at 12.000ms\nclient: data send 10\nclient> STOR /pub/new\nclient< 150 go\n# data: stored 10 bytes\nclient< 226 Transfer complete\n"), "{t}");
        // The shared clock, the directory on the way, the path not there yet.
        assert!(
            t.contains("# clock: master-start=1699999998 session-start=2.500000s\n"),
            "{t}"
        );
        assert!(t.contains("dir /pub\n"), "{t}");
        assert!(t.contains("absent /pub/new\n"), "{t}");
        assert!(
            t.contains(&format!("client> PASS {WRONG_PASSWORD}\n")),
            "{t}"
        );
        assert!(
            t.contains("client: data listen\nclient> PORT $PORT\n"),
            "{t}"
        );
        assert!(
            t.ends_with("at 30.000ms\nclient: close\n# session ended at 30.000ms\n"),
            "{t}"
        );
        // The file is declared once, however often it is named.
        assert_eq!(t.matches("file s1 /pub/a.bin").count(), 1);
        // The session's own upload is never declared as initial state.
        assert!(!t.contains("/pub/new size"), "{t}");
    }

    #[test]
    fn the_dir_sink_writes_one_file_per_session_off_the_session_task() {
        let dir = std::env::temp_dir().join(format!("dftpd-record-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let sink = DirSink::create(dir.clone()).unwrap();
        for _ in 0..2 {
            let mut w = sink.open(3).unwrap();
            for i in 0..5000 {
                writeln!(w, "line {i}").unwrap();
            }
            w.flush().unwrap();
        }
        // The second session 3 (a restarted master) gets its own file.
        let want: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for name in ["session-3.scn", "session-3.1.scn"] {
            loop {
                let got = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
                if got == want {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{name}: {} bytes",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn data_connections_and_decisions_are_recorded_for_the_replayed_client() {
        use crate::link::{TransferFailure, TransferOrder};
        use crate::master::registry::SlaveState;
        use crate::master::session::{Plan, TransferJob};
        let mut st = state();
        let s2 = st.slaves.id_for("s2");
        for id in [0, s2] {
            st.slaves.get_mut(id).unwrap().state = SlaveState::Online;
        }
        let buf = Buf::default();
        let h = Header {
            session: 1,
            peer: "127.0.0.1:1".parse().unwrap(),
            unix_now: 0,
            clock: Duration::ZERO,
            master_start: 0,
        };
        let mut r = Recorder::start(Box::new(buf.clone()), &h, &st);
        let root = VPath::root();
        let job = |path: &str, upload: bool| {
            let path = VPath::parse_absolute(path).unwrap();
            TransferJob {
                slave: s2,
                slave_name: "s2".into(),
                xfer: 9,
                order: if upload {
                    TransferOrder::Receive {
                        path: path.clone(),
                        offset: None,
                        base: None,
                    }
                } else {
                    TransferOrder::Send {
                        path,
                        offset: 0,
                        version: None,
                        rate: None,
                        pending: None,
                    }
                },
                route: Route::SlavePassive,
                opening: Reply::new(150, "go"),
                upload: None,
            }
        };
        let finished = |r: &mut Recorder, st: &MasterState, job: &TransferJob, o, data| {
            r.on(
                &SessionEvent::TransferFinished {
                    job,
                    outcome: &o,
                    aborted: false,
                    duration: Duration::from_millis(500),
                    data,
                    unix_now: 0,
                },
                st,
            )
        };
        // An upload planned by PRET on one of two online slaves: pinned.
        let event = SessionEvent::Command {
            at: Duration::from_millis(1),
            text: "PRET STOR /pub/new",
            cwd: &root,
            verb: None,
        };
        r.on(&event, &st);
        let plan = Plan {
            verb: PlanVerb::Stor,
            path: Some(VPath::parse_absolute("/pub/new").unwrap()),
            target: Target::Slave(s2),
        };
        r.on(&SessionEvent::Planned(&plan), &st);
        // A download the client reset after 700 bytes; it got its 426.
        let event = SessionEvent::Command {
            at: Duration::from_millis(2),
            text: "RETR /pub/a.bin",
            cwd: &root,
            verb: None,
        };
        r.on(&event, &st);
        let down = job("/pub/a.bin", false);
        r.on(&SessionEvent::TransferStarted(&down), &st);
        let reset = TransferOutcome::Failed(TransferFailure::Network("Connection reset".into()));
        let moved = DataFacts {
            bytes: Some(700),
            ..DataFacts::default()
        };
        finished(&mut r, &st, &down, reset, moved);
        r.reply(&Reply::new(426, "Connection closed; transfer aborted"));
        // An upload whose client died after 300 bytes: no final reply.
        let event = SessionEvent::Command {
            at: Duration::from_millis(3),
            text: "STOR /pub/b",
            cwd: &root,
            verb: None,
        };
        r.on(&event, &st);
        let up = job("/pub/b", true);
        let gone = DataFacts {
            bytes: Some(300),
            client_gone: true,
            ..DataFacts::default()
        };
        finished(
            &mut r,
            &st,
            &up,
            TransferOutcome::Failed(TransferFailure::Aborted),
            gone,
        );
        // A slow download that completed: paced in the replay.
        let event = SessionEvent::Command {
            at: Duration::from_millis(3),
            text: "RETR /pub/a.bin",
            cwd: &root,
            verb: None,
        };
        r.on(&event, &st);
        let sent = DataFacts {
            bytes: Some(5000),
            ..DataFacts::default()
        };
        finished(
            &mut r,
            &st,
            &down,
            TransferOutcome::Sent { bytes: 5000 },
            sent,
        );
        r.reply(&Reply::new(226, "Transfer complete"));
        // The slave lost mid-download: where to put the what-if crash.
        let event = SessionEvent::Command {
            at: Duration::from_millis(4),
            text: "RETR /pub/a.bin",
            cwd: &root,
            verb: None,
        };
        r.on(&event, &st);
        finished(
            &mut r,
            &st,
            &down,
            TransferOutcome::SlaveLost,
            DataFacts::default(),
        );
        r.finish(Duration::from_millis(5), true);
        let t = text(&buf);
        assert!(
            t.contains("at 1.000ms\nclient: pin /pub/new s2\nclient> PRET STOR /pub/new\n"),
            "{t}"
        );
        assert!(
            t.contains("at 2.000ms\nclient: data read reset-after=700 over=0.500000s\nclient> RETR /pub/a.bin\n"),
            "{t}"
        );
        assert!(
            t.contains("at 3.000ms\nclient: data send 300 gone-after=300 over=0.500000s\nclient> STOR /pub/b\n"),
            "{t}"
        );
        assert!(
            t.contains("client: data read bytes=5000 over=0.500000s\nclient> RETR /pub/a.bin\n"),
            "{t}"
        );
        assert!(
            t.contains("# data: slave s2 lost (bytes not reported), 0.504000s into the session (to replay it with this session alone: --crash-slave s2 --at 0.254000s)\n"),
            "{t}"
        );
    }

    #[test]
    fn multi_line_replies_keep_each_line() {
        let st = state();
        let buf = Buf::default();
        let h = Header {
            session: 1,
            peer: "127.0.0.1:1".parse().unwrap(),
            unix_now: 0,
            clock: Duration::ZERO,
            master_start: 0,
        };
        let mut r = Recorder::start(Box::new(buf.clone()), &h, &st);
        r.command(Duration::ZERO, "FEAT");
        r.touch("FEAT", &VPath::root(), &st);
        r.reply(&Reply::multi(
            211,
            vec!["Features:".into(), "PRET".into(), "End".into()],
        ));
        r.finish(Duration::from_millis(1), false);
        let t = text(&buf);
        assert!(
            t.contains("client< 211-Features:\nclient< PRET\nclient< 211 End\n"),
            "{t}"
        );
    }
}

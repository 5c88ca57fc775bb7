//! A scripted FTP client, run as one turmoil host per scenario client.
//!
//! The runner hands it [`ClientOp`]s over a channel; it executes them one at
//! a time and writes what happened into the shared [`Transcript`]: every
//! reply line, each data connection's size and CRC-32 (and a listing's text),
//! and any invariant it saw broken (a command without exactly one final
//! reply, a 226 on RETR whose bytes match no stored copy, a 226 on a
//! download whose data connection never ended).
//!
//! It is deliberately a plain, strict client: it follows the 227/229 address
//! it is given, connects the data connection when the server says 1xx (or
//! earlier on `data connect`), and never retries.
//!
//! Commands and replies are here; data connections (opening them, the data
//! phase of a transfer, a client dying mid-transfer) are in `data.rs`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dftpd::proto::VPath;
use dftpd::slave::mem::MemDisk;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::env::{content, crc32, SimListener, SimStream};
use crate::history::{Effect, Op, Status};
use crate::script::{ClientOp, Cut, Pace, Payload};

mod data;
use data::is_data_verb;

/// How long a client waits for a reply before calling it missing.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a data connection may stall before the client gives up on it.
pub const DATA_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `data connect ignore-address` waits before the next step
/// (scenarios; a replay gives its own, see [`ClientWorld::head_start`]).
pub const IGNORED_ADDRESS_HEAD_START: Duration = Duration::from_millis(50);
/// Listings up to this size are copied into the transcript.
const SHOW_LISTING: usize = 4096;
const CHUNK: usize = 16 * 1024;

/// An upload as the client attempted it, for the end-of-run check that no
/// partial upload became visible.
#[derive(Debug, Clone)]
pub struct UploadRecord {
    pub client: String,
    pub verb: String,
    pub arg: String,
    /// The complete content the client meant to store.
    pub intended: Rc<Vec<u8>>,
    pub completed: bool,
}

/// Everything a run records, in the order it happened.
#[derive(Debug, Default)]
pub struct Transcript {
    pub lines: Vec<String>,
    pub violations: Vec<String>,
    pub uploads: Vec<UploadRecord>,
    /// File operations with their times and outcomes, for the history
    /// check ([`crate::history`]).
    pub history: Vec<crate::history::Op>,
}

pub type SharedTranscript = Rc<RefCell<Transcript>>;

/// What one client host shares with the runner.
pub struct ClientWorld {
    pub name: String,
    pub master: SocketAddr,
    pub transcript: SharedTranscript,
    pub disks: Rc<BTreeMap<String, MemDisk>>,
    /// Operations given and not yet finished.
    pub pending: Rc<Cell<usize>>,
    /// Bytes moved on the current (or last) data connection.
    pub data_bytes: Rc<Cell<u64>>,
    /// Bumped by the runner whenever a partition or hold names this
    /// client: a data connection may then stall without the product being
    /// at fault.
    pub link_faults: Rc<Cell<u64>>,
    /// Bumped by the runner whenever the master crashes or restarts: a
    /// missing reply across a master crash is expected.
    pub master_epoch: Rc<Cell<u64>>,
    /// Operations begun (the runner compares it with the operations given:
    /// a replay's fault waits until every command due before it was sent).
    pub started: Rc<Cell<usize>>,
    /// How long `data connect ignore-address` waits before the next step:
    /// longer than any message latency.
    pub head_start: Duration,
    /// The longest a message takes: a client that dies closes its control
    /// connection that long before its data connection, so the master sees
    /// the control connection go first, as it does for a killed process.
    pub latency: Duration,
    /// The master's state, when it runs: `pin` steps write into it.
    pub master_state: Arc<Mutex<Option<dftpd::master::Shared>>>,
}

struct Control {
    /// The master's epoch when this connection was made: if the master
    /// crashed since, a missing reply is expected.
    epoch: u64,
    r: ReadHalf<SimStream>,
    w: WriteHalf<SimStream>,
    buf: Vec<u8>,
}

struct Client {
    /// The path of the last RNFR that got 350 (for RNTO's history entry).
    rnfr: Option<String>,
    /// The current directory as CWD replies set it (relative names in the
    /// history check resolve against it).
    cwd: VPath,
    /// The name a STOU was given (its 150 reply).
    stou_name: Option<String>,
    /// Simulated time the current command was sent.
    started: Duration,
    world: ClientWorld,
    ctrl: Option<Control>,
    /// Address of the last 227/229 reply.
    pasv: Option<SocketAddr>,
    data: Option<SimStream>,
    /// A data connection being opened by `data connect`: turmoil completes
    /// a connect only when the server calls accept (there is no kernel
    /// backlog), and the master accepts a listing's connection only after
    /// the command, so the connect runs beside the command, as the
    /// kernel's handshake would.
    connecting: Option<(
        SocketAddr,
        tokio::task::JoinHandle<std::io::Result<SimStream>>,
    )>,
    listener: Option<SimListener>,
    payload: Option<Payload>,
    read_cut: Option<Cut>,
    read_pace: Option<Pace>,
    rest: u64,
    /// The client process "died" (`gone-after`): later steps are skipped.
    gone: bool,
}

enum ReplyError {
    /// The client's [`REPLY_TIMEOUT`] ran out, after this much of the
    /// simulation's clock (less, with steps shorter than a millisecond: a
    /// host's timers advance by at least a millisecond a step).
    Timeout(Duration),
    Closed,
}

pub async fn run(
    world: ClientWorld,
    mut ops: mpsc::UnboundedReceiver<ClientOp>,
) -> turmoil::Result {
    let mut c = Client {
        world,
        ctrl: None,
        pasv: None,
        data: None,
        connecting: None,
        listener: None,
        payload: None,
        read_cut: None,
        read_pace: None,
        rest: 0,
        rnfr: None,
        cwd: VPath::root(),
        stou_name: None,
        started: Duration::ZERO,
        gone: false,
    };
    while let Some(op) = ops.recv().await {
        c.world.started.set(c.world.started.get() + 1);
        if c.gone {
            c.log(format!("{}: (gone) {op:?} skipped", c.world.name));
        } else {
            c.exec(op).await;
        }
        let p = c.world.pending.get();
        c.world.pending.set(p.saturating_sub(1));
    }
    Ok(())
}

/// Simulated time since the simulation started.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn is_final(code: u16) -> bool {
    (200..600).contains(&code)
}

/// The code of a reply's last line, `ddd text`.
fn reply_code(line: &str) -> Option<u16> {
    let b = line.as_bytes();
    if b.len() >= 3 && b[..3].iter().all(u8::is_ascii_digit) && (b.len() == 3 || b[3] == b' ') {
        line[..3].parse().ok()
    } else {
        None
    }
}

/// `h1,h2,h3,h4,p1,p2` inside the parentheses of a 227 reply.
pub fn parse_227(text: &str) -> Option<SocketAddr> {
    let inner = text.split_once('(')?.1.split_once(')')?.0;
    let n: Vec<u8> = inner
        .split(',')
        .map(|x| x.trim().parse().ok())
        .collect::<Option<Vec<u8>>>()?;
    if n.len() != 6 {
        return None;
    }
    let ip = IpAddr::from([n[0], n[1], n[2], n[3]]);
    Some(SocketAddr::new(ip, u16::from(n[4]) << 8 | u16::from(n[5])))
}

/// `(|||port|)` of a 229 reply.
pub fn parse_229(text: &str) -> Option<u16> {
    let inner = text.split_once("(|||")?.1.split_once("|)")?.0;
    inner.parse().ok()
}

impl Client {
    fn log(&self, line: String) {
        self.world.transcript.borrow_mut().lines.push(line);
    }

    fn violation(&self, what: String) {
        let name = &self.world.name;
        self.log(format!("{name}! INVARIANT: {what}"));
        self.world
            .transcript
            .borrow_mut()
            .violations
            .push(format!("{name}: {what}"));
    }

    async fn exec(&mut self, op: ClientOp) {
        let name = self.world.name.clone();
        match op {
            ClientOp::PinSlave { path, slave } => {
                let shown = path.as_ref().map_or("-".to_string(), |p| p.to_string());
                self.log(format!("{name}: pin {shown} {slave}"));
                let ip = turmoil::lookup(name.as_str());
                if let Some(m) = dftpd::master::lock(&self.world.master_state).clone() {
                    m.lock().pins.pin_slave(ip, path, slave);
                }
            }
            ClientOp::PinStou(file) => {
                self.log(format!("{name}: pin-stou {file}"));
                let ip = turmoil::lookup(name.as_str());
                if let Some(m) = dftpd::master::lock(&self.world.master_state).clone() {
                    m.lock().pins.pin_stou(ip, file);
                }
            }
            ClientOp::Connect => {
                self.log(format!("{name}: connect"));
                match SimStream::connect(self.world.master).await {
                    Ok(s) => {
                        let (r, w) = tokio::io::split(s);
                        self.ctrl = Some(Control {
                            epoch: self.world.master_epoch.get(),
                            r,
                            w,
                            buf: Vec::new(),
                        });
                        let epoch = self.conn_epoch();
                        self.next_reply("connect", epoch).await;
                    }
                    Err(e) => self.log(format!("{name}! connect failed: {}", e.kind())),
                }
            }
            ClientOp::Close => {
                self.log(format!("{name}: close"));
                self.ctrl = None;
                self.data = None;
            }
            ClientOp::Raw(bytes) => {
                let shown = if bytes.len() > 64 {
                    format!("{} bytes", bytes.len())
                } else {
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                };
                self.log(format!("{name}: raw {shown}"));
                if self.send_bytes(&bytes).await {
                    let epoch = self.conn_epoch();
                    self.next_reply("raw line", epoch).await;
                }
            }
            ClientOp::Command(line) => self.command(line).await,
            ClientOp::DataConnect | ClientOp::DataConnectIgnoringAddress => {
                let Some(mut addr) = self.pasv else {
                    self.log(format!("{name}! data connect: no 227/229 address yet"));
                    return;
                };
                if matches!(op, ClientOp::DataConnectIgnoringAddress) {
                    addr = SocketAddr::new(self.world.master.ip(), addr.port());
                }
                self.log(format!("{name}: data connect to {addr}"));
                let connect = tokio::task::spawn_local(SimStream::connect(addr));
                self.connecting = Some((addr, connect));
                if matches!(op, ClientOp::DataConnectIgnoringAddress) {
                    // Such a client connects right after the 227 reply, so
                    // the master finds the connection waiting when the data
                    // command comes. Here the connection completes only
                    // when the master accepts it: give it time to arrive
                    // (more than any message latency) before the command.
                    tokio::time::sleep(self.world.head_start).await;
                }
            }
            ClientOp::DataListen => {
                match SimListener::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await {
                    Ok(l) => {
                        let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
                        self.log(format!("{name}: data listen on port {port}"));
                        self.listener = Some(l);
                    }
                    Err(e) => self.log(format!("{name}! data listen: {e}")),
                }
            }
            ClientOp::DataSend(p) => {
                self.log(format!(
                    "{name}: data send {} bytes seed={}{}{}",
                    p.size,
                    p.seed,
                    p.cut.map(|c| format!(" {c}")).unwrap_or_default(),
                    p.over.map(|d| format!(" over={d:?}")).unwrap_or_default()
                ));
                self.payload = Some(p);
            }
            ClientOp::DataRead(plan) => {
                self.log(format!("{name}: data read {plan}"));
                self.read_cut = plan.cut;
                self.read_pace = plan.pace;
            }
        }
    }

    /// The master epoch of the current control connection.
    fn conn_epoch(&self) -> u64 {
        self.ctrl
            .as_ref()
            .map_or(self.world.master_epoch.get(), |c| c.epoch)
    }

    /// `$PORT` and `$EPRT` name this client's active listener.
    fn expand(&self, line: &str) -> String {
        if !line.contains('$') {
            return line.to_string();
        }
        let line = &line.replace(
            dftpd::master::record::PASSWORD_PLACEHOLDER,
            crate::script::REPLAY_PASSWORD,
        );
        let ip = turmoil::lookup(self.world.name.as_str());
        let port = self
            .listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port())
            .unwrap_or(0);
        let IpAddr::V4(v4) = ip else {
            return line.to_string();
        };
        let o = v4.octets();
        let port_arg = format!(
            "{},{},{},{},{},{}",
            o[0],
            o[1],
            o[2],
            o[3],
            port >> 8,
            port & 0xff
        );
        line.replace("$PORT", &port_arg)
            .replace("$EPRT", &format!("|1|{v4}|{port}|"))
    }

    async fn send_bytes(&mut self, bytes: &[u8]) -> bool {
        let name = self.world.name.clone();
        let Some(ctrl) = self.ctrl.as_mut() else {
            self.log(format!("{name}! not connected"));
            return false;
        };
        let r = async {
            ctrl.w.write_all(bytes).await?;
            ctrl.w.flush().await
        }
        .await;
        match r {
            Ok(()) => true,
            Err(e) => {
                self.log(format!("{name}! control write failed: {}", e.kind()));
                self.ctrl = None;
                false
            }
        }
    }

    /// Reads one reply (all its lines).
    async fn read_reply(&mut self, wait: Duration) -> Result<(u16, Vec<String>), ReplyError> {
        let Some(ctrl) = self.ctrl.as_mut() else {
            return Err(ReplyError::Closed);
        };
        let mut lines = Vec::new();
        let read = async {
            loop {
                while let Some(pos) = ctrl.buf.iter().position(|&b| b == b'\n') {
                    let raw: Vec<u8> = ctrl.buf.drain(..=pos).collect();
                    let text = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    let code = reply_code(&text);
                    lines.push(text);
                    if let Some(code) = code {
                        return Ok(code);
                    }
                }
                let mut tmp = [0u8; 4096];
                match ctrl.r.read(&mut tmp).await {
                    Ok(0) | Err(_) => return Err(ReplyError::Closed),
                    Ok(n) => ctrl.buf.extend_from_slice(&tmp[..n]),
                }
            }
        };
        let started = now();
        let code = match tokio::time::timeout(wait, read).await {
            Ok(r) => r,
            Err(_) => Err(ReplyError::Timeout(now().saturating_sub(started))),
        };
        match code {
            Ok(code) => Ok((code, lines)),
            Err(e) => {
                if matches!(e, ReplyError::Closed) {
                    self.ctrl = None;
                }
                Err(e)
            }
        }
    }

    fn log_reply(&self, lines: &[String]) {
        for l in lines {
            self.log(format!("{}< {l}", self.world.name));
        }
    }

    /// Reads the next reply (preliminary or final) and logs it. `None` when
    /// none came.
    async fn next_reply(&mut self, what: &str, epoch: u64) -> Option<(u16, Vec<String>)> {
        match self.read_reply(REPLY_TIMEOUT).await {
            Ok((code, lines)) => {
                self.log_reply(&lines);
                if !(100..600).contains(&code) {
                    self.violation(format!("reply code {code} to {what} is not an FTP code"));
                    return None;
                }
                Some((code, lines))
            }
            Err(e) => {
                self.no_reply(what, e, epoch);
                None
            }
        }
    }

    /// Reads replies until a final (2xx-5xx) one.
    async fn final_reply(&mut self, what: &str, epoch: u64) -> Option<(u16, Vec<String>)> {
        loop {
            let (code, lines) = self.next_reply(what, epoch).await?;
            if is_final(code) {
                return Some((code, lines));
            }
        }
    }

    fn no_reply(&self, what: &str, e: ReplyError, epoch: u64) {
        let name = &self.world.name;
        let why = match e {
            // Said in the simulation's time, which the run's clock and
            // `# end at` show, whenever the client's timer ran ahead of it.
            ReplyError::Timeout(waited) if waited + REPLY_TIMEOUT / 100 < REPLY_TIMEOUT => format!(
                "no reply within {}s of the client's timer ({:.3}s of simulated time: \
                 with steps under 1 ms, a host's timers advance 1 ms a step)",
                REPLY_TIMEOUT.as_secs(),
                waited.as_secs_f64()
            ),
            ReplyError::Timeout(_) => format!("no reply within {}s", REPLY_TIMEOUT.as_secs()),
            ReplyError::Closed => "control connection closed".to_string(),
        };
        let master_restarted = self.world.master_epoch.get() != epoch;
        let quitting = what.eq_ignore_ascii_case("QUIT");
        if master_restarted {
            self.log(format!("{name}! {why} (the master went down)"));
        } else if quitting {
            self.log(format!("{name}! {why}"));
        } else {
            self.violation(format!("{what}: {why}, expected exactly one final reply"));
        }
    }

    /// Any reply waiting before we send: the server spoke out of turn.
    async fn unsolicited(&mut self) {
        if self.ctrl.as_ref().is_some_and(|c| c.buf.is_empty()) {
            // Non-blocking check: timeout(0) polls the read once.
            if let Ok((code, lines)) = self.read_reply(Duration::ZERO).await {
                self.log_reply(&lines);
                // 421 (idle timeout, shutdown) may come at any time.
                if code != 421 {
                    self.violation(format!("unsolicited reply {code}"));
                }
            }
        }
    }

    async fn command(&mut self, line: String) {
        let name = self.world.name.clone();
        let line = self.expand(&line);
        self.log(format!("{name}> {line}"));
        if self.ctrl.is_none() {
            self.log(format!("{name}! not connected"));
            return;
        }
        self.unsolicited().await;
        let epoch = self.conn_epoch();
        let mut wire = line.clone().into_bytes();
        wire.extend_from_slice(b"\r\n");
        self.started = now();
        if !self.send_bytes(&wire).await {
            return;
        }
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.to_string()),
            None => (line.to_ascii_uppercase(), String::new()),
        };
        let Some((code, lines)) = self.next_reply(&verb, epoch).await else {
            self.reset_data();
            match verb.as_str() {
                "DELE" => self.hist(&arg, Effect::Delete, None),
                "RNTO" => {
                    if let (Some(from), Some(to)) = (self.rnfr.take(), self.history_path(&arg)) {
                        self.hist(&from, Effect::RenameTo(to), None);
                    }
                }
                _ => {}
            }
            return;
        };
        let text = lines.last().cloned().unwrap_or_default();
        match verb.as_str() {
            "DELE" => self.hist(&arg, Effect::Delete, Some((code, &text))),
            "RNFR" => self.rnfr = (code == 350).then(|| self.history_path(&arg)).flatten(),
            "RNTO" => {
                if let (Some(from), Some(to)) = (self.rnfr.take(), self.history_path(&arg)) {
                    self.hist(&from, Effect::RenameTo(to), Some((code, &text)));
                }
            }
            "CWD" | "XCWD" | "CDUP" | "XCUP" if code == 250 => {
                let to = if verb.ends_with("UP") {
                    ".."
                } else {
                    arg.as_str()
                };
                if let Ok(p) = VPath::resolve(&self.cwd, to.trim()) {
                    self.cwd = p;
                }
            }
            "STOU" if code == 150 => {
                // RFC 1123 §4.1.2.9: "150 FILE: name".
                self.stou_name = text.split_once("FILE: ").map(|(_, n)| n.trim().to_string());
            }
            _ => {}
        }
        match (verb.as_str(), code) {
            ("PASV", 227) => self.pasv = parse_227(&text),
            ("EPSV", 229) => {
                self.pasv = parse_229(&text).map(|p| SocketAddr::new(self.world.master.ip(), p))
            }
            ("REST", 350) => self.rest = arg.trim().parse().unwrap_or(0),
            _ => {}
        }
        if (100..200).contains(&code) {
            self.data_phase(&verb, &arg, epoch).await;
            return;
        }
        if verb == "ABOR" && code == 426 {
            // The aborted transfer's 426, then ABOR's own reply.
            let _ = self.final_reply("ABOR", epoch).await;
        }
        if is_data_verb(&verb) {
            self.reset_data();
        }
    }

    /// A path argument as the server resolves it (against the current
    /// directory); `None` when it is not a usable path.
    fn history_path(&self, arg: &str) -> Option<String> {
        VPath::resolve(&self.cwd, arg.trim())
            .ok()
            .map(|p| p.to_string())
    }

    /// Records a file operation for the history check. `reply`: the final
    /// reply (`None`: none came, so the outcome is unknown).
    fn hist(&self, arg: &str, effect: Effect, reply: Option<(u16, &str)>) {
        let Some(path) = self.history_path(arg) else {
            return;
        };
        let status = match reply {
            Some((226 | 250, _)) => Status::Done,
            Some((_, text)) if text.contains("outcome unknown") => Status::Maybe,
            Some(_) => Status::Failed,
            None => Status::Maybe,
        };
        self.world.transcript.borrow_mut().history.push(Op {
            client: self.world.name.clone(),
            path,
            effect,
            start: self.started,
            end: now(),
            status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_replies_parse() {
        assert_eq!(
            parse_227("227 Entering Passive Mode (192,168,0,2,195,80) on slave s1"),
            Some("192.168.0.2:50000".parse().unwrap())
        );
        assert_eq!(parse_227("227 nothing"), None);
        assert_eq!(parse_227("227 (1,2,3)"), None);
        assert_eq!(
            parse_229("229 Entering Extended Passive Mode (|||50001|)"),
            Some(50001)
        );
        assert_eq!(parse_229("229 (|||x|)"), None);
    }

    #[test]
    fn reply_codes() {
        assert_eq!(reply_code("226 ok"), Some(226));
        assert_eq!(reply_code("226"), Some(226));
        assert_eq!(reply_code("211-Features:"), None);
        assert_eq!(reply_code(" PRET"), None);
        assert!(is_final(226) && !is_final(150));
    }
}

//! The control-connection driver: reads command lines, feeds them to the
//! [`Session`] state machine, and carries out its [`Action`]s — passive
//! listeners on the master or a slave, transfers run by slaves (with ABOR
//! and control-loss handling while they run), listings sent by the master,
//! and the optional relay for clients without PRET.
//!
//! One task per control connection; the shared state lock is taken per
//! command and never held across an `.await`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tracing::Instrument;

mod data;
mod tls;
mod transfer;
mod urgent;

use data::{accept_opt, poll_once};

use super::guard::{CommandRate, Pace};
use super::hub::{SlaveLink, Stop};
use super::observe::{BadLine, SessionEvent, SessionObserver};
use super::record::{Header, RecordSink, Recorder};
use super::session::{Action, HashJob, LoginCheck, Session};
use super::store::Durable;
use super::users;
use super::{Hub, MasterState, SessionInfo, Shared};
use crate::env::{next_connection, BoxStream, Env, NetListener};
use crate::ops::OpsObserver;
use crate::proto::{Command, Line, LineDecoder, Reply};
use crate::tls::LoginState;

pub async fn accept_sessions(
    env: Env,
    state: Shared,
    listener: Box<dyn NetListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Refused sessions are logged at most once a second (a flood from one
    // address must not flood the log): the line counts the ones not shown.
    let (mut refusal_logged_ms, mut refusals_unlogged) = (None::<u64>, 0u64);
    while let Some((mut stream, peer)) = next_connection(listener.as_ref(), &mut shutdown).await {
        urgent::urgent_data_inline(&mut stream);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let refused = {
            let mut st = state.lock();
            let cfg = st.config.guard.clone();
            st.limits.open(&cfg, peer.ip()).err()
        };
        if let Some(e) = refused {
            let now = state.mono_ms();
            if refusal_logged_ms.is_none_or(|t| now.saturating_sub(t) >= 1000) {
                tracing::warn!(%peer, not_logged_since = refusals_unlogged, "session refused: {e}");
                refusal_logged_ms = Some(now);
                refusals_unlogged = 0;
            } else {
                refusals_unlogged += 1;
            }
            let mut stream = stream;
            tokio::spawn(async move {
                let reply = Reply::new(e.code(), e.to_string());
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    stream.write_all(reply.to_wire().as_bytes()),
                )
                .await;
                let _ = stream.shutdown().await;
            });
            continue;
        }
        let (id, sink) = {
            let mut st = state.lock();
            let id = st.next_id();
            st.sessions.insert(id, SessionInfo::new(peer));
            (id, state.record.clone())
        };
        let stop = state.register_session(id);
        let span = tracing::info_span!("session", id, %peer);
        let driver = ControlSession::new(
            env.clone(),
            state.clone(),
            stream,
            Session::new(id, peer, local),
            stop,
        );
        tokio::spawn(driver.run(sink).instrument(span));
    }
}

/// A session's observers; publishing to none costs nothing.
#[derive(Default)]
struct Observers {
    all: Vec<Box<dyn SessionObserver>>,
    /// Some of them read the state (the recorder): publishing needs the
    /// state lock.
    read_state: bool,
}

impl Observers {
    fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    fn push(&mut self, o: Box<dyn SessionObserver>) {
        self.read_state |= o.reads_state();
        self.all.push(o);
    }

    /// Publishes `event` (the state lock is held by the caller).
    fn emit(&mut self, st: &MasterState, event: &SessionEvent<'_>) {
        for o in &mut self.all {
            o.on(event, st);
        }
    }

    /// Publishes `event`, taking the state lock only if an observer reads
    /// the state (metrics and the transfer log do not: with only those, a
    /// command or a reply takes no lock for them).
    fn emit_locked(&mut self, hub: &Hub, event: &SessionEvent<'_>) {
        if self.read_state {
            let core = hub.lock();
            self.emit(&core, event);
        } else {
            for o in &mut self.all {
                o.on_event(event);
            }
        }
    }
}

/// The server side of the current data connection.
enum Endpoint {
    None,
    Master(Box<dyn NetListener>),
    Slave {
        xfer: u64,
        link: SlaveLink,
        /// The address announced in the 227/229 reply.
        addr: SocketAddr,
        /// The master's own address at the same port: a client that ignores
        /// the 227 address (curl's and ftplib's default) lands here.
        catch: Option<crate::env::Pooled>,
        /// The claim of a listener the slave opened ahead, sent with the
        /// first message about this transfer (the order, or the abort).
        claim: Option<data::Claim>,
    },
}

/// The client side of a relayed transfer.
enum ClientSide {
    Listener(Box<dyn NetListener>),
    /// A client caught at the master's address (it ignored the 227 reply).
    Caught(BoxStream),
}

pub(super) struct ControlSession {
    env: Env,
    state: Shared,
    reader: ReadHalf<BoxStream>,
    writer: WriteHalf<BoxStream>,
    session: Session,
    endpoint: Endpoint,
    decoder: LineDecoder,
    /// Lines read while a transfer was running, handled after it.
    queued: VecDeque<Line>,
    closed: bool,
    /// A data connection held open until the transfer's final reply is
    /// sent (a client caught at the wrong address must read the 425 before
    /// its data connection closes, or it reports a short transfer instead).
    parked: Option<BoxStream>,
    /// Who watches this session (the recorder when `record_dir` is set):
    /// every event goes to all of them; none, nothing is built.
    observers: Observers,
    /// When the session started (event times are relative to it).
    started: tokio::time::Instant,
    /// Changes this session made that the store has not confirmed yet: the
    /// next reply waits for them (a client is never told "done" before the
    /// change would survive a crash).
    durable: Option<Durable>,
    /// Cleared at `AUTH TLS`: the control stream stops reading ahead past
    /// TCP urgent marks (`urgent.rs`).
    plain_control: Arc<std::sync::atomic::AtomicBool>,
    /// After `AUTH TLS`: this control session's random token, set as the
    /// resumption data of its TLS sessions and sent with `PROT P` orders
    /// (see `tls.rs`, "Tying a data connection to its control connection").
    tls_token: Option<Vec<u8>>,
    /// How this TLS session is listed among the sessions a data connection
    /// may resume (`Hub::list_tls_session`): the user, and whether logged
    /// in (`None`: not listed).
    tls_listed: Option<(String, bool)>,
    /// Told when the master shuts down or an admin kicks this session
    /// ([`Hub::register_session`]).
    stop: watch::Receiver<Option<Stop>>,
    /// `stop` still has its sender.
    stop_open: bool,
    /// Replies written but not sent yet: a small download's 150 waits for
    /// the transfer's final reply, so both leave in one write (one wake-up
    /// of the client), for at most [`HOLD_OPENING`].
    held: Vec<u8>,
    held_until: Option<tokio::time::Instant>,
}

/// How long a held 150 may wait for the transfer's end (see
/// `ControlSession::held`).
const HOLD_OPENING: Duration = Duration::from_millis(2);

enum Next {
    Continue,
    Close,
}

impl ControlSession {
    fn new(
        env: Env,
        state: Shared,
        stream: BoxStream,
        session: Session,
        stop: watch::Receiver<Option<Stop>>,
    ) -> ControlSession {
        let (stream, plain_control) = urgent::ControlStream::wrap(stream);
        let (reader, writer) = tokio::io::split(stream);
        ControlSession {
            env,
            state,
            reader,
            writer,
            session,
            endpoint: Endpoint::None,
            decoder: LineDecoder::new(),
            queued: VecDeque::new(),
            closed: false,
            parked: None,
            observers: Observers::default(),
            started: tokio::time::Instant::now(),
            durable: None,
            plain_control,
            tls_token: None,
            tls_listed: None,
            stop,
            stop_open: true,
            held: Vec::new(),
            held_until: None,
        }
    }

    /// Attaches the session's observers: the recorder if the master
    /// records sessions, the operations feed (metrics, transfer log) if
    /// the master has them.
    fn attach_observers(&mut self, sink: Option<Arc<dyn RecordSink>>) {
        let unix_now = self.env.unix_now();
        if let Some(ops) = self.state.ops() {
            self.observers.push(Box::new(OpsObserver::new(ops.clone())));
        }
        if let Some(out) = sink.and_then(|s| s.open(self.session.id)) {
            let st = self.state.lock();
            let h = Header {
                session: self.session.id,
                peer: self.session.peer,
                unix_now,
                clock: self.state.clock(),
                master_start: self.state.started_unix(),
            };
            self.observers.push(Box::new(Recorder::start(out, &h, &st)));
        }
        let opened = SessionEvent::Opened {
            session: self.session.id,
            peer: self.session.peer,
            unix_now,
            clock: self.state.clock(),
        };
        self.observers.emit_locked(&self.state, &opened);
    }

    async fn run(mut self, sink: Option<Arc<dyn RecordSink>>) {
        tracing::debug!("session opened");
        self.attach_observers(sink);
        if self.send(&Session::greeting()).await.is_ok() {
            self.serve().await;
        }
        self.release_endpoint();
        self.state.unregister_session(self.session.id);
        if let (Some(token), Some(_)) = (&self.tls_token, &self.tls_listed) {
            let ip = self.session.peer_ip();
            self.state
                .list_tls_session(self.session.id, LoginState::None, ip, token);
        }
        {
            let mut st = self.state.lock();
            self.session.close(&mut st);
            let ip = self.session.peer.ip();
            st.limits.close(ip);
            let _ = self.state.flush(&mut st);
        }
        let closed = SessionEvent::Closed {
            at: self.started.elapsed(),
            client_closed: self.closed,
        };
        self.observers.emit_locked(&self.state, &closed);
        tracing::debug!("session closed");
    }

    async fn serve(&mut self) {
        let (idle, guard, start) = {
            let st = self.state.lock();
            (
                st.config.idle_timeout(),
                st.config.guard.clone(),
                self.state.mono_ms(),
            )
        };
        let login_by =
            tokio::time::Instant::now() + Duration::from_millis(guard.login_timeout_ms.max(1));
        let mut rate = CommandRate::new(&guard, start);
        loop {
            // Shutting down or kicked: a session between commands (also
            // one whose transfer just got its final reply) ends here.
            let stop = *self.stop.borrow();
            if let Some(stop) = stop {
                let text = match stop {
                    Stop::Shutdown => "Server shutting down",
                    Stop::Kicked => "Disconnected by an administrator",
                };
                tracing::info!("{text}; closing");
                let _ = self.send(&Reply::new(421, text)).await;
                return;
            }
            // Not logged in yet: the login deadline, not the idle timeout.
            let wait = match self.session.user() {
                Some(_) => idle,
                None => idle.min(login_by.saturating_duration_since(tokio::time::Instant::now())),
            };
            let line = match self.queued.pop_front() {
                Some(l) => l,
                None => match self.read_line_or_stop(wait).await {
                    Some(Ok(Some(l))) => l,
                    Some(Ok(None)) => return,
                    // Stopped: the loop's top says so.
                    None => continue,
                    Some(Err(_)) => {
                        let text = if self.session.user().is_some() {
                            "Idle timeout, closing control connection"
                        } else {
                            "Login timeout, closing control connection"
                        };
                        let _ = self.send(&Reply::new(421, text)).await;
                        return;
                    }
                },
            };
            // Over the command budget: the reply waits (a client that
            // waits for replies is slowed, not cut); a flood is closed.
            let waiting = self.decoder.lines_waiting() + self.queued.len();
            match rate.take(&guard, self.state.mono_ms(), waiting) {
                Pace::Now => {}
                Pace::After(delay) => tokio::time::sleep(delay).await,
                Pace::Flood => {
                    tracing::warn!(waiting, "command flood while throttled; closing");
                    let _ = self
                        .send(&Reply::new(
                            421,
                            "Too many commands too fast, closing control connection",
                        ))
                        .await;
                    return;
                }
            }
            let parsed = match &line {
                Line::Command(text) => Some(Command::parse(text)),
                _ => None,
            };
            if !self.observers.is_empty() {
                let at = self.started.elapsed();
                let cwd = &self.session.cwd;
                let verb = parsed
                    .as_ref()
                    .and_then(|p| p.as_ref().ok())
                    .map(Command::verb);
                let event = match &line {
                    Line::Command(text) => SessionEvent::Command {
                        at,
                        text,
                        cwd,
                        verb,
                    },
                    Line::Empty => SessionEvent::Command {
                        at,
                        text: "",
                        cwd,
                        verb: None,
                    },
                    Line::TooLong => SessionEvent::BadLine(BadLine::TooLong),
                    Line::NotUtf8 => SessionEvent::BadLine(BadLine::NotUtf8),
                };
                self.observers.emit_locked(&self.state, &event);
            }
            let reply = match line {
                Line::Command(text) => match parsed.unwrap_or_else(|| Command::parse(&text)) {
                    Ok(cmd) => {
                        match users::redacted(&text) {
                            Some(safe) => tracing::debug!("<- {safe}"),
                            None => tracing::debug!("<- {text}"),
                        }
                        rate.line(true);
                        match self.perform(cmd).await {
                            Next::Continue => continue,
                            Next::Close => return,
                        }
                    }
                    Err(e) => Reply::new(e.code(), e.to_string()),
                },
                Line::TooLong => Reply::new(500, "Command line too long"),
                Line::NotUtf8 => Reply::new(501, "Command is not valid UTF-8"),
                Line::Empty => Reply::new(500, "Empty command"),
            };
            // Only invalid lines get here (commands continue above).
            if !rate.line(false) {
                tracing::warn!("a run of invalid lines; closing");
                let _ = self
                    .send(&Reply::new(
                        421,
                        "Too many invalid commands, closing control connection",
                    ))
                    .await;
                return;
            }
            if self.send(&reply).await.is_err() {
                return;
            }
        }
    }

    /// The next line from the client within `wait` (`Some(Ok(None))`: the
    /// connection closed; `Some(Err)`: timed out), or `None` as soon as the
    /// session is told to stop.
    async fn read_line_or_stop(
        &mut self,
        wait: Duration,
    ) -> Option<Result<Option<Line>, tokio::time::error::Elapsed>> {
        if self.closed {
            // What the decoder still holds, then the end.
            return Some(Ok(self.decoder.next_line()));
        }
        loop {
            let read = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed);
            tokio::select! {
                biased;
                changed = self.stop.changed(), if self.stop_open => {
                    if changed.is_ok() {
                        return None;
                    }
                }
                line = tokio::time::timeout(wait, read) => return Some(line),
            }
            // The hub dropped this session's stop signal: just read.
            self.stop_open = false;
        }
    }

    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        let failed;
        let reply = match self.durable.take() {
            Some(d) => match d.wait().await {
                Ok(()) => reply,
                Err(e) => {
                    tracing::error!(error = %e, "change not saved; refusing the reply");
                    failed = Reply::new(
                        451,
                        "Local error: the change could not be saved to the metadata store",
                    );
                    &failed
                }
            },
            None => reply,
        };
        tracing::debug!(
            "-> {} {}",
            reply.code,
            reply.lines.first().map(String::as_str).unwrap_or("")
        );
        self.observers
            .emit_locked(&self.state, &SessionEvent::Reply(reply));
        let wire = reply.to_wire();
        if self.held.is_empty() {
            self.writer.write_all(wire.as_bytes()).await?;
        } else {
            let mut out = std::mem::take(&mut self.held);
            self.held_until = None;
            out.extend_from_slice(wire.as_bytes());
            self.writer.write_all(&out).await?;
        }
        self.writer.flush().await
    }

    /// Writes `reply` with the next one, or after [`HOLD_OPENING`] at the
    /// latest ([`ControlSession::release_held`]).
    fn hold(&mut self, reply: &Reply) {
        tracing::debug!(
            "-> {} {} (held)",
            reply.code,
            reply.lines.first().map(String::as_str).unwrap_or("")
        );
        self.observers
            .emit_locked(&self.state, &SessionEvent::Reply(reply));
        self.held.extend_from_slice(reply.to_wire().as_bytes());
        self.held_until
            .get_or_insert_with(|| tokio::time::Instant::now() + HOLD_OPENING);
    }

    /// Sends the held replies now.
    async fn release_held(&mut self) -> std::io::Result<()> {
        self.held_until = None;
        if self.held.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.held);
        self.writer.write_all(&out).await?;
        self.writer.flush().await
    }

    fn release_endpoint(&mut self) {
        if let Endpoint::Slave {
            xfer, link, claim, ..
        } = std::mem::replace(&mut self.endpoint, Endpoint::None)
        {
            let abort = crate::link::MasterMsg::Abort { xfer };
            match claim {
                // The slave releases the listener it opened ahead.
                Some(claim) => link.send_two(claim.message(xfer), abort),
                None => link.send(abort),
            }
        }
    }

    async fn perform(&mut self, cmd: Command) -> Next {
        let action = {
            let mut st = self.state.lock();
            st.now = self.env.unix_now();
            let verb = cmd.verb();
            let action = self.session.handle(cmd, &mut st);
            if let Some(d) = self.state.flush(&mut st) {
                self.durable = Some(d);
            }
            if !self.observers.is_empty() {
                if let (true, Some(plan)) = (verb == "PRET", self.session.plan()) {
                    self.observers.emit(&st, &SessionEvent::Planned(plan));
                }
                if let Action::Transfer(job) = &action {
                    self.observers
                        .emit(&st, &SessionEvent::TransferStarted(job));
                }
            }
            action
        };
        // Before the reply: a client caches a new connection's TLS tickets
        // as it reads the 331 to USER.
        self.list_tls_session();
        let result = match action {
            Action::CheckPassword(check) => return self.check_password(*check).await,
            Action::HashPassword(job) => {
                let reply = self.hash_password(*job).await;
                self.send(&reply).await
            }
            Action::Reply(r) => self.send(&r).await,
            Action::Close(r) => {
                let _ = self.send(&r).await;
                return Next::Close;
            }
            Action::Kick { sessions, reply } => {
                for id in sessions {
                    self.state.kick(id);
                }
                self.send(&reply).await
            }
            Action::DropLinks {
                slaves,
                reason,
                reply,
            } => {
                for id in slaves {
                    self.state.drop_link(id, reason);
                }
                self.send(&reply).await
            }
            Action::ResetData(r) | Action::SetActive(r) => {
                self.release_endpoint();
                self.send(&r).await
            }
            Action::OpenPassive { target, xfer, epsv } => {
                self.release_endpoint();
                let result = self.open_passive(target, xfer).await;
                self.observers.emit_locked(
                    &self.state,
                    &SessionEvent::PassiveOpened {
                        target,
                        xfer,
                        result: &result,
                    },
                );
                let reply = {
                    let st = self.state.lock();
                    self.session.passive_opened(&st, target, xfer, epsv, result)
                };
                self.send(&reply).await
            }
            Action::Listing(job) => self.listing(*job).await,
            Action::StartTls(r) => return self.start_tls(r).await,
            Action::Transfer(job) => {
                let span =
                    tracing::info_span!("transfer", xfer = job.xfer, slave = %job.slave_name);
                return self.transfer(*job).instrument(span).await;
            }
        };
        match result {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close,
        }
    }

    /// Keeps this TLS session's entry among the sessions a data connection
    /// may resume in step with its login: called once a command is handled
    /// (before its reply) and once a password check is decided.
    fn list_tls_session(&mut self) {
        let Some(token) = &self.tls_token else {
            return;
        };
        let login = match (self.session.user(), self.session.login_name()) {
            (Some(user), _) => LoginState::LoggedIn(user),
            (None, Some(name)) => LoginState::Pending(name),
            (None, None) => LoginState::None,
        };
        let listed = match login {
            LoginState::LoggedIn(u) => Some((u, true)),
            LoginState::Pending(u) => Some((u, false)),
            LoginState::None => None,
        };
        if listed == self.tls_listed.as_ref().map(|(u, l)| (u.as_str(), *l)) {
            return;
        }
        let ip = self.session.peer_ip();
        self.state
            .list_tls_session(self.session.id, login, ip, token);
        self.tls_listed = listed.map(|(u, l)| (u.to_owned(), l));
    }

    /// Hashes a new password (SITE ADDUSER, CHPASS) off the state lock,
    /// then lets the session apply it.
    async fn hash_password(&mut self, job: HashJob) -> Reply {
        let mut salt = [0u8; 16];
        self.env.rng_fill(&mut salt);
        let (password, cost) = (job.password.clone(), job.cost);
        let hash = self
            .env
            .run_blocking(move || users::hash_password(&password, salt, cost))
            .await
            .unwrap_or_else(|| Err(users::UserError::Hash("the hashing task failed".into())));
        let mut st = self.state.lock();
        let action = self.session.password_hashed(&mut st, &job, hash);
        if let Some(d) = self.state.flush(&mut st) {
            self.durable = Some(d);
        }
        match action {
            Action::Reply(r) => r,
            other => Reply::new(451, format!("unexpected {other:?}")),
        }
    }

    /// Verifies a password off the state lock, then answers after the
    /// delay the guard asks for (failed logins).
    async fn check_password(&mut self, check: LoginCheck) -> Next {
        let (hash, password) = (check.hash.clone(), check.password.clone());
        let verified = self
            .env
            .run_blocking(move || {
                // argon2's memory stays with the pool thread while logins
                // queue, and goes back to the system once none does.
                crate::env::with_pool_scratch(|memory: &mut users::Argon2Memory| {
                    users::verify_password_with(&hash, &password, memory)
                })
            })
            .await
            .unwrap_or(false);
        let (action, delay) = {
            let mut st = self.state.lock();
            st.now = self.env.unix_now();
            let now = self.state.mono_ms();
            let result = self.session.login_result(&mut st, &check, verified, now);
            if let Some(d) = self.state.flush(&mut st) {
                self.durable = Some(d);
            }
            match self.session.user() {
                Some(user) => self.observers.emit(&st, &SessionEvent::LoggedIn { user }),
                None => self
                    .observers
                    .emit(&st, &SessionEvent::LoginFailed { user: &check.user }),
            }
            result
        };
        self.list_tls_session();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match action {
            Action::Close(r) => {
                let _ = self.send(&r).await;
                Next::Close
            }
            Action::Reply(r) => match self.send(&r).await {
                Ok(()) => Next::Continue,
                Err(_) => Next::Close,
            },
            _ => Next::Continue,
        }
    }
}

pub(super) fn is_abor(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("ABOR")
}

/// Reads one line without borrowing the whole driver (used inside select!).
pub(super) async fn read_line_into(
    reader: &mut ReadHalf<BoxStream>,
    decoder: &mut LineDecoder,
    closed: &mut bool,
) -> Option<Line> {
    let mut buf = [0u8; 512];
    loop {
        if let Some(l) = decoder.next_line() {
            return Some(l);
        }
        if *closed {
            // Never resolve again: the caller waits on the other branch.
            std::future::pending::<()>().await;
        }
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => {
                *closed = true;
                return None;
            }
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests;

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

use super::guard::CommandRate;
use super::hub::SlaveLink;
use super::observe::{BadLine, SessionEvent, SessionObserver};
use super::record::{Header, RecordSink, Recorder};
use super::session::{
    Action, HashJob, ListingJob, LoginCheck, Route, Session, Target, TransferJob, TransferOutcome,
};
use super::store::Durable;
use super::transfer::{Event, RelayClient, Step, TransferMachine};
use super::users;
use super::{Hub, MasterState, SessionInfo, Shared};
use crate::config::PasvWithoutPret;
use crate::env::{accept_from, bind_in_range, next_connection, pump, BoxStream, Env, NetListener};
use crate::link::{DataTls, Request, Response};
use crate::proto::{Command, Line, LineDecoder, Reply};

pub async fn accept_sessions(
    env: Env,
    state: Shared,
    listener: Box<dyn NetListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = next_connection(listener.as_ref(), &mut shutdown).await {
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
            tracing::warn!(%peer, "session refused: {e}");
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
            st.sessions.insert(
                id,
                SessionInfo {
                    peer,
                    user: None,
                    cwd: "/".into(),
                    doing: None,
                },
            );
            (id, state.record.clone())
        };
        let span = tracing::info_span!("session", id, %peer);
        let driver = Driver::new(
            env.clone(),
            state.clone(),
            stream,
            Session::new(id, peer, local),
        );
        tokio::spawn(driver.run(sink).instrument(span));
    }
}

/// A session's observers; publishing to none costs nothing.
#[derive(Default)]
struct Observers(Vec<Box<dyn SessionObserver>>);

impl Observers {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Publishes `event` (the state lock is held by the caller).
    fn emit(&mut self, st: &MasterState, event: &SessionEvent<'_>) {
        for o in &mut self.0 {
            o.on(event, st);
        }
    }

    /// Publishes `event`, taking the state lock only if someone listens.
    fn emit_locked(&mut self, hub: &Hub, event: &SessionEvent<'_>) {
        if !self.0.is_empty() {
            let core = hub.lock();
            self.emit(&core, event);
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
        catch: Option<Box<dyn NetListener>>,
    },
}

/// The client side of a relayed transfer.
enum ClientSide {
    Listener(Box<dyn NetListener>),
    /// A client caught at the master's address (it ignored the 227 reply).
    Caught(BoxStream),
}

struct Driver {
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
    /// After `AUTH TLS`: this control session's random token, set as the
    /// resumption data of its TLS sessions and sent with `PROT P` orders
    /// (see `tls.rs`, "Tying a data connection to its control connection").
    tls_token: Option<Vec<u8>>,
}

enum Next {
    Continue,
    Close,
}

impl Driver {
    fn new(env: Env, state: Shared, stream: BoxStream, session: Session) -> Driver {
        let (reader, writer) = tokio::io::split(stream);
        Driver {
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
            tls_token: None,
        }
    }

    /// Attaches the session's observers: the recorder if the master
    /// records sessions.
    fn attach_observers(&mut self, sink: Option<Arc<dyn RecordSink>>) {
        let unix_now = self.env.unix_now();
        if let Some(out) = sink.and_then(|s| s.open(self.session.id)) {
            let st = self.state.lock();
            let h = Header {
                session: self.session.id,
                peer: self.session.peer,
                unix_now,
            };
            self.observers
                .0
                .push(Box::new(Recorder::start(out, &h, &st)));
        }
        let opened = SessionEvent::Opened {
            session: self.session.id,
            peer: self.session.peer,
            unix_now,
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
            // Not logged in yet: the login deadline, not the idle timeout.
            let wait = match self.session.user() {
                Some(_) => idle,
                None => idle.min(login_by.saturating_duration_since(tokio::time::Instant::now())),
            };
            let line = match self.queued.pop_front() {
                Some(l) => l,
                None => match tokio::time::timeout(wait, self.read_line()).await {
                    Ok(Some(l)) => l,
                    Ok(None) => return,
                    Err(_) => {
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
            let now = self.state.mono_ms();
            if !rate.allow(&guard, now) {
                tracing::warn!("command rate exceeded; closing");
                let _ = self
                    .send(&Reply::new(
                        421,
                        "Too many commands too fast, closing control connection",
                    ))
                    .await;
                return;
            }
            if !self.observers.is_empty() {
                let at = self.started.elapsed();
                let cwd = &self.session.cwd;
                let event = match &line {
                    Line::Command(text) => SessionEvent::Command { at, text, cwd },
                    Line::Empty => SessionEvent::Command { at, text: "", cwd },
                    Line::TooLong => SessionEvent::BadLine(BadLine::TooLong),
                    Line::NotUtf8 => SessionEvent::BadLine(BadLine::NotUtf8),
                };
                self.observers.emit_locked(&self.state, &event);
            }
            let reply = match line {
                Line::Command(text) => match Command::parse(&text) {
                    Ok(cmd) => {
                        match users::redacted(&text) {
                            Some(safe) => tracing::debug!("<- {safe}"),
                            None => tracing::debug!("<- {text}"),
                        }
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
            if self.send(&reply).await.is_err() {
                return;
            }
        }
    }

    /// The next line from the client; `None` when the connection closed.
    async fn read_line(&mut self) -> Option<Line> {
        if self.closed {
            // What the decoder still holds, then the end.
            return self.decoder.next_line();
        }
        read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed).await
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
        self.writer.write_all(reply.to_wire().as_bytes()).await?;
        self.writer.flush().await
    }

    fn release_endpoint(&mut self) {
        if let Endpoint::Slave { xfer, link, .. } =
            std::mem::replace(&mut self.endpoint, Endpoint::None)
        {
            link.send(crate::link::MasterMsg::Abort { xfer });
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

    async fn open_passive(&mut self, target: Target, xfer: u64) -> Result<SocketAddr, String> {
        let (range, advertised, timeout) = {
            let st = self.state.lock();
            (
                st.config.passive_range().unwrap_or((0, 0)),
                st.config.pasv_address,
                st.config.data_timeout(),
            )
        };
        match target {
            Target::Master => {
                let ip = self.session.local.ip();
                let l = bind_in_range(&self.env, ip, range)
                    .await
                    .map_err(|e| e.to_string())?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                self.endpoint = Endpoint::Master(l);
                Ok(SocketAddr::new(advertised.unwrap_or(ip), port))
            }
            Target::Slave(s) => {
                let (link, rid, ready, peer) = {
                    let mut st = self.state.lock();
                    let peer = self.session.passive_peer(&st);
                    let rid = st.next_id();
                    let link = st.link(s);
                    let ready = match (&link, st.slaves.get_mut(s)) {
                        (Some(_), Some(info)) => info.ready_listeners.pop_front(),
                        _ => None,
                    };
                    (link, rid, ready, peer)
                };
                let link = link.ok_or("the slave went offline")?;
                if let Some((token, addr)) = ready {
                    // Fast path: a listener opened ahead. The claim is
                    // pipelined; the link keeps it ahead of the transfer
                    // order, and the client's connection waits in the
                    // listener's backlog meanwhile.
                    link.send(crate::link::MasterMsg::Claim {
                        token,
                        xfer,
                        accept_from: peer,
                    });
                    self.slave_endpoint(xfer, link, addr).await;
                    return Ok(addr);
                }
                let rx = link.request(
                    rid,
                    Request::Listen {
                        xfer,
                        accept_from: peer,
                    },
                );
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Response::Listening { addr }))
                        if !self.state.lock().slaves.is_own_address(s, addr) =>
                    {
                        tracing::warn!(%addr, "slave answered with a foreign listener address");
                        Err("the slave named a listener on another host".into())
                    }
                    Ok(Ok(Response::Listening { addr })) => {
                        self.slave_endpoint(xfer, link, addr).await;
                        Ok(addr)
                    }
                    Ok(Ok(Response::Failed(f))) => Err(format!("{f:?}")),
                    Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
                    Ok(Err(_)) => Err("the slave went offline".into()),
                    Err(_) => Err("the slave did not answer in time".into()),
                }
            }
        }
    }

    /// Records the slave listener announced at `addr`, with the master's
    /// catch listener at the same port.
    async fn slave_endpoint(&mut self, xfer: u64, link: SlaveLink, addr: SocketAddr) {
        let catch = catch_listener(&self.env, self.session.local.ip(), addr).await;
        self.endpoint = Endpoint::Slave {
            xfer,
            link,
            addr,
            catch,
        };
    }

    /// Opens the client side of a master-served data connection.
    async fn master_data(&mut self, active: Option<SocketAddr>) -> std::io::Result<BoxStream> {
        let timeout = self.state.lock().config.data_timeout();
        match active {
            Some(addr) => match tokio::time::timeout(timeout, self.env.net.connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            },
            None => {
                let Endpoint::Master(l) = std::mem::replace(&mut self.endpoint, Endpoint::None)
                else {
                    return Err(std::io::Error::other("no passive listener"));
                };
                accept_from(l.as_ref(), Some(self.session.peer_ip()), timeout).await
            }
        }
    }

    async fn listing(&mut self, job: ListingJob) -> std::io::Result<()> {
        self.send(&job.opening).await?;
        let data = match self.master_data(job.active).await {
            Ok(d) => self.protect_master_data(d).await,
            Err(e) => Err(e),
        };
        let mut data = match data {
            Ok(d) => d,
            Err(e) => {
                return self
                    .send(&Reply::new(425, format!("Can't open data connection: {e}")))
                    .await
            }
        };
        let written = async {
            data.write_all(&job.bytes).await?;
            data.shutdown().await
        }
        .await;
        if !self.observers.is_empty() {
            let why = written.as_ref().err().map(|e| e.to_string());
            let event = SessionEvent::ListingSent(match &why {
                None => Ok(job.bytes.len()),
                Some(e) => Err(e.as_str()),
            });
            self.observers.emit_locked(&self.state, &event);
        }
        match written {
            Ok(()) => {
                self.send(&Reply::new(
                    226,
                    format!("Transfer complete, {} bytes", job.bytes.len()),
                ))
                .await
            }
            Err(e) => {
                self.send(&Reply::new(
                    426,
                    format!("Connection closed; transfer aborted: {e}"),
                ))
                .await
            }
        }
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
            .run_blocking(move || users::verify_password(&hash, &password))
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
            if let Some(user) = self.session.user() {
                self.observers.emit(&st, &SessionEvent::LoggedIn { user });
            }
            result
        };
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

    async fn transfer(&mut self, job: TransferJob) -> Next {
        let started = tokio::time::Instant::now();
        let outcome = self.run_transfer(&job).await;
        let (outcome, aborted) = outcome;
        tracing::info!(?outcome, "transfer finished");
        let finished = SessionEvent::TransferFinished {
            job: &job,
            outcome: &outcome,
            aborted,
            duration: started.elapsed(),
        };
        self.observers.emit_locked(&self.state, &finished);
        let reply = {
            let mut st = self.state.lock();
            st.now = self.env.unix_now();
            let reply = self.session.transfer_done(&mut st, &job, outcome);
            if let Some(d) = self.state.flush(&mut st) {
                self.durable = Some(d);
            }
            reply
        };
        if self.closed {
            return Next::Close;
        }
        let sent = self.send(&reply).await;
        if let Some(mut data) = self.parked.take() {
            let _ = data.shutdown().await;
        }
        if sent.is_err() {
            return Next::Close;
        }
        if aborted {
            // RFC 959 §4.1.3: the aborted transfer got its 426, now ABOR's 226.
            if self
                .send(&Reply::new(226, "ABOR command successful"))
                .await
                .is_err()
            {
                return Next::Close;
            }
        }
        Next::Continue
    }

    /// Runs one slave transfer to its end by performing the transfer
    /// machine's steps. Returns the outcome and whether the client sent
    /// ABOR.
    async fn run_transfer(&mut self, job: &TransferJob) -> (TransferOutcome, bool) {
        let (link, timeout, relay_allowed) = {
            let st = self.state.lock();
            (
                st.link(job.slave),
                st.config.data_timeout(),
                st.config.pasv_without_pret == PasvWithoutPret::Relay,
            )
        };
        // The passive listener (if any) is consumed by this transfer.
        let (master_listener, catch, announced) =
            match std::mem::replace(&mut self.endpoint, Endpoint::None) {
                Endpoint::Master(l) => (Some(l), None, None),
                Endpoint::Slave { catch, addr, .. } => (None, catch, Some(addr)),
                Endpoint::None => (None, None, None),
            };
        let mut m = TransferMachine::new(job, relay_allowed, announced, self.session.local);
        let mut io = TransferIo {
            link,
            master_listener,
            caught: None,
            slave_stream: None,
            relay: None,
            response: None,
        };
        // curl and ftplib connect right after the 227 reply, so a client
        // that ignored its address is usually already waiting at the
        // master's address when the data command comes: answer the command
        // itself (425, or relay) before any 150.
        let mut caught_now = false;
        if io.link.is_some() && job.route != Route::Relay {
            if let Some(l) = catch.as_deref() {
                if let Some(Ok((stream, peer))) = poll_once(l.accept()) {
                    if peer.ip() == self.session.peer_ip() {
                        io.caught = Some(stream);
                        caught_now = true;
                    }
                }
            }
        }
        let mut steps = m.start(io.link.is_some(), io.master_listener.is_some(), caught_now);
        loop {
            let mut event = None;
            for step in steps {
                if let Some(e) = self.perform_step(step, job, &mut io, timeout).await {
                    match e {
                        StepResult::Event(e) => event = Some(e),
                        StepResult::Finish(outcome, aborted) => return (outcome, aborted),
                    }
                }
            }
            let event = match event {
                Some(e) => e,
                None => {
                    self.next_event(&mut io, catch.as_deref(), m.watching(), m.may_catch())
                        .await
                }
            };
            steps = m.on(event);
        }
    }

    /// Performs one step of the transfer machine. Steps that find
    /// something out at once (the relay's setup, the control probe) return
    /// the event for the machine.
    async fn perform_step(
        &mut self,
        step: Step,
        job: &TransferJob,
        io: &mut TransferIo,
        timeout: Duration,
    ) -> Option<StepResult> {
        let abort = |io: &TransferIo| {
            if let Some(link) = &io.link {
                link.send(crate::link::MasterMsg::Abort { xfer: job.xfer });
            }
        };
        match step {
            Step::Order(data) => {
                // PROT P: the slave is the client's TLS server; relayed, the
                // master is (the master<->slave leg of a relay stays plain,
                // like the link without `link_tls`).
                let tls = match (
                    &self.tls_token,
                    self.session.tls.private,
                    io.slave_stream.is_some() || io.relay.is_some(),
                ) {
                    (Some(token), true, false) => Some(DataTls {
                        session_token: token.clone(),
                        client: self.session.tls.sscn || self.session.tls.cpsv,
                    }),
                    _ => None,
                };
                let rid = self.state.lock().next_id();
                if let Some(link) = &io.link {
                    io.response = Some(link.request(
                        rid,
                        Request::Transfer {
                            xfer: job.xfer,
                            order: job.order.clone(),
                            data,
                            tls,
                        },
                    ));
                }
            }
            Step::Reply(r) => {
                if self.send(&r).await.is_err() {
                    self.closed = true;
                }
            }
            Step::AbortSlave => abort(io),
            Step::SetUpRelay(client) => {
                if client == RelayClient::Caught {
                    tracing::info!("client ignored the 227 address; relaying through the master");
                }
                return Some(StepResult::Event(self.set_up_relay(job, io, timeout).await));
            }
            Step::StartRelay => self.start_relay(job, io, timeout),
            Step::EndRelay { cancel } => {
                if let Some(t) = io.relay.take() {
                    if cancel {
                        t.abort();
                    }
                    let _ = t.await;
                }
            }
            Step::ProbeControl => return Some(StepResult::Event(self.probe_control().await)),
            Step::Commit => {
                let rid = self.state.lock().next_id();
                if let Some(link) = &io.link {
                    io.response = Some(link.request(rid, Request::Commit { xfer: job.xfer }));
                }
            }
            Step::Park => self.parked = io.caught.take(),
            Step::Finish { outcome, aborted } => {
                if matches!(outcome, TransferOutcome::IgnoredPasvAddress { .. }) {
                    tracing::info!("client ignored the 227 address; told it how to fix that");
                }
                return Some(StepResult::Finish(outcome, aborted));
            }
        }
        None
    }

    /// Waits for what the transfer machine needs next: the slave's answer,
    /// and, while the transfer runs, the control connection (ABOR, loss)
    /// and the master's own address at the slave's port (a client that
    /// ignored the 227 reply).
    async fn next_event(
        &mut self,
        io: &mut TransferIo,
        catch: Option<&dyn NetListener>,
        watch_control: bool,
        watch_catch: bool,
    ) -> Event {
        loop {
            let control = watch_control && !self.closed;
            let catching = watch_catch && !self.closed;
            tokio::select! {
                biased;
                line = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed), if control => {
                    match line {
                        Some(Line::Command(t)) if is_abor(&t) => return Event::Abor,
                        Some(l) => self.queued.push_back(l),
                        None => return Event::ControlClosed,
                    }
                }
                r = async {
                    match io.response.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => {
                    io.response = None;
                    return match r {
                        Ok(r) => Event::Slave(r),
                        Err(_) => Event::SlaveLost,
                    };
                }
                c = accept_opt(catch), if catching => {
                    if let Ok((stream, peer)) = c {
                        if peer.ip() == self.session.peer_ip() {
                            io.caught = Some(stream);
                            return Event::Caught;
                        }
                    }
                }
            }
        }
    }

    /// Relay: asks the slave for a listener of its own and connects to it.
    async fn set_up_relay(
        &mut self,
        job: &TransferJob,
        io: &mut TransferIo,
        timeout: Duration,
    ) -> Event {
        let Some(link) = io.link.clone() else {
            return Event::RelayFailed {
                listening: false,
                lost: true,
            };
        };
        let rid = self.state.lock().next_id();
        let rx = link.request(
            rid,
            Request::Listen {
                xfer: job.xfer,
                accept_from: None,
            },
        );
        let addr = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Response::Listening { addr }))
                if self.state.lock().slaves.is_own_address(job.slave, addr) =>
            {
                addr
            }
            Ok(Err(_)) => {
                return Event::RelayFailed {
                    listening: false,
                    lost: true,
                }
            }
            _ => {
                return Event::RelayFailed {
                    listening: false,
                    lost: false,
                }
            }
        };
        match tokio::time::timeout(timeout, self.env.net.connect(addr)).await {
            Ok(Ok(s)) => {
                io.slave_stream = Some(s);
                Event::RelayReady
            }
            _ => Event::RelayFailed {
                listening: true,
                lost: false,
            },
        }
    }

    /// Starts moving bytes between the client and the slave's listener.
    fn start_relay(&mut self, job: &TransferJob, io: &mut TransferIo, timeout: Duration) {
        let Some(mut slave_stream) = io.slave_stream.take() else {
            return;
        };
        let client = match (io.caught.take(), io.master_listener.take()) {
            (Some(s), _) => ClientSide::Caught(s),
            (None, Some(l)) => ClientSide::Listener(l),
            (None, None) => return,
        };
        let relay_tls = match (&self.tls_token, self.session.tls.private) {
            (Some(token), true) => self.state.tls().map(|t| (t.data.clone(), token.clone())),
            _ => None,
        };
        let peer = self.session.peer_ip();
        let upload = job.is_upload();
        io.relay = Some(tokio::spawn(async move {
            let mut client = match client {
                ClientSide::Listener(l) => accept_from(l.as_ref(), Some(peer), timeout).await?,
                ClientSide::Caught(s) => s,
            };
            if let Some((config, token)) = relay_tls {
                client =
                    Box::new(crate::tls::accept(&config, client, Some(&token), timeout).await?);
            }
            if upload {
                pump(&mut client, &mut slave_stream).await
            } else {
                pump(&mut slave_stream, &mut client).await
            }
        }));
    }

    /// Notices a control connection that closed together with its data
    /// connection (a killed client), or an ABOR, before an upload is
    /// committed.
    async fn probe_control(&mut self) -> Event {
        if self.closed {
            return Event::ControlClosed;
        }
        let probe = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed);
        match tokio::time::timeout(Duration::from_millis(1), probe).await {
            Ok(Some(Line::Command(t))) if is_abor(&t) => Event::Abor,
            Ok(Some(l)) => {
                self.queued.push_back(l);
                Event::ControlAlive
            }
            Ok(None) => Event::ControlClosed,
            Err(_) => Event::ControlAlive,
        }
    }
}

/// The IO side of one running transfer: what the machine's steps open and
/// the driver holds until the transfer ends.
struct TransferIo {
    link: Option<SlaveLink>,
    /// The client's passive listener on the master (relay route).
    master_listener: Option<Box<dyn NetListener>>,
    /// A client caught at the master's address.
    caught: Option<BoxStream>,
    /// The relay's connection to the slave's listener.
    slave_stream: Option<BoxStream>,
    relay: Option<tokio::task::JoinHandle<std::io::Result<u64>>>,
    /// The answer awaited from the slave (order or commit).
    response: Option<tokio::sync::oneshot::Receiver<Response>>,
}

enum StepResult {
    Event(Event),
    Finish(TransferOutcome, bool),
}

// ---------------------------------------------------------------------------
// FTPS (RFC 4217) on the control connection and the master's own data
// connections.

impl Driver {
    /// `AUTH TLS` accepted: 234 in clear, then the TLS handshake on the
    /// whole control stream (bounded by `data_timeout`). Bytes the client
    /// pipelined after the AUTH line came in clear and are dropped: they
    /// must never run as protected commands. A failed handshake closes the
    /// connection (its state is unknown).
    async fn start_tls(&mut self, reply: Reply) -> Next {
        self.release_endpoint();
        if self.send(&reply).await.is_err() {
            return Next::Close;
        }
        let (tls, limit) = {
            let st = self.state.lock();
            (self.state.tls(), st.config.data_timeout())
        };
        let Some(tls) = tls else {
            return Next::Close;
        };
        let dropped = self.decoder.buffered() + self.queued.len();
        if dropped > 0 {
            tracing::info!(dropped, "discarding plaintext sent after AUTH TLS");
        }
        self.decoder = LineDecoder::new();
        self.queued.clear();
        let (idle_r, idle_w) = tokio::io::split(Box::new(Detached) as BoxStream);
        let reader = std::mem::replace(&mut self.reader, idle_r);
        let writer = std::mem::replace(&mut self.writer, idle_w);
        let plain = reader.unsplit(writer);
        let mut token = vec![0u8; 16];
        self.env.rng_fill(&mut token);
        match crate::tls::accept(&tls.server, plain, Some(&token), limit).await {
            Ok(secured) => {
                tracing::debug!(
                    version = ?secured.get_ref().1.protocol_version(),
                    "control connection encrypted"
                );
                let (r, w) = tokio::io::split(Box::new(secured) as BoxStream);
                self.reader = r;
                self.writer = w;
                self.tls_token = Some(token);
                self.observers
                    .emit_locked(&self.state, &SessionEvent::TlsStarted);
                Next::Continue
            }
            Err(e) => {
                tracing::info!(error = %e, "TLS handshake on the control connection failed");
                self.closed = true;
                Next::Close
            }
        }
    }

    /// A data connection the master serves itself (listings): TLS server
    /// side under `PROT P`, tagged with this session's token; a client that
    /// resumes another control connection's session is refused.
    async fn protect_master_data(&mut self, stream: BoxStream) -> std::io::Result<BoxStream> {
        let (Some(token), true) = (&self.tls_token, self.session.tls.private) else {
            return Ok(stream);
        };
        let (tls, limit) = {
            let st = self.state.lock();
            (self.state.tls(), st.config.data_timeout())
        };
        let Some(tls) = tls else {
            return Err(std::io::Error::other("TLS is not configured"));
        };
        let secured = crate::tls::accept(&tls.data, stream, Some(token), limit)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        if crate::tls::SessionTie::of(secured.get_ref().1, token) == crate::tls::SessionTie::Foreign
        {
            tracing::warn!(
                "data connection refused: it resumed the TLS session of another control connection"
            );
            return Err(std::io::Error::other(
                "the TLS session of the data connection belongs to another control connection",
            ));
        }
        Ok(Box::new(secured))
    }
}

/// Stands in for the control stream while `AUTH TLS` takes it over: reads
/// end, writes fail.
struct Detached;

impl tokio::io::AsyncRead for Detached {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Detached {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl crate::env::NetStream for Detached {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::ErrorKind::NotConnected.into())
    }
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::ErrorKind::NotConnected.into())
    }
}

/// Binds the master's own address `own` at the port announced for a slave
/// (best effort: the port may be taken here). Clients that ignore the 227
/// address connect there; the transfer then says so instead of timing out.
async fn catch_listener(
    env: &Env,
    own: std::net::IpAddr,
    announced: SocketAddr,
) -> Option<Box<dyn NetListener>> {
    if announced.ip() == own {
        return None;
    }
    env.net
        .bind(SocketAddr::new(own, announced.port()))
        .await
        .ok()
}

/// Polls `f` exactly once: its value if ready now, else `None`. (Not
/// `timeout(Duration::ZERO, ..)`: tokio rounds that deadline up to its next
/// 1 ms timer tick, which cost every RETR a millisecond.)
fn poll_once<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let f = std::pin::pin!(f);
    match f.poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}

/// Accepts on `l`, or never resolves when there is no listener.
async fn accept_opt(l: Option<&dyn NetListener>) -> std::io::Result<(BoxStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

fn is_abor(text: &str) -> bool {
    text.trim().eq_ignore_ascii_case("ABOR")
}

/// Reads one line without borrowing the whole driver (used inside select!).
async fn read_line_into(
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

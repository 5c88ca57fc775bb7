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
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};
use tracing::Instrument;

use super::registry::{lock, SlaveLink};
use super::session::{Action, ListingJob, Route, Session, Target, TransferJob, TransferOutcome};
use super::{SessionInfo, Shared};
use crate::env::{accept_from, bind_in_range, pump, BoxStream, Env, NetListener};
use crate::link::{DataConn, Request, Response, TransferFailure};
use crate::proto::{Command, Line, LineDecoder, Reply};

pub async fn accept_sessions(
    env: Env,
    state: Shared,
    listener: Box<dyn NetListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(_) => continue,
        };
        let id = {
            let mut st = lock(&state);
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
            id
        };
        let span = tracing::info_span!("session", id, %peer);
        let driver = Driver::new(
            env.clone(),
            state.clone(),
            stream,
            Session::new(id, peer, local),
        );
        tokio::spawn(driver.run().instrument(span));
    }
}

/// The server side of the current data connection.
enum Endpoint {
    None,
    Master(Box<dyn NetListener>),
    Slave { xfer: u64, link: SlaveLink },
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
        }
    }

    async fn run(mut self) {
        tracing::debug!("session opened");
        if self.send(&Session::greeting()).await.is_ok() {
            self.serve().await;
        }
        self.release_endpoint();
        {
            let mut st = lock(&self.state);
            self.session.close(&mut st);
        }
        tracing::debug!("session closed");
    }

    async fn serve(&mut self) {
        let idle = lock(&self.state).config.idle_timeout();
        loop {
            let line = match self.queued.pop_front() {
                Some(l) => l,
                None => match tokio::time::timeout(idle, self.read_line()).await {
                    Ok(Some(l)) => l,
                    Ok(None) => return,
                    Err(_) => {
                        let _ = self
                            .send(&Reply::new(421, "Idle timeout, closing control connection"))
                            .await;
                        return;
                    }
                },
            };
            let reply = match line {
                Line::Command(text) => match Command::parse(&text) {
                    Ok(cmd) => {
                        let verb = cmd.verb();
                        if verb == "PASS" {
                            tracing::debug!("<- PASS ****");
                        } else {
                            tracing::debug!("<- {text}");
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
        // Small: it lives in every idle session's future (10,000 sessions
        // in < 100 MB is a goal); the decoder joins partial lines.
        let mut buf = [0u8; 512];
        loop {
            if let Some(l) = self.decoder.next_line() {
                return Some(l);
            }
            if self.closed {
                return None;
            }
            match self.reader.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    self.closed = true;
                    return None;
                }
                Ok(n) => self.decoder.push(&buf[..n]),
            }
        }
    }

    async fn send(&mut self, reply: &Reply) -> std::io::Result<()> {
        tracing::debug!(
            "-> {} {}",
            reply.code,
            reply.lines.first().map(String::as_str).unwrap_or("")
        );
        self.writer.write_all(reply.to_wire().as_bytes()).await?;
        self.writer.flush().await
    }

    fn release_endpoint(&mut self) {
        if let Endpoint::Slave { xfer, link } =
            std::mem::replace(&mut self.endpoint, Endpoint::None)
        {
            link.send(crate::link::MasterMsg::Abort { xfer });
        }
    }

    async fn perform(&mut self, cmd: Command) -> Next {
        let action = {
            let mut st = lock(&self.state);
            st.now = self.env.unix_now();
            self.session.handle(cmd, &mut st)
        };
        let result = match action {
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
                let reply = {
                    let st = lock(&self.state);
                    self.session.passive_opened(&st, target, xfer, epsv, result)
                };
                self.send(&reply).await
            }
            Action::Listing(job) => self.listing(*job).await,
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
            let st = lock(&self.state);
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
                let (link, rid, ready) = {
                    let mut st = lock(&self.state);
                    let rid = st.next_id();
                    let link = st.slaves.link(s);
                    let ready = match (&link, st.slaves.get_mut(s)) {
                        (Some(_), Some(info)) => info.ready_listeners.pop_front(),
                        _ => None,
                    };
                    (link, rid, ready)
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
                        accept_from: Some(self.session.peer_ip()),
                    });
                    self.endpoint = Endpoint::Slave { xfer, link };
                    return Ok(addr);
                }
                let rx = link.request(
                    rid,
                    Request::Listen {
                        xfer,
                        accept_from: Some(self.session.peer_ip()),
                    },
                );
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Response::Listening { addr })) => {
                        self.endpoint = Endpoint::Slave { xfer, link };
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

    /// Opens the client side of a master-served data connection.
    async fn master_data(&mut self, active: Option<SocketAddr>) -> std::io::Result<BoxStream> {
        let timeout = lock(&self.state).config.data_timeout();
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
        let mut data = match self.master_data(job.active).await {
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

    async fn transfer(&mut self, job: TransferJob) -> Next {
        let outcome = self.run_transfer(&job).await;
        let (outcome, aborted) = outcome;
        tracing::info!(?outcome, "transfer finished");
        let reply = {
            let mut st = lock(&self.state);
            st.now = self.env.unix_now();
            self.session.transfer_done(&mut st, &job, outcome)
        };
        if self.closed {
            return Next::Close;
        }
        if self.send(&reply).await.is_err() {
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

    /// Runs one slave transfer to its end. Returns the outcome and whether
    /// the client sent ABOR.
    async fn run_transfer(&mut self, job: &TransferJob) -> (TransferOutcome, bool) {
        let (link, timeout) = {
            let mut st = lock(&self.state);
            let _ = st.next_id();
            (st.slaves.link(job.slave), st.config.data_timeout())
        };
        // The passive listener (if any) is consumed by this transfer.
        let endpoint = std::mem::replace(&mut self.endpoint, Endpoint::None);
        let Some(link) = link else {
            let _ = self.send(&job.opening).await;
            return (TransferOutcome::SlaveLost, false);
        };
        let data = match &job.route {
            Route::SlavePassive => DataConn::Passive,
            Route::Active(a) => DataConn::Active(*a),
            Route::Relay => DataConn::Passive,
        };
        // Relay: ask the slave for a listener of its own and connect to it.
        let mut relay = None;
        if job.route == Route::Relay {
            let Endpoint::Master(client_listener) = endpoint else {
                return (
                    TransferOutcome::Failed(TransferFailure::NoDataConnection(
                        "no passive listener".into(),
                    )),
                    false,
                );
            };
            let rid = lock(&self.state).next_id();
            let rx = link.request(
                rid,
                Request::Listen {
                    xfer: job.xfer,
                    accept_from: None,
                },
            );
            let addr = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Response::Listening { addr })) => addr,
                Ok(Err(_)) => return (TransferOutcome::SlaveLost, false),
                _ => {
                    return (
                        TransferOutcome::Failed(TransferFailure::NoDataConnection(
                            "slave listener".into(),
                        )),
                        false,
                    )
                }
            };
            let slave_stream = match tokio::time::timeout(timeout, self.env.net.connect(addr)).await
            {
                Ok(Ok(s)) => s,
                _ => {
                    link.send(crate::link::MasterMsg::Abort { xfer: job.xfer });
                    return (
                        TransferOutcome::Failed(TransferFailure::NoDataConnection(
                            "cannot reach the slave".into(),
                        )),
                        false,
                    );
                }
            };
            relay = Some((client_listener, slave_stream));
        }
        let rid = lock(&self.state).next_id();
        let mut rx = link.request(
            rid,
            Request::Transfer {
                xfer: job.xfer,
                order: job.order.clone(),
                data,
            },
        );
        if self.send(&job.opening).await.is_err() {
            self.closed = true;
        }
        let mut relay_task: Option<tokio::task::JoinHandle<std::io::Result<u64>>> = None;
        if let Some((client_listener, mut slave_stream)) = relay {
            let peer = self.session.peer_ip();
            let upload = job.is_upload();
            relay_task = Some(tokio::spawn(async move {
                let mut client = accept_from(client_listener.as_ref(), Some(peer), timeout).await?;
                if upload {
                    pump(&mut client, &mut slave_stream).await
                } else {
                    pump(&mut slave_stream, &mut client).await
                }
            }));
        }
        let mut aborted = false;
        let response = loop {
            if self.closed {
                // Client gone: cancel and wait for the slave to confirm.
                link.send(crate::link::MasterMsg::Abort { xfer: job.xfer });
                match (&mut rx).await {
                    Ok(r) => break Ok(r),
                    Err(e) => break Err(e),
                }
            }
            tokio::select! {
                biased;
                line = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed) => {
                    match line {
                        Some(Line::Command(t)) if is_abor(&t) => {
                            aborted = true;
                            link.send(crate::link::MasterMsg::Abort { xfer: job.xfer });
                        }
                        Some(l) => self.queued.push_back(l),
                        None => {}
                    }
                }
                r = &mut rx => break r,
            }
        };
        if let Some(t) = relay_task {
            if aborted || self.closed {
                t.abort();
            }
            let _ = t.await;
        }
        let outcome = match response {
            Err(_) => TransferOutcome::SlaveLost,
            Ok(Response::Sent { bytes }) => TransferOutcome::Sent { bytes },
            Ok(Response::Failed(f)) => TransferOutcome::Failed(f),
            Ok(Response::Received { crc32, .. }) => {
                // Second phase: commit only while the client is still there
                // and did not abort. A client that died mid-upload leaves a
                // partial file, which must never be recorded.
                if self.poll_control_closed().await {
                    aborted = true;
                }
                if aborted || self.closed {
                    link.send(crate::link::MasterMsg::Abort { xfer: job.xfer });
                    TransferOutcome::Failed(TransferFailure::Aborted)
                } else {
                    let rid = lock(&self.state).next_id();
                    let rx = link.request(rid, Request::Commit { xfer: job.xfer });
                    match rx.await {
                        Ok(Response::Committed { size, mtime }) => {
                            TransferOutcome::Committed { size, mtime, crc32 }
                        }
                        Ok(Response::Failed(f)) => TransferOutcome::Failed(f),
                        Ok(_) => TransferOutcome::Failed(TransferFailure::Storage(
                            "unexpected answer".into(),
                        )),
                        Err(_) => TransferOutcome::SlaveLost,
                    }
                }
            }
            Ok(other) => TransferOutcome::Failed(TransferFailure::Storage(format!(
                "unexpected answer {other:?}"
            ))),
        };
        (outcome, aborted)
    }

    /// Notices a control connection that closed together with its data
    /// connection (a killed client), or an ABOR, before an upload is
    /// committed. Returns true when the client sent ABOR.
    async fn poll_control_closed(&mut self) -> bool {
        if self.closed {
            return false;
        }
        let probe = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed);
        match tokio::time::timeout(Duration::from_millis(1), probe).await {
            Ok(Some(Line::Command(t))) if is_abor(&t) => true,
            Ok(Some(l)) => {
                self.queued.push_back(l);
                false
            }
            _ => false,
        }
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

#[allow(dead_code)]
fn _assert_send(_: oneshot::Receiver<Response>) {}

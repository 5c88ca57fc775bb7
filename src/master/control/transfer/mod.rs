//! Running one slave transfer: the control driver performs the steps of
//! the core's transfer machine (`dftpd_core::master::transfer`) — link
//! requests, the 150, the relay through the master, the probe before a
//! commit — and feeds it what happened (the slave's answers, ABOR, the
//! control connection closing, a client caught at the master's address).

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::{accept_opt, is_abor, poll_once, read_line_into, ControlSession, Endpoint, Next};
use crate::config::PasvWithoutPret;
use crate::env::{BoxStream, NetListener};
use crate::link::{DataTls, OpOutcome, Request, Response, TransferFailure};
use crate::master::db::SlaveId;
use crate::master::hub::{SlaveLink, Stop};
use crate::master::observe::{DataFacts, SessionEvent};
use crate::master::session::{Route, TransferJob, TransferOutcome};
use crate::master::transfer::{Event, RelayClient, Step, TransferMachine};
use crate::proto::{Line, Reply};

mod relay;

use relay::RelayEnd;

impl ControlSession {
    pub(super) async fn transfer(&mut self, job: TransferJob) -> Next {
        let started = tokio::time::Instant::now();
        let (outcome, aborted, mut data) = self.run_transfer(&job).await;
        data.client_gone |= self.closed;
        let relayed = data.relayed;
        // A completed transfer is the transfer log's line (xferlog), not
        // the main log's: at thousands of small files a second a line each
        // would cost more than the session's own work. Failures stay here.
        match &outcome {
            TransferOutcome::Sent { .. } | TransferOutcome::Committed { .. } if !aborted => {
                tracing::debug!(?outcome, relayed, "transfer finished")
            }
            _ => tracing::info!(?outcome, relayed, "transfer finished"),
        }
        let reply = {
            let mut st = self.state.lock();
            st.now = self.env.unix_now();
            if !self.observers.is_empty() {
                let finished = SessionEvent::TransferFinished {
                    job: &job,
                    outcome: &outcome,
                    aborted,
                    duration: started.elapsed(),
                    data,
                    unix_now: st.now,
                };
                self.observers.emit(&st, &finished);
            }
            // A failed or aborted relay still moved bytes through the
            // master: SITE SLAVES' relayed= counts them (the session counts
            // only a completed transfer's).
            let partly_relayed = match &outcome {
                TransferOutcome::Sent { .. } | TransferOutcome::Committed { .. } => 0,
                _ if relayed => data.bytes.unwrap_or(0),
                _ => 0,
            };
            // A copy missing or damaged on its slave's disk stops counting.
            let outcome = match outcome {
                TransferOutcome::Unknown => {
                    TransferOutcome::Refused(crate::master::transfer::unknown_commit_reply(&job))
                }
                o => crate::master::transfer::download_refused(&mut st, &job, o),
            };
            let reply = self.session.transfer_done(&mut st, &job, outcome, relayed);
            if partly_relayed > 0 {
                if let Some(s) = st.slaves.get_mut(job.slave) {
                    s.relayed_bytes += partly_relayed;
                }
            }
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
    /// machine's steps. Returns the outcome, whether the client sent ABOR,
    /// and what the data connection carried (with whether the master
    /// relayed the bytes: the relay route, or a client caught at the
    /// master's address; the machine decides, not the job's route).
    async fn run_transfer(&mut self, job: &TransferJob) -> (TransferOutcome, bool, DataFacts) {
        let (link, timeout, relay_allowed) = {
            let st = self.state.lock();
            (
                st.link(job.slave),
                st.config.data_timeout(),
                st.config.pasv_without_pret == PasvWithoutPret::Relay,
            )
        };
        // The passive listener (if any) is consumed by this transfer.
        let (master_listener, catch, announced, claim, listened_on) =
            match std::mem::replace(&mut self.endpoint, Endpoint::None) {
                Endpoint::Master(l) => (Some(l), None, None, None, None),
                Endpoint::Slave {
                    catch,
                    addr,
                    claim,
                    link,
                    ..
                } => (None, catch, Some(addr), claim, Some(link.epoch)),
                Endpoint::None => (None, None, None, None, None),
            };
        // The listener (and its claim token) belongs to the slave process
        // of the link it was announced on. A slave that restarted since has
        // other listeners under the same tokens, maybe on the same ports:
        // an order there could hand this client another session's
        // connection. The transfer fails as if the slave were offline.
        let link = match (link, listened_on) {
            (Some(l), Some(epoch)) if l.epoch != epoch => None,
            (link, _) => link,
        };
        let mut m = TransferMachine::new(job, relay_allowed, announced, self.session.local);
        let mut io = TransferIo {
            link,
            claim,
            master_listener,
            caught: None,
            slave_stream: None,
            relay: None,
            relay_done: None,
            relay_bytes: None,
            relay_progress: None,
            held: Vec::new(),
            stashed: None,
            response: None,
            facts: DataFacts::default(),
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
                        io.facts.caught = true;
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
                        StepResult::Finish(outcome, aborted) => {
                            io.facts.relayed = m.relaying();
                            if let Some(n) = io.relay_bytes {
                                // What reached the client (or came from it)
                                // before the relay broke.
                                io.facts.bytes = Some(n);
                            }
                            let complete = matches!(
                                outcome,
                                TransferOutcome::Sent { .. } | TransferOutcome::Committed { .. }
                            );
                            if io.facts.relayed && (!complete || aborted) {
                                // Failed or aborted: what the relay moved,
                                // not what the slave sent into it.
                                if let Some(n) = io.relay_moved() {
                                    io.facts.bytes = Some(n);
                                }
                            }
                            if let (Some(claim), Some(link)) = (io.claim.take(), &io.link) {
                                // Never used: the slave releases it.
                                let abort = crate::link::MasterMsg::Abort { xfer: job.xfer };
                                link.send_two(claim.message(job.xfer), abort);
                            }
                            return (outcome, aborted, io.facts);
                        }
                    }
                }
            }
            let event = match (event, io.stashed.take()) {
                (Some(e), stashed) => {
                    io.stashed = stashed;
                    e
                }
                (None, Some(e)) => e,
                (None, None) => {
                    self.next_event(&mut io, catch.as_deref(), m.watching(), m.may_catch())
                        .await
                }
            };
            let event = match event {
                // The machine needs only the failure; the count is a fact.
                Event::Slave(Response::FailedAfter { failure, bytes }) => {
                    io.facts.bytes = Some(bytes);
                    Event::Slave(Response::Failed(failure))
                }
                e => e,
            };
            match &event {
                Event::Slave(Response::Sent { bytes } | Response::Received { bytes, .. }) => {
                    io.facts.bytes = Some(*bytes);
                }
                Event::Caught => io.facts.caught = true,
                Event::ControlClosed => io.facts.client_gone = true,
                _ => {}
            }
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
        let abort = |io: &mut TransferIo| {
            if let Some(link) = &io.link {
                let abort = crate::link::MasterMsg::Abort { xfer: job.xfer };
                match io.claim.take() {
                    Some(claim) => link.send_two(claim.message(job.xfer), abort),
                    None => link.send(abort),
                }
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
                    _ if self.state.tls_in_clear() => None,
                    (Some(token), true, false) => Some(DataTls {
                        session_token: token.clone(),
                        client: self.session.tls.sscn || self.session.tls.cpsv,
                    }),
                    _ => None,
                };
                let rid = self.state.lock().next_id();
                if let Some(link) = &io.link {
                    io.response = Some(link.request_after(
                        io.claim.take().map(|c| c.message(job.xfer)),
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
                // A small download's 150 goes out with its 226 (unless a
                // change must be confirmed first: `send` waits for that).
                // Not under PROT P: the client starts the data connection's
                // TLS handshake only once it has read the 150.
                if job.may_hold_opening() && self.durable.is_none() && !self.session.tls.private {
                    self.hold(&r);
                } else if self.send(&r).await.is_err() {
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
            Step::StartRelay => {
                if !self.start_relay(job, io, timeout) {
                    return Some(StepResult::Event(Event::RelayBroken(
                        TransferFailure::NoDataConnection("no relay".into()),
                    )));
                }
            }
            Step::EndRelay { cancel: true } => {
                if let Some(t) = io.relay.take() {
                    t.abort();
                    let _ = t.await;
                }
                io.held.clear();
            }
            Step::EndRelay { cancel: false } => {
                // Bounded: the relay ends when a leg makes no progress for
                // the data timeout.
                let end = match (io.relay_done.take(), io.relay.take()) {
                    (Some(n), _) => RelayEnd::Done(n),
                    (None, Some(mut t)) => loop {
                        // A held 150 goes out meanwhile: the slave's `Sent`
                        // came without the client, which may wait for the
                        // 150 before it reads (or makes its TLS handshake).
                        // An ABOR (or the client gone) ends the wait: the
                        // client never gets the rest.
                        let control = !self.closed;
                        let mut gave_up = None;
                        tokio::select! {
                            biased;
                            line = read_line_into(&mut self.reader, &mut self.decoder, &mut self.closed), if control => {
                                match line {
                                    Some(Line::Command(t)) if is_abor(&t) => gave_up = Some(Event::Abor),
                                    Some(l) => self.queued.push_back(l),
                                    None => gave_up = Some(Event::ControlClosed),
                                }
                            }
                            end = &mut t => break end.unwrap_or_else(RelayEnd::panicked),
                            _ = held_deadline(self.held_until) => {
                                if self.release_held().await.is_err() {
                                    self.closed = true;
                                }
                            }
                        }
                        if let Some(event) = gave_up {
                            // The machine cancels the relay next.
                            io.relay = Some(t);
                            return Some(StepResult::Event(event));
                        }
                    },
                    (None, None) => RelayEnd::Broken {
                        why: TransferFailure::NoDataConnection("no relay".into()),
                        bytes: 0,
                        legs: Vec::new(),
                    },
                };
                return Some(StepResult::Event(io.relay_ended(end)));
            }
            Step::ProbeControl => return Some(StepResult::Event(self.probe_control().await)),
            Step::SyncCopies { size, crc32, want } => {
                let Some(target) = &job.upload else {
                    return Some(StepResult::Event(Event::Synced(
                        Err("not an upload".into()),
                    )));
                };
                let synced = crate::master::replicator::sync_copies(
                    &self.env,
                    &self.state,
                    crate::master::replicator::SyncSource {
                        slave: job.slave,
                        xfer: job.xfer,
                        path: target.path.clone(),
                        size,
                        crc32,
                    },
                    want,
                )
                .await;
                return Some(StepResult::Event(Event::Synced(synced)));
            }
            Step::Decide {
                size,
                crc32,
                copies,
            } => {
                let decided = {
                    let mut st = self.state.lock();
                    st.now = self.env.unix_now();
                    let decided = self
                        .session
                        .decide_commit(&mut st, job, size, crc32, &copies);
                    // The new version and the commit entry go out now, in
                    // order with every other decision on that slave.
                    if let Some(d) = self.state.flush(&mut st) {
                        self.durable = Some(d);
                    }
                    decided
                };
                return Some(StepResult::Event(Event::Decided(decided)));
            }
            Step::AwaitCommit { seqs } => {
                return Some(StepResult::Event(self.await_commits(&seqs).await));
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
            let mut release = false;
            let (response, relay) = (&mut io.response, &mut io.relay);
            let mut relay_end = None;
            let mut slave_event = None;
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
                    match response.as_mut() {
                        Some(rx) => rx.await,
                        None => std::future::pending().await,
                    }
                } => {
                    *response = None;
                    slave_event = Some(match r {
                        Ok(r) => Event::Slave(r),
                        Err(_) => Event::SlaveLost,
                    });
                }
                // The relay ending before the slave answers: done (an
                // upload's client closed), or broken (the client never
                // connected, a leg failed or stalled).
                end = async {
                    match relay.as_mut() {
                        Some(t) => t.await.unwrap_or_else(RelayEnd::panicked),
                        None => std::future::pending().await,
                    }
                }, if relay.is_some() => relay_end = Some(end),
                changed = self.stop.changed(), if control && self.stop_open => {
                    match changed {
                        // Kicked: cancel as if the client had gone (the
                        // final reply, then 421). A shutdown lets the
                        // transfer finish.
                        Ok(()) if *self.stop.borrow() == Some(Stop::Kicked) => {
                            return Event::ControlClosed
                        }
                        Ok(()) => {}
                        Err(_) => self.stop_open = false,
                    }
                }
                c = accept_opt(catch), if catching => {
                    if let Ok((stream, peer)) = c {
                        if peer.ip() == self.session.peer_ip() {
                            io.caught = Some(stream);
                            return Event::Caught;
                        }
                    }
                }
                _ = held_deadline(self.held_until) => release = true,
            }
            if let Some(end) = relay_end {
                io.relay = None;
                return io.relay_ended(end);
            }
            if let Some(event) = slave_event {
                return self.after_slave_failure(io, event).await;
            }
            if release && self.release_held().await.is_err() {
                self.closed = true;
            }
        }
    }

    /// The slave's answer while the relay runs. A slave whose data
    /// connection failed or stalled saw the master's leg of the relay: its
    /// cause is on the relay's other side, which the relay names ("client
    /// data connection: no progress for ..."), usually at the same moment.
    /// The relay gets a moment to end first; its reason then rules, and the
    /// slave's answer comes next.
    async fn after_slave_failure(&mut self, io: &mut TransferIo, event: Event) -> Event {
        let network = matches!(
            &event,
            Event::Slave(
                Response::Failed(TransferFailure::Network(_))
                    | Response::FailedAfter {
                        failure: TransferFailure::Network(_),
                        ..
                    }
            )
        );
        let Some(task) = io.relay.as_mut().filter(|_| network) else {
            return event;
        };
        match tokio::time::timeout(RELAY_GRACE, task).await {
            Ok(end) => {
                io.relay = None;
                io.stashed = Some(event);
                io.relay_ended(end.unwrap_or_else(RelayEnd::panicked))
            }
            Err(_) => event,
        }
    }

    /// Waits for the slave to acknowledge the commit entry `seq`. The wait
    /// outlives the link: a slave lost now gets the entry again when it
    /// reconnects, and its acknowledgement still arrives here, within
    /// `commit_wait_ms`.
    /// Waits for every commit entry's acknowledgement (the uploading
    /// slave's first), each bounded by `commit_wait_ms`. The uploading
    /// slave's outcome when every copy committed; unknown otherwise (the
    /// file may be there with fewer copies than wanted).
    async fn await_commits(&mut self, seqs: &[(SlaveId, u64)]) -> Event {
        let wait = self.state.lock().config.commit_wait();
        // Every waiter first: an acknowledgement may come while an earlier
        // one is awaited.
        let waiters: Vec<_> = seqs
            .iter()
            .map(|&(slave, seq)| (slave, seq, self.state.await_commit(slave, seq)))
            .collect();
        let deadline = tokio::time::Instant::now() + wait;
        let mut primary = None;
        let mut unknown = false;
        for (slave, seq, rx) in waiters {
            if unknown {
                self.state.forget_commit(slave, seq);
                continue;
            }
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(outcome)) => outcome,
                _ => {
                    self.state.forget_commit(slave, seq);
                    tracing::warn!(
                        slave,
                        seq,
                        "no acknowledgement of the commit in time: outcome unknown"
                    );
                    unknown = true;
                    continue;
                }
            };
            match (&primary, &outcome) {
                (None, _) => primary = Some(outcome),
                (Some(_), OpOutcome::Committed { .. }) => {}
                (Some(_), _) => {
                    tracing::warn!(slave, ?outcome, "a synchronous copy did not commit");
                    unknown = true;
                }
            }
        }
        match primary {
            // The upload itself failed: whatever its copies did, it is not
            // stored (the record went back).
            Some(p @ OpOutcome::Failed(_)) => Event::CommitAck(p),
            Some(p) if !unknown => Event::CommitAck(p),
            _ => Event::CommitUnknown,
        }
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

/// How long a slave's data-connection failure waits for the relay's own
/// verdict (see `after_slave_failure`).
const RELAY_GRACE: Duration = Duration::from_millis(500);

/// Resolves at `until`, or never.
async fn held_deadline(until: Option<tokio::time::Instant>) {
    match until {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// The IO side of one running transfer: what the machine's steps open and
/// the driver holds until the transfer ends.
struct TransferIo {
    link: Option<SlaveLink>,
    /// The claim of the slave listener opened ahead, until it is sent with
    /// the first message of this transfer.
    claim: Option<super::data::Claim>,
    /// The client's passive listener on the master (relay route).
    master_listener: Option<Box<dyn NetListener>>,
    /// A client caught at the master's address.
    caught: Option<BoxStream>,
    /// The relay's connection to the slave's listener.
    slave_stream: Option<BoxStream>,
    relay: Option<tokio::task::JoinHandle<RelayEnd>>,
    /// The relay moved every byte (this many) before the slave answered.
    relay_done: Option<u64>,
    /// The bytes the relay moved before it broke.
    relay_bytes: Option<u64>,
    /// The relay's byte counter (SITE WHO's) and its value when the relay
    /// started: what it moved, however it ended.
    relay_progress: Option<(std::sync::Arc<std::sync::atomic::AtomicU64>, u64)>,
    /// A broken relay's connections, open until the transfer ends.
    held: Vec<BoxStream>,
    /// The answer awaited from the slave (order or commit).
    response: Option<tokio::sync::oneshot::Receiver<Response>>,
    /// What the data connection carried, as far as seen.
    facts: DataFacts,
    /// An event to feed the machine after the one at hand (the slave's
    /// answer that came with the relay's end).
    stashed: Option<Event>,
}

enum StepResult {
    Event(Event),
    Finish(TransferOutcome, bool),
}

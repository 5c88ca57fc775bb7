//! The replicator: a task that makes the copies replication wants. Every
//! 250 ms, and whenever a copy ends, it marks slaves away longer than `slave_lost_after_ms` as lost
//! (their files join the repair queue), asks the core for the next copies
//! (`replica::next_jobs`: fewest copies first, per-slave limits), and runs
//! each as a copy machine (`dftpd_core::master::copy`) on the two slaves'
//! links: the target listens for the source only, the source sends the
//! version (paced at `rate_per_slave`), the target receives it into a
//! temporary file, the master checks size and CRC-32 against the record and
//! logs the commit on the target, whose acknowledgement makes it a holder.
//!
//! It also makes the synchronous copies of uploads (`sync_copies`,
//! [`sync_copies`]): from the upload waiting for its commit on the
//! receiving slave, unpaced, before the commit decision.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch, Notify};

use super::copy::{CopyEvent, CopyMachine, CopyStep, End};
use super::db::SlaveId;
use super::fleet;
use super::hub::{Shared, SlaveLink};
use super::registry::SlaveState;
use super::replica::{self, CopyJob};
use crate::env::Env;
use crate::link::{DataTls, FileVersion, MasterMsg, Request, Response, TransferFailure};
use crate::proto::VPath;

/// How often the repair queue is looked at.
const TICK: Duration = Duration::from_millis(250);
/// Copies started per tick at most.
const START_PER_TICK: usize = 16;

pub async fn run(env: Env, hub: Shared, mut shutdown: watch::Receiver<bool>) {
    let mut lost: BTreeSet<u16> = BTreeSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A copy that ends frees a job slot on two slaves: the next copies start
    // then, not at the next tick (which capped repair at a few files per
    // tick and slave).
    let ended = Arc::new(Notify::new());
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            _ = ended.notified() => {}
        }
        let jobs = {
            let mut st = hub.lock();
            st.now_ms = hub.mono_ms();
            let now = st.now_ms;
            fleet::sample_rates(&mut st, now);
            lost.retain(|id| {
                st.slaves
                    .get(*id)
                    .is_some_and(|s| s.state == SlaveState::Offline)
            });
            for id in replica::newly_lost(&st, &lost) {
                lost.insert(id);
                tracing::warn!(
                    slave = %st.slaves.name(id),
                    after_ms = st.config.replication.slave_lost_after_ms,
                    "slave lost: its copies no longer count, repair begins"
                );
                replica::note_all(&mut st, Some(id));
            }
            let jobs = replica::next_jobs(&mut st, START_PER_TICK);
            // The repair queue's changes; nobody waits for them.
            let _ = hub.flush(&mut st);
            jobs
        };
        for job in jobs {
            let (env, hub, ended) = (env.clone(), hub.clone(), ended.clone());
            tokio::spawn(async move {
                copy(env, hub, job).await;
                ended.notify_one();
            });
        }
    }
}

/// The two ends of a copy as the driver holds them.
struct Ends {
    from: SlaveLink,
    to: SlaveLink,
    xfer_from: u64,
    xfer_to: u64,
    from_ip: std::net::IpAddr,
    tls: Option<Vec<u8>>,
    from_answer: Option<oneshot::Receiver<Response>>,
    to_answer: Option<oneshot::Receiver<Response>>,
}

impl Ends {
    fn link(&self, end: End) -> (&SlaveLink, u64) {
        match end {
            End::From => (&self.from, self.xfer_from),
            End::To => (&self.to, self.xfer_to),
        }
    }
}

/// Runs one background copy to its end.
async fn copy(env: Env, hub: Shared, job: CopyJob) {
    let result = drive(&env, &hub, &job, None).await;
    let mut st = hub.lock();
    match result {
        Ok(_) => tracing::info!(
            path = %job.path,
            from = %st.slaves.name(job.from),
            to = %st.slaves.name(job.to),
            bytes = job.version.size,
            "copy made"
        ),
        Err(why) => {
            let wait_ms = replica::failed(&mut st, job.id).unwrap_or(0);
            tracing::info!(path = %job.path, to = %st.slaves.name(job.to), %why, wait_ms, "copy failed; will retry");
        }
    }
    let _ = hub.flush(&mut st);
}

/// The upload a synchronous copy is made from: waiting for its commit on
/// `slave` as transfer `xfer`, received as `size` bytes with `crc32`.
#[derive(Debug, Clone)]
pub struct SyncSource {
    pub slave: SlaveId,
    pub xfer: u64,
    pub path: VPath,
    pub size: u64,
    pub crc32: u32,
}

/// Makes `want` synchronous copies of an upload waiting for its commit
/// (`sync_copies`), one target after another (a failed one is replaced by
/// the next candidate). Returns each copy's (slave, transfer), held
/// uncommitted for the commit decision; on failure the copies made are
/// released (their slaves discard them) and nothing is committed.
pub async fn sync_copies(
    env: &Env,
    hub: &Shared,
    src: SyncSource,
    want: u32,
) -> Result<Vec<(SlaveId, u64)>, String> {
    let mut made: Vec<(SlaveId, u64)> = Vec::new();
    let mut tried = BTreeSet::from([src.slave]);
    let mut last_error = String::new();
    while made.len() < want as usize {
        let (target, store) = {
            let st = hub.lock();
            let mut holders = vec![src.slave];
            holders.extend(made.iter().map(|(s, _)| *s));
            (
                replica::sync_target(&st, &holders, &tried, src.size),
                st.store_id,
            )
        };
        let Some(to) = target else {
            release(hub, &made);
            let why = format!(
                "{} of {want} made, no other slave can take one{}",
                made.len(),
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!("; last failure: {last_error}")
                }
            );
            return Err(why);
        };
        tried.insert(to);
        let job = CopyJob {
            id: 0,
            path: src.path.clone(),
            version: FileVersion {
                store,
                gen: 0,
                size: src.size,
                crc32: Some(src.crc32),
            },
            from: src.slave,
            to,
        };
        match drive(env, hub, &job, Some(src.xfer)).await {
            Ok(xfer) => made.push((to, xfer)),
            Err(why) => {
                tracing::info!(path = %src.path, to = %hub.lock().slaves.name(to), %why, "synchronous copy failed; trying another slave");
                last_error = why;
            }
        }
    }
    Ok(made)
}

/// Synchronous copies that will not be committed: their slaves discard
/// them (or drop them when their wait runs out).
fn release(hub: &Shared, made: &[(SlaveId, u64)]) {
    let st = hub.lock();
    for &(slave, xfer) in made {
        if let Some(link) = st.link(slave) {
            link.send(MasterMsg::Abort { xfer });
        }
    }
}

/// Performs one copy machine to its end: a background copy (`pending`
/// None: checked against the record and committed) or a synchronous copy
/// of the source's upload waiting as transfer `pending` (held
/// uncommitted). `Ok`: the target's transfer id.
async fn drive(
    env: &Env,
    hub: &Shared,
    job: &CopyJob,
    pending: Option<u64>,
) -> Result<u64, String> {
    let prepared = {
        let mut st = hub.lock();
        let rate = match (pending, st.config.replication.rate_per_slave) {
            (Some(_), _) | (None, 0) => None,
            (None, r) => Some(r),
        };
        let links = (st.link(job.from), st.link(job.to));
        let from_ip = st.slaves.get(job.from).and_then(|s| s.data_ip);
        // TLS between the slaves when the link uses TLS (and the target
        // has a certificate): the source is the TLS client.
        let tls = st.config.link_tls
            && hub.tls().is_some()
            && st.slaves.get(job.to).is_some_and(|s| s.data_tls);
        match (links, from_ip) {
            ((Some(from), Some(to)), Some(from_ip)) => {
                let ends = Ends {
                    from,
                    to,
                    xfer_from: st.next_id(),
                    xfer_to: st.next_id(),
                    from_ip,
                    tls: tls.then(|| {
                        let mut t = vec![0u8; 16];
                        env.rng_fill(&mut t);
                        t
                    }),
                    from_answer: None,
                    to_answer: None,
                };
                Some((ends, rate))
            }
            _ => None,
        }
    };
    let Some((mut ends, rate)) = prepared else {
        return Err("a slave of the copy is not connected".into());
    };
    let timeout = hub.lock().config.data_timeout();
    let mut m = match pending {
        Some(x) => CopyMachine::synchronous(job.clone(), x),
        None => CopyMachine::new(job.clone(), rate),
    };
    let mut steps = m.start();
    loop {
        let mut event = None;
        for step in steps {
            match step {
                CopyStep::Listen => {
                    let rid = hub.lock().next_id();
                    let rx = ends.to.request(
                        rid,
                        Request::Listen {
                            xfer: ends.xfer_to,
                            accept_from: Some(ends.from_ip),
                        },
                    );
                    event = Some(match tokio::time::timeout(timeout, rx).await {
                        Ok(Ok(Response::Listening { addr }))
                            if hub.lock().slaves.is_own_address(job.to, addr) =>
                        {
                            CopyEvent::Listening(addr)
                        }
                        Ok(Ok(r)) => CopyEvent::Answer(End::To, r),
                        Ok(Err(_)) => CopyEvent::Lost(End::To),
                        Err(_) => CopyEvent::TimedOut,
                    });
                }
                CopyStep::Order { end, order, data } => {
                    let rid = hub.lock().next_id();
                    let tls = ends.tls.clone().map(|token| DataTls {
                        session_token: token,
                        client: end == End::From,
                    });
                    let (link, xfer) = ends.link(end);
                    let rx = link.request(
                        rid,
                        Request::Transfer {
                            xfer,
                            order,
                            data,
                            tls,
                        },
                    );
                    match end {
                        End::From => ends.from_answer = Some(rx),
                        End::To => ends.to_answer = Some(rx),
                    }
                }
                CopyStep::Decide { size, crc32 } => {
                    let mut st = hub.lock();
                    let decided = replica::received(&mut st, job, ends.xfer_to, size, crc32);
                    let _ = hub.flush(&mut st);
                    event = Some(CopyEvent::Decided(decided));
                }
                CopyStep::AwaitCommit { seq } => {
                    let rx = hub.await_commit(job.to, seq);
                    let wait = hub.lock().config.commit_wait();
                    event = Some(match tokio::time::timeout(wait, rx).await {
                        Ok(Ok(outcome)) => CopyEvent::CommitAck(outcome),
                        _ => {
                            hub.forget_commit(job.to, seq);
                            CopyEvent::TimedOut
                        }
                    });
                }
                CopyStep::Abort(end) => {
                    let (link, xfer) = ends.link(end);
                    link.send(MasterMsg::Abort { xfer });
                }
                CopyStep::Finish(result) => return result.map(|()| ends.xfer_to),
            }
        }
        let event = match event {
            Some(e) => e,
            None => answers(&mut ends).await,
        };
        if let CopyEvent::Answer(
            End::From,
            Response::Failed(TransferFailure::FileNotFound | TransferFailure::NotCurrent),
        ) = &event
        {
            // The source's copy is missing or damaged: it stops counting
            // (the next try takes another holder).
            if pending.is_none() {
                let mut st = hub.lock();
                replica::refused(&mut st, job.from, &job.path, Some(&job.version));
                let _ = hub.flush(&mut st);
            }
        }
        steps = m.on(event);
    }
}

/// The next answer from either end of a running copy.
async fn answers(ends: &mut Ends) -> CopyEvent {
    let pending = || std::future::pending::<Result<Response, oneshot::error::RecvError>>();
    tokio::select! {
        biased;
        r = async { match ends.to_answer.as_mut() { Some(rx) => rx.await, None => pending().await } } => {
            ends.to_answer = None;
            match r {
                Ok(r) => CopyEvent::Answer(End::To, r),
                Err(_) => CopyEvent::Lost(End::To),
            }
        }
        r = async { match ends.from_answer.as_mut() { Some(rx) => rx.await, None => pending().await } } => {
            ends.from_answer = None;
            match r {
                Ok(r) => CopyEvent::Answer(End::From, r),
                Err(_) => CopyEvent::Lost(End::From),
            }
        }
    }
}

//! The replicator: a task that makes the copies replication wants. Every
//! 250 ms it marks slaves away longer than `slave_lost_after_ms` as lost
//! (their files join the repair queue), asks the core for the next copies
//! (`replica::next_jobs`: fewest copies first, per-slave limits), and runs
//! each as a copy machine (`dftpd_core::master::copy`) on the two slaves'
//! links: the target listens for the source only, the source sends the
//! version (paced at `rate_per_slave`), the target receives it into a
//! temporary file, the master checks size and CRC-32 against the record and
//! logs the commit on the target, whose acknowledgement makes it a holder.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use super::copy::{CopyEvent, CopyMachine, CopyStep, End};
use super::fleet;
use super::hub::{Shared, SlaveLink};
use super::registry::SlaveState;
use super::replica::{self, CopyJob};
use crate::env::Env;
use crate::link::{DataTls, MasterMsg, Request, Response};

/// How often the repair queue is looked at.
const TICK: Duration = Duration::from_millis(250);
/// Copies started per tick at most.
const START_PER_TICK: usize = 16;

pub async fn run(env: Env, hub: Shared, mut shutdown: watch::Receiver<bool>) {
    let mut lost: BTreeSet<u16> = BTreeSet::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
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
            tokio::spawn(copy(env.clone(), hub.clone(), job));
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

/// Runs one copy to its end.
async fn copy(env: Env, hub: Shared, job: CopyJob) {
    let prepared = {
        let mut st = hub.lock();
        let rate = st.config.replication.rate_per_slave;
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
                Some((ends, (rate > 0).then_some(rate)))
            }
            _ => {
                replica::failed(&mut st, job.id);
                None
            }
        }
    };
    let Some((mut ends, rate)) = prepared else {
        return;
    };
    let timeout = hub.lock().config.data_timeout();
    let mut m = CopyMachine::new(job.clone(), rate);
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
                    let decided = replica::received(&mut st, &job, ends.xfer_to, size, crc32);
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
                CopyStep::Finish(result) => {
                    let mut st = hub.lock();
                    match result {
                        Ok(()) => tracing::info!(
                            path = %job.path,
                            from = %st.slaves.name(job.from),
                            to = %st.slaves.name(job.to),
                            bytes = job.version.size,
                            "copy made"
                        ),
                        Err(why) => {
                            tracing::info!(path = %job.path, to = %st.slaves.name(job.to), %why, "copy failed; will retry");
                            replica::failed(&mut st, job.id);
                        }
                    }
                    let _ = hub.flush(&mut st);
                    return;
                }
            }
        }
        let event = match event {
            Some(e) => e,
            None => answers(&mut ends).await,
        };
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

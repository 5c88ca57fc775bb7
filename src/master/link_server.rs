//! The master's side of the slave links: accept, authenticate (mutual
//! HMAC challenge, within `handshake_timeout_ms`), register, resend the
//! slave's operation log, feed its file list to the core's remerge
//! (`dftpd_core::master::remerge`), take its acknowledgements (`Applied`),
//! route replies to waiting sessions, and declare the slave offline on link
//! loss or `heartbeat_misses` silent intervals.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::db::SlaveId;
use super::hub::{lock, Outbound, PendingReplies, SlaveLink};
use super::registry::valid_slave_name;
use super::remerge::{remerge_chunk, remerge_sweep, verified, Verify};
use super::Shared;
use super::{commit, remerge, replica};
use crate::env::{next_connection, BoxStream, Env, NetListener};
use crate::link::{
    self, auth, LinkError, MasterMsg, OpOutcome, Request, Response, SlaveMsg, PROTOCOL_VERSION,
};
use crate::proto::VPath;

/// The TLS handshake of a `link_tls` link (before the slave's own
/// handshake deadline applies).
const TLS_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Link connections that have not proved the link key yet, at most, at
/// once (TLS and HMAC handshakes): a further one is closed at once. Each
/// holds at most a [`link::HANDSHAKE_MAX_FRAME`] frame, for at most
/// `handshake_timeout_ms`.
pub const MAX_UNAUTHENTICATED_LINKS: usize = 32;

/// Counts the link connections still in their handshake.
#[derive(Clone)]
struct Unauthenticated {
    permits: Arc<tokio::sync::Semaphore>,
    /// Whether the last connection was refused: one warning per burst.
    refusing: Arc<std::sync::atomic::AtomicBool>,
}

impl Unauthenticated {
    fn new(max: usize) -> Self {
        Unauthenticated {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            refusing: Arc::default(),
        }
    }

    /// A place for one more handshake, held until it is dropped; `None`
    /// (and a warning, once per burst) when all are taken.
    fn admit(&self, peer: SocketAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        use std::sync::atomic::Ordering;
        match self.permits.clone().try_acquire_owned() {
            Ok(p) => {
                self.refusing.store(false, Ordering::Relaxed);
                Some(p)
            }
            Err(_) => {
                if !self.refusing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %peer,
                        max = MAX_UNAUTHENTICATED_LINKS,
                        "link connection refused: too many unauthenticated link connections (further ones are refused without a log line until one is accepted)"
                    );
                }
                None
            }
        }
    }
}

pub async fn accept_links(
    env: Env,
    state: Shared,
    listener: Box<dyn NetListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    let pending = Unauthenticated::new(MAX_UNAUTHENTICATED_LINKS);
    while let Some((stream, peer)) = next_connection(listener.as_ref(), &mut shutdown).await {
        let Some(permit) = pending.admit(peer) else {
            drop(stream);
            continue;
        };
        let span = tracing::info_span!("link", %peer);
        tokio::spawn(serve_link(env.clone(), state.clone(), stream, peer, permit).instrument(span));
    }
}

async fn handshake(
    env: &Env,
    state: &Shared,
    stream: &mut BoxStream,
    peer: SocketAddr,
) -> Result<Hello, LinkError> {
    // Before the key is proved, frames are handshake-sized.
    let hello: SlaveMsg = link::read_frame_max(stream, link::HANDSHAKE_MAX_FRAME).await?;
    let SlaveMsg::Hello {
        version,
        name,
        nonce: slave_nonce,
        data_ip,
        data_tls,
        zone,
    } = hello
    else {
        return Err(LinkError::Handshake("expected Hello".into()));
    };
    if version != PROTOCOL_VERSION {
        let reason =
            format!("protocol version {version} not supported (master speaks {PROTOCOL_VERSION})");
        let _ = link::write_frame(
            stream,
            &MasterMsg::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(LinkError::Handshake(reason));
    }
    if !valid_slave_name(&name) {
        let _ = link::write_frame(
            stream,
            &MasterMsg::Refused {
                reason: "invalid slave name".into(),
            },
        )
        .await;
        return Err(LinkError::Handshake("invalid slave name".into()));
    }
    let key = state.lock().config.link_key.clone();
    let mut master_nonce = [0u8; 32];
    env.rng_fill(&mut master_nonce);
    link::write_frame(
        stream,
        &MasterMsg::Challenge {
            nonce: master_nonce,
        },
    )
    .await?;
    let SlaveMsg::Auth { mac } = link::read_frame_max(stream, link::HANDSHAKE_MAX_FRAME).await?
    else {
        return Err(LinkError::Handshake("expected Auth".into()));
    };
    if !auth::verify_slave(key.as_bytes(), &slave_nonce, &master_nonce, &name, &mac) {
        tracing::warn!(%peer, slave = %name, "slave refused: wrong link key");
        let _ = link::write_frame(
            stream,
            &MasterMsg::Refused {
                reason: "authentication failed".into(),
            },
        )
        .await;
        return Err(LinkError::Handshake("authentication failed".into()));
    }
    // Who it is: a slave this master knows (config, SITE ADDSLAVE, or one
    // it has seen), not removed, and not connected already.
    if let Err(reason) = admit(state, &name) {
        tracing::warn!(%peer, slave = %name, %reason, "slave refused");
        let _ = link::write_frame(
            stream,
            &MasterMsg::Refused {
                reason: reason.clone(),
            },
        )
        .await;
        return Err(LinkError::Handshake(reason));
    }
    let proof = auth::master_proof(key.as_bytes(), &slave_nonce, &master_nonce, &name);
    Ok(Hello {
        name,
        data_ip,
        proof,
        data_tls,
        zone: zone.filter(|z| valid_slave_name(z)),
    })
}

/// What an authenticated slave said of itself.
struct Hello {
    name: String,
    data_ip: std::net::IpAddr,
    proof: Vec<u8>,
    data_tls: bool,
    zone: Option<String>,
}

/// Whether slave `name` may join: known (or new slaves accepted), not
/// removed with SITE DELSLAVE, and not already connected (a second
/// connection with the name of an online slave is refused: the first one
/// stays).
fn admit(state: &Shared, name: &str) -> Result<(), String> {
    let st = state.lock();
    let known = st.slaves.knows(name);
    if let Some(id) = known {
        if st.slaves.get(id).is_some_and(|s| s.removed) {
            return Err(format!(
                "slave {name} was removed (SITE DELSLAVE); add it again with SITE ADDSLAVE {name}"
            ));
        }
        if st.links.contains_key(&id) {
            return Err(format!(
                "a slave named {name} is already connected; each slave needs its own name"
            ));
        }
        return Ok(());
    }
    if st.config.accept_new_slaves || st.config.slaves.iter().any(|s| s == name) {
        return Ok(());
    }
    Err(format!(
        "unknown slave name {name}: add it to `slaves` in the master's config, or SITE ADDSLAVE {name}"
    ))
}

/// With `link_tls` the link is TLS from its first byte (slaves pin the
/// master's certificate, `master_cert_pin`); the HMAC handshake then runs
/// inside. Returns the stream and whether it is encrypted, or `None` when
/// the TLS handshake failed (logged with the peer's address: a slave
/// without the pin, or pinned to another certificate).
async fn secure_link(
    state: &Shared,
    stream: BoxStream,
    peer: SocketAddr,
) -> Option<(BoxStream, bool)> {
    let tls = {
        let st = state.lock();
        if st.config.link_tls {
            state.tls()
        } else {
            None
        }
    };
    let Some(tls) = tls else {
        return Some((stream, false));
    };
    match crate::tls::accept(&tls.server, stream, None, TLS_HANDSHAKE_TIMEOUT).await {
        Ok(s) => Some((Box::new(s), true)),
        Err(e) => {
            tracing::warn!(
                %peer,
                error = %e,
                "slave refused: link TLS handshake failed (the slave must set master_cert_pin to this master's certificate)"
            );
            None
        }
    }
}

async fn serve_link(
    env: Env,
    state: Shared,
    stream: BoxStream,
    peer: SocketAddr,
    unauthenticated: tokio::sync::OwnedSemaphorePermit,
) {
    let Some((mut stream, encrypted)) = secure_link(&state, stream, peer).await else {
        return;
    };
    // The handshake has its own deadline, separate from the heartbeat
    // bound: a slave with a long round trip must still be able to rejoin.
    let limit = state.lock().config.handshake_timeout();
    let hello = tokio::time::timeout(limit, handshake(&env, &state, &mut stream, peer)).await;
    drop(unauthenticated);
    let hello = match hello {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "link handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, ms = limit.as_millis() as u64, "link handshake timed out");
            return;
        }
    };
    let Hello {
        name,
        data_ip,
        proof,
        data_tls,
        zone,
    } = hello;
    let (tx, rx) = mpsc::unbounded_channel();
    let pending: PendingReplies = Arc::new(Mutex::new(Default::default()));
    let (id, epoch, log_upto, interval, deadline, closed) = {
        let mut st = state.lock();
        // The ticket key opens every TLS session of the cluster: only over
        // an encrypted link.
        let ticket_key = match &state.tls() {
            Some(t) if encrypted => Some(t.ticket_key.clone()),
            _ => None,
        };
        let id = st.slaves.id_for(&name);
        let epoch = st.slaves.next_epoch();
        let interval = st.config.heartbeat_interval();
        let deadline = st.config.heartbeat_deadline();
        let data_timeout_ms = st.config.data_timeout_ms;
        let link = SlaveLink::new(epoch, tx.clone(), pending.clone());
        let closed = link.closed();
        if st.links.contains_key(&id) {
            // Admitted a moment ago; another link with its name won the race.
            tracing::warn!(slave = %name, %peer, "slave refused: a slave of that name is already connected");
            return;
        }
        st.links.insert(id, link);
        // The whole operation log goes out again, after the Welcome (sent
        // here, under the lock, so no log frame can overtake it); the slave
        // applies it before it lists its files.
        let log_upto = st.slaves.link_up(id);
        if let Some(info) = st.slaves.get_mut(id) {
            info.data_ip = Some(data_ip);
            // The simulator's FTPS at the FTP level: no slave has a
            // certificate.
            info.data_tls = data_tls || state.tls_in_clear();
            info.zone = zone;
            info.offline_since_ms = None;
        }
        let _ = tx.send(Outbound::One(MasterMsg::Welcome {
            proof,
            ticket_key,
            master_instance: state.instance,
            log_upto,
            data_timeout_ms,
        }));
        // A new slave's id must be stored before any file names it; the
        // store applies batches in order, so no need to wait here.
        let _ = state.flush(&mut st);
        (id, epoch, log_upto, interval, deadline, closed)
    };
    tracing::info!(slave = %name, %peer, log_upto, link_tls = encrypted, data_tls, "slave authenticated, remerging");
    let (reader, writer) = tokio::io::split(stream);
    let writer_task = tokio::spawn(write_loop(writer, rx, interval));
    let end = tokio::select! {
        end = read_loop(&state, reader, id, &name, &pending, deadline) => end,
        reason = closed => reason.to_string(),
    };
    writer_task.abort();
    {
        let mut st = state.lock();
        if st.links.get(&id).is_some_and(|l| l.epoch == epoch) {
            st.links.remove(&id);
            let now = state.mono_ms();
            st.now_ms = now;
            st.slaves.link_down(id, now);
        }
    }
    // Wake every session waiting on this link: their transfers failed.
    lock(&pending).clear();
    tracing::warn!(slave = %name, reason = %end, "slave offline");
}

/// Waits for a slave's reading of a copy the remerge could not match by
/// its version, and hands it to the core (`remerge::verified`). A link lost
/// first drops it: the next remerge asks again.
async fn verify_copy(
    state: Shared,
    id: SlaveId,
    check: Verify,
    rx: tokio::sync::oneshot::Receiver<Response>,
) {
    let read = match rx.await {
        Ok(Response::Checksum { size, mtime, crc32 }) => Some((size, mtime, crc32)),
        Ok(_) => None,
        Err(_) => return,
    };
    let mut st = state.lock();
    verified(&mut st, id, &check, read);
    let _ = state.flush(&mut st);
}

async fn write_loop(
    mut w: tokio::io::WriteHalf<BoxStream>,
    mut rx: mpsc::UnboundedReceiver<Outbound>,
    interval: std::time::Duration,
) {
    link::write_frames(&mut w, &mut rx, None, interval, || async {
        Outbound::One(MasterMsg::Heartbeat)
    })
    .await;
    let _ = w.shutdown().await;
}

async fn read_loop(
    state: &Shared,
    r: tokio::io::ReadHalf<BoxStream>,
    id: SlaveId,
    name: &str,
    pending: &PendingReplies,
    deadline: std::time::Duration,
) -> String {
    let mut seen: BTreeSet<VPath> = BTreeSet::new();
    let mut remerged = 0u64;
    let mut r = tokio::io::BufReader::with_capacity(link::READ_BUFFER, r);
    loop {
        let msg: SlaveMsg = match tokio::time::timeout(deadline, link::read_frame(&mut r)).await {
            Err(_) => return format!("no heartbeat for {} ms", deadline.as_millis()),
            Ok(Err(e)) => return e.to_string(),
            Ok(Ok(m)) => m,
        };
        match msg {
            SlaveMsg::Remerge { files, last } => {
                let durable = {
                    let mut st = state.lock();
                    remerged += files.len() as u64;
                    let checks = remerge_chunk(&mut st, id, files, &mut seen);
                    for check in checks {
                        let (rid, link) = (st.next_id(), st.link(id));
                        if let Some(link) = link {
                            let rx = link.request(
                                rid,
                                Request::Checksum {
                                    path: check.path.clone(),
                                },
                            );
                            tokio::spawn(verify_copy(state.clone(), id, check, rx));
                        }
                    }
                    state.flush(&mut st)
                };
                if let Some(m) = state.metrics() {
                    m.remerge_progress(name, remerged);
                }
                // Waiting for the store here paces the slave's remerge to
                // what the store can take (the lock is not held).
                if let Some(d) = durable {
                    if let Err(e) = d.wait().await {
                        tracing::error!(slave = %name, error = %e, "remerge not saved");
                    }
                }
                if last {
                    // Sweep in slices, yielding between them: a slave with
                    // millions of files must not stall other sessions.
                    let mut cursor = None;
                    let mut dropped = 0;
                    loop {
                        let (n, next, durable) = {
                            let mut st = state.lock();
                            let (n, next) = remerge_sweep(&mut st, id, &seen, cursor.as_ref());
                            (n, next, state.flush(&mut st))
                        };
                        dropped += n;
                        if let Some(d) = durable {
                            if let Err(e) = d.wait().await {
                                tracing::error!(slave = %name, error = %e, "remerge not saved");
                            }
                        }
                        match next {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                        tokio::task::yield_now().await;
                    }
                    seen.clear();
                    let durable = {
                        let mut st = state.lock();
                        st.slaves.remerged(id);
                        state.flush(&mut st)
                    };
                    if let Some(d) = durable {
                        let _ = d.wait().await;
                    }
                    tracing::info!(slave = %name, files = remerged, dropped, "remerge done, slave online");
                    remerged = 0;
                }
            }
            SlaveMsg::Listeners { ready } => {
                let mut st = state.lock();
                let (own, foreign): (Vec<_>, Vec<_>) = ready
                    .into_iter()
                    .partition(|(_, a)| st.slaves.is_own_address(id, *a));
                if !foreign.is_empty() {
                    tracing::warn!(slave = %name, count = foreign.len(), "listeners on a foreign address ignored");
                }
                if let Some(info) = st.slaves.get_mut(id) {
                    // Bounded: a slave cannot make the master hoard addresses.
                    for l in own {
                        if info.ready_listeners.len() < 256 {
                            info.ready_listeners.push_back(l);
                        }
                    }
                }
            }
            SlaveMsg::Status { free, transfers: _ } => {
                let mut st = state.lock();
                if let Some(info) = st.slaves.get_mut(id) {
                    info.free = free;
                }
            }
            SlaveMsg::Reply { rid, response } => {
                let waiter = lock(pending).remove(&rid);
                if let Some(w) = waiter {
                    let _ = w.send(response);
                }
            }
            SlaveMsg::Applied { outcomes } => {
                let mut st = state.lock();
                for (seq, outcome) in &outcomes {
                    if let OpOutcome::Failed(why) = outcome {
                        tracing::warn!(slave = %name, seq, %why, "operation failed on the slave");
                    }
                    remerge::applied(&mut st, id, *seq, outcome);
                    st.slaves.acked(id, *seq);
                    commit::acked(&mut st, id, *seq, outcome);
                    replica::acked(&mut st, id, *seq, outcome);
                    state.commit_acked(id, *seq, outcome);
                }
                // Acknowledgements only shrink the stored log: nobody
                // waits for this commit.
                let _ = state.flush(&mut st);
            }
            SlaveMsg::Corrupt {
                path,
                version,
                found,
            } => {
                let mut st = state.lock();
                let expected = version.crc32.unwrap_or(0);
                match replica::corrupt(&mut st, id, &path, &version) {
                    replica::Corruption::Repairing => tracing::error!(
                        slave = %name, %path, expected = format_args!("{expected:08x}"), found = format_args!("{found:08x}"),
                        "corrupt copy (scrub): dropped, repaired from a good copy"
                    ),
                    replica::Corruption::OnlyCopy => tracing::error!(
                        slave = %name, %path, expected = format_args!("{expected:08x}"), found = format_args!("{found:08x}"),
                        "corrupt copy (scrub) and no other copy: kept, restore it from a backup"
                    ),
                    replica::Corruption::NotCurrent => tracing::info!(
                        slave = %name, %path, "corrupt copy of an old version: removed"
                    ),
                }
                let _ = state.flush(&mut st);
            }
            SlaveMsg::Resumed {
                check,
                token,
                resumed,
            } => {
                // A PROT P data connection resumed another control
                // connection's TLS session: a sibling's (same user, same
                // address) may serve. Answered off this loop: a sibling
                // still logging in is waited for.
                let (link, limit) = {
                    let st = state.lock();
                    (st.link(id), st.config.data_timeout())
                };
                if let Some(link) = link {
                    let hub = state.clone();
                    tokio::spawn(async move {
                        let sibling = hub.resumed_sibling(&token, &resumed, limit).await;
                        link.send(MasterMsg::Resumed { check, sibling });
                    });
                }
            }
            SlaveMsg::Hello { .. } | SlaveMsg::Auth { .. } => {
                return "protocol error: handshake message after handshake".into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unauthenticated_link_connections_are_bounded() {
        let pending = Unauthenticated::new(2);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let a = pending.admit(peer).expect("first");
        let _b = pending.admit(peer).expect("second");
        assert!(pending.admit(peer).is_none(), "a third one is refused");
        drop(a);
        assert!(
            pending.admit(peer).is_some(),
            "a place freed is taken again"
        );
    }

    #[test]
    fn slave_names() {
        assert!(valid_slave_name("slave-1.eu_2"));
        assert!(!valid_slave_name(""));
        assert!(!valid_slave_name("a b"));
        assert!(!valid_slave_name(&"x".repeat(65)));
    }
}

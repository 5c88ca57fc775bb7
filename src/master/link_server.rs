//! The master's side of the slave links: accept, authenticate (mutual
//! HMAC challenge), register, reconcile the slave's file list with the
//! database (remerge), route replies to waiting sessions, and declare the
//! slave offline on link loss or `heartbeat_misses` silent intervals.
//!
//! Remerge rules (also in ARCHITECTURE.md):
//! - a file the database lacks is added, held by that slave;
//! - a file with the recorded size gains that slave as a holder;
//! - a size conflict keeps the recorded size when another slave holds the
//!   file (this copy is not used, and logged); when no other slave holds it,
//!   the slave's size is taken (logged);
//! - a file recorded on that slave but not reported loses it as a holder,
//!   and leaves the database when no holder is left;
//! - renames and deletes made while it was offline were sent in `Welcome`
//!   and applied by the slave before it listed its files.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::db::{FileMeta, Holders, Node, SlaveId};
use super::hub::{lock, PendingReplies, SlaveLink};
use super::registry::SlaveState;
use super::{MasterState, Shared};
use crate::env::{next_connection, BoxStream, Env, NetListener};
use crate::link::{self, auth, LinkError, MasterMsg, RemoteFile, SlaveMsg, PROTOCOL_VERSION};
use crate::proto::VPath;

const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub async fn accept_links(
    env: Env,
    state: Shared,
    listener: Box<dyn NetListener>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer)) = next_connection(listener.as_ref(), &mut shutdown).await {
        let span = tracing::info_span!("link", %peer);
        tokio::spawn(serve_link(env.clone(), state.clone(), stream, peer).instrument(span));
    }
}

/// Valid slave names: short, printable, no spaces (they appear in replies).
pub fn valid_slave_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

async fn handshake(
    env: &Env,
    state: &Shared,
    stream: &mut BoxStream,
    peer: SocketAddr,
) -> Result<(String, std::net::IpAddr, Vec<u8>, bool), LinkError> {
    let hello: SlaveMsg = link::read_frame(stream).await?;
    let SlaveMsg::Hello {
        version,
        name,
        nonce: slave_nonce,
        data_ip,
        data_tls,
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
    let SlaveMsg::Auth { mac } = link::read_frame(stream).await? else {
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
    let proof = auth::master_proof(key.as_bytes(), &slave_nonce, &master_nonce, &name);
    Ok((name, data_ip, proof, data_tls))
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
    match crate::tls::accept(&tls.server, stream, None, HANDSHAKE_TIMEOUT).await {
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

async fn serve_link(env: Env, state: Shared, stream: BoxStream, peer: SocketAddr) {
    let Some((mut stream, encrypted)) = secure_link(&state, stream, peer).await else {
        return;
    };
    let (name, data_ip, proof, data_tls) = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake(&env, &state, &mut stream, peer),
    )
    .await
    {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "link handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "link handshake timed out");
            return;
        }
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let pending: PendingReplies = Arc::new(Mutex::new(Default::default()));
    let (id, epoch, ops, ops_upto, interval, deadline, ticket_key) = {
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
        let link = SlaveLink::new(epoch, tx.clone(), pending.clone());
        if st.links.insert(id, link).is_some() {
            tracing::warn!(slave = %name, "slave reconnected; dropping its previous link");
        }
        let Some(info) = st.slaves.get_mut(id) else {
            return;
        };
        info.ready_listeners.clear();
        info.state = SlaveState::Remerging;
        info.data_ip = Some(data_ip);
        // The simulator's FTPS at the FTP level: no slave has a certificate.
        info.data_tls = data_tls || state.tls_in_clear();
        // Kept queued (and stored) until this remerge completes: the slave
        // applies them before listing its files, so a finished remerge
        // proves they were applied; a link lost before that resends them.
        let ops: Vec<_> = info.pending_ops.iter().map(|(_, op)| op.clone()).collect();
        let ops_upto = info.pending_ops.last().map(|(seq, _)| *seq);
        // A new slave's id must be stored before any file names it; the
        // store applies batches in order, so no need to wait here.
        let _ = state.flush(&mut st);
        (id, epoch, ops, ops_upto, interval, deadline, ticket_key)
    };
    tracing::info!(slave = %name, %peer, queued_ops = ops.len(), link_tls = encrypted, data_tls, "slave authenticated, remerging");
    let (reader, writer) = tokio::io::split(stream);
    let _ = tx.send(MasterMsg::Welcome {
        proof,
        pending: ops,
        ticket_key,
    });
    let writer_task = tokio::spawn(write_loop(writer, rx, interval));
    let end = read_loop(&state, reader, id, &name, &pending, deadline, ops_upto).await;
    writer_task.abort();
    {
        let mut st = state.lock();
        if st.links.get(&id).is_some_and(|l| l.epoch == epoch) {
            st.links.remove(&id);
            if let Some(info) = st.slaves.get_mut(id) {
                info.state = SlaveState::Offline;
                info.ready_listeners.clear();
            }
        }
    }
    // Wake every session waiting on this link: their transfers failed.
    lock(&pending).clear();
    tracing::warn!(slave = %name, reason = %end, "slave offline");
}

async fn write_loop(
    mut w: tokio::io::WriteHalf<BoxStream>,
    mut rx: mpsc::UnboundedReceiver<MasterMsg>,
    interval: std::time::Duration,
) {
    link::write_frames(&mut w, &mut rx, interval, || async { MasterMsg::Heartbeat }).await;
    let _ = w.shutdown().await;
}

async fn read_loop(
    state: &Shared,
    mut r: tokio::io::ReadHalf<BoxStream>,
    id: SlaveId,
    name: &str,
    pending: &PendingReplies,
    deadline: std::time::Duration,
    mut ops_upto: Option<u64>,
) -> String {
    let mut seen: BTreeSet<VPath> = BTreeSet::new();
    let mut remerged = 0u64;
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
                    remerge_chunk(&mut st, id, files, &mut seen);
                    state.flush(&mut st)
                };
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
                        if let Some(upto) = ops_upto.take() {
                            st.slaves.ops_applied(id, upto);
                        }
                        if let Some(info) = st.slaves.get_mut(id) {
                            info.state = SlaveState::Online;
                        }
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
            SlaveMsg::Hello { .. } | SlaveMsg::Auth { .. } => {
                return "protocol error: handshake message after handshake".into()
            }
        }
    }
}

/// Reconciles one chunk of a slave's file list (see the module rules).
pub fn remerge_chunk(
    st: &mut MasterState,
    id: SlaveId,
    files: Vec<RemoteFile>,
    seen: &mut BTreeSet<VPath>,
) {
    let slave = st.slaves.name(id).to_string();
    for f in files {
        // (A slave's temporary directory cannot arrive here: no `VPath`
        // names it.)
        if f.path.is_root() {
            continue;
        }
        match st.db.get(&f.path) {
            Some(Node::File(meta)) if meta.size == f.size => {
                let _ = st.db.add_holder(&f.path, id);
            }
            Some(Node::File(meta)) => {
                let others = meta.holders.iter().any(|&h| h != id);
                if others {
                    tracing::warn!(%slave, path = %f.path, recorded = meta.size, found = f.size, "size conflict: keeping the recorded size, this copy is not used");
                    if meta.holders.contains(&id) {
                        let _ = st.db.remove_holder(&f.path, id);
                    }
                    continue;
                }
                tracing::warn!(%slave, path = %f.path, recorded = meta.size, found = f.size, "size conflict: only copy, taking the slave's size");
                let mut m = meta.clone();
                m.size = f.size;
                m.crc32 = None;
                m.holders = Holders::from_slice(&[id]);
                let _ = st.db.put_file(&f.path, m);
            }
            Some(Node::Dir(_)) => {
                tracing::warn!(%slave, path = %f.path, "slave has a file where the database has a directory; ignored");
                continue;
            }
            None => {
                if let Some(parent) = f.path.parent() {
                    if st.db.mkdir_all(&parent, "dftpd", f.mtime).is_err() {
                        tracing::warn!(%slave, path = %f.path, "slave has a file below a database file; ignored");
                        continue;
                    }
                }
                let _ = st.db.put_file(
                    &f.path,
                    FileMeta {
                        size: f.size,
                        mtime: f.mtime,
                        owner: 0,
                        group: 0,
                        crc32: None,
                        holders: Holders::from_slice(&[id]),
                    },
                );
            }
        }
        seen.insert(f.path);
    }
}

/// Files visited per slice of the end-of-remerge sweep: the lock is
/// released between slices, so sessions keep getting replies.
pub const SWEEP_SLICE: usize = 20_000;

/// One slice of the end-of-remerge sweep: drops `id` from files it no
/// longer reported, visiting at most `SWEEP_SLICE` files after `cursor`.
/// Returns how many were dropped and where to continue (`None`: done).
pub fn remerge_sweep(
    st: &mut MasterState,
    id: SlaveId,
    seen: &BTreeSet<VPath>,
    cursor: Option<&VPath>,
) -> (u64, Option<VPath>) {
    let (held, next) = st.db.scan_held(id, cursor, SWEEP_SLICE);
    let mut dropped = 0;
    for p in held.iter().filter(|p| !seen.contains(*p)) {
        let _ = st.db.remove_holder(p, id);
        dropped += 1;
    }
    (dropped, next)
}

/// The whole sweep in one go (tests, tools).
pub fn remerge_finish(st: &mut MasterState, id: SlaveId, seen: &BTreeSet<VPath>) -> u64 {
    let mut cursor = None;
    let mut total = 0;
    loop {
        let (n, next) = remerge_sweep(st, id, seen, cursor.as_ref());
        total += n;
        match next {
            Some(c) => cursor = Some(c),
            None => return total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MasterConfig;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn rf(path: &str, size: u64) -> RemoteFile {
        RemoteFile {
            path: p(path),
            size,
            mtime: 7,
        }
    }

    #[test]
    fn remerge_adds_reconciles_and_drops() {
        let mut st = MasterState::new(Arc::new(MasterConfig::default()));
        let a = st.slaves.id_for("a");
        let b = st.slaves.id_for("b");
        let mut seen = BTreeSet::new();
        remerge_chunk(&mut st, a, vec![rf("/x/1", 10), rf("/x/2", 20)], &mut seen);
        remerge_finish(&mut st, a, &seen);
        assert_eq!(st.db.file_count(), 2);
        assert!(st.db.dir(&p("/x")).is_ok());
        // b has /x/1 with the same size, /x/2 with another size.
        let mut seen = BTreeSet::new();
        remerge_chunk(&mut st, b, vec![rf("/x/1", 10), rf("/x/2", 99)], &mut seen);
        remerge_finish(&mut st, b, &seen);
        assert_eq!(st.db.file(&p("/x/1")).unwrap().holders.as_slice(), &[a, b]);
        assert_eq!(st.db.file(&p("/x/2")).unwrap().holders.as_slice(), &[a]);
        assert_eq!(st.db.file(&p("/x/2")).unwrap().size, 20);
        // a comes back having lost /x/2 (its only copy) and /x/1.
        let mut seen = BTreeSet::new();
        remerge_chunk(&mut st, a, vec![], &mut seen);
        assert_eq!(remerge_finish(&mut st, a, &seen), 2);
        assert!(st.db.get(&p("/x/2")).is_none());
        assert_eq!(st.db.file(&p("/x/1")).unwrap().holders.as_slice(), &[b]);
        // Only copy with another size: the slave's size is taken.
        let mut seen = BTreeSet::new();
        remerge_chunk(&mut st, b, vec![rf("/x/1", 11)], &mut seen);
        assert_eq!(st.db.file(&p("/x/1")).unwrap().size, 11);
    }

    #[test]
    fn slave_names() {
        assert!(valid_slave_name("slave-1.eu_2"));
        assert!(!valid_slave_name(""));
        assert!(!valid_slave_name("a b"));
        assert!(!valid_slave_name(&"x".repeat(65)));
    }
}

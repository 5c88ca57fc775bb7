//! One transfer on a slave: the data connection (a passive listener the
//! client connects to, or a connection out to the client for PORT), TLS
//! for `PROT P`, then sending a file or receiving an upload. A received
//! upload is handed to the commit waiting room ([`super::commit`]); the
//! master's decision arrives through the slave's operation log.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use super::storage::{self, StorageError};
use super::{reply, Ctx, XferCmd};
use crate::env::{accept_from, BoxStream, NetListener};
use crate::link::{DataTls, Response, SlaveMsg, TransferFailure, TransferOrder};
use crate::tls::SessionTie;

pub(super) async fn passive_task(
    ctx: Arc<Ctx>,
    xfer: u64,
    listener: Box<dyn NetListener>,
    early: Option<BoxStream>,
    from: Option<IpAddr>,
    mut cmds: mpsc::UnboundedReceiver<XferCmd>,
    give_back: Option<super::ready::GiveBack>,
) {
    let timeout = ctx.data_timeout;
    let mut order: Option<(u64, TransferOrder, Option<DataTls>)> = None;
    // The client may connect before or after the order arrives (before:
    // `early`, taken in at the claim, see `super::ready`).
    let stream = if let Some(s) = early {
        Ok(s)
    } else {
        let accept = accept_from(listener.as_ref(), from, timeout);
        tokio::pin!(accept);
        loop {
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    Some(XferCmd::Order { rid, order: o, tls }) => order = Some((rid, o, tls)),
                    None => {
                        // Aborted (or the link is gone): an order already
                        // given still gets its answer, or the master would
                        // wait on it.
                        if let Some((rid, _, _)) = order {
                            reply(&ctx, rid, Response::Failed(TransferFailure::Aborted));
                        }
                        return;
                    }
                },
                s = &mut accept => break s,
            }
        }
    };
    // A pool's listener goes back to it (and is announced again); the
    // transfer no longer needs it either way.
    match give_back {
        Some(pool) => drop(pool.send(listener)),
        None => drop(listener),
    }
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(xfer, error = %e, "no data connection");
            let rid = match order {
                Some((rid, _, _)) => rid,
                None => match cmds.recv().await {
                    Some(XferCmd::Order { rid, .. }) => rid,
                    None => return,
                },
            };
            reply(
                &ctx,
                rid,
                Response::Failed(TransferFailure::NoDataConnection(e.to_string())),
            );
            return;
        }
    };
    let (rid, order, tls) = match order {
        Some(o) => o,
        None => match cmds.recv().await {
            Some(XferCmd::Order { rid, order, tls }) => (rid, order, tls),
            None => return,
        },
    };
    execute(ctx, xfer, stream, rid, order, tls, cmds).await;
}

pub(super) async fn active_task(
    ctx: Arc<Ctx>,
    xfer: u64,
    addr: SocketAddr,
    rid: u64,
    order: TransferOrder,
    tls: Option<DataTls>,
    cmds: mpsc::UnboundedReceiver<XferCmd>,
) {
    let timeout = ctx.data_timeout;
    // From the data address: the peer (another slave's listener for a
    // copy, an FXP server) may accept only that address.
    let connect = ctx.env.net.connect_from(ctx.config.data_ip, addr);
    let stream = match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            reply(
                &ctx,
                rid,
                Response::Failed(TransferFailure::NoDataConnection(format!(
                    "cannot connect to {addr}: {e}"
                ))),
            );
            return;
        }
        Err(_) => {
            reply(
                &ctx,
                rid,
                Response::Failed(TransferFailure::NoDataConnection(format!(
                    "connect to {addr} timed out"
                ))),
            );
            return;
        }
    };
    execute(ctx, xfer, stream, rid, order, tls, cmds).await;
}

/// The master's answers to [`SlaveMsg::Resumed`], by check number. A link
/// lost drops the waiting senders with its `Ctx`: no answer, refused.
#[derive(Default)]
pub(super) struct ResumedChecks(Mutex<(u64, BTreeMap<u64, oneshot::Sender<bool>>)>);

impl ResumedChecks {
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, BTreeMap<u64, oneshot::Sender<bool>>)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the master whether a data connection of the control session
    /// tagged `token` may serve after resuming the session tagged
    /// `resumed`; `false` without an answer within `limit`.
    async fn ask(ctx: &Ctx, token: &[u8], resumed: &[u8], limit: std::time::Duration) -> bool {
        /// Forgets the question however the wait ends (an abort drops it).
        struct Asked<'a>(&'a ResumedChecks, u64);
        impl Drop for Asked<'_> {
            fn drop(&mut self) {
                self.0.lock().1.remove(&self.1);
            }
        }
        let (tx, rx) = oneshot::channel();
        let check = {
            let mut checks = ctx.resumed.lock();
            checks.0 += 1;
            let check = checks.0;
            checks.1.insert(check, tx);
            check
        };
        let _asked = Asked(&ctx.resumed, check);
        let _ = ctx.out.send(SlaveMsg::Resumed {
            check,
            token: token.to_vec(),
            resumed: resumed.to_vec(),
        });
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(true)))
    }

    /// The master's answer to `check` (one nobody waits for any more is
    /// dropped).
    pub(super) fn answer(&self, check: u64, sibling: bool) {
        let waiter = self.lock().1.remove(&check);
        if let Some(tx) = waiter {
            let _ = tx.send(sibling);
        }
    }
}

/// The TLS server side of a `PROT P` data connection (the FTP client is
/// the TLS client, also when this slave dialled out for PORT). A client
/// that resumes a TLS 1.3 session of another control connection is
/// refused, unless the master says it is a sibling's: the same logged-in
/// user's control connection from the same address (rclone shares one
/// session cache between its connections). Otherwise it holds someone
/// else's ticket (RFC 4217 §10.2).
async fn protect(
    ctx: &Ctx,
    stream: BoxStream,
    tls: &DataTls,
) -> Result<BoxStream, TransferFailure> {
    if tls.client {
        // FXP: the peer is another FTP server, the TLS server here. Its
        // certificate cannot be vouched for (see `tls::fxp_client_config`).
        let config = crate::tls::fxp_client_config()
            .map_err(|e| TransferFailure::NoDataConnection(e.to_string()))?;
        let name = match stream.peer_addr() {
            Ok(a) => rustls::pki_types::ServerName::IpAddress(a.ip().into()),
            Err(_) => rustls::pki_types::ServerName::try_from("fxp-peer")
                .map_err(|e| TransferFailure::NoDataConnection(e.to_string()))?,
        };
        let secured = crate::tls::connect(&config, name, stream, ctx.data_timeout)
            .await
            .map_err(|e| {
                TransferFailure::NoDataConnection(format!("FXP TLS handshake failed: {e}"))
            })?;
        tracing::debug!("FXP data connection secured (TLS client side)");
        return Ok(Box::new(secured));
    }
    let Some(config) = &ctx.data_tls else {
        return Err(TransferFailure::NoDataConnection(format!(
            "slave {} has no TLS certificate (tls_cert, tls_key); use PROT C",
            ctx.config.name
        )));
    };
    let secured = crate::tls::accept(config, stream, Some(&tls.session_token), ctx.data_timeout)
        .await
        .map_err(|e| TransferFailure::NoDataConnection(format!("TLS handshake failed: {e}")))?;
    let conn = secured.get_ref().1;
    let tie = SessionTie::of(conn, &tls.session_token);
    if tie == SessionTie::Foreign {
        let resumed = conn.received_resumption_data().unwrap_or_default();
        let (token, limit) = (&tls.session_token, ctx.data_timeout);
        if !ResumedChecks::ask(ctx, token, resumed, limit).await {
            tracing::warn!(
                "data connection refused: it resumed the TLS session of another control \
                 connection (not one of this user's from this address)"
            );
            return Err(TransferFailure::NoDataConnection(
                "the TLS session of the data connection belongs to another control connection"
                    .into(),
            ));
        }
        tracing::debug!("data connection secured: it resumed a sibling's TLS session");
    } else {
        tracing::debug!(?tie, "data connection secured");
    }
    Ok(Box::new(secured))
}

pub(super) fn failure(e: StorageError) -> TransferFailure {
    match e {
        StorageError::NotFound => TransferFailure::FileNotFound,
        StorageError::NotCurrent => TransferFailure::NotCurrent,
        StorageError::Disk(e) => TransferFailure::Storage(e.to_string()),
        StorageError::Network(e) => TransferFailure::Network(e.to_string()),
    }
}

/// Runs the order on an open data connection (after its TLS handshake for
/// `PROT P`). An abort (the master drops our command channel, or the link
/// goes) cancels it at once.
async fn execute(
    ctx: Arc<Ctx>,
    xfer: u64,
    stream: BoxStream,
    rid: u64,
    order: TransferOrder,
    tls: Option<DataTls>,
    mut cmds: mpsc::UnboundedReceiver<XferCmd>,
) {
    let protected = tls.is_some();
    let stream = match tls {
        None => stream,
        Some(tls) => {
            let secured = tokio::select! {
                biased;
                _ = wait_closed(&mut cmds) => {
                    reply(&ctx, rid, Response::Failed(TransferFailure::Aborted));
                    return;
                }
                s = protect(&ctx, stream, &tls) => s,
            };
            match secured {
                Ok(s) => s,
                Err(f) => {
                    tracing::info!(failure = ?f, "no protected data connection");
                    reply(&ctx, rid, Response::Failed(f));
                    return;
                }
            }
        }
    };
    // What crossed the data connection, for a failure's report.
    let moved = Arc::new(AtomicU64::new(0));
    let mut stream: BoxStream = Box::new(Counted {
        inner: stream,
        moved: moved.clone(),
    });
    let failed = |e: StorageError| {
        let bytes = storage::sent_before(&e)
            .unwrap_or(0)
            .max(moved.load(Ordering::Relaxed));
        Response::FailedAfter {
            failure: failure(e),
            bytes,
        }
    };
    let aborted = || Response::FailedAfter {
        failure: TransferFailure::Aborted,
        bytes: moved.load(Ordering::Relaxed),
    };
    let started = tokio::time::Instant::now();
    match order {
        TransferOrder::Send {
            path,
            offset,
            version,
            rate,
            pending,
        } => {
            if let Some(rate) = rate {
                // A copy to another slave: paced, so client transfers keep
                // priority.
                stream = Box::new(crate::env::Paced::new(stream, rate));
            }
            // A synchronous copy sends an upload still waiting for its
            // commit here (it waits a full grace period again).
            let lent = pending.map(|x| ctx.awaiting.lend(x));
            let result = tokio::select! {
                biased;
                _ = wait_closed(&mut cmds) => {
                    reply(&ctx, rid, aborted());
                    return;
                }
                r = async {
                    match &lent {
                        None => ctx.storage.send(&path, offset, version.as_ref(), &mut stream, ctx.data_timeout).await,
                        Some(Some(up)) => ctx.storage.send_upload(up, &mut stream, ctx.data_timeout).await,
                        Some(None) => Err(StorageError::NotFound),
                    }
                } => r,
            };
            if let Some(x) = pending {
                ctx.awaiting.lend(x);
            }
            match result {
                Ok(bytes) => {
                    tracing::debug!(%path, bytes, ms = started.elapsed().as_millis() as u64, "sent");
                    reply(&ctx, rid, Response::Sent { bytes });
                }
                Err(e) => {
                    tracing::info!(%path, error = %e, "send failed");
                    reply(&ctx, rid, failed(e));
                }
            }
        }
        TransferOrder::Receive { path, offset, base } => {
            let result = tokio::select! {
                biased;
                _ = wait_closed(&mut cmds) => None,
                r = ctx.storage.receive(&path, offset, base.as_ref(), xfer, &mut stream, ctx.data_timeout) => Some(r),
            };
            let up = match result {
                // Aborted mid-way: the dropped future removed its temporary
                // file (or the thread still creating it will).
                None => {
                    let _ = ctx.storage.cleanup_one(xfer).await;
                    reply(&ctx, rid, aborted());
                    return;
                }
                Some(Err(e)) => {
                    tracing::info!(%path, error = %e, "receive failed");
                    reply(&ctx, rid, failed(e));
                    return;
                }
                Some(Ok(up)) => up,
            };
            // Into the waiting room at once, before anything else awaits:
            // the master's Abort (a client that closed its data connection
            // and sent ABOR) may already be on its way, and it finds the
            // upload there, or leaves word that discards it on arrival. The
            // master decides; its commit arrives as an entry of this
            // slave's operation log, possibly after a reconnect. Until then
            // the upload waits (bounded by `commit_grace_ms`).
            let (bytes, size, crc32) = (up.bytes, up.size, up.crc32);
            ctx.awaiting.hold(xfer, up, ctx.storage.clone());
            if protected {
                // The client ended with close_notify (else the read above
                // failed: a TLS upload cut without it counts as truncated).
                // Answer in kind, so clients that wait for ours (Python's
                // `unwrap()`) finish cleanly.
                let _ = storage::on_data(ctx.data_timeout, stream.shutdown()).await;
            }
            drop(stream);
            reply(&ctx, rid, Response::Received { bytes, size, crc32 });
            tracing::debug!(%path, ms = started.elapsed().as_millis() as u64, "received, awaiting commit");
        }
    }
}

/// Resolves when the master aborts this transfer (drops the channel).
async fn wait_closed(cmds: &mut mpsc::UnboundedReceiver<XferCmd>) {
    while cmds.recv().await.is_some() {}
}

/// A data connection that counts the bytes read from and written to it
/// (the real socket stays reachable for `sendfile(2)`, whose bytes the
/// storage reports in its error, see `storage::sent_before`).
struct Counted {
    inner: BoxStream,
    moved: Arc<AtomicU64>,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.moved.fetch_add(n, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.moved.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl crate::env::NetStream for Counted {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn as_tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        self.inner.as_tcp()
    }
}

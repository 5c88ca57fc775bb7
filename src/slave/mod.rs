//! A slave: connects to the master, proves the shared key (and checks the
//! master's proof), applies changes queued while it was away, reports its
//! files (remerge), then executes transfer orders and heartbeats until the
//! link drops — and reconnects with jittered exponential backoff.
//!
//! Each transfer is its own task holding its data listener or stream; link
//! loss aborts them all (an upload in flight is discarded, never kept as
//! complete).

pub mod mem;
pub mod storage;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::SlaveConfig;
use crate::env::{accept_from, bind_in_range, BoxStream, Env, NetListener};
use crate::link::{
    self, auth, DataConn, DataTls, FileOp, LinkError, MasterMsg, Request, Response, SlaveMsg,
    TransferFailure, TransferOrder, PROTOCOL_VERSION, REMERGE_CHUNK,
};
use crate::tls::{CertPair, SessionTie, SharedTicketer, TicketKey, TlsError};
use storage::{Storage, StorageError};

/// FTPS on a slave (README, "FTPS"): its certificate for `PROT P` data
/// connections and the pinned client for a TLS link. Loaded once at start;
/// the simulator never sets either.
#[derive(Clone, Default)]
pub struct SlaveTls {
    cert: Option<CertPair>,
    link: Option<Arc<rustls::ClientConfig>>,
}

impl SlaveTls {
    /// Reads `tls_cert`/`tls_key` and `master_cert_pin` (files are read
    /// here, once).
    pub fn load(config: &SlaveConfig) -> Result<SlaveTls, TlsError> {
        let cert = match (&config.tls_cert, &config.tls_key) {
            (Some(c), Some(k)) => Some(CertPair::load_pem(c, k)?),
            _ => None,
        };
        let link = match &config.master_cert_pin {
            Some(pin) => Some(crate::tls::pinned_fingerprint_client_config(
                crate::tls::load_pin(pin)?,
            )?),
            None => None,
        };
        Ok(SlaveTls { cert, link })
    }

    /// The data connections' server configuration for one link session:
    /// with the master's ticket key (sent only over a TLS link) a client
    /// resumes here the session it made with the master; without it, the
    /// slave seals its own tickets and clients make a full handshake.
    fn data_config(&self, master_key: Option<&TicketKey>) -> Option<Arc<rustls::ServerConfig>> {
        let cert = self.cert.as_ref()?;
        let built = (|| {
            let own;
            let key = match master_key {
                Some(k) => k,
                None => {
                    own = crate::tls::new_ticket_key()?;
                    &own
                }
            };
            let ticketer = SharedTicketer::new(key, crate::tls::DEFAULT_TICKET_LIFETIME)?;
            let base = crate::tls::server_config(cert, Arc::new(ticketer))?;
            Ok::<_, TlsError>(crate::tls::data_server_config(&base))
        })();
        match built {
            Ok(c) => {
                if master_key.is_some() {
                    tracing::info!("data TLS ready: the master's ticket key came over the TLS link, data connections resume control sessions");
                } else {
                    tracing::info!("data TLS ready without the master's ticket key (link not encrypted): data connections make full TLS handshakes");
                }
                Some(c)
            }
            Err(e) => {
                tracing::error!(error = %e, "data TLS unavailable");
                None
            }
        }
    }
}

/// Runs a slave until `shutdown` turns true, with the TLS settings of its
/// config (a certificate that does not load is logged and TLS left off:
/// use [`SlaveTls::load`] and [`run_with_tls`] to fail at start instead).
pub async fn run(
    env: Env,
    config: SlaveConfig,
    storage: Arc<dyn Storage>,
    shutdown: watch::Receiver<bool>,
    ready: Option<mpsc::UnboundedSender<String>>,
) {
    let tls = SlaveTls::load(&config).unwrap_or_else(|e| {
        tracing::error!(error = %e, "TLS settings unusable; running without TLS");
        SlaveTls::default()
    });
    run_with_tls(env, config, tls, storage, shutdown, ready).await
}

/// Runs a slave until `shutdown` turns true.
pub async fn run_with_tls(
    env: Env,
    config: SlaveConfig,
    tls: SlaveTls,
    storage: Arc<dyn Storage>,
    mut shutdown: watch::Receiver<bool>,
    ready: Option<mpsc::UnboundedSender<String>>,
) {
    let config = Arc::new(config);
    let min = Duration::from_millis(config.reconnect_min_ms.max(1));
    let max = Duration::from_millis(config.reconnect_max_ms.max(config.reconnect_min_ms.max(1)));
    let mut backoff = min;
    loop {
        let span = tracing::info_span!("slave", name = %config.name);
        let result = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            r = connect_and_serve(&env, &config, &tls, &storage, ready.as_ref()).instrument(span) => r,
        };
        match result {
            Ok(()) => backoff = min,
            Err(e) => tracing::warn!(slave = %config.name, error = %e, "link to master lost"),
        }
        // Jitter from the seeded RNG: a restarted master is not hit by every
        // slave in the same millisecond.
        let jitter = env.rng_range(0, backoff.as_millis() as u64 / 2);
        let wait = backoff + Duration::from_millis(jitter);
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        backoff = (backoff * 2).min(max);
    }
}

/// Commands to one transfer task.
enum XferCmd {
    Order {
        rid: u64,
        order: TransferOrder,
        tls: Option<DataTls>,
    },
    Commit {
        rid: u64,
    },
}

struct Ctx {
    env: Env,
    config: Arc<SlaveConfig>,
    storage: Arc<dyn Storage>,
    out: mpsc::UnboundedSender<SlaveMsg>,
    /// `PROT P` data connections' TLS server; `None`: no certificate.
    data_tls: Option<Arc<rustls::ServerConfig>>,
}

async fn write_within<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &SlaveMsg,
    limit: Duration,
) -> Result<(), LinkError> {
    tokio::time::timeout(limit, link::write_frame(w, msg))
        .await
        .map_err(|_| {
            LinkError::Silent(format!("a frame not written in {} ms", limit.as_millis()))
        })?
}

async fn connect_and_serve(
    env: &Env,
    config: &Arc<SlaveConfig>,
    tls: &SlaveTls,
    storage: &Arc<dyn Storage>,
    ready: Option<&mpsc::UnboundedSender<String>>,
) -> Result<(), LinkError> {
    // Connect, authenticate and receive `Welcome` within the heartbeat
    // deadline: a handshake cut by a partition would otherwise wait forever
    // (the simulator's `partition-during-remerge` scenario found this).
    let limit = config.heartbeat_deadline().max(Duration::from_secs(1));
    let (stream, pending, ticket_key) = tokio::time::timeout(limit, handshake(env, config, tls))
        .await
        .map_err(|_| LinkError::Handshake("no answer from the master in time".into()))??;
    let data_tls = tls.data_config(ticket_key.as_ref());
    serve(env, config, storage, ready, stream, pending, data_tls).await
}

/// With `master_cert_pin`, the link is TLS from its first byte and the
/// master must present exactly the pinned certificate.
async fn link_stream(
    env: &Env,
    config: &SlaveConfig,
    tls: &SlaveTls,
) -> Result<BoxStream, LinkError> {
    let stream = env.net.connect(config.master).await?;
    let Some(client) = &tls.link else {
        return Ok(stream);
    };
    let name = rustls::pki_types::ServerName::IpAddress(config.master.ip().into());
    match crate::tls::connect(client, name, stream, Duration::from_secs(10)).await {
        Ok(s) => Ok(Box::new(s)),
        Err(e) => {
            tracing::error!(master = %config.master, error = %e, "link TLS handshake failed (is master_cert_pin this master's certificate, and link_tls on at the master?)");
            Err(LinkError::Handshake(format!("link TLS: {e}")))
        }
    }
}

async fn handshake(
    env: &Env,
    config: &Arc<SlaveConfig>,
    tls: &SlaveTls,
) -> Result<(BoxStream, Vec<FileOp>, Option<TicketKey>), LinkError> {
    let mut stream = link_stream(env, config, tls).await?;
    let mut nonce = [0u8; 32];
    env.rng_fill(&mut nonce);
    link::write_frame(
        &mut stream,
        &SlaveMsg::Hello {
            version: PROTOCOL_VERSION,
            name: config.name.clone(),
            nonce,
            data_ip: config.advertised_ip(),
            data_tls: tls.cert.is_some(),
        },
    )
    .await?;
    let key = config.link_key.as_bytes();
    let challenge = tokio::time::timeout(
        Duration::from_secs(10),
        link::read_frame::<_, MasterMsg>(&mut stream),
    )
    .await
    .map_err(|_| LinkError::Handshake("master did not answer".into()))??;
    let master_nonce = match challenge {
        MasterMsg::Challenge { nonce: mn } => mn,
        MasterMsg::Refused { reason } => {
            return Err(LinkError::Handshake(format!("refused: {reason}")))
        }
        _ => return Err(LinkError::Handshake("expected Challenge".into())),
    };
    link::write_frame(
        &mut stream,
        &SlaveMsg::Auth {
            mac: auth::slave_proof(key, &nonce, &master_nonce, &config.name),
        },
    )
    .await?;
    let (pending, ticket_key) = match link::read_frame::<_, MasterMsg>(&mut stream).await? {
        MasterMsg::Welcome {
            proof,
            pending,
            ticket_key,
        } => {
            if !auth::verify_master(key, &nonce, &master_nonce, &config.name, &proof) {
                tracing::error!(master = %config.master, "the master could not prove the link key; not trusting it");
                return Err(LinkError::Handshake(
                    "the master could not prove the link key".into(),
                ));
            }
            if ticket_key.is_some() && tls.link.is_none() {
                // Our master never does this; a key that crossed a plain
                // link is not a secret any more.
                tracing::warn!("the master sent its ticket key over a plain link; ignored");
                (pending, None)
            } else {
                (pending, ticket_key)
            }
        }
        MasterMsg::Refused { reason } => {
            return Err(LinkError::Handshake(format!("refused: {reason}")))
        }
        _ => return Err(LinkError::Handshake("expected Welcome".into())),
    };
    Ok((stream, pending, ticket_key))
}

async fn serve(
    env: &Env,
    config: &Arc<SlaveConfig>,
    storage: &Arc<dyn Storage>,
    ready: Option<&mpsc::UnboundedSender<String>>,
    stream: BoxStream,
    pending: Vec<FileOp>,
    data_tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), LinkError> {
    tracing::info!(ops = pending.len(), "authenticated to master");
    for op in &pending {
        if let Err(e) = storage.apply(op).await {
            tracing::warn!(?op, error = %e, "queued change failed");
        }
    }
    match storage.cleanup_temp().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed leftover partial uploads"),
        Err(e) => tracing::warn!(error = %e, "cannot clean temporary files"),
    }
    let files = storage.list().await?;
    let count = files.len();
    let free = storage.free_space().await.unwrap_or(0);
    let (reader, mut writer) = tokio::io::split(stream);
    // Remerge in chunks: the master reconciles chunk by chunk and keeps
    // serving sessions in between.
    // Each frame must make progress within the heartbeat deadline: a link
    // partitioned mid-remerge is then given up and retried, not waited on.
    let deadline = config.heartbeat_deadline();
    let mut chunks = files.chunks(REMERGE_CHUNK).peekable();
    if chunks.peek().is_none() {
        let msg = SlaveMsg::Remerge {
            files: vec![],
            last: true,
        };
        write_within(&mut writer, &msg, deadline).await?;
    }
    while let Some(chunk) = chunks.next() {
        let msg = SlaveMsg::Remerge {
            files: chunk.to_vec(),
            last: chunks.peek().is_none(),
        };
        write_within(&mut writer, &msg, deadline).await?;
    }
    let msg = SlaveMsg::Status { free, transfers: 0 };
    write_within(&mut writer, &msg, deadline).await?;
    tracing::info!(files = count, free, "remerge sent");
    if let Some(r) = ready {
        let _ = r.send(config.name.clone());
    }
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Ctx {
        env: env.clone(),
        config: config.clone(),
        storage: storage.clone(),
        out: out_tx,
        data_tls,
    });
    let writer_task = tokio::spawn(write_loop(writer, out_rx, ctx.clone()));
    let result = read_loop(ctx, reader).await;
    writer_task.abort();
    result
}

async fn write_loop(
    mut w: tokio::io::WriteHalf<BoxStream>,
    mut rx: mpsc::UnboundedReceiver<SlaveMsg>,
    ctx: Arc<Ctx>,
) {
    let interval = ctx.config.heartbeat_interval();
    link::write_frames(&mut w, &mut rx, interval, || async {
        SlaveMsg::Status {
            free: ctx.storage.free_space().await.unwrap_or(0),
            transfers: 0,
        }
    })
    .await;
}

/// Passive listeners opened ahead of any PASV, so the master can answer
/// PASV without asking (the "hidden hop" of the fast path).
struct ListenerPool {
    ready: BTreeMap<u64, Box<dyn NetListener>>,
    next_token: u64,
}

impl ListenerPool {
    /// Opens listeners until `want` are ready; reports the new ones.
    async fn fill(&mut self, ctx: &Ctx, want: usize) {
        let range = ctx.config.passive_range().unwrap_or((0, 0));
        let mut fresh = Vec::new();
        while self.ready.len() < want {
            let Ok(l) = bind_in_range(&ctx.env, ctx.config.data_ip, range).await else {
                break;
            };
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            self.next_token += 1;
            fresh.push((
                self.next_token,
                SocketAddr::new(ctx.config.advertised_ip(), port),
            ));
            self.ready.insert(self.next_token, l);
        }
        if !fresh.is_empty() {
            let _ = ctx.out.send(SlaveMsg::Listeners { ready: fresh });
        }
    }
}

async fn read_loop(ctx: Arc<Ctx>, mut r: tokio::io::ReadHalf<BoxStream>) -> Result<(), LinkError> {
    let deadline = ctx.config.heartbeat_deadline();
    // Transfer tasks by id; dropping a sender aborts its task.
    let mut xfers: BTreeMap<u64, mpsc::UnboundedSender<XferCmd>> = BTreeMap::new();
    let mut pool = ListenerPool {
        ready: BTreeMap::new(),
        next_token: 0,
    };
    let pool_size = ctx.config.passive_pool;
    pool.fill(&ctx, pool_size).await;
    loop {
        let msg: MasterMsg = match tokio::time::timeout(deadline, link::read_frame(&mut r)).await {
            Err(_) => {
                return Err(LinkError::Silent(format!(
                    "no heartbeat from master for {} ms",
                    deadline.as_millis()
                )))
            }
            Ok(r) => r?,
        };
        xfers.retain(|_, tx| !tx.is_closed());
        match msg {
            MasterMsg::Heartbeat => {}
            MasterMsg::Ops(ops) => {
                for op in ops {
                    if let Err(e) = ctx.storage.apply(&op).await {
                        tracing::warn!(?op, error = %e, "change failed");
                    }
                }
            }
            MasterMsg::Abort { xfer } => {
                xfers.remove(&xfer);
            }
            MasterMsg::Claim {
                token,
                xfer,
                accept_from,
            } => {
                if let Some(listener) = pool.ready.remove(&token) {
                    let (tx, rx) = mpsc::unbounded_channel();
                    xfers.insert(xfer, tx);
                    let span = tracing::info_span!("transfer", xfer);
                    tokio::spawn(
                        passive_task(ctx.clone(), xfer, listener, accept_from, rx).instrument(span),
                    );
                }
                pool.fill(&ctx, pool_size).await;
            }
            MasterMsg::Request { rid, request } => match request {
                Request::Listen { xfer, accept_from } => {
                    let range = ctx.config.passive_range().unwrap_or((0, 0));
                    match bind_in_range(&ctx.env, ctx.config.data_ip, range).await {
                        Ok(listener) => {
                            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                            let addr = SocketAddr::new(ctx.config.advertised_ip(), port);
                            let (tx, rx) = mpsc::unbounded_channel();
                            xfers.insert(xfer, tx);
                            let _ = ctx.out.send(SlaveMsg::Reply {
                                rid,
                                response: Response::Listening { addr },
                            });
                            let span = tracing::info_span!("transfer", xfer);
                            tokio::spawn(
                                passive_task(ctx.clone(), xfer, listener, accept_from, rx)
                                    .instrument(span),
                            );
                        }
                        Err(e) => reply(
                            &ctx,
                            rid,
                            Response::Failed(TransferFailure::NoDataConnection(format!(
                                "cannot listen: {e}"
                            ))),
                        ),
                    }
                }
                Request::Transfer {
                    xfer,
                    order,
                    data,
                    tls,
                } => match data {
                    DataConn::Passive => match xfers.get(&xfer) {
                        Some(tx) => {
                            let _ = tx.send(XferCmd::Order { rid, order, tls });
                        }
                        None => reply(
                            &ctx,
                            rid,
                            Response::Failed(TransferFailure::NoDataConnection(
                                "no listener for this transfer".into(),
                            )),
                        ),
                    },
                    DataConn::Active(addr) => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        xfers.insert(xfer, tx);
                        let span = tracing::info_span!("transfer", xfer);
                        tokio::spawn(
                            active_task(ctx.clone(), xfer, addr, rid, order, tls, rx)
                                .instrument(span),
                        );
                    }
                },
                Request::Commit { xfer } => match xfers.get(&xfer) {
                    Some(tx) => {
                        let _ = tx.send(XferCmd::Commit { rid });
                    }
                    None => reply(&ctx, rid, Response::Failed(TransferFailure::Aborted)),
                },
            },
            MasterMsg::Challenge { .. } | MasterMsg::Welcome { .. } | MasterMsg::Refused { .. } => {
                return Err(LinkError::Handshake(
                    "handshake message after handshake".into(),
                ));
            }
        }
    }
}

fn reply(ctx: &Ctx, rid: u64, response: Response) {
    let _ = ctx.out.send(SlaveMsg::Reply { rid, response });
}

async fn passive_task(
    ctx: Arc<Ctx>,
    xfer: u64,
    listener: Box<dyn NetListener>,
    from: Option<IpAddr>,
    mut cmds: mpsc::UnboundedReceiver<XferCmd>,
) {
    let timeout = ctx.config.data_timeout();
    let mut order: Option<(u64, TransferOrder, Option<DataTls>)> = None;
    // The client may connect before or after the order arrives.
    let stream = {
        let accept = accept_from(listener.as_ref(), from, timeout);
        tokio::pin!(accept);
        loop {
            tokio::select! {
                biased;
                c = cmds.recv() => match c {
                    Some(XferCmd::Order { rid, order: o, tls }) => order = Some((rid, o, tls)),
                    Some(XferCmd::Commit { rid }) => reply(&ctx, rid, Response::Failed(TransferFailure::Aborted)),
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
    drop(listener);
    let stream = match stream {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(xfer, error = %e, "no data connection");
            let rid = match order {
                Some((rid, _, _)) => rid,
                None => match cmds.recv().await {
                    Some(XferCmd::Order { rid, .. }) | Some(XferCmd::Commit { rid }) => rid,
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
            Some(XferCmd::Commit { rid }) => {
                reply(&ctx, rid, Response::Failed(TransferFailure::Aborted));
                return;
            }
            None => return,
        },
    };
    execute(ctx, xfer, stream, rid, order, tls, cmds).await;
}

async fn active_task(
    ctx: Arc<Ctx>,
    xfer: u64,
    addr: SocketAddr,
    rid: u64,
    order: TransferOrder,
    tls: Option<DataTls>,
    cmds: mpsc::UnboundedReceiver<XferCmd>,
) {
    let timeout = ctx.config.data_timeout();
    let stream = match tokio::time::timeout(timeout, ctx.env.net.connect(addr)).await {
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

/// The TLS server side of a `PROT P` data connection (the FTP client is
/// the TLS client, also when this slave dialled out for PORT). A client
/// that resumes a TLS 1.3 session of another control connection is
/// refused: it holds someone else's ticket (RFC 4217 §10.2).
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
        let secured = crate::tls::connect(&config, name, stream, ctx.config.data_timeout())
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
    let secured = crate::tls::accept(
        config,
        stream,
        Some(&tls.session_token),
        ctx.config.data_timeout(),
    )
    .await
    .map_err(|e| TransferFailure::NoDataConnection(format!("TLS handshake failed: {e}")))?;
    let tie = SessionTie::of(secured.get_ref().1, &tls.session_token);
    if tie == SessionTie::Foreign {
        tracing::warn!(
            "data connection refused: it resumed the TLS session of another control connection"
        );
        return Err(TransferFailure::NoDataConnection(
            "the TLS session of the data connection belongs to another control connection".into(),
        ));
    }
    tracing::debug!(?tie, "data connection secured");
    Ok(Box::new(secured))
}

/// A data connection that counts the bytes read from and written to it
/// (the real socket stays reachable for `sendfile(2)`, whose bytes the
/// storage reports in its error, see `storage::sent_before`).
struct Counted {
    inner: BoxStream,
    moved: Arc<std::sync::atomic::AtomicU64>,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        self.moved
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = r {
            self.moved
                .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
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

fn failure(e: StorageError) -> TransferFailure {
    match e {
        StorageError::NotFound => TransferFailure::FileNotFound,
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
    let moved = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut stream: BoxStream = Box::new(Counted {
        inner: stream,
        moved: moved.clone(),
    });
    let failed = |e: StorageError| {
        let bytes = storage::sent_before(&e)
            .unwrap_or(0)
            .max(moved.load(std::sync::atomic::Ordering::Relaxed));
        Response::FailedAfter {
            failure: failure(e),
            bytes,
        }
    };
    let aborted = || Response::FailedAfter {
        failure: TransferFailure::Aborted,
        bytes: moved.load(std::sync::atomic::Ordering::Relaxed),
    };
    let started = tokio::time::Instant::now();
    match order {
        TransferOrder::Send { path, offset } => {
            let result = tokio::select! {
                biased;
                _ = wait_closed(&mut cmds) => {
                    reply(&ctx, rid, aborted());
                    return;
                }
                r = ctx.storage.send(&path, offset, &mut stream, ctx.config.data_timeout()) => r,
            };
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
        TransferOrder::Receive { path, offset } => {
            let result = tokio::select! {
                biased;
                _ = wait_closed(&mut cmds) => None,
                r = ctx.storage.receive(&path, offset, xfer, &mut stream, ctx.config.data_timeout()) => Some(r),
            };
            let up = match result {
                // Aborted mid-way: the temporary file is removed on the
                // slave's next start if the future was dropped mid-write.
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
            if protected {
                // The client ended with close_notify (else the read above
                // failed: a TLS upload cut without it counts as truncated).
                // Answer in kind, so clients that wait for ours (Python's
                // `unwrap()`) finish cleanly.
                let _ = storage::on_data(ctx.config.data_timeout(), stream.shutdown()).await;
            }
            drop(stream);
            reply(
                &ctx,
                rid,
                Response::Received {
                    bytes: up.bytes,
                    size: up.size,
                    crc32: up.crc32,
                },
            );
            // Wait for the master's decision.
            match cmds.recv().await {
                Some(XferCmd::Commit { rid }) => match ctx.storage.commit(&up).await {
                    Ok((size, mtime)) => {
                        tracing::debug!(%path, size, ms = started.elapsed().as_millis() as u64, "stored");
                        reply(&ctx, rid, Response::Committed { size, mtime });
                    }
                    Err(e) => {
                        ctx.storage.discard(&up).await;
                        reply(&ctx, rid, Response::Failed(failure(e)));
                    }
                },
                Some(XferCmd::Order { rid, .. }) => {
                    ctx.storage.discard(&up).await;
                    reply(&ctx, rid, Response::Failed(TransferFailure::Aborted));
                }
                None => {
                    tracing::info!(%path, "upload discarded (aborted before commit)");
                    ctx.storage.discard(&up).await;
                }
            }
        }
    }
}

/// Resolves when the master aborts this transfer (drops the channel).
async fn wait_closed(cmds: &mut mpsc::UnboundedReceiver<XferCmd>) {
    while cmds.recv().await.is_some() {}
}

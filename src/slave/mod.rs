//! A slave: connects to the master, proves the shared key (and checks the
//! master's proof), applies its operation log (the master resends every
//! unacknowledged entry first), reports its files with their versions
//! (remerge), then executes transfer orders and log entries and heartbeats
//! until the link drops — and reconnects with jittered exponential backoff.
//!
//! Each transfer is its own task holding its data listener or stream; link
//! loss aborts them all (an upload in flight is discarded, never kept as
//! complete). A received upload waits for its commit in [`commit`], which
//! outlives the link. Files: `orders.rs` (the loop over the master's
//! messages), `transfer.rs` (one transfer), `commit.rs`, `storage.rs`
//! (the real disk), `mem.rs` (the simulator's disk).

pub mod commit;
pub mod mem;
mod orders;
mod ready;
mod scrub;
mod sendfile;
mod sink;
pub mod storage;
mod transfer;
mod xattr;

use commit::Awaiting;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::config::SlaveConfig;
use crate::env::{BoxStream, Env};
use crate::link::{
    self, auth, DataTls, LinkError, MasterMsg, Response, SlaveMsg, TransferOrder, PROTOCOL_VERSION,
    REMERGE_CHUNK,
};
use crate::tls::{CertPair, SharedTicketer, TicketKey, TlsError};
use storage::Storage;

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
    // Leftovers of uploads cut by a crash; uploads received later wait for
    // their commit across reconnects ([`Awaiting`]), so this runs once.
    match storage.cleanup_temp().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(removed = n, "removed leftover partial uploads"),
        Err(e) => tracing::warn!(error = %e, "cannot clean temporary files"),
    }
    let awaiting = Awaiting::new(Duration::from_millis(config.commit_grace_ms));
    let min = Duration::from_millis(config.reconnect_min_ms.max(1));
    let max = Duration::from_millis(config.reconnect_max_ms.max(config.reconnect_min_ms.max(1)));
    let mut backoff = min;
    loop {
        let span = tracing::info_span!("slave", name = %config.name);
        let result = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            r = connect_and_serve(&env, &config, &tls, &storage, ready.as_ref(), &awaiting).instrument(span) => r,
        };
        match result {
            Ok(()) => backoff = min,
            Err(LinkError::Handshake(why)) if why.starts_with("refused: ") => tracing::error!(
                slave = %config.name,
                reason = %why.trim_start_matches("refused: "),
                "the master refused this slave; retrying"
            ),
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
}

/// What the tasks of one link session share.
struct Ctx {
    env: Env,
    config: Arc<SlaveConfig>,
    storage: Arc<dyn Storage>,
    out: mpsc::UnboundedSender<SlaveMsg>,
    /// Remerge chunks: the writer takes one only when `out` is empty.
    bulk: mpsc::Sender<SlaveMsg>,
    /// `PROT P` data connections' TLS server; `None`: no certificate.
    data_tls: Option<Arc<rustls::ServerConfig>>,
    /// The master's `data_timeout_ms` (from `Welcome`): it rules every
    /// data connection of this slave.
    data_timeout: Duration,
    /// Received uploads waiting for their commit (outlives the link).
    awaiting: Awaiting,
    /// Questions to the master about data connections that resumed another
    /// control connection's TLS session, waiting for their answers.
    resumed: transfer::ResumedChecks,
}

fn reply(ctx: &Ctx, rid: u64, response: Response) {
    let _ = ctx.out.send(SlaveMsg::Reply { rid, response });
}

async fn connect_and_serve(
    env: &Env,
    config: &Arc<SlaveConfig>,
    tls: &SlaveTls,
    storage: &Arc<dyn Storage>,
    ready: Option<&mpsc::UnboundedSender<String>>,
    awaiting: &Awaiting,
) -> Result<(), LinkError> {
    // Connect, authenticate and receive `Welcome` within the handshake
    // deadline: a handshake cut by a partition would otherwise wait forever
    // (the simulator's `partition-during-remerge` scenario found this). It
    // is its own setting, not the heartbeat bound: a slave with a long
    // round trip must still be able to rejoin.
    let limit = config.handshake_timeout();
    let (stream, welcome) = tokio::time::timeout(limit, handshake(env, config, tls))
        .await
        .map_err(|_| LinkError::Handshake("no answer from the master in time".into()))??;
    let data_tls = tls.data_config(welcome.ticket_key.as_ref());
    awaiting.master(welcome.master_instance, storage).await;
    serve(
        env,
        config,
        storage,
        ready,
        stream,
        welcome,
        data_tls,
        awaiting.clone(),
    )
    .await
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

/// What the master said in `Welcome`.
struct Welcome {
    ticket_key: Option<TicketKey>,
    master_instance: u64,
    log_upto: u64,
    data_timeout: Duration,
}

async fn handshake(
    env: &Env,
    config: &Arc<SlaveConfig>,
    tls: &SlaveTls,
) -> Result<(BoxStream, Welcome), LinkError> {
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
            zone: config.zone.clone(),
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
    let welcome = match link::read_frame::<_, MasterMsg>(&mut stream).await? {
        MasterMsg::Welcome {
            proof,
            ticket_key,
            master_instance,
            log_upto,
            data_timeout_ms,
        } => {
            if !auth::verify_master(key, &nonce, &master_nonce, &config.name, &proof) {
                tracing::error!(master = %config.master, "the master could not prove the link key; not trusting it");
                return Err(LinkError::Handshake(
                    "the master could not prove the link key".into(),
                ));
            }
            let ticket_key = if ticket_key.is_some() && tls.link.is_none() {
                // Our master never does this; a key that crossed a plain
                // link is not a secret any more.
                tracing::warn!("the master sent its ticket key over a plain link; ignored");
                None
            } else {
                ticket_key
            };
            Welcome {
                ticket_key,
                master_instance,
                log_upto,
                data_timeout: Duration::from_millis(data_timeout_ms.max(1)),
            }
        }
        MasterMsg::Refused { reason } => {
            return Err(LinkError::Handshake(format!("refused: {reason}")))
        }
        _ => return Err(LinkError::Handshake("expected Welcome".into())),
    };
    Ok((stream, welcome))
}

/// One link session: the writer (heartbeats from the start, so a long
/// listing does not look like silence), the orders loop (it applies the
/// operation log the master resends first), and the remerge, which waits
/// until that log is applied, then lists the files in chunks.
#[allow(clippy::too_many_arguments)]
async fn serve(
    env: &Env,
    config: &Arc<SlaveConfig>,
    storage: &Arc<dyn Storage>,
    ready: Option<&mpsc::UnboundedSender<String>>,
    stream: BoxStream,
    welcome: Welcome,
    data_tls: Option<Arc<rustls::ServerConfig>>,
    awaiting: Awaiting,
) -> Result<(), LinkError> {
    tracing::info!(log_upto = welcome.log_upto, "authenticated to master");
    let (reader, writer) = tokio::io::split(stream);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    let (bulk_tx, bulk_rx) = mpsc::channel(1);
    let ctx = Arc::new(Ctx {
        env: env.clone(),
        config: config.clone(),
        storage: storage.clone(),
        out: out_tx,
        bulk: bulk_tx,
        data_tls,
        data_timeout: welcome.data_timeout,
        awaiting,
        resumed: transfer::ResumedChecks::default(),
    });
    let writer_task = tokio::spawn(write_loop(writer, out_rx, bulk_rx, ctx.clone()));
    let (applied_tx, applied_rx) = watch::channel(0u64);
    let scrub_task = tokio::spawn(scrub::run(ctx.clone()));
    let remerge_task = tokio::spawn(remerge(
        ctx.clone(),
        welcome.log_upto,
        applied_rx,
        ready.cloned(),
    ));
    let result = orders::read_loop(ctx, reader, applied_tx).await;
    remerge_task.abort();
    scrub_task.abort();
    writer_task.abort();
    result
}

/// Lists the files once the resent log is applied (up to `log_upto`), and
/// sends the list in chunks: the master reconciles chunk by chunk and keeps
/// serving sessions in between.
async fn remerge(
    ctx: Arc<Ctx>,
    log_upto: u64,
    mut applied: watch::Receiver<u64>,
    ready: Option<mpsc::UnboundedSender<String>>,
) {
    if applied.wait_for(|n| *n >= log_upto).await.is_err() {
        return;
    }
    let files = match ctx.storage.list().await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %e, "cannot list the files; remerge not sent");
            return;
        }
    };
    let count = files.len();
    let free = ctx.storage.free_space().await.unwrap_or(0);
    let mut files = files.into_iter().peekable();
    loop {
        let chunk: Vec<_> = files.by_ref().take(REMERGE_CHUNK).collect();
        let last = files.peek().is_none();
        // One chunk at a time, after anything more urgent (replies to
        // orders: this slave serves while it remerges).
        if ctx
            .bulk
            .send(SlaveMsg::Remerge { files: chunk, last })
            .await
            .is_err()
        {
            return;
        }
        if last {
            break;
        }
    }
    let _ = ctx.bulk.send(SlaveMsg::Status { free, transfers: 0 }).await;
    tracing::info!(files = count, free, "remerge sent");
    if let Some(r) = ready {
        let _ = r.send(ctx.config.name.clone());
    }
}

async fn write_loop(
    mut w: tokio::io::WriteHalf<BoxStream>,
    mut rx: mpsc::UnboundedReceiver<SlaveMsg>,
    mut bulk: mpsc::Receiver<SlaveMsg>,
    ctx: Arc<Ctx>,
) {
    let interval = ctx.config.heartbeat_interval();
    link::write_frames(&mut w, &mut rx, Some(&mut bulk), interval, || async {
        SlaveMsg::Status {
            free: ctx.storage.free_space().await.unwrap_or(0),
            transfers: 0,
        }
    })
    .await;
}

#[cfg(test)]
mod tests;

//! Starting a master: open the store, load it, bind the control and link
//! listeners, and spawn the tasks that serve them ([`Master::start`]).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::hub::{Hub, Shared};
use super::{control, link_server, record, store, users_from_config};
use crate::config::MasterConfig;
use crate::env::Env;
use crate::tls::{CertPair, SharedTicketer, TicketKey, TlsError};
use dftpd_core::master::MasterState;

/// FTPS on the master (README, "FTPS"): one rustls server configuration for
/// the control connections after `AUTH TLS`, the master's own data
/// connections and the TLS link, built once; and the session-ticket key,
/// which reaches slaves only over a TLS link (`link_tls`), so their data
/// connections resume the sessions clients made with the master.
pub struct MasterTls {
    /// Control connections and the link.
    pub server: Arc<rustls::ServerConfig>,
    /// The master's data connections (listings, relay): no TLS 1.3
    /// tickets (`tls::data_server_config`).
    pub data: Arc<rustls::ServerConfig>,
    pub ticket_key: TicketKey,
    /// SHA-256 of the certificate, hex: what slaves pin.
    pub fingerprint: String,
}

impl MasterTls {
    /// Loads the certificate named in the config; `None` when TLS is off.
    pub fn load(config: &MasterConfig) -> Result<Option<Arc<MasterTls>>, TlsError> {
        let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
            return Ok(None);
        };
        let pair = CertPair::load_pem(cert, key)?;
        let ticket_key = crate::tls::new_ticket_key()?;
        let ticketer = SharedTicketer::new(&ticket_key, crate::tls::DEFAULT_TICKET_LIFETIME)?;
        let server = crate::tls::server_config(&pair, Arc::new(ticketer))?;
        Ok(Some(Arc::new(MasterTls {
            data: crate::tls::data_server_config(&server),
            server,
            ticket_key,
            fingerprint: pair.fingerprint_sha256(),
        })))
    }
}

/// A running master: its bound addresses and a way to stop it.
pub struct Master {
    pub control_addr: SocketAddr,
    pub link_addr: SocketAddr,
    pub state: Shared,
    shutdown: watch::Sender<bool>,
}

impl Master {
    /// Opens the store named in the config (`store`; none: in memory, not
    /// kept), binds the control and link listeners and starts serving.
    pub async fn start(env: Env, config: MasterConfig) -> std::io::Result<Master> {
        let store = match &config.store {
            Some(path) => store::MetaStore::open_file(path),
            None => store::MetaStore::open_memory(&store::SharedMemory::new()),
        }
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        Master::start_with_store(env, config, store).await
    }

    /// Like [`Master::start`] with a store opened by the caller (the
    /// simulator keeps one per master across crashes).
    pub async fn start_with_store(
        env: Env,
        config: MasterConfig,
        store: store::MetaStore,
    ) -> std::io::Result<Master> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let tls = MasterTls::load(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        if let Some(t) = &tls {
            tracing::info!(
                sha256 = %t.fingerprint,
                link_tls = config.link_tls,
                require_tls_control = config.require_tls_control,
                require_tls_data = config.require_tls_data,
                "FTPS offered (AUTH TLS)"
            );
            if config.link_tls {
                tracing::info!("link over TLS: slaves get the session-ticket key, data connections to them resume the control session");
            } else {
                tracing::warn!("link_tls is off: the session-ticket key stays on the master, so PROT P data connections to slaves make full TLS handshakes (clients that require session resumption on data connections will fail)");
            }
        }
        let config = Arc::new(config);
        let users = users_from_config(&config, &mut |_| {
            let mut salt = [0u8; 16];
            env.rng_fill(&mut salt);
            salt
        });
        let mut st = MasterState::with_users(config.clone(), users);
        st.tls_available = tls.is_some();
        let stats = store
            .load(&mut st)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        tracing::info!(
            store = store.label(),
            files = stats.files,
            dirs = stats.dirs,
            slaves = stats.slaves,
            queued_ops = stats.queued_ops,
            skipped = stats.skipped,
            "metadata store loaded"
        );
        st.open_journals();
        if st.store_id == 0 {
            // A new (or rebuilt) store gets its identity now.
            st.set_store_id(env.rng_u64() | 1, true);
        }
        // The slaves named in the config are known from now on.
        for name in &config.slaves {
            st.slaves.id_for(name);
        }
        let converted = st.db.rewrite_converted();
        if config.replication.copies > 1 || !config.replication.rules.is_empty() {
            // Files that may lack copies under the rules in force.
            crate::master::replica::note_all(&mut st, None);
        }
        if converted > 0 {
            tracing::info!(
                files = converted,
                "file records from before versions got one"
            );
        }
        let writer = store.start_writer();
        let mut sink: Option<Arc<dyn record::RecordSink>> = None;
        if let Some(dir) = &config.record_dir {
            let dir_sink = record::DirSink::create(dir.clone()).map_err(|e| {
                std::io::Error::new(e.kind(), format!("record_dir {}: {e}", dir.display()))
            })?;
            sink = Some(Arc::new(dir_sink));
        }
        let state: Shared = Arc::new(Hub::new(st, Some(writer), sink, tls, env.rng_u64()));
        state.set_started_unix(env.unix_now());
        let control = env.net.bind(config.listen).await?;
        let link = env.net.bind(config.link_listen).await?;
        let control_addr = control.local_addr()?;
        let link_addr = link.local_addr()?;
        let (shutdown, rx) = watch::channel(false);
        tokio::spawn(link_server::accept_links(
            env.clone(),
            state.clone(),
            link,
            rx.clone(),
        ));
        tokio::spawn(super::replicator::run(
            env.clone(),
            state.clone(),
            rx.clone(),
        ));
        tokio::spawn(control::accept_sessions(env, state.clone(), control, rx));
        tracing::info!(%control_addr, %link_addr, "master listening");
        Ok(Master {
            control_addr,
            link_addr,
            state,
            shutdown,
        })
    }

    /// Stops accepting control and link connections and tells every open
    /// session to end (idle ones at once with `421 Server shutting down`,
    /// ones in a transfer after its final reply).
    pub fn stop(&self) {
        let _ = self.shutdown.send(true);
        self.state.stop_sessions();
    }
}

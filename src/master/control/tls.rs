//! FTPS (RFC 4217) on the control connection (`AUTH TLS` takes over the
//! stream) and on the data connections the master serves itself
//! (listings, relay).

use std::net::SocketAddr;

use super::{ControlSession, Next};
use crate::env::BoxStream;
use crate::master::observe::SessionEvent;
use crate::proto::{LineDecoder, Reply};

impl ControlSession {
    /// `AUTH TLS` accepted: 234 in clear, then the TLS handshake on the
    /// whole control stream (bounded by `data_timeout`). Bytes the client
    /// pipelined after the AUTH line came in clear and are dropped: they
    /// must never run as protected commands. A failed handshake closes the
    /// connection (its state is unknown).
    pub(super) async fn start_tls(&mut self, reply: Reply) -> Next {
        self.release_endpoint();
        if self.send(&reply).await.is_err() {
            return Next::Close;
        }
        self.plain_control
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let (tls, limit) = {
            let st = self.state.lock();
            (self.state.tls(), st.config.data_timeout())
        };
        let Some(tls) = tls else {
            if self.state.tls_in_clear() {
                // The simulator: the FTP conversation of a TLS session,
                // without TLS.
                self.decoder = LineDecoder::new();
                self.queued.clear();
                let mut token = vec![0u8; 16];
                self.env.rng_fill(&mut token);
                self.tls_token = Some(token);
                self.observers
                    .emit_locked(&self.state, &SessionEvent::TlsStarted);
                return Next::Continue;
            }
            return Next::Close;
        };
        let dropped = self.decoder.buffered() + self.queued.len();
        if dropped > 0 {
            tracing::info!(dropped, "discarding plaintext sent after AUTH TLS");
        }
        self.decoder = LineDecoder::new();
        self.queued.clear();
        let (idle_r, idle_w) = tokio::io::split(Box::new(Detached) as BoxStream);
        let reader = std::mem::replace(&mut self.reader, idle_r);
        let writer = std::mem::replace(&mut self.writer, idle_w);
        let plain = reader.unsplit(writer);
        let mut token = vec![0u8; 16];
        self.env.rng_fill(&mut token);
        match crate::tls::accept(&tls.server, plain, Some(&token), limit).await {
            Ok(secured) => {
                tracing::debug!(
                    version = ?secured.get_ref().1.protocol_version(),
                    "control connection encrypted"
                );
                let (r, w) = tokio::io::split(Box::new(secured) as BoxStream);
                self.reader = r;
                self.writer = w;
                self.tls_token = Some(token);
                self.observers
                    .emit_locked(&self.state, &SessionEvent::TlsStarted);
                Next::Continue
            }
            Err(e) => {
                tracing::info!(error = %e, "TLS handshake on the control connection failed");
                self.closed = true;
                Next::Close
            }
        }
    }

    /// A data connection the master serves itself (listings): TLS server
    /// side under `PROT P`, tagged with this session's token; a client that
    /// resumes the session of another control connection is refused unless
    /// that is the same logged-in user's from the same address.
    pub(super) async fn protect_master_data(
        &mut self,
        stream: BoxStream,
    ) -> std::io::Result<BoxStream> {
        let (Some(token), true) = (&self.tls_token, self.session.tls.private) else {
            return Ok(stream);
        };
        let (tls, limit) = {
            let st = self.state.lock();
            (self.state.tls(), st.config.data_timeout())
        };
        let Some(tls) = tls else {
            if self.state.tls_in_clear() {
                return Ok(stream);
            }
            return Err(std::io::Error::other("TLS is not configured"));
        };
        let secured = crate::tls::accept(&tls.data, stream, Some(token), limit)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("TLS handshake failed: {e}")))?;
        let conn = secured.get_ref().1;
        if crate::tls::SessionTie::of(conn, token) == crate::tls::SessionTie::Foreign {
            let resumed = conn.received_resumption_data().unwrap_or_default();
            if !self.state.resumed_sibling(token, resumed, limit).await {
                tracing::warn!(
                    "data connection refused: it resumed the TLS session of another control \
                     connection (not one of this user's from this address)"
                );
                return Err(std::io::Error::other(
                    "the TLS session of the data connection belongs to another control connection",
                ));
            }
            tracing::debug!("data connection resumed a sibling's TLS session");
        }
        Ok(Box::new(secured))
    }
}

/// Stands in for the control stream while `AUTH TLS` takes it over: reads
/// end, writes fail.
struct Detached;

impl tokio::io::AsyncRead for Detached {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Detached {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::ErrorKind::NotConnected.into()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

impl crate::env::NetStream for Detached {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::ErrorKind::NotConnected.into())
    }
    fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        Err(std::io::ErrorKind::NotConnected.into())
    }
}

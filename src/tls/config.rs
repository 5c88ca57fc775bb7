//! The rustls configurations, each built once per process: the server side
//! of every FTPS connection ([`server_config`], [`data_server_config`]),
//! the slave's link client pinned to its master's certificate
//! ([`pinned_client_config`], [`pinned_fingerprint_client_config`]), the
//! FXP client ([`fxp_client_config`]), and the certificate verifiers behind
//! those clients.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
};

use super::cert::{fingerprint_sha256, hex, sha256, CertPair};
use super::{provider, TlsError};

/// TLS 1.3 tickets sent after each handshake. A rustls client spends one
/// ticket per resumption and only refills its stock when it *reads* from a
/// connection; an upload data connection never reads, so a client uploading
/// several files in a row lives on the tickets of its control connection
/// (rustls keeps up to 8 per server). rustls' default of 2 would make the
/// third upload a full handshake.
pub const TLS13_TICKETS_PER_HANDSHAKE: usize = 4;

/// Sessions remembered per process for TLS 1.2 clients that resume by
/// session ID instead of by ticket.
pub const SESSION_CACHE_SIZE: usize = 1024;

/// The server side of every FTPS connection: the control connection after
/// `AUTH TLS`, the master's listing connections, a slave's data connections
/// and the master's end of the link. TLS 1.2 and 1.3, no client
/// certificates, resumption by `ticketer` (both versions) and, for TLS 1.2
/// clients without tickets, by session ID from a per-process cache. No
/// 0-RTT data: replayable FTP commands are not worth one round trip.
///
/// The result is meant to be built once and shared by all connections of a
/// process (`TlsAcceptor::from(config.clone())`).
pub fn server_config(
    pair: &CertPair,
    ticketer: Arc<dyn ProducesTickets>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(pair.chain.clone(), pair.key.clone_key())?;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = ticketer;
    config.send_tls13_tickets = TLS13_TICKETS_PER_HANDSHAKE;
    Ok(Arc::new(config))
}

/// The configuration for data connections: `base` (same certificate,
/// session cache and ticketer) without TLS 1.3 session tickets. A server
/// sends those right after the handshake; on an upload the client never
/// reads them, and a TCP close with unread data sends a reset instead of a
/// FIN, which can overtake the last bytes and the client's `close_notify`
/// (curl uploads failed with "connection reset" that way; ProFTPD turns
/// data-connection tickets off for the same reason). Clients resume data
/// connections with the tickets of their control connection.
pub fn data_server_config(base: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = (**base).clone();
    config.send_tls13_tickets = 0;
    Arc::new(config)
}

/// A client that trusts exactly the server certificate `pin` (DER of the
/// leaf), whatever its names, issuer or validity dates: for the slave's
/// link to a master whose certificate the operator configured. Handshake
/// signatures are still verified, so only the holder of the pinned
/// certificate's key gets through. The [`ServerName`] given to the
/// connector is then only the resumption cache's key (an IP address sends
/// no SNI).
pub fn pinned_client_config(pin: Vec<u8>) -> Result<Arc<ClientConfig>, TlsError> {
    pinned_fingerprint_client_config(sha256(&pin))
}

/// As [`pinned_client_config`], the certificate named by the SHA-256 of its
/// DER (what `master_cert_pin` holds, see [`load_pin`](super::load_pin)).
pub fn pinned_fingerprint_client_config(
    sha256_of_leaf: [u8; 32],
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServerCert {
        pin: sha256_of_leaf,
        provider: provider.clone(),
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Trusts any certificate, still checking handshake signatures. Used where
/// the peer is another FTP server that no one here can vouch for: FXP,
/// where the user who drives both servers chose the peer (DrFTPD does not
/// verify either). Such a connection is private against eavesdroppers, not
/// authenticated. Tests use it as a client that accepted a self-signed
/// certificate.
#[derive(Debug)]
pub(super) struct AcceptAnyCert(pub(super) Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The TLS client side of an FXP data connection (SSCN ON / CPSV): any
/// server certificate, TLS 1.2 or 1.3, no resumption.
pub fn fxp_client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let mut config = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedServerCert {
    /// SHA-256 of the pinned leaf's DER.
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedServerCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Certificates are public: a plain comparison leaks nothing.
        if sha256(end_entity.as_ref()) == self.pin {
            return Ok(ServerCertVerified::assertion());
        }
        tracing::warn!(
            expected = %hex(&self.pin),
            presented = %fingerprint_sha256(end_entity),
            "server certificate is not the pinned one"
        );
        Err(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rustls::{HandshakeKind, ProtocolVersion};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::env::BoxStream;
    use crate::tls::testutil::*;
    use crate::tls::{load_pin, new_ticket_key};

    #[tokio::test]
    async fn pinned_client_handshakes_and_data_flows_both_ways() {
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1", "master.example"], &key);
        let client = pinned_client_config(pair.cert_der().to_vec()).unwrap();
        let (s, c) = handshake(&server, &client, "127.0.0.1").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping_pong(&mut s, &mut c).await;
        assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(
            c.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_3)
        );
        let leaf = &c.get_ref().1.peer_certificates().unwrap()[0];
        assert_eq!(leaf, pair.cert_der());

        // Boxed again, the TLS stream keeps the seam's addresses and gives
        // up the sendfile fast path.
        let mut boxed: BoxStream = Box::new(s);
        assert_eq!(boxed.peer_addr().unwrap(), CLIENT_ADDR.parse().unwrap());
        assert_eq!(boxed.local_addr().unwrap(), SERVER_ADDR.parse().unwrap());
        assert!(boxed.as_tcp().is_none());
        boxed.write_all(b"226 done\r\n").await.unwrap();
        boxed.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"226 done\r\n");
    }

    #[tokio::test]
    async fn pinned_client_works_over_tls12() {
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1"], &key);
        let provider = provider();
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(TLS12)
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedServerCert {
                    pin: sha256(pair.cert_der()),
                    provider,
                }))
                .with_no_client_auth(),
        );
        let (s, c) = handshake(&server, &client, "127.0.0.1").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping_pong(&mut s, &mut c).await;
        assert_eq!(
            s.get_ref().1.protocol_version(),
            Some(ProtocolVersion::TLSv1_2)
        );
    }

    #[tokio::test]
    async fn client_pinned_to_another_certificate_is_refused() {
        let key = new_ticket_key().unwrap();
        let (_, server) = server(&["127.0.0.1"], &key);
        let other = CertPair::self_signed(&["127.0.0.1".to_string()]).unwrap();
        let client = pinned_client_config(other.cert_der().to_vec()).unwrap();
        let (s, c) = handshake(&server, &client, "127.0.0.1").await;
        let Err(err) = c else {
            panic!("a client pinned elsewhere must refuse")
        };
        assert_eq!(
            io_rustls_error(&err),
            Some(&rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure
            )),
            "{err}"
        );
        assert!(s.is_err(), "the server sees the client's alert");
    }

    #[tokio::test]
    async fn write_only_connections_resume_on_the_control_connections_tickets() {
        // An upload per data connection: a TLS 1.3 rustls client never reads
        // there, so each resumption spends a ticket from the control
        // connection's stock.
        let (master, slave, client) = master_and_slave(TLS13);
        let (s, c) = handshake(&master, &client, "master.example").await;
        ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;
        for upload in 0..TLS13_TICKETS_PER_HANDSHAKE {
            assert_eq!(
                write_only(&slave, &client, "master.example").await,
                HandshakeKind::Resumed,
                "upload {upload}"
            );
        }
        assert_eq!(
            write_only(&slave, &client, "master.example").await,
            HandshakeKind::Full,
            "stock spent: one more than the tickets sent"
        );
    }

    #[tokio::test]
    async fn data_config_sends_no_tickets_but_resumes_control_sessions() {
        let key = new_ticket_key().unwrap();
        let (_, master) = server(&["master.example"], &key);
        let (_, slave) = server(&["10.0.0.2"], &key);
        let data = data_server_config(&slave);
        assert_eq!(data.send_tls13_tickets, 0);
        let client = danger_accept_any_client(TLS13, None);
        let (s, c) = handshake(&master, &client, "master.example").await;
        ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;
        // An upload: the client only writes, and finds nothing unread.
        assert_eq!(
            write_only(&data, &client, "master.example").await,
            HandshakeKind::Resumed
        );
    }

    #[tokio::test]
    async fn fingerprint_pinned_client_accepts_only_that_certificate() {
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1"], &key);
        let good = pinned_fingerprint_client_config(load_pin(&pair.fingerprint_sha256()).unwrap())
            .unwrap();
        let (s, c) = handshake(&server, &good, "127.0.0.1").await;
        ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;
        let other = CertPair::self_signed(&["127.0.0.1".to_string()]).unwrap();
        let bad = pinned_fingerprint_client_config(sha256(other.cert_der())).unwrap();
        let (_, c) = handshake(&server, &bad, "127.0.0.1").await;
        assert!(c.is_err());
    }
}

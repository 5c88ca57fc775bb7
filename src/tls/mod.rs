//! FTPS building blocks (RFC 4217, explicit `AUTH TLS`): certificates, one
//! rustls server configuration shared by the master and its slaves, a
//! session-ticket key the whole cluster shares, and a pinned-certificate
//! client for the slave→master link. The FTP verbs themselves (`AUTH TLS`,
//! `PBSZ`, `PROT`, RFC 4217 §4–§9, RFC 2228) live in the master's session;
//! this module only turns a [`BoxStream`] into a TLS stream.
//!
//! # Why a shared ticket key
//!
//! RFC 4217 §10.2 lets a server check that a data connection resumes the
//! TLS session of its control connection, so that whoever opens the data
//! connection is provably the control connection's client (vsftpd's
//! `require_ssl_reuse`, FileZilla Server's default), and FTPS clients
//! offer that resumption on every data connection. In dftpd the control
//! connection ends at the master and the data connection at a slave, a
//! different process with a different certificate. Stateless resumption
//! (RFC 5077 tickets in TLS 1.2, PSK tickets in RFC 8446 §4.6.1) makes this
//! work: the session state travels inside the ticket, encrypted under a key
//! that the master hands to every slave ([`TicketKey`], [`SharedTicketer`]),
//! so a slave can open a ticket that the master issued, and the other way
//! round.
//!
//! What that means for clients:
//!
//! - Clients built on OpenSSL or GnuTLS hand the control connection's
//!   session to the data connection explicitly (`SSL_set_session`,
//!   `gnutls_session_set_data`), whatever address the data connection goes
//!   to: a slave at another IP resumes, given the SNI rule below.
//! - rustls clients look sessions up by [`ServerName`]: they resume on a
//!   slave only if they use the same name for it as for the master (what
//!   this module's tests do).
//! - rustls refuses to resume a session under a different SNI than the one
//!   it was created with (RFC 6066 §3) and falls back to a full handshake.
//!   A client that sent a host name on the control connection must send the
//!   same one on the data connection; sending none there (because it dials
//!   the slave by IP) gets a full handshake. Clients that connect to the
//!   master by IP address send no SNI at all, and resume everywhere.
//!   `resumption_needs_the_same_sni` shows both cases.
//! - TLS 1.2 clients without ticket support resume by session ID only,
//!   which is a per-process cache: on the master's own listing connections,
//!   never on a slave.
//!
//! # Tying a data connection to its control connection
//!
//! `handshake_kind() == Some(Resumed)` on a data connection proves only
//! that the client holds a ticket of this cluster. To tie it to one control
//! session, accept the control connection with
//! `TlsAcceptor::accept_with(stream, |c| c.set_resumption_data(&token))`
//! (a random token per control session), send the token to the slave with
//! the transfer order, accept the data connection the same way (so the
//! slave's own tickets carry the token on), and compare
//! `received_resumption_data()` with it. rustls hands the token back for
//! TLS 1.3 only: a resumed TLS 1.2 data connection shows `None`. Another
//! token is accepted if it is a sibling's, the same logged-in user's
//! control connection from the same address ([`Siblings`]; a slave asks
//! the master): clients such as rclone share one session cache between
//! their connections.
//!
//! # Wiring notes
//!
//! - Build each config once per process and share it: `Arc<ServerConfig>`
//!   holds the session cache and the ticketer that all connections use.
//!   `TlsAcceptor::from(config.clone()).accept(stream)` on a [`BoxStream`]
//!   gives a `TlsStream<BoxStream>`, which is a [`NetStream`] again; bound
//!   the handshake with `tokio::time::timeout`.
//! - `AUTH TLS`: send and flush 234 first, take the control stream back
//!   whole (`unsplit`), and drop whatever the line decoder holds past the
//!   `AUTH` line: bytes pipelined in clear must never run as protected
//!   commands.
//! - On a data connection the FTP client is the TLS client in both passive
//!   and active mode: a slave that dialled out for PORT still accepts.
//! - End a protected transfer with `shutdown()` (sends `close_notify`). A
//!   peer that closes without `close_notify` reads as the data, then
//!   `UnexpectedEof`: decide whether an upload ended that way counts.
//! - A TLS stream has no `as_tcp`: transfers take the copy loop, not
//!   `sendfile(2)`.
//!
//! # Secrets
//!
//! The ticket key is as sensitive as the certificates' private keys: a TLS
//! 1.2 ticket carries the session's master secret. It must reach the slaves
//! only over an encrypted link (the TLS link built with
//! [`pinned_client_config`]), never over the plain HMAC-authenticated one.
//!
//! TLS is not run inside the deterministic simulator, so this module may
//! use the system clock (ticket expiry), the OS random generator (keys,
//! nonces) and `std::fs` (certificate files, read once at start).
//!
//! # Layout
//!
//! One file per concern: `cert.rs` (certificates, fingerprints, pins),
//! `tickets.rs` (the session tickets the cluster shares), `config.rs` (the
//! rustls configurations and their certificate verifiers), `stream.rs`
//! (handshakes with a deadline, TLS streams as network streams, a data
//! connection's tie to its control session) and `siblings.rs` (the control
//! sessions whose TLS sessions a data connection may resume). This file
//! holds what they share: the error type and the crypto provider.
//!
//! [`BoxStream`]: crate::env::BoxStream
//! [`NetStream`]: crate::env::NetStream
//! [`ServerName`]: rustls::pki_types::ServerName

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem;

mod cert;
mod config;
mod siblings;
mod stream;
#[cfg(test)]
mod testutil;
mod tickets;

pub use cert::{fingerprint_sha256, load_pin, CertPair};
pub use config::{
    data_server_config, fxp_client_config, pinned_client_config, pinned_fingerprint_client_config,
    server_config, SESSION_CACHE_SIZE, TLS13_TICKETS_PER_HANDSHAKE,
};
pub use siblings::{LoginState, Siblings, Verdict};
pub use stream::{accept, connect, SessionTie, MAX_RESUMPTION_DATA};
pub use tickets::{new_ticket_key, SharedTicketer, TicketKey, DEFAULT_TICKET_LIFETIME};

/// Why a certificate, key or TLS configuration could not be set up. Every
/// variant means TLS is unavailable, which FTP answers to `AUTH TLS` with
/// 431 (RFC 2228: "Need some unavailable resource to process security").
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot write {what} file {}: {source}", path.display())]
    Write {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what} file {} is not valid PEM: {source}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("certificate file {} holds no certificate (expected a '-----BEGIN CERTIFICATE-----' block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("key file {} holds no private key (expected a PKCS#8, PKCS#1 or SEC1 PEM block)", path.display())]
    NoPrivateKey { path: PathBuf },
    #[error("key file {}: unusable private key: {source}", path.display())]
    BadKey {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate file {}: unusable certificate: {source}", path.display())]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the private key in {} does not belong to the certificate in {}", key_path.display(), cert_path.display())]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
    #[error("cannot write a private key of this format as PEM")]
    UnsupportedKeyFormat,
    #[error("{0:?} is neither an IP address nor a valid DNS name")]
    BadName(String),
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("session ticket key: {0}")]
    TicketKey(&'static str),
    #[error("certificate pin {0:?} is neither a SHA-256 fingerprint (64 hex digits) nor an existing PEM file")]
    BadPin(String),
}

impl TlsError {
    /// The FTP reply code for an `AUTH TLS` that cannot be served.
    pub fn code(&self) -> u16 {
        431
    }
}

/// The crypto provider of every config built here: ring, explicitly, because
/// aws-lc is not compiled in and rustls' process default would panic.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

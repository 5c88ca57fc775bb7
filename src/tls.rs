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
//!   the tests below do).
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
//! TLS 1.3 only: a resumed TLS 1.2 data connection shows `None`.
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

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme,
};

use sha2::{Digest, Sha256};

use crate::env::{BoxStream, NetStream};

/// How long a session ticket may be used, unless the caller says otherwise.
/// Long enough for a client's whole FTP session of data connections, short
/// enough that a stolen ticket key exposes little.
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(60 * 60);

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

/// Longest ticket [`SharedTicketer::decrypt`] looks at. Ours are a few
/// hundred bytes (no client certificates, no ALPN); refusing long input
/// before touching the AEAD bounds the work an attacker can cause and
/// blunts partitioning-oracle attacks on the tag.
const MAX_TICKET_LEN: usize = 2048;

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const EXPIRY_LEN: usize = 8;
static TICKET_AEAD: &aead::Algorithm = &aead::CHACHA20_POLY1305;

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

// ---------------------------------------------------------------------------
// Certificates

/// A certificate chain (leaf first) and its private key. The chain is never
/// empty and the key matches the leaf: both constructors check.
pub struct CertPair {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl CertPair {
    /// Reads a PEM certificate chain (leaf first) and a PEM private key.
    /// Both may be the same file. Fails with the file's name when a file is
    /// unreadable, holds no certificate or key, or the key is not the
    /// leaf's.
    pub fn load_pem(
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<CertPair, TlsError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let cert_pem = read_file("certificate", cert_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| TlsError::Pem {
                what: "certificate",
                path: cert_path.to_owned(),
                source,
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert_path.to_owned(),
            });
        }
        let key_pem = read_file("key", key_path)?;
        let key = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(pem::Error::NoItemsFound) => {
                return Err(TlsError::NoPrivateKey {
                    path: key_path.to_owned(),
                })
            }
            Err(source) => {
                return Err(TlsError::Pem {
                    what: "key",
                    path: key_path.to_owned(),
                    source,
                })
            }
        };
        let pair = CertPair { chain, key };
        pair.check(cert_path, key_path)?;
        Ok(pair)
    }

    /// A fresh self-signed certificate (ECDSA P-256) for `names`: each one
    /// that parses as an IP address becomes an IP subject alternative name,
    /// the others DNS names (no wildcards). For a cluster without a CA: the
    /// master's certificate is pinned by its slaves, and FTP clients are
    /// asked to trust it once.
    pub fn self_signed(names: &[String]) -> Result<CertPair, TlsError> {
        // rcgen takes even "a b" as a DNS name; a name no client can match
        // is a configuration mistake better reported now than at handshake.
        if let Some(bad) = names
            .iter()
            .find(|n| ServerName::try_from(n.as_str()).is_err())
        {
            return Err(TlsError::BadName(bad.clone()));
        }
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(names.to_vec())?;
        Ok(CertPair {
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der())),
        })
    }

    /// Writes the chain and the key as PEM. The key file is created readable
    /// by its owner only (mode 0600), also when it already existed.
    pub fn write_pem(
        &self,
        cert_path: impl AsRef<Path>,
        key_path: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
        let label = match &self.key {
            PrivateKeyDer::Pkcs8(_) => "PRIVATE KEY",
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => return Err(TlsError::UnsupportedKeyFormat),
        };
        let mut certs = String::new();
        for cert in &self.chain {
            pem_block("CERTIFICATE", cert, &mut certs);
        }
        let mut key = String::new();
        pem_block(label, self.key.secret_der(), &mut key);

        std::fs::write(cert_path, certs).map_err(|source| TlsError::Write {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        })?;
        write_private(key_path, key.as_bytes()).map_err(|source| TlsError::Write {
            what: "key",
            path: key_path.to_owned(),
            source,
        })
    }

    /// The leaf certificate, DER: what a slave pins.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        // The constructors never build an empty chain.
        &self.chain[0]
    }

    /// The whole chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// SHA-256 of the leaf certificate, lowercase hex: for logs and for an
    /// operator comparing what a client shows.
    pub fn fingerprint_sha256(&self) -> String {
        fingerprint_sha256(self.cert_der())
    }

    fn check(&self, cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let signing_key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|source| TlsError::BadKey {
                path: key_path.to_owned(),
                source,
            })?;
        match CertifiedKey::new(self.chain.clone(), signing_key).keys_match() {
            // `Unknown`: the key type cannot tell its public key; rustls
            // accepts that too.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(())
            }
            Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
                cert_path: cert_path.to_owned(),
                key_path: key_path.to_owned(),
            }),
            Err(source) => Err(TlsError::BadCertificate {
                path: cert_path.to_owned(),
                source,
            }),
        }
    }
}

impl Clone for CertPair {
    fn clone(&self) -> CertPair {
        CertPair {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for CertPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("CertPair")
            .field("leaf_sha256", &self.fingerprint_sha256())
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex(&sha256(der))
}

fn read_file(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        options.mode(0o600);
        let mut file = options.open(path)?;
        // `mode` applies only to a file that did not exist yet.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(bytes)?;
        file.sync_all()
    }
    #[cfg(not(unix))]
    {
        let mut file = options.open(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    }
}

/// Appends one PEM block (RFC 7468: base64 in lines of 64) to `out`.
fn pem_block(label: &str, der: &[u8], out: &mut String) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    let mut line = 0;
    for chunk in der.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        let sextet = |shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
        let quad = [
            sextet(18),
            sextet(12),
            if chunk.len() > 1 { sextet(6) } else { '=' },
            if chunk.len() > 2 { sextet(0) } else { '=' },
        ];
        for c in quad {
            out.push(c);
            line += 1;
            if line == 64 {
                out.push('\n');
                line = 0;
            }
        }
    }
    if line > 0 {
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

// ---------------------------------------------------------------------------
// Session tickets shared across the cluster

/// The cluster's ticket key (a link message type, so it lives with the
/// link messages): 32 secret bytes and an id tickets carry in clear.
pub use crate::link::TicketKey;

/// A random ticket key with a random id, from the OS generator. The master
/// makes one at start and sends it to its slaves over a TLS link.
pub fn new_ticket_key() -> Result<TicketKey, TlsError> {
    let rng = SystemRandom::new();
    let mut secret = [0u8; 32];
    let mut id = [0u8; KEY_ID_LEN];
    rng.fill(&mut secret)
        .and_then(|()| rng.fill(&mut id))
        .map_err(|_| TlsError::TicketKey("the system random generator failed"))?;
    Ok(TicketKey::new(u32::from_be_bytes(id), secret))
}

/// One ticket key ready for use.
struct SealingKey {
    id: [u8; KEY_ID_LEN],
    key: aead::LessSafeKey,
}

impl SealingKey {
    fn new(key: &TicketKey) -> Result<SealingKey, TlsError> {
        let unbound = aead::UnboundKey::new(TICKET_AEAD, key.secret())
            .map_err(|_| TlsError::TicketKey("the AEAD refused the key"))?;
        Ok(SealingKey {
            id: key.id().to_be_bytes(),
            key: aead::LessSafeKey::new(unbound),
        })
    }
}

struct TicketKeys {
    current: SealingKey,
    /// The key before the last [`SharedTicketer::rotate`]: still opens
    /// tickets, never seals. Dropped at the next rotation.
    previous: Option<SealingKey>,
}

/// A [`ProducesTickets`] whose key comes from outside, so that every server
/// given the same [`TicketKey`] (the master and all its slaves) opens the
/// tickets of the others: the client of a control connection to the master
/// resumes that session on its data connection to a slave.
///
/// Ticket: `key id (4) | nonce (12) | ChaCha20-Poly1305(expiry (8, Unix
/// seconds, big-endian) | rustls session state) | tag (16)`, the key id
/// bound as associated data. The nonce is random per ticket. The expiry is
/// checked on opening: rustls does not enforce ticket lifetimes on the
/// server side, and the ticket may be shown to a server that did not issue
/// it.
///
/// Rotation: [`SharedTicketer::rotate`] makes a new key current and keeps
/// the old one for opening until the next rotation; erasing old keys is
/// what gives tickets forward secrecy. Rotate the slaves first and the
/// master last: every server then opens what any other seals.
pub struct SharedTicketer {
    keys: RwLock<TicketKeys>,
    lifetime: u32,
    rng: SystemRandom,
}

impl SharedTicketer {
    /// A ticketer sealing with `key`; tickets live `lifetime` (capped at
    /// seven days, the longest TLS 1.3 allows, RFC 8446 §4.6.1).
    pub fn new(key: &TicketKey, lifetime: Duration) -> Result<SharedTicketer, TlsError> {
        const MAX_LIFETIME: u64 = 7 * 24 * 60 * 60;
        Ok(SharedTicketer {
            keys: RwLock::new(TicketKeys {
                current: SealingKey::new(key)?,
                previous: None,
            }),
            lifetime: lifetime.as_secs().min(MAX_LIFETIME) as u32,
            rng: SystemRandom::new(),
        })
    }

    /// Makes `key` the sealing key; the current one keeps opening tickets
    /// until the next rotation, the previous one is forgotten.
    pub fn rotate(&self, key: &TicketKey) -> Result<(), TlsError> {
        let next = SealingKey::new(key)?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut keys.current, next);
        keys.previous = Some(old);
        tracing::info!(key_id = %format_args!("{:08x}", key.id()), "session ticket key rotated");
        Ok(())
    }

    /// The id of the key that seals new tickets.
    pub fn current_key_id(&self) -> u32 {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        u32::from_be_bytes(keys.current.id)
    }

    fn seal_at(&self, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let expiry = now.saturating_add(u64::from(self.lifetime));
        // A poisoned lock still holds valid keys: a panic cannot leave a
        // half-written key behind `mem::replace`.
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let head = KEY_ID_LEN + NONCE_LEN;
        let mut ticket =
            Vec::with_capacity(head + EXPIRY_LEN + plain.len() + TICKET_AEAD.tag_len());
        ticket.extend_from_slice(&keys.current.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&expiry.to_be_bytes());
        ticket.extend_from_slice(plain);
        let tag = keys
            .current
            .key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(nonce),
                aead::Aad::from(keys.current.id),
                &mut ticket[head..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn open_at(&self, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        // Every check below is on attacker-controlled bytes: each failure
        // returns None (rustls then does a full handshake), none panics.
        if ticket.len() > MAX_TICKET_LEN {
            tracing::debug!(len = ticket.len(), "session ticket refused: too long");
            return None;
        }
        let (id, rest) = ticket.split_first_chunk::<KEY_ID_LEN>()?;
        let (nonce, sealed) = rest.split_first_chunk::<NONCE_LEN>()?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let Some(key) = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.id == *id)
        else {
            tracing::debug!(key_id = %format_args!("{:08x}", u32::from_be_bytes(*id)), "session ticket refused: unknown key");
            return None;
        };
        let mut buf = sealed.to_vec();
        let Ok(plain) = key.key.open_in_place(
            aead::Nonce::assume_unique_for_key(*nonce),
            aead::Aad::from(*id),
            &mut buf,
        ) else {
            tracing::debug!("session ticket refused: authentication failed");
            return None;
        };
        let (expiry, state) = plain.split_first_chunk::<EXPIRY_LEN>()?;
        if u64::from_be_bytes(*expiry) <= now {
            tracing::debug!("session ticket refused: expired");
            return None;
        }
        Some(state.to_vec())
    }
}

fn unix_now() -> u64 {
    SystemTime::now() // seam-ok: ticket expiry; TLS never runs in the simulator
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        self.lifetime
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal_at(plain, unix_now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open_at(cipher, unix_now())
    }
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Key ids only, never key material.
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("SharedTicketer")
            .field(
                "current",
                &format_args!("{:08x}", u32::from_be_bytes(keys.current.id)),
            )
            .field(
                "previous",
                &keys
                    .previous
                    .as_ref()
                    .map(|k| format!("{:08x}", u32::from_be_bytes(k.id))),
            )
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

// ---------------------------------------------------------------------------
// Configurations

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
/// DER (what `master_cert_pin` holds, see [`load_pin`]).
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

/// Reads a certificate pin: a SHA-256 fingerprint in hex (64 digits, any
/// case, colons and spaces allowed: what `openssl x509 -fingerprint
/// -sha256` and [`CertPair::fingerprint_sha256`] print) or the path of a
/// PEM file whose first certificate is pinned.
pub fn load_pin(spec: &str) -> Result<[u8; 32], TlsError> {
    let spec = spec.trim();
    let digits: String = spec
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if digits.len() == 64 && digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            // Checked above: two ASCII hex digits.
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                .map_err(|_| TlsError::BadPin(spec.to_string()))?;
        }
        return Ok(out);
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(TlsError::BadPin(spec.to_string()));
    }
    let pem = read_file("pinned certificate", path)?;
    match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(der)) => Ok(sha256(&der)),
        Some(Err(source)) => Err(TlsError::Pem {
            what: "pinned certificate",
            path: path.to_owned(),
            source,
        }),
        None => Err(TlsError::NoCertificate {
            path: path.to_owned(),
        }),
    }
}

/// Trusts any certificate, still checking handshake signatures. Used where
/// the peer is another FTP server that no one here can vouch for: FXP,
/// where the user who drives both servers chose the peer (DrFTPD does not
/// verify either). Such a connection is private against eavesdroppers, not
/// authenticated. Tests use it as a client that accepted a self-signed
/// certificate.
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

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

fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

// ---------------------------------------------------------------------------
// TLS streams as network streams

// A TLS stream over a `BoxStream` is itself a `BoxStream`, so sessions,
// transfers and the link run unchanged over TLS. `as_tcp` stays `None`:
// `sendfile(2)` would bypass the encryption, so TLS transfers take the copy
// loop.

impl NetStream for tokio_rustls::server::TlsStream<BoxStream> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }
}

impl NetStream for tokio_rustls::client::TlsStream<BoxStream> {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.get_ref().0.peer_addr()
    }
}

// ---------------------------------------------------------------------------
// Handshakes with a deadline, and the data connection's tie to its control
// connection

/// Longest resumption token [`accept`] takes (rustls refuses 32 KiB and
/// more with a panic; ours are 16 bytes).
pub const MAX_RESUMPTION_DATA: usize = 256;

/// The server side of a TLS handshake on `stream`, bounded by `limit`.
/// With `resumption_data`, the tickets this connection issues carry it (see
/// "Tying a data connection to its control connection" above).
pub async fn accept(
    config: &Arc<ServerConfig>,
    stream: BoxStream,
    resumption_data: Option<&[u8]>,
    limit: Duration,
) -> io::Result<tokio_rustls::server::TlsStream<BoxStream>> {
    if resumption_data.is_some_and(|d| d.len() > MAX_RESUMPTION_DATA) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "resumption token too long",
        ));
    }
    let tag = resumption_data.map(<[u8]>::to_vec);
    let acceptor = tokio_rustls::TlsAcceptor::from(config.clone());
    let handshake = acceptor.accept_with(stream, move |conn| {
        if let Some(tag) = &tag {
            conn.set_resumption_data(tag);
        }
    });
    match tokio::time::timeout(limit, handshake).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {} ms", limit.as_millis()),
        )),
    }
}

/// The client side of a TLS handshake on `stream`, bounded by `limit`.
pub async fn connect(
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    stream: BoxStream,
    limit: Duration,
) -> io::Result<tokio_rustls::client::TlsStream<BoxStream>> {
    let connector = tokio_rustls::TlsConnector::from(config.clone());
    match tokio::time::timeout(limit, connector.connect(name, stream)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no TLS handshake within {} ms", limit.as_millis()),
        )),
    }
}

/// How an accepted data connection's TLS session relates to the control
/// session whose token it was accepted with (RFC 4217 §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionTie {
    /// A full handshake: nothing to tell.
    Full,
    /// Resumed, and the ticket carried this control session's token.
    Resumed,
    /// Resumed a session of the cluster whose ticket carries no token
    /// (TLS 1.2: rustls does not hand it back).
    ResumedUntagged,
    /// Resumed a session of *another* control connection: someone else's
    /// ticket.
    Foreign,
}

impl SessionTie {
    pub fn of(conn: &rustls::ServerConnection, token: &[u8]) -> SessionTie {
        if conn.handshake_kind() != Some(rustls::HandshakeKind::Resumed) {
            return SessionTie::Full;
        }
        match conn.received_resumption_data() {
            None => SessionTie::ResumedUntagged,
            Some(t) if t == token => SessionTie::Resumed,
            Some(_) => SessionTie::Foreign,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
    use rustls::{HandshakeKind, NamedGroup, ProtocolVersion};
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const CLIENT_ADDR: &str = "192.0.2.7:50000";
    const SERVER_ADDR: &str = "192.0.2.1:990";

    /// An in-memory connection with addresses, as the network seam gives.
    struct MemStream {
        io: DuplexStream,
        local: SocketAddr,
        peer: SocketAddr,
    }

    impl AsyncRead for MemStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for MemStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }
    }

    impl NetStream for MemStream {
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.local)
        }
        fn peer_addr(&self) -> io::Result<SocketAddr> {
            Ok(self.peer)
        }
    }

    /// (client end, server end)
    fn mem_pair() -> (BoxStream, BoxStream) {
        let (c, s) = tokio::io::duplex(64 * 1024);
        let (ca, sa) = (CLIENT_ADDR.parse().unwrap(), SERVER_ADDR.parse().unwrap());
        (
            Box::new(MemStream {
                io: c,
                local: ca,
                peer: sa,
            }),
            Box::new(MemStream {
                io: s,
                local: sa,
                peer: ca,
            }),
        )
    }

    type ServerTls = tokio_rustls::server::TlsStream<BoxStream>;
    type ClientTls = tokio_rustls::client::TlsStream<BoxStream>;

    async fn handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
    ) -> (io::Result<ServerTls>, io::Result<ClientTls>) {
        let (c, s) = mem_pair();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let acceptor = TlsAcceptor::from(server.clone());
        let connector = TlsConnector::from(client.clone());
        tokio::join!(acceptor.accept(s), connector.connect(name, c))
    }

    /// As [`handshake`], the server tagging the sessions it issues tickets
    /// for with `token` before the handshake starts.
    async fn tagged_handshake(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
        token: &'static [u8],
    ) -> (ServerTls, ClientTls) {
        let (c, s) = mem_pair();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let acceptor = TlsAcceptor::from(server.clone());
        let connector = TlsConnector::from(client.clone());
        let (s, c) = tokio::join!(
            acceptor.accept_with(s, |conn| conn.set_resumption_data(token)),
            connector.connect(name, c)
        );
        (s.unwrap(), c.unwrap())
    }

    /// One exchange each way. The client's read also takes in the TLS 1.3
    /// tickets the server sent after the handshake.
    async fn ping_pong(server: &mut ServerTls, client: &mut ClientTls) {
        client.write_all(b"STOR a\r\n").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 8];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"STOR a\r\n");
        server.write_all(b"150 ok\r\n").await.unwrap();
        server.flush().await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"150 ok\r\n");
    }

    /// A connection that resumes (or not) and only writes, like an upload:
    /// it never reads the tickets the server sends.
    async fn write_only(
        server: &Arc<ServerConfig>,
        client: &Arc<ClientConfig>,
        name: &str,
    ) -> HandshakeKind {
        let (s, c) = handshake(server, client, name).await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_all(b"bytes").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bytes");
        let kind = s.get_ref().1.handshake_kind().unwrap();
        assert_eq!(c.get_ref().1.handshake_kind(), Some(kind));
        kind
    }

    fn ticketer(key: &TicketKey) -> Arc<SharedTicketer> {
        Arc::new(SharedTicketer::new(key, DEFAULT_TICKET_LIFETIME).unwrap())
    }

    fn server(names: &[&str], key: &TicketKey) -> (CertPair, Arc<ServerConfig>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let pair = CertPair::self_signed(&names).unwrap();
        let config = server_config(&pair, ticketer(key)).unwrap();
        (pair, config)
    }

    /// A master and a slave (other certificates) sharing one ticket key,
    /// and a client of `versions` that accepts any certificate.
    fn master_and_slave(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (Arc<ServerConfig>, Arc<ServerConfig>, Arc<ClientConfig>) {
        let key = new_ticket_key().unwrap();
        let (_, master) = server(&["master.example"], &key);
        let (_, slave) = server(&["10.0.0.2"], &key);
        (master, slave, danger_accept_any_client(versions, None))
    }

    fn danger_accept_any_client(
        versions: &[&'static rustls::SupportedProtocolVersion],
        store: Option<Arc<dyn ClientSessionStore>>,
    ) -> Arc<ClientConfig> {
        let provider = provider();
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        if let Some(store) = store {
            config.resumption = Resumption::store(store);
        }
        Arc::new(config)
    }

    fn io_rustls_error(e: &io::Error) -> Option<&rustls::Error> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    }

    const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

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
    async fn self_signed_names_satisfy_a_verifying_client() {
        // An FTP client that trusts the certificate (added to its store)
        // checks the names: IP SAN for an address, DNS SAN for a host name.
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1", "master.example"], &key);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pair.cert_der().clone()).unwrap();
        let client = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        for good in ["127.0.0.1", "master.example"] {
            let (s, c) = handshake(&server, &client, good).await;
            assert!(s.is_ok() && c.is_ok(), "{good}");
        }
        let (_, c) = handshake(&server, &client, "10.9.9.9").await;
        let Err(err) = c else {
            panic!("an address not in the certificate")
        };
        assert!(
            matches!(
                io_rustls_error(&err),
                Some(rustls::Error::InvalidCertificate(_))
            ),
            "{err}"
        );
    }

    /// The point of the module: a client resumes on server B (a slave) the
    /// session it made with server A (the master), two configs with
    /// different certificates sharing only the ticket key.
    async fn resumes_across_servers(versions: &[&'static rustls::SupportedProtocolVersion]) {
        let (master, slave, client) = master_and_slave(versions);

        let (s, c) = handshake(&master, &client, "master.example").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping_pong(&mut s, &mut c).await;
        assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));

        let (s, c) = handshake(&slave, &client, "master.example").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
        assert_eq!(c.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
        ping_pong(&mut s, &mut c).await;
        let expected = if versions == TLS12 {
            ProtocolVersion::TLSv1_2
        } else {
            ProtocolVersion::TLSv1_3
        };
        assert_eq!(s.get_ref().1.protocol_version(), Some(expected));

        // And back: the slave's own tickets open at the master.
        let (s, _) = handshake(&master, &client, "master.example").await;
        assert_eq!(
            s.unwrap().get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed)
        );
    }

    #[tokio::test]
    async fn tls13_session_resumes_on_another_server_with_the_same_key() {
        resumes_across_servers(TLS13).await;
    }

    #[tokio::test]
    async fn tls12_session_resumes_on_another_server_with_the_same_key() {
        resumes_across_servers(TLS12).await;
    }

    #[tokio::test]
    async fn different_ticket_keys_mean_a_full_handshake() {
        for versions in [TLS13, TLS12] {
            let (_, master) = server(&["master.example"], &new_ticket_key().unwrap());
            let (_, slave) = server(&["10.0.0.2"], &new_ticket_key().unwrap());
            let client = danger_accept_any_client(versions, None);
            let (s, c) = handshake(&master, &client, "master.example").await;
            ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;

            let (s, c) = handshake(&slave, &client, "master.example").await;
            let (mut s, mut c) = (s.unwrap(), c.unwrap());
            assert_eq!(
                s.get_ref().1.handshake_kind(),
                Some(HandshakeKind::Full),
                "{versions:?}"
            );
            ping_pong(&mut s, &mut c).await;
        }
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
    async fn resumed_tls13_session_carries_the_control_connections_token() {
        // How a slave can check RFC 4217 §10.2 "same session" across
        // processes: the master tags the control session, the ticket carries
        // the tag (sealed), the slave compares it with the tag of the
        // transfer it was ordered to serve.
        let (master, slave, client) = master_and_slave(TLS13);
        let (mut s, mut c) =
            tagged_handshake(&master, &client, "master.example", b"control-42").await;
        ping_pong(&mut s, &mut c).await;
        assert_eq!(s.get_ref().1.received_resumption_data(), None);

        let (mut s, mut c) =
            tagged_handshake(&slave, &client, "master.example", b"control-42").await;
        assert_eq!(
            s.get_ref().1.received_resumption_data(),
            Some(&b"control-42"[..])
        );
        ping_pong(&mut s, &mut c).await;

        // The slave's own tickets, tagged the same way, carry it on.
        let (s, _) = handshake(&slave, &client, "master.example").await;
        assert_eq!(
            s.unwrap().get_ref().1.received_resumption_data(),
            Some(&b"control-42"[..])
        );

        // A client that did not resume shows no tag at all.
        let stranger = danger_accept_any_client(TLS13, None);
        let (s, _) = handshake(&slave, &stranger, "master.example").await;
        assert_eq!(s.unwrap().get_ref().1.received_resumption_data(), None);
    }

    #[tokio::test]
    async fn resumed_tls12_session_shows_no_token() {
        // rustls 0.23 seals the tag into TLS 1.2 tickets too but never hands
        // it back (only its TLS 1.3 path sets `received_resumption_data`):
        // over TLS 1.2 a slave can only tell that the client resumed *some*
        // session of the cluster. Fails, on purpose, if rustls changes that.
        let (master, slave, client) = master_and_slave(TLS12);
        let (mut s, mut c) =
            tagged_handshake(&master, &client, "master.example", b"control-42").await;
        ping_pong(&mut s, &mut c).await;
        let (s, _) = tagged_handshake(&slave, &client, "master.example", b"control-42").await;
        assert_eq!(s.get_ref().1.handshake_kind(), Some(HandshakeKind::Resumed));
        assert_eq!(s.get_ref().1.received_resumption_data(), None);
    }

    /// Wraps a ticketer and corrupts one byte of every ticket it issues.
    #[derive(Debug)]
    struct Tampering(Arc<SharedTicketer>, usize);

    impl ProducesTickets for Tampering {
        fn enabled(&self) -> bool {
            true
        }
        fn lifetime(&self) -> u32 {
            self.0.lifetime()
        }
        fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
            let mut t = self.0.encrypt(plain)?;
            let i = self.1.min(t.len() - 1);
            t[i] ^= 0x40;
            Some(t)
        }
        fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
            self.0.decrypt(cipher)
        }
    }

    #[tokio::test]
    async fn tampered_ticket_gets_a_full_handshake() {
        // Key id, nonce, sealed state and tag.
        for at in [0, KEY_ID_LEN + 1, KEY_ID_LEN + NONCE_LEN + 3, usize::MAX] {
            for versions in [TLS13, TLS12] {
                let key = new_ticket_key().unwrap();
                let pair = CertPair::self_signed(&["master.example".to_string()]).unwrap();
                let master = server_config(&pair, Arc::new(Tampering(ticketer(&key), at))).unwrap();
                let (_, slave) = server(&["10.0.0.2"], &key);
                let client = danger_accept_any_client(versions, None);
                let (s, c) = handshake(&master, &client, "master.example").await;
                ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;

                let (s, c) = handshake(&slave, &client, "master.example").await;
                let (mut s, mut c) = (s.unwrap(), c.unwrap());
                assert_eq!(
                    s.get_ref().1.handshake_kind(),
                    Some(HandshakeKind::Full),
                    "byte {at}, {versions:?}"
                );
                ping_pong(&mut s, &mut c).await;
            }
        }
    }

    /// A client session store that ignores the server name, like an OpenSSL
    /// FTP client handing its control session to `SSL_set_session` on the
    /// data connection.
    #[derive(Debug)]
    struct OneSessionForAll(ClientSessionMemoryCache);

    fn any_name() -> ServerName<'static> {
        ServerName::try_from("control.session").unwrap()
    }

    impl ClientSessionStore for OneSessionForAll {
        fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
            self.0.set_kx_hint(any_name(), group)
        }
        fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
            self.0.kx_hint(&any_name())
        }
        fn set_tls12_session(
            &self,
            _: ServerName<'static>,
            value: rustls::client::Tls12ClientSessionValue,
        ) {
            self.0.set_tls12_session(any_name(), value)
        }
        fn tls12_session(
            &self,
            _: &ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            self.0.tls12_session(&any_name())
        }
        fn remove_tls12_session(&self, _: &ServerName<'static>) {
            self.0.remove_tls12_session(&any_name())
        }
        fn insert_tls13_ticket(
            &self,
            _: ServerName<'static>,
            value: rustls::client::Tls13ClientSessionValue,
        ) {
            self.0.insert_tls13_ticket(any_name(), value)
        }
        fn take_tls13_ticket(
            &self,
            _: &ServerName<'static>,
        ) -> Option<rustls::client::Tls13ClientSessionValue> {
            self.0.take_tls13_ticket(&any_name())
        }
    }

    #[tokio::test]
    async fn resumption_needs_the_same_sni() {
        for versions in [TLS13, TLS12] {
            let key = new_ticket_key().unwrap();
            let (_, master) = server(&["master.example", "10.0.0.1"], &key);
            let (_, slave) = server(&["10.0.0.2"], &key);
            let resume_at_slave = |control: &'static str, data: &'static str| {
                let (master, slave) = (master.clone(), slave.clone());
                async move {
                    let store = Arc::new(OneSessionForAll(ClientSessionMemoryCache::new(8)));
                    let client = danger_accept_any_client(versions, Some(store));
                    let (s, c) = handshake(&master, &client, control).await;
                    ping_pong(&mut s.unwrap(), &mut c.unwrap()).await;
                    let (s, _) = handshake(&slave, &client, data).await;
                    s.unwrap().get_ref().1.handshake_kind().unwrap()
                }
            };
            // Control by IP (no SNI), data by IP: resumed.
            assert_eq!(
                resume_at_slave("10.0.0.1", "10.0.0.2").await,
                HandshakeKind::Resumed,
                "{versions:?}"
            );
            // Host name on both (the slave's address dialled, the control
            // host name sent as SNI): resumed.
            assert_eq!(
                resume_at_slave("master.example", "master.example").await,
                HandshakeKind::Resumed,
                "{versions:?}"
            );
            // SNI on control, none on data: rustls refuses (RFC 6066 §3).
            assert_eq!(
                resume_at_slave("master.example", "10.0.0.2").await,
                HandshakeKind::Full,
                "{versions:?}"
            );
        }
    }

    #[tokio::test]
    async fn close_without_close_notify_is_an_unexpected_eof() {
        // What an upload's reader sees from a client that drops TCP without
        // closing TLS: the bytes, then UnexpectedEof instead of a clean end.
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1"], &key);
        let client = pinned_client_config(pair.cert_der().to_vec()).unwrap();
        let (s, c) = handshake(&server, &client, "127.0.0.1").await;
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        c.write_all(b"file").await.unwrap();
        c.flush().await.unwrap();
        c.get_mut().0.shutdown().await.unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"file");
        let err = s.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn session_tie_tells_own_foreign_and_full() {
        let (master, slave, client) = master_and_slave(TLS13);
        let (mut s, mut c) =
            tagged_handshake(&master, &client, "master.example", b"control-1").await;
        ping_pong(&mut s, &mut c).await;
        // Resumed with the token it was issued under.
        let (s, _) = tagged_handshake(&slave, &client, "master.example", b"control-1").await;
        assert_eq!(
            SessionTie::of(s.get_ref().1, b"control-1"),
            SessionTie::Resumed
        );
        // The same ticket shown for another control session.
        let (s, _) = tagged_handshake(&slave, &client, "master.example", b"control-2").await;
        assert_eq!(
            SessionTie::of(s.get_ref().1, b"control-2"),
            SessionTie::Foreign
        );
        let stranger = danger_accept_any_client(TLS13, None);
        let (s, _) = tagged_handshake(&slave, &stranger, "master.example", b"control-1").await;
        assert_eq!(
            SessionTie::of(s.get_ref().1, b"control-1"),
            SessionTie::Full
        );
    }

    #[tokio::test]
    async fn accept_and_connect_helpers_bound_the_handshake() {
        let key = new_ticket_key().unwrap();
        let (pair, server) = server(&["127.0.0.1"], &key);
        let client = pinned_client_config(pair.cert_der().to_vec()).unwrap();
        let (c, s) = mem_pair();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let limit = Duration::from_secs(5);
        let (s, c) = tokio::join!(
            accept(&server, s, Some(b"tag"), limit),
            connect(&client, name, c, limit)
        );
        let (mut s, mut c) = (s.unwrap(), c.unwrap());
        ping_pong(&mut s, &mut c).await;
        // A peer that never speaks: the deadline ends the wait.
        let (_c, s) = mem_pair();
        let Err(err) = accept(&server, s, None, Duration::from_millis(20)).await else {
            panic!("a silent peer must time out")
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // An oversized token is refused, not a panic inside rustls.
        let (_c, s) = mem_pair();
        let Err(err) = accept(&server, s, Some(&[0; 40_000]), limit).await else {
            panic!("an oversized token must be refused")
        };
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
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

    #[test]
    fn pins_are_fingerprints_or_pem_files() {
        let pair = CertPair::self_signed(&["127.0.0.1".to_string()]).unwrap();
        let fp = pair.fingerprint_sha256();
        let want = sha256(pair.cert_der());
        assert_eq!(load_pin(&fp).unwrap(), want);
        // openssl's form: upper case with colons.
        let colons: Vec<String> = fp
            .as_bytes()
            .chunks(2)
            .map(|c| String::from_utf8_lossy(c).to_uppercase())
            .collect();
        assert_eq!(load_pin(&colons.join(":")).unwrap(), want);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        pair.write_pem(&cert, &key).unwrap();
        assert_eq!(load_pin(cert.to_str().unwrap()).unwrap(), want);
        assert!(matches!(
            load_pin(key.to_str().unwrap()),
            Err(TlsError::NoCertificate { .. })
        ));
        for bad in ["", "abcd", &fp[..63], "/no/such/file.pem"] {
            assert!(matches!(load_pin(bad), Err(TlsError::BadPin(_))), "{bad}");
        }
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

    // --- SharedTicketer, directly ---------------------------------------

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn ticket_round_trips_between_ticketers_with_the_same_key() {
        let key = new_ticket_key().unwrap();
        let (a, b) = (ticketer(&key), ticketer(&key));
        let t = a.seal_at(b"session state", NOW).unwrap();
        assert_eq!(
            b.open_at(&t, NOW + 10).as_deref(),
            Some(&b"session state"[..])
        );
        assert!(a.enabled());
        assert_eq!(a.lifetime(), 3600);
        // Random nonce: two tickets for one state differ.
        assert_ne!(a.seal_at(b"session state", NOW).unwrap(), t);
    }

    #[test]
    fn ticket_is_refused_under_another_key_or_id() {
        let key = new_ticket_key().unwrap();
        let t = ticketer(&key).seal_at(b"state", NOW).unwrap();
        // Same id, other secret: authentication fails.
        let forged = TicketKey::new(key.id(), [7; 32]);
        assert_eq!(ticketer(&forged).open_at(&t, NOW), None);
        // Same secret, other id: refused before the AEAD.
        let renamed = TicketKey::new(key.id().wrapping_add(1), *key.secret());
        assert_eq!(ticketer(&renamed).open_at(&t, NOW), None);
    }

    #[test]
    fn every_corrupted_or_truncated_ticket_is_refused() {
        let tk = ticketer(&new_ticket_key().unwrap());
        let t = tk.seal_at(b"some session state", NOW).unwrap();
        for i in 0..t.len() {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert_eq!(tk.open_at(&bad, NOW), None, "flipped byte {i}");
        }
        for len in 0..t.len() {
            assert_eq!(tk.open_at(&t[..len], NOW), None, "truncated to {len}");
        }
        let mut long = t.clone();
        long.resize(MAX_TICKET_LEN + 1, 0);
        assert_eq!(tk.open_at(&long, NOW), None);
        assert_eq!(tk.decrypt(&[]), None);
    }

    #[test]
    fn ticket_expires_after_its_lifetime() {
        let key = new_ticket_key().unwrap();
        let tk = SharedTicketer::new(&key, Duration::from_secs(60)).unwrap();
        let t = tk.seal_at(b"state", NOW).unwrap();
        assert!(tk.open_at(&t, NOW + 59).is_some());
        assert_eq!(tk.open_at(&t, NOW + 60), None);
        let capped = SharedTicketer::new(&key, Duration::from_secs(u64::MAX)).unwrap();
        assert_eq!(capped.lifetime(), 7 * 24 * 3600);
    }

    #[test]
    fn rotation_keeps_one_previous_key() {
        let (k1, k2, k3) = (
            TicketKey::new(1, [1; 32]),
            TicketKey::new(2, [2; 32]),
            TicketKey::new(3, [3; 32]),
        );
        let tk = ticketer(&k1);
        let t1 = tk.seal_at(b"one", NOW).unwrap();
        tk.rotate(&k2).unwrap();
        assert_eq!(tk.current_key_id(), 2);
        let t2 = tk.seal_at(b"two", NOW).unwrap();
        assert_eq!(&t2[..KEY_ID_LEN], &2u32.to_be_bytes());
        assert!(tk.open_at(&t1, NOW).is_some(), "previous key still opens");
        tk.rotate(&k3).unwrap();
        assert_eq!(tk.open_at(&t1, NOW), None, "key erased after two rotations");
        assert!(tk.open_at(&t2, NOW).is_some());
    }

    #[test]
    fn debug_output_shows_no_secrets() {
        let key = TicketKey::new(0xabcd, [0x5a; 32]);
        let shown = format!("{key:?} {:?}", ticketer(&key));
        assert!(shown.contains("0000abcd"), "{shown}");
        assert!(!shown.contains("90") && !shown.contains("5a"), "{shown}");
        let pair = CertPair::self_signed(&["a.example".to_string()]).unwrap();
        let shown = format!("{pair:?}");
        assert!(shown.contains(&pair.fingerprint_sha256()), "{shown}");
        assert!(!shown.to_lowercase().contains("key:"), "{shown}");
    }

    // --- Certificates -----------------------------------------------------

    #[test]
    fn pem_round_trip_keeps_the_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let pair = CertPair::self_signed(&["127.0.0.1".into(), "master.example".into()]).unwrap();
        pair.write_pem(&cert, &key).unwrap();
        let back = CertPair::load_pem(&cert, &key).unwrap();
        assert_eq!(back.chain(), pair.chain());
        assert_eq!(back.key.secret_der(), pair.key.secret_der());
        assert_eq!(back.fingerprint_sha256(), pair.fingerprint_sha256());
        assert_eq!(pair.fingerprint_sha256().len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Certificate and key in one file also loads.
        let both = dir.path().join("both.pem");
        let text =
            std::fs::read_to_string(&cert).unwrap() + &std::fs::read_to_string(&key).unwrap();
        std::fs::write(&both, text).unwrap();
        let one = CertPair::load_pem(&both, &both).unwrap();
        assert_eq!(one.cert_der(), pair.cert_der());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = CertPair::self_signed(&["a.example".into()]).unwrap();
        let b = CertPair::self_signed(&["b.example".into()]).unwrap();
        let (ca, ka) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        let (cb, kb) = (dir.path().join("b.crt"), dir.path().join("b.key"));
        a.write_pem(&ca, &ka).unwrap();
        b.write_pem(&cb, &kb).unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not pem at all\n").unwrap();
        let missing = dir.path().join("missing.pem");

        let err = CertPair::load_pem(&ca, &kb).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains("a.crt") && err.to_string().contains("b.key"));

        let err = CertPair::load_pem(&missing, &ka).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = CertPair::load_pem(&junk, &ka).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");

        // A certificate file given as the key.
        let err = CertPair::load_pem(&ca, &ca).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("a.crt"), "{err}");

        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let err = CertPair::load_pem(&broken, &ka).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err}");
        assert!(err.to_string().contains("broken.pem"), "{err}");
        assert_eq!(err.code(), 431);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["not a host name", "", "*.example.com", "a..b"] {
            let err = CertPair::self_signed(&["ok.example".into(), bad.into()]).unwrap_err();
            assert!(matches!(&err, TlsError::BadName(n) if n == bad), "{err}");
        }
        assert!(CertPair::self_signed(&["::1".into(), "a-b.example".into()]).is_ok());
    }

    #[test]
    fn pem_block_is_rfc4648_base64_in_64_columns() {
        let mut out = String::new();
        pem_block("X", b"foobar", &mut out);
        assert_eq!(out, "-----BEGIN X-----\nZm9vYmFy\n-----END X-----\n");
        for (input, b64) in [(&b"f"[..], "Zg=="), (b"fo", "Zm8="), (b"foo", "Zm9v")] {
            let mut out = String::new();
            pem_block("X", input, &mut out);
            assert!(out.contains(&format!("\n{b64}\n")), "{out}");
        }
        let mut out = String::new();
        pem_block("X", &[0u8; 48], &mut out);
        assert_eq!(out.lines().nth(1), Some(&"A".repeat(64)[..]));
        let mut out = String::new();
        pem_block("X", &[0u8; 49], &mut out);
        assert_eq!(out.lines().nth(2), Some("AA=="));
    }
}

//! Certificates: [`CertPair`] (a chain and its key, read from PEM or made
//! self-signed, written back as PEM with the key in an owner-only file),
//! SHA-256 fingerprints, and the certificate pins a slave checks its master
//! against ([`load_pin`]).

use std::fmt;
use std::io;
use std::path::Path;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use super::{provider, TlsError};

/// A certificate chain (leaf first) and its private key. The chain is never
/// empty and the key matches the leaf: both constructors check.
pub struct CertPair {
    // Visible to config.rs, which hands both to rustls.
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivateKeyDer<'static>,
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

pub(super) fn sha256(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::ClientConfig;

    use super::*;
    use crate::tls::new_ticket_key;
    use crate::tls::testutil::*;

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

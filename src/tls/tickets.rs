//! Session tickets the whole cluster shares: the [`TicketKey`] the master
//! hands to its slaves, and [`SharedTicketer`], which seals and opens
//! tickets with it so that a client resumes on a slave the session it made
//! with the master (see "Why a shared ticket key" in the module overview).

use std::fmt;
use std::sync::RwLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ring::aead;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;

use super::TlsError;

/// How long a session ticket may be used, unless the caller says otherwise.
/// Long enough for a client's whole FTP session of data connections, short
/// enough that a stolen ticket key exposes little.
pub const DEFAULT_TICKET_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// Longest ticket [`SharedTicketer::decrypt`] looks at. Ours are a few
/// hundred bytes (no client certificates, no ALPN); refusing long input
/// before touching the AEAD bounds the work an attacker can cause and
/// blunts partitioning-oracle attacks on the tag.
const MAX_TICKET_LEN: usize = 2048;

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 12;
const EXPIRY_LEN: usize = 8;
static TICKET_AEAD: &aead::Algorithm = &aead::CHACHA20_POLY1305;

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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::{ClientSessionMemoryCache, ClientSessionStore};
    use rustls::pki_types::ServerName;
    use rustls::{HandshakeKind, NamedGroup, ProtocolVersion};

    use super::*;
    use crate::tls::testutil::*;
    use crate::tls::{server_config, CertPair};

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
}

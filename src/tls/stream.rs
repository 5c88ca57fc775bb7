//! TLS on a connection: [`accept`] and [`connect`] bounded by a deadline,
//! TLS streams as [`NetStream`]s again, and [`SessionTie`], which tells
//! whether a data connection resumed the session of its own control
//! connection (RFC 4217 §10.2).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};

use crate::env::{BoxStream, NetStream};

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

/// Longest resumption token [`accept`] takes (rustls refuses 32 KiB and
/// more with a panic; ours are 16 bytes).
pub const MAX_RESUMPTION_DATA: usize = 256;

/// The server side of a TLS handshake on `stream`, bounded by `limit`.
/// With `resumption_data`, the tickets this connection issues carry it (see
/// "Tying a data connection to its control connection" in the module
/// overview).
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
    use rustls::HandshakeKind;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::tls::testutil::*;
    use crate::tls::{new_ticket_key, pinned_client_config};

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
}

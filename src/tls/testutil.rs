//! Fixtures of the TLS tests: an in-memory connection with addresses,
//! handshakes over it, and servers and clients to run them with.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::{ClientSessionStore, Resumption};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, HandshakeKind, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::config::AcceptAnyCert;
use super::{
    new_ticket_key, provider, server_config, CertPair, SharedTicketer, TicketKey,
    DEFAULT_TICKET_LIFETIME,
};
use crate::env::{BoxStream, NetStream};

pub(super) const CLIENT_ADDR: &str = "192.0.2.7:50000";
pub(super) const SERVER_ADDR: &str = "192.0.2.1:990";

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
pub(super) fn mem_pair() -> (BoxStream, BoxStream) {
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

pub(super) type ServerTls = tokio_rustls::server::TlsStream<BoxStream>;
pub(super) type ClientTls = tokio_rustls::client::TlsStream<BoxStream>;

pub(super) async fn handshake(
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
pub(super) async fn tagged_handshake(
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
pub(super) async fn ping_pong(server: &mut ServerTls, client: &mut ClientTls) {
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
pub(super) async fn write_only(
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

pub(super) fn ticketer(key: &TicketKey) -> Arc<SharedTicketer> {
    Arc::new(SharedTicketer::new(key, DEFAULT_TICKET_LIFETIME).unwrap())
}

pub(super) fn server(names: &[&str], key: &TicketKey) -> (CertPair, Arc<ServerConfig>) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let pair = CertPair::self_signed(&names).unwrap();
    let config = server_config(&pair, ticketer(key)).unwrap();
    (pair, config)
}

/// A master and a slave (other certificates) sharing one ticket key,
/// and a client of `versions` that accepts any certificate.
pub(super) fn master_and_slave(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> (Arc<ServerConfig>, Arc<ServerConfig>, Arc<ClientConfig>) {
    let key = new_ticket_key().unwrap();
    let (_, master) = server(&["master.example"], &key);
    let (_, slave) = server(&["10.0.0.2"], &key);
    (master, slave, danger_accept_any_client(versions, None))
}

pub(super) fn danger_accept_any_client(
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

pub(super) fn io_rustls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

pub(super) const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
pub(super) const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

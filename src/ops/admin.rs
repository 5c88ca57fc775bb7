//! The admin listener (`admin_listen`): a small HTTP/1.1 server for
//! monitoring, answering
//!
//! - `GET /metrics`: the Prometheus text exposition ([`super::Metrics`]);
//! - `GET /health`: `200 ok` while the process serves at all;
//! - `GET /ready`: `200 ready` when the probe given to [`serve`] says so
//!   (for a master: the store is open and at least one slave is online),
//!   else `503` with the reason.
//!
//! `HEAD` works too. One request per connection (`Connection: close`), a
//! request head of at most 8 KiB read within 5 s, at most 64 connections
//! at a time; anything else gets a 4xx and the connection is closed. It has
//! no authentication: bind it to loopback or a monitoring network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::metrics::{Metrics, CONTENT_TYPE};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head, and to read the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at the same time; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin_listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Whether the service can do its work: `Ok` or the reason it cannot.
pub type ReadyProbe = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;
/// Called before each `/metrics` answer, to bring gauges up to date from
/// state that is read rather than pushed.
pub type Refresh = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// What the admin listener serves.
#[derive(Clone)]
pub struct AdminService {
    pub metrics: Arc<Metrics>,
    pub ready: ReadyProbe,
    pub refresh: Option<Refresh>,
}

/// Binds the admin listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// A running admin listener; it stops when this is dropped.
pub struct AdminHandle {
    pub addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

/// Binds `addr` and serves `service` there until the handle is dropped.
pub async fn start(addr: SocketAddr, service: AdminService) -> Result<AdminHandle, AdminError> {
    let listener = bind(addr).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| AdminError::Bind { addr, source })?;
    let (stop, rx) = watch::channel(false);
    tokio::spawn(serve(listener, service, rx));
    tracing::info!(%addr, "admin listener: /metrics, /health, /ready");
    Ok(AdminHandle { addr, _stop: stop })
}

/// Serves until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    service: AdminService,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let service = service.clone();
                tokio::spawn(async move {
                    let _ =
                        tokio::time::timeout(IO_TIMEOUT * 2, connection(stream, &service)).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(mut stream: TcpStream, service: &AdminService) {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(h)) => h,
        Ok(Err(Incomplete::TooLarge)) => {
            let _ = respond(&mut stream, &text(431, "request head too large\n"), false).await;
            return;
        }
        // Closed, timed out or broken: nothing worth answering.
        Ok(Err(Incomplete::Closed)) | Err(_) => return,
    };
    let (answer, head_only) = match parse_request_line(&head) {
        Some((method @ ("GET" | "HEAD"), target)) => (route(target, service), method == "HEAD"),
        Some(_) => (text(405, "only GET and HEAD\n"), false),
        None => (text(400, "bad request\n"), false),
    };
    let _ = respond(&mut stream, &answer, head_only).await;
}

enum Incomplete {
    Closed,
    TooLarge,
}

/// Reads until the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, Incomplete> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|_| Incomplete::Closed)?;
        if n == 0 {
            return Err(Incomplete::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Ok(buf);
        }
        if buf.len() > MAX_HEAD {
            return Err(Incomplete::TooLarge);
        }
    }
}

/// `METHOD TARGET HTTP/1.x` from the head's first line.
fn parse_request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    Some((method, target))
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

fn text(status: u16, body: &str) -> Answer {
    Answer {
        status,
        content_type: "text/plain; charset=utf-8",
        body: body.to_string(),
    }
}

fn route(target: &str, service: &AdminService) -> Answer {
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => {
            if let Some(refresh) = &service.refresh {
                refresh(&service.metrics);
            }
            Answer {
                status: 200,
                content_type: CONTENT_TYPE,
                body: service.metrics.encode(),
            }
        }
        "/health" => text(200, "ok\n"),
        "/ready" => match (service.ready)() {
            Ok(()) => text(200, "ready\n"),
            Err(why) => text(503, &format!("not ready: {why}\n")),
        },
        _ => text(404, "not found: try /metrics, /health or /ready\n"),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

async fn respond(stream: &mut TcpStream, a: &Answer, head_only: bool) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        a.status,
        reason(a.status),
        a.content_type,
        a.body.len()
    );
    if a.status == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&a.body);
    }
    tokio::time::timeout(IO_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(ready: bool) -> (SocketAddr, watch::Sender<bool>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let service = AdminService {
            metrics: metrics.clone(),
            ready: Arc::new(move || {
                if ready {
                    Ok(())
                } else {
                    Err("no slave online".into())
                }
            }),
            refresh: Some(Arc::new(|m: &Metrics| m.set_sessions(7))),
        };
        tokio::spawn(serve(listener, service, rx));
        (addr, tx, metrics)
    }

    async fn ask(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(raw).await.unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn answers_metrics_health_and_ready() {
        let (addr, _stop, _m) = start(true).await;
        let r = ask(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("\ndftpd_sessions 7\n"), "refreshed first: {r}");
        let r = ask(addr, b"GET /health HTTP/1.0\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        let r = ask(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = ask(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        let (addr, _stop, _m) = start(false).await;
        let r = ask(addr, b"GET /ready HTTP/1.1\r\n\r\n").await;
        assert!(
            r.starts_with("HTTP/1.1 503") && r.contains("no slave online"),
            "{r}"
        );
    }

    #[tokio::test]
    async fn garbage_gets_a_4xx_and_never_a_panic() {
        let (addr, _stop, _m) = start(true).await;
        for (raw, code) in [
            (&b"POST /metrics HTTP/1.1\r\n\r\n"[..], "405"),
            (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
            (b"\xff\xfe\r\n\r\n", "400"),
            (b"GET metrics HTTP/1.1\r\n\r\n", "400"),
            (b"GET / HTTP/2\r\n\r\n", "400"),
            (b"\r\n\r\n", "400"),
        ] {
            let r = ask(addr, raw).await;
            assert!(r.starts_with(&format!("HTTP/1.1 {code}")), "{raw:?}: {r}");
        }
        let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
        big.extend(std::iter::repeat_n(b'a', 10_000));
        let r = ask(addr, &big).await;
        assert!(r.starts_with("HTTP/1.1 431"), "{r}");
        // A client that closes at once is simply dropped; the server goes on.
        drop(TcpStream::connect(addr).await.unwrap());
        let r = ask(addr, b"GET /health HTTP/1.1\r\n\r\n").await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
}

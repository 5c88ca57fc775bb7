//! Control connections and TCP urgent data: ABOR as clients send it.
//!
//! RFC 959 §4.1.3 has a client interrupt a transfer with the Telnet
//! "Interrupt Process" and "Synch" (IAC IP, then IAC DM with DM as TCP
//! urgent data) before `ABOR`. lftp does exactly that; Python's ftplib
//! `FTP.abort()` sends the whole `ABOR\r\n` with MSG_OOB, which makes its
//! last byte urgent. Two things keep such a line whole:
//!
//! - **SO_OOBINLINE** ([`urgent_data_inline`]): without it the kernel takes
//!   the urgent byte out of the stream, so ftplib's line loses its LF (no
//!   reply; the next command is read as the rest of that line) and lftp's
//!   sequence its DM (`IAC` then swallows the `A`: `ABOR` read as `BOR`).
//!   Inline, the byte stays in place and the line decoder
//!   (`proto::line`) drops the Telnet commands.
//! - **Reading past the urgent mark** ([`ControlStream`]): a `read(2)` stops
//!   just before the urgent byte, so the read comes back short although
//!   the rest of the line is already queued. tokio takes a short read for
//!   a drained socket and waits for the next readiness edge, which never
//!   comes: the client waits for its reply. After a short read that ends
//!   inside a line, the stream reads on, without waiting, until the socket
//!   is empty.
//!
//! Neither applies under TLS (urgent data cannot be sent inside it: lftp
//! puts the Telnet bytes in the TLS stream, where the decoder drops them)
//! nor in the simulator (its streams have no socket).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::env::{BoxStream, NetStream};

/// Most bytes read ahead past an urgent mark (a line is at most 4096).
const READ_AHEAD_MAX: usize = 64 * 1024;

/// Sets SO_OOBINLINE on the stream's socket, if it has one.
pub(super) fn urgent_data_inline(stream: &mut BoxStream) {
    let Some(tcp) = stream.as_tcp() else {
        return;
    };
    let on: nix::libc::c_int = 1;
    // SAFETY: an open socket (it lives as long as `tcp`) and a pointer to
    // an int of the length given.
    let r = unsafe {
        nix::libc::setsockopt(
            tcp.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_OOBINLINE,
            (&on as *const nix::libc::c_int).cast(),
            std::mem::size_of::<nix::libc::c_int>() as nix::libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        tracing::warn!(error = %e, "SO_OOBINLINE not set: an urgent ABOR may not be read");
    }
}

/// A control connection that reads past TCP urgent marks (see the module
/// documentation). Everything else passes through.
pub(super) struct ControlStream {
    inner: BoxStream,
    /// The socket (`None` without one: the simulator, unit tests).
    fd: Option<RawFd>,
    /// Cleared at AUTH TLS: from then on the bytes are TLS records.
    plain: Arc<AtomicBool>,
    /// Bytes read ahead past an urgent mark, handed out first.
    ahead: Vec<u8>,
}

impl ControlStream {
    /// Wraps a control connection; clearing the flag returned (at AUTH
    /// TLS) stops the reading ahead.
    pub(super) fn wrap(mut inner: BoxStream) -> (BoxStream, Arc<AtomicBool>) {
        let fd = inner.as_tcp().map(|t| t.as_raw_fd());
        let plain = Arc::new(AtomicBool::new(true));
        let stream = ControlStream {
            inner,
            fd,
            plain: plain.clone(),
            ahead: Vec::new(),
        };
        (Box::new(stream), plain)
    }

    /// Reads what the socket holds now into `ahead`, without waiting,
    /// until it is empty (or `READ_AHEAD_MAX`).
    fn read_ahead(&mut self, fd: RawFd) {
        let mut chunk = [0u8; 4096];
        while self.ahead.len() < READ_AHEAD_MAX {
            // SAFETY: `chunk` is writable for its length; the socket is
            // open while `inner` is.
            let n = unsafe {
                nix::libc::recv(
                    fd,
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    nix::libc::MSG_DONTWAIT,
                )
            };
            // 0: end of stream; < 0: empty now (EAGAIN) or an error. tokio
            // reports both at the next read (it never clears "closed").
            let Ok(n @ 1..) = usize::try_from(n) else {
                return;
            };
            self.ahead.extend_from_slice(&chunk[..n]);
        }
    }
}

impl AsyncRead for ControlStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let plain = this.plain.load(Ordering::Relaxed);
        if !this.ahead.is_empty() {
            if plain {
                let n = this.ahead.len().min(buf.remaining());
                buf.put_slice(&this.ahead[..n]);
                this.ahead.drain(..n);
                return Poll::Ready(Ok(()));
            }
            // Plaintext read before AUTH TLS: never handed to TLS.
            this.ahead = Vec::new();
        }
        let before = buf.filled().len();
        let room = buf.remaining();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let got = &buf.filled()[before..];
        // A short read ending inside a line: maybe stopped at an urgent mark
        // with the rest already queued (a read that ends a line, as nearly
        // every command does, costs nothing more).
        if let (Some(fd), true) = (this.fd, plain) {
            if !got.is_empty() && got.len() < room && got.last() != Some(&b'\n') {
                this.read_ahead(fd);
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ControlStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl NetStream for ControlStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.inner.peer_addr()
    }
    fn as_tcp(&mut self) -> Option<&mut tokio::net::TcpStream> {
        self.inner.as_tcp()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A connected pair on loopback: the server's end wrapped as a control
    /// connection with SO_OOBINLINE, the client's raw socket.
    async fn pair() -> (BoxStream, Arc<AtomicBool>, std::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut server: BoxStream = Box::new(server);
        urgent_data_inline(&mut server);
        let (server, plain) = ControlStream::wrap(server);
        (server, plain, client)
    }

    fn send_urgent(client: &std::net::TcpStream, bytes: &[u8]) {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and buffer.
        let n = unsafe {
            nix::libc::send(
                client.as_raw_fd(),
                bytes.as_ptr().cast(),
                bytes.len(),
                nix::libc::MSG_OOB,
            )
        };
        assert_eq!(n, bytes.len() as isize);
    }

    /// Reads until `want` bytes came, within a second (a read that waits
    /// for a readiness edge that never comes times out).
    async fn read_exactly(server: &mut BoxStream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while got.len() < want {
            let n = tokio::time::timeout(std::time::Duration::from_secs(1), server.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("stuck after {:?}", String::from_utf8_lossy(&got)))
                .unwrap();
            assert!(n > 0, "closed");
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_line_sent_as_urgent_data_is_read_whole() {
        let (mut server, _, mut client) = pair().await;
        // ftplib's abort(): the LF is the urgent byte; the read stops before
        // it, with the LF already queued.
        send_urgent(&client, b"ABOR\r\n");
        assert_eq!(read_exactly(&mut server, 6).await, b"ABOR\r\n");
        // lftp's Synch: IAC IP IAC, then DM urgent, then the command.
        use std::io::Write;
        client.write_all(b"\xff\xf4\xff").unwrap();
        send_urgent(&client, b"\xf2");
        client.write_all(b"ABOR\r\n").unwrap();
        assert_eq!(
            read_exactly(&mut server, 10).await,
            b"\xff\xf4\xff\xf2ABOR\r\n"
        );
        // Plain lines pass as they are; writes too.
        client.write_all(b"NOOP\r\n").unwrap();
        assert_eq!(read_exactly(&mut server, 6).await, b"NOOP\r\n");
        server.write_all(b"200 ok\r\n").await.unwrap();
        let mut reply = [0u8; 8];
        std::io::Read::read_exact(&mut client, &mut reply).unwrap();
        assert_eq!(&reply, b"200 ok\r\n");
    }

    #[tokio::test]
    async fn what_was_read_ahead_is_dropped_once_tls_starts() {
        let (mut server, plain, mut client) = pair().await;
        // The read stops before the urgent LF, which is read ahead.
        send_urgent(&client, b"AUTH TLS\r\n");
        let mut buf = [0u8; 64];
        let n = server.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"AUTH TLS\r");
        // AUTH accepted: the LF, read in clear, never reaches TLS.
        plain.store(false, Ordering::Relaxed);
        use std::io::Write;
        client.write_all(b"\x16\x03\x01").unwrap();
        assert_eq!(read_exactly(&mut server, 3).await, b"\x16\x03\x01");
    }
}

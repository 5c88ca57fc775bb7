//! The turmoil side of dftpd's environment seam ([`dftpd::env`]): sockets
//! are turmoil's simulated TCP, wall-clock time is the simulation's epoch
//! plus its elapsed time, and every host's RNG seed derives from the one
//! scenario seed. Only usable inside a turmoil host.
//!
//! turmoil binds only the unspecified address or loopback, so a bind to any
//! other IP (a slave's own data address, the address a master session was
//! reached on) becomes a bind to `0.0.0.0` on the same port; the host has
//! one address, so nothing else could have reached it anyway.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use dftpd::env::{BoxStream, Clock, Env, Net, NetListener, NetStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Wall-clock start of every simulation: 2026-01-01T00:00:00Z. Fixed, so
/// listings and MDTM replies are the same in every run.
pub const EPOCH_SECS: u64 = 1_767_225_600;

pub fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH_SECS)
}

/// turmoil TCP behind the dftpd `Net` trait.
pub struct SimNet;

struct SimListener(turmoil::net::TcpListener);

struct SimStream(turmoil::net::TcpStream);

/// The address turmoil will accept for a bind of `addr`.
pub fn bindable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() || addr.ip().is_loopback() {
        addr
    } else {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port())
    }
}

#[async_trait]
impl Net for SimNet {
    async fn bind(&self, addr: SocketAddr) -> io::Result<Box<dyn NetListener>> {
        if !addr.is_ipv4() {
            // The simulated network is IPv4; turmoil panics on a mismatch.
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "IPv6 is not simulated",
            ));
        }
        let l = turmoil::net::TcpListener::bind(bindable(addr)).await?;
        Ok(Box::new(SimListener(l)))
    }

    async fn connect(&self, addr: SocketAddr) -> io::Result<BoxStream> {
        if !addr.is_ipv4() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                "IPv6 is not simulated",
            ));
        }
        let s = turmoil::net::TcpStream::connect(addr).await?;
        Ok(Box::new(SimStream(s)))
    }
}

#[async_trait]
impl NetListener for SimListener {
    async fn accept(&self) -> io::Result<(BoxStream, SocketAddr)> {
        let (s, a) = self.0.accept().await?;
        Ok((Box::new(SimStream(s)), a))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl NetStream for SimStream {
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
    fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.0.peer_addr()
    }
}

/// Simulated wall clock: the fixed epoch plus simulated elapsed time.
pub struct SimClock;

impl Clock for SimClock {
    fn unix_now(&self) -> i64 {
        let since = turmoil::since_epoch().unwrap_or(Duration::from_secs(EPOCH_SECS));
        since.as_secs() as i64
    }
}

/// Seed for one host: the scenario seed mixed with the host name and how
/// many times the host has started, so a restarted slave draws new nonces
/// yet the whole run stays a function of the scenario seed.
pub fn host_seed(seed: u64, host: &str, incarnation: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    splitmix(seed ^ h ^ incarnation.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// One step of splitmix64: a fast, well-mixed function of its input.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The environment of one simulated master or slave.
pub fn sim_env(seed: u64, host: &str, incarnation: u64) -> Env {
    Env::new(
        Arc::new(SimNet),
        Arc::new(SimClock),
        host_seed(seed, host, incarnation),
    )
}

/// Deterministic file content: `size` bytes from a splitmix64 stream.
pub fn content(seed: u64, size: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(size as usize);
    let mut state = seed;
    while (out.len() as u64) < size {
        state = state.wrapping_add(1);
        let word = splitmix(state).to_le_bytes();
        let take = ((size - out.len() as u64) as usize).min(8);
        out.extend_from_slice(&word[..take]);
    }
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_addresses_map_to_unspecified() {
        let a: SocketAddr = "192.168.0.3:50000".parse().unwrap();
        assert_eq!(bindable(a), "0.0.0.0:50000".parse().unwrap());
        let l: SocketAddr = "127.0.0.1:21".parse().unwrap();
        assert_eq!(bindable(l), l);
    }

    #[test]
    fn seeds_and_content_are_stable() {
        assert_eq!(host_seed(1, "s1", 0), host_seed(1, "s1", 0));
        assert_ne!(host_seed(1, "s1", 0), host_seed(1, "s2", 0));
        assert_ne!(host_seed(1, "s1", 0), host_seed(1, "s1", 1));
        assert_ne!(host_seed(1, "s1", 0), host_seed(2, "s1", 0));
        let c = content(7, 21);
        assert_eq!(c.len(), 21);
        assert_eq!(c, content(7, 21));
        assert_eq!(&content(7, 30)[..21], &c[..]);
        assert_ne!(content(8, 21), c);
    }
}

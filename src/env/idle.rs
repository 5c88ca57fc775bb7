//! Listening sockets kept open between uses, by address: binding,
//! listening and closing one per transfer cost the master five system calls
//! per file (its catch listener at each announced port, which the slaves
//! now reuse).
//!
//! A listener comes out of the pool drained ([`NetListener::drain`]):
//! whatever connected to it while it sat idle was closed, so nothing made
//! before it is handed out again reaches its new user.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Env, NetListener};

/// How long a listener stays idle at most: a port its slave stopped
/// announcing (the slave went away, or its pool shrank) is closed again
/// soon, refusing connections as before.
pub const IDLE_FOR: Duration = Duration::from_secs(30);

type Entry = (SocketAddr, Instant, Box<dyn NetListener>);

/// Idle listeners, oldest first, at most `cap` of them, none idle for
/// longer than [`IDLE_FOR`].
pub struct IdleListeners {
    idle: Mutex<VecDeque<Entry>>,
    cap: usize,
}

impl IdleListeners {
    pub fn new(cap: usize) -> Arc<IdleListeners> {
        Arc::new(IdleListeners {
            idle: Mutex::new(VecDeque::new()),
            cap,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A listener at `addr`: an idle one (drained), else a new one; `None`
    /// when `addr` cannot be bound. Back to the pool when the guard drops.
    pub async fn listen(self: &Arc<Self>, env: &Env, addr: SocketAddr) -> Option<Pooled> {
        let (idle, expired) = {
            let mut idle = self.lock();
            let expired = expire(&mut idle);
            let found = idle
                .iter()
                .position(|(a, _, _)| *a == addr)
                .and_then(|i| idle.remove(i));
            (found, expired)
        };
        drop(expired);
        let listener = match idle {
            Some((_, _, l)) => {
                let closed = l.drain();
                if closed > 0 {
                    tracing::info!(
                        %addr,
                        closed,
                        "closed connections made to an idle listener"
                    );
                }
                l
            }
            None => env.net.bind(addr).await.ok()?,
        };
        Some(Pooled {
            addr,
            listener: Some(listener),
            pool: self.clone(),
        })
    }

    /// How many listeners are idle now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn put(&self, addr: SocketAddr, l: Box<dyn NetListener>) {
        let evicted = {
            let mut idle = self.lock();
            let mut evicted = expire(&mut idle);
            idle.push_back((addr, Instant::now(), l));
            if idle.len() > self.cap {
                evicted.extend(idle.pop_front());
            }
            evicted
        };
        // Closed outside the lock.
        drop(evicted);
    }
}

/// Takes out the listeners idle for longer than [`IDLE_FOR`] (the oldest
/// are first), for the caller to close outside the lock.
fn expire(idle: &mut VecDeque<Entry>) -> Vec<Entry> {
    let now = Instant::now();
    let n = idle
        .iter()
        .take_while(|(_, since, _)| now.duration_since(*since) > IDLE_FOR)
        .count();
    idle.drain(..n).collect()
}

/// A listener taken from [`IdleListeners`]; it goes back when dropped.
pub struct Pooled {
    addr: SocketAddr,
    listener: Option<Box<dyn NetListener>>,
    pool: Arc<IdleListeners>,
}

impl std::ops::Deref for Pooled {
    type Target = dyn NetListener;
    fn deref(&self) -> &(dyn NetListener + 'static) {
        match &self.listener {
            Some(l) => l.as_ref(),
            None => unreachable!("taken only in drop"),
        }
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            self.pool.put(self.addr, l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// An idle listener is handed out again (the pool is left empty), and
    /// a connection made while it sat idle is closed before that.
    #[tokio::test]
    async fn an_idle_listener_is_handed_out_again_without_what_connected_meanwhile() {
        let env = Env::real();
        let pool = IdleListeners::new(2);
        let l = env.net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        pool.put(addr, l);
        let mut idle_conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let again = pool.listen(&env, addr).await.unwrap();
        assert_eq!(again.local_addr().unwrap(), addr);
        assert!(pool.is_empty());
        let mut got = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            idle_conn.read_to_end(&mut got),
        )
        .await
        .expect("closed at the second use");
        assert!(read.is_err() || got.is_empty());
        // A connection after it is handed out is the new user's.
        let _c = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, peer) = again.accept().await.unwrap();
        assert!(peer.ip().is_loopback());
    }

    /// A listener idle for longer than `IDLE_FOR` is closed (its port
    /// refuses connections again) at the pool's next use.
    #[tokio::test(start_paused = true)]
    async fn a_listener_idle_for_too_long_is_closed() {
        let env = Env::real();
        let pool = IdleListeners::new(4);
        let a = env.net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        pool.put(a_addr, a);
        tokio::time::advance(IDLE_FOR + Duration::from_secs(1)).await;
        let b = env.net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        pool.put(b.local_addr().unwrap(), b);
        assert_eq!(pool.len(), 1);
        assert!(std::net::TcpStream::connect(a_addr).is_err());
    }

    /// At most `cap` listeners stay idle: the oldest is closed.
    #[tokio::test]
    async fn the_oldest_idle_listener_is_closed_beyond_the_cap() {
        let env = Env::real();
        let pool = IdleListeners::new(1);
        let a = env.net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let a_addr = a.local_addr().unwrap();
        let b = env.net.bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let b_addr = b.local_addr().unwrap();
        pool.put(a_addr, a);
        pool.put(b_addr, b);
        assert_eq!(pool.len(), 1);
        assert!(tokio::net::TcpStream::connect(a_addr).await.is_err());
        assert!(tokio::net::TcpStream::connect(b_addr).await.is_ok());
    }
}

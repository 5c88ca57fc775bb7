//! Data connections: passive endpoints on the master or a slave (with the
//! catch listener for clients that ignore the 227 address), active
//! connections, and the listings the master sends itself.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{ControlSession, Endpoint};
pub(super) use crate::env::poll_once;
use crate::env::{accept_from, bind_in_range, BoxStream, Env, IdleListeners, NetListener, Pooled};
use crate::link::{MasterMsg, Request, Response};
use crate::master::db::SlaveId;
use crate::master::hub::SlaveLink;
use crate::master::observe::SessionEvent;
use crate::master::session::{ListingJob, Target};
use crate::proto::Reply;

impl ControlSession {
    pub(super) async fn open_passive(
        &mut self,
        target: Target,
        xfer: u64,
    ) -> Result<SocketAddr, String> {
        let (range, advertised, timeout) = {
            let st = self.state.lock();
            (
                st.config.passive_range().unwrap_or((0, 0)),
                st.config.pasv_address,
                st.config.data_timeout(),
            )
        };
        match target {
            Target::Master => {
                let ip = self.session.local.ip();
                let l = bind_in_range(&self.env, ip, range)
                    .await
                    .map_err(|e| e.to_string())?;
                let port = l.local_addr().map_err(|e| e.to_string())?.port();
                self.endpoint = Endpoint::Master(l);
                Ok(SocketAddr::new(advertised.unwrap_or(ip), port))
            }
            Target::Slave(s) => {
                // A client that ignores the 227 address lands on the
                // master's address at the slave's port, so the master
                // listens there too; when that port is taken here (another
                // program's socket), another listener is tried.
                for attempt in 1..=CATCH_ATTEMPTS {
                    let addr = self.slave_listener(s, xfer, timeout).await?;
                    let caught = matches!(&self.endpoint, Endpoint::Slave { catch: Some(_), .. });
                    if caught || addr.ip() == self.session.local.ip() || attempt == CATCH_ATTEMPTS {
                        return Ok(addr);
                    }
                    tracing::debug!(%addr, "port taken at the master's address; another listener");
                    self.release_endpoint();
                }
                Err("no passive listener".into())
            }
        }
    }

    /// Gets a listener of slave `s` for transfer `xfer` (one opened ahead,
    /// or a new one) and records it as the session's endpoint.
    async fn slave_listener(
        &mut self,
        s: SlaveId,
        xfer: u64,
        timeout: std::time::Duration,
    ) -> Result<SocketAddr, String> {
        let (link, rid, ready, peer) = {
            let mut st = self.state.lock();
            let peer = self.session.passive_peer(&st);
            let rid = st.next_id();
            let link = st.link(s);
            let ready = match (&link, st.slaves.get_mut(s)) {
                (Some(_), Some(info)) => info.ready_listeners.pop_front(),
                _ => None,
            };
            (link, rid, ready, peer)
        };
        let link = link.ok_or("the slave went offline")?;
        if let Some((token, addr)) = ready {
            // Fast path: a listener opened ahead. The claim waits for the
            // data command and leaves in the same write as the transfer
            // order (one link message, one wake-up of the slave per
            // transfer); the client's connection waits in the listener's
            // backlog meanwhile.
            let claim = Claim {
                token,
                accept_from: peer,
                announced: tokio::time::Instant::now(),
            };
            self.slave_endpoint(xfer, link, addr, Some(claim)).await;
            return Ok(addr);
        }
        let rx = link.request(
            rid,
            Request::Listen {
                xfer,
                accept_from: peer,
            },
        );
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Response::Listening { addr }))
                if !self.state.lock().slaves.is_own_address(s, addr) =>
            {
                tracing::warn!(%addr, "slave answered with a foreign listener address");
                Err("the slave named a listener on another host".into())
            }
            Ok(Ok(Response::Listening { addr })) => {
                self.slave_endpoint(xfer, link, addr, None).await;
                Ok(addr)
            }
            Ok(Ok(Response::Failed(f))) => Err(format!("{f:?}")),
            Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
            Ok(Err(_)) => Err("the slave went offline".into()),
            Err(_) => Err("the slave did not answer in time".into()),
        }
    }

    /// Records the slave listener announced at `addr`, with the master's
    /// catch listener at the same port. `claim`: the claim of a listener
    /// opened ahead, not sent yet.
    pub(super) async fn slave_endpoint(
        &mut self,
        xfer: u64,
        link: SlaveLink,
        addr: SocketAddr,
        claim: Option<Claim>,
    ) {
        // Also for a client that reached this slave directly before: a
        // session may change its mind (or be several programs behind one
        // NAT address), and a refused connection is worse than a socket.
        let own = self.session.local.ip();
        let catch = catch_listener(&self.env, &self.state.idle_catch, own, addr).await;
        self.endpoint = Endpoint::Slave {
            xfer,
            link,
            addr,
            catch,
            claim,
        };
    }

    /// Opens the client side of a master-served data connection.
    pub(super) async fn master_data(
        &mut self,
        active: Option<SocketAddr>,
    ) -> std::io::Result<BoxStream> {
        let timeout = self.state.lock().config.data_timeout();
        match active {
            Some(addr) => match tokio::time::timeout(timeout, self.env.net.connect(addr)).await {
                Ok(r) => r,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )),
            },
            None => {
                let Endpoint::Master(l) = std::mem::replace(&mut self.endpoint, Endpoint::None)
                else {
                    return Err(std::io::Error::other("no passive listener"));
                };
                accept_from(l.as_ref(), Some(self.session.peer_ip()), timeout).await
            }
        }
    }

    pub(super) async fn listing(&mut self, job: ListingJob) -> std::io::Result<()> {
        self.send(&job.opening).await?;
        let data = match self.master_data(job.active).await {
            Ok(d) => self.protect_master_data(d).await,
            Err(e) => Err(e),
        };
        let mut data = match data {
            Ok(d) => d,
            Err(e) => {
                return self
                    .send(&Reply::new(425, format!("Can't open data connection: {e}")))
                    .await
            }
        };
        let written = async {
            data.write_all(&job.bytes).await?;
            data.shutdown().await
        }
        .await;
        if !self.observers.is_empty() {
            let why = written.as_ref().err().map(|e| e.to_string());
            let event = SessionEvent::ListingSent(match &why {
                None => Ok(job.bytes.len()),
                Some(e) => Err(e.as_str()),
            });
            self.observers.emit_locked(&self.state, &event);
        }
        match written {
            Ok(()) => {
                self.send(&Reply::new(
                    226,
                    format!("Transfer complete, {} bytes", job.bytes.len()),
                ))
                .await
            }
            Err(e) => {
                self.send(&Reply::new(
                    426,
                    format!("Connection closed; transfer aborted: {e}"),
                ))
                .await
            }
        }
    }
}

/// Slave listeners tried for one PASV when the master cannot listen at the
/// same port (see `open_passive`).
const CATCH_ATTEMPTS: u32 = 4;

/// The claim of a listener a slave opened ahead, not sent yet: it leaves
/// with the first message about its transfer (the order, or the release).
#[derive(Debug, Clone, Copy)]
pub(super) struct Claim {
    pub token: u64,
    pub accept_from: Option<std::net::IpAddr>,
    /// When the port was announced (just before the 227 or 229).
    pub announced: tokio::time::Instant,
}

impl Claim {
    pub fn message(self, xfer: u64) -> MasterMsg {
        MasterMsg::Claim {
            token: self.token,
            xfer,
            accept_from: self.accept_from,
            age_ms: self.announced.elapsed().as_millis() as u64,
        }
    }
}

/// Listens on the master's own address `own` at the port announced for a
/// slave (best effort: the port may be taken here). Clients that ignore
/// the 227 address connect there; the transfer then says so (or relays)
/// instead of timing out. Slaves reuse their ports, so the listener is
/// kept in `idle` between transfers, drained before each use.
pub(super) async fn catch_listener(
    env: &Env,
    idle: &Arc<IdleListeners>,
    own: std::net::IpAddr,
    announced: SocketAddr,
) -> Option<Pooled> {
    if announced.ip() == own {
        return None;
    }
    idle.listen(env, SocketAddr::new(own, announced.port()))
        .await
}

/// Accepts on `l`, or never resolves when there is no listener.
pub(super) async fn accept_opt(
    l: Option<&dyn NetListener>,
) -> std::io::Result<(BoxStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

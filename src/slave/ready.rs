//! Passive listeners opened ahead of any PASV, so the master can answer
//! PASV without asking (the "hidden hop" of the fast path), and what
//! reaches them before a transfer claims them.
//!
//! A ready listener is open before any client has been told its port, so
//! anyone may connect to it early: a port scan, or a process on the client's
//! address waiting for the next transfer. Until the claim, each listener's
//! sweeper accepts what comes and notes when. At the claim (which carries
//! how long ago the master announced the port), connections older than the
//! announcement (less [`CLAIM_SLACK`]), from another address, or already
//! closed by their peer are closed; the newest one left serves the
//! transfer, else the transfer waits for the client as before. The sweeper
//! task then goes on as the transfer's task: a claim costs the link's loop
//! one message to it, no wait.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use super::transfer::passive_task;
use super::{Ctx, XferCmd};
use crate::env::{bind_in_range, BoxStream, NetListener};
use crate::link::SlaveMsg;

/// How much earlier than the master's announcement a connection may have
/// been accepted and still serve: the link's delay and the slave's own
/// backlog of messages before it reads the claim.
pub(super) const CLAIM_SLACK: Duration = Duration::from_secs(1);

/// Early connections kept per listener (the oldest is closed first).
const EARLY_CAP: usize = 4;

/// A connection accepted before its listener was claimed.
struct Early {
    stream: BoxStream,
    peer: SocketAddr,
    at: Instant,
}

/// A ready listener's claim: the transfer it now serves.
struct Claimed {
    xfer: u64,
    from: Option<IpAddr>,
    age: Duration,
    cmds: mpsc::UnboundedReceiver<XferCmd>,
}

/// Where a transfer gives its listener back once its data connection is
/// made, for the pool to announce again.
pub(super) type GiveBack = mpsc::UnboundedSender<Box<dyn NetListener>>;

/// The slave's ready listeners, by the token the master claims them with.
pub(super) struct ListenerPool {
    ready: BTreeMap<u64, oneshot::Sender<Claimed>>,
    next_token: u64,
    /// Listeners whose transfer has its connection: opening and closing a
    /// listening socket per file was the largest cost per small file left.
    returned: mpsc::UnboundedReceiver<Box<dyn NetListener>>,
    give_back: GiveBack,
}

impl ListenerPool {
    pub(super) fn new() -> ListenerPool {
        let (give_back, returned) = mpsc::unbounded_channel();
        ListenerPool {
            ready: BTreeMap::new(),
            next_token: 0,
            returned,
            give_back,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.ready.len()
    }

    /// Readies listeners until `want` are ready, those given back by
    /// finished transfers first (the rest of those are closed), then new
    /// ones; reports them to the master under new tokens.
    ///
    /// A listener given back is drained first: whatever connected to it
    /// before it is announced again cannot be the next transfer's client
    /// (and later connections are judged at the claim, as on a new one).
    pub(super) async fn fill(&mut self, ctx: &Arc<Ctx>, want: usize) {
        let range = ctx.config.passive_range().unwrap_or((0, 0));
        let mut fresh = Vec::new();
        let mut drained = 0;
        while self.ready.len() < want {
            let l = match self.returned.try_recv() {
                Ok(l) => {
                    drained += l.drain();
                    l
                }
                Err(_) => match bind_in_range(&ctx.env, ctx.config.data_ip, range).await {
                    Ok(l) => l,
                    Err(_) => break,
                },
            };
            let port = l.local_addr().map(|a| a.port()).unwrap_or(0);
            self.next_token += 1;
            fresh.push((
                self.next_token,
                SocketAddr::new(ctx.config.advertised_ip(), port),
            ));
            let (claim, claimed) = oneshot::channel();
            tokio::spawn(sweep(ctx.clone(), l, claimed, self.give_back.clone()));
            self.ready.insert(self.next_token, claim);
        }
        // More given back than wanted (many transfers at once): closed.
        while self.returned.try_recv().is_ok() {}
        if drained > 0 {
            tracing::info!(
                closed = drained,
                "closed connections made to a passive port between two of its transfers"
            );
        }
        if !fresh.is_empty() {
            let _ = ctx.out.send(SlaveMsg::Listeners { ready: fresh });
        }
    }

    /// Hands listener `token` to transfer `xfer`, whose port the master
    /// announced `age` ago to a client at `from`; the transfer's commands
    /// come on `cmds`. False: no such listener.
    pub(super) fn claim(
        &mut self,
        token: u64,
        xfer: u64,
        from: Option<IpAddr>,
        age: Duration,
        cmds: mpsc::UnboundedReceiver<XferCmd>,
    ) -> bool {
        match self.ready.remove(&token) {
            Some(claim) => claim
                .send(Claimed {
                    xfer,
                    from,
                    age,
                    cmds,
                })
                .is_ok(),
            None => false,
        }
    }
}

/// The connection that serves a claimed transfer among those accepted
/// before the claim (see the module's text); the others are closed.
fn choose(early: VecDeque<Early>, c: &Claimed) -> Option<BoxStream> {
    let cutoff = Instant::now().checked_sub(c.age + CLAIM_SLACK);
    let mut chosen = None;
    let mut closed = 0usize;
    for mut e in early.into_iter().rev() {
        let fits = c.from.is_none_or(|ip| e.peer.ip() == ip)
            && cutoff.is_none_or(|t| e.at >= t)
            && alive(&mut e.stream);
        if chosen.is_none() && fits {
            chosen = Some(e.stream);
        } else {
            closed += 1;
        }
    }
    if closed > 0 {
        tracing::info!(
            closed,
            "closed connections made to a passive port before it was announced \
             (or from another address, or already closed)"
        );
    }
    chosen
}

/// Accepts on an unclaimed listener until its claim, keeping the newest
/// [`EARLY_CAP`] connections with the time each came; then runs the
/// claimed transfer, which gives the listener back once connected. Ends
/// when the pool is dropped (the link is gone).
async fn sweep(
    ctx: Arc<Ctx>,
    listener: Box<dyn NetListener>,
    mut claim: oneshot::Receiver<Claimed>,
    give_back: GiveBack,
) {
    let mut early = VecDeque::new();
    let claimed = loop {
        tokio::select! {
            biased;
            c = &mut claim => match c {
                Ok(c) => break c,
                Err(_) => return,
            },
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if early.len() == EARLY_CAP {
                        early.pop_front();
                    }
                    early.push_back(Early { stream, peer, at: Instant::now() });
                }
                // Out of descriptors or the like: no busy loop.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            },
        }
    };
    let span = tracing::info_span!("transfer", xfer = claimed.xfer);
    let chosen = span.in_scope(|| choose(early, &claimed));
    let Claimed {
        xfer, from, cmds, ..
    } = claimed;
    passive_task(ctx, xfer, listener, chosen, from, cmds, Some(give_back))
        .instrument(span)
        .await
}

/// Whether the peer of an early connection has not closed or reset it
/// (a TCP connect scan leaves such connections behind).
fn alive(stream: &mut BoxStream) -> bool {
    #[cfg(target_os = "linux")]
    if let Some(tcp) = stream.as_tcp() {
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: a one-byte buffer we own, on a socket we own; MSG_PEEK
        // leaves the byte where it is.
        let n = unsafe {
            nix::libc::recv(
                tcp.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                nix::libc::MSG_PEEK | nix::libc::MSG_DONTWAIT,
            )
        };
        return match n {
            0 => false,
            n if n > 0 => true,
            _ => std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock,
        };
    }
    true
}

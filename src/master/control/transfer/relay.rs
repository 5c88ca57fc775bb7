//! The relay through the master, for one transfer: asking the slave for a
//! listener and connecting to it, then moving the bytes between the client
//! and that listener in a task of its own (bounded by the data timeout on
//! every wait), and how that task ended.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::super::{ClientSide, ControlSession};
use super::TransferIo;
use crate::env::{accept_from, relay_counted, BoxStream, Leg, Relay};
use crate::link::{Request, Response, TransferFailure};
use crate::master::session::TransferJob;
use crate::master::transfer::Event;

impl ControlSession {
    /// Relay: asks the slave for a listener of its own and connects to it.
    pub(super) async fn set_up_relay(
        &mut self,
        job: &TransferJob,
        io: &mut TransferIo,
        timeout: Duration,
    ) -> Event {
        let Some(link) = io.link.clone() else {
            return Event::RelayFailed {
                listening: false,
                lost: true,
            };
        };
        let rid = self.state.lock().next_id();
        let rx = link.request_after(
            io.claim.take().map(|c| c.message(job.xfer)),
            rid,
            Request::Listen {
                xfer: job.xfer,
                accept_from: None,
            },
        );
        let addr = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Response::Listening { addr }))
                if self.state.lock().slaves.is_own_address(job.slave, addr) =>
            {
                addr
            }
            Ok(Err(_)) => {
                return Event::RelayFailed {
                    listening: false,
                    lost: true,
                }
            }
            _ => {
                return Event::RelayFailed {
                    listening: false,
                    lost: false,
                }
            }
        };
        match tokio::time::timeout(timeout, self.env.net.connect(addr)).await {
            Ok(Ok(s)) => {
                io.slave_stream = Some(s);
                Event::RelayReady
            }
            _ => Event::RelayFailed {
                listening: true,
                lost: false,
            },
        }
    }

    /// Starts moving bytes between the client and the slave's listener
    /// (false: no legs to relay between). Every wait is bounded by the
    /// data timeout: the client's connection, its TLS handshake, and each
    /// leg's progress. The task ends with [`RelayEnd`].
    pub(super) fn start_relay(
        &mut self,
        job: &TransferJob,
        io: &mut TransferIo,
        timeout: Duration,
    ) -> bool {
        let Some(mut slave_stream) = io.slave_stream.take() else {
            return false;
        };
        let client = match (io.caught.take(), io.master_listener.take()) {
            (Some(s), _) => ClientSide::Caught(s),
            (None, Some(l)) => ClientSide::Listener(l),
            (None, None) => return false,
        };
        let relay_tls = match (&self.tls_token, self.session.tls.private) {
            (Some(token), true) => self.state.tls().map(|t| (t.data.clone(), token.clone())),
            _ => None,
        };
        let peer = self.session.peer_ip();
        let upload = job.is_upload();
        // The bytes so far, for SITE WHO (the session's transfer info).
        let progress = {
            let mut st = self.state.lock();
            st.sessions.get_mut(&self.session.id).and_then(|s| {
                let t = s.transfer.as_mut()?;
                t.counted = true;
                Some(t.bytes.clone())
            })
        };
        let progress = progress.unwrap_or_default();
        let before = progress.load(std::sync::atomic::Ordering::Relaxed);
        io.relay_progress = Some((progress.clone(), before));
        let state = self.state.clone();
        io.relay = Some(tokio::spawn(async move {
            // Until the client is there only the slave's leg is open; it
            // is held, not closed, when the client never comes (see
            // `RelayEnd::Broken`).
            let no_client = |why: String, slave_stream| RelayEnd::Broken {
                why: TransferFailure::NoDataConnection(why),
                bytes: 0,
                legs: vec![slave_stream],
            };
            let mut client = match client {
                ClientSide::Listener(l) => match accept_from(l.as_ref(), Some(peer), timeout).await
                {
                    Ok(s) => s,
                    Err(e) => return no_client(e.to_string(), slave_stream),
                },
                ClientSide::Caught(s) => s,
            };
            if let Some((config, token)) = relay_tls {
                let secured = match crate::tls::accept(&config, client, Some(&token), timeout).await
                {
                    Ok(s) => s,
                    Err(e) => return no_client(format!("TLS handshake failed: {e}"), slave_stream),
                };
                // The tie check of the slaves and the master's listings:
                // the session of this control connection, or a sibling's
                // (the same logged-in user's from the same address).
                let conn = secured.get_ref().1;
                if crate::tls::SessionTie::of(conn, &token) == crate::tls::SessionTie::Foreign {
                    let resumed = conn.received_resumption_data().unwrap_or_default().to_vec();
                    if !state.resumed_sibling(&token, &resumed, timeout).await {
                        tracing::warn!(
                            "relayed data connection refused: it resumed the TLS session of \
                             another control connection (not one of this user's from this address)"
                        );
                        return no_client(
                            "the TLS session of the data connection belongs to another control \
                             connection"
                                .into(),
                            slave_stream,
                        );
                    }
                    tracing::debug!("relayed data connection resumed a sibling's TLS session");
                }
                client = Box::new(secured);
            }
            let moved = if upload {
                relay_counted(
                    &mut client,
                    &mut slave_stream,
                    Relay::Copy,
                    Some(&progress),
                    timeout,
                )
                .await
            } else {
                relay_counted(
                    &mut slave_stream,
                    &mut client,
                    Relay::Splice,
                    Some(&progress),
                    timeout,
                )
                .await
            };
            match moved {
                Ok(n) => {
                    if upload {
                        // The client ended its upload (under TLS with
                        // close_notify, else the read failed); answer in
                        // kind, as a slave does: Python's `unwrap()` waits
                        // for the server's close_notify.
                        let _ = tokio::time::timeout(timeout, client.shutdown()).await;
                    }
                    RelayEnd::Done(n)
                }
                Err(e) => {
                    let client_leg = match e.leg {
                        Leg::From => upload,
                        Leg::To => !upload,
                    };
                    let who = if client_leg { "client" } else { "slave" };
                    RelayEnd::Broken {
                        why: TransferFailure::Network(format!("{who} data connection: {e}")),
                        bytes: progress
                            .load(std::sync::atomic::Ordering::Relaxed)
                            .saturating_sub(before),
                        legs: vec![client, slave_stream],
                    }
                }
            }
        }));
        true
    }
}

impl TransferIo {
    /// The bytes the relay has moved so far (None: no relay started).
    pub(super) fn relay_moved(&self) -> Option<u64> {
        let (counter, before) = self.relay_progress.as_ref()?;
        Some(
            counter
                .load(std::sync::atomic::Ordering::Relaxed)
                .saturating_sub(*before),
        )
    }

    /// Takes in how the relay ended, for the transfer machine.
    pub(super) fn relay_ended(&mut self, end: RelayEnd) -> Event {
        match end {
            RelayEnd::Done(n) => {
                self.relay_done = Some(n);
                self.facts.bytes.get_or_insert(n);
                Event::RelayDone
            }
            RelayEnd::Broken { why, bytes, legs } => {
                tracing::info!(?why, bytes, "relay broken");
                self.relay_bytes = Some(bytes);
                self.held = legs;
                Event::RelayBroken(why)
            }
        }
    }
}

/// How a relay task ended.
pub(super) enum RelayEnd {
    /// Every byte crossed (this many), both legs closed.
    Done(u64),
    /// The client never connected (or failed its TLS handshake), or a leg
    /// failed or made no progress for the data timeout, after `bytes`.
    /// The open `legs` are handed back, to stay open until the slave's
    /// side is cancelled: closing the slave's leg first would end an
    /// upload there as if the client had sent it all.
    Broken {
        why: TransferFailure,
        bytes: u64,
        legs: Vec<BoxStream>,
    },
}

impl RelayEnd {
    pub(super) fn panicked(e: tokio::task::JoinError) -> RelayEnd {
        RelayEnd::Broken {
            why: TransferFailure::Network(format!("relay: {e}")),
            bytes: 0,
            legs: Vec::new(),
        }
    }
}

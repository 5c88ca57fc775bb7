//! The slave's loop over the master's messages on one link: log entries
//! (applied in order, each acknowledged with what it did), transfer orders
//! (one task each), passive listeners (some opened ahead, claimed without a
//! round trip), aborts and heartbeats.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::ready::ListenerPool;
use super::transfer::{active_task, passive_task};
use super::{reply, Ctx, XferCmd};
use crate::env::{bind_in_range, BoxStream};
use crate::link::{
    self, DataConn, FileOp, LinkError, MasterMsg, OpOutcome, Request, Response, SlaveMsg,
    TransferFailure,
};
use crate::proto::VPath;

/// Applies log entries in order and acknowledges them (one `Applied` per
/// frame). A `Commit` goes to the waiting room; everything else to the
/// storage. Every entry is idempotent: a resent one does no harm.
async fn apply_log(ctx: &Ctx, entries: Vec<(u64, FileOp)>, applied: &watch::Sender<u64>) {
    let mut outcomes = Vec::with_capacity(entries.len());
    for (seq, op) in entries {
        let outcome = match &op {
            FileOp::Commit {
                xfer,
                path,
                version,
            } => {
                ctx.awaiting
                    .commit(*xfer, path, version, &ctx.storage)
                    .await
            }
            _ => match ctx.storage.apply(&op).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(?op, error = %e, "operation failed");
                    OpOutcome::Failed(e.to_string())
                }
            },
        };
        outcomes.push((seq, outcome));
        applied.send_replace(seq);
    }
    let _ = ctx.out.send(SlaveMsg::Applied { outcomes });
}

/// Answers [`Request::Checksum`]: the file's size and mtime, then the
/// CRC-32 of its bytes (read at full speed: only copies a remerge could not
/// match to the record by their version are asked for).
async fn checksum(ctx: Arc<Ctx>, rid: u64, path: VPath) {
    let failed = |e: std::io::Error| Response::Failed(TransferFailure::Storage(e.to_string()));
    let response = match ctx.storage.version_of(&path).await {
        Ok(Some((size, mtime, _))) => match ctx.storage.checksum(&path, 0).await {
            Ok(Some((_, crc32))) => Response::Checksum { size, mtime, crc32 },
            Ok(None) => Response::Failed(TransferFailure::FileNotFound),
            Err(e) => failed(e),
        },
        Ok(None) => Response::Failed(TransferFailure::FileNotFound),
        Err(e) => failed(e),
    };
    reply(&ctx, rid, response);
}

pub(super) async fn read_loop(
    ctx: Arc<Ctx>,
    r: tokio::io::ReadHalf<BoxStream>,
    applied: watch::Sender<u64>,
) -> Result<(), LinkError> {
    let deadline = ctx.config.heartbeat_deadline();
    let mut r = tokio::io::BufReader::with_capacity(link::READ_BUFFER, r);
    // Transfer tasks by id; dropping a sender aborts its task.
    let mut xfers: BTreeMap<u64, mpsc::UnboundedSender<XferCmd>> = BTreeMap::new();
    let mut pool = ListenerPool::new();
    let pool_size = ctx.config.passive_pool;
    pool.fill(&ctx, pool_size).await;
    loop {
        let msg: MasterMsg = match tokio::time::timeout(deadline, link::read_frame(&mut r)).await {
            Err(_) => {
                return Err(LinkError::Silent(format!(
                    "no heartbeat from master for {} ms",
                    deadline.as_millis()
                )))
            }
            Ok(r) => r?,
        };
        xfers.retain(|_, tx| !tx.is_closed());
        match msg {
            MasterMsg::Heartbeat => {}
            MasterMsg::Log(entries) => apply_log(&ctx, entries, &applied).await,
            MasterMsg::Abort { xfer } => {
                xfers.remove(&xfer);
                // A received upload the master decided not to commit.
                ctx.awaiting.discard(xfer, &ctx.storage).await;
            }
            MasterMsg::Claim {
                token,
                xfer,
                accept_from,
                age_ms,
            } => {
                ctx.awaiting.forget_abort(xfer);
                let age = std::time::Duration::from_millis(age_ms);
                let (tx, rx) = mpsc::unbounded_channel();
                if pool.claim(token, xfer, accept_from, age, rx) {
                    xfers.insert(xfer, tx);
                }
                // Refilled in batches, at half: one `Listeners` message
                // for several transfers, not one each.
                if pool.len() <= pool_size / 2 {
                    pool.fill(&ctx, pool_size).await;
                }
            }
            MasterMsg::Request { rid, request } => match request {
                Request::Listen { xfer, accept_from } => {
                    ctx.awaiting.forget_abort(xfer);
                    let range = ctx.config.passive_range().unwrap_or((0, 0));
                    match bind_in_range(&ctx.env, ctx.config.data_ip, range).await {
                        Ok(listener) => {
                            let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
                            let addr = SocketAddr::new(ctx.config.advertised_ip(), port);
                            let (tx, rx) = mpsc::unbounded_channel();
                            xfers.insert(xfer, tx);
                            reply(&ctx, rid, Response::Listening { addr });
                            let span = tracing::info_span!("transfer", xfer);
                            tokio::spawn(
                                passive_task(
                                    ctx.clone(),
                                    xfer,
                                    listener,
                                    None,
                                    accept_from,
                                    rx,
                                    None,
                                )
                                .instrument(span),
                            );
                        }
                        Err(e) => reply(
                            &ctx,
                            rid,
                            Response::Failed(TransferFailure::NoDataConnection(format!(
                                "cannot listen: {e}"
                            ))),
                        ),
                    }
                }
                Request::Transfer {
                    xfer,
                    order,
                    data,
                    tls,
                } => match data {
                    DataConn::Passive => match xfers.get(&xfer) {
                        Some(tx) => {
                            let _ = tx.send(XferCmd::Order { rid, order, tls });
                        }
                        None => reply(
                            &ctx,
                            rid,
                            Response::Failed(TransferFailure::NoDataConnection(
                                "no listener for this transfer".into(),
                            )),
                        ),
                    },
                    DataConn::Active(addr) => {
                        ctx.awaiting.forget_abort(xfer);
                        let (tx, rx) = mpsc::unbounded_channel();
                        xfers.insert(xfer, tx);
                        let span = tracing::info_span!("transfer", xfer);
                        tokio::spawn(
                            active_task(ctx.clone(), xfer, addr, rid, order, tls, rx)
                                .instrument(span),
                        );
                    }
                },
                // Reading a whole file must not hold up the link.
                Request::Checksum { path } => {
                    tokio::spawn(checksum(ctx.clone(), rid, path));
                }
            },
            MasterMsg::Resumed { check, sibling } => ctx.resumed.answer(check, sibling),
            MasterMsg::Challenge { .. } | MasterMsg::Welcome { .. } | MasterMsg::Refused { .. } => {
                return Err(LinkError::Handshake(
                    "handshake message after handshake".into(),
                ));
            }
        }
    }
}

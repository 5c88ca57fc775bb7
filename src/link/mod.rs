//! The master<->slave link: versioned serde messages in length-prefixed
//! frames over one TCP connection per slave, a mutual HMAC-SHA256
//! challenge-response handshake, and heartbeats both ways.
//!
//! Handshake: slave `Hello{nonce_s}`, master `Challenge{nonce_m}`, slave
//! `Auth{mac}` (proving the key first, so a wrong key is refused and logged
//! by the master), master `Welcome{proof}` or `Refused`; the slave checks
//! the master's proof before it trusts any order.
//!
//! Frame: 4-byte big-endian payload length, then a postcard-encoded
//! [`SlaveMsg`] or [`MasterMsg`]. A frame longer than [`MAX_FRAME`] or one
//! that does not decode closes that link with a logged error; it never takes
//! the master (or the slave) down.

pub mod auth;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::VPath;

/// Bumped on any incompatible change to the messages below.
/// 2: FTPS (`Hello::data_tls`, `Welcome::ticket_key`, `Transfer::tls`).
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest frame either side accepts. A remerge is sent in chunks well
/// below this.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;
/// Files per remerge frame.
pub const REMERGE_CHUNK: usize = 2000;

pub type Nonce = [u8; 32];

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link closed")]
    Closed,
    #[error("link i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    #[error("undecodable frame: {0}")]
    Decode(String),
    #[error("handshake: {0}")]
    Handshake(String),
    #[error("link silent: {0}")]
    Silent(String),
    #[error("protocol: {0}")]
    Protocol(String),
}

/// A file as a slave has it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: VPath,
    pub size: u64,
    pub mtime: i64,
}

/// Metadata changes the master applies to a slave's disk. Sent at once to an
/// online holder; queued for an offline one and sent in [`MasterMsg::Welcome`]
/// when it rejoins, before it lists its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOp {
    Delete { path: VPath },
    Rename { from: VPath, to: VPath },
    RemoveDir { path: VPath },
}

/// How the data connection of a transfer is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataConn {
    /// Use the listener opened by the earlier `Listen` of the same transfer.
    Passive,
    /// Connect out to the client (PORT/EPRT).
    Active(SocketAddr),
}

/// A data connection protected by TLS (`PROT P`, RFC 4217 §9). The slave is
/// the TLS server whether it listened (PASV) or dialled out (PORT): the FTP
/// client is always the TLS client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataTls {
    /// The control session's token (random, per control connection). The
    /// master tags the sessions of the control connection with it, so a
    /// TLS 1.3 data connection that resumes one carries it back: the slave
    /// accepts it only if it matches (someone else's ticket is refused),
    /// and tags its own tickets with it.
    pub session_token: Vec<u8>,
    /// FXP (SSCN ON, CPSV): this slave is the TLS *client* on the data
    /// connection, whose peer is another FTP server acting as TLS server.
    pub client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOrder {
    /// Send `path` from byte `offset` (REST).
    Send { path: VPath, offset: u64 },
    /// Receive into `path`. `offset`: `None` writes a new file through a
    /// temporary name; `Some(n)` writes into the existing file from byte `n`
    /// (REST+STOR), `Some(u64::MAX)` appends (APPE).
    Receive { path: VPath, offset: Option<u64> },
}

pub const APPEND: u64 = u64::MAX;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Open a passive listener for transfer `xfer`; accept only a connection
    /// from `accept_from` (the client's control IP) when set.
    Listen {
        xfer: u64,
        accept_from: Option<IpAddr>,
    },
    Transfer {
        xfer: u64,
        order: TransferOrder,
        data: DataConn,
        /// `Some`: TLS on the data connection.
        tls: Option<DataTls>,
    },
    /// Second phase of an upload: the client's control connection is still
    /// there, make the received file visible under its name.
    Commit { xfer: u64 },
}

/// Why a transfer failed, as the slave saw it. Each maps to one FTP reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferFailure {
    /// The client never connected (or another host tried to): 425.
    NoDataConnection(String),
    /// Not on this slave's disk: 550.
    FileNotFound,
    /// Disk error or full: 451/452.
    Storage(String),
    /// The data connection broke: 426.
    Network(String),
    /// Cancelled by the master (ABOR, or the client left): 426.
    Aborted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Listening {
        addr: SocketAddr,
    },
    /// A `Send` finished: `bytes` went out.
    Sent {
        bytes: u64,
    },
    /// A `Receive` has all bytes, synced under a temporary name; waiting for
    /// `Commit` (or `Abort`).
    Received {
        bytes: u64,
        size: u64,
        crc32: u32,
    },
    Committed {
        size: u64,
        mtime: i64,
    },
    Failed(TransferFailure),
}

/// Slave -> master.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlaveMsg {
    Hello {
        version: u32,
        name: String,
        nonce: Nonce,
        /// The address this slave announces for passive transfers.
        data_ip: IpAddr,
        /// This slave has a certificate for `PROT P` data connections.
        data_tls: bool,
    },
    Auth {
        mac: Vec<u8>,
    },
    /// Part of the file list; `last` ends the remerge.
    Remerge {
        files: Vec<RemoteFile>,
        last: bool,
    },
    /// Passive listeners opened ahead (token, address): the master hands
    /// one out on PASV without a round trip and claims it with
    /// [`MasterMsg::Claim`].
    Listeners {
        ready: Vec<(u64, SocketAddr)>,
    },
    /// Heartbeat with load figures.
    Status {
        free: u64,
        transfers: u32,
    },
    Reply {
        rid: u64,
        response: Response,
    },
}

/// Master -> slave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterMsg {
    Challenge {
        nonce: Nonce,
    },
    /// The slave proved the key; `proof` is the master's own proof, and
    /// `pending` the changes made while the slave was away.
    Welcome {
        proof: Vec<u8>,
        pending: Vec<FileOp>,
        /// The cluster's session-ticket key, so the slave's data
        /// connections resume sessions made with the master. Sent only
        /// over a TLS link (`link_tls`): never in clear.
        ticket_key: Option<crate::tls::TicketKey>,
    },
    Refused {
        reason: String,
    },
    Request {
        rid: u64,
        request: Request,
    },
    /// Cancel transfer `xfer` (or release its unused listener). No reply of
    /// its own: a running transfer answers its request with `Aborted`.
    Abort {
        xfer: u64,
    },
    Ops(Vec<FileOp>),
    /// Pre-opened listener `token` now serves transfer `xfer` and accepts
    /// only `accept_from`. Pipelined: no reply; the transfer order follows.
    Claim {
        token: u64,
        xfer: u64,
        accept_from: Option<IpAddr>,
    },
    Heartbeat,
}

/// The write side of a link: sends each queued message as a frame, and a
/// `heartbeat()` message on every `interval` tick. Writes are batched: one
/// flush when the queue is empty, so pipelined orders share a write when the
/// link is busy. Ends when the queue closes or a write fails.
pub async fn write_frames<W, T, F, Fut>(
    w: &mut W,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    interval: std::time::Duration,
    mut heartbeat: F,
) where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            _ = tick.tick() => heartbeat().await,
        };
        let Ok(frame) = encode_frame(&msg) else {
            continue;
        };
        if w.write_all(&frame).await.is_err() {
            break;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
    }
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), LinkError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let buf = encode_frame(msg)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, LinkError> {
    let buf = vec![0u8; 4];
    let payload = postcard::to_extend(msg, buf).map_err(|e| LinkError::Decode(e.to_string()))?;
    let len = payload.len() - 4;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    let mut payload = payload;
    payload[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(payload)
}

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, LinkError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(LinkError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode_payload(&buf)
}

pub fn decode_payload<T: DeserializeOwned>(buf: &[u8]) -> Result<T, LinkError> {
    postcard::from_bytes(buf).map_err(|e| LinkError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip() {
        let msgs = vec![
            SlaveMsg::Hello {
                version: PROTOCOL_VERSION,
                name: "s1".into(),
                nonce: [7; 32],
                data_ip: [127, 0, 0, 11].into(),
                data_tls: true,
            },
            SlaveMsg::Remerge {
                files: vec![RemoteFile {
                    path: VPath::parse_absolute("/a/b.zip").unwrap(),
                    size: 10,
                    mtime: 5,
                }],
                last: true,
            },
            SlaveMsg::Reply {
                rid: 9,
                response: Response::Failed(TransferFailure::Network("reset".into())),
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, m).await.unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            let got: SlaveMsg = read_frame(&mut r).await.unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::Closed)
        ));
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_errors() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let mut r = &wire[..];
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::TooLarge(_))
        ));
        let wire = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        let mut r = &wire[..];
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::Decode(_))
        ));
    }

    #[test]
    fn a_path_with_dotdot_from_a_slave_does_not_decode() {
        // VPath validates on deserialisation: a rogue slave cannot name a
        // path outside the tree.
        #[derive(Serialize)]
        enum Fake {
            #[allow(dead_code)]
            Hello,
            #[allow(dead_code)]
            Auth,
            Remerge {
                files: Vec<(String, u64, i64)>,
                last: bool,
            },
        }
        let buf = postcard::to_stdvec(&Fake::Remerge {
            files: vec![("/../etc/passwd".into(), 1, 1)],
            last: true,
        })
        .unwrap();
        assert!(decode_payload::<SlaveMsg>(&buf).is_err());
    }
}

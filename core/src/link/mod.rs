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
//!
//! This module is the pure part (messages, frame encoding and decoding);
//! the `dftpd` crate's `link` module reads and writes frames on streams.

pub mod auth;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};

use crate::proto::VPath;

/// The cluster's TLS session-ticket key: an id (carried in clear in each
/// ticket, so a server can tell "not my key" from "forged") and a 32-byte
/// secret. It travels only in [`MasterMsg::Welcome`] over a TLS link.
/// `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketKey {
    id: u32,
    secret: [u8; 32],
}

impl TicketKey {
    pub fn new(id: u32, secret: [u8; 32]) -> TicketKey {
        TicketKey { id, secret }
    }
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKey")
            .field("id", &format_args!("{:08x}", self.id))
            .finish_non_exhaustive()
    }
}

/// Bumped on any incompatible change to the messages below.
/// 2: FTPS (`Hello::data_tls`, `Welcome::ticket_key`, `Transfer::tls`).
/// 4: file versions, the per-slave operation log (`Log`, `Applied`), log
/// resent after `Welcome` in chunks.
/// 5: replication (`Hello::zone`, `Send::rate`, `SlaveMsg::Corrupt`),
/// `Receive::base`, `Send::pending`,
/// `Response::FailedAfter` (the bytes a failed transfer moved).
/// 7: `SlaveMsg::Resumed`, `MasterMsg::Resumed` (a data connection that
/// resumed the TLS session of another control connection).
/// 8: `MasterMsg::Claim::age_ms` (connections made to a ready listener
/// before its port was announced are not served).
pub const PROTOCOL_VERSION: u32 = 8;
/// Bytes of operations per `Log` frame (a long queue is streamed).
pub const LOG_CHUNK_BYTES: usize = 1 << 20;
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

/// The version of a file as the master recorded it: a generation number
/// the master assigns at commit, within the master's store (`store`, drawn
/// when the store is created: after a rebuild, copies of the old store's
/// versions are recognised as such), with the file's size and CRC-32 (when
/// known). Slaves keep it with each file they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileVersion {
    pub store: u64,
    pub gen: u64,
    pub size: u64,
    pub crc32: Option<u32>,
}

/// A file as a slave has it on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteFile {
    pub path: VPath,
    pub size: u64,
    pub mtime: i64,
    /// The version kept with the file (`None`: a file the slave did not
    /// receive through dftpd, or whose size no longer matches).
    pub version: Option<FileVersion>,
}

/// An operation the master asks of a slave's disk. Every one goes through
/// the slave's operation log on the master (durable, numbered, resent after
/// every reconnect until acknowledged), so each must be idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileOp {
    Delete {
        path: VPath,
    },
    Rename {
        from: VPath,
        to: VPath,
    },
    RemoveDir {
        path: VPath,
    },
    /// Remove a copy the master does not count (an older version, a copy
    /// that conflicts with the record): only if the file at `path` is still
    /// that copy (`version`, or unversioned with `size`), never a newer one.
    DropStale {
        path: VPath,
        version: Option<FileVersion>,
        size: u64,
    },
    /// Keep `version` with the file at `path` (a copy the master adopted):
    /// only if it still has the version's size and `mtime`.
    Stamp {
        path: VPath,
        version: FileVersion,
        mtime: i64,
    },
    /// Second phase of an upload: make transfer `xfer`'s received file
    /// visible at `path` as `version`. Applied again after a reconnect, it
    /// answers from what is on disk (the file is there with that version,
    /// or the upload is gone).
    Commit {
        xfer: u64,
        path: VPath,
        version: FileVersion,
    },
}

/// What applying one logged operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpOutcome {
    Done,
    /// A `Commit` made the file visible: its size and mtime on disk.
    Committed {
        size: u64,
        mtime: i64,
    },
    Failed(String),
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
    /// accepts it if it matches, asks the master about another token
    /// ([`SlaveMsg::Resumed`]: a session of the same user's control
    /// connection from the same address is accepted, someone else's
    /// refused), and tags its own tickets with it.
    pub session_token: Vec<u8>,
    /// FXP (SSCN ON, CPSV): this slave is the TLS *client* on the data
    /// connection, whose peer is another FTP server acting as TLS server.
    pub client: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferOrder {
    /// Send `path` from byte `offset` (REST); only if the file there is
    /// `version` (never a stale copy).
    Send {
        path: VPath,
        offset: u64,
        version: Option<FileVersion>,
        /// Bytes per second at most (copies between slaves are capped so
        /// client transfers keep priority); `None`: as fast as it goes.
        rate: Option<u64>,
        /// Send the upload of transfer `pending` that waits here for its
        /// commit (a synchronous copy, made before the commit decision)
        /// instead of the file at `path`.
        pending: Option<u64>,
    },
    /// Receive into `path`. `offset`: `None` writes a new file through a
    /// temporary name; `Some(n)` writes into the existing file from byte `n`
    /// (REST+STOR), `Some(u64::MAX)` appends (APPE).
    Receive {
        path: VPath,
        offset: Option<u64>,
        /// With `offset`: the version the new bytes go on top of. The slave
        /// starts from its copy only if it is that version (else the
        /// transfer fails `NotCurrent`: a commit or a removal has not
        /// reached it yet); `None`: from an empty file, whatever the disk
        /// holds under the name.
        base: Option<FileVersion>,
    },
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
    /// Read the file at `path` and answer its size, mtime and CRC-32
    /// ([`Response::Checksum`]): a copy without a version that a remerge
    /// found must agree with the record before it counts.
    Checksum { path: VPath },
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
    /// The slave's copy is not the version the master asked for (it is
    /// being replaced, or stale): 450, never served.
    NotCurrent,
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
    /// A `Send` or `Receive` that failed after `bytes` crossed its data
    /// connection (the master records it; otherwise it is `Failed`).
    FailedAfter {
        failure: TransferFailure,
        bytes: u64,
    },
    /// What [`Request::Checksum`] read: the file's size and mtime (before
    /// reading) and the CRC-32 of its bytes.
    Checksum {
        size: u64,
        mtime: i64,
        crc32: u32,
    },
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
        /// Its zone label: copies of a file prefer distinct zones.
        zone: Option<String>,
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
    /// The scrub found this copy's bytes do not match its version's
    /// CRC-32 (`found`): the master drops it as a holder and repairs it
    /// from a good copy.
    Corrupt {
        path: VPath,
        version: FileVersion,
        found: u32,
    },
    /// Logged operations applied, in order, with what each did.
    Applied {
        outcomes: Vec<(u64, OpOutcome)>,
    },
    /// A TLS 1.3 data connection of the control session tagged `token`
    /// resumed the TLS session tagged `resumed`, another control
    /// connection's: may it serve? Answered by [`MasterMsg::Resumed`] with
    /// the same `check`.
    Resumed {
        check: u64,
        token: Vec<u8>,
        resumed: Vec<u8>,
    },
}

/// Master -> slave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MasterMsg {
    Challenge {
        nonce: Nonce,
    },
    /// The slave proved the key; `proof` is the master's own proof.
    Welcome {
        proof: Vec<u8>,
        /// The cluster's session-ticket key, so the slave's data
        /// connections resume sessions made with the master. Sent only
        /// over a TLS link (`link_tls`): never in clear.
        ticket_key: Option<TicketKey>,
        /// Random per master process: uploads a slave kept waiting for
        /// their commit belong to this master only.
        master_instance: u64,
        /// The last entry of this slave's operation log: the master resends
        /// every unacknowledged entry up to it (in `Log` frames) and the
        /// slave applies them before it lists its files.
        log_upto: u64,
        /// The master's `data_timeout_ms`: the slave's data connections
        /// follow it.
        data_timeout_ms: u64,
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
    /// Entries of the slave's operation log, in order.
    Log(Vec<(u64, FileOp)>),
    /// Pre-opened listener `token` now serves transfer `xfer` and accepts
    /// only `accept_from`. Pipelined: no reply; the transfer order follows.
    Claim {
        token: u64,
        xfer: u64,
        accept_from: Option<IpAddr>,
        /// How long ago the master announced the listener's port (its 227
        /// or 229): connections the slave accepted well before that are
        /// not this client's.
        age_ms: u64,
    },
    Heartbeat,
    /// The answer to [`SlaveMsg::Resumed`] `check`: whether the resumed
    /// session is a sibling's (the same user's control connection from the
    /// same client address), so the data connection may serve.
    Resumed {
        check: u64,
        sibling: bool,
    },
}

pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, LinkError> {
    let mut buf = Vec::new();
    encode_frame_into(msg, &mut buf)?;
    Ok(buf)
}

/// Appends `msg` as one frame to `buf` (a link writer batches the frames
/// queued at once into one write). On error `buf` is left as it was.
pub fn encode_frame_into<T: Serialize>(msg: &T, buf: &mut Vec<u8>) -> Result<(), LinkError> {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; 4]);
    if let Err(e) = postcard::to_io(msg, &mut *buf) {
        buf.truncate(start);
        return Err(LinkError::Decode(e.to_string()));
    }
    let len = buf.len() - start - 4;
    if len > MAX_FRAME {
        buf.truncate(start);
        return Err(LinkError::TooLarge(len));
    }
    buf[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

pub fn decode_payload<T: DeserializeOwned>(buf: &[u8]) -> Result<T, LinkError> {
    postcard::from_bytes(buf).map_err(|e| LinkError::Decode(e.to_string()))
}

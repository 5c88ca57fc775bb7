//! What a control session did, as events for observers: the session
//! recorder (`record_dir`), and anything else that watches sessions
//! (metrics, the transfer log). The driver publishes every event through
//! one call; observers never change what the session decides.
//!
//! Events borrow what they describe, so publishing costs nothing when no
//! observer is attached (the driver checks first).

use std::net::SocketAddr;
use std::time::Duration;

use super::session::{Plan, Target, TransferJob, TransferOutcome};
use super::MasterState;
use crate::proto::{Reply, VPath};

/// Why a line from the client was not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadLine {
    TooLong,
    NotUtf8,
}

#[derive(Debug)]
pub enum SessionEvent<'a> {
    /// The session started: its id, the client's address, the wall clock,
    /// and `clock`, the master's monotonic clock (time since the master
    /// started): shared by every session, it orders them.
    Opened {
        session: u64,
        peer: SocketAddr,
        unix_now: i64,
        clock: Duration,
    },
    /// A command line arrived `at` after the session started (empty for an
    /// empty line); `cwd` is the directory it is resolved against; `verb`:
    /// the command's verb (`Command::verb`), `None` when it does not parse.
    Command {
        at: Duration,
        text: &'a str,
        cwd: &'a VPath,
        verb: Option<&'static str>,
    },
    /// A line that is not a command.
    BadLine(BadLine),
    /// A reply was sent.
    Reply(&'a Reply),
    /// PRET planned a transfer.
    Planned(&'a Plan),
    /// PASV/EPSV opened (or failed to open) a passive endpoint.
    PassiveOpened {
        target: Target,
        xfer: u64,
        result: &'a Result<SocketAddr, String>,
    },
    /// A data command became a transfer on a slave.
    TransferStarted(&'a TransferJob),
    /// The transfer ended (at `unix_now`, the wall clock). `aborted`: the
    /// client sent ABOR during it; `data`: what its data connection carried
    /// and how.
    TransferFinished {
        job: &'a TransferJob,
        outcome: &'a TransferOutcome,
        aborted: bool,
        duration: Duration,
        data: DataFacts,
        unix_now: i64,
    },
    /// A listing was sent (`Ok(bytes)`) or failed.
    ListingSent(Result<usize, &'a str>),
    /// The login succeeded.
    LoggedIn { user: &'a str },
    /// A PASS was refused (wrong password, unknown user, a ban, a limit or
    /// the user's TLS policy) for the name given with USER.
    LoginFailed { user: &'a str },
    /// AUTH TLS: the control connection is encrypted from now on.
    TlsStarted,
    /// The session ended `at` after its start; `client_closed`: the client
    /// went away (not after QUIT, not closed by the server).
    Closed { at: Duration, client_closed: bool },
}

/// What a transfer's data connection carried, as the driver saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DataFacts {
    /// Bytes that crossed the data connection (the slave's count, or the
    /// relay's); `None` when nobody reported it.
    pub bytes: Option<u64>,
    /// The master relayed the bytes between the client and the slave (a
    /// relay route, or a client caught at the master's address and
    /// relayed: the transfer machine decides, not the job's route).
    pub relayed: bool,
    /// The client connected to the master's address instead of the one in
    /// the 227 reply (then got a 425, or was relayed).
    pub caught: bool,
    /// The control connection closed during the transfer: the client went
    /// away.
    pub client_gone: bool,
}

/// Something that watches sessions. Keep it short, and never block.
pub trait SessionObserver: Send {
    /// Called with the state lock held.
    fn on(&mut self, event: &SessionEvent<'_>, st: &MasterState);

    /// Whether [`SessionObserver::on`] reads the state. An observer that
    /// never does (metrics, the transfer log) says so: the driver then calls
    /// [`SessionObserver::on_event`] without taking the state lock, for
    /// every command and reply.
    fn reads_state(&self) -> bool {
        true
    }

    /// The event, without the state (observers whose `reads_state` is
    /// false).
    fn on_event(&mut self, _event: &SessionEvent<'_>) {}
}

//! Operating dftpd: what an operator or a supervisor needs around the FTP
//! service itself (README, "Running it in production").
//!
//! - [`metrics`]: Prometheus metrics of a master;
//! - [`admin`]: the HTTP admin listener (`/metrics`, `/health`, `/ready`);
//! - [`xferlog`]: the transfer log in vsftpd's xferlog format;
//! - [`observer`]: the session observer that feeds both;
//! - [`preflight`]: config checks against the host before a start and for
//!   `--check`;
//! - [`drain`]: counting a slave's running transfers for a graceful stop;
//! - [`notify`]: systemd readiness notification (`Type=notify`).
//!
//! None of this runs in the simulator: it is production plumbing, called
//! from `main.rs`, `cluster.rs` and the master's lifecycle methods.

pub mod admin;
pub mod drain;
pub mod metrics;
pub mod notify;
pub mod observer;
pub mod preflight;
pub mod xferlog;

pub use metrics::{Direction, Metrics, SlaveStatus};
pub use observer::{OpsObserver, OpsSinks};
pub use xferlog::{XferLog, XferRecord};

use std::sync::Arc;

/// What a running master has for operations: its metrics, its transfer
/// log and its admin listener (running while this lives).
pub struct Ops {
    pub metrics: Arc<Metrics>,
    pub xferlog: Option<Arc<XferLog>>,
    pub admin: Option<admin::AdminHandle>,
}

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Admin(#[from] admin::AdminError),
    #[error(transparent)]
    XferLog(#[from] xferlog::XferLogError),
}

/// Reports one finished transfer everywhere it is counted: the metrics
/// (a completed transfer with its bytes and duration, or a failed one) and
/// the transfer log (one line, complete or incomplete). [`OpsObserver`]
/// calls it when a transfer ends; either sink may be absent.
pub fn transfer_finished(
    metrics: Option<&Metrics>,
    xferlog: Option<&XferLog>,
    r: &XferRecord<'_>,
    relayed: bool,
) {
    if let Some(m) = metrics {
        if r.complete {
            m.transfer_done(r.direction, r.slave, r.bytes, r.duration, relayed);
        } else {
            m.transfer_failed(r.direction, r.slave, if relayed { r.bytes } else { 0 });
        }
    }
    if let Some(x) = xferlog {
        x.write(r);
    }
}

impl Ops {
    /// The sinks sessions feed ([`OpsObserver`]).
    pub fn sinks(&self) -> OpsSinks {
        OpsSinks {
            metrics: Some(self.metrics.clone()),
            xferlog: self.xferlog.clone(),
        }
    }

    /// Opens the transfer log again by name (after a rotation); logs the
    /// outcome.
    pub fn reopen_logs(&self) {
        if let Some(x) = &self.xferlog {
            match x.reopen() {
                Ok(()) => tracing::info!(path = %x.path().display(), "transfer log reopened"),
                Err(e) => tracing::warn!("{e}; still writing to the old file"),
            }
        }
    }
}

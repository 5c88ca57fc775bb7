//! Operating dftpd: what an operator or a supervisor needs around the FTP
//! service itself (README, "Running it in production").
//!
//! - [`metrics`]: Prometheus metrics of a master;
//! - [`admin`]: the HTTP admin listener (`/metrics`, `/health`, `/ready`);
//! - [`xferlog`]: the transfer log in vsftpd's xferlog format;
//! - [`audit`]: namespace changes (DELE, RNTO, MKD, RMD) at INFO;
//! - [`preflight`]: config checks against the host before a start and for
//!   `--check`;
//! - [`drain`]: counting a slave's running transfers for a graceful stop;
//! - [`notify`]: systemd readiness notification (`Type=notify`).
//!
//! None of this runs in the simulator: it is production plumbing, called
//! from `main.rs`, `cluster.rs` and the master's lifecycle methods.

pub mod admin;
pub mod audit;
pub mod drain;
pub mod metrics;
pub mod notify;
pub mod preflight;
pub mod xferlog;

pub use metrics::{Direction, Metrics, SlaveStatus};
pub use xferlog::{XferLog, XferRecord};

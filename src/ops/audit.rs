//! Namespace changes at INFO, one event per change with the user, the
//! client's address and the paths, under the target `dftpd::audit` (filter
//! them with `DFTPD_LOG=dftpd::audit=info`; with `--log-format json` each
//! is one JSON object). The session calls [`namespace`] when it makes the
//! change (its reply then waits for the store's commit), never for a
//! refused command.

use std::net::IpAddr;

/// A change to the file tree made by a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceOp<'a> {
    /// DELE
    Delete { path: &'a str },
    /// RNFR + RNTO
    Rename { from: &'a str, to: &'a str },
    /// MKD
    Mkdir { path: &'a str },
    /// RMD
    Rmdir { path: &'a str },
}

impl NamespaceOp<'_> {
    pub fn verb(&self) -> &'static str {
        match self {
            NamespaceOp::Delete { .. } => "DELE",
            NamespaceOp::Rename { .. } => "RNTO",
            NamespaceOp::Mkdir { .. } => "MKD",
            NamespaceOp::Rmdir { .. } => "RMD",
        }
    }
}

/// Logs one namespace change at INFO.
pub fn namespace(user: &str, peer: IpAddr, op: NamespaceOp<'_>) {
    match op {
        NamespaceOp::Rename { from, to } => tracing::info!(
            target: "dftpd::audit",
            user,
            %peer,
            verb = op.verb(),
            from,
            to,
            "renamed"
        ),
        NamespaceOp::Delete { path }
        | NamespaceOp::Mkdir { path }
        | NamespaceOp::Rmdir { path } => {
            let what = match op {
                NamespaceOp::Delete { .. } => "deleted",
                NamespaceOp::Mkdir { .. } => "directory made",
                _ => "directory removed",
            };
            tracing::info!(target: "dftpd::audit", user, %peer, verb = op.verb(), path, "{what}")
        }
    }
}

//! FTPS (RFC 4217, explicit; RFC 2228 AUTH/PBSZ/PROT/CCC) and the TLS side
//! of FXP (DrFTPD's SSCN and CPSV).
//!
//! Reply codes chosen (README, "FTPS"):
//! - AUTH when TLS is not configured: 502 (not implemented here; FEAT does
//!   not list it); an unknown mechanism: 504; a second AUTH: 503.
//! - USER/PASS before AUTH under `require_tls_control`: 530 (RFC 4217 §11
//!   allows 530 or 534; 530 is "not logged in", which every client reports
//!   as a failed login and stops, and what vsftpd answers).
//! - A transfer or listing under PROT C with `require_tls_data`: 521 (RFC
//!   4217 §10: "data connection cannot be opened with this PROT setting").
//! - PROT S/E: 536; CCC: 534 (policy: the control connection stays
//!   encrypted); PBSZ/PROT out of order: 503.

use super::{r, Action, DataSetup, Login, Route, Session, TransferJob};
use crate::master::{users, MasterState};
use crate::proto::{Command, Reply, VPath};

/// What RFC 4217 negotiated on one control connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsState {
    /// `AUTH TLS` done: the control connection is encrypted.
    pub control: bool,
    /// `PBSZ` received after AUTH (always "PBSZ=0" for TLS).
    pub pbsz: bool,
    /// `PROT P`: data connections are encrypted.
    pub private: bool,
    /// `SSCN ON` (FXP): the server side is the TLS client on data
    /// connections.
    pub sscn: bool,
    /// `CPSV`: like PASV, with the server as TLS client for this data
    /// connection only.
    pub cpsv: bool,
}

/// What a session must protect (`require_tls_control`, `require_tls_data`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsRequirement {
    pub control: bool,
    pub data: bool,
}

/// FEAT lines for FTPS: only when the master has a certificate.
pub(super) fn tls_features(st: &MasterState) -> &'static [&'static str] {
    if st.tls_available {
        &["AUTH TLS", "CPSV", "PBSZ", "PROT", "SSCN"]
    } else {
        &[]
    }
}

impl Session {
    /// Whether this session must use TLS on its control connection and on
    /// its data connections. Today the master's config decides; this is the
    /// one place a per-user policy would go (the user, if known, is
    /// `self.user()`; before PASS, the name given to USER).
    pub fn tls_requirement(&self, st: &MasterState) -> TlsRequirement {
        // A user's own policy adds to the global one.
        let policy = self
            .user()
            .and_then(|u| st.session_user(u))
            .map_or(users::TlsPolicy::Optional, |u| u.tls);
        TlsRequirement {
            control: st.config.require_tls_control || policy != users::TlsPolicy::Optional,
            data: st.config.require_tls_data || policy == users::TlsPolicy::ControlAndData,
        }
    }

    /// Refuses what the TLS policy forbids before the command runs.
    pub(super) fn tls_gate(&mut self, cmd: &Command, st: &mut MasterState) -> Option<Action> {
        let need = self.tls_requirement(st);
        if need.control && !self.tls.control && matches!(cmd, Command::User(_) | Command::Pass(_)) {
            return Some(r(
                530,
                "This server requires TLS: send AUTH TLS before logging in (curl --ssl-reqd, lftp set ftp:ssl-force true, FileZilla \"Require explicit FTP over TLS\")",
            ));
        }
        if need.data && !self.tls.private && cmd.is_transfer() {
            self.clear_plan(st);
            self.data = DataSetup::None;
            return Some(Action::ResetData(Reply::new(
                521,
                "Send PBSZ 0 and PROT P: data connections must be encrypted here",
            )));
        }
        None
    }

    /// A `PROT P` transfer on a slave that has no certificate.
    pub(super) fn tls_slave_check(
        &mut self,
        st: &mut MasterState,
        job: &TransferJob,
    ) -> Option<Action> {
        // Relayed bytes reach the client from the master, which terminates
        // TLS itself.
        if !self.tls.private || job.route == Route::Relay {
            return None;
        }
        if st.slaves.get(job.slave).is_some_and(|s| s.data_tls) {
            return None;
        }
        self.clear_plan(st);
        self.data = DataSetup::None;
        Some(Action::ResetData(Reply::new(
            521,
            format!(
                "Use PROT C: slave {} has no TLS certificate for PROT P (its operator can set tls_cert)",
                job.slave_name
            ),
        )))
    }

    pub(super) fn auth(&mut self, mechanism: &str, st: &mut MasterState) -> Action {
        if !st.tls_available {
            return r(
                502,
                "AUTH TLS is not available: this server has no TLS certificate (tls_cert, tls_key)",
            );
        }
        if self.tls.control {
            return r(503, "TLS is already on for this control connection");
        }
        // SSL: what curl tries first; TLS-C/TLS-P: old drafts' names.
        let m = mechanism.to_ascii_uppercase();
        if !matches!(m.as_str(), "TLS" | "SSL" | "TLS-C" | "TLS-P") {
            let shown: String = mechanism.chars().take(16).collect();
            return r(
                504,
                format!("AUTH {shown}: unsupported mechanism; use AUTH TLS"),
            );
        }
        // RFC 2228 §3: an accepted AUTH resets the security state and the
        // login; the user logs in again, protected.
        self.clear_plan(st);
        self.data = DataSetup::None;
        self.rest = 0;
        if let Login::LoggedIn { user, .. } = &self.login {
            st.limits.logout(user);
        }
        self.login = Login::NeedUser;
        self.home = VPath::root();
        self.cwd = VPath::root();
        self.tls = TlsState {
            control: true,
            ..TlsState::default()
        };
        Action::StartTls(Reply::new(234, format!("AUTH {m} successful")))
    }

    pub(super) fn pbsz(&mut self, size: &str) -> Action {
        if !self.tls.control {
            return r(503, "PBSZ needs AUTH TLS first");
        }
        if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
            return r(501, "PBSZ takes a decimal size: send PBSZ 0");
        }
        // RFC 4217 §9: TLS has no buffer size; any size is answered 0.
        self.tls.pbsz = true;
        r(200, "PBSZ=0")
    }

    pub(super) fn prot(&mut self, level: &str) -> Action {
        if !self.tls.control {
            return r(503, "PROT needs AUTH TLS and PBSZ 0 first");
        }
        if !self.tls.pbsz {
            return r(503, "PROT needs PBSZ 0 first");
        }
        match level.to_ascii_uppercase().as_str() {
            "C" => {
                self.tls.private = false;
                r(200, "Protection level set to Clear")
            }
            "P" => {
                self.tls.private = true;
                r(200, "Protection level set to Private")
            }
            "S" | "E" => r(
                536,
                format!("PROT {level} is not supported with TLS; use PROT P or PROT C"),
            ),
            _ => r(504, "Unknown protection level; use PROT P or PROT C"),
        }
    }

    pub(super) fn ccc(&mut self) -> Action {
        if !self.tls.control {
            return r(
                503,
                "The control connection is not protected: nothing to clear",
            );
        }
        r(
            534,
            "CCC refused by policy: the control connection stays encrypted",
        )
    }

    /// SSCN [ON|OFF] (DrFTPD): which TLS role this server takes on data
    /// connections.
    pub(super) fn sscn(&mut self, arg: Option<&str>, st: &MasterState) -> Action {
        match arg.map(str::to_ascii_uppercase).as_deref() {
            None => {}
            Some("ON") => {
                if let Err(a) = self.fxp_allowed(st, "SSCN ON") {
                    return a;
                }
                self.tls.sscn = true;
            }
            Some("OFF") => self.tls.sscn = false,
            Some(_) => return r(501, "Usage: SSCN [ON|OFF]"),
        }
        r(
            200,
            if self.tls.sscn {
                "SSCN:CLIENT METHOD"
            } else {
                "SSCN:SERVER METHOD"
            },
        )
    }

    pub(super) fn cpsv(&mut self, st: &mut MasterState) -> Action {
        if let Err(a) = self.fxp_allowed(st, "CPSV") {
            return a;
        }
        let action = self.pasv(false, st);
        self.tls.cpsv = matches!(action, Action::OpenPassive { .. });
        action
    }
}

//! Connection basics that change no file: FEAT, OPTS, HELP, STAT without
//! an argument, TYPE, MODE, STRU, ALLO, PWD, REST, ABOR (RFC 959 §4.1.2,
//! §4.1.3; RFC 2389 FEAT/OPTS).

use super::ftps::tls_features;
use super::{r, Action, Session, FEATURES};
use crate::master::MasterState;
use crate::proto::reply::quote_path;
use crate::proto::{Reply, TransferType};

impl Session {
    pub(super) fn feat(&self, st: &MasterState) -> Action {
        let mut lines = vec!["Features:".to_string()];
        let mut features = FEATURES.to_vec();
        features.extend(tls_features(st));
        features.sort_unstable();
        // RFC 2389 §3.2: each feature line starts with one space.
        lines.extend(features.iter().map(|f| format!(" {f}")));
        lines.push("End".into());
        Action::Reply(Reply::multi(211, lines))
    }

    pub(super) fn opts(&self, arg: &str) -> Action {
        let upper = arg.to_ascii_uppercase();
        if upper == "UTF8 ON" || upper == "UTF8" {
            r(200, "UTF8 mode is always on")
        } else if upper.starts_with("MLST") {
            r(200, "MLST OPTS ok")
        } else if upper == "HASH" || upper == "HASH CRC32" {
            r(200, "CRC32")
        } else if upper.starts_with("HASH ") {
            r(
                504,
                "Only CRC32 is available: the checksum slaves report for uploads",
            )
        } else {
            r(501, format!("Option not understood: {arg}"))
        }
    }

    pub(super) fn help(&self) -> Action {
        Action::Reply(Reply::multi(
            214,
            vec![
                "The following commands are recognized:".into(),
                "ABOR ALLO APPE CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MFMT MKD MLSD".into(),
                "MLST MODE NLST NOOP OPTS PASS PASV PORT PRET PWD QUIT REST RETR RMD RNFR".into(),
                "RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER XCRC XCUP XCWD XMKD XPWD XRMD HASH"
                    .into(),
                "SITE commands: HELP SLAVES WHO".into(),
                "Help OK".into(),
            ],
        ))
    }

    /// STAT without an argument: the session's state (RFC 959 §4.1.3).
    pub(super) fn status(&self, st: &MasterState) -> Action {
        Action::Reply(Reply::multi(
            211,
            vec![
                "dftpd status:".into(),
                format!("Connected from {}", self.peer),
                format!("Logged in as {}", self.user().unwrap_or("(nobody)")),
                format!(
                    "TYPE: {}, STRUcture: File, MODE: Stream",
                    if self.ttype == TransferType::Ascii {
                        "ASCII"
                    } else {
                        "BINARY"
                    }
                ),
                format!("PASV without PRET: {:?}", st.config.pasv_without_pret).to_lowercase(),
                "End of status".into(),
            ],
        ))
    }

    pub(super) fn set_type(&mut self, t: TransferType) -> Action {
        self.ttype = t;
        match self.ttype {
            TransferType::Ascii => r(200, "Type set to A"),
            TransferType::Image => r(200, "Type set to I"),
        }
    }

    pub(super) fn pwd(&self) -> Action {
        r(
            257,
            format!("{} is the current directory", quote_path(self.cwd.as_str())),
        )
    }

    pub(super) fn rest(&mut self, n: u64) -> Action {
        self.rest = n;
        r(
            350,
            format!("Restarting at {n}. Send STORE or RETRIEVE to initiate transfer"),
        )
    }

    /// ABOR with no transfer running (a running one is aborted by the
    /// driver, which watches the control connection meanwhile).
    pub(super) fn abor(&mut self) -> Action {
        self.rest = 0;
        Action::ResetData(Reply::new(
            225,
            "No transfer to abort; data connection closed",
        ))
    }
}

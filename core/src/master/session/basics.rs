//! Connection basics that change no file: FEAT, OPTS, HELP, STAT without
//! an argument, TYPE, MODE, STRU, ALLO, PWD, REST, ABOR (RFC 959 §4.1.2,
//! §4.1.3; RFC 2389 FEAT/OPTS).

use super::ftps::tls_features;
use super::site::SITE_HELP;
use super::{r, Action, Session, FEATURES, MLST_FACTS};
use crate::master::MasterState;
use crate::proto::reply::quote_path;
use crate::proto::{Reply, TransferType};

impl Session {
    pub(super) fn feat(&self, st: &MasterState) -> Action {
        let mut lines = vec!["Features:".to_string()];
        let mut features = FEATURES.to_vec();
        features.extend(tls_features(st));
        // RFC 3659 §7.8: `*` marks the facts OPTS MLST selected.
        let facts: String = MLST_FACTS
            .iter()
            .zip(self.mlst_facts)
            .map(|(f, on)| format!("{f}{};", if on { "*" } else { "" }))
            .collect();
        let mlst = format!("MLST {facts}");
        features.push(&mlst);
        features.sort_unstable();
        // RFC 2389 §3.2: each feature line starts with one space.
        lines.extend(features.iter().map(|f| format!(" {f}")));
        lines.push("End".into());
        Action::Reply(Reply::multi(211, lines))
    }

    pub(super) fn opts(&mut self, arg: &str) -> Action {
        let upper = arg.to_ascii_uppercase();
        if upper == "UTF8 ON" || upper == "UTF8" {
            r(200, "UTF8 mode is always on")
        } else if upper == "MLST" || upper.starts_with("MLST ") {
            // RFC 3659 §7.9: the facts named (case-insensitive, unknown ones
            // ignored) are selected, the others not; the reply lists them.
            let asked: Vec<String> = upper[4..]
                .trim()
                .split(';')
                .map(|f| f.trim().to_ascii_lowercase())
                .collect();
            for (fact, on) in MLST_FACTS.iter().zip(self.mlst_facts.iter_mut()) {
                *on = asked.iter().any(|a| a == fact);
            }
            let selected = self.selected_facts();
            if selected.is_empty() {
                r(200, "MLST OPTS")
            } else {
                r(200, format!("MLST OPTS {selected}"))
            }
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

    /// HELP: every command this server implements (the TLS ones where a
    /// certificate is configured); `HELP <cmd>` the syntax of one
    /// (RFC 959 §4.1.3), `HELP SITE` the SITE commands.
    pub(super) fn help(&self, arg: Option<&str>, st: &MasterState) -> Action {
        let commands = COMMAND_HELP
            .iter()
            .chain(if st.tls_available { TLS_HELP } else { &[] });
        let Some(arg) = arg else {
            let mut verbs: Vec<&str> = commands.map(|(v, _)| *v).collect();
            verbs.sort_unstable();
            let mut lines = vec!["The following commands are recognized:".to_string()];
            lines.extend(verbs.chunks(14).map(|c| c.join(" ")));
            let site: Vec<&str> = std::iter::once("HELP")
                .chain(SITE_HELP.iter().filter_map(|l| l.split_whitespace().nth(1)))
                .collect();
            lines.push(format!("SITE commands: {}", site.join(" ")));
            lines.push("HELP <command> gives its syntax".into());
            return Action::Reply(Reply::multi(214, lines));
        };
        let verb = arg
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        if verb == "SITE" {
            let mut lines = vec!["SITE commands:".to_string(), "SITE HELP".to_string()];
            lines.extend(SITE_HELP.iter().map(|l| l.to_string()));
            lines.push("End".into());
            return Action::Reply(Reply::multi(214, lines));
        }
        let mut commands = COMMAND_HELP
            .iter()
            .chain(if st.tls_available { TLS_HELP } else { &[] });
        match commands.find(|(v, _)| *v == verb) {
            Some((_, syntax)) => r(214, format!("Syntax: {syntax}")),
            None => r(
                502,
                format!("Unknown command {verb}; HELP lists the commands"),
            ),
        }
    }

    /// The selected MLST facts, `type;size;` (empty when none).
    fn selected_facts(&self) -> String {
        MLST_FACTS
            .iter()
            .zip(self.mlst_facts)
            .filter(|(_, on)| *on)
            .map(|(f, _)| format!("{f};"))
            .collect()
    }

    /// An MLST/MLSD entry (`type=file;size=3;...; name`) with only the
    /// facts OPTS MLST selected.
    pub(super) fn select_facts(&self, entry: &str) -> String {
        if self.mlst_facts.iter().all(|on| *on) {
            return entry.to_string();
        }
        let (facts, name) = entry.split_once(' ').unwrap_or(("", entry));
        let kept: String = facts
            .split(';')
            .filter(|f| {
                let key = f.split('=').next().unwrap_or("").to_ascii_lowercase();
                MLST_FACTS
                    .iter()
                    .zip(self.mlst_facts)
                    .any(|(k, on)| on && *k == key)
            })
            .map(|f| format!("{f};"))
            .collect();
        format!("{kept} {name}")
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

/// Each command and its syntax, for HELP (aliases share a line).
const COMMAND_HELP: &[(&str, &str)] = &[
    ("ABOR", "ABOR (abort the transfer)"),
    ("ALLO", "ALLO <size> (accepted, nothing to allocate)"),
    ("APPE", "APPE <path>"),
    ("CDUP", "CDUP (also XCUP)"),
    ("CWD", "CWD <path> (also XCWD)"),
    ("DELE", "DELE <path>"),
    ("EPRT", "EPRT |<proto>|<address>|<port>|"),
    ("EPSV", "EPSV [1|2|ALL]"),
    ("FEAT", "FEAT"),
    ("HASH", "HASH <path> (CRC32)"),
    ("HELP", "HELP [<command>]"),
    ("LIST", "LIST [-a] [<path or pattern>]"),
    ("MDTM", "MDTM <path>"),
    ("MFMT", "MFMT <YYYYMMDDHHMMSS> <path>"),
    ("MKD", "MKD <path> (also XMKD)"),
    ("MLSD", "MLSD [<directory>]"),
    ("MLST", "MLST [<path>]"),
    ("MODE", "MODE S"),
    ("NLST", "NLST [<path or pattern>]"),
    ("NOOP", "NOOP"),
    (
        "OPTS",
        "OPTS UTF8 ON | OPTS MLST <fact>;... | OPTS HASH CRC32",
    ),
    ("PASS", "PASS <password>"),
    ("PASV", "PASV"),
    ("PORT", "PORT h1,h2,h3,h4,p1,p2"),
    ("PRET", "PRET <RETR|STOR|APPE|STOU|LIST|NLST|MLSD> [<path>]"),
    ("PWD", "PWD (also XPWD)"),
    ("QUIT", "QUIT"),
    ("REST", "REST <byte offset>"),
    ("RETR", "RETR <path>"),
    ("RMD", "RMD <path> (also XRMD)"),
    ("RNFR", "RNFR <path>"),
    ("RNTO", "RNTO <path>"),
    (
        "SITE",
        "SITE <command> [<arguments>] (HELP SITE lists them)",
    ),
    ("SIZE", "SIZE <path>"),
    ("STAT", "STAT [<path>]"),
    ("STOR", "STOR <path>"),
    ("STOU", "STOU [<path>]"),
    ("STRU", "STRU F"),
    ("SYST", "SYST"),
    ("TYPE", "TYPE A|I"),
    ("USER", "USER <name>"),
    ("XCRC", "XCRC <path> [<start> <end>]"),
    ("XCUP", "XCUP (also CDUP)"),
    ("XCWD", "XCWD <path> (also CWD)"),
    ("XMKD", "XMKD <path> (also MKD)"),
    ("XPWD", "XPWD (also PWD)"),
    ("XRMD", "XRMD <path> (also RMD)"),
];

/// The TLS commands, listed where a certificate is configured.
const TLS_HELP: &[(&str, &str)] = &[
    ("AUTH", "AUTH TLS"),
    ("CCC", "CCC (clear the control connection)"),
    ("CPSV", "CPSV (PASV, TLS client side, for FXP)"),
    ("PBSZ", "PBSZ 0"),
    ("PROT", "PROT C|P"),
    ("SSCN", "SSCN [ON|OFF]"),
];

//! One FTP control session as a state machine (sans-IO): each command goes
//! in with the shared [`MasterState`], a decision comes out as an [`Action`]
//! — a reply, or work for the driver (open a passive endpoint, run a
//! transfer on a slave, send a listing). The driver reports results back
//! through [`Session::passive_opened`] and [`Session::transfer_done`].
//!
//! Implements RFC 959 §4 and §5.4 replies, RFC 2428 (EPSV/EPRT), RFC 3659
//! (SIZE, MDTM, REST, MLST/MLSD), RFC 2389 (FEAT/OPTS) and DrFTPD's PRET:
//! `PRET <verb> <arg>` plans the transfer so the next PASV can name the
//! slave that will serve it.

use std::net::{IpAddr, SocketAddr};

use super::db::{DbError, FileDb, FileMeta, Holders, Node, SlaveId};
use super::users::{self, Perm};
use super::MasterState;
use crate::config::PasvWithoutPret;
use crate::link::{FileOp, TransferFailure, TransferOrder, APPEND};
use crate::proto::listing::{self, ListEntry};
use crate::proto::reply::quote_path;
use crate::proto::{addr, Command, EpsvArg, ListArgs, PathError, Reply, TransferType, VPath};

/// Where a data connection ends on the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Master,
    Slave(SlaveId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanVerb {
    Retr,
    Stor,
    Appe,
    Stou,
    List,
    Nlst,
    Mlsd,
}

impl PlanVerb {
    fn as_str(self) -> &'static str {
        match self {
            PlanVerb::Retr => "RETR",
            PlanVerb::Stor => "STOR",
            PlanVerb::Appe => "APPE",
            PlanVerb::Stou => "STOU",
            PlanVerb::List => "LIST",
            PlanVerb::Nlst => "NLST",
            PlanVerb::Mlsd => "MLSD",
        }
    }
}

/// What a PRET announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub verb: PlanVerb,
    pub path: Option<VPath>,
    pub target: Target,
}

/// The data connection set up by PASV/EPSV/PORT/EPRT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSetup {
    None,
    /// A listener is open on `target` for transfer `xfer`.
    Passive {
        target: Target,
        xfer: u64,
        addr: SocketAddr,
    },
    Active(SocketAddr),
}

/// How a slave transfer's data connection is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The client connects to the slave's listener opened for `xfer`.
    SlavePassive,
    /// The slave connects to the client.
    Active(SocketAddr),
    /// The client is on the master's listener; the master relays bytes to a
    /// listener it asks the slave for.
    Relay,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferJob {
    pub slave: SlaveId,
    pub slave_name: String,
    pub xfer: u64,
    pub order: TransferOrder,
    pub route: Route,
    /// The 150 reply.
    pub opening: Reply,
    /// For uploads: where the file is recorded on success.
    pub upload_path: Option<VPath>,
}

impl TransferJob {
    pub fn is_upload(&self) -> bool {
        matches!(self.order, TransferOrder::Receive { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingJob {
    pub bytes: Vec<u8>,
    pub opening: Reply,
    /// `None`: the client is on the master's passive listener.
    pub active: Option<SocketAddr>,
}

/// A password to verify off the state lock (argon2 takes tens of ms).
#[derive(Clone, PartialEq, Eq)]
pub struct LoginCheck {
    pub user: String,
    pub password: String,
    /// The user's hash, or the dummy one for an unknown user.
    pub hash: String,
}

impl std::fmt::Debug for LoginCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LoginCheck {{ user: {:?}, password: <redacted> }}",
            self.user
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Reply(Reply),
    /// Verify the password (`users::verify_password`), then call
    /// [`Session::login_result`].
    CheckPassword(Box<LoginCheck>),
    /// Send the reply, then close the connection.
    Close(Reply),
    /// Release the current data endpoint, then send the reply.
    ResetData(Reply),
    /// Release the current data endpoint, open a passive one on `target`,
    /// then call [`Session::passive_opened`].
    OpenPassive {
        target: Target,
        xfer: u64,
        epsv: bool,
    },
    /// Release the current data endpoint (the client chose active mode).
    SetActive(Reply),
    Transfer(Box<TransferJob>),
    Listing(Box<ListingJob>),
    /// `AUTH TLS` accepted: send the reply (234), then run the TLS
    /// handshake on the control connection, dropping any bytes the client
    /// sent past the AUTH line in clear. Release the data endpoint.
    StartTls(Reply),
}

/// How a slave transfer ended, as the driver saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutcome {
    Sent {
        bytes: u64,
    },
    Committed {
        size: u64,
        mtime: i64,
        crc32: u32,
    },
    Failed(TransferFailure),
    /// The slave's link went down before the transfer finished.
    SlaveLost,
    /// The client connected to `used` (the master) instead of the
    /// `announced` slave address: it ignores the address in 227 replies.
    IgnoredPasvAddress {
        announced: SocketAddr,
        used: SocketAddr,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Login {
    NeedUser,
    NeedPass(String),
    LoggedIn { user: String, admin: bool },
}

pub struct Session {
    pub id: u64,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    login: Login,
    pub cwd: VPath,
    ttype: TransferType,
    rest: u64,
    rnfr: Option<VPath>,
    plan: Option<Plan>,
    pub data: DataSetup,
    epsv_all: bool,
    /// The user's home: nothing outside it can be named.
    home: VPath,
    /// FTPS state (RFC 4217): AUTH, PBSZ, PROT.
    pub tls: TlsState,
}

const FEATURES: &[&str] = &[
    "EPRT",
    "EPSV",
    "HASH CRC32*",
    "MDTM",
    "MFMT",
    "MLST type*;size*;modify*;perm*;unix.owner*;unix.group*;",
    "PRET",
    "REST STREAM",
    "SIZE",
    "TVFS",
    "UTF8",
    "XCRC",
];

fn r(code: u16, text: impl Into<String>) -> Action {
    Action::Reply(Reply::new(code, text))
}

fn db_reply(e: DbError) -> Action {
    r(e.code(), e.to_string())
}

/// A database error about `path`, naming it.
fn path_reply(path: &VPath, e: DbError) -> Action {
    r(e.code(), format!("{path}: {e}"))
}

impl Session {
    pub fn new(id: u64, peer: SocketAddr, local: SocketAddr) -> Session {
        Session {
            id,
            peer,
            local,
            login: Login::NeedUser,
            cwd: VPath::root(),
            ttype: TransferType::Image,
            rest: 0,
            rnfr: None,
            plan: None,
            data: DataSetup::None,
            epsv_all: false,
            home: VPath::root(),
            tls: TlsState::default(),
        }
    }

    pub fn greeting() -> Reply {
        Reply::new(220, "dftpd ready")
    }

    pub fn user(&self) -> Option<&str> {
        match &self.login {
            Login::LoggedIn { user, .. } => Some(user),
            _ => None,
        }
    }

    /// The current PRET plan, if any (the session recorder notes where it
    /// routed the transfer).
    pub fn plan(&self) -> Option<&Plan> {
        self.plan.as_ref()
    }

    fn owner(&self) -> String {
        self.user().unwrap_or("ftp").to_string()
    }

    /// The absolute path `arg` names from the current directory; refused
    /// (550) when it is outside the user's home.
    fn resolve(&self, arg: &str) -> Result<VPath, Action> {
        let p = VPath::resolve(&self.cwd, arg).map_err(|e| match e {
            PathError::Reserved => r(550, format!("{arg}: permission denied ({e})")),
            e => r(553, format!("{arg}: {e}")),
        })?;
        if !self.home.is_root() && p != self.home && !p.starts_with(&self.home) {
            return Err(r(
                550,
                format!(
                    "{p}: permission denied (outside your home directory {})",
                    self.home
                ),
            ));
        }
        Ok(p)
    }

    /// Checks the site's permission rules for the logged-in user.
    fn permit(&self, st: &MasterState, action: Perm, path: &VPath) -> Result<(), Action> {
        let Some(user) = self.user().and_then(|u| st.users.get(u)) else {
            return Err(r(530, "Not logged in"));
        };
        if users::allows(&st.config.permissions, user, action, path) {
            Ok(())
        } else {
            Err(r(
                550,
                format!(
                    "{path}: permission denied (you may not {} here)",
                    action.as_str()
                ),
            ))
        }
    }

    fn is_admin(&self, st: &MasterState) -> bool {
        self.user()
            .and_then(|u| st.users.get(u))
            .is_some_and(|u| u.admin)
    }

    /// Drops any PRET plan, releasing its reservation on the slave.
    fn clear_plan(&mut self, st: &mut MasterState) {
        if let Some(Plan {
            target: Target::Slave(s),
            ..
        }) = self.plan.take()
        {
            if let Some(info) = st.slaves.get_mut(s) {
                info.reserved = info.reserved.saturating_sub(1);
            }
        }
    }

    /// The session ends: release what it holds.
    pub fn close(&mut self, st: &mut MasterState) {
        self.clear_plan(st);
        if let Login::LoggedIn { user, .. } = &self.login {
            st.limits.logout(user);
        }
        self.data = DataSetup::None;
        st.sessions.remove(&self.id);
    }

    fn set_doing(&self, st: &mut MasterState, doing: Option<String>) {
        if let Some(info) = st.sessions.get_mut(&self.id) {
            info.doing = doing;
            info.cwd = self.cwd.to_string();
            info.user = self.user().map(str::to_string);
        }
    }

    pub fn handle(&mut self, cmd: Command, st: &mut MasterState) -> Action {
        if cmd.needs_login() && self.user().is_none() {
            return r(530, "Please login with USER and PASS");
        }
        if let Some(refused) = self.tls_gate(&cmd, st) {
            return refused;
        }
        let action = self.dispatch(cmd, st);
        self.set_doing(st, None);
        action
    }

    fn dispatch(&mut self, cmd: Command, st: &mut MasterState) -> Action {
        let cmd_verb = cmd.verb();
        match cmd {
            Command::User(name) => {
                // Always 331, whether the user exists or not (RFC 2577 §6).
                self.clear_plan(st);
                self.login = Login::NeedPass(name.clone());
                r(331, format!("Password required for {name}"))
            }
            Command::Pass(pass) => self.pass(pass, st),
            Command::Quit => Action::Close(Reply::new(221, "Goodbye")),
            Command::Syst => r(215, "UNIX Type: L8"),
            Command::Noop => r(200, "NOOP ok"),
            Command::Feat => {
                let mut lines = vec!["Features:".to_string()];
                let mut features = FEATURES.to_vec();
                features.extend(tls_features(st));
                features.sort_unstable();
                // RFC 2389 §3.2: each feature line starts with one space.
                lines.extend(features.iter().map(|f| format!(" {f}")));
                lines.push("End".into());
                Action::Reply(Reply::multi(211, lines))
            }
            Command::Opts(arg) => {
                let upper = arg.to_ascii_uppercase();
                if upper == "UTF8 ON" || upper == "UTF8" {
                    r(200, "UTF8 mode is always on")
                } else if upper.starts_with("MLST") {
                    r(200, "MLST OPTS ok")
                } else if upper == "HASH" || upper == "HASH CRC32" {
                    r(200, "CRC32")
                } else if upper.starts_with("HASH ") {
                    r(504, "Only CRC32 is available: the checksum slaves report for uploads")
                } else {
                    r(501, format!("Option not understood: {arg}"))
                }
            }
            Command::Help(_) => Action::Reply(Reply::multi(
                214,
                vec![
                    "The following commands are recognized:".into(),
                    "ABOR ALLO APPE CDUP CWD DELE EPRT EPSV FEAT HELP LIST MDTM MFMT MKD MLSD"
                        .into(),
                    "MLST MODE NLST NOOP OPTS PASS PASV PORT PRET PWD QUIT REST RETR RMD RNFR"
                        .into(),
                    "RNTO SITE SIZE STAT STOR STOU STRU SYST TYPE USER XCRC XCUP XCWD XMKD XPWD XRMD HASH"
                        .into(),
                    "SITE commands: HELP SLAVES WHO".into(),
                    "Help OK".into(),
                ],
            )),
            Command::Stat(None) => Action::Reply(Reply::multi(
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
            )),
            Command::Stat(Some(arg)) => {
                let path = match self.resolve(&arg) {
                    Ok(p) => p,
                    Err(a) => return a,
                };
                match self.entries(st, &path) {
                    Ok(entries) => {
                        let now = st.now;
                        let mut lines = vec![format!("Status of {path}:")];
                        lines.extend(entries.iter().map(|e| listing::list_line(e, now)));
                        lines.push("End of status".into());
                        Action::Reply(Reply::multi(213, lines))
                    }
                    Err(e) => db_reply(e),
                }
            }
            Command::Type(t) => {
                self.ttype = t;
                match self.ttype {
                    TransferType::Ascii => r(200, "Type set to A"),
                    TransferType::Image => r(200, "Type set to I"),
                }
            }
            Command::Mode => r(200, "Mode set to S"),
            Command::Stru => r(200, "Structure set to F"),
            Command::Allo => r(202, "No storage allocation necessary"),
            Command::Pwd => r(
                257,
                format!("{} is the current directory", quote_path(self.cwd.as_str())),
            ),
            Command::Cwd(arg) => self.cwd(&arg, st),
            Command::Cdup => self.cwd("..", st),
            Command::Rest(n) => {
                self.rest = n;
                r(
                    350,
                    format!("Restarting at {n}. Send STORE or RETRIEVE to initiate transfer"),
                )
            }
            Command::Xcrc(arg) | Command::Hash(arg) => {
                let hash = cmd_verb == "HASH";
                match self.resolve(&arg) {
                    Ok(p) => match st.db.file(&p) {
                        Ok(FileMeta {
                            crc32: Some(c),
                            size,
                            ..
                        }) if hash => r(213, format!("CRC32 0-{size} {c:08x} {p}")),
                        Ok(FileMeta { crc32: Some(c), .. }) => {
                            r(250, format!("XCRC Successful. {c:08X}"))
                        }
                        Ok(_) => r(
                            550,
                            format!(
                                "{p}: no checksum recorded (the file was found on a slave's disk, \
                                 not uploaded through dftpd)"
                            ),
                        ),
                        Err(e) => path_reply(&p, e),
                    },
                    Err(a) => a,
                }
            }
            Command::Size(arg) => match self.resolve(&arg) {
                Ok(p) => match st.db.file(&p) {
                    Ok(f) => r(213, f.size.to_string()),
                    Err(e) => path_reply(&p, e),
                },
                Err(a) => a,
            },
            Command::Mdtm(arg) => match self.resolve(&arg) {
                Ok(p) => match st.db.file(&p) {
                    Ok(f) => r(213, listing::mdtm(f.mtime)),
                    Err(e) => path_reply(&p, e),
                },
                Err(a) => a,
            },
            Command::Mfmt { time, path } => {
                let Some(t) = listing::parse_mdtm(&time) else {
                    return r(501, "Invalid time, use YYYYMMDDHHMMSS");
                };
                match self.resolve(&path) {
                    Ok(p) if self.permit(st, Perm::Overwrite, &p).is_err() => {
                        self.permit(st, Perm::Overwrite, &p).unwrap_err()
                    }
                    Ok(p) => match st.db.set_mtime(&p, t) {
                        Ok(()) => r(213, format!("Modify={time}; {path}")),
                        Err(e) => db_reply(e),
                    },
                    Err(a) => a,
                }
            }
            Command::Mkd(arg) => match self.resolve(&arg) {
                Ok(p) => {
                    if let Err(a) = self.permit(st, Perm::Mkdir, &p) {
                        return a;
                    }
                    let now = st.now;
                    match st.db.mkdir(&p, &self.owner(), now) {
                        Ok(()) => r(257, format!("{} created", quote_path(p.as_str()))),
                        Err(e) => path_reply(&p, e),
                    }
                }
                Err(a) => a,
            },
            Command::Rmd(arg) => match self.resolve(&arg) {
                Ok(p) if p == self.cwd && !p.is_root() => {
                    r(550, "Cannot remove the current directory")
                }
                Ok(p) if self.permit(st, Perm::Rmdir, &p).is_err() => {
                    self.permit(st, Perm::Rmdir, &p).unwrap_err()
                }
                Ok(p) => match st.db.rmdir(&p) {
                    Ok(()) => {
                        let ids: Vec<SlaveId> = st
                            .slaves
                            .iter()
                            .filter(|(_, s)| s.is_online())
                            .map(|(i, _)| i)
                            .collect();
                        for id in ids {
                            st.slaves
                                .apply_op(id, FileOp::RemoveDir { path: p.clone() });
                        }
                        r(250, format!("{} removed", quote_path(p.as_str())))
                    }
                    Err(e) => path_reply(&p, e),
                },
                Err(a) => a,
            },
            Command::Dele(arg) => match self.resolve(&arg) {
                Ok(p) if self.permit(st, Perm::Delete, &p).is_err() => {
                    self.permit(st, Perm::Delete, &p).unwrap_err()
                }
                Ok(p) => match st.db.remove_file(&p) {
                    Ok(meta) => {
                        for h in meta.holders {
                            st.slaves.apply_op(h, FileOp::Delete { path: p.clone() });
                        }
                        r(250, format!("{} deleted", quote_path(p.as_str())))
                    }
                    Err(e) => path_reply(&p, e),
                },
                Err(a) => a,
            },
            Command::Rnfr(arg) => match self.resolve(&arg) {
                Ok(p) if self.permit(st, Perm::Rename, &p).is_err() => {
                    self.rnfr = None;
                    self.permit(st, Perm::Rename, &p).unwrap_err()
                }
                Ok(p) if st.db.get(&p).is_some() => {
                    self.rnfr = Some(p);
                    r(350, "File exists, ready for destination name")
                }
                Ok(_) => {
                    self.rnfr = None;
                    r(550, "No such file or directory")
                }
                Err(a) => a,
            },
            Command::Rnto(arg) => {
                let Some(from) = self.rnfr.take() else {
                    return r(503, "Send RNFR first");
                };
                let to = match self.resolve(&arg) {
                    Ok(p) => p,
                    Err(a) => return a,
                };
                if let Err(a) = self.permit(st, Perm::Rename, &to) {
                    return a;
                }
                let holders = st.db.holders_under(&from);
                let now = st.now;
                match st.db.rename(&from, &to, now) {
                    Ok(()) => {
                        for h in holders {
                            st.slaves.apply_op(
                                h,
                                FileOp::Rename {
                                    from: from.clone(),
                                    to: to.clone(),
                                },
                            );
                        }
                        if self.cwd.starts_with(&from) {
                            // Keep the session inside the directory it was in.
                            if let Some(rest) = self.cwd.strip_prefix(&from) {
                                let mut p = to.clone();
                                for c in rest {
                                    if let Ok(q) = p.join(c) {
                                        p = q;
                                    }
                                }
                                self.cwd = p;
                            }
                        }
                        r(250, "Rename successful")
                    }
                    Err(e) => db_reply(e),
                }
            }
            Command::Site { verb, args } => self.site(&verb, &args, st),
            Command::Pret(inner) => self.pret(*inner, st),
            Command::Pasv => {
                self.tls.cpsv = false;
                self.pasv(false, st)
            }
            Command::Epsv(EpsvArg::All) => {
                self.epsv_all = true;
                r(
                    200,
                    "EPSV ALL ok: PORT, EPRT and PASV are refused from now on",
                )
            }
            Command::Epsv(EpsvArg::Proto(p)) if (p == 1) != self.local.is_ipv4() => {
                r(522, "Network protocol not supported, use (1,2)")
            }
            Command::Epsv(_) => {
                self.tls.cpsv = false;
                self.pasv(true, st)
            }
            Command::Port(a) => {
                self.tls.cpsv = false;
                self.port(SocketAddr::V4(a), st)
            }
            Command::Eprt(a) => {
                self.tls.cpsv = false;
                self.port(a, st)
            }
            Command::Abor => {
                self.rest = 0;
                Action::ResetData(Reply::new(
                    225,
                    "No transfer to abort; data connection closed",
                ))
            }
            Command::Retr(arg) => self.retr(&arg, st),
            Command::Stor(arg) => self.store(PlanVerb::Stor, Some(&arg), st),
            Command::Appe(arg) => self.store(PlanVerb::Appe, Some(&arg), st),
            Command::Stou(arg) => self.store(PlanVerb::Stou, arg.as_deref(), st),
            Command::List(args) => self.listing(PlanVerb::List, args, st),
            Command::Nlst(args) => self.listing(PlanVerb::Nlst, args, st),
            Command::Mlsd(path) => self.listing(
                PlanVerb::Mlsd,
                ListArgs {
                    path,
                    options: String::new(),
                },
                st,
            ),
            Command::Mlst(arg) => self.mlst(arg.as_deref(), st),
            Command::Auth(mechanism) => self.auth(&mechanism, st),
            Command::Pbsz(size) => self.pbsz(&size),
            Command::Prot(level) => self.prot(&level),
            Command::Ccc => self.ccc(),
            // FXP (server-to-server) under TLS, as DrFTPD: one of the two
            // servers must be the TLS client of the data connection.
            Command::Sscn(arg) => self.sscn(arg.as_deref(), st),
            Command::Cpsv => {
                if let Err(a) = self.fxp_allowed(st, "CPSV") {
                    return a;
                }
                let action = self.pasv(false, st);
                self.tls.cpsv = matches!(action, Action::OpenPassive { .. });
                action
            }
        }
    }

    fn pass(&mut self, pass: String, st: &mut MasterState) -> Action {
        let name = match &self.login {
            Login::NeedPass(n) => n.clone(),
            Login::LoggedIn { .. } => return r(503, "Already logged in"),
            Login::NeedUser => return r(503, "Login with USER first"),
        };
        // Every attempt costs one verification, known user or not.
        let (hash, _known) = st.users.hash_for(&name);
        Action::CheckPassword(Box::new(LoginCheck {
            user: name,
            password: pass,
            hash,
        }))
    }

    /// The password check came back. Returns the reply and how long to wait
    /// before sending it (failed logins: the same delay for every user name,
    /// growing with repeated failures).
    pub fn login_result(
        &mut self,
        st: &mut MasterState,
        check: &LoginCheck,
        verified: bool,
        now_ms: u64,
    ) -> (Action, std::time::Duration) {
        let ip = self.peer.ip();
        let name = check.user.clone();
        let guard = st.config.guard.clone();
        if let Err(e) = st.login_guard.check(&guard, ip, &name, now_ms) {
            self.login = Login::NeedUser;
            tracing::warn!(user = %name, %ip, "login refused: banned after repeated failures");
            return (
                Action::Close(Reply::new(e.code(), e.to_string())),
                Default::default(),
            );
        }
        let user = st.users.get(&name).filter(|_| verified).cloned();
        let Some(u) = user else {
            self.login = Login::NeedUser;
            let delay = st.login_guard.failure(&guard, ip, &name, now_ms);
            tracing::info!(user = %name, %ip, "login failed");
            return (r(530, "Login incorrect"), delay);
        };
        st.login_guard.success(ip, &name);
        // Checked only once the password is proven: refusing earlier would
        // tell a guesser which names exist.
        if u.tls != users::TlsPolicy::Optional && !self.tls.control {
            self.login = Login::NeedUser;
            return (
                r(
                    530,
                    "This account requires TLS: send AUTH TLS before logging in",
                ),
                Default::default(),
            );
        }
        let limit = u.max_sessions.unwrap_or(guard.max_sessions_per_user);
        if let Err(e) = st.limits.login(&name, limit) {
            self.login = Login::NeedUser;
            return (
                Action::Close(Reply::new(e.code(), e.to_string())),
                Default::default(),
            );
        }
        self.home = u.home_path();
        self.cwd = self.home.clone();
        if st.db.dir(&self.cwd).is_err() {
            // A home that does not exist yet is created for the user.
            let now = st.now;
            if st.db.mkdir_all(&self.cwd, &u.name, now).is_err() {
                self.cwd = self.home.clone();
            }
        }
        self.login = Login::LoggedIn {
            user: u.name.clone(),
            admin: u.admin,
        };
        tracing::info!(user = %u.name, "logged in");
        (
            r(230, format!("User {} logged in", u.name)),
            Default::default(),
        )
    }

    fn cwd(&mut self, arg: &str, st: &mut MasterState) -> Action {
        let p = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if let Err(a) = self.permit(st, Perm::List, &p) {
            return a;
        }
        match st.db.dir(&p) {
            Ok(_) => {
                self.cwd = p;
                r(250, format!("Directory changed to {}", self.cwd))
            }
            Err(e) => path_reply(&p, e),
        }
    }

    fn site(&mut self, verb: &str, args: &str, st: &mut MasterState) -> Action {
        if matches!(verb, "ADDUSER" | "DELUSER" | "CHPASS" | "CHGRP") {
            if !self.is_admin(st) {
                return r(550, format!("SITE {verb}: permission denied (admins only)"));
            }
            return match self.site_user(verb, args, st) {
                Ok(text) => r(200, text),
                Err(e) => r(e.code(), e.to_string()),
            };
        }
        match verb {
            "HELP" => Action::Reply(Reply::multi(
                214,
                vec![
                    "SITE commands:".into(),
                    "SITE SLAVES  each slave: state, free space, files, active transfers".into(),
                    "SITE WHO     sessions on this master".into(),
                    "SITE ADDUSER <user> <password> [group]   (admins)".into(),
                    "SITE DELUSER <user>                      (admins)".into(),
                    "SITE CHPASS <user> <password>            (admins)".into(),
                    "SITE CHGRP <user> <group> [group...]     (admins; replaces the groups)".into(),
                    "End".into(),
                ],
            )),
            "SLAVES" => {
                let mut lines = vec![format!("{} slaves:", st.slaves.iter().count())];
                for (id, s) in st.slaves.iter() {
                    lines.push(format!(
                        "{} {} free={} files={} active={} planned={} sent={} received={} relayed={}",
                        s.name,
                        s.state.as_str(),
                        s.free,
                        st.db.held_by(id),
                        s.active,
                        s.reserved,
                        s.bytes_sent,
                        s.bytes_received,
                        s.relayed_bytes
                    ));
                }
                lines.push("End".into());
                Action::Reply(Reply::multi(200, lines))
            }
            "WHO" => {
                let mut lines = vec![format!("{} sessions:", st.sessions.len())];
                for (id, s) in &st.sessions {
                    lines.push(format!(
                        "#{id} {} from {} in {} {}",
                        s.user.as_deref().unwrap_or("-"),
                        s.peer,
                        s.cwd,
                        s.doing.as_deref().unwrap_or("idle")
                    ));
                }
                lines.push("End".into());
                Action::Reply(Reply::multi(200, lines))
            }
            // lftp sends SITE CHMOD after uploads; modes are not kept (each
            // slave's disk has its own), so say exactly that.
            "CHMOD" => r(
                502,
                "SITE CHMOD is not implemented: dftpd does not keep Unix modes",
            ),
            _ => r(500, format!("Unknown SITE command {verb}; try SITE HELP")),
        }
    }

    /// SITE ADDUSER / DELUSER / CHPASS / CHGRP (the caller checked that the
    /// user is an admin). Changes are stored and override the config.
    fn site_user(
        &mut self,
        verb: &str,
        args: &str,
        st: &mut MasterState,
    ) -> Result<String, users::UserError> {
        use users::UserError;
        let w = users::words(args);
        let name = w.first().copied().unwrap_or("");
        let cost = st.config.password_cost;
        let salt = st.salt;
        match (verb, w.len()) {
            ("ADDUSER", 2 | 3) => {
                if !users::valid_name(name) {
                    return Err(UserError::BadName(name.into()));
                }
                if let Some(g) = w.get(2).filter(|g| !users::valid_name(g)) {
                    return Err(UserError::BadName(g.to_string()));
                }
                if st.users.get(name).is_some() {
                    return Err(UserError::Exists(name.into()));
                }
                let hash = users::hash_password(w[1], salt, cost)?;
                st.users.insert(users::User {
                    name: name.into(),
                    password_hash: hash,
                    groups: w.get(2).map(|g| vec![g.to_string()]).unwrap_or_default(),
                    home: "/".into(),
                    admin: false,
                    fxp: false,
                    tls: users::TlsPolicy::Optional,
                    max_sessions: None,
                    upload_quota: None,
                    uploaded: 0,
                });
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "user added");
                Ok(format!("User {name} added"))
            }
            ("DELUSER", 1) => {
                if Some(name) == self.user() {
                    return Err(UserError::Usage("SITE DELUSER <user> (not yourself)"));
                }
                st.users
                    .remove(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "user deleted");
                Ok(format!("User {name} deleted"))
            }
            ("CHPASS", 2) => {
                let hash = users::hash_password(w[1], salt, cost)?;
                let u = st
                    .users
                    .get_mut(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                u.password_hash = hash;
                st.user_changed(name);
                tracing::info!(admin = ?self.user(), user = name, "password changed");
                Ok(format!("Password of {name} changed"))
            }
            ("CHGRP", n) if n >= 2 => {
                if let Some(g) = w[1..].iter().find(|g| !users::valid_name(g)) {
                    return Err(UserError::BadName(g.to_string()));
                }
                let u = st
                    .users
                    .get_mut(name)
                    .ok_or_else(|| UserError::Unknown(name.into()))?;
                u.groups = w[1..].iter().map(|g| g.to_string()).collect();
                let text = format!("Groups of {name}: {}", u.groups.join(" "));
                st.user_changed(name);
                Ok(text)
            }
            ("ADDUSER", _) => Err(UserError::Usage("SITE ADDUSER <user> <password> [group]")),
            ("DELUSER", _) => Err(UserError::Usage("SITE DELUSER <user>")),
            ("CHPASS", _) => Err(UserError::Usage("SITE CHPASS <user> <password>")),
            _ => Err(UserError::Usage("SITE CHGRP <user> <group> [group...]")),
        }
    }

    fn pret(&mut self, inner: Command, st: &mut MasterState) -> Action {
        self.clear_plan(st);
        let (verb, arg) = match &inner {
            Command::Retr(a) => (PlanVerb::Retr, Some(a.as_str())),
            Command::Stor(a) => (PlanVerb::Stor, Some(a.as_str())),
            Command::Appe(a) => (PlanVerb::Appe, Some(a.as_str())),
            Command::Stou(a) => (PlanVerb::Stou, a.as_deref()),
            Command::List(a) => (PlanVerb::List, a.path.as_deref()),
            Command::Nlst(a) => (PlanVerb::Nlst, a.path.as_deref()),
            Command::Mlsd(a) => (PlanVerb::Mlsd, a.as_deref()),
            other => return r(504, format!("PRET {} is not supported", other.verb())),
        };
        let path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => Some(p),
                Err(e) => return e,
            },
            None => None,
        };
        let target = match verb {
            PlanVerb::List | PlanVerb::Nlst | PlanVerb::Mlsd => Target::Master,
            PlanVerb::Retr => {
                let p = path.clone().unwrap_or_else(VPath::root);
                match self.download_slave(&p, st) {
                    Ok(s) => Target::Slave(s),
                    Err(a) => return a,
                }
            }
            PlanVerb::Stor | PlanVerb::Appe | PlanVerb::Stou => {
                match self.upload_slave(verb, path.as_ref(), st) {
                    Ok(s) => Target::Slave(s),
                    Err(a) => return a,
                }
            }
        };
        if let Target::Slave(s) = target {
            if let Some(info) = st.slaves.get_mut(s) {
                info.reserved += 1;
            }
        }
        self.plan = Some(Plan { verb, path, target });
        let text = match (verb, target) {
            (_, Target::Master) => format!(
                "OK, planning to use master for upcoming {} transfer",
                verb.as_str()
            ),
            (PlanVerb::Retr, _) => "OK, planning for upcoming download".to_string(),
            _ => "OK, planning for upcoming upload".to_string(),
        };
        // A new plan invalidates any data endpoint opened for the old one.
        Action::ResetData(Reply::new(200, text))
    }

    /// An online slave holding `path`, least loaded.
    fn download_slave(&self, path: &VPath, st: &mut MasterState) -> Result<SlaveId, Action> {
        self.permit(st, Perm::Download, path)?;
        let holders = match st.db.file(path) {
            Ok(f) => f.holders.clone(),
            Err(e) => return Err(path_reply(path, e)),
        };
        st.slaves.choose_download(&holders).ok_or_else(|| {
            r(
                550,
                format!("{path}: file temporarily unavailable (no online slave holds it)"),
            )
        })
    }

    /// The slave an upload of `path` goes to. Overwriting, appending to or
    /// resuming an existing file goes to a slave holding it.
    fn upload_slave(
        &self,
        verb: PlanVerb,
        path: Option<&VPath>,
        st: &mut MasterState,
    ) -> Result<SlaveId, Action> {
        if let Some(user) = self.user().and_then(|u| st.users.get(u)) {
            if user.upload_quota.is_some_and(|q| user.uploaded >= q) {
                return Err(r(
                    552,
                    format!(
                        "Upload quota exceeded ({} of {} bytes used)",
                        user.uploaded,
                        user.upload_quota.unwrap_or(0)
                    ),
                ));
            }
        }
        if let Some(p) = path {
            self.permit(st, Perm::Upload, p)?;
        }
        if let Some(p) = path.filter(|_| verb != PlanVerb::Stou) {
            match p.parent() {
                Some(parent) if st.db.dir(&parent).is_ok() => {}
                _ => return Err(r(553, format!("{p}: no such directory"))),
            }
            match st.db.get(p) {
                Some(Node::Dir(_)) => return Err(r(550, format!("{p}: is a directory"))),
                Some(Node::File(f)) => {
                    if verb == PlanVerb::Stor && self.rest == 0 {
                        self.permit(st, Perm::Overwrite, p)?;
                    }
                    if verb == PlanVerb::Stor && !st.config.allow_overwrite {
                        return Err(r(
                            553,
                            format!("{p}: file exists and overwriting is not allowed"),
                        ));
                    }
                    let holders = f.holders.clone();
                    return st.slaves.choose_download(&holders).ok_or_else(|| {
                        r(
                            550,
                            format!("{p}: file temporarily unavailable (no online slave holds it)"),
                        )
                    });
                }
                None => {}
            }
        }
        let min_free = st.config.min_free_bytes;
        st.slaves.choose_upload(min_free).ok_or_else(|| {
            r(
                452,
                "No slave is available to store the file (all offline or full)",
            )
        })
    }

    fn pasv(&mut self, epsv: bool, st: &mut MasterState) -> Action {
        if self.epsv_all && !epsv {
            return r(503, "EPSV ALL is in effect: use EPSV");
        }
        match self.plan.as_ref().map(|p| p.target) {
            Some(Target::Slave(s)) => {
                if !st.slaves.is_online(s) {
                    self.clear_plan(st);
                    return Action::ResetData(Reply::new(
                        425,
                        "The slave planned by PRET went offline; send PRET again",
                    ));
                }
                if epsv {
                    // EPSV carries no address: only usable when the slave
                    // shares the master's address. Keep the plan, so the
                    // client's fallback PASV (curl, rclone) still routes.
                    let same = st.slaves.get(s).and_then(|i| i.data_ip) == Some(self.local.ip());
                    if !same {
                        return r(
                            502,
                            format!(
                                "EPSV cannot name slave {}'s address; use PASV",
                                st.slaves.name(s)
                            ),
                        );
                    }
                }
                let xfer = st.next_id();
                Action::OpenPassive {
                    target: Target::Slave(s),
                    xfer,
                    epsv,
                }
            }
            _ => {
                if self.plan.is_none() && st.config.pasv_without_pret == PasvWithoutPret::Refuse {
                    return r(
                        500,
                        "You need to use a client supporting PRET (PRE Transfer) to use PASV",
                    );
                }
                let xfer = st.next_id();
                Action::OpenPassive {
                    target: Target::Master,
                    xfer,
                    epsv,
                }
            }
        }
    }

    /// The driver opened (or failed to open) the passive endpoint.
    pub fn passive_opened(
        &mut self,
        st: &MasterState,
        target: Target,
        xfer: u64,
        epsv: bool,
        result: Result<SocketAddr, String>,
    ) -> Reply {
        let addr = match result {
            Ok(a) => a,
            Err(e) => {
                self.data = DataSetup::None;
                return Reply::new(425, format!("Cannot open passive connection: {e}"));
            }
        };
        self.data = DataSetup::Passive { target, xfer, addr };
        let on = match target {
            Target::Slave(s) => format!(" on slave {}", st.slaves.name(s)),
            Target::Master => String::new(),
        };
        if epsv {
            return Reply::new(
                229,
                format!(
                    "Entering Extended Passive Mode {}{on}",
                    addr::format_epsv(addr.port())
                ),
            );
        }
        match addr {
            SocketAddr::V4(a) => Reply::new(
                227,
                format!("Entering Passive Mode ({}){on}", addr::format_pasv(a)),
            ),
            SocketAddr::V6(_) => {
                self.data = DataSetup::None;
                Reply::new(425, "PASV needs an IPv4 address; use EPSV")
            }
        }
    }

    fn port(&mut self, a: SocketAddr, st: &MasterState) -> Action {
        if self.epsv_all {
            return r(503, "EPSV ALL is in effect: use EPSV");
        }
        // Bounce protection (RFC 2577 §3): data only to the control peer,
        // never to a privileged port. Users allowed FXP may name another
        // host (server-to-server transfers), still not a privileged port.
        let fxp = self
            .user()
            .and_then(|u| st.users.get(u))
            .is_some_and(|u| u.fxp);
        if a.ip() != self.peer.ip() && !fxp {
            return r(
                504,
                "PORT to an address other than yours is refused (RFC 2577)",
            );
        }
        if a.port() < 1024 {
            return r(504, "PORT to a privileged port is refused (RFC 2577)");
        }
        self.data = DataSetup::Active(a);
        Action::SetActive(Reply::new(200, "PORT command successful"))
    }

    /// Checks that a data command matches the PRET that planned it. On a
    /// mismatch the plan and the data endpoint are released.
    fn check_plan(
        &mut self,
        verb: PlanVerb,
        path: Option<&VPath>,
        st: &mut MasterState,
    ) -> Result<Option<Plan>, Action> {
        let Some(plan) = self.plan.clone() else {
            return Ok(None);
        };
        // Listings are all served by the master: any listing PRET covers
        // any listing command (ftplib's nlst after PRET LIST).
        let listing = |v: PlanVerb| matches!(v, PlanVerb::List | PlanVerb::Nlst | PlanVerb::Mlsd);
        let verb_ok = plan.verb == verb || (listing(plan.verb) && listing(verb));
        let path_ok = match verb {
            PlanVerb::Retr | PlanVerb::Stor | PlanVerb::Appe => plan.path.as_ref() == path,
            _ => true,
        };
        if verb_ok && path_ok {
            return Ok(Some(plan));
        }
        let announced = match &plan.path {
            Some(p) => format!("PRET {} {p}", plan.verb.as_str()),
            None => format!("PRET {}", plan.verb.as_str()),
        };
        let got = match path {
            Some(p) => format!("{} {p}", verb.as_str()),
            None => verb.as_str().to_string(),
        };
        self.clear_plan(st);
        self.data = DataSetup::None;
        Err(Action::ResetData(Reply::new(
            503,
            format!("{got} does not match {announced}; send PRET again"),
        )))
    }

    fn no_data(&self) -> Action {
        r(503, "Use PRET and PASV, EPSV, PORT or EPRT first")
    }

    fn retr(&mut self, arg: &str, st: &mut MasterState) -> Action {
        let path = match self.resolve(arg) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        let plan = match self.check_plan(PlanVerb::Retr, Some(&path), st) {
            Ok(p) => p,
            Err(a) => return a,
        };
        let meta = match st.db.file(&path) {
            Ok(f) => f.clone(),
            Err(e) => {
                self.clear_plan(st);
                return match e {
                    DbError::NotFound | DbError::IsADirectory => {
                        Action::ResetData(Reply::new(550, format!("{path}: {e}")))
                    }
                    _ => db_reply(e),
                };
            }
        };
        if self.rest > meta.size {
            let rest = self.rest;
            self.rest = 0;
            return r(
                554,
                format!(
                    "Restart offset {rest} is beyond the end of the file ({})",
                    meta.size
                ),
            );
        }
        let (slave, route, xfer) = match self.route(PlanVerb::Retr, plan, Some(&path), st) {
            Ok(x) => x,
            Err(a) => return a,
        };
        if !meta.holders.contains(&slave) {
            self.data = DataSetup::None;
            return Action::ResetData(Reply::new(
                550,
                format!("{path}: the planned slave no longer holds the file; send PRET again"),
            ));
        }
        let offset = std::mem::take(&mut self.rest);
        let name = st.slaves.name(slave).to_string();
        let mode = if self.ttype == TransferType::Ascii {
            "ASCII"
        } else {
            "BINARY"
        };
        let opening = Reply::new(
            150,
            format!(
                "Opening {mode} mode data connection for {path} ({} bytes) on slave {name}",
                meta.size
            ),
        );
        self.start_job(
            st,
            TransferJob {
                slave,
                slave_name: name,
                xfer,
                order: TransferOrder::Send { path, offset },
                route,
                opening,
                upload_path: None,
            },
        )
    }

    /// Picks the slave and data route for a file transfer, consuming the
    /// data setup. `plan` is the matching PRET, if any.
    fn route(
        &mut self,
        verb: PlanVerb,
        plan: Option<Plan>,
        path: Option<&VPath>,
        st: &mut MasterState,
    ) -> Result<(SlaveId, Route, u64), Action> {
        let planned = plan.and_then(|p| match p.target {
            Target::Slave(s) => Some(s),
            Target::Master => None,
        });
        let data = std::mem::replace(&mut self.data, DataSetup::None);
        let fresh = |this: &Self, st: &mut MasterState| -> Result<SlaveId, Action> {
            if let Some(s) = planned {
                return Ok(s);
            }
            match verb {
                PlanVerb::Retr => this.download_slave(path.unwrap_or(&VPath::root()), st),
                _ => this.upload_slave(verb, path, st),
            }
        };
        match data {
            DataSetup::Passive {
                target: Target::Slave(s),
                xfer,
                ..
            } => Ok((s, Route::SlavePassive, xfer)),
            DataSetup::Passive {
                target: Target::Master,
                xfer,
                addr,
            } => {
                if st.config.pasv_without_pret != PasvWithoutPret::Relay {
                    // Keep the listener: clients that connect after sending
                    // the command (suppaftp, ftplib) then read this reply
                    // instead of a reset connection.
                    self.data = DataSetup::Passive {
                        target: Target::Master,
                        xfer,
                        addr,
                    };
                    return Err(needs_pret(verb));
                }
                match fresh(self, st) {
                    Ok(s) => Ok((s, Route::Relay, xfer)),
                    Err(a) => {
                        // Keep the master listener: the client may retry.
                        self.data = DataSetup::Passive {
                            target: Target::Master,
                            xfer,
                            addr,
                        };
                        Err(a)
                    }
                }
            }
            DataSetup::Active(a) => match fresh(self, st) {
                Ok(s) => Ok((s, Route::Active(a), st.next_id())),
                Err(e) => {
                    self.data = DataSetup::Active(a);
                    Err(e)
                }
            },
            DataSetup::None => Err(self.no_data()),
        }
    }

    fn start_job(&mut self, st: &mut MasterState, job: TransferJob) -> Action {
        if let Some(refused) = self.tls_slave_check(st, &job) {
            return refused;
        }
        // The plan (if any) becomes a running transfer.
        if let Some(Plan {
            target: Target::Slave(_),
            ..
        }) = self.plan.take()
        {
            if let Some(info) = st.slaves.get_mut(job.slave) {
                info.reserved = info.reserved.saturating_sub(1);
            }
        }
        if let Some(info) = st.slaves.get_mut(job.slave) {
            info.active += 1;
        }
        let doing = match &job.order {
            TransferOrder::Send { path, .. } => format!("RETR {path} on {}", job.slave_name),
            TransferOrder::Receive { path, .. } => format!("STOR {path} on {}", job.slave_name),
        };
        self.set_doing(st, Some(doing));
        Action::Transfer(Box::new(job))
    }

    fn store(&mut self, verb: PlanVerb, arg: Option<&str>, st: &mut MasterState) -> Action {
        let mut path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => Some(p),
                Err(e) => return e,
            },
            None => None,
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        let check_path = if verb == PlanVerb::Stou {
            None
        } else {
            path.as_ref()
        };
        let plan = match self.check_plan(verb, check_path, st) {
            Ok(p) => p,
            Err(a) => return a,
        };
        if verb == PlanVerb::Stou {
            // A unique name in the named directory (or the cwd).
            let dir = match &path {
                Some(p) if st.db.dir(p).is_ok() => p.clone(),
                Some(p) => p.parent().unwrap_or_else(VPath::root),
                None => self.cwd.clone(),
            };
            let mut n = self.id;
            let unique = loop {
                let Ok(candidate) = dir.join(&format!("stou.{}.{n}", self.id)) else {
                    return r(553, "Cannot make a unique name here");
                };
                if st.db.get(&candidate).is_none() {
                    break candidate;
                }
                n += 1;
            };
            path = Some(unique);
        }
        let Some(path) = path else {
            return r(501, "Missing file name");
        };
        if plan.is_none() {
            // No PRET: the checks PRET would have made happen now.
            if let Err(a) = self.upload_slave(verb, Some(&path), st).map(|_| ()) {
                return a;
            }
        } else if verb == PlanVerb::Stor && !st.config.allow_overwrite && st.db.get(&path).is_some()
        {
            self.clear_plan(st);
            return Action::ResetData(Reply::new(
                553,
                format!("{path}: file exists and overwriting is not allowed"),
            ));
        }
        let offset = match verb {
            PlanVerb::Appe => Some(APPEND),
            _ if self.rest > 0 => Some(self.rest),
            _ => None,
        };
        let (slave, route, xfer) = match self.route(verb, plan, Some(&path), st) {
            Ok(x) => x,
            Err(a) => return a,
        };
        if offset.is_some() {
            if let Ok(f) = st.db.file(&path) {
                if !f.holders.contains(&slave) {
                    self.rest = 0;
                    return Action::ResetData(Reply::new(
                        550,
                        format!(
                            "{path}: resume must go to a slave holding the file; send PRET again"
                        ),
                    ));
                }
            }
        }
        self.rest = 0;
        let name = st.slaves.name(slave).to_string();
        let opening = if verb == PlanVerb::Stou {
            // RFC 1123 §4.1.2.9: the reply names the file.
            Reply::new(150, format!("FILE: {}", path.file_name().unwrap_or("")))
        } else {
            Reply::new(
                150,
                format!("Opening BINARY mode data connection for {path} on slave {name}"),
            )
        };
        self.start_job(
            st,
            TransferJob {
                slave,
                slave_name: name,
                xfer,
                order: TransferOrder::Receive {
                    path: path.clone(),
                    offset,
                },
                route,
                opening,
                upload_path: Some(path),
            },
        )
    }

    /// The driver finished a slave transfer (successfully or not).
    pub fn transfer_done(
        &mut self,
        st: &mut MasterState,
        job: &TransferJob,
        outcome: TransferOutcome,
    ) -> Reply {
        if let Some(info) = st.slaves.get_mut(job.slave) {
            info.active = info.active.saturating_sub(1);
        }
        self.set_doing(st, None);
        match outcome {
            TransferOutcome::Sent { bytes } => {
                if let Some(info) = st.slaves.get_mut(job.slave) {
                    info.bytes_sent += bytes;
                    if job.route == Route::Relay {
                        info.relayed_bytes += bytes;
                    }
                }
                Reply::new(
                    226,
                    format!("Transfer complete, {bytes} bytes from {}", job.slave_name),
                )
            }
            TransferOutcome::Committed { size, mtime, crc32 } => {
                let Some(path) = job.upload_path.clone() else {
                    return Reply::new(226, "Transfer complete");
                };
                let owner = self.owner();
                if let Some(parent) = path.parent() {
                    // The directory may have been removed during the upload.
                    let _ = st.db.mkdir_all(&parent, &owner, mtime);
                }
                let owner = st.db.intern(&owner);
                let meta = FileMeta {
                    size,
                    mtime,
                    owner,
                    group: owner,
                    crc32: Some(crc32),
                    holders: Holders::from_slice(&[job.slave]),
                };
                match st.db.put_file(&path, meta) {
                    Ok(old) => {
                        if let Some(name) = self.user().map(str::to_string) {
                            let counted = st.users.get_mut(&name).is_some_and(|u| {
                                u.uploaded = u.uploaded.saturating_add(size);
                                u.upload_quota.is_some()
                            });
                            // Only quota users' counters are worth a write.
                            if counted {
                                st.user_changed(&name);
                            }
                        }
                        // Other copies of an overwritten file are stale.
                        for h in old.map(|o| o.holders).unwrap_or_default() {
                            if h != job.slave {
                                st.slaves.apply_op(h, FileOp::Delete { path: path.clone() });
                            }
                        }
                        if let Some(info) = st.slaves.get_mut(job.slave) {
                            info.bytes_received += size;
                            if job.route == Route::Relay {
                                info.relayed_bytes += size;
                            }
                        }
                        Reply::new(
                            226,
                            format!(
                                "Transfer complete, {size} bytes stored on {}",
                                job.slave_name
                            ),
                        )
                    }
                    Err(e) => {
                        // A directory appeared at that name meanwhile.
                        st.slaves
                            .apply_op(job.slave, FileOp::Delete { path: path.clone() });
                        Reply::new(550, format!("{path}: {e}"))
                    }
                }
            }
            TransferOutcome::Failed(f) => failure_reply(&f, &job.slave_name),
            TransferOutcome::IgnoredPasvAddress { announced, used } => Reply::new(
                425,
                format!(
                    "Can't open data connection: your client connected to {used} instead of {announced} (slave {}) from the 227 reply. Make it use that address: curl --no-ftp-skip-pasv-ip; Python ftplib: ftp.trust_server_pasv_ipv4_address = True; or use active mode (PORT)",
                    job.slave_name
                ),
            ),
            TransferOutcome::SlaveLost => Reply::new(
                426,
                format!(
                    "Connection closed; transfer aborted: slave {} went offline",
                    job.slave_name
                ),
            ),
        }
    }

    fn listing(&mut self, verb: PlanVerb, args: ListArgs, st: &mut MasterState) -> Action {
        let path = match args.path.as_deref() {
            Some(a) => match self.resolve(a) {
                Ok(p) => p,
                Err(e) => return e,
            },
            None => self.cwd.clone(),
        };
        if self.data == DataSetup::None {
            return self.no_data();
        }
        if let Err(a) = self.check_plan(verb, Some(&path), st) {
            return a;
        }
        self.clear_plan(st);
        if let Err(a) = self.permit(st, Perm::List, &path) {
            return match a {
                Action::Reply(r) => Action::ResetData(r),
                other => other,
            };
        }
        let active = match &self.data {
            DataSetup::Active(a) => Some(*a),
            DataSetup::Passive {
                target: Target::Master,
                ..
            } => None,
            DataSetup::Passive { .. } => {
                self.data = DataSetup::None;
                return Action::ResetData(Reply::new(
                    503,
                    "Listings are served by the master: send PRET LIST, then PASV",
                ));
            }
            DataSetup::None => return self.no_data(),
        };
        let entries = match self.entries(st, &path) {
            Ok(e) => e,
            Err(e) => return Action::ResetData(Reply::new(e.code(), format!("{path}: {e}"))),
        };
        if verb == PlanVerb::Mlsd && st.db.dir(&path).is_err() {
            return Action::ResetData(Reply::new(501, format!("{path}: not a directory")));
        }
        let now = st.now;
        let mut out = String::new();
        for e in &entries {
            match verb {
                PlanVerb::List => out.push_str(&listing::list_line(e, now)),
                PlanVerb::Mlsd => out.push_str(&listing::mlsx_facts(e)),
                _ => match args.path.as_deref() {
                    Some(a) if st.db.dir(&path).is_ok() => {
                        out.push_str(a.trim_end_matches('/'));
                        out.push('/');
                        out.push_str(&e.name);
                    }
                    _ => out.push_str(&e.name),
                },
            }
            out.push_str("\r\n");
        }
        self.data = DataSetup::None;
        Action::Listing(Box::new(ListingJob {
            bytes: out.into_bytes(),
            opening: Reply::new(
                150,
                format!(
                    "Opening ASCII mode data connection for {} of {path}",
                    verb.as_str()
                ),
            ),
            active,
        }))
    }

    /// Entries of a directory, or the one entry of a file.
    fn entries(&self, st: &MasterState, path: &VPath) -> Result<Vec<ListEntry>, DbError> {
        if let Ok(dir) = st.db.dir(path) {
            return Ok(dir
                .children
                .iter()
                .map(|(name, n)| entry(&st.db, name, n))
                .collect());
        }
        match st.db.get(path) {
            Some(n @ Node::File(_)) => Ok(vec![entry(&st.db, path.file_name().unwrap_or(""), n)]),
            _ => Err(DbError::NotFound),
        }
    }

    fn mlst(&mut self, arg: Option<&str>, st: &mut MasterState) -> Action {
        let path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => p,
                Err(e) => return e,
            },
            None => self.cwd.clone(),
        };
        let e = if path.is_root() {
            let d = st.db.root();
            ListEntry {
                name: "/".into(),
                is_dir: true,
                size: 0,
                mtime: d.mtime,
                owner: "root".into(),
                group: "root".into(),
            }
        } else {
            match st.db.get(&path) {
                Some(n) => {
                    let mut e = entry(&st.db, path.as_str(), n);
                    e.name = path.to_string();
                    e
                }
                None => return r(550, format!("{path}: No such file or directory")),
            }
        };
        Action::Reply(Reply::multi(
            250,
            vec![
                format!("Listing {path}"),
                format!(" {}", listing::mlsx_facts(&e)),
                "End".into(),
            ],
        ))
    }

    pub fn peer_ip(&self) -> IpAddr {
        self.peer.ip()
    }

    /// Who may connect to this session's passive listeners: its client's
    /// address (port-stealing protection), or anyone for a user allowed
    /// FXP (the peer is the other server).
    pub fn passive_peer(&self, st: &MasterState) -> Option<IpAddr> {
        (!self.may_fxp(st)).then(|| self.peer.ip())
    }

    fn may_fxp(&self, st: &MasterState) -> bool {
        self.user()
            .and_then(|u| st.users.get(u))
            .is_some_and(|u| u.fxp)
    }

    fn fxp_allowed(&self, st: &MasterState, verb: &str) -> Result<(), Action> {
        if self.may_fxp(st) {
            Ok(())
        } else {
            Err(r(
                550,
                format!("{verb}: server-to-server transfers (FXP) are not allowed for you"),
            ))
        }
    }

    /// SSCN [ON|OFF] (DrFTPD): which TLS role this server takes on data
    /// connections.
    fn sscn(&mut self, arg: Option<&str>, st: &MasterState) -> Action {
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
}

// ---------------------------------------------------------------------------
// FTPS (RFC 4217, explicit; RFC 2228 AUTH/PBSZ/PROT/CCC)
//
// Reply codes chosen (README, "FTPS"):
// - AUTH when TLS is not configured: 502 (not implemented here; FEAT does
//   not list it); an unknown mechanism: 504; a second AUTH: 503.
// - USER/PASS before AUTH under `require_tls_control`: 530 (RFC 4217 §11
//   allows 530 or 534; 530 is "not logged in", which every client reports
//   as a failed login and stops, and what vsftpd answers).
// - A transfer or listing under PROT C with `require_tls_data`: 521 (RFC
//   4217 §10: "data connection cannot be opened with this PROT setting").
// - PROT S/E: 536; CCC: 534 (policy: the control connection stays
//   encrypted); PBSZ/PROT out of order: 503.

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
fn tls_features(st: &MasterState) -> &'static [&'static str] {
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
            .and_then(|u| st.users.get(u))
            .map_or(users::TlsPolicy::Optional, |u| u.tls);
        TlsRequirement {
            control: st.config.require_tls_control || policy != users::TlsPolicy::Optional,
            data: st.config.require_tls_data || policy == users::TlsPolicy::ControlAndData,
        }
    }

    /// Refuses what the TLS policy forbids before the command runs.
    fn tls_gate(&mut self, cmd: &Command, st: &mut MasterState) -> Option<Action> {
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
                "Data connections must be encrypted: send PBSZ 0 and PROT P",
            )));
        }
        None
    }

    /// A `PROT P` transfer on a slave that has no certificate.
    fn tls_slave_check(&mut self, st: &mut MasterState, job: &TransferJob) -> Option<Action> {
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
                "Slave {} has no TLS certificate, so it cannot open a PROT P data connection; use PROT C, or ask the operator to set tls_cert and tls_key on it",
                job.slave_name
            ),
        )))
    }

    fn auth(&mut self, mechanism: &str, st: &mut MasterState) -> Action {
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

    fn pbsz(&mut self, size: &str) -> Action {
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

    fn prot(&mut self, level: &str) -> Action {
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

    fn ccc(&mut self) -> Action {
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
}

fn entry(db: &FileDb, name: &str, n: &Node) -> ListEntry {
    match n {
        Node::File(f) => ListEntry {
            name: name.to_string(),
            is_dir: false,
            size: f.size,
            mtime: f.mtime,
            owner: db.name(f.owner).to_string(),
            group: db.name(f.group).to_string(),
        },
        Node::Dir(d) => ListEntry {
            name: name.to_string(),
            is_dir: true,
            size: 0,
            mtime: d.mtime,
            owner: db.name(d.owner).to_string(),
            group: db.name(d.group).to_string(),
        },
    }
}

/// A file transfer over the master's own passive port (no PRET).
fn needs_pret(verb: PlanVerb) -> Action {
    r(
        503,
        format!(
            "{} over PASV needs PRET first: files live on other hosts. Enable PRET in your client (curl --ftp-pret; lftp and rclone send it when FEAT lists PRET) or use active mode (PORT)",
            verb.as_str()
        ),
    )
}

/// The reply for a failed slave transfer.
pub fn failure_reply(f: &TransferFailure, slave: &str) -> Reply {
    match f {
        TransferFailure::NoDataConnection(why) => Reply::new(
            425,
            format!("Can't open data connection on slave {slave}: {why}"),
        ),
        TransferFailure::FileNotFound => {
            Reply::new(550, format!("File not found on slave {slave}"))
        }
        TransferFailure::Storage(why) => {
            Reply::new(451, format!("Local error on slave {slave}: {why}"))
        }
        TransferFailure::Network(why) => {
            Reply::new(426, format!("Connection closed; transfer aborted: {why}"))
        }
        TransferFailure::Aborted => Reply::new(426, "Connection closed; transfer aborted"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MasterConfig, UserConfig};
    use crate::master::registry::SlaveState;
    use std::sync::Arc;

    const LOCAL: &str = "127.0.0.1:21";
    const PEER: &str = "127.0.0.1:40000";

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    /// A master with slaves s1 (127.0.0.11, online), s2 (127.0.0.12,
    /// online) and s3 (offline); /a on s1, /both on s1+s2, /gone on s3.
    fn state(mode: PasvWithoutPret) -> MasterState {
        let cfg = MasterConfig {
            users: vec![UserConfig {
                name: "u".into(),
                password: "p".into(),
                home: "/".into(),
                admin: false,
                ..Default::default()
            }],
            pasv_without_pret: mode,
            password_cost: users::PasswordCost::FAST,
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(Arc::new(cfg));
        for (name, ip, free, online) in [
            ("s1", 11, 100, true),
            ("s2", 12, 500, true),
            ("s3", 13, 900, false),
        ] {
            let id = st.slaves.id_for(name);
            let info = st.slaves.get_mut(id).unwrap();
            info.data_ip = Some(format!("127.0.0.{ip}").parse().unwrap());
            info.free = free;
            if online {
                info.state = SlaveState::Online;
            }
        }
        let meta = |size, holders: &[SlaveId]| FileMeta {
            size,
            mtime: 0,
            owner: 0,
            group: 0,
            crc32: None,
            holders: Holders::from_slice(holders),
        };
        st.db.put_file(&p("/a"), meta(3, &[0])).unwrap();
        st.db.put_file(&p("/b"), meta(5, &[0])).unwrap();
        st.db.put_file(&p("/both"), meta(4, &[0, 1])).unwrap();
        st.db.put_file(&p("/gone"), meta(4, &[2])).unwrap();
        st
    }

    fn session(st: &mut MasterState) -> Session {
        let mut s = Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        assert_eq!(
            text(s.handle(cmd("USER u"), st)),
            "331 Password required for u"
        );
        assert_eq!(pass(&mut s, st, "p").0, "230 User u logged in");
        s
    }

    /// PASS as the driver runs it: verify, then `login_result`.
    fn pass(s: &mut Session, st: &mut MasterState, pw: &str) -> (String, std::time::Duration) {
        match s.handle(cmd(&format!("PASS {pw}")), st) {
            Action::CheckPassword(check) => {
                let ok = users::verify_password(&check.hash, &check.password);
                let now = 0;
                let (a, delay) = s.login_result(st, &check, ok, now);
                (text(a), delay)
            }
            other => (text(other), std::time::Duration::ZERO),
        }
    }

    fn cmd(line: &str) -> Command {
        Command::parse(line).unwrap()
    }

    fn text(a: Action) -> String {
        match a {
            Action::Reply(r) | Action::ResetData(r) | Action::SetActive(r) | Action::Close(r) => {
                r.to_string()
            }
            other => format!("{other:?}"),
        }
    }

    /// PASV/EPSV through the driver's part: returns the reply.
    fn passive(s: &mut Session, st: &mut MasterState, line: &str) -> String {
        match s.handle(cmd(line), st) {
            Action::OpenPassive { target, xfer, epsv } => {
                let ip = match target {
                    Target::Slave(id) => st.slaves.get(id).unwrap().data_ip.unwrap(),
                    Target::Master => "127.0.0.1".parse().unwrap(),
                };
                s.passive_opened(st, target, xfer, epsv, Ok(SocketAddr::new(ip, 50001)))
                    .to_string()
            }
            other => text(other),
        }
    }

    #[test]
    fn login_rules() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        assert!(text(s.handle(cmd("PASS p"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("LIST"), &mut st)).starts_with("530"));
        // Unknown and known users get the same 331.
        assert!(text(s.handle(cmd("USER nobody"), &mut st)).starts_with("331"));
        // An unknown user and a wrong password: the same reply, the same
        // delay, and one verification each (against the dummy hash).
        let unknown = pass(&mut s, &mut st, "p");
        assert_eq!(unknown.0, "530 Login incorrect");
        assert!(text(s.handle(cmd("USER u"), &mut st)).starts_with("331"));
        let wrong = pass(&mut s, &mut st, "nope");
        assert_eq!(wrong, unknown);
        assert_eq!(wrong.1, std::time::Duration::from_secs(1));
        assert!(text(s.handle(cmd("USER u"), &mut st)).starts_with("331"));
        let Action::CheckPassword(check) = s.handle(cmd("PASS p"), &mut st) else {
            panic!("PASS must ask for a verification");
        };
        assert!(format!("{check:?}").contains("<redacted>"));
        assert!(!format!("{check:?}").contains("\"p\""));
        let now = 0;
        let (a, d) = s.login_result(&mut st, &check, true, now);
        assert!(text(a).starts_with("230") && d.is_zero());
        assert!(text(s.handle(cmd("FEAT"), &mut st)).contains("\n PRET\r\n"));
    }

    #[test]
    fn pret_retr_pasv_retr_runs_on_the_holder() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        assert_eq!(
            text(s.handle(cmd("PRET RETR a"), &mut st)),
            "200 OK, planning for upcoming download"
        );
        assert_eq!(st.slaves.get(0).unwrap().reserved, 1);
        assert_eq!(
            passive(&mut s, &mut st, "PASV"),
            "227 Entering Passive Mode (127,0,0,11,195,81) on slave s1"
        );
        let Action::Transfer(job) = s.handle(cmd("RETR a"), &mut st) else {
            panic!()
        };
        assert_eq!((job.slave, &job.route), (0, &Route::SlavePassive));
        assert_eq!(
            job.order,
            TransferOrder::Send {
                path: p("/a"),
                offset: 0
            }
        );
        assert_eq!(
            (
                st.slaves.get(0).unwrap().reserved,
                st.slaves.get(0).unwrap().active
            ),
            (0, 1)
        );
        let done = s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 3 });
        assert!(done.to_string().starts_with("226"));
        assert_eq!(st.slaves.get(0).unwrap().active, 0);
        // The passive endpoint was used up.
        assert!(text(s.handle(cmd("RETR a"), &mut st)).starts_with("503"));
    }

    #[test]
    fn epsv_after_pret_is_refused_and_the_plan_kept() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        s.handle(cmd("PRET RETR a"), &mut st);
        let r = passive(&mut s, &mut st, "EPSV");
        assert!(r.starts_with("502 ") && r.contains("use PASV"), "{r}");
        assert!(passive(&mut s, &mut st, "PASV").contains("(127,0,0,11,"));
    }

    #[test]
    fn mismatch_missing_and_offline() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        s.handle(cmd("PRET RETR a"), &mut st);
        passive(&mut s, &mut st, "PASV");
        let r = text(s.handle(cmd("RETR b"), &mut st));
        assert_eq!(
            r,
            "503 RETR /b does not match PRET RETR /a; send PRET again"
        );
        assert_eq!(
            st.slaves.get(0).unwrap().reserved,
            0,
            "reservation released"
        );
        assert_eq!(
            text(s.handle(cmd("PRET RETR nope"), &mut st)),
            "550 /nope: No such file or directory"
        );
        assert!(text(s.handle(cmd("PRET RETR gone"), &mut st)).contains("temporarily unavailable"));
        assert_eq!(Command::parse("PRET SIZE a").unwrap_err().code(), 504);
        assert!(
            text(s.handle(cmd("RETR a"), &mut st)).starts_with("503"),
            "no PASV yet"
        );
    }

    #[test]
    fn listings_without_pret_work_but_files_need_pret() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        assert!(passive(&mut s, &mut st, "PASV").contains("(127,0,0,1,"));
        let Action::Listing(job) = s.handle(cmd("LIST"), &mut st) else {
            panic!()
        };
        let listing = String::from_utf8(job.bytes).unwrap();
        assert_eq!(listing.lines().count(), 4);
        assert!(listing.contains(" both\r\n"));
        passive(&mut s, &mut st, "PASV");
        let r = text(s.handle(cmd("RETR a"), &mut st));
        assert!(r.starts_with("503 RETR over PASV needs PRET"), "{r}");
        // Active mode needs no PRET: the slave connects out.
        assert_eq!(
            text(s.handle(cmd("PORT 127,0,0,1,200,10"), &mut st)),
            "200 PORT command successful"
        );
        let Action::Transfer(job) = s.handle(cmd("RETR a"), &mut st) else {
            panic!()
        };
        assert_eq!(job.route, Route::Active("127.0.0.1:51210".parse().unwrap()));
    }

    #[test]
    fn refuse_and_relay_modes() {
        let mut st = state(PasvWithoutPret::Refuse);
        let mut s = session(&mut st);
        assert_eq!(
            text(s.handle(cmd("PASV"), &mut st)),
            "500 You need to use a client supporting PRET (PRE Transfer) to use PASV"
        );
        let mut st = state(PasvWithoutPret::Relay);
        let mut s = session(&mut st);
        passive(&mut s, &mut st, "PASV");
        let Action::Transfer(job) = s.handle(cmd("RETR both"), &mut st) else {
            panic!()
        };
        assert_eq!(job.route, Route::Relay);
        let done = s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 4 });
        assert!(done.to_string().starts_with("226"));
        assert_eq!(st.slaves.get(job.slave).unwrap().relayed_bytes, 4);
    }

    #[test]
    fn uploads_go_to_the_roomiest_slave_and_are_recorded_on_commit() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        assert!(
            text(s.handle(cmd("PRET STOR a"), &mut st)).starts_with("553"),
            "no overwrite"
        );
        assert_eq!(
            text(s.handle(cmd("PRET STOR new"), &mut st)),
            "200 OK, planning for upcoming upload"
        );
        assert!(
            passive(&mut s, &mut st, "PASV").contains("(127,0,0,12,"),
            "s2 has the most free space"
        );
        let Action::Transfer(job) = s.handle(cmd("STOR new"), &mut st) else {
            panic!()
        };
        assert!(
            st.db.get(&p("/new")).is_none(),
            "nothing listed before commit"
        );
        let failed = s.transfer_done(
            &mut st,
            &job,
            TransferOutcome::Failed(TransferFailure::Network("reset".into())),
        );
        assert!(failed.to_string().starts_with("426"));
        assert!(
            st.db.get(&p("/new")).is_none(),
            "a failed upload is never recorded"
        );
        s.handle(cmd("PRET STOR new"), &mut st);
        passive(&mut s, &mut st, "PASV");
        let Action::Transfer(job) = s.handle(cmd("STOR new"), &mut st) else {
            panic!()
        };
        let done = s.transfer_done(
            &mut st,
            &job,
            TransferOutcome::Committed {
                size: 9,
                mtime: 5,
                crc32: 1,
            },
        );
        assert!(done.to_string().starts_with("226"));
        let f = st.db.file(&p("/new")).unwrap();
        assert_eq!((f.size, f.holders.to_vec(), f.crc32), (9, vec![1], Some(1)));
    }

    #[test]
    fn changes_reach_offline_holders_later() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        assert!(text(s.handle(cmd("RNFR gone"), &mut st)).starts_with("350"));
        assert!(text(s.handle(cmd("RNTO moved"), &mut st)).starts_with("250"));
        assert!(text(s.handle(cmd("DELE moved"), &mut st)).starts_with("250"));
        assert_eq!(
            st.slaves.get(2).unwrap().pending_ops,
            vec![
                (
                    1,
                    FileOp::Rename {
                        from: p("/gone"),
                        to: p("/moved")
                    }
                ),
                (2, FileOp::Delete { path: p("/moved") }),
            ]
        );
    }

    #[test]
    fn bounce_order_and_abort() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        assert!(text(s.handle(cmd("PORT 10,1,2,3,200,10"), &mut st)).starts_with("504"));
        assert!(text(s.handle(cmd("PORT 127,0,0,1,0,21"), &mut st)).starts_with("504"));
        assert!(text(s.handle(cmd("EPRT |1|127.0.0.1|50000|"), &mut st)).starts_with("200"));
        assert!(text(s.handle(cmd("RNTO x"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("ABOR"), &mut st)).starts_with("225"));
        assert!(text(s.handle(cmd("EPSV ALL"), &mut st)).starts_with("200"));
        assert!(text(s.handle(cmd("PASV"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("REST 2"), &mut st)).starts_with("350"));
        assert!(text(s.handle(cmd("QUIT"), &mut st)).starts_with("221"));
    }
    #[test]
    fn xcrc_and_hash_report_the_recorded_checksum() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        let mut m = st.db.file(&p("/a")).unwrap().clone();
        m.crc32 = Some(0x0a1b2c3d);
        st.db.put_file(&p("/c"), m).unwrap();
        assert_eq!(
            text(s.handle(cmd("XCRC /c"), &mut st)),
            "250 XCRC Successful. 0A1B2C3D"
        );
        assert_eq!(
            text(s.handle(cmd("HASH c"), &mut st)),
            "213 CRC32 0-3 0a1b2c3d /c"
        );
        assert!(text(s.handle(cmd("XCRC /a"), &mut st)).starts_with("550 /a: no checksum"));
        assert!(text(s.handle(cmd("HASH /nope"), &mut st)).starts_with("550"));
        assert!(text(s.handle(cmd("OPTS HASH SHA-256"), &mut st)).starts_with("504"));
        assert_eq!(text(s.handle(cmd("OPTS HASH"), &mut st)), "200 CRC32");
        assert!(text(s.handle(cmd("FEAT"), &mut st)).contains(" HASH CRC32*"));
    }
    fn state_with(users: Vec<UserConfig>, perms: &str) -> MasterState {
        let permissions: Vec<users::PermRule> = if perms.is_empty() {
            Vec::new()
        } else {
            toml::from_str::<std::collections::BTreeMap<String, Vec<users::PermRule>>>(perms)
                .unwrap()
                .remove("permissions")
                .unwrap()
        };
        let mut base = state(PasvWithoutPret::Listings);
        let cfg = MasterConfig {
            users,
            permissions,
            password_cost: users::PasswordCost::FAST,
            ..(*base.config).clone()
        };
        base.users = crate::master::users_from_config(&cfg, &mut |i| [i as u8; 16]);
        base.config = Arc::new(cfg);
        base
    }

    fn user_cfg(name: &str, home: &str, admin: bool, groups: &[&str]) -> UserConfig {
        UserConfig {
            name: name.into(),
            password: "pw".into(),
            home: home.into(),
            admin,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn login_as(st: &mut MasterState, name: &str) -> Session {
        let mut s = Session::new(7, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        s.handle(cmd(&format!("USER {name}")), st);
        let (reply, _) = pass(&mut s, st, "pw");
        assert!(reply.starts_with("230"), "{reply}");
        s
    }

    // --- FTPS -------------------------------------------------------------

    fn with_tls(mut st: MasterState) -> MasterState {
        st.tls_available = true;
        for id in 0..3 {
            st.slaves.get_mut(id).unwrap().data_tls = true;
        }
        st
    }

    fn tls_config(st: &mut MasterState, edit: impl FnOnce(&mut MasterConfig)) {
        let mut cfg = (*st.config).clone();
        edit(&mut cfg);
        st.config = Arc::new(cfg);
    }

    /// AUTH TLS, login, PBSZ 0 and PROT `level`.
    fn tls_session(st: &mut MasterState, level: &str) -> Session {
        let mut s = Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        assert!(matches!(s.handle(cmd("AUTH TLS"), st), Action::StartTls(_)));
        assert!(text(s.handle(cmd("USER u"), st)).starts_with("331"));
        assert!(pass(&mut s, st, "p").0.starts_with("230"));
        assert_eq!(text(s.handle(cmd("PBSZ 0"), st)), "200 PBSZ=0");
        assert!(text(s.handle(cmd(&format!("PROT {level}")), st)).starts_with("200"));
        s
    }

    #[test]
    fn home_directory_confines_every_path() {
        let mut st = state_with(vec![user_cfg("al", "/home/al", false, &[])], "");
        let mut s = login_as(&mut st, "al");
        assert_eq!(
            text(s.handle(cmd("PWD"), &mut st)),
            "257 \"/home/al\" is the current directory"
        );
        for line in [
            "CWD ..",
            "CWD /",
            "CDUP",
            "MKD ../x",
            "MKD /home/al2",
            "DELE /a",
            "RNFR /a",
            "SIZE ../../a",
            "RETR /a",
            "PRET RETR /a",
            "STAT /",
            "MLST /",
        ] {
            let got = text(s.handle(cmd(line), &mut st));
            assert!(
                got.starts_with("550") && got.contains("outside your home"),
                "{line}: {got}"
            );
        }
        assert!(text(s.handle(cmd("MKD sub"), &mut st)).starts_with("257"));
        assert!(st.db.dir(&p("/home/al/sub")).is_ok());
        // RNTO out of home is refused too.
        assert!(text(s.handle(cmd("RNFR sub"), &mut st)).starts_with("350"));
        assert!(text(s.handle(cmd("RNTO /stolen"), &mut st)).starts_with("550"));
        assert!(st.db.get(&p("/stolen")).is_none());
    }

    #[test]
    fn permission_rules_apply_per_action_and_group() {
        let perms = r#"
            [[permissions]]
            actions = ["delete", "rename", "rmdir"]
            path = "*"
            who = ["=ops"]
            [[permissions]]
            actions = ["upload", "mkdir"]
            path = "/incoming/*"
            who = ["*"]
            [[permissions]]
            actions = ["upload", "mkdir"]
            path = "*"
            who = ["=ops"]
            [[permissions]]
            actions = ["download", "list"]
            path = "/secret/*"
            who = ["=ops"]
        "#;
        let mut st = state_with(
            vec![
                user_cfg("joe", "/", false, &["users"]),
                user_cfg("olga", "/", false, &["ops"]),
            ],
            perms,
        );
        st.db.mkdir(&p("/incoming"), "x", 0).unwrap();
        st.db.mkdir(&p("/secret"), "x", 0).unwrap();
        let mut joe = login_as(&mut st, "joe");
        let mut olga = login_as(&mut st, "olga");
        let denied = |a: Action| text(a).starts_with("550");
        assert!(denied(joe.handle(cmd("DELE /a"), &mut st)));
        assert!(denied(joe.handle(cmd("RNFR /a"), &mut st)));
        assert!(denied(joe.handle(cmd("MKD /elsewhere"), &mut st)));
        assert!(text(joe.handle(cmd("MKD /incoming/new"), &mut st)).starts_with("257"));
        assert!(denied(joe.handle(cmd("PRET STOR /up.bin"), &mut st)));
        assert!(text(joe.handle(cmd("PRET STOR /incoming/up.bin"), &mut st)).starts_with("200"));
        assert!(denied(joe.handle(cmd("CWD /secret"), &mut st)));
        assert!(text(joe.handle(cmd("PRET RETR /a"), &mut st)).starts_with("200"));
        assert!(text(olga.handle(cmd("CWD /secret"), &mut st)).starts_with("250"));
        assert!(text(olga.handle(cmd("DELE /a"), &mut st)).starts_with("250"));
        assert!(text(olga.handle(cmd("MKD /elsewhere"), &mut st)).starts_with("257"));
    }

    #[test]
    fn site_user_commands_are_for_admins_and_persist_hashed() {
        let mut st = state_with(
            vec![
                user_cfg("root", "/", true, &[]),
                user_cfg("joe", "/", false, &[]),
            ],
            "",
        );
        let mut joe = login_as(&mut st, "joe");
        let got = text(joe.handle(cmd("SITE ADDUSER eve pw"), &mut st));
        assert_eq!(got, "550 SITE ADDUSER: permission denied (admins only)");
        let mut root = login_as(&mut st, "root");
        st.salt = [9; 16];
        assert_eq!(
            text(root.handle(cmd("SITE ADDUSER eve s3cret staff"), &mut st)),
            "200 User eve added"
        );
        let eve = st.users.get("eve").unwrap().clone();
        assert!(eve.password_hash.starts_with("$argon2id$"));
        assert!(!eve.password_hash.contains("s3cret"));
        assert_eq!(eve.groups, ["staff"]);
        assert!(text(root.handle(cmd("SITE ADDUSER eve x"), &mut st)).starts_with("553"));
        assert!(text(root.handle(cmd("SITE ADDUSER ../x y"), &mut st)).starts_with("553"));
        assert!(text(root.handle(cmd("SITE ADDUSER onlyname"), &mut st)).starts_with("501"));
        assert!(text(root.handle(cmd("SITE CHPASS eve n3w"), &mut st)).starts_with("200"));
        assert!(users::verify_password(
            &st.users.get("eve").unwrap().password_hash,
            "n3w"
        ));
        assert_eq!(
            text(root.handle(cmd("SITE CHGRP eve a b"), &mut st)),
            "200 Groups of eve: a b"
        );
        assert!(text(root.handle(cmd("SITE CHPASS nobody x"), &mut st)).starts_with("550"));
        assert!(text(root.handle(cmd("SITE DELUSER root"), &mut st)).starts_with("501"));
        assert!(text(root.handle(cmd("SITE DELUSER eve"), &mut st)).starts_with("200"));
        assert!(st.users.get("eve").is_none());
        assert!(text(root.handle(cmd("SITE DELUSER eve"), &mut st)).starts_with("550"));
    }

    #[test]
    fn repeated_failures_delay_then_ban_and_close() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut delays = Vec::new();
        let mut s = Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        for _ in 0..5 {
            s.handle(cmd("USER u"), &mut st);
            let (reply, d) = pass(&mut s, &mut st, "wrong");
            assert_eq!(reply, "530 Login incorrect");
            delays.push(d.as_millis());
        }
        assert_eq!(delays, [1000, 1000, 2000, 4000, 8000]);
        // Banned now: even the right password is refused, and the session closed.
        s.handle(cmd("USER u"), &mut st);
        let Action::CheckPassword(check) = s.handle(cmd("PASS p"), &mut st) else {
            panic!()
        };
        let now = 0;
        let (a, _) = s.login_result(&mut st, &check, true, now);
        assert!(matches!(&a, Action::Close(r) if r.code == 421), "{a:?}");
    }

    #[test]
    fn upload_quota_and_fxp_port() {
        let mut cfgs = vec![
            user_cfg("q", "/", false, &[]),
            user_cfg("fx", "/", false, &[]),
        ];
        cfgs[0].upload_quota = Some(100);
        cfgs[1].fxp = true;
        let mut st = state_with(cfgs, "");
        let mut q = login_as(&mut st, "q");
        assert!(text(q.handle(cmd("PRET STOR /f1"), &mut st)).starts_with("200"));
        st.users.get_mut("q").unwrap().uploaded = 100;
        assert!(text(q.handle(cmd("PRET STOR /f2"), &mut st)).starts_with("552"));
        assert!(text(q.handle(cmd("PORT 10,9,9,9,40,0"), &mut st)).starts_with("504"));
        let mut fx = login_as(&mut st, "fx");
        assert!(text(fx.handle(cmd("PORT 10,9,9,9,40,0"), &mut st)).starts_with("200"));
        assert!(text(fx.handle(cmd("PORT 10,9,9,9,0,21"), &mut st)).starts_with("504"));
    }

    #[test]
    fn a_user_tls_policy_adds_to_the_global_one() {
        let mut cfgs = vec![
            user_cfg("t", "/", false, &[]),
            user_cfg("d", "/", false, &[]),
        ];
        cfgs[0].tls = users::TlsPolicy::Control;
        cfgs[1].tls = users::TlsPolicy::ControlAndData;
        let mut st = with_tls(state_with(cfgs, ""));
        // Without AUTH: the right password still gets 530 for these users.
        let mut s = Session::new(3, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        s.handle(cmd("USER t"), &mut st);
        let (reply, delay) = pass(&mut s, &mut st, "pw");
        assert!(
            reply.starts_with("530 This account requires TLS"),
            "{reply}"
        );
        assert!(delay.is_zero());
        // With AUTH: t may use clear data, d may not.
        for (name, clear_ok) in [("t", true), ("d", false)] {
            let mut s = Session::new(4, PEER.parse().unwrap(), LOCAL.parse().unwrap());
            assert!(matches!(
                s.handle(cmd("AUTH TLS"), &mut st),
                Action::StartTls(_)
            ));
            s.handle(cmd(&format!("USER {name}")), &mut st);
            assert!(pass(&mut s, &mut st, "pw").0.starts_with("230"));
            let need = s.tls_requirement(&st);
            assert!(need.control);
            assert_eq!(need.data, !clear_ok, "{name}");
        }
    }

    #[test]
    fn sscn_and_cpsv_only_for_fxp_users() {
        let mut cfgs = vec![
            user_cfg("fx", "/", false, &[]),
            user_cfg("no", "/", false, &[]),
        ];
        cfgs[0].fxp = true;
        let mut st = with_tls(state_with(cfgs, ""));
        let mut fx = login_as(&mut st, "fx");
        assert_eq!(
            text(fx.handle(cmd("SSCN"), &mut st)),
            "200 SSCN:SERVER METHOD"
        );
        assert_eq!(
            text(fx.handle(cmd("SSCN ON"), &mut st)),
            "200 SSCN:CLIENT METHOD"
        );
        assert!(fx.tls.sscn);
        assert!(text(fx.handle(cmd("SSCN maybe"), &mut st)).starts_with("501"));
        assert_eq!(
            text(fx.handle(cmd("SSCN OFF"), &mut st)),
            "200 SSCN:SERVER METHOD"
        );
        assert!(text(fx.handle(cmd("PRET RETR /a"), &mut st)).starts_with("200"));
        assert!(matches!(
            fx.handle(cmd("CPSV"), &mut st),
            Action::OpenPassive { .. }
        ));
        assert!(fx.tls.cpsv);
        assert_eq!(fx.passive_peer(&st), None);
        let _ = fx.handle(cmd("PASV"), &mut st);
        assert!(!fx.tls.cpsv);
        let mut no = login_as(&mut st, "no");
        assert!(text(no.handle(cmd("SSCN ON"), &mut st)).starts_with("550"));
        assert!(text(no.handle(cmd("CPSV"), &mut st)).starts_with("550"));
        assert_eq!(
            no.passive_peer(&st),
            Some(PEER.parse::<SocketAddr>().unwrap().ip())
        );
        assert!(text(no.handle(cmd("FEAT"), &mut st)).contains(" SSCN"));
    }

    #[test]
    fn without_a_certificate_auth_is_not_offered() {
        let mut st = state(PasvWithoutPret::Listings);
        let mut s = session(&mut st);
        let r = text(s.handle(cmd("AUTH TLS"), &mut st));
        assert!(r.starts_with("502 ") && r.contains("tls_cert"), "{r}");
        let feat = text(s.handle(cmd("FEAT"), &mut st));
        assert!(!feat.contains("AUTH") && !feat.contains("PROT"), "{feat}");
        assert!(text(s.handle(cmd("PBSZ 0"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("PROT P"), &mut st)).starts_with("503"));
    }

    #[test]
    fn auth_pbsz_prot_ccc_sequence() {
        let mut st = with_tls(state(PasvWithoutPret::Listings));
        let mut s = session(&mut st);
        let feat = text(s.handle(cmd("FEAT"), &mut st));
        for f in [" AUTH TLS\r\n", " PBSZ\r\n", " PROT\r\n", " PRET\r\n"] {
            assert!(feat.contains(f), "{f:?} missing from {feat}");
        }
        assert!(
            feat.find(" AUTH TLS").unwrap() < feat.find(" EPRT").unwrap(),
            "sorted: {feat}"
        );
        assert!(text(s.handle(cmd("PBSZ 0"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("PROT P"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("CCC"), &mut st)).starts_with("503"));
        assert!(text(s.handle(cmd("AUTH KERBEROS_V4"), &mut st)).starts_with("504"));
        match s.handle(cmd("AUTH ssl"), &mut st) {
            Action::StartTls(r) => assert_eq!(r.to_string(), "234 AUTH SSL successful"),
            other => panic!("{other:?}"),
        }
        // RFC 2228: an accepted AUTH resets the login.
        assert!(text(s.handle(cmd("LIST"), &mut st)).starts_with("530"));
        assert!(text(s.handle(cmd("AUTH TLS"), &mut st)).starts_with("503"));
        assert!(
            text(s.handle(cmd("PROT P"), &mut st)).starts_with("503"),
            "no PBSZ yet"
        );
        assert!(text(s.handle(cmd("PBSZ x"), &mut st)).starts_with("501"));
        assert_eq!(text(s.handle(cmd("PBSZ 1048576"), &mut st)), "200 PBSZ=0");
        assert!(text(s.handle(cmd("PROT S"), &mut st)).starts_with("536"));
        assert!(text(s.handle(cmd("PROT E"), &mut st)).starts_with("536"));
        assert!(text(s.handle(cmd("PROT Q"), &mut st)).starts_with("504"));
        assert_eq!(
            text(s.handle(cmd("PROT p"), &mut st)),
            "200 Protection level set to Private"
        );
        assert!(s.tls.private);
        assert_eq!(
            text(s.handle(cmd("PROT C"), &mut st)),
            "200 Protection level set to Clear"
        );
        assert!(text(s.handle(cmd("USER u"), &mut st)).starts_with("331"));
        assert!(pass(&mut s, &mut st, "p").0.starts_with("230"));
        assert!(text(s.handle(cmd("CCC"), &mut st)).starts_with("534"));
        // u may not FXP (sscn_and_cpsv_only_for_fxp_users has the rest).
        assert!(text(s.handle(cmd("SSCN ON"), &mut st)).starts_with("550 SSCN ON"));
        assert!(text(s.handle(cmd("CPSV"), &mut st)).starts_with("550 CPSV"));
    }

    #[test]
    fn require_tls_control_refuses_login_before_auth() {
        let mut st = with_tls(state(PasvWithoutPret::Listings));
        tls_config(&mut st, |c| c.require_tls_control = true);
        assert!(s_requirement(&st).control);
        let mut s = Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap());
        let r = text(s.handle(cmd("USER u"), &mut st));
        assert!(r.starts_with("530 ") && r.contains("AUTH TLS"), "{r}");
        assert!(text(s.handle(cmd("PASS p"), &mut st)).starts_with("530"));
        assert!(text(s.handle(cmd("FEAT"), &mut st)).starts_with("211"));
        let _ = s.handle(cmd("AUTH TLS"), &mut st);
        assert!(text(s.handle(cmd("USER u"), &mut st)).starts_with("331"));
        assert!(pass(&mut s, &mut st, "p").0.starts_with("230"));
    }

    fn s_requirement(st: &MasterState) -> TlsRequirement {
        Session::new(1, PEER.parse().unwrap(), LOCAL.parse().unwrap()).tls_requirement(st)
    }

    #[test]
    fn require_tls_data_refuses_clear_transfers_with_521() {
        let mut st = with_tls(state(PasvWithoutPret::Listings));
        tls_config(&mut st, |c| c.require_tls_data = true);
        let mut s = tls_session(&mut st, "C");
        s.handle(cmd("PRET RETR a"), &mut st);
        passive(&mut s, &mut st, "PASV");
        match s.handle(cmd("RETR a"), &mut st) {
            Action::ResetData(r) => assert_eq!(
                r.to_string(),
                "521 Data connections must be encrypted: send PBSZ 0 and PROT P"
            ),
            other => panic!("{other:?}"),
        }
        assert_eq!(st.slaves.get(0).unwrap().reserved, 0, "plan released");
        assert!(text(s.handle(cmd("LIST"), &mut st)).starts_with("521"));
        assert!(text(s.handle(cmd("PROT P"), &mut st)).starts_with("200"));
        s.handle(cmd("PRET RETR a"), &mut st);
        passive(&mut s, &mut st, "PASV");
        assert!(matches!(
            s.handle(cmd("RETR a"), &mut st),
            Action::Transfer(_)
        ));
    }

    #[test]
    fn prot_p_to_a_slave_without_certificate_is_refused() {
        let mut st = with_tls(state(PasvWithoutPret::Listings));
        st.slaves.get_mut(0).unwrap().data_tls = false;
        let mut s = tls_session(&mut st, "P");
        s.handle(cmd("PRET RETR a"), &mut st);
        passive(&mut s, &mut st, "PASV");
        let r = text(s.handle(cmd("RETR a"), &mut st));
        assert!(r.starts_with("521 Slave s1 has no TLS certificate"), "{r}");
        assert_eq!(st.slaves.get(0).unwrap().reserved, 0);
        assert_eq!(st.slaves.get(0).unwrap().active, 0);
        // PROT C goes through, and so does PROT P on a slave with one.
        assert!(text(s.handle(cmd("PROT C"), &mut st)).starts_with("200"));
        s.handle(cmd("PRET RETR a"), &mut st);
        passive(&mut s, &mut st, "PASV");
        assert!(matches!(
            s.handle(cmd("RETR a"), &mut st),
            Action::Transfer(_)
        ));
        assert!(text(s.handle(cmd("PROT P"), &mut st)).starts_with("200"));
        s.handle(cmd("PRET RETR both"), &mut st);
        assert!(passive(&mut s, &mut st, "PASV").contains("(127,0,0,12,"));
        assert!(matches!(
            s.handle(cmd("RETR both"), &mut st),
            Action::Transfer(_)
        ));
    }
}

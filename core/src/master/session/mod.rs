//! One FTP control session as a state machine (sans-IO): each command goes
//! in with the shared [`MasterState`], a decision comes out as an [`Action`]
//! — a reply, or work for the driver (open a passive endpoint, run a
//! transfer on a slave, send a listing). The driver reports results back
//! through [`Session::passive_opened`] and [`Session::transfer_done`].
//!
//! [`Session::handle`] only dispatches; each concern has its file:
//! `login` (USER, PASS), `basics` (FEAT, OPTS, TYPE, REST...), `namespace`
//! (CWD, MKD, RMD, DELE, RNFR/RNTO, SIZE, MDTM, MFMT, XCRC), `planning`
//! (PRET, PASV, EPSV, PORT, EPRT, slave choice), `transfers` (RETR, STOR,
//! APPE, STOU and their outcome), `listings` (LIST, NLST, MLSD, MLST, STAT),
//! `site` (SITE commands), `ftps` (AUTH, PBSZ, PROT, CCC, SSCN, CPSV).
//!
//! Implements RFC 959 §4 and §5.4 replies, RFC 2428 (EPSV/EPRT), RFC 3659
//! (SIZE, MDTM, REST, MLST/MLSD), RFC 2389 (FEAT/OPTS) and DrFTPD's PRET:
//! `PRET <verb> <arg>` plans the transfer so the next PASV can name the
//! slave that will serve it.

use std::net::{IpAddr, SocketAddr};

use super::db::{DbError, SlaveId};
use super::users::{self, Perm};
use super::{MasterState, TransferInfo};
use crate::link::{TransferFailure, TransferOrder};
use crate::proto::{Command, EpsvArg, ListArgs, PathError, Reply, TransferType, VPath};

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
    /// For uploads: where the file goes and what the commit expects there.
    pub upload: Option<crate::master::commit::UploadTarget>,
}

/// Largest download whose 150 the driver may hold back until the transfer
/// ends ([`TransferJob::may_hold_opening`]): well within what a data
/// connection buffers, so the slave finishes without the client reading.
pub const HOLD_OPENING_MAX_BYTES: u64 = 64 * 1024;

impl TransferJob {
    pub fn is_upload(&self) -> bool {
        matches!(self.order, TransferOrder::Receive { .. })
    }

    /// Whether the 150 may wait for the final reply (a few milliseconds at
    /// most), so both leave in one write: a download of at most
    /// [`HOLD_OPENING_MAX_BYTES`] completes whether or not the client reads
    /// before its 150. Never an upload: clients send only after the 150.
    pub fn may_hold_opening(&self) -> bool {
        match &self.order {
            TransferOrder::Send {
                offset,
                version: Some(v),
                rate: None,
                ..
            } => v.size.saturating_sub(*offset) <= HOLD_OPENING_MAX_BYTES,
            _ => false,
        }
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
    /// Hash a new password (SITE ADDUSER, CHPASS), then call
    /// [`Session::password_hashed`].
    HashPassword(Box<HashJob>),
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
    /// SITE KICK: end these sessions (the driver tells each one; it
    /// answers `421` and closes), then send the reply.
    Kick {
        sessions: Vec<u64>,
        reply: Reply,
    },
    /// SITE KICKSLAVE, REMERGE, DELSLAVE: drop these slaves' links (each
    /// reconnects and remerges, unless removed), then send the reply.
    DropLinks {
        slaves: Vec<crate::master::db::SlaveId>,
        reason: &'static str,
        reply: Reply,
    },
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
    /// The upload lost its commit decision (a race): this final reply.
    Refused(Reply),
    /// The slave was lost between the commit decision and its
    /// acknowledgement, and did not answer within the bound.
    Unknown,
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
    /// The MLST/MLSD facts selected by OPTS MLST (RFC 3659 §7.9), as
    /// flags over [`MLST_FACTS`]; all at first.
    mlst_facts: [bool; MLST_FACTS.len()],
    /// The user's home: nothing outside it can be named.
    home: VPath,
    /// FTPS state (RFC 4217): AUTH, PBSZ, PROT.
    pub tls: TlsState,
}

/// The facts MLST and MLSD can give, in their order (RFC 3659 §7.5).
const MLST_FACTS: [&str; 6] = ["type", "size", "modify", "perm", "unix.owner", "unix.group"];

const FEATURES: &[&str] = &[
    "EPRT",
    "EPSV",
    "HASH CRC32*",
    "MDTM",
    "MFMT",
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

mod basics;
mod fleet;
mod ftps;
mod listings;
mod login;
mod namespace;
mod planning;
mod site;
#[cfg(test)]
mod tests;
mod transfers;

/// A session of user `u` logged in with password `p` (the fixture of the
/// listing and namespace unit tests).
#[cfg(test)]
fn test_login(st: &mut MasterState) -> Session {
    use crate::proto::Command;
    let mut s = Session::new(
        1,
        "127.0.0.1:40000".parse().unwrap(),
        "127.0.0.1:21".parse().unwrap(),
    );
    s.handle(Command::parse("USER u").unwrap(), st);
    match s.handle(Command::parse("PASS p").unwrap(), st) {
        Action::CheckPassword(c) => {
            let ok = crate::master::users::verify_password(&c.hash, &c.password);
            let _ = s.login_result(st, &c, ok, 0);
        }
        other => panic!("{other:?}"),
    }
    s
}

pub use ftps::{TlsRequirement, TlsState};
pub use site::{HashJob, PasswordChange};
pub use transfers::failure_reply;

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
            mlst_facts: [true; MLST_FACTS.len()],
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

    /// The user this session logs in as: logged in, or named by USER with
    /// the password not checked yet (`None` before USER and after a failed
    /// login).
    pub fn login_name(&self) -> Option<&str> {
        match &self.login {
            Login::LoggedIn { user, .. } | Login::NeedPass(user) => Some(user),
            Login::NeedUser => None,
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
        let Some(user) = self.user().and_then(|u| st.session_user(u)) else {
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

    /// Whether the logged-in user owns the file at `path`.
    fn owns(&self, st: &MasterState, path: &VPath) -> bool {
        match (self.user(), st.db.file(path)) {
            (Some(user), Ok(f)) => st.db.name(f.owner) == user,
            _ => false,
        }
    }

    fn may(&self, st: &MasterState, action: Perm, path: &VPath) -> bool {
        self.permit(st, action, path).is_ok()
    }

    /// The RFC 3659 §7.5.5 `perm` fact: what this user may do with `path`
    /// under the permission rules (letters in the order of
    /// `listing::mlsx_facts`, so a user with every right sees the same).
    fn perm_fact(&self, st: &MasterState, path: &VPath, is_dir: bool) -> String {
        let may = |a| self.may(st, a, path);
        let letters: &[(char, bool)] = if is_dir {
            &[
                ('f', may(Perm::Rename)),
                ('l', may(Perm::List)),
                ('c', may(Perm::Upload)),
                ('d', may(Perm::Rmdir)),
                ('m', may(Perm::Mkdir)),
                ('p', may(Perm::Delete)),
                ('e', may(Perm::List)),
            ]
        } else {
            let overwrite = may(Perm::Overwrite);
            let upload = may(Perm::Upload);
            &[
                ('a', upload && (overwrite || self.owns(st, path))),
                ('d', may(Perm::Delete)),
                ('f', may(Perm::Rename)),
                ('r', may(Perm::Download)),
                ('w', upload && overwrite && st.config.allow_overwrite),
            ]
        };
        letters
            .iter()
            .filter(|(_, ok)| *ok)
            .map(|(c, _)| *c)
            .collect()
    }

    /// MLST: the `list` right on the path, and the facts' `perm` the
    /// user's own.
    fn mlst_checked(&mut self, arg: Option<&str>, st: &mut MasterState) -> Action {
        let path = match arg {
            Some(a) => match self.resolve(a) {
                Ok(p) => p,
                Err(e) => return e,
            },
            None => self.cwd.clone(),
        };
        if let Err(a) = self.permit(st, Perm::List, &path) {
            return a;
        }
        match self.mlst(arg, st) {
            Action::Reply(mut reply) => {
                for line in reply.lines.iter_mut().filter(|l| l.starts_with(" type=")) {
                    *line = format!(" {}", self.own_perm(st, &line[1..], &path));
                }
                Action::Reply(reply)
            }
            other => other,
        }
    }

    /// MLSD: each entry's `perm` fact is the user's own.
    fn mlsd_checked(&mut self, path: Option<String>, st: &mut MasterState) -> Action {
        let dir = path
            .as_deref()
            .map(|a| self.resolve(a))
            .unwrap_or_else(|| Ok(self.cwd.clone()));
        let args = ListArgs {
            path,
            options: String::new(),
        };
        match (self.listing(PlanVerb::Mlsd, args, st), dir) {
            (Action::Listing(mut job), Ok(dir)) => {
                let text = String::from_utf8_lossy(&job.bytes).into_owned();
                let mut out = String::with_capacity(text.len());
                for line in text.split_terminator("\r\n") {
                    let name = line.split_once("; ").map_or("", |(_, n)| n);
                    match dir.join(name) {
                        Ok(p) => out.push_str(&self.own_perm(st, line, &p)),
                        Err(_) => out.push_str(line),
                    }
                    out.push_str("\r\n");
                }
                job.bytes = out.into_bytes();
                Action::Listing(job)
            }
            (other, _) => other,
        }
    }

    /// An MLSx facts line with its `perm` fact replaced by what this user
    /// may do with `path`.
    fn own_perm(&self, st: &MasterState, facts: &str, path: &VPath) -> String {
        let Some((head, name)) = facts.split_once("; ") else {
            return facts.to_string();
        };
        let is_dir = head.starts_with("type=dir;");
        let perm = self.perm_fact(st, path, is_dir);
        let head: Vec<String> = head
            .split(';')
            .map(|f| {
                if f.starts_with("perm=") {
                    format!("perm={perm}")
                } else {
                    f.to_string()
                }
            })
            .collect();
        format!("{}; {name}", head.join(";"))
    }

    fn is_admin(&self, st: &MasterState) -> bool {
        self.user()
            .and_then(|u| st.session_user(u))
            .is_some_and(|u| u.admin)
    }

    /// Drops any PRET plan, releasing its reservation on the slave.
    fn clear_plan(&mut self, st: &mut MasterState) {
        if let Some(Plan {
            target: Target::Slave(s),
            ..
        }) = self.plan.take()
        {
            st.slaves.unreserve(s);
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

    /// Brings what SITE WHO shows of this session up to date; `transfer`:
    /// `Some` sets (or clears, with `Some(None)`) the running transfer.
    fn update_info(&self, st: &mut MasterState, transfer: Option<Option<TransferInfo>>) {
        if let Some(info) = st.sessions.get_mut(&self.id) {
            if let Some(t) = transfer {
                info.transfer = t;
            }
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
        self.update_info(st, None);
        action
    }

    fn dispatch(&mut self, cmd: Command, st: &mut MasterState) -> Action {
        match cmd {
            Command::User(name) => self.user_cmd(name, st),
            Command::Pass(pass) => self.pass(pass, st),
            Command::Quit => Action::Close(Reply::new(221, "Goodbye")),
            Command::Syst => r(215, "UNIX Type: L8"),
            Command::Noop => r(200, "NOOP ok"),
            Command::Feat => self.feat(st),
            Command::Opts(arg) => self.opts(&arg),
            Command::Help(arg) => self.help(arg.as_deref(), st),
            Command::Stat(None) => self.status(st),
            // STAT <path> is a listing: LIST's `list` right.
            Command::Stat(Some(arg)) => match self.resolve(&arg) {
                Ok(p) if !self.may(st, Perm::List, &p) => {
                    self.permit(st, Perm::List, &p).unwrap_err()
                }
                _ => self.stat_path(&arg, st),
            },
            Command::Type(t) => self.set_type(t),
            Command::Mode => r(200, "Mode set to S"),
            Command::Stru => r(200, "Structure set to F"),
            Command::Allo => r(202, "No storage allocation necessary"),
            Command::Pwd => self.pwd(),
            Command::Cwd(arg) => self.cwd(&arg, st),
            Command::Cdup => self.cwd("..", st),
            Command::Rest(n) => self.rest(n),
            Command::Xcrc(arg) => self.xcrc(&arg, st),
            Command::Hash(arg) => self.checksum(&arg, true, st),
            Command::Size(arg) => self.size(&arg, st),
            Command::Mdtm(arg) => self.mdtm(&arg, st),
            Command::Mfmt { time, path } => self.mfmt(&time, &path, st),
            Command::Mkd(arg) => self.mkd(&arg, st),
            Command::Rmd(arg) => self.rmd(&arg, st),
            Command::Dele(arg) => self.dele(&arg, st),
            Command::Rnfr(arg) => self.rnfr(&arg, st),
            Command::Rnto(arg) => self.rnto(&arg, st),
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
            Command::Epsv(EpsvArg::Proto(p)) if p != self.epsv_protocol() => r(
                522,
                format!(
                    "Network protocol not supported, use ({})",
                    self.epsv_protocol()
                ),
            ),
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
            Command::Abor => self.abor(),
            Command::Retr(arg) => self.retr(&arg, st),
            Command::Stor(arg) => self.stor(PlanVerb::Stor, Some(&arg), st),
            Command::Appe(arg) => self.stor(PlanVerb::Appe, Some(&arg), st),
            Command::Stou(arg) => self.stor(PlanVerb::Stou, arg.as_deref(), st),
            Command::List(args) => self.listing(PlanVerb::List, args, st),
            Command::Nlst(args) => self.listing(PlanVerb::Nlst, args, st),
            Command::Mlsd(path) => self.mlsd_checked(path, st),
            Command::Mlst(arg) => self.mlst_checked(arg.as_deref(), st),
            Command::Auth(mechanism) => self.auth(&mechanism, st),
            Command::Pbsz(size) => self.pbsz(&size),
            Command::Prot(level) => self.prot(&level),
            Command::Ccc => self.ccc(),
            // FXP (server-to-server) under TLS, as DrFTPD: one of the two
            // servers must be the TLS client of the data connection.
            Command::Sscn(arg) => self.sscn(arg.as_deref(), st),
            Command::Cpsv => self.cpsv(st),
        }
    }

    /// XCRC `<path> [<start> <end>]` (glFTPd, FlashFXP). Only whole-file
    /// CRCs are recorded: a range covering the whole file is served, others
    /// refused with 501. A path that itself ends in two numbers still works.
    fn xcrc(&self, arg: &str, st: &MasterState) -> Action {
        let mut parts = arg.rsplitn(3, ' ');
        let (end, start, path) = (parts.next(), parts.next(), parts.next());
        let range = match (path, start, end) {
            (Some(path), Some(a), Some(b)) if !path.trim().is_empty() => {
                match (a.parse::<u64>(), b.parse::<u64>()) {
                    (Ok(a), Ok(b)) => Some((path.trim_end(), a, b)),
                    _ => None,
                }
            }
            _ => None,
        };
        let Some((path, start, end)) = range else {
            return self.checksum(arg, false, st);
        };
        let size_of = |p: &str| {
            self.resolve(p)
                .ok()
                .and_then(|p| st.db.file(&p).ok())
                .map(|m| m.size)
        };
        if size_of(arg).is_some() {
            return self.checksum(arg, false, st);
        }
        // A missing or forbidden file gets the same refusal as without range.
        let whole = self.checksum(path, false, st);
        if !matches!(&whole, Action::Reply(reply) if reply.code == 250) {
            return whole;
        }
        match size_of(path) {
            Some(size) if start == 0 && end == size => whole,
            _ => r(
                501,
                "Send XCRC <path> without a range: only whole-file CRCs are kept (range: 0 and the size)",
            ),
        }
    }

    /// The one EPSV protocol this control connection supports (RFC 2428:
    /// 1 IPv4, 2 IPv6): passive endpoints are on its address family.
    fn epsv_protocol(&self) -> u8 {
        if self.local.is_ipv4() {
            1
        } else {
            2
        }
    }

    pub fn peer_ip(&self) -> IpAddr {
        self.peer.ip()
    }
}

//! Planning a transfer: PRET (DrFTPD) picks the slave before PASV so the
//! 227 reply can name it; PASV/EPSV/PORT/EPRT set up the data connection;
//! `route` turns plan + data setup into the slave and route a data command
//! uses. Slave choice itself is the registry's pure policy
//! (`registry::pick_download`, `pick_upload`).

use std::net::{IpAddr, SocketAddr};

use super::{path_reply, r, Action, DataSetup, Plan, PlanVerb, Route, Session, Target};
use crate::config::PasvWithoutPret;
use crate::master::db::{Node, SlaveId};
use crate::master::users::Perm;
use crate::master::MasterState;
use crate::proto::{addr, Command, Reply, VPath};

impl Session {
    pub(super) fn pret(&mut self, inner: Command, st: &mut MasterState) -> Action {
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
                match self.upload_slave(verb, path.as_ref(), true, st) {
                    Ok(s) => Target::Slave(s),
                    Err(a) => return a,
                }
            }
        };
        if let Target::Slave(s) = target {
            st.slaves.reserve(s);
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
    pub(super) fn download_slave(
        &self,
        path: &VPath,
        st: &mut MasterState,
    ) -> Result<SlaveId, Action> {
        self.permit(st, Perm::Download, path)?;
        let holders = match st.db.file(path) {
            Ok(f) => f.holders.clone(),
            Err(e) => return Err(path_reply(path, e)),
        };
        if let Some(s) = self.pinned(st, Some(path), Some(&holders)) {
            return Ok(s);
        }
        st.slaves.choose_download(&holders).ok_or_else(|| {
            r(
                550,
                format!("{path}: file temporarily unavailable (no online slave holds it)"),
            )
        })
    }

    /// The slave an upload of `path` goes to. Overwriting, appending to or
    /// resuming an existing file goes to a slave holding it. `pret`: a PRET
    /// STOR plans it, and the overwrite checks wait for the data command
    /// (the same PRET covers an APPE or REST+STOR that resumes the file:
    /// `curl -C - -T`).
    pub(super) fn upload_slave(
        &self,
        verb: PlanVerb,
        path: Option<&VPath>,
        pret: bool,
        st: &mut MasterState,
    ) -> Result<SlaveId, Action> {
        if let Some(user) = self.user().and_then(|u| st.session_user(u)) {
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
                    if !pret {
                        self.may_change(verb, p, st)?;
                    }
                    let holders = f.holders.clone();
                    if let Some(s) = self.pinned(st, Some(p), Some(&holders)) {
                        return Ok(s);
                    }
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
        if let Some(s) = self.pinned(st, path, None) {
            return Ok(s);
        }
        let min_free = st.config.min_free_bytes;
        st.slaves.choose_upload(min_free).ok_or_else(|| {
            r(
                452,
                "No slave is available to store the file (all offline or full)",
            )
        })
    }

    /// A STOR that would replace the existing file `p`: the site must
    /// allow overwriting, and the user's rules too.
    pub(super) fn may_overwrite(&self, p: &VPath, st: &MasterState) -> Result<(), Action> {
        self.permit(st, Perm::Overwrite, p)?;
        if !st.config.allow_overwrite {
            return Err(r(
                553,
                format!("Delete the file first or use another name: overwriting is off here ({p})"),
            ));
        }
        Ok(())
    }

    /// An upload onto the existing file `p`: STOR from the start replaces
    /// it ([`Session::may_overwrite`]); APPE and REST n + STOR change its
    /// bytes, which needs the same `overwrite` right, except for the
    /// file's owner, who may resume or append to its own file (DrFTPD's
    /// resume rule).
    pub(super) fn may_change(
        &self,
        verb: PlanVerb,
        p: &VPath,
        st: &MasterState,
    ) -> Result<(), Action> {
        if verb == PlanVerb::Stor && self.rest == 0 {
            return self.may_overwrite(p, st);
        }
        if self.owns(st, p) {
            return Ok(());
        }
        self.permit(st, Perm::Overwrite, p)
    }

    /// A choice a replay pinned for this client and path (see
    /// `master::pins`), when that slave is online and, for an existing
    /// file, one of its `holders`.
    fn pinned(
        &self,
        st: &MasterState,
        path: Option<&VPath>,
        holders: Option<&[SlaveId]>,
    ) -> Option<SlaveId> {
        let name = st.pins.slave(self.peer.ip(), path)?;
        let id = st.slaves.find(name)?;
        let ok = st.slaves.is_online(id) && holders.is_none_or(|h| h.contains(&id));
        ok.then_some(id)
    }

    pub(super) fn pasv(&mut self, epsv: bool, st: &mut MasterState) -> Action {
        if self.epsv_all && !epsv {
            return r(503, "Use EPSV: EPSV ALL is in effect");
        }
        match self.plan.as_ref().map(|p| p.target) {
            Some(Target::Slave(s)) => {
                if !st.slaves.serves(s) {
                    self.clear_plan(st);
                    return Action::ResetData(Reply::new(
                        425,
                        "Send PRET again: the slave it planned went offline",
                    ));
                }
                if epsv {
                    // EPSV carries no address: only usable when the slave
                    // shares the master's address. Keep the plan, so the
                    // client's fallback PASV (curl, rclone) still routes.
                    let same = st.slaves.get(s).and_then(|i| i.data_ip) == Some(self.local.ip());
                    let relay = st.config.pasv_without_pret == PasvWithoutPret::Relay;
                    // Over IPv6, or after EPSV ALL, the client has no PASV
                    // to fall back to.
                    let no_pasv = self.local.is_ipv6() || self.epsv_all;
                    if !same && no_pasv && relay {
                        // The transfer goes through the master, as without
                        // PRET.
                        self.clear_plan(st);
                        let xfer = st.next_id();
                        return Action::OpenPassive {
                            target: Target::Master,
                            xfer,
                            epsv,
                        };
                    }
                    if !same {
                        // Name a way out that this session still has: PASV,
                        // else EPRT (IPv6), else none in this connection.
                        let fix = if self.epsv_all {
                            "Connect again without EPSV ALL"
                        } else if self.local.is_ipv6() {
                            "Use EPRT"
                        } else {
                            "Use PASV"
                        };
                        let why = if self.epsv_all {
                            " and this master does not relay"
                        } else {
                            ""
                        };
                        return r(
                            502,
                            format!(
                                "{fix}: EPSV cannot name slave {}'s address{why}",
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
                Reply::new(425, "Use EPSV: PASV needs an IPv4 address")
            }
        }
    }

    pub(super) fn port(&mut self, a: SocketAddr, st: &MasterState) -> Action {
        if self.epsv_all {
            return r(503, "Use EPSV: EPSV ALL is in effect");
        }
        // Bounce protection (RFC 2577 §3): data only to the control peer,
        // never to a privileged port. Users allowed FXP may name another
        // host (server-to-server transfers), still not a privileged port.
        let fxp = self
            .user()
            .and_then(|u| st.session_user(u))
            .is_some_and(|u| u.fxp);
        if a.ip() != self.peer.ip() && !fxp {
            return r(
                504,
                "Use your own address in PORT: another one is refused (RFC 2577)",
            );
        }
        if a.port() < 1024 {
            return r(
                504,
                "Use a port of 1024 or above in PORT: privileged ports are refused (RFC 2577)",
            );
        }
        self.data = DataSetup::Active(a);
        Action::SetActive(Reply::new(200, "PORT command successful"))
    }

    /// Checks that a data command matches the PRET that planned it. On a
    /// mismatch the plan and the data endpoint are released.
    pub(super) fn check_plan(
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
        // PRET STOR also covers the APPE that resumes the same file (curl
        // -C - -T sends PRET STOR, then APPE).
        let resume = plan.verb == PlanVerb::Stor && verb == PlanVerb::Appe;
        let verb_ok = plan.verb == verb || resume || (listing(plan.verb) && listing(verb));
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
            format!("Send PRET again: {got} does not match {announced}"),
        )))
    }

    pub(super) fn no_data(&self) -> Action {
        r(503, "Use PRET and PASV, EPSV, PORT or EPRT first")
    }

    /// Picks the slave and data route for a file transfer, consuming the
    /// data setup. `plan` is the matching PRET, if any.
    pub(super) fn route(
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
                _ => this.upload_slave(verb, path, false, st),
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

    /// Who may connect to this session's passive listeners: its client's
    /// address (port-stealing protection), or anyone for a user allowed
    /// FXP (the peer is the other server).
    pub fn passive_peer(&self, st: &MasterState) -> Option<IpAddr> {
        (!self.may_fxp(st)).then(|| self.peer.ip())
    }

    pub(super) fn may_fxp(&self, st: &MasterState) -> bool {
        self.user()
            .and_then(|u| st.session_user(u))
            .is_some_and(|u| u.fxp)
    }

    pub(super) fn fxp_allowed(&self, st: &MasterState, verb: &str) -> Result<(), Action> {
        if self.may_fxp(st) {
            Ok(())
        } else {
            Err(r(
                550,
                format!("{verb}: server-to-server transfers (FXP) are not allowed for you"),
            ))
        }
    }
}

/// A file transfer over the master's own passive port (no PRET, and the
/// master does not relay): the fix first, short enough for clients that
/// cut long replies (ncftp).
fn needs_pret(verb: PlanVerb) -> Action {
    r(
        503,
        format!(
            "Send PRET {} <file> before PASV (curl --ftp-pret) or use PORT: files live on other hosts",
            verb.as_str()
        ),
    )
}

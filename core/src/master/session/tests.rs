//! Unit tests of the session state machine: commands in, actions out,
//! no sockets.
//!
//! Size: this file is only tests (about 1,300 lines). They share one
//! fixture (the state with its slaves and files, `session`, `passive`,
//! `pass`, `login_as`), and are grouped by section headers; split, every
//! part would import the same fixture for a few tests each.

use super::*;
use crate::config::{MasterConfig, PasvWithoutPret, UserConfig};
use crate::link::{FileOp, TransferOrder, APPEND};
use crate::master::db::{FileMeta, Holders};
use crate::master::registry::SlaveState;
use crate::master::users;
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
        version: 1,
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
            offset: 0,
            pending: None,
            version: Some(crate::link::FileVersion {
                store: 0,
                gen: 1,
                size: 3,
                crc32: None
            }),
            rate: None
        }
    );
    assert_eq!(
        (
            st.slaves.get(0).unwrap().reserved,
            st.slaves.get(0).unwrap().active
        ),
        (0, 1)
    );
    let done = s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 3 }, false);
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
    assert!(r.starts_with("502 Use PASV: "), "{r}");
    assert!(passive(&mut s, &mut st, "PASV").contains("(127,0,0,11,"));
}

#[test]
fn epsv_after_pret_on_ipv6_is_relayed_where_relaying_is_allowed() {
    // Over IPv6 a client cannot fall back to PASV: EPSV goes through the
    // master (relay mode), and is refused as over IPv4 otherwise.
    for (mode, relayed) in [
        (PasvWithoutPret::Relay, true),
        (PasvWithoutPret::Listings, false),
    ] {
        let mut st = state(mode);
        let mut s = Session::new(
            1,
            "[::1]:40000".parse().unwrap(),
            "[::1]:21".parse().unwrap(),
        );
        s.handle(cmd("USER u"), &mut st);
        assert_eq!(pass(&mut s, &mut st, "p").0, "230 User u logged in");
        s.handle(cmd("PRET RETR a"), &mut st);
        let a = s.handle(cmd("EPSV"), &mut st);
        if !relayed {
            assert!(text(a).starts_with("502 Use EPRT: "));
            continue;
        }
        let Action::OpenPassive {
            target: Target::Master,
            xfer,
            epsv: true,
        } = a
        else {
            panic!("{a:?}");
        };
        let r = s.passive_opened(
            &st,
            Target::Master,
            xfer,
            true,
            Ok("[::1]:50001".parse().unwrap()),
        );
        assert!(r.to_string().starts_with("229 "), "{r}");
        let Action::Transfer(job) = s.handle(cmd("RETR a"), &mut st) else {
            panic!()
        };
        assert_eq!(job.route, Route::Relay);
    }
}

#[test]
fn epsv_after_pret_under_epsv_all_is_relayed_or_refused_with_a_way_out() {
    // After EPSV ALL there is no PASV to fall back to either: as over
    // IPv6, EPSV goes through the master where relaying is allowed.
    let mut st = state(PasvWithoutPret::Relay);
    let mut s = session(&mut st);
    assert!(text(s.handle(cmd("EPSV ALL"), &mut st)).starts_with("200"));
    s.handle(cmd("PRET RETR a"), &mut st);
    let r = passive(&mut s, &mut st, "EPSV");
    assert!(r.starts_with("229 "), "{r}");
    let Action::Transfer(job) = s.handle(cmd("RETR a"), &mut st) else {
        panic!()
    };
    assert_eq!(job.route, Route::Relay);
    // Without relaying: a refusal that names the way out, not PASV.
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    s.handle(cmd("EPSV ALL"), &mut st);
    s.handle(cmd("PRET RETR a"), &mut st);
    let r = passive(&mut s, &mut st, "EPSV");
    assert!(r.starts_with("502 Connect again without EPSV ALL"), "{r}");
    assert!(!r.contains("PASV"), "{r}");
    assert!(r.trim_end().len() < 120, "{r}");
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
        "503 Send PRET again: RETR /b does not match PRET RETR /a"
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
    assert!(
        r.starts_with("503 Send PRET RETR <file> before PASV"),
        "{r}"
    );
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
    let done = s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 4 }, true);
    assert!(done.to_string().starts_with("226"));
    assert_eq!(st.slaves.get(job.slave).unwrap().relayed_bytes, 4);
}

#[test]
fn uploads_go_to_the_roomiest_slave_and_are_recorded_on_commit() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    // A site that forbids overwriting: PRET STOR plans (it may be a
    // resume), the plain STOR is refused.
    let mut no_overwrite = (*st.config).clone();
    no_overwrite.allow_overwrite = false;
    st.config = Arc::new(no_overwrite);
    assert!(text(s.handle(cmd("PRET STOR a"), &mut st)).starts_with("200"));
    assert!(passive(&mut s, &mut st, "PASV").contains("227"));
    let refused = text(s.handle(cmd("STOR a"), &mut st));
    assert!(refused.starts_with("553"), "no overwrite: {refused}");
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
        false,
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
    // The commit decision records the new version at once, with its owner,
    // and logs the commit for the slave.
    let seq = s.decide_commit(&mut st, &job, 9, 1, &[]).unwrap()[0].1;
    let f = st.db.file(&p("/new")).unwrap();
    assert_eq!((f.size, f.holders.to_vec(), f.crc32), (9, vec![1], Some(1)));
    assert_eq!(st.db.name(f.owner), "u");
    assert!(matches!(
        st.slaves.get(1).unwrap().log.back(),
        Some((n, FileOp::Commit { .. })) if *n == seq
    ));
    crate::master::commit::acked(
        &mut st,
        1,
        seq,
        &crate::link::OpOutcome::Committed { size: 9, mtime: 5 },
    );
    assert_eq!(st.db.file(&p("/new")).unwrap().mtime, 5);
    let done = s.transfer_done(
        &mut st,
        &job,
        TransferOutcome::Committed {
            size: 9,
            mtime: 5,
            crc32: 1,
        },
        false,
    );
    assert!(done.to_string().starts_with("226"));
}

#[test]
fn commits_are_compare_and_swap() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut cfg = (*st.config).clone();
    cfg.allow_overwrite = false;
    st.config = std::sync::Arc::new(cfg);
    let mut s = session(&mut st);
    let upload = |s: &mut Session, st: &mut MasterState, line: &str| {
        let verb = line.split(' ').next().unwrap();
        s.handle(cmd(&format!("PRET {line}")), st);
        passive(s, st, "PASV");
        let Action::Transfer(job) = s.handle(cmd(line), st) else {
            panic!("{line}")
        };
        let _ = verb;
        job
    };
    // Two STORs of one new name without overwrite: the second loses.
    let a = upload(&mut s, &mut st, "STOR n");
    let b = upload(&mut s, &mut st, "STOR n");
    assert!(s.decide_commit(&mut st, &a, 1, 1, &[]).is_ok());
    let lost = s.decide_commit(&mut st, &b, 2, 2, &[]).unwrap_err();
    assert_eq!(lost.code, 553, "{lost}");
    assert_eq!(st.db.file(&p("/n")).unwrap().size, 1);
    // Two APPEs to one file: the later one built on a replaced version.
    let x = upload(&mut s, &mut st, "APPE b");
    let y = upload(&mut s, &mut st, "APPE b");
    // Each names the version it builds on: a slave whose copy is another
    // one (its commit still on the way) refuses instead of appending to it.
    let recorded = crate::master::commit::file_version(&st, st.db.file(&p("/b")).unwrap());
    for job in [&x, &y] {
        assert!(
            matches!(&job.order, TransferOrder::Receive { base: Some(b), offset: Some(APPEND), .. } if *b == recorded),
            "{:?}",
            job.order
        );
    }
    // A new file's upload names none (and an APPE to a missing name starts
    // from nothing, whatever a slave's disk still holds under it).
    assert!(matches!(
        &a.order,
        TransferOrder::Receive { base: None, .. }
    ));
    let fresh = upload(&mut s, &mut st, "APPE fresh");
    assert!(matches!(
        &fresh.order,
        TransferOrder::Receive { base: None, .. }
    ));
    assert!(s.decide_commit(&mut st, &x, 8, 8, &[]).is_ok());
    assert_eq!(
        s.decide_commit(&mut st, &y, 9, 9, &[]).unwrap_err().code,
        450
    );
    // A failed commit restores the previous version with its holders.
    let before = st.db.file(&p("/both")).unwrap().clone();
    let mut cfg = (*st.config).clone();
    cfg.allow_overwrite = true;
    st.config = std::sync::Arc::new(cfg);
    let z = upload(&mut s, &mut st, "STOR both");
    let seq = s.decide_commit(&mut st, &z, 7, 7, &[]).unwrap()[0].1;
    assert_eq!(st.db.file(&p("/both")).unwrap().size, 7);
    crate::master::commit::acked(
        &mut st,
        z.slave,
        seq,
        &crate::link::OpOutcome::Failed("disk".into()),
    );
    assert_eq!(st.db.file(&p("/both")).unwrap(), &before);
}

#[test]
fn changes_reach_offline_holders_later() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    assert!(text(s.handle(cmd("RNFR gone"), &mut st)).starts_with("350"));
    assert!(text(s.handle(cmd("RNTO moved"), &mut st)).starts_with("250"));
    assert!(text(s.handle(cmd("DELE moved"), &mut st)).starts_with("250"));
    assert_eq!(
        st.slaves.get(2).unwrap().log,
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

/// A SITE user command as the driver runs it: hash off the lock, then
/// `password_hashed`.
fn site_user(s: &mut Session, st: &mut MasterState, line: &str) -> Action {
    match s.handle(cmd(line), st) {
        Action::HashPassword(job) => {
            let hash = users::hash_password(&job.password, [9; 16], job.cost);
            s.password_hashed(st, &job, hash)
        }
        other => other,
    }
}

/// An admin (root) and a user (joe), no permission rules.
fn root_and_joe() -> MasterState {
    state_with(
        vec![
            user_cfg("root", "/", true, &[]),
            user_cfg("joe", "/", false, &[]),
        ],
        "",
    )
}

#[test]
fn a_deleted_users_open_session_goes_on_until_it_ends() {
    let mut st = root_and_joe();
    let mut joe = login_as(&mut st, "joe");
    let mut root = login_as(&mut st, "root");
    assert!(text(root.handle(cmd("SITE DELUSER joe"), &mut st)).starts_with("200"));
    // joe's session keeps the rights it had (SITE DELUSER here; a reload
    // that drops joe from the config goes through the same remove_user).
    assert!(text(joe.handle(cmd("PWD"), &mut st)).starts_with("257"));
    assert!(text(joe.handle(cmd("MKD /j"), &mut st)).starts_with("257"));
    assert!(text(joe.handle(cmd("PRET RETR /a"), &mut st)).starts_with("200"));
    // Nobody logs in as joe any more.
    let mut again = Session::new(9, PEER.parse().unwrap(), LOCAL.parse().unwrap());
    again.handle(cmd("USER joe"), &mut st);
    assert_eq!(pass(&mut again, &mut st, "pw").0, "530 Login incorrect");
}

#[test]
fn site_user_commands_are_for_admins_and_persist_hashed() {
    let mut st = root_and_joe();
    let mut joe = login_as(&mut st, "joe");
    let got = text(joe.handle(cmd("SITE ADDUSER eve pw"), &mut st));
    assert_eq!(got, "550 SITE ADDUSER: permission denied (admins only)");
    let mut root = login_as(&mut st, "root");
    // The session never hashes under the lock: it asks the driver to.
    assert!(matches!(
        root.handle(cmd("SITE ADDUSER eve s3cret staff"), &mut st),
        Action::HashPassword(_)
    ));
    assert!(st.users.get("eve").is_none());
    assert_eq!(
        text(site_user(
            &mut root,
            &mut st,
            "SITE ADDUSER eve s3cret staff"
        )),
        "200 User eve added"
    );
    let eve = st.users.get("eve").unwrap().clone();
    assert!(eve.password_hash.starts_with("$argon2id$"));
    assert!(!eve.password_hash.contains("s3cret"));
    assert_eq!(eve.groups, ["staff"]);
    assert!(text(site_user(&mut root, &mut st, "SITE ADDUSER eve x")).starts_with("553"));
    assert!(text(root.handle(cmd("SITE ADDUSER ../x y"), &mut st)).starts_with("553"));
    assert!(text(root.handle(cmd("SITE ADDUSER onlyname"), &mut st)).starts_with("501"));
    assert!(text(site_user(&mut root, &mut st, "SITE CHPASS eve n3w")).starts_with("200"));
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
            "521 Send PBSZ 0 and PROT P: data connections must be encrypted here"
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
    assert!(
        r.starts_with("521 Use PROT C: slave s1 has no TLS certificate"),
        "{r}"
    );
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

#[test]
fn sync_tools_get_safe_answers_by_default() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    // MKD of an existing directory: 550, which rclone reads as "exists".
    assert!(text(s.handle(cmd("MKD /d"), &mut st)).starts_with("257"));
    let again = text(s.handle(cmd("MKD /d"), &mut st));
    assert!(again.starts_with("550 "), "{again}");
    // SITE CHMOD is accepted and ignored (lftp mirror -R sends it).
    let chmod = text(s.handle(cmd("SITE CHMOD 644 /a"), &mut st));
    assert!(chmod.starts_with("200 "), "{chmod}");
    // Overwriting is allowed by default, on a slave holding the file.
    assert!(st.config.allow_overwrite);
    assert_eq!(
        text(s.handle(cmd("PRET STOR /a"), &mut st)),
        "200 OK, planning for upcoming upload"
    );
    assert!(passive(&mut s, &mut st, "PASV").contains("127,0,0,11"));
    let Action::Transfer(job) = s.handle(cmd("STOR /a"), &mut st) else {
        panic!("STOR over an existing file must run")
    };
    assert_eq!(job.slave_name, "s1");
}

#[test]
fn pret_stor_covers_the_appe_or_rest_stor_that_resumes_it() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    // curl -C - -T: PRET STOR, PASV, then APPE of the same path.
    assert!(text(s.handle(cmd("PRET STOR /b"), &mut st)).starts_with("200"));
    assert!(passive(&mut s, &mut st, "PASV").contains("127,0,0,11"));
    let Action::Transfer(job) = s.handle(cmd("APPE /b"), &mut st) else {
        panic!("APPE after PRET STOR of the same path must run")
    };
    let b = crate::master::commit::file_version(&st, st.db.file(&p("/b")).unwrap());
    assert_eq!(
        job.order,
        TransferOrder::Receive {
            path: p("/b"),
            offset: Some(crate::link::APPEND),
            base: Some(b),
        }
    );
    assert_eq!(job.slave_name, "s1", "on the slave holding the file");
    s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 0 }, false);
    // Or REST n + STOR of the same path.
    assert!(text(s.handle(cmd("PRET STOR /b"), &mut st)).starts_with("200"));
    assert!(passive(&mut s, &mut st, "PASV").contains("127,0,0,11"));
    assert!(text(s.handle(cmd("REST 3"), &mut st)).starts_with("350"));
    let Action::Transfer(job) = s.handle(cmd("STOR /b"), &mut st) else {
        panic!("REST+STOR after PRET STOR must run")
    };
    assert_eq!(
        job.order,
        TransferOrder::Receive {
            path: p("/b"),
            offset: Some(3),
            base: Some(b),
        }
    );
    s.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 0 }, false);
    // APPE of another path still does not match.
    assert!(text(s.handle(cmd("PRET STOR /b"), &mut st)).starts_with("200"));
    assert!(passive(&mut s, &mut st, "PASV").contains("227"));
    let other = text(s.handle(cmd("APPE /a"), &mut st));
    assert!(other.starts_with("503"), "{other}");
}

fn open_as(st: &mut MasterState, id: u64, peer: &str, name: &str) -> Session {
    let peer: SocketAddr = peer.parse().unwrap();
    st.sessions
        .insert(id, crate::master::SessionInfo::new(peer));
    let mut s = Session::new(id, peer, LOCAL.parse().unwrap());
    s.handle(cmd(&format!("USER {name}")), st);
    let (reply, _) = pass(&mut s, st, "pw");
    assert!(reply.starts_with("230"), "{reply}");
    s
}

#[test]
fn admin_site_commands_who_kick_unban_users_slaves() {
    let mut st = state_with(
        vec![
            user_cfg("root", "/", true, &["staff"]),
            user_cfg("bob", "/", false, &[]),
        ],
        "",
    );
    st.now = 100;
    let mut root = open_as(&mut st, 1, "127.0.0.5:1000", "root");
    let mut bob = open_as(&mut st, 2, "127.0.0.6:2000", "bob");
    let mut bob2 = open_as(&mut st, 3, "127.0.0.6:2001", "bob");
    // bob downloads: SITE WHO shows the transfer, not "idle".
    assert!(text(bob.handle(cmd("PRET RETR /a"), &mut st)).starts_with("200"));
    passive(&mut bob, &mut st, "PASV");
    let Action::Transfer(job) = bob.handle(cmd("RETR /a"), &mut st) else {
        panic!()
    };
    st.now = 104;
    let who = text(root.handle(cmd("SITE WHO"), &mut st));
    assert!(who.contains("3 sessions:"), "{who}");
    assert!(
        who.contains("#2 bob from 127.0.0.6:2000 in / RETR /a on s1 for 4 s"),
        "{who}"
    );
    assert!(
        who.contains("#1 root from 127.0.0.5:1000 in / idle"),
        "{who}"
    );
    // bob sees only his own session.
    let mine = text(bob2.handle(cmd("SITE WHO"), &mut st));
    assert!(
        mine.contains("1 sessions:") && mine.contains("#3 bob"),
        "{mine}"
    );
    assert!(!mine.contains("127.0.0.5"), "{mine}");
    bob.transfer_done(&mut st, &job, TransferOutcome::Sent { bytes: 3 }, false);
    let who = text(root.handle(cmd("SITE WHO"), &mut st));
    assert!(
        who.contains("#2 bob from 127.0.0.6:2000 in / idle"),
        "{who}"
    );
    // Admin commands are for admins.
    for c in [
        "SITE SLAVES",
        "SITE USERS",
        "SITE KICK root",
        "SITE UNBAN 10.0.0.1",
    ] {
        let r = text(bob.handle(cmd(c), &mut st));
        assert!(
            r.starts_with("550 ") && r.contains("admins only"),
            "{c}: {r}"
        );
    }
    // SLAVES sorted by name, whatever the registry's order.
    st.slaves.id_for("a0");
    let slaves = text(root.handle(cmd("SITE SLAVES"), &mut st));
    let names: Vec<&str> = slaves
        .lines()
        .skip(1)
        .filter_map(|l| l.split(' ').next())
        .filter(|n| *n != "200")
        .collect();
    assert_eq!(names, ["a0", "s1", "s2", "s3"], "{slaves}");
    let users = text(root.handle(cmd("SITE USERS"), &mut st));
    assert!(
        users.contains("bob groups=- home=/ sessions=2 uploaded=0"),
        "{users}"
    );
    assert!(
        users.contains("root groups=staff home=/ sessions=1 uploaded=0 admin"),
        "{users}"
    );
    // KICK by user: every session of bob; by id; never the admin's own.
    match root.handle(cmd("SITE KICK bob"), &mut st) {
        Action::Kick { sessions, reply } => {
            assert_eq!(sessions, [2, 3]);
            assert!(reply.to_string().starts_with("200"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        root.handle(cmd("SITE KICK 3"), &mut st),
        Action::Kick { sessions, .. } if sessions == [3]
    ));
    assert!(text(root.handle(cmd("SITE KICK 1"), &mut st)).starts_with("550"));
    assert!(text(root.handle(cmd("SITE KICK"), &mut st)).starts_with("501"));
    // UNBAN lifts a login ban by address or by name.
    let cfg = st.config.guard.clone();
    let ip: std::net::IpAddr = "10.0.0.9".parse().unwrap();
    for i in 0..5 {
        st.login_guard.failure(&cfg, ip, "bob", i);
    }
    assert!(st.login_guard.check(&cfg, ip, "x", 10).is_err());
    assert!(text(root.handle(cmd("SITE UNBAN 10.0.0.9"), &mut st)).starts_with("200"));
    assert!(st.login_guard.check(&cfg, ip, "x", 10).is_ok());
    assert!(text(root.handle(cmd("SITE UNBAN bob"), &mut st)).starts_with("200"));
    assert!(st.login_guard.check(&cfg, ip, "bob", 10).is_ok());
    assert!(text(root.handle(cmd("SITE UNBAN bob"), &mut st)).starts_with("550"));
}

/// Every reply that refuses a transfer: the fix first, under 120
/// characters (ncftp and others cut long replies), for a typical path.
#[test]
fn transfer_refusals_put_the_fix_first_and_fit_120_characters() {
    let mut refusals = Vec::new();
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    passive(&mut s, &mut st, "PASV");
    refusals.push(text(s.handle(cmd("RETR b"), &mut st)));
    s.handle(cmd("PRET RETR a"), &mut st);
    refusals.push(passive(&mut s, &mut st, "EPSV"));
    passive(&mut s, &mut st, "PASV");
    refusals.push(text(s.handle(cmd("RETR b"), &mut st)));
    refusals.push(text(s.handle(cmd("RETR a"), &mut st)));
    refusals.push(text(s.handle(cmd("PORT 10,1,2,3,200,1"), &mut st)));
    refusals.push(text(s.handle(cmd("PORT 127,0,0,1,0,21"), &mut st)));
    let transfer = |announced: &str| {
        let job = TransferJob {
            slave: 0,
            slave_name: "slave-1".into(),
            xfer: 1,
            order: TransferOrder::Send {
                path: p("/a"),
                offset: 0,
                version: None,
                rate: None,
                pending: None,
            },
            route: Route::SlavePassive,
            opening: Reply::new(150, "x"),
            upload: None,
        };
        let outcome = TransferOutcome::IgnoredPasvAddress {
            announced: announced.parse().unwrap(),
            used: "192.168.100.200:65000".parse().unwrap(),
        };
        (job, outcome)
    };
    s.handle(cmd("PRET RETR a"), &mut st);
    passive(&mut s, &mut st, "PASV");
    let Action::Transfer(_) = s.handle(cmd("RETR a"), &mut st) else {
        panic!()
    };
    let (job, outcome) = transfer("203.0.113.254:65000");
    refusals.push(s.transfer_done(&mut st, &job, outcome, false).to_string());
    let mut no_overwrite = (*st.config).clone();
    no_overwrite.allow_overwrite = false;
    st.config = Arc::new(no_overwrite);
    s.handle(cmd("PRET STOR a"), &mut st);
    passive(&mut s, &mut st, "PASV");
    refusals.push(text(s.handle(cmd("STOR a"), &mut st)));
    let fixes = ["Send ", "Use ", "Connect ", "Delete "];
    for r in &refusals {
        let r = r.trim_end();
        assert!(r.len() < 120, "{} characters: {r}", r.len());
        assert!(
            fixes.iter().any(|f| r[4..].starts_with(f)),
            "the fix first: {r}"
        );
    }
    assert_eq!(refusals.len(), 8);
}

#[test]
fn slave_lifecycle_site_commands() {
    let mut st = state_with(
        vec![
            user_cfg("root", "/", true, &[]),
            user_cfg("bob", "/", false, &[]),
        ],
        "",
    );
    let mut root = open_as(&mut st, 1, "127.0.0.5:1000", "root");
    let mut bob = open_as(&mut st, 2, "127.0.0.6:2000", "bob");
    for c in [
        "SITE SLAVE s1 DRAIN",
        "SITE ADDSLAVE s9",
        "SITE DELSLAVE s1",
        "SITE KICKSLAVE s1",
        "SITE REMERGE s1",
        "SITE SLAVE s1",
    ] {
        let r = text(bob.handle(cmd(c), &mut st));
        assert!(
            r.starts_with("550 ") && r.contains("admins only"),
            "{c}: {r}"
        );
    }
    let mut site = |c: &str, st: &mut MasterState| text(root.handle(cmd(c), st));
    // Usage and unknown names.
    assert!(site("SITE SLAVE", &mut st).starts_with("501 Usage: SITE SLAVE <name>"));
    assert!(site("SITE SLAVE s1 SHRINK", &mut st).starts_with("501"));
    assert!(site("SITE DELSLAVE", &mut st).starts_with("501 Usage: SITE DELSLAVE"));
    assert!(site("SITE KICKSLAVE nope", &mut st).starts_with("550 no slave named nope"));
    assert!(site("SITE ADDSLAVE ../x", &mut st).starts_with("501"));
    // DRAIN: no new upload goes there; progress shown.
    let r = site("SITE SLAVE s2 DRAIN", &mut st);
    assert!(r.starts_with("200 s2 is draining"), "{r}");
    assert!(st.slaves.get(1).unwrap().draining);
    let one = site("SITE SLAVE s2", &mut st);
    assert!(one.contains("s2 online draining="), "{one}");
    for _ in 0..4 {
        assert!(text(root.handle(cmd("PRET STOR /new"), &mut st)).contains("200"));
        let pasv = passive(&mut root, &mut st, "PASV");
        assert!(
            !pasv.contains("127,0,0,12"),
            "an upload went to the draining s2: {pasv}"
        );
        root.handle(cmd("ABOR"), &mut st);
    }
    let mut site = |c: &str, st: &mut MasterState| text(root.handle(cmd(c), st));
    assert!(site("SITE SLAVE s2 UNDRAIN", &mut st).starts_with("200"));
    assert!(!st.slaves.get(1).unwrap().draining);
    // KICKSLAVE / REMERGE: the driver drops the link; offline: refused.
    match root.handle(cmd("SITE KICKSLAVE s1"), &mut st) {
        Action::DropLinks { slaves, reply, .. } => {
            assert_eq!(slaves, vec![0]);
            assert!(reply.to_string().contains("reconnects"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        root.handle(cmd("SITE REMERGE s1"), &mut st),
        Action::DropLinks { .. }
    ));
    let mut site = |c: &str, st: &mut MasterState| text(root.handle(cmd(c), st));
    assert!(site("SITE REMERGE s3", &mut st).starts_with("550 s3 is not connected"));
    // ADDSLAVE persists the name; a second time it exists.
    assert!(site("SITE ADDSLAVE s9", &mut st).starts_with("200 Slave s9 added"));
    assert!(st.slaves.knows("s9").is_some());
    assert!(site("SITE ADDSLAVE s9", &mut st).starts_with("550 slave s9 is already known"));
    // DELSLAVE: forgotten, its link dropped, its files repaired elsewhere.
    let held = st.db.held_by(0);
    match root.handle(cmd("SITE DELSLAVE s1"), &mut st) {
        Action::DropLinks { slaves, reply, .. } => {
            assert_eq!(slaves, vec![0]);
            assert!(
                reply.to_string().contains(&format!("it held {held} files")),
                "{reply}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(st.db.held_by(0), 0);
    let mut site = |c: &str, st: &mut MasterState| text(root.handle(cmd(c), st));
    assert!(site("SITE KICKSLAVE s1", &mut st).starts_with("550 slave s1 was removed"));
    let all = site("SITE SLAVES", &mut st);
    assert!(all.contains("s1 removed"), "{all}");
    assert!(all.contains("repair queue"), "{all}");
    assert!(site("SITE ADDSLAVE s1", &mut st).starts_with("200"));
    assert!(!st.slaves.get(0).unwrap().removed);
}

// --- Rights on other users' files ---------------------------------------

/// mallory may upload but not overwrite, delete or rename; alice owns
/// /alice.txt and /mine.txt belongs to mallory; /hr/* is neither listed
/// nor downloaded by mallory.
fn mallory_state() -> MasterState {
    let perms = r#"
        [[permissions]]
        actions = ["overwrite", "delete", "rename"]
        path = "*"
        who = ["!mallory", "*"]
        [[permissions]]
        actions = ["list", "download"]
        path = "/hr/*"
        who = ["!mallory", "*"]
    "#;
    let mut st = state_with(
        vec![
            user_cfg("alice", "/", false, &[]),
            user_cfg("mallory", "/", false, &[]),
        ],
        perms,
    );
    for (path, owner) in [
        ("/alice.txt", "alice"),
        ("/mine.txt", "mallory"),
        ("/hr/pay.xlsx", "alice"),
    ] {
        st.db
            .mkdir_all(&p(path).parent().unwrap(), "alice", 0)
            .unwrap();
        let owner = st.db.intern(owner);
        let meta = FileMeta {
            version: 1,
            size: 60,
            mtime: 0,
            owner,
            group: owner,
            crc32: Some(0x9afc_a1b4),
            holders: Holders::from_slice(&[0]),
        };
        st.db.put_file(&p(path), meta).unwrap();
    }
    st
}

#[test]
fn changing_another_users_file_needs_the_overwrite_right() {
    let mut st = mallory_state();
    let mut m = login_as(&mut st, "mallory");
    // Every way to change the bytes of alice's file, with and without PRET.
    for (pret, rest, verb) in [
        (false, None, "STOR"),
        (false, Some(0), "STOR"),
        (false, Some(1), "STOR"),
        (false, None, "APPE"),
        (true, None, "STOR"),
        (true, Some(1), "STOR"),
        (true, None, "APPE"),
    ] {
        if let Some(n) = rest {
            m.handle(cmd(&format!("REST {n}")), &mut st);
        }
        if pret {
            let got = text(m.handle(cmd(&format!("PRET {verb} /alice.txt")), &mut st));
            assert!(got.starts_with("200"), "{got}");
        }
        passive(&mut m, &mut st, "PASV");
        let got = text(m.handle(cmd(&format!("{verb} /alice.txt")), &mut st));
        assert!(
            got.starts_with("550") && got.contains("you may not overwrite here"),
            "pret {pret} rest {rest:?} {verb}: {got}"
        );
    }
    // The owner may resume and append to its own file (DrFTPD's rule),
    // but not replace it from the start.
    for (rest, verb, ok) in [
        (None, "APPE", true),
        (Some(1), "APPE", true),
        (Some(1), "STOR", true),
        (None, "STOR", false),
        (Some(0), "STOR", false),
    ] {
        if let Some(n) = rest {
            m.handle(cmd(&format!("REST {n}")), &mut st);
        }
        m.handle(cmd(&format!("PRET {verb} /mine.txt")), &mut st);
        passive(&mut m, &mut st, "PASV");
        match m.handle(cmd(&format!("{verb} /mine.txt")), &mut st) {
            Action::Transfer(job) if ok => {
                let failed = TransferOutcome::Failed(TransferFailure::Aborted);
                m.transfer_done(&mut st, &job, failed, false);
            }
            other => {
                let got = text(other);
                assert!(
                    !ok && got.contains("you may not overwrite"),
                    "{verb} {rest:?}: {got}"
                );
            }
        }
    }
    // A new file is an upload, nothing more.
    m.handle(cmd("REST 5"), &mut st);
    m.handle(cmd("PRET STOR /new.txt"), &mut st);
    passive(&mut m, &mut st, "PASV");
    assert!(matches!(
        m.handle(cmd("STOR /new.txt"), &mut st),
        Action::Transfer(_)
    ));
}

#[test]
fn paths_not_listed_or_downloaded_reveal_nothing() {
    let mut st = mallory_state();
    let mut m = login_as(&mut st, "mallory");
    for (line, right) in [
        ("STAT /hr", "list"),
        ("STAT /hr/pay.xlsx", "list"),
        ("MLST /hr/pay.xlsx", "list"),
        ("MLST /hr", "list"),
        ("SIZE /hr/pay.xlsx", "list"),
        ("MDTM /hr/pay.xlsx", "list"),
        ("XCRC /hr/pay.xlsx", "download"),
        ("HASH /hr/pay.xlsx", "download"),
    ] {
        let got = text(m.handle(cmd(line), &mut st));
        assert!(
            got.starts_with("550") && got.contains(&format!("you may not {right} here")),
            "{line}: {got}"
        );
        assert!(
            !got.contains("pay.xlsx") || got.starts_with("550 /hr/pay.xlsx"),
            "{got}"
        );
    }
    // alice sees everything.
    let mut a = login_as(&mut st, "alice");
    assert!(text(a.handle(cmd("STAT /hr"), &mut st)).contains("pay.xlsx"));
    assert_eq!(text(a.handle(cmd("SIZE /hr/pay.xlsx"), &mut st)), "213 60");
    assert!(text(a.handle(cmd("XCRC /hr/pay.xlsx"), &mut st)).contains("9AFCA1B4"));
}

#[test]
fn mlst_perm_facts_are_the_users_real_rights() {
    let mut st = mallory_state();
    let mut m = login_as(&mut st, "mallory");
    let facts = |s: &mut Session, st: &mut MasterState, line: &str| text(s.handle(cmd(line), st));
    // mallory: no delete, rename or overwrite; may append to her own file.
    let got = facts(&mut m, &mut st, "MLST /alice.txt");
    assert!(got.contains("perm=r;"), "{got}");
    let got = facts(&mut m, &mut st, "MLST /mine.txt");
    assert!(got.contains("perm=ar;"), "{got}");
    let got = facts(&mut m, &mut st, "MLST /");
    assert!(got.contains("perm=lcdme;"), "{got}");
    let mut a = login_as(&mut st, "alice");
    let got = facts(&mut a, &mut st, "MLST /alice.txt");
    assert!(got.contains("perm=adfrw;"), "{got}");
    // MLSD carries the same facts, per entry.
    passive(&mut m, &mut st, "PASV");
    match m.handle(cmd("MLSD /"), &mut st) {
        Action::Listing(job) => {
            let out = String::from_utf8(job.bytes).unwrap();
            assert!(
                out.contains("perm=r;") && out.contains(" alice.txt"),
                "{out}"
            );
            assert!(
                out.contains("perm=ar;") && out.contains(" mine.txt"),
                "{out}"
            );
            assert!(!out.contains("adfrw"), "{out}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn epsv_with_another_protocol_offers_only_this_connections() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    for line in ["EPSV 2", "EPSV 3", "EPSV 0", "EPSV 999"] {
        assert_eq!(
            text(s.handle(cmd(line), &mut st)),
            "522 Network protocol not supported, use (1)",
            "{line}"
        );
    }
    let mut s6 = Session::new(
        1,
        "[::1]:40000".parse().unwrap(),
        "[::1]:21".parse().unwrap(),
    );
    s6.handle(cmd("USER u"), &mut st);
    pass(&mut s6, &mut st, "p");
    assert_eq!(
        text(s6.handle(cmd("EPSV 1"), &mut st)),
        "522 Network protocol not supported, use (2)"
    );
}

#[test]
fn help_answers_about_one_command_and_lists_them_all() {
    let mut st = with_tls(state(PasvWithoutPret::Listings));
    let mut s = session(&mut st);
    assert_eq!(
        text(s.handle(cmd("HELP RETR"), &mut st)),
        "214 Syntax: RETR <path>"
    );
    assert_eq!(
        text(s.handle(cmd("help xcrc"), &mut st)),
        "214 Syntax: XCRC <path> [<start> <end>]"
    );
    assert!(text(s.handle(cmd("HELP BOGUS"), &mut st)).starts_with("502 "));
    let site = text(s.handle(cmd("HELP SITE"), &mut st));
    assert!(
        site.starts_with("214-") && site.contains("SITE ADDUSER"),
        "{site}"
    );
    let all = text(s.handle(cmd("HELP"), &mut st));
    let words: Vec<&str> = all.split_whitespace().collect();
    for verb in [
        "RETR", "XCRC", "AUTH", "PBSZ", "PROT", "CCC", "SSCN", "CPSV", "MLSD",
    ] {
        assert!(words.contains(&verb), "{verb} missing: {all}");
    }
    let site_line = all.lines().find(|l| l.contains("SITE commands:")).unwrap();
    for verb in [
        "HELP", "WHO", "CHMOD", "KICK", "USERS", "ADDUSER", "CHGRP", "REMERGE", "SLAVES",
    ] {
        assert!(
            site_line.split_whitespace().any(|w| w == verb),
            "{verb}: {site_line}"
        );
    }
    // Every HELP <verb> in the list answers 214.
    let list: Vec<String> = all
        .lines()
        .skip(1)
        .take_while(|l| !l.contains("SITE commands:"))
        .flat_map(|l| {
            l.trim_start_matches("214-")
                .split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    for verb in &list {
        assert!(
            text(s.handle(cmd(&format!("HELP {verb}")), &mut st)).starts_with("214"),
            "{verb}"
        );
    }
    // Without a certificate the TLS commands are not listed.
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    let all = text(s.handle(cmd("HELP"), &mut st));
    assert!(!all.split_whitespace().any(|w| w == "AUTH"), "{all}");
    assert!(text(s.handle(cmd("HELP AUTH"), &mut st)).starts_with("502 "));
}

#[test]
fn xcrc_takes_an_optional_byte_range() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    let mut m = st.db.file(&p("/a")).unwrap().clone();
    m.crc32 = Some(0x0a1b2c3d);
    st.db.put_file(&p("/c"), m.clone()).unwrap();
    // The whole file as a range (size 3): its CRC.
    assert_eq!(
        text(s.handle(cmd("XCRC /c 0 3"), &mut st)),
        "250 XCRC Successful. 0A1B2C3D"
    );
    let part = text(s.handle(cmd("XCRC /c 0 2"), &mut st));
    assert!(
        part.starts_with("501 Send XCRC <path> without a range"),
        "{part}"
    );
    assert!(part.trim_end().len() < 120, "{part}");
    // A missing file: 550 naming the path, not the range.
    let r = text(s.handle(cmd("XCRC /nope 0 5"), &mut st));
    assert!(r.starts_with("550 /nope"), "{r}");
    // A name that itself ends in two numbers still works.
    st.db.put_file(&p("/d 1 2"), m).unwrap();
    assert!(text(s.handle(cmd("XCRC /d 1 2"), &mut st)).starts_with("250 "));
}

#[test]
fn opts_mlst_selects_the_facts_of_mlst_mlsd_and_feat() {
    let mut st = state(PasvWithoutPret::Listings);
    let mut s = session(&mut st);
    let feat = text(s.handle(cmd("FEAT"), &mut st));
    assert!(
        feat.contains(" MLST type*;size*;modify*;perm*;unix.owner*;unix.group*;\r\n"),
        "{feat}"
    );
    // RFC 3659 §7.9: the reply lists the facts now selected; unknown
    // facts are ignored; names are case-insensitive.
    assert_eq!(
        text(s.handle(cmd("OPTS MLST Size;type;bogus;"), &mut st)),
        "200 MLST OPTS type;size;"
    );
    let feat = text(s.handle(cmd("FEAT"), &mut st));
    assert!(
        feat.contains(" MLST type*;size*;modify;perm;unix.owner;unix.group;\r\n"),
        "{feat}"
    );
    let got = text(s.handle(cmd("MLST /a"), &mut st));
    assert!(got.contains("\r\n type=file;size=3; /a\r\n"), "{got}");
    passive(&mut s, &mut st, "PASV");
    match s.handle(cmd("MLSD /"), &mut st) {
        Action::Listing(job) => {
            let out = String::from_utf8(job.bytes).unwrap();
            assert!(out.contains("type=file;size=3; a\r\n"), "{out}");
            assert!(!out.contains("modify=") && !out.contains("perm="), "{out}");
        }
        other => panic!("{other:?}"),
    }
    // No fact at all: the bare reply, and entries are just names.
    assert_eq!(text(s.handle(cmd("OPTS MLST"), &mut st)), "200 MLST OPTS");
    let got = text(s.handle(cmd("MLST /a"), &mut st));
    assert!(got.contains("\r\n  /a\r\n"), "{got}");
    assert_eq!(
        text(s.handle(cmd("OPTS MLST bogus;"), &mut st)),
        "200 MLST OPTS"
    );
    // All again.
    assert_eq!(
        text(s.handle(
            cmd("OPTS MLST type;size;modify;perm;unix.owner;unix.group;"),
            &mut st
        )),
        "200 MLST OPTS type;size;modify;perm;unix.owner;unix.group;"
    );
    assert!(text(s.handle(cmd("MLST /a"), &mut st)).contains("unix.group="));
}

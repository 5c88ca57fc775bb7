//! Hostile clients and rogue slaves against the real binary (RFC 2577):
//! password guessing, session floods, slow logins, command floods, paths
//! that try to leave a user's home, admin commands, secrets in logs, and a
//! slave that knows the link key but lies.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{connect_from, curl, random_bytes, RawFtp, Site};

const USERS: &str = "[[users]]\nname = \"alice\"\npassword = \"alice-pw\"\n\
    [[users]]\nname = \"root\"\npassword = \"root-pw\"\nadmin = true\n\
    [[users]]\nname = \"homey\"\npassword = \"homey-pw\"\nhome = \"/home/homey\"\n";

fn login(c: &mut RawFtp, user: &str, pass: &str) -> String {
    let r = c.cmd(&format!("USER {user}"));
    assert!(r.starts_with("331"), "{r}");
    c.cmd(&format!("PASS {pass}"))
}

fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap_or(0);
    l.trim_end().to_string()
}

#[test]
fn guessing_passwords_gets_equal_answers_then_a_ban() {
    let site = Site::start(&format!(
        "[guard]\nfailure_delay_ms = 50\nmax_delay_ms = 200\nmax_failures = 3\nban_ms = 600000\n{USERS}"
    ));
    let mut c = site.raw();
    // Unknown user and known user with a wrong password: same words.
    let unknown = login(&mut c, "nobody", "x");
    let wrong = login(&mut c, "alice", "x");
    assert_eq!(unknown, "530 Login incorrect");
    assert_eq!(wrong, unknown);
    assert_eq!(login(&mut c, "alice", "y"), "530 Login incorrect");
    // Banned: even the right password gets 421 and the connection closes.
    let r = login(&mut c, "alice", "alice-pw");
    assert!(r.starts_with("421 Too many failed logins"), "{r}");
    assert_eq!(c.read_reply(), "", "the connection must be closed");
    // A new connection from the same address is still banned...
    let mut again = site.raw();
    assert!(login(&mut again, "root", "root-pw").starts_with("421"));
    // ...another address with another user is not.
    let s = connect_from("127.0.0.2", site.control);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s);
    assert!(read_line(&mut r).starts_with("220"));
    r.get_mut()
        .write_all(b"USER root\r\nPASS root-pw\r\n")
        .unwrap();
    assert!(read_line(&mut r).starts_with("331"));
    assert_eq!(read_line(&mut r), "230 User root logged in");
    // The name alice is banned from every address (guessing spread over IPs).
    r.get_mut().write_all(b"QUIT\r\n").unwrap();
    let log = site.log();
    assert!(log.contains("banned after repeated failures"), "{log}");
    for secret in ["alice-pw", "root-pw"] {
        assert!(!log.contains(secret), "a password is in the log");
    }
}

#[test]
fn session_flood_slow_login_and_command_flood_are_cut() {
    let site = Site::start(&format!(
        "[guard]\nmax_sessions_per_ip = 2\nlogin_timeout_ms = 300\ncommand_burst = 10\n\
         commands_per_second = 1\n{USERS}"
    ));
    let mut a = site.raw();
    let _b = site.raw();
    // Third session from the same address: 421 at once.
    let mut third = BufReader::new(TcpStream::connect(site.control).unwrap());
    let r = read_line(&mut third);
    assert!(
        r.starts_with("421 Too many sessions from your address"),
        "{r}"
    );
    // A flood of refused sessions is logged at most once a second.
    for _ in 0..50 {
        let mut extra = BufReader::new(TcpStream::connect(site.control).unwrap());
        assert!(read_line(&mut extra).starts_with("421 Too many sessions"));
    }
    let refusals = site.log().matches("session refused").count();
    assert!(
        (1..=3).contains(&refusals),
        "{refusals} lines: {}",
        site.log()
    );
    // A connection that never logs in is closed with 421 after the login
    // timeout (`a` sits idle without logging in).
    assert_eq!(
        a.read_reply(),
        "421 Login timeout, closing control connection"
    );
    // A flood of pipelined commands: the burst is answered, then 421.
    let mut c = BufReader::new(TcpStream::connect(site.control).unwrap());
    c.get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert!(read_line(&mut c).starts_with("220"));
    c.get_mut().write_all(&b"NOOP\r\n".repeat(40)).unwrap();
    let mut replies = Vec::new();
    loop {
        let l = read_line(&mut c);
        if l.is_empty() {
            break;
        }
        replies.push(l);
    }
    assert!(replies.len() <= 12, "{replies:?}");
    assert!(
        replies.last().unwrap().starts_with("421 Too many commands"),
        "{replies:?}"
    );
    // A client that waits for each reply is slowed down past the burst
    // (1 command/s here), never closed.
    let mut d = RawFtp::connect(site.control);
    assert!(login(&mut d, "alice", "alice-pw").starts_with("230"));
    let started = std::time::Instant::now();
    for _ in 0..11 {
        assert_eq!(d.cmd("NOOP"), "200 NOOP ok");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "replies past the burst are delayed: {:?}",
        started.elapsed()
    );
}

#[test]
fn paths_never_leave_a_home_and_admin_commands_are_for_admins() {
    let mut site = Site::start(USERS);
    site.add_slave("s1", "127.0.0.61", |root| {
        std::fs::write(root.join("top.bin"), b"not for homey").unwrap();
    });
    let mut c = site.raw();
    assert_eq!(
        login(&mut c, "homey", "homey-pw"),
        "230 User homey logged in"
    );
    assert_eq!(c.cmd("PWD"), "257 \"/home/homey\" is the current directory");
    for attack in [
        "CWD ..",
        "CWD /",
        "CWD ../..",
        "CDUP",
        "CWD /home/homey/../../",
        "RETR ../../top.bin",
        "PRET RETR /top.bin",
        "SIZE /top.bin",
        "MKD ../evil",
        "DELE /top.bin",
        "RNFR /top.bin",
        "MLST /",
        "STAT /",
    ] {
        let r = c.cmd(attack);
        assert!(
            r.starts_with("550") && r.contains("outside your home"),
            "{attack}: {r}"
        );
    }
    // Backslashes are refused as names; "..." is just a name at home.
    let r = c.cmd("MKD ..\\..\\x");
    assert!(r.starts_with("553"), "{r}");
    let r = c.cmd("MKD ...");
    assert_eq!(r, "257 \"/home/homey/...\" created");
    // A renamed file cannot be moved out either.
    assert!(c.cmd("RNFR ...").starts_with("350"));
    assert!(c.cmd("RNTO /escaped").starts_with("550"));
    // Non-admins cannot manage users.
    let r = c.cmd("SITE ADDUSER mallory pw");
    assert_eq!(r, "550 SITE ADDUSER: permission denied (admins only)");

    // An admin adds a user; curl logs in with it and uploads to the slave.
    let mut admin = site.raw();
    assert!(login(&mut admin, "root", "root-pw").starts_with("230"));
    assert_eq!(
        admin.cmd("SITE ADDUSER bob b0b-s3cret"),
        "200 User bob added"
    );
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(100_000, 5);
    let src = work.path().join("up.bin");
    std::fs::write(&src, &data).unwrap();
    let url = format!("ftp://{}/up.bin", site.control);
    let up = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        "bob:b0b-s3cret",
        "-T",
        src.to_str().unwrap(),
        &url,
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let down = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        "bob:b0b-s3cret",
        &url,
    ]);
    assert!(down.stdout == data);
    assert_eq!(admin.cmd("SITE DELUSER bob"), "200 User bob deleted");
    let denied = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        "bob:b0b-s3cret",
        &url,
    ]);
    assert!(!denied.status.success());
    // The password is in neither the log nor the store file.
    let log = site.log();
    assert!(!log.contains("b0b-s3cret"), "password in the log");
    assert!(
        log.contains("SITE ADDUSER bob ****"),
        "redacted command not logged"
    );
    let store = std::fs::read(site.dir.path().join("master.redb")).unwrap();
    assert!(!store.windows(10).any(|w| w == b"b0b-s3cret"));
}

/// A slave that knows the link key but lies: it claims another slave's
/// file with another size, names listeners on a foreign host, then sends
/// garbage. The master keeps serving the real file from the real slave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rogue_slave_cannot_crash_the_master_or_take_over_files() {
    use dftpd::link::{self, auth, MasterMsg, RemoteFile, SlaveMsg, PROTOCOL_VERSION};
    use dftpd::proto::VPath;
    use tokio::io::AsyncWriteExt;

    let data = random_bytes(50_000, 9);
    let mut site = Site::start(USERS);
    let d = data.clone();
    site.add_slave("s1", "127.0.0.62", move |root| {
        std::fs::write(root.join("f.bin"), &d).unwrap();
    });

    let mut s = tokio::net::TcpStream::connect(site.link).await.unwrap();
    let nonce = [7u8; 32];
    link::write_frame(
        &mut s,
        &SlaveMsg::Hello {
            version: PROTOCOL_VERSION,
            name: "rogue".into(),
            nonce,
            data_ip: "127.0.0.66".parse().unwrap(),
            data_tls: false,
            zone: None,
        },
    )
    .await
    .unwrap();
    let MasterMsg::Challenge { nonce: mn } = link::read_frame(&mut s).await.unwrap() else {
        panic!("no challenge")
    };
    let mac = auth::slave_proof(b"sec-key", &nonce, &mn, "rogue");
    link::write_frame(&mut s, &SlaveMsg::Auth { mac })
        .await
        .unwrap();
    let welcome: MasterMsg = link::read_frame(&mut s).await.unwrap();
    assert!(matches!(welcome, MasterMsg::Welcome { .. }), "{welcome:?}");
    let lie = |p: &str, size| RemoteFile {
        path: VPath::parse_absolute(p).unwrap(),
        size,
        mtime: 0,
        version: None,
    };
    link::write_frame(
        &mut s,
        &SlaveMsg::Remerge {
            files: vec![lie("/f.bin", 3), lie("/mine.bin", 4)],
            last: true,
        },
    )
    .await
    .unwrap();
    link::write_frame(
        &mut s,
        &SlaveMsg::Listeners {
            ready: vec![(1, "10.1.2.3:22".parse().unwrap()); 1000],
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Garbage: a frame that claims to be huge, then noise.
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    s.write_all(&[0xff; 64]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let control = site.control;
    let got = tokio::task::spawn_blocking(move || {
        let mut c = RawFtp::connect(control);
        assert!(login(&mut c, "root", "root-pw").starts_with("230"));
        let size = c.cmd("SIZE /f.bin");
        let slaves = c.cmd("SITE SLAVES");
        let down = curl(&[
            "--ftp-pret",
            "--no-ftp-skip-pasv-ip",
            "-u",
            "alice:alice-pw",
            &format!("ftp://{control}/f.bin"),
        ]);
        (size, slaves, down.stdout)
    })
    .await
    .unwrap();
    assert_eq!(got.0, format!("213 {}", data.len()));
    assert!(got.1.contains("rogue offline"), "{}", got.1);
    assert!(got.2 == data, "the real file must come from the real slave");
    let log = site.log();
    assert!(
        log.contains("stale copy (another content than the recorded version)"),
        "{log}"
    );
    assert!(
        log.contains("listeners on a foreign address ignored"),
        "{log}"
    );
}

/// A symbolic link planted on a slave's disk where the master has a
/// directory: the slave refuses to rename a copy through it (links are
/// never followed). The client's RNTO stands (250), the copy is kept at its
/// old name on that slave (never removed as stale, even across a
/// reconnect), and it moves once the link is gone.
#[test]
fn a_rename_refused_by_a_planted_symlink_keeps_the_copy_until_it_can_move() {
    let data = random_bytes(20_000, 4);
    let mut site = Site::start(USERS);
    let d = data.clone();
    let seed = move |root: &std::path::Path| {
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f.bin"), &d).unwrap();
    };
    site.add_slave("s1", "127.0.0.63", seed);
    let root = site.root("s1");
    let outside = tempfile::tempdir().unwrap();
    let mut c = site.raw();
    assert!(login(&mut c, "root", "root-pw").starts_with("230"));
    assert!(common::wait_until(|| c
        .cmd("SIZE /d/f.bin")
        .starts_with("213")));
    assert!(c.cmd("MKD /x").starts_with("257"));
    let _ = std::fs::remove_dir(root.join("x"));
    std::os::unix::fs::symlink(outside.path(), root.join("x")).unwrap();
    assert!(c.cmd("RNFR /d/f.bin").starts_with("350"));
    assert!(c.cmd("RNTO /x/f.bin").starts_with("250"));
    assert!(
        common::wait_until(|| site.log().contains("could not rename its copy")),
        "{}",
        site.log()
    );
    // Until then a download fails (the copy is not where the record
    // says) but the file stays recorded.
    let early = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        "alice:alice-pw",
        &format!("ftp://{}/x/f.bin", site.control),
    ]);
    assert!(!early.status.success());
    assert!(c.cmd("SIZE /x/f.bin").starts_with("213"));
    assert!(c.cmd("SITE SLAVES").contains("left-behind=1"));
    let online = |c: &mut RawFtp| c.cmd("SITE SLAVES").contains("s1 online");
    // The slave reconnects: its copy at the old name is kept.
    site.kill_slave("s1");
    site.add_slave("s1", "127.0.0.63", |_| {});
    assert!(common::wait_until(|| online(&mut c)));
    assert!(
        common::wait_until(|| site.log().contains("copy left at its old name")),
        "{}",
        site.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(std::fs::read(root.join("d/f.bin")).unwrap(), data);
    assert!(
        !outside.path().join("f.bin").exists(),
        "a link was followed"
    );
    assert!(c.cmd("SIZE /x/f.bin").starts_with("213"));
    // The operator removes the link: the next reconnect moves the copy.
    std::fs::remove_file(root.join("x")).unwrap();
    site.kill_slave("s1");
    site.add_slave("s1", "127.0.0.63", |_| {});
    assert!(common::wait_until(|| root.join("x/f.bin").exists()));
    assert!(common::wait_until(|| online(&mut c)));
    let down = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        "alice:alice-pw",
        &format!("ftp://{}/x/f.bin", site.control),
    ]);
    assert!(down.stdout == data, "{}", common::text(&down.stderr));
    assert!(!root.join("d/f.bin").exists());
    assert!(!c.cmd("SITE SLAVES").contains("left-behind"));
}

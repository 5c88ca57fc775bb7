//! Real client libraries against the real binary: Python's ftplib (with
//! `sendcmd('PRET ...')` and the 227 address trusted) and suppaftp (tokio)
//! with `custom_command("PRET ...")`.

mod common;

use common::*;
use std::process::Command;

const FTPLIB_SCRIPT: &str = r#"
import ftplib, hashlib, io, sys
host, port, user, pw, payload_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
payload = open(payload_path, 'rb').read()
ftp = ftplib.FTP()
ftp.trust_server_pasv_ipv4_address = True   # the 227 names the slave
ftp.connect(host, port, timeout=30)
ftp.login(user, pw)
ftp.mkd('py')
ftp.cwd('py')
print(ftp.sendcmd('PRET STOR up.bin'))
ftp.storbinary('STOR up.bin', io.BytesIO(payload))
print(ftp.sendcmd('PRET RETR up.bin'))
conn = ftp.transfercmd('RETR up.bin')
print('data-peer', conn.getpeername()[0])
got = b''
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += chunk
conn.close()
print(ftp.voidresp())
assert got == payload, 'downloaded bytes differ'
print(ftp.sendcmd('PRET LIST'))
names = ftp.nlst()
assert names == ['up.bin'], names
print('size', ftp.size('up.bin'))
ftp.quit()
print('ok')
"#;

#[test]
fn python_ftplib_with_pret() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(700_000, 11);
    let path = work.path().join("payload.bin");
    std::fs::write(&path, &payload).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            FTPLIB_SCRIPT,
            "127.0.0.1",
            &c.addr.port().to_string(),
            USER,
            PASS,
        ])
        .arg(&path)
        .output()
        .expect("python3 must be installed");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "ftplib failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("200 OK, planning for upcoming upload"),
        "{stdout}"
    );
    assert!(
        stdout.contains("200 OK, planning for upcoming download"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "size 700000"), "{stdout}");
    let holder = c.holders("py/up.bin");
    assert_eq!(holder.len(), 1);
    // The data connection of the download went to the slave itself.
    let peer = format!("data-peer 127.0.0.{}", 10 + holder[0]);
    assert!(stdout.lines().any(|l| l == peer), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppaftp_tokio_with_custom_pret() {
    use suppaftp::tokio::AsyncFtpStream;
    let c = ClusterProc::start(&["--pasv-without-pret", "listings"]);
    let mut ftp = AsyncFtpStream::connect(c.addr).await.expect("connect");
    ftp.login(USER, PASS).await.expect("login");
    let payload = random_bytes(1_200_000, 12);
    assert_eq!(
        suppaftp_round_trip(&mut ftp, "s.bin", &payload).await,
        "200 OK, planning for upcoming upload"
    );

    // A RETR without PRET is refused with the PRET hint (suppaftp uses PASV).
    let err = ftp.retr_as_stream("s.bin").await.err().expect("must fail");
    assert!(err.to_string().contains("PRET"), "{err}");
    ftp.quit().await.expect("quit");
    assert_eq!(c.holders("s.bin").len(), 1);
}

fn make_tree(root: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let files = vec![
        ("top.txt".to_string(), random_bytes(1234, 21)),
        ("a/one.bin".to_string(), random_bytes(300_000, 22)),
        ("a/b/two.bin".to_string(), random_bytes(77_777, 23)),
        ("a/b/c/three.bin".to_string(), random_bytes(5, 24)),
        ("d/four.bin".to_string(), random_bytes(65_536, 25)),
    ];
    for (name, bytes) in &files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
    }
    files
}

#[test]
fn lftp_mirror_up_and_back_keeps_tree_and_times_on_slaves() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("tree");
    let files = make_tree(&up);
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(up.join("a/one.bin"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let back = work.path().join("back");
    // lftp 4.9 treats 127.x.y.z other than 127.0.0.1 as "reserved" and
    // replaces such a 227 address with the master's, whatever its settings
    // (sockaddr_u::is_reserved): on the loopback cluster it must use active
    // mode, where the slaves connect out to it. Passive mode with PRET is
    // proven on a real network (addresses of another class).
    let script = format!(
        "set ftp:passive-mode off; mirror -R {} /site; mirror /site {}; quit",
        up.display(),
        back.display()
    );
    // Defaults otherwise: lftp tries AUTH TLS first and goes on without it.
    let log = lftp(c.addr, &script);
    for (name, bytes) in &files {
        let got = std::fs::read(back.join(name)).unwrap_or_default();
        assert!(&got == bytes, "{name} differs after the round trip");
        assert_eq!(
            c.holders(&format!("site/{name}")).len(),
            1,
            "{name} stored on one slave"
        );
    }
    let mtime = std::fs::metadata(back.join("a/one.bin"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, old, "modification time kept (lftp sends MFMT)");
    // Every file transfer was served by a slave (the 150 names it), none
    // through the master; listings came from the master over MLSD.
    let served: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("<--- 150 Opening BINARY mode"))
        .collect();
    assert_eq!(served.len(), 2 * files.len(), "{log}");
    assert!(
        served.iter().all(|l| l.contains(" on slave slave-")),
        "{served:?}"
    );
    assert!(log.contains("---> MLSD"), "lftp lists with MLSD");
    assert!(
        !log.contains("Switching passive mode off"),
        "no fallback needed"
    );
}

#[test]
fn rclone_copy_up_down_and_check_agree() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("tree");
    let files = make_tree(&up);
    let remote = rclone_remote(c.addr, "rtree");
    rclone(&["copy", up.to_str().unwrap(), &remote]);
    let down = work.path().join("down");
    rclone(&["copy", &remote, down.to_str().unwrap()]);
    let check = rclone(&["check", up.to_str().unwrap(), &remote]);
    assert!(check.contains("0 differences found"), "{check}");
    for (name, bytes) in &files {
        assert!(&std::fs::read(down.join(name)).unwrap() == bytes, "{name}");
        assert_eq!(
            c.holders(&format!("rtree/{name}")).len(),
            1,
            "{name} on a slave"
        );
    }
    // rclone: PRET from FEAT, EPSV refused after PRET (502), then PASV.
    let log = c.log();
    assert!(log.contains("<- PRET MLSD"), "rclone sends PRET MLSD");
    assert!(log.contains("<- PRET STOR") && log.contains("<- PRET RETR"));
    assert!(
        log.contains("-> 502 Use PASV: EPSV cannot name slave"),
        "EPSV refused after PRET"
    );
}

/// ftplib in its default settings (ignores the 227 address; no PRET unless
/// sent by hand). Prints one line per step; exits non-zero on a mismatch.
const FTPLIB_DEFAULTS: &str = r#"
import ftplib, io, sys
host, port, user, pw, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
payload = bytes(range(256)) * 3000
name = 'legacy-%s.bin' % mode
ftp = ftplib.FTP()
ftp.connect(host, port, timeout=30)
ftp.login(user, pw)
if mode == 'active':
    ftp.set_pasv(False)
if mode == 'pret':
    ftp.sendcmd('PRET STOR ' + name)
try:
    ftp.storbinary('STOR ' + name, io.BytesIO(payload))
except ftplib.error_temp as e:
    print('stor-error', e)
    sys.exit(0)
got = io.BytesIO()
if mode == 'pret':
    ftp.sendcmd('PRET RETR ' + name)
ftp.retrbinary('RETR ' + name, got.write)
assert got.getvalue() == payload, 'bytes differ'
print('ok', ftp.sendcmd('SITE SLAVES').count('relayed='))
ftp.quit()
"#;

fn ftplib_defaults(c: &ClusterProc, mode: &str) -> String {
    let out = Command::new("python3")
        .args([
            "-c",
            FTPLIB_DEFAULTS,
            "127.0.0.1",
            &c.addr.port().to_string(),
            USER,
            PASS,
            mode,
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    stdout
}

#[test]
fn clients_that_ignore_the_227_address_get_a_425_naming_the_fix() {
    // Without relaying (the cluster relays them by default).
    let c = ClusterProc::start_with(&["--pasv-without-pret", "listings"], |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/f.bin"), b"data").unwrap();
    });
    // curl's default since 7.74: it connects to the master's IP.
    let userpass = format!("{USER}:{PASS}");
    let down = curl(&[
        "--ftp-pret",
        "-v",
        "-u",
        &userpass,
        "-o",
        "/dev/null",
        &c.url("f.bin"),
    ]);
    assert!(!down.status.success());
    let rs = replies(&text(&down.stderr));
    let r425 = rs
        .iter()
        .find(|r| r.starts_with("425"))
        .unwrap_or_else(|| panic!("{rs:?}"));
    assert!(
        r425.starts_with("425 Connect to the 227 address 127.0.0.11:")
            && r425.contains("--no-ftp-skip-pasv-ip")
            && r425.len() < 120,
        "{r425}"
    );
    // ftplib's default, with PRET sent by hand.
    let out = ftplib_defaults(&c, "pret");
    assert!(
        out.contains("stor-error 425 Connect to the 227 address"),
        "{out}"
    );
    assert!(c.holders("legacy-pret.bin").is_empty(), "nothing stored");
}

#[test]
fn relay_mode_serves_legacy_clients_and_clients_that_ignore_the_227_address() {
    let c = ClusterProc::start(&["--pasv-without-pret", "relay"]);
    // ftplib defaults, no PRET: PASV names the master, bytes are relayed.
    let out = ftplib_defaults(&c, "plain");
    assert!(out.starts_with("ok"), "{out}");
    // ftplib defaults with PRET: 227 names a slave, ftplib goes to the
    // master anyway; the master catches it and relays.
    let out = ftplib_defaults(&c, "pret");
    assert!(out.starts_with("ok"), "{out}");
    // curl with --ftp-pret but its default of ignoring the 227 address.
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(900_000, 31);
    let src = work.path().join("c.bin");
    std::fs::write(&src, &data).unwrap();
    let userpass = format!("{USER}:{PASS}");
    let up = curl(&[
        "--ftp-pret",
        "-u",
        &userpass,
        "-T",
        src.to_str().unwrap(),
        &c.url("c.bin"),
    ]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    let back = work.path().join("back.bin");
    let down = curl(&[
        "--ftp-pret",
        "-u",
        &userpass,
        "-o",
        back.to_str().unwrap(),
        &c.url("c.bin"),
    ]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(std::fs::read(&back).unwrap() == data);
    assert!(c
        .log()
        .contains("client ignored the 227 address; relaying through the master"));
}

#[test]
fn active_mode_needs_neither_pret_nor_relay() {
    let c = ClusterProc::start(&["--pasv-without-pret", "listings"]);
    let out = ftplib_defaults(&c, "active");
    assert!(out.starts_with("ok"), "{out}");
    assert_eq!(c.holders("legacy-active.bin").len(), 1);
}

/// Over IPv6 a PRET client's EPSV cannot name an IPv4 slave, and there is
/// no PASV to fall back to (curl gives up: "Failed EPSV attempt"): the
/// master relays the transfer, as for a client without PRET.
#[test]
fn ipv6_pret_clients_are_relayed_through_the_master() {
    let c = ClusterProc::start(&["--listen", "[::1]:0"]);
    assert!(c.addr.is_ipv6(), "{}", c.addr);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up.bin");
    std::fs::write(&up, random_bytes(300_000, 6)).unwrap();
    let login = format!("{USER}:{PASS}");
    let url = c.url("v6.bin");
    let o = curl(&[
        "-g",
        "--ftp-pret",
        "-u",
        &login,
        "-T",
        up.to_str().unwrap(),
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let down = dir.path().join("down.bin");
    let o = curl(&[
        "-g",
        "--ftp-pret",
        "-u",
        &login,
        "-o",
        down.to_str().unwrap(),
        &url,
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&down).unwrap(), std::fs::read(&up).unwrap());
}

/// ncftp straight to the slaves: active mode (`-E`) with `-o
/// allowProxyForPORT=1`. Without that option ncftp refuses the data
/// connection, which comes from the slave's address, not the server's.
#[test]
fn ncftp_active_mode_reaches_the_slaves_with_allow_proxy_for_port() {
    // Without relaying: only a transfer straight to a slave can work.
    let c = ClusterProc::start(&["--pasv-without-pret", "listings"]);
    let work = tempfile::tempdir().unwrap();
    let bytes = random_bytes(260_000, 51);
    let src = work.path().join("nc.bin");
    std::fs::write(&src, &bytes).unwrap();
    let port = c.addr.port().to_string();
    let login = ["-u", USER, "-p", PASS, "-P", port.as_str(), "-t", "30"];
    let ncftp = |tool: &str, active: &[&str], args: &[&std::ffi::OsStr]| {
        let out = Command::new(tool)
            .args(login)
            .args(active)
            .arg("127.0.0.1")
            .args(args)
            .output()
            .expect("ncftp must be installed (see .ci/run)");
        (out.status.success(), text(&out.stdout) + &text(&out.stderr))
    };
    let (ok, log) = ncftp("ncftpput", &["-E"], &["/".as_ref(), src.as_os_str()]);
    assert!(
        !ok && log.contains("did not originate"),
        "-E alone: ncftp refuses the slave's connection:\n{log}"
    );
    let active = ["-E", "-o", "allowProxyForPORT=1"];
    let (ok, log) = ncftp("ncftpput", &active, &["/".as_ref(), src.as_os_str()]);
    assert!(ok, "{log}");
    assert_eq!(c.holders("nc.bin").len(), 1);
    let down = work.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    let (ok, log) = ncftp("ncftpget", &active, &[down.as_os_str(), "/nc.bin".as_ref()]);
    assert!(ok, "{log}");
    assert!(std::fs::read(down.join("nc.bin")).unwrap() == bytes);
    let log = c.log();
    assert!(
        log.contains("<- PORT ") || log.contains("<- EPRT "),
        "{log}"
    );
}

/// The slaves holding `rel`, once at most one does: waits for the
/// operation logs (a replaced file's other copies are dropped after the
/// reply).
fn single_copy(c: &ClusterProc, rel: &str) -> Vec<usize> {
    for _ in 0..100 {
        let h = c.holders(rel);
        if h.len() <= 1 {
            return h;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    c.holders(rel)
}

#[test]
fn lftp_temp_file_upload_replaces_a_changed_file_through_rnto() {
    // lftp's xfer:use-temp-file uploads to `.in.NAME.` and renames it over
    // NAME (rclone >= 1.63 does the same with `.partial`).
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tv.txt");
    let put = format!(
        "set xfer:use-temp-file yes; put {} -o /tv.txt; quit",
        src.display()
    );
    std::fs::write(&src, b"v1").unwrap();
    lftp(c.addr, &put);
    let new = random_bytes(200_000, 61);
    std::fs::write(&src, &new).unwrap();
    let log = lftp(c.addr, &put);
    assert!(log.contains("---> RNTO /tv.txt"), "{log}");
    let back = work.path().join("back.txt");
    lftp(c.addr, &format!("get /tv.txt -o {}; quit", back.display()));
    assert!(
        std::fs::read(&back).unwrap() == new,
        "the new content is served"
    );
    // One copy, the new one; no temporary name left anywhere.
    let holders = single_copy(&c, "tv.txt");
    assert_eq!(holders.len(), 1);
    assert!(std::fs::read(c.slave_root(holders[0]).join("tv.txt")).unwrap() == new);
    for n in 1..=3 {
        let names: Vec<String> = std::fs::read_dir(c.slave_root(n))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        assert!(!names.iter().any(|n| n.contains(".in.")), "{names:?}");
    }
}

#[test]
fn wildcards_in_nlst_and_list_fetch_with_ncftpget_and_ftplib() {
    let c = ClusterProc::start(&[]);
    let port = c.addr.port().to_string();
    let script = r#"
import ftplib, io, sys
f = ftplib.FTP(); f.connect('127.0.0.1', int(sys.argv[1]), timeout=30); f.login(sys.argv[2], sys.argv[3])
f.mkd('/g')
for n in ['a.txt', 'b.txt', 'c.bin']:
    f.storbinary('STOR /g/' + n, io.BytesIO(n.encode() * 1000))
f.cwd('/g')
print('nlst', f.nlst('*.txt'))
lines = []
f.retrlines('LIST *.txt', lines.append)
print('list', len(lines))
print('none', f.nlst('*.zzz'))
f.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script, &port, USER, PASS])
        .output()
        .expect("python3 must be installed");
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("nlst ['a.txt', 'b.txt']"), "{stdout}");
    assert!(stdout.contains("list 2"), "{stdout}");
    assert!(stdout.contains("none []"), "{stdout}");
    let down = tempfile::tempdir().unwrap();
    let out = Command::new("ncftpget")
        .args(["-u", USER, "-p", PASS, "-P", port.as_str(), "-t", "30"])
        .arg("127.0.0.1")
        .arg(down.path())
        .arg("/g/*.txt")
        .output()
        .expect("ncftp must be installed (see .ci/run)");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut got: Vec<String> = std::fs::read_dir(down.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    assert_eq!(got, ["a.txt", "b.txt"]);
    assert!(std::fs::read(down.path().join("a.txt")).unwrap() == b"a.txt".repeat(1000));
}

//! The first run, as a new user tries it: a default `dftpd cluster` (no
//! flags but the user) and each common client with its default settings
//! uploads a file and downloads it back byte for byte (wget only
//! downloads). What cannot go straight to a slave (no PRET, or the 227
//! address ignored) is relayed by the master; the banner says so.
//!
//! Clients missing on this machine are skipped with a message, except
//! under CI (`CI=true`), where `.ci/run` installs them all.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;

/// Whether the client can run here; under CI a missing client fails.
fn have(what: &str, probe: &mut Command) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{what} must be installed under CI (see .ci/run)"
        );
        eprintln!("skipped: {what} is not installed");
    }
    ok
}

fn ok(what: &str, out: &Output) -> String {
    let log = text(&out.stdout) + &text(&out.stderr);
    assert!(out.status.success(), "{what} failed:\n{log}");
    log
}

/// A payload in a work directory.
fn payload(work: &Path, name: &str, size: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let bytes = random_bytes(size, seed);
    let path = work.join(name);
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

fn same(got: &Path, want: &[u8], what: &str) {
    let got = std::fs::read(got).unwrap_or_else(|e| panic!("{what}: nothing downloaded: {e}"));
    assert!(got == want, "{what}: downloaded bytes differ");
}

/// A Python client script (argv: host, port, user, password, source,
/// destination) uploads a payload to a default cluster and downloads it
/// back; the bytes must agree.
fn python_round_trip(script: &str, name: &str, size: usize, seed: u64, what: &str) {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), name, size, seed);
    let back = work.path().join("back.bin");
    let port = c.addr.port().to_string();
    python(
        script,
        &[
            "127.0.0.1",
            &port,
            USER,
            PASS,
            src.to_str().unwrap(),
            back.to_str().unwrap(),
        ],
    );
    same(&back, &bytes, what);
}

/// The sum of `relayed=` over SITE SLAVES.
fn relayed(c: &ClusterProc) -> u64 {
    let mut raw = c.raw();
    let slaves = raw.cmd("SITE SLAVES");
    slaves
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("relayed="))
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_banner_says_what_goes_direct_what_is_relayed_and_how_to_turn_it_off() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(bin())
        .args(["cluster", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let banner = read_banner(&mut child, "cluster ready: ftp://", &log);
    let _kill = KillOnDrop(child);
    let text = banner.lines.join("\n");
    let direct = banner
        .lines
        .iter()
        .find(|l| l.starts_with("direct: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        direct.contains("PRET") && direct.contains("straight to the slaves"),
        "{direct}"
    );
    let relayed = banner
        .lines
        .iter()
        .find(|l| l.starts_with("relayed: "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        relayed.contains("without PRET")
            && relayed.contains("227")
            && relayed.contains("--pasv-without-pret listings"),
        "{relayed}"
    );
    assert!(text.contains("login: user dftpd password "), "{text}");
}

#[test]
fn curl_without_flags_uploads_and_downloads() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "plain.bin", 300_000, 1);
    let userpass = format!("{USER}:{PASS}");
    ok(
        "curl -T",
        &curl(&["-u", &userpass, "-T", src.to_str().unwrap(), &c.url("/")]),
    );
    let back = work.path().join("back.bin");
    ok(
        "curl",
        &curl(&[
            "-u",
            &userpass,
            "-o",
            back.to_str().unwrap(),
            &c.url("plain.bin"),
        ]),
    );
    same(&back, &bytes, "curl");
    assert_eq!(c.holders("plain.bin").len(), 1, "stored on a slave");
}

#[test]
fn curl_with_ftp_pret_alone_is_relayed_and_counted() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "pret.bin", 400_000, 2);
    let userpass = format!("{USER}:{PASS}");
    let before = relayed(&c);
    ok(
        "curl --ftp-pret -T",
        &curl(&[
            "--ftp-pret",
            "-u",
            &userpass,
            "-T",
            src.to_str().unwrap(),
            &c.url("/"),
        ]),
    );
    let back = work.path().join("back.bin");
    ok(
        "curl --ftp-pret",
        &curl(&[
            "--ftp-pret",
            "-u",
            &userpass,
            "-o",
            back.to_str().unwrap(),
            &c.url("pret.bin"),
        ]),
    );
    same(&back, &bytes, "curl --ftp-pret");
    // curl ignored the 227 address: the master caught it at its own
    // address and relayed both ways, and SITE SLAVES counts that.
    assert_eq!(
        relayed(&c) - before,
        800_000,
        "relayed= counts caught clients"
    );
    assert!(c
        .log()
        .contains("client ignored the 227 address; relaying through the master"));
}

#[test]
fn curl_resumes_an_upload_with_c_minus() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "resume.bin", 200_000, 3);
    let half = work.path().join("half.bin");
    std::fs::write(&half, &bytes[..80_000]).unwrap();
    let userpass = format!("{USER}:{PASS}");
    let url = c.url("resume.bin");
    let flags = ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", &userpass];
    ok(
        "curl first part",
        &curl(&[&flags[..], &["-T", half.to_str().unwrap(), &url]].concat()),
    );
    // curl -C - -T: SIZE, PRET STOR, PASV, APPE of the rest.
    ok(
        "curl -C - -T",
        &curl(&[&flags[..], &["-C", "-", "-T", src.to_str().unwrap(), &url]].concat()),
    );
    let back = work.path().join("back.bin");
    ok(
        "curl download",
        &curl(&[&flags[..], &["-o", back.to_str().unwrap(), &url]].concat()),
    );
    same(&back, &bytes, "curl -C - -T");
    assert!(c.log().contains("<- APPE "), "resumed with APPE");
}

#[test]
fn lftp_with_default_settings_puts_and_gets() {
    if !have("lftp", Command::new("lftp").arg("--version")) {
        return;
    }
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "l.bin", 500_000, 4);
    let back = work.path().join("back.bin");
    // No `set ftp:passive-mode off`: lftp replaces 127.0.0.1x in the 227
    // reply with 127.0.0.1, and the master relays what it catches there.
    lftp(
        c.addr,
        &format!(
            "set net:max-retries 1; set net:timeout 20; put {} -o l.bin; get l.bin -o {}; bye",
            src.display(),
            back.display()
        ),
    );
    same(&back, &bytes, "lftp");
}

#[test]
fn wget_downloads() {
    if !have("wget", Command::new("wget").arg("--version")) {
        return;
    }
    let c = ClusterProc::start_with(&[], |dir| {
        std::fs::create_dir_all(dir.join("slave-2/pub")).unwrap();
        std::fs::write(dir.join("slave-2/pub/w.bin"), random_bytes(250_000, 5)).unwrap();
    });
    let work = tempfile::tempdir().unwrap();
    let back = work.path().join("back.bin");
    let out = Command::new("wget")
        .args(["-q", "--tries=1", "--timeout=30", "-O"])
        .arg(&back)
        .arg(format!(
            "ftp://{USER}:{PASS}@127.0.0.1:{}/pub/w.bin",
            c.addr.port()
        ))
        .output()
        .unwrap();
    ok("wget", &out);
    same(&back, &random_bytes(250_000, 5), "wget");
}

const FTPLIB: &str = r#"
import ftplib, sys
host, port, user, pw, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ftp = ftplib.FTP()
ftp.connect(host, port, timeout=30)
ftp.login(user, pw)
with open(src, 'rb') as f:
    ftp.storbinary('STOR py.bin', f)
with open(dst, 'wb') as f:
    ftp.retrbinary('RETR py.bin', f.write)
ftp.quit()
"#;

#[test]
fn python_ftplib_with_defaults_stores_and_retrieves() {
    python_round_trip(FTPLIB, "py.bin", 350_000, 6, "ftplib");
}

#[test]
fn rclone_copyto_of_a_changed_file_twice_leaves_the_new_content() {
    if !have("rclone", Command::new("rclone").arg("version")) {
        return;
    }
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let remote = rclone_remote(c.addr, "");
    let file = work.path().join("r.bin");
    let back = work.path().join("back.bin");
    for (round, size) in [(1u64, 150_000usize), (2, 90_000), (3, 210_000)] {
        let bytes = random_bytes(size, 70 + round);
        std::fs::write(&file, &bytes).unwrap();
        rclone(&["copyto", file.to_str().unwrap(), &format!("{remote}r.bin")]);
        rclone(&["copyto", &format!("{remote}r.bin"), back.to_str().unwrap()]);
        same(&back, &bytes, &format!("rclone round {round}"));
    }
    // A tree copied twice: the second run finds the directories (MKD 550)
    // and logs no error.
    let tree = work.path().join("tree/a/b");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("x.txt"), b"x").unwrap();
    for _ in 0..2 {
        let log = rclone(&[
            "copy",
            work.path().join("tree").to_str().unwrap(),
            &format!("{remote}tree"),
        ]);
        assert!(!log.contains("ERROR"), "{log}");
    }
}

#[test]
fn ncftp_puts_and_gets() {
    // ncftpput 3.2.6 exits 8 for -v and -h alike: ask the shell instead.
    if !have(
        "ncftpput",
        Command::new("sh").args(["-c", "command -v ncftpput"]),
    ) {
        return;
    }
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "nc.bin", 260_000, 8);
    let port = c.addr.port().to_string();
    let login = ["-u", USER, "-p", PASS, "-P", port.as_str(), "-t", "30"];
    let put = Command::new("ncftpput")
        .args(login)
        .args(["127.0.0.1", "/"])
        .arg(&src)
        .output()
        .unwrap();
    ok("ncftpput", &put);
    let down = work.path().join("down");
    std::fs::create_dir_all(&down).unwrap();
    let get = Command::new("ncftpget")
        .args(login)
        .arg("127.0.0.1")
        .arg(&down)
        .arg("/nc.bin")
        .output()
        .unwrap();
    ok("ncftpget", &get);
    same(&down.join("nc.bin"), &bytes, "ncftp");
}

const AIOFTP: &str = r#"
import asyncio, sys
import aioftp
host, port, user, pw, src, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
async def main():
    async with aioftp.Client.context(host, port, user, pw, socket_timeout=30) as client:
        await client.upload(src, 'aio.bin', write_into=True)
        await client.download('aio.bin', dst, write_into=True)
asyncio.run(main())
"#;

#[test]
fn aioftp_uploads_and_downloads() {
    if !have(
        "aioftp (pip)",
        Command::new("python3").args(["-c", "import aioftp"]),
    ) {
        return;
    }
    python_round_trip(AIOFTP, "aio.bin", 320_000, 9, "aioftp");
}

const BASIC_FTP: &str = r#"
const ftp = require("basic-ftp");
const [host, port, user, password, src, dst] = process.argv.slice(1);
(async () => {
    const client = new ftp.Client(30000);
    try {
        await client.access({ host, port: Number(port), user, password, secure: false });
        await client.uploadFrom(src, "node.bin");
        await client.downloadTo(dst, "node.bin");
    } finally {
        client.close();
    }
})().catch((e) => { console.error(e); process.exit(1); });
"#;

#[test]
fn node_basic_ftp_uploads_and_downloads() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/node_modules");
    if !have(
        "basic-ftp (npm ci --prefix tests/node)",
        Command::new("node")
            .args(["-e", "require('basic-ftp')"])
            .env("NODE_PATH", &modules),
    ) {
        return;
    }
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let (src, bytes) = payload(work.path(), "node.bin", 280_000, 10);
    let back = work.path().join("back.bin");
    let out = Command::new("node")
        .args(["-e", BASIC_FTP, "--"])
        .args(["127.0.0.1", &c.addr.port().to_string(), USER, PASS])
        .arg(&src)
        .arg(&back)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    ok("basic-ftp", &out);
    same(&back, &bytes, "basic-ftp");
}

#[test]
fn an_overwrite_is_atomic_and_a_cut_upload_leaves_the_old_file() {
    use std::io::Write;
    let c = ClusterProc::start(&["--slaves", "1"]);
    let work = tempfile::tempdir().unwrap();
    let (v1_path, v1) = payload(work.path(), "v1.bin", 300_000, 11);
    let v2 = random_bytes(2_000_000, 12);
    let userpass = format!("{USER}:{PASS}");
    let url = c.url("f.bin");
    let flags = ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", &userpass];
    ok(
        "first upload",
        &curl(&[&flags[..], &["-T", v1_path.to_str().unwrap(), &url]].concat()),
    );
    let download = |name: &str| {
        let out = work.path().join(name);
        ok(
            "download",
            &curl(&[&flags[..], &["-o", out.to_str().unwrap(), &url]].concat()),
        );
        out
    };
    // An upload of a new version, cut in the middle.
    let mut up = c.raw();
    assert!(up.cmd("TYPE I").starts_with("200"));
    assert!(up.cmd("PRET STOR f.bin").starts_with("200"));
    let (_, data) = up.pasv();
    let mut d = std::net::TcpStream::connect(data).unwrap();
    let opening = up.cmd("STOR f.bin");
    assert!(opening.starts_with("150"), "{opening}");
    d.write_all(&v2[..1_000_000]).unwrap();
    // Meanwhile the old version is served, whole.
    same(&download("during.bin"), &v1, "during the new upload");
    // The client dies: control connection first, then its data connection.
    drop(up);
    std::thread::sleep(std::time::Duration::from_millis(200));
    drop(d);
    std::thread::sleep(std::time::Duration::from_millis(300));
    same(&download("after-cut.bin"), &v1, "after the cut upload");
    let root = c.slave_root(1);
    assert!(
        wait_until(|| std::fs::read_dir(root.join(".dftpd-tmp"))
            .map(|d| d.count() == 0)
            .unwrap_or(true)),
        "the cut upload's temporary file is removed"
    );
    // A complete upload replaces it.
    let v2_path = work.path().join("v2.bin");
    std::fs::write(&v2_path, &v2).unwrap();
    ok(
        "overwrite",
        &curl(&[&flags[..], &["-T", v2_path.to_str().unwrap(), &url]].concat()),
    );
    same(&download("after.bin"), &v2, "after the overwrite");
}

/// A mirror of tiny files at full speed (PRET, PASV, RETR of 4 KiB files
/// in a loop, one command at a time) for a minute on the default limits:
/// past the command budget its replies are delayed, it is never closed.
#[test]
fn a_fast_small_file_client_runs_a_minute_without_421() {
    use std::io::Read;
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("s{i}.bin"), random_bytes(4096, 100 + i)))
        .collect();
    let seeded = files.clone();
    let c = ClusterProc::start_with(&[], move |dir| {
        for (i, (name, bytes)) in seeded.iter().enumerate() {
            let d = dir.join(format!("slave-{}", 1 + i % 3));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), bytes).unwrap();
        }
    });
    let mut ftp = c.raw();
    assert!(ftp.cmd("TYPE I").starts_with("200"));
    let started = std::time::Instant::now();
    let mut fetched = 0usize;
    while started.elapsed() < std::time::Duration::from_secs(60) {
        let (name, bytes) = &files[fetched % files.len()];
        let pret = ftp.cmd(&format!("PRET RETR {name}"));
        assert!(pret.starts_with("200"), "after {fetched} files: {pret}");
        let (_, data) = ftp.pasv();
        let mut d = std::net::TcpStream::connect(data).unwrap();
        let opening = ftp.cmd(&format!("RETR {name}"));
        assert!(
            opening.starts_with("150"),
            "after {fetched} files: {opening}"
        );
        let mut got = Vec::with_capacity(4096);
        d.read_to_end(&mut got).unwrap();
        let fin = ftp.read_reply();
        assert!(fin.starts_with("226"), "after {fetched} files: {fin}");
        // Checking every file's bytes costs little; keep it to one in 16.
        if fetched.is_multiple_of(16) {
            assert!(&got == bytes, "{name} differs");
        }
        fetched += 1;
    }
    assert!(ftp.cmd("NOOP").starts_with("200"), "still served");
    eprintln!("fetched {fetched} files of 4 KiB in 60 s");
    assert!(fetched > 1000, "only {fetched} files in a minute");
}

//! Real clients recorded against the real cluster (`dftpd cluster --record
//! DIR`), replayed in the simulator: every session's replies agree with the
//! recording (an empty diff), including failures, concurrent sessions
//! replayed together and FTPS sessions; a fault given by time lands between
//! the commands recorded around that time. Wall-clock figures are printed,
//! never asserted.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dftpd_sim::replay::{replay_paths, Fault, ReplayOptions, ReplayReport, When};

/// Replays `paths` together; every session must agree and no invariant
/// break. Prints the per-session summaries and the wall time.
fn replay_clean(what: &str, paths: &[PathBuf]) -> ReplayReport {
    let started = Instant::now();
    let report = replay_paths(paths, &ReplayOptions::default()).expect("recordings parse");
    println!(
        "{what}: {} session(s) replayed in {:.3}s wall",
        report.sessions.len(),
        started.elapsed().as_secs_f64()
    );
    for s in &report.sessions {
        println!("  {}", s.diff.summary());
    }
    assert!(
        report.agrees(),
        "{what}: the replay differs:\n{}\n--- violations: {:?}\n--- transcript:\n{}",
        report.diff.join("\n"),
        report.outcome.violations,
        report.outcome.transcript
    );
    report
}

fn rec_cluster(extra: &[&str]) -> (tempfile::TempDir, ClusterProc) {
    let rec = tempfile::tempdir().unwrap();
    let mut args = vec!["--record", rec.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let c = ClusterProc::start(&args);
    (rec, c)
}

fn write_tree(root: &Path, files: &[(&str, usize, u64)]) {
    for (name, size, seed) in files {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, random_bytes(*size, *seed)).unwrap();
    }
}

#[test]
fn lftp_mirror_up_and_back_replays_with_no_difference() {
    let (rec, c) = rec_cluster(&[]);
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("tree");
    // `deep/` holds only a directory, `empty/` nothing: the recording of
    // the session that finds them must declare them.
    write_tree(
        &up,
        &[
            ("top.txt", 1234, 1),
            ("a/one.bin", 300_000, 2),
            ("a/b/two.bin", 77_777, 3),
            ("deep/er/three.bin", 5, 4),
        ],
    );
    // And an empty one.
    std::fs::create_dir_all(up.join("empty")).unwrap();
    let back = work.path().join("back");
    // Active mode: lftp replaces a 127.x 227 address (see tests/clients.rs).
    // Two sessions: the second finds the tree the first made, directories
    // that hold only directories included.
    lftp(
        c.addr,
        &format!(
            "set ftp:passive-mode off; mirror -R {} /site; quit",
            up.display()
        ),
    );
    lftp(
        c.addr,
        &format!(
            "set ftp:passive-mode off; mirror /site {}; quit",
            back.display()
        ),
    );
    let files = finished_recordings(rec.path(), 2);
    let second = std::fs::read_to_string(&files[1]).unwrap();
    assert!(second.contains("\ndir /site/deep\n"), "{second}");
    assert!(second.contains("\ndir /site/empty\n"), "{second}");
    // Each alone (the second from the state it found), and together.
    replay_clean("lftp mirror -R", &files[..1]);
    replay_clean("lftp mirror back", &files[1..]);
    replay_clean("lftp mirror up and back", &files);
}

#[test]
fn rclone_sync_twice_replays_its_parallel_sessions_together() {
    let (rec, c) = rec_cluster(&[]);
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("tree");
    write_tree(
        &up,
        &[
            ("keep.bin", 40_000, 1),
            ("change.bin", 50_000, 2),
            ("gone.bin", 30_000, 3),
            ("sub/inner.bin", 20_000, 4),
            ("sub/deeper/leaf.bin", 10_000, 5),
        ],
    );
    let remote = rclone_remote(c.addr, "rsync");
    rclone(&["sync", up.to_str().unwrap(), &remote]);
    // Changes and deletions, synced again.
    std::fs::write(up.join("change.bin"), random_bytes(55_555, 6)).unwrap();
    std::fs::remove_file(up.join("gone.bin")).unwrap();
    std::fs::write(up.join("sub/new.bin"), random_bytes(12_345, 7)).unwrap();
    rclone(&["sync", up.to_str().unwrap(), &remote]);
    std::thread::sleep(Duration::from_millis(500));
    // rclone keeps its connections open until it exits: every session has
    // ended once it did.
    let n = std::fs::read_dir(rec.path()).unwrap().count();
    let files = finished_recordings(rec.path(), n);
    assert!(files.len() > 2, "rclone works in parallel: {files:?}");
    drop(c);
    let report = replay_clean("rclone sync x2", &files);
    assert_eq!(report.sessions.len(), files.len());
}

const FTPLIB_APPE_REST: &str = r#"
import ftplib, io, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ftp = ftplib.FTP()
ftp.connect(host, port, timeout=30)
ftp.trust_server_pasv_ipv4_address = True
ftp.login(user, pw)
ftp.sendcmd('TYPE I')
ftp.sendcmd('PRET STOR grow.bin')
ftp.storbinary('STOR grow.bin', io.BytesIO(b'x' * 50000))
ftp.sendcmd('PRET APPE grow.bin')
ftp.storbinary('APPE grow.bin', io.BytesIO(b'y' * 1234))
print(ftp.sendcmd('SIZE grow.bin'))
ftp.sendcmd('PRET STOR part.bin')
ftp.storbinary('STOR part.bin', io.BytesIO(b'z' * 10000))
ftp.sendcmd('PRET STOR part.bin')
ftp.storbinary('STOR part.bin', io.BytesIO(b'w' * 5000), rest=10000)
print(ftp.sendcmd('SIZE part.bin'))
ftp.sendcmd('PRET STOU')
print(ftp.storbinary('STOU', io.BytesIO(b'q' * 100)))
# ftplib's default: it ignores the 227 address and is relayed.
ftp.trust_server_pasv_ipv4_address = False
ftp.sendcmd('PRET RETR grow.bin')
got = []
ftp.retrbinary('RETR grow.bin', got.append)
print(sum(len(b) for b in got))
ftp.quit()
"#;

#[test]
fn ftplib_appe_rest_stor_stou_and_relay_replay_with_no_difference() {
    let (rec, c) = rec_cluster(&["--allow-overwrite", "--pasv-without-pret", "relay"]);
    let port = c.addr.port().to_string();
    let out = python(FTPLIB_APPE_REST, &["127.0.0.1", &port, USER, PASS]);
    let out: Vec<&str> = out.lines().collect();
    assert_eq!(out[..2], ["213 51234", "213 15000"]);
    assert!(out[2].starts_with("226 "), "{out:?}");
    assert_eq!(out[3], "51234");
    let files = finished_recordings(rec.path(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    // What crossed the data connections, not the files' final sizes.
    // (then " over=..." for an upload that took 100 ms or more).
    assert!(
        text.contains("client: data send 1234\n") || text.contains("client: data send 1234 over="),
        "{text}"
    );
    assert!(
        text.contains("client: data send 5000\n") || text.contains("client: data send 5000 over="),
        "{text}"
    );
    // STOU's name, and the client relayed after ignoring the 227 address.
    assert!(text.contains("client: pin-stou stou."), "{text}");
    assert!(
        text.contains("# data: relayed through the master"),
        "{text}"
    );
    assert!(
        text.contains("client: data connect ignore-address"),
        "{text}"
    );
    replay_clean("ftplib APPE, REST+STOR", &files);
}

/// Runs curl with `args` at 1 MB/s and kills it (SIGKILL) after 1.2 s,
/// mid-transfer.
fn curl_killed_midway(args: &[&str]) {
    let mut child = Command::new("curl")
        .args([
            "-s",
            "--ftp-pret",
            "--no-ftp-skip-pasv-ip",
            "--limit-rate",
            "1M",
        ])
        .args(["-u", &format!("{USER}:{PASS}")])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("curl");
    std::thread::sleep(Duration::from_millis(1200));
    let _ = child.kill();
    let _ = child.wait();
}

fn upload_text(f: &Path) -> String {
    std::fs::read_to_string(f).unwrap()
}

#[test]
fn curl_killed_mid_download_and_mid_upload_replay_their_failures() {
    let (rec, c) = rec_cluster(&[]);
    let work = tempfile::tempdir().unwrap();
    let big = work.path().join("big.bin");
    std::fs::write(&big, random_bytes(32 << 20, 9)).unwrap();
    // Session 1: the file arrives whole.
    let out = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &format!("{USER}:{PASS}"),
        "-T",
        big.to_str().unwrap(),
        &c.url("/"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Session 2: a download killed mid-way; session 3: an upload killed
    // mid-way; session 4: the cut upload is not there (SIZE: 550).
    curl_killed_midway(&["-o", "/dev/null", &c.url("/big.bin")]);
    curl_killed_midway(&["-T", big.to_str().unwrap(), &c.url("/cut.bin")]);
    let out = curl(&[
        "--ftp-pret",
        "-u",
        &format!("{USER}:{PASS}"),
        "-I",
        &c.url("/cut.bin"),
    ]);
    assert!(!out.status.success());
    let files = finished_recordings(rec.path(), 4);
    let download = std::fs::read_to_string(&files[1]).unwrap();
    assert!(
        download.contains("client: data read reset-after=")
            || download.contains("client: data read gone-after="),
        "{download}"
    );
    for l in download.lines().chain(upload_text(&files[2]).lines()) {
        if l.starts_with("client: data ") || l.starts_with("# data: ") {
            println!("recorded: {l}");
        }
    }
    // The slave reports how far the download got.
    assert!(!download.contains("-after=0\n"), "{download}");
    let upload = std::fs::read_to_string(&files[2]).unwrap();
    assert!(upload.contains("gone-after="), "{upload}");
    assert!(!upload.contains("gone-after=0\n"), "{upload}");
    replay_clean("curl killed mid-transfer", &files);
}

#[test]
fn a_curl_ftps_session_replays_at_the_ftp_level() {
    let (rec, c) = rec_cluster(&["--tls"]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("secret.bin");
    std::fs::write(&file, random_bytes(100_000, 11)).unwrap();
    let got = work.path().join("got.bin");
    let root = c.url("/");
    let url = c.url("/secret.bin");
    let out = curl_ftps(&[
        "-T",
        file.to_str().unwrap(),
        &root,
        "--next",
        "--ftp-ssl-reqd",
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-k",
        "-u",
        &format!("{USER}:{PASS}"),
        "-o",
        got.to_str().unwrap(),
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let files = finished_recordings(rec.path(), 1);
    let report = replay_clean("curl FTPS", &files);
    assert!(report.sessions[0].ftps, "marked as an FTPS session");
}

const TWO_CLIENTS: &str = r#"
import ftplib, io, sys, time
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def client():
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.trust_server_pasv_ipv4_address = True
    f.login(user, pw)
    return f
def put(f, name, data):
    f.sendcmd('PRET STOR ' + name)
    f.storbinary('STOR ' + name, io.BytesIO(data))
def get(f, name):
    out = io.BytesIO()
    f.sendcmd('PRET RETR ' + name)
    f.retrbinary('RETR ' + name, out.write)
    return len(out.getvalue())
a = client()
time.sleep(0.02)
b = client()
steps = [
    lambda: put(a, 'shared.bin', b's' * 40000),
    lambda: print(b.sendcmd('SIZE shared.bin')),
    lambda: print(get(b, 'shared.bin')),
    lambda: a.sendcmd('MKD work'),
    lambda: b.sendcmd('CWD work'),
    lambda: put(b, 'b.bin', b'b' * 777),
    lambda: a.rename('shared.bin', 'work/moved.bin'),
    lambda: print(b.size('moved.bin')),
    lambda: a.delete('work/b.bin'),
    lambda: print(b.nlst()),
    lambda: put(a, 'shared.bin', b'n' * 1000),
    lambda: print(get(b, '/shared.bin')),
]
for s in steps:
    s()
    time.sleep(0.02)
a.quit()
b.quit()
"#;

#[test]
fn two_clients_on_the_same_files_replay_together() {
    let (rec, c) = rec_cluster(&[]);
    let port = c.addr.port().to_string();
    python(TWO_CLIENTS, &["127.0.0.1", &port, USER, PASS]);
    let files = finished_recordings(rec.path(), 2);
    // One at a time, the other session's changes are missing.
    let alone = replay_paths(&files[1..], &ReplayOptions::default()).unwrap();
    assert!(!alone.agrees(), "{}", alone.outcome.transcript);
    replay_clean("two clients", &files);
}

const PACED_DOWNLOADS: &str = r#"
import ftplib, io, sys, time
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ftp = ftplib.FTP()
ftp.connect(host, port, timeout=30)
ftp.trust_server_pasv_ipv4_address = True
ftp.login(user, pw)
ftp.sendcmd('TYPE I')
start = time.monotonic()
for i in range(100):
    time.sleep(max(0, start + i * 0.02 - time.monotonic()))
    ftp.sendcmd('PRET RETR paced.bin')
    ftp.retrbinary('RETR paced.bin', lambda b: None)
ftp.quit()
"#;

#[test]
fn a_crash_at_the_midpoint_of_a_paced_session_lands_at_that_command() {
    let (rec, c) = rec_cluster(&[]);
    let work = tempfile::tempdir().unwrap();
    let f = work.path().join("paced.bin");
    std::fs::write(&f, random_bytes(20_000, 12)).unwrap();
    let out = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &format!("{USER}:{PASS}"),
        "-T",
        f.to_str().unwrap(),
        &c.url("/"),
    ]);
    assert!(out.status.success());
    let port = c.addr.port().to_string();
    python(PACED_DOWNLOADS, &["127.0.0.1", &port, USER, PASS]);
    let files = finished_recordings(rec.path(), 2);
    let session = &files[1];
    let text = std::fs::read_to_string(session).unwrap();
    let holder = text
        .lines()
        .find_map(|l| {
            let rest = l.strip_prefix("file ")?;
            let (holders, rest) = rest.split_once(' ')?;
            rest.starts_with("/paced.bin ").then(|| holders.to_string())
        })
        .expect("the file is declared");
    // The recorded time of every RETR.
    let mut at = Duration::ZERO;
    let mut retrs = Vec::new();
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("at ") {
            at = dftpd_sim::script::parse_duration(t).unwrap();
        }
        if l.starts_with("client> RETR ") {
            retrs.push(at);
        }
    }
    assert_eq!(retrs.len(), 100);
    let mid = Duration::from_secs(1);
    let started = Instant::now();
    let report = replay_paths(
        std::slice::from_ref(session),
        &ReplayOptions {
            faults: vec![Fault::CrashSlave {
                slave: holder.clone(),
                when: When::At(mid),
            }],
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    let wall = started.elapsed();
    // The first download that failed, by its RETR's order.
    let lines: Vec<String> = report
        .outcome
        .transcript
        .lines()
        .map(String::from)
        .collect();
    let replayed = dftpd_sim::diff::received(&lines, "client");
    let mut n = 0;
    let mut first_failed = None;
    for l in &replayed {
        if l.starts_with("150 ") {
            n += 1;
        }
        if l.starts_with("550 ") || l.starts_with("426 ") || l.starts_with("425 ") {
            first_failed = Some(n);
            break;
        }
    }
    let first = first_failed.expect("downloads fail after the crash");
    // Downloads before the crash got their 150: `first` is the index of the
    // first one that did not.
    let recorded = retrs[first.min(retrs.len() - 1)];
    let off = recorded.as_secs_f64() - mid.as_secs_f64();
    println!(
        "crash of {holder} --at 1s: first failed download recorded at {:.3}s ({off:+.3}s, spacing 0.020s); replay {:.3}s wall; {}",
        recorded.as_secs_f64(),
        wall.as_secs_f64(),
        report.faults.join("; ")
    );
    assert!(
        off.abs() <= 0.07,
        "within a few commands of the midpoint: {off}"
    );
}

/// The recorded time of the session's `verb` command and the `over=` of
/// its data line (the transfer's recorded duration).
fn slow_transfer(text: &str, verb: &str) -> (Duration, Duration) {
    let mut at = Duration::ZERO;
    let mut over = None;
    for l in text.lines() {
        if let Some(t) = l.strip_prefix("at ") {
            at = dftpd_sim::script::parse_duration(t).unwrap();
        }
        if l.starts_with("client: data ") {
            over = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("over="))
                .and_then(dftpd_sim::script::parse_duration);
        }
        if l.starts_with(&format!("client> {verb} ")) {
            return (
                at,
                over.unwrap_or_else(|| panic!("no over= on {verb}:\n{text}")),
            );
        }
    }
    panic!("no {verb} in:\n{text}")
}

#[test]
fn a_crash_in_the_middle_of_a_slow_transfer_finds_it_running_in_the_replay() {
    let (rec, c) = rec_cluster(&[]);
    let work = tempfile::tempdir().unwrap();
    let (small, big) = (work.path().join("slow.bin"), work.path().join("big.bin"));
    std::fs::write(&small, random_bytes(3_000_000, 21)).unwrap();
    std::fs::write(&big, random_bytes(24_000_000, 22)).unwrap();
    let creds = format!("{USER}:{PASS}");
    let base = ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", &creds];
    let (root, url) = (c.url("/"), c.url("/big.bin"));
    let run = |extra: &[&str]| assert!(curl(&[&base[..], extra].concat()).status.success());
    // An upload at 3 MB/s (about a second); a download at 12 MB/s, long
    // enough that the kernel's socket buffers do not hide it (about a
    // second from the slave's side).
    run(&["-T", big.to_str().unwrap(), &root]);
    run(&["--limit-rate", "3M", "-T", small.to_str().unwrap(), &root]);
    run(&["--limit-rate", "12M", "-o", "/dev/null", &url]);
    let files = finished_recordings(rec.path(), 3);
    for (file, verb, gets) in [(&files[1], "STOR", "stored"), (&files[2], "RETR", "from")] {
        let text = std::fs::read_to_string(file).unwrap();
        let (at, over) = slow_transfer(&text, verb);
        assert!(over >= Duration::from_millis(500), "{over:?}");
        let slave = text
            .lines()
            .find_map(|l| l.strip_prefix("# passive decision: slave "))
            .and_then(|r| r.split_whitespace().next())
            .expect("a passive decision")
            .to_string();
        // As recorded: it completes, taking its time.
        replay_clean(verb, std::slice::from_ref(file));
        // The slave crashes halfway through: the replayed transfer is
        // still running, and fails.
        let report = replay_paths(
            std::slice::from_ref(file),
            &ReplayOptions {
                faults: vec![Fault::CrashSlave {
                    slave: slave.clone(),
                    when: When::At(at + over / 2),
                }],
                ..ReplayOptions::default()
            },
        )
        .unwrap();
        let diff = report.diff.join("\n");
        println!(
            "{verb} with {slave} crashed halfway: {}",
            report.faults.join("; ")
        );
        assert!(
            diff.contains(gets) && diff.contains("+        426 "),
            "{verb}: the crash should cut the transfer:\n{diff}"
        );
    }
}

#[test]
fn a_five_thousand_command_session_replays_fast() {
    let (rec, c) = rec_cluster(&[]);
    let mut ftp = c.raw();
    let verbs = ["NOOP", "PWD", "TYPE I", "SYST", "CWD /", "MODE S"];
    for i in 0..4997 {
        // Under the command rate limit (a burst of 2,000, then 1,000/s).
        if i > 1500 {
            std::thread::sleep(Duration::from_micros(1100));
        }
        let r = ftp.cmd(verbs[i % verbs.len()]);
        assert!(r.starts_with('2'), "{r}");
    }
    ftp.cmd("QUIT");
    drop(ftp);
    let files = finished_recordings(rec.path(), 1);
    let commands = std::fs::read_to_string(&files[0])
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("client> "))
        .count();
    assert!(commands >= 5000, "{commands}");
    let started = Instant::now();
    let report = replay_clean("5,000 commands", &files);
    println!(
        "5,000-command session: {commands} commands replayed in {:.3}s wall ({:.3}s simulated)",
        started.elapsed().as_secs_f64(),
        report.outcome.sim_time.as_secs_f64()
    );
}

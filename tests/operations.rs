//! Operating the real binary as a service manager and an operator would
//! (README, "Running it in production"): the admin listener's `/metrics`,
//! `/health` and `/ready`; JSON logs; SIGHUP reloading users without
//! dropping a session; SIGTERM letting a running download finish and
//! exiting 0; config mistakes refused at start with one line naming the
//! field; `--check`; the default user's file mode; `--help` texts.

mod common;

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    bin, curl, free_port, http_get, metric, random_bytes, read_banner, send_signal, spawn_config,
    text, wait_exit, wait_until, Banner, KillOnDrop, RawFtp, PASS, USER,
};

/// `dftpd cluster` on free ports in `dir` with `args`; stderr to
/// `dir/stderr.log`.
fn cluster(dir: &Path, args: &[&str]) -> (KillOnDrop, Banner) {
    let log = dir.join("stderr.log");
    let mut child = Command::new(bin())
        .args(["cluster", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn dftpd");
    let banner = read_banner(&mut child, "cluster ready: ftp://", &log);
    (KillOnDrop(child), banner)
}

fn admin_addr(banner: &Banner) -> String {
    let url = banner
        .value("metrics: ")
        .expect("the banner names /metrics");
    url.strip_prefix("http://")
        .and_then(|u| u.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("metrics URL {url}"))
        .to_string()
}

fn sum_metric(exposition: &str, prefix: &str) -> f64 {
    exposition
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

#[test]
fn cluster_serves_metrics_health_and_ready_logs_json_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let user = format!("{USER}:{PASS}");
    let (mut proc, banner) = cluster(
        dir.path(),
        &["--user", &user, "--log-format", "json", "--slaves", "2"],
    );
    let admin = admin_addr(&banner);
    assert!(
        admin.starts_with("127.0.0.1:"),
        "loopback by default: {admin}"
    );
    let addr: SocketAddr = banner
        .value("cluster ready: ftp://")
        .unwrap()
        .parse()
        .unwrap();

    let (code, body) = http_get(&admin, "/health");
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    let (code, body) = http_get(&admin, "/ready");
    assert_eq!((code, body.as_str()), (200, "ready\n"));
    let (code, before) = http_get(&admin, "/metrics");
    assert_eq!(code, 200);
    for (name, want) in [
        ("dftpd_slave_state{slave=\"slave-1\",state=\"online\"}", 1.0),
        (
            "dftpd_slave_state{slave=\"slave-2\",state=\"offline\"}",
            0.0,
        ),
        ("dftpd_sessions", 0.0),
    ] {
        assert_eq!(metric(&before, name), Some(want), "{name} in\n{before}");
    }
    assert!(metric(&before, "dftpd_slave_free_bytes{slave=\"slave-1\"}").unwrap() > 0.0);

    // A download's bytes show up in the byte counters.
    let payload = random_bytes(123_457, 7);
    let file = dir.path().join("up.bin");
    std::fs::write(&file, &payload).unwrap();
    let url = format!("ftp://{addr}/m.bin");
    let login = ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", &user];
    let up = curl(&[&login[..], &["-T", file.to_str().unwrap(), &url]].concat());
    assert!(up.status.success(), "{}", text(&up.stderr));
    let down = curl(&[&login[..], &[url.as_str()]].concat());
    assert!(down.stdout == payload, "download differs");
    let (_, after) = http_get(&admin, "/metrics");
    let bytes = |t: &str, dir: &str| {
        sum_metric(
            t,
            &format!("dftpd_transfer_bytes_total{{direction=\"{dir}\""),
        )
    };
    assert_eq!(
        bytes(&after, "download") - bytes(&before, "download"),
        123_457.0
    );
    assert_eq!(
        bytes(&after, "upload") - bytes(&before, "upload"),
        123_457.0
    );
    // Commands by verb, logins, completed transfers and their durations.
    for (name, at_least) in [
        ("dftpd_commands_total{verb=\"RETR\"}", 1.0),
        ("dftpd_commands_total{verb=\"STOR\"}", 1.0),
        ("dftpd_commands_total{verb=\"PRET\"}", 2.0),
        ("dftpd_logins_total{outcome=\"ok\"}", 2.0),
        (
            "dftpd_transfer_duration_seconds_count{direction=\"download\"}",
            1.0,
        ),
        ("dftpd_store_commit_seconds_count", 1.0),
    ] {
        let v = metric(&after, name).unwrap_or(0.0);
        assert!(v >= at_least, "{name} = {v} in\n{after}");
    }
    assert_eq!(
        sum_metric(&after, "dftpd_transfers_total{direction=\"upload\""),
        1.0
    );
    let bad = curl(&["-u", "u:wrong", &format!("ftp://{addr}/")]);
    assert!(!bad.status.success());
    let (_, later) = http_get(&admin, "/metrics");
    assert_eq!(
        metric(&later, "dftpd_logins_total{outcome=\"failed\"}"),
        Some(1.0)
    );
    // One xferlog line per transfer: upload then download, user, path and
    // the slave in the service-name field.
    let xferlog = std::fs::read_to_string(dir.path().join("xferlog")).unwrap();
    let lines: Vec<Vec<&str>> = xferlog
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines.len(), 2, "{xferlog}");
    for (words, direction) in lines.iter().zip(["i", "o"]) {
        assert_eq!(words.len(), 18, "{xferlog}");
        assert_eq!(
            (words[6], words[7], words[8], words[11], words[13], words[17]),
            ("127.0.0.1", "123457", "/m.bin", direction, USER, "c"),
            "{xferlog}"
        );
        assert!(words[14].starts_with("ftp@slave-"), "{xferlog}");
    }

    // Every log line is one JSON object.
    let log = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap();
    assert!(log.lines().count() > 3, "{log}");
    for line in log.lines() {
        assert!(
            line.starts_with('{') && line.ends_with('}') && line.contains("\"level\":"),
            "not JSON: {line}"
        );
    }
    assert!(dir.path().join("xferlog").is_file(), "DATA_DIR/xferlog");

    // SIGHUP: still alive; SIGTERM on an idle cluster: exit 0.
    send_signal(&proc.0, "HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert!(proc.0.try_wait().unwrap().is_none(), "SIGHUP must not kill");
    assert_eq!(http_get(&admin, "/health").0, 200);
    send_signal(&proc.0, "TERM");
    let status = wait_exit(&mut proc.0, 30).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(banner.wait_for("cluster stopped", 5).is_some());
}

#[test]
fn sigterm_lets_a_running_download_finish_then_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let payload = random_bytes(24 << 20, 11);
    let seeded = payload.clone();
    std::fs::create_dir_all(dir.path().join("slave-1")).unwrap();
    std::fs::write(dir.path().join("slave-1/big.bin"), &seeded).unwrap();
    let user = format!("{USER}:{PASS}");
    let (mut proc, banner) = cluster(dir.path(), &["--user", &user, "--slaves", "1"]);
    let addr: SocketAddr = banner
        .value("cluster ready: ftp://")
        .unwrap()
        .parse()
        .unwrap();

    // An idle session, told at once when the server stops.
    let mut idle = RawFtp::connect(addr);
    idle.login();
    let mut ftp = RawFtp::connect(addr);
    ftp.login();
    assert!(ftp.cmd("TYPE I").starts_with("200"));
    assert!(ftp.cmd("PRET RETR big.bin").starts_with("200"));
    let (_, data) = ftp.pasv();
    let mut d = TcpStream::connect(data).unwrap();
    let opening = ftp.cmd("RETR big.bin");
    assert!(opening.starts_with("150"), "{opening}");
    // Read a little, then stop the server with most of the file in flight.
    let mut got = vec![0u8; 1 << 20];
    d.read_exact(&mut got).unwrap();
    send_signal(&proc.0, "TERM");
    assert_eq!(idle.read_reply(), "421 Server shutting down");
    assert!(
        proc.0.try_wait().unwrap().is_none(),
        "waits for the download"
    );
    // New clients are not accepted any more.
    assert!(
        TcpStream::connect(addr)
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut b = [0u8; 3];
                s.read_exact(&mut b)
            })
            .is_err(),
        "a new connection after SIGTERM must not be served"
    );
    // The rest, slowly.
    let mut buf = [0u8; 256 * 1024];
    loop {
        let n = d.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        std::thread::sleep(Duration::from_millis(2));
    }
    let fin = ftp.read_reply();
    assert!(fin.starts_with("226"), "{fin}");
    assert!(got == payload, "the download is intact");
    // After its final reply, the session that was transferring ends too.
    assert_eq!(ftp.read_reply(), "421 Server shutting down");
    let status = wait_exit(&mut proc.0, 30).expect("exits once the download is done");
    assert_eq!(status.code(), Some(0));
}

/// A master and one slave from config files, on free loopback ports.
struct Site {
    dir: tempfile::TempDir,
    master_cfg: PathBuf,
    control: SocketAddr,
    master: KillOnDrop,
    slave: KillOnDrop,
}

const KEY: &str = "ops-test-key";

fn master_toml(control: SocketAddr, link: SocketAddr, dir: &Path, users: &str) -> String {
    format!(
        "listen = \"{control}\"\nlink_listen = \"{link}\"\nlink_key = \"{KEY}\"\naccept_new_slaves = true\n\
         passive_ports = \"0\"\nstore = \"{}\"\nshutdown_grace_ms = 5000\n\
         [password_cost]\nmemory_kib = 64\niterations = 1\n{users}",
        dir.join("master.redb").display()
    )
}

fn user_toml(name: &str, password: &str) -> String {
    format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n")
}

impl Site {
    fn start() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let master_cfg = dir.path().join("master.toml");
        std::fs::write(
            &master_cfg,
            master_toml(control, link, dir.path(), &user_toml(USER, PASS)),
        )
        .unwrap();
        let log = dir.path().join("master.log");
        let mut master = spawn_config("master", &master_cfg, &log);
        read_banner(&mut master, "master ready on", &log);
        let slave_cfg = dir.path().join("slave.toml");
        std::fs::write(
            &slave_cfg,
            format!(
                "name = \"ops-1\"\nmaster = \"{link}\"\nlink_key = \"{KEY}\"\nroot = \"{}\"\n\
                 create_root = true\ndata_ip = \"127.0.0.71\"\npassive_ports = \"0\"\n",
                dir.path().join("ops-1").display()
            ),
        )
        .unwrap();
        let slog = dir.path().join("slave.log");
        let mut slave = spawn_config("slave", &slave_cfg, &slog);
        read_banner(&mut slave, "ops-1 ready", &slog);
        Site {
            dir,
            master_cfg,
            control,
            master: KillOnDrop(master),
            slave: KillOnDrop(slave),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    fn login(&self, user: &str, password: &str) -> (RawFtp, String) {
        let mut c = RawFtp::connect(self.control);
        assert!(c.cmd(&format!("USER {user}")).starts_with("331"));
        let r = c.cmd(&format!("PASS {password}"));
        (c, r)
    }
}

/// PRET STOR, PASV, STOR of `bytes` as `name` on an open session.
fn upload(ftp: &mut RawFtp, name: &str, bytes: &[u8]) {
    assert!(ftp.cmd(&format!("PRET STOR {name}")).starts_with("200"));
    let (_, data) = ftp.pasv();
    let (prelim, fin) = ftp.stor(name, data, bytes);
    assert!(
        prelim.starts_with("150") && fin.starts_with("226"),
        "{prelim} / {fin}"
    );
}

#[test]
fn sighup_reloads_users_without_dropping_sessions_and_sigterm_stops_both_processes() {
    let mut site = Site::start();
    let (mut session, r) = site.login(USER, PASS);
    assert!(r.starts_with("230"), "{r}");
    assert!(site.login("late", "late-pw").1.starts_with("530"));

    // A user added to the file can log in after SIGHUP.
    let addr = site.control;
    let link = {
        let text = std::fs::read_to_string(&site.master_cfg).unwrap();
        let l = text.lines().find(|l| l.starts_with("link_listen")).unwrap();
        l.split('"').nth(1).unwrap().parse::<SocketAddr>().unwrap()
    };
    let users = user_toml(USER, PASS) + &user_toml("late", "late-pw");
    let mut cfg = master_toml(addr, link, site.dir.path(), &users);
    cfg = cfg.replace(
        "[password_cost]",
        "allow_overwrite = false\n[password_cost]",
    );
    std::fs::write(&site.master_cfg, &cfg).unwrap();
    send_signal(&site.master.0, "HUP");
    assert!(
        wait_until(|| site.log().contains("config reloaded")),
        "{}",
        site.log()
    );
    let log = site.log();
    assert!(log.contains("users added late"), "{log}");
    assert!(log.contains("applied allow_overwrite"), "{log}");
    assert!(
        site.master.0.try_wait().unwrap().is_none(),
        "alive after SIGHUP"
    );
    let (mut late, r) = site.login("late", "late-pw");
    assert!(r.starts_with("230"), "{r}");
    // The session opened before the reload goes on, transfers included.
    assert!(session.cmd("PWD").starts_with("257"));
    upload(&mut session, "after-hup.bin", &random_bytes(50_000, 3));
    upload(&mut late, "late.bin", b"late");

    // A config that does not validate is refused; the old one stays.
    std::fs::write(
        &site.master_cfg,
        cfg.replace("passive_ports = \"0\"", "passive_ports = \"9-1\""),
    )
    .unwrap();
    send_signal(&site.master.0, "HUP");
    assert!(wait_until(|| site.log().contains("reload refused")));
    assert!(site.log().contains("invalid port range '9-1'"));
    assert!(session.cmd("NOOP").starts_with("200"));
    assert!(site.login("late", "late-pw").1.starts_with("230"));

    // SIGTERM: both exit 0.
    drop(session);
    drop(late);
    send_signal(&site.slave.0, "TERM");
    let status = wait_exit(&mut site.slave.0, 30).expect("the slave exits");
    assert_eq!(status.code(), Some(0));
    send_signal(&site.master.0, "TERM");
    let status = wait_exit(&mut site.master.0, 30).expect("the master exits");
    assert_eq!(status.code(), Some(0), "{}", site.log());
}

/// Runs `dftpd ARGS` to completion; returns (exit code, stdout, stderr).
fn run(args: &[&str], cwd: &Path) -> (Option<i32>, String, String) {
    let out = Command::new(bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("DFTPD_LOG")
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run dftpd");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// The process failed with exactly one error line, saying `want` once.
fn fails_with(args: &[&str], cwd: &Path, want: &str) {
    let (code, _, stderr) = run(args, cwd);
    assert!(code.is_some_and(|c| c != 0), "{args:?} must fail: {stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("dftpd: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert_eq!(errors[0].matches(want).count(), 1, "said once: {stderr}");
    assert!(
        !stderr
            .lines()
            .any(|l| !l.starts_with("dftpd: ") && !l.contains(" WARN ")),
        "nothing else printed: {stderr}"
    );
}

#[test]
fn config_mistakes_are_refused_at_start_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let write = |name: &str, body: String| {
        let p = d.join(name);
        std::fs::write(&p, body).unwrap();
        p.to_str().unwrap().to_string()
    };
    let root = d.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let slave = |extra: &str, root: &Path| {
        format!(
            "link_key = \"k\"\nmaster = \"127.0.0.1:1\"\nroot = \"{}\"\n{extra}",
            root.display()
        )
    };

    let wildcard = write("wild.toml", slave("data_ip = \"0.0.0.0\"", &root));
    fails_with(&["slave", "--config", &wildcard], d, "data_ip = 0.0.0.0: ");
    fails_with(
        &["slave", "--config", &wildcard, "--check"],
        d,
        "data_ip = 0.0.0.0",
    );

    let foreign = write("foreign.toml", slave("data_ip = \"192.0.2.7\"", &root));
    fails_with(
        &["slave", "--config", &foreign],
        d,
        "data_ip = 192.0.2.7 is not an address of this host",
    );

    let missing = write("missing.toml", slave("", &d.join("not-mounted")));
    fails_with(
        &["slave", "--config", &missing],
        d,
        "does not exist: create it (is its disk mounted?), or set create_root = true",
    );
    assert!(!d.join("not-mounted").exists(), "nothing created");

    // Parse errors, bad values and a missing file, at start and with
    // --check: the TOML error's place and message, without its snippet.
    let unknown = write("unknown.toml", slave("bogus_field = 1", &root));
    let ports = write(
        "ports.toml",
        slave("passive_ports = \"40000-30000\"", &root),
    );
    for check in [false, true] {
        let with = |path: &str| {
            let mut a = vec!["slave", "--config"];
            a.push(if path.is_empty() { "absent.toml" } else { path });
            if check {
                a.push("--check");
            }
            a.into_iter().map(String::from).collect::<Vec<_>>()
        };
        let args = with(&unknown);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, d, "unknown field `bogus_field`");
        fails_with(&args, d, "line 4, column 1");
        let args = with(&ports);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, d, "invalid port range '40000-30000'");
        let args = with("");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        fails_with(&args, d, "No such file or directory");
    }

    let placeholder = write("placeholder.toml", "listen = \"127.0.0.1:0\"\n".into());
    fails_with(
        &["master", "--config", &placeholder],
        d,
        "link_key is the placeholder \"change-me\"",
    );
    fails_with(&["master"], d, "link_key is the placeholder");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap();
    let in_use = write(
        "in-use.toml",
        format!(
            "link_key = \"k\"\nlisten = \"{busy}\"\nlink_listen = \"127.0.0.1:0\"\nstore = \"{}\"\n{}",
            d.join("m.redb").display(),
            user_toml("a", "b")
        ),
    );
    fails_with(
        &["master", "--config", &in_use],
        d,
        &format!("listen {busy}: address already in use"),
    );
    // --check says it, as a warning: the running server may hold it.
    let (code, out, _) = run(&["master", "--config", &in_use, "--check"], d);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!("listen {busy} is in use now")),
        "{out}"
    );
    assert!(
        out.contains("warning: user a: plain-text password in the config"),
        "{out}"
    );

    fails_with(
        &[
            "cluster",
            "--listen",
            &busy.to_string(),
            "--data-dir",
            d.to_str().unwrap(),
        ],
        d,
        &format!("--listen {busy}: address already in use"),
    );
}

#[test]
fn check_accepts_the_example_configs_as_shipped() {
    let cwd = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (role, file) in [
        ("master", "master.example.toml"),
        ("slave", "slave.example.toml"),
    ] {
        let path = root.join(file);
        let (code, out, err) = run(
            &[role, "--config", path.to_str().unwrap(), "--check"],
            cwd.path(),
        );
        assert_eq!(code, Some(0), "{file}: {out}{err}");
        assert!(out.trim_end().ends_with(": ok"), "{out}");
    }
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "--check creates nothing"
    );
}

#[test]
fn the_default_user_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (mut proc, banner) = cluster(dir.path(), &["--slaves", "1", "--no-admin"]);
    assert!(banner.value("metrics: ").is_none(), "--no-admin");
    let file = dir.path().join("default-user.txt");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let password = banner.value("login: user dftpd password ").unwrap();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        format!("dftpd:{password}\n")
    );
    send_signal(&proc.0, "INT");
    assert_eq!(wait_exit(&mut proc.0, 30).and_then(|s| s.code()), Some(0));

    // A file left world-readable by an older version is closed on start.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (_proc, again) = cluster(dir.path(), &["--slaves", "1", "--no-admin"]);
    assert_eq!(
        again.value("login: user dftpd password ").unwrap(),
        password
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn every_command_line_option_has_a_description() {
    let cwd = tempfile::tempdir().unwrap();
    for sub in ["cluster", "master", "slave", "hash-password"] {
        let (code, out, _) = run(&[sub, "--help"], cwd.path());
        assert_eq!(code, Some(0));
        let lines: Vec<&str> = out.lines().collect();
        let mut options = 0;
        for (i, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with('-') {
                continue;
            }
            options += 1;
            // `  --flag <VALUE>  Description`, or the description on the
            // next line (clap's long layout).
            let same_line = line
                .trim_start()
                .split_once("  ")
                .is_some_and(|(_, d)| !d.trim().is_empty());
            let next_line = lines.get(i + 1).is_some_and(|n| {
                let n = n.trim_start();
                !n.is_empty() && !n.starts_with('-')
            });
            assert!(same_line || next_line, "{sub}: undocumented option: {line}");
        }
        assert!(options >= 2, "{sub}: {out}");
    }
    let (_, out, _) = run(&["master", "--help"], cwd.path());
    assert!(
        out.contains("--config <FILE>") && out.contains("--check"),
        "{out}"
    );
}

#[test]
fn systemd_is_told_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let rx = UnixDatagram::bind(&socket).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let log = dir.path().join("stderr.log");
    let user = format!("{USER}:{PASS}");
    let mut child = Command::new(bin())
        .args(["cluster", "--listen", "127.0.0.1:0", "--slaves", "1"])
        .args(["--user", &user, "--data-dir"])
        .arg(dir.path())
        .env("NOTIFY_SOCKET", &socket)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    read_banner(&mut child, "cluster ready: ftp://", &log);
    let mut proc = KillOnDrop(child);
    let mut buf = [0u8; 512];
    let mut next = || {
        let n = rx.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = next();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("MAINPID={}", proc.0.id())),
        "{ready}"
    );
    send_signal(&proc.0, "TERM");
    let stopping = next();
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    assert_eq!(wait_exit(&mut proc.0, 30).and_then(|s| s.code()), Some(0));
}

#[test]
fn site_who_shows_a_relayed_transfer_and_kick_ends_sessions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("slave-1")).unwrap();
    std::fs::write(
        dir.path().join("slave-1/big.bin"),
        random_bytes(16 << 20, 3),
    )
    .unwrap();
    let user = format!("{USER}:{PASS}");
    let (_proc, banner) = cluster(dir.path(), &["--user", &user, "--slaves", "1"]);
    let addr: SocketAddr = banner
        .value("cluster ready: ftp://")
        .unwrap()
        .parse()
        .unwrap();
    let mut admin = RawFtp::connect(addr);
    admin.login();
    // A download without PRET: relayed by the master (the cluster's
    // default), read slowly.
    let mut down = RawFtp::connect(addr);
    down.login();
    assert!(down.cmd("TYPE I").starts_with("200"));
    let (_, data) = down.pasv();
    let mut d = TcpStream::connect(data).unwrap();
    assert!(down.cmd("RETR big.bin").starts_with("150"));
    let mut buf = vec![0u8; 1 << 20];
    d.read_exact(&mut buf).unwrap();
    let who = admin.cmd("SITE WHO");
    let line = who
        .lines()
        .find(|l| l.contains("RETR /big.bin on slave-1"))
        .unwrap_or_else(|| panic!("{who}"));
    assert!(
        line.contains(" bytes/s") && line.contains(" from 127.0.0.1:"),
        "{line}"
    );
    let id = line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches('#')
        .to_string();
    // An idle session of the same user, and the kick of both.
    let mut other = RawFtp::connect(addr);
    other.login();
    let kicked = admin.cmd(&format!("SITE KICK {id}"));
    assert!(kicked.starts_with("200 Kicked 1 session"), "{kicked}");
    let fin = down.read_reply();
    assert!(fin.starts_with("426"), "the transfer is cancelled: {fin}");
    assert_eq!(down.read_reply(), "421 Disconnected by an administrator");
    let all = admin.cmd(&format!("SITE KICK {USER}"));
    assert!(
        all.starts_with("200 Kicked 1 session"),
        "only the other one: {all}"
    );
    assert_eq!(other.read_reply(), "421 Disconnected by an administrator");
    assert!(admin.cmd("NOOP").starts_with("200"), "the admin stays");
    drop(d);
}

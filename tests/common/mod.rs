//! Test harness: starts the real `dftpd` binary on loopback (each test its
//! own data directory and ports), runs real clients against it, and offers a
//! minimal raw FTP client for exact protocol assertions.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const USER: &str = "u";
pub const PASS: &str = "p";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dftpd")
}

/// A running `dftpd cluster` process, killed on drop.
pub struct ClusterProc {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stderr_path: PathBuf,
}

impl ClusterProc {
    /// Starts a cluster with `extra` flags; `seed` may put files on slave
    /// disks first (called with the data directory).
    pub fn start_with(extra: &[&str], seed: impl FnOnce(&Path)) -> ClusterProc {
        let dir = tempfile::tempdir().expect("tempdir");
        seed(dir.path());
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        // `extra` may name its own address.
        let listen: &[&str] = if extra.contains(&"--listen") {
            &[]
        } else {
            &["--listen", "127.0.0.1:0"]
        };
        let mut child = Command::new(bin())
            .arg("cluster")
            .args(listen)
            .args(["--user", &format!("{USER}:{PASS}")])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("DFTPD_LOG", "dftpd=debug")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn dftpd");
        let addr = wait_ready(&mut child, "cluster ready: ftp://", &stderr_path);
        ClusterProc {
            child,
            addr,
            dir,
            stderr_path,
        }
    }

    pub fn start(extra: &[&str]) -> ClusterProc {
        Self::start_with(extra, |_| {})
    }

    pub fn url(&self, path: &str) -> String {
        format!("ftp://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn slave_root(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("slave-{n}"))
    }

    /// Which slave (1-based) holds `rel` on its disk.
    pub fn holders(&self, rel: &str) -> Vec<usize> {
        (1..=3)
            .filter(|n| self.slave_root(*n).join(rel).is_file())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn raw(&self) -> RawFtp {
        let mut c = RawFtp::connect(self.addr);
        c.login();
        c
    }
}

impl Drop for ClusterProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads the child's stdout until a line starting with `marker`; returns the
/// address that follows it. Panics (test failure) after 60 s.
pub fn wait_ready(child: &mut Child, marker: &str, stderr: &Path) -> SocketAddr {
    wait_line(child, marker, stderr)
        .parse()
        .expect("address in ready line")
}

/// Reads the child's stdout until a line starting with `marker`; returns the
/// first word after it.
pub fn wait_line(child: &mut Child, marker: &str, stderr: &Path) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    let wanted = marker.to_string();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(rest) = line.strip_prefix(&wanted) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => panic!(
            "dftpd did not print '{marker}' in time; stderr:\n{}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        ),
    }
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    // xorshift: reproducible content without a dependency.
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl must be installed (see .ci/run)")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The server replies curl printed with -v ("< 227 ..." lines).
pub fn replies(verbose: &str) -> Vec<String> {
    verbose
        .lines()
        .filter_map(|l| l.strip_prefix("< "))
        .map(str::to_string)
        .collect()
}

/// The IP of a 227 reply text.
pub fn pasv_ip(reply: &str) -> Option<String> {
    let inner = reply.split('(').nth(1)?.split(')').next()?;
    let parts: Vec<&str> = inner.split(',').collect();
    (parts.len() == 6).then(|| parts[..4].join("."))
}

pub fn pasv_addr(reply: &str) -> Option<SocketAddr> {
    let inner = reply.split('(').nth(1)?.split(')').next()?;
    let n: Vec<u16> = inner
        .split(',')
        .filter_map(|p| p.trim().parse().ok())
        .collect();
    if n.len() != 6 {
        return None;
    }
    let ip = format!("{}.{}.{}.{}", n[0], n[1], n[2], n[3]);
    format!("{ip}:{}", n[4] * 256 + n[5]).parse().ok()
}

/// A deliberately small FTP client: one command, one reply, no cleverness.
pub struct RawFtp {
    stream: BufReader<TcpStream>,
}

impl RawFtp {
    pub fn connect(addr: SocketAddr) -> RawFtp {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = RawFtp {
            stream: BufReader::new(s),
        };
        let greeting = c.read_reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        c
    }

    pub fn login(&mut self) {
        assert!(self.cmd(&format!("USER {USER}")).starts_with("331"));
        let r = self.cmd(&format!("PASS {PASS}"));
        assert!(r.starts_with("230"), "{r}");
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).expect("write");
    }

    /// Sends a command; returns the whole reply (all lines, '\n'-joined).
    pub fn cmd(&mut self, line: &str) -> String {
        self.send_raw(format!("{line}\r\n").as_bytes());
        self.read_reply()
    }

    pub fn read_reply(&mut self) -> String {
        let mut lines = Vec::new();
        let mut first = String::new();
        self.stream.read_line(&mut first).expect("read reply");
        let first = first.trim_end().to_string();
        if first.len() >= 4 && first.as_bytes()[3] == b'-' {
            let code = &first[..3];
            lines.push(first.clone());
            loop {
                let mut l = String::new();
                if self.stream.read_line(&mut l).unwrap_or(0) == 0 {
                    break;
                }
                let l = l.trim_end().to_string();
                let end = l.starts_with(code) && l.as_bytes().get(3) == Some(&b' ');
                lines.push(l);
                if end {
                    break;
                }
            }
            return lines.join("\n");
        }
        first
    }

    /// PASV (after an optional PRET); returns the data address.
    pub fn pasv(&mut self) -> (String, SocketAddr) {
        let r = self.cmd("PASV");
        assert!(r.starts_with("227"), "{r}");
        let a = pasv_addr(&r).expect("227 address");
        (r, a)
    }

    /// RETR over an already opened passive address.
    pub fn retr(&mut self, path: &str, data: SocketAddr) -> (String, Vec<u8>, String) {
        let mut d = TcpStream::connect(data).expect("data connect");
        let prelim = self.cmd(&format!("RETR {path}"));
        let mut buf = Vec::new();
        if prelim.starts_with("150") {
            d.read_to_end(&mut buf).expect("read data");
            let fin = self.read_reply();
            return (prelim, buf, fin);
        }
        (prelim, buf, String::new())
    }

    pub fn stor(&mut self, path: &str, data: SocketAddr, bytes: &[u8]) -> (String, String) {
        let mut d = TcpStream::connect(data).expect("data connect");
        let prelim = self.cmd(&format!("STOR {path}"));
        if !prelim.starts_with("150") {
            return (prelim, String::new());
        }
        d.write_all(bytes).expect("write data");
        drop(d);
        (prelim, self.read_reply())
    }
}

/// A TCP connection from another loopback address (`127.0.0.2`, ...): a
/// foreign peer, for port stealing and per-address limits (std has no
/// bind-before-connect; tokio's TcpSocket does).
pub fn connect_from(src: &str, to: std::net::SocketAddr) -> std::net::TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt
        .block_on(async {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(format!("{src}:0").parse().unwrap())?;
            sock.connect(to).await
        })
        .expect("connect from a foreign loopback address");
    let std = stream.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std
}

/// A field of `/proc/PID/status` in KiB (`VmRSS`, `VmHWM`).
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A loopback port free right now (for configs that need fixed ports
/// across a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

// --- FTPS (tests/tls.rs) ----------------------------------------------------

impl ClusterProc {
    /// `dftpd cluster --tls` with `extra` flags.
    pub fn start_tls(extra: &[&str]) -> ClusterProc {
        let mut args = vec!["--tls"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// The cluster certificate made by `--tls`.
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.path().join("tls/cert.pem")
    }
}

/// curl for FTPS against a `--tls` cluster: TLS required, PRET, the 227
/// address trusted, the self-signed certificate accepted.
pub fn curl_ftps(args: &[&str]) -> Output {
    let mut all = vec![
        "--ftp-ssl-reqd",
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-k",
        "-u",
    ];
    let login = format!("{USER}:{PASS}");
    all.push(&login);
    all.extend_from_slice(args);
    curl(&all)
}

/// Runs a Python 3 script with `args`; panics with its output if it fails.
pub fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 must be installed");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "python failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    stdout
}

/// Polls `f` every 25 ms for up to 10 s (a condition another process brings
/// about: a log line, a slave joining).
pub fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    false
}

/// `dftpd ROLE --config CONFIG` (role `master` or `slave`) with stdout piped
/// (for the ready line: [`wait_line`]) and stderr appended to `log`, at
/// debug level (tests read the log).
pub fn spawn_config(role: &str, config: &Path, log: &Path) -> Child {
    let stderr = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(bin())
        .arg(role)
        .arg("--config")
        .arg(config)
        .env("DFTPD_LOG", "dftpd=debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn dftpd")
}

/// A child process killed (and reaped) when this goes out of scope.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// With suppaftp (plain or TLS, whatever `ftp` was opened with): PRET STOR
/// and an upload of `payload` as `name`, then PRET RETR and its download,
/// which must give the same bytes. Returns the PRET STOR reply.
pub async fn suppaftp_round_trip<T>(
    ftp: &mut suppaftp::tokio::ImplAsyncFtpStream<T>,
    name: &str,
    payload: &[u8],
) -> String
where
    T: suppaftp::tokio::TokioTlsStream + Send,
{
    use suppaftp::Status;
    let pret = ftp
        .custom_command(format!("PRET STOR {name}"), &[Status::CommandOk])
        .await
        .expect("PRET STOR");
    let mut reader = std::io::Cursor::new(payload.to_vec());
    let n = ftp
        .put_file(name, &mut tokio::io::BufReader::new(&mut reader))
        .await
        .expect("STOR");
    assert_eq!(n, payload.len() as u64);
    ftp.custom_command(format!("PRET RETR {name}"), &[Status::CommandOk])
        .await
        .expect("PRET RETR");
    let mut stream = ftp.retr_as_stream(name).await.expect("RETR");
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got)
        .await
        .unwrap();
    ftp.finalize_retr_stream(stream).await.expect("226");
    assert!(got == payload, "downloaded bytes differ");
    text(&pret.body).trim_end().to_string()
}

/// Runs lftp in debug mode against `addr` with the test user and `script`;
/// panics with its output unless it succeeds. Returns that output (the
/// protocol exchange: `---> CMD`, `<--- reply`).
pub fn lftp(addr: SocketAddr, script: &str) -> String {
    let out = Command::new("lftp")
        .args(["-d", "-u", &format!("{USER},{PASS}"), "-e", script])
        .arg(format!("127.0.0.1:{}", addr.port()))
        .output()
        .expect("lftp must be installed (see .ci/run)");
    let log = text(&out.stderr) + &text(&out.stdout);
    assert!(out.status.success(), "lftp failed:\n{log}");
    log
}

// --- Operations (tests/operations.rs) ----------------------------------------

/// The stdout lines of a child up to (and with) the first starting with
/// `marker`; later lines arrive on `rest`.
pub struct Banner {
    pub lines: Vec<String>,
    pub rest: mpsc::Receiver<String>,
}

impl Banner {
    /// The first word after `prefix` in a banner line.
    pub fn value(&self, prefix: &str) -> Option<String> {
        self.lines.iter().find_map(|l| {
            l.strip_prefix(prefix)
                .and_then(|r| r.split_whitespace().next())
                .map(str::to_string)
        })
    }

    /// Waits up to `secs` for a later stdout line starting with `prefix`.
    pub fn wait_for(&self, prefix: &str, secs: u64) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.rest.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Reads the child's stdout until a line starting with `marker` (60 s at
/// most, else the test fails with `stderr`'s content).
pub fn read_banner(child: &mut Child, marker: &str, stderr: &Path) -> Banner {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => {
                let done = l.starts_with(marker);
                lines.push(l);
                if done {
                    return Banner { lines, rest: rx };
                }
            }
            Err(_) => panic!(
                "dftpd did not print '{marker}' in time; stdout so far: {lines:?}; stderr:\n{}",
                std::fs::read_to_string(stderr).unwrap_or_default()
            ),
        }
    }
}

/// Sends the signal named `sig` (`"HUP"`, `"TERM"`, `"INT"`, ...) to the
/// child, as `kill -SIG pid` would.
pub fn send_signal(child: &Child, sig: &str) {
    use nix::sys::signal::{kill, Signal};
    let signal: Signal = format!("SIG{sig}").parse().expect("a signal name");
    kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).expect("kill");
}

/// Waits up to `secs` for the child to exit.
pub fn wait_exit(child: &mut Child, secs: u64) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    None
}

/// A plain HTTP/1.1 GET; returns the status code and the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the admin listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("read the answer");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {raw:?}"));
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample `name` (with its labels, e.g.
/// `dftpd_sessions` or `x{a="b"}`) in a Prometheus text exposition.
pub fn metric(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (n, v) = l.rsplit_once(' ')?;
        (n == name).then(|| v.parse().ok())?
    })
}

/// The link key of a [`Site`].
pub const SITE_KEY: &str = "sec-key";

/// A master and slave processes, each from its own config file (`dftpd
/// master --config`, `dftpd slave --config`) under one temporary directory.
pub struct Site {
    pub dir: tempfile::TempDir,
    pub control: SocketAddr,
    pub link: SocketAddr,
    master: KillOnDrop,
    /// Slave processes by name.
    slaves: Vec<(String, KillOnDrop)>,
}

impl Site {
    /// A master whose config is the site's addresses, store and key, then
    /// `extra` (users, `[replication]`, ...; it accepts new slave names).
    pub fn start(extra: &str) -> Site {
        Site::start_accepting(true, extra)
    }

    /// [`Site::start`]; `accept_new_slaves` as given.
    pub fn start_accepting(accept_new_slaves: bool, extra: &str) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.path().join("master.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"{control}\"\nlink_listen = \"{link}\"\nlink_key = \"{SITE_KEY}\"\naccept_new_slaves = {accept_new_slaves}\n\
                 passive_ports = \"0\"\nstore = \"{}\"\n{extra}",
                dir.path().join("master.redb").display()
            ),
        )
        .unwrap();
        let log = dir.path().join("master.log");
        let mut child = spawn_config("master", &cfg, &log);
        wait_line(&mut child, "master ready on", &log);
        Site {
            dir,
            control,
            link,
            master: KillOnDrop(child),
            slaves: Vec::new(),
        }
    }

    /// Starts slave `name` on data address `ip`, its root under the site's
    /// directory (`seed` fills it first), and waits until it is ready.
    pub fn add_slave(&mut self, name: &str, ip: &str, seed: impl FnOnce(&Path)) {
        self.add_slave_with(name, ip, "", seed)
    }

    /// [`Site::add_slave`] with `extra` appended to the slave's config.
    pub fn add_slave_with(&mut self, name: &str, ip: &str, extra: &str, seed: impl FnOnce(&Path)) {
        let root = self.root(name);
        std::fs::create_dir_all(&root).unwrap();
        seed(&root);
        let cfg = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\nmaster = \"{}\"\nlink_key = \"{SITE_KEY}\"\nroot = \"{}\"\n\
                 data_ip = \"{ip}\"\npassive_ports = \"0\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n{extra}",
                self.link,
                root.display()
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = spawn_config("slave", &cfg, &log);
        wait_line(&mut child, &format!("{name} ready"), &log);
        self.slaves.push((name.to_string(), KillOnDrop(child)));
    }

    /// Starts slave `name` and expects the master to refuse it: a line
    /// saying so (with the reason) in both logs within 20 s.
    pub fn add_slave_refused(&mut self, name: &str, ip: &str) -> String {
        let root = self.root(name);
        std::fs::create_dir_all(&root).unwrap();
        let cfg = self.dir.path().join(format!("{name}-again.toml"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"{name}\"\nmaster = \"{}\"\nlink_key = \"{SITE_KEY}\"\nroot = \"{}\"\n\
                 data_ip = \"{ip}\"\npassive_ports = \"0\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\n",
                self.link,
                root.display()
            ),
        )
        .unwrap();
        let log = self.dir.path().join(format!("{name}-again.log"));
        let child = spawn_config("slave", &cfg, &log);
        self.slaves
            .push((format!("{name}-again"), KillOnDrop(child)));
        let refused = wait_until(|| {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("the master refused this slave"))
                && self.log().contains("slave refused")
        });
        let slave_log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            refused,
            "no refusal in both logs:\n{slave_log}\n{}",
            self.log()
        );
        slave_log
    }

    /// kill -9 of slave `name` (reaped).
    pub fn kill_slave(&mut self, name: &str) {
        self.slaves.retain(|(n, _)| n != name);
    }

    /// Slave `name`'s storage root.
    pub fn root(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    pub fn slave_log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn raw(&self) -> RawFtp {
        RawFtp::connect(self.control)
    }

    pub fn master_pid(&self) -> u32 {
        self.master.0.id()
    }
}

/// The recordings in `dir` once `want` sessions have ended (a recording is
/// complete when its session ends, a moment after the client exits).
pub fn finished_recordings(dir: &Path, want: usize) -> Vec<PathBuf> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| rd.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        // In session order: session-9 before session-10.
        files.sort_by_key(|f| (f.as_os_str().len(), f.clone()));
        let done = files.len() >= want
            && files.iter().all(|f| {
                std::fs::read_to_string(f).is_ok_and(|t| t.contains("# session ended at"))
            });
        if done {
            return files;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "recordings not finished: {files:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// rclone's on-the-fly remote for the cluster at `addr` as USER, rooted
/// at `dir` (empty: the top).
pub fn rclone_remote(addr: SocketAddr, dir: &str) -> String {
    let obscured = Command::new("rclone")
        .args(["obscure", PASS])
        .output()
        .expect("rclone must be installed (see .ci/run)");
    format!(
        ":ftp,host=127.0.0.1,port={},user={USER},pass={}:{dir}",
        addr.port(),
        text(&obscured.stdout).trim()
    )
}

/// Runs rclone with `args`, which must succeed; returns its stderr (where
/// rclone reports, e.g. `check`'s differences).
pub fn rclone(args: &[&str]) -> String {
    let out = Command::new("rclone").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "rclone {args:?}:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

/// Raw control connection, upgraded with Python's `ssl` at AUTH: sends each
/// argument as a command line (`!TLS` does the handshake, `!PIPE a|b` sends
/// two lines in one write) and prints one reply per command.
pub const RAW_TLS: &str = r#"
import socket, ssl, sys
host, port = sys.argv[1], int(sys.argv[2])
sock = socket.create_connection((host, port), timeout=20)
f = sock.makefile('rb')
def reply():
    line = f.readline().decode().rstrip('\r\n')
    if len(line) > 3 and line[3] == '-':
        code = line[:3]
        while True:
            more = f.readline().decode().rstrip('\r\n')
            line += '|' + more
            if more.startswith(code + ' ') or not more:
                break
    return line
print(reply())
for cmd in sys.argv[3:]:
    if cmd == '!TLS':
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname=host)
        f = sock.makefile('rb')
        print('TLS', sock.version())
        continue
    if cmd.startswith('!PIPE '):
        lines = cmd[6:].split('|')
        sock.sendall(b''.join(l.encode() + b'\r\n' for l in lines))
        print(cmd, '->', reply())
        continue
    sock.sendall(cmd.encode() + b'\r\n')
    print(cmd, '->', reply())
"#;

//! Races and failures with real processes (issue 13, case 12): a master and
//! three slave processes; six clients overwrite (STOR, APPE), rename,
//! delete and read twenty shared names at once while slaves are killed
//! (`kill -9`, then restarted) and stopped (`SIGSTOP`, then continued) now
//! and then. Every reply is recorded with the real times of its command and
//! final reply; at the end, with every slave back, each one is held
//! against what is finally stored (the simulator's history check,
//! `dftpd_sim::history`): a 226 RETR read a version current during it, an
//! acknowledged delete or rename stays, an acknowledged write is not lost,
//! and no slave keeps another content under a listed name.
//!
//! `DFTPD_RACES_SECS` sets how long the clients run (default 30).

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, random_bytes, spawn_config, wait_line, KillOnDrop, RawFtp, PASS, USER};
use dftpd_sim::history::{Effect, History, Op, Status};

const SLAVES: usize = 3;
const NAMES: usize = 20;
const CLIENTS: usize = 6;

/// An operation as a client thread saw it (`Send` data; made into a
/// history `Op` at the end).
struct Seen {
    client: usize,
    path: String,
    kind: Kind,
    start: Duration,
    end: Duration,
    status: Status,
}

enum Kind {
    Write(Vec<u8>, Option<u64>),
    Delete,
    RenameTo(String),
    Read(Vec<u8>),
}

struct Site {
    dir: PathBuf,
    control: SocketAddr,
    link: SocketAddr,
    slaves: Vec<Option<KillOnDrop>>,
    _master: KillOnDrop,
}

impl Site {
    fn slave_cfg(&self, n: usize) -> PathBuf {
        self.dir.join(format!("s{n}.toml"))
    }

    fn root(&self, n: usize) -> PathBuf {
        self.dir.join(format!("s{n}"))
    }

    fn start_slave(&mut self, n: usize) {
        let log = self.dir.join(format!("s{n}.log"));
        let mut child = spawn_config("slave", &self.slave_cfg(n), &log);
        wait_line(&mut child, &format!("s{n} ready"), &log);
        self.slaves[n] = Some(KillOnDrop(child));
    }

    fn start(dir: &Path) -> Site {
        let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let cfg = dir.join("master.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"{control}\"\nlink_listen = \"{link}\"\nlink_key = \"k-races\"\naccept_new_slaves = true\n\
                 store = \"{}\"\npassive_ports = \"0\"\nallow_overwrite = true\n\
                 heartbeat_interval_ms = 300\nheartbeat_misses = 3\ndata_timeout_ms = 3000\n\
                 commit_wait_ms = 3000\n\
                 [guard]\nmax_sessions_per_ip = 100\n\
                 [[users]]\nname = \"{USER}\"\npassword = \"{PASS}\"\nadmin = true\n",
                dir.join("master.redb").display()
            ),
        )
        .unwrap();
        let log = dir.join("master.log");
        let mut child = spawn_config("master", &cfg, &log);
        wait_line(&mut child, "master ready on", &log);
        let mut site = Site {
            dir: dir.to_path_buf(),
            control,
            link,
            slaves: (0..SLAVES).map(|_| None).collect(),
            _master: KillOnDrop(child),
        };
        for n in 0..SLAVES {
            std::fs::write(
                site.slave_cfg(n),
                format!(
                    "name = \"s{n}\"\nmaster = \"{}\"\nlink_key = \"k-races\"\nroot = \"{}\"\n\
                     data_ip = \"127.0.0.{}\"\npassive_ports = \"0\"\ncreate_root = true\n\
                     heartbeat_interval_ms = 300\nheartbeat_misses = 3\n\
                     reconnect_min_ms = 100\nreconnect_max_ms = 400\n",
                    site.link,
                    site.root(n).display(),
                    70 + n
                ),
            )
            .unwrap();
            site.start_slave(n);
        }
        site
    }

    fn online(&self) -> usize {
        let mut c = RawFtp::connect(self.control);
        c.login();
        c.cmd("SITE SLAVES")
            .lines()
            .filter(|l| l.contains(" online "))
            .count()
    }
}

/// A client that never hangs for long: every read and write times out.
struct Client {
    c: RawFtp,
}

fn data_conn(addr: SocketAddr) -> Option<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(s)
}

impl Client {
    fn connect(addr: SocketAddr) -> Option<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).ok()?;
        drop(s);
        let mut c = RawFtp::connect(addr);
        c.login();
        Some(Client { c })
    }

    /// PRET + PASV for `line`; the data address.
    fn plan(&mut self, line: &str) -> Option<SocketAddr> {
        if !self.c.cmd(&format!("PRET {line}")).starts_with("200") {
            return None;
        }
        let r = self.c.cmd("PASV");
        common::pasv_addr(&r)
    }

    /// An upload (`verb` STOR or APPE): the final reply, `None` when the
    /// command was refused before any transfer.
    fn upload(&mut self, verb: &str, path: &str, data: &[u8]) -> Option<String> {
        let line = format!("{verb} {path}");
        let addr = self.plan(&line)?;
        let mut d = data_conn(addr)?;
        let first = self.c.cmd(&line);
        if !first.starts_with("150") {
            return Some(first);
        }
        let _ = d.write_all(data);
        drop(d);
        Some(self.c.read_reply())
    }

    fn download(&mut self, path: &str) -> Option<(String, Vec<u8>)> {
        let line = format!("RETR {path}");
        let addr = self.plan(&line)?;
        let mut d = data_conn(addr)?;
        let first = self.c.cmd(&line);
        if !first.starts_with("150") {
            return Some((first, Vec::new()));
        }
        let mut got = Vec::new();
        let read = d.read_to_end(&mut got);
        let fin = self.c.read_reply();
        if read.is_err() {
            return Some((format!("data: {fin}"), Vec::new()));
        }
        Some((fin, got))
    }
}

fn status(reply: Option<&str>) -> Status {
    match reply {
        Some(r) if r.starts_with("226") || r.starts_with("250") => Status::Done,
        Some(r) if r.contains("outcome unknown") => Status::Maybe,
        Some(_) => Status::Failed,
        None => Status::Maybe,
    }
}

fn worker(
    id: usize,
    control: SocketAddr,
    t0: Instant,
    until: Instant,
    seen: Arc<Mutex<Vec<Seen>>>,
) {
    let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((id as u64 + 1) * 0x1234_5678);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut client = None;
    let mut serial = 0u64;
    while Instant::now() < until {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match std::panic::catch_unwind(|| Client::connect(control)) {
                Ok(Some(c)) => client.insert(c),
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            },
        };
        let name = format!("/n{}", next() % NAMES as u64);
        let start = t0.elapsed();
        let choice = next() % 10;
        serial += 1;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match choice {
            0..=2 => {
                let data = random_bytes(
                    1000 + (next() % 40_000) as usize,
                    (id as u64) << 32 | serial,
                );
                let r = c.upload("STOR", &name, &data);
                r.map(|r| (Kind::Write(data, None), r))
            }
            3 | 4 => {
                let data = random_bytes(100 + (next() % 5000) as usize, (id as u64) << 40 | serial);
                let r = c.upload("APPE", &name, &data);
                r.map(|r| (Kind::Write(data, Some(u64::MAX)), r))
            }
            5 => {
                let to = format!("/n{}", next() % NAMES as u64);
                if !c.c.cmd(&format!("RNFR {name}")).starts_with("350") {
                    return None;
                }
                let r = c.c.cmd(&format!("RNTO {to}"));
                Some((Kind::RenameTo(to), r))
            }
            6 => Some((Kind::Delete, c.c.cmd(&format!("DELE {name}")))),
            _ => c.download(&name).map(|(r, got)| (Kind::Read(got), r)),
        }));
        let end = t0.elapsed();
        match outcome {
            Ok(Some((kind, reply))) => {
                // An unfinished read proves nothing.
                if matches!(kind, Kind::Read(_)) && !reply.starts_with("226") {
                    continue;
                }
                seen.lock().unwrap().push(Seen {
                    client: id,
                    path: name,
                    kind,
                    start,
                    end,
                    status: status(Some(&reply)),
                });
            }
            Ok(None) => {}
            Err(_) => {
                // The control connection broke mid-command: the outcome of
                // a change is unknown; start a new session.
                client = None;
            }
        }
    }
}

fn kill(child: &KillOnDrop, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([signal, &child.0.id().to_string()])
        .status();
}

#[test]
fn overwrites_renames_and_deletes_racing_under_slave_failures() {
    let secs: u64 = std::env::var("DFTPD_RACES_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let tmp = tempfile::tempdir().unwrap();
    let mut site = Site::start(tmp.path());
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(secs);
    let seen: Arc<Mutex<Vec<Seen>>> = Default::default();
    let workers: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let seen = seen.clone();
            let control = site.control;
            std::thread::spawn(move || worker(id, control, t0, until, seen))
        })
        .collect();
    // Failures now and then: a slave killed and restarted, or stopped and
    // continued.
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(3) < until {
        std::thread::sleep(Duration::from_millis(1500));
        round += 1;
        let n = round % SLAVES;
        if round.is_multiple_of(2) {
            if let Some(child) = site.slaves[n].take() {
                drop(child); // kill -9 and reap
            }
            std::thread::sleep(Duration::from_millis(300));
            site.start_slave(n);
        } else if let Some(child) = site.slaves[n].as_ref() {
            kill(child, "-STOP");
            std::thread::sleep(Duration::from_millis(1200));
            kill(child, "-CONT");
        }
    }
    for w in workers {
        w.join().unwrap();
    }
    // Quiescence: every slave back and remerged.
    let back = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        site.online() == SLAVES
    });
    assert!(back, "slaves did not all come back online");
    std::thread::sleep(Duration::from_millis(1000));
    let end = t0.elapsed();

    // What is finally stored: every listed name, read back.
    let mut c = Client::connect(site.control).unwrap();
    let mut final_state = BTreeMap::new();
    for i in 0..NAMES {
        let name = format!("/n{i}");
        let size = c.c.cmd(&format!("SIZE {name}"));
        if !size.starts_with("213") {
            final_state.insert(name, None);
            continue;
        }
        let (r, got) = c.download(&name).expect("download of a listed file");
        assert!(
            r.starts_with("226"),
            "{name} is listed but RETR answers {r}"
        );
        final_state.insert(name, Some(Rc::new(got)));
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let acked = seen.iter().filter(|s| s.status == Status::Done).count();
    let ops: Vec<Op> = seen
        .into_iter()
        .map(|s| Op {
            client: format!("client {}", s.client),
            path: s.path,
            effect: match s.kind {
                Kind::Write(d, offset) => Effect::Write {
                    data: Rc::new(d),
                    offset,
                },
                Kind::Delete => Effect::Delete,
                Kind::RenameTo(to) => Effect::RenameTo(to),
                Kind::Read(d) => Effect::Read {
                    data: Rc::new(d),
                    offset: 0,
                },
            },
            start: s.start,
            end: s.end,
            status: s.status,
        })
        .collect();
    let total = ops.len();
    let history = History::new(ops, BTreeMap::new());
    let mut violations = history.check(end, true, &final_state);
    // No slave keeps another content under a listed name, or a name the
    // master does not list.
    for n in 0..SLAVES {
        for i in 0..NAMES {
            let name = format!("/n{i}");
            let on_disk = std::fs::read(site.root(n).join(&name[1..])).ok();
            let listed = final_state.get(&name).cloned().flatten();
            match (on_disk, listed) {
                (None, _) => {}
                (Some(d), Some(l)) if d == *l => {}
                (Some(d), l) => violations.push(format!(
                    "slave s{n} keeps {name} ({} bytes), the master lists {}",
                    d.len(),
                    l.map_or("nothing".into(), |l| format!("{} bytes", l.len()))
                )),
            }
        }
    }
    eprintln!(
        "{total} operations, {acked} acknowledged, {} violations",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{} violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
}

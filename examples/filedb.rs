//! File-database benchmark (run by bench/bench.py): builds a master's
//! database from slave remerges of N files, reports the master's RSS, then
//! measures PRET planning latency (p99, lock wait included) while another
//! slave remerges its full list through the same lock, as a rejoining slave
//! does.
//!
//! `cargo run --release --example filedb -- --files 10000000`

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use dftpd::config::{MasterConfig, UserConfig};
use dftpd::link::{RemoteFile, REMERGE_CHUNK};
use dftpd::master::lock;
use dftpd::master::registry::SlaveState;
use dftpd::master::remerge::{remerge_chunk, remerge_sweep};
use dftpd::master::session::{Action, Session};
use dftpd::master::MasterState;
use dftpd::proto::{Command, VPath};

const SLAVES: usize = 3;

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn path(i: usize) -> VPath {
    VPath::parse_absolute(&format!("/site/dir{:05}/release-{i:08}.rar", i / 1000)).unwrap()
}

fn files_of(slave: usize, n: usize) -> impl Iterator<Item = RemoteFile> {
    (slave..n).step_by(SLAVES).map(|i| RemoteFile {
        path: path(i),
        size: 15_000_000 + i as u64 % 1000,
        mtime: 1_700_000_000,
        version: None,
    })
}

/// Remerges `slave` chunk by chunk, taking the lock per chunk like the link
/// task. Returns the longest time it held the lock (microseconds): the
/// longest any session can wait behind a remerge.
fn remerge(state: &Mutex<MasterState>, slave: usize, n: usize) -> u128 {
    let mut worst = 0u128;
    let id = lock(state).slaves.id_for(&format!("slave-{}", slave + 1));
    let mut seen = BTreeSet::new();
    let all: Vec<RemoteFile> = files_of(slave, n).collect();
    for chunk in all.chunks(REMERGE_CHUNK) {
        let mut guard = lock(state);
        let held = Instant::now();
        remerge_chunk(&mut guard, id, chunk.to_vec(), &mut seen);
        // The slave applies the stamps the master logged for its files
        // and acknowledges them (a link would carry both), so the log
        // holds a chunk at most, as in a real remerge.
        if let Some(&(seq, _)) = guard.slaves.get(id).and_then(|s| s.log.back()) {
            guard.slaves.acked(id, seq);
        }
        worst = worst.max(held.elapsed().as_micros());
        drop(guard);
        // The link task awaits the next frame here; a bare loop would
        // re-take the (unfair) mutex at once and starve the sessions.
        std::thread::yield_now();
    }
    let mut cursor = None;
    loop {
        let mut guard = lock(state);
        let held = Instant::now();
        let (_, next) = remerge_sweep(&mut guard, id, &seen, cursor.as_ref());
        worst = worst.max(held.elapsed().as_micros());
        drop(guard);
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
        std::thread::yield_now();
    }
    worst
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--files")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = MasterConfig {
        users: vec![UserConfig {
            name: "u".into(),
            password: "p".into(),
            home: "/".into(),
            admin: false,
            ..Default::default()
        }],
        ..MasterConfig::default()
    };
    let state = Arc::new(Mutex::new(MasterState::new(Arc::new(config))));
    let before = rss_mb();
    let t0 = Instant::now();
    for s in 0..SLAVES {
        remerge(&state, s, n);
    }
    let build = t0.elapsed().as_secs_f64();
    {
        let mut st = lock(&state);
        let ids: Vec<_> = st.slaves.iter().map(|(i, _)| i).collect();
        for id in ids {
            let s = st.slaves.get_mut(id).unwrap();
            s.state = SlaveState::Online;
            s.free = 1 << 40;
        }
        assert_eq!(st.db.file_count() as usize, n);
    }
    let rss = rss_mb() - before;

    // PRET planning while slave-1 remerges again.
    let remerger = {
        let state = state.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            let worst = remerge(&state, 0, n);
            (t.elapsed().as_secs_f64(), worst)
        })
    };
    let mut session = Session::new(
        1,
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:21".parse().unwrap(),
    );
    {
        let mut st = lock(&state);
        session.handle(Command::parse("USER u").unwrap(), &mut st);
        let Action::CheckPassword(check) =
            session.handle(Command::parse("PASS p").unwrap(), &mut st)
        else {
            panic!("PASS must ask for a password check");
        };
        let ok = dftpd::master::users::verify_password(&check.hash, &check.password);
        let now = 0;
        let (reply, _) = session.login_result(&mut st, &check, ok, now);
        assert!(format!("{reply:?}").contains("230"), "{reply:?}");
    }
    let mut lat = Vec::new();
    let mut x: u64 = 88172645463325252;
    while !remerger.is_finished() || lat.len() < 10_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cmd = Command::parse(&format!("PRET RETR {}", path(x as usize % n))).unwrap();
        let t = Instant::now();
        let reply = {
            let mut st = lock(&state);
            session.handle(cmd, &mut st)
        };
        lat.push(t.elapsed().as_nanos() as u64);
        assert!(format!("{reply:?}").contains("200"), "{reply:?}");
        if lat.len() > 5_000_000 {
            break;
        }
    }
    let (remerge_s, worst_hold_us) = remerger.join().unwrap();
    lat.sort_unstable();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
    println!("files={n}");
    println!("build_s={build:.2}");
    println!("rss_mb={rss:.1}");
    println!("remerge_s={remerge_s:.2}");
    println!("pret_samples={}", lat.len());
    println!("pret_p50_us={:.2}", p(0.5));
    println!("pret_p99_us={:.2}", p(0.99));
    println!("pret_max_us={:.2}", p(1.0));
    println!("remerge_max_lock_hold_us={worst_hold_us}");
}

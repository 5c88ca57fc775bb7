//! Many simultaneous logins with the default (memory-hard) password cost:
//! the master verifies a bounded number of passwords at once, so its memory
//! stays bounded however many clients send PASS together (issue 13, case
//! 13: 400 concurrent logins once drove it to 7.5 GB).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{connect_from, proc_kib, ClusterProc, PASS, USER};

/// One login from `src`; true on 230.
fn login(src: &str, addr: std::net::SocketAddr, barrier: &Barrier) -> bool {
    let s = connect_from(src, addr);
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(format!("USER {USER}\r\n").as_bytes()).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    // Everybody sends PASS at the same moment.
    barrier.wait();
    w.write_all(format!("PASS {PASS}\r\n").as_bytes()).unwrap();
    line.clear();
    let _ = r.read_line(&mut line);
    line.starts_with("230")
}

#[test]
fn four_hundred_concurrent_logins_keep_the_master_small() {
    let c = ClusterProc::start(&[]);
    let pid = c.pid();
    // Warm up: one login, so the baseline includes one verification.
    assert!(login("127.0.0.2", c.addr, &Barrier::new(1)));
    let before = proc_kib(pid, "VmRSS");
    const N: usize = 400;
    let barrier = Arc::new(Barrier::new(N));
    let addr = c.addr;
    let threads: Vec<_> = (0..N)
        .map(|i| {
            let b = barrier.clone();
            // 100 addresses, 4 sessions each: under the per-address limit.
            let src = format!("127.0.1.{}", 2 + i % 100);
            std::thread::spawn(move || login(&src, addr, &b))
        })
        .collect();
    let ok = threads
        .into_iter()
        .map(|t| t.join().unwrap())
        .filter(|ok| *ok)
        .count();
    let peak = proc_kib(pid, "VmHWM");
    let after = proc_kib(pid, "VmRSS");
    eprintln!("RSS before {before} KiB, peak {peak} KiB, after {after} KiB, {ok} of {N} logged in");
    assert_eq!(ok, N, "every login succeeds");
    // Bounded verification: a few argon2 memories (19 MiB each) at once,
    // plus 400 idle sessions; 400 at once would be 7.6 GB.
    assert!(
        peak < before + 200 * 1024,
        "peak RSS grew by {} MiB",
        (peak - before) / 1024
    );
    assert!(
        after < before + 100 * 1024,
        "RSS after the logins grew by {} MiB",
        (after - before) / 1024
    );
}

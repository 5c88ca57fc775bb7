//! Pull the plug on the master: the real binaries as separate processes
//! (`dftpd master`, two `dftpd slave`), uploads in flight from real curl
//! clients, `kill -9` the master, start it again from the same store, and
//! check with real clients that every upload that got its 226 is listed
//! and downloads byte-identical, that nothing else is listed (no partial
//! file, no stray name), and that no partial upload is left on a slave.
//!
//! An upload cut by the kill may still be complete on its slave (the kill
//! can land after the slave committed it and before the client read its
//! 226); such a file may be listed, but only whole.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    curl, free_port, random_bytes, spawn_config, wait_line, KillOnDrop, RawFtp, PASS, USER,
};

/// Starts `dftpd master` (`what` begins with "master") or `dftpd slave`
/// from `config`, logging to DIR/WHAT.log, and waits for its ready line.
fn spawn(dir: &Path, what: &str, config: &Path, marker: &str) -> KillOnDrop {
    let log = dir.join(format!("{what}.log"));
    let role = if what.starts_with("master") {
        "master"
    } else {
        "slave"
    };
    let mut child = spawn_config(role, config, &log);
    wait_line(&mut child, marker, &log);
    KillOnDrop(child)
}

fn slaves_online(addr: SocketAddr) -> usize {
    let mut c = RawFtp::connect(addr);
    c.login();
    let r = c.cmd("SITE SLAVES");
    r.lines().filter(|l| l.contains(" online ")).count()
}

#[test]
fn kill_9_master_mid_uploads_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let link: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let store = dir.path().join("master.redb");
    let master_cfg = dir.path().join("master.toml");
    std::fs::write(
        &master_cfg,
        format!(
            "listen = \"{control}\"\nlink_listen = \"{link}\"\nlink_key = \"k-durability\"\naccept_new_slaves = true\n\
             store = \"{}\"\npassive_ports = \"0\"\n\
             [[users]]\nname = \"{USER}\"\npassword = \"{PASS}\"\nadmin = true\n",
            store.display()
        ),
    )
    .unwrap();
    let mut slaves = Vec::new();
    let mut master = spawn(dir.path(), "master", &master_cfg, "master ready on");
    for n in 1..=2 {
        let cfg = dir.path().join(format!("slave-{n}.toml"));
        let root = dir.path().join(format!("slave-{n}"));
        std::fs::write(
            &cfg,
            format!(
                "name = \"s{n}\"\nmaster = \"{link}\"\nlink_key = \"k-durability\"\n\
                 root = \"{}\"\ndata_ip = \"127.0.0.{}\"\npassive_ports = \"0\"\n\
                 reconnect_min_ms = 100\nreconnect_max_ms = 500\ncreate_root = true\n",
                root.display(),
                40 + n
            ),
        )
        .unwrap();
        let ready = format!("s{n} ready");
        slaves.push((spawn(dir.path(), &format!("slave-{n}"), &cfg, &ready), root));
    }

    // Four clients upload 1.5 MB files in turn at 1 MB/s each, until one
    // of their uploads fails (the kill).
    let payloads = dir.path().join("payloads");
    std::fs::create_dir(&payloads).unwrap();
    let outcomes: Arc<Mutex<BTreeMap<String, bool>>> = Default::default();
    let mut threads = Vec::new();
    for t in 0..4 {
        let outcomes = outcomes.clone();
        let payloads = payloads.clone();
        threads.push(std::thread::spawn(move || {
            for i in 0..20 {
                let name = format!("t{t}-{i}.bin");
                let local = payloads.join(&name);
                std::fs::write(&local, random_bytes(1_500_000, (t * 100 + i) as u64)).unwrap();
                let out = curl(&[
                    "--ftp-pret",
                    "--no-ftp-skip-pasv-ip",
                    "--limit-rate",
                    "1M",
                    "-u",
                    &format!("{USER}:{PASS}"),
                    "-T",
                    local.to_str().unwrap(),
                    &format!("ftp://{control}/{name}"),
                ]);
                let ok = out.status.success();
                outcomes.lock().unwrap().insert(name, ok);
                if !ok {
                    return;
                }
            }
        }));
    }
    // Meanwhile a fifth client makes directories as fast as it can: only
    // the store knows an empty directory, so every 257 must survive.
    let made: Arc<Mutex<Vec<String>>> = Default::default();
    let mkdirs = {
        let made = made.clone();
        std::thread::spawn(move || {
            let mut c = RawFtp::connect(control);
            c.login();
            for i in 0.. {
                let name = format!("d-{i}");
                let Ok(r) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    c.cmd(&format!("MKD {name}"))
                })) else {
                    return;
                };
                if !r.starts_with("257") {
                    return;
                }
                made.lock().unwrap().push(name);
            }
        })
    };
    std::thread::sleep(Duration::from_millis(3500));
    master.0.kill().unwrap(); // SIGKILL
    master.0.wait().unwrap();
    for t in threads {
        t.join().unwrap();
    }
    let _ = mkdirs.join();
    let made = made.lock().unwrap().clone();
    assert!(made.len() > 10, "the MKD client made only {made:?}");
    let outcomes = outcomes.lock().unwrap().clone();
    let acked: BTreeSet<&String> = outcomes
        .iter()
        .filter(|(_, ok)| **ok)
        .map(|(n, _)| n)
        .collect();
    let cut = outcomes.len() - acked.len();
    assert!(
        !acked.is_empty(),
        "no upload finished before the kill: {outcomes:?}"
    );
    assert!(
        cut >= 1,
        "no upload was in flight at the kill: {outcomes:?}"
    );

    // Same config, same store: the slaves come back by themselves.
    let _master = spawn(dir.path(), "master-2", &master_cfg, "master ready on");
    let start = Instant::now();
    while slaves_online(control) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "slaves did not rejoin; master log:\n{}",
            std::fs::read_to_string(dir.path().join("master-2.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let list = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &format!("{USER}:{PASS}"),
        "-l",
        &format!("ftp://{control}/"),
    ]);
    assert!(list.status.success(), "{list:?}");
    let listed: BTreeSet<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    for name in &acked {
        assert!(
            listed.contains(*name),
            "{name} got 226 but is not listed: {listed:?}"
        );
    }
    for d in &made {
        assert!(
            listed.contains(d),
            "MKD {d} got 257 but is gone after the restart"
        );
    }
    let made: BTreeSet<String> = made.into_iter().collect();
    for name in listed.iter().filter(|n| !n.starts_with("d-")) {
        assert!(
            outcomes.contains_key(name),
            "{name} listed but never uploaded"
        );
        let got = curl(&[
            "--ftp-pret",
            "--no-ftp-skip-pasv-ip",
            "-u",
            &format!("{USER}:{PASS}"),
            &format!("ftp://{control}/{name}"),
        ]);
        assert!(got.status.success(), "download of {name}: {got:?}");
        let want = std::fs::read(payloads.join(name)).unwrap();
        assert!(
            got.stdout == want,
            "{name}: downloaded bytes differ from the upload"
        );
    }
    // No partial upload left on any slave disk.
    for (_, root) in &slaves {
        let tmp = root.join(".dftpd-tmp");
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            left.is_empty(),
            "temporary files left in {}: {left:?}",
            tmp.display()
        );
        for e in std::fs::read_dir(root).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            assert!(
                n == ".dftpd-tmp" || listed.contains(&n) || made.contains(&n),
                "{n} on a slave disk, not listed"
            );
        }
    }
    eprintln!(
        "kill -9: {} uploads acknowledged, {cut} cut, {} directories made, {} names listed after restart",
        acked.len(),
        made.len(),
        listed.len()
    );
    drop(slaves);
}

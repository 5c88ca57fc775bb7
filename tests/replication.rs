//! Replication and the slave lifecycle with real processes (issue 15): a
//! master and three slave processes with `copies = 2`. A slave's disk dies
//! (kill -9, its directory deleted) and is removed with SITE DELSLAVE: every
//! file gets its second copy back, byte-identical on two disks, and
//! downloads. Then a new slave joins and another is drained: it ends
//! holding nothing the cluster needs, and every file still downloads once
//! it is gone.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{random_bytes, wait_until, RawFtp, Site};

const FILES: usize = 50;

fn config() -> String {
    "[replication]\ncopies = 2\n\
     [[users]]\nname = \"root\"\npassword = \"root-pw\"\nadmin = true\n"
        .to_string()
}

fn login(site: &Site) -> RawFtp {
    let mut c = site.raw();
    assert!(c.cmd("USER root").starts_with("331"));
    let r = c.cmd("PASS root-pw");
    assert!(r.starts_with("230"), "{r}");
    c
}

/// The slaves (of `names`) whose disk holds `rel` with exactly `data`.
fn holders(site: &Site, names: &[&str], rel: &str, data: &[u8]) -> Vec<String> {
    names
        .iter()
        .filter(|n| std::fs::read(site.root(n).join(rel)).is_ok_and(|d| d == data))
        .map(|n| n.to_string())
        .collect()
}

/// Waits (up to 60 s) until every file is on exactly the slaves `want`
/// allows: `check(holders)` true for each.
fn wait_for_copies(
    site: &Site,
    names: &[&str],
    files: &BTreeMap<String, Vec<u8>>,
    check: impl Fn(&[String]) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let bad: Vec<String> = files
            .iter()
            .filter_map(|(rel, data)| {
                let h = holders(site, names, rel, data);
                (!check(&h)).then(|| format!("{rel} on {h:?}"))
            })
            .collect();
        if bad.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} files not as expected: {:?}",
                bad.len(),
                &bad[..bad.len().min(5)]
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn download_all(c: &mut RawFtp, files: &BTreeMap<String, Vec<u8>>) {
    for (rel, data) in files {
        let r = c.cmd(&format!("PRET RETR /{rel}"));
        assert!(r.starts_with("200"), "PRET RETR /{rel}: {r}");
        let (_, addr) = c.pasv();
        let (prelim, got, fin) = c.retr(&format!("/{rel}"), addr);
        assert!(prelim.starts_with("150"), "{rel}: {prelim}");
        assert!(fin.starts_with("226"), "{rel}: {fin}");
        assert!(got == *data, "{rel}: other bytes downloaded");
    }
}

fn no_temp_left(root: &Path) {
    let tmp = root.join(".dftpd-tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "temporary files left in {}: {left:?}",
        root.display()
    );
}

#[test]
fn a_dead_disk_is_repaired_and_a_drained_slave_leaves_nothing_needed() {
    let mut site = Site::start(&config());
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        site.add_slave(name, &format!("127.0.0.{}", 81 + i), |_| {});
    }
    let mut c = login(&site);
    assert!(c.cmd("MKD /d").starts_with("257"));
    let mut files = BTreeMap::new();
    for i in 0..FILES {
        let rel = format!("d/f{i:02}.bin");
        let data = random_bytes(1_000 + i * 7_919, i as u64 + 1);
        assert!(c.cmd(&format!("PRET STOR /{rel}")).starts_with("200"));
        let (_, addr) = c.pasv();
        let (prelim, fin) = c.stor(&format!("/{rel}"), addr, &data);
        assert!(
            prelim.starts_with("150") && fin.starts_with("226"),
            "{rel}: {prelim} / {fin}"
        );
        files.insert(rel, data);
    }
    let all = ["s1", "s2", "s3"];
    wait_for_copies(&site, &all, &files, |h| h.len() == 2)
        .unwrap_or_else(|e| panic!("copies=2 after the uploads: {e}\n{}", site.log()));

    // s1's disk dies: kill -9, its directory gone; the admin removes it.
    site.kill_slave("s1");
    std::fs::remove_dir_all(site.root("s1")).unwrap();
    let r = c.cmd("SITE DELSLAVE s1");
    assert!(r.starts_with("200 Slave s1 removed"), "{r}");
    assert!(
        !r.contains("no other copy"),
        "every file had a second copy: {r}"
    );
    let left = ["s2", "s3"];
    wait_for_copies(&site, &left, &files, |h| h.len() == 2)
        .unwrap_or_else(|e| panic!("repair after DELSLAVE: {e}\n{}", site.log()));
    download_all(&mut c, &files);
    let slaves = c.cmd("SITE SLAVES");
    assert!(slaves.contains("s1 removed"), "{slaves}");
    assert!(
        slaves.contains("repair queue 0 files, 0 copies running"),
        "{slaves}"
    );

    // A new disk joins, and s3 is drained: every file gets its two counting
    // copies on s2 and s4; s3 then holds nothing the cluster needs.
    site.add_slave("s4", "127.0.0.84", |_| {});
    let r = c.cmd("SITE SLAVE s3 DRAIN");
    assert!(r.starts_with("200 s3 is draining"), "{r}");
    let now = ["s2", "s4"];
    wait_for_copies(&site, &now, &files, |h| h.len() == 2)
        .unwrap_or_else(|e| panic!("drain of s3: {e}\n{}", site.log()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let one = c.cmd("SITE SLAVE s3");
        if one.contains(&format!("draining={FILES}/{FILES}")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain progress never complete: {one}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Uploads avoid the draining slave.
    for i in 0..4 {
        let rel = format!("d/new{i}.bin");
        assert!(c.cmd(&format!("PRET STOR /{rel}")).starts_with("200"));
        let (pasv, addr) = c.pasv();
        assert!(
            !pasv.contains("127,0,0,83"),
            "an upload went to the draining s3: {pasv}"
        );
        let data = random_bytes(2_000, 100 + i);
        let (_, fin) = c.stor(&format!("/{rel}"), addr, &data);
        assert!(fin.starts_with("226"), "{fin}");
        files.insert(rel, data);
    }
    let r = c.cmd("SITE DELSLAVE s3");
    assert!(r.starts_with("200") && !r.contains("no other copy"), "{r}");
    site.kill_slave("s3");
    wait_for_copies(&site, &now, &files, |h| h.len() == 2)
        .unwrap_or_else(|e| panic!("after s3 left: {e}\n{}", site.log()));
    download_all(&mut c, &files);
    for n in now {
        no_temp_left(&site.root(n));
    }
    // A removed slave that comes back is refused, with a clear line on both
    // sides.
    let refused = site.add_slave_refused("s1", "127.0.0.81");
    assert!(
        refused.contains("slave s1 was removed (SITE DELSLAVE)"),
        "{refused}"
    );
    // A second process with the name of a connected slave is refused; the
    // first keeps serving.
    let refused = site.add_slave_refused("s2", "127.0.0.90");
    assert!(
        refused.contains("a slave named s2 is already connected"),
        "{refused}"
    );
    download_all(&mut c, &files);
}

#[test]
fn only_known_slave_names_join_and_addslave_lets_one_in() {
    let mut site = Site::start_accepting(
        false,
        "slaves = [\"s1\"]\n[[users]]\nname = \"root\"\npassword = \"root-pw\"\nadmin = true\n",
    );
    site.add_slave("s1", "127.0.0.91", |_| {});
    let refused = site.add_slave_refused("intruder", "127.0.0.92");
    assert!(refused.contains("unknown slave name intruder"), "{refused}");
    let mut c = login(&site);
    assert!(c.cmd("SITE ADDSLAVE s2").starts_with("200 Slave s2 added"));
    site.add_slave("s2", "127.0.0.93", |_| {});
    // "ready" is printed once connected; the master may still be taking
    // its (empty) file list.
    let mut slaves = String::new();
    wait_until(|| {
        slaves = c.cmd("SITE SLAVES");
        slaves.contains("s2 online")
    });
    assert!(slaves.contains("s2 online"), "{slaves}");
    assert!(!slaves.contains("intruder"), "{slaves}");
}

#[test]
fn with_sync_copies_two_disks_hold_an_upload_when_its_226_comes() {
    let mut site = Site::start(
        "[replication]\ncopies = 2\nsync_copies = 2\n\
         [[users]]\nname = \"root\"\npassword = \"root-pw\"\nadmin = true\n",
    );
    for (i, name) in ["s1", "s2", "s3"].iter().enumerate() {
        site.add_slave(name, &format!("127.0.0.{}", 95 + i), |_| {});
    }
    let mut c = login(&site);
    let all = ["s1", "s2", "s3"];
    for i in 0..10u64 {
        let rel = format!("f{i}.bin");
        let data = random_bytes(100_000 + i as usize * 50_000, 40 + i);
        assert!(c.cmd(&format!("PRET STOR /{rel}")).starts_with("200"));
        let (_, addr) = c.pasv();
        let (_, fin) = c.stor(&format!("/{rel}"), addr, &data);
        assert!(
            fin.starts_with("226") && fin.contains(" and s"),
            "{rel}: {fin}"
        );
        // At the 226, not later: two disks hold it, byte-identical.
        let h = holders(&site, &all, &rel, &data);
        assert_eq!(h.len(), 2, "{rel} on {h:?} at its 226");
    }
    for n in all {
        no_temp_left(&site.root(n));
    }
}

//! End-to-end tests of `dftpd cluster` (the real binary, loopback only) with
//! curl and a raw FTP client: PRET routing, the no-PRET modes, active mode,
//! load spreading, hostile input.

mod common;

use common::*;
use std::io::Read;

fn write_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn curl_pret_upload_list_download_served_by_the_storing_slave() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(3 * 1024 * 1024 + 17, 1);
    let src = write_file(work.path(), "big.bin", &data);
    let userpass = format!("{USER}:{PASS}");

    let up = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-v",
        "-u",
        &userpass,
        "-T",
        src.to_str().unwrap(),
        &c.url("big.bin"),
    ]);
    assert!(up.status.success(), "upload failed: {}", text(&up.stderr));
    let holders = c.holders("big.bin");
    assert_eq!(holders.len(), 1, "exactly one slave stores the upload");
    let slave_ip = format!("127.0.0.{}", 10 + holders[0]);
    // The upload went to that slave: PRET STOR, EPSV refused (502), PASV.
    let up_replies = replies(&text(&up.stderr));
    assert!(
        up_replies
            .iter()
            .any(|r| r.starts_with("200 OK, planning for upcoming upload")),
        "{up_replies:?}"
    );
    assert!(
        up_replies.iter().any(|r| r.starts_with("502 ")),
        "EPSV after PRET must be refused: {up_replies:?}"
    );
    let pasv = up_replies
        .iter()
        .find(|r| r.starts_with("227"))
        .expect("227");
    assert_eq!(pasv_ip(pasv).as_deref(), Some(slave_ip.as_str()), "{pasv}");
    // The checksum the slave reported with the upload, as XCRC and HASH.
    let mut raw = c.raw();
    let want = crc32fast::hash(&data);
    assert_eq!(
        raw.cmd("XCRC big.bin"),
        format!("250 XCRC Successful. {want:08X}")
    );
    assert_eq!(
        raw.cmd("HASH big.bin"),
        format!("213 CRC32 0-{} {want:08x} /big.bin", data.len())
    );

    let list = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &userpass,
        &c.url(""),
    ]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listing = text(&list.stdout);
    assert!(
        listing.contains("big.bin") && listing.contains(&data.len().to_string()),
        "{listing}"
    );
    assert!(listing.starts_with("-rw-r--r--"), "ls -l style: {listing}");

    let out = work.path().join("down.bin");
    let down = curl(&[
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-v",
        "-u",
        &userpass,
        "-o",
        out.to_str().unwrap(),
        &c.url("big.bin"),
    ]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(
        std::fs::read(&out).unwrap() == data,
        "downloaded bytes differ"
    );
    let down_replies = replies(&text(&down.stderr));
    assert!(
        down_replies
            .iter()
            .any(|r| r == "200 OK, planning for upcoming download"),
        "{down_replies:?}"
    );
    let pasv = down_replies
        .iter()
        .find(|r| r.starts_with("227"))
        .expect("227");
    assert_eq!(
        pasv_ip(pasv).as_deref(),
        Some(slave_ip.as_str()),
        "download must come from the storing slave: {pasv}"
    );
    assert!(
        pasv.contains(&format!("slave-{}", holders[0])),
        "227 names the slave: {pasv}"
    );
}

#[test]
fn curl_without_pret_lists_but_a_download_gets_a_503_naming_pret() {
    // Not the cluster's default (relay): what `listings` does.
    let c = ClusterProc::start_with(&["--pasv-without-pret", "listings"], |dir| {
        std::fs::create_dir_all(dir.join("slave-2/pub")).unwrap();
        std::fs::write(dir.join("slave-2/pub/f.txt"), b"hello").unwrap();
    });
    let userpass = format!("{USER}:{PASS}");
    let list = curl(&["--no-ftp-skip-pasv-ip", "-u", &userpass, &c.url("pub/")]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(text(&list.stdout).contains("f.txt"));
    let down = curl(&[
        "--no-ftp-skip-pasv-ip",
        "-v",
        "-u",
        &userpass,
        "-o",
        "/dev/null",
        &c.url("pub/f.txt"),
    ]);
    assert!(!down.status.success());
    let rs = replies(&text(&down.stderr));
    let refusal = rs
        .iter()
        .find(|r| r.starts_with("503"))
        .unwrap_or_else(|| panic!("{rs:?}"));
    assert!(
        refusal.contains("PRET") && refusal.contains("--ftp-pret"),
        "{refusal}"
    );
}

#[test]
fn curl_active_mode_is_served_by_the_slave() {
    let data = random_bytes(200_000, 2);
    let d2 = data.clone();
    let c = ClusterProc::start_with(&[], move |dir| {
        std::fs::create_dir_all(dir.join("slave-3")).unwrap();
        std::fs::write(dir.join("slave-3/a.bin"), &d2).unwrap();
    });
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("a.bin");
    let userpass = format!("{USER}:{PASS}");
    let down = curl(&[
        "-v",
        "-P",
        "127.0.0.1",
        "-u",
        &userpass,
        "-o",
        out.to_str().unwrap(),
        &c.url("a.bin"),
    ]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(std::fs::read(&out).unwrap() == data);
    let rs = replies(&text(&down.stderr));
    assert!(
        rs.iter()
            .any(|r| r.starts_with("150") && r.contains("slave-3")),
        "{rs:?}"
    );
    // Active upload too, without PRET.
    let src = write_file(work.path(), "up.bin", &data[..5000]);
    let up = curl(&[
        "-P",
        "127.0.0.1",
        "-u",
        &userpass,
        "-T",
        src.to_str().unwrap(),
        &c.url("up.bin"),
    ]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    assert_eq!(c.holders("up.bin").len(), 1);
}

#[test]
fn relay_mode_lets_curl_without_pret_upload_and_download() {
    let c = ClusterProc::start(&["--pasv-without-pret", "relay"]);
    let work = tempfile::tempdir().unwrap();
    let data = random_bytes(1_500_000, 3);
    let src = write_file(work.path(), "r.bin", &data);
    let userpass = format!("{USER}:{PASS}");
    let up = curl(&[
        "--no-ftp-skip-pasv-ip",
        "-u",
        &userpass,
        "-T",
        src.to_str().unwrap(),
        &c.url("r.bin"),
    ]);
    assert!(up.status.success(), "{}", text(&up.stderr));
    assert_eq!(c.holders("r.bin").len(), 1);
    let out = work.path().join("back.bin");
    let down = curl(&[
        "--no-ftp-skip-pasv-ip",
        "-v",
        "-u",
        &userpass,
        "-o",
        out.to_str().unwrap(),
        &c.url("r.bin"),
    ]);
    assert!(down.status.success(), "{}", text(&down.stderr));
    assert!(std::fs::read(&out).unwrap() == data);
    // curl without PRET takes EPSV: the master's own port; SITE SLAVES
    // counts the relayed bytes.
    let rs = replies(&text(&down.stderr));
    assert!(rs.iter().any(|r| r.starts_with("229")), "{rs:?}");
    assert!(
        rs.iter()
            .any(|r| r.starts_with("150") && r.contains("on slave")),
        "{rs:?}"
    );
    let mut raw = c.raw();
    let slaves = raw.cmd("SITE SLAVES");
    let relayed: u64 = slaves
        .lines()
        .filter_map(|l| l.split("relayed=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(relayed, 2 * data.len() as u64, "{slaves}");
}

#[test]
fn refuse_mode_answers_pasv_without_pret_with_drftpd_text() {
    let c = ClusterProc::start(&["--pasv-without-pret", "refuse"]);
    let mut raw = c.raw();
    assert_eq!(
        raw.cmd("PASV"),
        "500 You need to use a client supporting PRET (PRE Transfer) to use PASV"
    );
    // With PRET, listings still work through the master.
    assert_eq!(
        raw.cmd("PRET LIST"),
        "200 OK, planning to use master for upcoming LIST transfer"
    );
    let (r, _) = raw.pasv();
    assert_eq!(pasv_ip(&r).as_deref(), Some("127.0.0.1"));
}

#[test]
fn two_slaves_holding_a_file_share_concurrent_downloads() {
    let data = random_bytes(400_000, 4);
    let d2 = data.clone();
    let c = ClusterProc::start_with(&[], move |dir| {
        for n in [1, 2] {
            std::fs::create_dir_all(dir.join(format!("slave-{n}"))).unwrap();
            std::fs::write(dir.join(format!("slave-{n}/same.bin")), &d2).unwrap();
        }
    });
    // Six clients plan at once (PRET + PASV held open), then download in
    // parallel: planned transfers count as load, so both copies serve.
    let mut sessions: Vec<(RawFtp, String, std::net::SocketAddr)> = (0..6)
        .map(|_| {
            let mut raw = c.raw();
            assert_eq!(
                raw.cmd("PRET RETR same.bin"),
                "200 OK, planning for upcoming download"
            );
            let (reply, addr) = raw.pasv();
            (raw, reply, addr)
        })
        .collect();
    let ips: std::collections::BTreeSet<String> = sessions
        .iter()
        .map(|(_, r, _)| pasv_ip(r).unwrap())
        .collect();
    assert_eq!(
        ips,
        ["127.0.0.11".to_string(), "127.0.0.12".to_string()]
            .into_iter()
            .collect(),
        "both holders must serve"
    );
    let handles: Vec<_> = sessions
        .drain(..)
        .map(|(mut raw, _, addr)| {
            std::thread::spawn(move || {
                let (prelim, bytes, fin) = raw.retr("same.bin", addr);
                assert!(prelim.starts_with("150"), "{prelim}");
                assert!(fin.starts_with("226"), "{fin}");
                bytes
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap() == data);
    }
}

#[test]
fn pret_mismatch_epsv_and_plan_rules() {
    let c = ClusterProc::start_with(&[], |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/a"), b"aaa").unwrap();
        std::fs::write(dir.join("slave-1/b"), b"bbb").unwrap();
    });
    let mut raw = c.raw();
    let feat = raw.cmd("FEAT");
    assert!(
        feat.contains("\n PRET") && feat.contains("\n EPSV") && feat.contains("\n MLST"),
        "{feat}"
    );
    assert_eq!(
        raw.cmd("PRET RETR missing"),
        "550 /missing: No such file or directory"
    );
    assert!(raw.cmd("PRET DELE a").starts_with("504"));
    // PRET RETR a, then RETR b: refused with 503, the plan is gone.
    assert_eq!(
        raw.cmd("PRET RETR a"),
        "200 OK, planning for upcoming download"
    );
    let (_, addr) = raw.pasv();
    let (prelim, _, _) = raw.retr("b", addr);
    assert!(
        prelim.starts_with("503") && prelim.contains("does not match PRET RETR /a"),
        "{prelim}"
    );
    // curl's order: PRET, EPSV (502, plan kept), PASV routes to the slave.
    assert_eq!(
        raw.cmd("PRET RETR b"),
        "200 OK, planning for upcoming download"
    );
    assert!(raw.cmd("EPSV").starts_with("502"));
    let (r, addr) = raw.pasv();
    assert_eq!(pasv_ip(&r).as_deref(), Some("127.0.0.11"));
    let (_, bytes, fin) = raw.retr("b", addr);
    assert_eq!(bytes, b"bbb");
    assert!(fin.starts_with("226"));
    // Without PRET, EPSV gets the master and a listing works over it.
    let r = raw.cmd("EPSV");
    assert!(r.starts_with("229"), "{r}");
    let port: u16 = r
        .split("|||")
        .nth(1)
        .unwrap()
        .trim_end_matches(|ch: char| !ch.is_ascii_digit())
        .parse()
        .unwrap();
    let mut d = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(raw.cmd("NLST").starts_with("150"));
    let mut names = String::new();
    d.read_to_string(&mut names).unwrap();
    assert_eq!(names, "a\r\nb\r\n");
    assert!(raw.read_reply().starts_with("226"));
    // REST + RETR resumes from the offset.
    assert!(raw.cmd("PRET RETR a").starts_with("200"));
    let (_, addr) = raw.pasv();
    assert!(raw.cmd("REST 1").starts_with("350"));
    let (_, bytes, _) = raw.retr("a", addr);
    assert_eq!(bytes, b"aa");
    // MLST and SIZE come from the database.
    assert_eq!(raw.cmd("SIZE a"), "213 3");
    assert!(raw.cmd("MLST a").contains("type=file;size=3;"));
    // STOR onto an existing file is planned on a slave holding it
    // (overwriting is allowed by default).
    assert_eq!(
        raw.cmd("PRET STOR a"),
        "200 OK, planning for upcoming upload"
    );
    let (r, _) = raw.pasv();
    assert_eq!(pasv_ip(&r).as_deref(), Some("127.0.0.11"));
}

#[test]
fn hostile_input_gets_replies_and_the_session_survives() {
    let c = ClusterProc::start(&[]);
    let mut raw = RawFtp::connect(c.addr);
    assert!(raw.cmd("LIST").starts_with("530"));
    assert!(raw.cmd("PASS x").starts_with("503"));
    let long = "A".repeat(5000);
    assert!(raw.cmd(&long).starts_with("500"));
    raw.send_raw(b"NOOP \xc3\x28\r\n");
    assert!(raw.read_reply().starts_with("501"));
    assert!(raw.cmd("").starts_with("500"));
    assert!(raw.cmd("FROB").starts_with("500"));
    raw.login();
    assert!(raw.cmd("RNTO x").starts_with("503"));
    assert!(raw.cmd("RETR x").starts_with("503"));
    assert!(raw.cmd("PORT 1,2,3").starts_with("501"));
    assert!(
        raw.cmd("PORT 10,0,0,1,4,1").starts_with("504"),
        "bounce refused"
    );
    assert!(raw.cmd("TYPE E").starts_with("504"));
    assert!(
        raw.cmd("CWD ../../../..").starts_with("250"),
        "clamped at /"
    );
    assert_eq!(
        raw.cmd("CWD ../../../../etc"),
        "550 /etc: No such file or directory"
    );
    assert_eq!(raw.cmd("PWD"), "257 \"/\" is the current directory");
    assert!(raw.cmd("MKD a\\b").starts_with("553"));
    assert!(raw.cmd("MKD ../../x").starts_with("257"));
    assert_eq!(
        raw.cmd("RNFR /x"),
        "350 File exists, ready for destination name"
    );
    assert!(raw.cmd("RNTO /x/y").starts_with("550"), "into itself");
    // 200 KB of garbage with no newline, then a real command.
    raw.send_raw(&vec![b'Z'; 200_000]);
    raw.send_raw(b"\r\n");
    assert!(raw.read_reply().starts_with("500"));
    assert!(raw.cmd("NOOP").starts_with("200"));
    let who = raw.cmd("SITE WHO");
    assert!(who.contains(" u from 127.0.0.1"), "{who}");
    assert!(raw.cmd("QUIT").starts_with("221"));
    // A run of garbage lines is not a client: 421 after 50 in a row.
    let mut g = RawFtp::connect(c.addr);
    g.send_raw(&b"\r\n".repeat(60));
    let replies: Vec<String> = (0..50).map(|_| g.read_reply()).collect();
    assert!(
        replies[..49].iter().all(|r| r == "500 Empty command"),
        "{replies:?}"
    );
    assert!(
        replies[49].starts_with("421 Too many invalid commands"),
        "{replies:?}"
    );
}

#[test]
fn mkd_rename_delete_propagate_to_slaves() {
    let c = ClusterProc::start_with(&[], |dir| {
        for n in [1, 3] {
            std::fs::create_dir_all(dir.join(format!("slave-{n}/d"))).unwrap();
            std::fs::write(dir.join(format!("slave-{n}/d/f")), b"12345").unwrap();
        }
    });
    let mut raw = c.raw();
    assert!(raw.cmd("MKD /new").starts_with("257"));
    assert_eq!(
        raw.cmd("RNFR /d"),
        "350 File exists, ready for destination name"
    );
    assert!(raw.cmd("RNTO /new/e").starts_with("250"));
    // Applied on every holder, asynchronously: poll briefly.
    let moved = |c: &ClusterProc| c.holders("new/e/f") == vec![1, 3] && c.holders("d/f").is_empty();
    assert!(
        wait_until(|| moved(&c)),
        "rename not applied on both holders"
    );
    assert!(raw.cmd("DELE /new/e/f").starts_with("250"));
    assert!(
        wait_until(|| c.holders("new/e/f").is_empty()),
        "delete not applied"
    );
    assert!(raw.cmd("SIZE /new/e/f").starts_with("550"));
    assert!(raw.cmd("RMD /new/e").starts_with("250"));
}

/// `dftpd master` and `dftpd slave` as separate processes from config
/// files: a slave with the wrong key is refused (and the master logs its
/// address), the right one joins and serves.
#[test]
fn separate_master_and_slave_processes_and_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let master_toml = dir.path().join("master.toml");
    std::fs::write(
        &master_toml,
        format!(
            "listen = \"127.0.0.1:0\"\nlink_listen = \"127.0.0.1:0\"\nlink_key = \"right-key\"\naccept_new_slaves = true\npassive_ports = \"0\"\nstore = \"{}\"\n[[users]]\nname = \"{USER}\"\npassword = \"{PASS}\"\nadmin = true\n",
            dir.path().join("master.redb").display()
        ),
    )
    .unwrap();
    let master_log = dir.path().join("master.log");
    let mut master = spawn_config("master", &master_toml, &master_log);
    let control = wait_ready(&mut master, "master ready on ", &master_log);
    // The link address is printed on the same line; read it from the log
    // line instead: "(slave link ADDR)".
    let link = {
        let mut found = None;
        for _ in 0..200 {
            let log = std::fs::read_to_string(&master_log).unwrap_or_default();
            if let Some(l) = log.lines().find(|l| l.contains("master listening")) {
                found = l
                    .split("link_addr=")
                    .nth(1)
                    .map(|s| s.split_whitespace().next().unwrap().to_string());
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        found.expect("master logs its link address")
    };
    let slave = |name: &str, key: &str, ip: &str| {
        let toml = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &toml,
            format!(
                "name = \"{name}\"\nmaster = \"{link}\"\nlink_key = \"{key}\"\nroot = \"{}\"\ndata_ip = \"{ip}\"\npassive_ports = \"0\"\nreconnect_min_ms = 100\ncreate_root = true\n",
                dir.path().join(name).display()
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("{name}.log"));
        (spawn_config("slave", &toml, &log), log)
    };
    let _master = KillOnDrop(master);
    let (rogue, rogue_log) = slave("rogue", "wrong-key", "127.0.0.21");
    let _rogue = KillOnDrop(rogue);
    assert!(
        wait_until(|| std::fs::read_to_string(&master_log)
            .unwrap_or_default()
            .contains("slave refused: wrong link key")),
        "master must log the refused slave"
    );
    let log = std::fs::read_to_string(&master_log).unwrap();
    let line = log.lines().find(|l| l.contains("wrong link key")).unwrap();
    assert!(
        line.contains("127.0.0.1") && line.contains("rogue"),
        "logged with address and name: {line}"
    );
    assert!(
        !log.contains("wrong-key") && !log.contains("right-key"),
        "keys are never logged"
    );
    assert!(wait_until(|| std::fs::read_to_string(&rogue_log)
        .unwrap_or_default()
        .contains("authentication failed")));

    let (mut good, good_log) = slave("good", "right-key", "127.0.0.22");
    let _ = wait_line(&mut good, "good ready", &good_log);
    let _good = KillOnDrop(good);
    let mut raw = RawFtp::connect(control);
    raw.login();
    // "ready" is printed once connected; the master may still be taking
    // its file list.
    let mut slaves = String::new();
    wait_until(|| {
        slaves = raw.cmd("SITE SLAVES");
        slaves.contains("good online")
    });
    assert!(slaves.contains("good online"), "{slaves}");
    assert!(!slaves.contains("rogue"), "{slaves}");
    assert!(raw.cmd("PRET STOR x.bin").starts_with("200"));
    let (r, addr) = raw.pasv();
    assert_eq!(pasv_ip(&r).as_deref(), Some("127.0.0.22"));
    let (_, fin) = raw.stor("x.bin", addr, b"payload");
    assert!(fin.starts_with("226"), "{fin}");
    assert_eq!(
        std::fs::read(dir.path().join("good/x.bin")).unwrap(),
        b"payload"
    );
}

/// RFC 2577 port stealing: a data connection from another IP is refused and
/// the slave keeps waiting for the client; a client that never comes gets a
/// 425 after the data timeout.
#[test]
fn passive_listeners_refuse_foreign_peers_and_time_out() {
    use std::io::Write;
    let c = ClusterProc::start_with(&["--data-timeout-ms", "1500"], |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/f"), b"secret").unwrap();
    });
    let mut raw = c.raw();
    assert!(raw.cmd("PRET RETR f").starts_with("200"));
    let (_, addr) = raw.pasv();
    // A thief on another loopback address connects first.
    let mut thief = connect_from("127.0.0.99", addr);
    let mut stolen = Vec::new();
    thief
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let (prelim, bytes, fin) = raw.retr("f", addr);
    assert!(prelim.starts_with("150"), "{prelim}");
    assert_eq!(bytes, b"secret");
    assert!(fin.starts_with("226"), "{fin}");
    let _ = thief.read_to_end(&mut stolen);
    assert!(stolen.is_empty(), "the thief got data");
    // Nobody connects: 150, then 425 after the timeout.
    assert!(raw.cmd("PRET RETR f").starts_with("200"));
    let _ = raw.pasv();
    let prelim = raw.cmd("RETR f");
    assert!(prelim.starts_with("150"), "{prelim}");
    let fin = raw.read_reply();
    assert!(fin.starts_with("425"), "{fin}");
    let _ = thief.write_all(b"x");
    assert!(raw.cmd("NOOP").starts_with("200"));
}

/// ABOR during a download: the slave stops, the client gets 426 then 226.
#[test]
fn abor_stops_a_running_download() {
    let c = ClusterProc::start_with(&[], |dir| {
        std::fs::create_dir_all(dir.join("slave-2")).unwrap();
        std::fs::write(dir.join("slave-2/huge"), vec![7u8; 64 << 20]).unwrap();
    });
    let mut raw = c.raw();
    assert!(raw.cmd("PRET RETR huge").starts_with("200"));
    let (_, addr) = raw.pasv();
    let mut data = std::net::TcpStream::connect(addr).unwrap();
    assert!(raw.cmd("RETR huge").starts_with("150"));
    // Read a little, then stop reading: the slave blocks on a full socket.
    let mut buf = vec![0u8; 65536];
    data.read_exact(&mut buf).unwrap();
    let r = raw.cmd("ABOR");
    assert!(r.starts_with("426"), "{r}");
    assert_eq!(raw.read_reply(), "226 ABOR command successful");
    drop(data);
    let slaves = raw.cmd("SITE SLAVES");
    assert!(
        slaves.contains("slave-2 online") && slaves.contains("active=0"),
        "{slaves}"
    );
}

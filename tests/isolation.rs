//! One session must never reach another session's upload in flight.
//!
//! A slave receives an upload under a temporary name and renames it into
//! place on commit. Those temporaries live in a directory dftpd reserves
//! (`.dftpd-tmp` at the top of a slave's root); no FTP command may name it,
//! and the temporary names are random, so they cannot be guessed either.
//! Here a victim keeps an upload open while an attacker tries every command
//! that takes a path, with every spelling of the reserved name; then the
//! victim finishes and must read back exactly its own bytes.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{random_bytes, wait_until, ClusterProc, RawFtp};

/// Spellings that all resolve to the reserved directory or a name in it.
const SPELLINGS: &[&str] = &[
    "/.dftpd-tmp",
    ".dftpd-tmp",
    "//.dftpd-tmp",
    "/./.dftpd-tmp/",
    "/x/../.dftpd-tmp",
    "../../.dftpd-tmp",
];

/// The temporary names the slave would use if they were sequential.
fn guesses() -> Vec<String> {
    let mut g: Vec<String> = (0..12).map(|n| format!("/.dftpd-tmp/{n}")).collect();
    g.push("/.dftpd-tmp/x".into());
    g
}

fn refused(reply: &str) -> bool {
    reply.starts_with('5')
}

#[test]
fn no_command_reaches_another_sessions_upload() {
    let c = ClusterProc::start(&["--slaves", "1", "--allow-overwrite"]);
    let payload = random_bytes(256 * 1024, 7);

    // The victim: a PRET upload whose data connection stays open half-way.
    let mut victim = c.raw();
    assert!(victim.cmd("PRET STOR /victim.bin").starts_with("200"));
    let (_, addr) = victim.pasv();
    let mut data = TcpStream::connect(addr).unwrap();
    let r = victim.cmd("STOR /victim.bin");
    assert!(r.starts_with("150"), "{r}");
    data.write_all(&payload[..100_000]).unwrap();
    data.flush().unwrap();

    // Its temporary file exists; its name is not guessable.
    let tmp = c.slave_root(1).join(".dftpd-tmp");
    assert!(
        wait_until(|| std::fs::read_dir(&tmp).is_ok_and(|mut d| d.next().is_some())),
        "the upload's temporary file did not appear"
    );
    for e in std::fs::read_dir(&tmp).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(
            name.len() >= 32 && name.parse::<u64>().is_err(),
            "temporary name {name:?} is guessable"
        );
    }

    // The attacker, with a file of its own to rename and append from.
    let mut evil = c.raw();
    let (_, a) = {
        assert!(evil.cmd("PRET STOR /mine.bin").starts_with("200"));
        evil.pasv()
    };
    let (_, fin) = evil.stor("/mine.bin", a, b"ATTACKER");
    assert!(fin.starts_with("226"), "{fin}");

    let mut tried = 0;
    let check = |evil: &mut RawFtp, line: &str| {
        let r = evil.cmd(line);
        assert!(refused(&r), "`{line}` was accepted: {r}");
    };
    for p in SPELLINGS {
        for verb in [
            "MKD", "XMKD", "CWD", "XCWD", "RMD", "XRMD", "DELE", "SIZE", "MDTM", "MLST", "STAT",
            "RNFR", "XCRC", "HASH",
        ] {
            check(&mut evil, &format!("{verb} {p}"));
            tried += 1;
        }
        check(&mut evil, &format!("MFMT 20200101000000 {p}"));
        check(&mut evil, &format!("SITE CHMOD 777 {p}"));
        for verb in ["RETR", "STOR", "APPE", "LIST", "NLST", "MLSD"] {
            check(&mut evil, &format!("PRET {verb} {p}"));
            tried += 1;
        }
    }
    for g in guesses() {
        for verb in ["STOR", "APPE", "RETR"] {
            check(&mut evil, &format!("PRET {verb} {g}"));
            tried += 1;
        }
        for verb in ["DELE", "SIZE", "MDTM", "MLST", "RNFR", "XCRC", "CWD", "MKD"] {
            check(&mut evil, &format!("{verb} {g}"));
            tried += 1;
        }
        check(&mut evil, &format!("MFMT 20200101000000 {g}"));
        // A rename of a real file into the reserved directory.
        assert!(evil.cmd("RNFR /mine.bin").starts_with("350"));
        check(&mut evil, &format!("RNTO {g}"));
        // Data commands over the master's own PASV (no PRET).
        for verb in ["STOR", "APPE", "RETR", "LIST", "NLST", "MLSD"] {
            let r = evil.cmd("PASV");
            assert!(r.starts_with("227"), "{r}");
            let d = common::pasv_addr(&r).unwrap();
            let _conn = TcpStream::connect(d).ok();
            let r = evil.cmd(&format!("{verb} {g}"));
            tried += 1;
            assert!(refused(&r), "`{verb} {g}` was accepted: {r}");
        }
    }
    // Nothing lists the reserved directory.
    let list_root = |ftp: &mut RawFtp, verb: &str| -> String {
        let r = ftp.cmd("PASV");
        let d = common::pasv_addr(&r).unwrap();
        let mut conn = TcpStream::connect(d).unwrap();
        let r = ftp.cmd(&format!("{verb} /"));
        assert!(r.starts_with("150"), "{r}");
        let mut out = String::new();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        conn.read_to_string(&mut out).unwrap();
        assert!(ftp.read_reply().starts_with("226"));
        out
    };
    for verb in ["LIST -a", "NLST", "MLSD"] {
        let out = list_root(&mut evil, verb);
        assert!(!out.contains("dftpd-tmp"), "{verb} shows it:\n{out}");
    }
    assert!(tried > 300, "only {tried} attempts");

    // The victim completes and reads back its own bytes.
    data.write_all(&payload[100_000..]).unwrap();
    drop(data);
    let fin = victim.read_reply();
    assert!(fin.starts_with("226"), "{fin}");
    assert!(victim.cmd("PRET RETR /victim.bin").starts_with("200"));
    let (_, a) = victim.pasv();
    let (_, got, fin) = victim.retr("/victim.bin", a);
    assert!(fin.starts_with("226"), "{fin}");
    assert!(got == payload, "the victim reads other bytes than it sent");
    // The temporary directory is empty again.
    assert!(wait_until(|| std::fs::read_dir(&tmp)
        .map(|d| d.count() == 0)
        .unwrap_or(true)));
}

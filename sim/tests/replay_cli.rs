//! The `dftpd-sim replay` command line: exit 0 and a summary when the
//! recorded replies agree, exit 1 and an aligned `file:line` diff when one
//! differs; several recordings (a directory) replayed together; `--json`;
//! faults by time and by command; the same transcript twice.

use std::path::Path;
use std::process::Command;

const RECORDING: &str = "\
slave s1
file s1 /f.bin size=5
user u $PASSWORD
client: connect
client< 220 dftpd ready
at 10ms
client> USER u
client< 331 Password required for u
client> PASS $PASSWORD
client< 230 User u logged in
client> SIZE /f.bin
client< 213 5
";

fn replay_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_dftpd-sim"))
        .arg("replay")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn replay(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session-1.scn"), text).unwrap();
    let (code, out, err) = replay_in(dir.path(), &["session-1.scn"]);
    (code, out + &err)
}

#[test]
fn replay_exit_code_and_diff() {
    let (code, out) = replay(RECORDING);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("session-1.scn: client: agrees (4 reply lines)"),
        "{out}"
    );
    let (code, out) = replay(&RECORDING.replace("client< 213 5", "client< 213 6"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("@@ session-1.scn:12 @@"), "{out}");
    assert!(out.contains("-    12  213 6\n+        213 5\n"), "{out}");
    assert!(
        out.contains("1 recorded line(s) not replayed, 1 replayed line(s) not recorded"),
        "{out}"
    );
}

/// Two sessions of one master: `b` deletes the file 30 ms after `a`
/// started; `a` asks for its size before and after.
const A: &str = "\
# clock: master-start=1000 session-start=1.000000s
slave s1
file s1 /f.bin size=5
user u $PASSWORD
client: connect
client< 220 dftpd ready
at 1ms
client> USER u
client< 331 Password required for u
client> PASS $PASSWORD
client< 230 User u logged in
at 20ms
client> SIZE /f.bin
client< 213 5
at 60ms
client> SIZE /f.bin
client< 550 /f.bin: No such file or directory
# session ended at 61.000ms
";

const B: &str = "\
# clock: master-start=1000 session-start=1.010000s
slave s1
user u $PASSWORD
client: connect
client< 220 dftpd ready
at 1ms
client> USER u
client< 331 Password required for u
client> PASS $PASSWORD
client< 230 User u logged in
file s1 /f.bin size=5
at 20ms
client> DELE /f.bin
client< 250 \"/f.bin\" deleted
# session ended at 21.000ms
";

#[test]
fn a_directory_replays_its_sessions_together_with_json_and_faults() {
    let dir = tempfile::tempdir().unwrap();
    let recs = dir.path().join("rec");
    std::fs::create_dir(&recs).unwrap();
    std::fs::write(recs.join("session-1.scn"), A).unwrap();
    std::fs::write(recs.join("session-2.scn"), B).unwrap();
    let (code, out, err) = replay_in(dir.path(), &["rec"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("session-1.scn: session-1: agrees"), "{out}");
    assert!(out.contains("session-2.scn: session-2: agrees"), "{out}");
    assert!(err.contains("2 session(s) replayed (7 commands)"), "{err}");
    // Alone, session 1 misses the other's DELE.
    let (code, out, _) = replay_in(dir.path(), &["rec/session-1.scn"]);
    assert_eq!(code, 1, "{out}");
    // JSON: one object per session.
    let (_, out, _) = replay_in(dir.path(), &["rec", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect(&out);
    assert_eq!(v["agrees"], true, "{out}");
    assert_eq!(v["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(v["sessions"][1]["start_offset_us"], 10_000);
    // A fault by time says where it landed; one by command too.
    let (code, out, _) = replay_in(
        dir.path(),
        &["rec", "--partition", "master,session-1", "--at", "40ms"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "fault: partition master session-1 at 0.040000s: after session-2> DELE /f.bin"
        ),
        "{out}"
    );
    let (_, out, _) = replay_in(
        dir.path(),
        &["rec", "--crash-slave", "s1", "--at-command", "session-1:4"],
    );
    assert!(
        out.contains("fault: crash s1 before command 4 of session-1 (session-1> SIZE /f.bin"),
        "{out}"
    );
    // One recording and one seed: one transcript.
    let (_, first, _) = replay_in(dir.path(), &["rec", "--print", "--seed", "3"]);
    let (_, second, _) = replay_in(dir.path(), &["rec", "--print", "--seed", "3"]);
    assert_eq!(first, second);
    let (code, _, err) = replay_in(dir.path(), &["rec", "--at", "1s"]);
    assert_eq!(code, 2, "{err}");
}

/// A passive download from slave-1, the client connecting to the 227
/// address (curl --ftp-pret --no-ftp-skip-pasv-ip); recorded by `dftpd
/// cluster --record`.
const DIRECT_RETR: &str = "\
# clock: master-start=1796112690 session-start=5.434275s
config pasv_without_pret=relay
config allow_overwrite=true
client: connect
client< 220 dftpd ready
at 3.455ms
client> USER dftpd
client< 331 Password required for dftpd
user dftpd $PASSWORD admin
at 3.556ms
client> PASS $PASSWORD
client< 230 User dftpd logged in
file slave-1 /f.bin size=200000
at 207.415ms
client> PRET RETR f.bin
client< 200 OK, planning for upcoming download
at 207.452ms
client> EPSV
client< 502 Use PASV: EPSV cannot name slave slave-1's address
at 207.473ms
client> PASV
client< 227 Entering Passive Mode (127,0,0,11,234,85) on slave slave-1
at 208.619ms
client> TYPE I
client< 200 Type set to I
at 208.681ms
client> RETR f.bin
client< 150 Opening BINARY mode data connection for /f.bin (200000 bytes) on slave slave-1
client< 226 Transfer complete, 200000 bytes from slave-1
slave slave-1 avail=62066143232
slave slave-2 avail=62066143232
at 209.646ms
client> QUIT
client< 221 Goodbye
# session ended at 210.861ms
";

/// A partition between the client and the slave serving its download cuts
/// the transfer; when the client's data connection went to the master's
/// address instead (relayed), the cut cannot reach it and the replay says
/// so rather than agreeing in silence (a trial read that as the partition
/// having no effect).
#[test]
fn a_partition_between_client_and_slave_cuts_a_direct_transfer_and_names_a_relayed_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("session-5.scn"), DIRECT_RETR).unwrap();
    let (code, out, err) = replay_in(dir.path(), &["session-5.scn"]);
    assert_eq!(code, 0, "{out}{err}");
    // Before the PASV, before the RETR, and once the RETR was sent.
    for (pair, at) in [
        ("client,slave-1", "1ms"),
        ("slave-1,client", "208.5ms"),
        ("client,slave-1", "208.69ms"),
    ] {
        {
            let (code, out, err) = replay_in(
                dir.path(),
                &["session-5.scn", "--partition", pair, "--at", at],
            );
            assert_eq!(code, 1, "{pair} at {at}: {out}{err}");
            assert!(
                out.contains("-    29  226 Transfer complete, 200000 bytes from slave-1"),
                "{pair} at {at}: {out}"
            );
            assert!(!out.contains("note:"), "{out}");
        }
    }
    // The directory form names the client after the file.
    let (code, out, _) = replay_in(
        dir.path(),
        &[".", "--partition", "session-5,slave-1", "--at-command", "7"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("+        425 "), "{out}");
    // A slave the session never used: nothing to cut, and it says so.
    let (code, out, _) = replay_in(
        dir.path(),
        &[
            "session-5.scn",
            "--partition",
            "client,slave-2",
            "--at",
            "1ms",
        ],
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("note: client has no transfer on slave-2 from then on"),
        "{out}"
    );
    // The client ignored the 227 address: relayed through the master.
    let relayed = DIRECT_RETR.replace(
        "client> RETR f.bin",
        "client: data connect ignore-address\nclient> RETR f.bin",
    );
    std::fs::write(dir.path().join("session-5.scn"), relayed).unwrap();
    let (code, out, err) = replay_in(
        dir.path(),
        &[
            "session-5.scn",
            "--partition",
            "client,slave-1",
            "--at",
            "1ms",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(
            "note: client's 1 transfer(s) on slave-1 from then on were relayed through the master"
        ),
        "{out}"
    );
    assert!(
        out.contains("--partition client,master or master,slave-1 does"),
        "{out}"
    );
    let (code, out, _) = replay_in(
        dir.path(),
        &[
            "session-5.scn",
            "--partition",
            "client,master",
            "--at",
            "1ms",
        ],
    );
    assert_eq!(code, 1, "{out}");
}

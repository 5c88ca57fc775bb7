//! Recording real sessions and replaying them in the simulator: a curl
//! session against `dftpd cluster --record DIR` replays with no difference
//! in the replies; an edited recording shows the edit as a difference.

mod common;

use common::*;
use std::time::Duration;

use dftpd_sim::{replay_file, ReplayOptions};

fn curl_ok(args: &[&str]) {
    let out = curl(args);
    assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
}

#[test]
fn a_recorded_curl_session_replays_with_no_difference_and_an_edit_shows() {
    let rec = tempfile::tempdir().unwrap();
    let rec_dir = rec.path().to_str().unwrap().to_string();
    // Not relaying (the cluster's default): session 3 shows the 425.
    let c = ClusterProc::start(&["--record", &rec_dir, "--pasv-without-pret", "listings"]);
    let work = tempfile::tempdir().unwrap();
    let first = work.path().join("first.bin");
    let second = work.path().join("second.bin");
    std::fs::write(&first, random_bytes(70_000, 1)).unwrap();
    std::fs::write(&second, random_bytes(12_345, 2)).unwrap();
    let login = format!("{USER}:{PASS}");
    let pret = ["--ftp-pret", "--no-ftp-skip-pasv-ip", "-u", login.as_str()];
    // Session 1: an upload. Session 2 (one connection, --next): another
    // upload, a listing, and a download of the file session 1 stored,
    // which the recording must declare as cluster state.
    let url_root = c.url("/");
    let mut one: Vec<&str> = pret.to_vec();
    one.extend(["-T", first.to_str().unwrap(), &url_root]);
    curl_ok(&one);
    let got = work.path().join("got.bin");
    let url_first = c.url("/first.bin");
    let mut two: Vec<&str> = pret.to_vec();
    two.extend(["-T", second.to_str().unwrap(), &url_root, "--next"]);
    two.extend(pret);
    two.extend([url_root.as_str(), "--next"]);
    two.extend(pret);
    two.extend(["-o", got.to_str().unwrap(), &url_first]);
    curl_ok(&two);
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&first).unwrap());
    // Session 3: curl's default ignores the 227 address; the master answers
    // 425 naming the fix, and the replayed client does the same as curl.
    let ignored = work.path().join("ignored.bin");
    let out = curl(&[
        "--ftp-pret",
        "-u",
        login.as_str(),
        "-o",
        ignored.to_str().unwrap(),
        &url_first,
    ]);
    assert!(!out.status.success());

    let files = finished_recordings(rec.path(), 3);
    assert_eq!(files.len(), 3, "{files:?}");
    let third_session = std::fs::read_to_string(&files[2]).unwrap();
    assert!(
        third_session.contains("client: data connect ignore-address\n"),
        "{third_session}"
    );
    assert!(third_session.contains("client< 425 Connect to the 227 address"));
    let second_session = std::fs::read_to_string(&files[1]).unwrap();
    // What the brief promises is in the file, the password is not.
    for want in [
        "client> PASS $PASSWORD\n",
        "user u $PASSWORD admin\n",
        "file slave-",
        " /first.bin size=70000",
        "client: data send 12345", // then " over=..." if it took 100 ms or more
        "client> PRET RETR first.bin\n",
        "# PRET decision: slave slave-",
        "# passive decision: slave slave-",
        "client< 226 Transfer complete, 70000 bytes from slave-",
    ] {
        assert!(
            second_session.contains(want),
            "{want:?} in:\n{second_session}"
        );
    }
    assert!(!second_session.contains(&format!("PASS {PASS}\n")));
    for f in &files {
        let report = replay_file(f, &ReplayOptions::default()).unwrap();
        assert!(
            report.agrees() && report.outcome.violations.is_empty(),
            "{}: {:?}\n{}",
            f.display(),
            report.diff,
            report.outcome.transcript
        );
        // Another seed (other latencies): still the same replies.
        let again = replay_file(
            f,
            &ReplayOptions {
                seed: 7,
                ..ReplayOptions::default()
            },
        )
        .unwrap();
        assert!(again.agrees(), "{:?}", again.diff);
    }

    // Edit one recorded reply: the replay shows it and fails.
    let edited_path = work.path().join("edited.scn");
    let edited = second_session.replacen("client< 213 70000", "client< 213 70001", 1);
    assert_ne!(edited, second_session, "the recording has SIZE's reply");
    std::fs::write(&edited_path, &edited).unwrap();
    let report = replay_file(&edited_path, &ReplayOptions::default()).unwrap();
    assert!(!report.agrees());
    let line = edited
        .lines()
        .position(|l| l == "client< 213 70001")
        .unwrap()
        + 1;
    assert!(
        report
            .diff
            .contains(&format!("@@ {}:{line} @@", edited_path.display())),
        "{:?}",
        report.diff
    );
    assert!(
        report.diff.contains(&format!("- {line:>5}  213 70001"))
            && report
                .diff
                .iter()
                .any(|l| l.starts_with('+') && l.ends_with(" 213 70000")),
        "{:?}",
        report.diff
    );

    // A fault injected into the replay changes what the client gets.
    let slave = second_session
        .lines()
        .find_map(|l| l.strip_prefix("# PRET decision: slave "))
        .unwrap()
        .to_string();
    let report = replay_file(
        &files[1],
        &ReplayOptions {
            seed: 0,
            faults: vec![dftpd_sim::Fault::CrashSlave {
                slave,
                when: dftpd_sim::When::At(Duration::ZERO),
            }],
            ..ReplayOptions::default()
        },
    )
    .unwrap();
    assert!(!report.agrees(), "{}", report.outcome.transcript);

    // A malformed recording is a file:line error, not a panic.
    let broken = work.path().join("broken.scn");
    std::fs::write(&broken, "slave s1\nat soon\n").unwrap();
    let err = replay_file(&broken, &ReplayOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with(&format!("{}:2: invalid duration", broken.display())),
        "{err}"
    );
}

//! The `dftpd-sim replay` command line: exit 0 and no diff when the
//! recorded replies agree, exit 1 and a `file:line` diff when one differs.

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

fn replay(text: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("session-1.scn");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_dftpd-sim"))
        .arg("replay")
        .arg(&file)
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), all)
}

#[test]
fn replay_exit_code_and_diff() {
    let (code, out) = replay(RECORDING);
    assert_eq!(code, 0, "{out}");
    let (code, out) = replay(&RECORDING.replace("client< 213 5", "client< 213 6"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("213 6") && out.contains("213 5"),
        "the diff shows both: {out}"
    );
    assert!(
        out.contains("session-1.scn:"),
        "the diff names the file and line: {out}"
    );
}

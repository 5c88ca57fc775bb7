//! An ABOR sent right after the client closes an upload's data connection
//! (found by a trial: zero-byte files left in `<slave root>/.dftpd-tmp/`,
//! there for good). The upload is not stored (426 then 226), and README
//! promises that a failed or cancelled upload removes its temporary file
//! at once: after every round, no slave's temporary directory holds a file.

mod common;

use common::*;

/// The trial's sequence, `count` times: STOR, 1000 bytes, close, ABOR.
const ABORT_AFTER_CLOSE: &str = r#"
import ftplib, sys
port, user, pw, mode, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
for i in range(n):
    f = ftplib.FTP(timeout=15); f.connect('127.0.0.1', port); f.login(user, pw)
    if mode == 'direct': f.trust_server_pasv_ipv4_address = True; f.sendcmd('PRET STOR leak')
    if mode == 'active': f.set_pasv(False)
    c = f.transfercmd('STOR leak'); c.sendall(b'x' * 1000); c.close()
    f.putcmd('ABOR'); r = (f.getmultiline(), f.getmultiline())
    print(mode, i, r[0][:3], r[1][:3])
    f.quit()
"#;

fn temp_files(cluster: &ClusterProc) -> Vec<String> {
    (1..=3)
        .flat_map(|n| {
            let dir = cluster.slave_root(n).join(".dftpd-tmp");
            std::fs::read_dir(&dir)
                .map(|d| {
                    d.map(|e| format!("slave-{n}/{}", e.unwrap().file_name().to_string_lossy()))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn abor_right_after_the_upload_closes_leaves_no_temporary_file() {
    let cluster = ClusterProc::start(&[]);
    let port = cluster.addr.port().to_string();
    for mode in ["direct", "relay", "active"] {
        let out = python(ABORT_AFTER_CLOSE, &[&port, USER, PASS, mode, "20"]);
        // Stored or not (the race decides), never a temporary file left:
        // give the slaves a moment to finish what the abort started.
        let clean = wait_until(|| temp_files(&cluster).is_empty());
        assert!(
            clean,
            "{mode}: temporary files left: {:?}\n{out}",
            temp_files(&cluster)
        );
    }
}

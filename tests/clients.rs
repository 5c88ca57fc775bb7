//! Real client libraries against the real binary: Python's ftplib (with
//! `sendcmd('PRET ...')` and the 227 address trusted) and suppaftp (tokio)
//! with `custom_command("PRET ...")`.

mod common;

use common::*;
use std::process::Command;

const FTPLIB_SCRIPT: &str = r#"
import ftplib, hashlib, io, sys
host, port, user, pw, payload_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
payload = open(payload_path, 'rb').read()
ftp = ftplib.FTP()
ftp.trust_server_pasv_ipv4_address = True   # the 227 names the slave
ftp.connect(host, port, timeout=30)
ftp.login(user, pw)
ftp.mkd('py')
ftp.cwd('py')
print(ftp.sendcmd('PRET STOR up.bin'))
ftp.storbinary('STOR up.bin', io.BytesIO(payload))
print(ftp.sendcmd('PRET RETR up.bin'))
conn = ftp.transfercmd('RETR up.bin')
print('data-peer', conn.getpeername()[0])
got = b''
while True:
    chunk = conn.recv(65536)
    if not chunk:
        break
    got += chunk
conn.close()
print(ftp.voidresp())
assert got == payload, 'downloaded bytes differ'
print(ftp.sendcmd('PRET LIST'))
names = ftp.nlst()
assert names == ['up.bin'], names
print('size', ftp.size('up.bin'))
ftp.quit()
print('ok')
"#;

#[test]
fn python_ftplib_with_pret() {
    let c = ClusterProc::start(&[]);
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(700_000, 11);
    let path = work.path().join("payload.bin");
    std::fs::write(&path, &payload).unwrap();
    let out = Command::new("python3")
        .args([
            "-c",
            FTPLIB_SCRIPT,
            "127.0.0.1",
            &c.addr.port().to_string(),
            USER,
            PASS,
        ])
        .arg(&path)
        .output()
        .expect("python3 must be installed");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "ftplib failed:\n{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("200 OK, planning for upcoming upload"),
        "{stdout}"
    );
    assert!(
        stdout.contains("200 OK, planning for upcoming download"),
        "{stdout}"
    );
    assert!(stdout.lines().any(|l| l == "size 700000"), "{stdout}");
    let holder = c.holders("py/up.bin");
    assert_eq!(holder.len(), 1);
    // The data connection of the download went to the slave itself.
    let peer = format!("data-peer 127.0.0.{}", 10 + holder[0]);
    assert!(stdout.lines().any(|l| l == peer), "{stdout}");
    assert!(stdout.trim_end().ends_with("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppaftp_tokio_with_custom_pret() {
    use suppaftp::tokio::AsyncFtpStream;
    use suppaftp::Status;
    let c = ClusterProc::start(&[]);
    let mut ftp = AsyncFtpStream::connect(c.addr).await.expect("connect");
    ftp.login(USER, PASS).await.expect("login");
    let payload = random_bytes(1_200_000, 12);

    let r = ftp
        .custom_command("PRET STOR s.bin", &[Status::CommandOk])
        .await
        .expect("PRET STOR");
    assert_eq!(
        text(&r.body).trim_end(),
        "200 OK, planning for upcoming upload"
    );
    let mut reader = std::io::Cursor::new(payload.clone());
    let n = ftp
        .put_file("s.bin", &mut tokio::io::BufReader::new(&mut reader))
        .await
        .expect("STOR");
    assert_eq!(n, payload.len() as u64);

    ftp.custom_command("PRET RETR s.bin", &[Status::CommandOk])
        .await
        .expect("PRET RETR");
    let mut stream = ftp.retr_as_stream("s.bin").await.expect("RETR");
    let mut got = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut got)
        .await
        .unwrap();
    ftp.finalize_retr_stream(stream).await.expect("226");
    assert!(got == payload, "downloaded bytes differ");

    // A RETR without PRET is refused with the PRET hint (suppaftp uses PASV).
    let err = ftp.retr_as_stream("s.bin").await.err().expect("must fail");
    assert!(err.to_string().contains("PRET"), "{err}");
    ftp.quit().await.expect("quit");
    assert_eq!(c.holders("s.bin").len(), 1);
}

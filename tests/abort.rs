//! ABOR as real clients send it. Python's ftplib `FTP.abort()` sends
//! `ABOR\r\n` as TCP urgent data (MSG_OOB), lftp sends the Telnet
//! "Interrupt Process" and "Synch" first (IAC IP, then IAC DM with DM as
//! urgent data, RFC 959 §4.1.3). Without SO_OOBINLINE on the control socket
//! the urgent byte is taken out of the stream: the line never ends (ftplib
//! waits for the data timeout) or loses a byte (lftp's `ABOR` read as
//! `BOR`).

mod common;

use common::*;

/// Raw control connection: urgent data and the Telnet Synch, before and
/// after login. Prints one line per reply.
const URGENT: &str = r#"
import socket, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.create_connection((host, port), timeout=10)
f = s.makefile('rb')
def reply():
    return f.readline().decode().rstrip('\r\n')
print('greeting', reply())
# ftplib's abort(): the whole line sent as urgent data.
s.sendall(b'NOOP\r\n', socket.MSG_OOB)
print('urgent noop', reply())
s.sendall(b'NOOP\r\n')
print('next noop', reply())
s.sendall(('USER %s\r\n' % user).encode())
print('user', reply())
s.sendall(('PASS %s\r\n' % pw).encode())
print('pass', reply())
# lftp: IAC IP, IAC, DM as urgent data, then the command.
s.sendall(b'\xff\xf4\xff')
s.sendall(b'\xf2', socket.MSG_OOB)
s.sendall(b'ABOR\r\n')
print('synch abor', reply())
s.sendall(b'PWD\r\n', socket.MSG_OOB)
print('urgent pwd', reply())
# IAC IAC is a literal 0xFF: not a command byte, not dropped.
s.sendall(b'\xff\xf6NO\xff\xf5OP\r\n')
print('ayt ao noop', reply())
s.sendall(b'QUIT\r\n')
print('quit', reply())
"#;

#[test]
fn urgent_data_and_the_telnet_synch_leave_the_command_line_whole() {
    let c = ClusterProc::start(&[]);
    let port = c.addr.port().to_string();
    let out = python(URGENT, &["127.0.0.1", &port, USER, PASS]);
    for want in [
        "urgent noop 200",
        "next noop 200",
        "user 331",
        "pass 230",
        "synch abor 225",
        "urgent pwd 257",
        "ayt ao noop 200",
        "quit 221",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(want)),
            "missing '{want}':\n{out}"
        );
    }
    assert!(!out.contains(" 500 "), "{out}");
}

/// ftplib in one mode (`pret`: PRET and the 227 address, straight to the
/// slave; `active`: PORT, the slave connects out; `relay`: plain PASV, the
/// master relays), one transfer (`retr` of big.bin, `stor` of up.bin)
/// aborted with `FTP.abort()` after 1 MiB, then a NOOP on the same
/// session. Prints the replies and how long abort() took.
const ABORT: &str = r#"
import ftplib, sys, time
host, port, user, pw, mode, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
ftp = ftplib.FTP()
ftp.connect(host, port, timeout=10)
ftp.login(user, pw)
if mode == 'active':
    ftp.set_pasv(False)
if mode == 'pret':
    ftp.trust_server_pasv_ipv4_address = True   # the 227 names the slave
    ftp.sendcmd('PRET %s %s' % (kind.upper(), 'big.bin' if kind == 'retr' else 'up.bin'))
if kind == 'retr':
    conn = ftp.transfercmd('RETR big.bin')
    got = 0
    while got < 1 << 20:
        chunk = conn.recv(65536)
        assert chunk, 'the download ended early'
        got += len(chunk)
else:
    conn = ftp.transfercmd('STOR up.bin')
    conn.sendall(b'x' * (1 << 20))
print('data peer', conn.getpeername()[0])
started = time.monotonic()
resp = ftp.abort()
print('abort', resp)
if resp.startswith('426'):
    print('then', ftp.getresp())
print('abort took %.1f s' % (time.monotonic() - started))
conn.close()
print('noop', ftp.voidcmd('NOOP'))
ftp.quit()
print('ok')
"#;

#[test]
fn ftplib_abort_mid_transfer_direct_active_and_relayed() {
    let big = random_bytes(48 << 20, 41);
    let c = ClusterProc::start_with(&[], |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/big.bin"), &big).unwrap();
    });
    let port = c.addr.port().to_string();
    for (mode, kind, peer) in [
        ("pret", "retr", Some("127.0.0.11")),
        ("active", "retr", Some("127.0.0.11")),
        ("relay", "retr", Some("127.0.0.1")),
        ("pret", "stor", None),
        ("relay", "stor", Some("127.0.0.1")),
    ] {
        let what = format!("{mode} {kind}");
        let out = python(ABORT, &["127.0.0.1", &port, USER, PASS, mode, kind]);
        // The transfer's 426 then ABOR's 226 (RFC 959 §4.1.3), or a 226
        // alone if the transfer had just ended.
        let aborted = out.contains("abort 426 ") && out.contains("then 226 ABOR");
        assert!(aborted || out.contains("abort 226 "), "{what}:\n{out}");
        let took: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("abort took ")?.strip_suffix(" s"))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{what}:\n{out}"));
        assert!(took < 5.0, "{what}: abort() took {took} s:\n{out}");
        assert!(out.contains("noop 200"), "{what}:\n{out}");
        assert!(out.ends_with("ok\n"), "{what}:\n{out}");
        // Where the data connection went: the slave holding the file, or
        // the master (relayed); an upload's slave is any of them.
        if let Some(peer) = peer {
            assert!(
                out.contains(&format!("data peer {peer}\n")),
                "{what}:\n{out}"
            );
        }
    }
    // No aborted upload is kept.
    assert!(c.holders("up.bin").is_empty());
    let log = c.log();
    assert!(!log.contains("not understood"), "{log}");
}

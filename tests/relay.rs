//! The master's relay (`pasv_without_pret = relay`, the cluster's default)
//! when a data connection goes wrong: a client that stops reading or
//! sending gets its 426 after `data_timeout_ms` like a direct transfer, a
//! client that never connects stores nothing, and a PROT P upload ends
//! with the master's own close_notify. Python's ftplib plays the client
//! (its defaults: no PRET, so every transfer is relayed).

mod common;

use common::*;

/// The data timeout of these clusters (ms): short, so a stall ends fast.
const TIMEOUT_MS: &str = "2000";

/// Starts a relayed transfer, then stops: `retr` reads 10,000 bytes of a
/// 20 MB download and no more, `stor` sends 1,000 bytes and neither sends
/// more nor closes. Prints the final reply, the seconds it took, then
/// checks that the session goes on (NOOP, a small relayed download) and
/// prints SITE SLAVES.
const STALL: &str = r#"
import ftplib, io, sys, time
host, port, user, pw, what = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
f = ftplib.FTP(timeout=20)
f.connect(host, port)
f.login(user, pw)
f.voidcmd('TYPE I')
if what == 'retr':
    c = f.transfercmd('RETR /big.bin')
    got = c.recv(10000)
    assert got, 'some bytes first'
else:
    c = f.transfercmd('STOR /stalled.bin')
    c.sendall(b'x' * 1000)
t = time.time()
try:
    r = f.getresp()
except ftplib.Error as e:
    r = str(e)
except Exception as e:
    r = 'no reply: %r' % e
print(r)
print('%.1f' % (time.time() - t))
c.close()
print(f.voidcmd('NOOP'))
out = io.BytesIO()
f.retrbinary('RETR /small.bin', out.write)
assert out.getvalue() == b'small\n', out.getvalue()
print(f.sendcmd('SITE SLAVES'))
f.quit()
"#;

fn seeded(extra: &[&str]) -> ClusterProc {
    let mut args = vec!["--data-timeout-ms", TIMEOUT_MS];
    args.extend_from_slice(extra);
    ClusterProc::start_with(&args, |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/big.bin"), random_bytes(20_000_000, 5)).unwrap();
        std::fs::write(dir.join("slave-1/small.bin"), b"small\n").unwrap();
    })
}

fn stall(c: &ClusterProc, what: &str) -> Vec<String> {
    let out = python(
        STALL,
        &["127.0.0.1", &c.addr.port().to_string(), USER, PASS, what],
    );
    out.lines().map(str::to_string).collect()
}

/// The final reply came as a 426, within a few data timeouts (it may take
/// one for the stall, and the slave's own).
fn assert_426_in_time(lines: &[String], log: &str) {
    assert!(lines[0].starts_with("426 "), "{lines:?}\n{log}");
    let secs: f64 = lines[1].parse().unwrap();
    assert!(secs < 8.0, "426 after {secs} s: {lines:?}");
    assert!(lines[2].starts_with("200"), "{lines:?}");
    // No transfer is left counted on any slave.
    let slaves = &lines[3..].join("\n");
    assert!(
        !slaves.contains("active=1"),
        "the relayed transfer was released: {slaves}"
    );
}

#[test]
fn a_relayed_download_whose_client_stops_reading_ends_with_426() {
    let c = seeded(&[]);
    let lines = stall(&c, "retr");
    assert_426_in_time(&lines, &c.log());
}

#[test]
fn a_relayed_upload_whose_client_stops_sending_ends_with_426_and_stores_nothing() {
    let c = seeded(&[]);
    let lines = stall(&c, "stor");
    assert_426_in_time(&lines, &c.log());
    assert!(
        lines[0].contains("client data connection: no progress for"),
        "README's wording: {lines:?}"
    );
    assert!(c.holders("stalled.bin").is_empty(), "nothing stored");
    let list = c.raw().cmd("SIZE /stalled.bin");
    assert!(list.starts_with("550"), "{list}");
}

/// A relayed STOR whose client never opens the data connection: the
/// master's passive listener gives up after the data timeout; the slave
/// must not take the relay's closed leg for the end of an (empty) upload.
#[test]
fn a_relayed_upload_whose_client_never_connects_stores_nothing() {
    let c = seeded(&[]);
    let mut raw = c.raw();
    assert!(raw.cmd("TYPE I").starts_with("200"));
    let (_, _addr) = raw.pasv();
    let started = std::time::Instant::now();
    let prelim = raw.cmd("STOR /never.bin");
    assert!(prelim.starts_with("150"), "{prelim}");
    let fin = raw.read_reply();
    assert!(
        fin.starts_with("425 Can't open data connection"),
        "{fin}\n{}",
        c.log()
    );
    assert!(started.elapsed().as_secs_f64() < 8.0);
    assert!(c.holders("never.bin").is_empty(), "nothing stored");
    let size = raw.cmd("SIZE /never.bin");
    assert!(size.starts_with("550"), "{size}");
}

/// PROT P through the relay (ftplib without PRET): an upload's data
/// connection ends with the client's close_notify and the master's in
/// return (`unwrap()` waits for it), then the 226; `storbinary`, a
/// download and a listing go through the relay too, and the session
/// stays in step.
const TLS_RELAY: &str = r#"
import ftplib, io, ssl, sys
host, port, user, pw, cafile = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=cafile)
f = ftplib.FTP_TLS(context=ctx, timeout=20)
f.connect(host, port)
f.login(user, pw)
f.prot_p()
f.voidcmd('TYPE I')
c = f.transfercmd('STOR /x.txt')
c.sendall(b'hello\n')
c.unwrap()
c.close()
print(f.voidresp())
payload = bytes(range(256)) * 4000
print(f.storbinary('STOR /y.bin', io.BytesIO(payload)))
got = io.BytesIO()
print(f.retrbinary('RETR /y.bin', got.write))
assert got.getvalue() == payload, 'bytes differ'
got = io.BytesIO()
f.retrbinary('RETR /x.txt', got.write)
assert got.getvalue() == b'hello\n', got.getvalue()
names = [n.rsplit('/', 1)[-1] for n in f.nlst('/')]
assert 'x.txt' in names and 'y.bin' in names, names
print(f.sendcmd('SITE SLAVES'))
f.quit()
"#;

#[test]
fn a_relayed_prot_p_upload_gets_the_masters_close_notify() {
    let c = ClusterProc::start_tls(&["--data-timeout-ms", TIMEOUT_MS]);
    let cert = c.tls_cert();
    let out = python(
        TLS_RELAY,
        &[
            "127.0.0.1",
            &c.addr.port().to_string(),
            USER,
            PASS,
            cert.to_str().unwrap(),
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("226 "), "{out}");
    assert!(lines[1].starts_with("226 "), "{out}");
    assert!(lines[2].starts_with("226 "), "{out}");
    let relayed: u64 = out
        .split("relayed=")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        relayed >= 2 * 1_024_000,
        "the transfers were relayed: {out}"
    );
    let holders = c.holders("x.txt");
    assert_eq!(holders.len(), 1);
    assert_eq!(
        std::fs::read(c.slave_root(holders[0]).join("x.txt")).unwrap(),
        b"hello\n"
    );
}

fn seeded_sizes() -> ClusterProc {
    ClusterProc::start_with(&["--data-timeout-ms", TIMEOUT_MS], |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/mib.bin"), random_bytes(1_048_576, 7)).unwrap();
        std::fs::write(dir.join("slave-1/small.bin"), random_bytes(30_000, 8)).unwrap();
    })
}

/// ABOR after the 150 of a relayed RETR whose client never opened the data
/// connection: answered at once, 426 for the transfer (no byte reached the
/// client, whatever the slave had pushed into the relay) and ABOR's 226.
#[test]
fn abor_of_a_relayed_download_before_the_client_connects_is_answered_at_once() {
    let c = seeded_sizes();
    for name in ["mib.bin", "small.bin"] {
        let mut raw = c.raw();
        assert!(raw.cmd("TYPE I").starts_with("200"));
        let _ = raw.pasv();
        let prelim = raw.cmd(&format!("RETR /{name}"));
        assert!(prelim.starts_with("150"), "{name}: {prelim}");
        // Give the slave time to push what it can into the relay's leg.
        std::thread::sleep(std::time::Duration::from_millis(300));
        let t = std::time::Instant::now();
        let first = raw.cmd("ABOR");
        let second = raw.read_reply();
        let secs = t.elapsed().as_secs_f64();
        assert!(
            first.starts_with("426 "),
            "{name}: {first} | {second}\n{}",
            c.log()
        );
        assert!(second.starts_with("226 "), "{name}: {first} | {second}");
        assert!(secs < 1.5, "{name}: answered after {secs} s");
        assert!(raw.cmd("NOOP").starts_with("200"));
        let slaves = raw.cmd("SITE SLAVES");
        assert!(!slaves.contains("active=1"), "{slaves}");
    }
}

/// A relayed download aborted after the client read part of it: SITE
/// SLAVES counts the bytes the master relayed.
const ABOR_PART: &str = r#"
import ftplib, sys
host, port, user, pw = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
f = ftplib.FTP(timeout=20)
f.connect(host, port)
f.login(user, pw)
f.voidcmd('TYPE I')
c = f.transfercmd('RETR /big.bin')
got = 0
while got < 1000000:
    d = c.recv(65536)
    assert d
    got += len(d)
f.putcmd('ABOR')
c.close()
print(f.getline().strip())
print(f.getline().strip())
print(f.sendcmd('SITE SLAVES'))
f.quit()
"#;

#[test]
fn an_aborted_relayed_download_counts_the_bytes_the_master_relayed() {
    let c = seeded(&[]);
    let out = python(
        ABOR_PART,
        &["127.0.0.1", &c.addr.port().to_string(), USER, PASS],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("426 "), "{out}");
    assert!(lines[1].starts_with("226 "), "{out}");
    let relayed: u64 = out
        .split("relayed=")
        .skip(1)
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(relayed >= 1_000_000, "relayed bytes counted: {out}");
    assert!(relayed < 20_000_000, "not the whole file: {out}");
}

/// A relayed PROT P data connection that resumes the TLS session of
/// another user's control connection is refused (425, not a byte served);
/// one that resumes a sibling's (same user, same address) goes through.
const TLS_FOREIGN: &str = r#"
import ftplib, io, ssl, sys, socket, re
host, port, user, pw, other, other_pw, cafile = sys.argv[1:8]
port = int(port)
ctx = ssl.create_default_context(cafile=cafile)
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
def login(u, p):
    f = ftplib.FTP_TLS(context=ctx, timeout=20)
    f.connect(host, port)
    f.login(u, p)
    f.prot_p()
    f.voidcmd('NOOP')
    return f
a = login(user, pw)
a.storbinary('STOR victim', io.BytesIO(b'secret' * 5000))
for what, b in [('foreign', login(other, other_pw)), ('sibling', login(user, pw))]:
    n = [int(x) for x in re.search(r'\((.*)\)', a.sendcmd('PASV')).group(1).split(',')]
    s = socket.create_connection((host, n[4] * 256 + n[5]))
    a.putcmd('RETR victim')
    got = b''
    try:
        ss = ctx.wrap_socket(s, server_hostname=host, session=b.sock.session)
        while True:
            d = ss.recv(65536)
            if not d:
                break
            got += d
    except (OSError, ssl.SSLError) as e:
        pass
    print(what, 'bytes', len(got))
    print(what, 'reply', a.getmultiline().replace('\n', ' '), '|', a.getmultiline().replace('\n', ' ') if got == b'' else '')
    try: s.close()
    except Exception: pass
"#;

#[test]
fn a_relayed_prot_p_download_refuses_another_users_tls_session() {
    let c = ClusterProc::start_tls(&["--data-timeout-ms", TIMEOUT_MS, "--user", "other:other-pw"]);
    let cert = c.tls_cert();
    let out = python(
        TLS_FOREIGN,
        &[
            "127.0.0.1",
            &c.addr.port().to_string(),
            USER,
            PASS,
            "other",
            "other-pw",
            cert.to_str().unwrap(),
        ],
    );
    assert!(out.contains("foreign bytes 0\n"), "{out}\n{}", c.log());
    assert!(
        out.contains("foreign reply 150 ") && out.contains("| 425 "),
        "{out}\n{}",
        c.log()
    );
    assert!(
        out.contains("belongs to another control connection"),
        "{out}"
    );
    assert!(out.contains("sibling bytes 30000\n"), "{out}\n{}", c.log());
}

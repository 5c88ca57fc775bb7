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

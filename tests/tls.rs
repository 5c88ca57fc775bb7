//! FTPS end to end (RFC 4217): `dftpd cluster --tls` with curl and Python's
//! ftplib, the protocol rules over raw sockets (TLS by Python's `ssl`),
//! resumption of the control session on a slave's data connection, relay
//! and FXP under TLS, and real clients. The slave link over TLS is in
//! tests/tls_link.rs.

mod common;

use common::*;

fn write_file(dir: &std::path::Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn curl_ftps_uploads_lists_and_downloads_through_a_slave() {
    let c = ClusterProc::start_tls(&[]);
    assert!(c.tls_cert().is_file(), "the certificate is made under tls/");
    assert!(c.log().contains("FTPS offered"), "{}", c.log());
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(1_500_000, 41);
    let src = write_file(work.path(), "up.bin", &payload);

    let out = curl_ftps(&["-v", "-T", src.to_str().unwrap(), &c.url("/")]);
    let verbose = text(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    let r = replies(&verbose);
    assert!(r.iter().any(|l| l.starts_with("234 ")), "{r:?}");
    assert!(r.iter().any(|l| l == "200 PBSZ=0"), "{r:?}");
    assert!(
        r.iter().any(|l| l == "200 Protection level set to Private"),
        "{r:?}"
    );
    // The data connection went to a slave, encrypted (curl reports the
    // handshake of the control and of the data connection).
    let pasv = r.iter().find(|l| l.starts_with("227")).expect("227");
    let ip = pasv_ip(pasv).unwrap();
    assert!(ip.starts_with("127.0.0.1") && ip != "127.0.0.1", "{pasv}");
    assert!(
        verbose.matches("SSL connection using").count() >= 2,
        "{verbose}"
    );
    assert!(
        r.iter()
            .any(|l| l.starts_with("226 Transfer complete, 1500000 bytes stored")),
        "{r:?}"
    );
    let holders = c.holders("up.bin");
    assert_eq!(holders.len(), 1);
    assert_eq!(format!("127.0.0.{}", 10 + holders[0]), ip);
    assert_eq!(
        std::fs::read(c.slave_root(holders[0]).join("up.bin")).unwrap(),
        payload
    );

    let out = curl_ftps(&[&c.url("/")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(" up.bin"),
        "{}",
        text(&out.stdout)
    );

    let dst = work.path().join("down.bin");
    let out = curl_ftps(&["-o", dst.to_str().unwrap(), &c.url("/up.bin")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&dst).unwrap(), payload, "byte-identical");
}

#[test]
fn curl_ssl_uses_tls_when_offered_and_falls_back_to_plain_when_not() {
    let work = tempfile::tempdir().unwrap();
    let src = write_file(work.path(), "f.txt", b"some bytes\n");

    // --ssl: TLS when the server offers it.
    let tls = ClusterProc::start_tls(&[]);
    let login = format!("{USER}:{PASS}");
    let out = curl(&[
        "--ssl",
        "-k",
        "-v",
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &login,
        "-T",
        src.to_str().unwrap(),
        &tls.url("/"),
    ]);
    let verbose = text(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    assert!(replies(&verbose).iter().any(|l| l.starts_with("234 ")));

    // Without a certificate: AUTH is refused (502), FEAT does not offer it,
    // --ssl goes on in clear and --ssl-reqd stops before logging in.
    let plain = ClusterProc::start(&[]);
    let out = curl(&[
        "--ssl",
        "-v",
        "--ftp-pret",
        "--no-ftp-skip-pasv-ip",
        "-u",
        &login,
        "-T",
        src.to_str().unwrap(),
        &plain.url("/"),
    ]);
    let verbose = text(&out.stderr);
    assert!(out.status.success(), "{verbose}");
    let r = replies(&verbose);
    assert!(
        r.iter()
            .any(|l| l.starts_with("502 AUTH TLS is not available")),
        "{r:?}"
    );
    assert!(!r.iter().any(|l| l.starts_with("234")), "{r:?}");
    assert_eq!(plain.holders("f.txt").len(), 1);
    let out = curl(&[
        "--ssl-reqd",
        "-u",
        &login,
        "--ftp-pret",
        &plain.url("/f.txt"),
    ]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
    let mut raw = RawFtp::connect(plain.addr);
    let feat = raw.cmd("FEAT");
    assert!(!feat.contains("AUTH") && !feat.contains("PBSZ"), "{feat}");
}

const FTPLIB_TLS: &str = r#"
import ftplib, io, ssl, sys
host, port, user, pw, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
other_user, other_pw = sys.argv[6], sys.argv[7]
payload = open(path, 'rb').read()

class Resuming(ftplib.FTP_TLS):
    # ftplib (3.11) does not offer the control session on data connections;
    # FileZilla, curl and lftp do. Do it here and note what happened.
    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
            self.data_peer = conn.getpeername()[0]
            self.reused = conn.session_reused
        return conn, size

def context(version):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE   # the cluster's self-signed certificate
    ctx.minimum_version = ctx.maximum_version = version
    return ctx

for name, version in [('tls1.3', ssl.TLSVersion.TLSv1_3), ('tls1.2', ssl.TLSVersion.TLSv1_2)]:
    ftp = Resuming(context=context(version))
    ftp.trust_server_pasv_ipv4_address = True   # the 227 names the slave
    ftp.connect(host, port, timeout=30)
    print(ftp.auth())
    ftp.login(user, pw)
    print(ftp.prot_p())
    print(ftp.sendcmd('PRET STOR ' + name))
    print(ftp.storbinary('STOR ' + name, io.BytesIO(payload)))
    print(name, 'stor slave', ftp.data_peer, 'resumed', ftp.reused)
    print(ftp.sendcmd('PRET RETR ' + name))
    got = io.BytesIO()
    print(ftp.retrbinary('RETR ' + name, got.write))
    assert got.getvalue() == payload, 'downloaded bytes differ'
    print(name, 'retr slave', ftp.data_peer, 'resumed', ftp.reused)
    print(ftp.sendcmd('PRET LIST'))
    names = ftp.nlst()
    print(name, 'list on', ftp.data_peer, 'resumed', ftp.reused, sorted(names))
    ftp.quit()

# A data connection of b that resumes the TLS session of another control
# connection: accepted only from one of the same user at the same address
# (rclone's parallel connections share one session cache), refused from
# another user's or from another address, on a slave and on the master.
ctx = context(ssl.TLSVersion.TLSv1_3)
def login(name, secret, source='127.0.0.1'):
    f = ftplib.FTP_TLS(context=ctx)
    f.trust_server_pasv_ipv4_address = True
    f.connect(host, port, timeout=30, source_address=(source, 0))
    f.login(name, secret)
    f.prot_p()
    f.voidcmd('NOOP')   # reads the session tickets
    return f
def resume(what, b, a, cmd):
    b.sendcmd('PRET ' + cmd)
    conn, _ = ftplib.FTP.ntransfercmd(b, cmd)
    try:
        data = ctx.wrap_socket(conn, server_hostname=host, session=a.sock.session)
        got = b''
        while True:
            chunk = data.recv(65536)
            if not chunk:
                break
            got += chunk
        print(what, 'data bytes', len(got), 'resumed', data.session_reused)
        data.close()
    except (OSError, ssl.SSLError) as e:
        print(what, 'data refused', type(e).__name__)
    try:
        print(what, 'reply', b.voidresp())
    except ftplib.Error as e:
        print(what, 'reply', e)
b = login(user, pw)
other = login(other_user, other_pw)
elsewhere = login(user, pw, source='127.0.0.2')
sibling = login(user, pw)
for what, a in [('foreign', other), ('elsewhere', elsewhere), ('sibling', sibling)]:
    resume(what, b, a, 'RETR tls1.3')
    resume(what + ' list', b, a, 'NLST')

# An upload whose TCP connection ends without TLS close_notify may have
# been cut by an attacker: it is not stored.
b.sendcmd('PRET STOR cut.bin')
conn = b.transfercmd('STOR cut.bin')
conn.sendall(payload)
conn.close()   # Python's close sends no close_notify (unwrap() would)
try:
    print('cut reply', b.voidresp())
except ftplib.Error as e:
    print('cut reply', e)
b.sendcmd('PRET NLST')
print('cut listed', 'cut.bin' in b.nlst())
print('ok')
"#;

#[test]
fn python_ftplib_prot_p_resumes_the_control_session_on_the_slave() {
    let c = ClusterProc::start_tls(&["--user", "other:other-pw"]);
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(300_000, 5);
    let path = write_file(work.path(), "p.bin", &payload);
    let port = c.addr.port().to_string();
    let out = python(
        FTPLIB_TLS,
        &[
            "127.0.0.1",
            &port,
            USER,
            PASS,
            path.to_str().unwrap(),
            "other",
            "other-pw",
        ],
    );
    assert!(out.contains("234 AUTH TLS successful"), "{out}");
    assert!(out.contains("200 Protection level set to Private"), "{out}");
    for v in ["tls1.3", "tls1.2"] {
        let holder = c.holders(v);
        assert_eq!(holder.len(), 1, "{v}");
        let slave = format!("127.0.0.{}", 10 + holder[0]);
        assert!(
            out.contains(&format!("{v} stor slave {slave} resumed True")),
            "{v}: the upload's data connection resumes at the slave\n{out}"
        );
        assert!(
            out.contains(&format!("{v} retr slave {slave} resumed True")),
            "{v}: the download's too\n{out}"
        );
        assert!(
            out.contains(&format!("{v} list on 127.0.0.1 resumed True")),
            "{v}: the master's listing too\n{out}"
        );
        assert_eq!(
            std::fs::read(c.slave_root(holder[0]).join(v)).unwrap(),
            payload
        );
    }
    // Another user's session, or the same user's from another address: the
    // slave (RETR) and the master (NLST) refuse it; the reply says why.
    for what in ["foreign", "elsewhere"] {
        assert!(
            out.contains(&format!(
                "{what} reply 425 Can't open data connection on slave"
            )),
            "{what}: {out}"
        );
        assert!(
            out.contains(&format!("{what} list reply 425 Can't open data connection")),
            "{what}: {out}"
        );
        // Not a byte reached the client.
        for conn in [what.to_string(), format!("{what} list")] {
            let data = out
                .lines()
                .find(|l| l.starts_with(&format!("{conn} data ")))
                .unwrap_or_else(|| panic!("{conn}: {out}"));
            assert!(
                data.starts_with(&format!("{conn} data bytes 0 "))
                    || data.starts_with(&format!("{conn} data refused")),
                "{data}"
            );
        }
    }
    assert!(
        out.contains("belongs to another control connection"),
        "{out}"
    );
    // The same user's other control connection from the same address: the
    // data connection goes through.
    assert!(
        out.contains("sibling data bytes 300000 resumed True\nsibling reply 226"),
        "{out}"
    );
    assert!(out.contains("sibling list reply 226"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("sibling list data bytes") && l.ends_with("resumed True")),
        "{out}"
    );
    assert!(
        out.contains("cut reply 426 ") && out.contains("close_notify"),
        "{out}"
    );
    assert!(out.contains("cut listed False"), "{out}");
    assert!(out.ends_with("ok\n"), "{out}");
}

/// rclone with explicit TLS and its default settings: parallel control
/// connections (4 transfers, 8 checkers) share one TLS session cache, so a
/// data connection resumes whichever control connection's ticket came
/// last. That one belongs to the same user at the same address: accepted.
#[test]
fn rclone_explicit_tls_with_parallel_connections_copies_a_tree() {
    let c = ClusterProc::start_tls(&[]);
    let work = tempfile::tempdir().unwrap();
    let up = work.path().join("rcs");
    std::fs::create_dir_all(&up).unwrap();
    let files: Vec<(String, Vec<u8>)> = (1..=12)
        .map(|i| (format!("f{i}"), random_bytes(i * 5000, 90 + i as u64)))
        .collect();
    for (name, bytes) in &files {
        std::fs::write(up.join(name), bytes).unwrap();
    }
    let remote = rclone_remote(c.addr, "rcs1").replacen(
        ":ftp,",
        ":ftp,explicit_tls=true,no_check_certificate=true,",
        1,
    );
    let log = rclone(&["copy", up.to_str().unwrap(), &remote]);
    assert!(!log.contains("ERROR"), "{log}");
    let down = work.path().join("down");
    rclone(&["copy", &remote, down.to_str().unwrap()]);
    let check = rclone(&["check", up.to_str().unwrap(), &remote]);
    assert!(check.contains("0 differences found"), "{check}");
    for (name, bytes) in &files {
        assert!(&std::fs::read(down.join(name)).unwrap() == bytes, "{name}");
        assert_eq!(c.holders(&format!("rcs1/{name}")).len(), 1, "{name}");
    }
    let log = c.log();
    assert!(
        !log.contains("data connection refused"),
        "no data connection refused:\n{log}"
    );
    assert!(
        log.contains("resumed a sibling's TLS session"),
        "data connections resumed other control connections' sessions:\n{log}"
    );
    assert!(log.contains("<- PRET STOR"), "straight to the slaves");
}

fn raw_tls(c: &ClusterProc, cmds: &[&str]) -> String {
    let port = c.addr.port().to_string();
    let mut args = vec!["127.0.0.1", port.as_str()];
    args.extend_from_slice(cmds);
    python(RAW_TLS, &args)
}

#[test]
fn raw_protocol_rules_for_auth_pbsz_prot_and_ccc() {
    let c = ClusterProc::start_tls(&[]);
    let login_user = format!("USER {USER}");
    let login_pass = format!("PASS {PASS}");
    let pipe = format!("!PIPE AUTH TLS|{login_user}");
    let out = raw_tls(
        &c,
        &[
            "FEAT",
            "PROT P",
            "PBSZ 0",
            "AUTH GSSAPI",
            // USER pipelined in clear behind AUTH must not run protected.
            &pipe,
            "!TLS",
            &login_pass,
            "AUTH TLS",
            "PROT P",
            "PBSZ 0",
            "PROT S",
            "PROT E",
            "PROT X",
            "PROT P",
            &login_user,
            &login_pass,
            "CCC",
            "NOOP",
        ],
    );
    let want = [
        "FEAT -> 211-Features:| AUTH TLS|",
        "PROT P -> 503 ",
        "PBSZ 0 -> 503 ",
        "AUTH GSSAPI -> 504 ",
        "!PIPE AUTH TLS|USER u -> 234 AUTH TLS successful",
        "TLS TLSv1.3",
        "PASS p -> 503 Login with USER first",
        "AUTH TLS -> 503 ",
        "PROT P -> 503 PROT needs PBSZ 0 first",
        "PBSZ 0 -> 200 PBSZ=0",
        "PROT S -> 536 ",
        "PROT E -> 536 ",
        "PROT X -> 504 ",
        "PROT P -> 200 Protection level set to Private",
        "USER u -> 331 ",
        "PASS p -> 230 ",
        "CCC -> 534 ",
        "NOOP -> 200 ",
    ];
    let mut lines = out.lines().skip(1);
    for w in want {
        let got = lines.next().unwrap_or("(nothing)");
        assert!(got.starts_with(w), "expected {w:?}, got {got:?}\n{out}");
    }
    assert!(out.contains("| PBSZ|") && out.contains("| PROT|"), "{out}");
}

#[test]
fn require_tls_refuses_login_before_auth_and_clear_data() {
    let c = ClusterProc::start_tls(&["--require-tls-control", "--require-tls-data"]);
    let mut raw = RawFtp::connect(c.addr);
    let r = raw.cmd(&format!("USER {USER}"));
    assert!(r.starts_with("530 ") && r.contains("AUTH TLS"), "{r}");
    let r = raw.cmd(&format!("PASS {PASS}"));
    assert!(r.starts_with("530 "), "{r}");
    let user = format!("USER {USER}");
    let pass = format!("PASS {PASS}");
    let out = raw_tls(
        &c,
        &[
            "AUTH TLS", "!TLS", &user, &pass, "PBSZ 0", "PROT C", "PASV", "LIST", "NOOP",
        ],
    );
    assert!(out.contains(&format!("{user} -> 331")), "{out}");
    assert!(out.contains(&format!("{pass} -> 230")), "{out}");
    assert!(
        out.contains("LIST -> 521 Send PBSZ 0 and PROT P: data connections must be encrypted"),
        "{out}"
    );
    assert!(out.contains("NOOP -> 200"), "{out}");
    // PROT P clients are served.
    let work = tempfile::tempdir().unwrap();
    let src = write_file(work.path(), "r.bin", b"required");
    let out = curl_ftps(&["-T", src.to_str().unwrap(), &c.url("/")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = curl_ftps(&[&c.url("/r.bin")]);
    assert_eq!(out.stdout, b"required", "{}", text(&out.stderr));
}

/// `pasv_without_pret = relay` under PROT P: the master terminates TLS for
/// a client without PRET and relays to the slave; a client that ignores the
/// 227 address (curl's default) is relayed the same way.
#[test]
fn relay_serves_prot_p_clients_without_pret() {
    let c = ClusterProc::start_tls(&["--pasv-without-pret", "relay"]);
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(400_000, 77);
    let src = write_file(work.path(), "rel.bin", &payload);
    let login = format!("{USER}:{PASS}");
    let out = curl(&[
        "--ftp-ssl-reqd",
        "-k",
        "-u",
        &login,
        "-T",
        src.to_str().unwrap(),
        &c.url("/"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(c.holders("rel.bin").len(), 1);
    // PRET, but the 227 address ignored: caught at the master, relayed.
    let dst = work.path().join("back.bin");
    let out = curl(&[
        "--ftp-ssl-reqd",
        "--ftp-pret",
        "-k",
        "-u",
        &login,
        "-o",
        dst.to_str().unwrap(),
        &c.url("/rel.bin"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(&dst).unwrap(), payload);
    let slaves = c.raw().cmd("SITE SLAVES");
    assert!(
        slaves.contains("relayed=800000"),
        "the upload and the caught download were relayed: {slaves}"
    );
}

/// lftp (GnuTLS) sends AUTH TLS by itself when FEAT offers it and protects
/// data connections; on the loopback cluster it needs active mode (see
/// tests/clients.rs), where the slave dials out and is still the TLS server.
#[test]
fn lftp_uses_tls_by_itself_in_active_mode() {
    let c = ClusterProc::start_tls(&[]);
    let work = tempfile::tempdir().unwrap();
    let payload = random_bytes(600_000, 9);
    let src = write_file(work.path(), "l.bin", &payload);
    let back = work.path().join("back.bin");
    let script = format!(
        "set ssl:verify-certificate no; set ftp:passive-mode off; set ftp:ssl-force true; set ftp:ssl-protect-data true; put {} -o l.bin; get l.bin -o {}; quit",
        src.display(),
        back.display()
    );
    let log = lftp(c.addr, &script);
    assert!(log.contains("<--- 234 "), "{log}");
    assert!(log.contains("---> PROT P"), "{log}");
    assert_eq!(std::fs::read(&back).unwrap(), payload);
    assert_eq!(c.holders("l.bin").len(), 1);
}

/// FXP with TLS between two sites, as DrFTPD does it: the client drives
/// both control connections; one server's slave is the TLS client of the
/// data connection (SSCN ON, or CPSV), the other's the TLS server. Both
/// directions; and a user without FXP rights is refused.
const FXP: &str = r#"
import ftplib, re, ssl, sys
host, pa, pb, user, pw = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
def site(port):
    f = ftplib.FTP_TLS(context=ctx)
    f.connect(host, port, timeout=30)
    f.login(user, pw)
    f.prot_p()
    f.voidcmd("TYPE I")
    return f
a, b = site(pa), site(pb)
def addr(reply):
    return re.search(r"\((\d+,\d+,\d+,\d+,\d+,\d+)\)", reply).group(1)
def fxp(src, dst, name, copy, src_client):
    # dst listens (TLS server unless CPSV), src connects out (PORT).
    dst.sendcmd("PRET STOR " + copy)
    if src_client:
        print("sscn", src.sendcmd("SSCN ON"))
        p = dst.sendcmd("PASV")
    else:
        print("sscn", src.sendcmd("SSCN OFF"))
        p = dst.sendcmd("CPSV")
    print("listen", p)
    src.sendcmd("PRET RETR " + name)
    print("port", src.sendcmd("PORT " + addr(p)))
    dst.putcmd("STOR " + copy)
    print("dst", dst.getresp())
    src.putcmd("RETR " + name)
    print("src", src.getresp())
    print("src", src.getresp())
    print("dst", dst.getresp())
fxp(a, b, "fxp.bin", "fxp.bin", True)
fxp(b, a, "fxp.bin", "back.bin", False)
print("done")
"#;

#[test]
fn fxp_between_two_sites_with_sscn_and_cpsv() {
    let data = random_bytes(700_000, 77);
    let d = data.clone();
    let a = ClusterProc::start_with(&["--tls", "--fxp", "--slaves", "1"], move |dir| {
        std::fs::create_dir_all(dir.join("slave-1")).unwrap();
        std::fs::write(dir.join("slave-1/fxp.bin"), &d).unwrap();
    });
    let b = ClusterProc::start_with(
        &[
            "--tls",
            "--fxp",
            "--slaves",
            "1",
            "--first-slave-ip",
            "127.0.0.31",
        ],
        |_| {},
    );
    let out = python(
        FXP,
        &[
            "127.0.0.1",
            &a.addr.port().to_string(),
            &b.addr.port().to_string(),
            USER,
            PASS,
        ],
    );
    assert!(out.contains("sscn 200 SSCN:CLIENT METHOD"), "{out}");
    assert!(out.contains("sscn 200 SSCN:SERVER METHOD"), "{out}");
    assert_eq!(out.matches("src 226").count(), 2, "{out}");
    assert_eq!(out.matches("dst 226").count(), 2, "{out}");
    // The bytes crossed: B holds A's file, and A got it back under a new name.
    assert_eq!(b.holders("fxp.bin"), [1]);
    assert!(std::fs::read(b.slave_root(1).join("fxp.bin")).unwrap() == data);
    assert!(std::fs::read(a.slave_root(1).join("back.bin")).unwrap() == data);

    // Without --fxp: SSCN ON and CPSV refused, PORT to another host too.
    let plain = ClusterProc::start_tls(&["--slaves", "1"]);
    let (user, pass) = (format!("USER {USER}"), format!("PASS {PASS}"));
    let r = raw_tls(
        &plain,
        &[
            "AUTH TLS",
            "!TLS",
            &user,
            &pass,
            "PBSZ 0",
            "PROT P",
            "SSCN ON",
            "CPSV",
            "PORT 127,0,0,31,200,0",
            "SSCN",
        ],
    );
    assert!(
        r.contains("550 SSCN ON: server-to-server transfers (FXP) are not allowed"),
        "{r}"
    );
    assert!(r.contains("550 CPSV: server-to-server"), "{r}");
    assert!(r.contains("504 Use your own address in PORT"), "{r}");
    assert!(r.contains("200 SSCN:SERVER METHOD"), "{r}");
}

/// suppaftp with rustls, verifying the cluster's certificate properly (its
/// names include 127.0.0.1 and every slave address): AUTH TLS, PROT P, a
/// PRET-routed upload and download through a slave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suppaftp_rustls_verifies_the_certificate_and_moves_files() {
    use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
    let c = tokio::task::spawn_blocking(|| ClusterProc::start_tls(&[]))
        .await
        .unwrap();
    let pem = std::fs::read(c.tls_cert()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(
        std::sync::Arc::new(config),
    ));
    let ftp = AsyncRustlsFtpStream::connect(c.addr)
        .await
        .expect("connect");
    let mut ftp = ftp
        .into_secure(connector, "127.0.0.1")
        .await
        .expect("AUTH TLS, PBSZ, PROT P");
    ftp.login(USER, PASS).await.expect("login");
    let payload = random_bytes(900_000, 31);
    suppaftp_round_trip(&mut ftp, "r.bin", &payload).await;
    ftp.quit().await.expect("quit");
    assert_eq!(c.holders("r.bin").len(), 1);
}

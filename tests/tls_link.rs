//! The slave link over TLS (`link_tls`): slaves that do not pin the
//! master's certificate are refused and logged, one that pins it joins.
//! (The client side of FTPS is in tests/tls.rs.)

mod common;

use common::*;

/// A master with `link_tls` and separate slave processes: slaves with a
/// wrong pin or none are refused (the master logs their address); a slave
/// pinning the certificate (by PEM file) joins; it has no certificate of its
/// own, so PROT P transfers to it get 521 while PROT C ones work.
#[test]
fn link_over_tls_refuses_slaves_that_do_not_pin_the_master() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("m.crt"), dir.path().join("m.key"));
    let pair = dftpd::tls::CertPair::self_signed(&["127.0.0.1".into()]).unwrap();
    pair.write_pem(&cert, &key).unwrap();
    let other = dftpd::tls::CertPair::self_signed(&["127.0.0.1".into()]).unwrap();
    let master_toml = dir.path().join("master.toml");
    std::fs::write(
        &master_toml,
        format!(
            "listen = \"127.0.0.1:0\"\nlink_listen = \"127.0.0.1:0\"\nlink_key = \"k\"\naccept_new_slaves = true\npassive_ports = \"0\"\nstore = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nlink_tls = true\n[[users]]\nname = \"{USER}\"\npassword = \"{PASS}\"\nadmin = true\n",
            dir.path().join("master.redb").display(),
            cert.display(),
            key.display(),
        ),
    )
    .unwrap();
    let master_log = dir.path().join("master.log");
    let mut master = spawn_config("master", &master_toml, &master_log);
    let control = wait_ready(&mut master, "master ready on ", &master_log);
    let _master = KillOnDrop(master);
    let master_text = || std::fs::read_to_string(&master_log).unwrap_or_default();
    let mut link = None;
    assert!(wait_until(|| {
        link = master_text()
            .lines()
            .find(|l| l.contains("master listening"))
            .and_then(|l| l.split("link_addr=").nth(1))
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string);
        link.is_some()
    }));
    let link = link.unwrap();
    let slave = |name: &str, ip: &str, pin: Option<String>| {
        let toml = dir.path().join(format!("{name}.toml"));
        let pin = pin
            .map(|p| format!("master_cert_pin = \"{p}\"\n"))
            .unwrap_or_default();
        std::fs::write(
            &toml,
            format!(
                "name = \"{name}\"\nmaster = \"{link}\"\nlink_key = \"k\"\nroot = \"{}\"\ndata_ip = \"{ip}\"\npassive_ports = \"0\"\nreconnect_min_ms = 100\nreconnect_max_ms = 500\ncreate_root = true\n{pin}",
                dir.path().join(name).display()
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("{name}.log"));
        (spawn_config("slave", &toml, &log), log)
    };

    // Pinned to another certificate: the slave refuses the master, the
    // master logs the failed handshake with the slave's address.
    let (wrong, wrong_log) = slave("wrongpin", "127.0.0.31", Some(other.fingerprint_sha256()));
    let _wrong = KillOnDrop(wrong);
    assert!(
        wait_until(|| master_text().contains("slave refused: link TLS handshake failed")),
        "{}",
        master_text()
    );
    let line = master_text()
        .lines()
        .find(|l| l.contains("link TLS handshake failed"))
        .unwrap()
        .to_string();
    assert!(line.contains("peer=127.0.0.1:"), "{line}");
    assert!(wait_until(|| std::fs::read_to_string(&wrong_log)
        .unwrap_or_default()
        .contains("server certificate is not the pinned one")));

    // No pin at all: a plain Hello to a TLS listener.
    let (plain, _) = slave("nopin", "127.0.0.32", None);
    let _plain = KillOnDrop(plain);
    assert!(wait_until(|| master_text()
        .matches("slave refused: link TLS handshake failed")
        .count()
        >= 2));

    // The right pin (the certificate's PEM file) joins.
    let (mut good, good_log) = slave("good", "127.0.0.33", Some(cert.display().to_string()));
    let _ = wait_line(&mut good, "good ready", &good_log);
    let _good = KillOnDrop(good);
    let mut raw = RawFtp::connect(control);
    raw.login();
    // "ready" is printed once connected; the master may still be taking
    // its file list.
    let mut slaves = String::new();
    wait_until(|| {
        slaves = raw.cmd("SITE SLAVES");
        slaves.contains("good online")
    });
    assert!(slaves.contains("good online"), "{slaves}");
    assert!(
        !slaves.contains("wrongpin") && !slaves.contains("nopin"),
        "{slaves}"
    );
    assert!(master_text().contains("link_tls=true"), "{}", master_text());

    // "good" has no certificate of its own: PROT P to it is refused with
    // 521 naming it, PROT C works.
    let pass = format!("PASS {PASS}");
    let user = format!("USER {USER}");
    let port = control.port().to_string();
    let out = python(
        RAW_TLS,
        &[
            "127.0.0.1",
            &port,
            "AUTH TLS",
            "!TLS",
            &user,
            &pass,
            "PBSZ 0",
            "PROT P",
            "PRET STOR x",
            "PORT 127,0,0,1,200,1",
            "STOR x",
        ],
    );
    assert!(
        out.contains("STOR x -> 521 Use PROT C: slave good has no TLS certificate"),
        "{out}"
    );
    assert!(raw.cmd("PRET STOR y.bin").starts_with("200"));
    let (_, addr) = raw.pasv();
    let (_, fin) = raw.stor("y.bin", addr, b"clear");
    assert!(fin.starts_with("226"), "{fin}");
}

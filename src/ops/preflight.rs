//! Checks of a config against the host it is about to run on, made before
//! a master or slave starts and by `dftpd master|slave --config F --check`.
//! [`crate::config`] checks that a config is well formed; these check what
//! only the host can tell (is this address ours, is it free, does the
//! storage root exist) and refuse settings that are valid but certainly
//! wrong (the placeholder link key). Each error is one line naming the
//! field and saying what to do.

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;

use crate::config::{ConfigError, MasterConfig, SlaveConfig};

/// The default `link_key`: refused, everyone knows it.
pub const PLACEHOLDER_LINK_KEY: &str = "change-me";
/// The key of `master.example.toml` and `slave.example.toml`: accepted so
/// the examples run as shipped, with a warning.
pub const EXAMPLE_LINK_KEY: &str = "example-key-replace-me-with-openssl-rand-hex-24";

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("link_key is the placeholder \"{PLACEHOLDER_LINK_KEY}\": set the same secret on the master and every slave, e.g. the output of `openssl rand -hex 24`")]
    PlaceholderKey,
    #[error("{field} {addr}: address already in use (another dftpd or FTP server?); stop it or change {field}")]
    AddressInUse {
        field: &'static str,
        addr: SocketAddr,
    },
    #[error("{field} {addr}: {ip} is not an address of this host; use one of its addresses")]
    NotLocal {
        field: &'static str,
        addr: SocketAddr,
        ip: IpAddr,
    },
    #[error("{field} {addr}: {source}")]
    Bind {
        field: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{first} and {second} are the same address {addr}")]
    SameAddress {
        first: &'static str,
        second: &'static str,
        addr: SocketAddr,
    },
    #[error("data_ip = {0}: PASV replies must name an address clients reach; set this host's address (pasv_address too, behind NAT)")]
    WildcardDataIp(IpAddr),
    #[error("data_ip = {0} is not an address of this host: set one of its addresses (and pasv_address if clients reach it through NAT)")]
    DataIpNotLocal(IpAddr),
    #[error("pasv_address = {0}: clients cannot connect to it; set the address they reach")]
    WildcardPasvAddress(IpAddr),
    #[error(
        "root {0} does not exist: create it (is its disk mounted?), or set create_root = true"
    )]
    MissingRoot(PathBuf),
    #[error("root {0} is not a directory")]
    RootNotDir(PathBuf),
    #[error("{field}: directory {} does not exist", dir.display())]
    MissingDir { field: &'static str, dir: PathBuf },
}

/// How a check treats listen addresses: in use is an error before a start
/// and a warning for `--check` (the running server may hold them); a
/// reload (SIGHUP) does not look at them (they need a restart anyway).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Start,
    Check,
    Reload,
}

/// Checks a master's config. `Ok` carries warnings to log.
pub fn check_master(cfg: &MasterConfig, mode: Mode) -> Result<Vec<String>, PreflightError> {
    cfg.validate()?;
    let mut warnings = Vec::new();
    check_key(&cfg.link_key, &mut warnings)?;
    if cfg.users.is_empty() {
        warnings.push(
            "no [[users]] in the config: only users kept in the store (SITE ADDUSER) can log in"
                .to_string(),
        );
    }
    for u in cfg.users.iter().filter(|u| u.password_hash.is_none()) {
        warnings.push(format!(
            "user {}: plain-text password in the config: store password_hash instead (dftpd hash-password)",
            u.name
        ));
    }
    for (field, path) in [("store", &cfg.store), ("xferlog", &cfg.xferlog)] {
        if let Some(dir) = path.as_deref().and_then(existing_parent_missing) {
            return Err(PreflightError::MissingDir { field, dir });
        }
    }
    if mode != Mode::Reload {
        check_listen_addrs(&master_addrs(cfg), mode, &mut warnings)?;
    }
    Ok(warnings)
}

/// The addresses a master binds, by config field.
pub fn master_addrs(cfg: &MasterConfig) -> Vec<(&'static str, SocketAddr)> {
    let mut addrs = vec![("listen", cfg.listen), ("link_listen", cfg.link_listen)];
    if let Some(a) = cfg.admin_listen {
        addrs.push(("admin_listen", a));
    }
    addrs
}

/// Checks a slave's config (not its link to the master). `Ok` carries
/// warnings to log.
pub fn check_slave(cfg: &SlaveConfig, mode: Mode) -> Result<Vec<String>, PreflightError> {
    cfg.validate()?;
    let mut warnings = Vec::new();
    check_key(&cfg.link_key, &mut warnings)?;
    if let Some(p) = cfg.pasv_address {
        if p.is_unspecified() {
            return Err(PreflightError::WildcardPasvAddress(p));
        }
    }
    if cfg.data_ip.is_unspecified() {
        // Behind NAT the listeners may take every address, as long as the
        // replies name the one clients reach.
        if cfg.pasv_address.is_none() {
            return Err(PreflightError::WildcardDataIp(cfg.data_ip));
        }
    } else {
        match TcpListener::bind(SocketAddr::new(cfg.data_ip, 0)) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                return Err(PreflightError::DataIpNotLocal(cfg.data_ip))
            }
            Err(source) => {
                return Err(PreflightError::Bind {
                    field: "data_ip",
                    addr: SocketAddr::new(cfg.data_ip, 0),
                    source,
                })
            }
        }
    }
    match std::fs::metadata(&cfg.root) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(PreflightError::RootNotDir(cfg.root.clone())),
        Err(_) if cfg.create_root => {
            if mode == Mode::Check {
                warnings.push(format!(
                    "root {} does not exist; it will be created (create_root = true)",
                    cfg.root.display()
                ));
            }
        }
        Err(_) => return Err(PreflightError::MissingRoot(cfg.root.clone())),
    }
    Ok(warnings)
}

/// The directory a file would be created in, when it does not exist.
fn existing_parent_missing(file: &std::path::Path) -> Option<PathBuf> {
    let dir = file.parent().filter(|d| !d.as_os_str().is_empty())?;
    (!dir.is_dir()).then(|| dir.to_path_buf())
}

fn check_key(key: &str, warnings: &mut Vec<String>) -> Result<(), PreflightError> {
    if key == PLACEHOLDER_LINK_KEY {
        return Err(PreflightError::PlaceholderKey);
    }
    if key == EXAMPLE_LINK_KEY {
        warnings.push(
            "link_key is the example's key: anyone who has read the example can join a slave; set your own (openssl rand -hex 24)"
                .to_string(),
        );
    }
    Ok(())
}

/// Each address can be bound now (port 0: any free port, not checked),
/// and no two fields name the same one. `fields` pairs a field (or flag)
/// name with its address.
pub fn check_listen_addrs(
    fields: &[(&'static str, SocketAddr)],
    mode: Mode,
    warnings: &mut Vec<String>,
) -> Result<(), PreflightError> {
    for (i, (first, a)) in fields.iter().enumerate() {
        if let Some((second, _)) = fields[i + 1..]
            .iter()
            .find(|(_, b)| a.port() != 0 && b == a)
        {
            return Err(PreflightError::SameAddress {
                first,
                second,
                addr: *a,
            });
        }
    }
    for &(field, addr) in fields {
        match TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AddrInUse => {
                if mode == Mode::Check {
                    warnings.push(format!(
                        "{field} {addr} is in use now (fine if it is this config's running server)"
                    ));
                } else {
                    return Err(PreflightError::AddressInUse { field, addr });
                }
            }
            Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
                return Err(PreflightError::NotLocal {
                    field,
                    addr,
                    ip: addr.ip(),
                })
            }
            Err(source) => {
                return Err(PreflightError::Bind {
                    field,
                    addr,
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Turns an error from binding `fields` (after the checks passed, a race)
/// into one naming the field when it can tell which.
pub fn explain_bind_error(fields: &[(&'static str, SocketAddr)], e: &std::io::Error) -> String {
    if e.kind() == ErrorKind::AddrInUse {
        let mut w = Vec::new();
        if let Err(named) = check_listen_addrs(fields, Mode::Start, &mut w) {
            return named.to_string();
        }
    }
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slave(dir: &std::path::Path) -> SlaveConfig {
        SlaveConfig {
            link_key: "k".into(),
            root: dir.to_path_buf(),
            ..SlaveConfig::default()
        }
    }

    #[test]
    fn slave_checks_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        check_slave(&slave(dir.path()), Mode::Start).unwrap();
        let err = |c: &SlaveConfig| check_slave(c, Mode::Start).unwrap_err().to_string();

        let mut c = slave(dir.path());
        c.data_ip = "0.0.0.0".parse().unwrap();
        assert!(err(&c).starts_with("data_ip = 0.0.0.0: "), "{}", err(&c));
        c.pasv_address = Some("127.0.0.1".parse().unwrap());
        check_slave(&c, Mode::Start).unwrap();

        let mut c = slave(dir.path());
        c.data_ip = "192.0.2.1".parse().unwrap(); // TEST-NET-1: never ours
        assert!(err(&c).contains("data_ip = 192.0.2.1 is not an address of this host"));

        let mut c = slave(&dir.path().join("missing"));
        assert!(err(&c).contains("does not exist"), "{}", err(&c));
        assert!(err(&c).contains("create_root = true"));
        c.create_root = true;
        check_slave(&c, Mode::Start).unwrap();
        assert!(
            !dir.path().join("missing").exists(),
            "checks create nothing"
        );

        let mut c = slave(dir.path());
        c.link_key = PLACEHOLDER_LINK_KEY.into();
        assert!(err(&c).starts_with("link_key is the placeholder"));
        c.link_key = EXAMPLE_LINK_KEY.into();
        assert_eq!(check_slave(&c, Mode::Start).unwrap().len(), 1);
        let e = err(&slave(&dir.path().join("x")));
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn master_checks_keys_users_and_addresses() {
        let mut c = MasterConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            link_listen: "127.0.0.1:0".parse().unwrap(),
            ..MasterConfig::default()
        };
        let e = check_master(&c, Mode::Start).unwrap_err().to_string();
        assert!(
            e.contains("placeholder") && e.contains("openssl rand"),
            "{e}"
        );
        c.link_key = "secret".into();
        let w = check_master(&c, Mode::Start).unwrap();
        assert!(w[0].contains("no [[users]]"), "{w:?}");

        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        c.link_listen = taken.local_addr().unwrap();
        let e = check_master(&c, Mode::Start).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "link_listen {}: address already in use (another dftpd or FTP server?); stop it or change link_listen",
                c.link_listen
            )
        );
        let w = check_master(&c, Mode::Check).unwrap();
        assert!(w.iter().any(|w| w.contains("in use now")), "{w:?}");

        c.listen = c.link_listen;
        let e = check_master(&c, Mode::Check).unwrap_err().to_string();
        assert!(
            e.starts_with("listen and link_listen are the same address"),
            "{e}"
        );

        c.listen = "127.0.0.1:0".parse().unwrap();
        c.link_listen = "127.0.0.1:0".parse().unwrap();
        c.xferlog = Some("/nonexistent-dir/xferlog".into());
        let e = check_master(&c, Mode::Check).unwrap_err().to_string();
        assert_eq!(e, "xferlog: directory /nonexistent-dir does not exist");
        c.xferlog = None;

        c.listen = "192.0.2.1:21".parse().unwrap();
        c.link_listen = "127.0.0.1:0".parse().unwrap();
        let e = check_master(&c, Mode::Start).unwrap_err().to_string();
        assert!(
            e.starts_with("listen 192.0.2.1:21: 192.0.2.1 is not an address"),
            "{e}"
        );
    }
}

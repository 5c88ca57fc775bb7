//! The transfer log: one line per transfer in the xferlog format (see
//! `xferlog(5)`), byte for byte as vsftpd writes it with
//! `xferlog_std_format=YES` and its default `use_localtime=NO` (times in
//! UTC), so existing tools (xferstats, log shippers, fail2ban filters)
//! read it unchanged:
//!
//! ```text
//! current-time transfer-time remote-host file-size filename transfer-type special-action-flag direction access-mode username service-name authentication-method authenticated-user-id completion-status
//! Thu Mar  4 08:12:30 2004 1 127.0.0.1 492 /pub/index.html b _ o r alice ftp@slave-2 0 * c
//! ```
//!
//! - current-time: `%a %b %e %H:%M:%S %Y` in UTC when the transfer ended;
//! - transfer-time: whole seconds, at least 1 (as vsftpd);
//! - filename: the path as the client's FTP root names it, spaces written
//!   as `_` and unprintable characters as `?` (as vsftpd: a field never
//!   contains a space, so the line splits into 18 words);
//! - transfer-type `b` (dftpd transfers in binary only), special-action
//!   `_`, direction `o` (download) or `i` (upload), access-mode `r`;
//! - **service-name is `ftp@SLAVE`**: the slave that sent or stored the
//!   bytes (parsers that expect `ftp` can strip from `@`);
//! - authentication-method `0`, authenticated-user-id `*`;
//! - completion-status `c` (complete) or `i` (incomplete).
//!
//! [`XferLog::reopen`] opens the file again by name (after logrotate moved
//! it: SIGHUP does this). Writes are one `write(2)` of one whole line on a
//! file opened with `O_APPEND`, so lines never interleave.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::metrics::Direction;

#[derive(Debug, thiserror::Error)]
pub enum XferLogError {
    #[error("xferlog {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
}

/// One finished transfer.
#[derive(Debug, Clone)]
pub struct XferRecord<'a> {
    /// When the transfer ended, seconds since the Unix epoch (the master's
    /// wall clock, `Env::unix_now`).
    pub end_unix: i64,
    pub duration: Duration,
    pub remote: IpAddr,
    /// Bytes that went over the data connection.
    pub bytes: u64,
    /// Absolute virtual path (`/dir/file`).
    pub path: &'a str,
    pub direction: Direction,
    pub user: &'a str,
    /// The slave that sent or stored the bytes.
    pub slave: &'a str,
    /// The final reply was 226.
    pub complete: bool,
}

/// Formats one xferlog line (without the newline).
pub fn format_line(r: &XferRecord<'_>) -> String {
    let mut out = String::with_capacity(96 + r.path.len());
    push_date(&mut out, r.end_unix);
    let secs = r.duration.as_secs().max(1);
    let _ = write!(out, " {secs} {} {} ", r.remote, r.bytes);
    push_field(&mut out, r.path);
    out.push_str(" b _ ");
    out.push_str(match r.direction {
        Direction::Upload => "i",
        Direction::Download => "o",
    });
    out.push_str(" r ");
    push_field(&mut out, r.user);
    out.push_str(" ftp@");
    push_field(&mut out, r.slave);
    out.push_str(" 0 * ");
    out.push(if r.complete { 'c' } else { 'i' });
    out
}

/// A field as vsftpd writes it: spaces become `_`, unprintable characters
/// (control characters, DEL) `?`; an empty field is `_`.
fn push_field(out: &mut String, s: &str) {
    if s.is_empty() {
        out.push('_');
    }
    for c in s.chars() {
        out.push(match c {
            ' ' => '_',
            c if c.is_control() => '?',
            c => c,
        });
    }
}

/// `Thu Mar  4 08:12:30 2004`: ctime's layout (`%a %b %e %H:%M:%S %Y`), UTC.
fn push_date(out: &mut String, unix: i64) {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = DAYS[days.rem_euclid(7) as usize];
    let _ = write!(
        out,
        "{weekday} {} {d:>2} {:02}:{:02}:{:02} {y}",
        MONTHS[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The open transfer log. Share it (`Arc<XferLog>`); [`XferLog::write`] may
/// be called from any task.
pub struct XferLog {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    /// A write failed and was logged; the next failures stay quiet until
    /// a write succeeds again (a full disk must not flood the log).
    failing: AtomicBool,
}

impl std::fmt::Debug for XferLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XferLog").field("path", &self.path).finish()
    }
}

fn open_append(path: &Path) -> Result<std::fs::File, XferLogError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        // It names users, addresses and paths: not for everyone (vsftpd
        // makes it 0600 too).
        .mode(0o600)
        .open(path)
        .map_err(|source| XferLogError::Open {
            path: path.display().to_string(),
            source,
        })
}

impl XferLog {
    /// Opens (creates) `path` for appending.
    pub fn open(path: impl Into<PathBuf>) -> Result<XferLog, XferLogError> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(XferLog {
            path,
            file: Mutex::new(Some(file)),
            failing: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file again by its name (after a rotation). On failure
    /// the old file stays in use and the error is returned.
    pub fn reopen(&self) -> Result<(), XferLogError> {
        let file = open_append(&self.path)?;
        *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
        self.failing.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Appends the line of one transfer. A failed write is logged (once
    /// until a write succeeds again) and otherwise ignored: the transfer
    /// itself is done.
    pub fn write(&self, r: &XferRecord<'_>) {
        let mut line = format_line(r);
        line.push('\n');
        let result = match self.file.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(f) => f.write_all(line.as_bytes()),
            None => return,
        };
        match result {
            Ok(()) => self.failing.store(false, Ordering::Relaxed),
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the transfer log");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(path: &str) -> XferRecord<'_> {
        XferRecord {
            end_unix: 1_078_387_950, // Thu Mar  4 08:12:30 2004 UTC
            duration: Duration::from_millis(300),
            remote: "127.0.0.1".parse().unwrap(),
            bytes: 492,
            path,
            direction: Direction::Download,
            user: "alice",
            slave: "slave-2",
            complete: true,
        }
    }

    #[test]
    fn a_line_as_vsftpd_writes_it() {
        assert_eq!(
            format_line(&rec("/pub/index.html")),
            "Thu Mar  4 08:12:30 2004 1 127.0.0.1 492 /pub/index.html b _ o r alice ftp@slave-2 0 * c"
        );
    }

    #[test]
    fn spaces_and_control_characters_never_split_a_field() {
        let mut r = rec("/my files/a\tb\u{7f}.txt");
        r.direction = Direction::Upload;
        r.complete = false;
        r.duration = Duration::from_secs(75);
        r.remote = "::1".parse().unwrap();
        let line = format_line(&r);
        assert_eq!(
            line,
            "Thu Mar  4 08:12:30 2004 75 ::1 492 /my_files/a?b?.txt b _ i r alice ftp@slave-2 0 * i"
        );
        assert_eq!(line.split(' ').filter(|w| !w.is_empty()).count(), 18);
        let r = XferRecord {
            user: "",
            slave: "odd name",
            ..rec("/x\ny")
        };
        let line = format_line(&r);
        assert!(
            line.contains(" /x?y b _ o r _ ftp@odd_name 0 * c"),
            "{line}"
        );
        assert!(!line.contains('\n'));
    }

    #[test]
    fn dates_in_utc_across_the_calendar() {
        let date = |t: i64| {
            let mut s = String::new();
            push_date(&mut s, t);
            s
        };
        assert_eq!(date(0), "Thu Jan  1 00:00:00 1970");
        assert_eq!(date(951_782_400), "Tue Feb 29 00:00:00 2000");
        assert_eq!(date(1_700_000_000), "Tue Nov 14 22:13:20 2023");
        assert_eq!(date(4_102_444_799), "Thu Dec 31 23:59:59 2099");
        assert_eq!(date(-1), "Wed Dec 31 23:59:59 1969");
    }

    #[test]
    fn appends_and_reopens_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("xferlog");
        let log = XferLog::open(&path).unwrap();
        log.write(&rec("/a"));
        std::fs::rename(&path, dir.path().join("xferlog.1")).unwrap();
        log.write(&rec("/b")); // still the rotated file
        log.reopen().unwrap();
        log.write(&rec("/c"));
        let old = std::fs::read_to_string(dir.path().join("xferlog.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert_eq!(old.lines().count(), 2);
        assert_eq!(new.lines().count(), 1);
        assert!(new.contains(" /c b _ o "));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

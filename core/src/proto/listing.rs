//! Directory listing formats and FTP timestamps.
//!
//! `LIST` output is not specified by RFC 959 (§4.1.3 only says it is meant
//! for humans), but real clients parse it as `ls -l` output, so
//! [`list_line`] copies that layout including its six-month rule for dates.
//! `MLSD`/`MLST` use the machine-readable facts of RFC 3659 §7
//! ([`mlsx_facts`]), and `MDTM`/`MFMT`/`modify=` use the
//! `YYYYMMDDHHMMSS` UTC time-val of RFC 3659 §2.3 ([`mdtm`],
//! [`parse_mdtm`]). Calendar arithmetic is done here (proleptic Gregorian,
//! UTC) to avoid a date-time dependency for these few conversions.

/// One directory entry as the listing formats need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch, UTC.
    pub mtime: i64,
    pub owner: String,
    pub group: String,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `ls` shows the time of day instead of the year for dates within about
/// six months of now.
const RECENT_SECS: u64 = 180 * 86_400;

/// First and last second that fit a four-digit year (0000-01-01T00:00:00
/// and 9999-12-31T23:59:59), so a time-val is always exactly 14 digits.
const MIN_TIMEVAL: i64 = -62_167_219_200;
const MAX_TIMEVAL: i64 = 253_402_300_799;

/// One `LIST` line without line ending, e.g.
/// `-rw-r--r--   1 alice    users        1234 Nov 24 05:22 file.zip`.
///
/// `now` decides between `Mon DD HH:MM` (within 180 days either way) and
/// `Mon DD  YYYY`, as `ls -l` does.
pub fn list_line(e: &ListEntry, now: i64) -> String {
    let (perms, links) = if e.is_dir {
        ("drwxr-xr-x", 2)
    } else {
        ("-rw-r--r--", 1)
    };
    let c = Civil::from_unix(e.mtime);
    let month = usize::try_from(c.month - 1)
        .ok()
        .and_then(|i| MONTHS.get(i))
        .copied()
        .unwrap_or("???");
    let date = if now.abs_diff(e.mtime) <= RECENT_SECS {
        format!("{month} {:>2} {:02}:{:02}", c.day, c.hour, c.minute)
    } else {
        format!("{month} {:>2} {:>5}", c.day, c.year)
    };
    format!(
        "{perms} {links:>3} {:<8} {:<8} {:>8} {date} {}",
        list_token(&e.owner),
        list_token(&e.group),
        e.size,
        safe_name(&e.name),
    )
}

/// RFC 3659 §7 fact line for `MLSD` (and `MLST` after its leading space):
/// `type=file;size=1234;modify=20261124052200;perm=adfrw;unix.owner=alice;unix.group=users; file.zip`.
///
/// The `perm` fact advertises what the namespace may allow (RFC 3659 §7.5.5);
/// the real check happens when the command arrives. `cdir`/`pdir` entries are
/// not produced: they are optional and confuse some clients.
pub fn mlsx_facts(e: &ListEntry) -> String {
    let (kind, perm) = if e.is_dir {
        ("dir", "flcdmpe")
    } else {
        ("file", "adfrw")
    };
    format!(
        "type={kind};size={};modify={};perm={perm};unix.owner={};unix.group={}; {}",
        e.size,
        mdtm(e.mtime),
        fact_value(&e.owner),
        fact_value(&e.group),
        safe_name(&e.name),
    )
}

/// The RFC 3659 §2.3 time-val `YYYYMMDDHHMMSS`, UTC. Times outside years
/// 0000-9999 are clamped so the result is always 14 digits.
pub fn mdtm(t: i64) -> String {
    let c = Civil::from_unix(t.clamp(MIN_TIMEVAL, MAX_TIMEVAL));
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        c.year, c.month, c.day, c.hour, c.minute, c.second
    )
}

/// Parse a time-val: exactly 14 ASCII digits forming a real UTC date and
/// time. Second 60 is accepted for leap seconds (RFC 3659 §2.3) and lands on
/// the following minute, since Unix time has no leap seconds.
pub fn parse_mdtm(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 14 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let num = |from: usize, to: usize| -> i64 {
        b.iter()
            .take(to)
            .skip(from)
            .fold(0, |acc, d| acc * 10 + i64::from(d - b'0'))
    };
    let (year, month, day) = (num(0, 4), num(4, 6), num(6, 8));
    let (hour, minute, second) = (num(8, 10), num(10, 12), num(12, 14));
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// A broken-down UTC time.
struct Civil {
    year: i64,
    month: i64,
    day: i64,
    hour: i64,
    minute: i64,
    second: i64,
}

impl Civil {
    fn from_unix(t: i64) -> Civil {
        // Euclidean division keeps times before 1970 on the right day.
        let days = t.div_euclid(86_400);
        let secs = t.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        Civil {
            year,
            month,
            day,
            hour: secs / 3_600,
            minute: secs % 3_600 / 60,
            second: secs % 60,
        }
    }
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`: years are shifted to start in March so the leap day
/// is the last day of the year).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`]: (year, month 1-12, day 1-31).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Owner and group are whitespace-separated columns that clients split on,
/// so they must be one non-empty token.
fn list_token(s: &str) -> String {
    if s.is_empty() {
        return "-".to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_whitespace() || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// Fact values end at ';' and the fact list ends at ' ' (RFC 3659 §7.2).
fn fact_value(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            ';' | '=' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// A name with a line break would split one listing entry into two; VPath
/// already forbids control characters, this is only a last line of defence.
fn safe_name(s: &str) -> String {
    s.replace(['\r', '\n'], "?")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, is_dir: bool, size: u64, mtime: i64) -> ListEntry {
        ListEntry {
            name: name.to_string(),
            is_dir,
            size,
            mtime,
            owner: "alice".to_string(),
            group: "users".to_string(),
        }
    }

    /// 2026-11-24 05:22:00 UTC.
    const T: i64 = 1_795_497_720;

    #[test]
    fn mdtm_fixed_points() {
        assert_eq!(mdtm(0), "19700101000000");
        assert_eq!(mdtm(-1), "19691231235959");
        assert_eq!(mdtm(1_795_000_000), "20261118110640");
        assert_eq!(mdtm(1_700_000_000), "20231114221320");
        assert_eq!(mdtm(951_782_400), "20000229000000");
        assert_eq!(mdtm(4_102_444_800), "21000101000000");
        assert_eq!(mdtm(T), "20261124052200");
        assert_eq!(mdtm(MAX_TIMEVAL), "99991231235959");
        assert_eq!(mdtm(MIN_TIMEVAL), "00000101000000");
    }

    #[test]
    fn mdtm_extremes_do_not_panic() {
        assert_eq!(mdtm(i64::MAX), "99991231235959");
        assert_eq!(mdtm(i64::MIN), "00000101000000");
        for t in [i64::MIN, i64::MAX, -1, 0] {
            let e = entry("x", false, 0, t);
            assert!(!list_line(&e, 0).is_empty());
            assert!(!list_line(&e, i64::MIN).is_empty());
            assert!(!list_line(&e, i64::MAX).is_empty());
            assert!(mlsx_facts(&e).starts_with("type=file"));
        }
    }

    #[test]
    fn mdtm_parse_round_trip() {
        for t in [
            0,
            -1,
            1,
            86_399,
            86_400,
            951_782_400,
            1_795_000_000,
            T,
            4_102_444_800,
            MIN_TIMEVAL,
            MAX_TIMEVAL,
            -12_219_292_800,
        ] {
            assert_eq!(parse_mdtm(&mdtm(t)), Some(t), "{t}");
        }
        // Every day across a few leap-year boundaries.
        for day in -800..800 {
            let t = 951_782_400 + day * 86_400 + 3_723;
            assert_eq!(parse_mdtm(&mdtm(t)), Some(t));
        }
    }

    #[test]
    fn mdtm_parse_rejects() {
        for s in [
            "",
            "2026112405220",
            "202611240522000",
            "2026112405220a",
            "+0261124052200",
            "20261324052200",
            "20260024052200",
            "20261100052200",
            "20261131052200",
            "20230229000000",
            "19000229000000",
            "20261124242200",
            "20261124056000",
            "20261124052261",
            "2026-11-24 05:",
            "２０２６１１２４０５２２００",
        ] {
            assert_eq!(parse_mdtm(s), None, "{s:?}");
        }
        assert_eq!(parse_mdtm("20000229000000"), Some(951_782_400));
        assert_eq!(parse_mdtm("20161231235960"), Some(1_483_228_800));
    }

    #[test]
    fn list_line_recent_file() {
        let e = entry("file.zip", false, 1234, T);
        assert_eq!(
            list_line(&e, T + 3_600),
            "-rw-r--r--   1 alice    users        1234 Nov 24 05:22 file.zip"
        );
    }

    #[test]
    fn list_line_old_and_future() {
        let e = entry("old", false, 5, 0);
        assert_eq!(
            list_line(&e, T),
            "-rw-r--r--   1 alice    users           5 Jan  1  1970 old"
        );
        // More than 180 days in the future also shows the year.
        assert_eq!(
            list_line(&e, -200 * 86_400),
            "-rw-r--r--   1 alice    users           5 Jan  1  1970 old"
        );
        // Within 180 days in the future shows the time.
        assert_eq!(
            list_line(&e, -179 * 86_400),
            "-rw-r--r--   1 alice    users           5 Jan  1 00:00 old"
        );
        let boundary = entry("b", false, 0, T - 180 * 86_400);
        assert!(list_line(&boundary, T).contains(" 05:22 "));
        let past = entry("b", false, 0, T - 180 * 86_400 - 1);
        assert!(list_line(&past, T).contains("  2026 "));
    }

    #[test]
    fn list_line_directory_and_padding() {
        let mut e = entry("My Dir", true, 4096, T);
        e.owner = "a-very-long-owner".into();
        e.group = String::new();
        assert_eq!(
            list_line(&e, T),
            "drwxr-xr-x   2 a-very-long-owner -            4096 Nov 24 05:22 My Dir"
        );
        let mut e = entry("big", false, 123_456_789_012, T);
        e.owner = "has space".into();
        assert_eq!(
            list_line(&e, T),
            "-rw-r--r--   1 has_space users    123456789012 Nov 24 05:22 big"
        );
    }

    #[test]
    fn list_line_single_digit_day() {
        // 2026-03-05 07:08:00 UTC
        let t = parse_mdtm("20260305070800").expect("valid");
        let e = entry("f", false, 0, t);
        assert!(list_line(&e, t).ends_with(" Mar  5 07:08 f"));
    }

    #[test]
    fn facts_for_file_and_dir() {
        let e = entry("file.zip", false, 1234, T);
        assert_eq!(
            mlsx_facts(&e),
            "type=file;size=1234;modify=20261124052200;perm=adfrw;unix.owner=alice;unix.group=users; file.zip"
        );
        let d = entry("sub dir", true, 0, 0);
        assert_eq!(
            mlsx_facts(&d),
            "type=dir;size=0;modify=19700101000000;perm=flcdmpe;unix.owner=alice;unix.group=users; sub dir"
        );
    }

    #[test]
    fn facts_sanitise_values_and_names() {
        let mut e = entry("a\r\nb", false, 1, 0);
        e.owner = "x;type=dir".into();
        e.group = "g g".into();
        let f = mlsx_facts(&e);
        assert!(
            f.contains("unix.owner=x_type_dir;unix.group=g_g; a??b"),
            "{f}"
        );
        assert!(!f.contains('\n') && !f.contains('\r'));
        assert!(!list_line(&e, 0).contains('\n'));
    }
}

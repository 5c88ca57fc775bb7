//! Parsing of one control-connection line into a [`Command`].
//!
//! Implements the command syntax of RFC 959 §4.1 and §5.3 (including the
//! `X…` aliases of RFC 775 that RFC 1123 §4.1.3.1 asks servers to accept),
//! `FEAT`/`OPTS` (RFC 2389), `EPRT`/`EPSV` (RFC 2428), `SIZE`/`MDTM`/`REST`/
//! `MLST`/`MLSD` (RFC 3659), `MFMT` (draft-somers-ftp-mfxx), the security
//! verbs of RFC 2228/4217 (parsed only, answered elsewhere) and DrFTPD's
//! `PRET`, which announces the next transfer so the master can pick a slave
//! before `PASV`.
//!
//! Syntax errors are reported with the reply code RFC 959 §4.2 assigns
//! (500/501/504, and 522 from RFC 2428 §2), so the session only has to map
//! [`ParseError::code`] to a reply.

use std::net::{SocketAddr, SocketAddrV4};

use super::addr::{parse_decimal, parse_eprt, parse_port};
pub use super::error::ParseError;
use super::listing::parse_mdtm;

/// Representation type (RFC 959 §3.1.1). Only the two that matter today.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferType {
    Ascii,
    Image,
}

/// Argument of `EPSV` (RFC 2428 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpsvArg {
    /// No argument: any protocol, the one of the control connection.
    Any,
    /// `EPSV ALL`: from now on only EPSV may set up data connections.
    All,
    /// `EPSV 1` (IPv4), `EPSV 2` (IPv6), or another number (255 when
    /// larger), answered 522.
    Proto(u8),
}

/// Arguments of `LIST`/`NLST`: many clients send `ls` flags (`LIST -la`),
/// which are not part of RFC 959 but must not be taken for a file name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListArgs {
    pub path: Option<String>,
    /// Flags without their dashes, concatenated: `-a -l` gives `"al"`.
    pub options: String,
}

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    User(String),
    Pass(String),
    Syst,
    Feat,
    Opts(String),
    Pwd,
    Cwd(String),
    Cdup,
    Type(TransferType),
    /// `MODE S`, the only mode supported.
    Mode,
    /// `STRU F`, the only structure supported.
    Stru,
    Noop,
    Quit,
    Help(Option<String>),
    Stat(Option<String>),
    Allo,
    Pret(Box<Command>),
    Pasv,
    Epsv(EpsvArg),
    Port(SocketAddrV4),
    Eprt(SocketAddr),
    List(ListArgs),
    Nlst(ListArgs),
    Mlsd(Option<String>),
    Mlst(Option<String>),
    Retr(String),
    Stor(String),
    Appe(String),
    Stou(Option<String>),
    Rest(u64),
    Size(String),
    Mdtm(String),
    /// XCRC PATH (DrFTPD, FlashFXP): the file's CRC-32.
    Xcrc(String),
    /// HASH PATH (draft-bryan-ftpext-hash): the file's hash, CRC32 here.
    Hash(String),
    Mfmt {
        /// Exactly 14 digits, already validated as a real date.
        time: String,
        path: String,
    },
    Dele(String),
    Rnfr(String),
    Rnto(String),
    Mkd(String),
    Rmd(String),
    Abor,
    Site {
        /// Upper-cased.
        verb: String,
        /// The rest of the line, trimmed.
        args: String,
    },
    Pbsz(String),
    Prot(String),
    Auth(String),
    Ccc,
    /// DrFTPD/glftpd FXP extensions: `SSCN [ON|OFF]` (the server is the TLS
    /// client on data connections) and `CPSV` (PASV with SSCN for one
    /// transfer). Parsed so they get a clear 502.
    Sscn(Option<String>),
    Cpsv,
}

/// Client text echoed in error replies is cut short so a 4 KiB verb does
/// not come back as a 4 KiB reply.
const ECHO_MAX: usize = 64;

/// Verbs PRET may announce: the ones that open a data connection.
const PRET_VERBS: [&str; 7] = ["RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"];

impl Command {
    /// Parse one line (line ending already removed).
    ///
    /// The verb is the text before the first space, matched without regard
    /// to case; the argument is everything after that single space, kept
    /// verbatim because file names may begin or end with spaces.
    pub fn parse(line: &str) -> Result<Command, ParseError> {
        if line.trim().is_empty() {
            return Err(ParseError::Empty);
        }
        let (raw_verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, Some(a)),
            None => (line, None),
        };
        let verb = raw_verb.to_ascii_uppercase();
        let cmd = match verb.as_str() {
            "USER" => Command::User(required("USER", arg)?),
            // An empty password is legitimate (and some clients send a bare
            // "PASS" for it); whether it is acceptable is the login's call.
            "PASS" => Command::Pass(arg.unwrap_or("").to_string()),
            "SYST" => no_arg("SYST", arg, Command::Syst)?,
            "FEAT" => no_arg("FEAT", arg, Command::Feat)?,
            "OPTS" => Command::Opts(required_trimmed("OPTS", arg)?),
            "PWD" | "XPWD" => no_arg("PWD", arg, Command::Pwd)?,
            "CWD" | "XCWD" => Command::Cwd(required("CWD", arg)?),
            "CDUP" | "XCUP" => no_arg("CDUP", arg, Command::Cdup)?,
            "TYPE" => Command::Type(parse_type(arg)?),
            "MODE" => only_code("MODE", arg, "S", Command::Mode)?,
            "STRU" => only_code("STRU", arg, "F", Command::Stru)?,
            // Arguments are ignored for these three: refusing a NOOP, QUIT
            // or ABOR over stray text would help nobody.
            "NOOP" => Command::Noop,
            "QUIT" => Command::Quit,
            "ABOR" => Command::Abor,
            "HELP" => Command::Help(
                arg.map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(String::from),
            ),
            "STAT" => Command::Stat(optional_path(arg)),
            // Storage is allocated on demand; ALLO is accepted in any form
            // (RFC 959 §4.1.3 lets servers treat it as NOOP).
            "ALLO" => Command::Allo,
            "PRET" => parse_pret(arg)?,
            "PASV" => no_arg("PASV", arg, Command::Pasv)?,
            "EPSV" => Command::Epsv(parse_epsv(arg)?),
            "PORT" => Command::Port(
                parse_port(&required("PORT", arg)?)
                    .ok_or_else(|| bad("PORT", "expected h1,h2,h3,h4,p1,p2 with numbers 0-255"))?,
            ),
            "EPRT" => Command::Eprt(parse_eprt(&required("EPRT", arg)?)?),
            "LIST" => Command::List(parse_list_args(arg)),
            "NLST" => Command::Nlst(parse_list_args(arg)),
            "MLSD" => Command::Mlsd(optional_path(arg)),
            "MLST" => Command::Mlst(optional_path(arg)),
            "RETR" => Command::Retr(required("RETR", arg)?),
            "STOR" => Command::Stor(required("STOR", arg)?),
            "APPE" => Command::Appe(required("APPE", arg)?),
            "STOU" => Command::Stou(optional_path(arg)),
            "REST" => Command::Rest(
                parse_decimal(required("REST", arg)?.trim())
                    .ok_or_else(|| bad("REST", "expected a decimal byte offset"))?,
            ),
            "SIZE" => Command::Size(required("SIZE", arg)?),
            "XCRC" => Command::Xcrc(required("XCRC", arg)?),
            "HASH" => Command::Hash(required("HASH", arg)?),
            "MDTM" => Command::Mdtm(required("MDTM", arg)?),
            "MFMT" => parse_mfmt(arg)?,
            "DELE" => Command::Dele(required("DELE", arg)?),
            "RNFR" => Command::Rnfr(required("RNFR", arg)?),
            "RNTO" => Command::Rnto(required("RNTO", arg)?),
            "MKD" | "XMKD" => Command::Mkd(required("MKD", arg)?),
            "RMD" | "XRMD" => Command::Rmd(required("RMD", arg)?),
            "SITE" => parse_site(arg)?,
            "PBSZ" => Command::Pbsz(required_trimmed("PBSZ", arg)?),
            "PROT" => Command::Prot(required_trimmed("PROT", arg)?),
            "AUTH" => Command::Auth(required_trimmed("AUTH", arg)?),
            "CCC" => no_arg("CCC", arg, Command::Ccc)?,
            "SSCN" => Command::Sscn(optional_path(arg)),
            "CPSV" => no_arg("CPSV", arg, Command::Cpsv)?,
            _ => return Err(ParseError::Unknown(echo(raw_verb))),
        };
        Ok(cmd)
    }

    /// The canonical upper-case verb (aliases map to their RFC 959 name).
    pub fn verb(&self) -> &'static str {
        match self {
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Syst => "SYST",
            Command::Feat => "FEAT",
            Command::Opts(_) => "OPTS",
            Command::Pwd => "PWD",
            Command::Cwd(_) => "CWD",
            Command::Cdup => "CDUP",
            Command::Type(_) => "TYPE",
            Command::Mode => "MODE",
            Command::Stru => "STRU",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Help(_) => "HELP",
            Command::Stat(_) => "STAT",
            Command::Allo => "ALLO",
            Command::Pret(_) => "PRET",
            Command::Pasv => "PASV",
            Command::Epsv(_) => "EPSV",
            Command::Port(_) => "PORT",
            Command::Eprt(_) => "EPRT",
            Command::List(_) => "LIST",
            Command::Nlst(_) => "NLST",
            Command::Mlsd(_) => "MLSD",
            Command::Mlst(_) => "MLST",
            Command::Retr(_) => "RETR",
            Command::Stor(_) => "STOR",
            Command::Appe(_) => "APPE",
            Command::Stou(_) => "STOU",
            Command::Rest(_) => "REST",
            Command::Size(_) => "SIZE",
            Command::Xcrc(_) => "XCRC",
            Command::Hash(_) => "HASH",
            Command::Mdtm(_) => "MDTM",
            Command::Mfmt { .. } => "MFMT",
            Command::Dele(_) => "DELE",
            Command::Rnfr(_) => "RNFR",
            Command::Rnto(_) => "RNTO",
            Command::Mkd(_) => "MKD",
            Command::Rmd(_) => "RMD",
            Command::Abor => "ABOR",
            Command::Site { .. } => "SITE",
            Command::Pbsz(_) => "PBSZ",
            Command::Prot(_) => "PROT",
            Command::Auth(_) => "AUTH",
            Command::Ccc => "CCC",
            Command::Sscn(_) => "SSCN",
            Command::Cpsv => "CPSV",
        }
    }

    /// Whether the command is refused (530) before login. The exceptions are
    /// what a client needs to log in, negotiate, or leave.
    pub fn needs_login(&self) -> bool {
        !matches!(
            self,
            Command::User(_)
                | Command::Pass(_)
                | Command::Quit
                | Command::Feat
                | Command::Syst
                | Command::Help(_)
                | Command::Noop
                | Command::Auth(_)
                | Command::Pbsz(_)
                | Command::Prot(_)
                | Command::Opts(_)
        )
    }

    /// Whether the command uses a data connection.
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            Command::Retr(_)
                | Command::Stor(_)
                | Command::Appe(_)
                | Command::Stou(_)
                | Command::List(_)
                | Command::Nlst(_)
                | Command::Mlsd(_)
        )
    }
}

fn bad(verb: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::BadArgument {
        verb,
        reason: reason.into(),
    }
}

fn not_implemented(verb: &'static str, reason: impl Into<String>) -> ParseError {
    ParseError::NotImplemented {
        verb,
        reason: reason.into(),
    }
}

/// At most [`ECHO_MAX`] characters of client text, for error messages.
fn echo(s: &str) -> String {
    s.chars().take(ECHO_MAX).collect()
}

/// A required argument, verbatim.
fn required(verb: &'static str, arg: Option<&str>) -> Result<String, ParseError> {
    match arg {
        Some(a) if !a.is_empty() => Ok(a.to_string()),
        _ => Err(bad(verb, "missing argument")),
    }
}

/// A required argument that is a keyword, not a name: surrounding
/// whitespace carries no meaning.
fn required_trimmed(verb: &'static str, arg: Option<&str>) -> Result<String, ParseError> {
    match arg.map(str::trim) {
        Some(a) if !a.is_empty() => Ok(a.to_string()),
        _ => Err(bad(verb, "missing argument")),
    }
}

/// An optional path, verbatim; only spaces (lftp sends `LIST ` with a
/// trailing space) mean "no argument".
fn optional_path(arg: Option<&str>) -> Option<String> {
    arg.filter(|a| !a.bytes().all(|b| b == b' '))
        .map(String::from)
}

/// Commands without argument: trailing spaces are tolerated, text is not.
fn no_arg(verb: &'static str, arg: Option<&str>, cmd: Command) -> Result<Command, ParseError> {
    match arg {
        Some(a) if !a.trim().is_empty() => Err(bad(verb, "takes no argument")),
        _ => Ok(cmd),
    }
}

/// MODE and STRU: one supported code, others understood but refused (504).
fn only_code(
    verb: &'static str,
    arg: Option<&str>,
    supported: &str,
    cmd: Command,
) -> Result<Command, ParseError> {
    let code = required_trimmed(verb, arg)?;
    if code.eq_ignore_ascii_case(supported) {
        Ok(cmd)
    } else {
        Err(not_implemented(
            verb,
            format!("only {verb} {supported} is supported"),
        ))
    }
}

/// TYPE (RFC 959 §4.1.2): `A [N|T]` and `I` / `L 8`. Carriage-control
/// formats and EBCDIC are valid syntax but unsupported (504); `A T` is
/// accepted as ASCII since Telnet format effectors need no translation.
fn parse_type(arg: Option<&str>) -> Result<TransferType, ParseError> {
    let upper = required_trimmed("TYPE", arg)?.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    match words.as_slice() {
        ["A"] | ["A", "N"] | ["A", "T"] => Ok(TransferType::Ascii),
        ["I"] | ["L", "8"] => Ok(TransferType::Image),
        ["A", "C"] | ["E"] | ["E", "N" | "T" | "C"] => Err(not_implemented(
            "TYPE",
            "only TYPE A and TYPE I are supported",
        )),
        ["L", size] if parse_decimal::<u32>(size).is_some() => {
            Err(not_implemented("TYPE", "only byte size 8 is supported"))
        }
        _ => Err(bad("TYPE", "unknown type")),
    }
}

/// EPSV (RFC 2428 §3): nothing, `ALL`, or a network protocol number.
fn parse_epsv(arg: Option<&str>) -> Result<EpsvArg, ParseError> {
    let a = arg.map(str::trim).unwrap_or("");
    if a.is_empty() {
        return Ok(EpsvArg::Any);
    }
    if a.eq_ignore_ascii_case("ALL") {
        return Ok(EpsvArg::All);
    }
    if !a.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("EPSV", "expected ALL or a protocol number"));
    }
    // Any other number is answered by the session, which knows the
    // control connection's protocol (the one 522 offers, RFC 2428 §3).
    Ok(EpsvArg::Proto(a.parse::<u8>().unwrap_or(u8::MAX)))
}

/// PRET (DrFTPD): the argument is the transfer command to come. Only verbs
/// that open a data connection make sense; the inner verb is checked before
/// parsing so `PRET PRET PRET …` cannot recurse.
fn parse_pret(arg: Option<&str>) -> Result<Command, ParseError> {
    let inner = arg.map(|a| a.trim_start_matches(' ')).unwrap_or("");
    if inner.is_empty() {
        return Err(bad("PRET", "missing argument"));
    }
    let inner_verb = inner.split(' ').next().unwrap_or("");
    if !PRET_VERBS
        .iter()
        .any(|v| v.eq_ignore_ascii_case(inner_verb))
    {
        return Err(not_implemented(
            "PRET",
            format!("PRET {} not supported", echo(inner_verb)),
        ));
    }
    Ok(Command::Pret(Box::new(Command::parse(inner)?)))
}

/// LIST/NLST: leading words starting with '-' are `ls` flags; what follows
/// (after the separating spaces) is the path, verbatim.
fn parse_list_args(arg: Option<&str>) -> ListArgs {
    let Some(mut rest) = arg else {
        return ListArgs::default();
    };
    let mut options = String::new();
    let mut saw_options = false;
    loop {
        let trimmed = rest.trim_start_matches(' ');
        let Some(flags) = trimmed.strip_prefix('-') else {
            break;
        };
        let (word, after) = flags.split_once(' ').unwrap_or((flags, ""));
        options.push_str(word.trim_start_matches('-'));
        saw_options = true;
        rest = after;
    }
    // Without flags the argument is a name and its leading spaces belong
    // to it; after flags they were only separators.
    let path = if saw_options {
        rest.trim_start_matches(' ')
    } else {
        rest
    };
    ListArgs {
        path: optional_path(Some(path)),
        options,
    }
}

/// MFMT `YYYYMMDDHHMMSS path`. A fractional-seconds suffix (`.sss`, allowed
/// by the draft) is accepted and dropped: storage keeps whole seconds.
fn parse_mfmt(arg: Option<&str>) -> Result<Command, ParseError> {
    let a = required("MFMT", arg)?;
    let (time, path) = a
        .split_once(' ')
        .ok_or_else(|| bad("MFMT", "expected YYYYMMDDHHMMSS path"))?;
    let (whole, fraction) = time.split_once('.').unwrap_or((time, "0"));
    if fraction.is_empty()
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || parse_mdtm(whole).is_none()
    {
        return Err(bad("MFMT", "invalid time, expected YYYYMMDDHHMMSS"));
    }
    if path.is_empty() {
        return Err(bad("MFMT", "missing path"));
    }
    Ok(Command::Mfmt {
        time: whole.to_string(),
        path: path.to_string(),
    })
}

/// SITE: the first word is the sub-command, the rest its arguments.
fn parse_site(arg: Option<&str>) -> Result<Command, ParseError> {
    let a = required_trimmed("SITE", arg)?;
    let (verb, args) = a.split_once(char::is_whitespace).unwrap_or((&a, ""));
    Ok(Command::Site {
        verb: verb.to_ascii_uppercase(),
        args: args.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn ok(line: &str) -> Command {
        match Command::parse(line) {
            Ok(c) => c,
            Err(e) => panic!("{line:?} failed: {e}"),
        }
    }

    fn err(line: &str) -> ParseError {
        match Command::parse(line) {
            Ok(c) => panic!("{line:?} parsed as {c:?}"),
            Err(e) => e,
        }
    }

    fn code(line: &str) -> u16 {
        err(line).code()
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn list(path: Option<&str>, options: &str) -> ListArgs {
        ListArgs {
            path: path.map(String::from),
            options: s(options),
        }
    }

    #[test]
    fn empty_and_unknown() {
        assert_eq!(err(""), ParseError::Empty);
        assert_eq!(err("   "), ParseError::Empty);
        assert_eq!(err("\t"), ParseError::Empty);
        assert_eq!(code(""), 500);
        assert_eq!(err("FOO bar"), ParseError::Unknown(s("FOO")));
        assert_eq!(code("FOO"), 500);
        assert_eq!(err(" NOOP"), ParseError::Unknown(s("")));
        assert_eq!(err("ÜBER x"), ParseError::Unknown(s("ÜBER")));
        let long = "X".repeat(5000);
        match err(&long) {
            ParseError::Unknown(v) => assert_eq!(v.len(), ECHO_MAX),
            e => panic!("{e:?}"),
        }
        assert_eq!(err("FOO").to_string(), "'FOO' not understood");
    }

    #[test]
    fn login_commands() {
        assert_eq!(ok("USER alice"), Command::User(s("alice")));
        assert_eq!(ok("user alice"), Command::User(s("alice")));
        assert_eq!(code("USER"), 501);
        assert_eq!(code("USER "), 501);
        assert_eq!(
            ok("PASS secret with spaces "),
            Command::Pass(s("secret with spaces "))
        );
        assert_eq!(ok("PASS"), Command::Pass(s("")));
        assert_eq!(ok("pass "), Command::Pass(s("")));
        assert_eq!(ok("QUIT"), Command::Quit);
        assert_eq!(ok("quit now"), Command::Quit);
    }

    #[test]
    fn simple_verbs() {
        assert_eq!(ok("SYST"), Command::Syst);
        assert_eq!(ok("syst"), Command::Syst);
        assert_eq!(ok("FEAT"), Command::Feat);
        assert_eq!(ok("Feat "), Command::Feat);
        assert_eq!(ok("PWD"), Command::Pwd);
        assert_eq!(ok("XPWD"), Command::Pwd);
        assert_eq!(ok("CDUP"), Command::Cdup);
        assert_eq!(ok("xcup"), Command::Cdup);
        assert_eq!(ok("NOOP"), Command::Noop);
        assert_eq!(ok("noop x"), Command::Noop);
        assert_eq!(ok("PASV"), Command::Pasv);
        assert_eq!(ok("pasv"), Command::Pasv);
        assert_eq!(ok("ABOR"), Command::Abor);
        assert_eq!(ok("abor "), Command::Abor);
        assert_eq!(ok("CCC"), Command::Ccc);
        assert_eq!(ok("SSCN ON"), Command::Sscn(Some(s("ON"))));
        assert_eq!(ok("sscn"), Command::Sscn(None));
        assert_eq!(ok("CPSV"), Command::Cpsv);
        assert_eq!(ok("ALLO"), Command::Allo);
        assert_eq!(ok("ALLO 1000 R 10"), Command::Allo);
        assert_eq!(ok("allo whatever"), Command::Allo);
        for bad_form in ["SYST x", "FEAT x", "PWD /", "CDUP ..", "PASV 1", "CCC x"] {
            assert_eq!(code(bad_form), 501, "{bad_form}");
        }
    }

    #[test]
    fn opts_help_stat() {
        assert_eq!(ok("OPTS UTF8 ON"), Command::Opts(s("UTF8 ON")));
        assert_eq!(
            ok("opts  MLST type;size; "),
            Command::Opts(s("MLST type;size;"))
        );
        assert_eq!(code("OPTS"), 501);
        assert_eq!(code("OPTS  "), 501);
        assert_eq!(ok("HELP"), Command::Help(None));
        assert_eq!(ok("HELP "), Command::Help(None));
        assert_eq!(ok("help site"), Command::Help(Some(s("site"))));
        assert_eq!(ok("STAT"), Command::Stat(None));
        assert_eq!(ok("STAT "), Command::Stat(None));
        assert_eq!(ok("stat /a b"), Command::Stat(Some(s("/a b"))));
    }

    #[test]
    fn path_commands_keep_argument_verbatim() {
        assert_eq!(ok("CWD /a b"), Command::Cwd(s("/a b")));
        assert_eq!(ok("XCWD x"), Command::Cwd(s("x")));
        assert_eq!(
            ok("RETR  lead and trail "),
            Command::Retr(s(" lead and trail "))
        );
        assert_eq!(ok("retr file"), Command::Retr(s("file")));
        assert_eq!(ok("STOR a"), Command::Stor(s("a")));
        assert_eq!(ok("APPE a"), Command::Appe(s("a")));
        assert_eq!(ok("SIZE a"), Command::Size(s("a")));
        assert_eq!(ok("MDTM a"), Command::Mdtm(s("a")));
        assert_eq!(ok("DELE a"), Command::Dele(s("a")));
        assert_eq!(ok("RNFR a"), Command::Rnfr(s("a")));
        assert_eq!(ok("RNTO b"), Command::Rnto(s("b")));
        assert_eq!(ok("MKD d"), Command::Mkd(s("d")));
        assert_eq!(ok("XMKD d"), Command::Mkd(s("d")));
        assert_eq!(ok("RMD d"), Command::Rmd(s("d")));
        assert_eq!(ok("xrmd d"), Command::Rmd(s("d")));
        for verb in [
            "CWD", "XCWD", "RETR", "STOR", "APPE", "SIZE", "MDTM", "DELE", "RNFR", "RNTO", "MKD",
            "XMKD", "RMD", "XRMD",
        ] {
            assert_eq!(code(verb), 501, "{verb}");
            assert_eq!(code(&format!("{verb} ")), 501, "{verb} with space");
        }
        match err("XMKD") {
            ParseError::BadArgument { verb, .. } => assert_eq!(verb, "MKD"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn type_mode_stru() {
        assert_eq!(ok("TYPE A"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("type a"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("TYPE A N"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("TYPE A T"), Command::Type(TransferType::Ascii));
        assert_eq!(ok("TYPE I"), Command::Type(TransferType::Image));
        assert_eq!(ok("type i "), Command::Type(TransferType::Image));
        assert_eq!(ok("TYPE L 8"), Command::Type(TransferType::Image));
        assert_eq!(code("TYPE E"), 504);
        assert_eq!(code("TYPE E N"), 504);
        assert_eq!(code("TYPE A C"), 504);
        assert_eq!(code("TYPE L 7"), 504);
        assert_eq!(code("TYPE L 99999999999999999999"), 501);
        assert_eq!(code("TYPE"), 501);
        assert_eq!(code("TYPE X"), 501);
        assert_eq!(code("TYPE A X"), 501);
        assert_eq!(code("TYPE I I"), 501);
        assert_eq!(code("TYPE L"), 501);

        assert_eq!(ok("MODE S"), Command::Mode);
        assert_eq!(ok("mode s"), Command::Mode);
        assert_eq!(code("MODE B"), 504);
        assert_eq!(code("MODE C"), 504);
        assert_eq!(code("MODE Z"), 504);
        assert_eq!(code("MODE"), 501);
        assert_eq!(ok("STRU F"), Command::Stru);
        assert_eq!(ok("stru f"), Command::Stru);
        assert_eq!(code("STRU R"), 504);
        assert_eq!(code("STRU P"), 504);
        assert_eq!(code("STRU"), 501);
    }

    #[test]
    fn port_command() {
        let want = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 2), 4 * 256 + 1);
        assert_eq!(ok("PORT 192,168,1,2,4,1"), Command::Port(want));
        assert_eq!(ok("port 192, 168, 1, 2, 4, 1"), Command::Port(want));
        for bad_form in [
            "PORT",
            "PORT ",
            "PORT 1,2,3,4,5",
            "PORT 1,2,3,4,5,6,7",
            "PORT 1,2,3,256,5,6",
            "PORT 1,2,3,4,5,18446744073709551617",
            "PORT 1,2,3,4,5,99999999999999999999999999999999",
            "PORT -1,2,3,4,5,6",
            "PORT a,b,c,d,e,f",
            "PORT 1.2.3.4:56",
        ] {
            assert_eq!(code(bad_form), 501, "{bad_form}");
        }
    }

    #[test]
    fn eprt_command() {
        let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(132, 235, 1, 2)), 6275);
        assert_eq!(ok("EPRT |1|132.235.1.2|6275|"), Command::Eprt(v4));
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5282);
        assert_eq!(ok("eprt |2|::1|5282|"), Command::Eprt(v6));
        assert_eq!(err("EPRT |3|1.2.3.4|5|"), ParseError::UnsupportedProtocol);
        assert_eq!(code("EPRT |3|1.2.3.4|5|"), 522);
        for bad_form in [
            "EPRT",
            "EPRT ",
            "EPRT |1|::1|5|",
            "EPRT |2|1.2.3.4|5|",
            "EPRT |1|1.2.3.4|70000|",
            "EPRT |1|1.2.3.4|5",
            "EPRT 1|1.2.3.4|5|",
            "EPRT |1|999.2.3.4|5|",
        ] {
            assert_eq!(code(bad_form), 501, "{bad_form}");
        }
    }

    #[test]
    fn epsv_command() {
        assert_eq!(ok("EPSV"), Command::Epsv(EpsvArg::Any));
        assert_eq!(ok("EPSV "), Command::Epsv(EpsvArg::Any));
        assert_eq!(ok("EPSV ALL"), Command::Epsv(EpsvArg::All));
        assert_eq!(ok("epsv all"), Command::Epsv(EpsvArg::All));
        assert_eq!(ok("EPSV 1"), Command::Epsv(EpsvArg::Proto(1)));
        assert_eq!(ok("EPSV 2"), Command::Epsv(EpsvArg::Proto(2)));
        assert_eq!(ok("EPSV 3"), Command::Epsv(EpsvArg::Proto(3)));
        assert_eq!(
            ok("EPSV 99999999999999999999999"),
            Command::Epsv(EpsvArg::Proto(u8::MAX))
        );
        assert_eq!(code("EPSV foo"), 501);
        assert_eq!(code("EPSV -1"), 501);
        assert_eq!(code("EPSV ALL x"), 501);
    }

    #[test]
    fn rest_command() {
        assert_eq!(ok("REST 0"), Command::Rest(0));
        assert_eq!(ok("rest 123456789012"), Command::Rest(123_456_789_012));
        assert_eq!(ok("REST 18446744073709551615"), Command::Rest(u64::MAX));
        for bad_form in [
            "REST",
            "REST ",
            "REST -1",
            "REST +1",
            "REST 1.5",
            "REST abc",
            "REST 18446744073709551616",
        ] {
            assert_eq!(code(bad_form), 501, "{bad_form}");
        }
    }

    #[test]
    fn list_and_nlst() {
        assert_eq!(ok("LIST"), Command::List(ListArgs::default()));
        assert_eq!(ok("LIST "), Command::List(ListArgs::default()));
        assert_eq!(ok("list -la"), Command::List(list(None, "la")));
        assert_eq!(ok("LIST -la "), Command::List(list(None, "la")));
        assert_eq!(ok("LIST -a -l dir"), Command::List(list(Some("dir"), "al")));
        assert_eq!(ok("LIST -la /x"), Command::List(list(Some("/x"), "la")));
        assert_eq!(
            ok("LIST -la  /x y "),
            Command::List(list(Some("/x y "), "la"))
        );
        assert_eq!(
            ok("LIST dir name"),
            Command::List(list(Some("dir name"), ""))
        );
        assert_eq!(ok("LIST  lead"), Command::List(list(Some(" lead"), "")));
        assert_eq!(ok("LIST --all"), Command::List(list(None, "all")));
        assert_eq!(ok("LIST dir -l"), Command::List(list(Some("dir -l"), "")));
        assert_eq!(ok("NLST"), Command::Nlst(ListArgs::default()));
        assert_eq!(ok("nlst -1 sub"), Command::Nlst(list(Some("sub"), "1")));
    }

    #[test]
    fn mlsd_mlst_stou() {
        assert_eq!(ok("MLSD"), Command::Mlsd(None));
        assert_eq!(ok("MLSD "), Command::Mlsd(None));
        assert_eq!(ok("mlsd /a b"), Command::Mlsd(Some(s("/a b"))));
        assert_eq!(ok("MLST"), Command::Mlst(None));
        assert_eq!(ok("MLST x"), Command::Mlst(Some(s("x"))));
        assert_eq!(ok("STOU"), Command::Stou(None));
        assert_eq!(ok("STOU "), Command::Stou(None));
        assert_eq!(ok("stou name"), Command::Stou(Some(s("name"))));
    }

    #[test]
    fn mfmt_command() {
        assert_eq!(
            ok("MFMT 20261124052200 a file"),
            Command::Mfmt {
                time: s("20261124052200"),
                path: s("a file")
            }
        );
        assert_eq!(
            ok("mfmt 20261124052200.123 f"),
            Command::Mfmt {
                time: s("20261124052200"),
                path: s("f")
            }
        );
        for bad_form in [
            "MFMT",
            "MFMT ",
            "MFMT 20261124052200",
            "MFMT 20261124052200 ",
            "MFMT 2026112405220 f",
            "MFMT 202611240522000 f",
            "MFMT 20261324052200 f",
            "MFMT 20230229000000 f",
            "MFMT 2026112405220x f",
            "MFMT 20261124052200. f",
            "MFMT 20261124052200.x f",
            "MFMT f 20261124052200",
        ] {
            assert_eq!(code(bad_form), 501, "{bad_form}");
        }
    }

    #[test]
    fn site_command() {
        assert_eq!(
            ok("SITE chmod 755 file"),
            Command::Site {
                verb: s("CHMOD"),
                args: s("755 file")
            }
        );
        assert_eq!(
            ok("site  who  "),
            Command::Site {
                verb: s("WHO"),
                args: s("")
            }
        );
        assert_eq!(
            ok("SITE help\tme "),
            Command::Site {
                verb: s("HELP"),
                args: s("me")
            }
        );
        assert_eq!(code("SITE"), 501);
        assert_eq!(code("SITE   "), 501);
    }

    #[test]
    fn security_verbs() {
        assert_eq!(ok("AUTH TLS"), Command::Auth(s("TLS")));
        assert_eq!(ok("PBSZ 0"), Command::Pbsz(s("0")));
        assert_eq!(ok("PROT P"), Command::Prot(s("P")));
        assert_eq!(code("AUTH"), 501);
        assert_eq!(code("PBSZ"), 501);
        assert_eq!(code("PROT "), 501);
    }

    #[test]
    fn pret_command() {
        assert_eq!(
            ok("PRET RETR a file"),
            Command::Pret(Box::new(Command::Retr(s("a file"))))
        );
        assert_eq!(
            ok("pret stor x"),
            Command::Pret(Box::new(Command::Stor(s("x"))))
        );
        assert_eq!(
            ok("PRET STOU"),
            Command::Pret(Box::new(Command::Stou(None)))
        );
        assert_eq!(
            ok("PRET APPE x"),
            Command::Pret(Box::new(Command::Appe(s("x"))))
        );
        assert_eq!(
            ok("PRET LIST "),
            Command::Pret(Box::new(Command::List(ListArgs::default())))
        );
        assert_eq!(
            ok("PRET LIST -la dir"),
            Command::Pret(Box::new(Command::List(list(Some("dir"), "la"))))
        );
        assert_eq!(
            ok("PRET NLST"),
            Command::Pret(Box::new(Command::Nlst(ListArgs::default())))
        );
        assert_eq!(
            ok("PRET MLSD"),
            Command::Pret(Box::new(Command::Mlsd(None)))
        );
        assert_eq!(
            ok("PRET  RETR x"),
            Command::Pret(Box::new(Command::Retr(s("x"))))
        );
        assert_eq!(code("PRET"), 501);
        assert_eq!(code("PRET "), 501);
        assert_eq!(code("PRET   "), 501);
        // The inner command's own syntax errors come through.
        assert_eq!(
            err("PRET RETR"),
            ParseError::BadArgument {
                verb: "RETR",
                reason: s("missing argument")
            }
        );
        for unsupported in [
            "PRET PRET RETR x",
            "PRET PRET x",
            "PRET CWD /",
            "PRET MLST",
            "PRET FOO",
            "PRET PASV",
        ] {
            match err(unsupported) {
                ParseError::NotImplemented { verb, .. } => assert_eq!(verb, "PRET"),
                e => panic!("{unsupported}: {e:?}"),
            }
        }
        // Deep nesting is refused without recursion.
        let deep = format!("{}RETR x", "PRET ".repeat(2000));
        assert_eq!(err(&deep).code(), 504);
    }

    #[test]
    fn verbs_login_and_transfer_flags() {
        let cases: &[(&str, &str, bool, bool)] = &[
            ("USER a", "USER", false, false),
            ("PASS a", "PASS", false, false),
            ("SYST", "SYST", false, false),
            ("FEAT", "FEAT", false, false),
            ("OPTS UTF8 ON", "OPTS", false, false),
            ("XPWD", "PWD", true, false),
            ("XCWD a", "CWD", true, false),
            ("XCUP", "CDUP", true, false),
            ("TYPE I", "TYPE", true, false),
            ("MODE S", "MODE", true, false),
            ("STRU F", "STRU", true, false),
            ("NOOP", "NOOP", false, false),
            ("QUIT", "QUIT", false, false),
            ("HELP", "HELP", false, false),
            ("STAT", "STAT", true, false),
            ("ALLO 5", "ALLO", true, false),
            ("PRET RETR a", "PRET", true, false),
            ("PASV", "PASV", true, false),
            ("EPSV", "EPSV", true, false),
            ("PORT 1,2,3,4,5,6", "PORT", true, false),
            ("EPRT |1|1.2.3.4|5|", "EPRT", true, false),
            ("LIST", "LIST", true, true),
            ("NLST", "NLST", true, true),
            ("MLSD", "MLSD", true, true),
            ("MLST", "MLST", true, false),
            ("RETR a", "RETR", true, true),
            ("STOR a", "STOR", true, true),
            ("APPE a", "APPE", true, true),
            ("STOU", "STOU", true, true),
            ("REST 1", "REST", true, false),
            ("SIZE a", "SIZE", true, false),
            ("MDTM a", "MDTM", true, false),
            ("MFMT 20200101000000 a", "MFMT", true, false),
            ("DELE a", "DELE", true, false),
            ("RNFR a", "RNFR", true, false),
            ("RNTO a", "RNTO", true, false),
            ("XMKD a", "MKD", true, false),
            ("XRMD a", "RMD", true, false),
            ("ABOR", "ABOR", true, false),
            ("SITE WHO", "SITE", true, false),
            ("PBSZ 0", "PBSZ", false, false),
            ("PROT P", "PROT", false, false),
            ("AUTH TLS", "AUTH", false, false),
            ("CCC", "CCC", true, false),
        ];
        for &(line, verb, login, transfer) in cases {
            let c = ok(line);
            assert_eq!(c.verb(), verb, "{line}");
            assert_eq!(c.needs_login(), login, "{line}");
            assert_eq!(c.is_transfer(), transfer, "{line}");
            // Lower case parses to the same command.
            assert_eq!(ok(&line.to_lowercase()).verb(), verb, "{line}");
        }
    }

    #[test]
    fn error_codes_and_messages() {
        assert_eq!(ParseError::Empty.code(), 500);
        assert_eq!(ParseError::Unknown(s("X")).code(), 500);
        assert_eq!(bad("RETR", "x").code(), 501);
        assert_eq!(not_implemented("MODE", "x").code(), 504);
        assert_eq!(ParseError::UnsupportedProtocol.code(), 522);
        assert_eq!(
            bad("RETR", "missing argument").to_string(),
            "RETR: missing argument"
        );
        assert_eq!(
            ParseError::UnsupportedProtocol.to_string(),
            "EPRT network protocol not supported, use (1,2)"
        );
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // A cheap deterministic fuzz over verbs and awkward arguments.
        let verbs = [
            "PORT", "EPRT", "EPSV", "TYPE", "MODE", "STRU", "REST", "MFMT", "SITE", "PRET", "LIST",
            "NLST", "RETR", "CWD", "HELP", "OPTS",
        ];
        let args = [
            "",
            " ",
            "  ",
            "-",
            "--",
            "- -",
            "|",
            "||||",
            "|1|",
            "|2|||",
            "é",
            "1,2,3,4,5,é",
            "\u{0}",
            "20261124052200",
            "20261124052200 ",
            ".",
            "PRET",
            "PRET PRET",
        ];
        for v in verbs {
            for a in args {
                for b in args {
                    let _ = Command::parse(&format!("{v} {a}{b}"));
                    let _ = Command::parse(&format!("PRET {v} {a}{b}"));
                }
            }
        }
    }
}

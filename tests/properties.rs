//! Property tests for the three decoders that face untrusted input: the FTP
//! command parser and line framing (clients), the path normaliser (clients
//! and slaves), and the link frame decoder (slaves). None may panic, and
//! no path may leave the root. Also: no password survives the redaction
//! used for logs and recordings, and permission globs behave.

use dftpd::link::{decode_payload, read_frame, MasterMsg, SlaveMsg};
use dftpd::master::users::{allows, redacted, PermRule, TlsPolicy, User};
use dftpd::proto::{Command, Line, LineDecoder, VPath};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any line gets a command or a typed error with a 5xx code.
    #[test]
    fn parser_never_panics_and_errors_map_to_5xx(line in ".{0,300}") {
        if let Err(e) = Command::parse(&line) {
            prop_assert!((500..600).contains(&e.code()), "{e:?}");
        }
    }

    /// Known verbs with arbitrary arguments.
    #[test]
    fn verbs_with_random_arguments(
        verb in prop::sample::select(vec![
            "USER", "PASS", "CWD", "PRET", "PORT", "EPRT", "EPSV", "REST", "TYPE",
            "MODE", "STRU", "LIST", "NLST", "MLSD", "RETR", "STOR", "MFMT", "SITE",
            "XCRC", "HASH", "SSCN", "CPSV", "AUTH", "PBSZ", "PROT",
        ]),
        arg in "[ -~]{0,80}",
    ) {
        let _ = Command::parse(&format!("{verb} {arg}"));
    }

    /// Resolved paths are absolute, normalised, bounded and never contain a
    /// `..` component, whatever the client sends.
    #[test]
    fn paths_never_escape_the_root(
        cwd in prop::collection::vec("[a-z.]{1,5}", 0..4),
        arg in "[a-z./\\\\\\x00]{0,40}",
    ) {
        let cwd = VPath::resolve(&VPath::root(), &cwd.join("/")).unwrap_or_else(|_| VPath::root());
        if let Ok(p) = VPath::resolve(&cwd, &arg) {
            prop_assert!(p.as_str().starts_with('/'));
            prop_assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
            prop_assert!(!p.as_str().contains('\\') && !p.as_str().contains('\0'));
            prop_assert!(p.as_str().len() <= dftpd::proto::path::MAX_PATH);
            prop_assert_eq!(VPath::parse_absolute(p.as_str()).ok(), Some(p.clone()));
        }
    }

    /// Line framing consumes any byte stream with bounded buffering.
    #[test]
    fn line_decoder_bounded(bytes in prop::collection::vec(any::<u8>(), 0..20_000), cut in 0usize..20_000) {
        let mut d = LineDecoder::new();
        let cut = cut.min(bytes.len());
        d.push(&bytes[..cut]);
        while let Some(l) = d.next_line() {
            if let Line::Command(c) = l {
                prop_assert!(c.len() <= dftpd::proto::line::MAX_LINE);
            }
        }
        d.push(&bytes[cut..]);
        while d.next_line().is_some() {}
        prop_assert!(d.buffered() <= dftpd::proto::line::MAX_LINE + 1);
    }

    /// A rogue slave's (or master's) bytes never panic the decoder.
    #[test]
    fn frame_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_payload::<SlaveMsg>(&bytes);
        let _ = decode_payload::<MasterMsg>(&bytes);
        let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _ = rt.block_on(async { read_frame::<_, SlaveMsg>(&mut &framed[..]).await });
    }

    /// A password given with PASS, SITE ADDUSER or SITE CHPASS never
    /// survives redaction, whatever the spacing and case.
    #[test]
    fn passwords_never_survive_redaction(
        verb in prop::sample::select(vec!["PASS", "pass", "SITE ADDUSER bob", "site chpass bob"]),
        pw in "[!-~]{6,40}",
        tail in "( [a-z]{1,8})?",
    ) {
        let line = format!("{verb} {pw}{tail}");
        let safe = redacted(&line);
        prop_assert!(safe.as_deref().is_some_and(|s| !s.contains(&pw)), "{line} -> {safe:?}");
    }

    /// Permission globs terminate quickly and agree with a simple
    /// reference on patterns without stars.
    #[test]
    fn permission_globs(pattern in "[/a-c?*]{0,24}", path in "/[a-c/]{0,24}") {
        let rule = PermRule { actions: vec![], path: pattern.clone(), who: vec!["nobody".into()] };
        let user = User {
            name: "u".into(), password_hash: String::new(), groups: vec![], home: "/".into(),
            admin: false, fxp: false, tls: TlsPolicy::Optional, max_sessions: None,
            upload_quota: None, uploaded: 0,
        };
        let Ok(p) = VPath::parse_absolute(&path) else { return Ok(()) };
        let allowed = allows(std::slice::from_ref(&rule), &user, dftpd::master::users::Perm::List, &p);
        if !pattern.contains('*') {
            let same = pattern.len() == p.as_str().len()
                && pattern.bytes().zip(p.as_str().bytes()).all(|(a, b)| a == b'?' || a == b);
            prop_assert_eq!(allowed, !same, "{} vs {}", pattern, p);
        }
    }
}

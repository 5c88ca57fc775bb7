//! Reply formatting for the control connection (RFC 959 §4.2).
//!
//! A reply is a three-digit code plus one or more lines of text. Single-line
//! replies are `CODE text`; multi-line replies are `CODE-first`, any number of
//! middle lines, and `CODE last` (RFC 959 §4.2). Because reply text often
//! embeds client-chosen strings (file names, user names), every line is
//! sanitised so that nothing a client supplies can forge an extra reply line.
//! [`quote_path`] implements the quoting convention of RFC 959 Appendix II
//! used by the 257 replies of `PWD` and `MKD`.

use std::fmt;

/// One reply on the control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// A single-line reply.
    pub fn new(code: u16, text: impl Into<String>) -> Reply {
        debug_assert!((100..=599).contains(&code), "reply code {code}");
        Reply {
            code,
            lines: vec![sanitize(&text.into())],
        }
    }

    /// A multi-line reply; one line behaves exactly like [`Reply::new`], and
    /// an empty vector is treated as a single empty line so the reply is
    /// still well formed.
    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        debug_assert!((100..=599).contains(&code), "reply code {code}");
        let lines = if lines.is_empty() {
            vec![String::new()]
        } else {
            lines.iter().map(|l| sanitize(l)).collect()
        };
        Reply { code, lines }
    }

    /// The exact bytes to send, every line terminated by CRLF.
    ///
    /// Sanitising happens again here (not only in the constructors) because
    /// the fields are public and may have been filled in directly.
    pub fn to_wire(&self) -> String {
        let code = self.code;
        match self.lines.as_slice() {
            [] => format!("{code} \r\n"),
            [only] => format!("{code} {}\r\n", sanitize(only)),
            [first, middle @ .., last] => {
                let mut out = format!("{code}-{}\r\n", sanitize(first));
                for line in middle {
                    let line = sanitize(line);
                    // RFC 959 §4.2: a middle line that starts like "DDD " could
                    // be taken for the end of the reply (and "DDD-" for the
                    // start of a nested one), so such lines are indented.
                    if looks_like_reply_start(&line) {
                        out.push(' ');
                    }
                    out.push_str(&line);
                    out.push_str("\r\n");
                }
                out.push_str(&format!("{code} {}\r\n", sanitize(last)));
                out
            }
        }
    }

    /// 1xx: the action has started and another reply will follow.
    pub fn is_positive_preliminary(&self) -> bool {
        (100..200).contains(&self.code)
    }

    /// 4xx or 5xx: the command failed, transiently or permanently.
    pub fn is_error(&self) -> bool {
        (400..600).contains(&self.code)
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let wire = self.to_wire();
        f.write_str(wire.strip_suffix("\r\n").unwrap_or(&wire))
    }
}

/// Quote a path for a 257 reply (RFC 959 Appendix II): surround it with
/// double quotes and double every embedded quote, so clients can find the
/// end of the name even when it contains quotes or spaces.
pub fn quote_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len() + 2);
    out.push('"');
    for c in p.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Replace CR and LF with spaces: a line break inside reply text would let a
/// file name inject a complete, fake reply line. Every other control
/// character (ESC, BEL, NUL, DEL, C1) is written as `\xNN`: text echoed
/// from the client (a rejected name, an unknown verb) must not run
/// escape sequences in a terminal. The result has no control character,
/// so sanitising twice changes nothing.
fn sanitize(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\r' | '\n' => out.push(' '),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Three ASCII digits followed by a space or '-'.
fn looks_like_reply_start(line: &str) -> bool {
    match line.as_bytes() {
        [a, b, c, sep, ..] => {
            a.is_ascii_digit()
                && b.is_ascii_digit()
                && c.is_ascii_digit()
                && matches!(sep, b' ' | b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_echoed_from_the_client_are_escaped() {
        // Names rejected for a forbidden character, unknown verbs: what
        // the client sent comes back, but never a terminal escape.
        let r = Reply::new(553, "/x\x1b]0;owned\x07\x1b[2J: forbidden");
        assert_eq!(
            r.to_wire(),
            "553 /x\\x1b]0;owned\\x07\\x1b[2J: forbidden\r\n"
        );
        let r = Reply::new(500, "'XYZ\x1b[5m\0\x7f\u{9b}' not understood");
        assert_eq!(
            r.to_wire(),
            "500 'XYZ\\x1b[5m\\x00\\x7f\\x9b' not understood\r\n"
        );
        let raw = Reply {
            code: 211,
            lines: vec!["a\x1b".into(), "b\x07".into(), "c".into()],
        };
        assert_eq!(raw.to_wire(), "211-a\\x1b\r\nb\\x07\r\n211 c\r\n");
        // Escaping twice changes nothing; line breaks stay spaces.
        assert_eq!(Reply::new(200, r.lines[0].clone()).lines, r.lines);
        assert_eq!(Reply::new(200, "a\r\nb").to_wire(), "200 a  b\r\n");
    }

    #[test]
    fn single_line() {
        let r = Reply::new(200, "Command okay.");
        assert_eq!(r.to_wire(), "200 Command okay.\r\n");
        assert_eq!(r.to_string(), "200 Command okay.");
    }

    #[test]
    fn empty_text_is_still_well_formed() {
        assert_eq!(Reply::new(200, "").to_wire(), "200 \r\n");
        assert_eq!(Reply::multi(211, vec![]).to_wire(), "211 \r\n");
        let raw = Reply {
            code: 200,
            lines: vec![],
        };
        assert_eq!(raw.to_wire(), "200 \r\n");
    }

    #[test]
    fn multi_of_one_is_single() {
        assert_eq!(Reply::multi(230, vec!["hi".into()]), Reply::new(230, "hi"));
    }

    #[test]
    fn multi_line_layout() {
        let r = Reply::multi(
            211,
            vec![
                "Features:".into(),
                " UTF8".into(),
                " PRET".into(),
                "End".into(),
            ],
        );
        assert_eq!(
            r.to_wire(),
            "211-Features:\r\n UTF8\r\n PRET\r\n211 End\r\n"
        );
        assert_eq!(r.to_string(), "211-Features:\r\n UTF8\r\n PRET\r\n211 End");
    }

    #[test]
    fn two_lines() {
        let r = Reply::multi(250, vec!["a".into(), "b".into()]);
        assert_eq!(r.to_wire(), "250-a\r\n250 b\r\n");
    }

    #[test]
    fn middle_lines_that_look_like_codes_are_indented() {
        let r = Reply::multi(
            211,
            vec![
                "x".into(),
                "211 fake end".into(),
                "123-fake".into(),
                "12 short".into(),
                "1234".into(),
                "y".into(),
            ],
        );
        assert_eq!(
            r.to_wire(),
            "211-x\r\n 211 fake end\r\n 123-fake\r\n12 short\r\n1234\r\n211 y\r\n"
        );
    }

    #[test]
    fn crlf_cannot_inject_lines() {
        let r = Reply::new(550, "file\r\n230 Logged in\nx");
        assert_eq!(r.to_wire(), "550 file  230 Logged in x\r\n");
        let r = Reply::multi(250, vec!["a\rb".into(), "c\nd".into(), "e\r\nf".into()]);
        assert_eq!(r.to_wire(), "250-a b\r\nc d\r\n250 e  f\r\n");
        // Even when the public fields are filled in directly.
        let r = Reply {
            code: 200,
            lines: vec!["a\nb".into()],
        };
        assert_eq!(r.to_wire(), "200 a b\r\n");
        assert_eq!(r.to_wire().matches("\r\n").count(), 1);
    }

    #[test]
    fn classification() {
        assert!(Reply::new(150, "x").is_positive_preliminary());
        assert!(!Reply::new(150, "x").is_error());
        assert!(!Reply::new(200, "x").is_positive_preliminary());
        assert!(!Reply::new(331, "x").is_error());
        assert!(Reply::new(425, "x").is_error());
        assert!(Reply::new(550, "x").is_error());
        assert!(Reply::new(599, "x").is_error());
    }

    #[test]
    fn quoting_paths() {
        assert_eq!(quote_path("/"), "\"/\"");
        assert_eq!(quote_path("/a b"), "\"/a b\"");
        assert_eq!(quote_path("/say \"hi\""), "\"/say \"\"hi\"\"\"");
        assert_eq!(quote_path(""), "\"\"");
    }
}

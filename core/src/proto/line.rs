//! Line framing for the control connection, without I/O: bytes go in with
//! [`LineDecoder::push`], complete lines come out of
//! [`LineDecoder::next_line`].
//!
//! RFC 959 §4.1 ends every command with CRLF (bare LF is accepted too, as
//! most servers do) and runs the control connection over Telnet (RFC 854), so
//! Telnet IAC sequences are removed here: clients send `IAC IP IAC DM` before
//! `ABOR` (RFC 959 §4.1.3) and must not make it unrecognisable. Memory stays
//! bounded: an over-long line is reported once as [`Line::TooLong`] and the
//! rest of it is dropped as it arrives instead of being stored.

use std::collections::VecDeque;

/// Longest accepted line, in bytes, not counting the line ending.
pub const MAX_LINE: usize = 4096;

/// Telnet "interpret as command" (RFC 854).
const IAC: u8 = 255;
/// WILL (251), WONT (252), DO (253) and DONT (254) carry one option byte.
const NEGOTIATION: std::ops::RangeInclusive<u8> = 251..=254;
/// Telnet SB and SE: a subnegotiation's start and end.
const SB: u8 = 250;
const SE: u8 = 240;

/// One event from the decoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of text, line ending removed, otherwise verbatim.
    Command(String),
    /// A line longer than [`MAX_LINE`]; its content is gone.
    TooLong,
    /// A line that is not valid UTF-8 (RFC 2640 makes UTF-8 the encoding).
    NotUtf8,
    /// An empty or whitespace-only line.
    Empty,
}

/// Where the decoder is inside a Telnet sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    Data,
    /// After IAC.
    Iac,
    /// After IAC WILL/WONT/DO/DONT; the next byte is the option.
    Option,
    /// Inside IAC SB ... IAC SE (a subnegotiation): dropped up to the SE,
    /// or up to a line end, so a client that never sends SE is not stuck.
    Sub,
    /// After IAC inside a subnegotiation.
    SubIac,
}

/// Incremental decoder; see the module documentation.
#[derive(Debug)]
pub struct LineDecoder {
    /// Bytes pushed but not yet examined. Only non-empty while `ready` holds
    /// a line: otherwise input is examined at once, so garbage never piles
    /// up here.
    raw: VecDeque<u8>,
    /// The current line so far, Telnet commands removed, at most
    /// `MAX_LINE` bytes.
    line: Vec<u8>,
    /// A CR was seen and held back: it is dropped if LF follows, kept as
    /// data otherwise. Holding it keeps a line of exactly `MAX_LINE` bytes
    /// plus CRLF from counting as too long.
    pending_cr: bool,
    /// The current line already exceeded `MAX_LINE`; discard until LF.
    overflow: bool,
    telnet: Telnet,
    /// A completed line not yet handed out.
    ready: Option<Line>,
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LineDecoder {
    pub fn new() -> Self {
        LineDecoder {
            raw: VecDeque::new(),
            line: Vec::new(),
            pending_cr: false,
            overflow: false,
            telnet: Telnet::Data,
            ready: None,
        }
    }

    /// Feed bytes read from the connection.
    pub fn push(&mut self, bytes: &[u8]) {
        self.raw.extend(bytes);
        self.advance();
    }

    /// The next complete line, in order, or `None` until more input arrives.
    pub fn next_line(&mut self) -> Option<Line> {
        self.advance();
        let out = self.ready.take();
        // Examine what follows right away, so that garbage after this line is
        // discarded now rather than held until the next call.
        self.advance();
        out
    }

    /// Complete lines the client already sent that were not handed out yet
    /// (a client that waits for each reply has none; a flood has many).
    pub fn lines_waiting(&self) -> usize {
        usize::from(self.ready.is_some()) + self.raw.iter().filter(|&&b| b == b'\n').count()
    }

    /// Bytes currently held (unexamined input plus the partial line).
    pub fn buffered(&self) -> usize {
        self.raw.len() + self.line.len() + usize::from(self.pending_cr)
    }

    /// Consume raw input until a line is complete or input runs out.
    fn advance(&mut self) {
        while self.ready.is_none() {
            let Some(b) = self.raw.pop_front() else {
                break;
            };
            self.telnet_byte(b);
        }
        if self.raw.is_empty() {
            // Give back the memory of a large push once it is consumed.
            self.raw.shrink_to(MAX_LINE);
        }
    }

    /// Strip Telnet commands (RFC 854) and pass data bytes on.
    fn telnet_byte(&mut self, b: u8) {
        match self.telnet {
            Telnet::Data => {
                if b == IAC {
                    self.telnet = Telnet::Iac;
                } else {
                    self.data_byte(b);
                }
            }
            Telnet::Iac => {
                if b == IAC {
                    // IAC IAC is an escaped literal 0xFF.
                    self.telnet = Telnet::Data;
                    self.data_byte(IAC);
                } else if NEGOTIATION.contains(&b) {
                    self.telnet = Telnet::Option;
                } else if b == SB {
                    self.telnet = Telnet::Sub;
                } else {
                    // IP, DM, AYT, NOP...: two-byte commands, dropped.
                    self.telnet = Telnet::Data;
                }
            }
            Telnet::Option => self.telnet = Telnet::Data,
            Telnet::Sub | Telnet::SubIac if b == b'\n' => {
                self.telnet = Telnet::Data;
                self.data_byte(b);
            }
            Telnet::Sub if b == IAC => self.telnet = Telnet::SubIac,
            Telnet::Sub => {}
            Telnet::SubIac if b == SE => self.telnet = Telnet::Data,
            Telnet::SubIac => self.telnet = Telnet::Sub,
        }
    }

    fn data_byte(&mut self, b: u8) {
        if b == b'\n' {
            self.pending_cr = false;
            self.finish_line();
            return;
        }
        if self.pending_cr {
            // The held CR was not part of CRLF: it is ordinary data.
            self.pending_cr = false;
            self.store(b'\r');
        }
        if b == b'\r' {
            self.pending_cr = true;
        } else {
            self.store(b);
        }
    }

    fn store(&mut self, b: u8) {
        if self.overflow {
            return;
        }
        if self.line.len() >= MAX_LINE {
            self.overflow = true;
            self.line = Vec::new();
            return;
        }
        self.line.push(b);
    }

    fn finish_line(&mut self) {
        let bytes = std::mem::take(&mut self.line);
        let line = if std::mem::take(&mut self.overflow) {
            Line::TooLong
        } else {
            match String::from_utf8(bytes) {
                Err(_) => Line::NotUtf8,
                Ok(s) if s.trim().is_empty() => Line::Empty,
                Ok(s) => Line::Command(s),
            }
        };
        self.ready = Some(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(d: &mut LineDecoder) -> Vec<Line> {
        std::iter::from_fn(|| d.next_line()).collect()
    }

    fn decode(input: &[u8]) -> Vec<Line> {
        let mut d = LineDecoder::new();
        d.push(input);
        all(&mut d)
    }

    fn cmd(s: &str) -> Line {
        Line::Command(s.to_string())
    }

    #[test]
    fn crlf_and_bare_lf() {
        assert_eq!(
            decode(b"USER a\r\nPASS b\nNOOP"),
            vec![cmd("USER a"), cmd("PASS b")]
        );
    }

    #[test]
    fn a_subnegotiation_is_dropped_whole() {
        // IAC SB TERMINAL-TYPE SEND IAC SE, then a command; an escaped
        // 0xFF inside the subnegotiation does not end it.
        assert_eq!(
            decode(b"\xff\xfa\x18\x01\xff\xff\x02\xff\xf0NOOP\r\n"),
            vec![cmd("NOOP")]
        );
        // Without its SE, the line end ends it: the next command is read.
        assert_eq!(
            decode(b"\xff\xfa\x18\x01\r\nPWD\r\n"),
            vec![Line::Empty, cmd("PWD")]
        );
    }

    #[test]
    fn partial_line_waits() {
        let mut d = LineDecoder::default();
        d.push(b"RETR fi");
        assert_eq!(d.next_line(), None);
        assert_eq!(d.buffered(), 7);
        d.push(b"le\r");
        assert_eq!(d.next_line(), None);
        d.push(b"\n");
        assert_eq!(d.next_line(), Some(cmd("RETR file")));
        assert_eq!(d.next_line(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn byte_by_byte() {
        let input = b"\xff\xfb\x01USER alice\r\n\r\nRETR a b \r\n\xff\xf4\xff\xf2ABOR\r\n";
        let mut d = LineDecoder::new();
        let mut out = Vec::new();
        for b in input {
            d.push(std::slice::from_ref(b));
            out.extend(all(&mut d));
        }
        assert_eq!(
            out,
            vec![
                cmd("USER alice"),
                Line::Empty,
                cmd("RETR a b "),
                cmd("ABOR")
            ]
        );
        assert_eq!(decode(input), out);
    }

    #[test]
    fn telnet_sequences_are_removed() {
        assert_eq!(decode(b"\xff\xf4\xff\xf2ABOR\r\n"), vec![cmd("ABOR")]);
        assert_eq!(decode(b"NO\xff\xf1OP\r\n"), vec![cmd("NOOP")]);
        assert_eq!(
            decode(b"\xff\xfd\x18\xff\xfe\x01QUIT\r\n"),
            vec![cmd("QUIT")]
        );
        // Escaped 0xFF is a data byte, which is not valid UTF-8 on its own.
        assert_eq!(decode(b"RETR \xff\xff\r\n"), vec![Line::NotUtf8]);
        // An IAC split across pushes is still recognised.
        let mut d = LineDecoder::new();
        d.push(b"\xff");
        d.push(b"\xf4AB");
        d.push(b"OR\r\n");
        assert_eq!(all(&mut d), vec![cmd("ABOR")]);
        // The option byte after WILL may itself be LF or IAC: it is consumed.
        assert_eq!(decode(b"\xff\xfb\nA\n"), vec![cmd("A")]);
        assert_eq!(decode(b"\xff\xfb\xffA\n"), vec![cmd("A")]);
    }

    #[test]
    fn telnet_commands_around_abor_are_dropped() {
        // (lftp's IAC IP IAC DM: `telnet_sequences_are_removed`.) Abort Output, Are You There, NOP, SE: two-byte commands.
        assert_eq!(
            decode(b"\xff\xf5\xff\xf6AB\xff\xf1OR\xff\xf0\r\n"),
            vec![cmd("ABOR")]
        );
        // ftplib's urgent ABOR reaches the decoder in two reads (split at
        // the urgent mark, before its LF).
        let mut d = LineDecoder::new();
        d.push(b"ABOR\r");
        assert_eq!(d.next_line(), None);
        d.push(b"\n");
        assert_eq!(d.next_line(), Some(cmd("ABOR")));
        // IAC IAC is one literal 0xFF (not UTF-8, so the line is refused),
        // and the IAC after it starts a command again.
        assert_eq!(
            decode(b"\xff\xff\xff\xf4NOOP\r\nNOOP\r\n"),
            vec![Line::NotUtf8, cmd("NOOP")]
        );
        assert_eq!(decode(b"\xff\xff\xff\xf4\r\n"), vec![Line::NotUtf8]);
        assert_eq!(decode(b"\xff\xf4\r\n"), vec![Line::Empty]);
    }

    #[test]
    fn empty_and_whitespace_lines() {
        assert_eq!(
            decode(b"\r\n\n  \t \r\n"),
            vec![Line::Empty, Line::Empty, Line::Empty]
        );
    }

    #[test]
    fn invalid_utf8() {
        assert_eq!(
            decode(b"RETR \xc3\x28\r\nNOOP\r\n"),
            vec![Line::NotUtf8, cmd("NOOP")]
        );
        assert_eq!(decode("RETR é\r\n".as_bytes()), vec![cmd("RETR é")]);
    }

    #[test]
    fn bare_cr_is_data() {
        assert_eq!(decode(b"A\rB\r\n"), vec![cmd("A\rB")]);
        assert_eq!(decode(b"A\r\r\n"), vec![cmd("A\r")]);
    }

    #[test]
    fn line_length_boundary() {
        let exact = "x".repeat(MAX_LINE);
        let mut input = exact.clone().into_bytes();
        input.extend_from_slice(b"\r\n");
        assert_eq!(decode(&input), vec![cmd(&exact)]);

        let mut input = "x".repeat(MAX_LINE + 1).into_bytes();
        input.extend_from_slice(b"\r\nNOOP\r\n");
        assert_eq!(decode(&input), vec![Line::TooLong, cmd("NOOP")]);
    }

    #[test]
    fn megabyte_of_garbage_then_a_line() {
        let garbage = vec![b'g'; 1 << 20];
        // In chunks, as a socket would deliver it.
        let mut d = LineDecoder::new();
        for chunk in garbage.chunks(1000) {
            d.push(chunk);
            assert!(d.buffered() <= MAX_LINE + 1, "buffered {}", d.buffered());
            assert_eq!(d.next_line(), None);
        }
        d.push(b"\r\nNOOP\r\n");
        assert_eq!(all(&mut d), vec![Line::TooLong, cmd("NOOP")]);
        assert_eq!(d.buffered(), 0);

        // In one push: consumed immediately, nothing big retained.
        let mut d = LineDecoder::new();
        d.push(&garbage);
        assert!(d.buffered() <= MAX_LINE + 1);
        d.push(b"\nPWD\n");
        assert_eq!(all(&mut d), vec![Line::TooLong, cmd("PWD")]);

        // Garbage queued behind a complete line is dropped once that line is
        // taken.
        let mut d = LineDecoder::new();
        let mut input = b"NOOP\r\n".to_vec();
        input.extend_from_slice(&garbage);
        d.push(&input);
        assert_eq!(d.next_line(), Some(cmd("NOOP")));
        assert!(d.buffered() <= MAX_LINE + 1);
        assert_eq!(d.next_line(), None);
        d.push(b"\n");
        assert_eq!(d.next_line(), Some(Line::TooLong));
    }

    #[test]
    fn too_long_reported_once() {
        let mut d = LineDecoder::new();
        for _ in 0..10 {
            d.push(&[b'a'; MAX_LINE]);
        }
        d.push(b"\n\n");
        assert_eq!(all(&mut d), vec![Line::TooLong, Line::Empty]);
    }

    #[test]
    fn many_lines_in_one_push() {
        let input = "NOOP\r\n".repeat(1000);
        let out = decode(input.as_bytes());
        assert_eq!(out.len(), 1000);
        assert!(out.iter().all(|l| *l == cmd("NOOP")));
    }
}

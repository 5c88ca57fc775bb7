//! Client bytes through line framing and the command parser: never a panic,
//! every error a 5xx.
#![no_main]
use dftpd::proto::{Command, Line, LineDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut d = LineDecoder::new();
    d.push(data);
    while let Some(line) = d.next_line() {
        if let Line::Command(text) = line {
            if let Err(e) = Command::parse(&text) {
                assert!((500..600).contains(&e.code()));
            }
        }
    }
    assert!(d.buffered() <= dftpd::proto::line::MAX_LINE + 1);
});

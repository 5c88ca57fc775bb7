//! Link payloads as a rogue slave (or master) could send them: decoding
//! never panics, and whatever decodes re-encodes.
#![no_main]
use dftpd::link::{decode_payload, encode_frame, MasterMsg, SlaveMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode_payload::<SlaveMsg>(data) {
        let _ = encode_frame(&m);
    }
    if let Ok(m) = decode_payload::<MasterMsg>(data) {
        let _ = encode_frame(&m);
    }
});

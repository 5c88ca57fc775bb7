//! Path arguments: a resolved path is absolute, normalised, has no `..`,
//! and round-trips through the strict parser used for slave input.
#![no_main]
use dftpd::proto::VPath;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (cwd, arg) = text.split_once('\n').unwrap_or(("/", text));
    let cwd = VPath::resolve(&VPath::root(), cwd).unwrap_or_else(|_| VPath::root());
    if let Ok(p) = VPath::resolve(&cwd, arg) {
        assert!(p.as_str().starts_with('/'));
        assert!(p.components().all(|c| c != ".." && c != "." && !c.is_empty()));
        assert_eq!(VPath::parse_absolute(p.as_str()).ok().as_ref(), Some(&p));
    }
    let _ = VPath::parse_absolute(text);
});

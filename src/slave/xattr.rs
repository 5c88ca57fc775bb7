//! A file's version kept with the file itself, in an extended attribute
//! (`user.dftpd.version`): read by path (never following a symlink) or
//! through an open descriptor (the copy opened, whatever is renamed over
//! its path afterwards), and written after a commit.

use std::io;
use std::path::Path;

use crate::link::FileVersion;

/// The extended attribute a file's version is kept in. Its value is text
/// (`getfattr -n user.dftpd.version FILE` shows it): `1 STORE GEN SIZE
/// CRC32` (hex store and CRC, `-` for an unknown CRC).
pub const VERSION_XATTR: &str = "user.dftpd.version";

fn encode_version(v: &FileVersion) -> String {
    let crc = v.crc32.map_or("-".to_string(), |c| format!("{c:08x}"));
    format!("1 {:016x} {} {} {crc}", v.store, v.gen, v.size)
}

fn decode_version(text: &[u8]) -> Option<FileVersion> {
    let text = std::str::from_utf8(text).ok()?;
    let w: Vec<&str> = text.split_whitespace().collect();
    if w.len() != 5 || w[0] != "1" {
        return None;
    }
    Some(FileVersion {
        store: u64::from_str_radix(w[1], 16).ok()?,
        gen: w[2].parse().ok()?,
        size: w[3].parse().ok()?,
        crc32: match w[4] {
            "-" => None,
            c => Some(u32::from_str_radix(c, 16).ok()?),
        },
    })
}

fn cpath(p: &Path) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

/// The version kept with the file at `p` (never following a symlink).
pub(super) fn read_version(p: &Path) -> io::Result<Option<FileVersion>> {
    let c = cpath(p)?;
    let name = std::ffi::CString::new(VERSION_XATTR).unwrap_or_default();
    let mut buf = [0u8; 128];
    // SAFETY: valid NUL-terminated strings and a buffer of the given size.
    let n = unsafe {
        nix::libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    version_read(n, &buf)
}

/// The version kept with an open file: the copy opened, whatever is
/// renamed over its path afterwards.
pub(super) fn read_version_fd(f: &std::fs::File) -> io::Result<Option<FileVersion>> {
    use std::os::fd::AsRawFd;
    let name = std::ffi::CString::new(VERSION_XATTR).unwrap_or_default();
    let mut buf = [0u8; 128];
    // SAFETY: an open descriptor, a NUL-terminated name and a buffer of the
    // given size.
    let n = unsafe {
        nix::libc::fgetxattr(
            f.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    version_read(n, &buf)
}

fn version_read(n: isize, buf: &[u8]) -> io::Result<Option<FileVersion>> {
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(nix::libc::ENODATA) | Some(nix::libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(decode_version(&buf[..n as usize]))
}

/// Keeps `v` with the file at `p`.
pub(super) fn write_version(p: &Path, v: &FileVersion) -> io::Result<()> {
    let c = cpath(p)?;
    let name = std::ffi::CString::new(VERSION_XATTR).unwrap_or_default();
    let value = encode_version(v);
    // SAFETY: valid NUL-terminated strings and a value of the given size.
    let r = unsafe {
        nix::libc::lsetxattr(
            c.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

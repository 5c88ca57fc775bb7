//! A file's version kept with the file itself, in an extended attribute
//! (`user.dftpd.version`): read by path (never following a symlink) or
//! through an open descriptor (the copy opened, whatever is renamed over
//! its path afterwards), and written after a commit.

use std::io;
use std::path::Path;

use crate::link::FileVersion;

/// The extended attribute a file's version is kept in. Its value is text
/// (`getfattr -n user.dftpd.version FILE` shows it): `1 STORE GEN SIZE
/// CRC32 MTIME` (hex store and CRC, `-` for an unknown CRC; MTIME the
/// file's modification time in nanoseconds when the version was written).
///
/// A file whose modification time is no longer MTIME was written behind
/// the slave's back (an edit in place keeps the attribute and may keep the
/// size): its version is not reported, so the copy is never served as that
/// version and a remerge checks its bytes. A value without MTIME (written
/// before it was kept) is taken as it is.
pub const VERSION_XATTR: &str = "user.dftpd.version";

fn encode_version(v: &FileVersion, mtime_ns: i128) -> String {
    let crc = v.crc32.map_or("-".to_string(), |c| format!("{c:08x}"));
    format!("1 {:016x} {} {} {crc} {mtime_ns}", v.store, v.gen, v.size)
}

/// The modification time of `meta` in nanoseconds.
fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// The version in `text`, if the file (modified at `mtime`) has not been
/// written since it was kept.
fn decode_version(text: &[u8], mtime: i128) -> Option<FileVersion> {
    let text = std::str::from_utf8(text).ok()?;
    let w: Vec<&str> = text.split_whitespace().collect();
    if !(w.len() == 5 || w.len() == 6) || w[0] != "1" {
        return None;
    }
    if let Some(kept) = w.get(5) {
        if kept.parse::<i128>().ok()? != mtime {
            return None;
        }
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
    if n < 0 {
        return version_read(n, &buf, 0);
    }
    let mtime = mtime_ns(&std::fs::symlink_metadata(p)?);
    version_read(n, &buf, mtime)
}

/// The version kept with an open file: the copy opened, whatever is
/// renamed over its path afterwards.
pub(super) fn read_version_fd(f: &std::fs::File) -> io::Result<Option<FileVersion>> {
    let (n, buf) = fget_version(f);
    if n < 0 {
        return version_read(n, &buf, 0);
    }
    version_read(n, &buf, mtime_ns(&f.metadata()?))
}

/// The version kept with an open file even if the file was written since
/// (the scrub: a copy whose bytes no longer match the CRC-32 kept with it
/// is corrupt, however it changed).
pub(super) fn read_kept_version_fd(f: &std::fs::File) -> io::Result<Option<FileVersion>> {
    let (n, buf) = fget_version(f);
    if n < 0 {
        return version_read(n, &buf, 0);
    }
    // The time kept, whatever it is: the version as written.
    let kept = std::str::from_utf8(&buf[..n as usize])
        .ok()
        .and_then(|t| t.split_whitespace().nth(5))
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    version_read(n, &buf, kept)
}

/// The raw version attribute of an open file: fgetxattr's result (its
/// length, or negative with errno set) and the buffer it filled.
fn fget_version(f: &std::fs::File) -> (isize, [u8; 128]) {
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
    (n, buf)
}

fn version_read(n: isize, buf: &[u8], mtime: i128) -> io::Result<Option<FileVersion>> {
    if n < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(nix::libc::ENODATA) | Some(nix::libc::ENOTSUP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(decode_version(&buf[..n as usize], mtime))
}

/// Keeps `v` with the file at `p`.
pub(super) fn write_version(p: &Path, v: &FileVersion) -> io::Result<()> {
    let c = cpath(p)?;
    let name = std::ffi::CString::new(VERSION_XATTR).unwrap_or_default();
    let value = encode_version(v, mtime_ns(&std::fs::symlink_metadata(p)?));
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

/// Marks a copy a rename could not move (`user.dftpd.keep`, its value
/// the path it was to go to): `DropStale` never removes it, or anything
/// below it, whatever the master thinks of it (a master that forgot the
/// failed rename, after a restart, sees a renamed file's stale copy).
pub const KEEP_XATTR: &str = "user.dftpd.keep";

/// Marks the file or directory at `p` kept (see [`KEEP_XATTR`]).
pub(super) fn mark_kept(p: &Path, to: &str) -> io::Result<()> {
    let c = cpath(p)?;
    let name = std::ffi::CString::new(KEEP_XATTR).unwrap_or_default();
    // SAFETY: valid NUL-terminated strings and a value of the given size.
    let r =
        unsafe { nix::libc::lsetxattr(c.as_ptr(), name.as_ptr(), to.as_ptr().cast(), to.len(), 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the file or directory at `p` is marked kept.
pub(super) fn is_kept(p: &Path) -> bool {
    let Ok(c) = cpath(p) else { return false };
    let name = std::ffi::CString::new(KEEP_XATTR).unwrap_or_default();
    // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks
    // for the value's size only.
    let n = unsafe { nix::libc::lgetxattr(c.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) };
    n >= 0
}

/// Removes the kept mark from `p` (moved where it belongs at last), if any.
pub(super) fn unmark_kept(p: &Path) {
    let Ok(c) = cpath(p) else { return };
    let name = std::ffi::CString::new(KEEP_XATTR).unwrap_or_default();
    // SAFETY: valid NUL-terminated strings. A missing attribute is fine.
    let _ = unsafe { nix::libc::lremovexattr(c.as_ptr(), name.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> FileVersion {
        FileVersion {
            store: 0xabc,
            gen: 3,
            size: 5,
            crc32: Some(0x1234),
        }
    }

    /// An edit in place that keeps the size (and the attribute) is not
    /// taken for the version kept; a value written before the time was
    /// kept still reads.
    #[test]
    fn a_file_written_after_its_version_has_none() {
        use std::io::{Seek, Write};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        if write_version(&p, &v()).is_err() {
            return; // no user xattrs on this file system
        }
        assert_eq!(read_version(&p).unwrap(), Some(v()));
        let f = std::fs::File::open(&p).unwrap();
        assert_eq!(read_version_fd(&f).unwrap(), Some(v()));
        // Same size, new bytes, a later modification time.
        let mut w = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        w.seek(std::io::SeekFrom::Start(0)).unwrap();
        w.write_all(b"HELLO").unwrap();
        let was = w.metadata().unwrap().modified().unwrap();
        w.set_modified(was + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(read_version(&p).unwrap(), None);
        assert_eq!(read_version_fd(&f).unwrap(), None);
        // The old form, without the time.
        assert_eq!(
            decode_version(b"1 0000000000000abc 3 5 00001234", 7),
            Some(v())
        );
    }
}

//! A slave's storage seam. The transfer-shaped operations ("send this file
//! range to this stream", "receive this stream into a new file") let the
//! real implementation use `sendfile(2)` and large buffers while the
//! simulator copies in memory.
//!
//! Uploads are atomic: bytes go to `<root>/.dftpd-tmp/<random>`, are synced,
//! and are renamed into place only on [`Storage::commit`]; a crash leaves at
//! most a temporary file, removed by [`Storage::cleanup_temp`] at the next
//! start. The temporary directory is on the same file system as the files
//! (a rename must be atomic) but outside the namespace: no [`VPath`] can
//! name it ([`crate::proto::path::RESERVED`]), and each temporary name is
//! 128 random bits, so one session cannot reach another's upload. A
//! temporary file is removed on every way out of `receive` that does not
//! hand it on (an error, a cancelled transfer) by [`TempFile`]'s drop. Writes into an existing file (REST+STOR, APPE) are copy-on-write:
//! the file is copied to the temporary name (copy_file_range, a reflink
//! where the filesystem can), written there, and renamed over it on commit.
//!
//! Size: the seam and its disk implementation (temporaries, copy-on-write,
//! versions); `sendfile(2)` is `slave/sendfile.rs`, the upload pipeline
//! `slave/sink.rs`, the in-memory storage `slave/mem.rs`, extended
//! attributes `slave/xattr.rs`.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::sendfile::sendfile_all;
pub use super::sendfile::{sent_before, SentBefore};
use super::sink;
use super::xattr::{
    is_kept, mark_kept, read_kept_version_fd, read_version, read_version_fd, unmark_kept,
    write_version,
};
use crate::env::{BoxStream, COPY_BUF};
use crate::link::{FileOp, FileVersion, OpOutcome, RemoteFile, APPEND};
use crate::proto::VPath;

pub const TEMP_DIR: &str = crate::proto::path::RESERVED;

/// A fresh temporary name: 128 bits from the OS, never derived from a
/// transfer id, so nobody can predict it. (The real disk only; the
/// simulator's `MemStorage` keeps its temporaries in a map no path reaches.)
fn temp_name() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A temporary file that is removed when dropped, unless [`TempFile::keep`]
/// hands it on. Every early return and a cancelled (dropped) upload future
/// clean up after themselves this way. The blocking thread that creates the
/// file holds a clone ([`TempFile::share`]) while it works: a future dropped
/// meanwhile (the master's Abort) does not stop that thread, so the file
/// may appear after the future's guard is gone, and the last holder removes
/// it.
#[derive(Clone)]
struct TempFile(std::sync::Arc<TempPath>);

struct TempPath(std::sync::Mutex<Option<PathBuf>>);

impl TempFile {
    fn new(path: PathBuf) -> TempFile {
        TempFile(std::sync::Arc::new(TempPath(std::sync::Mutex::new(Some(
            path,
        )))))
    }

    /// A holder for the blocking thread that creates or fills the file.
    fn share(&self) -> TempFile {
        self.clone()
    }

    fn keep(self) {
        *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let path = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(p) = path {
            // An unlink: microseconds, and only on a failed or cancelled
            // upload, so it is done in place rather than on the pool.
            let _ = std::fs::remove_file(p);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("file not found")]
    NotFound,
    /// The copy here is not the version the master asked for (it is being
    /// replaced, or stale): never served.
    #[error("this copy is not the current version")]
    NotCurrent,
    #[error("storage: {0}")]
    Disk(io::Error),
    #[error("data connection: {0}")]
    Network(io::Error),
}

/// One data-connection operation, bounded by the idle timeout. Every read,
/// write, writability wait and shutdown on a data connection goes through
/// this, so "no progress for `idle`" is one rule for every storage.
pub async fn on_data<T>(
    idle: Duration,
    op: impl Future<Output = io::Result<T>>,
) -> Result<T, StorageError> {
    match tokio::time::timeout(idle, op).await {
        Ok(r) => r.map_err(StorageError::Network),
        Err(_) => Err(StorageError::Network(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no progress on the data connection for {} ms",
                idle.as_millis()
            ),
        ))),
    }
}

/// A received upload waiting for commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub path: VPath,
    /// Temporary name relative to the root (`None`: nothing to rename).
    pub temp: Option<String>,
    /// Bytes that came over the data connection.
    pub bytes: u64,
    /// Size of the file once committed.
    pub size: u64,
    /// CRC32 of the whole file.
    pub crc32: u32,
}

/// Whether a copy with `found` may be served as `wanted` (same store and
/// generation; the size is checked when the file is opened).
pub fn is_version(found: Option<&FileVersion>, wanted: &FileVersion) -> bool {
    found.is_some_and(|f| f.store == wanted.store && f.gen == wanted.gen)
}

/// Whether the copy at a path is the one a `DropStale` names: that
/// version, or (unversioned) that size. A newer copy is never removed.
pub fn is_that_copy(
    found: Option<&FileVersion>,
    found_size: u64,
    version: Option<&FileVersion>,
    size: u64,
) -> bool {
    match (found, version) {
        (Some(f), Some(v)) => f.store == v.store && f.gen == v.gen,
        (None, None) => found_size == size,
        // A copy from an earlier store (before a rebuild) that the master
        // did not adopt.
        (Some(f), None) => f.size == size && found_size == size,
        (None, Some(_)) => false,
    }
}

#[async_trait]
pub trait Storage: Send + Sync + 'static {
    /// Every regular file under the root (temporary files excluded), with
    /// the version kept with it (when its size still matches).
    async fn list(&self) -> io::Result<Vec<RemoteFile>>;
    async fn free_space(&self) -> io::Result<u64>;
    /// Sends `path` from `offset` to `out`, then shuts `out` down; with
    /// `version`, only if that is the copy here ([`StorageError::NotCurrent`]
    /// otherwise).
    async fn send(
        &self,
        path: &VPath,
        offset: u64,
        version: Option<&FileVersion>,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError>;
    /// Sends a received upload that waits for its commit (a synchronous
    /// copy to another slave), then shuts `out` down.
    async fn send_upload(
        &self,
        up: &PendingUpload,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError>;
    /// Receives `input` until EOF. `offset` and `base` as in
    /// [`crate::link::TransferOrder::Receive`].
    async fn receive(
        &self,
        path: &VPath,
        offset: Option<u64>,
        base: Option<&FileVersion>,
        xfer: u64,
        input: &mut BoxStream,
        idle: Duration,
    ) -> Result<PendingUpload, StorageError>;
    /// Makes a received upload visible under its name as `version` (kept
    /// with the file); returns (size, mtime).
    async fn commit(
        &self,
        up: &PendingUpload,
        version: &FileVersion,
    ) -> Result<(u64, i64), StorageError>;
    async fn discard(&self, up: &PendingUpload);
    /// Removes the temporary file of transfer `xfer`, if any (an upload
    /// cancelled mid-write).
    async fn cleanup_one(&self, xfer: u64);
    /// The file at `path`: size, mtime and the version kept with it.
    async fn version_of(&self, path: &VPath)
        -> io::Result<Option<(u64, i64, Option<FileVersion>)>>;
    /// Reads the file at `path` at most `rate` bytes per second (the
    /// scrub): the version kept with the copy read and the CRC-32 of its
    /// bytes; `None` when there is no such file.
    async fn checksum(
        &self,
        path: &VPath,
        rate: u64,
    ) -> io::Result<Option<(Option<FileVersion>, u32)>>;
    /// Applies one logged operation (not `Commit`: the slave's waiting
    /// room does that). Idempotent.
    async fn apply(&self, op: &FileOp) -> io::Result<OpOutcome>;
    /// Removes leftover temporary files; returns how many.
    async fn cleanup_temp(&self) -> io::Result<u64>;
}

/// Files on the local disk below `root`.
pub struct DiskStorage {
    root: PathBuf,
    /// The root, open: downloads are opened below it with `openat2(2)`,
    /// which refuses symbolic links in one system call.
    root_dir: std::fs::File,
    /// `openat2` is missing here (Linux before 5.6, or a sandbox refuses
    /// it): [`DiskStorage::real`]'s checks instead.
    no_openat2: std::sync::atomic::AtomicBool,
}

impl DiskStorage {
    pub fn new(root: impl Into<PathBuf>) -> io::Result<DiskStorage> {
        let root = root.into();
        std::fs::create_dir_all(&root)?;
        let root = root.canonicalize()?;
        // The temporary directory must be a real directory of ours.
        let tmp = root.join(TEMP_DIR);
        if std::fs::symlink_metadata(&tmp).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        // Versions are kept in an extended attribute: the file system must
        // take one, or stale copies could not be told from current ones.
        let probe = tmp.join(format!("probe-{}", temp_name()));
        std::fs::write(&probe, b"")?;
        let probed = write_version(
            &probe,
            &FileVersion {
                store: 0,
                gen: 0,
                size: 0,
                crc32: None,
            },
        );
        let _ = std::fs::remove_file(&probe);
        if let Err(e) = probed {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "{}: the file system does not keep user extended attributes ({e}); dftpd keeps each file's version in one",
                    root.display()
                ),
            ));
        }
        let root_dir = std::fs::File::open(&root)?;
        Ok(DiskStorage {
            root,
            root_dir,
            no_openat2: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Maps a virtual path below the root. `VPath` has no `..`, NUL or
    /// backslash components, so the result stays inside the root.
    ///
    /// A symbolic link planted on the disk could still lead outside the
    /// root, so no component may be one: each existing prefix is checked
    /// with `lstat` (a few cached syscalls per open) and a symlink is
    /// refused as "permission denied". `list` never reports symlinks either.
    fn real(&self, p: &VPath) -> io::Result<PathBuf> {
        let mut out = self.root.clone();
        let mut exists = true;
        for c in p.components() {
            out.push(c);
            if exists {
                match std::fs::symlink_metadata(&out) {
                    Ok(m) if m.file_type().is_symlink() => {
                        tracing::warn!(path = %out.display(), "symlink in a storage path refused");
                        return Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            "symbolic links are not followed",
                        ));
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Whether `p`, or a directory above it, is marked kept by a rename
    /// that failed (see `KEEP_XATTR`).
    fn kept(&self, p: &VPath) -> io::Result<bool> {
        let real = self.real(p)?;
        Ok(real
            .ancestors()
            .take_while(|a| a.starts_with(&self.root) && *a != self.root)
            .any(is_kept))
    }

    /// Opens `p` for reading, refusing a symbolic link anywhere on the way
    /// like [`DiskStorage::real`]: one `openat2(2)` with
    /// `RESOLVE_NO_SYMLINKS | RESOLVE_BENEATH` where the kernel has it (a
    /// lstat per component otherwise).
    fn open_read(&self, p: &VPath) -> io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        use std::sync::atomic::Ordering;
        if !self.no_openat2.load(Ordering::Relaxed) {
            let how = nix::fcntl::OpenHow::new()
                .flags(nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC)
                .resolve(
                    nix::fcntl::ResolveFlag::RESOLVE_NO_SYMLINKS
                        | nix::fcntl::ResolveFlag::RESOLVE_BENEATH,
                );
            let rel = p.as_str().trim_start_matches('/');
            let rel = if rel.is_empty() { "." } else { rel };
            match nix::fcntl::openat2(self.root_dir.as_raw_fd(), rel, how) {
                // SAFETY: a descriptor the call just opened, owned by nobody else.
                Ok(fd) => return Ok(unsafe { std::fs::File::from_raw_fd(fd) }),
                Err(nix::errno::Errno::ELOOP) | Err(nix::errno::Errno::EXDEV) => {
                    tracing::warn!(path = %p, "symlink in a storage path refused");
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        "symbolic links are not followed",
                    ));
                }
                Err(nix::errno::Errno::ENOSYS)
                | Err(nix::errno::Errno::EPERM)
                | Err(nix::errno::Errno::EINVAL) => {
                    self.no_openat2.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        std::fs::File::open(self.real(p)?)
    }

    fn temp_path(&self, name: &str) -> PathBuf {
        self.root.join(TEMP_DIR).join(name)
    }

    /// Sends `file` (as opened) from `offset` (with `version`: only if that
    /// is the copy opened), then shuts `out` down.
    async fn send_at(
        &self,
        file: io::Result<std::fs::File>,
        offset: u64,
        version: Option<&FileVersion>,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        // Opened on this worker thread, not the blocking pool: open + fstat
        // of a file whose metadata is cached costs microseconds, a hand-off
        // to the pool costs two thread wake-ups, and small-file rates are
        // bounded by exactly those (see ARCHITECTURE.md, performance).
        let open = || -> io::Result<(std::fs::File, u64)> {
            let f = file?;
            let m = f.metadata()?;
            if !m.is_file() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "not a file"));
            }
            Ok((f, m.len()))
        };
        let (file, len) = open().map_err(disk)?;
        if let Some(wanted) = version {
            // The copy opened is the one served (a rename over the path
            // afterwards does not change an open file).
            let found = read_version_fd(&file).map_err(disk)?;
            if !is_version(found.as_ref(), wanted) || len != wanted.size {
                return Err(StorageError::NotCurrent);
            }
        }
        let sent = if let Some(tcp) = out.as_tcp() {
            sendfile_all(tcp, &file, offset.min(len), len, idle).await?
        } else {
            let mut f = tokio::fs::File::from_std(file);
            f.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(StorageError::Disk)?;
            let mut buf = vec![0u8; COPY_BUF];
            let mut sent = 0u64;
            loop {
                let n = f.read(&mut buf).await.map_err(StorageError::Disk)?;
                if n == 0 {
                    break;
                }
                on_data(idle, out.write_all(&buf[..n])).await?;
                sent += n as u64;
            }
            sent
        };
        // Truncated while it was sent (behind the slave's back): what
        // went out is not the file, and the client must not get a 226.
        let whole = len - offset.min(len);
        if sent < whole {
            tracing::warn!(
                sent,
                expected = whole,
                "the file shrank while it was sent; the transfer fails"
            );
            return Err(match version {
                // Not the recorded version any more: the master stops
                // using this copy (and repairs it from another).
                Some(_) => StorageError::NotCurrent,
                None => StorageError::Disk(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the file shrank while it was sent ({sent} of {whole} bytes)"),
                )),
            });
        }
        on_data(idle, out.shutdown()).await?;
        Ok(sent)
    }
}

fn disk(e: io::Error) -> StorageError {
    if e.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound
    } else {
        StorageError::Disk(e)
    }
}

fn mtime_of(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<RemoteFile>) -> io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut entries: Vec<_> = rd.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let Ok(name) = e.file_name().into_string() else {
            tracing::warn!(path = ?e.path(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if rel.is_empty() && name == TEMP_DIR {
            continue;
        }
        let vrel = format!("{rel}/{name}");
        // symlink_metadata: a symlink planted on the disk is never followed.
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            walk(&e.path(), &vrel, out)?;
        } else if meta.is_file() {
            match VPath::parse_absolute(&vrel) {
                Ok(path) => out.push(RemoteFile {
                    path,
                    size: meta.len(),
                    mtime: mtime_of(&meta),
                    // A version whose size no longer matches was kept with
                    // a file changed behind our back: not that version.
                    version: read_version(&e.path())?.filter(|v| v.size == meta.len()),
                }),
                Err(_) => tracing::warn!(path = %vrel, "skipping a file with an unusable name"),
            }
        }
    }
    Ok(())
}

fn crc_of_file(path: &Path) -> io::Result<u32> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
    }
}

/// Runs blocking file-system work off the async workers. Only `DiskStorage`
/// (the real-disk side of the storage seam) uses it; the simulator's slaves
/// use `MemStorage` and never reach this, so determinism is unaffected.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f) // seam-ok: DiskStorage is the real disk; the simulator uses MemStorage
        .await
        .map_err(io::Error::other)?
}

#[async_trait]
impl Storage for DiskStorage {
    async fn list(&self) -> io::Result<Vec<RemoteFile>> {
        let root = self.root.clone();
        blocking(move || {
            let mut out = Vec::new();
            walk(&root, "", &mut out)?;
            Ok(out)
        })
        .await
    }

    async fn free_space(&self) -> io::Result<u64> {
        let root = self.root.clone();
        blocking(move || {
            let s = nix::sys::statvfs::statvfs(&root).map_err(io::Error::from)?;
            Ok(s.blocks_available() as u64 * s.fragment_size() as u64)
        })
        .await
    }

    async fn send(
        &self,
        path: &VPath,
        offset: u64,
        version: Option<&FileVersion>,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        self.send_at(self.open_read(path), offset, version, out, idle)
            .await
    }

    async fn send_upload(
        &self,
        up: &PendingUpload,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        let Some(name) = &up.temp else {
            return Err(StorageError::NotFound);
        };
        let file = std::fs::File::open(self.temp_path(name));
        self.send_at(file, 0, None, out, idle).await
    }

    async fn receive(
        &self,
        path: &VPath,
        offset: Option<u64>,
        base: Option<&FileVersion>,
        _xfer: u64,
        input: &mut BoxStream,
        idle: Duration,
    ) -> Result<PendingUpload, StorageError> {
        // Every upload goes to a temporary file, APPE and REST+STOR too
        // (copy-on-write): the committed file stays whole until the new
        // version is renamed over it, so a crash mid-APPE changes nothing.
        // `std::fs::copy` uses copy_file_range(2): an in-kernel copy, a
        // reflink on filesystems that share extents (btrfs, xfs).
        let name = temp_name();
        tokio::fs::create_dir_all(self.root.join(TEMP_DIR))
            .await
            .map_err(StorageError::Disk)?;
        let target = self.temp_path(&name);
        let guard = TempFile::new(target.clone());
        let temp = Some(name);
        let (file, direct, at) = match offset {
            None => {
                let (t, held) = (target.clone(), guard.share());
                let (file, direct) = blocking(move || {
                    let created = sink::create_new(&t);
                    drop(held);
                    created
                })
                .await
                .map_err(StorageError::Disk)?;
                (file, direct, 0)
            }
            Some(off) => {
                let (src, dst) = (self.real(path).map_err(disk)?, target.clone());
                let base = base.copied();
                let held = guard.share();
                let (file, at) = blocking(move || {
                    let _held = held;
                    let mut out = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&dst)?;
                    let Some(base) = base else {
                        // Nothing recorded under the name: APPE creates the
                        // file (RFC 959), whatever a stale copy on this disk
                        // still holds; REST+STOR needs a file.
                        return if off == APPEND || off == 0 {
                            Ok(Ok((out, 0)))
                        } else {
                            Ok(Err(StorageError::NotFound))
                        };
                    };
                    // The copy opened is the one checked and copied.
                    let mut from = std::fs::File::open(&src)?;
                    let found = read_version_fd(&from)?;
                    if !is_version(found.as_ref(), &base) || from.metadata()?.len() != base.size {
                        return Ok(Err(StorageError::NotCurrent));
                    }
                    std::io::copy(&mut from, &mut out)?;
                    let at = if off == APPEND { base.size } else { off };
                    out.set_len(at)?;
                    Ok(Ok((out, at)))
                })
                .await
                .map_err(disk)??;
                (file, false, at)
            }
        };
        let (bytes, crc) = sink::receive(file, direct, at, input, idle).await?;
        let (size, crc32) = if offset.is_none() {
            (bytes, crc)
        } else {
            let t = target.clone();
            let size = tokio::fs::metadata(&target)
                .await
                .map_err(StorageError::Disk)?
                .len();
            (
                size,
                blocking(move || crc_of_file(&t))
                    .await
                    .map_err(StorageError::Disk)?,
            )
        };
        guard.keep();
        Ok(PendingUpload {
            path: path.clone(),
            temp,
            bytes,
            size,
            crc32,
        })
    }

    async fn commit(
        &self,
        up: &PendingUpload,
        version: &FileVersion,
    ) -> Result<(u64, i64), StorageError> {
        let dest = self.real(&up.path).map_err(disk)?;
        if let Some(name) = &up.temp {
            let temp = self.temp_path(name);
            // The version goes with the file: the rename makes both visible
            // at once.
            write_version(&temp, version).map_err(StorageError::Disk)?;
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(StorageError::Disk)?;
            }
            tokio::fs::rename(&temp, &dest)
                .await
                .map_err(StorageError::Disk)?;
            if let Some(parent) = dest.parent().map(Path::to_path_buf) {
                // Make the rename itself durable.
                let _ = blocking(move || std::fs::File::open(parent)?.sync_all()).await;
            }
        }
        let meta = tokio::fs::metadata(&dest).await.map_err(disk)?;
        Ok((meta.len(), mtime_of(&meta)))
    }

    async fn discard(&self, up: &PendingUpload) {
        if let Some(name) = &up.temp {
            let _ = tokio::fs::remove_file(self.temp_path(name)).await;
        }
    }

    async fn cleanup_one(&self, _xfer: u64) {
        // Nothing to do: a cancelled `receive` removed its file on drop.
    }

    async fn version_of(
        &self,
        path: &VPath,
    ) -> io::Result<Option<(u64, i64, Option<FileVersion>)>> {
        let real = self.real(path)?;
        match std::fs::symlink_metadata(&real) {
            Ok(m) if m.is_file() => Ok(Some((
                m.len(),
                mtime_of(&m),
                read_version(&real)?.filter(|v| v.size == m.len()),
            ))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn checksum(
        &self,
        path: &VPath,
        rate: u64,
    ) -> io::Result<Option<(Option<FileVersion>, u32)>> {
        let real = self.real(path)?;
        let file = match std::fs::File::open(&real) {
            Ok(f) if f.metadata()?.is_file() => f,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let version = read_kept_version_fd(&file)?;
        let crc = super::scrub::paced_crc(tokio::fs::File::from_std(file), rate).await?;
        Ok(Some((version, crc)))
    }

    async fn apply(&self, op: &FileOp) -> io::Result<OpOutcome> {
        let ignore_missing = |r: io::Result<()>| match r {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        };
        match op {
            FileOp::Delete { path } => {
                ignore_missing(tokio::fs::remove_file(self.real(path)?).await)?
            }
            FileOp::Rename { from, to } => {
                let src = self.real(from)?;
                let moved = async {
                    let dest = self.real(to)?;
                    if let Some(parent) = dest.parent() {
                        tokio::fs::create_dir_all(parent).await?;
                    }
                    tokio::fs::rename(&src, &dest).await?;
                    unmark_kept(&dest);
                    io::Result::Ok(())
                }
                .await;
                match moved {
                    Err(e) if std::fs::symlink_metadata(&src).is_ok() => {
                        // The copy stays at the old name: never removed as
                        // stale while it is there (see `KEEP_XATTR`).
                        if let Err(m) = mark_kept(&src, to.as_str()) {
                            tracing::warn!(path = %from, error = %m, "could not mark a copy kept");
                        }
                        return Err(e);
                    }
                    other => ignore_missing(other)?,
                }
            }
            FileOp::RemoveDir { path } => {
                // Only empty directories; a slave may hold files the
                // master's directory did not list yet.
                let _ = tokio::fs::remove_dir(self.real(path)?).await;
            }
            FileOp::DropStale {
                path,
                version,
                size,
            } => {
                if let Some((found_size, _, found)) = self.version_of(path).await? {
                    if self.kept(path)? {
                        return Ok(OpOutcome::Failed(format!(
                            "{path} is kept: a rename of it failed here; move it by hand"
                        )));
                    }
                    if is_that_copy(found.as_ref(), found_size, version.as_ref(), *size) {
                        ignore_missing(tokio::fs::remove_file(self.real(path)?).await)?;
                    }
                }
            }
            FileOp::Stamp {
                path,
                version,
                mtime,
            } => match self.version_of(path).await? {
                Some((size, m, _)) if size == version.size && m == *mtime => {
                    write_version(&self.real(path)?, version)?;
                }
                _ => {
                    return Ok(OpOutcome::Failed(format!(
                        "{path} changed since it was listed; not stamped"
                    )))
                }
            },
            FileOp::Commit { path, .. } => {
                return Ok(OpOutcome::Failed(format!(
                    "commit of {path} outside the waiting room"
                )))
            }
        }
        Ok(OpOutcome::Done)
    }

    async fn cleanup_temp(&self) -> io::Result<u64> {
        let dir = self.root.join(TEMP_DIR);
        blocking(move || {
            let mut n = 0;
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
                Err(e) => return Err(e),
            };
            for e in rd.flatten() {
                if std::fs::remove_file(e.path()).is_ok() {
                    n += 1;
                }
            }
            Ok(n)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file truncated while it is sent (by hand, behind the slave's
    /// back) fails the transfer instead of ending it as complete, on the
    /// copy path (an in-memory stream) and the `sendfile(2)` path (TCP).
    #[tokio::test]
    async fn a_file_truncated_while_it_is_sent_fails_the_transfer() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(DiskStorage::new(dir.path()).unwrap());
        let path = VPath::parse_absolute("/big.bin").unwrap();
        let len: u64 = 64 << 20;
        for tcp in [false, true] {
            let file = std::fs::File::create(dir.path().join("big.bin")).unwrap();
            file.set_len(len).unwrap();
            let (mut server, mut client): (BoxStream, BoxStream) = if tcp {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let c = tokio::net::TcpStream::connect(l.local_addr().unwrap())
                    .await
                    .unwrap();
                (Box::new(l.accept().await.unwrap().0), Box::new(c))
            } else {
                let at = "127.0.0.1:1".parse().unwrap();
                crate::env::pipe(at, at)
            };
            let sender = s.clone();
            let p = path.clone();
            let send = tokio::spawn(async move {
                sender
                    .send(&p, 0, None, &mut server, Duration::from_secs(10))
                    .await
            });
            // The first bytes arrive; the sender waits for room.
            let mut buf = vec![0u8; 64 << 10];
            client.read_exact(&mut buf).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
            file.set_len(1000).unwrap();
            let mut got = buf.len() as u64;
            loop {
                match client.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n as u64,
                }
            }
            assert!(got < len, "tcp {tcp}: {got} bytes");
            match send.await.unwrap() {
                Err(StorageError::Disk(e)) => {
                    assert!(e.to_string().contains("shrank"), "tcp {tcp}: {e}")
                }
                other => panic!("tcp {tcp}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn list_skips_temp_and_symlinks_and_apply_ops() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::new(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f.bin"), b"hello").unwrap();
        std::fs::create_dir_all(dir.path().join(TEMP_DIR)).unwrap();
        std::fs::write(dir.path().join(TEMP_DIR).join("9"), b"partial").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("a/evil")).unwrap();
        let files = s.list().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path.as_str(), "/a/b/f.bin");
        assert_eq!(files[0].size, 5);
        assert_eq!(s.cleanup_temp().await.unwrap(), 1);
        let from = VPath::parse_absolute("/a/b/f.bin").unwrap();
        let to = VPath::parse_absolute("/c/g.bin").unwrap();
        assert_eq!(
            s.apply(&FileOp::Rename {
                from,
                to: to.clone(),
            })
            .await
            .unwrap(),
            OpOutcome::Done
        );
        assert!(dir.path().join("c/g.bin").exists());
        // A rename onto an existing file replaces it, as rename(2) does.
        std::fs::write(dir.path().join("c/new.part"), b"newer").unwrap();
        s.apply(&FileOp::Rename {
            from: VPath::parse_absolute("/c/new.part").unwrap(),
            to: to.clone(),
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read(dir.path().join("c/g.bin")).unwrap(), b"newer");
        assert!(!dir.path().join("c/new.part").exists());
        s.apply(&FileOp::Delete { path: to.clone() }).await.unwrap();
        s.apply(&FileOp::Delete { path: to }).await.unwrap();
        assert!(s.list().await.unwrap().is_empty());
        assert!(s.free_space().await.unwrap() > 0);
    }

    #[tokio::test]
    async fn a_copy_a_rename_could_not_move_is_never_dropped_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let s = DiskStorage::new(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("d/e")).unwrap();
        std::fs::write(dir.path().join("d/e/f.bin"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("x")).unwrap();
        let p = |s: &str| VPath::parse_absolute(s).unwrap();
        let drop_stale = |path: &str| FileOp::DropStale {
            path: p(path),
            version: None,
            size: 5,
        };
        // Into the planted link: refused, the copy stays, marked kept.
        for (from, to) in [("/d/e/f.bin", "/x/f.bin"), ("/d", "/x/d")] {
            let rename = FileOp::Rename {
                from: p(from),
                to: p(to),
            };
            assert!(s.apply(&rename).await.is_err());
            // What a master that forgot the rename asks: refused.
            let o = s.apply(&drop_stale("/d/e/f.bin")).await.unwrap();
            assert!(
                matches!(o, OpOutcome::Failed(ref why) if why.contains("kept")),
                "{o:?}"
            );
            assert_eq!(
                std::fs::read(dir.path().join("d/e/f.bin")).unwrap(),
                b"hello"
            );
        }
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
        // The link is gone: the rename works and the copy is an ordinary one.
        std::fs::remove_file(dir.path().join("x")).unwrap();
        let rename = FileOp::Rename {
            from: p("/d"),
            to: p("/x"),
        };
        assert_eq!(s.apply(&rename).await.unwrap(), OpOutcome::Done);
        let o = s.apply(&drop_stale("/x/e/f.bin")).await.unwrap();
        assert!(
            matches!(o, OpOutcome::Failed(_)),
            "the file's own mark: {o:?}"
        );
        let rename = FileOp::Rename {
            from: p("/x/e/f.bin"),
            to: p("/x/f.bin"),
        };
        assert_eq!(s.apply(&rename).await.unwrap(), OpOutcome::Done);
        assert_eq!(
            s.apply(&drop_stale("/x/f.bin")).await.unwrap(),
            OpOutcome::Done
        );
        assert!(!dir.path().join("x/f.bin").exists());
    }

    #[tokio::test]
    async fn a_download_never_follows_a_symlink() {
        // With openat2, and with the lstat checks kernels without it get.
        for fallback in [false, true] {
            a_download_never_follows_a_symlink_with(fallback).await;
        }
    }

    async fn a_download_never_follows_a_symlink_with(fallback: bool) {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        let s = DiskStorage::new(dir.path()).unwrap();
        s.no_openat2
            .store(fallback, std::sync::atomic::Ordering::Relaxed);
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/f.bin"), b"hello").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("a/evil"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("linked")).unwrap();
        let idle = Duration::from_secs(5);
        for path in ["/a/evil", "/linked/secret"] {
            let (mut client, mut server) = tcp_pair().await;
            let path = VPath::parse_absolute(path).unwrap();
            let r = s.send(&path, 0, None, &mut server, idle).await;
            assert!(
                matches!(&r, Err(StorageError::Disk(e)) if e.kind() == io::ErrorKind::PermissionDenied),
                "{path}: {r:?}"
            );
            drop(server);
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            assert!(got.is_empty(), "{path}: sent {got:?}");
        }
        let (mut client, mut server) = tcp_pair().await;
        let path = VPath::parse_absolute("/a/f.bin").unwrap();
        assert_eq!(s.send(&path, 0, None, &mut server, idle).await.unwrap(), 5);
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        let missing = VPath::parse_absolute("/a/none").unwrap();
        let (_client, mut server) = tcp_pair().await;
        let r = s.send(&missing, 0, None, &mut server, idle).await;
        assert!(matches!(r, Err(StorageError::NotFound)), "{r:?}");
    }

    const V: FileVersion = FileVersion {
        store: 1,
        gen: 1,
        size: 5,
        crc32: None,
    };

    async fn tcp_pair() -> (tokio::net::TcpStream, BoxStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = l.accept().await.unwrap();
        (client, Box::new(server))
    }

    fn temp_names(root: &Path) -> Vec<String> {
        std::fs::read_dir(root.join(TEMP_DIR))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn checksum_reads_the_copy_and_its_version() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::new(dir.path()).unwrap();
        let path = VPath::parse_absolute("/f.bin").unwrap();
        let file = dir.path().join("f.bin");
        std::fs::write(&file, b"hello world").unwrap();
        let v = FileVersion {
            store: 1,
            gen: 3,
            size: 11,
            crc32: Some(crc32fast::hash(b"hello world")),
        };
        write_version(&file, &v).unwrap();
        assert_eq!(
            s.checksum(&path, 0).await.unwrap(),
            Some((Some(v), crc32fast::hash(b"hello world")))
        );
        // Bit rot: the bytes change in place, the version stays.
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        f.seek(std::io::SeekFrom::Start(4)).unwrap();
        f.write_all(b"0").unwrap();
        drop(f);
        let (found, crc) = s.checksum(&path, 1 << 20).await.unwrap().unwrap();
        assert_eq!(found, Some(v));
        assert_eq!(crc, crc32fast::hash(b"hell0 world"));
        let missing = VPath::parse_absolute("/nope").unwrap();
        assert_eq!(s.checksum(&missing, 0).await.unwrap(), None);
    }

    #[tokio::test]
    async fn temporary_names_are_random_and_never_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let s = DiskStorage::new(dir.path()).unwrap();
        let path = VPath::parse_absolute("/f.bin").unwrap();
        let idle = Duration::from_secs(5);

        // A cancelled upload (the transfer's future dropped mid-way).
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(b"partial").await.unwrap();
        let cancelled = tokio::time::timeout(
            Duration::from_millis(200),
            s.receive(&path, None, None, 1, &mut server, idle),
        )
        .await;
        assert!(cancelled.is_err(), "the upload should still be running");
        assert!(
            temp_names(dir.path()).is_empty(),
            "a cancelled upload left its file"
        );

        // An upload that fails before its first byte (REST+STOR into a
        // missing file).
        let (_client, mut server) = tcp_pair().await;
        let r = s.receive(&path, Some(3), None, 2, &mut server, idle).await;
        assert!(matches!(r, Err(StorageError::NotFound)), "{r:?}");
        assert!(temp_names(dir.path()).is_empty());

        // A completed one: 128 random bits, not the transfer id.
        let (mut client, mut server) = tcp_pair().await;
        client.write_all(b"whole").await.unwrap();
        drop(client);
        let up = s
            .receive(&path, None, None, 3, &mut server, idle)
            .await
            .unwrap();
        let name = up.temp.clone().unwrap();
        assert_eq!(name.len(), 32, "{name}");
        assert!(name.parse::<u64>().is_err());
        assert_eq!(temp_names(dir.path()), vec![name]);
        s.commit(&up, &V).await.unwrap();
        assert!(temp_names(dir.path()).is_empty());
        assert_eq!(std::fs::read(dir.path().join("f.bin")).unwrap(), b"whole");
    }
}

//! Where an upload's bytes go on the real disk: two aligned 1 MiB buffers
//! in a pipeline. The data connection fills one while a blocking-pool
//! thread writes the other (and folds it into the CRC-32), so the network
//! and the disk work at the same time and the final fsync has little left
//! to do.
//!
//! A fresh upload (STOR, STOU, a sync copy) is written with `O_DIRECT`: the
//! bytes go from the buffer to the disk without a second copy into the page
//! cache and without dirty pages for the kernel to flush later. The last
//! partial block is written padded and the file cut back to its size
//! (`ftruncate`) before the one `fsync`, which stays the durability point.
//! Where the file system refuses `O_DIRECT` (tmpfs before Linux 6.6, some network file
//! systems) or a write into the middle of a file (REST+STOR, APPE), the
//! same pipeline writes through the page cache and starts writeback of each
//! chunk as it lands (`sync_file_range`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::storage::{on_data, StorageError};
use crate::env::BoxStream;

/// Bytes per buffer: one disk write, one hop to the blocking pool.
const CHUNK: usize = 1 << 20;
/// Alignment `O_DIRECT` asks of buffers, lengths and offsets (the largest
/// logical block size in common use).
const ALIGN: usize = 4096;

/// One buffer of [`CHUNK`] bytes starting at an [`ALIGN`]ed address inside
/// a plain `Vec` (the heap block never moves, so the alignment holds).
struct Chunk {
    mem: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new() -> Chunk {
        let mem = vec![0u8; CHUNK + ALIGN];
        let start = mem.as_ptr().align_offset(ALIGN);
        Chunk { mem, start, len: 0 }
    }

    fn space(&mut self) -> &mut [u8] {
        &mut self.mem[self.start + self.len..self.start + CHUNK]
    }

    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.start + self.len]
    }

    fn is_full(&self) -> bool {
        self.len == CHUNK
    }
}

/// Opens a new temporary file for a fresh upload: `O_DIRECT` where the
/// file system takes it. Returns the file and whether it is direct.
pub(super) fn create_new(path: &Path) -> io::Result<(File, bool)> {
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path);
    match direct {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => {
            // The file system refused the flag: plain writes.
            let f = std::fs::OpenOptions::new().write(true).open(path);
            match f {
                Ok(f) => Ok((f, false)),
                // Some file systems refuse before creating the file.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(path)?;
                    Ok((f, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// The disk side of the pipeline, owned by whichever thread writes next.
struct Writer {
    file: Arc<File>,
    direct: bool,
    hasher: crc32fast::Hasher,
}

impl Writer {
    /// Writes `chunk` at `at` and folds it into the CRC; hands the buffer
    /// back for reuse.
    fn write(mut self, at: u64, mut chunk: Chunk) -> io::Result<(Writer, Chunk)> {
        self.hasher.update(chunk.data());
        self.write_at(chunk.data(), at)?;
        if !self.direct {
            start_writeback(&self.file, at, chunk.len as u64);
        }
        chunk.len = 0;
        Ok((self, chunk))
    }

    /// Writes the last partial buffer, cuts the file to `end`, and syncs.
    fn finish(mut self, at: u64, mut chunk: Chunk) -> io::Result<u32> {
        self.hasher.update(chunk.data());
        if chunk.len > 0 {
            if self.direct {
                let padded = chunk.len.next_multiple_of(ALIGN);
                let (s, l) = (chunk.start, chunk.len);
                chunk.mem[s + l..s + padded].fill(0);
                self.write_at(&chunk.mem[s..s + padded], at)?;
                if padded != l {
                    self.file.set_len(at + l as u64)?;
                }
            } else {
                self.write_at(chunk.data(), at)?;
            }
        }
        // One sync at the end: the bytes are on disk before the master is
        // told the upload is complete.
        self.file.sync_all()?;
        Ok(self.hasher.finalize())
    }

    fn write_at(&mut self, buf: &[u8], at: u64) -> io::Result<()> {
        match self.file.write_all_at(buf, at) {
            Err(e) if self.direct && e.raw_os_error() == Some(nix::libc::EINVAL) => {
                // The file system took the flag at open but refuses the
                // write: go on through the page cache.
                self.direct = false;
                clear_direct(&self.file)?;
                self.file.write_all_at(buf, at)
            }
            r => r,
        }
    }
}

fn clear_direct(file: &File) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) - OFlag::O_DIRECT;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(())
}

/// Starts writeback of a just-written range (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`: it queues the I/O and returns). A failure only
/// means less overlap.
fn start_writeback(file: &File, offset: u64, len: u64) {
    // SAFETY: the descriptor belongs to `file`, which outlives this call;
    // the call reads no memory of ours.
    let _ = unsafe {
        nix::libc::sync_file_range(
            file.as_raw_fd(),
            offset as nix::libc::off64_t,
            len as nix::libc::off64_t,
            nix::libc::SYNC_FILE_RANGE_WRITE,
        )
    };
}

fn joined<T>(r: Result<io::Result<T>, tokio::task::JoinError>) -> Result<T, StorageError> {
    r.map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(StorageError::Disk)
}

/// Receives `input` into `file` from offset `at` until EOF, synced when it
/// returns. Returns the bytes received and their CRC-32. `direct` says the
/// file was opened with `O_DIRECT` (then `at` must be 0).
pub(super) async fn receive(
    file: File,
    direct: bool,
    at: u64,
    input: &mut BoxStream,
    idle: Duration,
) -> Result<(u64, u32), StorageError> {
    debug_assert!(!direct || at == 0);
    let mut idle_writer = Some(Writer {
        file: Arc::new(file),
        direct,
        hasher: crc32fast::Hasher::new(),
    });
    let mut inflight: Option<JoinHandle<io::Result<(Writer, Chunk)>>> = None;
    let mut spare: Option<Chunk> = None;
    let mut cur = Chunk::new();
    let (mut pos, mut bytes) = (at, 0u64);
    loop {
        let n = on_data(idle, input.read(cur.space())).await?;
        if n == 0 {
            break;
        }
        cur.len += n;
        bytes += n as u64;
        if cur.is_full() {
            let writer = match inflight.take() {
                Some(h) => {
                    let (w, c) = joined(h.await)?;
                    spare = Some(c);
                    w
                }
                None => idle_writer.take().expect("a writer is idle or in flight"),
            };
            let full = std::mem::replace(&mut cur, spare.take().unwrap_or_else(Chunk::new));
            let at = pos;
            pos += CHUNK as u64;
            let write = move || writer.write(at, full);
            inflight = Some(tokio::task::spawn_blocking(write)); // seam-ok: the real disk only (DiskStorage)
        }
    }
    let writer = match inflight.take() {
        Some(h) => joined(h.await)?.0,
        None => idle_writer.take().expect("a writer is idle or in flight"),
    };
    let finish = move || writer.finish(pos, cur);
    let crc = joined(tokio::task::spawn_blocking(finish).await)?; // seam-ok: the real disk only (DiskStorage)
    Ok((bytes, crc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn pair() -> (BoxStream, BoxStream) {
        let at = "127.0.0.1:1".parse().unwrap();
        crate::env::pipe(at, at)
    }

    async fn through(size: usize, dir: &Path, direct_wanted: bool) -> (Vec<u8>, u64, u32) {
        let data: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
        let path = dir.join(format!("f{size}"));
        let (file, direct) = if direct_wanted {
            create_new(&path).unwrap()
        } else {
            (File::create(&path).unwrap(), false)
        };
        let (mut a, mut input) = pair();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            // Odd write sizes: buffers fill across many reads.
            for piece in sent.chunks(10_007) {
                a.write_all(piece).await.unwrap();
            }
            a.shutdown().await.unwrap();
        });
        let (bytes, crc) = receive(file, direct, 0, &mut input, Duration::from_secs(10))
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(crc, crc32fast::hash(&data));
        (std::fs::read(&path).unwrap(), bytes, crc)
    }

    #[tokio::test]
    async fn every_size_around_the_buffer_and_block_edges_arrives_whole() {
        let dir = tempfile::tempdir().unwrap();
        for size in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 5,
        ] {
            for direct in [true, false] {
                let (got, bytes, _) = through(size, dir.path(), direct).await;
                assert_eq!(bytes, size as u64, "size {size} direct {direct}");
                assert_eq!(got.len(), size, "size {size} direct {direct}");
                let want: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4096) as u8).collect();
                assert!(got == want, "size {size} direct {direct}: bytes differ");
                std::fs::remove_file(dir.path().join(format!("f{size}"))).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_resumed_upload_writes_after_the_kept_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r");
        std::fs::write(&path, b"kept-").unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let (mut a, mut input) = pair();
        tokio::spawn(async move {
            a.write_all(b"new").await.unwrap();
            a.shutdown().await.unwrap();
        });
        let (bytes, crc) = receive(file, false, 5, &mut input, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!((bytes, crc), (3, crc32fast::hash(b"new")));
        assert_eq!(std::fs::read(&path).unwrap(), b"kept-new");
    }
}

//! In-memory slave storage for the simulator and for tests.
//!
//! [`MemDisk`] is the "disk": a cheap handle to one shared file map. The
//! simulator keeps it outside the turmoil host of a slave, so when that host
//! crashes and restarts, the new [`MemStorage`] sees the files the old one
//! left, exactly like a real disk: completed files stay, and an upload that
//! was being written sits in the temporary area until the next start's
//! [`Storage::cleanup_temp`]. In-place writes (REST+STOR, APPE) land chunk by
//! chunk, so a crash in the middle leaves a partly written file, as a real
//! disk would.
//!
//! Nothing here sleeps, spawns or blocks: every operation is a short critical
//! section on a `std::sync::Mutex`, never held across an `.await`.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::storage::{is_that_copy, is_version};
use super::storage::{on_data, PendingUpload, Storage, StorageError};
use crate::env::{BoxStream, Clock};
use crate::link::{FileOp, FileVersion, OpOutcome, RemoteFile, APPEND};
use crate::proto::VPath;

/// Bytes moved per write or read on a data connection: small enough that a
/// crash or partition lands in the middle of a transfer of a few hundred KiB.
const CHUNK: usize = 16 * 1024;

/// One stored file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemFile {
    pub data: Arc<Vec<u8>>,
    pub mtime: i64,
    /// The version kept with the file (a real disk keeps it in an extended
    /// attribute); `None` for files placed behind the master's back.
    pub version: Option<FileVersion>,
}

/// Everything on one simulated disk.
#[derive(Debug, Default)]
pub struct DiskState {
    /// Complete, visible files.
    pub files: BTreeMap<VPath, MemFile>,
    /// Uploads being received, by transfer id (the `.dftpd-tmp/<xfer>` of
    /// [`super::storage::DiskStorage`]).
    pub temp: BTreeMap<String, Vec<u8>>,
    /// Total size of the disk; free space is this minus what is stored.
    pub capacity: u64,
}

impl DiskState {
    pub fn used(&self) -> u64 {
        let files: u64 = self.files.values().map(|f| f.data.len() as u64).sum();
        let temp: u64 = self.temp.values().map(|t| t.len() as u64).sum();
        files + temp
    }
}

/// A shared handle to one simulated disk; clones see the same files.
#[derive(Debug, Clone, Default)]
pub struct MemDisk(Arc<Mutex<DiskState>>);

impl MemDisk {
    pub fn new(capacity: u64) -> MemDisk {
        MemDisk(Arc::new(Mutex::new(DiskState {
            capacity,
            ..DiskState::default()
        })))
    }

    /// The disk's state, for inspection and for placing files before a run.
    pub fn lock(&self) -> MutexGuard<'_, DiskState> {
        // The state is consistent between statements; a panicking holder
        // leaves nothing half-done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Places a complete file (scenario setup, or a change "behind the
    /// master's back").
    pub fn put(&self, path: VPath, data: Vec<u8>, mtime: i64) {
        self.lock().files.insert(
            path,
            MemFile {
                data: Arc::new(data),
                mtime,
                version: None,
            },
        );
    }

    pub fn remove(&self, path: &VPath) -> bool {
        self.lock().files.remove(path).is_some()
    }

    /// Bit rot: flips one byte in the middle of `path`'s bytes, keeping
    /// its version (the scrub's case). False when there is no such file
    /// or it is empty.
    pub fn corrupt(&self, path: &VPath) -> bool {
        let mut d = self.lock();
        let Some(f) = d.files.get_mut(path) else {
            return false;
        };
        let mut data = f.data.as_ref().clone();
        let mid = data.len() / 2;
        let Some(b) = data.get_mut(mid) else {
            return false;
        };
        *b ^= 0x5a;
        f.data = Arc::new(data);
        true
    }

    /// The content of a complete file.
    pub fn get(&self, path: &VPath) -> Option<Arc<Vec<u8>>> {
        self.lock().files.get(path).map(|f| f.data.clone())
    }
}

/// Writes `data` from `offset` to `out` in chunks, then shuts it down.
async fn send_bytes(
    data: &[u8],
    offset: u64,
    out: &mut BoxStream,
    idle: Duration,
) -> Result<u64, StorageError> {
    let start = (offset.min(data.len() as u64)) as usize;
    let mut sent = 0u64;
    for chunk in data[start..].chunks(CHUNK) {
        on_data(idle, out.write_all(chunk)).await?;
        sent += chunk.len() as u64;
    }
    on_data(idle, out.shutdown()).await?;
    Ok(sent)
}

/// [`Storage`] over a [`MemDisk`].
pub struct MemStorage {
    disk: MemDisk,
    clock: Arc<dyn Clock>,
}

impl MemStorage {
    pub fn new(disk: MemDisk, clock: Arc<dyn Clock>) -> MemStorage {
        MemStorage { disk, clock }
    }

    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }
}

#[cfg(test)]
fn crc(data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(data);
    h.finalize()
}

/// Where the bytes of a running upload go.
#[async_trait]
impl Storage for MemStorage {
    async fn list(&self) -> io::Result<Vec<RemoteFile>> {
        Ok(self
            .disk
            .lock()
            .files
            .iter()
            .map(|(path, f)| RemoteFile {
                path: path.clone(),
                size: f.data.len() as u64,
                mtime: f.mtime,
                version: f.version.filter(|v| v.size == f.data.len() as u64),
            })
            .collect())
    }

    async fn free_space(&self) -> io::Result<u64> {
        let d = self.disk.lock();
        Ok(d.capacity.saturating_sub(d.used()))
    }

    async fn send(
        &self,
        path: &VPath,
        offset: u64,
        version: Option<&FileVersion>,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        let file = self
            .disk
            .lock()
            .files
            .get(path)
            .cloned()
            .ok_or(StorageError::NotFound)?;
        if let Some(wanted) = version {
            if !is_version(file.version.as_ref(), wanted) || file.data.len() as u64 != wanted.size {
                return Err(StorageError::NotCurrent);
            }
        }
        send_bytes(&file.data, offset, out, idle).await
    }

    async fn send_upload(
        &self,
        up: &PendingUpload,
        out: &mut BoxStream,
        idle: Duration,
    ) -> Result<u64, StorageError> {
        let data = up
            .temp
            .as_ref()
            .and_then(|name| self.disk.lock().temp.get(name).cloned())
            .ok_or(StorageError::NotFound)?;
        send_bytes(&data, 0, out, idle).await
    }

    async fn receive(
        &self,
        path: &VPath,
        offset: Option<u64>,
        base: Option<&FileVersion>,
        xfer: u64,
        input: &mut BoxStream,
        idle: Duration,
    ) -> Result<PendingUpload, StorageError> {
        // Every upload goes to a temporary copy, APPE and REST+STOR too
        // (copy-on-write): the file as committed stays whole until the
        // new version is renamed over it, so a crash mid-APPE changes
        // nothing.
        let name = xfer.to_string();
        let start = match (offset, base) {
            (None, _) => Vec::new(),
            // Nothing recorded under the name: APPE creates the file (RFC
            // 959), whatever a stale copy here holds; REST+STOR needs one.
            (Some(off), None) if off == APPEND || off == 0 => Vec::new(),
            (Some(_), None) => return Err(StorageError::NotFound),
            (Some(off), Some(base)) => {
                let d = self.disk.lock();
                let f = d.files.get(path).ok_or(StorageError::NotFound)?;
                if !is_version(f.version.as_ref(), base) || f.data.len() as u64 != base.size {
                    return Err(StorageError::NotCurrent);
                }
                let mut data = f.data.as_ref().clone();
                if off != APPEND {
                    data.truncate(off.min(data.len() as u64) as usize);
                    // REST past the end: the gap reads as zeros, as on disk.
                    data.resize(off as usize, 0);
                }
                data
            }
        };
        let mut whole = crc32fast::Hasher::new();
        whole.update(&start);
        self.disk.lock().temp.insert(name.clone(), start);
        let mut buf = vec![0u8; CHUNK];
        let mut bytes = 0u64;
        let result: Result<(), StorageError> = async {
            loop {
                let n = on_data(idle, input.read(&mut buf)).await?;
                if n == 0 {
                    return Ok(());
                }
                let chunk = &buf[..n];
                let mut d = self.disk.lock();
                if d.used() + n as u64 > d.capacity {
                    return Err(StorageError::Disk(io::Error::new(
                        io::ErrorKind::StorageFull,
                        "disk full",
                    )));
                }
                match d.temp.get_mut(&name) {
                    Some(t) => t.extend_from_slice(chunk),
                    None => {
                        return Err(StorageError::Disk(io::Error::other(
                            "temporary file vanished",
                        )))
                    }
                }
                drop(d);
                whole.update(chunk);
                bytes += n as u64;
            }
        }
        .await;
        if let Err(e) = result {
            self.disk.lock().temp.remove(&name);
            return Err(e);
        }
        let size = self
            .disk
            .lock()
            .temp
            .get(&name)
            .map_or(0, |t| t.len() as u64);
        let (temp, crc32) = (Some(name), whole.finalize());
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
        let now = self.clock.unix_now();
        let mut d = self.disk.lock();
        if let Some(name) = &up.temp {
            let data = d.temp.remove(name).ok_or_else(|| {
                StorageError::Disk(io::Error::new(
                    io::ErrorKind::NotFound,
                    "temporary file vanished",
                ))
            })?;
            d.files.insert(
                up.path.clone(),
                MemFile {
                    data: Arc::new(data),
                    mtime: now,
                    version: Some(*version),
                },
            );
        }
        let f = d.files.get(&up.path).ok_or(StorageError::NotFound)?;
        Ok((f.data.len() as u64, f.mtime))
    }

    async fn discard(&self, up: &PendingUpload) {
        if let Some(name) = &up.temp {
            self.disk.lock().temp.remove(name);
        }
    }

    async fn cleanup_one(&self, xfer: u64) {
        self.disk.lock().temp.remove(&xfer.to_string());
    }

    async fn version_of(
        &self,
        path: &VPath,
    ) -> io::Result<Option<(u64, i64, Option<FileVersion>)>> {
        Ok(self.disk.lock().files.get(path).map(|f| {
            let size = f.data.len() as u64;
            (size, f.mtime, f.version.filter(|v| v.size == size))
        }))
    }

    async fn checksum(
        &self,
        path: &VPath,
        rate: u64,
    ) -> io::Result<Option<(Option<FileVersion>, u32)>> {
        let Some((data, version)) = self
            .disk
            .lock()
            .files
            .get(path)
            .map(|f| (f.data.clone(), f.version))
        else {
            return Ok(None);
        };
        // As long as reading it at `rate` would take.
        if let Some(ms) = (data.len() as u64 * 1000).checked_div(rate) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        Ok(Some((version, crc32fast::hash(&data))))
    }

    async fn apply(&self, op: &FileOp) -> io::Result<OpOutcome> {
        let mut d = self.disk.lock();
        match op {
            FileOp::Delete { path } => {
                d.files.remove(path);
            }
            FileOp::Rename { from, to } => {
                // A directory rename moves every file below it.
                let moved: Vec<VPath> = d
                    .files
                    .keys()
                    .filter(|p| *p == from || p.starts_with(from))
                    .cloned()
                    .collect();
                for old in moved {
                    let new = match old.strip_prefix(from) {
                        Some(rest) if !rest.is_empty() => {
                            let mut p = to.clone();
                            for c in rest {
                                p = p.join(c).map_err(|e| {
                                    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
                                })?;
                            }
                            p
                        }
                        _ => to.clone(),
                    };
                    if let Some(f) = d.files.remove(&old) {
                        d.files.insert(new, f);
                    }
                }
            }
            // Directories are implicit in the file map.
            FileOp::RemoveDir { .. } => {}
            FileOp::DropStale {
                path,
                version,
                size,
            } => {
                let that = d.files.get(path).is_some_and(|f| {
                    let n = f.data.len() as u64;
                    is_that_copy(
                        f.version.filter(|v| v.size == n).as_ref(),
                        n,
                        version.as_ref(),
                        *size,
                    )
                });
                if that {
                    d.files.remove(path);
                }
            }
            FileOp::Stamp {
                path,
                version,
                mtime,
            } => match d.files.get_mut(path) {
                Some(f) if f.data.len() as u64 == version.size && f.mtime == *mtime => {
                    f.version = Some(*version);
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
        let mut d = self.disk.lock();
        let n = d.temp.len() as u64;
        d.temp.clear();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(30);
    const V: FileVersion = FileVersion {
        store: 1,
        gen: 1,
        size: 0,
        crc32: None,
    };
    use crate::env::FixedClock;

    fn p(s: &str) -> VPath {
        VPath::parse_absolute(s).unwrap()
    }

    fn storage(disk: &MemDisk) -> MemStorage {
        MemStorage::new(disk.clone(), Arc::new(FixedClock(1000.into())))
    }

    /// A connected pair of in-memory streams.
    struct Duplex(tokio::io::DuplexStream);

    impl tokio::io::AsyncRead for Duplex {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl tokio::io::AsyncWrite for Duplex {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl crate::env::NetStream for Duplex {
        fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
            Ok(([127, 0, 0, 1], 1).into())
        }
        fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
            Ok(([127, 0, 0, 1], 2).into())
        }
    }

    fn pair() -> (BoxStream, BoxStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        (Box::new(Duplex(a)), Box::new(Duplex(b)))
    }

    /// Version `gen` of a file of `size` bytes.
    fn ver(gen: u64, size: u64) -> FileVersion {
        FileVersion {
            store: 1,
            gen,
            size,
            crc32: None,
        }
    }

    async fn upload(s: &MemStorage, path: &str, offset: Option<u64>, data: &[u8]) -> PendingUpload {
        try_upload(s, path, offset, None, data).await.unwrap()
    }

    async fn try_upload(
        s: &MemStorage,
        path: &str,
        offset: Option<u64>,
        base: Option<FileVersion>,
        data: &[u8],
    ) -> Result<PendingUpload, StorageError> {
        let (mut client, mut server) = pair();
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let up = s
            .receive(&p(path), offset, base.as_ref(), 7, &mut server, IDLE)
            .await;
        let _ = writer.await;
        up
    }

    async fn download(s: &MemStorage, path: &str, offset: u64) -> Result<Vec<u8>, StorageError> {
        let (mut client, mut server) = pair();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let sent = s.send(&p(path), offset, None, &mut server, IDLE).await;
        drop(server);
        let got = reader.await.unwrap();
        sent.map(|n| {
            assert_eq!(n as usize, got.len());
            got
        })
    }

    #[tokio::test]
    async fn upload_is_invisible_until_commit_and_survives_a_new_storage() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
        let up = upload(&s, "/d/a.bin", None, &data).await;
        assert_eq!(up.bytes, 50_000);
        assert_eq!(up.crc32, crc(&data));
        assert!(s.list().await.unwrap().is_empty(), "listed before commit");
        assert_eq!(s.free_space().await.unwrap(), (1 << 20) - 50_000);
        assert_eq!(s.commit(&up, &V).await.unwrap(), (50_000, 1000));
        // A "restarted" slave sees the same disk.
        let again = storage(&disk);
        let files = again.list().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path, p("/d/a.bin"));
        assert_eq!(download(&again, "/d/a.bin", 0).await.unwrap(), data);
        assert_eq!(
            download(&again, "/d/a.bin", 49_990).await.unwrap(),
            &data[49_990..]
        );
        assert!(matches!(
            download(&again, "/nope", 0).await,
            Err(StorageError::NotFound)
        ));
    }

    #[tokio::test]
    async fn cleanup_removes_partial_uploads_and_discard_drops_one() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        disk.lock().temp.insert("3".into(), vec![1, 2, 3]);
        disk.lock().temp.insert("4".into(), vec![1]);
        s.cleanup_one(4).await;
        assert_eq!(s.cleanup_temp().await.unwrap(), 1);
        assert!(disk.lock().temp.is_empty());
        let up = upload(&s, "/x", None, b"hello").await;
        s.discard(&up).await;
        assert!(disk.lock().temp.is_empty());
        assert!(disk.lock().files.is_empty());
    }

    #[tokio::test]
    async fn append_and_rest_are_copy_on_write() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        disk.put(p("/f"), b"hello".to_vec(), 5);
        disk.lock().files.get_mut(&p("/f")).unwrap().version = Some(ver(1, 5));
        let up = try_upload(&s, "/f", Some(APPEND), Some(ver(1, 5)), b" world")
            .await
            .unwrap();
        assert!(up.temp.is_some());
        assert_eq!(up.size, 11);
        assert_eq!(up.crc32, crc(b"hello world"));
        // Not committed: the file is untouched.
        assert_eq!(&*disk.get(&p("/f")).unwrap(), b"hello");
        assert_eq!(s.commit(&up, &ver(2, 11)).await.unwrap().0, 11);
        assert_eq!(&*disk.get(&p("/f")).unwrap(), b"hello world");
        let up = try_upload(&s, "/f", Some(2), Some(ver(2, 11)), b"LP")
            .await
            .unwrap();
        assert_eq!(up.size, 4);
        s.discard(&up).await;
        assert_eq!(&*disk.get(&p("/f")).unwrap(), b"hello world");
        let up = try_upload(&s, "/f", Some(2), Some(ver(2, 11)), b"LP")
            .await
            .unwrap();
        assert_eq!(s.commit(&up, &ver(3, 4)).await.unwrap().0, 4);
        assert_eq!(&*disk.get(&p("/f")).unwrap(), b"heLP");
        assert!(disk.lock().temp.is_empty());
    }

    /// APPE and REST+STOR build on the version the master names, never on
    /// another copy under the name (one whose commit has not arrived yet,
    /// one the master deleted): they fail `NotCurrent` and leave nothing.
    #[tokio::test]
    async fn append_and_rest_refuse_another_base() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        disk.put(p("/f"), b"old".to_vec(), 5);
        disk.lock().files.get_mut(&p("/f")).unwrap().version = Some(ver(1, 3));
        for offset in [Some(APPEND), Some(1)] {
            let r = try_upload(&s, "/f", offset, Some(ver(2, 3)), b"new").await;
            assert!(matches!(r, Err(StorageError::NotCurrent)), "{r:?}");
            // Same generation, another size: not that copy either.
            let r = try_upload(&s, "/f", offset, Some(ver(1, 4)), b"new").await;
            assert!(matches!(r, Err(StorageError::NotCurrent)), "{r:?}");
        }
        assert!(disk.lock().temp.is_empty());
        // Nothing recorded under the name: APPE starts from nothing (the
        // stale bytes here are not resurrected), REST+STOR is refused.
        let up = try_upload(&s, "/f", Some(APPEND), None, b"new")
            .await
            .unwrap();
        assert_eq!((up.size, up.crc32), (3, crc(b"new")));
        s.discard(&up).await;
        let r = try_upload(&s, "/f", Some(2), None, b"new").await;
        assert!(matches!(r, Err(StorageError::NotFound)), "{r:?}");
        assert_eq!(&*disk.get(&p("/f")).unwrap(), b"old");
    }

    /// The same copy-on-write rule on the real disk storage (its tests
    /// would need this module's in-memory stream pair).
    #[tokio::test]
    async fn disk_append_is_copy_on_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = crate::slave::storage::DiskStorage::new(dir.path()).unwrap();
        let receive = |offset, base: Option<FileVersion>, data: &'static [u8]| {
            let s = &s;
            async move {
                let (mut client, mut server) = pair();
                let writer = tokio::spawn(async move {
                    let _ = client.write_all(data).await;
                    let _ = client.shutdown().await;
                });
                let up = s
                    .receive(&p("/f"), offset, base.as_ref(), 9, &mut server, IDLE)
                    .await;
                let _ = writer.await;
                up
            }
        };
        let up = receive(None, None, b"hello").await.unwrap();
        s.commit(&up, &ver(1, 5)).await.unwrap();
        let up = receive(Some(APPEND), Some(ver(1, 5)), b" world")
            .await
            .unwrap();
        assert_eq!((up.size, up.crc32), (11, crc(b"hello world")));
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        s.discard(&up).await;
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello");
        let up = receive(Some(APPEND), Some(ver(1, 5)), b" world")
            .await
            .unwrap();
        s.commit(&up, &ver(2, 11)).await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world");
        // Another base than the copy here: refused, nothing left behind.
        for (offset, base) in [(Some(APPEND), ver(1, 5)), (Some(2), ver(3, 11))] {
            let r = receive(offset, Some(base), b"LP").await;
            assert!(matches!(r, Err(StorageError::NotCurrent)), "{r:?}");
        }
        assert_eq!(s.cleanup_temp().await.unwrap(), 0);
        let up = receive(Some(2), Some(ver(2, 11)), b"LP").await.unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"hello world");
        assert_eq!(s.commit(&up, &ver(3, 4)).await.unwrap().0, 4);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"heLP");
        // Nothing recorded: APPE starts empty, whatever the disk holds.
        let up = receive(Some(APPEND), None, b"new").await.unwrap();
        assert_eq!((up.size, up.crc32), (3, crc(b"new")));
        s.discard(&up).await;
        assert_eq!(s.cleanup_temp().await.unwrap(), 0);
    }

    /// Symlinks planted on a slave's disk never lead a transfer or an
    /// operation outside the storage root.
    #[tokio::test]
    async fn disk_storage_refuses_symlinks_in_paths() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"top secret").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("evil")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("s")).unwrap();
        // A planted temporary directory is replaced by a real one.
        std::os::unix::fs::symlink(
            outside.path(),
            dir.path().join(crate::slave::storage::TEMP_DIR),
        )
        .unwrap();
        let s = crate::slave::storage::DiskStorage::new(dir.path()).unwrap();
        let tmp = std::fs::symlink_metadata(dir.path().join(crate::slave::storage::TEMP_DIR));
        assert!(tmp.is_ok_and(|m| m.is_dir()), "a real directory of ours");
        for path in ["/evil/secret", "/s"] {
            let (mut client, mut server) = pair();
            let reader = tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = client.read_to_end(&mut got).await;
                got
            });
            let sent = s.send(&p(path), 0, None, &mut server, IDLE).await;
            drop(server);
            assert!(sent.is_err(), "{path} was served");
            assert!(reader.await.unwrap().is_empty());
        }
        // An upload through the symlinked directory is written to the
        // temporary directory, then refused at commit.
        let (mut client, mut server) = pair();
        let w = tokio::spawn(async move {
            client.write_all(b"x").await.unwrap();
            client.shutdown().await.unwrap();
        });
        let up = s
            .receive(&p("/evil/new"), None, None, 3, &mut server, IDLE)
            .await
            .unwrap();
        w.await.unwrap();
        assert!(s.commit(&up, &V).await.is_err());
        assert!(!outside.path().join("new").exists());
        for op in [
            FileOp::Delete {
                path: p("/evil/secret"),
            },
            FileOp::Rename {
                from: p("/evil/secret"),
                to: p("/stolen"),
            },
            FileOp::Rename {
                from: p("/s"),
                to: p("/evil/x"),
            },
        ] {
            assert!(s.apply(&op).await.is_err(), "{op:?}");
        }
        assert_eq!(
            std::fs::read(outside.path().join("secret")).unwrap(),
            b"top secret"
        );
        assert!(s.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn full_disk_refuses_and_leaves_nothing() {
        let disk = MemDisk::new(100);
        let s = storage(&disk);
        let (mut client, mut server) = pair();
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&[7u8; 500]).await;
            let _ = client.shutdown().await;
        });
        let r = s
            .receive(&p("/big"), None, None, 1, &mut server, IDLE)
            .await;
        assert!(matches!(r, Err(StorageError::Disk(_))), "{r:?}");
        drop(server);
        let _ = writer.await;
        assert_eq!(disk.lock().used(), 0);
    }

    #[tokio::test]
    async fn rename_moves_files_and_directories_delete_removes() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        disk.put(p("/a/1"), vec![1], 0);
        disk.put(p("/a/b/2"), vec![2], 0);
        disk.put(p("/ab"), vec![3], 0);
        s.apply(&FileOp::Rename {
            from: p("/a"),
            to: p("/z"),
        })
        .await
        .unwrap();
        let names: Vec<String> = s
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.path.to_string())
            .collect();
        assert_eq!(names, ["/ab", "/z/1", "/z/b/2"]);
        s.apply(&FileOp::Delete { path: p("/ab") }).await.unwrap();
        s.apply(&FileOp::Delete { path: p("/gone") }).await.unwrap();
        assert_eq!(s.list().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_rename_onto_a_file_replaces_it() {
        let disk = MemDisk::new(1 << 20);
        let s = storage(&disk);
        disk.put(p("/tmp.part"), vec![2, 2], 0);
        disk.put(p("/f"), vec![1], 0);
        s.apply(&FileOp::Rename {
            from: p("/tmp.part"),
            to: p("/f"),
        })
        .await
        .unwrap();
        let files = s.list().await.unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!((files[0].path.as_str(), files[0].size), ("/f", 2));
    }
}

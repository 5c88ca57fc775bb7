//! The production [`RecordSink`]: one writer thread creates and writes the
//! session files, so no session task waits on the file system.

use super::*;

/// Production sink: `DIR/session-<id>.scn` (`session-<id>.<n>.scn` when a
/// restarted master reuses an id). Sessions only append to a buffer in
/// memory; full buffers (and the rest at session end) go over a channel to
/// one writer thread that creates and writes the files, so no session
/// task ever waits on the file system.
pub struct DirSink {
    tx: std::sync::Mutex<std::sync::mpsc::Sender<Chunk>>,
}

/// Buffered bytes of one session; `last` closes its file.
struct Chunk {
    session: u64,
    bytes: Vec<u8>,
    last: bool,
}

/// Bytes handed to the writer thread at a time.
const CHUNK: usize = 16 << 10;

impl DirSink {
    pub fn create(dir: PathBuf) -> std::io::Result<DirSink> {
        std::fs::create_dir_all(&dir)?;
        let (tx, rx) = std::sync::mpsc::channel::<Chunk>();
        std::thread::Builder::new()
            .name("dftpd-record".into())
            .spawn(move || write_files(&dir, rx))?;
        Ok(DirSink {
            tx: std::sync::Mutex::new(tx),
        })
    }
}

/// The writer thread: one open file per recording session.
fn write_files(dir: &std::path::Path, rx: std::sync::mpsc::Receiver<Chunk>) {
    let mut open: std::collections::BTreeMap<u64, Option<std::fs::File>> = Default::default();
    while let Ok(c) = rx.recv() {
        let file = open
            .entry(c.session)
            .or_insert_with(|| create_file(dir, c.session));
        if let Some(f) = file {
            if let Err(e) = f.write_all(&c.bytes) {
                tracing::warn!(session = c.session, error = %e, "session recording: write failed");
                *file = None;
            }
        }
        if c.last {
            open.remove(&c.session);
        }
    }
}

fn create_file(dir: &std::path::Path, session: u64) -> Option<std::fs::File> {
    for n in 0..1000u32 {
        let name = if n == 0 {
            format!("session-{session}.scn")
        } else {
            format!("session-{session}.{n}.scn")
        };
        let path = dir.join(name);
        match std::fs::File::create_new(&path) {
            Ok(f) => return Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot record session");
                return None;
            }
        }
    }
    None
}

/// A session's end of [`DirSink`].
struct ChunkWriter {
    session: u64,
    buf: Vec<u8>,
    tx: std::sync::mpsc::Sender<Chunk>,
}

impl ChunkWriter {
    fn send(&mut self, last: bool) {
        let bytes = std::mem::take(&mut self.buf);
        let _ = self.tx.send(Chunk {
            session: self.session,
            bytes,
            last,
        });
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.send(false);
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.send(false);
        }
        Ok(())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        self.send(true);
    }
}

impl RecordSink for DirSink {
    fn open(&self, session: u64) -> Option<Box<dyn Write + Send>> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(Box::new(ChunkWriter {
            session,
            buf: Vec::with_capacity(1024),
            tx,
        }))
    }
}

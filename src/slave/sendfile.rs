//! Downloads on the real disk: `sendfile(2)` from a file to a TCP socket
//! under tokio's readiness API, and the byte count it reports when the data
//! connection fails part-way (a stream wrapper cannot count these bytes).

use std::io;
use std::time::Duration;

use super::storage::{on_data, StorageError};

/// `sendfile(2)` from `file` to the socket under tokio's readiness API:
/// the bytes never enter user space.
pub(super) async fn sendfile_all(
    tcp: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    offset: u64,
    end: u64,
    idle: Duration,
) -> Result<u64, StorageError> {
    let mut sent = 0u64;
    match sendfile_loop(tcp, file, offset, end, idle, &mut sent).await {
        Err(StorageError::Network(e)) => Err(StorageError::Network(io::Error::new(
            e.kind(),
            SentBefore {
                bytes: sent,
                source: e,
            },
        ))),
        other => other,
    }
}

/// A data connection that failed after `bytes` went out through
/// `sendfile(2)` (bytes a stream wrapper cannot count); displays as
/// `source`.
#[derive(Debug)]
pub struct SentBefore {
    pub bytes: u64,
    source: io::Error,
}

impl std::fmt::Display for SentBefore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for SentBefore {}

/// The bytes a failed send had moved, when the error says.
pub fn sent_before(e: &StorageError) -> Option<u64> {
    match e {
        StorageError::Network(e) => e
            .get_ref()
            .and_then(|x| x.downcast_ref::<SentBefore>())
            .map(|s| s.bytes),
        _ => None,
    }
}

async fn sendfile_loop(
    tcp: &mut tokio::net::TcpStream,
    file: &std::fs::File,
    offset: u64,
    end: u64,
    idle: Duration,
    sent: &mut u64,
) -> Result<u64, StorageError> {
    use std::os::fd::AsFd;
    let mut off = offset as i64;
    let end = end as i64;
    while off < end {
        let chunk = ((end - off) as usize).min(1 << 30);
        on_data(idle, tcp.writable()).await?;
        let r = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(tcp.as_fd(), file.as_fd(), Some(&mut off), chunk)
                .map_err(io::Error::from)
        });
        match r {
            Ok(0) => break, // the file shrank under us
            Ok(n) => *sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc_eio) if libc_eio == nix::libc::EIO) => {
                return Err(StorageError::Disk(e))
            }
            Err(e) => return Err(StorageError::Network(e)),
        }
    }
    Ok(*sent)
}

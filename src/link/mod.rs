//! The master<->slave link on the wire: the messages and frame format are
//! `dftpd_core::link` (re-exported here); this module reads and writes
//! frames on async streams and runs a link's writer (batched frames,
//! heartbeats).

pub use dftpd_core::link::*;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a link writer's queue carries: something that encodes as one or
/// more frames, in order.
pub trait Frames {
    fn encode_frames(&self, buf: &mut Vec<u8>);
}

impl Frames for MasterMsg {
    fn encode_frames(&self, buf: &mut Vec<u8>) {
        if let Err(e) = encode_frame_into(self, buf) {
            tracing::error!(error = %e, "link message not sent");
        }
    }
}

impl Frames for SlaveMsg {
    fn encode_frames(&self, buf: &mut Vec<u8>) {
        if let Err(e) = encode_frame_into(self, buf) {
            tracing::error!(error = %e, "link message not sent");
        }
    }
}

/// Most bytes one write of a link writer carries: frames queued at once
/// go out together up to this size.
const BATCH_BYTES: usize = 256 * 1024;

/// What a link's reader buffers: one read takes every frame that arrived
/// together (a 4-byte length and its payload are otherwise two reads).
pub const READ_BUFFER: usize = 16 * 1024;

/// The write side of a link: sends each queued message as a frame, and a
/// `heartbeat()` message on every `interval` tick of silence. Writes are
/// batched: the frames queued when the writer wakes go out in one write (up
/// to [`BATCH_BYTES`]), so pipelined messages share a system call and a
/// wake-up of the peer. `bulk` (a bounded channel: remerge chunks) is taken
/// only when `rx` is empty, so replies and acknowledgements never queue
/// behind a long file list. Ends when the queue closes or a write fails.
pub async fn write_frames<W, T, F, Fut>(
    w: &mut W,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    mut bulk: Option<&mut tokio::sync::mpsc::Receiver<T>>,
    interval: std::time::Duration,
    mut heartbeat: F,
) where
    W: AsyncWrite + Unpin + ?Sized,
    T: Frames,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = Vec::with_capacity(4096);
    loop {
        let msg = tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) => m,
                None => break,
            },
            Some(m) = async {
                match bulk.as_deref_mut() {
                    Some(b) => b.recv().await,
                    None => std::future::pending().await,
                }
            } => m,
            _ = tick.tick() => heartbeat().await,
        };
        buf.clear();
        msg.encode_frames(&mut buf);
        while buf.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => m.encode_frames(&mut buf),
                Err(_) => break,
            }
        }
        if buf.is_empty() {
            continue;
        }
        if w.write_all(&buf).await.is_err() {
            break;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            break;
        }
        if buf.capacity() > BATCH_BYTES * 2 {
            // A remerge chunk grew it: give the memory back.
            buf = Vec::with_capacity(4096);
        }
    }
}

pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), LinkError>
where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
{
    let buf = encode_frame(msg)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// The largest frame a peer may send before it has proved the link key:
/// `Hello` (a name and a zone of at most 64 bytes each, a nonce, an
/// address) and `Auth` (an HMAC) take a few hundred bytes. Only an
/// authenticated link gets [`MAX_FRAME`].
pub const HANDSHAKE_MAX_FRAME: usize = 4096;

/// Reads one frame of at most [`MAX_FRAME`] bytes.
pub async fn read_frame<R, T>(r: &mut R) -> Result<T, LinkError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    read_frame_max(r, MAX_FRAME).await
}

/// Reads one frame of at most `max` bytes: a longer one is
/// [`LinkError::TooLarge`] as soon as its length is read, before anything
/// is allocated for it.
pub async fn read_frame_max<R, T>(r: &mut R, max: usize) -> Result<T, LinkError>
where
    R: AsyncRead + Unpin + ?Sized,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(LinkError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max.min(MAX_FRAME) {
        return Err(LinkError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    decode_payload(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::VPath;

    #[tokio::test]
    async fn frames_round_trip() {
        let msgs = vec![
            SlaveMsg::Hello {
                version: PROTOCOL_VERSION,
                name: "s1".into(),
                nonce: [7; 32],
                data_ip: [127, 0, 0, 11].into(),
                data_tls: true,
                zone: Some("east".into()),
            },
            SlaveMsg::Remerge {
                files: vec![RemoteFile {
                    path: VPath::parse_absolute("/a/b.zip").unwrap(),
                    size: 10,
                    mtime: 5,
                    version: None,
                }],
                last: true,
            },
            SlaveMsg::Reply {
                rid: 9,
                response: Response::Failed(TransferFailure::Network("reset".into())),
            },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            write_frame(&mut wire, m).await.unwrap();
        }
        let mut r = &wire[..];
        for m in &msgs {
            let got: SlaveMsg = read_frame(&mut r).await.unwrap();
            assert_eq!(&got, m);
        }
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::Closed)
        ));
    }

    /// A writer that keeps each write apart.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.0.push(buf.to_vec());
            std::task::Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn frames_queued_together_leave_in_one_write_and_read_back() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for xfer in 1..=3 {
            tx.send(MasterMsg::Abort { xfer }).unwrap();
        }
        drop(tx);
        let mut w = Writes::default();
        let hour = std::time::Duration::from_secs(3600);
        write_frames(&mut w, &mut rx, None, hour, || async {
            MasterMsg::Heartbeat
        })
        .await;
        // The interval's first tick is immediate: a heartbeat may lead.
        let writes: Vec<Vec<u8>> =
            w.0.into_iter()
                .filter(|b| b[..] != encode_frame(&MasterMsg::Heartbeat).unwrap()[..])
                .collect();
        assert_eq!(writes.len(), 1, "{writes:?}");
        let mut r = tokio::io::BufReader::with_capacity(READ_BUFFER, &writes[0][..]);
        for xfer in 1..=3 {
            let got: MasterMsg = read_frame(&mut r).await.unwrap();
            assert_eq!(got, MasterMsg::Abort { xfer });
        }
    }

    #[test]
    fn a_frame_appended_to_a_batch_keeps_what_came_before() {
        let mut buf = Vec::new();
        encode_frame_into(&MasterMsg::Heartbeat, &mut buf).unwrap();
        let before = buf.clone();
        encode_frame_into(&MasterMsg::Abort { xfer: 7 }, &mut buf).unwrap();
        assert_eq!(&buf[..before.len()], &before[..]);
        assert_eq!(
            &buf[before.len()..],
            &encode_frame(&MasterMsg::Abort { xfer: 7 }).unwrap()[..]
        );
    }

    #[tokio::test]
    async fn oversized_and_garbage_frames_are_errors() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&(MAX_FRAME as u32 + 1).to_be_bytes());
        let mut r = &wire[..];
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::TooLarge(_))
        ));
        let wire = [0u8, 0, 0, 3, 0xff, 0xff, 0xff];
        let mut r = &wire[..];
        assert!(matches!(
            read_frame::<_, SlaveMsg>(&mut r).await,
            Err(LinkError::Decode(_))
        ));
    }

    #[tokio::test]
    async fn a_large_frame_before_authentication_is_refused_unread() {
        // Only the length arrives: a reader that allocated and read the
        // payload would fail on the missing bytes (Io), not on the size.
        let wire = ((16 * 1024 * 1024 - 16) as u32).to_be_bytes();
        let mut r = &wire[..];
        assert!(matches!(
            read_frame_max::<_, SlaveMsg>(&mut r, HANDSHAKE_MAX_FRAME).await,
            Err(LinkError::TooLarge(n)) if n == 16 * 1024 * 1024 - 16
        ));
        let mut wire = ((HANDSHAKE_MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        wire.extend(std::iter::repeat_n(0u8, HANDSHAKE_MAX_FRAME + 1));
        let mut r = &wire[..];
        assert!(matches!(
            read_frame_max::<_, SlaveMsg>(&mut r, HANDSHAKE_MAX_FRAME).await,
            Err(LinkError::TooLarge(_))
        ));
        // The largest real Hello and an Auth fit.
        let hello = SlaveMsg::Hello {
            version: PROTOCOL_VERSION,
            name: "s".repeat(64),
            nonce: [0xff; 32],
            data_ip: "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
            data_tls: true,
            zone: Some("z".repeat(64)),
        };
        let auth = SlaveMsg::Auth {
            mac: vec![0xff; 32],
        };
        for m in [hello, auth] {
            let wire = encode_frame(&m).unwrap();
            assert!(wire.len() < HANDSHAKE_MAX_FRAME / 8, "{}", wire.len());
            let got: SlaveMsg = read_frame_max(&mut &wire[..], HANDSHAKE_MAX_FRAME)
                .await
                .unwrap();
            assert_eq!(got, m);
        }
    }

    #[test]
    fn a_path_with_dotdot_from_a_slave_does_not_decode() {
        // VPath validates on deserialisation: a rogue slave cannot name a
        // path outside the tree.
        #[derive(Serialize)]
        enum Fake {
            #[allow(dead_code)]
            Hello,
            #[allow(dead_code)]
            Auth,
            Remerge {
                files: Vec<(String, u64, i64)>,
                last: bool,
            },
        }
        let buf = postcard::to_stdvec(&Fake::Remerge {
            files: vec![("/../etc/passwd".into(), 1, 1)],
            last: true,
        })
        .unwrap();
        assert!(decode_payload::<SlaveMsg>(&buf).is_err());
    }
}

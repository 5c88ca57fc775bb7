//! The master<->slave link on the wire: the messages and frame format are
//! `dftpd_core::link` (re-exported here); this module reads and writes
//! frames on async streams and runs a link's writer (batched frames,
//! heartbeats).

pub use dftpd_core::link::*;

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The write side of a link: sends each queued message as a frame, and a
/// `heartbeat()` message on every `interval` tick. Writes are batched: one
/// flush when the queue is empty, so pipelined orders share a write when the
/// link is busy. Ends when the queue closes or a write fails.
/// Writes what arrives on `rx` as frames (flushing when nothing more is
/// waiting) and a heartbeat every `interval` of silence. `bulk` (a bounded
/// channel: remerge chunks) is taken only when `rx` is empty, so replies
/// and acknowledgements never queue behind a long file list.
pub async fn write_frames<W, T, F, Fut>(
    w: &mut W,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<T>,
    mut bulk: Option<&mut tokio::sync::mpsc::Receiver<T>>,
    interval: std::time::Duration,
    mut heartbeat: F,
) where
    W: AsyncWrite + Unpin + ?Sized,
    T: Serialize,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let Ok(frame) = encode_frame(&msg) else {
            continue;
        };
        if w.write_all(&frame).await.is_err() {
            break;
        }
        if rx.is_empty() && w.flush().await.is_err() {
            break;
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

pub async fn read_frame<R, T>(r: &mut R) -> Result<T, LinkError>
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
    if len > MAX_FRAME {
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

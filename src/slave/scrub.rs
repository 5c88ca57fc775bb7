//! The scrub: in the background, at `scrub_rate` bytes per second, a slave
//! reads every copy it keeps and compares its CRC-32 with the one its
//! version records. A mismatch is reported (`SlaveMsg::Corrupt`); the
//! master drops that copy and repairs it from a good one (or, for an only
//! copy, keeps it and says so). A pass starts every `scrub_interval_ms`,
//! the first a minute after the slave joins (sooner if the interval is
//! shorter); a lost link ends the pass, the next link starts again.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::storage::is_version;
use super::Ctx;
use crate::link::SlaveMsg;

/// The first pass waits this long after the link is up (at most the
/// interval).
const FIRST_PASS_AFTER: Duration = Duration::from_secs(60);

/// Reads `file` to its end at most `rate` bytes per second; its CRC-32.
pub(super) async fn paced_crc(mut file: tokio::fs::File, rate: u64) -> std::io::Result<u32> {
    let mut h = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok(h.finalize());
        }
        h.update(&buf[..n]);
        if let Some(us) = (n as u64 * 1_000_000).checked_div(rate) {
            tokio::time::sleep(Duration::from_micros(us)).await;
        }
    }
}

pub(super) async fn run(ctx: Arc<Ctx>) {
    let rate = ctx.config.scrub_rate;
    if rate == 0 {
        return;
    }
    let interval = Duration::from_millis(ctx.config.scrub_interval_ms.max(1_000));
    tokio::time::sleep(FIRST_PASS_AFTER.min(interval)).await;
    loop {
        let started = tokio::time::Instant::now();
        let (checked, corrupt) = pass(&ctx, rate).await;
        tracing::info!(
            checked,
            corrupt,
            secs = started.elapsed().as_secs(),
            "scrub pass done"
        );
        tokio::time::sleep_until(started + interval).await;
    }
}

/// One pass: (copies checked, corrupt ones reported).
async fn pass(ctx: &Ctx, rate: u64) -> (u64, u64) {
    let files = match ctx.storage.list().await {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "scrub: cannot list the files");
            return (0, 0);
        }
    };
    let (mut checked, mut corrupt) = (0, 0);
    for f in files {
        let Some(version) = f.version else { continue };
        let Some(expected) = version.crc32 else {
            continue;
        };
        let Ok(Some((found_version, crc))) = ctx.storage.checksum(&f.path, rate).await else {
            continue;
        };
        // Replaced meanwhile: the next pass sees the new copy.
        if !is_version(found_version.as_ref(), &version) {
            continue;
        }
        checked += 1;
        if crc != expected {
            corrupt += 1;
            tracing::error!(path = %f.path, expected = format_args!("{expected:08x}"), found = format_args!("{crc:08x}"), "scrub: corrupt copy");
            let _ = ctx.out.send(SlaveMsg::Corrupt {
                path: f.path,
                version,
                found: crc,
            });
        }
    }
    (checked, corrupt)
}

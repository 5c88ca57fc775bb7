//! Prometheus metrics of a master (README, "Running it in production"):
//! sessions, logins, commands by verb, transfers and their bytes by
//! direction and slave, transfer durations, relayed bytes, slave states and
//! free space, remerge progress, store commit latency.
//!
//! [`Metrics`] is a set of plain methods meant for hot paths: each is a few
//! atomic operations under a read lock, with no allocation once a verb or a
//! slave name has been seen. [`Metrics::encode`] writes the Prometheus text
//! exposition format (version 0.0.4) through `prometheus-client`, in a fixed
//! order (series sorted by their labels), so two scrapes of the same state
//! are byte-identical.
//!
//! Every name starts with `dftpd_`; byte counters contain `bytes`. Counters
//! get the `_total` suffix from the encoder.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the transfer duration histogram.
const TRANSFER_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Upper bounds (seconds) of the store commit histogram (one fsync or more).
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// Which way a file went, as the client sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// RETR: slave (or relay) to client.
    Download,
    /// STOR/APPE/STOU: client to slave.
    Upload,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Download, Direction::Upload];

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Download => "download",
            Direction::Upload => "upload",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A slave's state as the master sees it (`dftpd_slave_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveStatus {
    Offline = 0,
    /// Connected and authenticated, sending its file list.
    Remerging = 1,
    Online = 2,
}

impl SlaveStatus {
    pub const ALL: [SlaveStatus; 3] = [
        SlaveStatus::Offline,
        SlaveStatus::Remerging,
        SlaveStatus::Online,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SlaveStatus::Offline => "offline",
            SlaveStatus::Remerging => "remerging",
            SlaveStatus::Online => "online",
        }
    }
}

type U64Gauge = Gauge<u64, AtomicU64>;

/// The series of one slave.
#[derive(Debug)]
struct SlaveSeries {
    transfers: [Counter; 2],
    failed: [Counter; 2],
    bytes: [Counter; 2],
    relayed_bytes: Counter,
    status: AtomicU8,
    free: U64Gauge,
    remerge_files: U64Gauge,
}

impl SlaveSeries {
    fn new() -> SlaveSeries {
        SlaveSeries {
            transfers: Default::default(),
            failed: Default::default(),
            bytes: Default::default(),
            relayed_bytes: Counter::default(),
            status: AtomicU8::new(SlaveStatus::Offline as u8),
            free: U64Gauge::default(),
            remerge_files: U64Gauge::default(),
        }
    }

    fn status(&self) -> SlaveStatus {
        match self.status.load(Ordering::Relaxed) {
            2 => SlaveStatus::Online,
            1 => SlaveStatus::Remerging,
            _ => SlaveStatus::Offline,
        }
    }
}

#[derive(Debug)]
struct Inner {
    sessions: Gauge,
    logins: [Counter; 2],
    commands: RwLock<BTreeMap<&'static str, Counter>>,
    slaves: RwLock<BTreeMap<String, SlaveSeries>>,
    durations: [Histogram; 2],
    store_commit: Histogram,
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // Counters stay consistent across a panic elsewhere: keep serving.
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

/// The master's metrics. Cheap to share (`Arc<Metrics>`); every method
/// takes `&self`.
pub struct Metrics {
    inner: Arc<Inner>,
    registry: Registry,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let inner = Arc::new(Inner {
            sessions: Gauge::default(),
            logins: Default::default(),
            commands: RwLock::new(BTreeMap::new()),
            slaves: RwLock::new(BTreeMap::new()),
            durations: [
                Histogram::new(TRANSFER_BUCKETS),
                Histogram::new(TRANSFER_BUCKETS),
            ],
            store_commit: Histogram::new(COMMIT_BUCKETS),
        });
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Collected(inner.clone())));
        Metrics { inner, registry }
    }

    /// A control connection was accepted.
    pub fn session_opened(&self) {
        self.inner.sessions.inc();
    }

    /// A control connection ended.
    pub fn session_closed(&self) {
        self.inner.sessions.dec();
    }

    /// Sets the session gauge from a count (a periodic or per-scrape
    /// reading of the master's session table).
    pub fn set_sessions(&self, n: usize) {
        self.inner.sessions.set(n as i64);
    }

    /// A PASS was answered: 230 (`ok`) or 530.
    pub fn login(&self, ok: bool) {
        self.inner.logins[usize::from(!ok)].inc();
    }

    /// One command was read and parsed; `verb` as `Command::verb()` gives
    /// it (a fixed set, so the label cannot grow without bound).
    pub fn command(&self, verb: &'static str) {
        if let Some(c) = read(&self.inner.commands).get(verb) {
            c.inc();
            return;
        }
        write(&self.inner.commands).entry(verb).or_default().inc();
    }

    fn with_slave<R>(&self, name: &str, f: impl FnOnce(&SlaveSeries) -> R) -> R {
        if let Some(s) = read(&self.inner.slaves).get(name) {
            return f(s);
        }
        let mut slaves = write(&self.inner.slaves);
        let s = slaves
            .entry(name.to_string())
            .or_insert_with(SlaveSeries::new);
        f(s)
    }

    /// A transfer on `slave` ended with its final 226: `bytes` moved in
    /// `duration`; `relayed` when the bytes went through the master.
    pub fn transfer_done(
        &self,
        direction: Direction,
        slave: &str,
        bytes: u64,
        duration: Duration,
        relayed: bool,
    ) {
        let d = direction.index();
        self.with_slave(slave, |s| {
            s.transfers[d].inc();
            s.bytes[d].inc_by(bytes);
            if relayed {
                s.relayed_bytes.inc_by(bytes);
            }
        });
        self.inner.durations[d].observe(duration.as_secs_f64());
    }

    /// A transfer on `slave` failed or was aborted (4xx/5xx final reply).
    /// A transfer failed or was aborted; `relayed`: the bytes the master
    /// relayed for it before that.
    pub fn transfer_failed(&self, direction: Direction, slave: &str, relayed: u64) {
        self.with_slave(slave, |s| {
            s.failed[direction.index()].inc();
            s.relayed_bytes.inc_by(relayed);
        });
    }

    /// The state and free space of a slave (its heartbeat, or a reading of
    /// the registry).
    pub fn set_slave(&self, name: &str, status: SlaveStatus, free: u64) {
        self.with_slave(name, |s| {
            s.status.store(status as u8, Ordering::Relaxed);
            s.free.set(free);
        });
    }

    /// Files the master has reconciled so far in `slave`'s current remerge
    /// (after each chunk; the total once the last chunk is in).
    pub fn remerge_progress(&self, slave: &str, files: u64) {
        self.with_slave(slave, |s| {
            s.remerge_files.set(files);
        });
    }

    /// One store commit (submit to fsynced) took `took`.
    pub fn store_commit(&self, took: Duration) {
        self.inner.store_commit.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The registry's view of [`Inner`]: encodes every family in a fixed order.
#[derive(Debug)]
struct Collected(Arc<Inner>);

impl Collector for Collected {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        m.sessions.encode(enc.encode_descriptor(
            "dftpd_sessions",
            "Open control connections",
            None,
            MetricType::Gauge,
        )?)?;

        let mut e = enc.encode_descriptor(
            "dftpd_logins",
            "Answered PASS commands by outcome (ok: 230, failed: 530)",
            None,
            MetricType::Counter,
        )?;
        for (outcome, c) in ["ok", "failed"].iter().zip(&m.logins) {
            c.encode(e.encode_family(&[("outcome", *outcome)])?)?;
        }

        let commands = read(&m.commands);
        let mut e = enc.encode_descriptor(
            "dftpd_commands",
            "Commands received, by verb",
            None,
            MetricType::Counter,
        )?;
        for (verb, c) in commands.iter() {
            c.encode(e.encode_family(&[("verb", *verb)])?)?;
        }
        drop(commands);

        let slaves = read(&m.slaves);
        type Pick = fn(&SlaveSeries) -> &[Counter; 2];
        let per_direction: [(&str, &str, Pick); 3] = [
            ("dftpd_transfers", "Completed transfers", |s| &s.transfers),
            (
                "dftpd_transfers_failed",
                "Failed or aborted transfers",
                |s| &s.failed,
            ),
            (
                "dftpd_transfer_bytes",
                "Bytes of completed transfers",
                |s| &s.bytes,
            ),
        ];
        for (name, help, pick) in per_direction {
            let mut e = enc.encode_descriptor(
                name,
                &format!("{help}, by direction and slave"),
                None,
                MetricType::Counter,
            )?;
            for d in Direction::ALL {
                for (slave, s) in slaves.iter() {
                    let labels = [("direction", d.as_str()), ("slave", slave.as_str())];
                    pick(s)[d.index()].encode(e.encode_family(&labels)?)?;
                }
            }
        }
        let mut e = enc.encode_descriptor(
            "dftpd_relayed_bytes",
            "Bytes the master relayed between a client and a slave (clients without PRET)",
            None,
            MetricType::Counter,
        )?;
        for (slave, s) in slaves.iter() {
            s.relayed_bytes
                .encode(e.encode_family(&[("slave", slave.as_str())])?)?;
        }

        let mut e = enc.encode_descriptor(
            "dftpd_transfer_duration_seconds",
            "Duration of completed transfers, by direction",
            None,
            MetricType::Histogram,
        )?;
        for d in Direction::ALL {
            m.durations[d.index()].encode(e.encode_family(&[("direction", d.as_str())])?)?;
        }

        let mut e = enc.encode_descriptor(
            "dftpd_slave_state",
            "1 for the slave's current state (offline, remerging, online)",
            None,
            MetricType::Gauge,
        )?;
        for (slave, s) in slaves.iter() {
            let now = s.status();
            for st in SlaveStatus::ALL {
                let g = Gauge::<i64>::default();
                g.set(i64::from(st == now));
                g.encode(e.encode_family(&[("slave", slave.as_str()), ("state", st.as_str())])?)?;
            }
        }
        let mut e = enc.encode_descriptor(
            "dftpd_slave_free_bytes",
            "Free space the slave last reported",
            None,
            MetricType::Gauge,
        )?;
        for (slave, s) in slaves.iter() {
            s.free
                .encode(e.encode_family(&[("slave", slave.as_str())])?)?;
        }
        let mut e = enc.encode_descriptor(
            "dftpd_remerge_files",
            "Files reconciled in the slave's current or last remerge",
            None,
            MetricType::Gauge,
        )?;
        for (slave, s) in slaves.iter() {
            s.remerge_files
                .encode(e.encode_family(&[("slave", slave.as_str())])?)?;
        }
        drop(slaves);

        m.store_commit.encode(enc.encode_descriptor(
            "dftpd_store_commit_seconds",
            "Duration of metadata store commits (one fsynced transaction)",
            None,
            MetricType::Histogram,
        )?)?;

        let mut e = enc.encode_descriptor(
            "dftpd_build_info",
            "The running dftpd version",
            None,
            MetricType::Gauge,
        )?;
        let one = Gauge::<i64>::default();
        one.set(1);
        one.encode(e.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn names_labels_and_values() {
        let m = Metrics::new();
        m.session_opened();
        m.session_opened();
        m.session_closed();
        m.login(true);
        m.login(false);
        m.login(false);
        m.command("RETR");
        m.command("RETR");
        m.command("PASV");
        m.set_slave("slave-2", SlaveStatus::Online, 5000);
        m.set_slave("slave-1", SlaveStatus::Remerging, 7);
        m.transfer_done(
            Direction::Download,
            "slave-2",
            1000,
            Duration::from_millis(20),
            true,
        );
        m.transfer_failed(Direction::Upload, "slave-1", 0);
        m.remerge_progress("slave-1", 42);
        m.store_commit(Duration::from_micros(800));
        let t = m.encode();
        assert!(
            t.contains("# TYPE dftpd_sessions gauge\ndftpd_sessions 1\n"),
            "{t}"
        );
        assert!(t.contains("dftpd_logins_total{outcome=\"ok\"} 1\n"), "{t}");
        assert!(
            t.contains("dftpd_logins_total{outcome=\"failed\"} 2\n"),
            "{t}"
        );
        assert!(t.contains("dftpd_commands_total{verb=\"RETR\"} 2\n"), "{t}");
        assert!(t.contains(
            "dftpd_transfer_bytes_total{direction=\"download\",slave=\"slave-2\"} 1000\n"
        ));
        assert!(t.contains("dftpd_relayed_bytes_total{slave=\"slave-2\"} 1000\n"));
        assert!(
            t.contains("dftpd_transfers_failed_total{direction=\"upload\",slave=\"slave-1\"} 1\n")
        );
        assert!(t.contains("dftpd_slave_state{slave=\"slave-1\",state=\"remerging\"} 1\n"));
        assert!(t.contains("dftpd_slave_state{slave=\"slave-1\",state=\"online\"} 0\n"));
        assert!(t.contains("dftpd_slave_free_bytes{slave=\"slave-2\"} 5000\n"));
        assert!(t.contains("dftpd_remerge_files{slave=\"slave-1\"} 42\n"));
        assert!(t.contains(
            "dftpd_transfer_duration_seconds_bucket{direction=\"download\",le=\"0.05\"} 1\n"
        ));
        assert!(t.contains("dftpd_store_commit_seconds_count 1\n"), "{t}");
        // Every sample is ours, and byte counters say so.
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            assert!(l.starts_with("dftpd_"), "{l}");
        }
        // Sorted by slave name: the same state encodes the same way.
        let s1 = t.find("state{slave=\"slave-1\"").unwrap();
        let s2 = t.find("state{slave=\"slave-2\"").unwrap();
        assert!(s1 < s2);
        assert_eq!(t, m.encode());
        assert!(line(&t, "dftpd_build_info{version=").is_some());
    }
}

//! Metadata-store benchmark: what the redb store adds to a remerge at scale
//! and to a master restart. One slave reports N files (default 1,000,000):
//!
//! 1. remerge into an empty store (the `--rebuild` case): every file is
//!    written; chunks of `REMERGE_CHUNK` are committed (fsynced) one by one,
//!    as the link task does, outside the state lock;
//! 2. the master restarts: load the whole store into a fresh database;
//! 3. the same slave remerges again (the usual rejoin): nothing changes, so
//!    nothing is written.
//!
//! Also the longest lock hold per chunk (what a session can wait behind a
//! remerge) and the store's size. `cargo run --release --example store`

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use dftpd::config::MasterConfig;
use dftpd::link::{RemoteFile, REMERGE_CHUNK};
use dftpd::master::remerge::{remerge_chunk, remerge_finish};
use dftpd::master::store::MetaStore;
use dftpd::master::MasterState;
use dftpd::proto::VPath;

fn files(n: usize) -> Vec<RemoteFile> {
    (0..n)
        .map(|i| RemoteFile {
            path: VPath::parse_absolute(&format!("/site/dir{:05}/release-{i:08}.rar", i / 1000))
                .unwrap(),
            size: 15_000_000 + i as u64 % 1000,
            mtime: 1_700_000_000,
            version: None,
        })
        .collect()
}

fn remerge(st: &mut MasterState, store: &MetaStore, all: &[RemoteFile]) -> (f64, u128, usize) {
    let id = st.slaves.id_for("slave-1");
    let mut seen = BTreeSet::new();
    let t = Instant::now();
    let mut worst = 0u128;
    let mut written = 0;
    for chunk in all.chunks(REMERGE_CHUNK) {
        let held = Instant::now();
        remerge_chunk(st, id, chunk.to_vec(), &mut seen);
        let mut changes = st.db.take_journal();
        changes.extend(st.slaves.take_journal());
        worst = worst.max(held.elapsed().as_micros());
        written += changes.len();
        if !changes.is_empty() {
            store.apply(&changes).unwrap();
        }
    }
    remerge_finish(st, id, &seen);
    let rest = st.db.take_journal();
    written += rest.len();
    store.apply(&rest).unwrap();
    (t.elapsed().as_secs_f64(), worst, written)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--files")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.redb");
    let all = files(n);
    let config = Arc::new(MasterConfig::default());

    let store = MetaStore::open_file(&path).unwrap();
    let mut st = MasterState::new(config.clone());
    st.db.open_journal();
    st.slaves.open_journal();
    let (secs, worst, written) = remerge(&mut st, &store, &all);
    println!(
        "remerge of {n} files into an empty store: {secs:.1} s ({:.0} files/s), {written} records written, longest lock hold {} us",
        n as f64 / secs,
        worst
    );
    drop(st);
    drop(store);
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("store size: {:.0} MB", size as f64 / 1e6);

    let t = Instant::now();
    let store = MetaStore::open_file(&path).unwrap();
    let mut st = MasterState::new(config);
    let stats = store.load(&mut st).unwrap();
    println!(
        "restart: loaded {} files and {} directories in {:.1} s",
        stats.files,
        stats.dirs,
        t.elapsed().as_secs_f64()
    );
    st.db.open_journal();
    st.slaves.open_journal();
    let (secs, worst, written) = remerge(&mut st, &store, &all);
    println!(
        "rejoin remerge of {n} unchanged files: {secs:.1} s, {written} records written, longest lock hold {worst} us"
    );
}

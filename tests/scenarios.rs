//! The scenario suite: every `scenarios/*.scn` runs in the deterministic
//! cluster simulation (`dftpd-sim`) at the snapshot seed, its transcript is
//! compared with the reviewed snapshot in `scenarios/snapshots/`, and the
//! run must satisfy every invariant (or exactly the violations a scenario
//! declares with `expect-violation`).
//!
//! A changed transcript fails the test (CI runs with `INSTA_UPDATE=no`). To
//! accept intended changes without cargo-insta:
//! `INSTA_UPDATE=always cargo test --test scenarios`, then review the diff
//! of `scenarios/snapshots/` before committing it.

use dftpd_sim::insta;

/// The seed snapshots are taken at.
const SNAPSHOT_SEED: u64 = 0;

#[test]
fn scenarios() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../scenarios/snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        insta::glob!("../scenarios", "*.scn", |path| {
            let sc = dftpd_sim::parse_file(path).unwrap_or_else(|e| panic!("{e}"));
            let outcome = dftpd_sim::run(&sc, SNAPSHOT_SEED);
            let failures = outcome.failures(&sc);
            assert!(
                failures.is_empty(),
                "{}: invariants violated at seed {SNAPSHOT_SEED}:\n  {}\ntranscript:\n{}",
                sc.path,
                failures.join("\n  "),
                outcome.transcript
            );
            insta::assert_snapshot!(sc.name.as_str(), outcome.transcript);
        });
    });
}

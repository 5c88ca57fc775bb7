//! `dftpd-sim`: a deterministic simulation of a whole dftpd cluster on
//! turmoil. [`env`] implements dftpd's environment seam on turmoil,
//! [`script`] parses the scenario language (`scenarios/README.md`),
//! [`client`] is the scripted FTP client, [`runner`] builds and drives one
//! simulation per (scenario, seed) and checks the invariants ([`history`]:
//! every reply held against what a correct cluster could have done),
//! [`replay`] replays sessions recorded by a real master (`--record`),
//! together and on their recorded clock, and [`diff`] compares expected
//! replies with received ones. One scenario and one seed always give the
//! same transcript, byte for byte.

pub mod client;
pub mod diff;
pub mod env;
pub mod history;
pub mod replay;
pub mod runner;
pub mod script;

/// Re-exported so `tests/scenarios.rs` can snapshot transcripts without the
/// root package depending on insta itself.
pub use insta;

pub use replay::{
    replay_file, replay_paths, Fault, ReplayError, ReplayOptions, ReplayReport, When,
};
pub use runner::{run, run_timed, Outcome, Timing};
pub use script::{parse_file, ParseError, Scenario};

//! The scenario language: parsing a `.scn` file into a [`Scenario`]
//! (topology + an ordered list of [`Step`]s). Pure: no I/O beyond reading
//! the file, no panics on bad input — every mistake is a [`ParseError`]
//! naming `file:line`. The language itself is documented in
//! `scenarios/README.md`.
//!
//! The types are here; the parser (one function per step of the
//! language, a match arm per keyword) is in `parse.rs`.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use dftpd::proto::VPath;

/// Hosts the runner creates itself; scenario names may not take them.
pub const RESERVED: &[&str] = &["master", "probe", "all"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {msg}")]
pub struct ParseError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveDecl {
    pub name: String,
    /// Disk capacity in bytes.
    pub free: u64,
    /// `avail=SIZE` (recordings): free space once the declared files are
    /// on the disk; the capacity becomes SIZE plus their sizes.
    pub avail: Option<u64>,
}

/// `NAME< TEXT`: a reply line the client is expected to receive, in order
/// (recordings carry them; see [`crate::replay`] for the comparison).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expectation {
    pub line: usize,
    pub client: String,
    pub text: String,
}

/// What `$PASSWORD` (in a `user` line and in commands) stands for: a
/// recording never holds the real password.
pub const REPLAY_PASSWORD: &str = "replayed-password";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDecl {
    pub slaves: Vec<String>,
    pub path: VPath,
    pub size: u64,
    pub seed: u64,
    /// Where it is declared (a recording declares a file where the session
    /// first names it: the multi-session replay orders declarations by it).
    pub line: usize,
}

/// `dir PATH`: a directory the master knows at start, with its parents
/// (recordings declare every directory on the way to a path they name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirDecl {
    pub path: VPath,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserDecl {
    pub name: String,
    pub password: String,
    pub admin: bool,
    pub home: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub slaves: Vec<SlaveDecl>,
    pub files: Vec<FileDecl>,
    pub users: Vec<UserDecl>,
    pub dirs: Vec<DirDecl>,
    /// `absent PATH`: the recording named PATH when it did not exist (its
    /// session made it); nothing in a run, the multi-session replay's
    /// evidence that no session found it there before.
    pub absent: Vec<DirDecl>,
    /// `ftps`: the master offers FTPS at the FTP level only (AUTH TLS, PBSZ
    /// and PROT answered as by a master with a certificate; every
    /// connection stays in clear). Recordings of a master with `tls_cert`.
    pub ftps: bool,
    /// `config key=value`: master configuration overrides, in order.
    pub master_config: Vec<(String, String)>,
    /// `slave-config key=value`: applied to every slave.
    pub slave_config: Vec<(String, String)>,
    /// Every client named by a step, sorted.
    pub clients: BTreeSet<String>,
}

/// Where a client cuts a data connection short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Close the data connection after this many bytes.
    Close(u64),
    /// Send ABOR after this many bytes, then close the data connection.
    Abort(u64),
    /// Reset the data connection (as a client that fails or is
    /// interrupted) once this many bytes crossed it, counted on the
    /// sending side; the client keeps its control connection and reads the
    /// transfer's final reply.
    Reset(u64),
    /// The client process dies once this many bytes crossed the data
    /// connection (counted on the sending side): its control connection
    /// closes, then the data connection; its later steps are skipped.
    Gone(u64),
    /// The client stops reading or writing after this many bytes and
    /// waits, the data connection open, for the final reply (the server's
    /// data timeout).
    Stall(u64),
}

impl Cut {
    pub fn at(self) -> u64 {
        match self {
            Cut::Close(n) | Cut::Abort(n) | Cut::Reset(n) | Cut::Gone(n) | Cut::Stall(n) => n,
        }
    }
}

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cut::Close(n) => write!(f, "close-after={n}"),
            Cut::Abort(n) => write!(f, "abort-after={n}"),
            Cut::Reset(n) => write!(f, "reset-after={n}"),
            Cut::Gone(n) => write!(f, "gone-after={n}"),
            Cut::Stall(n) => write!(f, "stall-after={n}"),
        }
    }
}

impl Cut {
    fn parse(key: &str, n: u64) -> Option<Cut> {
        Some(match key {
            "close-after" => Cut::Close(n),
            "abort-after" => Cut::Abort(n),
            "reset-after" => Cut::Reset(n),
            "gone-after" => Cut::Gone(n),
            "stall-after" => Cut::Stall(n),
            _ => return None,
        })
    }
}

/// What an upload sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Payload {
    pub size: u64,
    pub seed: u64,
    pub cut: Option<Cut>,
    /// Send at an even pace so the bytes take this long (a recorded slow
    /// transfer: a fault in the middle of it finds it running).
    pub over: Option<Duration>,
}

/// How the next download is read: cut short, and paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReadPlan {
    pub cut: Option<Cut>,
    /// Read `bytes` at an even pace over this long (see [`Payload::over`]).
    pub pace: Option<Pace>,
}

/// An even pace: `bytes` over `over`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub bytes: u64,
    pub over: Duration,
}

impl std::fmt::Display for ReadPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = "";
        if let Some(c) = self.cut {
            write!(f, "{c}")?;
            sep = " ";
        }
        if let Some(p) = self.pace {
            write!(f, "{sep}bytes={} over={:?}", p.bytes, p.over)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp {
    /// Open the control connection and read the greeting.
    Connect,
    /// Send one command line (with `$PORT`/`$EPRT` expanded) and read the
    /// replies, running the data phase on a 1xx.
    Command(String),
    /// Send these bytes as they are and read one reply.
    Raw(Vec<u8>),
    /// Connect the data connection to the last 227/229 address now.
    DataConnect,
    /// Connect it now to the master's address at the 227/229 port, as
    /// clients that ignore the 227 address do (curl by default, ftplib).
    DataConnectIgnoringAddress,
    /// Listen for an active data connection (`$PORT`, `$EPRT` name it).
    DataListen,
    /// Payload of the next upload command.
    DataSend(Payload),
    /// How the next download is read: stopped after so many bytes
    /// (closes, ABORs, ...), and at what pace.
    DataRead(ReadPlan),
    /// Close the control connection (without QUIT).
    Close,
    /// Replays a recorded decision: the master's choice of slave for
    /// transfers of `path` (`None`: a STOU without a name) made for this
    /// client goes to `slave` from now on.
    PinSlave { path: Option<VPath>, slave: String },
    /// Replays a recorded decision: this client's next STOU names its file
    /// `name`.
    PinStou(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveStateWanted {
    Online,
    Offline,
    Remerging,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    Client {
        client: String,
        op: ClientOp,
        /// `&`: start it and go on without waiting for it to finish.
        background: bool,
    },
    /// Wait until these clients have finished everything they were given.
    Wait(Vec<String>),
    /// Let simulated time pass.
    Sleep(Duration),
    /// `at DURATION`: let simulated time pass until DURATION after the
    /// script started (the cluster is up); at once if that is past.
    At(Duration),
    Crash(String),
    Restart(String),
    /// The master's metadata store is lost (use while the master is down).
    WipeStore,
    Partition(String, String),
    Repair(String, String),
    Hold(String, String),
    Release(String, String),
    Latency(String, String, Duration),
    /// Step until the master sees `slave` in `state`, at most `within`.
    AwaitSlave {
        slave: String,
        state: SlaveStateWanted,
        within: Duration,
    },
    /// Step until `client` has moved at least `bytes` on its current data
    /// connection, at most `within`.
    AwaitBytes {
        client: String,
        bytes: u64,
        within: Duration,
    },
    /// Change a slave's disk directly, behind the master's back.
    DiskPut {
        slave: String,
        path: VPath,
        size: u64,
        seed: u64,
        /// `count=N`: N files, PATH1 .. PATHN (one transcript line).
        count: u64,
    },
    DiskRemove {
        slave: String,
        path: VPath,
    },
    /// Bit rot: one byte of the copy flipped, its version kept.
    DiskCorrupt {
        slave: String,
        path: VPath,
    },
    /// Print the master's file database into the transcript.
    ShowDb,
    /// Print the master's view of the slaves into the transcript.
    ShowSlaves,
    /// Print what is on a slave's disk (complete files and temporary ones).
    ShowDisk(String),
    /// Wait until these clients have begun every step given to them (not
    /// in the language: a replay puts it before a fault, so the fault lands
    /// after every command recorded before its time was sent).
    CatchUp(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub line: usize,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scenario {
    /// File stem, e.g. `pret-retr`.
    pub name: String,
    /// Path as given, for messages and reproduce commands.
    pub path: String,
    pub topology: Topology,
    pub steps: Vec<Step>,
    /// `expect-violation TEXT`: a known defect this scenario demonstrates;
    /// the run passes only if a violation containing TEXT occurs.
    pub expected_violations: Vec<String>,
    /// `NAME< TEXT` lines, in file order.
    pub expectations: Vec<Expectation>,
}

mod parse;
pub use parse::{parse, parse_duration, parse_file, parse_size, path_seed, read_text};

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Scenario {
        parse("t", "t.scn", text).unwrap()
    }

    fn bad(text: &str) -> String {
        parse("t", "t.scn", text).unwrap_err().to_string()
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("99999999999999T"), None);
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.025s"), Some(Duration::from_millis(25)));
        assert_eq!(
            parse_duration("1.2345s"),
            Some(Duration::from_micros(1_234_500))
        );
        assert_eq!(parse_duration("1.2345678s"), None);
        assert_eq!(
            parse_duration("12.345ms"),
            Some(Duration::from_micros(12_345))
        );
        assert_eq!(parse_duration("80us"), Some(Duration::from_micros(80)));
        assert_eq!(parse_duration("1.2345ms"), None);
        assert_eq!(parse_duration("-1ms"), None);
        assert_eq!(parse_duration("1.s"), None);
    }

    #[test]
    fn a_full_scenario_parses() {
        let sc = ok("# comment\n\
            slave s1 free=10M\n\
            slave s2\n\
            file s1,s2 /pub/a size=1k seed=3 # trailing comment\n\
            user alice secret admin\n\
            config pasv_without_pret=refuse\n\
            alice: connect\n\
            alice> USER alice # not a comment\n\
            & bob> RETR /pub/a\n\
            bob: data send 10k close-after=4k\n\
            each 1..3 c%i: connect\n\
            wait all\n\
            crash s1\n\
            await slave s1 offline within 10s\n\
            await bob bytes 1k\n\
            partition master s2\n\
            disk s1 put /x size=5\n\
            show db\n");
        assert_eq!(sc.topology.slaves.len(), 2);
        assert_eq!(sc.topology.slaves[0].free, 10 << 20);
        assert_eq!(sc.topology.files[0].slaves, ["s1", "s2"]);
        assert_eq!(sc.topology.files[0].seed, 3);
        assert!(sc.topology.users[0].admin);
        let names: Vec<&str> = sc.topology.clients.iter().map(String::as_str).collect();
        assert_eq!(names, ["alice", "bob", "c1", "c2", "c3"]);
        assert_eq!(
            sc.steps[1].kind,
            StepKind::Client {
                client: "alice".into(),
                op: ClientOp::Command("USER alice # not a comment".into()),
                background: false
            }
        );
        assert!(matches!(
            sc.steps[2].kind,
            StepKind::Client {
                background: true,
                ..
            }
        ));
        assert_eq!(sc.steps[2].line, 9);
        assert_eq!(sc.steps.len(), 14);
    }

    #[test]
    fn recording_statements_parse() {
        let sc = ok("slave s1 avail=5k
            user alice $PASSWORD
            alice: connect
            alice< 220 dftpd ready
            at 12ms
            alice> PASS $PASSWORD
            alice< 211-Features: # kept
            alice<  EPRT
");
        assert_eq!(sc.topology.slaves[0].avail, Some(5 << 10));
        assert_eq!(sc.steps[1].kind, StepKind::At(Duration::from_millis(12)));
        let texts: Vec<(&str, usize)> = sc
            .expectations
            .iter()
            .map(|e| (e.text.as_str(), e.line))
            .collect();
        assert_eq!(
            texts,
            [
                ("220 dftpd ready", 4),
                ("211-Features: # kept", 7),
                (" EPRT", 8)
            ]
        );
        assert!(bad("slave s1
bob< 200 x
")
        .starts_with("t.scn:2: expected reply for 'bob'"));
        assert!(bad("slave s1
at soon
")
        .starts_with("t.scn:2: invalid duration"));
    }

    #[test]
    fn replay_statements_parse() {
        let sc = ok("slave s1
            ftps
            dir /a/b
            absent /a/new
            c: pin /a/f.bin s1
            c: pin - s1
            c: pin-stou stou.3.3
            c: data send 10 gone-after=4
            c: data read reset-after=2k
            c: data read stall-after=0
            c: data send 2k over=1.500250s
            c: data read bytes=3000000 over=250ms
            c: data read reset-after=700 over=2ms
");
        assert!(sc.topology.ftps);
        assert_eq!(sc.topology.dirs[0].path.as_str(), "/a/b");
        assert_eq!(sc.topology.dirs[0].line, 3);
        assert_eq!(sc.topology.absent[0].path.as_str(), "/a/new");
        let ops: Vec<&ClientOp> = sc
            .steps
            .iter()
            .filter_map(|s| match &s.kind {
                StepKind::Client { op, .. } => Some(op),
                _ => None,
            })
            .collect();
        assert_eq!(
            ops[0],
            &ClientOp::PinSlave {
                path: Some(VPath::parse_absolute("/a/f.bin").unwrap()),
                slave: "s1".into()
            }
        );
        assert_eq!(
            ops[1],
            &ClientOp::PinSlave {
                path: None,
                slave: "s1".into()
            }
        );
        assert_eq!(ops[2], &ClientOp::PinStou("stou.3.3".into()));
        assert_eq!(
            ops[3],
            &ClientOp::DataSend(Payload {
                size: 10,
                seed: 1,
                cut: Some(Cut::Gone(4)),
                over: None,
            })
        );
        let cut = |c| ReadPlan {
            cut: Some(c),
            pace: None,
        };
        assert_eq!(ops[4], &ClientOp::DataRead(cut(Cut::Reset(2048))));
        assert_eq!(ops[5], &ClientOp::DataRead(cut(Cut::Stall(0))));
        assert_eq!(
            ops[6],
            &ClientOp::DataSend(Payload {
                size: 2048,
                seed: 1,
                cut: None,
                over: Some(Duration::from_micros(1_500_250)),
            })
        );
        let pace = Some(Pace {
            bytes: 3_000_000,
            over: Duration::from_millis(250),
        });
        assert_eq!(ops[7], &ClientOp::DataRead(ReadPlan { cut: None, pace }));
        assert_eq!(
            ops[8],
            &ClientOp::DataRead(ReadPlan {
                cut: Some(Cut::Reset(700)),
                pace: Some(Pace {
                    bytes: 700,
                    over: Duration::from_millis(2)
                }),
            })
        );
        assert!(bad("slave s1\nc: data read over=1s\n").contains("needs bytes="));
        assert!(
            bad("slave s1\nc: data read explode-after=3\n").contains("unknown data read option")
        );
    }

    #[test]
    fn mistakes_name_the_line() {
        assert_eq!(
            bad("slave s1\nslave s2 free=lots\n"),
            "t.scn:2: invalid size 'lots' (e.g. 100, 64k, 5M, 2G)"
        );
        assert!(bad("slave s1\nfrobnicate\n").starts_with("t.scn:2: unknown statement"));
        assert!(bad("slave s1\ncrash s9\n").starts_with("t.scn:2: unknown host 's9'"));
        assert!(bad("slave s1\nfile s1 /../x size=1\n").contains("invalid path"));
        assert!(bad("alice: connect\n").contains("at least one"));
        assert!(bad("slave s1\nmaster: connect\n").contains("reserved"));
        assert!(bad("slave s1\nalice: fly\n").contains("unknown client action"));
        assert!(bad("slave s1\neach 5..1 c%i: connect\n").contains("ascending"));
        assert!(bad("slave s1\nalice: send-hex 0g\n").contains("hex"));
    }
}

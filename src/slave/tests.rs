//! The slave's runtime without a master: the test plays the master on one
//! end of an in-memory link (after the handshake) and the slave runs on the
//! other, over the simulator's in-memory disk.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::commit::Awaiting;
use super::mem::{MemDisk, MemStorage};
use super::storage::Storage;
use super::{serve, Welcome};
use crate::config::SlaveConfig;
use crate::env::{pipe, BoxStream, Env, FixedClock, TokioNet};
use crate::link::{
    self, DataConn, FileOp, FileVersion, MasterMsg, OpOutcome, Request, Response, SlaveMsg,
    TransferOrder,
};
use crate::proto::VPath;

fn p(s: &str) -> VPath {
    VPath::parse_absolute(s).unwrap()
}

struct Rig {
    link: BoxStream,
    disk: MemDisk,
    _ready: mpsc::UnboundedReceiver<String>,
}

impl Rig {
    /// A slave with /x and /a on its disk, whose master says its log goes
    /// up to `log_upto`.
    async fn start(log_upto: u64) -> Rig {
        Rig::start_with_pool(log_upto, 0).await
    }

    /// [`Rig::start`] with `pool` passive listeners opened ahead.
    async fn start_with_pool(log_upto: u64, pool: usize) -> Rig {
        let disk = MemDisk::new(1 << 30);
        disk.put(p("/x"), b"xx".to_vec(), 1);
        disk.put(p("/a"), b"aaa".to_vec(), 1);
        let clock = Arc::new(FixedClock(1000.into()));
        let storage: Arc<dyn Storage> = Arc::new(MemStorage::new(disk.clone(), clock.clone()));
        let env = Env::new(Arc::new(TokioNet), clock, 3);
        let config = Arc::new(SlaveConfig {
            name: "s1".into(),
            data_ip: "127.0.0.1".parse().unwrap(),
            passive_ports: "0".into(),
            passive_pool: pool,
            ..SlaveConfig::default()
        });
        let (master_end, slave_end) = pipe(
            "127.0.0.1:2100".parse().unwrap(),
            "127.0.0.1:40001".parse().unwrap(),
        );
        let (ready_tx, ready) = mpsc::unbounded_channel();
        let welcome = Welcome {
            ticket_key: None,
            master_instance: 9,
            log_upto,
            data_timeout: Duration::from_secs(5),
        };
        tokio::spawn(async move {
            let _ = serve(
                &env,
                &config,
                &storage,
                Some(&ready_tx),
                slave_end,
                welcome,
                None,
                Awaiting::new(Duration::from_secs(5)),
            )
            .await;
        });
        Rig {
            link: master_end,
            disk,
            _ready: ready,
        }
    }

    async fn send(&mut self, msg: MasterMsg) {
        link::write_frame(&mut self.link, &msg).await.unwrap();
    }

    /// The next message from the slave that is not a heartbeat.
    async fn next_any(&mut self) -> SlaveMsg {
        loop {
            let msg =
                tokio::time::timeout(Duration::from_secs(10), link::read_frame(&mut self.link))
                    .await
                    .expect("a message in time")
                    .expect("a frame");
            if !matches!(msg, SlaveMsg::Status { .. }) {
                return msg;
            }
        }
    }

    /// The next message from the slave that is not a heartbeat or a
    /// listener report.
    async fn next(&mut self) -> SlaveMsg {
        loop {
            match self.next_any().await {
                SlaveMsg::Listeners { .. } => continue,
                m => return m,
            }
        }
    }
}

#[tokio::test]
async fn the_resent_log_is_applied_and_acknowledged_before_the_remerge() {
    let mut rig = Rig::start(2).await;
    rig.send(MasterMsg::Log(vec![
        (1, FileOp::Delete { path: p("/x") }),
        (
            2,
            FileOp::Rename {
                from: p("/a"),
                to: p("/b/a"),
            },
        ),
    ]))
    .await;
    assert_eq!(
        rig.next().await,
        SlaveMsg::Applied {
            outcomes: vec![(1, OpOutcome::Done), (2, OpOutcome::Done)]
        }
    );
    // Only now the list, which already shows both changes.
    let SlaveMsg::Remerge { files, last: true } = rig.next().await else {
        panic!("expected the remerge")
    };
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["/b/a"]);
    assert!(rig.disk.get(&p("/x")).is_none());
}

#[tokio::test]
async fn an_upload_waits_for_its_commit_entry_and_keeps_the_version() {
    let mut rig = Rig::start(0).await;
    let SlaveMsg::Remerge { .. } = rig.next().await else {
        panic!("expected the remerge")
    };
    // Active mode: the slave connects to the "client".
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = client.local_addr().unwrap();
    rig.send(MasterMsg::Request {
        rid: 5,
        request: Request::Transfer {
            xfer: 77,
            order: TransferOrder::Receive {
                path: p("/up"),
                offset: None,
                base: None,
            },
            data: DataConn::Active(addr),
            tls: None,
        },
    })
    .await;
    let (mut data, _) = client.accept().await.unwrap();
    data.write_all(b"hello").await.unwrap();
    drop(data);
    let SlaveMsg::Reply {
        rid: 5,
        response: Response::Received { size: 5, .. },
    } = rig.next().await
    else {
        panic!("expected Received")
    };
    assert!(
        rig.disk.get(&p("/up")).is_none(),
        "not visible before the commit"
    );
    let version = FileVersion {
        store: 3,
        gen: 10,
        size: 5,
        crc32: None,
    };
    let commit = FileOp::Commit {
        xfer: 77,
        path: p("/up"),
        version,
    };
    rig.send(MasterMsg::Log(vec![(1, commit.clone())])).await;
    let SlaveMsg::Applied { outcomes } = rig.next().await else {
        panic!("expected Applied")
    };
    assert!(matches!(
        outcomes[0],
        (1, OpOutcome::Committed { size: 5, .. })
    ));
    assert_eq!(rig.disk.get(&p("/up")).unwrap().as_slice(), b"hello");
    assert_eq!(rig.disk.lock().files[&p("/up")].version, Some(version));
    // Resent after a reconnect, the same entry answers from the disk.
    rig.send(MasterMsg::Log(vec![(1, commit)])).await;
    let SlaveMsg::Applied { outcomes } = rig.next().await else {
        panic!("expected Applied")
    };
    assert!(matches!(
        outcomes[0],
        (1, OpOutcome::Committed { size: 5, .. })
    ));
    // A download of another version is refused; of this one, served.
    let client = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = client.local_addr().unwrap();
    let mut older = version;
    older.gen = 9;
    rig.send(MasterMsg::Request {
        rid: 6,
        request: Request::Transfer {
            xfer: 78,
            order: TransferOrder::Send {
                path: p("/up"),
                offset: 0,
                version: Some(older),
                rate: None,
                pending: None,
            },
            data: DataConn::Active(addr),
            tls: None,
        },
    })
    .await;
    let (mut data, _) = client.accept().await.unwrap();
    let mut got = Vec::new();
    let _ = data.read_to_end(&mut got).await;
    assert!(got.is_empty());
    assert_eq!(
        rig.next().await,
        SlaveMsg::Reply {
            rid: 6,
            response: Response::FailedAfter {
                failure: link::TransferFailure::NotCurrent,
                bytes: 0
            }
        }
    );
}

#[tokio::test]
async fn the_listener_pool_is_refilled_in_batches_at_half() {
    let mut rig = Rig::start_with_pool(0, 4).await;
    let mut first = None;
    while first.is_none() {
        if let SlaveMsg::Listeners { ready } = rig.next_any().await {
            first = Some(ready);
        }
    }
    let tokens: Vec<u64> = first.unwrap().iter().map(|(t, _)| *t).collect();
    assert_eq!(tokens, [1, 2, 3, 4]);
    // Three left of four: no refill yet. The log entry after the claim is
    // a fence: its acknowledgement comes after anything the claim caused.
    let claim = |token, xfer| MasterMsg::Claim {
        token,
        xfer,
        accept_from: None,
    };
    rig.send(claim(1, 10)).await;
    rig.send(MasterMsg::Log(vec![(
        1,
        FileOp::Delete { path: p("/none") },
    )]))
    .await;
    loop {
        match rig.next_any().await {
            SlaveMsg::Applied { .. } => break,
            SlaveMsg::Listeners { ready } => panic!("refilled after one claim: {ready:?}"),
            _ => {}
        }
    }
    // Two left: refilled to four in one report.
    rig.send(claim(2, 11)).await;
    loop {
        if let SlaveMsg::Listeners { ready } = rig.next_any().await {
            let tokens: Vec<u64> = ready.iter().map(|(t, _)| *t).collect();
            assert_eq!(tokens, [5, 6]);
            break;
        }
    }
}

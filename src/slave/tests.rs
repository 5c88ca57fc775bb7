//! The slave's runtime without a master: the test plays the master on one
//! end of an in-memory link (after the handshake) and the slave runs on the
//! other, over the simulator's in-memory disk.

use std::net::SocketAddr;
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
        age_ms: 0,
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

/// A connection made to a ready listener long before any PASV announced
/// it (an attacker on the client's address, or a port scan) is never the
/// transfer's: the slave closes it at the claim and serves the client that
/// connects after the 227; one closed before the claim is skipped too.
#[tokio::test]
async fn connections_made_before_the_listener_was_announced_are_not_served() {
    let mut rig = Rig::start_with_pool(0, 2).await;
    let ready = loop {
        if let SlaveMsg::Listeners { ready } = rig.next_any().await {
            break ready;
        }
    };
    let (token, addr) = ready[0];
    // Ahead of any PASV: an attacker keeps a connection, a scan closes one.
    let mut early = tokio::net::TcpStream::connect(addr).await.unwrap();
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    tokio::time::sleep(super::ready::CLAIM_SLACK + Duration::from_millis(300)).await;
    // The 227 went out 50 ms before the claim; a scan just after it.
    drop(tokio::net::TcpStream::connect(addr).await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = download_through(&mut rig, token, 10, addr).await;
    assert_eq!(got, b"xx", "the client that came after the 227 is served");
    let mut stolen = Vec::new();
    let _ = early.read_to_end(&mut stolen).await;
    assert!(stolen.is_empty(), "the early connection got {stolen:?}");
}

/// Claims `token` for a download of `/x` by `xfer`, the 227 having gone
/// out 50 ms before, and returns what a client connecting to `addr` reads.
async fn download_through(rig: &mut Rig, token: u64, xfer: u64, addr: SocketAddr) -> Vec<u8> {
    rig.send(MasterMsg::Claim {
        token,
        xfer,
        accept_from: Some("127.0.0.1".parse().unwrap()),
        age_ms: 50,
    })
    .await;
    rig.send(MasterMsg::Request {
        rid: xfer,
        request: Request::Transfer {
            xfer,
            order: TransferOrder::Send {
                path: p("/x"),
                offset: 0,
                version: None,
                rate: None,
                pending: None,
            },
            data: DataConn::Passive,
            tls: None,
        },
    })
    .await;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    got
}

/// A ready listener whose transfer has its connection goes back to the
/// pool and is announced again under a new token (one listening socket
/// fewer opened and closed per file). Whatever connected to it between
/// the two transfers is closed before it is announced again and never
/// serves the next one.
#[tokio::test]
async fn a_listener_is_reused_and_connections_between_its_transfers_are_not_served() {
    let mut rig = Rig::start_with_pool(0, 2).await;
    let ready = loop {
        if let SlaveMsg::Listeners { ready } = rig.next_any().await {
            break ready;
        }
    };
    let (first, reused) = ready[0];
    assert_eq!(download_through(&mut rig, first, 10, reused).await, b"xx");
    // Between two transfers on that port: someone who saw it in a 227.
    let mut lurker = tokio::net::TcpStream::connect(reused).await.unwrap();
    let (second, addr) = ready[1];
    assert_eq!(download_through(&mut rig, second, 11, addr).await, b"xx");
    // The pool fell to half at each claim: at the first, a new listener
    // was opened (nothing was back yet); at the second, the first listener
    // is announced again.
    let mut announced = Vec::new();
    let token = loop {
        if let SlaveMsg::Listeners { ready } = rig.next_any().await {
            announced.extend(ready);
            if let Some((token, _)) = announced.iter().find(|(_, a)| *a == reused) {
                break *token;
            }
            assert!(
                announced.len() < 3,
                "{reused} not announced again: {announced:?}"
            );
        }
    };
    assert!(
        token != first && token != second,
        "a new token: {announced:?}"
    );
    let mut stolen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), lurker.read_to_end(&mut stolen))
        .await
        .expect("the connection made between the transfers is closed");
    assert!(closed.is_err() || stolen.is_empty(), "it got {stolen:?}");
    assert_eq!(download_through(&mut rig, token, 12, reused).await, b"xx");
}

/// The names in `<root>/.dftpd-tmp/` (none when it does not exist).
fn temp_files(root: &std::path::Path) -> Vec<String> {
    match std::fs::read_dir(root.join(super::storage::TEMP_DIR)) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// An upload of `body` received into a real disk's temporary file.
async fn received_on_disk(
    storage: &Arc<dyn Storage>,
    xfer: u64,
    body: &'static [u8],
) -> super::storage::PendingUpload {
    let at = "127.0.0.1:1".parse().unwrap();
    let (mut client, mut input) = pipe(at, at);
    tokio::spawn(async move {
        client.write_all(body).await.unwrap();
        client.shutdown().await.unwrap();
    });
    storage
        .receive(
            &p("/up"),
            None,
            None,
            xfer,
            &mut input,
            Duration::from_secs(5),
        )
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_that_overtakes_the_received_upload_discards_it_at_once() {
    // The master's Abort can reach the waiting room before the transfer
    // task hands it the upload it just received (a client that closes its
    // data connection and sends ABOR at once): the upload must not wait
    // out the grace period (or forever) in `.dftpd-tmp`.
    let root = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(super::storage::DiskStorage::new(root.path()).unwrap());
    let awaiting = Awaiting::new(Duration::from_secs(600));
    let up = received_on_disk(&storage, 41, b"x").await;
    assert_eq!(temp_files(root.path()).len(), 1);
    awaiting.discard(41, &storage).await;
    awaiting.hold(41, up, storage.clone());
    for _ in 0..100 {
        if temp_files(root.path()).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(temp_files(root.path()), Vec::<String>::new());
    // Another transfer is held as before, and commits; so is one whose id
    // was aborted before a new order for it (the master drops the listener
    // it claimed, then relays the same transfer).
    awaiting.discard(42, &storage).await;
    awaiting.forget_abort(42);
    let up = received_on_disk(&storage, 42, b"y").await;
    awaiting.hold(42, up, storage.clone());
    let version = FileVersion {
        store: 1,
        gen: 1,
        size: 1,
        crc32: None,
    };
    let outcome = awaiting.commit(42, &p("/up"), &version, &storage).await;
    assert!(matches!(outcome, OpOutcome::Committed { size: 1, .. }));
    assert_eq!(temp_files(root.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_cancelled_at_any_point_leaves_no_temporary_file() {
    // Cancelled (the master's Abort drops the transfer task) before its
    // temporary file exists, while it is being created, mid-data and while
    // it is synced: nothing may stay behind, also when the blocking
    // thread creating the file outlives the cancelled future.
    let root = tempfile::tempdir().unwrap();
    let storage: Arc<dyn Storage> =
        Arc::new(super::storage::DiskStorage::new(root.path()).unwrap());
    std::fs::create_dir_all(root.path().join(super::storage::TEMP_DIR)).unwrap();
    for i in 0..300u64 {
        let at = "127.0.0.1:1".parse().unwrap();
        let (mut client, mut input) = pipe(at, at);
        let writer = tokio::spawn(async move {
            let _ = client.write_all(&[7u8; 1000]).await;
            // Half the time the client keeps the connection open (mid-data).
            if i % 2 == 0 {
                let _ = client.shutdown().await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let path = p("/up");
        // A boxed future (async_trait): dropped below like the task's.
        let mut receive = storage.receive(&path, None, None, i, &mut input, Duration::from_secs(5));
        // Polled a varying number of times, then dropped.
        let polls = i % 15;
        for _ in 0..polls {
            let step =
                std::future::poll_fn(|cx| std::task::Poll::Ready(receive.as_mut().poll(cx))).await;
            if let std::task::Poll::Ready(r) = step {
                // Finished first: as the transfer task does, discard it.
                storage.discard(&r.unwrap()).await;
                break;
            }
            tokio::task::yield_now().await;
        }
        drop(receive);
        writer.abort();
    }
    // Blocking threads still at work when their futures were dropped
    // finish shortly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(temp_files(root.path()), Vec::<String>::new());
}

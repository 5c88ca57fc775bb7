//! The control driver without sockets: a client on one end of an in-memory
//! pipe, the test playing the slave on a link handle (it reads what the
//! driver sends the slave and answers), the core state in a bare hub.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::ControlSession;
use crate::config::{MasterConfig, UserConfig};
use crate::env::{pipe, BoxStream, Env, FixedClock, TokioNet};
use crate::link::{FileOp, MasterMsg, OpOutcome, Request, Response, TransferOrder};
use crate::master::db::{FileMeta, Holders};
use crate::master::hub::{Hub, Outbound, PendingReplies, SlaveLink};
use crate::master::registry::SlaveState;
use crate::master::session::Session;
use crate::master::{commit, users, MasterState, Shared};
use crate::proto::VPath;

const CLIENT: &str = "127.0.0.1:40000";
const LOCAL: &str = "127.0.0.1:21";

fn p(s: &str) -> VPath {
    VPath::parse_absolute(s).unwrap()
}

/// A master with one online slave `s1` (two ready passive listeners,
/// /a.bin of 3 bytes, /big.bin of 1 MiB) and the user u/p; the slave's
/// side of its link.
struct Rig {
    hub: Shared,
    link: mpsc::UnboundedReceiver<Outbound>,
    /// Messages of a write not taken yet.
    inbox: VecDeque<MasterMsg>,
    pending: PendingReplies,
    client: BufReader<BoxStream>,
    /// The ports of the slave's two ready listeners: free on 127.0.0.1
    /// when the rig starts (the master listens at its own address on the
    /// announced port too), distinct for tests running at once.
    ports: [u16; 2],
}

/// Two ports free on 127.0.0.1 now.
fn free_ports() -> [u16; 2] {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    [
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    ]
}

/// How a PASV reply writes 127.0.0.11 at `port`.
fn pasv_at(port: u16) -> String {
    format!("(127,0,0,11,{},{})", port >> 8, port & 0xff)
}

impl Rig {
    async fn start() -> Rig {
        let ports = free_ports();
        let cfg = MasterConfig {
            users: vec![UserConfig {
                name: "u".into(),
                password: "p".into(),
                home: "/".into(),
                ..Default::default()
            }],
            password_cost: users::PasswordCost::FAST,
            allow_overwrite: true,
            ..MasterConfig::default()
        };
        let mut st = MasterState::new(Arc::new(cfg));
        let s1 = st.slaves.id_for("s1");
        let info = st.slaves.get_mut(s1).unwrap();
        info.state = SlaveState::Online;
        info.data_ip = Some("127.0.0.11".parse().unwrap());
        info.free = 1 << 30;
        info.ready_listeners
            .push_back((1, SocketAddr::from(([127, 0, 0, 11], ports[0]))));
        info.ready_listeners
            .push_back((2, SocketAddr::from(([127, 0, 0, 11], ports[1]))));
        for (path, size) in [("/a.bin", 3), ("/big.bin", 1 << 20)] {
            st.db
                .put_file(
                    &p(path),
                    FileMeta {
                        size,
                        mtime: 0,
                        owner: 0,
                        group: 0,
                        crc32: None,
                        version: 1,
                        holders: Holders::from_slice(&[s1]),
                    },
                )
                .unwrap();
        }
        let hub = Hub::bare(st);
        let (tx, link) = mpsc::unbounded_channel();
        let pending = PendingReplies::default();
        hub.lock()
            .links
            .insert(s1, SlaveLink::new(1, tx, pending.clone()));
        let env = Env::new(Arc::new(TokioNet), Arc::new(FixedClock(0.into())), 1);
        let (client, server) = pipe(CLIENT.parse().unwrap(), LOCAL.parse().unwrap());
        let session = Session::new(
            7,
            CLIENT.parse::<SocketAddr>().unwrap(),
            LOCAL.parse().unwrap(),
        );
        let stop = hub.register_session(session.id);
        tokio::spawn(ControlSession::new(env, hub.clone(), server, session, stop).run(None));
        let mut rig = Rig {
            hub,
            link,
            inbox: VecDeque::new(),
            pending,
            client: BufReader::new(client),
            ports,
        };
        assert!(rig.reply().await.starts_with("220"));
        assert!(rig.cmd("USER u").await.starts_with("331"));
        assert!(rig.cmd("PASS p").await.starts_with("230"));
        rig
    }

    async fn reply(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.client.read_line(&mut line))
            .await
            .expect("a reply in time")
            .unwrap();
        line.trim_end().to_string()
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.send(line).await;
        self.reply().await
    }

    async fn send(&mut self, line: &str) {
        let w = self.client.get_mut();
        w.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    }

    /// The next message the driver sent the slave.
    async fn sent_to_slave(&mut self) -> MasterMsg {
        if let Some(m) = self.inbox.pop_front() {
            return m;
        }
        let mut batch = self.sent_together().await.into_iter();
        let first = batch.next().expect("a message");
        self.inbox.extend(batch);
        first
    }

    /// The messages of the driver's next write to the slave's link.
    async fn sent_together(&mut self) -> Vec<MasterMsg> {
        assert!(self.inbox.is_empty(), "messages left: {:?}", self.inbox);
        tokio::time::timeout(Duration::from_secs(10), self.link.recv())
            .await
            .expect("a message to the slave")
            .expect("link open")
            .into_vec()
    }

    /// The transfer order that follows a data command, sent together with
    /// the claim of the ready listener `token`; returns the order's request
    /// id and transfer id.
    async fn order(&mut self, token: u64) -> (u64, u64, TransferOrder) {
        let batch = self.sent_together().await;
        match &batch[..] {
            [MasterMsg::Claim {
                token: t,
                xfer: claimed,
                ..
            }, MasterMsg::Request {
                rid,
                request: Request::Transfer { xfer, order, .. },
            }] if *t == token && claimed == xfer => (*rid, *xfer, order.clone()),
            other => panic!("expected the claim and the order in one write, got {other:?}"),
        }
    }

    /// The bytes the client has received, without waiting.
    fn received_now(&mut self) -> Vec<u8> {
        let mut got = self.client.buffer().to_vec();
        let mut buf = [0u8; 4096];
        while let Some(Ok(n)) = super::data::poll_once(self.client.get_mut().read(&mut buf)) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// Answers request `rid` as the slave.
    fn answer(&self, rid: u64, response: Response) {
        let w = self.pending.lock().unwrap().remove(&rid).expect("a waiter");
        let _ = w.send(response);
    }

    /// As the link server does with an `Applied` from the slave.
    fn applied(&self, seq: u64, outcome: OpOutcome) {
        let mut st = self.hub.lock();
        st.slaves.acked(0, seq);
        commit::acked(&mut st, 0, seq, &outcome);
        self.hub.commit_acked(0, seq, &outcome);
    }

    /// PRET and PASV: the first ready listener (127.0.0.11, `ports[0]`) is
    /// announced; its claim waits for the data command.
    async fn plan(&mut self, line: &str) {
        assert!(self.cmd(&format!("PRET {line}")).await.starts_with("200"));
        let pasv = self.cmd("PASV").await;
        assert!(pasv.contains(&pasv_at(self.ports[0])), "{pasv}");
        let early = tokio::time::timeout(Duration::from_millis(20), self.link.recv()).await;
        assert!(early.is_err(), "sent before the data command: {early:?}");
    }
}

#[tokio::test]
async fn a_download_is_ordered_on_the_slave_and_answered_226() {
    let mut rig = Rig::start().await;
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let (rid, _, order) = rig.order(1).await;
    assert!(matches!(
        order,
        TransferOrder::Send { version: Some(v), .. } if v.gen == 1
    ));
    assert!(rig.reply().await.starts_with("150"));
    rig.answer(rid, Response::Sent { bytes: 3 });
    assert_eq!(rig.reply().await, "226 Transfer complete, 3 bytes from s1");
    assert_eq!(rig.hub.lock().slaves.get(0).unwrap().bytes_sent, 3);
}

#[tokio::test]
async fn an_upload_commits_through_the_log_and_waits_for_the_acknowledgement() {
    let mut rig = Rig::start().await;
    rig.plan("STOR /new.bin").await;
    rig.send("STOR /new.bin").await;
    let (rid, _, _) = rig.order(1).await;
    assert!(rig.reply().await.starts_with("150"));
    rig.answer(
        rid,
        Response::Received {
            bytes: 5,
            size: 5,
            crc32: 0xabc,
        },
    );
    // The commit decision: recorded at once with its owner, and a Commit
    // entry on the slave's log.
    let MasterMsg::Log(entries) = rig.sent_to_slave().await else {
        panic!("expected the commit entry")
    };
    let (seq, FileOp::Commit { path, version, .. }) = entries[0].clone() else {
        panic!("{entries:?}")
    };
    assert_eq!(path, p("/new.bin"));
    assert_eq!(version.size, 5);
    {
        let st = rig.hub.lock();
        let f = st.db.file(&p("/new.bin")).unwrap();
        assert_eq!(st.db.name(f.owner), "u");
    }
    // No 226 before the slave acknowledges.
    let early = tokio::time::timeout(Duration::from_millis(100), rig.reply()).await;
    assert!(early.is_err(), "226 before the commit was acknowledged");
    rig.applied(seq, OpOutcome::Committed { size: 5, mtime: 42 });
    assert_eq!(
        rig.reply().await,
        "226 Transfer complete, 5 bytes stored on s1"
    );
    assert_eq!(rig.hub.lock().db.file(&p("/new.bin")).unwrap().mtime, 42);
}

#[tokio::test]
async fn abor_cancels_the_slave_and_gets_both_replies() {
    let mut rig = Rig::start().await;
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let (rid, xfer, _) = rig.order(1).await;
    assert!(rig.reply().await.starts_with("150"));
    rig.send("ABOR").await;
    assert!(matches!(rig.sent_to_slave().await, MasterMsg::Abort { xfer: x } if x == xfer));
    rig.answer(rid, Response::Failed(crate::link::TransferFailure::Aborted));
    assert!(rig.reply().await.starts_with("426"));
    assert_eq!(rig.reply().await, "226 ABOR command successful");
    assert_eq!(rig.cmd("NOOP").await, "200 NOOP ok");
}

#[tokio::test]
async fn a_lost_slave_ends_a_running_transfer_with_426() {
    let mut rig = Rig::start().await;
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    rig.order(1).await;
    assert!(rig.reply().await.starts_with("150"));
    // The link goes: every waiter sees it.
    rig.pending.lock().unwrap().clear();
    let r = rig.reply().await;
    assert!(r.starts_with("426") && r.contains("went offline"), "{r}");
}

#[tokio::test]
async fn a_small_downloads_150_leaves_with_its_226_in_one_write() {
    let mut rig = Rig::start().await;
    // Time stands still unless every task waits: the hold cannot run out
    // while the test looks.
    tokio::time::pause();
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let (rid, _, _) = rig.order(1).await;
    assert!(
        rig.received_now().is_empty(),
        "150 sent before the transfer ended"
    );
    rig.answer(rid, Response::Sent { bytes: 3 });
    let mut first = String::new();
    rig.client.read_line(&mut first).await.unwrap();
    assert!(first.starts_with("150"), "{first}");
    // The 226 came in the same write: already buffered.
    let rest = String::from_utf8(rig.received_now()).unwrap();
    assert_eq!(rest, "226 Transfer complete, 3 bytes from s1\r\n");
}

#[tokio::test]
async fn a_held_150_goes_out_alone_when_the_slave_takes_longer() {
    let mut rig = Rig::start().await;
    tokio::time::pause();
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let (rid, _, _) = rig.order(1).await;
    let before = tokio::time::Instant::now();
    assert!(rig.reply().await.starts_with("150"));
    assert!(before.elapsed() >= super::HOLD_OPENING);
    rig.answer(rid, Response::Sent { bytes: 3 });
    assert_eq!(rig.reply().await, "226 Transfer complete, 3 bytes from s1");
}

#[tokio::test]
async fn a_large_downloads_150_is_not_held() {
    let mut rig = Rig::start().await;
    tokio::time::pause();
    rig.plan("RETR /big.bin").await;
    rig.send("RETR /big.bin").await;
    let (rid, _, _) = rig.order(1).await;
    // Sent before the transfer order was even read: no waiting.
    let now = String::from_utf8(rig.received_now()).unwrap();
    assert!(now.starts_with("150"), "{now:?}");
    rig.answer(rid, Response::Sent { bytes: 1 << 20 });
    assert!(rig.reply().await.starts_with("226"));
}

#[tokio::test]
async fn an_unused_claim_is_sent_with_its_release() {
    let mut rig = Rig::start().await;
    rig.plan("RETR /a.bin").await;
    // A new PASV replaces the endpoint: the slave must release the listener
    // it opened ahead, so the claim goes with the abort.
    assert!(rig.cmd("PASV").await.starts_with("227"));
    let batch = rig.sent_together().await;
    assert!(
        matches!(
            &batch[..],
            [MasterMsg::Claim { token: 1, xfer, .. }, MasterMsg::Abort { xfer: a }] if xfer == a
        ),
        "{batch:?}"
    );
}

#[tokio::test]
async fn a_catch_listener_even_after_the_client_used_the_announced_address() {
    let mut rig = Rig::start().await;
    let own = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port));
    rig.plan("RETR /a.bin").await;
    // The master listens at its own address, announced port (a client
    // that ignores the 227 address lands there).
    assert!(own(rig.ports[0]).is_err(), "no catch listener at 127.0.0.1");
    rig.send("RETR /a.bin").await;
    let (rid, _, _) = rig.order(1).await;
    // The slave served it: the client connected where the 227 said.
    rig.answer(rid, Response::Sent { bytes: 3 });
    assert!(rig.reply().await.starts_with("150"));
    assert!(rig.reply().await.starts_with("226"));
    assert!(rig.cmd("PRET RETR /a.bin").await.starts_with("200"));
    let pasv = rig.cmd("PASV").await;
    assert!(pasv.contains(&pasv_at(rig.ports[1])), "{pasv}");
    // A client may ignore the 227 address later in the same session (or
    // be another program behind one address): it is still caught.
    assert!(
        own(rig.ports[1]).is_err(),
        "no catch listener after a direct transfer"
    );
}

#[tokio::test]
async fn a_claim_never_reaches_a_slave_process_that_restarted_since_the_pasv() {
    let mut rig = Rig::start().await;
    // PASV hands out listener 1 of the slave process on link 1.
    rig.plan("RETR /a.bin").await;
    // That process dies and another connects (link 2): its listener 1 is
    // another socket, maybe on the port this client connected to.
    let (tx, mut second) = mpsc::unbounded_channel();
    {
        let mut st = rig.hub.lock();
        let s1 = st.slaves.id_for("s1");
        st.links
            .insert(s1, SlaveLink::new(2, tx, PendingReplies::default()));
    }
    let mut r = rig.cmd("RETR /a.bin").await;
    if r.starts_with("150") {
        r = rig.reply().await;
    }
    assert!(r.starts_with('4'), "{r}");
    assert!(
        second.try_recv().is_err(),
        "a claim or order went to the new slave process"
    );
}

#[tokio::test]
async fn a_pasv_skips_a_slave_port_the_master_cannot_also_listen_on() {
    let mut rig = Rig::start().await;
    // Another program holds the master's address at the port of the
    // slave's first ready listener: a client that ignores the 227 address
    // would be refused there, so the second listener is announced.
    let _taken = std::net::TcpListener::bind(("127.0.0.1", rig.ports[0])).unwrap();
    assert!(rig.cmd("PRET RETR /a.bin").await.starts_with("200"));
    let pasv = rig.cmd("PASV").await;
    assert!(pasv.contains(&pasv_at(rig.ports[1])), "{pasv}");
    // The first is released on the slave (its claim with an abort).
    let batch = rig.sent_together().await;
    assert!(
        matches!(
            &batch[..],
            [MasterMsg::Claim { token: 1, xfer, .. }, MasterMsg::Abort { xfer: a }] if xfer == a
        ),
        "{batch:?}"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", rig.ports[1])).is_err(),
        "no catch listener at the announced port"
    );
}

/// The catch listener at a slave's port is kept between transfers (slaves
/// reuse their ports), and a connection made to it between two transfers
/// is closed before the port is announced again: it is neither served nor
/// taken for a client that ignored the 227 address.
#[tokio::test]
async fn a_catch_listener_is_kept_between_transfers_and_drained_before_reuse() {
    let mut rig = Rig::start().await;
    rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let (rid, _, _) = rig.order(1).await;
    rig.answer(rid, Response::Sent { bytes: 3 });
    assert!(rig.reply().await.starts_with("150"));
    assert!(rig.reply().await.starts_with("226"));
    assert_eq!(rig.hub.idle_catch.len(), 1, "kept for the port's next use");
    // Between the transfers, at the master's address and that port.
    let mut lurker = tokio::net::TcpStream::connect(("127.0.0.1", rig.ports[0]))
        .await
        .unwrap();
    // The slave announces the same port again, under a new token.
    rig.hub
        .lock()
        .slaves
        .get_mut(0)
        .unwrap()
        .ready_listeners
        .push_front((3, SocketAddr::from(([127, 0, 0, 11], rig.ports[0]))));
    rig.plan("RETR /a.bin").await;
    assert!(rig.hub.idle_catch.is_empty(), "the kept listener is in use");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), lurker.read_to_end(&mut got))
        .await
        .expect("closed when the port was announced again");
    assert!(closed.is_err() || got.is_empty(), "{got:?}");
    rig.send("RETR /a.bin").await;
    let (rid, _, _) = rig.order(3).await;
    assert!(rig.reply().await.starts_with("150"), "not caught");
    rig.answer(rid, Response::Sent { bytes: 3 });
    assert!(rig.reply().await.starts_with("226"));
}

//! The control driver without sockets: a client on one end of an in-memory
//! pipe, the test playing the slave on a link handle (it reads what the
//! driver sends the slave and answers), the core state in a bare hub.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use super::ControlSession;
use crate::config::{MasterConfig, UserConfig};
use crate::env::{pipe, BoxStream, Env, FixedClock, TokioNet};
use crate::link::{FileOp, MasterMsg, OpOutcome, Request, Response, TransferOrder};
use crate::master::db::{FileMeta, Holders};
use crate::master::hub::{Hub, PendingReplies, SlaveLink};
use crate::master::registry::SlaveState;
use crate::master::session::Session;
use crate::master::{commit, users, MasterState, Shared};
use crate::proto::VPath;

const CLIENT: &str = "127.0.0.1:40000";
const LOCAL: &str = "127.0.0.1:21";

fn p(s: &str) -> VPath {
    VPath::parse_absolute(s).unwrap()
}

/// A master with one online slave `s1` (a ready passive listener, /a.bin of
/// 3 bytes) and the user u/p; the slave's side of its link.
struct Rig {
    hub: Shared,
    link: mpsc::UnboundedReceiver<MasterMsg>,
    pending: PendingReplies,
    client: BufReader<BoxStream>,
}

impl Rig {
    async fn start() -> Rig {
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
            .push_back((1, "127.0.0.11:5000".parse().unwrap()));
        st.db
            .put_file(
                &p("/a.bin"),
                FileMeta {
                    size: 3,
                    mtime: 0,
                    owner: 0,
                    group: 0,
                    crc32: None,
                    version: 1,
                    holders: Holders::from_slice(&[s1]),
                },
            )
            .unwrap();
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
            pending,
            client: BufReader::new(client),
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
        tokio::time::timeout(Duration::from_secs(10), self.link.recv())
            .await
            .expect("a message to the slave")
            .expect("link open")
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

    async fn plan(&mut self, line: &str) -> u64 {
        assert!(self.cmd(&format!("PRET {line}")).await.starts_with("200"));
        let pasv = self.cmd("PASV").await;
        assert!(pasv.contains("(127,0,0,11,19,136)"), "{pasv}");
        match self.sent_to_slave().await {
            MasterMsg::Claim { token: 1, xfer, .. } => xfer,
            other => panic!("expected a claim of the ready listener, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_download_is_ordered_on_the_slave_and_answered_226() {
    let mut rig = Rig::start().await;
    let xfer = rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let MasterMsg::Request {
        rid,
        request: Request::Transfer { xfer: x, order, .. },
    } = rig.sent_to_slave().await
    else {
        panic!("expected the transfer order")
    };
    assert_eq!(x, xfer);
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
    let MasterMsg::Request { rid, .. } = rig.sent_to_slave().await else {
        panic!("expected the transfer order")
    };
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
    let xfer = rig.plan("RETR /a.bin").await;
    rig.send("RETR /a.bin").await;
    let MasterMsg::Request { rid, .. } = rig.sent_to_slave().await else {
        panic!("expected the transfer order")
    };
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
    let MasterMsg::Request { .. } = rig.sent_to_slave().await else {
        panic!("expected the transfer order")
    };
    assert!(rig.reply().await.starts_with("150"));
    // The link goes: every waiter sees it.
    rig.pending.lock().unwrap().clear();
    let r = rig.reply().await;
    assert!(r.starts_with("426") && r.contains("went offline"), "{r}");
}

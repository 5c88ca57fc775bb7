//! The master's drivers: [`control`] runs one FTP control connection,
//! [`link_server`] one slave link, [`store`] the durable metadata store,
//! [`record`] session recordings; [`hub`] is the shared state they hold and
//! [`start`] ties them together on an [`crate::env::Env`]. Every decision
//! is made by the IO-free core (`dftpd_core::master`, re-exported here).

pub mod control;
pub mod hub;
pub mod lifecycle;
pub mod link_server;
pub mod record;
pub mod replicator;
pub mod start;
pub mod store;

pub use dftpd_core::master::{
    commit, copy, db, fleet, guard, observe, registry, remerge, replica, session, transfer, users,
    users_from_config, MasterState, SessionInfo,
};
pub use hub::{lock, Core, Hub, Shared, SlaveLink, Stop};
pub use start::{Master, MasterTls};

//! dftpd: a distributed FTP daemon. One master speaks FTP to clients and
//! owns the file database; many slaves store the files and move the bytes
//! of every transfer directly to and from clients. See ARCHITECTURE.md.

//!
//! The decisions live in the IO-free `dftpd_core` crate (re-exported here
//! as [`proto`] and [`config`], and inside [`master`] and [`link`]); this
//! crate holds the drivers that perform them on tokio, the real disk and
//! rustls.

pub use dftpd_core::{config, proto};

pub mod cluster;
pub mod env;
pub mod link;
pub mod master;
pub mod ops;
pub mod slave;
pub mod tls;

//! dftpd: a distributed FTP daemon. One master speaks FTP to clients and
//! owns the file database; many slaves store the files and move the bytes
//! of every transfer directly to and from clients. See ARCHITECTURE.md.

pub mod cluster;
pub mod config;
pub mod env;
pub mod link;
pub mod master;
pub mod ops;
pub mod proto;
pub mod slave;
pub mod tls;

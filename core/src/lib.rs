//! dftpd's IO-free core. Everything here is plain data and functions: the
//! FTP wire format ([`proto`]), the master<->slave messages ([`link`]), the
//! configuration ([`config`]), and the master's decisions ([`master`]): the
//! session state machine, PRET planning, slave selection, the transfer
//! machine, the file database, users and permissions.
//!
//! The crate's dependencies keep it that way: no tokio, no rustls, no redb.
//! Drivers in the `dftpd` crate (tokio) and in `dftpd-sim` (turmoil) feed it
//! inputs and perform the effects it returns.

pub mod config;
pub mod link;
pub mod master;
pub mod proto;

//! The FTP protocol layer, kept free of I/O so every rule can be tested on
//! its own: framing of the control connection (RFC 959 §4, RFC 854 Telnet
//! IAC handling), parsing of commands (RFC 959 §4-5, RFC 2389, RFC 2428,
//! RFC 3659, the DrFTPD `PRET` extension), formatting of replies
//! (RFC 959 §4.2), PASV/EPSV/EPRT address syntax, directory listings
//! (`ls -l` style and RFC 3659 §7 facts) and the virtual path type through
//! which every client-supplied file name passes before it reaches storage.

pub mod addr;
pub mod command;
pub mod error;
pub mod line;
pub mod listing;
pub mod path;
pub mod reply;

pub use command::{Command, EpsvArg, ListArgs, ParseError, TransferType};
pub use line::{Line, LineDecoder};
pub use path::{PathError, VPath};
pub use reply::Reply;

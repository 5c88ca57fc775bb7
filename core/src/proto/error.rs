//! Why a command line could not be parsed, and the reply code for it.
//! Shared by the command parser and the address parsers (PORT, EPRT).

/// Why a line is not a usable command; [`ParseError::code`] is the reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("empty command line")]
    Empty,
    #[error("'{0}' not understood")]
    Unknown(String),
    #[error("{verb}: {reason}")]
    BadArgument { verb: &'static str, reason: String },
    #[error("{verb}: {reason}")]
    NotImplemented { verb: &'static str, reason: String },
    #[error("EPRT network protocol not supported, use (1,2)")]
    UnsupportedProtocol,
}

impl ParseError {
    /// The reply code for this error (RFC 959 §4.2.1, RFC 2428 §2).
    pub fn code(&self) -> u16 {
        match self {
            ParseError::Empty | ParseError::Unknown(_) => 500,
            ParseError::BadArgument { .. } => 501,
            ParseError::NotImplemented { .. } => 504,
            ParseError::UnsupportedProtocol => 522,
        }
    }
}

//! The tree service: what every request to the filesystem means, free of
//! the FUSE protocol.

pub mod error;
pub mod input;

pub use error::{Error, Result};

impl From<crate::moving::Error> for Error {
    /// A move's failure, as the same request error it always was.
    fn from(e: crate::moving::Error) -> Error {
        use crate::moving::Error as M;
        match e {
            M::Move(e) => Error::Move(e),
            M::Ns(e) => Error::Ns(e),
            M::Refused { errno, reason } => Error::Refused { errno, reason },
            M::Denied(why) => Error::Denied(why),
            M::Invalid(why) => Error::Invalid(why),
            M::Sys { what, source } => Error::Sys { what, source },
        }
    }
}

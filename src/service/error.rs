//! The errors of filesystem requests and the errno each one becomes.

use std::io;

use thiserror::Error;

use super::input::InputError;
use crate::ns::NsError;
use crate::tree::TreeError;

/// Why a request was refused or failed.
#[derive(Debug, Error)]
pub enum Error {
    /// The tree refused the change.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A namespace could not be found, opened or made.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// A move failed; the process was left as it was.
    #[error(transparent)]
    Move(#[from] crate::mover::MoveError),
    /// The injector refused or failed a move (its errno and reason).
    #[error("{reason}")]
    Refused {
        /// The errno to pass on.
        errno: i32,
        /// Why, as the injector said it.
        reason: String,
    },
    /// The written text is not understood.
    #[error("bad input: {0}")]
    Input(#[from] InputError),
    /// The caller may not do this.
    #[error("not permitted: {0}")]
    Denied(String),
    /// No such node, or a node that went away.
    #[error("no such file or container")]
    NotFound,
    /// The request makes no sense for this node.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A directory where a file was expected.
    #[error("is a container directory")]
    IsDir,
    /// A file where a directory was expected.
    #[error("not a container directory")]
    NotDir,
    /// A feature this build or machine lacks.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A system call failed; its errno is passed on.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

impl Error {
    /// The errno the caller sees.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Tree(e) => match e {
                TreeError::NotFound => libc::ENOENT,
                TreeError::Exists => libc::EEXIST,
                TreeError::NotEmpty => libc::ENOTEMPTY,
                TreeError::InvalidName(_) | TreeError::KindMismatch { .. } => libc::EINVAL,
                TreeError::Root | TreeError::Discovered => libc::EPERM,
                TreeError::TooDeep => libc::EMLINK,
            },
            Error::Ns(e) => e.errno(),
            Error::Move(e) => e.errno() as i32,
            Error::Refused { errno, .. } => *errno,
            Error::Input(_) | Error::Invalid(_) => libc::EINVAL,
            Error::Denied(_) => libc::EPERM,
            Error::NotFound => libc::ENOENT,
            Error::IsDir => libc::EISDIR,
            Error::NotDir => libc::ENOTDIR,
            Error::Unsupported(_) => libc::EOPNOTSUPP,
            Error::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

/// A request's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

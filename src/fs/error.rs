//! The errors of filesystem requests (their errnos: [`crate::errno::of`]).

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
    /// No answer came from the injector that was to run a move.
    #[error(transparent)]
    Injector(#[from] crate::injector::InjectorError),
    /// As many moves as may run at once are running.
    #[error("{limit} {what} are in flight already")]
    Busy {
        /// How many may run at once.
        limit: usize,
        /// What is running.
        what: &'static str,
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

/// A request's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

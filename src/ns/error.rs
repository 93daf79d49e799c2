//! Why a namespace could not be obtained, and why a recorded one could
//! not be opened again.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::Kind;
use super::creds;
use super::resolve;

/// What a namespace was taken from, as errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, by its path.
    Path(PathBuf),
    /// A process, by its pid (as the writer wrote it).
    Process(i32),
    /// Something else, in words.
    Other(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Path(path) => write!(f, "{}", path.display()),
            Origin::Process(pid) => write!(f, "process {pid}"),
            Origin::Other(what) => f.write_str(what),
        }
    }
}

/// Why a namespace could not be obtained.
#[derive(Debug, Error)]
pub enum NsError {
    /// No process with that pid in the writer's pid namespace.
    #[error("no process {0} in the writer's pid namespace")]
    NoSuchProcess(i32),
    /// The file is a namespace of another kind.
    #[error("{origin} is a {found} namespace, not {wanted}")]
    WrongKind {
        /// What was opened.
        origin: Origin,
        /// The kind it is.
        found: Kind,
        /// The kind wanted.
        wanted: Kind,
    },
    /// The file is not a namespace file at all.
    #[error("{0} is not a namespace file")]
    NotANamespace(Origin),
    /// Opening the path failed.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path, as written.
        path: PathBuf,
        /// What open(2) said.
        source: io::Error,
    },
    /// Opening the path did not end in time.
    #[error(
        "cannot open {}: no answer within {} s (a filesystem on the way does not respond)",
        .0.display(),
        resolve::LIMIT.as_secs()
    )]
    TimedOut(PathBuf),
    /// The kernel refused to make a fresh namespace.
    #[error("cannot create a fresh {kind} namespace: {source}")]
    Fresh {
        /// The kind asked for.
        kind: Kind,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A written path leads where no namespace file can be.
    #[error("{}: refused, {why}", path.display())]
    Refused {
        /// The path, as written.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The kernel refuses the caller the namespace of a process.
    #[error(
        "not permitted: the kernel refuses uid {uid} access to the {kind} namespace of process {pid}"
    )]
    Denied {
        /// The caller's fsuid.
        uid: u32,
        /// The kind asked for.
        kind: Kind,
        /// The process, as the writer wrote it.
        pid: i32,
    },
    /// Acting with the caller's credentials failed.
    #[error("{what}: {source}")]
    Creds {
        /// What was being done.
        what: &'static str,
        /// Why it could not be.
        source: creds::CredsError,
    },
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// Why a namespace a previous daemon recorded cannot be taken back.
#[derive(Debug, Error)]
pub enum ReopenError {
    /// Its keeper has exited.
    #[error("its {role} process {pid} has exited")]
    KeeperGone {
        /// What the keeper was: `init` or `holder`.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// Its keeper has exited and the pid names another process now.
    #[error("its {role} process {pid} has exited (the pid now names another process)")]
    KeeperReplaced {
        /// What the keeper was.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// Its keeper was told to leave.
    #[error(
        "its {role} process {pid} is leaving (it was told to, or lost the daemon before the \
         namespace was recorded) and will exit with the namespace's last process"
    )]
    KeeperLeaving {
        /// What the keeper was.
        role: &'static str,
        /// Its pid.
        pid: i32,
    },
    /// The process is no keeper.
    #[error("process {pid} is not its {role} any more")]
    NotKeeper {
        /// What the keeper was.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// The keeper's namespace could not be read.
    #[error("{0}")]
    Inode(io::Error),
    /// The keeper sits in another namespace.
    #[error("its {role} process {pid} sits in {kind}:[{found}], not in this namespace")]
    KeeperElsewhere {
        /// What the keeper was.
        role: &'static str,
        /// Its pid.
        pid: i32,
        /// The kind.
        kind: Kind,
        /// The inode it is in.
        found: u64,
    },
    /// The pin is missing.
    #[error("its pin {} is missing", .0.display())]
    PinMissing(PathBuf),
    /// The pin is a symbolic link.
    #[error("its pin {} is a symbolic link", .0.display())]
    PinSymlink(PathBuf),
    /// The pin could not be opened.
    #[error("its pin {} cannot be opened: {source}", path.display())]
    PinOpen {
        /// The pin.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The pin is no namespace of that kind.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// The pin holds another namespace.
    #[error("its pin {} now holds {kind}:[{found}], another namespace", path.display())]
    PinReplaced {
        /// The pin.
        path: PathBuf,
        /// The kind.
        kind: Kind,
        /// The inode it holds.
        found: u64,
    },
}

pub(super) fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> NsError {
    move |source| NsError::Sys { what, source }
}

//! The errors of filesystem requests (their errnos: [`crate::errno::of`]).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::input::InputError;
use crate::ns::creds::CredsError;
use crate::ns::{Kind, NsError};
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
    Move(#[from] crate::transfer::MoveError),
    /// No answer came from the injector that was to run a move.
    #[error(transparent)]
    Injector(#[from] crate::injector::InjectorError),
    /// Cgroups could not be read, reached or joined.
    #[error(transparent)]
    Cgroup(#[from] crate::cgroup::CgroupError),
    /// A cgroup a move would join is frozen (a paused container): the
    /// process would stop there.
    #[error("{0} is frozen: a process moved into it would stop there")]
    Frozen(crate::cgroup::Cgroup),
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
    Denied(Denied),
    /// No such node, or a node that went away.
    #[error("no such file or container")]
    NotFound,
    /// The request makes no sense for this node.
    #[error("invalid: {0}")]
    Invalid(Invalid),
    /// A directory where a file was expected.
    #[error("is a container directory")]
    IsDir,
    /// A file where a directory was expected.
    #[error("not a container directory")]
    NotDir,
    /// A feature this build or machine lacks, or a limit reached.
    #[error("not supported: {0}")]
    Unsupported(&'static str),
    /// A check with the caller's credentials could not be made.
    #[error("{what}: {source}")]
    Creds {
        /// What was being checked.
        what: &'static str,
        /// Why it could not be.
        source: CredsError,
    },
    /// A system call failed; its errno is passed on.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// Why the caller may not do what it asks ([`Error::Denied`]).
#[derive(Debug, Error)]
pub enum Denied {
    /// A rule of the tree that holds for every caller.
    #[error("{0}")]
    Rule(&'static str),
    /// The caller's pid namespace cannot see the daemon.
    #[error("the caller's pid namespace cannot see the daemon, so it cannot be identified")]
    Unidentified,
    /// The caller's thread exited meanwhile.
    #[error("caller {0} is gone")]
    CallerGone(u32),
    /// The caller lacks `CAP_SYS_ADMIN`, which every change of the tree
    /// needs.
    #[error("caller {tid} (uid {uid}) lacks CAP_SYS_ADMIN")]
    NotAdmin {
        /// The caller's thread.
        tid: u32,
        /// Its fsuid.
        uid: u32,
    },
    /// The caller holds a capability only in a user namespace below the
    /// daemon's.
    #[error("caller {tid} holds {cap} only in a user namespace below the daemon's")]
    CapBelow {
        /// The caller's thread.
        tid: u32,
        /// The capability.
        cap: &'static str,
    },
    /// The kernel would not let the caller attach to a thread of the
    /// process.
    #[error(
        "the kernel refuses caller {tid} (uid {uid}, gid {gid}) ptrace access to process {pid} \
         (thread {thread}): {}",
        io::Error::from_raw_os_error(*errno)
    )]
    Ptrace {
        /// The caller's thread.
        tid: u32,
        /// Its real uid.
        uid: u32,
        /// Its real gid.
        gid: u32,
        /// The process.
        pid: i32,
        /// The thread refused.
        thread: i32,
        /// What the kernel said.
        errno: i32,
    },
    /// Kernel threads cannot be traced.
    #[error("process {0} is a kernel thread")]
    KernelThread(i32),
    /// The process is in no container of the caller's view.
    #[error("process {0} lives outside the caller's container")]
    ProcessOutside(i32),
    /// The container is outside the caller's view (its path).
    #[error("{} is outside the caller's container", .0.display())]
    ContainerOutside(PathBuf),
    /// The process is the daemon, which only a tracer may read.
    #[error("process {0} is the daemon, which the caller may not read")]
    Daemon(i32),
    /// The process is one of the daemon's helpers.
    #[error("process {0} is one of the daemon's own helpers")]
    Helper(i32),
    /// The namespaces of the process cannot be read.
    #[error("cannot read the namespaces of process {pid}: {source}")]
    Unreadable {
        /// The process.
        pid: i32,
        /// Why.
        source: io::Error,
    },
    /// A control file: part of every container, not to be removed.
    #[error("{0} is part of every container")]
    ControlFile(&'static str),
    /// A read-only file.
    #[error("{0} is read-only")]
    ReadOnly(&'static str),
    /// A namespace bound by the root container.
    #[error("{kind}:[{ino}] is bound by the root container, whose bindings are read-only")]
    RootBinding {
        /// Its kind.
        kind: Kind,
        /// Its inode.
        ino: u64,
    },
}

/// Why a request makes no sense ([`Error::Invalid`]).
#[derive(Debug, Error)]
pub enum Invalid {
    /// A rule of the tree that holds for every request.
    #[error("{0}")]
    Rule(&'static str),
    /// A namespace linked under the name of another kind.
    #[error("a {kind} namespace cannot be linked under the name {name}")]
    LinkName {
        /// The namespace's kind.
        kind: Kind,
        /// The kind it was to be named.
        name: Kind,
    },
    /// A kind namespace renamed to something that is not its kind's name.
    #[error("a {kind} namespace can only be renamed to {kind}, not {to:?}")]
    RenameKind {
        /// Its kind.
        kind: Kind,
        /// The new name asked for.
        to: String,
    },
    /// A file of a container renamed as if it were a container (its name).
    #[error("{0} is a file of the container, not a container")]
    NotAContainer(String),
    /// A file created under a name that is no kind's (the name).
    #[error("{0:?} is not a namespace kind: only kind files can be created in a container")]
    NotAKind(String),
    /// The process's pid namespace cannot see the holder's.
    #[error(
        "process {0} lives in a pid namespace that cannot see the container's namespaces \
         (only ancestors of a pid namespace see into it)"
    )]
    PidNsBlind(i32),
}

/// A request's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

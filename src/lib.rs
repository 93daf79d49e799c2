//! nsproxyfs: Linux namespaces with names and a place in the filesystem.
//!
//! Architecture, from the kernel up:
//!
//! * [`ns`]: namespace kinds, open handles to namespaces (an nsfs file
//!   descriptor and its inode), fresh namespaces, pins in the state
//!   directory, and resolving a written pid or path to a namespace.
//! * [`tree`]: the containers, their bindings and effective sets, as plain
//!   data with no system calls.
//! * [`procfs`]: reading processes' namespaces from `/proc`.
//! * [`fs`]: the FUSE adapter, the only code that knows fuser; it checks
//!   the caller, asks the tree, and turns results into replies and errnos.
//! * [`inject`]: ptrace: stopping a task, running a syscall in it, and
//!   restoring it exactly.
//! * [`mover`]: one move: every thread of a process joins a holder's
//!   namespaces through injected `setns(pidfd)`, all or nothing.
//! * [`moving`]: the daemon's mover: which kinds change, holders per set.
//! * [`state`]: the state directory: the record of the tree, written on
//!   every change, and restoring it (pins, keepers) when the daemon starts.
//! * [`daemon`]: checks, mount, background, signals.
//!
//! The binary `nsproxyfs` is a thin command line over [`daemon::run`].

pub mod daemon;
pub mod fs;
pub mod inject;
pub mod mover;
pub mod moving;
pub mod ns;
pub mod procfs;
pub mod state;
pub mod tree;

/// The process mover the daemon uses.
pub fn mover() -> fs::Result<Box<dyn fs::Mover>> {
    Ok(Box::new(moving::PtraceMover::new()?))
}

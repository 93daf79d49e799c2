//! nsproxyfs: Linux namespaces with names and a place in the filesystem.
//!
//! Architecture, from the kernel up:
//!
//! * [`ns`]: namespace kinds, open handles to namespaces (an nsfs file
//!   descriptor and its inode), fresh namespaces, pins in the state
//!   directory, and resolving a written pid or path to a namespace.
//! * [`tree`]: the containers, their bindings and effective sets, as plain
//!   data with no system calls.
//! * [`procfs`]: the one reader of `/proc`: `stat`, `status`, `mountinfo`,
//!   namespace links.
//! * [`fs`]: the FUSE adapter, the only code that knows fuser; it checks
//!   the caller, asks the tree, and turns results into replies and errnos.
//! * [`inject`]: ptrace: stopping a task, running a syscall in it, and
//!   restoring it exactly.
//! * [`mover`](mod@mover): one move: every thread of a process joins a holder's
//!   namespaces through injected `setns(pidfd)`, all or nothing.
//! * [`moving`]: the daemon's mover: which kinds change, holders per set.
//! * [`injector`]: the long-lived helper processes that run the moves, so
//!   that the daemon's death never cuts an injection short.
//! * [`state`]: the state directory: the record of the tree, written on
//!   every change, and restoring it (pins, keepers) when the daemon starts.
//! * [`state_dir`]: the state directory itself: root's alone, checked at
//!   start, every file in it reached without following a symbolic link.
//! * [`kview`]: the kernel's view of which process is in which
//!   namespaces: one BPF task iterator pass, or `/proc` when the kernel
//!   cannot run it.
//! * [`discover`]: the namespace sets already in use on the host, kept
//!   current from process events, and the `lsns`-like table.
//! * [`export`]: `--netns-export`: each container's own net namespace
//!   bind-mounted into a directory such as `/run/netns`, for `ip netns`.
//! * [`daemon`]: checks, mount, background, signals.
//! * [`exec`]: `nsproxyfs exec`, a new command in a container's set.
//! * [`adopt`]: `nsproxyfs adopt`, a running process's set as a container.
//! * [`notify`]: readiness for systemd (`Type=notify`).
//!
//! The binary `nsproxyfs` is a thin command line over [`daemon::run`] and
//! [`exec::run`].

pub mod adopt;
pub mod daemon;
pub mod discover;
pub mod exec;
pub mod export;
pub mod fs;
pub mod inject;
pub mod injector;
pub mod kview;
pub mod logs;
pub mod mover;
pub mod moving;
pub mod notify;
pub mod ns;
pub mod procfs;
pub mod state;
pub mod state_dir;
pub mod tree;

/// The process mover the daemon uses.
pub fn mover(fatal_seccomp: mover::FatalSeccomp) -> fs::Result<Box<dyn fs::Mover>> {
    Ok(Box::new(moving::PtraceMover::new(fatal_seccomp)?))
}

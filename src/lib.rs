//! nsproxyfs: Linux namespaces with names and a place in the filesystem.
//!
//! Architecture, from the kernel up:
//!
//! * [`sys`]: the system-call layer. Every `unsafe` block that talks to the
//!   kernel is here, in thin wrappers, one file per area (pidfds, nsfs
//!   ioctls, mounts, sockets, children cloned from the daemon, ptrace,
//!   credentials), each with its `SAFETY` reasoning; nix where it wraps the
//!   call, raw libc where it cannot (see the module's rules).
//! * [`kind`]: the eight namespace kinds, depending on nothing.
//! * [`procfs`]: the one reader of `/proc`: `stat`, `status`, `mountinfo`,
//!   namespace links, the threads of a process.
//! * [`ns`]: open handles to namespaces (an nsfs file descriptor and its
//!   inode), fresh namespaces, pins in the state directory, and resolving
//!   a written pid or path to a namespace.
//! * [`tree`]: the containers, their bindings and effective sets, as plain
//!   data with no system calls.
//! * [`cgroup`]: the host's cgroup hierarchies, a process's membership,
//!   and joining a set of cgroups with the rights the kernel demands of
//!   the caller.
//! * [`fs`]: the FUSE adapter, the only code that knows fuser; it decodes
//!   a request, calls the service, and encodes the reply.
//! * [`errno`](mod@errno): the one place where an error becomes the errno a
//!   caller sees.
//! * [`inject`]: ptrace: stopping a task, running a syscall in it, and
//!   restoring it exactly.
//! * [`transfer`]: one move: every thread of a process joins a holder's
//!   namespaces through injected `setns(pidfd)`, all or nothing.
//! * [`mover`](mod@mover): the daemon's mover: which kinds change, holders
//!   per set; the [`mover::Mover`] trait the service moves processes
//!   through.
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
//! * [`service`]: the tree service: every operation of the filesystem
//!   (lookup, readdir, mkdir, link, rename, open, read, write, ...) with
//!   its caller checks, open files, moves, persistence, discovery
//!   publishing and export, answered in its own terms (node ids,
//!   attributes, errors with their errno); it knows no protocol and can be
//!   driven without a mount.
//! * [`fs`]: the FUSE adapter, the only code that speaks FUSE: each
//!   request is decoded, handed to the service, and its answer encoded as
//!   a reply (attributes, errno), a refusal logged once.
//! * [`daemon`]: checks, mount, background, signals.
//! * [`exec`]: `nsproxyfs exec`, a new command in a container's set.
//! * [`adopt`]: `nsproxyfs adopt`, a running process's set as a container.
//! * [`notify`]: readiness for systemd (`Type=notify`).
//!
//! Dependencies point down this list, with the commands ([`daemon`],
//! [`exec`], [`adopt`]) on top: nothing below the service knows it, and
//! only [`fs`] knows FUSE.
//!
//! The binary `nsproxyfs` is a thin command line over [`daemon::run`] and
//! [`exec::run`].

pub mod adopt;
pub mod cgroup;
pub mod daemon;
pub mod discover;
pub mod errno;
pub mod exec;
pub mod export;
pub mod fs;
pub mod inject;
pub mod injector;
pub mod kind;
pub mod kview;
pub mod logs;
pub mod mover;
pub mod notify;
pub mod ns;
pub mod procfs;
pub mod service;
pub mod state;
pub mod state_dir;
pub mod sys;
pub mod transfer;
pub mod tree;

/// The process mover the daemon uses.
pub fn ptrace_mover(fatal_seccomp: transfer::FatalSeccomp) -> mover::Result<Box<dyn mover::Mover>> {
    Ok(Box::new(mover::PtraceMover::new(
        fatal_seccomp,
        errno::of_move,
    )?))
}

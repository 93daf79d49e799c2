//! The system-call layer: every `unsafe` block of the crate that talks to
//! the kernel lives here, as thin wrappers, one file per area.
//!
//! * [`pidfd`]: pidfds (open, signal, their namespaces, their pid).
//! * [`ns`]: the nsfs ioctls (type, owner, parent, pid translation) and
//!   `setns` of a thread.
//! * [`fs`]: opening (`openat`, `openat2`), `statx`, `readlinkat` into a
//!   caller's buffer, listings of numbered `/proc` directories
//!   (`getdents64`), pipes, `poll`, `flock`.
//! * [`mount`]: bind mounts, propagation changes, lazy unmounts.
//! * [`socket`]: `SOCK_SEQPACKET` pairs and records carrying one
//!   descriptor (`SCM_RIGHTS`); the netlink process connector.
//! * [`process`]: children of a multithreaded process (`clone` without
//!   libc's fork), the daemon's own fork, waiting, `kill`, `kcmp`, and the
//!   signal set-up of injectors and of `exec`'s command.
//! * [`child`]: what such a child may do, and the long-lived residents
//!   (holders and keepers) it becomes.
//! * [`ptrace`]: the tracer's requests and waits.
//! * [`maps`]: one mapping of another process (`PROCMAP_QUERY`).
//! * [`uio`]: reading another process's memory (`process_vm_readv`).
//! * [`creds`]: per-thread credentials and capabilities.
//! * [`ringbuf`]: the positions of a BPF ring buffer, mapped read-only.
//! * [`bpf`]: a task iterator limited to one thread, and reading it.
//!
//! The rules:
//!
//! * A wrapper is thin: one call (or a fixed handful), its errors checked,
//!   descriptors returned as `OwnedFd` and taken as `BorrowedFd`. Policy,
//!   retries across calls and parsing belong to the callers above.
//! * Every `unsafe` block says, in a `// SAFETY:` comment, why this use is
//!   sound. A wrapper whose soundness rests on its caller is an `unsafe fn`
//!   with a `# Safety` section ([`process::spawn_child`],
//!   [`process::spawn_resident`], [`process::fork`],
//!   [`creds::assume`]); everywhere else wrappers are safe to call.
//! * nix is used where it wraps the call. Raw libc remains, with the reason
//!   beside it, where nix cannot serve: in a child cloned from a
//!   multithreaded process, where nothing may allocate or take a lock
//!   ([`child`]); for credential changes, which libc and nix broadcast to
//!   every thread ([`creds`]); for ptrace and wait requests that must pass
//!   any signal number, real-time ones included ([`ptrace`]); and for calls
//!   nix does not have (pidfds, the nsfs and pidfs ioctls' results,
//!   `kcmp`, `close_range`, `capget`/`capset`, allocation-free
//!   `readlinkat`, a `/proc` listing without `fstat`, `SCM_RIGHTS`, the
//!   mapping of a ring buffer's positions, and the two bpf(2) commands
//!   aya does not offer).
//!
//! Nothing here depends on the rest of the crate but [`crate::kind`].

pub mod bpf;
pub mod child;
pub mod creds;
pub mod fs;
pub mod maps;
pub mod mount;
pub mod ns;
pub mod pidfd;
pub mod process;
pub mod ptrace;
pub mod ringbuf;
pub mod socket;
pub mod uio;

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// Turns the `-1 + errno` convention into a `Result`.
fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A descriptor the kernel has just returned (or -1 and errno).
fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel has just returned `fd` as a new descriptor that
    // nothing else in this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The calling thread's errno, as a number (EIO if there is none).
fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

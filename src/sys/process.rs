//! Processes: children of the multithreaded daemon (made with a raw
//! `clone`, never libc's `fork`), the daemon's own fork into the
//! background, waiting for and signalling children, comparing descriptor
//! tables, and the signal set-up of injectors and `exec`'s command.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

use nix::errno::Errno;
use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::Pid;

use super::child::Child;
use super::fs::{pipe, read_i32};

/// Forks a child that runs `body` and exits with its return value. With
/// `share_files`, the child shares this process's descriptor table
/// (`CLONE_FILES`), so descriptors it opens appear here.
///
/// The clone is a raw system call: libc's `fork()` runs atfork handlers
/// that take libc's internal locks, and nix's calls it.
///
/// # Safety
///
/// `body` runs in a copy of a multithreaded process, made while other
/// threads may have held locks (the allocator's among them) that will never
/// be released in the copy: it must make only async-signal-safe calls (those
/// [`Child`] offers, and raw system calls), must not allocate, lock or
/// unwind, and must not touch state other threads were changing.
pub unsafe fn spawn_child(share_files: bool, body: impl FnOnce(&Child) -> i32) -> io::Result<i32> {
    // SAFETY: the caller vouches for `body`.
    unsafe { clone_child(None, share_files, body) }
}

/// [`spawn_child`], for a child that may rename itself ([`Child::hold`]
/// and the other residents do): `argv` is where this process's argument
/// strings lie in its memory (`arg_start` and `arg_end` of
/// `/proc/self/stat`).
///
/// # Safety
///
/// As for [`spawn_child`].
unsafe fn clone_child(
    argv: Option<(usize, usize)>,
    share_files: bool,
    body: impl FnOnce(&Child) -> i32,
) -> io::Result<i32> {
    let flags = libc::SIGCHLD as libc::c_ulong
        | if share_files {
            libc::CLONE_FILES as libc::c_ulong
        } else {
            0
        };
    // SAFETY: clone without CLONE_VM and with a null stack behaves as fork:
    // the child gets a copy-on-write copy of memory and continues on a copy
    // of this stack. The child only runs `body`, which is restricted to
    // async-signal-safe calls (see above), then _exit()s without unwinding.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        0 => {
            let child = Child::new(argv);
            let code = body(&child);
            child.exit(code)
        }
        p if p > 0 => Ok(p as i32),
        _ => Err(io::Error::last_os_error()),
    }
}

/// A long-lived grandchild of the daemon: its pid in the daemon's pid
/// namespace, and the write end of its control pipe. It exits once that end
/// is closed (see [`Child::hold`], [`Child::keep_pid_namespace`]).
#[derive(Debug)]
pub struct Resident {
    /// The grandchild's pid.
    pub pid: i32,
    /// Closing this tells it to leave.
    pub control: OwnedFd,
}

/// Starts a [`Resident`] in two steps. A child runs `prepare` (joining or
/// unsharing namespaces, which its children inherit, pid and time included)
/// and forks the grandchild; the grandchild closes every descriptor but its
/// two pipes and runs `resident(control, ready)`, which must report on
/// `ready` once it is set up. Returns only when it is, or `Ok(Err(errno))`
/// if `prepare` or the fork failed. `argv` is where this process's
/// argument strings lie in its memory (`arg_start` and `arg_end` of
/// `/proc/self/stat`), which the grandchild overwrites with its name.
///
/// # Safety
///
/// Both closures are restricted as for [`spawn_child`].
pub unsafe fn spawn_resident(
    argv: Option<(usize, usize)>,
    prepare: impl FnOnce(&Child) -> Result<(), i32>,
    resident: fn(&Child, RawFd, RawFd) -> !,
) -> io::Result<Result<Resident, i32>> {
    let (ready_r, ready_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let (w, r) = (ready_w.as_raw_fd(), control_r.as_raw_fd());
    let (unused_r, unused_w) = (ready_r.as_raw_fd(), control_w.as_raw_fd());
    // SAFETY: the closure makes only the calls of `Child` (closing, the
    // caller's `prepare`, a raw fork, reporting), and the caller vouches
    // for `prepare` and `resident`.
    let child = unsafe {
        clone_child(argv, false, |c| {
            // The child's copies of these ends would keep the pipes from ever
            // reaching EOF.
            c.close(unused_r);
            c.close(unused_w);
            if let Err(errno) = prepare(c) {
                c.report(w, -errno);
                return 1;
            }
            match c.fork() {
                Ok(0) => {
                    c.close_all_but(r, w);
                    resident(c, r, w)
                }
                Ok(pid) => c.report(w, pid),
                Err(errno) => c.report(w, -errno),
            }
            0
        })
    }?;
    drop(ready_w);
    drop(control_r);
    let _ = reap(child);
    let spawned = read_spawned(ready_r.as_fd())?;
    Ok(spawned.map(|pid| Resident {
        pid,
        control: control_w,
    }))
}

/// Reads what a child that forks a long-lived grandchild reports on one
/// pipe: the grandchild's pid (from the child) and a 0 once the grandchild
/// is set up (from the grandchild), in either order; or a negative errno
/// from the child. `Ok(Err(errno))` for a reported failure, `EIO` for a
/// pipe that ends early.
fn read_spawned(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Result<i32, i32>> {
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    let first = read_i32(fd)?.ok_or_else(eio)?;
    if first < 0 {
        return Ok(Err(-first));
    }
    let second = read_i32(fd)?.ok_or_else(eio)?;
    match (first, second) {
        (0, pid) | (pid, 0) if pid > 0 => Ok(Ok(pid)),
        (_, errno) if errno < 0 => Ok(Err(-errno)),
        _ => Err(eio()),
    }
}

/// Waits for the child `pid` to end and returns its raw wait status.
pub fn reap(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for the kernel to fill. Raw
        // rather than nix's waitpid, which decodes the status (the callers
        // want it raw).
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Sends `sig` to the process `pid`, a child of this one (not yet reaped,
/// so the number cannot have been reused). Failure is ignored: the child
/// may have exited already.
pub fn kill(pid: i32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
}

/// Forks this process (libc's `fork`, atfork handlers included): the
/// child's pid, or `None` in the child.
///
/// # Safety
///
/// This process must have one thread only: the child of a multithreaded
/// process may make only async-signal-safe calls (see [`spawn_child`]).
pub unsafe fn fork() -> io::Result<Option<i32>> {
    // SAFETY: the caller vouches that no other thread exists, so the child
    // is a full copy of a single-threaded process and may do anything.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Child => Ok(None),
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child.as_raw())),
    }
}

/// Whether threads `a` and `b` share one descriptor table, by kcmp(2)
/// (`KCMP_FILES`), which nix lacks. `Ok(None)` where the kernel has no kcmp.
pub fn same_files(a: Pid, b: Pid) -> Result<Option<bool>, Errno> {
    /// `KCMP_FILES` of `enum kcmp_type`.
    const KCMP_FILES: libc::c_int = 2;
    // SAFETY: kcmp with KCMP_FILES takes integers and reads no memory of ours.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            a.as_raw(),
            b.as_raw(),
            KCMP_FILES,
            0usize,
            0usize,
        )
    };
    match Errno::result(ret) {
        Ok(order) => Ok(Some(order == 0)),
        Err(Errno::ENOSYS) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Makes the calling process immune to the signals that could end or stop
/// an injector in the middle of a move: it leaves the daemon's session, so
/// no terminal's Ctrl-C, Ctrl-Z or hang-up reaches it, and ignores the
/// signals of `kill` and job control. SIGKILL and SIGSTOP remain.
pub fn shield_from_signals() {
    // Fails (harmlessly) only if this process already leads a process group.
    let _ = nix::unistd::setsid();
    for sig in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGPIPE,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGVTALRM,
        Signal::SIGPROF,
    ] {
        // SAFETY: SIG_IGN installs no handler code, so no handler can run
        // with broken assumptions (nix's `signal` is unsafe for handlers).
        let _ = unsafe { nix::sys::signal::signal(sig, SigHandler::SigIgn) };
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Blocks SIGCHLD in the calling thread, so that a tracee's stop, which
/// sends its tracer SIGCHLD, leaves it pending for [`await_sigchld`]
/// instead of having it discarded (its default action).
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
}

/// Waits up to `timeout` for SIGCHLD (blocked by [`block_sigchld`]) and
/// takes it if it came. Returns early for any other reason too (another
/// signal); callers look again at what they wait for either way.
pub fn await_sigchld(timeout: std::time::Duration) {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: sigtimedwait reads the set and the timeout, both live locals,
    // and is given no siginfo to write.
    let _ = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
}

/// Closes every descriptor from `first` up (close_range(2), which nix
/// lacks): an injector keeps nothing of the daemon but its channel (a
/// descriptor that is not close-on-exec, such as a FUSE device, would
/// otherwise keep the mount alive after the daemon died).
pub fn close_from(first: RawFd) {
    // SAFETY: close_range takes integers; the descriptors it closes are
    // unused by this process, which has only just started (no `OwnedFd`
    // of it refers to them).
    unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
}

/// Makes `cmd` start with an empty signal mask: a blocked mask is
/// inherited across fork and exec, and a caller that waits for signals
/// blocks them.
pub fn unblock_signals_at_exec(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs in the child between fork and exec, and only
    // calls pthread_sigmask, which is async-signal-safe and allocates
    // nothing.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(io::Error::from)
        });
    }
}

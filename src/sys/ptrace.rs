//! The tracer's requests and waits.
//!
//! nix's ptrace and wait helpers take a `Signal`, which cannot name
//! real-time signals, and its `waitpid` fails (consuming the event) on a
//! stop it cannot decode. A tracer must pass any signal number back
//! unchanged, so these calls are made with plain integers; nix serves
//! where no signal number is involved (registers, siginfo).

use std::ffi::c_void;

use nix::errno::Errno;
use nix::unistd::Pid;

/// Turns the `-1 + errno` convention into a `Result`.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    Errno::result(ret)
}

/// A ptrace request whose `addr` and `data` are plain integers.
fn request(req: libc::c_uint, tid: Pid, addr: usize, data: usize) -> Result<(), Errno> {
    // SAFETY: the requests sent through here (SEIZE, INTERRUPT, CONT,
    // SINGLESTEP, DETACH) read `addr`/`data` as integers, never as pointers
    // into our memory.
    let ret = unsafe { libc::ptrace(req, tid.as_raw(), addr as *mut c_void, data as *mut c_void) };
    check(ret).map(drop)
}

/// PTRACE_SEIZE with `options`.
pub fn seize(tid: Pid, options: libc::c_int) -> Result<(), Errno> {
    request(libc::PTRACE_SEIZE, tid, 0, options as usize)
}

/// PTRACE_INTERRUPT.
pub fn interrupt(tid: Pid) -> Result<(), Errno> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0)
}

/// PTRACE_CONT, delivering `sig` (0 for none).
pub fn cont(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize)
}

/// PTRACE_SINGLESTEP, delivering `sig` (0 for none).
pub fn single_step(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SINGLESTEP, tid, 0, sig as usize)
}

/// PTRACE_DETACH, delivering `sig` (0 for none; from a syscall stop a
/// nonzero value would be sent to the tracee, from an event stop it would
/// be ignored).
pub fn detach(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize)
}

/// The kernel's sigset for a 64-bit task is one `u64`, bit `n - 1` for signal `n`.
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<u64>();

/// PTRACE_GETSIGMASK (nix lacks it).
pub fn get_sigmask(tid: Pid) -> Result<u64, Errno> {
    let mut mask: u64 = 0;
    // SAFETY: PTRACE_GETSIGMASK writes exactly `addr` (= 8) bytes to `data`,
    // which points to a live, writable u64.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGMASK,
            tid.as_raw(),
            KERNEL_SIGSET_SIZE as *mut c_void,
            &mut mask as *mut u64 as *mut c_void,
        )
    };
    check(ret).map(|_| mask)
}

/// PTRACE_SETSIGMASK (nix lacks it).
pub fn set_sigmask(tid: Pid, mask: u64) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETSIGMASK reads exactly `addr` (= 8) bytes from `data`,
    // which points to a live u64.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGMASK,
            tid.as_raw(),
            KERNEL_SIGSET_SIZE as *mut c_void,
            &mask as *const u64 as *mut c_void,
        )
    };
    check(ret).map(drop)
}

/// The siginfo of the signal a tracee is stopped for (signal-delivery stop).
pub fn siginfo(tid: Pid) -> Result<libc::siginfo_t, Errno> {
    nix::sys::ptrace::getsiginfo(tid)
}

/// Replaces the siginfo of the signal a tracee is stopped for
/// (signal-delivery stop): resuming with that signal delivers it with
/// `info`, or queues it again with `info` if the thread blocks it.
pub fn set_siginfo(tid: Pid, info: &libc::siginfo_t) -> Result<(), Errno> {
    nix::sys::ptrace::setsiginfo(tid, info)
}

/// The general-purpose registers of a stopped tracee.
#[cfg(target_arch = "x86_64")]
pub fn get_regs(tid: Pid) -> Result<libc::user_regs_struct, Errno> {
    nix::sys::ptrace::getregs(tid)
}

/// Sets the general-purpose registers of a stopped tracee.
#[cfg(target_arch = "x86_64")]
pub fn set_regs(tid: Pid, regs: libc::user_regs_struct) -> Result<(), Errno> {
    nix::sys::ptrace::setregs(tid, regs)
}

/// `PTRACE_SECCOMP_GET_FILTER` (nix lacks it).
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;

/// The seccomp filter `index` of stopped tracee `tid` (0 is the newest),
/// as the kernel runs it: ENOENT past the last one, EINVAL if it has none
/// (or the kernel has no seccomp).
pub fn seccomp_filter(tid: Pid, index: usize) -> Result<Vec<libc::sock_filter>, Errno> {
    // SAFETY: with a null buffer the request only returns the length.
    let len = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid.as_raw(),
            index,
            std::ptr::null_mut::<libc::sock_filter>(),
        )
    };
    let len = check(len)? as usize;
    let empty = libc::sock_filter {
        code: 0,
        jt: 0,
        jf: 0,
        k: 0,
    };
    let mut prog = vec![empty; len];
    // SAFETY: `prog` has room for the `len` instructions the kernel said
    // the filter has, and it writes that many (an installed filter never
    // changes).
    let got = unsafe {
        libc::ptrace(
            PTRACE_SECCOMP_GET_FILTER,
            tid.as_raw(),
            index,
            prog.as_mut_ptr(),
        )
    };
    prog.truncate(check(got)? as usize);
    Ok(prog)
}

/// Sends `sig` (any number, real-time included) to one thread.
pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> Result<(), Errno> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid.as_raw(), tid.as_raw(), sig) };
    check(ret).map(drop)
}

/// `waitpid(tid, __WALL | WNOHANG)`: the raw status, `Ok(None)` if nothing
/// to report. EINTR is retried.
pub fn poll_status(tid: i32) -> Result<Option<libc::c_int>, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one int to `status`, a live local.
        let ret = unsafe { libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG) };
        match check(ret as libc::c_long) {
            Ok(0) => return Ok(None),
            Ok(_) => return Ok(Some(status)),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// `waitpid(tid, __WALL)`, blocking: the raw status. EINTR is retried.
pub fn wait_status(tid: i32) -> Result<libc::c_int, Errno> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: waitpid writes one int to `status`, a live local.
        let ret = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        match check(ret as libc::c_long) {
            Ok(_) => return Ok(status),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Blocks until some child or tracee of the calling thread has something
/// to report, without collecting it (`WNOWAIT`), and returns its pid;
/// `None` if there is no child or tracee at all.
pub fn await_any() -> Option<i32> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let flags = libc::WEXITED | libc::WSTOPPED | libc::WNOWAIT | libc::__WALL | libc::__WNOTHREAD;
    loop {
        // SAFETY: waitid writes one siginfo_t to `info`, a live local.
        let ret = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, flags) };
        match check(ret as libc::c_long) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(_) => return None,
        }
    }
    // SAFETY: waitid filled `info` for a child state change, for which
    // si_pid is the member the kernel sets.
    Some(unsafe { info.si_pid() })
}

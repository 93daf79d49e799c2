//! Raw system calls the tracer needs, each a thin checked wrapper.
//!
//! nix's ptrace and wait helpers take a `Signal`, which cannot name real-time
//! signals, and its `waitpid` fails (consuming the event) on a stop it cannot
//! decode. A tracer must pass any signal number back unchanged, so the calls
//! are made here with plain integers.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::procfs::{Stat, Status};

/// Turns the `-1 + errno` convention into a `Result`.
fn check(ret: libc::c_long) -> Result<libc::c_long, Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(ret)
    }
}

/// A ptrace request whose `addr` and `data` are plain integers.
fn request(req: libc::c_uint, tid: Pid, addr: usize, data: usize) -> Result<(), Errno> {
    // SAFETY: the requests sent through here (SEIZE, INTERRUPT, CONT, SYSCALL,
    // DETACH) read `addr`/`data` as integers, never as pointers into our memory.
    let ret = unsafe { libc::ptrace(req, tid.as_raw(), addr as *mut c_void, data as *mut c_void) };
    check(ret).map(drop)
}

pub(crate) fn seize(tid: Pid, options: libc::c_int) -> Result<(), Errno> {
    request(libc::PTRACE_SEIZE, tid, 0, options as usize)?;
    track(tid);
    Ok(())
}

pub(crate) fn interrupt(tid: Pid) -> Result<(), Errno> {
    request(libc::PTRACE_INTERRUPT, tid, 0, 0)
}

/// PTRACE_CONT, delivering `sig` (0 for none).
pub(crate) fn cont(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_CONT, tid, 0, sig as usize)
}

/// PTRACE_SINGLESTEP, delivering `sig` (0 for none).
pub(crate) fn single_step(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_SINGLESTEP, tid, 0, sig as usize)
}

/// PTRACE_DETACH without a signal: from a syscall stop a nonzero value would
/// be sent to the tracee, from an event stop it would be ignored.
pub(crate) fn detach(tid: Pid) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, 0, 0)?;
    untrack(tid);
    Ok(())
}

/// PTRACE_DETACH from a signal-delivery stop, delivering `sig`.
pub(crate) fn detach_with_signal(tid: Pid, sig: i32) -> Result<(), Errno> {
    request(libc::PTRACE_DETACH, tid, 0, sig as usize)?;
    untrack(tid);
    Ok(())
}

/// The kernel's sigset for a 64-bit task is one `u64`, bit `n - 1` for signal `n`.
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<u64>();

pub(crate) fn get_sigmask(tid: Pid) -> Result<u64, Errno> {
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

pub(crate) fn set_sigmask(tid: Pid, mask: u64) -> Result<(), Errno> {
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
pub(crate) fn siginfo(tid: Pid) -> Result<libc::siginfo_t, Errno> {
    // SAFETY: siginfo_t is plain data; all-zero is a valid value.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: PTRACE_GETSIGINFO writes one siginfo_t to `data`, which points
    // to a live, writable siginfo_t.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_GETSIGINFO,
            tid.as_raw(),
            std::ptr::null_mut::<c_void>(),
            &mut info as *mut libc::siginfo_t as *mut c_void,
        )
    };
    check(ret).map(|_| info)
}

/// Replaces the siginfo of the signal a tracee is stopped for
/// (signal-delivery stop): resuming with that signal delivers it with
/// `info`, or queues it again with `info` if the thread blocks it.
pub(crate) fn set_siginfo(tid: Pid, info: &libc::siginfo_t) -> Result<(), Errno> {
    // SAFETY: PTRACE_SETSIGINFO reads one siginfo_t from `data`, which
    // points to a live siginfo_t.
    let ret = unsafe {
        libc::ptrace(
            libc::PTRACE_SETSIGINFO,
            tid.as_raw(),
            std::ptr::null_mut::<c_void>(),
            info as *const libc::siginfo_t as *mut c_void,
        )
    };
    check(ret).map(drop)
}

/// Sends `sig` to one thread.
pub(crate) fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> Result<(), Errno> {
    // SAFETY: tgkill takes three integers and touches no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_tgkill, tgid.as_raw(), tid.as_raw(), sig) };
    check(ret).map(drop)
}

/// What `waitpid(tid, __WALL)` reported for a tracee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitEvent {
    /// The thread exited or was killed: it is no longer traced.
    Gone,
    /// A syscall-entry or syscall-exit stop (PTRACE_O_TRACESYSGOOD is set).
    SyscallStop,
    /// A PTRACE_EVENT_* stop; `sig` is SIGTRAP, or the stop signal of a
    /// group-stop for PTRACE_EVENT_STOP.
    EventStop { event: i32, sig: i32 },
    /// A signal-delivery stop for `sig`.
    SignalStop(i32),
}

/// How long [`wait`] polls (yielding the CPU between polls) before it
/// sleeps. A tracee resumed by us reaches its next stop within microseconds;
/// sleeping in waitpid instead costs a cross-CPU wakeup per stop, which in a
/// VM is an exit to the hypervisor (docs/moving.md, "Cost", has the
/// figures).
const SPIN: std::time::Duration = std::time::Duration::from_micros(50);

std::thread_local! {
    /// The threads this thread traces, each with a wait status collected
    /// for it while another one was waited for (and not yet handed out).
    static TRACED: std::cell::RefCell<std::collections::BTreeMap<i32, Option<libc::c_int>>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

/// Records that the calling thread now traces `tid`.
pub(crate) fn track(tid: Pid) {
    TRACED.with(|t| t.borrow_mut().insert(tid.as_raw(), None));
}

/// Forgets `tid`: detached, or its exit collected.
pub(crate) fn untrack(tid: Pid) {
    TRACED.with(|t| t.borrow_mut().remove(&tid.as_raw()));
}

/// The threads the calling thread still traces, in tid order.
pub(crate) fn tracked() -> Vec<Pid> {
    TRACED.with(|t| t.borrow().keys().map(|&tid| Pid::from_raw(tid)).collect())
}

/// `waitpid(tid, __WALL | WNOHANG)`: `Ok(None)` if nothing to report.
fn poll_one(tid: i32) -> Result<Option<libc::c_int>, Errno> {
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

/// Collects what every other traced thread has to report, so that none is
/// left waiting for us: a traced thread that exits stays a zombie until its
/// tracer collects it, and a thread-group leader's own exit is reported
/// only once every other thread of its group has been collected.
fn collect_others(tid: i32) {
    // A stop kept for a thread may be followed by its death (SIGKILL),
    // which then replaces it.
    let others: Vec<i32> = TRACED.with(|t| {
        t.borrow()
            .iter()
            .filter(|&(&other, kept)| other != tid && kept.is_none_or(|s| libc::WIFSTOPPED(s)))
            .map(|(&other, _)| other)
            .collect()
    });
    for other in others {
        collect_one(other);
    }
}

/// Collects what traced thread `tid` has to report, if anything, and keeps
/// it for its own wait. Whether there was something.
fn collect_one(tid: i32) -> bool {
    let status = match poll_one(tid) {
        Ok(None) => return false,
        Ok(Some(status)) => status,
        // Not ours any more: reads as gone.
        Err(_) => 0,
    };
    TRACED.with(|t| {
        if let Some(slot) = t.borrow_mut().get_mut(&tid) {
            *slot = Some(status);
        }
    });
    true
}

/// Blocks until some child or tracee of the calling thread has something
/// to report, without collecting it, and returns its pid; `None` if there is
/// no child or tracee at all.
fn await_any() -> Option<i32> {
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
    // SAFETY: waitid filled `info` for a child state change.
    Some(unsafe { info.si_pid() })
}

/// Blocks until `tid` reports a state change. EINTR is retried; ECHILD
/// means the thread is not (or no longer) our tracee.
///
/// While waiting, what other traced threads report is collected and kept
/// for their own wait: a process that dies during a move leaves every
/// traced thread a zombie that only its tracer can collect, and its leader
/// is reported only after the others, so waiting for one thread alone could
/// wait for ever. For the same reason a leader that exits while other
/// threads of its group run on (`pthread_exit`) is reported only once they
/// are all gone, and its exit wakes no wait: it reads as gone as soon as it
/// has exited, and stays tracked (see [`settle`]).
pub(crate) fn wait(tid: Pid, waited: Waited) -> Result<WaitEvent, Errno> {
    match wait_until(tid, waited, None)? {
        Some(event) => Ok(event),
        // Without a deadline the wait only ends with an event.
        None => Err(Errno::EAGAIN),
    }
}

/// [`wait`], giving up at `deadline` if one is given (`Ok(None)`): then it
/// polls, less and less often, collecting what the other traced threads
/// report each time.
pub(crate) fn wait_until(
    tid: Pid,
    waited: Waited,
    deadline: Option<std::time::Instant>,
) -> Result<Option<WaitEvent>, Errno> {
    let spin_until = std::time::Instant::now() + SPIN;
    let raw = tid.as_raw();
    let mut naps = 0u32;
    let mut nap = std::time::Duration::from_micros(100);
    let status = loop {
        let stashed = TRACED.with(|t| t.borrow_mut().get_mut(&raw).and_then(Option::take));
        if let Some(status) = stashed {
            break status;
        }
        if let Some(status) = poll_one(raw)? {
            break status;
        }
        let now = std::time::Instant::now();
        if now < spin_until {
            std::thread::yield_now();
            continue;
        }
        if let Some(deadline) = deadline {
            if now >= deadline {
                return Ok(None);
            }
            if waited != Waited::Thread {
                collect_others(raw);
                if waited == Waited::RunningLeader && is_waiting_leader(raw) {
                    return Ok(Some(WaitEvent::Gone));
                }
            }
            std::thread::sleep(nap.min(deadline - now));
            nap = (nap * 2).min(std::time::Duration::from_millis(20));
            continue;
        }
        if waited == Waited::Thread {
            break wait_blocking(raw)?;
        }
        // A running leader that exits while we hold other threads wakes no
        // wait of ours (a lone traced leader's exit is reported like any
        // other's). It is waited for last, so its stop is usually there
        // already; else look every 100 us, and at its state every few
        // milliseconds.
        let others = TRACED.with(|t| t.borrow().len().saturating_sub(1));
        if waited == Waited::RunningLeader && others > 0 {
            collect_others(raw);
            if naps % 32 == 31 && is_waiting_leader(raw) {
                return Ok(Some(WaitEvent::Gone));
            }
            naps += 1;
            std::thread::sleep(std::time::Duration::from_micros(100));
            continue;
        }
        match await_any() {
            None => return Err(Errno::ECHILD),
            Some(pid) if pid == raw => {}
            Some(pid) if TRACED.with(|t| t.borrow().contains_key(&pid)) && collect_one(pid) => {}
            // A child of the caller's own (tests run moves in-process):
            // that report stays where it is, so look again a little later.
            Some(_) => std::thread::sleep(std::time::Duration::from_micros(200)),
        }
    };
    let event = decode(status)?;
    if event == WaitEvent::Gone {
        untrack(tid);
    }
    Ok(Some(event))
}

/// Which thread [`wait`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// A thread other than its group's leader: its exit is reported at
    /// once, so waiting for it alone is safe.
    Thread,
    /// A leader that is stopped, or only runs an injected step: its exit
    /// (a kill) is reported after the other threads', which are collected
    /// meanwhile.
    Leader,
    /// A leader that runs freely toward a stop: it could also exit on its
    /// own (`pthread_exit`) while other threads run on.
    RunningLeader,
}

/// `waitpid(tid, __WALL)`, blocking.
fn wait_blocking(tid: i32) -> Result<libc::c_int, Errno> {
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

fn decode(status: libc::c_int) -> Result<WaitEvent, Errno> {
    if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
        return Ok(WaitEvent::Gone);
    }
    if !libc::WIFSTOPPED(status) {
        // WIFCONTINUED is only reported with WCONTINUED, which we never pass.
        return Err(Errno::EINVAL);
    }
    let sig = libc::WSTOPSIG(status);
    let event = (status >> 16) & 0xff;
    Ok(if sig == (libc::SIGTRAP | 0x80) {
        WaitEvent::SyscallStop
    } else if event != 0 {
        WaitEvent::EventStop { event, sig }
    } else {
        WaitEvent::SignalStop(sig)
    })
}

/// Collects the exit of a tracee that a ptrace request found gone (ESRCH),
/// if it can be collected now: until its tracer waits for it, a dead traced
/// thread stays a zombie, and its thread-group leader cannot be reaped by
/// its parent. A thread whose exit is not reported yet stays tracked, for
/// [`settle`]; one that turns out to be stopped is detached.
pub(crate) fn reap(tid: Pid) {
    let raw = tid.as_raw();
    let stashed = TRACED.with(|t| t.borrow_mut().get_mut(&raw).and_then(Option::take));
    let status = match stashed {
        Some(status) => Some(status),
        None => {
            collect_others(raw);
            match poll_one(raw) {
                Ok(status) => status,
                Err(_) => Some(0),
            }
        }
    };
    match status {
        Some(status) if libc::WIFSTOPPED(status) && detach(tid).is_ok() => {}
        Some(_) => untrack(tid),
        None => {}
    }
}

/// Waits until thread `tid`, just detached from a group stop, is stopped
/// again (state `T`), has exited, or a second has passed (a SIGCONT that
/// came meanwhile lets it run on; logged).
pub(crate) fn await_group_stop(tid: Pid) {
    let start = std::time::Instant::now();
    let deadline = start + std::time::Duration::from_secs(1);
    loop {
        let state = Stat::read(tid.as_raw()).ok().map(|s| s.state);
        match state {
            None | Some('T' | 'Z' | 'X') => return,
            Some(_) => {}
        }
        if std::time::Instant::now() >= deadline {
            log::warn!("thread {tid} was stopped before the move and is not stopped again");
            return;
        }
        // It normally takes microseconds; past a millisecond, stop spinning.
        if start.elapsed() < std::time::Duration::from_millis(1) {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    }
}

/// Whether `tid` is a thread-group leader that has exited while other
/// threads of its group run on: its exit is reported only after theirs.
fn is_waiting_leader(tid: i32) -> bool {
    if !Stat::read(tid).is_ok_and(|s| s.is_zombie()) {
        return false;
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{tid}/task")) else {
        return false;
    };
    dir.flatten().any(|entry| {
        let name = entry.file_name();
        let other = name.to_str().and_then(|n| n.parse::<i32>().ok());
        other.is_some_and(|other| {
            other != tid && !Stat::read_task(tid, other).is_ok_and(|s| s.is_zombie())
        })
    })
}

/// Whether thread `tid` is on its way out: exited, exiting, or with a
/// SIGKILL pending (a kill, or another thread's `exit_group`).
fn is_exiting(tid: i32) -> bool {
    let Ok(stat) = Stat::read(tid) else {
        return false;
    };
    if stat.is_exiting() {
        return true;
    }
    Status::read(tid).is_ok_and(|s| s.sigkill_pending())
}

/// Lets go of every thread the calling thread still traces once a move is
/// over: a stopped one is detached, a dead one collected (waiting, up to a
/// second, for the exits of a dying process to be reported). Returns the
/// threads still traced after that, which only the tracer's own exit lets
/// go of: leaders that exited while the rest of their group runs on, whose
/// exit cannot be collected before the group's, and threads that would not
/// stop.
pub(crate) fn settle() -> Vec<Pid> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        for tid in tracked() {
            if detach(tid).is_ok() {
                continue;
            }
            reap(tid);
        }
        let left = tracked();
        if left.is_empty() {
            return left;
        }
        // Only a thread on its way out is about to report; one that would
        // not stop, or a leader waiting for its group, is not.
        if std::time::Instant::now() >= deadline
            || !left
                .iter()
                .any(|tid| is_exiting(tid.as_raw()) && !is_waiting_leader(tid.as_raw()))
        {
            log::debug!("threads still traced after the move: {left:?}");
            return left;
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Reads `buf.len()` bytes of the address space of `pid` at `addr`.
pub(crate) fn read_memory(pid: Pid, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
    let local = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut c_void,
        iov_len: buf.len(),
    };
    let remote = libc::iovec {
        iov_base: addr as *mut c_void,
        iov_len: buf.len(),
    };
    // SAFETY: the local iovec covers exactly `buf`, which is live and writable
    // for the whole call; the remote iovec is only interpreted by the kernel
    // in the other process's address space.
    let ret = unsafe { libc::process_vm_readv(pid.as_raw(), &local, 1, &remote, 1, 0) };
    let n = check(ret as libc::c_long)?;
    if n as usize == buf.len() {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

/// `pidfd_open(pid, flags)` in the calling process.
pub(crate) fn pidfd_open(pid: Pid, flags: libc::c_uint) -> Result<OwnedFd, Errno> {
    // SAFETY: pidfd_open takes two integers and returns a new descriptor.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), flags) };
    let fd = check(ret)?;
    let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `PIDFD_GET_INFO`: `_IOWR(0xff, 11, struct pidfd_info)`, with the size of
/// the first version of the struct (64 bytes).
const PIDFD_GET_INFO: libc::c_ulong = (3 << 30) | (64 << 16) | (0xff << 8) | 11;

/// The first version of `struct pidfd_info`.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ids: [u32; 8],
    exit_code: i32,
}

/// The pid, in our pid namespace, of the process behind `pidfd` (0 if it
/// is not visible there), asked with the `PIDFD_GET_INFO` ioctl (Linux
/// 6.13). `Ok(None)` on kernels without it; `ESRCH` once it has exited.
pub(crate) fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Result<Option<i32>, Errno> {
    /// `PIDFD_INFO_PID`: always answered.
    const PIDFD_INFO_PID: u64 = 1;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most the 64 bytes its number states into
    // `info`, a live local of exactly that layout.
    let ret = unsafe { libc::ioctl(pidfd.as_raw_fd(), PIDFD_GET_INFO, &mut info) };
    match check(ret.into()) {
        Ok(_) => Ok(Some(info.pid as i32)),
        Err(Errno::ENOTTY | Errno::EINVAL) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether threads `a` and `b` share one descriptor table, by kcmp(2)
/// (`KCMP_FILES`). `Ok(None)` where the kernel has no kcmp.
pub(crate) fn same_files(a: Pid, b: Pid) -> Result<Option<bool>, Errno> {
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
    match check(ret) {
        Ok(order) => Ok(Some(order == 0)),
        Err(Errno::ENOSYS) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`; signal 0 only checks that the
/// process behind the pidfd still runs (ESRCH once it has exited).
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> Result<(), Errno> {
    // SAFETY: a null siginfo pointer is allowed and means "as kill() would";
    // the other arguments are integers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    check(ret).map(drop)
}

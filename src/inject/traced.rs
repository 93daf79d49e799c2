//! The threads the calling thread traces, and waiting for them.
//!
//! A tracer's events arrive per tracer thread, in an order the kernel
//! chooses (a group leader's exit only after its other threads'): what a
//! wait for one thread collects about another is kept here for that
//! other's own wait. The system calls are in [`crate::sys::ptrace`].

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::procfs::{self, Stat, Status};
use crate::sys::ptrace;

/// PTRACE_SEIZE with `options`; the thread is then tracked.
pub(crate) fn seize(tid: Pid, options: libc::c_int) -> Result<(), Errno> {
    ptrace::seize(tid, options)?;
    track(tid);
    Ok(())
}

/// PTRACE_DETACH without a signal: from a syscall stop a nonzero value would
/// be sent to the tracee, from an event stop it would be ignored.
pub(crate) fn detach(tid: Pid) -> Result<(), Errno> {
    ptrace::detach(tid, 0)?;
    untrack(tid);
    Ok(())
}

/// PTRACE_DETACH from a signal-delivery stop, delivering `sig`.
pub(crate) fn detach_with_signal(tid: Pid, sig: i32) -> Result<(), Errno> {
    ptrace::detach(tid, sig)?;
    untrack(tid);
    Ok(())
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

/// Whether every thread of this process blocks SIGCHLD (an injector: its
/// one thread, and the threads it starts, which inherit the mask): then a wait with a deadline sleeps until the
/// next SIGCHLD, which every stop of a tracee sends its tracer, or the
/// end of its nap, instead of sleeping its nap out. Elsewhere another
/// thread may take the signal, and naps are slept out.
static SIGCHLD_WAKES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Blocks SIGCHLD in the calling thread and lets waits wake on it: only
/// for a process whose only thread calls it before it traces anything or
/// starts another thread.
pub fn wake_on_sigchld() -> Result<(), Errno> {
    crate::sys::process::block_sigchld()?;
    SIGCHLD_WAKES.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Sleeps up to `nap`, less if a tracee stops meanwhile (see
/// [`SIGCHLD_WAKES`]).
fn nap_for(nap: std::time::Duration) {
    if SIGCHLD_WAKES.load(std::sync::atomic::Ordering::Relaxed) {
        crate::sys::process::await_sigchld(nap);
    } else {
        std::thread::sleep(nap);
    }
}

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
    let status = match ptrace::poll_status(tid) {
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
        if let Some(status) = ptrace::poll_status(raw)? {
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
            nap_for(nap.min(deadline - now));
            nap = (nap * 2).min(std::time::Duration::from_millis(20));
            continue;
        }
        if waited == Waited::Thread {
            break ptrace::wait_status(raw)?;
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
            nap_for(std::time::Duration::from_micros(100));
            continue;
        }
        match ptrace::await_any() {
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
            match ptrace::poll_status(raw) {
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
    let Ok(tids) = procfs::tasks(tid) else {
        return false;
    };
    tids.into_iter()
        .any(|other| other != tid && !Stat::read_task(tid, other).is_ok_and(|s| s.is_zombie()))
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
    let n = crate::sys::uio::read(pid, addr as usize, buf)?;
    if n == buf.len() {
        Ok(())
    } else {
        Err(Errno::EFAULT)
    }
}

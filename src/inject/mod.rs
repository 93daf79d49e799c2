//! Running a syscall inside another thread with ptrace.
//!
//! A thread is attached with `PTRACE_SEIZE` and stopped with
//! `PTRACE_INTERRUPT` ([`Tracee<Running>`]); once stopped
//! ([`Tracee<Stopped>`]) its registers and signal mask are saved, and
//! [`Tracee::syscall`] makes it execute one syscall through a `syscall`
//! instruction that already exists in its address space; [`join_each`]
//! runs the join stub ([`stub`]), written into the process while all its
//! threads are stopped and taken out before any runs, in one resume per
//! thread. [`Tracee::detach`] (or dropping the tracee) puts every register
//! and the signal mask back and lets the thread go.
//!
//! # Why syscall restarts come out exact
//!
//! Every first stop is taken inside the kernel's signal-delivery path
//! (`get_signal`): the interrupt trap, or the group-stop trap of a thread that
//! was already stopped. A thread interrupted in a blocking syscall is there
//! with the syscall's restart code in `rax` (`-ERESTARTSYS`, ...) and the
//! syscall number in `orig_rax`; the kernel decides on its way out whether
//! the call restarts, continues through `restart_syscall`, or fails with
//! `EINTR` because a handler runs.
//!
//! An injected syscall runs with `orig_rax = -1`, so none of that logic
//! touches it. It is executed with `PTRACE_SINGLESTEP` over the `syscall`
//! instruction: the kernel reports the step as a SIGTRAP at the syscall's
//! exit, one stop per syscall, again inside `get_signal` (the SIGTRAP is
//! discarded on resume; SIGTRAP stays unblocked so that forcing it cannot
//! reset a handler). The saved registers, restart code included, are written
//! back at that stop, and the thread leaves `get_signal` with its own
//! registers, exactly as it would have from the original stop: a pending
//! signal gets its handler and `EINTR` where the kernel gives one, otherwise
//! the syscall restarts. (`PTRACE_DETACH` also wakes the tracee with
//! `TIF_SIGPENDING` set, `__ptrace_unlink`, so even a syscall-exit stop would
//! route it through the same logic.) Registers are never rewritten by hand
//! into a "restarted" form, which would turn a legitimate `EINTR` into a
//! restart. The selfcheck target's `read-pipe`, `nanosleep` and `wait4`
//! modes fail (errno 512/516) should this ever stop holding.
//!
//! One exception: calls the kernel never restarts after a stop (signal(7):
//! `epoll_wait`, `sigwaitinfo`, `semop`, ...) have already failed with
//! `EINTR` when the first stop comes. If such a call had no timeout and no
//! signal is pending that would have interrupted it anyway, our interrupt
//! alone ended it: the saved registers are set to issue it again
//! (`Registers::interrupted_untimed_wait`), so the thread goes back into it.
//!
//! # Signals
//!
//! During injection all signals are blocked except those the kernel may
//! force on an injected step, SIGTRAP (the single step) and SIGSYS (a
//! seccomp `SECCOMP_RET_TRAP`): blocking those would make the kernel reset
//! their handlers should one be forced. Anything else sent meanwhile stays
//! queued, with its siginfo, until the thread's own mask is back. A SIGSTOP
//! is let through (the group stop happens and the thread is resumed as
//! ptrace permits); a SIGTRAP or SIGSYS sent by a process meanwhile is held
//! with its siginfo and delivered on detach (`PTRACE_SETSIGINFO` at the last
//! signal-delivery stop, then detaching with it: the kernel delivers it, or
//! queues it again if the restored mask blocks it); a signal the kernel
//! raises because of an injected syscall is discarded, the syscall having
//! already failed. `PTRACE_GETSIGMASK` reports the mask a
//! `ppoll`/`sigsuspend` will restore, so saving and setting it back is
//! exactly what the kernel itself would leave.
//!
//! A thread that was group-stopped (SIGSTOP) stays stopped after detach: the
//! kernel re-enters the group stop when the tracer leaves.
//!
//! # Tracer death
//!
//! `PTRACE_O_EXITKILL` is not used: a tracer that dies while a thread is only
//! stopped must not kill it. Registers are changed only between the start of
//! an injected syscall and [`Tracee::restore`]; a tracer killed inside that
//! window leaves the thread with the injection registers, and one killed
//! during a single step leaves it a SIGTRAP nobody catches, which kills it;
//! one killed while the join stub is written leaves its bytes in the
//! process (see the stub's module).
//! The daemon therefore never traces from its own process: moves run in
//! separate injector processes that the daemon's death does not reach
//! (`crate::injector`).
//!
//! All ptrace requests must come from the thread that attached, so a
//! [`Tracee`] is neither `Send` nor `Sync`.

use std::marker::PhantomData;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::procfs::Status;

#[cfg_attr(target_arch = "x86_64", path = "x86_64.rs")]
#[cfg_attr(not(target_arch = "x86_64"), path = "unsupported.rs")]
mod arch;
pub mod seccomp;
mod site;
pub mod stub;
pub(crate) mod traced;

pub use arch::Registers;

use crate::sys::ptrace;
use traced::WaitEvent;

/// Stops taken at most while waiting for one expected stop before giving up
/// (each unexpected stop is a signal or a trap the kernel reported).
const MAX_STOPS: usize = 64;

/// The kernel-internal restart codes a syscall interrupted by a signal leaves
/// in the result register. They never reach user space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// `-ERESTARTSYS` (512): restart, unless a handler without SA_RESTART runs.
    Sys,
    /// `-ERESTARTNOINTR` (513): always restart.
    NoIntr,
    /// `-ERESTARTNOHAND` (514): restart unless a handler runs.
    NoHand,
    /// `-ERESTART_RESTARTBLOCK` (516): continue through `restart_syscall`.
    RestartBlock,
}

impl Restart {
    /// The restart named by a raw syscall result, if it is one.
    pub fn from_return(value: i64) -> Option<Self> {
        match value {
            -512 => Some(Self::Sys),
            -513 => Some(Self::NoIntr),
            -514 => Some(Self::NoHand),
            -516 => Some(Self::RestartBlock),
            _ => None,
        }
    }
}

/// A ptrace, wait or `/proc` operation that failed ([`TraceError::Os`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `PTRACE_SEIZE`.
    Seize,
    /// `PTRACE_INTERRUPT`.
    Interrupt,
    /// `PTRACE_GETREGS`.
    GetRegs,
    /// `PTRACE_SETREGS`.
    SetRegs,
    /// `PTRACE_GETSIGMASK`.
    GetSigmask,
    /// `PTRACE_SETSIGMASK`.
    SetSigmask,
    /// `PTRACE_GETSIGINFO`.
    GetSiginfo,
    /// `PTRACE_SETSIGINFO`.
    SetSiginfo,
    /// `PTRACE_CONT`.
    Cont,
    /// `PTRACE_SINGLESTEP`.
    SingleStep,
    /// `PTRACE_DETACH`.
    Detach,
    /// `PTRACE_SECCOMP_GET_FILTER`.
    GetSeccompFilter,
    /// `waitpid`.
    Wait,
    /// `process_vm_readv`.
    ReadMemory,
    /// Scanning executable mappings.
    ScanMappings,
    /// `kcmp`.
    Kcmp,
    /// Reading /proc/PID/task/TID/ns.
    ReadNs,
    /// Writing the join stub into the target, or its original bytes back.
    WriteMemory,
}

impl Op {
    /// Every operation.
    pub const ALL: [Op; 18] = [
        Op::Seize,
        Op::Interrupt,
        Op::GetRegs,
        Op::SetRegs,
        Op::GetSigmask,
        Op::SetSigmask,
        Op::GetSiginfo,
        Op::SetSiginfo,
        Op::Cont,
        Op::SingleStep,
        Op::Detach,
        Op::GetSeccompFilter,
        Op::Wait,
        Op::ReadMemory,
        Op::ScanMappings,
        Op::Kcmp,
        Op::ReadNs,
        Op::WriteMemory,
    ];

    /// How logs name it.
    pub fn name(self) -> &'static str {
        match self {
            Op::Seize => "PTRACE_SEIZE",
            Op::Interrupt => "PTRACE_INTERRUPT",
            Op::GetRegs => "PTRACE_GETREGS",
            Op::SetRegs => "PTRACE_SETREGS",
            Op::GetSigmask => "PTRACE_GETSIGMASK",
            Op::SetSigmask => "PTRACE_SETSIGMASK",
            Op::GetSiginfo => "PTRACE_GETSIGINFO",
            Op::SetSiginfo => "PTRACE_SETSIGINFO",
            Op::Cont => "PTRACE_CONT",
            Op::SingleStep => "PTRACE_SINGLESTEP",
            Op::Detach => "PTRACE_DETACH",
            Op::GetSeccompFilter => "PTRACE_SECCOMP_GET_FILTER",
            Op::Wait => "waitpid",
            Op::ReadMemory => "process_vm_readv",
            Op::ScanMappings => "scanning executable mappings",
            Op::Kcmp => "kcmp",
            Op::ReadNs => "reading /proc/PID/task/TID/ns",
            Op::WriteMemory => "writing /proc/PID/mem",
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why no syscall can be injected ([`TraceError::Unsupported`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsupported {
    /// No injection backend for this architecture.
    Arch,
    /// A 32-bit (compat) thread.
    CompatThread,
    /// A 32-bit (compat) process.
    CompatProcess,
}

impl Unsupported {
    /// Every reason.
    pub const ALL: [Unsupported; 3] = [
        Unsupported::Arch,
        Unsupported::CompatThread,
        Unsupported::CompatProcess,
    ];

    /// How logs say it.
    pub fn name(self) -> &'static str {
        match self {
            Unsupported::Arch => "no injection backend for this architecture",
            Unsupported::CompatThread => "32-bit (compat) thread",
            Unsupported::CompatProcess => "32-bit (compat) process",
        }
    }
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tracer failure: something went wrong with ptrace itself, as opposed to
/// an injected syscall returning an error.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The thread exited (or was killed) meanwhile.
    #[error("thread {0} is gone")]
    Gone(Pid),
    /// Another tracer is attached; it is left alone.
    #[error("thread {tid} is already traced by {tracer}")]
    AlreadyTraced {
        /// The thread we tried to attach to.
        tid: Pid,
        /// Its tracer, as `/proc/TID/status` names it.
        tracer: Pid,
    },
    /// The kernel refused the attach (kernel thread, LSM, exiting thread).
    #[error("not permitted to trace thread {0}")]
    Denied(Pid),
    /// No injection on this architecture, or for this kind of thread.
    #[error("syscall injection is not supported: {0}")]
    Unsupported(Unsupported),
    /// No `syscall` instruction could be found in the address space.
    #[error("no syscall instruction found in the address space of {0}")]
    NoSyscallSite(Pid),
    /// A syscall site of another process was handed over.
    #[error("syscall site of process {site} used for a thread of process {tracee}")]
    ForeignSite {
        /// The process the site was found in.
        site: Pid,
        /// The process of the thread it was offered to.
        tracee: Pid,
    },
    /// [`Tracee::set_result`] on a thread that was not stopped in a syscall.
    #[error("thread {0} was not stopped in a syscall")]
    NotInSyscall(Pid),
    /// The single step's stop did not come.
    #[error("thread {0}: no single-step stop after {MAX_STOPS} stops")]
    TooManyStops(Pid),
    /// A single step ended somewhere other than after the `syscall`
    /// instruction.
    #[error("thread {tid}: single step ended at {pc:#x}")]
    StrayStep {
        /// The thread.
        tid: Pid,
        /// Where it stopped.
        pc: u64,
    },
    /// The thread did not reach the requested stop in time: it sleeps
    /// where no signal reaches it (a vfork parent waiting for its child, an
    /// uninterruptible or killable wait). It is left attached, untouched,
    /// with the stop still requested: only the exit of the thread that
    /// traces it lets it go, which drops the request too.
    #[error("thread {0} did not stop in time (a vfork parent, or an uninterruptible sleep)")]
    NotStopping(Pid),
    /// A ptrace, wait or /proc operation failed.
    #[error("thread {tid}: {op} failed: {errno}")]
    Os {
        /// The thread.
        tid: Pid,
        /// What was attempted.
        op: Op,
        /// What the kernel said.
        errno: Errno,
    },
}

impl TraceError {
    /// Wraps an errno of `op` on `tid`; ESRCH always means the thread is gone.
    fn os(tid: Pid, op: Op) -> impl FnOnce(Errno) -> TraceError {
        move |errno| match errno {
            Errno::ESRCH | Errno::ECHILD => TraceError::Gone(tid),
            errno => TraceError::Os { tid, op, errno },
        }
    }
}

/// A checked result of an injected syscall: the value, or the errno the
/// syscall itself returned.
pub type SyscallResult = Result<i64, Errno>;

/// Decodes a raw syscall return value (signed; -4095..-1 are errnos).
fn decode_return(raw: i64) -> SyscallResult {
    if (-4095..0).contains(&raw) {
        Err(Errno::from_raw((-raw) as i32))
    } else {
        Ok(raw)
    }
}

/// The address of a `syscall` instruction in one process's address space,
/// usable by every thread of that process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallSite {
    tgid: Pid,
    addr: u64,
}

impl SyscallSite {
    /// The process whose address space holds the instruction.
    pub fn process(&self) -> Pid {
        self.tgid
    }

    /// Its address.
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

/// One run of the join stub ([`stub::Stub`]) in one thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Join {
    /// `unshare` flags to run first (0: none).
    pub unshare: libc::c_int,
    /// The pidfd to join through, already open in the thread's descriptor
    /// table; `None`: open one with `pidfd_open(pid, 0)`.
    pub fd: Option<i64>,
    /// The pid to open, in the thread's pid namespace.
    pub pid: i32,
    /// The number the opened pidfd must have (the lowest free one): any
    /// other result stops the stub before the descriptor is used. `None`:
    /// any descriptor will do, for a thread no seccomp filter can answer
    /// `pidfd_open` for, where a result that is not an error is a
    /// descriptor the kernel just made; an error stops the stub.
    pub expect_fd: Option<i64>,
    /// The kinds to `setns`.
    pub kinds: libc::c_int,
    /// Close the descriptor after `setns`.
    pub close: bool,
}

/// What a run of the join stub did: the raw result of each call it made
/// (`None`: not made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JoinOutcome {
    /// `unshare`'s result.
    pub unshare: Option<i64>,
    /// `pidfd_open`'s result.
    pub opened: Option<i64>,
    /// `setns`'s result.
    pub setns: Option<i64>,
    /// `close`'s result.
    pub close: Option<i64>,
}

/// Decodes a raw syscall return value of a [`JoinOutcome`].
pub fn decode(raw: i64) -> SyscallResult {
    decode_return(raw)
}

/// How a thread is resumed toward its next expected stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// One instruction (an injected `syscall`).
    Step,
    /// Until a trap (the join stub's `int3`).
    Cont,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::Running {}
    impl Sealed for super::Stopped {}
}

/// A tracee state: [`Running`] or [`Stopped`].
pub trait State: sealed::Sealed + Sized {
    /// Gives the thread back, best effort, when a tracee is dropped without
    /// an explicit detach.
    #[doc(hidden)]
    fn release(tracee: &mut Tracee<Self>);
}

/// Attached, with an interrupt requested; the stop has not been collected.
#[derive(Debug)]
pub struct Running {
    _private: (),
}

/// Where in the kernel a stopped thread currently waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopPoint {
    /// A PTRACE_EVENT_STOP trap inside `get_signal`.
    Trap,
    /// A signal-delivery stop inside `get_signal` (the single-step trap of an
    /// injected syscall is one); the signal is delivered on resume unless it
    /// is 0.
    Delivery(i32),
}

/// Stopped, with the state to restore saved.
#[derive(Debug)]
pub struct Stopped {
    /// Registers to restore (as found, or with a result set by the caller).
    saved: Registers,
    /// Signal mask to restore.
    saved_mask: u64,
    /// The thread's registers differ from `saved`.
    regs_dirty: bool,
    /// The thread's signal mask differs from `saved_mask`.
    mask_dirty: bool,
    at: StopPoint,
    group_stopped: bool,
    site: Option<u64>,
    /// Signals sent to the thread during injection, held with their siginfo
    /// to be delivered (or queued again) on detach.
    held: Vec<HeldSignal>,
}

/// A signal taken off a thread during injection, with its siginfo.
struct HeldSignal(libc::siginfo_t);

impl HeldSignal {
    fn signo(&self) -> i32 {
        self.0.si_signo
    }
}

impl std::fmt::Debug for HeldSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSignal")
            .field("signo", &self.0.si_signo)
            .field("code", &self.0.si_code)
            .finish()
    }
}

/// A thread under ptrace. `S` is [`Running`] or [`Stopped`].
#[derive(Debug)]
pub struct Tracee<S: State> {
    tid: Pid,
    tgid: Pid,
    state: S,
    /// Nothing left to give back (detached, or the thread is gone).
    released: bool,
    /// ptrace requests must come from the attaching thread.
    _not_send: PhantomData<*const ()>,
}

impl<S: State> Drop for Tracee<S> {
    fn drop(&mut self) {
        if !self.released {
            S::release(self);
            self.released = true;
        }
    }
}

impl<S: State> Tracee<S> {
    /// The traced thread.
    pub fn tid(&self) -> Pid {
        self.tid
    }

    /// The process it belongs to.
    pub fn tgid(&self) -> Pid {
        self.tgid
    }

    /// Consumes `self` without running its release.
    fn disarm(mut self) -> (Pid, Pid) {
        self.released = true;
        (self.tid, self.tgid)
    }
}

/// The TracerPid of a thread, if `/proc` names one.
fn tracer_of(tid: Pid) -> Option<Pid> {
    let pid: i32 = Status::read(tid.as_raw()).ok()?.number("TracerPid")?;
    (pid != 0).then(|| Pid::from_raw(pid))
}

impl Tracee<Running> {
    /// Attaches to the single-threaded process (or thread-group leader) `pid`.
    pub fn seize(pid: Pid) -> Result<Self, TraceError> {
        Self::seize_thread(pid, pid)
    }

    /// Attaches to thread `tid` of process `tgid` and requests a stop.
    ///
    /// The caller vouches that `tid` belongs to `tgid`: the two share one
    /// address space, so a [`SyscallSite`] of `tgid` is used for `tid`.
    pub fn seize_thread(tgid: Pid, tid: Pid) -> Result<Self, TraceError> {
        if !arch::SUPPORTED {
            return Err(TraceError::Unsupported(Unsupported::Arch));
        }
        // EPERM means traced by someone else, or not allowed at all. A
        // tracer that is seen no more when asked (another move that just
        // ended) may have held it a moment ago: one more try tells.
        let mut tries = 2;
        loop {
            tries -= 1;
            match traced::seize(tid, libc::PTRACE_O_TRACESYSGOOD) {
                Ok(()) => break,
                Err(Errno::ESRCH) => return Err(TraceError::Gone(tid)),
                Err(Errno::EPERM) => match tracer_of(tid) {
                    Some(tracer) => return Err(TraceError::AlreadyTraced { tid, tracer }),
                    None if tries > 0 => continue,
                    None => return Err(TraceError::Denied(tid)),
                },
                Err(errno) => {
                    return Err(TraceError::Os {
                        tid,
                        op: Op::Seize,
                        errno,
                    });
                }
            }
        }
        let tracee = Tracee {
            tid,
            tgid,
            state: Running { _private: () },
            released: false,
            _not_send: PhantomData,
        };
        match ptrace::interrupt(tid) {
            Ok(()) => Ok(tracee),
            Err(errno) => {
                // Attached but not interrupted: only possible if it died.
                let _ = tracee.disarm();
                Err(TraceError::os(tid, Op::Interrupt)(errno))
            }
        }
    }

    /// Waits for the requested stop.
    ///
    /// A signal that arrives first is delivered as if no tracer were there
    /// and the wait goes on (the interrupt stays pending). Returns
    /// [`TraceError::Gone`] if the thread dies first.
    pub fn wait_stop(self) -> Result<Tracee<Stopped>, TraceError> {
        self.wait_stop_until(None)
    }

    /// [`Tracee::wait_stop`], giving up at `deadline` if one is given, with
    /// [`TraceError::NotStopping`].
    pub fn wait_stop_until(
        self,
        deadline: Option<std::time::Instant>,
    ) -> Result<Tracee<Stopped>, TraceError> {
        let tid = self.tid;
        let group_stopped = match wait_for_trap(tid, self.tgid, deadline) {
            Ok(group) => group,
            Err(e) => {
                // The thread is not stopped (it is gone or unwaitable):
                // there is nothing left to detach from.
                let (tid, _) = self.disarm();
                if let TraceError::Gone(_) = e {
                    traced::reap(tid);
                }
                return Err(e);
            }
        };
        let saved = arch::get(tid).map_err(TraceError::os(tid, Op::GetRegs));
        let saved_mask = ptrace::get_sigmask(tid).map_err(TraceError::os(tid, Op::GetSigmask));
        let (tid, tgid) = self.disarm();
        let (saved, saved_mask) = match (saved, saved_mask) {
            (Ok(regs), Ok(mask)) => (regs, mask),
            (Err(e), _) | (_, Err(e)) => {
                // Nothing was changed yet: just let it go.
                if let TraceError::Gone(_) = e {
                    traced::reap(tid);
                } else {
                    let _ = traced::detach(tid);
                }
                return Err(e);
            }
        };
        let mut saved = saved;
        let mut site = None;
        if !group_stopped
            && saved.interrupted_untimed_wait()
            && !signal_would_interrupt(tid)
            && let Some(addr) = saved.syscall_insn_before_pc()
            && site::holds_syscall_insn(tid, addr) == Ok(true)
        {
            // Our interrupt, not a signal, ended a call the kernel does not
            // restart: it is issued again when the thread resumes, as it
            // would have gone on had nothing stopped it.
            saved.reissue();
            site = Some(addr);
        }
        Ok(Tracee {
            tid,
            tgid,
            state: Stopped {
                saved,
                saved_mask,
                regs_dirty: site.is_some(),
                mask_dirty: false,
                at: StopPoint::Trap,
                group_stopped,
                site,
                held: Vec::new(),
            },
            released: false,
            _not_send: PhantomData,
        })
    }
}

/// Whether a signal is pending for thread `tid` that its mask lets through
/// and that is not ignored: one that interrupts a blocking call by itself.
/// Unreadable counts as yes.
fn signal_would_interrupt(tid: Pid) -> bool {
    let Ok(status) = Status::read(tid.as_raw()) else {
        return true;
    };
    let (Some(pnd), Some(shd), Some(blk), Some(ign), Some(cgt)) = (
        status.mask("SigPnd"),
        status.mask("ShdPnd"),
        status.mask("SigBlk"),
        status.mask("SigIgn"),
        status.mask("SigCgt"),
    ) else {
        return true;
    };
    let bit = |sig: i32| 1u64 << (sig - 1);
    let ignored_by_default =
        bit(libc::SIGCHLD) | bit(libc::SIGURG) | bit(libc::SIGWINCH) | bit(libc::SIGCONT);
    let ignored = ign | (ignored_by_default & !cgt);
    (pnd | shd) & !blk & !ignored != 0
}

/// Waits until `tid` is in a PTRACE_EVENT_STOP trap, delivering any signal
/// that is reported first. Returns whether the trap is a group-stop.
/// Gives up at `deadline` (if any) with [`TraceError::NotStopping`].
fn wait_for_trap(
    tid: Pid,
    tgid: Pid,
    deadline: Option<std::time::Instant>,
) -> Result<bool, TraceError> {
    let waited = if tid == tgid {
        traced::Waited::RunningLeader
    } else {
        traced::Waited::Thread
    };
    loop {
        let event =
            traced::wait_until(tid, waited, deadline).map_err(TraceError::os(tid, Op::Wait))?;
        match event.ok_or(TraceError::NotStopping(tid))? {
            WaitEvent::Gone => return Err(TraceError::Gone(tid)),
            WaitEvent::EventStop {
                event: libc::PTRACE_EVENT_STOP,
                sig,
            } => {
                return Ok(sig != libc::SIGTRAP);
            }
            WaitEvent::EventStop { .. } | WaitEvent::SyscallStop => {
                ptrace::cont(tid, 0).map_err(TraceError::os(tid, Op::Cont))?;
            }
            WaitEvent::SignalStop(sig) => {
                // What CRIU does too: let the thread take its signal, then
                // collect the interrupt trap, which stays pending.
                ptrace::cont(tid, sig).map_err(TraceError::os(tid, Op::Cont))?;
            }
        }
    }
}

impl State for Running {
    fn release(tracee: &mut Tracee<Self>) {
        // The interrupt is pending: collect the stop, then detach.
        match wait_for_trap(tracee.tid, tracee.tgid, None) {
            Ok(_) => {
                if let Err(e) = traced::detach(tracee.tid) {
                    log::warn!("detaching thread {}: {e}", tracee.tid);
                }
            }
            Err(TraceError::Gone(_)) => traced::reap(tracee.tid),
            Err(e) => log::warn!("releasing thread {}: {e}", tracee.tid),
        }
    }
}

impl State for Stopped {
    fn release(tracee: &mut Tracee<Self>) {
        if let Err(e) = tracee.restore_and_detach() {
            match e {
                TraceError::Gone(_) => {}
                e => log::error!("releasing thread {}: {e}", tracee.tid),
            }
        }
    }
}

/// Signals that stay unblocked during injection: the kernel forces them on
/// an injected step (the single-step SIGTRAP; SIGSYS from a seccomp
/// `SECCOMP_RET_TRAP`), and forcing a blocked signal resets its handler to
/// SIG_DFL. The fault signals (SIGSEGV, SIGBUS, SIGILL, SIGFPE) are blocked:
/// an injected `syscall` with integer arguments cannot fault, so one that
/// comes is sent by someone, and it stays queued, siginfo and all, until
/// the thread's own mask is back.
const FORCED_SIGNALS: [i32; 2] = [libc::SIGTRAP, libc::SIGSYS];

/// The mask set while injected code runs.
fn injection_mask() -> u64 {
    FORCED_SIGNALS
        .iter()
        .fold(u64::MAX, |mask, &sig| mask & !(1u64 << (sig - 1)))
}

fn is_stop_signal(sig: i32) -> bool {
    matches!(
        sig,
        libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
    )
}

/// What to do with a signal-delivery stop met while the thread runs toward
/// an expected stop.
enum SignalDisposition {
    /// Resume with this signal (a stop signal: the group stop happens).
    PassOn(i32),
    /// Sent by a process: hold it, siginfo and all, until detaching.
    Hold(HeldSignal),
    /// Raised by the kernel because of an injected syscall: discard.
    Discard(i32),
}

fn classify_signal(tid: Pid, sig: i32) -> Result<SignalDisposition, TraceError> {
    if is_stop_signal(sig) {
        return Ok(SignalDisposition::PassOn(sig));
    }
    let info = ptrace::siginfo(tid).map_err(TraceError::os(tid, Op::GetSiginfo))?;
    // si_code <= 0: sent from user space (kill, tgkill, sigqueue, timers).
    Ok(if info.si_code <= 0 {
        SignalDisposition::Hold(HeldSignal(info))
    } else {
        SignalDisposition::Discard(sig)
    })
}

impl Tracee<Stopped> {
    /// The registers the thread will get back, as found at the stop (plus a
    /// result set with [`Tracee::set_result`]).
    pub fn regs(&self) -> &Registers {
        &self.state.saved
    }

    /// The signal mask the thread will get back.
    pub fn sigmask(&self) -> u64 {
        self.state.saved_mask
    }

    /// Whether the id still names the thread that stopped, stopped for
    /// this tracer: its registers read again as they did at the stop (the
    /// stack and thread pointers). An execve(2) by another thread of the
    /// process gives that thread the leader's id and ends every other
    /// thread, the stopped leader too, without a word to the tracer
    /// (ptrace(2), "execve(2) under ptrace"); the id then names a thread
    /// that runs a new program, traced by this tracer or not.
    pub fn is_unchanged(&self) -> bool {
        arch::get(self.tid).is_ok_and(|now| now.same_thread_as(&self.state.saved))
    }

    /// Lets go of the id without putting anything back: for an id that no
    /// longer names the thread that stopped ([`Tracee::is_unchanged`]),
    /// whose registers and mask must not become the ones saved. A thread
    /// this tracer traces under the id is detached, untouched, if it is
    /// stopped; one that is not stays tracked, so that this tracer's exit
    /// lets it go ([`still_traced`]).
    pub fn let_go_untouched(mut self) {
        self.released = true;
        if traced::detach(self.tid).is_err() {
            traced::reap(self.tid);
        }
    }

    /// Makes the syscall the thread was stopped in return `value` (a result,
    /// or `-errno`) instead of what it returned. Replaces a pending restart.
    pub fn set_result(&mut self, value: i64) -> Result<(), TraceError> {
        if self.state.saved.syscall_nr().is_none() {
            return Err(TraceError::NotInSyscall(self.tid));
        }
        self.state.saved.set_result(value);
        self.state.regs_dirty = true;
        Ok(())
    }

    /// A `syscall` instruction in the thread's address space: the one it
    /// entered the kernel through if there is one, else one in the vDSO or
    /// another executable mapping. The result is cached.
    pub fn syscall_site(&mut self) -> Result<SyscallSite, TraceError> {
        let tid = self.tid;
        if let Some(addr) = self.state.site {
            return Ok(SyscallSite {
                tgid: self.tgid,
                addr,
            });
        }
        if !self.state.saved.is_native() {
            return Err(TraceError::Unsupported(Unsupported::CompatThread));
        }
        let mut found = None;
        if let Some(addr) = self.state.saved.syscall_insn_before_pc() {
            match site::holds_syscall_insn(tid, addr) {
                Ok(true) => found = Some(addr),
                Ok(false) | Err(Errno::EFAULT) => {}
                Err(e) => return Err(TraceError::os(tid, Op::ReadMemory)(e)),
            }
        }
        let addr = match found {
            Some(addr) => addr,
            None => site::scan(tid)
                .map_err(TraceError::os(tid, Op::ScanMappings))?
                .ok_or(TraceError::NoSyscallSite(self.tgid))?,
        };
        self.state.site = Some(addr);
        Ok(SyscallSite {
            tgid: self.tgid,
            addr,
        })
    }

    /// Uses a site found through another thread of the same process.
    pub fn use_syscall_site(&mut self, site: SyscallSite) -> Result<(), TraceError> {
        if site.tgid != self.tgid {
            return Err(TraceError::ForeignSite {
                site: site.tgid,
                tracee: self.tgid,
            });
        }
        self.state.site = Some(site.addr);
        Ok(())
    }

    /// Makes the thread execute syscall `nr` with `args`.
    ///
    /// The outer result is the tracer's; the inner one is the syscall's own
    /// return value or errno. The thread stays stopped; its registers are
    /// put back by [`Tracee::restore`] or [`Tracee::detach`].
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<SyscallResult, TraceError> {
        let site = self.launch(nr, args)?;
        let after = self.collect_step(site)?;
        Ok(decode_return(after.result()))
    }

    /// Sets the thread up for syscall `nr` and starts it; [`Self::collect`]
    /// must follow. Returns the syscall site.
    fn launch(&mut self, nr: i64, args: [u64; 6]) -> Result<u64, TraceError> {
        let tid = self.tid;
        if !self.state.saved.is_native() {
            return Err(TraceError::Unsupported(Unsupported::CompatThread));
        }
        let site = self.syscall_site()?.addr;
        self.prepare_run()?;
        let mut regs = self.state.saved;
        regs.prepare_syscall(site, nr, args);
        arch::set(tid, &regs).map_err(TraceError::os(tid, Op::SetRegs))?;
        self.state.regs_dirty = true;
        ptrace::single_step(tid, 0).map_err(TraceError::os(tid, Op::SingleStep))?;
        Ok(site)
    }

    /// Starts a run of the join stub written at `entry`; [`Self::collect`]
    /// must follow.
    fn launch_join(&mut self, entry: u64, join: &Join) -> Result<(), TraceError> {
        let tid = self.tid;
        if !self.state.saved.is_native() {
            return Err(TraceError::Unsupported(Unsupported::CompatThread));
        }
        self.prepare_run()?;
        let mut regs = self.state.saved;
        regs.prepare_join(entry, join);
        arch::set(tid, &regs).map_err(TraceError::os(tid, Op::SetRegs))?;
        self.state.regs_dirty = true;
        ptrace::cont(tid, 0).map_err(TraceError::os(tid, Op::Cont))
    }

    /// Holds a signal the thread is stopped for and sets the injection
    /// mask, before the thread is resumed into injected code.
    fn prepare_run(&mut self) -> Result<(), TraceError> {
        let tid = self.tid;
        if let StopPoint::Delivery(sig) = self.state.at {
            // Resuming for the injection would swallow it.
            if sig != 0 {
                let info = ptrace::siginfo(tid).map_err(TraceError::os(tid, Op::GetSiginfo))?;
                self.state.held.push(HeldSignal(info));
            }
            self.state.at = StopPoint::Delivery(0);
        }
        if !self.state.mask_dirty {
            ptrace::set_sigmask(tid, injection_mask())
                .map_err(TraceError::os(tid, Op::SetSigmask))?;
            self.state.mask_dirty = true;
        }
        Ok(())
    }

    /// Waits until the single step over the `syscall` instruction at `site`
    /// ends: one stop, a SIGTRAP reported at the syscall's exit, with the
    /// result in the registers. Other stops are dealt with and the step
    /// resumed.
    fn collect_step(&mut self, site: u64) -> Result<Registers, TraceError> {
        let end = site + arch::SYSCALL_INSN.len() as u64;
        self.collect(&[end], Some(site), Resume::Step)
    }

    /// Waits until the thread stops at one of `ends` with a trap of its
    /// own making (the single step's, or the join stub's `int3`), dealing
    /// with other stops and resuming as `resume` says. A trap the kernel
    /// raised at `retry_at` (a step that had not started) is resumed.
    fn collect(
        &mut self,
        ends: &[u64],
        retry_at: Option<u64>,
        resume: Resume,
    ) -> Result<Registers, TraceError> {
        let tid = self.tid;
        for _ in 0..MAX_STOPS {
            let mut pass = 0;
            let waited = if tid == self.tgid {
                traced::Waited::Leader
            } else {
                traced::Waited::Thread
            };
            match traced::wait(tid, waited).map_err(TraceError::os(tid, Op::Wait))? {
                WaitEvent::Gone => {
                    self.released = true;
                    return Err(TraceError::Gone(tid));
                }
                WaitEvent::SignalStop(libc::SIGTRAP) => {
                    let regs = arch::get(tid).map_err(TraceError::os(tid, Op::GetRegs))?;
                    let disposition = classify_signal(tid, libc::SIGTRAP)?;
                    if ends.contains(&regs.pc()) {
                        // The step ended after the syscall: our trap, which
                        // is discarded when the thread resumes. A SIGTRAP
                        // sent to the thread and pending already takes the
                        // place of ours (a second one is not queued): that
                        // one is held.
                        if let SignalDisposition::Hold(held) = disposition {
                            self.state.held.push(held);
                        }
                        self.state.at = StopPoint::Delivery(0);
                        return Ok(regs);
                    }
                    match disposition {
                        SignalDisposition::PassOn(sig) => {
                            let info = ptrace::siginfo(tid)
                                .map_err(TraceError::os(tid, Op::GetSiginfo))?;
                            debug_assert_eq!(info.si_signo, sig);
                            self.state.held.push(HeldSignal(info));
                        }
                        SignalDisposition::Hold(held) => self.state.held.push(held),
                        SignalDisposition::Discard(_) if Some(regs.pc()) == retry_at => {}
                        SignalDisposition::Discard(_) => {
                            self.state.at = StopPoint::Delivery(0);
                            return Err(TraceError::StrayStep { tid, pc: regs.pc() });
                        }
                    }
                }
                WaitEvent::SignalStop(sig) => match classify_signal(tid, sig)? {
                    SignalDisposition::PassOn(sig) => pass = sig,
                    SignalDisposition::Hold(held) => self.state.held.push(held),
                    SignalDisposition::Discard(sig) => {
                        log::warn!("thread {tid}: discarding signal {sig} raised by injection");
                    }
                },
                // A group-stop or interrupt trap: ptrace lets us go on.
                WaitEvent::EventStop { .. } | WaitEvent::SyscallStop => {}
            }
            match resume {
                Resume::Step => {
                    ptrace::single_step(tid, pass).map_err(TraceError::os(tid, Op::SingleStep))?
                }
                Resume::Cont => ptrace::cont(tid, pass).map_err(TraceError::os(tid, Op::Cont))?,
            }
        }
        self.state.at = StopPoint::Delivery(0);
        Err(TraceError::TooManyStops(tid))
    }

    /// Puts the saved registers and signal mask back. The thread stays
    /// stopped; it can be injected into again.
    pub fn restore(&mut self) -> Result<(), TraceError> {
        let tid = self.tid;
        if self.state.regs_dirty {
            arch::set(tid, &self.state.saved).map_err(TraceError::os(tid, Op::SetRegs))?;
            self.state.regs_dirty = false;
        }
        if self.state.mask_dirty {
            ptrace::set_sigmask(tid, self.state.saved_mask)
                .map_err(TraceError::os(tid, Op::SetSigmask))?;
            self.state.mask_dirty = false;
        }
        Ok(())
    }

    fn restore_and_detach(&mut self) -> Result<(), TraceError> {
        let result = self.try_restore_and_detach();
        if result.is_ok() && self.state.group_stopped {
            // The kernel wakes the thread to re-enter the group stop: until
            // it has, `ps` would show a stopped process running.
            traced::await_group_stop(self.tid);
        }
        if let Err(TraceError::Gone(_)) = result
            && !self.released
        {
            traced::reap(self.tid);
        }
        self.released = true;
        result
    }

    fn try_restore_and_detach(&mut self) -> Result<(), TraceError> {
        let tid = self.tid;
        self.restore()?;
        let mut held = std::mem::take(&mut self.state.held);
        let pass = match self.state.at {
            // At a signal-delivery stop, the signal resumed with is
            // delivered with the siginfo set here, or queued again with it
            // if the (restored) mask blocks it: the first held signal goes
            // that way, exactly as it was sent.
            StopPoint::Delivery(_) if !held.is_empty() => {
                let first = held.remove(0);
                ptrace::set_siginfo(tid, &first.0).map_err(TraceError::os(tid, Op::SetSiginfo))?;
                first.signo()
            }
            StopPoint::Delivery(sig) => sig,
            _ => 0,
        };
        // More than one held (a SIGTRAP and a SIGSYS sent during one
        // injection): the others can only be sent again, as signals from
        // this process.
        for extra in held {
            let sig = extra.signo();
            log::warn!("thread {tid}: signal {sig} sent during the move is sent again");
            if let Err(e) = ptrace::tgkill(self.tgid, tid, sig) {
                log::warn!("thread {tid}: sending held signal {sig} again: {e}");
            }
        }
        let result = if pass == 0 {
            traced::detach(tid)
        } else {
            traced::detach_with_signal(tid, pass)
        };
        result.map_err(TraceError::os(tid, Op::Detach))
    }

    /// Restores registers and mask and lets the thread go.
    pub fn detach(mut self) -> Result<(), TraceError> {
        let result = self.restore_and_detach();
        // On failure Drop must not try again with a half-released thread.
        self.released = true;
        result
    }
}

/// Lets go of every thread the calling thread still traces, once the
/// [`Tracee`]s of a move are gone: detaches those still stopped and
/// collects the exits of those that died (waiting, up to a second, for a
/// dying process's exits to be reported). See [`still_traced`] for what may
/// remain.
pub fn settle() {
    traced::settle();
}

/// The threads the calling thread still traces after [`settle`]: leaders
/// that exited while other threads of their group run on. Their exit can
/// only be collected after the group's, so until then only the tracer's own
/// exit lets go of them (and lets their parent reap them).
pub fn still_traced() -> Vec<Pid> {
    traced::tracked()
}

/// Runs one syscall in each of several stopped threads at once: all are
/// started, then all are collected, so the threads execute in parallel and
/// the tracer does not wait for one before starting the next.
///
/// `calls[i]` is the syscall for `tracees[i]`, `None` to leave it alone; the
/// result has the same shape. Each outcome is what [`Tracee::syscall`] would
/// have returned.
pub fn syscall_each(
    tracees: &mut [Tracee<Stopped>],
    calls: &[Option<(i64, [u64; 6])>],
) -> Vec<Option<Result<SyscallResult, TraceError>>> {
    let mut launched: Vec<Option<Result<u64, TraceError>>> = tracees
        .iter_mut()
        .zip(calls)
        .map(|(t, call)| call.map(|(nr, args)| t.launch(nr, args)))
        .collect();
    launched.resize_with(tracees.len(), || None);
    // The leader is collected last: by then every other thread has
    // reported, and waiting for it wakes for nothing else.
    let mut order: Vec<usize> = (0..tracees.len()).collect();
    order.sort_by_key(|&i| tracees[i].tid == tracees[i].tgid);
    let mut results: Vec<Option<Result<SyscallResult, TraceError>>> =
        (0..tracees.len()).map(|_| None).collect();
    for i in order {
        results[i] = launched[i].take().map(|site| {
            let after = tracees[i].collect_step(site?)?;
            Ok(decode_return(after.result()))
        });
    }
    results
}

/// Runs the join stub written at `entry` (see [`stub`]) in several stopped
/// threads at once, as [`syscall_each`] does for single syscalls: `joins[i]`
/// for `tracees[i]`, `None` to leave it alone. Each thread runs until the
/// stub's `int3`, one resume; other stops on the way (signals, a group
/// stop) are dealt with as for an injected syscall.
pub fn join_each(
    tracees: &mut [Tracee<Stopped>],
    entry: u64,
    joins: &[Option<Join>],
) -> Vec<Option<Result<JoinOutcome, TraceError>>> {
    let ends = arch::JOIN_STUB_ENDS.map(|off| entry + off);
    let mut launched: Vec<Option<Result<(), TraceError>>> = tracees
        .iter_mut()
        .zip(joins)
        .map(|(t, join)| join.map(|join| t.launch_join(entry, &join)))
        .collect();
    launched.resize_with(tracees.len(), || None);
    let mut order: Vec<usize> = (0..tracees.len()).collect();
    order.sort_by_key(|&i| tracees[i].tid == tracees[i].tgid);
    let mut results: Vec<Option<Result<JoinOutcome, TraceError>>> =
        (0..tracees.len()).map(|_| None).collect();
    for i in order {
        let Some(join) = joins.get(i).copied().flatten() else {
            continue;
        };
        results[i] = launched[i].take().map(|started| {
            started?;
            let t = &mut tracees[i];
            let after = t.collect(&ends, None, Resume::Cont)?;
            after
                .join_outcome(entry, &join)
                .ok_or(TraceError::StrayStep {
                    tid: t.tid,
                    pc: after.pc(),
                })
        });
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_signed_returns() {
        assert_eq!(decode_return(3), Ok(3));
        assert_eq!(decode_return(0), Ok(0));
        assert_eq!(decode_return(-1), Err(Errno::EPERM));
        assert_eq!(decode_return(-22), Err(Errno::EINVAL));
        assert_eq!(decode_return(-4096), Ok(-4096));
        // An address in the upper half is a value, not an errno.
        assert_eq!(decode_return(i64::MIN), Ok(i64::MIN));
    }

    #[test]
    fn restart_codes() {
        assert_eq!(Restart::from_return(-512), Some(Restart::Sys));
        assert_eq!(Restart::from_return(-516), Some(Restart::RestartBlock));
        assert_eq!(Restart::from_return(-515), None);
        assert_eq!(Restart::from_return(-4), None);
    }

    #[test]
    fn injection_mask_keeps_forced_signals() {
        let mask = injection_mask();
        for sig in FORCED_SIGNALS {
            assert_eq!(mask & (1 << (sig - 1)), 0);
        }
        for sig in [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE] {
            assert_ne!(mask & (1 << (sig - 1)), 0);
        }
        assert_ne!(mask & (1 << (libc::SIGTERM - 1)), 0);
        assert_ne!(mask & (1 << 63), 0);
    }
}

//! Moving a running process, every thread of it, into the namespaces of a
//! holder process.
//!
//! One move: pin the target (pidfd) -> stop every thread, re-reading
//! `/proc/PID/task` until no new thread shows up -> inject
//! `fd = pidfd_open(holder, 0); setns(fd, kinds); close(fd)`, from the join
//! stub in one resume per thread where it can be written
//! ([`inject::stub`]), else one single-stepped syscall per round for all
//! threads at once -> let every thread go. Threads that share
//! a descriptor table (as threads normally do; kcmp(2) tells) share the fd:
//! the first of them opens and closes it, every thread calls `setns`.
//! `setns` with a pidfd joins all the requested namespaces of the holder at
//! once or none of them, so a thread is either moved or untouched.
//!
//! All or nothing across threads: no thread runs before every thread has
//! moved. If one refuses, the threads already moved join the namespaces of a
//! thread that has not (through a `PIDFD_THREAD` pidfd, opened inside the
//! moved thread), which is the set they had before; then every register and
//! signal mask is restored and the error of the refusing thread is returned.
//!
//! Limits the kernel imposes and that are passed on, not hidden:
//! * with `CLONE_NEWNS` a thread sharing its `fs_struct` cannot join, so in a
//!   multithreaded target each thread first runs `unshare(CLONE_FS)`: its
//!   threads stop sharing cwd, root and umask, and that stays so even if the
//!   move is then rolled back. Joining a mount namespace moves root and cwd to
//!   that namespace's root, also when a rollback joins the old one again.
//! * a multithreaded process cannot join a user or time namespace (EINVAL,
//!   EUSERS); re-joining the user namespace it is in is EINVAL too, so the
//!   caller passes only the kinds that change.
//! * a seccomp filter of the target applies to the injected syscalls: an
//!   `SECCOMP_RET_ERRNO` filter yields its errno, a killing filter kills.
//!
//! Nothing here takes a lock or knows about FUSE; everything runs on the
//! calling thread, which must be the only one tracing the target.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::inject::stub::{Stub, StubPlan};
use crate::inject::{self, Join, Op, Stopped, SyscallResult, TraceError, Tracee, Unsupported};
use crate::kind::Kind;
use crate::kview::bpf::{Links, Thread as KernelThread};
use crate::procfs::{self, ProcDir, Stat, Status};
use crate::sys;

/// Rounds of re-reading `/proc/PID/task` before giving up on a process that
/// keeps creating threads faster than they can be stopped.
const MAX_ROUNDS: usize = 64;

/// How long a move waits for the target's threads to stop before it gives
/// up: a thread that sleeps where no signal reaches it (a vfork parent
/// until its child execs or exits, a killable or uninterruptible wait)
/// stops only when it wakes.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// `PIDFD_THREAD` (Linux 6.9): a pidfd for one thread, not its group. The
/// kernel defines it as `O_EXCL`.
const PIDFD_THREAD: u64 = libc::O_EXCL as u64;

/// The namespace kinds `setns` accepts, with their `/proc/TID/ns/` entry
/// (for pid and time, the one `setns` changes).
const KINDS: [(libc::c_int, &str); 8] = [
    (libc::CLONE_NEWCGROUP, "cgroup"),
    (libc::CLONE_NEWIPC, "ipc"),
    (libc::CLONE_NEWNS, "mnt"),
    (libc::CLONE_NEWNET, "net"),
    (libc::CLONE_NEWPID, "pid_for_children"),
    (libc::CLONE_NEWTIME, "time_for_children"),
    (libc::CLONE_NEWUSER, "user"),
    (libc::CLONE_NEWUTS, "uts"),
];

/// A pinned process: a pidfd plus the pid it had in our pid namespace when
/// it was pinned. The pid is only trusted while the pidfd says the process
/// is alive.
#[derive(Debug)]
pub struct ProcessHandle {
    pidfd: OwnedFd,
    tgid: Pid,
}

impl ProcessHandle {
    /// Pins process `pid` (a thread-group id in our pid namespace).
    pub fn open(pid: i32) -> Result<Self, MoveError> {
        if pid <= 0 {
            return Err(MoveError::Gone(pid));
        }
        let tgid = Pid::from_raw(pid);
        match sys::pidfd::open(pid, 0).map_err(|e| errno_of(&e)) {
            Ok(pidfd) => Ok(ProcessHandle { pidfd, tgid }),
            Err(Errno::ESRCH) => Err(MoveError::Gone(pid)),
            // EINVAL: a thread that is not a group leader.
            Err(errno) => Err(MoveError::Pin { pid, errno }),
        }
    }

    /// Takes over `pidfd`, pinned elsewhere as process `pid` (a thread-group
    /// id in our pid namespace).
    pub fn pinned(pidfd: OwnedFd, pid: i32) -> Result<Self, MoveError> {
        if pid <= 0 {
            return Err(MoveError::Gone(pid));
        }
        Ok(ProcessHandle {
            pidfd,
            tgid: Pid::from_raw(pid),
        })
    }

    /// Takes over a pidfd pinned elsewhere; its pid is asked of the kernel.
    pub fn from_pidfd(pidfd: OwnedFd) -> Result<Self, MoveError> {
        let pid = match sys::pidfd::pid(pidfd.as_fd()).map_err(|e| errno_of(&e)) {
            Ok(Some(pid)) => pid,
            Ok(None) => Self::pid_from_fdinfo(&pidfd)?,
            Err(Errno::ESRCH) => -1,
            Err(errno) => return Err(MoveError::Pin { pid: -1, errno }),
        };
        // -1: the process is gone; 0: not visible in our pid namespace.
        if pid <= 0 {
            return Err(MoveError::Gone(pid));
        }
        Ok(ProcessHandle {
            pidfd,
            tgid: Pid::from_raw(pid),
        })
    }

    /// The pid of a pidfd as `/proc/self/fdinfo` shows it (-1 once it has
    /// exited), for kernels without `PIDFD_GET_INFO`.
    fn pid_from_fdinfo(pidfd: &OwnedFd) -> Result<i32, MoveError> {
        let path = format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd());
        let info = fs::read_to_string(path).map_err(MoveError::Proc)?;
        let pid = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse::<i32>().ok())
            .ok_or(MoveError::Pin {
                pid: -1,
                errno: Errno::EBADF,
            })?;
        Ok(pid)
    }

    /// The pid, in our pid namespace.
    pub fn pid(&self) -> Pid {
        self.tgid
    }

    /// The pidfd.
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Whether the pinned process has not exited (a zombie has).
    pub fn is_alive(&self) -> bool {
        sys::pidfd::alive(self.pidfd.as_fd())
    }

    /// Whether the pinned process has exited or is on its way out: every
    /// thread has exited or is exiting, or one has a SIGKILL pending (a
    /// kill, or another thread's `exit_group`).
    pub fn is_gone_or_dying(&self) -> bool {
        !self.is_alive() || is_dying(self.tgid)
    }
}

/// The injected step that failed in a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `unshare(CLONE_FS)`, before joining a mount namespace.
    UnshareFs,
    /// `pidfd_open(holder)`: the holder is not visible in the target's pid
    /// namespace, or no descriptor is free.
    PidfdOpen,
    /// `setns(pidfd, kinds)`.
    Setns,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::UnshareFs => "unshare(CLONE_FS)",
            Step::PidfdOpen => "pidfd_open",
            Step::Setns => "setns",
        })
    }
}

/// A syscall a move injects, as a seccomp filter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `unshare`.
    Unshare,
    /// `pidfd_open`.
    PidfdOpen,
    /// `setns`.
    Setns,
    /// `close`.
    Close,
}

impl Call {
    /// Every call a move injects.
    pub const ALL: [Call; 4] = [Call::Unshare, Call::PidfdOpen, Call::Setns, Call::Close];

    /// The syscall's name.
    pub fn name(self) -> &'static str {
        match self {
            Call::Unshare => "unshare",
            Call::PidfdOpen => "pidfd_open",
            Call::Setns => "setns",
            Call::Close => "close",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Step {
    /// Every step.
    pub const ALL: [Step; 3] = [Step::UnshareFs, Step::PidfdOpen, Step::Setns];
}

/// Why a move did not happen. Unless stated otherwise, the target was left
/// exactly as it was.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The process exited (before or during the move).
    #[error("process {0} is gone")]
    Gone(i32),
    /// The process has exited but is not reaped yet.
    #[error("process {0} is a zombie")]
    Zombie(i32),
    /// Kernel threads have no user context to run a syscall in.
    #[error("process {0} is a kernel thread")]
    KernelThread(i32),
    /// The calling process cannot trace itself.
    #[error("refusing to move the calling process itself")]
    SelfProcess,
    /// Another tracer (debugger, strace) holds a thread; it is left alone.
    #[error("thread {tid} is already traced by {tracer}")]
    AlreadyTraced {
        /// The traced thread.
        tid: i32,
        /// Its tracer.
        tracer: i32,
    },
    /// The kernel refused to let us trace the process.
    #[error("not permitted to trace thread {0}")]
    TraceDenied(i32),
    /// `kinds` holds something that is not a namespace kind.
    #[error("not namespace kinds: {0:#x}")]
    InvalidKinds(libc::c_int),
    /// Pinning the pid failed.
    #[error("cannot pin pid {pid}: {errno}")]
    Pin {
        /// The pid given.
        pid: i32,
        /// pidfd_open's errno.
        errno: Errno,
    },
    /// A thread refused; threads moved before it were moved back.
    #[error("thread {tid}: {step} failed: {errno} ({moved_back} threads moved back)")]
    Refused {
        /// The refusing thread.
        tid: i32,
        /// What it refused.
        step: Step,
        /// The kernel's errno, passed through.
        errno: Errno,
        /// Threads that had moved and were moved back.
        moved_back: usize,
    },
    /// Moving threads back failed: the process is split across namespaces.
    #[error("thread {tid} could not be moved back after {cause}")]
    RollbackFailed {
        /// A thread left in the new namespaces.
        tid: i32,
        /// The failure that made the rollback necessary.
        cause: Box<MoveError>,
    },
    /// A seccomp filter of the target would kill it for a syscall the move
    /// injects; nothing was injected.
    #[error("thread {tid}: its seccomp filter would kill it for calling {syscall}")]
    SeccompKills {
        /// The thread whose filter kills.
        tid: i32,
        /// The syscall it would be killed for.
        syscall: Call,
    },
    /// A thread is in strict seccomp mode, where any of the injected calls
    /// would kill it; nothing was injected.
    #[error("thread {0} is in strict seccomp mode: any injected call would kill it")]
    SeccompStrict(i32),
    /// A thread has seccomp filters this kernel does not show to a tracer
    /// (`PTRACE_SECCOMP_GET_FILTER` needs `CONFIG_CHECKPOINT_RESTORE`), so
    /// what they would do with the injected calls cannot be known; nothing
    /// was injected.
    #[error(
        "thread {0} has seccomp filters this kernel does not show: what they do to an injected call is unknown"
    )]
    SeccompHidden(i32),
    /// A seccomp filter of the target hands one of the injected calls to
    /// another process (a user-notification supervisor or a tracer), which
    /// could fake its result or never answer; nothing was injected.
    #[error("thread {tid}: its seccomp filter hands {syscall} to a supervisor or tracer")]
    SeccompDelegates {
        /// The thread whose filter delegates.
        tid: i32,
        /// The syscall it would hand over.
        syscall: Call,
    },
    /// A thread did not stop within [`STOP_TIMEOUT`]. The threads that had
    /// stopped were let go untouched; the stuck one is still attached, with
    /// a stop requested, until the calling thread exits (which is why an
    /// injector ends after this error): the kernel then drops the request
    /// and the thread never notices.
    #[error(
        "thread {tid} did not stop within {waited:?} (a vfork parent, or a sleep no signal interrupts)"
    )]
    Stuck {
        /// The thread that did not stop.
        tid: i32,
        /// How long the move waited.
        waited: Duration,
    },
    /// An injected call reported success, but the thread is not where the
    /// call would have put it (a seccomp supervisor or tracer answered in
    /// the kernel's stead): the move was undone, and a descriptor the move
    /// did not open was never closed.
    #[error("thread {tid}: {step} reported success, but its effect is not there")]
    Untrusted {
        /// The thread.
        tid: i32,
        /// The call whose result was not true.
        step: Step,
    },
    /// Threads kept appearing while the process was being stopped.
    #[error("process {0} keeps creating threads")]
    Unstable(i32),
    /// The namespaces of the process, read once it was stopped, are not
    /// those the caller chose the kinds from (another move of it, or the
    /// process itself, changed them meanwhile): nothing was changed.
    #[error(
        "process {pid} changed namespaces while its move was prepared: \
         kinds {chose:#x} were chosen, {now:#x} differ now"
    )]
    Changed {
        /// The process.
        pid: i32,
        /// The kinds the caller chose.
        chose: libc::c_int,
        /// The kinds (pid aside) in which it differs from the holder now.
        now: libc::c_int,
    },
    /// A thread of the process other than its leader ran execve(2) while
    /// the process was being stopped: the process runs a new program, and
    /// nothing was written into it.
    #[error("process {0} ran a new program (execve) while it was being stopped")]
    Execed(i32),
    /// No injection for this architecture or this process.
    #[error("unsupported: {0}")]
    Unsupported(Unsupported),
    /// Tracing failed.
    #[error(transparent)]
    Trace(TraceError),
    /// Reading `/proc` failed.
    #[error("reading /proc: {0}")]
    Proc(std::io::Error),
}

impl From<TraceError> for MoveError {
    fn from(e: TraceError) -> Self {
        match e {
            TraceError::Gone(tid) => MoveError::Gone(tid.as_raw()),
            TraceError::AlreadyTraced { tid, tracer } => MoveError::AlreadyTraced {
                tid: tid.as_raw(),
                tracer: tracer.as_raw(),
            },
            TraceError::Denied(tid) => MoveError::TraceDenied(tid.as_raw()),
            TraceError::Unsupported(what) => MoveError::Unsupported(what),
            e => MoveError::Trace(e),
        }
    }
}

impl MoveError {
    /// Whether a thread of the target is still attached to the calling
    /// thread after this error ([`MoveError::Stuck`]): the calling thread
    /// must exit to let it go, and must trace nothing else meanwhile.
    pub fn leaves_tracee_attached(&self) -> bool {
        matches!(
            self,
            MoveError::Stuck { .. } | MoveError::Trace(TraceError::NotStopping(_))
        )
    }
}

/// What a successful move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveReport {
    /// Threads moved.
    pub threads: usize,
    /// Listings of the threads until no new one showed.
    pub rounds: usize,
    /// Whether each thread had to `unshare(CLONE_FS)` first.
    pub unshared_fs: bool,
    /// Whether the calls ran from the join stub (one resume per thread)
    /// rather than one single step each.
    pub stub: bool,
    /// Whether the stopped threads were read in one kernel call (their
    /// ids, seccomp modes and namespaces; see [`read_threads_with`])
    /// rather than through `/proc`.
    pub kernel_read: bool,
}

/// `/proc/PID/stat` of `pid`, or why it cannot be read.
fn proc_stat(pid: Pid) -> Result<Stat, MoveError> {
    Stat::read(pid.as_raw()).map_err(MoveError::Proc)
}

/// The one-thread BPF program the moves of this process read a stopped
/// target's threads with (see [`read_threads_with`]).
static THREAD_READER: OnceLock<(OwnedFd, Links)> = OnceLock::new();

/// Lets every later move in this process read the threads of a stopped
/// target in one BPF call ([`crate::kview::bpf::read_process`] with
/// `prog`, the daemon's one-thread program, which must have been loaded
/// by a process in this one's pid namespace) instead of through `/proc`:
/// their ids once they are stopped, their seccomp modes, their
/// namespaces before the move and after `setns`. A move falls back to
/// `/proc` whenever a read does not answer for every thread. Only the
/// first program given is kept; returns whether this one was.
pub fn read_threads_with(prog: OwnedFd) -> bool {
    // One link, over the target of the move under way: a move reads its
    // target when every thread has stopped and again after the join.
    THREAD_READER.set((prog, Links::new(1))).is_ok()
}

/// The threads of a stopped process as one kernel read found them, by
/// tid.
type Snapshot = BTreeMap<i32, KernelThread>;

/// Every thread of `tgid` as the kernel has it now, in one BPF read,
/// and whether the read lists them all ([`ProcessRead::whole`]); `None`
/// without the program, or if the read cannot answer (the caller reads
/// `/proc`, which explains a process that is gone).
///
/// [`ProcessRead::whole`]: crate::kview::bpf::ProcessRead::whole
fn kernel_threads(tgid: Pid) -> Option<(Snapshot, bool)> {
    let (prog, links) = THREAD_READER.get()?;
    match crate::kview::bpf::read_process_with(prog.as_fd(), links, tgid.as_raw() as u32) {
        Ok(read) => read.map(|r| {
            let all = r.threads.into_iter().map(|t| (t.proc.pid, t)).collect();
            (all, r.whole)
        }),
        Err(e) => {
            log::debug!("process {tgid}: cannot read its threads in one BPF call ({e})");
            None
        }
    }
}

/// The namespaces of kinds `kinds` (in [`KINDS`] order) of thread `tid`
/// in `snapshot`, as its `/proc/TID/ns` links read them; `None` if it is
/// not there or a link would not read.
fn snapshot_ns_ids(snapshot: &Snapshot, tid: Pid, kinds: libc::c_int) -> Option<Vec<u64>> {
    let thread = snapshot.get(&tid.as_raw())?;
    Kind::ALL
        .into_iter()
        .filter(|k| kinds & k.clone_flag() != 0)
        .map(|k| thread.proc.entry(k))
        .collect()
}

/// The kinds, pid aside, in which thread `tid` of `tgid` is not in the
/// namespaces of the holder `known` (the caller makes the holder of a
/// move that leaves the pid namespace alone sit in the target's own, so
/// that kind is not compared); from `snapshot`, else `/proc`; `None` if
/// its namespaces do not read.
fn differing_kinds(
    tgid: Pid,
    tid: Pid,
    snapshot: Option<&Snapshot>,
    known: &Known,
) -> Option<libc::c_int> {
    let all = KINDS.iter().fold(0, |all, (flag, _)| all | flag);
    let ids = match snapshot.and_then(|s| snapshot_ns_ids(s, tid, all)) {
        Some(ids) => ids,
        None => ns_ids(&ProcDir::tasks(tgid.as_raw()).ok()?, tid, all).ok()?,
    };
    Some(
        KINDS
            .iter()
            .zip(ids.iter().zip(known.inodes))
            .filter(|((flag, _), (now, want))| *flag != libc::CLONE_NEWPID && **now != *want)
            .fold(0, |kinds, ((flag, _), _)| kinds | flag),
    )
}

/// The namespaces of kinds `kinds` of each of `threads`, from `snapshot`
/// if it has them all.
fn snapshot_ns_all(
    snapshot: Option<&Snapshot>,
    threads: &[Tracee<Stopped>],
    kinds: libc::c_int,
) -> Option<Vec<Vec<u64>>> {
    let snapshot = snapshot?;
    threads
        .iter()
        .map(|t| snapshot_ns_ids(snapshot, t.tid(), kinds))
        .collect()
}

/// The threads of `tgid`, in tid order.
fn list_threads(tgid: Pid) -> Result<Vec<i32>, MoveError> {
    procfs::tasks(tgid.as_raw()).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => MoveError::Gone(tgid.as_raw()),
        _ => MoveError::Proc(e),
    })
}

/// The errno of a system call's error.
fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

fn is_kernel_thread(tid: Pid) -> bool {
    proc_stat(tid).is_ok_and(|s| s.is_kernel_thread())
}

/// Whether thread `tid` has exited (a zombie, or gone already).
fn is_zombie(tid: Pid) -> bool {
    proc_stat(tid).map_or(true, |s| s.is_zombie())
}

/// Every thread of a process, stopped.
struct AllStopped {
    /// In tid order.
    threads: Vec<Tracee<Stopped>>,
    /// How many times the threads were listed.
    rounds: usize,
    /// What the last listing found, if it was a kernel read (every
    /// listing after the first is, where the kernel answers): read while
    /// every thread was stopped, it holds for the move.
    snapshot: Option<Snapshot>,
}

/// Stops every thread of `tgid`.
///
/// `before_wait` runs once, after the threads of the first round are
/// seized and asked to stop and before any stop is awaited: a thread
/// blocked in a request that the caller must answer (see [`Writer`])
/// stops only once the answer is sent. From then on the write of thread
/// `writer` has been answered as a success, so whatever makes the move
/// give up later (a thread that does not stop, one that cannot be
/// seized, an exec) makes that write fail instead, with its errno.
fn stop_all(
    tgid: Pid,
    before_wait: Option<&mut dyn FnMut()>,
    writer: Option<(Pid, ErrnoOf)>,
) -> Result<AllStopped, MoveError> {
    let mut stopped: Vec<Tracee<Stopped>> = Vec::new();
    match stop_rounds(tgid, before_wait, writer, &mut stopped) {
        Ok((rounds, snapshot)) => {
            stopped.sort_by_key(|t| t.tid());
            Ok(AllStopped {
                threads: stopped,
                rounds,
                snapshot,
            })
        }
        Err(e) => Err(answer_failed(&mut stopped, writer, e)),
    }
}

/// The rounds of [`stop_all`], which collects the threads stopped into
/// `stopped`; returns the number of rounds and the kernel's last read.
fn stop_rounds(
    tgid: Pid,
    mut before_wait: Option<&mut dyn FnMut()>,
    writer: Option<(Pid, ErrnoOf)>,
    stopped: &mut Vec<Tracee<Stopped>>,
) -> Result<(usize, Option<Snapshot>), MoveError> {
    let mut seen = BTreeSet::new();
    let mut deadline = None;
    for round in 1..=MAX_ROUNDS {
        // The first listing, with nothing stopped yet, needs ids alone.
        // Later ones are the kernel's where it answers with a read that
        // cannot have left a thread out; else `/proc` lists them.
        let read = (round > 1).then(|| kernel_threads(tgid)).flatten();
        let (listed, snapshot) = match read {
            Some((threads, true)) => (threads.keys().copied().collect(), Some(threads)),
            _ => (list_threads(tgid)?, None),
        };
        let new: Vec<i32> = listed
            .iter()
            .copied()
            .filter(|t| !seen.contains(t))
            .collect();
        if new.is_empty() {
            // An execve(2) by a thread other than the leader hands that
            // thread the leader's id and ends every other thread, the
            // stopped leader too, without a word to the tracer: the id
            // then names a thread that runs a new program, into which
            // nothing may be written, and whose registers are not the
            // ones saved. Only the leader's id changes hands so; a leader
            // that was not stopped has exited, or the id is another's.
            let leader = stopped.iter().position(|t| t.tid() == tgid);
            let replaced = match leader {
                Some(i) => !stopped[i].is_unchanged(),
                None => !is_zombie(tgid),
            };
            if replaced {
                if let Some(i) = leader {
                    stopped.remove(i).let_go_untouched();
                }
                return Err(MoveError::Execed(tgid.as_raw()));
            }
            // A thread stopped that this listing, made while every thread
            // of the process is stopped, does not have is not one of its
            // threads (any more): it is let go (its write, if it is the
            // writer, can only fail with the rest of the process).
            let listed: BTreeSet<i32> = listed.into_iter().collect();
            stopped.retain(|t| listed.contains(&t.tid().as_raw()));
            // Every listed thread is stopped, so none can have created a
            // thread this read missed. A read of the kernel's from now on
            // finds each thread as the move will (a read that had to be
            // resumed may still miss one killed meanwhile: the steps that
            // need it then read `/proc`).
            let snapshot = match snapshot {
                Some(threads) => Some(threads),
                None if round > 1 => kernel_threads(tgid).map(|(threads, _)| threads),
                None => None,
            };
            return Ok((round, snapshot));
        }
        // A thread that cannot be seized ends the round's seizing; the
        // threads seized before it are still waited for (with the
        // deadline), so that none is dropped while it may not stop, and
        // the writer's write is answered and then made to fail.
        let mut failed: Option<MoveError> = None;
        let mut running = Vec::with_capacity(new.len());
        for &tid in &new {
            seen.insert(tid);
            match Tracee::seize_thread(tgid, Pid::from_raw(tid)) {
                Ok(t) => running.push(t),
                // Exited meanwhile, or a leader that exited before the
                // other threads: nothing to move.
                Err(TraceError::Gone(_)) => {}
                Err(TraceError::Denied(t)) if is_zombie(t) => {}
                Err(e) => {
                    failed = Some(e.into());
                    break;
                }
            }
        }
        // The writer, once seized, stops only when its write is answered;
        // a round that failed before seizing it leaves the answer to the
        // caller, with the error.
        let writer_seized = writer.is_some_and(|(w, _)| running.iter().any(|t| t.tid() == w));
        if (failed.is_none() || writer_seized)
            && let Some(answer) = before_wait.take()
        {
            answer();
        }
        // The leader last: see `inject::syscall_each`.
        running.sort_by_key(|t| t.tid() == tgid);
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + STOP_TIMEOUT);
        let mut stuck = None;
        for t in running {
            // Past a stuck thread the deadline has passed: the others are
            // only asked whether they have stopped, and let go if so.
            match t.wait_stop_until(Some(deadline)) {
                Ok(t) => stopped.push(t),
                Err(TraceError::Gone(_)) => {}
                Err(TraceError::NotStopping(tid)) => {
                    stuck.get_or_insert(tid);
                }
                Err(e) => {
                    failed.get_or_insert(e.into());
                }
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(tid) = stuck {
            return Err(MoveError::Stuck {
                tid: tid.as_raw(),
                waited: STOP_TIMEOUT,
            });
        }
    }
    Err(MoveError::Unstable(tgid.as_raw()))
}

/// `e`, after making the write of thread `writer` (if it is among the
/// `stopped`) fail with its errno: the write was answered as a success
/// before the threads were waited for.
fn answer_failed(
    stopped: &mut [Tracee<Stopped>],
    writer: Option<(Pid, ErrnoOf)>,
    e: MoveError,
) -> MoveError {
    if let Some((tid, errno_of)) = writer
        && let Some(w) = stopped.iter_mut().find(|t| t.tid() == tid)
    {
        let _ = w.set_result(-i64::from(errno_of(&e)));
    }
    e
}

/// Namespace inode numbers of one thread, one per requested kind.
/// `tasks` is the process's open `/proc/PID/task`.
fn ns_ids(tasks: &ProcDir, tid: Pid, kinds: libc::c_int) -> Result<Vec<u64>, MoveError> {
    // The thread's `ns` directory is looked up once for all the links.
    let ns = tasks
        .subdir(&format!("{tid}/ns"))
        .map_err(MoveError::Proc)?;
    ns_ids_in(&ns, kinds)
}

/// The inodes of the links of kinds `kinds` in the `ns` directory `ns`.
fn ns_ids_in(ns: &ProcDir, kinds: libc::c_int) -> Result<Vec<u64>, MoveError> {
    KINDS
        .iter()
        .filter(|(flag, _)| kinds & flag != 0)
        .map(|(_, name)| ns.inode(name).map_err(MoveError::Proc))
        .collect()
}

/// The last NSpid entry: the thread's id in its own pid namespace, which is
/// where an injected `pidfd_open` looks numbers up.
fn own_ns_tid(tid: Pid) -> Result<i32, MoveError> {
    let status = Status::read(tid.as_raw()).map_err(MoveError::Proc)?;
    status
        .field("NSpid")
        .and_then(|v| v.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .ok_or(MoveError::Proc(std::io::Error::other(
            "no NSpid in /proc/PID/status",
        )))
}

/// What a move must find once it is done: the holder (its pid in our pid
/// namespace) and, for each kind moved in [`KINDS`] order, the namespace
/// `setns(pidfd_of_holder, kinds)` joins.
#[derive(Debug)]
struct Expected {
    holder: i32,
    inodes: Vec<u64>,
}

impl Expected {
    /// What a join of `kinds` through a holder known as `known` must end in.
    fn of(known: Known, kinds: libc::c_int) -> Expected {
        Expected {
            holder: known.local,
            inodes: KINDS
                .iter()
                .zip(known.inodes)
                .filter(|((flag, _), _)| kinds & flag != 0)
                .map(|(_, ino)| ino)
                .collect(),
        }
    }
}

/// The holder whose pid in the target's pid namespace is `holder`, and the
/// namespaces a join of `kinds` through it must end in (for pid and time:
/// the ones it is in, which `setns` makes the target's children's).
fn expected(target: Pid, holder: i32, kinds: libc::c_int) -> Result<Expected, MoveError> {
    let refused = |errno: Errno| MoveError::Refused {
        tid: target.as_raw(),
        step: Step::PidfdOpen,
        errno,
        moved_back: 0,
    };
    let pidns = fs::File::open(format!("/proc/{target}/ns/pid")).map_err(MoveError::Proc)?;
    let local = sys::ns::tgid_from_pidns(pidns.as_fd(), holder)
        .map_err(|e| refused(e.raw_os_error().map_or(Errno::ESRCH, Errno::from_raw)))?;
    let pin = ProcessHandle::open(local).map_err(|_| refused(Errno::ESRCH))?;
    let ns = ProcDir::ns(local).map_err(|_| refused(Errno::ESRCH))?;
    let inodes = KINDS
        .iter()
        .filter(|(flag, _)| kinds & flag != 0)
        .map(|&(flag, entry)| {
            let active = match flag {
                libc::CLONE_NEWPID => "pid",
                libc::CLONE_NEWTIME => "time",
                _ => entry,
            };
            ns.inode(active).map_err(|_| refused(Errno::ESRCH))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // The pin: the namespaces read are those of the process translated.
    if !pin.is_alive() {
        return Err(refused(Errno::ESRCH));
    }
    Ok(Expected {
        holder: local,
        inodes,
    })
}

/// Whether descriptor `fd` of thread `tid` (of process `tgid`) is a pidfd
/// of process `holder` (pid in our namespace): only then did the injected
/// `pidfd_open` really open it, and only then may the move close it.
fn is_pidfd_of(tgid: Pid, tid: Pid, fd: i64, holder: i32) -> bool {
    let path = format!("/proc/{tgid}/task/{tid}/fdinfo/{fd}");
    fs::read_to_string(path).is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .is_some_and(|p| p.trim().parse::<i32>() == Ok(holder))
    })
}

/// How one thread's join went wrong.
enum JoinFailure {
    /// An injected syscall returned an error; the thread did not move.
    Refused(Step, Errno),
    /// Tracing failed; whether the thread moved is not known.
    Trace(TraceError),
    /// An injected call reported success that did not happen.
    Untrusted(Step),
}

impl From<TraceError> for JoinFailure {
    fn from(e: TraceError) -> Self {
        JoinFailure::Trace(e)
    }
}

fn run(
    t: &mut Tracee<Stopped>,
    nr: libc::c_long,
    args: &[u64],
) -> Result<SyscallResult, TraceError> {
    let mut all = [0u64; 6];
    all[..args.len()].copy_from_slice(args);
    t.syscall(nr, all)
}

/// Makes thread `t` join the namespaces (`kinds`) of the process or thread
/// `source` (numbered in the target's pid namespace), then restores its
/// registers; it stays stopped.
fn join(
    t: &mut Tracee<Stopped>,
    source: i32,
    pidfd_flags: u64,
    kinds: libc::c_int,
    unshare_fs: bool,
) -> Result<(), JoinFailure> {
    if unshare_fs {
        run(t, libc::SYS_unshare, &[libc::CLONE_FS as u64])?
            .map_err(|e| JoinFailure::Refused(Step::UnshareFs, e))?;
    }
    let fd = run(t, libc::SYS_pidfd_open, &[source as u64, pidfd_flags])?
        .map_err(|e| JoinFailure::Refused(Step::PidfdOpen, e))?;
    let joined = run(t, libc::SYS_setns, &[fd as u64, kinds as u64]);
    // Close even if setns failed; a tracer failure here still reports.
    let closed = run(t, libc::SYS_close, &[fd as u64]);
    let joined = joined?;
    match closed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => log::warn!("thread {}: closing injected pidfd {fd}: {e}", t.tid()),
        Err(e) if joined.is_ok() => {
            log::error!("thread {}: pidfd {fd} left open: {e}", t.tid());
        }
        Err(e) => return Err(e.into()),
    }
    joined.map_err(|e| JoinFailure::Refused(Step::Setns, e))?;
    t.restore()?;
    Ok(())
}

/// Six syscall arguments from the first few.
fn args(first: &[u64]) -> [u64; 6] {
    let mut all = [0u64; 6];
    all[..first.len()].copy_from_slice(first);
    all
}

/// Closes, in each thread given a call, the pidfd the move injected there;
/// a failure to close is logged, and a tracing failure is the move's.
fn close_injected(
    threads: &mut [Tracee<Stopped>],
    calls: &[Option<(i64, [u64; 6])>],
    failure: &mut Option<(usize, JoinFailure)>,
) {
    for (i, closed) in inject::syscall_each(threads, calls).into_iter().enumerate() {
        match closed {
            None | Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => {
                log::warn!("thread {}: closing injected pidfd: {e}", threads[i].tid())
            }
            Some(Err(e)) => {
                log::error!(
                    "thread {}: injected pidfd may be left open: {e}",
                    threads[i].tid()
                );
                failure.get_or_insert((i, JoinFailure::Trace(e)));
            }
        }
    }
}

/// Records the first failure of a round of injected syscalls (by thread
/// order); returns the successful values.
fn sift(
    round: Vec<Option<Result<SyscallResult, TraceError>>>,
    step: Step,
    failure: &mut Option<(usize, JoinFailure)>,
) -> Vec<Option<i64>> {
    round
        .into_iter()
        .enumerate()
        .map(|(i, outcome)| match outcome? {
            Ok(Ok(value)) => Some(value),
            Ok(Err(errno)) => {
                failure.get_or_insert((i, JoinFailure::Refused(step, errno)));
                None
            }
            Err(e) => {
                failure.get_or_insert((i, JoinFailure::Trace(e)));
                None
            }
        })
        .collect()
}

/// For each thread, the index of the first thread that shares its
/// descriptor table (itself if none before it does).
///
/// Where `snapshot`, read while every thread was stopped, has every
/// thread, those it finds sharing their leader's table (normally all;
/// none once the leader has exited) share one another's without a kcmp
/// each; kcmp tells about the others. Where kcmp is needed and the kernel
/// has none, every thread counts as having a table of its own.
fn fd_tables(
    threads: &[Tracee<Stopped>],
    snapshot: Option<&Snapshot>,
) -> Result<Vec<usize>, MoveError> {
    let shares_leaders: Vec<bool> = match snapshot {
        Some(s) if threads.iter().all(|t| s.contains_key(&t.tid().as_raw())) => threads
            .iter()
            .map(|t| s[&t.tid().as_raw()].shares_leader_files)
            .collect(),
        _ => vec![false; threads.len()],
    };
    group_by_table(&shares_leaders, |a, b| {
        sys::process::same_files(threads[a].tid(), threads[b].tid())
    })
    .map_err(|(i, errno)| {
        MoveError::Trace(TraceError::Os {
            tid: threads[i].tid(),
            op: Op::Kcmp,
            errno,
        })
    })
}

/// [`fd_tables`] for threads `0..shares_leaders.len()`: those with
/// `shares_leaders[i]` share one table, the leader's; any other, whose
/// table is not the leader's, is compared, with `same(opener, i)` (kcmp),
/// to the first thread of each other table found before it. `same`
/// answering `None` (no kcmp) makes every thread a table of its own; an
/// error names the thread it was asked about.
fn group_by_table(
    shares_leaders: &[bool],
    mut same: impl FnMut(usize, usize) -> Result<Option<bool>, Errno>,
) -> Result<Vec<usize>, (usize, Errno)> {
    let n = shares_leaders.len();
    let mut leaders_table = None;
    let mut tables: Vec<usize> = Vec::with_capacity(n);
    let mut openers: Vec<usize> = Vec::new();
    for (i, &shares) in shares_leaders.iter().enumerate() {
        if shares {
            tables.push(*leaders_table.get_or_insert(i));
            continue;
        }
        let mut table = i;
        for &o in &openers {
            match same(o, i).map_err(|errno| (i, errno))? {
                Some(true) => {
                    table = o;
                    break;
                }
                Some(false) => {}
                None => return Ok((0..n).collect()),
            }
        }
        if table == i {
            openers.push(i);
        }
        tables.push(table);
    }
    Ok(tables)
}

/// Makes every thread join the holder's namespaces, one injected syscall per
/// round for all threads at once. Threads that share a descriptor table
/// (`tables`, see [`fd_tables`]) share one pidfd: the first of them opens it
/// and closes it again once all have joined, so every pidfd opened is closed
/// again. On failure returns the first failing thread (in tid order) and why;
/// threads may then have moved or not, which the caller checks.
fn join_all(
    threads: &mut [Tracee<Stopped>],
    tables: &[usize],
    holder: i32,
    expected: &Expected,
    kinds: libc::c_int,
    unshare_fs: bool,
) -> Result<(), (usize, JoinFailure)> {
    let n = threads.len();
    let mut failure = None;
    if unshare_fs {
        let calls = vec![Some((libc::SYS_unshare, args(&[libc::CLONE_FS as u64]))); n];
        sift(
            inject::syscall_each(threads, &calls),
            Step::UnshareFs,
            &mut failure,
        );
        if let Some(f) = failure {
            return Err(f);
        }
    }
    let opens = |i: usize| tables.get(i) == Some(&i);
    let calls: Vec<_> = (0..n)
        .map(|i| opens(i).then(|| (libc::SYS_pidfd_open, args(&[holder as u64, 0]))))
        .collect();
    let mut fds = sift(
        inject::syscall_each(threads, &calls),
        Step::PidfdOpen,
        &mut failure,
    );
    // A result that is not a pidfd of the holder was not made by the
    // kernel's pidfd_open: whatever descriptor it names is the target's own.
    for (i, fd) in fds.iter_mut().enumerate() {
        if let Some(value) = *fd {
            let t = &threads[i];
            if !is_pidfd_of(t.tgid(), t.tid(), value, expected.holder) {
                log::error!(
                    "thread {}: injected pidfd_open returned {value}, which is not a pidfd \
                     of the holder; it is left alone",
                    t.tid()
                );
                *fd = None;
                failure.get_or_insert((i, JoinFailure::Untrusted(Step::PidfdOpen)));
            }
        }
    }
    if failure.is_none() {
        let calls: Vec<_> = (0..n)
            .map(|i| {
                let fd = tables.get(i).and_then(|&o| fds.get(o).copied().flatten());
                fd.map(|fd| (libc::SYS_setns, args(&[fd as u64, kinds as u64])))
            })
            .collect();
        sift(
            inject::syscall_each(threads, &calls),
            Step::Setns,
            &mut failure,
        );
    }
    let calls: Vec<_> = fds
        .iter()
        .map(|fd| fd.map(|fd| (libc::SYS_close, args(&[fd as u64]))))
        .collect();
    close_injected(threads, &calls, &mut failure);
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// The lowest descriptor number free in thread `tid`'s table: the one the
/// kernel gives the next descriptor opened there, as long as nothing that
/// shares the table opens or closes one meanwhile.
fn lowest_free_fd(tgid: Pid, tid: Pid) -> Result<i64, MoveError> {
    let mut used = procfs::fds(tgid.as_raw(), tid.as_raw()).map_err(MoveError::Proc)?;
    used.sort_unstable();
    let mut free = 0;
    for fd in used {
        if fd == free {
            free += 1;
        } else if fd > free {
            break;
        }
    }
    Ok(free)
}

/// [`join_all`] through the join stub: each thread runs its `unshare`,
/// `pidfd_open`, `setns` and `close` in one resume instead of one single
/// step each. Threads that share a descriptor table share one pidfd: the
/// first of them (the opener) runs the stub first, opening it; the others
/// then run it all at once, joining through that descriptor; an opener
/// alone with its table closes the pidfd inside the stub, the others'
/// are closed by one single step once the stub is out of the target.
///
/// The pidfd is checked before anyone closes it: the stub goes on to
/// `setns` and `close` only if `pidfd_open` returned the lowest free
/// number of the table (read before), which the kernel's `pidfd_open`
/// gives, and a descriptor at a number free before the move is none of
/// the target's own. Any other result stops the stub before the
/// descriptor is used, and is then checked as [`join_all`] checks it.
/// An opener with no seccomp at all (`unfiltered`) needs no such reading:
/// no filter can answer its `pidfd_open` in the kernel's stead, so any
/// result but an error is a descriptor the kernel just made.
///
/// The stub's bytes are put back before this returns, whatever happened.
#[allow(clippy::too_many_arguments)]
fn join_all_stub(
    threads: &mut [Tracee<Stopped>],
    tables: &[usize],
    (stub, unfiltered): (Stub, &[bool]),
    holder: i32,
    expected: &Expected,
    kinds: libc::c_int,
    unshare_fs: bool,
) -> Result<(), (usize, JoinFailure)> {
    let n = threads.len();
    let entry = stub.entry();
    let unshare = if unshare_fs { libc::CLONE_FS } else { 0 };
    let mut failure: Option<(usize, JoinFailure)> = None;
    let opens = |i: usize| tables.get(i) == Some(&i);
    let alone = |i: usize| (0..n).all(|j| j == i || tables.get(j) != Some(&i));
    // Phase one: the openers.
    let mut joins: Vec<Option<Join>> = vec![None; n];
    for (i, join) in joins.iter_mut().enumerate() {
        if !opens(i) {
            continue;
        }
        let t = &threads[i];
        let expect_fd = match unfiltered.get(i) {
            Some(true) => Ok(None),
            _ => lowest_free_fd(t.tgid(), t.tid()).map(Some),
        };
        match expect_fd {
            Ok(expect_fd) => {
                *join = Some(Join {
                    unshare,
                    fd: None,
                    pid: holder,
                    expect_fd,
                    kinds,
                    close: alone(i),
                });
            }
            Err(MoveError::Proc(e)) => {
                failure.get_or_insert((i, JoinFailure::Trace(proc_failure(t.tid(), e))));
            }
            Err(_) => {
                failure.get_or_insert((i, JoinFailure::Untrusted(Step::PidfdOpen)));
            }
        }
    }
    // Per thread: the pidfd its table shares, if one was opened, and
    // whether it is still open (to be closed by a single step).
    let mut fds: Vec<Option<i64>> = vec![None; n];
    let mut open: Vec<bool> = vec![false; n];
    // Openers whose pidfd came with another number than expected, checked
    // and found genuine: their setns is a single step.
    let mut stepped: Vec<usize> = Vec::new();
    if failure.is_none() {
        let outcomes = inject::join_each(threads, entry, &joins);
        for (i, outcome) in outcomes.into_iter().enumerate() {
            let (Some(outcome), Some(join)) = (outcome, joins[i]) else {
                continue;
            };
            let outcome = match outcome {
                Ok(o) => o,
                Err(e) => {
                    failure.get_or_insert((i, JoinFailure::Trace(e)));
                    continue;
                }
            };
            if let Some(f) = unshare_failure(outcome.unshare) {
                failure.get_or_insert((i, f));
                continue;
            }
            let opened = outcome.opened.map(inject::decode);
            match opened {
                Some(Ok(fd)) if fd >= 0 && join.expect_fd.is_none_or(|expected| fd == expected) => {
                    fds[i] = Some(fd);
                }
                Some(Ok(fd)) => {
                    // The kernel gave another number (something outside the
                    // stopped threads shares the table), or the result was
                    // not the kernel's: checked as a single step's is.
                    let t = &threads[i];
                    if is_pidfd_of(t.tgid(), t.tid(), fd, expected.holder) {
                        fds[i] = Some(fd);
                        open[i] = true;
                        stepped.push(i);
                    } else {
                        log::error!(
                            "thread {}: injected pidfd_open returned {fd}, which is not a \
                             pidfd of the holder; it is left alone",
                            t.tid()
                        );
                        failure.get_or_insert((i, JoinFailure::Untrusted(Step::PidfdOpen)));
                    }
                    continue;
                }
                Some(Err(errno)) => {
                    failure.get_or_insert((i, JoinFailure::Refused(Step::PidfdOpen, errno)));
                    continue;
                }
                None => {
                    failure.get_or_insert((i, JoinFailure::Untrusted(Step::PidfdOpen)));
                    continue;
                }
            }
            open[i] = outcome.close.is_none();
            if let Some(closed) = outcome.close
                && let Err(e) = inject::decode(closed)
            {
                log::warn!("thread {}: closing injected pidfd: {e}", threads[i].tid());
            }
            match outcome.setns.map(inject::decode) {
                Some(Ok(_)) => {}
                Some(Err(errno)) => {
                    failure.get_or_insert((i, JoinFailure::Refused(Step::Setns, errno)));
                }
                None => {
                    failure.get_or_insert((i, JoinFailure::Untrusted(Step::Setns)));
                }
            }
        }
    }
    for i in stepped {
        if failure.is_some() {
            break;
        }
        let Some(fd) = fds[i] else { continue };
        match run(&mut threads[i], libc::SYS_setns, &[fd as u64, kinds as u64]) {
            Ok(Ok(_)) => {}
            Ok(Err(errno)) => failure = Some((i, JoinFailure::Refused(Step::Setns, errno))),
            Err(e) => failure = Some((i, JoinFailure::Trace(e))),
        }
    }
    // Phase two: every other thread, all at once, through its opener's fd.
    if failure.is_none() {
        let joins: Vec<Option<Join>> = (0..n)
            .map(|i| {
                let opener = *tables.get(i)?;
                if opener == i {
                    return None;
                }
                fds[opener].map(|fd| Join {
                    unshare,
                    fd: Some(fd),
                    pid: 0,
                    expect_fd: Some(fd),
                    kinds,
                    close: false,
                })
            })
            .collect();
        if joins.iter().any(Option::is_some) {
            for (i, outcome) in inject::join_each(threads, entry, &joins)
                .into_iter()
                .enumerate()
            {
                let f = match outcome {
                    None => continue,
                    Some(Err(e)) => JoinFailure::Trace(e),
                    Some(Ok(o)) => {
                        match (unshare_failure(o.unshare), o.setns.map(inject::decode)) {
                            (Some(f), _) => f,
                            (None, Some(Ok(_))) => continue,
                            (None, Some(Err(errno))) => JoinFailure::Refused(Step::Setns, errno),
                            (None, None) => JoinFailure::Untrusted(Step::Setns),
                        }
                    }
                };
                failure.get_or_insert((i, f));
            }
        }
    }
    // The stub goes before any thread is stepped at the syscall site again
    // or let go.
    if let Err(e) = stub.restore() {
        log::error!("the join stub could not be taken out again: {e}");
        failure = Some((0, JoinFailure::Trace(e)));
    }
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let fd = fds[i].filter(|_| open[i])?;
            Some((libc::SYS_close, args(&[fd as u64])))
        })
        .collect();
    if calls.iter().any(Option::is_some) {
        close_injected(threads, &calls, &mut failure);
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(()),
    }
}

/// The failure an `unshare` result of the join stub stands for, if any.
fn unshare_failure(result: Option<i64>) -> Option<JoinFailure> {
    match result.map(inject::decode)? {
        Ok(0) => None,
        Err(errno) => Some(JoinFailure::Refused(Step::UnshareFs, errno)),
        // Not a result the kernel's unshare gives.
        Ok(_) => Some(JoinFailure::Untrusted(Step::UnshareFs)),
    }
}

/// Moves every thread of `target` into the namespaces of kinds `kinds` of the
/// holder process, whose pid in the target's pid namespace is
/// `holder_pid_in_target_ns`.
///
/// Pass only the kinds that differ between target and holder. An empty
/// `kinds` does nothing.
pub fn move_process(
    target: &ProcessHandle,
    holder_pid_in_target_ns: i32,
    kinds: CloneFlags,
) -> Result<MoveReport, MoveError> {
    move_process_answering(target, holder_pid_in_target_ns, kinds, None)
}

/// A thread of the target blocked in a request that only the caller can
/// answer: the writer of `echo $$ > tasks`, waiting for the daemon's reply
/// to its write().
///
/// It can reach a ptrace stop only on its way back to user space, so the
/// move seizes the threads of its first round (the writer among them) and
/// asks them to stop, then calls `answer` (which must send a successful
/// reply), then waits for the stops: the writer's comes at the exit of its
/// write(), before it runs another instruction. If the move then fails, in
/// a later round or after, the writer's write() is made to return
/// `-errno` instead, so the caller still sees the failure.
pub struct Writer<'a> {
    /// The blocked thread.
    pub tid: Pid,
    /// Sends the reply that unblocks it.
    pub answer: &'a mut dyn FnMut(),
    /// The errno its write() returns for a move that fails after the reply:
    /// the filesystem's own mapping ([`crate::errno::of_move`]), handed down
    /// by the caller so that this layer does not depend on the one that
    /// decides errnos.
    pub errno_of: ErrnoOf,
}

/// How a move's error becomes the errno a caller sees.
pub type ErrnoOf = fn(&MoveError) -> i32;

impl fmt::Debug for Writer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Writer")
            .field("tid", &self.tid)
            .finish_non_exhaustive()
    }
}

/// What to do with a target whose seccomp filter would kill it for one of
/// the calls a move injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FatalSeccomp {
    /// Refuse the move (`EPERM`) before anything is injected.
    #[default]
    Refuse,
    /// Inject anyway: the filter kills the process (the daemon was started
    /// with `--allow-fatal-seccomp`).
    Allow,
}

/// [`move_process`], for a target one of whose threads is a [`Writer`].
/// When `writer` is given, `answer` is called exactly once unless this
/// returns an error before any thread was asked to stop.
pub fn move_process_answering(
    target: &ProcessHandle,
    holder_pid_in_target_ns: i32,
    kinds: CloneFlags,
    writer: Option<Writer<'_>>,
) -> Result<MoveReport, MoveError> {
    move_process_with(
        target,
        holder_pid_in_target_ns,
        kinds,
        writer,
        FatalSeccomp::Refuse,
        None,
    )
}

/// Asks again, once every thread of the target is stopped and before
/// anything is injected, whether the one who asked for the move may trace
/// each of them (the thread ids given); the move is refused if not.
pub type Recheck<'a> = &'a dyn Fn(&[Pid]) -> Result<(), MoveError>;

/// [`move_process_answering`], with a choice about seccomp filters that
/// would kill the target.
///
/// Whatever the outcome, no thread of the target is still traced when this
/// returns (but a leader that exited while its group runs on, which only
/// the tracer's exit lets go of: see [`inject::still_traced`]). A target
/// that died during the move is [`MoveError::Gone`], whichever step noticed.
pub fn move_process_with(
    target: &ProcessHandle,
    holder_pid_in_target_ns: i32,
    kinds: CloneFlags,
    writer: Option<Writer<'_>>,
    fatal_seccomp: FatalSeccomp,
    recheck: Option<Recheck<'_>>,
) -> Result<MoveReport, MoveError> {
    let source = Source {
        seen: holder_pid_in_target_ns,
        known: None,
    };
    move_process_from(target, source, kinds, writer, fatal_seccomp, recheck)
}

/// Where a move takes its namespaces from: the holder process.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Its pid in the target's pid namespace, which the injected
    /// `pidfd_open` looks up.
    pub seen: i32,
    /// What the caller knows of it already, if anything; otherwise the
    /// move reads it from `/proc`.
    pub known: Option<Known>,
}

/// A holder as the one who keeps it knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// Its pid in our pid namespace.
    pub local: i32,
    /// The namespaces it is in, inodes in [`KINDS`] order (for pid and
    /// time, the ones it is in itself): after a join through it, every
    /// moved thread's links must name these.
    pub inodes: [u64; 8],
}

/// [`move_process_with`], from a [`Source`]: a caller that keeps the
/// holder (the daemon) saves the move reading the holder's namespaces and
/// pinning it, and the check after the join compares against what the
/// caller meant the process to end in.
pub fn move_process_from(
    target: &ProcessHandle,
    source: Source,
    kinds: CloneFlags,
    writer: Option<Writer<'_>>,
    fatal_seccomp: FatalSeccomp,
    recheck: Option<Recheck<'_>>,
) -> Result<MoveReport, MoveError> {
    let result = move_traced(target, source, kinds, writer, fatal_seccomp, recheck);
    inject::settle();
    // Nothing of this move is kept for the next.
    if let Some((_, links)) = THREAD_READER.get() {
        links.clear();
    }
    match result {
        Err(MoveError::Gone(pid)) => Err(MoveError::Gone(pid)),
        Err(MoveError::Zombie(pid)) => Err(MoveError::Zombie(pid)),
        Err(e) if target.is_gone_or_dying() => {
            log::debug!("process {}: {e}, and it is dying", target.pid());
            Err(MoveError::Gone(target.pid().as_raw()))
        }
        result => result,
    }
}

/// Whether every thread of `tgid` has exited or is exiting, or one has a
/// SIGKILL pending; gone counts as dying.
fn is_dying(tgid: Pid) -> bool {
    let Ok(tids) = list_threads(tgid) else {
        return true;
    };
    let mut all_exiting = true;
    for tid in tids {
        let tid = Pid::from_raw(tid);
        let exiting = proc_stat(tid).map_or(true, |s| s.is_exiting());
        if !exiting {
            all_exiting = false;
        }
        if Status::read_task(tgid.as_raw(), tid.as_raw()).is_ok_and(|s| s.sigkill_pending()) {
            return true;
        }
    }
    all_exiting
}

fn move_traced(
    target: &ProcessHandle,
    source: Source,
    kinds: CloneFlags,
    mut writer: Option<Writer<'_>>,
    fatal_seccomp: FatalSeccomp,
    recheck: Option<Recheck<'_>>,
) -> Result<MoveReport, MoveError> {
    let kinds = kinds.bits();
    let known = KINDS.iter().fold(0, |all, (flag, _)| all | flag);
    if kinds & !known != 0 {
        return Err(MoveError::InvalidKinds(kinds));
    }
    if kinds == 0 {
        return Ok(MoveReport {
            threads: 0,
            rounds: 0,
            unshared_fs: false,
            stub: false,
            kernel_read: false,
        });
    }
    let tgid = target.pid();
    if tgid == nix::unistd::getpid() {
        return Err(MoveError::SelfProcess);
    }
    if !target.is_alive() {
        return Err(MoveError::Gone(tgid.as_raw()));
    }

    let waiting = writer.as_ref().map(|w| (w.tid, w.errno_of));
    let answer = writer.as_mut().map(|w| &mut w.answer as &mut dyn FnMut());
    // Kernel threads and zombies cannot be seized: they are told apart
    // (for the error) only then, so a move does not pay for reading
    // /proc/PID/stat.
    let all = stop_all(tgid, answer, waiting).map_err(|e| match e {
        MoveError::TraceDenied(_) if is_kernel_thread(tgid) => {
            MoveError::KernelThread(tgid.as_raw())
        }
        e => e,
    })?;
    let AllStopped {
        mut threads,
        rounds,
        snapshot,
    } = all;
    if threads.is_empty() && is_zombie(tgid) {
        return Err(MoveError::Zombie(tgid.as_raw()));
    }
    // The pin: if the pinned process still lives, the pid read from /proc
    // was its own all along, and so are the threads listed under it.
    if threads.is_empty() || !target.is_alive() {
        return Err(MoveError::Gone(tgid.as_raw()));
    }
    // From here on a writer's write has been answered as a success: a
    // refusal must change its return value (see below).
    let refused = |threads: &mut [Tracee<Stopped>], e: MoveError| {
        if let Some((tid, errno_of)) = waiting
            && let Some(w) = threads.iter_mut().find(|t| t.tid() == tid)
            && let Err(te) = w.set_result(-i64::from(errno_of(&e)))
        {
            log::warn!("thread {}: cannot report the refusal: {te}", w.tid());
        }
        e
    };
    // The right to trace, asked again now that nothing of the target runs:
    // an exec (of a setuid program, say) between the daemon's check and
    // the attach cannot carry a process the caller may not trace into the
    // move.
    if let Some(recheck) = recheck {
        let tids: Vec<Pid> = threads.iter().map(|t| t.tid()).collect();
        recheck(&tids).map_err(|e| refused(&mut threads, e))?;
    }
    // The caller chose the kinds from a read of the process made before
    // it stopped; another move of it, or the process itself, may have
    // changed its namespaces since. Read now, when nothing of it runs, the
    // kinds in which it differs from the holder must be those chosen; if
    // not, the choice no longer holds, and the caller can choose again.
    if let Some(known) = source.known {
        let first = threads
            .iter()
            .find(|t| t.tid() == tgid)
            .unwrap_or(&threads[0])
            .tid();
        if let Some(now) = differing_kinds(tgid, first, snapshot.as_ref(), &known)
            && now != kinds & !libc::CLONE_NEWPID
        {
            return Err(refused(
                &mut threads,
                MoveError::Changed {
                    pid: tgid.as_raw(),
                    chose: kinds,
                    now,
                },
            ));
        }
    }
    if threads.iter().any(|t| !t.regs().is_native()) {
        return Err(refused(
            &mut threads,
            MoveError::Unsupported(Unsupported::CompatProcess),
        ));
    }
    share_syscall_site(&mut threads).map_err(|e| refused(&mut threads, e))?;
    let multi = threads.len() > 1;
    // What each thread is in before, for a rollback; and the kinds some
    // thread has a namespace of its own in.
    let (kinds, originals) = if multi {
        let read = kinds | PER_THREAD_KINDS;
        let all = match snapshot_ns_all(snapshot.as_ref(), &threads, read) {
            Some(all) => Ok(all),
            None => ProcDir::tasks(tgid.as_raw())
                .map_err(MoveError::Proc)
                .and_then(|tasks| {
                    threads
                        .iter()
                        .map(|t| ns_ids(&tasks, t.tid(), read))
                        .collect()
                }),
        };
        all.map(|all| per_thread_kinds(all, kinds))
            .map_err(|e| refused(&mut threads, e))?
    } else {
        (kinds, Vec::new())
    };
    // Where the join stub would go; the seccomp check must see its calls
    // coming from there.
    let site = threads.first_mut().map(|t| t.syscall_site()).transpose();
    let plan = site
        .and_then(|site| match site {
            Some(site) => StubPlan::find(&threads, site),
            None => Ok(None),
        })
        .map_err(|e| refused(&mut threads, e.into()))?;
    let stub_ips = plan.as_ref().map(StubPlan::call_ips);
    let unfiltered = match (
        check_seccomp(
            &mut threads,
            snapshot.as_ref(),
            source.seen,
            kinds,
            stub_ips,
        ),
        fatal_seccomp,
    ) {
        // Allowed: the injected call kills the process, and the move
        // reports it gone.
        (
            Err(MoveError::SeccompKills { .. } | MoveError::SeccompStrict(_)),
            FatalSeccomp::Allow,
        ) => Vec::new(),
        (result, _) => result.map_err(|e| refused(&mut threads, e))?,
    };

    let unshare_fs = multi && kinds & libc::CLONE_NEWNS != 0;

    let expected = match source.known {
        Some(known) => Ok(Expected::of(known, kinds)),
        None => expected(tgid, source.seen, kinds),
    };
    let result = expected.and_then(|expected| {
        join_or_roll_back(
            tgid,
            &mut threads,
            (plan, &unfiltered, snapshot.as_ref()),
            source.seen,
            &expected,
            kinds,
            unshare_fs,
            &originals,
        )
    });
    if let Err(e) = &result
        && let Some((tid, errno_of)) = waiting
        && let Some(w) = threads.iter_mut().find(|t| t.tid() == tid)
    {
        // The write was answered as a success; make it report the failure.
        w.set_result(-i64::from(errno_of(e)))?;
    }
    let stub = result?;
    let count = threads.len();
    detach_all(threads)?;
    Ok(MoveReport {
        threads: count,
        rounds,
        unshared_fs: unshare_fs,
        stub,
        kernel_read: snapshot.is_some(),
    })
}

/// Kinds a thread can join or unshare on its own, and be left in by a
/// decision taken from another thread (user and time namespaces cannot
/// differ between threads that could be moved; a thread's own pid
/// namespace for children is left as the caller decided).
const PER_THREAD_KINDS: libc::c_int = libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWUTS;

/// Widens `kinds` by those in which a thread differs from the first, from
/// `all`, every thread's namespaces of kinds `kinds | PER_THREAD_KINDS`:
/// the caller chose `kinds` from one thread, the first (the leader, or the
/// first live one), whose namespace of any other kind is the container's
/// already, so a thread in another one joined or unshared it on its own
/// and must change too. Returns the kinds and, per thread, its namespaces
/// of those kinds (for a rollback).
fn per_thread_kinds(all: Vec<Vec<u64>>, kinds: libc::c_int) -> (libc::c_int, Vec<Vec<u64>>) {
    let read = kinds | PER_THREAD_KINDS;
    let flags: Vec<libc::c_int> = KINDS
        .iter()
        .map(|&(flag, _)| flag)
        .filter(|flag| read & flag != 0)
        .collect();
    let mut wider = kinds;
    if let Some(first) = all.first() {
        for (i, &flag) in flags.iter().enumerate() {
            if all.iter().any(|ids| ids[i] != first[i]) {
                wider |= flag;
            }
        }
    }
    let originals = all
        .into_iter()
        .map(|ids| {
            ids.into_iter()
                .zip(&flags)
                .filter(|(_, flag)| wider & **flag != 0)
                .map(|(id, _)| id)
                .collect()
        })
        .collect();
    (wider, originals)
}

/// Joins every thread; on a failure, moves the threads that had moved back.
/// Returns whether the join stub ran the calls. `unfiltered` says, per
/// thread, whether it has no seccomp at all (see [`join_all_stub`]);
/// `snapshot` is the kernel's read of the stopped threads, if any.
#[allow(clippy::too_many_arguments)]
fn join_or_roll_back(
    tgid: Pid,
    threads: &mut [Tracee<Stopped>],
    (plan, unfiltered, snapshot): (Option<StubPlan>, &[bool], Option<&Snapshot>),
    holder_pid_in_target_ns: i32,
    expected: &Expected,
    kinds: libc::c_int,
    unshare_fs: bool,
    originals: &[Vec<u64>],
) -> Result<bool, MoveError> {
    let multi = threads.len() > 1;
    let tables = fd_tables(threads, snapshot)?;
    let stub = plan.map(StubPlan::write).transpose()?;
    let used_stub = stub.is_some();
    let joined = match stub {
        Some(stub) => join_all_stub(
            threads,
            &tables,
            (stub, unfiltered),
            holder_pid_in_target_ns,
            expected,
            kinds,
            unshare_fs,
        ),
        None => join_all(
            threads,
            &tables,
            holder_pid_in_target_ns,
            expected,
            kinds,
            unshare_fs,
        ),
    }
    .and_then(|()| verify(tgid, threads, expected, kinds));
    if let Err((i, failure)) = joined {
        let tid = threads[i].tid().as_raw();
        let cause = match failure {
            JoinFailure::Refused(step, errno) => MoveError::Refused {
                tid,
                step,
                errno,
                moved_back: 0,
            },
            JoinFailure::Trace(e) => MoveError::from(e),
            JoinFailure::Untrusted(step) => MoveError::Untrusted { tid, step },
        };
        if !multi {
            return Err(cause);
        }
        return Err(roll_back(tgid, threads, originals, kinds, cause));
    }
    Ok(used_stub)
}

/// Checks that every thread is in the namespaces the holder's are, as
/// every `setns` said: a result faked by a seccomp supervisor or tracer
/// would say so without doing it.
fn verify(
    tgid: Pid,
    threads: &[Tracee<Stopped>],
    expected: &Expected,
    kinds: libc::c_int,
) -> Result<(), (usize, JoinFailure)> {
    // One kernel read for every thread, where it answers for them all.
    if let Some(now) =
        kernel_threads(tgid).and_then(|(s, _)| snapshot_ns_all(Some(&s), threads, kinds))
    {
        return match now.iter().position(|ids| *ids != expected.inodes) {
            None => Ok(()),
            Some(i) => {
                log::error!(
                    "thread {}: setns reported success, but the thread is not in the \
                     holder's namespaces",
                    threads[i].tid()
                );
                Err((i, JoinFailure::Untrusted(Step::Setns)))
            }
        };
    }
    // Else /proc. One thread: its `ns` directory in one open; more: the
    // task directory once, then each thread's below it.
    let tasks = match threads {
        [_] => None,
        _ => Some(
            ProcDir::tasks(tgid.as_raw())
                .map_err(|e| (0, JoinFailure::Trace(proc_failure(tgid, e))))?,
        ),
    };
    for (i, t) in threads.iter().enumerate() {
        let now = match &tasks {
            Some(tasks) => ns_ids(tasks, t.tid(), kinds),
            None => ProcDir::task_ns(tgid.as_raw(), t.tid().as_raw())
                .map_err(MoveError::Proc)
                .and_then(|ns| ns_ids_in(&ns, kinds)),
        };
        match now {
            Ok(now) if now == expected.inodes => {}
            Ok(_) => {
                log::error!(
                    "thread {}: setns reported success, but the thread is not in the \
                     holder's namespaces",
                    t.tid()
                );
                return Err((i, JoinFailure::Untrusted(Step::Setns)));
            }
            Err(MoveError::Proc(e)) => {
                return Err((i, JoinFailure::Trace(proc_failure(t.tid(), e))));
            }
            Err(_) => return Err((i, JoinFailure::Untrusted(Step::Setns))),
        }
    }
    Ok(())
}

/// A failed read of `/proc` while verifying, as a tracer failure: the
/// thread is gone if the entry is.
fn proc_failure(tid: Pid, e: std::io::Error) -> TraceError {
    match e.kind() {
        std::io::ErrorKind::NotFound => TraceError::Gone(tid),
        _ => TraceError::Os {
            tid,
            op: Op::ReadNs,
            errno: e.raw_os_error().map_or(Errno::EIO, Errno::from_raw),
        },
    }
}

/// Refuses the move if a seccomp filter of any thread would kill it for one
/// of the syscalls the move injects, or would hand one to a supervisor or
/// tracer (which could fake its result), or if a thread is in strict mode
/// (the fd number of `setns` and `close` is not known yet; 3 stands for it).
/// Otherwise returns, per thread, whether it has no seccomp at all, so
/// that every result of an injected call is the kernel's own.
fn check_seccomp(
    threads: &mut [Tracee<Stopped>],
    snapshot: Option<&Snapshot>,
    holder: i32,
    kinds: libc::c_int,
    stub_ips: Option<[u64; 4]>,
) -> Result<Vec<bool>, MoveError> {
    use inject::seccomp::{self, Mode, SyscallData, Verdict};
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let calls: [(Call, i64, [u64; 6]); 4] = [
        (
            Call::Unshare,
            libc::SYS_unshare,
            args(&[libc::CLONE_FS as u64]),
        ),
        (
            Call::PidfdOpen,
            libc::SYS_pidfd_open,
            args(&[holder as u64, 0]),
        ),
        (Call::Setns, libc::SYS_setns, args(&[3, kinds as u64])),
        (Call::Close, libc::SYS_close, args(&[3])),
    ];
    let mut delegated = None;
    let mut unfiltered = Vec::with_capacity(threads.len());
    for t in threads.iter_mut() {
        let known = snapshot
            .and_then(|s| s.get(&t.tid().as_raw()))
            .and_then(|k| k.seccomp);
        let mode = seccomp::mode(t.tid(), known).map_err(|errno| {
            MoveError::Trace(TraceError::Os {
                tid: t.tid(),
                op: Op::GetSeccompFilter,
                errno,
            })
        })?;
        unfiltered.push(matches!(mode, Mode::Off));
        let filters = match mode {
            Mode::Off => continue,
            Mode::Strict => return Err(MoveError::SeccompStrict(t.tid().as_raw())),
            Mode::Hidden => return Err(MoveError::SeccompHidden(t.tid().as_raw())),
            Mode::Filters(filters) => filters,
        };
        // A filter sees the address after the `syscall` instruction. Every
        // call may come from the site (single steps: the close of a shared
        // pidfd, a rollback) and, with the stub, from the stub's own.
        let site_ip = t.syscall_site()?.addr() + 2;
        for (k, (name, nr, args)) in calls.into_iter().enumerate() {
            let ips = [Some(site_ip), stub_ips.map(|ips| ips[k])];
            for ip in ips.into_iter().flatten() {
                let data = SyscallData {
                    nr: nr as i32,
                    arch: AUDIT_ARCH_X86_64,
                    ip,
                    args,
                };
                match seccomp::check(&filters, &data) {
                    Verdict::Kills => {
                        return Err(MoveError::SeccompKills {
                            tid: t.tid().as_raw(),
                            syscall: name,
                        });
                    }
                    Verdict::Delegated => {
                        delegated.get_or_insert(MoveError::SeccompDelegates {
                            tid: t.tid().as_raw(),
                            syscall: name,
                        });
                    }
                    Verdict::Runs | Verdict::Fails(_) | Verdict::Traps => {}
                }
            }
        }
    }
    match delegated {
        Some(e) => Err(e),
        None => Ok(unfiltered),
    }
}

/// Finds one `syscall` instruction for the whole process (threads share the
/// address space), preferring the one a thread entered the kernel through.
fn share_syscall_site(threads: &mut [Tracee<Stopped>]) -> Result<(), MoveError> {
    let in_syscall = threads
        .iter()
        .position(|t| t.regs().syscall_nr().is_some())
        .unwrap_or(0);
    let site = match threads.get_mut(in_syscall) {
        Some(t) => t.syscall_site()?,
        None => return Ok(()),
    };
    for t in threads.iter_mut() {
        t.use_syscall_site(site)?;
    }
    Ok(())
}

/// Lets every thread go; reports the first failure after trying all.
fn detach_all(threads: Vec<Tracee<Stopped>>) -> Result<(), MoveError> {
    let mut first = None;
    for t in threads {
        if let Err(e) = t.detach() {
            first.get_or_insert(e);
        }
    }
    match first {
        None => Ok(()),
        Some(e) => Err(e.into()),
    }
}

/// After a failure in a multithreaded move: every thread whose namespaces
/// changed joins those of an unchanged thread that had the same ones before.
/// Returns the error to report.
fn roll_back(
    tgid: Pid,
    threads: &mut [Tracee<Stopped>],
    originals: &[Vec<u64>],
    kinds: libc::c_int,
    cause: MoveError,
) -> MoveError {
    let current = ProcDir::tasks(tgid.as_raw())
        .map_err(MoveError::Proc)
        .and_then(|tasks| {
            let current: Result<Vec<_>, _> = threads
                .iter()
                .map(|t| ns_ids(&tasks, t.tid(), kinds))
                .collect();
            Ok((tasks, current?))
        });
    let (tasks, current) = match current {
        Ok(c) => c,
        // Most likely the process is being killed.
        Err(_) if is_dying(tgid) => return MoveError::Gone(tgid.as_raw()),
        Err(e) => return rollback_failed(tgid.as_raw(), cause, e),
    };
    let unmoved: Vec<usize> = (0..threads.len())
        .filter(|&i| current[i] == originals[i])
        .collect();
    let mut moved_back = 0;
    for i in (0..threads.len()).filter(|&i| current[i] != originals[i]) {
        let tid = threads[i].tid();
        let Some(&src) = unmoved.iter().find(|&&j| originals[j] == originals[i]) else {
            return rollback_failed(tid.as_raw(), cause, "no unmoved thread to copy from");
        };
        let src_tid = threads[src].tid();
        let flags = if src_tid == tgid { 0 } else { PIDFD_THREAD };
        let source = match own_ns_tid(src_tid) {
            Ok(s) => s,
            Err(e) => return rollback_failed(tid.as_raw(), cause, e),
        };
        match join(&mut threads[i], source, flags, kinds, false) {
            Ok(()) => {}
            Err(JoinFailure::Refused(step, errno)) => {
                return rollback_failed(tid.as_raw(), cause, format!("{step}: {errno}"));
            }
            Err(JoinFailure::Untrusted(step)) => {
                return rollback_failed(tid.as_raw(), cause, format!("{step}: not done"));
            }
            Err(JoinFailure::Trace(TraceError::Gone(_))) if is_dying(tgid) => {
                return MoveError::Gone(tgid.as_raw());
            }
            Err(JoinFailure::Trace(e)) => return rollback_failed(tid.as_raw(), cause, e),
        }
        match ns_ids(&tasks, tid, kinds) {
            Ok(now) if now == originals[i] => moved_back += 1,
            Ok(_) => {
                return rollback_failed(tid.as_raw(), cause, "namespaces differ after rollback");
            }
            Err(e) => return rollback_failed(tid.as_raw(), cause, e),
        }
    }
    match cause {
        MoveError::Refused {
            tid, step, errno, ..
        } => MoveError::Refused {
            tid,
            step,
            errno,
            moved_back,
        },
        other => other,
    }
}

fn rollback_failed(tid: i32, cause: MoveError, why: impl fmt::Display) -> MoveError {
    log::error!("thread {tid}: rollback after \"{cause}\" failed: {why}");
    MoveError::RollbackFailed {
        tid,
        cause: Box::new(cause),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pidfd_of_the_holder_counts_as_opened() {
        let me = nix::unistd::getpid();
        let other = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pidfd = sys::pidfd::open(me.as_raw(), 0).unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let raw = |fd: BorrowedFd<'_>| i64::from(fd.as_raw_fd());
        assert!(is_pidfd_of(me, me, raw(pidfd.as_fd()), me.as_raw()));
        assert!(!is_pidfd_of(me, me, raw(pidfd.as_fd()), other.id() as i32));
        assert!(!is_pidfd_of(me, me, raw(file.as_fd()), me.as_raw()));
        assert!(!is_pidfd_of(me, me, 0x7fff_0000, me.as_raw()));
        let mut other = other;
        let _ = other.kill();
        let _ = other.wait();
    }

    /// Threads 0..n, `table[i]` the descriptor table each really uses.
    fn kcmp_of(table: &'static [u8]) -> impl FnMut(usize, usize) -> Result<Option<bool>, Errno> {
        move |a, b| Ok(Some(table[a] == table[b]))
    }

    #[test]
    fn tables_from_kcmp_alone() {
        let table = &[7, 7, 3, 7, 3, 9];
        let got = group_by_table(&[false; 6], kcmp_of(table)).unwrap();
        assert_eq!(got, [0, 0, 2, 0, 2, 5]);
    }

    #[test]
    fn threads_sharing_the_leaders_table_need_no_kcmp() {
        // Threads 2, 4 and 5 have tables other than the leader's (7):
        // kcmp is asked about them alone, and only against one another,
        // and the grouping is what kcmp alone gives.
        let table = &[7, 7, 3, 7, 3, 9];
        let shares = [true, true, false, true, false, false];
        let mut asked = Vec::new();
        let mut kcmp = kcmp_of(table);
        let got = group_by_table(&shares, |a, b| {
            asked.push(b);
            kcmp(a, b)
        })
        .unwrap();
        assert_eq!(got, group_by_table(&[false; 6], kcmp_of(table)).unwrap());
        assert_eq!(asked, [4, 5]);
    }

    #[test]
    fn without_kcmp_every_thread_has_its_own_table() {
        // One thread apart from the leader's table: nothing to ask.
        let got = group_by_table(&[true, true, false, true], |_, _| Ok(None)).unwrap();
        assert_eq!(got, [0, 0, 2, 0]);
        // Two: kcmp is needed, and without it no thread shares.
        let got = group_by_table(&[true, false, false], |_, _| Ok(None)).unwrap();
        assert_eq!(got, [0, 1, 2]);
        let failed = group_by_table(&[true, false, false], |_, _| Err(Errno::EPERM));
        assert_eq!(failed, Err((2, Errno::EPERM)));
    }

    #[test]
    fn kinds_are_in_the_order_of_every_kind() {
        // A kernel read's namespaces are taken in `Kind::ALL` order where
        // the /proc path takes `KINDS` order.
        for ((flag, entry), kind) in KINDS.iter().zip(Kind::ALL) {
            assert_eq!((*flag, *entry), (kind.clone_flag(), kind.proc_entry()));
        }
    }

    #[test]
    fn rejects_non_namespace_flags() {
        let handle = ProcessHandle::open(std::process::id() as i32).expect("pin self");
        let err = move_process(&handle, 1, CloneFlags::CLONE_VM).expect_err("must refuse");
        assert!(matches!(err, MoveError::InvalidKinds(_)));
        let err = move_process(&handle, 1, CloneFlags::CLONE_NEWUTS).expect_err("must refuse");
        assert!(matches!(err, MoveError::SelfProcess));
    }
}

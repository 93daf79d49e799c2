//! The daemon's process mover: decides which kinds change, finds or starts
//! the holder of the target set, and hands the move to [`crate::transfer`](mod@crate::transfer),
//! run in one of its injector processes so that the daemon's death never
//! cuts an injection short (see [`crate::injector`]).
//!
//! Holders are cached per effective set (the eight inodes) and dropped as
//! soon as one of their namespaces loses its last binding, so a holder never
//! keeps an unbound namespace alive.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use parking_lot::Mutex;

use thiserror::Error;

use crate::injector::{InjectorError, Injectors};
use crate::kview::bpf::Thread;
use crate::ns::creds::Credentials;
use crate::ns::{Holder, Kind, Namespace, NsError};
use crate::procfs::{self, ProcDir};
use crate::transfer::{self, MoveError, ProcessHandle};

/// Why a move was refused or failed; the process was left as it was.
#[derive(Debug, Error)]
pub enum Error {
    /// The move itself failed (see [`crate::transfer`](mod@crate::transfer)).
    #[error(transparent)]
    Move(#[from] MoveError),
    /// A namespace or a holder could not be opened or made.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// No answer came from the injector that was to run the move.
    #[error(transparent)]
    Injector(#[from] InjectorError),
    /// The process to move is the daemon.
    #[error("the daemon does not move itself")]
    Daemon,
    /// The namespaces of the process cannot be read.
    #[error("cannot read the namespaces of process {pid}: {source}")]
    Unreadable {
        /// The process.
        pid: i32,
        /// Why.
        source: std::io::Error,
    },
    /// The process's pid namespace cannot see the holder's.
    #[error(
        "process {0} lives in a pid namespace that cannot see the container's namespaces \
         (only ancestors of a pid namespace see into it)"
    )]
    PidNsBlind(i32),
    /// A system call failed; its errno is passed on.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: std::io::Error,
    },
}

impl From<crate::injector::Error> for Error {
    fn from(e: crate::injector::Error) -> Error {
        match e {
            crate::injector::Error::Move(e) => Error::Move(e),
            crate::injector::Error::Injector(e) => Error::Injector(e),
        }
    }
}

/// A move's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A process mover: moves the process `pid` (daemon pid namespace) into the
/// namespaces in `set` (indexed by [`Kind::index`]). The service above only
/// decides whether a move is allowed and into what.
pub trait Mover: Send + Sync + 'static {
    /// Moves `pid`, pinned by the pidfd `target` before it was judged, and
    /// returns the outcome. `writer` is the thread that wrote the pid when
    /// it belongs to the process being moved (the caller tells): it is
    /// blocked in that very write, so `seized` is called once its threads
    /// are asked to stop, for the write to be answered before the move
    /// goes on (a failure after that is the returned outcome all the
    /// same). `tracer`
    /// are the writer's credentials, whose right to trace the process is
    /// asked again once it is stopped.
    fn move_process(
        &self,
        pid: i32,
        target: OwnedFd,
        writer: Option<u32>,
        tracer: &Credentials,
        set: &[Arc<Namespace>; 8],
        seized: &mut dyn FnMut(),
    ) -> Result<()>;

    /// Begins the move `move_process` would make, on the calling thread,
    /// when that needs no wait and nothing the caller's thread must not do
    /// (no holder to start): the request goes to an injector at once, so
    /// the thread that finishes the move ([`Mover::finish`]) only waits for
    /// the answer. `Err` gives `target` back: `move_process` does it all.
    /// `leader` is the kernel's record of the process's leader, read after
    /// `target` pinned it, if the caller has one: else the mover reads it.
    fn begin(
        &self,
        (pid, target): (i32, OwnedFd),
        leader: Option<&Thread>,
        writer: Option<u32>,
        tracer: &Credentials,
        set: &[Arc<Namespace>; 8],
    ) -> std::result::Result<Begun, OwnedFd> {
        let _ = (pid, leader, writer, tracer, set);
        Err(target)
    }

    /// Finishes a move [`Mover::begin`] began, as `move_process` would
    /// (`seized` as there). Only a mover whose `begin` gives a [`Begun`]
    /// gets one back (its fields are this module's): this default, for
    /// movers that begin nothing, is never called with a move under way.
    fn finish(&self, begun: Begun, seized: &mut dyn FnMut()) -> Result<()> {
        let _ = seized;
        begun.sent.map(|_| ())
    }

    /// Namespace `ino` lost its last binding: forget anything holding it.
    fn released(&self, ino: u64);

    /// Processes the mover runs for its own use, left out of `tasks`.
    fn helper_pids(&self) -> Vec<i32>;
}

/// A move handed to an injector by [`Mover::begin`]: finish it with
/// [`Mover::finish`] (dropping it lets the injector finish the move
/// unobserved).
#[derive(Debug)]
pub struct Begun {
    pid: i32,
    /// The writer's thread, when it belongs to the process moved.
    writer: Option<nix::unistd::Pid>,
    /// The request with an injector, or why it could not be sent.
    sent: Result<crate::injector::Sent>,
    /// The target, pinned, for as long as the move runs.
    _target: Option<ProcessHandle>,
    /// The holder the injector joins the target to, kept alive for as long
    /// as the move runs: the container may lose its binding meanwhile
    /// (`rmdir`), which lets the mover forget the holder, and the last
    /// reference to a holder ends it.
    _holder: Option<Arc<Holder>>,
}

/// Moves processes by ptrace-injecting `setns(pidfd_of_holder, kinds)`.
#[derive(Debug)]
pub struct PtraceMover {
    own: [u64; 8],
    holders: Mutex<HashMap<[u64; 8], Arc<Holder>>>,
    injectors: Injectors,
    errno_of: crate::transfer::ErrnoOf,
}

impl PtraceMover {
    /// A mover for a daemon whose own namespaces are `own` (inodes in
    /// [`Kind::ALL`] order; pid and time as for children).
    /// `errno_of` is how a move's error becomes the errno a writer moving
    /// itself sees ([`crate::errno::of_move`], handed down from above).
    pub fn new(
        fatal_seccomp: crate::transfer::FatalSeccomp,
        errno_of: crate::transfer::ErrnoOf,
    ) -> Result<PtraceMover> {
        let me = std::process::id() as i32;
        let mut own = [0u64; 8];
        for kind in Kind::ALL {
            own[kind.index()] = procfs::ns_inode(me, kind).ok_or_else(|| Error::Sys {
                what: "read the daemon's namespaces",
                source: std::io::Error::last_os_error(),
            })?;
        }
        Ok(PtraceMover {
            own,
            holders: Mutex::new(HashMap::new()),
            injectors: Injectors::new(fatal_seccomp),
            errno_of,
        })
    }

    /// The live holder of the set whose inodes are `key`, if one is kept.
    fn cached_holder(&self, key: &[u64; 8]) -> Option<Arc<Holder>> {
        self.holders
            .lock()
            .get(key)
            .filter(|h| h.is_alive())
            .map(Arc::clone)
    }

    /// The holder of the set whose inodes are `key`; `set` makes that set's
    /// handles, only when no live holder is cached.
    fn holder(
        &self,
        key: [u64; 8],
        set: impl FnOnce() -> Result<[Arc<Namespace>; 8]>,
    ) -> Result<Arc<Holder>> {
        if let Some(h) = self.cached_holder(&key) {
            return Ok(h);
        }
        // Started outside the lock: it forks and joins namespaces.
        let holder = Arc::new(Holder::spawn(&set()?, &self.own)?);
        let mut holders = self.holders.lock();
        let cached = holders.entry(key).or_insert_with(|| Arc::clone(&holder));
        if !cached.is_alive() {
            *cached = holder;
        }
        Ok(Arc::clone(cached))
    }

    fn try_move(
        &self,
        pid: i32,
        target: std::os::fd::OwnedFd,
        set: &[Arc<Namespace>; 8],
        writer: Option<transfer::Writer<'_>>,
        tracer: Option<&Credentials>,
    ) -> Result<()> {
        if pid == std::process::id() as i32 {
            return Err(Error::Daemon);
        }
        let target = ProcessHandle::pinned(target, pid)?;
        let unreadable = |e: std::io::Error| -> Error {
            if e.kind() == std::io::ErrorKind::NotFound || target.is_gone_or_dying() {
                return transfer::MoveError::Gone(pid).into();
            }
            Error::Unreadable { pid, source: e }
        };
        let mut key: [u64; 8] = std::array::from_fn(|i| set[i].ino());
        // The kinds to change and the target's own pid namespace: from one
        // BPF read of its leader in the usual case, else through /proc.
        let (flags, own_pidns, ns) = match kernel_kinds_to_change(pid, None, &key) {
            Some((flags, own)) => (flags, own, None),
            None => {
                let (flags, ns) = kinds_to_change(pid, &key).map_err(unreadable)?;
                let Some(ns) = ns else {
                    return Err(transfer::MoveError::Gone(pid).into());
                };
                if flags == 0 {
                    return Ok(());
                }
                let own = ns.inode("pid").map_err(unreadable)?;
                (flags, own, Some(ns))
            }
        };
        // The target's pid namespace, opened only when a holder must be
        // made or the holder's pid there is not known yet.
        let open_pidns = || -> std::io::Result<OwnedFd> {
            match &ns {
                Some(ns) => ns.open_entry("pid"),
                None => ProcDir::ns(pid)?.open_entry("pid"),
            }
        };
        // The target must see the holder to open a pidfd of it. When the pid
        // kind does not change, the holder can sit in the target's own pid
        // namespace, which it always sees.
        let holder = if flags & libc::CLONE_NEWPID != 0 {
            self.holder(key, || Ok(set.clone()))?
        } else {
            key[Kind::Pid.index()] = own_pidns;
            self.holder(key, || {
                let active = open_pidns().map_err(|_| transfer::MoveError::Gone(pid))?;
                let active = Namespace::from_fd(
                    active,
                    Kind::Pid,
                    crate::ns::Origin::Other("the target's pid namespace"),
                )?;
                if active.ino() != own_pidns {
                    return Err(transfer::MoveError::Gone(pid).into());
                }
                let mut seen_set = set.clone();
                seen_set[Kind::Pid.index()] = Arc::new(active);
                Ok(seen_set)
            })?
        };
        let seen =
            holder
                .pid_seen_from(own_pidns, open_pidns)
                .map_err(|e| match e.raw_os_error() {
                    Some(libc::ESRCH) => Error::PidNsBlind(pid),
                    _ => transfer::MoveError::Gone(pid).into(),
                })?;
        let source = known_source(&holder, seen, key);
        let threads = self.injectors.run(&target, source, flags, writer, tracer)?;
        log::info!("moved process {pid} ({threads} threads)");
        Ok(())
    }
}

/// Where a move takes its namespaces from: `holder`, whose pid the
/// target's pid namespace numbers `seen` and whose set is `key`. The holder
/// was alive a moment ago: the injector need not look it up and read its
/// namespaces again. Should it die and its pid be reused before the
/// injected pidfd_open, the check after the join, against the set's own
/// inodes, finds the thread elsewhere and the move is undone.
fn known_source(holder: &Holder, seen: i32, key: [u64; 8]) -> transfer::Source {
    transfer::Source {
        seen,
        known: Some(transfer::Known {
            local: holder.pid(),
            inodes: key,
        }),
    }
}

/// The kinds (`CLONE_NEW*` flags) in which the leader of process `pid` is
/// not in the set whose inodes are `key`, and the leader's own pid
/// namespace, from the kernel's record of the leader (`leader`, else one
/// BPF read of it, [`crate::kview`]). `None`
/// when that read is not available or does not settle it (the leader has
/// no namespaces left, or is in the set already, when the other threads
/// must be read): [`kinds_to_change`] answers then.
fn kernel_kinds_to_change(
    pid: i32,
    leader: Option<&Thread>,
    key: &[u64; 8],
) -> Option<(libc::c_int, u64)> {
    let read;
    let leader = match leader {
        Some(t) => &t.proc,
        None => {
            read = crate::kview::membership().thread(pid as u32)?;
            &read.proc
        }
    };
    let (set, own) = (leader.set()?, leader.link(Kind::Pid)?);
    let flags = Kind::ALL
        .into_iter()
        .filter(|k| set[k.index()] != key[k.index()])
        .fold(0, |flags, k| flags | k.clone_flag());
    (flags != 0 && !leader.kthread).then_some((flags, own))
}

/// The kinds (`CLONE_NEW*` flags) in which the first live thread of process
/// `pid` (the leader, unless it has exited) is not in the set whose inodes
/// are `key` (for pid and time, the namespace its children are born into),
/// and that thread's `ns` directory.
///
/// The main thread may have exited (`pthread_exit`), leaving no namespaces
/// to read: the next thread is read then. Threads that joined or unshared
/// a namespace of their own are found by the move itself, which reads
/// every thread anyway; only when the first thread is in the set already
/// are the others read here, for the kinds still alike. No thread at all:
/// `Ok((0, None))`; none readable: the error of one of them.
fn kinds_to_change(pid: i32, key: &[u64; 8]) -> std::io::Result<(libc::c_int, Option<ProcDir>)> {
    let tasks = ProcDir::tasks(pid)?;
    let mut flags = 0;
    let mut live = None;
    let mut refused = None;
    // Reads thread `tid`'s kinds not known to change yet, through its `ns`
    // directory, which it returns; `None` if the thread has exited (a leader
    // that called pthread_exit has no namespaces; one on its way out may
    // also refuse, EACCES, or be gone).
    let mut read = |tid: i32, flags: &mut libc::c_int| -> std::io::Result<Option<ProcDir>> {
        let exited = |e: &std::io::Error| {
            matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::EACCES | libc::ESRCH)
            )
        };
        let ns = match tasks.subdir(&format!("{tid}/ns")) {
            Ok(ns) => ns,
            Err(e) if exited(&e) => {
                refused = refused.take().or(Some(e));
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        for kind in Kind::ALL {
            if *flags & kind.clone_flag() != 0 {
                continue;
            }
            match ns.inode(kind.proc_entry()) {
                Ok(ino) if ino != key[kind.index()] => *flags |= kind.clone_flag(),
                Ok(_) => {}
                Err(e) if exited(&e) => {
                    refused = refused.take().or(Some(e));
                    return Ok(None);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Some(ns))
    };
    // The leader first: in the usual case, the only one read.
    match read(pid, &mut flags)? {
        Some(ns) if flags != 0 => return Ok((flags, Some(ns))),
        Some(ns) => live = Some(ns),
        None => flags = 0,
    }
    let tids = crate::procfs::tasks(pid)?;
    for tid in tids.into_iter().filter(|&tid| tid != pid) {
        let mut seen = flags;
        if let Some(ns) = read(tid, &mut seen)? {
            flags = seen;
            live.get_or_insert(ns);
            if flags != 0 {
                break;
            }
        }
    }
    match (live, refused) {
        // Not one thread could be read: say why.
        (None, Some(e)) => Err(e),
        (live, _) => Ok((flags, live)),
    }
}

impl Mover for PtraceMover {
    fn move_process(
        &self,
        pid: i32,
        target: std::os::fd::OwnedFd,
        writer: Option<u32>,
        tracer: &Credentials,
        set: &[Arc<Namespace>; 8],
        seized: &mut dyn FnMut(),
    ) -> Result<()> {
        let Some(writer_tid) = writer else {
            return self.try_move(pid, target, set, None, Some(tracer));
        };
        // `echo $$ > tasks`: the writer is blocked in this very write. It is
        // answered once its threads are asked to stop; a failure after that
        // reaches it as the write's return value.
        let writer = transfer::Writer {
            tid: nix::unistd::Pid::from_raw(writer_tid as i32),
            answer: seized,
            errno_of: self.errno_of,
        };
        self.try_move(pid, target, set, Some(writer), None)
    }

    fn begin(
        &self,
        (pid, target): (i32, OwnedFd),
        leader: Option<&Thread>,
        writer: Option<u32>,
        tracer: &Credentials,
        set: &[Arc<Namespace>; 8],
    ) -> std::result::Result<Begun, OwnedFd> {
        if pid == std::process::id() as i32 {
            return Err(target);
        }
        let mut key: [u64; 8] = std::array::from_fn(|i| set[i].ino());
        let Some((flags, own_pidns)) = kernel_kinds_to_change(pid, leader, &key) else {
            return Err(target);
        };
        if flags & libc::CLONE_NEWPID == 0 {
            key[Kind::Pid.index()] = own_pidns;
        }
        // Only a holder already there: starting one forks, which is the
        // move thread's to wait for.
        let Some(holder) = self.cached_holder(&key) else {
            return Err(target);
        };
        let open_pidns = || ProcDir::ns(pid)?.open_entry("pid");
        let Ok(seen) = holder.pid_seen_from(own_pidns, open_pidns) else {
            return Err(target);
        };
        // Only an injector already running: starting one execs.
        let Some(injector) = self.injectors.take_idle() else {
            return Err(target);
        };
        let writer = writer.map(|tid| nix::unistd::Pid::from_raw(tid as i32));
        let target = match ProcessHandle::pinned(target, pid) {
            Ok(t) => t,
            Err(e) => {
                self.injectors.put_back(injector);
                return Ok(Begun {
                    pid,
                    writer: None,
                    sent: Err(e.into()),
                    _target: None,
                    _holder: None,
                });
            }
        };
        let source = known_source(&holder, seen, key);
        // A writer moving itself may trace itself: no tracer check, as in
        // `move_process`.
        let tracer = writer.is_none().then_some(tracer);
        let sent = self
            .injectors
            .send(Some(injector), &target, source, flags, writer, tracer)
            .map_err(Error::from);
        Ok(Begun {
            pid,
            writer,
            sent,
            _target: Some(target),
            _holder: Some(holder),
        })
    }

    fn finish(&self, begun: Begun, seized: &mut dyn FnMut()) -> Result<()> {
        let Begun {
            pid, writer, sent, ..
        } = begun;
        let writer = writer.map(|tid| transfer::Writer {
            tid,
            answer: seized,
            errno_of: self.errno_of,
        });
        let threads = self.injectors.finish(sent?, writer)?;
        log::info!("moved process {pid} ({threads} threads)");
        Ok(())
    }

    fn helper_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self.holders.lock().values().map(|h| h.pid()).collect();
        pids.extend(self.injectors.pids());
        pids
    }

    fn released(&self, ino: u64) {
        let dropped: Vec<Arc<Holder>> = {
            let mut holders = self.holders.lock();
            let keys: Vec<[u64; 8]> = holders
                .keys()
                .filter(|k| k.contains(&ino))
                .copied()
                .collect();
            keys.iter().filter_map(|k| holders.remove(k)).collect()
        };
        drop(dropped);
    }
}

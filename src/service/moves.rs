//! Writes to `tasks`: the checks on the writer's thread, and the moves,
//! run off the threads that carry requests (the FUSE workers).
//!
//! A move can wait seconds for its target to stop (see
//! [`crate::transfer::STOP_TIMEOUT`]). Were it run on the FUSE worker that
//! received the write, a few such moves would hold every worker, and the
//! whole mount, every `ls` included, would wait with them. So the worker
//! only checks the request and hands the move to a thread of its own here;
//! that thread does the move and sends the reply. Threads are kept for the
//! next moves (a few idle ones at most) and started when none is idle, up
//! to [`MAX_IN_FLIGHT`] moves at once; past that a write is refused with
//! `EAGAIN` at once.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::input;
use super::{Caller, Denied, Error, Invalid, Service, WriteReply, pin};
use crate::cgroup::{Caller as CgroupCaller, Hierarchies, Joined, Membership, Targets};
use crate::kview::bpf::Thread;
use crate::ns::{self, Namespace};
use crate::tree::ContainerId;

/// Moves that may be in flight at once (each has a thread here and an
/// injector process); past that a write to `tasks` fails with `EAGAIN`.
pub const MAX_IN_FLIGHT: usize = 128;

/// Threads kept waiting for the next move.
const MAX_IDLE: usize = 4;

/// One move, reply included.
pub(crate) type Job = Box<dyn FnOnce() + Send + 'static>;

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    /// Threads waiting for a job.
    idle: usize,
    /// Jobs queued or running.
    in_flight: usize,
}

/// The move threads. `state` is a leaf lock, never held while a job runs.
#[derive(Default)]
pub(crate) struct MoveThreads {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl std::fmt::Debug for MoveThreads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.shared.0.lock();
        f.debug_struct("MoveThreads")
            .field("idle", &st.idle)
            .field("in_flight", &st.in_flight)
            .finish()
    }
}

impl MoveThreads {
    /// A place for one more move, unless [`MAX_IN_FLIGHT`] moves are in
    /// flight already.
    pub(crate) fn reserve(&self) -> Option<Slot<'_>> {
        let mut st = self.shared.0.lock();
        if st.in_flight >= MAX_IN_FLIGHT {
            return None;
        }
        st.in_flight += 1;
        Some(Slot {
            threads: self,
            used: false,
        })
    }
}

/// A reserved place for one move: [`Slot::run`] runs it; dropping the slot
/// gives the place back.
pub(crate) struct Slot<'a> {
    threads: &'a MoveThreads,
    used: bool,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.threads.shared.0.lock().in_flight -= 1;
        }
    }
}

impl Slot<'_> {
    /// Runs `job` on an idle move thread, or on a new one.
    pub(crate) fn run(mut self, job: Job) {
        self.used = true;
        let (lock, ready) = &*self.threads.shared;
        let mut st = lock.lock();
        if st.idle > st.queue.len() {
            st.queue.push_back(job);
            drop(st);
            ready.notify_one();
            return;
        }
        drop(st);
        let shared = Arc::clone(&self.threads.shared);
        // The job goes to the new thread once it exists, so that it is not
        // lost with the thread's closure when none can be started: a job
        // may hold a move already handed to an injector, which must be
        // seen through.
        let (give, take) = std::sync::mpsc::sync_channel::<Job>(1);
        let spawned = std::thread::Builder::new()
            .name("move".into())
            .spawn(move || {
                if let Ok(job) = take.recv() {
                    job();
                    serve(&shared);
                }
            });
        let job = match spawned {
            Ok(_) => match give.send(job) {
                Ok(()) => return,
                Err(back) => back.0,
            },
            Err(e) => {
                log::error!("cannot start a thread for a move, so it runs here: {e}");
                job
            }
        };
        job();
        lock.lock().in_flight -= 1;
    }
}

/// A move thread after its first job: takes queued jobs until it has been
/// idle while enough others were.
fn serve(shared: &(Mutex<State>, Condvar)) {
    let (lock, ready) = shared;
    let mut st = lock.lock();
    st.in_flight -= 1;
    loop {
        if let Some(job) = st.queue.pop_front() {
            drop(st);
            job();
            st = lock.lock();
            st.in_flight -= 1;
            continue;
        }
        if st.idle >= MAX_IDLE {
            return;
        }
        st.idle += 1;
        ready.wait(&mut st);
        st.idle -= 1;
    }
}

/// Per container, which names of its `tasks` file have writes pending
/// (see [`super::Node::tasks_alias`]), and the name a lookup gives
/// now: one with no write pending. A leaf lock.
#[derive(Debug, Default)]
pub(crate) struct TasksNames {
    names: Mutex<HashMap<ContainerId, Names>>,
}

#[derive(Debug, Default)]
struct Names {
    /// The generation lookups give.
    current: u32,
    /// Writes pending per generation.
    pending: HashMap<u32, usize>,
}

/// Generations wrap below this, well inside a node id's spare bits.
const GENERATIONS: u32 = 1 << 20;

impl TasksNames {
    /// The generation a lookup of `c`'s `tasks` gives.
    pub(crate) fn current(&self, c: ContainerId) -> u32 {
        self.names.lock().get(&c).map_or(0, |n| n.current)
    }

    /// A write to generation `generation` of `c`'s `tasks` is pending: new
    /// lookups give another one.
    pub(crate) fn begin(&self, c: ContainerId, generation: u32) {
        let mut all = self.names.lock();
        let names = all.entry(c).or_default();
        *names.pending.entry(generation).or_insert(0) += 1;
        while names.pending.contains_key(&names.current) {
            names.current = (names.current + 1) % GENERATIONS;
        }
    }

    /// That write was answered. Once none is pending, lookups give the
    /// file's own id again.
    pub(crate) fn end(&self, c: ContainerId, generation: u32) {
        let mut all = self.names.lock();
        let Some(names) = all.get_mut(&c) else {
            return;
        };
        if let Some(n) = names.pending.get_mut(&generation) {
            *n -= 1;
            if *n == 0 {
                names.pending.remove(&generation);
            }
        }
        if names.pending.is_empty() {
            all.remove(&c);
        }
    }
}

impl Service {
    /// A write to `tasks` (name `generation` of container `c`'s): checks
    /// the writer and the process it names here, on the caller's thread,
    /// then moves that process on a move thread, which answers `reply`.
    pub(super) fn write_tasks(
        self: &Arc<Self>,
        caller: &Caller,
        (c, generation): (ContainerId, u32),
        data: &[u8],
        mut reply: Box<dyn WriteReply>,
    ) {
        let pid = match input::parse_pid(data) {
            Ok(pid) => pid,
            Err(e) => {
                return reply.send("write tasks", Err(e.into()));
            }
        };
        let resolved = caller.pid_ns().and_then(|pidns| {
            // A thread id names its whole process, as in cgroup.procs.
            crate::sys::ns::tgid_from_pidns(pidns.as_fd(), pid).map_err(|e| {
                match e.raw_os_error() {
                    Some(libc::ESRCH) => ns::NsError::NoSuchProcess(pid).into(),
                    _ => Error::Sys {
                        what: "translate the pid",
                        source: e,
                    },
                }
            })
        });
        // Pinned before anything about it is judged: a pid reused between
        // the checks and the move can never be the process moved.
        let pinned = resolved.and_then(|local| Ok((local, pin(local, 0)?)));
        let set = pinned.and_then(|(local, pidfd)| {
            let st = self.state.read();
            if self.helpers(&st).contains(&local) {
                return Err(Error::Denied(Denied::Helper(local)));
            }
            let eff = st.tree.effective_set(c).ok_or(Error::NotFound)?;
            let mut set = Vec::with_capacity(8);
            for e in eff {
                set.push(Arc::clone(st.spaces.get(&e.ino).ok_or(Error::NotFound)?));
            }
            let set: [Arc<Namespace>; 8] = set
                .try_into()
                .map_err(|_| Error::Invalid(Invalid::Rule("incomplete namespace set")))?;
            // Most containers bind no cgroups: a walk up the tree, no copy.
            let cgroups = st.tree.cgroups_to_join(c).cloned();
            Ok((local, pidfd, (set, cgroups)))
        });
        // A confined caller moves processes of its subtree, within it; every
        // caller needs the kernel's leave to trace the process.
        let set = set.and_then(|(local, pidfd, set)| {
            let view = self.view(caller);
            self.require_full(&view, c)?;
            self.require_process_in(&view, local, pidfd.as_fd())?;
            let creds = caller.credentials()?;
            // One kernel read of the process, if the kernel offers it: its
            // threads for the ptrace check, its leader for the move.
            let read = crate::kview::membership().process(local as u32);
            caller.require_ptrace(&creds, local, pidfd.as_fd(), read.as_ref())?;
            Ok((local, pidfd, set, creds, read))
        });
        let (local, pidfd, (set, cgroups), creds, read) = match set {
            Ok(v) => v,
            Err(e) => {
                return reply.send("write tasks", Err(e));
            }
        };
        // The move runs on a thread of its own: it may wait seconds for its
        // target to stop, and the FUSE workers must go on answering.
        let Some(slot) = self.moves.reserve() else {
            let e = Error::Busy {
                limit: MAX_IN_FLIGHT,
                what: "moves",
            };
            return reply.send("write tasks", Err(e));
        };
        // Until it is answered, the kernel holds this name of `tasks`
        // locked: new lookups get another.
        self.tasks_names.begin(c, generation);
        // Without cgroups to join first, the request can go to an injector
        // from here, when that takes no wait (a holder and an injector are
        // there already): the move thread then only waits for the answer,
        // one wake-up fewer on the way in.
        let start = match cgroups {
            None => match self.mover.begin(
                (local, pidfd),
                leader_of(read.as_ref(), local),
                caller.thread_of(local),
                &creds,
                &set,
            ) {
                Ok(begun) => Start::Begun(begun),
                Err(pidfd) => Start::Pinned(pidfd),
            },
            Some(_) => Start::Pinned(pidfd),
        };
        let this = Arc::clone(self);
        let caller = caller.clone();
        slot.run(Box::new(move || {
            let target = Target {
                set: &set,
                cgroups: cgroups.as_ref(),
            };
            this.finish_move(&caller, c, local, start, &creds, target, reply.as_mut());
            this.tasks_names.end(c, generation);
        }));
    }

    /// Moves `local`, pinned by `start` or begun there, into `target` (what container
    /// `c` binds) and answers the write that asked for it: first into the
    /// cgroups, if any, with the writer's rights; then into the
    /// namespaces. If the namespace part fails, the cgroups are left again,
    /// so the process ends where it was (docs/moving.md).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn finish_move(
        &self,
        caller: &Caller,
        c: ContainerId,
        local: i32,
        start: Start,
        creds: &crate::ns::creds::Credentials,
        target: Target<'_>,
        reply: &mut dyn WriteReply,
    ) {
        let set = target.set;
        let joined = match target.cgroups {
            None => None,
            Some(m) => match self.join_cgroups(caller, creds, local, m) {
                Ok(joined) => Some(joined),
                Err(e) => return reply.send("write tasks", Err(e)),
            },
        };
        // The mover may have the write answered before it is done (a
        // process moving itself); a failure after that still gets logged
        // here, and reaches the writer as its write's return value.
        let mut seized = || reply.send("write tasks", Ok(()));
        let result = match start {
            Start::Pinned(pidfd) => self.mover.move_process(
                local,
                pidfd,
                caller.thread_of(local),
                creds,
                set,
                &mut seized,
            ),
            // Begun only for containers without cgroups: nothing joined.
            Start::Begun(begun) => self.mover.finish(begun, &mut seized),
        };
        let result = result.map_err(Error::from);
        if let (Err(e), Some(joined)) = (&result, joined) {
            log::info!(
                "process {local} leaves the cgroups it joined: its namespaces did not move ({e})"
            );
            if let Err(left) = joined.undo() {
                for (cgroup, why) in left {
                    log::error!("process {local} could not be moved back out of {cgroup}: {why}");
                }
            }
        }
        let moved = result.is_ok();
        reply.send("write tasks", result);
        if moved && log::log_enabled!(log::Level::Info) {
            log::info!(
                "process {local} moved into {} (written by pid {})",
                self.state.read().tree.path(c),
                caller.tid
            );
        }
        if self.discovering {
            self.moved.lock().push(local);
        }
        // A namespace released while the move ran (rmdir, rm) may have been
        // released before the mover cached a holder sitting in it.
        let gone: Vec<u64> = {
            let st = self.state.read();
            set.iter()
                .map(|ns| ns.ino())
                .filter(|ino| !st.spaces.contains_key(ino))
                .collect()
        };
        for ino in gone {
            self.mover.released(ino);
        }
    }
}

/// How a move thread finds its move: the target pinned, or the move
/// already with an injector.
pub(super) enum Start {
    Pinned(OwnedFd),
    Begun(crate::mover::Begun),
}

/// What a move goes into.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    /// The namespaces, one per kind.
    pub(super) set: &'a [Arc<Namespace>; 8],
    /// The cgroups to join, if the container binds any.
    pub(super) cgroups: Option<&'a Membership>,
}

impl Service {
    /// Joins process `local` to the cgroups `m`, as the writer (`caller`,
    /// whose credentials are `creds`) would by writing its pid into each
    /// `cgroup.procs` itself: all or nothing. A frozen target is refused.
    fn join_cgroups(
        &self,
        caller: &Caller,
        creds: &crate::ns::creds::Credentials,
        local: i32,
        m: &Membership,
    ) -> Result<Joined, Error> {
        let hierarchies = Hierarchies::of_host()?;
        let as_caller = CgroupCaller::with_credentials(caller.tid, creds.clone())?;
        let targets = Targets::open(&hierarchies, m, &as_caller)?;
        if let Some(frozen) = targets.frozen() {
            return Err(Error::Frozen(frozen.clone()));
        }
        targets.join(local).map_err(|e| {
            for (cgroup, why) in &e.left {
                log::error!("process {local} could not be moved back out of {cgroup}: {why}");
            }
            Error::Cgroup(e.error)
        })
    }
}

impl From<crate::mover::Error> for Error {
    /// A move's failure, as the same request error it always was.
    fn from(e: crate::mover::Error) -> Error {
        use crate::mover::Error as M;
        match e {
            M::Move(e) => Error::Move(e),
            M::Ns(e) => Error::Ns(e),
            M::Injector(e) => Error::Injector(e),
            M::Daemon => Error::Denied(Denied::Rule("the daemon does not move itself")),
            M::Unreadable { pid, source } => Error::Denied(Denied::Unreadable { pid, source }),
            M::PidNsBlind(pid) => Error::Invalid(Invalid::PidNsBlind(pid)),
            M::Sys { what, source } => Error::Sys { what, source },
        }
    }
}

/// The record of `pid`'s leader in a kernel read of the process, if the
/// read has it.
fn leader_of(read: Option<&crate::kview::bpf::ProcessRead>, pid: i32) -> Option<&Thread> {
    read?.threads.iter().find(|t| t.proc.pid == pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn lookups_give_a_name_with_no_write_pending() {
        let names = TasksNames::default();
        let c = ContainerId(5);
        assert_eq!(names.current(c), 0);
        names.begin(c, 0);
        assert_eq!(names.current(c), 1);
        names.begin(c, 1);
        assert_eq!(names.current(c), 2);
        names.end(c, 0);
        assert_eq!(names.current(c), 2, "generations move on");
        names.begin(c, 2);
        names.begin(c, 2);
        assert_eq!(names.current(c), 3);
        names.end(c, 2);
        names.end(c, 1);
        assert_eq!(names.current(c), 3);
        names.end(c, 2);
        assert_eq!(names.current(c), 0, "nothing pending: the file's own id");
        assert_eq!(names.current(ContainerId(6)), 0);
    }

    #[test]
    fn runs_jobs_concurrently_and_refuses_past_the_limit() {
        let threads = MoveThreads::default();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel::<()>();
        // Fill every slot with a job that blocks until released.
        for _ in 0..MAX_IN_FLIGHT {
            let rx = Arc::clone(&release_rx);
            let done = done_tx.clone();
            let job: Job = Box::new(move || {
                let _ = rx.lock().unwrap().recv();
                let _ = done.send(());
            });
            threads.reserve().expect("a slot").run(job);
        }
        assert!(threads.reserve().is_none(), "past the limit");
        for _ in 0..MAX_IN_FLIGHT {
            release_tx.send(()).unwrap();
        }
        for _ in 0..MAX_IN_FLIGHT {
            done_rx.recv().unwrap();
        }
        // Slots come back once the jobs are over.
        let (tx, rx) = mpsc::channel();
        let mut accepted = false;
        for _ in 0..1000 {
            let tx = tx.clone();
            if let Some(slot) = threads.reserve() {
                slot.run(Box::new(move || tx.send(7).unwrap()));
                accepted = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(accepted);
        assert_eq!(rx.recv().unwrap(), 7);
    }
}

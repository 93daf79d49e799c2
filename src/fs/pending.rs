//! Moves in flight, run off the FUSE workers.
//!
//! A move can wait seconds for its target to stop (see
//! [`crate::mover::STOP_TIMEOUT`]). Were it run on the FUSE worker that
//! received the write, a few such moves would hold every worker, and the
//! whole mount, every `ls` included, would wait with them. So the worker
//! only checks the request and hands the move to a thread of its own here;
//! that thread does the move and sends the reply. Threads are kept for the
//! next moves (a few idle ones at most) and started when none is idle, up
//! to [`MAX_IN_FLIGHT`] moves at once; past that a write is refused with
//! `EAGAIN` at once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

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
        let spawned = std::thread::Builder::new()
            .name("move".into())
            .spawn(move || {
                job();
                serve(&shared);
            });
        if let Err(e) = spawned {
            // The job is dropped with the closure: fuser answers its reply
            // with EIO.
            log::error!("cannot start a thread for a move: {e}");
            lock.lock().in_flight -= 1;
        }
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
/// (see [`super::node::Node::tasks_alias`]), and the name a lookup gives
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

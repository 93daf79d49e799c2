//! Discovery: the namespace sets processes use on the host, kept up to date
//! without reading all of `/proc` over and over.
//!
//! A [`Model`] knows, for every process outside the root's namespace set,
//! which set it is in. It is filled by one full read of `/proc` at start,
//! then kept current from process events (see [`events`]):
//! * a fork copies the parent's set to the child (no system call);
//! * an exec reads the process's eight namespace links again (its cost per
//!   exec is in BENCHMARKS.md), since an exec is how nearly every process
//!   arrives in new namespaces:
//!   `unshare CMD`, `ip netns exec`, a container runtime starting its init;
//! * an exit forgets the process.
//!
//! Processes the daemon itself moves are read again within [`TICK`].
//! Other changes that come without an exec (a process calling unshare(2)
//! or setns(2) and carrying on) are seen by the kernel's view
//! ([`crate::kview`]) when it runs on BPF: it counts every switch of
//! namespaces and rings a doorbell (a descriptor discovery polls beside
//! the process events), so discovery wakes at once, and a moved count
//! means one full pass (a few milliseconds) and a publish after
//! [`SETTLE`], as for process events.
//! On the `/proc` path they are caught by the full read every [`RESYNC`];
//! so is anything missed when the kernel drops events. Without
//! process events (no CAP_NET_ADMIN in the initial network namespace, or a
//! kernel without them) discovery reads `/proc` in full every
//! [`FALLBACK`] instead, and says so in the log.
//!
//! After a change, the sets in use (those with a process that is not one of
//! the daemon's helpers) are named ([`naming`]) and handed to a [`Sink`]
//! (the filesystem), at most every [`SETTLE`].

pub mod events;
pub mod lsns;
pub mod naming;

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ns::Kind;
use crate::procfs;
use crate::sys;

pub use events::{Event, Events};
use naming::Source;

/// How often the whole of `/proc` is read again while events flow.
pub const RESYNC: Duration = Duration::from_secs(30);

/// How often the whole of `/proc` is read when events cannot be had.
pub const FALLBACK: Duration = Duration::from_secs(3);

/// How long changes are gathered before they are published.
pub const SETTLE: Duration = Duration::from_millis(100);

/// How often the thread wakes, at the least, to look at processes the
/// daemon moved.
pub const TICK: Duration = Duration::from_secs(1);

/// Where `ip netns` keeps its names.
const NETNS_DIR: &str = "/run/netns";

/// One namespace set in use, as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The inodes, in [`Kind::ALL`] order (pid and time as for children).
    pub set: [u64; 8],
    /// Its lowest pid (daemon pid namespace), to open the namespaces from.
    pub pid: i32,
    /// Its name.
    pub name: String,
}

/// What discovery needs of the filesystem.
pub trait Sink: Send + Sync + 'static {
    /// The root container's set: processes in it are not discovered.
    fn root_set(&self) -> [u64; 8];
    /// The daemon's helper processes, which never make a set discovered.
    fn helper_pids(&self) -> Vec<i32>;
    /// Makes the discovered containers match `found`, in pid order.
    fn publish(&self, found: &[Found]);
    /// Processes the daemon moved since the last call: their sets changed
    /// without an exec, so no event tells of it.
    fn take_moved(&self) -> Vec<i32>;
}

/// Which process is in which namespace set, for processes outside the root
/// set.
#[derive(Debug)]
pub struct Model {
    root: [u64; 8],
    procs: HashMap<i32, [u64; 8]>,
}

impl Model {
    /// An empty model; `root` is the set left out.
    pub fn new(root: [u64; 8]) -> Model {
        Model {
            root,
            procs: HashMap::new(),
        }
    }

    /// Records `pid` as being in `set` (`None`: gone or unreadable).
    /// Returns whether the model changed.
    pub fn set(&mut self, pid: i32, set: Option<[u64; 8]>) -> bool {
        match set {
            Some(s) if s != self.root => self.procs.insert(pid, s) != Some(s),
            _ => self.procs.remove(&pid).is_some(),
        }
    }

    /// Applies one event; `read` reads a process's set from `/proc`.
    /// Returns whether the model changed.
    pub fn apply(&mut self, event: Event, read: impl Fn(i32) -> Option<[u64; 8]>) -> bool {
        match event {
            Event::Fork { parent, child } => {
                let set = self.procs.get(&parent).copied();
                self.set(child, set)
            }
            Event::Exec(pid) => self.set(pid, read(pid)),
            Event::Exit(pid) => self.set(pid, None),
        }
    }

    /// Reads every process again, in one pass of the kernel's view (see
    /// [`crate::kview`]).
    pub fn rescan(&mut self) {
        self.rescan_with(crate::kview::membership());
    }

    /// [`Model::rescan`] from the given source (the benchmark compares
    /// both).
    pub fn rescan_with(&mut self, membership: &crate::kview::Membership) {
        if let crate::kview::Membership::Proc = membership {
            // Today's read: eight links per process, and `stat` only for
            // processes outside the root's set.
            return match procfs::processes() {
                Ok(pids) => {
                    self.procs.clear();
                    for pid in pids {
                        let set = read_set(pid, &self.root);
                        self.set(pid, set);
                    }
                }
                Err(e) => log::warn!("discovery cannot read /proc: {e}"),
            };
        }
        match membership.processes() {
            Ok(procs) => {
                self.procs.clear();
                for p in procs.iter() {
                    // As read_set: kernel threads only in the root's set.
                    let set = p.set().filter(|s| s == &self.root || !p.kthread);
                    self.set(p.pid, set);
                }
            }
            Err(e) => log::warn!("discovery cannot {}: {e}", membership.what()),
        }
    }

    /// The sets in use by some process not in `skip`, each with its lowest
    /// pid.
    pub fn sets(&self, skip: &[i32]) -> BTreeMap<[u64; 8], i32> {
        let mut sets: BTreeMap<[u64; 8], i32> = BTreeMap::new();
        for (&pid, set) in &self.procs {
            if skip.contains(&pid) {
                continue;
            }
            let low = sets.entry(*set).or_insert(pid);
            *low = (*low).min(pid);
        }
        sets
    }
}

/// The namespace set of process `pid`, `None` if it is gone or a kernel
/// thread (kernel threads stay in the initial namespaces, which are not
/// the root container's when the daemon runs in namespaces of its own).
/// `root` saves the check for processes in the root's set.
fn read_set(pid: i32, root: &[u64; 8]) -> Option<[u64; 8]> {
    let set = crate::kview::thread_set(pid as u32)?;
    (&set == root || !procfs::is_kernel_thread(pid)).then_some(set)
}

/// Remembers the names given to live sets, so a set keeps its name for
/// as long as it is in use.
#[derive(Debug, Default)]
pub struct Namer {
    names: HashMap<[u64; 8], String>,
}

impl Namer {
    /// Names `sets` (set → lowest pid): known sets keep their names, new
    /// ones are named in pid order, the names of sets gone are forgotten.
    /// `source` says where a new set's name comes from.
    pub fn name(
        &mut self,
        sets: &BTreeMap<[u64; 8], i32>,
        source: impl Fn(i32, &[u64; 8]) -> Source,
    ) -> Vec<Found> {
        self.names.retain(|set, _| sets.contains_key(set));
        let mut fresh: Vec<(i32, [u64; 8])> = sets
            .iter()
            .filter(|(set, _)| !self.names.contains_key(*set))
            .map(|(set, &pid)| (pid, *set))
            .collect();
        fresh.sort_unstable();
        for (pid, set) in fresh {
            let source = source(pid, &set);
            let name = naming::choose(&source, &set, |n| self.names.values().any(|v| v == n));
            self.names.insert(set, name);
        }
        let mut found: Vec<Found> = sets
            .iter()
            .filter_map(|(set, &pid)| {
                Some(Found {
                    set: *set,
                    pid,
                    name: self.names.get(set)?.clone(),
                })
            })
            .collect();
        found.sort_by_key(|f| f.pid);
        found
    }
}

/// Where the name of the set of `pid` comes from (see [`naming`]).
pub fn source_of(pid: i32, set: &[u64; 8], root: &[u64; 8]) -> Source {
    if let Some(name) = cgroup_name(pid) {
        return Source::Named(name);
    }
    let net = set[Kind::Net.index()];
    if net != root[Kind::Net.index()]
        && let Some(name) = netns_name(Path::new(NETNS_DIR), net)
    {
        return Source::Named(format!("netns-{name}"));
    }
    Source::Host(hostname_of(pid).unwrap_or_default())
}

/// The runtime name in any of the cgroup paths of `pid`, the unified
/// hierarchy's first: `Some` when a container runtime started it (a set
/// so named carries its processes' cgroups as its `.cgroups`).
pub fn cgroup_name(pid: i32) -> Option<String> {
    let membership = crate::cgroup::Membership::of_process(pid).ok()?;
    let mut paths: Vec<(bool, &str)> = membership
        .iter()
        .map(|c| (c.id != 0, c.path.as_str()))
        .collect();
    paths.sort_by_key(|p| p.0);
    paths.into_iter().find_map(|(_, p)| naming::runtime_name(p))
}

/// The name under `dir` (as `ip netns` keeps them) of the network
/// namespace `ino`.
pub fn netns_name(dir: &Path, ino: u64) -> Option<String> {
    let nsfs = crate::ns::nsfs_dev().ok()?;
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == ino && m.dev() == nsfs))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    names.into_iter().next()
}

/// The hostname of the uts namespace of `pid`: a short-lived thread joins
/// that namespace (setns(2) of a uts namespace changes the calling thread
/// only) and reads uname(2); the thread, and its namespaces, end there.
pub fn hostname_of(pid: i32) -> Option<String> {
    let ns: OwnedFd = crate::ns::Namespace::of_task(pid, Kind::Uts)
        .ok()
        .map(|ns| ns.fd().try_clone_to_owned())?
        .ok()?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) of a uts namespace changes only this thread, which
            // ends right after.
            crate::sys::ns::setns_thread(&ns, libc::CLONE_NEWUTS).ok()?;
            crate::sys::ns::hostname().ok()
        })
        .join()
        .ok()
        .flatten()
    })
}

/// Starts the discovery thread, which runs for the daemon's life.
pub fn spawn(sink: Arc<dyn Sink>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("discover".into())
        .spawn(move || run(&*sink))
        .map(drop)
}

fn run(sink: &dyn Sink) {
    let mut events = match Events::open() {
        Ok(e) => Some(e),
        Err(e) => {
            log::warn!(
                "process events are not available ({e}): discovery reads all of /proc every {}s",
                FALLBACK.as_secs()
            );
            None
        }
    };
    let root = sink.root_set();
    let interval = if events.is_some() { RESYNC } else { FALLBACK };
    let mut model = Model::new(root);
    let mut namer = Namer::default();
    let publish = |model: &Model, namer: &mut Namer| {
        let sets = model.sets(&sink.helper_pids());
        let found = namer.name(&sets, |pid, set| source_of(pid, set, &root));
        sink.publish(&found);
    };
    // Read before the first pass, so a switch during it is not missed.
    let membership = crate::kview::membership();
    // Rings at each setns(2) or unshare(2): the loop wakes at once to read
    // `switches`, rather than at its next look.
    let mut switches = membership.switches();
    // Only with the count to read (and clear it by): else it would wake the
    // loop for ever once rung.
    let doorbell = switches.and(membership.doorbell());
    model.rescan();
    publish(&model, &mut namer);
    let mut next_full = Instant::now() + interval;
    let mut pending: Option<Instant> = None;
    loop {
        let now = Instant::now();
        let mut until = next_full;
        if let Some(due) = pending {
            until = until.min(due);
        }
        let mut wait = until.saturating_duration_since(now).min(TICK);
        if switches.is_some() && doorbell.is_none() {
            wait = wait.min(SETTLE);
        }
        match &mut events {
            Some(events) => match events.wait(wait, doorbell) {
                Ok(batch) => {
                    let mut changed = false;
                    for event in batch.events {
                        changed |= model.apply(event, |pid| read_set(pid, &root));
                    }
                    if batch.overflowed {
                        log::info!("process events were lost: reading /proc in full");
                        next_full = Instant::now();
                    }
                    if changed && pending.is_none() {
                        pending = Some(Instant::now() + SETTLE);
                    }
                }
                Err(e) => {
                    log::warn!("reading process events failed: {e}");
                    std::thread::sleep(wait);
                }
            },
            None => match doorbell {
                Some(fd) => {
                    if let Err(e) = sys::fs::wait_readable(fd, wait) {
                        log::warn!("waiting for namespace switches failed: {e}");
                        std::thread::sleep(wait);
                    }
                }
                None => std::thread::sleep(wait),
            },
        }
        let mut changed = false;
        for pid in sink.take_moved() {
            changed |= model.set(pid, read_set(pid, &root));
        }
        if changed && pending.is_none() {
            pending = Some(Instant::now() + SETTLE);
        }
        if let Some(seen) = switches {
            // Emptied before the count is read: a switch after this rings
            // again.
            membership.clear_doorbell();
            let count = membership.switches();
            if count.is_some_and(|c| c != seen) {
                switches = count;
                model.rescan();
                // Published after the same batching delay as process
                // events: a runtime that has just made the namespaces may
                // not have put the process into its cgroups yet, and a set
                // keeps the name it is first published under.
                pending.get_or_insert(Instant::now() + SETTLE);
            }
        }
        let now = Instant::now();
        if now >= next_full {
            model.rescan();
            next_full = now + interval;
            pending = Some(now);
        }
        if pending.is_some_and(|due| now >= due) {
            pending = None;
            publish(&model, &mut namer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const A: [u64; 8] = [1, 2, 3, 40, 5, 6, 7, 80];
    const B: [u64; 8] = [1, 2, 30, 40, 5, 6, 7, 80];

    #[test]
    fn events_keep_the_model_current() {
        let mut m = Model::new(ROOT);
        let read = |pid: i32| match pid {
            10 | 11 => Some(A),
            12 => Some(B),
            20 => Some(ROOT),
            _ => None,
        };
        assert!(m.apply(Event::Exec(10), read));
        assert!(!m.apply(Event::Exec(10), read));
        // A fork copies the parent's set, without reading.
        assert!(m.apply(
            Event::Fork {
                parent: 10,
                child: 13
            },
            |_| None
        ));
        // A child of a root-set process is not tracked.
        assert!(!m.apply(
            Event::Fork {
                parent: 20,
                child: 21
            },
            read
        ));
        assert!(m.apply(Event::Exec(12), read));
        assert!(!m.apply(Event::Exec(20), read));
        assert_eq!(m.sets(&[]), BTreeMap::from([(A, 10), (B, 12)]));
        // Helpers do not count, and the lowest pid left names the set.
        assert_eq!(m.sets(&[10, 12]), BTreeMap::from([(A, 13)]));
        assert!(m.apply(Event::Exit(10), read));
        assert!(m.apply(Event::Exit(13), read));
        assert!(!m.apply(Event::Exit(99), read));
        assert_eq!(m.sets(&[]), BTreeMap::from([(B, 12)]));
        // An exec into the root set drops the process.
        assert!(m.apply(Event::Exec(12), |_| Some(ROOT)));
        assert!(m.sets(&[]).is_empty());
    }

    #[test]
    fn names_stay_while_sets_live() {
        let mut namer = Namer::default();
        let source = |pid: i32, _: &[u64; 8]| Source::Named(format!("docker-{}", pid / 100));
        let found = namer.name(&BTreeMap::from([(A, 101), (B, 102)]), source);
        let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
        let b = format!("docker-1-{}", naming::short_id(&B));
        assert_eq!(names, vec!["docker-1", b.as_str()]);
        // A's lowest pid changes; names do not.
        let found = namer.name(&BTreeMap::from([(A, 150), (B, 102)]), |_, _| {
            Source::Host("x".into())
        });
        assert_eq!(found[0].name, b);
        assert_eq!(found[1].name, "docker-1");
        // A set gone and back is named afresh.
        namer.name(&BTreeMap::from([(B, 102)]), source);
        let found = namer.name(&BTreeMap::from([(A, 101), (B, 102)]), |_, _| {
            Source::Named("other".into())
        });
        assert_eq!(found[0].name, "other");
    }

    #[test]
    fn reads_a_hostname_and_the_netns_directory() {
        let me = std::process::id() as i32;
        let want = nix::unistd::gethostname().expect("gethostname");
        // Opening another process's namespace needs ptrace rights over it;
        // its own always works.
        assert_eq!(hostname_of(me).as_deref(), want.to_str());
        assert_eq!(hostname_of(i32::MAX), None);
        assert_eq!(netns_name(Path::new("/nonexistent"), 1), None);
    }
}

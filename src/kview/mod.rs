//! The kernel's view of who is in which namespaces.
//!
//! Every answer about membership (a container's `tasks`, `.namespaces`,
//! discovery's full read) needs the namespaces of every process on the
//! host. Through `/proc` that is one readlink per namespace link per
//! process; a BPF task iterator ([`bpf`]) hands the same facts over in one
//! pass, read from the kernel's own structures. [`Membership`] offers both
//! behind one API: the daemon picks one at start ([`membership`]), says in
//! the log which, and uses `/proc` whenever the kernel cannot run the
//! iterator (no BTF, BPF refused, lockdown, an older kernel) or when
//! [`FORCE_ENV`] asks for it. Both give the same answers; the tests check
//! that on the host they run on.
//!
//! Records are per process (thread-group leader), as `/proc` lists them,
//! pids as the daemon's pid namespace numbers them (callers translate for
//! readers in other pid namespaces, as they do for `/proc`), kernel
//! threads flagged so callers treat them as they did.

pub mod bpf;

use std::io;
use std::sync::{Arc, OnceLock};

use crate::ns::Kind;
use crate::procfs::{self, ProcDir};

/// The environment variable that chooses the path: `proc` forces the
/// `/proc` path (for tests, and for hosts where the BPF path misbehaves);
/// `iter` uses the iterator without the programs that count changes (no
/// cost on other processes' system calls, but no reuse of passes and no
/// quick discovery of bare unshare(2)); anything else, or unset, the BPF
/// path in full when the kernel runs it.
pub const FORCE_ENV: &str = "NSPROXYFS_KVIEW";

/// Number of namespace slots in a [`Proc`]: the eight kinds as a
/// container binds them (pid and time as for children), then the pid and
/// time namespaces the process itself is in.
pub const SLOTS: usize = 10;
const PID_OWN: usize = 8;
const TIME_OWN: usize = 9;

/// One process, as one pass sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    /// Its pid in the daemon's pid namespace.
    pub pid: i32,
    /// Whether it is a kernel thread.
    pub kthread: bool,
    /// Bit `i` set when slot `i` of `inum` could be read (as the readlink
    /// of that `/proc/PID/ns` link would succeed).
    valid: u32,
    inum: [u64; SLOTS],
}

impl Proc {
    /// Its namespace set in [`Kind::ALL`] order (pid and time as for
    /// children, as [`procfs::ns_set`] reads it); `None` if any of them
    /// cannot be read (an exiting process; a pid namespace without its
    /// init yet).
    pub fn set(&self) -> Option<[u64; 8]> {
        let all = (1u32 << 8) - 1;
        (self.valid & all == all).then(|| std::array::from_fn(|i| self.inum[i]))
    }

    /// The namespace its link `/proc/PID/ns/KIND` names (for pid and
    /// time, the one it is in, not its children's).
    pub fn link(&self, kind: Kind) -> Option<u64> {
        self.slot(match kind {
            Kind::Pid => PID_OWN,
            Kind::Time => TIME_OWN,
            other => other.index(),
        })
    }

    /// The namespace its link `/proc/PID/ns/ENTRY` names, ENTRY being
    /// the kind's [`Kind::proc_entry`] (for pid and time, its children's:
    /// the one `setns` changes); `None` if that link does not read.
    pub fn entry(&self, kind: Kind) -> Option<u64> {
        self.slot(kind.index())
    }

    /// Slot `slot` of `inum`, if it could be read.
    fn slot(&self, slot: usize) -> Option<u64> {
        (self.valid & (1 << slot) != 0).then_some(self.inum[slot])
    }

    /// Reads process `pid` from `/proc`; `None` if it is gone.
    fn from_proc(pid: i32) -> Option<Proc> {
        let dir = ProcDir::ns(pid).ok()?;
        let mut p = Proc {
            pid,
            kthread: false,
            valid: 0,
            inum: [0; SLOTS],
        };
        let own = [(PID_OWN, Kind::Pid), (TIME_OWN, Kind::Time)];
        let entries = Kind::ALL
            .into_iter()
            .map(|k| (k.index(), k.proc_entry()))
            .chain(own.into_iter().map(|(slot, k)| (slot, k.name())));
        for (slot, entry) in entries {
            if let Ok(ino) = dir.inode(entry) {
                p.inum[slot] = ino;
                p.valid |= 1 << slot;
            }
        }
        p.kthread = procfs::is_kernel_thread(pid);
        Some(p)
    }
}

/// One full pass over every process, in pid order.
pub type Pass = Arc<Vec<Proc>>;

/// Where membership answers come from.
pub enum Membership {
    /// One BPF task iterator pass, reused while nothing changed.
    Kernel(Box<bpf::Iter>),
    /// Readlinks under `/proc`.
    Proc,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.path())
    }
}

impl Membership {
    /// The BPF path if the kernel runs it, counting changes for good,
    /// else `/proc`; with the reason the BPF path, or its counting
    /// programs, are not used.
    pub fn choose() -> (Membership, Option<String>) {
        Self::choose_with(
            &std::env::var(FORCE_ENV).unwrap_or_default(),
            bpf::Counting::Always,
        )
    }

    /// As [`Membership::choose`], with `setting` in place of the value of
    /// [`FORCE_ENV`], and the counting programs run as `counting` says
    /// (`iter` in `setting` means [`bpf::Counting::Never`]).
    pub fn choose_with(setting: &str, counting: bpf::Counting) -> (Membership, Option<String>) {
        if setting == "proc" {
            return (Membership::Proc, Some(format!("{FORCE_ENV}=proc")));
        }
        let (counting, mut why) = match setting {
            "iter" => (bpf::Counting::Never, Some(format!("{FORCE_ENV}=iter"))),
            _ => (counting, None),
        };
        if counting != bpf::Counting::Never {
            match bpf::Iter::load(counting) {
                Ok(iter) => return (Membership::Kernel(Box::new(iter)), None),
                Err(e) => why = Some(e.to_string()),
            }
        }
        // The iterator alone, if the kernel runs it.
        match bpf::Iter::load(bpf::Counting::Never) {
            Ok(iter) => (Membership::Kernel(Box::new(iter)), why),
            Err(e) => (Membership::Proc, Some(e.to_string())),
        }
    }

    /// A short name of the path: `bpf` or `proc`.
    pub fn path(&self) -> &'static str {
        match self {
            Membership::Kernel(_) => "bpf",
            Membership::Proc => "proc",
        }
    }

    /// What a pass does, for error messages: `read /proc` or `run the BPF
    /// task iterator`.
    pub fn what(&self) -> &'static str {
        match self {
            Membership::Kernel(_) => "run the BPF task iterator",
            Membership::Proc => "read /proc",
        }
    }

    /// Every process the daemon's pid namespace shows, in pid order.
    pub fn processes(&self) -> io::Result<Pass> {
        match self {
            Membership::Kernel(iter) => iter.pass(),
            Membership::Proc => Ok(Arc::new(
                procfs::processes()?
                    .into_iter()
                    .filter_map(Proc::from_proc)
                    .collect(),
            )),
        }
    }

    /// The processes whose namespaces are exactly `set`, kernel threads
    /// left out, in pid order: what [`procfs::members`] answers. `first`
    /// orders the `/proc` path's comparisons (see there).
    pub fn members(&self, set: &[u64; 8], first: &[Kind]) -> io::Result<Vec<i32>> {
        match self {
            Membership::Kernel(iter) => iter.members(set),
            Membership::Proc => procfs::members(set, first),
        }
    }

    /// Thread `tid` (numbered in the daemon's pid namespace) as the kernel
    /// has it now, read in one BPF call: its namespaces (its own pid
    /// namespace in the [`Kind::Pid`] link) and, when the daemon is in the
    /// initial user namespace (where ids read as the kernel stores them),
    /// its credentials. `None` on the `/proc` path, or when the call fails
    /// or finds no such thread: callers then read `/proc`, which answers
    /// for that case as it always did.
    pub fn thread(&self, tid: u32) -> Option<bpf::Thread> {
        let Membership::Kernel(iter) = self else {
            return None;
        };
        let mut t = iter.thread(tid).ok().flatten()?;
        keep_readable_creds(&mut t);
        Some(t)
    }

    /// Every thread of process `pid` (daemon pid namespace) as the kernel
    /// has it now, from one BPF call ([`bpf::read_process`], whose
    /// [`bpf::ProcessRead::whole`] says whether the records can be taken
    /// for the list of its threads); credentials as in [`Self::thread`].
    /// `None` on the `/proc` path, or when the call fails or finds no such
    /// process.
    pub fn process(&self, pid: u32) -> Option<bpf::ProcessRead> {
        let Membership::Kernel(iter) = self else {
            return None;
        };
        let mut read = iter.process(pid).ok().flatten()?;
        read.threads.iter_mut().for_each(keep_readable_creds);
        Some(read)
    }

    /// The one-thread BPF program, for an injector to read a stopped
    /// process's threads with ([`bpf::read_process`]); `None` on the
    /// `/proc` path or where the kernel cannot read one thread.
    pub fn thread_program(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Membership::Kernel(iter) => iter.thread_program(),
            Membership::Proc => None,
        }
    }

    /// A descriptor that polls readable once some process's setns(2) or
    /// unshare(2) has succeeded since the last [`Membership::clear_doorbell`]
    /// (a prompt to read [`Membership::switches`]); `None` where
    /// `switches` is.
    pub fn doorbell(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        match self {
            Membership::Kernel(iter) => iter.doorbell(),
            Membership::Proc => None,
        }
    }

    /// Lets the doorbell ring again at the next switch.
    pub fn clear_doorbell(&self) {
        if let Membership::Kernel(iter) = self {
            iter.clear_doorbell();
        }
    }

    /// A count that moves whenever some process's setns(2) or unshare(2)
    /// succeeds; `None` on the `/proc` path, which cannot tell, and
    /// without the counting programs.
    pub fn switches(&self) -> Option<u64> {
        match self {
            Membership::Kernel(iter) => iter.switches(),
            Membership::Proc => None,
        }
    }
}

/// The eight namespaces of thread `tid` (inodes in [`Kind::ALL`] order,
/// pid and time as for its children), as [`procfs::ns_set`] reads them:
/// in one BPF call when the daemon's source offers it, else through
/// `/proc`.
pub fn thread_set(tid: u32) -> Option<[u64; 8]> {
    if tid == 0 {
        return None;
    }
    membership()
        .thread(tid)
        .and_then(|t| t.proc.set())
        .or_else(|| procfs::ns_set(tid))
}

/// Drops the credentials of a thread record unless the daemon is in the
/// initial user namespace, the only one where ids read as the kernel
/// stores them (see [`Membership::thread`]).
fn keep_readable_creds(t: &mut bpf::Thread) {
    if !in_initial_user_ns() {
        t.creds = None;
    }
}

/// The inode of the initial user namespace (the kernel's
/// `PROC_USER_INIT_INO`).
const INIT_USER_NS: u64 = 0xEFFF_FFFD;

/// Whether this process is in the initial user namespace.
fn in_initial_user_ns() -> bool {
    static INITIAL: OnceLock<bool> = OnceLock::new();
    *INITIAL.get_or_init(|| {
        procfs::ns_link_inode(std::process::id() as i32, "user") == Some(INIT_USER_NS)
    })
}

/// The daemon's membership source, once chosen.
static CHOSEN: OnceLock<Membership> = OnceLock::new();

/// Chooses the daemon's membership source, once, and logs which it is.
/// With `count` the counting programs run for the daemon's life: they let
/// a pass be reused until something changes and tell discovery of every
/// namespace switch at once, but they run at the exit of every system
/// call on the host (docs/kernel-view.md), so only a daemon with
/// `--discover` asks for them. Without it they run only during bursts of
/// reads (a monitoring loop over many `tasks` files), and are detached
/// once reads stop; a lone read makes a fresh pass, exact by construction.
pub fn start(count: bool) -> &'static Membership {
    static WATCH: std::sync::Once = std::sync::Once::new();
    let m = CHOSEN.get_or_init(|| {
        let forced = std::env::var(FORCE_ENV).unwrap_or_default();
        let counting = match count {
            true => bpf::Counting::Always,
            false => bpf::Counting::Bursts,
        };
        let (m, why) = Membership::choose_with(&forced, counting);
        let why = why.unwrap_or_default();
        match &m {
            Membership::Kernel(iter) => match iter.counting() {
                bpf::Counting::Always => log::info!(
                    "membership: one BPF task iterator pass (kernel view), reused until a \
                     fork, exit, setns or unshare"
                ),
                bpf::Counting::Bursts => log::info!(
                    "membership: one BPF task iterator pass (kernel view) per read; during \
                     bursts of reads changes are counted and a pass is reused"
                ),
                bpf::Counting::Never if why.starts_with(FORCE_ENV) => log::info!(
                    "membership: one BPF task iterator pass (kernel view), a new one per read \
                     ({why})"
                ),
                bpf::Counting::Never => log::warn!(
                    "membership: one BPF task iterator pass (kernel view), a new one per read: \
                     changes are not counted ({why})"
                ),
            },
            Membership::Proc if why.starts_with(FORCE_ENV) => {
                log::info!("membership: reading /proc ({why})")
            }
            Membership::Proc => {
                log::warn!("membership: reading /proc (BPF iterator not used: {why})")
            }
        }
        m
    });
    WATCH.call_once(|| watch_bursts(m));
    m
}

/// With counting during bursts of reads, starts the thread that detaches
/// the counting programs once a burst has ended.
fn watch_bursts(m: &'static Membership) {
    if let Membership::Kernel(iter) = m
        && iter.counting() == bpf::Counting::Bursts
    {
        let spawned = std::thread::Builder::new()
            .name("kview-bursts".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(iter.end_idle_burst());
                }
            });
        if let Err(e) = spawned {
            log::warn!("membership: no thread to end bursts of reads ({e}); reads are not counted");
            iter.never_count();
        }
    }
}

/// The daemon's membership source: as [`start`] chose it, or, used before
/// any choice (a test, a tool), the iterator without counting.
pub fn membership() -> &'static Membership {
    start(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_records_match_procfs() {
        let me = std::process::id() as i32;
        let p = Proc::from_proc(me).expect("this process");
        assert_eq!(p.set(), procfs::ns_set(me as u32));
        for kind in Kind::ALL {
            assert_eq!(p.link(kind), procfs::ns_link_inode(me, kind.name()));
        }
        assert!(!p.kthread);
        assert_eq!(Proc::from_proc(i32::MAX), None);
    }
}

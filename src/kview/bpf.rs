//! The BPF side: the checked-in object `bpf/kview.bpf.o` (built from
//! `bpf/kview.bpf.c` by `bpf/build.sh`), loaded with aya against the
//! running kernel's BTF.
//!
//! Its task iterator writes one fixed-size record per process; its other
//! programs (BTF tracepoints) count changes (forks, exits, execs,
//! successful setns(2) and unshare(2)) in counters. A pass is reused while
//! the `changes` counter stands where it stood when the pass began: a read
//! that starts after a change returned (a move, an unshare(2)) finds the
//! counter moved and makes a new pass, so reuse never hides a change.
//!
//! Forks, exits and execs also send the record of each process they
//! change, as it is just after the change, through a ring buffer. For
//! membership ([`Iter::members`]) the daemon keeps an [`Index`]: a pass
//! with those records applied in order, exact until the next setns(2) or
//! unshare(2) anywhere (or a record lost to a full buffer), after which
//! the next read makes a new pass. Forks and exits elsewhere on the host
//! then no longer cost a pass each.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{Array, MapData, RingBuf};
use aya::programs::tp_btf::BtfTracePointLink;
use aya::programs::{BtfTracePoint, Iter as IterProgram};
use aya::{Btf, Ebpf, EbpfLoader};
use parking_lot::Mutex;

use super::{Pass, Proc, SLOTS};
use crate::ns::creds::Credentials;
use crate::sys::ringbuf::Positions;

/// The object, aligned as aya needs it.
static OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/kview.bpf.o");

/// Size of one record: pid, valid, then the slots (all `u32`).
const RECORD: usize = 4 * (2 + SLOTS);

/// Supplementary groups a thread record carries (`THREAD_GROUPS` in the
/// object's source).
const THREAD_GROUPS: usize = 32;

/// Size of one thread record: a record, four uids, four gids, three
/// capability sets (`u64`), whether the credentials were read, the number
/// of groups, the groups, the group leader's id, the seccomp mode, whether
/// it shares the leader's descriptor table, and a word kept zero.
pub const THREAD_RECORD: usize = RECORD + 4 * (4 + 4 + 6 + 2 + THREAD_GROUPS + 4);

/// The bit of a thread record's seccomp word set once the mode was read.
const SECCOMP_KNOWN: u32 = 1 << 31;

/// One thread as `dump_thread` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thread {
    /// Its namespaces (its own pid namespace in the [`Kind::Pid`] link).
    ///
    /// [`Kind::Pid`]: crate::ns::Kind::Pid
    pub proc: Proc,
    /// Its credentials as its `/proc/TID/status` shows them to a reader in
    /// the initial user namespace; `None` if it has more groups than a
    /// record carries.
    pub creds: Option<Credentials>,
    /// The id of its thread group's leader (as [`Proc::pid`] numbers
    /// threads); 0 if that is unknown.
    pub leader: i32,
    /// Its seccomp mode (0 none, 1 strict, 2 filters), as
    /// `/proc/TID/status` shows it in `Seccomp:`; `None` if the kernel
    /// has no seccomp field to read.
    pub seccomp: Option<u32>,
    /// It uses the same descriptor table as its group leader (as kcmp(2)
    /// with `KCMP_FILES` would say); false if not, or if either has none
    /// (an exited leader).
    pub shares_leader_files: bool,
}

/// The bit of a record's `valid` word that marks a kernel thread.
const KTHREAD: u32 = 1 << 31;

/// Size of the object's `.bss`: the counters `changes`, `switches` and
/// `lost`, then the reader's pid namespace (address, level, known).
const BSS: usize = 40;

/// How many one-thread links a daemon keeps ([`Links`]).
const THREAD_LINKS: usize = 16;

/// The size of the ring buffer of records with the counting programs
/// (about 18,000 records), and without them (where nothing writes it).
const EVENTS_COUNTED: u32 = 1 << 20;
const EVENTS_UNCOUNTED: u32 = 1 << 12;

/// The size of the doorbell ring (`switched`), at least a page.
const SWITCHED: u32 = 1 << 12;

/// With [`Counting::Bursts`]: a read that comes within this time of the
/// one before it attaches the counting programs, and they are detached
/// once no read came for [`BURST_IDLE`].
pub const BURST_GAP: Duration = Duration::from_secs(1);
pub const BURST_IDLE: Duration = Duration::from_secs(5);

/// The counting programs (tracepoint, program name).
const COUNTING: [(&str, &str); 4] = [
    ("on_sys_exit", "sys_exit"),
    ("on_fork", "sched_process_fork"),
    ("on_exit", "sched_process_exit"),
    ("on_exec", "sched_process_exec"),
];

/// When the programs that count changes run (see docs/kernel-view.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counting {
    /// For the daemon's life (a daemon with `--discover`, which needs to
    /// hear of every namespace switch).
    Always,
    /// Only while reads come in bursts: attached by a read that follows
    /// another within [`BURST_GAP`], detached [`BURST_IDLE`] after the
    /// last read. A lone read makes a fresh pass and costs the host
    /// nothing between reads.
    Bursts,
    /// Never: each read makes a fresh pass.
    Never,
}

/// How long a read waits for records reserved before it began but not
/// yet written (their writers are inside a tracepoint); past this, it
/// makes a new pass instead.
const EVENTS_WAIT: Duration = Duration::from_millis(50);

/// Why the BPF path cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// No kernel BTF (`/sys/kernel/btf/vmlinux`).
    #[error("no kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    /// The kernel refused the object (lockdown, no CAP_BPF, an old kernel).
    #[error("the kernel refused the BPF object: {0}")]
    Object(#[from] aya::EbpfError),
    /// The kernel refused a program.
    #[error("the kernel refused BPF program {0}: {1}")]
    Program(&'static str, aya::programs::ProgramError),
    /// The object lacks a part this code expects.
    #[error("the BPF object has no {0}")]
    Missing(&'static str),
    /// The first pass failed.
    #[error("a first pass failed: {0}")]
    Pass(#[from] io::Error),
    /// A descriptor of a map could not be duplicated.
    #[error("cannot duplicate a BPF map descriptor: {0}")]
    Dup(io::Error),
}

/// The two counters the programs keep (see the object's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Moves on anything that can change an answer.
    pub changes: u64,
    /// Moves on each successful setns(2) or unshare(2).
    pub switches: u64,
    /// Moves on each record that did not fit into the ring buffer.
    pub lost: u64,
}

/// Who is in which namespace set: a pass, kept up to date with the
/// records of forks, exits and execs since it began. Only processes a
/// `tasks` file can list are kept (no kernel threads, all eight links
/// readable).
#[derive(Debug, Default)]
pub struct Index {
    sets: HashMap<i32, [u64; 8]>,
    /// Each set's processes, in pid order.
    members: HashMap<[u64; 8], Vec<i32>>,
}

impl Index {
    /// The index of `pass` (in pid order, as passes come).
    pub fn of(pass: &[Proc]) -> Index {
        let mut index = Index {
            sets: HashMap::with_capacity(pass.len()),
            members: HashMap::new(),
        };
        // Neighbours in pid order often share their set: each run of one
        // set is gathered apart and appended to its list at the run's end
        // (runs come in pid order, so the lists stay in pid order).
        let mut run: Option<([u64; 8], Vec<i32>)> = None;
        for p in pass {
            let Some(set) = p.set().filter(|_| !p.kthread) else {
                continue;
            };
            index.sets.insert(p.pid, set);
            match &mut run {
                Some((s, pids)) if *s == set => pids.push(p.pid),
                _ => {
                    if let Some((s, pids)) = run.replace((set, vec![p.pid])) {
                        index.members.entry(s).or_default().extend(pids);
                    }
                }
            }
        }
        if let Some((s, pids)) = run {
            index.members.entry(s).or_default().extend(pids);
        }
        if !pass.is_sorted_by_key(|p| p.pid) {
            for pids in index.members.values_mut() {
                pids.sort_unstable();
            }
        }
        index
    }

    /// Takes `p` as its process's state now: a later record of the same
    /// pid replaces an earlier one.
    pub fn apply(&mut self, p: &Proc) {
        if let Some(old) = self.sets.remove(&p.pid)
            && let Some(pids) = self.members.get_mut(&old)
        {
            if let Ok(at) = pids.binary_search(&p.pid) {
                pids.remove(at);
            }
            if pids.is_empty() {
                self.members.remove(&old);
            }
        }
        if let Some(set) = p.set().filter(|_| !p.kthread) {
            self.sets.insert(p.pid, set);
            let pids = self.members.entry(set).or_default();
            if let Err(at) = pids.binary_search(&p.pid) {
                pids.insert(at, p.pid);
            }
        }
    }

    /// The processes whose set is `set`, in pid order.
    pub fn members(&self, set: &[u64; 8]) -> Vec<i32> {
        self.members.get(set).cloned().unwrap_or_default()
    }
}

/// The ring buffer of records, with its positions.
struct Events {
    ring: RingBuf<MapData>,
    positions: Positions,
}

impl Events {
    /// Reads every record reserved before this call, passing each to
    /// `apply`; `false` if some were still being written after
    /// [`EVENTS_WAIT`].
    fn drain(&mut self, mut apply: impl FnMut(&Proc)) -> bool {
        let until = self.positions.producer();
        let deadline = Instant::now() + EVENTS_WAIT;
        loop {
            while let Some(item) = self.ring.next() {
                if item.len() == RECORD {
                    apply(&parse(&item));
                }
            }
            // Positions only grow (u64 does not wrap in practice).
            if self.positions.consumer() >= until {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

struct Loaded {
    ebpf: Ebpf,
    /// Whether the counting programs run now; a pass or index is reused
    /// only while they have run since it began.
    counting: bool,
    /// Their links while attached: for good with [`Counting::Always`], for
    /// a burst of reads with [`Counting::Bursts`]. Dropping a link detaches
    /// its program.
    links: Vec<BtfTracePointLink>,
    /// When the last read came.
    last_read: Option<Instant>,
    /// Whether a burst of reads may attach the counting programs.
    bursts: bool,
    last: Option<(u64, Pass)>,
    /// With the counting programs: the records, and the index with the
    /// counters as they stood before its pass began.
    events: Option<Events>,
    index: Option<(Counters, Index)>,
}

/// The loaded object: the iterator and the counters, kept for the
/// daemon's life (the programs and links go with it).
pub struct Iter {
    /// The program that reads one thread (`dump_thread`), if the kernel
    /// limits task iterators to one thread (6.1 and later).
    thread: Option<OwnedFd>,
    /// Links of `thread` over the threads read last (callers, mostly: a
    /// tool or shell that writes again is read through the same link).
    thread_links: Links,
    /// `None` when loaded without the counting programs.
    counters: Option<Array<MapData, [u8; BSS]>>,
    /// When the counting programs run.
    counting: Counting,
    /// With [`Counting::Always`]: the doorbell ring (one record per
    /// setns(2) or unshare(2)) and a descriptor of it to poll.
    doorbell: Option<(Mutex<RingBuf<MapData>>, OwnedFd)>,
    loaded: Mutex<Loaded>,
}

impl Iter {
    /// Loads the iterator and, unless `counting` is [`Counting::Never`],
    /// the programs that count changes: attached now for good with
    /// [`Counting::Always`] (they run at every system call's exit on the
    /// host, to catch setns(2) and unshare(2); see docs/kernel-view.md),
    /// or only during bursts of reads with [`Counting::Bursts`]. Then
    /// makes a first pass, so that a kernel that loads but cannot run the
    /// iterator is found out here. While they do not run every pass is
    /// new.
    pub fn load(counting: Counting) -> Result<Iter, LoadError> {
        let btf = Btf::from_sys_fs()?;
        let setns = libc::SYS_setns as u64;
        let unshare = libc::SYS_unshare as u64;
        let count = counting != Counting::Never;
        // Ring buffers are a whole number of pages (4 KiB to 64 KiB).
        let page = crate::sys::ringbuf::page_size()?;
        let page = u32::try_from(page).unwrap_or(EVENTS_COUNTED);
        let ring = if count {
            EVENTS_COUNTED.max(page)
        } else {
            EVENTS_UNCOUNTED.max(page)
        };
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("sys_setns", &setns, true)
            .override_global("sys_unshare", &unshare, true)
            .map_max_entries("events", ring)
            .map_max_entries("switched", SWITCHED.max(page))
            .load(OBJECT)?;
        let refused = |name| move |e| LoadError::Program(name, e);
        let iter: &mut IterProgram = program(&mut ebpf, "dump_tasks")?
            .try_into()
            .map_err(refused("dump_tasks"))?;
        iter.load("task", &btf).map_err(refused("dump_tasks"))?;
        let thread = load_thread(&mut ebpf, &btf);
        for (name, tracepoint) in COUNTING.into_iter().filter(|_| count) {
            let tp: &mut BtfTracePoint = program(&mut ebpf, name)?
                .try_into()
                .map_err(refused(name))?;
            tp.load(tracepoint, &btf).map_err(refused(name))?;
        }
        // Always: attached for the object's life (the links are kept and
        // never dropped). Bursts: found out now, not at the first burst, by
        // attaching once.
        let attach = |ebpf: &mut Ebpf| {
            attach_counting(ebpf).map_err(|(name, e)| LoadError::Program(name, e))
        };
        let links = match counting {
            Counting::Never => Vec::new(),
            Counting::Always => attach(&mut ebpf)?,
            Counting::Bursts => {
                drop(attach(&mut ebpf)?);
                Vec::new()
            }
        };
        let map_error = |e| LoadError::Object(aya::EbpfError::MapError(e));
        let (counters, events) = match count {
            true => {
                let map = ebpf.take_map(".bss").ok_or(LoadError::Missing(".bss"))?;
                let counters = Array::try_from(map).map_err(map_error)?;
                let map = ebpf
                    .take_map("events")
                    .ok_or(LoadError::Missing("events"))?;
                let ring = RingBuf::try_from(map).map_err(map_error)?;
                let positions = Positions::map(ring.as_fd())?;
                (Some(counters), Some(Events { ring, positions }))
            }
            false => (None, None),
        };
        let doorbell = match counting {
            Counting::Always => {
                let map = ebpf
                    .take_map("switched")
                    .ok_or(LoadError::Missing("switched"))?;
                let ring = RingBuf::try_from(map).map_err(map_error)?;
                let fd = ring.as_fd().try_clone_to_owned().map_err(LoadError::Dup)?;
                Some((Mutex::new(ring), fd))
            }
            _ => None,
        };
        let it = Iter {
            thread,
            thread_links: Links::new(THREAD_LINKS),
            counters,
            counting,
            doorbell,
            loaded: Mutex::new(Loaded {
                ebpf,
                counting: counting == Counting::Always,
                links,
                last_read: None,
                bursts: counting == Counting::Bursts,
                last: None,
                events,
                index: None,
            }),
        };
        it.pass()?;
        // A kernel that loads the program but cannot limit an iterator to
        // one thread (before 6.1 the link's tid is ignored, and some later
        // kernels look it up as a process) is found out here, once, by
        // reading a thread that does not lead its process.
        if let Some(prog) = &it.thread
            && let Err(why) = probe_thread(prog)
        {
            log::info!("one-thread BPF reads not used ({why}); threads are read through /proc");
            let mut it = it;
            it.thread = None;
            return Ok(it);
        }
        Ok(it)
    }

    /// Thread `tid` (numbered in the daemon's pid namespace) as the
    /// kernel has it now, its own pid namespace in the [`Kind::Pid`]
    /// link, from one run of `dump_thread` over that thread alone;
    /// `Ok(None)` if it does not exist or this kernel cannot read one
    /// thread.
    ///
    /// [`Kind::Pid`]: crate::ns::Kind::Pid
    pub fn thread(&self, tid: u32) -> io::Result<Option<Thread>> {
        match &self.thread {
            Some(prog) => read_thread(prog, &self.thread_links, tid),
            None => Ok(None),
        }
    }

    /// The one-thread program, to hand to an injector (which reads a
    /// stopped process's threads with [`read_process`]); `None` if this
    /// kernel cannot read one thread.
    pub fn thread_program(&self) -> Option<BorrowedFd<'_>> {
        self.thread.as_ref().map(|p| p.as_fd())
    }

    /// Every thread of process `pid` ([`read_process`]); `Ok(None)` also
    /// where this kernel cannot read one thread.
    pub fn process(&self, pid: u32) -> io::Result<Option<ProcessRead>> {
        match &self.thread {
            Some(prog) => read_process(prog.as_fd(), pid),
            None => Ok(None),
        }
    }

    /// The counters as they stand; `None` without the counting programs.
    pub fn counters(&self) -> io::Result<Option<Counters>> {
        let Some(counters) = &self.counters else {
            return Ok(None);
        };
        let bytes = counters.get(&0, 0).map_err(io::Error::other)?;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        Ok(Some(Counters {
            changes: word(0),
            switches: word(1),
            lost: word(2),
        }))
    }

    /// The processes whose namespaces are exactly `set`, kernel threads
    /// left out, in pid order. With the counting programs, from the
    /// [`Index`]: a new pass only after a setns(2) or unshare(2) anywhere
    /// since the index's pass began, or a lost record. A read that starts
    /// after a fork, exit or exec returned finds its record in the ring
    /// buffer (written inside that call), and one that starts after a
    /// setns(2) or unshare(2) returned finds `switches` moved.
    pub fn members(&self, set: &[u64; 8]) -> io::Result<Vec<i32>> {
        let mut guard = self.loaded.lock();
        let loaded = &mut *guard;
        self.note_read(loaded);
        let now = self.counters()?.filter(|_| loaded.counting);
        let (Some(now), Some(events)) = (now, loaded.events.as_mut()) else {
            return Ok(filter(&Self::run(&mut loaded.ebpf)?, set));
        };
        if let Some((at, index)) = &mut loaded.index
            && at.switches == now.switches
            && at.lost == now.lost
            && events.drain(|p| index.apply(p))
        {
            return Ok(index.members(set));
        }
        // A new pass. Records already in the buffer describe changes it
        // will see; those written from here on are applied over it (each
        // is its process's state after a change that the pass saw or did
        // not, and any later change of that process has a later record or
        // moves `switches`).
        loaded.index = None;
        events.drain(|_| ());
        let Some(at) = self.counters()? else {
            return Err(io::Error::other("the counting programs went away"));
        };
        let pass = Arc::new(Self::run(&mut loaded.ebpf)?);
        loaded.last = Some((at.changes, Arc::clone(&pass)));
        let mut index = Index::of(&pass);
        if events.drain(|p| index.apply(p)) {
            let members = index.members(set);
            loaded.index = Some((at, index));
            return Ok(members);
        }
        // Records still being written: the pass began after this read
        // did, so it alone answers it; the next read starts over.
        Ok(filter(&pass, set))
    }

    /// Every process, in pid order: the last pass if nothing changed
    /// since it began, else a new one. Reads that arrive while a pass runs
    /// wait for it, and share it unless something changed meanwhile.
    pub fn pass(&self) -> io::Result<Pass> {
        let mut loaded = self.loaded.lock();
        self.note_read(&mut loaded);
        let counting = loaded.counting;
        let Some(before) = self.counters()?.filter(|_| counting).map(|c| c.changes) else {
            return Ok(Arc::new(Self::run(&mut loaded.ebpf)?));
        };
        if let Some((at, pass)) = &loaded.last
            && *at == before
        {
            return Ok(Arc::clone(pass));
        }
        let pass = Arc::new(Self::run(&mut loaded.ebpf)?);
        loaded.last = Some((before, Arc::clone(&pass)));
        Ok(pass)
    }

    /// A count that moves on every successful setns(2) or unshare(2) on
    /// the host: only with [`Counting::Always`], the one mode in which the
    /// programs never stop counting.
    pub fn switches(&self) -> Option<u64> {
        if self.counting != Counting::Always {
            return None;
        }
        self.counters().ok().flatten().map(|c| c.switches)
    }

    /// With [`Counting::Always`], a descriptor that polls readable once a
    /// setns(2) or unshare(2) has succeeded since the last
    /// [`Iter::clear_doorbell`].
    pub fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        self.doorbell.as_ref().map(|(_, fd)| fd.as_fd())
    }

    /// Empties the doorbell ring, so that its descriptor polls readable
    /// again only after the next switch.
    pub fn clear_doorbell(&self) {
        if let Some((ring, _)) = &self.doorbell {
            let mut ring = ring.lock();
            while ring.next().is_some() {}
        }
    }

    /// With [`Counting::Bursts`], notes a read: one that follows the last
    /// within [`BURST_GAP`] attaches the counting programs, if they are
    /// not attached already. Passes and indexes from before they ran are
    /// dropped: nothing counted the changes since.
    fn note_read(&self, loaded: &mut Loaded) {
        let now = Instant::now();
        let burst = loaded
            .last_read
            .replace(now)
            .is_some_and(|last| now.duration_since(last) < BURST_GAP);
        if !loaded.bursts || loaded.counting || !burst {
            return;
        }
        match attach_counting(&mut loaded.ebpf) {
            Ok(links) => {
                log::debug!("membership: a burst of reads; changes are counted until it ends");
                loaded.links = links;
                loaded.counting = true;
                loaded.last = None;
                loaded.index = None;
            }
            Err((name, e)) => {
                // Said once: later bursts do not try again.
                loaded.bursts = false;
                log::warn!(
                    "membership: cannot attach BPF program {name} for a burst of reads ({e}); \
                     from now on each read makes a new pass"
                );
            }
        }
    }

    /// With [`Counting::Bursts`], detaches the counting programs once no
    /// read came for [`BURST_IDLE`]; returns how long to wait before
    /// asking again.
    pub fn end_idle_burst(&self) -> Duration {
        let mut loaded = self.loaded.lock();
        let idle = loaded.last_read.map_or(BURST_IDLE, |t| t.elapsed());
        if !loaded.counting || self.counting != Counting::Bursts {
            return BURST_IDLE;
        }
        if idle < BURST_IDLE {
            return BURST_IDLE - idle;
        }
        loaded.counting = false;
        loaded.last = None;
        loaded.index = None;
        let links = std::mem::take(&mut loaded.links);
        drop(loaded);
        // Detached outside the lock: unregistering a tracepoint waits for
        // its callers to leave.
        drop(links);
        log::debug!("membership: the burst of reads ended; changes are no longer counted");
        BURST_IDLE
    }

    /// When the counting programs run, as loaded.
    pub fn counting(&self) -> Counting {
        self.counting
    }

    /// From now on, bursts of reads no longer attach the counting
    /// programs (nothing would detach them).
    pub fn never_count(&self) {
        self.loaded.lock().bursts = false;
    }

    /// Whether the counting programs run now.
    pub fn counting_now(&self) -> bool {
        self.loaded.lock().counting
    }

    /// Runs the iterator once, never reusing anything (for measuring).
    pub fn fresh_pass(&self) -> io::Result<Vec<Proc>> {
        Self::run(&mut self.loaded.lock().ebpf)
    }

    fn run(ebpf: &mut Ebpf) -> io::Result<Vec<Proc>> {
        let iter: &mut IterProgram = ebpf
            .program_mut("dump_tasks")
            .ok_or_else(|| io::Error::other("no dump_tasks program"))?
            .try_into()
            .map_err(io::Error::other)?;
        let link = iter.attach().map_err(io::Error::other)?;
        let link = iter.take_link(link).map_err(io::Error::other)?;
        let mut file = link.into_file().map_err(io::Error::other)?;
        let mut bytes = Vec::with_capacity(1 << 16);
        file.read_to_end(&mut bytes)?;
        let mut procs: Vec<Proc> = bytes.chunks_exact(RECORD).map(parse).collect();
        // The iterator walks pids in order; sort only if it did not.
        if !procs.is_sorted_by_key(|p| p.pid) {
            procs.sort_unstable_by_key(|p| p.pid);
        }
        Ok(procs)
    }
}

/// Attaches the counting programs, each with a link of its own; on a
/// failure, those attached already are detached again.
fn attach_counting(
    ebpf: &mut Ebpf,
) -> Result<Vec<BtfTracePointLink>, (&'static str, aya::programs::ProgramError)> {
    let mut links = Vec::with_capacity(COUNTING.len());
    for (name, _) in COUNTING {
        let missing = || (name, aya::programs::ProgramError::NotLoaded);
        let tp: &mut BtfTracePoint = ebpf
            .program_mut(name)
            .ok_or_else(missing)?
            .try_into()
            .map_err(|e| (name, e))?;
        let id = tp.attach().map_err(|e| (name, e))?;
        links.push(tp.take_link(id).map_err(|e| (name, e))?);
    }
    Ok(links)
}

/// Loads `dump_thread`; `None` if the kernel refuses it (it then reads
/// one thread through `/proc`).
fn load_thread(ebpf: &mut Ebpf, btf: &Btf) -> Option<OwnedFd> {
    let prog: &mut IterProgram = ebpf.program_mut("dump_thread")?.try_into().ok()?;
    let loaded = prog.load("task", btf).and_then(|()| prog.fd());
    match loaded.map(|fd| fd.as_fd().try_clone_to_owned()) {
        Ok(Ok(fd)) => Some(fd),
        Ok(Err(e)) => {
            log::info!("one-thread BPF reads not used ({e}); threads are read through /proc");
            None
        }
        Err(e) => {
            log::info!("one-thread BPF reads not used ({e}); threads are read through /proc");
            None
        }
    }
}

/// One run of the one-thread program `prog` over thread `tid`: its
/// record, if the first record read is that thread's (a kernel that
/// ignores the link's tid gives another task's first).
fn read_thread(prog: &OwnedFd, links: &Links, tid: u32) -> io::Result<Option<Thread>> {
    let link = links.link(tid, || crate::sys::bpf::thread_iter_link(prog.as_fd(), tid))?;
    let iter = crate::sys::bpf::iter_open(link.as_fd())?;
    drop(link);
    let mut record = [0u8; THREAD_RECORD];
    let n = std::fs::File::from(iter).read(&mut record)?;
    if n != THREAD_RECORD {
        return Ok(None);
    }
    let thread = parse_thread(&record);
    Ok((thread.proc.pid == tid as i32).then_some(thread))
}

/// Reads a thread of this process that does not lead it (started for
/// this, and ended at once): `Err` unless it reads as itself.
fn probe_thread(prog: &OwnedFd) -> Result<(), String> {
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let probe = std::thread::Builder::new()
        .name("kview-probe".into())
        .spawn(move || {
            let _ = tid_tx.send(nix::unistd::gettid().as_raw());
            let _ = end_rx.recv();
        })
        .map_err(|e| format!("no thread to read: {e}"))?;
    let read = match tid_rx.recv() {
        Ok(tid) => read_thread(prog, &Links::new(0), tid as u32)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                t.filter(|t| t.proc.set().is_some())
                    .map(drop)
                    .ok_or_else(|| "a thread read as another task, or not at all".to_owned())
            }),
        Err(_) => Err("the thread to read did not start".to_owned()),
    };
    drop(end_tx);
    let _ = probe.join();
    read
}

/// A record of `dump_thread`.
fn parse_thread(record: &[u8]) -> Thread {
    let proc = parse(&record[..RECORD]);
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&record[RECORD + i * 4..RECORD + i * 4 + 4]);
        u32::from_ne_bytes(w)
    };
    let dword = |i: usize| u64::from(word(i)) | u64::from(word(i + 1)) << 32;
    let (read, ngroups) = (word(14), word(15) as usize);
    let creds = (read == 1 && ngroups <= THREAD_GROUPS).then(|| Credentials {
        uid: std::array::from_fn(&word),
        gid: std::array::from_fn(|i| word(4 + i)),
        effective: dword(8),
        permitted: dword(10),
        inheritable: dword(12),
        groups: (0..ngroups).map(|i| word(16 + i)).collect(),
    });
    let seccomp = word(17 + THREAD_GROUPS);
    Thread {
        proc,
        creds,
        leader: word(16 + THREAD_GROUPS) as i32,
        seccomp: (seccomp & SECCOMP_KNOWN != 0).then_some(seccomp & !SECCOMP_KNOWN),
        shares_leader_files: word(18 + THREAD_GROUPS) == 1,
    }
}

/// What one run of the one-thread program over a whole process read
/// ([`read_process`]).
#[derive(Debug)]
pub struct ProcessRead {
    /// A record per thread, in the kernel's order.
    pub threads: Vec<Thread>,
    /// Whether the records came in one `read(2)` that left room in the
    /// kernel's buffer for another, and so from one walk of the process's
    /// threads that ended by itself: only then do they list every thread
    /// that lived through the read. A walk the kernel resumes in a later
    /// read restarts from the next thread it meant to show, and ends
    /// there if that thread has gone meanwhile, leaving out the threads
    /// after it (the later read then returns nothing at all, so one piece
    /// that filled the buffer proves nothing either).
    pub whole: bool,
}

/// The least size of the buffer a process's records are read into: more
/// than the kernel's buffer for one read of an iterator (eight pages) with
/// 4 KiB pages; with larger pages the buffer is as large as the kernel's,
/// so that one read takes all the kernel can give at once.
const PROCESS_READ: usize = 64 << 10;

/// Every thread of process `pid` (numbered in the caller's pid namespace,
/// which must be the one the daemon that loaded `prog` is in), from one
/// run of the one-thread program `prog` over that process. `Ok(None)` if
/// the process is gone, or if any record is not of one of its threads as
/// that namespace numbers them (a kernel that ignores the link's pid, or
/// a program that has not yet learnt the reader's pid namespace): the
/// caller then reads `/proc`. See [`ProcessRead::whole`] before taking
/// the records for the list of the process's threads.
pub fn read_process(prog: BorrowedFd<'_>, pid: u32) -> io::Result<Option<ProcessRead>> {
    let link = crate::sys::bpf::process_iter_link(prog, pid)?;
    read_process_through(link.as_fd(), pid)
}

/// [`read_process`] through the link `links` keeps for `prog` (which must
/// be the only program, and processes the only kind of link, `links` is
/// used with).
pub fn read_process_with(
    prog: BorrowedFd<'_>,
    links: &Links,
    pid: u32,
) -> io::Result<Option<ProcessRead>> {
    let link = links.link(pid, || crate::sys::bpf::process_iter_link(prog, pid))?;
    read_process_through(link.as_fd(), pid)
}

fn read_process_through(link: BorrowedFd<'_>, pid: u32) -> io::Result<Option<ProcessRead>> {
    let iter = crate::sys::bpf::iter_open(link)?;
    let mut file = std::fs::File::from(iter);
    let buffer = crate::sys::ringbuf::page_size()? * ITER_BUFFER_PAGES;
    // Room for all the kernel's buffer holds: a read that stopped because
    // this buffer was full would look like a walk that ended.
    let mut buf = vec![0u8; PROCESS_READ.max(buffer)];
    let (mut filled, mut reads) = (0, 0);
    // One piece that left room for another record: the walk ended by
    // itself. A piece that filled the kernel's buffer may have been cut
    // there, and a walk resumed at a thread that ended meanwhile returns
    // nothing more, though threads after it live.
    let mut whole = false;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                reads += 1;
                // The read that would return nothing more is not made.
                if reads == 1 && ended_by_itself(filled, buffer) {
                    whole = true;
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if filled % THREAD_RECORD != 0 {
        return Ok(None);
    }
    let threads: Vec<Thread> = buf[..filled]
        .chunks_exact(THREAD_RECORD)
        .map(parse_thread)
        .collect();
    let ours = |t: &Thread| t.leader == pid as i32 && t.proc.pid > 0;
    Ok((!threads.is_empty() && threads.iter().all(ours)).then_some(ProcessRead { threads, whole }))
}

/// Pages of the kernel's buffer for one read of a BPF iterator.
const ITER_BUFFER_PAGES: usize = 8;

/// Whether one read of `filled` bytes of thread records, from a kernel
/// buffer of `buffer` bytes, ended because the walk did: there was room
/// for one more record. The kernel takes a record only if the buffer is
/// not full after it (a `seq_file` that is exactly full counts as
/// overflowed), so the room must be more than a record.
fn ended_by_itself(filled: usize, buffer: usize) -> bool {
    filled + THREAD_RECORD < buffer
}

/// Iterator links of one program over one thread or one process each,
/// the most recently used first, kept so that the next read of the same
/// id needs no new link: making a link and freeing it again costs more
/// than the read itself. A link holds the id as a number, looked up anew
/// (in the pid namespace of the thread that reads) by every iterator
/// made from it, so a kept link reads exactly what a new one would, even
/// once the id names another task. One cache serves one program and one
/// kind of link only: its owner keeps them together.
#[derive(Debug)]
pub struct Links {
    kept: Mutex<Vec<(u32, Arc<OwnedFd>)>>,
    capacity: usize,
}

impl Links {
    /// A cache of at most `capacity` links.
    pub fn new(capacity: usize) -> Links {
        Links {
            kept: Mutex::new(Vec::with_capacity(capacity)),
            capacity,
        }
    }

    /// The link kept for `id`, else the one `make` makes, kept in place
    /// of the least recently used.
    fn link(
        &self,
        id: u32,
        make: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<Arc<OwnedFd>> {
        {
            let mut kept = self.kept.lock();
            if let Some(i) = kept.iter().position(|(n, _)| *n == id) {
                let entry = kept.remove(i);
                let link = Arc::clone(&entry.1);
                kept.insert(0, entry);
                return Ok(link);
            }
        }
        let link = Arc::new(make()?);
        if self.capacity > 0 {
            let mut kept = self.kept.lock();
            kept.truncate(self.capacity - 1);
            kept.insert(0, (id, Arc::clone(&link)));
        }
        Ok(link)
    }

    /// Lets every kept link go.
    pub fn clear(&self) {
        self.kept.lock().clear();
    }
}

/// The processes of `pass` whose set is `set`, kernel threads left out.
fn filter(pass: &[Proc], set: &[u64; 8]) -> Vec<i32> {
    pass.iter()
        .filter(|p| !p.kthread && p.set().as_ref() == Some(set))
        .map(|p| p.pid)
        .collect()
}

/// One record of the iterator's output.
fn parse(record: &[u8]) -> Proc {
    let word = |i: usize| {
        let mut w = [0u8; 4];
        w.copy_from_slice(&record[i * 4..i * 4 + 4]);
        u32::from_ne_bytes(w)
    };
    Proc {
        pid: word(0) as i32,
        kthread: word(1) & KTHREAD != 0,
        valid: word(1) & !KTHREAD,
        inum: std::array::from_fn(|i| u64::from(word(2 + i))),
    }
}

/// The program `name` of `ebpf`.
fn program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::programs::Program, LoadError> {
    ebpf.program_mut(name).ok_or(LoadError::Missing(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_may_have_been_cut() {
        let buffer = 8 * 4096;
        // The records one read can take: the buffer must not be full
        // after the last.
        let fit = (buffer - 1) / THREAD_RECORD;
        assert!(ended_by_itself(0, buffer));
        assert!(ended_by_itself((fit - 1) * THREAD_RECORD, buffer));
        assert!(!ended_by_itself(fit * THREAD_RECORD, buffer));
    }

    #[test]
    fn links_keep_the_most_recently_used() {
        let made = std::cell::Cell::new(0);
        let make = || {
            made.set(made.get() + 1);
            std::fs::File::open("/dev/null").map(OwnedFd::from)
        };
        let links = Links::new(2);
        let one = links.link(1, make).unwrap();
        let two = links.link(2, make).unwrap();
        assert_eq!(made.get(), 2);
        // Kept: the same link, nothing made.
        assert!(Arc::ptr_eq(&links.link(1, make).unwrap(), &one));
        assert_eq!(made.get(), 2);
        // A third id pushes out the least recently used, 2.
        links.link(3, make).unwrap();
        assert_eq!(made.get(), 3);
        assert!(Arc::ptr_eq(&links.link(1, make).unwrap(), &one));
        assert!(!Arc::ptr_eq(&links.link(2, make).unwrap(), &two));
        assert_eq!(made.get(), 4);
        // A failure to make one keeps nothing and loses nothing.
        let failed = links.link(5, || Err(io::Error::from_raw_os_error(libc::EMFILE)));
        assert!(failed.is_err());
        assert_eq!(links.kept.lock().len(), 2);
        // Cleared, or kept by no cache at all: always made anew.
        links.clear();
        links.link(1, make).unwrap();
        assert_eq!(made.get(), 5);
        let none = Links::new(0);
        none.link(1, make).unwrap();
        none.link(1, make).unwrap();
        assert_eq!(made.get(), 7);
    }

    /// A record of `pid` in `set` (all ten links readable), or, with
    /// `set` None, one whose namespaces are gone (an exiting process).
    fn record(pid: i32, set: Option<[u64; 8]>, kthread: bool) -> Proc {
        let mut inum = [0; SLOTS];
        let mut valid = (1 << super::super::PID_OWN) | (1 << 6);
        if let Some(set) = set {
            inum[..8].copy_from_slice(&set);
            valid = (1 << SLOTS) - 1;
        }
        Proc {
            pid,
            kthread,
            valid,
            inum,
        }
    }

    #[test]
    fn index_takes_each_record_as_the_latest_state() {
        let (a, b) = ([1; 8], [2; 8]);
        let mut index = Index::of(&[
            record(1, Some(a), false),
            record(2, Some(a), true),
            record(3, Some(b), false),
            record(4, None, false),
        ]);
        assert_eq!(index.members(&a), vec![1]);
        assert_eq!(index.members(&b), vec![3]);
        // A fork into a: the child is a member at once.
        index.apply(&record(7, Some(a), false));
        assert_eq!(index.members(&a), vec![1, 7]);
        // An exec that leaves the process in b (a thread that had joined
        // b took over its thread group).
        index.apply(&record(1, Some(b), false));
        assert_eq!(index.members(&a), vec![7]);
        assert_eq!(index.members(&b), vec![1, 3]);
        // An exit: out of every set; its pid reused by a new process.
        index.apply(&record(3, None, false));
        assert_eq!(index.members(&b), vec![1]);
        index.apply(&record(3, Some(a), false));
        assert_eq!(index.members(&a), vec![3, 7]);
        // Kernel threads are never members.
        index.apply(&record(7, Some(a), true));
        assert_eq!(index.members(&a), vec![3]);
        assert!(index.members(&[9; 8]).is_empty());
    }

    #[test]
    fn index_of_a_pass_keeps_each_set_in_pid_order() {
        let (a, b) = ([1; 8], [2; 8]);
        let runs = [(1, a), (2, a), (3, b), (5, a), (8, b), (9, b), (10, a)];
        let pass: Vec<Proc> = runs
            .iter()
            .map(|&(pid, set)| record(pid, Some(set), false))
            .collect();
        let index = Index::of(&pass);
        assert_eq!(index.members(&a), vec![1, 2, 5, 10]);
        assert_eq!(index.members(&b), vec![3, 8, 9]);
        // A pass out of pid order gives the same.
        let mut shuffled = pass.clone();
        shuffled.reverse();
        let index = Index::of(&shuffled);
        assert_eq!(index.members(&a), vec![1, 2, 5, 10]);
        assert_eq!(index.members(&b), vec![3, 8, 9]);
    }

    #[test]
    fn records_parse_as_written() {
        let mut bytes = Vec::new();
        for w in [42u32, KTHREAD | 0b11, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14] {
            bytes.extend_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(bytes.len(), RECORD);
        let p = parse(&bytes);
        assert_eq!(p.pid, 42);
        assert!(p.kthread);
        assert_eq!(p.valid, 0b11);
        assert_eq!(p.inum, [5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    }
}

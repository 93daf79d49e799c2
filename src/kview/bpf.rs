//! The BPF side: the checked-in object `bpf/kview.bpf.o` (built from
//! `bpf/kview.bpf.c` by `bpf/build.sh`), loaded with aya against the
//! running kernel's BTF.
//!
//! Its task iterator writes one fixed-size record per process; its other
//! programs (BTF tracepoints) count changes (forks, exits, successful
//! setns(2) and unshare(2)) in two counters. A pass is reused while the `changes`
//! counter stands where it stood when the pass began: a read that starts
//! after a change returned (a move, an unshare(2)) finds the counter moved
//! and makes a new pass, so reuse never hides a change.

use std::io::{self, Read};
use std::sync::Arc;

use aya::maps::{Array, MapData};
use aya::programs::{BtfTracePoint, Iter as IterProgram};
use aya::{Btf, Ebpf, EbpfLoader};
use parking_lot::Mutex;

use super::{Pass, Proc, SLOTS};

/// The object, aligned as aya needs it.
static OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/kview.bpf.o");

/// Size of one record: pid, valid, then the slots (all `u32`).
const RECORD: usize = 4 * (2 + SLOTS);

/// The bit of a record's `valid` word that marks a kernel thread.
const KTHREAD: u32 = 1 << 31;

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
}

/// The two counters the programs keep (see the object's source).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Moves on anything that can change an answer.
    pub changes: u64,
    /// Moves on each successful setns(2) or unshare(2).
    pub switches: u64,
}

struct Loaded {
    ebpf: Ebpf,
    last: Option<(u64, Pass)>,
}

/// The loaded object: the iterator and the counters, kept for the
/// daemon's life (the programs and links go with it).
pub struct Iter {
    /// `None` when loaded without the counting programs.
    counters: Option<Array<MapData, [u8; 16]>>,
    loaded: Mutex<Loaded>,
}

impl Iter {
    /// Loads the iterator and, with `count`, attaches the programs that
    /// count changes (they run at every system call's exit on the host,
    /// to catch setns(2) and unshare(2); see docs/kernel-view.md), then
    /// makes a first pass, so that a kernel that loads but cannot run the
    /// iterator is found out here. Without them every pass is new.
    pub fn load(count: bool) -> Result<Iter, LoadError> {
        let btf = Btf::from_sys_fs()?;
        let setns = libc::SYS_setns as u64;
        let unshare = libc::SYS_unshare as u64;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .override_global("sys_setns", &setns, true)
            .override_global("sys_unshare", &unshare, true)
            .load(OBJECT)?;
        let refused = |name| move |e| LoadError::Program(name, e);
        let iter: &mut IterProgram = program(&mut ebpf, "dump_tasks")?
            .try_into()
            .map_err(refused("dump_tasks"))?;
        iter.load("task", &btf).map_err(refused("dump_tasks"))?;
        let counting = [
            ("on_sys_exit", "sys_exit"),
            ("on_fork", "sched_process_fork"),
            ("on_exit", "sched_process_exit"),
        ];
        for (name, tracepoint) in counting.into_iter().filter(|_| count) {
            let tp: &mut BtfTracePoint = program(&mut ebpf, name)?
                .try_into()
                .map_err(refused(name))?;
            tp.load(tracepoint, &btf).map_err(refused(name))?;
            tp.attach().map_err(refused(name))?;
        }
        let counters = match count {
            true => {
                let map = ebpf.take_map(".bss").ok_or(LoadError::Missing(".bss"))?;
                Some(
                    Array::try_from(map)
                        .map_err(|e| LoadError::Object(aya::EbpfError::MapError(e)))?,
                )
            }
            false => None,
        };
        let it = Iter {
            counters,
            loaded: Mutex::new(Loaded { ebpf, last: None }),
        };
        it.pass()?;
        Ok(it)
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
        }))
    }

    /// Every process, in pid order: the last pass if nothing changed
    /// since it began, else a new one. Reads that arrive while a pass runs
    /// wait for it, and share it unless something changed meanwhile.
    pub fn pass(&self) -> io::Result<Pass> {
        let mut loaded = self.loaded.lock();
        let Some(before) = self.counters()?.map(|c| c.changes) else {
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

//! The join stub: a few instructions written into a target whose threads
//! are all stopped, so that a thread runs `unshare`, `pidfd_open`, `setns`
//! and `close` in one resume instead of one single step each.
//!
//! Rules, all enforced here or by the types:
//!
//! * The stub is written only while every thread of the process is stopped
//!   (the caller hands over every [`Tracee`] of the process) and only over
//!   a private mapping (`PROCMAP_QUERY` must say executable and not
//!   shared): the write, through `/proc/PID/mem`, makes the page a private
//!   copy, so no other process ever sees the bytes.
//! * It sits in the page of the process's syscall site, at a 256-byte slot
//!   that holds neither the site nor any stopped thread's instruction
//!   pointer (with a margin): the only thread that ever executes its bytes
//!   is one the tracer resumes at its first byte with its own registers.
//! * The original bytes are saved first and written back by
//!   [`Stub::restore`] (or on drop, whatever went wrong), then read again
//!   and compared, before any thread is let go.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::arch::{JOIN_STUB, JOIN_STUB_CALLS};
use super::{Op, Stopped, SyscallSite, TraceError, Tracee};
use crate::sys::maps;

const PAGE: u64 = 4096;
/// Slots the stub may take in its page.
const SLOT: u64 = 256;
/// Bytes kept clear of the stub around each thread's instruction pointer.
const MARGIN: u64 = 16;

/// Where the stub will go: found, nothing written yet.
#[derive(Debug)]
pub struct StubPlan {
    tgid: Pid,
    addr: u64,
    mem: File,
}

impl StubPlan {
    /// Finds a place for the stub in the page of `site`, given every
    /// thread of its process (all stopped). `None` when there is none (a
    /// shared mapping, every slot near a thread, no `PROCMAP_QUERY`, no
    /// stub on this architecture): the move then single-steps.
    pub fn find(
        threads: &[Tracee<Stopped>],
        site: SyscallSite,
    ) -> Result<Option<StubPlan>, TraceError> {
        let len = JOIN_STUB.len() as u64;
        if len == 0 || len > SLOT {
            return Ok(None);
        }
        let tgid = site.process();
        // Through a stopped thread: a leader that exited while the others
        // run on has no address space left to show.
        let Some(tid) = threads.first().map(|t| t.tid()) else {
            return Ok(None);
        };
        let proc = format!("/proc/{tgid}/task/{tid}");
        let Ok(maps) = File::open(format!("{proc}/maps")) else {
            return Ok(None);
        };
        let vma = match maps::query(maps.as_fd(), site.addr()) {
            Ok(vma) => vma,
            Err(e) => {
                log::debug!("process {tgid}: no place for the join stub: {e}");
                return Ok(None);
            }
        };
        if vma.flags & maps::EXECUTABLE == 0 || vma.flags & maps::SHARED != 0 {
            return Ok(None);
        }
        let page = site.addr() & !(PAGE - 1);
        let clear = |addr: u64| {
            let (lo, hi) = (addr.saturating_sub(MARGIN), addr + len + MARGIN);
            let busy = |pc: u64| lo <= pc && pc < hi;
            addr >= vma.start
                && addr + len <= vma.end
                && !busy(site.addr())
                && !busy(site.addr() + 2)
                && threads.iter().all(|t| !busy(t.regs().pc()))
        };
        let Some(addr) = (0..PAGE / SLOT)
            .map(|i| page + i * SLOT)
            .find(|&a| clear(a))
        else {
            return Ok(None);
        };
        let mem = match File::options()
            .read(true)
            .write(true)
            .open(format!("{proc}/mem"))
        {
            Ok(f) => f,
            Err(_) => return Ok(None),
        };
        Ok(Some(StubPlan { tgid, addr, mem }))
    }

    /// Where the stub's syscalls are seen to come from (seccomp's
    /// `instruction_pointer`): unshare, pidfd_open, setns, close.
    pub fn call_ips(&self) -> [u64; 4] {
        JOIN_STUB_CALLS.map(|off| self.addr + off)
    }

    /// Saves the bytes the stub covers and writes it. Every thread of the
    /// process must still be stopped, as when the plan was made.
    pub fn write(self) -> Result<Stub, TraceError> {
        let StubPlan { tgid, addr, mem } = self;
        let fail = |e: std::io::Error| match e.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => TraceError::Gone(tgid),
            errno => TraceError::Os {
                tid: tgid,
                op: Op::WriteMemory,
                errno: errno.map_or(Errno::EIO, Errno::from_raw),
            },
        };
        let mut saved = vec![0u8; JOIN_STUB.len()];
        mem.read_exact_at(&mut saved, addr).map_err(fail)?;
        let mut stub = Stub {
            tgid,
            addr,
            mem,
            saved,
            written: true,
        };
        if let Err(e) = stub.mem.write_all_at(&JOIN_STUB, stub.addr) {
            // Part of it may be there: put everything back.
            let _ = stub.put_back();
            return Err(fail(e));
        }
        Ok(stub)
    }
}

/// The stub, written; its original bytes go back on [`Stub::restore`] or
/// drop.
#[derive(Debug)]
pub struct Stub {
    tgid: Pid,
    addr: u64,
    mem: File,
    saved: Vec<u8>,
    written: bool,
}

impl Stub {
    /// Its first byte, where a thread is resumed to run it.
    pub fn entry(&self) -> u64 {
        self.addr
    }

    fn put_back(&mut self) -> Result<(), Errno> {
        let errno = |e: std::io::Error| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw);
        self.mem
            .write_all_at(&self.saved, self.addr)
            .map_err(errno)?;
        let mut now = vec![0u8; self.saved.len()];
        self.mem.read_exact_at(&mut now, self.addr).map_err(errno)?;
        if now != self.saved {
            return Err(Errno::EIO);
        }
        self.written = false;
        Ok(())
    }

    /// Writes the original bytes back and checks they are there.
    pub fn restore(mut self) -> Result<(), TraceError> {
        let tgid = self.tgid;
        self.put_back().map_err(|errno| match errno {
            Errno::ESRCH | Errno::ENOENT => TraceError::Gone(tgid),
            errno => TraceError::Os {
                tid: tgid,
                op: Op::WriteMemory,
                errno,
            },
        })
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        if self.written
            && let Err(e) = self.put_back()
        {
            log::error!(
                "process {}: the join stub at {:#x} could not be taken out again: {e}",
                self.tgid,
                self.addr
            );
        }
    }
}

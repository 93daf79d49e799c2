//! The daemon's process mover: decides which kinds change, finds or starts
//! the holder of the target set, and hands the move to [`crate::mover`],
//! run in one of its injector processes so that the daemon's death never
//! cuts an injection short (see [`crate::injector`]).
//!
//! Holders are cached per effective set (the eight inodes) and dropped as
//! soon as one of their namespaces loses its last binding, so a holder never
//! keeps an unbound namespace alive.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::fs::{Error, Mover, Result};
use crate::injector::Injectors;
use crate::mover::{self, ProcessHandle};
use crate::ns::{Holder, Kind, Namespace, sys};
use crate::procfs;

/// Moves processes by ptrace-injecting `setns(pidfd_of_holder, kinds)`.
#[derive(Debug)]
pub struct PtraceMover {
    own: [u64; 8],
    holders: Mutex<HashMap<[u64; 8], Arc<Holder>>>,
    injectors: Injectors,
}

impl PtraceMover {
    /// A mover for a daemon whose own namespaces are `own` (inodes in
    /// [`Kind::ALL`] order; pid and time as for children).
    pub fn new() -> Result<PtraceMover> {
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
            injectors: Injectors::new(),
        })
    }

    fn holder(&self, set: &[Arc<Namespace>; 8]) -> Result<Arc<Holder>> {
        let key: [u64; 8] = std::array::from_fn(|i| set[i].ino());
        if let Some(h) = self.holders.lock().get(&key)
            && h.is_alive()
        {
            return Ok(Arc::clone(h));
        }
        // Started outside the lock: it forks and joins namespaces.
        let holder = Arc::new(Holder::spawn(set, &self.own)?);
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
        set: &[Arc<Namespace>; 8],
        writer: Option<mover::Writer<'_>>,
    ) -> Result<()> {
        if pid == std::process::id() as i32 {
            return Err(Error::Denied("the daemon does not move itself".into()));
        }
        let target = ProcessHandle::open(pid)?;
        let mut flags = 0;
        for kind in Kind::ALL {
            let current = current_ns(pid, kind)?;
            if current != set[kind.index()].ino() {
                flags |= kind.clone_flag();
            }
        }
        if flags == 0 {
            return Ok(());
        }
        let pidns =
            File::open(format!("/proc/{pid}/ns/pid")).map_err(|_| mover::MoveError::Gone(pid))?;
        // The target must see the holder to open a pidfd of it. When the pid
        // kind does not change, the holder can sit in the target's own pid
        // namespace, which it always sees.
        let holder = if flags & libc::CLONE_NEWPID != 0 {
            self.holder(set)?
        } else {
            let active = pidns.try_clone().map_err(|source| Error::Sys {
                what: "dup the target's pid namespace",
                source,
            })?;
            let active =
                Namespace::from_fd(active.into(), Kind::Pid, "the target's pid namespace")?;
            let mut seen_set = set.clone();
            seen_set[Kind::Pid.index()] = Arc::new(active);
            self.holder(&seen_set)?
        };
        let seen = sys::pid_in_pidns(pidns.as_fd(), holder.pid()).map_err(|_| {
            Error::Invalid(format!(
                "process {pid} lives in a pid namespace that cannot see the container's \
                 namespaces (only ancestors of a pid namespace see into it)"
            ))
        })?;
        let threads = self.injectors.run(&target, seen, flags, writer)?;
        log::info!("moved process {pid} ({threads} threads)");
        Ok(())
    }
}

/// The thread group of thread `tid`.
fn tgid_of(tid: u32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()
}

/// The inode of `kind` of process `pid`, for pid and time the namespace its
/// children are born into.
fn current_ns(pid: i32, kind: Kind) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(format!("/proc/{pid}/ns/{}", kind.proc_entry())) {
        Ok(md) => Ok(md.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(mover::MoveError::Gone(pid).into())
        }
        Err(e) => Err(Error::Denied(format!(
            "cannot read the namespaces of process {pid}: {e}"
        ))),
    }
}

impl Mover for PtraceMover {
    fn move_process(
        &self,
        pid: i32,
        writer_tid: u32,
        set: &[Arc<Namespace>; 8],
        reply: &mut dyn FnMut(Result<()>),
    ) {
        if tgid_of(writer_tid) != Some(pid) {
            return reply(self.try_move(pid, set, None));
        }
        // `echo $$ > tasks`: the writer is blocked in this very write. The
        // reply goes out once its threads are asked to stop; a failure after
        // that reaches it as the write's return value.
        let result = {
            let mut ok = || reply(Ok(()));
            let writer = mover::Writer {
                tid: nix::unistd::Pid::from_raw(writer_tid as i32),
                answer: &mut ok,
            };
            self.try_move(pid, set, Some(writer))
        };
        reply(result);
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

//! The daemon's process mover: decides which kinds change, finds or starts
//! the holder of the target set, and hands the move to [`crate::mover`],
//! run in a separate injector process so that the daemon's death never cuts
//! an injection short (see [`INJECTOR_ARG`]).
//!
//! Holders are cached per effective set (the eight inodes) and dropped as
//! soon as one of their namespaces loses its last binding, so a holder never
//! keeps an unbound namespace alive.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsFd;
use std::sync::Arc;

use nix::sched::CloneFlags;
use parking_lot::Mutex;

use crate::fs::{Error, Mover, Result};
use crate::mover::{self, ProcessHandle};
use crate::ns::{Holder, Kind, Namespace, sys};
use crate::procfs;

/// Moves processes by ptrace-injecting `setns(pidfd_of_holder, kinds)`.
#[derive(Debug)]
pub struct PtraceMover {
    own: [u64; 8],
    holders: Mutex<HashMap<[u64; 8], Arc<Holder>>>,
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
        let threads = run_injector(&target, seen, flags, writer)?;
        log::info!("moved process {pid} ({threads} threads)");
        Ok(())
    }
}

/// The first argument that makes `nsproxyfs` an injector (see
/// [`injector_main`]); not meant for people.
pub const INJECTOR_ARG: &str = "--internal-move";

/// Runs one move in a separate process, `nsproxyfs --internal-move`, so that
/// nothing that happens to the daemon, SIGKILL included, can interrupt an
/// injection half way: the injector finishes its move (all or nothing),
/// reports, and exits. The target's pidfd is handed over as descriptor 3,
/// so the process moved is the one pinned here.
fn run_injector(
    target: &ProcessHandle,
    holder: i32,
    flags: libc::c_int,
    writer: Option<mover::Writer<'_>>,
) -> Result<usize> {
    use std::io::BufRead;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;

    // /proc/self/exe is the daemon's own binary, even if replaced on disk.
    let exe = "/proc/self/exe";
    let pidfd = target.pidfd().as_raw_fd();
    let writer_tid = writer.as_ref().map_or(0, |w| w.tid.as_raw());
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(INJECTOR_ARG)
        .arg(holder.to_string())
        .arg(flags.to_string())
        .arg(writer_tid.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped());
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls dup2, which is async-signal-safe; descriptor 3 becomes a copy
    // of the pidfd without close-on-exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(pidfd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| Error::Sys {
        what: "start the injector",
        source,
    })?;
    let mut lines = std::io::BufReader::new(child.stdout.take().ok_or_else(|| Error::Sys {
        what: "read the injector",
        source: std::io::Error::from_raw_os_error(libc::EIO),
    })?)
    .lines();
    let mut writer = writer;
    let outcome = loop {
        match lines.next() {
            Some(Ok(line)) if line == "seized" => {
                if let Some(w) = writer.as_mut() {
                    (w.answer)();
                }
            }
            Some(Ok(line)) => break parse_outcome(&line),
            Some(Err(source)) => {
                break Err(Error::Sys {
                    what: "read the injector",
                    source,
                });
            }
            None => {
                break Err(Error::Sys {
                    what: "the injector ended without an answer",
                    source: std::io::Error::from_raw_os_error(libc::EIO),
                });
            }
        }
    };
    let _ = child.wait();
    outcome
}

/// Reads the injector's last line: `ok THREADS` or `err ERRNO REASON`.
fn parse_outcome(line: &str) -> Result<usize> {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("ok"), Some(n), None) => n.parse().map_err(|_| bad_outcome(line)),
        (Some("err"), Some(errno), reason) => {
            let errno = errno.parse().map_err(|_| bad_outcome(line))?;
            Err(Error::Refused {
                errno,
                reason: reason.unwrap_or("").to_owned(),
            })
        }
        _ => Err(bad_outcome(line)),
    }
}

fn bad_outcome(line: &str) -> Error {
    Error::Sys {
        what: "understand the injector",
        source: std::io::Error::other(format!("unexpected line {line:?}")),
    }
}

/// The injector: moves the process whose pidfd is descriptor 3 into the
/// namespaces of `holder` (a pid in the target's pid namespace), the kinds
/// in `flags`; `writer`, if not 0, is the target's thread blocked in the
/// write that asked for the move. Prints `seized` when the daemon may
/// answer that write, then `ok THREADS` or `err ERRNO REASON`.
pub fn injector_main(args: &[String]) -> i32 {
    use std::io::Write;
    use std::os::fd::FromRawFd;

    let parse = |i: usize| args.get(i).and_then(|a| a.parse::<i32>().ok());
    let (Some(holder), Some(flags), Some(writer_tid)) = (parse(0), parse(1), parse(2)) else {
        eprintln!("nsproxyfs: {INJECTOR_ARG} is for the daemon's own use");
        return 2;
    };
    // SAFETY: the daemon starts the injector with the target's pidfd as
    // descriptor 3 and nothing else owns it here.
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(3) };
    let say = |line: &str| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    let result = ProcessHandle::from_pidfd(pidfd).and_then(|target| {
        let mut seized = || say("seized");
        let writer = (writer_tid != 0).then(|| mover::Writer {
            tid: nix::unistd::Pid::from_raw(writer_tid),
            answer: &mut seized,
        });
        mover::move_process_answering(&target, holder, CloneFlags::from_bits_retain(flags), writer)
    });
    match result {
        Ok(report) => say(&format!("ok {}", report.threads)),
        Err(e) => say(&format!("err {} {e}", e.errno() as i32)),
    }
    0
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
        self.holders.lock().values().map(|h| h.pid()).collect()
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

//! Who sent a request, and what they may do.
//!
//! A request carries the caller's fsuid, fsgid and thread id (0 when the
//! caller's pid namespace cannot see the daemon's), as the FUSE header has
//! them. Capabilities are not sent: they are asked of the kernel (capget(2)
//! on the caller's thread, or its credentials once they are read), and the
//! user namespace they hold in is the thread's own. The thread's namespaces
//! and credentials are read together in one BPF call when the kernel offers
//! it ([`crate::kview`]), else from `/proc/TID/ns` and `/proc/TID/status`.
//! Root by uid alone grants nothing.
//!
//! What is read of the caller's thread (its namespaces, its credentials)
//! is read once per request, on first need, and kept with the [`Caller`]
//! for the request's other checks: a caller blocked in a request cannot
//! change its own credentials meanwhile, and the request is judged by one
//! reading of its namespaces.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::OnceLock;

use crate::kview::bpf::ProcessRead;
use crate::ns::Opener;
use crate::ns::creds::{self, Credentials, CredsError};
use crate::service::{Denied, Error, Result};

/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;

/// A caller's pid namespace, open ([`Caller::pid_ns`]).
#[derive(Debug)]
pub enum PidNs {
    /// The daemon's own, which the caller is in.
    Daemons(BorrowedFd<'static>),
    /// Another, the caller's.
    Callers(OwnedFd),
}

impl PidNs {
    /// Whether it is the daemon's own pid namespace.
    pub fn is_daemons(&self, daemon_pid_ns: u64) -> bool {
        match self {
            PidNs::Daemons(_) => true,
            PidNs::Callers(fd) => {
                nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_ino == daemon_pid_ns)
            }
        }
    }
}

impl AsFd for PidNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            PidNs::Daemons(fd) => *fd,
            PidNs::Callers(fd) => fd.as_fd(),
        }
    }
}

/// The daemon's own pid namespace (its inode, and a descriptor kept open
/// for the daemon's life: a process never changes the pid namespace it is
/// in); `None` if it cannot be opened now (tried again next time).
fn daemon_pid_ns() -> Option<&'static (u64, OwnedFd)> {
    static OWN: OnceLock<(u64, OwnedFd)> = OnceLock::new();
    if let Some(own) = OWN.get() {
        return Some(own);
    }
    let f = File::open("/proc/self/ns/pid").ok()?;
    let ino = std::os::unix::fs::MetadataExt::ino(&f.metadata().ok()?);
    Some(OWN.get_or_init(|| (ino, OwnedFd::from(f))))
}

/// The sender of one request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Thread id in the daemon's pid namespace, 0 if not visible there.
    pub tid: u32,
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid.
    pub gid: u32,
    /// What was read of the caller's thread for this request.
    read: Read,
}

/// What was read of a caller's thread, each at most once per request.
#[derive(Debug, Clone, Default)]
struct Read {
    /// The thread as one BPF call read it (namespaces and credentials
    /// together), when the kernel offers that read.
    kernel: OnceLock<Option<crate::kview::bpf::Thread>>,
    /// Its namespaces, inodes in [`crate::ns::Kind::ALL`] order (`None`:
    /// unreadable).
    set: OnceLock<Option<[u64; 8]>>,
    /// Its credentials, once read successfully.
    creds: OnceLock<Credentials>,
}

impl Caller {
    /// The sender of a request: thread `tid` (daemon pid namespace, 0 if not
    /// visible there), filesystem uid and gid `uid` and `gid`. Nothing of
    /// its thread is read yet.
    pub fn new(tid: u32, uid: u32, gid: u32) -> Caller {
        Caller {
            tid,
            uid,
            gid,
            read: Read::default(),
        }
    }

    /// The caller's namespaces, inodes in [`crate::ns::Kind::ALL`] order;
    /// `None` for a caller not visible in the daemon's pid namespace or
    /// whose namespaces cannot be read.
    pub fn ns_set(&self) -> Option<[u64; 8]> {
        if self.tid == 0 {
            return None;
        }
        *self.read.set.get_or_init(|| {
            self.kernel()
                .and_then(|t| t.proc.set())
                .or_else(|| crate::procfs::ns_set(self.tid))
        })
    }

    /// The caller's thread as one BPF call reads it, once per request.
    fn kernel(&self) -> Option<&crate::kview::bpf::Thread> {
        self.read
            .kernel
            .get_or_init(|| crate::kview::membership().thread(self.tid))
            .as_ref()
    }

    fn visible(&self) -> Result<u32> {
        if self.tid == 0 {
            return Err(Error::Denied(Denied::Unidentified));
        }
        Ok(self.tid)
    }

    /// Refuses unless the caller holds CAP_SYS_ADMIN in the daemon's user
    /// namespace, which every change of the tree needs.
    pub fn require_admin(&self, daemon_user_ns: u64) -> Result<()> {
        let caps = self.caps()?;
        if caps & (1 << CAP_SYS_ADMIN) == 0 {
            return Err(Error::Denied(Denied::NotAdmin {
                tid: self.tid,
                uid: self.uid,
            }));
        }
        self.in_user_ns(daemon_user_ns, "CAP_SYS_ADMIN")
    }

    /// The caller's effective capabilities: from its credentials if they
    /// were read already or the BPF read gives them, else asked of the
    /// kernel.
    fn caps(&self) -> Result<u64> {
        let tid = self.visible()?;
        if let Some(creds) = self.read.creds.get() {
            return Ok(creds.effective);
        }
        // The same reading that gives the namespaces the other checks need.
        if let Some(creds) = self.kernel().and_then(|t| t.creds.as_ref()) {
            return Ok(creds.effective);
        }
        crate::procfs::effective_caps(tid as i32).ok_or(Error::Denied(Denied::CallerGone(tid)))
    }

    fn in_user_ns(&self, daemon_user_ns: u64, cap: &'static str) -> Result<()> {
        let user_ns = self.ns_set().map(|set| set[crate::ns::Kind::User.index()]);
        if user_ns != Some(daemon_user_ns) {
            return Err(Error::Denied(Denied::CapBelow { tid: self.tid, cap }));
        }
        Ok(())
    }

    /// The caller's credentials, read from its thread while it waits for
    /// this request.
    pub fn credentials(&self) -> Result<Credentials> {
        let tid = self.visible()?;
        if let Some(creds) = self.read.creds.get() {
            return Ok(creds.clone());
        }
        if let Some(creds) = self.kernel().and_then(|t| t.creds.clone()) {
            return Ok(self.read.creds.get_or_init(|| creds).clone());
        }
        let creds = Credentials::of_thread(tid).map_err(|e| match e {
            CredsError::Gone(_) => Error::Denied(Denied::CallerGone(tid)),
            CredsError::Sys(source) => Error::Sys {
                what: "read the caller's credentials",
                source,
            },
            source @ CredsError::Unreadable(_) => Error::Creds {
                what: "read the caller's credentials",
                source,
            },
        })?;
        Ok(self.read.creds.get_or_init(|| creds).clone())
    }

    /// Refuses unless the kernel would let the caller attach to every
    /// thread of process `pid` with `PTRACE_SEIZE` itself (real ids,
    /// dumpable, the capability-superset rule, `CAP_SYS_PTRACE`, LSMs): the
    /// question is put to the kernel by a thread holding the caller's
    /// credentials (see [`crate::ns::creds`]). A process is always free to
    /// move itself, as the kernel lets every task access its own thread
    /// group. `pidfd` pins the process; it is checked to be alive after the
    /// question, so the answer was about this process. `read`, a kernel
    /// read of the process made after it was pinned, lists its threads
    /// when it came whole; else `/proc` does.
    pub fn require_ptrace(
        &self,
        creds: &Credentials,
        pid: i32,
        pidfd: BorrowedFd<'_>,
        read: Option<&ProcessRead>,
    ) -> Result<()> {
        let tid = self.visible()?;
        let gone = || Error::from(crate::ns::NsError::NoSuchProcess(pid));
        if self.thread_of(pid).is_some() {
            return Ok(());
        }
        // A kernel read that came in one piece lists every thread that
        // lived through it; else `/proc` lists them.
        let threads = match read.filter(|r| r.whole) {
            Some(r) => r.threads.iter().map(|t| t.proc.pid).collect(),
            None => crate::procfs::tasks(pid).map_err(|_| gone())?,
        };
        let answer = creds::may_attach_all(creds, &threads).map_err(|source| Error::Creds {
            what: "check ptrace rights as the caller",
            source,
        })?;
        if !crate::sys::pidfd::alive(pidfd) {
            return Err(gone());
        }
        match answer {
            // Alive, yet no thread has memory to check: a kernel thread or
            // a zombie, neither of which can be traced.
            Ok(0) if crate::procfs::is_kernel_thread(pid) => {
                Err(Error::Denied(Denied::KernelThread(pid)))
            }
            Ok(0) => Err(gone()),
            Ok(_) => {
                log::debug!(
                    "the kernel lets caller {tid} (uid {}) trace process {pid}",
                    creds.uid[0]
                );
                Ok(())
            }
            Err((thread, errno)) => Err(Error::Denied(Denied::Ptrace {
                tid,
                uid: creds.uid[0],
                gid: creds.gid[0],
                pid,
                thread,
                errno,
            })),
        }
    }

    /// The caller's thread id if it is a thread of process `pid` (daemon
    /// pid namespace), as when a process writes its own pid: from its
    /// group leader in the thread's kernel read, else from `/proc`. A
    /// caller blocked in its request cannot leave its process meanwhile.
    pub fn thread_of(&self, pid: i32) -> Option<u32> {
        let tid = self.visible().ok()?;
        let belongs = match self.kernel().map(|t| t.leader) {
            Some(leader) if leader > 0 => leader == pid,
            _ => crate::procfs::is_thread_of(tid, pid),
        };
        belongs.then_some(tid)
    }

    /// The caller's pid namespace, where the pids it writes and reads live:
    /// the daemon's own, kept open, when the thread's kernel read says the
    /// caller is in it; else the caller's, opened through `/proc`.
    pub fn pid_ns(&self) -> Result<PidNs> {
        let tid = self.visible()?;
        let theirs = self
            .kernel()
            .and_then(|t| t.proc.link(crate::ns::Kind::Pid));
        if let (Some(theirs), Some((ours, fd))) = (theirs, daemon_pid_ns())
            && theirs == *ours
        {
            return Ok(PidNs::Daemons(fd.as_fd()));
        }
        File::open(format!("/proc/{tid}/ns/pid"))
            .map(|f| PidNs::Callers(OwnedFd::from(f)))
            .map_err(|source| Error::Sys {
                what: "open the caller's pid namespace",
                source,
            })
    }

    /// The caller as an opener of paths; `own_dev` is the device of this
    /// filesystem's mount, which no path may enter.
    pub fn opener(&self, own_dev: (u32, u32)) -> Result<Opener> {
        Ok(Opener {
            tid: self.visible()?,
            creds: self.credentials()?,
            own_dev,
        })
    }
}

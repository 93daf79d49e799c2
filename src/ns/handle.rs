//! Namespace handles: an open nsfs file, what keeps it alive, and its pin.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::Kind;
use super::sys::{self, PIDFD_THREAD};

/// Why a namespace could not be obtained.
#[derive(Debug, Error)]
pub enum NsError {
    /// No process with that pid in the writer's pid namespace.
    #[error("no process {0} in the writer's pid namespace")]
    NoSuchProcess(i32),
    /// The file is a namespace of another kind.
    #[error("{path} is a {found} namespace, not {wanted}")]
    WrongKind {
        /// What was opened.
        path: String,
        /// The kind it is.
        found: Kind,
        /// The kind wanted.
        wanted: Kind,
    },
    /// The file is not a namespace file at all.
    #[error("{0} is not a namespace file")]
    NotANamespace(String),
    /// Opening the path failed.
    #[error("cannot open {path}: {source}")]
    Open {
        /// The path, as written.
        path: String,
        /// What open(2) said.
        source: io::Error,
    },
    /// The kernel refused to make a fresh namespace.
    #[error("cannot create a fresh {kind} namespace: {source}")]
    Fresh {
        /// The kind asked for.
        kind: Kind,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

impl NsError {
    /// The errno a caller sees for this error.
    pub fn errno(&self) -> i32 {
        match self {
            NsError::NoSuchProcess(_) => libc::ESRCH,
            NsError::WrongKind { .. } | NsError::NotANamespace(_) => libc::EINVAL,
            NsError::Open { source, .. }
            | NsError::Fresh { source, .. }
            | NsError::Sys { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        }
    }
}

fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> NsError {
    move |source| NsError::Sys { what, source }
}

/// The init process of a fresh pid namespace, which the daemon keeps alive
/// while the namespace is bound. Dropping this closes the control pipe: the
/// init then leaves as soon as no other process is left in its namespace.
#[derive(Debug)]
pub struct Keeper {
    pid: i32,
    _control: OwnedFd,
}

impl Keeper {
    /// The keeper's pid in the daemon's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// A bind mount of a namespace file in the state directory, which keeps the
/// namespace alive and lets standard tools (`nsenter --net=PIN`) open it.
#[derive(Debug)]
pub struct Pin {
    path: PathBuf,
}

impl Pin {
    /// Pins `fd` at `dir/KIND-INO`, replacing a stale pin of the same name.
    pub fn create(dir: &Path, kind: Kind, ino: u64, fd: BorrowedFd<'_>) -> io::Result<Pin> {
        let path = dir.join(format!("{}-{}", kind.name(), ino));
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        while sys::detach(&c).is_ok() {}
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if let Err(e) = sys::bind_mount_fd(fd, &c) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(Pin { path })
    }

    /// Where the pin is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.path.as_os_str().as_bytes()) {
            match sys::detach(&c) {
                // Already gone: the daemon clears every pin when it ends.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) => log::warn!("cannot unmount pin {}: {e}", self.path.display()),
                Ok(()) => {}
            }
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// An open namespace: what a container binds.
#[derive(Debug)]
pub struct Namespace {
    kind: Kind,
    ino: u64,
    fd: OwnedFd,
    keeper: Option<Keeper>,
    pin: Option<Pin>,
}

impl Namespace {
    /// Wraps the nsfs file `fd`, which must be a namespace of `kind`;
    /// `what` names it in errors.
    pub fn from_fd(fd: OwnedFd, kind: Kind, what: &str) -> Result<Namespace, NsError> {
        let found = match sys::ns_type(fd.as_fd()) {
            Ok(t) => Kind::from_clone_flag(t).ok_or_else(|| NsError::NotANamespace(what.into()))?,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                return Err(NsError::NotANamespace(what.into()));
            }
            Err(e) => {
                return Err(NsError::Sys {
                    what: "NS_GET_NSTYPE",
                    source: e,
                });
            }
        };
        if found != kind {
            return Err(NsError::WrongKind {
                path: what.into(),
                found,
                wanted: kind,
            });
        }
        let ino = File::from(fd.try_clone().map_err(sys_err("dup"))?)
            .metadata()
            .map_err(sys_err("fstat"))?
            .ino();
        Ok(Namespace {
            kind,
            ino,
            fd,
            keeper: None,
            pin: None,
        })
    }

    /// The namespace of `kind` this daemon is in (for pid and time: the one
    /// its children are born into).
    pub fn own(kind: Kind) -> Result<Namespace, NsError> {
        let path = format!("/proc/self/ns/{}", kind.proc_entry());
        let file = File::open(&path).map_err(|source| NsError::Open {
            path: path.clone(),
            source,
        })?;
        Namespace::from_fd(file.into(), kind, &path)
    }

    /// The namespace of `kind` of the task `pid` of the daemon's pid
    /// namespace, pinned through a pidfd so a reused pid is never read.
    pub fn of_task(pid: i32, kind: Kind) -> Result<Namespace, NsError> {
        let pidfd = sys::pidfd_open(pid, PIDFD_THREAD).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH | libc::EINVAL) => NsError::NoSuchProcess(pid),
            _ => NsError::Sys {
                what: "pidfd_open",
                source: e,
            },
        })?;
        let fd = sys::pidfd_namespace(pidfd.as_fd(), kind).map_err(|e| match e.raw_os_error() {
            Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
            _ => NsError::Sys {
                what: "PIDFD_GET_NAMESPACE",
                source: e,
            },
        })?;
        Namespace::from_fd(fd, kind, &format!("process {pid}"))
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The nsfs inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The open nsfs file.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `net:[4026532240]`, as `readlink /proc/PID/ns/net` prints it.
    pub fn describe(&self) -> String {
        format!("{}:[{}]", self.kind.name(), self.ino)
    }

    /// The init process kept for a fresh pid namespace, if this is one.
    pub fn keeper(&self) -> Option<&Keeper> {
        self.keeper.as_ref()
    }

    /// Pins the namespace in `dir` (see [`Pin`]). Mount namespaces newer than
    /// the daemon's own cannot be bind-mounted there (the kernel refuses
    /// mount loops with EINVAL); they stay unpinned and are held by the
    /// daemon's open descriptor alone.
    pub fn pin(&mut self, dir: &Path) {
        match Pin::create(dir, self.kind, self.ino, self.fd.as_fd()) {
            Ok(pin) => self.pin = Some(pin),
            Err(e) => log::info!("{} not pinned in {}: {e}", self.describe(), dir.display()),
        }
    }

    /// The pin path, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin.as_ref().map(Pin::path)
    }

    /// The descriptor number, for `/proc/PID/fd/N` paths.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Resolves `pid`, a pid in the pid namespace `writer_pidns`, to the
/// namespace of `kind` of that task.
pub fn of_pid_in(writer_pidns: BorrowedFd<'_>, pid: i32, kind: Kind) -> Result<Namespace, NsError> {
    let local = sys::pid_from_pidns(writer_pidns, pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
        _ => NsError::Sys {
            what: "NS_GET_PID_FROM_PIDNS",
            source: e,
        },
    })?;
    Namespace::of_task(local, kind).map_err(|e| match e {
        NsError::NoSuchProcess(_) => NsError::NoSuchProcess(pid),
        other => other,
    })
}

/// Who is asking to open a path, and where they stand.
#[derive(Debug, Clone, Copy)]
pub struct Opener {
    /// The caller's thread id in the daemon's pid namespace.
    pub tid: u32,
    /// The caller's filesystem uid.
    pub uid: u32,
    /// The caller's filesystem gid.
    pub gid: u32,
}

/// Opens `path` as the caller would: in its mount namespace, from its root
/// and working directory, with its filesystem ids; then checks that it is a
/// namespace file of `kind`.
pub fn of_path(opener: Opener, path: &str, kind: Kind) -> Result<Namespace, NsError> {
    let proc = format!("/proc/{}", opener.tid);
    let open_proc = |entry: &str| {
        File::open(format!("{proc}/{entry}"))
            .map(OwnedFd::from)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ESRCH) => NsError::NoSuchProcess(opener.tid as i32),
                _ => NsError::Sys {
                    what: "open the writer's /proc entries",
                    source: e,
                },
            })
    };
    let mnt = open_proc("ns/mnt")?;
    let root = open_proc("root")?;
    let cwd = open_proc("cwd")?;
    let cpath = CString::new(path).map_err(|_| NsError::NotANamespace(path.into()))?;
    let (report_r, report_w) = sys::pipe().map_err(sys_err("pipe"))?;
    let (mnt, root, cwd, w) = (
        mnt.as_raw_fd(),
        root.as_raw_fd(),
        cwd.as_raw_fd(),
        report_w.as_raw_fd(),
    );
    let child = sys::spawn_child(true, |c| {
        let result = c
            .setns(mnt, libc::CLONE_NEWNS)
            .and_then(|()| c.chdir_fd(root, true))
            .and_then(|()| c.chdir_fd(cwd, false))
            .and_then(|()| {
                c.set_fs_ids(opener.uid, opener.gid);
                c.open(&cpath)
            });
        c.report(w, result.unwrap_or_else(|errno| -errno));
        0
    })
    .map_err(sys_err("clone"))?;
    // The child shares the descriptor table: the write end must stay open
    // until it has exited, then close so that a silent death reads as EOF.
    let _ = sys::reap(child);
    drop(report_w);
    let answer = sys::read_i32(report_r.as_fd());
    let fd = match answer.map_err(sys_err("read"))? {
        Some(fd) if fd >= 0 => {
            // SAFETY: the child opened `fd` in the descriptor table it shares
            // with this process (CLONE_FILES) and then exited: nothing else
            // owns it.
            unsafe { OwnedFd::from_raw_fd(fd) }
        }
        Some(errno) => {
            return Err(NsError::Open {
                path: path.into(),
                source: io::Error::from_raw_os_error(-errno),
            });
        }
        None => {
            return Err(NsError::Sys {
                what: "open in the writer's mount namespace",
                source: io::Error::from_raw_os_error(libc::EIO),
            });
        }
    };
    Namespace::from_fd(fd, kind, path)
}

/// Makes a fresh, empty namespace of `kind`. What "fresh" means per kind is
/// documented in `docs/tree.md`. In a fresh mount namespace, the mount at
/// `hide` (the daemon's own mount point) is detached, so that the copy does
/// not keep this filesystem alive after it is unmounted.
pub fn fresh(kind: Kind, hide: &CStr) -> Result<Namespace, NsError> {
    if kind == Kind::Pid {
        return fresh_pid();
    }
    let fail = |source| NsError::Fresh { kind, source };
    let (ready_r, ready_w) = sys::pipe().map_err(fail)?;
    let (hold_r, hold_w) = sys::pipe().map_err(fail)?;
    let (w, r) = (ready_w.as_raw_fd(), hold_r.as_raw_fd());
    let (unused_r, unused_w) = (ready_r.as_raw_fd(), hold_w.as_raw_fd());
    let flag = kind.clone_flag();
    let child = sys::spawn_child(false, |c| {
        // The child's copy of the hold pipe's write end would keep it from
        // ever seeing EOF.
        c.close(unused_r);
        c.close(unused_w);
        let mut result = c.unshare(flag);
        if kind == Kind::Mnt {
            result = result.and_then(|()| c.make_root_private());
            if result.is_ok() {
                c.detach(hide);
            }
        }
        c.report(w, result.err().unwrap_or(0));
        c.wait_eof(r);
        0
    })
    .map_err(fail)?;
    drop(ready_w);
    drop(hold_r);
    let outcome = (|| {
        match sys::read_i32(ready_r.as_fd()).map_err(fail)? {
            Some(0) => {}
            Some(errno) => return Err(fail(io::Error::from_raw_os_error(errno))),
            None => return Err(fail(io::Error::from_raw_os_error(libc::EIO))),
        }
        if kind == Kind::User {
            write_identity_maps(child).map_err(fail)?;
        }
        let path = format!("/proc/{child}/ns/{}", kind.proc_entry());
        let file = File::open(&path).map_err(fail)?;
        Namespace::from_fd(file.into(), kind, &path)
    })();
    drop(hold_w);
    let _ = sys::reap(child);
    outcome
}

fn write_identity_maps(pid: i32) -> io::Result<()> {
    for map in ["uid_map", "gid_map"] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/{map}"))?;
        f.write_all(b"0 0 4294967295\n")?;
    }
    Ok(())
}

fn fresh_pid() -> Result<Namespace, NsError> {
    let fail = |source| NsError::Fresh {
        kind: Kind::Pid,
        source,
    };
    let init = sys::spawn_resident(
        |c| c.unshare(libc::CLONE_NEWPID),
        sys::Child::keep_pid_namespace,
    )
    .map_err(fail)?
    .map_err(|errno| fail(io::Error::from_raw_os_error(errno)))?;
    let path = format!("/proc/{}/ns/pid", init.pid);
    let file = File::open(&path).map_err(fail)?;
    let mut ns = Namespace::from_fd(file.into(), Kind::Pid, &path)?;
    ns.keeper = Some(Keeper {
        pid: init.pid,
        _control: init.control,
    });
    Ok(ns)
}

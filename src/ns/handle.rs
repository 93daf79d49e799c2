//! Namespace handles: an open nsfs file with its inode, the keeper and pin
//! that keep it alive, and the ways to get one (by pid, by path, fresh).

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::Kind;
use super::creds::{self, Credentials};
use super::error::sys_err;
use super::resolve::{self, Opener, Resolved};
use super::{Keeper, NsError, Origin, Pin, PinDir, ReopenError};
use crate::sys;

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
    pub fn from_fd(fd: OwnedFd, kind: Kind, what: Origin) -> Result<Namespace, NsError> {
        let found = match sys::ns::ns_type(fd.as_fd()) {
            Ok(t) => match Kind::from_clone_flag(t) {
                Some(found) => found,
                None => return Err(NsError::NotANamespace(what)),
            },
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                return Err(NsError::NotANamespace(what));
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
                origin: what,
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
            path: path.clone().into(),
            source,
        })?;
        Namespace::from_fd(file.into(), kind, Origin::Path(path.into()))
    }

    /// The namespace of `kind` of the task `pid` of the daemon's pid
    /// namespace, pinned through a pidfd so a reused pid is never read.
    pub fn of_task(pid: i32, kind: Kind) -> Result<Namespace, NsError> {
        let pidfd =
            sys::pidfd::open(pid, sys::pidfd::THREAD).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH | libc::EINVAL) => NsError::NoSuchProcess(pid),
                _ => NsError::Sys {
                    what: "pidfd_open",
                    source: e,
                },
            })?;
        let fd =
            sys::pidfd::namespace(pidfd.as_fd(), kind).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
                _ => NsError::Sys {
                    what: "PIDFD_GET_NAMESPACE",
                    source: e,
                },
            })?;
        Namespace::from_fd(fd, kind, Origin::Process(pid))
    }

    /// The namespace of `kind` of the task behind `pidfd` (`pid`, as the
    /// writer wrote it, names it in errors), taken as a caller holding
    /// `creds` would open `/proc/PID/ns/KIND`: the kernel applies its
    /// `PTRACE_MODE_READ_FSCREDS` check to those credentials.
    pub fn of_pidfd_as(
        creds: &Credentials,
        pidfd: BorrowedFd<'_>,
        pid: i32,
        kind: Kind,
    ) -> Result<Namespace, NsError> {
        let fd = creds::as_caller(creds, || sys::pidfd::namespace(pidfd, kind))
            .map_err(|source| NsError::Creds {
                what: "act as the caller",
                source,
            })?
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
                Some(libc::EACCES | libc::EPERM) => NsError::Denied {
                    uid: creds.uid[3],
                    kind,
                    pid,
                },
                _ => NsError::Sys {
                    what: "PIDFD_GET_NAMESPACE",
                    source: e,
                },
            })?;
        Namespace::from_fd(fd, kind, Origin::Process(pid))
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

    /// The process kept in this namespace, if any: the init of a fresh pid
    /// namespace, or the holder of a bound mount namespace.
    pub fn keeper(&self) -> Option<&Keeper> {
        self.keeper.as_ref()
    }

    /// Starts a keeper sitting in this mount namespace (`nsproxyfs-mnt`),
    /// so that it lives on, reachable as `/proc/PID/ns/mnt`, even after
    /// the daemon ends. Nothing to do if it has one.
    pub fn hold_mount(&mut self) -> Result<(), NsError> {
        if self.kind != Kind::Mnt || self.keeper.is_some() {
            return Ok(());
        }
        let fail = |source| NsError::Sys {
            what: "start a holder for the mount namespace",
            source,
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: the child only joins the namespace through `Child`, and
        // the grandchild holds it with `Child::hold_mount`.
        let resident = unsafe {
            sys::process::spawn_resident(
                crate::procfs::argv_region(),
                |c| c.setns(fd, libc::CLONE_NEWNS),
                sys::child::Child::hold_mount,
            )
        }
        .map_err(fail)?
        .map_err(|errno| fail(io::Error::from_raw_os_error(errno)))?;
        let keeper = Keeper::started(Kind::Mnt, resident)?;
        if crate::procfs::ns_link_inode(keeper.pid(), "mnt") != Some(self.ino) {
            keeper.leave();
            return Err(fail(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        self.keeper = Some(keeper);
        Ok(())
    }

    /// Reopens the namespace `kind`:`ino` from its pin at `path`, checking
    /// that the file is a namespace of that kind and inode; the pin is
    /// taken over as it is.
    pub fn from_pin(dir: &Arc<PinDir>, kind: Kind, ino: u64) -> Result<Namespace, ReopenError> {
        let name = Pin::name(kind, ino);
        let path = dir.path.join(&name);
        let file = dir
            .open(&name)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT) => ReopenError::PinMissing(path.clone()),
                Some(libc::ELOOP) => ReopenError::PinSymlink(path.clone()),
                _ => ReopenError::PinOpen {
                    path: path.clone(),
                    source,
                },
            })?;
        let mut ns = Namespace::from_fd(file, kind, Origin::Path(path.clone()))?;
        if ns.ino != ino {
            return Err(ReopenError::PinReplaced {
                path,
                kind,
                found: ns.ino,
            });
        }
        ns.pin = Some(Pin {
            dir: Arc::clone(dir),
            name,
            path,
        });
        Ok(ns)
    }

    /// Wraps `fd`, a namespace a keeper sits in (see [`Keeper::adopt`]).
    pub fn kept(fd: OwnedFd, kind: Kind, keeper: Keeper) -> Result<Namespace, NsError> {
        let mut ns = Namespace::from_fd(fd, kind, Origin::Other("a keeper's namespace"))?;
        ns.keeper = Some(keeper);
        Ok(ns)
    }

    /// Gives this namespace the keeper a previous daemon left in it.
    pub fn adopt_keeper(&mut self, keeper: Keeper) {
        self.keeper = Some(keeper);
    }

    /// The namespace lost its last binding: removes its pin and tells its
    /// keeper to leave. Processes still in it keep it alive.
    pub fn release(&self) {
        if let Some(pin) = &self.pin {
            pin.remove();
        }
        if let Some(keeper) = &self.keeper {
            keeper.leave();
        }
    }

    /// Pins the namespace in `dir` (see [`Pin`]). Mount namespaces are not
    /// pinned: the kernel refuses to bind-mount one into a mount namespace
    /// that is not older than it (mount loops, EINVAL), which rules out the
    /// daemon's own and every one made after it; a bound mount namespace has
    /// a keeper instead ([`Namespace::hold_mount`]).
    pub fn pin(&mut self, dir: &Arc<PinDir>) {
        if self.kind == Kind::Mnt {
            return;
        }
        match Pin::create(dir, self.kind, self.ino, self.fd.as_fd()) {
            Ok(pin) => self.pin = Some(pin),
            Err(e) => log::info!(
                "{} not pinned in {}: {e}",
                self.describe(),
                dir.path.display()
            ),
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
    let local = sys::ns::pid_from_pidns(writer_pidns, pid).map_err(|e| match e.raw_os_error() {
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

/// Opens `path` as the caller of `opener` would (see [`super::resolve`])
/// and checks that it is a namespace file of `kind`.
pub fn of_path(opener: &Opener, path: &str, kind: Kind) -> Result<Namespace, NsError> {
    if path.as_bytes().contains(&0) {
        return Err(NsError::NotANamespace(Origin::Path(path.into())));
    }
    let resolved = resolve::open(opener, path.as_bytes()).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => NsError::NoSuchProcess(opener.tid as i32),
        _ => NsError::Sys {
            what: "open in the writer's mount namespace",
            source: e,
        },
    })?;
    match resolved {
        Resolved::File(fd) => Namespace::from_fd(fd, kind, Origin::Path(path.into())),
        Resolved::Failed(errno) => Err(NsError::Open {
            path: path.into(),
            source: io::Error::from_raw_os_error(errno),
        }),
        Resolved::Refused(why) => Err(NsError::Refused {
            path: path.into(),
            why,
        }),
        Resolved::TimedOut => Err(NsError::TimedOut(path.into())),
    }
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
    let (ready_r, ready_w) = sys::fs::pipe().map_err(fail)?;
    let (hold_r, hold_w) = sys::fs::pipe().map_err(fail)?;
    let (w, r) = (ready_w.as_raw_fd(), hold_r.as_raw_fd());
    let (unused_r, unused_w) = (ready_r.as_raw_fd(), hold_w.as_raw_fd());
    let flag = kind.clone_flag();
    // SAFETY: the child makes only the calls of `Child` (close, unshare,
    // mount changes, report, wait) on integers and a NUL-terminated path
    // prepared before the fork; it allocates nothing.
    let child = unsafe {
        sys::process::spawn_child(false, |c| {
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
    }
    .map_err(fail)?;
    drop(ready_w);
    drop(hold_r);
    let outcome = (|| {
        match sys::fs::read_i32(ready_r.as_fd()).map_err(fail)? {
            Some(0) => {}
            Some(errno) => return Err(fail(io::Error::from_raw_os_error(errno))),
            None => return Err(fail(io::Error::from_raw_os_error(libc::EIO))),
        }
        if kind == Kind::User {
            write_identity_maps(child).map_err(fail)?;
        }
        let path = format!("/proc/{child}/ns/{}", kind.proc_entry());
        let file = File::open(&path).map_err(fail)?;
        Namespace::from_fd(file.into(), kind, Origin::Path(path.into()))
    })();
    drop(hold_w);
    let _ = sys::process::reap(child);
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
    // SAFETY: the child only unshares through `Child`; the grandchild runs
    // `Child::keep_pid_namespace`.
    let init = unsafe {
        sys::process::spawn_resident(
            crate::procfs::argv_region(),
            |c| c.unshare(libc::CLONE_NEWPID),
            sys::child::Child::keep_pid_namespace,
        )
    }
    .map_err(fail)?
    .map_err(|errno| fail(io::Error::from_raw_os_error(errno)))?;
    let path = format!("/proc/{}/ns/pid", init.pid);
    let file = File::open(&path).map_err(fail)?;
    let mut ns = Namespace::from_fd(file.into(), Kind::Pid, Origin::Path(path.into()))?;
    ns.keeper = Some(Keeper::started(Kind::Pid, init)?);
    Ok(ns)
}

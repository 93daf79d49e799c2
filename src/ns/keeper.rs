//! Keepers: processes the daemon keeps inside a namespace (the init of a
//! fresh pid namespace, the holder of a mount namespace).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use parking_lot::Mutex;

use super::Kind;
use super::error::sys_err;
use super::{NsError, ReopenError};
use crate::sys;

/// A process the daemon keeps inside a namespace: the init of a fresh pid
/// namespace (`nsproxyfs-pid1`), without which the namespace could take no
/// new process, or the holder of a mount namespace (`nsproxyfs-mnt`), which
/// keeps it alive and reachable as `/proc/PID/ns/mnt` where no pin can.
///
/// A new keeper leaves when the daemon closes its control pipe or dies,
/// until [`Keeper::outlive_daemon`] (called once the record of the tree
/// names it). From then on only [`Keeper::leave`] ends it: it survives a
/// daemon restart, and the next daemon takes it over with
/// [`Keeper::adopt`]. Dropping a keeper only closes the pipe.
#[derive(Debug)]
pub struct Keeper {
    kind: Kind,
    pid: i32,
    start: u64,
    pidfd: OwnedFd,
    control: Mutex<Option<File>>,
}

/// The command name of a keeper of `kind`, as it names itself.
fn keeper_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pid => "nsproxyfs-pid1",
        _ => "nsproxyfs-mnt",
    }
}

impl Keeper {
    pub(super) fn started(kind: Kind, resident: sys::process::Resident) -> Result<Keeper, NsError> {
        let pidfd = sys::pidfd::open(resident.pid, 0).map_err(sys_err("pin the keeper"))?;
        let start = crate::procfs::start_time(resident.pid)
            .filter(|_| sys::pidfd::alive(pidfd.as_fd()))
            .ok_or_else(|| NsError::Sys {
                what: "read the keeper's start time",
                source: io::Error::from_raw_os_error(libc::ESRCH),
            })?;
        Ok(Keeper {
            kind,
            pid: resident.pid,
            start,
            pidfd,
            control: Mutex::new(Some(File::from(resident.control))),
        })
    }

    /// Takes over the keeper a previous daemon recorded for the namespace
    /// `kind`:`ino`, after checking that process `pid` is still the one
    /// that started at `start`, is a keeper, and sits in that namespace.
    /// Returns it with a descriptor of its namespace, or why not.
    pub fn adopt(
        kind: Kind,
        ino: u64,
        pid: i32,
        start: u64,
    ) -> Result<(Keeper, OwnedFd), ReopenError> {
        let role = match kind {
            Kind::Pid => "init",
            _ => "holder",
        };
        let gone = || ReopenError::KeeperGone { role, pid };
        let pidfd = sys::pidfd::open(pid, 0).map_err(|_| gone())?;
        if crate::procfs::start_time(pid) != Some(start) {
            return Err(ReopenError::KeeperReplaced { role, pid });
        }
        match crate::procfs::comm(pid) {
            Some(name) if name == keeper_name(kind) => {}
            Some(name) if name == "nsproxyfs-exit" => {
                return Err(ReopenError::KeeperLeaving { role, pid });
            }
            _ => return Err(ReopenError::NotKeeper { role, pid }),
        }
        let fd = sys::pidfd::namespace(pidfd.as_fd(), kind).map_err(|_| gone())?;
        let found = fd
            .try_clone()
            .map(File::from)
            .and_then(|f| f.metadata())
            .map(|m| m.ino())
            .map_err(ReopenError::Inode)?;
        if found != ino {
            return Err(ReopenError::KeeperElsewhere {
                role,
                pid,
                kind,
                found,
            });
        }
        if !sys::pidfd::alive(pidfd.as_fd()) {
            return Err(gone());
        }
        let keeper = Keeper {
            kind,
            pid,
            start,
            pidfd,
            control: Mutex::new(None),
        };
        Ok((keeper, fd))
    }

    /// The keeper's pid in the daemon's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its start time (see [`crate::procfs::start_time`]).
    pub fn start_time(&self) -> u64 {
        self.start
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        sys::pidfd::alive(self.pidfd.as_fd())
    }

    /// Makes it stay through the daemon's end, until [`Keeper::leave`].
    /// Call once the record of the tree names it.
    /// The pipe is closed after that: it has nothing more to say.
    pub fn outlive_daemon(&self) {
        if let Some(mut control) = self.control.lock().take()
            && let Err(e) = control.write_all(&[sys::child::OUTLIVE_DAEMON])
        {
            log::warn!("cannot tell keeper {} to outlive the daemon: {e}", self.pid);
        }
    }

    /// Tells it to leave: an init exits once it is the last process of its
    /// namespace (its exit would kill the others), a holder at once.
    pub fn leave(&self) {
        self.control.lock().take();
        let signal = match self.kind {
            Kind::Pid => libc::SIGTERM,
            _ => libc::SIGKILL,
        };
        if let Err(e) = sys::pidfd::send_signal(self.pidfd.as_fd(), signal)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            log::warn!("cannot tell keeper {} to leave: {e}", self.pid);
        }
    }
}

//! Holders: a process sitting in exactly one effective set, so that a moved
//! process can join the whole set at once with `setns(pidfd, flags)`.
//!
//! A holder is made in two steps from the daemon: a child joins every
//! namespace of the set (user last: joining it first would drop the
//! privileges the other joins need), then forks the holder itself, which is
//! born into the set's pid and time namespaces. The holder waits on a pipe
//! and exits when the daemon drops the [`Holder`] or dies.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use super::NsError;
use super::{Kind, Namespace};
use crate::sys;

/// A live holder process.
#[derive(Debug)]
pub struct Holder {
    pid: i32,
    pidfd: OwnedFd,
    _control: OwnedFd,
    /// Its pid as each pid namespace that sees it numbers it, by that
    /// namespace's inode. Such a namespace is the holder's own or an
    /// ancestor, which the holder keeps alive, so the inode names the same
    /// namespace for as long as the holder lives.
    seen: parking_lot::Mutex<Vec<(u64, i32)>>,
}

impl Holder {
    /// The holder's pid in the daemon's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The holder's pid in the pid namespace whose inode is `pidns`,
    /// remembered from the first time: `open` opens that namespace, and is
    /// called only the first time. ESRCH if that namespace does not see the
    /// holder; `ESTALE` if `open` gave another namespace than `pidns`.
    pub fn pid_seen_from(
        &self,
        pidns: u64,
        open: impl FnOnce() -> io::Result<OwnedFd>,
    ) -> io::Result<i32> {
        if let Some(&(_, pid)) = self.seen.lock().iter().find(|(ns, _)| *ns == pidns) {
            return Ok(pid);
        }
        let fd = open()?;
        if nix::sys::stat::fstat(&fd)?.st_ino != pidns {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        let pid = sys::ns::pid_in_pidns(fd.as_fd(), self.pid)?;
        self.seen.lock().push((pidns, pid));
        Ok(pid)
    }

    /// Whether the holder still runs (it dies with its pid namespace's init,
    /// or if someone kills it).
    pub fn is_alive(&self) -> bool {
        sys::pidfd::alive(self.pidfd.as_fd())
    }

    /// Starts a holder in `set`. `own` are the inodes of the daemon's own
    /// namespaces: kinds already equal are not joined (setns refuses to
    /// re-enter one's own user namespace).
    pub fn spawn(set: &[Arc<Namespace>; 8], own: &[u64; 8]) -> Result<Holder, NsError> {
        let fail = |what| move |source| NsError::Sys { what, source };
        let mut joins: [(RawFd, i32); 8] = [(-1, 0); 8];
        let mut n = 0;
        let user_last = Kind::ALL
            .iter()
            .filter(|&&k| k != Kind::User)
            .chain([&Kind::User]);
        for &kind in user_last {
            let ns = &set[kind.index()];
            if ns.ino() != own[kind.index()] {
                joins[n] = (ns.fd().as_raw_fd(), kind.clone_flag());
                n += 1;
            }
        }
        let joined = |c: &sys::child::Child| {
            joins[..n]
                .iter()
                .try_for_each(|&(fd, flag)| c.setns(fd, flag))
        };
        // SAFETY: the child only joins namespaces through `Child`, reading
        // `joins`, an array filled before the fork; the grandchild runs
        // `Child::hold`.
        let spawned = unsafe {
            sys::process::spawn_resident(
                crate::procfs::argv_region(),
                joined,
                sys::child::Child::hold,
            )
        }
        .map_err(fail("fork a holder"))?;
        let sys::process::Resident { pid, control } = spawned.map_err(|errno| NsError::Sys {
            what: "join the container's namespaces",
            source: io::Error::from_raw_os_error(errno),
        })?;
        let set_inos: [u64; 8] = std::array::from_fn(|i| set[i].ino());
        let pidfd = sys::pidfd::open(pid, 0).map_err(fail("pin the holder"))?;
        let holder = Holder {
            pid,
            pidfd,
            _control: control,
            seen: parking_lot::Mutex::new(Vec::new()),
        };
        for kind in Kind::ALL {
            // The holder's *active* pid and time namespaces are the set's.
            let entry = match kind {
                Kind::Pid => "pid",
                Kind::Time => "time",
                k => k.name(),
            };
            let seen = crate::procfs::ns_link_inode(pid, entry);
            if seen != Some(set_inos[kind.index()]) {
                return Err(NsError::Sys {
                    what: "verify the holder's namespaces",
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                });
            }
        }
        Ok(holder)
    }
}

//! Who sent a request, and what they may do.
//!
//! The FUSE header carries the caller's fsuid, fsgid and thread id (0 when
//! the caller's pid namespace cannot see the daemon's). Capabilities are not
//! sent: they are asked of the kernel (capget(2) on the caller's thread), and
//! the user namespace they hold in is read from `/proc/TID/ns/user`. Root by
//! uid alone grants nothing.

use std::fs::File;
use std::os::fd::OwnedFd;

use super::error::{Error, Result};
use crate::ns::Opener;

/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_SYS_PTRACE`.
const CAP_SYS_PTRACE: u32 = 19;

/// The fields of `/proc/PID/status` the checks need.
struct Status {
    /// Real, effective, saved and filesystem uid.
    uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    gid: [u32; 4],
}

fn status(pid: u32) -> Option<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let ids = |key: &str| -> Option<[u32; 4]> {
        let line = text.lines().find_map(|l| l.strip_prefix(key))?;
        let v: Vec<u32> = line
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        v.try_into().ok()
    };
    Some(Status {
        uid: ids("Uid:")?,
        gid: ids("Gid:")?,
    })
}

/// The sender of one request.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    /// Thread id in the daemon's pid namespace, 0 if not visible there.
    pub tid: u32,
    /// Filesystem uid.
    pub uid: u32,
    /// Filesystem gid.
    pub gid: u32,
}

impl Caller {
    /// From a fuser request.
    pub fn of(req: &fuser::Request) -> Caller {
        Caller {
            tid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
        }
    }

    fn visible(&self) -> Result<u32> {
        if self.tid == 0 {
            return Err(Error::Denied(
                "the caller's pid namespace cannot see the daemon, so it cannot be identified"
                    .into(),
            ));
        }
        Ok(self.tid)
    }

    /// Refuses unless the caller holds CAP_SYS_ADMIN in the daemon's user
    /// namespace, which every change of the tree needs.
    pub fn require_admin(&self, daemon_user_ns: u64) -> Result<()> {
        let caps = self.caps()?;
        if caps & (1 << CAP_SYS_ADMIN) == 0 {
            return Err(Error::Denied(format!(
                "caller {} (uid {}) lacks CAP_SYS_ADMIN",
                self.tid, self.uid
            )));
        }
        self.in_user_ns(daemon_user_ns, "CAP_SYS_ADMIN")
    }

    /// The caller's effective capabilities.
    fn caps(&self) -> Result<u64> {
        let tid = self.visible()?;
        crate::procfs::effective_caps(tid as i32)
            .ok_or_else(|| Error::Denied(format!("caller {tid} is gone")))
    }

    fn in_user_ns(&self, daemon_user_ns: u64, what: &str) -> Result<()> {
        let user_ns = crate::procfs::ns_inode(self.tid as i32, crate::ns::Kind::User);
        if user_ns != Some(daemon_user_ns) {
            return Err(Error::Denied(format!(
                "caller {} holds {what} only in a user namespace below the daemon's",
                self.tid
            )));
        }
        Ok(())
    }

    /// Refuses unless the caller could ptrace process `pid` itself, as the
    /// kernel decides for `PTRACE_ATTACH`: its real uid and gid equal all of
    /// the target's uids and gids and the target is dumpable, or it holds
    /// CAP_SYS_PTRACE (in the daemon's user namespace).
    pub fn require_ptrace(&self, pid: i32, daemon_user_ns: u64) -> Result<()> {
        if self.caps()? & (1 << CAP_SYS_PTRACE) != 0 {
            return self.in_user_ns(daemon_user_ns, "CAP_SYS_PTRACE");
        }
        let tid = self.visible()?;
        let me = status(tid).ok_or_else(|| Error::Denied(format!("caller {tid} is gone")))?;
        let target = status(pid as u32).ok_or(crate::ns::NsError::NoSuchProcess(pid))?;
        let same_ids = target.uid[..3].iter().all(|&u| u == me.uid[0])
            && target.gid[..3].iter().all(|&g| g == me.gid[0]);
        // A process that is not dumpable has its /proc entries owned by root.
        let dumpable = std::fs::metadata(format!("/proc/{pid}"))
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == target.uid[1])
            .unwrap_or(false);
        if same_ids && dumpable {
            return Ok(());
        }
        Err(Error::Denied(format!(
            "caller {tid} (uid {}) may not trace process {pid} (uid {}): it needs the same \
             ids and a dumpable target, or CAP_SYS_PTRACE",
            me.uid[0], target.uid[1]
        )))
    }

    /// The caller's pid namespace, where the pids it writes and reads live.
    pub fn pid_ns(&self) -> Result<OwnedFd> {
        let tid = self.visible()?;
        File::open(format!("/proc/{tid}/ns/pid"))
            .map(OwnedFd::from)
            .map_err(|source| Error::Sys {
                what: "open the caller's pid namespace",
                source,
            })
    }

    /// The caller as an opener of paths.
    pub fn opener(&self) -> Result<Opener> {
        Ok(Opener {
            tid: self.visible()?,
            uid: self.uid,
            gid: self.gid,
        })
    }
}

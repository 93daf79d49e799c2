//! Who sent a request, and what they may do.
//!
//! The FUSE header carries the caller's fsuid, fsgid and thread id (0 when
//! the caller's pid namespace cannot see the daemon's). Capabilities are not
//! sent: they are read from `/proc/TID/status`, and the user namespace they
//! hold in from `/proc/TID/ns/user`. Root by uid alone grants nothing.

use std::fs::File;
use std::os::fd::OwnedFd;

use super::error::{Error, Result};
use crate::ns::Opener;

/// `CAP_SYS_ADMIN`.
const CAP_SYS_ADMIN: u32 = 21;

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
        let tid = self.visible()?;
        let status = std::fs::read_to_string(format!("/proc/{tid}/status"))
            .map_err(|_| Error::Denied(format!("caller {tid} is gone")))?;
        let cap_eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0);
        if cap_eff & (1 << CAP_SYS_ADMIN) == 0 {
            return Err(Error::Denied(format!(
                "caller {tid} (uid {}) lacks CAP_SYS_ADMIN",
                self.uid
            )));
        }
        let user_ns = crate::procfs::ns_inode(tid as i32, crate::ns::Kind::User);
        if user_ns != Some(daemon_user_ns) {
            return Err(Error::Denied(format!(
                "caller {tid} holds CAP_SYS_ADMIN only in a user namespace below the daemon's"
            )));
        }
        Ok(())
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

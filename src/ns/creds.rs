//! Acting with a caller's credentials, so that the kernel itself decides
//! what the caller may do.
//!
//! The daemon is root; the callers it serves may not be. Rather than
//! re-implement the kernel's rules (uids, dumpable, the capability-superset
//! rule, `CAP_SYS_PTRACE` over the right user namespace, LSMs), a check is
//! made by a task that holds exactly the caller's credentials: its real,
//! effective, saved and filesystem ids, its supplementary groups and its
//! effective, permitted and inheritable capabilities. Credentials are
//! per thread in the kernel, so that task is a short-lived thread of the
//! daemon (or a forked child, where a mount namespace must change too),
//! which takes them with raw system calls that touch only itself.
//!
//! Every change of the tree needs `CAP_SYS_ADMIN` in the daemon's user
//! namespace (see `service::caller`), so a caller that gets this far lives in
//! the daemon's user namespace, where that thread lives too.

use std::io;
use std::sync::OnceLock;

use crate::procfs::Status;
use crate::sys;

/// Supplementary groups kept (the kernel's `NGROUPS_MAX`).
pub const MAX_GROUPS: usize = 65536;

/// What the kernel checks a task's rights by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Real, effective, saved and filesystem uid.
    pub uid: [u32; 4],
    /// Real, effective, saved and filesystem gid.
    pub gid: [u32; 4],
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Effective capabilities.
    pub effective: u64,
    /// Permitted capabilities.
    pub permitted: u64,
    /// Inheritable capabilities.
    pub inheritable: u64,
}

/// Why a check could not be made with a caller's credentials.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// The caller's thread is gone.
    #[error("the calling thread {0} is gone")]
    Gone(u32),
    /// The thread's status shows no credentials this daemon can read.
    #[error("unreadable credentials in /proc/{0}/status")]
    Unreadable(u32),
    /// The credentials could not be read or taken.
    #[error("cannot act with the caller's credentials: {0}")]
    Sys(io::Error),
}

impl Credentials {
    /// The credentials of thread `tid` (daemon pid namespace), as
    /// `/proc/TID/status` shows them. A caller blocked in a request cannot
    /// change its own credentials meanwhile, so the answer is stable.
    pub fn of_thread(tid: u32) -> Result<Credentials, CredsError> {
        let status = Status::read(tid as i32).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => CredsError::Gone(tid),
            _ => CredsError::Sys(e),
        })?;
        Credentials::from_status(&status).ok_or(CredsError::Unreadable(tid))
    }

    /// Parses the `Uid`, `Gid`, `Groups` and `Cap*` lines of a
    /// `/proc/PID/status` text.
    pub fn parse(status: &str) -> Option<Credentials> {
        Self::from_status(&Status::new(status))
    }

    /// The credentials a `/proc/PID/status` file shows.
    fn from_status<S: AsRef<str>>(status: &Status<S>) -> Option<Credentials> {
        let ids = |name: &str| -> Option<[u32; 4]> { status.list(name)?.try_into().ok() };
        let groups: Vec<u32> = status.list("Groups")?;
        if groups.len() > MAX_GROUPS {
            return None;
        }
        Some(Credentials {
            uid: ids("Uid")?,
            gid: ids("Gid")?,
            groups,
            effective: status.mask("CapEff")?,
            permitted: status.mask("CapPrm")?,
            inheritable: status.mask("CapInh")?,
        })
    }

    /// The daemon's own credentials, read once.
    pub fn daemon() -> Option<&'static Credentials> {
        static OWN: OnceLock<Option<Credentials>> = OnceLock::new();
        OWN.get_or_init(|| Credentials::from_status(&Status::read_self().ok()?))
            .as_ref()
    }

    /// Whether these are exactly the daemon's credentials, so that a check
    /// made by any thread of the daemon is already the caller's answer.
    pub fn are_daemons(&self) -> bool {
        Credentials::daemon() == Some(self)
    }

    /// The ids and capabilities, as words for the injector's requests
    /// (groups are left out: they play no part in ptrace rights).
    pub fn to_words(&self) -> String {
        let [a, b, c, d] = self.uid;
        let [e, f, g, h] = self.gid;
        format!(
            "{a} {b} {c} {d} {e} {f} {g} {h} {:x} {:x} {:x}",
            self.effective, self.permitted, self.inheritable
        )
    }

    /// Reads what [`Credentials::to_words`] wrote (with no groups).
    pub fn from_words<'a>(words: &mut impl Iterator<Item = &'a str>) -> Option<Credentials> {
        let mut id = || words.next()?.parse::<u32>().ok();
        let uid = [id()?, id()?, id()?, id()?];
        let gid = [id()?, id()?, id()?, id()?];
        let mut cap = || u64::from_str_radix(words.next()?, 16).ok();
        Some(Credentials {
            uid,
            gid,
            groups: Vec::new(),
            effective: cap()?,
            permitted: cap()?,
            inheritable: cap()?,
        })
    }

    /// Whether the effective set holds capability `cap`.
    pub fn has(&self, cap: u32) -> bool {
        self.effective & (1 << cap) != 0
    }

    /// The effective, permitted and inheritable sets, in that order.
    pub fn caps(&self) -> [u64; 3] {
        [self.effective, self.permitted, self.inheritable]
    }

    /// Makes the calling task hold exactly these credentials (see
    /// [`sys::creds::assume`], which may run in a child cloned from the
    /// daemon). The errno of the first refused step on failure.
    ///
    /// # Safety
    ///
    /// As for [`sys::creds::assume`]: the calling task must exist only to
    /// act as the caller, and end once done.
    pub unsafe fn assume(&self) -> Result<(), i32> {
        // SAFETY: the caller of `assume` meets the same contract.
        unsafe { sys::creds::assume(self.uid, self.gid, &self.groups, self.caps()) }
    }
}

/// Runs `check` with `creds`: on this thread when they are the daemon's
/// own, else on a thread made for it that takes them first and ends after.
pub fn as_caller<T: Send>(
    creds: &Credentials,
    check: impl FnOnce() -> T + Send,
) -> Result<T, CredsError> {
    run_as(creds, creds.are_daemons(), check)
}

/// [`as_caller`] for a question about ptrace rights, which supplementary
/// groups play no part in: credentials that differ from the daemon's in
/// their groups alone are asked on this thread.
pub fn as_tracer<T: Send>(
    creds: &Credentials,
    check: impl FnOnce() -> T + Send,
) -> Result<T, CredsError> {
    let same = Credentials::daemon().is_some_and(|own| {
        own.uid == creds.uid
            && own.gid == creds.gid
            && (own.effective, own.permitted, own.inheritable)
                == (creds.effective, creds.permitted, creds.inheritable)
    });
    run_as(creds, same, check)
}

fn run_as<T: Send>(
    creds: &Credentials,
    same: bool,
    check: impl FnOnce() -> T + Send,
) -> Result<T, CredsError> {
    if same {
        return Ok(check());
    }
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("nsproxyfs-as".into())
            .stack_size(64 * 1024)
            .spawn_scoped(s, || {
                // SAFETY: this thread exists for this one check and ends
                // right after it.
                unsafe { creds.assume() }
                    .map_err(|e| CredsError::Sys(io::Error::from_raw_os_error(e)))?;
                Ok(check())
            })
            .map_err(CredsError::Sys)?;
        worker
            .join()
            .unwrap_or_else(|_| Err(CredsError::Sys(io::Error::other("check thread panicked"))))
    })
}

/// What the kernel says of `creds` attaching to each of the tasks `tids`
/// (see [`may_attach`]): how many of them still live and may be traced, or
/// the first one refused with its errno. Tasks gone meanwhile are skipped.
pub fn may_attach_all(
    creds: &Credentials,
    tids: &[i32],
) -> Result<Result<usize, (i32, i32)>, CredsError> {
    as_tracer(creds, || {
        let mut alive = 0;
        for &t in tids {
            match may_attach(t) {
                Ok(()) => alive += 1,
                Err(libc::ESRCH) => {}
                Err(errno) => return Err((t, errno)),
            }
        }
        Ok(alive)
    })
}

/// The kernel's answer to "may this task attach to (`PTRACE_SEIZE`) task
/// `tid`", asked without touching it: `process_vm_readv` demands exactly
/// `PTRACE_MODE_ATTACH_REALCREDS` (uids, dumpable, capabilities, LSMs) of
/// the caller, and is then given an address no process maps, so it reads
/// nothing. `Ok(())` allowed; `Err(EPERM)` refused; `Err(ESRCH)` gone.
pub fn may_attach(tid: i32) -> Result<(), i32> {
    let mut byte = [0u8; 1];
    // The last page of the address space: above every process's user
    // range, and not the x86 vsyscall page.
    let nowhere = usize::MAX & !0xfff;
    match sys::uio::read(nix::unistd::Pid::from_raw(tid), nowhere, &mut byte) {
        Ok(_) => Ok(()),
        // The access check passed; only the (deliberately bad) copy failed.
        Err(nix::errno::Errno::EFAULT) => Ok(()),
        Err(nix::errno::Errno::EACCES) => Err(libc::EPERM),
        Err(e) => Err(e as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status() {
        let text = "Name:\tx\nUid:\t1000\t0\t0\t0\nGid:\t100\t100\t100\t100\n\
                    Groups:\t4 27 \nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                    CapEff:\t0000000000200000\n";
        let c = Credentials::parse(text).unwrap();
        assert_eq!(c.uid, [1000, 0, 0, 0]);
        assert_eq!(c.gid, [100; 4]);
        assert_eq!(c.groups, vec![4, 27]);
        assert_eq!(c.permitted, 0x1ff_ffff_ffff);
        assert_eq!(c.effective, 1 << 21);
        assert!(c.has(21) && !c.has(19));
        assert_eq!(Credentials::parse("Uid:\t1\t2\t3\n"), None);
        let no_groups = text.replace("Groups:\t4 27 \n", "Groups:\t\n");
        assert_eq!(
            Credentials::parse(&no_groups).unwrap().groups,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn words_carry_ids_and_capabilities() {
        let c = Credentials {
            uid: [1, 2, 3, 4],
            gid: [5, 6, 7, 8],
            groups: vec![9],
            effective: 0x20_0000,
            permitted: 0x1ff_ffff_ffff,
            inheritable: 0,
        };
        let text = c.to_words();
        let back = Credentials::from_words(&mut text.split(' ')).unwrap();
        assert_eq!(
            back,
            Credentials {
                groups: Vec::new(),
                ..c
            }
        );
        assert_eq!(Credentials::from_words(&mut "1 2 3".split(' ')), None);
    }

    #[test]
    fn own_credentials_need_no_thread() {
        let me = Credentials::of_thread(std::process::id()).unwrap();
        assert!(me.are_daemons());
        let here = std::thread::current().id();
        assert_eq!(
            as_caller(&me, || std::thread::current().id()).unwrap(),
            here
        );
    }
}

//! pidfds: a stable handle on a process (or one thread) that no pid reuse
//! can redirect.
//!
//! nix has no pidfd calls: they are made here with `syscall(2)` and
//! `ioctl(2)`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::ioctl::ioctl_num_type;

use super::{check, owned};
use crate::kind::Kind;

/// `PIDFD_THREAD` (= `O_EXCL`): the pidfd names one thread.
pub const THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

/// `PIDFS_IOCTL_MAGIC`.
const PIDFS: ioctl_num_type = 0xff;

/// `PIDFD_GET_*_NAMESPACE` of `kind` (for pid and time: the namespace the
/// process's children are born into).
fn namespace_ioctl(kind: Kind) -> ioctl_num_type {
    match kind {
        Kind::Cgroup => nix::request_code_none!(PIDFS, 1),
        Kind::Ipc => nix::request_code_none!(PIDFS, 2),
        Kind::Mnt => nix::request_code_none!(PIDFS, 3),
        Kind::Net => nix::request_code_none!(PIDFS, 4),
        // PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE
        Kind::Pid => nix::request_code_none!(PIDFS, 6),
        // PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE
        Kind::Time => nix::request_code_none!(PIDFS, 8),
        Kind::User => nix::request_code_none!(PIDFS, 9),
        Kind::Uts => nix::request_code_none!(PIDFS, 10),
    }
}

/// `pidfd_open(pid, flags)`: ESRCH if there is no such process, EINVAL if
/// `pid` is a thread other than a group leader and `flags` lacks
/// [`THREAD`].
pub fn open(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

/// Sends `signal` to the process behind `pidfd`; signal 0 only checks that
/// it still runs (ESRCH once it has exited, a zombie included).
pub fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: the pidfd is borrowed; a null siginfo makes the kernel fill
    // it as kill(2) would; flags are zero.
    check(unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    })
    .map(drop)
}

/// Whether the process of `pidfd` is still running (not exited, not a
/// zombie).
pub fn alive(pidfd: BorrowedFd<'_>) -> bool {
    send_signal(pidfd, 0).is_ok()
}

/// The namespace of `kind` of the task behind `pidfd` (for pid and time: the
/// one its children are born into).
pub fn namespace(pidfd: BorrowedFd<'_>, kind: Kind) -> io::Result<OwnedFd> {
    // SAFETY: the PIDFD_GET_*_NAMESPACE ioctls take no argument and return a
    // new fd or -1.
    owned(unsafe { libc::ioctl(pidfd.as_raw_fd(), namespace_ioctl(kind), 0) }.into())
}

/// The first version of `struct pidfd_info`.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ids: [u32; 8],
    exit_code: i32,
}

/// `PIDFD_GET_INFO`: `_IOWR(0xff, 11, struct pidfd_info)`, with the size of
/// the first version of the struct (64 bytes).
const GET_INFO: ioctl_num_type =
    nix::request_code_readwrite!(PIDFS, 11, std::mem::size_of::<PidfdInfo>());

/// The pid, in our pid namespace, of the process behind `pidfd` (0 if it
/// is not visible there), asked with the `PIDFD_GET_INFO` ioctl (Linux
/// 6.13). `Ok(None)` on kernels without it; `ESRCH` once it has exited.
pub fn pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    /// `PIDFD_INFO_PID`: always answered.
    const PIDFD_INFO_PID: u64 = 1;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_PID,
        ..PidfdInfo::default()
    };
    // SAFETY: the ioctl writes at most the 64 bytes its number states into
    // `info`, a live local of exactly that layout.
    let ret = unsafe { libc::ioctl(pidfd.as_raw_fd(), GET_INFO, &mut info) };
    match check(ret.into()) {
        Ok(_) => Ok(Some(info.pid as i32)),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `ioctl_num_type` is `c_int` with musl.
    #[allow(clippy::unnecessary_cast)]
    fn the_info_ioctl_has_the_number_of_its_first_version() {
        assert_eq!(std::mem::size_of::<PidfdInfo>(), 64);
        assert_eq!(GET_INFO as u64, (3 << 30) | (64 << 16) | (0xff << 8) | 11);
    }
}

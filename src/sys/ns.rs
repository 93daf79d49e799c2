//! The nsfs ioctls: what a namespace descriptor is, who owns it, and how
//! pids translate between pid namespaces; and `setns` of one thread.
//!
//! nix has the request-code macros but no wrappers for these ioctls, whose
//! answer is a new descriptor or a number: they are made here.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::ioctl::ioctl_num_type;

use super::{check, owned};

const NSIO: ioctl_num_type = 0xb7;

/// `NS_GET_USERNS`: the user namespace owning a namespace.
const NS_GET_USERNS: ioctl_num_type = nix::request_code_none!(NSIO, 0x1);
/// `NS_GET_PARENT`: the parent of a pid or user namespace.
const NS_GET_PARENT: ioctl_num_type = nix::request_code_none!(NSIO, 0x2);
/// `NS_GET_NSTYPE`: the `CLONE_NEW*` flag of an nsfs file.
const NS_GET_NSTYPE: ioctl_num_type = nix::request_code_none!(NSIO, 0x3);
/// `NS_GET_PID_FROM_PIDNS`: a pid of the given pid ns, in the caller's ns.
/// Declared `_IOR(.., int)`, but the pid is passed by value.
const NS_GET_PID_FROM_PIDNS: ioctl_num_type =
    nix::request_code_read!(NSIO, 0x6, std::mem::size_of::<libc::c_int>());
/// `NS_GET_TGID_FROM_PIDNS`: the thread group of a pid of the given pid ns,
/// in the caller's ns.
const NS_GET_TGID_FROM_PIDNS: ioctl_num_type =
    nix::request_code_read!(NSIO, 0x7, std::mem::size_of::<libc::c_int>());
/// `NS_GET_PID_IN_PIDNS`: a pid of the caller's pid ns, in the given ns.
const NS_GET_PID_IN_PIDNS: ioctl_num_type =
    nix::request_code_read!(NSIO, 0x8, std::mem::size_of::<libc::c_int>());

/// The `CLONE_NEW*` type of the nsfs file `fd` (ENOTTY/EINVAL if it is not one).
pub fn ns_type(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the file.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) }.into()).map(|t| t as i32)
}

/// The user namespace that owns the namespace `fd` (for a user namespace,
/// its parent). EPERM for the initial user namespace, or one outside the
/// caller's.
pub fn owner(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    owned(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_USERNS) }.into())
}

/// The parent of the pid or user namespace `fd`. EPERM at the top, EINVAL
/// for other kinds.
pub fn parent(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_PARENT takes no argument and returns a new fd or -1.
    owned(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_PARENT) }.into())
}

/// One of the pid-translating ioctls, which take the pid by value.
fn translate(pidns: BorrowedFd<'_>, request: ioctl_num_type, pid: i32) -> io::Result<i32> {
    // SAFETY: the NS_GET_*PID* ioctls take the pid by value (not a pointer)
    // and return a number or -1.
    check(unsafe { libc::ioctl(pidns.as_raw_fd(), request, pid) }.into()).map(|p| p as i32)
}

/// Translates `pid`, as seen in the pid namespace `pidns`, into this
/// process's pid namespace. ESRCH if it has no such process.
pub fn pid_from_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    translate(pidns, NS_GET_PID_FROM_PIDNS, pid)
}

/// Translates `pid`, as seen in the pid namespace `pidns`, into the id of
/// its thread group (the process) in this process's pid namespace.
pub fn tgid_from_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    translate(pidns, NS_GET_TGID_FROM_PIDNS, pid)
}

/// Translates `pid` of this process's pid namespace into the pid namespace
/// `pidns`. ESRCH if the process is not visible there.
pub fn pid_in_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    translate(pidns, NS_GET_PID_IN_PIDNS, pid)
}

/// Moves the calling thread (alone: `setns` acts on the calling thread)
/// into the namespace `fd` of type `nstype` (a `CLONE_NEW*` flag).
pub fn setns_thread(fd: impl AsFd, nstype: i32) -> io::Result<()> {
    let flags = nix::sched::CloneFlags::from_bits_retain(nstype);
    nix::sched::setns(fd, flags).map_err(io::Error::from)
}

/// The host name of the calling thread's UTS namespace.
pub fn hostname() -> io::Result<String> {
    let name = nix::unistd::gethostname()?;
    Ok(name.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    // `ioctl_num_type` is `c_int` with musl.
    #[allow(clippy::unnecessary_cast)]
    fn the_request_codes_are_the_kernels() {
        assert_eq!(NS_GET_USERNS as u64, 0xb701);
        assert_eq!(NS_GET_NSTYPE as u64, 0xb703);
        assert_eq!(NS_GET_PID_FROM_PIDNS as u64, (2 << 30) | (4 << 16) | 0xb706);
    }
}

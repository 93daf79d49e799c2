//! Thin wrappers over the system calls and ioctls the namespace code needs.
//!
//! Every `unsafe` block of the `ns` module lives here, each with the reason
//! it is sound. The wrappers take and return `OwnedFd`/`BorrowedFd`, never
//! bare integers, except where the kernel's answer is a number.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::Kind;

const NSIO: libc::c_ulong = 0xb7;
const PIDFS_IOCTL_MAGIC: libc::c_ulong = 0xff;

const fn io_none(kind: libc::c_ulong, nr: libc::c_ulong) -> libc::c_ulong {
    (kind << 8) | nr
}

const fn io_read_int(kind: libc::c_ulong, nr: libc::c_ulong) -> libc::c_ulong {
    // _IOR(kind, nr, int): direction 2 (read), size 4.
    (2 << 30) | (4 << 16) | (kind << 8) | nr
}

/// `NS_GET_USERNS`: the user namespace owning a namespace.
const NS_GET_USERNS: libc::c_ulong = io_none(NSIO, 0x1);
/// `NS_GET_PARENT`: the parent of a pid or user namespace.
const NS_GET_PARENT: libc::c_ulong = io_none(NSIO, 0x2);
/// `NS_GET_NSTYPE`: the `CLONE_NEW*` flag of an nsfs file.
const NS_GET_NSTYPE: libc::c_ulong = io_none(NSIO, 0x3);
/// `NS_GET_PID_FROM_PIDNS`: a pid of the given pid ns, in the caller's ns.
const NS_GET_PID_FROM_PIDNS: libc::c_ulong = io_read_int(NSIO, 0x6);
/// `NS_GET_TGID_FROM_PIDNS`: the thread group of a pid of the given pid ns,
/// in the caller's ns.
const NS_GET_TGID_FROM_PIDNS: libc::c_ulong = io_read_int(NSIO, 0x7);
/// `NS_GET_PID_IN_PIDNS`: a pid of the caller's pid ns, in the given ns.
const NS_GET_PID_IN_PIDNS: libc::c_ulong = io_read_int(NSIO, 0x8);
/// `NS_GET_TGID_IN_PIDNS`: the thread group of a pid of the caller's pid
/// ns, in the given ns.
const NS_GET_TGID_IN_PIDNS: libc::c_ulong = io_read_int(NSIO, 0x9);

/// `PIDFD_THREAD` (= `O_EXCL`): the pidfd names one thread.
pub const PIDFD_THREAD: libc::c_uint = libc::O_EXCL as libc::c_uint;

fn pidfd_ns_ioctl(kind: Kind) -> libc::c_ulong {
    let nr = match kind {
        Kind::Cgroup => 1,
        Kind::Ipc => 2,
        Kind::Mnt => 3,
        Kind::Net => 4,
        Kind::Pid => 6,  // PIDFD_GET_PID_FOR_CHILDREN_NAMESPACE
        Kind::Time => 8, // PIDFD_GET_TIME_FOR_CHILDREN_NAMESPACE
        Kind::User => 9,
        Kind::Uts => 10,
    };
    io_none(PIDFS_IOCTL_MAGIC, nr)
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn owned(ret: libc::c_long) -> io::Result<OwnedFd> {
    let fd = check(ret)? as RawFd;
    // SAFETY: the kernel has just returned `fd` as a new descriptor that
    // nothing else in this process owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, flags)`.
pub fn pidfd_open(pid: i32, flags: libc::c_uint) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    owned(unsafe { libc::syscall(libc::SYS_pidfd_open, pid, flags) })
}

/// Whether the process of `pidfd` is still running (not exited, not a
/// zombie): `pidfd_send_signal` with signal 0 checks without sending.
pub fn pidfd_alive(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: signal 0 only checks; the pidfd is borrowed and the other
    // arguments are null or zero.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Sends `signal` to the process behind `pidfd`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
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

/// The `CLONE_NEW*` type of the nsfs file `fd` (ENOTTY/EINVAL if it is not one).
pub fn ns_type(fd: BorrowedFd<'_>) -> io::Result<i32> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the file.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) }.into()).map(|t| t as i32)
}

/// The user namespace that owns the namespace `fd` (for a user namespace,
/// its parent). EPERM for the initial user namespace, or one outside the
/// caller's.
pub fn ns_owner(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_USERNS takes no argument and returns a new fd or -1.
    owned(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_USERNS) }.into())
}

/// The parent of the pid or user namespace `fd`. EPERM at the top, EINVAL
/// for other kinds.
pub fn ns_parent(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: NS_GET_PARENT takes no argument and returns a new fd or -1.
    owned(unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_PARENT) }.into())
}

/// The namespace of `kind` of the task behind `pidfd` (for pid and time: the
/// one its children are born into).
pub fn pidfd_namespace(pidfd: BorrowedFd<'_>, kind: Kind) -> io::Result<OwnedFd> {
    // SAFETY: the PIDFD_GET_*_NAMESPACE ioctls take no argument and return a
    // new fd or -1.
    owned(unsafe { libc::ioctl(pidfd.as_raw_fd(), pidfd_ns_ioctl(kind), 0) }.into())
}

/// Translates `pid`, as seen in the pid namespace `pidns`, into this
/// process's pid namespace. ESRCH if it has no such process.
pub fn pid_from_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    // SAFETY: the ioctl takes the pid by value and returns a number or -1.
    check(unsafe { libc::ioctl(pidns.as_raw_fd(), NS_GET_PID_FROM_PIDNS, pid) }.into())
        .map(|p| p as i32)
}

/// Translates `pid`, as seen in the pid namespace `pidns`, into the id of
/// its thread group (the process) in this process's pid namespace.
pub fn tgid_from_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    // SAFETY: the ioctl takes the pid by value and returns a number or -1.
    check(unsafe { libc::ioctl(pidns.as_raw_fd(), NS_GET_TGID_FROM_PIDNS, pid) }.into())
        .map(|p| p as i32)
}

/// Translates `pid` of this process's pid namespace into the pid namespace
/// `pidns`. ESRCH if the process is not visible there.
pub fn pid_in_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    // SAFETY: the ioctl takes the pid by value and returns a number or -1.
    check(unsafe { libc::ioctl(pidns.as_raw_fd(), NS_GET_PID_IN_PIDNS, pid) }.into())
        .map(|p| p as i32)
}

/// The thread group of `pid` of this process's pid namespace, as the pid
/// namespace `pidns` numbers it. ESRCH if it is not visible there.
pub fn tgid_in_pidns(pidns: BorrowedFd<'_>, pid: i32) -> io::Result<i32> {
    // SAFETY: the ioctl takes the pid by value and returns a number or -1.
    check(unsafe { libc::ioctl(pidns.as_raw_fd(), NS_GET_TGID_IN_PIDNS, pid) }.into())
        .map(|p| p as i32)
}

/// `openat(dir, path, flags | O_CLOEXEC | O_NOCTTY)`; `None` for the
/// working directory.
pub fn open_path(dir: Option<BorrowedFd<'_>>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and outlives the call.
    owned(
        unsafe { libc::openat(dir, path.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NOCTTY) }
            .into(),
    )
}

/// The device (major, minor) of the file `fd`, from the kernel's cached
/// attributes: a file of a FUSE mount is not asked of its daemon.
pub fn device_of(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    // SAFETY: statx is plain data; all-zero is a valid value to overwrite.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    check(
        // SAFETY: an empty path with AT_EMPTY_PATH names `fd` itself; `st`
        // is a live statx the kernel fills.
        unsafe {
            libc::statx(
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW,
                libc::STATX_TYPE,
                &mut st,
            )
        }
        .into(),
    )?;
    Ok((st.stx_dev_major, st.stx_dev_minor))
}

/// Waits up to `limit` for `fd` to be readable (or at EOF); false if the
/// time ran out.
pub fn wait_readable(fd: BorrowedFd<'_>, limit: std::time::Duration) -> io::Result<bool> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        match n {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err);
                }
            }
        }
    }
}

/// Sends `sig` to the process `pid`, a child of this one.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill takes integers; `pid` is an unreaped child of ours, so
    // the number cannot have been reused.
    unsafe { libc::kill(pid, sig) };
}

pub(crate) use crate::injector::sys::{recv, seqpacket_pair};

/// What the path walk needs of a file: type, inode and device.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    /// `st_mode`.
    pub mode: u16,
    /// The inode number.
    pub ino: u64,
    /// Major of the device.
    pub dev_major: u32,
    /// Minor of the device.
    pub dev_minor: u32,
}

/// A pipe whose ends are close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }.into())?;
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits for the child `pid` to end and returns its wait status.
pub fn reap(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid int for the kernel to fill.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r >= 0 {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Reads one native-endian i32 from `fd`, as a child process reports it.
pub fn read_i32(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        // SAFETY: the pointer and length describe the unread tail of `buf`.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf[got..].as_mut_ptr().cast(), 4 - got) };
        match n {
            0 => return Ok(None),
            n if n > 0 => got += n as usize,
            _ => {
                let err = io::Error::last_os_error();
                if err.raw_os_error() != Some(libc::EINTR) {
                    return Err(err);
                }
            }
        }
    }
    Ok(Some(i32::from_ne_bytes(buf)))
}

/// Reads what a child that forks a long-lived grandchild reports on one
/// pipe: the grandchild's pid (from the child) and a 0 once the grandchild
/// is set up (from the grandchild), in either order; or a negative errno
/// from the child. `Ok(Err(errno))` for a reported failure, `EIO` for a
/// pipe that ends early.
fn read_spawned(fd: BorrowedFd<'_>) -> io::Result<Result<i32, i32>> {
    let eio = || io::Error::from_raw_os_error(libc::EIO);
    let first = read_i32(fd)?.ok_or_else(eio)?;
    if first < 0 {
        return Ok(Err(-first));
    }
    let second = read_i32(fd)?.ok_or_else(eio)?;
    match (first, second) {
        (0, pid) | (pid, 0) if pid > 0 => Ok(Ok(pid)),
        (_, errno) if errno < 0 => Ok(Err(-errno)),
        _ => Err(eio()),
    }
}

/// A long-lived grandchild of the daemon: its pid in the daemon's pid
/// namespace, and the write end of its control pipe. It exits once that end
/// is closed (see [`Child::hold`], [`Child::keep_pid_namespace`]).
#[derive(Debug)]
pub struct Resident {
    /// The grandchild's pid.
    pub pid: i32,
    /// Closing this tells it to leave.
    pub control: OwnedFd,
}

/// Starts a [`Resident`] in two steps. A child runs `prepare` (joining or
/// unsharing namespaces, which its children inherit, pid and time included)
/// and forks the grandchild; the grandchild closes every descriptor but its
/// two pipes and runs `resident(control, ready)`, which must report on
/// `ready` once it is set up. Returns only when it is, or `Ok(Err(errno))`
/// if `prepare` or the fork failed.
///
/// # Safety
///
/// Both closures are restricted as for [`spawn_child`].
pub unsafe fn spawn_resident(
    prepare: impl FnOnce(&Child) -> Result<(), i32>,
    resident: fn(&Child, RawFd, RawFd) -> !,
) -> io::Result<Result<Resident, i32>> {
    let (ready_r, ready_w) = pipe()?;
    let (control_r, control_w) = pipe()?;
    let (w, r) = (ready_w.as_raw_fd(), control_r.as_raw_fd());
    let (unused_r, unused_w) = (ready_r.as_raw_fd(), control_w.as_raw_fd());
    // SAFETY: the closure makes only the calls of `Child` (closing, the
    // caller's `prepare`, a raw fork, reporting), and the caller vouches
    // for `prepare` and `resident`.
    let child = unsafe {
        spawn_child(false, |c| {
            // The child's copies of these ends would keep the pipes from ever
            // reaching EOF.
            c.close(unused_r);
            c.close(unused_w);
            if let Err(errno) = prepare(c) {
                c.report(w, -errno);
                return 1;
            }
            match c.fork() {
                Ok(0) => {
                    c.close_all_but(r, w);
                    resident(c, r, w)
                }
                Ok(pid) => c.report(w, pid),
                Err(errno) => c.report(w, -errno),
            }
            0
        })
    }?;
    drop(ready_w);
    drop(control_r);
    let _ = reap(child);
    let spawned = read_spawned(ready_r.as_fd())?;
    Ok(spawned.map(|pid| Resident {
        pid,
        control: control_w,
    }))
}

/// The byte a keeper reads on its control pipe when it is to outlive the
/// daemon (see [`Child::keep_pid_namespace`], [`Child::hold_mount`]).
pub const OUTLIVE_DAEMON: u8 = b'P';

/// What a forked child may do: only async-signal-safe calls through the
/// functions of [`Child`]. It never returns; it ends with `_exit`.
pub struct Child {
    /// Where the command line lies in this process's memory, as read by
    /// the parent before the fork (see [`argv_region`]).
    argv: Option<(usize, usize)>,
}

/// Where this process's command line (its argument strings, one after the
/// other) lies in its memory: `arg_start` and `arg_end` of
/// `/proc/self/stat`, read once.
fn argv_region() -> Option<(usize, usize)> {
    static REGION: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *REGION.get_or_init(|| {
        let (start, end) = crate::procfs::Stat::read_self().ok()?.args?;
        (start < end).then_some((start, end))
    })
}

impl Child {
    /// `unshare(flags)`, the errno on failure.
    pub fn unshare(&self, flags: i32) -> Result<(), i32> {
        // SAFETY: unshare takes an integer and only changes this process.
        ret(unsafe { libc::unshare(flags) })
    }

    /// `setns(fd, nstype)`, the errno on failure.
    pub fn setns(&self, fd: RawFd, nstype: i32) -> Result<(), i32> {
        // SAFETY: setns takes two integers; a stale fd only yields EBADF.
        ret(unsafe { libc::setns(fd, nstype) })
    }

    /// `mount(NULL, "/", NULL, MS_REC|MS_PRIVATE, NULL)`.
    pub fn make_root_private(&self) -> Result<(), i32> {
        // SAFETY: constant NUL-terminated strings and null pointers, which
        // mount(2) accepts for a propagation change.
        ret(unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        })
    }

    /// Lazily unmounts `path`, ignoring failure (it may not be mounted).
    pub fn detach(&self, path: &CStr) {
        // SAFETY: `path` is NUL-terminated and outlives the call.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }

    /// `fchdir(fd)` then `chroot(".")` when `chroot` is set.
    pub fn chdir_fd(&self, fd: RawFd, chroot: bool) -> Result<(), i32> {
        // SAFETY: fchdir takes an integer.
        ret(unsafe { libc::fchdir(fd) })?;
        if chroot {
            // SAFETY: a constant NUL-terminated path.
            ret(unsafe { libc::chroot(c".".as_ptr()) })?;
        }
        Ok(())
    }

    /// Sets the filesystem uid and gid used for permission checks.
    pub fn set_fs_ids(&self, uid: u32, gid: u32) {
        // SAFETY: setfsgid/setfsuid take integers and cannot fail in a way
        // that matters here: a refused change leaves stricter ids in place.
        unsafe {
            libc::setfsgid(gid);
            libc::setfsuid(uid);
        }
    }

    /// `open(path, O_RDONLY|O_CLOEXEC|O_NOCTTY)`, the new fd or the errno.
    pub fn open(&self, path: &CStr) -> Result<RawFd, i32> {
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if fd < 0 { Err(errno()) } else { Ok(fd) }
    }

    /// `openat(dir, name, O_PATH)`, not following a final symbolic link
    /// unless `follow`: opens nothing (no FIFO blocks, no device runs).
    pub fn open_path_at(&self, dir: RawFd, name: &CStr, follow: bool) -> Result<RawFd, i32> {
        let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::openat(
                dir,
                name.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC | nofollow,
            )
        };
        if fd < 0 { Err(errno()) } else { Ok(fd) }
    }

    /// Type, inode and device of `fd` itself, from the kernel's cached
    /// attributes (a FUSE file's daemon is not asked).
    pub fn statx(&self, fd: RawFd) -> Result<Stat, i32> {
        // SAFETY: statx is plain data; all-zero is a valid value.
        let mut st: libc::statx = unsafe { std::mem::zeroed() };
        // SAFETY: an empty path with AT_EMPTY_PATH names `fd`; `st` is a
        // live statx the kernel fills.
        let r = unsafe {
            libc::statx(
                fd,
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | libc::AT_STATX_DONT_SYNC | libc::AT_SYMLINK_NOFOLLOW,
                libc::STATX_TYPE | libc::STATX_INO,
                &mut st,
            )
        };
        ret(r)?;
        Ok(Stat {
            mode: st.stx_mode,
            ino: st.stx_ino,
            dev_major: st.stx_dev_major,
            dev_minor: st.stx_dev_minor,
        })
    }

    /// The filesystem type (`f_type`) of `fd`.
    pub fn fs_magic(&self, fd: RawFd) -> Result<i64, i32> {
        // SAFETY: statfs is plain data; all-zero is a valid value.
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `st` is a live statfs the kernel fills.
        ret(unsafe { libc::fstatfs(fd, &mut st) })?;
        #[allow(clippy::unnecessary_cast)]
        Ok(st.f_type as i64)
    }

    /// The target of the symbolic link `fd` (opened with `O_PATH |
    /// O_NOFOLLOW`), into `buf`: its length.
    pub fn read_link(&self, fd: RawFd, buf: &mut [u8]) -> Result<usize, i32> {
        // SAFETY: an empty path names `fd` itself; the kernel writes at most
        // `buf.len()` bytes into `buf`.
        let n = unsafe { libc::readlinkat(fd, c"".as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(errno())
        } else if n as usize == buf.len() {
            Err(libc::ENAMETOOLONG)
        } else {
            Ok(n as usize)
        }
    }

    /// Opens the file `fd` (an `O_PATH` descriptor) for reading, through
    /// `self/fd/N` of the procfs directory `proc`: an open of the file
    /// itself, checked against this process's credentials.
    pub fn reopen(&self, proc: RawFd, fd: RawFd) -> Result<RawFd, i32> {
        let mut path = *b"self/fd/\0\0\0\0\0\0\0\0\0\0\0\0";
        let mut digits = [0u8; 10];
        let mut n = fd as u32;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            path[8 + i] = digits[len - 1 - i];
        }
        let Ok(path) = CStr::from_bytes_until_nul(&path) else {
            return Err(libc::EINVAL);
        };
        // SAFETY: `path` is NUL-terminated and outlives the call.
        let r = unsafe {
            libc::openat(
                proc,
                path.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOCTTY,
            )
        };
        if r < 0 { Err(errno()) } else { Ok(r) }
    }

    /// Sends one record on the socket `sock`, with `fd` attached if given.
    /// A failure leaves the parent reading EOF, which it treats as one.
    pub fn send(&self, sock: RawFd, data: &[u8], fd: Option<RawFd>) {
        // SAFETY: both descriptors are open in this child for the call.
        let (sock, fd) = unsafe {
            (
                BorrowedFd::borrow_raw(sock),
                fd.map(|f| BorrowedFd::borrow_raw(f)),
            )
        };
        let _ = crate::injector::sys::send(sock, data, fd);
    }

    /// Writes one i32 to `fd` for the parent to read with [`read_i32`].
    pub fn report(&self, fd: RawFd, value: i32) {
        let buf = value.to_ne_bytes();
        // SAFETY: `buf` is 4 valid bytes. A failed write leaves the parent
        // reading EOF, which it treats as a failure.
        unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    }

    /// Blocks until `fd` reaches EOF (the parent closed the other end).
    pub fn wait_eof(&self, fd: RawFd) {
        let mut b = 0u8;
        loop {
            // SAFETY: reads at most one byte into `b`.
            let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
            if n == 0 || (n < 0 && errno() != libc::EINTR) {
                return;
            }
        }
    }

    /// A fork by the raw system call: the child's pid, or 0 in the child.
    ///
    /// Not libc's fork(): it runs atfork handlers that take libc's internal
    /// locks, and this process is a copy of a multithreaded one, made while
    /// other threads may have held them. Copied held locks never unlock.
    pub fn fork(&self) -> Result<i32, i32> {
        // SAFETY: clone without CLONE_VM and with a null stack behaves as
        // fork; the child continues on a copy of this stack and, like its
        // parent, only makes the async-signal-safe calls of `Child`.
        let pid = unsafe {
            libc::syscall(
                libc::SYS_clone,
                libc::SIGCHLD as libc::c_ulong,
                0usize,
                0usize,
                0usize,
                0usize,
            )
        };
        if pid < 0 {
            Err(errno())
        } else {
            Ok(pid as i32)
        }
    }

    /// Closes `fd` (in a child without `CLONE_FILES`: only its own copy).
    pub fn close(&self, fd: RawFd) {
        // SAFETY: close takes an integer; the child never uses `fd` again.
        unsafe { libc::close(fd) };
    }

    /// Closes every descriptor but `a` and `b`.
    pub fn close_all_but(&self, a: RawFd, b: RawFd) {
        let (lo, hi) = if a < b {
            (a as u32, b as u32)
        } else {
            (b as u32, a as u32)
        };
        let ranges = [
            (0, lo.checked_sub(1)),
            (lo + 1, hi.checked_sub(1)),
            (hi + 1, Some(u32::MAX)),
        ];
        for (first, last) in ranges {
            if let Some(last) = last.filter(|&last| last >= first) {
                // SAFETY: close_range takes integers; it closes descriptors
                // this child owns and will never use again.
                unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
            }
        }
    }

    /// Closes every descriptor but those of `keep` (which it sorts).
    pub fn close_all_except(&self, keep: &mut [RawFd]) {
        keep.sort_unstable();
        let mut first = 0u32;
        for &fd in keep.iter() {
            let fd = fd as u32;
            if fd > first {
                // SAFETY: close_range takes integers; it closes descriptors
                // this child owns and will never use again.
                unsafe { libc::syscall(libc::SYS_close_range, first, fd - 1, 0u32) };
            }
            first = first.max(fd + 1);
        }
        // SAFETY: as above.
        unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) };
    }

    /// Names this process, tells the parent through `ready` that it is set
    /// up (a 0 after whatever was reported there), and closes `ready`.
    fn settle(&self, name: &CStr, ready: RawFd) {
        self.rename(name);
        self.report(ready, 0);
        self.close(ready);
    }

    /// Reads one byte from `fd`: `None` at EOF or on an error.
    pub fn read_byte(&self, fd: RawFd) -> Option<u8> {
        let mut b = 0u8;
        loop {
            // SAFETY: reads at most one byte into `b`.
            let n = unsafe { libc::read(fd, (&raw mut b).cast(), 1) };
            match n {
                1 => return Some(b),
                n if n < 0 && errno() == libc::EINTR => {}
                _ => return None,
            }
        }
    }

    /// Sets this process's command name (at most 15 bytes are kept) and
    /// makes its command line that name alone, so that `pidof nsproxyfs`
    /// and `pgrep -x nsproxyfs` never take it for the daemon.
    fn rename(&self, name: &CStr) {
        // SAFETY: prctl(PR_SET_NAME) copies at most 16 bytes from `name`.
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
        let Some((start, end)) = self.argv else {
            return;
        };
        let bytes = name.to_bytes_with_nul();
        let len = bytes.len().min(end - start);
        // SAFETY: [start, end) holds this process's argument strings, put
        // on its stack by the kernel at exec: mapped, writable, and, in
        // this child made without CLONE_VM, a private copy. Nothing in the
        // child reads the arguments again. The name is cut to the region,
        // whose last byte stays NUL so the kernel reads it as plain
        // arguments.
        unsafe {
            let region = start as *mut u8;
            std::ptr::write_bytes(region, 0, end - start);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), region, len.saturating_sub(1));
        }
        // Shrinking the region drops the trailing NULs from
        // /proc/PID/cmdline. It needs CAP_SYS_RESOURCE, which a holder in
        // a container's user namespace lacks: the NULs then stay.
        // SAFETY: prctl(PR_SET_MM_ARG_END) takes integers; the new end lies
        // within the same mapped region, after its start.
        unsafe {
            libc::prctl(
                libc::PR_SET_MM,
                libc::PR_SET_MM_ARG_END as libc::c_ulong,
                (start + len) as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
    }

    /// Runs as init of a pid namespace, named `nsproxyfs-pid1`, and reaps
    /// orphans. It stays while the daemon holds `control` open; once the
    /// daemon writes [`OUTLIVE_DAEMON`] there, it stays until a SIGTERM
    /// comes from outside its pid namespace (one sent from inside is
    /// ignored), whatever happens to the daemon. Then it renames itself
    /// `nsproxyfs-exit` and exits as soon as no other process is left in
    /// the namespace. Reports through `ready` once it is set up.
    pub fn keep_pid_namespace(&self, control: RawFd, ready: RawFd) -> ! {
        // SAFETY: signal() with SIG_IGN installs no handler code. Ignoring
        // SIGCHLD makes the kernel reap this init's children by itself.
        unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
        // SAFETY: `term` is a sigset_t that sigemptyset initialises before
        // sigaddset and sigprocmask read it; these calls only touch it and
        // this thread's signal mask. A blocked SIGTERM is queued even for
        // an init (the kernel drops only unblocked default-action signals),
        // so sigwaitinfo below receives it.
        let term = unsafe {
            let mut term: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut term);
            libc::sigaddset(&mut term, libc::SIGTERM);
            libc::sigprocmask(libc::SIG_BLOCK, &term, std::ptr::null_mut());
            term
        };
        self.settle(c"nsproxyfs-pid1", ready);
        if self.read_byte(control) == Some(OUTLIVE_DAEMON) {
            self.close(control);
            loop {
                // SAFETY: an all-zero siginfo_t is a valid value for the
                // kernel to overwrite.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: `term` is initialised; `info` is valid to fill.
                let sig = unsafe { libc::sigwaitinfo(&term, &mut info) };
                // SAFETY: si_pid is the union member the kernel fills for
                // signals sent by a process (si_code <= 0: SI_USER,
                // SI_QUEUE, SI_TKILL). A sender outside this pid namespace
                // is seen as pid 0.
                if sig == libc::SIGTERM && info.si_code <= 0 && unsafe { info.si_pid() } == 0 {
                    break;
                }
            }
        }
        self.rename(c"nsproxyfs-exit");
        loop {
            // SAFETY: kill(-1, 0) sends nothing; from init of a pid namespace
            // it answers ESRCH once no other process is left in it.
            let r = unsafe { libc::kill(-1, 0) };
            if r < 0 && errno() == libc::ESRCH {
                self.exit(0);
            }
            let second = libc::timespec {
                tv_sec: 1,
                tv_nsec: 0,
            };
            // SAFETY: `second` is a valid timespec; no remainder is wanted.
            unsafe { libc::nanosleep(&second, std::ptr::null_mut()) };
        }
    }

    /// Sits in its mount namespace, named `nsproxyfs-mnt`, to keep it alive.
    /// Exits when the daemon closes `control` or dies, until the daemon
    /// writes [`OUTLIVE_DAEMON`] there; from then on it stays until it is
    /// killed (the daemon sends SIGKILL; SIGTERM works too). Reports
    /// through `ready` once it is set up.
    pub fn hold_mount(&self, control: RawFd, ready: RawFd) -> ! {
        // SAFETY: `none` is initialised by sigemptyset before sigprocmask
        // reads it; unblocking every signal gives SIGTERM its default
        // action again (the daemon's threads block it).
        unsafe {
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        }
        self.settle(c"nsproxyfs-mnt", ready);
        if self.read_byte(control) == Some(OUTLIVE_DAEMON) {
            self.close(control);
            loop {
                // SAFETY: pause() only waits for a signal.
                unsafe { libc::pause() };
            }
        }
        self.exit(0)
    }

    /// Waits, named `nsproxyfs-hold`, until `control` reaches EOF; then exits.
    ///
    /// It gives up every capability first: a process joins the holder's
    /// namespaces with `setns(pidfd)`, which needs ptrace read access to
    /// the holder, and a root process lacking some capability (the
    /// capability-superset rule) could not otherwise read a full-capability
    /// holder. Nothing the holder does needs one.
    pub fn hold(&self, control: RawFd, ready: RawFd) -> ! {
        self.drop_capabilities();
        // The daemon is not dumpable (see `daemon::run`), and a fork keeps
        // that; a holder must be, or joining it would need CAP_SYS_PTRACE.
        // SAFETY: prctl(PR_SET_DUMPABLE) takes integers; this process has
        // its own memory, so only it changes.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
        self.settle(c"nsproxyfs-hold", ready);
        self.wait_eof(control);
        self.exit(0)
    }

    /// Empties this process's effective, permitted and inheritable
    /// capability sets.
    fn drop_capabilities(&self) {
        #[repr(C)]
        struct Header {
            version: u32,
            pid: libc::c_int,
        }
        let header = Header {
            version: 0x2008_0522,
            pid: 0,
        };
        let data = [0u32; 6];
        // SAFETY: capset reads the header and, for version 3, two records of
        // three u32s; both are live locals of that size.
        unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    }

    /// `_exit(code)`.
    pub fn exit(&self, code: i32) -> ! {
        // SAFETY: _exit ends the process without running any user code.
        unsafe { libc::_exit(code) }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn ret(r: libc::c_int) -> Result<(), i32> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// Forks a child that runs `body` and exits with its return value. With
/// `share_files`, the child shares this process's descriptor table
/// (`CLONE_FILES`), so descriptors it opens appear here.
///
/// # Safety
///
/// `body` runs in a copy of a multithreaded process, made while other
/// threads may have held locks (the allocator's among them) that will never
/// be released in the copy: it must make only async-signal-safe calls (those
/// [`Child`] offers, and raw system calls), must not allocate, lock or
/// unwind, and must not touch state other threads were changing.
pub unsafe fn spawn_child(share_files: bool, body: impl FnOnce(&Child) -> i32) -> io::Result<i32> {
    let argv = argv_region();
    let flags = libc::SIGCHLD as libc::c_ulong
        | if share_files {
            libc::CLONE_FILES as libc::c_ulong
        } else {
            0
        };
    // SAFETY: clone without CLONE_VM and with a null stack behaves as fork:
    // the child gets a copy-on-write copy of memory and continues on a copy
    // of this stack. The child only runs `body`, which is restricted to
    // async-signal-safe calls (see above), then _exit()s without unwinding.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        0 => {
            let child = Child { argv };
            let code = body(&child);
            child.exit(code)
        }
        p if p > 0 => Ok(p as i32),
        _ => Err(io::Error::last_os_error()),
    }
}

/// Bind-mounts the namespace `fd` onto the existing file `target`.
pub fn bind_mount_fd(fd: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    let source = format!("/proc/self/fd/{}\0", fd.as_raw_fd());
    // SAFETY: both strings are NUL-terminated and outlive the call; the
    // other arguments are null, as a bind mount allows.
    check(
        unsafe {
            libc::mount(
                source.as_ptr().cast(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        }
        .into(),
    )
    .map(drop)
}

/// Lazily unmounts `target`.
pub fn detach(target: &CStr) -> io::Result<()> {
    // SAFETY: `target` is NUL-terminated and outlives the call.
    check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) }.into()).map(drop)
}

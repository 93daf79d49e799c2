//! What a child cloned from the multithreaded daemon may do, and the
//! long-lived residents (holders, keepers) such a child becomes.
//!
//! The child is a copy of a process whose other threads may have held
//! locks (the allocator's, libc's) at the moment of the clone; copied held
//! locks never unlock. So nothing here allocates, locks or unwinds, and
//! every call is a raw system call or an async-signal-safe libc function.
//! nix is not used: its wrappers may allocate (a path turned into a
//! `CString`, a control buffer in a `Vec`) and its credential calls go
//! through libc's, which broadcast to threads the child does not have.

use std::ffi::CStr;
use std::os::fd::{BorrowedFd, RawFd};

use super::errno;

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

/// The byte a keeper reads on its control pipe when it is to outlive the
/// daemon (see [`Child::keep_pid_namespace`], [`Child::hold_mount`]).
pub const OUTLIVE_DAEMON: u8 = b'P';

/// What a forked child may do: only async-signal-safe calls through the
/// functions of [`Child`]. It never returns; it ends with `_exit`.
pub struct Child {
    /// Where the command line lies in this process's memory, as read by
    /// the parent before the fork (see [`super::process::spawn_resident`]).
    argv: Option<(usize, usize)>,
}

impl Child {
    /// The child's view of itself; only [`super::process`] makes one, in
    /// the child.
    pub(super) fn new(argv: Option<(usize, usize)>) -> Child {
        Child { argv }
    }
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
        let _ = super::socket::send(sock, data, fd);
    }

    /// Writes one i32 to `fd` for the parent to read with [`super::fs::read_i32`].
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

fn ret(r: libc::c_int) -> Result<(), i32> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

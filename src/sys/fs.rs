//! Files: opening (relative to a directory, beneath one), attributes from
//! the kernel's cache, symbolic links read into a caller's buffer, pipes,
//! waiting for input, advisory locks.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::stat::Mode;

use super::check;

/// `openat(dir, path, flags | O_CLOEXEC | O_NOCTTY)`; `None` for the
/// working directory.
pub fn open_at(dir: Option<BorrowedFd<'_>>, path: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let dir = dir.unwrap_or(nix::fcntl::AT_FDCWD);
    let flags = OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    Ok(nix::fcntl::openat(dir, path, flags, Mode::empty())?)
}

/// `openat2(dir, path)` for reading, resolved beneath `dir` without
/// crossing a mount point or following any symbolic link; non-blocking, so
/// that a FIFO or device does not hold the open.
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr) -> io::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(
            ResolveFlag::RESOLVE_NO_XDEV
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_BENEATH,
        );
    Ok(nix::fcntl::openat2(dir, path, how)?)
}

/// The device (major, minor) of the file `fd`, from the kernel's cached
/// attributes: a file of a FUSE mount is not asked of its daemon. nix has
/// no `statx`.
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

/// The target of the symbolic link `path` (relative to `dir`, or the
/// working directory for `None`), into `buf`: its length. Raw, because
/// nix's `readlinkat` returns an allocated string and the `/proc` readers'
/// hot paths allocate nothing.
pub fn read_link_at(dir: Option<BorrowedFd<'_>>, path: &CStr, buf: &mut [u8]) -> io::Result<usize> {
    let dir = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: `path` is NUL-terminated and outlives the call; the kernel
    // writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::readlinkat(dir, path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    check(n as libc::c_long).map(|n| n as usize)
}

/// A pipe whose ends are close-on-exec: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Reads one native-endian i32 from `fd`, as a child process reports it;
/// `None` at EOF.
pub fn read_i32(fd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => return Ok(None),
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(i32::from_ne_bytes(buf)))
}

/// Waits up to `limit` for `fd` to be readable (or at EOF); false if the
/// time ran out.
pub fn wait_readable(fd: BorrowedFd<'_>, limit: Duration) -> io::Result<bool> {
    wait_for(&[fd], PollFlags::POLLIN, Some(limit))
}

/// The entries of the `/proc` directory `path` (`/proc/PID/task`,
/// `/proc/PID/fd`) whose names are numbers, unsorted: one `open`,
/// `getdents64` until it returns nothing (a short read does not mean the
/// end: the kernel stops filling after one entry when a signal is pending
/// for the reader), one `close`.
pub fn proc_numbers(path: &CStr) -> io::Result<Vec<i64>> {
    let dir = open_at(None, path, libc::O_RDONLY | libc::O_DIRECTORY)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut found = Vec::new();
    loop {
        // SAFETY: getdents64 writes at most `buf.len()` bytes of dirent
        // records into `buf`, which lives across the call, and reads the
        // open directory `dir`.
        let n = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
        let n = usize::try_from(check(n)?).unwrap_or(0);
        let mut at = 0;
        // Each record: d_ino (8), d_off (8), d_reclen (2), d_type (1),
        // then the NUL-terminated name.
        while at + 19 <= n {
            let reclen = usize::from(u16::from_ne_bytes([buf[at + 16], buf[at + 17]]));
            if reclen < 19 || at + reclen > n {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            let name = &buf[at + 19..at + reclen];
            let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
            if let Some(number) = std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()) {
                found.push(number);
            }
            at += reclen;
        }
        if n == 0 {
            return Ok(found);
        }
    }
}

/// Waits up to `limit` for any of `fds` to become readable; `false` if
/// none did.
pub fn wait_readable_any(fds: &[BorrowedFd<'_>], limit: Duration) -> io::Result<bool> {
    wait_for(fds, PollFlags::POLLIN, Some(limit))
}

/// Waits, for ever, for `fd` to report an exceptional condition
/// (`POLLPRI`: for `/proc/PID/mountinfo`, a change of the mount table).
pub fn wait_priority(fd: BorrowedFd<'_>) -> io::Result<()> {
    wait_for(&[fd], PollFlags::POLLPRI, None).map(drop)
}

/// `poll` on descriptors, retried on EINTR until `limit` has passed.
fn wait_for(
    fds: &[BorrowedFd<'_>],
    events: PollFlags,
    limit: Option<Duration>,
) -> io::Result<bool> {
    let deadline = limit.map(|limit| Instant::now() + limit);
    loop {
        let timeout = match deadline {
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                let ms = left.as_millis().min(i32::MAX as u128);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
            None => PollTimeout::NONE,
        };
        let mut polled: Vec<PollFd<'_>> = fds.iter().map(|&fd| PollFd::new(fd, events)).collect();
        match nix::poll::poll(&mut polled, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes an exclusive `flock` on `fd` without waiting: `EWOULDBLOCK` if
/// another open file holds it. Raw, because nix's `Flock` owns the file
/// (the lock here is held by a descriptor the daemon keeps) and its
/// `flock` is deprecated.
pub fn try_lock(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: flock takes a borrowed descriptor and a constant.
    check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }.into()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn std_numbers(path: &str) -> Vec<i64> {
        let mut v: Vec<i64> = std::fs::read_dir(path)
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn proc_numbers_lists_what_readdir_lists() {
        // Enough descriptors (about 22 KiB of entries) that the listing
        // takes more than one read, and fewer than the usual limit of 1,024.
        let files: Vec<std::fs::File> = (0..900)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let listed = |path: &str| {
            let c = std::ffi::CString::new(path).unwrap();
            let mut v = proc_numbers(&c).unwrap();
            v.sort_unstable();
            v
        };
        let ours = listed("/proc/self/fd");
        let theirs = std_numbers("/proc/self/fd");
        // The listings' own descriptors come and go; the files stay.
        for f in &files {
            let fd = i64::from(f.as_raw_fd());
            assert!(ours.contains(&fd) && theirs.contains(&fd), "fd {fd}");
        }
        assert!(ours.len() >= files.len());
        assert!(ours.len().abs_diff(theirs.len()) <= 1);
        assert_eq!(listed("/proc/self/task"), std_numbers("/proc/self/task"));
        let none = std::ffi::CString::new("/proc/self/no-such-dir").unwrap();
        assert!(proc_numbers(&none).is_err());
    }
    use std::os::fd::AsFd;

    #[test]
    fn opens_beneath_a_directory_without_following_links() {
        let dir = std::env::temp_dir().join(format!("nsproxyfs-sys-fs-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        let d = std::fs::File::open(&dir).unwrap();
        let opened = open_beneath(d.as_fd(), c"file").map(drop);
        let linked = open_beneath(d.as_fd(), c"link").map_err(|e| e.raw_os_error());
        let above = open_beneath(d.as_fd(), c"../file").map_err(|e| e.raw_os_error());
        let mut buf = [0u8; 16];
        let target = read_link_at(Some(d.as_fd()), c"link", &mut buf).map(|n| buf[..n].to_vec());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(opened.is_ok());
        assert_eq!(linked.unwrap_err(), Some(libc::ELOOP));
        assert_eq!(above.unwrap_err(), Some(libc::EXDEV));
        assert_eq!(target.unwrap(), b"file");
    }

    #[test]
    fn a_pipe_reads_what_was_written_and_waits_for_it() {
        let (r, w) = pipe().unwrap();
        assert!(!wait_readable(r.as_fd(), Duration::from_millis(1)).unwrap());
        nix::unistd::write(&w, &7i32.to_ne_bytes()).unwrap();
        assert!(wait_readable(r.as_fd(), Duration::from_secs(5)).unwrap());
        assert_eq!(read_i32(r.as_fd()).unwrap(), Some(7));
        drop(w);
        assert_eq!(read_i32(r.as_fd()).unwrap(), None);
    }
}

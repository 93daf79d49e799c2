//! Opening a path a caller wrote, exactly as the caller would open it.
//!
//! The path is resolved by a forked child of the daemon that has joined the
//! caller's mount namespace, taken its root and working directory, and
//! then its credentials (see [`super::creds`]), so every permission on the
//! way is the kernel's decision for the caller. The child walks the path
//! one component at a time with `O_PATH | O_NOFOLLOW`, which opens nothing
//! (no FIFO blocks, no device's open runs), and:
//!
//! * refuses, before any lookup inside it, a path that enters this
//!   filesystem's own mount (the daemon would be asked to answer itself);
//! * follows symbolic links itself (at most [`MAX_LINKS`]), except in
//!   procfs, where the kernel follows them (`/proc/PID/ns/*`, `fd/N`,
//!   `root`, `cwd` are "magic" links with their own access checks);
//! * stops at `self` and `thread-self` of a procfs root, which the kernel
//!   would resolve to the child itself: the daemon translates them into the
//!   writer's own pid in that procfs's pid namespace, and a new child
//!   carries on from there;
//! * opens the end for reading only when it is a regular file of nsfs.
//!
//! The daemon waits [`LIMIT`] for an answer; a child stuck on a dead
//! filesystem is killed, and the write fails with `ETIMEDOUT`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::Duration;

use super::creds::Credentials;
use crate::sys::{self, child::Child};

/// How many symbolic links one resolution follows, as the kernel's own
/// limit (`ELOOP` beyond).
pub const MAX_LINKS: u32 = 40;
/// How long the daemon waits for one resolution.
pub const LIMIT: Duration = Duration::from_secs(5);
/// The longest path handled, the kernel's `PATH_MAX`.
const PATH_MAX: usize = 4096;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// The inode number of every procfs root.
const PROC_ROOT_INO: u64 = 1;

/// Who opens, and where they stand.
#[derive(Debug)]
pub struct Opener {
    /// The caller's thread id in the daemon's pid namespace.
    pub tid: u32,
    /// The caller's credentials.
    pub creds: Credentials,
    /// The device (major, minor) of this filesystem's own mount, which a
    /// path must not enter.
    pub own_dev: (u32, u32),
}

/// How a resolution ended.
#[derive(Debug)]
pub enum Resolved {
    /// The namespace file, open for reading.
    File(OwnedFd),
    /// The kernel refused a step: its errno.
    Failed(i32),
    /// The path leads somewhere no namespace can be: why.
    Refused(&'static str),
    /// No answer within [`LIMIT`].
    TimedOut,
}

/// Record tags from the child.
const DONE: i32 = 0;
const FAILED: i32 = 1;
const REFUSED: i32 = 2;
const NEED_SELF: i32 = 3;
const NEED_THREAD_SELF: i32 = 4;

/// Why a path was refused, as the child reports it (an index into this).
const REASONS: [&str; 4] = [
    "it lies inside this filesystem's own mount",
    "it is not a regular file (a FIFO, device, socket or directory)",
    "it is not a namespace file",
    "the path is too long",
];
const INSIDE_MOUNT: i32 = 0;
const NOT_REGULAR: i32 = 1;
const NOT_NSFS: i32 = 2;
const TOO_LONG: i32 = 3;

/// Opens `path` as the caller of `opener` would, and returns it if it is a
/// namespace file.
pub fn open(opener: &Opener, path: &[u8]) -> io::Result<Resolved> {
    let proc = format!("/proc/{}", opener.tid);
    let open_proc = |entry: &str, flags: i32| -> io::Result<OwnedFd> {
        let p = std::ffi::CString::new(format!("{proc}/{entry}"))?;
        sys::fs::open_at(None, &p, flags)
    };
    let mnt = open_proc("ns/mnt", libc::O_RDONLY)?;
    // The writer's root and working directory, as O_PATH: neither is
    // opened, nor (on this filesystem's own mount) asked of the daemon.
    let root = open_proc("root", libc::O_PATH)?;
    let relative = !path.starts_with(b"/");
    let mut start = if relative {
        open_proc("cwd", libc::O_PATH)?
    } else {
        root.try_clone()?
    };
    for dir in [&root, &start] {
        if sys::fs::device_of(dir.as_fd())? == opener.own_dev {
            return Ok(Resolved::Refused(REASONS[INSIDE_MOUNT as usize]));
        }
    }
    let own_proc = sys::fs::open_at(None, c"/proc", libc::O_PATH | libc::O_DIRECTORY)?;
    let mut path = path.to_vec();
    let mut links = MAX_LINKS;
    // One bound for the whole resolution: each `self` on the way takes a
    // new child, and up to MAX_LINKS of them must not make it 40 bounds.
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        if path.len() > PATH_MAX {
            return Ok(Resolved::Refused(REASONS[TOO_LONG as usize]));
        }
        let step = Step {
            mnt: mnt.as_fd(),
            root: root.as_fd(),
            start: start.as_fd(),
            own_proc: own_proc.as_fd(),
            creds: &opener.creds,
            own_dev: opener.own_dev,
            path: &path,
            links,
        };
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some((header, rest, fd)) = run_child(&step, left)? else {
            return Ok(Resolved::TimedOut);
        };
        let [tag, a, b] = header;
        match (tag, fd) {
            (DONE, Some(fd)) => return Ok(Resolved::File(fd)),
            (FAILED, _) => return Ok(Resolved::Failed(a)),
            (REFUSED, _) => {
                let why = REASONS.get(a as usize).copied().unwrap_or("refused");
                return Ok(Resolved::Refused(why));
            }
            (NEED_SELF | NEED_THREAD_SELF, Some(procfs)) => {
                let Some(own) = writer_in(procfs.as_fd(), opener.tid, tag == NEED_THREAD_SELF)
                else {
                    // The writer is not visible in that procfs, so `self`
                    // means nothing to it there either.
                    return Ok(Resolved::Failed(libc::ENOENT));
                };
                let mut next = own.into_bytes();
                if !rest.is_empty() {
                    next.push(b'/');
                    next.extend_from_slice(&rest);
                }
                path = next;
                start = procfs;
                links = b as u32;
            }
            _ => return Err(io::Error::from_raw_os_error(libc::EIO)),
        }
    }
}

/// What `self` (or `thread-self`) of the procfs whose root is `procfs`
/// would name for the writer `tid` (daemon pid namespace): its thread
/// group id, or `TGID/task/TID`, in that procfs's pid namespace.
///
/// The writer has one id per pid namespace from the daemon's down to its
/// own. The procfs's namespace is the level at which the writer's entry
/// there is the writer itself: the same ids from that level down, and the
/// same start time. Nothing is read that needs rights over any process, so
/// this works whoever that namespace's init is. A procfs of a pid
/// namespace above the daemon's is not handled (the writer's id there is
/// unknown to the daemon): `None`, as for a writer it cannot see.
fn writer_in(procfs: BorrowedFd<'_>, tid: u32, thread: bool) -> Option<String> {
    use crate::procfs::{Stat, Status};
    // The writer's procfs is reached through the writer's mounts, which may
    // cover `PID/status` with a FIFO or a device (the daemon's open or read
    // would never end) or with another file: no mount point is crossed, and
    // no link followed.
    let read_there = |path: String| -> Option<Vec<u8>> {
        use std::io::Read;
        let path = std::ffi::CString::new(path).ok()?;
        let mut file = std::fs::File::from(sys::fs::open_beneath(procfs, &path).ok()?);
        let mut text = Vec::new();
        file.read_to_end(&mut text).ok()?;
        Some(text)
    };
    let (pids, tgids) = Status::read(tid as i32).ok()?.ns_ids()?;
    let started = Stat::read(tid as i32).ok()?.start_time;
    for level in (0..pids.len()).rev() {
        let (pid, tgid) = (pids[level], *tgids.get(level)?);
        let Some(there) = read_there(format!("{pid}/status")) else {
            continue;
        };
        let same_ids = String::from_utf8(there)
            .ok()
            .and_then(|t| Status::new(t).ns_ids())
            .is_some_and(|(p, _)| p[..] == pids[level..]);
        let same_start = read_there(format!("{pid}/stat"))
            .and_then(|t| Stat::parse(&t))
            .map(|s| s.start_time)
            == Some(started);
        if same_ids && same_start {
            return Some(if thread {
                format!("{tgid}/task/{pid}")
            } else {
                tgid.to_string()
            });
        }
    }
    None
}

/// One child's work.
struct Step<'a> {
    mnt: BorrowedFd<'a>,
    root: BorrowedFd<'a>,
    start: BorrowedFd<'a>,
    own_proc: BorrowedFd<'a>,
    creds: &'a Credentials,
    own_dev: (u32, u32),
    path: &'a [u8],
    links: u32,
}

/// A record from the child: tag and two numbers, the rest of a path, and
/// the descriptor it carried. `None` if no answer came within `limit`.
type Record = ([i32; 3], Vec<u8>, Option<OwnedFd>);

fn run_child(step: &Step<'_>, limit: Duration) -> io::Result<Option<Record>> {
    let (ours, theirs) = sys::socket::seqpacket_pair()?;
    let sock = theirs.as_raw_fd();
    // SAFETY: `walk` makes only the calls of `Child` and raw system calls
    // (taking the caller's credentials included), on fixed buffers of its
    // own stack and on `step`, prepared before the fork; it allocates
    // nothing and does not unwind.
    let child = unsafe {
        sys::process::spawn_child(false, |c| {
            walk(c, step, sock);
            0
        })
    }?;
    drop(theirs);
    if !sys::fs::wait_readable(ours.as_fd(), limit)? {
        sys::process::kill(child, nix::sys::signal::Signal::SIGKILL);
        // A child stuck on a dead filesystem may take a while to die; it is
        // reaped aside so this request does not wait for it.
        std::thread::spawn(move || {
            let _ = sys::process::reap(child);
        });
        return Ok(None);
    }
    let mut buf = vec![0u8; 12 + 2 * PATH_MAX + 2];
    let got = sys::socket::recv(ours.as_fd(), &mut buf);
    let _ = sys::process::reap(child);
    let (n, fd) = got?;
    if n < 12 {
        return Err(io::Error::from_raw_os_error(libc::EIO));
    }
    let word = |i: usize| i32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    Ok(Some(([word(0), word(4), word(8)], buf[12..n].to_vec(), fd)))
}

/// The path still to walk, kept in a fixed buffer (the child may not
/// allocate): `buf[pos..len]`.
struct Rest {
    buf: [u8; 2 * PATH_MAX + 2],
    pos: usize,
    len: usize,
}

impl Rest {
    /// Replaces the rest with `link` + `/` + the rest; false if too long.
    fn prepend(&mut self, link: &[u8]) -> bool {
        let tail = self.len - self.pos;
        if link.len() + 1 + tail > self.buf.len() {
            return false;
        }
        self.buf.copy_within(self.pos..self.len, link.len() + 1);
        self.buf[..link.len()].copy_from_slice(link);
        self.buf[link.len()] = b'/';
        self.pos = 0;
        self.len = link.len() + 1 + tail;
        true
    }

    /// The next component (without slashes), or `None` at the end.
    fn next(&mut self) -> Option<(usize, usize)> {
        while self.pos < self.len && self.buf[self.pos] == b'/' {
            self.pos += 1;
        }
        if self.pos == self.len {
            return None;
        }
        let start = self.pos;
        while self.pos < self.len && self.buf[self.pos] != b'/' {
            self.pos += 1;
        }
        Some((start, self.pos))
    }
}

/// The child: joins the caller's place and credentials, walks, and sends
/// one record on `sock`. Only the restricted calls of [`Child`].
fn walk(c: &Child, step: &Step<'_>, sock: RawFd) {
    let report = |tag: i32, a: i32, b: i32, rest: &[u8], fd: Option<RawFd>| {
        let mut msg = [0u8; 12 + 2 * PATH_MAX + 2];
        msg[0..4].copy_from_slice(&tag.to_ne_bytes());
        msg[4..8].copy_from_slice(&a.to_ne_bytes());
        msg[8..12].copy_from_slice(&b.to_ne_bytes());
        let n = rest.len().min(msg.len() - 12);
        msg[12..12 + n].copy_from_slice(&rest[..n]);
        c.send(sock, &msg[..12 + n], fd);
    };
    let fail = |errno: i32| report(FAILED, errno, 0, &[], None);
    let refuse = |why: i32| report(REFUSED, why, 0, &[], None);
    // A copy of the daemon holds all its descriptors, and a process may
    // always open its own (`/proc/PID/fd/N` with this child's pid).
    c.close_all_except(&mut [
        step.mnt.as_raw_fd(),
        step.root.as_raw_fd(),
        step.start.as_raw_fd(),
        step.own_proc.as_raw_fd(),
        sock,
    ]);
    let joined = c
        .setns(step.mnt.as_raw_fd(), libc::CLONE_NEWNS)
        .and_then(|()| c.chdir_fd(step.root.as_raw_fd(), true))
        .and_then(|()| c.chdir_fd(step.start.as_raw_fd(), false));
    if let Err(errno) = joined {
        return fail(errno);
    }
    // SAFETY: this child exists only to open the path as the caller, and
    // exits right after.
    if let Err(errno) = unsafe { step.creds.assume() } {
        return fail(errno);
    }
    let mut rest = Rest {
        buf: [0; 2 * PATH_MAX + 2],
        pos: 0,
        len: step.path.len(),
    };
    if rest.len > PATH_MAX {
        return refuse(TOO_LONG);
    }
    rest.buf[..rest.len].copy_from_slice(step.path);
    if rest.len == 0 {
        return fail(libc::ENOENT);
    }
    let from = if rest.buf[0] == b'/' { c"/" } else { c"." };
    let mut cur = match c.open_path_at(libc::AT_FDCWD, from, true) {
        Ok(fd) => fd,
        Err(errno) => return fail(errno),
    };
    let mut links = step.links;
    loop {
        match c.statx(cur) {
            Ok(st) if (st.dev_major, st.dev_minor) == step.own_dev => return refuse(INSIDE_MOUNT),
            Ok(_) => {}
            Err(errno) => return fail(errno),
        }
        let Some((s, e)) = rest.next() else { break };
        let mut name = [0u8; 256];
        if e - s >= name.len() {
            return fail(libc::ENAMETOOLONG);
        }
        name[..e - s].copy_from_slice(&rest.buf[s..e]);
        let Ok(cname) = CStr::from_bytes_until_nul(&name) else {
            return fail(libc::EINVAL);
        };
        if cname.to_bytes() == b"." {
            continue;
        }
        // This child's own entry of a procfs (a guessed pid) would show
        // it its own namespaces (the daemon's) and pass every access
        // check: the process it names is gone once the walk is done.
        if c.fs_magic(cur) == Ok(PROC_SUPER_MAGIC)
            && c.statx(cur).is_ok_and(|s| s.ino == PROC_ROOT_INO)
        {
            let mut own = [0u8; 16];
            let own_len = match c.open_path_at(cur, c"self", false) {
                Ok(link) => {
                    let n = c.read_link(link, &mut own).unwrap_or(0);
                    c.close(link);
                    n
                }
                Err(_) => 0,
            };
            if own_len > 0 && cname.to_bytes() == &own[..own_len] {
                return fail(libc::ENOENT);
            }
        }
        let next = match c.open_path_at(cur, cname, false) {
            Ok(fd) => fd,
            Err(errno) => return fail(errno),
        };
        let st = match c.statx(next) {
            Ok(st) => st,
            Err(errno) => return fail(errno),
        };
        if (st.dev_major, st.dev_minor) == step.own_dev {
            return refuse(INSIDE_MOUNT);
        }
        if st.mode & libc::S_IFMT as u16 != libc::S_IFLNK as u16 {
            c.close(cur);
            cur = next;
            continue;
        }
        // A symbolic link.
        if links == 0 {
            return fail(libc::ELOOP);
        }
        links -= 1;
        let in_proc = c.fs_magic(cur) == Ok(PROC_SUPER_MAGIC);
        if in_proc {
            let at_root = c.statx(cur).is_ok_and(|s| s.ino == PROC_ROOT_INO);
            let tag = match cname.to_bytes() {
                b"self" if at_root => Some(NEED_SELF),
                b"thread-self" if at_root => Some(NEED_THREAD_SELF),
                _ => None,
            };
            if let Some(tag) = tag {
                let tail = &rest.buf[rest.pos..rest.len];
                let tail = tail.strip_prefix(b"/").unwrap_or(tail);
                return report(tag, 0, links as i32, tail, Some(cur));
            }
            // Procfs links are the kernel's to follow (and to check), but
            // not those of its root (`net`, `mounts`): they lead to `self`,
            // which would be this child, so they are read and walked here.
            if !at_root {
                c.close(next);
                match c.open_path_at(cur, cname, true) {
                    Ok(fd) => {
                        c.close(cur);
                        cur = fd;
                    }
                    Err(errno) => return fail(errno),
                }
                continue;
            }
        }
        let mut target = [0u8; PATH_MAX];
        let n = match c.read_link(next, &mut target) {
            Ok(0) => return fail(libc::ENOENT),
            Ok(n) => n,
            Err(errno) => return fail(errno),
        };
        c.close(next);
        if !rest.prepend(&target[..n]) {
            return refuse(TOO_LONG);
        }
        if target[0] == b'/' {
            match c.open_path_at(libc::AT_FDCWD, c"/", true) {
                Ok(fd) => {
                    c.close(cur);
                    cur = fd;
                }
                Err(errno) => return fail(errno),
            }
        }
    }
    match c.statx(cur) {
        Ok(st) if st.mode & libc::S_IFMT as u16 != libc::S_IFREG as u16 => {
            return refuse(NOT_REGULAR);
        }
        Ok(_) => {}
        Err(errno) => return fail(errno),
    }
    if c.fs_magic(cur) != Ok(NSFS_MAGIC) {
        return refuse(NOT_NSFS);
    }
    match c.reopen(step.own_proc.as_raw_fd(), cur) {
        Ok(fd) => report(DONE, 0, 0, &[], Some(fd)),
        Err(errno) => fail(errno),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(path: &[u8]) -> Rest {
        let mut r = Rest {
            buf: [0; 2 * PATH_MAX + 2],
            pos: 0,
            len: path.len(),
        };
        r.buf[..path.len()].copy_from_slice(path);
        r
    }

    fn components(r: &mut Rest) -> Vec<String> {
        let mut out = Vec::new();
        while let Some((s, e)) = r.next() {
            out.push(String::from_utf8_lossy(&r.buf[s..e]).into_owned());
        }
        out
    }

    #[test]
    fn components_skip_repeated_slashes() {
        let mut r = rest(b"//proc///self/ns/net/");
        assert_eq!(components(&mut r), ["proc", "self", "ns", "net"]);
        assert!(components(&mut rest(b"/")).is_empty());
    }

    #[test]
    fn a_link_is_walked_before_the_rest() {
        let mut r = rest(b"/a/link/tail");
        assert_eq!(r.next().map(|(s, e)| &r.buf[s..e]), Some(&b"a"[..]));
        assert_eq!(r.next().map(|(s, e)| &r.buf[s..e]), Some(&b"link"[..]));
        assert!(r.prepend(b"../x/y"));
        assert_eq!(components(&mut r), ["..", "x", "y", "tail"]);
        // A link that would make the path longer than the buffer.
        let mut r = rest(&[b'a'; PATH_MAX]);
        r.pos = 1;
        assert!(!r.prepend(&[b'b'; PATH_MAX + 3]));
    }
}

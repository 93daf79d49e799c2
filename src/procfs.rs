//! The one reader of `/proc`: namespace links ([`ns_inode`], [`ProcDir`]),
//! `PID/stat` ([`Stat`]), `PID/status` ([`Status`]), `mountinfo`
//! ([`MountInfo`]) and the threads of a process ([`tasks`]). Other modules
//! ask here rather than parse these files.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::kind::Kind;
use crate::sys;

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
pub const PF_KTHREAD: u64 = 0x0020_0000;

/// The inode of `/proc/PID/ns/ENTRY`, read with readlink(2) into a stack
/// buffer (no allocation, no stat). `None` if the process is gone or the
/// link cannot be read.
pub fn ns_inode(pid: i32, kind: Kind) -> Option<u64> {
    ns_link_inode(pid, kind.proc_entry())
}

/// The inode of `/proc/PID/ns/ENTRY` for any entry name (`pid`,
/// `pid_for_children`, ...), read as [`ns_inode`] does.
pub fn ns_link_inode(pid: i32, entry: &str) -> Option<u64> {
    let mut path = [0u8; 64];
    let len = {
        use std::io::Write;
        let mut cur = io::Cursor::new(&mut path[..]);
        write!(cur, "/proc/{pid}/ns/{entry}\0").ok()?;
        cur.position() as usize
    };
    let path = CStr::from_bytes_with_nul(&path[..len]).ok()?;
    let mut buf = [0u8; 64];
    let n = sys::fs::read_link_at(None, path, &mut buf).ok()?;
    if n == 0 {
        return None;
    }
    parse_ns_link(&buf[..n])
}

/// The whole of a small `/proc` file: open, one read into a page-sized
/// buffer, close. The kernel makes such a file's text at the first read and
/// hands out as much as fits; a read that does not fill the buffer got it
/// all, so the usual read until end of file (which, with the file's size
/// shown as 0, starts from a few bytes and doubles) would only add calls.
fn read_whole(path: &str) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = file.read(&mut buf[len..])?;
        len += n;
        if n == 0 || len < buf.len() {
            buf.truncate(len);
            return Ok(buf);
        }
        buf.resize(buf.len() * 2, 0);
    }
}

/// `s` with a NUL appended, in `buf`.
fn c_str<'a>(buf: &'a mut [u8], s: &str) -> Option<&'a CStr> {
    let bytes = s.as_bytes();
    buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
    *buf.get_mut(bytes.len())? = 0;
    CStr::from_bytes_with_nul(&buf[..=bytes.len()]).ok()
}

/// An open directory of a process under `/proc`: namespace links are read
/// relative to it, without looking the process up again for each one.
#[derive(Debug)]
pub struct ProcDir {
    fd: OwnedFd,
}

impl ProcDir {
    /// Opens `/proc/PID/ns`, whose entries are the kinds (`net`, `pid`,
    /// `pid_for_children`, ...). `NotFound` once the process is gone.
    pub fn ns(pid: i32) -> io::Result<ProcDir> {
        Self::open(&format!("/proc/{pid}/ns"))
    }

    /// Opens `/proc/PID/task`, whose entries are `TID/ns/KIND`.
    pub fn tasks(pid: i32) -> io::Result<ProcDir> {
        Self::open(&format!("/proc/{pid}/task"))
    }

    /// `/proc/PID/task/TID/ns`: the namespaces of thread `tid` of process
    /// `pid`, in one open.
    pub fn task_ns(pid: i32, tid: i32) -> io::Result<ProcDir> {
        Self::open(&format!("/proc/{pid}/task/{tid}/ns"))
    }

    fn open(path: &str) -> io::Result<ProcDir> {
        Self::open_at(None, path)
    }

    /// Opens the directory `entry` below this one (`TID/ns` below
    /// `/proc/PID/task`), so that reading several of its links resolves the
    /// path once.
    pub fn subdir(&self, entry: &str) -> io::Result<ProcDir> {
        Self::open_at(Some(self.fd.as_fd()), entry)
    }

    /// Opens the directory `path`, relative to `dir` (or the working
    /// directory), without opening its contents.
    fn open_at(dir: Option<BorrowedFd<'_>>, path: &str) -> io::Result<ProcDir> {
        let mut buf = [0u8; 64];
        let path =
            c_str(&mut buf, path).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let fd = sys::fs::open_at(dir, path, libc::O_PATH | libc::O_DIRECTORY)?;
        Ok(ProcDir { fd })
    }

    /// The inode of the namespace the link `entry` names, read with
    /// readlinkat(2).
    pub fn inode(&self, entry: &str) -> io::Result<u64> {
        let mut name = [0u8; 64];
        let name =
            c_str(&mut name, entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut buf = [0u8; 64];
        let n = sys::fs::read_link_at(Some(self.fd.as_fd()), name, &mut buf)?;
        parse_ns_link(&buf[..n]).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Opens the namespace `entry` names.
    pub fn open_entry(&self, entry: &str) -> io::Result<OwnedFd> {
        let mut name = [0u8; 64];
        let name =
            c_str(&mut name, entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        sys::fs::open_at(Some(self.fd.as_fd()), name, libc::O_RDONLY)
    }
}

/// The threads of process `pid` (`/proc/PID/task`), in tid order.
/// `NotFound` once it is gone.
pub fn tasks(pid: i32) -> io::Result<Vec<i32>> {
    let mut tids: Vec<i32> = numbers(&format!("/proc/{pid}/task"))?
        .into_iter()
        .filter_map(|t| i32::try_from(t).ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The descriptor numbers open in the table of thread `tid` of process
/// `pid`, unsorted.
pub fn fds(pid: i32, tid: i32) -> io::Result<Vec<i64>> {
    numbers(&format!("/proc/{pid}/task/{tid}/fd"))
}

/// The numbered entries of the `/proc` directory `path`.
fn numbers(path: &str) -> io::Result<Vec<i64>> {
    let mut buf = [0u8; 64];
    let path = c_str(&mut buf, path).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    sys::fs::proc_numbers(path)
}

/// Where this process's command line (its argument strings, one after the
/// other) lies in its memory: `arg_start` and `arg_end` of
/// `/proc/self/stat`, read once. A child that renames itself overwrites it
/// (see [`crate::sys::process::spawn_child`]).
pub fn argv_region() -> Option<(usize, usize)> {
    static REGION: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *REGION.get_or_init(|| {
        let (start, end) = Stat::read_self().ok()?.args?;
        (start < end).then_some((start, end))
    })
}

/// The effective capabilities of thread `tid` (its `CapEff`, by capget(2),
/// which is much cheaper than reading `/proc/TID/status`); `None` if it is
/// gone.
pub fn effective_caps(tid: i32) -> Option<u64> {
    sys::creds::capabilities(tid).map(|[effective, _, _]| effective)
}

/// The eight namespaces of thread `tid` (inodes in [`Kind::ALL`] order;
/// pid and time as for its children), or `None` if it is gone or cannot be
/// read: one open of its `ns` directory, then one readlinkat per kind.
pub fn ns_set(tid: u32) -> Option<[u64; 8]> {
    let dir = ProcDir::ns(tid as i32).ok()?;
    let mut set = [0u64; 8];
    for kind in Kind::ALL {
        set[kind.index()] = dir.inode(kind.proc_entry()).ok()?;
    }
    Some(set)
}

/// Parses `net:[4026531840]` into the inode number.
pub fn parse_ns_link(link: &[u8]) -> Option<u64> {
    let start = link.iter().position(|&b| b == b'[')? + 1;
    let end = link.iter().rposition(|&b| b == b']')?;
    std::str::from_utf8(link.get(start..end)?)
        .ok()?
        .parse()
        .ok()
}

/// `PF_EXITING` in the flags field of `/proc/PID/stat`.
pub const PF_EXITING: u64 = 0x0000_0004;

/// The fields of `/proc/PID/stat` the code uses, parsed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// The state letter (`R`, `S`, `T`, `Z`, `X`, ...), field 3.
    pub state: char,
    /// The parent's pid, field 4.
    pub ppid: i32,
    /// The `PF_*` flags, field 9.
    pub flags: u64,
    /// Clock ticks after boot when it started, field 22: with the pid, it
    /// names one process for the life of a boot.
    pub start_time: u64,
    /// `arg_start` and `arg_end`, fields 48 and 49: where its command line
    /// lies in its memory (`None` on kernels before 3.5).
    pub args: Option<(usize, usize)>,
}

impl Stat {
    /// Reads `/proc/PID/stat` (`PID` may be a thread's id). `NotFound` once
    /// it is gone; `InvalidData` if the text does not parse.
    pub fn read(pid: i32) -> io::Result<Stat> {
        Self::read_path(&format!("/proc/{pid}/stat"))
    }

    /// Reads `/proc/TGID/task/TID/stat`.
    pub fn read_task(tgid: i32, tid: i32) -> io::Result<Stat> {
        Self::read_path(&format!("/proc/{tgid}/task/{tid}/stat"))
    }

    /// Reads `/proc/self/stat`.
    pub fn read_self() -> io::Result<Stat> {
        Self::read_path("/proc/self/stat")
    }

    fn read_path(path: &str) -> io::Result<Stat> {
        Self::parse(&read_whole(path)?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed /proc/PID/stat"))
    }

    /// Parses the text of a `/proc/PID/stat` file.
    pub fn parse(stat: &[u8]) -> Option<Stat> {
        // The command name may hold anything, spaces and parentheses
        // included: fields start after its last ')', with the state.
        let close = stat.iter().rposition(|&b| b == b')')?;
        let mut fields = stat
            .get(close + 1..)?
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        fn number<T: std::str::FromStr>(field: Option<&[u8]>) -> Option<T> {
            std::str::from_utf8(field?).ok()?.parse().ok()
        }
        let state = char::from(*fields.next()?.first()?);
        let ppid = number(fields.next())?;
        // pgrp session tty_nr tpgid, then flags (field 9).
        let flags = number(fields.nth(4))?;
        // minflt cminflt majflt cmajflt utime stime cutime cstime priority
        // nice num_threads itrealvalue, then starttime (field 22).
        let start_time = number(fields.nth(12))?;
        // vsize ... arg_start (field 48), arg_end.
        let args = number(fields.nth(25)).zip(number(fields.next()));
        Some(Stat {
            state,
            ppid,
            flags,
            start_time,
            args,
        })
    }

    /// Whether it is a kernel thread.
    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }

    /// Whether it has exited: a zombie, or dead.
    pub fn is_zombie(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Whether it has exited or is exiting.
    pub fn is_exiting(&self) -> bool {
        self.is_zombie() || self.flags & PF_EXITING != 0
    }
}

/// Whether `pid` is a kernel thread (`false` if it is gone).
pub fn is_kernel_thread(pid: i32) -> bool {
    Stat::read(pid).is_ok_and(|s| s.is_kernel_thread())
}

/// The start time of `pid` (see [`Stat::start_time`]).
pub fn start_time(pid: i32) -> Option<u64> {
    Stat::read(pid).ok().map(|s| s.start_time)
}

/// The text of a `/proc/PID/status` file, its lines looked up by name.
/// `S` is the text, owned ([`Status::read`]) or borrowed ([`Status::new`]).
#[derive(Debug, Clone)]
pub struct Status<S = String> {
    text: S,
}

impl Status {
    /// Reads `/proc/PID/status` (`PID` may be a thread's id). `NotFound`
    /// once it is gone.
    pub fn read(pid: i32) -> io::Result<Status> {
        Self::read_path(&format!("/proc/{pid}/status"))
    }

    /// Reads `/proc/TGID/task/TID/status`.
    pub fn read_task(tgid: i32, tid: i32) -> io::Result<Status> {
        Self::read_path(&format!("/proc/{tgid}/task/{tid}/status"))
    }

    /// Reads `/proc/self/status`.
    pub fn read_self() -> io::Result<Status> {
        Self::read_path("/proc/self/status")
    }

    fn read_path(path: &str) -> io::Result<Status> {
        let text = String::from_utf8(read_whole(path)?).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "/proc/PID/status is not UTF-8")
        })?;
        Ok(Status { text })
    }
}

impl<S: AsRef<str>> Status<S> {
    /// The status file whose text is `text`.
    pub fn new(text: S) -> Self {
        Status { text }
    }

    /// The value of the first line named `name` (`NSpid`, `CapEff`, ...,
    /// without the colon), without the whitespace around it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.text
            .as_ref()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// A decimal field (`TracerPid`, `Seccomp`, ...).
    pub fn number<T: std::str::FromStr>(&self, name: &str) -> Option<T> {
        self.field(name)?.parse().ok()
    }

    /// A hexadecimal mask (`SigPnd`, `CapEff`, ...).
    pub fn mask(&self, name: &str) -> Option<u64> {
        u64::from_str_radix(self.field(name)?, 16).ok()
    }

    /// A field of numbers separated by whitespace (`Uid`, `Groups`,
    /// `NSpid`, ...); `None` if one of them does not parse.
    pub fn list<T: std::str::FromStr>(&self, name: &str) -> Option<Vec<T>> {
        self.field(name)?
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect()
    }

    /// Whether a SIGKILL is pending, for the thread (`SigPnd`) or its group
    /// (`ShdPnd`: a kill, or another thread's `exit_group`).
    pub fn sigkill_pending(&self) -> bool {
        let sigkill = 1u64 << (libc::SIGKILL - 1);
        ["SigPnd", "ShdPnd"]
            .iter()
            .any(|name| self.mask(name).is_some_and(|m| m & sigkill != 0))
    }

    /// The `NSpid` and `NStgid` lines: the task's id and its thread group's
    /// id in each pid namespace from the reader's down to the task's own.
    pub fn ns_ids(&self) -> Option<(Vec<i32>, Vec<i32>)> {
        Some((self.list("NSpid")?, self.list("NStgid")?))
    }
}

/// `/proc/PID/cgroup` of `pid`: a line per hierarchy, `ID:CONTROLLERS:PATH`,
/// paths as the reading thread's cgroup namespace sees them (parsed by
/// [`crate::cgroup::Membership`]).
pub fn cgroup_text(pid: i32) -> io::Result<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
}

/// The command name of `pid` (`/proc/PID/comm` without its newline).
pub fn comm(pid: i32) -> Option<String> {
    let mut name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if name.ends_with('\n') {
        name.pop();
    }
    Some(name)
}

/// Reads `/proc/self/mountinfo`: this process's mount table, for
/// [`MountInfo`].
pub fn read_mountinfo() -> io::Result<Vec<u8>> {
    std::fs::read("/proc/self/mountinfo")
}

/// `/proc/self/mountinfo` kept open, to read it again whenever the mount
/// table changes.
#[derive(Debug)]
pub struct MountTable {
    file: std::fs::File,
}

impl MountTable {
    /// Opens this process's mount table.
    pub fn open() -> io::Result<MountTable> {
        Ok(MountTable {
            file: std::fs::File::open("/proc/self/mountinfo")?,
        })
    }

    /// Reads the whole table, from its start, into `buf` (emptied first),
    /// for [`MountInfo`].
    pub fn read(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        use std::io::{Read, Seek};
        buf.clear();
        self.file.rewind()?;
        self.file.read_to_end(buf).map(drop)
    }

    /// Waits until the mount table changes (the kernel reports it as
    /// `POLLPRI` on the open file).
    pub fn wait_change(&self) -> io::Result<()> {
        sys::fs::wait_priority(self.file.as_fd())
    }
}

/// The mounts of a `/proc/PID/mountinfo` text, one per line, oldest first
/// (so the topmost mount on a path is the last one there).
#[derive(Debug, Clone)]
pub struct MountInfo<'a> {
    lines: std::slice::Split<'a, u8, fn(&u8) -> bool>,
}

impl<'a> MountInfo<'a> {
    /// The mounts listed in `text`.
    pub fn new(text: &'a [u8]) -> Self {
        MountInfo {
            lines: text.split(|&b| b == b'\n'),
        }
    }
}

impl<'a> Iterator for MountInfo<'a> {
    type Item = Mount<'a>;

    fn next(&mut self) -> Option<Mount<'a>> {
        self.lines
            .find(|l| !l.is_empty())
            .map(|line| Mount { line })
    }
}

impl DoubleEndedIterator for MountInfo<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        self.lines
            .rfind(|l| !l.is_empty())
            .map(|line| Mount { line })
    }
}

/// One line of a mountinfo table: `ID PARENT MAJOR:MINOR ROOT MOUNTPOINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS`, paths escaped.
#[derive(Debug, Clone, Copy)]
pub struct Mount<'a> {
    line: &'a [u8],
}

impl<'a> Mount<'a> {
    fn fields(&self) -> impl Iterator<Item = &'a [u8]> + use<'a> {
        self.line.split(|&b| b == b' ')
    }

    /// The device, field 3.
    pub fn device(&self) -> Option<(u32, u32)> {
        let dev = std::str::from_utf8(self.fields().nth(2)?).ok()?;
        let (major, minor) = dev.split_once(':')?;
        Some((major.parse().ok()?, minor.parse().ok()?))
    }

    /// The mount point, field 5, as the table escapes it.
    pub fn mount_point_escaped(&self) -> Option<&'a [u8]> {
        self.fields().nth(4)
    }

    /// The mount point, unescaped.
    pub fn mount_point(&self) -> Option<Vec<u8>> {
        self.mount_point_escaped().map(unescape_mountinfo)
    }

    /// Whether the mount point is `path`.
    pub fn is_at(&self, path: &[u8]) -> bool {
        self.mount_point_escaped()
            .is_some_and(|mp| unescaped(mp).eq(path.iter().copied()))
    }

    /// The filesystem type, the field after the `-` that ends the optional
    /// fields.
    pub fn fstype(&self) -> Option<&'a [u8]> {
        self.fields().skip_while(|&f| f != b"-").nth(1)
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
pub fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    unescaped(field).collect()
}

/// The bytes of `field` with mountinfo's octal escapes undone.
fn unescaped(field: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let mut i = 0;
    std::iter::from_fn(move || {
        let b = *field.get(i)?;
        if b == b'\\' && i + 4 <= field.len() {
            let digits = &field[i + 1..i + 4];
            if let Some(v) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                i += 4;
                return Some(v);
            }
        }
        i += 1;
        Some(b)
    })
}

/// The device (major, minor) of the topmost FUSE mount at `mountpoint` in
/// this process's mount namespace.
pub fn mount_device(mountpoint: &[u8]) -> Option<(u32, u32)> {
    let info = read_mountinfo().ok()?;
    MountInfo::new(&info)
        .filter_map(|mount| {
            if !mount.fstype()?.starts_with(b"fuse") || !mount.is_at(mountpoint) {
                return None;
            }
            mount.device()
        })
        .next_back()
}

/// Whether thread `tid` belongs to process `pid` (both in the daemon's pid
/// namespace): `/proc/PID/task/TID` exists only then.
pub fn is_thread_of(tid: u32, pid: i32) -> bool {
    tid as i32 == pid || std::fs::symlink_metadata(format!("/proc/{pid}/task/{tid}")).is_ok()
}

/// Every process (thread-group leader) in the daemon's pid namespace.
pub fn processes() -> io::Result<Vec<i32>> {
    let mut pids: Vec<i32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            std::str::from_utf8(e.file_name().as_bytes())
                .ok()?
                .parse()
                .ok()
        })
        .collect();
    pids.sort_unstable();
    Ok(pids)
}

/// The processes whose namespaces are exactly `set` (inodes in
/// [`Kind::ALL`] order), kernel threads left out. `first` lists kinds to
/// compare first: the ones most likely to differ, so most processes are
/// ruled out by a single readlink.
pub fn members(set: &[u64; 8], first: &[Kind]) -> io::Result<Vec<i32>> {
    let mut order: Vec<Kind> = first.to_vec();
    order.extend(Kind::ALL.into_iter().filter(|k| !first.contains(k)));
    Ok(processes()?
        .into_iter()
        .filter(|&pid| {
            order
                .iter()
                .all(|&k| ns_inode(pid, k) == Some(set[k.index()]))
        })
        .filter(|&pid| !is_kernel_thread(pid))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ns_links() {
        assert_eq!(parse_ns_link(b"net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link(b"pid_for_children:[1]"), Some(1));
        assert_eq!(parse_ns_link(b"net:[x]"), None);
        assert_eq!(parse_ns_link(b"net"), None);
    }

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = b"42 (a) b (c)) S 1 42 42 0 -1 4194560 121 0 0 0 0 0 0 0 20 0 1 0 \
                    1234 2412544 224 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = Stat::parse(line).expect("parses");
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.ppid, 1);
        assert_eq!(stat.flags, 4194560);
        assert_eq!(stat.start_time, 1234);
        assert_eq!(stat.args, None);
        assert!(!stat.is_kernel_thread() && !stat.is_zombie() && !stat.is_exiting());
        let kthread = b"2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 \
                       5 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 0 0 0 0 0 0";
        let kthread = Stat::parse(kthread).expect("parses");
        assert!(kthread.is_kernel_thread());
        assert_eq!((kthread.ppid, kthread.start_time), (0, 5));
        // A name that is not UTF-8, and every field up to arg_end.
        let full = b"12084 (h\xffd) Z 12028 12028 10137 0 -1 4194308 103 0 0 0 0 0 0 0 20 0 1 0 \
                     613041 2998272 411 18446744073709551615 94723009339392 94723009363497 \
                     140725844083264 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94723009379344 \
                     94723009380960 94724018860032 140725844089356 140725844089380 \
                     140725844089380 140725844090858 0\n";
        let full = Stat::parse(full).expect("parses");
        assert_eq!(full.start_time, 613041);
        assert_eq!(full.args, Some((140725844089356, 140725844089380)));
        assert!(full.is_zombie() && full.is_exiting());
        assert!(Stat::parse(b"garbage").is_none());
        assert!(Stat::parse(b"1 (x) S 1 2").is_none());
    }

    #[test]
    fn looks_status_lines_up_by_name() {
        let status = Status::new(
            "Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t7\n\
             TracerPid:\t0\nUid:\t0\t0\t0\t0\nGroups:\t\nNStgid:\t7\t1\nNSpid:\t9\t3\n\
             SigPnd:\t0000000000000000\nShdPnd:\t0000000000000100\n\
             CapEff:\t000001ffffffffff\nSeccomp:\t2\nSeccomp_filters:\t1\n",
        );
        assert_eq!(status.field("Name"), Some("sleep"));
        assert_eq!(status.field("State"), Some("S (sleeping)"));
        assert_eq!(status.field("Nam"), None);
        assert_eq!(status.field("Groups"), Some(""));
        assert_eq!(status.list::<u32>("Groups"), Some(vec![]));
        assert_eq!(status.list::<u32>("Uid"), Some(vec![0; 4]));
        assert_eq!(status.list::<u32>("State"), None);
        assert_eq!(status.number::<i32>("TracerPid"), Some(0));
        assert_eq!(status.number::<u32>("Seccomp"), Some(2));
        assert_eq!(status.number::<u32>("Seccomp_filters"), Some(1));
        assert_eq!(status.mask("CapEff"), Some(0x1ff_ffff_ffff));
        assert_eq!(status.mask("Name"), None);
        assert_eq!(status.ns_ids(), Some((vec![9, 3], vec![7, 1])));
        assert!(status.sigkill_pending());
        assert!(!Status::new("SigPnd:\t0000000000000001\n").sigkill_pending());
        assert!(Status::new("SigPnd:\t0000000000000100\n").sigkill_pending());
        assert_eq!(Status::new("NSpid:\t1\n").ns_ids(), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(b"/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(b"/x\\"), b"/x\\");
        assert_eq!(unescape_mountinfo(b"/x\\04"), b"/x\\04");
        assert_eq!(unescape_mountinfo(b"/x\\400y"), b"/x\\400y");
        assert_eq!(unescape_mountinfo(b"\\134\\011\\012"), b"\\\t\n");
    }

    #[test]
    fn reads_mountinfo_lines() {
        let text = b"22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
            35 22 0:47 / /mnt/a\\040b rw,nosuid master:3 - fuse.nsproxyfs nsproxyfs rw\n\
            36 35 0:48 / /mnt/a\\040b rw - tmpfs tmpfs rw\n\
            37 22 0:49 / /mnt/a\\040b rw - fuse.other x rw\n\
            bad\n";
        let mounts: Vec<Mount<'_>> = MountInfo::new(text).collect();
        assert_eq!(mounts.len(), 5);
        assert_eq!(mounts[0].device(), Some((0, 21)));
        assert_eq!(mounts[0].fstype(), Some(&b"ext4"[..]));
        assert!(mounts[0].is_at(b"/"));
        assert_eq!(mounts[1].mount_point_escaped(), Some(&b"/mnt/a\\040b"[..]));
        assert_eq!(mounts[1].mount_point().as_deref(), Some(&b"/mnt/a b"[..]));
        assert!(mounts[1].is_at(b"/mnt/a b"));
        assert!(!mounts[1].is_at(b"/mnt/a\\040b") && !mounts[1].is_at(b"/mnt/a"));
        assert_eq!(mounts[1].fstype(), Some(&b"fuse.nsproxyfs"[..]));
        assert_eq!(mounts[4].device(), None);
        assert_eq!(mounts[4].fstype(), None);
        assert!(!mounts[4].is_at(b"bad"));
        let top = MountInfo::new(text)
            .rev()
            .find(|m| m.is_at(b"/mnt/a b"))
            .unwrap();
        assert_eq!(top.fstype(), Some(&b"fuse.other"[..]));
        assert_eq!(MountInfo::new(b"").count(), 0);
        assert_eq!(MountInfo::new(b"\n\n").next_back().map(|m| m.line), None);
        let own = read_mountinfo().unwrap();
        assert!(MountInfo::new(&own).any(|m| m.is_at(b"/")));
        assert_eq!(mount_device(b"/nothing mounted here"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = std::process::id() as i32;
        let link = std::fs::read_link("/proc/self/ns/uts").unwrap();
        let want = parse_ns_link(link.as_os_str().as_bytes()).unwrap();
        assert_eq!(ns_inode(me, Kind::Uts), Some(want));
        assert!(!is_kernel_thread(me));
        let set = ns_set(me as u32).unwrap();
        for kind in Kind::ALL {
            assert_eq!(Some(set[kind.index()]), ns_inode(me, kind), "{kind}");
        }
        assert_eq!(ns_set(u32::MAX), None);
        let dir = ProcDir::ns(me).unwrap();
        assert_eq!(dir.inode("uts").unwrap(), want);
        assert!(dir.open_entry("uts").is_ok());
        assert!(dir.inode("nothing").is_err());
        let tasks = ProcDir::tasks(me).unwrap();
        assert_eq!(tasks.inode(&format!("{me}/ns/uts")).unwrap(), want);
        let status = Status::read_self().unwrap();
        assert_eq!(effective_caps(me), status.mask("CapEff"));
        let (pids, tgids) = status.ns_ids().unwrap();
        assert_eq!((pids.last(), tgids.last()), (Some(&me), Some(&me)));
        assert_eq!(Status::read(me).unwrap().number("Tgid"), Some(me));
        assert_eq!(Status::read_task(me, me).unwrap().number("Pid"), Some(me));
        assert_eq!(
            Status::read(i32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(effective_caps(-1), None);
        assert!(processes().unwrap().contains(&me));
        let stat = Stat::read(me).unwrap();
        assert_eq!(stat.ppid as u32, std::os::unix::process::parent_id());
        assert!(matches!(stat.state, 'R' | 'S'));
        assert!(stat.args.is_some_and(|(a, b)| a < b));
        assert_eq!(Stat::read_self().unwrap().start_time, stat.start_time);
        assert_eq!(Stat::read_task(me, me).unwrap().start_time, stat.start_time);
        assert_eq!(
            Stat::read(i32::MAX).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let started = start_time(me).unwrap();
        assert!(started > 0 && start_time(1).unwrap() <= started);
        assert_eq!(start_time(i32::MAX), None);
        assert_eq!(
            comm(me).unwrap(),
            std::fs::read_to_string("/proc/self/comm")
                .unwrap()
                .trim_end()
        );
    }

    #[test]
    fn lists_the_threads_of_a_process_in_order() {
        let me = std::process::id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let helper = std::thread::spawn(move || {
            tx.send(nix::unistd::gettid().as_raw()).unwrap();
            let _ = stop_rx.recv();
        });
        let tid = rx.recv().unwrap();
        let tids = tasks(me).unwrap();
        assert!(tids.contains(&me) && tids.contains(&tid), "{tids:?}");
        assert!(tids.windows(2).all(|w| w[0] < w[1]), "{tids:?}");
        drop(stop_tx);
        helper.join().unwrap();
        assert_eq!(tasks(i32::MAX).unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(argv_region().is_some_and(|(a, b)| a < b));
    }
}

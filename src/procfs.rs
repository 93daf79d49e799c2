//! Reading processes' namespaces from `/proc`.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use crate::ns::Kind;

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

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
    // SAFETY: `path` is NUL-terminated; `buf` is valid for `buf.len()` bytes
    // and readlink writes at most that many.
    let n = unsafe { libc::readlink(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return None;
    }
    parse_ns_link(&buf[..n as usize])
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

    fn open(path: &str) -> io::Result<ProcDir> {
        Self::open_at(libc::AT_FDCWD, path)
    }

    /// Opens the directory `entry` below this one (`TID/ns` below
    /// `/proc/PID/task`), so that reading several of its links resolves the
    /// path once.
    pub fn subdir(&self, entry: &str) -> io::Result<ProcDir> {
        Self::open_at(self.fd.as_raw_fd(), entry)
    }

    /// Opens the directory `path`, relative to `dir` (or the working
    /// directory, `AT_FDCWD`), without opening its contents.
    fn open_at(dir: libc::c_int, path: &str) -> io::Result<ProcDir> {
        let mut buf = [0u8; 64];
        let path =
            c_str(&mut buf, path).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `path` is NUL-terminated and outlives the call; `dir` is
        // AT_FDCWD or a descriptor this ProcDir owns.
        let fd = unsafe {
            libc::openat(
                dir,
                path.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(ProcDir { fd })
    }

    /// The inode of the namespace the link `entry` names, read with
    /// readlinkat(2).
    pub fn inode(&self, entry: &str) -> io::Result<u64> {
        let mut name = [0u8; 64];
        let name =
            c_str(&mut name, entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut buf = [0u8; 64];
        // SAFETY: `name` is NUL-terminated; `buf` is valid for `buf.len()`
        // bytes and readlinkat writes at most that many.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        parse_ns_link(&buf[..n as usize]).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Opens the namespace `entry` names.
    pub fn open_entry(&self, entry: &str) -> io::Result<OwnedFd> {
        let mut name = [0u8; 64];
        let name =
            c_str(&mut name, entry).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `name` is NUL-terminated and outlives the call.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// The effective capabilities of thread `tid` (its `CapEff`, by capget(2),
/// which is much cheaper than reading `/proc/TID/status`); `None` if it is
/// gone.
pub fn effective_caps(tid: i32) -> Option<u64> {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit halves.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    if tid <= 0 {
        return None;
    }
    let mut header = Header {
        version: VERSION_3,
        pid: tid,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads `header` and, for version 3, writes exactly two
    // `Data` records to `data`; both are live locals of those layouts.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    (r == 0).then(|| u64::from(data[0].effective) | (u64::from(data[1].effective) << 32))
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

/// Whether `pid` is a kernel thread.
pub fn is_kernel_thread(pid: i32) -> bool {
    let Ok(stat) = std::fs::read(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The command name may contain spaces and parentheses: fields start
    // after the last ')'. Flags is the 9th field, the 7th after it.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return false;
    };
    let rest = String::from_utf8_lossy(&stat[close + 1..]);
    rest.split_whitespace()
        .nth(6)
        .and_then(|f| f.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// The start time of `pid`, field 22 of `/proc/PID/stat` (clock ticks
/// after boot): with the pid, it names one process for the life of a boot.
pub fn start_time(pid: i32) -> Option<u64> {
    stat_start_time(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The start time in the text of a `/proc/PID/stat` file.
pub fn stat_start_time(stat: &[u8]) -> Option<u64> {
    // Fields start after the command name's last ')': state is the 3rd
    // field, so the start time is the 20th after it.
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(stat.get(close + 1..)?).ok()?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The `NSpid` and `NStgid` lines of a `/proc/PID/status` text: the
/// task's id and its thread group's id in each pid namespace from the
/// reader's down to the task's own.
pub fn status_ns_ids(status: &str) -> Option<(Vec<i32>, Vec<i32>)> {
    let list = |key: &str| -> Option<Vec<i32>> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .split_whitespace()
            .map(|x| x.parse().ok())
            .collect()
    };
    Some((list("NSpid:")?, list("NStgid:")?))
}

/// The command name of `pid` (`/proc/PID/comm` without its newline).
pub fn comm(pid: i32) -> Option<String> {
    let mut name = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if name.ends_with('\n') {
        name.pop();
    }
    Some(name)
}

/// The device (major, minor) of the topmost FUSE mount at `mountpoint` in
/// this process's mount namespace.
pub fn mount_device(mountpoint: &[u8]) -> Option<(u32, u32)> {
    let info = std::fs::read("/proc/self/mountinfo").ok()?;
    info.split(|&b| b == b'\n')
        .filter_map(|line| {
            let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
            let sep = fields.iter().position(|f| *f == b"-")?;
            let fstype = fields.get(sep + 1)?;
            if !fstype.starts_with(b"fuse") {
                return None;
            }
            if crate::daemon::unescape_mountinfo(fields.get(4)?) != mountpoint {
                return None;
            }
            let dev = std::str::from_utf8(fields.get(2)?).ok()?;
            let (major, minor) = dev.split_once(':')?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .next_back()
}

/// The thread ids of process `pid`, from `/proc/PID/task`.
pub fn threads(pid: i32) -> io::Result<Vec<i32>> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        if let Some(tid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) {
            tids.push(tid);
        }
    }
    Ok(tids)
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
        let caps = std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap());
        assert_eq!(effective_caps(me), caps);
        assert_eq!(effective_caps(-1), None);
        assert!(processes().unwrap().contains(&me));
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
}

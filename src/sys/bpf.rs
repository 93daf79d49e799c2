//! The two bpf(2) commands the loader does not offer: a task iterator's
//! link limited to one thread (`BPF_LINK_CREATE` with the iterator's
//! `tid`), and a readable iterator of such a link (`BPF_ITER_CREATE`).
//! Programs and maps themselves are loaded through aya.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// `BPF_LINK_CREATE` and `BPF_ITER_CREATE` in the kernel's `enum bpf_cmd`.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `BPF_TRACE_ITER` in the kernel's `enum bpf_attach_type`.
const BPF_TRACE_ITER: u32 = 28;

/// The part of `union bpf_attr` these commands use, padded to a size the
/// kernel accepts (it checks that bytes past what it knows are zero).
#[repr(C, align(8))]
#[derive(Default)]
struct Attr {
    /// `link_create.prog_fd`, or `iter_create.link_fd`.
    fd: u32,
    /// `link_create.target_fd` (0 for iterators), or `iter_create.flags`.
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    /// Address of a `union bpf_iter_link_info`.
    iter_info: u64,
    iter_info_len: u32,
    _pad: [u32; 9],
}

/// `union bpf_iter_link_info` as a task iterator reads it: `task.tid`,
/// `task.pid`, `task.pid_fd`.
#[repr(C)]
struct TaskInfo {
    tid: u32,
    pid: u32,
    pid_fd: u32,
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialised `union bpf_attr` prefix of the
    // size given, alive for the call; the commands used here only read it
    // (and the iterator information it points at) and return a new
    // descriptor or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>() as libc::c_uint,
        )
    };
    super::owned(ret)
}

/// A link of the task iterator program `prog` that visits thread `tid`
/// (numbered in the caller's pid namespace) alone.
pub fn thread_iter_link(prog: BorrowedFd<'_>, tid: u32) -> io::Result<OwnedFd> {
    task_iter_link(
        prog,
        TaskInfo {
            tid,
            pid: 0,
            pid_fd: 0,
        },
    )
}

/// A link of the task iterator program `prog` that visits every thread
/// of process `pid` (numbered in the caller's pid namespace) and nothing
/// else (Linux 6.1 and later).
pub fn process_iter_link(prog: BorrowedFd<'_>, pid: u32) -> io::Result<OwnedFd> {
    task_iter_link(
        prog,
        TaskInfo {
            tid: 0,
            pid,
            pid_fd: 0,
        },
    )
}

fn task_iter_link(prog: BorrowedFd<'_>, info: TaskInfo) -> io::Result<OwnedFd> {
    let mut attr = Attr {
        fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        iter_info: &info as *const TaskInfo as u64,
        iter_info_len: std::mem::size_of::<TaskInfo>() as u32,
        ..Attr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// A new readable instance of the iterator link `link`: each read runs
/// the program over what the link visits, pid numbers as the calling
/// thread's pid namespace has them.
pub fn iter_open(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr {
        fd: link.as_raw_fd() as u32,
        ..Attr::default()
    };
    bpf(BPF_ITER_CREATE, &mut attr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_has_the_kernels_layout() {
        // link_create: prog_fd, target_fd, attach_type, flags, then
        // iter_info (8-aligned) and iter_info_len.
        assert_eq!(std::mem::offset_of!(Attr, attach_type), 8);
        assert_eq!(std::mem::offset_of!(Attr, iter_info), 16);
        assert_eq!(std::mem::offset_of!(Attr, iter_info_len), 24);
        assert_eq!(std::mem::size_of::<Attr>(), 64);
        assert_eq!(std::mem::size_of::<TaskInfo>(), 12);
    }
}

//! Mounts made by the daemon's own threads, through nix. (A forked child's
//! mounts are in [`super::child`], which may not use nix.)

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::mount::{MntFlags, MsFlags};

/// Bind-mounts `source` onto `target` (`MS_BIND`, plus `MS_REC` if
/// `recursive`).
pub fn bind(source: &CStr, target: &CStr, recursive: bool) -> io::Result<()> {
    let rec = if recursive {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    nix::mount::mount(
        Some(source),
        target,
        None::<&CStr>,
        MsFlags::MS_BIND | rec,
        None::<&CStr>,
    )
    .map_err(io::Error::from)
}

/// Bind-mounts the namespace `fd` onto the existing file `target`.
pub fn bind_fd(fd: BorrowedFd<'_>, target: &CStr) -> io::Result<()> {
    let source = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    bind(&source, target, false)
}

/// Makes `target` and every mount below it shared (`MS_SHARED | MS_REC`).
pub fn make_shared(target: &CStr) -> io::Result<()> {
    nix::mount::mount(
        None::<&CStr>,
        target,
        None::<&CStr>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&CStr>,
    )
    .map_err(io::Error::from)
}

/// Lazily unmounts `target` (`MNT_DETACH`).
pub fn detach(target: &CStr) -> io::Result<()> {
    nix::mount::umount2(target, MntFlags::MNT_DETACH).map_err(io::Error::from)
}

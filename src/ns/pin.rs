//! Pins: a namespace bind-mounted into the state directory, so that it
//! outlives the processes in it.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Kind;
use crate::sys;

/// The directory pins live in (`STATE/pins`), opened once: every pin is
/// reached relative to it by its single name, never through a symbolic
/// link, so nothing planted there can redirect a pin's mount, unmount or
/// removal elsewhere.
#[derive(Debug)]
pub struct PinDir {
    pub(super) path: PathBuf,
    fd: OwnedFd,
}

impl PinDir {
    /// The directory open as `fd`, shown as `path`.
    pub fn new(path: PathBuf, fd: OwnedFd) -> PinDir {
        PinDir { path, fd }
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names in it.
    pub fn names(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
        else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }

    /// `name` reached through the directory's descriptor: a path whose
    /// last step (the only one resolved in this directory) is `name`.
    fn through_fd(&self, name: &str) -> io::Result<CString> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        CString::new(format!("/proc/self/fd/{}/{name}", self.fd.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Opens `name` read-only, never following a symbolic link.
    pub(super) fn open(&self, name: &str) -> io::Result<OwnedFd> {
        nix::fcntl::openat(
            self.fd.as_fd(),
            name,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_NOFOLLOW
                | nix::fcntl::OFlag::O_CLOEXEC
                | nix::fcntl::OFlag::O_NONBLOCK,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32))
    }

    /// Unmounts every layer mounted on `name` (not following a symbolic
    /// link) and removes it, whatever it is but a directory.
    pub fn remove(&self, name: &str) {
        let shown = self.path.join(name);
        let Ok(c) = self.through_fd(name) else {
            return;
        };
        let flags = nix::mount::MntFlags::MNT_DETACH | nix::mount::MntFlags::UMOUNT_NOFOLLOW;
        let mut detached = false;
        loop {
            match nix::mount::umount2(c.as_c_str(), flags) {
                Ok(()) => detached = true,
                Err(e)
                    if detached
                        || matches!(e, nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) =>
                {
                    break;
                }
                Err(e) => {
                    log::warn!("cannot unmount pin {}: {e}", shown.display());
                    break;
                }
            }
        }
        let _ = nix::unistd::unlinkat(
            self.fd.as_fd(),
            name,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

/// A bind mount of a namespace file in the state directory, which keeps the
/// namespace alive and lets standard tools (`nsenter --net=PIN`) open it.
/// It stays when the daemon ends (that is what lets a restarted daemon find
/// the namespace again) and goes with [`Pin::remove`].
///
/// The file under the mount is made afresh with mode 0600 (whatever was
/// there before, a symbolic link included, is unlinked first) and the
/// mount is made on it through its own descriptor, so it lands on that
/// file and nowhere else. Who may open a pin: whoever may pass through the
/// state directory and `pins/`, both mode 0700, i.e. root; the mount shows
/// the namespace file's own mode (0444) to those.
#[derive(Debug)]
pub struct Pin {
    pub(super) dir: Arc<PinDir>,
    pub(super) name: String,
    pub(super) path: PathBuf,
}

impl Pin {
    /// The pin's name for `kind`:`ino`.
    pub fn name(kind: Kind, ino: u64) -> String {
        format!("{}-{}", kind.name(), ino)
    }

    /// Where the pin of `kind`:`ino` lives in `dir`.
    pub fn path_in(dir: &Path, kind: Kind, ino: u64) -> PathBuf {
        dir.join(Pin::name(kind, ino))
    }

    /// Pins `fd` at `dir/KIND-INO`, replacing a stale pin of the same name.
    pub fn create(dir: &Arc<PinDir>, kind: Kind, ino: u64, fd: BorrowedFd<'_>) -> io::Result<Pin> {
        let name = Pin::name(kind, ino);
        dir.remove(&name);
        let file = nix::fcntl::openat(
            dir.fd.as_fd(),
            name.as_str(),
            nix::fcntl::OFlag::O_WRONLY
                | nix::fcntl::OFlag::O_CREAT
                | nix::fcntl::OFlag::O_EXCL
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
        let target = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        if let Err(e) = sys::mount::bind_fd(fd, &target) {
            drop(file);
            let _ = nix::unistd::unlinkat(
                dir.fd.as_fd(),
                name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            return Err(e);
        }
        Ok(Pin {
            dir: Arc::clone(dir),
            path: dir.path.join(&name),
            name,
        })
    }

    /// Where the pin is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts and deletes the pin.
    pub fn remove(&self) {
        self.dir.remove(&self.name);
    }
}

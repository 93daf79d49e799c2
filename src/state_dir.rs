//! The state directory itself: who may own it, and how the daemon reaches
//! the files in it.
//!
//! The directory holds pins (mounts of namespace files) and the record of
//! processes the daemon trusts, so only root may change it or anything on
//! the way to it. At start the daemon checks the path:
//!
//! * the state directory is a directory, not a symbolic link, owned by
//!   root and writable by no one else; it is made with mode 0700 if
//!   missing, and a looser mode without write bits for others (0755 from
//!   older versions) is tightened to 0700;
//! * every directory above it (symbolic links on the way resolved) is
//!   owned by root and writable by no one else, unless it is sticky
//!   (`/tmp`): there only an entry's owner can rename or remove it, and
//!   the next step down is owned by root as well.
//!
//! The directory is then opened once, and every file in it is reached
//! relative to that descriptor by its single name, never following a
//! symbolic link: files are opened with `O_NOFOLLOW`, new ones with
//! `O_CREAT | O_EXCL` (which never follows one either) and mode 0600, and a
//! temporary file left behind, whatever it is, is unlinked before it is
//! made again. Pins are reached the same way through `pins/`
//! (see [`crate::ns::PinDir`]).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::ns::PinDir;

/// The pin directory's name in the state directory.
pub const PINS: &str = "pins";

/// The lock's name in the state directory.
pub const LOCK: &str = "lock";

/// An open, checked state directory.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    fd: OwnedFd,
}

fn io_err(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A single file name: no `/`, not `.` or `..`.
fn single(name: &str) -> io::Result<&str> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
}

/// Opens the directory `name` in `dir` (or the absolute path `name` when
/// `dir` is `None`), never following a symbolic link at its last step.
fn open_dir(dir: Option<BorrowedFd<'_>>, name: &Path) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match dir {
        Some(dir) => openat(dir, name, flags, Mode::empty()),
        None => nix::fcntl::open(name, flags, Mode::empty()),
    }
    .map_err(io_err)
}

/// Why the state directory (or its pin directory) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// A system call on a path failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// Making or resolving the state directory failed (the path given).
    #[error("state directory {}: {source}", path.display())]
    Make {
        /// The state directory, as given.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The path names no directory one can make.
    #[error("state directory {}: not a directory one can make", .0.display())]
    Unmakeable(PathBuf),
    /// The path is a symbolic link or no directory.
    #[error(
        "state directory {} is not a directory (a symbolic link is not accepted: give the \
         directory it points to)",
        .0.display()
    )]
    NotADir(PathBuf),
    /// The pin directory is a symbolic link or no directory.
    #[error(
        "{}: {source} (it must be a directory, not a symbolic link)",
        path.display()
    )]
    PinsNotADir {
        /// The pin directory.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// The directory is not root's.
    #[error(
        "{} is owned by uid {uid}, not root: the state directory must be root's alone",
        path.display()
    )]
    NotRoots {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Others may write to the directory.
    #[error(
        "{} is writable by others (mode {mode:04o}): the state directory must be root's \
         alone; remove it or make it mode 0700",
        path.display()
    )]
    Writable {
        /// The directory.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The directory's mode could not be tightened.
    #[error("{}: cannot make it mode 0700: {source}", path.display())]
    Chmod {
        /// The directory.
        path: PathBuf,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A directory above it is not root's.
    #[error(
        "{} is owned by uid {uid}, not root: it could replace the state directory below it",
        path.display()
    )]
    AncestorNotRoots {
        /// The directory above.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Others may write to a directory above it, which is not sticky.
    #[error(
        "{} is writable by others and not sticky (mode {mode:04o}): they could replace \
         the state directory below it",
        path.display()
    )]
    AncestorWritable {
        /// The directory above.
        path: PathBuf,
        /// Its mode.
        mode: u32,
    },
}

/// Checks a directory the daemon keeps state in, open as `fd`: owned by
/// root, writable by no one else. A mode with other bits is tightened to
/// 0700.
fn check_own(fd: BorrowedFd<'_>, shown: &Path) -> Result<(), StateDirError> {
    let path = || shown.to_path_buf();
    let st = fstat(fd).map_err(|e| StateDirError::Io {
        path: path(),
        source: io_err(e),
    })?;
    if st.st_uid != 0 {
        return Err(StateDirError::NotRoots {
            path: path(),
            uid: st.st_uid,
        });
    }
    let mode = st.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StateDirError::Writable { path: path(), mode });
    }
    if mode != 0o700 {
        fchmod(fd, Mode::from_bits_truncate(0o700)).map_err(|e| StateDirError::Chmod {
            path: path(),
            source: io_err(e),
        })?;
    }
    Ok(())
}

/// Checks every directory above the state directory (`canonical`, with no
/// symbolic link left in it): owned by root, and writable by no one else
/// unless sticky.
fn check_ancestors(canonical: &Path) -> Result<(), StateDirError> {
    for dir in canonical.ancestors().skip(1) {
        let path = || dir.to_path_buf();
        let md = std::fs::symlink_metadata(dir).map_err(|source| StateDirError::Io {
            path: path(),
            source,
        })?;
        let mode = md.permissions().mode() & 0o7777;
        if md.uid() != 0 {
            return Err(StateDirError::AncestorNotRoots {
                path: path(),
                uid: md.uid(),
            });
        }
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(StateDirError::AncestorWritable { path: path(), mode });
        }
    }
    Ok(())
}

impl StateDir {
    /// For the daemon: makes `path` (mode 0700) if missing, checks it and
    /// the directories above it (see the module's documentation), and
    /// opens it.
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        let make = |source| StateDirError::Make {
            path: path.to_path_buf(),
            source,
        };
        let absolute = std::path::absolute(path).map_err(make)?;
        let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
            return Err(StateDirError::Unmakeable(path.to_path_buf()));
        };
        std::fs::create_dir_all(parent).map_err(make)?;
        let parent = std::fs::canonicalize(parent).map_err(make)?;
        check_ancestors(&parent.join(name))?;
        let parent_fd = open_dir(None, &parent).map_err(|source| StateDirError::Io {
            path: parent.clone(),
            source,
        })?;
        match mkdirat(parent_fd.as_fd(), name, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(make(io_err(e))),
        }
        let fd = open_dir(Some(parent_fd.as_fd()), Path::new(name)).map_err(|e| {
            match e.raw_os_error() {
                Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
                    StateDirError::NotADir(path.to_path_buf())
                }
                _ => make(e),
            }
        })?;
        let path = parent.join(name);
        check_own(fd.as_fd(), &path)?;
        Ok(StateDir { path, fd })
    }

    /// For tidying up a directory no daemon runs on (tests, starting over
    /// by hand): opens an existing `path` without the checks of
    /// [`StateDir::open`], still never following a symbolic link at its
    /// last step.
    pub fn existing(path: &Path) -> io::Result<StateDir> {
        Ok(StateDir {
            path: path.to_path_buf(),
            fd: open_dir(None, path)?,
        })
    }

    /// Where it is (canonical when opened by [`StateDir::open`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Opens the file `name` in the directory, never following a symbolic
    /// link; only a regular file is accepted.
    fn open_file(&self, name: &str, flags: OFlag, mode: u32) -> io::Result<File> {
        // O_NONBLOCK: a FIFO planted in the directory must not hang the
        // daemon; it is refused below.
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(
            self.fd(),
            single(name)?,
            flags,
            Mode::from_bits_truncate(mode),
        )
        .map_err(io_err)?;
        let st = fstat(fd.as_fd()).map_err(io_err)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name} is not a regular file"),
            ));
        }
        Ok(File::from(fd))
    }

    /// The whole content of `name`.
    pub fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_file(name, OFlag::O_RDONLY, 0)?
            .read_to_end(&mut out)?;
        Ok(out)
    }

    /// Replaces `name` with `text`: written to `name.tmp` (unlinked first,
    /// whatever it was, then made afresh with mode 0600), renamed over
    /// `name`. With `durable`, the file is fsync()ed before the rename and
    /// the directory after it.
    pub fn replace(&self, name: &str, text: &[u8], durable: bool) -> io::Result<()> {
        let tmp = format!("{}.tmp", single(name)?);
        self.remove(&tmp)?;
        let mut file = self.open_file(
            &tmp,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL,
            0o600,
        )?;
        file.write_all(text)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        self.rename(&tmp, name)?;
        if durable {
            nix::unistd::fsync(self.fd()).map_err(io_err)?;
        }
        Ok(())
    }

    /// Renames `from` to `to`, both in the directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        renameat(self.fd(), single(from)?, self.fd(), single(to)?).map_err(io_err)
    }

    /// Removes the file (or symbolic link) `name`; one that is not there is
    /// not an error.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match unlinkat(self.fd(), single(name)?, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err(e)),
        }
    }

    /// Opens the lock file (made with mode 0600 if missing; an older one is
    /// made 0600). The caller takes the lock.
    pub fn lock_file(&self) -> io::Result<File> {
        let file = self.open_file(LOCK, OFlag::O_WRONLY | OFlag::O_CREAT, 0o600)?;
        fchmod(file.as_fd(), Mode::from_bits_truncate(0o600)).map_err(io_err)?;
        Ok(file)
    }

    /// The pin directory, made (mode 0700) if missing and checked like the
    /// state directory.
    pub fn pins(&self) -> Result<PinDir, StateDirError> {
        let path = self.path.join(PINS);
        match mkdirat(self.fd(), PINS, Mode::from_bits_truncate(0o700)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                let source = io_err(e);
                return Err(StateDirError::Io { path, source });
            }
        }
        let fd = open_dir(Some(self.fd()), Path::new(PINS)).map_err(|source| {
            let path = path.clone();
            StateDirError::PinsNotADir { path, source }
        })?;
        check_own(fd.as_fd(), &path)?;
        Ok(PinDir::new(path, fd))
    }

    /// The pin directory as it is, unchecked (see [`StateDir::existing`]).
    pub fn existing_pins(&self) -> io::Result<PinDir> {
        let fd = open_dir(Some(self.fd()), Path::new(PINS))?;
        Ok(PinDir::new(self.path.join(PINS), fd))
    }
}

impl AsRawFd for StateDir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nsproxyfs-statedir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn files_are_replaced_without_following_a_planted_link() {
        let dir = scratch("replace");
        let state = StateDir::existing(&dir).unwrap();
        let outside = dir.join("outside");
        std::fs::write(&outside, "precious").unwrap();
        symlink(&outside, dir.join("tree.tmp")).unwrap();
        state.replace("tree", b"new\n", true).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(dir.join("tree")).unwrap(), "new\n");
        assert_eq!(mode(&dir.join("tree")), 0o600);
        assert!(!dir.join("tree.tmp").exists());
        // A record that is a link is not read through it.
        std::fs::remove_file(dir.join("tree")).unwrap();
        symlink(&outside, dir.join("tree")).unwrap();
        let e = state.read("tree").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
        // Names are single names.
        assert!(state.read("../outside").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_not_waited_on() {
        let dir = scratch("fifo");
        let state = StateDir::existing(&dir).unwrap();
        nix::unistd::mkfifo(&dir.join("lock"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(state.lock_file().is_err());
        assert!(state.read("lock").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

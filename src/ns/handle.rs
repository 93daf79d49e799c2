//! Namespace handles: an open nsfs file, what keeps it alive, and its pin.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use thiserror::Error;

use super::Kind;
use super::creds::{self, Credentials};
use super::resolve::{self, Opener, Resolved};
use crate::sys;

/// What a namespace was taken from, as errors name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A file, by its path.
    Path(PathBuf),
    /// A process, by its pid (as the writer wrote it).
    Process(i32),
    /// Something else, in words.
    Other(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Path(path) => write!(f, "{}", path.display()),
            Origin::Process(pid) => write!(f, "process {pid}"),
            Origin::Other(what) => f.write_str(what),
        }
    }
}

/// Why a namespace could not be obtained.
#[derive(Debug, Error)]
pub enum NsError {
    /// No process with that pid in the writer's pid namespace.
    #[error("no process {0} in the writer's pid namespace")]
    NoSuchProcess(i32),
    /// The file is a namespace of another kind.
    #[error("{origin} is a {found} namespace, not {wanted}")]
    WrongKind {
        /// What was opened.
        origin: Origin,
        /// The kind it is.
        found: Kind,
        /// The kind wanted.
        wanted: Kind,
    },
    /// The file is not a namespace file at all.
    #[error("{0} is not a namespace file")]
    NotANamespace(Origin),
    /// Opening the path failed.
    #[error("cannot open {}: {source}", path.display())]
    Open {
        /// The path, as written.
        path: PathBuf,
        /// What open(2) said.
        source: io::Error,
    },
    /// Opening the path did not end in time.
    #[error(
        "cannot open {}: no answer within {} s (a filesystem on the way does not respond)",
        .0.display(),
        resolve::LIMIT.as_secs()
    )]
    TimedOut(PathBuf),
    /// The kernel refused to make a fresh namespace.
    #[error("cannot create a fresh {kind} namespace: {source}")]
    Fresh {
        /// The kind asked for.
        kind: Kind,
        /// The kernel's answer.
        source: io::Error,
    },
    /// A written path leads where no namespace file can be.
    #[error("{}: refused, {why}", path.display())]
    Refused {
        /// The path, as written.
        path: PathBuf,
        /// Why.
        why: &'static str,
    },
    /// The kernel refuses the caller the namespace of a process.
    #[error(
        "not permitted: the kernel refuses uid {uid} access to the {kind} namespace of process {pid}"
    )]
    Denied {
        /// The caller's fsuid.
        uid: u32,
        /// The kind asked for.
        kind: Kind,
        /// The process, as the writer wrote it.
        pid: i32,
    },
    /// Acting with the caller's credentials failed.
    #[error("{what}: {source}")]
    Creds {
        /// What was being done.
        what: &'static str,
        /// Why it could not be.
        source: creds::CredsError,
    },
    /// Any other system call failure.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        source: io::Error,
    },
}

/// Why a namespace a previous daemon recorded cannot be taken back.
#[derive(Debug, Error)]
pub enum ReopenError {
    /// Its keeper has exited.
    #[error("its {role} process {pid} has exited")]
    KeeperGone {
        /// What the keeper was: `init` or `holder`.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// Its keeper has exited and the pid names another process now.
    #[error("its {role} process {pid} has exited (the pid now names another process)")]
    KeeperReplaced {
        /// What the keeper was.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// Its keeper was told to leave.
    #[error(
        "its {role} process {pid} is leaving (it was told to, or lost the daemon before the \
         namespace was recorded) and will exit with the namespace's last process"
    )]
    KeeperLeaving {
        /// What the keeper was.
        role: &'static str,
        /// Its pid.
        pid: i32,
    },
    /// The process is no keeper.
    #[error("process {pid} is not its {role} any more")]
    NotKeeper {
        /// What the keeper was.
        role: &'static str,
        /// Its recorded pid.
        pid: i32,
    },
    /// The keeper's namespace could not be read.
    #[error("{0}")]
    Inode(io::Error),
    /// The keeper sits in another namespace.
    #[error("its {role} process {pid} sits in {kind}:[{found}], not in this namespace")]
    KeeperElsewhere {
        /// What the keeper was.
        role: &'static str,
        /// Its pid.
        pid: i32,
        /// The kind.
        kind: Kind,
        /// The inode it is in.
        found: u64,
    },
    /// The pin is missing.
    #[error("its pin {} is missing", .0.display())]
    PinMissing(PathBuf),
    /// The pin is a symbolic link.
    #[error("its pin {} is a symbolic link", .0.display())]
    PinSymlink(PathBuf),
    /// The pin could not be opened.
    #[error("its pin {} cannot be opened: {source}", path.display())]
    PinOpen {
        /// The pin.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The pin is no namespace of that kind.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// The pin holds another namespace.
    #[error("its pin {} now holds {kind}:[{found}], another namespace", path.display())]
    PinReplaced {
        /// The pin.
        path: PathBuf,
        /// The kind.
        kind: Kind,
        /// The inode it holds.
        found: u64,
    },
}

fn sys_err(what: &'static str) -> impl FnOnce(io::Error) -> NsError {
    move |source| NsError::Sys { what, source }
}

/// A process the daemon keeps inside a namespace: the init of a fresh pid
/// namespace (`nsproxyfs-pid1`), without which the namespace could take no
/// new process, or the holder of a mount namespace (`nsproxyfs-mnt`), which
/// keeps it alive and reachable as `/proc/PID/ns/mnt` where no pin can.
///
/// A new keeper leaves when the daemon closes its control pipe or dies,
/// until [`Keeper::outlive_daemon`] (called once the record of the tree
/// names it). From then on only [`Keeper::leave`] ends it: it survives a
/// daemon restart, and the next daemon takes it over with
/// [`Keeper::adopt`]. Dropping a keeper only closes the pipe.
#[derive(Debug)]
pub struct Keeper {
    kind: Kind,
    pid: i32,
    start: u64,
    pidfd: OwnedFd,
    control: Mutex<Option<File>>,
}

/// The command name of a keeper of `kind`, as it names itself.
fn keeper_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Pid => "nsproxyfs-pid1",
        _ => "nsproxyfs-mnt",
    }
}

impl Keeper {
    fn started(kind: Kind, resident: sys::process::Resident) -> Result<Keeper, NsError> {
        let pidfd = sys::pidfd::open(resident.pid, 0).map_err(sys_err("pin the keeper"))?;
        let start = crate::procfs::start_time(resident.pid)
            .filter(|_| sys::pidfd::alive(pidfd.as_fd()))
            .ok_or_else(|| NsError::Sys {
                what: "read the keeper's start time",
                source: io::Error::from_raw_os_error(libc::ESRCH),
            })?;
        Ok(Keeper {
            kind,
            pid: resident.pid,
            start,
            pidfd,
            control: Mutex::new(Some(File::from(resident.control))),
        })
    }

    /// Takes over the keeper a previous daemon recorded for the namespace
    /// `kind`:`ino`, after checking that process `pid` is still the one
    /// that started at `start`, is a keeper, and sits in that namespace.
    /// Returns it with a descriptor of its namespace, or why not.
    pub fn adopt(
        kind: Kind,
        ino: u64,
        pid: i32,
        start: u64,
    ) -> Result<(Keeper, OwnedFd), ReopenError> {
        let role = match kind {
            Kind::Pid => "init",
            _ => "holder",
        };
        let gone = || ReopenError::KeeperGone { role, pid };
        let pidfd = sys::pidfd::open(pid, 0).map_err(|_| gone())?;
        if crate::procfs::start_time(pid) != Some(start) {
            return Err(ReopenError::KeeperReplaced { role, pid });
        }
        match crate::procfs::comm(pid) {
            Some(name) if name == keeper_name(kind) => {}
            Some(name) if name == "nsproxyfs-exit" => {
                return Err(ReopenError::KeeperLeaving { role, pid });
            }
            _ => return Err(ReopenError::NotKeeper { role, pid }),
        }
        let fd = sys::pidfd::namespace(pidfd.as_fd(), kind).map_err(|_| gone())?;
        let found = fd
            .try_clone()
            .map(File::from)
            .and_then(|f| f.metadata())
            .map(|m| m.ino())
            .map_err(ReopenError::Inode)?;
        if found != ino {
            return Err(ReopenError::KeeperElsewhere {
                role,
                pid,
                kind,
                found,
            });
        }
        if !sys::pidfd::alive(pidfd.as_fd()) {
            return Err(gone());
        }
        let keeper = Keeper {
            kind,
            pid,
            start,
            pidfd,
            control: Mutex::new(None),
        };
        Ok((keeper, fd))
    }

    /// The keeper's pid in the daemon's pid namespace.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Its start time (see [`crate::procfs::start_time`]).
    pub fn start_time(&self) -> u64 {
        self.start
    }

    /// Whether it still runs.
    pub fn is_alive(&self) -> bool {
        sys::pidfd::alive(self.pidfd.as_fd())
    }

    /// Makes it stay through the daemon's end, until [`Keeper::leave`].
    /// Call once the record of the tree names it.
    /// The pipe is closed after that: it has nothing more to say.
    pub fn outlive_daemon(&self) {
        if let Some(mut control) = self.control.lock().take()
            && let Err(e) = control.write_all(&[sys::child::OUTLIVE_DAEMON])
        {
            log::warn!("cannot tell keeper {} to outlive the daemon: {e}", self.pid);
        }
    }

    /// Tells it to leave: an init exits once it is the last process of its
    /// namespace (its exit would kill the others), a holder at once.
    pub fn leave(&self) {
        self.control.lock().take();
        let signal = match self.kind {
            Kind::Pid => libc::SIGTERM,
            _ => libc::SIGKILL,
        };
        if let Err(e) = sys::pidfd::send_signal(self.pidfd.as_fd(), signal)
            && e.raw_os_error() != Some(libc::ESRCH)
        {
            log::warn!("cannot tell keeper {} to leave: {e}", self.pid);
        }
    }
}

/// The directory pins live in (`STATE/pins`), opened once: every pin is
/// reached relative to it by its single name, never through a symbolic
/// link, so nothing planted there can redirect a pin's mount, unmount or
/// removal elsewhere.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
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
    fn open(&self, name: &str) -> io::Result<OwnedFd> {
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
    dir: Arc<PinDir>,
    name: String,
    path: PathBuf,
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

/// An open namespace: what a container binds.
#[derive(Debug)]
pub struct Namespace {
    kind: Kind,
    ino: u64,
    fd: OwnedFd,
    keeper: Option<Keeper>,
    pin: Option<Pin>,
}

impl Namespace {
    /// Wraps the nsfs file `fd`, which must be a namespace of `kind`;
    /// `what` names it in errors.
    pub fn from_fd(fd: OwnedFd, kind: Kind, what: Origin) -> Result<Namespace, NsError> {
        let found = match sys::ns::ns_type(fd.as_fd()) {
            Ok(t) => match Kind::from_clone_flag(t) {
                Some(found) => found,
                None => return Err(NsError::NotANamespace(what)),
            },
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {
                return Err(NsError::NotANamespace(what));
            }
            Err(e) => {
                return Err(NsError::Sys {
                    what: "NS_GET_NSTYPE",
                    source: e,
                });
            }
        };
        if found != kind {
            return Err(NsError::WrongKind {
                origin: what,
                found,
                wanted: kind,
            });
        }
        let ino = File::from(fd.try_clone().map_err(sys_err("dup"))?)
            .metadata()
            .map_err(sys_err("fstat"))?
            .ino();
        Ok(Namespace {
            kind,
            ino,
            fd,
            keeper: None,
            pin: None,
        })
    }

    /// The namespace of `kind` this daemon is in (for pid and time: the one
    /// its children are born into).
    pub fn own(kind: Kind) -> Result<Namespace, NsError> {
        let path = format!("/proc/self/ns/{}", kind.proc_entry());
        let file = File::open(&path).map_err(|source| NsError::Open {
            path: path.clone().into(),
            source,
        })?;
        Namespace::from_fd(file.into(), kind, Origin::Path(path.into()))
    }

    /// The namespace of `kind` of the task `pid` of the daemon's pid
    /// namespace, pinned through a pidfd so a reused pid is never read.
    pub fn of_task(pid: i32, kind: Kind) -> Result<Namespace, NsError> {
        let pidfd =
            sys::pidfd::open(pid, sys::pidfd::THREAD).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH | libc::EINVAL) => NsError::NoSuchProcess(pid),
                _ => NsError::Sys {
                    what: "pidfd_open",
                    source: e,
                },
            })?;
        let fd =
            sys::pidfd::namespace(pidfd.as_fd(), kind).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
                _ => NsError::Sys {
                    what: "PIDFD_GET_NAMESPACE",
                    source: e,
                },
            })?;
        Namespace::from_fd(fd, kind, Origin::Process(pid))
    }

    /// The namespace of `kind` of the task behind `pidfd` (`pid`, as the
    /// writer wrote it, names it in errors), taken as a caller holding
    /// `creds` would open `/proc/PID/ns/KIND`: the kernel applies its
    /// `PTRACE_MODE_READ_FSCREDS` check to those credentials.
    pub fn of_pidfd_as(
        creds: &Credentials,
        pidfd: BorrowedFd<'_>,
        pid: i32,
        kind: Kind,
    ) -> Result<Namespace, NsError> {
        let fd = creds::as_caller(creds, || sys::pidfd::namespace(pidfd, kind))
            .map_err(|source| NsError::Creds {
                what: "act as the caller",
                source,
            })?
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
                Some(libc::EACCES | libc::EPERM) => NsError::Denied {
                    uid: creds.uid[3],
                    kind,
                    pid,
                },
                _ => NsError::Sys {
                    what: "PIDFD_GET_NAMESPACE",
                    source: e,
                },
            })?;
        Namespace::from_fd(fd, kind, Origin::Process(pid))
    }

    /// The kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The nsfs inode number.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The open nsfs file.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// `net:[4026532240]`, as `readlink /proc/PID/ns/net` prints it.
    pub fn describe(&self) -> String {
        format!("{}:[{}]", self.kind.name(), self.ino)
    }

    /// The process kept in this namespace, if any: the init of a fresh pid
    /// namespace, or the holder of a bound mount namespace.
    pub fn keeper(&self) -> Option<&Keeper> {
        self.keeper.as_ref()
    }

    /// Starts a keeper sitting in this mount namespace (`nsproxyfs-mnt`),
    /// so that it lives on, reachable as `/proc/PID/ns/mnt`, even after
    /// the daemon ends. Nothing to do if it has one.
    pub fn hold_mount(&mut self) -> Result<(), NsError> {
        if self.kind != Kind::Mnt || self.keeper.is_some() {
            return Ok(());
        }
        let fail = |source| NsError::Sys {
            what: "start a holder for the mount namespace",
            source,
        };
        let fd = self.fd.as_raw_fd();
        // SAFETY: the child only joins the namespace through `Child`, and
        // the grandchild holds it with `Child::hold_mount`.
        let resident = unsafe {
            sys::process::spawn_resident(
                crate::procfs::argv_region(),
                |c| c.setns(fd, libc::CLONE_NEWNS),
                sys::child::Child::hold_mount,
            )
        }
        .map_err(fail)?
        .map_err(|errno| fail(io::Error::from_raw_os_error(errno)))?;
        let keeper = Keeper::started(Kind::Mnt, resident)?;
        if crate::procfs::ns_link_inode(keeper.pid(), "mnt") != Some(self.ino) {
            keeper.leave();
            return Err(fail(io::Error::from_raw_os_error(libc::EINVAL)));
        }
        self.keeper = Some(keeper);
        Ok(())
    }

    /// Reopens the namespace `kind`:`ino` from its pin at `path`, checking
    /// that the file is a namespace of that kind and inode; the pin is
    /// taken over as it is.
    pub fn from_pin(dir: &Arc<PinDir>, kind: Kind, ino: u64) -> Result<Namespace, ReopenError> {
        let name = Pin::name(kind, ino);
        let path = dir.path.join(&name);
        let file = dir
            .open(&name)
            .map_err(|source| match source.raw_os_error() {
                Some(libc::ENOENT) => ReopenError::PinMissing(path.clone()),
                Some(libc::ELOOP) => ReopenError::PinSymlink(path.clone()),
                _ => ReopenError::PinOpen {
                    path: path.clone(),
                    source,
                },
            })?;
        let mut ns = Namespace::from_fd(file, kind, Origin::Path(path.clone()))?;
        if ns.ino != ino {
            return Err(ReopenError::PinReplaced {
                path,
                kind,
                found: ns.ino,
            });
        }
        ns.pin = Some(Pin {
            dir: Arc::clone(dir),
            name,
            path,
        });
        Ok(ns)
    }

    /// Wraps `fd`, a namespace a keeper sits in (see [`Keeper::adopt`]).
    pub fn kept(fd: OwnedFd, kind: Kind, keeper: Keeper) -> Result<Namespace, NsError> {
        let mut ns = Namespace::from_fd(fd, kind, Origin::Other("a keeper's namespace"))?;
        ns.keeper = Some(keeper);
        Ok(ns)
    }

    /// Gives this namespace the keeper a previous daemon left in it.
    pub fn adopt_keeper(&mut self, keeper: Keeper) {
        self.keeper = Some(keeper);
    }

    /// The namespace lost its last binding: removes its pin and tells its
    /// keeper to leave. Processes still in it keep it alive.
    pub fn release(&self) {
        if let Some(pin) = &self.pin {
            pin.remove();
        }
        if let Some(keeper) = &self.keeper {
            keeper.leave();
        }
    }

    /// Pins the namespace in `dir` (see [`Pin`]). Mount namespaces are not
    /// pinned: the kernel refuses to bind-mount one into a mount namespace
    /// that is not older than it (mount loops, EINVAL), which rules out the
    /// daemon's own and every one made after it; a bound mount namespace has
    /// a keeper instead ([`Namespace::hold_mount`]).
    pub fn pin(&mut self, dir: &Arc<PinDir>) {
        if self.kind == Kind::Mnt {
            return;
        }
        match Pin::create(dir, self.kind, self.ino, self.fd.as_fd()) {
            Ok(pin) => self.pin = Some(pin),
            Err(e) => log::info!(
                "{} not pinned in {}: {e}",
                self.describe(),
                dir.path.display()
            ),
        }
    }

    /// The pin path, if pinned.
    pub fn pin_path(&self) -> Option<&Path> {
        self.pin.as_ref().map(Pin::path)
    }

    /// The descriptor number, for `/proc/PID/fd/N` paths.
    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }
}

/// Resolves `pid`, a pid in the pid namespace `writer_pidns`, to the
/// namespace of `kind` of that task.
pub fn of_pid_in(writer_pidns: BorrowedFd<'_>, pid: i32, kind: Kind) -> Result<Namespace, NsError> {
    let local = sys::ns::pid_from_pidns(writer_pidns, pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH) => NsError::NoSuchProcess(pid),
        _ => NsError::Sys {
            what: "NS_GET_PID_FROM_PIDNS",
            source: e,
        },
    })?;
    Namespace::of_task(local, kind).map_err(|e| match e {
        NsError::NoSuchProcess(_) => NsError::NoSuchProcess(pid),
        other => other,
    })
}

/// Opens `path` as the caller of `opener` would (see [`super::resolve`])
/// and checks that it is a namespace file of `kind`.
pub fn of_path(opener: &Opener, path: &str, kind: Kind) -> Result<Namespace, NsError> {
    if path.as_bytes().contains(&0) {
        return Err(NsError::NotANamespace(Origin::Path(path.into())));
    }
    let resolved = resolve::open(opener, path.as_bytes()).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT | libc::ESRCH) => NsError::NoSuchProcess(opener.tid as i32),
        _ => NsError::Sys {
            what: "open in the writer's mount namespace",
            source: e,
        },
    })?;
    match resolved {
        Resolved::File(fd) => Namespace::from_fd(fd, kind, Origin::Path(path.into())),
        Resolved::Failed(errno) => Err(NsError::Open {
            path: path.into(),
            source: io::Error::from_raw_os_error(errno),
        }),
        Resolved::Refused(why) => Err(NsError::Refused {
            path: path.into(),
            why,
        }),
        Resolved::TimedOut => Err(NsError::TimedOut(path.into())),
    }
}

/// Makes a fresh, empty namespace of `kind`. What "fresh" means per kind is
/// documented in `docs/tree.md`. In a fresh mount namespace, the mount at
/// `hide` (the daemon's own mount point) is detached, so that the copy does
/// not keep this filesystem alive after it is unmounted.
pub fn fresh(kind: Kind, hide: &CStr) -> Result<Namespace, NsError> {
    if kind == Kind::Pid {
        return fresh_pid();
    }
    let fail = |source| NsError::Fresh { kind, source };
    let (ready_r, ready_w) = sys::fs::pipe().map_err(fail)?;
    let (hold_r, hold_w) = sys::fs::pipe().map_err(fail)?;
    let (w, r) = (ready_w.as_raw_fd(), hold_r.as_raw_fd());
    let (unused_r, unused_w) = (ready_r.as_raw_fd(), hold_w.as_raw_fd());
    let flag = kind.clone_flag();
    // SAFETY: the child makes only the calls of `Child` (close, unshare,
    // mount changes, report, wait) on integers and a NUL-terminated path
    // prepared before the fork; it allocates nothing.
    let child = unsafe {
        sys::process::spawn_child(false, |c| {
            // The child's copy of the hold pipe's write end would keep it from
            // ever seeing EOF.
            c.close(unused_r);
            c.close(unused_w);
            let mut result = c.unshare(flag);
            if kind == Kind::Mnt {
                result = result.and_then(|()| c.make_root_private());
                if result.is_ok() {
                    c.detach(hide);
                }
            }
            c.report(w, result.err().unwrap_or(0));
            c.wait_eof(r);
            0
        })
    }
    .map_err(fail)?;
    drop(ready_w);
    drop(hold_r);
    let outcome = (|| {
        match sys::fs::read_i32(ready_r.as_fd()).map_err(fail)? {
            Some(0) => {}
            Some(errno) => return Err(fail(io::Error::from_raw_os_error(errno))),
            None => return Err(fail(io::Error::from_raw_os_error(libc::EIO))),
        }
        if kind == Kind::User {
            write_identity_maps(child).map_err(fail)?;
        }
        let path = format!("/proc/{child}/ns/{}", kind.proc_entry());
        let file = File::open(&path).map_err(fail)?;
        Namespace::from_fd(file.into(), kind, Origin::Path(path.into()))
    })();
    drop(hold_w);
    let _ = sys::process::reap(child);
    outcome
}

fn write_identity_maps(pid: i32) -> io::Result<()> {
    for map in ["uid_map", "gid_map"] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/{map}"))?;
        f.write_all(b"0 0 4294967295\n")?;
    }
    Ok(())
}

fn fresh_pid() -> Result<Namespace, NsError> {
    let fail = |source| NsError::Fresh {
        kind: Kind::Pid,
        source,
    };
    // SAFETY: the child only unshares through `Child`; the grandchild runs
    // `Child::keep_pid_namespace`.
    let init = unsafe {
        sys::process::spawn_resident(
            crate::procfs::argv_region(),
            |c| c.unshare(libc::CLONE_NEWPID),
            sys::child::Child::keep_pid_namespace,
        )
    }
    .map_err(fail)?
    .map_err(|errno| fail(io::Error::from_raw_os_error(errno)))?;
    let path = format!("/proc/{}/ns/pid", init.pid);
    let file = File::open(&path).map_err(fail)?;
    let mut ns = Namespace::from_fd(file.into(), Kind::Pid, Origin::Path(path.into()))?;
    ns.keeper = Some(Keeper::started(Kind::Pid, init)?);
    Ok(ns)
}

//! Running the filesystem: checks before mounting, the mount itself, going
//! to the background, and a clean end on umount or SIGTERM/SIGINT.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::getpid;

use crate::export::{ExportError, Exporter};
use crate::fs::Session;
use crate::logs::{Destination, LogError};
use crate::mover::Mover;
use crate::procfs::{self, MountInfo};
use crate::service::{Options, Service};
use crate::state::{self, Loaded, Recorder, StateDir};
use crate::state_dir::StateDirError;

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where to mount.
    pub mountpoint: PathBuf,
    /// Where state (the record of the tree, pins, the lock) lives.
    pub state_dir: PathBuf,
    /// Where to export containers' own net namespaces (`--netns-export`).
    pub netns_export: Option<PathBuf>,
    /// Stay attached to the terminal, log to stderr.
    pub foreground: bool,
    /// Log level.
    pub level: log::LevelFilter,
    /// Show the namespace sets already in use (`--discover`).
    pub discover: bool,
    /// Where to log (`--log`); `None` chooses by `foreground` and whether
    /// a syslog socket answers.
    pub log: Option<Destination>,
}

/// A start-up failure, printed as one line.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Not run as root.
    #[error("must run as root: it mounts a filesystem and works on other processes' namespaces")]
    NotRoot,
    /// No `/dev/fuse`.
    #[error("/dev/fuse is missing: load the fuse module (modprobe fuse)")]
    NoFuse,
    /// The mount point cannot be resolved.
    #[error("mount point {}: {source}", path.display())]
    MountPoint {
        /// The mount point, as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A dead mount of another filesystem is on the mount point.
    #[error(
        "mount point {}: {source}: a mount of type {fstype} whose server is gone; \
         unmount it first (umount -l {})",
        path.display(),
        at.display()
    )]
    DeadMount {
        /// The mount point, as given.
        path: PathBuf,
        /// What using it said.
        source: io::Error,
        /// The dead mount's type.
        fstype: String,
        /// Where it is.
        at: PathBuf,
    },
    /// The mount point's path holds a NUL.
    #[error("mount point {}: a NUL in the path", .0.display())]
    Nul(PathBuf),
    /// A dead mount of this filesystem cannot be detached.
    #[error(
        "mount point {}: the mount of a daemon that died is still there and cannot be \
         detached: {source}",
        path.display()
    )]
    Undetachable {
        /// The mount point, as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The mount point is not a directory.
    #[error("mount point {} is not a directory", .0.display())]
    NotADir(PathBuf),
    /// Something is mounted on the mount point.
    #[error("mount point {} is busy: something is mounted there", .0.display())]
    Busy(PathBuf),
    /// The state directory cannot be used.
    #[error(transparent)]
    StateDir(#[from] StateDirError),
    /// The state directory's lock cannot be opened.
    #[error("{}: {source}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Another daemon holds the state directory.
    #[error("state directory {} is in use by another nsproxyfs daemon", .0.display())]
    InUse(PathBuf),
    /// `--netns-export` cannot be used.
    #[error(transparent)]
    Export(#[from] ExportError),
    /// `--log` cannot be used.
    #[error(transparent)]
    Log(#[from] LogError),
    /// A step of starting failed.
    #[error("{what}: {source}")]
    Sys {
        /// The step.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The daemon's own namespaces cannot be read.
    #[error("cannot read the daemon's own namespaces: {0}")]
    OwnNamespaces(crate::service::Error),
    /// The mount failed.
    #[error("cannot mount on {}: {source}", path.display())]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The mount does not answer.
    #[error("the mount at {} does not answer: {source}", path.display())]
    NoAnswer {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// Threads run already where the daemon must fork (the count read, if
    /// it could be read).
    #[error("cannot go to the background: {} threads are running, not one", .0.map_or("several".to_string(), |n| n.to_string()))]
    Threads(Option<u32>),
    /// The background daemon died before saying how its start went.
    #[error("the daemon died while starting")]
    DiedStarting,
    /// The background daemon's start failed: its error, as it printed it
    /// to the start report pipe (text from another process, shown as it
    /// came).
    #[error("{0}")]
    InBackground(String),
}

/// Whether `path` is a mount point in this mount namespace.
fn is_mount_point(path: &Path) -> bool {
    procfs::read_mountinfo().is_ok_and(|info| is_mount_point_in(&info, path))
}

/// Whether `path` is a mount point in the mount table `info`.
fn is_mount_point_in(info: &[u8], path: &Path) -> bool {
    let want = path.as_os_str().as_bytes();
    MountInfo::new(info).any(|mount| mount.is_at(want))
}

/// The filesystem type of the topmost mount on `path` in this mount
/// namespace, if something is mounted there.
fn mount_type_at(path: &Path) -> Option<String> {
    let info = procfs::read_mountinfo().ok()?;
    let want = path.as_os_str().as_bytes();
    MountInfo::new(&info)
        .rev()
        .filter(|mount| mount.is_at(want))
        .find_map(|mount| mount.fstype())
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

/// The type a dead mount of this filesystem shows in the mount table.
const OWN_TYPE: &str = "fuse.nsproxyfs";

/// Resolves the mount point. A mount of this filesystem whose daemon died
/// (it answers `ENOTCONN`) is detached first, so that a crash never blocks
/// the next start; the message saying so is returned for the log. A dead
/// mount of another filesystem is left alone and refused.
fn resolve_mount_point(mp: &Path) -> Result<(PathBuf, Option<String>), StartError> {
    let dead = |e: &std::io::Error| e.raw_os_error() == Some(libc::ENOTCONN);
    let mount_point = |source| StartError::MountPoint {
        path: mp.to_path_buf(),
        source,
    };
    let resolved = match std::fs::canonicalize(mp) {
        Err(e) if !dead(&e) => return Err(mount_point(e)),
        resolved => resolved,
    };
    let err = match &resolved {
        Ok(p) => match std::fs::metadata(p) {
            Err(e) if dead(&e) => e,
            _ => return Ok((p.clone(), None)),
        },
        Err(_) => std::io::Error::from_raw_os_error(libc::ENOTCONN),
    };
    // The dead mount's own path: resolved whole if the kernel lets it be,
    // else its parent resolved and its name as given.
    let absolute = std::path::absolute(mp).map_err(mount_point)?;
    let at = match (&resolved, absolute.parent(), absolute.file_name()) {
        (Ok(p), _, _) => Some(p.clone()),
        (Err(_), Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).ok().map(|p| p.join(name))
        }
        _ => None,
    };
    let Some(at) = at else {
        return Err(mount_point(err));
    };
    match mount_type_at(&at) {
        Some(t) if t == OWN_TYPE => {}
        Some(fstype) => {
            return Err(StartError::DeadMount {
                path: mp.to_path_buf(),
                source: err,
                fstype,
                at,
            });
        }
        None => return Err(mount_point(err)),
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes())
        .map_err(|_| StartError::Nul(mp.to_path_buf()))?;
    if let Err(source) = crate::sys::mount::detach(&c) {
        return Err(StartError::Undetachable {
            path: mp.to_path_buf(),
            source,
        });
    }
    let canonical = std::fs::canonicalize(&at).map_err(mount_point)?;
    let note = format!(
        "detached the mount on {} left by a daemon that died ({err})",
        canonical.display()
    );
    Ok((canonical, Some(note)))
}

/// What [`preflight`] found: the mount point, the state directory and the
/// export directory, all canonical, the state directory's lock, and what
/// was done to the mount point on the way (a dead mount detached).
struct Checked {
    mountpoint: PathBuf,
    state_dir: PathBuf,
    netns_export: Option<PathBuf>,
    state: Arc<StateDir>,
    lock: File,
    detached: Option<String>,
}

/// Checks everything that can be checked before forking, so the user gets
/// one clear line instead of a daemon that dies in the background.
fn preflight(settings: &Settings) -> Result<Checked, StartError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(StartError::NotRoot);
    }
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => return Err(StartError::NoFuse),
    }
    let mp = &settings.mountpoint;
    let (canonical, detached) = resolve_mount_point(mp)?;
    if !canonical.is_dir() {
        return Err(StartError::NotADir(mp.clone()));
    }
    if is_mount_point(&canonical) {
        return Err(StartError::Busy(mp.clone()));
    }
    let state = Arc::new(StateDir::open(&settings.state_dir)?);
    let lock = state.lock_file().map_err(|source| StartError::Lock {
        path: state.path().join(crate::state_dir::LOCK),
        source,
    })?;
    if crate::sys::fs::try_lock(lock.as_fd()).is_err() {
        return Err(StartError::InUse(settings.state_dir.clone()));
    }
    let netns_export = match &settings.netns_export {
        Some(dir) => Some(crate::export::check_dir(dir, &canonical, state.path())?),
        None => None,
    };
    // Absolute from here on (the state directory is resolved when it is
    // opened): pins in `status` and the daemon's working directory (/) must
    // not depend on where it was started.
    Ok(Checked {
        mountpoint: canonical,
        state_dir: state.path().to_path_buf(),
        netns_export,
        state,
        lock,
        detached,
    })
}

/// Forgets everything the state directory `dir` keeps, for a daemon that
/// is not running (tests, or starting over by hand): the exports left by
/// `--netns-export` (see [`crate::export::forget`]), then the tree, its
/// pins and keepers (see [`state::forget`]).
pub fn forget(dir: &Path) {
    if let Ok(state_dir) = StateDir::existing(dir) {
        crate::export::forget(&state_dir);
    }
    state::forget(dir);
}

/// Unmounts and removes every pin left in `dir`, following no symbolic
/// link (for tests and benchmarks that start over).
pub fn clear_pins(dir: &Path) {
    let fd = std::fs::File::open(dir).map(OwnedFd::from);
    if let Ok(fd) = fd {
        let pins = crate::ns::PinDir::new(dir.to_path_buf(), fd);
        state::sweep_pins(&pins, &std::collections::HashSet::new());
    }
}

/// Blocks, in this thread and the threads it starts, the signals the main
/// thread waits for, and returns them.
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(sig);
    }
    if let Err(e) = set.thread_block() {
        log::warn!("cannot block signals: {e}");
    }
    set
}

/// Runs the daemon. In the background case the calling process returns
/// (exit status for the shell) only once the mount answers or failed.
///
/// Going to the background forks, which is sound only in a process with
/// one thread: if the caller has started another, this refuses (reading
/// the thread count from `/proc/self/status`) rather than fork.
pub fn run(mut settings: Settings, mover: Box<dyn Mover>) -> Result<(), StartError> {
    let Checked {
        mountpoint,
        state_dir,
        netns_export,
        state,
        lock,
        detached,
    } = preflight(&settings)?;
    settings.state_dir = state_dir;
    let log_to = match &settings.log {
        Some(dest) => {
            crate::logs::check(dest)?;
            dest.clone()
        }
        None => Destination::default_for(settings.foreground, &settings.state_dir),
    };
    // Not dumpable: the threads that take a caller's credentials for a
    // check (`ns::creds`) would otherwise be open, while they live, to
    // `ptrace` and `/proc/PID/task/TID/fd` by any process holding those
    // credentials, and through them the daemon's memory and descriptors.
    // The kernel already makes it so once a check changes a uid; this
    // makes it so from the start, whoever the callers are.
    // Clearing the flag cannot fail.
    let _ = nix::sys::prctl::set_dumpable(false);
    // Every path in use is absolute now; the daemon and its helpers keep
    // no directory busy.
    if let Err(e) = std::env::set_current_dir("/") {
        return Err(StartError::Sys {
            what: "cannot change directory to /",
            source: e,
        });
    }
    if settings.foreground && log_to != Destination::Stderr {
        eprintln!("nsproxyfs: logging to {log_to}");
    }
    let report = if settings.foreground {
        None
    } else {
        // The daemon forks into the background before it starts any
        // thread: a fork copies only the calling thread, and the child of
        // a multithreaded process may make only async-signal-safe calls.
        // Checked rather than assumed, so that a thread started earlier
        // (by a library, or a future change) is refused here instead of
        // leaving a child with locks that never unlock.
        match procfs::Status::read_self().map(|s| s.number::<u32>("Threads")) {
            Ok(Some(1)) => {}
            Ok(threads) => return Err(StartError::Threads(threads)),
            Err(source) => {
                return Err(StartError::Sys {
                    what: "count this process's threads",
                    source,
                });
            }
        }
        let (r, w) = crate::sys::fs::pipe().map_err(|source| StartError::Sys {
            what: "pipe",
            source,
        })?;
        // SAFETY: this process has one thread, checked just above, and only
        // that thread could have started another since.
        match unsafe { crate::sys::process::fork() } {
            Err(source) => {
                return Err(StartError::Sys {
                    what: "fork",
                    source,
                });
            }
            Ok(None) => {
                drop(r);
                // Cannot fail: the child is not a process group leader.
                let _ = nix::unistd::setsid();
                Some(w)
            }
            Ok(Some(_)) => {
                drop(w);
                let mut msg = String::new();
                let _ = File::from(r).read_to_string(&mut msg);
                return match msg.strip_prefix("ok ") {
                    Some(log_to) => {
                        eprintln!(
                            "nsproxyfs: mounted on {}; logging to {log_to}",
                            mountpoint.display()
                        );
                        Ok(())
                    }
                    None if msg.is_empty() => Err(StartError::DiedStarting),
                    None => Err(StartError::InBackground(msg)),
                };
            }
        }
    };
    let log_to = crate::logs::install(
        &log_to,
        settings.level,
        &settings.state_dir,
        crate::fs::routine,
    );
    if let Some(note) = detached {
        log::warn!("{note}");
    }
    let result = serve(
        &settings,
        state,
        &mountpoint,
        netns_export,
        mover,
        report,
        &log_to,
    );
    drop(lock);
    result
}

fn tell(report: &mut Option<OwnedFd>, msg: &str) {
    if let Some(fd) = report.take() {
        let _ = File::from(fd).write_all(msg.as_bytes());
    }
}

/// Tells the waiting parent (if any) that the start failed, and why.
fn failed(report: &mut Option<OwnedFd>, e: impl Into<StartError>) -> Result<(), StartError> {
    let e = e.into();
    tell(report, &e.to_string());
    Err(e)
}

fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
}

/// How long the new mount may take to answer its first request.
const FIRST_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the mount on `mountpoint` answers a first request (a stat of its
/// `status`) within [`FIRST_ANSWER`]. The stat runs on a thread of its own:
/// should the session not serve it, the daemon does not wait forever in its
/// own mount but fails its start, and its exit ends the connection, which
/// lets that thread go.
fn answers(mountpoint: &Path) -> std::io::Result<()> {
    let status = mountpoint.join("status");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("first-answer".into())
        .spawn(move || {
            let _ = tx.send(std::fs::metadata(status).map(drop));
        })?;
    rx.recv_timeout(FIRST_ANSWER)
        .unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut)))
}

/// Ends the daemon (SIGUSR1 to itself) once `mountpoint` is no longer a
/// mount point in the daemon's mount namespace. The FUSE session alone
/// cannot tell: a copy of the mount in another mount namespace keeps the
/// connection open after `umount`.
fn watch_unmount(mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("mount-watch".into())
        .spawn(move || {
            let Ok(mut table) = procfs::MountTable::open() else {
                return;
            };
            let mut sink = Vec::new();
            loop {
                if table.read(&mut sink).is_err() {
                    return;
                }
                if !is_mount_point_in(&sink, &mountpoint) {
                    // Blocked in every thread, and taken by the main thread's
                    // sigwait.
                    let _ = kill(getpid(), Signal::SIGUSR1);
                    return;
                }
                let _ = table.wait_change();
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot watch for unmount: {e}");
    }
}

/// Removes the exports when the daemon ends by returning, whether cleanly
/// or because it could not mount; a killed daemon leaves them to the next.
struct CloseExports(Option<Arc<Exporter>>);

impl Drop for CloseExports {
    fn drop(&mut self) {
        if let Some(exporter) = &self.0 {
            exporter.close();
        }
    }
}

fn serve(
    settings: &Settings,
    state_dir: Arc<StateDir>,
    mountpoint: &Path,
    netns_export: Option<PathBuf>,
    mover: Box<dyn Mover>,
    mut report: Option<OwnedFd>,
    log_to: &Destination,
) -> Result<(), StartError> {
    let sigset = block_signals();
    let pin_dir = match state_dir.pins() {
        Ok(pins) => Arc::new(pins),
        Err(e) => return failed(&mut report, e),
    };
    let exporter = match netns_export {
        Some(dir) => match Exporter::open(&dir, Arc::clone(&state_dir)) {
            Ok(exporter) => Some(Arc::new(exporter)),
            Err(e) => return failed(&mut report, e),
        },
        // Exports a previous daemon made with the option go.
        None => {
            crate::export::forget(&state_dir);
            None
        }
    };
    let _close_exports = CloseExports(exporter.clone());
    let no_pins = std::collections::HashSet::new();
    let restore = match state::load(&state_dir) {
        Loaded::Found(record) => Some(record),
        Loaded::Nothing => {
            state::sweep_pins(&pin_dir, &no_pins);
            None
        }
        Loaded::SetAside { why, moved } => {
            let moved = match moved {
                Some(path) => format!("set aside as {}", path.display()),
                None => "it could not be set aside and will be overwritten".to_owned(),
            };
            log::error!(
                "the record of the tree in {} cannot be used ({why}); {moved}; starting \
                 with an empty tree",
                state_dir.path().display()
            );
            state::sweep_pins(&pin_dir, &no_pins);
            None
        }
    };
    // Chooses, and logs, where membership answers come from: the counting
    // programs only for discovery, which must hear of every switch.
    crate::kview::start(settings.discover);
    let recorder = Recorder::open(Arc::clone(&state_dir));
    let service = match Service::new(
        Options {
            pin_dir: Arc::clone(&pin_dir),
            mountpoint: mountpoint.to_path_buf(),
            recorder: Some(recorder),
            restore,
            discover: settings.discover,
            exporter,
        },
        mover,
    ) {
        Ok(service) => service,
        Err(e) => return failed(&mut report, StartError::OwnNamespaces(e)),
    };
    let service = Arc::new(service);
    if settings.discover
        && let Err(e) =
            crate::discover::spawn(Arc::clone(&service) as Arc<dyn crate::discover::Sink>)
    {
        let what = "cannot start the discovery thread";
        return failed(&mut report, StartError::Sys { what, source: e });
    }
    let mut session = match Session::mount(service, mountpoint) {
        Ok(s) => s,
        Err(source) => {
            state::tidy(&state_dir, &pin_dir);
            let path = mountpoint.to_path_buf();
            return failed(&mut report, StartError::Mount { path, source });
        }
    };
    // The daemon unmounts by itself (or finds the mount gone).
    let mut unmounter = session.unmounter();
    // Says when the session, and the filesystem with its helpers, is gone.
    let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
    let loop_thread = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                log::error!("FUSE session ended with an error: {e}");
            }
            // A signal every thread blocks, so it is picked up by sigwait
            // below.
            let _ = kill(getpid(), Signal::SIGUSR1);
            // run() took the session, and the filesystem, with it.
            let _ = ended_tx.send(());
        });
    if let Err(e) = loop_thread {
        let what = "cannot start the FUSE thread";
        return failed(&mut report, StartError::Sys { what, source: e });
    }
    watch_unmount(mountpoint.to_path_buf());
    // One round trip through the kernel: the mount answers.
    if let Err(source) = answers(mountpoint) {
        let path = mountpoint.to_path_buf();
        return failed(&mut report, StartError::NoAnswer { path, source });
    }
    log::info!(
        "nsproxyfs {} mounted on {}, state in {}, logging to {log_to}",
        env!("CARGO_PKG_VERSION"),
        mountpoint.display(),
        state_dir.path().display()
    );
    if report.is_some() {
        tell(&mut report, &format!("ok {log_to}"));
        detach_stdio();
    } else if let Err(e) = crate::notify::notify("READY=1") {
        log::warn!("cannot tell the service manager that the mount is ready: {e}");
    }
    let sig = loop {
        if let Ok(sig) = sigset.wait() {
            break sig as i32;
        }
    };
    if settings.foreground {
        let _ = crate::notify::notify("STOPPING=1");
    }
    if sig == libc::SIGUSR1 {
        log::info!("unmounted; exiting");
    } else {
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            && let Err(e) = crate::sys::mount::detach(&c)
        {
            log::warn!("unmount {}: {e}", mountpoint.display());
        }
    }
    // Takes the mount from the session; it is gone already (or is ours to
    // detach above), so the error says only that.
    let _ = unmounter.unmount();
    // The filesystem is dropped with the session: its idle injectors are
    // let go and collected then (see Injectors). Waited for a little, so
    // that the daemon does not end first and leave them to whoever adopts
    // orphans.
    if ended
        .recv_timeout(std::time::Duration::from_secs(3))
        .is_err()
    {
        log::debug!("the FUSE session did not end within 3 s of the unmount");
    }
    // Pins of bound namespaces stay, with the record, for the next daemon;
    // exports go (see CloseExports).
    state::tidy(&state_dir, &pin_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = std::env::temp_dir().join(format!("nsproxyfs-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir));
        std::fs::remove_dir(&dir).unwrap();
    }
}

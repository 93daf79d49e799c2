//! Running the filesystem: checks before mounting, the mount itself, going
//! to the background, and a clean end on umount or SIGTERM/SIGINT.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, MountOption, SessionACL};

use crate::export::Exporter;
use crate::fs::{Mounted, Mover, NsProxyFs, Options};
use crate::logs::Destination;
use crate::procfs::{self, MountInfo};
use crate::state::{self, Loaded, Recorder, StateDir};

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
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(msg: impl Into<String>) -> Result<T, StartError> {
    Err(StartError(msg.into()))
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
    let resolved = std::fs::canonicalize(mp);
    let err = match &resolved {
        Ok(p) => match std::fs::metadata(p) {
            Err(e) if dead(&e) => e,
            _ => return Ok((p.clone(), None)),
        },
        Err(e) if dead(e) => std::io::Error::from_raw_os_error(libc::ENOTCONN),
        Err(e) => return fail(format!("mount point {}: {e}", mp.display())),
    };
    // The dead mount's own path: resolved whole if the kernel lets it be,
    // else its parent resolved and its name as given.
    let absolute = std::path::absolute(mp)
        .map_err(|e| StartError(format!("mount point {}: {e}", mp.display())))?;
    let at = match (&resolved, absolute.parent(), absolute.file_name()) {
        (Ok(p), _, _) => Some(p.clone()),
        (Err(_), Some(parent), Some(name)) => {
            std::fs::canonicalize(parent).ok().map(|p| p.join(name))
        }
        _ => None,
    };
    let Some(at) = at else {
        return fail(format!("mount point {}: {err}", mp.display()));
    };
    match mount_type_at(&at) {
        Some(t) if t == OWN_TYPE => {}
        Some(t) => {
            return fail(format!(
                "mount point {}: {err}: a mount of type {t} whose server is gone; \
                 unmount it first (umount -l {})",
                mp.display(),
                at.display()
            ));
        }
        None => return fail(format!("mount point {}: {err}", mp.display())),
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes())
        .map_err(|_| StartError(format!("mount point {}: a NUL in the path", mp.display())))?;
    if let Err(e) = crate::ns::sys::detach(&c) {
        return fail(format!(
            "mount point {}: the mount of a daemon that died is still there and cannot be \
             detached: {e}",
            mp.display()
        ));
    }
    let canonical = std::fs::canonicalize(&at)
        .map_err(|e| StartError(format!("mount point {}: {e}", mp.display())))?;
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
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return fail(
            "must run as root: it mounts a filesystem and works on other processes' namespaces",
        );
    }
    match std::fs::metadata("/dev/fuse") {
        Ok(m) if m.file_type().is_char_device() => {}
        _ => return fail("/dev/fuse is missing: load the fuse module (modprobe fuse)"),
    }
    let mp = &settings.mountpoint;
    let (canonical, detached) = resolve_mount_point(mp)?;
    if !canonical.is_dir() {
        return fail(format!("mount point {} is not a directory", mp.display()));
    }
    if is_mount_point(&canonical) {
        return fail(format!(
            "mount point {} is busy: something is mounted there",
            mp.display()
        ));
    }
    let state = Arc::new(StateDir::open(&settings.state_dir).map_err(StartError)?);
    let lock = state.lock_file().map_err(|e| {
        StartError(format!(
            "{}: {e}",
            state.path().join(crate::state_dir::LOCK).display()
        ))
    })?;
    // SAFETY: flock takes a descriptor we own and a constant.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return fail(format!(
            "state directory {} is in use by another nsproxyfs daemon",
            settings.state_dir.display()
        ));
    }
    let netns_export = match &settings.netns_export {
        Some(dir) => {
            Some(crate::export::check_dir(dir, &canonical, state.path()).map_err(StartError)?)
        }
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

/// Unmounts and removes every pin left in `dir`, following no symbolic
/// link (for tests and benchmarks that start over).
pub fn clear_pins(dir: &Path) {
    let fd = std::fs::File::open(dir).map(OwnedFd::from);
    if let Ok(fd) = fd {
        let pins = crate::ns::PinDir::new(dir.to_path_buf(), fd);
        state::sweep_pins(&pins, &std::collections::HashSet::new());
    }
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: `set` is a valid sigset_t that sigemptyset initialises before
    // use; pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Runs the daemon. In the background case the calling process returns
/// (exit status for the shell) only once the mount answers or failed.
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
            crate::logs::check(dest).map_err(StartError)?;
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
    // SAFETY: prctl(PR_SET_DUMPABLE) takes integers and changes a flag.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Every path in use is absolute now; the daemon and its helpers keep
    // no directory busy.
    if let Err(e) = std::env::set_current_dir("/") {
        return fail(format!("cannot change directory to /: {e}"));
    }
    if settings.foreground && log_to != Destination::Stderr {
        eprintln!("nsproxyfs: logging to {log_to}");
    }
    let report = if settings.foreground {
        None
    } else {
        let (r, w) = crate::ns::sys::pipe().map_err(|e| StartError(format!("pipe: {e}")))?;
        // SAFETY: no thread has been started yet, so the child is a full
        // copy of a single-threaded process.
        match unsafe { libc::fork() } {
            -1 => return fail(format!("fork: {}", std::io::Error::last_os_error())),
            0 => {
                drop(r);
                // SAFETY: setsid has no preconditions; the child is not a
                // process group leader.
                unsafe { libc::setsid() };
                Some(w)
            }
            _ => {
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
                    None if msg.is_empty() => fail("the daemon died while starting"),
                    None => Err(StartError(msg)),
                };
            }
        }
    };
    let log_to = crate::logs::install(&log_to, settings.level, &settings.state_dir);
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

fn detach_stdio() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors, which this process
            // owns; the source stays open until `null` drops.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// Ends the daemon (SIGUSR1 to itself) once `mountpoint` is no longer a
/// mount point in the daemon's mount namespace. The FUSE session alone
/// cannot tell: a copy of the mount in another mount namespace keeps the
/// connection open after `umount`.
fn watch_unmount(mountpoint: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("mount-watch".into())
        .spawn(move || {
            let Ok(mut table) = File::open("/proc/self/mountinfo") else {
                return;
            };
            let mut sink = Vec::new();
            loop {
                sink.clear();
                use std::io::Seek;
                if table.rewind().is_err() || table.read_to_end(&mut sink).is_err() {
                    return;
                }
                if !is_mount_point_in(&sink, &mountpoint) {
                    // SAFETY: a signal to our own pid, blocked in every thread and
                    // taken by the main thread's sigwait.
                    unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
                    return;
                }
                let mut pfd = libc::pollfd {
                    fd: table.as_raw_fd(),
                    events: libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: `pfd` is one valid pollfd; -1 waits until the mount
                // table changes.
                unsafe { libc::poll(&mut pfd, 1, -1) };
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
        Err(msg) => {
            tell(&mut report, &msg);
            return fail(msg);
        }
    };
    let exporter = match netns_export {
        Some(dir) => match Exporter::open(&dir, Arc::clone(&state_dir)) {
            Ok(exporter) => Some(Arc::new(exporter)),
            Err(msg) => {
                tell(&mut report, &msg);
                return fail(msg);
            }
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
    let recorder = Recorder::open(Arc::clone(&state_dir));
    let fs = match NsProxyFs::new(
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
        Ok(fs) => fs,
        Err(e) => {
            let msg = format!("cannot read the daemon's own namespaces: {e}");
            tell(&mut report, &msg);
            return fail(msg);
        }
    };
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("nsproxyfs".into()),
        // The kernel takes the subtype as a mount option, so the mount
        // table shows the type fuse.nsproxyfs (fuser only passes
        // Subtype to fusermount).
        MountOption::CUSTOM("subtype=nsproxyfs".into()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
    ];
    config.acl = SessionACL::All;
    config.n_threads = Some(4);
    config.clone_fd = true;
    let fs = Arc::new(fs);
    // Chooses, and logs, where membership answers come from.
    crate::kview::membership();
    if settings.discover
        && let Err(e) = crate::discover::spawn(Arc::clone(&fs) as Arc<dyn crate::discover::Sink>)
    {
        let msg = format!("cannot start the discovery thread: {e}");
        tell(&mut report, &msg);
        return fail(msg);
    }
    let mut session = match fuser::Session::new(Mounted(fs), mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", mountpoint.display());
            tell(&mut report, &msg);
            state::tidy(&state_dir, &pin_dir);
            return fail(msg);
        }
    };
    // The daemon unmounts by itself (or finds the mount gone); fuser's own
    // attempt at the end would fail and log a warning on a clean end.
    let mut unmounter = session.unmount_callable();
    // Says when the session, and the filesystem with its helpers, is gone.
    let (ended_tx, ended) = std::sync::mpsc::channel::<()>();
    let loop_thread = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                log::error!("FUSE session ended with an error: {e}");
            }
            // SAFETY: kill to our own pid with a signal every thread blocks, so
            // it is picked up by sigwait below.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
            // run() took the session, and the filesystem, with it.
            let _ = ended_tx.send(());
        });
    if let Err(e) = loop_thread {
        let msg = format!("cannot start the FUSE thread: {e}");
        tell(&mut report, &msg);
        return fail(msg);
    }
    watch_unmount(mountpoint.to_path_buf());
    // One round trip through the kernel: the mount answers.
    if let Err(e) = std::fs::metadata(mountpoint.join("status")) {
        let msg = format!("the mount at {} does not answer: {e}", mountpoint.display());
        tell(&mut report, &msg);
        return fail(msg);
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
    let mut sig = 0;
    loop {
        // SAFETY: `sigset` is initialised; `sig` is a valid int to fill.
        if unsafe { libc::sigwait(&sigset, &mut sig) } == 0 {
            break;
        }
    }
    if settings.foreground {
        let _ = crate::notify::notify("STOPPING=1");
    }
    if sig == libc::SIGUSR1 {
        log::info!("unmounted; exiting");
    } else {
        log::info!("signal {sig}: unmounting {}", mountpoint.display());
        if let Ok(c) = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
            && let Err(e) = crate::ns::sys::detach(&c)
        {
            log::warn!("unmount {}: {e}", mountpoint.display());
        }
    }
    // Takes the mount from fuser; it is gone already (or is ours to detach
    // above), so the error says only that.
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

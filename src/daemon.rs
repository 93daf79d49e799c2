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
use crate::state::{self, Loaded, Recorder};

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
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 4 <= field.len() {
            let digits = &field[i + 1..i + 4];
            if let Some(v) = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// What [`preflight`] found: the mount point and the export directory,
/// both canonical, and the state directory's lock.
struct Checked {
    mountpoint: PathBuf,
    netns_export: Option<PathBuf>,
    lock: File,
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
    let canonical = match std::fs::canonicalize(mp) {
        Ok(p) => p,
        Err(e) => return fail(format!("mount point {}: {e}", mp.display())),
    };
    if !canonical.is_dir() {
        return fail(format!("mount point {} is not a directory", mp.display()));
    }
    if is_mount_point(&canonical) {
        return fail(format!(
            "mount point {} is busy: something is mounted there",
            mp.display()
        ));
    }
    if let Err(e) = std::fs::create_dir_all(&settings.state_dir) {
        return fail(format!(
            "state directory {}: {e}",
            settings.state_dir.display()
        ));
    }
    let lock_path = settings.state_dir.join("lock");
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StartError(format!("{}: {e}", lock_path.display())))?;
    // SAFETY: flock takes a descriptor we own and a constant.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return fail(format!(
            "state directory {} is in use by another nsproxyfs daemon",
            settings.state_dir.display()
        ));
    }
    let netns_export = match &settings.netns_export {
        Some(dir) => {
            let state = std::fs::canonicalize(&settings.state_dir)
                .map_err(|e| StartError(format!("{}: {e}", settings.state_dir.display())))?;
            Some(crate::export::check_dir(dir, &canonical, &state).map_err(StartError)?)
        }
        None => None,
    };
    Ok(Checked {
        mountpoint: canonical,
        netns_export,
        lock,
    })
}

/// Unmounts and removes every pin left in `dir` (at start, when there is
/// no record to restore them from).
pub fn clear_pins(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) {
            while crate::ns::sys::detach(&c).is_ok() {}
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// A logger that passes everything on, but for one false alarm of fuser's.
///
/// fuser answers every `FUSE_INTERRUPT` with `ENOSYS`. The kernel sends one
/// when a thread waiting for a reply is woken, which a move does to a
/// process moving itself (`echo $$ > tasks`): its writer is asked to stop
/// while it waits for the reply to its write. That write is answered at
/// once, so the `ENOSYS` answer often comes after it, for a request the
/// kernel has already forgotten, and the kernel refuses it with `ENOENT`,
/// which fuser logs as an error. Nothing failed: the write was answered.
/// The kernel keeps every other request until it is answered (an aborted
/// connection answers `ENODEV`), so `ENOENT` means exactly this case; it is
/// logged at debug level instead.
struct QuietInterrupts<L>(L);

impl<L: log::Log> QuietInterrupts<L> {
    fn is_late_interrupt_answer(record: &log::Record<'_>) -> bool {
        record.level() == log::Level::Error
            && record.target().starts_with("fuser")
            && record
                .args()
                .to_string()
                .starts_with("Failed to send FUSE reply: No such file or directory")
    }
}

impl<L: log::Log> log::Log for QuietInterrupts<L> {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !Self::is_late_interrupt_answer(record) {
            return self.0.log(record);
        }
        let quiet = log::Metadata::builder()
            .level(log::Level::Debug)
            .target(record.target())
            .build();
        if self.0.enabled(&quiet) {
            self.0.log(
                &log::Record::builder()
                    .metadata(quiet)
                    .args(format_args!(
                        "{} (the answer to an interrupt of a request answered already)",
                        record.args()
                    ))
                    .build(),
            );
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

fn init_logging(settings: &Settings) {
    if settings.foreground {
        let logger = env_logger::Builder::new()
            .filter_level(settings.level)
            .format_timestamp_micros()
            .build();
        if log::set_boxed_logger(Box::new(QuietInterrupts(logger))).is_ok() {
            log::set_max_level(settings.level);
        }
        return;
    }
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "nsproxyfs".into(),
        pid: std::process::id(),
    };
    if let Ok(logger) = syslog::unix(formatter)
        && log::set_boxed_logger(Box::new(QuietInterrupts(syslog::BasicLogger::new(logger))))
            .is_ok()
    {
        log::set_max_level(settings.level);
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
pub fn run(settings: Settings, mover: Box<dyn Mover>) -> Result<(), StartError> {
    let Checked {
        mountpoint,
        netns_export,
        lock,
    } = preflight(&settings)?;
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
                return match msg.strip_prefix("ok") {
                    Some(_) => Ok(()),
                    None if msg.is_empty() => fail("the daemon died while starting"),
                    None => Err(StartError(msg)),
                };
            }
        }
    };
    init_logging(&settings);
    let result = serve(&settings, &mountpoint, netns_export, mover, report);
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
                if !is_mount_point(&mountpoint) {
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
    mountpoint: &Path,
    netns_export: Option<PathBuf>,
    mover: Box<dyn Mover>,
    mut report: Option<OwnedFd>,
) -> Result<(), StartError> {
    let sigset = block_signals();
    let state_dir = &settings.state_dir;
    let exporter = match netns_export {
        Some(dir) => match Exporter::open(&dir, state_dir) {
            Ok(exporter) => Some(Arc::new(exporter)),
            Err(msg) => {
                tell(&mut report, &msg);
                return fail(msg);
            }
        },
        // Exports a previous daemon made with the option go.
        None => {
            crate::export::forget(state_dir);
            None
        }
    };
    let _close_exports = CloseExports(exporter.clone());
    let pin_dir = state_dir.join(state::PINS);
    let restore = match state::load(state_dir) {
        Loaded::Found(record) => Some(record),
        Loaded::Nothing => {
            clear_pins(&pin_dir);
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
                state_dir.display()
            );
            clear_pins(&pin_dir);
            None
        }
    };
    let recorder = match Recorder::open(state_dir) {
        Ok(r) => r,
        Err(e) => {
            let msg = format!("state directory {}: {e}", state_dir.display());
            tell(&mut report, &msg);
            return fail(msg);
        }
    };
    let fs = match NsProxyFs::new(
        Options {
            pin_dir: pin_dir.clone(),
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
    if settings.discover
        && let Err(e) = crate::discover::spawn(Arc::clone(&fs) as Arc<dyn crate::discover::Sink>)
    {
        let msg = format!("cannot start the discovery thread: {e}");
        tell(&mut report, &msg);
        return fail(msg);
    }
    let session = match fuser::Session::new(Mounted(fs), mountpoint, &config) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", mountpoint.display());
            tell(&mut report, &msg);
            state::tidy(state_dir);
            return fail(msg);
        }
    };
    let loop_thread = std::thread::Builder::new()
        .name("fuse".into())
        .spawn(move || {
            if let Err(e) = session.run() {
                log::error!("FUSE session ended with an error: {e}");
            }
            // SAFETY: kill to our own pid with a signal every thread blocks, so
            // it is picked up by sigwait below.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
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
        "mounted on {}, state in {}",
        mountpoint.display(),
        settings.state_dir.display()
    );
    if report.is_some() {
        tell(&mut report, "ok");
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
    // Pins of bound namespaces stay, with the record, for the next daemon;
    // exports go (see CloseExports).
    state::tidy(state_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(b"/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(b"/plain"), b"/plain");
        assert_eq!(unescape_mountinfo(b"/x\\"), b"/x\\");
    }

    #[test]
    fn root_is_a_mount_point_and_a_fresh_dir_is_not() {
        assert!(is_mount_point(Path::new("/")));
        let dir = std::env::temp_dir().join(format!("nsproxyfs-mp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!is_mount_point(&dir));
        std::fs::remove_dir(&dir).unwrap();
    }
}

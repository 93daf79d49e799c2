//! Shared test support: a real nsproxyfs mount in a private mount
//! namespace, with a watchdog, and helpers to look at `/proc/PID/ns`.
//!
//! Each test that mounts calls [`Mount::new`] on its own thread. That thread
//! moves into a new, private mount namespace (`unshare(CLONE_NEWNS)` works
//! per thread), so the mount, the daemon's pins and anything the test mounts
//! are invisible elsewhere and vanish with the thread. Processes the test
//! spawns from that thread inherit its mount namespace.

#![allow(dead_code)]

pub mod cgroups;
pub mod docker;

use std::ffi::{CStr, CString};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The nsproxyfs binary cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_nsproxyfs");

/// How long one test may take before the watchdog ends it.
pub const WATCHDOG: Duration = Duration::from_secs(120);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The eight kind names, in listing order.
pub const KINDS: [&str; 8] = ["cgroup", "ipc", "mnt", "net", "pid", "time", "user", "uts"];

/// The `/proc/PID/ns` entries behind the kinds, in [`KINDS`] order.
pub const NS_ENTRIES: [&str; 8] = [
    "cgroup",
    "ipc",
    "mnt",
    "net",
    "pid_for_children",
    "time_for_children",
    "user",
    "uts",
];

/// The `/proc/PID/ns` entry behind a kind file.
pub fn proc_entry(kind: &str) -> &str {
    match kind {
        "pid" => "pid_for_children",
        "time" => "time_for_children",
        k => k,
    }
}

/// Whether privileged tests can run here; `Err` says why not. Under CI the
/// caller fails instead of skipping.
pub fn privileged() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("no /dev/fuse".into());
    }
    Ok(())
}

/// Returns true if the test may go on; prints why it skips otherwise, and
/// panics under `CI=true`, where skipping is not allowed.
pub fn require_privileges(test: &str) -> bool {
    match privileged() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: needs root and /dev/fuse, and CI must not skip: {why}");
            }
            eprintln!("SKIP {test}: needs root and /dev/fuse ({why})");
            false
        }
    }
}

/// Whether `tool` is an executable file in a directory of `PATH`.
pub fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Returns true if `tools` are all installed; says which are missing and
/// skips otherwise, or fails under `CI=true`.
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !on_path(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}, and CI must not skip");
    }
    eprintln!("SKIP {why}");
    false
}

/// Moves the calling thread into a new mount namespace where every mount is
/// private.
pub fn private_mount_namespace() {
    // SAFETY: unshare(CLONE_NEWNS) only affects the calling thread, which
    // gets its own fs_struct as part of it.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNS) };
    assert_eq!(r, 0, "unshare(CLONE_NEWNS): {}", io::Error::last_os_error());
    // SAFETY: constant strings and null pointers, as mount(2) allows for a
    // propagation change.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "make / private: {}", io::Error::last_os_error());
}

/// A scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("nsproxyfs-{test}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the current test is doing, for the watchdog's report.
#[derive(Clone, Default)]
pub struct Step(Arc<Mutex<String>>);

impl Step {
    pub fn set(&self, what: &str) {
        *self.0.lock().unwrap() = what.to_owned();
    }

    pub fn get(&self) -> String {
        self.0.lock().unwrap().clone()
    }
}

/// A watchdog: after `WATCHDOG`, reports the step that hung, kills the pids
/// it was given, and aborts the FUSE connection so blocked calls return.
pub struct Watchdog {
    done: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(
        test: &str,
        step: Step,
        pids: Arc<Mutex<Vec<i32>>>,
        fuse_dev: Option<u64>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let test = test.to_owned();
        let thread = std::thread::spawn(move || {
            if rx.recv_timeout(WATCHDOG) != Err(mpsc::RecvTimeoutError::Timeout) {
                return;
            }
            eprintln!(
                "WATCHDOG {test}: step {:?} hung for {WATCHDOG:?}; killing",
                step.get()
            );
            for &pid in pids.lock().unwrap().iter() {
                // SAFETY: kill takes integers; these are pids this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if let Some(dev) = fuse_dev {
                abort_fuse(dev);
            }
        });
        Watchdog {
            done: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Aborts the FUSE connection of the mount whose st_dev is `dev`: every
/// request in flight fails with ENOTCONN.
pub fn abort_fuse(dev: u64) {
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let _ = std::fs::write(format!("/sys/fs/fuse/connections/{minor}/abort"), "1");
}

/// A watchdog with the step it reports and the pids it kills, for a test
/// that runs its daemons itself instead of through [`Mount`].
pub struct Watched {
    pub step: Step,
    pids: Arc<Mutex<Vec<i32>>>,
    _watchdog: Watchdog,
}

impl Watched {
    pub fn start(test: &str) -> Watched {
        let step = Step::default();
        let pids = Arc::new(Mutex::new(Vec::new()));
        Watched {
            _watchdog: Watchdog::start(test, step.clone(), pids.clone(), None),
            step,
            pids,
        }
    }

    /// Registers a pid for the watchdog to kill.
    pub fn watch_pid(&self, pid: i32) {
        self.pids.lock().unwrap().push(pid);
    }
}

/// Waits until `dir` is a mount other than the directory's own file system
/// (st_dev `outer`) that answers, up to 20 s; panics with the daemon's log
/// if the daemon exits first. `tick` runs at each look.
pub fn wait_mounted(
    dir: &Path,
    outer: u64,
    daemon: &mut Child,
    log: &Path,
    mut tick: impl FnMut(),
) {
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(md) = std::fs::metadata(dir.join("status"))
            && md.dev() != outer
        {
            return;
        }
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("daemon exited while mounting ({status}): {}", log_text());
        }
        assert!(
            Instant::now() < deadline,
            "mount did not answer: {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
        tick();
    }
}

/// A mounted nsproxyfs with its daemon in the foreground, in this thread's
/// private mount namespace. The daemon can be stopped, killed and started
/// again on the same mount point and state directory; its log collects
/// every run.
pub struct Mount {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub step: Step,
    test: String,
    extra: Vec<String>,
    root_dev: u64,
    daemon: Option<Child>,
    pids: Arc<Mutex<Vec<i32>>>,
    _watchdog: Option<Watchdog>,
    scratch: Scratch,
}

impl Mount {
    /// Mounts, or returns `None` (after saying why) where privileged tests
    /// cannot run outside CI.
    pub fn new(test: &str) -> Option<Mount> {
        Mount::with_args(test, &[])
    }

    pub fn with_args(test: &str, extra: &[&str]) -> Option<Mount> {
        if !require_privileges(test) {
            return None;
        }
        private_mount_namespace();
        let scratch = Scratch::new(test);
        let dir = scratch.0.join("mnt");
        let state = scratch.0.join("state");
        let log = scratch.0.join("daemon.log");
        std::fs::create_dir_all(&dir).unwrap();
        let root_dev = std::fs::metadata(&dir).unwrap().dev();
        let mut m = Mount {
            dir,
            state,
            log,
            step: Step::default(),
            test: test.to_owned(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            root_dev,
            daemon: None,
            pids: Arc::new(Mutex::new(Vec::new())),
            _watchdog: None,
            scratch,
        };
        m.start();
        Some(m)
    }

    /// Starts a daemon on the mount point and state directory and waits
    /// until the mount answers.
    fn start(&mut self) {
        self.step.set("start the daemon");
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let daemon = Command::new(BIN)
            .arg("-f")
            .arg("-v")
            .arg("--state-dir")
            .arg(&self.state)
            .args(&self.extra)
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nsproxyfs");
        self.pids.lock().unwrap().push(daemon.id() as i32);
        let daemon = self.daemon.insert(daemon);
        // Watched while it mounts too (the connection to abort is not known
        // yet: killing the daemon ends it).
        self._watchdog = None;
        self._watchdog = Some(Watchdog::start(
            &self.test,
            self.step.clone(),
            self.pids.clone(),
            None,
        ));
        wait_mounted(&self.dir, self.root_dev, daemon, &self.log, || {});
        let dev = std::fs::metadata(&self.dir).unwrap().dev();
        self._watchdog = None;
        self._watchdog = Some(Watchdog::start(
            &self.test,
            self.step.clone(),
            self.pids.clone(),
            Some(dev),
        ));
    }

    /// Kills the daemon with SIGKILL, as a crash would, reaps it, and
    /// detaches the dead mount.
    pub fn kill(&mut self) {
        self.step.set("SIGKILL the daemon");
        let mut daemon = self.daemon.take().expect("daemon already stopped");
        // SAFETY: kill takes integers; the pid is our own child.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGKILL) };
        wait_bounded(&mut daemon, Duration::from_secs(20));
        self.detach();
    }

    /// Lazily unmounts the mount point, if anything is mounted there.
    fn detach(&self) {
        if let Ok(c) = CString::new(self.dir.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; failure (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }

    /// Changes the extra arguments the next [`Mount::restart`] passes.
    pub fn set_args(&mut self, extra: &[&str]) {
        self.extra = extra.iter().map(|s| s.to_string()).collect();
    }

    /// Starts a new daemon on the same mount point and state directory,
    /// after [`Mount::stop`] or [`Mount::kill`].
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "the daemon still runs");
        self.detach();
        self.start();
    }

    /// A path inside the mount.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// A scratch path outside the mount, removed with the test.
    pub fn scratch(&self, rel: &str) -> PathBuf {
        self.scratch.0.join(rel)
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> i32 {
        self.daemon.as_ref().map(|d| d.id() as i32).unwrap_or(0)
    }

    /// Registers a pid for the watchdog to kill.
    pub fn watch_pid(&self, pid: i32) {
        self.pids.lock().unwrap().push(pid);
    }

    /// The daemon's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads a file of the tree as text.
    pub fn read(&self, rel: &str) -> String {
        self.step.set(&format!("read {rel}"));
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }

    /// Writes `data` to a file of the tree in one write(), as `echo >` does.
    pub fn write(&self, rel: &str, data: &[u8]) -> io::Result<()> {
        self.step.set(&format!("write {rel}"));
        write_once(&self.path(rel), data)
    }

    /// The `status` lines of a container, split into fields.
    pub fn status(&self, container: &str) -> Vec<Vec<String>> {
        let file = if container.is_empty() {
            "status".to_owned()
        } else {
            format!("{container}/status")
        };
        self.read(&file)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect()
    }

    /// The namespace inode a kind file names (`net:[N]` -> N).
    pub fn bound_ino(&self, rel: &str) -> u64 {
        let text = self.read(rel);
        text.trim()
            .rsplit_once('[')
            .and_then(|(_, n)| n.trim_end_matches(']').parse().ok())
            .unwrap_or_else(|| panic!("{rel}: {text}"))
    }

    /// The pin path `status` prints for `kind` in `container`.
    pub fn pin(&self, container: &str, kind: &str) -> String {
        self.status(container)
            .into_iter()
            .find(|f| f[0] == kind)
            .map(|f| f[3].clone())
            .unwrap_or_else(|| panic!("no {kind} line in {container}/status"))
    }

    /// Ends the daemon with SIGTERM and returns its exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.step.set("stop the daemon");
        let mut daemon = self.daemon.take().expect("daemon already stopped");
        // SAFETY: kill takes integers; the pid is our own child.
        unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
        wait_bounded(&mut daemon, Duration::from_secs(20))
    }

    /// Ends the daemon with `umount`, as a user would, and returns its exit
    /// status.
    pub fn umount(&mut self) -> std::process::ExitStatus {
        self.step.set("umount");
        let mut daemon = self.daemon.take().expect("daemon already stopped");
        sh_ok(&format!("umount '{}'", self.dir.display()));
        wait_bounded(&mut daemon, Duration::from_secs(20))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.detach();
        if let Some(mut d) = self.daemon.take() {
            // SAFETY: kill takes integers; the pid is our own child.
            unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
            wait_bounded(&mut d, Duration::from_secs(20));
        }
        // The daemon leaves the tree's record, pins and keepers for its
        // successor: this test has none.
        nsproxyfs::daemon::forget(&self.state);
        if std::thread::panicking() {
            eprintln!("--- daemon log ---\n{}", self.log_text());
        }
    }
}

/// Waits for `child`, killing it if it takes longer than `limit`.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Opens `path` for writing with O_TRUNC (creating it), writes `data` in a
/// single write(), and closes it, reporting the first error (close included).
pub fn write_once(path: &Path, data: &[u8]) -> io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    write_once_c(&c, data)
}

/// [`write_once`] with the path already a C string, so that a measurement
/// times the calls alone.
pub fn write_once_c(path: &CStr, data: &[u8]) -> io::Result<()> {
    // SAFETY: a NUL-terminated path and constant flags.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `data` is valid for its length; fd is ours.
    let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
    let write_err = (n < 0).then(io::Error::last_os_error);
    // SAFETY: fd is ours and closed once.
    let closed = unsafe { libc::close(fd) };
    let close_err = (closed < 0).then(io::Error::last_os_error);
    match (write_err, close_err) {
        (Some(e), _) | (None, Some(e)) => Err(e),
        (None, None) if n as usize != data.len() => Err(io::Error::other("short write")),
        (None, None) => Ok(()),
    }
}

/// The errno of a failed result, panicking if it succeeded.
pub fn errno<T: std::fmt::Debug>(r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("expected an error, got Ok({v:?})"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("no errno in {e}")),
    }
}

/// The inode of `/proc/PID/ns/ENTRY`.
pub fn ns_ino(pid: i32, entry: &str) -> u64 {
    std::fs::metadata(format!("/proc/{pid}/ns/{entry}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{entry}: {e}"))
        .ino()
}

/// `readlink /proc/PID/ns/ENTRY` with the entry named as a kind: `net:[N]`.
pub fn ns_text(pid: i32, kind: &str) -> String {
    format!("{kind}:[{}]", ns_ino(pid, proc_entry(kind)))
}

/// Runs `sh -c script` and returns its output; panics if it cannot start.
pub fn sh(script: &str) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run sh")
}

/// Runs `sh -c script` and returns stdout, panicking on failure.
pub fn sh_ok(script: &str) -> String {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process this test started, killed and reaped on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `sh -c script` with stdin, stdout and stderr discarded.
    pub fn sh(script: &str) -> Proc {
        Proc(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn"),
        )
    }

    pub fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `cond` holds, up to 10 s.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Writes to stderr without failing the test if stderr is closed.
pub fn note(msg: &str) {
    let _ = writeln!(io::stderr(), "{msg}");
}

/// The path of example program `name`, which `cargo test` builds next to
/// the test binaries.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: `cargo test` builds examples",
        path.display()
    );
    path
}

/// A shell started as `unshare ARGS -- sh -c SCRIPT`, talking through
/// pipes: the test reads the lines it prints and sends lines it `read`s.
/// With `--fork`, the shell is unshare's child; [`Unshared::inner`] is its
/// pid as the test sees it. Killed and reaped on drop (scripts must not
/// leave background jobs behind outside a pid namespace of their own).
pub struct Unshared {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: io::BufReader<std::process::ChildStdout>,
    inner: i32,
}

impl Unshared {
    pub fn start(args: &[&str], script: &str) -> Unshared {
        let mut child = Command::new("unshare")
            .args(args)
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start unshare");
        let stdin = child.stdin.take().unwrap();
        let stdout = io::BufReader::new(child.stdout.take().unwrap());
        let pid = child.id() as i32;
        let mut inner = pid;
        if args.contains(&"--fork") {
            let children = format!("/proc/{pid}/task/{pid}/children");
            wait_for("unshare's child", || {
                std::fs::read_to_string(&children)
                    .ok()
                    .and_then(|s| s.split_whitespace().next()?.parse().ok())
                    .map(|p| inner = p)
                    .is_some()
            });
        }
        Unshared {
            child,
            stdin,
            stdout,
            inner,
        }
    }

    /// The shell's pid in the test's pid namespace.
    pub fn inner(&self) -> i32 {
        self.inner
    }

    /// The next line the script prints, without its newline.
    pub fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.stdout.read_line(&mut line).expect("read the script");
        assert!(n > 0, "the script ended early");
        line.trim_end().to_owned()
    }

    /// Sends one line to the script's `read`.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("write to the script");
        self.stdin.flush().expect("flush");
    }

    /// Waits for the script to end and returns whether it succeeded.
    pub fn finish(mut self) -> bool {
        let status = wait_bounded(&mut self.child, Duration::from_secs(20));
        status.success()
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        if self.inner != self.child.id() as i32 {
            // SAFETY: kill takes integers; the shell is this test's own.
            unsafe { libc::kill(self.inner, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python program that runs file operations read from stdin, one per
/// line (`OP ARG...`), and prints for each `OK [DATA]` or the errno's name.
/// Used to see the tree as a given process sees it.
pub const PROBE: &str = r#"
import errno, os, sys
def run(op, a):
    if op == 'stat': os.stat(a[0]); return ''
    if op == 'list': return ','.join(sorted(os.listdir(a[0])))
    if op == 'read':
        with open(a[0]) as f: return ','.join(f.read().split())
    if op == 'write':
        fd = os.open(a[0], os.O_WRONLY)
        try: os.write(fd, a[1].encode())
        finally: os.close(fd)
        return ''
    if op == 'bind':
        fd = os.open(a[0], os.O_WRONLY | os.O_CREAT)
        try: os.write(fd, a[1].encode())
        finally: os.close(fd)
        return ''
    if op == 'touch': os.close(os.open(a[0], os.O_WRONLY | os.O_CREAT)); return ''
    if op == 'mkdir': os.mkdir(a[0]); return ''
    if op == 'rmdir': os.rmdir(a[0]); return ''
    if op == 'link': os.link(a[0], a[1]); return ''
    if op == 'unlink': os.unlink(a[0]); return ''
    if op == 'rename': os.rename(a[0], a[1]); return ''
    if op == 'readlink': os.readlink(a[0]); return ''
    if op == 'utime': os.utime(a[0]); return ''
    if op == 'chmod': os.chmod(a[0], 0o600); return ''
    if op == 'pid': return str(os.getpid())
    raise SystemExit('unknown op ' + op)
for line in sys.stdin:
    op, *args = line.split()
    try: out = 'OK ' + run(op, args)
    except OSError as e: out = errno.errorcode[e.errno]
    print(out.strip(), flush=True)
"#;

/// Runs [`PROBE`] under `prefix` (for example `nsenter --uts=PIN --`) on
/// `ops`, and returns one answer per op.
pub fn probe(prefix: &[&str], ops: &[String]) -> Vec<String> {
    let (program, args) = match prefix.split_first() {
        Some((p, rest)) => (*p, rest.to_vec()),
        None => ("python3", Vec::new()),
    };
    let mut cmd = Command::new(program);
    cmd.args(args);
    if !prefix.is_empty() {
        cmd.arg("python3");
    }
    let mut child = cmd
        .args(["-c", PROBE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the probe");
    {
        let mut stdin = child.stdin.take().unwrap();
        for op in ops {
            writeln!(stdin, "{op}").unwrap();
        }
    }
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let mut out = String::new();
    io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "probe failed ({status}): {out}");
    let answers: Vec<String> = out.lines().map(str::to_owned).collect();
    assert_eq!(answers.len(), ops.len(), "one answer per op: {answers:?}");
    answers
}

/// The daemon's injector processes: its children started as `nsproxyfs
/// --internal-injector`, in pid order.
pub fn injector_pids(daemon: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{daemon}/task")) else {
        return found;
    };
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline
                .split(|&b| b == 0)
                .any(|arg| arg == b"--internal-injector")
            {
                found.push(pid);
            }
        }
    }
    found.sort_unstable();
    found
}

/// A process as it was seen at one moment: its pid and start time, so that
/// a reused pid is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub pid: i32,
    start: u64,
}

impl Seen {
    /// `pid` now, if it runs.
    pub fn now(pid: i32) -> Option<Seen> {
        let start = stat_field(pid, 19)?.parse().ok()?;
        Some(Seen { pid, start })
    }

    /// Whether that same process still runs (exited or a zombie: no).
    pub fn running(&self) -> bool {
        let state = stat_field(self.pid, 0);
        let start = stat_field(self.pid, 19).and_then(|s| s.parse().ok());
        start == Some(self.start) && !matches!(state.as_deref(), Some("Z" | "X") | None)
    }
}

/// Field `n` of `/proc/PID/stat` after the command name (0 is the state).
fn stat_field(pid: i32, n: usize) -> Option<String> {
    field_after_comm(&format!("/proc/{pid}/stat"), n)
}

fn field_after_comm(path: &str, n: usize) -> Option<String> {
    let stat = std::fs::read_to_string(path).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n).map(str::to_owned)
}

/// The state letter of `/proc/PID/stat`, `?` if the process is gone.
pub fn state(pid: i32) -> char {
    stat_field(pid, 0)
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

/// The state letter of thread `tid` of `pid`, `?` if it is gone.
pub fn thread_state(pid: i32, tid: i32) -> char {
    field_after_comm(&format!("/proc/{pid}/task/{tid}/stat"), 0)
        .and_then(|s| s.chars().next())
        .unwrap_or('?')
}

/// A field of `/proc/PID/status` (named without its colon), trimmed.
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    field_of(&format!("/proc/{pid}/status"), field)
}

/// A field of `/proc/PID/task/TID/status` (named without its colon),
/// trimmed.
pub fn thread_status_field(pid: i32, tid: i32, field: &str) -> Option<String> {
    field_of(&format!("/proc/{pid}/task/{tid}/status"), field)
}

fn field_of(path: &str, field: &str) -> Option<String> {
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// The syscall thread `tid` of `pid` is in, per its `syscall` file.
pub fn blocked_in(pid: i32, tid: i32) -> Option<i64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Pids of nsproxyfs daemons whose command line names `state`. Only
/// processes named `nsproxyfs` are read further, so a process stuck with
/// its memory locked elsewhere on the machine cannot hang the test.
pub fn daemons_on(state: &Path) -> Vec<i32> {
    let needle = state.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c == "nsproxyfs\n")
        })
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

/// A small deterministic generator (64-bit LCG, Knuth's MMIX constants)
/// for randomized tests: the seed comes from an environment variable or the
/// clock and is printed, so a run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `NSPROXYFS_FUZZ_SEED`, or the clock.
    pub fn from_env(test: &str) -> Rng {
        Rng::seeded(test, "NSPROXYFS_FUZZ_SEED")
    }

    /// Seeded from the environment variable `var`, or the clock; prints the
    /// seed as `var=SEED`.
    pub fn seeded(test: &str, var: &str) -> Rng {
        let seed = match std::env::var(var) {
            Ok(s) => s
                .parse()
                .unwrap_or_else(|_| panic!("{var} is a number, not {s:?}")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64),
        };
        note(&format!("{test}: {var}={seed}"));
        Rng(seed)
    }

    /// A fixed sequence, the same every run.
    pub fn fixed(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 31 bits.
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A number in `lo..hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    /// One of `items`.
    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }
}

/// A digest of every readable mapping of `pid` (from its `maps` text),
/// read through `/proc/PID/mem`; the kernel's own pages are skipped.
pub fn memory_digest(pid: i32, maps: &str) -> Vec<(String, u64)> {
    use std::hash::{DefaultHasher, Hasher};
    use std::io::{Read, Seek, SeekFrom};
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let name = fields.get(5).copied().unwrap_or("");
        if !fields[1].starts_with('r') || ["[vvar]", "[vvar_vclock]", "[vsyscall]"].contains(&name)
        {
            continue;
        }
        let (start, end) = fields[0].split_once('-').unwrap();
        let start = u64::from_str_radix(start, 16).unwrap();
        let end = u64::from_str_radix(end, 16).unwrap();
        let mut buf = vec![0u8; (end - start) as usize];
        mem.seek(SeekFrom::Start(start)).unwrap();
        let mut hasher = DefaultHasher::new();
        match mem.read_exact(&mut buf) {
            Ok(()) => hasher.write(&buf),
            Err(e) => hasher.write(e.to_string().as_bytes()),
        }
        out.push((fields[0].to_owned(), hasher.finish()));
    }
    out
}

/// The open descriptors of `pid`, each as `"N" -> TARGET`, sorted.
pub fn descriptors(pid: i32) -> Vec<String> {
    descriptors_in(&format!("/proc/{pid}/fd"))
}

/// The descriptors listed in the `fd` directory `dir` (a process's or a
/// thread's), each as `"N" -> TARGET`, sorted.
pub fn descriptors_in(dir: &str) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(dir)
        .expect("fd dir")
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{:?} -> {}", e.file_name(), target.display())
        })
        .collect();
    fds.sort();
    fds
}

/// Keeps every thread of `pid` on CPU 0, then stops and continues the
/// process so that each thread has been back to user space there once.
/// The kernel writes the CPU a thread runs on into its rseq area (glibc
/// registers one per thread) on its way back to user space; threads of a
/// moved process do run, briefly, during the move, and on another CPU
/// than the last that would be a change in memory the move did not make.
pub fn keep_on_one_cpu(pid: i32) {
    let mut one = nix::sched::CpuSet::new();
    one.set(0).expect("cpu 0");
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
    {
        if let Some(tid) = t.file_name().to_str().and_then(|t| t.parse().ok()) {
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &one).expect("affinity");
        }
    }
    let target = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
    wait_for("the target to stop", || state(pid) == 'T');
    nix::sys::signal::kill(target, nix::sys::signal::Signal::SIGCONT).expect("SIGCONT");
}

/// Whether every thread of `pid` sleeps in a system call (none running).
pub fn all_threads_asleep(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .flatten()
        .all(|t| {
            std::fs::read_to_string(t.path().join("syscall"))
                .is_ok_and(|s| !s.starts_with("running"))
        })
}

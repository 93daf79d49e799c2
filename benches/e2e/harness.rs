//! What the benchmark needs around its measurements: a private mount
//! namespace, a watchdog, and guards that undo everything they made (the
//! daemon and its mount, helper processes, cgroups, the scratch directory)
//! on drop, so also when a measurement panics.
//!
//! Every child process is started from the main thread, in its own process
//! group (a Ctrl-C reaches only the benchmark, which then unwinds and cleans
//! up in order), and with a parent-death signal, so that even a benchmark
//! killed outright leaves none of them behind. The parent-death signal
//! follows the thread that forked, hence the main thread only.

use std::ffi::CString;

pub use crate::common::{
    abort_fuse, private_mount_namespace, privileged, wait_bounded, wait_mounted,
    write_once_c as write_once,
};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The watchdog acts when no sample or set-up step finished for this long.
pub const STALL: Duration = Duration::from_secs(60);
/// After acting, it gives the benchmark this long to unwind before it
/// removes what it knows of and exits.
const GRACE: Duration = Duration::from_secs(30);

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT and SIGTERM set a flag that the next [`progress`] turns into a
/// panic, so the benchmark unwinds through its guards.
pub fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only stores to an
        // atomic, which is async-signal-safe; SA_RESTART keeps interrupted
        // calls going.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_interrupt as extern "C" fn(libc::c_int) as usize;
            act.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// What the watchdog knows: the last progress, the current step, and what
/// to kill or abort when the benchmark hangs.
struct Watched {
    start: Instant,
    last_ms: AtomicU64,
    step: Mutex<String>,
    pids: Mutex<Vec<i32>>,
    fuse: Mutex<Vec<u64>>,
    leftovers: Mutex<Vec<PathBuf>>,
    done: AtomicBool,
}

static WATCHED: OnceLock<Arc<Watched>> = OnceLock::new();

/// The processes the benchmark started and watches (daemons, helpers).
pub fn watched_pids() -> Vec<i32> {
    lock(&watched().pids).clone()
}

/// Every thread of the processes `pids` and of all their descendants.
pub fn tasks_and_children(pids: &[i32]) -> Vec<i32> {
    let mut todo = pids.to_vec();
    let mut tasks = Vec::new();
    while let Some(pid) = todo.pop() {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for tid in dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        {
            tasks.push(tid);
            if let Ok(children) =
                std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/children"))
            {
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
    }
    tasks
}

fn watched() -> &'static Arc<Watched> {
    WATCHED.get_or_init(|| {
        Arc::new(Watched {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            step: Mutex::new("start".into()),
            pids: Mutex::new(Vec::new()),
            fuse: Mutex::new(Vec::new()),
            leftovers: Mutex::new(Vec::new()),
            done: AtomicBool::new(false),
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Names what the benchmark does now, for the watchdog's report.
pub fn step(what: &str) {
    *lock(&watched().step) = what.to_owned();
    progress();
}

/// Records progress; panics if the benchmark was interrupted.
pub fn progress() {
    let w = watched();
    w.last_ms
        .store(w.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted by a signal; cleaning up");
    }
}

fn watch<T: PartialEq>(list: &Mutex<Vec<T>>, item: T) {
    lock(list).push(item);
}

fn unwatch<T: PartialEq>(list: &Mutex<Vec<T>>, item: &T) {
    lock(list).retain(|x| x != item);
}

/// Ends the benchmark if it stops making progress: after [`STALL`] it names
/// the step, kills the processes it was given and aborts the FUSE
/// connections, so blocked calls fail and the benchmark unwinds; if that
/// does not end it within [`GRACE`], it removes the cgroups and directories
/// it was given and exits.
pub struct Watchdog {
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start() -> Watchdog {
        let w = Arc::clone(watched());
        progress();
        let thread = std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                let mut acted: Option<Instant> = None;
                while !w.done.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                    let last = Duration::from_millis(w.last_ms.load(Ordering::Relaxed));
                    let idle = w.start.elapsed().saturating_sub(last);
                    match acted {
                        None if idle > STALL => {
                            eprintln!(
                                "WATCHDOG: step {:?} made no progress for {STALL:?}; \
                                 killing helpers and aborting FUSE connections",
                                lock(&w.step)
                            );
                            for &pid in lock(&w.pids).iter() {
                                describe_stuck(pid, 0);
                            }
                            for &pid in lock(&w.pids).iter() {
                                // SAFETY: kill takes integers; these are our
                                // own children, unregistered before reaping.
                                unsafe { libc::kill(pid, libc::SIGKILL) };
                            }
                            for &dev in lock(&w.fuse).iter() {
                                abort_fuse(dev);
                            }
                            acted = Some(Instant::now());
                        }
                        Some(t) if t.elapsed() > GRACE => {
                            eprintln!("WATCHDOG: the benchmark did not unwind; exiting");
                            for path in lock(&w.leftovers).iter().rev() {
                                remove_leftover(path);
                            }
                            std::process::exit(3);
                        }
                        _ => {}
                    }
                }
            })
            .expect("start the watchdog thread");
        Watchdog {
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        watched().done.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prints where each thread of `pid` and of its children waits (state,
/// wait channel, kernel stack where readable), to tell what a hang was.
fn describe_stuck(pid: i32, depth: usize) {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    eprintln!(
        "{:indent$}process {pid} {}",
        "",
        comm.trim(),
        indent = depth * 2
    );
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return;
    };
    let mut children = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        let stack: Vec<String> = read("stack")
            .lines()
            .take(6)
            .map(|l| l.split_whitespace().nth(1).unwrap_or(l).to_owned())
            .collect();
        eprintln!(
            "{:indent$}  thread {} state {state} wchan {} stack {}",
            "",
            task.file_name().to_string_lossy(),
            read("wchan"),
            stack.join(" < "),
            indent = depth * 2
        );
        children.extend(
            read("children")
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
    }
    if depth < 2 {
        for child in children {
            describe_stuck(child, depth + 1);
        }
    }
}

/// Last-resort removal of a cgroup (its processes moved to the parent
/// first) or a scratch directory.
fn remove_leftover(path: &Path) {
    if path.join("cgroup.procs").exists() {
        for leaf in std::fs::read_dir(path).into_iter().flatten().flatten() {
            if leaf.path().is_dir() {
                cgroup_evacuate(&leaf.path(), path.parent().unwrap_or(path));
                let _ = std::fs::remove_dir(leaf.path());
            }
        }
        cgroup_evacuate(path, path.parent().unwrap_or(path));
        let _ = std::fs::remove_dir(path);
    } else {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// Has `cmd`'s child receive `sig` when the benchmark's main thread ends,
/// and puts it in a process group of its own.
pub fn guard_child(cmd: &mut Command, sig: libc::c_int) {
    let parent = std::process::id() as i32;
    cmd.process_group(0);
    // SAFETY: the closure runs in the child between fork and exec and calls
    // only prctl, getppid and raise, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(sig);
            }
            Ok(())
        });
    }
}

fn detach(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path; failing (not a mount point) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The benchmark's scratch directory, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new() -> io::Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("nsproxyfs-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        watch(&watched().leftovers, dir.clone());
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        // The mounts below are gone by now; detach again in case a guard
        // could not, so removal never walks into a mount.
        for sub in ["mnt", "procfs", "counted", "discover", "bare", "cgroup2"] {
            detach(&self.0.join(sub));
        }
        let _ = std::fs::remove_dir_all(&self.0);
        unwatch(&watched().leftovers, &self.0);
    }
}

/// A running nsproxyfs daemon (`-f`) with its mount, both in the
/// benchmark's private mount namespace.
pub struct Daemon {
    pub dir: PathBuf,
    state: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    pid: i32,
    dev: u64,
}

impl Daemon {
    /// The benchmark's main daemon, mounted on `mnt` in the scratch
    /// directory.
    pub fn start(scratch: &Scratch) -> Daemon {
        Daemon::start_with(scratch, "mnt", &[])
    }

    /// A daemon mounted on `name` in the scratch directory, started with
    /// the options `extra` besides `-f` and `--state-dir`. (Its mount point
    /// must be among those [`Scratch`]'s drop detaches.)
    pub fn start_with(scratch: &Scratch, name: &str, extra: &[&str]) -> Daemon {
        Daemon::start_env(scratch, name, extra, &[])
    }

    /// As [`Daemon::start_with`], with `env` added to its environment.
    pub fn start_env(
        scratch: &Scratch,
        name: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        step(&format!("start the daemon {name:?} {extra:?} {env:?}"));
        let dir = scratch.0.join(name);
        let (state, log) = match name {
            "mnt" => (scratch.0.join("state"), scratch.0.join("daemon.log")),
            _ => (
                scratch.0.join(format!("{name}-state")),
                scratch.0.join(format!("{name}-daemon.log")),
            ),
        };
        std::fs::create_dir_all(&dir).expect("create the mount point");
        let outer = std::fs::metadata(&dir).expect("stat the mount point").dev();
        let mut cmd = Command::new(crate::common::BIN);
        cmd.arg("-f")
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .arg(&dir)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("create the daemon log"));
        guard_child(&mut cmd, libc::SIGTERM);
        let child = cmd.spawn().expect("start nsproxyfs");
        let pid = child.id() as i32;
        watch(&watched().pids, pid);
        let mut d = Daemon {
            dir,
            state,
            log,
            child: Some(child),
            pid,
            dev: 0,
        };
        if let Some(child) = d.child.as_mut() {
            wait_mounted(&d.dir, outer, child, &d.log, progress);
        }
        d.dev = std::fs::metadata(&d.dir).expect("stat the mount").dev();
        watch(&watched().fuse, d.dev);
        d
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's resident set size, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read the daemon's status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in the daemon's status")
    }

    /// The CPU time the daemon used so far, all its threads (utime +
    /// stime of `/proc/PID/stat`, in clock ticks), in milliseconds.
    pub fn cpu_ms(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .expect("read the daemon's stat");
        // Fields start after the command name's last ')': state is the 3rd
        // field, so utime (14th) and stime (15th) are the 12th and 13th
        // after it.
        let rest = &stat[stat.rfind(')').expect("a stat line") + 1..];
        let ticks: u64 = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .map(|f| f.parse::<u64>().expect("utime and stime"))
            .sum();
        // SAFETY: sysconf takes a constant and has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        ticks as f64 * 1000.0 / hz.max(1) as f64
    }

    /// The time the daemon's live threads ran so far (the first field of
    /// `/proc/PID/task/TID/schedstat`, in ns), in milliseconds: finer than
    /// [`Daemon::cpu_ms`]'s clock ticks, but threads that ended are left out.
    pub fn run_ms(&self) -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .expect("list the daemon's threads");
        let ns: u64 = tasks
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        ns as f64 / 1e6
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unwatch(&watched().fuse, &self.dev);
        detach(&self.dir);
        unwatch(&watched().pids, &self.pid);
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill takes integers; the pid is our own unreaped child.
            unsafe { libc::kill(self.pid, libc::SIGTERM) };
            let _ = wait_bounded(&mut child, Duration::from_secs(30));
        }
        nsproxyfs::daemon::clear_pins(&self.state.join("pins"));
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- daemon log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// The environment variable that makes the benchmark binary a helper
/// process instead (see `roles.rs`).
pub const ROLE_ENV: &str = "NSPROXYFS_BENCH_ROLE";

/// A helper process: this very binary started in a role. It prints one
/// `READY` line once set up, and ends (undoing what it made) when its stdin
/// closes, which drop does.
pub struct Helper {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    pid: i32,
}

impl Helper {
    pub fn start(role: &str) -> Helper {
        step(&format!("start helper {role:?}"));
        let exe = std::env::current_exe().expect("the benchmark's own path");
        let mut cmd = Command::new(exe);
        cmd.env(ROLE_ENV, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        guard_child(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn().expect("start a helper");
        let pid = child.id() as i32;
        watch(&watched().pids, pid);
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let h = Helper {
            child: Some(child),
            stdin,
            pid,
        };
        let line = read_line(stdout);
        assert!(
            line.starts_with("READY"),
            "helper {role:?} did not start: {line:?}"
        );
        h
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

fn read_line(stdout: Option<ChildStdout>) -> String {
    let mut line = String::new();
    if let Some(out) = stdout {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    line
}

impl Drop for Helper {
    fn drop(&mut self) {
        unwatch(&watched().pids, &self.pid);
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = wait_bounded(&mut child, Duration::from_secs(30));
        }
    }
}

/// Moves every process of cgroup `from` into cgroup `to`.
fn cgroup_evacuate(from: &Path, to: &Path) {
    let Ok(procs) = std::fs::read_to_string(from.join("cgroup.procs")) else {
        return;
    };
    for pid in procs.lines() {
        let _ = std::fs::write(to.join("cgroup.procs"), pid);
    }
}

/// Removes an empty cgroup, retrying while a process that just left it is
/// still being torn down.
fn cgroup_remove(dir: &Path, home: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() {
        cgroup_evacuate(dir, home);
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                eprintln!("could not remove cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

/// The benchmark's own cgroup2 directory, `nsproxyfs-bench-PID` at the top
/// of the cgroup2 hierarchy, with two leaves `a` and `b` to move processes
/// between. Drop moves any process left in them back to the cgroup the
/// benchmark runs in and removes them.
pub struct Cgroups {
    pub base: PathBuf,
    home: PathBuf,
    /// A cgroup2 mount the benchmark made itself (private), if the system
    /// had none.
    own_mount: Option<PathBuf>,
}

impl Cgroups {
    /// Creates the cgroups, or says why not.
    pub fn create(scratch: &Scratch) -> Result<Cgroups, String> {
        let (root, own_mount) = match cgroup2_mount() {
            Some(root) => (root, None),
            None => {
                let dir = scratch.0.join("cgroup2");
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let c = CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
                // SAFETY: NUL-terminated strings and a null data pointer.
                let r = unsafe {
                    libc::mount(
                        c"none".as_ptr(),
                        c.as_ptr(),
                        c"cgroup2".as_ptr(),
                        0,
                        std::ptr::null(),
                    )
                };
                if r != 0 {
                    return Err(format!("no cgroup2: {}", io::Error::last_os_error()));
                }
                (dir.clone(), Some(dir))
            }
        };
        let home = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("0::")
                        .map(|p| p.trim_start_matches('/').to_owned())
                })
            })
            .map(|p| root.join(p))
            .filter(|p| p.join("cgroup.procs").exists())
            .unwrap_or_else(|| root.clone());
        let base = root.join(format!("nsproxyfs-bench-{}", std::process::id()));
        let cg = Cgroups {
            base: base.clone(),
            home,
            own_mount,
        };
        std::fs::create_dir(&base).map_err(|e| format!("{}: {e}", base.display()))?;
        watch(&watched().leftovers, base.clone());
        for leaf in ["a", "b"] {
            std::fs::create_dir(base.join(leaf)).map_err(|e| format!("{leaf}: {e}"))?;
        }
        Ok(cg)
    }

    pub fn leaf(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.base) {
            for e in entries.flatten() {
                if e.path().is_dir() {
                    cgroup_remove(&e.path(), &self.home);
                }
            }
        }
        cgroup_remove(&self.base, &self.home);
        unwatch(&watched().leftovers, &self.base);
        if let Some(dir) = &self.own_mount {
            detach(dir);
        }
    }
}

/// Where a cgroup2 hierarchy is mounted with its root visible, if anywhere.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        let fields: Vec<&str> = left.split_whitespace().collect();
        (fstype == "cgroup2" && fields.get(3) == Some(&"/")).then(|| PathBuf::from(fields[4]))
    })
}

/// Registers the FUSE mount with st_dev `dev` for the watchdog to abort.
pub fn watch_fuse(dev: u64) {
    watch(&watched().fuse, dev);
}

pub fn unwatch_fuse(dev: u64) {
    unwatch(&watched().fuse, &dev);
}

/// open + read() until end of file + close, as `cat` does; returns the
/// number of bytes.
pub fn read_through(path: &Path, buf: &mut [u8]) -> io::Result<usize> {
    let mut f = File::open(path)?;
    let mut total = 0;
    loop {
        match f.read(buf)? {
            0 => return Ok(total),
            n => total += n,
        }
    }
}

/// A path as a C string, for the raw calls above.
pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("a path without NUL")
}

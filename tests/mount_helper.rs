//! The installer, the mount(8) helper and the systemd unit, with the real
//! util-linux mount(8): `mount -t fuse.nsproxyfs`, an fstab line, option
//! handling, and the unit's command under a stand-in for systemd's
//! readiness socket.
//!
//! mount(8) looks for helpers in /sbin only. Each test that mounts installs
//! into a temporary prefix and, in its thread's private mount namespace,
//! covers /sbin with a tmpfs holding the installed helper and a symbolic
//! link to each original entry (reached through a descriptor of the
//! original directory, so nothing of the real /sbin is ever reachable for
//! writing). The machine's /sbin is never touched; the cover vanishes with
//! the namespace. `LIBMOUNT_UTAB` keeps mount(8)'s bookkeeping in the
//! scratch directory.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use common::*;

const SRC: &str = env!("CARGO_MANIFEST_DIR");

/// The tools these tests drive.
const TOOLS: [&str; 6] = ["sh", "mount", "umount", "install", "sed", "nsenter"];

/// What a finished command said.
struct Ran {
    status: ExitStatus,
    stderr: String,
}

/// Runs `cmd` to its end (bounded), its output going to files in `dir` so
/// that a daemon keeping them open cannot block the test.
fn run(dir: &Path, cmd: &mut Command) -> Ran {
    let out = dir.join("out");
    let err = dir.join("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    Ran {
        status,
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
    }
}

/// Runs `mount-helper/install.sh` with `args`.
fn install(dir: &Path, args: &[String]) -> Ran {
    run(
        dir,
        Command::new("sh")
            .arg(Path::new(SRC).join("mount-helper/install.sh"))
            .args(args),
    )
}

/// An nsproxyfs daemon the test started through mount(8), pinned by a pidfd
/// so it is signalled only while it is that process.
struct Daemon {
    pid: i32,
    pidfd: OwnedFd,
}

impl Daemon {
    fn alive(&self) -> bool {
        // SAFETY: signal 0 only checks; the pidfd is ours and stays open.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    fn kill(&self) {
        // SAFETY: as above, with SIGKILL; a pidfd never names a reused pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
    }
}

/// One test's installation and mount point, in its private mount
/// namespace; kills its daemons and unmounts on drop.
struct Setup {
    test: String,
    mnt: PathBuf,
    state: PathBuf,
    prefix: PathBuf,
    daemons: Vec<Daemon>,
    watched: Watched,
    /// The original /sbin, which the cover's links go through.
    _sbin: Option<File>,
    scratch: Scratch,
}

impl Setup {
    /// Installs into a temporary prefix; with `cover`, also makes mount(8)
    /// find the installed helper in /sbin.
    fn new(test: &str, cover: bool) -> Option<Setup> {
        if !require_privileges(test) || !require_tools(test, &TOOLS) {
            return None;
        }
        private_mount_namespace();
        let scratch = Scratch::new(test);
        let prefix = scratch.0.join("prefix");
        let ran = install(
            &scratch.0,
            &[
                format!("PREFIX={}", prefix.display()),
                format!("HELPERDIR={}", prefix.join("helpers").display()),
                format!("BINARY={BIN}"),
            ],
        );
        assert!(ran.status.success(), "install.sh: {}", ran.stderr);
        let sbin = cover.then(|| cover_sbin(&prefix.join("helpers/mount.fuse.nsproxyfs")));
        let mnt = scratch.0.join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        Some(Setup {
            test: test.to_owned(),
            state: scratch.0.join("state"),
            mnt,
            prefix,
            daemons: Vec::new(),
            watched: Watched::start(test),
            _sbin: sbin,
            scratch,
        })
    }

    /// mount(8) or umount(8) with `args`, its bookkeeping kept here.
    fn mount(&mut self, program: &str, args: &[&str]) -> Ran {
        self.watched.step.set(&format!("{program} {args:?}"));
        let ran = run(
            &self.scratch.0,
            Command::new(program)
                .args(args)
                .env("LIBMOUNT_UTAB", self.scratch.0.join("utab")),
        );
        self.find_daemons();
        ran
    }

    /// Records every daemon running on this test's state directory.
    fn find_daemons(&mut self) {
        for pid in daemons_on(&self.state) {
            if self.daemons.iter().any(|d| d.pid == pid) {
                continue;
            }
            // SAFETY: pidfd_open takes two integers and returns a new fd.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            if fd >= 0 {
                // SAFETY: the kernel just returned this descriptor to us.
                let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                self.watched.watch_pid(pid);
                self.daemons.push(Daemon { pid, pidfd });
            }
        }
    }

    fn mounted(&self) -> bool {
        mount_entry(&self.mnt).is_some()
    }

    /// Checks that the tree answers at the mount point, and unmounts it;
    /// the daemon must end by itself.
    fn check_and_umount(&mut self) {
        assert!(
            self.mounted(),
            "{}: nothing mounted at {}:\n{}",
            self.test,
            self.mnt.display(),
            std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap()
        );
        let status = std::fs::read_to_string(self.mnt.join("status")).unwrap();
        assert_eq!(status.lines().count(), 8, "{status}");
        let (source, fstype) = mount_entry(&self.mnt).unwrap();
        assert_eq!(
            (source.as_str(), fstype.as_str()),
            ("nsproxyfs", "fuse.nsproxyfs")
        );
        assert_eq!(self.daemons.len(), 1, "one daemon");
        let exe = std::fs::read_link(format!("/proc/{}/exe", self.daemons[0].pid)).unwrap();
        assert_eq!(
            exe,
            self.prefix.join("sbin/nsproxyfs"),
            "the installed daemon"
        );
        let mnt = self.mnt.display().to_string();
        let ran = self.mount("umount", &[&mnt]);
        assert!(ran.status.success(), "umount: {}", ran.stderr);
        self.watched.step.set("the daemon ends after umount");
        wait_for("the daemon to end after umount", || {
            self.daemons.iter().all(|d| !d.alive())
        });
        assert!(!self.mounted());
        self.daemons.clear();
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Ok(c) = CString::new(self.mnt.as_os_str().as_bytes()) {
            // SAFETY: a NUL-terminated path; failure (not mounted) is fine.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        for d in &self.daemons {
            d.kill();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.daemons.iter().any(Daemon::alive) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // A killed daemon leaves its pins mounted in this namespace.
        nsproxyfs::daemon::clear_pins(&self.state.join("pins"));
    }
}

/// Covers /sbin (this thread's mount namespace only) with a tmpfs that
/// holds `helper` and a link to each original entry; returns the open
/// original directory the links go through.
fn cover_sbin(helper: &Path) -> File {
    let sbin = std::fs::canonicalize("/sbin").unwrap();
    let original = File::open(&sbin).unwrap();
    let through = format!("/proc/{}/fd/{}", std::process::id(), original.as_raw_fd());
    let names: Vec<_> = std::fs::read_dir(&sbin)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let target = CString::new(sbin.as_os_str().as_bytes()).unwrap();
    // SAFETY: NUL-terminated strings that outlive the call; a new tmpfs
    // mounted in this thread's private mount namespace.
    let r = unsafe {
        libc::mount(
            c"nsproxyfs-test".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=755".as_ptr().cast(),
        )
    };
    assert_eq!(
        r,
        0,
        "tmpfs on {}: {}",
        sbin.display(),
        std::io::Error::last_os_error()
    );
    for name in names {
        let link = sbin.join(&name);
        std::os::unix::fs::symlink(Path::new(&through).join(&name), link).unwrap();
    }
    let _ = std::fs::remove_file(sbin.join("mount.fuse.nsproxyfs"));
    std::os::unix::fs::symlink(helper, sbin.join("mount.fuse.nsproxyfs")).unwrap();
    original
}

/// Source and type of the mount at `dir`, as /proc/thread-self/mountinfo says.
fn mount_entry(dir: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let want = dir.to_str().unwrap();
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if left.split(' ').nth(4)? != want {
            return None;
        }
        let mut fields = right.split(' ');
        let fstype = fields.next()?.to_owned();
        let source = fields.next()?.to_owned();
        Some((source, fstype))
    })
}

#[test]
fn mount_t_fuse_nsproxyfs_starts_the_daemon_and_umount_ends_it() {
    let Some(mut s) = Setup::new("helper-mount", true) else {
        return;
    };
    let (mnt, state) = (s.mnt.display().to_string(), s.state.display().to_string());
    let opts = format!(
        "state_dir={state},verbose,noauto,nofail,_netdev,x-systemd.requires=network.target,comment=ok"
    );
    let ran = s.mount(
        "mount",
        &["-t", "fuse.nsproxyfs", "nsproxyfs", &mnt, "-o", &opts],
    );
    assert!(ran.status.success(), "mount: {}", ran.stderr);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", s.daemons[0].pid)).unwrap();
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    assert!(args.contains(&b"-v".as_slice()), "verbose becomes -v");
    assert!(
        args.windows(2)
            .any(|w| w == [b"--state-dir".as_slice(), state.as_bytes()])
    );
    s.check_and_umount();
    // The state directory was the one asked for.
    assert!(s.state.join("lock").exists());
}

#[test]
fn an_fstab_line_mounts_with_mount_dir() {
    let Some(mut s) = Setup::new("helper-fstab", true) else {
        return;
    };
    let fstab = s.scratch.0.join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# nsproxyfs\nnsproxyfs  {}  fuse.nsproxyfs  state_dir={},nofail,_netdev,x-systemd.after=network.target  0  0\n",
            s.mnt.display(),
            s.state.display()
        ),
    )
    .unwrap();
    let (fstab, mnt) = (fstab.display().to_string(), s.mnt.display().to_string());
    let ran = s.mount("mount", &["--fstab", &fstab, &mnt]);
    assert!(ran.status.success(), "mount --fstab: {}", ran.stderr);
    s.check_and_umount();
    // `mount -a` mounts it too, once: the mount table shows the type
    // fuse.nsproxyfs, so a second `mount -a` knows it is mounted.
    for _ in 0..2 {
        let ran = s.mount("mount", &["--fstab", &fstab, "-a", "-t", "fuse.nsproxyfs"]);
        assert!(ran.status.success(), "mount -a: {}", ran.stderr);
    }
    s.check_and_umount();
    // A noauto line `mount -a` leaves alone.
    let text = std::fs::read_to_string(&fstab)
        .unwrap()
        .replace("nofail", "noauto");
    std::fs::write(&fstab, text).unwrap();
    let ran = s.mount("mount", &["--fstab", &fstab, "-a", "-t", "fuse.nsproxyfs"]);
    assert!(ran.status.success(), "mount -a: {}", ran.stderr);
    assert!(!s.mounted(), "noauto lines are left to the admin");
}

#[test]
fn options_are_checked_fake_mounts_nothing_and_sloppy_ignores_unknown_ones() {
    let Some(mut s) = Setup::new("helper-options", true) else {
        return;
    };
    let (mnt, state) = (s.mnt.display().to_string(), s.state.display().to_string());
    let with = |extra: &str| format!("state_dir={state},{extra}");
    for (opts, want) in [
        (with("ro"), "ro is not supported"),
        (with("bogus=1"), "unknown option bogus=1"),
        ("state_dir=".to_owned(), "state_dir needs a directory"),
        (with("netns_export="), "netns_export needs a directory"),
    ] {
        let ran = s.mount(
            "mount",
            &["-t", "fuse.nsproxyfs", "nsproxyfs", &mnt, "-o", &opts],
        );
        assert!(!ran.status.success(), "{opts} should fail");
        assert!(
            ran.stderr.contains(want),
            "{opts}: {:?} lacks {want:?}",
            ran.stderr
        );
        assert!(
            !s.mounted() && s.daemons.is_empty(),
            "{opts} started nothing"
        );
    }
    let ran = s.mount(
        "mount",
        &[
            "-f",
            "-t",
            "fuse.nsproxyfs",
            "nsproxyfs",
            &mnt,
            "-o",
            &with("verbose"),
        ],
    );
    assert!(ran.status.success(), "mount -f: {}", ran.stderr);
    assert!(
        !s.mounted() && s.daemons.is_empty(),
        "mount -f mounts nothing"
    );
    // -v shows the daemon's command line: netns_export=DIR and discover
    // are passed on.
    let ran = s.mount(
        "mount",
        &[
            "-f",
            "-v",
            "-t",
            "fuse.nsproxyfs",
            "nsproxyfs",
            &mnt,
            "-o",
            &with("netns_export=/run/netns,discover"),
        ],
    );
    assert!(ran.status.success(), "mount -f -v: {}", ran.stderr);
    assert!(
        ran.stderr.contains("--netns-export /run/netns --discover"),
        "{:?}",
        ran.stderr
    );
    assert!(!s.mounted() && s.daemons.is_empty());

    let ran = s.mount(
        "mount",
        &[
            "-s",
            "-t",
            "fuse.nsproxyfs",
            "nsproxyfs",
            &mnt,
            "-o",
            &with("bogus=1"),
        ],
    );
    assert!(ran.status.success(), "mount -s: {}", ran.stderr);
    s.check_and_umount();

    // A daemon that cannot mount makes the helper, and mount, fail.
    let file = s.scratch.0.join("file");
    std::fs::write(&file, "").unwrap();
    let file = file.display().to_string();
    let ran = s.mount(
        "mount",
        &["-t", "fuse.nsproxyfs", "nsproxyfs", &file, "-o", &with("")],
    );
    assert!(!ran.status.success());
    assert!(ran.stderr.contains("not a directory"), "{}", ran.stderr);
}

#[test]
fn install_stages_under_destdir_with_the_final_paths_inside_and_uninstalls() {
    let test = "helper-destdir";
    if !require_tools(test, &["sh", "install", "sed"]) {
        return;
    }
    let s = Scratch::new(test);
    let stage = s.0.join("stage");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec![
            format!("DESTDIR={}", stage.display()),
            "PREFIX=/usr".to_owned(),
            format!("BINARY={BIN}"),
        ];
        v.extend(extra.iter().map(|a| (*a).to_owned()));
        v
    };
    let ran = install(&s.0, &args(&[]));
    assert!(ran.status.success(), "install.sh: {}", ran.stderr);
    let files = [
        ("usr/sbin/nsproxyfs", 0o755),
        ("sbin/mount.fuse.nsproxyfs", 0o755),
        ("usr/lib/systemd/system/nsproxyfs.service", 0o644),
        ("usr/share/man/man8/nsproxyfs.8", 0o644),
    ];
    for (file, mode) in files {
        let md = std::fs::metadata(stage.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(md.permissions().mode() & 0o777, mode, "{file}");
    }
    let helper = std::fs::read_to_string(stage.join("sbin/mount.fuse.nsproxyfs")).unwrap();
    assert!(
        helper.contains("NSPROXYFS='/usr/sbin/nsproxyfs'"),
        "helper names the daemon"
    );
    let unit = std::fs::read_to_string(stage.join(files[2].0)).unwrap();
    assert!(
        !unit.contains("@NSPROXYFS@"),
        "every placeholder filled: {unit}"
    );
    assert!(unit.contains("\nExecStart=/usr/sbin/nsproxyfs --foreground "));
    assert!(unit.contains("\nType=notify\n") && unit.contains("\nKillMode=process\n"));

    let ran = install(&s.0, &args(&["--uninstall"]));
    assert!(ran.status.success(), "uninstall: {}", ran.stderr);
    for (file, _) in files {
        assert!(!stage.join(file).exists(), "{file} removed");
    }
    let left: Vec<_> = std::fs::read_dir(&stage)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(
        left.is_empty(),
        "the directories it made are removed: {left:?}"
    );
    let ran = install(&s.0, &args(&["PREFIX=relative"]));
    assert!(!ran.status.success(), "relative directories are refused");
    let ran = install(&s.0, &args(&["BINARY=/nonexistent"]));
    assert!(
        ran.stderr.contains("cargo build --release"),
        "{}",
        ran.stderr
    );
}

#[test]
fn the_units_command_reports_ready_once_mounted_and_stops_on_sigterm() {
    let Some(mut s) = Setup::new("helper-unit", false) else {
        return;
    };
    let unit =
        std::fs::read_to_string(s.prefix.join("lib/systemd/system/nsproxyfs.service")).unwrap();
    if on_path("systemd-analyze") {
        s.watched.step.set("systemd-analyze verify");
        let ran = run(
            &s.scratch.0,
            Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(s.prefix.join("lib/systemd/system/nsproxyfs.service")),
        );
        assert!(
            ran.status.success(),
            "systemd-analyze verify: {}",
            ran.stderr
        );
    }
    // Systemd would run ExecStart= as it is; here with this test's paths.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    let exec = exec
        .replace("/run/nsproxyfs", s.state.to_str().unwrap())
        .replace("/container_ns", s.mnt.to_str().unwrap());
    let words: Vec<&str> = exec.split_whitespace().collect();
    let socket = s.scratch.0.join("notify");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    s.watched.step.set("start the unit's command");
    let mut daemon = Command::new(words[0])
        .args(&words[1..])
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(s.scratch.0.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    s.watched.watch_pid(daemon.id() as i32);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).expect("READY=1 within 20 s");
    assert_eq!(&buf[..n], b"READY=1");
    s.find_daemons();
    // Ready means mounted: the tree answers at once.
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("status"))
            .unwrap()
            .lines()
            .count(),
        8
    );
    s.watched
        .step
        .set("stop the unit (SIGTERM, KillMode=process)");
    // SAFETY: kill takes integers; the pid is this test's own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let n = manager.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = wait_bounded(&mut daemon, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(!s.mounted());
}

/// The commands of the unit's [Service] section named `key`, with this
/// test's paths, as systemd would run them: a leading `-` means the
/// command may fail.
fn unit_commands(s: &Setup, key: &str) -> Vec<(bool, Vec<String>)> {
    let unit =
        std::fs::read_to_string(s.prefix.join("lib/systemd/system/nsproxyfs.service")).unwrap();
    let prefix = format!("{key}=");
    unit.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|cmd| {
            let cmd = cmd
                .replace("/run/nsproxyfs", s.state.to_str().unwrap())
                .replace("/container_ns", s.mnt.to_str().unwrap());
            let (may_fail, cmd) = match cmd.strip_prefix('-') {
                Some(rest) => (true, rest.to_owned()),
                None => (false, cmd),
            };
            (
                may_fail,
                cmd.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

/// SIGKILLs the test's daemon, as a crash would, and waits until it is
/// gone: its mount is left behind, dead.
fn crash(s: &mut Setup) {
    s.watched.step.set("kill -9 the daemon");
    assert_eq!(s.daemons.len(), 1, "one daemon");
    s.daemons[0].kill();
    wait_for("the killed daemon to be gone", || !s.daemons[0].alive());
    s.daemons.clear();
    assert_eq!(
        errno(std::fs::metadata(&s.mnt)),
        libc::ENOTCONN,
        "the dead mount stays"
    );
}

#[test]
fn after_kill_9_mount_and_the_units_commands_start_again_with_the_same_tree() {
    let Some(mut s) = Setup::new("helper-crash", true) else {
        return;
    };
    let (mnt, state) = (s.mnt.display().to_string(), s.state.display().to_string());
    let log = s.state.join("daemon.log");
    let opts = format!("state_dir={state},log={}", log.display());
    let ran = s.mount(
        "mount",
        &["-t", "fuse.nsproxyfs", "nsproxyfs", &mnt, "-o", &opts],
    );
    assert!(ran.status.success(), "mount: {}", ran.stderr);
    assert!(
        ran.stderr
            .contains(&format!("logging to {}", log.display())),
        "the start names where the log goes: {}",
        ran.stderr
    );
    std::fs::create_dir(s.mnt.join("web")).unwrap();
    File::create(s.mnt.join("web/net")).unwrap();
    let net = std::fs::read_to_string(s.mnt.join("web/net")).unwrap();

    crash(&mut s);
    let ran = s.mount(
        "mount",
        &["-t", "fuse.nsproxyfs", "nsproxyfs", &mnt, "-o", &opts],
    );
    assert!(ran.status.success(), "mount after kill -9: {}", ran.stderr);
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("web/net")).unwrap(),
        net,
        "the tree comes back from the state directory"
    );
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("left by a daemon that died"),
        "the detach is logged: {log}"
    );

    // systemd's Restart=: ExecStartPre= then ExecStart= on the dead mount.
    crash(&mut s);
    for (may_fail, words) in unit_commands(&s, "ExecStartPre") {
        s.watched.step.set(&format!("ExecStartPre {words:?}"));
        let ran = run(&s.scratch.0, Command::new(&words[0]).args(&words[1..]));
        assert!(
            may_fail || ran.status.success(),
            "{words:?} must not fail on a dead mount: {}",
            ran.stderr
        );
    }
    let start = unit_commands(&s, "ExecStart");
    assert_eq!(start.len(), 1, "one ExecStart=");
    let words = &start[0].1;
    let socket = s.scratch.0.join("notify");
    let manager = UnixDatagram::bind(&socket).unwrap();
    manager
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    s.watched.step.set("ExecStart on the dead mount");
    let mut daemon = Command::new(&words[0])
        .args(&words[1..])
        .env("NOTIFY_SOCKET", &socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(s.scratch.0.join("daemon.log")).unwrap())
        .spawn()
        .unwrap();
    s.watched.watch_pid(daemon.id() as i32);
    let mut buf = [0u8; 256];
    let n = manager.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "READY=1 within 20 s ({e}): {}",
            std::fs::read_to_string(s.scratch.0.join("daemon.log")).unwrap_or_default()
        )
    });
    assert_eq!(&buf[..n], b"READY=1");
    s.find_daemons();
    assert_eq!(
        std::fs::read_to_string(s.mnt.join("web/net")).unwrap(),
        net,
        "the unit's restart brings the same tree back"
    );
    s.watched.step.set("stop the unit");
    // SAFETY: kill takes integers; the pid is this test's own child.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = wait_bounded(&mut daemon, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));
    assert!(!s.mounted());
    s.daemons.clear();
}

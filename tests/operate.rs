//! Running the daemon as an admin would: in the background with no syslog
//! socket, started with relative paths from a scratch directory, looked at
//! with pidof and pgrep, and ended with umount.

mod common;

use std::ffi::CString;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Makes the syslog sockets unreachable in this thread's private mount
/// namespace (a bind mount of /dev/null over each), as on a host or in a
/// container without a syslog daemon.
fn hide_syslog() {
    for socket in [
        "/dev/log",
        "/var/run/syslog",
        "/run/systemd/journal/dev-log",
    ] {
        let is_socket = std::fs::metadata(socket).is_ok_and(|m| m.file_type().is_socket());
        if !is_socket {
            continue;
        }
        let target = CString::new(socket).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call; a bind
        // mount in this thread's private mount namespace only.
        let r = unsafe {
            libc::mount(
                c"/dev/null".as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        assert_eq!(r, 0, "cover {socket}: {}", std::io::Error::last_os_error());
    }
}

/// Processes named `nsproxyfs-*` that sit in one of the namespaces `inos`:
/// the helpers of a container with fresh namespaces.
fn helpers_in(inos: &[u64]) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !comm.starts_with("nsproxyfs-") {
            continue;
        }
        let inside = ["net", "mnt", "pid_for_children", "pid"]
            .iter()
            .any(|entry| {
                std::fs::metadata(format!("/proc/{pid}/ns/{entry}"))
                    .is_ok_and(|m| inos.contains(&std::os::unix::fs::MetadataExt::ino(&m)))
            });
        if inside {
            found.push(pid);
        }
    }
    found
}

fn pids_of(cmd: &mut Command) -> Vec<i32> {
    let out = cmd.output().expect("run pidof/pgrep");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The daemon of `state`: a process named nsproxyfs whose command line
/// names it.
fn daemon_of(state: &str) -> Option<i32> {
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
        let running = Seen::now(pid).is_some_and(|s| s.running());
        (comm == "nsproxyfs\n" && running && cmdline(pid).iter().any(|a| a == state)).then_some(pid)
    })
}

fn unmount(dir: &Path) {
    if let Ok(c) = CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path; failure (not mounted) is fine.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_background_daemon_with_relative_paths_and_no_syslog() {
    let test = "operate_background";
    if !require_privileges(test) {
        return;
    }
    if !require_tools(test, &["pidof", "pgrep", "umount"]) {
        return;
    }
    private_mount_namespace();
    hide_syslog();
    let scratch = Scratch::new(test);
    let watched = Watched::start(test);
    let step = &watched.step;
    std::fs::create_dir(scratch.0.join("mnt")).unwrap();
    let mnt = scratch.0.join("mnt");
    let state = scratch.0.join("state");

    step.set("start in the background, paths relative to the scratch directory");
    let out = Command::new(BIN)
        .args(["--state-dir", "state", "mnt"])
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "start: {said}");
    let daemon = daemon_of("state").expect("the daemon runs");
    watched.watch_pid(daemon);
    let log = state.join("log");
    assert_eq!(
        said.trim_end(),
        format!(
            "nsproxyfs: mounted on {}; logging to {}",
            mnt.display(),
            log.display()
        ),
        "one line names where the log goes"
    );

    step.set("a refusal is in the log");
    std::fs::create_dir(mnt.join("web")).unwrap();
    assert_eq!(
        errno(write_once(&mnt.join("web/tasks"), b"999999999")),
        libc::ESRCH
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("write tasks by pid") && text.contains("no process 999999999"),
        "the refusal and its reason: {text}"
    );

    step.set("pins are absolute and work from another directory");
    for kind in ["net", "pid", "mnt"] {
        std::fs::File::create(mnt.join("web").join(kind)).unwrap();
    }
    let status = std::fs::read_to_string(mnt.join("web/status")).unwrap();
    for line in status.lines() {
        let pin = line.split('\t').nth(3).unwrap();
        assert!(pin.starts_with('/'), "an absolute pin: {line}");
    }
    let web = mnt.join("web");
    let ran = Command::new(BIN)
        .arg("exec")
        .arg(&web)
        .args(["--", "readlink", "/proc/self/ns/net"])
        .current_dir("/")
        .output()
        .unwrap();
    assert!(
        ran.status.success(),
        "exec from /: {}",
        String::from_utf8_lossy(&ran.stderr)
    );
    let net = std::fs::read_to_string(web.join("net")).unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), net);

    step.set("helpers have names of their own");
    let sleeper = Proc::sh("exec sleep 600");
    write_once(&web.join("tasks"), sleeper.pid().to_string().as_bytes()).unwrap();
    let inos: Vec<u64> = status
        .lines()
        .filter(|l| ["net", "pid", "mnt"].contains(&l.split('\t').next().unwrap()))
        .map(|l| {
            let ns = l.split('\t').nth(1).unwrap();
            ns[ns.find('[').unwrap() + 1..ns.len() - 1].parse().unwrap()
        })
        .collect();
    let mut helpers = helpers_in(&inos);
    helpers.extend(injector_pids(daemon));
    let comms: Vec<String> = helpers
        .iter()
        .map(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .unwrap()
                .trim_end()
                .to_owned()
        })
        .collect();
    for want in [
        "nsproxyfs-pid1",
        "nsproxyfs-mnt",
        "nsproxyfs-hold",
        "nsproxyfs-inj",
    ] {
        assert!(comms.iter().any(|c| c == want), "{want} among {comms:?}");
    }
    let pidof = pids_of(Command::new("pidof").arg("nsproxyfs"));
    let pgrep = pids_of(Command::new("pgrep").args(["-x", "nsproxyfs"]));
    assert!(pidof.contains(&daemon) && pgrep.contains(&daemon));
    for (&pid, comm) in helpers.iter().zip(&comms) {
        let argv = cmdline(pid);
        assert_eq!(argv.first(), Some(comm), "argv[0] of {pid} is its name");
        assert!(
            !pidof.contains(&pid) && !pgrep.contains(&pid),
            "{comm} ({pid}) is not the daemon: pidof {pidof:?}, pgrep {pgrep:?}"
        );
    }
    for pid in helpers.iter().chain([&daemon]) {
        assert_eq!(
            std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
            PathBuf::from("/"),
            "process {pid} keeps no directory busy"
        );
    }
    drop(sleeper);

    step.set("a clean end logs no warning");
    std::fs::remove_dir(&web).unwrap();
    let umount = Command::new("umount").arg(&mnt).status().unwrap();
    assert!(umount.success());
    let seen = Seen::now(daemon).unwrap();
    wait_for("the daemon to end after umount", || !seen.running());
    let text = std::fs::read_to_string(&log).unwrap();
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| !l.contains("no process 999999999"))
        .collect();
    assert!(bad.is_empty(), "warnings or errors: {bad:?}\n{text}");
    unmount(&mnt);
    nsproxyfs::daemon::clear_pins(&state.join("pins"));
}

#[test]
fn help_is_a_command_and_log_values_are_checked() {
    let out = Command::new(BIN).arg("help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: nsproxyfs"));
    let out = Command::new(BIN)
        .args(["--log", "", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn verbose_logs_name_the_container_a_process_moved_into() {
    let Some(m) = Mount::new("operate_verbose") else {
        return;
    };
    std::fs::create_dir_all(m.path("web/db")).unwrap();
    File::create(m.path("web/db/uts")).unwrap();
    let sleeper = Proc::sh("exec sleep 600");
    m.watch_pid(sleeper.pid());
    m.write("web/db/tasks", sleeper.pid().to_string().as_bytes())
        .unwrap();
    // The line follows the reply (a process moving itself is answered
    // before its move is done), so it may land a moment after the write.
    let said = format!("process {} moved into /web/db", sleeper.pid());
    wait_for("the move's log line", || m.log_text().contains(&said));
}

#[test]
fn a_clean_end_leaves_no_injector_behind() {
    // Orphans come to this process, which collects none of them, as on a
    // host whose init does not: an injector the daemon left behind would
    // show as a zombie here.
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes integers and only marks
    // this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let Some(mut m) = Mount::new("operate_reap") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    File::create(m.path("c/uts")).unwrap();
    let sleeper = Proc::sh("exec sleep 600");
    m.watch_pid(sleeper.pid());
    m.write("c/tasks", sleeper.pid().to_string().as_bytes())
        .unwrap();
    let daemon = m.daemon_pid().to_string();
    let injectors: Vec<i32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.contains("(nsproxyfs-inj)")
                    && s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().nth(1))
                        == Some(daemon.as_str())
            })
        })
        .collect();
    assert!(!injectors.is_empty(), "a move started an injector");
    assert!(m.umount().success());
    // Collected by the daemon before it ended: not even a zombie is left
    // (the process that inherits orphans here collects none).
    for pid in injectors {
        wait_for(&format!("injector {pid} to be collected"), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }
}

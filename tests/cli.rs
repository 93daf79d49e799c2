//! The command line: mounting in the background and the foreground, clean
//! ends, and one-line refusals.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn setup(test: &str) -> Option<Scratch> {
    if !require_privileges(test) {
        return None;
    }
    private_mount_namespace();
    let s = Scratch::new(test);
    std::fs::create_dir(s.0.join("mnt")).unwrap();
    Some(s)
}

/// Runs the command to completion with a bound; returns (status, stderr).
fn run(cmd: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

fn one_line_failure(status: std::process::ExitStatus, err: &str, want: &str) {
    assert!(!status.success(), "expected failure, stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("nsproxyfs: "), "{err}");
    assert!(err.contains(want), "{err:?} should mention {want:?}");
}

#[test]
fn background_mount_answers_on_return_and_umount_ends_it() {
    let Some(s) = setup("cli-bg") else { return };
    let (mnt, state) = (s.0.join("mnt"), s.0.join("state"));
    let _forget = Forget(state.clone());
    let (status, err) = run(Command::new(BIN).arg(&mnt).arg("--state-dir").arg(&state));
    assert!(status.success(), "{err}");
    // The mount answers at once: no retry loop.
    let text = std::fs::read_to_string(mnt.join("status")).unwrap();
    assert_eq!(text.lines().count(), 8);
    let daemons = daemons_on(&state);
    assert_eq!(daemons.len(), 1, "{daemons:?}");
    let guard = scopeguard(daemons[0]);
    // A second daemon on the same state directory is refused.
    let other = s.0.join("mnt2");
    std::fs::create_dir(&other).unwrap();
    let (status, err) = run(Command::new(BIN).arg(&other).arg("--state-dir").arg(&state));
    one_line_failure(status, &err, "in use");
    // umount ends the daemon.
    sh_ok(&format!("umount {}", mnt.display()));
    wait_for("the daemon to exit", || daemons_on(&state).is_empty());
    drop(guard);
}

/// Kills `pid` on drop unless it is already gone (a started daemon).
fn scopeguard(pid: i32) -> impl Drop {
    struct Kill(i32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill takes integers; the pid is a daemon this test started.
            unsafe { libc::kill(self.0, libc::SIGKILL) };
        }
    }
    Kill(pid)
}

/// Forgets a state directory's record, pins and keepers on drop.
struct Forget(std::path::PathBuf);

impl Drop for Forget {
    fn drop(&mut self) {
        nsproxyfs::daemon::forget(&self.0);
    }
}

#[test]
fn foreground_ends_with_status_zero_on_umount_sigterm_and_sigint() {
    let Some(s) = setup("cli-fg") else { return };
    let mnt = s.0.join("mnt");
    let _forget = Forget(s.0.join("state"));
    let root_dev = std::fs::metadata(&mnt).unwrap().dev();
    let mut made: Vec<String> = Vec::new();
    for how in ["umount", "SIGTERM", "SIGINT"] {
        let mut child = Command::new(BIN)
            .arg("-f")
            .arg(&mnt)
            .arg("--state-dir")
            .arg(s.0.join("state"))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the mount", || {
            std::fs::metadata(mnt.join("status")).is_ok_and(|m| m.dev() != root_dev)
        });
        // What earlier rounds made is back.
        for c in &made {
            assert!(mnt.join(c).join("mnt").exists(), "{c}/mnt back");
        }
        // A fresh mount namespace holds a copy of the mount: ending must
        // not wait for it.
        let c = format!("c-{how}");
        std::fs::create_dir(mnt.join(&c)).unwrap();
        std::fs::File::create(mnt.join(&c).join("mnt")).unwrap();
        made.push(c);
        let signal = match how {
            "umount" => {
                sh_ok(&format!("umount {}", mnt.display()));
                0
            }
            "SIGTERM" => libc::SIGTERM,
            _ => libc::SIGINT,
        };
        if signal != 0 {
            // SAFETY: kill takes integers; the pid is our child.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
        let status = wait_bounded(&mut child, Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "after {how}");
        assert!(
            std::fs::metadata(&mnt).unwrap().dev() == root_dev,
            "unmounted after {how}"
        );
        // Only the pins of namespaces a container binds stay; mount
        // namespaces have a keeper process instead of a pin.
        let pins = std::fs::read_dir(s.0.join("state/pins")).unwrap().count();
        assert_eq!(pins, 0, "pins left after {how}");
    }
}

#[test]
fn refusals_are_one_line_and_non_zero() {
    let Some(s) = setup("cli-refuse") else { return };
    let mnt = s.0.join("mnt");
    let state = s.0.join("state");

    let (status, err) = run(Command::new(BIN)
        .arg(s.0.join("missing"))
        .arg("--state-dir")
        .arg(&state));
    one_line_failure(status, &err, "No such file");

    sh_ok(&format!("mount -t tmpfs busy {}", mnt.display()));
    let (status, err) = run(Command::new(BIN).arg(&mnt).arg("--state-dir").arg(&state));
    one_line_failure(status, &err, "busy");
    sh_ok(&format!("umount {}", mnt.display()));

    let file = s.0.join("file");
    std::fs::write(&file, "").unwrap();
    let (status, err) = run(Command::new(BIN).arg(&file).arg("--state-dir").arg(&state));
    one_line_failure(status, &err, "not a directory");

    let (status, err) = run(Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .arg(&mnt)
        .arg("--state-dir")
        .arg(&state));
    one_line_failure(status, &err, "must run as root");

    let (status, err) = run(Command::new("unshare")
        .arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "mount -t tmpfs none /dev && exec {BIN} {} --state-dir {}",
            mnt.display(),
            state.display()
        )));
    one_line_failure(status, &err, "/dev/fuse");
}

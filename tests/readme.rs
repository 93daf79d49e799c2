//! The README's tour, run as it is written: its mount command, then every
//! line of its tour block, in order, by `sh -e`.
//!
//! Nothing of the host is touched: the shell runs under `unshare --mount
//! --pid --fork --kill-child --mount-proc`, with a tmpfs on /run (the
//! default state directory and `ip netns`'s /run/netns live there), the
//! syslog socket covered, and `/container_ns` replaced by a scratch
//! directory. Its processes (the daemon, the tour's sleeper) die with the
//! pid namespace whatever happens. `cargo` is a no-op there (the test
//! harness built the daemon), and `target/release/nsproxyfs` is a link to
//! the daemon under test.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const README: &str = include_str!("../README.md");

/// The first indented line after "Mount it": the command that mounts.
fn mount_command() -> &'static str {
    let after = &README[README.find("Mount it").expect("a \"Mount it\" paragraph")..];
    after
        .lines()
        .find_map(|l| l.strip_prefix("    "))
        .expect("an indented mount command")
}

/// The ```sh block of the "A short tour" section.
fn tour() -> &'static str {
    let section = &README[README.find("## A short tour").expect("a tour section")..];
    let start = section.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let len = section[start..].find("```").expect("the block's end");
    &section[start..start + len]
}

#[test]
fn the_readme_tour_runs_as_written() {
    let test = "readme_tour";
    if !require_privileges(test) {
        return;
    }
    if !require_tools(test, &["unshare", "ip", "nsenter", "awk", "stat", "pgrep"]) {
        return;
    }
    private_mount_namespace();
    let scratch = Scratch::new(test);
    let release = scratch.0.join("target/release");
    std::fs::create_dir_all(&release).unwrap();
    std::os::unix::fs::symlink(BIN, release.join("nsproxyfs")).unwrap();
    let mnt = scratch.0.join("container_ns");
    let mnt = mnt.to_str().unwrap();

    let script = format!(
        "set -ex
mount -t tmpfs nsproxyfs-tour /run
if [ -S /dev/log ]; then mount --bind /dev/null /dev/log; fi
cargo() {{ :; }}
{mount}
{tour}
while pgrep -x nsproxyfs >/dev/null; do sleep 0.05; done
if grep -E ' (WARN|ERROR) ' /run/nsproxyfs/log; then exit 3; fi
",
        mount = mount_command().replace("/container_ns", mnt),
        tour = tour().replace("/container_ns", mnt),
    );
    let watched = Watched::start(test);
    let step = &watched.step;
    step.set("the tour");
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "sh",
            "-c",
            &script,
        ])
        .current_dir(&scratch.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(scratch.0.join("out")).unwrap())
        .stderr(std::fs::File::create(scratch.0.join("err")).unwrap())
        .spawn()
        .unwrap();
    watched.watch_pid(child.id() as i32);
    let status = wait_bounded(&mut child, Duration::from_secs(100));
    let out = std::fs::read_to_string(scratch.0.join("out")).unwrap_or_default();
    let err = std::fs::read_to_string(scratch.0.join("err")).unwrap_or_default();
    assert!(
        status.success(),
        "the tour failed ({status}):\n--- output\n{out}\n--- trace\n{err}"
    );
    // What the tour's comments promise.
    assert!(out.contains("net:[4026531840]") || out.contains("net:["));
    assert!(err.contains("logging to /run/nsproxyfs/log"), "{err}");
}

//! `nsproxyfs exec`: a new command in a container's effective set, checked
//! against the container's `status`; exit statuses, signals, orphans in a
//! fresh pid namespace, and clear refusals.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use common::*;

/// The `/proc/self/ns` entries a command reads to say where it is, and the
/// kind whose `status` line each must match.
const ENTRIES: [(&str, &str); 10] = [
    ("cgroup", "cgroup"),
    ("ipc", "ipc"),
    ("mnt", "mnt"),
    ("net", "net"),
    ("pid", "pid"),
    ("pid_for_children", "pid"),
    ("time", "time"),
    ("time_for_children", "time"),
    ("user", "user"),
    ("uts", "uts"),
];

/// `nsproxyfs exec M/container -- sh -c script`, not yet started.
fn exec(m: &Mount, container: &str, script: &str) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("exec")
        .arg(m.path(container))
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end (bounded) and returns what it printed.
fn output(m: &Mount, mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nsproxyfs exec");
    m.watch_pid(child.id() as i32);
    finish(child)
}

/// Waits (bounded) for `child` and collects its output.
fn finish(mut child: Child) -> Output {
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let reader = std::thread::spawn(move || {
        let mut text = (Vec::new(), Vec::new());
        if let Some(o) = out.as_mut() {
            let _ = std::io::Read::read_to_end(o, &mut text.0);
        }
        if let Some(e) = err.as_mut() {
            let _ = std::io::Read::read_to_end(e, &mut text.1);
        }
        text
    });
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let (stdout, stderr) = reader.join().unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The namespace `status` names for `kind` in `container`: `net:[N]`.
fn status_of(m: &Mount, container: &str, kind: &str) -> String {
    m.status(container)
        .into_iter()
        .find(|f| f[0] == kind)
        .map(|f| f[1].clone())
        .unwrap_or_else(|| panic!("no {kind} line"))
}

fn code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| panic!("nsproxyfs exec was killed: {status}"))
}

#[test]
fn exec_runs_in_every_namespace_the_container_status_names() {
    let Some(m) = Mount::new("exec-set") else {
        return;
    };
    let host = sh_ok("hostname");
    std::fs::create_dir(m.path("c")).unwrap();
    for kind in ["uts", "net", "pid"] {
        std::fs::File::create(m.path(&format!("c/{kind}"))).unwrap();
    }
    std::fs::create_dir(m.path("c/d")).unwrap();
    std::fs::create_dir(m.path("all")).unwrap();
    for kind in KINDS {
        std::fs::File::create(m.path(&format!("all/{kind}"))).unwrap();
    }
    m.step.set("set c's hostname through exec");
    let out = output(&m, exec(&m, "c", "hostname node1"));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let script = format!(
        "for e in {}; do readlink /proc/self/ns/$e; done; echo $$; hostname; id -u; pwd; ip -o link | wc -l",
        ENTRIES.map(|(e, _)| e).join(" ")
    );
    for container in ["", "c", "c/d", "all"] {
        m.step.set(&format!("exec in {container}"));
        let mut cmd = exec(&m, container, &script);
        cmd.current_dir(m.scratch(""));
        let out = output(&m, cmd);
        assert!(out.status.success(), "{container}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), ENTRIES.len() + 5, "{container}: {stdout}");
        for (line, (entry, kind)) in lines.iter().zip(ENTRIES) {
            assert_eq!(
                *line,
                status_of(&m, container, kind),
                "{container}: /proc/self/ns/{entry}"
            );
        }
        let rest = &lines[ENTRIES.len()..];
        let pid: i32 = rest[0].parse().unwrap();
        assert!(
            pid > 1,
            "{container}: not PID 1 of its fresh pid namespace: {pid}"
        );
        let want_host = match container {
            "" | "all" => host.trim(),
            _ => "node1",
        };
        assert_eq!(rest[1], want_host, "{container}: hostname");
        assert_eq!(rest[2], "0", "{container}: root in the user namespace");
        assert_eq!(
            std::path::Path::new(rest[3]),
            m.scratch("").as_path(),
            "{container}: the working directory is kept"
        );
        if !container.is_empty() {
            assert_eq!(
                rest[4], "1",
                "{container}: a fresh net namespace has only lo"
            );
        }
    }
    assert_eq!(sh_ok("hostname"), host, "the host's name is untouched");
}

#[test]
fn exit_status_passes_through_and_signals_give_128_plus_n() {
    let Some(m) = Mount::new("exec-status") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/pid")).unwrap();
    for (script, want) in [
        ("exit 0", 0),
        ("exit 7", 7),
        ("kill -KILL $$", 128 + libc::SIGKILL),
        ("kill -TERM $$", 128 + libc::SIGTERM),
        ("kill -USR1 $$", 128 + libc::SIGUSR1),
    ] {
        m.step.set(script);
        let out = output(&m, exec(&m, "c", script));
        assert_eq!(code(out.status), want, "{script}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{script}: {}", text(&out.stderr));
    }
    let mut cmd = Command::new(BIN);
    cmd.arg("exec")
        .arg(m.path("c"))
        .arg("nsproxyfs-no-such-command")
        .stdin(Stdio::null());
    let out = output(&m, cmd);
    assert_eq!(code(out.status), 127, "not found");
    let err = text(&out.stderr);
    assert!(err.contains("nsproxyfs-no-such-command"), "{err}");

    let script = m.scratch("script");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("exec").arg(m.path("c")).arg("--").arg(&script);
    let out = output(&m, cmd);
    assert_eq!(code(out.status), 126, "not executable");
}

/// Starts `nsproxyfs exec` on a script that prints `ready` once its traps
/// are set, and waits for that line.
fn started(m: &Mount, script: &str) -> Child {
    let mut child = exec(m, "c", script)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nsproxyfs exec");
    m.watch_pid(child.id() as i32);
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "ready\n");
    child
}

#[test]
fn signals_sent_to_exec_reach_the_command() {
    let Some(m) = Mount::new("exec-signals") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/pid")).unwrap();
    for (sig, want) in [
        (libc::SIGTERM, 128 + libc::SIGTERM),
        (libc::SIGINT, 128 + libc::SIGINT),
        (libc::SIGHUP, 128 + libc::SIGHUP),
    ] {
        m.step.set(&format!("signal {sig} without a trap"));
        let child = started(&m, "echo ready; exec sleep 60");
        // SAFETY: kill takes integers; the pid is this test's own child.
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = finish(child);
        assert_eq!(code(out.status), want, "signal {sig}");
    }
    m.step.set("a trapped SIGTERM");
    let child = started(
        &m,
        "trap 'echo caught; exit 42' TERM; echo ready; while :; do sleep 0.05; done",
    );
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = finish(child);
    assert_eq!(code(out.status), 42);
    assert_eq!(text(&out.stdout), "caught\n");
}

#[test]
fn orphans_in_a_fresh_pid_namespace_are_reaped_by_its_keeper() {
    let Some(m) = Mount::new("exec-orphans") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/pid")).unwrap();
    let report = m.scratch("orphan");
    let script = format!(
        "sh -c 'sleep 0.5; exec grep -E \"^(PPid|NSpid):\" /proc/self/status > {}' & exit 0",
        report.display()
    );
    let out = output(&m, exec(&m, "c", &script));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // exec returned while the orphan still runs; once it has written its
    // report it exits, and nobody but the keeper can reap it.
    wait_for("the orphan's report", || {
        std::fs::read_to_string(&report).is_ok_and(|t| t.lines().count() == 2)
    });
    let fields = std::fs::read_to_string(&report).unwrap();
    let value = |key: &str| -> Vec<i32> {
        fields
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("{key} in {fields}"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let ppid = value("PPid:")[0];
    let nspid = value("NSpid:");
    assert_eq!(nspid.len(), 2, "one level below the test's pid namespace");
    assert!(nspid[1] > 1, "the orphan is not PID 1: {nspid:?}");
    let keeper = std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap();
    assert_eq!(keeper, "nsproxyfs-pid1\n", "the orphan's new parent");
    let keeper_ns = ns_ino(ppid, "pid");
    assert_eq!(status_of(&m, "c", "pid"), format!("pid:[{keeper_ns}]"));
    // Reaped: gone from /proc, not left a zombie.
    wait_for("the orphan to be reaped", || {
        !std::path::Path::new(&format!("/proc/{}", nspid[0])).exists()
    });
    // The pid namespace still takes new members.
    let out = output(&m, exec(&m, "c", "echo $$"));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn refusals_are_one_clear_line_with_status_125() {
    let Some(m) = Mount::new("exec-refuse") else {
        return;
    };
    let outside = m.scratch("plain");
    std::fs::create_dir(&outside).unwrap();
    for (target, want) in [
        (m.path("nope"), "no such container"),
        (outside, "not a container"),
        (m.path("tasks"), "not a container"),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec")
            .arg(&target)
            .args(["--", "true"])
            .stdin(Stdio::null());
        let out = output(&m, cmd);
        let err = text(&out.stderr);
        assert_eq!(code(out.status), 125, "{}: {err}", target.display());
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.starts_with("nsproxyfs: exec: "), "{err}");
        assert!(err.contains(want), "{err:?} should say {want:?}");
    }
    // A caller without CAP_SYS_ADMIN is told why.
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        BIN,
    ])
    .arg("exec")
    .arg(m.path("c"))
    .args(["--", "true"])
    .stdin(Stdio::null());
    let out = output(&m, cmd);
    let err = text(&out.stderr);
    assert_eq!(code(out.status), 125, "{err}");
    assert!(
        err.contains("uts namespace") && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
    // Without a command, clap refuses with its usage (status 2).
    let out = output(&m, {
        let mut cmd = Command::new(BIN);
        cmd.arg("exec").arg(m.path(""));
        cmd
    });
    assert_eq!(code(out.status), 2);
    // The mount is unaffected: the root container still answers.
    assert_eq!(m.read("status").lines().count(), 8);
}

//! Attacks on the checks that act with a caller's credentials: each test
//! does what a hostile caller would, and asserts the kernel's answer for
//! that caller, not the daemon's.

mod common;

use std::process::Command;

use common::*;

/// The namespace inode a kind file names.
fn ns_ino_of_file(m: &Mount, rel: &str) -> u64 {
    let text = m.read(rel);
    text.trim()
        .rsplit_once('[')
        .and_then(|(_, n)| n.trim_end_matches(']').parse().ok())
        .unwrap_or_else(|| panic!("{rel}: {text}"))
}

/// `/proc/net` and `/proc/mounts` are links to `self/...` in every procfs:
/// followed by the kernel for the task that walks the path, they lead to
/// that task's own `/proc` entry, not the writer's. From there `..` gives
/// its `ns/*` (the daemon's namespaces) and `fd/*` (every descriptor the
/// daemon holds).
#[test]
fn links_to_self_inside_procfs_mean_the_writer() {
    let Some(m) = Mount::new("review-proc-net") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    let root_net = ns_ino(std::process::id() as i32, "net");
    let c_net = ns_ino_of_file(&m, "c/net");
    assert_ne!(c_net, root_net);
    // A writer confined to c names its own net namespace through a procfs
    // link that the kernel resolves to `self`.
    let script = format!(
        "echo $$ > {c}/tasks && echo /proc/net/../ns/net > sub/net",
        c = m.path("c").display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && sh -c '{script}'", m.path("c").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        ns_ino_of_file(&m, "c/sub/net"),
        c_net,
        "the writer's net, not the daemon's"
    );
}

/// The attacker of `a_thread_acting_as_the_caller_is_no_door_into_the_daemon`:
/// it makes the daemon judge a move of a process with many threads (one
/// check per thread, on a daemon thread holding the attacker's credentials)
/// and meanwhile tries to list, through each new daemon thread, the
/// descriptors the daemon holds. The kernel refuses it the daemon's own.
const THREAD_ATTACKER: &str = r#"
import os, sys, threading, subprocess, signal
signal.alarm(60)
daemon, tasks = sys.argv[1], sys.argv[2]
target = subprocess.Popen([sys.executable, "-c",
    "import threading, time\n"
    "for _ in range(400): threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n"
    "print('ready', flush=True)\n"
    "time.sleep(1000)\n"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
signal.signal(signal.SIGALRM, lambda *a: (target.kill(), print("alarm"), os._exit(3)))
assert target.stdout.readline() == b"ready\n"
def links(d):
    return [os.readlink(d + "/" + n) for n in os.listdir(d)]
try:
    links("/proc/%s/fd" % daemon)
    print("the daemon's own descriptors are open to this caller")
    target.kill()
    sys.exit(2)
except PermissionError:
    pass
seen = set(os.listdir("/proc/%s/task" % daemon))
for round in range(20):
    def write():
        fd = os.open(tasks, os.O_WRONLY)
        try:
            os.write(fd, b"%d" % target.pid)
        except OSError:
            pass
        os.close(fd)
    w = threading.Thread(target=write)
    w.start()
    while w.is_alive():
        try:
            now = os.listdir("/proc/%s/task" % daemon)
        except OSError:
            continue
        for t in now:
            if t in seen:
                continue
            if not os.path.exists("/proc/%s/task/%s" % (daemon, t)):
                seen.add(t)
                continue
            try:
                fds = links("/proc/%s/task/%s/fd" % (daemon, t))
            except OSError:
                continue
            if not fds:
                continue
            print("LEAK through thread", t, "of the daemon:", fds)
            target.kill()
            sys.exit(1)
    w.join()
target.kill()
print("held")
"#;

/// A daemon thread that takes a caller's credentials is, for as long as it
/// lives, a thread of the daemon that the caller's peers may trace and
/// whose descriptors (the daemon's: `/dev/fuse`, every namespace it pins)
/// they may open, when the caller's credentials do not differ from the
/// daemon's in a way that makes the kernel mark it undumpable (root without
/// `CAP_SYS_PTRACE`, say).
#[test]
fn a_thread_acting_as_the_caller_is_no_door_into_the_daemon() {
    let Some(m) = Mount::new("review-as-thread") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let script = m.scratch("attack.py");
    std::fs::write(&script, THREAD_ATTACKER).unwrap();
    let out = Command::new("capsh")
        .args(["--drop=cap_sys_ptrace", "--", "-c"])
        .arg(format!(
            "exec python3 {} {} {}",
            script.display(),
            m.daemon_pid(),
            m.path("c/tasks").display()
        ))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("held"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A check made as a caller of another uid changes the credentials of a
/// daemon thread, and the kernel then marks the whole daemon undumpable;
/// holders forked after that inherit it, and a root process without
/// `CAP_SYS_PTRACE` could no longer join them: moves would depend on who
/// was served before.
#[test]
fn moves_do_not_depend_on_which_callers_came_before() {
    let Some(m) = Mount::new("review-holder-dumpable") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    // uid 1000 with CAP_SYS_ADMIN moves another process of its own: the
    // daemon checks that on a thread holding uid 1000.
    let mine = Proc::sh(
        "exec setpriv --reuid 1000 --regid 1000 --clear-groups sleep 1000",
    );
    wait_for("the uid 1000 process", || {
        std::fs::read_to_string(format!("/proc/{}/comm", mine.pid())).is_ok_and(|c| c == "sleep\n")
    });
    let out = sh(&format!(
        "setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +sys_admin \
         --ambient-caps +sys_admin sh -c 'echo {} > {}'",
        mine.pid(),
        m.path("c/tasks").display()
    ));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Then root moves a root process lacking CAP_SYS_PTRACE into a
    // container with a fresh namespace.
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::File::create(m.path("d/uts")).unwrap();
    let target = Proc::sh("exec capsh --drop=cap_sys_ptrace -- -c 'exec sleep 1000'");
    wait_for("the target", || {
        std::fs::read_to_string(format!("/proc/{}/comm", target.pid())).is_ok_and(|c| c == "sleep\n")
    });
    m.step.set("move the root process without CAP_SYS_PTRACE");
    let got = m.write("d/tasks", target.pid().to_string().as_bytes());
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(ns_ino(target.pid(), "uts"), ns_ino_of_file(&m, "d/uts"));
}

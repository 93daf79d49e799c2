//! Attacks on the checks that act with a caller's credentials: each test
//! does what a hostile caller would, and asserts the kernel's answer for
//! that caller, not the daemon's.

mod common;

use std::process::Command;

use common::*;

/// These tests race for pids and watch other processes: run one at a time,
/// so one test's processes are never another's suspects.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/proc/net` and `/proc/mounts` are links to `self/...` in every procfs:
/// followed by the kernel for the task that walks the path, they lead to
/// that task's own `/proc` entry, not the writer's. From there `..` gives
/// its `ns/*` (the daemon's namespaces) and `fd/*` (every descriptor the
/// daemon holds).
#[test]
fn links_to_self_inside_procfs_mean_the_writer() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-proc-net") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    let root_net = ns_ino(std::process::id() as i32, "net");
    let c_net = m.bound_ino("c/net");
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
        m.bound_ino("c/sub/net"),
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
    let _serial = serial();
    let Some(m) = Mount::new("attack-as-thread") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    run_attack(
        &m,
        "attack.py",
        THREAD_ATTACKER,
        &format!("{} {}", m.daemon_pid(), m.path("c/tasks").display()),
    );
}

/// A check made as a caller of another uid changes the credentials of a
/// daemon thread, and the kernel then marks the whole daemon undumpable;
/// holders forked after that inherit it, and a root process without
/// `CAP_SYS_PTRACE` could no longer join them: moves would depend on who
/// was served before.
#[test]
fn moves_do_not_depend_on_which_callers_came_before() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-holder-dumpable") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    // uid 1000 with CAP_SYS_ADMIN moves another process of its own: the
    // daemon checks that on a thread holding uid 1000.
    let mine = Proc::sh("exec setpriv --reuid 1000 --regid 1000 --clear-groups sleep 1000");
    wait_for("the uid 1000 process", || {
        std::fs::read_to_string(format!("/proc/{}/comm", mine.pid())).is_ok_and(|c| c == "sleep\n")
    });
    let out = sh(&format!(
        "setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +sys_admin \
         --ambient-caps +sys_admin sh -c 'echo {} > {}'",
        mine.pid(),
        m.path("c/tasks").display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then root moves a root process lacking CAP_SYS_PTRACE into a
    // container with a fresh namespace.
    std::fs::create_dir(m.path("d")).unwrap();
    std::fs::File::create(m.path("d/uts")).unwrap();
    let target = Proc::sh("exec capsh --drop=cap_sys_ptrace -- -c 'exec sleep 1000'");
    wait_for("the target", || {
        std::fs::read_to_string(format!("/proc/{}/comm", target.pid()))
            .is_ok_and(|c| c == "sleep\n")
    });
    m.step.set("move the root process without CAP_SYS_PTRACE");
    let got = m.write("d/tasks", target.pid().to_string().as_bytes());
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(ns_ino(target.pid(), "uts"), m.bound_ino("d/uts"));
}

/// The attacker of `the_walking_child_holds_none_of_the_daemon_s_descriptors`:
/// it names descriptor N of the next process to be made, which is the
/// child that walks its path, and which (a copy of the daemon) would hold
/// every descriptor of the daemon; a process may always open its own.
const NEXT_PID_ATTACKER: &str = r#"
import os, sys
kind_file, template, secret = sys.argv[1], sys.argv[2], sys.argv[3]
if len(sys.argv) > 4:
    # Confined: into a container first.
    f = os.open(sys.argv[4], os.O_WRONLY)
    os.write(f, b"%d" % os.getpid())
    os.close(f)
for attempt in range(600):
    last = int(open("/proc/sys/kernel/ns_last_pid").read())
    pid = last + 1 + attempt % 3
    if os.path.exists("/proc/%d" % pid):
        continue
    path = template.replace("PID", str(pid))
    f = os.open(kind_file, os.O_WRONLY)
    try:
        os.write(f, path.encode())
    except OSError:
        pass
    os.close(f)
    try:
        bound = open(kind_file).read()
    except OSError:
        bound = ""
    if secret in bound:
        try:
            os.close(os.open(path, os.O_RDONLY))
            # Another process the writer may read: the kernel's answer.
            print("the kernel's answer too:", path)
            sys.exit(0)
        except OSError:
            pass
        try:
            who = open(path.rsplit("/", 2)[0] + "/status").read().split("\n")[:9]
        except OSError as e:
            who = e
        print("LEAK after", attempt + 1, "attempts:", path, who)
        sys.exit(1)
print("held")
"#;

#[test]
fn the_walking_child_holds_none_of_the_daemon_s_descriptors() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-next-pid") else {
        return;
    };
    std::fs::create_dir(m.path("secret")).unwrap();
    std::fs::File::create(m.path("secret/net")).unwrap();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    let secret = m.read("secret/net").trim().to_string();
    let daemon = m.daemon_pid();
    let fd = std::fs::read_dir(format!("/proc/{daemon}/fd"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == secret))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .expect("the daemon holds the secret namespace");
    run_attack(
        &m,
        "next-pid.py",
        NEXT_PID_ATTACKER,
        &format!("{} /proc/PID/fd/{fd} '{secret}'", m.path("c/net").display()),
    );
}

/// The same guess, by a writer confined to a container, for the walking
/// child's `ns/net`: the daemon's (the root's) net namespace.
#[test]
fn a_confined_writer_cannot_name_the_walking_child() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-next-pid-ns") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    std::fs::File::create(m.path("c/sub/net")).unwrap();
    let root_net = ns_text(std::process::id() as i32, "net");
    assert_ne!(m.read("c/net").trim(), root_net);
    run_attack(
        &m,
        "next-pid.py",
        NEXT_PID_ATTACKER,
        &format!(
            "{} /proc/PID/ns/net '{root_net}' {}",
            m.path("c/sub/net").display(),
            m.path("c/tasks").display()
        ),
    );
}

/// To translate `/proc/self`, the daemon itself reads `PID/status` and
/// `PID/stat` in the writer's procfs, through the writer's mounts. A writer
/// with a mount namespace of its own covers its own `status` with a FIFO:
/// the daemon's open of it would wait for a writer that never comes, and
/// each such write takes one of the mount's few worker threads for good.
#[test]
fn the_writer_s_own_mounts_over_procfs_cannot_hold_the_daemon() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-proc-fifo") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    let fifo = m.scratch("status-fifo");
    sh_ok(&format!("mkfifo {}", fifo.display()));
    // The writer: a mount namespace of its own, a FIFO over its status,
    // then (once c binds that mount namespace, so it may see c) the write.
    let mut writer = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount --bind {} /proc/$$/status && echo $$ && read go && \
             echo /proc/self/ns/net > {}; echo done",
            fifo.display(),
            m.path("c/sub/net").display()
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(writer.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line.trim().to_string()
    };
    m.write("c/mnt", pid.as_bytes()).unwrap();
    {
        use std::io::Write;
        writeln!(writer.stdin.as_mut().unwrap(), "go").unwrap();
    }
    m.step
        .set("the writer of /proc/self with a FIFO over its status");
    let mut finished = None;
    for _ in 0..1000 {
        if let Ok(Some(status)) = writer.try_wait() {
            finished = Some(status);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if finished.is_none() {
        // Release the daemon's open of the FIFO, so that nothing stays.
        let _ = std::fs::OpenOptions::new().write(true).open(&fifo);
        let _ = writer.kill();
        let _ = writer.wait();
    }
    assert!(finished.is_some(), "the write never returned");
    // And the mount still answers.
    assert!(m.read("c/status").contains("net"));
}

/// Binding by pid asks the kernel on a thread of the daemon, and the kernel
/// lets every thread read its own thread group's namespaces: a caller that
/// names the daemon (or one of its threads) would be granted what opening
/// `/proc/PID/ns/*` of the daemon would not grant it.
#[test]
fn binding_the_daemon_s_own_namespaces_by_pid_is_judged_too() {
    let _serial = serial();
    let Some(m) = Mount::new("attack-bind-daemon") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let daemon = m.daemon_pid();
    let thread = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != daemon)
        .expect("a thread of the daemon");
    let caller = "setpriv --reuid 1000 --regid 1000 --clear-groups --inh-caps +sys_admin \
                  --ambient-caps +sys_admin";
    for pid in [daemon, thread] {
        m.step
            .set(&format!("uid 1000 with CAP_SYS_ADMIN binds process {pid}"));
        let kernel = sh(&format!(
            "{caller} python3 -c 'import os; os.close(os.open(\"/proc/{pid}/ns/net\", os.O_RDONLY))'"
        ))
        .status
        .success();
        let out = sh(&format!(
            "{caller} sh -c 'echo {pid} > {}'",
            m.path("c/net").display()
        ));
        assert_eq!(
            out.status.success(),
            kernel,
            "process {pid}: kernel says {kernel}"
        );
        if out.status.success() {
            std::fs::remove_file(m.path("c/net")).unwrap();
        }
    }
}

/// Runs the python script `text` (saved as `name`) as root without
/// `CAP_SYS_PTRACE`, with `args`; it must say the daemon "held".
fn run_attack(m: &Mount, name: &str, text: &str, args: &str) {
    let script = m.scratch(name);
    std::fs::write(&script, text).unwrap();
    let out = Command::new("capsh")
        .args(["--drop=cap_sys_ptrace", "--", "-c"])
        .arg(format!("exec python3 {} {args}", script.display()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("held"),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

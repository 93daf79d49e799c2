//! Writing pids to `tasks` moves running processes, end to end through a
//! real mount: shells moving themselves, other processes, threads, pid
//! namespaces, and every refusal of SPEC's table.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use common::*;

/// A shell reading commands from a pipe, for "screen one" style tests.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Shell {
    fn start(program: &str) -> Shell {
        let mut child = Command::new(program)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start shell");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Shell {
            child,
            stdin,
            stdout,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Runs one command line and returns its output, up to a marker line.
    fn run(&mut self, cmd: &str) -> String {
        writeln!(self.stdin, "{cmd}; echo __done__").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        loop {
            let mut line = String::new();
            assert!(
                self.stdout.read_line(&mut line).unwrap() > 0,
                "shell ended during {cmd:?}"
            );
            if line == "__done__\n" {
                return out;
            }
            out.push_str(&line);
        }
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the selfcheck target with `args` and waits for its `READY`.
fn start_target(m: &Mount, args: &[&str]) -> (Child, i32, BufReader<ChildStdout>) {
    // Without restartable sequences: the kernel writes a thread's current
    // cpu into its rseq area whenever it runs, which would hide whether a
    // move left the target's memory exactly as it was.
    let mut target = Command::new(example("selfcheck_target"))
        .args(args)
        .env("GLIBC_TUNABLES", "glibc.pthread.rseq=0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = target.id() as i32;
    m.watch_pid(pid);
    let mut out = BufReader::new(target.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "READY\n", "selfcheck_target {args:?}");
    (target, pid, out)
}

fn uts_of(pid: i32) -> u64 {
    ns_ino(pid, "uts")
}

#[test]
fn rfc_two_screens_with_bash_and_dash() {
    let Some(m) = Mount::new("two-screens") else {
        return;
    };
    std::fs::create_dir(m.path("node1")).unwrap();
    std::fs::File::create(m.path("node1/uts")).unwrap();
    let host = sh_ok("hostname");
    // Screen one: a shell moved into node1, which then names its host.
    let mut one = Shell::start("bash");
    m.watch_pid(one.pid());
    m.write("node1/tasks", format!("{}\n", one.pid()).as_bytes())
        .unwrap();
    one.run("hostname serge");
    assert_eq!(one.run("hostname"), "serge\n");
    assert_eq!(sh_ok("hostname"), host, "the host's name is untouched");
    // Screen two: each shell moves itself with the builtin echo.
    let tasks = m.path("node1/tasks");
    for shell in ["bash", "dash"] {
        m.step.set(&format!("{shell} moves itself"));
        let out = Command::new(shell)
            .arg("-c")
            .arg(format!("hostname; echo $$ > {}; hostname", tasks.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{host}serge\n"),
            "{shell}"
        );
    }
}

#[test]
fn python_moves_itself() {
    let Some(m) = Mount::new("python") else {
        return;
    };
    std::fs::create_dir(m.path("py")).unwrap();
    std::fs::File::create(m.path("py/uts")).unwrap();
    sh_ok(&format!(
        "nsenter --uts={} hostname snake",
        m.pin("py", "uts")
    ));
    let script = format!(
        "import os, socket\nopen('{}', 'w').write(str(os.getpid()))\nprint(socket.gethostname())",
        m.path("py/tasks").display()
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "snake\n");
}

#[test]
fn a_process_moves_between_containers_and_back() {
    let Some(m) = Mount::new("between") else {
        return;
    };
    let me = std::process::id() as i32;
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("a")).unwrap();
    std::fs::create_dir(m.path("b")).unwrap();
    for f in ["a/uts", "a/net", "b/ipc"] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    let p = Proc::sh("exec sleep 1000");
    let pid = p.pid();
    m.watch_pid(pid);
    let ino = |rel: &str| m.bound_ino(rel);
    assert!(!m.read("a/tasks").lines().any(|l| l == pid.to_string()));

    m.write("a/tasks", pid.to_string().as_bytes()).unwrap();
    assert_eq!(uts_of(pid), ino("a/uts"));
    assert_eq!(ns_ino(pid, "net"), ino("a/net"));
    assert_eq!(
        ns_ino(pid, "ipc"),
        ns_ino(daemon, "ipc"),
        "kinds a does not bind: the root's"
    );
    assert!(
        m.read("a/tasks").lines().any(|l| l == pid.to_string()),
        "listed in a"
    );
    assert!(
        !m.read("tasks").lines().any(|l| l == pid.to_string()),
        "not in the root any more"
    );

    m.write("b/tasks", format!("{pid}\n").as_bytes()).unwrap();
    assert_eq!(ns_ino(pid, "ipc"), ino("b/ipc"));
    assert_eq!(
        uts_of(pid),
        ns_ino(daemon, "uts"),
        "b inherits the root's uts"
    );
    assert_eq!(ns_ino(pid, "net"), ns_ino(daemon, "net"));
    assert!(
        !m.read("a/tasks").lines().any(|l| l == pid.to_string()),
        "left a"
    );
    assert!(m.read("b/tasks").lines().any(|l| l == pid.to_string()));

    m.write("tasks", pid.to_string().as_bytes()).unwrap();
    for kind in ["cgroup", "ipc", "mnt", "net", "uts", "user"] {
        assert_eq!(
            ns_ino(pid, kind),
            ns_ino(daemon, kind),
            "{kind} back to the root's"
        );
    }
    assert!(m.read("tasks").lines().any(|l| l == pid.to_string()));
    // Moving where it already is changes nothing and succeeds.
    m.write("tasks", pid.to_string().as_bytes()).unwrap();
    // The test process itself was never touched.
    assert_eq!(uts_of(me), ns_ino(daemon, "uts"));
}

#[test]
fn a_blocked_reader_keeps_its_input_across_a_move() {
    let Some(m) = Mount::new("reader") else {
        return;
    };
    std::fs::create_dir(m.path("r")).unwrap();
    std::fs::File::create(m.path("r/uts")).unwrap();
    std::fs::File::create(m.path("r/ipc")).unwrap();
    let (mut target, pid, mut out) = start_target(&m, &["read-pipe", "hello across the move"]);
    // Let it block in read() before moving it.
    wait_for("the target to block", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") S "))
    });
    m.write("r/tasks", pid.to_string().as_bytes()).unwrap();
    assert_eq!(uts_of(pid), m.bound_ino("r/uts"));
    assert_eq!(ns_ino(pid, "ipc"), m.bound_ino("r/ipc"));
    let mut stdin = target.stdin.take().unwrap();
    stdin.write_all(b"hello across the move").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = wait_bounded(&mut target, std::time::Duration::from_secs(30));
    assert!(rest.contains("SELFCHECK OK"), "{rest}");
    assert!(status.success());
}

#[test]
fn every_thread_moves() {
    let Some(m) = Mount::new("threads") else {
        return;
    };
    std::fs::create_dir(m.path("t")).unwrap();
    std::fs::File::create(m.path("t/uts")).unwrap();
    std::fs::File::create(m.path("t/net")).unwrap();
    let (mut target, pid, mut out) = start_target(&m, &["threads", "16"]);
    m.write("t/tasks", pid.to_string().as_bytes()).unwrap();
    let uts = std::fs::metadata(m.path("t/uts")).unwrap();
    let net = std::fs::metadata(m.path("t/net")).unwrap();
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(tids.len() >= 17, "{tids:?}");
    use std::os::unix::fs::MetadataExt;
    for tid in &tids {
        for (entry, want) in [("uts", uts.ino()), ("net", net.ino())] {
            let got = std::fs::metadata(format!("/proc/{pid}/task/{tid}/ns/{entry}"))
                .unwrap()
                .ino();
            assert_eq!(got, want, "thread {tid} {entry}");
        }
    }
    let mut stdin = target.stdin.take().unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    wait_bounded(&mut target, std::time::Duration::from_secs(30));
}

#[test]
fn multithreaded_into_user_namespace_fails_and_changes_nothing() {
    let Some(m) = Mount::new("threads-user") else {
        return;
    };
    std::fs::create_dir(m.path("u")).unwrap();
    std::fs::File::create(m.path("u/user")).unwrap();
    std::fs::File::create(m.path("u/uts")).unwrap();
    let (mut target, pid, _out) = start_target(&m, &["threads", "4"]);
    let before: Vec<u64> = ["uts", "user", "net"]
        .iter()
        .map(|k| ns_ino(pid, k))
        .collect();
    assert_eq!(
        errno(m.write("u/tasks", pid.to_string().as_bytes())),
        libc::EINVAL
    );
    let after: Vec<u64> = ["uts", "user", "net"]
        .iter()
        .map(|k| ns_ino(pid, k))
        .collect();
    assert_eq!(before, after);
    let _ = target.kill();
    let _ = target.wait();
}

#[test]
fn pid_namespace_applies_to_children() {
    let Some(m) = Mount::new("pidns") else { return };
    std::fs::create_dir(m.path("p")).unwrap();
    std::fs::File::create(m.path("p/pid")).unwrap();
    let pidns = m.bound_ino("p/pid");
    let mut sh = Shell::start("sh");
    m.watch_pid(sh.pid());
    let active_before = ns_ino(sh.pid(), "pid");
    m.write("p/tasks", sh.pid().to_string().as_bytes()).unwrap();
    assert_eq!(ns_ino(sh.pid(), "pid_for_children"), pidns);
    assert_eq!(
        ns_ino(sh.pid(), "pid"),
        active_before,
        "its own pid namespace stays"
    );
    for round in 0..3 {
        // Each child is born into the container's pid namespace, also after
        // the previous one exited.
        let child: i32 = sh.run("sleep 100 & echo $!").trim().parse().unwrap();
        m.watch_pid(child);
        assert_eq!(ns_ino(child, "pid"), pidns, "child {round}");
        let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
        let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
        assert_eq!(nspid.split_whitespace().count(), 3, "two levels: {nspid}");
        sh.run(&format!("kill {child}; wait {child}"));
    }
}

#[test]
fn refusals_follow_the_spec_table() {
    let Some(m) = Mount::new("task-errors") else {
        return;
    };
    std::fs::create_dir(m.path("e")).unwrap();
    std::fs::File::create(m.path("e/uts")).unwrap();
    // No such process.
    assert_eq!(errno(m.write("e/tasks", b"2147483647")), libc::ESRCH);
    // A zombie: the child exited and its parent (now sleep) never reaps it.
    let parent = Proc::sh("(exit 0) & exec sleep 1000");
    m.watch_pid(parent.pid());
    let zombie = {
        let mut found = None;
        wait_for("a zombie child", || {
            found = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", parent.pid()))
                .ok()
                .and_then(|c| {
                    c.split_whitespace()
                        .next()
                        .and_then(|p| p.parse::<i32>().ok())
                })
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
                });
            found.is_some()
        });
        found.unwrap()
    };
    assert_eq!(
        errno(m.write("e/tasks", zombie.to_string().as_bytes())),
        libc::ESRCH
    );
    // Kernel threads and the daemon itself.
    assert_eq!(errno(m.write("e/tasks", b"2")), libc::EPERM);
    assert_eq!(
        errno(m.write("e/tasks", m.daemon_pid().to_string().as_bytes())),
        libc::EPERM
    );
    // Already traced: EBUSY, and the other tracer stays attached.
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    let mut strace = Command::new("strace")
        .args(["-q", "-o", "/dev/null", "-p", &target.pid().to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    m.watch_pid(strace.id() as i32);
    let tracer = |pid: i32| -> i32 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    wait_for("strace to attach", || {
        tracer(target.pid()) == strace.id() as i32
    });
    let before = uts_of(target.pid());
    assert_eq!(
        errno(m.write("e/tasks", target.pid().to_string().as_bytes())),
        libc::EBUSY
    );
    assert_eq!(
        tracer(target.pid()),
        strace.id() as i32,
        "strace still attached"
    );
    assert_eq!(uts_of(target.pid()), before);
    let _ = strace.kill();
    let _ = strace.wait();
    // An unprivileged target cannot join namespaces owned by the host's
    // user namespace: the kernel's EPERM, and it is left as it was.
    let nobody = Proc::sh("exec setpriv --reuid 65534 --regid 65534 --clear-groups sleep 1000");
    m.watch_pid(nobody.pid());
    wait_for("setpriv to exec sleep", || {
        std::fs::read_to_string(format!("/proc/{}/comm", nobody.pid()))
            .is_ok_and(|c| c == "sleep\n")
    });
    let before = uts_of(nobody.pid());
    assert_eq!(
        errno(m.write("e/tasks", nobody.pid().to_string().as_bytes())),
        libc::EPERM
    );
    assert_eq!(uts_of(nobody.pid()), before);
    // Still running normally: back asleep once let go (it may take a moment
    // to get there), not stopped or traced.
    wait_for("the refused target to sleep again", || {
        std::fs::read_to_string(format!("/proc/{}/stat", nobody.pid()))
            .is_ok_and(|s| s.contains(") S "))
    });
}

#[test]
fn tasks_read_from_inside_a_pid_namespace_uses_its_numbers() {
    let Some(m) = Mount::new("tasks-pidns") else {
        return;
    };
    // The reader lives in its own mount and pid namespaces, which q binds,
    // so it sees q's subtree; the sleeper is moved into q/r (a fresh uts).
    std::fs::create_dir(m.path("q")).unwrap();
    std::fs::create_dir(m.path("q/r")).unwrap();
    std::fs::File::create(m.path("q/r/uts")).unwrap();
    let script = format!(
        "sleep 1000 & p=$!; echo $p; read go; cat {r}/tasks; echo end; kill $p",
        r = m.path("q/r").display()
    );
    let mut reader = Unshared::start(&["--fork", "--pid", "--mount-proc"], &script);
    m.watch_pid(reader.inner());
    let inner: i32 = reader.line().parse().unwrap();
    for kind in ["mnt", "pid"] {
        m.write(&format!("q/{kind}"), reader.inner().to_string().as_bytes())
            .unwrap();
    }
    let sleeper =
        std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", reader.inner())).unwrap();
    m.write("q/r/tasks", sleeper.trim().as_bytes()).unwrap();
    reader.send("go");
    let mut listed = Vec::new();
    loop {
        let line = reader.line();
        if line == "end" {
            break;
        }
        listed.push(line.parse::<i32>().unwrap());
    }
    assert!(reader.finish());
    assert!(inner < 10, "a pid of the inner namespace: {inner}");
    assert_eq!(listed, vec![inner], "the reader sees its own numbers");
}

#[test]
fn a_seccomp_filter_that_would_kill_is_refused_before_anything_is_injected() {
    let Some(m) = Mount::new("seccomp-kill") else {
        return;
    };
    std::fs::create_dir(m.path("s")).unwrap();
    std::fs::File::create(m.path("s/uts")).unwrap();
    let (mut target, pid, mut out) = start_target(&m, &["seccomp-kill-setns"]);
    let before = uts_of(pid);
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EPERM
    );
    assert_eq!(uts_of(pid), before);
    assert!(
        m.log_text().contains("seccomp filter would kill"),
        "{}",
        m.log_text()
    );
    let mut stdin = target.stdin.take().unwrap();
    stdin.write_all(b"ok").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("SELFCHECK OK"), "alive and well: {rest}");
    assert!(wait_bounded(&mut target, std::time::Duration::from_secs(30)).success());
}

#[test]
fn allow_fatal_seccomp_moves_anyway_and_the_filter_kills() {
    let Some(m) = Mount::with_args("seccomp-allow", &["--allow-fatal-seccomp"]) else {
        return;
    };
    std::fs::create_dir(m.path("s")).unwrap();
    std::fs::File::create(m.path("s/uts")).unwrap();
    let (mut target, pid, _out) = start_target(&m, &["seccomp-kill-setns"]);
    // The daemon was told to go ahead: the injected setns() trips the
    // filter, which kills the process; the write reports it gone.
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::ESRCH
    );
    let status = wait_bounded(&mut target, std::time::Duration::from_secs(30));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGSYS),
        "killed by its filter: {status}"
    );
}

#[test]
fn a_seccomp_filter_that_denies_setns_leaves_the_process_as_it_was() {
    let Some(m) = Mount::new("seccomp") else {
        return;
    };
    std::fs::create_dir(m.path("s")).unwrap();
    std::fs::File::create(m.path("s/uts")).unwrap();
    std::fs::File::create(m.path("s/net")).unwrap();
    let (mut target, pid, mut out) = start_target(&m, &["seccomp-deny-setns"]);
    let before: Vec<u64> = ["uts", "net"].iter().map(|k| ns_ino(pid, k)).collect();
    let fds_before = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EPERM
    );
    let after: Vec<u64> = ["uts", "net"].iter().map(|k| ns_ino(pid, k)).collect();
    assert_eq!(before, after, "nothing moved");
    let fds_after = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    assert_eq!(fds_before, fds_after, "the injected pidfd was closed");
    // It keeps running normally: its blocked read gets its input.
    let mut stdin = target.stdin.take().unwrap();
    stdin.write_all(b"ok").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("SELFCHECK OK"), "{rest}");
    assert!(wait_bounded(&mut target, std::time::Duration::from_secs(30)).success());
    assert!(
        m.log_text().contains("Operation not permitted"),
        "the refusal is logged"
    );
}

#[test]
fn threads_created_during_the_move_move_too() {
    let Some(m) = Mount::new("churn") else { return };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let uts = m.bound_ino("c/uts");
    let (mut target, pid, mut out) = start_target(&m, &["churn", "4"]);
    for round in 0..5 {
        let (to, want) = if round % 2 == 0 {
            ("c/tasks", uts)
        } else {
            ("tasks", ns_ino(m.daemon_pid(), "uts"))
        };
        m.write(to, pid.to_string().as_bytes()).unwrap();
        // Every thread there is now, and every one created from now on, is
        // in the new namespace: none was missed while threads came and went.
        for _ in 0..20 {
            for entry in std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .flatten()
            {
                let path = entry.path().join("ns/uts");
                if let Ok(md) = std::fs::metadata(&path) {
                    use std::os::unix::fs::MetadataExt;
                    assert_eq!(md.ino(), want, "round {round}: {}", path.display());
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    drop(target.stdin.take());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(rest.contains("SELFCHECK OK"), "{rest}");
    assert!(wait_bounded(&mut target, std::time::Duration::from_secs(30)).success());
}

#[test]
fn nothing_of_the_daemon_stays_in_a_moved_process() {
    let Some(m) = Mount::new("no-trace") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    let (mut target, pid, _out) = start_target(&m, &["threads", "3"]);
    let look = || {
        let fds = common::descriptors(pid);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let memory = common::memory_digest(pid, &maps);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let masks: Vec<String> = status
            .lines()
            // SigQ counts the signals queued for the whole user: not ours.
            .filter(|l| (l.starts_with("Sig") && !l.starts_with("SigQ")) || l.starts_with("ShdPnd"))
            .map(str::to_owned)
            .collect();
        (fds, maps, masks, memory)
    };
    // Wait until every thread is asleep in a system call and the memory
    // stands still, so that any difference afterwards is the move's; on
    // one CPU, so that the kernel's note of a thread's CPU does not change.
    common::keep_on_one_cpu(pid);
    let mut before = look();
    wait_for("the target to settle", || {
        let asleep = common::all_threads_asleep(pid);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = look();
        let settled = asleep && again == before;
        before = again;
        settled
    });
    // A thread id names its whole process.
    let tid = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != pid)
        .unwrap();
    m.write("c/tasks", tid.to_string().as_bytes()).unwrap();
    assert_eq!(uts_of(pid), m.bound_ino("c/uts"));
    let after = look();
    assert_eq!(before.0, after.0, "descriptors");
    assert_eq!(before.1, after.1, "memory mappings");
    assert_eq!(before.2, after.2, "signal masks and dispositions");
    // Every thread was asleep in a system call across the move, so not
    // one byte of its memory may differ.
    assert_eq!(before.3, after.3, "memory contents");
    // A thread of the daemon names the daemon.
    let daemon = m.daemon_pid();
    let daemon_tid = std::fs::read_dir(format!("/proc/{daemon}/task"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != daemon)
        .unwrap();
    assert_eq!(
        errno(m.write("c/tasks", daemon_tid.to_string().as_bytes())),
        libc::EPERM
    );
    let _ = target.kill();
    let _ = target.wait();
}

#[test]
fn the_caller_needs_ptrace_rights_over_the_target() {
    let Some(m) = Mount::new("ptrace-rights") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let tasks = m.path("c/tasks");
    let nobody = Proc::sh("exec setpriv --reuid 65534 --regid 65534 --clear-groups sleep 1000");
    // Root, but with no capability the caller below lacks: the kernel lets
    // that caller trace it (its permitted set is a subset of the caller's).
    let rooted = Proc::sh("exec capsh --drop=cap_sys_ptrace -- -c 'exec sleep 1000'");
    m.watch_pid(nobody.pid());
    m.watch_pid(rooted.pid());
    for p in [&nobody, &rooted] {
        wait_for("setpriv and capsh to exec sleep", || {
            std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).is_ok_and(|c| c == "sleep\n")
        });
    }
    // Root with CAP_SYS_ADMIN but without CAP_SYS_PTRACE: only processes it
    // could trace by its ids and capabilities (tests/rights.rs has the whole
    // matrix, checked against the kernel).
    let without_ptrace = |pid: i32| {
        sh(&format!(
            "capsh --drop=cap_sys_ptrace -- -c 'echo {pid} > {}'",
            tasks.display()
        ))
    };
    let before = uts_of(nobody.pid());
    let out = without_ptrace(nobody.pid());
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"));
    assert_eq!(uts_of(nobody.pid()), before, "nothing moved");
    assert!(
        m.log_text().contains("the kernel refuses caller"),
        "the reason is logged"
    );
    let out = without_ptrace(rooted.pid());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        uts_of(rooted.pid()),
        m.bound_ino("c/uts"),
        "its own uid's process moves"
    );
}

/// The descriptors of process `pid`, as `N -> TARGET` lines.
fn descriptors(pid: i32) -> Vec<String> {
    let mut fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    fds.sort();
    fds
}

#[test]
fn one_injector_serves_one_move_after_another() {
    let Some(m) = Mount::new("injector-reuse") else {
        return;
    };
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    assert_eq!(injector_pids(daemon), [] as [i32; 0], "started lazily");

    m.write("c/tasks", target.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(uts_of(target.pid()), m.bound_ino("c/uts"));
    let first = injector_pids(daemon);
    assert_eq!(first.len(), 1, "one move, one injector: {first:?}");
    let injector = Seen::now(first[0]).expect("the injector runs");
    // It keeps nothing of the daemon but its channel and, where the
    // daemon reads threads through BPF, the program it reads them with:
    // no FUSE device that would keep the mount alive without the daemon.
    let fds = descriptors(injector.pid);
    let (prog, rest): (Vec<&String>, Vec<&String>) =
        fds.iter().partition(|d| d.ends_with("anon_inode:bpf-prog"));
    assert_eq!(rest.len(), 3, "injector descriptors: {fds:?}");
    assert!(prog.len() <= 1, "injector descriptors: {fds:?}");
    assert!(fds[0].starts_with("0 -> socket:"), "{fds:?}");
    assert!(!fds.iter().any(|d| d.contains("fuse")), "{fds:?}");

    m.write("tasks", target.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(uts_of(target.pid()), ns_ino(daemon, "uts"), "moved back");
    assert_eq!(
        injector_pids(daemon),
        first,
        "the same injector moved it back"
    );
    assert!(injector.running(), "the injector lives on between moves");
}

#[test]
fn helpers_are_neither_listed_nor_moved() {
    let Some(m) = Mount::new("helpers") else {
        return;
    };
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    m.write("c/tasks", target.pid().to_string().as_bytes())
        .unwrap();
    let injectors = injector_pids(daemon);
    assert_eq!(injectors.len(), 1, "{injectors:?}");
    let injector = injectors[0];
    // The holder of c's set: the one process in c's uts namespace that is
    // not the target.
    let c_uts = m.bound_ino("c/uts");
    let holder = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| p != target.pid())
        .find(|&p| {
            std::fs::metadata(format!("/proc/{p}/ns/uts"))
                .is_ok_and(|md| std::os::unix::fs::MetadataExt::ino(&md) == c_uts)
        })
        .expect("c's holder");
    let listed = |rel: &str, pid: i32| m.read(rel).lines().any(|l| l == pid.to_string());
    assert!(
        !listed("tasks", injector),
        "an injector is not the root's task"
    );
    assert!(!listed("c/tasks", holder), "a holder is not its set's task");
    assert!(listed("c/tasks", target.pid()));

    let injector_uts = uts_of(injector);
    assert_eq!(
        errno(m.write("c/tasks", injector.to_string().as_bytes())),
        libc::EPERM
    );
    assert_eq!(uts_of(injector), injector_uts, "the injector was not moved");
    assert_eq!(
        errno(m.write("tasks", holder.to_string().as_bytes())),
        libc::EPERM
    );
    assert_eq!(uts_of(holder), c_uts, "the holder was not moved");
    assert!(m.log_text().contains("one of the daemon's own helpers"));
    // The refusals cost nothing: the injector still serves moves.
    m.write("tasks", target.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(uts_of(target.pid()), ns_ino(daemon, "uts"));
    assert_eq!(injector_pids(daemon), injectors);
}

/// Threads that share a descriptor table share one injected pidfd; a thread
/// with a table of its own opens (and closes) its own.
#[test]
fn a_thread_with_its_own_descriptor_table_moves_and_keeps_no_pidfd() {
    let Some(m) = Mount::new("own-files") else {
        return;
    };
    std::fs::create_dir(m.path("t")).unwrap();
    std::fs::File::create(m.path("t/uts")).unwrap();
    let (mut target, pid, mut out) = start_target(&m, &["threads-own-files", "4"]);
    let tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.parse().ok())
        .collect();
    assert_eq!(tids.len(), 5, "{tids:?}");
    let tables = || -> Vec<Vec<String>> {
        tids.iter()
            .map(|tid| common::descriptors_in(&format!("/proc/{pid}/task/{tid}/fd")))
            .collect()
    };
    let before = tables();
    m.write("t/tasks", pid.to_string().as_bytes()).unwrap();
    let uts = m.bound_ino("t/uts");
    for tid in &tids {
        assert_eq!(ns_ino(*tid, "uts"), uts, "thread {tid} moved");
    }
    assert_eq!(tables(), before, "every descriptor table as it was");
    let mut stdin = target.stdin.take().unwrap();
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    assert!(wait_bounded(&mut target, std::time::Duration::from_secs(30)).success());
}

#[test]
fn a_dead_injector_is_replaced_not_reused() {
    let Some(m) = Mount::new("injector-dies") else {
        return;
    };
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    m.write("c/tasks", target.pid().to_string().as_bytes())
        .unwrap();
    let first = injector_pids(daemon);
    assert_eq!(first.len(), 1, "{first:?}");
    let dead = Seen::now(first[0]).expect("the injector runs");
    m.step.set("kill the idle injector");
    // SAFETY: kill takes integers; the injector is a child of this test's
    // daemon, idle between moves.
    unsafe { libc::kill(dead.pid, libc::SIGKILL) };
    wait_for("the injector to die", || !dead.running());

    m.write("tasks", target.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(uts_of(target.pid()), ns_ino(daemon, "uts"), "moved back");
    let now = injector_pids(daemon);
    assert_eq!(now.len(), 1, "{now:?}");
    assert!(
        Seen::now(now[0]).is_some_and(|s| s != dead),
        "a new injector took over"
    );
}

/// A process that moves itself while another of its threads is traced by
/// someone else: the write was answered before that thread was found, so
/// the move's refusal (`EBUSY`) must reach the writer as its write's
/// result, and nothing moves.
#[test]
fn a_self_move_refused_after_its_answer_fails_the_write() {
    let Some(m) = Mount::new("self-refused-late") else {
        return;
    };
    std::fs::create_dir(m.path("a")).unwrap();
    std::fs::File::create(m.path("a/uts")).unwrap();
    let script = format!(
        "import os, sys, threading, time\n\
         threading.Thread(target=time.sleep, args=(1000,), daemon=True).start()\n\
         print('READY', flush=True)\n\
         sys.stdin.readline()\n\
         try:\n    fd = os.open('{}', os.O_WRONLY)\n    os.write(fd, str(os.getpid()).encode())\n    print('OK', flush=True)\n\
         except OSError as e:\n    print('ERR', e.errno, flush=True)\n\
         sys.stdin.readline()\n",
        m.path("a/tasks").display()
    );
    let mut child = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let pid = child.id() as i32;
    m.watch_pid(pid);
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "READY");
    let other = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&t| t != pid)
        .expect("a second thread");
    m.step.set("tracing the second thread");
    // SAFETY: PTRACE_SEIZE takes integers; the thread runs on.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, other, 0usize, 0usize) };
    assert_eq!(r, 0, "seize: {}", std::io::Error::last_os_error());
    let uts = ns_ino(pid, "uts");
    m.step.set("the process moves itself");
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), format!("ERR {}", libc::EBUSY));
    assert_eq!(ns_ino(pid, "uts"), uts, "not moved");
    assert_eq!(ns_ino(other, "uts"), uts, "not moved");
    m.step.set("letting the second thread go");
    // SAFETY: ptrace requests on a thread this thread traces, and a wait
    // into a live local.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, other, 0usize, 0usize),
            0
        );
        let mut status = 0;
        assert_eq!(libc::waitpid(other, &mut status, libc::__WALL), other);
        assert_eq!(libc::ptrace(libc::PTRACE_DETACH, other, 0usize, 0usize), 0);
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

//! Moves that cannot stop their target, targets whose injected calls
//! another process would answer, and the mount staying responsive while
//! moves are pending. Real vfork parents, seccomp supervisors, strict
//! seccomp and stopped processes (`examples/stall_target.rs`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// A stall_target process, killed and reaped on drop (with its children).
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
}

impl Target {
    fn start(m: &Mount, mode: &str) -> Target {
        let mut child = Command::new(example("stall_target"))
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        m.watch_pid(child.id() as i32);
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut t = Target { child, stdin, out };
        assert_eq!(t.line(), "READY", "stall_target {mode}");
        t
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim_end().to_owned()
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    fn wait_success(&mut self) {
        let status = wait_bounded(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "{status}");
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let pid = self.pid();
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            for c in children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok())
            {
                // SAFETY: kill takes integers; a child of a process this test started.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn traced(pid: i32) -> bool {
    status_field(pid, "TracerPid").as_deref() != Some("0")
}

fn fds(pid: i32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}={}", e.file_name().to_string_lossy(), link.display())
        })
        .collect();
    v.sort();
    v
}

fn container(m: &Mount, name: &str) {
    std::fs::create_dir(m.path(name)).unwrap();
    std::fs::File::create(m.path(&format!("{name}/uts"))).unwrap();
}

#[test]
fn a_vfork_parent_is_given_up_on_and_left_as_it_was() {
    let Some(m) = Mount::new("stall-vfork") else {
        return;
    };
    container(&m, "s");
    let mut t = Target::start(&m, "vfork-parent");
    let pid = t.pid();
    wait_for("the vfork parent to sleep", || state(pid) == 'D');
    let before = ns_ino(pid, "uts");
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EAGAIN
    );
    assert_eq!(ns_ino(pid, "uts"), before, "not moved");
    wait_for("the injector to let go", || !traced(pid));
    assert_eq!(state(pid), 'D', "still waiting for its child");
    assert!(
        m.log_text().contains("did not stop within"),
        "{}",
        m.log_text()
    );
    // Its child exits: the parent runs on as if nothing had happened.
    t.close_stdin();
    assert_eq!(t.line(), "RESUMED");
    t.wait_success();
    // The mount, and the injectors, go on working.
    let mut again = Target::start(&m, "vfork-parent");
    let pid = again.pid();
    again.close_stdin();
    assert_eq!(again.line(), "RESUMED");
    let sleeper = Proc(Command::new("sleep").arg("1000").spawn().unwrap());
    m.write("s/tasks", sleeper.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(ns_text(sleeper.pid(), "uts"), m.read("s/uts").trim());
    again.wait_success();
    let _ = pid;
}

#[test]
fn strict_seccomp_is_refused_and_the_process_runs_on() {
    let Some(m) = Mount::new("stall-strict") else {
        return;
    };
    container(&m, "s");
    let mut t = Target::start(&m, "strict");
    let pid = t.pid();
    wait_for("strict mode", || {
        status_field(pid, "Seccomp").as_deref() == Some("1")
    });
    let before = ns_ino(pid, "uts");
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EPERM
    );
    assert_eq!(ns_ino(pid, "uts"), before);
    assert!(
        m.log_text().contains("strict seccomp mode"),
        "{}",
        m.log_text()
    );
    t.send("still here\n");
    assert_eq!(t.line(), "ALIVE still here");
    t.close_stdin();
    t.wait_success();
}

#[test]
fn a_supervisor_that_would_fake_results_gets_nothing_to_answer() {
    let Some(m) = Mount::new("stall-notif") else {
        return;
    };
    container(&m, "s");
    // Were the calls injected, pidfd_open would "return" 0, setns would
    // "succeed", and the injected close(0) would close the target's stdin.
    refused_before_injecting(
        &m,
        "notif-fake",
        "hands pidfd_open to a supervisor or tracer",
    );
}

/// Starts `target`, has its move refused with EPERM for `reason`, and
/// checks it was left exactly as it was: namespaces, descriptors, and (its
/// "PONG 0") no call handed to its supervisor or tracer.
fn refused_before_injecting(m: &Mount, target: &str, reason: &str) {
    let mut t = Target::start(m, target);
    let pid = t.pid();
    let before = ns_ino(pid, "uts");
    let fds_before = fds(pid);
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EPERM
    );
    assert!(m.log_text().contains(reason), "{}", m.log_text());
    assert_eq!(ns_ino(pid, "uts"), before);
    assert_eq!(fds(pid), fds_before, "no descriptor opened or closed");
    t.send("ping\n");
    assert_eq!(t.line(), "PONG 0", "the supervisor saw no notification");
    t.close_stdin();
    t.wait_success();
}

#[test]
fn a_filter_that_hands_setns_to_a_tracer_is_refused() {
    let Some(m) = Mount::new("stall-trace") else {
        return;
    };
    container(&m, "s");
    refused_before_injecting(&m, "trace-setns", "hands setns to a supervisor or tracer");
}

#[test]
fn a_shell_refused_when_moving_itself_sees_the_refusal() {
    let Some(m) = Mount::new("stall-self") else {
        return;
    };
    container(&m, "s");
    // `echo $$ > tasks` is answered before the move is done; a refusal
    // found afterwards (here: the filter) must still reach the shell.
    let script = format!(
        "if echo $$ > '{}' 2>/dev/null; then echo moved; else echo refused; fi; \
         readlink /proc/self/ns/uts",
        m.path("s/tasks").display()
    );
    let out = Command::new(example("stall_target"))
        .args(["trace-setns-sh", &script])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first(), Some(&"refused"), "{text}");
    assert_eq!(
        lines.get(1).copied(),
        Some(ns_text(std::process::id() as i32, "uts").as_str()),
        "not moved"
    );
    assert!(
        m.log_text()
            .contains("hands setns to a supervisor or tracer"),
        "{}",
        m.log_text()
    );
}

#[test]
fn a_thread_waiting_for_a_silent_supervisor_is_given_up_on() {
    let Some(m) = Mount::new("stall-notif-wait") else {
        return;
    };
    container(&m, "s");
    // READY comes from the supervisor once it holds the notification: the
    // main thread now sleeps in a killable wait no interrupt ends.
    let mut t = Target::start(&m, "notif-stuck");
    let pid = t.pid();
    let before = ns_ino(pid, "uts");
    assert_eq!(
        errno(m.write("s/tasks", pid.to_string().as_bytes())),
        libc::EAGAIN
    );
    assert_eq!(ns_ino(pid, "uts"), before);
    wait_for("the injector to let go", || !traced(pid));
    // The supervisor answers at last: the call returns its value, once.
    t.send("answer\n");
    assert_eq!(t.line(), "RESULT 42");
    t.wait_success();
}

#[test]
fn a_process_moving_itself_learns_that_one_of_its_threads_would_not_stop() {
    let Some(m) = Mount::new("stall-self-stuck") else {
        return;
    };
    container(&m, "s");
    let tasks = m.path("s/tasks");
    let mut child = Command::new(example("stall_target"))
        .arg("notif-stuck-self")
        .arg(&tasks)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    m.watch_pid(child.id() as i32);
    let pid = child.id() as i32;
    let stdin = child.stdin.take();
    let out = BufReader::new(child.stdout.take().unwrap());
    let mut t = Target { child, stdin, out };
    let before = ns_ino(pid, "uts");
    // The write is answered as soon as the threads are asked to stop; the
    // main thread never stops, and the write must still fail.
    assert_eq!(t.line(), format!("WRITE {}", libc::EAGAIN));
    assert_eq!(t.line(), "READY");
    assert_eq!(ns_ino(pid, "uts"), before);
    wait_for("the injector to let go", || !traced(pid));
    t.send("answer\n");
    assert_eq!(t.line(), "RESULT 42");
    t.wait_success();
}

#[test]
fn a_stopped_process_is_stopped_whenever_a_write_returns() {
    let Some(m) = Mount::new("stall-stopped") else {
        return;
    };
    container(&m, "s");
    let target = Proc(Command::new("sleep").arg("1000").spawn().unwrap());
    let pid = target.pid();
    m.watch_pid(pid);
    // SAFETY: kill takes integers; our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_for("the stop", || state(pid) == 'T');
    let root_uts = ns_ino(pid, "uts");
    // A fixed sequence of destinations, 50 moves.
    let mut rng = Rng::fixed(0x5eed);
    let mut seen_during = std::collections::BTreeMap::new();
    for i in 0..50 {
        let into_s = rng.below(2) == 1;
        let tasks = if into_s { "s/tasks" } else { "tasks" };
        let stop = Arc::new(AtomicUsize::new(0));
        let sampler = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut states = Vec::new();
                while stop.load(Ordering::SeqCst) == 0 {
                    states.push(state(pid));
                }
                states
            })
        };
        m.write(tasks, pid.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("move {i}: {e}"));
        let after: Vec<char> = (0..20).map(|_| state(pid)).collect();
        stop.store(1, Ordering::SeqCst);
        for s in sampler.join().unwrap() {
            *seen_during.entry(s).or_insert(0usize) += 1;
        }
        assert!(
            after.iter().all(|&s| s == 'T'),
            "move {i}: seen {after:?} right after the write returned"
        );
        let uts = ns_ino(pid, "uts");
        assert_eq!(uts != root_uts, into_s, "move {i} went where it was sent");
    }
    note(&format!("states seen while moves ran: {seen_during:?}"));
    // SAFETY: kill takes integers; our own child.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}

#[test]
fn sixty_four_stuck_moves_leave_the_mount_answering() {
    let Some(m) = Mount::new("stall-64") else {
        return;
    };
    const STUCK: usize = 64;
    container(&m, "s");
    let mut targets: Vec<Target> = (0..STUCK)
        .map(|_| Target::start(&m, "vfork-parent"))
        .collect();
    let pids: Vec<i32> = targets.iter().map(Target::pid).collect();
    for &pid in &pids {
        wait_for("the vfork parents to sleep", || state(pid) == 'D');
    }
    // 64 writes to the same `tasks` file, each started once the one before
    // has its target attached, so that all are pending at once.
    let returned = Arc::new(AtomicUsize::new(0));
    let tasks = m.path("s/tasks");
    let mut writers = Vec::new();
    m.step.set("start 64 stuck moves");
    for &pid in &pids {
        let tasks = tasks.clone();
        let returned = Arc::clone(&returned);
        writers.push(std::thread::spawn(move || {
            let r = write_once(&tasks, pid.to_string().as_bytes());
            returned.fetch_add(1, Ordering::SeqCst);
            r.err().and_then(|e| e.raw_os_error())
        }));
        wait_for("the stuck move to attach", || traced(pid));
    }
    // Meanwhile the rest of the mount answers: a listing, a read, and a
    // move of another process through the same `tasks` file, start to end.
    m.step.set("ls, cat and a move while 64 moves are stuck");
    let names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"s".to_owned()));
    let _ = m.read("status");
    let sleeper = Proc(Command::new("sleep").arg("1000").spawn().unwrap());
    m.write("s/tasks", sleeper.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(ns_text(sleeper.pid(), "uts"), m.read("s/uts").trim());
    assert_eq!(
        returned.load(Ordering::SeqCst),
        0,
        "all this was answered while every stuck move was still pending"
    );
    m.step.set("the stuck moves give up");
    for w in writers {
        assert_eq!(w.join().unwrap(), Some(libc::EAGAIN));
    }
    for &pid in &pids {
        wait_for("the injectors to let go", || !traced(pid));
        assert_eq!(state(pid), 'D');
    }
    for t in &mut targets {
        t.close_stdin();
        assert_eq!(t.line(), "RESUMED");
        t.wait_success();
    }
}

#[test]
fn writers_moving_each_other_never_deadlock() {
    let Some(m) = Mount::new("stall-pair") else {
        return;
    };
    container(&m, "s");
    let tasks = m.path("s/tasks");
    // Two shells, each told the other's pid, write it at the same moment,
    // then wait for input (so each stays there to be moved).
    let script = format!(
        "read other; if echo $other > '{}' 2>/dev/null; then echo moved; else echo failed; fi; \
         read end",
        tasks.display()
    );
    let mut a = Unshared::start(&[], &script);
    let mut b = Unshared::start(&[], &script);
    m.watch_pid(a.inner());
    m.watch_pid(b.inner());
    a.send(&b.inner().to_string());
    b.send(&a.inner().to_string());
    m.step.set("two writers moving each other");
    let outcomes = [a.line(), b.line()];
    note(&format!("two writers moving each other: {outcomes:?}"));
    // Each may find the other unstoppable (inside its own write) and give
    // up; neither waits for ever, and the mount goes on.
    for o in &outcomes {
        assert!(o == "moved" || o == "failed", "{o}");
    }
    let sleeper = Proc(Command::new("sleep").arg("1000").spawn().unwrap());
    m.write("s/tasks", sleeper.pid().to_string().as_bytes())
        .unwrap();
    a.send("end");
    b.send("end");
}

/// The daemon's children waiting on a FUSE request (the walking children
/// stuck in another filesystem).
fn children_waiting_on_fuse(daemon: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().nth(1));
            ppid == Some(daemon.to_string().as_str())
                && std::fs::read_to_string(format!("/proc/{pid}/wchan"))
                    .is_ok_and(|w| w.contains("request_wait_answer") || w.contains("fuse"))
        })
        .count()
}

#[test]
fn paths_through_a_filesystem_that_does_not_answer_hold_no_worker() {
    let Some(m) = Mount::new("stall-slow-path") else {
        return;
    };
    container(&m, "c");
    // Another FUSE filesystem whose server stops answering: every lookup
    // in it waits.
    let other = m.scratch("other");
    std::fs::create_dir(&other).unwrap();
    let mut server = Command::new(BIN)
        .arg("-f")
        .arg("--state-dir")
        .arg(m.scratch("other-state"))
        .arg(&other)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    m.watch_pid(server.id() as i32);
    wait_for("the other mount", || other.join("status").exists());
    sh_ok(&format!("kill -STOP {}", server.id()));
    // More writes than the mount has FUSE workers (4).
    let writers = 6;
    let finished = Arc::new(AtomicUsize::new(0));
    let errnos: Vec<_> = (0..writers)
        .map(|i| {
            let (path, finished) = (m.path(&format!("c{i}/net")), Arc::clone(&finished));
            container(&m, &format!("c{i}"));
            let target = other.join("c/net");
            std::thread::spawn(move || {
                let got = errno(write_once(&path, target.to_str().unwrap().as_bytes()));
                finished.fetch_add(1, Ordering::SeqCst);
                got
            })
        })
        .collect();
    let daemon = m.daemon_pid();
    m.step.set("every write waiting on the other filesystem");
    wait_for("every walk to wait", || {
        children_waiting_on_fuse(daemon) >= writers
    });
    m.step.set("the mount answers meanwhile");
    assert!(m.read("status").lines().count() == 8);
    assert!(std::fs::read_dir(m.path("")).unwrap().count() > writers);
    std::fs::create_dir(m.path("meanwhile")).unwrap();
    assert_eq!(
        finished.load(Ordering::SeqCst),
        0,
        "the mount answered only once the stuck writes gave up"
    );
    m.step.set("the stuck writes give up");
    for t in errnos {
        assert_eq!(t.join().unwrap(), libc::ETIMEDOUT);
    }
    sh_ok(&format!(
        "kill -CONT {0}; umount -l {1}",
        server.id(),
        other.display()
    ));
    let _ = server.kill();
    let _ = server.wait();
    // The killed server's pins are still mounted in its state directory.
    nsproxyfs::daemon::forget(&m.scratch("other-state"));
}

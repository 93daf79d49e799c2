//! Moves real processes between real namespaces (no FUSE) and checks
//! `/proc/PID/task/*/ns/*` before and after.
//!
//! Needs root: without it each test says why and passes, except under
//! `CI=true`, where it fails. Every test has a watchdog that kills the
//! processes it started and fails the test, naming the step, if it hangs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

mod common;

use common::{NS_ENTRIES, Watched, blocked_in, ns_ino, state, wait_for};
use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use nsproxyfs::errno;
use nsproxyfs::transfer::{
    FatalSeccomp, Known, MoveError, ProcessHandle, Source, move_process, move_process_from,
};

fn have_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: needs root (namespaces, ptrace), and CI=true makes skipping a failure"
    );
    eprintln!("{test}: skipped, needs root");
    false
}

/// A child process killed and reaped when dropped.
struct Proc {
    child: Child,
    stdout: Option<BufReader<ChildStdout>>,
    stdin: Option<ChildStdin>,
}

impl Proc {
    fn spawn(wd: &Watched, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        wd.watch_pid(child.id() as i32);
        let stdout = child.stdout.take().map(BufReader::new);
        let stdin = child.stdin.take();
        Proc {
            child,
            stdout,
            stdin,
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Next stdout line, without the newline; panics at EOF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let out = self.stdout.as_mut().expect("stdout is piped");
        let n = out.read_line(&mut line).expect("reading stdout");
        assert!(n > 0, "process {} closed stdout", self.pid());
        line.trim_end().to_string()
    }

    fn expect_line(&mut self, want: &str) {
        let got = self.line();
        assert_eq!(got, want, "process {}", self.pid());
    }

    fn send(&mut self, text: &str) {
        let input = self.stdin.as_mut().expect("stdin is piped");
        input.write_all(text.as_bytes()).expect("writing stdin");
        input.flush().expect("flushing stdin");
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the exit and asserts success.
    fn wait_success(&mut self) {
        let status = self.child.wait().expect("waiting");
        assert!(
            status.success(),
            "process {} ended with {status}",
            self.pid()
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `cond` holds, naming the step for the watchdog.
fn wait_until(wd: &Watched, what: &str, cond: impl FnMut() -> bool) {
    wd.step.set(what);
    wait_for(what, cond);
}

fn comm(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn tracer(pid: i32) -> i32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1)
}

/// The namespace of `kind` of every thread of `pid`.
fn thread_ns(pid: i32, kind: &str) -> Vec<u64> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort();
    tids.iter()
        .map(|tid| {
            std::fs::metadata(format!("/proc/{pid}/task/{tid}/ns/{kind}"))
                .expect("thread ns")
                .ino()
        })
        .collect()
}

/// Every namespace of every thread, kind by kind.
fn snapshot(pid: i32) -> Vec<(&'static str, Vec<u64>)> {
    NS_ENTRIES.iter().map(|k| (*k, thread_ns(pid, k))).collect()
}

/// The selfcheck target, built on first use: `cargo test` builds examples,
/// `cargo test --test move_process` does not.
fn selfcheck() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("current exe");
            // target/debug/deps/move_process-HASH -> target/debug/examples/
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("profile dir");
            let target_dir = profile_dir.parent().expect("target dir");
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args([
                "build",
                "--quiet",
                "--example",
                "selfcheck_target",
                "--manifest-path",
            ]);
            cargo
                .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("running cargo build");
            assert!(status.success(), "building the selfcheck target failed");
            let path = profile_dir.join("examples").join("selfcheck_target");
            assert!(path.exists(), "{} missing", path.display());
            path
        })
        .clone()
}

fn selfcheck_proc(wd: &Watched, args: &[&str]) -> Proc {
    let mut p = Proc::spawn(
        wd,
        Command::new(selfcheck())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    wd.step.set(&format!("selfcheck {args:?} starting"));
    p.expect_line("READY");
    p
}

/// A process sitting in fresh uts, ipc and net namespaces (hostname serge).
fn holder(wd: &Watched) -> Proc {
    holder_with(wd, &["--uts", "--ipc", "--net"])
}

fn holder_with(wd: &Watched, unshare_args: &[&str]) -> Proc {
    let p = Proc::spawn(
        wd,
        Command::new("unshare").args(unshare_args).args([
            "sh",
            "-c",
            "hostname serge; exec sleep 100",
        ]),
    );
    let pid = p.pid();
    wait_until(wd, "holder exec'ing sleep", || comm(pid) == "sleep");
    p
}

fn sleeper(wd: &Watched) -> Proc {
    let p = Proc::spawn(wd, Command::new("sleep").arg("100"));
    let pid = p.pid();
    wait_until(wd, "target exec'ing sleep", || comm(pid) == "sleep");
    p
}

fn uts_ipc_net() -> CloneFlags {
    CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWNET
}

/// Moves `target` into `holder`'s namespaces of `kinds`.
fn do_move(wd: &Watched, target: i32, holder: i32, kinds: CloneFlags) -> Result<(), MoveError> {
    wd.step.set(&format!("moving {target} to {holder}"));
    let handle = ProcessHandle::open(target)?;
    let report = move_process(&handle, holder, kinds)?;
    // Every move of these tests can take the join stub's path.
    assert!(report.stub, "the join stub was not used");
    Ok(())
}

/// Asserts that every thread of `target` is in `holder`'s namespaces for the
/// kinds in `moved`, and in its old ones (`before`) for the rest.
fn assert_moved(target: i32, holder: i32, moved: &[&str], before: &[(&str, Vec<u64>)]) {
    for (kind, old) in before {
        let now = thread_ns(target, kind);
        if moved.contains(kind) {
            let want = ns_ino(holder, kind);
            assert!(
                now.iter().all(|&n| n == want),
                "{kind}: {now:?}, holder {want}"
            );
            assert_ne!(&now, old, "{kind} did not change");
        } else {
            assert_eq!(&now, old, "{kind} changed");
        }
    }
}

#[test]
fn moves_sleep_into_uts() {
    if !have_root("moves_sleep_into_uts") {
        return;
    }
    let wd = Watched::start("moves_sleep_into_uts");
    let holder = holder(&wd);
    let target = sleeper(&wd);
    let before = snapshot(target.pid());
    do_move(&wd, target.pid(), holder.pid(), CloneFlags::CLONE_NEWUTS).expect("move");
    assert_moved(target.pid(), holder.pid(), &["uts"], &before);
    assert_eq!(tracer(target.pid()), 0);
}

/// Waits until `pid` is blocked in one of `syscalls` (per /proc/PID/syscall).
fn wait_blocked(wd: &Watched, pid: i32, syscalls: &[i64]) {
    wait_until(wd, &format!("{pid} blocking in {syscalls:?}"), || {
        state(pid) == 'S' && blocked_in(pid, pid).is_some_and(|nr| syscalls.contains(&nr))
    });
}

const SYS_READ: i64 = 0;
const SYS_NANOSLEEP: i64 = 35;
const SYS_WAIT4: i64 = 61;
const SYS_CLOCK_NANOSLEEP: i64 = 230;

#[test]
fn blocked_read_gets_its_bytes() {
    if !have_root("blocked_read_gets_its_bytes") {
        return;
    }
    let wd = Watched::start("blocked_read_gets_its_bytes");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["read-pipe", "bytes after the move\n"]);
    wait_blocked(&wd, target.pid(), &[SYS_READ]);
    let before = snapshot(target.pid());
    do_move(&wd, target.pid(), holder.pid(), uts_ipc_net()).expect("move");
    assert_moved(target.pid(), holder.pid(), &["uts", "ipc", "net"], &before);
    wd.step.set("feeding the reader");
    target.send("bytes after ");
    target.send("the move\n");
    target.close_stdin();
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn nanosleep_sleeps_its_full_time() {
    if !have_root("nanosleep_sleeps_its_full_time") {
        return;
    }
    let wd = Watched::start("nanosleep_sleeps_its_full_time");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["nanosleep", "2"]);
    wait_blocked(&wd, target.pid(), &[SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP]);
    let before = snapshot(target.pid());
    do_move(&wd, target.pid(), holder.pid(), uts_ipc_net()).expect("move");
    assert_moved(target.pid(), holder.pid(), &["uts", "ipc", "net"], &before);
    wd.step.set("waiting for the sleeper's verdict");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn wait4_sees_its_child_exit() {
    if !have_root("wait4_sees_its_child_exit") {
        return;
    }
    let wd = Watched::start("wait4_sees_its_child_exit");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["wait4", "2"]);
    wait_blocked(&wd, target.pid(), &[SYS_WAIT4]);
    let before = snapshot(target.pid());
    do_move(&wd, target.pid(), holder.pid(), CloneFlags::CLONE_NEWUTS).expect("move");
    assert_moved(target.pid(), holder.pid(), &["uts"], &before);
    wd.step.set("waiting for the waiter's verdict");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn spinning_process_keeps_its_registers() {
    if !have_root("spinning_process_keeps_its_registers") {
        return;
    }
    let wd = Watched::start("spinning_process_keeps_its_registers");
    let first = holder(&wd);
    let second = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["spin", "3"]);
    let pid = target.pid();
    wait_until(&wd, "spinner running", || state(pid) == 'R');
    let before = snapshot(pid);
    // Back and forth a few times: each move interrupts user code.
    for round in 0..10 {
        let to = if round % 2 == 0 { &first } else { &second };
        do_move(&wd, pid, to.pid(), uts_ipc_net()).expect("move");
        assert_moved(pid, to.pid(), &["uts", "ipc", "net"], &before);
    }
    wd.step.set("waiting for the spinner's verdict");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

/// Asks a `threads` selfcheck target for its threads' uts links.
fn report(wd: &Watched, target: &mut Proc) -> Vec<String> {
    wd.step.set("asking the threads to report");
    target.send("report\n");
    let mut links = Vec::new();
    loop {
        let line = target.line();
        if line.starts_with("REPORT ") {
            return links;
        }
        let link = line
            .split_whitespace()
            .nth(2)
            .expect("THREAD tid link")
            .to_string();
        links.push(link);
    }
}

fn uts_link(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/uts"))
        .expect("uts link")
        .to_string_lossy()
        .into_owned()
}

fn moves_threads(test: &'static str, count: &str) {
    if !have_root(test) {
        return;
    }
    let wd = Watched::start(test);
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["threads", count]);
    let pid = target.pid();
    let threads: usize = count.parse::<usize>().unwrap() + 1;
    let links = report(&wd, &mut target);
    assert_eq!(links.len(), threads);
    assert!(links.iter().all(|l| *l == uts_link(pid)));
    let before = snapshot(pid);
    wd.step.set("moving the threads");
    let handle = ProcessHandle::open(pid).expect("pin");
    let moved = move_process(&handle, holder.pid(), uts_ipc_net()).expect("move");
    assert_eq!(moved.threads, threads);
    assert!(!moved.unshared_fs);
    assert!(moved.stub);
    // No kernel reader was handed to this process: the threads were
    // listed, checked and verified through /proc.
    assert!(!moved.kernel_read);
    assert_moved(pid, holder.pid(), &["uts", "ipc", "net"], &before);
    let links = report(&wd, &mut target);
    assert_eq!(links.len(), threads);
    assert!(
        links.iter().all(|l| *l == uts_link(holder.pid())),
        "{links:?}"
    );
    target.send("quit\n");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn moves_every_thread() {
    moves_threads("moves_every_thread", "8");
}

#[test]
fn moves_sixty_four_threads() {
    moves_threads("moves_sixty_four_threads", "63");
}

#[test]
fn threads_join_a_mount_namespace() {
    if !have_root("threads_join_a_mount_namespace") {
        return;
    }
    let wd = Watched::start("threads_join_a_mount_namespace");
    let holder = holder_with(&wd, &["--mount", "--uts"]);
    let mut target = selfcheck_proc(&wd, &["threads", "4"]);
    let pid = target.pid();
    let before = snapshot(pid);
    wd.step.set("moving into mnt+uts");
    let handle = ProcessHandle::open(pid).expect("pin");
    let kinds = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS;
    let moved = move_process(&handle, holder.pid(), kinds).expect("move");
    assert!(moved.unshared_fs);
    assert!(moved.stub);
    assert_moved(pid, holder.pid(), &["mnt", "uts"], &before);
    target.send("quit\n");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn refusing_thread_rolls_back_the_others() {
    if !have_root("refusing_thread_rolls_back_the_others") {
        return;
    }
    let wd = Watched::start("refusing_thread_rolls_back_the_others");
    let holder = holder(&wd);
    // The last thread (highest tid, moved last) has dropped to uid 65534
    // and lost CAP_SYS_ADMIN: its setns fails after the others succeeded.
    let mut target = selfcheck_proc(&wd, &["threads-mixed", "4"]);
    let pid = target.pid();
    let before = snapshot(pid);
    let err = do_move(&wd, pid, holder.pid(), uts_ipc_net()).expect_err("must fail");
    match &err {
        MoveError::Refused {
            errno, moved_back, ..
        } => {
            assert_eq!(*errno, Errno::EPERM);
            assert_eq!(*moved_back, 4, "{err}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(errno::of_move(&err), Errno::EPERM as i32);
    assert_eq!(snapshot(pid), before);
    assert_eq!(tracer(pid), 0);
    let links = report(&wd, &mut target);
    assert!(links.iter().all(|l| *l == uts_link(pid)));
    target.send("quit\n");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn multithreaded_into_user_namespace_is_einval() {
    if !have_root("multithreaded_into_user_namespace_is_einval") {
        return;
    }
    let wd = Watched::start("multithreaded_into_user_namespace_is_einval");
    let holder = holder_with(&wd, &["--user", "--map-root-user", "--uts"]);
    let mut target = selfcheck_proc(&wd, &["threads", "3"]);
    let pid = target.pid();
    let before = snapshot(pid);
    let kinds = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWUTS;
    let err = do_move(&wd, pid, holder.pid(), kinds).expect_err("must fail");
    assert_eq!(errno::of_move(&err), Errno::EINVAL as i32, "{err}");
    assert!(
        matches!(err, MoveError::Refused { moved_back: 0, .. }),
        "{err}"
    );
    assert_eq!(snapshot(pid), before);
    target.send("quit\n");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn single_thread_joins_a_user_namespace() {
    if !have_root("single_thread_joins_a_user_namespace") {
        return;
    }
    let wd = Watched::start("single_thread_joins_a_user_namespace");
    let holder = holder_with(&wd, &["--user", "--map-root-user", "--uts"]);
    let target = sleeper(&wd);
    let before = snapshot(target.pid());
    let kinds = CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWUTS;
    do_move(&wd, target.pid(), holder.pid(), kinds).expect("move");
    assert_moved(target.pid(), holder.pid(), &["user", "uts"], &before);
}

#[test]
fn traced_target_is_busy_and_tracer_stays() {
    if !have_root("traced_target_is_busy_and_tracer_stays") {
        return;
    }
    let wd = Watched::start("traced_target_is_busy_and_tracer_stays");
    let holder = holder(&wd);
    let target = sleeper(&wd);
    let pid = target.pid();
    let strace = Proc::spawn(
        &wd,
        Command::new("strace")
            .args(["-o", "/dev/null", "-p"])
            .arg(pid.to_string()),
    );
    wait_until(&wd, "strace attaching", || tracer(pid) == strace.pid());
    let before = snapshot(pid);
    let err = do_move(&wd, pid, holder.pid(), uts_ipc_net()).expect_err("must fail");
    assert!(
        matches!(err, MoveError::AlreadyTraced { tracer, .. } if tracer == strace.pid()),
        "{err}"
    );
    assert_eq!(errno::of_move(&err), Errno::EBUSY as i32);
    assert_eq!(tracer(pid), strace.pid(), "strace must stay attached");
    assert_eq!(snapshot(pid), before);
}

#[test]
fn unprivileged_target_gets_eperm() {
    if !have_root("unprivileged_target_gets_eperm") {
        return;
    }
    let wd = Watched::start("unprivileged_target_gets_eperm");
    let holder = holder(&wd);
    let target = Proc::spawn(
        &wd,
        Command::new("setpriv").args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "sleep",
            "100",
        ]),
    );
    let pid = target.pid();
    wait_until(&wd, "target exec'ing sleep", || comm(pid) == "sleep");
    let before = snapshot(pid);
    let err = do_move(&wd, pid, holder.pid(), uts_ipc_net()).expect_err("must fail");
    assert!(
        matches!(
            err,
            MoveError::Refused {
                step: nsproxyfs::transfer::Step::Setns,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(errno::of_move(&err), Errno::EPERM as i32);
    assert_eq!(snapshot(pid), before);
    assert_eq!(tracer(pid), 0);
}

#[test]
fn stopped_target_stays_stopped() {
    if !have_root("stopped_target_stays_stopped") {
        return;
    }
    let wd = Watched::start("stopped_target_stays_stopped");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["nanosleep", "1"]);
    let pid = target.pid();
    wait_blocked(&wd, pid, &[SYS_NANOSLEEP, SYS_CLOCK_NANOSLEEP]);
    kill(Pid::from_raw(pid), Signal::SIGSTOP).expect("SIGSTOP");
    wait_until(&wd, "target stopping", || state(pid) == 'T');
    let before = snapshot(pid);
    do_move(&wd, pid, holder.pid(), uts_ipc_net()).expect("move");
    assert_moved(pid, holder.pid(), &["uts", "ipc", "net"], &before);
    // Detach puts it back into the group stop; it must never run on its own
    // (its sleep would end and it would exit).
    wait_until(&wd, "target back in group stop", || state(pid) == 'T');
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(state(pid), 'T', "target left the group stop");
    kill(Pid::from_raw(pid), Signal::SIGCONT).expect("SIGCONT");
    wd.step.set("waiting for the continued sleeper");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn refuses_zombies_kernel_threads_self_and_the_dead() {
    if !have_root("refuses_zombies_kernel_threads_self_and_the_dead") {
        return;
    }
    let wd = Watched::start("refuses_zombies_kernel_threads_self_and_the_dead");
    let holder = holder(&wd);
    let kinds = CloneFlags::CLONE_NEWUTS;

    let zombie = Proc::spawn(&wd, &mut Command::new("true"));
    let zpid = zombie.pid();
    wait_until(&wd, "child becoming a zombie", || state(zpid) == 'Z');
    let err = do_move(&wd, zpid, holder.pid(), kinds).expect_err("zombie");
    assert!(matches!(err, MoveError::Zombie(_)), "{err}");
    assert_eq!(errno::of_move(&err), Errno::ESRCH as i32);

    wd.step.set("refusing a kernel thread");
    let kthread = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let flags = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(6)?.parse::<u64>().ok());
            flags.is_some_and(|f| f & 0x0020_0000 != 0)
        });
    match kthread {
        Some(kpid) => {
            let err = do_move(&wd, kpid, holder.pid(), kinds).expect_err("kthread");
            assert!(matches!(err, MoveError::KernelThread(_)), "{err}");
            assert_eq!(errno::of_move(&err), Errno::EPERM as i32);
        }
        None => eprintln!("no kernel thread visible: that case is not checked"),
    }

    wd.step.set("refusing ourselves");
    let err = do_move(&wd, std::process::id() as i32, holder.pid(), kinds).expect_err("self");
    assert!(matches!(err, MoveError::SelfProcess), "{err}");
    assert_eq!(errno::of_move(&err), Errno::EPERM as i32);

    wd.step
        .set("refusing a process that died after being pinned");
    let mut dead = sleeper(&wd);
    let handle = ProcessHandle::open(dead.pid()).expect("pin");
    dead.child.kill().expect("kill");
    dead.child.wait().expect("reap");
    let err = move_process(&handle, holder.pid(), kinds).expect_err("dead");
    assert_eq!(errno::of_move(&err), Errno::ESRCH as i32, "{err}");
}

#[test]
fn syscall_result_can_be_replaced() {
    if !have_root("syscall_result_can_be_replaced") {
        return;
    }
    let wd = Watched::start("syscall_result_can_be_replaced");
    let mut target = selfcheck_proc(&wd, &["report-read"]);
    let pid = target.pid();
    wait_blocked(&wd, pid, &[SYS_READ]);
    wd.step.set("stopping the reader");
    let tracee = nsproxyfs::inject::Tracee::seize(Pid::from_raw(pid)).expect("seize");
    let mut tracee = tracee.wait_stop().expect("stop");
    assert_eq!(tracee.regs().syscall_nr(), Some(SYS_READ));
    assert!(tracee.regs().restart().is_some(), "{:?}", tracee.regs());
    tracee
        .set_result(-i64::from(libc::EPERM))
        .expect("set result");
    tracee.detach().expect("detach");
    target.expect_line(&format!("READ -{}", libc::EPERM));
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn injected_syscall_reports_signed_results() {
    if !have_root("injected_syscall_reports_signed_results") {
        return;
    }
    let wd = Watched::start("injected_syscall_reports_signed_results");
    let target = sleeper(&wd);
    let pid = target.pid();
    wd.step.set("injecting getpid and a bad close");
    let tracee = nsproxyfs::inject::Tracee::seize(Pid::from_raw(pid)).expect("seize");
    let mut tracee = tracee.wait_stop().expect("stop");
    let regs_before = *tracee.regs().raw();
    let mask_before = tracee.sigmask();
    let got = tracee.syscall(libc::SYS_getpid, [0; 6]).expect("inject");
    assert_eq!(got, Ok(i64::from(pid)));
    let got = tracee
        .syscall(libc::SYS_close, [u64::MAX, 0, 0, 0, 0, 0])
        .expect("inject");
    assert_eq!(got, Err(Errno::EBADF));
    tracee.restore().expect("restore");
    assert_eq!(*tracee.regs().raw(), regs_before);
    assert_eq!(tracee.sigmask(), mask_before);
    tracee.detach().expect("detach");
    assert_eq!(tracer(pid), 0);
}

/// A process whose second thread runs a new program when a line comes.
const EXEC_FROM_A_THREAD: &str = r#"
import os, sys, threading, time
def later():
    sys.stdin.readline()
    os.execv("/bin/sleep", ["sleep", "1000"])
threading.Thread(target=later).start()
print("READY", flush=True)
time.sleep(1000)
"#;

/// An execve(2) by a thread other than the leader hands it the leader's id
/// and ends the leader, stopped or not, without a word to the tracer. The
/// stopped leader's id then reads as changed, and letting it go touches
/// the new program in nothing: it runs on, untraced.
#[test]
fn a_leader_id_taken_over_by_an_exec_reads_as_changed() {
    exec_takes_the_leaders_id("a_leader_id_taken_over_by_an_exec_reads_as_changed", false);
}

/// The same when the thread that runs the new program is traced by the
/// same tracer and stopped under the leader's id: the id answers the
/// tracer's requests, but its registers are another thread's.
#[test]
fn a_leader_id_taken_over_by_a_traced_exec_reads_as_changed() {
    exec_takes_the_leaders_id(
        "a_leader_id_taken_over_by_a_traced_exec_reads_as_changed",
        true,
    );
}

fn exec_takes_the_leaders_id(test: &str, traced: bool) {
    if !have_root(test) {
        return;
    }
    let wd = Watched::start(test);
    let mut target = Proc::spawn(
        &wd,
        Command::new("python3")
            .args(["-c", EXEC_FROM_A_THREAD])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    );
    let pid = target.pid();
    target.expect_line("READY");
    wd.step.set("stopping the leader");
    let tracee = nsproxyfs::inject::Tracee::seize(Pid::from_raw(pid)).expect("seize");
    let tracee = tracee.wait_stop().expect("stop");
    assert!(tracee.is_unchanged(), "read again at once");
    assert!(tracee.is_unchanged(), "and again");
    if traced {
        let other = std::fs::read_dir(format!("/proc/{pid}/task"))
            .expect("task dir")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|&t| t != pid)
            .expect("a second thread");
        // SAFETY: PTRACE_SEIZE takes integers; the thread is left running.
        let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, other, 0usize, 0usize) };
        assert_eq!(r, 0, "seize {other}: {}", std::io::Error::last_os_error());
    }
    wd.step.set("the other thread runs a new program");
    target.send("go\n");
    wait_until(&wd, "the exec", || comm(pid) == "sleep");
    if traced {
        // The exec'd thread, traced by this thread, stopped under the
        // leader's id: every request on the id works again.
        // SAFETY: PTRACE_INTERRUPT takes integers.
        let r = unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, pid, 0usize, 0usize) };
        assert_eq!(r, 0, "interrupt {pid}: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waitpid writes the status into a live local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        assert_eq!(r, pid, "{}", std::io::Error::last_os_error());
        assert!(libc::WIFSTOPPED(status), "status {status:#x}");
        assert_eq!(tracer(pid), nix::unistd::gettid().as_raw());
    }
    assert!(!tracee.is_unchanged(), "the id names the exec'd thread now");
    tracee.let_go_untouched();
    assert_eq!(tracer(pid), 0, "the new program is not traced");
    wait_until(&wd, "sleep to sleep", || state(pid) == 'S');
}

// The join stub: written into the target while every thread is stopped,
// taken out again before any runs.

/// A digest of every readable mapping of `pid`, read through
/// `/proc/PID/mem` (the kernel's own pages skipped), with the mapping list
/// and the descriptors: what a move must leave exactly as it was.
fn memory_and_files(pid: i32) -> (String, Vec<(String, u64)>, Vec<String>) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let digest = common::memory_digest(pid, &maps);
    (maps, digest, common::descriptors(pid))
}

/// Waits until every thread of `pid` sleeps in a system call and its
/// memory stands still; returns that state.
///
/// Every thread is first kept to one CPU (see
/// [`common::keep_on_one_cpu`]): the threads do run, briefly, during the
/// move, single-stepped or in the stub alike.
fn settled(wd: &Watched, pid: i32) -> (String, Vec<(String, u64)>, Vec<String>) {
    common::keep_on_one_cpu(pid);
    let mut before = memory_and_files(pid);
    wait_until(wd, "the target to settle", || {
        let asleep = common::all_threads_asleep(pid);
        std::thread::sleep(Duration::from_millis(20));
        let again = memory_and_files(pid);
        let settled = asleep && again == before;
        before = again;
        settled
    });
    before
}

#[test]
fn stub_leaves_memory_identical() {
    if !have_root("stub_leaves_memory_identical") {
        return;
    }
    let wd = Watched::start("stub_leaves_memory_identical");
    let holder = holder(&wd);
    for args in [&["threads", "0"][..], &["threads", "3"], &["threads", "63"]] {
        let mut target = selfcheck_proc(&wd, args);
        let pid = target.pid();
        // Twice: there and back, so the second move writes the stub over
        // a page the first one made private.
        for to in [holder.pid(), std::process::id() as i32] {
            let before = settled(&wd, pid);
            let handle = ProcessHandle::open(pid).expect("pin");
            let moved = move_process(&handle, to, uts_ipc_net()).expect("move");
            assert!(moved.stub, "{args:?}");
            let after = memory_and_files(pid);
            assert_eq!(before.0, after.0, "{args:?}: memory mappings");
            assert_eq!(before.2, after.2, "{args:?}: descriptors");
            // Every thread was asleep in a system call across the move:
            // not one byte of its memory may differ.
            let differ: Vec<_> = before
                .1
                .iter()
                .zip(&after.1)
                .filter(|(a, b)| a != b)
                .map(|(a, _)| a.0.clone())
                .collect();
            assert_eq!(
                before.1, after.1,
                "{args:?}: memory contents {differ:?}\n{}",
                after.0
            );
        }
        target.send("quit\n");
        target.expect_line("SELFCHECK OK");
        target.wait_success();
    }
}

/// Asserts that `err` is the refusal `(errno, step)` and that process
/// `pid` is exactly as it was: memory mappings and contents and
/// descriptors as `before` (from [`settled`]), namespaces as `namespaces`
/// (from [`snapshot`]), and no tracer.
fn assert_refused_untouched(
    err: &MoveError,
    (errno, step): (Errno, &str),
    pid: i32,
    before: &(String, Vec<(String, u64)>, Vec<String>),
    namespaces: &[(&'static str, Vec<u64>)],
) {
    match err {
        MoveError::Refused {
            errno: e, step: s, ..
        } => {
            assert_eq!(*e, errno);
            assert_eq!(s.to_string(), step);
        }
        other => panic!("unexpected error {other}"),
    }
    let after = memory_and_files(pid);
    assert_eq!(before.0, after.0, "memory mappings");
    assert_eq!(before.2, after.2, "descriptors");
    assert_eq!(before.1, after.1, "memory contents");
    assert_eq!(snapshot(pid), namespaces);
    assert_eq!(tracer(pid), 0);
}

#[test]
fn setns_refused_in_the_stub_leaves_the_process_as_it_was() {
    if !have_root("setns_refused_in_the_stub_leaves_the_process_as_it_was") {
        return;
    }
    let wd = Watched::start("setns_refused_in_the_stub_leaves_the_process_as_it_was");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["seccomp-deny-setns"]);
    let pid = target.pid();
    wait_blocked(&wd, pid, &[libc::SYS_read]);
    let before = settled(&wd, pid);
    let namespaces = snapshot(pid);
    let err = do_move(&wd, pid, holder.pid(), uts_ipc_net()).expect_err("must fail");
    // The descriptors are the same: the pidfd is closed again.
    assert_refused_untouched(&err, (Errno::EPERM, "setns"), pid, &before, &namespaces);
    // Its read was not disturbed either.
    target.send("ok");
    target.close_stdin();
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

/// A target without seccomp takes any descriptor its injected pidfd_open
/// returns (no filter can stand in for the kernel); an error is reported
/// as pidfd_open's and leaves the process exactly as it was: the holder
/// named here is dead. The next move, to a live holder, goes through.
#[test]
fn pidfd_open_failing_in_the_stub_leaves_the_process_as_it_was() {
    if !have_root("pidfd_open_failing_in_the_stub_leaves_the_process_as_it_was") {
        return;
    }
    let wd = Watched::start("pidfd_open_failing_in_the_stub_leaves_the_process_as_it_was");
    let holder = holder(&wd);
    let mut target = selfcheck_proc(&wd, &["threads", "0"]);
    let pid = target.pid();
    let mut gone = Command::new("true").spawn().expect("spawn true");
    let dead = gone.id() as i32;
    gone.wait().expect("wait for true");
    let before = settled(&wd, pid);
    let namespaces = snapshot(pid);
    let source = Source {
        seen: dead,
        known: Some(Known {
            local: holder.pid(),
            inodes: NS_ENTRIES.map(|entry| ns_ino(holder.pid(), entry)),
        }),
    };
    wd.step.set("moving with a dead holder's pid");
    let handle = ProcessHandle::open(pid).expect("pin");
    let err = move_process_from(
        &handle,
        source,
        uts_ipc_net(),
        None,
        FatalSeccomp::Refuse,
        None,
    )
    .expect_err("must fail");
    assert_refused_untouched(
        &err,
        (Errno::ESRCH, "pidfd_open"),
        pid,
        &before,
        &namespaces,
    );
    // And the next move, to a live holder, goes through.
    let moved = move_process(&handle, holder.pid(), uts_ipc_net()).expect("move");
    assert!(moved.stub);
    target.send("quit\n");
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

/// Kinds chosen from a read made before the process stopped, which no
/// longer hold once it is stopped (another move, or the process itself,
/// changed its namespaces meanwhile): the move is refused with `EAGAIN`
/// and changes nothing. Here the caller chose uts alone, though the
/// process differs from the holder in uts, ipc and net. Chosen again, the
/// move goes through.
#[test]
fn kinds_chosen_before_the_stop_are_checked_once_it_is_stopped() {
    let test = "kinds_chosen_before_the_stop_are_checked_once_it_is_stopped";
    if !have_root(test) {
        return;
    }
    let wd = Watched::start(test);
    let holder = holder(&wd);
    let target = sleeper(&wd);
    let pid = target.pid();
    let namespaces = snapshot(pid);
    let source = Source {
        seen: holder.pid(),
        known: Some(Known {
            local: holder.pid(),
            inodes: NS_ENTRIES.map(|entry| ns_ino(holder.pid(), entry)),
        }),
    };
    let handle = ProcessHandle::open(pid).expect("pin");
    wd.step.set("moving with a stale choice of kinds");
    let err = move_process_from(
        &handle,
        source,
        CloneFlags::CLONE_NEWUTS,
        None,
        FatalSeccomp::Refuse,
        None,
    )
    .expect_err("must be refused");
    assert!(
        matches!(err, MoveError::Changed { now, .. }
            if now == (libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWNET)),
        "{err}"
    );
    assert_eq!(errno::of_move(&err), Errno::EAGAIN as i32);
    assert_eq!(snapshot(pid), namespaces, "nothing changed");
    assert_eq!(tracer(pid), 0);
    wd.step.set("moving with the kinds that differ");
    move_process_from(
        &handle,
        source,
        uts_ipc_net(),
        None,
        FatalSeccomp::Refuse,
        None,
    )
    .expect("move");
    assert_eq!(uts_link(pid), uts_link(holder.pid()));
}

#[test]
fn stop_signals_during_stub_moves_keep_a_spinning_target_whole() {
    if !have_root("stop_signals_during_stub_moves_keep_a_spinning_target_whole") {
        return;
    }
    let wd = Watched::start("stop_signals_during_stub_moves_keep_a_spinning_target_whole");
    let holder = holder(&wd);
    // A busy loop checks its register-held counters: a thread resumed
    // anywhere but where it stopped, or with any register changed, fails.
    // It is in no system call: the stub goes into the vDSO's page.
    let mut target = selfcheck_proc(&wd, &["spin", "3"]);
    let pid = target.pid();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pester = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                std::thread::sleep(Duration::from_micros(50));
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
                std::thread::sleep(Duration::from_micros(150));
                sent += 1;
            }
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            sent
        })
    };
    let mut moves = 0;
    for i in 0..100 {
        let to = if i % 2 == 0 {
            holder.pid()
        } else {
            std::process::id() as i32
        };
        wd.step.set(&format!("move {i} of a pestered spinner"));
        let handle = ProcessHandle::open(pid).expect("pin");
        match move_process(&handle, to, uts_ipc_net()) {
            Ok(report) => {
                assert!(report.stub);
                moves += 1;
            }
            Err(e) => panic!("move {i}: {e}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = pester.join().unwrap();
    assert!(sent > 0 && moves == 100);
    assert_eq!(tracer(pid), 0);
    target.expect_line("SELFCHECK OK");
    target.wait_success();
}

#[test]
fn sigkill_during_stub_moves_ends_them_with_esrch() {
    if !have_root("sigkill_during_stub_moves_ends_them_with_esrch") {
        return;
    }
    let wd = Watched::start("sigkill_during_stub_moves_ends_them_with_esrch");
    let holder = holder(&wd);
    let (mut killed_mid_move, mut moved) = (0, 0);
    for i in 0..40u64 {
        let mut target = selfcheck_proc(&wd, &["threads", "3"]);
        let pid = target.pid();
        wd.step.set(&format!("killing target {i} during its move"));
        // Somewhere within the first few hundred microseconds of the move.
        let delay = Duration::from_micros(20 * (i % 16));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        });
        let handle = ProcessHandle::open(pid).expect("pin");
        match move_process(&handle, holder.pid(), uts_ipc_net()) {
            Ok(_) => moved += 1,
            Err(MoveError::Gone(_) | MoveError::Zombie(_)) => killed_mid_move += 1,
            Err(e) => panic!("target {i}: {e}"),
        }
        killer.join().unwrap();
        // Dead, and not traced by anyone (its parent here is the tracer
        // too, which may have collected it already).
        wait_until(&wd, "the killed target to be gone", || {
            !std::path::Path::new(&format!("/proc/{pid}/task")).exists() || state(pid) == 'Z'
        });
        let _ = target.child.wait();
    }
    assert!(killed_mid_move + moved == 40, "{killed_mid_move} + {moved}");
}

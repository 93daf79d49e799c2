//! A move never harms, confuses or abandons its target: targets that exit or
//! are killed mid-move, that lost their main thread, that keep a thread in
//! a namespace of their own, that take signals during moves, or that sit in
//! blocking calls a stop would interrupt. End to end through a real mount.
//!
//! Races run as seeded loops (`NSPROXYFS_FUZZ_SEED` replays one); the
//! mount's watchdog ends any step that hangs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// An `edge_target` process, killed and reaped on drop.
struct Target {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Target {
    fn start(m: &Mount, args: &[&str]) -> Target {
        let mut child = Command::new(example("edge_target"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start edge_target");
        m.watch_pid(child.id() as i32);
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in out.lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Target {
            child,
            stdin,
            lines,
        };
        m.step.set(&format!("edge_target {args:?} starting"));
        assert_eq!(t.line("READY"), "READY", "edge_target {args:?}");
        t
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// The next line it prints; fails if none comes within 20 s (`what`
    /// says what was awaited).
    fn line(&mut self, what: &str) -> String {
        match self.lines.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(e) => panic!("process {}: no line ({what}): {e}", self.pid()),
        }
    }

    fn send(&mut self, text: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes stdin and waits (20 s at most) for the exit status.
    fn finish(&mut self) -> std::process::ExitStatus {
        self.stdin = None;
        reap_within(&mut self.child, Duration::from_secs(20))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for `child` to end; fails the test if it cannot be reaped within
/// `limit` (a zombie still traced by someone else never can).
fn reap_within(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let pid = child.id();
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let _ = child.kill();
            panic!("process {pid} could not be reaped within {limit:?}: {status}");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two containers with fresh uts and net namespaces.
fn two_containers(m: &Mount) {
    for c in ["a", "b"] {
        std::fs::create_dir(m.path(c)).unwrap();
        std::fs::File::create(m.path(&format!("{c}/uts"))).unwrap();
        std::fs::File::create(m.path(&format!("{c}/net"))).unwrap();
    }
}

/// The live threads of `pid` (leaving out exited ones, such as a leader
/// that called pthread_exit).
fn live_threads(pid: i32) -> Vec<i32> {
    let mut tids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    tids.retain(|tid| !matches!(thread_state(pid, *tid), 'Z' | 'X' | '?'));
    tids.sort_unstable();
    tids
}

fn thread_ns(pid: i32, tid: i32, kind: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/task/{tid}/ns/{kind}"))
        .map(|m| m.ino())
        .unwrap_or(0)
}

/// The write's errno, 0 for success.
fn write_pid(m: &Mount, container: &str, pid: i32) -> i32 {
    match m.write(&format!("{container}/tasks"), format!("{pid}\n").as_bytes()) {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// Every injector the daemon started is its child and none is a zombie or
/// traces anything.
fn assert_injectors_clean(m: &Mount) {
    for pid in injector_pids(m.daemon_pid()) {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(!stat.contains(") Z"), "injector {pid} is a zombie");
    }
}

#[test]
fn target_exiting_mid_move_ends_the_write_with_esrch() {
    let Some(m) = Mount::new("exit-mid-move") else {
        return;
    };
    two_containers(&m);
    let mut rng = Rng::from_env("exit-mid-move");
    let mut outcomes = [0usize; 2];
    for round in 0..300 {
        let micros = rng.below(3000).to_string();
        let mut t = Target::start(&m, &["exit-after", "8", &micros]);
        let container = if round % 2 == 0 { "a" } else { "b" };
        m.step.set(&format!(
            "round {round}: move a target exiting after {micros} us"
        ));
        let errno = write_pid(&m, container, t.pid());
        assert!(
            errno == 0 || errno == libc::ESRCH,
            "round {round}: the write failed with errno {errno}"
        );
        outcomes[usize::from(errno != 0)] += 1;
        m.step.set(&format!("round {round}: reap the target"));
        let status = reap_within(&mut t.child, Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "round {round}: {status}");
    }
    note(&format!(
        "exit-mid-move: {} moved, {} ESRCH",
        outcomes[0], outcomes[1]
    ));
    assert_injectors_clean(&m);
    assert!(!m.log_text().contains("ERROR"), "{}", m.log_text());
}

#[test]
fn target_killed_mid_move_ends_the_write_and_is_reaped() {
    let Some(m) = Mount::new("kill-mid-move") else {
        return;
    };
    two_containers(&m);
    let mut rng = Rng::from_env("kill-mid-move");
    let mut outcomes = [0usize; 2];
    for round in 0..60 {
        let mut t = Target::start(&m, &["idle", "32"]);
        let pid = t.pid();
        let delay = Duration::from_micros(rng.below(8000) as u64);
        let container = if round % 2 == 0 { "a" } else { "b" };
        m.step.set(&format!(
            "round {round}: kill {pid} {delay:?} into its move"
        ));
        let errno = std::thread::scope(|s| {
            let writer = s.spawn(|| write_pid(&m, container, pid));
            std::thread::sleep(delay);
            // SAFETY: kill takes integers; the target is this test's child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            writer.join().expect("writer")
        });
        assert!(
            errno == 0 || errno == libc::ESRCH,
            "round {round}: the write failed with errno {errno}"
        );
        outcomes[usize::from(errno != 0)] += 1;
        m.step.set(&format!("round {round}: reap the target"));
        let status = reap_within(&mut t.child, Duration::from_secs(20));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL),
            "round {round}"
        );
    }
    note(&format!(
        "kill-mid-move: {} moved before the kill, {} ESRCH",
        outcomes[0], outcomes[1]
    ));
    assert_injectors_clean(&m);
    assert!(!m.log_text().contains("ERROR"), "{}", m.log_text());
}

/// `siginfo_t` as sigqueue fills it (`_rt`: pid, uid, value).
#[repr(C)]
struct QueuedInfo {
    signo: i32,
    errno: i32,
    code: i32,
    _pad: i32,
    pid: i32,
    uid: u32,
    value: u64,
    _rest: [u64; 12],
}

/// `SI_QUEUE`: sent by sigqueue(3).
const SI_QUEUE: i32 = -1;

/// Queues `sig` with `value` to process `pid`, or to its thread `tid`.
fn queue_signal(pid: i32, tid: Option<i32>, sig: i32, value: u64) {
    let info = QueuedInfo {
        signo: sig,
        errno: 0,
        code: SI_QUEUE,
        _pad: 0,
        pid: std::process::id() as i32,
        // SAFETY: getuid has no arguments and cannot fail.
        uid: unsafe { libc::getuid() },
        value,
        _rest: [0; 12],
    };
    // SAFETY: `info` is a live 128-byte siginfo the kernel only reads.
    let ret = unsafe {
        match tid {
            None => libc::syscall(libc::SYS_rt_sigqueueinfo, pid, sig, &info),
            Some(tid) => libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, sig, &info),
        }
    };
    assert_eq!(
        ret,
        0,
        "queueing signal {sig}: {}",
        std::io::Error::last_os_error()
    );
}

#[test]
fn signals_during_moves_arrive_once_with_their_siginfo() {
    let Some(m) = Mount::new("signals-mid-move") else {
        return;
    };
    two_containers(&m);
    let mut rng = Rng::from_env("signals-mid-move");
    let mut t = Target::start(&m, &["signals", "4"]);
    let pid = t.pid();
    let threads = live_threads(pid);
    // The signals edge_target catches: the fault kinds, SIGSYS, SIGUSR1 and
    // a real-time one.
    let kinds = [
        libc::SIGBUS,
        libc::SIGSEGV,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
        libc::SIGSYS,
        libc::SIGUSR1,
        libc::SIGRTMIN() + 2,
    ];
    let moves = 300;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut sent = 0u64;
    std::thread::scope(|s| {
        let mover = s.spawn(|| {
            for i in 0..moves {
                let errno = write_pid(&m, if i % 2 == 0 { "a" } else { "b" }, pid);
                assert_eq!(errno, 0, "move {i}");
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let sig = rng.pick(&kinds);
            let tid = (rng.below(2) == 0).then(|| rng.pick(&threads));
            sent += 1;
            queue_signal(pid, tid, sig, sent);
            let line = t.line(&format!("signal {sig} #{sent} to {tid:?}"));
            let want = format!("SIG {sig} {SI_QUEUE} {} {sent}", std::process::id());
            assert_eq!(line, want, "signal #{sent} to {tid:?}");
        }
        mover.join().expect("mover");
    });
    note(&format!(
        "signals-mid-move: {sent} signals during {moves} moves"
    ));
    assert!(sent >= 50, "too few signals sent during the moves: {sent}");
    // The last handler may still be on its way out (its line sent, its
    // mask not yet restored): nothing may stay pending or blocked for good.
    for tid in live_threads(pid) {
        for field in ["SigPnd", "ShdPnd", "SigBlk"] {
            let clear =
                || thread_status_field(pid, tid, field).as_deref() == Some("0000000000000000");
            if !clear() {
                wait_for(&format!("thread {tid} {field} to clear"), clear);
            }
        }
        assert_eq!(
            thread_status_field(pid, tid, "TracerPid").as_deref(),
            Some("0"),
            "thread {tid}"
        );
    }
    assert!(t.finish().success());
}

#[test]
fn blocking_calls_carry_on_across_moves() {
    let Some(m) = Mount::new("blocking-calls") else {
        return;
    };
    two_containers(&m);
    let calls = [
        ("epoll_wait", libc::SYS_epoll_wait),
        ("epoll_pwait", libc::SYS_epoll_pwait),
        ("epoll_pwait2", libc::SYS_epoll_pwait2),
        ("sigwaitinfo", libc::SYS_rt_sigtimedwait),
        ("semop", libc::SYS_semop),
        ("semtimedop", libc::SYS_semtimedop),
        // Calls that wait with a mask of their own: the thread's own one
        // must be back after them, as without the moves.
        ("sigsuspend", libc::SYS_rt_sigsuspend),
        ("ppoll", libc::SYS_ppoll),
    ];
    for (call, nr) in calls {
        let mut t = Target::start(&m, &["block", call]);
        let pid = t.pid();
        for i in 0..20 {
            m.step
                .set(&format!("{call}: wait for the block before move {i}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            while !(thread_state(pid, pid) == 'S' && blocked_in(pid, pid) == Some(nr)) {
                assert!(Instant::now() < deadline, "{call}: not blocked in it");
                if let Ok(line) = t.lines.try_recv() {
                    panic!("{call}: returned before move {i}: {line}");
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            let errno = write_pid(&m, if i % 2 == 0 { "a" } else { "b" }, pid);
            assert_eq!(errno, 0, "{call}: move {i}");
        }
        t.send("go\n");
        assert_eq!(t.line(call), "RESULT ok", "{call}");
        assert!(t.finish().success(), "{call}");
    }
}

#[test]
fn process_whose_main_thread_exited_is_moved() {
    let Some(m) = Mount::new("main-exited") else {
        return;
    };
    two_containers(&m);
    let mut t = Target::start(&m, &["main-exits", "4"]);
    let pid = t.pid();
    m.step.set("wait for the main thread to exit");
    let deadline = Instant::now() + Duration::from_secs(20);
    while thread_state(pid, pid) != 'Z' {
        assert!(Instant::now() < deadline, "main thread still runs");
        std::thread::sleep(Duration::from_millis(1));
    }
    for i in 0..10 {
        let c = if i % 2 == 0 { "a" } else { "b" };
        assert_eq!(write_pid(&m, c, pid), 0, "move {i}");
        let (uts, net) = (
            m.bound_ino(&format!("{c}/uts")),
            m.bound_ino(&format!("{c}/net")),
        );
        let threads = live_threads(pid);
        assert_eq!(threads.len(), 4);
        for tid in threads {
            assert_eq!(thread_ns(pid, tid, "uts"), uts, "move {i}: thread {tid}");
            assert_eq!(thread_ns(pid, tid, "net"), net, "move {i}: thread {tid}");
            assert_eq!(
                thread_status_field(pid, tid, "TracerPid").as_deref(),
                Some("0")
            );
        }
    }
    assert!(t.finish().success());
}

#[test]
fn main_thread_exiting_mid_move_leaves_the_others_moved() {
    let Some(m) = Mount::new("main-exits-mid-move") else {
        return;
    };
    two_containers(&m);
    let mut rng = Rng::from_env("main-exits-mid-move");
    for round in 0..100 {
        let micros = rng.below(3000).to_string();
        let mut t = Target::start(&m, &["main-exits-after", "4", &micros]);
        let pid = t.pid();
        let c = if round % 2 == 0 { "a" } else { "b" };
        m.step.set(&format!(
            "round {round}: main thread leaves after {micros} us"
        ));
        assert_eq!(write_pid(&m, c, pid), 0, "round {round}");
        let uts = m.bound_ino(&format!("{c}/uts"));
        // It may leave after the move: look once it has.
        m.step
            .set(&format!("round {round}: wait for the main thread to leave"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while thread_state(pid, pid) != 'Z' {
            assert!(
                Instant::now() < deadline,
                "round {round}: main thread still runs"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        let threads = live_threads(pid);
        assert!(threads.len() >= 4, "round {round}: {threads:?}");
        for tid in threads {
            assert_eq!(
                thread_ns(pid, tid, "uts"),
                uts,
                "round {round}: thread {tid}"
            );
            assert_eq!(
                thread_status_field(pid, tid, "TracerPid").as_deref(),
                Some("0"),
                "round {round}"
            );
        }
        m.step.set(&format!("round {round}: end the target"));
        assert!(t.finish().success(), "round {round}");
    }
    assert_injectors_clean(&m);
}

#[test]
fn thread_in_a_namespace_of_its_own_is_moved_too() {
    let Some(m) = Mount::new("own-net-thread") else {
        return;
    };
    // Only uts is the container's own: its net is the host's, which the
    // main thread is in already, but not the thread with its own.
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let host_net = ns_ino(std::process::id() as i32, "net");
    let mut t = Target::start(&m, &["own-net", "4"]);
    let pid = t.pid();
    let threads = live_threads(pid);
    let own: Vec<i32> = threads
        .iter()
        .copied()
        .filter(|&tid| thread_ns(pid, tid, "net") != host_net)
        .collect();
    assert_eq!(own.len(), 1, "one thread in a net namespace of its own");
    assert_eq!(write_pid(&m, "c", pid), 0);
    let uts = m.bound_ino("c/uts");
    for tid in threads {
        assert_eq!(thread_ns(pid, tid, "uts"), uts, "thread {tid}");
        assert_eq!(thread_ns(pid, tid, "net"), host_net, "thread {tid}");
    }
    let listed = m.read("c/tasks");
    assert!(
        listed.lines().any(|l| l == pid.to_string()),
        "c/tasks lists {pid}: {listed}"
    );
    assert!(t.finish().success());
}

#[test]
fn self_moves_log_no_false_alarm() {
    let Some(mut m) = Mount::new("self-move-log") else {
        return;
    };
    two_containers(&m);
    let script = "import os, sys\n\
                  with open(sys.argv[1], 'w') as f: f.write(str(os.getpid()))\n";
    // The kernel stops sending interrupts to a connection once one was
    // answered in time, so each round starts a new daemon.
    for round in 0..6 {
        for i in 0..3 {
            m.step
                .set(&format!("round {round}: python {i} moves itself"));
            let out = Command::new("python3")
                .arg("-c")
                .arg(script)
                .arg(m.path("a/tasks"))
                .output()
                .expect("python3");
            assert!(
                out.status.success(),
                "round {round}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        m.stop();
        m.restart();
    }
    let log = m.log_text();
    assert!(!log.contains("Failed to send FUSE reply"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}

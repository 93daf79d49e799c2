//! The kernel's view ([`nsproxyfs::kview`]): the BPF task iterator and the
//! `/proc` path give the same answers on this host, for processes spread
//! over fresh namespaces of every kind; and the `/proc` path can be forced.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};

use common::*;
use nsproxyfs::kview::{self, Membership, Proc};
use nsproxyfs::ns::Kind;
use nsproxyfs::ns::creds::Credentials;
use nsproxyfs::procfs;

/// Processes in fresh namespaces, each a different mix; killed on drop.
fn spread() -> Vec<Proc_> {
    let scripts: [&[&str]; 7] = [
        &["--net", "--uts"],
        &["--ipc", "--cgroup"],
        // A pid namespace with no process in it yet: its
        // pid_for_children link cannot be read.
        &["--pid"],
        // The same, with its init.
        &["--pid", "--fork", "--kill-child", "--mount-proc"],
        &["--user", "--map-root-user"],
        &["--time", "--mount"],
        &["--net", "--ipc", "--uts", "--mount"],
    ];
    scripts
        .iter()
        .map(|args| {
            let child = Command::new("unshare")
                .args(*args)
                .args(["--", "sleep", "1000"])
                .spawn()
                .expect("unshare");
            Proc_(child)
        })
        .collect()
}

struct Proc_(std::process::Child);

impl Drop for Proc_ {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn by_pid(pass: &[Proc]) -> BTreeMap<i32, Proc> {
    pass.iter().map(|p| (p.pid, *p)).collect()
}

/// The BPF path, loaded with its counting programs, for test `test`
/// (which needs `tools`); `None`, said why, where it cannot run here (a
/// failure under CI).
fn kernel_path(test: &str, tools: &[&str]) -> Option<Membership> {
    if !require_privileges(test) || !require_tools(test, tools) {
        return None;
    }
    match Membership::choose() {
        (m @ Membership::Kernel(_), _) => Some(m),
        (_, why) => {
            assert!(
                std::env::var("CI").is_err(),
                "no BPF path under CI: {why:?}"
            );
            note(&format!("{test}: skipped: {why:?}"));
            None
        }
    }
}

#[test]
fn bpf_and_proc_agree() {
    let Some(kernel) = kernel_path("bpf_and_proc_agree", &["unshare"]) else {
        return;
    };
    let procs = spread();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let proc = Membership::Proc;
    // Processes come and go on a busy host: compare the kernel's pass
    // with the processes /proc shows the same before and after it.
    let before = by_pid(&proc.processes().unwrap());
    let seen = by_pid(&kernel.processes().unwrap());
    let after = by_pid(&proc.processes().unwrap());
    let mut compared = 0;
    for (pid, p) in &before {
        // A process none of whose links /proc can read (a host may guard
        // its init so) is in no answer on either path.
        if after.get(pid) != Some(p) || p.link(Kind::User).is_none() {
            continue;
        }
        assert_eq!(seen.get(pid), Some(p), "pid {pid}");
        compared += 1;
    }
    for (pid, p) in &seen {
        if before.get(pid) == after.get(pid)
            && let Some(q) = before.get(pid)
        {
            assert_eq!(p, q, "pid {pid}");
        }
    }
    assert!(compared > 10, "only {compared} stable processes");
    // Kernel threads are there, flagged, as /proc shows them.
    assert!(seen.values().any(|p| p.kthread));
    for child in &procs {
        let pid = child.0.id() as i32;
        let p = seen.get(&pid).unwrap_or_else(|| panic!("{pid} missing"));
        assert_eq!(Some(p), before.get(&pid));
        // Its set's members (itself, and with --fork its child) are the
        // same on both paths.
        if let Some(set) = p.set() {
            let first: Vec<Kind> = Kind::ALL.to_vec();
            let members = kernel.members(&set, &first).unwrap();
            assert!(members.contains(&pid), "{members:?}");
            assert!(members.len() <= 2, "{members:?}");
            assert_eq!(proc.members(&set, &first).unwrap(), members);
        } else {
            // The pid namespace with no process yet: no set on /proc either.
            assert_eq!(procfs::ns_set(pid as u32), None);
        }
    }
    // The set of this test itself has many members; both agree on the
    // stable ones.
    let me = std::process::id() as i32;
    let mine = seen[&me].set().unwrap();
    let k = kernel.members(&mine, &[]).unwrap();
    let p = proc.members(&mine, &[]).unwrap();
    assert!(k.contains(&me) && p.contains(&me));
    drop(procs);
}

/// One thread read in one BPF call reads as its `/proc/TID/ns` links and
/// its `/proc/TID/status` credentials do: leaders in fresh namespaces of
/// every kind, a process with other ids, groups and capabilities, a
/// thread of this test that left its process's uts namespace and changed
/// its own ids, and a thread that is gone.
#[test]
fn one_thread_reads_as_proc_does() {
    let Some(kernel) = kernel_path("one_thread_reads_as_proc_does", &["unshare", "setpriv"]) else {
        return;
    };
    let mut procs = spread();
    let other = Command::new("setpriv")
        .args(["--reuid=1234", "--regid=2345", "--groups=7,8,9"])
        .args(["--inh-caps=+net_raw", "--", "sleep", "1000"])
        .spawn()
        .expect("setpriv");
    procs.push(Proc_(other));
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A thread in a uts namespace of its own, with ids of its own (the raw
    // system calls change the calling thread's alone), until told to end.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let loner = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUTS).expect("unshare uts");
        // SAFETY: raw setresgid/setresuid of this thread alone; it keeps
        // saved ids 0, so nothing it needs is lost, and it runs no more
        // code than the channel's.
        unsafe {
            assert_eq!(libc::syscall(libc::SYS_setresgid, 4321, 4322, 0), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, 5432, 5433, 0), 0);
        }
        tid_tx.send(nix::unistd::gettid().as_raw()).unwrap();
        let _ = end_rx.recv();
    });
    let loner_tid = tid_rx.recv().unwrap();
    let me = std::process::id() as i32;
    let mut tids: Vec<i32> = procs.iter().map(|p| p.0.id() as i32).collect();
    tids.extend([me, loner_tid]);
    for tid in tids {
        let thread = kernel
            .thread(tid as u32)
            .unwrap_or_else(|| panic!("thread {tid} not read"));
        let status = Credentials::of_thread(tid as u32).unwrap();
        assert_eq!(thread.creds.as_ref(), Some(&status), "thread {tid}");
        let seen = thread.proc;
        assert_eq!(seen.pid, tid);
        assert_eq!(seen.set(), procfs::ns_set(tid as u32), "thread {tid}");
        for kind in Kind::ALL {
            // The link of the namespace the thread is in (for pid and
            // time, not its children's).
            let link = procfs::ns_link_inode(tid, kind.name());
            assert_eq!(seen.link(kind), link, "thread {tid} {kind:?}");
        }
        assert_eq!(kview::thread_set(tid as u32), procfs::ns_set(tid as u32));
    }
    let uts = Kind::Uts.index();
    let (mine, loner_set) = (
        kernel.thread(me as u32).and_then(|t| t.proc.set()).unwrap(),
        kernel
            .thread(loner_tid as u32)
            .and_then(|t| t.proc.set())
            .unwrap(),
    );
    assert_ne!(mine[uts], loner_set[uts], "the thread's own uts namespace");
    let loner_creds = kernel.thread(loner_tid as u32).and_then(|t| t.creds);
    assert_eq!(
        loner_creds.map(|c| (c.uid, c.gid)),
        Some(([5432, 5433, 0, 5433], [4321, 4322, 0, 4322]))
    );
    let other = procs.last().unwrap().0.id();
    let creds = kernel.thread(other).and_then(|t| t.creds).unwrap();
    assert_eq!(creds.uid, [1234; 4]);
    assert_eq!(creds.groups, vec![7, 8, 9]);
    assert_ne!(creds.inheritable, 0);
    end_tx.send(()).unwrap();
    loner.join().unwrap();
    // Gone: join returns when the thread's tid word is cleared, which the
    // kernel does before it drops the thread's namespaces, so wait (within
    // a bound) until /proc says they are dropped; from then on the kernel
    // read must say so too, as the drop is for good (read through the link
    // kept from the reads above, as a new one would read).
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while procfs::ns_set(loner_tid as u32).is_some() {
        assert!(
            std::time::Instant::now() < until,
            "thread {loner_tid} kept its namespaces 5 s after it ended"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(
        kernel.thread(loner_tid as u32).and_then(|t| t.proc.set()),
        None
    );
    assert_eq!(kview::thread_set(loner_tid as u32), None);
    drop(procs);
}

/// A daemon's answers about a container it made: one process moved in,
/// read back from `tasks` (the membership path), and the log line that
/// says which path the daemon took, which must appear exactly once.
fn daemon_reads_members(test: &str) -> Option<String> {
    let m = Mount::with_args(test, &["--discover"])?;
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::write(m.path("c/net"), b"").unwrap();
    std::fs::write(m.path("c/uts"), b"").unwrap();
    let sleeper = common::Proc::sh("exec sleep 1000");
    m.watch_pid(sleeper.pid());
    m.write("c/tasks", format!("{}\n", sleeper.pid()).as_bytes())
        .unwrap();
    assert_eq!(m.read("c/tasks"), format!("{}\n", sleeper.pid()));
    assert!(
        m.read("tasks")
            .lines()
            .all(|l| l != sleeper.pid().to_string())
    );
    let table = m.read(".namespaces");
    let net = ns_ino(sleeper.pid(), "net").to_string();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("net\t{net}\t"))),
        "{table}"
    );
    m.write("tasks", format!("{}\n", sleeper.pid()).as_bytes())
        .unwrap();
    assert_eq!(m.read("c/tasks"), "");
    let log = m.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("membership:")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    Some(lines[0].to_owned())
}

#[test]
fn daemon_says_which_path_it_takes() {
    let Some(line) = daemon_reads_members("daemon_says_which_path_it_takes") else {
        return;
    };
    if std::env::var(kview::FORCE_ENV).is_ok() {
        return;
    }
    let bpf = matches!(Membership::choose(), (Membership::Kernel(_), _));
    assert_eq!(line.contains("BPF task iterator pass"), bpf, "{line}");
}

/// `NSPROXYFS_KVIEW=proc` forces the `/proc` path: this test runs itself
/// again with it set, and the daemon it starts then reads `/proc`, says
/// so, and answers as above.
#[test]
fn forced_fallback() {
    if !require_privileges("forced_fallback") {
        return;
    }
    if std::env::var(kview::FORCE_ENV).is_err() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "forced_fallback",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(kview::FORCE_ENV, "proc")
            .output()
            .expect("run this test again");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    let (m, why) = Membership::choose();
    assert_eq!(m.path(), "proc");
    assert_eq!(why.as_deref(), Some("NSPROXYFS_KVIEW=proc"));
    let line = daemon_reads_members("forced_fallback").unwrap();
    assert!(line.contains("reading /proc"), "{line}");
    assert!(line.contains("NSPROXYFS_KVIEW=proc"), "{line}");
}

/// A python process that calls unshare(2) itself, without an exec, each
/// time it is told to: `unshare(flags)` then prints `done`.
struct BareUnshare {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl BareUnshare {
    fn start(flags: u32) -> BareUnshare {
        let script = format!(
            "import ctypes, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             print('ready', flush=True)\n\
             while sys.stdin.readline():\n\
             \x20   assert libc.unshare({flags}) == 0, ctypes.get_errno()\n\
             \x20   print('done', flush=True)\n"
        );
        let (child, stdin, stdout) = python_with_pipes(&script);
        let mut p = BareUnshare {
            child,
            stdin,
            stdout,
        };
        assert_eq!(p.line(), "ready");
        p
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read python3");
        line.trim_end().to_owned()
    }

    /// Makes it unshare and waits until the call returned.
    fn unshare(&mut self) {
        use std::io::Write;
        writeln!(self.stdin, "go").unwrap();
        self.stdin.flush().unwrap();
        assert_eq!(self.line(), "done");
    }
}

impl Drop for BareUnshare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const CLONE_NEWUTS: u32 = 0x0400_0000;
const CLONE_NEWNET: u32 = 0x4000_0000;

/// A reused pass never hides a change: after a bare unshare(2) returned,
/// the next read sees the process in its new set and out of its old one.
#[test]
fn reuse_never_hides_an_unshare() {
    let Some(kernel) = kernel_path("reuse_never_hides_an_unshare", &["python3"]) else {
        return;
    };
    let mut p = BareUnshare::start(CLONE_NEWUTS | CLONE_NEWNET);
    let pid = p.pid();
    let old = kernel.processes().unwrap();
    let old = old.iter().find(|r| r.pid == pid).unwrap().set().unwrap();
    assert!(kernel.members(&old, &[]).unwrap().contains(&pid));
    // Twice, so the second read may reuse the first's pass.
    assert!(kernel.members(&old, &[]).unwrap().contains(&pid));
    p.unshare();
    let new: [u64; 8] = std::array::from_fn(|i| {
        let kind = Kind::ALL[i];
        procfs::ns_inode(pid, kind).unwrap()
    });
    assert_ne!(new, old);
    assert_eq!(kernel.members(&new, &[]).unwrap(), vec![pid]);
    assert!(!kernel.members(&old, &[]).unwrap().contains(&pid));
    assert_eq!(Membership::Proc.members(&new, &[]).unwrap(), vec![pid]);
}

/// Counting during bursts of reads: a lone read counts nothing, the
/// second of two close reads starts counting, a reused pass still never
/// hides an unshare, and the programs are detached once reads stop, after
/// which reads are fresh passes again and still see every change.
#[test]
fn bursts_of_reads_count_and_never_hide_an_unshare() {
    let test = "bursts_of_reads_count_and_never_hide_an_unshare";
    if !require_privileges(test) || !require_tools(test, &["python3"]) {
        return;
    }
    let (kernel, why) = Membership::choose_with("", kview::bpf::Counting::Bursts);
    let iter = match &kernel {
        Membership::Kernel(iter) if iter.counting() == kview::bpf::Counting::Bursts => iter,
        _ => {
            assert!(
                std::env::var("CI").is_err(),
                "no counting under CI: {why:?}"
            );
            note(&format!("{test}: skipped: {why:?}"));
            return;
        }
    };
    // No other process can see the switches of a burst-counting source.
    assert_eq!(kernel.switches(), None);
    let mut p = BareUnshare::start(CLONE_NEWUTS);
    let pid = p.pid();
    let set_of = |pid: i32| -> [u64; 8] {
        std::array::from_fn(|i| procfs::ns_inode(pid, Kind::ALL[i]).unwrap())
    };
    let old = set_of(pid);
    std::thread::sleep(kview::bpf::BURST_GAP);
    assert!(kernel.members(&old, &[]).unwrap().contains(&pid));
    assert!(
        !iter.counting_now(),
        "a lone read attached the counting programs"
    );
    assert!(kernel.members(&old, &[]).unwrap().contains(&pid));
    assert!(
        iter.counting_now(),
        "the second close read did not start counting"
    );
    p.unshare();
    let new = set_of(pid);
    assert_ne!(new, old);
    assert_eq!(kernel.members(&new, &[]).unwrap(), vec![pid]);
    assert!(!kernel.members(&old, &[]).unwrap().contains(&pid));
    // Reads stop: the burst ends once BURST_IDLE has passed, not before.
    assert!(iter.end_idle_burst() > std::time::Duration::ZERO);
    assert!(iter.counting_now());
    std::thread::sleep(kview::bpf::BURST_IDLE);
    iter.end_idle_burst();
    assert!(!iter.counting_now(), "the burst did not end");
    // Not counted now: a change is still seen, by a fresh pass.
    p.unshare();
    let newer = set_of(pid);
    assert_ne!(newer, new);
    assert_eq!(kernel.members(&newer, &[]).unwrap(), vec![pid]);
    assert!(!kernel.members(&new, &[]).unwrap().contains(&pid));
}

/// The doorbell: readable after a bare unshare(2), not before, and quiet
/// again once emptied.
#[test]
fn a_switch_rings_the_doorbell() {
    let test = "a_switch_rings_the_doorbell";
    if !require_privileges(test) || !require_tools(test, &["python3"]) {
        return;
    }
    let (kernel, why) = Membership::choose();
    let Some(bell) = kernel.doorbell() else {
        assert!(
            std::env::var("CI").is_err(),
            "no doorbell under CI: {why:?}"
        );
        note(&format!("{test}: skipped: {why:?}"));
        return;
    };
    let readable = |limit_ms: u64| {
        nsproxyfs::sys::fs::wait_readable(bell, std::time::Duration::from_millis(limit_ms)).unwrap()
    };
    let mut p = BareUnshare::start(CLONE_NEWUTS);
    // Other processes on the host may switch too: empty it until quiet.
    for _ in 0..100 {
        kernel.clear_doorbell();
        if !readable(0) {
            break;
        }
    }
    let before = kernel.switches().unwrap();
    p.unshare();
    assert!(readable(5_000), "no ring after an unshare");
    assert!(kernel.switches().unwrap() > before);
    kernel.clear_doorbell();
    assert!(!readable(0) || kernel.switches().unwrap() > before + 1);
}

/// With the BPF path, discovery sees a set made by a bare unshare(2) at
/// its next look (every 100 ms), not at the next full read 30 s later.
#[test]
fn discovery_sees_a_bare_unshare() {
    let test = "discovery_sees_a_bare_unshare";
    if !require_privileges(test) || !require_tools(test, &["python3"]) {
        return;
    }
    if Membership::choose().0.path() != "bpf" {
        assert!(std::env::var("CI").is_err(), "no BPF path under CI");
        note(&format!("{test}: skipped: no BPF path here"));
        return;
    }
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let mut p = BareUnshare::start(CLONE_NEWUTS);
    m.watch_pid(p.pid());
    // Let the daemon's first full read pass, then unshare.
    std::thread::sleep(std::time::Duration::from_millis(500));
    p.unshare();
    let uts = ns_ino(p.pid(), "uts");
    m.step.set("wait for the unshared set under .discovered");
    // Far below the 30 s between full reads.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let found = std::fs::read_dir(m.path(".discovered"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::metadata(e.path().join("uts")).is_ok_and(|md| {
                    use std::os::unix::fs::MetadataExt;
                    md.ino() == uts
                })
            });
        if found {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the unshared set did not appear within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A python process in a uts namespace of its own (a bare unshare(2)),
/// which then forks, forks and execs, and kills children when told to,
/// printing each new child's pid; its children die with it. None of this
/// is a setns(2) or an unshare(2): the kernel view learns of it from its
/// fork, exec and exit records alone.
struct Forker {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl Forker {
    fn start() -> Forker {
        let script = format!(
            "import ctypes, os, signal, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             assert libc.unshare({CLONE_NEWUTS}) == 0, ctypes.get_errno()\n\
             print('ready', flush=True)\n\
             for line in sys.stdin:\n\
             \x20   cmd = line.split()\n\
             \x20   if cmd[0] == 'fork':\n\
             \x20       pid = os.fork()\n\
             \x20       if pid == 0:\n\
             \x20           libc.prctl(1, signal.SIGKILL)\n\
             \x20           while True: signal.pause()\n\
             \x20       print(pid, flush=True)\n\
             \x20   elif cmd[0] == 'exec':\n\
             \x20       r, w = os.pipe()\n\
             \x20       pid = os.fork()\n\
             \x20       if pid == 0:\n\
             \x20           libc.prctl(1, signal.SIGKILL)\n\
             \x20           os.close(r)\n\
             \x20           os.set_inheritable(w, True)\n\
             \x20           os.execvp('sh', ['sh', '-c', 'echo x >&%d; exec sleep 1000' % w])\n\
             \x20       os.close(w)\n\
             \x20       os.read(r, 2)\n\
             \x20       os.close(r)\n\
             \x20       print(pid, flush=True)\n\
             \x20   elif cmd[0] == 'kill':\n\
             \x20       os.kill(int(cmd[1]), signal.SIGKILL)\n\
             \x20       os.waitpid(int(cmd[1]), 0)\n\
             \x20       print('done', flush=True)\n"
        );
        let (child, stdin, stdout) = python_with_pipes(&script);
        let mut p = Forker {
            child,
            stdin,
            stdout,
        };
        assert_eq!(p.ask(None), "ready");
        p
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `cmd` (if any) and returns the answer line, once the
    /// command's system calls have returned.
    fn ask(&mut self, cmd: Option<&str>) -> String {
        use std::io::{BufRead, Write};
        if let Some(cmd) = cmd {
            writeln!(self.stdin, "{cmd}").unwrap();
            self.stdin.flush().unwrap();
        }
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("read python3");
        line.trim_end().to_owned()
    }

    fn spawn(&mut self, cmd: &str) -> i32 {
        self.ask(Some(cmd)).parse().expect("a child's pid")
    }
}

impl Drop for Forker {
    fn drop(&mut self) {
        // Its children die with it (PR_SET_PDEATHSIG).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With the counting programs, the answers follow forks, execs and exits
/// in a set exactly, read after read, as the `/proc` path gives them: a
/// child is a member as soon as its fork returned, an exec'd child stays
/// one, and a killed and reaped child is gone. (Whether a read reuses the
/// index or makes a new pass depends on setns(2)/unshare(2) calls
/// elsewhere on the host; the answers must be the same either way.)
#[test]
fn index_follows_forks_execs_and_exits() {
    let test = "index_follows_forks_execs_and_exits";
    if !require_privileges(test) || !require_tools(test, &["python3"]) {
        return;
    }
    let (kernel, why) = Membership::choose();
    if kernel.switches().is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "no counting under CI: {why:?}"
        );
        note(&format!("{test}: skipped: {why:?}"));
        return;
    }
    let mut p = Forker::start();
    let set = procfs::ns_set(p.pid() as u32).unwrap();
    let check = |want: &[i32]| {
        let mut want = want.to_vec();
        want.sort_unstable();
        assert_eq!(kernel.members(&set, &[]).unwrap(), want);
        assert_eq!(Membership::Proc.members(&set, &[]).unwrap(), want);
    };
    let me = p.pid();
    check(&[me]);
    check(&[me]);
    let mut children = Vec::new();
    for round in 0..3 {
        let a = p.spawn("fork");
        children.push(a);
        check(&[&[me][..], &children].concat());
        let b = p.spawn("exec");
        children.push(b);
        check(&[&[me][..], &children].concat());
        let gone = children.remove(round % children.len());
        assert_eq!(p.ask(Some(&format!("kill {gone}"))), "done");
        check(&[&[me][..], &children].concat());
    }
    for c in children.clone() {
        assert_eq!(p.ask(Some(&format!("kill {c}"))), "done");
    }
    check(&[me]);
}

/// Set in the environment of this test run again inside a new pid
/// namespace.
const INNER: &str = "NSPROXYFS_KVIEW_TEST_INNER";

/// A reader in a child pid namespace: the iterator (its reader's level
/// is then 1, numbers copied from the task's struct pid) and the index's
/// records give the pids that namespace's `/proc` gives, and the same
/// sets. The test runs itself again under `unshare --pid --fork
/// --mount-proc`, where it is pid 1.
#[test]
fn a_reader_in_a_child_pid_namespace_gets_its_own_numbers() {
    let test = "a_reader_in_a_child_pid_namespace_gets_its_own_numbers";
    if std::env::var(INNER).is_err() {
        if !require_privileges(test) || !require_tools(test, &["unshare", "sleep"]) {
            return;
        }
        if Membership::choose().0.path() != "bpf" {
            assert!(std::env::var("CI").is_err(), "no BPF path under CI");
            note(&format!("{test}: skipped: no BPF path here"));
            return;
        }
        let out = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(INNER, "1")
            .output()
            .expect("run this test again in a new pid namespace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("1 passed"), "{text}");
        return;
    }
    assert_eq!(std::process::id(), 1, "not pid 1 of a new pid namespace");
    let (kernel, why) = Membership::choose();
    assert_eq!(kernel.path(), "bpf", "{why:?}");
    let proc = Membership::Proc;
    let mut sleepers: Vec<Proc_> = (0..3)
        .map(|_| Proc_(Command::new("sleep").arg("1000").spawn().unwrap()))
        .collect();
    // Nothing else runs in this namespace: both paths see the same.
    let seen = by_pid(&kernel.processes().unwrap());
    assert_eq!(seen, by_pid(&proc.processes().unwrap()));
    let pids: Vec<i32> = seen.keys().copied().collect();
    let mut want: Vec<i32> = vec![1];
    want.extend(sleepers.iter().map(|s| s.0.id() as i32));
    want.sort_unstable();
    assert_eq!(pids, want);
    let set = procfs::ns_set(1).unwrap();
    assert_eq!(kernel.members(&set, &[]).unwrap(), want);
    // Forks and exits after the index's pass, numbered here by the
    // tracepoints' records (when the counting programs run).
    sleepers.push(Proc_(Command::new("sleep").arg("1000").spawn().unwrap()));
    drop(sleepers.remove(0));
    let mut want: Vec<i32> = vec![1];
    want.extend(sleepers.iter().map(|s| s.0.id() as i32));
    want.sort_unstable();
    assert_eq!(kernel.members(&set, &[]).unwrap(), want);
    assert_eq!(proc.members(&set, &[]).unwrap(), want);
}

/// `python3 -c script`, with its standard input and output piped to us.
fn python_with_pipes(
    script: &str,
) -> (
    std::process::Child,
    std::process::ChildStdin,
    std::io::BufReader<std::process::ChildStdout>,
) {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3");
    let stdin = child.stdin.take().expect("piped stdin");
    let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    (child, stdin, stdout)
}

/// A process of four threads, sleeping: one plain, one in a uts namespace
/// and with a descriptor table of its own, one with a seccomp filter (that
/// allows everything), and the main thread. Prints `READY` once all are in
/// place.
const THREADS_SCRIPT: &str = r#"
import ctypes, threading, time
libc = ctypes.CDLL(None, use_errno=True)
ready = threading.Barrier(4)
def plain():
    ready.wait(); time.sleep(1000)
def own_uts():
    if libc.unshare(0x04000000 | 0x400) != 0: print("FAIL unshare", flush=True)
    ready.wait(); time.sleep(1000)
class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]
def filtered():
    allow = (Insn * 1)(Insn(0x06, 0, 0, 0x7fff0000))
    prog = Prog(1, allow)
    if libc.prctl(38, 1, 0, 0, 0) != 0 or libc.prctl(22, 2, ctypes.byref(prog), 0, 0) != 0:
        print("FAIL seccomp", flush=True)
    ready.wait(); time.sleep(1000)
for f in (plain, own_uts, filtered):
    threading.Thread(target=f, daemon=True).start()
ready.wait()
print("READY", flush=True)
time.sleep(1000)
"#;

/// Starts [`THREADS_SCRIPT`] and waits for its `READY`.
fn four_threads(wd: &Watched) -> (Proc_, std::process::ChildStdin) {
    use std::io::BufRead;
    let (child, stdin, mut stdout) = python_with_pipes(THREADS_SCRIPT);
    wd.watch_pid(child.id() as i32);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the target");
    assert_eq!(line.trim(), "READY");
    (Proc_(child), stdin)
}

/// The kernel's own answer to whether threads `a` and `b` use one
/// descriptor table: kcmp(2) with `KCMP_FILES`.
fn kcmp_files(a: i32, b: i32) -> bool {
    const KCMP_FILES: libc::c_int = 2;
    // SAFETY: kcmp takes integers and reads no memory of ours.
    let ret = unsafe { libc::syscall(libc::SYS_kcmp, a, b, KCMP_FILES, 0usize, 0usize) };
    assert!(
        ret >= 0,
        "kcmp {a} {b}: {}",
        std::io::Error::last_os_error()
    );
    ret == 0
}

/// The `Seccomp:` field of thread `tid`'s status.
fn seccomp_of(pid: i32, tid: i32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Seccomp: line")
}

/// One BPF read of a process lists its threads as `/proc/PID/task` does,
/// each with the namespaces its `/proc/TID/ns` links name and the seccomp
/// mode its status shows; a process that is gone reads as nothing.
#[test]
fn one_process_reads_as_proc_does() {
    let test = "one_process_reads_as_proc_does";
    let Some(kernel) = kernel_path(test, &["python3"]) else {
        return;
    };
    let prog = kernel
        .thread_program()
        .expect("a kernel that reads one thread");
    let wd = Watched::start(test);
    let (target, _stdin) = four_threads(&wd);
    let pid = target.0.id() as i32;
    wd.step.set("reading the process in one call");
    let read = kview::bpf::read_process(prog, pid as u32)
        .expect("read")
        .expect("every record one of its threads");
    assert!(read.whole, "four records come in one read");
    let threads = read.threads;
    let tids: Vec<i32> = threads.iter().map(|t| t.proc.pid).collect();
    let mut listed = procfs::tasks(pid).expect("list");
    listed.sort();
    let mut sorted = tids.clone();
    sorted.sort();
    assert_eq!(sorted, listed);
    let mut modes = Vec::new();
    for t in &threads {
        let tid = t.proc.pid;
        assert_eq!(t.leader, pid);
        for kind in Kind::ALL {
            let link = procfs::ns_link_inode(tid, kind.proc_entry());
            assert_eq!(t.proc.entry(kind), link, "thread {tid} {kind:?}");
        }
        let mode = t.seccomp.expect("this kernel has seccomp");
        assert_eq!(mode, seccomp_of(pid, tid), "thread {tid}");
        modes.push(mode);
        assert_eq!(
            t.shares_leader_files,
            kcmp_files(pid, tid),
            "thread {tid}: the same descriptor table as the leader"
        );
    }
    modes.sort();
    assert_eq!(modes, [0, 0, 0, 2]);
    let own_tables = threads.iter().filter(|t| !t.shares_leader_files).count();
    assert_eq!(
        own_tables, 1,
        "one thread has a descriptor table of its own"
    );
    let uts: BTreeSet<u64> = threads
        .iter()
        .filter_map(|t| t.proc.entry(Kind::Uts))
        .collect();
    assert_eq!(uts.len(), 2, "one thread in a uts namespace of its own");
    drop(target);
    let gone = kview::bpf::read_process(prog, pid as u32).ok().flatten();
    assert!(gone.is_none(), "{gone:?}");
}

/// A process of `n` threads, sleeping; killed on drop.
fn many_threads(wd: &Watched, n: usize) -> (Proc_, std::process::ChildStdin) {
    use std::io::BufRead;
    let script = format!(
        "import threading, time\n\
         ready = threading.Barrier({n})\n\
         def sleep():\n    ready.wait(); time.sleep(1000)\n\
         for _ in range({n} - 1): threading.Thread(target=sleep, daemon=True).start()\n\
         ready.wait()\nprint('READY', flush=True)\ntime.sleep(1000)\n"
    );
    let (child, stdin, mut stdout) = python_with_pipes(&script);
    wd.watch_pid(child.id() as i32);
    let mut line = String::new();
    stdout.read_line(&mut line).expect("read the target");
    assert_eq!(line.trim(), "READY");
    (Proc_(child), stdin)
}

/// [`kernel_path`] for a test that moves processes in-process (with
/// `python3` and `unshare`): the one-thread program is handed to the
/// moves of this test binary, as the daemon hands it to an injector. Only
/// the first program given is kept (another test of this binary may have
/// given one): either serves.
fn kernel_path_for_moves(test: &str) -> Option<Membership> {
    let kernel = kernel_path(test, &["python3", "unshare"])?;
    let prog = kernel
        .thread_program()
        .expect("a kernel that reads one thread");
    nsproxyfs::transfer::read_threads_with(prog.try_clone_to_owned().expect("dup"));
    Some(kernel)
}

/// A `sleep` in fresh namespaces of the kinds `unshare_args` names (uts
/// among them), watched, once its uts namespace is its own; and its pid.
fn unshared_holder(wd: &Watched, unshare_args: &[&str]) -> (Proc_, i32) {
    let holder = Command::new("unshare")
        .args(unshare_args)
        .args(["--", "sleep", "1000"])
        .spawn()
        .expect("unshare");
    wd.watch_pid(holder.id() as i32);
    let holder = Proc_(holder);
    let hpid = holder.0.id() as i32;
    wait_for("the holder's namespaces", || {
        procfs::ns_link_inode(hpid, "uts") != procfs::ns_link_inode(1, "uts")
    });
    (holder, hpid)
}

/// A process with more threads than one read of the kernel's takes: the
/// read comes in pieces and says so (a resumed walk can leave threads
/// out), yet has every thread here (none ends meanwhile). One with as
/// many threads as one read takes is not taken for whole either; one
/// with a thread fewer is. A move of the big one
/// lists its threads through `/proc` and still reads each one from the
/// kernel once all are stopped.
#[test]
fn a_read_in_pieces_is_not_taken_for_the_whole_list() {
    let test = "a_read_in_pieces_is_not_taken_for_the_whole_list";
    let Some(kernel) = kernel_path_for_moves(test) else {
        return;
    };
    let prog = kernel.thread_program().expect("checked");
    let wd = Watched::start(test);
    // The kernel's buffer for one read of an iterator is eight pages.
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as usize;
    // As many threads as one read takes (the kernel leaves a record that
    // would fill its buffer exactly for the next read): one piece, then
    // nothing, which is also what a walk cut there, resumed at a thread
    // that ended meanwhile, looks like; so not taken for the whole list.
    // One fewer left room, and is.
    let fit = (8 * page - 1) / kview::bpf::THREAD_RECORD;
    for (n, whole) in [(fit - 1, true), (fit, false)] {
        wd.step.set(&format!("reading {n} threads"));
        let (target, _stdin) = many_threads(&wd, n);
        let pid = target.0.id() as i32;
        let read = kview::bpf::read_process(prog, pid as u32)
            .expect("read")
            .expect("every record one of its threads");
        assert_eq!(read.threads.len(), n);
        assert_eq!(read.whole, whole, "{n} threads, {fit} records fit one read");
        drop(target);
    }
    let n = fit + 60;
    let (target, _stdin) = many_threads(&wd, n);
    let pid = target.0.id() as i32;
    wd.step.set("reading the threads");
    let read = kview::bpf::read_process(prog, pid as u32)
        .expect("read")
        .expect("every record one of its threads");
    assert!(!read.whole, "{n} records do not fit one read");
    let mut tids: Vec<i32> = read.threads.iter().map(|t| t.proc.pid).collect();
    tids.sort();
    assert_eq!(tids, procfs::tasks(pid).expect("list"));
    let (holder, hpid) = unshared_holder(&wd, &["--uts"]);
    wd.step.set("moving the threads");
    let handle = nsproxyfs::transfer::ProcessHandle::open(pid).expect("pin");
    let report =
        nsproxyfs::transfer::move_process(&handle, hpid, nix::sched::CloneFlags::CLONE_NEWUTS)
            .expect("move");
    assert_eq!(report.threads, n);
    assert!(report.kernel_read, "{report:?}");
    for tid in procfs::tasks(pid).expect("list") {
        assert_eq!(
            procfs::ns_link_inode(tid, "uts"),
            procfs::ns_link_inode(hpid, "uts"),
            "thread {tid}"
        );
    }
    drop(target);
    drop(holder);
}

/// A move that reads the stopped threads in one kernel call: every thread
/// moves, the one in a uts namespace of its own included (the move is of
/// ipc, and the thread that differs in uts makes uts change for all), and
/// the report says the kernel was read.
#[test]
fn a_move_reads_the_stopped_threads_in_one_kernel_call() {
    let test = "a_move_reads_the_stopped_threads_in_one_kernel_call";
    if kernel_path_for_moves(test).is_none() {
        return;
    }
    let wd = Watched::start(test);
    let (holder, hpid) = unshared_holder(&wd, &["--uts", "--ipc"]);
    let (target, _stdin) = four_threads(&wd);
    let pid = target.0.id() as i32;
    wd.step.set("moving the target");
    let handle = nsproxyfs::transfer::ProcessHandle::open(pid).expect("pin");
    let report =
        nsproxyfs::transfer::move_process(&handle, hpid, nix::sched::CloneFlags::CLONE_NEWIPC)
            .expect("move");
    assert_eq!(report.threads, 4);
    assert!(report.kernel_read, "{report:?}");
    for tid in procfs::tasks(pid).expect("list") {
        for kind in ["ipc", "uts"] {
            assert_eq!(
                procfs::ns_link_inode(tid, kind),
                procfs::ns_link_inode(hpid, kind),
                "thread {tid} {kind}"
            );
        }
    }
    drop(target);
    drop(holder);
}

//! The kernel's view ([`nsproxyfs::kview`]): the BPF task iterator and the
//! `/proc` path give the same answers on this host, for processes spread
//! over fresh namespaces of every kind; and the `/proc` path can be forced.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use nsproxyfs::kview::{self, Membership, Proc};
use nsproxyfs::ns::Kind;

/// Processes in fresh namespaces, each a different mix; killed on drop.
fn spread() -> Vec<Proc_> {
    let scripts: [&[&str]; 7] = [
        &["--net", "--uts"],
        &["--ipc", "--cgroup"],
        // A pid namespace with no process in it yet: its
        // pid_for_children link cannot be read.
        &["--pid"],
        // The same, with its init.
        &["--pid", "--fork", "--mount-proc"],
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

#[test]
fn bpf_and_proc_agree() {
    if !require_privileges("bpf_and_proc_agree")
        || !require_tools("bpf_and_proc_agree", &["unshare"])
    {
        return;
    }
    let kernel = match Membership::choose() {
        (m @ Membership::Kernel(_), _) => m,
        (_, why) => {
            assert!(
                std::env::var("CI").is_err(),
                "no BPF path under CI: {why:?}"
            );
            note(&format!("bpf_and_proc_agree: skipped: {why:?}"));
            return;
        }
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
        if after.get(pid) != Some(p) {
            continue;
        }
        assert_eq!(seen.get(pid), Some(p), "pid {pid}");
        compared += 1;
    }
    assert!(compared > 10, "only {compared} stable processes");
    // Kernel threads are there, flagged, as /proc shows them.
    assert!(seen.values().any(|p| p.kthread));
    for child in &procs {
        let pid = child.0.id() as i32;
        let p = seen.get(&pid).unwrap_or_else(|| panic!("{pid} missing"));
        assert_eq!(Some(p), before.get(&pid));
        // Each of them is the one member of its set, on both paths.
        if let Some(set) = p.set() {
            let first: Vec<Kind> = Kind::ALL.to_vec();
            assert_eq!(kernel.members(&set, &first).unwrap(), vec![pid]);
            assert_eq!(proc.members(&set, &first).unwrap(), vec![pid]);
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

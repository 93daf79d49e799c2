//! A container's `.cgroups` through a real mount: set, read, inherited,
//! linked, emptied, removed and kept across a restart; a move into a
//! container with one joins its cgroups with its namespaces, all or
//! nothing. Every cgroup is one the test makes under a directory of its
//! own and removes; only processes the test started are moved.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::cgroups::*;
use common::*;
use nsproxyfs::cgroup::{Cgroup, Hierarchies, Hierarchy, Membership};

/// The unprivileged user of the refusal test.
const USER: u32 = 1000;

/// The host's hierarchies, if the test can run here.
fn host(test: &str) -> Option<Hierarchies> {
    if !require_privileges(test) || !require_tools(test, &["setpriv", "sleep", "strace"]) {
        return None;
    }
    Some(Hierarchies::of_host().expect("read the host's cgroup hierarchies"))
}

/// Cgroup `rel` of this test in every hierarchy of `which`.
fn made(own: &Own, which: &[Hierarchy], rel: &str) -> Vec<Cgroup> {
    which.iter().map(|h| own.make(h, rel)).collect()
}

/// Checks that `pid` sits in each of `cgroups`.
fn assert_in(pid: i32, cgroups: &[Cgroup], what: &str) {
    for c in cgroups {
        assert_eq!(placed(pid, &c.hierarchy), c.path, "{what}: {c}");
    }
}

/// Runs `/usr/bin/python3 -c SCRIPT ARGS` as `uid` with CAP_SYS_ADMIN and
/// CAP_SYS_PTRACE only (what nsproxyfs asks of a mover, but no right over
/// the cgroups), and returns what it printed.
fn as_user(uid: u32, script: &str, args: &[&str]) -> String {
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args([
            "--inh-caps=+sys_admin,+sys_ptrace",
            "--ambient-caps=+sys_admin,+sys_ptrace",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run setpriv");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A process this test started indirectly, killed when dropped.
struct Killed(i32);

impl Drop for Killed {
    fn drop(&mut self) {
        // A pid this test started: strace's child, which is reaped by
        // strace or, once strace is gone, by init.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Opens FILE for writing and writes TEXT: prints 0 or the errno.
const WRITE: &str = "import os, sys\n\
    try:\n    fd = os.open(sys.argv[1], os.O_WRONLY)\n    os.write(fd, sys.argv[2].encode())\n    print(0)\n\
    except OSError as e:\n    print(e.errno)\n";

#[test]
fn cgroups_file_is_set_read_inherited_linked_emptied_removed_and_kept() {
    let Some(h) = host("cgroups_file") else {
        return;
    };
    let which = chosen(&h);
    let own = Own::new(&h, &which, "file");
    let a = made(&own, &which, "a");
    let b = made(&own, &which, "b");
    let text_a = Membership::from_cgroups(a.clone()).to_string();
    let mut m = Mount::new("cgroups_file").unwrap();
    for dir in ["web", "web/db", "other", "third"] {
        std::fs::create_dir(m.path(dir)).unwrap();
    }
    m.step
        .set("no binding: no file, moves change namespaces only");
    assert_eq!(errno(std::fs::read(m.path("web/.cgroups"))), libc::ENOENT);
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(m.path(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    };
    assert!(!names("web").contains(&".cgroups".to_owned()));

    m.step
        .set("set by lines of /proc/PID/cgroup, read back, listed");
    std::fs::write(m.path("web/.cgroups"), &text_a).unwrap();
    assert_eq!(m.read("web/.cgroups"), text_a);
    assert!(names("web").contains(&".cgroups".to_owned()));
    assert!(!names("web/db").contains(&".cgroups".to_owned()));

    m.step
        .set("inherited: a move into web/db joins web's cgroups");
    let p = sleeper(0);
    m.write("web/db/tasks", p.pid().to_string().as_bytes())
        .unwrap();
    assert_in(p.pid(), &a, "moved into web/db");

    m.step.set("set by a pid: the cgroups that process is in");
    let q = sleeper(0);
    for c in &b {
        put(&own, c, q.pid());
    }
    m.write("other/.cgroups", q.pid().to_string().as_bytes())
        .unwrap();
    let of_q = h.reachable(&Membership::of_process(q.pid()).unwrap());
    assert_eq!(m.read("other/.cgroups"), of_q.to_string());

    m.step
        .set("ln: one binding under two names; ln onto a binding is EEXIST");
    std::fs::hard_link(m.path("web/.cgroups"), m.path("third/.cgroups")).unwrap();
    let (w, t) = (
        std::fs::metadata(m.path("web/.cgroups")).unwrap(),
        std::fs::metadata(m.path("third/.cgroups")).unwrap(),
    );
    assert_eq!((w.ino(), w.nlink()), (t.ino(), 2));
    assert_eq!(
        errno(std::fs::hard_link(
            m.path("web/.cgroups"),
            m.path("other/.cgroups")
        )),
        libc::EEXIST
    );
    assert_eq!(
        errno(std::fs::hard_link(
            m.path("web/.cgroups"),
            m.path("other/net")
        )),
        libc::EINVAL
    );
    m.step.set("a write changes every name");
    std::fs::write(m.path("third/.cgroups"), m.read("other/.cgroups")).unwrap();
    assert_eq!(m.read("web/.cgroups"), of_q.to_string());
    m.step.set("ln -f replaces a binding");
    let out = sh(&format!(
        "ln -f {} {}",
        m.path("web/.cgroups").display(),
        m.path("other/.cgroups").display()
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::metadata(m.path("other/.cgroups")).unwrap().ino(),
        w.ino()
    );

    m.step.set("refused writes change nothing");
    for (bad, want) in [
        ("0::relative\n", libc::EINVAL),
        ("0::/a\n0::/b\n", libc::EINVAL),
        (
            &*format!("{}/no-such-cgroup\n", a[0].to_string().trim_end()),
            libc::ENOENT,
        ),
    ] {
        assert_eq!(
            errno(write_once(&m.path("web/.cgroups"), bad.as_bytes())),
            want,
            "{bad:?}"
        );
        assert_eq!(m.read("web/.cgroups"), of_q.to_string(), "{bad:?}");
    }

    m.step
        .set("an empty binding stops inheritance: a move joins nothing");
    std::fs::File::create(m.path("web/db/.cgroups")).unwrap();
    assert_eq!(m.read("web/db/.cgroups"), "");
    for c in &a {
        put(&own, c, p.pid());
    }
    m.write("web/db/tasks", p.pid().to_string().as_bytes())
        .unwrap();
    assert_in(p.pid(), &a, "moved into an empty binding");

    m.step.set("restart keeps bindings, shared ones shared");
    m.stop();
    m.restart();
    assert_eq!(m.read("web/.cgroups"), of_q.to_string());
    assert_eq!(m.read("web/db/.cgroups"), "");
    assert_eq!(
        std::fs::metadata(m.path("web/.cgroups")).unwrap().ino(),
        std::fs::metadata(m.path("third/.cgroups")).unwrap().ino()
    );

    m.step.set("rm: inherits again");
    std::fs::remove_file(m.path("web/db/.cgroups")).unwrap();
    assert_eq!(
        errno(std::fs::read(m.path("web/db/.cgroups"))),
        libc::ENOENT
    );
    m.write("web/db/tasks", p.pid().to_string().as_bytes())
        .unwrap();
    assert_in(p.pid(), &b, "moved into web/db after rm");
    drop((p, q));
    m.umount();
}

#[test]
fn a_move_joins_cgroups_and_namespaces_all_or_nothing() {
    let Some(h) = host("cgroups_move") else {
        return;
    };
    let which = chosen(&h);
    let own = Own::new(&h, &which, "move");
    let from = made(&own, &which, "from");
    let to = made(&own, &which, "to");
    let mut m = Mount::new("cgroups_move").unwrap();
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let uts = m.bound_ino("c/uts");
    std::fs::write(
        m.path("c/.cgroups"),
        Membership::from_cgroups(to.clone()).to_string(),
    )
    .unwrap();

    m.step.set("a move joins the cgroups and the namespaces");
    let p = sleeper(0);
    for c in &from {
        put(&own, c, p.pid());
    }
    m.write("c/tasks", p.pid().to_string().as_bytes()).unwrap();
    assert_in(p.pid(), &to, "moved");
    assert_eq!(ns_ino(p.pid(), "uts"), uts);

    m.step
        .set("a caller without rights over the cgroups: the kernel's errno");
    let u = sleeper(USER);
    for c in &from {
        put(&own, c, u.pid());
    }
    let before_uts = ns_ino(u.pid(), "uts");
    let tasks = m.path("c/tasks");
    let ours: i32 = as_user(
        USER,
        WRITE,
        &[tasks.to_str().unwrap(), &u.pid().to_string()],
    )
    .parse()
    .unwrap();
    let procs = own.dir(&to[0]).join(nsproxyfs::cgroup::PROCS);
    let kernels: i32 = as_user(
        USER,
        WRITE,
        &[procs.to_str().unwrap(), &u.pid().to_string()],
    )
    .parse()
    .unwrap();
    assert_ne!(kernels, 0, "the kernel lets uid {USER} into {}", to[0]);
    assert_eq!(ours, kernels, "nsproxyfs and the kernel disagree");
    assert_in(u.pid(), &from, "refused join");
    assert_eq!(ns_ino(u.pid(), "uts"), before_uts, "refused join");

    m.step
        .set("a failed namespace move leaves the cgroups as they were");
    // A process traced by someone else: the mover cannot seize it.
    let tracer = Proc(
        Command::new("strace")
            .args(["-o", "/dev/null", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start strace"),
    );
    let mut traced = 0;
    wait_for("the traced sleep", || {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", tracer.pid()))
            .unwrap_or_default();
        traced = kids
            .split_whitespace()
            .next()
            .and_then(|k| k.parse().ok())
            .unwrap_or(0);
        traced != 0
            && std::fs::read_to_string(format!("/proc/{traced}/comm")).is_ok_and(|c| c == "sleep\n")
    });
    // Killing strace leaves its tracee running: killed on its own.
    let _traced = Killed(traced);
    for c in &from {
        put(&own, c, traced);
    }
    let before_uts = ns_ino(traced, "uts");
    let e = errno(m.write("c/tasks", traced.to_string().as_bytes()));
    assert_eq!(e, libc::EBUSY, "moving a traced process");
    assert_in(traced, &from, "failed namespace move");
    assert_eq!(ns_ino(traced, "uts"), before_uts);
    drop(tracer);

    m.step
        .set("a frozen target is refused with EBUSY, nothing moved");
    if let Some(unified) = to.iter().find(|c| c.hierarchy == Hierarchy::Unified) {
        let freeze = own.dir(unified).join("cgroup.freeze");
        if freeze.exists() {
            std::fs::write(&freeze, "1").unwrap();
            let q = sleeper(0);
            for c in &from {
                put(&own, c, q.pid());
            }
            let e = errno(m.write("c/tasks", q.pid().to_string().as_bytes()));
            std::fs::write(&freeze, "0").unwrap();
            assert_eq!(e, libc::EBUSY, "moving into a frozen cgroup");
            assert_in(q.pid(), &from, "frozen target");
        }
    }
    drop((p, u));
    m.umount();
}

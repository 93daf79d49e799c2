//! Joining cgroups against the host's real hierarchies: the test makes its
//! own cgroups under a directory of its own in the unified hierarchy and in
//! a v1 one (where the host has them), moves only processes it started, and
//! removes every cgroup it made.

mod common;

use std::os::unix::fs::chown;
use std::path::Path;
use std::process::{Command, Stdio};

use common::cgroups::*;
use common::*;
use nsproxyfs::cgroup::{
    Caller, Cgroup, CgroupError, Hierarchies, Hierarchy, Membership, PROCS, Targets,
};
use nsproxyfs::ns::creds::Credentials;

/// The unprivileged user the rights tests act as.
const USER: u32 = 1000;

/// The host's hierarchies, if the test can run here.
fn host(test: &str) -> Option<Hierarchies> {
    if !require_privileges(test) || !require_tools(test, &["setpriv", "sleep"]) {
        return None;
    }
    Some(Hierarchies::of_host().expect("read the host's cgroup hierarchies"))
}

fn user_creds(uid: u32) -> Credentials {
    Credentials {
        uid: [uid; 4],
        gid: [uid; 4],
        groups: Vec::new(),
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }
}

/// What the module answers when `creds` move `pid` into `cgroup`: 0 or
/// the errno.
fn ours(own: &Own, cgroup: &Cgroup, pid: i32, creds: Credentials) -> i32 {
    let caller = Caller {
        creds,
        cgroup_ns: None,
    };
    let wanted = Membership::from_cgroups([cgroup.clone()]);
    let targets = match Targets::open(&own.hierarchies, &wanted, &caller) {
        Ok(t) => t,
        Err(e) => return nsproxyfs::errno::of_cgroup(&e),
    };
    match targets.join(pid) {
        Ok(_kept) => 0,
        Err(e) => {
            assert!(e.left.is_empty(), "rollback failed: {:?}", e.left);
            nsproxyfs::errno::of_cgroup(&e.error)
        }
    }
}

/// Asks the module, then the kernel, with the process put back in `from`
/// before each, and checks they agree; returns the answer.
fn compare(own: &Own, from: &Cgroup, to: &Cgroup, pid: i32, case: &str) -> i32 {
    put(own, from, pid);
    let mine = ours(own, to, pid, user_creds(USER));
    put(own, from, pid);
    let theirs = kernels(own, to, pid, USER);
    put(own, from, pid);
    assert_eq!(
        mine,
        theirs,
        "{case}: the module says {}, the kernel {}",
        std::io::Error::from_raw_os_error(mine),
        std::io::Error::from_raw_os_error(theirs)
    );
    note(&format!(
        "{case}: {}",
        if mine == 0 {
            "allowed".to_owned()
        } else {
            std::io::Error::from_raw_os_error(mine).to_string()
        }
    ));
    mine
}

#[test]
fn a_process_joins_a_cgroup_in_every_hierarchy_at_once() {
    let Some(h) = host("cgroup_join") else { return };
    let which = chosen(&h);
    let own = Own::new(&h, &which, "join");
    let a: Vec<Cgroup> = which.iter().map(|x| own.make(x, "a")).collect();
    let b: Vec<Cgroup> = which.iter().map(|x| own.make(x, "b")).collect();
    let p = sleeper(0);
    let pid = p.pid();
    let before = Membership::of_process(pid).unwrap();

    let daemon = Caller::daemon().unwrap();
    let into_a = Targets::open(&h, &Membership::from_cgroups(a.clone()), &daemon).unwrap();
    let joined = into_a.join(pid).expect("join a");
    assert_eq!(joined.previous().len(), which.len());
    let after = Membership::of_process(pid).unwrap();
    for cg in &a {
        assert_eq!(placed(pid, &cg.hierarchy), cg.path);
        let listed = std::fs::read_to_string(own.dir(cg).join(PROCS)).unwrap();
        assert!(
            listed.lines().any(|l| l == pid.to_string()),
            "{cg}: {listed}"
        );
    }
    // Hierarchies the membership does not name are left alone.
    for c in before.iter().filter(|c| !which.contains(&c.hierarchy)) {
        assert_eq!(after.get(&c.hierarchy), Some(c), "{c} changed");
    }
    drop(joined);

    // A join undone puts the process back where it was: in a.
    let into_b = Targets::open(&h, &Membership::from_cgroups(b.clone()), &daemon).unwrap();
    let joined = into_b.join(pid).expect("join b");
    for cg in &b {
        assert_eq!(placed(pid, &cg.hierarchy), cg.path);
    }
    joined.undo().expect("undo");
    assert_eq!(Membership::of_process(pid).unwrap(), after);

    // A membership copied from /proc/PID/cgroup is one to join.
    let copied = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let copied = Membership::parse(&copied).unwrap();
    let copied = h.reachable(&copied);
    let q = sleeper(0);
    let again = Targets::open(&h, &copied, &daemon).unwrap();
    let kept = again.join(q.pid()).expect("join a copied membership");
    drop(kept);
    assert_eq!(Membership::of_process(q.pid()).unwrap(), after);
}

#[test]
fn a_refused_hierarchy_rolls_the_others_back() {
    let Some(h) = host("cgroup_rollback") else {
        return;
    };
    let which = chosen(&h);
    if which.len() < 2 {
        note("cgroup_rollback: needs two hierarchies; this host has one");
        return;
    }
    let own = Own::new(&h, &which, "rollback");
    let a: Vec<Cgroup> = which.iter().map(|x| own.make(x, "a")).collect();
    let p = sleeper(0);
    let pid = p.pid();
    let before = Membership::of_process(pid).unwrap();

    let targets = Targets::open(
        &h,
        &Membership::from_cgroups(a.clone()),
        &Caller::daemon().unwrap(),
    )
    .unwrap();
    // The last cgroup joined goes away between the check and the move: the
    // kernel refuses the write, and the hierarchies already joined are
    // restored.
    let last = a.last().unwrap();
    std::fs::remove_dir(own.dir(last)).unwrap();
    let err = targets
        .join(pid)
        .expect_err("a removed cgroup cannot be joined");
    match &err.error {
        CgroupError::Write { cgroup, errno, .. } => {
            assert_eq!(cgroup, last);
            assert_eq!(*errno, libc::ENODEV, "{err}");
        }
        e => panic!("expected the kernel's refusal, got {e}"),
    }
    assert!(err.left.is_empty(), "{:?}", err.left);
    assert_eq!(Membership::of_process(pid).unwrap(), before);
}

#[test]
fn a_caller_gets_the_kernels_answer_for_its_own_rights() {
    let Some(h) = host("cgroup_rights") else {
        return;
    };
    if !require_tools("cgroup_rights", &["python3"]) {
        return;
    }
    let which = chosen(&h);
    let own = Own::new(&h, &which, "rights");
    let procs_of = |cg: &Cgroup| own.dir(cg).join(PROCS);
    let give = |path: &Path| chown(path, Some(USER), Some(USER)).unwrap();
    let mut asked = 0;

    if which.contains(&Hierarchy::Unified) {
        let v2 = Hierarchy::Unified;
        let src = own.make(&v2, "src");
        let dst = own.make(&v2, "dst");
        let p = sleeper(USER);
        let pid = p.pid();
        // Nothing delegated: the file cannot even be opened.
        let r = compare(&own, &src, &dst, pid, "v2, not delegated");
        assert_ne!(r, 0);
        // The destination is the user's, the common ancestor is not: the
        // open succeeds, the kernel refuses the write.
        give(&own.dir(&dst));
        give(&procs_of(&dst));
        let r = compare(&own, &src, &dst, pid, "v2, destination delegated");
        assert_ne!(r, 0);
        // That refusal came at write time, from the opener's credentials:
        // the user may open the file, and root writes through it.
        let wanted = Membership::from_cgroups([dst.clone()]);
        let caller = Caller {
            creds: user_creds(USER),
            cgroup_ns: None,
        };
        let opened = Targets::open(&own.hierarchies, &wanted, &caller).expect("open as the user");
        let refused = opened
            .join(pid)
            .expect_err("the common ancestor is not the user's");
        assert_eq!(nsproxyfs::errno::of_cgroup(&refused.error), r);
        // Handed to another process (root's shell, writing to it as its
        // stdout), the descriptor still carries the user's rights.
        let (_, fd) = opened.files().next().unwrap();
        let out = Command::new("sh")
            .args(["-c", "echo $0", &pid.to_string()])
            .stdout(Stdio::from(fd.try_clone_to_owned().unwrap()))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success(), "root wrote through the user's file");
        assert_eq!(placed(pid, &v2), src.path);
        // The common ancestor's cgroup.procs is the user's too: allowed.
        give(&procs_of(own.top(&v2)));
        let r = compare(&own, &src, &dst, pid, "v2, common ancestor delegated");
        assert_eq!(r, 0);
        asked += 1;
    }
    if let Some(v1) = which.iter().find(|x| **x != Hierarchy::Unified) {
        let src = own.make(v1, "src");
        let dst = own.make(v1, "dst");
        give(&own.dir(&dst));
        give(&procs_of(&dst));
        // v1: a writable file is not enough to move another user's process.
        let root_owned = sleeper(0);
        let r = compare(&own, &src, &dst, root_owned.pid(), "v1, root's process");
        assert_ne!(r, 0);
        let users = sleeper(USER);
        let r = compare(&own, &src, &dst, users.pid(), "v1, the user's own process");
        assert_eq!(r, 0);
        asked += 1;
    }
    assert!(asked > 0);
}

#[test]
fn a_process_that_has_exited_joins_nothing() {
    let Some(h) = host("cgroup_exited") else {
        return;
    };
    let which = chosen(&h);
    let own = Own::new(&h, &which, "exited");
    let a: Vec<Cgroup> = which.iter().map(|x| own.make(x, "a")).collect();
    // A zombie: exited, not yet reaped. The kernel takes its pid in
    // cgroup.procs without an error, and moves nothing.
    let p = Proc(Command::new("true").spawn().expect("start true"));
    wait_for("true to exit", || state(p.pid()) == 'Z');
    let targets =
        Targets::open(&h, &Membership::from_cgroups(a), &Caller::daemon().unwrap()).unwrap();
    let err = targets.join(p.pid()).expect_err("a zombie joins nothing");
    assert!(
        matches!(err.error, CgroupError::Gone(pid) if pid == p.pid()),
        "{err}"
    );
    assert_eq!(nsproxyfs::errno::of_cgroup(&err.error), libc::ESRCH);
}

#[test]
fn a_caller_in_a_cgroup_namespace_names_cgroups_as_it_sees_them() {
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;
    let Some(h) = host("cgroup_namespace") else {
        return;
    };
    if !require_tools("cgroup_namespace", &["unshare"]) {
        return;
    }
    let which = chosen(&h);
    let own = Own::new(&h, &which, "namespace");
    for x in &which {
        own.make(x, "ns");
        own.make(x, "ns/src");
        own.make(x, "ns/a");
    }
    let at = |x: &Hierarchy, rel: &str| Cgroup {
        path: format!("{}/{rel}", own.top(x).path),
        ..own.top(x).clone()
    };
    // The caller: put into ns in every hierarchy, then in a cgroup
    // namespace of its own, rooted there.
    let mut child = Command::new("sh")
        .args(["-c", "read go; exec unshare --cgroup sleep 1000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the caller");
    let mut go = child.stdin.take().unwrap();
    let caller_proc = Proc(child);
    let pid = caller_proc.pid();
    for x in &which {
        put(&own, &at(x, "ns"), pid);
    }
    writeln!(go, "go").unwrap();
    let own_ns = std::fs::metadata("/proc/self/ns/cgroup").unwrap();
    wait_for("the caller's own cgroup namespace", || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c == "sleep\n")
            && std::fs::metadata(format!("/proc/{pid}/ns/cgroup"))
                .is_ok_and(|m| m.ino() != own_ns.ino())
    });
    let caller = Caller::of_thread(pid as u32).unwrap();
    assert!(caller.cgroup_ns.is_some());

    // It writes the paths it sees: /a is ns/a, / is ns.
    let written: Vec<Cgroup> = which
        .iter()
        .map(|x| Cgroup {
            path: "/a".into(),
            ..own.top(x).clone()
        })
        .collect();
    let view = caller
        .to_daemon_view(&Membership::from_cgroups(written))
        .unwrap();
    let want: Vec<Cgroup> = which.iter().map(|x| at(x, "ns/a")).collect();
    assert_eq!(view, Membership::from_cgroups(want.clone()));
    let root = Membership::from_cgroups(which.iter().map(|x| Cgroup {
        path: "/".into(),
        ..own.top(x).clone()
    }));
    assert_eq!(
        caller.to_daemon_view(&root).unwrap(),
        Membership::from_cgroups(which.iter().map(|x| at(x, "ns")))
    );

    // Joining with the caller's namespace and credentials moves a process
    // there.
    let q = sleeper(0);
    for x in &which {
        put(&own, &at(x, "ns/src"), q.pid());
    }
    let targets = Targets::open(&h, &view, &caller).expect("open as the caller");
    let joined = targets.join(q.pid()).expect("join as the caller");
    drop(joined);
    for c in &want {
        assert_eq!(placed(q.pid(), &c.hierarchy), c.path);
    }
}

#[test]
fn a_frozen_cgroup_is_seen_before_joining() {
    let Some(h) = host("cgroup_frozen") else {
        return;
    };
    let mut which: Vec<Hierarchy> = chosen(&h)
        .into_iter()
        .filter(|x| *x == Hierarchy::Unified)
        .collect();
    let freezer = h.iter().find_map(|m| match &m.hierarchy {
        Hierarchy::V1(c) if c.split(',').any(|n| n == "freezer") => Some(m.hierarchy.clone()),
        _ => None,
    });
    which.extend(freezer);
    if which.is_empty() {
        note("cgroup_frozen: no unified or freezer hierarchy here");
        return;
    }
    let own = Own::new(&h, &which, "frozen");
    let daemon = Caller::daemon().unwrap();
    for x in &which {
        let a = own.make(x, "a");
        let (file, freeze, thaw) = match x {
            Hierarchy::Unified => ("cgroup.freeze", "1", "0"),
            Hierarchy::V1(_) => ("freezer.state", "FROZEN", "THAWED"),
        };
        let control = own.dir(&a).join(file);
        let targets = Targets::open(&h, &Membership::from_cgroups([a.clone()]), &daemon).unwrap();
        assert_eq!(targets.frozen(), None, "{a}");
        write_once(&control, freeze.as_bytes()).unwrap();
        assert_eq!(targets.frozen(), Some(&a), "{a} frozen");
        write_once(&control, thaw.as_bytes()).unwrap();
        assert_eq!(targets.frozen(), None, "{a} thawed");
        // A cgroup below a frozen one is frozen too.
        if *x == Hierarchy::Unified {
            let b = own.make(x, "a/b");
            let below = Targets::open(&h, &Membership::from_cgroups([b.clone()]), &daemon).unwrap();
            write_once(&control, freeze.as_bytes()).unwrap();
            wait_for("the child to report frozen", || below.frozen() == Some(&b));
            write_once(&control, thaw.as_bytes()).unwrap();
        }
    }
}

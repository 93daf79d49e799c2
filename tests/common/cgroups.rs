//! Cgroups for tests: the hierarchies to test in, cgroups a test makes
//! and removes, processes to move, and the kernel's own answer to a write
//! of `cgroup.procs` by an unprivileged user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nsproxyfs::cgroup::{Cgroup, Hierarchies, Hierarchy, Membership, PROCS};

use super::{Proc, note, wait_for, write_once};

/// The hierarchies tested: the unified one and one v1 hierarchy (`pids` if
/// there is one; never `cpuset`, whose new cgroups have no cpus to run on).
pub fn chosen(h: &Hierarchies) -> Vec<Hierarchy> {
    let mut out = Vec::new();
    if h.iter().any(|m| m.hierarchy == Hierarchy::Unified) {
        out.push(Hierarchy::Unified);
    } else {
        note("no unified (v2) hierarchy is mounted here: v1 only");
    }
    let v1 = |want: &dyn Fn(&str) -> bool| {
        h.iter().find_map(|m| match &m.hierarchy {
            Hierarchy::V1(c) if want(c) => Some(m.hierarchy.clone()),
            _ => None,
        })
    };
    match v1(&|c| c == "pids").or_else(|| v1(&|c| !c.split(',').any(|n| n == "cpuset"))) {
        Some(v) => out.push(v),
        None => note("no v1 hierarchy is mounted here: v2 only"),
    }
    assert!(!out.is_empty(), "no cgroup hierarchy is mounted");
    out
}

/// This test's own cgroups: one directory per hierarchy, removed with
/// everything below it on drop.
pub struct Own {
    pub hierarchies: Hierarchies,
    pub tops: Vec<(Hierarchy, Cgroup)>,
}

impl Own {
    pub fn new(h: &Hierarchies, which: &[Hierarchy], test: &str) -> Own {
        let name = format!("nsproxyfs-test-{test}-{}", std::process::id());
        let mut own = Own {
            hierarchies: h.clone(),
            tops: Vec::new(),
        };
        for hierarchy in which {
            let root = h
                .iter()
                .find(|m| &m.hierarchy == hierarchy)
                .expect("a chosen hierarchy is mounted");
            let dir = root.mount_point.join(&name);
            std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
            let top = h.cgroup_at(&dir).expect("a cgroup of the hierarchy");
            own.tops.push((hierarchy.clone(), top));
        }
        own
    }

    /// Makes cgroup `rel` below this test's directory in `hierarchy`.
    pub fn make(&self, hierarchy: &Hierarchy, rel: &str) -> Cgroup {
        let top = self.top(hierarchy);
        let cgroup = Cgroup {
            path: format!("{}/{rel}", top.path),
            ..top.clone()
        };
        let dir = self.dir(&cgroup);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        cgroup
    }

    pub fn top(&self, hierarchy: &Hierarchy) -> &Cgroup {
        &self.tops.iter().find(|(h, _)| h == hierarchy).unwrap().1
    }

    pub fn dir(&self, cgroup: &Cgroup) -> PathBuf {
        self.hierarchies.dir_of(cgroup).unwrap()
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        for (_, top) in &self.tops {
            remove_tree(&self.hierarchies.dir_of(top).unwrap());
        }
    }
}

/// Removes a cgroup directory and every cgroup below it, deepest first,
/// waiting a little (up to 10 s) for processes just ended to leave.
pub fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = std::fs::remove_dir(dir) {
        if e.kind() == std::io::ErrorKind::NotFound {
            return;
        }
        if Instant::now() > deadline {
            eprintln!("cannot remove cgroup {}: {e}", dir.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `sleep` running as `uid`, in the test's cgroups until moved.
pub fn sleeper(uid: u32) -> Proc {
    let mut cmd = if uid == 0 {
        Command::new("sleep")
    } else {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={uid}"))
            .arg("--clear-groups")
            .arg("sleep");
        c
    };
    let child = cmd
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start sleep");
    let p = Proc(child);
    wait_for("sleep to run", || {
        std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).is_ok_and(|c| c == "sleep\n")
    });
    p
}

/// The cgroup `pid` is in, in `hierarchy`.
pub fn placed(pid: i32, hierarchy: &Hierarchy) -> String {
    Membership::of_process(pid)
        .unwrap()
        .get(hierarchy)
        .unwrap_or_else(|| panic!("process {pid} in no {hierarchy} cgroup"))
        .path
        .clone()
}

/// Moves `pid` into `cgroup` as root, by writing its `cgroup.procs`.
pub fn put(own: &Own, cgroup: &Cgroup, pid: i32) {
    let file = own.dir(cgroup).join(PROCS);
    write_once(&file, pid.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("move {pid} into {cgroup}: {e}"));
}

/// What the kernel answers when a process of uid `uid` (no capabilities,
/// no supplementary groups) writes `pid` to `cgroup`'s `cgroup.procs`
/// itself: 0 or the errno.
pub fn kernels(own: &Own, cgroup: &Cgroup, pid: i32, uid: u32) -> i32 {
    const WRITE: &str = "import os, sys\n\
        try:\n    fd = os.open(sys.argv[1], os.O_WRONLY)\n    os.write(fd, sys.argv[2].encode())\n    print(0)\n\
        except OSError as e:\n    print(e.errno)\n";
    let file = own.dir(cgroup).join(PROCS);
    let out = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .args(["/usr/bin/python3", "-c", WRITE])
        .arg(&file)
        .arg(pid.to_string())
        .output()
        .expect("run the probe");
    assert!(out.status.success(), "probe: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("probe said {out:?}"))
}

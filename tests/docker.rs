//! Against a real container runtime: a private Docker engine (see
//! `common::docker`) runs a busybox container with a pids limit, and the
//! daemon, with discovery on, shows it under `.discovered` as
//! `docker-ID` with the container's cgroups as its `.cgroups`; a process
//! moved into it through `tasks` is in the container's namespaces and
//! cgroups, sees its hostname and root, and is held by its pids limit;
//! `mv` adopts it, `.cgroups` included, and `nsproxyfs exec` runs a
//! command inside it, cgroups included. Everything is checked from `/proc`.
//!
//! Each test asks for the engine before it mounts: the engine's mount
//! namespace is made from the test thread's, which must not hold the
//! test's FUSE mount yet.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};
use std::sync::Arc;

use common::docker::{Container, Engine, IMAGE, MARKER, in_mount_ns};
use common::*;

/// The hostname every test container gets.
const HOST: &str = "nsproxyfs-box";

/// The kinds a container's set and a moved process's differ in nothing.
fn same_namespaces(a: i32, b: i32) -> Vec<String> {
    KINDS
        .iter()
        .filter(|k| ns_ino(a, proc_entry(k)) != ns_ino(b, proc_entry(k)))
        .map(|k| k.to_string())
        .collect()
}

/// A container running `sleep` with a pids limit.
fn sleeping(engine: &Engine) -> Container {
    engine.run(
        &["--pids-limit", "16", "--hostname", HOST],
        &["sleep", "100000"],
    )
}

/// Waits until `.discovered/NAME` shows the container's set, and returns
/// its path relative to the mount.
fn wait_discovered(m: &Mount, name: &str, c: &Container) -> String {
    let rel = format!(".discovered/{name}");
    m.step.set(&format!("wait for {rel}"));
    let want: Vec<String> = KINDS.iter().map(|k| ns_text(c.pid, k)).collect();
    let seen = || namespaces_of(m, &rel);
    let found = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen() == want
    });
    assert!(
        found,
        "{rel}: {:?}, the container's {want:?}; discovered: {:?}",
        seen(),
        std::fs::read_dir(m.path(".discovered"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
            .unwrap_or_default()
    );
    rel
}

/// The namespace of each kind, as the `status` of container `rel` lists
/// them (`net:[N]`), in [`KINDS`] order.
fn namespaces_of(m: &Mount, rel: &str) -> Vec<String> {
    let status = std::fs::read_to_string(m.path(&format!("{rel}/status"))).unwrap_or_default();
    KINDS
        .iter()
        .map(|k| {
            status
                .lines()
                .map(|l| l.split('\t').collect::<Vec<_>>())
                .find(|f| f[0] == *k)
                .and_then(|f| f.get(1).map(|s| s.to_string()))
                .unwrap_or_default()
        })
        .collect()
}

/// A mount with discovery on and a running container, discovered.
struct Scene {
    m: Mount,
    c: Container,
    rel: String,
    engine: Arc<Engine>,
}

impl Scene {
    fn new(test: &str) -> Option<Scene> {
        let engine = Engine::shared(test)?;
        let m = Mount::with_args(test, &["--discover"])?;
        m.step.set("start a container");
        let c = sleeping(&engine);
        let rel = wait_discovered(&m, &format!("docker-{}", c.short()), &c);
        Some(Scene { m, c, rel, engine })
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        self.engine.remove(&self.c);
    }
}

#[test]
fn a_running_container_is_discovered_by_its_runtime_and_id() {
    let Some(s) = Scene::new("docker_discovered") else {
        return;
    };
    // The name is the runtime's and the id's, as `docker ps` prints it.
    let ps = s
        .engine
        .docker_ok(&["ps", "--no-trunc", "--format", "{{.ID}}"]);
    assert!(ps.lines().any(|l| l == s.c.id), "{ps}");
    assert_eq!(s.rel, format!(".discovered/docker-{}", s.c.short()));
    let tasks = s.m.read(&format!("{}/tasks", s.rel));
    assert!(
        tasks.lines().any(|l| l == s.c.pid.to_string()),
        "the container's first process in its tasks: {tasks}"
    );
}

#[test]
fn a_process_moved_into_a_container_is_inside_it() {
    let Some(s) = Scene::new("docker_move") else {
        return;
    };
    let p = Proc::sh("exec sleep 100000");
    s.m.watch_pid(p.pid());
    wait_for("sleep to run", || {
        std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).is_ok_and(|c| c == "sleep\n")
    });
    s.m.step.set("move a process into the container");
    s.m.write(
        &format!("{}/tasks", s.rel),
        format!("{}\n", p.pid()).as_bytes(),
    )
    .expect("move into the container");

    // Every namespace (for pid and time: those of its children) is the
    // container's.
    assert_eq!(same_namespaces(p.pid(), s.c.pid), Vec::<String>::new());
    // Its hostname is the container's.
    let uts = format!("/proc/{}/ns/uts", p.pid());
    let host = sh_ok(&format!("nsenter --uts={uts} uname -n"));
    assert_eq!(host.trim(), HOST);
    // Its root is the container's: the same directory, holding the image.
    let root = |pid: i32| std::fs::metadata(format!("/proc/{pid}/root/")).unwrap();
    let (mine, theirs) = (root(p.pid()), root(s.c.pid));
    assert_eq!((mine.dev(), mine.ino()), (theirs.dev(), theirs.ino()));
    let marker = std::fs::read_to_string(format!("/proc/{}/root/{MARKER}", p.pid())).unwrap();
    assert_eq!(marker, IMAGE);
    let tasks = s.m.read(&format!("{}/tasks", s.rel));
    assert!(tasks.lines().any(|l| l == p.pid().to_string()), "{tasks}");
}

#[test]
fn mv_adopts_a_running_container() {
    let Some(s) = Scene::new("docker_adopt") else {
        return;
    };
    s.m.step.set("adopt the container with mv");
    let cgroups = s.m.read(&format!("{}/.cgroups", s.rel));
    assert!(!cgroups.is_empty(), "the discovered container's .cgroups");
    std::fs::rename(s.m.path(&s.rel), s.m.path("box")).expect("mv");
    assert_eq!(s.m.read("box/.cgroups"), cgroups, "adoption keeps .cgroups");
    let want: Vec<String> = KINDS.iter().map(|k| ns_text(s.c.pid, k)).collect();
    assert_eq!(namespaces_of(&s.m, "box"), want);
    assert!(
        s.m.read("box/tasks")
            .lines()
            .any(|l| l == s.c.pid.to_string())
    );
    assert!(!s.m.path(&s.rel).exists(), "adopted: no longer discovered");
    // The container runs on, and a process moved into box joins it.
    let p = Proc::sh("exec sleep 100000");
    s.m.watch_pid(p.pid());
    wait_for("sleep to run", || {
        std::fs::read_to_string(format!("/proc/{}/comm", p.pid())).is_ok_and(|c| c == "sleep\n")
    });
    s.m.write("box/tasks", p.pid().to_string().as_bytes())
        .expect("move into the adopted container");
    assert_eq!(same_namespaces(p.pid(), s.c.pid), Vec::<String>::new());
    let of = |pid: i32| nsproxyfs::cgroup::Membership::of_process(pid).unwrap();
    let h = nsproxyfs::cgroup::Hierarchies::of_host().unwrap();
    assert_eq!(h.reachable(&of(p.pid())), h.reachable(&of(s.c.pid)));
}

#[test]
fn exec_runs_a_command_inside_a_container() {
    let Some(s) = Scene::new("docker_exec") else {
        return;
    };
    s.m.step.set("nsproxyfs exec in the container");
    let mut child = Command::new(BIN)
        .arg("exec")
        .arg(s.m.path(&s.rel))
        .args(["--", "sh", "-c"])
        .arg(format!(
            "uname -n; cat /{MARKER}; echo; readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; \
             if [ \"$(cat /proc/self/cgroup)\" = \"$(cat /proc/1/cgroup)\" ]; then echo same cgroups; \
             else cat /proc/self/cgroup /proc/1/cgroup; fi"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start nsproxyfs exec");
    s.m.watch_pid(child.id() as i32);
    let status = wait_bounded(&mut child, std::time::Duration::from_secs(60));
    let mut out = String::new();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "exec failed ({status}): {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            HOST,
            IMAGE,
            &ns_text(s.c.pid, "net"),
            &ns_text(s.c.pid, "mnt"),
            "same cgroups",
        ],
        "{err}"
    );
}

#[test]
fn a_stopped_engine_leaves_nothing_behind() {
    let test = "docker_cleanup";
    let before_run = ["/run/containerd", "/etc/docker", "/opt/containerd"].map(|p| {
        let exists = std::path::Path::new(p).exists();
        (p, exists)
    });
    let Some(engine) = Engine::private(test) else {
        return;
    };
    let watched = Watched::start(test);
    watched.step.set("run a container on a private engine");
    let c = sleeping(&engine);
    let cgroups = engine.cgroup_dirs();
    assert!(
        cgroups
            .iter()
            .any(|d| d.join("docker").join(&c.id).is_dir()),
        "the container's cgroup under the engine's parent: {cgroups:?}"
    );
    let dir = engine.dir_path().to_owned();
    // Held open, so that no later namespace takes its inode number.
    let ns_file = engine.mount_ns().expect("the engine's mount namespace");
    let ns = ns_file.metadata().unwrap().ino();
    watched.step.set("stop the engine");
    drop(engine);

    assert!(
        !std::path::Path::new(&format!("/proc/{}", c.pid)).exists() || {
            // A pid reused since: not the container's process any more.
            std::fs::read_to_string(format!("/proc/{}/comm", c.pid)).is_ok_and(|s| s != "sleep\n")
        }
    );
    assert_eq!(in_mount_ns(ns), Vec::<i32>::new(), "processes left");
    drop(ns_file);
    for d in &cgroups {
        assert!(!d.exists(), "cgroup left: {}", d.display());
    }
    assert!(!dir.exists(), "directory left: {}", dir.display());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let name = dir.to_string_lossy();
    assert!(
        !mounts.lines().any(|l| l.contains(&*name)),
        "mounts left: {mounts}"
    );
    for (p, existed) in before_run {
        assert_eq!(
            std::path::Path::new(p).exists(),
            existed,
            "{p} made by the engine"
        );
    }
}

/// Says `ready` (its libraries loaded: it may change mount namespace now),
/// then forks until the kernel refuses, once a line arrives on stdin; then ends
/// its children and prints how many it made and the errno of the refusal.
const FORKER: &str = "import os, signal, sys
print('ready', flush=True)
sys.stdin.readline()
kids, err = [], 0
for _ in range(256):
    try:
        pid = os.fork()
    except OSError as e:
        err = e.errno
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.kill(k, signal.SIGKILL)
    os.waitpid(k, 0)
print(len(kids), err, flush=True)
";

#[test]
fn a_process_moved_through_tasks_joins_the_containers_cgroups_and_limits() {
    use nsproxyfs::cgroup::{Hierarchies, Hierarchy, Membership};
    use std::io::{BufRead, Write};
    let Some(s) = Scene::new("docker_cgroups") else {
        return;
    };
    let mut child = Command::new("/usr/bin/python3")
        .args(["-c", FORKER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python");
    let py = child.id() as i32;
    s.m.watch_pid(py);
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _p = Proc(child);
    let mut line = String::new();
    s.m.step.set("wait for python to start");
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    s.m.step.set("the discovered container shows its cgroups");
    let hierarchies = Hierarchies::of_host().unwrap();
    let theirs = hierarchies.reachable(&Membership::of_process(s.c.pid).unwrap());
    assert_eq!(s.m.read(&format!("{}/.cgroups", s.rel)), theirs.to_string());
    s.m.step
        .set("echo PID > tasks: into the container's namespaces and cgroups");
    s.m.write(&format!("{}/tasks", s.rel), py.to_string().as_bytes())
        .expect("move into the container");
    assert_eq!(same_namespaces(py, s.c.pid), Vec::<String>::new());
    assert_eq!(
        hierarchies.reachable(&Membership::of_process(py).unwrap()),
        theirs
    );

    s.m.step.set("fork up to the container's pids limit");
    let pids = theirs
        .iter()
        .find(|c| c.hierarchy == Hierarchy::V1("pids".into()))
        .or_else(|| theirs.get(&Hierarchy::Unified))
        .expect("a pids cgroup");
    let dir = hierarchies.dir_of(pids).unwrap();
    let read = |f: &str| -> usize {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (max, current) = (read("pids.max"), read("pids.current"));
    assert_eq!(max, 16, "docker's --pids-limit");
    stdin.write_all(b"go\n").unwrap();
    stdin.flush().unwrap();
    line.clear();
    stdout.read_line(&mut line).unwrap();
    let made: Vec<i32> = line
        .split_whitespace()
        .map(|w| w.parse().unwrap())
        .collect();
    assert_eq!(
        made,
        [(max - current) as i32, libc::EAGAIN],
        "forks allowed, then the limit's errno"
    );
}

//! `--discover`: namespace sets already in use appear under `.discovered`,
//! named after their runtime, `ip netns` name or hostname; they leave with
//! their processes, are read-only, can be linked from and adopted, and the
//! `.namespaces` table lists every namespace as `lsns` does.
//!
//! The daemon runs in the test's private mount namespace, so its root set
//! differs from the host's in `mnt`: the host's own processes show up as one
//! discovered set too, and other tests' sets come and go. Each test finds
//! its own sets by their inode numbers.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The namespace set of `pid`, as kind files name it.
fn set_of(pid: i32) -> Vec<(String, u64)> {
    KINDS
        .iter()
        .map(|k| (k.to_string(), ns_ino(pid, proc_entry(k))))
        .collect()
}

/// The set a container's `status` lists.
fn status_set(m: &Mount, container: &str) -> Option<Vec<(String, u64)>> {
    let file = match container {
        "" => "status".to_owned(),
        c => format!("{c}/status"),
    };
    let text = std::fs::read_to_string(m.path(&file)).ok()?;
    text.lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let ino = f
                .get(1)?
                .split('[')
                .nth(1)?
                .trim_end_matches(']')
                .parse()
                .ok()?;
            Some((f[0].to_owned(), ino))
        })
        .collect()
}

/// The names in directory `dir`, sorted; none if it cannot be read.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The names under `.discovered`.
fn discovered(m: &Mount) -> Vec<String> {
    names_in(&m.path(".discovered"))
}

/// The discovered container whose set is `pid`'s, if any.
fn discovered_as(m: &Mount, pid: i32) -> Option<String> {
    let want = set_of(pid);
    discovered(m)
        .into_iter()
        .find(|n| status_set(m, &format!(".discovered/{n}")).as_ref() == Some(&want))
}

/// Waits until `pid`'s set is discovered, and returns its name.
fn wait_discovered(m: &Mount, pid: i32) -> String {
    m.step
        .set(&format!("wait for process {pid} to be discovered"));
    let mut name = None;
    wait_for(&format!("process {pid}'s set under .discovered"), || {
        name = discovered_as(m, pid);
        name.is_some()
    });
    name.unwrap_or_default()
}

/// Waits for the child of `parent` (`unshare --fork` runs its command as
/// one), returning its pid.
fn child_of(parent: i32) -> i32 {
    let mut child = 0;
    wait_for(&format!("a child of {parent}"), || {
        let out = sh(&format!("pgrep -P {parent}"));
        child = String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        child > 0
    });
    child
}

/// Starts `sh -c script` (which must end in `sleep`), for the watchdog to
/// kill too, and waits until its set is discovered; returns the process
/// and the set's name.
fn start_discovered(m: &Mount, script: &str) -> (Proc, String) {
    let p = Proc::sh(script);
    m.watch_pid(p.pid());
    wait_comm(p.pid(), "sleep");
    let name = wait_discovered(m, p.pid());
    (p, name)
}

/// Waits until `pid` has exec'd `comm` (and so is in its final set).
fn wait_comm(pid: i32, comm: &str) {
    wait_for(&format!("process {pid} to run {comm}"), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
    });
}

#[test]
fn unshare_sets_appear_named_by_hostname_and_leave_with_their_processes() {
    let test = "discover_unshare";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let root = status_set(&m, "").unwrap();
    // The hostname is set before the final set exists, so the name is
    // read from it.
    let p =
        Proc::sh("exec unshare --uts sh -c 'hostname disc-a; exec unshare --ipc --net sleep 1000'");
    m.watch_pid(p.pid());
    wait_comm(p.pid(), "sleep");
    let name = wait_discovered(&m, p.pid());
    let id = name
        .strip_prefix("disc-a-")
        .unwrap_or_else(|| panic!("{name}"));
    assert!(
        id.len() == 8 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    let dir = format!(".discovered/{name}");

    // Kind files for exactly the kinds that differ from the root's.
    assert_eq!(
        names_in(&m.path(&dir)),
        ["ipc", "net", "status", "tasks", "uts"]
    );
    let mine = set_of(p.pid());
    for ((kind, ino), (_, root_ino)) in mine.iter().zip(&root) {
        if ino != root_ino {
            let st = std::fs::metadata(m.path(&format!("{dir}/{kind}"))).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::ino(&st), *ino, "{kind}");
        }
    }
    assert_eq!(m.read(&format!("{dir}/tasks")), format!("{}\n", p.pid()));
    // Its pins work with nsenter: the uts one shows the hostname.
    let pin = m.pin(&dir, "uts");
    assert_eq!(
        sh_ok(&format!("nsenter --uts={pin} hostname")).trim(),
        "disc-a"
    );

    // The top of the subtree is a plain directory.
    assert_eq!(
        errno(std::fs::metadata(m.path(".discovered/tasks"))),
        libc::ENOENT
    );

    m.step.set("kill the process and wait for its set to leave");
    drop(p);
    wait_for("the set to leave .discovered", || {
        !discovered(&m).contains(&name)
    });
}

/// A cgroup hierarchy made for one test, removed on drop (deepest first).
struct Cgroups(Vec<PathBuf>);

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in self.0.iter().rev() {
            // A cgroup is freed once its last process is reaped.
            for _ in 0..200 {
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// A mounted cgroup hierarchy to make test cgroups in: the unified one if
/// mounted, else the first v1 hierarchy.
fn cgroup_root() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v1 = None;
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fstype = right.split(' ').next().unwrap_or("");
        let point = left.split(' ').nth(4).unwrap_or("");
        match fstype {
            "cgroup2" => return PathBuf::from(point),
            "cgroup" if v1.is_none() => v1 = Some(PathBuf::from(point)),
            _ => {}
        }
    }
    v1.expect("no cgroup hierarchy is mounted")
}

#[test]
fn container_runtime_cgroup_layouts_name_their_containers() {
    let test = "discover_runtime";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let id = "3f2a9c1b7e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";
    let top = cgroup_root().join(format!("nsproxyfs-test-{}", std::process::id()));
    let docker = top.join("system.slice").join(format!("docker-{id}.scope"));
    let lxc = top.join("lxc.payload.web7");
    let cgroups = Cgroups(vec![
        top.clone(),
        top.join("system.slice"),
        docker.clone(),
        lxc.clone(),
    ]);
    for dir in &cgroups.0 {
        std::fs::create_dir(dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    }
    let start = |cg: &Path| {
        // Joins the cgroup first, then the namespaces: the set is named
        // from the cgroup it is found in.
        Proc::sh(&format!(
            "echo $$ > {}/cgroup.procs && exec unshare --uts --net sleep 1000",
            cg.display()
        ))
    };
    let a = start(&docker);
    let b = start(&lxc);
    m.watch_pid(a.pid());
    m.watch_pid(b.pid());
    wait_comm(a.pid(), "sleep");
    wait_comm(b.pid(), "sleep");
    assert_eq!(wait_discovered(&m, a.pid()), "docker-3f2a9c1b7e4d");
    assert_eq!(wait_discovered(&m, b.pid()), "lxc-web7");
    drop(a);
    drop(b);
    drop(cgroups);
    assert!(!top.exists(), "test cgroups left behind");
}

#[test]
fn ip_netns_sets_are_named_after_their_netns() {
    let test = "discover_netns";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    // Only in this test's mount namespace: the host's /run/netns is not
    // touched.
    // Where /run/netns is missing, a tmpfs over /run holds a new one, so
    // nothing is made on the host either.
    sh_ok(
        "if [ -d /run/netns ]; then mount -t tmpfs nsproxyfs-test /run/netns; \
         else mount -t tmpfs nsproxyfs-test /run && mkdir /run/netns; fi",
    );
    let name = format!("dtest{}", std::process::id());
    sh_ok(&format!("ip netns add {name}"));
    let p = Proc::sh(&format!("exec ip netns exec {name} sleep 1000"));
    m.watch_pid(p.pid());
    wait_comm(p.pid(), "sleep");
    let found = wait_discovered(&m, p.pid());
    assert_eq!(found, format!("netns-{name}"));
    // `ip netns exec` gives the command a mount namespace of its own too.
    assert_eq!(
        names_in(&m.path(&format!(".discovered/{found}"))),
        ["mnt", "net", "status", "tasks"]
    );
    drop(p);
    sh_ok(&format!("ip netns del {name}"));
}

#[test]
fn discovered_sets_are_read_only_linkable_and_adoptable() {
    let test = "discover_adopt";
    let Some(mut m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let a = Proc::sh("exec unshare --uts --ipc --net sleep 1000");
    let b = Proc::sh("exec unshare --uts --net sleep 1000");
    m.watch_pid(a.pid());
    m.watch_pid(b.pid());
    wait_comm(a.pid(), "sleep");
    wait_comm(b.pid(), "sleep");
    let na = wait_discovered(&m, a.pid());
    let nb = wait_discovered(&m, b.pid());
    let da = format!(".discovered/{na}");

    m.step.set("changes inside .discovered are refused");
    let before = discovered(&m);
    let dir = m.dir.clone();
    let p = |rel: &str| dir.join(rel);
    assert_eq!(errno(std::fs::create_dir(p(".discovered/x"))), libc::EPERM);
    assert_eq!(
        errno(std::fs::create_dir(p(&format!("{da}/x")))),
        libc::EPERM
    );
    assert_eq!(errno(std::fs::remove_dir(p(&da))), libc::EPERM);
    assert_eq!(errno(std::fs::remove_dir(p(".discovered"))), libc::EPERM);
    assert_eq!(
        errno(std::fs::remove_file(p(&format!("{da}/net")))),
        libc::EPERM
    );
    assert_eq!(
        errno(std::fs::rename(p(&da), p(".discovered/y"))),
        libc::EPERM
    );
    assert_eq!(
        errno(std::fs::rename(p(".discovered"), p("d"))),
        libc::EPERM
    );
    assert_eq!(errno(m.write(&format!("{da}/net"), b"1")), libc::EPERM);
    assert_eq!(errno(m.write(&format!("{da}/pid"), b"1")), libc::EPERM);
    std::fs::create_dir(p("web")).unwrap();
    assert_eq!(
        errno(std::fs::hard_link(p("net"), p(&format!("{da}/net2")))),
        libc::EPERM
    );
    assert_eq!(discovered(&m), before);
    assert_eq!(status_set(&m, &da).unwrap(), set_of(a.pid()));

    m.step
        .set("link a's net into web, then let a's processes go");
    std::fs::hard_link(p(&format!("{da}/net")), p("web/net")).unwrap();
    let net = ns_ino(a.pid(), "net");
    let web_net = std::fs::metadata(p("web/net")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&web_net), net);
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&web_net), 2);
    drop(a);
    wait_for("a's set to leave", || !discovered(&m).contains(&na));
    let web_net = std::fs::metadata(p("web/net")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&web_net), net);
    assert_eq!(std::os::unix::fs::MetadataExt::nlink(&web_net), 1);
    let pin = m.pin("web", "net");
    let seen = sh_ok(&format!("nsenter --net={pin} readlink /proc/self/ns/net"));
    assert_eq!(seen.trim(), format!("net:[{net}]"));

    m.step.set("adopt b with mv");
    let set_b = set_of(b.pid());
    assert_eq!(
        errno(std::fs::rename(p(&format!(".discovered/{nb}")), p("web"))),
        libc::EEXIST
    );
    std::fs::rename(p(&format!(".discovered/{nb}")), p("box")).unwrap();
    assert_eq!(status_set(&m, "box").unwrap(), set_b);
    assert_eq!(m.read("box/tasks"), format!("{}\n", b.pid()));
    assert!(!discovered(&m).contains(&nb));
    // A new process in b's set (an exec there) does not bring it back:
    // the set is box's now.
    sh_ok(&format!("nsenter -t {} -u -n true", b.pid()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(discovered_as(&m, b.pid()), None);

    m.step
        .set("restart: box and web come back with the same namespaces");
    m.stop();
    m.restart();
    assert_eq!(status_set(&m, "box").unwrap(), set_b);
    let web_net = std::fs::metadata(p("web/net")).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&web_net), net);
    assert_eq!(discovered_as(&m, b.pid()), None);
    drop(b);
}

#[test]
fn a_process_inside_a_discovered_set_sees_only_its_container() {
    let test = "discover_view";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let (a, name) = start_discovered(&m, "exec unshare --uts --ipc --net sleep 1000");
    let inside = |cmd: &str| sh(&format!("nsenter -t {} -u -i -n -- {cmd}", a.pid()));
    let ls = |rel: &str| {
        let out = inside(&format!("ls -a {}", m.path(rel).display()));
        assert!(out.status.success(), "ls {rel}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(ls(""), [".", "..", ".discovered"]);
    assert_eq!(ls(".discovered"), [".", "..", name.as_str()]);
    let cat = inside(&format!("cat {}", m.path(".namespaces").display()));
    assert!(!cat.status.success());
    let tasks = inside(&format!(
        "cat {}",
        m.path(&format!(".discovered/{name}/tasks")).display()
    ));
    assert!(
        String::from_utf8_lossy(&tasks.stdout)
            .lines()
            .any(|l| l == a.pid().to_string()),
        "{tasks:?}"
    );
}

#[test]
fn the_namespaces_table_agrees_with_lsns() {
    let test = "discover_lsns";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let parent =
        Proc::sh("exec unshare --user --map-root-user --pid --fork --kill-child --uts sleep 1000");
    m.watch_pid(parent.pid());
    let child = child_of(parent.pid());
    m.watch_pid(child);
    wait_comm(child, "sleep");
    // A namespace the tree binds that no process is in.
    std::fs::create_dir(m.path("web")).unwrap();
    std::fs::File::create(m.path("web/ipc")).unwrap();
    let lonely =
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.path("web/ipc")).unwrap());

    let table = m.read(".namespaces");
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some("KIND\tINODE\tNPROCS\tPID\tUSERNS\tPARENT\tCOMMAND")
    );
    let rows: Vec<Vec<String>> = lines
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    let row = |kind: &str, ino: u64| -> Vec<String> {
        rows.iter()
            .find(|r| r[0] == kind && r[1] == ino.to_string())
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {ino} in\n{table}"))
    };
    let host_user = ns_ino(std::process::id() as i32, "user");
    let host_pid = ns_ino(std::process::id() as i32, "pid");
    let user = ns_ino(child, "user");
    let pid = ns_ino(child, "pid");
    let uts = ns_ino(child, "uts");
    let s = |v: u64| v.to_string();
    let n = |v: i32| v.to_string();
    assert_eq!(
        row("user", user)[2..],
        [
            n(2),
            n(parent.pid()),
            s(host_user),
            s(host_user),
            "unshare".into()
        ]
    );
    assert_eq!(
        row("pid", pid)[2..],
        [n(1), n(child), s(user), s(host_pid), "sleep".into()]
    );
    assert_eq!(
        row("uts", uts)[2..],
        [n(2), n(parent.pid()), s(user), "-".into(), "unshare".into()]
    );
    assert_eq!(row("ipc", lonely)[2..], ["0", "-", &s(host_user), "-", "-"]);

    // lsns, run now, agrees on the count, owner and parent of each.
    let out = Command::new("lsns")
        .args(["-n", "-r", "-o", "NS,TYPE,NPROCS,PNS,ONS"])
        .output()
        .expect("run lsns");
    let lsns = String::from_utf8_lossy(&out.stdout);
    for (kind, ino) in [("user", user), ("pid", pid), ("uts", uts)] {
        let theirs: Vec<&str> = lsns
            .lines()
            .map(|l| l.split(' ').collect::<Vec<_>>())
            .find(|f| f[0] == ino.to_string())
            .unwrap_or_else(|| panic!("lsns lacks {ino}:\n{lsns}"));
        let ours = row(kind, ino);
        assert_eq!(theirs[1], kind);
        assert_eq!(theirs[2], ours[2], "{kind} process count");
        assert_eq!(theirs[4], ours[4], "{kind} owner");
        if kind != "uts" {
            assert_eq!(theirs[3], ours[5], "{kind} parent");
        }
    }
    drop(parent);
}

#[test]
fn a_set_emptied_by_a_move_leaves_and_moves_into_discovered_sets_work() {
    let test = "discover_move";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let a = Proc::sh("exec unshare --uts --net sleep 1000");
    let b = Proc::sh("exec sleep 1000");
    m.watch_pid(a.pid());
    m.watch_pid(b.pid());
    wait_comm(a.pid(), "sleep");
    let name = wait_discovered(&m, a.pid());
    let dir = format!(".discovered/{name}");

    m.step.set("move b into a's discovered set");
    m.write(&format!("{dir}/tasks"), b.pid().to_string().as_bytes())
        .unwrap();
    assert_eq!(set_of(b.pid()), set_of(a.pid()));
    let mut both = [a.pid(), b.pid()];
    both.sort();
    let want: String = both.iter().map(|p| format!("{p}\n")).collect();
    assert_eq!(m.read(&format!("{dir}/tasks")), want);

    m.step
        .set("move both back to the root: the set is left empty");
    for pid in [a.pid(), b.pid()] {
        m.write("tasks", pid.to_string().as_bytes()).unwrap();
    }
    // No exec tells of a move: the daemon itself has discovery look again.
    wait_for("the emptied set to leave", || {
        !discovered(&m).contains(&name)
    });
    assert_eq!(discovered_as(&m, a.pid()), None);
}

/// Runs `nsproxyfs adopt PID DEST`.
fn adopt(pid: i32, dest: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("adopt")
        .arg(pid.to_string())
        .arg(dest)
        .output()
        .expect("run nsproxyfs adopt")
}

#[test]
fn nsproxyfs_adopt_names_a_process_set_in_one_command() {
    let test = "discover_adopt_command";
    let Some(m) = Mount::with_args(test, &["--discover"]) else {
        return;
    };
    let a = Proc::sh("exec unshare --uts --ipc sleep 1000");
    m.watch_pid(a.pid());
    wait_comm(a.pid(), "sleep");
    // Straight after the process starts: adopt waits for discovery.
    let out = adopt(a.pid(), &m.path("web"));
    assert!(out.status.success(), "{out:?}");
    // If it had to wait, it said for what, in one line.
    let err = String::from_utf8_lossy(&out.stderr);
    let waiting = format!(
        "nsproxyfs: adopt: waiting up to 5 s for the namespaces of process {} to appear in {}\n",
        a.pid(),
        m.path(".discovered").display()
    );
    assert!(err.is_empty() || err == waiting, "{err:?}");
    assert_eq!(status_set(&m, "web").unwrap(), set_of(a.pid()));
    assert_eq!(m.read("web/tasks"), format!("{}\n", a.pid()));
    assert_eq!(discovered_as(&m, a.pid()), None);

    // Each refusal is one line and exit status 1; nothing changes.
    let refused = |pid: i32, dest: PathBuf, want: &str| {
        let out = adopt(pid, &dest);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(1),
            "{pid} {}: {err}",
            dest.display()
        );
        assert!(err.contains(want), "{err:?} lacks {want:?}");
        assert_eq!(err.lines().count(), 1, "{err}");
    };
    refused(a.pid(), m.path("again"), "already the container");
    // Started from this thread, in the daemon's own mount namespace.
    let plain = Proc::sh("exec sleep 1000");
    m.watch_pid(plain.pid());
    refused(plain.pid(), m.path("plain"), "root container's namespaces");
    refused(i32::MAX, m.path("none"), "no process");
    refused(a.pid(), m.scratch("elsewhere"), "not a container directory");
    let names: Vec<String> = names_in(&m.dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && !KINDS.contains(&n.as_str()))
        .collect();
    assert_eq!(names, ["status", "tasks", "web"]);
}

/// A scratch directory holding an export directory, which the daemon makes
/// a mount point (bound onto itself, in this test's mount namespace): it
/// is detached before the scratch directory is removed.
struct ExportDir(Scratch);

impl Drop for ExportDir {
    fn drop(&mut self) {
        sh(&format!("umount -l '{}/netns'", self.0.0.display()));
    }
}

#[test]
fn discovered_sets_are_not_exported_until_adopted() {
    let test = "discover_export";
    // Dropped after the mount, whose daemon removes its exports first.
    let dir = ExportDir(Scratch::new("discover_export_dir"));
    let export = dir.0.0.join("netns");
    let export_arg = export.display().to_string();
    let Some(m) = Mount::with_args(test, &["--discover", "--netns-export", &export_arg]) else {
        return;
    };
    let (a, name) = start_discovered(&m, "exec unshare --uts --net sleep 1000");
    let exported = || names_in(&export);
    assert!(exported().is_empty(), "{:?}", exported());
    std::fs::rename(m.path(&format!(".discovered/{name}")), m.path("vpn")).unwrap();
    assert_eq!(exported(), ["vpn"]);
    let inside = sh_ok(&format!(
        "nsenter --net={} readlink /proc/self/ns/net",
        export.join("vpn").display()
    ));
    assert_eq!(inside.trim(), format!("net:[{}]", ns_ino(a.pid(), "net")));
}

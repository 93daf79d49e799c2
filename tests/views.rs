//! Per-observer views, end to end: a caller living in a container sees and
//! changes only that container's subtree, through a real mount and the
//! kernel's caches; callers matching no container see an empty root.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;

/// Builds `OP PATH...` lines for [`probe`], paths relative to the mount.
fn ops(m: &Mount, list: &[(&str, &[&str])]) -> Vec<String> {
    list.iter()
        .map(|(op, args)| {
            let args: Vec<String> = args
                .iter()
                .map(|a| match a.strip_prefix('@') {
                    // `@rel`: a path inside the mount; anything else as is.
                    Some(rel) => m.path(rel).display().to_string(),
                    None => (*a).to_owned(),
                })
                .collect();
            format!("{op} {}", args.join(" "))
        })
        .collect()
}

/// Runs `list` through the probe under `prefix` and checks each answer.
fn expect(m: &Mount, prefix: &[&str], list: &[(&str, &[&str], &str)]) {
    let plain: Vec<(&str, &[&str])> = list.iter().map(|(o, a, _)| (*o, *a)).collect();
    let answers = probe(prefix, &ops(m, &plain));
    for ((op, args, want), got) in list.iter().zip(&answers) {
        // `WANT*` matches any answer starting with WANT.
        match want.strip_suffix('*') {
            Some(start) => assert!(
                got.starts_with(start),
                "{op} {args:?} as seen through {prefix:?}: {got}"
            ),
            None => assert_eq!(got, want, "{op} {args:?} as seen through {prefix:?}"),
        }
    }
}

/// `nsenter --uts=PIN --`: a process in the root's namespaces but the uts
/// namespace `container` binds, so exactly in that container's set when
/// it binds only uts.
fn inside(m: &Mount, container: &str) -> Vec<String> {
    vec![
        "nsenter".into(),
        format!("--uts={}", m.pin(container, "uts")),
        "--".into(),
    ]
}

#[test]
fn a_confined_caller_sees_and_changes_only_its_subtree() {
    let Some(m) = Mount::new("view-confined") else {
        return;
    };
    for d in ["web", "web/db", "blog"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    for f in ["web/uts", "web/db/net", "blog/uts"] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    let outsider = Proc::sh("exec sleep 1000");
    let insider = Proc::sh("exec sleep 1000");
    m.watch_pid(outsider.pid());
    m.watch_pid(insider.pid());
    m.write("web/tasks", insider.pid().to_string().as_bytes())
        .unwrap();
    let out = outsider.pid().to_string();
    let ins = insider.pid().to_string();
    let blog_uts = m.read("blog/uts");

    let prefix = inside(&m, "web");
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    m.step.set("probe from inside web");
    expect(
        &m,
        &prefix,
        &[
            // The path to web, and web in full.
            ("stat", &["@"], "OK"),
            ("list", &["@"], "OK web"),
            ("list", &["@web"], "OK db,status,tasks,uts"),
            ("list", &["@web/db"], "OK net,status,tasks"),
            (
                "read",
                &["@web/uts"],
                &format!("OK {}", m.read("web/uts").trim()),
            ),
            ("readlink", &["@web"], "EINVAL"),
            // The root's files and the sibling answer ENOENT to everything.
            ("stat", &["@tasks"], "ENOENT"),
            ("read", &["@status"], "ENOENT"),
            ("stat", &["@uts"], "ENOENT"),
            ("write", &["@tasks", &out], "ENOENT"),
            ("stat", &["@blog"], "ENOENT"),
            ("list", &["@blog"], "ENOENT"),
            ("read", &["@blog/uts"], "ENOENT"),
            ("readlink", &["@blog"], "ENOENT"),
            ("utime", &["@blog"], "ENOENT"),
            ("utime", &["@tasks"], "ENOENT"),
            ("chmod", &["@blog/uts"], "ENOENT"),
            ("mkdir", &["@blog"], "ENOENT"),
            ("mkdir", &["@elsewhere"], "ENOENT"),
            ("touch", &["@ipc"], "ENOENT"),
            ("unlink", &["@blog/uts"], "ENOENT"),
            ("rmdir", &["@blog"], "ENOENT"),
            ("rename", &["@blog", "@blog3"], "ENOENT"),
            ("link", &["@blog/uts", "@web/db/uts"], "ENOENT"),
            ("link", &["@web/uts", "@blog/ipc"], "ENOENT"),
            // Its own container cannot be removed or renamed from inside:
            // that is a change in the parent, which it sees only as a path.
            ("rmdir", &["@web"], "ENOENT"),
            ("rename", &["@web", "@web2"], "ENOENT"),
            // Inside, it acts as any admin would.
            ("mkdir", &["@web/inner"], "OK"),
            ("rename", &["@web/inner", "@web/inner2"], "OK"),
            ("link", &["@web/db/net", "@web/inner2/net"], "OK"),
            ("unlink", &["@web/inner2/net"], "OK"),
            // It moves and binds processes of its subtree only.
            ("write", &["@web/db/tasks", &ins], "OK"),
            ("read", &["@web/db/tasks"], &format!("OK {ins}")),
            ("write", &["@web/tasks", &out], "EPERM"),
            ("write", &["@web/db/tasks", &out], "EPERM"),
            ("bind", &["@web/inner2/ipc", &out], "EPERM"),
            ("bind", &["@web/inner2/ipc", &ins], "OK"),
            ("unlink", &["@web/inner2/ipc"], "OK"),
            ("rmdir", &["@web/inner2"], "OK"),
            ("read", &["@web/status"], "OK cgroup*"),
        ],
    );
    // Nothing outside web changed, and the moves happened.
    assert_eq!(m.read("blog/uts"), blog_uts);
    assert_eq!(
        ns_text(insider.pid(), "net"),
        m.read("web/db/net").trim(),
        "moved within the subtree"
    );
    assert_eq!(ns_ino(outsider.pid(), "uts"), ns_ino(m.daemon_pid(), "uts"));
    let mut root: Vec<String> = std::fs::read_dir(m.path(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n == "web" || n == "blog")
        .collect();
    root.sort();
    assert_eq!(root, ["blog", "web"]);
    assert!(!m.path("web/inner2").exists());
    assert!(m.log_text().contains("outside the caller's container"));
}

#[test]
fn kernel_caches_never_carry_one_view_to_another() {
    let Some(m) = Mount::new("view-caches") else {
        return;
    };
    for d in ["web", "blog"] {
        std::fs::create_dir(m.path(d)).unwrap();
        std::fs::File::create(m.path(&format!("{d}/uts"))).unwrap();
    }
    let confined = inside(&m, "web");
    let confined: Vec<&str> = confined.iter().map(String::as_str).collect();
    for round in 0..3 {
        m.step.set(&format!("round {round}"));
        // Privileged, then confined, then privileged again: each answer is
        // the asker's own, whatever the kernel saw last.
        expect(
            &m,
            &[],
            &[
                ("stat", &["@blog/uts"], "OK"),
                (
                    "list",
                    &["@"],
                    "OK blog,cgroup,ipc,mnt,net,pid,status,tasks,time,user,uts,web",
                ),
            ],
        );
        expect(
            &m,
            &confined,
            &[
                ("stat", &["@blog/uts"], "ENOENT"),
                ("stat", &["@blog"], "ENOENT"),
                ("list", &["@"], "OK web"),
                ("stat", &["@tasks"], "ENOENT"),
            ],
        );
        expect(
            &m,
            &[],
            &[
                ("stat", &["@blog"], "OK"),
                ("stat", &["@tasks"], "OK"),
                (
                    "list",
                    &["@"],
                    "OK blog,cgroup,ipc,mnt,net,pid,status,tasks,time,user,uts,web",
                ),
            ],
        );
    }
}

#[test]
fn callers_matching_no_container_see_an_empty_root() {
    let Some(m) = Mount::new("view-stranger") else {
        return;
    };
    std::fs::create_dir(m.path("web")).unwrap();
    std::fs::File::create(m.path("web/uts")).unwrap();
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    let t = target.pid().to_string();
    // A fresh uts namespace that no container binds.
    expect(
        &m,
        &["unshare", "--uts", "--"],
        &[
            ("stat", &["@"], "OK"),
            ("list", &["@"], "OK"),
            ("stat", &["@web"], "ENOENT"),
            ("stat", &["@tasks"], "ENOENT"),
            ("mkdir", &["@x"], "ENOENT"),
            ("mkdir", &["@web"], "ENOENT"),
            ("rmdir", &["@web"], "ENOENT"),
            ("write", &["@web/tasks", &t], "ENOENT"),
        ],
    );
    assert!(m.path("web").is_dir());
    assert!(!m.path("x").exists());
    assert_eq!(ns_ino(target.pid(), "uts"), ns_ino(m.daemon_pid(), "uts"));
}

#[test]
fn pid_one_of_a_pid_namespace_writing_1_moves_itself() {
    let Some(m) = Mount::new("view-pid1") else {
        return;
    };
    let host_name = sh_ok("hostname");
    std::fs::create_dir(m.path("p")).unwrap();
    std::fs::create_dir(m.path("p/sub")).unwrap();
    std::fs::File::create(m.path("p/sub/uts")).unwrap();
    sh_ok(&format!(
        "nsenter --uts={} hostname in-sub",
        m.pin("p/sub", "uts")
    ));
    let script = format!(
        "echo $$; read go; echo 1 > {sub}/tasks && hostname && cat {sub}/tasks",
        sub = m.path("p/sub").display()
    );
    let mut shell = Unshared::start(&["--fork", "--pid"], &script);
    m.watch_pid(shell.inner());
    assert_eq!(shell.line(), "1", "the shell is PID 1 of its namespace");
    // p binds the shell's pid namespace, so the shell lives in p's set.
    m.write("p/pid", shell.inner().to_string().as_bytes())
        .unwrap();
    shell.send("go");
    assert_eq!(shell.line(), "in-sub", "it moved itself, not host init");
    assert_eq!(shell.line(), "1", "and reads its own number in tasks");
    assert!(shell.finish());
    assert_eq!(sh_ok("hostname"), host_name, "the host's uts untouched");
    // Where this machine lets the test look at init, init was not moved.
    if let Ok(link) = std::fs::read_link("/proc/1/ns/uts") {
        assert_ne!(link.display().to_string(), m.read("p/sub/uts").trim());
    }
}

#[test]
fn descriptors_opened_by_root_are_checked_again_at_write() {
    let Some(m) = Mount::new("view-inherited") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let target = Proc::sh("exec sleep 1000");
    m.watch_pid(target.pid());
    let before = ns_ino(target.pid(), "uts");
    let bound = m.read("c/uts");
    for rel in ["c/tasks", "c/uts"] {
        m.step.set(&format!("inherited {rel}"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(m.path(rel))
            .unwrap();
        let fd = file.as_raw_fd();
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .args(["bash", "-c", "echo \"$0\" >&3 || echo refused"])
            .arg(target.pid().to_string());
        // SAFETY: only dup2 and fcntl between fork and exec, which are
        // async-signal-safe; they make the open file descriptor 3, kept
        // across exec (dup2 onto itself would keep close-on-exec).
        unsafe {
            cmd.pre_exec(move || {
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "refused\n",
            "{rel}: {err}"
        );
        assert!(err.contains("Operation not permitted"), "{rel}: {err}");
    }
    assert_eq!(ns_ino(target.pid(), "uts"), before, "not moved");
    assert_eq!(m.read("c/uts"), bound, "not rebound");
}

#[test]
fn requests_from_callers_the_daemon_cannot_see_change_nothing() {
    if !require_privileges("view-pid0") {
        return;
    }
    private_mount_namespace();
    let scratch = Scratch::new("view-pid0");
    let dir = scratch.0.join("mnt");
    std::fs::create_dir_all(&dir).unwrap();
    let log = scratch.0.join("daemon.log");
    // The daemon in a pid namespace of its own (with its own /proc): every
    // process of the test's namespace is invisible to it, so its requests
    // carry pid 0. The mount lives in the daemon's mount namespace and is
    // reached through /proc/PID/root.
    let mut daemon = Proc(
        Command::new("unshare")
            .args([
                "--fork",
                "--pid",
                "--mount-proc",
                "--kill-child=SIGTERM",
                "--",
            ])
            .arg(BIN)
            .args(["-f", "-v", "--state-dir"])
            .arg(scratch.0.join("state"))
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let watched = Watched::start("view-pid0");
    watched.watch_pid(daemon.pid());
    let step = &watched.step;
    step.set("wait for the daemon");
    let unshare = daemon.pid();
    let mut inner = 0;
    wait_for("the daemon under unshare", || {
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .map(|p| inner = p)
            .is_some()
    });
    watched.watch_pid(inner);
    let seen = std::path::PathBuf::from(format!("/proc/{inner}/root{}", dir.display()));
    let plain_dev = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&dir).unwrap().dev()
    };
    wait_for("the mount", || {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&seen).is_ok_and(|md| md.dev() != plain_dev)
    });
    step.set("probe with pid 0");
    let p = |rel: &str| seen.join(rel).display().to_string();
    let answers = probe(
        &[],
        &[
            format!("stat {}", p("")),
            format!("list {}", p("")),
            format!("mkdir {}", p("x")),
            format!("stat {}", p("tasks")),
            format!("write {} 1", p("tasks")),
        ],
    );
    assert_eq!(answers, ["OK", "OK", "ENOENT", "ENOENT", "ENOENT"]);
    // Seen from inside the daemon's namespaces, nothing changed.
    step.set("look from inside");
    let listing = sh_ok(&format!("nsenter -t {inner} -a ls {}", dir.display()));
    assert!(listing.lines().any(|l| l == "tasks"), "{listing}");
    assert!(!listing.lines().any(|l| l == "x"), "{listing}");
    step.set("stop the daemon");
    // SAFETY: kill takes integers; the daemon is this test's child's child.
    unsafe { libc::kill(inner, libc::SIGTERM) };
    let status = wait_bounded(&mut daemon.0, std::time::Duration::from_secs(20));
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn a_create_closed_by_a_process_in_execve_completes() {
    let Some(m) = Mount::new("view-exec-flush") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    // The created file is close-on-exec: the child's execve() closes it,
    // and the kernel sends the flush from inside that execve. Reading the
    // child's namespaces then would wait for the exec, which waits for the
    // flush.
    m.step.set("exec with a created kind file open");
    let file = std::fs::File::create(m.path("c/net")).unwrap();
    let mut child = Command::new("true").spawn().unwrap();
    m.watch_pid(child.id() as i32);
    let status = wait_bounded(&mut child, std::time::Duration::from_secs(20));
    assert!(status.success(), "{status}");
    drop(file);
    assert_ne!(m.read("c/net"), m.read("net"), "a fresh net is bound");
}

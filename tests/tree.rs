//! The control tree on a real mount: containers, kind files, composition,
//! fresh namespaces, pins and status, checked against /proc/PID/ns.

mod common;

use std::os::unix::fs::MetadataExt;

use common::*;

#[test]
fn root_container_names_the_daemons_own_namespaces() {
    let Some(m) = Mount::new("root") else { return };
    let daemon = m.daemon_pid();
    for kind in KINDS {
        m.step.set(&format!("root kind file {kind}"));
        assert_eq!(
            m.read(kind),
            format!("{}\n", ns_text(daemon, kind)),
            "{kind}"
        );
        let md = std::fs::metadata(m.path(kind)).unwrap();
        assert_eq!(
            md.ino(),
            ns_ino(daemon, proc_entry(kind)),
            "st_ino of {kind}"
        );
        assert_eq!(md.nlink(), 1, "st_nlink of {kind}");
        assert_eq!(md.mode() & 0o777, 0o444, "{kind} is read-only");
        assert_eq!(
            errno(m.write(kind, b"1\n")),
            libc::EPERM,
            "write root {kind}"
        );
        assert_eq!(
            errno(std::fs::remove_file(m.path(kind))),
            libc::EPERM,
            "rm root {kind}"
        );
    }
    let mut names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<&str> = KINDS.to_vec();
    want.extend(["status", "tasks"]);
    want.sort();
    assert_eq!(names, want);
    let status = m.status("");
    assert_eq!(status.len(), 8);
    for (line, kind) in status.iter().zip(KINDS) {
        assert_eq!(line.len(), 4, "{line:?}");
        assert_eq!(line[0], kind);
        assert_eq!(line[1], ns_text(daemon, kind));
        assert_eq!(line[2], "own");
    }
    // The daemon and a process started next to it are in the root's set.
    let p = Proc::sh("exec sleep 100");
    m.watch_pid(p.pid());
    let tasks = m.read("tasks");
    for pid in [daemon, p.pid()] {
        assert!(
            tasks.lines().any(|l| l == pid.to_string()),
            "{pid} listed in root tasks"
        );
    }
    let pids: Vec<i32> = tasks.lines().map(|l| l.parse().unwrap()).collect();
    assert!(pids.windows(2).all(|w| w[0] < w[1]), "ascending");
    assert!(!pids.contains(&2), "kernel threads are not listed");
    assert!(m.log_text().contains("refused"), "refusals are logged");
}

#[test]
fn containers_mkdir_rmdir_rename_and_names() {
    let Some(m) = Mount::new("containers") else {
        return;
    };
    std::fs::create_dir(m.path("web")).unwrap();
    std::fs::create_dir(m.path("web/db")).unwrap();
    assert_eq!(errno(std::fs::create_dir(m.path("web"))), libc::EEXIST);
    for bad in ["tasks", "status", "net", "uts", ".hidden", ".."] {
        m.step.set(&format!("mkdir {bad}"));
        let e = errno(std::fs::create_dir(m.path(&format!("web/{bad}"))));
        assert!(e == libc::EINVAL || e == libc::EEXIST, "mkdir {bad}: {e}");
    }
    assert_eq!(errno(std::fs::create_dir(m.path("web/.x"))), libc::EINVAL);
    assert_eq!(errno(std::fs::remove_dir(m.path("web"))), libc::ENOTEMPTY);

    // A container's processes are untouched by rmdir.
    let p = Proc::sh("exec unshare --uts sh -c 'hostname inner; exec sleep 100'");
    m.watch_pid(p.pid());
    let inner = p.pid();
    wait_for("hostname set", || {
        sh_ok(&format!("nsenter -t {inner} -u hostname")) == "inner\n"
    });
    let uts_before = ns_ino(inner, "uts");
    m.write("web/db/uts", format!("{inner}\n").as_bytes())
        .unwrap();
    assert_eq!(m.read("web/db/uts"), format!("uts:[{uts_before}]\n"));
    std::fs::remove_dir(m.path("web/db")).unwrap();
    assert_eq!(ns_ino(inner, "uts"), uts_before);
    assert_eq!(sh_ok(&format!("nsenter -t {inner} -u hostname")), "inner\n");

    std::fs::rename(m.path("web"), m.path("www")).unwrap();
    assert!(m.path("www/tasks").exists());
    assert!(!m.path("web").exists());
    std::fs::create_dir(m.path("other")).unwrap();
    assert_eq!(
        errno(std::fs::rename(m.path("www"), m.path("other/www"))),
        libc::EINVAL
    );
    assert_eq!(
        errno(std::fs::rename(m.path("www"), m.path(".www"))),
        libc::EINVAL
    );
    // Over a file: the kernel itself refuses a directory replacing a file.
    assert_eq!(
        errno(std::fs::rename(m.path("www"), m.path("net"))),
        libc::ENOTDIR
    );
    std::fs::remove_dir(m.path("www")).unwrap();
    std::fs::remove_dir(m.path("other")).unwrap();

    // Depth: 32 levels below the root, no more.
    let mut path = String::new();
    for i in 0..32 {
        path.push_str(&format!("/d{i}"));
        std::fs::create_dir(m.path(&path[1..])).unwrap();
    }
    assert_eq!(
        errno(std::fs::create_dir(m.path(&format!("{}/x", &path[1..])))),
        libc::EMLINK
    );
}

#[test]
fn rfc_composition_with_ln() {
    let Some(m) = Mount::new("rfc") else { return };
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("vserver1")).unwrap();
    std::fs::File::create(m.path("vserver1/net")).unwrap();
    std::fs::File::create(m.path("vserver1/uts")).unwrap();
    std::fs::create_dir(m.path("new_container")).unwrap();
    std::fs::hard_link(m.path("vserver1/net"), m.path("new_container/net")).unwrap();

    let vs_net = m.read("vserver1/net");
    assert_ne!(vs_net, m.read("net"));
    let status = m.status("new_container");
    for (line, kind) in status.iter().zip(KINDS) {
        if kind == "net" {
            assert_eq!(format!("{}\n", line[1]), vs_net);
            assert_eq!(line[2], "own");
        } else {
            assert_eq!(
                line[1],
                ns_text(daemon, kind),
                "{kind} inherited from the root"
            );
            assert_eq!(line[2], "/");
        }
    }
    let a = std::fs::metadata(m.path("vserver1/net")).unwrap();
    let b = std::fs::metadata(m.path("new_container/net")).unwrap();
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(b.nlink(), 2);

    // ln across kinds, onto a bound kind, onto the root.
    let e = errno(std::fs::hard_link(
        m.path("vserver1/uts"),
        m.path("new_container/ipc"),
    ));
    assert_eq!(e, libc::EINVAL);
    // A link under another name binds nothing until renamed onto its kind's
    // name (what `ln -f` does), and cannot be renamed onto another kind.
    std::fs::hard_link(m.path("vserver1/uts"), m.path("new_container/staged")).unwrap();
    assert_eq!(m.status("new_container")[7][2], "/");
    let e = errno(std::fs::rename(
        m.path("new_container/staged"),
        m.path("new_container/ipc"),
    ));
    assert_eq!(e, libc::EINVAL);
    std::fs::remove_file(m.path("new_container/staged")).unwrap();
    assert!(!m.path("new_container/staged").exists());
    let e = errno(std::fs::hard_link(
        m.path("net"),
        m.path("new_container/net"),
    ));
    assert_eq!(e, libc::EEXIST);
    let e = errno(std::fs::hard_link(m.path("vserver1/uts"), m.path("uts")));
    assert_eq!(e, libc::EEXIST);
    // ln -f: unlink first, then link.
    sh_ok(&format!(
        "ln -f {} {}",
        m.path("net").display(),
        m.path("new_container/net").display()
    ));
    assert_eq!(m.read("new_container/net"), m.read("net"));
    assert_eq!(
        std::fs::metadata(m.path("vserver1/net")).unwrap().nlink(),
        1
    );
    assert_eq!(std::fs::metadata(m.path("net")).unwrap().nlink(), 2);

    // rm unbinds: the container inherits again.
    std::fs::remove_file(m.path("new_container/net")).unwrap();
    assert!(!m.path("new_container/net").exists());
    assert_eq!(m.status("new_container")[3][2], "/");
    assert_eq!(
        errno(std::fs::remove_file(m.path("new_container/net"))),
        libc::ENOENT
    );

    // Nested containers inherit from their parent, not the root.
    std::fs::create_dir(m.path("vserver1/inner")).unwrap();
    let line = &m.status("vserver1/inner")[3];
    assert_eq!(format!("{}\n", line[1]), vs_net);
    assert_eq!(line[2], "/vserver1");
}

#[test]
fn echo_pid_binds_in_the_writers_pid_namespace() {
    let Some(m) = Mount::new("echo-pid") else {
        return;
    };
    // A writer in its own uts, mount and pid namespaces writes a pid of its
    // pid namespace. Container w binds those three, so the writer lives in
    // w and acts in w's subtree (see docs/security.md); c is inside w.
    std::fs::create_dir(m.path("w")).unwrap();
    std::fs::create_dir(m.path("w/c")).unwrap();
    let script = format!(
        "hostname pidns-uts; sleep 100 & p=$!; echo $p; read go; echo $p > {c}/uts; kill $p",
        c = m.path("w/c").display()
    );
    let mut writer = Unshared::start(&["--uts", "--fork", "--pid", "--mount-proc"], &script);
    m.watch_pid(writer.inner());
    let inner_pid: i32 = writer.line().parse().unwrap();
    for kind in ["uts", "mnt", "pid"] {
        m.write(&format!("w/{kind}"), writer.inner().to_string().as_bytes())
            .unwrap();
    }
    writer.send("go");
    assert!(
        writer.finish(),
        "the writer's echo failed: {}",
        m.log_text()
    );
    assert!(
        inner_pid < 10,
        "the writer saw a pid of its own namespace: {inner_pid}"
    );
    let pin = m.pin("w/c", "uts");
    assert_eq!(
        sh_ok(&format!("nsenter --uts={pin} hostname")),
        "pidns-uts\n"
    );
    assert_ne!(m.read("w/c/uts"), m.read("uts"));

    // Writing to an existing binding replaces it (here: back to the root's).
    m.write("w/c/uts", format!("{}\n", std::process::id()).as_bytes())
        .unwrap();
    assert_eq!(m.read("w/c/uts"), m.read("uts"));
    // No such process.
    assert_eq!(errno(m.write("w/c/ipc", b"2147483647\n")), libc::ESRCH);
    assert!(
        !m.path("w/c/ipc").exists(),
        "a failed write leaves nothing bound"
    );
}

#[test]
fn echo_path_binds_a_namespace_file() {
    let Some(m) = Mount::new("echo-path") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let p = Proc::sh("exec unshare --uts --ipc sh -c 'hostname from-path; exec sleep 100'");
    m.watch_pid(p.pid());
    let inner = p.pid();
    wait_for("hostname set", || {
        sh_ok(&format!("nsenter -t {inner} -u hostname")) == "from-path\n"
    });
    m.write("c/uts", format!("/proc/{inner}/ns/uts").as_bytes())
        .unwrap();
    assert_eq!(m.read("c/uts"), format!("uts:[{}]\n", ns_ino(inner, "uts")));

    // An `ip netns add` namespace, made on a tmpfs of this thread's own
    // mount namespace: nothing is made on the host.
    let cover = if std::path::Path::new("/run/netns").is_dir() {
        c"/run/netns"
    } else {
        c"/run"
    };
    // SAFETY: NUL-terminated strings that outlive the call; a tmpfs in the
    // test thread's private mount namespace.
    let r = unsafe {
        libc::mount(
            c"nsproxyfs-test".as_ptr(),
            cover.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "tmpfs: {}", std::io::Error::last_os_error());
    let name = format!("nsproxyfs-test-{}", std::process::id());
    sh_ok(&format!("ip netns add {name}"));
    let netns = format!("/run/netns/{name}");
    let result = m.write("c/net", netns.as_bytes());
    let want = std::fs::metadata(&netns).map(|md| md.ino());
    sh_ok(&format!("ip netns del {name}"));
    // SAFETY: a NUL-terminated path; the tmpfs mounted above (with the
    // mount ip netns made inside it).
    unsafe { libc::umount2(cover.as_ptr(), libc::MNT_DETACH) };
    result.unwrap();
    assert_eq!(m.read("c/net"), format!("net:[{}]\n", want.unwrap()));

    // A relative path resolves from the writer's working directory.
    let out = sh(&format!(
        "cd /proc/{inner}/ns && echo ./ipc > {}/c/ipc",
        m.dir.display()
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(m.read("c/ipc"), format!("ipc:[{}]\n", ns_ino(inner, "ipc")));

    // Wrong kind, a regular file, a missing path.
    let before = m.read("c/status");
    assert_eq!(
        errno(m.write("c/time", format!("/proc/{inner}/ns/uts").as_bytes())),
        libc::EINVAL
    );
    let regular = m.scratch("regular");
    std::fs::write(&regular, "x").unwrap();
    assert_eq!(
        errno(m.write("c/time", regular.to_str().unwrap().as_bytes())),
        libc::EINVAL
    );
    assert_eq!(errno(m.write("c/time", b"/no/such/file")), libc::ENOENT);
    assert_eq!(m.read("c/status"), before);
    assert!(!m.path("c/time").exists());
}

#[test]
fn touch_binds_a_fresh_namespace_of_every_kind() {
    let Some(m) = Mount::new("fresh") else { return };
    let daemon = m.daemon_pid();
    std::fs::create_dir(m.path("f")).unwrap();
    for kind in KINDS {
        m.step.set(&format!("touch f/{kind}"));
        sh_ok(&format!("touch {}", m.path(&format!("f/{kind}")).display()));
        let text = m.read(&format!("f/{kind}"));
        assert!(text.starts_with(&format!("{kind}:[")), "{text}");
        assert_ne!(
            text,
            format!("{}\n", ns_text(daemon, kind)),
            "fresh {kind} differs from root"
        );
        // touch of an existing kind file changes nothing.
        sh_ok(&format!("touch {}", m.path(&format!("f/{kind}")).display()));
        assert_eq!(m.read(&format!("f/{kind}")), text);
        let pin = m.pin("f", kind);
        let opt = if kind == "mnt" {
            "mount".to_owned()
        } else {
            kind.to_owned()
        };
        let seen = sh_ok(&format!(
            "nsenter --{opt}={pin} readlink /proc/self/ns/{kind}"
        ));
        if kind != "pid" && kind != "time" {
            assert_eq!(seen, text, "nsenter --{opt} through the pin");
        }
    }
    // Fresh net: only lo, down, as `ip netns add` leaves it.
    let links = sh_ok(&format!("nsenter --net={} ip -o link", m.pin("f", "net")));
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(
        links.contains("lo:") && links.contains("state DOWN"),
        "{links}"
    );
    // Fresh uts: a copy of the daemon's hostname.
    let host = sh_ok("hostname");
    assert_eq!(
        sh_ok(&format!("nsenter --uts={} hostname", m.pin("f", "uts"))),
        host
    );
    // Fresh user: identity maps.
    let maps = sh_ok(&format!(
        "nsenter --user={} sh -c 'cat /proc/self/uid_map /proc/self/gid_map'",
        m.pin("f", "user")
    ));
    for line in maps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f, ["0", "0", "4294967295"], "{maps}");
    }
    // Fresh pid: its PID 1 is the daemon's keeper, and forks keep working
    // after the first child exits.
    let pid_ino: u64 = m.read("f/pid").trim()[5..]
        .trim_end_matches(']')
        .parse()
        .unwrap();
    let keeper = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| {
            std::fs::metadata(format!("/proc/{p}/ns/pid"))
                .map(|md| md.ino())
                .ok()
                == Some(pid_ino)
                && std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .ok()
                    .as_deref()
                    == Some("nsproxyfs-pid1\n")
        })
        .expect("a keeper process in the fresh pid namespace");
    let nspid = std::fs::read_to_string(format!("/proc/{keeper}/status")).unwrap();
    let nspid = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        nspid.trim_end().ends_with("\t1"),
        "keeper is PID 1: {nspid}"
    );
    let pin = m.pin("f", "pid");
    for _ in 0..2 {
        let out = sh_ok(&format!("nsenter --pid={pin} sh -c 'echo $$'"));
        assert!(out.trim().parse::<i32>().unwrap() > 1, "{out}");
    }
    // Fresh mnt: the copy does not contain this filesystem's mount.
    let mounts = sh_ok(&format!(
        "nsenter --mount={} cat /proc/self/mounts",
        m.pin("f", "mnt")
    ));
    assert!(!mounts.contains(m.dir.to_str().unwrap()), "{mounts}");
}

#[test]
fn a_bound_namespace_outlives_its_processes() {
    let Some(m) = Mount::new("outlive") else {
        return;
    };
    std::fs::create_dir(m.path("keep")).unwrap();
    std::fs::File::create(m.path("keep/net")).unwrap();
    let pin = m.pin("keep", "net");
    sh_ok(&format!("nsenter --net={pin} ip link set lo up"));
    // Nothing runs in it now; the binding alone keeps it, lo still up.
    let links = sh_ok(&format!("nsenter --net={pin} ip -o link show lo"));
    assert!(links.contains("UP"), "{links}");
    let ino = std::fs::metadata(m.path("keep/net")).unwrap().ino();
    assert!(!std::fs::read_dir("/proc").unwrap().any(|e| {
        let Some(p) = e
            .ok()
            .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
        else {
            return false;
        };
        std::fs::metadata(format!("/proc/{p}/ns/net"))
            .map(|md| md.ino())
            .ok()
            == Some(ino)
    }));
    // Unbinding releases it: the pin goes away.
    std::fs::remove_file(m.path("keep/net")).unwrap();
    assert!(!std::path::Path::new(&pin).exists(), "pin {pin} removed");
}

/// Checks every pin path `status` of `container` prints with util-linux
/// nsenter: entering it gives the namespace `status` names. Returns the
/// kinds checked.
fn check_status_pins(m: &Mount, container: &str) -> Vec<String> {
    let me = std::process::id() as i32;
    let mut checked = Vec::new();
    for line in m.status(container) {
        let [kind, ns, _from, pin] = &line[..] else {
            panic!("{line:?}")
        };
        if kind == "user" && *ns == ns_text(me, "user") {
            // setns() refuses to re-enter the user namespace one is in.
            continue;
        }
        let opt = if kind == "mnt" {
            "mount"
        } else {
            kind.as_str()
        };
        // nsenter forks after joining a pid or time namespace, so the
        // command runs in it (not only its children).
        let seen = sh_ok(&format!(
            "nsenter --{opt}={pin} readlink /proc/self/ns/{kind}"
        ));
        assert_eq!(seen.trim(), ns, "{container}/status: {kind} through {pin}");
        checked.push(kind.clone());
    }
    checked
}

#[test]
fn status_pins_work_with_nsenter() {
    let Some(mut m) = Mount::new("status") else {
        return;
    };
    std::fs::create_dir(m.path("s")).unwrap();
    for kind in KINDS {
        std::fs::File::create(m.path(&format!("s/{kind}"))).unwrap();
    }
    let all: Vec<String> = KINDS.iter().map(|k| k.to_string()).collect();
    for round in ["first start", "after SIGKILL and a restart"] {
        m.step.set(round);
        assert_eq!(check_status_pins(&m, "s"), all, "{round}");
        let root = check_status_pins(&m, "");
        assert_eq!(
            root.len(),
            7,
            "the root's own, but user: {root:?} ({round})"
        );
        if round == "first start" {
            m.kill();
            m.restart();
        }
    }
}

#[test]
fn the_compose_example_runs() {
    let Some(m) = Mount::new("example") else {
        return;
    };
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/compose");
    assert!(
        example.exists(),
        "{} missing: `cargo test` builds examples",
        example.display()
    );
    let out = sh_ok(&format!("{} {}", example.display(), m.dir.display()));
    let daemon = m.daemon_pid();
    assert!(out.contains(&ns_text(daemon, "ipc")), "{out}");
    assert!(!out.contains(&ns_text(daemon, "net")), "{out}");
    assert!(out.contains("its own (linked from vserver1)"), "{out}");
    assert!(!m.path("vserver1").exists(), "the example cleans up");
}

#[test]
fn unprivileged_callers_read_but_change_nothing() {
    let Some(m) = Mount::new("unprivileged") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let d = m.dir.display();
    let nobody = "setpriv --reuid 65534 --regid 65534 --clear-groups sh";
    // Reading is open to everyone.
    sh_ok(&format!(
        "{nobody} -c 'cat {d}/tasks {d}/status {d}/net {d}/c/uts >/dev/null'"
    ));
    let before = m.read("c/status");
    for (what, cmd) in [
        ("mkdir", format!("mkdir {d}/x")),
        ("rmdir", format!("rmdir {d}/c")),
        ("rename", format!("mv {d}/c {d}/y")),
        ("ln", format!("ln {d}/c/uts {d}/c/../c/uts.tmp")),
        ("rm", format!("rm -f {d}/c/uts")),
        ("touch", format!("touch {d}/c/ipc")),
        ("write kind", format!("echo $$ > {d}/c/uts")),
        ("write tasks", format!("echo $$ > {d}/c/tasks")),
    ] {
        // uid 65534, and uid 0 without CAP_SYS_ADMIN.
        for who in [nobody, "capsh --drop=cap_sys_admin --"] {
            let out = sh(&format!("{who} -c '{cmd}'"));
            assert!(!out.status.success(), "{what} as {who} succeeded");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("Operation not permitted"),
                "{what} as {who}: {err}"
            );
        }
    }
    assert_eq!(m.read("c/status"), before);
    assert!(m.path("c").exists() && !m.path("x").exists() && !m.path("y").exists());
}

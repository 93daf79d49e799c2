//! Every right the daemon checks is compared with the kernel's own answer
//! for the same credentials: the same command line runs a probe (a real
//! `PTRACE_SEIZE`, a real `open` of `/proc/PID/ns/*` or of a path) and the
//! write to the tree, and the two answers must agree.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use common::*;

/// A caller: a command line that runs a shell script with some credentials.
struct Caller {
    name: &'static str,
    prefix: &'static [&'static str],
    /// Holds CAP_SYS_ADMIN, which every change of the tree needs.
    admin: bool,
}

const CALLERS: [Caller; 4] = [
    Caller {
        name: "root",
        prefix: &["sh", "-c"],
        admin: true,
    },
    Caller {
        name: "root without CAP_SYS_PTRACE",
        prefix: &["capsh", "--drop=cap_sys_ptrace", "--", "-c"],
        admin: true,
    },
    Caller {
        name: "uid 1000 with only CAP_SYS_ADMIN",
        prefix: &[
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "--inh-caps",
            "+sys_admin",
            "--ambient-caps",
            "+sys_admin",
            "sh",
            "-c",
        ],
        admin: true,
    },
    Caller {
        name: "plain uid 1000",
        prefix: &[
            "setpriv",
            "--reuid",
            "1000",
            "--regid",
            "1000",
            "--clear-groups",
            "sh",
            "-c",
        ],
        admin: false,
    },
];

fn run_as(caller: &Caller, script: &str) -> Output {
    Command::new(caller.prefix[0])
        .args(&caller.prefix[1..])
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .expect("run a caller")
}

/// The kernel's answer to "may this caller PTRACE_SEIZE `pid`": a real
/// seize by a probe with the caller's credentials (it exits at once, which
/// detaches it).
fn kernel_may_seize(caller: &Caller, pid: i32) -> bool {
    let probe = format!(
        "/usr/bin/python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); \
         r = l.ptrace(ctypes.c_long(0x4206), ctypes.c_int({pid}), None, None); \
         print(\"yes\" if r == 0 else \"no\")'"
    );
    let out = run_as(caller, &probe);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said == "yes\n" || said == "no\n", "probe said {said:?}");
    said == "yes\n"
}

/// The kernel's answer to "may this caller open `path`".
fn kernel_may_open(caller: &Caller, path: &str) -> bool {
    let out = run_as(
        caller,
        &format!("/usr/bin/python3 -c 'import os; os.close(os.open(\"{path}\", os.O_RDONLY))'"),
    );
    out.status.success()
}

/// A long-lived target started by a command line.
fn target(script: &str) -> Proc {
    let p = Proc::sh(&format!("exec {script}"));
    wait_for("the target to settle", || {
        std::fs::read_to_string(format!("/proc/{}/comm", p.pid()))
            .is_ok_and(|c| c == "sleep\n" || c == "python3\n")
            && std::fs::read_to_string(format!("/proc/{}/wchan", p.pid()))
                .is_ok_and(|w| w.contains("sleep"))
    });
    p
}

const NONDUMPABLE_SLEEP: &str = "/usr/bin/python3 -c 'import ctypes, time; \
     ctypes.CDLL(None).prctl(4, 0, 0, 0, 0); time.sleep(1000)'";

fn as_uid(uid: u32, caps: &str, cmd: &str) -> String {
    format!(
        "setpriv --reuid {uid} --regid {uid} --clear-groups --inh-caps {caps} \
         --ambient-caps {caps} {cmd}"
    )
}

/// Whether `container` binds `kind` itself (its `status` says `own`). A
/// kind file just created may still be listed until its release arrives,
/// so the file's existence says nothing.
fn binds(m: &Mount, container: &str, kind: &str) -> bool {
    m.status(container)
        .iter()
        .any(|row| row[0] == kind && row[2] == "own")
}

fn count_in_log(m: &Mount, needle: &str) -> usize {
    m.log_text().matches(needle).count()
}

#[test]
fn moving_needs_what_ptrace_seize_would_need() {
    // -v -v: the daemon logs each caller it lets trace a process (refusals
    // are rate limited, so they are not what is counted).
    let Some(m) = Mount::with_args("rights-ptrace", &["-v"]) else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let bound = m.bound_ino("c/uts");
    // A setuid-root program run by uid 1000.
    let dir = m.scratch("suid");
    std::fs::create_dir(&dir).unwrap();
    let suid = dir.join("sleep");
    std::fs::copy("/bin/sleep", &suid).unwrap();
    std::fs::set_permissions(&suid, std::fs::Permissions::from_mode(0o4755)).unwrap();
    for d in [&dir, &m.scratch("")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let targets: Vec<(&str, Proc)> = vec![
        ("root, full capabilities", target("sleep 1000")),
        ("root, not dumpable", target(NONDUMPABLE_SLEEP)),
        (
            "root without CAP_SYS_PTRACE",
            target("capsh --drop=cap_sys_ptrace -- -c 'exec sleep 1000'"),
        ),
        (
            "uid 1000",
            target(&as_uid(1000, "+sys_admin", "sleep 1000")),
        ),
        (
            "uid 1000, not dumpable",
            target(&as_uid(1000, "+sys_admin", NONDUMPABLE_SLEEP)),
        ),
        (
            "uid 1000, more capabilities",
            target(&as_uid(1000, "+sys_admin,+net_admin", "sleep 1000")),
        ),
        (
            "uid 2000",
            target(&as_uid(2000, "+sys_admin", "sleep 1000")),
        ),
        (
            "setuid root run by uid 1000",
            target(&format!(
                "setpriv --reuid 1000 --regid 1000 --clear-groups {} 1000",
                suid.display()
            )),
        ),
    ];
    for (_, p) in &targets {
        m.watch_pid(p.pid());
    }
    let tasks = m.path("c/tasks");
    let mut allowed = 0;
    let mut refused = 0;
    for caller in &CALLERS {
        for (what, p) in &targets {
            let pid = p.pid();
            m.step.set(&format!("{} moves {what}", caller.name));
            let kernel = kernel_may_seize(caller, pid);
            let before = ns_ino(pid, "uts");
            let passed = format!("trace process {pid}\n");
            let rights = count_in_log(&m, &passed);
            let out = run_as(caller, &format!("echo {pid} > {}", tasks.display()));
            let refused_by_rights = count_in_log(&m, &passed) == rights;
            let cell = format!("{} moving {what}: kernel says {kernel}", caller.name);
            if !caller.admin {
                assert!(refused_by_rights && !out.status.success(), "{cell}");
                assert_eq!(ns_ino(pid, "uts"), before, "{cell}: nothing moved");
                continue;
            }
            assert_eq!(!refused_by_rights, kernel, "{cell}: the daemon disagrees");
            if kernel {
                allowed += 1;
            } else {
                refused += 1;
                assert!(!out.status.success(), "{cell}");
            }
            // Whatever happened, all or nothing.
            let after = ns_ino(pid, "uts");
            if out.status.success() {
                assert_eq!(after, bound, "{cell}: moved");
                sh_ok(&format!("echo {pid} > {}", m.path("tasks").display()));
            } else {
                assert_eq!(after, before, "{cell}: a refused move changes nothing");
            }
        }
    }
    // The matrix is not one-sided.
    assert!(
        allowed >= 4 && refused >= 8,
        "{allowed} allowed, {refused} refused"
    );
}

#[test]
fn binding_by_pid_needs_what_opening_its_ns_file_would_need() {
    let Some(m) = Mount::new("rights-bind-pid") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let targets: Vec<(&str, Proc)> = vec![
        (
            "root in a net namespace of its own",
            target("unshare --net sleep 1000"),
        ),
        ("root, not dumpable", target(NONDUMPABLE_SLEEP)),
        (
            "uid 1000",
            target(&as_uid(1000, "+sys_admin", "sleep 1000")),
        ),
        (
            "uid 1000, not dumpable",
            target(&as_uid(1000, "+sys_admin", NONDUMPABLE_SLEEP)),
        ),
        (
            "uid 2000",
            target(&as_uid(2000, "+sys_admin", "sleep 1000")),
        ),
    ];
    let mut allowed = 0;
    let mut refused = 0;
    for caller in &CALLERS {
        for (what, p) in &targets {
            let pid = p.pid();
            m.step
                .set(&format!("{} binds the net of {what}", caller.name));
            let kernel = kernel_may_open(caller, &format!("/proc/{pid}/ns/net"));
            let out = run_as(
                caller,
                &format!("echo {pid} > {}", m.path("c/net").display()),
            );
            let cell = format!("{} binding {what}: kernel says {kernel}", caller.name);
            let bound = binds(&m, "c", "net");
            assert_eq!(out.status.success(), bound, "{cell}");
            if caller.admin {
                assert_eq!(bound, kernel, "{cell}: the daemon disagrees");
                if kernel {
                    allowed += 1;
                } else {
                    refused += 1;
                }
            } else {
                assert!(!bound, "{cell}: needs CAP_SYS_ADMIN");
            }
            if bound {
                assert_eq!(
                    m.bound_ino("c/net"),
                    ns_ino(pid, "net"),
                    "{cell}: the process's own net"
                );
                std::fs::remove_file(m.path("c/net")).unwrap();
            }
        }
    }
    assert!(
        allowed >= 4 && refused >= 4,
        "{allowed} allowed, {refused} refused"
    );
}

#[test]
fn binding_by_path_opens_as_the_caller() {
    let Some(m) = Mount::new("rights-bind-path") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let holder = target("unshare --net sleep 1000");
    // A namespace file in uid 1000's private directory.
    let private = m.scratch("private");
    std::fs::create_dir(&private).unwrap();
    let file = private.join("net");
    std::fs::File::create(&file).unwrap();
    sh_ok(&format!(
        "mount --bind /proc/{}/ns/net {}",
        holder.pid(),
        file.display()
    ));
    sh_ok(&format!(
        "chown 1000:1000 {0} && chmod 0700 {0}",
        private.display()
    ));
    let no_dac = Caller {
        name: "root without CAP_DAC_OVERRIDE",
        prefix: &[
            "capsh",
            "--drop=cap_dac_override,cap_dac_read_search",
            "--",
            "-c",
        ],
        admin: true,
    };
    let path = file.display().to_string();
    let mut cells = 0;
    for caller in CALLERS.iter().chain([&no_dac]) {
        m.step.set(&format!("{} binds {path}", caller.name));
        let kernel = kernel_may_open(caller, &path);
        let out = run_as(
            caller,
            &format!("echo {path} > {}", m.path("c/net").display()),
        );
        let bound = binds(&m, "c", "net");
        assert_eq!(out.status.success(), bound);
        assert_eq!(
            bound,
            kernel && caller.admin,
            "{}: kernel says {kernel}",
            caller.name
        );
        if bound {
            assert_eq!(m.bound_ino("c/net"), ns_ino(holder.pid(), "net"));
            std::fs::remove_file(m.path("c/net")).unwrap();
            cells += 1;
        }
    }
    assert!(
        !kernel_may_open(&no_dac, &path) && kernel_may_open(&CALLERS[0], &path) && cells >= 1,
        "the directory must keep root without CAP_DAC_OVERRIDE out"
    );
    sh_ok(&format!("umount {}", file.display()));
}

#[test]
fn proc_self_in_a_written_path_means_the_writer() {
    let Some(m) = Mount::new("rights-proc-self") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    let root_net = ns_ino(std::process::id() as i32, "net");
    // A writer confined to c: it names its own namespaces through /proc.
    let script = format!(
        "echo $$ > {c}/tasks && echo /proc/self/ns/net > sub/net && \
         echo /proc/thread-self/ns/uts > sub/uts && echo /proc/self/ns/net",
        c = m.path("c").display()
    );
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && sh -c '{script}'", m.path("c").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c_net = m.bound_ino("c/net");
    assert_ne!(c_net, root_net);
    assert_eq!(
        m.bound_ino("c/sub/net"),
        c_net,
        "the writer's net, not the daemon's"
    );
    assert_eq!(m.bound_ino("c/sub/uts"), m.bound_ino("c/uts"));
    // From outside, the same words name the outside writer's own.
    std::fs::create_dir(m.path("d")).unwrap();
    let other = target("unshare --net sh -c 'exec sleep 1000'");
    sh_ok(&format!(
        "echo /proc/{}/ns/net > {}",
        other.pid(),
        m.path("d/net").display()
    ));
    assert_eq!(m.bound_ino("d/net"), ns_ino(other.pid(), "net"));
    sh_ok(&format!(
        "echo /proc/self/ns/ipc > {}",
        m.path("d/ipc").display()
    ));
    assert_eq!(
        m.bound_ino("d/ipc"),
        ns_ino(std::process::id() as i32, "ipc")
    );
}

#[test]
fn fifos_devices_and_the_mount_itself_are_refused_at_once() {
    let Some(m) = Mount::new("rights-fifo") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let fifo = m.scratch("fifo");
    sh_ok(&format!("mkfifo {}", fifo.display()));
    let cases = [
        ("a FIFO with no writer", fifo.display().to_string()),
        ("a device", "/dev/null".to_string()),
        ("a tty device", "/dev/tty".to_string()),
        (
            "a kind file of the mount",
            m.path("c/uts").display().to_string(),
        ),
        ("the mount's root", m.path("").display().to_string()),
        ("a link into the mount", {
            let link = m.scratch("into-mount");
            std::os::unix::fs::symlink(m.path("c"), &link).unwrap();
            format!("{}/uts", link.display())
        }),
    ];
    for (what, path) in cases {
        m.step.set(&format!("bind {what}"));
        let got = errno(write_once(&m.path("c/net"), path.as_bytes()));
        assert_eq!(got, libc::EINVAL, "{what}");
        assert!(!binds(&m, "c", "net"), "{what}: nothing bound");
    }
    // Relative to a working directory inside the mount.
    m.step.set("relative path from inside the mount");
    let out = sh(&format!("cd {} && echo ./uts > net", m.path("c").display()));
    assert!(!out.status.success());
    assert!(!binds(&m, "c", "net"));
    let log = m.log_text();
    assert!(log.contains("inside this filesystem's own mount"), "{log}");
    assert!(log.contains("not a regular file"), "{log}");
}

#[test]
fn a_process_that_is_gone_when_judged_is_esrch() {
    let Some(m) = Mount::new("rights-zombie") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    // A zombie: exited, not reaped. Its pid names no process to move.
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id() as i32;
    wait_for("the child to exit", || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    });
    let got = errno(write_once(&m.path("c/tasks"), pid.to_string().as_bytes()));
    child.wait().unwrap();
    assert_eq!(got, libc::ESRCH);
}

#[test]
fn the_right_to_trace_is_asked_again_once_the_target_is_stopped() {
    if !require_privileges("rights-recheck") {
        return;
    }
    use nsproxyfs::ns::creds::{self, Credentials};
    use nsproxyfs::transfer::{self, FatalSeccomp, MoveError, ProcessHandle};
    let holder = target("unshare --uts sleep 1000");
    let victim = target("sleep 1000");
    let (pid, before) = (victim.pid(), ns_ino(victim.pid(), "uts"));
    let kinds = nix::sched::CloneFlags::CLONE_NEWUTS;
    // What the injector asks with a caller's credentials: a uid 1000 with
    // only CAP_SYS_ADMIN may not trace a root process.
    let caller = Credentials {
        uid: [1000; 4],
        gid: [1000; 4],
        groups: Vec::new(),
        effective: 1 << 21,
        permitted: 1 << 21,
        inheritable: 0,
    };
    let asked = std::sync::Mutex::new(Vec::new());
    let recheck = |tids: &[nix::unistd::Pid]| {
        asked.lock().unwrap().extend_from_slice(tids);
        let refused = creds::as_tracer(&caller, || {
            tids.iter()
                .any(|t| creds::may_attach(t.as_raw()) == Err(libc::EPERM))
        })
        .unwrap();
        if refused {
            Err(MoveError::TraceDenied(tids[0].as_raw()))
        } else {
            Ok(())
        }
    };
    let handle = ProcessHandle::open(pid).unwrap();
    let got = transfer::move_process_with(
        &handle,
        holder.pid(),
        kinds,
        None,
        FatalSeccomp::Refuse,
        Some(&recheck),
    );
    assert!(matches!(got, Err(MoveError::TraceDenied(_))), "{got:?}");
    assert_eq!(
        asked.lock().unwrap().as_slice(),
        [nix::unistd::Pid::from_raw(pid)]
    );
    assert_eq!(ns_ino(pid, "uts"), before, "nothing injected");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(status.contains("TracerPid:\t0\n"), "let go: {status}");
    // With the daemon's own credentials the same move goes through.
    let root = Credentials::of_thread(std::process::id()).unwrap();
    let allow = |tids: &[nix::unistd::Pid]| {
        let ok = creds::as_tracer(&root, || {
            tids.iter().all(|t| creds::may_attach(t.as_raw()).is_ok())
        });
        if ok.unwrap() {
            Ok(())
        } else {
            Err(MoveError::TraceDenied(tids[0].as_raw()))
        }
    };
    let handle = ProcessHandle::open(pid).unwrap();
    transfer::move_process_with(
        &handle,
        holder.pid(),
        kinds,
        None,
        FatalSeccomp::Refuse,
        Some(&allow),
    )
    .unwrap();
    assert_eq!(ns_ino(pid, "uts"), ns_ino(holder.pid(), "uts"));
}

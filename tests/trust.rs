//! What a caller without rights cannot do to the daemon's state and log:
//! the state directory is root's alone and nothing planted in it is
//! followed; changes without rights get EPERM, never a silent no-op; a
//! flood of refusals fills no disk.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const NOBODY: &str = "setpriv --reuid 65534 --regid 65534 --clear-groups";

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// Whether `path` is a mount point in this thread's mount namespace.
fn mounted_here(path: &Path) -> bool {
    let table = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let want = path.to_str().unwrap();
    table.lines().any(|l| l.split(' ').nth(4) == Some(want))
}

/// The system's python3: one in root's home may be closed to other users.
fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// Runs python3 `script` under `prefix` (words, may be empty) and returns
/// its output lines: the script prints one answer per operation.
fn python(prefix: &str, script: &str) -> Vec<String> {
    let out = sh(&format!("{prefix} {} -c '{script}'", python3()));
    assert!(
        out.status.success(),
        "python under {prefix:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A python3 script that runs `ops` (one `OP PATH [ARG]` per line) and
/// prints `OK` or the errno's name for each.
fn ops_script(ops: &[String]) -> String {
    let mut s = String::from(
        "import os, errno\n\
         def run(op, p, a):\n\
         \x20   if op == \"truncate\": os.truncate(p, int(a))\n\
         \x20   elif op == \"otrunc\": os.close(os.open(p, os.O_RDONLY | os.O_TRUNC))\n\
         \x20   elif op == \"utime\": os.utime(p)\n\
         \x20   elif op == \"chmod\": os.chmod(p, 0o600)\n\
         \x20   elif op == \"chown\": os.chown(p, 0, 0)\n\
         \x20   elif op == \"read\": open(p).read()\n\
         \x20   else: raise SystemExit(op)\n\
         for line in [\n",
    );
    for op in ops {
        s.push_str(&format!("    \"{op}\",\n"));
    }
    s.push_str(
        "]:\n\
         \x20   op, p, *a = line.split()\n\
         \x20   try:\n\
         \x20       run(op, p, a[0] if a else None); print(\"OK\")\n\
         \x20   except OSError as e: print(errno.errorcode[e.errno])\n",
    );
    s
}

/// Runs `(op, path, arg, expected)` rows under `prefix` and checks each.
fn expect(prefix: &str, rows: &[(&str, String, &str, &str)]) {
    let ops: Vec<String> = rows
        .iter()
        .map(|(op, p, a, _)| format!("{op} {p} {a}").trim_end().to_owned())
        .collect();
    let got = python(prefix, &ops_script(&ops));
    assert_eq!(got.len(), rows.len(), "{got:?}");
    for ((op, p, a, want), got) in rows.iter().zip(&got) {
        assert_eq!(got, want, "{op} {p} {a} under {prefix:?}");
    }
}

#[test]
fn the_state_directory_is_root_s_alone() {
    let Some(mut m) = Mount::new("trust-modes") else {
        return;
    };
    std::fs::create_dir(m.path("web")).unwrap();
    std::fs::File::create(m.path("web/uts")).unwrap();
    let pin = m.pin("web", "uts");
    assert!(pin.starts_with(m.state.to_str().unwrap()), "{pin}");
    let state = m.state.clone();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("pins")), 0o700);
    assert_eq!(mode(&state.join("lock")), 0o600);
    assert_eq!(mode(&state.join("tree")), 0o600);
    // Other users learn nothing from it and open no pin.
    let s = state.display();
    for cmd in [
        format!("ls {s}"),
        format!("cat {s}/tree"),
        format!("cat {s}/lock"),
        format!("ls {s}/pins"),
        format!("nsenter --uts={pin} true"),
    ] {
        let out = sh(&format!("{NOBODY} sh -c '{cmd}'"));
        assert!(!out.status.success(), "{cmd} as nobody succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Permission denied"), "{cmd}: {err}");
    }
    // A directory an older version made 0755 is tightened, and files in it
    // are made 0600 as they are rewritten.
    m.stop();
    sh_ok(&format!(
        "chmod 0755 {s} {s}/pins && chmod 0644 {s}/lock {s}/tree"
    ));
    m.restart();
    std::fs::create_dir(m.path("blog")).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("pins")), 0o700);
    assert_eq!(mode(&state.join("lock")), 0o600);
    assert_eq!(mode(&state.join("tree")), 0o600);
    assert_eq!(m.pin("web", "uts"), pin, "the pin came back");
}

#[test]
fn a_confined_caller_learns_no_path_outside_its_view_from_status() {
    let Some(m) = Mount::new("trust-status") else {
        return;
    };
    for d in ["outer", "outer/inner", "secret", "secret/deeper"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    for f in [
        "outer/net",
        "outer/inner/uts",
        "secret/uts",
        "secret/deeper/ipc",
    ] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    // In inner's set: outer's net, inner's uts.
    let prefix = format!(
        "nsenter --net={} --uts={} --",
        m.pin("outer", "net"),
        m.pin("outer/inner", "uts")
    );
    let status = m.path("outer/inner/status");
    let out = sh_ok(&format!("{prefix} cat {}", status.display()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    for line in &lines {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields.len(), 4, "{line}");
        // Where a kind comes from: itself, or a container on its path.
        assert!(
            ["own", "/outer", "/"].contains(&fields[2]),
            "{line} names a container the caller cannot see"
        );
        // A pin: in the state directory, named by kind and inode only;
        // or a /proc path of the daemon or a keeper.
        assert!(
            fields[3].starts_with(&format!("{}/pins/", m.state.display()))
                || fields[3].starts_with("/proc/")
                || fields[3] == "-",
            "{line}"
        );
    }
    assert!(!out.contains("secret"), "{out}");
    assert!(
        !out.contains(&m.read("secret/uts").trim().to_string()),
        "{out}"
    );
    // The sibling's status is not there at all.
    let out = sh(&format!(
        "{prefix} cat {}",
        m.path("secret/status").display()
    ));
    assert!(!out.status.success());
}

/// Starts the daemon in the foreground on `mnt` with `state`.
fn spawn(mnt: &Path, state: &Path) -> std::process::Child {
    Command::new(BIN)
        .arg("-f")
        .arg(mnt)
        .arg("--state-dir")
        .arg(state)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The daemon's exit status and what it said.
fn finish(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    let status = wait_bounded(&mut child, Duration::from_secs(30));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

#[test]
fn state_directories_others_could_change_are_refused() {
    if !require_privileges("trust-refuse-dirs") {
        return;
    }
    private_mount_namespace();
    let s = Scratch::new("trust-refuse-dirs");
    let mnt = s.0.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let refused = |state: &Path, want: &str| {
        let (status, err) = finish(spawn(&mnt, state));
        assert!(!status.success(), "{} accepted: {err}", state.display());
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(want), "{err:?} should say {want:?}");
        assert!(!mounted_here(&mnt));
    };
    let dir = |rel: &str, mode: u32, uid: u32| {
        let p = s.0.join(rel);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        std::os::unix::fs::chown(&p, Some(uid), Some(uid)).unwrap();
        p
    };
    // The state directory owned by another user, or writable by others.
    refused(&dir("theirs", 0o700, 65534), "owned by uid 65534");
    refused(&dir("open", 0o777, 0), "writable by others");
    refused(&dir("group", 0o770, 0), "writable by others");
    // A directory above it owned by another user, or writable by others
    // without the sticky bit.
    let parent = dir("their-parent", 0o755, 65534);
    refused(&parent.join("state"), "owned by uid 65534");
    assert!(!parent.join("state").exists(), "nothing made in it");
    let parent = dir("open-parent", 0o777, 0);
    refused(&parent.join("state"), "not sticky");
    // A symbolic link as the state directory.
    let real = dir("real", 0o700, 0);
    symlink(&real, s.0.join("link")).unwrap();
    refused(&s.0.join("link"), "symbolic link");
    // A lock that is a symbolic link to a file elsewhere.
    let outside = s.0.join("outside");
    std::fs::write(&outside, "precious").unwrap();
    symlink(&outside, real.join("lock")).unwrap();
    refused(&real, "lock");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "precious");
    assert_eq!(mode(&outside), 0o644);

    // Below a sticky directory (like /tmp), a root-owned state directory
    // is fine; one that does not exist yet is made 0700.
    let sticky = dir("sticky", 0o1777, 0);
    let state = sticky.join("state");
    let daemon = spawn(&mnt, &state);
    wait_for("the mount", || mounted_here(&mnt));
    assert_eq!(mode(&state), 0o700);
    sh_ok(&format!("umount {}", mnt.display()));
    let (status, err) = finish(daemon);
    assert!(status.success(), "{err}");
    nsproxyfs::daemon::forget(&state);
}

#[test]
fn links_planted_in_the_state_directory_are_not_followed() {
    let Some(mut m) = Mount::new("trust-links") else {
        return;
    };
    std::fs::create_dir(m.path("web")).unwrap();
    let state = m.state.clone();
    // Files elsewhere that a daemon following links would write or mount on.
    let precious = m.scratch("precious");
    std::fs::write(&precious, "precious").unwrap();
    let target = m.scratch("target");
    std::fs::write(&target, "target").unwrap();
    // And a mount a daemon following links would unmount.
    let src = m.scratch("src");
    let busy = m.scratch("busy");
    std::fs::write(&src, "src").unwrap();
    std::fs::write(&busy, "").unwrap();
    sh_ok(&format!(
        "mount --bind {} {}",
        src.display(),
        busy.display()
    ));
    assert!(mounted_here(&busy));

    let netns = Proc::sh("exec unshare -n sleep 1000");
    m.watch_pid(netns.pid());
    wait_for("unshare to exec sleep", || {
        ns_ino(netns.pid(), "net") != ns_ino(std::process::id() as i32, "net")
    });
    let ino = ns_ino(netns.pid(), "net");

    m.stop();
    symlink(&precious, state.join("tree.tmp")).unwrap();
    symlink(&target, state.join(format!("pins/net-{ino}"))).unwrap();
    symlink(&busy, state.join("pins/stray")).unwrap();
    m.restart();

    // The stray link was removed, not followed: the mount elsewhere stays.
    assert!(mounted_here(&busy), "a mount outside was unmounted");
    assert!(!state.join("pins/stray").exists() && !state.join("pins/stray").is_symlink());

    // The record is written afresh, not through the planted link.
    std::fs::create_dir(m.path("blog")).unwrap();
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "precious");
    let record = std::fs::read_to_string(state.join("tree")).unwrap();
    assert!(record.contains("container /blog"), "{record}");
    assert!(!state.join("tree").is_symlink());

    // The pin is made on a fresh file, not on the link's target.
    m.write("web/net", netns.pid().to_string().as_bytes())
        .unwrap();
    let pin = m.pin("web", "net");
    assert_eq!(pin, state.join(format!("pins/net-{ino}")).to_str().unwrap());
    assert!(!Path::new(&pin).is_symlink());
    assert_eq!(std::fs::metadata(&pin).unwrap().ino(), ino);
    assert!(
        !mounted_here(&target),
        "the pin was mounted through the link"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "target");
    let links = sh_ok(&format!("nsenter --net={pin} ip -o link"));
    assert!(links.contains("lo"), "{links}");

    // A record that is a link is not read through it: it is set aside.
    m.stop();
    std::fs::remove_file(state.join("tree")).unwrap();
    std::fs::write(&precious, "nsproxyfs-tree 1\nboot x\nend\n").unwrap();
    symlink(&precious, state.join("tree")).unwrap();
    m.restart();
    assert!(m.log_text().contains("cannot read it"), "{}", m.log_text());
    assert!(!m.path("blog").exists());
    sh_ok(&format!("umount {}", busy.display()));
}

#[test]
fn changes_without_rights_get_eperm_never_a_silent_no_op() {
    let Some(m) = Mount::new("trust-setattr") else {
        return;
    };
    for d in ["web", "web/db"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    std::fs::File::create(m.path("web/uts")).unwrap();
    std::fs::File::create(m.path("web/db/ipc")).unwrap();
    let p = |rel: &str| m.path(rel).display().to_string();
    let before = m.read("web/status");

    // uid 65534, and root without CAP_SYS_ADMIN: every change is EPERM.
    for who in [NOBODY, "capsh"] {
        let rows: Vec<(&str, String, &str, &str)> = vec![
            ("truncate", p("web/uts"), "0", "EPERM"),
            ("truncate", p("web/tasks"), "0", "EPERM"),
            ("truncate", p("tasks"), "0", "EPERM"),
            ("otrunc", p("web/uts"), "", "EPERM"),
            ("otrunc", p("web/tasks"), "", "EPERM"),
            ("utime", p("web/uts"), "", "EPERM"),
            ("utime", p("web/tasks"), "", "EPERM"),
            ("utime", p("web"), "", "EPERM"),
            ("utime", p(""), "", "EPERM"),
            ("chmod", p("web/uts"), "", "EPERM"),
            ("chown", p("web"), "", "EPERM"),
            ("read", p("web/status"), "", "OK"),
        ];
        if who == "capsh" {
            // capsh runs its command through a shell: the script goes in a
            // file.
            let ops: Vec<String> = rows
                .iter()
                .map(|(op, p, a, _)| format!("{op} {p} {a}").trim_end().to_owned())
                .collect();
            let file = m.scratch("ops.py");
            std::fs::write(&file, ops_script(&ops)).unwrap();
            let out = sh_ok(&format!(
                "capsh --drop=cap_sys_admin -- -c '{} {}'",
                python3(),
                file.display()
            ));
            let got: Vec<&str> = out.lines().collect();
            let want: Vec<&str> = rows.iter().map(|r| r.3).collect();
            assert_eq!(got, want, "as root without CAP_SYS_ADMIN: {rows:?}");
        } else {
            expect(who, &rows);
        }
    }
    assert_eq!(m.read("web/status"), before, "nothing changed");

    // A confined caller (inside web) changes its subtree, not the path to
    // it or the root's files.
    let inside = format!("nsenter --uts={} --", m.pin("web", "uts"));
    expect(
        &inside,
        &[
            ("utime", p(""), "", "EPERM"),
            ("utime", p("web"), "", "OK"),
            ("utime", p("web/db"), "", "OK"),
            ("truncate", p("web/db/ipc"), "0", "OK"),
            ("truncate", p("web/db/tasks"), "0", "OK"),
            ("utime", p("web/status"), "", "EPERM"),
            ("truncate", p("tasks"), "0", "ENOENT"),
        ],
    );

    // Root keeps what it had: `echo >` (O_TRUNC), `touch` of an existing
    // file, `truncate -s 0`; read-only files stay read-only.
    expect(
        "",
        &[
            ("truncate", p("web/uts"), "0", "OK"),
            ("truncate", p("web/tasks"), "0", "OK"),
            ("truncate", p("web/tasks"), "5", "EINVAL"),
            ("otrunc", p("web/uts"), "", "OK"),
            ("utime", p("web/uts"), "", "OK"),
            ("utime", p("web"), "", "OK"),
            ("utime", p("web/status"), "", "EPERM"),
            ("truncate", p("status"), "0", "EPERM"),
            ("utime", p("uts"), "", "EPERM"),
            ("chmod", p("web/uts"), "", "EPERM"),
        ],
    );
    sh_ok(&format!("touch {} {}", p("web/uts"), p("web/tasks")));
    sh_ok(&format!("truncate -s 0 {}", p("web/tasks")));
    let insider = Proc::sh("exec sleep 1000");
    m.watch_pid(insider.pid());
    sh_ok(&format!("echo {} > {}", insider.pid(), p("web/tasks")));
    assert_eq!(ns_text(insider.pid(), "uts"), m.read("web/uts").trim());
    assert_eq!(m.read("web/status"), before);
}

#[test]
fn a_flood_of_refusals_logs_a_bounded_number_of_lines() {
    let Some(m) = Mount::new("trust-flood") else {
        return;
    };
    std::fs::create_dir(m.path("web")).unwrap();
    let tasks = m.path("web/tasks").display().to_string();
    let web = m.path("web").display().to_string();
    let flood = 3000;
    let script = format!(
        "import os\n\
         for i in range({flood}):\n\
         \x20   try: os.close(os.open(\"{tasks}\", os.O_WRONLY))\n\
         \x20   except PermissionError: pass\n\
         for op in (lambda: os.mkdir(\"{web}/x\"), lambda: os.utime(\"{web}\")):\n\
         \x20   try: op()\n\
         \x20   except PermissionError: print(\"EPERM\")\n"
    );
    let started = Instant::now();
    let out = python(NOBODY, &script);
    let elapsed = started.elapsed();
    assert_eq!(out, ["EPERM", "EPERM"]);
    // Root's refusals are its own.
    assert!(std::fs::create_dir(m.path("web/.x")).is_err());

    let log = m.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("uid 65534 refused"))
        .collect();
    // The burst, one line a second after it, and one line for each new
    // kind; however slow this machine, far below the flood.
    let bound = nsproxyfs::service::refusals::BURST as u64 + elapsed.as_secs() + 1 + 2;
    assert!(
        (lines.len() as u64) <= bound,
        "{} lines for {flood} refusals in {elapsed:?} (bound {bound})",
        lines.len()
    );
    // The first refusal of each kind is there, however many came before.
    for op in ["open", "mkdir", "setattr"] {
        assert!(
            lines.iter().any(|l| l.contains(&format!("{op} by pid"))),
            "no {op} line: {lines:?}"
        );
    }
    // What was held back is said.
    assert!(
        log.lines()
            .any(|l| l.contains("more refusals of requests by uid 65534 were not logged")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("mkdir by pid") && l.contains("uid 0 refused")),
        "root's refusal is logged: {log}"
    );
    note(&format!("{flood} refusals: {} log lines", lines.len()));
}

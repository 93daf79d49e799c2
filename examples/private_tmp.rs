//! A private /tmp for one user, made with a mount namespace from the tree:
//!
//! ```text
//! mkdir tmp-1000; touch tmp-1000/mnt      # a fresh, private mount namespace
//! echo $PID > tmp-1000/tasks              # a setup process moves in,
//!                                         # mounts a tmpfs on /tmp there
//! echo $SHELL_PID > tmp-1000/tasks        # later: the user's processes
//! ```
//!
//! `private_tmp MOUNTPOINT UID [CMD ARGS...]` makes the container
//! `tmp-UID` if it does not exist yet, starts a setup process that moves
//! itself in and mounts a tmpfs (mode 1777) on /tmp, and then runs CMD in
//! there as UID. The container stays, so any later process of that user
//! can be moved into it through `tmp-UID/tasks` and sees the same /tmp;
//! `rmdir tmp-UID` ends it once nothing uses it. The host's /tmp is never
//! touched. Run as root: `cargo run --example private_tmp -- /container_ns
//! 1000 sh`.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitCode};

/// Mounts a fresh tmpfs on /tmp in the current mount namespace.
fn mount_private_tmp() -> io::Result<()> {
    let (src, target, fstype) = (c"tmpfs", c"/tmp", c"tmpfs");
    let data = CString::new("mode=1777").map_err(io::Error::other)?;
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs in a child: moves into the container, mounts /tmp, becomes `uid`,
/// and runs `cmd` (this function returns only on failure).
fn enter_and_run(container: &Path, uid: u32, cmd: &[String]) -> io::Error {
    // The write returns once this process is in the container's mount
    // namespace; from then on the tree is out of its sight (a fresh mount
    // namespace does not have the nsproxyfs mount).
    if let Err(e) = fs::write(container.join("tasks"), std::process::id().to_string()) {
        return e;
    }
    // A second setup for the same container finds /tmp mounted already.
    let mounted = fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some("/tmp")))
        .unwrap_or(false);
    if !mounted && let Err(e) = mount_private_tmp() {
        return e;
    }
    let (program, args) = match cmd.split_first() {
        Some((p, a)) => (p.as_str(), a),
        None => ("sh", &[][..]),
    };
    // Setting the uid as root also drops supplementary groups.
    Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .current_dir("/tmp")
        .exec()
}

fn run(root: &Path, uid: u32, cmd: &[String]) -> io::Result<i32> {
    let container = root.join(format!("tmp-{uid}"));
    if !container.exists() {
        fs::create_dir(&container)?;
        fs::File::create(container.join("mnt"))?;
    }
    // The setup runs in a child of its own: it cannot come back once it
    // has moved (the mount namespace is the container's for good).
    let status = Command::new(std::env::current_exe()?)
        .arg("--enter")
        .arg(&container)
        .arg(uid.to_string())
        .args(cmd)
        .status()?;
    Ok(status.code().unwrap_or(128))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: private_tmp MOUNTPOINT UID [CMD ARGS...]");
        ExitCode::from(2)
    };
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--enter", container, uid, ..] => {
            let Ok(uid) = uid.parse() else {
                return usage();
            };
            let e = enter_and_run(Path::new(container), uid, &args[3..]);
            eprintln!("private_tmp: {e}");
            ExitCode::FAILURE
        }
        [root, uid, ..] => {
            let Ok(uid) = uid.parse() else {
                return usage();
            };
            match run(Path::new(root), uid, &args[2..]) {
                Ok(code) => ExitCode::from(code as u8),
                Err(e) => {
                    eprintln!("private_tmp: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage(),
    }
}

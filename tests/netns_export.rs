//! `--netns-export DIR`: every container that binds its own net namespace
//! appears in DIR as `ip netns add` would have made it, under its
//! flattened name, and DIR follows every change of the tree.
//!
//! The host's `/run/netns` is never touched. Tests that run `ip netns`
//! (which knows no other directory) mount a tmpfs over `/run/netns` in the
//! test thread's private mount namespace (over `/run` if there is no
//! `/run/netns`, so that nothing is created on the host); the others use a
//! scratch directory on a tmpfs of their own. The processes a test starts
//! inherit its mount namespace, so `ip` sees that tmpfs too.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;

/// Where `ip netns` keeps its names.
const RUN_NETNS: &str = "/run/netns";

/// A tmpfs mounted in the test thread's mount namespace, detached on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path) -> Tmpfs {
        let c = CString::new(at.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated strings that outlive the call; tmpfs takes
        // its options as a NUL-terminated string.
        let r = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"mode=755".as_ptr().cast(),
            )
        };
        assert_eq!(
            r,
            0,
            "mount a tmpfs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; everything below it goes too.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// An export directory private to the test thread. Dropped after the
/// mount (declare it first): the daemon's exports are gone by then.
struct ExportDir {
    dir: PathBuf,
    _tmpfs: Tmpfs,
    _scratch: Option<Scratch>,
}

impl ExportDir {
    fn arg(&self) -> &str {
        self.dir.to_str().unwrap()
    }
}

/// A scratch export directory: `SCRATCH/netns` on a tmpfs at SCRATCH, in
/// a private mount namespace of the test thread. The directory does not
/// exist yet: the daemon makes it.
fn scratch_dir(test: &str) -> Option<ExportDir> {
    if !require_privileges(test) {
        return None;
    }
    private_mount_namespace();
    let scratch = Scratch::new(test);
    let tmpfs = Tmpfs::mount(&scratch.0);
    Some(ExportDir {
        dir: scratch.0.join("netns"),
        _tmpfs: tmpfs,
        _scratch: Some(scratch),
    })
}

fn has_ip() -> bool {
    Command::new("ip")
        .args(["netns", "list"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// An empty `/run/netns` of the test thread's own, for `ip netns`.
fn run_netns(test: &str) -> Option<ExportDir> {
    if !require_privileges(test) {
        return None;
    }
    if !has_ip() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs ip (iproute2), and CI must not skip");
        }
        eprintln!("SKIP {test}: needs ip (iproute2)");
        return None;
    }
    private_mount_namespace();
    let dir = PathBuf::from(RUN_NETNS);
    let tmpfs = if dir.is_dir() {
        Tmpfs::mount(&dir)
    } else {
        let t = Tmpfs::mount(Path::new("/run"));
        std::fs::create_dir(&dir).unwrap();
        t
    };
    Some(ExportDir {
        dir,
        _tmpfs: tmpfs,
        _scratch: None,
    })
}

/// The names in `dir`, each with the inode it shows (the namespace's, for
/// an export).
fn listing(dir: &Path) -> BTreeMap<String, u64> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let e = e.unwrap();
            let ino = std::fs::metadata(e.path()).unwrap().ino();
            (e.file_name().into_string().unwrap(), ino)
        })
        .collect()
}

/// The mount points strictly below `dir` in the test thread's mount
/// namespace, by name, in mount order (a name twice is two mounts).
fn mounts_below(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/thread-self/mountinfo").unwrap();
    let prefix = format!("{}/", dir.display());
    let mut out: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| mp.replace("\\040", " "))
        .filter_map(|mp| mp.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// The inode of a file of the tree (`web/net`).
fn ino(m: &Mount, rel: &str) -> u64 {
    std::fs::metadata(m.path(rel))
        .unwrap_or_else(|e| panic!("{rel}: {e}"))
        .ino()
}

/// Checks that `dir` holds exactly `want` (name, namespace inode), each
/// one mounted once, and nothing else mounted below it.
fn check(dir: &Path, want: &[(&str, u64)], when: &str) {
    let want: BTreeMap<String, u64> = want.iter().map(|&(n, i)| (n.to_owned(), i)).collect();
    assert_eq!(listing(dir), want, "{when}: the names in {}", dir.display());
    let names: Vec<String> = want.keys().cloned().collect();
    assert_eq!(
        mounts_below(dir),
        names,
        "{when}: the mounts below {}",
        dir.display()
    );
}

fn touch(m: &Mount, rel: &str) {
    m.step.set(&format!("touch {rel}"));
    std::fs::File::create(m.path(rel)).unwrap_or_else(|e| panic!("touch {rel}: {e}"));
}

fn mkdir(m: &Mount, rel: &str) {
    m.step.set(&format!("mkdir {rel}"));
    std::fs::create_dir(m.path(rel)).unwrap_or_else(|e| panic!("mkdir {rel}: {e}"));
}

fn rmdir(m: &Mount, rel: &str) {
    m.step.set(&format!("rmdir {rel}"));
    std::fs::remove_dir(m.path(rel)).unwrap_or_else(|e| panic!("rmdir {rel}: {e}"));
}

/// How many lines of the daemon's log hold `needle`.
fn logged(m: &Mount, needle: &str) -> usize {
    m.log_text().lines().filter(|l| l.contains(needle)).count()
}

/// The names `ip netns list` prints (each line's first word).
fn ip_list() -> Vec<String> {
    let mut names: Vec<String> = sh_ok("ip netns list")
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[test]
fn ip_netns_lists_and_enters_a_container_that_binds_its_own_net() {
    let test = "export-ip";
    let Some(dir) = run_netns(test) else {
        return;
    };
    let Some(m) = Mount::with_args(test, &["--netns-export", dir.arg()]) else {
        return;
    };
    mkdir(&m, "web");
    assert!(ip_list().is_empty(), "nothing is exported yet");
    touch(&m, "web/net");
    let web = ino(&m, "web/net");
    m.step.set("ip netns");
    assert_eq!(ip_list(), ["web"]);
    let inside = sh_ok("ip netns exec web readlink /proc/self/ns/net");
    assert_eq!(inside.trim(), format!("net:[{web}]"));
    let links = sh_ok("ip netns exec web ip -o link");
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(':').nth(1).map(str::trim))
        .collect();
    assert_eq!(names, ["lo"], "a fresh net namespace has only lo: {links}");
    // What ip netns add makes: an empty file of mode 0 under the mount.
    let file = std::fs::symlink_metadata(dir.dir.join("web")).unwrap();
    assert_eq!(file.ino(), web);
    check(&dir.dir, &[("web", web)], "after touch web/net");
    assert!(
        logged(&m, "exported as /run/netns/web") == 1,
        "{}",
        m.log_text()
    );
}

#[test]
fn nested_containers_are_flattened_and_inheritors_are_left_out() {
    let test = "export-nested";
    let Some(dir) = scratch_dir(test) else {
        return;
    };
    let Some(m) = Mount::with_args(test, &["--netns-export", dir.arg()]) else {
        return;
    };
    assert!(dir.dir.is_dir(), "the daemon makes the directory");
    for c in ["web", "web/db", "web/app", "web/app/deep"] {
        mkdir(&m, c);
    }
    touch(&m, "web/db/net");
    let db = ino(&m, "web/db/net");
    check(&dir.dir, &[("web.db", db)], "db binds its own net");
    touch(&m, "web/net");
    let web = ino(&m, "web/net");
    // app and app/deep inherit web's net: not exported.
    check(
        &dir.dir,
        &[("web", web), ("web.db", db)],
        "web binds its own net too",
    );

    // A top-level container literally named web.db flattens to the same
    // name and, being shallower, wins.
    mkdir(&m, "web.db");
    touch(&m, "web.db/net");
    let flat = ino(&m, "web.db/net");
    check(
        &dir.dir,
        &[("web", web), ("web.db", flat)],
        "the shallower container has the name",
    );
    let clash = "/web/db and /web.db both flatten to the name \"web.db\"";
    assert_eq!(logged(&m, clash), 1, "{}", m.log_text());
    mkdir(&m, "other");
    assert_eq!(logged(&m, clash), 1, "logged once while it lasts");
    rmdir(&m, "web.db");
    check(
        &dir.dir,
        &[("web", web), ("web.db", db)],
        "the nested one gets the name back",
    );
}

#[test]
fn every_change_of_the_tree_updates_the_directory_exactly() {
    let test = "export-changes";
    let Some(dir) = scratch_dir(test) else {
        return;
    };
    let Some(m) = Mount::with_args(test, &["--netns-export", dir.arg()]) else {
        return;
    };
    let d = &dir.dir;
    mkdir(&m, "web");
    touch(&m, "web/net");
    let first = ino(&m, "web/net");
    check(d, &[("web", first)], "touch web/net");

    m.step.set("rm web/net");
    std::fs::remove_file(m.path("web/net")).unwrap();
    check(d, &[], "rm web/net");

    touch(&m, "web/net");
    let web = ino(&m, "web/net");
    assert_ne!(web, first);
    check(d, &[("web", web)], "a fresh one");

    m.step.set("mv web web2");
    std::fs::rename(m.path("web"), m.path("web2")).unwrap();
    check(d, &[("web2", web)], "mv web web2");

    // Rebinding net to another namespace by writing its path.
    mkdir(&m, "other");
    touch(&m, "other/net");
    let other = ino(&m, "other/net");
    let pin = m.pin("other", "net");
    m.write("web2/net", pin.as_bytes()).unwrap();
    assert_eq!(ino(&m, "web2/net"), other);
    check(
        d,
        &[("other", other), ("web2", other)],
        "a write to web2/net",
    );

    // ln binds the same namespace under another container.
    mkdir(&m, "x");
    m.step.set("ln other/net x/net");
    std::fs::hard_link(m.path("other/net"), m.path("x/net")).unwrap();
    check(
        d,
        &[("other", other), ("web2", other), ("x", other)],
        "ln other/net x/net",
    );

    // Renaming a parent moves its children's exports too.
    mkdir(&m, "web2/db");
    touch(&m, "web2/db/net");
    let db = ino(&m, "web2/db/net");
    m.step.set("mv web2 web3");
    std::fs::rename(m.path("web2"), m.path("web3")).unwrap();
    check(
        d,
        &[
            ("other", other),
            ("web3", other),
            ("web3.db", db),
            ("x", other),
        ],
        "mv web2 web3",
    );

    for c in ["web3/db", "web3", "other"] {
        rmdir(&m, c);
    }
    check(d, &[("x", other)], "rmdir");
    rmdir(&m, "x");
    check(d, &[], "every container removed");
}

#[test]
fn a_name_taken_by_ip_netns_add_is_left_alone() {
    let test = "export-taken";
    let Some(dir) = run_netns(test) else {
        return;
    };
    sh_ok("ip netns add web");
    let theirs = std::fs::metadata("/run/netns/web").unwrap().ino();
    let Some(mut m) = Mount::with_args(test, &["--netns-export", dir.arg()]) else {
        sh_ok("ip netns delete web");
        return;
    };
    mkdir(&m, "web");
    touch(&m, "web/net");
    let ours = ino(&m, "web/net");
    assert_ne!(ours, theirs);
    let said = "/run/netns/web exists and was not made by nsproxyfs";
    assert_eq!(
        std::fs::metadata("/run/netns/web").unwrap().ino(),
        theirs,
        "the admin's namespace stays"
    );
    assert_eq!(logged(&m, said), 1, "{}", m.log_text());
    mkdir(&m, "other");
    assert_eq!(logged(&m, said), 1, "logged once while it lasts");

    // Once the admin deletes theirs, the next change exports ours.
    sh_ok("ip netns delete web");
    mkdir(&m, "again");
    assert_eq!(ip_list(), ["web"]);
    check(&dir.dir, &[("web", ours)], "after ip netns delete web");

    // A name taken while the daemon runs stays the admin's through rmdir
    // and the daemon's end.
    sh_ok("ip netns add keep");
    let kept = std::fs::metadata("/run/netns/keep").unwrap().ino();
    mkdir(&m, "keep");
    touch(&m, "keep/net");
    assert_eq!(std::fs::metadata("/run/netns/keep").unwrap().ino(), kept);
    rmdir(&m, "keep");
    assert!(m.stop().success());
    assert_eq!(ip_list(), ["keep"], "only the admin's name is left");
    assert_eq!(std::fs::metadata("/run/netns/keep").unwrap().ino(), kept);
    sh_ok("ip netns delete keep");
}

#[test]
fn exports_survive_sigkill_follow_the_option_and_go_at_a_clean_exit() {
    let test = "export-restart";
    let Some(dir) = run_netns(test) else {
        return;
    };
    let export = ["--netns-export", RUN_NETNS];
    let Some(mut m) = Mount::with_args(test, &export) else {
        return;
    };
    let d = &dir.dir;
    for c in ["a", "b", "b/c"] {
        mkdir(&m, c);
    }
    touch(&m, "a/net");
    touch(&m, "b/net");
    let (a, b) = (ino(&m, "a/net"), ino(&m, "b/net"));
    let both = [("a", a), ("b", b)];
    check(d, &both, "before the kill");

    m.kill();
    check(d, &both, "a killed daemon leaves its exports");
    m.restart();
    check(d, &both, "a restarted daemon takes them over");
    assert_eq!((ino(&m, "a/net"), ino(&m, "b/net")), (a, b));
    let inside = sh_ok("ip netns exec a readlink /proc/self/ns/net");
    assert_eq!(inside.trim(), format!("net:[{a}]"));
    rmdir(&m, "a");
    check(d, &[("b", b)], "a change after the restart");
    mkdir(&m, "a");
    m.write("a/net", m.pin("b", "net").as_bytes()).unwrap();
    let both = [("a", b), ("b", b)];
    check(d, &both, "a rebound to b's namespace");

    // Restarted with another directory: the old one is emptied.
    m.kill();
    std::fs::create_dir(m.scratch("elsewhere")).unwrap();
    let elsewhere = Tmpfs::mount(&m.scratch("elsewhere"));
    let other = elsewhere.0.join("netns");
    m.set_args(&["--netns-export", other.to_str().unwrap()]);
    m.restart();
    check(d, &[], "the previous directory");
    check(&other, &both, "the new directory");

    // Restarted without the option: what the last daemon exported goes.
    m.kill();
    m.set_args(&[]);
    m.restart();
    check(&other, &[], "without --netns-export");
    check(d, &[], "without --netns-export");

    // A clean exit (SIGTERM, umount) removes the exports.
    assert!(m.stop().success());
    m.set_args(&export);
    m.restart();
    check(d, &both, "started with the option again");
    assert!(m.stop().success(), "SIGTERM");
    check(d, &[], "after SIGTERM");
    m.restart();
    check(d, &both, "started again");
    assert!(m.umount().success(), "umount");
    check(d, &[], "after umount");
    assert!(ip_list().is_empty());
}

#[test]
fn an_export_directory_that_is_not_a_directory_is_refused_at_start() {
    let test = "export-bad";
    let Some(dir) = scratch_dir(test) else {
        return;
    };
    let base = dir.dir.parent().unwrap().to_path_buf();
    let mnt = base.join("mnt");
    let state = base.join("state");
    std::fs::create_dir(&mnt).unwrap();
    let file = base.join("file");
    std::fs::write(&file, "").unwrap();
    let inside = mnt.join("netns");
    for (export, want) in [
        (&file, "is a regular file; it must be a directory"),
        (&inside, "is inside the mount point"),
        (&state, "overlaps the state directory"),
    ] {
        let out = Command::new(BIN)
            .arg("-f")
            .arg("--state-dir")
            .arg(&state)
            .arg("--netns-export")
            .arg(export)
            .arg(&mnt)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: started", export.display());
        assert!(err.contains(want), "{}: {err:?}", export.display());
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(
            mounts_below(&base).is_empty(),
            "nothing is mounted: {:?}",
            mounts_below(&base)
        );
        assert!(!inside.exists(), "nothing is made in the mount point");
    }
    assert!(file.is_file(), "the file is left as it was");
}

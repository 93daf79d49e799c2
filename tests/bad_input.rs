//! Bad input to every writable file: a clear errno, a log line with the
//! reason, nothing changed, and the daemon keeps serving.

mod common;

use common::*;

/// Everything observable about the tree, to compare before and after.
fn snapshot(m: &Mount) -> String {
    let mut out = String::new();
    for c in ["", "c"] {
        out.push_str(&m.read(if c.is_empty() { "status" } else { "c/status" }));
        let dir = if c.is_empty() {
            m.dir.clone()
        } else {
            m.path(c)
        };
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        out.push_str(&names.join(","));
        out.push('\n');
    }
    out
}

fn refusals(m: &Mount) -> usize {
    m.log_text().matches("refused").count()
}

#[test]
fn bad_writes_change_nothing() {
    let Some(m) = Mount::new("bad-input") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/uts")).unwrap();
    let regular = m.scratch("regular-file");
    std::fs::write(&regular, "not a namespace").unwrap();
    let big = vec![b'1'; 1 << 20];
    let cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("garbage text", b"hello world\n".to_vec(), libc::EINVAL),
        ("a word", b"hello".to_vec(), libc::EINVAL),
        ("negative", b"-1\n".to_vec(), libc::EINVAL),
        ("zero", b"0\n".to_vec(), libc::EINVAL),
        ("overflow", b"99999999999999999999\n".to_vec(), libc::EINVAL),
        ("just past i32", b"2147483648".to_vec(), libc::EINVAL),
        ("several pids", b"1 2\n".to_vec(), libc::EINVAL),
        ("several lines", b"1\n2\n".to_vec(), libc::EINVAL),
        ("empty line", b"\n".to_vec(), libc::EINVAL),
        ("1 MiB", big, libc::EINVAL),
        ("NUL byte", b"1\0".to_vec(), libc::EINVAL),
        ("non-UTF-8", b"/\xff\xfe".to_vec(), libc::EINVAL),
        ("hex", b"0x10".to_vec(), libc::EINVAL),
        ("leading space", b" 1".to_vec(), libc::EINVAL),
    ];
    let path_cases: Vec<(&str, Vec<u8>, i32)> = vec![
        ("wrong kind", b"/proc/self/ns/net".to_vec(), libc::EINVAL),
        (
            "regular file",
            regular.to_str().unwrap().as_bytes().to_vec(),
            libc::EINVAL,
        ),
        ("a directory", b"/proc/self/ns".to_vec(), libc::EINVAL),
        ("missing path", b"/no/such/namespace".to_vec(), libc::ENOENT),
        ("no such pid", b"2147483647".to_vec(), libc::ESRCH),
    ];
    let before = snapshot(&m);
    // An existing kind file, a kind file being created, and tasks.
    for file in ["c/uts", "c/ipc", "c/tasks", "tasks"] {
        for (what, data, want) in cases.iter().chain(if file.ends_with("tasks") {
            [].iter()
        } else {
            path_cases.iter()
        }) {
            m.step.set(&format!("{what} into {file}"));
            let logged = refusals(&m);
            let got = errno(m.write(file, data));
            assert_eq!(got, *want, "{what} into {file}");
            assert_eq!(snapshot(&m), before, "{what} into {file} changed the tree");
            // Each refusal is logged while the caller stays within its
            // allowance of log lines (see service::refusals): the first file's
            // cases do.
            if file == "c/uts" {
                wait_for("a log line", || refusals(&m) > logged);
            }
        }
    }
    // Still serving.
    std::fs::create_dir(m.path("after")).unwrap();
    assert!(m.read("after/status").lines().count() == 8);
    // The reason is in the log, not only the errno.
    let log = m.log_text();
    assert!(log.contains("is not a pid"), "{log}");
    assert!(log.contains("is a net namespace, not uts"), "{log}");
    assert!(log.contains("is not a namespace file"), "{log}");
}

#[test]
fn refused_tree_changes_change_nothing() {
    let Some(m) = Mount::new("bad-ops") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    let before = snapshot(&m);
    let checks: Vec<(&str, i32, std::io::Result<()>)> = vec![
        (
            "mkdir tasks",
            libc::EEXIST,
            std::fs::create_dir(m.path("c/tasks")),
        ),
        (
            "create a non-kind file",
            libc::EINVAL,
            std::fs::File::create(m.path("c/notes")).map(drop),
        ),
        (
            "symlink a kind",
            libc::EPERM,
            std::os::unix::fs::symlink(m.path("net"), m.path("c/net")),
        ),
        (
            "rm tasks",
            libc::EPERM,
            std::fs::remove_file(m.path("c/tasks")),
        ),
        (
            "rm status",
            libc::EPERM,
            std::fs::remove_file(m.path("status")),
        ),
        (
            "rmdir a file",
            libc::ENOTDIR,
            std::fs::remove_dir(m.path("c/status")),
        ),
        ("write status", libc::EPERM, m.write("c/status", b"x")),
        (
            "rmdir missing",
            libc::ENOENT,
            std::fs::remove_dir(m.path("nope")),
        ),
    ];
    for (what, want, got) in checks {
        assert_eq!(errno(got), want, "{what}");
    }
    assert_eq!(snapshot(&m), before);
}

//! Attacks on the checks that act with a caller's credentials: each test
//! does what a hostile caller would, and asserts the kernel's answer for
//! that caller, not the daemon's.

mod common;

use std::process::Command;

use common::*;

/// The namespace inode a kind file names.
fn ns_ino_of_file(m: &Mount, rel: &str) -> u64 {
    let text = m.read(rel);
    text.trim()
        .rsplit_once('[')
        .and_then(|(_, n)| n.trim_end_matches(']').parse().ok())
        .unwrap_or_else(|| panic!("{rel}: {text}"))
}

/// `/proc/net` and `/proc/mounts` are links to `self/...` in every procfs:
/// followed by the kernel for the task that walks the path, they lead to
/// that task's own `/proc` entry, not the writer's. From there `..` gives
/// its `ns/*` (the daemon's namespaces) and `fd/*` (every descriptor the
/// daemon holds).
#[test]
fn links_to_self_inside_procfs_mean_the_writer() {
    let Some(m) = Mount::new("review-proc-net") else {
        return;
    };
    std::fs::create_dir(m.path("c")).unwrap();
    std::fs::File::create(m.path("c/net")).unwrap();
    std::fs::create_dir(m.path("c/sub")).unwrap();
    let root_net = ns_ino(std::process::id() as i32, "net");
    let c_net = ns_ino_of_file(&m, "c/net");
    assert_ne!(c_net, root_net);
    // A writer confined to c names its own net namespace through a procfs
    // link that the kernel resolves to `self`.
    let script = format!(
        "echo $$ > {c}/tasks && echo /proc/net/../ns/net > sub/net",
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
    assert_eq!(
        ns_ino_of_file(&m, "c/sub/net"),
        c_net,
        "the writer's net, not the daemon's"
    );
}

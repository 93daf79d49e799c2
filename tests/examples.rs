//! The runnable examples, run against a real mount: each drives the tree
//! with plain file operations and must leave it as it found it.

mod common;

use std::process::Command;

use common::*;

/// The top-level containers of the tree, as the test sees them.
fn containers(m: &Mount) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(&m.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn the_vpn_example_relays_between_two_networks() {
    let Some(m) = Mount::new("example-vpn") else {
        return;
    };
    m.step.set("run the vpn example");
    let out = sh_ok(&format!(
        "{} {} 5555",
        example("vpn").display(),
        m.dir.display()
    ));
    let host_net = ns_text(m.daemon_pid(), "net");
    // Two sockets on 127.0.0.1:5555, one per network namespace, in one
    // process; the datagram crossed from the tunnel to the host.
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("uplink socket on 127.0.0.1:5555 in ")
            && lines[0].ends_with(&host_net),
        "{out}"
    );
    assert!(
        lines[1].starts_with("tunnel socket on 127.0.0.1:5555 in net:["),
        "{out}"
    );
    assert!(!lines[1].ends_with(&host_net), "{out}");
    assert!(
        out.contains("the host received \"hello through the tunnel\""),
        "{out}"
    );
    assert!(
        containers(&m).is_empty(),
        "the example removes its container"
    );
}

#[test]
fn the_private_tmp_example_gives_one_user_its_own_tmp() {
    let Some(m) = Mount::new("example-tmp") else {
        return;
    };
    let marker = format!("nsproxyfs-private-{}", std::process::id());
    m.step.set("run the private_tmp example");
    let out = Command::new(example("private_tmp"))
        .arg(&m.dir)
        .arg("65534")
        .args([
            "sh",
            "-c",
            &format!("id -u; touch /tmp/{marker}; ls /tmp; grep ' /tmp ' /proc/self/mountinfo"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "65534", "runs as the user");
    assert_eq!(lines[1], marker, "its /tmp holds only what it made");
    assert!(lines[2].contains(" - tmpfs "), "a tmpfs on /tmp: {text}");
    assert!(
        !std::path::Path::new("/tmp").join(&marker).exists(),
        "the host's /tmp is untouched"
    );
    // The container stays: a later process of the user moved in through
    // tasks sees the same /tmp.
    let later = Proc::sh("exec sleep 1000");
    m.watch_pid(later.pid());
    m.write("tmp-65534/tasks", later.pid().to_string().as_bytes())
        .unwrap();
    let seen = std::fs::read_dir(format!("/proc/{}/root/tmp", later.pid()))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .collect::<Vec<_>>();
    assert_eq!(seen, [marker]);
    drop(later);
    std::fs::remove_dir(m.path("tmp-65534")).unwrap();
    assert!(containers(&m).is_empty());
}

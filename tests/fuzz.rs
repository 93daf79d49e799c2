//! Randomized tests: the write parsers on arbitrary bytes, and random
//! sequences of tree operations through a real mount, by a privileged
//! caller and by one confined to a container.
//!
//! Bounded so CI runs them in seconds. `NSPROXYFS_FUZZ_SEED` replays a run
//! (every run prints its seed), `NSPROXYFS_FUZZ_OPS` makes it longer, and
//! `NSPROXYFS_FUZZ_VERBOSE` prints every operation with its answer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::*;
use nsproxyfs::service::input::{Binding, MAX_INPUT, parse_binding, parse_pid};

fn ops_budget(default: usize) -> usize {
    std::env::var("NSPROXYFS_FUZZ_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn parsers_never_panic_and_accept_exactly_one_value() {
    let mut rng = Rng::from_env("parsers");
    let alphabet: &[u8] = b"0123456789/.\n\0 \t-+xa\xff\xc3";
    for _ in 0..ops_budget(200_000) {
        let len = match rng.below(10) {
            0 => MAX_INPUT - 2 + rng.below(5),
            _ => rng.below(12),
        };
        let data: Vec<u8> = (0..len).map(|_| rng.pick(alphabet)).collect();
        let body = data.strip_suffix(b"\n").unwrap_or(&data);
        let clean = !body.is_empty()
            && data.len() <= MAX_INPUT
            && std::str::from_utf8(body)
                .is_ok_and(|t| !t.chars().any(|c| c.is_whitespace() || c.is_control()));
        // The number a body of digits stands for (leading zeros allowed,
        // as the kernel's own pid files allow them).
        let number = body
            .iter()
            .all(u8::is_ascii_digit)
            .then(|| std::str::from_utf8(body).ok()?.parse::<u64>().ok())
            .flatten();
        let valid = clean && number.is_some_and(|n| (1..=i32::MAX as u64).contains(&n));
        match parse_pid(&data) {
            Ok(pid) => {
                assert!(valid, "{data:?} accepted");
                assert_eq!(Some(pid as u64), number, "{data:?}");
            }
            Err(_) => assert!(!valid, "a valid pid refused: {data:?}"),
        }
        match parse_binding(&data) {
            Ok(Binding::Pid(pid)) => assert_eq!(parse_pid(&data), Ok(pid)),
            Ok(Binding::Path(path)) => {
                assert!(clean, "{data:?}");
                assert!(path.starts_with('/') || path.starts_with("./") || path.starts_with("../"));
                assert_eq!(path.as_bytes(), body);
            }
            Err(_) => assert!(parse_pid(&data).is_err(), "{data:?}"),
        }
    }
}

/// Every name in a subtree of the mount, as the test (privileged) sees it:
/// path relative to the mount -> (inode, nlink, is_dir).
fn walk(root: &Path) -> BTreeMap<String, (u64, u64, bool)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let Ok(md) = std::fs::symlink_metadata(root.join(&path)) else {
                continue;
            };
            if md.is_dir() {
                stack.push(path.clone());
            }
            out.insert(path, (md.ino(), md.nlink(), md.is_dir()));
        }
    }
    out
}

/// The invariants a quiet tree must hold: each kind file's st_nlink is the
/// number of names it has, each directory's is 2 plus its subdirectories,
/// and every container's status names what its kind files name.
fn check_tree(m: &Mount) {
    let all = walk(&m.path(""));
    let mut names: BTreeMap<u64, usize> = BTreeMap::new();
    let mut subdirs: BTreeMap<String, u64> = BTreeMap::new();
    for (path, &(ino, _, dir)) in &all {
        let parent = path.rsplit_once('/').map_or("", |p| p.0).to_owned();
        if dir {
            *subdirs.entry(parent).or_default() += 1;
        } else if KINDS.iter().any(|k| path.rsplit('/').next() == Some(k)) {
            // Kind files proper; a name staged by `ln` under another name
            // (the first half of `ln -f`) binds nothing and is not counted.
            *names.entry(ino).or_default() += 1;
        }
    }
    for (path, &(ino, nlink, dir)) in &all {
        if dir {
            let want = 2 + subdirs.get(path).copied().unwrap_or(0);
            assert_eq!(nlink, want, "{path}: directory link count");
            let status = m.read(&format!("{path}/status"));
            for line in status.lines() {
                let f: Vec<&str> = line.split('\t').collect();
                if f[2] == "own" {
                    let file = all.get(&format!("{path}/{}", f[0]));
                    let want: u64 = f[1].split(['[', ']']).nth(1).unwrap().parse().unwrap();
                    assert_eq!(file.map(|f| f.0), Some(want), "{path}/{}", f[0]);
                }
            }
        } else if names.contains_key(&ino) {
            assert_eq!(nlink as usize, names[&ino], "{path}: st_nlink");
        }
    }
}

/// A random path: half the time an existing entry as it is, otherwise an
/// existing directory with a kind, control, container or invalid name
/// under it. `entries` are paths relative to the mount, with whether each
/// is a directory.
fn random_path(rng: &mut Rng, entries: &[(String, bool)]) -> String {
    let names = ["a", "b", "c"];
    let files = [
        "uts", "net", "ipc", "cgroup", "time", "tasks", "status", ".hidden", "x",
    ];
    if rng.below(2) == 0 {
        return entries[rng.below(entries.len())].0.clone();
    }
    let dirs: Vec<&String> = entries.iter().filter(|e| e.1).map(|e| &e.0).collect();
    let dir = dirs[rng.below(dirs.len())];
    let join = |name: &str| {
        if dir.is_empty() {
            name.to_owned()
        } else {
            format!("{dir}/{name}")
        }
    };
    match rng.below(10) {
        0..=5 => join(rng.pick(&files)),
        _ => join(rng.pick(&names)),
    }
}

/// Every entry of the tree under `base` (relative to the mount), as the
/// test sees it, with whether it is a directory; `base` itself first.
fn entries_under(m: &Mount, base: &str) -> Vec<(String, bool)> {
    let mut entries = vec![(base.to_owned(), true)];
    entries.extend(walk(&m.path(base)).into_iter().map(|(p, (_, _, dir))| {
        let p = if base.is_empty() {
            p
        } else {
            format!("{base}/{p}")
        };
        (p, dir)
    }));
    entries
}

/// One random operation line for [`probe`] on paths built from `entries`.
fn random_op(rng: &mut Rng, m: &Mount, entries: &[(String, bool)], pids: &[String]) -> String {
    let mut p = || m.path(&random_path(rng, entries)).display().to_string();
    let (a, b) = (p(), p());
    let value = match rng.below(6) {
        0 | 1 => pids[rng.below(pids.len())].clone(),
        2 => "not-a-pid".to_owned(),
        3 => format!("/proc/{}/ns/{}", pids[0], KINDS[rng.below(8)]),
        4 => "/nonexistent".to_owned(),
        _ => "2147483647".to_owned(),
    };
    match rng.below(13) {
        0 => format!("stat {a}"),
        1 => format!("list {a}"),
        2 => format!("read {a}"),
        3 | 4 => format!("write {a} {value}"),
        5 => format!("bind {a} {value}"),
        6 => format!("touch {a}"),
        7 | 8 => format!("mkdir {a}"),
        9 => format!("rmdir {a}"),
        10 => format!("link {a} {b}"),
        11 => format!("unlink {a}"),
        _ => format!("rename {a} {b}"),
    }
}

/// Answers that point at a bug rather than a refusal. Also tallies the
/// answers per operation, so a run shows how much of it got through.
fn assert_sane(ops: &[String], answers: &[String], tally: &mut BTreeMap<String, usize>) {
    for (op, got) in ops.iter().zip(answers) {
        let verb = op.split(' ').next().unwrap_or("");
        let word = got.split(' ').next().unwrap_or("");
        *tally.entry(format!("{verb}:{word}")).or_default() += 1;
        assert!(
            !["EIO", "ENOSYS", "EFAULT", "ENOTCONN", "ECONNABORTED"].contains(&got.as_str()),
            "{op} -> {got}"
        );
    }
}

#[test]
fn random_tree_operations_keep_the_tree_consistent() {
    let Some(m) = Mount::new("fuzz-tree") else {
        return;
    };
    let mut rng = Rng::from_env("fuzz-tree");
    let a = Proc::sh("exec sleep 1000");
    let b = Proc::sh("exec sleep 1000");
    m.watch_pid(a.pid());
    m.watch_pid(b.pid());
    let pids = [a.pid().to_string(), b.pid().to_string()];
    let total = ops_budget(600);
    let batch = 100;
    let mut done = 0;
    let mut tally = BTreeMap::new();
    while done < total {
        m.step.set(&format!("random operations {done}.."));
        let dirs = entries_under(&m, "");
        let ops: Vec<String> = (0..batch)
            .map(|_| random_op(&mut rng, &m, &dirs, &pids))
            .collect();
        let answers = probe(&[], &ops);
        assert_sane(&ops, &answers, &mut tally);
        check_tree(&m);
        done += batch;
    }
    note(&format!("fuzz-tree answers: {tally:?}"));
    assert!(
        !m.log_text().contains("panicked"),
        "the daemon panicked: {}",
        m.log_text()
    );
}

#[test]
fn random_operations_from_inside_change_nothing_outside() {
    let Some(m) = Mount::new("fuzz-confined") else {
        return;
    };
    let mut rng = Rng::from_env("fuzz-confined");
    // Around the jail: a sibling, a parent's own files, and containers
    // under the jail for the confined caller to play with.
    for d in ["jail", "jail/a", "jail/b", "a", "a/b", "b"] {
        std::fs::create_dir(m.path(d)).unwrap();
    }
    for f in ["jail/uts", "a/uts", "a/b/net", "b/ipc", "jail/a/net"] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    let outside = Proc::sh("exec sleep 1000");
    let inside = Proc::sh("exec sleep 1000");
    m.watch_pid(outside.pid());
    m.watch_pid(inside.pid());
    m.write("jail/tasks", inside.pid().to_string().as_bytes())
        .unwrap();
    let outside_ns: Vec<u64> = KINDS
        .iter()
        .map(|k| ns_ino(outside.pid(), proc_entry(k)))
        .collect();
    let snapshot = |m: &Mount| -> BTreeSet<(String, u64)> {
        walk(&m.path(""))
            .into_iter()
            .filter(|(p, _)| p != "jail" && !p.starts_with("jail/"))
            .map(|(p, (ino, _, _))| (p, ino))
            .collect()
    };
    let before = snapshot(&m);
    let confined = [
        "nsenter".to_owned(),
        format!("--uts={}", m.pin("jail", "uts")),
        "--".to_owned(),
    ];
    let confined: Vec<&str> = confined.iter().map(String::as_str).collect();
    let pids = [inside.pid().to_string(), outside.pid().to_string()];
    let total = ops_budget(600);
    let batch = 100;
    let mut done = 0;
    let mut tally = BTreeMap::new();
    while done < total {
        m.step.set(&format!("confined operations {done}.."));
        // Half the operations aim inside the jail's containers (never at
        // the jail's own kind files, which would move the caller out of
        // it), half anywhere.
        let mine = entries_under(&m, "jail/a");
        let all = entries_under(&m, "");
        // The jail's own kind files stay out of reach: changing them would
        // change the set the caller lives in (it would leave the jail).
        let own: Vec<String> = KINDS
            .iter()
            .map(|k| m.path(&format!("jail/{k}")).display().to_string())
            .collect();
        let touches_own = |op: &str| op.split(' ').any(|w| own.iter().any(|o| o == w));
        let ops: Vec<String> = (0..batch)
            .map(|i| {
                let dirs = if i % 2 == 0 { &mine } else { &all };
                loop {
                    let op = random_op(&mut rng, &m, dirs, &pids);
                    if !touches_own(&op) {
                        break op;
                    }
                }
            })
            .collect();
        let answers = probe(&confined, &ops);
        if std::env::var("NSPROXYFS_FUZZ_VERBOSE").is_ok() {
            for (o, a) in ops.iter().zip(&answers) {
                note(&format!("{o} => {a}"));
            }
        }
        assert_sane(&ops, &answers, &mut tally);
        let jail = m.path("jail").display().to_string();
        let root = m.path("").display().to_string();
        for (op, got) in ops.iter().zip(&answers) {
            let paths: Vec<&str> = op
                .split(' ')
                .skip(1)
                .filter(|w| w.starts_with(m.path("").to_str().unwrap()))
                .collect();
            // The kernel answers some calls before asking the daemon: on
            // the mount's root itself, and a hard link of a directory (EPERM
            // whatever the destination). The snapshot below still checks
            // that nothing changed.
            let at_root = paths.contains(&root.as_str());
            let kernel_says = op.starts_with("link ") && got == "EPERM";
            let outside_jail = paths
                .iter()
                .any(|p| *p != jail && !p.starts_with(&format!("{jail}/")));
            if outside_jail && !at_root && !kernel_says {
                assert_eq!(got, "ENOENT", "{op} from inside the jail");
            }
        }
        assert_eq!(snapshot(&m), before, "nothing outside the jail changed");
        check_tree(&m);
        done += batch;
    }
    note(&format!("fuzz-confined answers: {tally:?}"));
    let now: Vec<u64> = KINDS
        .iter()
        .map(|k| ns_ino(outside.pid(), proc_entry(k)))
        .collect();
    assert_eq!(now, outside_ns, "the outside process never moved");
}

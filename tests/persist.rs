//! Persistence: the state directory brings the same tree, with the same
//! namespaces, back after a clean umount, SIGTERM, or SIGKILL of the
//! daemon; what cannot come back is dropped with a log line.
//!
//! The daemon's pins live in the test thread's private mount namespace,
//! so a daemon restarted from the same thread finds them, as a daemon
//! restarted by systemd finds them in the host's.
//!
//! `NSPROXYFS_FUZZ_SEED` replays the random run (every run prints its
//! seed); `NSPROXYFS_FUZZ_VERBOSE` prints every operation.

mod common;

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A tree as the test sees it: container path (`/a/b`) -> kind -> inode of
/// the namespace it binds itself. `None` stands for "bound, inode unknown":
/// a fresh namespace acknowledged just before the daemon died, before the
/// test could stat it.
type Shape = BTreeMap<String, BTreeMap<String, Option<u64>>>;

/// Every container below the root, with its own kind files.
fn shape(m: &Mount) -> Shape {
    m.step.set("read the whole tree");
    let mut out = Shape::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = m.dir.join(rel.trim_start_matches('/'));
        for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let name = e.unwrap().file_name().into_string().unwrap();
            let path = format!("{rel}/{name}");
            let md = std::fs::symlink_metadata(dir.join(&name)).unwrap();
            if md.is_dir() {
                out.entry(path.clone()).or_default();
                stack.push(path);
            } else if !rel.is_empty() && KINDS.contains(&name.as_str()) {
                out.entry(rel.clone())
                    .or_default()
                    .insert(name, Some(md.ino()));
            }
        }
    }
    out
}

/// Whether `got` is `want`, where `None` in `want` matches any inode.
fn matches(got: &Shape, want: &Shape) -> bool {
    got.len() == want.len()
        && got.iter().zip(want).all(|((gp, gk), (wp, wk))| {
            gp == wp
                && gk.len() == wk.len()
                && gk
                    .iter()
                    .zip(wk)
                    .all(|((gn, gi), (wn, wi))| gn == wn && (wi.is_none() || gi == wi))
        })
}

/// What differs between two shapes, one line per container.
fn diff(got: &Shape, want: &Shape) -> String {
    let mut out = String::new();
    let paths: std::collections::BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    for p in paths {
        let (g, w) = (got.get(p), want.get(p));
        if g != w {
            out.push_str(&format!("{p}: got {g:?}, want {w:?}\n"));
        }
    }
    out
}

/// Kinds the random operations bind: fresh ones need no keeper process.
const RANDOM_KINDS: [&str; 3] = ["uts", "net", "ipc"];
const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

/// One tree operation, as a shell user would do it.
#[derive(Debug, Clone)]
enum Op {
    Mkdir(String),
    Rmdir(String),
    /// `touch C/KIND`: a fresh namespace if C does not bind KIND yet.
    Touch(String, &'static str),
    /// `ln SRC/KIND DST/KIND`.
    Ln(String, String, &'static str),
    /// `rm C/KIND`.
    Rm(String, &'static str),
    /// `mv OLD NEW`, same parent.
    Rename(String, String),
    /// `echo PID > C/KIND`, with the inode of that process's namespace.
    WritePid(String, &'static str, i32, u64),
}

fn parent_of(path: &str) -> &str {
    &path[..path.rfind('/').unwrap_or(0)]
}

impl Op {
    fn random(rng: &mut Rng, model: &Shape, procs: &[Owner]) -> Op {
        let containers: Vec<String> = model.keys().cloned().collect();
        let kind = RANDOM_KINDS[rng.below(RANDOM_KINDS.len())];
        let roll = rng.below(100);
        if containers.is_empty() || roll < 20 {
            let mut parents: Vec<String> = containers
                .iter()
                .filter(|c| c.matches('/').count() < 3)
                .cloned()
                .collect();
            parents.push(String::new());
            return Op::Mkdir(format!("{}/{}", rng.pick(&parents), rng.pick(&NAMES)));
        }
        let c = rng.pick(&containers);
        match roll {
            20..=29 => Op::Rmdir(c),
            30..=49 => Op::Touch(c, kind),
            50..=61 => {
                let bound: Vec<(String, String)> = model
                    .iter()
                    .flat_map(|(p, ks)| ks.keys().map(move |k| (p.clone(), k.clone())))
                    .collect();
                if bound.is_empty() {
                    return Op::Touch(c, kind);
                }
                let (src, k) = rng.pick(&bound);
                let k = RANDOM_KINDS.into_iter().find(|r| *r == k).unwrap();
                Op::Ln(src, c, k)
            }
            62..=73 => Op::Rm(c, kind),
            74..=85 => Op::Rename(c.clone(), format!("{}/{}", parent_of(&c), rng.pick(&NAMES))),
            _ => {
                let (pid, inos) = rng.pick(procs);
                Op::WritePid(c, kind, pid, inos[kind])
            }
        }
    }

    /// Runs the operation on the mount. For `Touch`, the inode it bound
    /// (`None` if it could not be read back).
    fn run(&self, m: &Mount) -> io::Result<Option<u64>> {
        let p = |rel: &str| m.dir.join(rel.trim_start_matches('/'));
        let k = |c: &str, kind: &str| p(&format!("{c}/{kind}"));
        m.step.set(&format!("{self:?}"));
        match self {
            Op::Mkdir(c) => std::fs::create_dir(p(c)).map(|()| None),
            Op::Rmdir(c) => std::fs::remove_dir(p(c)).map(|()| None),
            Op::Touch(c, kind) => {
                touch(&k(c, kind))?;
                match std::fs::metadata(k(c, kind)) {
                    Ok(md) => Ok(Some(md.ino())),
                    Err(e) if daemon_gone(&e) => Ok(None),
                    Err(e) => panic!("{self:?} succeeded, but stat: {e}"),
                }
            }
            Op::Ln(src, dst, kind) => std::fs::hard_link(k(src, kind), k(dst, kind)).map(|()| None),
            Op::Rm(c, kind) => std::fs::remove_file(k(c, kind)).map(|()| None),
            Op::Rename(old, new) => std::fs::rename(p(old), p(new)).map(|()| None),
            Op::WritePid(c, kind, pid, _) => {
                write_once(&k(c, kind), format!("{pid}\n").as_bytes()).map(|()| None)
            }
        }
    }

    /// What the operation did to `model` when it succeeded; `touched` is
    /// what [`Op::run`] returned.
    fn apply(&self, model: &mut Shape, touched: Option<u64>) {
        match self {
            Op::Mkdir(c) => {
                model.insert(c.clone(), BTreeMap::new());
            }
            Op::Rmdir(c) => {
                model.remove(c);
            }
            Op::Touch(c, kind) => {
                let own = model.entry(c.clone()).or_default();
                own.entry(kind.to_string()).or_insert(touched);
            }
            Op::Ln(src, dst, kind) => {
                let ino = model[src][*kind];
                model
                    .entry(dst.clone())
                    .or_default()
                    .insert(kind.to_string(), ino);
            }
            Op::Rm(c, kind) => {
                if let Some(own) = model.get_mut(c) {
                    own.remove(*kind);
                }
            }
            Op::Rename(old, new) => {
                if old == new {
                    return;
                }
                model.remove(new);
                let moved: Vec<String> = model
                    .keys()
                    .filter(|p| *p == old || p.starts_with(&format!("{old}/")))
                    .cloned()
                    .collect();
                for p in moved {
                    let own = model.remove(&p).unwrap();
                    model.insert(format!("{new}{}", &p[old.len()..]), own);
                }
            }
            Op::WritePid(c, kind, _, ino) => {
                // A write to a kind file changes it under all its names.
                let old = model.get(c).and_then(|own| own.get(*kind)).copied();
                match old {
                    Some(old) => {
                        for own in model.values_mut() {
                            if let Some(slot) = own.get_mut(*kind)
                                && *slot == old
                            {
                                *slot = Some(*ino);
                            }
                        }
                    }
                    None => {
                        model
                            .entry(c.clone())
                            .or_default()
                            .insert(kind.to_string(), Some(*ino));
                    }
                }
            }
        }
    }
}

/// `touch PATH`: opens it, creating it, and closes it, reporting an error
/// of close too (a fresh namespace is bound when the file is closed).
fn touch(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path and constant flags.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC,
            0o644,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is ours and closed once.
    if unsafe { libc::close(fd) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The daemon is gone: requests fail with these.
fn daemon_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV)
    )
}

/// A process whose pid the random operations write into kind files, and
/// the inodes of its namespaces by kind.
type Owner = (i32, BTreeMap<&'static str, u64>);

/// Processes sitting in namespaces of their own, whose pids the random
/// operations write into kind files.
fn namespace_owners(m: &Mount, n: usize) -> (Vec<Proc>, Vec<Owner>) {
    let me = std::process::id() as i32;
    let procs: Vec<Proc> = (0..n)
        .map(|_| Proc::sh("exec unshare --uts --net --ipc sleep 600"))
        .collect();
    let mut owners = Vec::new();
    for p in &procs {
        m.watch_pid(p.pid());
        wait_for("the unshared namespaces", || {
            RANDOM_KINDS.iter().all(|k| {
                std::fs::metadata(format!("/proc/{}/ns/{k}", p.pid()))
                    .is_ok_and(|md| md.ino() != ns_ino(me, k))
            })
        });
        let inos = RANDOM_KINDS
            .iter()
            .map(|&k| (k, ns_ino(p.pid(), k)))
            .collect();
        owners.push((p.pid(), inos));
    }
    (procs, owners)
}

#[test]
fn sigkill_in_the_middle_of_random_operations_loses_at_most_the_one_in_flight() {
    let test = "sigkill_in_the_middle_of_random_operations";
    let Some(mut m) = Mount::new("persist-sigkill") else {
        return;
    };
    let verbose = std::env::var_os("NSPROXYFS_FUZZ_VERBOSE").is_some();
    let mut rng = Rng::from_env(test);
    let (_procs, owners) = namespace_owners(&m, 3);
    const OPS: usize = 1000;
    let kill_after = 200 + rng.below(600);
    let kill_delay = Duration::from_micros(rng.below(3000) as u64);
    let done = Arc::new(AtomicUsize::new(0));
    let daemon = m.daemon_pid();
    let killer = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(100);
            while done.load(Ordering::SeqCst) < kill_after && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(kill_delay);
            // SAFETY: kill takes integers; the daemon is this test's child,
            // not reaped until the test's own `kill` below.
            unsafe { libc::kill(daemon, libc::SIGKILL) };
        })
    };

    let mut model = Shape::new();
    let mut in_flight = None;
    let mut refused = 0;
    let mut refusals: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..OPS {
        let op = Op::random(&mut rng, &model, &owners);
        let result = op.run(&m);
        if verbose {
            note(&format!("{i}: {op:?} -> {result:?}"));
        }
        match result {
            Ok(touched) => op.apply(&mut model, touched),
            Err(e) if daemon_gone(&e) => {
                in_flight = Some(op);
                break;
            }
            Err(e) => {
                refused += 1;
                *refusals.entry(e.to_string()).or_insert(0) += 1;
            }
        }
        done.store(i + 1, Ordering::SeqCst);
        // The model is what the daemon does: check it now and then, while
        // the daemon is surely alive.
        if i % 50 == 49 && i + 1 < kill_after {
            assert!(
                matches(&shape(&m), &model),
                "after op {i}: the model is wrong"
            );
        }
    }
    killer.join().unwrap();
    let acknowledged = done.load(Ordering::SeqCst);
    let in_flight = in_flight.expect("the daemon was killed before the operations ran out");
    note(&format!(
        "{test}: killed after {acknowledged} acknowledged operations ({refused} refused: \
         {refusals:?}), in flight: {in_flight:?}; {} containers",
        model.len()
    ));

    m.kill();
    m.restart();
    let restored = shape(&m);
    let mut with_in_flight = model.clone();
    in_flight.apply(&mut with_in_flight, None);
    assert!(
        matches(&restored, &model) || matches(&restored, &with_in_flight),
        "the restored tree is neither the acknowledged one nor that plus {in_flight:?}\n\
         against the acknowledged one:\n{}against that plus the one in flight:\n{}",
        diff(&restored, &model),
        diff(&restored, &with_in_flight)
    );
    let lost = !matches(&restored, &with_in_flight) as usize;
    note(&format!(
        "{test}: restored; the operation in flight was lost: {lost}"
    ));

    // The namespaces are usable through their pins, and a clean restart
    // brings the same tree again.
    for (c, own) in restored.iter().take(5) {
        for (kind, ino) in own {
            let pin = m.pin(c.trim_start_matches('/'), kind);
            let seen = sh_ok(&format!(
                "nsenter --{kind}={pin} readlink /proc/self/ns/{kind}"
            ));
            assert_eq!(
                seen.trim(),
                format!("{kind}:[{}]", ino.unwrap()),
                "{c}/{kind}"
            );
        }
    }
    m.stop();
    m.restart();
    assert_eq!(shape(&m), restored);
}

#[test]
fn a_clean_end_and_a_new_mount_bring_the_same_tree_back() {
    let Some(mut m) = Mount::new("persist-clean") else {
        return;
    };
    // A fresh state directory starts empty.
    assert!(shape(&m).is_empty());
    for c in ["web", "web/db", "web/db/x y", "cache"] {
        std::fs::create_dir(m.path(c)).unwrap();
    }
    for f in [
        "web/net",
        "web/uts",
        "cache/ipc",
        "web/db/x y/cgroup",
        "cache/time",
    ] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    std::fs::hard_link(m.path("web/net"), m.path("cache/net")).unwrap();
    // The root's own namespaces can be bound too.
    std::fs::hard_link(m.path("uts"), m.path("cache/uts")).unwrap();
    std::fs::rename(m.path("cache"), m.path("store")).unwrap();
    m.write("web/db/ipc", format!("{}\n", std::process::id()).as_bytes())
        .unwrap();
    let before = shape(&m);
    // `status` of a few containers; the root's mount namespace is shown
    // as a descriptor of the daemon, whose pid changes.
    let status = |m: &Mount| -> Vec<String> {
        ["web", "web/db", "store"]
            .iter()
            .map(|c| {
                m.read(&format!("{c}/status"))
                    .replace(&format!("/proc/{}/", m.daemon_pid()), "/proc/DAEMON/")
            })
            .collect()
    };
    let status_before = status(&m);

    for how in ["umount", "SIGTERM"] {
        let code = match how {
            "umount" => m.umount(),
            _ => m.stop(),
        };
        assert_eq!(code.code(), Some(0), "{how}");
        m.restart();
        assert_eq!(shape(&m), before, "after {how}");
        assert_eq!(
            std::fs::metadata(m.path("web/net")).unwrap().nlink(),
            2,
            "after {how}"
        );
        assert_eq!(status(&m), status_before, "status after {how}");
    }
    let pin = m.pin("web", "net");
    let seen = sh_ok(&format!("nsenter --net={pin} readlink /proc/self/ns/net"));
    assert_eq!(seen.trim(), m.read("web/net").trim());
}

/// The pid of the keeper (`nsproxyfs-pid1`) of pid namespace `ino`; only
/// `comm` and namespace links are read, which never block.
fn pid_keeper(ino: u64) -> Option<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|&p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .ok()
                .as_deref()
                == Some("nsproxyfs-pid1\n")
                && std::fs::metadata(format!("/proc/{p}/ns/pid"))
                    .map(|md| md.ino())
                    .ok()
                    == Some(ino)
        })
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned())
}

/// The holder pid in a `/proc/PID/ns/mnt` pin path.
fn holder_of(pin: &str) -> i32 {
    pin.strip_prefix("/proc/")
        .and_then(|r| r.strip_suffix("/ns/mnt"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not a holder's path: {pin}"))
}

#[test]
fn mount_and_pid_namespaces_come_back_through_their_keepers() {
    let Some(mut m) = Mount::new("persist-keepers") else {
        return;
    };
    std::fs::create_dir(m.path("k")).unwrap();
    std::fs::File::create(m.path("k/mnt")).unwrap();
    std::fs::File::create(m.path("k/pid")).unwrap();
    let mnt = m.read("k/mnt");
    let pid = m.read("k/pid");
    let pid_ino = std::fs::metadata(m.path("k/pid")).unwrap().ino();
    let mnt_pin = m.pin("k", "mnt");
    let holder = holder_of(&mnt_pin);
    assert_eq!(comm(holder).as_deref(), Some("nsproxyfs-mnt"));
    let keeper = pid_keeper(pid_ino).expect("the pid namespace's keeper");
    m.watch_pid(holder);
    let tasks = m.read("k/tasks");
    assert!(
        !tasks.lines().any(|l| l == holder.to_string()),
        "keepers are not members: {tasks}"
    );

    for how in ["SIGKILL", "SIGTERM"] {
        match how {
            "SIGKILL" => m.kill(),
            _ => assert_eq!(m.stop().code(), Some(0)),
        }
        // Both keepers outlive the daemon.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            comm(holder).as_deref(),
            Some("nsproxyfs-mnt"),
            "after {how}"
        );
        assert_eq!(
            comm(keeper).as_deref(),
            Some("nsproxyfs-pid1"),
            "after {how}"
        );
        m.restart();
        assert_eq!(m.read("k/mnt"), mnt, "after {how}");
        assert_eq!(m.read("k/pid"), pid, "after {how}");
        assert_eq!(m.pin("k", "mnt"), mnt_pin, "the same holder after {how}");
        let seen = sh_ok(&format!(
            "nsenter --mount={mnt_pin} readlink /proc/self/ns/mnt"
        ));
        assert_eq!(seen, mnt, "after {how}");
        // The pid namespace still takes new processes, one after another.
        let pin = m.pin("k", "pid");
        for _ in 0..2 {
            let out = sh_ok(&format!("nsenter --pid={pin} sh -c 'echo $$'"));
            assert!(out.trim().parse::<i32>().unwrap() > 1, "{out}");
        }
    }

    // Released, the keepers leave: the holder at once, the init once its
    // namespace is empty (it is).
    std::fs::remove_file(m.path("k/mnt")).unwrap();
    std::fs::remove_dir(m.path("k")).unwrap();
    // The record lists them, so that a daemon restarted meanwhile tells
    // them again, until they are gone.
    let record = std::fs::read_to_string(m.state.join("tree")).unwrap();
    assert!(
        record.contains(&format!("ns pid {pid_ino} keeper {keeper} ")),
        "{record}"
    );
    wait_for("the holder to exit", || comm(holder).is_none());
    wait_for("the init to exit", || comm(keeper).is_none());
    std::fs::create_dir(m.path("after")).unwrap();
    let record = std::fs::read_to_string(m.state.join("tree")).unwrap();
    assert_eq!(record.lines().count(), 4, "{record}");
}

#[test]
fn bindings_that_cannot_come_back_are_dropped_with_one_log_line_each() {
    let Some(mut m) = Mount::new("persist-dropped") else {
        return;
    };
    for c in ["n", "p", "q", "ok"] {
        std::fs::create_dir(m.path(c)).unwrap();
    }
    for f in ["n/net", "p/pid", "q/mnt", "ok/uts"] {
        std::fs::File::create(m.path(f)).unwrap();
    }
    std::fs::hard_link(m.path("n/net"), m.path("ok/net")).unwrap();
    let ino = |f: &str| std::fs::metadata(m.path(f)).unwrap().ino();
    let (net, pid, mnt) = (ino("n/net"), ino("p/pid"), ino("q/mnt"));
    let net_pin = m.pin("n", "net");
    let holder = holder_of(&m.pin("q", "mnt"));
    let keeper = pid_keeper(pid).unwrap();
    let ok_uts = m.read("ok/uts");
    assert_eq!(m.stop().code(), Some(0));

    // While the daemon is down: the net pin goes, the pid namespace's init
    // and the mount namespace's holder die.
    sh_ok(&format!("umount '{net_pin}' && rm '{net_pin}'"));
    for p in [keeper, holder] {
        // SAFETY: kill takes integers; these are this test's daemon's keepers.
        unsafe { libc::kill(p, libc::SIGKILL) };
    }
    wait_for("the keepers to die", || {
        comm(keeper).is_none() && comm(holder).is_none()
    });
    let log_before = m.log_text().len();
    m.restart();

    let restored = shape(&m);
    let want: Shape = [
        ("/n", vec![]),
        ("/ok", vec![("uts", None)]),
        ("/p", vec![]),
        ("/q", vec![]),
    ]
    .into_iter()
    .map(|(c, ks)| {
        (
            c.to_owned(),
            ks.into_iter().map(|(k, i)| (k.to_owned(), i)).collect(),
        )
    })
    .collect();
    assert!(matches(&restored, &want), "{restored:#?}");
    assert_eq!(m.read("ok/uts"), ok_uts);
    let log = m.log_text()[log_before..].to_owned();
    let dropped: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("no longer binds"))
        .collect();
    assert_eq!(dropped.len(), 4, "one line per lost binding:\n{log}");
    for (c, what, why) in [
        ("/n", format!("net:[{net}]"), "is missing"),
        ("/ok", format!("net:[{net}]"), "is missing"),
        ("/p", format!("pid:[{pid}]"), "takes no new process"),
        ("/q", format!("mnt:[{mnt}]"), "has exited"),
    ] {
        let line = format!("restore: {c} no longer binds {what}: ");
        assert!(
            dropped.iter().any(|l| l.contains(&line) && l.contains(why)),
            "{line}...{why} in:\n{log}"
        );
    }
    // The record was written again without them.
    let record = std::fs::read_to_string(m.state.join("tree")).unwrap();
    for gone in [net, pid, mnt] {
        assert!(!record.contains(&gone.to_string()), "{record}");
    }
    // And the stale pin of the dead pid namespace is gone.
    assert!(!m.state.join(format!("pins/pid-{pid}")).exists());
}

#[test]
fn an_unreadable_record_is_set_aside_and_the_daemon_starts_empty() {
    let Some(mut m) = Mount::new("persist-corrupt") else {
        return;
    };
    for (bad, why) in [
        ("nsproxyfs-tree 1\nboot x\ncontainer /a\n", "cut short"),
        ("nsproxyfs-tree 7\nboot x\nend\n", "version \"7\""),
        ("\u{0}\u{1}garbage", "not an nsproxyfs record"),
    ] {
        std::fs::create_dir(m.path("x")).unwrap();
        std::fs::File::create(m.path("x/uts")).unwrap();
        let uts = std::fs::metadata(m.path("x/uts")).unwrap().ino();
        assert_eq!(m.stop().code(), Some(0));
        let record = m.state.join("tree");
        std::fs::write(&record, bad).unwrap();
        let log_before = m.log_text().len();
        m.restart();
        assert!(shape(&m).is_empty(), "started empty after {bad:?}");
        let log = m.log_text()[log_before..].to_owned();
        assert!(
            log.lines().any(|l| l.contains("cannot be used")
                && l.contains(why)
                && l.contains("set aside")),
            "{log}"
        );
        // Kept for inspection, beside a new record of the empty tree.
        let aside: Vec<std::path::PathBuf> = std::fs::read_dir(&m.state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().contains("tree.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(&aside[0]).unwrap(), bad.as_bytes());
        std::fs::remove_file(&aside[0]).unwrap();
        let now = std::fs::read_to_string(&record).unwrap();
        assert!(
            now.starts_with("nsproxyfs-tree 1\n") && now.ends_with("\nend\n"),
            "{now}"
        );
        assert_eq!(now.lines().count(), 3, "{now}");
        assert!(
            !m.state.join(format!("pins/uts-{uts}")).exists(),
            "stale pin removed"
        );
    }
}

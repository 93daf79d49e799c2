//! The tree service driven directly, with no mount: the seam between the
//! service and the FUSE adapter. Each test runs again in a process of its
//! own in a private mount namespace (pins are mounts, and the service's root
//! container binds the namespaces of its whole process), calls the
//! service's operations as the adapter would, and checks their outcomes
//! against the kernel's `/proc/PID/ns` and the record on disk.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nsproxyfs::mover::{self, Mover};
use nsproxyfs::ns::Namespace;
use nsproxyfs::ns::creds::Credentials;
use nsproxyfs::service::{
    Attr, Caller, Error, FileKind, Node, Options, Rename, Service, WriteReply,
};
use nsproxyfs::state::{self, Loaded, Recorder};
use nsproxyfs::state_dir::StateDir;
use nsproxyfs::tree::Tree;

/// Set in the process a test runs in: the scratch directory to use.
const INSIDE: &str = "NSPROXYFS_SERVICE_TEST_DIR";

/// Whether this process is the one to run test `name`. If it is not, runs
/// `name` again in a new process in a private mount namespace and checks
/// that it ran and passed; the scratch directory is removed once that
/// process, and every mount it made, is gone.
fn inside(name: &str) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(INSIDE) {
        return Some(PathBuf::from(dir));
    }
    if !require_privileges(name) || !require_tools(name, &["unshare", "sleep"]) {
        return None;
    }
    let scratch = Scratch::new(name);
    let out = scratch.0.join("output");
    let mut child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(INSIDE, &scratch.0)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn unshare");
    let status = wait_bounded(&mut child, WATCHDOG);
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(status.success(), "{name}: {status}\n{output}");
    assert!(output.contains("1 passed"), "{name} did not run:\n{output}");
    None
}

/// A move asked for: the pid, and the inodes of the set.
type Asked = (i32, [u64; 8]);

/// A mover that moves nothing: it notes what it was asked and says done.
#[derive(Clone, Default)]
struct Noted(Arc<Mutex<Vec<Asked>>>);

impl Mover for Noted {
    fn move_process(
        &self,
        pid: i32,
        _target: std::os::fd::OwnedFd,
        _writer: Option<u32>,
        _tracer: &Credentials,
        set: &[Arc<Namespace>; 8],
        _seized: &mut dyn FnMut(),
    ) -> mover::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push((pid, std::array::from_fn(|i| set[i].ino())));
        Ok(())
    }

    fn released(&self, _ino: u64) {}

    fn helper_pids(&self) -> Vec<i32> {
        Vec::new()
    }
}

/// A write's answer, as the errno it would be.
struct Answer(mpsc::Sender<Result<(), i32>>);

impl WriteReply for Answer {
    fn send(&mut self, _op: &'static str, result: Result<(), Error>) {
        let _ = self.0.send(result.map_err(|e| nsproxyfs::errno::of(&e)));
    }

    fn fail(&mut self, errno: i32) {
        let _ = self.0.send(Err(errno));
    }
}

/// The service on state directory `dir/state`, restoring its record if
/// `restore`, with `mover`.
fn service(dir: &Path, restore: bool, mover: Noted) -> Arc<Service> {
    let state_dir = Arc::new(StateDir::open(&dir.join("state")).expect("state dir"));
    let pin_dir = Arc::new(state_dir.pins().expect("pins"));
    let restore = match (restore, state::load(&state_dir)) {
        (true, Loaded::Found(record)) => Some(record),
        (true, _) => panic!("no record to restore"),
        (false, _) => None,
    };
    let mountpoint = dir.join("mnt");
    std::fs::create_dir_all(&mountpoint).unwrap();
    let options = Options {
        pin_dir,
        mountpoint,
        recorder: Some(Recorder::open(state_dir)),
        restore,
        discover: false,
        exporter: None,
    };
    Arc::new(Service::new(options, Box::new(mover)).expect("service"))
}

/// This very thread as the sender of requests.
fn me() -> Caller {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() } as u32;
    Caller::new(tid, 0, 0)
}

const ROOT: u64 = 1;

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn names(svc: &Service, dir: u64) -> Vec<String> {
    let entries = svc.readdir(&me(), dir).expect("readdir");
    entries.into_iter().map(|(_, _, n)| n).collect()
}

/// What handle `fh` reads, whole.
fn read_all(svc: &Service, fh: u64) -> String {
    String::from_utf8(svc.read(fh, 0, 1 << 16).expect("a handle")).unwrap()
}

/// Writes `data` to node `id` (opened for writing) and waits for the answer.
fn write(svc: &Arc<Service>, id: u64, data: &str) -> Result<(), i32> {
    let fh = svc
        .open(&me(), id, libc::O_WRONLY)
        .expect("open for writing");
    let (tx, rx) = mpsc::channel();
    svc.write(&me(), id, fh, data.as_bytes(), Box::new(Answer(tx)));
    let answer = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the write was answered");
    svc.flush(fh).expect("flush");
    svc.release(fh);
    answer
}

#[test]
fn tree_changes_are_answered_recorded_and_restored() {
    let Some(dir) = inside("tree_changes_are_answered_recorded_and_restored") else {
        return;
    };
    let own_net = ns_ino(std::process::id() as i32, "net");
    let svc = service(&dir, false, Noted::default());
    let c = me();
    assert_eq!(Node::Dir(Tree::ROOT).id(), ROOT);

    let vpn = svc.mkdir(&c, ROOT, name("vpn")).expect("mkdir vpn");
    assert_eq!((vpn.kind, vpn.perm, vpn.nlink), (FileKind::Dir, 0o755, 2));
    let browser = svc.mkdir(&c, ROOT, name("browser")).expect("mkdir browser");
    assert_eq!(
        svc.mkdir(&c, ROOT, name("vpn"))
            .map_err(|e| nsproxyfs::errno::of(&e)),
        Err(libc::EEXIST)
    );

    // touch vpn/net: a fresh net namespace, its inode the file's id.
    let net: Attr = svc
        .mknod(&c, vpn.id, name("net"), libc::S_IFREG | 0o644)
        .expect("mknod vpn/net");
    assert_eq!((net.kind, net.nlink), (FileKind::Regular, 1));
    assert_ne!(net.id, own_net, "a fresh namespace, not the daemon's");
    // ln vpn/net browser/net: one node, two links.
    let linked = svc.link(&c, net.id, browser.id, name("net")).expect("link");
    assert_eq!((linked.id, linked.nlink), (net.id, 2));
    assert_eq!(
        names(&svc, browser.id),
        [".", "..", "tasks", "status", "net"]
    );
    assert_eq!(svc.lookup(&c, browser.id, name("net")).unwrap().id, net.id);

    // mv browser web
    svc.rename(
        &c,
        ROOT,
        name("browser"),
        ROOT,
        name("web"),
        Rename::Replace,
    )
    .expect("rename");
    assert_eq!(
        svc.lookup(&c, ROOT, name("browser"))
            .map_err(|e| nsproxyfs::errno::of(&e)),
        Err(libc::ENOENT)
    );
    let web = svc.lookup(&c, ROOT, name("web")).expect("web");
    assert_eq!(web.id, browser.id);

    // cat web/status: net from /vpn.
    let status = svc.lookup(&c, web.id, name("status")).unwrap();
    let fh = svc
        .open(&c, status.id, libc::O_RDONLY)
        .expect("open status");
    let text = read_all(&svc, fh);
    svc.release(fh);
    let line = text.lines().find(|l| l.starts_with("net\t")).unwrap();
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(fields[1], format!("net:[{}]", net.id), "{text}");
    assert_eq!(fields[2], "own", "{text}");
    assert!(svc.read(fh, 0, 1).is_none(), "released");

    // Every change was recorded before it was answered.
    let record = std::fs::read_to_string(dir.join("state").join(state::RECORD)).unwrap();
    assert!(
        record.contains("/vpn") && record.contains("/web"),
        "{record}"
    );
    assert!(!record.contains("/browser"), "{record}");

    // A new service on the same state directory has the same tree.
    drop(svc);
    let svc = service(&dir, true, Noted::default());
    let web = svc.lookup(&c, ROOT, name("web")).expect("web restored");
    let again = svc
        .lookup(&c, web.id, name("net"))
        .expect("web/net restored");
    assert_eq!((again.id, again.nlink), (net.id, 2));

    // rm web/net; rmdir web vpn.
    svc.unlink(&c, web.id, name("net")).expect("unlink");
    let vpn = svc.lookup(&c, ROOT, name("vpn")).unwrap();
    assert_eq!(svc.lookup(&c, vpn.id, name("net")).unwrap().nlink, 1);
    svc.rmdir(&c, ROOT, name("web")).expect("rmdir web");
    svc.rmdir(&c, ROOT, name("vpn")).expect("rmdir vpn");
    assert!(!names(&svc, ROOT).iter().any(|n| n == "vpn" || n == "web"));
}

#[test]
fn writes_bind_namespaces_and_ask_for_moves() {
    let Some(dir) = inside("writes_bind_namespaces_and_ask_for_moves") else {
        return;
    };
    let noted = Noted::default();
    let svc = service(&dir, false, noted.clone());
    let c = me();
    let boxed = svc.mkdir(&c, ROOT, name("box")).expect("mkdir");

    // echo PID > box/uts, PID in a uts namespace of its own.
    let other = Proc::sh("exec unshare --uts sleep 100");
    let own_uts = ns_ino(std::process::id() as i32, "uts");
    wait_for("the child's own uts namespace", || {
        std::fs::metadata(format!("/proc/{}/ns/uts", other.pid()))
            .is_ok_and(|_| ns_ino(other.pid(), "uts") != own_uts)
    });
    let uts = ns_ino(other.pid(), "uts");
    let (created, fh) = svc.create(&c, boxed.id, name("uts")).expect("create");
    assert_eq!(created.kind, FileKind::Regular);
    // A created kind file binds at its close if nothing was written: the
    // kernel must tell the daemon of each close.
    assert!(svc.needs_flush(fh));
    let (tx, rx) = mpsc::channel();
    let pid = format!("{}\n", other.pid());
    svc.write(&c, created.id, fh, pid.as_bytes(), Box::new(Answer(tx)));
    assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
    svc.flush(fh)
        .expect("flush after a write binds nothing more");
    svc.release(fh);
    let bound = svc.lookup(&c, boxed.id, name("uts")).expect("box/uts");
    assert_eq!(bound.id, uts);
    let fh = svc.open(&c, bound.id, libc::O_RDONLY).unwrap();
    assert_eq!(read_all(&svc, fh), format!("uts:[{uts}]\n"));
    assert!(!svc.needs_flush(fh), "a close changes nothing");
    svc.release(fh);

    // Nonsense changes nothing.
    assert_eq!(write(&svc, bound.id, "not a pid"), Err(libc::EINVAL));
    assert_eq!(svc.lookup(&c, boxed.id, name("uts")).unwrap().id, uts);

    // echo PID > box/tasks: the mover is asked to move that process into
    // box's set, which is the root's but for uts.
    let sleeper = Proc::sh("exec sleep 100");
    let tasks = svc.lookup(&c, boxed.id, name("tasks")).expect("tasks");
    let fh = svc.open(&c, tasks.id, libc::O_WRONLY).unwrap();
    assert!(
        !svc.needs_flush(fh),
        "a move happens at the write, not the close"
    );
    svc.release(fh);
    assert_eq!(write(&svc, tasks.id, &sleeper.pid().to_string()), Ok(()));
    let asked = noted.0.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    let (moved, set) = asked[0];
    assert_eq!(moved, sleeper.pid());
    let me_pid = std::process::id() as i32;
    for (i, entry) in NS_ENTRIES.iter().enumerate() {
        let want = if KINDS[i] == "uts" {
            uts
        } else {
            ns_ino(me_pid, entry)
        };
        assert_eq!(set[i], want, "{}", KINDS[i]);
    }
    // A pid that names no process is refused before the mover hears of it.
    assert_eq!(write(&svc, tasks.id, "2147483647"), Err(libc::ESRCH));
    assert_eq!(noted.0.lock().unwrap().len(), 1);
}

/// A mover that refuses every move, as the namespace part of a move can
/// fail after the cgroups were joined.
#[derive(Clone, Default)]
struct Refusing(Arc<Mutex<usize>>);

impl Mover for Refusing {
    fn move_process(
        &self,
        _pid: i32,
        _target: std::os::fd::OwnedFd,
        _writer: Option<u32>,
        _tracer: &Credentials,
        _set: &[Arc<Namespace>; 8],
        _seized: &mut dyn FnMut(),
    ) -> mover::Result<()> {
        *self.0.lock().unwrap() += 1;
        Err(mover::Error::Daemon)
    }

    fn released(&self, _ino: u64) {}

    fn helper_pids(&self) -> Vec<i32> {
        Vec::new()
    }
}

#[test]
fn a_move_joins_cgroups_before_the_mover_and_leaves_them_if_it_fails() {
    use common::cgroups::{Own, chosen, placed, put};
    use nsproxyfs::cgroup::{Cgroup, Hierarchies, Membership};
    let Some(dir) = inside("a_move_joins_cgroups_before_the_mover_and_leaves_them_if_it_fails")
    else {
        return;
    };
    let h = Hierarchies::of_host().expect("the host's hierarchies");
    let which = chosen(&h);
    let own = Own::new(&h, &which, "service");
    let from: Vec<_> = which.iter().map(|w| own.make(w, "from")).collect();
    let to: Vec<_> = which.iter().map(|w| own.make(w, "to")).collect();
    let gone: Vec<_> = which.iter().map(|w| own.make(w, "gone")).collect();
    let c = me();
    let sleeper = Proc::sh("exec sleep 100");
    let at = |cgroups: &[Cgroup]| {
        cgroups
            .iter()
            .all(|g| placed(sleeper.pid(), &g.hierarchy) == g.path)
    };
    let bind = |svc: &Arc<Service>, dir: u64, cgroups: &[Cgroup]| {
        let (made, fh) = svc.create(&c, dir, name(".cgroups")).expect("create");
        let (tx, rx) = mpsc::channel();
        let text = Membership::from_cgroups(cgroups.to_vec()).to_string();
        svc.write(&c, made.id, fh, text.as_bytes(), Box::new(Answer(tx)));
        assert_eq!(rx.recv_timeout(Duration::from_secs(30)), Ok(Ok(())));
        svc.flush(fh).unwrap();
        svc.release(fh);
    };

    // The namespace part fails: the cgroups joined are left again.
    let refusing = Refusing::default();
    let svc = {
        let state_dir = Arc::new(StateDir::open(&dir.join("refusing")).expect("state dir"));
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let options = Options {
            pin_dir: Arc::new(state_dir.pins().expect("pins")),
            mountpoint: dir.join("mnt"),
            recorder: Some(Recorder::open(state_dir)),
            restore: None,
            discover: false,
            exporter: None,
        };
        Arc::new(Service::new(options, Box::new(refusing.clone())).expect("service"))
    };
    let boxed = svc.mkdir(&c, ROOT, name("box")).expect("mkdir");
    bind(&svc, boxed.id, &to);
    assert!(names(&svc, boxed.id).contains(&".cgroups".to_owned()));
    for g in &from {
        put(&own, g, sleeper.pid());
    }
    let tasks = svc.lookup(&c, boxed.id, name("tasks")).unwrap();
    assert_eq!(
        write(&svc, tasks.id, &sleeper.pid().to_string()),
        Err(libc::EPERM)
    );
    assert_eq!(*refusing.0.lock().unwrap(), 1, "the mover was asked");
    assert!(at(&from), "back in its cgroups after a failed move");
    drop(svc);

    // The mover succeeds: the process is in the cgroups when it is asked.
    let noted = Noted::default();
    let svc = service(&dir, false, noted.clone());
    let boxed = svc.mkdir(&c, ROOT, name("box")).expect("mkdir");
    bind(&svc, boxed.id, &to);
    let tasks = svc.lookup(&c, boxed.id, name("tasks")).unwrap();
    assert_eq!(write(&svc, tasks.id, &sleeper.pid().to_string()), Ok(()));
    assert!(at(&to), "in the container's cgroups");
    assert_eq!(noted.0.lock().unwrap().len(), 1);

    // A join refused (a cgroup removed since it was bound): the mover is
    // never asked, and nothing changed.
    let other = svc.mkdir(&c, ROOT, name("other")).expect("mkdir");
    bind(&svc, other.id, &gone);
    for g in &gone {
        std::fs::remove_dir(own.dir(g)).unwrap();
    }
    let tasks = svc.lookup(&c, other.id, name("tasks")).unwrap();
    assert_eq!(
        write(&svc, tasks.id, &sleeper.pid().to_string()),
        Err(libc::ENOENT)
    );
    assert_eq!(noted.0.lock().unwrap().len(), 1, "the mover was not asked");
    assert!(at(&to), "still where it was");
    drop(sleeper);
}

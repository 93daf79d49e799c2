//! A private Docker engine for tests: its own containerd and dockerd, in a
//! mount namespace of their own, with a private data root, exec root,
//! socket and parent cgroup, no network, and an image imported from a
//! directory holding a static busybox (no registry is reached).
//!
//! The engines of one test binary are shared: [`Engine::shared`] hands out
//! the running one, and the last user's drop stops it. Stopping removes
//! every container, ends dockerd, containerd and any process left in the
//! engine's mount namespace (container shims), which takes the engine's
//! mounts with it, then removes the engine's cgroups and directories.
//!
//! The mount namespace has a fresh tmpfs on `/run`: containerd's shims and
//! runc keep their sockets and state under fixed paths there
//! (`/run/containerd`), which would otherwise outlive the engine.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::{Scratch, note, on_path, wait_bounded};

/// The tag of the image every engine imports.
pub const IMAGE: &str = "nsproxyfs-busybox:test";
/// A file at the root of the image, holding [`IMAGE`].
pub const MARKER: &str = "nsproxyfs-image";
/// How long the engine may take to answer.
const START: Duration = Duration::from_secs(90);

/// The programs an engine needs.
const TOOLS: [&str; 6] = [
    "dockerd",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "docker",
    "busybox",
];

static SHARED: Mutex<Weak<Engine>> = Mutex::new(Weak::new());

/// A running private Docker engine.
pub struct Engine {
    scratch: Scratch,
    socket: PathBuf,
    /// The engine's parent cgroup in every hierarchy, below the root.
    cgroup_parent: String,
    /// Holds the mount namespace where /run is private.
    holder: Option<Child>,
    containerd: Option<Child>,
    dockerd: Option<Child>,
    /// The storage driver in use.
    pub driver: String,
}

/// A container the test started.
#[derive(Debug, Clone)]
pub struct Container {
    /// The full id.
    pub id: String,
    /// The pid of its first process, in the host's pid namespace.
    pub pid: i32,
}

impl Container {
    /// The first 12 digits of the id, as docker prints it.
    pub fn short(&self) -> &str {
        &self.id[..12]
    }
}

/// Why the engine cannot run here, if it cannot.
fn missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    let absent: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if !absent.is_empty() {
        return Some(format!(
            "{} not installed (Debian: docker.io, busybox-static)",
            absent.join(", ")
        ));
    }
    match find_on_path("busybox") {
        Some(b) if is_static(&b) => None,
        Some(b) => Some(format!(
            "{} is not static (install busybox-static)",
            b.display()
        )),
        None => Some("busybox not installed".into()),
    }
}

fn find_on_path(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// Whether the ELF file at `path` has no program interpreter (is linked
/// statically).
fn is_static(path: &Path) -> bool {
    let Ok(elf) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        elf.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(|b: [u8; 8]| u64::from_le_bytes(b) as usize)
    };
    // A 64-bit little-endian ELF: program headers at e_phoff, PT_INTERP = 3.
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(size), Some(count)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38)) else {
        return false;
    };
    (0..count).all(|i| u32_at(phoff + i * size) != Some(3))
}

impl Engine {
    /// The engine of this test binary, started if none runs; `None` (after
    /// saying why) where it cannot run outside CI. Under `CI=true` a
    /// missing engine fails the test.
    ///
    /// Call it before [`super::Mount::new`]: the engine's mount namespace
    /// is made from the calling thread's.
    pub fn shared(test: &str) -> Option<Arc<Engine>> {
        if !Engine::can_run(test) {
            return None;
        }
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(engine) = shared.upgrade() {
            return Some(engine);
        }
        let engine = Arc::new(Engine::start());
        *shared = Arc::downgrade(&engine);
        Some(engine)
    }

    /// An engine of the caller's alone, stopped when dropped.
    pub fn private(test: &str) -> Option<Engine> {
        Engine::can_run(test).then(Engine::start)
    }

    fn can_run(test: &str) -> bool {
        let Some(why) = missing() else {
            return true;
        };
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs a Docker engine, and CI must not skip: {why}");
        }
        eprintln!("SKIP {test}: needs a Docker engine ({why})");
        false
    }

    fn start() -> Engine {
        let scratch = Scratch::new("docker");
        let n = scratch
            .0
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("docker")
            .to_owned();
        let mut engine = Engine {
            socket: scratch.0.join("docker.sock"),
            cgroup_parent: format!("/{n}"),
            scratch,
            holder: None,
            containerd: None,
            dockerd: None,
            driver: String::new(),
        };
        engine.start_holder();
        engine.start_containerd();
        for driver in ["overlay2", "vfs"] {
            match engine.start_dockerd(driver) {
                Ok(()) => break,
                Err(log) if driver == "overlay2" => {
                    note(&format!("dockerd with overlay2 failed, trying vfs: {log}"));
                }
                Err(log) => panic!("dockerd did not start: {log}"),
            }
        }
        engine.import_image();
        engine
    }

    fn dir(&self, rel: &str) -> PathBuf {
        self.scratch.0.join(rel)
    }

    /// Starts the process that holds the private mount namespace, once it
    /// has put a tmpfs on `/run`.
    fn start_holder(&mut self) {
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg("mount -t tmpfs -o mode=0755 nsproxyfs-docker-run /run && echo ready && exec sleep 100000")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the mount namespace holder");
        let mut out = holder.stdout.take().expect("holder's stdout");
        let line = read_line(&mut out);
        self.holder = Some(holder);
        assert_eq!(line, "ready", "the holder could not mount /run");
    }

    /// A command run in the engine's mount namespace.
    fn inside(&self, program: &str) -> Command {
        let holder = self.holder.as_ref().expect("holder").id();
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--mount=/proc/{holder}/ns/mnt"))
            .arg("--")
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.dir(name)).expect("create a log")
    }

    fn start_containerd(&mut self) {
        let root = self.dir("containerd");
        let config = format!(
            "version = 2\n\
             root = \"{root}/root\"\n\
             state = \"{root}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{root}/containerd.sock\"\n\
             [ttrpc]\n  address = \"{root}/containerd.sock.ttrpc\"\n\
             [debug]\n  address = \"\"\n\
             [metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{root}/opt\"\n",
            root = root.display()
        );
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("config.toml"), config).unwrap();
        let child = self
            .inside("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .stdout(Stdio::null())
            .stderr(self.log_file("containerd.log"))
            .spawn()
            .expect("start containerd");
        self.containerd = Some(child);
        let sock = root.join("containerd.sock");
        let deadline = Instant::now() + START;
        while !sock.exists() {
            if let Some(Ok(Some(status))) = self.containerd.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "containerd exited ({status}): {}",
                    self.log("containerd.log")
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not answer: {}",
                self.log("containerd.log")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir(name)).unwrap_or_default()
    }

    /// Starts dockerd with storage `driver` and waits until it answers;
    /// its log if it exits first.
    fn start_dockerd(&mut self, driver: &str) -> Result<(), String> {
        let config = self.dir("daemon.json");
        // The trust key would go to /etc/docker by default.
        std::fs::write(
            &config,
            format!(
                "{{\"deprecated-key-path\": \"{}\"}}\n",
                self.dir("key.json").display()
            ),
        )
        .unwrap();
        let data = self.dir(&format!("data-{driver}"));
        let exec = self.dir("exec");
        let child = self
            .inside("dockerd")
            .arg("--config-file")
            .arg(&config)
            .arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(&exec)
            .arg("--pidfile")
            .arg(self.dir("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .arg("--containerd")
            .arg(self.dir("containerd/containerd.sock"))
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false"])
            .arg("--storage-driver")
            .arg(driver)
            .arg("--cgroup-parent")
            .arg(format!("{}/docker", self.cgroup_parent))
            .stdout(Stdio::null())
            .stderr(self.log_file("dockerd.log"))
            .spawn()
            .expect("start dockerd");
        self.dockerd = Some(child);
        let deadline = Instant::now() + START;
        loop {
            if let Some(Ok(Some(status))) = self.dockerd.as_mut().map(|d| d.try_wait()) {
                self.dockerd = None;
                return Err(format!("exited ({status}): {}", self.log("dockerd.log")));
            }
            let out = self.docker(&["info", "--format", "{{.Driver}}"]);
            if out.status.success() {
                self.driver = String::from_utf8_lossy(&out.stdout).trim().to_owned();
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("no answer: {}", self.log("dockerd.log")));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs the docker client against this engine.
    pub fn docker(&self, args: &[&str]) -> Output {
        let mut child = Command::new("docker")
            .env("DOCKER_HOST", format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir("client"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker");
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let reader = std::thread::spawn(move || {
            let mut text = (Vec::new(), Vec::new());
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_end(&mut text.0);
            }
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_end(&mut text.1);
            }
            text
        });
        let status = wait_bounded(&mut child, START);
        let (stdout, stderr) = reader.join().unwrap_or_default();
        Output {
            status,
            stdout,
            stderr,
        }
    }

    /// Runs the docker client and returns its output, panicking on failure.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} failed ({}): {}\n--- dockerd log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log("dockerd.log")
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Imports [`IMAGE`]: a directory holding the static busybox, a link
    /// to it for each of its applets in `/bin`, and [`MARKER`].
    fn import_image(&self) {
        let root = self.dir("image");
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let busybox = find_on_path("busybox").expect("busybox");
        std::fs::copy(&busybox, bin.join("busybox")).unwrap();
        let list = Command::new(&busybox)
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
            }
        }
        std::fs::write(root.join(MARKER), IMAGE).unwrap();
        let tar = self.dir("image.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("run tar");
        assert!(out.status.success(), "tar: {out:?}");
        self.docker_ok(&["import", &tar.to_string_lossy(), IMAGE]);
    }

    /// Starts a container of [`IMAGE`] with `options` (before the image)
    /// running `command`, without network, and returns it once it runs.
    pub fn run(&self, options: &[&str], command: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--network", "none"];
        args.extend_from_slice(options);
        args.push(IMAGE);
        args.extend_from_slice(command);
        let id = self.docker_ok(&args);
        let pid = self
            .docker_ok(&["inspect", "--format", "{{.State.Pid}}", &id])
            .parse()
            .expect("the container's pid");
        Container { id, pid }
    }

    /// Removes a container (stopping it first).
    pub fn remove(&self, c: &Container) {
        self.docker_ok(&["rm", "-f", &c.id]);
    }

    /// The directory of the engine's parent cgroup in each hierarchy.
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let Ok(h) = nsproxyfs::cgroup::Hierarchies::of_host() else {
            return Vec::new();
        };
        h.iter()
            .map(|m| {
                m.mount_point
                    .join(self.cgroup_parent.trim_start_matches('/'))
            })
            .collect()
    }

    /// The engine's own directory (data and exec roots, sockets, logs).
    pub fn dir_path(&self) -> &Path {
        &self.scratch.0
    }

    /// The pids of every process in the engine's mount namespace.
    fn processes(&self) -> Vec<i32> {
        let Some(holder) = self.holder.as_ref() else {
            return Vec::new();
        };
        let Ok(ns) = std::fs::metadata(format!("/proc/{}/ns/mnt", holder.id())) else {
            return Vec::new();
        };
        in_mount_ns(ns.ino())
    }

    /// The engine's mount namespace, open: while this is held, the
    /// namespace's inode number is not given to another one.
    pub fn mount_ns(&self) -> Option<std::fs::File> {
        let holder = self.holder.as_ref()?;
        std::fs::File::open(format!("/proc/{}/ns/mnt", holder.id())).ok()
    }

    fn stop(&mut self) {
        if self.dockerd.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
        for child in [self.dockerd.take(), self.containerd.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            // SAFETY: kill takes integers; the pid is this engine's child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            wait_bounded(&mut child, Duration::from_secs(30));
        }
        // Shims, and anything else left in the engine's mount namespace.
        let holder = self.holder.as_ref().map(|h| h.id() as i32);
        for pid in self.processes() {
            if Some(pid) != holder {
                // SAFETY: kill takes integers; the process lives in the
                // mount namespace this engine made.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut h) = self.holder.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        for dir in self.cgroup_dirs() {
            super::cgroups::remove_tree(&dir);
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The pids whose mount namespace is `ino`.
pub fn in_mount_ns(ino: u64) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::metadata(format!("/proc/{p}/ns/mnt")).is_ok_and(|m| m.ino() == ino))
        .collect()
}

fn read_line(out: &mut ChildStdout) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

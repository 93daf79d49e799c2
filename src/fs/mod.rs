//! The FUSE adapter: the only code that knows fuser.
//!
//! Each trait method decodes its request, calls a helper that returns
//! `Result<_, Error>`, and turns the result into a reply. A refusal is logged
//! once, here, with its reason, and mapped to its errno by [`Error::errno`].
//!
//! Locking: `state` (tree and namespace handles) is a read-write lock held
//! only for in-memory work and the quick pin mounts that make a binding's
//! pin; never across process scans, namespace creation, path resolution,
//! ptrace or writing the record. `handles`, `pending` and `leaving` are
//! leaf locks, never held while taking another. The recorder's lock is
//! taken before `state`, never while holding it: it is held while the
//! record is written, and `state` only long enough to encode the tree.
//! The exporter's lock (`--netns-export`, see [`crate::export`]) is taken
//! the same way, after the record is written: `state` only to copy what to
//! export, never while mounting.
//!
//! Persistence: every change writes the record of the tree (see
//! [`crate::state`]) before it is answered, so an acknowledged change is
//! never missing from the record, and only then lets go of the namespaces
//! it unbound (see `NsProxyFs::commit`). Changes made while a record is
//! being written are written together by the next writer.

mod caller;
mod error;
pub mod input;
mod node;
mod pending;
pub mod refusals;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};

pub use caller::Caller;
pub use error::{Error, Result};
use input::Binding;
pub use node::Node;

use crate::discover::{Found, Sink};
use crate::ns::{self, Kind, Namespace};
use crate::procfs;
use crate::state::Recorder;
use crate::tree::record::{self, KeeperRef, Record, RecordedNs};
use crate::tree::view::{Seen, SetIndex, View};
use crate::tree::{CONTROL_NAMES, ContainerId, NsRef, Tree, TreeError};

/// Kernel caches must not keep one caller's answer for another, and the
/// tree changes under the kernel's feet (processes move, namespaces die):
/// no entry or attribute caching at all.
const TTL: Duration = Duration::ZERO;

/// The root's table of every namespace on the host (with discovery on).
const NAMESPACES: &str = ".namespaces";

/// How long a lookup's answer may be repeated to the getattr the same
/// thread sends right after it (see [`NsProxyFs::recent`]).
const RECENT: Duration = Duration::from_millis(1);

/// What the daemon needs to know at start.
#[derive(Debug)]
pub struct Options {
    /// Where namespace pins live (`STATE_DIR/pins`).
    pub pin_dir: Arc<ns::PinDir>,
    /// Where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// Writes the record of the tree on every change; `None` keeps nothing.
    pub recorder: Option<Recorder>,
    /// A record to restore at start.
    pub restore: Option<Record>,
    /// Show the namespace sets in use on the host under `.discovered`, and
    /// the `.namespaces` table (see [`crate::discover`]).
    pub discover: bool,
    /// Exports containers' own net namespaces (`--netns-export`).
    pub exporter: Option<Arc<crate::export::Exporter>>,
}

/// A process mover: moves the process `pid` (daemon pid namespace) into the
/// namespaces in `set` (indexed by [`Kind::index`]). Supplied by the daemon;
/// the filesystem only decides whether a move is allowed and into what.
pub trait Mover: Send + Sync + 'static {
    /// Moves `pid`, pinned by the pidfd `target` before it was judged;
    /// `writer_tid` is the thread that wrote the pid, which may belong to
    /// the process being moved; `tracer` are the writer's credentials, whose
    /// right to trace the process is asked again once it is stopped.
    fn move_process(
        &self,
        pid: i32,
        target: OwnedFd,
        writer_tid: u32,
        tracer: &crate::ns::creds::Credentials,
        set: &[Arc<Namespace>; 8],
        reply: &mut dyn FnMut(Result<()>),
    );

    /// Namespace `ino` lost its last binding: forget anything holding it.
    fn released(&self, ino: u64);

    /// Processes the mover runs for its own use, left out of `tasks`.
    fn helper_pids(&self) -> Vec<i32>;
}

struct State {
    tree: Tree,
    spaces: HashMap<u64, Arc<Namespace>>,
}

enum WriteTarget {
    Tasks(ContainerId),
    /// An existing kind file: every container binding this inode.
    Rebind(u64),
    /// A kind file made by create(): bound on first write, or fresh at flush.
    Create {
        container: ContainerId,
        kind: Kind,
        pending: u64,
    },
}

struct Handle {
    content: Vec<u8>,
    write: Option<WriteTarget>,
    /// A write was attempted (successful or not): flush must not bind fresh.
    written: bool,
    /// Flush already did its work for a created kind file.
    flushed: bool,
    /// The fresh namespace that flush bound (a shell's `echo X > file`
    /// closes a duplicate of the file before it writes): a write that then
    /// fails unbinds it again, so a refused write changes nothing.
    fresh: Option<u64>,
}

/// The nsproxyfs filesystem.
pub struct NsProxyFs {
    state: RwLock<State>,
    handles: Mutex<HashMap<u64, Handle>>,
    pending: Mutex<HashMap<u64, (ContainerId, Kind)>>,
    /// Kind files linked under a name that is not their kind's (`ln -f`
    /// links to a temporary name, then renames it over the target). They
    /// bind nothing until renamed onto their kind's name.
    staged: Mutex<HashMap<(ContainerId, String), u64>>,
    /// Namespaces no container binds any more whose keepers may still run
    /// (an init leaves only once its namespace is empty). The record lists
    /// them until their keepers are gone, so that a daemon restarted in
    /// between tells them to leave again. A leaf lock.
    leaving: Mutex<Vec<Arc<Namespace>>>,
    /// Containers by effective set, for telling which container a caller
    /// lives in; rebuilt when the tree changes. A leaf lock.
    index: Mutex<Arc<SetIndex>>,
    /// Per thread, the answer of its last lookup: (node, attributes, when).
    /// `stat` sends a lookup and then, nothing being cached, a getattr of
    /// the same node; the getattr that follows within [`RECENT`] is given
    /// the very attributes the lookup gave that thread, without reading
    /// its namespaces again. Nothing is shown that the thread was not
    /// just shown. A leaf lock.
    recent: Mutex<HashMap<u32, (u64, FileAttr, Instant)>>,
    /// The root container's effective set (its bindings never change).
    root_set: [u64; 8],
    /// Processes moved since discovery last looked (see
    /// [`Sink::take_moved`]); kept only with discovery on. A leaf lock.
    moved: Mutex<Vec<i32>>,
    /// Discovery is on (`--discover`).
    discovering: bool,
    next_fh: AtomicU64,
    next_pending: AtomicU64,
    pin_dir: Arc<ns::PinDir>,
    mountpoint: CString,
    /// The device of this filesystem's mount, learnt once it is mounted.
    own_dev: std::sync::OnceLock<(u32, u32)>,
    user_ns: u64,
    pid_ns: u64,
    started: SystemTime,
    mover: Box<dyn Mover>,
    /// The threads that run moves, off the FUSE workers.
    moves: pending::MoveThreads,
    /// The names `tasks` files are looked up under while writes to them
    /// are pending.
    tasks_names: pending::TasksNames,
    recorder: Option<Recorder>,
    exporter: Option<Arc<crate::export::Exporter>>,
}

impl std::fmt::Debug for NsProxyFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NsProxyFs")
            .field("pin_dir", &self.pin_dir.path())
            .finish_non_exhaustive()
    }
}

impl NsProxyFs {
    /// A filesystem whose root container binds the daemon's own namespaces.
    pub fn new(options: Options, mover: Box<dyn Mover>) -> Result<NsProxyFs> {
        let mut spaces = HashMap::new();
        let mut root = [0u64; 8];
        for kind in Kind::ALL {
            let mut ns = Namespace::own(kind)?;
            ns.pin(&options.pin_dir);
            root[kind.index()] = ns.ino();
            spaces.insert(ns.ino(), Arc::new(ns));
        }
        let mut tree = match (&options.restore, &options.recorder) {
            (Some(record), Some(recorder)) => {
                restore(record, root, &mut spaces, &options.pin_dir, recorder.boot())
            }
            _ => Tree::new(root),
        };
        if options.discover {
            tree.enable_discovery();
        }
        let keep = spaces
            .values()
            .filter_map(|ns| ns.pin_path().map(Path::to_path_buf))
            .collect();
        crate::state::sweep_pins(&options.pin_dir, &keep);
        let fs = NsProxyFs {
            index: Mutex::new(Arc::new(SetIndex::build(&tree))),
            recent: Mutex::new(HashMap::new()),
            moved: Mutex::new(Vec::new()),
            discovering: options.discover,
            root_set: root,
            state: RwLock::new(State { tree, spaces }),
            handles: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            leaving: Mutex::new(Vec::new()),
            staged: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            next_pending: AtomicU64::new(1),
            pin_dir: options.pin_dir,
            own_dev: std::sync::OnceLock::new(),
            mountpoint: CString::new(options.mountpoint.as_os_str().as_bytes())
                .map_err(|_| Error::Invalid("mount point contains NUL".into()))?,
            user_ns: root[Kind::User.index()],
            pid_ns: std::fs::metadata("/proc/self/ns/pid")
                .map(|m| m.ino())
                .unwrap_or(0),
            started: SystemTime::now(),
            mover,
            moves: pending::MoveThreads::default(),
            tasks_names: pending::TasksNames::default(),
            recorder: options.recorder,
            exporter: options.exporter,
        };
        if let Err(e) = fs.record() {
            log::error!("{e}: changes will be refused until it can be written");
        }
        fs.export();
        Ok(fs)
    }

    /// Brings the record of the tree up to date: returns once the record
    /// on disk holds every change made before the call. A writer that
    /// finds the record already current (another writer took its change
    /// along) returns at once.
    fn record(&self) -> Result<()> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        let mut written = recorder.lock();
        let (generation, text) = {
            let st = self.state.read();
            let generation = st.tree.generation();
            if *written == Some(generation) {
                return Ok(());
            }
            let keeper_ref = |ns: &Namespace| {
                let keeper = ns.keeper()?;
                Some(KeeperRef {
                    pid: keeper.pid(),
                    start: keeper.start_time(),
                })
            };
            let leaving: Vec<RecordedNs> = {
                let mut leaving = self.leaving.lock();
                leaving.retain(|ns| ns.keeper().is_some_and(|k| k.is_alive()));
                leaving
                    .iter()
                    .map(|ns| RecordedNs {
                        ns: NsRef {
                            kind: ns.kind(),
                            ino: ns.ino(),
                        },
                        keeper: keeper_ref(ns),
                    })
                    .collect()
            };
            let text = record::encode(
                &st.tree,
                recorder.boot(),
                |ino| keeper_ref(st.spaces.get(&ino)?),
                &leaving,
            );
            (generation, text)
        };
        recorder
            .write(text.as_bytes())
            .map_err(|source| Error::Sys {
                what: "write the record of the tree",
                source,
            })?;
        *written = Some(generation);
        Ok(())
    }

    fn attr(&self, node: Node, kind: FileType, perm: u16, nlink: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(node.id()),
            size: 0,
            blocks: 0,
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// The device (major, minor) of this filesystem's mount, from the
    /// daemon's mount table (the mount is up once requests arrive).
    fn own_dev(&self) -> Result<(u32, u32)> {
        if let Some(dev) = self.own_dev.get() {
            return Ok(*dev);
        }
        let dev = procfs::mount_device(self.mountpoint.as_bytes()).ok_or_else(|| Error::Sys {
            what: "find this filesystem's mount",
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })?;
        Ok(*self.own_dev.get_or_init(|| dev))
    }

    /// What `caller` sees of the tree (see [`crate::tree::view`]). Read
    /// afresh for every request that needs it: a process may change
    /// namespaces at any time, so no view is kept (only a lookup's own
    /// answer is repeated to the getattr right after it, see `recent`).
    fn view(&self, caller: &Caller) -> View {
        let set = if caller.tid == 0 {
            None
        } else {
            procfs::ns_set(caller.tid)
        };
        let Some(set) = set else {
            return View::NOTHING;
        };
        if set == self.root_set {
            return View::ALL;
        }
        let st = self.state.read();
        let index = self.index(&st.tree);
        View::of(&st.tree, &index, Some(&set))
    }

    /// The set index for `tree`, rebuilt if the tree changed since.
    fn index(&self, tree: &Tree) -> Arc<SetIndex> {
        let mut index = self.index.lock();
        if !index.is_current(tree) {
            *index = Arc::new(SetIndex::build(tree));
        }
        Arc::clone(&index)
    }

    /// Refuses, as if it did not exist, a container `view` does not show
    /// in full: changes, control files and moves happen only there.
    fn require_full(&self, view: &View, c: ContainerId) -> Result<()> {
        let st = self.state.read();
        if view.full(&st.tree, c) {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// Refuses a task (daemon pid namespace), pinned by `pidfd`, that does
    /// not live inside `view`: a confined caller acts only on processes of
    /// its own subtree. The pin is checked once the task's namespaces are
    /// read, so the answer was about this task.
    fn require_process_in(&self, view: &View, pid: i32, pidfd: BorrowedFd<'_>) -> Result<()> {
        if view.is_all() {
            return Ok(());
        }
        let gone = || Error::from(ns::NsError::NoSuchProcess(pid));
        let set = procfs::ns_set(pid as u32).ok_or_else(gone)?;
        still_alive(pidfd, pid)?;
        let st = self.state.read();
        let index = self.index(&st.tree);
        if view.holds_process(&st.tree, &index, &set) {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "process {pid} lives outside the caller's container"
            )))
        }
    }

    fn node_attr(&self, view: &View, node: Node) -> Result<FileAttr> {
        let st = self.state.read();
        let tree = &st.tree;
        let full = |c: ContainerId| {
            if view.full(tree, c) {
                Ok(())
            } else {
                Err(Error::NotFound)
            }
        };
        Ok(match node {
            Node::Dir(c) => {
                let n = match view.sees(tree, c) {
                    Seen::Hidden => return Err(Error::NotFound),
                    Seen::Full => tree.get(c).map_or(0, |c| c.children().len()),
                    Seen::Path => view.children(tree, c).len(),
                };
                self.attr(node, FileType::Directory, 0o755, 2 + n as u32)
            }
            Node::Tasks(c) | Node::Status(c) if Some(c) == tree.discovered_root() => {
                return Err(Error::NotFound);
            }
            Node::Tasks(c) => {
                full(c)?;
                self.attr(node, FileType::RegularFile, 0o644, 1)
            }
            Node::Status(c) => {
                full(c)?;
                self.attr(node, FileType::RegularFile, 0o444, 1)
            }
            Node::Kind(ino) => {
                let nlink = view.nlink(tree, ino);
                if nlink == 0 {
                    return Err(Error::NotFound);
                }
                let root_binds = st
                    .tree
                    .get(Tree::ROOT)
                    .is_some_and(|r| Kind::ALL.into_iter().any(|k| r.own(k) == Some(ino)));
                let perm = if root_binds { 0o444 } else { 0o644 };
                self.attr(node, FileType::RegularFile, perm, nlink)
            }
            Node::Pending(n) => {
                let c = self.pending.lock().get(&n).map(|p| p.0);
                full(c.ok_or(Error::NotFound)?)?;
                self.attr(node, FileType::RegularFile, 0o644, 1)
            }
            Node::Namespaces => {
                if !view.is_all() || tree.discovered_root().is_none() {
                    return Err(Error::NotFound);
                }
                self.attr(node, FileType::RegularFile, 0o444, 1)
            }
        })
    }

    fn dir(&self, ino: INodeNo) -> Result<ContainerId> {
        match Node::from_id(ino.0) {
            Node::Dir(c) => Ok(c),
            _ => Err(Error::NotDir),
        }
    }

    fn lookup_node(&self, view: &View, parent: INodeNo, name: &OsStr) -> Result<Node> {
        let c = self.dir(parent)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        let st = self.state.read();
        let container = st.tree.get(c).ok_or(Error::NotFound)?;
        match view.sees(&st.tree, c) {
            Seen::Full => {}
            Seen::Hidden => return Err(Error::NotFound),
            // Only the next step of the path to what the caller sees.
            Seen::Path => {
                let child = st.tree.child(c, name).ok_or(Error::NotFound)?;
                return match view.sees(&st.tree, child) {
                    Seen::Hidden => Err(Error::NotFound),
                    _ => Ok(Node::Dir(child)),
                };
            }
        }
        let plain = Some(c) == st.tree.discovered_root();
        Ok(match name {
            "tasks" | "status" if plain => return Err(Error::NotFound),
            "tasks" => Node::Tasks(c),
            "status" => Node::Status(c),
            NAMESPACES if c == Tree::ROOT && st.tree.discovered_root().is_some() => {
                Node::Namespaces
            }
            _ => match Kind::from_name(name) {
                Some(kind) => Node::Kind(container.own(kind).ok_or(Error::NotFound)?),
                None => match st.tree.child(c, name) {
                    Some(child) => Node::Dir(child),
                    None => Node::Kind(
                        *self
                            .staged
                            .lock()
                            .get(&(c, name.to_owned()))
                            .ok_or(Error::NotFound)?,
                    ),
                },
            },
        })
    }

    fn entries(&self, view: &View, c: ContainerId) -> Result<Vec<(Node, FileType, String)>> {
        let st = self.state.read();
        let container = st.tree.get(c).ok_or(Error::NotFound)?;
        let parent = container.parent().unwrap_or(Tree::ROOT);
        let mut out = vec![
            (Node::Dir(c), FileType::Directory, ".".to_owned()),
            (Node::Dir(parent), FileType::Directory, "..".to_owned()),
        ];
        match view.sees(&st.tree, c) {
            Seen::Full => {}
            Seen::Hidden => return Err(Error::NotFound),
            Seen::Path => {
                for (name, child) in view.children(&st.tree, c) {
                    out.push((Node::Dir(child), FileType::Directory, name.to_owned()));
                }
                return Ok(out);
            }
        }
        // The discovered subtree's top is a plain directory: its set is
        // the root's, which the root's own files already show.
        if Some(c) != st.tree.discovered_root() {
            out.extend([
                (Node::Tasks(c), FileType::RegularFile, "tasks".to_owned()),
                (Node::Status(c), FileType::RegularFile, "status".to_owned()),
            ]);
        }
        if c == Tree::ROOT && st.tree.discovered_root().is_some() {
            out.push((
                Node::Namespaces,
                FileType::RegularFile,
                NAMESPACES.to_owned(),
            ));
        }
        for kind in Kind::ALL {
            if let Some(ino) = container.own(kind) {
                out.push((
                    Node::Kind(ino),
                    FileType::RegularFile,
                    kind.name().to_owned(),
                ));
            }
        }
        for (name, &child) in container.children() {
            out.push((Node::Dir(child), FileType::Directory, name.clone()));
        }
        let mut staged: Vec<(String, u64)> = self
            .staged
            .lock()
            .iter()
            .filter(|((sc, _), _)| *sc == c)
            .map(|((_, name), &ino)| (name.clone(), ino))
            .collect();
        staged.sort();
        for (name, ino) in staged {
            out.push((Node::Kind(ino), FileType::RegularFile, name));
        }
        Ok(out)
    }

    fn status_text(&self, c: ContainerId, reader: &Caller) -> Result<Vec<u8>> {
        let st = self.state.read();
        let set = st.tree.effective_set(c).ok_or(Error::NotFound)?;
        let mut out = String::new();
        for kind in Kind::ALL {
            let e = set[kind.index()];
            let from = if e.from == c {
                "own".to_owned()
            } else {
                st.tree.path(e.from)
            };
            let ns = st.spaces.get(&e.ino);
            let pin = match ns {
                Some(ns) => match (ns.pin_path(), ns.keeper()) {
                    (Some(p), _) => p.display().to_string(),
                    (None, Some(keeper)) => self
                        .proc_path(keeper.pid(), reader)
                        .map(|p| format!("{p}/ns/{}", ns.kind().proc_entry()))
                        .unwrap_or_else(|| self.fd_path(ns, reader)),
                    (None, None) => self.fd_path(ns, reader),
                },
                None => "-".to_owned(),
            };
            out.push_str(&format!("{kind}\t{kind}:[{}]\t{from}\t{pin}\n", e.ino));
        }
        Ok(out.into_bytes())
    }

    /// `/proc/PID/fd/N` of the daemon's descriptor for `ns`, with PID as the
    /// reader sees the daemon; `-` if the reader cannot see it.
    fn fd_path(&self, ns: &Namespace, reader: &Caller) -> String {
        match self.proc_path(std::process::id() as i32, reader) {
            Some(proc) => format!("{proc}/fd/{}", ns.raw_fd()),
            None => "-".to_owned(),
        }
    }

    /// The daemon's own helper processes: the mover's (holders, injectors)
    /// and the init processes of fresh pid namespaces. They are neither
    /// listed in `tasks` nor moved.
    fn helpers(&self, st: &State) -> Vec<i32> {
        let mut helpers = self.mover.helper_pids();
        helpers.extend(
            st.spaces
                .values()
                .filter_map(|ns| ns.keeper().map(|k| k.pid())),
        );
        helpers
    }

    /// `/proc/PID` of process `pid` (daemon pid namespace) as `reader`
    /// sees it; `None` if the reader cannot see it.
    fn proc_path(&self, pid: i32, reader: &Caller) -> Option<String> {
        let pidns = reader.pid_ns().ok()?;
        let seen = ns::sys::pid_in_pidns(pidns.as_fd(), pid).ok()?;
        (seen > 0).then(|| format!("/proc/{seen}"))
    }

    fn tasks_text(&self, c: ContainerId, reader: &Caller) -> Result<Vec<u8>> {
        let (set, differing, helpers) = {
            let st = self.state.read();
            let helpers = self.helpers(&st);
            let eff = st.tree.effective_set(c).ok_or(Error::NotFound)?;
            let root = st.tree.effective_set(Tree::ROOT).ok_or(Error::NotFound)?;
            let set: [u64; 8] = std::array::from_fn(|i| eff[i].ino);
            let differing: Vec<Kind> = Kind::ALL
                .into_iter()
                .filter(|k| set[k.index()] != root[k.index()].ino)
                .collect();
            (set, differing, helpers)
        };
        let membership = crate::kview::membership();
        let mut members = membership
            .members(&set, &differing)
            .map_err(|source| Error::Sys {
                what: membership.what(),
                source,
            })?;
        members.retain(|p| !helpers.contains(p));
        let reader_ns = File::from(reader.pid_ns()?);
        let same_ns = reader_ns.metadata().map(|m| m.ino()).ok() == Some(self.pid_ns);
        let mut pids: Vec<i32> = if same_ns {
            members
        } else {
            members
                .into_iter()
                .filter_map(|p| ns::sys::pid_in_pidns(reader_ns.as_fd(), p).ok())
                .filter(|&p| p > 0)
                .collect()
        };
        pids.sort_unstable();
        Ok(pids
            .into_iter()
            .map(|p| format!("{p}\n"))
            .collect::<String>()
            .into_bytes())
    }

    /// Binds `ns` in `container` (replacing its binding of that kind), or,
    /// when `old` is set, in every container binding `old` that `view`
    /// shows in full: a write to a kind file changes it under all of its
    /// names the writer can see, and never outside its view.
    fn install(
        &self,
        mut ns: Namespace,
        view: &View,
        container: ContainerId,
        old: Option<u64>,
    ) -> Result<()> {
        let r = NsRef {
            kind: ns.kind(),
            ino: ns.ino(),
        };
        // A mount namespace cannot be pinned: a keeper process holds it,
        // started here, outside the lock (it forks).
        if r.kind == Kind::Mnt && !self.state.read().spaces.contains_key(&r.ino) {
            ns.hold_mount()?;
        }
        let (released, bound) = {
            let mut st = self.state.write();
            let released = match old {
                Some(old) if view.is_all() => st.tree.rebind_everywhere(old, r)?,
                Some(old) => {
                    let mut names = view.binders(&st.tree, old);
                    if names.is_empty() {
                        return Err(Error::NotFound);
                    }
                    names.retain(|&c| !st.tree.is_discovered(c));
                    if names.is_empty() {
                        return Err(TreeError::Discovered.into());
                    }
                    let mut released = None;
                    for c in names {
                        released = st.tree.bind(c, r)?.or(released);
                    }
                    released
                }
                None => st.tree.bind(container, r)?,
            };
            let bound = st.spaces.entry(r.ino).or_insert_with(|| {
                let mut ns = ns;
                ns.pin(&self.pin_dir);
                Arc::new(ns)
            });
            let bound = Arc::clone(bound);
            (released.and_then(|d| st.spaces.remove(&d.ino)), bound)
        };
        self.commit(released.into_iter().collect())?;
        // Recorded: its keeper may now outlive the daemon, and the next
        // daemon will find it.
        if let Some(keeper) = bound.keeper() {
            keeper.outlive_daemon();
        }
        Ok(())
    }

    /// The handles of the namespaces that lost their last binding in the
    /// tree, taken out of `spaces` (see [`NsProxyFs::commit`]); not those
    /// bound again since, by a change that came in between.
    fn unbound(&self, released: Vec<NsRef>) -> Vec<Arc<Namespace>> {
        let mut st = self.state.write();
        let State { tree, spaces } = &mut *st;
        released
            .iter()
            .filter(|r| tree.binders(r.ino) == 0)
            .filter_map(|r| spaces.remove(&r.ino))
            .collect()
    }

    /// Finishes a change: writes the record, then lets go of the namespaces
    /// the change unbound. In this order, so that a daemon killed in
    /// between finds either the old record with every pin and keeper of it
    /// in place, or the new one: an unbound namespace's pin is then swept
    /// at start, and its keeper, still listed in the record as leaving
    /// (see `leaving`), is told to leave by the next daemon.
    fn commit(&self, unbound: Vec<Arc<Namespace>>) -> Result<()> {
        self.make_durable();
        self.leaving
            .lock()
            .extend(unbound.iter().filter(|ns| ns.keeper().is_some()).cloned());
        let recorded = self.record();
        self.export();
        self.let_go(unbound);
        recorded
    }

    /// Pins (or, for a mount namespace, gives a keeper to) every namespace
    /// a user's container binds that has neither: one a discovered
    /// container brought in, now linked or adopted by the user. Called
    /// before the record is written, so the record names only namespaces a
    /// restarted daemon can reopen. A namespace that cannot be pinned is
    /// logged and tried again at the next change.
    fn make_durable(&self) {
        // Without discovery every bound namespace was pinned when bound.
        if !self.discovering {
            return;
        }
        let loose: Vec<Arc<Namespace>> = {
            let st = self.state.read();
            st.spaces
                .values()
                .filter(|ns| {
                    ns.pin_path().is_none()
                        && ns.keeper().is_none()
                        && !self.root_set.contains(&ns.ino())
                        && st.tree.user_binders(ns.ino()) > 0
                })
                .cloned()
                .collect()
        };
        for ns in loose {
            let copy = ns
                .fd()
                .try_clone_to_owned()
                .map_err(|source| ns::NsError::Sys {
                    what: "dup",
                    source,
                })
                .and_then(|fd| Namespace::from_fd(fd, ns.kind(), "a discovered namespace"));
            let mut copy = match copy {
                Ok(copy) => copy,
                Err(e) => {
                    log::warn!("{} cannot be kept: {e}", ns.describe());
                    continue;
                }
            };
            if ns.kind() == Kind::Mnt {
                if let Err(e) = copy.hold_mount() {
                    log::warn!("{} cannot be kept: {e}", ns.describe());
                    continue;
                }
            } else {
                copy.pin(&self.pin_dir);
                if copy.pin_path().is_none() {
                    continue;
                }
            }
            let mut st = self.state.write();
            match st.spaces.get_mut(&ns.ino()) {
                Some(slot) if Arc::ptr_eq(slot, &ns) => *slot = Arc::new(copy),
                _ => copy.release(),
            }
        }
    }

    /// The `.namespaces` table (see [`crate::discover::lsns`]).
    fn namespaces_text(&self) -> Vec<u8> {
        let bound: Vec<Arc<Namespace>> = self.state.read().spaces.values().cloned().collect();
        let fds: Vec<(Kind, u64, std::os::fd::BorrowedFd<'_>)> = bound
            .iter()
            .map(|ns| (ns.kind(), ns.ino(), ns.fd()))
            .collect();
        crate::discover::lsns::table(&fds).into_bytes()
    }

    /// Makes the discovered subtree show `found`, the sets in use on the
    /// host, less those a user's container is already the effective set
    /// of: sets gone or taken over leave, new ones come. A set whose
    /// process left before its namespaces could be opened waits for the
    /// next round.
    fn publish_discovered(&self, found: &[Found]) {
        let (current, taken) = {
            let st = self.state.read();
            let Some(d) = st.tree.discovered_root() else {
                return;
            };
            let index = self.index(&st.tree);
            let current: HashMap<[u64; 8], ContainerId> = st
                .tree
                .get(d)
                .map(|c| c.children().values().copied().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| {
                    let set = st.tree.effective_set(id)?;
                    Some((std::array::from_fn(|i| set[i].ino), id))
                })
                .collect();
            let taken: Vec<[u64; 8]> = found
                .iter()
                .filter(|f| {
                    index
                        .matching(&f.set)
                        .iter()
                        .any(|&c| !st.tree.is_discovered(c))
                })
                .map(|f| f.set)
                .collect();
            (current, taken)
        };
        let wanted: Vec<&Found> = found.iter().filter(|f| !taken.contains(&f.set)).collect();
        for (set, &id) in &current {
            if wanted.iter().any(|f| &f.set == set) {
                continue;
            }
            // Adopted meanwhile, if it is no longer there to forget.
            let (path, forgotten) = {
                let mut st = self.state.write();
                let path = st.tree.path(id);
                (path, st.tree.forget(id))
            };
            if let Ok(released) = forgotten {
                self.let_go(self.unbound(released));
                log::info!("{path} is gone: no process uses that namespace set any more");
            }
        }
        for f in wanted {
            if current.contains_key(&f.set) {
                continue;
            }
            // Every kind that differs from the root's, still the one the
            // set names, or nothing (the process left or moved meanwhile).
            let opened: Option<Vec<Namespace>> = Kind::ALL
                .into_iter()
                .filter(|k| f.set[k.index()] != self.root_set[k.index()])
                .map(|kind| {
                    Namespace::of_task(f.pid, kind)
                        .ok()
                        .filter(|ns| ns.ino() == f.set[kind.index()])
                })
                .collect();
            let Some(opened) = opened else {
                continue;
            };
            let refs: Vec<NsRef> = opened
                .iter()
                .map(|ns| NsRef {
                    kind: ns.kind(),
                    ino: ns.ino(),
                })
                .collect();
            let mut st = self.state.write();
            match st.tree.discover(&f.name, &refs) {
                Ok(id) if Node::fits(id) => {
                    for ns in opened {
                        st.spaces.entry(ns.ino()).or_insert_with(|| Arc::new(ns));
                    }
                    log::info!("discovered {} (process {})", st.tree.path(id), f.pid);
                }
                Ok(id) => {
                    let _ = st.tree.forget(id);
                }
                Err(e) => log::info!("set of process {} not shown as {}: {e}", f.pid, f.name),
            }
        }
    }

    /// Brings the `--netns-export` directory in line with the tree (see
    /// [`crate::export`]): the tree is read under its lock, the mounts are
    /// made after. Failures are logged there and never fail the change.
    fn export(&self) {
        if let Some(exporter) = &self.exporter {
            exporter.sync(|| {
                let st = self.state.read();
                // Discovered containers are not the user's to export.
                crate::export::Snapshot::of(&st.tree, &st.spaces, |c| st.tree.is_discovered(c))
            });
        }
    }

    /// Lets go of namespaces no container binds any more: their pins go,
    /// their keepers leave, the mover drops what it holds in them.
    fn let_go(&self, dropped: Vec<Arc<Namespace>>) {
        for ns in dropped {
            ns.release();
            self.mover.released(ns.ino());
            log::info!("{} released: no container binds it", ns.describe());
        }
    }

    fn namespace_from_write(
        &self,
        caller: &Caller,
        view: &View,
        kind: Kind,
        data: &[u8],
    ) -> Result<Namespace> {
        Ok(match input::parse_binding(data)? {
            // Pinned, then judged: a confined caller binds namespaces of its
            // own subtree only, and every caller needs what opening
            // /proc/PID/ns/KIND would need of it.
            Binding::Pid(pid) => {
                let pidns = caller.pid_ns()?;
                let local = ns::sys::pid_from_pidns(pidns.as_fd(), pid)
                    .map_err(|_| ns::NsError::NoSuchProcess(pid))?;
                let pidfd = pin(local, ns::sys::PIDFD_THREAD)?;
                self.require_process_in(view, local, pidfd.as_fd())?;
                let creds = caller.credentials()?;
                // The check runs on a thread of the daemon, which the kernel
                // lets read its own thread group whatever its credentials.
                // The daemon is root's, undumpable, with every capability:
                // the kernel lets exactly those holding CAP_SYS_PTRACE in.
                const CAP_SYS_PTRACE: u32 = 19;
                if std::path::Path::new(&format!("/proc/self/task/{local}")).exists()
                    && !creds.has(CAP_SYS_PTRACE)
                {
                    return Err(Error::Denied(format!(
                        "process {pid} is the daemon, which the caller may not read"
                    )));
                }
                Namespace::of_pidfd_as(&creds, pidfd.as_fd(), pid, kind)?
            }
            Binding::Path(path) => ns::of_path(&caller.opener(self.own_dev()?)?, path, kind)?,
        })
    }

    fn do_mkdir(&self, caller: &Caller, parent: INodeNo, name: &OsStr) -> Result<FileAttr> {
        let view = self.view(caller);
        let parent = self.dir(parent)?;
        self.require_full(&view, parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name
            .to_str()
            .ok_or_else(|| Error::Invalid("name is not UTF-8".into()))?;
        let id = self.state.write().tree.mkdir(parent, name)?;
        if !Node::fits(id) {
            let released = self.state.write().tree.rmdir(parent, name).map(|r| r.1)?;
            self.commit(self.unbound(released))?;
            return Err(Error::Unsupported("container ids exhausted".into()));
        }
        self.commit(Vec::new())?;
        self.node_attr(&view, Node::Dir(id))
    }

    fn do_rmdir(&self, caller: &Caller, parent: INodeNo, name: &OsStr) -> Result<()> {
        let parent = self.dir(parent)?;
        self.require_full(&self.view(caller), parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        if CONTROL_NAMES.contains(&name) || Kind::from_name(name).is_some() {
            return Err(Error::NotDir);
        }
        let (id, released) = self.state.write().tree.rmdir(parent, name)?;
        self.staged.lock().retain(|(c, _), _| *c != id);
        self.commit(self.unbound(released))
    }

    fn do_unlink(&self, caller: &Caller, parent: INodeNo, name: &OsStr) -> Result<()> {
        let parent = self.dir(parent)?;
        self.require_full(&self.view(caller), parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        if CONTROL_NAMES.contains(&name) {
            return Err(Error::Denied(format!("{name} is part of every container")));
        }
        let Some(kind) = Kind::from_name(name) else {
            if self
                .staged
                .lock()
                .remove(&(parent, name.to_owned()))
                .is_some()
            {
                return Ok(());
            }
            return Err(match self.state.read().tree.child(parent, name) {
                Some(_) => Error::IsDir,
                None => Error::NotFound,
            });
        };
        let released = self.state.write().tree.unbind(parent, kind)?;
        self.commit(self.unbound(released.into_iter().collect()))
    }

    fn do_link(
        &self,
        caller: &Caller,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
    ) -> Result<FileAttr> {
        let view = self.view(caller);
        let dst = self.dir(newparent)?;
        self.require_full(&view, dst)?;
        let node = Node::from_id(ino.0);
        // The source must be in the caller's view too.
        self.node_attr(&view, node)?;
        caller.require_admin(self.user_ns)?;
        let Node::Kind(ns) = node else {
            return Err(Error::Denied("only kind files can be linked".into()));
        };
        let name = newname.to_str().unwrap_or("");
        {
            let mut st = self.state.write();
            let kind = st.tree.bound_kind(ns).ok_or(Error::NotFound)?;
            match Kind::from_name(name) {
                Some(k) if k == kind => st.tree.link(dst, NsRef { kind, ino: ns })?,
                Some(k) => {
                    return Err(Error::Invalid(format!(
                        "a {kind} namespace cannot be linked under the name {k}"
                    )));
                }
                None => {
                    crate::tree::check_name(name)?;
                    st.tree.get(dst).ok_or(Error::NotFound)?;
                    if st.tree.is_discovered(dst) {
                        return Err(TreeError::Discovered.into());
                    }
                    if st.tree.child(dst, name).is_some() {
                        return Err(crate::tree::TreeError::Exists.into());
                    }
                    let mut staged = self.staged.lock();
                    if staged.contains_key(&(dst, name.to_owned())) {
                        return Err(crate::tree::TreeError::Exists.into());
                    }
                    staged.insert((dst, name.to_owned()), ns);
                }
            }
        }
        self.commit(Vec::new())?;
        self.node_attr(&view, Node::Kind(ns))
    }

    fn do_rename(
        &self,
        caller: &Caller,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<()> {
        let p = self.dir(parent)?;
        let np = self.dir(newparent)?;
        let view = self.view(caller);
        self.require_full(&view, p)?;
        self.require_full(&view, np)?;
        caller.require_admin(self.user_ns)?;
        let (Some(old), Some(new)) = (name.to_str(), newname.to_str()) else {
            return Err(Error::Invalid("name is not UTF-8".into()));
        };
        if np != p {
            if self.state.read().tree.discovered_root() == Some(p) {
                return self.adopt(p, old, np, new);
            }
            return Err(Error::Invalid(
                "containers are renamed within their parent only".into(),
            ));
        }
        let staged = self.staged.lock().get(&(p, old.to_owned())).copied();
        if let Some(ino) = staged {
            return self.rename_staged(p, old, ino, new);
        }
        if CONTROL_NAMES.contains(&old) || Kind::from_name(old).is_some() {
            return Err(Error::Invalid(format!(
                "{old} is a file of the container, not a container"
            )));
        }
        if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            return Err(Error::Invalid(
                "exchange and whiteout renames are not supported".into(),
            ));
        }
        let released = {
            let mut st = self.state.write();
            if flags.contains(RenameFlags::RENAME_NOREPLACE) && st.tree.child(p, new).is_some() {
                return Err(crate::tree::TreeError::Exists.into());
            }
            st.tree.rename(p, old, new)?
        };
        self.commit(self.unbound(released))
    }

    /// Adopts the discovered container `old` as `new` under `np`, one of
    /// the user's: `mv /container_ns/.discovered/NAME /container_ns/web`.
    fn adopt(&self, p: ContainerId, old: &str, np: ContainerId, new: &str) -> Result<()> {
        let (id, released) = {
            let mut st = self.state.write();
            let id = st.tree.child(p, old).ok_or(Error::NotFound)?;
            let (id, released) = st.tree.adopt(id, np, new)?;
            if !Node::fits(id) {
                let released = st.tree.rmdir(np, new).map(|r| r.1)?;
                drop(st);
                self.commit(self.unbound(released))?;
                return Err(Error::Unsupported("container ids exhausted".into()));
            }
            (id, released)
        };
        self.commit(self.unbound(released))?;
        log::info!("adopted {old} as {}", self.state.read().tree.path(id));
        Ok(())
    }

    /// Renames a staged link onto its kind's name: the container binds it,
    /// replacing what it bound (the second half of `ln -f`).
    fn rename_staged(&self, c: ContainerId, old: &str, ino: u64, new: &str) -> Result<()> {
        let released = {
            let mut st = self.state.write();
            let kind = st.tree.bound_kind(ino).ok_or(Error::NotFound)?;
            if Kind::from_name(new) != Some(kind) {
                return Err(Error::Invalid(format!(
                    "a {kind} namespace can only be renamed to {kind}, not {new:?}"
                )));
            }
            let released = st.tree.bind(c, NsRef { kind, ino })?;
            self.staged.lock().remove(&(c, old.to_owned()));
            released.and_then(|d| st.spaces.remove(&d.ino))
        };
        self.commit(released.into_iter().collect())
    }

    fn do_mknod(
        &self,
        caller: &Caller,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
    ) -> Result<FileAttr> {
        let view = self.view(caller);
        let c = self.dir(parent)?;
        self.require_full(&view, c)?;
        caller.require_admin(self.user_ns)?;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Invalid("only regular kind files can be made".into()));
        }
        let kind = self.creatable_kind(c, name)?;
        let ns = ns::fresh(kind, &self.mountpoint)?;
        let ino = ns.ino();
        self.install(ns, &view, c, None)?;
        self.node_attr(&view, Node::Kind(ino))
    }

    fn creatable_kind(&self, c: ContainerId, name: &OsStr) -> Result<Kind> {
        let name = name.to_str().unwrap_or("");
        let kind = Kind::from_name(name).ok_or_else(|| {
            Error::Invalid(format!(
                "{name:?} is not a namespace kind: only kind files can be created in a container"
            ))
        })?;
        let st = self.state.read();
        let container = st.tree.get(c).ok_or(Error::NotFound)?;
        if c == Tree::ROOT {
            return Err(crate::tree::TreeError::Root.into());
        }
        if st.tree.is_discovered(c) {
            return Err(TreeError::Discovered.into());
        }
        if container.own(kind).is_some() {
            return Err(crate::tree::TreeError::Exists.into());
        }
        Ok(kind)
    }

    fn do_create(&self, caller: &Caller, parent: INodeNo, name: &OsStr) -> Result<(FileAttr, u64)> {
        let c = self.dir(parent)?;
        self.require_full(&self.view(caller), c)?;
        caller.require_admin(self.user_ns)?;
        let kind = self.creatable_kind(c, name)?;
        let pending = self.next_pending.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(pending, (c, kind));
        let fh = self.add_handle(Handle {
            content: Vec::new(),
            write: Some(WriteTarget::Create {
                container: c,
                kind,
                pending,
            }),
            written: false,
            flushed: false,
            fresh: None,
        });
        Ok((
            self.attr(Node::Pending(pending), FileType::RegularFile, 0o644, 1),
            fh,
        ))
    }

    /// Refuses unless `caller` may change `node` (write it, truncate it, set
    /// its times): CAP_SYS_ADMIN in the daemon's user namespace, a node
    /// `view` shows in full, and a node that is not read-only for everyone
    /// (`status`, `.namespaces`, the root's bindings, discovered sets).
    fn require_changeable(&self, caller: &Caller, view: &View, node: Node) -> Result<()> {
        caller.require_admin(self.user_ns)?;
        match node {
            Node::Dir(c) => {
                let st = self.state.read();
                if !view.full(&st.tree, c) {
                    return Err(Error::Denied(format!(
                        "{} is outside the caller's container",
                        st.tree.path(c)
                    )));
                }
                if st.tree.is_discovered(c) {
                    return Err(TreeError::Discovered.into());
                }
                Ok(())
            }
            Node::Namespaces => Err(Error::Denied(format!("{NAMESPACES} is read-only"))),
            Node::Status(_) => Err(Error::Denied("status is read-only".into())),
            Node::Tasks(_) | Node::Pending(_) => Ok(()),
            Node::Kind(ino) => {
                let st = self.state.read();
                let kind = st.tree.bound_kind(ino).ok_or(Error::NotFound)?;
                if st.tree.containers_binding(ino).contains(&Tree::ROOT) {
                    return Err(Error::Denied(format!(
                        "{kind}:[{ino}] is bound by the root container, whose bindings are read-only"
                    )));
                }
                if st.tree.user_binders(ino) == 0 {
                    return Err(TreeError::Discovered.into());
                }
                Ok(())
            }
        }
    }

    fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    fn do_open(&self, caller: &Caller, ino: INodeNo, flags: OpenFlags) -> Result<u64> {
        let node = Node::from_id(ino.0);
        let acc = flags.0 & libc::O_ACCMODE;
        let reading = acc == libc::O_RDONLY || acc == libc::O_RDWR;
        let writing = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let view = self.view(caller);
        self.node_attr(&view, node)?;
        if let Node::Dir(_) = node {
            return Err(Error::IsDir);
        }
        // O_TRUNC asks for a change even on a read-only open.
        if writing || flags.0 & libc::O_TRUNC != 0 {
            self.require_changeable(caller, &view, node)?;
        }
        let (content, write) = match node {
            Node::Dir(_) => return Err(Error::IsDir),
            Node::Pending(_) => return Err(Error::NotFound),
            Node::Namespaces => (self.namespaces_text(), None),
            Node::Status(c) => (self.status_text(c, caller)?, None),
            Node::Tasks(c) => {
                let content = if reading {
                    self.tasks_text(c, caller)?
                } else {
                    Vec::new()
                };
                (content, writing.then_some(WriteTarget::Tasks(c)))
            }
            Node::Kind(ino) => {
                let st = self.state.read();
                let kind = st.tree.bound_kind(ino).ok_or(Error::NotFound)?;
                let content = format!("{kind}:[{ino}]\n").into_bytes();
                (content, writing.then_some(WriteTarget::Rebind(ino)))
            }
        };
        Ok(self.add_handle(Handle {
            content,
            write,
            written: false,
            flushed: false,
            fresh: None,
        }))
    }

    fn do_write(
        self: &Arc<Self>,
        caller: &Caller,
        ino: u64,
        fh: u64,
        data: &[u8],
        reply: ReplyWrite,
    ) {
        let target = {
            let mut handles = self.handles.lock();
            let Some(h) = handles.get_mut(&fh) else {
                return reply.error(Errno::EBADF);
            };
            h.written = true;
            match &h.write {
                Some(WriteTarget::Tasks(c)) => Some(WriteTarget::Tasks(*c)),
                Some(WriteTarget::Rebind(ino)) => Some(WriteTarget::Rebind(*ino)),
                Some(WriteTarget::Create {
                    container,
                    kind,
                    pending,
                }) => Some(WriteTarget::Create {
                    container: *container,
                    kind: *kind,
                    pending: *pending,
                }),
                None => None,
            }
        };
        let len = data.len() as u32;
        if let Err(e) = caller.require_admin(self.user_ns) {
            return reply.error(refuse("write", caller, &e));
        }
        let result = match target {
            None => Err(Error::Invalid("file not open for writing".into())),
            Some(WriteTarget::Tasks(c)) => {
                let generation = Node::alias_generation(ino);
                return self.write_tasks(caller, (c, generation), data, reply, len);
            }
            Some(target) => {
                // A path is walked by a child that may wait up to its
                // deadline on a filesystem that does not answer: off the
                // FUSE workers, as moves are.
                if matches!(input::parse_binding(data), Ok(Binding::Path(_))) {
                    let Some(slot) = self.moves.reserve() else {
                        let e = Error::Refused {
                            errno: libc::EAGAIN,
                            reason: format!(
                                "{} moves and path bindings are in flight already",
                                pending::MAX_IN_FLIGHT
                            ),
                        };
                        return reply.error(refuse("write", caller, &e));
                    };
                    let (this, caller, data) = (Arc::clone(self), *caller, data.to_vec());
                    slot.run(Box::new(move || {
                        let result = this.write_binding(&caller, fh, target, &data);
                        answer_write(&caller, result, reply, len);
                    }));
                    return;
                }
                self.write_binding(caller, fh, target, data)
            }
        };
        answer_write(caller, result, reply, len);
    }

    /// A write to a kind file: binds what `data` names.
    fn write_binding(
        &self,
        caller: &Caller,
        fh: u64,
        target: WriteTarget,
        data: &[u8],
    ) -> Result<()> {
        match target {
            WriteTarget::Tasks(_) => Err(Error::Invalid("not a kind file".into())),
            WriteTarget::Rebind(ino) => self.write_kind(caller, Some(ino), None, data),
            WriteTarget::Create {
                container, kind, ..
            } => {
                let result = self.write_kind(caller, None, Some((container, kind)), data);
                // Undone for a value that could not be bound, never on the
                // word of a writer refused for who it is (a descriptor can
                // be passed to anyone).
                if let Err(e) = &result
                    && !matches!(e, Error::Denied(_) | Error::NotFound)
                {
                    self.undo_fresh(fh, container, kind);
                }
                result
            }
        }
    }

    /// Unbinds the fresh namespace that flushing handle `fh` bound in
    /// `container`, if it is still bound there (a failed write must leave
    /// nothing behind).
    fn undo_fresh(&self, fh: u64, container: ContainerId, kind: Kind) {
        let Some(ino) = self
            .handles
            .lock()
            .get_mut(&fh)
            .and_then(|h| h.fresh.take())
        else {
            return;
        };
        let released = {
            let mut st = self.state.write();
            if st.tree.get(container).and_then(|c| c.own(kind)) != Some(ino) {
                return;
            }
            st.tree.unbind(container, kind)
        };
        match released
            .map_err(Error::from)
            .and_then(|r| self.commit(self.unbound(r.into_iter().collect())))
        {
            Ok(()) => log::info!(
                "the fresh {kind} namespace bound at a close is unbound again: the write failed"
            ),
            Err(e) => {
                log::warn!("could not unbind the fresh {kind} namespace after a failed write: {e}")
            }
        }
    }

    fn write_kind(
        &self,
        caller: &Caller,
        rebind: Option<u64>,
        create: Option<(ContainerId, Kind)>,
        data: &[u8],
    ) -> Result<()> {
        let view = self.view(caller);
        if let Some((c, _)) = create {
            self.require_full(&view, c)?;
        }
        let (container, kind) = match (rebind, create) {
            (Some(ino), _) => (
                Tree::ROOT,
                self.state
                    .read()
                    .tree
                    .bound_kind(ino)
                    .ok_or(Error::NotFound)?,
            ),
            (None, Some(ck)) => ck,
            (None, None) => return Err(Error::Invalid("file not open for writing".into())),
        };
        let ns = self.namespace_from_write(caller, &view, kind, data)?;
        self.install(ns, &view, container, rebind)
    }

    fn write_tasks(
        self: &Arc<Self>,
        caller: &Caller,
        (c, generation): (ContainerId, u32),
        data: &[u8],
        reply: ReplyWrite,
        len: u32,
    ) {
        let pid = match input::parse_pid(data) {
            Ok(pid) => pid,
            Err(e) => {
                return reply.error(refuse("write tasks", caller, &e.into()));
            }
        };
        let resolved = caller.pid_ns().and_then(|pidns| {
            // A thread id names its whole process, as in cgroup.procs.
            ns::sys::tgid_from_pidns(pidns.as_fd(), pid).map_err(|e| match e.raw_os_error() {
                Some(libc::ESRCH) => ns::NsError::NoSuchProcess(pid).into(),
                _ => Error::Sys {
                    what: "translate the pid",
                    source: e,
                },
            })
        });
        // Pinned before anything about it is judged: a pid reused between
        // the checks and the move can never be the process moved.
        let pinned = resolved.and_then(|local| Ok((local, pin(local, 0)?)));
        let set = pinned.and_then(|(local, pidfd)| {
            let st = self.state.read();
            if self.helpers(&st).contains(&local) {
                return Err(Error::Denied(format!(
                    "process {local} is one of the daemon's own helpers"
                )));
            }
            let eff = st.tree.effective_set(c).ok_or(Error::NotFound)?;
            let mut set = Vec::with_capacity(8);
            for e in eff {
                set.push(Arc::clone(st.spaces.get(&e.ino).ok_or(Error::NotFound)?));
            }
            let set: [Arc<Namespace>; 8] = set
                .try_into()
                .map_err(|_| Error::Invalid("incomplete namespace set".into()))?;
            Ok((local, pidfd, set))
        });
        // A confined caller moves processes of its subtree, within it; every
        // caller needs the kernel's leave to trace the process.
        let set = set.and_then(|(local, pidfd, set)| {
            let view = self.view(caller);
            self.require_full(&view, c)?;
            self.require_process_in(&view, local, pidfd.as_fd())?;
            let creds = caller.credentials()?;
            caller.require_ptrace(&creds, local, pidfd.as_fd())?;
            Ok((local, pidfd, set, creds))
        });
        let (local, pidfd, set, creds) = match set {
            Ok(v) => v,
            Err(e) => {
                return reply.error(refuse("write tasks", caller, &e));
            }
        };
        // The move runs on a thread of its own: it may wait seconds for its
        // target to stop, and the FUSE workers must go on answering.
        let Some(slot) = self.moves.reserve() else {
            let e = Error::Refused {
                errno: libc::EAGAIN,
                reason: format!("{} moves are in flight already", pending::MAX_IN_FLIGHT),
            };
            return reply.error(refuse("write tasks", caller, &e));
        };
        // Until it is answered, the kernel holds this name of `tasks`
        // locked: new lookups get another.
        self.tasks_names.begin(c, generation);
        let this = Arc::clone(self);
        let caller = *caller;
        slot.run(Box::new(move || {
            this.finish_move(&caller, c, local, pidfd, &creds, &set, reply, len);
            this.tasks_names.end(c, generation);
        }));
    }

    /// Moves `local`, pinned by `pidfd`, into `set` (the effective set of
    /// container `c`) and answers the write that asked for it.
    #[allow(clippy::too_many_arguments)]
    fn finish_move(
        &self,
        caller: &Caller,
        c: ContainerId,
        local: i32,
        pidfd: OwnedFd,
        creds: &crate::ns::creds::Credentials,
        set: &[Arc<Namespace>; 8],
        reply: ReplyWrite,
        len: u32,
    ) {
        // The mover may answer before it is done (a process moving itself);
        // a failure after that still gets logged here, and reaches the
        // writer as its write's return value.
        let mut reply = Some(reply);
        let mut moved = false;
        let mut answer = |r: Result<()>| {
            moved = r.is_ok();
            let errno = r.as_ref().err().map(|e| refuse("write tasks", caller, e));
            if let Some(reply) = reply.take() {
                match errno {
                    None => reply.written(len),
                    Some(errno) => reply.error(errno),
                }
            }
        };
        self.mover
            .move_process(local, pidfd, caller.tid, creds, set, &mut answer);
        if moved && log::log_enabled!(log::Level::Info) {
            log::info!(
                "process {local} moved into {} (written by pid {})",
                self.state.read().tree.path(c),
                caller.tid
            );
        }
        if self.discovering {
            self.moved.lock().push(local);
        }
        // A namespace released while the move ran (rmdir, rm) may have been
        // released before the mover cached a holder sitting in it.
        let gone: Vec<u64> = {
            let st = self.state.read();
            set.iter()
                .map(|ns| ns.ino())
                .filter(|ino| !st.spaces.contains_key(ino))
                .collect()
        };
        for ino in gone {
            self.mover.released(ino);
        }
        if let Some(reply) = reply {
            log::error!("the mover did not answer a write to tasks; failing it");
            reply.error(Errno::EIO);
        }
    }

    fn do_flush(&self, fh: u64) -> Result<()> {
        let create = {
            let mut handles = self.handles.lock();
            let Some(h) = handles.get_mut(&fh) else {
                return Ok(());
            };
            match h.write {
                Some(WriteTarget::Create {
                    container, kind, ..
                }) if !h.written && !h.flushed => {
                    h.flushed = true;
                    Some((container, kind))
                }
                _ => None,
            }
        };
        let Some((container, kind)) = create else {
            return Ok(());
        };
        // The creator's rights and view were checked when it created the
        // file; nothing about the caller is read here. A flush may come
        // from a process in the middle of execve() closing its
        // close-on-exec descriptors, and the kernel does not answer reads
        // of such a process's /proc/PID/ns until the exec is done, which
        // waits for this very flush.
        let ns = ns::fresh(kind, &self.mountpoint)?;
        let ino = ns.ino();
        log::info!(
            "fresh {} bound in {}",
            ns.describe(),
            self.state.read().tree.path(container)
        );
        self.install(ns, &View::ALL, container, None)?;
        if let Some(h) = self.handles.lock().get_mut(&fh) {
            h.fresh = Some(ino);
        }
        Ok(())
    }

    fn do_release(&self, fh: u64) {
        let handle = self.handles.lock().remove(&fh);
        if let Some(Handle {
            write: Some(WriteTarget::Create { pending, .. }),
            ..
        }) = handle
        {
            self.pending.lock().remove(&pending);
        }
    }
}

/// Rebuilds the tree of `record` at start: reopens its namespaces (from
/// pins, or from keepers) into `spaces`, which holds the root's, and
/// rebuilds the containers. A binding whose namespace cannot be reopened
/// is dropped with one log line saying why; namespaces reopened but bound
/// by nothing in the end are let go.
fn restore(
    record: &Record,
    root: [u64; 8],
    spaces: &mut HashMap<u64, Arc<Namespace>>,
    pin_dir: &Arc<ns::PinDir>,
    boot: &str,
) -> Tree {
    let reopened = crate::state::reopen(record, pin_dir, boot, |ino| spaces.contains_key(&ino));
    for (ino, ns) in reopened.spaces {
        spaces.insert(ino, Arc::new(ns));
    }
    let restored = record::restore(root, record, |r| {
        spaces.get(&r.ino).is_some_and(|ns| ns.kind() == r.kind)
    });
    for (path, r) in &restored.dropped {
        let why = reopened
            .lost
            .get(&r.ino)
            .map_or("it is bound as another kind", String::as_str);
        log::warn!(
            "restore: {path} no longer binds {}:[{}]: {why}",
            r.kind,
            r.ino
        );
    }
    let tree = restored.tree;
    spaces.retain(|&ino, ns| {
        let bound = tree.binders(ino) > 0;
        if !bound {
            ns.release();
        }
        bound
    });
    let bindings: u32 = tree
        .ids()
        .filter(|&id| id != Tree::ROOT)
        .filter_map(|id| tree.get(id))
        .map(|c| Kind::ALL.iter().filter(|&&k| c.own(k).is_some()).count() as u32)
        .sum();
    log::info!(
        "restored {} containers and {bindings} bindings ({} dropped)",
        tree.len() - 1,
        restored.dropped.len()
    );
    tree
}

/// Refuses if the task pinned by `pidfd` has exited: whatever was read
/// about pid `pid` since the pidfd was opened may belong to a newer
/// process that reused the number.
/// The filesystem as the FUSE session holds it: shared with the discovery
/// thread.
#[derive(Debug, Clone)]
pub struct Mounted(pub Arc<NsProxyFs>);

impl std::ops::Deref for Mounted {
    type Target = NsProxyFs;

    fn deref(&self) -> &NsProxyFs {
        &self.0
    }
}

impl Sink for NsProxyFs {
    fn root_set(&self) -> [u64; 8] {
        self.root_set
    }

    fn helper_pids(&self) -> Vec<i32> {
        self.helpers(&self.state.read())
    }

    fn publish(&self, found: &[Found]) {
        self.publish_discovered(found);
    }

    fn take_moved(&self) -> Vec<i32> {
        std::mem::take(&mut *self.moved.lock())
    }
}

/// Refuses with ESRCH once the process pinned by `pidfd` has exited: what
/// was read about `pid` since the pin may be about a reused pid.
fn still_alive(pidfd: BorrowedFd<'_>, pid: i32) -> Result<()> {
    if ns::sys::pidfd_alive(pidfd) {
        Ok(())
    } else {
        Err(ns::NsError::NoSuchProcess(pid).into())
    }
}

/// Pins `pid` (daemon pid namespace) with a pidfd, before anything about it
/// is judged.
fn pin(pid: i32, flags: libc::c_uint) -> Result<OwnedFd> {
    ns::sys::pidfd_open(pid, flags).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH | libc::EINVAL) => ns::NsError::NoSuchProcess(pid).into(),
        _ => Error::Sys {
            what: "pidfd_open",
            source: e,
        },
    })
}

/// How many refusals reach the log, per caller (see [`refusals`]).
static REFUSALS: std::sync::LazyLock<refusals::Refusals> =
    std::sync::LazyLock::new(refusals::Refusals::default);

/// Answers a write: its length, or the errno of its refusal (logged).
fn answer_write(caller: &Caller, result: Result<()>, reply: ReplyWrite, len: u32) {
    match result {
        Ok(()) => reply.written(len),
        Err(e) => reply.error(refuse("write", caller, &e)),
    }
}

/// Logs a refusal once, with its reason, unless its caller has had too
/// many logged lately (the first of each kind is always logged), and
/// returns its errno.
fn refuse(op: &'static str, caller: &Caller, e: &Error) -> Errno {
    let errno = e.errno();
    let verdict = REFUSALS.judge(caller.uid, op, errno, Instant::now());
    let held = |uid: u32, n: u64| {
        log::warn!("{n} more refusals of requests by uid {uid} were not logged (too many)");
    };
    if let Some((uid, n)) = verdict.forgotten {
        held(uid, n);
    }
    if verdict.log {
        if verdict.held_back > 0 {
            held(caller.uid, verdict.held_back);
        }
        let name = std::io::Error::from_raw_os_error(errno);
        log::warn!(
            "{op} by pid {} uid {} refused ({name}): {e}",
            caller.tid,
            caller.uid
        );
    }
    Errno::from_i32(errno)
}

fn quiet(e: &Error) -> Errno {
    Errno::from_i32(e.errno())
}

impl fuser::Filesystem for Mounted {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // `echo PID > tasks` opens with O_TRUNC. With this the truncation
        // rides on the open instead of costing a setattr round trip of its
        // own; no file here has content to truncate.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            log::debug!("the kernel lacks {missing:?}");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let caller = Caller::of(req);
        let view = self.view(&caller);
        match self
            .lookup_node(&view, parent, name)
            .and_then(|n| Ok((n, self.node_attr(&view, n)?)))
        {
            Ok((node, attr)) => {
                // While a write to this `tasks` is pending, another name of
                // it (see `Node::tasks_alias`); its attributes stay the
                // file's own.
                let mut entry = attr;
                if let Node::Tasks(c) = node {
                    entry.ino = INodeNo(Node::tasks_alias(c, self.tasks_names.current(c)));
                }
                if caller.tid != 0 {
                    let mut recent = self.recent.lock();
                    if recent.len() >= 1024 {
                        recent.retain(|_, (_, _, at)| at.elapsed() < RECENT);
                    }
                    recent.insert(caller.tid, (entry.ino.0, attr, Instant::now()));
                }
                reply.entry(&TTL, &entry, Generation(0))
            }
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let caller = Caller::of(req);
        let repeat = self.recent.lock().remove(&caller.tid);
        if let Some((node, attr, at)) = repeat
            && node == ino.0
            && at.elapsed() < RECENT
        {
            return reply.attr(&TTL, &attr);
        }
        let view = self.view(&caller);
        match self.node_attr(&view, Node::from_id(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Owners and modes are fixed. Truncation to 0 (`echo >` without
        // atomic O_TRUNC) and time changes (`touch` of an existing file)
        // change nothing, but only callers who may change the node get that
        // answer; the others get EPERM, as for any change.
        let caller = Caller::of(req);
        let node = Node::from_id(ino.0);
        let view = self.view(&caller);
        let result = self.node_attr(&view, node).and_then(|attr| {
            if mode.is_some() || uid.is_some() || gid.is_some() {
                return Err(Error::Denied("owners and modes are fixed".into()));
            }
            self.require_changeable(&caller, &view, node)?;
            if size.is_some_and(|s| s != 0) {
                return Err(Error::Invalid("only truncation to 0 is accepted".into()));
            }
            Ok(attr)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(refuse("setattr", &caller, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let caller = Caller::of(req);
        match self.do_mknod(&caller, parent, name, mode) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(refuse("mknod", &caller, &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = Caller::of(req);
        match self.do_mkdir(&caller, parent, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(refuse("mkdir", &caller, &e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let caller = Caller::of(req);
        match self.do_unlink(&caller, parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(refuse("unlink", &caller, &e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let caller = Caller::of(req);
        match self.do_rmdir(&caller, parent, name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(refuse("rmdir", &caller, &e)),
        }
    }

    fn symlink(
        &self,
        req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        let e = Error::Denied("symbolic links cannot bind namespaces: use ln without -s".into());
        reply.error(refuse("symlink", &Caller::of(req), &e));
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let caller = Caller::of(req);
        match self.do_rename(&caller, parent, name, newparent, newname, flags) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(refuse("rename", &caller, &e)),
        }
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let caller = Caller::of(req);
        match self.do_link(&caller, ino, newparent, newname) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(refuse("link", &caller, &e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = Caller::of(req);
        match self.do_open(&caller, ino, flags) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_DIRECT_IO),
            Err(e @ Error::NotFound) => reply.error(quiet(&e)),
            Err(e) => reply.error(refuse("open", &caller, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let handles = self.handles.lock();
        let Some(h) = handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let start = (offset as usize).min(h.content.len());
        let end = start.saturating_add(size as usize).min(h.content.len());
        reply.data(&h.content[start..end]);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        NsProxyFs::do_write(&self.0, &Caller::of(req), ino.0, fh.0, data, reply);
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let caller = Caller::of(req);
        match self.do_flush(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(refuse("create", &caller, &e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.do_release(fh.0);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let view = self.view(&Caller::of(req));
        match self
            .dir(ino)
            .and_then(|c| self.node_attr(&view, Node::Dir(c)))
        {
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let view = self.view(&Caller::of(req));
        let entries = match self.dir(ino).and_then(|c| self.entries(&view, c)) {
            Ok(entries) => entries,
            Err(e) => return reply.error(quiet(&e)),
        };
        for (i, (node, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(node.id()), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Shells probe files with terminal ioctls: none apply here.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes here. ENOSYS (answered here rather than by
        // fuser's default, which logs a warning) makes the kernel stop
        // asking: otherwise every `echo > FILE` costs a round trip for
        // security.capability, which truncation checks before clearing.
        // Callers see EOPNOTSUPP.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // What was possible is decided by each operation itself. ENOSYS
        // (answered here rather than by fuser's default, which logs a
        // warning for a shell's `cd`) makes the kernel stop asking and
        // answer access(2) from the file modes.
        reply.error(Errno::ENOSYS)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = Caller::of(req);
        match self.do_create(&caller, parent, name) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(fh),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(refuse("create", &caller, &e)),
        }
    }
}

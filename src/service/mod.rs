//! The tree service: what each request to the filesystem means, with no
//! knowledge of the protocol that carries it (the FUSE adapter, `fs`,
//! sits above it).
//!
//! [`Service`] answers in its own terms: node ids (see [`Node`]),
//! [`Attr`]ibutes, directory entries, open-file handles, and [`Error`]s
//! that carry their errno. It checks every caller ([`Caller`]) itself, so
//! it can be driven without a mount, from a test, as it is by the adapter.
//!
//! Modules by job: this one holds the service and the changes of the tree
//! (mkdir, rmdir, unlink, link, rename, mknod); `lookup` what a caller
//! sees (views, nodes, attributes, entries); `handles` open files, reads,
//! writes to kind files; [`moves`] writes to `tasks` and the threads moves
//! run on; `contents` the text of `status`, `tasks` and `.namespaces`;
//! `persist` the record of the tree and restoring it; `publish`
//! discovered sets and `--netns-export`; [`caller`] who asks and what they
//! may do; [`input`] parsing written text; [`refusals`] the log allowance
//! for refusals; [`node`] node ids; [`error`] errors and their errno.
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
//! it unbound (see `Service::commit`). Changes made while a record is
//! being written are written together by the next writer.

pub mod caller;
mod contents;
pub mod error;
mod handles;
pub mod input;
mod lookup;
pub mod moves;
pub mod node;
mod persist;
mod publish;
pub mod refusals;

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

pub use caller::Caller;
pub use contents::{StatusError, StatusLine, parse_status};
pub use error::{Denied, Error, Invalid, Result};
pub use handles::WriteReply;
pub use node::Node;

use handles::Handle;

use crate::mover::Mover;
use crate::ns::{self, Kind, Namespace};
use crate::procfs;
use crate::state::Recorder;
use crate::tree::record::Record;
use crate::tree::view::{SetIndex, View};
use crate::tree::{CGROUPS, CONTROL_NAMES, ContainerId, NsRef, Tree, TreeError};

/// The root's table of every namespace on the host (with discovery on).
const NAMESPACES: &str = ".namespaces";

/// What the service needs to know at start.
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

/// What a node is, for `stat` and directory listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A container's directory.
    Dir,
    /// Every other node: kind files, `tasks`, `status`, `.namespaces`.
    Regular,
}

/// A node's attributes. Sizes are 0 (contents are made at open), owners
/// root's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// The node id (see [`Node::id`]): a kind file's is its namespace's
    /// inode number.
    pub id: u64,
    /// Directory or regular file.
    pub kind: FileKind,
    /// Permission bits.
    pub perm: u16,
    /// Link count: for a kind file, the containers binding it that the
    /// caller sees; for a directory, 2 and its subdirectories.
    pub nlink: u32,
    /// Every time of the node: when the service started.
    pub time: SystemTime,
}

/// How a rename may treat its target (`renameat2` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rename {
    /// A plain rename: an existing target is replaced.
    Replace,
    /// `RENAME_NOREPLACE`: an existing target refuses it.
    NoReplace,
    /// `RENAME_EXCHANGE` or `RENAME_WHITEOUT`, which nothing here supports.
    Other,
}

/// What a `setattr` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetAttr {
    /// A new mode, owner or group is asked for.
    pub owner_or_mode: bool,
    /// A new size.
    pub size: Option<u64>,
}

struct State {
    tree: Tree,
    spaces: HashMap<u64, Arc<Namespace>>,
}

/// The tree service: the containers, their namespaces, open files and
/// moves, and every operation on them.
pub struct Service {
    state: RwLock<State>,
    handles: Mutex<HashMap<u64, Handle>>,
    pending: Mutex<HashMap<u64, (ContainerId, Kind)>>,
    /// Kind files linked under a name that is not their kind's (`ln -f`
    /// links to a temporary name, then renames it over the target). They
    /// bind nothing until renamed onto their kind's name.
    staged: Mutex<HashMap<(ContainerId, String), u64>>,
    /// `.cgroups` bindings emptied by a truncating close before the write
    /// that fills them (see `handles::Emptied`). A leaf lock.
    emptied: Mutex<handles::Emptied>,
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
    /// the same node; the getattr that follows within `RECENT` is given
    /// the very attributes the lookup gave that thread, without reading
    /// its namespaces again. Nothing is shown that the thread was not
    /// just shown. A leaf lock.
    recent: Mutex<HashMap<u32, (u64, Attr, Instant)>>,
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
    moves: moves::MoveThreads,
    /// The names `tasks` files are looked up under while writes to them
    /// are pending.
    tasks_names: moves::TasksNames,
    recorder: Option<Recorder>,
    exporter: Option<Arc<crate::export::Exporter>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("pin_dir", &self.pin_dir.path())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service whose root container binds the daemon's own namespaces.
    pub fn new(options: Options, mover: Box<dyn Mover>) -> Result<Service> {
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
                persist::restore(record, root, &mut spaces, &options.pin_dir, recorder.boot())
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
        let fs = Service {
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
            emptied: Mutex::new(handles::Emptied::default()),
            next_fh: AtomicU64::new(1),
            next_pending: AtomicU64::new(1),
            pin_dir: options.pin_dir,
            own_dev: std::sync::OnceLock::new(),
            mountpoint: CString::new(options.mountpoint.as_os_str().as_bytes())
                .map_err(|_| Error::Invalid(Invalid::Rule("mount point contains NUL")))?,
            user_ns: root[Kind::User.index()],
            pid_ns: std::fs::metadata("/proc/self/ns/pid")
                .map(|m| m.ino())
                .unwrap_or(0),
            started: SystemTime::now(),
            mover,
            moves: moves::MoveThreads::default(),
            tasks_names: moves::TasksNames::default(),
            recorder: options.recorder,
            exporter: options.exporter,
        };
        if let Err(e) = fs.record() {
            log::error!("{e}: changes will be refused until it can be written");
        }
        fs.export();
        Ok(fs)
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

    /// `mkdir`: a new container `name` under the directory `parent`.
    pub fn mkdir(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<Attr> {
        let view = self.view(caller);
        let parent = self.dir(parent)?;
        self.require_full(&view, parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name
            .to_str()
            .ok_or(Error::Invalid(Invalid::Rule("name is not UTF-8")))?;
        let id = self.state.write().tree.mkdir(parent, name)?;
        if !Node::fits(id) {
            let released = self.state.write().tree.rmdir(parent, name).map(|r| r.1)?;
            self.commit(self.unbound(released))?;
            return Err(Error::Unsupported("container ids exhausted"));
        }
        self.commit(Vec::new())?;
        self.node_attr(&view, Node::Dir(id))
    }

    /// `rmdir`: removes the empty container `name` of `parent`.
    pub fn rmdir(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<()> {
        let parent = self.dir(parent)?;
        self.require_full(&self.view(caller), parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        if CONTROL_NAMES.contains(&name) || Kind::from_name(name).is_some() || name == CGROUPS {
            return Err(Error::NotDir);
        }
        let (id, released) = self.state.write().tree.rmdir(parent, name)?;
        self.staged.lock().retain(|(c, _), _| *c != id);
        self.commit(self.unbound(released))
    }

    /// `rm`: unbinds kind file `name` of `parent`, or removes a staged
    /// link.
    pub fn unlink(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<()> {
        let parent = self.dir(parent)?;
        self.require_full(&self.view(caller), parent)?;
        caller.require_admin(self.user_ns)?;
        let name = name.to_str().ok_or(Error::NotFound)?;
        if let Some(&control) = CONTROL_NAMES.iter().find(|&&n| n == name) {
            return Err(Error::Denied(Denied::ControlFile(control)));
        }
        if name == CGROUPS {
            self.state.write().tree.unbind_cgroups(parent)?;
            return self.commit(Vec::new());
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

    /// `ln`: binds the namespace of kind file `ino` in `newparent` too
    /// (under its kind's name), or stages it under another name.
    pub fn link(&self, caller: &Caller, ino: u64, newparent: u64, newname: &OsStr) -> Result<Attr> {
        let view = self.view(caller);
        let dst = self.dir(newparent)?;
        self.require_full(&view, dst)?;
        let node = Node::from_id(ino);
        // The source must be in the caller's view too.
        self.node_attr(&view, node)?;
        caller.require_admin(self.user_ns)?;
        let name = newname.to_str().unwrap_or("");
        if let Node::Cgroups(b) = node {
            return self.link_cgroups(&view, b, dst, name);
        }
        let Node::Kind(ns) = node else {
            return Err(Error::Denied(Denied::Rule(
                "only kind files and .cgroups can be linked",
            )));
        };
        if name == CGROUPS {
            return Err(Error::Invalid(Invalid::Rule(
                "a kind file cannot be linked under the name .cgroups",
            )));
        }
        {
            let mut st = self.state.write();
            let kind = st.tree.bound_kind(ns).ok_or(Error::NotFound)?;
            match Kind::from_name(name) {
                Some(k) if k == kind => st.tree.link(dst, NsRef { kind, ino: ns })?,
                Some(k) => {
                    return Err(Error::Invalid(Invalid::LinkName { kind, name: k }));
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

    /// `ln SRC/.cgroups DST/.cgroups`: `dst` holds binding `b` too; under
    /// another name, the link is staged (the first half of `ln -f`).
    fn link_cgroups(&self, view: &View, b: u64, dst: ContainerId, name: &str) -> Result<Attr> {
        if name == CGROUPS {
            self.state.write().tree.link_cgroups(dst, b)?;
        } else if Kind::from_name(name).is_some() {
            return Err(Error::Invalid(Invalid::Rule(
                ".cgroups cannot be linked under a kind's name",
            )));
        } else {
            crate::tree::check_name(name)?;
            let st = self.state.read();
            st.tree.get(dst).ok_or(Error::NotFound)?;
            if st.tree.is_discovered(dst) {
                return Err(TreeError::Discovered.into());
            }
            if st.tree.child(dst, name).is_some() {
                return Err(TreeError::Exists.into());
            }
            let mut staged = self.staged.lock();
            if staged.contains_key(&(dst, name.to_owned())) {
                return Err(TreeError::Exists.into());
            }
            staged.insert((dst, name.to_owned()), Node::Cgroups(b).id());
        }
        self.commit(Vec::new())?;
        self.node_attr(view, Node::Cgroups(b))
    }

    /// `mv`: renames a container within its parent, adopts a discovered
    /// one, or renames a staged link onto its kind's name.
    pub fn rename(
        &self,
        caller: &Caller,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        mode: Rename,
    ) -> Result<()> {
        let p = self.dir(parent)?;
        let np = self.dir(newparent)?;
        let view = self.view(caller);
        self.require_full(&view, p)?;
        self.require_full(&view, np)?;
        caller.require_admin(self.user_ns)?;
        let (Some(old), Some(new)) = (name.to_str(), newname.to_str()) else {
            return Err(Error::Invalid(Invalid::Rule("name is not UTF-8")));
        };
        if np != p {
            if self.state.read().tree.discovered_root() == Some(p) {
                return self.adopt(p, old, np, new);
            }
            return Err(Error::Invalid(Invalid::Rule(
                "containers are renamed within their parent only",
            )));
        }
        let staged = self.staged.lock().get(&(p, old.to_owned())).copied();
        if let Some(ino) = staged {
            return self.rename_staged(p, old, ino, new);
        }
        if CONTROL_NAMES.contains(&old) || Kind::from_name(old).is_some() || old == CGROUPS {
            return Err(Error::Invalid(Invalid::NotAContainer(old.to_owned())));
        }
        if mode == Rename::Other {
            return Err(Error::Invalid(Invalid::Rule(
                "exchange and whiteout renames are not supported",
            )));
        }
        let released = {
            let mut st = self.state.write();
            if mode == Rename::NoReplace && st.tree.child(p, new).is_some() {
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
                return Err(Error::Unsupported("container ids exhausted"));
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
        if let Node::Cgroups(b) = Node::from_id(ino) {
            if new != CGROUPS {
                return Err(Error::Invalid(Invalid::Rule(
                    "a staged .cgroups link can only be renamed to .cgroups",
                )));
            }
            self.state.write().tree.bind_cgroups(c, b)?;
            self.staged.lock().remove(&(c, old.to_owned()));
            return self.commit(Vec::new());
        }
        let released = {
            let mut st = self.state.write();
            let kind = st.tree.bound_kind(ino).ok_or(Error::NotFound)?;
            if Kind::from_name(new) != Some(kind) {
                return Err(Error::Invalid(Invalid::RenameKind {
                    kind,
                    to: new.to_owned(),
                }));
            }
            let released = st.tree.bind(c, NsRef { kind, ino })?;
            self.staged.lock().remove(&(c, old.to_owned()));
            released.and_then(|d| st.spaces.remove(&d.ino))
        };
        self.commit(released.into_iter().collect())
    }

    /// `mknod`: a kind file bound to a fresh namespace of its kind.
    pub fn mknod(&self, caller: &Caller, parent: u64, name: &OsStr, mode: u32) -> Result<Attr> {
        let view = self.view(caller);
        let c = self.dir(parent)?;
        self.require_full(&view, c)?;
        caller.require_admin(self.user_ns)?;
        if mode & libc::S_IFMT != libc::S_IFREG {
            return Err(Error::Invalid(Invalid::Rule(
                "only regular kind files can be made",
            )));
        }
        let kind = self.creatable_kind(c, name)?;
        let ns = ns::fresh(kind, &self.mountpoint)?;
        let ino = ns.ino();
        self.install(ns, &view, c, None)?;
        self.node_attr(&view, Node::Kind(ino))
    }

    fn creatable_kind(&self, c: ContainerId, name: &OsStr) -> Result<Kind> {
        let name = name.to_str().unwrap_or("");
        let kind = Kind::from_name(name)
            .ok_or_else(|| Error::Invalid(Invalid::NotAKind(name.to_owned())))?;
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
}

/// Pins `pid` (daemon pid namespace) with a pidfd, before anything about it
/// is judged.
fn pin(pid: i32, flags: libc::c_uint) -> Result<OwnedFd> {
    crate::sys::pidfd::open(pid, flags).map_err(|e| match e.raw_os_error() {
        Some(libc::ESRCH | libc::EINVAL) => ns::NsError::NoSuchProcess(pid).into(),
        _ => Error::Sys {
            what: "pidfd_open",
            source: e,
        },
    })
}

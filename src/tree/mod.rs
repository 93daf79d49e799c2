//! The container tree: names, nesting and bindings, as plain data.
//!
//! A [`Tree`] knows which namespace (by inode number) each container binds
//! for each kind, and derives effective sets by walking up to the root. It
//! makes no system calls: the filesystem layer owns the namespace handles and
//! learns from the return values here when a namespace lost its last binder.
//!
//! Invariants, checked by [`Tree::check`] in tests:
//! * the root exists, has no parent, binds every kind, and is never removed;
//! * every other container is listed exactly once in its parent's children,
//!   under its own name;
//! * `binders[ino]` is the number of (container, kind) bindings of `ino`, and
//!   an inode is bound under one kind only;
//! * every cgroup binding (see [`cgroups`]) is held by as many containers
//!   as its count says, and one held by none is gone.

use std::collections::{BTreeMap, HashMap};

use thiserror::Error;

use crate::cgroup::Membership;
use crate::ns::Kind;

/// Deepest nesting allowed: the root is depth 0, `/a/b` is depth 2.
pub const MAX_DEPTH: usize = 32;

/// Longest container name, in bytes (the usual `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Names inside a container that are files, never containers.
pub const CONTROL_NAMES: [&str; 2] = ["tasks", "status"];

/// The name of a container's cgroup binding (see [`cgroups`]). It starts
/// with a dot, so no container can take it.
pub const CGROUPS: &str = ".cgroups";

/// The reserved container, child of the root, under which discovered
/// namespace sets appear (see [`Tree::enable_discovery`]). Its name starts
/// with a dot, so no user container can take it.
pub const DISCOVERED: &str = ".discovered";

/// Identity of a container. Never reused within one daemon's life, so a stale
/// kernel reference can never reach a newer container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(pub u64);

/// A namespace as the tree sees it: its kind and nsfs inode number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NsRef {
    /// Which kind of namespace.
    pub kind: Kind,
    /// Its inode number on nsfs, as `net:[N]` prints it.
    pub ino: u64,
}

/// Why the tree refused a change. Nothing changes when one is returned.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TreeError {
    /// No such container, or the container does not bind that kind.
    #[error("no such entry")]
    NotFound,
    /// The name is taken, or the kind is bound already.
    #[error("already exists")]
    Exists,
    /// The container still has child containers.
    #[error("container has child containers")]
    NotEmpty,
    /// The name is reserved, empty, too long or contains '/' or NUL.
    #[error("invalid container name: {0}")]
    InvalidName(&'static str),
    /// The root's bindings and the root itself cannot change.
    #[error("the root container's bindings are the daemon's own and read-only")]
    Root,
    /// Nesting would pass [`MAX_DEPTH`].
    #[error("nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    /// Discovered containers mirror what runs on the host: they change
    /// only with it, and leave only by being adopted.
    #[error("discovered containers are read-only (adopt one with mv)")]
    Discovered,
    /// A namespace inode was offered under a kind it is not.
    #[error("namespace {ino} is a {bound} namespace, not {wanted}")]
    KindMismatch {
        /// The inode offered.
        ino: u64,
        /// The kind it is bound as elsewhere.
        bound: Kind,
        /// The kind it was offered as.
        wanted: Kind,
    },
}

/// An invariant of the tree that does not hold ([`Tree::check`]).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum Broken {
    /// There is no root.
    #[error("no root")]
    NoRoot,
    /// The root has a parent or an unbound kind.
    #[error("root has a parent or an unbound kind")]
    Root,
    /// A container's parent does not exist.
    #[error("dangling parent of {0:?}")]
    DanglingParent(ContainerId),
    /// A container is missing from its parent's children.
    #[error("{0:?} missing from its parent's children")]
    NotAChild(ContainerId),
    /// The discovered container is not `/.discovered`.
    #[error("the discovered container is misplaced")]
    DiscoveredMisplaced,
    /// A container's name is not a valid name.
    #[error("{0:?}: {1}")]
    Name(ContainerId, TreeError),
    /// A container other than the root has no parent.
    #[error("{0:?} has no parent")]
    NoParent(ContainerId),
    /// A child of a container does not exist.
    #[error("dangling child of {0:?}")]
    DanglingChild(ContainerId),
    /// A child disagrees with its parent on its name or parent (the parent,
    /// the child's name there).
    #[error("child {1} of {0:?} disagrees")]
    Child(ContainerId, String),
    /// An inode is bound as two kinds.
    #[error("inode {0} bound as two kinds")]
    TwoKinds(u64),
    /// A container nests deeper than [`MAX_DEPTH`].
    #[error("{0:?} too deep")]
    TooDeep(ContainerId),
    /// The kept binder counts are not the counted ones.
    #[error("binder counts {kept:?} != {counted:?}")]
    Binders {
        /// As kept.
        kept: HashMap<u64, (Kind, u32)>,
        /// As counted.
        counted: HashMap<u64, (Kind, u32)>,
    },
    /// The kept binder counts of discovered containers are not the counted
    /// ones.
    #[error("discovered binder counts {kept:?} != {counted:?}")]
    DiscoveredBinders {
        /// As kept.
        kept: HashMap<u64, u32>,
        /// As counted.
        counted: HashMap<u64, u32>,
    },
    /// The discovered subtree binds namespaces or nests.
    #[error("the discovered subtree binds or nests")]
    DiscoveredSubtree,
    /// The kept holder counts of cgroup bindings are not the counted ones.
    #[error("cgroup binding counts {kept:?} != {counted:?}")]
    CgroupBinders {
        /// As kept.
        kept: HashMap<u64, u32>,
        /// As counted.
        counted: HashMap<u64, u32>,
    },
}

/// One node of the tree.
#[derive(Debug, Clone)]
pub struct Container {
    name: String,
    parent: Option<ContainerId>,
    children: BTreeMap<String, ContainerId>,
    own: [Option<u64>; 8],
    /// The cgroup binding this container holds itself (its `.cgroups`).
    cgroups: Option<u64>,
}

impl Container {
    /// The container's name in its parent (empty for the root).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The parent, `None` for the root.
    pub fn parent(&self) -> Option<ContainerId> {
        self.parent
    }

    /// Child containers by name, in name order.
    pub fn children(&self) -> &BTreeMap<String, ContainerId> {
        &self.children
    }

    /// The namespace this container binds itself for `kind`, if any.
    pub fn own(&self, kind: Kind) -> Option<u64> {
        self.own[kind.index()]
    }

    /// The cgroup binding this container holds itself, if any.
    pub fn own_cgroups(&self) -> Option<u64> {
        self.cgroups
    }
}

/// Where one kind of an effective set comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Effective {
    /// The namespace inode in force.
    pub ino: u64,
    /// The container that binds it (the one asked about, or an ancestor).
    pub from: ContainerId,
}

/// The container tree.
#[derive(Debug, Clone)]
pub struct Tree {
    containers: HashMap<ContainerId, Container>,
    binders: HashMap<u64, (Kind, u32)>,
    /// Of `binders`, the bindings made by discovered containers.
    discovered_binders: HashMap<u64, u32>,
    /// The [`DISCOVERED`] container, once discovery is on.
    discovered: Option<ContainerId>,
    /// Cgroup bindings by id: the cgroups, and how many containers hold it.
    cgroups: HashMap<u64, (Membership, u32)>,
    next_cgroups: u64,
    next_id: u64,
    /// Bumped by every change, so derived indexes know when they are stale.
    generation: u64,
}

/// Checks a proposed container name against the naming rules.
pub fn check_name(name: &str) -> Result<(), TreeError> {
    if name.is_empty() {
        return Err(TreeError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(TreeError::InvalidName("longer than 255 bytes"));
    }
    if name.starts_with('.') {
        return Err(TreeError::InvalidName(
            "names starting with '.' are reserved",
        ));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(TreeError::InvalidName("contains '/' or NUL"));
    }
    if CONTROL_NAMES.contains(&name) || Kind::from_name(name).is_some() {
        return Err(TreeError::InvalidName("a control file or kind name"));
    }
    Ok(())
}

impl Tree {
    /// The root container's id.
    pub const ROOT: ContainerId = ContainerId(0);

    /// A tree holding only the root, which binds `root[k]` for each kind
    /// (in [`Kind::ALL`] order).
    pub fn new(root: [u64; 8]) -> Tree {
        let mut tree = Tree {
            containers: HashMap::new(),
            binders: HashMap::new(),
            discovered_binders: HashMap::new(),
            discovered: None,
            cgroups: HashMap::new(),
            next_cgroups: 1,
            next_id: 1,
            generation: 0,
        };
        tree.containers.insert(
            Tree::ROOT,
            Container {
                name: String::new(),
                parent: None,
                children: BTreeMap::new(),
                own: [None; 8],
                cgroups: None,
            },
        );
        for kind in Kind::ALL {
            // The root's inodes come from the kernel, one per kind: a clash
            // would be a kernel bug, and leaving the kind unbound is the
            // only sane answer to it.
            let _ = tree.attach(
                Tree::ROOT,
                NsRef {
                    kind,
                    ino: root[kind.index()],
                },
            );
        }
        tree
    }

    /// The container `id`, if it exists.
    pub fn get(&self, id: ContainerId) -> Option<&Container> {
        self.containers.get(&id)
    }

    /// A number that changes whenever the tree does.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every container's id, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = ContainerId> + '_ {
        self.containers.keys().copied()
    }

    /// Number of containers, the root included.
    pub fn len(&self) -> usize {
        self.containers.len()
    }

    /// Always false: the root is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The child of `parent` called `name`.
    pub fn child(&self, parent: ContainerId, name: &str) -> Option<ContainerId> {
        self.containers.get(&parent)?.children.get(name).copied()
    }

    /// How many levels below the root `id` sits.
    pub fn depth(&self, id: ContainerId) -> usize {
        self.ancestors(id).count().saturating_sub(1)
    }

    /// `id`, its parent, and so on up to the root.
    pub fn ancestors(&self, id: ContainerId) -> impl Iterator<Item = ContainerId> + '_ {
        std::iter::successors(self.containers.contains_key(&id).then_some(id), |c| {
            self.containers.get(c).and_then(|c| c.parent)
        })
    }

    /// The container's path from the mount's root, `/` for the root itself.
    pub fn path(&self, id: ContainerId) -> String {
        let mut names: Vec<&str> = self
            .ancestors(id)
            .filter_map(|c| self.containers.get(&c))
            .map(|c| c.name.as_str())
            .collect();
        names.pop();
        names.reverse();
        format!("/{}", names.join("/"))
    }

    /// Number of containers binding namespace `ino` (its kind files' st_nlink).
    pub fn binders(&self, ino: u64) -> u32 {
        self.binders.get(&ino).map_or(0, |b| b.1)
    }

    /// The kind `ino` is bound as, if any container binds it.
    pub fn bound_kind(&self, ino: u64) -> Option<Kind> {
        self.binders.get(&ino).map(|b| b.0)
    }

    /// The containers that bind `ino` themselves.
    pub fn containers_binding(&self, ino: u64) -> Vec<ContainerId> {
        let Some(&(kind, _)) = self.binders.get(&ino) else {
            return Vec::new();
        };
        let mut ids: Vec<ContainerId> = self
            .containers
            .iter()
            .filter(|(_, c)| c.own(kind) == Some(ino))
            .map(|(&id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// The namespace in force in `id` for `kind`, and where it comes from.
    pub fn effective(&self, id: ContainerId, kind: Kind) -> Option<Effective> {
        self.ancestors(id).find_map(|c| {
            let ino = self.containers.get(&c)?.own(kind)?;
            Some(Effective { ino, from: c })
        })
    }

    /// The effective set of `id`, one entry per kind in [`Kind::ALL`] order.
    pub fn effective_set(&self, id: ContainerId) -> Option<[Effective; 8]> {
        let mut set = [Effective {
            ino: 0,
            from: Tree::ROOT,
        }; 8];
        for kind in Kind::ALL {
            set[kind.index()] = self.effective(id, kind)?;
        }
        Some(set)
    }

    /// Makes a new, empty container `name` under `parent`.
    pub fn mkdir(&mut self, parent: ContainerId, name: &str) -> Result<ContainerId, TreeError> {
        check_name(name)?;
        self.writable(parent)?;
        self.make(parent, name)
    }

    /// Makes `name` under `parent`, the name already checked.
    fn make(&mut self, parent: ContainerId, name: &str) -> Result<ContainerId, TreeError> {
        let depth = self.depth(parent);
        let p = self.containers.get(&parent).ok_or(TreeError::NotFound)?;
        if p.children.contains_key(name) {
            return Err(TreeError::Exists);
        }
        if depth + 1 > MAX_DEPTH {
            return Err(TreeError::TooDeep);
        }
        Ok(self.insert(parent, name))
    }

    /// Adds an empty container `name` under `parent`, names unchecked.
    fn insert(&mut self, parent: ContainerId, name: &str) -> ContainerId {
        let id = ContainerId(self.next_id);
        self.next_id += 1;
        self.generation += 1;
        self.containers.insert(
            id,
            Container {
                name: name.to_owned(),
                parent: Some(parent),
                children: BTreeMap::new(),
                own: [None; 8],
                cgroups: None,
            },
        );
        if let Some(p) = self.containers.get_mut(&parent) {
            p.children.insert(name.to_owned(), id);
        }
        id
    }

    /// Removes the child `name` of `parent`, which must have no children.
    /// Returns the removed id and the namespaces that lost their last binder.
    pub fn rmdir(
        &mut self,
        parent: ContainerId,
        name: &str,
    ) -> Result<(ContainerId, Vec<NsRef>), TreeError> {
        let id = self.child(parent, name).ok_or(TreeError::NotFound)?;
        self.writable(id)?;
        let released = self.remove(id)?;
        Ok((id, released))
    }

    fn remove(&mut self, id: ContainerId) -> Result<Vec<NsRef>, TreeError> {
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if !c.children.is_empty() {
            return Err(TreeError::NotEmpty);
        }
        let parent = c.parent.ok_or(TreeError::Root)?;
        self.generation += 1;
        let mut released = Vec::new();
        for kind in Kind::ALL {
            if let Ok(Some(ns)) = self.detach(id, kind) {
                released.push(ns);
            }
        }
        self.drop_cgroups(id);
        if let Some(c) = self.containers.remove(&id)
            && let Some(p) = self.containers.get_mut(&parent)
        {
            p.children.remove(&c.name);
        }
        Ok(released)
    }

    /// Renames `old` to `new` within `parent`. An existing `new` is replaced
    /// if it has no child containers (POSIX rename over an empty directory);
    /// its bindings are released and returned.
    pub fn rename(
        &mut self,
        parent: ContainerId,
        old: &str,
        new: &str,
    ) -> Result<Vec<NsRef>, TreeError> {
        check_name(new)?;
        let id = self.child(parent, old).ok_or(TreeError::NotFound)?;
        self.writable(id)?;
        if old == new {
            return Ok(Vec::new());
        }
        let mut released = Vec::new();
        if let Some(victim) = self.child(parent, new) {
            self.writable(victim)?;
            released = self.remove(victim)?;
        }
        self.generation += 1;
        if let Some(p) = self.containers.get_mut(&parent) {
            p.children.remove(old);
            p.children.insert(new.to_owned(), id);
        }
        if let Some(c) = self.containers.get_mut(&id) {
            c.name = new.to_owned();
        }
        Ok(released)
    }

    /// Makes `id` bind `ns` for its kind, which it must not bind yet (`ln`).
    pub fn link(&mut self, id: ContainerId, ns: NsRef) -> Result<(), TreeError> {
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if id == Tree::ROOT {
            return Err(TreeError::Root);
        }
        self.writable(id)?;
        if c.own(ns.kind).is_some() {
            return Err(TreeError::Exists);
        }
        self.attach(id, ns)
    }

    /// Makes `id` bind `ns`, replacing what it bound for that kind. Returns
    /// the replaced namespace if that was its last binder.
    pub fn bind(&mut self, id: ContainerId, ns: NsRef) -> Result<Option<NsRef>, TreeError> {
        if id == Tree::ROOT {
            return Err(TreeError::Root);
        }
        self.writable(id)?;
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if c.own(ns.kind) == Some(ns.ino) {
            return Ok(None);
        }
        self.check_kind(ns)?;
        let released = match self.detach(id, ns.kind) {
            Ok(released) => released,
            Err(TreeError::NotFound) => None,
            Err(e) => return Err(e),
        };
        self.attach(id, ns)?;
        Ok(released)
    }

    /// Replaces `old` by `new` in every container that binds `old` (a write
    /// to a kind file changes it under all of its names), discovered ones
    /// left out: they keep what their processes use. Refused if the root
    /// binds `old`, or if only discovered containers do. Returns `old` if
    /// it lost its last binder.
    pub fn rebind_everywhere(&mut self, old: u64, new: NsRef) -> Result<Option<NsRef>, TreeError> {
        let kind = self.bound_kind(old).ok_or(TreeError::NotFound)?;
        if old == new.ino {
            return Ok(None);
        }
        if kind != new.kind {
            return Err(TreeError::KindMismatch {
                ino: old,
                bound: kind,
                wanted: new.kind,
            });
        }
        self.check_kind(new)?;
        let mut holders = self.containers_binding(old);
        if holders.contains(&Tree::ROOT) {
            return Err(TreeError::Root);
        }
        holders.retain(|&c| !self.is_discovered(c));
        if holders.is_empty() {
            return Err(TreeError::Discovered);
        }
        let mut released = None;
        for id in holders {
            released = self.bind(id, new)?.or(released);
        }
        Ok(released)
    }

    /// Makes `id` stop binding `kind` (`rm`). Returns the namespace if it
    /// lost its last binder.
    pub fn unbind(&mut self, id: ContainerId, kind: Kind) -> Result<Option<NsRef>, TreeError> {
        if id == Tree::ROOT {
            return Err(TreeError::Root);
        }
        self.writable(id)?;
        self.detach(id, kind)
    }

    /// [`Tree::unbind`] for any container but the root, discovered or not.
    fn detach(&mut self, id: ContainerId, kind: Kind) -> Result<Option<NsRef>, TreeError> {
        if id == Tree::ROOT {
            return Err(TreeError::Root);
        }
        let discovered = self.is_discovered(id);
        let c = self.containers.get_mut(&id).ok_or(TreeError::NotFound)?;
        let ino = c.own[kind.index()].take().ok_or(TreeError::NotFound)?;
        self.generation += 1;
        if discovered {
            match self.discovered_binders.get_mut(&ino) {
                Some(n) if *n > 1 => *n -= 1,
                _ => {
                    self.discovered_binders.remove(&ino);
                }
            }
        }
        let last = match self.binders.get_mut(&ino) {
            Some(b) if b.1 > 1 => {
                b.1 -= 1;
                false
            }
            _ => {
                self.binders.remove(&ino);
                true
            }
        };
        Ok(last.then_some(NsRef { kind, ino }))
    }

    fn check_kind(&self, ns: NsRef) -> Result<(), TreeError> {
        match self.binders.get(&ns.ino) {
            Some(&(bound, _)) if bound != ns.kind => Err(TreeError::KindMismatch {
                ino: ns.ino,
                bound,
                wanted: ns.kind,
            }),
            _ => Ok(()),
        }
    }

    fn attach(&mut self, id: ContainerId, ns: NsRef) -> Result<(), TreeError> {
        self.check_kind(ns)?;
        let discovered = self.is_discovered(id);
        let c = self.containers.get_mut(&id).ok_or(TreeError::NotFound)?;
        c.own[ns.kind.index()] = Some(ns.ino);
        self.generation += 1;
        self.binders.entry(ns.ino).or_insert((ns.kind, 0)).1 += 1;
        if discovered {
            *self.discovered_binders.entry(ns.ino).or_insert(0) += 1;
        }
        Ok(())
    }

    /// Refuses changes a user might ask for in the discovered subtree.
    fn writable(&self, id: ContainerId) -> Result<(), TreeError> {
        if self.is_discovered(id) {
            Err(TreeError::Discovered)
        } else {
            Ok(())
        }
    }

    /// Makes the [`DISCOVERED`] container under the root, if it is not
    /// there yet, and returns it. It binds nothing: its effective set is
    /// the root's, and each discovered container binds the kinds in which
    /// its set differs from the root's.
    pub fn enable_discovery(&mut self) -> ContainerId {
        if let Some(id) = self.discovered {
            return id;
        }
        // The root has no child of that name: user names never start
        // with a dot.
        let id = self.insert(Tree::ROOT, DISCOVERED);
        self.discovered = Some(id);
        id
    }

    /// The [`DISCOVERED`] container, if discovery is on.
    pub fn discovered_root(&self) -> Option<ContainerId> {
        self.discovered
    }

    /// Whether `id` is the [`DISCOVERED`] container or one below it.
    pub fn is_discovered(&self, id: ContainerId) -> bool {
        match self.discovered {
            Some(d) => self.ancestors(id).any(|a| a == d),
            None => false,
        }
    }

    /// Number of bindings of `ino` made by containers that are not
    /// discovered ones: the bindings that must outlive a restart.
    pub fn user_binders(&self, ino: u64) -> u32 {
        self.binders(ino) - self.discovered_binders.get(&ino).copied().unwrap_or(0)
    }

    /// Adds a discovered container `name` binding `own` (the kinds in which
    /// its set differs from the root's). All or nothing.
    pub fn discover(&mut self, name: &str, own: &[NsRef]) -> Result<ContainerId, TreeError> {
        check_name(name)?;
        let parent = self.discovered.ok_or(TreeError::NotFound)?;
        for &ns in own {
            self.check_kind(ns)?;
        }
        let id = self.make(parent, name)?;
        for &ns in own {
            if let Err(e) = self.attach(id, ns) {
                let _ = self.remove(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Removes the discovered container `id` (its processes are gone).
    /// Returns the namespaces that lost their last binder.
    pub fn forget(&mut self, id: ContainerId) -> Result<Vec<NsRef>, TreeError> {
        let parent = self.get(id).and_then(Container::parent);
        if parent.is_none() || parent != self.discovered {
            return Err(TreeError::NotFound);
        }
        self.remove(id)
    }

    /// Adopts the discovered container `id` as `name` under `parent`, a
    /// container of the user's: the new container binds each kind in which
    /// `id`'s effective set differs from `parent`'s, so its effective set
    /// is `id`'s, and `id` leaves the discovered subtree. A name already
    /// taken is refused (`Exists`). Returns the new container and the
    /// namespaces that lost their last binder (none, unless `parent`
    /// changes in between, which the lock of the caller rules out).
    pub fn adopt(
        &mut self,
        id: ContainerId,
        parent: ContainerId,
        name: &str,
    ) -> Result<(ContainerId, Vec<NsRef>), TreeError> {
        check_name(name)?;
        self.writable(parent)?;
        if self.get(id).and_then(Container::parent) != self.discovered || self.discovered.is_none()
        {
            return Err(TreeError::NotFound);
        }
        let from = self.effective_set(id).ok_or(TreeError::NotFound)?;
        let under = self.effective_set(parent).ok_or(TreeError::NotFound)?;
        let new = self.make(parent, name)?;
        for kind in Kind::ALL {
            let ino = from[kind.index()].ino;
            if ino != under[kind.index()].ino {
                self.attach(new, NsRef { kind, ino })?;
            }
        }
        if let Some(b) = self.get(id).and_then(Container::own_cgroups) {
            self.hold_cgroups(new, b);
        }
        let released = self.remove(id)?;
        Ok((new, released))
    }

    /// Verifies the invariants listed in the module documentation.
    pub fn check(&self) -> Result<(), Broken> {
        let root = self.containers.get(&Tree::ROOT).ok_or(Broken::NoRoot)?;
        if root.parent.is_some() || root.own.iter().any(Option::is_none) {
            return Err(Broken::Root);
        }
        let mut counts: HashMap<u64, (Kind, u32)> = HashMap::new();
        let mut discovered: HashMap<u64, u32> = HashMap::new();
        for (&id, c) in &self.containers {
            if let Some(p) = c.parent {
                let parent = self.containers.get(&p).ok_or(Broken::DanglingParent(id))?;
                if parent.children.get(&c.name) != Some(&id) {
                    return Err(Broken::NotAChild(id));
                }
                if Some(id) == self.discovered {
                    if p != Tree::ROOT || c.name != DISCOVERED {
                        return Err(Broken::DiscoveredMisplaced);
                    }
                } else {
                    check_name(&c.name).map_err(|e| Broken::Name(id, e))?;
                }
            } else if id != Tree::ROOT {
                return Err(Broken::NoParent(id));
            }
            for (name, child) in &c.children {
                let ch = self
                    .containers
                    .get(child)
                    .ok_or(Broken::DanglingChild(id))?;
                if &ch.name != name || ch.parent != Some(id) {
                    return Err(Broken::Child(id, name.clone()));
                }
            }
            for kind in Kind::ALL {
                if let Some(ino) = c.own(kind) {
                    let e = counts.entry(ino).or_insert((kind, 0));
                    if e.0 != kind {
                        return Err(Broken::TwoKinds(ino));
                    }
                    e.1 += 1;
                    if self.is_discovered(id) {
                        *discovered.entry(ino).or_insert(0) += 1;
                    }
                }
            }
            if self.depth(id) > MAX_DEPTH {
                return Err(Broken::TooDeep(id));
            }
        }
        if counts != self.binders {
            return Err(Broken::Binders {
                kept: self.binders.clone(),
                counted: counts,
            });
        }
        let mut held: HashMap<u64, u32> = HashMap::new();
        for c in self.containers.values() {
            if let Some(b) = c.cgroups {
                *held.entry(b).or_insert(0) += 1;
            }
        }
        let kept: HashMap<u64, u32> = self.cgroups.iter().map(|(&b, (_, n))| (b, *n)).collect();
        if held != kept {
            return Err(Broken::CgroupBinders {
                kept,
                counted: held,
            });
        }
        if discovered != self.discovered_binders {
            return Err(Broken::DiscoveredBinders {
                kept: self.discovered_binders.clone(),
                counted: discovered,
            });
        }
        if let Some(d) = self.discovered
            && self.containers.get(&d).is_none_or(|c| {
                c.own.iter().any(Option::is_some)
                    || c.children.values().any(|ch| {
                        self.containers
                            .get(ch)
                            .is_none_or(|ch| !ch.children.is_empty())
                    })
            })
        {
            return Err(Broken::DiscoveredSubtree);
        }
        Ok(())
    }
}

pub mod cgroups;
pub mod record;
pub mod view;

#[cfg(test)]
mod tests;

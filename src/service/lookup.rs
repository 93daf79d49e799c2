//! What a caller sees: its view of the tree, the nodes it may name, their
//! attributes and directory entries, and the checks every change makes of
//! where it happens.

use std::ffi::OsStr;
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    Attr, Caller, Denied, Error, FileKind, Invalid, NAMESPACES, Node, Result, Service, SetAttr,
};
use crate::ns::{self, Kind};
use crate::tree::view::{Seen, SetIndex, View};
use crate::tree::{CGROUPS, ContainerId, Tree, TreeError};

/// How long a lookup's answer may be repeated to the getattr the same
/// thread sends right after it (see `Service::recent`).
const RECENT: Duration = Duration::from_millis(1);

impl Service {
    /// `lookup`: the attributes of entry `name` of directory `parent`, as
    /// `caller` sees it. While a write to a `tasks` file is pending, the
    /// entry has another id (see [`Node::tasks_alias`]); its attributes
    /// stay the file's own.
    pub fn lookup(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<Attr> {
        let view = self.view(caller);
        let node = self.lookup_node(&view, parent, name)?;
        let attr = self.node_attr(&view, node)?;
        let mut entry = attr;
        if let Node::Tasks(c) = node {
            entry.id = Node::tasks_alias(c, self.tasks_names.current(c));
        }
        if caller.tid != 0 {
            let mut recent = self.recent.lock();
            if recent.len() >= 1024 {
                recent.retain(|_, (_, _, at)| at.elapsed() < RECENT);
            }
            recent.insert(caller.tid, (entry.id, attr, Instant::now()));
        }
        Ok(entry)
    }

    /// `stat`: the attributes of node `id` as `caller` sees it.
    pub fn getattr(&self, caller: &Caller, id: u64) -> Result<Attr> {
        let repeat = self.recent.lock().remove(&caller.tid);
        if let Some((node, attr, at)) = repeat
            && node == id
            && at.elapsed() < RECENT
        {
            return Ok(attr);
        }
        let view = self.view(caller);
        self.node_attr(&view, Node::from_id(id))
    }

    /// `chmod`, `chown`, `truncate`, `touch`: owners and modes are fixed.
    /// Truncation to 0 (`echo >` without atomic O_TRUNC) and time changes
    /// (`touch` of an existing file) change nothing, but only callers who
    /// may change the node get that answer; the others get EPERM, as for
    /// any change.
    pub fn setattr(&self, caller: &Caller, id: u64, change: SetAttr) -> Result<Attr> {
        let node = Node::from_id(id);
        let view = self.view(caller);
        self.node_attr(&view, node).and_then(|attr| {
            if change.owner_or_mode {
                return Err(Error::Denied(Denied::Rule("owners and modes are fixed")));
            }
            self.require_changeable(caller, &view, node)?;
            if change.size.is_some_and(|s| s != 0) {
                return Err(Error::Invalid(Invalid::Rule(
                    "only truncation to 0 is accepted",
                )));
            }
            Ok(attr)
        })
    }

    /// `ln -s`: refused, always.
    pub fn symlink(&self) -> Result<Attr> {
        Err(Error::Denied(Denied::Rule(
            "symbolic links cannot bind namespaces: use ln without -s",
        )))
    }

    /// `opendir`: refuses a node that is not a directory `caller` sees.
    pub fn opendir(&self, caller: &Caller, id: u64) -> Result<()> {
        let view = self.view(caller);
        self.dir(id)
            .and_then(|c| self.node_attr(&view, Node::Dir(c)))
            .map(drop)
    }

    /// `readdir`: the entries of directory `id` as `caller` sees it, `.`
    /// and `..` first: (node id, kind, name).
    pub fn readdir(&self, caller: &Caller, id: u64) -> Result<Vec<(u64, FileKind, String)>> {
        let view = self.view(caller);
        let entries = self.dir(id).and_then(|c| self.entries(&view, c))?;
        Ok(entries
            .into_iter()
            .map(|(node, kind, name)| (node.id(), kind, name))
            .collect())
    }

    /// The attributes of `node`, as every caller is shown them.
    pub(super) fn attr(&self, node: Node, kind: FileKind, perm: u16, nlink: u32) -> Attr {
        Attr {
            id: node.id(),
            kind,
            perm,
            nlink,
            time: self.started,
        }
    }

    /// What `caller` sees of the tree (see [`crate::tree::view`]). Read
    /// afresh for every request that needs it: a process may change
    /// namespaces at any time, so no view is kept (only a lookup's own
    /// answer is repeated to the getattr right after it, see `recent`).
    pub(super) fn view(&self, caller: &Caller) -> View {
        let Some(set) = caller.ns_set() else {
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
    pub(super) fn index(&self, tree: &Tree) -> Arc<SetIndex> {
        let mut index = self.index.lock();
        if !index.is_current(tree) {
            *index = Arc::new(SetIndex::build(tree));
        }
        Arc::clone(&index)
    }

    /// Refuses, as if it did not exist, a container `view` does not show
    /// in full: changes, control files and moves happen only there.
    pub(super) fn require_full(&self, view: &View, c: ContainerId) -> Result<()> {
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
    pub(super) fn require_process_in(
        &self,
        view: &View,
        pid: i32,
        pidfd: BorrowedFd<'_>,
    ) -> Result<()> {
        if view.is_all() {
            return Ok(());
        }
        let gone = || Error::from(ns::NsError::NoSuchProcess(pid));
        let set = crate::kview::thread_set(pid as u32).ok_or_else(gone)?;
        still_alive(pidfd, pid)?;
        let st = self.state.read();
        let index = self.index(&st.tree);
        if view.holds_process(&st.tree, &index, &set) {
            Ok(())
        } else {
            Err(Error::Denied(Denied::ProcessOutside(pid)))
        }
    }

    pub(super) fn node_attr(&self, view: &View, node: Node) -> Result<Attr> {
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
                self.attr(node, FileKind::Dir, 0o755, 2 + n as u32)
            }
            Node::Tasks(c) | Node::Status(c) if Some(c) == tree.discovered_root() => {
                return Err(Error::NotFound);
            }
            Node::Tasks(c) => {
                full(c)?;
                self.attr(node, FileKind::Regular, 0o644, 1)
            }
            Node::Status(c) => {
                full(c)?;
                self.attr(node, FileKind::Regular, 0o444, 1)
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
                self.attr(node, FileKind::Regular, perm, nlink)
            }
            Node::Pending(n) => {
                let c = self.pending.lock().get(&n).map(|p| p.0);
                full(c.ok_or(Error::NotFound)?)?;
                self.attr(node, FileKind::Regular, 0o644, 1)
            }
            Node::Namespaces => {
                if !view.is_all() || tree.discovered_root().is_none() {
                    return Err(Error::NotFound);
                }
                self.attr(node, FileKind::Regular, 0o444, 1)
            }
            Node::Cgroups(b) => {
                let holders = tree.containers_holding(b);
                let seen = holders.iter().filter(|&&c| view.full(tree, c)).count();
                if seen == 0 {
                    return Err(Error::NotFound);
                }
                let perm = if holders.iter().all(|&c| tree.is_discovered(c)) {
                    0o444
                } else {
                    0o644
                };
                self.attr(node, FileKind::Regular, perm, seen as u32)
            }
        })
    }

    pub(super) fn dir(&self, ino: u64) -> Result<ContainerId> {
        match Node::from_id(ino) {
            Node::Dir(c) => Ok(c),
            _ => Err(Error::NotDir),
        }
    }

    pub(super) fn lookup_node(&self, view: &View, parent: u64, name: &OsStr) -> Result<Node> {
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
            CGROUPS => Node::Cgroups(container.own_cgroups().ok_or(Error::NotFound)?),
            _ => match Kind::from_name(name) {
                Some(kind) => Node::Kind(container.own(kind).ok_or(Error::NotFound)?),
                None => match st.tree.child(c, name) {
                    Some(child) => Node::Dir(child),
                    None => Node::from_id(
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

    pub(super) fn entries(
        &self,
        view: &View,
        c: ContainerId,
    ) -> Result<Vec<(Node, FileKind, String)>> {
        let st = self.state.read();
        let container = st.tree.get(c).ok_or(Error::NotFound)?;
        let parent = container.parent().unwrap_or(Tree::ROOT);
        let mut out = vec![
            (Node::Dir(c), FileKind::Dir, ".".to_owned()),
            (Node::Dir(parent), FileKind::Dir, "..".to_owned()),
        ];
        match view.sees(&st.tree, c) {
            Seen::Full => {}
            Seen::Hidden => return Err(Error::NotFound),
            Seen::Path => {
                for (name, child) in view.children(&st.tree, c) {
                    out.push((Node::Dir(child), FileKind::Dir, name.to_owned()));
                }
                return Ok(out);
            }
        }
        // The discovered subtree's top is a plain directory: its set is
        // the root's, which the root's own files already show.
        if Some(c) != st.tree.discovered_root() {
            out.extend([
                (Node::Tasks(c), FileKind::Regular, "tasks".to_owned()),
                (Node::Status(c), FileKind::Regular, "status".to_owned()),
            ]);
        }
        if c == Tree::ROOT && st.tree.discovered_root().is_some() {
            out.push((Node::Namespaces, FileKind::Regular, NAMESPACES.to_owned()));
        }
        for kind in Kind::ALL {
            if let Some(ino) = container.own(kind) {
                out.push((Node::Kind(ino), FileKind::Regular, kind.name().to_owned()));
            }
        }
        if let Some(b) = container.own_cgroups() {
            out.push((Node::Cgroups(b), FileKind::Regular, CGROUPS.to_owned()));
        }
        for (name, &child) in container.children() {
            out.push((Node::Dir(child), FileKind::Dir, name.clone()));
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
            out.push((Node::from_id(ino), FileKind::Regular, name));
        }
        Ok(out)
    }

    /// Refuses unless `caller` may change `node` (write it, truncate it, set
    /// its times): CAP_SYS_ADMIN in the daemon's user namespace, a node
    /// `view` shows in full, and a node that is not read-only for everyone
    /// (`status`, `.namespaces`, the root's bindings, discovered sets).
    pub(super) fn require_changeable(
        &self,
        caller: &Caller,
        view: &View,
        node: Node,
    ) -> Result<()> {
        caller.require_admin(self.user_ns)?;
        match node {
            Node::Dir(c) => {
                let st = self.state.read();
                if !view.full(&st.tree, c) {
                    return Err(Error::Denied(Denied::ContainerOutside(
                        st.tree.path(c).into(),
                    )));
                }
                if st.tree.is_discovered(c) {
                    return Err(TreeError::Discovered.into());
                }
                Ok(())
            }
            Node::Namespaces => Err(Error::Denied(Denied::ReadOnly(NAMESPACES))),
            Node::Status(_) => Err(Error::Denied(Denied::ReadOnly("status"))),
            Node::Tasks(_) | Node::Pending(_) => Ok(()),
            Node::Kind(ino) => {
                let st = self.state.read();
                let kind = st.tree.bound_kind(ino).ok_or(Error::NotFound)?;
                if st.tree.containers_binding(ino).contains(&Tree::ROOT) {
                    return Err(Error::Denied(Denied::RootBinding { kind, ino }));
                }
                if st.tree.user_binders(ino) == 0 {
                    return Err(TreeError::Discovered.into());
                }
                Ok(())
            }
            Node::Cgroups(b) => {
                let st = self.state.read();
                let holders = st.tree.containers_holding(b);
                if holders.is_empty() {
                    return Err(Error::NotFound);
                }
                if holders.iter().all(|&c| st.tree.is_discovered(c)) {
                    return Err(TreeError::Discovered.into());
                }
                Ok(())
            }
        }
    }
}

/// Refuses with ESRCH once the process pinned by `pidfd` has exited: what
/// was read about `pid` since the pin may be about a reused pid.
fn still_alive(pidfd: BorrowedFd<'_>, pid: i32) -> Result<()> {
    if crate::sys::pidfd::alive(pidfd) {
        Ok(())
    } else {
        Err(ns::NsError::NoSuchProcess(pid).into())
    }
}

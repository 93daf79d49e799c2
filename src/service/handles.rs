//! Open files: what each handle reads and where its writes go; writes to
//! kind files (binding what they name), and the fresh namespace a created
//! kind file binds when it is closed unwritten.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::input::{self, Binding, InputError};
use super::{Attr, Caller, Denied, Error, FileKind, Invalid, Node, Result, Service, moves, pin};
use crate::cgroup::{CgroupError, Hierarchies, Membership};
use crate::ns::{self, Kind, Namespace};
use crate::tree::Tree;
use crate::tree::view::View;
use crate::tree::{CGROUPS, ContainerId, TreeError};

/// How a write is answered, by whoever carries requests (the FUSE adapter,
/// a test). The first answer goes to the writer; an outcome after that (a
/// move that failed once the mover had answered) is only logged.
pub trait WriteReply: Send + 'static {
    /// The write's outcome: done (its whole length written), or refused,
    /// to be logged under `op` and passed on as its errno.
    fn send(&mut self, op: &'static str, result: Result<()>);

    /// Fails the write with `errno`, unlogged, unless it was answered
    /// already.
    fn fail(&mut self, errno: i32);
}

pub(super) enum WriteTarget {
    Tasks(ContainerId),
    /// An existing kind file: every container binding this inode.
    Rebind(u64),
    /// A kind file made by create(): bound on first write, or fresh at flush.
    Create {
        container: ContainerId,
        kind: Kind,
        pending: u64,
    },
    /// A cgroup binding (`.cgroups`): a write changes it under every name.
    Cgroups {
        binding: u64,
        /// Made empty by create() in this container: a write that fails
        /// for what it says takes it away again.
        created: Option<ContainerId>,
        /// Opened with `O_TRUNC`: made empty if closed unwritten.
        truncate: bool,
    },
}

/// What a handle of `.cgroups` opened with `O_TRUNC` emptied at a close
/// before its write (a shell's `echo X > file` closes a duplicate first):
/// a write that then fails puts it back.
#[derive(Default)]
pub(super) struct Emptied {
    by: HashMap<u64, Membership>,
}

pub(super) struct Handle {
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

impl Service {
    /// `create` (`touch`, `echo >`): a kind file that binds what is
    /// written to it, or a fresh namespace if it is closed unwritten;
    /// returns its attributes and its handle.
    pub fn create(&self, caller: &Caller, parent: u64, name: &OsStr) -> Result<(Attr, u64)> {
        let c = self.dir(parent)?;
        self.require_full(&self.view(caller), c)?;
        caller.require_admin(self.user_ns)?;
        if name == CGROUPS {
            return self.create_cgroups(c);
        }
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
            self.attr(Node::Pending(pending), FileKind::Regular, 0o644, 1),
            fh,
        ))
    }

    /// `create` of `.cgroups` (`touch`, `: >`): `c` holds an empty binding
    /// at once (moves into it join no cgroup), which a write then fills.
    fn create_cgroups(&self, c: ContainerId) -> Result<(Attr, u64)> {
        let binding = {
            let mut st = self.state.write();
            if st
                .tree
                .get(c)
                .ok_or(Error::NotFound)?
                .own_cgroups()
                .is_some()
            {
                return Err(TreeError::Exists.into());
            }
            st.tree.set_cgroups(c, Membership::default())?
        };
        self.commit(Vec::new())?;
        let fh = self.add_handle(Handle {
            content: Vec::new(),
            write: Some(WriteTarget::Cgroups {
                binding,
                created: Some(c),
                truncate: false,
            }),
            written: false,
            flushed: false,
            fresh: None,
        });
        Ok((
            self.attr(Node::Cgroups(binding), FileKind::Regular, 0o644, 1),
            fh,
        ))
    }

    pub(super) fn add_handle(&self, handle: Handle) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().insert(fh, handle);
        fh
    }

    /// `open`: a handle to node `ino`, with its content read now; `flags`
    /// are open(2)'s.
    pub fn open(&self, caller: &Caller, ino: u64, flags: i32) -> Result<u64> {
        let node = Node::from_id(ino);
        let acc = flags & libc::O_ACCMODE;
        let reading = acc == libc::O_RDONLY || acc == libc::O_RDWR;
        let writing = acc == libc::O_WRONLY || acc == libc::O_RDWR;
        let view = self.view(caller);
        self.node_attr(&view, node)?;
        if let Node::Dir(_) = node {
            return Err(Error::IsDir);
        }
        // O_TRUNC asks for a change even on a read-only open.
        if writing || flags & libc::O_TRUNC != 0 {
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
            Node::Cgroups(binding) => {
                let st = self.state.read();
                let m = st.tree.cgroup_binding(binding).ok_or(Error::NotFound)?;
                // Emptied at a close without a write only if the opener
                // sees every name of the binding (a close does not know
                // who closes).
                let all_seen = view.is_all()
                    || st
                        .tree
                        .containers_holding(binding)
                        .iter()
                        .all(|&c| view.full(&st.tree, c));
                let target = WriteTarget::Cgroups {
                    binding,
                    created: None,
                    truncate: flags & libc::O_TRUNC != 0 && all_seen,
                };
                let changing = writing || flags & libc::O_TRUNC != 0;
                (m.to_string().into_bytes(), changing.then_some(target))
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

    /// Whether closing handle `fh` can change anything ([`Service::flush`]
    /// does something only for a created kind file and a `.cgroups`
    /// opened to be emptied): the kernel need not tell the others' closes.
    pub fn needs_flush(&self, fh: u64) -> bool {
        self.handles.lock().get(&fh).is_some_and(|h| {
            matches!(
                h.write,
                Some(WriteTarget::Create { .. } | WriteTarget::Cgroups { truncate: true, .. })
            )
        })
    }

    /// `read` of up to `size` bytes at `offset` of handle `fh`: `None` if
    /// there is no such handle.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Option<Vec<u8>> {
        let handles = self.handles.lock();
        let h = handles.get(&fh)?;
        let start = (offset as usize).min(h.content.len());
        let end = start.saturating_add(size as usize).min(h.content.len());
        Some(h.content[start..end].to_vec())
    }

    /// `write` of `data` to handle `fh` of node `ino`: binds what a kind
    /// file is given, moves the process `tasks` is given. Answered through
    /// `reply`, perhaps later and from another thread: a move, or a path
    /// to walk, runs off the caller's thread (see [`moves`]).
    pub fn write(
        self: &Arc<Self>,
        caller: &Caller,
        ino: u64,
        fh: u64,
        data: &[u8],
        mut reply: Box<dyn WriteReply>,
    ) {
        let target = {
            let mut handles = self.handles.lock();
            let Some(h) = handles.get_mut(&fh) else {
                return reply.fail(libc::EBADF);
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
                Some(WriteTarget::Cgroups {
                    binding,
                    created,
                    truncate,
                }) => Some(WriteTarget::Cgroups {
                    binding: *binding,
                    created: *created,
                    truncate: *truncate,
                }),
                None => None,
            }
        };
        // Every write that gets anywhere needs the writer's credentials (a
        // move, a pid or a path to bind): read first, they answer the
        // capability check too, and are read once.
        if let Err(e) = caller
            .credentials()
            .and_then(|_| caller.require_admin(self.user_ns))
        {
            return reply.send("write", Err(e));
        }
        let result = match target {
            None => Err(Error::Invalid(Invalid::Rule("file not open for writing"))),
            Some(WriteTarget::Tasks(c)) => {
                let generation = Node::alias_generation(ino);
                return self.write_tasks(caller, (c, generation), data, reply);
            }
            Some(WriteTarget::Cgroups {
                binding, created, ..
            }) => {
                let result = self.write_cgroups(caller, binding, created, data);
                let emptied = self.emptied.lock().by.remove(&fh);
                if let (Err(_), Some(old)) = (&result, emptied) {
                    self.refill(binding, old);
                }
                result
            }
            Some(target) => {
                // A path is walked by a child that may wait up to its
                // deadline on a filesystem that does not answer: off the
                // FUSE workers, as moves are.
                if matches!(input::parse_binding(data), Ok(Binding::Path(_))) {
                    let Some(slot) = self.moves.reserve() else {
                        let e = Error::Busy {
                            limit: moves::MAX_IN_FLIGHT,
                            what: "moves and path bindings",
                        };
                        return reply.send("write", Err(e));
                    };
                    let (this, caller, data) = (Arc::clone(self), caller.clone(), data.to_vec());
                    slot.run(Box::new(move || {
                        let result = this.write_binding(&caller, fh, target, &data);
                        reply.send("write", result);
                    }));
                    return;
                }
                self.write_binding(caller, fh, target, data)
            }
        };
        reply.send("write", result);
    }

    /// A write to a kind file: binds what `data` names.
    pub(super) fn write_binding(
        &self,
        caller: &Caller,
        fh: u64,
        target: WriteTarget,
        data: &[u8],
    ) -> Result<()> {
        match target {
            WriteTarget::Tasks(_) | WriteTarget::Cgroups { .. } => {
                Err(Error::Invalid(Invalid::Rule("not a kind file")))
            }
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
    pub(super) fn undo_fresh(&self, fh: u64, container: ContainerId, kind: Kind) {
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

    pub(super) fn write_kind(
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
            (None, None) => return Err(Error::Invalid(Invalid::Rule("file not open for writing"))),
        };
        let ns = self.namespace_from_write(caller, &view, kind, data)?;
        self.install(ns, &view, container, rebind)
    }

    pub(super) fn namespace_from_write(
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
                let local = crate::sys::ns::pid_from_pidns(pidns.as_fd(), pid)
                    .map_err(|_| ns::NsError::NoSuchProcess(pid))?;
                let pidfd = pin(local, crate::sys::pidfd::THREAD)?;
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
                    return Err(Error::Denied(Denied::Daemon(pid)));
                }
                Namespace::of_pidfd_as(&creds, pidfd.as_fd(), pid, kind)?
            }
            Binding::Path(path) => ns::of_path(&caller.opener(self.own_dev()?)?, path, kind)?,
        })
    }

    /// A write to `.cgroups`: the binding holds what `data` names, under
    /// every name of it.
    fn write_cgroups(
        &self,
        caller: &Caller,
        binding: u64,
        created: Option<ContainerId>,
        data: &[u8],
    ) -> Result<()> {
        let view = self.view(caller);
        let result = self.cgroups_from_write(caller, data).and_then(|m| {
            {
                // Under the names the writer sees in full only, as for
                // kind files.
                let mut st = self.state.write();
                let seen: Vec<ContainerId> = st
                    .tree
                    .containers_holding(binding)
                    .into_iter()
                    .filter(|&c| view.full(&st.tree, c))
                    .collect();
                if seen.is_empty() {
                    return Err(Error::NotFound);
                }
                st.tree
                    .rewrite_cgroups_where(binding, m, |c| seen.contains(&c))?;
            }
            self.commit(Vec::new())
        });
        if let (Err(e), Some(c)) = (&result, created)
            && !matches!(e, Error::Denied(_) | Error::NotFound)
        {
            // The empty binding create() made goes again: a refused write
            // leaves nothing behind.
            let undone = {
                let mut st = self.state.write();
                let own = st.tree.get(c).and_then(|c| c.own_cgroups());
                let empty = st
                    .tree
                    .cgroup_binding(binding)
                    .is_some_and(|m| m.is_empty());
                own == Some(binding) && empty && st.tree.unbind_cgroups(c).is_ok()
            };
            if undone && let Err(e) = self.commit(Vec::new()) {
                log::warn!("could not record the removal of an empty .cgroups: {e}");
            }
        }
        result
    }

    /// The cgroups a write to `.cgroups` names, paths as the daemon's
    /// cgroup namespace shows them: a pid (the writer's pid namespace)
    /// names the cgroups that process is in now, in every hierarchy
    /// mounted here; lines of `/proc/PID/cgroup` name those cgroups (as
    /// the writer's cgroup namespace shows them), each of which the writer
    /// must reach.
    pub(super) fn cgroups_from_write(&self, caller: &Caller, data: &[u8]) -> Result<Membership> {
        const MAX_CGROUPS_TEXT: usize = 1 << 16;
        if data.len() > MAX_CGROUPS_TEXT {
            return Err(InputError::TooLong(data.len()).into());
        }
        let hierarchies = Hierarchies::of_host()?;
        if let Ok(pid) = input::parse_pid(data) {
            let pidns = caller.pid_ns()?;
            let local = crate::sys::ns::tgid_from_pidns(pidns.as_fd(), pid)
                .map_err(|_| ns::NsError::NoSuchProcess(pid))?;
            let pidfd = pin(local, 0)?;
            self.require_process_in(&self.view(caller), local, pidfd.as_fd())?;
            let m = Membership::of_process(local).map_err(|e| match e {
                CgroupError::Gone(_) => Error::from(ns::NsError::NoSuchProcess(pid)),
                e => e.into(),
            })?;
            if !crate::sys::pidfd::alive(pidfd.as_fd()) {
                return Err(ns::NsError::NoSuchProcess(pid).into());
            }
            return Ok(hierarchies.reachable(&m));
        }
        let text = std::str::from_utf8(data).map_err(|_| InputError::NotUtf8)?;
        let written = Membership::parse(text)?;
        let tid = caller.tid;
        let as_caller = crate::cgroup::Caller::with_credentials(tid, caller.credentials()?)?;
        let m = as_caller.to_daemon_view(&written)?;
        as_caller.reach(&hierarchies, &m)?;
        Ok(m)
    }

    /// `close` of one descriptor of handle `fh`: a created kind file not
    /// written binds a fresh namespace; a `.cgroups` opened with `O_TRUNC`
    /// and not written is made empty.
    pub fn flush(&self, fh: u64) -> Result<()> {
        let create = {
            let mut handles = self.handles.lock();
            let Some(h) = handles.get_mut(&fh) else {
                return Ok(());
            };
            if let Some(WriteTarget::Cgroups {
                binding,
                truncate: true,
                ..
            }) = h.write
                && !h.written
                && !h.flushed
            {
                h.flushed = true;
                drop(handles);
                let old = {
                    let mut st = self.state.write();
                    let old = st.tree.cgroup_binding(binding).cloned();
                    st.tree.rewrite_cgroups(binding, Membership::default())?;
                    old
                };
                if let Some(old) = old.filter(|m| !m.is_empty()) {
                    self.emptied.lock().by.insert(fh, old);
                }
                return self.commit(Vec::new());
            }
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

    /// Puts `old` back into binding `binding` if it is still empty (a
    /// write after the truncating close failed).
    fn refill(&self, binding: u64, old: Membership) {
        let refilled = {
            let mut st = self.state.write();
            st.tree
                .cgroup_binding(binding)
                .is_some_and(|m| m.is_empty())
                && st.tree.rewrite_cgroups(binding, old).is_ok()
        };
        if refilled && let Err(e) = self.commit(Vec::new()) {
            log::warn!("could not record a .cgroups put back after a failed write: {e}");
        }
    }

    /// The last descriptor of handle `fh` is closed.
    pub fn release(&self, fh: u64) {
        self.emptied.lock().by.remove(&fh);
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

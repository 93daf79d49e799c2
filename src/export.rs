//! `--netns-export DIR`: the net namespace of every container that binds
//! its own is exported into DIR (usually `/run/netns`) under the
//! container's flattened path, as `ip netns add` would have made it, so
//! that `ip netns list` and `ip netns exec NAME` work.
//!
//! Two halves:
//!
//! * [`wanted`] is plain data: which names the tree asks for, and which
//!   containers cannot be exported and why. No system calls; tested
//!   without mounts.
//! * [`Exporter`] makes DIR agree with it: an export is an empty file
//!   `DIR/NAME` with the namespace bind-mounted on it. It never touches a
//!   file it did not make, and it keeps the list of what it made in the
//!   state directory (`STATE/exports`), so that a daemon started after a
//!   SIGKILL, with another DIR, or without the option at all, can find and
//!   remove what the previous one left.
//!
//! Naming (documented in `docs/tree.md`): the path below the mount's root
//! with `/` replaced by `.` (`/web/db` is `web.db`). When two containers
//! flatten to the same name, the one with fewer path components wins, and
//! between equally deep ones the path that sorts first byte by byte; the
//! other is not exported. Names longer than 255 bytes (`ip netns` refuses
//! them) and names with control characters (they would break the
//! one-name-per-line listing) are not exported. Each such case is logged
//! once while it lasts.
//!
//! Locking: [`Exporter::sync`] takes the exporter's own lock first and
//! then calls its snapshot closure, which takes the tree's read lock only
//! long enough to copy the names and namespace handles; the mounts are
//! made after that lock is released. Syncs are serialized, and each one
//! applies the tree as it is when it runs, so the last one leaves DIR in
//! line with the tree.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::ns::{Kind, Namespace, nsfs_dev};
use crate::state_dir::StateDir;
use crate::sys;
use crate::tree::{ContainerId, Tree};

/// The list of exports in the state directory.
pub const LIST: &str = "exports";

/// Longest name `ip netns` accepts (`NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// What joins the names of a nested container's path.
pub const SEPARATOR: char = '.';

const MAGIC: &str = "nsproxyfs-exports";
const VERSION: u32 = 1;

/// A container whose net namespace is to be exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// The container.
    pub container: ContainerId,
    /// Its path below the mount's root (`/web/db`), for log lines.
    pub path: String,
    /// The net namespace it binds itself.
    pub ino: u64,
}

/// Why a container that binds its own net namespace is not exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unexported {
    /// Another container flattens to the same name and wins.
    Taken {
        /// The container that has the name.
        by: String,
    },
    /// The name is longer than [`MAX_NAME`] bytes.
    TooLong,
    /// The name holds a control character.
    Unprintable,
}

/// A container left out, with the name it would have had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Its path (`/web/db`).
    pub path: String,
    /// Its flattened name.
    pub name: String,
    /// Why it is left out.
    pub why: Unexported,
}

/// What the tree asks DIR to hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// By exported name.
    pub exports: BTreeMap<String, Want>,
    /// Containers that bind their own net namespace but are not exported.
    pub skipped: Vec<Skipped>,
}

/// The export name of `path` (names from the root down): joined with
/// [`SEPARATOR`].
pub fn flatten<S: AsRef<str>>(path: &[S]) -> String {
    let mut out = String::new();
    for (i, name) in path.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        out.push_str(name.as_ref());
    }
    out
}

/// Which containers of `tree` are exported under which name: every one but
/// the root that binds its own net namespace, except those `skip` names
/// (asked once per such container; it decides on its own whether a
/// container's subtree counts) and those that cannot be (see
/// [`Unexported`]).
pub fn wanted(tree: &Tree, skip: impl Fn(ContainerId) -> bool) -> Wanted {
    let mut out = Wanted::default();
    let mut candidates = Vec::new();
    for id in tree.ids() {
        if id == Tree::ROOT {
            continue;
        }
        let Some(ino) = tree.get(id).and_then(|c| c.own(Kind::Net)) else {
            continue;
        };
        if skip(id) {
            continue;
        }
        let mut names: Vec<&str> = tree
            .ancestors(id)
            .filter(|&a| a != Tree::ROOT)
            .filter_map(|a| tree.get(a).map(|c| c.name()))
            .collect();
        names.reverse();
        let name = flatten(&names);
        let path = format!("/{}", names.join("/"));
        let why = if name.len() > MAX_NAME {
            Some(Unexported::TooLong)
        } else if name.chars().any(char::is_control) {
            Some(Unexported::Unprintable)
        } else {
            None
        };
        match why {
            Some(why) => out.skipped.push(Skipped { path, name, why }),
            None => candidates.push((names.len(), path, name, id, ino)),
        }
    }
    // Fewer components first, then the path byte by byte: the first to
    // claim a name keeps it.
    candidates.sort_by(|a, b| (a.0, a.1.as_bytes()).cmp(&(b.0, b.1.as_bytes())));
    for (_, path, name, container, ino) in candidates {
        match out.exports.get(&name) {
            Some(winner) => out.skipped.push(Skipped {
                path,
                name,
                why: Unexported::Taken {
                    by: winner.path.clone(),
                },
            }),
            None => {
                out.exports.insert(
                    name,
                    Want {
                        container,
                        path,
                        ino,
                    },
                );
            }
        }
    }
    out.skipped.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// What one sync applies: [`wanted`] with the namespace handles, copied
/// under the tree's lock.
#[derive(Debug, Default)]
pub struct Snapshot {
    exports: BTreeMap<String, (String, Arc<Namespace>)>,
    skipped: Vec<Skipped>,
}

impl Snapshot {
    /// The exports `tree` wants, with the handles of their namespaces from
    /// `spaces` (a namespace without a handle is left out); `skip` as for
    /// [`wanted`].
    pub fn of(
        tree: &Tree,
        spaces: &HashMap<u64, Arc<Namespace>>,
        skip: impl Fn(ContainerId) -> bool,
    ) -> Snapshot {
        let wanted = wanted(tree, skip);
        Snapshot {
            exports: wanted
                .exports
                .into_iter()
                .filter_map(|(name, w)| Some((name, (w.path, Arc::clone(spaces.get(&w.ino)?)))))
                .collect(),
            skipped: wanted.skipped,
        }
    }
}

/// What a name in DIR turned out to be.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// Nothing.
    Missing,
    /// A namespace mounted there with the inode we exported.
    Ours,
    /// An empty regular file on DIR's own file system, no mount on it:
    /// what remains of an export whose mount went away (a reboot, a lost
    /// race with a kill).
    Leftover,
    /// Anything else: not ours to touch.
    Other,
}

/// Makes DIR agree with the tree (see the module documentation).
#[derive(Debug)]
pub struct Exporter {
    dir: PathBuf,
    state: Arc<StateDir>,
    list: PathBuf,
    nsfs_dev: u64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// What DIR holds that this daemon made: name -> namespace inode.
    exported: BTreeMap<String, u64>,
    /// What the list on disk says, to write it only when it changes.
    listed: Option<BTreeMap<String, u64>>,
    /// Problems logged already, dropped once they go away (so that one
    /// that comes back is logged again).
    said: HashSet<String>,
    /// Set at the daemon's clean end: nothing is exported any more.
    closed: bool,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// Makes `dir` a shared mount point, as `ip netns add` does with
/// `/run/netns`: exports made in it then reach the mount namespaces that
/// share it, and an export removed here goes from them too. A directory
/// that is not a mount point (the kernel answers EINVAL) is first bound
/// onto itself, with whatever is mounted below it.
fn share(dir: &Path) -> Result<(), ExportError> {
    let failed = |step, source| ExportError::Share {
        dir: dir.to_path_buf(),
        step,
        source,
    };
    let c = cstring(dir).map_err(|source| ExportError::Dir {
        dir: dir.to_path_buf(),
        source,
    })?;
    match sys::mount::make_shared(&c) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            sys::mount::bind(&c, &c, true).map_err(|e| failed("bind it onto itself", e))?;
            sys::mount::make_shared(&c).map_err(|e| failed("make it shared", e))
        }
        Err(e) => Err(failed("make it shared", e)),
        Ok(()) => Ok(()),
    }
}

fn classify(dir_dev: Option<u64>, nsfs_dev: u64, path: &Path, ino: u64) -> Found {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Found::Missing,
        Err(_) => Found::Other,
        Ok(md) if md.dev() == nsfs_dev && md.ino() == ino => Found::Ours,
        Ok(md) if md.file_type().is_file() && md.len() == 0 && Some(md.dev()) == dir_dev => {
            Found::Leftover
        }
        Ok(_) => Found::Other,
    }
}

/// Unmounts our export at `path` (the top mount, which was checked to be
/// ours) and deletes the file under it.
fn unexport(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    match sys::mount::detach(&c) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
        Err(e) => return Err(e),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes what a previous daemon exported according to `list`, where it
/// is still ours. Returns how many were removed.
fn remove_listed(list: &Listed, nsfs_dev: u64) -> usize {
    let dir_dev = std::fs::metadata(&list.dir).ok().map(|m| m.dev());
    let mut removed = 0;
    for (name, &ino) in &list.exports {
        let path = list.dir.join(name);
        match classify(dir_dev, nsfs_dev, &path, ino) {
            Found::Ours | Found::Leftover => match unexport(&path) {
                Ok(()) => removed += 1,
                Err(e) => log::warn!(
                    "netns export: cannot remove {} left by a previous daemon: {e}",
                    path.display()
                ),
            },
            Found::Missing => {}
            Found::Other => log::info!(
                "netns export: {} was exported by a previous daemon but has been replaced \
                 since; left alone",
                path.display()
            ),
        }
    }
    removed
}

/// At the start of a daemon without `--netns-export`, and for tests:
/// removes the exports the list in `state_dir` names (those still ours),
/// and the list.
pub fn forget(state_dir: &StateDir) {
    let path = state_dir.path().join(LIST);
    match read_list(state_dir) {
        Ok(Some(list)) => {
            if let Ok(dev) = nsfs_dev() {
                let n = remove_listed(&list, dev);
                if n > 0 {
                    log::info!(
                        "netns export: removed {n} exports a previous daemon left in {}",
                        list.dir.display()
                    );
                }
            }
        }
        Ok(None) => return,
        Err(e) => log::warn!(
            "netns export: the list {} cannot be read ({e}); exports it names, if any, are \
             left in place",
            path.display()
        ),
    }
    let _ = state_dir.remove(LIST);
    let _ = state_dir.remove(&format!("{LIST}.tmp"));
}

impl Exporter {
    /// Exports into `dir` (absolute, an existing directory), keeping the
    /// list in `state_dir`. Makes `dir` a shared mount point, and takes
    /// over what a previous daemon exported there (if it exported
    /// elsewhere, that is removed).
    pub fn open(dir: &Path, state_dir: Arc<StateDir>) -> Result<Exporter, ExportError> {
        let shown = dir.display();
        share(dir)?;
        let nsfs_dev = nsfs_dev().map_err(ExportError::Nsfs)?;
        let list = state_dir.path().join(LIST);
        let mut inner = Inner::default();
        match read_list(&state_dir) {
            Ok(None) => {}
            Ok(Some(old)) if old.dir != dir => {
                let n = remove_listed(&old, nsfs_dev);
                if n > 0 {
                    log::info!(
                        "netns export: removed {n} exports a previous daemon left in {}",
                        old.dir.display()
                    );
                }
            }
            Ok(Some(old)) => {
                let dir_dev = std::fs::metadata(dir).ok().map(|m| m.dev());
                for (name, ino) in old.exports {
                    let path = dir.join(&name);
                    match classify(dir_dev, nsfs_dev, &path, ino) {
                        Found::Ours => {
                            inner.exported.insert(name, ino);
                        }
                        Found::Leftover => {
                            if let Err(e) = unexport(&path) {
                                log::warn!(
                                    "netns export: cannot remove the empty {}: {e}",
                                    path.display()
                                );
                            }
                        }
                        Found::Missing => {}
                        Found::Other => log::info!(
                            "netns export: {} was exported by a previous daemon but has \
                             been replaced since; left alone",
                            path.display()
                        ),
                    }
                }
                if !inner.exported.is_empty() {
                    log::info!(
                        "netns export: found {} exports of a previous daemon in {shown}",
                        inner.exported.len()
                    );
                }
            }
            Err(e) => log::warn!(
                "netns export: the list {} cannot be read ({e}); exports it names, if any, \
                 are left in place",
                list.display()
            ),
        }
        let exporter = Exporter {
            dir: dir.to_path_buf(),
            state: state_dir,
            list,
            nsfs_dev,
            inner: Mutex::new(inner),
        };
        {
            let mut inner = exporter.inner.lock();
            let now = inner.exported.clone();
            exporter.write_list(&mut inner, &now);
        }
        Ok(exporter)
    }

    /// Brings DIR in line with the tree: `snapshot` is called with the
    /// exporter's lock held (so syncs apply in order) and should read the
    /// tree under its lock and return at once; the mounts are made after.
    /// Failures are logged, once while they last; nothing is returned,
    /// since an export never fails a change of the tree.
    pub fn sync(&self, snapshot: impl FnOnce() -> Snapshot) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return;
        }
        let snap = snapshot();
        let mut said = Vec::new();
        for s in &snap.skipped {
            said.push(match &s.why {
                Unexported::Taken { by } => format!(
                    "netns export: {} and {by} both flatten to the name {:?}; {by} has it, \
                     {} is not exported",
                    s.path, s.name, s.path
                ),
                Unexported::TooLong => format!(
                    "netns export: {} is not exported: its name would be longer than \
                     {MAX_NAME} bytes",
                    s.path
                ),
                Unexported::Unprintable => format!(
                    "netns export: {} is not exported: its name {:?} holds control \
                     characters",
                    s.path, s.name
                ),
            });
        }

        // Remove what is no longer wanted, or wanted with another namespace.
        let stale: Vec<(String, u64)> = inner
            .exported
            .iter()
            .filter(|(name, ino)| {
                snap.exports
                    .get(*name)
                    .is_none_or(|(_, ns)| ns.ino() != **ino)
            })
            .map(|(n, &i)| (n.clone(), i))
            .collect();
        for (name, ino) in stale {
            let path = self.dir.join(&name);
            match classify(None, self.nsfs_dev, &path, ino) {
                Found::Ours => match unexport(&path) {
                    Ok(()) => {
                        log::info!("netns export: removed {}", path.display());
                    }
                    Err(e) => {
                        said.push(format!(
                            "netns export: cannot remove {}: {e}",
                            path.display()
                        ));
                        continue;
                    }
                },
                Found::Missing => log::info!(
                    "netns export: {} had been removed by someone else",
                    path.display()
                ),
                _ => log::warn!(
                    "netns export: {} was replaced by something nsproxyfs did not make; \
                     left alone",
                    path.display()
                ),
            }
            inner.exported.remove(&name);
        }

        // Add what is missing, listed before it is made so that a daemon
        // killed in between finds it.
        let new: Vec<(&String, &String, &Arc<Namespace>)> = snap
            .exports
            .iter()
            .filter(|(name, _)| !inner.exported.contains_key(*name))
            .map(|(name, (path, ns))| (name, path, ns))
            .collect();
        if !new.is_empty() {
            let mut planned = inner.exported.clone();
            planned.extend(new.iter().map(|(name, _, ns)| ((*name).clone(), ns.ino())));
            self.write_list(&mut inner, &planned);
        }
        for (name, container, ns) in new {
            let path = self.dir.join(name);
            match self.export(&path, ns) {
                Ok(()) => {
                    log::info!(
                        "netns export: {} of {container} exported as {}",
                        ns.describe(),
                        path.display()
                    );
                    inner.exported.insert(name.clone(), ns.ino());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => said.push(format!(
                    "netns export: {} exists and was not made by nsproxyfs; the net \
                     namespace of {container} is not exported there",
                    path.display()
                )),
                Err(e) => said.push(format!(
                    "netns export: cannot export the net namespace of {container} as {}: {e}",
                    path.display()
                )),
            }
        }
        let now = inner.exported.clone();
        self.write_list(&mut inner, &now);

        let said: HashSet<String> = said.into_iter().collect();
        for line in &said {
            if !inner.said.contains(line) {
                log::warn!("{line}");
            }
        }
        inner.said = said;
    }

    /// Makes one export: the empty file (mode 0, as `ip netns add` makes
    /// it), then the namespace bound on it. The directory is made again if
    /// someone removed it.
    fn export(&self, path: &Path, ns: &Namespace) -> io::Result<()> {
        let create = || {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o000)
                .open(path)
        };
        let file = match create() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&self.dir)?;
                create()?
            }
            other => other?,
        };
        drop(file);
        let c = cstring(path)?;
        if let Err(e) = sys::mount::bind_fd(ns.fd(), &c) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Ok(())
    }

    /// At the daemon's clean end: removes every export and the list.
    /// Later syncs do nothing.
    pub fn close(&self) {
        let mut inner = self.inner.lock();
        if inner.closed {
            return;
        }
        inner.closed = true;
        let exported = std::mem::take(&mut inner.exported);
        let mut removed = 0;
        let mut left = BTreeMap::new();
        for (name, ino) in exported {
            let path = self.dir.join(&name);
            match classify(None, self.nsfs_dev, &path, ino) {
                Found::Ours => match unexport(&path) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        log::warn!("netns export: cannot remove {}: {e}", path.display());
                        left.insert(name, ino);
                    }
                },
                _ => log::debug!("netns export: {} is not ours any more", path.display()),
            }
        }
        if left.is_empty() {
            let _ = self.state.remove(LIST);
            inner.listed = None;
        } else {
            self.write_list(&mut inner, &left);
        }
        if removed > 0 {
            log::info!(
                "netns export: {removed} exports removed from {}",
                self.dir.display()
            );
        }
    }

    /// Writes the list with `exports`, if it differs from what is on disk.
    /// A temporary file renamed over the list: a daemon killed at any
    /// moment leaves one whole list. Not fsync()ed: the list only has to
    /// outlive the daemon, and the exports it names are mounts, gone after
    /// a reboot anyway.
    fn write_list(&self, inner: &mut Inner, exports: &BTreeMap<String, u64>) {
        if inner.listed.as_ref() == Some(exports) {
            return;
        }
        let text = encode_list(&self.dir, exports);
        let written = self.state.replace(LIST, text.as_bytes(), false);
        match written {
            Ok(()) => {
                inner.listed = Some(exports.clone());
            }
            Err(e) => {
                inner.listed = None;
                log::warn!(
                    "netns export: cannot write the list {}: {e}; a daemon started after \
                     this one is killed may not find every export",
                    self.list.display()
                );
            }
        }
    }
}

/// A list of exports as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    dir: PathBuf,
    exports: BTreeMap<String, u64>,
}

/// Percent-encodes bytes outside printable ASCII, and `%`.
fn encode_bytes(bytes: &[u8], out: &mut String) {
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode_bytes(field: &str) -> Option<Vec<u8>> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else if bytes[i].is_ascii_graphic() {
            out.push(bytes[i]);
            i += 1;
        } else {
            return None;
        }
    }
    Some(out)
}

/// The list's text:
///
/// ```text
/// nsproxyfs-exports 1
/// dir /run/netns
/// export web 4026532240
/// export web.db 4026532311
/// end
/// ```
fn encode_list(dir: &Path, exports: &BTreeMap<String, u64>) -> String {
    let mut out = format!("{MAGIC} {VERSION}\ndir ");
    encode_bytes(dir.as_os_str().as_bytes(), &mut out);
    out.push('\n');
    for (name, ino) in exports {
        out.push_str("export ");
        encode_bytes(name.as_bytes(), &mut out);
        let _ = writeln!(out, " {ino}");
    }
    out.push_str("end\n");
    out
}

/// Parses a list; total (never panics). Names must be what [`wanted`] can
/// produce: non-empty, at most [`MAX_NAME`] bytes, no `/`, not `.` or `..`.
fn parse_list(text: &str) -> Result<Listed, ListError> {
    let mut lines = text.split_terminator('\n');
    if lines.next() != Some(&format!("{MAGIC} {VERSION}")) {
        return Err(ListError::Version);
    }
    let dir = lines
        .next()
        .and_then(|l| l.strip_prefix("dir "))
        .and_then(decode_bytes)
        .map(|b| PathBuf::from(std::ffi::OsStr::from_bytes(&b)))
        .filter(|d| d.is_absolute())
        .ok_or(ListError::NoDir)?;
    let mut exports = BTreeMap::new();
    for (n, line) in lines.enumerate() {
        if line == "end" {
            return Ok(Listed { dir, exports });
        }
        let bad = || ListError::Malformed(n + 3);
        let mut fields = line.split(' ');
        let (Some("export"), Some(name), Some(ino), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad());
        };
        let name = decode_bytes(name)
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_NAME
                    && !s.contains(['/', '\0'])
                    && s != "."
                    && s != ".."
            })
            .ok_or_else(bad)?;
        let ino: u64 = ino
            .parse()
            .ok()
            .filter(|_| ino.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?;
        exports.insert(name, ino);
    }
    Err(ListError::Truncated)
}

/// Why the list of exports cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// Reading the file failed.
    #[error("{0}")]
    Read(io::Error),
    /// Not text.
    #[error("not text")]
    NotText,
    /// Not a list, or of another version.
    #[error("not a list of exports of this version")]
    Version,
    /// No directory on line 2.
    #[error("line 2: no directory")]
    NoDir,
    /// A malformed line (its number).
    #[error("line {0}: malformed")]
    Malformed(usize),
    /// No end line.
    #[error("the list is cut short (no end line)")]
    Truncated,
}

/// Why `--netns-export` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The directory cannot be resolved, made shared, or read.
    #[error("netns export directory {}: {source}", dir.display())]
    Dir {
        /// The directory, as given.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The directory cannot be made.
    #[error("netns export directory {}: cannot make it: {source}", dir.display())]
    Make {
        /// The directory, as given.
        dir: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The directory lies inside the mount point.
    #[error(
        "netns export directory {} is inside the mount point {}",
        dir.display(),
        mountpoint.display()
    )]
    InMount {
        /// The directory, as given.
        dir: PathBuf,
        /// The mount point.
        mountpoint: PathBuf,
    },
    /// The directory overlaps the state directory.
    #[error(
        "netns export directory {} overlaps the state directory {}",
        dir.display(),
        state_dir.display()
    )]
    InState {
        /// The directory, as given.
        dir: PathBuf,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// Something other than a directory is there (what it is).
    #[error(
        "netns export directory {} is {what}; it must be a directory (it is made if missing)",
        dir.display()
    )]
    NotADir {
        /// The directory, as given.
        dir: PathBuf,
        /// What is there instead.
        what: &'static str,
    },
    /// The directory cannot be made a shared mount point.
    #[error("netns export directory {}: {step}: {source}", dir.display())]
    Share {
        /// The directory.
        dir: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The device of net namespace files cannot be read.
    #[error("/proc/self/ns/net: {0}")]
    Nsfs(io::Error),
}

/// Reads the list in `state_dir`: `None` if there is none.
fn read_list(state_dir: &StateDir) -> Result<Option<Listed>, ListError> {
    match state_dir.read(LIST) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ListError::Read(e)),
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|_| ListError::NotText)?;
            parse_list(&text).map(Some)
        }
    }
}

/// `dir` as an absolute path with every part that exists resolved (as
/// `canonicalize` would) and the missing rest appended as written.
fn planned(dir: &Path) -> io::Result<PathBuf> {
    let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
    let dir = std::path::absolute(dir)?;
    let mut missing = Vec::new();
    let mut at = dir.as_path();
    loop {
        match std::fs::canonicalize(at) {
            Ok(mut out) => {
                out.extend(missing.iter().rev());
                return Ok(out);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(at.file_name().ok_or_else(invalid)?);
                at = at.parent().ok_or_else(invalid)?;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Checks a `--netns-export` directory before the daemon starts: it must
/// lie outside the mount point and the state directory (both canonical),
/// is made (mode 0755) if missing, and must be a directory. Returns it
/// canonical.
pub fn check_dir(dir: &Path, mountpoint: &Path, state_dir: &Path) -> Result<PathBuf, ExportError> {
    let failed = |source| ExportError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    let planned = planned(dir).map_err(failed)?;
    if planned.starts_with(mountpoint) {
        return Err(ExportError::InMount {
            dir: dir.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
        });
    }
    if planned.starts_with(state_dir) || state_dir.starts_with(&planned) {
        return Err(ExportError::InState {
            dir: dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
        });
    }
    match std::fs::metadata(&planned) {
        Ok(md) if md.is_dir() => {}
        Ok(md) => {
            let what = if md.file_type().is_file() {
                "a regular file"
            } else if md.file_type().is_char_device() || md.file_type().is_block_device() {
                "a device"
            } else {
                "not a directory"
            };
            let dir = dir.to_path_buf();
            return Err(ExportError::NotADir { dir, what });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(&planned)
                .map_err(|source| ExportError::Make {
                    dir: dir.to_path_buf(),
                    source,
                })?;
        }
        Err(e) => return Err(failed(e)),
    }
    std::fs::canonicalize(&planned).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NsRef;

    fn net(ino: u64) -> NsRef {
        NsRef {
            kind: Kind::Net,
            ino,
        }
    }

    fn tree() -> Tree {
        Tree::new([1, 2, 3, 4, 5, 6, 7, 8])
    }

    fn names(w: &Wanted) -> Vec<(&str, &str, u64)> {
        w.exports
            .iter()
            .map(|(n, w)| (n.as_str(), w.path.as_str(), w.ino))
            .collect()
    }

    #[test]
    fn own_net_is_exported_flattened_and_inheritors_are_not() {
        let mut t = tree();
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        let db = t.mkdir(web, "db").unwrap();
        let app = t.mkdir(web, "app").unwrap();
        t.mkdir(app, "deep").unwrap();
        let uts_only = t.mkdir(Tree::ROOT, "uts-only").unwrap();
        t.link(
            uts_only,
            NsRef {
                kind: Kind::Uts,
                ino: 99,
            },
        )
        .unwrap();
        t.link(web, net(100)).unwrap();
        t.link(db, net(101)).unwrap();
        let w = wanted(&t, |_| false);
        assert_eq!(
            names(&w),
            vec![("web", "/web", 100), ("web.db", "/web/db", 101)]
        );
        assert!(w.skipped.is_empty());
        // The root binds the daemon's net namespace: never exported.
        assert!(w.exports.values().all(|e| e.container != Tree::ROOT));
    }

    #[test]
    fn a_shared_namespace_is_exported_under_every_name() {
        let mut t = tree();
        let a = t.mkdir(Tree::ROOT, "a").unwrap();
        let b = t.mkdir(Tree::ROOT, "b").unwrap();
        t.link(a, net(100)).unwrap();
        t.link(b, net(100)).unwrap();
        assert_eq!(
            names(&wanted(&t, |_| false)),
            vec![("a", "/a", 100), ("b", "/b", 100)]
        );
    }

    #[test]
    fn collisions_go_to_the_shallower_then_the_first_path() {
        let mut t = tree();
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        let db = t.mkdir(web, "db").unwrap();
        let flat = t.mkdir(Tree::ROOT, "web.db").unwrap();
        t.link(db, net(101)).unwrap();
        t.link(flat, net(102)).unwrap();
        let w = wanted(&t, |_| false);
        assert_eq!(names(&w), vec![("web.db", "/web.db", 102)]);
        assert_eq!(
            w.skipped,
            vec![Skipped {
                path: "/web/db".into(),
                name: "web.db".into(),
                why: Unexported::Taken {
                    by: "/web.db".into()
                },
            }]
        );
        // Without the shallower one, the nested one gets the name.
        t.rmdir(Tree::ROOT, "web.db").unwrap();
        assert_eq!(
            names(&wanted(&t, |_| false)),
            vec![("web.db", "/web/db", 101)]
        );

        // Equally deep: the path that sorts first ('.' before '/').
        let mut t = tree();
        let a_b = t.mkdir(Tree::ROOT, "a.b").unwrap();
        let a = t.mkdir(Tree::ROOT, "a").unwrap();
        let c = t.mkdir(a_b, "c").unwrap();
        let b_c = t.mkdir(a, "b.c").unwrap();
        t.link(b_c, net(201)).unwrap();
        t.link(c, net(202)).unwrap();
        let w = wanted(&t, |_| false);
        assert_eq!(names(&w), vec![("a.b.c", "/a.b/c", 202)]);
        assert_eq!(w.skipped.len(), 1);
        assert_eq!(w.skipped[0].path, "/a/b.c");
    }

    #[test]
    fn names_ip_cannot_take_are_skipped() {
        let mut t = tree();
        let mut parent = Tree::ROOT;
        let long = "x".repeat(100);
        let mut ids = Vec::new();
        for _ in 0..3 {
            parent = t.mkdir(parent, &long).unwrap();
            ids.push(parent);
        }
        for &id in &ids {
            t.link(id, net(300 + id.0)).unwrap();
        }
        let tab = t.mkdir(Tree::ROOT, "tab\there").unwrap();
        t.link(tab, net(400)).unwrap();
        let w = wanted(&t, |_| false);
        // 100 and 201 bytes fit; 302 does not.
        assert_eq!(w.exports.len(), 2);
        let why: Vec<&Unexported> = w.skipped.iter().map(|s| &s.why).collect();
        assert_eq!(why.len(), 2);
        assert!(why.contains(&&Unexported::TooLong));
        assert!(why.contains(&&Unexported::Unprintable));
    }

    #[test]
    fn skip_leaves_containers_out() {
        let mut t = tree();
        let keep = t.mkdir(Tree::ROOT, "keep").unwrap();
        let reserved = t.mkdir(Tree::ROOT, "reserved").unwrap();
        let below = t.mkdir(reserved, "x").unwrap();
        for (id, ino) in [(keep, 1000), (reserved, 1001), (below, 1002)] {
            t.link(id, net(ino)).unwrap();
        }
        let in_reserved = |id: ContainerId| t.ancestors(id).any(|a| a == reserved);
        let w = wanted(&t, in_reserved);
        assert_eq!(names(&w), vec![("keep", "/keep", 1000)]);
        assert!(w.skipped.is_empty(), "skipped ones are not reported");
    }

    #[test]
    fn the_list_reads_back_and_bad_lists_are_refused() {
        let mut exports = BTreeMap::new();
        exports.insert("web".to_owned(), 4026532240u64);
        exports.insert("my box.100%".to_owned(), 7);
        let dir = Path::new("/run/net ns");
        let text = encode_list(dir, &exports);
        assert!(text.contains("export my%20box.100%25 7\n"), "{text}");
        let listed = parse_list(&text).unwrap();
        assert_eq!(listed.dir, dir);
        assert_eq!(listed.exports, exports);
        assert_eq!(
            parse_list(&encode_list(dir, &BTreeMap::new()))
                .unwrap()
                .exports
                .len(),
            0
        );
        for bad in [
            "",
            "nsproxyfs-exports 2\ndir /x\nend\n",
            "nsproxyfs-exports 1\ndir x\nend\n",
            "nsproxyfs-exports 1\ndir /x\nexport web 1\n",
            "nsproxyfs-exports 1\ndir /x\nexport web\nend\n",
            "nsproxyfs-exports 1\ndir /x\nexport web -1\nend\n",
            "nsproxyfs-exports 1\ndir /x\nexport a%2Fb 1\nend\n",
            "nsproxyfs-exports 1\ndir /x\nexport .. 1\nend\n",
            "nsproxyfs-exports 1\ndir /x\nexport %zz 1\nend\n",
        ] {
            assert!(parse_list(bad).is_err(), "{bad:?}");
        }
    }
}

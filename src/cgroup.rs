//! Control groups: the host's hierarchies, a process's membership in each,
//! and moving a process into a set of cgroups with exactly the rights the
//! kernel would demand of the caller.
//!
//! A host has the unified hierarchy of cgroup v2, v1 hierarchies (each
//! bound to some controllers, or to a name such as `name=systemd`), or both
//! ("hybrid"). [`Hierarchies`] finds where each is mounted, from the
//! daemon's mount table and its own `/proc/self/cgroup`. A [`Membership`]
//! is one cgroup per hierarchy, in the format of `/proc/PID/cgroup`
//! (`ID:CONTROLLERS:PATH`, `0::PATH` for the unified hierarchy), so a copy
//! of that file is a valid membership.
//!
//! Joining is two steps. [`Targets::open`] opens the `cgroup.procs` file of
//! each cgroup for writing *as the caller*: a thread that has joined the
//! caller's cgroup namespace and taken its credentials (see
//! [`crate::ns::creds`]) walks the path, so the kernel checks search and
//! write access for the caller. [`Targets::join`] then writes the pid
//! through those descriptors. The kernel checks a migration at write time
//! against the credentials (and cgroup namespace) the file was *opened*
//! with, not the writer's: for v2, write access to the `cgroup.procs` of
//! the common ancestor of the source and destination cgroups (the
//! delegation rule, `cgroup_procs_write_permission`), for v1, an effective
//! uid of root or of the moved process's real or saved uid
//! (`__cgroup1_procs_write`). Writing through the caller's descriptors so
//! gives exactly the answer the caller would get writing the pid itself.
//!
//! A join is all or nothing: when one hierarchy refuses, the process is
//! written back into its previous cgroup in every hierarchy already
//! changed. [`Joined::undo`] does the same after a successful join, for a
//! move whose other part (the namespaces) failed. Undoing restores a
//! placement the process had, so it is done with the daemon's own rights.

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC};

use crate::ns::creds::{self, Credentials, CredsError};

/// The file a process is moved into a cgroup through.
pub const PROCS: &str = "cgroup.procs";

/// A hierarchy, named as `/proc/PID/cgroup` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hierarchy {
    /// The unified hierarchy of cgroup v2 (`0::PATH`).
    Unified,
    /// A v1 hierarchy, by the controllers bound to it as the kernel lists
    /// them (`cpu,cpuacct`, `pids`, `name=systemd`).
    V1(String),
}

impl fmt::Display for Hierarchy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hierarchy::Unified => f.write_str("unified"),
            Hierarchy::V1(c) => f.write_str(c),
        }
    }
}

/// One cgroup: a hierarchy and a path in it, from the hierarchy's root as
/// the daemon's cgroup namespace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    /// The hierarchy id `/proc/PID/cgroup` gives (0 for the unified one).
    pub id: u32,
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// The path, starting with `/`.
    pub path: String,
}

impl fmt::Display for Cgroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let controllers = match &self.hierarchy {
            Hierarchy::Unified => "",
            Hierarchy::V1(c) => c,
        };
        write!(f, "{}:{controllers}:{}", self.id, self.path)
    }
}

/// Why a cgroup operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// A line is not `ID:CONTROLLERS:/PATH` with a clean path.
    #[error("line {line} is not a cgroup line (ID:CONTROLLERS:/PATH): {text:?}")]
    BadLine {
        /// The line number, from 1.
        line: usize,
        /// The line.
        text: String,
    },
    /// Two lines name the same hierarchy.
    #[error("the {0} hierarchy is named twice")]
    Twice(Hierarchy),
    /// The hierarchy is not mounted where the daemon can reach it.
    #[error("the {0} hierarchy is not mounted")]
    NotMounted(Hierarchy),
    /// The cgroup lies outside every mount of its hierarchy.
    #[error("{0} lies outside every mount of its hierarchy")]
    Unreachable(Cgroup),
    /// Opening the cgroup's `cgroup.procs` failed.
    #[error("cannot open cgroup.procs of {cgroup}: {}", io::Error::from_raw_os_error(*.errno))]
    Open {
        /// The cgroup.
        cgroup: Cgroup,
        /// The kernel's errno.
        errno: i32,
    },
    /// The kernel refused to move the process into the cgroup.
    #[error("cannot move process {pid} into {cgroup}: {}", io::Error::from_raw_os_error(*.errno))]
    Write {
        /// The process.
        pid: i32,
        /// The cgroup.
        cgroup: Cgroup,
        /// The kernel's errno.
        errno: i32,
    },
    /// The process is gone.
    #[error("process {0} is gone")]
    Gone(i32),
    /// A path of the caller's cgroup namespace that the daemon cannot
    /// place: the caller (process given) is outside its namespace's root,
    /// or in no cgroup of that hierarchy.
    #[error("the cgroup namespace of process {0} does not hold its own cgroups")]
    OutsideNamespace(i32),
    /// The caller's credentials could not be taken.
    #[error(transparent)]
    Creds(#[from] CredsError),
    /// Reading the process tables failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// One cgroup per hierarchy, as `/proc/PID/cgroup` lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// Sorted by hierarchy, each hierarchy once.
    cgroups: Vec<Cgroup>,
}

impl Membership {
    /// The membership of process `pid` (daemon pid namespace), paths as
    /// the daemon's cgroup namespace sees them.
    pub fn of_process(pid: i32) -> Result<Membership, CgroupError> {
        let text = crate::procfs::cgroup_text(pid).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT | libc::ESRCH) => CgroupError::Gone(pid),
            _ => CgroupError::Io(e),
        })?;
        Membership::parse(&text)
    }

    /// Parses `/proc/PID/cgroup` lines: `ID:CONTROLLERS:PATH`, with an
    /// empty CONTROLLERS for the unified hierarchy (whose id is 0). Paths
    /// are absolute, without `.`, `..` or empty components. Blank lines
    /// are skipped.
    pub fn parse(text: &str) -> Result<Membership, CgroupError> {
        let mut cgroups: Vec<Cgroup> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || CgroupError::BadLine {
                line: n + 1,
                text: line.to_owned(),
            };
            let cgroup = parse_line(line).ok_or_else(bad)?;
            if cgroups.iter().any(|c| c.hierarchy == cgroup.hierarchy) {
                return Err(CgroupError::Twice(cgroup.hierarchy));
            }
            cgroups.push(cgroup);
        }
        cgroups.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
        Ok(Membership { cgroups })
    }

    /// A membership of these cgroups (the last one of a hierarchy wins).
    pub fn from_cgroups(list: impl IntoIterator<Item = Cgroup>) -> Membership {
        let mut cgroups: Vec<Cgroup> = Vec::new();
        for c in list {
            cgroups.retain(|o| o.hierarchy != c.hierarchy);
            cgroups.push(c);
        }
        cgroups.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
        Membership { cgroups }
    }

    /// The cgroup in `hierarchy`, if one is named.
    pub fn get(&self, hierarchy: &Hierarchy) -> Option<&Cgroup> {
        self.cgroups.iter().find(|c| &c.hierarchy == hierarchy)
    }

    /// The cgroups, the unified hierarchy's first.
    pub fn iter(&self) -> impl Iterator<Item = &Cgroup> {
        self.cgroups.iter()
    }

    /// Whether no cgroup is named.
    pub fn is_empty(&self) -> bool {
        self.cgroups.is_empty()
    }
}

impl fmt::Display for Membership {
    /// One line per cgroup, each ending in a newline, as parsed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.cgroups {
            writeln!(f, "{c}")?;
        }
        Ok(())
    }
}

fn parse_line(line: &str) -> Option<Cgroup> {
    let mut fields = line.splitn(3, ':');
    let id: u32 = fields.next()?.parse().ok()?;
    let controllers = fields.next()?;
    let path = fields.next()?;
    let hierarchy = match (id, controllers) {
        (0, "") => Hierarchy::Unified,
        (0, _) | (_, "") => return None,
        (_, c) if c.split(',').all(|p| !p.is_empty()) => Hierarchy::V1(c.to_owned()),
        _ => return None,
    };
    clean_path(path).then(|| Cgroup {
        id,
        hierarchy,
        path: path.to_owned(),
    })
}

/// Whether `path` is `/` or `/A/B...` with no empty, `.` or `..`
/// component and no NUL.
fn clean_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    !path.contains('\0')
        && (rest.is_empty() || rest.split('/').all(|p| !matches!(p, "" | "." | "..")))
}

/// Where one hierarchy is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mounted {
    /// The hierarchy.
    pub hierarchy: Hierarchy,
    /// Its id in `/proc/PID/cgroup`.
    pub id: u32,
    /// The mount point.
    pub mount_point: PathBuf,
    /// The cgroup at the mount's root (`/` unless a subtree is mounted).
    pub root: String,
}

/// The hierarchies of the host that the daemon can reach, with where each
/// is mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// Every mount of a hierarchy the daemon is in, in mount table order.
    mounts: Vec<Mounted>,
}

impl Hierarchies {
    /// The daemon's hierarchies, from `/proc/self/mountinfo` and
    /// `/proc/self/cgroup`.
    pub fn of_host() -> Result<Hierarchies, CgroupError> {
        let own = Membership::parse(&crate::procfs::cgroup_text(std::process::id() as i32)?)?;
        let mountinfo = crate::procfs::read_mountinfo()?;
        Ok(Hierarchies::parse(&mountinfo, &own))
    }

    /// The mounts of `mountinfo` (a `/proc/PID/mountinfo` text) that hold
    /// a hierarchy of `own` (that process's membership, which names every
    /// active hierarchy): `cgroup2` for the unified one, `cgroup` whose
    /// mount options hold all the controllers of a v1 one.
    pub fn parse(mountinfo: &[u8], own: &Membership) -> Hierarchies {
        let mut mounts = Vec::new();
        for line in mountinfo.split(|&b| b == b'\n') {
            let Some(m) = MountLine::parse(line) else {
                continue;
            };
            let found = match m.fstype {
                b"cgroup2" => own.get(&Hierarchy::Unified),
                b"cgroup" => own.iter().find(|c| match &c.hierarchy {
                    Hierarchy::V1(names) => names
                        .split(',')
                        .all(|n| m.options.split(|&b| b == b',').any(|o| o == n.as_bytes())),
                    Hierarchy::Unified => false,
                }),
                _ => None,
            };
            let Some(c) = found else { continue };
            let Ok(root) = String::from_utf8(crate::procfs::unescape_mountinfo(m.root)) else {
                continue;
            };
            if !clean_path(&root) {
                continue;
            }
            let point = crate::procfs::unescape_mountinfo(m.mount_point);
            mounts.push(Mounted {
                hierarchy: c.hierarchy.clone(),
                id: c.id,
                mount_point: PathBuf::from(std::ffi::OsString::from_vec(point)),
                root,
            });
        }
        Hierarchies { mounts }
    }

    /// Each hierarchy once (its first mount), the unified one first.
    pub fn iter(&self) -> impl Iterator<Item = &Mounted> {
        let mut seen: Vec<&Hierarchy> = Vec::new();
        let mut list: Vec<&Mounted> = self
            .mounts
            .iter()
            .filter(|m| {
                let new = !seen.contains(&&m.hierarchy);
                seen.push(&m.hierarchy);
                new
            })
            .collect();
        list.sort_by(|a, b| a.hierarchy.cmp(&b.hierarchy));
        list.into_iter()
    }

    /// The mount of `hierarchy` whose root holds the cgroup `path`, the
    /// widest first, and `path` relative to that root (`.` for the root
    /// itself).
    pub fn locate(&self, cgroup: &Cgroup) -> Result<(&Mounted, String), CgroupError> {
        let mut any = false;
        let mut best: Option<(&Mounted, String)> = None;
        for m in self
            .mounts
            .iter()
            .filter(|m| m.hierarchy == cgroup.hierarchy)
        {
            any = true;
            let Some(rel) = below(&m.root, &cgroup.path) else {
                continue;
            };
            if best
                .as_ref()
                .is_none_or(|(b, _)| m.root.len() < b.root.len())
            {
                best = Some((m, rel));
            }
        }
        match best {
            Some(found) => Ok(found),
            None if any => Err(CgroupError::Unreachable(cgroup.clone())),
            None => Err(CgroupError::NotMounted(cgroup.hierarchy.clone())),
        }
    }

    /// The cgroups of `m` whose hierarchy is mounted here (a discovered
    /// process's membership may name hierarchies the host does not mount).
    pub fn reachable(&self, m: &Membership) -> Membership {
        Membership::from_cgroups(m.iter().filter(|c| self.locate(c).is_ok()).cloned())
    }

    /// The directory of `cgroup` in the daemon's mount namespace.
    pub fn dir_of(&self, cgroup: &Cgroup) -> Result<PathBuf, CgroupError> {
        let (m, rel) = self.locate(cgroup)?;
        Ok(m.mount_point.join(rel))
    }

    /// The cgroup whose directory (in the daemon's mount namespace) is
    /// `dir`, if it lies in a mounted hierarchy.
    pub fn cgroup_at(&self, dir: &Path) -> Option<Cgroup> {
        self.mounts.iter().find_map(|m| {
            let rel = dir.strip_prefix(&m.mount_point).ok()?.to_str()?;
            let path = match (m.root.as_str(), rel) {
                (root, "") => root.to_owned(),
                ("/", rel) => format!("/{rel}"),
                (root, rel) => format!("{root}/{rel}"),
            };
            clean_path(&path).then(|| Cgroup {
                id: m.id,
                hierarchy: m.hierarchy.clone(),
                path,
            })
        })
    }
}

/// `path` relative to `root` when it lies at or below it: `.` for `root`
/// itself, `A/B` below it.
fn below(root: &str, path: &str) -> Option<String> {
    if root == "/" {
        let rel = path.trim_start_matches('/');
        return Some(if rel.is_empty() {
            ".".into()
        } else {
            rel.into()
        });
    }
    match path.strip_prefix(root)? {
        "" => Some(".".into()),
        rest => rest.strip_prefix('/').map(str::to_owned),
    }
}

/// The fields of one mountinfo line that name a cgroup mount.
struct MountLine<'a> {
    root: &'a [u8],
    mount_point: &'a [u8],
    fstype: &'a [u8],
    options: &'a [u8],
}

impl<'a> MountLine<'a> {
    /// `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE
    /// SOURCE SUPEROPTIONS`.
    fn parse(line: &'a [u8]) -> Option<MountLine<'a>> {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let dash = fields.iter().position(|&f| f == b"-")?;
        Some(MountLine {
            root: fields.get(3)?,
            mount_point: fields.get(4)?,
            fstype: fields.get(dash + 1)?,
            options: fields.get(dash + 3)?,
        })
    }
}

/// Whom a join is checked for: the credentials and cgroup namespace the
/// `cgroup.procs` files are opened with.
#[derive(Debug)]
pub struct Caller {
    /// The caller's credentials.
    pub creds: Credentials,
    /// The caller's cgroup namespace, when it is not the daemon's (the
    /// kernel checks, under `nsdelegate`, that both cgroups are visible
    /// from the opener's cgroup namespace).
    pub cgroup_ns: Option<CgroupNs>,
}

/// A cgroup namespace other than the daemon's.
#[derive(Debug)]
pub struct CgroupNs {
    /// The namespace, open.
    pub fd: OwnedFd,
    /// A thread in it (daemon pid namespace), whose cgroups lie below the
    /// namespace's root: the caller's own.
    pub member: u32,
}

impl Caller {
    /// The caller whose thread is `tid` (daemon pid namespace).
    pub fn of_thread(tid: u32) -> Result<Caller, CgroupError> {
        Caller::with_credentials(tid, Credentials::of_thread(tid)?)
    }

    /// The caller whose thread is `tid` (daemon pid namespace), with its
    /// credentials `creds` read already.
    pub fn with_credentials(tid: u32, creds: Credentials) -> Result<Caller, CgroupError> {
        let path = format!("/proc/{tid}/ns/cgroup");
        let theirs = std::fs::metadata(&path).map_err(|_| CgroupError::Gone(tid as i32))?;
        let ours = std::fs::metadata("/proc/self/ns/cgroup")?;
        let cgroup_ns = if theirs.ino() == ours.ino() && theirs.dev() == ours.dev() {
            None
        } else {
            let fd = File::open(&path).map_err(|_| CgroupError::Gone(tid as i32))?;
            Some(CgroupNs {
                fd: fd.into(),
                member: tid,
            })
        };
        Ok(Caller { creds, cgroup_ns })
    }

    /// The daemon itself.
    pub fn daemon() -> Result<Caller, CgroupError> {
        let creds = Credentials::daemon()
            .cloned()
            .ok_or_else(|| io::Error::other("the daemon's credentials are unreadable"))?;
        Ok(Caller {
            creds,
            cgroup_ns: None,
        })
    }

    /// `written`, with paths as the caller's cgroup namespace shows them
    /// (what it reads in `/proc/PID/cgroup`), with paths as the daemon's
    /// shows the same cgroups: the namespace's root in each hierarchy, as
    /// the daemon sees it, put in front. The root is found from the
    /// caller's own cgroups, read once from each side. A hierarchy the
    /// caller is in no cgroup of, or whose namespace root lies above the
    /// caller's cgroup there (the caller moved out of it), gives
    /// [`CgroupError::OutsideNamespace`].
    pub fn to_daemon_view(&self, written: &Membership) -> Result<Membership, CgroupError> {
        let Some(ns) = &self.cgroup_ns else {
            return Ok(written.clone());
        };
        let outside = || CgroupError::OutsideNamespace(ns.member as i32);
        let ours = Membership::of_process(ns.member as i32)?;
        let member = ns.member as i32;
        let text = in_namespace(&ns.fd, || crate::procfs::cgroup_text(member))??;
        let theirs = Membership::parse(&text).map_err(|_| outside())?;
        let mut out = Vec::new();
        for c in written.iter() {
            let (Some(d), Some(t)) = (ours.get(&c.hierarchy), theirs.get(&c.hierarchy)) else {
                return Err(outside());
            };
            let root = if t.path == "/" {
                d.path.as_str()
            } else {
                // Both paths start with `/`: a suffix ends at a component.
                let rest = d.path.strip_suffix(&t.path).ok_or_else(outside)?;
                if rest.is_empty() { "/" } else { rest }
            };
            let path = match (root, c.path.as_str()) {
                ("/", p) => p.to_owned(),
                (r, "/") => r.to_owned(),
                (r, p) => format!("{r}{p}"),
            };
            out.push(Cgroup { path, ..c.clone() });
        }
        Ok(Membership::from_cgroups(out))
    }

    /// Checks that each cgroup of `m` (paths as the daemon's cgroup
    /// namespace shows them) is a directory the caller can reach: its
    /// hierarchy is mounted, and the caller's own walk to it succeeds (the
    /// kernel's errno otherwise, `ENOENT` for one that does not exist).
    pub fn reach(&self, hierarchies: &Hierarchies, m: &Membership) -> Result<(), CgroupError> {
        let mut places = Vec::new();
        for c in m.iter() {
            let (mount, rel) = hierarchies.locate(c)?;
            places.push((c.clone(), mount.mount_point.clone(), rel));
        }
        self.run(|| {
            places.iter().try_for_each(|(c, point, rel)| {
                open_beneath(c, point, Path::new(rel), OFlag::O_PATH | OFlag::O_DIRECTORY)
                    .map(drop)
                    .map_err(|errno| CgroupError::Open {
                        cgroup: c.clone(),
                        errno,
                    })
            })
        })?
    }

    /// Runs `work` in the caller's cgroup namespace with its credentials.
    fn run<T: Send>(&self, work: impl FnOnce() -> T + Send) -> Result<T, CgroupError> {
        let Some(ns) = &self.cgroup_ns else {
            return Ok(creds::as_caller(&self.creds, work)?);
        };
        // The thread `as_caller` starts from the joined one inherits its
        // cgroup namespace.
        in_namespace(&ns.fd, || creds::as_caller(&self.creds, work))?.map_err(CgroupError::from)
    }
}

/// Runs `work` on a thread made for it that has joined the cgroup
/// namespace `ns` (a cgroup namespace is joined per task: the daemon's
/// other threads stay where they are).
fn in_namespace<T: Send>(ns: &OwnedFd, work: impl FnOnce() -> T + Send) -> Result<T, CgroupError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWCGROUP)
                .map_err(|e| CgroupError::Io(e.into()))?;
            Ok(work())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the cgroup thread panicked").into()))
    })
}

/// One cgroup's `cgroup.procs`, open for writing by a caller.
#[derive(Debug)]
struct Target {
    cgroup: Cgroup,
    procs: File,
}

/// The `cgroup.procs` files of a membership, opened as a caller: writing a
/// pid through them is what the caller writing it would do.
#[derive(Debug)]
pub struct Targets {
    hierarchies: Hierarchies,
    targets: Vec<Target>,
}

impl Targets {
    /// Opens `cgroup.procs` of each cgroup of `wanted` for writing, as
    /// `caller`. The kernel checks search permission on the way and write
    /// permission on the file; the first refusal is returned with its
    /// errno.
    pub fn open(
        hierarchies: &Hierarchies,
        wanted: &Membership,
        caller: &Caller,
    ) -> Result<Targets, CgroupError> {
        let mut places = Vec::new();
        for c in wanted.iter() {
            let (m, rel) = hierarchies.locate(c)?;
            places.push((c.clone(), m.mount_point.clone(), rel));
        }
        let opened = caller.run(|| {
            places
                .iter()
                .map(|(c, point, rel)| {
                    open_procs(c, point, rel).map_err(|errno| CgroupError::Open {
                        cgroup: c.clone(),
                        errno,
                    })
                })
                .collect::<Result<Vec<File>, CgroupError>>()
        })??;
        let targets = places
            .into_iter()
            .zip(opened)
            .map(|((cgroup, _, _), procs)| Target { cgroup, procs })
            .collect();
        Ok(Targets {
            hierarchies: hierarchies.clone(),
            targets,
        })
    }

    /// Whether no cgroup is to be joined.
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    /// Each target cgroup with its open `cgroup.procs`, for a process
    /// that writes the pid itself (the injector holding the threads
    /// stopped): the kernel checks a write against the credentials the
    /// file was opened with, whoever holds the descriptor, so it can be
    /// passed on (`SCM_RIGHTS`) and written with [`write_pid`].
    pub fn files(&self) -> impl Iterator<Item = (&Cgroup, BorrowedFd<'_>)> {
        self.targets.iter().map(|t| (&t.cgroup, t.procs.as_fd()))
    }

    /// The first target cgroup that is frozen or being frozen (a paused
    /// container): v1 `freezer.state` other than `THAWED`, v2
    /// `cgroup.freeze` set or `cgroup.events` saying `frozen 1` (which
    /// also covers a frozen ancestor). A process joining it stops there.
    pub fn frozen(&self) -> Option<&Cgroup> {
        self.targets.iter().map(|t| &t.cgroup).find(|c| {
            self.hierarchies
                .dir_of(c)
                .is_ok_and(|dir| is_frozen(&c.hierarchy, &dir))
        })
    }

    /// Moves process `pid` (daemon pid namespace; all its threads) into
    /// every target cgroup. When the kernel refuses one, the process goes
    /// back into its previous cgroup in every hierarchy already changed,
    /// and the refusal is returned with the kernel's errno.
    pub fn join(&self, pid: i32) -> Result<Joined, JoinError> {
        let before = Membership::of_process(pid).map_err(JoinError::alone)?;
        let mut joined = Joined {
            pid,
            hierarchies: self.hierarchies.clone(),
            previous: Vec::new(),
        };
        for t in &self.targets {
            if let Err(errno) = write_pid(t.procs.as_fd(), pid) {
                let error = match errno {
                    libc::ESRCH => CgroupError::Gone(pid),
                    _ => CgroupError::Write {
                        pid,
                        cgroup: t.cgroup.clone(),
                        errno,
                    },
                };
                let left = joined.undo_all();
                return Err(JoinError { error, left });
            }
            if let Some(was) = before.get(&t.cgroup.hierarchy)
                && was.path != t.cgroup.path
            {
                joined.previous.push(was.clone());
            }
        }
        // The kernel skips an exiting task without an error: a process
        // that died meanwhile joined nothing.
        let gone = crate::procfs::Stat::read(pid).map_or(true, |s| s.is_exiting());
        if gone {
            return Err(JoinError::alone(CgroupError::Gone(pid)));
        }
        Ok(joined)
    }
}

/// A join that failed.
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct JoinError {
    /// Why it failed.
    pub error: CgroupError,
    /// The cgroups the process could not be moved back out of, each with
    /// why (empty when the rollback succeeded).
    pub left: Vec<(Cgroup, CgroupError)>,
}

impl JoinError {
    fn alone(error: CgroupError) -> JoinError {
        JoinError {
            error,
            left: Vec::new(),
        }
    }
}

/// A process moved into cgroups, with where it was before: kept as it is
/// when dropped, or moved back with [`Joined::undo`].
#[derive(Debug)]
#[must_use = "a join is undone with `undo` or kept by dropping it"]
pub struct Joined {
    pid: i32,
    hierarchies: Hierarchies,
    /// The previous cgroup in each hierarchy that changed.
    previous: Vec<Cgroup>,
}

impl Joined {
    /// Puts the process back into its previous cgroups, with the daemon's
    /// rights; the cgroups that could not be restored, with why.
    pub fn undo(mut self) -> Result<(), Vec<(Cgroup, CgroupError)>> {
        let left = self.undo_all();
        if left.is_empty() { Ok(()) } else { Err(left) }
    }

    /// The cgroups the process was in before, in the hierarchies where
    /// the join changed it.
    pub fn previous(&self) -> &[Cgroup] {
        &self.previous
    }

    fn undo_all(&mut self) -> Vec<(Cgroup, CgroupError)> {
        let mut left = Vec::new();
        for c in std::mem::take(&mut self.previous) {
            if let Err(e) = self.restore(&c) {
                left.push((c, e));
            }
        }
        left
    }

    fn restore(&self, c: &Cgroup) -> Result<(), CgroupError> {
        let (m, rel) = self.hierarchies.locate(c)?;
        let procs = open_procs(c, &m.mount_point, &rel).map_err(|errno| CgroupError::Open {
            cgroup: c.clone(),
            errno,
        })?;
        write_pid(procs.as_fd(), self.pid).map_err(|errno| CgroupError::Write {
            pid: self.pid,
            cgroup: c.clone(),
            errno,
        })
    }
}

/// Whether the cgroup at `dir` of `hierarchy` is frozen or freezing.
fn is_frozen(hierarchy: &Hierarchy, dir: &Path) -> bool {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    match hierarchy {
        Hierarchy::Unified => {
            read("cgroup.freeze").trim() == "1"
                || read("cgroup.events")
                    .lines()
                    .any(|l| l.trim() == "frozen 1")
        }
        // Only the freezer hierarchy has the file.
        Hierarchy::V1(_) => {
            let state = read("freezer.state");
            !state.is_empty() && state.trim() != "THAWED"
        }
    }
}

/// Opens `REL/cgroup.procs` below the mount point `point` of `c`'s
/// hierarchy for writing, with the calling thread's credentials: the mount
/// point must be a cgroup file system of the right version, and the walk
/// below it neither follows a link nor leaves that mount.
fn open_procs(c: &Cgroup, point: &Path, rel: &str) -> Result<File, i32> {
    open_beneath(
        c,
        point,
        &Path::new(rel).join(PROCS),
        OFlag::O_WRONLY | OFlag::O_NOCTTY,
    )
}

/// Opens `rel` below the mount point `point` of `c`'s hierarchy with
/// `flags`, with the calling thread's credentials, as [`open_procs`] says.
fn open_beneath(c: &Cgroup, point: &Path, rel: &Path, flags: OFlag) -> Result<File, i32> {
    let dir = nix::fcntl::open(
        point,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| e as i32)?;
    let magic = nix::sys::statfs::fstatfs(&dir)
        .map_err(|e| e as i32)?
        .filesystem_type();
    let want = match c.hierarchy {
        Hierarchy::Unified => CGROUP2_SUPER_MAGIC,
        Hierarchy::V1(_) => CGROUP_SUPER_MAGIC,
    };
    if magic != want {
        return Err(libc::ENOENT);
    }
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_XDEV
            | ResolveFlag::RESOLVE_NO_SYMLINKS,
    );
    let fd = nix::fcntl::openat2(&dir, rel, how).map_err(|e| e as i32)?;
    Ok(File::from(fd))
}

/// Writes `pid` (in the writer's pid namespace) to an open `cgroup.procs`
/// in one write; the kernel's errno on refusal.
pub fn write_pid(procs: BorrowedFd<'_>, pid: i32) -> Result<(), i32> {
    let text = pid.to_string();
    match nix::unistd::write(procs, text.as_bytes()) {
        Ok(n) if n == text.len() => Ok(()),
        Ok(_) => Err(libc::EIO),
        Err(e) => Err(e as i32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hybrid host's table: v1 controllers under /sys/fs/cgroup/*, v2 at
    /// /sys/fs/cgroup/unified, and a second mount of a pids subtree.
    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 23 0:36 /lxc/web /srv/web\\040pids rw,relatime - cgroup cgroup rw,pids
51 23 0:39 / /mnt/x rw - cgroup cgroup rw,blkio
";

    const OWN: &str = "9:name=systemd:/\n8:pids:/\n2:cpu,cpuacct:/\n0::/\n";

    #[test]
    fn memberships_parse_and_print_as_proc_shows_them() {
        let m =
            Membership::parse("4:memory:/docker/abc\n0::/docker/abc\n1:name=systemd:/\n").unwrap();
        assert_eq!(m.iter().next().unwrap().hierarchy, Hierarchy::Unified);
        assert_eq!(
            m.get(&Hierarchy::V1("memory".into())).unwrap().path,
            "/docker/abc"
        );
        assert_eq!(
            m.to_string(),
            "0::/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/\n"
        );
        assert_eq!(Membership::parse(&m.to_string()).unwrap(), m);
        assert!(Membership::parse("\n").unwrap().is_empty());
        // A path may hold a colon: the third field is the rest of the line.
        assert_eq!(
            Membership::parse("0::/a:b").unwrap().cgroups[0].path,
            "/a:b"
        );
        for bad in [
            "0::docker",
            "0::/a/../b",
            "0::/a//b",
            "0::/a/.",
            "0:pids:/",
            "3::/",
            "x::/",
            "3:pids,:/",
            "0:/",
        ] {
            assert!(
                matches!(Membership::parse(bad), Err(CgroupError::BadLine { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            Membership::parse("0::/a\n0::/b"),
            Err(CgroupError::Twice(Hierarchy::Unified))
        ));
        let errno = crate::errno::of_cgroup(&Membership::parse("0::/a\n0::/b").unwrap_err());
        assert_eq!(errno, libc::EINVAL);
    }

    #[test]
    fn hierarchies_are_found_from_the_mount_table() {
        let own = Membership::parse(OWN).unwrap();
        let h = Hierarchies::parse(MOUNTINFO.as_bytes(), &own);
        let found: Vec<(String, &Path)> = h
            .iter()
            .map(|m| (m.hierarchy.to_string(), m.mount_point.as_path()))
            .collect();
        assert_eq!(
            found,
            [
                ("unified".to_owned(), Path::new("/sys/fs/cgroup/unified")),
                (
                    "cpu,cpuacct".to_owned(),
                    Path::new("/sys/fs/cgroup/cpu,cpuacct")
                ),
                (
                    "name=systemd".to_owned(),
                    Path::new("/sys/fs/cgroup/systemd")
                ),
                ("pids".to_owned(), Path::new("/sys/fs/cgroup/pids")),
            ]
        );
        let cg = |line: &str| Membership::parse(line).unwrap().cgroups.remove(0);
        assert_eq!(
            h.dir_of(&cg("8:pids:/lxc/web/a")).unwrap(),
            Path::new("/sys/fs/cgroup/pids/lxc/web/a")
        );
        assert_eq!(
            h.dir_of(&cg("0::/")).unwrap(),
            Path::new("/sys/fs/cgroup/unified/.")
        );
        // blkio is mounted, but the process is in no such hierarchy.
        assert!(matches!(
            h.dir_of(&cg("7:blkio:/")),
            Err(CgroupError::NotMounted(_))
        ));
        assert_eq!(
            h.cgroup_at(Path::new("/sys/fs/cgroup/pids/docker/x")),
            Some(cg("8:pids:/docker/x"))
        );
        assert_eq!(
            h.cgroup_at(Path::new("/srv/web pids/a")),
            Some(cg("8:pids:/lxc/web/a"))
        );
        // Only a subtree mount of the hierarchy: a cgroup outside it is
        // unreachable.
        let sub = MOUNTINFO
            .lines()
            .filter(|l| !l.contains("/sys/fs/cgroup/pids"))
            .collect::<Vec<_>>()
            .join("\n");
        let h = Hierarchies::parse(sub.as_bytes(), &own);
        assert_eq!(
            h.dir_of(&cg("8:pids:/lxc/web")).unwrap(),
            Path::new("/srv/web pids/.")
        );
        assert!(matches!(
            h.dir_of(&cg("8:pids:/lxc/other")),
            Err(CgroupError::Unreachable(_))
        ));
    }

    #[test]
    fn paths_below_a_root() {
        assert_eq!(below("/", "/").as_deref(), Some("."));
        assert_eq!(below("/", "/a/b").as_deref(), Some("a/b"));
        assert_eq!(below("/a", "/a").as_deref(), Some("."));
        assert_eq!(below("/a", "/a/b").as_deref(), Some("b"));
        assert_eq!(below("/a", "/ab"), None);
        assert_eq!(below("/a", "/"), None);
    }
}

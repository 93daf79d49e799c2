//! `nsproxyfs adopt PID DEST`: makes the namespace set of a running process
//! a container of one's own, named DEST.
//!
//! It is the file operation an admin could do by hand, found for them:
//! the process's set is looked up under the mount's `.discovered` (by the
//! inodes its `status` lists) and that directory is renamed to DEST, which
//! the filesystem turns into a container binding every kind in which the
//! set differs from DEST's parent (see `Tree::adopt`). Nothing is done
//! through a private channel, so the command needs exactly the rights a
//! `mv` would.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::procfs;
use crate::tree::DISCOVERED;

/// Why a process's set could not be adopted.
#[derive(Debug, Error)]
pub enum AdoptError {
    /// DEST's parent is not a directory of a mounted tree.
    #[error("{0} is not a container directory of a mounted nsproxyfs")]
    NotInMount(PathBuf),
    /// The mount shows no discovered containers.
    #[error("{0} was not mounted with --discover: there is nothing to adopt from")]
    NoDiscovery(PathBuf),
    /// No such process, or its namespaces cannot be read.
    #[error("no process {0} (or its namespaces cannot be read)")]
    NoProcess(i32),
    /// The process is in the root container's namespaces.
    #[error("process {0} is in the root container's namespaces: there is nothing to adopt")]
    RootSet(i32),
    /// A container of the user's already has the set.
    #[error("the namespaces of process {pid} are already the container {path}")]
    Named {
        /// The process.
        pid: i32,
        /// The container, as a path under the mount point.
        path: PathBuf,
    },
    /// The set did not show up under `.discovered` in time.
    #[error(
        "the namespaces of process {0} are not among the discovered ones (a set entered \
         without an exec is found at discovery's next full read of /proc, within 30 s)"
    )]
    NotDiscovered(i32),
    /// The rename was refused.
    #[error("mv {from} {to}: {source}")]
    Rename {
        /// The discovered container.
        from: PathBuf,
        /// DEST.
        to: PathBuf,
        /// The filesystem's answer.
        source: std::io::Error,
    },
}

/// The set `status` in `dir` lists, inodes in [`Kind::ALL`] order.
fn status_set(dir: &Path) -> Option<[u64; 8]> {
    let text = std::fs::read_to_string(dir.join("status")).ok()?;
    let lines = crate::service::parse_status(&text).ok()?;
    Some(std::array::from_fn(|i| lines[i].ino))
}

/// The top of the mount `dir` is in: the last directory going up that is
/// on the same device.
fn mount_root(dir: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(dir).ok()?.dev();
    let mut root = dir.to_path_buf();
    while let Some(up) = root.parent() {
        if std::fs::metadata(up).ok()?.dev() != dev {
            break;
        }
        root = up.to_path_buf();
    }
    root.join("status").is_file().then_some(root)
}

/// The user's container (outside `.discovered`) under `dir` whose set is
/// `set`, searched depth first.
fn named(dir: &Path, set: &[u64; 8], depth: usize) -> Option<PathBuf> {
    if depth > crate::tree::MAX_DEPTH {
        return None;
    }
    for entry in std::fs::read_dir(dir).ok()?.filter_map(Result::ok) {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = entry.path();
        if status_set(&path).as_ref() == Some(set) {
            return Some(path);
        }
        if let Some(found) = named(&path, set, depth + 1) {
            return Some(found);
        }
    }
    None
}

/// Adopts the set of process `pid` (as this process's pid namespace sees
/// it) as the container `dest`, waiting up to `wait` for discovery to show
/// the set; `waiting` is told once, with what is awaited, if it must wait.
/// Returns the discovered name it had.
pub fn run(
    pid: i32,
    dest: &Path,
    wait: Duration,
    waiting: impl FnOnce(&str),
) -> Result<String, AdoptError> {
    let dest = std::path::absolute(dest).map_err(|_| AdoptError::NotInMount(dest.into()))?;
    let parent = dest
        .parent()
        .filter(|_| dest.file_name().is_some())
        .ok_or_else(|| AdoptError::NotInMount(dest.clone()))?;
    let root = mount_root(parent).ok_or_else(|| AdoptError::NotInMount(parent.into()))?;
    let discovered = root.join(DISCOVERED);
    if !discovered.is_dir() {
        return Err(AdoptError::NoDiscovery(root));
    }
    let set = procfs::ns_set(pid as u32).ok_or(AdoptError::NoProcess(pid))?;
    if status_set(&root).as_ref() == Some(&set) {
        return Err(AdoptError::RootSet(pid));
    }
    let deadline = Instant::now() + wait;
    let mut waiting = Some(waiting);
    loop {
        let found = std::fs::read_dir(&discovered)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .find(|e| status_set(&e.path()).as_ref() == Some(&set));
        if let Some(entry) = found {
            let from = entry.path();
            return match std::fs::rename(&from, &dest) {
                Ok(()) => Ok(entry.file_name().to_string_lossy().into_owned()),
                Err(source) => Err(AdoptError::Rename {
                    from,
                    to: dest,
                    source,
                }),
            };
        }
        if let Some(path) = named(&root, &set, 0) {
            return Err(AdoptError::Named { pid, path });
        }
        if Instant::now() >= deadline {
            return Err(AdoptError::NotDiscovered(pid));
        }
        if let Some(say) = waiting.take() {
            say(&format!(
                "waiting up to {} s for the namespaces of process {pid} to appear in {}",
                wait.as_secs_f32(),
                discovered.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

//! The state directory: what the daemon keeps so that a restarted daemon,
//! even after SIGKILL, shows the same tree with the same namespaces.
//!
//! ```text
//! STATE/lock                   flock()ed by the running daemon
//! STATE/tree                   the record of the tree (crate::tree::record)
//! STATE/tree.tmp               the next record, while it is written
//! STATE/tree.corrupt-SECONDS   a record that could not be read, set aside
//! STATE/pins/KIND-INO          bind mounts of namespace files
//! STATE/exports                what --netns-export made (crate::export)
//! ```
//!
//! The record is replaced on every change by writing a temporary file,
//! fsync()ing it, renaming it over the record and fsync()ing the directory:
//! whatever happens, the record on disk is one whole version. This module
//! does that I/O, reopens recorded namespaces at start (from pins, or from
//! the keepers of pid and mount namespaces), and tidies pins; the format
//! itself is plain data in [`crate::tree::record`]. Every file is reached
//! through [`StateDir`], never following a symbolic link.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard};

use crate::ns::{Keeper, Kind, Namespace, NsError, Pin, PinDir, ReopenError};
pub use crate::state_dir::{PINS, StateDir};
use crate::tree::record::{self, Record, RecordError, RecordedNs};

/// The record's file name in the state directory.
pub const RECORD: &str = "tree";

/// What the state directory held at start.
#[derive(Debug)]
pub enum Loaded {
    /// No record: a new state directory, or one from before records.
    Nothing,
    /// A record to restore.
    Found(Record),
    /// A record that could not be read; it was renamed to `moved` (if the
    /// rename worked) and the daemon starts with an empty tree.
    SetAside {
        /// Why it could not be read.
        why: Unusable,
        /// Where it is now.
        moved: Option<PathBuf>,
    },
}

/// Why the record could not be used.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    /// Reading the file failed.
    #[error("cannot read it: {0}")]
    Read(io::Error),
    /// Another format version.
    #[error(transparent)]
    Version(RecordError),
    /// Anything else wrong with it.
    #[error("it is corrupt: {0}")]
    Corrupt(RecordError),
}

/// Reads the record in `dir`. An unreadable one is renamed to
/// `tree.corrupt-SECONDS` (seconds since the epoch), never deleted.
pub fn load(dir: &StateDir) -> Loaded {
    let why = match dir.read(RECORD) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Nothing,
        Err(e) => Unusable::Read(e),
        Ok(bytes) => match record::parse(&bytes) {
            Ok(record) => return Loaded::Found(record),
            Err(e @ RecordError::Version(_)) => Unusable::Version(e),
            Err(e) => Unusable::Corrupt(e),
        },
    };
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = format!("{RECORD}.corrupt-{seconds}");
    let moved = dir
        .rename(RECORD, &aside)
        .ok()
        .map(|()| dir.path().join(aside));
    Loaded::SetAside { why, moved }
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): pids and start
/// times in a record mean something only within the boot that wrote it.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Writes the record. Writers take [`Recorder::lock`] first, which also
/// keeps the tree generation the record on disk describes, so that several
/// changes made meanwhile are written once (group commit).
#[derive(Debug)]
pub struct Recorder {
    dir: Arc<StateDir>,
    path: PathBuf,
    boot: String,
    written: Mutex<Option<u64>>,
}

impl Recorder {
    /// A recorder for the state directory `dir`.
    pub fn open(dir: Arc<StateDir>) -> Recorder {
        Recorder {
            path: dir.path().join(RECORD),
            dir,
            boot: boot_id(),
            written: Mutex::new(None),
        }
    }

    /// The boot id written into records.
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// Where the record is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serializes writers; holds the tree generation last written.
    pub fn lock(&self) -> MutexGuard<'_, Option<u64>> {
        self.written.lock()
    }

    /// Replaces the record with `text`: a temporary file, fsync, rename
    /// over the record, fsync of the directory. Call with [`Recorder::lock`]
    /// held (the temporary file's name is fixed).
    pub fn write(&self, text: &[u8]) -> io::Result<()> {
        self.dir.replace(RECORD, text, true)
    }
}

/// The namespaces of a record, reopened.
#[derive(Debug, Default)]
pub struct Reopened {
    /// By inode: the ones that could be reopened.
    pub spaces: HashMap<u64, Namespace>,
    /// By inode: why each of the others could not.
    pub lost: HashMap<u64, Lost>,
}

/// Why a recorded namespace could not be reopened.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    /// The record is of another boot: its pids and pins mean nothing now.
    #[error("it was recorded before the machine last booted")]
    OtherBoot,
    /// A mount namespace recorded without its holder.
    #[error("no holder process was recorded for it (mount namespaces cannot be pinned)")]
    NoHolder,
    /// Its pin or keeper could not be taken back.
    #[error(transparent)]
    Reopen(#[from] ReopenError),
    /// The namespace its holder sits in could not be kept.
    #[error(transparent)]
    Ns(#[from] NsError),
    /// A pid namespace whose init could not be taken back.
    #[error("{0}; {DEAD_PID_NS}")]
    Init(ReopenError),
    /// A pid namespace whose init has exited.
    #[error("its init process has exited; {DEAD_PID_NS}")]
    InitExited,
}

const DEAD_PID_NS: &str = "a pid namespace whose init has exited takes no new process";

/// Reopens the namespaces `record` names, except those `have` already
/// (the daemon's own): mount namespaces from their keepers, the others from
/// their pins in `pins`, each checked to be the namespace of that kind and
/// inode; a pid namespace also needs its init alive, since one whose init
/// has exited takes no new process. `boot` is this boot's id.
pub fn reopen(
    record: &Record,
    pins: &Arc<PinDir>,
    boot: &str,
    have: impl Fn(u64) -> bool,
) -> Reopened {
    let mut out = Reopened::default();
    for r in &record.spaces {
        if have(r.ns.ino) {
            continue;
        }
        let result = if record.boot != boot {
            Err(Lost::OtherBoot)
        } else {
            reopen_one(r, pins)
        };
        match result {
            Ok(ns) => {
                out.spaces.insert(r.ns.ino, ns);
            }
            Err(why) => {
                if record.boot == boot {
                    dismiss_keeper(r);
                }
                out.lost.insert(r.ns.ino, why);
            }
        }
    }
    out
}

fn reopen_one(r: &RecordedNs, pins: &Arc<PinDir>) -> Result<Namespace, Lost> {
    let (kind, ino) = (r.ns.kind, r.ns.ino);
    if kind == Kind::Mnt {
        let k = r.keeper.ok_or(Lost::NoHolder)?;
        let (keeper, fd) = Keeper::adopt(kind, ino, k.pid, k.start)?;
        return Ok(Namespace::kept(fd, kind, keeper)?);
    }
    let mut ns = Namespace::from_pin(pins, kind, ino)?;
    if kind == Kind::Pid {
        match r.keeper {
            Some(k) => {
                let (keeper, _) = Keeper::adopt(kind, ino, k.pid, k.start).map_err(Lost::Init)?;
                ns.adopt_keeper(keeper);
            }
            None => {
                if crate::sys::ns::pid_from_pidns(ns.fd(), 1).is_err() {
                    return Err(Lost::InitExited);
                }
            }
        }
    }
    Ok(ns)
}

/// Tells the recorded keeper of `r`, if it is still that process and it
/// is still a keeper, to leave: nothing will bind its namespace again.
fn dismiss_keeper(r: &RecordedNs) {
    if let Some(k) = r.keeper
        && let Ok((keeper, _)) = Keeper::adopt(r.ns.kind, r.ns.ino, k.pid, k.start)
    {
        keeper.leave();
    }
}

/// Removes every pin in `pins` but those in `keep`: pins of namespaces
/// nothing binds any more, and at the daemon's end those of the root's own.
/// Anything else found there (a symbolic link, a stray file) goes too,
/// without being followed.
pub fn sweep_pins(pins: &PinDir, keep: &HashSet<PathBuf>) {
    for name in pins.names() {
        let path = pins.path().join(&name);
        if !keep.contains(&path) {
            log::debug!("removing pin {}", path.display());
            pins.remove(&name);
        }
    }
}

/// The pins the record in `dir` needs, or `None` without a readable record.
fn recorded_pins(dir: &StateDir, pins: &Path) -> Option<HashSet<PathBuf>> {
    let bytes = dir.read(RECORD).ok()?;
    let record = record::parse(&bytes).ok()?;
    Some(
        record
            .spaces
            .iter()
            .filter(|r| r.ns.kind != Kind::Mnt)
            .map(|r| Pin::path_in(pins, r.ns.kind, r.ns.ino))
            .collect(),
    )
}

/// At the daemon's end: removes the pins the record does not need (those
/// of namespaces only the root container bound). The others stay for the
/// next daemon. Without a readable record, nothing is touched.
pub fn tidy(dir: &StateDir, pins: &PinDir) {
    if let Some(keep) = recorded_pins(dir, pins.path()) {
        sweep_pins(pins, &keep);
    }
}

/// Forgets the tree the state directory `dir` keeps: tells the keepers
/// the record names to leave, removes every pin, and deletes the record
/// (exports are [`crate::export::forget`]'s; [`crate::daemon::forget`]
/// does both). For a daemon that is not running (tests, or starting over
/// by hand). Nothing in it is followed through a symbolic link.
pub fn forget(dir: &Path) {
    let Ok(dir) = StateDir::existing(dir) else {
        return;
    };
    if let Loaded::Found(record) = load(&dir)
        && record.boot == boot_id()
    {
        record.spaces.iter().for_each(dismiss_keeper);
    }
    if let Ok(pins) = dir.existing_pins() {
        sweep_pins(&pins, &HashSet::new());
    }
    let _ = dir.remove(RECORD);
    let _ = dir.remove(&format!("{RECORD}.tmp"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("nsproxyfs-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_record_is_replaced_whole_and_read_back() {
        let dir = scratch("write");
        let state = Arc::new(StateDir::existing(&dir).unwrap());
        assert!(matches!(load(&state), Loaded::Nothing));
        let rec = Recorder::open(Arc::clone(&state));
        let text = format!("nsproxyfs-tree 1\nboot {}\nend\n", rec.boot());
        {
            let _guard = rec.lock();
            rec.write(text.as_bytes()).unwrap();
            rec.write(text.as_bytes()).unwrap();
        }
        assert_eq!(std::fs::read_to_string(rec.path()).unwrap(), text);
        assert!(!dir.join("tree.tmp").exists());
        match load(&state) {
            Loaded::Found(r) => assert_eq!(r.boot, rec.boot()),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_record_is_set_aside() {
        let dir = scratch("corrupt");
        std::fs::write(dir.join(RECORD), "nsproxyfs-tree 1\nboot b\ncontainer /x\n").unwrap();
        let state = StateDir::existing(&dir).unwrap();
        match load(&state) {
            Loaded::SetAside { why, moved } => {
                assert!(
                    matches!(why, Unusable::Corrupt(RecordError::Truncated)),
                    "{why}"
                );
                let moved = moved.unwrap();
                assert!(
                    moved
                        .file_name()
                        .unwrap()
                        .to_str()
                        .unwrap()
                        .starts_with("tree.corrupt-")
                );
                assert!(moved.exists());
            }
            other => panic!("{other:?}"),
        }
        assert!(!dir.join(RECORD).exists());
        assert!(matches!(load(&state), Loaded::Nothing));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn boot_id_is_one_word() {
        let id = boot_id();
        assert!(!id.is_empty() && !id.contains(' '));
        assert_eq!(id, boot_id());
    }
}

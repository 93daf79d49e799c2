//! The text of the files that are read: `status`, `tasks` and
//! `.namespaces`, made when they are opened; and the reader of `status`
//! (for `nsproxyfs exec` and `adopt`), kept next to its writer.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use super::{Caller, Error, Result, Service, State};
use crate::ns::{Kind, Namespace};
use crate::tree::{ContainerId, Tree};

impl Service {
    pub(super) fn status_text(&self, c: ContainerId, reader: &Caller) -> Result<Vec<u8>> {
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
    pub(super) fn fd_path(&self, ns: &Namespace, reader: &Caller) -> String {
        match self.proc_path(std::process::id() as i32, reader) {
            Some(proc) => format!("{proc}/fd/{}", ns.raw_fd()),
            None => "-".to_owned(),
        }
    }

    /// The daemon's own helper processes: the mover's (holders, injectors)
    /// and the init processes of fresh pid namespaces. They are neither
    /// listed in `tasks` nor moved.
    pub(super) fn helpers(&self, st: &State) -> Vec<i32> {
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
    pub(super) fn proc_path(&self, pid: i32, reader: &Caller) -> Option<String> {
        let pidns = reader.pid_ns().ok()?;
        let seen = crate::sys::ns::pid_in_pidns(pidns.as_fd(), pid).ok()?;
        (seen > 0).then(|| format!("/proc/{seen}"))
    }

    pub(super) fn tasks_text(&self, c: ContainerId, reader: &Caller) -> Result<Vec<u8>> {
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
        let reader_ns = reader.pid_ns()?;
        let same_ns = reader_ns.is_daemons(self.pid_ns);
        let mut pids: Vec<i32> = if same_ns {
            members
        } else {
            members
                .into_iter()
                .filter_map(|p| crate::sys::ns::pid_in_pidns(reader_ns.as_fd(), p).ok())
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

    /// The `.namespaces` table (see [`crate::discover::lsns`]).
    pub(super) fn namespaces_text(&self) -> Vec<u8> {
        let bound: Vec<Arc<Namespace>> = self.state.read().spaces.values().cloned().collect();
        let fds: Vec<(Kind, u64, std::os::fd::BorrowedFd<'_>)> = bound
            .iter()
            .map(|ns| (ns.kind(), ns.ino(), ns.fd()))
            .collect();
        crate::discover::lsns::table(&fds).into_bytes()
    }
}

/// One line of a container's `status`: the kind, the inode of the namespace
/// in its effective set, and the pin path (`None` for `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// The kind.
    pub kind: Kind,
    /// The namespace's inode.
    pub ino: u64,
    /// A path that opens the namespace, if the reader can open one.
    pub pin: Option<PathBuf>,
}

/// What is wrong with a `status` file.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StatusError {
    /// Not one line per kind.
    #[error("{0} lines, expected {n}", n = Kind::ALL.len())]
    Lines(usize),
    /// A line without its four tab-separated fields (the line).
    #[error("line {0:?}: expected 4 tab-separated fields")]
    Fields(String),
    /// A line of another kind than the one expected there.
    #[error("line {line:?}: expected the {kind} line")]
    Order {
        /// The line.
        line: String,
        /// The kind expected.
        kind: Kind,
    },
    /// A namespace field that is not `KIND:[INODE]`.
    #[error("line {line:?}: expected {kind}:[INODE]")]
    Inode {
        /// The line.
        line: String,
        /// Its kind.
        kind: Kind,
    },
    /// An empty pin path (the line).
    #[error("line {0:?}: empty pin path")]
    EmptyPin(String),
}

/// Parses a `status` file: exactly one line per kind, in [`Kind::ALL`]
/// order, four tab-separated fields each.
pub fn parse_status(text: &str) -> Result<Vec<StatusLine>, StatusError> {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() != Kind::ALL.len() {
        return Err(StatusError::Lines(lines.len()));
    }
    lines
        .iter()
        .zip(Kind::ALL)
        .map(|(&line, kind)| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, ns, _from, pin] = fields[..] else {
                return Err(StatusError::Fields(line.to_owned()));
            };
            if name != kind.name() {
                let line = line.to_owned();
                return Err(StatusError::Order { line, kind });
            }
            let ino = ns
                .strip_prefix(kind.name())
                .and_then(|s| s.strip_prefix(":["))
                .and_then(|s| s.strip_suffix(']'))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| StatusError::Inode {
                    line: line.to_owned(),
                    kind,
                })?;
            let pin = match pin {
                "-" => None,
                "" => return Err(StatusError::EmptyPin(line.to_owned())),
                p => Some(PathBuf::from(p)),
            };
            Ok(StatusLine { kind, ino, pin })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "cgroup\tcgroup:[1]\t/\t/s/pins/cgroup-1\n\
        ipc\tipc:[2]\t/\t/s/pins/ipc-2\n\
        mnt\tmnt:[3]\t/\t/proc/9/fd/7\n\
        net\tnet:[4]\town\t/s/pins/net-4\n\
        pid\tpid:[5]\town\t/s/pins/pid-5\n\
        time\ttime:[6]\t/\t-\n\
        user\tuser:[7]\t/web\t/s/pins/user-7\n\
        uts\tuts:[8]\town\t/s/pins/uts 8\n";

    #[test]
    fn status_parses_per_kind() {
        let lines = parse_status(STATUS).unwrap();
        assert_eq!(lines.len(), 8);
        for (i, (line, kind)) in lines.iter().zip(Kind::ALL).enumerate() {
            assert_eq!(line.kind, kind);
            assert_eq!(line.ino, i as u64 + 1);
        }
        assert_eq!(
            lines[2].pin.as_deref(),
            Some(std::path::Path::new("/proc/9/fd/7"))
        );
        assert_eq!(lines[5].pin, None);
        assert_eq!(
            lines[7].pin.as_deref(),
            Some(std::path::Path::new("/s/pins/uts 8"))
        );
    }

    #[test]
    fn status_is_parsed_strictly() {
        let swapped = STATUS.replacen("cgroup\tcgroup", "ipc\tipc", 1);
        for bad in [
            "",
            &STATUS[..STATUS.len() - 30],
            &STATUS.replace("net:[4]", "net:[x]"),
            &STATUS.replace("net:[4]", "uts:[4]"),
            &STATUS.replace("\town\t/s/pins/net-4", "\town"),
            &STATUS.replace("/s/pins/pid-5", ""),
            &swapped,
            &format!("{STATUS}extra\n"),
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }
}

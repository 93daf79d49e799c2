//! The text of the files that are read: `status`, `tasks` and
//! `.namespaces`, made when they are opened.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use super::{Caller, Error, Result, Service, State};
use crate::ns::{self, Kind, Namespace};
use crate::procfs;
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
        let seen = ns::sys::pid_in_pidns(pidns.as_fd(), pid).ok()?;
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
        let mut members = procfs::members(&set, &differing).map_err(|source| Error::Sys {
            what: "read /proc",
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

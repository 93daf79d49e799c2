//! The `.namespaces` table: every namespace on the host, as `lsns` shows
//! it, with its owner and parent.
//!
//! One line per namespace after a header, tab-separated: kind, inode,
//! number of processes in it, the lowest of their pids, the owning user
//! namespace, the parent (pid and user namespaces), and the command of the
//! lowest pid. `-` stands for "none" (a namespace the tree binds that no
//! process is in; the initial namespaces have neither owner nor parent).
//! A process counts in the namespaces of its `/proc/PID/ns` links, so for
//! pid and time that is the namespace it is in, not the one its children
//! will be born into; kernel threads count, as in `lsns`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use crate::ns::Kind;
use crate::procfs::{self, ProcDir};
use crate::sys;

/// The header line.
pub const HEADER: &str = "KIND\tINODE\tNPROCS\tPID\tUSERNS\tPARENT\tCOMMAND";

struct Seen {
    kind: Kind,
    nprocs: u32,
    pid: Option<i32>,
    fd: Option<OwnedFd>,
}

fn ino_of(fd: BorrowedFd<'_>) -> Option<u64> {
    let file = File::from(fd.try_clone_to_owned().ok()?);
    file.metadata().ok().map(|m| m.ino())
}

/// The table, from one pass over every process ([`crate::kview`]); `bound` adds the
/// namespaces the tree binds (kind, inode, an open descriptor), listed
/// even when no process is in them.
pub fn table(bound: &[(Kind, u64, BorrowedFd<'_>)]) -> String {
    let mut seen: BTreeMap<u64, Seen> = BTreeMap::new();
    let procs = crate::kview::membership().processes().unwrap_or_default();
    for p in procs.iter() {
        for kind in Kind::ALL {
            let Some(ino) = p.link(kind) else { continue };
            let s = seen.entry(ino).or_insert_with(|| Seen {
                kind,
                nprocs: 0,
                pid: None,
                fd: None,
            });
            s.nprocs += 1;
            // Processes come in pid order: the first is the lowest.
            if s.pid.is_none() {
                s.pid = Some(p.pid);
                s.fd = ProcDir::ns(p.pid)
                    .and_then(|dir| dir.open_entry(kind.name()))
                    .ok()
                    .filter(|fd| ino_of(fd.as_fd()) == Some(ino));
            }
        }
    }
    for (kind, ino, fd) in bound {
        let s = seen.entry(*ino).or_insert_with(|| Seen {
            kind: *kind,
            nprocs: 0,
            pid: None,
            fd: None,
        });
        if s.fd.is_none() {
            s.fd = fd.try_clone_to_owned().ok();
        }
    }
    let mut rows: Vec<(Kind, u64, &Seen)> = seen.iter().map(|(&i, s)| (s.kind, i, s)).collect();
    rows.sort_by_key(|r| (r.0.name(), r.1));
    let mut out = String::with_capacity(64 * (rows.len() + 1));
    out.push_str(HEADER);
    out.push('\n');
    let dash = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    for (kind, ino, s) in rows {
        let fd = s.fd.as_ref().map(AsFd::as_fd);
        let owner = fd
            .and_then(|fd| sys::ns::owner(fd).ok())
            .and_then(|o| ino_of(o.as_fd()));
        let parent = match kind {
            Kind::Pid | Kind::User => fd
                .and_then(|fd| sys::ns::parent(fd).ok())
                .and_then(|p| ino_of(p.as_fd())),
            _ => None,
        };
        let command = s.pid.and_then(procfs::comm);
        let _ = writeln!(
            out,
            "{kind}\t{ino}\t{}\t{}\t{}\t{}\t{}",
            s.nprocs,
            dash(s.pid.map(|p| p as u64)),
            dash(owner),
            dash(parent),
            command.as_deref().unwrap_or("-"),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_this_process_namespaces() {
        let me = std::process::id() as i32;
        let text = table(&[]);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some(HEADER));
        let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
        assert!(rows.iter().all(|r| r.len() == 7), "{text}");
        for kind in Kind::ALL {
            let ino = procfs::ns_link_inode(me, kind.name()).unwrap().to_string();
            let row = rows
                .iter()
                .find(|r| r[0] == kind.name() && r[1] == ino)
                .unwrap_or_else(|| panic!("no {kind}:[{ino}] in\n{text}"));
            assert!(row[2].parse::<u32>().unwrap() >= 1);
            assert!(row[3].parse::<i32>().unwrap() <= me);
        }
    }
}

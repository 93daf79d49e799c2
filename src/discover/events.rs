//! Process events from the kernel's process connector (`cn_proc`): a
//! netlink socket on which the kernel reports every fork, exec and exit.
//!
//! Discovery uses them as hints only: an exec is the moment a process most
//! often shows up in new namespaces (`unshare CMD`, a container runtime
//! starting its init), a fork copies its parent's set, an exit may empty a
//! set. Nothing here trusts an event for more than "look at this pid".
//! The kernel sends these messages only to listeners in the initial network
//! namespace with CAP_NET_ADMIN; a lost message is reported as
//! [`Batch::overflowed`], and the caller then reads `/proc` in full.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::sys;

/// The connector index and value of process events (`CN_IDX_PROC`,
/// `CN_VAL_PROC`); the index is also the multicast group.
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
/// `PROC_CN_MCAST_LISTEN`.
const MCAST_LISTEN: u32 = 1;

const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// `struct nlmsghdr` is 16 bytes and `struct cn_msg` 20: a `struct
/// proc_event` starts 36 bytes into a message, its `event_data` 16 bytes
/// after that (`what`, `cpu`, then an 8-byte `timestamp_ns`).
const NLMSG_HDR: usize = 16;
const CN_MSG: usize = 20;
const EVENT: usize = NLMSG_HDR + CN_MSG;
const DATA: usize = EVENT + 16;

/// One process event, as discovery needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// `child` (a new process, not a thread) was forked from `parent`.
    Fork {
        /// The parent process (thread-group id).
        parent: i32,
        /// The new process.
        child: i32,
    },
    /// Process `pid` called execve.
    Exec(i32),
    /// Process `pid` exited (its main thread did).
    Exit(i32),
}

/// What one wait for events brought.
#[derive(Debug, Default)]
pub struct Batch {
    /// The events, in the order the kernel sent them.
    pub events: Vec<Event>,
    /// The kernel dropped messages (the socket's buffer was full): what
    /// was learnt from events since the last full read is incomplete.
    pub overflowed: bool,
}

/// A listening process-connector socket.
#[derive(Debug)]
pub struct Events {
    fd: OwnedFd,
    /// Where datagrams are received, kept across waits.
    buf: Vec<u8>,
}

impl Events {
    /// Opens the socket, joins the process-event group and asks the kernel
    /// to start sending. Fails without CAP_NET_ADMIN, outside the initial
    /// network namespace, or on kernels built without process events.
    pub fn open() -> io::Result<Events> {
        // A burst of forks must not overflow the queue at once: 4 MiB holds
        // about 50,000 events.
        let fd = sys::socket::netlink_connector(CN_IDX_PROC, 4 << 20)?;
        let events = Events {
            fd,
            buf: vec![0u8; 64 * 1024],
        };
        events.send_listen()?;
        Ok(events)
    }

    /// Sends `PROC_CN_MCAST_LISTEN`: a netlink header, a connector header
    /// and the 4-byte operation.
    fn send_listen(&self) -> io::Result<()> {
        let len = NLMSG_HDR + CN_MSG + 4;
        let mut msg = vec![0u8; len];
        msg[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&(libc::NLMSG_DONE as u16).to_ne_bytes());
        msg[12..16].copy_from_slice(&std::process::id().to_ne_bytes());
        let cn = NLMSG_HDR;
        msg[cn..cn + 4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        msg[cn + 4..cn + 8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
        msg[cn + 16..cn + 18].copy_from_slice(&4u16.to_ne_bytes());
        msg[cn + 20..cn + 24].copy_from_slice(&MCAST_LISTEN.to_ne_bytes());
        sys::socket::send_datagram(self.fd.as_fd(), &msg)
    }

    /// Waits up to `timeout` for the first message, or for `also` to
    /// become readable, then takes every message already queued, without
    /// waiting again.
    pub fn wait(&mut self, timeout: Duration, also: Option<BorrowedFd<'_>>) -> io::Result<Batch> {
        let mut batch = Batch::default();
        let fds: Vec<BorrowedFd<'_>> = std::iter::once(self.fd.as_fd()).chain(also).collect();
        match sys::fs::wait_readable_any(&fds, timeout) {
            Ok(true) => {}
            Ok(false) => return Ok(batch),
            Err(e) => return Err(e),
        }
        let buf = &mut self.buf;
        loop {
            let (n, from) = match sys::socket::recv_netlink(self.fd.as_fd(), buf) {
                Ok(got) => got,
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(batch),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        batch.overflowed = true;
                        continue;
                    }
                    _ => return Err(e),
                },
            };
            // Only the kernel (netlink port 0) speaks for processes.
            if from != 0 {
                continue;
            }
            parse_messages(&buf[..n], &mut batch.events);
        }
    }
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(buf: &[u8], at: usize) -> Option<i32> {
    u32_at(buf, at).map(|v| v as i32)
}

/// Appends the events of every netlink message in `buf` (one datagram) to
/// `out`. Malformed or foreign messages are skipped.
pub fn parse_messages(mut buf: &[u8], out: &mut Vec<Event>) {
    while let Some(len) = u32_at(buf, 0) {
        let len = len as usize;
        if len < NLMSG_HDR || len > buf.len() {
            return;
        }
        if let Some(event) = parse_event(&buf[..len]) {
            out.push(event);
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        buf = buf.get(next..).unwrap_or(&[]);
    }
}

/// The event of one netlink message, if it is a process event discovery
/// cares about: forks of processes (not threads), execs, and exits of
/// main threads.
fn parse_event(msg: &[u8]) -> Option<Event> {
    if u32_at(msg, NLMSG_HDR)? != CN_IDX_PROC || u32_at(msg, NLMSG_HDR + 4)? != CN_VAL_PROC {
        return None;
    }
    match u32_at(msg, EVENT)? {
        PROC_EVENT_FORK => {
            let parent = i32_at(msg, DATA + 4)?;
            let child_pid = i32_at(msg, DATA + 8)?;
            let child = i32_at(msg, DATA + 12)?;
            (child_pid == child).then_some(Event::Fork { parent, child })
        }
        PROC_EVENT_EXEC => Some(Event::Exec(i32_at(msg, DATA + 4)?)),
        PROC_EVENT_EXIT => {
            let pid = i32_at(msg, DATA)?;
            let tgid = i32_at(msg, DATA + 4)?;
            (pid == tgid).then_some(Event::Exit(tgid))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as the kernel lays it out: `what` and four data words.
    fn message(what: u32, data: [u32; 4]) -> Vec<u8> {
        let len = DATA + 24;
        let mut m = vec![0u8; len];
        m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
        m[NLMSG_HDR..NLMSG_HDR + 4].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m[NLMSG_HDR + 4..NLMSG_HDR + 8].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m[EVENT..EVENT + 4].copy_from_slice(&what.to_ne_bytes());
        for (i, word) in data.iter().enumerate() {
            m[DATA + 4 * i..DATA + 4 * i + 4].copy_from_slice(&word.to_ne_bytes());
        }
        m
    }

    #[test]
    fn parses_forks_execs_and_exits_of_processes_only() {
        let mut buf = Vec::new();
        buf.extend(message(PROC_EVENT_FORK, [10, 10, 11, 11]));
        // A new thread: child pid is not its thread group.
        buf.extend(message(PROC_EVENT_FORK, [10, 10, 12, 10]));
        buf.extend(message(PROC_EVENT_EXEC, [11, 11, 0, 0]));
        // A thread's exit, then the main thread's.
        buf.extend(message(PROC_EVENT_EXIT, [12, 10, 0, 0]));
        buf.extend(message(PROC_EVENT_EXIT, [10, 10, 0, 0]));
        // Events discovery ignores (uid change), and another connector.
        buf.extend(message(0x4, [10, 10, 0, 0]));
        let mut other = message(PROC_EVENT_EXEC, [13, 13, 0, 0]);
        other[NLMSG_HDR] = 9;
        buf.extend(other);
        let mut out = Vec::new();
        parse_messages(&buf, &mut out);
        assert_eq!(
            out,
            vec![
                Event::Fork {
                    parent: 10,
                    child: 11
                },
                Event::Exec(11),
                Event::Exit(10),
            ]
        );
    }

    #[test]
    fn malformed_messages_are_skipped_without_panic() {
        let mut out = Vec::new();
        parse_messages(&[], &mut out);
        parse_messages(&[1, 2, 3], &mut out);
        // A length past the end, then a length below the header size.
        parse_messages(&[255, 0, 0, 0, 0, 0, 0, 0], &mut out);
        parse_messages(&[4, 0, 0, 0, 0, 0, 0, 0], &mut out);
        let mut short = message(PROC_EVENT_FORK, [1, 1, 2, 2]);
        short.truncate(DATA + 8);
        let len = short.len() as u32;
        short[0..4].copy_from_slice(&len.to_ne_bytes());
        parse_messages(&short, &mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn the_kernel_reports_a_fork_exec_and_exit() {
        if !nix::unistd::geteuid().is_root() {
            assert_ne!(
                std::env::var("CI").as_deref(),
                Ok("true"),
                "CI runs as root"
            );
            eprintln!("skipped: the process connector needs CAP_NET_ADMIN (not root)");
            return;
        }
        let mut events = Events::open().expect("open the process connector");
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let mut child = child;
        child.wait().unwrap();
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let batch = events.wait(Duration::from_millis(200), None).unwrap();
            seen.extend(batch.events.into_iter().filter(|e| match e {
                Event::Fork { child, .. } => *child == pid,
                Event::Exec(p) | Event::Exit(p) => *p == pid,
            }));
            if seen.iter().any(|e| matches!(e, Event::Exit(_))) {
                break;
            }
        }
        let me = std::process::id() as i32;
        assert_eq!(
            seen,
            vec![
                Event::Fork {
                    parent: me,
                    child: pid
                },
                Event::Exec(pid),
                Event::Exit(pid)
            ]
        );
    }
}

//! The records of the channel between the daemon and an injector.
//!
//! One record is one line of words separated by single spaces. The daemon
//! sends a [`Request`]; the injector answers with [`Answer`]s, the last of
//! which is [`Answer::Moved`], [`Answer::Failed`] or [`Answer::Malformed`].
//! A failed move travels as the [`MoveError`] itself, field by field, so
//! that the daemon rebuilds the very error the injector had, and decides
//! its errno and its log line as for any other error.
//!
//! Both ends are the same binary (an injector is started from
//! `/proc/self/exe`), so the format needs no version of its own: it is
//! versioned by construction.

use std::fmt::Write as _;
use std::io;
use std::time::Duration;

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::inject::{Op, TraceError, Unsupported};
use crate::ns::creds::Credentials;
use crate::transfer::{Call, Known, MoveError, Step};

/// The record that hands a new injector the daemon's one-thread BPF
/// program (attached), with which it reads a stopped target's threads in
/// one call ([`crate::transfer::read_threads_with`]); sent at most once,
/// before the first move, and not answered.
pub const READER: &[u8] = b"reader";

/// One move, as the daemon asks for it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// The holder's pid in the target's pid namespace.
    pub holder: i32,
    /// The `CLONE_NEW*` kinds to join.
    pub flags: libc::c_int,
    /// The target's thread blocked in the write that asked for the move,
    /// or 0.
    pub writer: i32,
    /// The holder as the daemon knows it (its pid in the daemon's pid
    /// namespace, which the injector shares, and its namespaces), if sent.
    pub known: Option<Known>,
    /// The credentials of the one who asked for the move, whose right to
    /// trace the target is asked again once it is stopped; none for a
    /// process moving itself.
    pub tracer: Option<Credentials>,
}

impl Request {
    /// `move HOLDER FLAGS WRITER`, then `from LOCAL INODE...` (eight) if
    /// the holder is known, then `as CREDENTIALS` if there is a tracer to
    /// check.
    pub fn encode(&self) -> String {
        let mut line = format!("move {} {} {}", self.holder, self.flags, self.writer);
        if let Some(known) = &self.known {
            let _ = write!(line, " from {}", known.local);
            for ino in known.inodes {
                let _ = write!(line, " {ino}");
            }
        }
        if let Some(creds) = &self.tracer {
            line.push_str(" as ");
            line.push_str(&creds.to_words());
        }
        line
    }

    /// The request of a record, or `None` if it is not one.
    pub fn decode(record: &[u8]) -> Option<Request> {
        let text = std::str::from_utf8(record).ok()?;
        let mut words = text.split(' ');
        if words.next()? != "move" {
            return None;
        }
        let mut number = || words.next()?.parse::<i32>().ok();
        let (holder, flags, writer) = (number()?, number()?, number()?);
        let mut next = words.next();
        let known = match next {
            Some("from") => {
                let local = words.next()?.parse().ok()?;
                let mut inodes = [0u64; 8];
                for ino in &mut inodes {
                    *ino = words.next()?.parse().ok()?;
                }
                next = words.next();
                Some(Known { local, inodes })
            }
            _ => None,
        };
        let tracer = match next {
            None => None,
            Some("as") => Some(Credentials::from_words(&mut words)?),
            Some(_) => return None,
        };
        let request = Request {
            holder,
            flags,
            writer,
            known,
            tracer,
        };
        words.next().is_none().then_some(request)
    }
}

/// What an injector says about one move.
#[derive(Debug)]
pub enum Answer {
    /// Every thread is asked to stop: the writer's write may be answered.
    Seized,
    /// A thread stays attached to the injector, which exits after its last
    /// answer.
    Leaving,
    /// The move is done: this many threads moved.
    Moved(usize),
    /// The move did not happen, for this reason.
    Failed(MoveError),
    /// The request was not understood; nothing was done.
    Malformed,
}

impl Answer {
    /// The record of this answer.
    pub fn encode(&self) -> String {
        match self {
            Answer::Seized => "seized".to_owned(),
            Answer::Leaving => "leaving".to_owned(),
            Answer::Moved(threads) => format!("ok {threads}"),
            Answer::Failed(e) => {
                let mut line = "err".to_owned();
                put_move(&mut line, e);
                line
            }
            Answer::Malformed => "malformed".to_owned(),
        }
    }

    /// The answer of a record, or `None` if it is not one.
    pub fn decode(record: &[u8]) -> Option<Answer> {
        let mut w = Words::new(std::str::from_utf8(record).ok()?);
        let answer = match w.word()? {
            "seized" => Answer::Seized,
            "leaving" => Answer::Leaving,
            "malformed" => Answer::Malformed,
            "ok" => Answer::Moved(w.number()?),
            "err" => return Some(Answer::Failed(take_move(&mut w)?)),
            _ => return None,
        };
        w.end().then_some(answer)
    }
}

/// The words of a record, read from the front.
struct Words<'a> {
    rest: &'a str,
}

impl<'a> Words<'a> {
    fn new(text: &'a str) -> Self {
        Words { rest: text }
    }

    fn word(&mut self) -> Option<&'a str> {
        if self.rest.is_empty() {
            return None;
        }
        let (word, rest) = self.rest.split_once(' ').unwrap_or((self.rest, ""));
        self.rest = rest;
        Some(word)
    }

    fn number<T: std::str::FromStr>(&mut self) -> Option<T> {
        self.word()?.parse().ok()
    }

    fn pid(&mut self) -> Option<Pid> {
        self.number().map(Pid::from_raw)
    }

    fn errno(&mut self) -> Option<Errno> {
        self.number().map(Errno::from_raw)
    }

    /// One of `all`, by its Rust name.
    fn one_of<T: Copy + std::fmt::Debug>(&mut self, all: &[T]) -> Option<T> {
        let word = self.word()?;
        all.iter().copied().find(|t| format!("{t:?}") == word)
    }

    /// Everything left, which may hold spaces.
    fn tail(&mut self) -> &'a str {
        std::mem::take(&mut self.rest)
    }

    fn end(&self) -> bool {
        self.rest.is_empty()
    }
}

fn put(line: &mut String, words: std::fmt::Arguments<'_>) {
    line.push(' ');
    // Writing to a String cannot fail.
    let _ = line.write_fmt(words);
}

fn put_move(line: &mut String, e: &MoveError) {
    match e {
        MoveError::Gone(pid) => put(line, format_args!("gone {pid}")),
        MoveError::Zombie(pid) => put(line, format_args!("zombie {pid}")),
        MoveError::KernelThread(pid) => put(line, format_args!("kernel-thread {pid}")),
        MoveError::SelfProcess => put(line, format_args!("self")),
        MoveError::AlreadyTraced { tid, tracer } => {
            put(line, format_args!("traced {tid} {tracer}"))
        }
        MoveError::TraceDenied(tid) => put(line, format_args!("trace-denied {tid}")),
        MoveError::InvalidKinds(kinds) => put(line, format_args!("invalid-kinds {kinds}")),
        MoveError::Pin { pid, errno } => put(line, format_args!("pin {pid} {}", *errno as i32)),
        MoveError::Refused {
            tid,
            step,
            errno,
            moved_back,
        } => put(
            line,
            format_args!("refused {tid} {step:?} {} {moved_back}", *errno as i32),
        ),
        MoveError::RollbackFailed { tid, cause } => {
            put(line, format_args!("rollback {tid}"));
            put_move(line, cause);
        }
        MoveError::SeccompKills { tid, syscall } => {
            put(line, format_args!("seccomp-kills {tid} {syscall:?}"))
        }
        MoveError::SeccompStrict(tid) => put(line, format_args!("seccomp-strict {tid}")),
        MoveError::SeccompHidden(tid) => put(line, format_args!("seccomp-hidden {tid}")),
        MoveError::SeccompDelegates { tid, syscall } => {
            put(line, format_args!("seccomp-delegates {tid} {syscall:?}"))
        }
        MoveError::Stuck { tid, waited } => {
            put(line, format_args!("stuck {tid} {}", waited.as_nanos()))
        }
        MoveError::Untrusted { tid, step } => put(line, format_args!("untrusted {tid} {step:?}")),
        MoveError::Unstable(pid) => put(line, format_args!("unstable {pid}")),
        MoveError::Execed(pid) => put(line, format_args!("execed {pid}")),
        MoveError::Changed { pid, chose, now } => {
            put(line, format_args!("changed {pid} {chose} {now}"))
        }
        MoveError::Unsupported(why) => put(line, format_args!("unsupported {why:?}")),
        MoveError::Trace(e) => {
            put(line, format_args!("trace"));
            put_trace(line, e);
        }
        MoveError::Proc(e) => {
            put(line, format_args!("proc"));
            put_io(line, e);
        }
    }
}

fn take_move(w: &mut Words<'_>) -> Option<MoveError> {
    let e = match w.word()? {
        "gone" => MoveError::Gone(w.number()?),
        "zombie" => MoveError::Zombie(w.number()?),
        "kernel-thread" => MoveError::KernelThread(w.number()?),
        "self" => MoveError::SelfProcess,
        "traced" => MoveError::AlreadyTraced {
            tid: w.number()?,
            tracer: w.number()?,
        },
        "trace-denied" => MoveError::TraceDenied(w.number()?),
        "invalid-kinds" => MoveError::InvalidKinds(w.number()?),
        "pin" => MoveError::Pin {
            pid: w.number()?,
            errno: w.errno()?,
        },
        "refused" => MoveError::Refused {
            tid: w.number()?,
            step: w.one_of(&Step::ALL)?,
            errno: w.errno()?,
            moved_back: w.number()?,
        },
        "rollback" => {
            let tid = w.number()?;
            let cause = Box::new(take_move(w)?);
            return Some(MoveError::RollbackFailed { tid, cause });
        }
        "seccomp-kills" => MoveError::SeccompKills {
            tid: w.number()?,
            syscall: w.one_of(&Call::ALL)?,
        },
        "seccomp-strict" => MoveError::SeccompStrict(w.number()?),
        "seccomp-hidden" => MoveError::SeccompHidden(w.number()?),
        "seccomp-delegates" => MoveError::SeccompDelegates {
            tid: w.number()?,
            syscall: w.one_of(&Call::ALL)?,
        },
        "stuck" => MoveError::Stuck {
            tid: w.number()?,
            waited: Duration::from_nanos(w.number()?),
        },
        "untrusted" => MoveError::Untrusted {
            tid: w.number()?,
            step: w.one_of(&Step::ALL)?,
        },
        "unstable" => MoveError::Unstable(w.number()?),
        "execed" => MoveError::Execed(w.number()?),
        "changed" => MoveError::Changed {
            pid: w.number()?,
            chose: w.number()?,
            now: w.number()?,
        },
        "unsupported" => MoveError::Unsupported(w.one_of(&Unsupported::ALL)?),
        "trace" => MoveError::Trace(take_trace(w)?),
        "proc" => return take_io(w).map(MoveError::Proc),
        _ => return None,
    };
    w.end().then_some(e)
}

fn put_trace(line: &mut String, e: &TraceError) {
    match e {
        TraceError::Gone(tid) => put(line, format_args!("gone {tid}")),
        TraceError::AlreadyTraced { tid, tracer } => {
            put(line, format_args!("traced {tid} {tracer}"))
        }
        TraceError::Denied(tid) => put(line, format_args!("denied {tid}")),
        TraceError::Unsupported(why) => put(line, format_args!("unsupported {why:?}")),
        TraceError::NoSyscallSite(pid) => put(line, format_args!("no-site {pid}")),
        TraceError::ForeignSite { site, tracee } => {
            put(line, format_args!("foreign-site {site} {tracee}"))
        }
        TraceError::NotInSyscall(tid) => put(line, format_args!("not-in-syscall {tid}")),
        TraceError::TooManyStops(tid) => put(line, format_args!("too-many-stops {tid}")),
        TraceError::StrayStep { tid, pc } => put(line, format_args!("stray-step {tid} {pc}")),
        TraceError::NotStopping(tid) => put(line, format_args!("not-stopping {tid}")),
        TraceError::Os { tid, op, errno } => {
            put(line, format_args!("os {tid} {op:?} {}", *errno as i32))
        }
    }
}

fn take_trace(w: &mut Words<'_>) -> Option<TraceError> {
    let e = match w.word()? {
        "gone" => TraceError::Gone(w.pid()?),
        "traced" => TraceError::AlreadyTraced {
            tid: w.pid()?,
            tracer: w.pid()?,
        },
        "denied" => TraceError::Denied(w.pid()?),
        "unsupported" => TraceError::Unsupported(w.one_of(&Unsupported::ALL)?),
        "no-site" => TraceError::NoSyscallSite(w.pid()?),
        "foreign-site" => TraceError::ForeignSite {
            site: w.pid()?,
            tracee: w.pid()?,
        },
        "not-in-syscall" => TraceError::NotInSyscall(w.pid()?),
        "too-many-stops" => TraceError::TooManyStops(w.pid()?),
        "stray-step" => TraceError::StrayStep {
            tid: w.pid()?,
            pc: w.number()?,
        },
        "not-stopping" => TraceError::NotStopping(w.pid()?),
        "os" => TraceError::Os {
            tid: w.pid()?,
            op: w.one_of(&Op::ALL)?,
            errno: w.errno()?,
        },
        _ => return None,
    };
    w.end().then_some(e)
}

/// How the kind of an `io::Error` without an errno travels: the kinds the
/// readers of `/proc` make, the rest as `other`.
const IO_KINDS: [io::ErrorKind; 3] = [
    io::ErrorKind::NotFound,
    io::ErrorKind::InvalidData,
    io::ErrorKind::Other,
];

/// An `io::Error`: `errno N`, or (for one that is no system call's
/// failure) its kind and its message, which ends the record.
fn put_io(line: &mut String, e: &io::Error) {
    match e.raw_os_error() {
        Some(errno) => put(line, format_args!("errno {errno}")),
        None => {
            let kind = IO_KINDS
                .into_iter()
                .find(|k| *k == e.kind())
                .unwrap_or(io::ErrorKind::Other);
            put(line, format_args!("{kind:?} {e}"))
        }
    }
}

fn take_io(w: &mut Words<'_>) -> Option<io::Error> {
    let word = w.word()?;
    if word == "errno" {
        let errno = w.number()?;
        return w.end().then(|| io::Error::from_raw_os_error(errno));
    }
    let kind = IO_KINDS.into_iter().find(|k| format!("{k:?}") == word)?;
    Some(io::Error::new(kind, w.tail().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        let plain = Request {
            holder: 12,
            flags: 0x0400_0000,
            writer: 0,
            known: None,
            tracer: None,
        };
        assert_eq!(plain.encode(), "move 12 67108864 0");
        assert_eq!(Request::decode(b"move 12 67108864 0"), Some(plain));
        let known = Request {
            holder: 3,
            flags: 0x0400_0000,
            writer: 9,
            known: Some(Known {
                local: 4711,
                inodes: [1, 2, 3, 4, 5, 6, 7, 4_026_531_838],
            }),
            tracer: Some(Credentials::parse("Uid:\t1\t1\t1\t1\nGid:\t2\t2\t2\t2\nGroups:\t\nCapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t1ff\nCapAmb:\t0\n").expect("credentials")),
        };
        let line = known.encode();
        assert!(
            line.starts_with("move 3 67108864 9 from 4711 1 2 3 4 5 6 7 4026531838 as "),
            "{line}"
        );
        assert_eq!(Request::decode(line.as_bytes()), Some(known));
        assert_eq!(
            Request::decode(b"move 3 1 0 from 4711 1 2 3"),
            None,
            "eight inodes"
        );
        assert_eq!(
            Request::decode(b"move 3 1 0 from 4711 1 2 3 4 5 6 7 8 9"),
            None
        );
        let creds = "0 0 0 0 0 0 0 0 1ff 1ff 0";
        let parsed = Request::decode(format!("move 12 1 7 as {creds}").as_bytes()).unwrap();
        assert_eq!(parsed.writer, 7);
        assert_eq!(parsed.tracer.as_ref().unwrap().to_words(), creds);
        assert_eq!(Request::decode(parsed.encode().as_bytes()), Some(parsed));
        for bad in [
            "move 12 1 0 as 0 0".to_owned(),
            format!("move 12 1 0 by {creds}"),
            "move 12 1".to_owned(),
            "move 12 1 2 3".to_owned(),
            "copy 1 2 3".to_owned(),
            "move x 2 3".to_owned(),
        ] {
            assert_eq!(Request::decode(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(Request::decode(b"move 1 2 \xff"), None);
    }

    /// Every variant of `MoveError` and `TraceError` (and every value of
    /// the kinds they carry) comes back as it went, with the same errno
    /// and the same message.
    #[test]
    fn every_move_error_round_trips() {
        let mut errors = crate::errno::tests::moves()
            .into_iter()
            .map(|(e, _)| e)
            .collect::<Vec<_>>();
        errors.extend(
            crate::errno::tests::traces()
                .into_iter()
                .map(|(e, _)| MoveError::Trace(e)),
        );
        let t = Pid::from_raw(3);
        errors.extend(Op::ALL.map(|op| {
            MoveError::Trace(TraceError::Os {
                tid: t,
                op,
                errno: Errno::EPERM,
            })
        }));
        errors.extend(Unsupported::ALL.map(MoveError::Unsupported));
        errors.extend(Unsupported::ALL.map(|u| MoveError::Trace(TraceError::Unsupported(u))));
        errors.extend(Call::ALL.map(|syscall| MoveError::SeccompKills { tid: 4, syscall }));
        errors.extend(Step::ALL.map(|step| MoveError::Untrusted { tid: 4, step }));
        errors.push(MoveError::Proc(io::Error::new(
            io::ErrorKind::InvalidData,
            "malformed /proc/PID/stat",
        )));
        errors.push(MoveError::Proc(io::Error::other(
            "no NSpid in /proc/PID/status",
        )));
        errors.push(MoveError::RollbackFailed {
            tid: 9,
            cause: Box::new(MoveError::Proc(io::Error::new(
                io::ErrorKind::NotFound,
                "two words",
            ))),
        });
        for e in errors {
            let (errno, message) = (crate::errno::of_move(&e), e.to_string());
            let record = Answer::Failed(e).encode();
            let Some(Answer::Failed(back)) = Answer::decode(record.as_bytes()) else {
                panic!("{record}");
            };
            assert_eq!(crate::errno::of_move(&back), errno, "{record}");
            assert_eq!(back.to_string(), message, "{record}");
            assert_eq!(Answer::Failed(back).encode(), record);
        }
    }

    #[test]
    fn other_answers() {
        for (answer, record) in [
            (Answer::Seized, "seized"),
            (Answer::Leaving, "leaving"),
            (Answer::Moved(3), "ok 3"),
            (Answer::Malformed, "malformed"),
        ] {
            assert_eq!(answer.encode(), record);
            let back = Answer::decode(record.as_bytes()).unwrap();
            assert_eq!(back.encode(), record);
        }
        for bad in [
            &b"ok"[..],
            b"ok x",
            b"ok 3 4",
            b"err",
            b"err gone",
            b"err gone 1 2",
            b"err trace os 1 Nope 1",
            b"err refused 1 Setns 22",
            b"seized now",
            b"\xff",
        ] {
            assert!(Answer::decode(bad).is_none(), "{bad:?}");
        }
    }
}

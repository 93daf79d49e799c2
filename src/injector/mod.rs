//! Injectors: long-lived helper processes that run moves for the daemon.
//!
//! The daemon never traces a process itself. A tracer that dies in the
//! middle of an injected syscall leaves its tracee with the injection's
//! registers, or, during a single step, with a SIGTRAP nobody catches, which
//! kills it. So each move runs in an injector, a process of its own
//! (`nsproxyfs --internal-injector`, started by exec of the daemon's binary)
//! that the daemon's death does not reach: an injector finishes the move in
//! flight, all or nothing, then sees its channel close and exits.
//!
//! The daemon starts injectors lazily and keeps the idle ones ([`Injectors`]):
//! a move checks one out, or starts one if none is idle, and gives it back
//! when done, so there are never more than there are concurrent moves.
//!
//! # The channel
//!
//! Each injector talks to the daemon over its standard input, one end of a
//! `SOCK_SEQPACKET` socket pair: every message is one record, and the
//! daemon's death (its end closing) reads as EOF. One move:
//!
//! * daemon: `move HOLDER FLAGS WRITER`, with the target's pidfd attached
//!   (`SCM_RIGHTS`). HOLDER is the holder's pid in the target's pid
//!   namespace, FLAGS the `CLONE_NEW*` kinds to join, WRITER the target's
//!   thread blocked in the write that asked for the move, or 0.
//! * injector: `seized`, when every thread is asked to stop and the daemon
//!   may answer the writer's write (sent only if WRITER is not 0);
//! * injector: `leaving`, only if a thread of the target would not stop, or
//!   is a leader that exited while its group runs on: it stays attached to
//!   the injector until the injector exits, which it does right after its
//!   answer (the daemon does not use it again);
//! * injector: `ok THREADS`, or `err` and the [`MoveError`]
//!   itself, which the daemon rebuilds (see [`wire`]), or `malformed`.
//!
//! Before its first move, a new injector may get `reader`, with the
//! daemon's one-thread BPF program attached ([`wire::READER`]); it is not
//! answered.
//!
//! An injector that sends anything else, or whose channel ends before the
//! last line, is dropped and the move fails with `EIO`.

use crate::sys::socket as sys;
pub mod wire;

use crate::ns::creds::{self, Credentials};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::{Child, Command, Stdio};

use nix::sched::CloneFlags;
use parking_lot::Mutex;

use crate::transfer::{self, MoveError, ProcessHandle, Writer};
use wire::{Answer, Request};

/// Why the daemon got no answer from an injector, or the injector did not
/// understand the daemon.
#[derive(Debug, thiserror::Error)]
pub enum InjectorError {
    /// No injector could be started.
    #[error("cannot start an injector: {0}")]
    Start(io::Error),
    /// A new injector did not take the request.
    #[error("cannot hand the move to a new injector: {0}")]
    NotSent(io::Error),
    /// The injector's channel ended before its last answer.
    #[error("the injector ended without an answer")]
    Ended,
    /// Reading the injector's channel failed.
    #[error("cannot read the injector: {0}")]
    Read(io::Error),
    /// The injector said something that is no answer (the record, as sent).
    #[error("unexpected answer from the injector: {:?}", .0.escape_ascii().to_string())]
    BadAnswer(Box<[u8]>),
    /// The injector did not understand the request.
    #[error("the injector did not understand the request")]
    Malformed,
}

/// Why a move handed to an injector did not happen: the move's own error,
/// or the daemon could not get an answer from the injector.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The move failed in the injector; the process was left as it was.
    #[error(transparent)]
    Move(#[from] MoveError),
    /// No answer came from the injector.
    #[error(transparent)]
    Injector(#[from] InjectorError),
}

/// A move's result, as the injector pool gives it.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The first argument that makes `nsproxyfs` an injector (see [`serve`]);
/// not meant for people.
pub const INJECTOR_ARG: &str = "--internal-injector";

/// An injector's name (command name and `argv[0]`), so that it is never
/// taken for the daemon.
pub const INJECTOR_NAME: &str = "nsproxyfs-inj";

/// Idle injectors kept at most; more are only ever started for concurrent
/// moves, and the surplus leaves once they are done.
const MAX_IDLE: usize = 8;

/// Longest record on the channel.
const RECORD: usize = 4096;

/// The daemon's injectors.
///
/// `idle` and `live` are leaf locks, never held across a move or a spawn.
#[derive(Debug, Default)]
pub struct Injectors {
    /// Whether moves go ahead for targets a seccomp filter would kill.
    fatal_seccomp: transfer::FatalSeccomp,
    idle: Mutex<Vec<Injector>>,
    /// The pids of every injector started and not yet retired, idle or busy.
    live: Mutex<Vec<i32>>,
}

impl Injectors {
    /// No injector yet: the first move starts one. `fatal_seccomp` is
    /// handed to every injector started.
    pub fn new(fatal_seccomp: transfer::FatalSeccomp) -> Injectors {
        Injectors {
            fatal_seccomp,
            idle: Mutex::default(),
            live: Mutex::default(),
        }
    }

    /// The pids of the live injectors (in the daemon's pid namespace).
    pub fn pids(&self) -> Vec<i32> {
        self.live.lock().clone()
    }

    /// Moves `target` into the namespaces of kinds `flags` of the holder
    /// whose pid in the target's pid namespace is `holder`, in an injector.
    /// Returns the number of threads moved.
    pub fn run(
        &self,
        target: &ProcessHandle,
        source: transfer::Source,
        flags: libc::c_int,
        writer: Option<Writer<'_>>,
        tracer: Option<&Credentials>,
    ) -> Result<usize> {
        let writer_tid = writer.as_ref().map(|w| w.tid);
        let sent = self.send(None, target, source, flags, writer_tid, tracer)?;
        self.finish(sent, writer)
    }

    /// Gives back an injector [`Injectors::take_idle`] took, unused.
    pub fn put_back(&self, idle: Idle) {
        self.check_in(idle.0);
    }

    /// An idle injector, taken out of the pool for [`Injectors::send`];
    /// `None` if none is idle (starting one is the caller's to decide).
    pub fn take_idle(&self) -> Option<Idle> {
        self.idle.lock().pop().map(Idle)
    }

    /// Hands the move of `target` to an injector (`first`, if given and
    /// alive, else an idle one, else a new one) and returns without
    /// waiting for its answer, which [`Injectors::finish`] takes.
    /// `writer` is the writer's thread when it belongs to the target (see
    /// [`Writer`]).
    pub fn send(
        &self,
        mut first: Option<Idle>,
        target: &ProcessHandle,
        source: transfer::Source,
        flags: libc::c_int,
        writer: Option<nix::unistd::Pid>,
        tracer: Option<&Credentials>,
    ) -> Result<Sent> {
        let request = Request {
            holder: source.seen,
            flags,
            writer: writer.map_or(0, |w| w.as_raw()),
            known: source.known,
            tracer: tracer.cloned(),
        }
        .encode();
        // An idle injector may have died meanwhile (someone killed it): that
        // shows as a refused send, before anything of the move happened, and
        // the next one is tried.
        loop {
            // Taken in a statement of its own: the lock must not be held
            // while a new injector starts.
            let idle = match first.take() {
                Some(Idle(injector)) => Some(injector),
                None => self.idle.lock().pop(),
            };
            let (injector, fresh) = match idle {
                Some(i) => (i, false),
                None => (self.spawn()?, true),
            };
            match injector.send(&request, target.pidfd()) {
                Ok(()) => return Ok(Sent { injector }),
                Err(source) => {
                    self.retire(injector);
                    if fresh {
                        return Err(InjectorError::NotSent(source).into());
                    }
                }
            }
        }
    }

    /// Waits for the answer to a move [`Injectors::send`] handed over:
    /// `writer` is answered once the target's threads are asked to stop,
    /// when it is one of them. Returns the number of threads moved.
    pub fn finish(&self, sent: Sent, mut writer: Option<Writer<'_>>) -> Result<usize> {
        let Sent { injector } = sent;
        match injector.receive(writer.as_mut()) {
            Exchange::Answered(outcome) => {
                self.check_in(injector);
                outcome
            }
            Exchange::Leaving(outcome) => {
                self.retire(injector);
                outcome
            }
            Exchange::Broken(e) => {
                self.retire(injector);
                Err(e)
            }
        }
    }

    fn spawn(&self) -> Result<Injector> {
        let injector = Injector::spawn(self.fatal_seccomp).map_err(InjectorError::Start)?;
        self.live.lock().push(injector.pid());
        log::debug!("injector {} started", injector.pid());
        // The kernel's reads of a stopped target, where the daemon has
        // them; without, the injector reads /proc, as it does if this
        // record is lost (a failed send here shows at the move's).
        if let Some(prog) = crate::kview::membership().thread_program()
            && let Err(e) = injector.send_bytes(wire::READER, prog)
        {
            log::debug!("injector {}: the BPF reader not sent: {e}", injector.pid());
        }
        Ok(injector)
    }

    fn check_in(&self, injector: Injector) {
        let mut idle = self.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(injector);
            return;
        }
        drop(idle);
        self.retire(injector);
    }

    /// Lets an injector go: its channel closes, so it exits once its move
    /// (if any) is over; its exit is collected without blocking the caller.
    fn retire(&self, injector: Injector) {
        let pid = injector.pid();
        self.live.lock().retain(|&p| p != pid);
        let Injector { mut child, channel } = injector;
        drop(channel);
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let reaper = std::thread::Builder::new()
            .name("injector-reaper".into())
            .spawn(move || {
                let _ = child.wait();
            });
        if let Err(e) = reaper {
            log::warn!("injector {pid} will not be reaped: {e}");
        }
    }
}

impl Drop for Injectors {
    /// At the daemon's end: idle injectors are let go and collected, for a
    /// little while, so that none is left behind as a zombie (where the
    /// process that inherits orphans does not collect them).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.idle.lock());
        let mut children: Vec<Child> = idle
            .into_iter()
            .map(|Injector { child, channel }| {
                drop(channel);
                child
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !children.is_empty() && std::time::Instant::now() < deadline {
            children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
            if !children.is_empty() {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        for c in &children {
            log::debug!(
                "injector {} did not end in time; left to exit on its own",
                c.id()
            );
        }
    }
}

/// How one exchange with an injector went.
enum Exchange {
    /// The injector answered; the move's own outcome.
    Answered(Result<usize>),
    /// The injector answered and exits: a thread that would not stop is
    /// attached to it until it does.
    Leaving(Result<usize>),
    /// The injector broke off (died, or said something unexpected) after
    /// taking the request.
    Broken(Error),
}

/// One injector process and the daemon's end of its channel.
#[derive(Debug)]
struct Injector {
    child: Child,
    channel: OwnedFd,
}

/// An idle injector taken out of the pool ([`Injectors::take_idle`]).
#[derive(Debug)]
pub struct Idle(Injector);

/// A move handed to an injector, whose answer is still to be read
/// ([`Injectors::finish`]). Dropping it lets the injector go: it finishes
/// the move and exits.
#[derive(Debug)]
pub struct Sent {
    injector: Injector,
}

impl Injector {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Starts `/proc/self/exe --internal-injector` (the daemon's own binary,
    /// even if the file was replaced since) with its end of the channel as
    /// standard input. exec, not a bare fork: the daemon is multithreaded,
    /// and a forked copy of it must not run code that takes locks.
    fn spawn(fatal_seccomp: transfer::FatalSeccomp) -> io::Result<Injector> {
        let (channel, theirs) = sys::seqpacket_pair()?;
        let mut cmd = Command::new("/proc/self/exe");
        std::os::unix::process::CommandExt::arg0(&mut cmd, INJECTOR_NAME);
        cmd.arg(INJECTOR_ARG);
        if fatal_seccomp == transfer::FatalSeccomp::Allow {
            cmd.arg(ALLOW_FATAL_SECCOMP_ARG);
        }
        let child = cmd
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Injector { child, channel })
    }

    /// Sends a request, with the target's pidfd; an error means nothing
    /// happened.
    fn send(&self, request: &str, pidfd: BorrowedFd<'_>) -> io::Result<()> {
        self.send_bytes(request.as_bytes(), pidfd)
    }

    /// Sends one record with descriptor `fd` attached.
    fn send_bytes(&self, record: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
        sys::send(self.channel.as_fd(), record, Some(fd))
    }

    /// Reads the answers to the request sent, up to the outcome.
    fn receive(&self, mut writer: Option<&mut Writer<'_>>) -> Exchange {
        let channel = self.channel.as_fd();
        let mut buf = vec![0u8; RECORD];
        let mut leaving = false;
        loop {
            let n = match sys::recv(channel, &mut buf) {
                Ok((0, _)) => return Exchange::Broken(InjectorError::Ended.into()),
                Ok((n, _)) => n,
                Err(source) => return Exchange::Broken(InjectorError::Read(source).into()),
            };
            let outcome = match Answer::decode(&buf[..n]) {
                Some(Answer::Seized) => {
                    match writer.take() {
                        Some(w) => (w.answer)(),
                        None => return Exchange::Broken(bad_answer(&buf[..n])),
                    }
                    continue;
                }
                Some(Answer::Leaving) => {
                    leaving = true;
                    continue;
                }
                Some(Answer::Moved(threads)) => Ok(threads),
                Some(Answer::Failed(e)) => Err(Error::Move(e)),
                Some(Answer::Malformed) => Err(InjectorError::Malformed.into()),
                None => return Exchange::Broken(bad_answer(&buf[..n])),
            };
            return match leaving {
                true => Exchange::Leaving(outcome),
                false => Exchange::Answered(outcome),
            };
        }
    }
}

fn bad_answer(record: &[u8]) -> Error {
    InjectorError::BadAnswer(record.into()).into()
}

/// The kernel's answer, for `creds`, to whether they may attach to each of
/// `tids`: the first thread refused is named.
fn may_trace(
    creds: &Credentials,
    tids: &[nix::unistd::Pid],
) -> std::result::Result<(), transfer::MoveError> {
    let tids: Vec<i32> = tids.iter().map(|t| t.as_raw()).collect();
    match creds::may_attach_all(creds, &tids) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((tid, _))) => Err(transfer::MoveError::TraceDenied(tid)),
        // Unable to ask: refused, never assumed.
        Err(e) => {
            let first = tids.first().copied().unwrap_or(0);
            log::warn!("cannot ask again whether the caller may trace {first}: {e}");
            Err(transfer::MoveError::TraceDenied(first))
        }
    }
}

/// The injector's argument after [`INJECTOR_ARG`] when the daemon runs
/// with `--allow-fatal-seccomp`.
pub const ALLOW_FATAL_SECCOMP_ARG: &str = "--allow-fatal-seccomp";

/// The injector: serves moves on its standard input until the daemon's end
/// of the channel closes, then returns its exit status. `args` are the
/// arguments after [`INJECTOR_ARG`]; `errno_of` is the errno a writer
/// moving itself sees for a move that fails after its write was answered
/// ([`crate::errno::of_move`], handed down by the binary).
pub fn serve(args: &[String], errno_of: transfer::ErrnoOf) -> i32 {
    let fatal_seccomp = if args.iter().any(|a| a == ALLOW_FATAL_SECCOMP_ARG) {
        transfer::FatalSeccomp::Allow
    } else {
        transfer::FatalSeccomp::Refuse
    };
    crate::sys::process::shield_from_signals();
    // Every thread of this process blocks SIGCHLD (it has one, and the
    // short-lived thread of a rights check inherits the mask and waits
    // for nothing): a tracee's stop can wake it at once from a wait that
    // must also end at a deadline.
    if let Err(e) = crate::inject::traced::wake_on_sigchld() {
        log::warn!("waits for a tracee to stop will poll: {e}");
    }
    crate::sys::process::close_from(3);
    let stdin = io::stdin();
    let channel = stdin.as_fd();
    let mut buf = vec![0u8; RECORD];
    loop {
        // The descriptor a record carries: the target's pidfd with a move,
        // the program with `reader`.
        let (n, attached) = match sys::recv(channel, &mut buf) {
            // The daemon is gone (or let this injector go).
            Ok((0, _)) => return 0,
            Ok(got) => got,
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                eprintln!("nsproxyfs: {INJECTOR_ARG} is for the daemon's own use");
                return 2;
            }
            Err(e) => {
                eprintln!("nsproxyfs injector: reading the daemon: {e}");
                return 1;
            }
        };
        if &buf[..n] == wire::READER {
            if let Some(prog) = attached {
                transfer::read_threads_with(prog);
            }
            continue;
        }
        let say = |answer: &Answer| {
            // A daemon that died meanwhile cannot hear it; EOF comes next.
            let _ = sys::send(channel, answer.encode().as_bytes(), None);
        };
        let mut leaving = false;
        let answer = match (Request::decode(&buf[..n]), attached) {
            (Some(request), Some(pidfd)) => {
                match run_move(request, pidfd, fatal_seccomp, errno_of, &say) {
                    Ok(threads) => Answer::Moved(threads),
                    Err(e) => {
                        leaving = e.leaves_tracee_attached();
                        Answer::Failed(e)
                    }
                }
            }
            _ => Answer::Malformed,
        };
        // A thread that would not stop, or a leader that exited while its
        // group runs on, is still attached to this process; only its exit
        // lets it go (untouched).
        if leaving || !crate::inject::still_traced().is_empty() {
            say(&Answer::Leaving);
            say(&answer);
            return 0;
        }
        say(&answer);
    }
}

fn run_move(
    request: Request,
    pidfd: OwnedFd,
    fatal_seccomp: transfer::FatalSeccomp,
    errno_of: transfer::ErrnoOf,
    say: &dyn Fn(&Answer),
) -> std::result::Result<usize, transfer::MoveError> {
    let target = ProcessHandle::from_pidfd(pidfd)?;
    let mut seized = || say(&Answer::Seized);
    let writer = (request.writer != 0).then(|| Writer {
        tid: nix::unistd::Pid::from_raw(request.writer),
        answer: &mut seized,
        errno_of,
    });
    let kinds = CloneFlags::from_bits_retain(request.flags);
    let tracer = request.tracer.as_ref();
    let recheck = |tids: &[nix::unistd::Pid]| tracer.map_or(Ok(()), |c| may_trace(c, tids));
    let source = transfer::Source {
        seen: request.holder,
        known: request.known,
    };
    transfer::move_process_from(
        &target,
        source,
        kinds,
        writer,
        fatal_seccomp,
        Some(&recheck),
    )
    .map(|report| report.threads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_carry_one_descriptor() {
        let (a, b) = sys::seqpacket_pair().unwrap();
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        sys::send(a.as_fd(), b"move 1 2 3", Some(file.as_fd())).unwrap();
        sys::send(a.as_fd(), b"ok 1", None).unwrap();
        let mut buf = [0u8; 64];
        let (n, fd) = sys::recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!(&buf[..n], b"move 1 2 3");
        let fd = fd.expect("a descriptor");
        let same = |f: BorrowedFd<'_>| {
            let md = std::fs::File::from(f.try_clone_to_owned().unwrap())
                .metadata()
                .unwrap();
            (
                std::os::unix::fs::MetadataExt::dev(&md),
                std::os::unix::fs::MetadataExt::ino(&md),
            )
        };
        assert_eq!(same(fd.as_fd()), same(file.as_fd()));
        let (n, fd) = sys::recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fd.is_none()), (&b"ok 1"[..], true));
        drop(a);
        assert_eq!(sys::recv(b.as_fd(), &mut buf).unwrap().0, 0, "EOF");
    }
}

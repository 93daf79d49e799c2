//! `nsproxyfs exec CONTAINER -- CMD [ARGS]`: a new command in a container's
//! effective set, for what cannot be moved (a multithreaded program into
//! another user namespace, a command that must be born in a pid namespace).
//!
//! The set comes from the container's `status` file: one namespace and one
//! openable pin per kind. The pin of each namespace this process is not in
//! yet is opened and checked against the inode `status` named, `status` is
//! read again to be sure the set did not change meanwhile, and only then
//! does this process join those kinds, in [`JOIN_ORDER`], the user namespace after the others (a
//! privileged caller keeps its capabilities over the namespaces owned by its
//! own user namespace until the end) and any kind refused before it once
//! more after it (a caller that gains its rights only inside the container's
//! user namespace). Then it checks that it is where `status` said, and
//! starts the command as a child: pid and time namespaces apply to children
//! only. The command is an ordinary member of the container's pid namespace
//! (its PID 1 is whoever was there: for a fresh one, the daemon's keeper,
//! which also reaps the command's orphans). This process stays outside as
//! its parent, forwards the signals an admin sends to it, and exits with the
//! command's status (128+N if signal N killed it).
//!
//! Before it joins the namespaces, this process joins the container's
//! effective cgroup binding (its `.cgroups`, or the nearest ancestor's), so
//! the command is born under the container's limits: it writes its own pid
//! into each `cgroup.procs`, and the kernel checks the calling user's own
//! rights. It does so first because the host's cgroup mounts are what it
//! sees only until it joins the container's mount namespace.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus};
use nix::unistd::{Gid, Pid, Uid};
use thiserror::Error;

use crate::cgroup::{Hierarchies, Membership, PROCS};
use crate::ns::{Kind, Namespace, NsError};
use crate::service::{StatusError, StatusLine, parse_status};
use crate::tree::CGROUPS;

/// Exit status when `nsproxyfs exec` itself fails (as `env`, `chroot` and
/// container runtimes use it).
pub const EXIT_FAILED: u8 = 125;
/// Exit status when the command was found but could not be run.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// The order in which kinds are joined, the user namespace aside (see the
/// module documentation). Mount comes last so that the caller's working
/// directory can be looked up again in the container's mount table.
pub const JOIN_ORDER: [Kind; 7] = [
    Kind::Cgroup,
    Kind::Ipc,
    Kind::Uts,
    Kind::Net,
    Kind::Pid,
    Kind::Time,
    Kind::Mnt,
];

/// Signals sent to `nsproxyfs exec` that are passed on to the command.
const FORWARDED: [Signal; 7] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
];

/// How often the set is read again when it changes while being opened.
const ATTEMPTS: usize = 3;

/// Why `nsproxyfs exec` could not run the command.
#[derive(Debug, Error)]
pub enum ExecError {
    /// The container path does not exist.
    #[error("{}: no such container", .0.display())]
    NoContainer(PathBuf),
    /// The path exists but is not a container of a mounted nsproxyfs.
    #[error(
        "{} is not a container of a mounted nsproxyfs (no status file)",
        .0.display()
    )]
    NotAContainer(PathBuf),
    /// `status` could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadStatus {
        /// The status file.
        path: PathBuf,
        /// What read(2) said.
        source: io::Error,
    },
    /// `status` says something this version does not understand.
    #[error("{}: {reason}", path.display())]
    BadStatus {
        /// The status file.
        path: PathBuf,
        /// What is wrong with it.
        reason: StatusError,
    },
    /// `status` printed `-` for a kind: this process cannot see the daemon.
    #[error(
        "the container's {0} namespace has no path this process can open \
         (the daemon is not visible from its pid namespace)"
    )]
    NoPin(Kind),
    /// A pin could not be opened or is not the namespace it should be.
    #[error(
        "cannot open the container's {kind} namespace at {}: {source}{}",
        pin.display(),
        pin_hint(.source)
    )]
    Pin {
        /// The kind.
        kind: Kind,
        /// The path `status` printed.
        pin: PathBuf,
        /// What went wrong.
        source: NsError,
    },
    /// A pin names another namespace than `status` said.
    #[error(
        "{} is {kind}:[{found}], but status said {kind}:[{expected}]: \
         the container changed while exec started; try again",
        pin.display()
    )]
    Changed {
        /// The kind.
        kind: Kind,
        /// The path `status` printed.
        pin: PathBuf,
        /// What the pin is.
        found: u64,
        /// What `status` said.
        expected: u64,
    },
    /// The container's set kept changing between reads of `status`.
    #[error("the container's namespaces kept changing while exec started; try again")]
    Unsettled,
    /// This process's own namespaces could not be read.
    #[error("cannot read this process's own {kind} namespace: {source}")]
    Own {
        /// The kind.
        kind: Kind,
        /// What went wrong.
        source: NsError,
    },
    /// The kernel refused to join a namespace.
    #[error("cannot join the container's {kind} namespace {kind}:[{ino}]: {errno}{hint}")]
    Join {
        /// The kind.
        kind: Kind,
        /// Its inode.
        ino: u64,
        /// The kernel's answer.
        errno: Errno,
        /// A hint for the usual cause.
        hint: &'static str,
    },
    /// Becoming root of the container's user namespace failed.
    #[error("cannot become root (uid and gid 0) in the container's user namespace: {0}")]
    Root(Errno),
    /// After joining, this process is not where `status` said.
    #[error("joined the wrong {kind} namespace: {kind}:[{found}], not {kind}:[{expected}]")]
    Wrong {
        /// The kind.
        kind: Kind,
        /// Where this process is.
        found: u64,
        /// Where it should be.
        expected: u64,
    },
    /// The container's pid namespace takes no new processes.
    #[error(
        "the container's pid namespace pid:[{0}] takes no new processes: its init has exited \
         (bind a live or fresh pid namespace)"
    )]
    DeadPidNamespace(u64),
    /// `.cgroups` of the container, or of an ancestor, could not be read
    /// or is not understood.
    #[error("{}: {reason}", path.display())]
    Cgroups {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The kernel refused to move this process into a cgroup.
    #[error("cannot join cgroup {cgroup}: {errno}")]
    JoinCgroup {
        /// The cgroup, as `.cgroups` names it.
        cgroup: String,
        /// The kernel's answer.
        errno: Errno,
    },
    /// The command could not be started.
    #[error("{}: {source}", command.display())]
    Spawn {
        /// The program.
        command: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Signals could not be set up or waited for.
    #[error("{what}: {errno}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The kernel's answer.
        errno: Errno,
    },
}

impl ExecError {
    /// The exit status `nsproxyfs exec` ends with for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExecError::Spawn { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                EXIT_NOT_FOUND
            }
            ExecError::Spawn { source, .. }
                if source.raw_os_error() != Some(libc::ENOMEM)
                    && source.raw_os_error() != Some(libc::EAGAIN) =>
            {
                EXIT_CANNOT_RUN
            }
            ExecError::NoContainer(_)
            | ExecError::NotAContainer(_)
            | ExecError::ReadStatus { .. }
            | ExecError::BadStatus { .. }
            | ExecError::NoPin(_)
            | ExecError::Pin { .. }
            | ExecError::Changed { .. }
            | ExecError::Unsettled
            | ExecError::Own { .. }
            | ExecError::Join { .. }
            | ExecError::Root(_)
            | ExecError::Wrong { .. }
            | ExecError::DeadPidNamespace(_)
            | ExecError::Cgroups { .. }
            | ExecError::JoinCgroup { .. }
            | ExecError::Spawn { .. }
            | ExecError::Sys { .. } => EXIT_FAILED,
        }
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> ExecError {
    move |errno| ExecError::Sys { what, errno }
}

/// The container's effective cgroup binding: its `.cgroups`, else its
/// parent's, up to the mount's root; empty if none binds one.
fn effective_cgroups(container: &Path) -> Result<Membership, ExecError> {
    use std::os::unix::fs::MetadataExt;
    let bad = |path: &Path, reason: String| ExecError::Cgroups {
        path: path.to_path_buf(),
        reason,
    };
    let mut dir = container.to_path_buf();
    let dev = std::fs::metadata(&dir)
        .map_err(|e| bad(&dir, e.to_string()))?
        .dev();
    loop {
        let path = dir.join(CGROUPS);
        match std::fs::read_to_string(&path) {
            Ok(text) => return Membership::parse(&text).map_err(|e| bad(&path, e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(&path, e.to_string())),
        }
        let parent = dir.join("..");
        // The mount's root is the last directory of the same device.
        match std::fs::metadata(&parent) {
            Ok(md)
                if md.dev() == dev
                    && md.ino() != std::fs::metadata(&dir).map_or(0, |m| m.ino()) =>
            {
                dir = parent;
            }
            _ => return Ok(Membership::default()),
        }
    }
}

/// Moves this process into every cgroup of `m` by writing its own pid to
/// each `cgroup.procs`: the kernel checks this process's own rights.
fn join_cgroups(m: &Membership) -> Result<(), ExecError> {
    if m.is_empty() {
        return Ok(());
    }
    let refused = |c: &crate::cgroup::Cgroup, errno: Errno| ExecError::JoinCgroup {
        cgroup: c.to_string(),
        errno,
    };
    let hierarchies = Hierarchies::of_host().map_err(|e| ExecError::Cgroups {
        path: PathBuf::from("/proc/self/mountinfo"),
        reason: e.to_string(),
    })?;
    let me = std::process::id().to_string();
    for c in m.iter() {
        let dir = hierarchies
            .dir_of(c)
            .map_err(|e| refused(c, Errno::from_raw(crate::errno::of_cgroup(&e))))?;
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(PROCS))
            .and_then(|mut f| io::Write::write_all(&mut f, me.as_bytes()))
            .map_err(|e| refused(c, Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))))?;
    }
    Ok(())
}

/// Reads and parses `CONTAINER/status`.
fn read_status(container: &Path) -> Result<Vec<StatusLine>, ExecError> {
    let shown = container.to_path_buf();
    match std::fs::metadata(container) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => return Err(ExecError::NotAContainer(shown)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExecError::NoContainer(shown));
        }
        Err(source) => {
            return Err(ExecError::ReadStatus {
                path: shown,
                source,
            });
        }
    }
    let path = container.join("status");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExecError::NotAContainer(shown));
        }
        Err(source) => {
            return Err(ExecError::ReadStatus { path, source });
        }
    };
    parse_status(&text).map_err(|reason| ExecError::BadStatus { path, reason })
}

/// The container's set as `status` named it, with an open handle on each
/// namespace this process is not in yet (indexed by kind).
#[derive(Debug)]
struct Set {
    lines: Vec<StatusLine>,
    join: Vec<Option<Namespace>>,
}

impl Set {
    fn expected(&self, kind: Kind) -> u64 {
        self.lines[kind.index()].ino
    }
}

/// Opens the pin of each line whose namespace this process is not in, and
/// checks that it is the namespace `status` named. Kinds it is in already
/// need no pin.
fn open_set(lines: &[StatusLine]) -> Result<Vec<Option<Namespace>>, ExecError> {
    lines
        .iter()
        .map(|line| {
            if own_ino(line.kind)? == line.ino {
                return Ok(None);
            }
            let pin = line.pin.clone().ok_or(ExecError::NoPin(line.kind))?;
            let pin_err = |source| ExecError::Pin {
                kind: line.kind,
                pin: pin.clone(),
                source,
            };
            let file = std::fs::File::open(&pin).map_err(|source| {
                pin_err(NsError::Open {
                    path: pin.clone(),
                    source,
                })
            })?;
            let origin = crate::ns::Origin::Path(pin.clone());
            let ns = Namespace::from_fd(file.into(), line.kind, origin).map_err(pin_err)?;
            if ns.ino() != line.ino {
                return Err(ExecError::Changed {
                    kind: line.kind,
                    pin,
                    found: ns.ino(),
                    expected: line.ino,
                });
            }
            Ok(Some(ns))
        })
        .collect()
}

/// Reads the container's set and opens it, until two reads of `status`
/// around the opening agree.
fn settle(container: &Path) -> Result<Set, ExecError> {
    let mut lines = read_status(container)?;
    for _ in 0..ATTEMPTS {
        let join = open_set(&lines);
        let again = read_status(container)?;
        if again == lines {
            return Ok(Set { lines, join: join? });
        }
        lines = again;
    }
    Err(ExecError::Unsettled)
}

/// The inode of this process's namespace of `kind` (pid and time: as for
/// its children), read through a pidfd, so it does not depend on which
/// `/proc` the current mount table shows.
fn own_ino(kind: Kind) -> Result<u64, ExecError> {
    Namespace::of_task(std::process::id() as i32, kind)
        .map(|ns| ns.ino())
        .map_err(|source| ExecError::Own { kind, source })
}

/// What joining needs from the kernel: a seam, so the order can be tested
/// without it.
trait Joiner {
    /// setns() into the container's namespace of `kind`.
    fn join(&mut self, kind: Kind) -> Result<(), Errno>;
}

/// Joins the kinds of `todo`: those of [`JOIN_ORDER`] first, then user,
/// then once more those refused with EPERM before it.
fn join_all(todo: &[Kind], joiner: &mut impl Joiner) -> Result<(), (Kind, Errno)> {
    let user = todo.contains(&Kind::User);
    let mut later = Vec::new();
    for kind in JOIN_ORDER.into_iter().filter(|k| todo.contains(k)) {
        match joiner.join(kind) {
            Ok(()) => {}
            Err(Errno::EPERM) if user => later.push(kind),
            Err(e) => return Err((kind, e)),
        }
    }
    if user {
        joiner.join(Kind::User).map_err(|e| (Kind::User, e))?;
    }
    for kind in later {
        joiner.join(kind).map_err(|e| (kind, e))?;
    }
    Ok(())
}

/// The real joiner: setns() on the opened pins.
struct Kernel<'a> {
    set: &'a Set,
}

impl Joiner for Kernel<'_> {
    fn join(&mut self, kind: Kind) -> Result<(), Errno> {
        // Only kinds with an open namespace are ever asked for.
        let ns = self.set.join[kind.index()].as_ref().ok_or(Errno::EBADF)?;
        nix::sched::setns(ns.fd(), CloneFlags::from_bits_retain(kind.clone_flag()))
    }
}

/// Takes uid and gid 0 in the user namespace just joined, as nsenter does:
/// the command runs as the container's root.
fn become_root() -> Result<(), ExecError> {
    match nix::unistd::setgroups(&[]) {
        // A user namespace whose setgroups is denied keeps the groups.
        Ok(()) | Err(Errno::EPERM) => {}
        Err(e) => return Err(ExecError::Root(e)),
    }
    let (uid, gid) = (Uid::from_raw(0), Gid::from_raw(0));
    nix::unistd::setresgid(gid, gid, gid).map_err(ExecError::Root)?;
    nix::unistd::setresuid(uid, uid, uid).map_err(ExecError::Root)
}

/// Why a pin may not open: the state directory is root's alone.
fn pin_hint(e: &NsError) -> &'static str {
    match e {
        NsError::Open { source, .. } if source.raw_os_error() == Some(libc::EACCES) => {
            " (pins are root's alone, and joining needs CAP_SYS_ADMIN over the namespace: run \
             as root)"
        }
        _ => "",
    }
}

fn join_hint(kind: Kind, errno: Errno) -> &'static str {
    match (kind, errno) {
        (_, Errno::EPERM) => " (joining needs CAP_SYS_ADMIN over the namespace: run as root)",
        (Kind::Pid, Errno::EINVAL) => {
            " (a pid namespace can only be joined from its parent or an ancestor)"
        }
        (Kind::User, Errno::EINVAL) => {
            " (a user namespace can only be joined from outside it, single-threaded)"
        }
        _ => "",
    }
}

/// Moves this process into `set` and checks that it arrived.
fn enter(set: &Set) -> Result<(), ExecError> {
    let todo: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| set.join[k.index()].is_some())
        .collect();
    let cwd = std::env::current_dir().ok();
    join_all(&todo, &mut Kernel { set }).map_err(|(kind, errno)| ExecError::Join {
        kind,
        ino: set.expected(kind),
        errno,
        hint: join_hint(kind, errno),
    })?;
    if todo.contains(&Kind::User) {
        become_root()?;
    }
    if todo.contains(&Kind::Mnt) {
        // Joining a mount namespace moves the root and working directory to
        // its root; the same path there is what the caller means, if any.
        let here = cwd.filter(|p| std::env::set_current_dir(p).is_ok());
        if here.is_none() {
            let _ = std::env::set_current_dir("/");
        }
    }
    for kind in Kind::ALL {
        let found = own_ino(kind)?;
        let expected = set.expected(kind);
        if found != expected {
            return Err(ExecError::Wrong {
                kind,
                found,
                expected,
            });
        }
    }
    Ok(())
}

/// Blocks the forwarded signals and SIGCHLD, and returns a descriptor that
/// reads them. The command must not inherit the mask: see [`unmasked_command`].
fn signals() -> Result<SignalFd, ExecError> {
    let mut set = SigSet::empty();
    for sig in FORWARDED {
        set.add(sig);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block().map_err(sys("block signals"))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC).map_err(sys("signalfd"))
}

/// `si_code` of a signal the kernel sent on a terminal's behalf (Ctrl-C).
const SI_KERNEL: i32 = 0x80;

/// Waits for `child`, forwarding signals, and returns its exit status.
fn supervise(child: Pid, signals: &SignalFd) -> Result<u8, ExecError> {
    loop {
        match nix::sys::wait::waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code as u8),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128u8.wrapping_add(sig as u8)),
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(ExecError::Sys {
                    what: "wait for the command",
                    errno: e,
                });
            }
        }
        let info = match signals.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(ExecError::Sys {
                    what: "read signals",
                    errno: e,
                });
            }
        };
        let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        if sig == Signal::SIGCHLD {
            continue;
        }
        // A terminal signals its whole foreground process group: if the
        // command is in ours, it has this signal already.
        if info.ssi_code == SI_KERNEL
            && nix::unistd::getpgid(Some(child)).ok() == Some(nix::unistd::getpgrp())
        {
            continue;
        }
        // The child is not reaped before waitpid above sees it end, so its
        // pid cannot have been reused.
        let _ = nix::sys::signal::kill(child, sig);
    }
}

/// The command to start, with an empty signal mask: this process blocks
/// the signals it forwards, and a blocked mask is inherited across fork and
/// exec.
fn unmasked_command(program: &OsString, args: &[OsString]) -> std::process::Command {
    let mut cmd = std::process::Command::new(program);
    cmd.args(args);
    crate::sys::process::unblock_signals_at_exec(&mut cmd);
    cmd
}

/// Runs `command` in the effective set of `container` and returns the exit
/// status `nsproxyfs exec` should end with.
pub fn run(container: &Path, command: &[OsString]) -> Result<u8, ExecError> {
    let Some((program, args)) = command.split_first() else {
        return Err(ExecError::Spawn {
            command: PathBuf::new(),
            source: io::Error::from_raw_os_error(libc::EINVAL),
        });
    };
    let set = settle(container)?;
    join_cgroups(&effective_cgroups(container)?)?;
    enter(&set)?;
    let signals = signals()?;
    let spawned = unmasked_command(program, args).spawn();
    let child = match spawned {
        Ok(c) => c,
        Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
            return Err(ExecError::DeadPidNamespace(set.expected(Kind::Pid)));
        }
        Err(source) => {
            return Err(ExecError::Spawn {
                command: PathBuf::from(program),
                source,
            });
        }
    };
    let pid = Pid::from_raw(child.id() as i32);
    supervise(pid, &signals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the calls; refuses the kinds of `refuse` until user is
    /// joined, and everything in `fail`.
    #[derive(Default)]
    struct Fake {
        calls: Vec<Kind>,
        refuse_before_user: Vec<Kind>,
        fail: Vec<Kind>,
    }

    impl Joiner for Fake {
        fn join(&mut self, kind: Kind) -> Result<(), Errno> {
            self.calls.push(kind);
            if self.fail.contains(&kind) {
                return Err(Errno::EINVAL);
            }
            let in_user = self.calls[..self.calls.len() - 1].contains(&Kind::User);
            if self.refuse_before_user.contains(&kind) && !in_user {
                return Err(Errno::EPERM);
            }
            Ok(())
        }
    }

    #[test]
    fn user_is_joined_after_the_others_and_mnt_last_of_those() {
        let mut fake = Fake::default();
        join_all(&Kind::ALL, &mut fake).unwrap();
        assert_eq!(
            fake.calls,
            [
                Kind::Cgroup,
                Kind::Ipc,
                Kind::Uts,
                Kind::Net,
                Kind::Pid,
                Kind::Time,
                Kind::Mnt,
                Kind::User
            ]
        );
    }

    #[test]
    fn kinds_refused_before_user_are_tried_again_after_it() {
        let mut fake = Fake {
            refuse_before_user: vec![Kind::Net, Kind::Mnt],
            ..Fake::default()
        };
        join_all(&[Kind::Net, Kind::Uts, Kind::Mnt, Kind::User], &mut fake).unwrap();
        assert_eq!(
            fake.calls,
            [
                Kind::Uts,
                Kind::Net,
                Kind::Mnt,
                Kind::User,
                Kind::Net,
                Kind::Mnt
            ]
        );
    }

    #[test]
    fn a_refusal_without_a_user_namespace_to_join_is_final() {
        let mut fake = Fake {
            refuse_before_user: vec![Kind::Net],
            ..Fake::default()
        };
        assert_eq!(
            join_all(&[Kind::Uts, Kind::Net, Kind::Mnt], &mut fake),
            Err((Kind::Net, Errno::EPERM))
        );
        assert_eq!(fake.calls, [Kind::Uts, Kind::Net]);
        let mut fake = Fake {
            fail: vec![Kind::Pid],
            ..Fake::default()
        };
        assert_eq!(
            join_all(&[Kind::Pid, Kind::User], &mut fake),
            Err((Kind::Pid, Errno::EINVAL))
        );
    }

    #[test]
    fn only_kinds_asked_for_are_joined() {
        let mut fake = Fake::default();
        join_all(&[], &mut fake).unwrap();
        assert!(fake.calls.is_empty());
        join_all(&[Kind::Time], &mut fake).unwrap();
        assert_eq!(fake.calls, [Kind::Time]);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        let spawn = |errno| ExecError::Spawn {
            command: "x".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(spawn(libc::ENOENT).exit_code(), EXIT_NOT_FOUND);
        assert_eq!(spawn(libc::EACCES).exit_code(), EXIT_CANNOT_RUN);
        assert_eq!(spawn(libc::EAGAIN).exit_code(), EXIT_FAILED);
        assert_eq!(ExecError::NoContainer("x".into()).exit_code(), EXIT_FAILED);
    }
}

//! The one place where an error becomes the errno a caller sees.
//!
//! Every error type that can reach a caller of the filesystem has one
//! function here, written as an exhaustive match: a new variant does not
//! build until it is given its errno. The errors themselves only say what
//! went wrong; which errno that is, is decided here alone (and for a move
//! run by an injector, here too: the injector sends the [`MoveError`]
//! itself, not its errno).

use std::io;

use nix::errno::Errno;

use crate::cgroup::CgroupError;
use crate::inject::TraceError;
use crate::injector::InjectorError;
use crate::ns::NsError;
use crate::ns::creds::CredsError;
use crate::service::Error;
use crate::service::input::InputError;
use crate::transfer::MoveError;
use crate::tree::TreeError;

/// The errno of a refused or failed filesystem request.
pub fn of(e: &Error) -> i32 {
    match e {
        Error::Tree(e) => of_tree(e),
        Error::Ns(e) => of_ns(e),
        Error::Move(e) => of_move(e),
        Error::Injector(e) => of_injector(e),
        Error::Cgroup(e) => of_cgroup(e),
        Error::Frozen(_) => libc::EBUSY,
        Error::Busy { .. } => libc::EAGAIN,
        Error::Input(e) => of_input(e),
        Error::Invalid(_) => libc::EINVAL,
        Error::Denied(_) => libc::EPERM,
        Error::NotFound => libc::ENOENT,
        Error::IsDir => libc::EISDIR,
        Error::NotDir => libc::ENOTDIR,
        Error::Unsupported(_) => libc::EOPNOTSUPP,
        Error::Creds { source, .. } => of_creds(source),
        Error::Sys { source, .. } => of_io(source),
    }
}

/// The errno of a change the tree refused.
pub fn of_tree(e: &TreeError) -> i32 {
    match e {
        TreeError::NotFound => libc::ENOENT,
        TreeError::Exists => libc::EEXIST,
        TreeError::NotEmpty => libc::ENOTEMPTY,
        TreeError::InvalidName(_) | TreeError::KindMismatch { .. } => libc::EINVAL,
        TreeError::Root | TreeError::Discovered => libc::EPERM,
        TreeError::TooDeep => libc::EMLINK,
    }
}

/// The errno of a write that was not understood: always `EINVAL`.
pub fn of_input(e: &InputError) -> i32 {
    match e {
        InputError::Empty
        | InputError::TooLong(_)
        | InputError::Nul
        | InputError::NotUtf8
        | InputError::Spaces
        | InputError::NotAPid(_)
        | InputError::NotAPidOrPath(_) => libc::EINVAL,
    }
}

/// The errno of a namespace that could not be found, opened or made.
pub fn of_ns(e: &NsError) -> i32 {
    match e {
        NsError::NoSuchProcess(_) => libc::ESRCH,
        NsError::WrongKind { .. } | NsError::NotANamespace(_) => libc::EINVAL,
        NsError::Denied { .. } => libc::EPERM,
        NsError::Refused { .. } => libc::EINVAL,
        NsError::TimedOut(_) => libc::ETIMEDOUT,
        NsError::Creds { source, .. } => of_creds(source),
        NsError::Open { source, .. }
        | NsError::Fresh { source, .. }
        | NsError::Sys { source, .. } => of_io(source),
    }
}

/// The errno of a move that did not happen.
pub fn of_move(e: &MoveError) -> i32 {
    let errno = match e {
        MoveError::Gone(_) | MoveError::Zombie(_) => Errno::ESRCH,
        MoveError::KernelThread(_)
        | MoveError::SelfProcess
        | MoveError::TraceDenied(_)
        | MoveError::SeccompKills { .. }
        | MoveError::SeccompStrict(_)
        | MoveError::SeccompHidden(_)
        | MoveError::SeccompDelegates { .. }
        | MoveError::Untrusted { .. } => Errno::EPERM,
        MoveError::AlreadyTraced { .. } => Errno::EBUSY,
        MoveError::InvalidKinds(_) => Errno::EINVAL,
        // pidfd_open says EINVAL for a pid that is not a process.
        MoveError::Pin { errno, .. } => match *errno {
            Errno::EINVAL => Errno::ESRCH,
            errno => errno,
        },
        // The kernel's answer to the injected call, passed through.
        MoveError::Refused { errno, .. } => *errno,
        MoveError::RollbackFailed { .. } => Errno::EIO,
        MoveError::Unstable(_)
        | MoveError::Execed(_)
        | MoveError::Changed { .. }
        | MoveError::Stuck { .. } => Errno::EAGAIN,
        MoveError::Unsupported(_) => Errno::EOPNOTSUPP,
        MoveError::Trace(e) => return of_trace(e),
        MoveError::Proc(e) => match e.kind() {
            io::ErrorKind::NotFound => Errno::ESRCH,
            _ => Errno::EIO,
        },
    };
    errno as i32
}

/// The errno of a failure of ptrace itself.
pub fn of_trace(e: &TraceError) -> i32 {
    let errno = match e {
        TraceError::Gone(_) => Errno::ESRCH,
        TraceError::AlreadyTraced { .. } => Errno::EBUSY,
        TraceError::Denied(_) => Errno::EPERM,
        TraceError::Unsupported(_) => Errno::EOPNOTSUPP,
        TraceError::NotStopping(_) => Errno::EAGAIN,
        TraceError::NoSyscallSite(_)
        | TraceError::ForeignSite { .. }
        | TraceError::NotInSyscall(_)
        | TraceError::TooManyStops(_)
        | TraceError::StrayStep { .. }
        | TraceError::Os { .. } => Errno::EIO,
    };
    errno as i32
}

/// The errno of a move no injector answered: `EIO`, but for a request the
/// injector did not understand.
pub fn of_injector(e: &InjectorError) -> i32 {
    match e {
        InjectorError::Start(source) => of_io(source),
        InjectorError::NotSent(_)
        | InjectorError::Ended
        | InjectorError::Read(_)
        | InjectorError::BadAnswer(_) => libc::EIO,
        InjectorError::Malformed => libc::EINVAL,
    }
}

/// The errno of a check that could not be made with a caller's
/// credentials: the daemon's own failure, whatever the cause.
pub fn of_creds(e: &CredsError) -> i32 {
    match e {
        CredsError::Gone(_) | CredsError::Unreadable(_) | CredsError::Sys(_) => libc::EIO,
    }
}

/// The errno a system call failed with, or `EIO` for a failure that is
/// not one.
pub fn of_io(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The errno of a failure to read or join cgroups.
pub fn of_cgroup(e: &CgroupError) -> i32 {
    match e {
        CgroupError::BadLine { .. } | CgroupError::Twice(_) => libc::EINVAL,
        CgroupError::NotMounted(_)
        | CgroupError::Unreachable(_)
        | CgroupError::OutsideNamespace(_) => libc::ENOENT,
        CgroupError::Open { errno, .. } | CgroupError::Write { errno, .. } => *errno,
        CgroupError::Gone(_) => libc::ESRCH,
        CgroupError::Creds(e) => of_creds(e),
        CgroupError::Io(e) => of_io(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use nix::unistd::Pid;

    use super::*;
    use crate::inject::{Op, Unsupported};
    use crate::ns::{Kind, Origin};
    use crate::service::{Denied, Invalid};
    use crate::transfer::{Call, Step};

    /// Every variant of a move's error, with the errno a caller sees.
    pub(crate) fn moves() -> Vec<(MoveError, Errno)> {
        let refused = |errno| MoveError::Refused {
            tid: 1,
            step: Step::Setns,
            errno,
            moved_back: 0,
        };
        vec![
            (MoveError::Gone(1), Errno::ESRCH),
            (MoveError::Zombie(1), Errno::ESRCH),
            (MoveError::KernelThread(2), Errno::EPERM),
            (MoveError::SelfProcess, Errno::EPERM),
            (MoveError::AlreadyTraced { tid: 1, tracer: 2 }, Errno::EBUSY),
            (MoveError::TraceDenied(1), Errno::EPERM),
            (MoveError::InvalidKinds(1), Errno::EINVAL),
            (
                MoveError::Pin {
                    pid: 1,
                    errno: Errno::EINVAL,
                },
                Errno::ESRCH,
            ),
            (
                MoveError::Pin {
                    pid: 1,
                    errno: Errno::EMFILE,
                },
                Errno::EMFILE,
            ),
            (refused(Errno::EINVAL), Errno::EINVAL),
            (refused(Errno::EPERM), Errno::EPERM),
            (
                MoveError::RollbackFailed {
                    tid: 1,
                    cause: Box::new(refused(Errno::EPERM)),
                },
                Errno::EIO,
            ),
            (
                MoveError::SeccompKills {
                    tid: 1,
                    syscall: Call::Setns,
                },
                Errno::EPERM,
            ),
            (MoveError::SeccompStrict(1), Errno::EPERM),
            (MoveError::SeccompHidden(1), Errno::EPERM),
            (
                MoveError::SeccompDelegates {
                    tid: 1,
                    syscall: Call::Setns,
                },
                Errno::EPERM,
            ),
            (
                MoveError::Stuck {
                    tid: 1,
                    waited: Duration::from_secs(1),
                },
                Errno::EAGAIN,
            ),
            (
                MoveError::Untrusted {
                    tid: 1,
                    step: Step::PidfdOpen,
                },
                Errno::EPERM,
            ),
            (MoveError::Unstable(1), Errno::EAGAIN),
            (MoveError::Execed(1), Errno::EAGAIN),
            (
                MoveError::Changed {
                    pid: 1,
                    chose: libc::CLONE_NEWUTS,
                    now: libc::CLONE_NEWNET,
                },
                Errno::EAGAIN,
            ),
            (
                MoveError::Unsupported(Unsupported::CompatProcess),
                Errno::EOPNOTSUPP,
            ),
            (
                MoveError::Trace(TraceError::NotStopping(Pid::from_raw(1))),
                Errno::EAGAIN,
            ),
            (
                MoveError::Proc(io::Error::from_raw_os_error(libc::ENOENT)),
                Errno::ESRCH,
            ),
            (
                MoveError::Proc(io::Error::from_raw_os_error(libc::EACCES)),
                Errno::EIO,
            ),
        ]
    }

    /// Every variant of a tracer's failure, with its errno.
    pub(crate) fn traces() -> Vec<(TraceError, Errno)> {
        let t = Pid::from_raw(7);
        vec![
            (TraceError::Gone(t), Errno::ESRCH),
            (
                TraceError::AlreadyTraced { tid: t, tracer: t },
                Errno::EBUSY,
            ),
            (TraceError::Denied(t), Errno::EPERM),
            (
                TraceError::Unsupported(Unsupported::Arch),
                Errno::EOPNOTSUPP,
            ),
            (TraceError::NoSyscallSite(t), Errno::EIO),
            (TraceError::ForeignSite { site: t, tracee: t }, Errno::EIO),
            (TraceError::NotInSyscall(t), Errno::EIO),
            (TraceError::TooManyStops(t), Errno::EIO),
            (TraceError::StrayStep { tid: t, pc: 1 }, Errno::EIO),
            (TraceError::NotStopping(t), Errno::EAGAIN),
            (
                TraceError::Os {
                    tid: t,
                    op: Op::Wait,
                    errno: Errno::EINTR,
                },
                Errno::EIO,
            ),
        ]
    }

    /// Every variant of a namespace's error, with its errno.
    fn namespaces() -> Vec<(NsError, i32)> {
        let path = || std::path::PathBuf::from("/x");
        let io = |errno| io::Error::from_raw_os_error(errno);
        vec![
            (NsError::NoSuchProcess(1), libc::ESRCH),
            (
                NsError::WrongKind {
                    origin: Origin::Process(1),
                    found: Kind::Net,
                    wanted: Kind::Uts,
                },
                libc::EINVAL,
            ),
            (NsError::NotANamespace(Origin::Path(path())), libc::EINVAL),
            (
                NsError::Open {
                    path: path(),
                    source: io(libc::EACCES),
                },
                libc::EACCES,
            ),
            (NsError::TimedOut(path()), libc::ETIMEDOUT),
            (
                NsError::Fresh {
                    kind: Kind::User,
                    source: io(libc::ENOSPC),
                },
                libc::ENOSPC,
            ),
            (
                NsError::Refused {
                    path: path(),
                    why: "x",
                },
                libc::EINVAL,
            ),
            (
                NsError::Denied {
                    uid: 1,
                    kind: Kind::Net,
                    pid: 2,
                },
                libc::EPERM,
            ),
            (
                NsError::Creds {
                    what: "x",
                    source: CredsError::Gone(1),
                },
                libc::EIO,
            ),
            (
                NsError::Sys {
                    what: "x",
                    source: io::Error::other("no errno"),
                },
                libc::EIO,
            ),
        ]
    }

    #[test]
    fn requests() {
        let io = |errno| io::Error::from_raw_os_error(errno);
        let mut cases: Vec<(Error, i32)> = vec![
            (TreeError::NotFound.into(), libc::ENOENT),
            (TreeError::Exists.into(), libc::EEXIST),
            (TreeError::NotEmpty.into(), libc::ENOTEMPTY),
            (TreeError::InvalidName("x").into(), libc::EINVAL),
            (
                TreeError::KindMismatch {
                    ino: 1,
                    bound: Kind::Net,
                    wanted: Kind::Ipc,
                }
                .into(),
                libc::EINVAL,
            ),
            (TreeError::Root.into(), libc::EPERM),
            (TreeError::Discovered.into(), libc::EPERM),
            (TreeError::TooDeep.into(), libc::EMLINK),
            (
                Error::Busy {
                    limit: 1,
                    what: "moves",
                },
                libc::EAGAIN,
            ),
            (Error::Denied(Denied::Daemon(1)), libc::EPERM),
            (Error::NotFound, libc::ENOENT),
            (Error::Invalid(Invalid::PidNsBlind(1)), libc::EINVAL),
            (Error::IsDir, libc::EISDIR),
            (Error::NotDir, libc::ENOTDIR),
            (Error::Unsupported("x"), libc::EOPNOTSUPP),
            (
                Error::Creds {
                    what: "x",
                    source: CredsError::Sys(io(libc::EPERM)),
                },
                libc::EIO,
            ),
            (
                Error::Sys {
                    what: "x",
                    source: io(libc::EMFILE),
                },
                libc::EMFILE,
            ),
            (InjectorError::Start(io(libc::EAGAIN)).into(), libc::EAGAIN),
            (InjectorError::NotSent(io(libc::EPIPE)).into(), libc::EIO),
            (InjectorError::Ended.into(), libc::EIO),
            (InjectorError::Read(io(libc::ECONNRESET)).into(), libc::EIO),
            (
                InjectorError::BadAnswer(b"x".as_slice().into()).into(),
                libc::EIO,
            ),
            (InjectorError::Malformed.into(), libc::EINVAL),
            (
                Error::Frozen(crate::cgroup::Cgroup {
                    id: 0,
                    hierarchy: crate::cgroup::Hierarchy::Unified,
                    path: "/paused".into(),
                }),
                libc::EBUSY,
            ),
            (CgroupError::Gone(1).into(), libc::ESRCH),
            (
                CgroupError::Open {
                    cgroup: crate::cgroup::Cgroup {
                        id: 0,
                        hierarchy: crate::cgroup::Hierarchy::Unified,
                        path: "/a".into(),
                    },
                    errno: libc::EACCES,
                }
                .into(),
                libc::EACCES,
            ),
        ];
        for input in [
            InputError::Empty,
            InputError::TooLong(1),
            InputError::Nul,
            InputError::NotUtf8,
            InputError::Spaces,
            InputError::NotAPid("x".into()),
            InputError::NotAPidOrPath("x".into()),
        ] {
            cases.push((input.into(), libc::EINVAL));
        }
        cases.extend(namespaces().into_iter().map(|(e, n)| (e.into(), n)));
        cases.extend(moves().into_iter().map(|(e, n)| (e.into(), n as i32)));
        for (e, errno) in cases {
            assert_eq!(of(&e), errno, "{e}");
        }
        for creds in [
            CredsError::Gone(1),
            CredsError::Unreadable(1),
            CredsError::Sys(io(libc::EPERM)),
        ] {
            assert_eq!(of_creds(&creds), libc::EIO, "{creds}");
        }
    }

    #[test]
    fn moves_and_traces() {
        for (e, errno) in moves() {
            assert_eq!(of_move(&e), errno as i32, "{e}");
        }
        for (e, errno) in traces() {
            assert_eq!(of_trace(&e), errno as i32, "{e}");
            assert_eq!(of_move(&MoveError::Trace(e)), errno as i32);
        }
    }

    #[test]
    fn cgroups() {
        use crate::cgroup::{Cgroup, Hierarchy};
        let cg = || Cgroup {
            id: 0,
            hierarchy: Hierarchy::Unified,
            path: "/a".into(),
        };
        let cases = [
            (
                CgroupError::BadLine {
                    line: 1,
                    text: "x".into(),
                },
                libc::EINVAL,
            ),
            (CgroupError::Twice(Hierarchy::Unified), libc::EINVAL),
            (
                CgroupError::NotMounted(Hierarchy::V1("pids".into())),
                libc::ENOENT,
            ),
            (CgroupError::Unreachable(cg()), libc::ENOENT),
            (CgroupError::OutsideNamespace(1), libc::ENOENT),
            (
                CgroupError::Open {
                    cgroup: cg(),
                    errno: libc::EACCES,
                },
                libc::EACCES,
            ),
            (
                CgroupError::Write {
                    pid: 1,
                    cgroup: cg(),
                    errno: libc::EBUSY,
                },
                libc::EBUSY,
            ),
            (CgroupError::Gone(1), libc::ESRCH),
            (CgroupError::Creds(CredsError::Gone(1)), libc::EIO),
            (
                CgroupError::Io(io::Error::from_raw_os_error(libc::ENOMEM)),
                libc::ENOMEM,
            ),
        ];
        for (e, errno) in cases {
            assert_eq!(of_cgroup(&e), errno, "{e}");
        }
    }
}

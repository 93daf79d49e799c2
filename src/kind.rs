//! The eight namespace kinds, as `/proc/PID/ns/` names them.

use std::fmt;

/// One kind of Linux namespace.
///
/// The order of [`Kind::ALL`] is the order in which kind files are listed and
/// `status` lines are printed: alphabetical, as `ls /proc/self/ns` shows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Cgroup namespace (`CLONE_NEWCGROUP`).
    Cgroup,
    /// System V IPC and POSIX message queues (`CLONE_NEWIPC`).
    Ipc,
    /// Mount table (`CLONE_NEWNS`).
    Mnt,
    /// Network stack (`CLONE_NEWNET`).
    Net,
    /// Pid namespace that children are born into (`CLONE_NEWPID`).
    Pid,
    /// Time namespace that children are born into (`CLONE_NEWTIME`).
    Time,
    /// User namespace (`CLONE_NEWUSER`).
    User,
    /// Host and domain name (`CLONE_NEWUTS`).
    Uts,
}

/// `CLONE_NEWTIME`, spelled out because not every libc exports it.
pub const CLONE_NEWTIME: i32 = 0x0000_0080;

impl Kind {
    /// Every kind, in listing order.
    pub const ALL: [Kind; 8] = [
        Kind::Cgroup,
        Kind::Ipc,
        Kind::Mnt,
        Kind::Net,
        Kind::Pid,
        Kind::Time,
        Kind::User,
        Kind::Uts,
    ];

    /// The kind's file name in a container and its prefix in `net:[N]`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cgroup => "cgroup",
            Kind::Ipc => "ipc",
            Kind::Mnt => "mnt",
            Kind::Net => "net",
            Kind::Pid => "pid",
            Kind::Time => "time",
            Kind::User => "user",
            Kind::Uts => "uts",
        }
    }

    /// Parses a kind file name.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The `/proc/PID/ns/` entry that holds what a container binds for this
    /// kind: for pid and time that is the namespace children are born into,
    /// because that is the one setns() changes.
    pub fn proc_entry(self) -> &'static str {
        match self {
            Kind::Pid => "pid_for_children",
            Kind::Time => "time_for_children",
            other => other.name(),
        }
    }

    /// The `CLONE_NEW*` flag of this kind, as setns() and unshare() take it.
    pub fn clone_flag(self) -> i32 {
        match self {
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Mnt => libc::CLONE_NEWNS,
            Kind::Net => libc::CLONE_NEWNET,
            Kind::Pid => libc::CLONE_NEWPID,
            Kind::Time => CLONE_NEWTIME,
            Kind::User => libc::CLONE_NEWUSER,
            Kind::Uts => libc::CLONE_NEWUTS,
        }
    }

    /// The kind whose `CLONE_NEW*` flag is `flag`, as `NS_GET_NSTYPE` answers.
    pub fn from_clone_flag(flag: i32) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.clone_flag() == flag)
    }

    /// Position in [`Kind::ALL`], for per-kind arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_order() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(Kind::from_name(kind.name()), Some(kind));
            assert_eq!(Kind::from_clone_flag(kind.clone_flag()), Some(kind));
            assert_eq!(kind.index(), i);
        }
        assert_eq!(Kind::from_name("network"), None);
        assert_eq!(Kind::from_name("pid_for_children"), None);
    }

    #[test]
    fn clone_flags_are_distinct() {
        let all = Kind::ALL.iter().fold(0, |acc, k| {
            assert_eq!(acc & k.clone_flag(), 0);
            acc | k.clone_flag()
        });
        assert_eq!(all.count_ones(), 8);
    }
}

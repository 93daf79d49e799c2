//! Node ids: what each number the kernel holds stands for.
//!
//! A node's id is shown as its `st_ino`, so a kind file's id *is* the
//! inode number of the namespace it names: two kind files naming the same
//! namespace are one node, hard links of each other. nsfs inode numbers are
//! at least 2^31 (the kernel hands them out from 0xF0000000, the initial
//! namespaces just below), so every other node lives under 2^31: a
//! container id shifted left by two, tagged in the low bits.

use crate::tree::ContainerId;

const KIND_MIN: u64 = 1 << 31;
const TAG_PENDING: u64 = 0;
const TAG_DIR: u64 = 1;
const TAG_TASKS: u64 = 2;
const TAG_STATUS: u64 = 3;
/// The `.namespaces` table: the top id below the kind-file range, which
/// [`Node::fits`] keeps from ever being a container's.
const NAMESPACES: u64 = KIND_MIN - 1;

/// Node ids from here up to the aliases are cgroup bindings (a
/// container's `.cgroups`), by binding id: above every namespace inode
/// number, which stays below 2^32.
const CGROUPS_BASE: u64 = 1 << 32;

/// Node ids from here up are other names of a container's `tasks` file
/// (see [`Node::tasks_alias`]); namespace inode numbers stay below 2^32.
const ALIAS_SHIFT: u32 = 40;

/// What a node id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// A container's directory.
    Dir(ContainerId),
    /// A container's `tasks` file.
    Tasks(ContainerId),
    /// A container's `status` file.
    Status(ContainerId),
    /// A kind file: the namespace with this inode number.
    Kind(u64),
    /// A kind file created by `touch` or `echo >` and not bound yet.
    Pending(u64),
    /// The root's `.namespaces` table (with discovery on).
    Namespaces,
    /// A cgroup binding (`.cgroups`), by its id in the tree: every name of
    /// it is this one node.
    Cgroups(u64),
}

impl Node {
    /// The node id the kernel sees.
    pub fn id(self) -> u64 {
        match self {
            Node::Dir(c) => (c.0 << 2) | TAG_DIR,
            Node::Tasks(c) => (c.0 << 2) | TAG_TASKS,
            Node::Status(c) => (c.0 << 2) | TAG_STATUS,
            Node::Kind(ino) => ino,
            Node::Pending(n) => (n << 2) | TAG_PENDING,
            Node::Namespaces => NAMESPACES,
            Node::Cgroups(b) => CGROUPS_BASE | (b & (CGROUPS_BASE - 1)),
        }
    }

    /// The id of name `generation` of container `c`'s `tasks` file; 0 is
    /// [`Node::Tasks`] itself.
    ///
    /// The kernel holds a file's inode lock for as long as a write to it is
    /// answered, and a move may take seconds to answer. While one is
    /// pending, `tasks` is looked up under another node id, a new inode for
    /// the kernel with a lock of its own, so that other writers of the same
    /// `tasks` file do not wait for it. Every name of it is the same file.
    pub fn tasks_alias(c: ContainerId, generation: u32) -> u64 {
        Node::Tasks(c).id() | (u64::from(generation) << ALIAS_SHIFT)
    }

    /// Which name of a `tasks` file a node id is (0 for the file itself,
    /// and for every other node).
    pub fn alias_generation(id: u64) -> u32 {
        (id >> ALIAS_SHIFT) as u32
    }

    /// The node a kernel id stands for.
    pub fn from_id(id: u64) -> Node {
        if id >> ALIAS_SHIFT != 0 {
            let base = id & ((1 << ALIAS_SHIFT) - 1);
            return match base & 3 {
                TAG_TASKS if base < KIND_MIN => Node::Tasks(ContainerId(base >> 2)),
                // No such alias is ever handed out.
                _ => Node::Pending(u64::MAX >> 2),
            };
        }
        if id >= CGROUPS_BASE {
            return Node::Cgroups(id - CGROUPS_BASE);
        }
        if id >= KIND_MIN {
            return Node::Kind(id);
        }
        if id == NAMESPACES {
            return Node::Namespaces;
        }
        let c = ContainerId(id >> 2);
        match id & 3 {
            TAG_DIR => Node::Dir(c),
            TAG_TASKS => Node::Tasks(c),
            TAG_STATUS => Node::Status(c),
            _ => Node::Pending(id >> 2),
        }
    }

    /// Whether a container id still fits below the kind-file range (the
    /// last one is left to [`Node::Namespaces`]).
    pub fn fits(c: ContainerId) -> bool {
        c.0 < (KIND_MIN >> 2) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_fuse_root_and_ids_round_trip() {
        assert_eq!(Node::Dir(ContainerId(0)).id(), 1);
        for node in [
            Node::Dir(ContainerId(7)),
            Node::Tasks(ContainerId(7)),
            Node::Status(ContainerId(0)),
            Node::Kind(4026531840),
            Node::Kind(0xEFFF_FFFB),
            Node::Pending(3),
            Node::Namespaces,
            Node::Cgroups(1),
            Node::Cgroups(0xFFFF_FFFF),
        ] {
            assert_eq!(Node::from_id(node.id()), node);
        }
        let alias = Node::tasks_alias(ContainerId(7), 3);
        assert_ne!(alias, Node::Tasks(ContainerId(7)).id());
        assert_eq!(Node::from_id(alias), Node::Tasks(ContainerId(7)));
        assert_eq!(Node::alias_generation(alias), 3);
        assert_eq!(Node::alias_generation(Node::Tasks(ContainerId(7)).id()), 0);
        assert_eq!(
            Node::tasks_alias(ContainerId(7), 0),
            Node::Tasks(ContainerId(7)).id()
        );
        assert!(Node::fits(ContainerId((1 << 29) - 2)));
        assert!(!Node::fits(ContainerId((1 << 29) - 1)));
        assert_ne!(
            Node::Status(ContainerId((1 << 29) - 2)).id(),
            Node::Namespaces.id()
        );
    }
}

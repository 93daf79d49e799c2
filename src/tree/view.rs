//! Per-observer views: how much of the tree one caller may see and change.
//!
//! A caller whose namespaces are the root container's effective set sees
//! everything. A caller whose namespaces are the effective set of other
//! containers is confined to them: it sees each such container (a *top*)
//! and everything below it in full, the containers above a top only as the
//! path leading to it (a directory holding nothing but the next step), and
//! nothing else. A caller that matches no container, or that cannot be
//! identified, sees an empty root.
//!
//! When a caller matches several containers, its view is their union; a
//! container below another match adds nothing, its ancestor already shows
//! it. This module is plain data, like the tree: the filesystem reads the
//! caller's namespaces and asks here.

use std::collections::HashMap;

use super::{ContainerId, Tree};
use crate::ns::Kind;

/// How much of one container a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// All of it: its files, its children, and the right to change them
    /// (given the capabilities).
    Full,
    /// Only as a step of the path to a container seen in full: the
    /// directory and the one child on the way, nothing else.
    Path,
    /// Not at all: every request about it answers ENOENT.
    Hidden,
}

/// The containers of a tree indexed by effective set, rebuilt when the
/// tree's generation moves on.
#[derive(Debug, Clone)]
pub struct SetIndex {
    generation: u64,
    sets: HashMap<[u64; 8], Vec<ContainerId>>,
}

impl SetIndex {
    /// Indexes every container of `tree` by its effective set, in one walk
    /// from the root (each child's set is its parent's with its own
    /// bindings laid over it).
    pub fn build(tree: &Tree) -> SetIndex {
        let mut sets: HashMap<[u64; 8], Vec<ContainerId>> = HashMap::new();
        let mut stack: Vec<(ContainerId, [u64; 8])> = Vec::new();
        if let Some(root) = tree.get(Tree::ROOT) {
            let set = overlay([0; 8], root);
            stack.push((Tree::ROOT, set));
        }
        while let Some((id, set)) = stack.pop() {
            sets.entry(set).or_default().push(id);
            if let Some(c) = tree.get(id) {
                for &child in c.children().values() {
                    if let Some(cc) = tree.get(child) {
                        stack.push((child, overlay(set, cc)));
                    }
                }
            }
        }
        SetIndex {
            generation: tree.generation(),
            sets,
        }
    }

    /// Whether this index still describes `tree`.
    pub fn is_current(&self, tree: &Tree) -> bool {
        self.generation == tree.generation()
    }

    /// The containers whose effective set is `set`.
    pub fn matching(&self, set: &[u64; 8]) -> &[ContainerId] {
        self.sets.get(set).map_or(&[], Vec::as_slice)
    }
}

fn overlay(mut set: [u64; 8], c: &super::Container) -> [u64; 8] {
    for kind in Kind::ALL {
        if let Some(ino) = c.own(kind) {
            set[kind.index()] = ino;
        }
    }
    set
}

/// What one caller sees of the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// `None`: everything. Otherwise the containers seen in full with all
    /// below them; empty when the caller matches nothing.
    tops: Option<Vec<ContainerId>>,
}

impl View {
    /// The view of a caller in the root container's namespaces.
    pub const ALL: View = View { tops: None };

    /// The view of a caller that matches no container: an empty root.
    pub const NOTHING: View = View {
        tops: Some(Vec::new()),
    };

    /// The view of a caller whose namespaces are `set` (inodes in
    /// [`Kind::ALL`] order, pid and time as for children), or of one that
    /// cannot be identified (`None`).
    pub fn of(tree: &Tree, index: &SetIndex, set: Option<&[u64; 8]>) -> View {
        let Some(set) = set else {
            return View::NOTHING;
        };
        let matches = index.matching(set);
        if matches.contains(&Tree::ROOT) {
            return View::ALL;
        }
        let mut tops: Vec<ContainerId> = matches
            .iter()
            .copied()
            .filter(|&c| !tree.ancestors(c).skip(1).any(|a| matches.contains(&a)))
            .collect();
        tops.sort();
        View { tops: Some(tops) }
    }

    /// Whether this is the unconfined view.
    pub fn is_all(&self) -> bool {
        self.tops.is_none()
    }

    /// The containers this view is confined to, `None` if unconfined.
    pub fn tops(&self) -> Option<&[ContainerId]> {
        self.tops.as_deref()
    }

    /// How much of container `c` this view shows.
    pub fn sees(&self, tree: &Tree, c: ContainerId) -> Seen {
        let Some(tops) = &self.tops else {
            return if tree.get(c).is_some() {
                Seen::Full
            } else {
                Seen::Hidden
            };
        };
        if tree.get(c).is_none() {
            return Seen::Hidden;
        }
        if tree.ancestors(c).any(|a| tops.contains(&a)) {
            return Seen::Full;
        }
        if c == Tree::ROOT || tops.iter().any(|&t| tree.ancestors(t).any(|a| a == c)) {
            return Seen::Path;
        }
        Seen::Hidden
    }

    /// Whether `c` is seen in full.
    pub fn full(&self, tree: &Tree, c: ContainerId) -> bool {
        self.sees(tree, c) == Seen::Full
    }

    /// Whether a process whose namespaces are `set` lives inside this view:
    /// its set is the effective set of a container seen in full.
    pub fn holds_process(&self, tree: &Tree, index: &SetIndex, set: &[u64; 8]) -> bool {
        match &self.tops {
            None => true,
            Some(_) => index.matching(set).iter().any(|&c| self.full(tree, c)),
        }
    }

    /// The containers seen in full that bind `ino` themselves.
    pub fn binders(&self, tree: &Tree, ino: u64) -> Vec<ContainerId> {
        tree.containers_binding(ino)
            .into_iter()
            .filter(|&c| self.full(tree, c))
            .collect()
    }

    /// The number of names a kind file has in this view (its st_nlink).
    pub fn nlink(&self, tree: &Tree, ino: u64) -> u32 {
        match &self.tops {
            None => tree.binders(ino),
            Some(_) => self.binders(tree, ino).len() as u32,
        }
    }

    /// The children of `c` this view lists, by name.
    pub fn children<'t>(&self, tree: &'t Tree, c: ContainerId) -> Vec<(&'t str, ContainerId)> {
        let Some(container) = tree.get(c) else {
            return Vec::new();
        };
        container
            .children()
            .iter()
            .filter(|&(_, &child)| self.sees(tree, child) != Seen::Hidden)
            .map(|(name, &child)| (name.as_str(), child))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::NsRef;

    const ROOT_NS: [u64; 8] = [100, 101, 102, 103, 104, 105, 106, 107];

    fn set_of(tree: &Tree, c: ContainerId) -> [u64; 8] {
        let e = tree.effective_set(c).unwrap();
        std::array::from_fn(|i| e[i].ino)
    }

    /// / web{uts 500} web/db{net 501} blog{uts 502}; blog2 links web's uts.
    fn sample() -> (Tree, [ContainerId; 4]) {
        let mut t = Tree::new(ROOT_NS);
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        let db = t.mkdir(web, "db").unwrap();
        let blog = t.mkdir(Tree::ROOT, "blog").unwrap();
        let blog2 = t.mkdir(Tree::ROOT, "blog2").unwrap();
        t.bind(
            web,
            NsRef {
                kind: Kind::Uts,
                ino: 500,
            },
        )
        .unwrap();
        t.bind(
            db,
            NsRef {
                kind: Kind::Net,
                ino: 501,
            },
        )
        .unwrap();
        t.bind(
            blog,
            NsRef {
                kind: Kind::Uts,
                ino: 502,
            },
        )
        .unwrap();
        t.link(
            blog2,
            NsRef {
                kind: Kind::Uts,
                ino: 500,
            },
        )
        .unwrap();
        (t, [web, db, blog, blog2])
    }

    #[test]
    fn the_root_set_sees_everything() {
        let (t, [web, ..]) = sample();
        let index = SetIndex::build(&t);
        let v = View::of(&t, &index, Some(&ROOT_NS));
        assert!(v.is_all());
        assert_eq!(v.sees(&t, web), Seen::Full);
        assert_eq!(v.nlink(&t, 500), 2);
    }

    #[test]
    fn a_container_sees_its_subtree_and_the_path_to_it() {
        let (t, [web, db, blog, blog2]) = sample();
        let index = SetIndex::build(&t);
        let v = View::of(&t, &index, Some(&set_of(&t, db)));
        assert_eq!(v.tops(), Some(&[db][..]));
        assert_eq!(v.sees(&t, db), Seen::Full);
        assert_eq!(v.sees(&t, web), Seen::Path);
        assert_eq!(v.sees(&t, Tree::ROOT), Seen::Path);
        assert_eq!(v.sees(&t, blog), Seen::Hidden);
        assert_eq!(v.sees(&t, blog2), Seen::Hidden);
        assert_eq!(v.children(&t, Tree::ROOT), vec![("web", web)]);
        assert_eq!(v.children(&t, web), vec![("db", db)]);
        // web's uts is bound by web and blog2, neither seen in full.
        assert_eq!(v.nlink(&t, 500), 0);
        assert_eq!(v.nlink(&t, 501), 1);
    }

    #[test]
    fn equal_sets_join_their_views_and_nested_matches_fold() {
        let (mut t, [web, _, _, blog2]) = sample();
        // web and blog2 have the same effective set (uts 500, rest root's).
        let index = SetIndex::build(&t);
        let v = View::of(&t, &index, Some(&set_of(&t, web)));
        assert_eq!(v.tops(), Some(&[web, blog2][..]));
        assert_eq!(v.nlink(&t, 500), 2);
        // A child binding nothing matches too, and folds into web.
        let inner = t.mkdir(web, "inner").unwrap();
        let index = SetIndex::build(&t);
        let v = View::of(&t, &index, Some(&set_of(&t, inner)));
        assert_eq!(v.tops(), Some(&[web, blog2][..]));
    }

    #[test]
    fn strangers_and_anonymous_callers_see_an_empty_root() {
        let (t, [web, ..]) = sample();
        let index = SetIndex::build(&t);
        let mut stranger = ROOT_NS;
        stranger[Kind::Ipc.index()] = 999;
        for v in [
            View::of(&t, &index, Some(&stranger)),
            View::of(&t, &index, None),
        ] {
            assert_eq!(v, View::NOTHING);
            assert_eq!(v.sees(&t, Tree::ROOT), Seen::Path);
            assert_eq!(v.sees(&t, web), Seen::Hidden);
            assert!(v.children(&t, Tree::ROOT).is_empty());
            assert!(!v.holds_process(&t, &index, &ROOT_NS));
        }
    }

    #[test]
    fn processes_belong_to_a_view_by_their_set() {
        let (t, [web, db, blog, _]) = sample();
        let index = SetIndex::build(&t);
        let v = View::of(&t, &index, Some(&set_of(&t, web)));
        assert!(v.holds_process(&t, &index, &set_of(&t, db)));
        assert!(!v.holds_process(&t, &index, &set_of(&t, blog)));
        assert!(!v.holds_process(&t, &index, &ROOT_NS));
        assert!(View::ALL.holds_process(&t, &index, &[1; 8]));
    }

    #[test]
    fn the_index_notices_changes() {
        let (mut t, [web, ..]) = sample();
        let index = SetIndex::build(&t);
        assert!(index.is_current(&t));
        t.mkdir(web, "x").unwrap();
        assert!(!index.is_current(&t));
        let index = SetIndex::build(&t);
        assert_eq!(index.matching(&set_of(&t, web)).len(), 3);
    }
}

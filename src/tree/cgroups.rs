//! Cgroup bindings: the cgroups a move into a container joins, as plain
//! data (docs/tree.md, "The `.cgroups` file").
//!
//! A cgroup binding is a [`Membership`] with an id of its own, held by one
//! or more containers: each holder shows it as its `.cgroups` file, so
//! `ln a/.cgroups b/.cgroups` makes two names of one binding, and a write
//! to either changes both, as with kind files. A binding held by no
//! container is gone. Inheritance follows the kind files: a container's
//! effective binding is its own, else its parent's effective one; the root
//! holds none unless one is given to it (unlike its kind files, the root's
//! `.cgroups` may be written). An empty binding joins nothing and stops
//! inheritance.

use super::{Container, ContainerId, Tree, TreeError};
use crate::cgroup::Membership;

/// Where a container's effective cgroup binding comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectiveCgroups {
    /// The binding's id.
    pub binding: u64,
    /// The container that holds it (the one asked about, or an ancestor).
    pub from: ContainerId,
}

impl Tree {
    /// The cgroups of binding `binding`, if it exists.
    pub fn cgroup_binding(&self, binding: u64) -> Option<&Membership> {
        self.cgroups.get(&binding).map(|(m, _)| m)
    }

    /// The containers holding binding `binding` themselves, by id.
    pub fn containers_holding(&self, binding: u64) -> Vec<ContainerId> {
        let mut ids: Vec<ContainerId> = self
            .containers
            .iter()
            .filter(|(_, c)| c.cgroups == Some(binding))
            .map(|(&id, _)| id)
            .collect();
        ids.sort();
        ids
    }

    /// The binding in force in `id`: its own, else the nearest ancestor's.
    pub fn effective_cgroups(&self, id: ContainerId) -> Option<EffectiveCgroups> {
        self.ancestors(id).find_map(|c| {
            let binding = self.containers.get(&c)?.cgroups?;
            Some(EffectiveCgroups { binding, from: c })
        })
    }

    /// The cgroups a move into `id` joins: its effective binding's, `None`
    /// when there is none or it is empty (the move changes namespaces only).
    pub fn cgroups_to_join(&self, id: ContainerId) -> Option<&Membership> {
        let e = self.effective_cgroups(id)?;
        self.cgroup_binding(e.binding).filter(|m| !m.is_empty())
    }

    /// Makes `id` hold `cgroups` (`echo ... > .cgroups`): a container that
    /// holds a binding already has it changed, under every name of it,
    /// except in the discovered containers that share it, which keep what
    /// they had; a container without one gets a new binding. Returns the
    /// binding's id.
    pub fn set_cgroups(&mut self, id: ContainerId, cgroups: Membership) -> Result<u64, TreeError> {
        self.writable(id)?;
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        match c.cgroups {
            Some(b) => {
                self.rewrite_cgroups(b, cgroups)?;
                Ok(b)
            }
            None => {
                let b = self.new_cgroups(cgroups);
                self.hold_cgroups(id, b);
                Ok(b)
            }
        }
    }

    /// Gives binding `binding` the cgroups `cgroups`, under every name of
    /// it but in discovered containers, which are given a binding of their
    /// own with the old cgroups. Refused if only discovered containers hold
    /// it.
    pub fn rewrite_cgroups(&mut self, binding: u64, cgroups: Membership) -> Result<(), TreeError> {
        self.rewrite_cgroups_where(binding, cgroups, |_| true)
    }

    /// [`Tree::rewrite_cgroups`] under the names held by containers
    /// `changes` accepts (those a confined writer sees) only: the other
    /// holders, like discovered ones, keep the old cgroups in a binding of
    /// their own.
    pub fn rewrite_cgroups_where(
        &mut self,
        binding: u64,
        cgroups: Membership,
        changes: impl Fn(ContainerId) -> bool,
    ) -> Result<(), TreeError> {
        let holders = self.containers_holding(binding);
        if holders.is_empty() {
            return Err(TreeError::NotFound);
        }
        let (discovered, own): (Vec<ContainerId>, Vec<ContainerId>) = holders
            .into_iter()
            .partition(|&c| self.is_discovered(c) || !changes(c));
        if own.is_empty() {
            return Err(TreeError::Discovered);
        }
        if !discovered.is_empty() {
            let old = self
                .cgroup_binding(binding)
                .cloned()
                .ok_or(TreeError::NotFound)?;
            let kept = self.new_cgroups(old);
            for c in discovered {
                self.drop_cgroups(c);
                self.hold_cgroups(c, kept);
            }
        }
        if let Some((m, _)) = self.cgroups.get_mut(&binding) {
            *m = cgroups;
        }
        self.generation += 1;
        Ok(())
    }

    /// Makes `id` hold binding `binding` too (`ln`): refused if it holds
    /// one already.
    pub fn link_cgroups(&mut self, id: ContainerId, binding: u64) -> Result<(), TreeError> {
        self.writable(id)?;
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if c.cgroups.is_some() {
            return Err(TreeError::Exists);
        }
        if !self.cgroups.contains_key(&binding) {
            return Err(TreeError::NotFound);
        }
        self.hold_cgroups(id, binding);
        Ok(())
    }

    /// Makes `id` hold binding `binding`, in place of what it held (the
    /// second half of `ln -f`).
    pub fn bind_cgroups(&mut self, id: ContainerId, binding: u64) -> Result<(), TreeError> {
        self.writable(id)?;
        self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if !self.cgroups.contains_key(&binding) {
            return Err(TreeError::NotFound);
        }
        if self.containers.get(&id).and_then(Container::own_cgroups) == Some(binding) {
            return Ok(());
        }
        self.drop_cgroups(id);
        self.hold_cgroups(id, binding);
        Ok(())
    }

    /// Makes `id` hold no binding of its own (`rm .cgroups`): it inherits
    /// again.
    pub fn unbind_cgroups(&mut self, id: ContainerId) -> Result<(), TreeError> {
        self.writable(id)?;
        let c = self.containers.get(&id).ok_or(TreeError::NotFound)?;
        if c.cgroups.is_none() {
            return Err(TreeError::NotFound);
        }
        self.drop_cgroups(id);
        Ok(())
    }

    /// Gives the discovered container `id` a binding of `cgroups` (found
    /// with it: its processes' cgroups).
    pub fn discover_cgroups(
        &mut self,
        id: ContainerId,
        cgroups: Membership,
    ) -> Result<u64, TreeError> {
        let parent = self.get(id).and_then(Container::parent);
        if parent.is_none() || parent != self.discovered {
            return Err(TreeError::NotFound);
        }
        self.drop_cgroups(id);
        let b = self.new_cgroups(cgroups);
        self.hold_cgroups(id, b);
        Ok(b)
    }

    fn new_cgroups(&mut self, cgroups: Membership) -> u64 {
        let b = self.next_cgroups;
        self.next_cgroups += 1;
        self.cgroups.insert(b, (cgroups, 0));
        b
    }

    /// `id` holds `binding`, which exists; whatever it held is dropped
    /// first by the caller.
    pub(super) fn hold_cgroups(&mut self, id: ContainerId, binding: u64) {
        let Some(c) = self.containers.get_mut(&id) else {
            return;
        };
        c.cgroups = Some(binding);
        if let Some((_, n)) = self.cgroups.get_mut(&binding) {
            *n += 1;
        }
        self.generation += 1;
    }

    /// `id` lets go of its binding, which goes once no container holds it.
    pub(super) fn drop_cgroups(&mut self, id: ContainerId) {
        let Some(b) = self.containers.get_mut(&id).and_then(|c| c.cgroups.take()) else {
            return;
        };
        self.generation += 1;
        match self.cgroups.get_mut(&b) {
            Some((_, n)) if *n > 1 => *n -= 1,
            _ => {
                self.cgroups.remove(&b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::Kind;
    use crate::tree::NsRef;

    const ROOT_NS: [u64; 8] = [100, 101, 102, 103, 104, 105, 106, 107];

    fn m(text: &str) -> Membership {
        Membership::parse(text).unwrap()
    }

    #[test]
    fn bindings_are_inherited_shared_and_replaced_like_kind_files() {
        let mut t = Tree::new(ROOT_NS);
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        let db = t.mkdir(web, "db").unwrap();
        let other = t.mkdir(Tree::ROOT, "other").unwrap();
        assert_eq!(t.effective_cgroups(db), None);
        assert_eq!(t.cgroups_to_join(db), None);

        let b = t.set_cgroups(web, m("0::/web\n")).unwrap();
        assert_eq!(
            t.effective_cgroups(db),
            Some(EffectiveCgroups {
                binding: b,
                from: web
            })
        );
        assert_eq!(t.cgroups_to_join(db), Some(&m("0::/web")));
        // An empty binding stops inheritance and joins nothing.
        let e = t.set_cgroups(db, Membership::default()).unwrap();
        assert_ne!(e, b);
        assert_eq!(t.effective_cgroups(db).unwrap().from, db);
        assert_eq!(t.cgroups_to_join(db), None);
        t.check().unwrap();

        // ln: one binding, two names; a write changes both.
        t.link_cgroups(other, b).unwrap();
        assert_eq!(t.link_cgroups(other, b), Err(TreeError::Exists));
        assert_eq!(t.containers_holding(b), vec![web, other]);
        assert_eq!(t.set_cgroups(other, m("0::/x")).unwrap(), b);
        assert_eq!(t.cgroups_to_join(web), Some(&m("0::/x")));
        // ln -f replaces; the empty binding, held by nobody now, is gone.
        t.bind_cgroups(db, b).unwrap();
        assert_eq!(t.cgroup_binding(e), None);
        t.check().unwrap();

        // rm: inherits again; a container removed lets go of its binding.
        t.unbind_cgroups(db).unwrap();
        assert_eq!(t.unbind_cgroups(db), Err(TreeError::NotFound));
        assert_eq!(t.effective_cgroups(db).unwrap().from, web);
        t.rmdir(web, "db").unwrap();
        t.rmdir(Tree::ROOT, "web").unwrap();
        t.rmdir(Tree::ROOT, "other").unwrap();
        assert_eq!(t.cgroup_binding(b), None);
        t.check().unwrap();

        // The root's binding may be set, and is inherited by all.
        let r = t.set_cgroups(Tree::ROOT, m("0::/")).unwrap();
        let a = t.mkdir(Tree::ROOT, "a").unwrap();
        assert_eq!(t.effective_cgroups(a).unwrap().binding, r);
        t.unbind_cgroups(Tree::ROOT).unwrap();
        t.check().unwrap();
    }

    #[test]
    fn discovered_bindings_are_read_only_kept_on_adoption_and_not_rewritten() {
        let mut t = Tree::new(ROOT_NS);
        t.enable_discovery();
        let d = t
            .discover(
                "docker-abc",
                &[NsRef {
                    kind: Kind::Net,
                    ino: 600,
                }],
            )
            .unwrap();
        let b = t.discover_cgroups(d, m("0::/docker/abc")).unwrap();
        assert_eq!(
            t.set_cgroups(d, Membership::default()),
            Err(TreeError::Discovered)
        );
        assert_eq!(t.unbind_cgroups(d), Err(TreeError::Discovered));
        assert_eq!(t.rewrite_cgroups(b, m("0::/")), Err(TreeError::Discovered));
        // A user container shares it; a write there leaves the discovered
        // container its cgroups.
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        t.link_cgroups(web, b).unwrap();
        t.set_cgroups(web, m("0::/web")).unwrap();
        assert_eq!(t.cgroups_to_join(d), Some(&m("0::/docker/abc")));
        assert_eq!(t.cgroups_to_join(web), Some(&m("0::/web")));
        t.check().unwrap();

        // A confined writer changes only the names it sees.
        let other = t.mkdir(Tree::ROOT, "other").unwrap();
        let wb = t.get(web).unwrap().own_cgroups().unwrap();
        t.link_cgroups(other, wb).unwrap();
        t.rewrite_cgroups_where(wb, m("0::/seen"), |c| c == web)
            .unwrap();
        assert_eq!(t.cgroups_to_join(web), Some(&m("0::/seen")));
        assert_eq!(t.cgroups_to_join(other), Some(&m("0::/web")));
        assert_eq!(
            t.rewrite_cgroups_where(wb, m("0::/"), |_| false),
            Err(TreeError::Discovered)
        );
        t.check().unwrap();

        let kept = t.get(d).unwrap().own_cgroups().unwrap();
        let (adopted, _) = t.adopt(d, Tree::ROOT, "app").unwrap();
        assert_eq!(t.get(adopted).unwrap().own_cgroups(), Some(kept));
        assert_eq!(t.cgroups_to_join(adopted), Some(&m("0::/docker/abc")));
        t.check().unwrap();
    }
}

//! What the service shows and exports beyond the user's tree: the sets
//! discovery finds in use on the host (as a [`Sink`] of
//! [`crate::discover`]), and containers' own net namespaces for
//! `--netns-export` (see [`crate::export`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Node, Service};
use crate::cgroup::{Hierarchies, Membership};
use crate::discover::{Found, Sink};
use crate::ns::{Kind, Namespace};
use crate::tree::{ContainerId, NsRef};

impl Service {
    /// Makes the discovered subtree show `found`, the sets in use on the
    /// host, less those a user's container is already the effective set
    /// of: sets gone or taken over leave, new ones come. A set whose
    /// process left before its namespaces could be opened waits for the
    /// next round.
    pub(super) fn publish_discovered(&self, found: &[Found]) {
        let (current, taken) = {
            let st = self.state.read();
            let Some(d) = st.tree.discovered_root() else {
                return;
            };
            let index = self.index(&st.tree);
            let current: HashMap<[u64; 8], ContainerId> = st
                .tree
                .get(d)
                .map(|c| c.children().values().copied().collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|id| {
                    let set = st.tree.effective_set(id)?;
                    Some((std::array::from_fn(|i| set[i].ino), id))
                })
                .collect();
            let taken: Vec<[u64; 8]> = found
                .iter()
                .filter(|f| {
                    index
                        .matching(&f.set)
                        .iter()
                        .any(|&c| !st.tree.is_discovered(c))
                })
                .map(|f| f.set)
                .collect();
            (current, taken)
        };
        let wanted: Vec<&Found> = found.iter().filter(|f| !taken.contains(&f.set)).collect();
        // Read once a round, and only if a new set comes from a runtime.
        let mut hierarchies: Option<Option<Hierarchies>> = None;
        for (set, &id) in &current {
            if wanted.iter().any(|f| &f.set == set) {
                continue;
            }
            // Adopted meanwhile, if it is no longer there to forget.
            let (path, forgotten) = {
                let mut st = self.state.write();
                let path = st.tree.path(id);
                (path, st.tree.forget(id))
            };
            if let Ok(released) = forgotten {
                self.let_go(self.unbound(released));
                log::info!("{path} is gone: no process uses that namespace set any more");
            }
        }
        for f in wanted {
            if current.contains_key(&f.set) {
                continue;
            }
            // Every kind that differs from the root's, still the one the
            // set names, or nothing (the process left or moved meanwhile).
            let opened: Option<Vec<Namespace>> = Kind::ALL
                .into_iter()
                .filter(|k| f.set[k.index()] != self.root_set[k.index()])
                .map(|kind| {
                    Namespace::of_task(f.pid, kind)
                        .ok()
                        .filter(|ns| ns.ino() == f.set[kind.index()])
                })
                .collect();
            let Some(opened) = opened else {
                continue;
            };
            let refs: Vec<NsRef> = opened
                .iter()
                .map(|ns| NsRef {
                    kind: ns.kind(),
                    ino: ns.ino(),
                })
                .collect();
            // A set a container runtime started carries the cgroups of its
            // lowest pid (the container's init, as a rule): moving into
            // it joins them. Other sets' cgroups are those of whoever
            // started them (a login session): they carry none.
            let cgroups = crate::discover::cgroup_name(f.pid).and_then(|_| {
                let h = hierarchies
                    .get_or_insert_with(|| Hierarchies::of_host().ok())
                    .as_ref()?;
                Membership::of_process(f.pid).ok().map(|m| h.reachable(&m))
            });
            let mut st = self.state.write();
            match st.tree.discover(&f.name, &refs) {
                Ok(id) if Node::fits(id) => {
                    for ns in opened {
                        st.spaces.entry(ns.ino()).or_insert_with(|| Arc::new(ns));
                    }
                    if let Some(m) = cgroups
                        && let Err(e) = st.tree.discover_cgroups(id, m)
                    {
                        log::warn!("{} shown without its cgroups: {e}", f.name);
                    }
                    log::info!("discovered {} (process {})", st.tree.path(id), f.pid);
                }
                Ok(id) => {
                    let _ = st.tree.forget(id);
                }
                Err(e) => log::info!("set of process {} not shown as {}: {e}", f.pid, f.name),
            }
        }
    }

    /// Brings the `--netns-export` directory in line with the tree (see
    /// [`crate::export`]): the tree is read under its lock, the mounts are
    /// made after. Failures are logged there and never fail the change.
    pub(super) fn export(&self) {
        if let Some(exporter) = &self.exporter {
            exporter.sync(|| {
                let st = self.state.read();
                // Discovered containers are not the user's to export.
                crate::export::Snapshot::of(&st.tree, &st.spaces, |c| st.tree.is_discovered(c))
            });
        }
    }
}

impl Sink for Service {
    fn root_set(&self) -> [u64; 8] {
        self.root_set
    }

    fn helper_pids(&self) -> Vec<i32> {
        self.helpers(&self.state.read())
    }

    fn publish(&self, found: &[Found]) {
        self.publish_discovered(found);
    }

    fn take_moved(&self) -> Vec<i32> {
        std::mem::take(&mut *self.moved.lock())
    }
}

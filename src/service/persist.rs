//! Persistence: the record of the tree written on every change, the
//! namespaces a change unbound let go only once it is recorded, and the
//! tree rebuilt from the record at start (see [`crate::state`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::{Error, Result, Service, State};
use crate::ns::{self, Kind, Namespace};
use crate::tree::record::{self, KeeperRef, Record, RecordedNs};
use crate::tree::{NsRef, Tree};

impl Service {
    /// Brings the record of the tree up to date: returns once the record
    /// on disk holds every change made before the call. A writer that
    /// finds the record already current (another writer took its change
    /// along) returns at once.
    pub(super) fn record(&self) -> Result<()> {
        let Some(recorder) = &self.recorder else {
            return Ok(());
        };
        let mut written = recorder.lock();
        let (generation, text) = {
            let st = self.state.read();
            let generation = st.tree.generation();
            if *written == Some(generation) {
                return Ok(());
            }
            let keeper_ref = |ns: &Namespace| {
                let keeper = ns.keeper()?;
                Some(KeeperRef {
                    pid: keeper.pid(),
                    start: keeper.start_time(),
                })
            };
            let leaving: Vec<RecordedNs> = {
                let mut leaving = self.leaving.lock();
                leaving.retain(|ns| ns.keeper().is_some_and(|k| k.is_alive()));
                leaving
                    .iter()
                    .map(|ns| RecordedNs {
                        ns: NsRef {
                            kind: ns.kind(),
                            ino: ns.ino(),
                        },
                        keeper: keeper_ref(ns),
                    })
                    .collect()
            };
            let text = record::encode(
                &st.tree,
                recorder.boot(),
                |ino| keeper_ref(st.spaces.get(&ino)?),
                &leaving,
            );
            (generation, text)
        };
        recorder
            .write(text.as_bytes())
            .map_err(|source| Error::Sys {
                what: "write the record of the tree",
                source,
            })?;
        *written = Some(generation);
        Ok(())
    }

    /// The handles of the namespaces that lost their last binding in the
    /// tree, taken out of `spaces` (see [`Service::commit`]); not those
    /// bound again since, by a change that came in between.
    pub(super) fn unbound(&self, released: Vec<NsRef>) -> Vec<Arc<Namespace>> {
        let mut st = self.state.write();
        let State { tree, spaces } = &mut *st;
        released
            .iter()
            .filter(|r| tree.binders(r.ino) == 0)
            .filter_map(|r| spaces.remove(&r.ino))
            .collect()
    }

    /// Finishes a change: writes the record, then lets go of the namespaces
    /// the change unbound. In this order, so that a daemon killed in
    /// between finds either the old record with every pin and keeper of it
    /// in place, or the new one: an unbound namespace's pin is then swept
    /// at start, and its keeper, still listed in the record as leaving
    /// (see `leaving`), is told to leave by the next daemon.
    pub(super) fn commit(&self, unbound: Vec<Arc<Namespace>>) -> Result<()> {
        self.make_durable();
        self.leaving
            .lock()
            .extend(unbound.iter().filter(|ns| ns.keeper().is_some()).cloned());
        let recorded = self.record();
        self.export();
        self.let_go(unbound);
        recorded
    }

    /// Pins (or, for a mount namespace, gives a keeper to) every namespace
    /// a user's container binds that has neither: one a discovered
    /// container brought in, now linked or adopted by the user. Called
    /// before the record is written, so the record names only namespaces a
    /// restarted daemon can reopen. A namespace that cannot be pinned is
    /// logged and tried again at the next change.
    pub(super) fn make_durable(&self) {
        // Without discovery every bound namespace was pinned when bound.
        if !self.discovering {
            return;
        }
        let loose: Vec<Arc<Namespace>> = {
            let st = self.state.read();
            st.spaces
                .values()
                .filter(|ns| {
                    ns.pin_path().is_none()
                        && ns.keeper().is_none()
                        && !self.root_set.contains(&ns.ino())
                        && st.tree.user_binders(ns.ino()) > 0
                })
                .cloned()
                .collect()
        };
        for ns in loose {
            let copy = ns
                .fd()
                .try_clone_to_owned()
                .map_err(|source| ns::NsError::Sys {
                    what: "dup",
                    source,
                })
                .and_then(|fd| {
                    Namespace::from_fd(fd, ns.kind(), ns::Origin::Other("a discovered namespace"))
                });
            let mut copy = match copy {
                Ok(copy) => copy,
                Err(e) => {
                    log::warn!("{} cannot be kept: {e}", ns.describe());
                    continue;
                }
            };
            if ns.kind() == Kind::Mnt {
                if let Err(e) = copy.hold_mount() {
                    log::warn!("{} cannot be kept: {e}", ns.describe());
                    continue;
                }
            } else {
                copy.pin(&self.pin_dir);
                if copy.pin_path().is_none() {
                    continue;
                }
            }
            let mut st = self.state.write();
            match st.spaces.get_mut(&ns.ino()) {
                Some(slot) if Arc::ptr_eq(slot, &ns) => *slot = Arc::new(copy),
                _ => copy.release(),
            }
        }
    }

    /// Lets go of namespaces no container binds any more: their pins go,
    /// their keepers leave, the mover drops what it holds in them.
    pub(super) fn let_go(&self, dropped: Vec<Arc<Namespace>>) {
        for ns in dropped {
            ns.release();
            self.mover.released(ns.ino());
            log::info!("{} released: no container binds it", ns.describe());
        }
    }
}

/// Rebuilds the tree of `record` at start: reopens its namespaces (from
/// pins, or from keepers) into `spaces`, which holds the root's, and
/// rebuilds the containers. A binding whose namespace cannot be reopened
/// is dropped with one log line saying why; namespaces reopened but bound
/// by nothing in the end are let go.
pub(super) fn restore(
    record: &Record,
    root: [u64; 8],
    spaces: &mut HashMap<u64, Arc<Namespace>>,
    pin_dir: &Arc<ns::PinDir>,
    boot: &str,
) -> Tree {
    let reopened = crate::state::reopen(record, pin_dir, boot, |ino| spaces.contains_key(&ino));
    for (ino, ns) in reopened.spaces {
        spaces.insert(ino, Arc::new(ns));
    }
    let restored = record::restore(root, record, |r| {
        spaces.get(&r.ino).is_some_and(|ns| ns.kind() == r.kind)
    });
    for (path, r) in &restored.dropped {
        let why = reopened.lost.get(&r.ino).map_or_else(
            || "it is bound as another kind".to_owned(),
            ToString::to_string,
        );
        log::warn!(
            "restore: {path} no longer binds {}:[{}]: {why}",
            r.kind,
            r.ino
        );
    }
    let tree = restored.tree;
    spaces.retain(|&ino, ns| {
        let bound = tree.binders(ino) > 0;
        if !bound {
            ns.release();
        }
        bound
    });
    let bindings: u32 = tree
        .ids()
        .filter(|&id| id != Tree::ROOT)
        .filter_map(|id| tree.get(id))
        .map(|c| Kind::ALL.iter().filter(|&&k| c.own(k).is_some()).count() as u32)
        .sum();
    log::info!(
        "restored {} containers and {bindings} bindings ({} dropped)",
        tree.len() - 1,
        restored.dropped.len()
    );
    tree
}

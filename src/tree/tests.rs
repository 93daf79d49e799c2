use super::*;

const ROOT_NS: [u64; 8] = [100, 101, 102, 103, 104, 105, 106, 107];

fn ns(kind: Kind, ino: u64) -> NsRef {
    NsRef { kind, ino }
}

#[test]
fn new_container_inherits_everything_from_its_parent() {
    let mut t = Tree::new(ROOT_NS);
    let web = t.mkdir(Tree::ROOT, "web").unwrap();
    let db = t.mkdir(web, "db").unwrap();
    for kind in Kind::ALL {
        let e = t.effective(db, kind).unwrap();
        assert_eq!(e.ino, ROOT_NS[kind.index()]);
        assert_eq!(e.from, Tree::ROOT);
    }
    assert_eq!(t.path(db), "/web/db");
    assert_eq!(t.path(Tree::ROOT), "/");
    assert_eq!(t.depth(db), 2);
    t.check().unwrap();
}

#[test]
fn rfc_composition_takes_one_kind_from_a_sibling() {
    let mut t = Tree::new(ROOT_NS);
    let vs1 = t.mkdir(Tree::ROOT, "vserver1").unwrap();
    t.bind(vs1, ns(Kind::Net, 500)).unwrap();
    t.bind(vs1, ns(Kind::Uts, 501)).unwrap();
    let new = t.mkdir(Tree::ROOT, "new_container").unwrap();
    t.link(new, ns(Kind::Net, 500)).unwrap();
    let set = t.effective_set(new).unwrap();
    for kind in Kind::ALL {
        let want = if kind == Kind::Net {
            500
        } else {
            ROOT_NS[kind.index()]
        };
        assert_eq!(set[kind.index()].ino, want, "{kind}");
    }
    assert_eq!(t.binders(500), 2);
    assert_eq!(t.binders(501), 1);
    assert_eq!(t.containers_binding(500), vec![vs1, new]);
    t.check().unwrap();
}

#[test]
fn link_refuses_a_bound_kind_and_the_root() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    t.link(a, ns(Kind::Net, 500)).unwrap();
    assert_eq!(t.link(a, ns(Kind::Net, 501)), Err(TreeError::Exists));
    assert_eq!(t.link(Tree::ROOT, ns(Kind::Net, 501)), Err(TreeError::Root));
    assert_eq!(t.binders(501), 0);
    t.check().unwrap();
}

#[test]
fn an_inode_keeps_its_kind() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    let err = t
        .link(a, ns(Kind::Uts, ROOT_NS[Kind::Net.index()]))
        .unwrap_err();
    assert!(matches!(
        err,
        TreeError::KindMismatch {
            wanted: Kind::Uts,
            ..
        }
    ));
    t.check().unwrap();
}

#[test]
fn unbind_releases_the_last_binder_only() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    let b = t.mkdir(Tree::ROOT, "b").unwrap();
    t.link(a, ns(Kind::Ipc, 600)).unwrap();
    t.link(b, ns(Kind::Ipc, 600)).unwrap();
    assert_eq!(t.unbind(a, Kind::Ipc), Ok(None));
    assert_eq!(t.unbind(a, Kind::Ipc), Err(TreeError::NotFound));
    assert_eq!(t.unbind(b, Kind::Ipc), Ok(Some(ns(Kind::Ipc, 600))));
    assert_eq!(t.unbind(Tree::ROOT, Kind::Ipc), Err(TreeError::Root));
    t.check().unwrap();
}

#[test]
fn bind_replaces_and_reports_the_released_namespace() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    assert_eq!(t.bind(a, ns(Kind::Net, 500)), Ok(None));
    assert_eq!(t.bind(a, ns(Kind::Net, 501)), Ok(Some(ns(Kind::Net, 500))));
    assert_eq!(t.get(a).unwrap().own(Kind::Net), Some(501));
    assert_eq!(t.bind(Tree::ROOT, ns(Kind::Net, 502)), Err(TreeError::Root));
    t.check().unwrap();
}

#[test]
fn rebind_everywhere_changes_every_name_of_a_shared_namespace() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    let b = t.mkdir(Tree::ROOT, "b").unwrap();
    t.link(a, ns(Kind::Net, 500)).unwrap();
    t.link(b, ns(Kind::Net, 500)).unwrap();
    assert_eq!(
        t.rebind_everywhere(500, ns(Kind::Net, 501)),
        Ok(Some(ns(Kind::Net, 500)))
    );
    assert_eq!(t.binders(501), 2);
    assert_eq!(t.binders(500), 0);
    let root_net = ROOT_NS[Kind::Net.index()];
    assert_eq!(
        t.rebind_everywhere(root_net, ns(Kind::Net, 502)),
        Err(TreeError::Root)
    );
    t.check().unwrap();
}

#[test]
fn rmdir_needs_no_children_and_releases_bindings() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    let _b = t.mkdir(a, "b").unwrap();
    t.link(a, ns(Kind::Uts, 700)).unwrap();
    assert_eq!(t.rmdir(Tree::ROOT, "a"), Err(TreeError::NotEmpty));
    t.rmdir(a, "b").unwrap();
    let (id, released) = t.rmdir(Tree::ROOT, "a").unwrap();
    assert_eq!(id, a);
    assert_eq!(released, vec![ns(Kind::Uts, 700)]);
    assert_eq!(t.rmdir(Tree::ROOT, "a"), Err(TreeError::NotFound));
    assert_eq!(t.len(), 1);
    t.check().unwrap();
}

#[test]
fn names_are_checked() {
    let mut t = Tree::new(ROOT_NS);
    for bad in [
        "", ".hidden", "..", "a/b", "tasks", "status", "net", "pid", "x\0y",
    ] {
        assert!(
            matches!(t.mkdir(Tree::ROOT, bad), Err(TreeError::InvalidName(_))),
            "{bad:?}"
        );
    }
    assert!(t.mkdir(Tree::ROOT, &"x".repeat(256)).is_err());
    t.mkdir(Tree::ROOT, &"x".repeat(255)).unwrap();
    t.mkdir(Tree::ROOT, "netns").unwrap();
    assert_eq!(t.mkdir(Tree::ROOT, "netns"), Err(TreeError::Exists));
    t.check().unwrap();
}

#[test]
fn depth_is_limited() {
    let mut t = Tree::new(ROOT_NS);
    let mut id = Tree::ROOT;
    for i in 0..MAX_DEPTH {
        id = t.mkdir(id, &format!("d{i}")).unwrap();
    }
    assert_eq!(t.depth(id), MAX_DEPTH);
    assert_eq!(t.mkdir(id, "one_more"), Err(TreeError::TooDeep));
    t.check().unwrap();
}

#[test]
fn rename_within_parent_and_over_an_empty_container() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    let b = t.mkdir(Tree::ROOT, "b").unwrap();
    t.link(b, ns(Kind::Net, 500)).unwrap();
    let c = t.mkdir(a, "c").unwrap();
    assert_eq!(
        t.rename(Tree::ROOT, "a", "tasks"),
        Err(TreeError::InvalidName("a control file or kind name"))
    );
    assert_eq!(t.rename(Tree::ROOT, "b", "a"), Err(TreeError::NotEmpty));
    assert_eq!(t.rename(Tree::ROOT, "a", "b"), Ok(vec![ns(Kind::Net, 500)]));
    assert_eq!(t.child(Tree::ROOT, "b"), Some(a));
    assert_eq!(t.child(Tree::ROOT, "a"), None);
    assert_eq!(t.path(c), "/b/c");
    assert_eq!(t.rename(Tree::ROOT, "zz", "y"), Err(TreeError::NotFound));
    t.check().unwrap();
}

/// A small deterministic generator, so the property test needs no crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn random_operations_keep_the_invariants() {
    for seed in 0..50 {
        let mut rng = Lcg(seed);
        let mut t = Tree::new(ROOT_NS);
        let names = ["a", "b", "c", "d"];
        for _ in 0..400 {
            let ids: Vec<ContainerId> = t.containers.keys().copied().collect();
            let id = ids[rng.next(ids.len() as u64) as usize];
            let name = names[rng.next(4) as usize];
            let kind = Kind::ALL[rng.next(8) as usize];
            let ino = 1000 + rng.next(12) * 8 + kind.index() as u64;
            let before = t.clone();
            let result = match rng.next(7) {
                0 => t.mkdir(id, name).map(|_| ()),
                1 => t.rmdir(id, name).map(|_| ()),
                2 => t.rename(id, name, names[rng.next(4) as usize]).map(|_| ()),
                3 => t.link(id, ns(kind, ino)),
                4 => t.bind(id, ns(kind, ino)).map(|_| ()),
                5 => t.unbind(id, kind).map(|_| ()),
                _ => t.rebind_everywhere(ino, ns(kind, ino + 96)).map(|_| ()),
            };
            t.check().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            if result.is_err() {
                assert_eq!(
                    format!("{:?}", t.containers.len()),
                    format!("{:?}", before.containers.len())
                );
                assert_eq!(
                    t.binders, before.binders,
                    "a refused operation changed bindings"
                );
            }
        }
    }
}

#[test]
fn binding_what_is_already_bound_changes_nothing() {
    let mut t = Tree::new(ROOT_NS);
    let a = t.mkdir(Tree::ROOT, "a").unwrap();
    t.bind(a, ns(Kind::Net, 500)).unwrap();
    assert_eq!(t.bind(a, ns(Kind::Net, 500)), Ok(None));
    assert_eq!(t.rebind_everywhere(500, ns(Kind::Net, 500)), Ok(None));
    assert_eq!(t.binders(500), 1);
    t.check().unwrap();
}

#[test]
fn discovered_containers_are_read_only_and_adopted_whole() {
    let mut t = Tree::new(ROOT_NS);
    let web = t.mkdir(Tree::ROOT, "web").unwrap();
    t.link(web, ns(Kind::Net, 500)).unwrap();
    let d = t.enable_discovery();
    assert_eq!(t.enable_discovery(), d);
    assert_eq!(t.child(Tree::ROOT, DISCOVERED), Some(d));
    let x = t
        .discover("docker-abc", &[ns(Kind::Net, 600), ns(Kind::Uts, 601)])
        .unwrap();
    t.check().unwrap();
    assert!(t.is_discovered(x) && t.is_discovered(d) && !t.is_discovered(web));
    assert_eq!(t.user_binders(600), 0);
    assert_eq!(t.binders(600), 1);

    // Nothing a user asks for changes the discovered subtree.
    let before = t.generation();
    assert_eq!(t.mkdir(d, "mine"), Err(TreeError::Discovered));
    assert_eq!(t.mkdir(x, "mine"), Err(TreeError::Discovered));
    assert_eq!(
        t.rmdir(Tree::ROOT, DISCOVERED).map(|r| r.0),
        Err(TreeError::Discovered)
    );
    assert_eq!(
        t.rmdir(d, "docker-abc").map(|r| r.0),
        Err(TreeError::Discovered)
    );
    assert_eq!(t.rename(d, "docker-abc", "b"), Err(TreeError::Discovered));
    assert_eq!(
        t.rename(Tree::ROOT, DISCOVERED, "d"),
        Err(TreeError::Discovered)
    );
    assert_eq!(t.link(x, ns(Kind::Ipc, 700)), Err(TreeError::Discovered));
    assert_eq!(t.bind(x, ns(Kind::Net, 700)), Err(TreeError::Discovered));
    assert_eq!(t.unbind(x, Kind::Net), Err(TreeError::Discovered));
    assert_eq!(
        t.rebind_everywhere(600, ns(Kind::Net, 700)),
        Err(TreeError::Discovered)
    );
    assert_eq!(t.generation(), before);

    // A user links one of its namespaces: a write to the user's name
    // rebinds the user's container only.
    let b = t.mkdir(Tree::ROOT, "b").unwrap();
    t.link(b, ns(Kind::Uts, 601)).unwrap();
    assert_eq!(t.user_binders(601), 1);
    assert_eq!(t.rebind_everywhere(601, ns(Kind::Uts, 800)).unwrap(), None);
    assert_eq!(t.effective(x, Kind::Uts).unwrap().ino, 601);
    assert_eq!(t.effective(b, Kind::Uts).unwrap().ino, 800);
    assert_eq!(t.user_binders(601), 0);
    t.check().unwrap();

    // Adopted under web: binds what differs from web's set, and the
    // discovered one is gone.
    let set = t.effective_set(x).unwrap();
    let (adopted, released) = t.adopt(x, web, "x").unwrap();
    assert!(released.is_empty());
    assert_eq!(t.child(web, "x"), Some(adopted));
    let now = t.effective_set(adopted).unwrap();
    for kind in Kind::ALL {
        assert_eq!(now[kind.index()].ino, set[kind.index()].ino, "{kind}");
    }
    let own: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|&k| t.get(adopted).unwrap().own(k).is_some())
        .collect();
    assert_eq!(own, vec![Kind::Net, Kind::Uts]);
    assert_eq!(t.child(d, "docker-abc"), None);
    assert_eq!(t.user_binders(600), 1);
    t.check().unwrap();

    // Adoption is refused into the discovered subtree, onto a taken name,
    // and for what is not a discovered container.
    let y = t.discover("y", &[ns(Kind::Ipc, 900)]).unwrap();
    assert_eq!(t.adopt(y, d, "z"), Err(TreeError::Discovered));
    assert_eq!(t.adopt(y, Tree::ROOT, "web"), Err(TreeError::Exists));
    assert_eq!(t.adopt(web, Tree::ROOT, "w2"), Err(TreeError::NotFound));
    assert_eq!(
        t.adopt(y, Tree::ROOT, ".y"),
        Err(TreeError::InvalidName(
            "names starting with '.' are reserved"
        ))
    );

    // Forgetting releases what nobody else binds.
    assert_eq!(t.forget(y), Ok(vec![ns(Kind::Ipc, 900)]));
    assert_eq!(t.forget(web), Err(TreeError::NotFound));
    assert_eq!(
        t.discover("bad/name", &[]),
        Err(TreeError::InvalidName("contains '/' or NUL"))
    );
    // A discovered inode keeps its kind, and a failed discover adds nothing.
    let n = t.len();
    assert!(t.discover("k", &[ns(Kind::Uts, 600)]).is_err());
    assert_eq!(t.len(), n);
    t.check().unwrap();
}

#[test]
fn the_record_leaves_discovered_containers_out() {
    let mut t = Tree::new(ROOT_NS);
    t.mkdir(Tree::ROOT, "web").unwrap();
    t.enable_discovery();
    t.discover("docker-abc", &[ns(Kind::Net, 600)]).unwrap();
    let text = record::encode(&t, "boot", |_| None, &[]);
    assert!(
        !text.contains("600") && !text.contains("discovered"),
        "{text}"
    );
    assert!(text.contains("container /web\n"), "{text}");
}

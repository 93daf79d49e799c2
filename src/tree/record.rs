//! The record of the tree: the text the state directory keeps so that a
//! restarted daemon rebuilds the same containers with the same bindings.
//! Plain data, like the tree: encoding, a total parser (it never panics,
//! whatever the bytes), and rebuilding a [`Tree`] from a parsed record. The
//! format is described in `docs/state.md`:
//!
//! ```text
//! nsproxyfs-tree 1
//! boot 0b5e0d6c-3f0e-4b58-9a4e-2c8f0c3c1d2e
//! ns net 4026532240
//! ns pid 4026532301 keeper 4711 123456
//! cgroups 1 0::/system.slice/web.scope%0A
//! container /web net=4026532240 pid=4026532301 cgroups=1
//! container /web/db%20one
//! end
//! ```
//!
//! The root container is not recorded: it always binds the daemon's own
//! namespaces; nor are discovered containers, which are found again.
//! `ns` lines name every namespace a container binds, with the process
//! the daemon keeps in it, if any, and the released ones whose keepers
//! have not left yet; `cgroups` lines name every cgroup binding a
//! container holds (the lines of its `.cgroups`, percent-encoded, `-` when
//! empty), by a number that holds within the record only; `container`
//! lines come parents first, each with its own bindings. Names are
//! percent-encoded. Records without `cgroups` lines (written before cgroup
//! bindings existed) read as they always did.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use thiserror::Error;

use super::{ContainerId, MAX_DEPTH, NsRef, Tree, check_name};
use crate::cgroup::Membership;
use crate::ns::Kind;

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

const MAGIC: &str = "nsproxyfs-tree";

/// A process the daemon keeps inside a namespace (the init of a fresh pid
/// namespace, the holder of a mount namespace), as recorded: enough to find
/// it again after a restart and to tell a reused pid from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeeperRef {
    /// Its pid in the daemon's pid namespace.
    pub pid: i32,
    /// Its start time, field 22 of `/proc/PID/stat` (clock ticks since boot).
    pub start: u64,
}

/// One recorded namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordedNs {
    /// Kind and inode.
    pub ns: NsRef,
    /// The process kept in it, if any.
    pub keeper: Option<KeeperRef>,
}

/// One recorded container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedContainer {
    /// Names from the root down (never empty).
    pub path: Vec<String>,
    /// Its own bindings, in [`Kind::ALL`] order.
    pub own: [Option<u64>; 8],
    /// The cgroup binding it holds, by its number in [`Record::cgroups`].
    pub cgroups: Option<u64>,
}

/// A parsed record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// `/proc/sys/kernel/random/boot_id` of the boot that wrote it.
    pub boot: String,
    /// Every namespace a recorded container binds.
    pub spaces: Vec<RecordedNs>,
    /// Every cgroup binding a recorded container holds, by number.
    pub cgroups: Vec<(u64, Membership)>,
    /// The cgroup binding the root holds (a `root cgroups=N` line).
    pub root_cgroups: Option<u64>,
    /// Containers, each after its parent.
    pub containers: Vec<RecordedContainer>,
}

/// Why a record could not be read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A line is malformed or contradicts an earlier one.
    #[error("line {line}: {what}")]
    Bad {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        what: &'static str,
    },
    /// Written in a format version this daemon does not read.
    #[error("format version {0:?} is not one this daemon reads (it reads {VERSION})")]
    Version(String),
    /// The closing `end` line is missing: the record is cut short.
    #[error("the record is cut short (no end line)")]
    Truncated,
}

/// Writes the record of `tree`: `boot` is the current boot id, `keeper`
/// says which process, if any, is kept in a bound namespace, and `leaving`
/// lists namespaces no container binds whose keepers have yet to leave (a
/// restarted daemon tells them again). Children are listed in name order,
/// so the same tree always gives the same text.
pub fn encode(
    tree: &Tree,
    boot: &str,
    keeper: impl Fn(u64) -> Option<KeeperRef>,
    leaving: &[RecordedNs],
) -> String {
    // About 50 bytes a container: one allocation for most trees.
    let mut containers = String::with_capacity(tree.len() * 56);
    let mut bound: Vec<(Kind, u64)> = Vec::new();
    // Cgroup bindings are numbered in the order they are first met (the
    // root's first), so the same tree always gives the same text.
    let mut held: Vec<u64> = Vec::new();
    let mut number_of = |b: u64| match held.iter().position(|&h| h == b) {
        Some(i) => i as u64 + 1,
        None => {
            held.push(b);
            held.len() as u64
        }
    };
    let root_cgroups = tree
        .get(Tree::ROOT)
        .and_then(super::Container::own_cgroups)
        .map(&mut number_of);
    // Depth-first from the root: (id, length of the parent's path).
    let mut path = String::new();
    let mut stack: Vec<(ContainerId, usize)> = Vec::new();
    // Discovered containers are found again at start, never recorded.
    if let Some(root) = tree.get(Tree::ROOT) {
        stack.extend(
            root.children()
                .values()
                .rev()
                .filter(|&&c| Some(c) != tree.discovered_root())
                .map(|&c| (c, 0)),
        );
    }
    while let Some((id, parent_len)) = stack.pop() {
        let Some(c) = tree.get(id) else { continue };
        path.truncate(parent_len);
        path.push('/');
        encode_name(c.name(), &mut path);
        containers.push_str("container ");
        containers.push_str(&path);
        for kind in Kind::ALL {
            if let Some(ino) = c.own(kind) {
                bound.push((kind, ino));
                containers.push(' ');
                containers.push_str(kind.name());
                containers.push('=');
                push_number(&mut containers, ino);
            }
        }
        if let Some(b) = c.own_cgroups() {
            containers.push_str(" cgroups=");
            push_number(&mut containers, number_of(b));
        }
        containers.push('\n');
        let len = path.len();
        stack.extend(c.children().values().rev().map(|&child| (child, len)));
    }
    // By inode, each once: the bound ones, then the leaving ones not bound
    // again meanwhile; listed by kind, then inode.
    let mut spaces: BTreeMap<u64, (Kind, Option<KeeperRef>)> = BTreeMap::new();
    for (kind, ino) in bound {
        spaces.entry(ino).or_insert_with(|| (kind, keeper(ino)));
    }
    for r in leaving {
        spaces.entry(r.ns.ino).or_insert((r.ns.kind, r.keeper));
    }
    let mut spaces: Vec<(Kind, u64, Option<KeeperRef>)> = spaces
        .into_iter()
        .map(|(ino, (kind, keeper))| (kind, ino, keeper))
        .collect();
    spaces.sort_unstable_by_key(|&(kind, ino, _)| (kind, ino));
    let mut out = String::with_capacity(containers.len() + spaces.len() * 48 + 64);
    let _ = writeln!(out, "{MAGIC} {VERSION}");
    let _ = writeln!(out, "boot {boot}");
    for (kind, ino, keeper) in spaces {
        let _ = write!(out, "ns {kind} {ino}");
        if let Some(k) = keeper {
            let _ = write!(out, " keeper {} {}", k.pid, k.start);
        }
        out.push('\n');
    }
    for (i, b) in held.into_iter().enumerate() {
        let text = tree
            .cgroup_binding(b)
            .map(ToString::to_string)
            .unwrap_or_default();
        let _ = write!(out, "cgroups {} ", i + 1);
        if text.is_empty() {
            out.push('-');
        } else {
            encode_name(&text, &mut out);
        }
        out.push('\n');
    }
    if let Some(b) = root_cgroups {
        let _ = writeln!(out, "root cgroups={b}");
    }
    out.push_str(&containers);
    out.push_str("end\n");
    out
}

/// Appends `n` in decimal, without the formatting machinery (the encoder
/// writes one per binding).
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[i..] {
        out.push(d as char);
    }
}

/// Percent-encodes a container name: every byte outside printable ASCII,
/// and `%` itself, becomes `%HH`, so a name is one space-free field.
fn encode_name(name: &str, out: &mut String) {
    for &b in name.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn decode_name(field: &str) -> Option<String> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

/// A decimal number with digits only (no sign, no spaces), as written.
fn number<T: std::str::FromStr>(field: &str) -> Option<T> {
    if field.is_empty() || field.len() > 20 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

/// Parses a record. Total: any input gives a record or an error, never a
/// panic. Everything is checked that [`restore`] relies on: names are valid
/// container names, every container comes after its parent and only once,
/// nesting stays within [`MAX_DEPTH`], and each binding names a recorded
/// namespace of its kind.
pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
    let bad = |line: usize, what: &'static str| RecordError::Bad { line, what };
    let text = std::str::from_utf8(bytes).map_err(|_| bad(0, "not UTF-8"))?;
    // Every line ends with a newline, the last one included.
    let (text, complete) = match text.strip_suffix('\n') {
        Some(body) => (body, true),
        None => (text, false),
    };
    let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
    let (n, first) = lines.next().ok_or(RecordError::Truncated)?;
    match first.split(' ').collect::<Vec<_>>()[..] {
        [MAGIC, v] if v == VERSION.to_string() => {}
        [MAGIC, v] => return Err(RecordError::Version(v.chars().take(32).collect())),
        _ => return Err(bad(n, "not an nsproxyfs record")),
    }
    let mut record = Record::default();
    match lines.next() {
        Some((_, l)) if l.starts_with("boot ") && l.len() > 5 && !l[5..].contains(' ') => {
            record.boot = l[5..].to_owned();
        }
        Some((n, _)) => return Err(bad(n, "expected `boot ID`")),
        None => return Err(RecordError::Truncated),
    }
    let mut kinds: HashMap<u64, Kind> = HashMap::new();
    let mut paths: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut ended = false;
    for (n, line) in lines {
        if ended {
            return Err(bad(n, "text after the end line"));
        }
        let fields: Vec<&str> = line.split(' ').collect();
        match fields[..] {
            ["end"] => ended = true,
            ["ns", kind, ino, ref rest @ ..] => {
                if !record.containers.is_empty() {
                    return Err(bad(n, "ns line after container lines"));
                }
                let kind = Kind::from_name(kind).ok_or_else(|| bad(n, "unknown kind"))?;
                let ino: u64 = number(ino).ok_or_else(|| bad(n, "bad inode number"))?;
                let keeper = match rest {
                    [] => None,
                    ["keeper", pid, start] => Some(KeeperRef {
                        pid: number(pid)
                            .filter(|&p: &i32| p > 0)
                            .ok_or_else(|| bad(n, "bad keeper pid"))?,
                        start: number(start).ok_or_else(|| bad(n, "bad keeper start time"))?,
                    }),
                    _ => return Err(bad(n, "unexpected fields after the inode")),
                };
                if kinds.insert(ino, kind).is_some() {
                    return Err(bad(n, "namespace listed twice"));
                }
                record.spaces.push(RecordedNs {
                    ns: NsRef { kind, ino },
                    keeper,
                });
            }
            ["root", binding] => {
                if !record.containers.is_empty() || record.root_cgroups.is_some() {
                    return Err(bad(n, "root line after container lines, or twice"));
                }
                let b: u64 = binding
                    .strip_prefix("cgroups=")
                    .and_then(number)
                    .ok_or_else(|| bad(n, "bad cgroup binding"))?;
                if !record.cgroups.iter().any(|(o, _)| *o == b) {
                    return Err(bad(n, "cgroup binding not listed"));
                }
                record.root_cgroups = Some(b);
            }
            ["cgroups", b, text] => {
                if record.root_cgroups.is_some() {
                    return Err(bad(n, "cgroups line after the root line"));
                }
                if !record.containers.is_empty() {
                    return Err(bad(n, "cgroups line after container lines"));
                }
                let b: u64 = number(b).ok_or_else(|| bad(n, "bad cgroup binding number"))?;
                let text = match text {
                    "-" => String::new(),
                    t => decode_name(t).ok_or_else(|| bad(n, "badly encoded cgroups"))?,
                };
                let m = Membership::parse(&text).map_err(|_| bad(n, "bad cgroups"))?;
                if record.cgroups.iter().any(|(o, _)| *o == b) {
                    return Err(bad(n, "cgroup binding listed twice"));
                }
                record.cgroups.push((b, m));
            }
            ["container", path, ref bindings @ ..] => {
                let path = parse_path(path).map_err(|what| bad(n, what))?;
                if path.len() > 1 && !paths.contains(&path[..path.len() - 1]) {
                    return Err(bad(n, "container listed before its parent"));
                }
                let mut own = [None; 8];
                let mut cgroups = None;
                for b in bindings {
                    let (kind, ino) = b.split_once('=').ok_or_else(|| bad(n, "bad binding"))?;
                    if kind == "cgroups" {
                        let b: u64 = number(ino).ok_or_else(|| bad(n, "bad cgroup binding"))?;
                        if !record.cgroups.iter().any(|(o, _)| *o == b) {
                            return Err(bad(n, "cgroup binding not listed"));
                        }
                        if cgroups.replace(b).is_some() {
                            return Err(bad(n, "cgroups bound twice"));
                        }
                        continue;
                    }
                    let kind = Kind::from_name(kind).ok_or_else(|| bad(n, "unknown kind"))?;
                    let ino: u64 = number(ino).ok_or_else(|| bad(n, "bad inode number"))?;
                    if kinds.get(&ino) != Some(&kind) {
                        return Err(bad(n, "binding of a namespace not listed as that kind"));
                    }
                    if own[kind.index()].replace(ino).is_some() {
                        return Err(bad(n, "kind bound twice"));
                    }
                }
                if !paths.insert(path.clone()) {
                    return Err(bad(n, "container listed twice"));
                }
                record
                    .containers
                    .push(RecordedContainer { path, own, cgroups });
            }
            _ => return Err(bad(n, "unknown line")),
        }
    }
    if !ended || !complete {
        return Err(RecordError::Truncated);
    }
    Ok(record)
}

fn parse_path(field: &str) -> Result<Vec<String>, &'static str> {
    let rest = field
        .strip_prefix('/')
        .ok_or("path does not start with /")?;
    let mut names = Vec::new();
    for part in rest.split('/') {
        let name = decode_name(part).ok_or("badly encoded name")?;
        check_name(&name).map_err(|_| "not a valid container name")?;
        names.push(name);
    }
    if names.len() > MAX_DEPTH {
        return Err("nested too deep");
    }
    Ok(names)
}

/// What [`restore`] rebuilt, and what it had to leave out.
#[derive(Debug)]
pub struct Restored {
    /// The tree.
    pub tree: Tree,
    /// Bindings left out: the container's path and the namespace.
    pub dropped: Vec<(String, NsRef)>,
}

/// Rebuilds the tree of `record` under a root binding `root`. A binding is
/// kept if `usable` says its namespace could be reopened; the others are
/// returned, so the caller can say why each one is gone. Containers always
/// come back.
pub fn restore(root: [u64; 8], record: &Record, usable: impl Fn(NsRef) -> bool) -> Restored {
    let mut tree = Tree::new(root);
    let mut dropped = Vec::new();
    // Record numbers of cgroup bindings, and the tree's ids they became.
    let mut cgroups: HashMap<u64, u64> = HashMap::new();
    if let Some(b) = record.root_cgroups
        && let Some((_, m)) = record.cgroups.iter().find(|(o, _)| *o == b)
        && let Ok(held) = tree.set_cgroups(Tree::ROOT, m.clone())
    {
        cgroups.insert(b, held);
    }
    let kinds: HashMap<u64, Kind> = record
        .spaces
        .iter()
        .map(|s| (s.ns.ino, s.ns.kind))
        .collect();
    for c in &record.containers {
        let Some((name, parents)) = c.path.split_last() else {
            continue;
        };
        let parent = parents
            .iter()
            .try_fold(Tree::ROOT, |id, name| tree.child(id, name));
        let Some(id) = parent.and_then(|p| tree.mkdir(p, name).ok()) else {
            continue;
        };
        for ino in c.own.iter().flatten() {
            let Some(&kind) = kinds.get(ino) else {
                continue;
            };
            let ns = NsRef { kind, ino: *ino };
            if !usable(ns) || tree.link(id, ns).is_err() {
                dropped.push((tree.path(id), ns));
            }
        }
        if let Some(b) = c.cgroups {
            if let Some(&held) = cgroups.get(&b) {
                let _ = tree.link_cgroups(id, held);
            } else if let Some((_, m)) = record.cgroups.iter().find(|(o, _)| *o == b)
                && let Ok(held) = tree.set_cgroups(id, m.clone())
            {
                cgroups.insert(b, held);
            }
        }
    }
    Restored { tree, dropped }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: [u64; 8] = [100, 101, 102, 103, 104, 105, 106, 107];

    fn sample() -> Tree {
        let mut t = Tree::new(ROOT);
        let web = t.mkdir(Tree::ROOT, "web").unwrap();
        let db = t.mkdir(web, "db one").unwrap();
        t.mkdir(Tree::ROOT, "a%b\u{e9}\n").unwrap();
        t.link(
            web,
            NsRef {
                kind: Kind::Net,
                ino: 500,
            },
        )
        .unwrap();
        t.link(
            db,
            NsRef {
                kind: Kind::Net,
                ino: 500,
            },
        )
        .unwrap();
        t.link(
            db,
            NsRef {
                kind: Kind::Uts,
                ino: ROOT[Kind::Uts.index()],
            },
        )
        .unwrap();
        t.link(
            web,
            NsRef {
                kind: Kind::Pid,
                ino: 600,
            },
        )
        .unwrap();
        t
    }

    /// Paths and own bindings of every container, for comparisons.
    fn shape(t: &Tree) -> Vec<(String, [Option<u64>; 8])> {
        let mut v: Vec<_> = t
            .ids()
            .map(|id| {
                let c = t.get(id).unwrap();
                let own = std::array::from_fn(|i| c.own(Kind::ALL[i]));
                (t.path(id), own)
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn encode_then_parse_then_restore_gives_the_same_tree() {
        let t = sample();
        let keeper = |ino| {
            (ino == 600).then_some(KeeperRef {
                pid: 42,
                start: 777,
            })
        };
        let text = encode(&t, "boot-id", keeper, &[]);
        assert!(
            text.starts_with("nsproxyfs-tree 1\nboot boot-id\n"),
            "{text}"
        );
        assert!(text.contains("ns pid 600 keeper 42 777\n"), "{text}");
        assert!(
            text.contains("container /web/db%20one net=500 uts=107\n"),
            "{text}"
        );
        assert!(text.contains("container /a%25b%C3%A9%0A\n"), "{text}");
        assert!(!text.contains("100"), "the root is not recorded: {text}");
        let record = parse(text.as_bytes()).unwrap();
        assert_eq!(record.boot, "boot-id");
        assert_eq!(record.spaces.len(), 3);
        let restored = restore(ROOT, &record, |_| true);
        assert!(restored.dropped.is_empty());
        restored.tree.check().unwrap();
        assert_eq!(shape(&restored.tree), shape(&t));
        assert_eq!(encode(&restored.tree, "boot-id", keeper, &[]), text);
    }

    #[test]
    fn cgroup_bindings_round_trip_shared_empty_and_at_the_root() {
        let mut t = sample();
        let web = t.child(Tree::ROOT, "web").unwrap();
        let db = t.child(web, "db one").unwrap();
        let other = t.child(Tree::ROOT, "a%b\u{e9}\n").unwrap();
        let m = Membership::parse("0::/web app\n4:pids:/web\n").unwrap();
        let b = t.set_cgroups(web, m.clone()).unwrap();
        t.link_cgroups(other, b).unwrap();
        t.set_cgroups(db, Membership::default()).unwrap();
        t.set_cgroups(Tree::ROOT, Membership::parse("0::/").unwrap())
            .unwrap();
        let text = encode(&t, "b", |_| None, &[]);
        assert!(text.contains("0::/web%20app%0A4:pids:/web%0A\n"), "{text}");
        assert!(text.contains(" -\n"), "{text}");
        assert!(text.contains("\nroot cgroups="), "{text}");
        let restored = restore(ROOT, &parse(text.as_bytes()).unwrap(), |_| true);
        let r = restored.tree;
        r.check().unwrap();
        let web = r.child(Tree::ROOT, "web").unwrap();
        let db = r.child(web, "db one").unwrap();
        let other = r.child(Tree::ROOT, "a%b\u{e9}\n").unwrap();
        assert_eq!(r.cgroups_to_join(web), Some(&m));
        assert_eq!(
            r.containers_holding(r.get(web).unwrap().own_cgroups().unwrap()),
            {
                let mut v = vec![web, other];
                v.sort();
                v
            }
        );
        assert_eq!(r.cgroups_to_join(db), None);
        assert_eq!(r.effective_cgroups(db).unwrap().from, db);
        assert!(r.get(Tree::ROOT).unwrap().own_cgroups().is_some());
        assert_eq!(encode(&r, "b", |_| None, &[]), text);
        // Bad cgroup lines are refused.
        for (bad, want) in [
            ("cgroups 1 0::x\n", "bad cgroups"),
            ("cgroups 1 -\ncgroups 1 -\n", "twice"),
            ("container /a cgroups=3\n", "not listed"),
            ("root cgroups=3\n", "not listed"),
            ("cgroups 1 -\ncontainer /a cgroups=1 cgroups=1\n", "twice"),
        ] {
            let text = format!("nsproxyfs-tree 1\nboot b\n{bad}end\n");
            let e = parse(text.as_bytes()).expect_err(&text).to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
    }

    #[test]
    fn released_namespaces_with_keepers_still_leaving_are_listed_once() {
        let leaving = [
            RecordedNs {
                ns: NsRef {
                    kind: Kind::Mnt,
                    ino: 700,
                },
                keeper: Some(KeeperRef { pid: 9, start: 8 }),
            },
            // Bound again meanwhile: listed as bound, once.
            RecordedNs {
                ns: NsRef {
                    kind: Kind::Net,
                    ino: 500,
                },
                keeper: Some(KeeperRef { pid: 7, start: 6 }),
            },
        ];
        let text = encode(&sample(), "b", |_| None, &leaving);
        assert!(text.contains("ns mnt 700 keeper 9 8\n"), "{text}");
        assert!(text.contains("ns net 500\n"), "{text}");
        assert_eq!(text.matches(" 500\n").count(), 1, "{text}");
        let record = parse(text.as_bytes()).unwrap();
        assert_eq!(record.spaces.len(), 4);
        let restored = restore(ROOT, &record, |_| true);
        assert_eq!(restored.tree.binders(700), 0);
        assert_eq!(shape(&restored.tree), shape(&sample()));
    }

    #[test]
    fn unusable_namespaces_are_dropped_and_containers_stay() {
        let record = parse(encode(&sample(), "b", |_| None, &[]).as_bytes()).unwrap();
        let restored = restore(ROOT, &record, |ns| ns.ino != 500);
        restored.tree.check().unwrap();
        let mut dropped = restored.dropped.clone();
        dropped.sort_by(|a, b| a.0.cmp(&b.0));
        let net = NsRef {
            kind: Kind::Net,
            ino: 500,
        };
        assert_eq!(
            dropped,
            vec![("/web".to_owned(), net), ("/web/db one".to_owned(), net)]
        );
        assert_eq!(restored.tree.len(), 4);
        assert_eq!(restored.tree.binders(600), 1);
    }

    #[test]
    fn an_empty_tree_round_trips() {
        let t = Tree::new(ROOT);
        let text = encode(&t, "b", |_| None, &[]);
        assert_eq!(text, "nsproxyfs-tree 1\nboot b\nend\n");
        let restored = restore(ROOT, &parse(text.as_bytes()).unwrap(), |_| true);
        assert_eq!(restored.tree.len(), 1);
    }

    #[test]
    fn bad_records_are_refused_with_a_reason() {
        let head = "nsproxyfs-tree 1\nboot b\n";
        let cases: &[(&str, &str)] = &[
            ("", "not an nsproxyfs record"),
            ("nsproxyfs-tree 1\n", "cut short"),
            ("nsproxyfs-tree 1\nnoboot\nend\n", "boot"),
            ("nsproxyfs-tree 2\nboot b\nend\n", "version"),
            ("something else\n", "not an nsproxyfs record"),
            ("nsproxyfs-tree 1\nboot b\n", "cut short"),
            ("nsproxyfs-tree 1\nboot b\ncontainer /a\n", "cut short"),
            ("nsproxyfs-tree 1\nboot b\nend\nmore\n", "after the end"),
            (
                "nsproxyfs-tree 1\nboot b\nns bogus 5\nend\n",
                "unknown kind",
            ),
            ("nsproxyfs-tree 1\nboot b\nns net +5\nend\n", "inode"),
            (
                "nsproxyfs-tree 1\nboot b\nns net 5\nns uts 5\nend\n",
                "twice",
            ),
            (
                "nsproxyfs-tree 1\nboot b\nns pid 5 keeper 0 1\nend\n",
                "pid",
            ),
            ("nsproxyfs-tree 1\nboot b\ncontainer /a/b\nend\n", "parent"),
            (
                "nsproxyfs-tree 1\nboot b\ncontainer /a\ncontainer /a\nend\n",
                "twice",
            ),
            ("nsproxyfs-tree 1\nboot b\ncontainer /net\nend\n", "valid"),
            ("nsproxyfs-tree 1\nboot b\ncontainer /.x\nend\n", "valid"),
            ("nsproxyfs-tree 1\nboot b\ncontainer /a%2\nend\n", "encoded"),
            ("nsproxyfs-tree 1\nboot b\ncontainer /a%2F\nend\n", "valid"),
            (
                "nsproxyfs-tree 1\nboot b\ncontainer a\nend\n",
                "start with /",
            ),
            (
                "nsproxyfs-tree 1\nboot b\ncontainer /a net=5\nend\n",
                "not listed",
            ),
            (
                "nsproxyfs-tree 1\nboot b\nns uts 5\ncontainer /a net=5\nend\n",
                "not listed",
            ),
            (
                "nsproxyfs-tree 1\nboot b\nns net 5\ncontainer /a net=5 net=5\nend\n",
                "twice",
            ),
            (
                "nsproxyfs-tree 1\nboot b\ncontainer /a\nns net 5\nend\n",
                "after container",
            ),
            ("nsproxyfs-tree 1\nboot b\n\nend\n", "unknown line"),
        ];
        for (text, want) in cases {
            let e = parse(text.as_bytes()).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e:?} should mention {want:?}");
        }
        let deep = format!(
            "{head}{}end\n",
            (1..=MAX_DEPTH + 1)
                .map(|d| format!("container {}\n", "/x".repeat(d)))
                .collect::<String>()
        );
        assert!(
            parse(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("deep")
        );
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_parser_is_total_on_random_and_mangled_input() {
        // A small xorshift generator: deterministic, no dependency.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let good = encode(
            &sample(),
            "b",
            |ino| (ino == 600).then_some(KeeperRef { pid: 1, start: 2 }),
            &[],
        )
        .into_bytes();
        let alphabet = b"nsproxyfs-tree 1\nboot ns container end keeper net=pid=/%0A9-";
        for round in 0..20_000 {
            let mut bytes = good.clone();
            match round % 4 {
                0 => {
                    let len = (next() % 200) as usize;
                    bytes = (0..len)
                        .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                        .collect();
                }
                1 => {
                    let cut = (next() as usize) % (bytes.len() + 1);
                    bytes.truncate(cut);
                }
                _ => {
                    for _ in 0..(1 + next() % 4) {
                        let i = (next() as usize) % bytes.len();
                        bytes[i] = match next() % 3 {
                            0 => (next() & 0xff) as u8,
                            _ => alphabet[(next() % alphabet.len() as u64) as usize],
                        };
                    }
                }
            }
            if let Ok(record) = parse(&bytes) {
                let restored = restore(ROOT, &record, |_| true);
                restored.tree.check().unwrap();
                assert_eq!(restored.tree.len(), record.containers.len() + 1);
            }
        }
    }
}

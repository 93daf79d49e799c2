//! Names for discovered namespace sets, as plain data.
//!
//! A set is named after the first of these that applies to its lowest pid:
//!
//! 1. the container runtime its cgroup path reveals: `docker-ID`,
//!    `podman-ID`, `containerd-ID`, `crio-ID`, `k8s-ID` (IDs cut to 12
//!    hex digits, as the runtimes print them), `lxc-NAME`, `machine-NAME`
//!    (systemd-nspawn and other machined guests);
//! 2. the `ip netns` name of its network namespace: `netns-NAME`;
//! 3. the hostname of its uts namespace followed by a short id of the set:
//!    `HOST-1a2b3c4d`.
//!
//! A name another live set already has gets the short id appended too. The
//! short id is 8 hex digits of a hash of the set's eight inode numbers, so
//! the same set gets the same name in every daemon of one boot.

use crate::tree::check_name;

/// Longest name built here, well under `NAME_MAX`.
const MAX: usize = 100;

/// The runtime's name for the container whose cgroup path is `path` (as
/// the last field of a `/proc/PID/cgroup` line shows it), if the path
/// follows a layout a runtime uses. The deepest matching component wins:
/// a container runtime inside another one names its own containers.
pub fn runtime_name(path: &str) -> Option<String> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    for (i, part) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|p| parts[p]);
        if let Some(name) = component_name(part, parent) {
            return Some(name);
        }
    }
    None
}

fn component_name(part: &str, parent: Option<&str>) -> Option<String> {
    let scope = |prefix: &str, runtime: &str| {
        let id = part.strip_prefix(prefix)?.strip_suffix(".scope")?;
        Some(format!("{runtime}-{}", short_hex(id)?))
    };
    let found = scope("docker-", "docker")
        .or_else(|| scope("libpod-", "podman"))
        .or_else(|| scope("cri-containerd-", "containerd"))
        .or_else(|| scope("crio-", "crio"));
    if found.is_some() {
        return found;
    }
    // cgroupfs drivers: /docker/ID, /libpod_parent/libpod-ID, and a
    // kubelet's /kubepods/CLASS/podUID/ID.
    match parent {
        Some("docker") => {
            if let Some(id) = short_hex(part) {
                return Some(format!("docker-{id}"));
            }
        }
        Some("libpod_parent") => {
            if let Some(id) = part.strip_prefix("libpod-").and_then(short_hex) {
                return Some(format!("podman-{id}"));
            }
        }
        Some(p) if p.starts_with("pod") => {
            if let Some(id) = short_hex(part) {
                return Some(format!("k8s-{id}"));
            }
        }
        _ => {}
    }
    if let Some(name) = part.strip_prefix("lxc.payload.") {
        return Some(format!("lxc-{}", clean(name)));
    }
    if parent == Some("lxc") {
        return Some(format!("lxc-{}", clean(part)));
    }
    if let Some(name) = part
        .strip_prefix("machine-")
        .and_then(|n| n.strip_suffix(".scope"))
    {
        return Some(format!("machine-{}", clean(&unescape_unit(name))));
    }
    if let Some(name) = part
        .strip_prefix("systemd-nspawn@")
        .and_then(|n| n.strip_suffix(".service"))
    {
        return Some(format!("machine-{}", clean(&unescape_unit(name))));
    }
    None
}

/// The first 12 digits of a container id: 64 lowercase hex digits.
fn short_hex(id: &str) -> Option<String> {
    let hex = id.len() == 64
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    hex.then(|| id[..12].to_owned())
}

/// Undoes systemd's unit-name escaping (`\x2d` for `-`, and so on).
fn unescape_unit(name: &str) -> String {
    let mut out = Vec::with_capacity(name.len());
    let bytes = name.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && bytes.get(i + 1) == Some(&b'x')
            && let Some(v) = name
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `s` made into a readable container name: letters, digits, `-`, `_`
/// and `.` are kept, anything else becomes `_`; no leading dot; at most
/// `MAX` (100) bytes. Empty input gives `host`.
pub fn clean(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(MAX)
        .collect();
    while out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.is_empty() {
        out.push_str("host");
    }
    out
}

/// 8 hex digits naming the set `set` (FNV-1a over its inode numbers).
pub fn short_id(set: &[u64; 8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for ino in set {
        for b in ino.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// Where a set's name comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A runtime name or an `ip netns` name: used as it is when free.
    Named(String),
    /// A hostname: always followed by the set's short id.
    Host(String),
}

/// The name for `set`, from `source`, that `taken` does not refuse: the
/// plain name, then with the short id, then with a counter.
pub fn choose(source: &Source, set: &[u64; 8], taken: impl Fn(&str) -> bool) -> String {
    let id = short_id(set);
    let (base, plain) = match source {
        Source::Named(n) => (clean(n), true),
        Source::Host(h) => (clean(h), false),
    };
    // A kind or control name is no container name: the id keeps it apart.
    let usable = |n: &str| check_name(n).is_ok() && !taken(n);
    if plain && usable(&base) {
        return base;
    }
    let with_id = format!("{base}-{id}");
    if usable(&with_id) {
        return with_id;
    }
    (2u32..)
        .map(|n| format!("{with_id}-{n}"))
        .find(|n| usable(n))
        .unwrap_or(with_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a9c1b7e4d5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    #[test]
    fn runtimes_are_recognised_by_their_cgroup_layouts() {
        let cases = [
            (
                format!("/system.slice/docker-{ID}.scope"),
                "docker-3f2a9c1b7e4d",
            ),
            (format!("/docker/{ID}"), "docker-3f2a9c1b7e4d"),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                "podman-3f2a9c1b7e4d",
            ),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
                ),
                "podman-3f2a9c1b7e4d",
            ),
            (format!("/libpod_parent/libpod-{ID}"), "podman-3f2a9c1b7e4d"),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234.slice/cri-containerd-{ID}.scope"
                ),
                "containerd-3f2a9c1b7e4d",
            ),
            (
                format!("/kubepods/besteffort/pod5678/{ID}"),
                "k8s-3f2a9c1b7e4d",
            ),
            (
                format!("/system.slice/crio-{ID}.scope"),
                "crio-3f2a9c1b7e4d",
            ),
            ("/lxc.payload.web1/init.scope".to_owned(), "lxc-web1"),
            ("/lxc/web1".to_owned(), "lxc-web1"),
            (
                "/machine.slice/machine-fedora\\x2d40.scope".to_owned(),
                "machine-fedora-40",
            ),
            (
                "/machine.slice/systemd-nspawn@deb.service/payload".to_owned(),
                "machine-deb",
            ),
            // docker inside an LXC container names its own container.
            (
                format!("/lxc.payload.big/system.slice/docker-{ID}.scope"),
                "docker-3f2a9c1b7e4d",
            ),
        ];
        for (path, want) in cases {
            assert_eq!(runtime_name(&path).as_deref(), Some(want), "{path}");
        }
        for path in [
            "/",
            "",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/docker.service",
            "/docker/notanid",
            "/system.slice/docker-abc.scope",
            &format!("/system.slice/docker-{}.scope", ID.to_uppercase()),
        ] {
            assert_eq!(runtime_name(path), None, "{path}");
        }
    }

    #[test]
    fn names_are_cleaned_and_never_reserved() {
        assert_eq!(clean("web 1/a"), "web_1_a");
        assert_eq!(clean(".hidden"), "_hidden");
        assert_eq!(clean(""), "host");
        assert_eq!(clean(&"x".repeat(300)).len(), MAX);
        assert_eq!(unescape_unit("a\\x2db\\x2"), "a-b\\x2");
    }

    #[test]
    fn choices_avoid_taken_names_and_hosts_carry_the_id() {
        let set = [1, 2, 3, 4, 5, 6, 7, 8];
        let id = short_id(&set);
        assert_eq!(id.len(), 8);
        assert_ne!(id, short_id(&[1, 2, 3, 4, 5, 6, 7, 9]));
        let free = |_: &str| false;
        let named = Source::Named("docker-abc".into());
        assert_eq!(choose(&named, &set, free), "docker-abc");
        assert_eq!(
            choose(&named, &set, |n| n == "docker-abc"),
            format!("docker-abc-{id}")
        );
        assert_eq!(
            choose(&named, &set, |n| n.starts_with("docker-abc")
                && !n.ends_with("-3")),
            format!("docker-abc-{id}-3")
        );
        assert_eq!(
            choose(&Source::Host("node1".into()), &set, free),
            format!("node1-{id}")
        );
        // A name that is a kind or control name gets the id.
        assert_eq!(
            choose(&Source::Named("net".into()), &set, free),
            format!("net-{id}")
        );
        for n in [
            choose(&Source::Host("tasks".into()), &set, free),
            choose(&Source::Named(".x".into()), &set, free),
            choose(&Source::Host("a/b".into()), &set, free),
        ] {
            assert!(check_name(&n).is_ok(), "{n}");
        }
    }
}

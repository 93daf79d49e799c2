//! Holders sit in exactly the set they were made for, and go away when
//! dropped.

mod common;

use std::sync::Arc;

use common::*;
use nsproxyfs::ns::{self, Holder, Kind, Namespace};

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_holder_sits_in_its_set_and_leaves_when_dropped() {
    if !require_privileges("holder") {
        return;
    }
    let own: [u64; 8] = std::array::from_fn(|i| Namespace::own(Kind::ALL[i]).unwrap().ino());
    let hide = c"/nonexistent-mount-point";
    let set: [Arc<Namespace>; 8] = std::array::from_fn(|i| {
        let kind = Kind::ALL[i];
        Arc::new(match kind {
            Kind::Net | Kind::Uts | Kind::Pid | Kind::Time | Kind::User => {
                ns::fresh(kind, hide).unwrap()
            }
            _ => Namespace::own(kind).unwrap(),
        })
    });
    let holder = Holder::spawn(&set, &own).unwrap();
    let pid = holder.pid();
    for kind in Kind::ALL {
        let entry = match kind {
            Kind::Pid => "pid",
            Kind::Time => "time",
            k => k.name(),
        };
        assert_eq!(ns_ino(pid, entry), set[kind.index()].ino(), "{kind}");
    }
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap(),
        "nsproxyfs-hold\n"
    );
    // Nothing of the daemon stays open in it but its control pipe. It
    // closes the pipe it reported on just after reporting, so that one may
    // still be open for a moment.
    let fds = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count()
    };
    wait_for("only the control pipe to be open", || fds() == 1);
    drop(holder);
    wait_for("the holder to exit", || gone(pid));
}

//! Credentials of one task (thread): ids, groups and capabilities.
//!
//! Credentials are per thread in the kernel, but libc's (and so nix's)
//! `setuid`-family wrappers change every thread of the process (the "setxid
//! broadcast"), and the daemon's other threads must keep root's. So these
//! are raw system calls, which change only the calling task; they allocate
//! and lock nothing, and may run in a child cloned from the daemon.

/// `SECBIT_NO_SETUID_FIXUP`: changing uids leaves capabilities alone.
const SECBIT_NO_SETUID_FIXUP: libc::c_ulong = 1 << 2;
/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit halves per set.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn raw(r: libc::c_long) -> Result<(), i32> {
    if r < 0 { Err(super::errno()) } else { Ok(()) }
}

/// Makes the calling task hold exactly these credentials: real, effective,
/// saved and filesystem `uid` and `gid`, the supplementary `groups`, and
/// the effective, permitted and inheritable capability sets `caps`. The
/// errno of the first refused step on failure.
///
/// # Safety
///
/// The calling task's credentials are lowered for good: the caller must
/// be a thread or child that exists only to act with these credentials, and
/// that ends once done. Called on any other thread, that thread would go on
/// with too few rights for the daemon's work.
pub unsafe fn assume(
    uid: [u32; 4],
    gid: [u32; 4],
    groups: &[u32],
    caps: [u64; 3],
) -> Result<(), i32> {
    let [ruid, euid, suid, fsuid] = uid;
    let [rgid, egid, sgid, fsgid] = gid;
    // SAFETY: prctl(PR_SET_SECUREBITS) takes integers and changes only
    // this task's credentials.
    raw(unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_SECUREBITS,
            SECBIT_NO_SETUID_FIXUP,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: the pointer and length describe `groups`, which outlives the
    // call; the kernel copies them.
    raw(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })?;
    // SAFETY: setresgid/setfsgid take integers and change only this task.
    raw(unsafe { libc::syscall(libc::SYS_setresgid, rgid, egid, sgid) })?;
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setfsgid, fsgid) };
    // SAFETY: setresuid/setfsuid take integers and change only this
    // task; with SECBIT_NO_SETUID_FIXUP the capabilities stay.
    raw(unsafe { libc::syscall(libc::SYS_setresuid, ruid, euid, suid) })?;
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_setfsuid, fsuid) };
    let header = Header {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let [effective, permitted, inheritable] = caps;
    let half = |v: u64, i: u32| (v >> (32 * i)) as u32;
    let data = [0, 1].map(|i| Data {
        effective: half(effective, i),
        permitted: half(permitted, i),
        inheritable: half(inheritable, i),
    });
    // SAFETY: capset reads the header and, for version 3, two `Data`
    // records; both are live locals of those layouts.
    raw(unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) })?;
    // The filesystem ids are checked last: setfsuid reports no error.
    // SAFETY: -1 is never a valid id, so these only read the current one.
    let (fu, fg) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
            libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
        )
    };
    if fu != fsuid || fg != fsgid {
        return Err(libc::EPERM);
    }
    Ok(())
}

/// The effective, permitted and inheritable capabilities of thread `tid`,
/// by capget(2) (which nix lacks); `None` if it is gone.
pub fn capabilities(tid: i32) -> Option<[u64; 3]> {
    if tid <= 0 {
        return None;
    }
    let mut header = Header {
        version: CAPABILITY_VERSION_3,
        pid: tid,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget reads `header` and, for version 3, writes exactly two
    // `Data` records to `data`; both are live locals of those layouts.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    let join = |lo: u32, hi: u32| u64::from(lo) | (u64::from(hi) << 32);
    (r == 0).then(|| {
        [
            join(data[0].effective, data[1].effective),
            join(data[0].permitted, data[1].permitted),
            join(data[0].inheritable, data[1].inheritable),
        ]
    })
}

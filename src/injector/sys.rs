//! The system calls of the daemon-injector channel: a `SOCK_SEQPACKET`
//! socket pair, records that may carry one descriptor, and the signal set-up
//! of an injector. Every `unsafe` block of the `injector` module is here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, close-on-exec:
/// each send arrives as one record, and a closed end reads as EOF.
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    check(
        // SAFETY: `fds` is a valid array of two ints for the kernel to fill.
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        }
        .into(),
    )?;
    // SAFETY: socketpair succeeded: both are new descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Room for the control message of one descriptor, aligned for `cmsghdr`.
#[repr(C)]
union OneFd {
    buf: [u8; 64],
    _align: libc::cmsghdr,
}

/// Sends `data` as one record, with `fd` attached (`SCM_RIGHTS`) if given.
/// Never raises SIGPIPE: a peer that is gone is `EPIPE`.
pub(crate) fn send(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = OneFd { buf: [0; 64] };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        let raw = fd.as_raw_fd();
        // SAFETY: CMSG_SPACE only computes a size.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        debug_assert!(space <= std::mem::size_of::<OneFd>());
        // SAFETY: any byte pattern is a valid [u8; 64]; we only hand out a
        // pointer to the union's storage.
        msg.msg_control = unsafe { control.buf.as_mut_ptr() }.cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points to `space` zeroed, cmsghdr-aligned bytes
        // that outlive this block, so the first header is inside them, and
        // CMSG_DATA of it has room for one RawFd (CMSG_SPACE said so).
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), raw);
        }
    }
    loop {
        // SAFETY: `msg` points to one live iovec over `data` and, if set, to
        // the live control buffer; sendmsg only reads them.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match check(n as libc::c_long) {
            Ok(n) if n as usize == data.len() => return Ok(()),
            Ok(_) => return Err(io::Error::from_raw_os_error(libc::EMSGSIZE)),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// One record received: its length in `buf` (0 is EOF: the peer closed its
/// end), and the descriptor it carried, if any (close-on-exec). A record
/// longer than `buf` is `EMSGSIZE`.
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = OneFd { buf: [0; 64] };
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    // SAFETY: we only take a pointer to the union's storage.
    msg.msg_control = unsafe { control.buf.as_mut_ptr() }.cast();
    msg.msg_controllen = std::mem::size_of::<OneFd>() as _;
    let n = loop {
        // SAFETY: `msg` points to one live iovec over `buf` and to the live
        // control buffer, whose sizes it states; recvmsg writes within them.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        match check(n as libc::c_long) {
            Ok(n) => break n as usize,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    };
    // Descriptors that arrived are ours, whatever else is wrong.
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `msg_control` up to `msg_controllen` with
    // well-formed headers; CMSG_FIRSTHDR/NXTHDR stay within that length.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    while !cmsg.is_null() {
        // SAFETY: `cmsg` is non-null and points into the control buffer.
        let (level, kind, len) =
            unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type, (*cmsg).cmsg_len) };
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            // SAFETY: CMSG_LEN(0) only computes the header size.
            let header = unsafe { libc::CMSG_LEN(0) } as usize;
            // cmsg_len is a size_t with glibc, a socklen_t with musl.
            #[allow(clippy::unnecessary_cast)]
            let len = len as usize;
            let count = len.saturating_sub(header) / std::mem::size_of::<RawFd>();
            for i in 0..count {
                // SAFETY: the payload of an SCM_RIGHTS header holds `count`
                // descriptors, which the kernel just installed in this
                // process and nobody else owns.
                let fd = unsafe {
                    let raw =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>().add(i));
                    OwnedFd::from_raw_fd(raw)
                };
                fds.push(fd);
            }
        }
        // SAFETY: as for CMSG_FIRSTHDR above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 || fds.len() > 1 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((n, fds.pop()))
}

/// Makes the calling process immune to the signals that could end or stop
/// an injector in the middle of a move: it leaves the daemon's session, so
/// no terminal's Ctrl-C, Ctrl-Z or hang-up reaches it, and ignores the
/// signals of `kill` and job control. SIGKILL and SIGSTOP remain.
pub(crate) fn shield_from_signals() {
    // SAFETY: setsid takes no argument; it fails (harmlessly) only if this
    // process already leads a process group.
    unsafe { libc::setsid() };
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGALRM,
        libc::SIGVTALRM,
        libc::SIGPROF,
    ] {
        // SAFETY: SIG_IGN installs no handler code.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    let none = empty_sigset();
    // SAFETY: `none` is an initialised, empty set; the old mask is not wanted.
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut()) };
}

fn empty_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, and sigemptyset initialises it fully.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        set
    }
}

/// Closes every descriptor from `first` up: an injector keeps nothing of the
/// daemon but its channel (a descriptor that is not close-on-exec, such as a
/// FUSE device, would otherwise keep the mount alive after the daemon died).
pub(crate) fn close_from(first: RawFd) {
    // SAFETY: close_range takes integers; the descriptors it closes are
    // unused by this process, which has only just started.
    unsafe { libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) };
}

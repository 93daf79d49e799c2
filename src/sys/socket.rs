//! Sockets: the daemon-injector channel (a `SOCK_SEQPACKET` pair whose
//! records may carry one descriptor) and the netlink process connector.

use std::io;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, NetlinkAddr, SockFlag, SockType, sockopt,
};

use super::check;

/// A connected pair of `AF_UNIX` `SOCK_SEQPACKET` sockets, close-on-exec:
/// each send arrives as one record, and a closed end reads as EOF.
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::sys::socket::socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

/// Room for the control message of one descriptor, aligned for `cmsghdr`.
#[repr(C)]
union OneFd {
    buf: [u8; 64],
    _align: libc::cmsghdr,
}

/// Sends `data` as one record, with `fd` attached (`SCM_RIGHTS`) if given.
/// Never raises SIGPIPE: a peer that is gone is `EPIPE`.
///
/// Raw, because a child cloned from the multithreaded daemon sends with it
/// (see [`super::child::Child::send`]), and nix's `sendmsg` allocates the
/// control buffer: here it is on the stack.
pub fn send(sock: BorrowedFd<'_>, data: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
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
/// longer than `buf`, or carrying more than one descriptor, is `EMSGSIZE`.
pub fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let (n, flags, raw) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match nix::sys::socket::recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut raw = Vec::new();
                for cmsg in msg.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = cmsg {
                        raw.extend(fds);
                    }
                }
                break (msg.bytes, msg.flags, raw);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds: Vec<OwnedFd> = raw
        .into_iter()
        // SAFETY: the kernel has just installed these descriptors in this
        // process (SCM_RIGHTS); nothing else owns them.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) || fds.len() > 1 {
        return Err(io::Error::from_raw_os_error(libc::EMSGSIZE));
    }
    Ok((n, fds.pop()))
}

/// `NETLINK_CONNECTOR`, which nix's `SockProtocol` does not name.
const NETLINK_CONNECTOR: libc::c_int = 11;

/// A non-blocking netlink connector socket bound to the multicast `group`,
/// its receive buffer raised to `rcvbuf` bytes where the kernel allows.
pub fn netlink_connector(group: u32, rcvbuf: usize) -> io::Result<OwnedFd> {
    let fd = super::owned(
        // SAFETY: socket(2) with constant arguments returns a new fd or -1.
        unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            )
        }
        .into(),
    )?;
    // Best effort: the default size is kept on failure.
    let _ = nix::sys::socket::setsockopt(&fd, sockopt::RcvBufForce, &rcvbuf);
    nix::sys::socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, group))?;
    Ok(fd)
}

/// Sends one datagram on `sock`.
pub fn send_datagram(sock: BorrowedFd<'_>, data: &[u8]) -> io::Result<()> {
    nix::sys::socket::send(sock.as_raw_fd(), data, MsgFlags::empty())?;
    Ok(())
}

/// Receives one netlink datagram into `buf` without waiting (the socket is
/// non-blocking): its length and the sender's port (0: the kernel).
/// `EAGAIN` when nothing is queued, `ENOBUFS` after the kernel dropped
/// messages.
pub fn recv_netlink(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, u32)> {
    let (n, from) = nix::sys::socket::recvfrom::<NetlinkAddr>(sock.as_raw_fd(), buf)?;
    Ok((n, from.map_or(0, |a| a.pid())))
}

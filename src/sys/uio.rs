//! Reading another process's memory, through nix.

use std::io::IoSliceMut;

use nix::errno::Errno;
use nix::sys::uio::RemoteIoVec;
use nix::unistd::Pid;

/// Reads another process's memory at `addr` into `buf` (process_vm_readv):
/// how many bytes were read. The kernel first checks
/// `PTRACE_MODE_ATTACH_REALCREDS` of the caller over `pid`.
pub fn read(pid: Pid, addr: usize, buf: &mut [u8]) -> Result<usize, Errno> {
    let remote = [RemoteIoVec {
        base: addr,
        len: buf.len(),
    }];
    nix::sys::uio::process_vm_readv(pid, &mut [IoSliceMut::new(buf)], &remote)
}

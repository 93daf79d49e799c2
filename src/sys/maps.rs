//! Asking the kernel about one mapping of another process
//! (`PROCMAP_QUERY`, Linux 6.11), without reading and parsing the whole
//! text of `/proc/PID/maps`.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::errno::Errno;

/// `struct procmap_query` of `linux/fs.h`.
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = (3 << 30)
    | ((std::mem::size_of::<ProcmapQuery>() as libc::c_ulong) << 16)
    | ((b'f' as libc::c_ulong) << 8)
    | 17;

/// `PROCMAP_QUERY_VMA_READABLE`.
pub const READABLE: u64 = 0x01;
/// `PROCMAP_QUERY_VMA_WRITABLE`.
pub const WRITABLE: u64 = 0x02;
/// `PROCMAP_QUERY_VMA_EXECUTABLE`.
pub const EXECUTABLE: u64 = 0x04;
/// `PROCMAP_QUERY_VMA_SHARED`.
pub const SHARED: u64 = 0x08;

/// One mapping: its range and its `PROCMAP_QUERY_VMA_*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vma {
    /// First address.
    pub start: u64,
    /// Address past the end.
    pub end: u64,
    /// [`READABLE`], [`WRITABLE`], [`EXECUTABLE`], [`SHARED`].
    pub flags: u64,
}

/// The mapping that contains `addr`, asked through an open
/// `/proc/PID/maps` (`ENOENT`: none does; `ENOTTY`: a kernel before 6.11).
pub fn query(maps: BorrowedFd<'_>, addr: u64) -> Result<Vma, Errno> {
    let mut q = ProcmapQuery {
        size: std::mem::size_of::<ProcmapQuery>() as u64,
        query_addr: addr,
        ..ProcmapQuery::default()
    };
    // SAFETY: `q` is a valid, initialised `struct procmap_query` whose
    // `size` says how large it is; its name and build-id buffers are null
    // with sizes 0, so the kernel writes only into `q` itself.
    let ret = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, &mut q as *mut ProcmapQuery) };
    Errno::result(ret)?;
    Ok(Vma {
        start: q.vma_start,
        end: q.vma_end,
        flags: q.vma_flags,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn finds_the_mapping_of_this_function() {
        let maps = std::fs::File::open("/proc/self/maps").unwrap();
        let addr = finds_the_mapping_of_this_function as *const () as u64;
        match query(maps.as_fd(), addr) {
            Ok(vma) => {
                assert!(vma.start <= addr && addr < vma.end);
                assert_ne!(vma.flags & EXECUTABLE, 0);
                assert_eq!(vma.flags & SHARED, 0);
            }
            // A kernel before 6.11.
            Err(Errno::ENOTTY) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

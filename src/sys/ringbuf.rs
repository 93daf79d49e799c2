//! The positions of a BPF ring buffer (`BPF_MAP_TYPE_RINGBUF`), read from
//! a read-only mapping of its first two pages: the consumer's position
//! (page 0) and the producer's (page 1). The records themselves are read
//! through aya; these two numbers tell a reader whether it has read
//! everything reserved before a given moment, including records whose
//! writer has reserved them but not yet committed them.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// A read-only mapping of a ring buffer's two position pages.
pub struct Positions {
    base: NonNull<libc::c_void>,
    page: usize,
}

// SAFETY: the mapping is only read, through atomic loads, and lives as
// long as the value; it may be used from any thread.
unsafe impl Send for Positions {}
// SAFETY: as for Send: shared use only performs atomic loads.
unsafe impl Sync for Positions {}

/// The size of a page: a ring buffer's size must be a multiple of it.
pub fn page_size() -> io::Result<usize> {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page).map_err(|_| io::Error::other("no page size"))
}

impl Positions {
    /// Maps the position pages of the ring buffer map `fd`.
    pub fn map(fd: BorrowedFd<'_>) -> io::Result<Positions> {
        let page = page_size()?;
        // SAFETY: a new shared read-only mapping of two pages of a map
        // descriptor that is open for the duration of the call; the kernel
        // chooses the address, so no existing mapping is replaced. A ring
        // buffer allows read-only mappings of its position pages.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(Positions { base, page })
    }

    fn load(&self, offset: usize) -> u64 {
        // SAFETY: `offset` is 0 or one page, within the two-page mapping,
        // page-aligned and so aligned for a u64; the kernel and the
        // consumer update these words atomically, so they are read as
        // atomics.
        let word = unsafe {
            &*self
                .base
                .as_ptr()
                .cast::<u8>()
                .add(offset)
                .cast::<AtomicU64>()
        };
        word.load(Ordering::Acquire)
    }

    /// How far the consumer has read.
    pub fn consumer(&self) -> u64 {
        self.load(0)
    }

    /// How far writers have reserved.
    pub fn producer(&self) -> u64 {
        self.load(self.page)
    }
}

impl Drop for Positions {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`, which nothing
        // else refers to once this value is dropped.
        unsafe { libc::munmap(self.base.as_ptr(), 2 * self.page) };
    }
}

//! Finding a `syscall` instruction in a tracee's address space.
//!
//! Nothing is written here: the single-stepped code is the instruction the
//! tracee already has (the join stub, [`super::stub`], goes into the page
//! of the site found here), either the one it entered the kernel through or one
//! found in an executable mapping (the vDSO first, which always carries the
//! fallback path of its time functions).

use std::fs;

use nix::errno::Errno;
use nix::unistd::Pid;

use super::arch::SYSCALL_INSN;
use super::traced;

/// Bytes read per step while scanning a mapping.
const CHUNK: usize = 64 * 1024;
/// Bytes scanned at most per mapping outside the vDSO.
const MAX_SCAN_PER_MAPPING: u64 = 4 * 1024 * 1024;

/// Whether `addr` in the address space of `pid` holds a `syscall` instruction.
pub(crate) fn holds_syscall_insn(pid: Pid, addr: u64) -> Result<bool, Errno> {
    let mut buf = [0u8; SYSCALL_INSN.len()];
    traced::read_memory(pid, addr, &mut buf)?;
    Ok(buf == SYSCALL_INSN)
}

/// One executable mapping of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Mapping {
    start: u64,
    end: u64,
    vdso: bool,
}

/// Executable mappings of a maps file, the vDSO first.
fn executable_mappings(maps: &str) -> Vec<Mapping> {
    let mut found: Vec<Mapping> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.starts_with("r-x") {
                return None;
            }
            let (start, end) = range.split_once('-')?;
            let start = u64::from_str_radix(start, 16).ok()?;
            let end = u64::from_str_radix(end, 16).ok()?;
            let vdso = line.trim_end().ends_with("[vdso]");
            (end > start).then_some(Mapping { start, end, vdso })
        })
        .collect();
    // Stable sort: the vDSO first, the rest in address order.
    found.sort_by_key(|m| !m.vdso);
    found
}

/// Position of the first `syscall` instruction in `bytes`.
fn find_insn(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(SYSCALL_INSN.len())
        .position(|w| w == SYSCALL_INSN)
}

/// Scans the executable mappings of `pid` for a `syscall` instruction.
pub(crate) fn scan(pid: Pid) -> Result<Option<u64>, Errno> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
    let mut buf = vec![0u8; CHUNK];
    for mapping in executable_mappings(&maps) {
        let limit = if mapping.vdso {
            mapping.end
        } else {
            mapping
                .end
                .min(mapping.start.saturating_add(MAX_SCAN_PER_MAPPING))
        };
        let mut addr = mapping.start;
        while addr < limit {
            // Overlap each chunk by one byte so an instruction split across
            // two chunks is still seen.
            let len = usize::try_from(limit - addr).map_or(CHUNK, |rest| rest.min(CHUNK));
            let chunk = &mut buf[..len];
            match traced::read_memory(pid, addr, chunk) {
                Ok(()) => {}
                // Unreadable (guard pages, execute-only): try the next mapping.
                Err(Errno::EFAULT | Errno::EIO) => break,
                Err(e) => return Err(e),
            }
            if let Some(pos) = find_insn(chunk) {
                return Ok(Some(addr + pos as u64));
            }
            if len < SYSCALL_INSN.len() {
                break;
            }
            addr += (len - (SYSCALL_INSN.len() - 1)) as u64;
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vdso_comes_first() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 08:01 12 /usr/bin/sleep
55d0c0001000-55d0c0005000 r-xp 00001000 08:01 12 /usr/bin/sleep
7ffd1c1f0000-7ffd1c1f4000 r--p 00000000 00:00 0 [vvar]
7ffd1c1f4000-7ffd1c1f6000 r-xp 00000000 00:00 0 [vdso]
";
        let found = executable_mappings(maps);
        assert_eq!(
            found,
            vec![
                Mapping {
                    start: 0x7ffd1c1f4000,
                    end: 0x7ffd1c1f6000,
                    vdso: true
                },
                Mapping {
                    start: 0x55d0c0001000,
                    end: 0x55d0c0005000,
                    vdso: false
                },
            ]
        );
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn finds_instruction_bytes() {
        assert_eq!(find_insn(&[0x90, 0x0f, 0x05, 0xc3]), Some(1));
        assert_eq!(find_insn(&[0x0f]), None);
        assert_eq!(find_insn(&[]), None);
    }
}

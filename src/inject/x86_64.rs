//! x86_64: register layout, syscall ABI and the `syscall` instruction.

use nix::errno::Errno;
use nix::unistd::Pid;

use super::Restart;

/// Injection is implemented on this architecture.
pub(crate) const SUPPORTED: bool = true;

/// The bytes of the `syscall` instruction.
pub(crate) const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

/// The join stub: `[unshare(CLONE_FS)]; [fd = pidfd_open(pid, 0)];
/// setns(fd, kinds); [close(fd)]`, run in one resume, each step only if the
/// one before succeeded, each exit an `int3`, so the stop's address tells
/// how far it got. Every syscall gets all six argument registers set, the
/// unused ones zero, exactly as a single-stepped injection sets them, so a
/// seccomp filter sees the same arguments.
///
/// In: `r12` unshare flags (0: skip), `r13` the fd to join through (< 0:
/// open one), `rbx` the pid to open, `r14` the number the opened fd must
/// have (else stop before using it; < 0: any descriptor pidfd_open made,
/// stop only on its error), `rbp` the kinds, `r15` close after
/// (0: no). Out: `r12` unshare's result, `r13` the fd (or pidfd_open's
/// result), `rbp` setns's result, `r15` close's result.
pub(crate) const JOIN_STUB: [u8; 0x90] = [
    0x4d, 0x85, 0xe4, //                 00: test r12, r12
    0x74, 0x20, //                       03: jz 25
    0xb8, 0x10, 0x01, 0x00, 0x00, //     05: mov eax, 272 (unshare)
    0x4c, 0x89, 0xe7, //                 0a: mov rdi, r12
    0x31, 0xf6, //                       0d: xor esi, esi
    0x31, 0xd2, //                       0f: xor edx, edx
    0x45, 0x31, 0xd2, //                 11: xor r10d, r10d
    0x45, 0x31, 0xc0, //                 14: xor r8d, r8d
    0x45, 0x31, 0xc9, //                 17: xor r9d, r9d
    0x0f, 0x05, //                       1a: syscall
    0x49, 0x89, 0xc4, //                 1c: mov r12, rax
    0x48, 0x85, 0xc0, //                 1f: test rax, rax
    0x74, 0x01, //                       22: jz 25
    0xcc, //                             24: int3 (unshare failed)
    0x4d, 0x85, 0xed, //                 25: test r13, r13
    0x79, 0x2a, //                       28: jns 54
    0xb8, 0xb2, 0x01, 0x00, 0x00, //     2a: mov eax, 434 (pidfd_open)
    0x48, 0x89, 0xdf, //                 2f: mov rdi, rbx
    0x31, 0xf6, //                       32: xor esi, esi
    0x31, 0xd2, //                       34: xor edx, edx
    0x45, 0x31, 0xd2, //                 36: xor r10d, r10d
    0x45, 0x31, 0xc0, //                 39: xor r8d, r8d
    0x45, 0x31, 0xc9, //                 3c: xor r9d, r9d
    0x0f, 0x05, //                       3f: syscall
    0x49, 0x89, 0xc5, //                 41: mov r13, rax
    0x4d, 0x85, 0xf6, //                 44: test r14, r14
    0x78, 0x06, //                       47: js 4f (any new fd will do)
    0x4c, 0x39, 0xf0, //                 49: cmp rax, r14
    0x74, 0x06, //                       4c: je 54
    0xcc, //                             4e: int3 (not the fd expected)
    0x48, 0x85, 0xc0, //                 4f: test rax, rax
    0x78, 0xfa, //                       52: js 4e (pidfd_open failed)
    0xb8, 0x34, 0x01, 0x00, 0x00, //     54: mov eax, 308 (setns)
    0x4c, 0x89, 0xef, //                 59: mov rdi, r13
    0x48, 0x89, 0xee, //                 5c: mov rsi, rbp
    0x31, 0xd2, //                       5f: xor edx, edx
    0x45, 0x31, 0xd2, //                 61: xor r10d, r10d
    0x45, 0x31, 0xc0, //                 64: xor r8d, r8d
    0x45, 0x31, 0xc9, //                 67: xor r9d, r9d
    0x0f, 0x05, //                       6a: syscall
    0x48, 0x89, 0xc5, //                 6c: mov rbp, rax
    0x4d, 0x85, 0xff, //                 6f: test r15, r15
    0x75, 0x01, //                       72: jnz 75
    0xcc, //                             74: int3 (joined, fd kept)
    0xb8, 0x03, 0x00, 0x00, 0x00, //     75: mov eax, 3 (close)
    0x4c, 0x89, 0xef, //                 7a: mov rdi, r13
    0x31, 0xf6, //                       7d: xor esi, esi
    0x31, 0xd2, //                       7f: xor edx, edx
    0x45, 0x31, 0xd2, //                 81: xor r10d, r10d
    0x45, 0x31, 0xc0, //                 84: xor r8d, r8d
    0x45, 0x31, 0xc9, //                 87: xor r9d, r9d
    0x0f, 0x05, //                       8a: syscall
    0x49, 0x89, 0xc7, //                 8c: mov r15, rax
    0xcc, //                             8f: int3 (joined, fd closed)
];

/// Where each syscall of [`JOIN_STUB`] is seen to come from (the address
/// after its `syscall` instruction, which is what seccomp filters get as
/// `instruction_pointer`): unshare, pidfd_open, setns, close.
pub(crate) const JOIN_STUB_CALLS: [u64; 4] = [0x1c, 0x41, 0x6c, 0x8c];

/// The stops of [`JOIN_STUB`] (the address after each `int3`).
const STUB_UNSHARE_FAILED: u64 = 0x25;
const STUB_UNEXPECTED_FD: u64 = 0x4f;
const STUB_JOINED: u64 = 0x75;
const STUB_CLOSED: u64 = 0x90;
/// Every stop of [`JOIN_STUB`].
pub(crate) const JOIN_STUB_ENDS: [u64; 4] = [
    STUB_UNSHARE_FAILED,
    STUB_UNEXPECTED_FD,
    STUB_JOINED,
    STUB_CLOSED,
];

/// Code segment selector of 64-bit user code (`__USER_CS`); 32-bit (compat)
/// tasks run with 0x23 and use another syscall table.
const USER_CS_64: u64 = 0x33;

/// The general-purpose registers of a stopped thread.
#[derive(Clone, Copy)]
pub struct Registers {
    raw: libc::user_regs_struct,
}

impl std::fmt::Debug for Registers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registers")
            .field("rip", &format_args!("{:#x}", self.raw.rip))
            .field("rax", &(self.raw.rax as i64))
            .field("orig_rax", &(self.raw.orig_rax as i64))
            .field("cs", &format_args!("{:#x}", self.raw.cs))
            .finish_non_exhaustive()
    }
}

impl Registers {
    /// The instruction pointer.
    pub fn pc(&self) -> u64 {
        self.raw.rip
    }

    /// The number of the syscall the thread was stopped in, if it was in one
    /// (`orig_rax >= 0`).
    pub fn syscall_nr(&self) -> Option<i64> {
        let nr = self.raw.orig_rax as i64;
        (nr >= 0).then_some(nr)
    }

    /// The result register (`rax`) as a signed value.
    pub fn result(&self) -> i64 {
        self.raw.rax as i64
    }

    /// The restart the kernel has pending for the interrupted syscall, if any.
    pub fn restart(&self) -> Option<Restart> {
        self.syscall_nr()?;
        Restart::from_return(self.result())
    }

    /// Whether the thread runs 64-bit code (and so takes native syscalls).
    pub fn is_native(&self) -> bool {
        self.raw.cs == USER_CS_64
    }

    /// Whether these are the registers of the same stopped thread as
    /// `other`, read again: its stack pointer and thread pointer
    /// (`fs_base`), which nothing changes while it stops, and which no
    /// other thread shares.
    pub fn same_thread_as(&self, other: &Registers) -> bool {
        self.raw.rsp == other.raw.rsp && self.raw.fs_base == other.raw.fs_base
    }

    /// The raw register block.
    pub fn raw(&self) -> &libc::user_regs_struct {
        &self.raw
    }

    pub(crate) fn set_result(&mut self, value: i64) {
        self.raw.rax = value as u64;
    }

    /// Where a `syscall` instruction should sit if the thread entered the
    /// kernel through one: the two bytes before the instruction pointer.
    pub(crate) fn syscall_insn_before_pc(&self) -> Option<u64> {
        self.syscall_nr()?;
        self.raw.rip.checked_sub(SYSCALL_INSN.len() as u64)
    }

    /// Whether the thread is stopped just after a blocking call without a
    /// timeout failed with `EINTR` though no signal came: the calls the
    /// kernel never restarts after a stop (signal(7)), which can be issued
    /// again exactly as they were: `epoll_wait`, `epoll_pwait` and
    /// `epoll_pwait2` waiting for ever, `rt_sigtimedwait` without a timeout
    /// (`sigwaitinfo`), `semop`, `semtimedop` without a timeout.
    pub(crate) fn interrupted_untimed_wait(&self) -> bool {
        if self.result() != -(libc::EINTR as i64) {
            return false;
        }
        let r = &self.raw;
        match self.syscall_nr() {
            Some(libc::SYS_epoll_wait | libc::SYS_epoll_pwait) => (r.r10 as i32) < 0,
            Some(libc::SYS_epoll_pwait2) => r.r10 == 0,
            Some(libc::SYS_rt_sigtimedwait) => r.rdx == 0,
            Some(libc::SYS_semop) => true,
            Some(libc::SYS_semtimedop) => r.r10 == 0,
            _ => false,
        }
    }

    /// Makes the thread issue the syscall it was stopped after once more,
    /// with the same arguments, when it resumes: back to the `syscall`
    /// instruction, with the number in `rax` again (the kernel's own
    /// restart does the same).
    pub(crate) fn reissue(&mut self) {
        self.raw.rax = self.raw.orig_rax;
        self.raw.rip -= SYSCALL_INSN.len() as u64;
    }

    /// Sets up a syscall at `site`: number, six arguments, and
    /// `orig_rax = -1` so that no restart logic applies on the way out of
    /// the stop we resume from.
    pub(crate) fn prepare_syscall(&mut self, site: u64, nr: i64, args: [u64; 6]) {
        let r = &mut self.raw;
        r.rip = site;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
    }

    /// Sets up a run of [`JOIN_STUB`] written at `entry`, with
    /// `orig_rax = -1` as for [`Self::prepare_syscall`].
    pub(crate) fn prepare_join(&mut self, entry: u64, join: &super::Join) {
        let r = &mut self.raw;
        r.rip = entry;
        r.orig_rax = u64::MAX;
        r.r12 = join.unshare as u64;
        r.r13 = join.fd.map_or(u64::MAX, |fd| fd as u64);
        r.rbx = join.pid as u64;
        r.r14 = join.expect_fd.map_or(u64::MAX, |fd| fd as u64);
        r.rbp = join.kinds as u64;
        r.r15 = u64::from(join.close);
    }

    /// What a run of [`JOIN_STUB`] at `entry` did, read at its stop: `None`
    /// if the thread is not at one of the stub's stops.
    pub(crate) fn join_outcome(
        &self,
        entry: u64,
        join: &super::Join,
    ) -> Option<super::JoinOutcome> {
        let r = &self.raw;
        let at = self.raw.rip.checked_sub(entry)?;
        let unshare = (join.unshare != 0).then_some(r.r12 as i64);
        let opened = join.fd.is_none().then_some(r.r13 as i64);
        let mut out = super::JoinOutcome {
            unshare,
            opened: None,
            setns: None,
            close: None,
        };
        match at {
            STUB_UNSHARE_FAILED => {}
            STUB_UNEXPECTED_FD => out.opened = opened,
            STUB_JOINED | STUB_CLOSED => {
                out.opened = opened;
                out.setns = Some(r.rbp as i64);
                if at == STUB_CLOSED {
                    out.close = Some(r.r15 as i64);
                }
            }
            _ => return None,
        }
        Some(out)
    }
}

pub(crate) fn get(tid: Pid) -> Result<Registers, Errno> {
    crate::sys::ptrace::get_regs(tid).map(|raw| Registers { raw })
}

pub(crate) fn set(tid: Pid, regs: &Registers) -> Result<(), Errno> {
    crate::sys::ptrace::set_regs(tid, regs.raw)
}

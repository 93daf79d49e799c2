//! x86_64: register layout, syscall ABI and the `syscall` instruction.

use nix::errno::Errno;
use nix::unistd::Pid;

use super::Restart;

/// Injection is implemented on this architecture.
pub(crate) const SUPPORTED: bool = true;

/// The bytes of the `syscall` instruction.
pub(crate) const SYSCALL_INSN: [u8; 2] = [0x0f, 0x05];

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
}

pub(crate) fn get(tid: Pid) -> Result<Registers, Errno> {
    crate::sys::ptrace::get_regs(tid).map(|raw| Registers { raw })
}

pub(crate) fn set(tid: Pid, regs: &Registers) -> Result<(), Errno> {
    crate::sys::ptrace::set_regs(tid, regs.raw)
}

//! Architectures without an injection backend: no register value can exist,
//! and the entry points refuse with `TraceError::Unsupported`.

use nix::errno::Errno;
use nix::unistd::Pid;

use super::Restart;

/// Injection is not implemented on this architecture.
pub(crate) const SUPPORTED: bool = false;

/// Never matched: there is no way to run injected code here.
pub(crate) const SYSCALL_INSN: [u8; 2] = [0, 0];

/// No join stub here.
pub(crate) const JOIN_STUB: [u8; 0] = [];
/// No join stub here.
pub(crate) const JOIN_STUB_CALLS: [u64; 4] = [0; 4];
/// No join stub here.
pub(crate) const JOIN_STUB_ENDS: [u64; 0] = [];

/// Uninhabited on this architecture.
#[derive(Debug, Clone, Copy)]
pub struct Registers {
    never: std::convert::Infallible,
}

impl Registers {
    /// The instruction pointer.
    pub fn pc(&self) -> u64 {
        match self.never {}
    }

    /// The syscall the thread was stopped in, if any.
    pub fn syscall_nr(&self) -> Option<i64> {
        match self.never {}
    }

    /// The result register.
    pub fn result(&self) -> i64 {
        match self.never {}
    }

    /// The restart the kernel has pending, if any.
    pub fn restart(&self) -> Option<Restart> {
        match self.never {}
    }

    /// Whether the thread takes native syscalls.
    pub fn is_native(&self) -> bool {
        match self.never {}
    }

    /// Whether these are the registers of the same stopped thread.
    pub fn same_thread_as(&self, _other: &Registers) -> bool {
        match self.never {}
    }

    pub(crate) fn set_result(&mut self, _value: i64) {
        match self.never {}
    }

    pub(crate) fn syscall_insn_before_pc(&self) -> Option<u64> {
        match self.never {}
    }

    pub(crate) fn interrupted_untimed_wait(&self) -> bool {
        false
    }

    pub(crate) fn reissue(&mut self) {}

    pub(crate) fn prepare_syscall(&mut self, _site: u64, _nr: i64, _args: [u64; 6]) {
        match self.never {}
    }

    pub(crate) fn prepare_join(&mut self, _entry: u64, _join: &super::Join) {
        match self.never {}
    }

    pub(crate) fn join_outcome(
        &self,
        _entry: u64,
        _join: &super::Join,
    ) -> Option<super::JoinOutcome> {
        match self.never {}
    }
}

pub(crate) fn get(_tid: Pid) -> Result<Registers, Errno> {
    Err(Errno::EOPNOTSUPP)
}

pub(crate) fn set(_tid: Pid, regs: &Registers) -> Result<(), Errno> {
    match regs.never {}
}

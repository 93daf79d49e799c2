//! What a thread's seccomp filters would do to a syscall we are about to
//! inject.
//!
//! Injected syscalls run under the target's own filters. One that returns an
//! errno is harmless (the move fails with that errno), but one that kills
//! would kill the process we only meant to move. So before injecting, the
//! filters of each stopped thread are read with `PTRACE_SECCOMP_GET_FILTER`
//! and run, here, on the exact `seccomp_data` of each injected call: a
//! classic BPF program is small, and its result is the kernel's.

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::procfs::Status;

/// Where seccomp's verdict on one syscall lands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The syscall runs (allow, log).
    Runs,
    /// The syscall fails with this errno.
    Fails(i32),
    /// A SIGSYS is raised instead (the injection code discards it).
    Traps,
    /// The thread or the whole process is killed.
    Kills,
    /// Another process decides: a supervisor listening for user
    /// notifications (`SECCOMP_RET_USER_NOTIF`) or a tracer
    /// (`SECCOMP_RET_TRACE`). It may fail the call, run it, or fake any
    /// result, or never answer at all.
    Delegated,
}

/// The seccomp mode of a thread, as far as a move cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// No seccomp.
    Off,
    /// `SECCOMP_MODE_STRICT`: any call but read, write, exit and
    /// sigreturn kills the thread.
    Strict,
    /// `SECCOMP_MODE_FILTER` with these programs, newest first.
    Filters(Vec<Vec<Insn>>),
    /// `SECCOMP_MODE_FILTER` with filters this kernel does not show
    /// (`PTRACE_SECCOMP_GET_FILTER` needs `CONFIG_CHECKPOINT_RESTORE`):
    /// what they do with an injected call cannot be known.
    Hidden,
}

/// The input a filter sees: `struct seccomp_data`.
#[derive(Debug, Clone, Copy)]
pub struct SyscallData {
    /// Syscall number.
    pub nr: i32,
    /// `AUDIT_ARCH_*` of the calling convention.
    pub arch: u32,
    /// Address of the `syscall` instruction.
    pub ip: u64,
    /// The six arguments.
    pub args: [u64; 6],
}

impl SyscallData {
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..4].copy_from_slice(&self.nr.to_ne_bytes());
        b[4..8].copy_from_slice(&self.arch.to_ne_bytes());
        b[8..16].copy_from_slice(&self.ip.to_ne_bytes());
        for (i, a) in self.args.iter().enumerate() {
            b[16 + 8 * i..24 + 8 * i].copy_from_slice(&a.to_ne_bytes());
        }
        b
    }
}

/// One classic BPF instruction (`struct sock_filter`).
pub type Insn = libc::sock_filter;

/// Runs one filter program on `data` and returns its 32-bit return value,
/// or `None` if the program is malformed (the kernel would have refused to
/// load it, so this does not happen for filters read from a thread).
pub fn run(prog: &[Insn], data: &SyscallData) -> Option<u32> {
    let input = data.bytes();
    let (mut a, mut x) = (0u32, 0u32);
    let mut mem = [0u32; 16];
    let mut pc = 0usize;
    let load = |k: u32| -> Option<u32> {
        let k = k as usize;
        let word = input.get(k..k + 4)?;
        Some(u32::from_ne_bytes([word[0], word[1], word[2], word[3]]))
    };
    for _ in 0..=prog.len() {
        let insn = prog.get(pc)?;
        pc += 1;
        let k = insn.k;
        let src = if insn.code & libc::BPF_X as u16 != 0 {
            x
        } else {
            k
        };
        match insn.code as u32 & 0x07 {
            libc::BPF_LD => {
                a = match insn.code as u32 & 0xe0 {
                    libc::BPF_ABS => load(k)?,
                    libc::BPF_IMM => k,
                    libc::BPF_MEM => *mem.get(k as usize)?,
                    libc::BPF_LEN => input.len() as u32,
                    _ => return None,
                }
            }
            libc::BPF_LDX => {
                x = match insn.code as u32 & 0xe0 {
                    libc::BPF_IMM => k,
                    libc::BPF_MEM => *mem.get(k as usize)?,
                    libc::BPF_LEN => input.len() as u32,
                    _ => return None,
                }
            }
            libc::BPF_ST => *mem.get_mut(k as usize)? = a,
            libc::BPF_STX => *mem.get_mut(k as usize)? = x,
            libc::BPF_ALU => {
                a = match insn.code as u32 & 0xf0 {
                    libc::BPF_ADD => a.wrapping_add(src),
                    libc::BPF_SUB => a.wrapping_sub(src),
                    libc::BPF_MUL => a.wrapping_mul(src),
                    libc::BPF_DIV => a.checked_div(src)?,
                    libc::BPF_MOD => a.checked_rem(src)?,
                    libc::BPF_AND => a & src,
                    libc::BPF_OR => a | src,
                    libc::BPF_XOR => a ^ src,
                    libc::BPF_LSH => a.checked_shl(src).unwrap_or(0),
                    libc::BPF_RSH => a.checked_shr(src).unwrap_or(0),
                    libc::BPF_NEG => a.wrapping_neg(),
                    _ => return None,
                }
            }
            libc::BPF_JMP => {
                let op = insn.code as u32 & 0xf0;
                if op == libc::BPF_JA {
                    pc = pc.checked_add(k as usize)?;
                    continue;
                }
                let taken = match op {
                    libc::BPF_JEQ => a == src,
                    libc::BPF_JGT => a > src,
                    libc::BPF_JGE => a >= src,
                    libc::BPF_JSET => a & src != 0,
                    _ => return None,
                };
                pc += if taken { insn.jt } else { insn.jf } as usize;
            }
            libc::BPF_RET => {
                return Some(match insn.code as u32 & 0x18 {
                    libc::BPF_K => k,
                    libc::BPF_A => a,
                    _ => return None,
                });
            }
            libc::BPF_MISC => match insn.code as u32 & 0xf8 {
                libc::BPF_TAX => x = a,
                libc::BPF_TXA => a = x,
                _ => return None,
            },
            _ => return None,
        }
    }
    None
}

/// What the return values of a thread's filters (all of them run, the
/// kernel takes the most restrictive) mean for the syscall.
pub fn verdict(returns: &[u32]) -> Verdict {
    // Precedence, most restrictive first, as the kernel orders actions.
    let action = |r: u32| r & libc::SECCOMP_RET_ACTION_FULL;
    let rank = |r: u32| match action(r) {
        libc::SECCOMP_RET_KILL_PROCESS => 0,
        libc::SECCOMP_RET_KILL_THREAD => 1,
        libc::SECCOMP_RET_TRAP => 2,
        libc::SECCOMP_RET_ERRNO => 3,
        libc::SECCOMP_RET_USER_NOTIF => 4,
        libc::SECCOMP_RET_TRACE => 5,
        libc::SECCOMP_RET_LOG => 6,
        libc::SECCOMP_RET_ALLOW => 7,
        _ => 0, // unknown actions kill, as the kernel treats them
    };
    match returns.iter().copied().min_by_key(|&r| rank(r)) {
        None => Verdict::Runs,
        Some(r) => match rank(r) {
            0 | 1 => Verdict::Kills,
            2 => Verdict::Traps,
            3 => Verdict::Fails((r & libc::SECCOMP_RET_DATA) as i32),
            4 | 5 => Verdict::Delegated,
            _ => Verdict::Runs,
        },
    }
}

/// The seccomp mode of stopped tracee `tid`, with its filters.
///
/// `PTRACE_SECCOMP_GET_FILTER` fails with `EINVAL` both without seccomp and
/// in strict mode; only then is `/proc/TID/status` read to tell the two
/// apart.
///
/// `known` is the mode the kernel reported for the thread while every
/// thread of its process was stopped (0 none, 1 strict, 2 filters, as
/// `Seccomp:` in its status), if it was read: then neither a failed
/// filter request nor the status file is needed to tell the modes apart.
/// The mode cannot change while all of them stay stopped: only the
/// thread itself enters strict mode, and only a running thread of the
/// same process can give it filters (`SECCOMP_FILTER_FLAG_TSYNC`).
pub fn mode(tid: Pid, known: Option<u32>) -> Result<Mode, Errno> {
    match known {
        Some(0) => return Ok(Mode::Off),
        Some(1) => return Ok(Mode::Strict),
        _ => {}
    }
    let programs = filters(tid)?;
    if !programs.is_empty() {
        return Ok(Mode::Filters(programs));
    }
    let mode = match known {
        Some(mode) => Some(mode),
        None => status_mode(
            &Status::read(tid.as_raw())
                .map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?,
        ),
    };
    Ok(without_filters(mode))
}

/// The mode of a thread for which no filter could be read, given the mode
/// the kernel reports for it (`None`: a kernel without the field, which
/// has no seccomp): only a report of none is taken for none.
fn without_filters(reported: Option<u32>) -> Mode {
    match reported {
        None | Some(0) => Mode::Off,
        Some(1) => Mode::Strict,
        Some(_) => Mode::Hidden,
    }
}

/// The `Seccomp:` field of a `/proc/PID/status` file.
fn status_mode<S: AsRef<str>>(status: &Status<S>) -> Option<u32> {
    status.number("Seccomp")
}

/// The filters of stopped tracee `tid`, newest first, as the kernel runs
/// them. Empty if it has none (no seccomp, or strict mode: see [`mode`]).
pub fn filters(tid: Pid) -> Result<Vec<Vec<Insn>>, Errno> {
    let mut out = Vec::new();
    for index in 0usize.. {
        match crate::sys::ptrace::seccomp_filter(tid, index) {
            Ok(prog) => out.push(prog),
            Err(Errno::ENOENT) => return Ok(out),
            // No filter at all (or seccomp off in the kernel).
            Err(Errno::EINVAL) if index == 0 => return Ok(out),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The verdict of all `filters` on `data`.
pub fn check(filters: &[Vec<Insn>], data: &SyscallData) -> Verdict {
    let returns: Vec<u32> = filters
        .iter()
        .map(|f| run(f, data).unwrap_or(libc::SECCOMP_RET_KILL_PROCESS))
        .collect();
    verdict(&returns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_cannot_be_read_are_not_taken_for_none() {
        assert_eq!(without_filters(None), Mode::Off);
        assert_eq!(without_filters(Some(0)), Mode::Off);
        assert_eq!(without_filters(Some(1)), Mode::Strict);
        assert_eq!(without_filters(Some(2)), Mode::Hidden);
        assert_eq!(without_filters(Some(7)), Mode::Hidden);
    }

    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

    fn stmt(code: u16, k: u32) -> Insn {
        Insn {
            code,
            jt: 0,
            jf: 0,
            k,
        }
    }

    fn deny(nr: i32, action: u32) -> Vec<Insn> {
        vec![
            stmt(LD_W_ABS, 0),
            Insn {
                code: JEQ_K,
                jt: 0,
                jf: 1,
                k: nr as u32,
            },
            stmt(RET_K, action),
            stmt(RET_K, libc::SECCOMP_RET_ALLOW),
        ]
    }

    fn call(nr: i64) -> SyscallData {
        SyscallData {
            nr: nr as i32,
            arch: 0xc000_003e,
            ip: 0x1000,
            args: [3, 0, 0, 0, 0, 0],
        }
    }

    #[test]
    fn filters_decide_per_syscall() {
        let kill = deny(libc::SYS_setns as i32, libc::SECCOMP_RET_KILL_PROCESS);
        assert_eq!(
            check(std::slice::from_ref(&kill), &call(libc::SYS_setns)),
            Verdict::Kills
        );
        assert_eq!(
            check(std::slice::from_ref(&kill), &call(libc::SYS_close)),
            Verdict::Runs
        );
        let errno = deny(
            libc::SYS_setns as i32,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        );
        assert_eq!(
            check(std::slice::from_ref(&errno), &call(libc::SYS_setns)),
            Verdict::Fails(libc::EPERM)
        );
        // The most restrictive of several filters wins.
        assert_eq!(
            check(&[errno, kill], &call(libc::SYS_setns)),
            Verdict::Kills
        );
        let trap = deny(libc::SYS_setns as i32, libc::SECCOMP_RET_TRAP);
        assert_eq!(check(&[trap], &call(libc::SYS_setns)), Verdict::Traps);
        // A supervisor or a tracer could fake any result.
        let notif = deny(libc::SYS_setns as i32, libc::SECCOMP_RET_USER_NOTIF);
        assert_eq!(
            check(std::slice::from_ref(&notif), &call(libc::SYS_setns)),
            Verdict::Delegated
        );
        let trace = deny(libc::SYS_close as i32, libc::SECCOMP_RET_TRACE | 7);
        assert_eq!(check(&[trace], &call(libc::SYS_close)), Verdict::Delegated);
        // An errno filter ranks before a supervisor: the call never gets there.
        let errno_setns = deny(
            libc::SYS_setns as i32,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        );
        assert_eq!(
            check(&[notif, errno_setns], &call(libc::SYS_setns)),
            Verdict::Fails(libc::EPERM)
        );
        assert_eq!(check(&[], &call(libc::SYS_setns)), Verdict::Runs);
    }

    #[test]
    fn arithmetic_memory_and_args() {
        // A = args[0] (low word); M[0] = A; A = A + 4; X = A; A = M[0];
        // return A == 3 ? ERRNO(X) : ALLOW
        let prog = vec![
            stmt(LD_W_ABS, 16),
            stmt(libc::BPF_ST as u16, 0),
            stmt((libc::BPF_ALU | libc::BPF_ADD | libc::BPF_K) as u16, 4),
            stmt((libc::BPF_MISC | libc::BPF_TAX) as u16, 0),
            stmt((libc::BPF_LD | libc::BPF_MEM) as u16, 0),
            Insn {
                code: JEQ_K,
                jt: 0,
                jf: 2,
                k: 3,
            },
            stmt((libc::BPF_MISC | libc::BPF_TXA) as u16, 0),
            stmt(
                (libc::BPF_ALU | libc::BPF_OR | libc::BPF_K) as u16,
                libc::SECCOMP_RET_ERRNO,
            ),
            stmt((libc::BPF_RET | libc::BPF_A) as u16, 0),
        ];
        assert_eq!(run(&prog, &call(1)), Some(libc::SECCOMP_RET_ERRNO | 7));
    }

    #[test]
    fn strict_mode_is_read_from_status() {
        assert_eq!(
            status_mode(&Status::new(
                "Name:\tdd\nSeccomp:\t1\nSeccomp_filters:\t0\n"
            )),
            Some(1)
        );
        assert_eq!(status_mode(&Status::new("Seccomp:\t0\n")), Some(0));
        assert_eq!(status_mode(&Status::new("Name:\tx\n")), None);
    }

    #[test]
    fn malformed_programs_count_as_killing() {
        let runaway = vec![stmt(LD_W_ABS, 1000)];
        assert_eq!(run(&runaway, &call(1)), None);
        assert_eq!(check(&[runaway], &call(1)), Verdict::Kills);
        let no_return = vec![stmt(LD_W_ABS, 0)];
        assert_eq!(run(&no_return, &call(1)), None);
    }
}

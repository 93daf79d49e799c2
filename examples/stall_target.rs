//! Targets that a move cannot stop, or whose injected calls another process
//! would answer. Each prints `READY` once it is in its state, then follows
//! the lines it reads on standard input (x86_64 system call numbers).
//!
//! ```text
//! stall_target vfork-parent   a vfork parent: its child prints READY and
//!                             waits for stdin to close; the parent, asleep
//!                             until the child exits, then prints RESUMED
//! stall_target strict         strict seccomp mode, blocked in read(stdin);
//!                             each line read is echoed back as `ALIVE line`,
//!                             EOF exits
//! stall_target notif-fake     a seccomp filter hands pidfd_open and setns to
//!                             a supervisor thread that fakes success
//!                             (pidfd_open "returns" 0, stdin); each stdin
//!                             line is answered `PONG N`, N the notifications
//!                             the supervisor has seen
//! stall_target trace-setns    a filter answering setns with SECCOMP_RET_TRACE;
//!                             stdin lines are answered `PONG 0`
//! stall_target trace-setns-sh SCRIPT
//!                             the same filter, then exec `sh -c SCRIPT` (no
//!                             READY: the script speaks for itself)
//! stall_target notif-stuck    the main thread calls getppid(), which a filter
//!                             hands to a supervisor thread (killable wait);
//!                             the supervisor prints READY once it holds the
//!                             notification, and answers it with 42 when a
//!                             stdin line arrives; the main thread then
//!                             prints `RESULT value`
//! stall_target notif-stuck-self TASKS
//!                             as notif-stuck, but before READY the supervisor
//!                             writes the process's own pid to TASKS and
//!                             prints `WRITE ok` or `WRITE errno`
//! ```

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};

const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const SECCOMP_FILTER_FLAG_NEW_LISTENER: libc::c_ulong = 1 << 3;
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;
/// `SECCOMP_IOCTL_NOTIF_RECV`: `_IOWR('!', 0, struct seccomp_notif)`.
const NOTIF_RECV: libc::c_ulong = 0xc050_2100;
/// `SECCOMP_IOCTL_NOTIF_SEND`: `_IOWR('!', 1, struct seccomp_notif_resp)`.
const NOTIF_SEND: libc::c_ulong = 0xc018_2101;

/// `struct seccomp_notif`.
#[repr(C)]
#[derive(Default)]
struct Notif {
    id: u64,
    pid: u32,
    flags: u32,
    nr: i32,
    arch: u32,
    ip: u64,
    args: [u64; 6],
}

/// `struct seccomp_notif_resp`.
#[repr(C)]
#[derive(Default)]
struct NotifResp {
    id: u64,
    val: i64,
    error: i32,
    flags: u32,
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    let result = match mode.as_str() {
        "vfork-parent" => vfork_parent(),
        "strict" => strict(),
        "notif-fake" => notif_fake(),
        "trace-setns" => trace_setns(),
        "trace-setns-sh" => trace_setns_sh(std::env::args().nth(2).unwrap_or_default()),
        "notif-stuck" => notif_stuck(None),
        "notif-stuck-self" => notif_stuck(std::env::args().nth(2)),
        _ => Err(format!("usage: stall_target MODE (got {mode:?})")),
    };
    if let Err(e) = result {
        say(&format!("FAIL: {e}"));
        std::process::exit(1);
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// A filter that answers the calls `nrs` with `action` and allows the rest.
fn filter(nrs: &[i64], action: u32) -> Vec<libc::sock_filter> {
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let mut prog = vec![
        stmt(LD_W_ABS, 4),
        libc::sock_filter {
            code: JEQ_K,
            jt: 0,
            jf: nrs.len() as u8 + 1,
            k: AUDIT_ARCH_X86_64,
        },
        stmt(LD_W_ABS, 0),
    ];
    for (i, &nr) in nrs.iter().enumerate() {
        prog.push(libc::sock_filter {
            code: JEQ_K,
            jt: (nrs.len() - i) as u8,
            jf: 0,
            k: nr as u32,
        });
    }
    prog.push(stmt(RET_K, libc::SECCOMP_RET_ALLOW));
    prog.push(stmt(RET_K, action));
    prog
}

/// Installs `prog` for the calling thread; returns the listener if `flags`
/// asks for one.
fn install(prog: &[libc::sock_filter], flags: libc::c_ulong) -> Result<i32, String> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr().cast_mut(),
    };
    // SAFETY: prctl and seccomp take integers and a filter program that
    // outlives the call, which copies it into the kernel.
    let r = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            flags,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        return Err(format!("install seccomp filter: {}", errno()));
    }
    Ok(r as i32)
}

fn recv(listener: i32) -> Result<Notif, String> {
    let mut n = Notif::default();
    // SAFETY: the ioctl writes one struct seccomp_notif into `n`.
    let r = unsafe { libc::ioctl(listener, NOTIF_RECV, &mut n as *mut Notif) };
    if r < 0 {
        return Err(format!("NOTIF_RECV: {}", errno()));
    }
    Ok(n)
}

fn answer(listener: i32, id: u64, val: i64) -> Result<(), String> {
    let mut resp = NotifResp {
        id,
        val,
        ..NotifResp::default()
    };
    // SAFETY: the ioctl reads one struct seccomp_notif_resp from `resp`.
    let r = unsafe { libc::ioctl(listener, NOTIF_SEND, &mut resp as *mut NotifResp) };
    if r < 0 {
        return Err(format!("NOTIF_SEND: {}", errno()));
    }
    Ok(())
}

/// Answers `PONG N` to every stdin line until EOF.
fn pong(seen: &AtomicUsize) -> Result<(), String> {
    say("READY");
    for line in std::io::stdin().lock().lines() {
        line.map_err(|e| format!("read stdin: {e}"))?;
        say(&format!("PONG {}", seen.load(Ordering::SeqCst)));
    }
    Ok(())
}

fn vfork_parent() -> Result<(), String> {
    // Without CLONE_VM the child has its own copy of memory and may run
    // anything; with CLONE_VFORK the parent still sleeps until it exits.
    // SAFETY: a raw clone of a single-threaded process, like fork(); the
    // child only reads stdin, writes stdout and exits.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::CLONE_VFORK | libc::SIGCHLD,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid < 0 {
        return Err(format!("clone: {}", errno()));
    }
    if pid == 0 {
        say("READY");
        let mut buf = [0u8; 64];
        // SAFETY: reads into a live local buffer.
        while unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
        // SAFETY: ends the child at once, as a vfork child must.
        unsafe { libc::_exit(0) };
    }
    say("RESUMED");
    let mut status = 0;
    // SAFETY: waits for our own child, writing one int.
    unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    Ok(())
}

fn strict() -> Result<(), String> {
    say("READY");
    // SAFETY: prctl with integer arguments. From here on only read, write,
    // exit and sigreturn are allowed: raw calls only.
    let r = unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_STRICT, 0, 0, 0) };
    if r != 0 {
        return Err(format!("strict mode: {}", errno()));
    }
    let mut buf = [0u8; 256];
    loop {
        // SAFETY: read into a live local buffer.
        let n = unsafe { libc::syscall(libc::SYS_read, 0, buf.as_mut_ptr(), buf.len()) };
        if n <= 0 {
            break;
        }
        let mut out = *b"ALIVE ";
        // SAFETY: writes from live buffers.
        unsafe {
            libc::syscall(libc::SYS_write, 1, out.as_mut_ptr(), out.len());
            libc::syscall(libc::SYS_write, 1, buf.as_ptr(), n as usize);
        }
    }
    // SAFETY: exit (not exit_group) is allowed in strict mode.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    Ok(())
}

fn notif_fake() -> Result<(), String> {
    let seen = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel::<i32>();
    let counter = Arc::clone(&seen);
    std::thread::spawn(move || {
        let Ok(listener) = rx.recv() else { return };
        while let Ok(n) = recv(listener) {
            counter.fetch_add(1, Ordering::SeqCst);
            // A lying supervisor: pidfd_open "returns" 0 (stdin), setns 0.
            let _ = answer(listener, n.id, 0);
        }
    });
    let prog = filter(
        &[libc::SYS_pidfd_open, libc::SYS_setns],
        libc::SECCOMP_RET_USER_NOTIF,
    );
    // Installed by this thread after the supervisor started: only the
    // threads it starts later share the filter.
    let listener = install(&prog, SECCOMP_FILTER_FLAG_NEW_LISTENER)?;
    tx.send(listener).map_err(|e| e.to_string())?;
    pong(&seen)
}

fn trace_setns() -> Result<(), String> {
    let prog = filter(&[libc::SYS_setns], libc::SECCOMP_RET_TRACE);
    install(&prog, 0)?;
    pong(&AtomicUsize::new(0))
}

fn trace_setns_sh(script: String) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let prog = filter(&[libc::SYS_setns], libc::SECCOMP_RET_TRACE);
    install(&prog, 0)?;
    // The filter stays across exec (no_new_privs is set).
    let e = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .exec();
    Err(format!("exec sh: {e}"))
}

fn notif_stuck(tasks: Option<String>) -> Result<(), String> {
    let (tx, rx) = mpsc::channel::<i32>();
    std::thread::spawn(move || {
        let run = || -> Result<(), String> {
            let listener = rx.recv().map_err(|e| e.to_string())?;
            let n = recv(listener)?;
            if let Some(tasks) = tasks {
                // `echo $$ > tasks` from the one thread that can stop.
                let written = std::fs::write(&tasks, std::process::id().to_string());
                say(&match written {
                    Ok(()) => "WRITE ok".to_owned(),
                    Err(e) => format!("WRITE {}", e.raw_os_error().unwrap_or(0)),
                });
            }
            say("READY");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            answer(listener, n.id, 42)
        };
        if let Err(e) = run() {
            say(&format!("FAIL: supervisor: {e}"));
        }
    });
    let prog = filter(&[libc::SYS_getppid], libc::SECCOMP_RET_USER_NOTIF);
    let listener = install(
        &prog,
        SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
    )?;
    tx.send(listener).map_err(|e| e.to_string())?;
    // SAFETY: getppid takes no arguments.
    let value = unsafe { libc::syscall(libc::SYS_getppid) };
    say(&format!("RESULT {value}"));
    Ok(())
}

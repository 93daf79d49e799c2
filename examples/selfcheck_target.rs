//! A target process that checks itself across a move.
//!
//! Each mode sits in one kind of state a moved process may be caught in, and
//! verifies afterwards that the move did not disturb it. It prints `READY`
//! once in that state is imminent, then ends with one verdict line,
//! `SELFCHECK OK` (exit 0) or `SELFCHECK FAIL: reason` (exit 1).
//!
//! ```text
//! selfcheck_target read-pipe EXPECTED   read stdin to EOF; must be exactly EXPECTED
//! selfcheck_target nanosleep SECS       one nanosleep(SECS): no EINTR, not shorter
//! selfcheck_target wait4 SECS           wait4 for a child that exits 7 after SECS
//! selfcheck_target spin SECS            busy loop checking register-held counters
//! selfcheck_target threads N            N threads; stdin `report` prints each
//!                                       thread's uts namespace, `quit` ends
//! selfcheck_target threads-mixed N      as threads, the last thread has dropped
//!                                       to uid 65534 (its own credentials only)
//! selfcheck_target threads-own-files N  as threads, the last thread has its own
//!                                       descriptor table (unshare CLONE_FILES)
//! selfcheck_target report-read          print what one read(stdin) returned
//! selfcheck_target churn N              N threads that keep creating short-lived
//!                                       threads until stdin closes
//! selfcheck_target seccomp-deny-setns    install a seccomp filter that fails
//!                                       setns() with EPERM, then read-pipe `ok`
//! selfcheck_target seccomp-kill-setns    the same with a filter that kills
//! ```

use std::io::{BufRead, Write};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let arg = args.get(1).map(String::as_str);
    let verdict = match (mode, arg) {
        ("read-pipe", Some(expected)) => read_pipe(expected),
        ("nanosleep", Some(secs)) => parse(secs).and_then(nanosleep),
        ("wait4", Some(secs)) => parse(secs).and_then(wait_child),
        ("spin", Some(secs)) => parse(secs).and_then(spin),
        ("threads", Some(n)) => parse(n).and_then(|n| threads(n, Last::Alike)),
        ("threads-mixed", Some(n)) => parse(n).and_then(|n| threads(n, Last::Unprivileged)),
        ("threads-own-files", Some(n)) => parse(n).and_then(|n| threads(n, Last::OwnFiles)),
        ("report-read", None) => report_read(),
        ("churn", Some(n)) => parse(n).and_then(churn),
        ("seccomp-deny-setns", None) => filter_setns(libc::SECCOMP_RET_ERRNO | libc::EPERM as u32)
            .and_then(|()| read_pipe("ok")),
        ("seccomp-kill-setns", None) => {
            filter_setns(libc::SECCOMP_RET_KILL_PROCESS).and_then(|()| read_pipe("ok"))
        }
        _ => Err(format!("usage: selfcheck_target MODE ARG (got {args:?})")),
    };
    match verdict {
        Ok(()) => {
            say("SELFCHECK OK");
            std::process::exit(0);
        }
        Err(reason) => {
            say(&format!("SELFCHECK FAIL: {reason}"));
            std::process::exit(1);
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    // Nothing sensible to do if stdout is gone.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn parse(s: &str) -> Result<u64, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// One raw read(2) on stdin; no retry on EINTR, so a broken restart shows.
fn raw_read(buf: &mut [u8]) -> isize {
    // SAFETY: the pointer and length describe `buf`, live and writable.
    unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) }
}

fn read_pipe(expected: &str) -> Result<(), String> {
    say("READY");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match raw_read(&mut buf) {
            0 => break,
            n if n > 0 => got.extend_from_slice(&buf[..n as usize]),
            _ => return Err(format!("read: {}", errno())),
        }
    }
    if got == expected.as_bytes() {
        Ok(())
    } else {
        Err(format!(
            "read {:?}, expected {expected:?}",
            String::from_utf8_lossy(&got)
        ))
    }
}

/// Keeps creating threads, so that a move always races thread creation.
fn churn(n: u64) -> Result<(), String> {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ =
                        std::thread::spawn(|| std::thread::sleep(Duration::from_millis(1))).join();
                }
            })
        })
        .collect();
    say("READY");
    let mut buf = [0u8; 64];
    while raw_read(&mut buf) > 0 {}
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().map_err(|_| "a worker panicked".to_string())?;
    }
    Ok(())
}

/// Installs a seccomp filter that answers setns() with `action` and allows
/// every other call (x86_64 numbering; elsewhere it allows all).
fn filter_setns(action: u32) -> Result<(), String> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let stmt = |code, k| libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jump = |k, jt, jf| libc::sock_filter {
        code: JEQ_K,
        jt,
        jf,
        k,
    };
    let filter = [
        stmt(LD_W_ABS, 4), // seccomp_data.arch
        jump(AUDIT_ARCH_X86_64, 0, 3),
        stmt(LD_W_ABS, 0), // seccomp_data.nr
        jump(libc::SYS_setns as u32, 0, 1),
        stmt(RET_K, action),
        stmt(RET_K, libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: prctl with integer arguments; the filter program outlives the
    // call, which copies it into the kernel.
    let r = unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog)
    };
    if r != 0 {
        return Err(format!("install seccomp filter: {}", errno()));
    }
    Ok(())
}

fn report_read() -> Result<(), String> {
    say("READY");
    let mut buf = [0u8; 64];
    let n = raw_read(&mut buf);
    if n < 0 {
        say(&format!("READ -{}", errno().raw_os_error().unwrap_or(0)));
    } else {
        say(&format!("READ {n}"));
    }
    Ok(())
}

fn nanosleep(secs: u64) -> Result<(), String> {
    let req = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: 0,
    };
    let mut rem = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    say("READY");
    let start = Instant::now();
    // SAFETY: both pointers refer to live timespec values.
    let ret = unsafe { libc::nanosleep(&req, &mut rem) };
    let slept = start.elapsed();
    if ret != 0 {
        return Err(format!(
            "nanosleep: {} (remaining {}s)",
            errno(),
            rem.tv_sec
        ));
    }
    // Instant is CLOCK_MONOTONIC, the clock nanosleep measures with.
    if slept < Duration::from_secs(secs) {
        return Err(format!("woke after {slept:?}, asked for {secs}s"));
    }
    Ok(())
}

fn wait_child(secs: u64) -> Result<(), String> {
    // SAFETY: the child only calls async-signal-safe functions (nanosleep,
    // _exit) before it ends.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", errno()));
    }
    if child == 0 {
        let req = libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: valid timespec pointers; _exit never returns.
        unsafe {
            let mut rem = req;
            while libc::nanosleep(&rem, &mut rem) != 0 {}
            libc::_exit(7);
        }
    }
    say("READY");
    let mut status = 0;
    // SAFETY: `status` is a live int; a null rusage pointer is allowed.
    let ret = unsafe { libc::wait4(child, &mut status, 0, std::ptr::null_mut()) };
    if ret != child {
        return Err(format!("wait4 returned {ret}: {}", errno()));
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 7 {
        return Err(format!("child status {status:#x}, expected exit 7"));
    }
    Ok(())
}

/// Runs `iterations` rounds of a loop that keeps four counters in rcx, r11
/// (both clobbered by the `syscall` instruction), rax and r10, and checks
/// after every step that they agree. False if they ever differ.
#[cfg(target_arch = "x86_64")]
fn spin_chunk(iterations: u64) -> bool {
    let ok: u64;
    // SAFETY: the block touches only the registers it declares, no memory and
    // no stack.
    unsafe {
        std::arch::asm!(
            "xor ecx, ecx",
            "xor r11d, r11d",
            "xor eax, eax",
            "xor r10d, r10d",
            "2:",
            "inc rcx",
            "inc r11",
            "inc rax",
            "inc r10",
            "cmp rcx, r11",
            "jne 3f",
            "cmp rax, r10",
            "jne 3f",
            "cmp rcx, rax",
            "jne 3f",
            "dec {n}",
            "jnz 2b",
            "mov {ok}, 1",
            "jmp 4f",
            "3:",
            "mov {ok}, 0",
            "4:",
            n = inout(reg) iterations => _,
            ok = out(reg) ok,
            out("rcx") _,
            out("r11") _,
            out("rax") _,
            out("r10") _,
            options(nomem, nostack),
        );
    }
    ok == 1
}

#[cfg(not(target_arch = "x86_64"))]
fn spin_chunk(iterations: u64) -> bool {
    let (mut a, mut b) = (0u64, 0u64);
    for _ in 0..iterations {
        a = std::hint::black_box(a + 1);
        b = std::hint::black_box(b + 1);
    }
    a == b
}

fn spin(secs: u64) -> Result<(), String> {
    say("READY");
    let start = Instant::now();
    let mut chunks = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        if !spin_chunk(1 << 22) {
            return Err(format!("register counters diverged in chunk {chunks}"));
        }
        chunks += 1;
    }
    Ok(())
}

fn uts_link() -> String {
    std::fs::read_link("/proc/thread-self/ns/uts")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("error:{e}"))
}

fn gettid() -> i64 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

/// How the last thread of `threads` differs from the others.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    Alike,
    /// It dropped to uid 65534.
    Unprivileged,
    /// It has a descriptor table of its own.
    OwnFiles,
}

fn threads(n: u64, last: Last) -> Result<(), String> {
    // (generation, stop): each worker answers once per generation.
    let shared = Arc::new((Mutex::new((0u64, false)), Condvar::new()));
    let (tx, rx) = mpsc::channel::<(i64, String)>();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    for i in 0..n {
        let shared = Arc::clone(&shared);
        let tx = tx.clone();
        let ready_tx = ready_tx.clone();
        let differs = if i + 1 == n { last } else { Last::Alike };
        handles.push(std::thread::spawn(move || {
            if differs == Last::OwnFiles {
                // SAFETY: unshare takes an integer and changes this thread only.
                if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
                    let _ = ready_tx.send(Err(format!("unshare(CLONE_FILES): {}", errno())));
                    return;
                }
            }
            if differs == Last::Unprivileged {
                // The raw syscall changes this thread only (glibc's setresuid
                // would change all).
                // SAFETY: setresuid takes three integers.
                let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
                if r != 0 {
                    let _ = ready_tx.send(Err(format!("setresuid: {}", errno())));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(()));
            let (lock, cvar) = &*shared;
            let mut seen = 0;
            loop {
                let Ok(mut state) = lock.lock() else { return };
                while state.0 == seen && !state.1 {
                    state = match cvar.wait(state) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                }
                if state.1 {
                    return;
                }
                seen = state.0;
                drop(state);
                if tx.send((gettid(), uts_link())).is_err() {
                    return;
                }
            }
        }));
    }
    drop(tx);
    drop(ready_tx);
    for _ in 0..n {
        ready_rx.recv().map_err(|_| "a thread died".to_string())??;
    }
    say("READY");
    let mut failures = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.map_err(|e| format!("stdin: {e}"))?;
        match line.trim() {
            "report" => {
                {
                    let (lock, cvar) = &*shared;
                    let mut state = lock.lock().map_err(|_| "poisoned")?;
                    state.0 += 1;
                    cvar.notify_all();
                }
                let mut links = vec![(gettid(), uts_link())];
                for _ in 0..n {
                    links.push(rx.recv().map_err(|_| "a thread died".to_string())?);
                }
                links.sort();
                for (tid, link) in &links {
                    say(&format!("THREAD {tid} {link}"));
                }
                let first = &links[0].1;
                let distinct = links.iter().filter(|(_, l)| l != first).count();
                if distinct != 0 {
                    failures.push(format!("threads disagree: {links:?}"));
                }
                say(&format!("REPORT {}", links.len()));
            }
            "quit" => break,
            other => failures.push(format!("unknown command {other:?}")),
        }
    }
    {
        let (lock, cvar) = &*shared;
        let mut state = lock.lock().map_err(|_| "poisoned")?;
        state.1 = true;
        cvar.notify_all();
    }
    for h in handles {
        h.join().map_err(|_| "a thread panicked".to_string())?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

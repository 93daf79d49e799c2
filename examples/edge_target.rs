//! A target for the edges of a move: processes that exit, lose their main
//! thread, keep a thread in a namespace of its own, take signals, or sit in
//! a blocking call that a stop would interrupt.
//!
//! Each mode prints `READY` once it is in its state.
//!
//! ```text
//! edge_target exit-after N MICROS  N threads; MICROS after READY a thread
//!                                  other than the main one calls exit(0)
//! edge_target idle N               N threads, all blocked; exits 0 at EOF on stdin
//! edge_target main-exits N         N threads besides the main one, which then
//!                                  calls pthread_exit; exits 0 at EOF on stdin
//! edge_target main-exits-after N MICROS
//!                                  as main-exits, the main thread leaving
//!                                  MICROS after READY
//! edge_target own-net N            N threads, the last in a network namespace
//!                                  of its own; exits 0 at EOF on stdin
//! edge_target signals N            N threads; prints one line per signal caught:
//!                                  `SIG signo code pid value`; exits at EOF
//! edge_target block CALL           the main thread blocks in CALL (epoll_wait,
//!                                  epoll_pwait, epoll_pwait2, sigwaitinfo, semop,
//!                                  semtimedop, sigsuspend, ppoll), which a line on
//!                                  stdin completes; prints `RESULT ok` or
//!                                  `RESULT errno N` (for sigsuspend and ppoll, which
//!                                  wait with a mask of their own, `RESULT ok` means
//!                                  SIGUSR1's handler ended the call with EINTR and
//!                                  the thread's own mask, which blocks SIGUSR1, is
//!                                  back as it was)
//! ```

use std::io::{BufRead, Write};
use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("");
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage(&args))
    };
    match mode {
        "exit-after" => exit_after(num(1), num(2)),
        "idle" => idle(num(1)),
        "main-exits" => main_exits(num(1), 0),
        "main-exits-after" => main_exits(num(1), num(2)),
        "own-net" => own_net(num(1)),
        "signals" => signals(num(1)),
        "block" => block(args.get(1).map(String::as_str).unwrap_or("")),
        _ => usage(&args),
    }
}

fn usage(args: &[String]) -> ! {
    eprintln!("usage: edge_target MODE ARGS (got {args:?})");
    std::process::exit(2);
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Threads that sleep until the process ends.
fn park(n: u64) {
    for _ in 0..n {
        std::thread::spawn(|| {
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        });
    }
}

/// Reads stdin until EOF.
fn drain_stdin() {
    for line in std::io::stdin().lock().lines() {
        if line.is_err() {
            break;
        }
    }
}

fn exit_after(n: u64, micros: u64) {
    park(n.saturating_sub(2));
    let (go, ready) = std::sync::mpsc::channel::<()>();
    let exiter = std::thread::spawn(move || {
        let _ = ready.recv();
        std::thread::sleep(Duration::from_micros(micros));
        // SAFETY: ends the process, as a program calling exit() would.
        unsafe { libc::exit(0) };
    });
    say("READY");
    let _ = go.send(());
    let _ = exiter.join();
}

fn idle(n: u64) {
    park(n.saturating_sub(1));
    say("READY");
    drain_stdin();
}

fn main_exits(n: u64, micros: u64) {
    park(n.saturating_sub(1));
    std::thread::spawn(|| {
        drain_stdin();
        std::process::exit(0);
    });
    say("READY");
    std::thread::sleep(Duration::from_micros(micros));
    // SAFETY: the other threads own everything they use; the main thread
    // ends alone (SYS_exit, not exit_group), as pthread_exit from main
    // would, without unwinding through Rust frames.
    unsafe { libc::syscall(libc::SYS_exit, 0) };
    unreachable!("SYS_exit returned");
}

fn own_net(n: u64) {
    park(n.saturating_sub(2));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: unshare takes an integer flag; it affects this thread only.
        let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        let _ = tx.send(ret);
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
    if rx.recv() != Ok(0) {
        say("unshare(CLONE_NEWNET) failed");
        std::process::exit(1);
    }
    say("READY");
    drain_stdin();
}

/// Formats `SIG signo code pid value\n` into `buf` without allocating.
fn format_caught(buf: &mut [u8; 96], fields: [i64; 4]) -> usize {
    let mut len = 0;
    let mut put = |b: u8| {
        if len < buf.len() {
            buf[len] = b;
            len += 1;
        }
    };
    for &b in b"SIG" {
        put(b);
    }
    for field in fields {
        put(b' ');
        let mut v = field;
        if v < 0 {
            put(b'-');
            v = -v;
        }
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (v % 10) as u8;
            n += 1;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            put(digits[i]);
        }
    }
    put(b'\n');
    len
}

extern "C" fn caught(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for an SA_SIGINFO handler.
    let info = unsafe { &*info };
    // SAFETY: for signals sent with sigqueue these fields are set.
    let (pid, value) = unsafe { (info.si_pid(), info.si_value().sival_ptr as i64) };
    let mut buf = [0u8; 96];
    let len = format_caught(
        &mut buf,
        [sig as i64, info.si_code as i64, pid as i64, value],
    );
    // SAFETY: write(2) is async-signal-safe; `buf` holds `len` bytes. One
    // write of a short line to a pipe is atomic.
    unsafe { libc::write(1, buf.as_ptr() as *const libc::c_void, len) };
}

/// The signals the `signals` mode catches.
const CAUGHT: [libc::c_int; 8] = [
    libc::SIGBUS,
    libc::SIGSEGV,
    libc::SIGILL,
    libc::SIGFPE,
    libc::SIGTRAP,
    libc::SIGSYS,
    libc::SIGUSR1,
    34 + 2, // SIGRTMIN + 2
];

fn signals(n: u64) {
    for sig in CAUGHT {
        // SAFETY: a zeroed sigaction with a valid handler and flags.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = caught as *const () as usize;
            act.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(sig, &act, std::ptr::null_mut()) != 0 {
                say("sigaction failed");
                std::process::exit(1);
            }
        }
    }
    park(n.saturating_sub(1));
    say("READY");
    drain_stdin();
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Set by [`woken`].
static WOKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// SIGUSR1's handler in the sigsuspend and ppoll blocks.
extern "C" fn woken(_sig: libc::c_int) {
    WOKEN.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// The calling thread's signal mask (the first 64 signals).
fn blocked_mask() -> u64 {
    let mut mask = 0u64;
    // SAFETY: rt_sigprocmask with no new set writes 8 bytes of the current
    // one into `mask`.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_BLOCK,
            std::ptr::null::<u64>(),
            &mut mask as *mut u64,
            8usize,
        )
    };
    mask
}

fn block(call: &str) {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into `fds`.
    if unsafe { libc::pipe(fds.as_mut_ptr()) } != 0 {
        say("pipe failed");
        std::process::exit(1);
    }
    let (rd, wr) = (fds[0], fds[1]);
    // A pipe that never becomes readable (its write end stays open), for
    // ppoll: the line on stdin must end the call through the signal.
    let mut quiet = [0; 2];
    // SAFETY: pipe writes two descriptors into `quiet`.
    if unsafe { libc::pipe(quiet.as_mut_ptr()) } != 0 {
        say("pipe failed");
        std::process::exit(1);
    }
    if matches!(call, "sigsuspend" | "ppoll") {
        // SAFETY: a zeroed sigaction with a valid handler; no SA_RESTART,
        // so the handler ends the call with EINTR.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = woken as *const () as usize;
            libc::sigemptyset(&mut act.sa_mask);
            if libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut()) != 0 {
                say("sigaction failed");
                std::process::exit(1);
            }
        }
    }
    // SAFETY: the calls below take integers and pointers to live locals.
    let ep = unsafe { libc::epoll_create1(0) };
    let mut ev = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 1,
    };
    // SAFETY: `ev` is a live epoll_event.
    unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, rd, &mut ev) };
    // SAFETY: a private semaphore set of one, value 0.
    let sem = unsafe { libc::semget(libc::IPC_PRIVATE, 1, 0o600) };
    // SAFETY: a zeroed sigset filled by sigemptyset/sigaddset.
    let mut usr1: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `usr1` is a live sigset; blocked before any thread starts, so
    // every thread inherits the mask and sigwaitinfo alone takes SIGUSR1.
    unsafe {
        libc::sigemptyset(&mut usr1);
        libc::sigaddset(&mut usr1, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &usr1, std::ptr::null_mut());
    }
    // SAFETY: gettid takes no arguments.
    let main_tid = unsafe { libc::gettid() };
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().lock().read_line(&mut line);
        // SAFETY: plain syscalls on descriptors and ids this process owns.
        unsafe {
            libc::write(wr, b"x".as_ptr() as *const libc::c_void, 1);
            let mut up = libc::sembuf {
                sem_num: 0,
                sem_op: 1,
                sem_flg: 0,
            };
            libc::semop(sem, &mut up, 1);
            libc::syscall(libc::SYS_tgkill, libc::getpid(), main_tid, libc::SIGUSR1);
        }
    });
    say("READY");
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    let mut down = libc::sembuf {
        sem_num: 0,
        sem_op: -1,
        sem_flg: 0,
    };
    // epoll_pwait's own mask keeps SIGUSR1 blocked too: it is sigwaitinfo's.
    let pwait_mask: u64 = 1 << (libc::SIGUSR1 - 1);
    // sigsuspend's and ppoll's let it through: it ends them.
    let open_mask: u64 = 0;
    let mut never = libc::pollfd {
        fd: quiet[0],
        events: libc::POLLIN,
        revents: 0,
    };
    let own_mask = blocked_mask();
    // SAFETY: raw syscalls with pointers to live locals, no retry on EINTR
    // so that one shows.
    let ret = unsafe {
        match call {
            "epoll_wait" => libc::syscall(libc::SYS_epoll_wait, ep, events.as_mut_ptr(), 4, -1),
            "epoll_pwait" => libc::syscall(
                libc::SYS_epoll_pwait,
                ep,
                events.as_mut_ptr(),
                4,
                -1,
                &pwait_mask as *const u64,
                8usize,
            ),
            "epoll_pwait2" => libc::syscall(
                libc::SYS_epoll_pwait2,
                ep,
                events.as_mut_ptr(),
                4,
                std::ptr::null::<libc::timespec>(),
                std::ptr::null::<u64>(),
                8usize,
            ),
            "sigwaitinfo" => libc::syscall(
                libc::SYS_rt_sigtimedwait,
                &usr1 as *const libc::sigset_t,
                std::ptr::null_mut::<libc::siginfo_t>(),
                std::ptr::null::<libc::timespec>(),
                8usize,
            ),
            "semop" => libc::syscall(libc::SYS_semop, sem, &mut down as *mut libc::sembuf, 1usize),
            "semtimedop" => libc::syscall(
                libc::SYS_semtimedop,
                sem,
                &mut down as *mut libc::sembuf,
                1usize,
                std::ptr::null::<libc::timespec>(),
            ),
            "sigsuspend" => {
                libc::syscall(libc::SYS_rt_sigsuspend, &open_mask as *const u64, 8usize)
            }
            "ppoll" => libc::syscall(
                libc::SYS_ppoll,
                &mut never as *mut libc::pollfd,
                1usize,
                std::ptr::null::<libc::timespec>(),
                &open_mask as *const u64,
                8usize,
            ),
            _ => usage(&[call.to_owned()]),
        }
    };
    let err = errno();
    let verdict = if matches!(call, "sigsuspend" | "ppoll") {
        let woke = WOKEN.load(std::sync::atomic::Ordering::SeqCst);
        let mask = blocked_mask();
        if ret == -1 && err == libc::EINTR && woke && mask == own_mask {
            "RESULT ok".to_owned()
        } else {
            format!("RESULT {ret} errno {err} woken {woke} mask {own_mask:#x} -> {mask:#x}")
        }
    } else if ret < 0 {
        format!("RESULT errno {err}")
    } else {
        "RESULT ok".to_owned()
    };
    // SAFETY: removes the semaphore set this process made.
    unsafe { libc::semctl(sem, 0, libc::IPC_RMID) };
    say(&verdict);
}

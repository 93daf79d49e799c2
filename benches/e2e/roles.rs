//! The helper processes, played by the benchmark binary itself when
//! [`harness::ROLE_ENV`] is set: `cargo bench --bench e2e` builds no
//! examples, and the benchmark should not start cargo.
//!
//! ```text
//! target N     N threads (the main one included), all blocked: the main
//!              thread in read(stdin), the others in pause()
//! sleepers N   forks N children blocked in pause(); kills and reaps them
//! ```
//!
//! Each prints `READY` once set up and ends when stdin reaches end of file.
//! The roles run before anything else in `main`, in a process with one
//! thread, so forking is plain.

use std::io::Write;

use crate::harness;

/// Runs the role named in the environment, if any, and returns the exit
/// status.
pub fn run_if_helper() -> Option<i32> {
    let role = std::env::var(harness::ROLE_ENV).ok()?;
    let parsed = role
        .split_once(' ')
        .and_then(|(name, n)| Some((name, n.parse::<usize>().ok()?)));
    Some(match parsed {
        Some(("target", n)) if n >= 1 => target(n),
        Some(("sleepers", n)) => sleepers(n),
        _ => {
            eprintln!("unknown helper role {role:?}");
            2
        }
    })
}

fn ready() {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "READY");
    let _ = out.flush();
}

/// Blocks in read(stdin) until end of file (or an error other than EINTR).
fn wait_for_eof() {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: the pointer and length describe `buf`, live and writable.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR))
        {
            return;
        }
    }
}

fn pause_forever() -> ! {
    loop {
        // SAFETY: pause has no arguments; it returns only after a handled
        // signal, and we pause again.
        unsafe { libc::pause() };
    }
}

fn target(threads: usize) -> i32 {
    let (tx, rx) = std::sync::mpsc::channel();
    for _ in 1..threads {
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let _ = tx.send(());
                pause_forever();
            });
        if let Err(e) = spawned {
            eprintln!("target: spawn a thread: {e}");
            return 1;
        }
    }
    drop(tx);
    for _ in 1..threads {
        if rx.recv().is_err() {
            eprintln!("target: a thread did not start");
            return 1;
        }
    }
    ready();
    wait_for_eof();
    0
}

fn sleepers(n: usize) -> i32 {
    // SAFETY: getpid has no preconditions.
    let me = unsafe { libc::getpid() };
    let mut children = Vec::with_capacity(n);
    let mut status = 0;
    for _ in 0..n {
        // SAFETY: this process has a single thread, so the child is a full
        // copy; it only calls prctl, getppid, pause and _exit.
        match unsafe { libc::fork() } {
            0 => {
                // SAFETY: integer arguments only; _exit and pause never
                // return to Rust code that could unwind.
                unsafe {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                    if libc::getppid() != me {
                        libc::_exit(0);
                    }
                }
                pause_forever();
            }
            -1 => {
                eprintln!("sleepers: fork: {}", std::io::Error::last_os_error());
                status = 1;
                break;
            }
            pid => children.push(pid),
        }
    }
    if status == 0 {
        ready();
        wait_for_eof();
    }
    for &pid in &children {
        // SAFETY: kill takes integers; these are our own unreaped children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for &pid in &children {
        // SAFETY: a null status pointer is allowed; the pid is our child.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
    status
}

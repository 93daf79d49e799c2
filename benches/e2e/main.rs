//! The end-to-end benchmark: nsproxyfs through a real mount of the built
//! binary, each figure beside what a user has today, measured in the same
//! run, in chunks taken in turn. What each row measures: BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench e2e               full run (a few minutes)
//! cargo bench --bench e2e -- --quick    fewer samples, smaller sizes (under 30 s)
//! ```
//!
//! Needs root and `/dev/fuse`; without them it says why and exits 0, except
//! under `CI=true`, where it fails. Figures are printed, never asserted.
//! Everything it makes (daemon, mounts, helper processes, cgroups, scratch
//! directory) is undone on the way out, also on panic; a watchdog ends a run
//! that stops making progress (see `harness.rs`).

mod bare;
// The tests' support module: the benchmark shares its fixtures.
#[path = "../../tests/common/mod.rs"]
mod common;
mod discover;
mod harness;
mod roles;
mod stats;

use std::cell::Cell;
use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bare::BareMount;
use common::NS_ENTRIES;
use harness::{Cgroups, Daemon, Helper, Scratch, Watchdog, cpath, read_through, write_once};
use stats::{Op, Plan, Stats, measure, timed};

/// How much to measure: quick or full.
struct Settings {
    quick: bool,
    moves: Plan,
    threads: Plan,
    tasks_sizes: &'static [usize],
    tasks: Plan,
    /// Samples of reading the `tasks` of [`CONTAINERS`] containers in turn.
    tasks_loop: Plan,
    calls: Plan,
    cycle: Plan,
    floor: Plan,
    scale_sizes: &'static [usize],
    scale: Plan,
    scale_slow: Plan,
    /// Samples of the discovery latency rows (each about a quarter of a
    /// second) and of the resync and `lsns` beside them.
    discover: Plan,
    /// Forks and execs of `/bin/true` for discovery's CPU cost, in turns.
    execs: usize,
    exec_turns: usize,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        if quick {
            Settings {
                quick,
                moves: Plan::new(200, 1),
                threads: Plan::new(60, 1),
                tasks_sizes: &[100, 1_000],
                tasks: Plan::new(20, 1),
                tasks_loop: Plan::new(3, 1),
                calls: Plan::new(2_000, 1),
                cycle: Plan::new(40, 1),
                floor: Plan::new(20_000, 1),
                scale_sizes: &[10, 100, 1_000],
                scale: Plan::new(500, 1),
                scale_slow: Plan::new(50, 1),
                discover: Plan::new(8, 1),
                execs: 400,
                exec_turns: 4,
            }
        } else {
            Settings {
                quick,
                moves: Plan::new(2_000, 10),
                threads: Plan::new(500, 10),
                tasks_sizes: &[100, 1_000, 10_000],
                tasks: Plan::new(200, 10),
                tasks_loop: Plan::new(10, 2),
                calls: Plan::new(20_000, 5),
                cycle: Plan::new(1_000, 10),
                floor: Plan::new(200_000, 3),
                scale_sizes: &[10, 100, 1_000, 10_000],
                scale: Plan::new(5_000, 3),
                scale_slow: Plan::new(500, 5),
                discover: Plan::new(40, 15),
                execs: 2_000,
                exec_turns: 10,
            }
        }
    }
}

/// One line of the main table: nsproxyfs's figure and its alternatives.
struct Row {
    name: String,
    ours: Stats,
    alts: Vec<(String, Result<Stats, String>)>,
    goal: &'static str,
}

/// One line of the scaling table.
struct ScaleRow {
    label: String,
    stat_one: Stats,
    stat_deep: Stats,
    readdir: Stats,
    moves: Stats,
}

#[derive(Default)]
struct Report {
    rows: Vec<Row>,
    scale: Vec<ScaleRow>,
    memory: Vec<(String, u64)>,
    notes: Vec<String>,
    discovery: Option<discover::ExecCost>,
}

fn main() {
    if let Some(code) = roles::run_if_helper() {
        std::process::exit(code);
    }
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "--bench" => {}
            "-h" | "--help" => {
                println!("usage: cargo bench --bench e2e [-- --quick]");
                return;
            }
            other => {
                eprintln!("e2e: unknown argument {other:?} (only --quick)");
                std::process::exit(2);
            }
        }
    }
    if let Err(why) = harness::privileged() {
        if std::env::var("CI").as_deref() == Ok("true") {
            eprintln!("e2e bench: needs root and /dev/fuse, and CI must not skip: {why}");
            std::process::exit(1);
        }
        eprintln!("SKIP e2e bench: needs root and /dev/fuse ({why})");
        return;
    }
    harness::private_mount_namespace();
    harness::catch_interrupts();
    let settings = Settings::new(quick);
    let started = Instant::now();
    let load_before = loadavg();
    let report = run(&settings);
    let load = format!("load average {load_before} before, {} after", loadavg());
    print_report(&settings, &report, started.elapsed(), &load);
}

fn say(msg: &str) {
    eprintln!("e2e: {msg}");
}

/// Runs every measurement. The guards are declared in the order they are
/// needed, so they drop in reverse: helpers, cgroups, the bare mount, the
/// daemon, the scratch directory, and last the watchdog.
fn run(s: &Settings) -> Report {
    let _watchdog = Watchdog::start();
    let scratch = Scratch::new().expect("create the scratch directory");
    let syscalls_before = syscall_cost(s);
    let fs = Daemon::start(&scratch);
    // The same daemon forced onto the /proc path, for the rows that read
    // membership (see src/kview).
    let procfs_fs = Daemon::start_env(
        &scratch,
        "procfs",
        &[],
        &[(nsproxyfs::kview::FORCE_ENV, "proc")],
    );
    let cgroups = Cgroups::create(&scratch);
    if let Err(why) = &cgroups {
        say(&format!("cgroup2 alternatives left out: {why}"));
    }
    let cg = cgroups.as_ref().ok();
    let mut report = Report::default();
    report
        .memory
        .push(("at start, empty tree".into(), fs.rss_kib()));
    let sets = Sets::make(&fs);

    moves_single(s, cg, &sets, &mut report);
    moves_threaded(s, cg, &sets, &mut report);
    // As the daemon chooses (dropped at once, so its programs do not stay).
    let path = match nsproxyfs::kview::Membership::choose() {
        (m, None) => format!(
            "{} path, counting changes during bursts of reads (with `--discover`: for good) \
             and reusing passes while nothing changed",
            m.path()
        ),
        (m, Some(why)) => format!("{} path ({why})", m.path()),
    };
    say(&format!("membership from {path}"));
    report.notes.push(format!(
        "Membership: the daemon measured as nsproxyfs takes the {path}; the rows' \
         \"/proc path\" alternative is the same binary started with {}=proc.",
        nsproxyfs::kview::FORCE_ENV
    ));
    report.rows.push(Row {
        name: "1,000 `getppid()` calls in the benchmark, while the daemons run".into(),
        ours: syscall_cost(s),
        alts: vec![(
            "the same before any daemon started".into(),
            Ok(syscalls_before),
        )],
        goal: "",
    });
    // A daemon with `--discover`, whose counting programs let `tasks`
    // reads answer from an index kept through forks and exits (see
    // src/kview); started after the system-call row, as its programs run
    // at every system call on the host.
    let counted_fs = Daemon::start_with(&scratch, "counted", &["--discover"]);
    tasks_reads(s, &fs, &procfs_fs, &counted_fs, &mut report);
    drop(counted_fs);
    drop(procfs_fs);
    calls(s, &fs, &scratch, &mut report);
    cycle(s, &fs, cg, &mut report);
    floor(s, &mut report);
    report.memory.push((
        "after the rows above (2 containers with 3 own namespaces each, holders)".into(),
        fs.rss_kib(),
    ));
    discover::discovery(s, &fs, &scratch, &mut report);
    scaling(s, &fs, &sets, &mut report);
    harness::step("clean up");
    say("cleaning up");
    report
}

/// Containers A and B, each binding fresh uts, net and ipc namespaces, so
/// that a move between them changes three kinds.
struct Sets {
    tasks: [PathBuf; 2],
    uts: [u64; 2],
}

impl Sets {
    fn make(fs: &Daemon) -> Sets {
        harness::step("make containers A and B");
        let mut uts = [0; 2];
        for (i, name) in ["A", "B"].into_iter().enumerate() {
            std::fs::create_dir(fs.path(name)).expect("mkdir");
            for kind in ["uts", "net", "ipc"] {
                File::create(fs.path(&format!("{name}/{kind}"))).expect("touch a kind file");
            }
            uts[i] = bound_ino(&fs.path(&format!("{name}/uts")));
        }
        Sets {
            tasks: [fs.path("A/tasks"), fs.path("B/tasks")],
            uts,
        }
    }
}

/// The inode a kind file names (`uts:[N]` -> N).
fn bound_ino(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("read a kind file");
    text.trim()
        .split(['[', ']'])
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}: not a namespace: {text:?}", path.display()))
}

/// The inode of `/proc/PID/task/TID/ns/uts`.
fn uts_of(pid: i32, tid: &str) -> io::Result<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/task/{tid}/ns/uts"))?;
    let text = link.to_string_lossy();
    text.split(['[', ']'])
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| io::Error::other(format!("odd link {text}")))
}

/// Checks that every thread of `pid` is in uts namespace `want`.
fn arrived(pid: i32, want: u64) -> io::Result<()> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid = task?.file_name();
        let got = uts_of(pid, &tid.to_string_lossy())?;
        if got != want {
            return Err(io::Error::other(format!(
                "thread {tid:?} of {pid} is in uts:[{got}], not uts:[{want}]: the move did not happen"
            )));
        }
    }
    Ok(())
}

/// How a pid reaches a `tasks` or `cgroup.procs` file.
enum Delivery {
    /// Both files held open, one pwrite() at offset 0 per move.
    Held([File; 2]),
    /// open(O_TRUNC)/write/close per move, as `echo PID > FILE` does.
    Echo([CString; 2]),
}

impl Delivery {
    fn held(paths: [&Path; 2]) -> Delivery {
        let open = |p: &Path| {
            File::options()
                .write(true)
                .open(p)
                .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
        };
        Delivery::Held([open(paths[0]), open(paths[1])])
    }

    fn echo(paths: [&Path; 2]) -> Delivery {
        Delivery::Echo([cpath(paths[0]), cpath(paths[1])])
    }

    fn send(&self, to: usize, line: &[u8]) -> io::Result<Duration> {
        match self {
            Delivery::Held(files) => timed(|| {
                let n = files[to].write_at(line, 0)?;
                if n == line.len() {
                    Ok(())
                } else {
                    Err(io::Error::other("short write"))
                }
            }),
            Delivery::Echo(paths) => timed(|| write_once(&paths[to], line)),
        }
    }
}

/// A move of `pid` through nsproxyfs to whichever of A and B it is not in
/// (`in_a` is shared by every op moving the same process), checked by
/// reading every thread's uts link afterwards, outside the timed part.
fn ns_move<'a>(
    name: &str,
    sets: &'a Sets,
    in_a: &'a Cell<bool>,
    pid: i32,
    how: Delivery,
) -> Op<'a> {
    let line = format!("{pid}\n");
    Op::new(name, move || {
        let to = usize::from(in_a.get());
        let d = how.send(to, line.as_bytes())?;
        in_a.set(to == 0);
        arrived(pid, sets.uts[to])?;
        Ok(d)
    })
}

/// A move of `pid` between the benchmark's cgroups `a` and `b`.
fn cg_move<'a>(name: &str, in_a: &'a Cell<bool>, pid: i32, how: Delivery) -> Op<'a> {
    let line = format!("{pid}\n");
    Op::new(name, move || {
        let to = usize::from(in_a.get());
        let d = how.send(to, line.as_bytes())?;
        in_a.set(to == 0);
        Ok(d)
    })
}

/// Checks that `pid` ended in the cgroup leaf the cgroup ops think.
fn check_cgroup(cg: &Cgroups, pid: i32, in_a: bool) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let leaf = if in_a { "a" } else { "b" };
    let base = cg.base.file_name().unwrap_or_default().to_string_lossy();
    assert!(
        text.lines()
            .any(|l| l.starts_with("0::") && l.ends_with(&format!("{base}/{leaf}"))),
        "pid {pid} is not in cgroup {leaf}: {text}"
    );
}

fn procs_paths(cg: &Cgroups) -> [PathBuf; 2] {
    [
        cg.leaf("a").join("cgroup.procs"),
        cg.leaf("b").join("cgroup.procs"),
    ]
}

/// Whether a tool runs here.
fn have(tool: &str) -> Result<(), String> {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{tool}: {e}"))
        .and_then(|s| {
            s.success()
                .then_some(())
                .ok_or(format!("{tool} --version failed"))
        })
}

/// One `lsns` run, spawned and waited for, output to /dev/null. lsns gives
/// up with status 1 when a process vanishes during its scan (other work on
/// the machine): such runs count, as a user waits for them too, and are
/// counted in `failed` to be reported.
fn lsns_op(failed: &Cell<usize>) -> Op<'_> {
    Op::new("lsns", move || {
        let start = Instant::now();
        let status = Command::new("lsns")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        let d = start.elapsed();
        if !status.success() {
            failed.set(failed.get() + 1);
        }
        Ok(d)
    })
}

/// Spawns `cmd` and waits for it, requiring success.
fn spawn_wait(cmd: &mut Command) -> io::Result<Duration> {
    let start = Instant::now();
    let status = cmd.status()?;
    let d = start.elapsed();
    if !status.success() {
        return Err(io::Error::other(format!("{cmd:?}: {status}")));
    }
    Ok(d)
}

fn moves_single(s: &Settings, cg: Option<&Cgroups>, sets: &Sets, r: &mut Report) {
    say("moves of a single-threaded process");
    let target = Helper::start("target 1");
    let pid = target.pid();
    let [ta, tb] = &sets.tasks;
    let in_a = Cell::new(false);
    let mut ops = vec![
        ns_move(
            "tasks held open",
            sets,
            &in_a,
            pid,
            Delivery::held([ta, tb]),
        ),
        ns_move(
            "tasks echo-style",
            sets,
            &in_a,
            pid,
            Delivery::echo([ta, tb]),
        ),
    ];
    let nsenter = have("nsenter");
    if nsenter.is_ok() {
        let pid = pid.to_string();
        ops.push(Op::new("nsenter", move || {
            spawn_wait(
                Command::new("nsenter")
                    .args(["-t", &pid, "-u", "-n", "-i", "true"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null()),
            )
        }));
    }
    let cg_in_a = Cell::new(false);
    let cg_paths = cg.map(procs_paths);
    if let Some([a, b]) = &cg_paths {
        ops.push(cg_move(
            "cgroup.procs held open",
            &cg_in_a,
            pid,
            Delivery::held([a, b]),
        ));
        ops.push(cg_move(
            "cgroup.procs echo-style",
            &cg_in_a,
            pid,
            Delivery::echo([a, b]),
        ));
    }
    let mut got = measure(s.moves, ops).into_iter();
    if let Some(cg) = cg {
        check_cgroup(cg, pid, cg_in_a.get());
    }
    let (held, echo) = (got.next().unwrap(), got.next().unwrap());
    let nsenter = nsenter.map(|()| got.next().unwrap());
    let (cg_held, cg_echo) = match cg {
        Some(_) => (Ok(got.next().unwrap()), Ok(got.next().unwrap())),
        None => (Err("no cgroup2".to_string()), Err("no cgroup2".to_string())),
    };
    let nsenter_name = "`nsenter -t PID -u -n -i true` (spawn+wait)";
    r.rows.push(Row {
        name: "move, 1 thread, `tasks` held open (one write per move)".into(),
        ours: held,
        alts: vec![
            ("`cgroup.procs` held open".into(), cg_held),
            (nsenter_name.into(), nsenter.clone()),
        ],
        goal: "",
    });
    r.rows.push(Row {
        name: "move, 1 thread, `echo PID > tasks` (open/write/close)".into(),
        ours: echo,
        alts: vec![
            ("`echo PID > cgroup.procs`".into(), cg_echo),
            (nsenter_name.into(), nsenter),
        ],
        goal: "median ≤ 100, p99 ≤ 200",
    });
    moves_on_one_cpu((s, cg, sets), pid, 1, (&in_a, &cg_in_a), r);
    drop(target);
}

/// Runs `f` with the benchmark's thread, the daemon (its threads,
/// injectors and holders) and process `pid` (every thread of it) all on
/// one CPU, and puts everything back on the benchmark's CPUs after it:
/// what a move costs without the wake-ups of idle CPUs, which dominate on
/// a virtual machine whose idle CPUs halt (see the wake-up floor row), and
/// with every step of it, the target's included, on one CPU's clock.
/// `None` (and `f` not run) if the benchmark may use no CPU.
fn on_one_cpu<T>(pid: i32, f: impl FnOnce() -> T) -> Option<T> {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::Pid;
    let all = sched_getaffinity(Pid::from_raw(0)).expect("the benchmark's CPUs");
    let cpu = (0..CpuSet::count()).find(|&c| all.is_set(c).unwrap_or(false))?;
    let mut one = CpuSet::new();
    one.set(cpu).expect("a CPU in range");
    // Every thread of the daemons and their children (injectors, holders),
    // the target, and this thread.
    let mut pids = vec![pid, std::process::id() as i32];
    pids.extend(harness::watched_pids());
    let set_all = |mask: &CpuSet| {
        for task in harness::tasks_and_children(&pids) {
            let _ = sched_setaffinity(Pid::from_raw(task), mask);
        }
        sched_setaffinity(Pid::from_raw(0), mask).expect("pin the benchmark's thread");
    };
    say(&format!("moves with everything on CPU {cpu}"));
    set_all(&one);
    let got = f();
    set_all(&all);
    Some(got)
}

/// The move of a `threads`-thread process `pid` through `tasks` (held open
/// for one thread, `echo`-style for more), beside the cgroup move, with
/// everything on one CPU ([`on_one_cpu`]). `in_a` and `cg_in_a` say where
/// the process is now, among the containers and among the cgroups.
fn moves_on_one_cpu(
    (s, cg, sets): (&Settings, Option<&Cgroups>, &Sets),
    pid: i32,
    threads: usize,
    (in_a, cg_in_a): (&Cell<bool>, &Cell<bool>),
    r: &mut Report,
) {
    let [ta, tb] = &sets.tasks;
    let cg_paths = cg.map(procs_paths);
    let (ours, theirs, samples, name, alt) = if threads == 1 {
        (
            Delivery::held([ta, tb]),
            cg_paths.as_ref().map(|[a, b]| Delivery::held([a, b])),
            s.moves,
            "move, 1 thread, `tasks` held open, with the benchmark, the daemon and the \
             target on one CPU"
                .to_string(),
            "`cgroup.procs` held open, on that CPU",
        )
    } else {
        (
            Delivery::echo([ta, tb]),
            cg_paths.as_ref().map(|[a, b]| Delivery::echo([a, b])),
            s.threads,
            format!(
                "move, {threads} threads, `echo PID > tasks`, with the benchmark, the daemon \
                 and the target on one CPU"
            ),
            "`echo PID > cgroup.procs`, on that CPU",
        )
    };
    let Some(mut got) = on_one_cpu(pid, || {
        let mut ops = vec![ns_move("tasks, one CPU", sets, in_a, pid, ours)];
        if let Some(theirs) = theirs {
            ops.push(cg_move("cgroup.procs, one CPU", cg_in_a, pid, theirs));
        }
        measure(samples, ops).into_iter()
    }) else {
        return;
    };
    if let Some(cg) = cg {
        check_cgroup(cg, pid, cg_in_a.get());
    }
    let moved = got.next().unwrap();
    let cg_moved = match cg {
        Some(_) => Ok(got.next().unwrap()),
        None => Err("no cgroup2".to_string()),
    };
    r.rows.push(Row {
        name,
        ours: moved,
        alts: vec![(alt.into(), cg_moved)],
        goal: "",
    });
}

fn moves_threaded(s: &Settings, cg: Option<&Cgroups>, sets: &Sets, r: &mut Report) {
    let [ta, tb] = &sets.tasks;
    for threads in [8, 64] {
        say(&format!("moves of a {threads}-thread process"));
        let target = Helper::start(&format!("target {threads}"));
        let pid = target.pid();
        let in_a = Cell::new(false);
        let mut ops = vec![ns_move(
            &format!("{threads} threads, tasks echo-style"),
            sets,
            &in_a,
            pid,
            Delivery::echo([ta, tb]),
        )];
        let cg_in_a = Cell::new(false);
        let cg_paths = cg.map(procs_paths);
        if let Some([a, b]) = &cg_paths {
            ops.push(cg_move(
                "cgroup.procs echo-style",
                &cg_in_a,
                pid,
                Delivery::echo([a, b]),
            ));
        }
        let mut got = measure(s.threads, ops).into_iter();
        if let Some(cg) = cg {
            check_cgroup(cg, pid, cg_in_a.get());
        }
        let ours = got.next().unwrap();
        let alt = got.next().ok_or_else(|| "no cgroup2".to_string());
        r.rows.push(Row {
            name: format!("move, {threads} threads, `echo PID > tasks`"),
            ours,
            alts: vec![("`echo PID > cgroup.procs`".into(), alt)],
            goal: if threads == 64 {
                "median ≤ 2,000"
            } else {
                ""
            },
        });
        if threads == 64 {
            moves_on_one_cpu((s, cg, sets), pid, threads, (&in_a, &cg_in_a), r);
        }
        drop(target);
    }
}

/// The processes in /proc right now.
fn process_count() -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// Readlinks the namespace links `entries` of every process in /proc;
/// returns how many processes answered.
fn scan_proc(entries: &[&str]) -> io::Result<usize> {
    let mut seen = 0;
    let mut path = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    for entry in std::fs::read_dir("/proc")? {
        let name = entry?.file_name();
        let name = name.as_encoded_bytes();
        if name.is_empty() || !name.iter().all(u8::is_ascii_digit) {
            continue;
        }
        let mut all = true;
        for ns in entries {
            path.clear();
            path.extend_from_slice(b"/proc/");
            path.extend_from_slice(name);
            path.extend_from_slice(b"/ns/");
            path.extend_from_slice(ns.as_bytes());
            path.push(0);
            // SAFETY: `path` ends with its only NUL; `buf` is valid for its
            // length and readlink writes at most that many bytes.
            let n =
                unsafe { libc::readlink(path.as_ptr().cast(), buf.as_mut_ptr().cast(), buf.len()) };
            all &= n > 0;
        }
        seen += usize::from(all);
    }
    Ok(seen)
}

/// A process whose /proc entries cannot be read now (seen: one in
/// uninterruptible sleep while traced by strace) makes every scan of /proc
/// wait: nsproxyfs's `tasks`, lsns and ps alike. Scans
/// once in a thread of its own and names such a process if the scan does not
/// finish within 10 s; the thread is then left blocked until the benchmark
/// exits.
fn proc_blocker() -> Option<String> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicI32, Ordering};
    let current = Arc::new(AtomicI32::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let seen = Arc::clone(&current);
    std::thread::Builder::new()
        .name("proc-scan".into())
        .spawn(move || {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                seen.store(pid, Ordering::SeqCst);
                let _ = std::fs::read(format!("/proc/{pid}/stat"));
                for ns in NS_ENTRIES {
                    let _ = std::fs::read_link(format!("/proc/{pid}/ns/{ns}"));
                }
            }
            let _ = tx.send(());
        })
        .ok()?;
    match rx.recv_timeout(Duration::from_secs(10)) {
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            let pid = current.load(Ordering::SeqCst);
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            Some(format!(
                "process {pid} ({}) blocks reads of its /proc entries",
                comm.trim()
            ))
        }
        _ => None,
    }
}

/// How many containers the "all containers in turn" rows read.
const CONTAINERS: usize = 100;

/// Makes containers `L0`..`L99`, each with a fresh uts namespace, and
/// returns their `tasks` files.
fn loop_containers(fs: &Daemon) -> Vec<PathBuf> {
    (0..CONTAINERS)
        .map(|i| {
            let dir = fs.path(&format!("L{i}"));
            std::fs::create_dir(&dir).expect("mkdir a container");
            std::fs::write(dir.join("uts"), b"").expect("give it a uts namespace");
            dir.join("tasks")
        })
        .collect()
}

/// Reads every file of `files` in turn, as a monitoring loop would.
fn read_all(files: &[PathBuf], buf: &mut [u8]) -> io::Result<Duration> {
    timed(|| {
        for f in files {
            read_through(f, buf)?;
        }
        Ok(())
    })
}

fn tasks_reads(s: &Settings, fs: &Daemon, procfs_fs: &Daemon, counted_fs: &Daemon, r: &mut Report) {
    if let Some(why) = proc_blocker() {
        say(&format!("tasks rows left out: {why}"));
        r.notes.push(format!(
            "The `tasks` rows were not measured: {why}, and every scan of /proc \
             (nsproxyfs's `tasks`, lsns, ps) waits for it."
        ));
        return;
    }
    let lsns = have("lsns");
    let looped = loop_containers(fs);
    let looped_procfs = loop_containers(procfs_fs);
    let looped_counted = loop_containers(counted_fs);
    for &n in s.tasks_sizes {
        say(&format!("reading tasks with {n} sleeping processes"));
        let sleepers = Helper::start(&format!("sleepers {n}"));
        let total = process_count();
        let tasks = fs.path("tasks");
        let members = std::fs::read_to_string(&tasks)
            .expect("read tasks")
            .lines()
            .count();
        assert!(
            members >= n,
            "root tasks lists {members} pids, fewer than {n} sleepers"
        );
        let in_a = fs.path("A/tasks");
        let listed_in_a = std::fs::read_to_string(&in_a)
            .expect("read A/tasks")
            .lines()
            .count();
        let mut buf = vec![0u8; 1 << 16];
        let mut buf_a = vec![0u8; 1 << 16];
        let mut buf_p = vec![0u8; 1 << 16];
        let tasks_p = procfs_fs.path("tasks");
        // Discovery's full read of /proc is measured here too, with 1,000
        // and 10,000 sleepers (with few, in the discovery rows).
        let resync = n >= 1_000;
        let mut ops = vec![
            Op::new("read root tasks", move || {
                timed(|| read_through(&tasks, &mut buf))
            }),
            Op::new("read A/tasks", move || {
                timed(|| read_through(&in_a, &mut buf_a))
            }),
            Op::new("scan /proc, 8 links", || timed(|| scan_proc(&NS_ENTRIES))),
            Op::new("scan /proc, 1 link", || timed(|| scan_proc(&["uts"]))),
            Op::new("read root tasks, /proc path", move || {
                timed(|| read_through(&tasks_p, &mut buf_p))
            }),
        ];
        let lsns_failed = Cell::new(0);
        if lsns.is_ok() {
            ops.push(lsns_op(&lsns_failed));
        }
        if resync {
            ops.push(discover::resync_op());
            ops.push(discover::resync_procfs_op());
        }
        let mut got = measure(s.tasks, ops).into_iter();
        let mut next = || got.next().unwrap();
        let (ours, ours_a, scan, scan_one) = (next(), next(), next(), next());
        let ours_procfs = next();
        let lsns_stats = lsns.clone().map(|()| got.next().unwrap());
        let resync_stats = resync.then(|| (got.next().unwrap(), got.next().unwrap()));
        if lsns_failed.get() > 0 {
            r.notes.push(format!(
                "`lsns` with {} processes exited non-zero in {} of its runs (a process \
                 vanished during its scan); those runs are counted.",
                stats::thousands(total as u64),
                lsns_failed.get()
            ));
        }
        r.rows.push(Row {
            name: format!(
                "read root `tasks`, {} processes ({} listed)",
                stats::thousands(total as u64),
                stats::thousands(members as u64)
            ),
            ours,
            alts: vec![
                ("nsproxyfs on the /proc path".into(), Ok(ours_procfs)),
                ("`lsns` (spawn+wait)".into(), lsns_stats.clone()),
                (
                    "Rust scan: readlink 8 ns links of every /proc pid".into(),
                    Ok(scan.clone()),
                ),
            ],
            goal: if n >= 10_000 {
                "≤ 60,000 (SPEC); ≤ 10,000 (#16)"
            } else {
                ""
            },
        });
        // A monitoring loop: every container's tasks, one after another.
        let mut buf_l = vec![0u8; 1 << 16];
        let mut buf_lp = vec![0u8; 1 << 16];
        let mut buf_lc = vec![0u8; 1 << 16];
        let mut ops = vec![
            Op::new("read 100 tasks in turn", || read_all(&looped, &mut buf_l)),
            Op::new("read 100 tasks in turn, --discover", || {
                read_all(&looped_counted, &mut buf_lc)
            }),
            Op::new("read 100 tasks in turn, /proc path", || {
                read_all(&looped_procfs, &mut buf_lp)
            }),
            Op::new("100 scans of /proc, 1 link", || {
                timed(|| (0..CONTAINERS).try_for_each(|_| scan_proc(&["uts"]).map(drop)))
            }),
        ];
        let loop_lsns_failed = Cell::new(0);
        if lsns.is_ok() {
            ops.push(lsns_op(&loop_lsns_failed));
        }
        let mut got_l = measure(s.tasks_loop, ops).into_iter();
        let mut next_l = || got_l.next().unwrap();
        let (ours_l, counted_l) = (next_l(), next_l());
        let (procfs_l, scans_l) = (next_l(), next_l());
        let lsns_l = lsns.clone().map(|()| got_l.next().unwrap());
        r.rows.push(Row {
            name: format!(
                "read the `tasks` of {CONTAINERS} containers in turn, {} processes",
                stats::thousands(total as u64),
            ),
            ours: ours_l,
            alts: vec![
                (
                    "nsproxyfs with `--discover` (index kept through forks and exits)".into(),
                    Ok(counted_l),
                ),
                ("nsproxyfs on the /proc path".into(), Ok(procfs_l)),
                ("one `lsns` run (spawn+wait)".into(), lsns_l),
                (
                    format!(
                        "Rust scan: readlink the uts link of every /proc pid, {CONTAINERS} times"
                    ),
                    Ok(scans_l),
                ),
            ],
            goal: if n >= 10_000 { "≤ 100,000 (#16)" } else { "" },
        });
        let resync_row = resync_stats.map(|(stats, procfs)| {
            discover::resync_row(total, stats, Some(procfs), lsns_stats.clone(), scan)
        });
        r.rows.push(Row {
            name: format!(
                "read `A/tasks`, {} processes ({} listed)",
                stats::thousands(total as u64),
                stats::thousands(listed_in_a as u64)
            ),
            ours: ours_a,
            alts: vec![(
                "Rust scan: readlink the uts link of every /proc pid".into(),
                Ok(scan_one),
            )],
            goal: "",
        });
        r.rows.extend(resync_row);
        drop(sleepers);
    }
}

fn calls(s: &Settings, fs: &Daemon, scratch: &Scratch, r: &mut Report) {
    say("stat and status against a bare FUSE filesystem");
    let status = std::fs::read(fs.path("status")).expect("read status");
    let bare =
        BareMount::start(&scratch.0.join("bare"), status).expect("mount the bare filesystem");
    let (ours_uts, bare_uts) = (fs.path("uts"), bare.path("uts"));
    let (ours_status, bare_status) = (fs.path("status"), bare.path("status"));
    let read_op = |name: &str, path: PathBuf| {
        let mut buf = [0u8; 4096];
        Op::new(name, move || timed(|| read_through(&path, &mut buf)))
    };
    let ops = vec![
        Op::new("stat uts", || timed(|| std::fs::metadata(&ours_uts))),
        Op::new("stat bare uts", || timed(|| std::fs::metadata(&bare_uts))),
        read_op("read status", ours_status.clone()),
        read_op("read bare status", bare_status.clone()),
    ];
    let mut got = measure(s.calls, ops).into_iter();
    let mut next = || got.next().unwrap();
    let (stat, bare_stat, read, bare_read) = (next(), next(), next(), next());
    r.rows.push(Row {
        name: "`stat` of a kind file (root's `uts`)".into(),
        ours: stat,
        alts: vec![(
            "the same on a bare fuser 0.18 filesystem".into(),
            Ok(bare_stat),
        )],
        goal: "≤ 2× bare",
    });
    r.rows.push(Row {
        name: "open+read+close of `status`".into(),
        ours: read,
        alts: vec![(
            "the same on a bare fuser 0.18 filesystem".into(),
            Ok(bare_read),
        )],
        goal: "≤ 2× bare",
    });
    drop(bare);
}

fn cycle(s: &Settings, fs: &Daemon, cg: Option<&Cgroups>, r: &mut Report) {
    say("mkdir / touch uts / ln / rmdir cycles");
    let dir = fs.path("cycle");
    let (uts, net, src) = (dir.join("uts"), dir.join("net"), fs.path("A/net"));
    let cg_dir = cg.map(|c| c.leaf("cycle"));
    let mut ops = vec![Op::new("container cycle", || {
        timed(|| {
            std::fs::create_dir(&dir)?;
            File::create(&uts)?;
            std::fs::hard_link(&src, &net)?;
            std::fs::remove_dir(&dir)
        })
    })];
    if let Some(d) = &cg_dir {
        ops.push(Op::new("cgroup cycle", move || {
            timed(|| {
                std::fs::create_dir(d)?;
                std::fs::remove_dir(d)
            })
        }));
    }
    let mut got = measure(s.cycle, ops).into_iter();
    let ours = got.next().unwrap();
    let alt = got.next().ok_or_else(|| "no cgroup2".to_string());
    let _ = std::fs::remove_dir(&dir);
    r.rows.push(Row {
        name: "`mkdir C; touch C/uts; ln A/net C/net; rmdir C`".into(),
        ours,
        alts: vec![("`mkdir` + `rmdir` of a cgroup2 directory".into(), alt)],
        goal: "",
    });
}

/// setns(fd, CLONE_NEWUTS) back and forth between two uts namespaces, in a
/// thread of its own (namespaces other than mnt and user are per thread).
/// What the daemon's BPF programs cost every other process: they run at
/// the exit of every system call on the host (docs/kernel-view.md).
fn syscall_cost(s: &Settings) -> Stats {
    say("system call cost");
    let op = Op::new("1,000 getppid", || {
        timed(|| {
            for _ in 0..1_000 {
                // SAFETY: getppid has no preconditions.
                unsafe { libc::getppid() };
            }
            Ok(())
        })
    });
    measure(s.calls, vec![op]).remove(0)
}

fn floor(s: &Settings, r: &mut Report) {
    say("setns() floor");
    let plan = s.floor;
    let stats = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let own = File::open("/proc/thread-self/ns/uts").expect("open own uts");
                // SAFETY: unshare with a constant; uts is per thread.
                let r = unsafe { libc::unshare(libc::CLONE_NEWUTS) };
                assert_eq!(r, 0, "unshare uts: {}", io::Error::last_os_error());
                let fresh = File::open("/proc/thread-self/ns/uts").expect("open fresh uts");
                let fds = [own, fresh];
                let mut next = 0;
                let op = Op::new("setns", || {
                    let fd = &fds[next];
                    next = 1 - next;
                    timed(|| {
                        use std::os::fd::AsRawFd;
                        // SAFETY: setns takes a descriptor we own and a
                        // constant; it changes only this thread.
                        let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWUTS) };
                        if r == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::last_os_error())
                        }
                    })
                });
                measure(plan, vec![op]).remove(0)
            })
            .join()
    })
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    r.rows.push(Row {
        name: "floor: in-process `setns(fd, CLONE_NEWUTS)`, back and forth".into(),
        ours: stats,
        alts: Vec::new(),
        goal: "",
    });
    say("wake-up floor");
    let free = wake_round_trips(plan, false);
    let pinned = wake_round_trips(plan, true);
    r.rows.push(Row {
        name: "floor: a wake-up there and back (one byte through a pipe to another thread and \
               back), each free to run on any CPU"
            .into(),
        ours: free,
        alts: vec![("the same, both threads on one CPU".into(), Ok(pinned))],
        goal: "",
    });
}

/// Round trips of one byte between this thread and a thread that echoes
/// it through a second pipe; with `one_cpu`, both on this thread's first
/// CPU. A move is a chain of about nine such wake-ups.
fn wake_round_trips(plan: Plan, one_cpu: bool) -> Stats {
    use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
    use nix::unistd::{Pid, pipe, read, write};
    let here = Pid::from_raw(0);
    let all = sched_getaffinity(here).expect("this thread's CPUs");
    let mut one = CpuSet::new();
    if let Some(cpu) = (0..CpuSet::count()).find(|&c| all.is_set(c).unwrap_or(false)) {
        one.set(cpu).expect("a CPU in range");
    }
    let mask = if one_cpu { one } else { all };
    let (there_r, there_w) = pipe().expect("pipe");
    let (back_r, back_w) = pipe().expect("pipe");
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let _ = sched_setaffinity(here, &mask);
            let mut b = [0u8; 1];
            while read(&there_r, &mut b).is_ok_and(|n| n == 1) {
                if write(&back_w, &b).is_err() {
                    break;
                }
            }
        });
        let _ = sched_setaffinity(here, &mask);
        let op = Op::new("wake-up round trip", || {
            timed(|| {
                let mut b = [0u8; 1];
                write(&there_w, b"x")?;
                read(&back_r, &mut b)?;
                Ok(())
            })
        });
        let stats = measure(plan, vec![op]).remove(0);
        let _ = sched_setaffinity(here, &all);
        drop(there_w);
        stats
    })
}

/// Lookups, readdir and moves with growing numbers of containers; the
/// daemon's RSS at each size.
fn scaling(s: &Settings, fs: &Daemon, sets: &Sets, r: &mut Report) {
    let target = Helper::start("target 1");
    let pid = target.pid();
    harness::step("make the deep chain");
    // A, B, and a chain of 8 nested containers: 10 to start with.
    let mut containers: Vec<PathBuf> = Vec::new();
    let mut deep = fs.path("deep");
    for level in 1..=8 {
        std::fs::create_dir(&deep).expect("mkdir deep chain");
        containers.push(deep.clone());
        if level < 8 {
            deep = deep.join(level.to_string());
        }
    }
    let deep_status = deep.join("status");
    let mut last = fs.path("deep");
    let mut count = 10;
    let in_a = Cell::new(false);
    let [ta, tb] = &sets.tasks;
    let measure_tree = |label: String, last: &Path| {
        say(&format!("scaling: {label}"));
        let root = fs.path("");
        let ops = vec![
            Op::new("stat one container", || timed(|| std::fs::metadata(last))),
            Op::new("stat deep status", || {
                timed(|| std::fs::metadata(&deep_status))
            }),
        ];
        let mut got = measure(s.scale, ops).into_iter();
        let (stat_one, stat_deep) = (got.next().unwrap(), got.next().unwrap());
        let ops = vec![
            Op::new("readdir root", || {
                timed(|| std::fs::read_dir(&root)?.try_for_each(|e| e.map(drop)))
            }),
            ns_move(
                "move in a big tree",
                sets,
                &in_a,
                pid,
                Delivery::held([ta, tb]),
            ),
        ];
        let mut got = measure(s.scale_slow, ops).into_iter();
        let (readdir, moves) = (got.next().unwrap(), got.next().unwrap());
        ScaleRow {
            label,
            stat_one,
            stat_deep,
            readdir,
            moves,
        }
    };
    // What a `mkdir` costs as the tree grows: every change rewrites the
    // whole record. The last 100 mkdirs before each size.
    let mut mkdir_costs = Vec::new();
    for &n in s.scale_sizes {
        harness::step(&format!("make {n} containers"));
        let mut mkdirs = Vec::new();
        while count < n {
            let c = fs.path(&format!("c{count:05}"));
            let took = timed(|| std::fs::create_dir(&c)).expect("mkdir a container");
            if count + 100 >= n {
                mkdirs.push(took);
            }
            containers.push(c.clone());
            last = c;
            count += 1;
            harness::progress();
        }
        let listed = std::fs::read_dir(fs.path(""))
            .map(|d| d.count())
            .unwrap_or(0);
        // Of the n containers, 7 are nested in the deep chain.
        assert!(listed >= n - 7, "the root lists {listed} entries");
        if !mkdirs.is_empty() {
            mkdir_costs.push((n, Stats::from_samples(mkdirs)));
        }
        let row = measure_tree(stats::thousands(n as u64), &last);
        r.scale.push(row);
        r.memory.push((
            format!(
                "{} containers (binding nothing of their own)",
                stats::thousands(n as u64)
            ),
            fs.rss_kib(),
        ));
    }
    let costs: Vec<String> = mkdir_costs
        .iter()
        .map(|(n, st)| {
            format!(
                "{} µs / {} µs up to {} containers (n={})",
                stats::us(st.median_us()),
                stats::us(st.p99_us()),
                stats::thousands(*n as u64),
                st.n()
            )
        })
        .collect();
    r.notes.push(format!(
        "`mkdir` of a container at the top (median / p99), the last ones before each size: {}.",
        costs.join("; ")
    ));
    let n = count;
    say(&format!(
        "binding a fresh uts namespace in {} containers",
        stats::thousands(containers.len() as u64)
    ));
    harness::step("touch uts in every container");
    let started = Instant::now();
    let mut touches = Vec::with_capacity(containers.len());
    for c in &containers {
        touches.push(timed(|| File::create(c.join("uts"))).expect("touch uts"));
        harness::progress();
    }
    let took = started.elapsed();
    let touches = Stats::from_samples(touches);
    r.notes.push(format!(
        "Binding a fresh uts namespace (`touch C/uts`) in {} containers took {:.1} s: \
         median {} µs, p99 {} µs each.",
        stats::thousands(touches.n() as u64),
        took.as_secs_f64(),
        stats::us(touches.median_us()),
        stats::us(touches.p99_us())
    ));
    let row = measure_tree(
        format!("{}, each binding its own uts", stats::thousands(n as u64)),
        &last,
    );
    r.scale.push(row);
    r.memory.push((
        format!(
            "{} containers, each binding its own fresh uts namespace (pinned)",
            stats::thousands(n as u64)
        ),
        fs.rss_kib(),
    ));
    drop(target);
}

/// Days since 1970-01-01 to a civil date (proleptic Gregorian).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil((secs / 86_400) as i64);
    format!(
        "{cpus} CPUs, {:.1} GiB RAM, Linux {}, {y}-{m:02}-{d:02}",
        mem_kib as f64 / 1_048_576.0,
        kernel.trim()
    )
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn print_report(s: &Settings, r: &Report, took: Duration, load: &str) {
    use stats::{ratio, thousands, us};
    println!();
    println!(
        "nsproxyfs end-to-end benchmark ({} mode, {:.0} s): {}",
        if s.quick { "quick" } else { "full" },
        took.as_secs_f64(),
        machine()
    );
    println!("Other work on the machine: {load}.");
    println!(
        "Times in µs; ratio = nsproxyfs median / alternative median (below 1: nsproxyfs is faster)."
    );
    println!();
    println!(
        "| measurement | median | p99 | n | alternative | median | p99 | n | ratio | SPEC goal |"
    );
    println!("|---|--:|--:|--:|---|--:|--:|--:|--:|---|");
    for row in &r.rows {
        let ours = &row.ours;
        let head = format!(
            "| {} | {} | {} | {} |",
            row.name,
            us(ours.median_us()),
            us(ours.p99_us()),
            thousands(ours.n() as u64)
        );
        if row.alts.is_empty() {
            println!("{head} (the floor) | | | | | {} |", row.goal);
        }
        for (i, (name, alt)) in row.alts.iter().enumerate() {
            let start = if i == 0 {
                head.clone()
            } else {
                "| ↳ | | | |".into()
            };
            let goal = if i == 0 { row.goal } else { "" };
            match alt {
                Ok(a) => println!(
                    "{start} {name} | {} | {} | {} | {} | {goal} |",
                    us(a.median_us()),
                    us(a.p99_us()),
                    thousands(a.n() as u64),
                    ratio(ours.median_us(), a.median_us())
                ),
                Err(why) => println!("{start} {name}: not measured ({why}) | | | | | {goal} |"),
            }
        }
    }
    if let Some(c) = &r.discovery {
        discover::print_exec_cost(c);
    }
    println!();
    println!("Scaling with the number of containers (µs, median / p99; samples: n):");
    println!();
    println!(
        "| containers | stat one container | stat 8-deep `status` | readdir of the root | move, 1 thread, held open |"
    );
    println!("|---|--:|--:|--:|--:|");
    let cell = |st: &Stats| {
        format!(
            "{} / {} (n={})",
            us(st.median_us()),
            us(st.p99_us()),
            thousands(st.n() as u64)
        )
    };
    for row in &r.scale {
        println!(
            "| {} | {} | {} | {} | {} |",
            row.label,
            cell(&row.stat_one),
            cell(&row.stat_deep),
            cell(&row.readdir),
            cell(&row.moves)
        );
    }
    println!();
    println!(
        "Daemon memory (VmRSS of the nsproxyfs process; SPEC goal: ≤ 64 MiB with 10,000 containers):"
    );
    println!();
    println!("| daemon state | VmRSS MiB |");
    println!("|---|--:|");
    for (what, kib) in &r.memory {
        println!("| {what} | {:.1} |", *kib as f64 / 1024.0);
    }
    for note in &r.notes {
        println!();
        println!("{note}");
    }
}

//! The discovery rows: what `--discover` costs and how soon it sees a
//! change, against a second daemon started with `--discover` (see
//! BENCHMARKS.md, "Discovery").
//!
//! * How long a new namespace set takes to appear under `.discovered`, and
//!   to leave it once its only process is killed, beside one `lsns` run:
//!   what each poll would cost a tool that polls instead.
//! * The daemon CPU time that process events cost: both daemons' utime +
//!   stime while the benchmark forks and execs `/bin/true` K times, and
//!   for as long again idle (the machine's other processes send events
//!   too), in turns.
//! * One full read of `/proc` as discovery does it every 30 s
//!   ([`resync_op`], also measured beside the `tasks` rows with 1,000 and
//!   10,000 sleeping processes).

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nsproxyfs::discover::Model;
use nsproxyfs::kview::Membership;
use nsproxyfs::procfs;

use crate::harness::{self, Daemon, Helper, Scratch};
use crate::stats::{self, Op, Stats, measure, timed};
use crate::{
    NS_ENTRIES, Report, Row, Settings, have, lsns_op, proc_blocker, process_count, say, scan_proc,
};

/// How often the latency rows look at `.discovered`: the figures are that
/// much coarser.
const POLL: Duration = Duration::from_millis(1);

/// A sample fails if its set has not appeared or left after this long.
const LIMIT: Duration = Duration::from_secs(15);

/// A daemon's CPU time in the exec and the idle windows, in ms, by
/// utime+stime ([`Daemon::cpu_ms`]) and by its threads' run time
/// ([`Daemon::run_ms`]).
#[derive(Default)]
pub struct Cpu {
    pub busy_ms: f64,
    pub idle_ms: f64,
    pub busy_run_ms: f64,
    pub idle_run_ms: f64,
}

/// What the exec turns found: daemon CPU time, and the host's forks.
pub struct ExecCost {
    pub execs: usize,
    pub turns: usize,
    /// Wall time of the exec windows (the idle ones last as long).
    pub wall: Duration,
    /// The daemon with `--discover`, and the one without.
    pub discover: Cpu,
    pub plain: Cpu,
    /// Forks on the whole host (`processes` of /proc/stat) in the exec and
    /// the idle windows.
    pub forks_busy: u64,
    pub forks_idle: u64,
}

/// The root container's set of a daemon the benchmark starts: the
/// benchmark's own, as the daemon is its child.
fn own_set() -> [u64; 8] {
    procfs::ns_set(std::process::id()).expect("read the benchmark's own namespaces")
}

/// One full read of `/proc` as discovery does it every 30 s: the crate's
/// own [`Model::rescan`] (for every pid, the eight namespace links by
/// readlinkat, and `/proc/PID/stat` for the processes outside the root's
/// set, to leave kernel threads out), on one model kept across samples as
/// the daemon keeps its.
pub fn resync_op<'a>() -> Op<'a> {
    let mut model = Model::new(own_set());
    // A fresh pass each time, as after any change: the iterator without
    // the counting programs (which the daemon has attached already).
    let (membership, _) = Membership::choose_with("iter", nsproxyfs::kview::bpf::Counting::Never);
    Op::new("discovery resync", move || {
        timed(|| {
            model.rescan_with(&membership);
            Ok(())
        })
    })
}

/// [`resync_op`] on the `/proc` path, whatever the kernel offers.
pub fn resync_procfs_op<'a>() -> Op<'a> {
    let mut model = Model::new(own_set());
    Op::new("discovery resync, /proc path", move || {
        timed(|| {
            model.rescan_with(&Membership::Proc);
            Ok(())
        })
    })
}

/// A process in new uts and net namespaces (`unshare --uts --net sleep`),
/// killed and reaped on drop.
struct Unshared(Child);

impl Unshared {
    fn start() -> io::Result<Unshared> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--uts", "--net", "sleep", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        harness::guard_child(&mut cmd, libc::SIGKILL);
        cmd.spawn().map(Unshared)
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python3 process that calls unshare(2) itself (new uts and net
/// namespaces) without an exec, when told to; killed and reaped on drop.
struct BareUnshare {
    child: Child,
    stdin: std::process::ChildStdin,
    stdout: io::BufReader<std::process::ChildStdout>,
}

impl BareUnshare {
    fn start() -> io::Result<BareUnshare> {
        let script = format!(
            "import ctypes, sys\n\
             libc = ctypes.CDLL(None, use_errno=True)\n\
             print('ready', flush=True)\n\
             sys.stdin.readline()\n\
             if libc.unshare({}) != 0: sys.exit(1)\n\
             print('done', flush=True)\n\
             sys.stdin.readline()\n",
            libc::CLONE_NEWUTS | libc::CLONE_NEWNET
        );
        let mut cmd = Command::new("python3");
        cmd.args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        harness::guard_child(&mut cmd, libc::SIGKILL);
        let mut child = cmd.spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout"))?;
        let mut p = BareUnshare {
            child,
            stdin,
            stdout: io::BufReader::new(stdout),
        };
        p.expect("ready")?;
        Ok(p)
    }

    fn expect(&mut self, want: &str) -> io::Result<()> {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        match line.trim_end() == want {
            true => Ok(()),
            false => Err(io::Error::other(format!(
                "python3 said {line:?}, not {want}"
            ))),
        }
    }

    /// Makes it unshare; returns once the call returned.
    fn unshare(&mut self) -> io::Result<()> {
        use std::io::Write;
        writeln!(self.stdin, "go")?;
        self.stdin.flush()?;
        self.expect("done")
    }
}

impl Drop for BareUnshare {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// From a bare unshare(2)'s return until its set is under `.discovered`,
/// polling every [`POLL`].
fn bare_appear(dir: &Path) -> io::Result<Duration> {
    let mut p = BareUnshare::start()?;
    let pid = p.child.id() as i32;
    let mut not_it = HashSet::new();
    // Entries there before the unshare are not it.
    find_by_uts(dir, 0, &mut not_it)?;
    p.unshare()?;
    let start = Instant::now();
    let uts = procfs::ns_link_inode(pid, "uts").ok_or_else(|| io::Error::other("gone"))?;
    loop {
        if find_by_uts(dir, uts, &mut not_it)?.is_some() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > LIMIT {
            return Err(io::Error::other(format!(
                "the set did not appear after {LIMIT:?}"
            )));
        }
        std::thread::sleep(POLL);
    }
}

/// The entry of `.discovered` (`dir`) whose `uts` kind file is uts
/// namespace `uts`. `not_it` holds the names already ruled out.
fn find_by_uts(
    dir: &Path,
    uts: u64,
    not_it: &mut HashSet<OsString>,
) -> io::Result<Option<OsString>> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        if not_it.contains(&name) {
            continue;
        }
        match std::fs::metadata(dir.join(&name).join("uts")) {
            Ok(md) if md.ino() == uts => return Ok(Some(name)),
            _ => {
                not_it.insert(name);
            }
        }
    }
    Ok(None)
}

/// Starts a process in new namespaces and times, polling every [`POLL`],
/// how long its set takes to appear under `.discovered` (returned) and,
/// once it is SIGKILLed, to leave (pushed to `leaves`).
fn appear_and_leave(dir: &Path, leaves: &RefCell<Vec<Duration>>) -> io::Result<Duration> {
    let timeout = |what: &str| io::Error::other(format!("{what} after {LIMIT:?}"));
    let mut not_it = HashSet::new();
    let start = Instant::now();
    let mut child = Unshared::start()?;
    let pid = child.pid();
    // The process is in its final namespaces once it runs sleep.
    let mut uts = None;
    let name = loop {
        if uts.is_none() && procfs::comm(pid).as_deref() == Some("sleep") {
            uts = procfs::ns_link_inode(pid, "uts");
        }
        if let Some(uts) = uts
            && let Some(name) = find_by_uts(dir, uts, &mut not_it)?
        {
            break name;
        }
        if start.elapsed() > LIMIT {
            return Err(timeout("the set did not appear"));
        }
        std::thread::sleep(POLL);
    };
    let appear = start.elapsed();
    let entry = dir.join(name);
    let start = Instant::now();
    child.0.kill()?;
    loop {
        match std::fs::metadata(&entry) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            _ if start.elapsed() > LIMIT => return Err(timeout("the set did not leave")),
            _ => std::thread::sleep(POLL),
        }
    }
    leaves.borrow_mut().push(start.elapsed());
    drop(child);
    Ok(appear)
}

/// The `processes` line of /proc/stat: forks since boot, host-wide.
fn host_forks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("processes "))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Forks and execs `/bin/true` `s.execs` times in `s.exec_turns` turns,
/// each followed by as long idle, reading both daemons' CPU time around
/// each window.
fn exec_cost(s: &Settings, plain: &Daemon, disc: &Daemon) -> ExecCost {
    say(&format!(
        "daemon CPU time over {} execs of /bin/true",
        stats::thousands(s.execs as u64)
    ));
    let mut c = ExecCost {
        execs: 0,
        turns: s.exec_turns,
        wall: Duration::ZERO,
        discover: Cpu::default(),
        plain: Cpu::default(),
        forks_busy: 0,
        forks_idle: 0,
    };
    let per_turn = s.execs.div_ceil(s.exec_turns);
    let read = |d: &Daemon| (d.cpu_ms(), d.run_ms());
    let sample = || (read(disc), read(plain), host_forks(), Instant::now());
    let add = |cpu: &mut Cpu, a: (f64, f64), b: (f64, f64), c: (f64, f64)| {
        cpu.busy_ms += b.0 - a.0;
        cpu.busy_run_ms += b.1 - a.1;
        cpu.idle_ms += c.0 - b.0;
        cpu.idle_run_ms += c.1 - b.1;
    };
    for turn in 0..s.exec_turns {
        harness::step(&format!("exec turn {turn}"));
        let (d0, p0, f0, t0) = sample();
        for _ in 0..per_turn {
            let status = Command::new("/bin/true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run /bin/true");
            assert!(status.success(), "/bin/true: {status}");
            harness::progress();
        }
        let (d1, p1, f1, t1) = sample();
        harness::step(&format!("idle turn {turn}"));
        let busy = t1 - t0;
        while t1.elapsed() < busy {
            std::thread::sleep(Duration::from_millis(10).min(busy));
            harness::progress();
        }
        let (d2, p2, f2, _) = sample();
        c.execs += per_turn;
        c.wall += busy;
        add(&mut c.discover, d0, d1, d2);
        add(&mut c.plain, p0, p1, p2);
        c.forks_busy += f1 - f0;
        c.forks_idle += f2 - f1;
    }
    c
}

/// The discovery rows; see the module's comment.
pub fn discovery(s: &Settings, plain: &Daemon, scratch: &Scratch, r: &mut Report) {
    // Discovery reads /proc in full, as `tasks` does: a process that
    // blocks such reads would hold it (see `proc_blocker`).
    if let Some(why) = proc_blocker() {
        say(&format!("discovery rows left out: {why}"));
        r.notes.push(format!(
            "The discovery rows were not measured: {why}, and every full read of /proc waits for it."
        ));
        return;
    }
    say("discovery: a daemon with --discover");
    let disc = Daemon::start_with(scratch, "discover", &["--discover"]);
    let dir = disc.path(".discovered");
    // The first full read of /proc and the first publication.
    let deadline = Instant::now() + LIMIT;
    while std::fs::read_dir(&dir).is_err() {
        assert!(
            Instant::now() < deadline,
            "no .discovered: {}",
            disc.log_text()
        );
        std::thread::sleep(Duration::from_millis(10));
        harness::progress();
    }
    let no_events = disc
        .log_text()
        .lines()
        .any(|l| l.contains("process events are not available"));
    if no_events {
        r.notes.push(
            "The `--discover` daemon had no process events (see its log): it read /proc \
             in full every 3 s instead, and the discovery figures show that."
                .into(),
        );
    }

    let unshare = have("unshare");
    let lsns = have("lsns");
    let total = process_count();
    let leaves = RefCell::new(Vec::new());
    let lsns_failed = Cell::new(0);
    let mut ops = vec![
        resync_op(),
        Op::new("scan /proc, 8 links", || timed(|| scan_proc(&NS_ENTRIES))),
    ];
    if unshare.is_ok() {
        ops.push(Op::new("appear and leave", || {
            appear_and_leave(&dir, &leaves)
        }));
    }
    let bare = have("python3");
    if bare.is_ok() {
        ops.push(Op::new("bare unshare appears", || bare_appear(&dir)));
    }
    if lsns.is_ok() {
        ops.push(lsns_op(&lsns_failed));
    }
    say("discovery: latency to appear and leave, one lsns run, resync");
    let mut got = measure(s.discover, ops).into_iter();
    let (resync, scan) = (got.next().unwrap(), got.next().unwrap());
    let appear = unshare.clone().map(|()| got.next().unwrap());
    let bare = bare.map(|()| got.next().unwrap());
    let lsns_stats = lsns.map(|()| got.next().unwrap());
    if lsns_failed.get() > 0 {
        r.notes.push(format!(
            "`lsns` in the discovery rows exited non-zero in {} of its runs (a process \
             vanished during its scan); those runs are counted.",
            lsns_failed.get()
        ));
    }
    let lsns_name = "one `lsns` run (spawn+wait): the cost of each poll, were one to poll";
    match bare {
        Ok(bare) => r.rows.push(Row {
            name: format!(
                "`--discover`: a set made by a bare unshare(2) (no exec) appears under \
                 `.discovered` (from its return; batching delay {} ms)",
                nsproxyfs::discover::SETTLE.as_millis()
            ),
            ours: bare,
            alts: vec![(lsns_name.into(), lsns_stats.clone())],
            goal: "≤ 110,000 (#16)",
        }),
        Err(why) => r
            .notes
            .push(format!("The bare unshare row was not measured: {why}.")),
    }
    match appear {
        Ok(appear) => {
            // The first `warmup` leaves were the warm-up's.
            let leaves = leaves.into_inner().split_off(s.discover.warmup);
            r.rows.push(Row {
                name: "`--discover`: new set appears under `.discovered` \
                       (spawn `unshare --uts --net sleep` until its directory is there)"
                    .into(),
                ours: appear,
                alts: vec![(lsns_name.into(), lsns_stats.clone())],
                goal: "",
            });
            r.rows.push(Row {
                name: "`--discover`: set leaves `.discovered` (SIGKILL of its only process \
                       until its directory is gone)"
                    .into(),
                ours: Stats::from_samples(leaves),
                alts: vec![(lsns_name.into(), lsns_stats.clone())],
                goal: "",
            });
        }
        Err(why) => r.notes.push(format!(
            "The discovery latency rows were not measured: {why}."
        )),
    }
    r.rows
        .push(resync_row(total, resync, None, lsns_stats, scan));

    say("discovery: one read of a process's namespace set");
    let target = Helper::start("target 1");
    let pid = target.pid() as u32;
    let read = Op::new("ns_set", || {
        timed(|| procfs::ns_set(pid).ok_or_else(|| io::Error::other("ns_set failed")))
    });
    r.rows.push(Row {
        name: "floor of an exec's cost to `--discover`: `procfs::ns_set` of one process \
               (open its `ns` directory, 8 readlinkat)"
            .into(),
        ours: measure(s.calls, vec![read]).remove(0),
        alts: Vec::new(),
        goal: "",
    });
    drop(target);
    r.discovery = Some(exec_cost(s, plain, &disc));
    r.memory.push((
        "the `--discover` daemon, after the discovery rows".into(),
        disc.rss_kib(),
    ));
    drop(disc);
}

/// The row of one full resync with `total` processes on the host.
pub fn resync_row(
    total: usize,
    resync: Stats,
    procfs: Option<Stats>,
    lsns: Result<Stats, String>,
    scan: Stats,
) -> Row {
    let procfs = procfs.map(|p| ("discovery's resync on the /proc path".to_owned(), Ok(p)));
    Row {
        name: format!(
            "`--discover`: full resync (every 30 s), {} processes",
            stats::thousands(total as u64)
        ),
        ours: resync,
        alts: procfs
            .into_iter()
            .chain([
                ("`lsns` (spawn+wait)".into(), lsns),
                (
                    "Rust scan: readlink 8 ns links of every /proc pid".into(),
                    Ok(scan),
                ),
            ])
            .collect(),
        goal: if total >= 10_000 {
            "≤ 10,000 (#16)"
        } else {
            ""
        },
    }
}

/// Prints what [`exec_cost`] found.
pub fn print_exec_cost(c: &ExecCost) {
    let per_k = |busy: f64, idle: f64| (busy - idle) * 1000.0 / c.execs.max(1) as f64;
    println!();
    println!(
        "Steady cost of process events: daemon CPU time (ms) while the benchmark forked and \
         exec'd `/bin/true` {} times ({:.1} s), and for as long again idle, in {} turns; by \
         utime+stime of /proc/PID/stat (10 ms ticks) and, finer, by the run time of its \
         threads (/proc/PID/task/*/schedstat):",
        stats::thousands(c.execs as u64),
        c.wall.as_secs_f64(),
        c.turns
    );
    println!();
    println!(
        "| daemon | utime+stime, exec windows | idle windows | per 1,000 execs (exec − idle) \
         | threads' run time, exec windows | idle windows | per 1,000 execs (exec − idle) |"
    );
    println!("|---|--:|--:|--:|--:|--:|--:|");
    for (what, cpu) in [
        ("with `--discover`", &c.discover),
        ("without `--discover`", &c.plain),
    ] {
        println!(
            "| {what} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            cpu.busy_ms,
            cpu.idle_ms,
            per_k(cpu.busy_ms, cpu.idle_ms),
            cpu.busy_run_ms,
            cpu.idle_run_ms,
            per_k(cpu.busy_run_ms, cpu.idle_run_ms)
        );
    }
    println!();
    println!(
        "Forks on the whole host (/proc/stat `processes`): {} in the exec windows ({} of them \
         the benchmark's), {} in the idle windows.",
        stats::thousands(c.forks_busy),
        stats::thousands(c.execs as u64),
        stats::thousands(c.forks_idle)
    );
}

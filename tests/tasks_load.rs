//! `tasks` under load: many concurrent moves of running processes between
//! containers, with the tree changing meanwhile, and a daemon killed in the
//! middle of a storm of moves.
//!
//! Both tests check the outcome from `/proc`, never from the daemon's word:
//! every target must sit wholly in one container's set (all eight kinds of
//! one set, never a mix), still run, and still do its work correctly.
//!
//! Writes to `tasks` come from `bash` processes started from the test thread,
//! so they share its private mount namespace where the mount lives. Each
//! prints one line per write, `PID CONTAINER OK` or `PID CONTAINER FAIL
//! reason`, in the order it wrote; bash's `echo` names the errno on failure.
//!
//! The moves are drawn from a small LCG. The seed is printed; set
//! `NSPROXYFS_LOAD_SEED` to run the same draws again.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The inodes of a process's or a container's namespaces, in [`KINDS`]
/// order (pid and time as for children).
type NsSet = [u64; 8];

/// `net:[4026532240]` -> 4026532240.
fn parse_ns_text(text: &str) -> u64 {
    text.trim()
        .split_once(":[")
        .and_then(|(_, rest)| rest.strip_suffix(']'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a namespace: {text:?}"))
}

/// A container's effective set, as its `status` names it.
fn container_set(m: &Mount, container: &str) -> NsSet {
    let status = m.status(container);
    assert_eq!(status.len(), 8, "{container}/status: {status:?}");
    std::array::from_fn(|i| {
        let line = &status[i];
        assert_eq!(line[0], KINDS[i], "{container}/status order");
        parse_ns_text(&line[1])
    })
}

/// The set a process is in, or `None` if it is gone.
fn process_set(pid: i32) -> Option<NsSet> {
    let mut set = [0u64; 8];
    for (i, kind) in KINDS.iter().enumerate() {
        let md = std::fs::metadata(format!("/proc/{pid}/ns/{}", proc_entry(kind))).ok()?;
        set[i] = md.ino();
    }
    Some(set)
}

/// The state letter of `/proc/PID/stat` (`R`, `S`, `t`, `Z`...).
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// The parent pid from `/proc/PID/stat`.
fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The kinds of `got` that differ from `want`, for messages.
fn differing(got: &NsSet, want: &NsSet) -> Vec<&'static str> {
    (0..8)
        .filter(|&i| got[i] != want[i])
        .map(|i| KINDS[i])
        .collect()
}

/// Which known set `got` is, or a description of how it mixes them.
fn identify(got: &NsSet, known: &BTreeMap<String, NsSet>) -> Result<String, String> {
    if let Some((name, _)) = known.iter().find(|(_, s)| *s == got) {
        return Ok(name.clone());
    }
    let per_kind: Vec<String> = (0..8)
        .map(|i| {
            let owners: Vec<&str> = known
                .iter()
                .filter(|(_, s)| s[i] == got[i])
                .map(|(n, _)| n.as_str())
                .collect();
            format!("{}={}{:?}", KINDS[i], got[i], owners)
        })
        .collect();
    Err(per_kind.join(" "))
}

/// What a target does, so that it can be checked afterwards.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Work {
    /// Sleeps in a loop (blocked in wait4 most of the time).
    Idle,
    /// Appends 1, 2, 3... to `count.PID`, sleeping 10 ms between lines.
    Counter,
    /// Sums 1..20000 in shell arithmetic over and over and appends each sum
    /// to `sum.PID`: user-space work, so a move mostly catches it between
    /// two instructions rather than in a syscall, and any register not put
    /// back shows as a wrong sum or a crash.
    Sum,
}

const SUM: &str = "200010000";

/// A process to be moved around. Every target answers SIGUSR1 by writing
/// `hostname` (run in a child, so in the namespaces the target is in) to
/// `host.PID`. It leads its own process group, killed as a whole on drop.
struct Target {
    child: Child,
    pid: i32,
    work: Work,
}

impl Target {
    fn start(m: &Mount, dir: &Path, work: Work, idle_sleep: &str) -> Target {
        let trap = r#"trap 'hostname >"$D/host.$$"' USR1; "#;
        let body = match work {
            Work::Idle => format!("while :; do sleep {idle_sleep}; done"),
            Work::Counter => {
                r#"i=0; while :; do i=$((i+1)); echo $i >>"$D/count.$$"; sleep 0.01; done"#
                    .to_owned()
            }
            Work::Sum => concat!(
                "while :; do i=0; s=0; while [ $i -lt 20000 ]; do i=$((i+1)); s=$((s+i)); done; ",
                r#"echo $s >>"$D/sum.$$"; done"#
            )
            .to_owned(),
        };
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("{trap}{body}"))
            .env("D", dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn a target");
        let pid = child.id() as i32;
        m.watch_pid(pid);
        if work == Work::Sum {
            // Busy, but not so busy that the daemon starves on two cores.
            // SAFETY: setpriority takes integers; the pid is our child.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 10) };
        }
        Target { child, pid, work }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // SAFETY: kill takes integers; the group is the one this target leads.
        unsafe { libc::kill(-self.pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Starts `count` targets, `counters` and `sums` of them doing checkable
/// work, spread over the list.
fn start_targets(
    m: &Mount,
    dir: &Path,
    count: usize,
    counters: usize,
    sums: usize,
    idle_sleep: &str,
) -> Vec<Target> {
    m.step.set("start the targets");
    let step = count / (counters + sums).max(1);
    (0..count)
        .map(|i| {
            let work = if i % step == 0 && i / step < counters {
                Work::Counter
            } else if i % step == 0 && i / step < counters + sums {
                Work::Sum
            } else {
                Work::Idle
            };
            Target::start(m, dir, work, idle_sleep)
        })
        .collect()
}

/// One write to a `tasks` file and how it went.
#[derive(Clone, Debug)]
struct Outcome {
    pid: i32,
    container: String,
    /// `None` on success, else the reason bash printed (`strerror`).
    error: Option<String>,
}

/// A bash process writing pids to `tasks` files, one write() per line.
struct Writer {
    name: String,
    proc: Proc,
    out: PathBuf,
}

/// The bash lines that move `pid` to `container` and report how it went.
fn move_lines(script: &mut String, pid: i32, container: &str) {
    script.push_str(&format!(
        "if echo {pid} 2>\"$E\" >\"$M/{container}/tasks\"; then echo '{pid} {container} OK'; \
         else read -r e <\"$E\"; echo \"{pid} {container} FAIL $e\"; fi\n"
    ));
}

impl Writer {
    /// Starts `bash` on `script`, with `$M` the mount and `$E` a scratch
    /// file for the error of the last write.
    fn start(m: &Mount, name: &str, script: &str) -> Writer {
        let file = m.scratch(&format!("{name}.sh"));
        let out = m.scratch(&format!("{name}.out"));
        std::fs::write(&file, script).unwrap();
        let child = Command::new("bash")
            .arg("--norc")
            .arg("--noprofile")
            .arg(&file)
            .env("M", &m.dir)
            .env("E", m.scratch(&format!("{name}.err")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(m.scratch(&format!("{name}.stderr"))).unwrap())
            .spawn()
            .expect("spawn bash");
        m.watch_pid(child.id() as i32);
        Writer {
            name: name.to_owned(),
            proc: Proc(child),
            out,
        }
    }

    /// A writer doing `moves` once, in order.
    fn once(m: &Mount, name: &str, moves: &[(i32, String)]) -> Writer {
        let mut script = String::new();
        for (pid, c) in moves {
            move_lines(&mut script, *pid, c);
        }
        Writer::start(m, name, &script)
    }

    fn running(&mut self) -> bool {
        matches!(self.proc.0.try_wait(), Ok(None))
    }

    /// Waits for the end (bounded) and returns the outcomes, in order.
    fn finish(&mut self, m: &Mount) -> Vec<Outcome> {
        m.step.set(&format!("wait for writer {}", self.name));
        let status = wait_bounded(&mut self.proc.0, Duration::from_secs(60));
        assert!(status.success(), "writer {} ended with {status}", self.name);
        let text = std::fs::read_to_string(&self.out).unwrap();
        text.lines()
            .map(|line| {
                let mut f = line.splitn(4, ' ');
                let (pid, container, verdict) = (f.next(), f.next(), f.next());
                let pid = pid.and_then(|p| p.parse().ok());
                match (pid, container, verdict) {
                    (Some(pid), Some(c), Some("OK")) => Outcome {
                        pid,
                        container: c.to_owned(),
                        error: None,
                    },
                    (Some(pid), Some(c), Some("FAIL")) => Outcome {
                        pid,
                        container: c.to_owned(),
                        // "bash: line 7: echo: write error: Device or resource busy"
                        error: Some(
                            f.next()
                                .unwrap_or("")
                                .rsplit(": ")
                                .next()
                                .unwrap_or("")
                                .to_owned(),
                        ),
                    },
                    _ => panic!("writer {}: odd line {line:?}", self.name),
                }
            })
            .collect()
    }
}

/// Makes container `name` with fresh namespaces of `kinds`, and names its
/// uts namespace `hostname` (through the pin `status` prints). Returns its
/// effective set.
fn fresh_container(m: &Mount, name: &str, kinds: &[&str], hostname: &str) -> NsSet {
    m.step.set(&format!("make {name}"));
    std::fs::create_dir(m.path(name)).unwrap_or_else(|e| panic!("mkdir {name}: {e}"));
    for kind in kinds {
        std::fs::File::create(m.path(&format!("{name}/{kind}")))
            .unwrap_or_else(|e| panic!("touch {name}/{kind}: {e}"));
    }
    let pin = m.pin(name, "uts");
    sh_ok(&format!("nsenter --uts='{pin}' hostname '{hostname}'"));
    assert_eq!(
        sh_ok(&format!("nsenter --uts='{pin}' hostname")).trim(),
        hostname
    );
    let set = container_set(m, name);
    for kind in kinds {
        let i = KINDS.iter().position(|k| k == kind).unwrap();
        let md = std::fs::metadata(m.path(&format!("{name}/{kind}"))).unwrap();
        assert_eq!(md.ino(), set[i], "{name}/{kind} names its own {kind}");
    }
    set
}

/// The hostname of the calling thread's uts namespace.
fn own_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

/// Asks every target for its hostname (SIGUSR1) and checks that each
/// answers with the one of the set `/proc` says it is in: the process
/// itself, not only its `/proc` entry, lives in the namespaces. Returns the
/// problems found.
fn check_hostnames(
    m: &Mount,
    dir: &Path,
    targets: &[&Target],
    want: &HashMap<i32, String>,
) -> Vec<String> {
    m.step.set("ask the targets for their hostname");
    for t in targets {
        let _ = std::fs::remove_file(dir.join(format!("host.{}", t.pid)));
        // SAFETY: kill takes integers; the pid is our child.
        unsafe { libc::kill(t.pid, libc::SIGUSR1) };
    }
    let answer = |pid: i32| {
        std::fs::read_to_string(dir.join(format!("host.{pid}")))
            .ok()
            .filter(|a| a.ends_with('\n'))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !targets.iter().all(|t| answer(t.pid).is_some()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut problems = Vec::new();
    for t in targets {
        match answer(t.pid) {
            None => problems.push(format!(
                "target {} ({:?}) did not answer SIGUSR1 (SigBlk {:?})",
                t.pid,
                t.work,
                status_field(t.pid, "SigBlk")
            )),
            Some(a) if a.trim() != want[&t.pid] => problems.push(format!(
                "target {} ({:?}) sees hostname {:?}, /proc says it is in {:?}'s set",
                t.pid,
                t.work,
                a.trim(),
                want[&t.pid]
            )),
            Some(_) => {}
        }
    }
    problems
}

/// The numbers a target appended to its file.
fn numbers(dir: &Path, file: &str, pid: i32) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{file}.{pid}")))
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Checks that counters counted 1, 2, 3... without a gap or a repeat, that
/// every sum is right, and that both go on after the moves. Returns the
/// problems found.
fn check_work(m: &Mount, dir: &Path, targets: &[&Target]) -> Vec<String> {
    m.step.set("check the targets' work");
    let mut problems = Vec::new();
    let mut seen = Vec::new();
    for t in targets {
        let file = match t.work {
            Work::Idle => continue,
            Work::Counter => "count",
            Work::Sum => "sum",
        };
        let lines = numbers(dir, file, t.pid);
        // The last line may be half written.
        let complete = &lines[..lines.len().saturating_sub(1)];
        let wrong = complete.iter().enumerate().find(|(i, n)| match t.work {
            Work::Counter => **n != (i + 1).to_string(),
            _ => *n != SUM,
        });
        if let Some((i, n)) = wrong {
            problems.push(format!(
                "target {} ({:?}): line {} of {file}.PID is {n:?}",
                t.pid,
                t.work,
                i + 1
            ));
        }
        seen.push((t.pid, t.work, file, lines.len()));
    }
    // Two more complete lines: it still runs, and runs right. The summing
    // targets ran at nice 10 so as not to starve the daemon during the
    // storm; from here they run at the default priority, as the question
    // is whether they work, not how a busy machine shares its CPUs (the
    // other load test of this binary may be in its storm meanwhile).
    for (pid, work, ..) in &seen {
        if *work == Work::Sum {
            // SAFETY: setpriority takes integers; the pid is our child.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, *pid as libc::id_t, 0) };
        }
    }
    let grew =
        |&(pid, _, file, n): &(i32, Work, &str, usize)| numbers(dir, file, pid).len() > n + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !seen.iter().all(grew) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for s in seen.iter().filter(|s| !grew(s)) {
        let (pid, work, file, n) = s;
        problems.push(format!(
            "target {pid} ({work:?}) stopped working: {file}.PID stays at {n} lines"
        ));
    }
    problems
}

/// Processes that sit in one of `uts` namespaces and are neither a target
/// nor a child of one: holders the daemon left behind. Each as pid, name
/// and uts inode.
fn strays(uts: &BTreeSet<u64>, targets: &[Target]) -> Vec<(i32, String, u64)> {
    let ours: BTreeSet<i32> = targets.iter().map(|t| t.pid).collect();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(md) = std::fs::metadata(format!("/proc/{pid}/ns/uts")) else {
            continue;
        };
        if !uts.contains(&md.ino()) || ours.contains(&pid) {
            continue;
        }
        // A process that is gone by now (a target's short-lived child, say)
        // holds nothing.
        let (Some(ppid), Ok(comm)) = (
            ppid_of(pid),
            std::fs::read_to_string(format!("/proc/{pid}/comm")),
        ) else {
            continue;
        };
        if !ours.contains(&ppid) {
            found.push((pid, comm.trim().to_owned(), md.ino()));
        }
    }
    found
}

/// Which containers a target may end in, from the writes that succeeded.
///
/// Writes of one writer are sequential. The last change to a target was made
/// by some writer, and any later successful write of that same writer found
/// the target already there; so the target ends in the container of the
/// last successful write of one of the writers that moved it. Writers of a
/// later phase (the storm after the warm-up) rule out earlier ones.
fn candidates(
    pid: i32,
    phases: &[Vec<(String, Vec<Outcome>)>],
) -> Option<(BTreeSet<String>, bool)> {
    for phase in phases.iter().rev() {
        let lasts: Vec<&str> = phase
            .iter()
            .filter_map(|(_, outcomes)| {
                outcomes
                    .iter()
                    .rev()
                    .find(|o| o.pid == pid && o.error.is_none())
                    .map(|o| o.container.as_str())
            })
            .collect();
        if !lasts.is_empty() {
            let raced = lasts.len() > 1;
            return Some((lasts.into_iter().map(str::to_owned).collect(), raced));
        }
    }
    None
}

/// 200 running processes, about 1,000 moves among four containers from
/// eight concurrent writers, while the test thread reads `status` and
/// `tasks`, makes and removes containers, and keeps making a fifth container
/// `cx`, moving targets into it and removing it while moves are in flight.
///
/// Afterwards every target is wholly in one known set (c0..c3, a former cx,
/// or the root's if never moved): the one its last successful write sent it
/// to. Targets each owned by one writer must never see a failed write;
/// targets shared by several writers may see EBUSY (another move holds
/// them) or EAGAIN (another move changed them between a move's choice of
/// kinds and its stop), and end in the container of one of the competing
/// writes, never half moved.
#[test]
fn concurrent_moves_under_load() {
    let test = "concurrent_moves_under_load";
    let Some(m) = Mount::new(test) else { return };
    let mut rng = Rng::seeded(test, "NSPROXYFS_LOAD_SEED");
    let dir = m.scratch("work");
    std::fs::create_dir(&dir).unwrap();

    let root = container_set(&m, "");
    let mut known: BTreeMap<String, NsSet> = BTreeMap::new();
    let mut hostnames: HashMap<String, String> = HashMap::new();
    known.insert("root".into(), root);
    hostnames.insert("root".into(), own_hostname());
    let containers: Vec<String> = (0..4).map(|i| format!("c{i}")).collect();
    for c in &containers {
        let set = fresh_container(&m, c, &["uts", "ipc", "net"], c);
        assert_eq!(differing(&set, &root), ["ipc", "net", "uts"], "{c}'s set");
        assert!(!known.values().any(|s| *s == set), "{c} is a new set");
        known.insert(c.clone(), set);
        hostnames.insert(c.clone(), c.clone());
    }

    let targets = start_targets(&m, &dir, 200, 14, 6, "0.5");
    let pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
    // Every fourth target is shared by all writers (and the cx moves); the
    // others are split among the writers, one owner each.
    let shared: Vec<i32> = pids.iter().copied().skip(2).step_by(4).collect();
    let owned: Vec<i32> = pids
        .iter()
        .copied()
        .filter(|p| !shared.contains(p))
        .collect();
    let writers = 8;
    let owned_by = |w: usize| -> Vec<i32> {
        owned
            .iter()
            .copied()
            .enumerate()
            .filter(|(i, _)| i % writers == w)
            .map(|(_, p)| p)
            .collect()
    };

    // Warm-up: one writer alone, timed, to size the storm to this machine.
    m.step.set("warm-up moves");
    let warm: Vec<(i32, String)> = (0..40)
        .map(|_| {
            (
                shared[rng.below(shared.len())],
                containers[rng.below(4)].clone(),
            )
        })
        .collect();
    let t0 = Instant::now();
    let mut w = Writer::once(&m, "warmup", &warm);
    let warm_out = w.finish(&m);
    let per_move = t0.elapsed() / warm.len() as u32;
    for o in &warm_out {
        assert_eq!(
            o.error, None,
            "warm-up move of {} to {}",
            o.pid, o.container
        );
    }
    // About 1,000 moves, fewer if one move takes long here: at most some
    // 45 s of single-writer time, which eight writers get through in a
    // fraction of that.
    let budget = Duration::from_secs(45).as_micros() / per_move.as_micros().max(1);
    let total = budget.clamp(200, 1000) as usize / writers * writers;
    note(&format!("{test}: storm of {total} moves"));

    // The storm.
    m.step.set("start the writers");
    let mut storm: Vec<Writer> = (0..writers)
        .map(|w| {
            let mine = owned_by(w);
            let moves: Vec<(i32, String)> = (0..total / writers)
                .map(|_| {
                    let pid = if rng.below(10) < 3 {
                        shared[rng.below(shared.len())]
                    } else {
                        mine[rng.below(mine.len())]
                    };
                    (pid, containers[rng.below(4)].clone())
                })
                .collect();
            Writer::once(&m, &format!("w{w}"), &moves)
        })
        .collect();

    // Meanwhile: the daemon keeps answering everything else, and `cx` comes
    // and goes with moves racing its rmdir.
    let mut rounds = 0;
    let mut cx_phase: Vec<(String, Vec<Outcome>)> = Vec::new();
    let mut cx_uts = BTreeSet::new();
    while storm.iter_mut().any(Writer::running) || rounds < 3 {
        rounds += 1;
        for c in &containers {
            m.step.set(&format!("read {c}/status during the storm"));
            let status = m.status(c);
            assert_eq!(status.len(), 8, "{c}/status");
            for line in &status {
                let own = ["uts", "ipc", "net"].contains(&line[0].as_str());
                assert_eq!(line[2], if own { "own" } else { "/" }, "{c}: {line:?}");
            }
            let listed: Vec<i32> = m
                .read(&format!("{c}/tasks"))
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            assert!(listed.windows(2).all(|w| w[0] < w[1]), "{c}/tasks ascends");
        }
        let scratch = format!("s{rounds}");
        m.step.set("mkdir and rmdir during the storm");
        std::fs::create_dir(m.path(&scratch)).unwrap();
        assert!(m.path(&format!("{scratch}/tasks")).exists());
        std::fs::remove_dir(m.path(&scratch)).unwrap();

        let gen_name = format!("cx#{rounds}");
        let set = fresh_container(&m, "cx", &["uts"], "cx");
        assert_eq!(differing(&set, &root), ["uts"], "cx's set");
        cx_uts.insert(set[KINDS.iter().position(|k| *k == "uts").unwrap()]);
        // Inode numbers are unique only among live namespaces: a former cx
        // whose uts namespace died (no target left in it) may share its
        // number with this one, and nothing can be in that one any more.
        known.retain(|_, s| *s != set);
        known.insert(gen_name.clone(), set);
        hostnames.insert(gen_name.clone(), "cx".into());
        let moves: Vec<(i32, String)> = (0..3)
            .map(|_| (shared[rng.below(shared.len())], "cx".to_owned()))
            .collect();
        let mut helper = Writer::once(&m, &format!("cx{rounds}"), &moves);
        // Sometimes before the first move, sometimes after the last.
        let moves_time = per_move.as_micros() as u64 * 4;
        std::thread::sleep(Duration::from_micros(rng.range(0, moves_time.max(1000))));
        m.step.set("rmdir cx while moves into it are in flight");
        std::fs::remove_dir(m.path("cx")).unwrap();
        assert!(!m.path("cx").exists());
        let outcomes: Vec<Outcome> = helper
            .finish(&m)
            .into_iter()
            .map(|mut o| {
                o.container = gen_name.clone();
                o
            })
            .collect();
        for o in &outcomes {
            if let Some(e) = &o.error {
                assert!(
                    [
                        "No such file or directory",
                        "Device or resource busy",
                        "Resource temporarily unavailable"
                    ]
                    .contains(&e.as_str()),
                    "move of {} into {gen_name}: {e}",
                    o.pid
                );
            }
        }
        cx_phase.push((gen_name, outcomes));
    }

    let mut storm_phase: Vec<(String, Vec<Outcome>)> = Vec::new();
    for w in &mut storm {
        let outcomes = w.finish(&m);
        assert_eq!(
            outcomes.len(),
            total / writers,
            "writer {} wrote all",
            w.name
        );
        storm_phase.push((w.name.clone(), outcomes));
    }
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    for (name, outcomes) in &storm_phase {
        for o in outcomes {
            let Some(e) = &o.error else { continue };
            *errors.entry(e.clone()).or_default() += 1;
            assert!(
                shared.contains(&o.pid),
                "writer {name}: move of {} (its own target, nobody else moves it) to {} \
                 failed: {e}",
                o.pid,
                o.container
            );
            // Another move of it holds it (EBUSY), or moved it between
            // this move's choice of kinds and its stop (EAGAIN).
            assert!(
                [
                    "Device or resource busy",
                    "Resource temporarily unavailable"
                ]
                .contains(&e.as_str()),
                "writer {name}: move of shared target {} to {}: {e}",
                o.pid,
                o.container
            );
        }
    }
    let ok = |phase: &[(String, Vec<Outcome>)]| {
        phase
            .iter()
            .flat_map(|(_, o)| o)
            .filter(|o| o.error.is_none())
            .count()
    };
    let cx_ok = ok(&cx_phase);
    note(&format!(
        "{test}: storm: {} of {total} moves done, failures {errors:?}; \
         {rounds} rounds of other requests; {cx_ok} of {} moves into a cx done",
        ok(&storm_phase),
        cx_phase.iter().map(|(_, o)| o.len()).sum::<usize>()
    ));
    assert!(
        ok(&storm_phase) >= total / 2,
        "most storm moves must succeed"
    );
    assert!(
        cx_ok > 0,
        "no move into cx succeeded: the rmdir race was not exercised"
    );

    // Every target: running, not stopped or traced, wholly in one set, the
    // one its writes sent it to.
    m.step.set("check every target");
    // The storm and the cx moves raced on the shared targets, so they count
    // as one phase.
    let mut last_phase = storm_phase;
    last_phase.extend(cx_phase);
    let phases = vec![vec![("warmup".to_owned(), warm_out)], last_phase];
    let mut placed: HashMap<i32, String> = HashMap::new();
    let mut histogram: BTreeMap<String, usize> = BTreeMap::new();
    for t in &targets {
        let state = state_of(t.pid).unwrap_or('?');
        assert!(
            !matches!(state, 'Z' | 'X' | 't' | 'T' | '?'),
            "target {} ({:?}) is in state {state}",
            t.pid,
            t.work
        );
        assert_eq!(
            status_field(t.pid, "TracerPid").as_deref(),
            Some("0"),
            "target {} is not traced",
            t.pid
        );
        let set = process_set(t.pid).expect("target gone");
        let name = identify(&set, &known).unwrap_or_else(|mix| {
            panic!(
                "target {} ({:?}) is half moved, in no single set: {mix}",
                t.pid, t.work
            )
        });
        match candidates(t.pid, &phases) {
            None => assert_eq!(name, "root", "target {} was never moved", t.pid),
            Some((allowed, raced)) => {
                assert!(
                    allowed.contains(&name),
                    "target {} is in {name}, but the last successful writes sent it to \
                     {allowed:?} (raced: {raced})",
                    t.pid
                );
                if !shared.contains(&t.pid) {
                    assert!(!raced, "target {} had one writer", t.pid);
                }
            }
        }
        *histogram
            .entry(name.split('#').next().unwrap().to_owned())
            .or_default() += 1;
        placed.insert(t.pid, name);
    }
    note(&format!("{test}: where the targets ended: {histogram:?}"));

    // The tasks files agree with /proc.
    for c in containers.iter().chain(std::iter::once(&"root".to_owned())) {
        let file = if c == "root" {
            "tasks".to_owned()
        } else {
            format!("{c}/tasks")
        };
        let listed: BTreeSet<i32> = m
            .read(&file)
            .lines()
            .map(|l| l.parse().unwrap())
            .filter(|p| pids.contains(p))
            .collect();
        let want: BTreeSet<i32> = placed
            .iter()
            .filter(|(_, n)| *n == c)
            .map(|(p, _)| *p)
            .collect();
        assert_eq!(listed, want, "targets listed in {file}");
    }

    let want: HashMap<i32, String> = placed
        .iter()
        .map(|(p, n)| (*p, hostnames[n].clone()))
        .collect();
    let all: Vec<&Target> = targets.iter().collect();
    let mut problems = check_hostnames(&m, &dir, &all, &want);
    problems.extend(check_work(&m, &dir, &all));
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // rmdir released the cx namespaces: only targets (and their children)
    // may keep them alive, not a holder of the daemon.
    m.step.set("look for holders of removed containers");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = strays(&cx_uts, &targets);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes other than the targets still hold the uts namespaces of removed \
             cx containers: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The daemon is SIGKILLed in the middle of a storm of moves.
///
/// The design property under test: the daemon never traces a target
/// itself. Moves run in long-lived injector processes (`nsproxyfs
/// --internal-injector`), which SIGKILL of the daemon does not reach: each
/// finishes the move it has in flight, sees the daemon's end of its channel
/// close, and exits; none outlives the daemon for long. Within the move, every thread stays stopped
/// until all have moved (or moved back), registers and the signal mask are
/// put back before detaching, and the namespaces change in one syscall per
/// thread, `setns(pidfd_of_holder, kinds)`, which joins all the requested
/// kinds or none. So however the daemon dies, each target is either moved,
/// all kinds at once, or untouched: never stopped for good, never still
/// traced, never split between two sets, and it goes on working.
///
/// What would break it, and shows here: a tracer that dies in the middle of
/// an injected syscall leaves the target with the injection's registers and
/// signal mask (the work and SIGUSR1 checks see it), or, in the middle of a
/// `PTRACE_SINGLESTEP`, with a step whose SIGTRAP nobody catches (the target
/// dies: "died: signal: 5 (SIGTRAP)"). This is what happened while the
/// daemon traced targets itself.
#[test]
fn daemon_sigkill_mid_storm_leaves_targets_whole() {
    let test = "daemon_sigkill_mid_storm_leaves_targets_whole";
    let Some(m) = Mount::new(test) else { return };
    let mut rng = Rng::seeded(test, "NSPROXYFS_LOAD_SEED");
    let dir = m.scratch("work");
    std::fs::create_dir(&dir).unwrap();

    let mut known: BTreeMap<String, NsSet> = BTreeMap::new();
    let mut hostnames: HashMap<String, String> = HashMap::new();
    known.insert("root".into(), container_set(&m, ""));
    hostnames.insert("root".into(), own_hostname());
    let containers: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    for c in &containers {
        let set = fresh_container(&m, c, &["uts", "ipc", "net"], c);
        assert!(!known.values().any(|s| *s == set), "{c} is a new set");
        known.insert(c.clone(), set);
        hostnames.insert(c.clone(), c.clone());
    }
    let uts_index = KINDS.iter().position(|k| *k == "uts").unwrap();
    let container_uts: BTreeSet<u64> = containers.iter().map(|c| known[c][uts_index]).collect();

    let mut targets = start_targets(&m, &dir, 50, 8, 2, "0.2");
    // Four writers, each moving its own targets among the containers until
    // the mount stops answering.
    m.step.set("start the writers");
    let mut writers: Vec<Writer> = (0..4)
        .map(|w| {
            let mine: Vec<i32> = targets.iter().skip(w).step_by(4).map(|t| t.pid).collect();
            let mut script = String::from("while [ -e \"$M/status\" ]; do\n");
            for _ in 0..50 {
                let pid = mine[rng.below(mine.len())];
                move_lines(&mut script, pid, &containers[rng.below(containers.len())]);
            }
            script.push_str("done\n");
            Writer::start(&m, &format!("w{w}"), &script)
        })
        .collect();

    m.step.set("wait for the storm to start");
    let done_so_far = |writers: &[Writer]| -> usize {
        writers
            .iter()
            .map(|w| {
                std::fs::read_to_string(&w.out)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.ends_with(" OK"))
                    .count()
            })
            .sum()
    };
    wait_for("moves to succeed", || done_so_far(&writers) >= 20);
    let delay = Duration::from_millis(rng.range(300, 800));
    std::thread::sleep(delay);
    for w in &mut writers {
        assert!(w.running(), "writer {} still moving at the kill", w.name);
    }
    let daemon = m.daemon_pid();
    let injectors: Vec<Seen> = injector_pids(daemon)
        .into_iter()
        .filter_map(Seen::now)
        .collect();
    assert!(!injectors.is_empty(), "the moves run in injectors");
    m.step.set("SIGKILL the daemon");
    // SAFETY: kill takes integers; the daemon is our child.
    unsafe { libc::kill(daemon, libc::SIGKILL) };
    let before = done_so_far(&writers);
    // Not reaped here: the mount's drop does that.
    wait_for("the daemon to die", || state_of(daemon) == Some('Z'));
    note(&format!(
        "{test}: killed the daemon {delay:?} into the storm, after about {before} moves, \
         with {} injectors",
        injectors.len()
    ));

    m.step.set("detach the dead mount");
    sh_ok(&format!("umount -l '{}'", m.dir.display()));
    let mounts = std::fs::read_to_string("/proc/thread-self/mounts").unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.split(' ').nth(1) == m.dir.to_str()),
        "the mount is gone"
    );
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut moved = 0;
    for w in &mut writers {
        for o in w.finish(&m) {
            match o.error {
                None => moved += 1,
                Some(e) => *errors.entry(e).or_default() += 1,
            }
        }
    }
    note(&format!(
        "{test}: {moved} moves done, failures after the kill: {errors:?}"
    ));

    // No target stays stopped or traced once its tracer is gone. Every
    // problem is collected, so that one report shows them all.
    let mut problems = Vec::new();
    m.step.set("wait for the targets to be let go");
    let held = |t: &Target| {
        let state = state_of(t.pid);
        let tracer = status_field(t.pid, "TracerPid");
        let stopped = matches!(state, Some('t' | 'T'));
        (stopped || tracer.as_deref().is_some_and(|p| p != "0")).then_some((t.pid, state, tracer))
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && targets.iter().any(|t| held(t).is_some()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for (pid, state, tracer) in targets.iter().filter_map(held) {
        problems.push(format!(
            "target {pid} still stopped or traced after the daemon died: state {state:?}, \
             TracerPid {tracer:?}"
        ));
    }

    m.step.set("check every target");
    let mut placed: HashMap<i32, String> = HashMap::new();
    let mut histogram: BTreeMap<String, usize> = BTreeMap::new();
    let mut dead = BTreeSet::new();
    for t in &mut targets {
        let state = state_of(t.pid).unwrap_or('?');
        if matches!(state, 'Z' | 'X' | '?') {
            let how = match t.child.try_wait() {
                Ok(Some(status)) => status.to_string(),
                other => format!("{other:?}"),
            };
            problems.push(format!("target {} ({:?}) died: {how}", t.pid, t.work));
            dead.insert(t.pid);
            continue;
        }
        let Some(set) = process_set(t.pid) else {
            problems.push(format!("target {} vanished", t.pid));
            dead.insert(t.pid);
            continue;
        };
        match identify(&set, &known) {
            Ok(name) => {
                *histogram.entry(name.clone()).or_default() += 1;
                placed.insert(t.pid, name);
            }
            Err(mix) => problems.push(format!(
                "target {} ({:?}) is half moved, in no single set: {mix}",
                t.pid, t.work
            )),
        }
    }
    note(&format!("{test}: where the targets ended: {histogram:?}"));
    let placed_targets: Vec<&Target> = targets
        .iter()
        .filter(|t| placed.contains_key(&t.pid))
        .collect();
    let want: HashMap<i32, String> = placed
        .iter()
        .map(|(p, n)| (*p, hostnames[n].clone()))
        .collect();
    problems.extend(check_hostnames(&m, &dir, &placed_targets, &want));
    let alive: Vec<&Target> = targets.iter().filter(|t| !dead.contains(&t.pid)).collect();
    problems.extend(check_work(&m, &dir, &alive));

    // The holders went with the daemon: only targets and their children are
    // left in the containers' namespaces.
    m.step.set("wait for the holders to go");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !strays(&container_uts, &targets).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = strays(&container_uts, &targets);
    if !left.is_empty() {
        problems.push(format!("holders outlived the daemon: {left:?}"));
    }
    // Each injector finished the move it had in flight (the targets show
    // it), saw the daemon's end of its channel close, and left.
    m.step.set("wait for the injectors to go");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && injectors.iter().any(Seen::running) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<i32> = injectors
        .iter()
        .filter(|i| i.running())
        .map(|i| i.pid)
        .collect();
    if !left.is_empty() {
        problems.push(format!("injectors outlived the daemon: {left:?}"));
    }
    assert!(
        problems.is_empty(),
        "after SIGKILL of the daemon mid-storm:\n{}",
        problems.join("\n")
    );
}

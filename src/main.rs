//! The `nsproxyfs` command.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use nsproxyfs::daemon::{self, Settings};

/// Linux namespaces as a filesystem: one directory per container, one file
/// per namespace kind, `ln` to compose, and a `tasks` file that moves
/// running processes.
///
/// `nsproxyfs MOUNTPOINT` mounts the tree; `nsproxyfs exec CONTAINER -- CMD`
/// runs a command in a container's namespaces; `nsproxyfs adopt PID DEST`
/// makes a running process's namespaces a container.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    long_about = None,
    after_help = AFTER_HELP,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    mount: MountArgs,
}

/// Mounting (the default when no subcommand is given).
#[derive(Debug, Args)]
struct MountArgs {
    /// Directory to mount on (usually /container_ns). A directory named
    /// like a command (`exec`, `adopt`, `help`) must be written as `./exec`.
    #[arg(required = true)]
    mountpoint: Option<PathBuf>,

    /// Stay in the foreground and log to stderr (for systemd and tests).
    #[arg(short, long)]
    foreground: bool,

    /// Where the record of the tree, namespace pins and the daemon's lock
    /// live; a daemon started on it brings the same tree back.
    #[arg(long, value_name = "DIR", default_value = "/run/nsproxyfs")]
    state_dir: PathBuf,

    /// Export the net namespace of every container that binds its own into
    /// DIR (usually /run/netns), as `ip netns add` makes them, so that `ip
    /// netns list` and `ip netns exec NAME` work. Nested containers are
    /// named by their path with dots: /web/db is web.db. The exports follow
    /// the tree and are removed when the daemon ends cleanly.
    #[arg(long, value_name = "DIR")]
    netns_export: Option<PathBuf>,

    /// Log more: -v for each change, -vv for debugging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Where the log goes: stderr, syslog, kmsg (the kernel log, read
    /// with dmesg) or a file. Default: stderr with --foreground; else
    /// syslog if a syslog socket answers, or else the file `log` in the
    /// state directory. The start names the choice in one line.
    #[arg(long, value_name = "WHERE", value_parser = nsproxyfs::logs::Destination::parse)]
    log: Option<nsproxyfs::logs::Destination>,

    /// Move processes even when their seccomp filter would kill them for
    /// the calls a move injects (they die). Without it such moves are
    /// refused with EPERM and the process is left as it was.
    #[arg(long)]
    allow_fatal_seccomp: bool,

    /// Show the namespace sets processes already use (containers made by
    /// docker, podman, LXC, nspawn, unshare, ip netns...) as read-only
    /// containers under MOUNTPOINT/.discovered, and every namespace of the
    /// host in MOUNTPOINT/.namespaces. `mv .discovered/NAME NEWNAME` adopts
    /// one as a container of your own.
    #[arg(long)]
    discover: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a new command in a container's namespaces, all eight kinds.
    ///
    /// The command is started as a child in the container's effective set
    /// (as its `status` file lists it) and `nsproxyfs exec` exits with its
    /// status, 128+N if signal N killed it; HUP, INT, QUIT, TERM, USR1,
    /// USR2 and WINCH are passed on to it. 125: exec itself failed, 126:
    /// the command cannot run, 127: it was not found.
    Exec(ExecArgs),

    /// Make the namespaces of a running process a container of your own.
    ///
    /// Finds the process's namespace set among the discovered containers
    /// of the mount DEST lies in (mounted with --discover) and renames it
    /// to DEST, as `mv MOUNTPOINT/.discovered/NAME DEST` does: DEST then
    /// binds each kind in which the set differs from its parent's, and is
    /// kept in the state directory like any container. Waits up to 5 s for
    /// a set that has just appeared, and says so on stderr. Exit status 1,
    /// with one line on stderr, when there is nothing to adopt or the
    /// rename is refused.
    Adopt(AdoptArgs),
}

#[derive(Debug, Args)]
struct AdoptArgs {
    /// The process whose namespaces to adopt, as this shell sees it.
    pid: i32,

    /// The new container: a path in a mounted nsproxyfs (/container_ns/web).
    dest: PathBuf,
}

#[derive(Debug, Args)]
struct ExecArgs {
    /// A container directory of a mounted nsproxyfs (/container_ns/web).
    container: PathBuf,

    /// The command and its arguments (after `--` when it starts with `-`).
    #[arg(
        value_name = "COMMAND",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<OsString>,
}

const AFTER_HELP: &str = "\
Without --foreground the command returns once the mount answers, and the
daemon goes on in the background, logging where --log says (the start
names it in one line). `umount MOUNTPOINT`, SIGTERM or SIGINT end it with
exit status 0. The tree is kept in the state directory and comes back when
a daemon starts on it again, even after kill -9; a mount left by a killed
daemon is detached by the next start. See nsproxyfs(8) for the tree, exec, and mount(8) and fstab use;
docs/state.md for the state directory.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(nsproxyfs::injector::INJECTOR_ARG) {
        // exec of /proc/self/exe names the process "exe"; argv[0] is set
        // by the daemon.
        if let Ok(name) = std::ffi::CString::new(nsproxyfs::injector::INJECTOR_NAME) {
            let _ = nix::sys::prctl::set_name(&name);
        }
        return ExitCode::from(
            nsproxyfs::injector::serve(&args[2..], nsproxyfs::errno::of_move) as u8,
        );
    }
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Exec(exec)) => run_exec(exec),
        Some(Command::Adopt(adopt)) => run_adopt(adopt),
        None => run_mount(cli.mount),
    }
}

fn run_exec(args: ExecArgs) -> ExitCode {
    match nsproxyfs::exec::run(&args.container, &args.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("nsproxyfs: exec: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// How long `adopt` waits for a set to be discovered.
const ADOPT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn run_adopt(args: AdoptArgs) -> ExitCode {
    let say = |what: &str| eprintln!("nsproxyfs: adopt: {what}");
    match nsproxyfs::adopt::run(args.pid, &args.dest, ADOPT_WAIT, say) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsproxyfs: adopt: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_mount(args: MountArgs) -> ExitCode {
    let level = match args.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let Some(mountpoint) = args.mountpoint else {
        eprintln!("nsproxyfs: no mount point given");
        return ExitCode::FAILURE;
    };
    let settings = Settings {
        mountpoint,
        state_dir: args.state_dir,
        netns_export: args.netns_export,
        foreground: args.foreground,
        level,
        discover: args.discover,
        log: args.log,
    };
    let fatal_seccomp = if args.allow_fatal_seccomp {
        nsproxyfs::transfer::FatalSeccomp::Allow
    } else {
        nsproxyfs::transfer::FatalSeccomp::Refuse
    };
    let mover = match nsproxyfs::ptrace_mover(fatal_seccomp) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("nsproxyfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    match daemon::run(settings, mover) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nsproxyfs: {e}");
            ExitCode::FAILURE
        }
    }
}

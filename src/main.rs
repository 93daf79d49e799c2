//! The `nsproxyfs` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use nsproxyfs::daemon::{self, Settings};

/// Linux namespaces as a filesystem: one directory per container, one file
/// per namespace kind, `ln` to compose, and a `tasks` file that moves
/// running processes.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, after_help = AFTER_HELP)]
struct Cli {
    /// Directory to mount on (usually /container_ns).
    mountpoint: PathBuf,

    /// Stay in the foreground and log to stderr (for systemd and tests).
    #[arg(short, long)]
    foreground: bool,

    /// Where the record of the tree, namespace pins and the daemon's lock
    /// live; a daemon started on it brings the same tree back.
    #[arg(long, value_name = "DIR", default_value = "/run/nsproxyfs")]
    state_dir: PathBuf,

    /// Log more: -v for each change, -vv for debugging.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

const AFTER_HELP: &str = "\
Without --foreground the command returns once the mount answers, and the
daemon goes on in the background, logging to syslog. `umount MOUNTPOINT`,
SIGTERM or SIGINT end it with exit status 0. The tree is kept in the state
directory and comes back when a daemon starts on it again, even after
kill -9. The tree is described in docs/tree.md, the state directory in
docs/state.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(nsproxyfs::moving::INJECTOR_ARG) {
        return ExitCode::from(nsproxyfs::moving::injector_main(&args[2..]) as u8);
    }
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => log::LevelFilter::Warn,
        1 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let settings = Settings {
        mountpoint: cli.mountpoint,
        state_dir: cli.state_dir,
        foreground: cli.foreground,
        level,
    };
    let mover = match nsproxyfs::mover() {
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

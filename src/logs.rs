//! Where the daemon's log goes, chosen once at start: stderr in the
//! foreground, syslog in the background when a syslog socket answers, and
//! otherwise a file in the state directory, so that refusals and errors are
//! never dropped silently. `--log` chooses explicitly.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

/// The name of the log file in the state directory, when no syslog socket
/// answers.
pub const FILE_NAME: &str = "log";

/// A log file is renamed to `NAME.old` (replacing the previous one) once it
/// grows past this size, and a new one is started.
const ROTATE_AT: u64 = 8 << 20;

/// A log destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Standard error (the foreground's default; the journal under systemd).
    Stderr,
    /// The syslog socket (`/dev/log`), facility daemon.
    Syslog,
    /// The kernel log (`/dev/kmsg`), read with `dmesg`.
    Kmsg,
    /// A file, appended to.
    File(PathBuf),
}

impl Destination {
    /// Reads a `--log` value: `stderr`, `syslog`, `kmsg`, or a file path
    /// (a relative one is taken from the current directory).
    pub fn parse(text: &str) -> Result<Destination, LogError> {
        match text {
            "stderr" => Ok(Destination::Stderr),
            "syslog" => Ok(Destination::Syslog),
            "kmsg" => Ok(Destination::Kmsg),
            "" => Err(LogError::Empty),
            path => std::path::absolute(path)
                .map(Destination::File)
                .map_err(|source| LogError::File {
                    path: path.into(),
                    source,
                }),
        }
    }

    /// The destination when none was asked for: stderr in the foreground;
    /// in the background syslog if its socket answers, else the file
    /// [`FILE_NAME`] in `state_dir`.
    pub fn default_for(foreground: bool, state_dir: &Path) -> Destination {
        if foreground {
            Destination::Stderr
        } else if syslog::unix(formatter()).is_ok() {
            Destination::Syslog
        } else {
            Destination::File(state_dir.join(FILE_NAME))
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Stderr => f.write_str("standard error"),
            Destination::Syslog => f.write_str("syslog (facility daemon)"),
            Destination::Kmsg => f.write_str("the kernel log (dmesg)"),
            Destination::File(path) => write!(f, "{}", path.display()),
        }
    }
}

fn formatter() -> syslog::Formatter3164 {
    syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: "nsproxyfs".into(),
        pid: std::process::id(),
    }
}

/// Checks that `dest` can be written before the daemon goes to the
/// background, so that a bad `--log` is one line at start.
pub fn check(dest: &Destination) -> Result<(), LogError> {
    match dest {
        Destination::Stderr => Ok(()),
        Destination::Syslog => syslog::unix(formatter())
            .map(drop)
            .map_err(LogError::Syslog),
        Destination::Kmsg => open_kmsg().map(drop).map_err(LogError::Kmsg),
        Destination::File(path) => open_append(path)
            .map(drop)
            .map_err(|source| LogError::File {
                path: path.clone(),
                source,
            }),
    }
}

/// Why the log cannot go where `--log` says.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// `--log` with nothing.
    #[error("an empty --log; use stderr, syslog, kmsg or a file")]
    Empty,
    /// The file cannot be named or opened for appending.
    #[error("--log {}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// No syslog socket answers.
    #[error("--log syslog: no syslog socket answers ({0})")]
    Syslog(syslog::Error),
    /// `/dev/kmsg` cannot be opened.
    #[error("--log kmsg: /dev/kmsg: {0}")]
    Kmsg(io::Error),
}

/// Sends the log to `dest` from now on, at `level`, the records `routine`
/// says are part of a normal end at the debug level. Returns the
/// destination actually used: the file in `state_dir` when syslog was
/// chosen but its socket no longer answers.
pub fn install(
    dest: &Destination,
    level: log::LevelFilter,
    state_dir: &Path,
    routine: Routine,
) -> Destination {
    let logger: Box<dyn log::Log> = match dest {
        Destination::Stderr => {
            let logger = env_logger::Builder::new()
                .filter_level(level)
                .format_timestamp_micros()
                .build();
            Box::new(logger)
        }
        Destination::Syslog => match syslog::unix(formatter()) {
            Ok(logger) => Box::new(syslog::BasicLogger::new(logger)),
            Err(_) => {
                return install(
                    &Destination::File(state_dir.join(FILE_NAME)),
                    level,
                    state_dir,
                    routine,
                );
            }
        },
        Destination::Kmsg => match open_kmsg() {
            Ok(file) => Box::new(Lines::new(Sink::Kmsg(file))),
            Err(_) => {
                return install(
                    &Destination::File(state_dir.join(FILE_NAME)),
                    level,
                    state_dir,
                    routine,
                );
            }
        },
        Destination::File(path) => match open_append(path) {
            Ok(file) => Box::new(Lines::new(Sink::File {
                path: path.clone(),
                file,
            })),
            // Nothing else can be written either; stderr is /dev/null in
            // the background, but it is what is left.
            Err(_) => return install(&Destination::Stderr, level, state_dir, routine),
        },
    };
    if log::set_boxed_logger(Box::new(Calm(logger, routine))).is_ok() {
        log::set_max_level(level);
    }
    dest.clone()
}

/// Whether a record is part of a normal end though logged as a warning or
/// an error (see [`install`]).
pub type Routine = fn(&log::Record<'_>) -> bool;

/// Passes every record on, routine ones at the debug level.
struct Calm(Box<dyn log::Log>, Routine);

impl log::Log for Calm {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !(self.1)(record) {
            return self.0.log(record);
        }
        if log::max_level() < log::LevelFilter::Debug {
            return;
        }
        self.0.log(
            &log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.0.flush()
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(path)
}

fn open_kmsg() -> io::Result<File> {
    File::options()
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/kmsg")
}

enum Sink {
    Kmsg(File),
    File { path: PathBuf, file: File },
}

/// A logger writing one line per record to a file or to `/dev/kmsg`.
struct Lines {
    sink: Mutex<Sink>,
    pid: u32,
}

impl Lines {
    fn new(sink: Sink) -> Lines {
        Lines {
            sink: Mutex::new(sink),
            pid: std::process::id(),
        }
    }
}

impl log::Log for Lines {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.sink.lock();
        match &mut *sink {
            Sink::Kmsg(file) => {
                // <facility daemon (3) * 8 + severity>; one write is one
                // kernel log record.
                let severity = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                let line = format!(
                    "<{}>nsproxyfs[{}]: {}\n",
                    3 * 8 + severity,
                    self.pid,
                    record.args()
                );
                let _ = file.write_all(line.as_bytes());
            }
            Sink::File { path, file } => {
                let line = format!(
                    "{} {:<5} nsproxyfs[{}]: {}\n",
                    utc_now(),
                    record.level(),
                    self.pid,
                    record.args()
                );
                let _ = file.write_all(line.as_bytes());
                if file.metadata().is_ok_and(|m| m.len() > ROTATE_AT) {
                    let mut old = path.clone().into_os_string();
                    old.push(".old");
                    if std::fs::rename(&*path, &old).is_ok()
                        && let Ok(fresh) = open_append(path)
                    {
                        *file = fresh;
                    }
                }
            }
        }
    }

    fn flush(&self) {
        if let Sink::File { file, .. } = &mut *self.sink.lock() {
            let _ = file.flush();
        }
    }
}

/// The current time as `YYYY-MM-DDTHH:MM:SS.uuuuuuZ`.
fn utc_now() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_utc(now.as_secs(), now.subsec_micros())
}

fn format_utc(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01, by whole
/// 400-year eras (146,097 days each) counted from 0000-03-01, so that the
/// leap day is the last day of a year.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_utc(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_utc(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(format_utc(1_798_761_599, 0), "2026-12-31T23:59:59.000000Z");
        assert_eq!(format_utc(4_107_542_400, 0), "2100-03-01T00:00:00.000000Z");
    }

    #[test]
    fn log_values() {
        assert_eq!(Destination::parse("stderr").ok(), Some(Destination::Stderr));
        assert_eq!(Destination::parse("kmsg").ok(), Some(Destination::Kmsg));
        assert_eq!(
            Destination::parse("/var/log/nsproxyfs.log").ok(),
            Some(Destination::File("/var/log/nsproxyfs.log".into()))
        );
        match Destination::parse("rel.log") {
            Ok(Destination::File(p)) => assert!(p.is_absolute() && p.ends_with("rel.log")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(Destination::parse(""), Err(LogError::Empty)));
    }
}

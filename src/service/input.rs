//! Parsing what is written to `tasks` and kind files.
//!
//! One write is one command, as in cgroupfs: a single pid, or (kind files
//! only) a single path. One trailing newline is allowed; anything else that
//! is not exactly that is refused and changes nothing.

use thiserror::Error;

/// Longest accepted write: a path of `PATH_MAX` bytes and its newline.
pub const MAX_INPUT: usize = 4097;

/// Why a write was not understood.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum InputError {
    /// Nothing but perhaps a newline.
    #[error("empty write")]
    Empty,
    /// Longer than [`MAX_INPUT`].
    #[error("write of {0} bytes is longer than {MAX_INPUT}")]
    TooLong(usize),
    /// Contains a NUL byte.
    #[error("contains a NUL byte")]
    Nul,
    /// Not valid UTF-8.
    #[error("not valid UTF-8")]
    NotUtf8,
    /// Contains whitespace or control characters (several values, padding).
    #[error("contains whitespace or control characters: write one value per write()")]
    Spaces,
    /// Not a pid in 1..=2^31-1.
    #[error("{0:?} is not a pid (a decimal number from 1 to 2147483647)")]
    NotAPid(String),
    /// Neither a pid nor a path.
    #[error("{0:?} is neither a pid nor a path (paths start with '/', './' or '../')")]
    NotAPidOrPath(String),
}

/// What a kind-file write names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding<'a> {
    /// A process, by pid in the writer's pid namespace.
    Pid(i32),
    /// A namespace file, by path in the writer's mount namespace.
    Path(&'a str),
}

fn one_value(data: &[u8]) -> Result<&str, InputError> {
    if data.len() > MAX_INPUT {
        return Err(InputError::TooLong(data.len()));
    }
    let data = data.strip_suffix(b"\n").unwrap_or(data);
    if data.is_empty() {
        return Err(InputError::Empty);
    }
    if data.contains(&0) {
        return Err(InputError::Nul);
    }
    let text = std::str::from_utf8(data).map_err(|_| InputError::NotUtf8)?;
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(InputError::Spaces);
    }
    Ok(text)
}

fn pid_of(text: &str) -> Option<i32> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<i32>().ok().filter(|&p| p > 0)
}

/// Parses a `tasks` write: one pid.
pub fn parse_pid(data: &[u8]) -> Result<i32, InputError> {
    let text = one_value(data)?;
    pid_of(text).ok_or_else(|| InputError::NotAPid(text.into()))
}

/// Parses a kind-file write: one pid or one path.
pub fn parse_binding(data: &[u8]) -> Result<Binding<'_>, InputError> {
    let text = one_value(data)?;
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return pid_of(text)
            .map(Binding::Pid)
            .ok_or_else(|| InputError::NotAPid(text.into()));
    }
    if text.starts_with('/') || text.starts_with("./") || text.starts_with("../") {
        return Ok(Binding::Path(text));
    }
    Err(InputError::NotAPidOrPath(text.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids() {
        assert_eq!(parse_pid(b"42\n"), Ok(42));
        assert_eq!(parse_pid(b"42"), Ok(42));
        assert_eq!(parse_pid(b"2147483647"), Ok(i32::MAX));
        for bad in [
            &b""[..],
            b"\n",
            b"0",
            b"-1",
            b"+1",
            b"2147483648",
            b"99999999999999999999",
            b"1 2",
            b"1\n2",
            b"1\n\n",
            b" 1",
            b"abc",
            b"1\0",
            b"\xff",
            b"0x10",
        ] {
            assert!(parse_pid(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_pid(&vec![b'1'; MAX_INPUT + 1]),
            Err(InputError::TooLong(MAX_INPUT + 1))
        );
    }

    #[test]
    fn bindings() {
        assert_eq!(parse_binding(b"7\n"), Ok(Binding::Pid(7)));
        assert_eq!(
            parse_binding(b"/run/netns/blue\n"),
            Ok(Binding::Path("/run/netns/blue"))
        );
        assert_eq!(parse_binding(b"./x"), Ok(Binding::Path("./x")));
        assert_eq!(parse_binding(b"../x"), Ok(Binding::Path("../x")));
        assert!(matches!(
            parse_binding(b"hello"),
            Err(InputError::NotAPidOrPath(_))
        ));
        assert!(matches!(parse_binding(b"0"), Err(InputError::NotAPid(_))));
        assert!(matches!(
            parse_binding(b"-5"),
            Err(InputError::NotAPidOrPath(_))
        ));
        assert_eq!(parse_binding(b"/a b"), Err(InputError::Spaces));
        assert_eq!(parse_binding(b"/a\0b"), Err(InputError::Nul));
        assert_eq!(parse_binding(b"/\xc3\x28"), Err(InputError::NotUtf8));
        assert_eq!(parse_binding(b"1\n2\n"), Err(InputError::Spaces));
    }
}

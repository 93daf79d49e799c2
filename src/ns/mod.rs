//! Namespaces: open handles (`handle`), fresh ones, the processes that keep
//! some alive (`keeper`), pins in the state directory (`pin`), holders a
//! move joins (`holder`), and how a written pid or path becomes a namespace
//! (`resolve`, asked with a caller's credentials: `creds`).

pub mod creds;
mod error;
mod handle;
mod holder;
mod keeper;
mod pin;
pub mod resolve;

pub use crate::kind::{CLONE_NEWTIME, Kind};
pub use error::{NsError, Origin, ReopenError};
pub use handle::{Namespace, fresh, of_path, of_pid_in};
pub use holder::Holder;
pub use keeper::Keeper;
pub use pin::{Pin, PinDir};
pub use resolve::Opener;

/// The device of nsfs, where every namespace file lives.
pub fn nsfs_dev() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/net")?.dev())
}

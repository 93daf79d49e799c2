//! Namespaces: kinds, open handles, fresh ones, pins, and how a written pid
//! or path becomes a namespace.

pub mod creds;
mod handle;
mod holder;
pub mod resolve;

pub use crate::kind::{CLONE_NEWTIME, Kind};
pub use handle::{
    Keeper, Namespace, NsError, Origin, Pin, PinDir, ReopenError, fresh, of_path, of_pid_in,
};
pub use holder::Holder;
pub use resolve::Opener;

/// The device of nsfs, where every namespace file lives.
pub fn nsfs_dev() -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata("/proc/self/ns/net")?.dev())
}

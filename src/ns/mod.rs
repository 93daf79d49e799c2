//! Namespaces: kinds, open handles, fresh ones, pins, and how a written pid
//! or path becomes a namespace.

mod handle;
mod holder;
mod kind;
pub mod sys;

pub use handle::{Keeper, Namespace, NsError, Opener, Pin, PinDir, fresh, of_path, of_pid_in};
pub use holder::Holder;
pub use kind::{CLONE_NEWTIME, Kind};

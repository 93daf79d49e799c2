//! Namespace kinds and handles.

mod kind;

pub use kind::{CLONE_NEWTIME, Kind};

//! nsproxyfs: Linux namespaces with names and a place in the filesystem.

pub mod inject;
pub mod mover;

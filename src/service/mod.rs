//! The tree service: what every request to the filesystem means, free of
//! the FUSE protocol.

pub mod error;
pub mod input;

pub use error::{Error, Result};

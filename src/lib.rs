//! nsproxyfs: Linux namespaces with names and a place in the filesystem.
//!
//! Architecture, from the kernel up:
//!
//! * [`ns`]: namespace kinds, open handles to namespaces (an nsfs file
//!   descriptor and its inode), fresh namespaces, pins in the state
//!   directory, and resolving a written pid or path to a namespace.
//! * [`tree`]: the containers, their bindings and effective sets, as plain
//!   data with no system calls.
//! * [`procfs`]: reading processes' namespaces from `/proc`.
//! * [`fs`]: the FUSE adapter, the only code that knows fuser; it checks
//!   the caller, asks the tree, and turns results into replies and errnos.
//! * [`daemon`]: checks, mount, background, signals.
//!
//! The binary `nsproxyfs` is a thin command line over [`daemon::run`].

pub mod daemon;
pub mod fs;
pub mod inject;
pub mod mover;
pub mod ns;
pub mod procfs;
pub mod tree;

/// The process mover this build uses.
pub fn mover() -> Box<dyn fs::Mover> {
    Box::new(Unavailable)
}

/// Refuses every move: the ptrace mover is not part of this build yet.
struct Unavailable;

impl fs::Mover for Unavailable {
    fn move_process(
        &self,
        _pid: i32,
        _writer_tid: u32,
        _set: &[std::sync::Arc<ns::Namespace>; 8],
        reply: &mut dyn FnMut(fs::Result<()>),
    ) {
        reply(Err(fs::Error::Unsupported(
            "moving processes is not part of this build yet".into(),
        )));
    }
}

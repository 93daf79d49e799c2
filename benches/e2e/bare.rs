//! A bare FUSE filesystem served by fuser 0.18 inside the benchmark process:
//! the floor for nsproxyfs's `stat` and `status` reads. It answers the same
//! requests nsproxyfs gets for those calls (lookup, getattr, open with
//! direct I/O, read, flush, release) with fixed answers, no caching (TTL 0)
//! and the same session settings (four worker threads, one cloned device
//! descriptor each).

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyOpen, Request, SessionACL,
};

use crate::harness;

const TTL: Duration = Duration::ZERO;
const UTS: INodeNo = INodeNo(2);
const STATUS: INodeNo = INodeNo(3);

/// A root holding `uts` (empty) and `status` (fixed text).
struct BareFs {
    status: Vec<u8>,
}

impl BareFs {
    fn attr(&self, ino: INodeNo) -> Option<FileAttr> {
        let (kind, perm, nlink) = match ino {
            INodeNo::ROOT => (FileType::Directory, 0o755, 2),
            UTS => (FileType::RegularFile, 0o444, 1),
            STATUS => (FileType::RegularFile, 0o444, 1),
            _ => return None,
        };
        Some(FileAttr {
            ino,
            size: 0,
            blocks: 0,
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        })
    }
}

impl Filesystem for BareFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = match (parent, name.as_encoded_bytes()) {
            (INodeNo::ROOT, b"uts") => UTS,
            (INodeNo::ROOT, b"status") => STATUS,
            _ => return reply.error(Errno::ENOENT),
        };
        match self.attr(ino) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let content: &[u8] = if ino == STATUS { &self.status } else { &[] };
        let start = (offset as usize).min(content.len());
        let end = start.saturating_add(size as usize).min(content.len());
        reply.data(&content[start..end]);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

/// The bare filesystem, mounted; unmounted on drop.
pub struct BareMount {
    pub dir: PathBuf,
    session: Option<BackgroundSession>,
    dev: u64,
}

impl BareMount {
    /// Mounts at `dir`, serving `status` as the content of `status`.
    pub fn start(dir: &Path, status: Vec<u8>) -> std::io::Result<BareMount> {
        harness::step("mount the bare FUSE filesystem");
        std::fs::create_dir_all(dir)?;
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("nsproxyfs-bench-bare".into()),
            MountOption::Subtype("bare".into()),
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoExec,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(4);
        config.clone_fd = true;
        let session = fuser::Session::new(BareFs { status }, dir, &config)?.spawn()?;
        let dev = std::fs::metadata(dir)?.dev();
        harness::watch_fuse(dev);
        Ok(BareMount {
            dir: dir.to_path_buf(),
            session: Some(session),
            dev,
        })
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

impl Drop for BareMount {
    fn drop(&mut self) {
        harness::unwatch_fuse(self.dev);
        if let Some(session) = self.session.take()
            && let Err(e) = session.umount_and_join()
        {
            eprintln!("unmount the bare FUSE filesystem: {e}");
        }
    }
}

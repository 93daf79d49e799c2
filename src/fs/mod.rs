//! The FUSE adapter: the only code that knows fuser.
//!
//! Each trait method decodes its request (the caller, node ids, flags),
//! calls the [`Service`], and turns its answer into a reply: attributes
//! into [`FileAttr`], errors into their errno ([`crate::errno::of`]). A refusal
//! is logged once, here, with its reason, within its caller's allowance
//! (see [`crate::service::refusals`]).

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

use crate::service::refusals::Refusals;
use crate::service::{Attr, Caller, Error, FileKind, Rename, Result, Service, SetAttr, WriteReply};

/// Kernel caches must not keep one caller's answer for another, and the
/// tree changes under the kernel's feet (processes move, namespaces die):
/// no entry or attribute caching at all.
const TTL: Duration = Duration::ZERO;

/// The service mounted, not yet served.
#[derive(Debug)]
pub struct Session(fuser::Session<Adapter>);

/// Takes the mount from the session (see [`Session::unmounter`]).
#[derive(Debug)]
pub struct Unmounter(fuser::SessionUnmounter);

impl Session {
    /// Mounts `service` on `mountpoint`: type `fuse.nsproxyfs`, `nosuid`,
    /// `nodev`, `noexec`, open to every user (the service checks each
    /// caller), four workers, each with its own device clone.
    pub fn mount(service: Arc<Service>, mountpoint: &Path) -> std::io::Result<Session> {
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName("nsproxyfs".into()),
            // The kernel takes the subtype as a mount option, so the mount
            // table shows the type fuse.nsproxyfs (fuser only passes
            // Subtype to fusermount).
            MountOption::CUSTOM("subtype=nsproxyfs".into()),
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::NoExec,
        ];
        config.acl = SessionACL::All;
        config.n_threads = Some(4);
        config.clone_fd = true;
        fuser::Session::new(Adapter(service), mountpoint, &config).map(Session)
    }

    /// What unmounts it from another thread while it is served. The
    /// daemon unmounts by itself (or finds the mount gone), and takes the
    /// mount from fuser with this, whose own attempt at the end would fail
    /// and log a warning on a clean end.
    pub fn unmounter(&mut self) -> Unmounter {
        Unmounter(self.0.unmount_callable())
    }

    /// Serves requests until the mount goes; the service is dropped then.
    pub fn run(self) -> std::io::Result<()> {
        self.0.run()
    }
}

impl Unmounter {
    /// Unmounts, if the mount is still the session's.
    pub fn unmount(&mut self) -> std::io::Result<()> {
        self.0.unmount()
    }
}

/// The service as the FUSE session holds it (shared with the discovery
/// thread).
#[derive(Debug)]
struct Adapter(Arc<Service>);

/// The sender of a request.
fn caller(req: &Request) -> Caller {
    Caller::new(req.pid(), req.uid(), req.gid())
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.id),
        size: 0,
        blocks: 0,
        atime: attr.time,
        mtime: attr.time,
        ctime: attr.time,
        crtime: attr.time,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Dir => FileType::Directory,
        FileKind::Regular => FileType::RegularFile,
    }
}

/// How many refusals reach the log, per caller.
static REFUSALS: std::sync::LazyLock<Refusals> = std::sync::LazyLock::new(Refusals::default);

/// Logs a refusal once, with its reason, unless its caller has had too
/// many logged lately (the first of each kind is always logged), and
/// returns its errno.
fn refuse(op: &'static str, caller: &Caller, e: &Error) -> Errno {
    let errno = crate::errno::of(e);
    let verdict = REFUSALS.judge(caller.uid, op, errno, Instant::now());
    let held = |uid: u32, n: u64| {
        log::warn!("{n} more refusals of requests by uid {uid} were not logged (too many)");
    };
    if let Some((uid, n)) = verdict.forgotten {
        held(uid, n);
    }
    if verdict.log {
        if verdict.held_back > 0 {
            held(caller.uid, verdict.held_back);
        }
        let name = std::io::Error::from_raw_os_error(errno);
        log::warn!(
            "{op} by pid {} uid {} refused ({name}): {e}",
            caller.tid,
            caller.uid
        );
    }
    Errno::from_i32(errno)
}

/// The errno of a failure not worth a log line (a name looked up that is
/// not there).
fn quiet(e: &Error) -> Errno {
    Errno::from_i32(crate::errno::of(e))
}

/// Answers an entry request (lookup, mkdir, mknod, link).
fn entry(reply: ReplyEntry, op: &'static str, caller: &Caller, result: Result<Attr>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
        Err(e) => reply.error(refuse(op, caller, &e)),
    }
}

/// Answers an empty reply (unlink, rmdir, rename).
fn empty(reply: ReplyEmpty, op: &'static str, caller: &Caller, result: Result<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(refuse(op, caller, &e)),
    }
}

/// A write's reply, answered once (see [`WriteReply`]); dropped unanswered,
/// fuser answers it with EIO.
struct Written {
    reply: Option<ReplyWrite>,
    caller: Caller,
    len: u32,
}

impl WriteReply for Written {
    fn send(&mut self, op: &'static str, result: Result<()>) {
        let errno = result.as_ref().err().map(|e| refuse(op, &self.caller, e));
        if let Some(reply) = self.reply.take() {
            match errno {
                None => reply.written(self.len),
                Some(errno) => reply.error(errno),
            }
        }
    }

    fn fail(&mut self, errno: i32) {
        if let Some(reply) = self.reply.take() {
            reply.error(Errno::from_i32(errno));
        }
    }
}

/// Whether a line fuser logs as a warning or an error is part of a normal
/// end, and so only worth a debug line: when the mount is gone (`umount`)
/// fuser's own unmount finds nothing to unmount, and a reply to a request
/// whose caller was interrupted or which the end of the mount cut short
/// finds no request to answer (ENOENT).
pub fn routine(record: &log::Record<'_>) -> bool {
    if !record.target().starts_with("fuser") || record.level() > log::Level::Warn {
        return false;
    }
    let text = record.args().to_string();
    text.starts_with("Failed to umount filesystem")
        || text.starts_with("Unmount failed")
        || (text.starts_with("Failed to send FUSE reply")
            && text.contains(&std::io::Error::from_raw_os_error(libc::ENOENT).to_string()))
}

impl fuser::Filesystem for Adapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // `echo PID > tasks` opens with O_TRUNC. With this the truncation
        // rides on the open instead of costing a setattr round trip of its
        // own; no file here has content to truncate.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            log::debug!("the kernel lacks {missing:?}");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.0.lookup(&caller(req), parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.getattr(&caller(req), ino.0) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let caller = caller(req);
        let change = SetAttr {
            owner_or_mode: mode.is_some() || uid.is_some() || gid.is_some(),
            size,
        };
        match self.0.setattr(&caller, ino.0, change) {
            Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
            Err(e) => reply.error(refuse("setattr", &caller, &e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        let result = self.0.mknod(&caller, parent.0, name, mode);
        entry(reply, "mknod", &caller, result);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        let result = self.0.mkdir(&caller, parent.0, name);
        entry(reply, "mkdir", &caller, result);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let caller = caller(req);
        let result = self.0.unlink(&caller, parent.0, name);
        empty(reply, "unlink", &caller, result);
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let caller = caller(req);
        let result = self.0.rmdir(&caller, parent.0, name);
        empty(reply, "rmdir", &caller, result);
    }

    fn symlink(
        &self,
        req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        entry(reply, "symlink", &caller(req), self.0.symlink());
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let caller = caller(req);
        let mode = if flags.contains(RenameFlags::RENAME_EXCHANGE)
            || flags.contains(RenameFlags::RENAME_WHITEOUT)
        {
            Rename::Other
        } else if flags.contains(RenameFlags::RENAME_NOREPLACE) {
            Rename::NoReplace
        } else {
            Rename::Replace
        };
        let result = self
            .0
            .rename(&caller, parent.0, name, newparent.0, newname, mode);
        empty(reply, "rename", &caller, result);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let caller = caller(req);
        let result = self.0.link(&caller, ino.0, newparent.0, newname);
        entry(reply, "link", &caller, result);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let caller = caller(req);
        match self.0.open(&caller, ino.0, flags.0) {
            Ok(fh) => reply.opened(FileHandle(fh), open_flags(self.0.needs_flush(fh))),
            Err(e @ Error::NotFound) => reply.error(quiet(&e)),
            Err(e) => reply.error(refuse("open", &caller, &e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.read(fh.0, offset, size) {
            Some(data) => reply.data(&data),
            None => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let caller = caller(req);
        let reply = Written {
            reply: Some(reply),
            caller: caller.clone(),
            len: data.len() as u32,
        };
        self.0.write(&caller, ino.0, fh.0, data, Box::new(reply));
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Only a created kind file does anything at a close: bind fresh.
        empty(reply, "create", &caller(req), self.0.flush(fh.0));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.0.release(fh.0);
        reply.ok();
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.0.opendir(&caller(req), ino.0) {
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::empty()),
            Err(e) => reply.error(quiet(&e)),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.0.readdir(&caller(req), ino.0) {
            Ok(entries) => entries,
            Err(e) => return reply.error(quiet(&e)),
        };
        for (i, (id, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(id), (i + 1) as u64, file_type(kind), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        // Shells probe files with terminal ioctls: none apply here.
        reply.error(Errno::from_i32(libc::ENOTTY));
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // No extended attributes here. ENOSYS (answered here rather than by
        // fuser's default, which logs a warning) makes the kernel stop
        // asking: otherwise every `echo > FILE` costs a round trip for
        // security.capability, which truncation checks before clearing.
        // Callers see EOPNOTSUPP.
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // What was possible is decided by each operation itself. ENOSYS
        // (answered here rather than by fuser's default, which logs a
        // warning for a shell's `cd`) makes the kernel stop asking and
        // answer access(2) from the file modes.
        reply.error(Errno::ENOSYS)
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let caller = caller(req);
        match self.0.create(&caller, parent.0, name) {
            Ok((attr, fh)) => reply.created(
                &TTL,
                &file_attr(&attr),
                Generation(0),
                FileHandle(fh),
                open_flags(self.0.needs_flush(fh)),
            ),
            Err(e) => reply.error(refuse("create", &caller, &e)),
        }
    }
}

/// How the kernel is to treat an open file: no page cache (every read
/// and write reaches the daemon, which answers per caller), and no flush
/// request at each close of a descriptor (`FOPEN_NOFLUSH`, Linux 5.16 and
/// later; ignored before) unless the close can change something. A
/// shell's `echo PID > tasks` closes two descriptors of the file: two
/// round trips fewer.
fn open_flags(needs_flush: bool) -> FopenFlags {
    match needs_flush {
        true => FopenFlags::FOPEN_DIRECT_IO,
        false => FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fusers_end_of_mount_lines_are_routine() {
        let check = |target: &str, level, text: std::fmt::Arguments<'_>| {
            routine(
                &log::Record::builder()
                    .target(target)
                    .level(level)
                    .args(text)
                    .build(),
            )
        };
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        use log::Level::{Error, Warn};
        assert!(check(
            "fuser::session",
            Warn,
            format_args!("Failed to umount filesystem: Invalid argument")
        ));
        assert!(check(
            "fuser::reply",
            Error,
            format_args!("Failed to send FUSE reply: {enoent}")
        ));
        assert!(!check(
            "fuser::reply",
            Error,
            format_args!("Failed to send FUSE reply: {eio}")
        ));
        assert!(!check(
            "nsproxyfs::fs",
            Warn,
            format_args!("Failed to umount filesystem: x")
        ));
    }
}

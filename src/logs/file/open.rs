//! Opening a program's log file without trusting its directory: the workers' user may be able to
//! write there, and drover (often root) must never write through, rename onto or delete what a
//! worker planted.
//!
//! - The directory is walked from `/` one component at a time with `O_NOFOLLOW`. A symlink on
//!   the way is followed only when the directory holding it is owned by root (or drover) and not
//!   writable by group or others, as `/var/run -> /run` is: nobody less trusted could have put
//!   it there. A missing directory is created, mode 0750.
//! - The file is opened relative to that directory's fd with `O_NOFOLLOW | O_CLOEXEC | O_APPEND`
//!   (new files mode 0640, owned by drover's user) and must be a regular file with one link: a
//!   symlink, a directory, a FIFO or a hard link to another file planted at the name is refused.
//! - Rotation renames relative to the same directory fd (`renameat`), which moves a planted
//!   symlink rather than following it and fails on a planted directory rather than removing it.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, readlinkat, FcntlArg, OFlag};
use nix::sys::stat::{fstat, fstatat, mkdirat, FileStat, Mode, SFlag};

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Symlinks followed on one walk before giving up (the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Open (creating what is missing, mode 0750) the absolute directory `dir`.
pub fn open_dir(dir: &Path) -> Result<OwnedFd, String> {
    if !dir.is_absolute() {
        return Err(format!("{} is not an absolute path", dir.display()));
    }
    let mut todo: VecDeque<OsString> = parts(dir);
    let mut at = nix::fcntl::open("/", DIR, Mode::empty()).map_err(|e| format!("/: {e}"))?;
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." || c == "." {
            at = openat(&at, c.as_os_str(), DIR, Mode::empty())
                .map_err(|e| format!("{}: {e}", dir.display()))?;
            continue;
        }
        match openat(&at, c.as_os_str(), DIR, Mode::empty()) {
            Ok(fd) => at = fd,
            Err(Errno::ENOENT) => {
                match mkdirat(&at, c.as_os_str(), Mode::from_bits_truncate(0o750)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => {
                        return Err(format!(
                            "cannot create the directory {:?} in {}: {e}",
                            c,
                            dir.display()
                        ))
                    }
                }
                at = openat(&at, c.as_os_str(), DIR, Mode::empty())
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                let st = fstatat(&at, c.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
                if kind(&st) != SFlag::S_IFLNK {
                    return Err(format!(
                        "{:?} on the way to {} is not a directory",
                        c,
                        dir.display()
                    ));
                }
                let holder = fstat(&at).map_err(|e| format!("{}: {e}", dir.display()))?;
                if !trusted(&holder) {
                    return Err(format!(
                        "{:?} on the way to {} is a symlink in a directory that someone other than root can write (owner uid {}, mode {:o}); drover does not follow it",
                        c,
                        dir.display(),
                        holder.st_uid,
                        holder.st_mode & 0o7777
                    ));
                }
                links += 1;
                if links > MAX_LINKS {
                    return Err(format!("{}: too many symlinks", dir.display()));
                }
                let target = readlinkat(&at, c.as_os_str())
                    .map_err(|e| format!("{}: {e}", dir.display()))?;
                let target = Path::new(&target);
                if target.is_absolute() {
                    at =
                        nix::fcntl::open("/", DIR, Mode::empty()).map_err(|e| format!("/: {e}"))?;
                }
                for p in parts(target).into_iter().rev() {
                    todo.push_front(p);
                }
            }
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Ok(at)
}

/// Open `name` in `dir` for appending, creating it (0640) if missing; refuse anything but a
/// regular file with a single link.
pub fn open_file(dir: &OwnedFd, name: &OsStr, shown: &Path) -> Result<(File, u64), String> {
    // O_NONBLOCK: a FIFO planted at the name must not hang the open; cleared below
    let flags = OFlag::O_WRONLY
        | OFlag::O_APPEND
        | OFlag::O_CREAT
        | OFlag::O_NOFOLLOW
        | OFlag::O_CLOEXEC
        | OFlag::O_NONBLOCK;
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o640)).map_err(|e| match e {
        Errno::ELOOP => format!(
            "{} is a symlink; drover does not write through a link planted where its log goes",
            shown.display()
        ),
        Errno::EISDIR => format!("{} is a directory", shown.display()),
        // a FIFO nobody reads (O_NONBLOCK makes the open fail rather than wait)
        Errno::ENXIO => format!("{} is not a regular file", shown.display()),
        e => format!("{}: {e}", shown.display()),
    })?;
    let st = fstat(&fd).map_err(|e| format!("{}: {e}", shown.display()))?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(format!("{} is not a regular file", shown.display()));
    }
    if st.st_nlink > 1 {
        return Err(format!(
            "{} has {} hard links; drover does not append to a file linked from elsewhere",
            shown.display(),
            st.st_nlink
        ));
    }
    fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_APPEND))
        .map_err(|e| format!("{}: {e}", shown.display()))?;
    Ok((File::from(fd), st.st_size.max(0) as u64))
}

fn parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsStr::from_bytes(b"..").to_owned()),
            _ => None,
        })
        .collect()
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// A directory only root (or drover itself) can change: a symlink in it is the admin's.
fn trusted(st: &FileStat) -> bool {
    let me = nix::unistd::geteuid().as_raw();
    (st.st_uid == 0 || st.st_uid == me) && st.st_mode & 0o022 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir_mode(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_symlink_is_followed_only_in_a_directory_nobody_else_can_write() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        std::fs::create_dir(&real).unwrap();
        // the admin's link, in a directory only its owner (this process's user) can write
        dir_mode(t.path(), 0o755);
        std::os::unix::fs::symlink(&real, t.path().join("link")).unwrap();
        let fd = open_dir(&t.path().join("link/logs")).unwrap();
        let (_, size) = open_file(&fd, OsStr::new("a.log"), Path::new("a.log")).unwrap();
        assert_eq!(size, 0);
        assert!(
            real.join("logs/a.log").is_file(),
            "created through the trusted link"
        );
        // a link a worker could have made: in a directory anyone can write
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        dir_mode(&open, 0o777);
        std::os::unix::fs::symlink(&real, open.join("link")).unwrap();
        let e = open_dir(&open.join("link")).unwrap_err();
        assert!(e.contains("drover does not follow it"), "{e}");
    }

    #[test]
    fn a_planted_hard_link_or_fifo_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let fd = open_dir(t.path()).unwrap();
        std::fs::write(t.path().join("other"), "x").unwrap();
        std::fs::hard_link(t.path().join("other"), t.path().join("a.log")).unwrap();
        let e = open_file(&fd, OsStr::new("a.log"), Path::new("a.log")).unwrap_err();
        assert!(e.contains("2 hard links"), "{e}");
        nix::unistd::mkfifo(&t.path().join("b.log"), Mode::from_bits_truncate(0o600)).unwrap();
        let e = open_file(&fd, OsStr::new("b.log"), Path::new("b.log")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}

//! drover's runtime directory: a fresh directory of its own for the files workers must reach —
//! the notify socket, default metrics directories — created on first need, removed at exit (and
//! by the guard if drover is killed).
//!
//! It is made with a random name, mode 0711, owned by drover, under `$RUNTIME_DIRECTORY`
//! (systemd's `RuntimeDirectory=`), else `/run` when drover is root, else `$XDG_RUNTIME_DIR`,
//! else `$TMPDIR` or `/tmp`. Others may pass through it but not list it, so a file inside with
//! a random name is reachable only by whoever is given its path: workers get it in their
//! environment, and other users cannot read another user's environment.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub struct RunDir {
    path: PathBuf,
    fd: OwnedFd,
}

impl RunDir {
    /// Create a fresh runtime directory.
    pub fn create() -> Result<RunDir, String> {
        let mut tried = vec![];
        for base in bases() {
            match create_in(&base) {
                Ok(d) => return Ok(d),
                Err(e) => tried.push(format!("{}: {e}", base.display())),
            }
        }
        Err(format!(
            "cannot create drover's runtime directory ({})",
            tried.join("; ")
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A name nobody can guess, for a file inside.
    pub fn random_name(prefix: &str) -> String {
        format!("{prefix}-{}", random_hex(8))
    }

    /// The directory itself, for `*at` calls that must not follow a swapped path.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.fd)
    }

    /// At exit: the directory and everything in it (symlinks inside are removed, not followed).
    pub fn remove(&self) {
        if let Err(e) = remove_tree(&self.path) {
            tracing::error!(
                "cannot remove drover's runtime directory {}: {e}; remove it by hand",
                self.path.display()
            );
        }
    }
}

/// Remove `path` and everything below it, however deep, with a bounded number of open fds:
/// subdirectories are moved up into `path` (flattened) and emptied there, one level at a time.
/// Symlinks are removed, never followed. (std's remove_dir_all holds an fd per level: a worker
/// that nests its directories deeper than drover's open-files limit would make it fail.)
pub fn remove_tree(path: &Path) -> std::io::Result<()> {
    use nix::fcntl::{openat, renameat};
    use nix::unistd::{unlinkat, UnlinkatFlags};
    let dir_flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let top = match nix::fcntl::open(path, dir_flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(nix::errno::Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let names = |fd: &OwnedFd| -> std::io::Result<Vec<std::ffi::OsString>> {
        let mut d = nix::dir::Dir::from_fd(fd.try_clone()?)?;
        Ok(d.iter()
            .flatten()
            .map(|e| {
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                    e.file_name().to_bytes(),
                )
                .to_owned()
            })
            .filter(|n: &std::ffi::OsString| n != "." && n != "..")
            .collect())
    };
    let mut moved = 0u64;
    loop {
        let entries = names(&top)?;
        if entries.is_empty() {
            break;
        }
        for name in entries {
            match unlinkat(&top, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => continue,
                Err(nix::errno::Errno::EISDIR) => {}
                Err(e) => return Err(e.into()),
            }
            let sub = openat(&top, name.as_os_str(), dir_flags, Mode::empty())?;
            for child in names(&sub)? {
                match unlinkat(&sub, child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                    Err(nix::errno::Errno::EISDIR) => {
                        moved += 1;
                        let up = format!(".drover-rm-{moved}");
                        renameat(&sub, child.as_os_str(), &top, up.as_str())?;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            drop(sub);
            match unlinkat(&top, name.as_os_str(), UnlinkatFlags::RemoveDir) {
                Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    drop(top);
    std::fs::remove_dir(path)
}

fn bases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = vec![];
    if let Some(d) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several, separated by ':'
        if let Some(first) = d.to_string_lossy().split(':').next() {
            v.push(first.into());
        }
    }
    if nix::unistd::geteuid().is_root() {
        v.push("/run".into());
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        v.push(d.into());
    }
    v.push(std::env::temp_dir());
    v.push("/tmp".into());
    v.dedup();
    v
}

fn create_in(base: &Path) -> std::io::Result<RunDir> {
    for _ in 0..16 {
        let path = base.join(format!("drover-{}-{}", std::process::id(), random_hex(6)));
        match nix::unistd::mkdir(&path, Mode::from_bits_truncate(0o711)) {
            Ok(()) => {}
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => return Err(e.into()),
        }
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        // the umask may have taken bits away; set exactly 0711 on what was created
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o711))?;
        return Ok(RunDir { path, fd });
    }
    Err(std::io::Error::from_raw_os_error(libc::EEXIST))
}

/// `n` random bytes from the kernel, as hex.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    // SAFETY: getrandom writes at most `n` bytes into the buffer it is given.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr() as *mut libc::c_void, n, 0) };
    if got != n as isize {
        // never expected on Linux >= 3.17; the time still differs between runs
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("{t:x}");
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_fresh_private_directory_is_made_and_removed() {
        let d = RunDir::create().unwrap();
        let md = std::fs::symlink_metadata(d.path()).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.permissions().mode() & 0o7777, 0o711);
        let a = RunDir::random_name("notify");
        assert!(a.starts_with("notify-") && a.len() == "notify-".len() + 16);
        assert_ne!(a, RunDir::random_name("notify"));
        std::fs::write(d.path().join("x"), b"1").unwrap();
        d.remove();
        assert!(!d.path().exists());
    }

    #[test]
    fn a_tree_deeper_than_the_open_files_limit_is_removed() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("deep");
        // 3,000 levels, built relative to each new level (the path itself gets too long)
        std::fs::create_dir(&root).unwrap();
        let mut fd =
            nix::fcntl::open(&root, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        for i in 0..3000 {
            nix::sys::stat::mkdirat(&fd, "d", Mode::from_bits_truncate(0o755)).unwrap();
            if i % 100 == 0 {
                let f = nix::fcntl::openat(
                    &fd,
                    "f",
                    OFlag::O_CREAT | OFlag::O_WRONLY,
                    Mode::from_bits_truncate(0o644),
                )
                .unwrap();
                drop(f);
                std::os::unix::fs::symlink(
                    "/etc/passwd",
                    format!("/proc/self/fd/{}/l", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                )
                .unwrap();
            }
            fd = nix::fcntl::openat(
                &fd,
                "d",
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .unwrap();
        }
        drop(fd);
        remove_tree(&root).unwrap();
        assert!(!root.exists());
        assert!(
            std::path::Path::new("/etc/passwd").exists(),
            "a symlink is removed, not followed"
        );
    }
}

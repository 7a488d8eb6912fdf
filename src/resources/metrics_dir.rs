//! A program's Prometheus multiprocess directory (`prometheus_multiproc_dir`), handled as root
//! would handle any directory another user can write to: drover empties it at start and removes
//! a dead worker's live-gauge files, so it must never be tricked into deleting elsewhere.
//!
//! - Every directory on the way is checked: owned by root, drover or the program's user, and
//!   not writable by others unless sticky (as `/tmp` is) — `sshd`'s StrictModes rule. The
//!   directory itself is opened with `O_NOFOLLOW`: a symlink planted there is refused, not
//!   followed.
//! - It must be owned by drover or the program's user and writable by nobody else; one drover
//!   creates is mode 0700 and handed to the program's user, so workers that run as that user can
//!   write their files (a root-owned 0755 directory would refuse them).
//! - Files are removed with `unlinkat` relative to the directory drover holds open, so renaming
//!   or replacing a directory on the path afterwards changes nothing drover does.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode};
use nix::unistd::{fchown, unlinkat, Gid, Uid, UnlinkatFlags};

/// `prometheus_client`'s live gauge modes (`Gauge._MULTIPROC_MODES` starting with "live"): a dead
/// process's files of these modes are removed, every other file keeps its totals.
const LIVE_MODES: [&str; 5] = ["liveall", "livemin", "livemax", "livesum", "livemostrecent"];

pub struct MetricsDir {
    fd: OwnedFd,
}

/// Who may own the directories: drover and, when it has one, the program's user.
#[derive(Debug, Clone, Copy)]
pub struct Owners {
    pub drover: u32,
    /// (uid, gid) the workers run as, when not drover's own
    pub program: Option<(u32, u32)>,
}

impl Owners {
    fn allowed(&self, uid: u32) -> bool {
        uid == 0 || uid == self.drover || self.program.is_some_and(|(u, _)| u == uid)
    }
}

const DIR: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl MetricsDir {
    /// Open (creating it, 0700, if missing) the absolute directory `path` for `owners`.
    pub fn open(path: &Path, owners: Owners) -> Result<MetricsDir, String> {
        if !path.is_absolute() {
            return Err(format!("{} is not an absolute path", path.display()));
        }
        // symlinks above the directory are resolved once, then the real path is walked
        // without following any, so a swap in between is refused rather than followed
        let parent = path.parent().unwrap_or(Path::new("/"));
        let name = path
            .file_name()
            .ok_or_else(|| format!("{} names no directory", path.display()))?;
        let real =
            std::fs::canonicalize(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        let mut at = nix::fcntl::open("/", DIR, Mode::empty()).map_err(|e| format!("/: {e}"))?;
        let mut walked = std::path::PathBuf::from("/");
        check_parent(&at, &walked, owners)?;
        for c in real.components() {
            let Component::Normal(c) = c else { continue };
            walked.push(c);
            at = openat(&at, c, DIR, Mode::empty()).map_err(|e| explain(&walked, e))?;
            check_parent(&at, &walked, owners)?;
        }
        let fd = match openat(&at, name, DIR, Mode::empty()) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOENT) => {
                mkdirat(&at, name, Mode::from_bits_truncate(0o700))
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                let fd = openat(&at, name, DIR, Mode::empty()).map_err(|e| explain(path, e))?;
                nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                fd
            }
            Err(e) => return Err(explain(path, e)),
        };
        let st = fstat(&fd).map_err(|e| format!("{}: {e}", path.display()))?;
        if !owners.allowed(st.st_uid) {
            return Err(format!(
                "{} belongs to uid {}, neither drover nor the program's user: another user could plant files the workers write through",
                path.display(),
                st.st_uid
            ));
        }
        if st.st_mode & 0o022 != 0 {
            return Err(format!(
                "{} is writable by others (mode {:o}): another user could plant files the workers write through; `chmod go-w` it or pick another directory",
                path.display(),
                st.st_mode & 0o7777
            ));
        }
        // the workers must be able to write their files: hand it to the program's user
        if let Some((uid, gid)) = owners.program {
            if st.st_uid != uid {
                fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                    .map_err(|e| format!("cannot give {} to uid {uid}: {e}", path.display()))?;
            }
        }
        Ok(MetricsDir { fd })
    }

    /// Remove every `*.db` file (what an earlier run left). Returns how many.
    pub fn empty(&self) -> std::io::Result<usize> {
        self.remove_where(|n| n.ends_with(".db"))
    }

    /// Remove the live-gauge files of dead process `pid` (what `mark_process_dead` does): the
    /// few names `prometheus_client` gives them, unlinked by name — never a listing of the
    /// directory, which a worker could fill with a million files to make every exit slow.
    pub fn remove_live_gauges(&self, pid: i32) -> std::io::Result<usize> {
        let mut n = 0;
        for mode in LIVE_MODES {
            let name = format!("gauge_{mode}_{pid}.db");
            match unlinkat(&self.fd, name.as_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => n += 1,
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }

    fn remove_where(&self, wanted: impl Fn(&str) -> bool) -> std::io::Result<usize> {
        let dup = self.fd.as_fd().try_clone_to_owned()?;
        let mut dir = nix::dir::Dir::from_fd(dup)?;
        let names: Vec<std::ffi::OsString> = dir
            .iter()
            .flatten()
            .map(|e| std::ffi::OsStr::from_bytes(e.file_name().to_bytes()).to_owned())
            .filter(|n| n.to_str().is_some_and(&wanted))
            .collect();
        let mut n = 0;
        for name in names {
            // relative to the directory drover holds; a symlink is removed, never followed
            match unlinkat(&self.fd, name.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                Ok(()) => n += 1,
                Err(nix::errno::Errno::ENOENT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(n)
    }
}

/// A directory on the way must not let another user swap what lies below it.
fn check_parent(fd: &OwnedFd, path: &Path, owners: Owners) -> Result<(), String> {
    let st = fstat(fd).map_err(|e| format!("{}: {e}", path.display()))?;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    if !owners.allowed(st.st_uid) {
        return Err(format!(
            "{} belongs to uid {}: another user could swap what lies below it",
            path.display(),
            st.st_uid
        ));
    }
    if st.st_mode & 0o022 != 0 && !sticky {
        return Err(format!(
            "{} is writable by others (mode {:o}) and not sticky: another user could swap what lies below it",
            path.display(),
            st.st_mode & 0o7777
        ));
    }
    Ok(())
}

fn explain(path: &Path, e: nix::errno::Errno) -> String {
    match e {
        nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR => format!(
            "{} is a symlink or not a directory: refused (drover empties this directory as root and does not follow links there)",
            path.display()
        ),
        e => format!("{}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn me() -> Owners {
        Owners {
            drover: nix::unistd::geteuid().as_raw(),
            program: None,
        }
    }

    #[test]
    fn created_private_emptied_and_a_symlink_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("metrics");
        let m = MetricsDir::open(&d, me()).unwrap();
        let md = std::fs::metadata(&d).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        for f in [
            "counter_1.db",
            "gauge_livesum_7.db",
            "gauge_livesum_8.db",
            "keep.txt",
        ] {
            std::fs::write(d.join(f), b"x").unwrap();
        }
        assert_eq!(m.remove_live_gauges(7).unwrap(), 1);
        assert!(d.join("gauge_livesum_8.db").exists());
        assert_eq!(m.empty().unwrap(), 2);
        assert!(d.join("keep.txt").exists());

        // a symlink in place of the directory: refused, and the target keeps its files
        let victim = t.path().join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("important.db"), b"x").unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let e = MetricsDir::open(&link, me()).err().unwrap();
        assert!(e.contains("symlink"), "{e}");
        assert!(victim.join("important.db").exists());

        // writable by others: refused
        let open = t.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = MetricsDir::open(&open, me()).err().unwrap();
        assert!(e.contains("writable by others"), "{e}");
    }
}

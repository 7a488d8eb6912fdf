//! Dev runner: changes under a program's `watch` paths trigger a (debounced) rolling restart.
//! inotify, read through tokio's AsyncFd; directories are watched recursively, new ones added
//! as they appear. Editor droppings and bytecode (`.swp`, `~`, `.pyc`, `__pycache__`, dot
//! files) are ignored.

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tracing::{debug, warn};

const MASK: u32 = libc::IN_MODIFY
    | libc::IN_CLOSE_WRITE
    | libc::IN_CREATE
    | libc::IN_DELETE
    | libc::IN_MOVED_FROM
    | libc::IN_MOVED_TO;

struct Inotify {
    fd: AsyncFd<OwnedFd>,
    /// watch descriptor -> (directory, program)
    wds: HashMap<i32, (PathBuf, String)>,
}

impl Inotify {
    fn add(&mut self, path: &Path, program: &str) {
        let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
            return;
        };
        // SAFETY: inotify_add_watch on our fd with a valid C string.
        let wd =
            unsafe { libc::inotify_add_watch(self.fd.get_ref().as_raw_fd(), c.as_ptr(), MASK) };
        if wd < 0 {
            warn!(
                "watch {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            return;
        }
        self.wds
            .insert(wd, (path.to_path_buf(), program.to_string()));
        if path.is_dir() {
            if let Ok(rd) = std::fs::read_dir(path) {
                for e in rd.flatten() {
                    let p = e.path();
                    if p.is_dir() && !ignored(&e.file_name().to_string_lossy()) {
                        self.add(&p, program);
                    }
                }
            }
        }
    }
}

fn ignored(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".pyc")
        || name == "__pycache__"
        || name.ends_with(".tmp")
}

/// Start watching; each change sends the program's name. None if nothing is watched.
pub fn start(
    programs: &[(String, Vec<PathBuf>)],
) -> std::io::Result<Option<mpsc::UnboundedReceiver<String>>> {
    if programs.iter().all(|(_, p)| p.is_empty()) {
        return Ok(None);
    }
    // SAFETY: inotify_init1 returns a new fd we own.
    let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd nobody else owns; the AsyncFd owns it (and so keeps it open)
    // for as long as it is registered.
    let fd =
        unsafe { AsyncFd::register(OwnedFd::from_raw_fd(raw)) }.map_err(|e| e.into_parts().1)?;
    let mut ino = Inotify {
        fd,
        wds: HashMap::new(),
    };
    for (name, paths) in programs {
        for p in paths {
            if !p.exists() {
                warn!(
                    "program {name}: watch path {} does not exist; not watched",
                    p.display()
                );
                continue;
            }
            ino.add(p, name);
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            let Ok(mut guard) = ino.fd.readable().await else {
                return;
            };
            // SAFETY: reading into our buffer from our non-blocking inotify fd.
            let n = unsafe {
                libc::read(
                    ino.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n < 0 {
                if std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock {
                    guard.clear_ready();
                    continue;
                }
                return;
            }
            let mut off = 0usize;
            let hdr = std::mem::size_of::<libc::inotify_event>();
            while off + hdr <= n as usize {
                // SAFETY: the kernel wrote whole events; read_unaligned copes with alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf.as_ptr().add(off) as *const _) };
                let name_bytes = &buf[off + hdr..off + hdr + ev.len as usize];
                let name =
                    String::from_utf8_lossy(name_bytes.split(|b| *b == 0).next().unwrap_or(&[]))
                        .into_owned();
                off += hdr + ev.len as usize;
                let Some((dir, program)) = ino.wds.get(&ev.wd).cloned() else {
                    continue;
                };
                if ignored(&name) {
                    continue;
                }
                if ev.mask & libc::IN_ISDIR != 0
                    && ev.mask & (libc::IN_CREATE | libc::IN_MOVED_TO) != 0
                {
                    ino.add(&dir.join(&name), &program);
                }
                debug!("watch: {} changed ({program})", dir.join(&name).display());
                let _ = tx.send(program);
            }
        }
    });
    Ok(Some(rx))
}

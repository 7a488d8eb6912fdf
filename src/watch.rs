//! Dev runner: changes under a program's `watch` paths trigger a (debounced) rolling restart.
//! inotify (the `inotify` crate), read through tokio's AsyncFd; directories are watched
//! recursively, new ones added as they appear. Editor droppings and bytecode (`.swp`, `~`,
//! `.pyc`, `__pycache__`, dot files) are ignored.
//!
//! inotify gives one watch descriptor per directory, whoever asks: two programs watching one
//! directory share it, so each descriptor maps to every program that watches it. When the
//! kernel's queue overflows, events were lost: every watching program is told, rather than
//! missing a change.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

fn mask() -> WatchMask {
    WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
}

struct Watcher {
    fd: AsyncFd<Inotify>,
    /// watch descriptor -> (directory, every program watching it)
    wds: HashMap<WatchDescriptor, (PathBuf, BTreeSet<String>)>,
    /// every program with a watch, told when the queue overflows
    all: BTreeSet<String>,
}

impl Watcher {
    fn add(&mut self, path: &Path, program: &str) {
        let wd = match self.fd.get_ref().watches().add(path, mask()) {
            Ok(wd) => wd,
            Err(e) => {
                warn!("watch {}: {e}", path.display());
                return;
            }
        };
        self.all.insert(program.to_string());
        let entry = self
            .wds
            .entry(wd)
            .or_insert_with(|| (path.to_path_buf(), BTreeSet::new()));
        if !entry.1.insert(program.to_string()) {
            return; // this program already watches this directory (and its subdirectories)
        }
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

    /// One batch of events -> the programs to tell.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<BTreeSet<String>> {
        let mut changed = BTreeSet::new();
        let mut new_dirs = vec![];
        for ev in self.fd.get_mut().read_events(buf)? {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                warn!("watch: the inotify queue overflowed and changes were lost; restarting every watching program");
                changed.extend(self.all.iter().cloned());
                continue;
            }
            let Some((dir, programs)) = self.wds.get(&ev.wd) else {
                continue;
            };
            let name = ev
                .name
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if ignored(&name) {
                continue;
            }
            if ev.mask.contains(EventMask::ISDIR)
                && ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)
            {
                new_dirs.push((dir.join(&name), programs.clone()));
            }
            debug!(
                "watch: {} changed ({programs:?})",
                dir.join(&name).display()
            );
            changed.extend(programs.iter().cloned());
        }
        for (dir, programs) in new_dirs {
            for p in programs {
                self.add(&dir, &p);
            }
        }
        Ok(changed)
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

/// Start watching; each change calls `changed` with the program's name. False if nothing is
/// watched.
pub fn start(
    programs: &[(String, Vec<PathBuf>)],
    changed: impl Fn(String) + Send + 'static,
) -> std::io::Result<bool> {
    if programs.iter().all(|(_, p)| p.is_empty()) {
        return Ok(false);
    }
    // SAFETY: the AsyncFd owns the inotify instance, so its fd stays open for as long as it is
    // registered.
    let fd = unsafe { AsyncFd::register(Inotify::init()?) }.map_err(|e| e.into_parts().1)?;
    let mut w = Watcher {
        fd,
        wds: HashMap::new(),
        all: BTreeSet::new(),
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
            w.add(p, name);
        }
    }
    tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        loop {
            let Ok(mut guard) = w.fd.readable_mut().await else {
                return;
            };
            guard.clear_ready();
            drop(guard);
            loop {
                match w.read(&mut buf) {
                    Ok(progs) if progs.is_empty() => {}
                    Ok(progs) => progs.into_iter().for_each(&changed),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        warn!("watch: reading inotify events failed: {e}; file changes are no longer watched");
                        return;
                    }
                }
            }
        }
    });
    Ok(true)
}

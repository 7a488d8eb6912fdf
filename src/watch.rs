//! Dev runner: changes under a program's `watch` paths trigger a (debounced) rolling restart.
//! inotify (the `inotify` crate), read through tokio's AsyncFd; directories are watched
//! recursively, new ones added as they appear. Which files count is the program's `Filter`
//! (`watch/filter.rs`: `*.py` unless `watch_include` says otherwise; droppings never). A file
//! named in `watch` itself always counts.
//!
//! A change is a file written and closed, created, deleted, renamed or touched (its attributes
//! changed). Plain writes (`IN_MODIFY`) are not asked for: a log file or a database the app keeps
//! open and appends to does not even wake drover; editors close what they save.
//!
//! inotify gives one watch descriptor per directory, whoever asks: two programs watching one
//! directory share it, so each descriptor maps to every (program, watched path) that reached
//! it. When the kernel's queue overflows, events were lost: every watching program is told,
//! rather than missing a change.

pub mod filter;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use tokio::io::unix::AsyncFd;
use tracing::{debug, warn};

pub use filter::Filter;

fn mask() -> WatchMask {
    WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
}

/// The files the log line names: the first few, and how many more.
const NAMED: usize = 3;

/// What changed for one program since its last roll.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// the first few distinct files
    pub files: Vec<PathBuf>,
    /// distinct files beyond those
    pub more: usize,
    /// the inotify queue overflowed: some changes are unknown
    pub lost: bool,
}

impl Changes {
    fn file(path: PathBuf) -> Changes {
        Changes {
            files: vec![path],
            ..Default::default()
        }
    }

    fn add(&mut self, path: PathBuf) {
        if self.files.contains(&path) {
            return;
        }
        if self.files.len() < NAMED {
            self.files.push(path);
        } else {
            self.more += 1;
        }
    }

    pub fn merge(&mut self, other: Changes) {
        for f in other.files {
            self.add(f);
        }
        self.more += other.more;
        self.lost |= other.lost;
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && !self.lost
    }

    /// For the log line that announces the roll: `src/app.py changed`.
    pub fn describe(&self) -> String {
        let names: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        let mut s = match (names.len(), self.more) {
            (0, _) => String::new(),
            (1, 0) => names[0].clone(),
            (_, 0) => {
                let (last, first) = names.split_last().unwrap_or((&names[0], &[]));
                format!("{} and {last}", first.join(", "))
            }
            (_, more) => format!("{} and {more} more files", names.join(", ")),
        };
        match (s.is_empty(), self.lost) {
            (true, _) => {
                "changes under its watch paths were lost (the inotify queue overflowed)".into()
            }
            (false, true) => {
                s.push_str(" changed, and more changes were lost (the inotify queue overflowed)");
                s
            }
            (false, false) => {
                s.push_str(" changed");
                s
            }
        }
    }
}

/// One program's watch: its name, its paths (resolved), its filter.
pub struct Watched {
    pub program: String,
    pub paths: Vec<PathBuf>,
    pub filter: Filter,
}

/// Who a watched directory is watched for: (program index, the watched path it lies under).
type Reach = BTreeSet<(usize, PathBuf)>;

struct Watcher {
    fd: AsyncFd<Inotify>,
    programs: Vec<(String, Filter)>,
    /// watch descriptor -> (directory or named file, who watches it)
    wds: HashMap<WatchDescriptor, (PathBuf, Reach)>,
}

impl Watcher {
    /// Watch `path` for program `pi` under the watched path `root`, and every directory below
    /// it the program does not skip. With `scan`, returns the first file found that the program
    /// wants (a directory that appeared: its files were written before it was watched).
    fn add(&mut self, path: &Path, pi: usize, root: &Path, scan: bool) -> Option<PathBuf> {
        let wd = match self.fd.get_ref().watches().add(path, mask()) {
            Ok(wd) => wd,
            Err(e) => {
                warn!(
                    "program {}: cannot watch {}: {e}; changes there will not restart its workers",
                    self.programs[pi].0,
                    path.display()
                );
                return None;
            }
        };
        let entry = self
            .wds
            .entry(wd)
            .or_insert_with(|| (path.to_path_buf(), BTreeSet::new()));
        if !entry.1.insert((pi, root.to_path_buf())) {
            return None; // already watched for this program from this root (and below)
        }
        let mut found = None;
        let Ok(rd) = std::fs::read_dir(path) else {
            return None;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap_or(&p);
            if p.is_dir() {
                if !self.programs[pi].1.skips_dir(rel) {
                    let f = self.add(&p, pi, root, scan);
                    found = found.or(f);
                }
            } else if scan && found.is_none() && self.programs[pi].1.wants_file(rel) {
                found = Some(p);
            }
        }
        found
    }

    /// One batch of events -> what changed, per program index.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<BTreeMap<usize, Changes>> {
        let mut changed: BTreeMap<usize, Changes> = BTreeMap::new();
        let mut new_dirs = vec![];
        for ev in self.fd.get_mut().read_events(buf)? {
            if ev.mask.contains(EventMask::Q_OVERFLOW) {
                warn!("watch: the inotify queue overflowed and changes were lost; restarting every watching program");
                for pi in 0..self.programs.len() {
                    changed.entry(pi).or_default().lost = true;
                }
                continue;
            }
            let Some((dir, reach)) = self.wds.get(&ev.wd) else {
                continue;
            };
            let Some(name) = ev.name.map(|n| n.to_string_lossy().into_owned()) else {
                // an event on a file named in `watch` itself (or on a directory itself: its
                // own deletion, nothing that changed a file in it)
                if !ev.mask.contains(EventMask::ISDIR) && !ev.mask.contains(EventMask::IGNORED) {
                    for (pi, _) in reach {
                        changed.entry(*pi).or_default().add(dir.clone());
                    }
                }
                continue;
            };
            let path = dir.join(&name);
            if ev.mask.contains(EventMask::ISDIR) {
                if ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                    new_dirs.push((path, reach.clone()));
                }
                continue;
            }
            for (pi, root) in reach {
                let rel = path.strip_prefix(root).unwrap_or(&path);
                if self.programs[*pi].1.wants_file(rel) {
                    debug!(
                        "watch: {} changed (program {})",
                        path.display(),
                        self.programs[*pi].0
                    );
                    changed.entry(*pi).or_default().add(path.clone());
                }
            }
        }
        // a directory created or moved in: watch it, and what it already holds is a change
        for (dir, reach) in new_dirs {
            for (pi, root) in reach {
                let rel = dir.strip_prefix(&root).unwrap_or(&dir);
                if self.programs[pi].1.skips_dir(rel) {
                    continue;
                }
                if let Some(f) = self.add(&dir, pi, &root, true) {
                    changed.entry(pi).or_default().merge(Changes::file(f));
                }
            }
        }
        Ok(changed)
    }
}

/// Start watching; each change calls `changed` with the program's name and what changed.
/// False if nothing is watched.
pub fn start(
    programs: Vec<Watched>,
    changed: impl Fn(String, Changes) + Send + 'static,
) -> std::io::Result<bool> {
    if programs.iter().all(|w| w.paths.is_empty()) {
        return Ok(false);
    }
    // SAFETY: the AsyncFd owns the inotify instance, so its fd stays open for as long as it is
    // registered.
    let fd = unsafe { AsyncFd::register(Inotify::init()?) }.map_err(|e| e.into_parts().1)?;
    let mut w = Watcher {
        fd,
        programs: programs
            .iter()
            .map(|p| (p.program.clone(), p.filter.clone()))
            .collect(),
        wds: HashMap::new(),
    };
    for (pi, p) in programs.iter().enumerate() {
        for path in &p.paths {
            if !path.exists() {
                warn!(
                    "program {}: watch path {} does not exist; not watched",
                    p.program,
                    path.display()
                );
                continue;
            }
            w.add(path, pi, path, false);
        }
    }
    // a program that watches nothing is never told of an overflow
    let watching: BTreeSet<usize> = w
        .wds
        .values()
        .flat_map(|(_, r)| r.iter().map(|(pi, _)| *pi))
        .collect();
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
                    Ok(progs) => {
                        for (pi, c) in progs {
                            if watching.contains(&pi) && !c.is_empty() {
                                changed(w.programs[pi].0.clone(), c);
                            }
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_files() {
        let mut c = Changes::file("src/app.py".into());
        assert_eq!(c.describe(), "src/app.py changed");
        c.add("src/app.py".into());
        c.add("src/db.py".into());
        assert_eq!(c.describe(), "src/app.py and src/db.py changed");
        c.merge(Changes {
            files: vec!["a.py".into(), "b.py".into(), "c.py".into()],
            more: 2,
            lost: false,
        });
        assert_eq!(
            c.describe(),
            "src/app.py, src/db.py, a.py and 4 more files changed"
        );
        c.lost = true;
        assert!(c
            .describe()
            .ends_with("and more changes were lost (the inotify queue overflowed)"));
        let lost = Changes {
            lost: true,
            ..Default::default()
        };
        assert!(!lost.is_empty());
        assert!(lost
            .describe()
            .starts_with("changes under its watch paths were lost"));
        assert!(Changes::default().is_empty());
    }
}

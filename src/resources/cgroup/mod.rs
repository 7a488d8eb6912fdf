//! Budgets through cgroups: v2 (a delegated subtree) and v1 (writable memory / cpu
//! hierarchies). drover only ever creates cgroups *below the cgroup it runs in*, never at a
//! hierarchy's root: a controller whose hierarchy has drover at its root counts as not delegated.
//!
//! Each worker slot gets its own cgroup. The child joins it itself, between fork and exec, by
//! writing its pid to `cgroup.procs` fds drover opened before forking — never moved from the
//! parent after fork (a window in which the worker could allocate or fork outside its budget).
//!
//! v1 layout: `<memory cgroup of drover>/drover-<pid>/<program>.<index>-<id>` (and the same under
//! the cpu hierarchy). v2 layout: drover moves itself into `<its cgroup>/supervisor` (the "no
//! internal processes" rule), enables the controllers in `<its cgroup>/cgroup.subtree_control`
//! and puts workers in `<its cgroup>/<program>.<index>-<id>`.

use std::fs;
use std::io::Write;

use std::path::{Path, PathBuf};

mod slot;

pub use slot::{MemoryGauge, SlotCgroup};

pub(super) const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// Where drover may create worker cgroups.
#[derive(Debug, Clone)]
pub struct Cgroups {
    pub version: Version,
    /// v1: the memory parent (`…/drover-<pid>`); v2: drover's own cgroup
    pub memory: Option<PathBuf>,
    /// v1: the cpu parent; v2: same as memory
    pub cpu: Option<PathBuf>,
}

/// What detection found, for `check`, the log and `/status`.
#[derive(Debug, Clone)]
pub struct Detection {
    pub cgroups: Option<Cgroups>,
    /// one line per controller: how it is (or is not) enforced, and why
    pub notes: Vec<String>,
}

/// drover's own cgroup paths: (controllers, path) from /proc/self/cgroup.
fn own_paths() -> Vec<(Vec<String>, String)> {
    fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            let ctrls = f.next()?;
            let path = f.next()?;
            Some((
                ctrls
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path.to_string(),
            ))
        })
        .collect()
}

/// A cgroup mount: (fs type, mount root, mount point, super options).
fn mounts() -> Vec<(String, String, PathBuf, String)> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let pre: Vec<&str> = pre.split_whitespace().collect();
            let post: Vec<&str> = post.split_whitespace().collect();
            let fstype = post.first()?.to_string();
            if fstype != "cgroup" && fstype != "cgroup2" {
                return None;
            }
            Some((
                fstype,
                pre.get(3)?.to_string(),
                PathBuf::from(pre.get(4)?),
                post.get(2).unwrap_or(&"").to_string(),
            ))
        })
        .collect()
}

/// The directory of drover's own cgroup in the v1 hierarchy holding `ctrl`, and whether it is
/// that hierarchy's root.
pub fn v1_own_dir(ctrl: &str) -> Option<(PathBuf, bool)> {
    let (_, path) = own_paths()
        .into_iter()
        .find(|(c, _)| c.iter().any(|x| x == ctrl))?;
    let (_, root, mp, _) = mounts()
        .into_iter()
        .find(|(t, _, _, opts)| t == "cgroup" && opts.split(',').any(|o| o == ctrl))?;
    let rel = path
        .strip_prefix(root.as_str())
        .unwrap_or(&path)
        .trim_start_matches('/');
    let is_root = rel.is_empty();
    Some((mp.join(rel), is_root))
}

/// The directory of drover's own cgroup in the v2 hierarchy, and whether it is the root.
pub fn v2_own_dir() -> Option<(PathBuf, bool)> {
    let (_, path) = own_paths().into_iter().find(|(c, _)| c.is_empty())?;
    let (_, root, mp, _) = mounts().into_iter().find(|(t, ..)| t == "cgroup2")?;
    let rel = path
        .strip_prefix(root.as_str())
        .unwrap_or(&path)
        .trim_start_matches('/');
    Some((mp.join(rel), rel.is_empty()))
}

fn writable(dir: &Path) -> bool {
    nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok()
}

/// Find what can be enforced. `create` makes the parent directories (run); without it the
/// check is read-only (`drover check`).
pub fn detect(create: bool, also: &[i32]) -> Detection {
    let mut notes = vec![];
    // v2 first: a delegated subtree with memory and cpu controllers available
    if let Some(cgroups) = detect_v2(create, also, &mut notes) {
        return Detection {
            cgroups: Some(cgroups),
            notes,
        };
    }
    // v1: memory and cpu hierarchies, each on its own
    let memory = detect_v1("memory", "memory", create, &mut notes);
    let cpu = detect_v1("cpu", "the CPU quota", create, &mut notes);
    let cgroups = (memory.is_some() || cpu.is_some()).then_some(Cgroups {
        version: Version::V1,
        memory,
        cpu,
    });
    Detection { cgroups, notes }
}

/// A delegated v2 subtree drover may use, set up when `create`; a note either way.
fn detect_v2(create: bool, also: &[i32], notes: &mut Vec<String>) -> Option<Cgroups> {
    let (dir, is_root) = v2_own_dir()?;
    let avail = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let has = |c: &str| avail.split_whitespace().any(|x| x == c);
    let d = dir.display();
    let problem = if is_root {
        Some(format!(
            "drover runs in the root cgroup ({d}); it never creates cgroups there"
        ))
    } else if !(has("memory") || has("cpu")) {
        Some(format!("no memory/cpu controllers available in {d}"))
    } else if !writable(&dir) {
        Some(format!("{d} is not writable (not delegated)"))
    } else if let Err(e) = if create { v2_setup(&dir, also) } else { Ok(()) } {
        Some(format!("cannot set up {d}: {e}"))
    } else {
        None
    };
    if let Some(p) = problem {
        notes.push(format!("cgroup v2: {p}"));
        return None;
    }
    let or_not = |c: &str, how: &'static str| if has(c) { how } else { "not available" };
    notes.push(format!(
        "cgroup v2: delegated subtree {d} (memory: {}, cpu: {})",
        or_not("memory", "memory.high / memory.max"),
        or_not("cpu", "cpu.max")
    ));
    Some(Cgroups {
        version: Version::V2,
        memory: has("memory").then(|| dir.clone()),
        cpu: has("cpu").then(|| dir.clone()),
    })
}

/// drover's own directory under the v1 hierarchy of `ctrl` (`drover-<pid>` below the cgroup it
/// runs in), created when `create`; a note either way.
fn detect_v1(ctrl: &str, what: &str, create: bool, notes: &mut Vec<String>) -> Option<PathBuf> {
    let Some((dir, is_root)) = v1_own_dir(ctrl) else {
        notes.push(format!("cgroup v1 {ctrl}: no such hierarchy mounted"));
        return None;
    };
    if is_root {
        notes.push(format!(
            "cgroup v1 {ctrl}: drover runs at the hierarchy's root ({}); it never creates cgroups there, so {what} is not enforced by a cgroup",
            dir.display()
        ));
        return None;
    }
    if !writable(&dir) {
        notes.push(format!(
            "cgroup v1 {ctrl}: {} is not writable",
            dir.display()
        ));
        return None;
    }
    let base = dir.join(format!("drover-{}", std::process::id()));
    if create {
        if let Err(e) = fs::create_dir(&base) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                notes.push(format!(
                    "cgroup v1 {ctrl}: cannot create {}: {e}",
                    base.display()
                ));
                return None;
            }
        }
    }
    notes.push(format!(
        "cgroup v1 {ctrl}: workers under {}",
        base.display()
    ));
    Some(base)
}

/// v2: move drover (and `also`, its guard) into a leaf and hand the controllers to the children.
pub fn v2_setup(dir: &Path, also: &[i32]) -> std::io::Result<()> {
    let leaf = dir.join("supervisor");
    match fs::create_dir(&leaf) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let me = std::process::id();
    write(&leaf.join("cgroup.procs"), &me.to_string())?;
    for pid in also {
        write(&leaf.join("cgroup.procs"), &pid.to_string())?;
    }
    let avail = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enable: Vec<String> = ["memory", "cpu", "pids"]
        .iter()
        .filter(|c| avail.split_whitespace().any(|x| x == **c))
        .map(|c| format!("+{c}"))
        .collect();
    write(&dir.join("cgroup.subtree_control"), &enable.join(" "))
}

pub(super) fn write(path: &Path, value: &str) -> std::io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(false)
        .open(path)
        .or_else(|e| {
            // a test tree has no kernel files: create them there
            if e.kind() == std::io::ErrorKind::NotFound && !path.starts_with("/sys/fs/cgroup") {
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(path)
            } else {
                Err(e)
            }
        })?;
    f.write_all(value.as_bytes()).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("write {value:?} to {}: {e}", path.display()),
        )
    })
}

pub(super) fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub(super) fn keyed(path: &Path, key: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.lines().find_map(|l| {
        let (k, v) = l.split_once(char::is_whitespace)?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroups {
    /// Set the node/pod budget on drover's parent cgroup(s).
    pub fn set_node_limits(&self, memory: Option<u64>, cpu: Option<f64>) -> std::io::Result<()> {
        match self.version {
            Version::V1 => {
                if let (Some(m), Some(dir)) = (memory, &self.memory) {
                    write(&dir.join("memory.limit_in_bytes"), &m.to_string())?;
                }
                if let (Some(c), Some(dir)) = (cpu, &self.cpu) {
                    write(&dir.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                    write(
                        &dir.join("cpu.cfs_quota_us"),
                        &((c * CFS_PERIOD_US as f64) as u64).to_string(),
                    )?;
                }
            }
            Version::V2 => {
                // drover's own cgroup holds drover too; its limits were set by whoever
                // delegated it (systemd MemoryMax=, CPUQuota=)
            }
        }
        Ok(())
    }

    /// Remove drover's parent directories (v1), once the slots are gone.
    pub fn remove(&self) {
        if self.version == Version::V1 {
            for d in self.memory.iter().chain(self.cpu.iter()) {
                let _ = fs::remove_dir(d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkerBudget;

    /// The v2 file protocol against a temporary tree (no kernel needed).
    #[test]
    fn v2_file_protocol() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        v2_setup(root, &[]).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids"
        );
        let me = std::process::id();
        assert_eq!(
            fs::read_to_string(root.join("supervisor/cgroup.procs")).unwrap(),
            me.to_string()
        );
        let cg = Cgroups {
            version: Version::V2,
            memory: Some(root.to_path_buf()),
            cpu: Some(root.to_path_buf()),
        };
        let b = WorkerBudget {
            memory_soft: Some(400 << 20),
            memory_hard: Some(512 << 20),
            cpu: Some(0.5),
        };
        let s = cg.slot("api.0-7", &b).unwrap();
        let d = root.join("api.0-7");
        assert_eq!(
            fs::read_to_string(d.join("memory.max")).unwrap(),
            (512u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(d.join("memory.high")).unwrap(),
            (400u64 << 20).to_string()
        );
        assert_eq!(
            fs::read_to_string(d.join("cpu.max")).unwrap(),
            "50000 100000"
        );
        assert_eq!(fs::read_to_string(d.join("memory.swap.max")).unwrap(), "0");
        assert_eq!(s.procs_fds().len(), 1, "one directory, one cgroup.procs");
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 3\nmax 1\noom 1\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(s.oom_kills(), 2);
        fs::write(d.join("memory.current"), "1000000\n").unwrap();
        fs::write(d.join("memory.stat"), "anon 800000\ninactive_file 100000\n").unwrap();
        assert_eq!(s.memory_bytes(), Some(900_000));
        fs::write(
            d.join("cpu.stat"),
            "usage_usec 10\nnr_periods 5\nnr_throttled 3\nthrottled_usec 1234\n",
        )
        .unwrap();
        assert_eq!(s.throttled(), Some((3, 1234)));
        // no budget: unlimited
        let s2 = cg.slot("api.1-8", &WorkerBudget::default()).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("api.1-8/memory.max")).unwrap(),
            "max"
        );
        assert_eq!(
            fs::read_to_string(root.join("api.1-8/cpu.max")).unwrap(),
            "max 100000"
        );
        drop(s2);
    }

    #[test]
    fn keyed_files() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("memory.oom_control");
        fs::write(&p, "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n").unwrap();
        assert_eq!(keyed(&p, "oom_kill"), Some(4));
        assert_eq!(keyed(&p, "missing"), None);
    }
}

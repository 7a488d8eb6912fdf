//! The cgroup(s) of one worker: created with its budget, joined by the worker itself between
//! fork and exec (through `cgroup.procs` fds opened here beforehand), read for memory, OOM kills
//! and throttling, killed whole, removed once empty.

use std::fs;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{keyed, read_u64, write, Cgroups, Version, CFS_PERIOD_US};
use crate::config::WorkerBudget;

/// The cgroup(s) of one worker slot.
#[derive(Debug)]
pub struct SlotCgroup {
    pub version: Version,
    pub memory: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
    /// `cgroup.procs` of each directory, opened before fork for the child to write into
    procs: Vec<OwnedFd>,
}

/// A worker's memory cgroup, by path: what the status server reads when it is asked (it holds
/// no fd, so a removed cgroup simply reads as nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryGauge {
    version: Version,
    dir: PathBuf,
}

impl MemoryGauge {
    /// Working set (usage minus inactive file cache, as the kubelet counts it).
    pub fn read(&self) -> Option<u64> {
        let d = &self.dir;
        let (usage, inactive) = match self.version {
            Version::V1 => ("memory.usage_in_bytes", "total_inactive_file"),
            Version::V2 => ("memory.current", "inactive_file"),
        };
        let usage = read_u64(&d.join(usage))?;
        let inactive = keyed(&d.join("memory.stat"), inactive).unwrap_or(0);
        Some(usage.saturating_sub(inactive))
    }
}

impl Cgroups {
    /// Create (or reuse) the cgroup of one slot and apply its budget.
    pub fn slot(&self, name: &str, b: &WorkerBudget) -> std::io::Result<SlotCgroup> {
        let (memory, cpu) = match self.version {
            Version::V1 => (
                self.memory
                    .as_ref()
                    .map(|base| v1_memory(&mkdir(base, name)?, b))
                    .transpose()?,
                self.cpu
                    .as_ref()
                    .map(|base| v1_cpu(&mkdir(base, name)?, b))
                    .transpose()?,
            ),
            Version::V2 => {
                let base = self
                    .memory
                    .as_ref()
                    .or(self.cpu.as_ref())
                    .expect("a v2 cgroup has a directory");
                let d = v2_slot(
                    &mkdir(base, name)?,
                    b,
                    self.memory.is_some(),
                    self.cpu.is_some(),
                )?;
                (
                    self.memory.as_ref().map(|_| d.clone()),
                    self.cpu.as_ref().map(|_| d.clone()),
                )
            }
        };
        let mut dirs: Vec<&PathBuf> = memory.iter().chain(cpu.iter()).collect();
        dirs.dedup();
        let procs = dirs
            .into_iter()
            .map(|d| open_procs(d))
            .collect::<Result<_, _>>()?;
        Ok(SlotCgroup {
            version: self.version,
            memory,
            cpu,
            procs,
        })
    }
}

impl SlotCgroup {
    /// fds the child writes its pid into before exec.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(|f| f.as_raw_fd()).collect()
    }

    /// Move `pid` into this cgroup from outside (a preloaded worker, which drover did not spawn
    /// itself; it waits for drover's go before it serves).
    pub fn join(&self, pid: i32) -> std::io::Result<()> {
        for f in &self.procs {
            nix::unistd::write(f, pid.to_string().as_bytes())?;
        }
        Ok(())
    }

    /// OOM kills the kernel made in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let Some(d) = &self.memory else { return 0 };
        match self.version {
            Version::V1 => keyed(&d.join("memory.oom_control"), "oom_kill").unwrap_or(0),
            Version::V2 => keyed(&d.join("memory.events"), "oom_kill").unwrap_or(0),
        }
    }

    /// Working set (usage minus inactive file cache, as the kubelet counts it).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory_gauge()?.read()
    }

    /// Its memory cgroup, for reading the working set elsewhere (the status server, at request
    /// time).
    pub fn memory_gauge(&self) -> Option<MemoryGauge> {
        Some(MemoryGauge {
            version: self.version,
            dir: self.memory.clone()?,
        })
    }

    /// (periods throttled, total throttled time in ns/us as the kernel reports it)
    pub fn throttled(&self) -> Option<(u64, u64)> {
        let d = self.cpu.as_ref()?;
        match self.version {
            Version::V1 => Some((
                keyed(&d.join("cpu.stat"), "nr_throttled")?,
                keyed(&d.join("cpu.stat"), "throttled_time")?,
            )),
            Version::V2 => Some((
                keyed(&d.join("cpu.stat"), "nr_throttled")?,
                keyed(&d.join("cpu.stat"), "throttled_usec")?,
            )),
        }
    }

    /// Every pid in the slot's cgroup(s).
    pub fn pids(&self) -> Vec<i32> {
        let mut v: Vec<i32> = self
            .memory
            .iter()
            .chain(self.cpu.iter())
            .flat_map(|d| {
                fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// SIGKILL everything in the cgroup, including processes that left the process group.
    pub fn kill_all(&self) {
        if self.version == Version::V2 {
            if let Some(d) = self.memory.as_ref().or(self.cpu.as_ref()) {
                if write(&d.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        for pid in self.pids() {
            if pid > 1 {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }

    /// Remove the slot's directories; false while processes remain.
    pub fn remove(&self) -> bool {
        let mut ok = true;
        let mut dirs: Vec<&PathBuf> = self.memory.iter().chain(self.cpu.iter()).collect();
        dirs.dedup();
        for d in dirs {
            if d.exists() && fs::remove_dir(d).is_err() {
                ok = false;
            }
        }
        ok
    }

    /// v1: an eventfd that becomes readable when memory usage crosses `threshold`.
    pub fn usage_notifier(&self, threshold: u64) -> std::io::Result<EventFd> {
        let d = self
            .memory
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no memory cgroup"))?;
        if self.version != Version::V1 {
            return Err(std::io::Error::other(
                "usage thresholds are a cgroup v1 interface",
            ));
        }
        let efd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        let usage = fs::File::open(d.join("memory.usage_in_bytes"))?;
        write(
            &d.join("cgroup.event_control"),
            &format!(
                "{} {} {threshold}",
                efd.as_fd().as_raw_fd(),
                usage.as_raw_fd()
            ),
        )?;
        Ok(efd)
    }
}

fn mkdir(base: &Path, name: &str) -> std::io::Result<PathBuf> {
    let dir = base.join(name);
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
        Err(e) => Err(std::io::Error::new(
            e.kind(),
            format!("mkdir {}: {e}", dir.display()),
        )),
    }
}

/// v1 memory: the hard limit (and the same for memory+swap, so it cannot be dodged into swap
/// where swap accounting is on), the soft limit.
fn v1_memory(d: &Path, b: &WorkerBudget) -> std::io::Result<PathBuf> {
    if let Some(h) = b.memory_hard {
        write(&d.join("memory.limit_in_bytes"), &h.to_string())?;
        let _ = write(&d.join("memory.memsw.limit_in_bytes"), &h.to_string());
    }
    if let Some(s) = b.memory_soft {
        write(&d.join("memory.soft_limit_in_bytes"), &s.to_string())?;
    }
    Ok(d.to_path_buf())
}

/// v1 cpu: a CFS quota of `cpu` cores (none: unlimited).
fn v1_cpu(d: &Path, b: &WorkerBudget) -> std::io::Result<PathBuf> {
    write(&d.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
    let quota = b
        .cpu
        .map(|c| ((c * CFS_PERIOD_US as f64) as i64).max(1000))
        .unwrap_or(-1);
    write(&d.join("cpu.cfs_quota_us"), &quota.to_string())?;
    Ok(d.to_path_buf())
}

/// v2: memory.max / memory.high (no swap), cpu.max, in one directory.
fn v2_slot(d: &Path, b: &WorkerBudget, memory: bool, cpu: bool) -> std::io::Result<PathBuf> {
    let or_max = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_else(|| "max".into());
    if memory {
        write(&d.join("memory.max"), &or_max(b.memory_hard))?;
        write(&d.join("memory.high"), &or_max(b.memory_soft))?;
        let _ = write(&d.join("memory.swap.max"), "0");
    }
    if cpu {
        let v = match b.cpu {
            Some(c) => format!(
                "{} {CFS_PERIOD_US}",
                ((c * CFS_PERIOD_US as f64) as u64).max(1000)
            ),
            None => format!("max {CFS_PERIOD_US}"),
        };
        write(&d.join("cpu.max"), &v)?;
    }
    Ok(d.to_path_buf())
}

/// `cgroup.procs` of a directory, opened for the child to write its pid into.
fn open_procs(d: &Path) -> std::io::Result<OwnedFd> {
    let procs_path = d.join("cgroup.procs");
    fs::OpenOptions::new()
        .write(true)
        // a test tree has no kernel files: create it there
        .create(!procs_path.starts_with("/sys/fs/cgroup"))
        .truncate(false)
        .open(&procs_path)
        .map(OwnedFd::from)
        .map_err(|e| {
            std::io::Error::new(e.kind(), format!("open {}/cgroup.procs: {e}", d.display()))
        })
}

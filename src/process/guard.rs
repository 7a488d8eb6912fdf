//! The guard: what makes "drover SIGKILLed leaves nothing behind" true when drover is not PID 1.
//!
//! A parent-death signal only reaches drover's direct children, and only the thread that forked
//! them; a worker's grandchildren would survive. So drover forks, at start-up and while it is
//! still single-threaded, a tiny guard process that holds the read end of a pipe. drover writes
//! `+PGID` when a process group starts and `-PGID` when it is gone. When drover dies for any
//! reason, the kernel closes the write end; the guard reads EOF, sends SIGKILL to every group
//! still listed, and exits. As PID 1 the guard is not needed: the namespace dies with drover.
//!
//! Where drover manages cgroups it also sends `c<dir>` (a v1 parent, removed whole) or
//! `k<dir>` (a v2 subtree: its worker children are removed, the directory kept): on EOF the guard
//! kills every process left in those cgroups — including any that left their process group with
//! `setsid` — and removes the directories, so a killed drover leaves no stale cgroup either.
//!
//! Limit: without cgroups, a grandchild that leaves its process group (`setsid`) escapes.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{FromRawFd, IntoRawFd};

pub struct Guard {
    w: File,
    pub pid: libc::pid_t,
}

impl Guard {
    /// Fork the guard. Call before any thread is started: the child runs ordinary Rust code.
    pub fn start() -> std::io::Result<Guard> {
        let (r, w) = crate::process::spawn::pipe()?;
        // SAFETY: the process is single-threaded here (no runtime, no logger thread yet), so
        // the child may allocate and use std freely.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(w);
            // SAFETY: single-threaded child; see above.
            unsafe { guard_main(File::from_raw_fd(r.into_raw_fd())) }
        }
        drop(r);
        Ok(Guard {
            w: File::from(w),
            pid,
        })
    }

    pub fn watch(&mut self, pgid: libc::pid_t) {
        let _ = writeln!(self.w, "+{pgid}");
    }

    pub fn unwatch(&mut self, pgid: libc::pid_t) {
        let _ = writeln!(self.w, "-{pgid}");
    }

    /// A cgroup parent to empty and remove if drover dies; `keep`: remove only its children.
    pub fn cgroup(&mut self, dir: &std::path::Path, keep: bool) {
        let _ = writeln!(self.w, "{}{}", if keep { 'k' } else { 'c' }, dir.display());
    }
}

unsafe fn guard_main(r: File) -> ! {
    detach();
    let (groups, cgroups) = read_until_eof(r);
    for g in groups {
        if g > 1 {
            libc::kill(-g, libc::SIGKILL);
        }
    }
    remove_cgroups(&cgroups);
    libc::_exit(0)
}

/// Ignore the signals meant for drover, hold no terminal or pipe open, be named `drover-guard`.
unsafe fn detach() {
    // Terminal and service-manager signals are drover's business, not the guard's.
    for s in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGTSTP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGUSR1,
        libc::SIGUSR2,
        libc::SIGPIPE,
    ] {
        libc::signal(s, libc::SIG_IGN);
    }
    // hold no one's terminal or log pipe open
    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
    if null >= 0 {
        libc::dup2(null, 0);
        libc::dup2(null, 1);
        libc::dup2(null, 2);
    }
    libc::prctl(
        libc::PR_SET_NAME,
        c"drover-guard".as_ptr() as libc::c_ulong,
        0,
        0,
        0,
    );
}

/// Follow drover's `+PGID`, `-PGID`, `c<dir>`, `k<dir>` lines until drover is gone (EOF).
fn read_until_eof(r: File) -> (BTreeSet<libc::pid_t>, Vec<(std::path::PathBuf, bool)>) {
    let mut groups: BTreeSet<libc::pid_t> = BTreeSet::new();
    let mut cgroups: Vec<(std::path::PathBuf, bool)> = Vec::new();
    let mut line = String::new();
    let mut r = BufReader::new(r);
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let t = line.trim();
        if let Some(p) = t.strip_prefix('+').and_then(|p| p.parse().ok()) {
            groups.insert(p);
        } else if let Some(p) = t
            .strip_prefix('-')
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        {
            groups.remove(&p);
        } else if let Some(d) = t.strip_prefix('c') {
            cgroups.push((d.into(), false));
        } else if let Some(d) = t.strip_prefix('k') {
            cgroups.push((d.into(), true));
        }
    }
    (groups, cgroups)
}

/// Empty and remove drover's cgroups (a dying process leaves its cgroup a moment later).
fn remove_cgroups(cgroups: &[(std::path::PathBuf, bool)]) {
    for _ in 0..100 {
        let mut left = false;
        for (dir, keep) in cgroups {
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.flatten() {
                let child = e.path();
                if !child.is_dir() || e.file_name() == "supervisor" {
                    continue;
                }
                let procs = std::fs::read_to_string(child.join("cgroup.procs")).unwrap_or_default();
                for pid in procs
                    .lines()
                    .filter_map(|l| l.trim().parse::<libc::pid_t>().ok())
                {
                    if pid > 1 {
                        // SAFETY: kill(2) on a pid read from drover's own cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
                if std::fs::remove_dir(&child).is_err() {
                    left = true;
                }
            }
            if !keep && std::fs::remove_dir(dir).is_err() && dir.exists() {
                left = true;
            }
        }
        if !left {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

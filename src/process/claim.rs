//! A preloaded worker's pid is a claim, made by code drover does not trust. Before drover
//! writes it into a cgroup, watches it or ever signals it, the kernel must confirm that it is
//! the worker drover asked for:
//!
//! - the worker announced itself: the `pid N` message carries the sender's credentials
//!   (`SO_PASSCRED`, filled in by the kernel), and the sender is N itself — a preloader cannot
//!   speak for another process (only `CAP_SYS_ADMIN` can forge credentials, and the checks
//!   below hold even then);
//! - N is not drover, the guard, the preloader or a process drover already runs;
//! - N is drover's own child (`waitid(P_PIDFD, …, WNOWAIT)`: ECHILD otherwise), held by a
//!   pidfd from here on. drover is the only reaper, so while it checks, N cannot be reaped and
//!   its number cannot be reused: every fact read from /proc below is about this process;
//! - N leads its own process group (every stop and kill goes to the group);
//! - N runs as the program's user (real and effective uid);
//! - N started after drover asked for it (its start time, in clock ticks since boot, is not
//!   earlier than the request's), so no process older than the request can be claimed.
//!
//! systemd takes the same stance on `MAINPID=` (CVE-2018-16888); gunicorn and s6 only ever act
//! on children they forked themselves.

use std::os::fd::AsRawFd;

use super::pidfd::PidFd;

/// What drover expects of a worker it asked a preloader to fork.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub drover: i32,
    pub guard: Option<i32>,
    pub preloader: i32,
    /// the program's user (drover's own when it has none)
    pub uid: u32,
    /// when the fork was requested, in clock ticks since boot (`boot_ticks`)
    pub asked_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("pid {0} is not a process a worker can be")]
    Impossible(i32),
    #[error("pid {claimed} was announced by pid {sender}, not by the worker itself")]
    NotSelf { claimed: i32, sender: i32 },
    #[error("pid {0} is drover itself")]
    Drover(i32),
    #[error("pid {0} is drover's guard")]
    Guard(i32),
    #[error("pid {0} is the preloader itself")]
    Preloader(i32),
    #[error("pid {0} is already one of drover's processes")]
    Known(i32),
    #[error("pid {0} does not exist")]
    NoProcess(i32),
    #[error("pid {0} is not drover's child (a forked worker is re-parented to drover)")]
    NotChild(i32),
    #[error("pid {0} has already exited")]
    Exited(i32),
    #[error("pid {pid} is not the leader of its own process group (its group is {pgrp})")]
    NotLeader { pid: i32, pgrp: i32 },
    #[error("pid {pid} runs as uid {uid}, not as the program's uid {want}")]
    WrongUser { pid: i32, uid: u32, want: u32 },
    #[error("pid {0} started before drover asked for a worker")]
    TooOld(i32),
    #[error("cannot check pid {pid}: {err}")]
    Unreadable { pid: i32, err: String },
}

/// Check a claim that `claimed` is the new worker, made by the process `sender` (the kernel's
/// credentials on the message). On success drover holds the process by the returned pidfd.
pub fn verify(
    claimed: i32,
    sender: i32,
    known: impl Fn(i32) -> bool,
    e: &Expected,
) -> Result<PidFd, Refused> {
    if claimed <= 1 {
        return Err(Refused::Impossible(claimed));
    }
    if claimed == e.drover {
        return Err(Refused::Drover(claimed));
    }
    if Some(claimed) == e.guard {
        return Err(Refused::Guard(claimed));
    }
    if claimed == e.preloader {
        return Err(Refused::Preloader(claimed));
    }
    if sender != claimed {
        return Err(Refused::NotSelf { claimed, sender });
    }
    if known(claimed) {
        return Err(Refused::Known(claimed));
    }
    let fd = PidFd::open(claimed).map_err(|_| Refused::NoProcess(claimed))?;
    match child_state(&fd) {
        Ok(ChildState::Running) => {}
        Ok(ChildState::Exited) => return Err(Refused::Exited(claimed)),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => return Err(Refused::NotChild(claimed)),
        Err(err) => {
            return Err(Refused::Unreadable {
                pid: claimed,
                err: err.to_string(),
            })
        }
    }
    // From here the process is drover's unreaped child: /proc/N is this process.
    let unreadable = |err: std::io::Error| Refused::Unreadable {
        pid: claimed,
        err: err.to_string(),
    };
    let stat = std::fs::read_to_string(format!("/proc/{claimed}/stat")).map_err(unreadable)?;
    let facts = parse_stat(&stat).ok_or_else(|| Refused::Unreadable {
        pid: claimed,
        err: "unexpected /proc/PID/stat".into(),
    })?;
    if facts.pgrp != claimed {
        return Err(Refused::NotLeader {
            pid: claimed,
            pgrp: facts.pgrp,
        });
    }
    let status = std::fs::read_to_string(format!("/proc/{claimed}/status")).map_err(unreadable)?;
    let (real, effective) = uids(&status).ok_or_else(|| Refused::Unreadable {
        pid: claimed,
        err: "no Uid line in /proc/PID/status".into(),
    })?;
    if real != e.uid || effective != e.uid {
        let uid = if real != e.uid { real } else { effective };
        return Err(Refused::WrongUser {
            pid: claimed,
            uid,
            want: e.uid,
        });
    }
    if facts.start_ticks < e.asked_at {
        return Err(Refused::TooOld(claimed));
    }
    Ok(fd)
}

enum ChildState {
    Running,
    Exited,
}

/// Is the pidfd's process drover's child, and has it exited? Never reaps it (WNOWAIT).
fn child_state(fd: &PidFd) -> std::io::Result<ChildState> {
    // SAFETY: a zeroed siginfo_t is a valid value to pass for the kernel to fill in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    let raw = std::os::fd::AsFd::as_fd(fd).as_raw_fd();
    // SAFETY: waitid on a pidfd drover owns, writing into a local siginfo; WNOHANG never
    // blocks and WNOWAIT leaves the child to the reaper.
    let r = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            raw as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: si_pid is valid to read after waitid filled (or zeroed) the siginfo.
    Ok(if unsafe { info.si_pid() } == 0 {
        ChildState::Running
    } else {
        ChildState::Exited
    })
}

/// What the claim check reads from /proc/PID/stat.
#[derive(Debug, PartialEq, Eq)]
struct StatFacts {
    pgrp: i32,
    start_ticks: u64,
}

fn parse_stat(stat: &str) -> Option<StatFacts> {
    let rest = stat.rsplit_once(')')?.1;
    // after the comm: state(0) ppid(1) pgrp(2) session tty tpgid flags minflt cminflt majflt
    // cmajflt utime stime cutime cstime priority nice threads itrealvalue starttime(19)
    let f: Vec<&str> = rest.split_ascii_whitespace().take(20).collect();
    Some(StatFacts {
        pgrp: f.get(2)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

/// Real and effective uid from /proc/PID/status.
fn uids(status: &str) -> Option<(u32, u32)> {
    let l = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    let mut f = l.split_ascii_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// Now, in the clock ticks since boot that /proc/PID/stat's start time uses (both round down,
/// so a process forked at or after this instant never reads as earlier).
pub fn boot_ticks() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .map(|t| t.tv_sec() as u128 * 1_000_000_000 + t.tv_nsec() as u128)
        .unwrap_or(0);
    let hz = crate::resources::usage::clock_ticks_per_sec().max(1.0) as u128;
    (ts / (1_000_000_000 / hz)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    fn expected(preloader: i32, asked_at: u64) -> Expected {
        Expected {
            drover: std::process::id() as i32,
            guard: None,
            preloader,
            // SAFETY: getuid has no preconditions.
            uid: unsafe { libc::getuid() },
            asked_at,
        }
    }

    #[test]
    fn stat_and_status_fields() {
        let stat = "77 (a (b) c) S 1 77 77 0 -1 4194560 1 0 0 0 3 4 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(stat),
            Some(StatFacts {
                pgrp: 77,
                start_ticks: 123456
            })
        );
        assert_eq!(
            uids("Name:\tx\nUid:\t1000\t1001\t1000\t1000\n"),
            Some((1000, 1001))
        );
    }

    #[test]
    fn only_a_fresh_own_child_leading_its_group_is_accepted() {
        let asked = boot_ticks();
        let e = expected(999_999, asked);
        let none = |_| false;
        // the impossible and the forbidden, before any syscall
        assert_eq!(verify(0, 0, none, &e).unwrap_err(), Refused::Impossible(0));
        assert_eq!(verify(1, 1, none, &e).unwrap_err(), Refused::Impossible(1));
        let me = std::process::id() as i32;
        assert_eq!(verify(me, me, none, &e).unwrap_err(), Refused::Drover(me));
        // a child of ours, leading its own group: accepted; announced by someone else: not
        let mut c = std::process::Command::new("sleep")
            .arg("100")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        assert_eq!(
            verify(pid, 12345, none, &e).unwrap_err(),
            Refused::NotSelf {
                claimed: pid,
                sender: 12345
            }
        );
        assert_eq!(
            verify(pid, pid, |p| p == pid, &e).unwrap_err(),
            Refused::Known(pid)
        );
        let fd = verify(pid, pid, none, &e).expect("our own fresh child");
        assert_eq!(fd.pid(), pid);
        // the same child, claimed as if asked for long after it started
        let later = expected(999_999, boot_ticks() + 1_000);
        assert_eq!(
            verify(pid, pid, none, &later).unwrap_err(),
            Refused::TooOld(pid)
        );
        // the wrong user
        let other = Expected {
            uid: e.uid + 1,
            ..e
        };
        assert!(matches!(
            verify(pid, pid, none, &other).unwrap_err(),
            Refused::WrongUser { .. }
        ));
        // exited, not yet reaped: refused without reaping it
        c.kill().unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match verify(pid, pid, none, &e) {
                Err(Refused::Exited(p)) if p == pid => break,
                _ if std::time::Instant::now() > end => {
                    panic!("the killed child never read as exited")
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(5)),
            }
        }
        c.wait().unwrap();
        // a process that is not our child: our parent
        let parent = nix::unistd::getppid().as_raw();
        if parent > 1 {
            assert!(matches!(
                verify(parent, parent, none, &e).unwrap_err(),
                Refused::NotChild(_) | Refused::NoProcess(_)
            ));
        }
        // a child that does not lead its own group
        let mut c = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        assert!(matches!(
            verify(pid, pid, none, &e).unwrap_err(),
            Refused::NotLeader { .. }
        ));
        c.kill().unwrap();
        c.wait().unwrap();
    }
}

//! A process held by a pidfd: a signal sent through it reaches that process (or the process group
//! it leads), never whatever later gets the same pid number.
//!
//! drover opens one for every child right after it starts (nothing can reap the child in between:
//! drover is the only reaper, and it runs on the same thread), keeps it until the child is reaped,
//! and signals through it. Signals to a worker's whole process group use
//! `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9): the kernel resolves the group from the pidfd's own
//! `struct pid`, which a reused number does not share, so even the last SIGKILL to a reaped
//! worker's leftovers cannot reach a stranger. On older kernels the group is signalled by number,
//! and only while the leader is not yet reaped (its number cannot be reused until drover reaps
//! it), except for that one last SIGKILL right after the reap, sent as before.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::sys::signal::Signal;

/// Whether the running kernel has `PIDFD_SIGNAL_PROCESS_GROUP`: 0 unknown, 1 yes, 2 no.
static GROUP_FLAG: AtomicU8 = AtomicU8::new(0);

#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// A pidfd for `pid`, close-on-exec.
    pub fn open(pid: i32) -> std::io::Result<PidFd> {
        if pid <= 0 {
            return Err(std::io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns (pidfds are close-on-exec).
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(PidFd { fd, pid })
    }

    /// Take ownership of a pidfd received from elsewhere (the guard gets them over a socket).
    pub fn from_owned(fd: OwnedFd, pid: i32) -> PidFd {
        PidFd { fd, pid }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `sig` to the process itself (0: only ask whether it exists, unreaped).
    pub fn signal(&self, sig: Option<Signal>) -> std::io::Result<()> {
        send(self.fd.as_raw_fd(), sig.map_or(0, |s| s as i32), 0)
    }

    /// Not yet reaped (alive, or a zombie its parent has not collected).
    pub fn unreaped(&self) -> bool {
        self.signal(None).is_ok()
    }

    /// `sig` to the process group this process leads (or led: after the reap, the members left
    /// in it). ESRCH when nobody is left is not an error.
    pub fn signal_group(&self, sig: Signal) -> std::io::Result<()> {
        let r = if GROUP_FLAG.load(Ordering::Relaxed) != 2 {
            match send(
                self.fd.as_raw_fd(),
                sig as i32,
                libc::PIDFD_SIGNAL_PROCESS_GROUP,
            ) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    GROUP_FLAG.store(2, Ordering::Relaxed);
                    None
                }
                r => {
                    GROUP_FLAG.store(1, Ordering::Relaxed);
                    Some(r)
                }
            }
        } else {
            None
        };
        let r = r.unwrap_or_else(|| self.signal_group_by_number(sig));
        // a leader that moved itself into another group (setpgid, within drover's session) is
        // not in the group it led: it gets the signal itself, through the pidfd, exactly once
        if self.left_its_group() {
            let _ = self.signal(Some(sig));
        }
        match r {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r,
        }
    }

    /// The process is alive (unreaped) and no longer leads the group it was started in. Its
    /// number is its own while it is unreaped, so asking by number is about this process.
    fn left_its_group(&self) -> bool {
        self.unreaped()
            && nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(self.pid)))
                .is_ok_and(|g| g.as_raw() != self.pid)
    }

    /// Before Linux 6.9: by number, but only while the leader is unreaped (so the number is
    /// still its own).
    fn signal_group_by_number(&self, sig: Signal) -> std::io::Result<()> {
        if !self.unreaped() {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), sig)
            .map_err(std::io::Error::from)
    }

    /// The last SIGKILL to what a reaped leader left in its group. With the group flag it is as
    /// precise as any; without it, by number, right after the reap, as drover always did.
    pub fn kill_leftovers(&self) {
        if GROUP_FLAG.load(Ordering::Relaxed) == 2 {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(self.pid), Signal::SIGKILL);
        } else {
            let _ = self.signal_group(Signal::SIGKILL);
        }
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn send(fd: RawFd, sig: i32, flags: libc::c_uint) -> std::io::Result<()> {
    // SAFETY: pidfd_send_signal on an fd we own; a null siginfo means "as kill(2) would".
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_group_is_signalled_through_the_pidfd_and_a_reaped_one_is_not_reachable() {
        // a leader with a child in its own group
        let mut c = std::process::Command::new("sh")
            .args(["-c", "sleep 1000 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let fd = PidFd::open(pid).unwrap();
        assert!(fd.unreaped());
        fd.signal_group(Signal::SIGKILL).unwrap();
        let st = c.wait().unwrap();
        assert!(!st.success());
        // reaped: the pidfd no longer reaches anything, and saying so is not an error
        assert!(!fd.unreaped());
        fd.signal_group(Signal::SIGTERM).unwrap();
        assert!(PidFd::open(0).is_err());
    }

    #[test]
    fn a_leader_that_left_its_group_still_gets_the_signal() {
        // another group in this session, and a child that starts leading its own group, then
        // moves itself into that one (what a hostile worker can do)
        let mut other = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .spawn()
            .unwrap();
        let target = other.id() as i32;
        let mut c = std::process::Command::new("python3")
            .args([
                "-c",
                "import os,time; os.setpgid(0, int(os.environ['TARGET'])); time.sleep(1000)",
            ])
            .env("TARGET", target.to_string())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = c.id() as i32;
        let fd = PidFd::open(pid).unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(pid))).ok()
            != Some(nix::unistd::Pid::from_raw(target))
        {
            assert!(std::time::Instant::now() < end, "the child never moved");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fd.signal_group(Signal::SIGKILL).unwrap();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let died = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break Some(st);
            }
            if std::time::Instant::now() > end {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let _ = c.kill();
        let _ = c.wait();
        let _ = other.kill();
        let _ = other.wait();
        assert!(died.is_some(), "the leader escaped its group's SIGKILL");
    }
}

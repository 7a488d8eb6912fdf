//! The guard: what makes "drover SIGKILLed leaves nothing behind" true when drover is not PID 1.
//!
//! A parent-death signal only reaches drover's direct children, and only the thread that forked
//! them; a worker's grandchildren would survive. So drover forks, at start-up and while it is
//! still single-threaded, a tiny guard process that holds one end of a `SOCK_SEQPACKET` pair.
//! drover sends `+PID` with a pidfd of the new process group's leader (`SCM_RIGHTS`) when a
//! worker, step, probe or preloader starts, and `-PID` once it has reaped it; the guard holds the
//! pidfds. When drover dies for any reason, the kernel closes its end; the guard reads EOF, sends
//! SIGKILL to every group it still holds *through the pidfd* (so a number reused since by
//! another process is never signalled), and exits. As PID 1 the guard is not needed: the
//! namespace dies with drover.
//!
//! Where drover manages cgroups it also sends `c<dir>` (a v1 parent, removed whole) or
//! `k<dir>` (a v2 subtree: its worker children are removed, the directory kept), and `r<dir>` for
//! its runtime directory: on EOF the guard kills every process left in those cgroups — including
//! any that left their process group with `setsid` — and removes the directories, so a killed
//! drover leaves no stale cgroup or socket either.
//!
//! drover's side never blocks: sends are non-blocking, and what the guard has not taken yet
//! (it is stopped, or slow) waits in a bounded queue, retried on the next send.
//!
//! Limit: without cgroups, a grandchild that leaves its process group (`setsid`) escapes.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};

use super::pidfd::PidFd;

/// Messages waiting for a guard that is not reading; beyond this they are dropped and counted.
const MAX_PENDING: usize = 65_536;

pub struct Guard {
    sock: OwnedFd,
    pub pid: libc::pid_t,
    /// (message, a pidfd to pass with it) not yet taken by the guard
    pending: VecDeque<(String, Option<OwnedFd>)>,
    /// messages dropped because the queue was full
    pub dropped: u64,
}

impl Guard {
    /// Fork the guard. Call before any thread is started: the child runs ordinary Rust code.
    pub fn start() -> std::io::Result<Guard> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        // SAFETY: the process is single-threaded here (no runtime, no logger thread yet), so
        // the child may allocate and use std freely.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(mine);
            // SAFETY: single-threaded child; see above.
            unsafe { guard_main(theirs) }
        }
        drop(theirs);
        nix::fcntl::fcntl(
            &mine,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Guard {
            sock: mine,
            pid,
            pending: VecDeque::new(),
            dropped: 0,
        })
    }

    /// A new process group led by `leader`: kill it if drover dies.
    pub fn watch(&mut self, leader: &PidFd) {
        let fd = std::os::fd::AsFd::as_fd(leader).try_clone_to_owned().ok();
        self.send(format!("+{}", leader.pid()), fd);
    }

    /// The group's leader was reaped: forget it.
    pub fn unwatch(&mut self, pid: libc::pid_t) {
        self.send(format!("-{pid}"), None);
    }

    /// A cgroup parent to empty and remove if drover dies; `keep`: remove only its children.
    pub fn cgroup(&mut self, dir: &std::path::Path, keep: bool) {
        let tag = if keep { 'k' } else { 'c' };
        self.send(format!("{tag}{}", dir.display()), None);
    }

    /// drover's runtime directory, removed if drover dies.
    pub fn runtime_dir(&mut self, dir: &std::path::Path) {
        self.send(format!("r{}", dir.display()), None);
    }

    fn send(&mut self, msg: String, fd: Option<OwnedFd>) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        self.pending.push_back((msg, fd));
        self.flush();
    }

    /// Hand the guard what it has room for; never waits.
    pub fn flush(&mut self) {
        while let Some((msg, fd)) = self.pending.front() {
            let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
            let iov = [IoSlice::new(msg.as_bytes())];
            match sendmsg::<()>(
                self.sock.as_raw_fd(),
                &iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(_) => {
                    self.pending.pop_front();
                }
                // the guard is not reading now (stopped, or busy): keep the rest for later
                Err(nix::errno::Errno::EAGAIN) | Err(nix::errno::Errno::EINTR) => return,
                // the guard is gone: the loop reports its exit; nothing more to hand it
                Err(_) => {
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    /// Messages not yet taken by the guard.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

unsafe fn guard_main(sock: OwnedFd) -> ! {
    detach();
    let (groups, dirs) = read_until_eof(&sock);
    for g in groups.values() {
        // through the pidfd: a number reused since by another process is never signalled
        let _ = g.signal_group(Signal::SIGKILL);
    }
    remove_dirs(&dirs);
    libc::_exit(0)
}

/// Ignore the signals meant for drover, hold no terminal or pipe open, be named `drover-guard`,
/// and lead a process group of its own: `kill -9 -PGID` of drover's group must leave the guard
/// to clean up after it.
unsafe fn detach() {
    libc::setpgid(0, 0);
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

/// A directory the guard cleans up: a cgroup (removed whole, or only its children) or drover's
/// runtime directory.
#[derive(Debug, PartialEq, Eq)]
enum Dir {
    Cgroup { dir: std::path::PathBuf, keep: bool },
    Runtime(std::path::PathBuf),
}

/// Follow drover's messages until drover is gone (EOF).
fn read_until_eof(sock: &OwnedFd) -> (BTreeMap<libc::pid_t, PidFd>, Vec<Dir>) {
    let mut groups: BTreeMap<libc::pid_t, PidFd> = BTreeMap::new();
    let mut dirs: Vec<Dir> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (n, fd) = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fd = None;
                if let Ok(cmsgs) = m.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for f in fds {
                                // SAFETY: the kernel installed this fd for us; nothing else owns it.
                                let f =
                                    unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) };
                                fd.get_or_insert(f);
                            }
                        }
                    }
                }
                (m.bytes, fd)
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        };
        if n == 0 {
            break; // drover is gone
        }
        let t = String::from_utf8_lossy(&buf[..n]).into_owned();
        match parse(&t) {
            Some(Msg::Watch(pid)) => {
                if let Some(fd) = fd {
                    groups.insert(pid, PidFd::from_owned(fd, pid));
                }
            }
            Some(Msg::Unwatch(pid)) => {
                groups.remove(&pid);
            }
            Some(Msg::Dir(d)) => dirs.push(d),
            None => {}
        }
    }
    (groups, dirs)
}

#[derive(Debug, PartialEq, Eq)]
enum Msg {
    Watch(libc::pid_t),
    Unwatch(libc::pid_t),
    Dir(Dir),
}

fn parse(t: &str) -> Option<Msg> {
    let (tag, rest) = t.split_at_checked(1)?;
    match tag {
        "+" => rest.parse().ok().map(Msg::Watch),
        "-" => rest.parse().ok().map(Msg::Unwatch),
        "c" | "k" => Some(Msg::Dir(Dir::Cgroup {
            dir: rest.into(),
            keep: tag == "k",
        })),
        "r" => Some(Msg::Dir(Dir::Runtime(rest.into()))),
        _ => None,
    }
}

/// Empty and remove drover's cgroups (a dying process leaves its cgroup a moment later), and
/// its runtime directory.
fn remove_dirs(dirs: &[Dir]) {
    for d in dirs {
        if let Dir::Runtime(p) = d {
            // follows no symlink a worker planted, and holds two fds however deep it nests
            let _ = super::rundir::remove_tree(p);
        }
    }
    let cgroups: Vec<(&std::path::PathBuf, bool)> = dirs
        .iter()
        .filter_map(|d| match d {
            Dir::Cgroup { dir, keep } => Some((dir, *keep)),
            Dir::Runtime(_) => None,
        })
        .collect();
    for _ in 0..100 {
        let mut left = false;
        for &(dir, keep) in &cgroups {
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
                        // SAFETY: kill(2) on a pid read from drover's own cgroup, which only
                        // drover's processes can be in.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse() {
        assert_eq!(parse("+42"), Some(Msg::Watch(42)));
        assert_eq!(parse("-42"), Some(Msg::Unwatch(42)));
        assert_eq!(
            parse("k/sys/fs/cgroup/x"),
            Some(Msg::Dir(Dir::Cgroup {
                dir: "/sys/fs/cgroup/x".into(),
                keep: true
            }))
        );
        assert_eq!(
            parse("r/run/drover-1"),
            Some(Msg::Dir(Dir::Runtime("/run/drover-1".into())))
        );
        assert_eq!(parse("+x"), None);
        assert_eq!(parse(""), None);
    }
}

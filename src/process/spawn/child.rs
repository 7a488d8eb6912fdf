//! Between clone and exec. The child runs on its own stack in drover's memory (CLONE_VM) while
//! the parent's thread waits for its exec (CLONE_VFORK), as posix_spawn does: no page tables
//! copied, no copy-on-write faults, about half a millisecond less per respawn than fork(2).
//!
//! Everything here after the clone runs in the child and is async-signal-safe: raw syscalls on
//! memory the parent prepared (`ChildArgs` and the buffers it points to), no allocation, no
//! locks, no logging, no return into Rust code that might. Each stage is its own function; a
//! stage that fails writes (stage, errno) to the error pipe and exits 127.

use std::os::fd::{OwnedFd, RawFd};

pub(super) const STAGE_EXEC: i32 = 1;
pub(super) const STAGE_CHDIR: i32 = 2;
pub(super) const STAGE_FDS: i32 = 3;
pub(super) const STAGE_PGRP: i32 = 4;
pub(super) const STAGE_PARENT: i32 = 5;
pub(super) const STAGE_CGROUP: i32 = 6;
pub(super) const STAGE_IDENTITY: i32 = 7;

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
const CHILD_STACK: usize = 64 * 1024;

pub(super) struct ChildArgs {
    pub exe: *const libc::c_char,
    pub argv: *const *const libc::c_char,
    pub envp: *const *const libc::c_char,
    pub cwd: *const libc::c_char,
    pub devnull: *const libc::c_char,
    pub out_fd: RawFd,
    pub out_null: bool,
    pub src_fds: *const RawFd,
    pub tmp_fds: *mut RawFd,
    pub n_socks: RawFd,
    pub err_w: RawFd,
    pub parent: libc::pid_t,
    pub listen_pid: *mut u8,
    pub cgroup_fds: *const RawFd,
    pub n_cgroup: usize,
    /// the open-files soft limit drover started with, restored for the worker (0: unchanged)
    pub nofile_soft: u64,
    /// drop to (uid, gid) with no supplementary groups
    pub drop_ids: bool,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// Clone the child; returns once it has exec'd or exited (CLONE_VFORK).
pub(super) fn clone(args: &mut ChildArgs) -> std::io::Result<libc::pid_t> {
    let mut stack = vec![0u8; CHILD_STACK];
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    // SAFETY: every signal is blocked across clone so that no drover handler can run on the
    // child's stack; the child resets every handler to the default before unblocking. The child
    // only runs `child`, whose stages call async-signal-safe syscalls (sigprocmask, sigaction,
    // setpgid, setgroups, setgid, setuid, prctl, getppid, open, dup2, fcntl, close, close_range,
    // getrlimit, setrlimit, chdir, getpid, execve, write, _exit) on memory prepared by the
    // caller (`args`, the buffers it points to, `stack`), all of which outlive the clone call
    // because this thread is suspended until the exec; it never allocates, locks, logs, or
    // returns into Rust code that might.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            args as *mut ChildArgs as *mut libc::c_void,
        );
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        drop(stack);
        if pid < 0 {
            return Err(err);
        }
        Ok(pid)
    }
}

/// What the child reported through the error pipe: (stage, errno), or None once it exec'd (the
/// pipe closed on exec). Microseconds: the child has exec'd or failed by now.
pub(super) fn failure(err_r: &OwnedFd) -> Option<(i32, i32)> {
    let mut buf = [0u8; 8];
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(err_r, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    (got == buf.len()).then(|| {
        let stage = i32::from_ne_bytes(buf[..4].try_into().unwrap());
        let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap());
        (stage, errno)
    })
}

/// clone's entry point for the child: the arguments are copied onto its own stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs that `spawn` keeps alive while it is suspended.
    unsafe { child(std::ptr::read(arg as *const ChildArgs)) }
}

/// Runs in the cloned child, on memory shared with drover. Raw syscalls only.
unsafe fn child(a: ChildArgs) -> ! {
    reset_signals();
    // Into its cgroup before anything else, so every byte and every child is accounted there.
    if !join_cgroups(&a) {
        fail(STAGE_CGROUP, a.err_w);
    }
    // Its own process group, so stop and kill reach everything it starts.
    if libc::setpgid(0, 0) != 0 {
        fail(STAGE_PGRP, a.err_w);
    }
    if a.drop_ids && !drop_ids(&a) {
        fail(STAGE_IDENTITY, a.err_w);
    }
    if a.parent > 0 && !parent_death(&a) {
        fail(STAGE_PARENT, a.err_w);
    }
    let err_w = layout_fds(&a);
    if a.n_socks > 0 {
        write_listen_pid(&a);
    }
    if a.nofile_soft != 0 {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = a.nofile_soft;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    if !a.cwd.is_null() && libc::chdir(a.cwd) != 0 {
        fail(STAGE_CHDIR, err_w);
    }
    libc::execve(a.exe, a.argv, a.envp);
    fail(STAGE_EXEC, err_w)
}

/// Report (stage, errno) to the parent and exit 127.
unsafe fn fail(stage: i32, err_w: RawFd) -> ! {
    let errno = *libc::__errno_location();
    let mut msg = [0u8; 8];
    let (s, e) = (stage.to_ne_bytes(), errno.to_ne_bytes());
    let mut i = 0;
    while i < 4 {
        msg[i] = s[i];
        msg[4 + i] = e[i];
        i += 1;
    }
    libc::write(err_w, msg.as_ptr() as *const libc::c_void, 8);
    libc::_exit(127)
}

/// A clean signal state: nothing ignored (Rust ignores SIGPIPE), no drover handler (they would
/// run in drover's memory), then nothing blocked. Signals arrive blocked from `clone`.
unsafe fn reset_signals() {
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    let mut sig = 1;
    while sig < 32 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
        sig += 1;
    }
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
}

/// Write its own pid into each `cgroup.procs` fd.
unsafe fn join_cgroups(a: &ChildArgs) -> bool {
    let mut i = 0;
    while i < a.n_cgroup {
        let mut buf = [0u8; 12];
        let len = format_pid(libc::getpid(), &mut buf);
        let fd = *a.cgroup_fds.add(i);
        if libc::write(fd, buf.as_ptr() as *const libc::c_void, len) != len as isize {
            return false;
        }
        i += 1;
    }
    true
}

/// Its user and group, once it is in its cgroup and group: no supplementary groups, then the
/// gid, then the uid (after which it could change neither). Before the parent-death signal,
/// which a change of credentials clears. Raw syscalls: glibc's wrappers would broadcast the
/// change to every thread in the thread list, and this child shares drover's memory.
unsafe fn drop_ids(a: &ChildArgs) -> bool {
    libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) == 0
        && libc::syscall(libc::SYS_setgid, a.gid as libc::c_long) == 0
        && libc::syscall(libc::SYS_setuid, a.uid as libc::c_long) == 0
}

/// SIGKILL when drover dies; and if drover already died between clone and here, go now.
unsafe fn parent_death(a: &ChildArgs) -> bool {
    let sig = libc::SIGKILL as libc::c_ulong;
    if libc::prctl(libc::PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0 {
        return false;
    }
    if libc::getppid() != a.parent {
        libc::_exit(1);
    }
    true
}

/// stdin from /dev/null, stdout/stderr as asked, the sockets at 3.. (close-on-exec cleared by
/// dup2), everything above them close-on-exec. Returns the error pipe's new fd.
unsafe fn layout_fds(a: &ChildArgs) -> RawFd {
    // Move the error pipe and the sockets above the target range before laying them out.
    let floor = 3 + a.n_socks;
    let err_w = libc::fcntl(a.err_w, libc::F_DUPFD_CLOEXEC, floor);
    if err_w < 0 {
        fail(STAGE_FDS, a.err_w);
    }
    let mut i = 0;
    while i < a.n_socks {
        let t = libc::fcntl(*a.src_fds.add(i as usize), libc::F_DUPFD_CLOEXEC, floor);
        if t < 0 {
            fail(STAGE_FDS, err_w);
        }
        *a.tmp_fds.add(i as usize) = t;
        i += 1;
    }
    let null = libc::open(a.devnull, libc::O_RDWR);
    if null >= 0 {
        libc::dup2(null, 0);
        if a.out_null {
            libc::dup2(null, 1);
            libc::dup2(null, 2);
        }
        if null > 2 {
            libc::close(null);
        }
    }
    if a.out_fd >= 0 && (libc::dup2(a.out_fd, 1) < 0 || libc::dup2(a.out_fd, 2) < 0) {
        fail(STAGE_FDS, err_w);
    }
    let mut i = 0;
    while i < a.n_socks {
        // dup2 clears close-on-exec on the target: exactly the sockets survive exec
        if libc::dup2(*a.tmp_fds.add(i as usize), 3 + i) < 0 {
            fail(STAGE_FDS, err_w);
        }
        i += 1;
    }
    // Whatever drover itself inherited without close-on-exec stops here.
    let (from, to) = (floor as libc::c_uint, libc::c_uint::MAX);
    libc::syscall(libc::SYS_close_range, from, to, CLOSE_RANGE_CLOEXEC);
    err_w
}

/// Format its own pid into the pre-allocated LISTEN_PID buffer.
unsafe fn write_listen_pid(a: &ChildArgs) {
    let mut buf = [0u8; 12];
    let n = format_pid(libc::getpid(), &mut buf);
    let mut j = 0;
    while j < n {
        *a.listen_pid.add(j) = buf[j];
        j += 1;
    }
    *a.listen_pid.add(n) = 0;
}

/// Decimal digits of `n` into `buf`; returns the length. No allocation.
fn format_pid(n: libc::pid_t, buf: &mut [u8; 12]) -> usize {
    let mut n = n as u32;
    let mut digits = [0u8; 12];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let mut j = 0;
    while j < len {
        buf[j] = digits[len - 1 - j];
        j += 1;
    }
    len
}

#[cfg(test)]
mod tests {
    #[test]
    fn pids_format_without_allocating() {
        let mut buf = [0u8; 12];
        for (n, s) in [
            (0, "0"),
            (7, "7"),
            (4194304, "4194304"),
            (i32::MAX, "2147483647"),
        ] {
            let len = super::format_pid(n, &mut buf);
            assert_eq!(&buf[..len], s.as_bytes());
        }
    }
}

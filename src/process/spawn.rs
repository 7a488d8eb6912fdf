//! `SpawnSpec` -> pid. Never waits: the reaper owns every `wait`.
//!
//! Everything the child needs is computed before `fork`: the resolved executable, argv and envp
//! as C arrays, the fds to lay out, even the buffer `LISTEN_PID=` is formatted into. Between
//! `fork` and `execve` the child makes raw syscalls only (no allocation, no locks, no logging),
//! because the parent is multi-threaded and any lock may be held by a thread that no longer
//! exists in the child. An exec failure is reported through a close-on-exec pipe.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{path}: command not found (searched PATH)")]
    NotFound { path: String },
    #[error("{path}: {err}")]
    Exec { path: String, err: std::io::Error },
    #[error("chdir {dir}: {err}")]
    Chdir { dir: String, err: std::io::Error },
    #[error("setting up the child: {stage}: {err}{}", limit_hint(err))]
    Setup {
        stage: &'static str,
        err: std::io::Error,
    },
    #[error("fork: {0}{hint}", hint = limit_hint(.0))]
    Fork(std::io::Error),
    #[error("{0} contains a NUL byte")]
    Nul(String),
}

/// What to raise when a spawn fails for want of a resource.
fn limit_hint(err: &std::io::Error) -> String {
    match err.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
            format!(
                " (drover's open-files limit is {soft}; each worker needs a few: raise `ulimit -n` or LimitNOFILE=)"
            )
        }
        Some(libc::EAGAIN) => {
            " (the process limit: RLIMIT_NPROC, pids.max of the cgroup, or kernel.pid_max)".into()
        }
        Some(libc::ENOMEM) => " (out of memory)".into(),
        _ => String::new(),
    }
}

/// Where the child's stdout and stderr go.
pub enum Stdio {
    /// drover's own
    Inherit,
    /// /dev/null (probes)
    Null,
    /// both to this fd (the write end of a capture pipe)
    Pipe(RawFd),
}

pub struct SpawnSpec {
    pub argv: Vec<String>,
    /// the complete environment (drover's, plus the program's, plus DROVER_*)
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// fds laid out at 3, 4, … in this order, announced with LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES
    pub sockets: Vec<(String, RawFd)>,
    pub stdio: Stdio,
    /// set PR_SET_PDEATHSIG=KILL and check the parent is still this pid
    pub parent: Option<libc::pid_t>,
    /// `cgroup.procs` fds the child writes its own pid into, first thing after fork
    pub cgroup_procs: Vec<RawFd>,
    /// (uid, gid) to drop to after the cgroup join, supplementary groups cleared; None: keep
    /// drover's own (also when they are already these)
    pub identity: Option<(libc::uid_t, libc::gid_t)>,
}

/// Find the executable the way `execvp` would, but before fork, so the error is ours to word.
pub fn resolve(program: &str, path_var: Option<&str>, cwd: Option<&Path>) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        let p = match cwd {
            Some(c) if p.is_relative() => c.join(p),
            _ => p.to_path_buf(),
        };
        return Some(p);
    }
    let path_var =
        path_var.unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(program);
        if is_executable(&cand) {
            return Some(cand);
        }
    }
    None
}

pub fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

fn cstr(s: &str) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError::Nul(format!("{s:?}")))
}

/// Create a pipe whose both ends are close-on-exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// The open-files soft limit drover inherited, once `raise_nofile` has raised it (0 before).
static INHERITED_NOFILE_SOFT: AtomicU64 = AtomicU64::new(0);

/// Raise drover's own open-files soft limit to the hard limit: a worker costs drover a pipe and a
/// /proc file, so 1,000 workers do not fit the usual soft limit of 1,024. Workers get the limit
/// drover inherited back (programs that use select(2) break above 1,024), as systemd advises.
/// Returns (inherited, raised) when it changed anything.
pub fn raise_nofile() -> Option<(u64, u64)> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return None;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).ok()?;
    INHERITED_NOFILE_SOFT.store(soft, Ordering::Relaxed);
    Some((soft, hard))
}
const STAGE_EXEC: i32 = 1;
const STAGE_CHDIR: i32 = 2;
const STAGE_FDS: i32 = 3;
const STAGE_PGRP: i32 = 4;
const STAGE_PARENT: i32 = 5;
const STAGE_CGROUP: i32 = 6;
const STAGE_IDENTITY: i32 = 7;

/// Fork and exec. Returns the child's pid once it has exec'd (or the reason it could not).
/// A child that failed after fork has already exited with 127; the reaper will collect it.
pub fn spawn(spec: &SpawnSpec) -> Result<libc::pid_t, SpawnError> {
    let program = spec.argv.first().map(String::as_str).unwrap_or("");
    let path_var = spec
        .env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str());
    let exe =
        resolve(program, path_var, spec.cwd.as_deref()).ok_or_else(|| SpawnError::NotFound {
            path: program.to_string(),
        })?;
    let exe_c = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(|_| SpawnError::Nul(exe.display().to_string()))?;

    let argv_c: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| cstr(a))
        .collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());

    let mut env_c: Vec<CString> = Vec::with_capacity(spec.env.len() + 3);
    for (k, v) in &spec.env {
        if matches!(k.as_str(), "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES") {
            continue;
        }
        env_c.push(cstr(&format!("{k}={v}"))?);
    }
    // LISTEN_PID must be the worker's own pid, known only after fork: the child formats it
    // into this pre-allocated, NUL-padded buffer.
    let mut listen_pid_buf: Vec<u8> = b"LISTEN_PID=".to_vec();
    let listen_pid_at = listen_pid_buf.len();
    listen_pid_buf.extend_from_slice(&[0u8; 24]);
    if !spec.sockets.is_empty() {
        env_c.push(cstr(&format!("LISTEN_FDS={}", spec.sockets.len()))?);
        let names: Vec<&str> = spec.sockets.iter().map(|(n, _)| n.as_str()).collect();
        env_c.push(cstr(&format!("LISTEN_FDNAMES={}", names.join(":")))?);
    }
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    if !spec.sockets.is_empty() {
        envp.push(listen_pid_buf.as_ptr() as *const libc::c_char);
    }
    envp.push(std::ptr::null());

    let cwd_c = match &spec.cwd {
        Some(d) => Some(
            CString::new(d.as_os_str().as_encoded_bytes())
                .map_err(|_| SpawnError::Nul(d.display().to_string()))?,
        ),
        None => None,
    };
    let devnull: &CStr = c"/dev/null";
    let n_socks = spec.sockets.len() as RawFd;
    let src_fds: Vec<RawFd> = spec.sockets.iter().map(|(_, fd)| *fd).collect();
    let mut tmp_fds: Vec<RawFd> = vec![-1; src_fds.len()];
    let (out_fd, out_null) = match spec.stdio {
        Stdio::Inherit => (-1, false),
        Stdio::Null => (-1, true),
        Stdio::Pipe(fd) => (fd, false),
    };
    let parent = spec.parent.unwrap_or(0);
    let (err_r, err_w) = pipe().map_err(|err| SpawnError::Setup { stage: "pipe", err })?;
    let err_w_raw = err_w.as_raw_fd();
    let listen_pid_ptr = listen_pid_buf.as_mut_ptr();
    let cgroup_fds: Vec<RawFd> = spec.cgroup_procs.clone();

    let mut args = ChildArgs {
        exe: exe_c.as_ptr(),
        argv: argv_p.as_ptr(),
        envp: envp.as_ptr(),
        cwd: cwd_c
            .as_ref()
            .map(|c| c.as_ptr())
            .unwrap_or(std::ptr::null()),
        devnull: devnull.as_ptr(),
        out_fd,
        out_null,
        src_fds: src_fds.as_ptr(),
        tmp_fds: tmp_fds.as_mut_ptr(),
        n_socks,
        err_w: err_w_raw,
        parent,
        // SAFETY: listen_pid_at + 24 bytes are inside listen_pid_buf.
        listen_pid: unsafe { listen_pid_ptr.add(listen_pid_at) },
        cgroup_fds: cgroup_fds.as_ptr(),
        n_cgroup: cgroup_fds.len(),
        nofile_soft: INHERITED_NOFILE_SOFT.load(Ordering::Relaxed),
        drop_ids: spec.identity.is_some_and(|(u, g)| {
            let (eu, eg) = crate::process::identity::current();
            (u, g) != (eu, eg) || eu == 0
        }),
        uid: spec.identity.map_or(0, |(u, _)| u),
        gid: spec.identity.map_or(0, |(_, g)| g),
    };
    // The child runs on its own stack in drover's memory (CLONE_VM) while this thread waits for
    // its exec (CLONE_VFORK), as posix_spawn does: no page tables copied, no copy-on-write faults,
    // about half a millisecond less per respawn than fork(2).
    let mut stack = vec![0u8; CHILD_STACK];
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;

    // SAFETY: every signal is blocked across clone so that no drover handler can run on the
    // child's stack; the child resets every handler to the default before unblocking. The child
    // only runs `child`, which calls async-signal-safe syscalls (sigprocmask, sigaction, setpgid,
    // setgroups, setgid, setuid, prctl, getppid, open, dup2, fcntl, close, close_range, getrlimit, setrlimit, chdir, getpid,
    // execve, write, _exit) on memory prepared above (`args`, the buffers it points to, `stack`),
    // all of which outlive the clone call because this thread is suspended until the exec; it
    // never allocates, locks, logs, or returns into Rust code that might.
    let pid = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_entry,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &mut args as *mut ChildArgs as *mut libc::c_void,
        );
        let err = std::io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        if pid < 0 {
            return Err(SpawnError::Fork(err));
        }
        pid
    };
    drop(stack);
    drop(err_w);
    // Blocks until the child execs (EOF) or reports a failure: microseconds, no waiting on the child.
    let mut buf = [0u8; 8];
    let mut got = 0;
    loop {
        // SAFETY: reading into a local buffer from an fd we own.
        let n = unsafe {
            libc::read(
                err_r.as_raw_fd(),
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
        if got == buf.len() {
            break;
        }
    }
    if got < 8 {
        return Ok(pid);
    }
    let stage = i32::from_ne_bytes(buf[..4].try_into().unwrap());
    let errno = i32::from_ne_bytes(buf[4..].try_into().unwrap());
    let err = std::io::Error::from_raw_os_error(errno);
    Err(match stage {
        STAGE_EXEC => SpawnError::Exec {
            path: exe.display().to_string(),
            err,
        },
        STAGE_CHDIR => SpawnError::Chdir {
            dir: spec
                .cwd
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            err,
        },
        stage => SpawnError::Setup {
            stage: match stage {
                STAGE_FDS => "laying out fds",
                STAGE_PGRP => "setpgid",
                STAGE_PARENT => "parent-death signal",
                STAGE_CGROUP => "joining its cgroup",
                STAGE_IDENTITY => "dropping to its user and group",
                _ => "unknown",
            },
            err,
        },
    })
}

struct ChildArgs {
    exe: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    devnull: *const libc::c_char,
    out_fd: RawFd,
    out_null: bool,
    src_fds: *const RawFd,
    tmp_fds: *mut RawFd,
    n_socks: RawFd,
    err_w: RawFd,
    parent: libc::pid_t,
    listen_pid: *mut u8,
    cgroup_fds: *const RawFd,
    n_cgroup: usize,
    /// the open-files soft limit drover started with, restored for the worker (0: unchanged)
    nofile_soft: u64,
    /// drop to (uid, gid) with no supplementary groups
    drop_ids: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
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

const CHILD_STACK: usize = 64 * 1024;

/// clone's entry point for the child: the arguments are copied onto its own stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the ChildArgs that `spawn` keeps alive while it is suspended.
    unsafe { child(std::ptr::read(arg as *const ChildArgs)) }
}

/// Runs in the cloned child, on memory shared with drover. Raw syscalls only.
unsafe fn child(a: ChildArgs) -> ! {
    let fail = |stage: i32, err_w: RawFd| -> ! {
        let errno = *libc::__errno_location();
        let mut msg = [0u8; 8];
        let s = stage.to_ne_bytes();
        let e = errno.to_ne_bytes();
        let mut i = 0;
        while i < 4 {
            msg[i] = s[i];
            msg[4 + i] = e[i];
            i += 1;
        }
        libc::write(err_w, msg.as_ptr() as *const libc::c_void, 8);
        libc::_exit(127)
    };

    // A clean signal state: nothing ignored (Rust ignores SIGPIPE), no drover handler (they
    // would run in drover's memory), then nothing blocked. Signals arrive blocked from `spawn`.
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

    // Into its cgroup before anything else, so every byte and every child is accounted there.
    let mut i = 0;
    while i < a.n_cgroup {
        let mut buf = [0u8; 12];
        let len = format_pid(libc::getpid(), &mut buf);
        if libc::write(
            *a.cgroup_fds.add(i),
            buf.as_ptr() as *const libc::c_void,
            len,
        ) != len as isize
        {
            fail(STAGE_CGROUP, a.err_w);
        }
        i += 1;
    }

    // Its own process group, so stop and kill reach everything it starts.
    if libc::setpgid(0, 0) != 0 {
        fail(STAGE_PGRP, a.err_w);
    }

    // Its user and group, once it is in its cgroup and group: no supplementary groups, then the
    // gid, then the uid (after which it could change neither). Before the parent-death signal,
    // which a change of credentials clears. Raw syscalls: glibc's wrappers would broadcast the
    // change to every thread in the thread list, and this child shares drover's memory.
    if a.drop_ids
        && (libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setgid, a.gid as libc::c_long) != 0
            || libc::syscall(libc::SYS_setuid, a.uid as libc::c_long) != 0)
    {
        fail(STAGE_IDENTITY, a.err_w);
    }
    if a.parent > 0 {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            fail(STAGE_PARENT, a.err_w);
        }
        // the parent may have died between fork and prctl
        if libc::getppid() != a.parent {
            libc::_exit(1);
        }
    }

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
    libc::syscall(
        libc::SYS_close_range,
        floor as libc::c_uint,
        libc::c_uint::MAX,
        CLOSE_RANGE_CLOEXEC,
    );

    if a.n_socks > 0 {
        // format our pid into the pre-allocated LISTEN_PID buffer
        let mut buf = [0u8; 12];
        let n = format_pid(libc::getpid(), &mut buf);
        let mut j = 0;
        while j < n {
            *a.listen_pid.add(j) = buf[j];
            j += 1;
        }
        *a.listen_pid.add(n) = 0;
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

/// Signal the process group led by `pid`. ESRCH (already gone) is not an error.
pub fn signal_group(pid: libc::pid_t, sig: nix::sys::signal::Signal) {
    if pid <= 1 {
        return;
    }
    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig);
}

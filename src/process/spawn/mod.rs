//! `SpawnSpec` -> pid. Never waits: the reaper owns every `wait`. This file is the parent's side;
//! `child` is what runs between clone and exec.
//!
//! Everything the child needs is computed before `fork`: the resolved executable, argv and envp
//! as C arrays, the fds to lay out, even the buffer `LISTEN_PID=` is formatted into. Between
//! `fork` and `execve` the child makes raw syscalls only (no allocation, no locks, no logging),
//! because the parent is multi-threaded and any lock may be held by a thread that no longer
//! exists in the child. An exec failure is reported through a close-on-exec pipe.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::resource::{getrlimit, setrlimit, Resource};

mod child;
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
    /// more fds laid out right after the sockets, not announced (a preloader's control socket)
    pub extra_fds: Vec<RawFd>,
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
/// Fork and exec. Returns the child's pid once it has exec'd (or the reason it could not).
/// A child that failed after fork has already exited with 127; the reaper will collect it.
pub fn spawn(spec: &SpawnSpec) -> Result<libc::pid_t, SpawnError> {
    let mut prep = Prepared::new(spec)?;
    let (err_r, err_w) = pipe().map_err(|err| SpawnError::Setup { stage: "pipe", err })?;
    let mut args = prep.child_args(spec, err_w.as_raw_fd());
    let pid = child::clone(&mut args).map_err(SpawnError::Fork)?;
    drop(err_w);
    match child::failure(&err_r) {
        None => Ok(pid),
        Some((stage, errno)) => Err(failed(stage, errno, &prep.exe, spec)),
    }
}

/// Everything the child needs, as C data, built before the clone: the child only reads it. Each
/// buffer is a heap allocation, so the pointers taken into it stay valid when this moves.
struct Prepared {
    exe: PathBuf,
    exe_c: CString,
    _argv_c: Vec<CString>,
    argv_p: Vec<*const libc::c_char>,
    _env_c: Vec<CString>,
    envp: Vec<*const libc::c_char>,
    cwd_c: Option<CString>,
    /// `LISTEN_PID=` and room for the pid, formatted by the child once it knows it
    listen_pid_buf: Vec<u8>,
    src_fds: Vec<RawFd>,
    tmp_fds: Vec<RawFd>,
    cgroup_fds: Vec<RawFd>,
}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";

impl Prepared {
    fn new(spec: &SpawnSpec) -> Result<Prepared, SpawnError> {
        let program = spec.argv.first().map(String::as_str).unwrap_or("");
        let path_var = spec
            .env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str());
        let exe = resolve(program, path_var, spec.cwd.as_deref()).ok_or_else(|| {
            SpawnError::NotFound {
                path: program.to_string(),
            }
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
            if !matches!(k.as_str(), "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES") {
                env_c.push(cstr(&format!("{k}={v}"))?);
            }
        }
        // LISTEN_PID must be the worker's own pid, known only after fork: the child formats it
        // into this pre-allocated, NUL-padded buffer.
        let mut listen_pid_buf = LISTEN_PID.to_vec();
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
        let src_fds: Vec<RawFd> = spec
            .sockets
            .iter()
            .map(|(_, fd)| *fd)
            .chain(spec.extra_fds.iter().copied())
            .collect();
        Ok(Prepared {
            exe,
            exe_c,
            _argv_c: argv_c,
            argv_p,
            _env_c: env_c,
            envp,
            cwd_c,
            listen_pid_buf,
            tmp_fds: vec![-1; src_fds.len()],
            src_fds,
            cgroup_fds: spec.cgroup_procs.clone(),
        })
    }

    /// The child's arguments: pointers into this, valid while it lives.
    fn child_args(&mut self, spec: &SpawnSpec, err_w: RawFd) -> child::ChildArgs {
        let (out_fd, out_null) = match spec.stdio {
            Stdio::Inherit => (-1, false),
            Stdio::Null => (-1, true),
            Stdio::Pipe(fd) => (fd, false),
        };
        child::ChildArgs {
            exe: self.exe_c.as_ptr(),
            argv: self.argv_p.as_ptr(),
            envp: self.envp.as_ptr(),
            cwd: self.cwd_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            devnull: c"/dev/null".as_ptr(),
            out_fd,
            out_null,
            src_fds: self.src_fds.as_ptr(),
            tmp_fds: self.tmp_fds.as_mut_ptr(),
            n_socks: self.src_fds.len() as RawFd,
            err_w,
            parent: spec.parent.unwrap_or(0),
            listen_pid: self.listen_pid_buf[LISTEN_PID.len()..].as_mut_ptr(),
            cgroup_fds: self.cgroup_fds.as_ptr(),
            n_cgroup: self.cgroup_fds.len(),
            nofile_soft: INHERITED_NOFILE_SOFT.load(Ordering::Relaxed),
            drop_ids: spec.identity.is_some_and(|(u, g)| {
                let (eu, eg) = crate::process::identity::current();
                (u, g) != (eu, eg) || eu == 0
            }),
            uid: spec.identity.map_or(0, |(u, _)| u),
            gid: spec.identity.map_or(0, |(_, g)| g),
        }
    }
}

/// The error for a failure the child reported from `stage`.
fn failed(stage: i32, errno: i32, exe: &Path, spec: &SpawnSpec) -> SpawnError {
    use child::*;
    let err = std::io::Error::from_raw_os_error(errno);
    let stage = match stage {
        STAGE_EXEC => {
            let path = exe.display().to_string();
            return SpawnError::Exec { path, err };
        }
        STAGE_CHDIR => {
            let dir = spec
                .cwd
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default();
            return SpawnError::Chdir { dir, err };
        }
        STAGE_FDS => "laying out fds",
        STAGE_PGRP => "setpgid",
        STAGE_PARENT => "parent-death signal",
        STAGE_CGROUP => "joining its cgroup",
        STAGE_IDENTITY => "dropping to its user and group",
        _ => "unknown",
    };
    SpawnError::Setup { stage, err }
}

//! Per-worker readiness and liveness, read from /proc, and HTTP probes through a shared socket.
//!
//! A probe through a socket that N workers share reaches whichever worker accepts it, so it
//! cannot ask "is *this* worker ready / alive". drover answers those per worker instead:
//!
//! - **ready (`listening`)**: the worker's process tree has one of drover's listening sockets
//!   (matched by inode: `uvicorn --fd` dup()s it) in an epoll set with EPOLLIN, or a thread
//!   blocked in `accept` on it. That is the moment it takes connections off the shared queue.
//! - **hung**: sampled each health interval: the process is stopped (`T`), or it is running
//!   (`R`/`D`) and, since the last sample, it has neither blocked once (voluntary context switches)
//!   nor made a read/write syscall (/proc/PID/io). An idle worker sleeps (`S`) and is fine; a busy
//!   one makes syscalls. A worker spinning in pure computation for `failures` intervals is hung
//!   from its clients' point of view too: its event loop serves nobody.
//! - **HTTP health**: the probe connection is kept open until drover has looked up which worker
//!   accepted it (its server-side socket inode in /proc/net/tcp{,6}, then the workers' fds), so a
//!   failed or timed-out probe counts against that worker. A probe nobody accepted counts against
//!   the program (every worker busy or hung), not against an innocent worker.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The inode of an open fd (how sockets are matched across processes).
pub fn fd_inode(fd: impl AsFd) -> Option<u64> {
    nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino)
}

/// `pid` and its descendants (bounded), from /proc/PID/task/*/children.
pub fn process_tree(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < 64 {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                if let Ok(c) = std::fs::read_to_string(t.path().join("children")) {
                    out.extend(c.split_whitespace().filter_map(|x| x.parse::<i32>().ok()));
                }
            }
        }
        i += 1;
    }
    out
}

fn socket_inode_of_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(target_arch = "x86_64")]
const ACCEPT_SYSCALLS: &[i64] = &[43, 288];
#[cfg(target_arch = "aarch64")]
const ACCEPT_SYSCALLS: &[i64] = &[202, 242];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ACCEPT_SYSCALLS: &[i64] = &[];

/// Is any process of the worker's tree polling or accepting on one of `inodes`?
pub fn listening(pid: i32, inodes: &[u64]) -> bool {
    process_tree(pid)
        .into_iter()
        .any(|p| proc_listening(p, inodes))
}

fn proc_listening(pid: i32, inodes: &[u64]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    for e in fds.flatten() {
        let Ok(link) = std::fs::read_link(e.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:[eventpoll]" {
            continue;
        }
        let name = e.file_name();
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", name.to_string_lossy()))
        else {
            continue;
        };
        if epoll_watches(&info, inodes) {
            return true;
        }
    }
    // a thread blocked in accept(fd) on one of ours
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let Ok(sc) = std::fs::read_to_string(t.path().join("syscall")) else {
                continue;
            };
            let mut f = sc.split_whitespace();
            let nr: Option<i64> = f.next().and_then(|n| n.parse().ok());
            if !nr.is_some_and(|n| ACCEPT_SYSCALLS.contains(&n)) {
                continue;
            }
            let Some(fd) = f
                .next()
                .and_then(|a| i64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
            else {
                continue;
            };
            if let Ok(link) = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
                if socket_inode_of_link(&link.to_string_lossy())
                    .is_some_and(|i| inodes.contains(&i))
                {
                    return true;
                }
            }
        }
    }
    false
}

/// Parse an epoll fdinfo: does it watch one of `inodes` for EPOLLIN?
pub fn epoll_watches(fdinfo: &str, inodes: &[u64]) -> bool {
    fdinfo.lines().filter(|l| l.starts_with("tfd:")).any(|l| {
        let field = |name: &str| {
            let i = l.find(name)? + name.len();
            l[i..].split_whitespace().next()
        };
        let events = field("events:")
            .and_then(|e| u32::from_str_radix(e, 16).ok())
            .unwrap_or(0);
        let ino = field("ino:").and_then(|e| u64::from_str_radix(e, 16).ok());
        events & (libc::EPOLLIN as u32) != 0 && ino.is_some_and(|i| inodes.contains(&i))
    })
}

/// One liveness sample of a worker's lead process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub state: char,
    pub voluntary: u64,
    /// read + write syscalls so far (/proc/PID/io)
    pub syscalls: u64,
}

pub fn sample(pid: i32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit_once(')')?.1.trim_start().chars().next()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let voluntary = status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let get = |k: &str| -> u64 {
        io.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    Some(Sample {
        state,
        voluntary,
        syscalls: get("syscr:") + get("syscw:"),
    })
}

/// Why a worker looks hung, if it does. Being stopped shows in one sample; spinning needs the
/// previous one to compare with.
pub fn hung(prev: Option<&Sample>, cur: &Sample) -> Option<&'static str> {
    match (cur.state, prev) {
        ('T' | 't', _) => Some("stopped (SIGSTOP or traced)"),
        ('R' | 'D', Some(prev))
            if cur.voluntary == prev.voluntary && cur.syscalls == prev.syscalls =>
        {
            Some("running without blocking or making a syscall")
        }
        _ => None,
    }
}

/// Where an HTTP probe connects.
#[derive(Debug, Clone)]
pub enum Target {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

#[derive(Debug, Clone)]
pub struct HttpOutcome {
    pub ok: bool,
    pub detail: String,
    /// the server side of the probe connection, if a worker accepted it (TCP only)
    pub server_inode: Option<u64>,
    /// which of the candidate pids holds that socket
    pub owner: Option<i32>,
}

/// GET `path` through the shared socket. The connection stays open until the worker that
/// accepted it has been identified among `workers` (once it closes, the worker may too).
pub async fn http(
    target: Target,
    path: String,
    timeout: Duration,
    workers: Vec<i32>,
) -> HttpOutcome {
    let mut o = http_inner(target, path, timeout, &workers).await;
    if o.owner.is_none() {
        o.owner = o.server_inode.and_then(|i| owner_of_socket(i, &workers));
    }
    if let (None, Some(ino)) = (o.owner, o.server_inode) {
        let socks: Vec<(i32, usize)> = workers
            .iter()
            .map(|&p| {
                let n = std::fs::read_dir(format!("/proc/{p}/fd"))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| {
                                std::fs::read_link(e.path())
                                    .is_ok_and(|l| l.to_string_lossy().starts_with("socket:"))
                            })
                            .count()
                    })
                    .unwrap_or(0);
                (p, n)
            })
            .collect();
        tracing::debug!(
            "probe: socket inode {ino} not held by any of the workers (pid, sockets): {socks:?}"
        );
    }
    o
}

async fn http_inner(
    target: Target,
    path: String,
    timeout: Duration,
    workers: &[i32],
) -> HttpOutcome {
    match target {
        Target::Tcp(addr) => {
            let conn = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await;
            let mut s = match conn {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    return HttpOutcome {
                        ok: false,
                        detail: format!("connect {addr}: {e}"),
                        server_inode: None,
                        owner: None,
                    }
                }
                Err(_) => {
                    return HttpOutcome {
                        ok: false,
                        detail: format!("connect {addr}: timed out"),
                        server_inode: None,
                        owner: None,
                    }
                }
            };
            let local = s.local_addr().ok();
            let res = tokio::time::timeout(timeout, exchange(&mut s, &path)).await;
            // `s` is still open here, so the accepting worker still holds its end
            let server_inode = local.and_then(|l| accepted_inode(addr, l));
            let owner = server_inode.and_then(|i| owner_of_socket(i, workers));
            drop(s);
            let (ok, detail) = match res {
                Ok(r) => r,
                Err(_) => (false, format!("no answer within {timeout:?}")),
            };
            HttpOutcome {
                ok,
                detail,
                server_inode,
                owner,
            }
        }
        Target::Unix(p) => {
            let mut s =
                match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&p)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        return HttpOutcome {
                            ok: false,
                            detail: format!("connect {}: {e}", p.display()),
                            server_inode: None,
                            owner: None,
                        }
                    }
                    Err(_) => {
                        return HttpOutcome {
                            ok: false,
                            detail: "connect timed out".into(),
                            server_inode: None,
                            owner: None,
                        }
                    }
                };
            let (ok, detail) = match tokio::time::timeout(timeout, exchange(&mut s, &path)).await {
                Ok(r) => r,
                Err(_) => (false, format!("no answer within {timeout:?}")),
            };
            HttpOutcome {
                ok,
                detail,
                server_inode: None,
                owner: None,
            }
        }
    }
}

async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    path: &str,
) -> (bool, String) {
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: drover-probe\r\nUser-Agent: drover-health\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()).await {
        return (false, format!("write: {e}"));
    }
    let mut buf = [0u8; 512];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") && got.len() < 512 {
        match s.read(&mut buf).await {
            Ok(0) => return (false, "connection closed before a status line".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => return (false, format!("read: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&got);
    let line = line.lines().next().unwrap_or("").to_string();
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    ((200..300).contains(&code), format!("answered {line:?}"))
}

/// The inode of the accepted socket whose peer is `client` (0 = still in the accept queue).
fn accepted_inode(server: SocketAddr, client: SocketAddr) -> Option<u64> {
    let file = if server.is_ipv4() {
        "/proc/net/tcp"
    } else {
        "/proc/net/tcp6"
    };
    let text = std::fs::read_to_string(file).ok()?;
    let want_local = proc_net_addr(server);
    let want_rem = proc_net_addr(client);
    for l in text.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() > 9 && f[1] == want_local && f[2] == want_rem {
            return f[9].parse().ok().filter(|i: &u64| *i != 0);
        }
    }
    None
}

/// An address as /proc/net/tcp{,6} prints it.
fn proc_net_addr(a: SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(v4.ip().octets()),
            v4.port()
        ),
        SocketAddr::V6(v6) => {
            let o = v6.ip().octets();
            let words: String = o
                .chunks(4)
                .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            format!("{words}:{:04X}", v6.port())
        }
    }
}

/// Which of `pids` (each with its tree) holds a socket with this inode?
pub fn owner_of_socket(inode: u64, pids: &[i32]) -> Option<i32> {
    let want = format!("socket:[{inode}]");
    for &pid in pids {
        for p in process_tree(pid) {
            let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) else {
                continue;
            };
            for e in fds.flatten() {
                if std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == want) {
                    return Some(pid);
                }
            }
        }
    }
    None
}

/// Distinct listening-socket inodes for a set of fds.
pub fn inodes<'a>(fds: impl IntoIterator<Item = &'a OwnedFd>) -> Vec<u64> {
    let set: HashSet<u64> = fds.into_iter().filter_map(fd_inode).collect();
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo_parsing() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
tfd:        5 events:       19 data:                5  pos:0 ino:bb04 sdev:9\n\
tfd:        7 events:       19 data:     7f8500000007  pos:0 ino:bb00 sdev:9\n";
        assert!(epoll_watches(info, &[0xbb00]));
        assert!(!epoll_watches(info, &[0xbb01]));
        // registered for EPOLLOUT only: not accepting
        let out_only = "tfd:        7 events:        4 data: 7  pos:0 ino:bb00 sdev:9\n";
        assert!(!epoll_watches(out_only, &[0xbb00]));
    }

    #[test]
    fn hang_rules() {
        let s = |state, voluntary, syscalls| Sample {
            state,
            voluntary,
            syscalls,
        };
        let stopped = Some("stopped (SIGSTOP or traced)");
        assert_eq!(hung(Some(&s('S', 5, 5)), &s('T', 5, 5)), stopped);
        assert_eq!(hung(None, &s('T', 5, 5)), stopped, "one sample shows it");
        assert!(
            hung(Some(&s('R', 5, 5)), &s('R', 5, 5)).is_some(),
            "spinning"
        );
        assert_eq!(
            hung(None, &s('R', 5, 5)),
            None,
            "spinning needs two samples"
        );
        assert_eq!(
            hung(Some(&s('R', 5, 5)), &s('R', 5, 9)),
            None,
            "busy, making syscalls"
        );
        assert_eq!(
            hung(Some(&s('R', 5, 5)), &s('R', 6, 5)),
            None,
            "blocked at least once"
        );
        assert_eq!(
            hung(Some(&s('S', 5, 5)), &s('S', 5, 5)),
            None,
            "idle, asleep"
        );
    }

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            proc_net_addr("127.0.0.1:8000".parse().unwrap()),
            "0100007F:1F40"
        );
        assert_eq!(
            proc_net_addr("[::1]:80".parse().unwrap()),
            "00000000000000000000000001000000:0050"
        );
    }
}

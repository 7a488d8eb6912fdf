//! Bind every listening socket once, before any step runs, and keep the fds for drover's life.
//! Each spawn lays the named ones out at fd 3.. (see `spawn`).

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::config::{ListenAddr, SocketCfg};

#[derive(Debug, thiserror::Error)]
#[error("socket {name}: cannot listen on {addr}: {err}")]
pub struct BindError {
    pub name: String,
    pub addr: String,
    pub err: std::io::Error,
}

/// Why drover did not start with the sockets it was given or told to bind.
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    #[error(transparent)]
    Bind(#[from] BindError),
    /// systemd passed a socket whose address is not the file's `listen`: adopting it could
    /// serve on more addresses than the file says (`ListenStream=8000` is every address)
    #[error("socket {name}: systemd passed a socket listening on {passed}, but [socket.{name}] says listen = \"{listen}\"; drover does not serve another address than the file says: make the two the same (ListenStream={hint} in the .socket unit, or listen = \"{passed}\" in the file)")]
    Mismatch {
        name: String,
        listen: String,
        passed: String,
        hint: String,
    },
}

pub struct Bound {
    pub name: String,
    pub cfg_listen: ListenAddr,
    /// the address actually bound (port 0 resolved)
    pub local: String,
    pub fd: OwnedFd,
    /// TCP or unix, from the socket itself (how its accept queue is read)
    pub kind: crate::resources::queue::Kind,
}

impl Bound {
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

pub fn bind_all(cfgs: &[SocketCfg]) -> Result<Vec<Bound>, BindError> {
    cfgs.iter().map(bind).collect()
}

pub fn bind(cfg: &SocketCfg) -> Result<Bound, BindError> {
    let e = |err: std::io::Error| BindError {
        name: cfg.name.clone(),
        addr: cfg.listen.to_string(),
        err,
    };
    let (sock, local) = match &cfg.listen {
        ListenAddr::Tcp(addr) => {
            let s = Socket::new(Domain::for_address(*addr), Type::STREAM, None).map_err(e)?;
            s.set_reuse_address(true).map_err(e)?;
            if addr.is_ipv6() {
                s.set_only_v6(false).ok();
            }
            // Accepted connections inherit TCP_NODELAY on Linux; `uvicorn --fd` never sets it.
            s.set_tcp_nodelay(true).map_err(e)?;
            s.bind(&SockAddr::from(*addr)).map_err(e)?;
            s.listen(cfg.backlog).map_err(e)?;
            let local = s
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .map(|a| a.to_string())
                .unwrap_or_else(|| addr.to_string());
            (s, local)
        }
        ListenAddr::Unix(path) => {
            // A stale socket file from an earlier run is replaced; anything else is an error.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(e(std::io::Error::new(
                            std::io::ErrorKind::AddrInUse,
                            "another process is listening on it",
                        )));
                    }
                    std::fs::remove_file(path).map_err(e)?;
                }
            }
            let s = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(e)?;
            s.bind(&SockAddr::unix(path).map_err(e)?).map_err(e)?;
            if let Some(mode) = cfg.mode {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(e)?;
            }
            s.listen(cfg.backlog).map_err(e)?;
            (s, format!("unix:{}", path.display()))
        }
    };
    let fd: OwnedFd = sock.into();
    Ok(Bound {
        name: cfg.name.clone(),
        cfg_listen: cfg.listen.clone(),
        local,
        kind: crate::resources::queue::kind(fd.as_fd()),
        fd,
    })
}

/// Sockets passed by systemd socket activation (LISTEN_FDS / LISTEN_PID / LISTEN_FDNAMES), by
/// name. Read once at start; the variables are for drover only, workers get their own.
pub fn from_systemd() -> Vec<(String, OwnedFd)> {
    use std::os::fd::FromRawFd;
    let me = std::process::id() as i32;
    let pid_ok = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
        == Some(me);
    let n: i32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if !pid_ok || n <= 0 {
        return vec![];
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .unwrap_or_default()
        .split(':')
        .map(String::from)
        .collect();
    (0..n)
        .map(|i| {
            let name = names
                .get(i as usize)
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this pid; nothing else owns them.
            (name, unsafe { OwnedFd::from_raw_fd(3 + i) })
        })
        .collect()
}

/// Bind every socket, adopting the ones systemd passed by name instead of binding them. A passed
/// socket must listen on the file's `listen` (port 0 in the file: any port); anything else is
/// refused, so what the file says is what is exposed.
pub fn bind_or_adopt(
    cfgs: &[SocketCfg],
    mut passed: Vec<(String, OwnedFd)>,
) -> Result<Vec<Bound>, AdoptError> {
    let mut out = vec![];
    for cfg in cfgs {
        if let Some(i) = passed.iter().position(|(n, _)| *n == cfg.name) {
            let (_, fd) = passed.remove(i);
            let sock = Socket::from(fd);
            let addr = sock.local_addr().map_err(|err| BindError {
                name: cfg.name.clone(),
                addr: "the fd systemd passed".into(),
                err,
            })?;
            let local = addr
                .as_socket()
                .map(|s| s.to_string())
                .or_else(|| addr.as_pathname().map(|p| format!("unix:{}", p.display())))
                .unwrap_or_else(|| "an unnamed or abstract address".into());
            if !same_address(&cfg.listen, &addr) {
                return Err(AdoptError::Mismatch {
                    name: cfg.name.clone(),
                    listen: cfg.listen.to_string(),
                    passed: local,
                    hint: cfg.listen.to_string().trim_start_matches("unix:").into(),
                });
            }
            if addr.as_socket().is_some() {
                let _ = sock.set_tcp_nodelay(true);
            }
            tracing::info!(
                "socket {}: adopted from systemd socket activation ({local})",
                cfg.name
            );
            let fd: OwnedFd = sock.into();
            out.push(Bound {
                name: cfg.name.clone(),
                cfg_listen: cfg.listen.clone(),
                local,
                kind: crate::resources::queue::kind(fd.as_fd()),
                fd,
            });
        } else {
            out.push(bind(cfg)?);
        }
    }
    for (name, _) in passed {
        tracing::warn!(
            "systemd passed a socket named `{name}` but no [socket.{name}] uses it; closing it"
        );
    }
    Ok(out)
}

/// The passed socket listens where the file says: the same IP address and port (any port for
/// port 0), or the same unix path. `[::]` (every address, IPv4 too) is not `0.0.0.0`, nor
/// `127.0.0.1`.
fn same_address(listen: &ListenAddr, passed: &SockAddr) -> bool {
    match (listen, passed.as_socket(), passed.as_pathname()) {
        (ListenAddr::Tcp(want), Some(got), _) => {
            want.ip() == got.ip() && (want.port() == 0 || want.port() == got.port())
        }
        (ListenAddr::Unix(want), None, Some(got)) => want == got,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passed_socket_must_listen_where_the_file_says() {
        let tcp = |s: &str| SockAddr::from(s.parse::<std::net::SocketAddr>().unwrap());
        let listen = |s: &str| crate::config::parse_listen(s).unwrap();
        let cases = [
            ("127.0.0.1:8000", tcp("127.0.0.1:8000"), true),
            ("127.0.0.1:0", tcp("127.0.0.1:8123"), true),
            ("[::]:8000", tcp("[::]:8000"), true),
            // ListenStream=8000 is every address, IPv4 included
            ("127.0.0.1:8000", tcp("[::]:8000"), false),
            ("0.0.0.0:8000", tcp("[::]:8000"), false),
            ("127.0.0.1:8000", tcp("127.0.0.1:8001"), false),
            ("127.0.0.1:8000", tcp("10.0.0.1:8000"), false),
            (
                "unix:/run/app.sock",
                SockAddr::unix("/run/app.sock").unwrap(),
                true,
            ),
            (
                "unix:/run/app.sock",
                SockAddr::unix("/run/other.sock").unwrap(),
                false,
            ),
            ("unix:/run/app.sock", tcp("127.0.0.1:8000"), false),
            (
                "127.0.0.1:8000",
                SockAddr::unix("/run/app.sock").unwrap(),
                false,
            ),
        ];
        for (want, got, same) in cases {
            assert_eq!(same_address(&listen(want), &got), same, "{want} vs {got:?}");
        }
    }
}

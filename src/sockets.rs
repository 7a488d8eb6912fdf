//! Bind every listening socket once, before any step runs, and keep the fds for drover's life.
//! Each spawn lays the named ones out at fd 3.. (see `spawn`).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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

pub struct Bound {
    pub name: String,
    pub cfg_listen: ListenAddr,
    /// the address actually bound (port 0 resolved)
    pub local: String,
    pub fd: OwnedFd,
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
    Ok(Bound {
        name: cfg.name.clone(),
        cfg_listen: cfg.listen.clone(),
        local,
        fd: sock.into(),
    })
}

//! Readiness by notification: systemd's `sd_notify` protocol, spoken by workers to drover. One
//! datagram socket in the abstract namespace (`@drover-notify-PID-N`: no file to clean up or to
//! give permissions on, so workers dropped to another user can still reach it) with
//! `SO_PASSCRED`, so every message arrives with the sender's pid as the kernel saw it — a worker
//! cannot speak for another. The loop maps the pid to a worker by its process group.
//!
//! Messages are newline-separated `KEY=VALUE` lines (`READY=1`, `STATUS=…`); drover reads
//! `READY`, `STATUS` and `STOPPING` and ignores the rest.

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;

/// What a worker said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

pub fn parse(text: &str) -> Message {
    let mut m = Message::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STOPPING", "1")) => m.stopping = true,
            Some(("STATUS", s)) => m.status = Some(s.chars().take(200).collect()),
            _ => {}
        }
    }
    m
}

pub struct NotifySocket {
    fd: AsyncFd<OwnedFd>,
    /// the value workers get as NOTIFY_SOCKET (`@` marks the abstract namespace)
    pub name: String,
}

impl NotifySocket {
    pub fn bind() -> std::io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        let mut last = None;
        for n in 0..16u32 {
            let name = format!("drover-notify-{}-{n}", std::process::id());
            match bind(fd.as_raw_fd(), &UnixAddr::new_abstract(name.as_bytes())?) {
                Ok(()) => {
                    // SAFETY: the AsyncFd owns the socket, so the fd stays open for as long as
                    // it is registered.
                    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
                    return Ok(NotifySocket {
                        fd,
                        name: format!("@{name}"),
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(std::io::Error::last_os_error, Into::into))
    }

    /// The next message with its sender's pid.
    pub async fn recv(&self) -> std::io::Result<(i32, Message)> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| receive(fd.get_ref())) {
                Ok(Ok(Some(m))) => return Ok(m),
                // a message without credentials: not from a process drover can place
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

fn receive(fd: &OwnedFd) -> std::io::Result<Option<(i32, Message)>> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
    let msg = recvmsg::<()>(fd.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())
        .map_err(std::io::Error::from)?;
    let mut pid = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmCredentials(cred) = c {
            pid = Some(cred.pid());
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(pid.map(|p| (p, parse(&text))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages() {
        assert_eq!(
            parse("READY=1\nSTATUS=warming caches\nMAINPID=7"),
            Message {
                ready: true,
                stopping: false,
                status: Some("warming caches".into())
            }
        );
        assert!(!parse("READY=0").ready);
        assert!(parse("STOPPING=1").stopping);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_arrives_with_the_senders_pid() {
        let s = NotifySocket::bind().unwrap();
        assert!(s.name.starts_with("@drover-notify-"));
        use std::os::linux::net::SocketAddrExt;
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(&s.name.as_bytes()[1..]).unwrap();
        c.send_to_addr(b"READY=1\nSTATUS=up", &addr).unwrap();
        let (pid, m) = s.recv().await.unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert!(m.ready);
        assert_eq!(m.status.as_deref(), Some("up"));
    }
}

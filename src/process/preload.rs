//! drover's side of the preload protocol (docs/worker-protocol.md): one `SOCK_SEQPACKET` pair
//! between drover and a program's preloader, one message per packet, text.
//!
//! ```text
//! preloader -> drover   ready                     the app is imported; it will fork on request
//!                       error TEXT                it cannot (and exits)
//! drover -> preloader   fork INDEX   [+ one fd]   fork worker INDEX; the fd is its stdout/stderr
//! worker    -> drover   pid PID                   sent by the forked worker itself: re-parented
//!                                                 to drover, leading its own process group,
//!                                                 waiting for go
//! preloader -> drover   error TEXT                the fork failed
//! drover -> preloader   go PID                    placed (cgroup joined): serve
//!                       abort PID                 not placed: exit without serving
//! ```
//!
//! Nothing here waits: drover's end is non-blocking, sends that would block are errors (a
//! preloader that does not read its socket is broken), and messages are read by a task
//! (`recv`) that reports them to the loop. Every message carries its sender's credentials
//! (`SO_PASSCRED`, set before the preloader exists), so drover knows which process said `pid`.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use tokio::io::unix::AsyncFd;

/// drover's end of a preloader's control socket. Cheap to clone: the loop sends, a task reads.
#[derive(Clone)]
pub struct Channel {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// A new pair: drover's end, and the preloader's (to lay out in its fds at spawn). Must be
/// called inside the loop's runtime.
pub fn pair() -> std::io::Result<(Channel, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
    )?;
    // before the other end exists anywhere else: every message it ever sends carries the
    // sender's pid, uid and gid as the kernel knows them
    setsockopt(&a, sockopt::PassCred, &true)?;
    // and never hands drover an fd (closing one can block the loop)
    super::untrusted::refuse_fds(&a);
    // the preloader's end blocks, as any program expects of a fresh socket
    nix::fcntl::fcntl(
        &b,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )?;
    // SAFETY: the AsyncFd owns the socket, so the fd stays open for as long as it is
    // registered.
    let fd = unsafe { AsyncFd::register(a) }.map_err(|e| e.into_parts().1)?;
    Ok((Channel { fd: Arc::new(fd) }, b))
}

/// One message from the preloader's socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    Ready,
    Error(String),
    /// `pid PID`, and the pid of the process that sent it (the kernel's credentials)
    Pid {
        pid: i32,
        sender: Option<i32>,
    },
    /// anything else (a protocol violation)
    Unknown(String),
    /// every copy of the other end is closed
    Closed,
}

/// What a packet says. The text is bounded by the read buffer (4 KiB).
pub fn parse(text: &str, sender: Option<i32>) -> Said {
    let t = text.trim();
    if t == "ready" {
        return Said::Ready;
    }
    if let Some(e) = t.strip_prefix("error ") {
        // application text, for drover's log and /status: no control character passes
        return Said::Error(crate::logs::printable(e));
    }
    if let Some(pid) = t.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
        return Said::Pid { pid, sender };
    }
    Said::Unknown(t.chars().take(200).collect())
}

impl Channel {
    fn send(&self, text: &str, fd: Option<RawFd>) -> Result<(), String> {
        let iov = [IoSlice::new(text.as_bytes())];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.fd.get_ref().as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map(|_| ())
        .map_err(|e| match e {
            nix::errno::Errno::EAGAIN => {
                "its socket is full: it does not read drover's requests".to_string()
            }
            e => format!("cannot write to the preloader: {e}"),
        })
    }

    /// Ask for worker `index`, its output on `out`. Never waits; the answer comes to `recv`.
    pub fn fork(&self, index: u32, out: Option<RawFd>) -> Result<(), String> {
        self.send(&format!("fork {index}"), out)
    }

    /// The worker is placed: let it serve.
    pub fn go(&self, pid: i32) -> Result<(), String> {
        self.send(&format!("go {pid}"), None)
    }

    /// The worker could not be placed: it exits without serving.
    pub fn abort(&self, pid: i32) {
        let _ = self.send(&format!("abort {pid}"), None);
    }

    /// The next message, with its sender's credentials.
    pub async fn recv(&self) -> Said {
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return Said::Closed;
            };
            match ready.try_io(|fd| receive(fd.get_ref())) {
                Ok(Ok(said)) => return said,
                Ok(Err(_)) => return Said::Closed,
                Err(_would_block) => continue,
            }
        }
    }
}

fn receive(fd: &OwnedFd) -> std::io::Result<Said> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    // room for the most fds one message can carry (SCM_MAX_FD): never truncated control data
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [RawFd; 253]);
    let msg = match recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        // the preloader closed its end with our request unread
        Err(nix::errno::Errno::ECONNRESET) => return Ok(Said::Closed),
        Err(nix::errno::Errno::EAGAIN) => {
            return Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        }
        Err(e) => return Err(e.into()),
    };
    let mut sender = None;
    let Ok(cmsgs) = msg.cmsgs() else {
        return Ok(Said::Unknown(
            "a message with control data drover cannot read".into(),
        ));
    };
    for c in cmsgs {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => sender = Some(cred.pid()),
            // nothing is expected from the preloader but text: what it passed anyway (a kernel
            // without SO_PASSRIGHTS) is closed off the loop thread
            ControlMessageOwned::ScmRights(fds) => super::untrusted::discard(fds),
            _ => {}
        }
    }
    let n = msg.bytes;
    if n == 0 {
        return Ok(Said::Closed);
    }
    Ok(parse(&String::from_utf8_lossy(&buf[..n]), sender))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn messages_parse() {
        assert_eq!(parse("ready\n", None), Said::Ready);
        assert_eq!(
            parse("error cannot load", Some(7)),
            Said::Error("cannot load".into())
        );
        assert_eq!(
            parse("pid 4242", Some(4242)),
            Said::Pid {
                pid: 4242,
                sender: Some(4242)
            }
        );
        assert_eq!(parse("pid x", None), Said::Unknown("pid x".into()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_scripted_preloader_is_ready_then_answers_a_fork_with_its_credentials() {
        let (ch, theirs) = pair().unwrap();
        let p = UnixDatagram::from(theirs);
        p.send(b"ready").unwrap();
        assert_eq!(ch.recv().await, Said::Ready);
        ch.fork(3, None).unwrap();
        let mut b = [0u8; 64];
        let n = p.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"fork 3");
        p.send(b"pid 4242").unwrap();
        // the kernel says who sent it: this process, not 4242
        let me = std::process::id() as i32;
        assert_eq!(
            ch.recv().await,
            Said::Pid {
                pid: 4242,
                sender: Some(me)
            }
        );
        ch.go(4242).unwrap();
        let n = p.recv(&mut b).unwrap();
        assert_eq!(&b[..n], b"go 4242");
        drop(p);
        assert_eq!(ch.recv().await, Said::Closed);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_preloader_that_never_reads_makes_fork_fail_instead_of_blocking() {
        let (ch, theirs) = pair().unwrap();
        let mut failed = None;
        for i in 0..100_000 {
            if let Err(e) = ch.fork(i, None) {
                failed = Some(e);
                break;
            }
        }
        assert!(failed.unwrap().contains("does not read"));
        drop(theirs);
    }
}

//! drover's side of the preload protocol (docs/worker-protocol.md): one `SOCK_SEQPACKET` pair
//! between drover and a program's preloader, one message per packet, text.
//!
//! ```text
//! preloader -> drover   ready                     the app is imported; it will fork on request
//!                       error TEXT                it cannot (and exits)
//! drover -> preloader   fork INDEX   [+ one fd]   fork worker INDEX; the fd is its stdout/stderr
//! preloader -> drover   pid PID                   forked, re-parented to drover, in its own
//!                                                 process group, waiting for go
//!                       error TEXT                the fork failed
//! drover -> preloader   go PID                    placed (cgroup joined): serve
//!                       abort PID                 not placed: exit without serving
//! ```
//!
//! drover speaks it from its loop: "ready" is polled without blocking; a fork is a request and
//! its reply, bounded by a timeout.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType,
};

/// drover's end of a preloader's control socket.
pub struct Channel {
    fd: OwnedFd,
}

/// A new pair: drover's end, and the preloader's (to lay out in its fds at spawn).
pub fn pair() -> std::io::Result<(Channel, OwnedFd)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel { fd: a }, b))
}

/// What the preloader said while it loads.
#[derive(Debug, PartialEq, Eq)]
pub enum Loaded {
    Ready,
    Failed(String),
    /// it closed its end without a word
    Closed,
}

impl Channel {
    fn send(&self, text: &str, fd: Option<RawFd>) -> Result<(), String> {
        let iov = [IoSlice::new(text.as_bytes())];
        let fds: Vec<RawFd> = fd.into_iter().collect();
        let cmsg = [ControlMessage::ScmRights(&fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            self.fd.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map(|_| ())
        .map_err(|e| format!("cannot write to the preloader: {e}"))
    }

    /// One packet, waiting at most `wait` (zero: only what is there). None: nothing yet.
    fn recv(&self, wait: Duration) -> Result<Option<String>, String> {
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let ms =
            PollTimeout::try_from(wait.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
        match poll(&mut fds, ms) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => return Ok(None),
            Err(e) => return Err(format!("poll: {e}")),
        }
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let n = match recvmsg::<()>(self.fd.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(msg) => msg.bytes,
            // the preloader closed its end with our request unread
            Err(nix::errno::Errno::ECONNRESET) => 0,
            Err(e) => return Err(format!("cannot read from the preloader: {e}")),
        };
        Ok(Some(String::from_utf8_lossy(&buf[..n]).trim().to_string()))
    }

    /// While it loads: has it said ready (or failed)? Never blocks.
    pub fn poll_loaded(&self) -> Option<Loaded> {
        match self.recv(Duration::ZERO) {
            Ok(None) => None,
            Ok(Some(m)) if m.is_empty() => Some(Loaded::Closed),
            Ok(Some(m)) if m == "ready" => Some(Loaded::Ready),
            Ok(Some(m)) => Some(Loaded::Failed(
                m.strip_prefix("error ").unwrap_or(&m).to_string(),
            )),
            Err(e) => Some(Loaded::Failed(e)),
        }
    }

    /// Ask for worker `index`, its output on `out`; the new worker's pid within `timeout`.
    pub fn fork(&self, index: u32, out: Option<RawFd>, timeout: Duration) -> Result<i32, String> {
        self.send(&format!("fork {index}"), out)?;
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the preloader did not answer a fork within {timeout:?}"
                ));
            }
            match self.recv(left)? {
                None => continue,
                Some(m) if m.is_empty() => return Err("the preloader closed its socket".into()),
                Some(m) => {
                    if let Some(pid) = m.strip_prefix("pid ").and_then(|p| p.parse().ok()) {
                        return Ok(pid);
                    }
                    return Err(m.strip_prefix("error ").unwrap_or(&m).to_string());
                }
            }
        }
    }

    /// The worker is placed: let it serve.
    pub fn go(&self, pid: i32) -> Result<(), String> {
        self.send(&format!("go {pid}"), None)
    }

    /// The worker could not be placed: it exits without serving.
    pub fn abort(&self, pid: i32) {
        let _ = self.send(&format!("abort {pid}"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    /// The preloader's end as a plain socket, for a scripted peer.
    fn peer(fd: OwnedFd) -> UnixDatagram {
        UnixDatagram::from(fd)
    }

    #[test]
    fn a_scripted_preloader_is_ready_then_forks() {
        let (ch, theirs) = pair().unwrap();
        let p = peer(theirs);
        assert_eq!(ch.poll_loaded(), None, "nothing said yet");
        p.send(b"ready").unwrap();
        assert_eq!(ch.poll_loaded(), Some(Loaded::Ready));
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            let n = p.recv(&mut b).unwrap();
            assert_eq!(&b[..n], b"fork 3");
            p.send(b"pid 4242").unwrap();
            let n = p.recv(&mut b).unwrap();
            assert_eq!(&b[..n], b"go 4242");
            let n = p.recv(&mut b).unwrap();
            assert_eq!(&b[..n], b"fork 4");
            p.send(b"error fork: EAGAIN").unwrap();
        });
        assert_eq!(ch.fork(3, None, Duration::from_secs(5)), Ok(4242));
        ch.go(4242).unwrap();
        assert_eq!(
            ch.fork(4, None, Duration::from_secs(5)),
            Err("fork: EAGAIN".into())
        );
        t.join().unwrap();
    }

    #[test]
    fn silence_and_a_closed_end_are_errors_not_hangs() {
        let (ch, theirs) = pair().unwrap();
        let p = peer(theirs);
        let t0 = Instant::now();
        let e = ch.fork(0, None, Duration::from_millis(100)).unwrap_err();
        assert!(e.contains("did not answer"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5));
        drop(p);
        assert_eq!(ch.poll_loaded(), Some(Loaded::Closed));
    }
}

//! Sockets a less trusted process writes to (the notify socket, a preloader's socket) must not be
//! able to hand drover file descriptors. Closing a passed fd can block — the last close of a TCP
//! socket with `SO_LINGER` waits for its unsent data — and on the loop thread that freezes
//! drover. So:
//!
//! - `refuse_fds` asks the kernel to refuse `SCM_RIGHTS` on the socket (`SO_PASSRIGHTS` = 0,
//!   Linux 6.16): the sender's `sendmsg` fails with EPERM and nothing ever reaches drover;
//! - where the kernel cannot, what arrives anyway is closed on a thread of its own
//!   (`discard`), never on the loop's.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::sync::OnceLock;

/// `SO_PASSRIGHTS` from the kernel's uapi (asm-generic/socket.h), not yet in libc.
const SO_PASSRIGHTS: libc::c_int = 83;

/// Refuse fds passed on `sock`. False on a kernel that cannot (they are then `discard`ed).
pub fn refuse_fds(sock: &impl AsRawFd) -> bool {
    let off: libc::c_int = 0;
    // SAFETY: setsockopt on a socket the caller owns, with a pointer to a local int and its size.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PASSRIGHTS,
            &off as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// Close fds an untrusted peer passed, off the loop thread.
pub fn discard(fds: impl IntoIterator<Item = RawFd>) {
    static CLOSER: OnceLock<Option<mpsc::Sender<OwnedFd>>> = OnceLock::new();
    let tx = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        std::thread::Builder::new()
            .name("drover-closer".into())
            .spawn(move || {
                // each close may wait (a lingering socket): it waits here
                for fd in rx {
                    drop(fd);
                }
            })
            .ok()
            .map(|_| tx)
    });
    for fd in fds {
        // SAFETY: the kernel installed `fd` in drover's table for this message; nothing else
        // owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(fd)) = tx.send(fd) {
                    // no closer thread after all: leaking is safer than blocking the loop
                    std::mem::forget(fd);
                }
            }
            None => std::mem::forget(fd),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_socket_that_refuses_fds_makes_the_sender_fail() {
        let (a, b) = UnixDatagram::pair().unwrap();
        if !refuse_fds(&a) {
            return; // an older kernel: `discard` is the defence there
        }
        let (r, _w) = nix::unistd::pipe().unwrap();
        let fds = [r.as_raw_fd()];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"x")];
        let sent = nix::sys::socket::sendmsg::<()>(
            b.as_raw_fd(),
            &iov,
            &cmsg,
            nix::sys::socket::MsgFlags::empty(),
            None,
        );
        assert_eq!(sent, Err(nix::errno::Errno::EPERM));
        // plain messages still pass
        b.send(b"READY=1").unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(a.recv(&mut buf).unwrap(), 7);
    }
}

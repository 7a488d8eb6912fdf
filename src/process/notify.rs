//! Readiness by notification: systemd's `sd_notify` protocol, spoken by workers to drover.
//!
//! One datagram socket with `SO_PASSCRED`, so every message arrives with the sender's pid as the
//! kernel saw it — a worker cannot speak for another. It is a file with a random name in drover's
//! runtime directory (mode 0711: others can pass, not list), not a name in the abstract namespace
//! that anything in the network namespace could reach: only processes given the path — the
//! workers, in their environment — can find it (systemd's choice too).
//!
//! What arrives is bounded before it reaches the loop (`Inbox`): a datagram from a process that
//! is neither a worker nor in a worker's process group is dropped and counted at once; a
//! worker's messages are merged into one pending entry per worker (READY and STOPPING stick, the
//! latest STATUS wins); the loop is woken once per batch and drains them. A flood costs drover a
//! `recvmsg` and a hash lookup per datagram — never memory, never a queue the loop falls behind
//! on.
//!
//! Messages are newline-separated `KEY=VALUE` lines (`READY=1`, `STATUS=…`); drover reads
//! `READY`, `STATUS` and `STOPPING` and ignores the rest.

use std::collections::HashMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;

/// Datagrams from processes that are not workers, dropped since drover started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// For `/metrics`: `drover_notify_dropped_total`.
pub fn dropped_total() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// What a worker said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Message {
    pub ready: bool,
    pub stopping: bool,
    pub status: Option<String>,
}

impl Message {
    /// A later message from the same worker: flags stay set, the newest status wins.
    fn merge(&mut self, later: Message) {
        self.ready |= later.ready;
        self.stopping |= later.stopping;
        if later.status.is_some() {
            self.status = later.status;
        }
    }
}

pub fn parse(text: &str) -> Message {
    let mut m = Message::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("READY", "1")) => m.ready = true,
            Some(("STOPPING", "1")) => m.stopping = true,
            Some(("STATUS", s)) => {
                let s: String = s.chars().take(200).collect();
                m.status = Some(crate::logs::printable(&s));
            }
            _ => {}
        }
    }
    m
}

/// Shared between the loop and the reading task: who may speak, and what they said.
#[derive(Default)]
pub struct Inbox {
    /// worker pids (each leads its own process group), and the uid each runs as
    workers: Mutex<HashMap<i32, u32>>,
    /// per worker, what it said since the loop last looked
    pending: Mutex<HashMap<i32, Message>>,
}

impl Inbox {
    pub fn allow(&self, worker: i32, uid: u32) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(worker, uid);
    }

    pub fn forget(&self, worker: i32) {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&worker);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&worker);
    }

    /// Everything said since the last call, one entry per worker.
    pub fn take(&self) -> HashMap<i32, Message> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// A datagram from `sender` running as `uid` (the kernel's credentials): kept (merged) if it
    /// comes from a worker itself, or from a process in a worker's group running as the worker's
    /// user (a process of another program could join the group; it cannot take the uid), else
    /// dropped and counted.
    fn offer(&self, sender: i32, uid: u32, text: &str) -> Offered {
        let worker = {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            if workers.contains_key(&sender) {
                Some(sender)
            } else {
                // getpgid is one syscall; a worker's helper processes share its group
                nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(sender)))
                    .ok()
                    .map(|g| g.as_raw())
                    .filter(|g| workers.get(g) == Some(&uid))
            }
        };
        let Some(worker) = worker else {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return Offered::Dropped;
        };
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = pending.is_empty();
        pending.entry(worker).or_default().merge(parse(text));
        if was_empty {
            Offered::Woke
        } else {
            Offered::Merged
        }
    }
}

/// What became of a datagram.
#[derive(Debug, PartialEq, Eq)]
enum Offered {
    /// kept, and the inbox was empty: wake the loop
    Woke,
    /// kept beside what waits already
    Merged,
    /// not from a worker's process group
    Dropped,
}

pub struct NotifySocket {
    fd: AsyncFd<OwnedFd>,
    /// the value workers get as NOTIFY_SOCKET: the socket's path
    pub name: String,
    path: PathBuf,
}

impl NotifySocket {
    /// Bind a socket with a random name in `dir` (drover's runtime directory) that only
    /// `owner` (uid, gid) and root can send to.
    pub fn bind(dir: &Path, name: &str, owner: (u32, u32)) -> std::io::Result<NotifySocket> {
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&fd, sockopt::PassCred, &true)?;
        // no fd a sender passes ever reaches drover (or costs its loop a blocking close)
        super::untrusted::refuse_fds(&fd);
        let path = dir.join(name);
        // created 0600 whatever the umask, then given to the workers' user: sending needs write
        // permission on the file, so other users cannot even reach drover's reader (its path is
        // no secret: /proc/net/unix lists it)
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
        let bound = bind(fd.as_raw_fd(), &UnixAddr::new(&path)?);
        nix::sys::stat::umask(old);
        bound?;
        let (uid, gid) = owner;
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )?;
        // SAFETY: the AsyncFd owns the socket, so the fd stays open for as long as it is
        // registered.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(NotifySocket {
            fd,
            name: path.display().to_string(),
            path,
        })
    }

    /// Read datagrams into `inbox` until the socket fails; `wake` is called when the inbox goes
    /// from empty to not. After a full batch of `BATCH` datagrams it pauses for a millisecond,
    /// whoever sent them, so a flood — a stranger's, or a worker's own — costs drover at most
    /// ~`BATCH` datagrams a millisecond while the kernel's bounded queue makes the flooder
    /// wait. A worker's message waits behind at most that queue (milliseconds).
    pub async fn serve(self, inbox: Arc<Inbox>, wake: impl Fn() -> bool) {
        const BATCH: usize = 64;
        loop {
            let Ok(mut ready) = self.fd.readable().await else {
                return;
            };
            let mut full = true;
            for _ in 0..BATCH {
                match receive(self.fd.get_ref()) {
                    Ok(Some((pid, uid, text))) => {
                        if inbox.offer(pid, uid, &text) == Offered::Woke && !wake() {
                            return;
                        }
                    }
                    // no credentials: not from a process drover can place
                    Ok(None) => {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        ready.clear_ready();
                        full = false;
                        break;
                    }
                    // one bad datagram must not end the reader: drop it, count it, go on (the
                    // pause below keeps a persistent error from spinning)
                    Err(_) => {
                        DROPPED.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
            }
            drop(ready);
            if full {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn receive(fd: &OwnedFd) -> std::io::Result<Option<(i32, u32, String)>> {
    let mut buf = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut buf)];
    // room for the most fds one message can carry (SCM_MAX_FD), so none is left for the kernel
    // to close in this thread, and the control data is never truncated
    let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials, [std::os::fd::RawFd; 253]);
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(std::io::Error::from)?;
    let mut pid = None;
    let Ok(cmsgs) = msg.cmsgs() else {
        // control data drover cannot read: not a message it can place (dropped, counted)
        return Ok(None);
    };
    for c in cmsgs {
        match c {
            ControlMessageOwned::ScmCredentials(cred) => pid = Some((cred.pid(), cred.uid())),
            // sd_notify may pass fds (FDSTORE=1); drover keeps none, and closes them off the
            // loop thread (a lingering socket's last close blocks)
            ControlMessageOwned::ScmRights(fds) => super::untrusted::discard(fds),
            _ => {}
        }
    }
    let n = msg.bytes;
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    Ok(pid.map(|(p, u)| (p, u, text)))
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

    #[test]
    fn the_inbox_keeps_one_merged_entry_per_worker_and_drops_strangers() {
        let inbox = Inbox::default();
        let me = std::process::id() as i32;
        let uid = nix::unistd::getuid().as_raw();
        let before = dropped_total();
        assert_eq!(
            inbox.offer(me, uid, "READY=1"),
            Offered::Dropped,
            "not a worker yet"
        );
        assert!(dropped_total() > before);
        inbox.allow(me, uid);
        assert_eq!(
            inbox.offer(me, uid, "STATUS=a"),
            Offered::Woke,
            "the first wakes the loop"
        );
        assert_eq!(
            inbox.offer(me, uid, "READY=1"),
            Offered::Merged,
            "the second does not"
        );
        for _ in 0..10_000 {
            inbox.offer(me, uid, "STATUS=b");
        }
        let got = inbox.take();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[&me],
            Message {
                ready: true,
                stopping: false,
                status: Some("b".into())
            }
        );
        assert!(inbox.take().is_empty());
        inbox.forget(me);
        assert_eq!(inbox.offer(me, uid, "READY=1"), Offered::Dropped);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_with_many_fds_does_not_end_the_reader() {
        // as on a kernel without SO_PASSRIGHTS: fds reach the socket
        let dir = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let s = NotifySocket::bind(dir.path(), "notify-fds", me).unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on the socket this test owns, a pointer to a local int and its size.
        unsafe {
            libc::setsockopt(
                s.fd.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                83,
                &on as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let path = s.path.clone();
        let inbox = Arc::new(Inbox::default());
        let pid = std::process::id() as i32;
        inbox.allow(pid, nix::unistd::getuid().as_raw());
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let pipes: Vec<_> = (0..10).map(|_| nix::unistd::pipe().unwrap()).collect();
        let fds: Vec<std::os::fd::RawFd> = pipes.iter().map(|(r, _)| r.as_raw_fd()).collect();
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        let iov = [std::io::IoSlice::new(b"STATUS=fds")];
        let to = UnixAddr::new(&path).unwrap();
        let _ = nix::sys::socket::sendmsg(c.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&to));
        c.send_to(b"READY=1", &path).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(s.serve(inbox.clone(), move || tx.send(()).is_ok()));
        rx.recv().await.unwrap();
        let mut got = Message::default();
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !got.ready {
            if let Some(m) = inbox.take().remove(&pid) {
                got.merge(m);
            }
            assert!(
                std::time::Instant::now() < end,
                "READY=1 after it never read"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(!task.is_finished(), "the reader goes on");
        task.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_datagram_arrives_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let s = NotifySocket::bind(dir.path(), "notify-test", me).unwrap();
        let path = s.path.clone();
        let inbox = Arc::new(Inbox::default());
        let me = std::process::id() as i32;
        inbox.allow(me, nix::unistd::getuid().as_raw());
        let c = std::os::unix::net::UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(s.serve(inbox.clone(), move || tx.send(()).is_ok()));
        rx.recv().await.unwrap();
        let got = inbox.take();
        assert!(got[&me].ready);
        assert_eq!(got[&me].status.as_deref(), Some("up"));
        task.abort();
    }
}

//! The accept queue of a listening socket: how many connections wait for a worker to accept them,
//! and the most the kernel keeps (the listen backlog). drover holds every listener, so it alone
//! can see this — the earliest sign that a service is short of workers.
//!
//! - TCP: one `getsockopt(TCP_INFO)`. For a socket in LISTEN state Linux reports the queue in
//!   `tcpi_unacked` and its limit in `tcpi_sacked`.
//! - Unix stream: one sock_diag (`NETLINK_SOCK_DIAG`) request by inode with `UDIAG_SHOW_RQLEN`;
//!   for a listener the kernel answers the queue as `rqueue` and the limit as `wqueue`. It needs
//!   `CONFIG_UNIX_DIAG` (the `unix_diag` module); without it the queue is reported as unknown,
//!   with that reason.
//!
//! Nothing here touches the data path: it is a read of the kernel's counters.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Queue {
    /// connections waiting to be accepted
    pub len: u32,
    /// the most the kernel queues (the backlog, capped by net.core.somaxconn)
    pub max: u32,
}

/// What kind of listener a socket is, decided once (a socket systemd passed may differ from what
/// the file says).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Unix,
    /// another family: its queue is not read
    Other,
}

pub fn kind(fd: BorrowedFd<'_>) -> Kind {
    match socket2::SockRef::from(&fd).domain() {
        Ok(d) if d == socket2::Domain::IPV4 || d == socket2::Domain::IPV6 => Kind::Tcp,
        Ok(d) if d == socket2::Domain::UNIX => Kind::Unix,
        _ => Kind::Other,
    }
}

/// Reads queues; keeps one netlink socket open for unix listeners.
#[derive(Default)]
pub struct Reader {
    netlink: Option<OwnedFd>,
}

impl Reader {
    /// The queue of the listener `fd`, or why it cannot be read.
    pub fn read(&mut self, fd: BorrowedFd<'_>, kind: Kind) -> Result<Queue, String> {
        match kind {
            Kind::Tcp => tcp(fd),
            Kind::Unix => self.unix(fd),
            Kind::Other => Err("not a TCP or unix listener".into()),
        }
    }

    fn unix(&mut self, fd: BorrowedFd<'_>) -> Result<Queue, String> {
        let ino = nix::sys::stat::fstat(fd)
            .map_err(|e| format!("fstat: {e}"))?
            .st_ino as u32;
        if self.netlink.is_none() {
            use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
            let s = socket(
                AddressFamily::Netlink,
                SockType::Datagram,
                SockFlag::SOCK_CLOEXEC,
                SockProtocol::NetlinkSockDiag,
            )
            .map_err(|e| format!("cannot open a sock_diag netlink socket: {e}"))?;
            self.netlink = Some(s);
        }
        let nl = self.netlink.as_ref().expect("opened above").as_fd();
        let r = unix_diag(nl, ino);
        if r.is_err() {
            // a fresh socket next time: never read a stale answer
            self.netlink = None;
        }
        r
    }
}

/// The listeners whose queues the status endpoint reads at request time: drover's own
/// close-on-exec duplicates of the bound sockets (the same sockets, so the same queues).
pub struct Listeners {
    list: Vec<(String, OwnedFd, Kind)>,
    reader: std::sync::Mutex<Reader>,
}

impl Listeners {
    pub fn new<'a>(socks: impl IntoIterator<Item = (&'a str, BorrowedFd<'a>, Kind)>) -> Listeners {
        let list = socks
            .into_iter()
            .filter_map(|(n, fd, k)| Some((n.to_string(), fd.try_clone_to_owned().ok()?, k)))
            .collect();
        Listeners {
            list,
            reader: Default::default(),
        }
    }

    /// Each listener's queue by name, or why it is not known.
    pub fn read(&self) -> Vec<(&str, Result<Queue, String>)> {
        let mut r = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        self.list
            .iter()
            .map(|(n, fd, k)| (n.as_str(), r.read(fd.as_fd(), *k)))
            .collect()
    }
}

fn tcp(fd: BorrowedFd<'_>) -> Result<Queue, String> {
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: tcp_info is plain integers, so all-zero is a valid value; the kernel writes at
    // most `len` bytes into it and updates `len`.
    let (rc, info) = unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let rc = libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc, info)
    };
    if rc != 0 {
        return Err(format!("TCP_INFO: {}", std::io::Error::last_os_error()));
    }
    if u32::from(info.tcpi_state) != TCP_LISTEN_STATE {
        return Err("not listening".into());
    }
    Ok(Queue {
        len: info.tcpi_unacked,
        max: info.tcpi_sacked,
    })
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const TCP_LISTEN_STATE: u32 = 10;
const UDIAG_SHOW_RQLEN: u32 = 0x10;
const UNIX_DIAG_RQLEN: u16 = 4;
const HDR: usize = 16;

/// One sock_diag request for the unix socket with inode `ino`; the answer's RQLEN attribute.
fn unix_diag(nl: BorrowedFd<'_>, ino: u32) -> Result<Queue, String> {
    use nix::sys::socket::{recv, sendto, MsgFlags, NetlinkAddr};
    let mut req = Vec::with_capacity(HDR + 24);
    req.extend_from_slice(&((HDR + 24) as u32).to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&ino.to_ne_bytes()); // sequence number: the inode asked about
    req.extend_from_slice(&0u32.to_ne_bytes()); // to the kernel
    req.extend_from_slice(&[libc::AF_UNIX as u8, 0, 0, 0]); // family, protocol, pad
    req.extend_from_slice(&(1u32 << TCP_LISTEN_STATE).to_ne_bytes());
    req.extend_from_slice(&ino.to_ne_bytes());
    req.extend_from_slice(&UDIAG_SHOW_RQLEN.to_ne_bytes());
    req.extend_from_slice(&[0xff; 8]); // no cookie
    sendto(
        nl.as_raw_fd(),
        &req,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| format!("sock_diag request: {e}"))?;
    let mut buf = [0u8; 1024];
    let n = recv(nl.as_raw_fd(), &mut buf, MsgFlags::empty())
        .map_err(|e| format!("sock_diag answer: {e}"))?;
    parse_unix_diag(&buf[..n], ino)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The kernel's answer: a `unix_diag_msg` and its attributes, or an error message.
fn parse_unix_diag(b: &[u8], ino: u32) -> Result<Queue, String> {
    let short = || "sock_diag: short answer".to_string();
    let len = u32_at(b, 0).ok_or_else(short)? as usize;
    let ty = u16_at(b, 4).ok_or_else(short)?;
    if ty == NLMSG_ERROR {
        let errno = -(u32_at(b, HDR).ok_or_else(short)? as i32);
        let e = nix::errno::Errno::from_raw(errno);
        return Err(
            if matches!(e, nix::errno::Errno::ENOENT | nix::errno::Errno::EINVAL) {
                format!("not reported: this kernel has no unix_diag (CONFIG_UNIX_DIAG), or the socket is gone ({e})")
            } else {
                format!("sock_diag: {e}")
            },
        );
    }
    if ty != SOCK_DIAG_BY_FAMILY || u32_at(b, HDR + 4) != Some(ino) {
        return Err(format!("sock_diag: unexpected answer (type {ty})"));
    }
    let end = len.min(b.len());
    // unix_diag_msg is 16 bytes; attributes follow, each 4-byte aligned
    let mut at = HDR + 16;
    while at + 4 <= end {
        let alen = u16_at(b, at).ok_or_else(short)? as usize;
        let aty = u16_at(b, at + 2).ok_or_else(short)?;
        if alen < 4 {
            break;
        }
        if aty == UNIX_DIAG_RQLEN {
            return Ok(Queue {
                len: u32_at(b, at + 4).ok_or_else(short)?,
                max: u32_at(b, at + 8).ok_or_else(short)?,
            });
        }
        at += (alen + 3) & !3;
    }
    Err("sock_diag: the answer has no queue length".into())
}

/// The kernel's listen-queue overflow counters (`TcpExt: ListenOverflows ListenDrops` in
/// /proc/net/netstat). They count for the whole network namespace — every listener of the node
/// or pod, not only drover's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Overflows {
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

pub fn overflows() -> Option<Overflows> {
    parse_netstat(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

fn parse_netstat(text: &str) -> Option<Overflows> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace();
    let values = lines.next()?.split_whitespace();
    let mut o = (None, None);
    for (n, v) in names.zip(values) {
        match n {
            "ListenOverflows" => o.0 = v.parse().ok(),
            "ListenDrops" => o.1 = v.parse().ok(),
            _ => {}
        }
    }
    Some(Overflows {
        listen_overflows: o.0?,
        listen_drops: o.1?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Print SKIPPED and record it where tests/run.sh counts skips.
    fn skip(reason: &str) {
        use std::io::Write;
        println!("SKIPPED: {reason}");
        let log = std::env::var("DROVER_SKIP_LOG").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/target/skipped.log").to_string()
        });
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "resources::queue: {reason}");
        }
    }

    /// Poll `f` until it answers `want` (connections reach the queue asynchronously).
    fn eventually(want: u32, mut f: impl FnMut() -> u32) {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let got = f();
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < end,
                "queue {got}, wanted {want}"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn tcp_queue_counts_unaccepted_connections() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
        s.listen(9).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let l: std::net::TcpListener = s.into();
        assert_eq!(kind(l.as_fd()), Kind::Tcp);
        let mut r = Reader::default();
        assert_eq!(r.read(l.as_fd(), Kind::Tcp), Ok(Queue { len: 0, max: 9 }));
        let clients: Vec<_> = (0..4)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        eventually(4, || r.read(l.as_fd(), Kind::Tcp).unwrap().len);
        let _ = l.accept().unwrap();
        eventually(3, || r.read(l.as_fd(), Kind::Tcp).unwrap().len);
        drop(clients);
    }

    #[test]
    fn unix_queue_counts_unaccepted_connections_or_says_why_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.sock");
        let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        s.bind(&socket2::SockAddr::unix(&path).unwrap()).unwrap();
        s.listen(7).unwrap();
        let l: std::os::unix::net::UnixListener = s.into();
        assert_eq!(kind(l.as_fd()), Kind::Unix);
        let mut r = Reader::default();
        match r.read(l.as_fd(), Kind::Unix) {
            Ok(q) => assert_eq!(q, Queue { len: 0, max: 7 }),
            Err(e) => {
                assert!(e.contains("unix_diag"), "{e}");
                skip(&format!("unix listener queues: {e}"));
                return;
            }
        }
        let _c: Vec<_> = (0..3)
            .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
            .collect();
        eventually(3, || r.read(l.as_fd(), Kind::Unix).unwrap().len);
        let _ = l.accept().unwrap();
        eventually(2, || r.read(l.as_fd(), Kind::Unix).unwrap().len);
    }

    #[test]
    fn a_connected_socket_is_not_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert_eq!(tcp(c.as_fd()), Err("not listening".into()));
    }

    #[test]
    fn netstat_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 12 15\nIpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat(text),
            Some(Overflows {
                listen_overflows: 12,
                listen_drops: 15
            })
        );
        assert_eq!(parse_netstat("IpExt: A\nIpExt: 1\n"), None);
        assert!(overflows().is_some(), "this kernel has /proc/net/netstat");
    }
}

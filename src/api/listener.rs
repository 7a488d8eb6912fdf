//! The status listener's socket and connections: binding it, the thread it is served on, and the
//! limits a server facing untrusted clients needs that `axum::serve` does not set. The routes
//! are in `server.rs`.
//!
//! # Its own thread
//!
//! `start` serves on a thread of its own (`drover-status`) with its own current-thread runtime,
//! so nothing the supervisor loop does (a slow syscall, a burst of exits, a blocked write) can
//! starve it; `/healthz` asks the loop whether it still answers (`liveness.rs`).
//!
//! # The connection cap, as nginx does it
//!
//! At most `MAX_CONNECTIONS` are open, and a connection is only accepted into a free slot:
//! never accepted and then closed. When a connection waits in the backlog and every slot is
//! taken, one *evictable* connection is closed to make room — first those that have never sent
//! a byte, then those with no request in flight (idle keep-alive, or still sending a request),
//! oldest first (`victim`). When all are in a request, drover stops accepting until one ends:
//! new connections wait in the kernel's backlog, they are not refused. A flood of idle
//! connections therefore delays a probe by one eviction, not by the 5 s header timeout.
//!
//! Per connection the bookkeeping is: when it opened, whether it has sent a byte (its stream's
//! reads are counted, `Tracked`), and its requests in flight (counted from the moment a request
//! has arrived whole, headers and body, until its response is ready: `received`; for a
//! streaming response, until its body ends: `Streaming`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use axum::response::Response;
use axum::Router;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::server::{self, Api};
use crate::config::ListenAddr;
use tracked::Tracked;

/// At most this many open connections (bounded memory: each holds at most `MAX_BUF` of request
/// plus `MAX_BODY`).
pub const MAX_CONNECTIONS: usize = 256;
/// A connection that has not sent its first byte within this is closed. Real clients (the
/// kubelet, Prometheus, curl, a browser's fetch) write their request as soon as they are
/// connected, so 2 s is many round trips even on a congested pod network; and it is well under
/// the 5 s header timeout, so a connect-and-wait flood holds each slot for 2 s, not 5. (A
/// browser's speculative preconnect is closed by it and reconnects when it has a request.)
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(2);
/// A client must finish sending a request's headers within this (slowloris); a request's body
/// too, once its headers are in.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Any connection, however busy, is closed after this (clients reconnect) — but for one whose
/// response is still streaming (`Streaming`: `/events`), which ends by itself or is closed.
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Request line plus headers.
pub const MAX_BUF: usize = 16 * 1024;
/// Connections the kernel queues while every slot is busy (capped by net.core.somaxconn).
const BACKLOG: i32 = 1024;

/// The status listener's socket, bound before anything starts.
pub enum Bound {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl AsRawFd for Bound {
    fn as_raw_fd(&self) -> RawFd {
        match self {
            Bound::Tcp(l) => l.as_raw_fd(),
            Bound::Unix(l) => l.as_raw_fd(),
        }
    }
}

impl std::os::fd::AsFd for Bound {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Bound::Tcp(l) => l.as_fd(),
            Bound::Unix(l) => l.as_fd(),
        }
    }
}

/// Bind the status address; its display form for the log. A unix socket is private to
/// drover's user from the moment its file exists (`bind_private`).
pub fn bind(addr: &ListenAddr) -> io::Result<(Bound, String)> {
    use socket2::{Domain, SockAddr, Socket, Type};
    match addr {
        ListenAddr::Tcp(a) => {
            let s = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&(*a).into())?;
            s.listen(BACKLOG)?;
            let l = std::net::TcpListener::from(s);
            let local = l.local_addr()?.to_string();
            Ok((Bound::Tcp(l), local))
        }
        ListenAddr::Unix(p) => {
            let _ = std::fs::remove_file(p);
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            bind_private(&s, &SockAddr::unix(p)?)?;
            // only drover's own user may control it through the socket; kept explicit in case
            // the file system ignores the umask (and it documents the intent)
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            // connections are refused until listen(2): nobody reaches it before the chmod
            s.listen(BACKLOG)?;
            let l = std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(s));
            Ok((Bound::Unix(l), format!("unix:{}", p.display())))
        }
    }
}

/// bind(2) a unix socket under umask 0177, so its file is created 0600, never world-connectable
/// for a moment (under umask 000 it would be 0777 until the chmod). The umask is process-wide;
/// this runs during start-up, before the status thread, the output writer or any worker exists,
/// while no other thread of drover creates files.
fn bind_private(s: &socket2::Socket, addr: &socket2::SockAddr) -> io::Result<()> {
    use nix::sys::stat::{umask, Mode};
    let old = umask(Mode::from_bits_truncate(0o177));
    let bound = s.bind(addr);
    umask(old);
    bound
}

/// Serve `bound` on the `drover-status` thread. An error (no runtime, no thread) is returned
/// before anything is served, so drover can refuse to start.
pub fn start(bound: Bound, api: Api) -> io::Result<()> {
    match &bound {
        Bound::Tcp(l) => l.set_nonblocking(true)?,
        Bound::Unix(l) => l.set_nonblocking(true)?,
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    let listener = {
        let _registering = rt.enter();
        // SAFETY: `Bound` owns its listening socket (a std listener); `as_raw_fd` always returns
        // that fd, and it stays open until the AsyncFd, which owns the `Bound`, is dropped.
        unsafe { AsyncFd::register_with_interest(bound, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?
    };
    std::thread::Builder::new()
        .name("drover-status".into())
        .spawn(move || rt.block_on(serve(listener, api)))?;
    Ok(())
}

/// What one connection has done so far, shared by its stream, its service and the registry.
#[derive(Default)]
struct ConnState {
    /// it has sent at least one byte
    sent: AtomicBool,
    in_flight: AtomicU32,
    /// told when a request ends and the connection may have become evictable
    idle: Arc<Notify>,
    /// responses streaming now (`Streaming`): the connection outlives `CONNECTION_LIFETIME`
    streaming: AtomicU32,
    /// told to close the connection at once (a stream whose client does not keep up)
    close: Notify,
}

/// One open connection, as eviction sees it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u64,
    opened: Instant,
    sent: bool,
    in_flight: u32,
}

/// The connection to close to make room, if any: never-sent-a-byte before idle, oldest first.
/// A connection with a request in flight is never chosen.
fn victim(open: impl IntoIterator<Item = Candidate>) -> Option<Candidate> {
    open.into_iter()
        .filter(|c| c.in_flight == 0)
        .min_by_key(|c| (c.sent, c.opened, c.id))
}

struct Entry {
    opened: Instant,
    state: Arc<ConnState>,
    evict: oneshot::Sender<()>,
}

/// The open connections.
#[derive(Default)]
struct Conns {
    open: Mutex<HashMap<u64, Entry>>,
    next: std::sync::atomic::AtomicU64,
    idle: Arc<Notify>,
}

/// A connection's place in `Conns`; removed when its task ends.
struct Registered {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.lock().remove(&self.id);
    }
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>) -> (Registered, Arc<ConnState>, oneshot::Receiver<()>) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState {
            idle: self.idle.clone(),
            ..Default::default()
        });
        let (evict, evicted) = oneshot::channel();
        let entry = Entry {
            opened: Instant::now(),
            state: state.clone(),
            evict,
        };
        self.lock().insert(id, entry);
        let reg = Registered {
            conns: self.clone(),
            id,
        };
        (reg, state, evicted)
    }

    /// Close the `victim`, if there is one.
    fn evict_one(&self) -> Option<Candidate> {
        let mut open = self.lock();
        let v = victim(open.iter().map(|(id, e)| Candidate {
            id: *id,
            opened: e.opened,
            sent: e.state.sent.load(Ordering::Relaxed),
            in_flight: e.state.in_flight.load(Ordering::Relaxed),
        }))?;
        if let Some(e) = open.remove(&v.id) {
            let _ = e.evict.send(());
        }
        Some(v)
    }
}

/// At most one warning of each kind per 10 s however hard the listener is hit.
#[derive(Default)]
struct Warnings {
    last: Vec<(&'static str, Instant)>,
}

impl Warnings {
    fn warn(&mut self, kind: &'static str, what: impl FnOnce() -> String) {
        let now = Instant::now();
        match self.last.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, t)) if now - *t <= Duration::from_secs(10) => return,
            Some((_, t)) => *t = now,
            None => self.last.push((kind, now)),
        }
        tracing::warn!("status endpoint: {}", what());
    }
}

async fn serve(listener: AsyncFd<Bound>, api: Api) {
    // nothing true to show before the loop's first snapshot (it comes within milliseconds of
    // the start): until then connections wait in the backlog
    let _ = api.snap.clone().changed().await;
    let tls = api.tls.clone();
    let app = server::router(api);
    let conns = Arc::new(Conns::default());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut warnings = Warnings::default();
    loop {
        let permit = match listener.readable().await {
            Err(e) => {
                warnings.warn("poll", || {
                    format!("cannot poll the listener: {e}; retrying in 100ms")
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(mut ready) => match slots.clone().try_acquire_owned() {
                Ok(permit) => permit,
                // at the cap, make room only for a connection that really waits: the readiness
                // tokio keeps may be stale (it is cleared only when an accept would block)
                Err(_) if !waiting(ready.get_inner()) => {
                    ready.clear_ready();
                    continue;
                }
                Err(_) => {
                    drop(ready);
                    room(&slots, &conns, &mut warnings).await
                }
            },
        };
        let stream = match accept(&listener).await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and the like: do not spin on a listener that cannot accept
                warnings.warn("accept", || {
                    format!("cannot accept a connection: {e}; retrying in 100ms")
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registered, state, evicted) = conns.register();
        let svc = WithConn {
            inner: hyper_util::service::TowerToHyperService::new(app.clone()),
            state: state.clone(),
        };
        let tls = tls.borrow().clone();
        tokio::spawn(async move {
            let _slot = (permit, registered);
            let first_byte = async {
                tokio::time::sleep(FIRST_BYTE_TIMEOUT).await;
                if state.sent.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await
                }
            };
            // a streaming response is not cut at the lifetime: it ends itself (or is closed)
            let lifetime = async {
                tokio::time::sleep(CONNECTION_LIFETIME).await;
                while state.streaming.load(Ordering::Relaxed) > 0 {
                    tokio::time::sleep(CONNECTION_LIFETIME).await;
                }
            };
            // whichever comes first ends the connection (dropping it closes the socket)
            tokio::select! {
                _ = connection(stream, tls, svc, &state) => {}
                _ = lifetime => {}
                _ = evicted => {}
                _ = first_byte => {}
                _ = state.close.notified() => {}
            }
        });
        // let the new connection read what it was sent before the next is accepted, so that at
        // the cap "never sent a byte" means that, not "not read yet"
        tokio::task::yield_now().await;
    }
}

/// Whether a connection waits in the listener's backlog now (poll(2), no waiting).
fn waiting(listener: &Bound) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let fd = std::os::fd::AsFd::as_fd(listener);
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    // on an error, assume one does: at worst an idle connection is closed early
    poll(&mut fds, PollTimeout::ZERO).map_or(true, |n| n > 0)
}

/// A free slot: at once if there is one; else by closing an evictable connection; else once a
/// connection ends, or a request ends and leaves one evictable.
async fn room(
    slots: &Arc<Semaphore>,
    conns: &Conns,
    warnings: &mut Warnings,
) -> OwnedSemaphorePermit {
    loop {
        if let Ok(p) = slots.clone().try_acquire_owned() {
            return p;
        }
        if let Some(v) = conns.evict_one() {
            warnings.warn("evict", || {
                let which = if v.sent { "idle" } else { "silent" };
                format!("{MAX_CONNECTIONS} connections open; closing the oldest {which} one for each new connection")
            });
            // the evicted connection's task gives its slot back as soon as it runs
            if let Ok(p) = slots.clone().acquire_owned().await {
                return p;
            }
            continue;
        }
        warnings.warn("full", || format!("all {MAX_CONNECTIONS} connections are in a request; new connections wait in the kernel's backlog until one ends"));
        let request_ended = conns.idle.notified();
        tokio::select! {
            p = slots.clone().acquire_owned() => if let Ok(p) = p { return p },
            _ = request_ended => {}
        }
    }
}

/// An accepted connection, not yet registered with the runtime.
enum Accepted {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

async fn accept(listener: &AsyncFd<Bound>) -> io::Result<Accepted> {
    loop {
        let mut ready = listener.readable().await?;
        let got = ready.try_io(|l| match l.get_ref() {
            Bound::Tcp(l) => l.accept().map(|(s, _)| Accepted::Tcp(s)),
            Bound::Unix(l) => l.accept().map(|(s, _)| Accepted::Unix(s)),
        });
        match got {
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Serve one connection: the TLS handshake if configured, then HTTP/1.1 until the client or
/// hyper ends it.
async fn connection(
    stream: Accepted,
    tls: Option<crate::api::tls::ServerConfig>,
    svc: WithConn,
    state: &Arc<ConnState>,
) {
    let tracked = |s| Tracked {
        inner: s,
        state: state.clone(),
    };
    match stream {
        Accepted::Tcp(s) => {
            let Ok(s) = s
                .set_nonblocking(true)
                .and_then(|_| tokio::net::TcpStream::from_std(s))
            else {
                return;
            };
            match tls {
                Some(cfg) => {
                    // the handshake gets the same deadline as a request's headers
                    let accept = crate::api::tls::accept(cfg, tracked(s));
                    if let Ok(Some(s)) = tokio::time::timeout(HEADER_TIMEOUT, accept).await {
                        http(s, svc).await
                    }
                }
                None => http(tracked(s), svc).await,
            }
        }
        Accepted::Unix(s) => {
            let Ok(s) = s
                .set_nonblocking(true)
                .and_then(|_| tokio::net::UnixStream::from_std(s))
            else {
                return;
            };
            http(
                Tracked {
                    inner: s,
                    state: state.clone(),
                },
                svc,
            )
            .await
        }
    }
}

async fn http<S>(s: S, svc: WithConn)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_BUF);
    // errors (a malformed request, a reset) end this connection only
    let _ = b
        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
        .await;
}

/// The router's service, handing each request its connection's state (for `received`).
#[derive(Clone)]
struct WithConn {
    inner: hyper_util::service::TowerToHyperService<Router>,
    state: Arc<ConnState>,
}

/// The connection a request came on, as a request extension.
#[derive(Clone)]
struct OnConn(Arc<ConnState>);

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for WithConn {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Self::Error>> + Send>>;

    fn call(&self, mut req: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(OnConn(self.state.clone()));
        Box::pin(self.inner.call(req))
    }
}

mod requests;
pub use requests::{received, Closer, Streaming};

#[cfg(test)]
mod tests;
mod tracked;

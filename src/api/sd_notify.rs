//! sd_notify: tell systemd (Type=notify) when drover is ready, what it is doing, and that its
//! event loop is alive. A datagram to $NOTIFY_SOCKET (a path, or `@abstract`); nothing when
//! the variable is unset, so outside systemd this costs nothing.
//!
//! The watchdog ping is sent from the supervisor loop's own timer, so it stops exactly when the
//! loop stops turning — which is what `WatchdogSec=` is for.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

pub struct Notifier {
    sock: UnixDatagram,
    addr: std::os::unix::net::SocketAddr,
    /// half of WATCHDOG_USEC, when the watchdog is on for this process
    pub watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment; `None` when drover was not started with NOTIFY_SOCKET.
    /// The variables are removed so no worker inherits them.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var("NOTIFY_SOCKET")
            .ok()
            .filter(|p| !p.is_empty())?;
        let me = std::process::id() as i32;
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|_| {
                std::env::var("WATCHDOG_PID")
                    .ok()
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_none_or(|p| p == me)
            })
            .map(|us| Duration::from_micros(us / 2));
        let addr = if let Some(abs) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(abs.as_bytes()).ok()?
        } else {
            std::os::unix::net::SocketAddr::from_pathname(&path).ok()?
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier {
            sock,
            addr,
            watchdog,
        })
    }

    pub fn send(&self, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            tracing::warn!("sd_notify {:?}: {e}", msg.lines().next().unwrap_or(""));
        }
    }

    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    /// RELOADING=1 with the monotonic timestamp systemd 253+ expects.
    pub fn reloading(&self) {
        let usec = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|ts| ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000)
            .unwrap_or(0);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }
}

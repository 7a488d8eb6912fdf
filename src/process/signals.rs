//! Signals -> events. tokio's handlers only record the signal; the supervisor loop acts on it.

use tokio::signal::unix::{signal, Signal, SignalKind};

pub struct Signals {
    streams: Vec<(i32, Signal)>,
}

/// The signals drover handles itself (SIGCHLD belongs to the reaper).
pub const HANDLED: &[i32] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        let mut streams = Vec::new();
        for &s in HANDLED {
            streams.push((s, signal(SignalKind::from_raw(s))?));
        }
        Ok(Signals { streams })
    }

    /// The next signal received. Cancel-safe.
    pub async fn recv(&mut self) -> i32 {
        std::future::poll_fn(|cx| {
            for (sig, st) in self.streams.iter_mut() {
                if let std::task::Poll::Ready(Some(())) = st.poll_recv(cx) {
                    return std::task::Poll::Ready(*sig);
                }
            }
            std::task::Poll::Pending
        })
        .await
    }
}

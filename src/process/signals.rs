//! Signals -> events. tokio's handlers only record the signal; the supervisor loop acts on it.

use nix::sys::signal::Signal;
use tokio::signal::unix::{signal, SignalKind};

pub struct Signals {
    streams: Vec<(Signal, tokio::signal::unix::Signal)>,
}

/// The signals drover handles itself (SIGCHLD belongs to the reaper).
pub const HANDLED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

impl Signals {
    pub fn new() -> std::io::Result<Signals> {
        let mut streams = Vec::new();
        for &s in HANDLED {
            streams.push((s, signal(SignalKind::from_raw(s as i32))?));
        }
        Ok(Signals { streams })
    }

    /// The next signal received. Cancel-safe.
    pub async fn recv(&mut self) -> Signal {
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

/// `TERM`, `KILL`: the name without `SIG`, as status, logs and configuration spell it.
pub fn name(sig: Signal) -> &'static str {
    let s = sig.as_str();
    s.strip_prefix("SIG").unwrap_or(s)
}

/// A signal drover may send as a program's stop signal: `TERM`, `SIGTERM`, `term`.
pub fn parse(s: &str) -> Option<Signal> {
    let up = s.trim().to_ascii_uppercase();
    let full = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    let sig: Signal = full.parse().ok()?;
    STOP_SIGNALS.contains(&sig).then_some(sig)
}

/// What `stop_signal` accepts.
pub const STOP_SIGNALS: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGHUP,
    Signal::SIGKILL,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGABRT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_parsing() {
        assert_eq!(name(Signal::SIGKILL), "KILL");
        assert_eq!(parse("term"), Some(Signal::SIGTERM));
        assert_eq!(parse("SIGUSR2"), Some(Signal::SIGUSR2));
        assert_eq!(parse("CHLD"), None, "not a stop signal");
        assert_eq!(parse("BANANA"), None);
    }
}

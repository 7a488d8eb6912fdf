//! The only caller of `waitpid` in drover.
//!
//! SIGCHLD wakes it; it drains `waitpid(-1, WNOHANG)` until nothing is left, so one signal that
//! stands for many exits loses none. The handler is installed before the first fork and tokio's
//! handler only sets a flag and writes to a pipe, so no SIGCHLD is lost and no periodic tick is
//! needed: an idle drover sleeps in epoll_wait without a timeout (0 CPU ticks). Orphans
//! re-parented to drover (as PID 1 or as a subreaper) are reaped here as well; the supervisor
//! ignores pids it does not know.

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(Signal),
    /// killed by a signal without a name (a realtime signal)
    OtherSignal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Shell convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s as i32,
            ExitStatus::OtherSignal(n) => 128 + n,
        }
    }

    /// `{"code": 1}` or `{"signal": "KILL"}`, as `/status` shows it.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            ExitStatus::Code(c) => serde_json::json!({ "code": c }),
            ExitStatus::Signal(s) => serde_json::json!({ "signal": super::signals::name(s) }),
            ExitStatus::OtherSignal(n) => serde_json::json!({ "signal": format!("SIG{n}") }),
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {}", super::signals::name(*s)),
            ExitStatus::OtherSignal(n) => write!(f, "signal {n}"),
        }
    }
}

pub struct Reaper {
    sigchld: tokio::signal::unix::Signal,
}

impl Reaper {
    /// Must be created before the first child is forked.
    pub fn new() -> std::io::Result<Reaper> {
        let sigchld = signal(SignalKind::child())?;
        Ok(Reaper { sigchld })
    }

    /// Wait for SIGCHLD, then reap everything that has exited.
    /// Cancel-safe: nothing is reaped until the wake-up has happened.
    pub async fn next(&mut self) -> Vec<(Pid, ExitStatus)> {
        if self.sigchld.recv().await.is_none() {
            // the signal driver is gone (runtime shutting down): never wake again
            std::future::pending::<()>().await;
        }
        drain()
    }
}

/// Reap every child that has exited, without blocking.
///
/// Raw `waitpid`, not nix's: nix converts the status after the child is reaped, and a death by a
/// realtime signal (which its `Signal` cannot name) comes back as EINVAL with the pid lost, so
/// that worker would never be seen to exit.
pub fn drain() -> Vec<(Pid, ExitStatus)> {
    let mut out = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            out.push((Pid::from_raw(pid), decode(status)));
            continue;
        }
        if pid < 0 && nix::errno::Errno::last() == nix::errno::Errno::EINTR {
            continue;
        }
        break; // 0: children remain but none exited; -1/ECHILD: no children
    }
    out
}

pub fn decode(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        let n = libc::WTERMSIG(status);
        Signal::try_from(n)
            .map(ExitStatus::Signal)
            .unwrap_or(ExitStatus::OtherSignal(n))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_decode_and_read() {
        // wait(2) encodings: exit code in the second byte, signal in the low 7 bits
        assert_eq!(decode(3 << 8), ExitStatus::Code(3));
        assert_eq!(decode(9), ExitStatus::Signal(Signal::SIGKILL));
        assert_eq!(decode(34), ExitStatus::OtherSignal(34));
        assert_eq!(ExitStatus::Signal(Signal::SIGKILL).shell_code(), 137);
        assert_eq!(ExitStatus::OtherSignal(34).shell_code(), 162);
        assert_eq!(
            ExitStatus::Signal(Signal::SIGTERM).to_string(),
            "signal TERM"
        );
        assert_eq!(
            ExitStatus::Signal(Signal::SIGKILL).to_json(),
            serde_json::json!({"signal": "KILL"})
        );
    }
}

//! The only caller of `waitpid` in drover.
//!
//! SIGCHLD wakes it; it drains `waitpid(-1, WNOHANG)` until nothing is left, so one signal that
//! stands for many exits loses none. The handler is installed before the first fork and tokio's
//! handler only sets a flag and writes to a pipe, so no SIGCHLD is lost and no periodic tick is
//! needed: an idle drover sleeps in epoll_wait without a timeout (0 CPU ticks). Orphans
//! re-parented to drover (as PID 1 or as a subreaper) are reaped here as well; the supervisor
//! ignores pids it does not know.

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::state::ExitStatus;

pub struct Reaper {
    sigchld: Signal,
}

impl Reaper {
    /// Must be created before the first child is forked.
    pub fn new() -> std::io::Result<Reaper> {
        let sigchld = signal(SignalKind::child())?;
        Ok(Reaper { sigchld })
    }

    /// Wait for SIGCHLD, then reap everything that has exited.
    /// Cancel-safe: nothing is reaped until the wake-up has happened.
    pub async fn next(&mut self) -> Vec<(libc::pid_t, ExitStatus)> {
        if self.sigchld.recv().await.is_none() {
            // the signal driver is gone (runtime shutting down): never wake again
            std::future::pending::<()>().await;
        }
        drain()
    }
}

/// Reap every child that has exited, without blocking.
pub fn drain() -> Vec<(libc::pid_t, ExitStatus)> {
    let mut out = Vec::new();
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes the status into a local; WNOHANG never blocks.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            out.push((pid, decode(status)));
            continue;
        }
        if pid < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break; // 0: children remain but none exited; -1/ECHILD: no children
    }
    out
}

pub fn decode(status: libc::c_int) -> ExitStatus {
    if libc::WIFSIGNALED(status) {
        ExitStatus::Signal(libc::WTERMSIG(status))
    } else {
        ExitStatus::Code(libc::WEXITSTATUS(status))
    }
}

//! The only caller of `waitpid` in drover.
//!
//! SIGCHLD wakes it; it drains `waitpid(-1, WNOHANG)` until nothing is left, so one signal that
//! stands for many exits loses none. A slow safety-net tick drains too, in case a signal was
//! coalesced away before the handler was installed. Orphans re-parented to drover (as PID 1 or
//! as a subreaper) are reaped here as well; the supervisor ignores pids it does not know.

use std::time::Duration;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::state::ExitStatus;

pub const SAFETY_TICK: Duration = Duration::from_secs(10);

pub struct Reaper {
    sigchld: Signal,
    tick: tokio::time::Interval,
}

impl Reaper {
    /// Must be created before the first child is forked.
    pub fn new() -> std::io::Result<Reaper> {
        let sigchld = signal(SignalKind::child())?;
        let mut tick = tokio::time::interval(SAFETY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Reaper { sigchld, tick })
    }

    /// Wait for SIGCHLD (or the safety tick), then reap everything that has exited.
    /// Cancel-safe: nothing is reaped until the wake-up has happened.
    pub async fn next(&mut self) -> Vec<(libc::pid_t, ExitStatus)> {
        tokio::select! {
            _ = self.sigchld.recv() => {}
            _ = self.tick.tick() => {}
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

//! What a slot answers: the actions for the loop to carry out, what happens after an exit, and
//! the reasons (why drover stopped or killed a worker, how its previous process ended) that
//! `/status`, the log and the metrics show.

use std::time::Duration;

use nix::sys::signal::Signal;

use super::ExitStatus;

/// Why drover stopped a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StopReason {
    Shutdown,
    Scale,
    /// manual rolling restart
    Restart,
    Reload,
    /// health checks failed or the worker hung
    Health,
    /// never became ready within the start timeout
    StartTimeout,
    /// stopped through the control API
    Stop,
    /// above its soft memory budget: replaced gracefully
    Memory,
    /// older than its program's max_lifetime: replaced gracefully
    Lifetime,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Shutdown => "shutdown",
            StopReason::Scale => "scale",
            StopReason::Restart => "restart",
            StopReason::Reload => "reload",
            StopReason::Health => "health",
            StopReason::StartTimeout => "start-timeout",
            StopReason::Stop => "stop",
            StopReason::Memory => "memory",
            StopReason::Lifetime => "lifetime",
        }
    }

    /// A stop that replaces the worker through the rolling path: its replacement carries the
    /// old worker's `last_exit`.
    pub fn is_roll(self) -> bool {
        matches!(
            self,
            StopReason::Restart | StopReason::Reload | StopReason::Memory | StopReason::Lifetime
        )
    }
}

/// Why a worker was killed for its memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillCause {
    /// the kernel's OOM killer, inside the worker's memory cgroup (above memory_hard)
    Oom,
    /// drover, sampling: above memory_hard where no cgroup enforces it
    MemoryHard,
}

impl KillCause {
    pub fn as_str(self) -> &'static str {
        match self {
            KillCause::Oom => "oom",
            KillCause::MemoryHard => "memory",
        }
    }
}

/// Why the previous process of a slot is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastExit {
    Exited(ExitStatus),
    /// fork/exec never produced a running program
    SpawnFailed(String),
    /// drover stopped it
    Stopped(ExitStatus, StopReason),
    /// killed for its memory
    Killed(ExitStatus, KillCause),
    /// stopped for this reason, but still not reaped `UNREAPED_AFTER` after its SIGKILL
    /// (uninterruptible sleep, or held by a tracer): drover stopped waiting for it
    Unreaped(StopReason),
}

impl LastExit {
    /// What `/status` shows: `{"code": 1}`, `{"signal": "KILL", "reason": "memory"}` …
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            LastExit::SpawnFailed(err) => serde_json::json!({"reason": "spawn", "error": err}),
            LastExit::Exited(st) => st.to_json(),
            LastExit::Stopped(st, reason) => {
                let mut v = st.to_json();
                v["reason"] = reason.as_str().into();
                v
            }
            LastExit::Killed(st, why) => {
                let mut v = st.to_json();
                v["reason"] = why.as_str().into();
                v
            }
            LastExit::Unreaped(reason) => {
                serde_json::json!({"reason": reason.as_str(), "unreaped": true})
            }
        }
    }
}

impl std::fmt::Display for LastExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LastExit::SpawnFailed(err) => write!(f, "spawn failed: {err}"),
            LastExit::Exited(st) => write!(f, "{st}"),
            LastExit::Stopped(st, r) => write!(f, "{st} (stopped: {})", r.as_str()),
            LastExit::Killed(st, why) => write!(f, "{st} ({})", why.as_str()),
            LastExit::Unreaped(r) => write!(
                f,
                "not reaped after SIGKILL (stopped: {}); drover stopped waiting for it",
                r.as_str()
            ),
        }
    }
}

/// Why a signal goes to a worker's group, so the loop can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// the stop signal, for this reason
    Stop(StopReason),
    /// the stop timeout passed: SIGKILL
    StopTimedOut,
    /// killed for its memory
    Kill(KillCause),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// send a signal to the process group led by `pid`
    Signal {
        pid: i32,
        signal: Signal,
        why: Why,
    },
    /// the slot is finished and can be dropped
    Remove,
    /// the slot stops waiting for `pid`, which did not exit after its SIGKILL: drover forgets it
    /// as the slot's process (and still reaps it, if it ever ends)
    Abandon {
        pid: i32,
    },
}

/// What happens after an exit, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// drover had stopped it
    Stopped(StopReason),
    /// up long enough to count as stable: restarted at once
    RestartNow,
    /// a quick failure: restarted after a backoff
    RestartIn { delay: Duration, failures: u32 },
    /// the restart policy says no
    NotRestarting,
    /// not a process of this slot (already handled)
    Ignored,
}

/// The outcome of an exit: what to do, what to say, and which restart to count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    pub actions: Vec<Action>,
    pub next: Next,
    /// `drover_restarts_total{reason}`, when this exit is a restart (or a kill) to count
    pub counted: Option<&'static str>,
}

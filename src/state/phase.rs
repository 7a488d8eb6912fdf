//! A slot's phases, with the data each carries, and `TRANSITIONS`: which phase may follow which
//! (`Slot::enter` holds every change to it).

use std::time::Instant;

use super::{AfterStop, StopReason};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// not yet spawned (a new slot)
    Idle,
    /// spawned, not yet ready; recycled at `ready_by`
    Starting {
        pid: i32,
        since: Instant,
        ready_by: Instant,
    },
    /// passed its readiness check
    Running { pid: i32, since: Instant },
    /// stop signal sent; KILL at `kill_at`
    Stopping {
        pid: i32,
        since: Instant,
        kill_at: Instant,
        killed: bool,
        then: AfterStop,
        reason: StopReason,
    },
    /// waiting to respawn
    Backoff { until: Instant },
    /// nothing to start its process from yet (its program's preloader is loading, or has been
    /// asked to fork it): spawned when the loop can, or at `until`. `again`: the slot has
    /// started (or tried to start) a process before, so the next one is a restart
    Waiting { until: Instant, again: bool },
    /// exited and will not be restarted (policy), or removed
    Done { failed: bool },
}

/// A phase without its data, for the transition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    Idle,
    Starting,
    Running,
    Stopping,
    Backoff,
    Waiting,
    Done,
}

impl Phase {
    pub fn kind(&self) -> PhaseKind {
        match self {
            Phase::Idle => PhaseKind::Idle,
            Phase::Starting { .. } => PhaseKind::Starting,
            Phase::Running { .. } => PhaseKind::Running,
            Phase::Stopping { .. } => PhaseKind::Stopping,
            Phase::Backoff { .. } => PhaseKind::Backoff,
            Phase::Waiting { .. } => PhaseKind::Waiting,
            Phase::Done { .. } => PhaseKind::Done,
        }
    }
}

/// Every phase change a slot may make; `enter` refuses any other (a panic in tests and debug
/// builds: a bug in this file, never an input).
pub const TRANSITIONS: &[(PhaseKind, &[PhaseKind])] = {
    use PhaseKind::*;
    &[
        // spawned; spawn failed; nothing to start it from yet; removed before it ever ran
        (Idle, &[Starting, Backoff, Waiting, Done]),
        // ready; stopped or start timeout; exited (restart or not)
        (Starting, &[Running, Stopping, Backoff, Done]),
        // stopped; exited (restart or not)
        (Running, &[Stopping, Backoff, Done]),
        // a second stop or the KILL; reaped (respawn or removal)
        (Stopping, &[Stopping, Backoff, Done]),
        // respawned; spawn failed again; nothing to start it from yet; removed while waiting
        (Backoff, &[Starting, Backoff, Waiting, Done]),
        // spawned; spawn failed; still nothing to start it from; removed while waiting
        (Waiting, &[Starting, Backoff, Waiting, Done]),
        // a finished job run again (`ctl restart`, a reload that changed its settings)
        (Done, &[Backoff]),
    ]
};

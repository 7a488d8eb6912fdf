//! The worker slot state machine: pure, no I/O, driven with explicit instants.
//!
//! A *slot* is one replica position (`api.0`, `api.1`, …); it outlives the processes that fill
//! it. The supervisor feeds it events (`spawned`, `exited`, a timer, a stop or kill request) and
//! executes the `Action`s it returns; it never writes a slot's fields. Phases carry their data,
//! so "running without a pid" cannot be said, and every change of phase goes through `enter`,
//! which holds it to `TRANSITIONS`.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{BackoffCfg, RestartPolicy};
pub use crate::process::reaper::ExitStatus;
pub use outcome::{Action, Exit, KillCause, LastExit, Next, StopReason, Why};

mod outcome;
mod phase;
pub use phase::{Phase, PhaseKind, TRANSITIONS};

/// A process that has not been reaped this long after its SIGKILL is given up on (it is in
/// uninterruptible sleep, or a tracer holds it): the slot goes on without it.
pub const UNREAPED_AFTER: Duration = Duration::from_secs(5);

/// What the state machine needs from the program's configuration.
#[derive(Debug, Clone, Copy)]
pub struct SlotCfg {
    pub policy: RestartPolicy,
    pub backoff: BackoffCfg,
    pub stop_signal: Signal,
    pub stop_timeout: Duration,
    /// not ready this long after spawn: recycled
    pub start_timeout: Duration,
}

/// What the slot should do once its process has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// start a new process right away (a restart)
    Respawn,
    /// the slot goes away (shutdown, scale-down)
    Remove,
}

#[derive(Debug, Clone)]
pub struct Slot {
    id: u64,
    index: u32,
    phase: Phase,
    /// processes started (or tried) in this slot after the first
    restarts: u32,
    /// consecutive failures that came before `reset_after` of uptime
    failures: u32,
    last_exit: Option<LastExit>,
    /// the delay chosen for the pending respawn, for logging
    last_delay: Duration,
    /// drover killed the running process for its memory: its exit is reported so
    kill: Option<KillCause>,
}

/// Exponential backoff: `initial * 2^(failures-1)`, jittered by ±25 %, capped at `max`.
/// `failures == 0` means the process had been stable: restart at once.
pub fn backoff_delay(cfg: &BackoffCfg, failures: u32, jitter01: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = 2f64.powi(failures.saturating_sub(1).min(30) as i32);
    let base = (cfg.initial.as_secs_f64() * exp).min(cfg.max.as_secs_f64());
    let jittered = base * (0.75 + 0.5 * jitter01.clamp(0.0, 1.0));
    Duration::from_secs_f64(jittered.min(cfg.max.as_secs_f64()))
}

impl Slot {
    pub fn new(id: u64, index: u32) -> Slot {
        Slot {
            id,
            index,
            phase: Phase::Idle,
            restarts: 0,
            failures: 0,
            last_exit: None,
            last_delay: Duration::ZERO,
            kill: None,
        }
    }

    /// A rolling replacement for `old`: the same index, its restart count carried on (the new
    /// process counts as one more restart of the position).
    pub fn replacing(id: u64, old: &Slot) -> Slot {
        Slot {
            restarts: old.restarts + 1,
            ..Slot::new(id, old.index)
        }
    }

    /// Unique for drover's life: a rolling replacement shares the index, not the id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The replica position users see (`api.0`) and DROVER_WORKER.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn last_exit(&self) -> Option<&LastExit> {
        self.last_exit.as_ref()
    }

    pub fn last_delay(&self) -> Duration {
        self.last_delay
    }

    fn enter(&mut self, to: Phase) {
        let (from, next) = (self.phase.kind(), to.kind());
        debug_assert!(
            TRANSITIONS
                .iter()
                .any(|(f, tos)| *f == from && tos.contains(&next)),
            "slot {} may not go from {from:?} to {next:?}",
            self.id
        );
        self.phase = to;
    }

    pub fn pid(&self) -> Option<i32> {
        match self.phase {
            Phase::Starting { pid, .. }
            | Phase::Running { pid, .. }
            | Phase::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The name shown in `/status`.
    pub fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Idle | Phase::Starting { .. } => "starting",
            Phase::Running { .. } => "running",
            Phase::Stopping { .. } => "stopping",
            Phase::Backoff { .. } => "backoff",
            Phase::Waiting { .. } => "waiting-for-preloader",
            Phase::Done { failed: true } => "failed",
            Phase::Done { failed: false } => "stopped",
        }
    }

    pub fn since(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { since, .. }
            | Phase::Running { since, .. }
            | Phase::Stopping { since, .. } => Some(since),
            _ => None,
        }
    }

    /// Whether a process started now would be a restart: the slot has started (or tried to
    /// start) one before. A fresh slot's first process is not, however long it waited for it.
    fn again(&self) -> bool {
        match self.phase {
            Phase::Idle => false,
            Phase::Waiting { again, .. } => again,
            _ => true,
        }
    }

    pub fn spawned(&mut self, pid: i32, now: Instant, cfg: &SlotCfg) {
        if self.again() {
            self.restarts += 1;
        }
        self.kill = None;
        self.enter(Phase::Starting {
            pid,
            since: now,
            ready_by: now + cfg.start_timeout,
        });
    }

    /// The readiness check passed. Returns the spawn-to-ready time.
    pub fn ready(&mut self, now: Instant) -> Option<Duration> {
        if let Phase::Starting { pid, since, .. } = self.phase {
            self.enter(Phase::Running { pid, since });
            return Some(now.duration_since(since));
        }
        None
    }

    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Running { .. })
    }

    /// Being stopped for good (shutdown, scale-down, a finished roll): no longer counts.
    pub fn is_leaving(&self) -> bool {
        matches!(
            self.phase,
            Phase::Stopping {
                then: AfterStop::Remove,
                ..
            }
        )
    }

    /// fork/exec failed: count it as a failure and back off.
    pub fn spawn_failed(&mut self, why: String, now: Instant, cfg: &BackoffCfg, jitter: f64) {
        if self.again() {
            self.restarts += 1;
        }
        self.failures += 1;
        self.last_exit = Some(LastExit::SpawnFailed(why));
        self.last_delay = backoff_delay(cfg, self.failures, jitter);
        self.enter(Phase::Backoff {
            until: now + self.last_delay,
        });
    }

    /// Nothing to start it from yet (its program's preloader is loading, or has been asked to
    /// fork it): wait until `until`, or until the loop spawns it sooner, without counting a
    /// failure or, for a fresh slot, a restart.
    pub fn postpone(&mut self, until: Instant) {
        if matches!(
            self.phase,
            Phase::Idle | Phase::Backoff { .. } | Phase::Waiting { .. }
        ) {
            let again = self.again();
            self.enter(Phase::Waiting { until, again });
        }
    }

    /// The worker this slot replaced in a roll has exited: its history is this slot's.
    pub fn inherit(&mut self, last: LastExit) {
        self.last_exit = Some(last);
    }

    /// The slot's process was reaped. `oom`: the kernel OOM-killed something in its cgroup
    /// since it started.
    pub fn exited(
        &mut self,
        status: ExitStatus,
        oom: bool,
        now: Instant,
        c: &SlotCfg,
        jitter: f64,
    ) -> Exit {
        let killed = if oom {
            Some(KillCause::Oom)
        } else {
            self.kill.take()
        };
        match self.phase.clone() {
            Phase::Stopping {
                since,
                then,
                reason,
                ..
            } => {
                self.last_exit = Some(LastExit::Stopped(status, reason));
                let actions = match then {
                    AfterStop::Remove => {
                        self.enter(Phase::Done { failed: false });
                        vec![Action::Remove]
                    }
                    // a recycle (health, start timeout) counts like a crash for backoff
                    AfterStop::Respawn => self.backoff_or_spawn(since, now, &c.backoff, jitter),
                };
                let counted = (then == AfterStop::Respawn).then_some(reason.as_str());
                Exit {
                    actions,
                    next: Next::Stopped(reason),
                    counted,
                }
            }
            Phase::Starting { since, .. } | Phase::Running { since, .. } => {
                self.last_exit = Some(match killed {
                    Some(why) => LastExit::Killed(status, why),
                    None => LastExit::Exited(status),
                });
                let restart = match c.policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Never => false,
                };
                if !restart {
                    self.enter(Phase::Done {
                        failed: !status.success(),
                    });
                    return Exit {
                        actions: vec![],
                        next: Next::NotRestarting,
                        counted: killed.map(KillCause::as_str),
                    };
                }
                let actions = self.backoff_or_spawn(since, now, &c.backoff, jitter);
                let next = if self.last_delay.is_zero() {
                    Next::RestartNow
                } else {
                    Next::RestartIn {
                        delay: self.last_delay,
                        failures: self.failures,
                    }
                };
                Exit {
                    actions,
                    next,
                    counted: Some(killed.map_or("exit", KillCause::as_str)),
                }
            }
            // not ours to reap: ignore
            Phase::Idle | Phase::Backoff { .. } | Phase::Waiting { .. } | Phase::Done { .. } => {
                Exit {
                    actions: vec![],
                    next: Next::Ignored,
                    counted: None,
                }
            }
        }
    }

    fn backoff_or_spawn(
        &mut self,
        since: Instant,
        now: Instant,
        cfg: &BackoffCfg,
        jitter: f64,
    ) -> Vec<Action> {
        if now.duration_since(since) >= cfg.reset_after {
            self.failures = 0;
        } else {
            self.failures += 1;
        }
        self.last_delay = backoff_delay(cfg, self.failures, jitter);
        if self.last_delay.is_zero() {
            self.enter(Phase::Backoff { until: now });
            vec![Action::Spawn]
        } else {
            self.enter(Phase::Backoff {
                until: now + self.last_delay,
            });
            vec![]
        }
    }

    /// Ask the slot's process to stop: `signal` to its group now, KILL after `timeout`.
    pub fn stop(
        &mut self,
        now: Instant,
        signal: Signal,
        timeout: Duration,
        then: AfterStop,
        reason: StopReason,
    ) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Starting { pid, since, .. } | Phase::Running { pid, since } => {
                self.enter(Phase::Stopping {
                    pid,
                    since,
                    kill_at: now + timeout,
                    // a stop by SIGKILL (a fast shutdown) is the kill itself: no "did not stop
                    // in time" follows it
                    killed: signal == Signal::SIGKILL,
                    then,
                    reason,
                });
                vec![Action::Signal {
                    pid,
                    signal,
                    why: Why::Stop(reason),
                }]
            }
            Phase::Stopping {
                then: old,
                pid,
                since,
                kill_at,
                killed,
                reason: old_reason,
            } => {
                // a removal wins over a respawn; a fast stop brings the KILL forward
                let (then, reason) = if old == AfterStop::Remove {
                    (old, old_reason)
                } else {
                    (then, reason)
                };
                let kill_now = signal == Signal::SIGKILL && !killed;
                self.enter(Phase::Stopping {
                    pid,
                    since,
                    kill_at: kill_at.min(now + timeout),
                    killed: killed || kill_now,
                    then,
                    reason,
                });
                if kill_now {
                    vec![Action::Signal {
                        pid,
                        signal,
                        why: Why::Stop(reason),
                    }]
                } else {
                    vec![]
                }
            }
            Phase::Idle | Phase::Backoff { .. } | Phase::Waiting { .. } => match then {
                AfterStop::Remove => {
                    self.enter(Phase::Done { failed: false });
                    vec![Action::Remove]
                }
                // no process has started in it yet: the one started now is its first
                AfterStop::Respawn if !self.again() => vec![Action::Spawn],
                AfterStop::Respawn => {
                    self.enter(Phase::Backoff { until: now });
                    vec![Action::Spawn]
                }
            },
            Phase::Done { .. } => match then {
                AfterStop::Remove => vec![Action::Remove],
                AfterStop::Respawn => vec![],
            },
        }
    }

    /// A roll reached a slot with nothing running to preserve: restart it in place, its
    /// failures forgiven (the restart was asked for, not earned).
    pub fn restart_in_place(
        &mut self,
        now: Instant,
        cfg: &SlotCfg,
        reason: StopReason,
    ) -> Vec<Action> {
        self.failures = 0;
        if let Phase::Done { .. } = self.phase {
            // a finished one-shot asked to run again (`ctl restart`, or a reload that changed
            // its settings): it runs once more, as supervisorctl's restart starts an exited one
            self.enter(Phase::Backoff { until: now });
            return vec![Action::Spawn];
        }
        self.stop(
            now,
            cfg.stop_signal,
            cfg.stop_timeout,
            AfterStop::Respawn,
            reason,
        )
    }

    /// Kill the running process for its memory, now. Its exit is then reported as `cause`, and
    /// the restart policy applies as to any exit.
    pub fn kill(&mut self, cause: KillCause) -> Vec<Action> {
        match self.phase {
            Phase::Starting { pid, .. } | Phase::Running { pid, .. } if self.kill.is_none() => {
                self.kill = Some(cause);
                vec![Action::Signal {
                    pid,
                    signal: Signal::SIGKILL,
                    why: Why::Kill(cause),
                }]
            }
            _ => vec![],
        }
    }

    /// Timers: start timeout → recycle, backoff → spawn, stop timeout → KILL.
    pub fn tick(&mut self, now: Instant, cfg: &SlotCfg) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Starting { ready_by, .. } if now >= ready_by => self.stop(
                now,
                cfg.stop_signal,
                cfg.stop_timeout,
                AfterStop::Respawn,
                StopReason::StartTimeout,
            ),
            Phase::Backoff { until } | Phase::Waiting { until, .. } if now >= until => {
                vec![Action::Spawn]
            }
            Phase::Stopping {
                pid,
                since,
                kill_at,
                killed: false,
                then,
                reason,
            } if now >= kill_at => {
                self.enter(Phase::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed: true,
                    then,
                    reason,
                });
                vec![Action::Signal {
                    pid,
                    signal: Signal::SIGKILL,
                    why: Why::StopTimedOut,
                }]
            }
            Phase::Stopping {
                pid,
                since,
                kill_at,
                killed: true,
                then,
                reason,
            } if now >= kill_at + UNREAPED_AFTER => {
                self.last_exit = Some(LastExit::Unreaped(reason));
                let mut acts = vec![Action::Abandon { pid }];
                match then {
                    AfterStop::Remove => {
                        self.enter(Phase::Done { failed: false });
                        acts.push(Action::Remove);
                    }
                    AfterStop::Respawn => {
                        acts.extend(self.backoff_or_spawn(since, now, &cfg.backoff, 0.5))
                    }
                }
                acts
            }
            _ => vec![],
        }
    }

    /// The next instant at which `tick` has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { ready_by, .. } => Some(ready_by),
            Phase::Backoff { until } | Phase::Waiting { until, .. } => Some(until),
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(kill_at),
            Phase::Stopping {
                kill_at,
                killed: true,
                ..
            } => Some(kill_at + UNREAPED_AFTER),
            _ => None,
        }
    }

    /// Crash-looping: this many consecutive quick failures and not running now.
    pub fn crash_looping(&self, threshold: u32) -> bool {
        self.failures >= threshold
            && matches!(self.phase, Phase::Backoff { .. } | Phase::Waiting { .. })
    }
}

#[cfg(test)]
mod tests;

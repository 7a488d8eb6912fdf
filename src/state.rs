//! The worker slot state machine: pure, no I/O, driven with explicit instants.
//!
//! A *slot* is one replica position (`api.0`, `api.1`, …); it outlives the processes that fill
//! it. The supervisor feeds it events (`spawned`, `exited`, a timer, a stop request) and executes
//! the `Action`s it returns. Phases carry their data, so "running without a pid" cannot be said.

use std::time::{Duration, Instant};

use crate::config::{BackoffCfg, RestartPolicy};

/// How a process ended, as `waitpid` reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
    /// Shell convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {}", crate::config::signal_name(*s)),
        }
    }
}

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
    /// killed for its memory: "oom" (the kernel, in its cgroup) or "memory" (drover, sampling)
    Killed(ExitStatus, &'static str),
}

/// What the state machine needs from the program's configuration.
#[derive(Debug, Clone, Copy)]
pub struct SlotCfg {
    pub policy: RestartPolicy,
    pub backoff: BackoffCfg,
    pub stop_signal: i32,
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
    /// exited and will not be restarted (policy), or removed
    Done { failed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn,
    /// send a signal to the process group led by `pid`
    SignalGroup {
        pid: i32,
        signal: i32,
    },
    /// the slot is finished and can be dropped
    Remove,
}

#[derive(Debug, Clone)]
pub struct Slot {
    /// unique for drover's life: a rolling replacement shares the index, not the id
    pub id: u64,
    /// the replica position users see (`api.0`) and DROVER_WORKER
    pub index: u32,
    pub phase: Phase,
    /// processes started in this slot after the first
    pub restarts: u32,
    /// consecutive failures that came before `reset_after` of uptime
    pub failures: u32,
    pub last_exit: Option<LastExit>,
    /// the delay chosen for the pending respawn, for logging
    pub last_delay: Duration,
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
        }
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

    pub fn spawned(&mut self, pid: i32, now: Instant, cfg: &SlotCfg) {
        if !matches!(self.phase, Phase::Idle) {
            self.restarts += 1;
        }
        self.phase = Phase::Starting {
            pid,
            since: now,
            ready_by: now + cfg.start_timeout,
        };
    }

    /// The readiness check passed. Returns the spawn-to-ready time.
    pub fn ready(&mut self, now: Instant) -> Option<Duration> {
        if let Phase::Starting { pid, since, .. } = self.phase {
            self.phase = Phase::Running { pid, since };
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
        if !matches!(self.phase, Phase::Idle) {
            self.restarts += 1;
        }
        self.failures += 1;
        self.last_exit = Some(LastExit::SpawnFailed(why));
        self.last_delay = backoff_delay(cfg, self.failures, jitter);
        self.phase = Phase::Backoff {
            until: now + self.last_delay,
        };
    }

    /// The slot's process was reaped.
    pub fn exited(
        &mut self,
        status: ExitStatus,
        now: Instant,
        c: &SlotCfg,
        jitter: f64,
    ) -> Vec<Action> {
        let cfg = &c.backoff;
        match self.phase.clone() {
            Phase::Stopping {
                since,
                then,
                reason,
                ..
            } => {
                self.last_exit = Some(LastExit::Stopped(status, reason));
                match then {
                    AfterStop::Remove => {
                        self.phase = Phase::Done { failed: false };
                        vec![Action::Remove]
                    }
                    // a recycle (health, start timeout) counts like a crash for backoff
                    AfterStop::Respawn => self.backoff_or_spawn(since, now, cfg, jitter),
                }
            }
            Phase::Starting { since, .. } | Phase::Running { since, .. } => {
                self.last_exit = Some(LastExit::Exited(status));
                let restart = match c.policy {
                    RestartPolicy::Always => true,
                    RestartPolicy::OnFailure => !status.success(),
                    RestartPolicy::Never => false,
                };
                if !restart {
                    self.phase = Phase::Done {
                        failed: !status.success(),
                    };
                    return vec![];
                }
                self.backoff_or_spawn(since, now, cfg, jitter)
            }
            // not ours to reap: ignore
            Phase::Idle | Phase::Backoff { .. } | Phase::Done { .. } => vec![],
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
            self.phase = Phase::Backoff { until: now };
            vec![Action::Spawn]
        } else {
            self.phase = Phase::Backoff {
                until: now + self.last_delay,
            };
            vec![]
        }
    }

    /// Ask the slot's process to stop: `signal` to its group now, KILL after `timeout`.
    pub fn stop(
        &mut self,
        now: Instant,
        signal: i32,
        timeout: Duration,
        then: AfterStop,
        reason: StopReason,
    ) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Starting { pid, since, .. } | Phase::Running { pid, since } => {
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at: now + timeout,
                    killed: false,
                    then,
                    reason,
                };
                vec![Action::SignalGroup { pid, signal }]
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
                let kill_at = kill_at.min(now + timeout);
                let kill_now = signal == libc::SIGKILL && !killed;
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed: killed || kill_now,
                    then,
                    reason,
                };
                if kill_now {
                    vec![Action::SignalGroup { pid, signal }]
                } else {
                    vec![]
                }
            }
            Phase::Idle | Phase::Backoff { .. } => match then {
                AfterStop::Remove => {
                    self.phase = Phase::Done { failed: false };
                    vec![Action::Remove]
                }
                AfterStop::Respawn => {
                    self.phase = Phase::Backoff { until: now };
                    vec![Action::Spawn]
                }
            },
            Phase::Done { .. } => match then {
                AfterStop::Remove => vec![Action::Remove],
                AfterStop::Respawn => vec![],
            },
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
            Phase::Backoff { until } if now >= until => vec![Action::Spawn],
            Phase::Stopping {
                pid,
                since,
                kill_at,
                killed: false,
                then,
                reason,
            } if now >= kill_at => {
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed: true,
                    then,
                    reason,
                };
                vec![Action::SignalGroup {
                    pid,
                    signal: libc::SIGKILL,
                }]
            }
            _ => vec![],
        }
    }

    /// The next instant at which `tick` has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Starting { ready_by, .. } => Some(ready_by),
            Phase::Backoff { until } => Some(until),
            Phase::Stopping {
                kill_at,
                killed: false,
                ..
            } => Some(kill_at),
            _ => None,
        }
    }

    /// Crash-looping: this many consecutive quick failures and not running now.
    pub fn crash_looping(&self, threshold: u32) -> bool {
        self.failures >= threshold && matches!(self.phase, Phase::Backoff { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SlotCfg {
        SlotCfg {
            policy: RestartPolicy::Always,
            backoff: BackoffCfg {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(30),
                reset_after: Duration::from_secs(10),
            },
            stop_signal: libc::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
        }
    }
    fn with(policy: RestartPolicy) -> SlotCfg {
        SlotCfg { policy, ..cfg() }
    }
    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn backoff_table() {
        let c = cfg().backoff;
        // (failures, jitter, expected ms)
        let cases = [
            (0, 0.5, 0),
            (1, 0.5, 100),
            (2, 0.5, 200),
            (3, 0.5, 400),
            (4, 0.0, 600),  // 800 * 0.75
            (4, 1.0, 1000), // 800 * 1.25
            (20, 0.5, 30_000),
            (20, 1.0, 30_000), // jitter never exceeds max
            (u32::MAX, 0.5, 30_000),
        ];
        for (f, j, ms) in cases {
            assert_eq!(
                backoff_delay(&c, f, j).as_millis() as u64,
                ms,
                "failures={f} jitter={j}"
            );
        }
    }

    #[test]
    fn ready_moves_starting_to_running_and_reports_latency() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 0);
        s.spawned(10, t0, &cfg());
        assert_eq!(s.state_name(), "starting");
        assert!(!s.is_ready());
        assert_eq!(
            s.ready(t0 + Duration::from_millis(250)),
            Some(Duration::from_millis(250))
        );
        assert_eq!(s.state_name(), "running");
        assert_eq!(s.ready(t0 + SEC), None, "ready once");
    }

    #[test]
    fn stable_worker_restarts_at_once() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 0);
        s.spawned(10, t0, &cfg());
        s.ready(t0 + SEC);
        let acts = s.exited(ExitStatus::Signal(9), t0 + 60 * SEC, &cfg(), 0.5);
        assert_eq!(acts, vec![Action::Spawn]);
        assert_eq!(s.failures, 0);
        assert_eq!(s.last_exit, Some(LastExit::Exited(ExitStatus::Signal(9))));
        s.spawned(11, t0 + 60 * SEC, &cfg());
        assert_eq!(s.restarts, 1);
    }

    #[test]
    fn crash_loop_backs_off_exponentially() {
        let mut now = Instant::now();
        let mut s = Slot::new(1, 0);
        let mut delays = vec![];
        for pid in 1..=6 {
            s.spawned(pid, now, &cfg());
            let acts = s.exited(
                ExitStatus::Code(1),
                now + Duration::from_millis(5),
                &cfg(),
                0.5,
            );
            assert_eq!(acts, vec![], "a quick failure never respawns synchronously");
            let Phase::Backoff { until } = s.phase else {
                panic!("{:?}", s.phase)
            };
            delays.push((until - now - Duration::from_millis(5)).as_millis() as u64);
            // nothing happens before the deadline, the spawn comes at it
            assert_eq!(s.tick(until - Duration::from_millis(1), &cfg()), vec![]);
            assert_eq!(s.tick(until, &cfg()), vec![Action::Spawn]);
            now = until;
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200]);
        assert!(s.crash_looping(5));
        assert_eq!(s.restarts, 5);
    }

    #[test]
    fn policy_decides_restart() {
        let t0 = Instant::now();
        let later = t0 + 60 * SEC;
        let cases = [
            (RestartPolicy::Always, ExitStatus::Code(0), true, "backoff"),
            (
                RestartPolicy::OnFailure,
                ExitStatus::Code(0),
                false,
                "stopped",
            ),
            (
                RestartPolicy::OnFailure,
                ExitStatus::Code(2),
                true,
                "backoff",
            ),
            (
                RestartPolicy::OnFailure,
                ExitStatus::Signal(9),
                true,
                "backoff",
            ),
            (RestartPolicy::Never, ExitStatus::Code(1), false, "failed"),
            (RestartPolicy::Never, ExitStatus::Code(0), false, "stopped"),
        ];
        for (policy, st, restarts, state) in cases {
            let mut s = Slot::new(1, 0);
            s.spawned(5, t0, &with(policy));
            let acts = s.exited(st, later, &with(policy), 0.5);
            assert_eq!(acts == vec![Action::Spawn], restarts, "{policy:?} {st:?}");
            assert_eq!(s.state_name(), state, "{policy:?} {st:?}");
        }
    }

    #[test]
    fn stop_escalates_to_kill_and_removes() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 1);
        s.spawned(42, t0, &cfg());
        let acts = s.stop(
            t0,
            libc::SIGTERM,
            5 * SEC,
            AfterStop::Remove,
            StopReason::Scale,
        );
        assert_eq!(
            acts,
            vec![Action::SignalGroup {
                pid: 42,
                signal: libc::SIGTERM
            }]
        );
        assert_eq!(s.deadline(), Some(t0 + 5 * SEC));
        assert_eq!(s.tick(t0 + 4 * SEC, &cfg()), vec![]);
        assert_eq!(
            s.tick(t0 + 5 * SEC, &cfg()),
            vec![Action::SignalGroup {
                pid: 42,
                signal: libc::SIGKILL
            }]
        );
        assert_eq!(s.tick(t0 + 6 * SEC, &cfg()), vec![], "KILL is sent once");
        assert_eq!(s.deadline(), None);
        let acts = s.exited(ExitStatus::Signal(9), t0 + 6 * SEC, &cfg(), 0.5);
        assert_eq!(acts, vec![Action::Remove]);
        assert_eq!(
            s.last_exit,
            Some(LastExit::Stopped(ExitStatus::Signal(9), StopReason::Scale))
        );
    }

    #[test]
    fn start_timeout_recycles_with_its_reason_and_backs_off() {
        let t0 = Instant::now();
        let c = SlotCfg {
            start_timeout: 10 * SEC,
            ..cfg()
        };
        let mut s = Slot::new(1, 0);
        s.spawned(7, t0, &c);
        assert_eq!(s.deadline(), Some(t0 + 10 * SEC));
        assert_eq!(s.tick(t0 + 9 * SEC, &c), vec![]);
        assert_eq!(
            s.tick(t0 + 10 * SEC, &c),
            vec![Action::SignalGroup {
                pid: 7,
                signal: libc::SIGTERM
            }]
        );
        let acts = s.exited(ExitStatus::Signal(15), t0 + 10 * SEC, &c, 0.5);
        assert_eq!(
            s.last_exit,
            Some(LastExit::Stopped(
                ExitStatus::Signal(15),
                StopReason::StartTimeout
            ))
        );
        // up 10 s = reset_after: counts as stable, so immediate; a quicker one would back off
        assert_eq!(acts, vec![Action::Spawn]);
        let mut s = Slot::new(2, 0);
        let c2 = SlotCfg {
            start_timeout: SEC,
            ..cfg()
        };
        s.spawned(8, t0, &c2);
        s.tick(t0 + SEC, &c2);
        assert_eq!(s.exited(ExitStatus::Signal(15), t0 + SEC, &c2, 0.5), vec![]);
        assert_eq!(s.state_name(), "backoff");
    }

    #[test]
    fn stop_of_a_waiting_slot_removes_it_at_once() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 0);
        s.spawned(1, t0, &cfg());
        s.exited(ExitStatus::Code(1), t0, &cfg(), 0.5);
        assert_eq!(s.state_name(), "backoff");
        assert_eq!(
            s.stop(
                t0,
                libc::SIGTERM,
                SEC,
                AfterStop::Remove,
                StopReason::Shutdown
            ),
            vec![Action::Remove]
        );
    }

    #[test]
    fn a_second_stop_brings_the_kill_forward() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 0);
        s.spawned(7, t0, &cfg());
        s.stop(
            t0,
            libc::SIGTERM,
            30 * SEC,
            AfterStop::Remove,
            StopReason::Scale,
        );
        assert_eq!(
            s.stop(
                t0,
                libc::SIGTERM,
                Duration::ZERO,
                AfterStop::Respawn,
                StopReason::Health
            ),
            vec![]
        );
        assert_eq!(s.deadline(), Some(t0));
        assert!(matches!(
            s.phase,
            Phase::Stopping {
                then: AfterStop::Remove,
                reason: StopReason::Scale,
                ..
            }
        ));
        // a fast shutdown's KILL goes out at once
        assert_eq!(
            s.stop(
                t0,
                libc::SIGKILL,
                Duration::ZERO,
                AfterStop::Remove,
                StopReason::Shutdown
            ),
            vec![Action::SignalGroup {
                pid: 7,
                signal: libc::SIGKILL
            }]
        );
    }

    #[test]
    fn spawn_failure_backs_off() {
        let t0 = Instant::now();
        let mut s = Slot::new(1, 0);
        s.spawn_failed("no such file".into(), t0, &cfg().backoff, 0.5);
        assert_eq!(
            s.phase,
            Phase::Backoff {
                until: t0 + Duration::from_millis(100)
            }
        );
        assert_eq!(s.state_name(), "backoff");
    }
}

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

/// Why the previous process of a slot is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastExit {
    Exited(ExitStatus),
    /// fork/exec never produced a running program
    SpawnFailed(String),
    /// drover stopped it (shutdown, scale down)
    Stopped(ExitStatus),
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
    /// spawned, not yet up for `STARTING_GRACE`
    Starting {
        pid: i32,
        since: Instant,
    },
    Running {
        pid: i32,
        since: Instant,
    },
    /// stop signal sent; KILL at `kill_at`
    Stopping {
        pid: i32,
        since: Instant,
        kill_at: Instant,
        killed: bool,
        then: AfterStop,
    },
    /// waiting to respawn
    Backoff {
        until: Instant,
    },
    /// exited and will not be restarted (policy), or removed
    Done {
        failed: bool,
    },
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

/// How long a new process is "starting" before it counts as running.
pub const STARTING_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Slot {
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
    pub fn new(index: u32) -> Slot {
        Slot {
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

    pub fn spawned(&mut self, pid: i32, now: Instant) {
        if !matches!(self.phase, Phase::Idle) {
            self.restarts += 1;
        }
        self.phase = Phase::Starting { pid, since: now };
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
        policy: RestartPolicy,
        cfg: &BackoffCfg,
        jitter: f64,
    ) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Stopping { since, then, .. } => {
                self.last_exit = Some(LastExit::Stopped(status));
                match then {
                    AfterStop::Remove => {
                        self.phase = Phase::Done { failed: false };
                        vec![Action::Remove]
                    }
                    AfterStop::Respawn => {
                        if now.duration_since(since) >= cfg.reset_after {
                            self.failures = 0;
                        }
                        self.last_delay = Duration::ZERO;
                        self.phase = Phase::Backoff { until: now };
                        vec![Action::Spawn]
                    }
                }
            }
            Phase::Starting { since, .. } | Phase::Running { since, .. } => {
                self.last_exit = Some(LastExit::Exited(status));
                let restart = match policy {
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
            // not ours to reap: ignore
            Phase::Idle | Phase::Backoff { .. } | Phase::Done { .. } => vec![],
        }
    }

    /// Ask the slot's process to stop: `signal` to its group now, KILL after `timeout`.
    pub fn stop(
        &mut self,
        now: Instant,
        signal: i32,
        timeout: Duration,
        then: AfterStop,
    ) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Starting { pid, since } | Phase::Running { pid, since } => {
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at: now + timeout,
                    killed: false,
                    then,
                };
                vec![Action::SignalGroup { pid, signal }]
            }
            Phase::Stopping {
                then: old,
                pid,
                since,
                kill_at,
                killed,
            } => {
                // a removal wins over a respawn; a fast stop brings the KILL forward
                let then = if old == AfterStop::Remove { old } else { then };
                let kill_at = kill_at.min(now + timeout);
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed,
                    then,
                };
                vec![]
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

    /// Timers: starting → running, backoff → spawn, stop timeout → KILL.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        match self.phase.clone() {
            Phase::Starting { pid, since } if now >= since + STARTING_GRACE => {
                self.phase = Phase::Running { pid, since };
                vec![]
            }
            Phase::Backoff { until } if now >= until => vec![Action::Spawn],
            Phase::Stopping {
                pid,
                since,
                kill_at,
                killed: false,
                then,
            } if now >= kill_at => {
                self.phase = Phase::Stopping {
                    pid,
                    since,
                    kill_at,
                    killed: true,
                    then,
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
            Phase::Starting { since, .. } => Some(since + STARTING_GRACE),
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

    fn cfg() -> BackoffCfg {
        BackoffCfg {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
    const ALWAYS: RestartPolicy = RestartPolicy::Always;

    #[test]
    fn backoff_table() {
        let c = cfg();
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
    fn stable_worker_restarts_at_once() {
        let t0 = Instant::now();
        let mut s = Slot::new(0);
        s.spawned(10, t0);
        assert_eq!(s.tick(t0 + Duration::from_secs(2)), vec![]);
        assert_eq!(s.state_name(), "running");
        let acts = s.exited(
            ExitStatus::Signal(9),
            t0 + Duration::from_secs(60),
            ALWAYS,
            &cfg(),
            0.5,
        );
        assert_eq!(acts, vec![Action::Spawn]);
        assert_eq!(s.failures, 0);
        assert_eq!(s.last_exit, Some(LastExit::Exited(ExitStatus::Signal(9))));
        s.spawned(11, t0 + Duration::from_secs(60));
        assert_eq!(s.restarts, 1);
    }

    #[test]
    fn crash_loop_backs_off_exponentially() {
        let mut now = Instant::now();
        let mut s = Slot::new(0);
        let mut delays = vec![];
        for pid in 1..=6 {
            s.spawned(pid, now);
            let acts = s.exited(
                ExitStatus::Code(1),
                now + Duration::from_millis(5),
                ALWAYS,
                &cfg(),
                0.5,
            );
            assert_eq!(acts, vec![], "a quick failure never respawns synchronously");
            let Phase::Backoff { until } = s.phase else {
                panic!("{:?}", s.phase)
            };
            delays.push((until - now - Duration::from_millis(5)).as_millis() as u64);
            // nothing happens before the deadline, the spawn comes at it
            assert_eq!(s.tick(until - Duration::from_millis(1)), vec![]);
            assert_eq!(s.tick(until), vec![Action::Spawn]);
            now = until;
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200]);
        assert!(s.crash_looping(5) || s.failures == 6);
        assert_eq!(s.restarts, 5);
    }

    #[test]
    fn policy_decides_restart() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        let cases = [
            (RestartPolicy::Always, ExitStatus::Code(0), true, "running"),
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
                "running",
            ),
            (
                RestartPolicy::OnFailure,
                ExitStatus::Signal(9),
                true,
                "running",
            ),
            (RestartPolicy::Never, ExitStatus::Code(1), false, "failed"),
            (RestartPolicy::Never, ExitStatus::Code(0), false, "stopped"),
        ];
        for (policy, st, restarts, _) in cases {
            let mut s = Slot::new(0);
            s.spawned(5, t0);
            let acts = s.exited(st, later, policy, &cfg(), 0.5);
            assert_eq!(acts == vec![Action::Spawn], restarts, "{policy:?} {st:?}");
        }
        let mut s = Slot::new(0);
        s.spawned(5, t0);
        s.exited(
            ExitStatus::Code(1),
            later,
            RestartPolicy::Never,
            &cfg(),
            0.5,
        );
        assert_eq!(s.state_name(), "failed");
    }

    #[test]
    fn stop_escalates_to_kill_and_removes() {
        let t0 = Instant::now();
        let mut s = Slot::new(1);
        s.spawned(42, t0);
        let acts = s.stop(t0, libc::SIGTERM, Duration::from_secs(5), AfterStop::Remove);
        assert_eq!(
            acts,
            vec![Action::SignalGroup {
                pid: 42,
                signal: libc::SIGTERM
            }]
        );
        assert_eq!(s.deadline(), Some(t0 + Duration::from_secs(5)));
        assert_eq!(s.tick(t0 + Duration::from_secs(4)), vec![]);
        assert_eq!(
            s.tick(t0 + Duration::from_secs(5)),
            vec![Action::SignalGroup {
                pid: 42,
                signal: libc::SIGKILL
            }]
        );
        assert_eq!(
            s.tick(t0 + Duration::from_secs(6)),
            vec![],
            "KILL is sent once"
        );
        assert_eq!(s.deadline(), None);
        let acts = s.exited(
            ExitStatus::Signal(9),
            t0 + Duration::from_secs(6),
            ALWAYS,
            &cfg(),
            0.5,
        );
        assert_eq!(acts, vec![Action::Remove]);
        assert_eq!(s.last_exit, Some(LastExit::Stopped(ExitStatus::Signal(9))));
    }

    #[test]
    fn stop_of_a_waiting_slot_removes_it_at_once() {
        let t0 = Instant::now();
        let mut s = Slot::new(0);
        s.spawned(1, t0);
        s.exited(ExitStatus::Code(1), t0, ALWAYS, &cfg(), 0.5);
        assert_eq!(s.state_name(), "backoff");
        assert_eq!(
            s.stop(t0, libc::SIGTERM, Duration::from_secs(1), AfterStop::Remove),
            vec![Action::Remove]
        );
    }

    #[test]
    fn a_second_stop_brings_the_kill_forward() {
        let t0 = Instant::now();
        let mut s = Slot::new(0);
        s.spawned(7, t0);
        s.stop(
            t0,
            libc::SIGTERM,
            Duration::from_secs(30),
            AfterStop::Remove,
        );
        assert_eq!(
            s.stop(t0, libc::SIGTERM, Duration::ZERO, AfterStop::Respawn),
            vec![]
        );
        assert_eq!(s.deadline(), Some(t0));
        assert!(matches!(
            s.phase,
            Phase::Stopping {
                then: AfterStop::Remove,
                ..
            }
        ));
    }

    #[test]
    fn spawn_failure_backs_off() {
        let t0 = Instant::now();
        let mut s = Slot::new(0);
        s.spawn_failed("no such file".into(), t0, &cfg(), 0.5);
        assert_eq!(
            s.phase,
            Phase::Backoff {
                until: t0 + Duration::from_millis(100)
            }
        );
        assert_eq!(s.state_name(), "backoff");
    }
}

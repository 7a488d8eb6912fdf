//! Signals and shutdown: TERM/INT graceful (a drain first if configured; twice = fast), QUIT
//! fast, HUP reload, TTIN/TTOU one worker more or less, USR1/USR2 forwarded to every worker.
//! A graceful shutdown stops programs in reverse dependency order (`stop_in_order`).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info, warn};

use super::{RunState, Supervisor, KILL_GRACE};
use crate::api::events::Event;
use crate::process::signals::name;
use crate::state::{AfterStop, Phase, StopReason};

impl Supervisor {
    pub(super) fn on_signal(&mut self, sig: Signal, now: Instant) {
        if self.run == RunState::Steps {
            return self.steps_signal(sig, now);
        }
        let running = self.run == RunState::Running;
        match sig {
            Signal::SIGTERM | Signal::SIGINT if !running => {
                info!(
                    "{} received again: fast shutdown (SIGKILL to every worker)",
                    name(sig)
                );
                self.begin_shutdown(true, now, format!("{} received again", name(sig)));
            }
            Signal::SIGTERM | Signal::SIGINT => {
                info!("{} received: graceful shutdown", name(sig));
                self.begin_shutdown(false, now, format!("{} received", name(sig)));
            }
            Signal::SIGQUIT => {
                info!("QUIT received: fast shutdown (SIGKILL to every worker)");
                self.begin_shutdown(true, now, "QUIT received".into());
            }
            Signal::SIGHUP if running => {
                info!("HUP received: reloading the configuration");
                let _ = self.reload(now);
            }
            Signal::SIGTTIN | Signal::SIGTTOU if running => {
                for pi in 0..self.programs.len() {
                    let p = &self.programs[pi];
                    if p.removing {
                        continue;
                    }
                    let d = p.desired;
                    if sig == Signal::SIGTTIN {
                        self.scale(pi, d + 1, now, StopReason::Scale);
                    } else if d > 1 && d > p.cfg.min_ready {
                        self.scale(pi, d - 1, now, StopReason::Scale);
                    }
                }
            }
            Signal::SIGUSR1 | Signal::SIGUSR2 => {
                let n = self.pids.len();
                for &pid in self.pids.keys() {
                    self.children.signal_group(pid, sig);
                }
                info!("{} forwarded to {n} worker process group(s)", name(sig));
            }
            other => debug!("{} ignored now", name(other)),
        }
    }

    /// `why`: for the `shutting_down` event.
    pub(super) fn begin_shutdown(&mut self, fast: bool, now: Instant, why: String) {
        // exit records still waiting for their workers' last lines are said now, before the
        // shutdown's own lines, with what the rings hold
        self.last_words_due(now, true);
        if let Some(n) = &self.cx.notify {
            n.stopping();
        }
        self.emit(Event::ShuttingDown { why, fast });
        let drain = self.cfg.supervisor.drain_delay;
        if !fast && !drain.is_zero() && self.run == RunState::Running {
            info!("draining for {drain:?}: /readyz answers 503 while workers keep serving");
            self.run = RunState::Draining {
                until: now + drain,
                fast,
            };
            return;
        }
        self.stop_everything(fast, now);
    }

    /// Stop every worker. Graceful: dependents first — a program's workers get their stop
    /// signal only once the workers of every program that depends on it are gone (or were
    /// SIGKILLed at their stop timeout), so an API drains before the database it uses stops;
    /// unrelated programs stop in parallel, all within `shutdown_timeout`. Fast: SIGKILL to all.
    pub(super) fn stop_everything(&mut self, fast: bool, now: Instant) {
        let total = self.cfg.supervisor.shutdown_timeout;
        let hard_deadline = match self.run {
            RunState::Stopping { hard_deadline } if !fast => hard_deadline,
            _ => now + if fast { Duration::ZERO } else { total } + KILL_GRACE,
        };
        self.run = RunState::Stopping { hard_deadline };
        self.kill_preloaders(now);
        for p in &mut self.programs {
            p.roll = None;
            p.stop_held = !fast;
        }
        if fast {
            for pi in 0..self.programs.len() {
                self.stop_program(pi, (Signal::SIGKILL, Duration::ZERO), now);
            }
        } else {
            self.stop_in_order(now);
            let held = self.programs.iter().filter(|p| p.stop_held);
            for p in held.filter(|p| p.workers.iter().any(running)) {
                let name = &p.cfg.name;
                let first: Vec<&str> = self
                    .programs
                    .iter()
                    .filter(|q| q.cfg.depends_on.iter().any(|(d, _)| d == name))
                    .filter(|q| q.workers.iter().any(running))
                    .map(|q| q.cfg.name.as_str())
                    .collect();
                info!(program = %name, "shutdown: program {name} is stopped once {} {} stopped (they depend on it)", first.join(", "), if first.len() == 1 { "has" } else { "have" });
            }
        }
        for (pid, p) in self.probes.iter_mut() {
            p.killed = true;
            self.children.signal_group(*pid, Signal::SIGKILL);
        }
    }

    /// During a graceful shutdown: stop each program still held whose dependents' workers are
    /// all gone or overdue (SIGKILLed). Runs after every wake-up, so a dependency is stopped in
    /// the same turn of the loop that reaps its last dependent.
    pub(super) fn stop_in_order(&mut self, now: Instant) {
        let RunState::Stopping { hard_deadline } = self.run else {
            return;
        };
        // what is left of shutdown_timeout: a later stop gets no more than that
        let end = hard_deadline.checked_sub(KILL_GRACE).unwrap_or(now);
        loop {
            let free: Vec<usize> = (0..self.programs.len())
                .filter(|&pi| self.programs[pi].stop_held && !self.dependents_running(pi))
                .collect();
            if free.is_empty() {
                return;
            }
            for pi in free {
                let p = &mut self.programs[pi];
                p.stop_held = false;
                let left = end.saturating_duration_since(now);
                let how = if left.is_zero() && p.workers.iter().any(running) {
                    let name = &p.cfg.name;
                    warn!(program = %name, "shutdown: program {name} gets no time to stop gracefully: the programs that depend on it used up shutdown_timeout ({:?}); sending SIGKILL", self.cfg.supervisor.shutdown_timeout);
                    (Signal::SIGKILL, Duration::ZERO)
                } else {
                    (p.cfg.stop_signal, p.cfg.stop_timeout.min(left))
                };
                self.stop_program(pi, how, now);
            }
        }
    }

    /// Some program that depends on program `pi` still has a worker that has not been
    /// SIGKILLed (or has not been told to stop at all).
    fn dependents_running(&self, pi: usize) -> bool {
        let name = &self.programs[pi].cfg.name;
        self.programs.iter().enumerate().any(|(qi, q)| {
            qi != pi
                && q.cfg.depends_on.iter().any(|(d, _)| d == name)
                && q.workers.iter().any(running)
        })
    }

    fn stop_program(&mut self, pi: usize, how: (Signal, Duration), now: Instant) {
        let ids: Vec<u64> = self.programs[pi].workers.iter().map(|w| w.id()).collect();
        for id in ids {
            self.stop_worker_with(pi, id, how, AfterStop::Remove, StopReason::Shutdown, now);
        }
    }
}

/// A worker whose process is alive and was not SIGKILLed: its dependencies wait for it.
fn running(w: &super::program::Worker) -> bool {
    w.slot.pid().is_some() && !matches!(w.slot.phase(), Phase::Stopping { killed: true, .. })
}

//! Signals and shutdown: TERM/INT graceful (a drain first if configured; twice = fast), QUIT
//! fast, HUP reload, TTIN/TTOU one worker more or less, USR1/USR2 forwarded to every worker.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, info};

use super::{RunState, Supervisor, KILL_GRACE};
use crate::process::signals::name;
use crate::state::{AfterStop, StopReason};

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
                self.begin_shutdown(true, now);
            }
            Signal::SIGTERM | Signal::SIGINT => {
                info!("{} received: graceful shutdown", name(sig));
                self.begin_shutdown(false, now);
            }
            Signal::SIGQUIT => {
                info!("QUIT received: fast shutdown (SIGKILL to every worker)");
                self.begin_shutdown(true, now);
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

    pub(super) fn begin_shutdown(&mut self, fast: bool, now: Instant) {
        if let Some(n) = &self.cx.notify {
            n.stopping();
        }
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

    pub(super) fn stop_everything(&mut self, fast: bool, now: Instant) {
        let total = self.cfg.supervisor.shutdown_timeout;
        let hard_deadline = match self.run {
            RunState::Stopping { hard_deadline } if !fast => hard_deadline,
            _ => now + if fast { Duration::ZERO } else { total } + KILL_GRACE,
        };
        self.run = RunState::Stopping { hard_deadline };
        self.kill_preloaders(now);
        for pi in 0..self.programs.len() {
            self.programs[pi].roll = None;
            let how = if fast {
                (Signal::SIGKILL, Duration::ZERO)
            } else {
                let c = &self.programs[pi].cfg;
                (c.stop_signal, c.stop_timeout.min(total))
            };
            let ids: Vec<u64> = self.programs[pi].workers.iter().map(|w| w.id()).collect();
            for id in ids {
                self.stop_worker_with(pi, id, how, AfterStop::Remove, StopReason::Shutdown, now);
            }
        }
        for (pid, p) in self.probes.iter_mut() {
            p.killed = true;
            self.children.signal_group(*pid, Signal::SIGKILL);
        }
    }
}

//! Shutdown during a pre-start step. A migration told to stop gets what systemd gives
//! `ExecStartPre=` and Kubernetes an init container: its stop signal, then a grace period
//! (`stop_timeout`, by default and at most `supervisor.shutdown_timeout`), then SIGKILL — a
//! timer in the loop's nearest deadline, never a sleep. A second TERM or INT, or QUIT, means
//! SIGKILL now. How the step ended decides drover's exit code (`steps.rs::interrupted`): 0 when
//! it exited 0 in its TERM handler, 3 otherwise. A step still not reaped `KILL_GRACE` after
//! SIGKILL (stuck in the kernel) is given up on, as workers are.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, error, info, warn};

use super::{Run, Supervisor, EXIT_OK, EXIT_STEP};
use crate::api::snapshot::StepState;
use crate::process::reaper::ExitStatus;
use crate::process::signals::name;
use crate::supervisor::KILL_GRACE;

/// Shutdown came while an attempt ran.
#[derive(Clone, Copy, Debug)]
pub(super) struct Stop {
    /// the step's stop signal, as sent; None if the step had already exited
    pub signal: Option<Signal>,
    pub grace: Duration,
    /// SIGKILL unless it has exited by then
    pub kill_at: Instant,
    /// SIGKILL was sent: why, and when
    pub killed: Option<(Killed, Instant)>,
}

/// Why a stopping step got SIGKILL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Killed {
    /// it outlived its stop_timeout
    AtStopTimeout,
    /// a second TERM or INT (`again`), or QUIT
    Asked { by: Signal, again: bool },
}

impl Stop {
    /// The deadline this stop still waits for: the SIGKILL, then giving up on the reaper.
    pub fn deadline(&self) -> Option<Instant> {
        self.signal?;
        Some(match self.killed {
            None => self.kill_at,
            Some((_, at)) => at + KILL_GRACE,
        })
    }

    /// How an interrupted step ended, for the log: "exit code 1 after TERM",
    /// "killed by SIGKILL 30s after TERM".
    pub fn how(&self, status: ExitStatus, timed_out: Option<Duration>) -> String {
        let sent = self.signal.map(name).unwrap_or("shutdown");
        match (self.killed.map(|(k, _)| k), timed_out) {
            (Some(Killed::AtStopTimeout), _) => {
                format!("killed by SIGKILL {:?} after {sent}", self.grace)
            }
            (Some(Killed::Asked { by, again: true }), _) => {
                format!("killed by SIGKILL at a second {}", name(by))
            }
            (Some(Killed::Asked { by, again: false }), _) => {
                format!("killed by SIGKILL at {}", name(by))
            }
            (None, Some(t)) => format!("killed by SIGKILL at its timeout ({t:?})"),
            (None, None) => match (status, self.signal) {
                (ExitStatus::Signal(s), Some(sig)) if s == sig => {
                    format!("ended by its stop signal {sent}")
                }
                (_, Some(_)) => format!("{status} after {sent}"),
                (_, None) => format!("{status}, as shutdown came"),
            },
        }
    }
}

impl Supervisor {
    /// TERM, INT or QUIT while the steps run: stop the step, start no worker.
    pub(in crate::supervisor) fn steps_signal(&mut self, sig: Signal, now: Instant) {
        if !matches!(sig, Signal::SIGTERM | Signal::SIGINT | Signal::SIGQUIT) {
            debug!("{} ignored while pre-start steps run", name(sig));
            return;
        }
        let i = self.steps.at;
        let step = self.steps.cfg.get(i).cloned();
        let step_name = self.steps.current_name().to_string();
        self.emit(crate::api::events::Event::ShuttingDown {
            why: format!("{} received during pre-start step {step_name}", name(sig)),
            fast: sig == Signal::SIGQUIT,
        });
        let grace = step
            .as_ref()
            .map_or(Duration::ZERO, |s| s.stop_grace(&self.cfg.supervisor));
        match &mut self.steps.run {
            Run::Running(a) if a.exit.is_some() => {
                if a.stop.is_none() {
                    info!("{} received: pre-start step {step_name} has just ended; no worker will be started", name(sig));
                    a.stop = Some(Stop {
                        signal: None,
                        grace,
                        kill_at: now,
                        killed: None,
                    });
                }
            }
            Run::Running(a) => match &mut a.stop {
                None if sig != Signal::SIGQUIT => {
                    let stop_sig = step.as_ref().map_or(Signal::SIGTERM, |s| s.stop_signal);
                    info!(step = %step_name, "{} received: stopping pre-start step {step_name} with {}; SIGKILL in {grace:?}", name(sig), name(stop_sig));
                    self.children.signal_group(a.pid, stop_sig);
                    self.children.signal_group(a.pid, Signal::SIGCONT);
                    a.stop = Some(Stop {
                        signal: Some(stop_sig),
                        grace,
                        kill_at: now + grace,
                        killed: None,
                    });
                }
                None => {
                    info!(step = %step_name, "QUIT received: killing pre-start step {step_name} now (SIGKILL)");
                    self.children.signal_group(a.pid, Signal::SIGKILL);
                    a.stop = Some(Stop {
                        signal: Some(Signal::SIGKILL),
                        grace: Duration::ZERO,
                        kill_at: now,
                        killed: Some((
                            Killed::Asked {
                                by: sig,
                                again: false,
                            },
                            now,
                        )),
                    });
                }
                Some(s) if s.killed.is_none() => {
                    let again = sig != Signal::SIGQUIT;
                    let said = if again { " again" } else { "" };
                    info!(step = %step_name, "{} received{said}: killing pre-start step {step_name} now (SIGKILL)", name(sig));
                    self.children.signal_group(a.pid, Signal::SIGKILL);
                    s.killed = Some((Killed::Asked { by: sig, again }, now));
                }
                Some(_) => debug!("{} received: pre-start step {step_name} was already killed; waiting for its exit", name(sig)),
            },
            Run::Waiting(_) if self.steps.attempt > 1 => {
                error!(step = %step_name, "{} received: pre-start step {step_name} did not complete: it failed and shutdown came before its retry; no worker was started; exiting with code {EXIT_STEP}", name(sig));
                if let Some(st) = self.steps.status.get_mut(i) {
                    st.state = StepState::Interrupted;
                }
                self.finished = Some(EXIT_STEP);
            }
            Run::Waiting(_) | Run::Finished => {
                info!("{} received before pre-start step {step_name} started; no worker was started", name(sig));
                self.finished = Some(EXIT_OK);
            }
        }
        if let Some(st) = self.steps.status.get_mut(i) {
            if st.state == StepState::Running {
                st.state = StepState::Interrupted;
            }
        }
        if let Some(n) = &self.cx.notify {
            n.stopping();
            n.status(&format!("stopping pre-start step {step_name}"));
        }
    }

    /// A stopping step that outlived its stop_timeout gets SIGKILL to its process group; one
    /// still not reaped `KILL_GRACE` later is given up on.
    pub(super) fn check_stopping_step(&mut self, now: Instant) {
        let step_name = self.steps.current_name().to_string();
        let Run::Running(a) = &mut self.steps.run else {
            return;
        };
        let Some(s) = &mut a.stop else { return };
        if a.exit.is_some() || s.deadline().is_none_or(|t| now < t) {
            return;
        }
        if s.killed.is_none() {
            s.killed = Some((Killed::AtStopTimeout, now));
            warn!(step = %step_name, "pre-start step {step_name} did not stop within {:?} after {}; killing its process group (SIGKILL)", s.grace, s.signal.map(name).unwrap_or("its stop signal"));
            self.children.signal_group(a.pid, Signal::SIGKILL);
            return;
        }
        error!(step = %step_name, "pre-start step {step_name} (pid {}) still not reaped {KILL_GRACE:?} after SIGKILL; no worker was started; exiting anyway with code {EXIT_STEP}", a.pid);
        if let Some(st) = self.steps.status.get_mut(self.steps.at) {
            st.state = StepState::Interrupted;
        }
        self.finished = Some(EXIT_STEP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn how_an_interrupted_step_ended() {
        let now = Instant::now();
        let stop = |signal, killed: Option<Killed>| Stop {
            signal,
            grace: Duration::from_secs(30),
            kill_at: now,
            killed: killed.map(|k| (k, now)),
        };
        let term = Some(Signal::SIGTERM);
        let cases = [
            (
                stop(term, None),
                ExitStatus::Code(1),
                None,
                "exit code 1 after TERM",
            ),
            (
                stop(term, None),
                ExitStatus::Signal(Signal::SIGTERM),
                None,
                "ended by its stop signal TERM",
            ),
            (
                stop(term, Some(Killed::AtStopTimeout)),
                ExitStatus::Signal(Signal::SIGKILL),
                None,
                "killed by SIGKILL 30s after TERM",
            ),
            (
                stop(
                    term,
                    Some(Killed::Asked {
                        by: Signal::SIGINT,
                        again: true,
                    }),
                ),
                ExitStatus::Signal(Signal::SIGKILL),
                None,
                "killed by SIGKILL at a second INT",
            ),
            (
                stop(
                    Some(Signal::SIGKILL),
                    Some(Killed::Asked {
                        by: Signal::SIGQUIT,
                        again: false,
                    }),
                ),
                ExitStatus::Signal(Signal::SIGKILL),
                None,
                "killed by SIGKILL at QUIT",
            ),
            (
                stop(term, None),
                ExitStatus::Signal(Signal::SIGKILL),
                Some(Duration::from_secs(5)),
                "killed by SIGKILL at its timeout (5s)",
            ),
            (
                stop(None, None),
                ExitStatus::Code(2),
                None,
                "exit code 2, as shutdown came",
            ),
        ];
        for (s, status, timed_out, want) in cases {
            assert_eq!(s.how(status, timed_out), want);
        }
    }

    #[test]
    fn a_stop_waits_for_its_kill_then_for_the_reaper() {
        let now = Instant::now();
        let mut s = Stop {
            signal: Some(Signal::SIGTERM),
            grace: Duration::from_secs(1),
            kill_at: now + Duration::from_secs(1),
            killed: None,
        };
        assert_eq!(s.deadline(), Some(now + Duration::from_secs(1)));
        let at = now + Duration::from_secs(1);
        s.killed = Some((Killed::AtStopTimeout, at));
        assert_eq!(
            s.deadline(),
            Some(at + KILL_GRACE),
            "killed: then the reaper"
        );
        s.killed = None;
        s.signal = None;
        assert_eq!(s.deadline(), None, "the step had ended: nothing was sent");
    }
}

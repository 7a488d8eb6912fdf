//! What a preloader says: its `ready` or `error` while loading (the `next` one's too, which
//! becomes current once ready: `promote_next`), the answers to fork requests (handed to
//! `fork.rs`), and anything else, which breaks the protocol and fails it. Slots that waited for
//! a ready preloader are forked then, and a roll that waited for it begins.

use std::time::Instant;

use nix::sys::signal::Signal;
use tracing::info;

use super::{app_words, drover_words, protocol_words, Role};
use crate::process::preload::Said;
use crate::supervisor::roll_outcome::End;
use crate::supervisor::{RunState, Supervisor};

impl Supervisor {
    /// A message from program `prog`'s preloader `pid` (or from a worker it forked).
    pub(in crate::supervisor) fn on_preloader_said(
        &mut self,
        prog: u64,
        pid: i32,
        said: Said,
        now: Instant,
    ) {
        let Some(pi) = self.pidx(prog) else { return };
        // while draining, workers are still started (a worker's answer must get its `go`)
        if !matches!(self.run, RunState::Running | RunState::Draining { .. }) {
            return;
        }
        match self.role(pi, pid) {
            Some(Role::Current) => {}
            Some(Role::Next) => return self.on_next_said(pi, pid, said, now),
            None => return, // a preloader replaced since
        }
        let Some(l) = self.programs[pi].preload.current.as_ref() else {
            return;
        };
        let loading = l.ready.is_none();
        match said {
            Said::Ready if loading => match l.exited {
                // read after its exit: it cannot fork anything
                Some((status, _)) => {
                    let f = drover_words(format!(
                        "it (pid {pid}) said ready and exited with {status}"
                    ));
                    self.preload_failed(pi, f, now)
                }
                None => self.preloader_ready(pi, now),
            },
            Said::Error(text) if loading => {
                self.preload_failed(pi, app_words("it could not load the app", text), now)
            }
            Said::Closed if loading => {
                let f = protocol_words(match l.exited {
                    Some((status, _)) => {
                        format!("it (pid {pid}) exited with {status} before saying ready")
                    }
                    None => "it closed DROVER_PRELOAD_FD without saying ready".into(),
                });
                self.preload_failed(pi, f, now)
            }
            Said::Pid {
                pid: claimed,
                sender,
            } if !l.pending.is_empty() => self.on_fork_claim(pi, claimed, sender, now),
            Said::Error(text) if !l.pending.is_empty() => self.on_fork_error(pi, text, now),
            Said::Closed => {
                // it said ready, so it speaks the protocol: it died, or dropped its socket
                let f = drover_words(
                    "it closed DROVER_PRELOAD_FD after loading (it exited, or closed the socket)"
                        .into(),
                );
                self.preload_failed(pi, f, now)
            }
            other => {
                let f = protocol_words(format!(
                    "it broke the preload protocol ({} while {})",
                    describe(&other),
                    if loading {
                        "loading"
                    } else {
                        "no fork was asked for"
                    }
                ));
                self.preload_failed(pi, f, now)
            }
        }
    }

    /// A message from the `next` preloader, loading new code: only its loading can be spoken of.
    fn on_next_said(&mut self, pi: usize, pid: i32, said: Said, now: Instant) {
        let Some(l) = self.programs[pi].preload.next.as_ref() else {
            return;
        };
        match said {
            Said::Ready => match l.exited {
                Some((status, _)) => {
                    let f = drover_words(format!(
                        "it (pid {pid}) said ready and exited with {status}"
                    ));
                    self.next_failed(pi, f, now)
                }
                None => self.promote_next(pi, now),
            },
            Said::Error(text) => {
                self.next_failed(pi, app_words("it could not load the app", text), now)
            }
            Said::Closed => {
                let f = protocol_words(match l.exited {
                    Some((status, _)) => {
                        format!("it (pid {pid}) exited with {status} before saying ready")
                    }
                    None => "it closed DROVER_PRELOAD_FD without saying ready".into(),
                });
                self.next_failed(pi, f, now)
            }
            other => {
                let f = protocol_words(format!(
                    "it broke the preload protocol ({} while loading)",
                    describe(&other)
                ));
                self.next_failed(pi, f, now)
            }
        }
    }

    /// The `next` preloader has loaded the new code: it becomes current, the old one is asked to
    /// stop, and the roll that waited for it begins.
    fn promote_next(&mut self, pi: usize, now: Instant) {
        let Some(mut l) = self.programs[pi].preload.next.take() else {
            return;
        };
        l.ready = Some(now);
        let name = self.programs[pi].cfg.name.clone();
        let took = now.duration_since(l.since).as_secs_f64();
        info!(program = %name, pid = l.pid, "program {name}: the new preloader (pid {}) loaded the app in {took:.2}s; the old one stops and the workers roll onto it", l.pid);
        // forks asked of the old one are asked again of the new one
        self.drop_preloader(pi, Signal::SIGTERM, now);
        let p = &mut self.programs[pi];
        p.preload.current = Some(l);
        p.preload.error = None;
        self.spawn_waiting(pi, now);
        if let Some((reason, _)) = self.programs[pi].roll_deferred {
            self.begin_roll(pi, reason, now);
        }
    }

    /// Slots that waited for a ready preloader are forked now.
    fn spawn_waiting(&mut self, pi: usize, now: Instant) {
        let waiting: Vec<u64> = self.programs[pi]
            .workers
            .iter()
            .filter(|w| w.awaiting_preloader)
            .map(|w| w.id())
            .collect();
        for id in waiting {
            self.spawn_worker(pi, id, now);
        }
    }

    fn preloader_ready(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let Some(l) = p.preload.current.as_mut() else {
            return;
        };
        l.ready = Some(now);
        let took = now.duration_since(l.since).as_secs_f64();
        info!(program = %name, pid = l.pid, "program {name}: preloader (pid {}) loaded the app in {took:.2}s", l.pid);
        p.preload.error = None;
        let roll = p.roll_deferred.map(|(reason, _)| reason);
        let waiting: Vec<u64> = p
            .workers
            .iter()
            .filter(|w| w.awaiting_preloader)
            .map(|w| w.id())
            .collect();
        for id in waiting {
            self.spawn_worker(pi, id, now);
        }
        if let Some(reason) = roll {
            if self.programs[pi]
                .workers
                .iter()
                .any(|w| !w.awaiting_preloader && w.slot.pid().is_some())
            {
                // this preloader has the new code: the roll needs no other
                self.begin_roll(pi, reason, now);
            } else {
                // a roll was asked for, but no worker ran from the old code: nothing to replace
                self.end_deferred_roll(pi, End::Done, now);
            }
        }
    }
}

fn describe(s: &Said) -> String {
    match s {
        Said::Ready => "`ready`".into(),
        Said::Error(_) => "`error`".into(),
        Said::Pid { pid, .. } => format!("`pid {pid}`"),
        Said::Unknown(t) => format!("{t:?}"),
        Said::Closed => "its socket closed".into(),
    }
}

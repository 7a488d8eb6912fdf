//! How a rolling restart ends, and what is kept of it. A roll is *done* (every old worker
//! replaced), *abandoned* (a replacement, or the new preloader the roll waited for, never became
//! ready: the replacement is killed and the old workers keep serving) or *cancelled* (its program
//! was stopped or removed meanwhile). Each end is logged once and kept on the program as its
//! `last_roll`: `/status` shows it, `drover status` (exit 3 after an abandoned roll), `drover top`
//! and the page say it, and `drover ctl … --wait` waits for it.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use super::{plural, unix_now, Supervisor};
use crate::api::snapshot::LastRoll;
use crate::state::{AfterStop, StopReason};

/// How a roll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    Done,
    /// `worker`: the index whose replacement failed (None: the new preloader did); `why`: what
    /// failed, in drover's words
    Abandoned {
        worker: Option<u32>,
        why: String,
    },
    /// `why`: what ended it (the program was stopped, or removed by a reload)
    Cancelled {
        why: String,
    },
}

/// What is known of a roll when it ends.
pub(super) struct Ended {
    pub reason: StopReason,
    pub started: Instant,
    pub replaced: u32,
    pub of: u32,
}

impl Supervisor {
    /// The program's roll ended (it is taken off the program): log it once and keep it as
    /// `last_roll`.
    pub(super) fn end_roll(&mut self, pi: usize, end: End, now: Instant) {
        let Some(r) = self.programs[pi].roll.take() else {
            return;
        };
        let ended = Ended {
            reason: r.reason,
            started: r.started,
            replaced: r.replaced,
            of: r.of,
        };
        self.record_roll(pi, ended, end, now);
    }

    /// A roll waiting for a new preloader ended before it replaced anything.
    pub(super) fn end_deferred_roll(&mut self, pi: usize, end: End, now: Instant) {
        let p = &mut self.programs[pi];
        let Some((reason, started)) = p.roll_deferred.take() else {
            return;
        };
        let of = p.workers.iter().filter(|w| !w.slot.is_leaving()).count() as u32;
        let ended = Ended {
            reason,
            started,
            replaced: 0,
            of,
        };
        self.record_roll(pi, ended, end, now);
    }

    fn record_roll(&mut self, pi: usize, r: Ended, end: End, now: Instant) {
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let took = now.duration_since(r.started);
        let what = r.reason.as_str();
        let serving = p.workers.iter().any(|w| w.slot.is_ready());
        let (outcome, worker, why, message) = match &end {
            End::Done => {
                let message = format!(
                    "program {name}: rolling {what} done in {:.2}s ({} of {} worker{} replaced)",
                    took.as_secs_f64(),
                    r.replaced,
                    r.of,
                    plural(r.of as usize)
                );
                info!(program = %name, "{message}");
                ("done", None, None, message)
            }
            End::Abandoned { worker, why } => {
                let kept = if serving {
                    "the old workers keep serving"
                } else {
                    "no old worker was serving"
                };
                let message = format!("rolling {what} of {name} abandoned: {why}; {kept}");
                error!(program = %name, "{message}");
                ("abandoned", *worker, Some(why.clone()), message)
            }
            End::Cancelled { why } => {
                let message = format!(
                    "rolling {what} of {name} cancelled after {} of {} worker{}: {why}",
                    r.replaced,
                    r.of,
                    plural(r.of as usize)
                );
                warn!(program = %name, "{message}");
                ("cancelled", None, Some(why.clone()), message)
            }
        };
        let ended_at = unix_now();
        p.last_roll = Some(LastRoll {
            seq: p.last_roll.as_ref().map_or(0, |l| l.seq) + 1,
            reason: what,
            outcome,
            started_at: ended_at.saturating_sub(took.as_secs()),
            ended_at,
            took_s: took.as_secs_f64(),
            replaced: r.replaced,
            of: r.of,
            worker,
            why,
            old_workers_kept: serving && matches!(end, End::Abandoned { .. }),
            message: message.clone(),
        });
        let (program, why) = (
            name.clone(),
            p.last_roll.as_ref().and_then(|l| l.why.clone()),
        );
        self.emit(crate::api::events::Event::RollFinished {
            program,
            outcome,
            why,
        });
        if r.reason == StopReason::Reload && outcome == "abandoned" {
            // what the reload asked for did not happen: the README promises it here too
            self.last_reload =
                Some(serde_json::json!({"ok": false, "message": message, "at": ended_at}));
        }
    }

    /// The roll's replacement `new` (worker `index`) will never be ready: the roll is over, the
    /// replacement is killed and removed, and the old workers keep serving.
    pub(super) fn abandon_roll(
        &mut self,
        pi: usize,
        new: u64,
        index: u32,
        why: &str,
        now: Instant,
    ) {
        let Some(reason) = self.programs[pi].roll.as_ref().map(|r| r.reason) else {
            return;
        };
        let name = self.programs[pi].cfg.name.clone();
        let why = format!("the replacement for {name}.{index} did not become ready ({why})");
        let end = End::Abandoned {
            worker: Some(index),
            why,
        };
        self.end_roll(pi, end, now);
        let kill = (Signal::SIGKILL, Duration::ZERO);
        self.stop_worker_with(pi, new, kill, AfterStop::Remove, reason, now);
    }
}

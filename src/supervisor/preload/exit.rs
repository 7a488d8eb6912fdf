//! A preloader's end: it failed to load (`preload_failed`, `next_failed`: logged with the reason,
//! retried after the backoff, a roll that waited for it abandoned), it exited
//! (`on_preloader_exit`), or it is taken away (`drop_preloader`, `drop_next`, and
//! `kill_preloaders` at shutdown), its cgroup with it; slots waiting for one of its forks wait
//! for the next preloader.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, warn};

use super::{drover_words, Cause, Failure, Preloader, Role};
use crate::process::reaper::ExitStatus;
use crate::state::{backoff_delay, StopReason};
use crate::supervisor::roll_outcome::End;
use crate::supervisor::{RunState, Supervisor};

impl Supervisor {
    /// Kill the `next` preloader (it serves nothing yet) and what it left.
    pub(super) fn drop_next(&mut self, pi: usize, _now: Instant) {
        let Some(mut l) = self.programs[pi].preload.next.take() else {
            return;
        };
        Self::retire_pump(l.pump.take());
        self.children.signal_group(l.pid, Signal::SIGKILL);
        if let Some(cg) = l.cgroup.take() {
            cg.kill_all();
            self.cgroup_gc.push(cg);
        }
    }

    /// The `next` preloader failed to load the new code: the roll it was for is abandoned, and
    /// the old preloader and workers keep serving (no retry: the deploy failed, as a roll whose
    /// replacement never gets ready does).
    pub(super) fn next_failed(&mut self, pi: usize, why: Failure, now: Instant) {
        self.drop_next(pi, now);
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let said = why
            .detail
            .as_ref()
            .map(|d| format!(" (it said: {d})"))
            .unwrap_or_default();
        let hint = if why.cause == Cause::Protocol {
            " (preload = true needs a command that speaks drover's preload protocol, docs/worker-protocol.md: drover-uvicorn does)"
        } else {
            ""
        };
        let keeps = if p.preload.current.is_some() {
            "the current preloader and the workers keep serving the old code"
        } else {
            "the workers keep serving"
        };
        error!(program = %name, "program {name}: the new preloader failed: {}{said}; {keeps}{hint}", why.summary);
        let abandoned = End::Abandoned {
            worker: None,
            why: format!("the new preloader failed: {}", why.summary),
        };
        p.preload.error = Some(why);
        if p.preload.current.is_none() && p.preload.retry_at.is_none() {
            // nothing loaded at all: something must, after the backoff
            let jitter = self.jitter();
            let p = &mut self.programs[pi];
            p.preload.failures += 1;
            p.preload.retry_at =
                Some(now + backoff_delay(&p.cfg.backoff, p.preload.failures, jitter));
        }
        self.end_deferred_roll(pi, abandoned, now);
    }

    /// Take the program's preloader away (killed with `sig`); slots waiting for one of its forks
    /// wait for the next preloader instead.
    pub(super) fn drop_preloader(
        &mut self,
        pi: usize,
        sig: Signal,
        now: Instant,
    ) -> Option<Preloader> {
        let mut old = self.programs[pi].preload.current.take()?;
        Self::retire_pump(old.pump.take());
        self.children.signal_group(old.pid, sig);
        let cgroup = old.cgroup.take();
        if sig != Signal::SIGKILL {
            // one that ignores it is killed at its program's stop_timeout, not kept forever
            let at = now + self.programs[pi].cfg.stop_timeout;
            self.programs[pi]
                .preload
                .retiring
                .push((old.pid, at, cgroup));
        } else if let Some(cg) = cgroup {
            cg.kill_all();
            self.cgroup_gc.push(cg);
        }
        for f in &old.pending {
            if let Some(w) = self.programs[pi].worker_mut(f.slot) {
                w.forking = None;
                w.awaiting_preloader = true;
                w.slot.postpone(now + Duration::from_secs(1));
            }
        }
        Some(old)
    }

    pub(super) fn preload_failed(&mut self, pi: usize, mut why: Failure, now: Instant) {
        // how it exited, if it did before the failure was declared (its last words awaited)
        if why.status.is_none() {
            why.status = self.programs[pi]
                .preload
                .current
                .as_ref()
                .and_then(|l| l.exited.map(|(st, _)| st));
        }
        self.drop_preloader(pi, Signal::SIGKILL, now);
        let jitter = self.jitter();
        let p = &mut self.programs[pi];
        let name = &p.cfg.name;
        p.preload.failures += 1;
        let delay = backoff_delay(&p.cfg.backoff, p.preload.failures, jitter);
        let said = why
            .detail
            .as_ref()
            .map(|d| format!(" (it said: {d})"))
            .unwrap_or_default();
        let hint = if why.cause == Cause::Protocol {
            " (preload = true needs a command that speaks drover's preload protocol, docs/worker-protocol.md: drover-uvicorn does)"
        } else {
            ""
        };
        error!(program = %name, "program {name}: the preloader failed: {}{said}; its workers wait; trying again in {delay:.1?}{hint}", why.summary);
        let abandoned = End::Abandoned {
            worker: None,
            why: format!("the new preloader failed: {}", why.summary),
        };
        p.preload.error = Some(why);
        p.preload.retry_at = Some(now + delay);
        // a roll that waited for this preloader will not happen
        self.end_deferred_roll(pi, abandoned, now);
        // workers forked from a preloader that is gone roll onto the one that loads next
        let p = &mut self.programs[pi];
        if p.preload.next.is_none() && p.workers.iter().any(|w| w.slot.pid().is_some()) {
            p.roll_deferred = Some((StopReason::Restart, now));
        }
    }

    /// Program `pi`'s preloader `pid` exited: a new one takes its place, after the backoff
    /// unless it had run long enough to be forgiven.
    pub(in crate::supervisor) fn on_preloader_exit(
        &mut self,
        pi: usize,
        pid: i32,
        status: ExitStatus,
        now: Instant,
    ) {
        if self.run != RunState::Running {
            self.programs[pi].preload.current = None;
            self.programs[pi].preload.next = None;
            return;
        }
        if self.role(pi, pid) == Some(Role::Next) {
            // its last words (an `error` before it exited) are still read; `check_preloaders`
            // gives up after LAST_WORDS
            if let Some(l) = self.programs[pi].preload.next.as_mut() {
                l.exited = Some((status, now));
            }
            return;
        }
        let name = self.programs[pi].cfg.name.clone();
        let Some(l) = self.programs[pi].preload.current.as_mut() else {
            return;
        };
        let Some(ready) = l.ready else {
            // an `error` it sent before exiting may still be unread: its reader delivers that,
            // or the end of its socket, and `check_preloaders` gives up after LAST_WORDS
            l.exited = Some((status, now));
            return;
        };
        let reset_after = self.programs[pi].cfg.backoff.reset_after;
        if now.duration_since(ready) >= reset_after {
            self.programs[pi].preload.failures = 0;
            warn!(program = %name, "program {name}: its preloader (pid {pid}) exited with {status}; starting a new one, the workers keep serving and roll onto it");
            self.drop_preloader(pi, Signal::SIGKILL, now);
            self.restart_after_loss(pi, now);
        } else {
            let f = drover_words(format!(
                "it (pid {pid}) exited with {status} {:.1?} after loading (less than backoff.reset_after {reset_after:?}); the workers keep serving",
                now.duration_since(ready)
            ));
            self.preload_failed(pi, f, now);
        }
    }

    /// The current preloader is lost (it died): start another, and roll the workers onto it
    /// once it has loaded — they run code from a preloader that is gone. A `next` already
    /// loading new code takes its place instead.
    fn restart_after_loss(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        if p.preload.next.is_none() {
            if p.roll_deferred.is_none() {
                p.roll_deferred = Some((StopReason::Restart, now));
            }
            self.start_preloader(pi, now);
        }
    }

    /// At shutdown: preloaders serve nothing, so they go at once (old ones asked to stop too).
    pub(in crate::supervisor) fn kill_preloaders(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            self.drop_preloader(pi, Signal::SIGKILL, now);
            self.drop_next(pi, now);
            for (pid, _, cg) in std::mem::take(&mut self.programs[pi].preload.retiring) {
                self.children.signal_group(pid, Signal::SIGKILL);
                if let Some(cg) = cg {
                    cg.kill_all();
                    self.cgroup_gc.push(cg);
                }
            }
        }
    }
}

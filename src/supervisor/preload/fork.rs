//! The fork exchange: a fork is asked of the ready preloader with a deadline (`request_fork`),
//! never waited for; its `pid N` answer is a claim checked against the kernel's facts before
//! the worker joins its cgroup and is told to serve (`on_fork_claim`); a fork that came to
//! nothing backs its slot off, counted (`fork_failed_for`), or leaves it waiting for the
//! preloader again, uncounted (`reset_forking`).

use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::{drover_words, Pending, FORK_TIMEOUT};
use crate::process::claim::{self, Expected};
use crate::supervisor::Supervisor;

impl Supervisor {
    /// Ask the preloader for worker `index` of slot `id`, its output on `out`. Never waits: the
    /// answer arrives as an event. False when no preloader is ready (the slot waits for one).
    pub(in crate::supervisor) fn request_fork(
        &mut self,
        pi: usize,
        id: u64,
        index: u32,
        out: Option<i32>,
        now: Instant,
    ) -> Result<bool, String> {
        let ready = self.programs[pi]
            .preload
            .current
            .as_ref()
            .is_some_and(|l| l.ready.is_some());
        if !ready {
            return Ok(false);
        }
        self.worker_cgroup(pi, id, index)
            .map_err(|e| format!("cannot set up its cgroup: {e}"))?;
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let asked_at = claim::boot_ticks();
        if let Err(e) = l.ch.fork(index, out) {
            let f = drover_words(format!("it could not be asked for a worker: {e}"));
            self.preload_failed(pi, f, now);
            return Ok(false);
        }
        l.expect.add_permits(1);
        let deadline = now + FORK_TIMEOUT;
        l.pending.push_back(Pending {
            slot: id,
            index,
            asked_at,
            deadline,
        });
        if let Some(w) = self.programs[pi].worker_mut(id) {
            w.forking = Some(deadline);
            // the slot's own timer stays quiet until the answer or the fork deadline
            w.slot.postpone(deadline + Duration::from_secs(1));
        }
        Ok(true)
    }

    /// `pid N` arrived for the oldest request: place the worker if the kernel agrees it is one.
    pub(super) fn on_fork_claim(
        &mut self,
        pi: usize,
        claimed: i32,
        sender: Option<i32>,
        now: Instant,
    ) {
        let uid = self.programs[pi]
            .cfg
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::getuid().as_raw(), |i| i.uid);
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let f = l.pending.pop_front().expect("checked");
        let expected = Expected {
            drover: std::process::id() as i32,
            guard: self.children.guard_pid(),
            preloader: l.pid,
            uid,
            asked_at: f.asked_at,
        };
        let ch = l.ch.clone();
        let name = self.programs[pi].cfg.name.clone();
        let children = &self.children;
        let held = |p: i32| children.holds(p);
        let verified = claim::verify(claimed, sender.unwrap_or(0), held, &expected);
        let fd = match verified {
            Ok(fd) => fd,
            // the worker died before drover read its claim (OOM-killed while it waited for
            // `go`, say): a failed fork of that slot, not a lie
            Err(claim::Refused::Exited(_) | claim::Refused::NoProcess(_)) => {
                ch.abort(claimed);
                let why = format!("worker pid {claimed} was gone before it could be placed");
                return self.fork_failed_for(pi, f.slot, f.index, why, now);
            }
            Err(refused) => {
                error!(program = %name, "program {name}: the preloader's answer for worker {name}.{} is refused: {refused}; drover does not act on that pid. The preloader is killed and retried", f.index);
                ch.abort(claimed);
                let hint = if matches!(refused, claim::Refused::NotSelf { .. }) {
                    " (the worker must send `pid PID` itself: docs/worker-protocol.md; drover-uvicorn does)"
                } else {
                    ""
                };
                let failure = drover_words(format!(
                    "it claimed a worker drover refused: {refused}{hint}"
                ));
                self.reset_forking(pi, f.slot, now);
                return self.preload_failed(pi, failure, now);
            }
        };
        self.children.hold(fd);
        let placed = match self.programs[pi].worker(f.slot) {
            None => Err("its slot is gone (scaled down or replaced)".to_string()),
            Some(w) => match &w.cgroup {
                Some((cg, _)) => cg
                    .join(claimed)
                    .map_err(|e| format!("cannot move pid {claimed} into its cgroup: {e}")),
                None => Ok(()),
            },
        };
        if let Err(why) = placed {
            info!(program = %name, "worker {name}.{} (pid {claimed}) not started: {why}; it exits without serving", f.index);
            ch.abort(claimed);
            self.reset_forking(pi, f.slot, now);
            return;
        }
        if let Err(e) = ch.go(claimed) {
            warn!(program = %name, "worker {name}.{} (pid {claimed}): cannot tell the preloader to let it serve ({e}); it will exit, and be restarted", f.index);
        }
        self.started(pi, f.slot, claimed, now);
    }

    /// The preloader could not fork the oldest request: that slot backs off, counted.
    pub(super) fn on_fork_error(&mut self, pi: usize, text: String, now: Instant) {
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let f = l.pending.pop_front().expect("checked");
        let why = format!("the preloader could not fork it: {text}");
        self.fork_failed_for(pi, f.slot, f.index, why, now);
    }

    /// A fork for slot `slot` came to nothing: it backs off, counted, as a failed spawn does.
    fn fork_failed_for(&mut self, pi: usize, slot: u64, index: u32, why: String, now: Instant) {
        let jitter = self.jitter();
        let (name, sc) = (
            self.programs[pi].cfg.name.clone(),
            self.programs[pi].slot_cfg,
        );
        self.metrics.restart(&name, "spawn");
        if let Some(w) = self.programs[pi].worker_mut(slot) {
            w.forking = None;
            w.awaiting_preloader = false;
            w.slot.spawn_failed(why.clone(), now, &sc.backoff, jitter);
            let delay = w.slot.last_delay();
            error!(program = %name, worker = index, "worker {name}.{index}: {why} (retrying in {delay:.1?})");
        }
    }

    /// A slot whose fork came to nothing waits for the preloader again, uncounted.
    fn reset_forking(&mut self, pi: usize, slot: u64, now: Instant) {
        if let Some(w) = self.programs[pi].worker_mut(slot) {
            w.forking = None;
            w.awaiting_preloader = true;
            w.slot.postpone(now + Duration::from_secs(1));
        }
    }
}

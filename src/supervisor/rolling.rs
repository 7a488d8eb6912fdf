//! Rolling restarts (reload, `POST …/restart`, a watched file, a memory recycle): for each old
//! worker in turn a replacement starts *beside* it at the same index; only when the replacement
//! is ready is the old one stopped gracefully. drover holds the listening socket throughout, so
//! the number of ready workers never drops and no connection is refused. A replacement that
//! fails to become ready abandons the roll; the old workers keep serving.
//!
//! `Roll::next` decides the next step from what it sees of the workers; it is pure and
//! table-tested. The loop carries the step out and asks again until it has to wait.

use std::collections::VecDeque;
use std::time::Instant;

use tracing::info;

use super::roll_outcome::End;
use super::{plural, RunState, Supervisor};
use crate::state::{AfterStop, Phase, PhaseKind, StopReason};

#[derive(Debug)]
pub(super) struct Roll {
    pub reason: StopReason,
    pub started: Instant,
    /// old slot ids still to replace
    pending: VecDeque<u64>,
    /// (old slot id, its replacement's slot id)
    current: Option<(u64, u64)>,
    /// old workers replaced (or restarted in place) so far, of how many planned
    pub replaced: u32,
    pub of: u32,
}

/// What the roll sees of one worker.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub phase: PhaseKind,
    pub index: u32,
    /// how its last process ended, for the message when a replacement fails
    pub last_exit: Option<String>,
}

/// The next step of a roll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Step {
    /// the replacement is not ready yet
    Wait,
    /// the replacement is ready: stop `old` for good
    Retire { old: u64 },
    /// the replacement failed: the roll is over, the replacement is killed
    Abandon { new: u64, index: u32, why: String },
    /// start a replacement beside `old`, then call `replacing`
    Replace { old: u64 },
    /// `old` has no process to preserve: restart it in place
    RestartInPlace { old: u64 },
    /// every worker is replaced
    Done,
}

impl Roll {
    pub fn new(reason: StopReason, now: Instant, olds: VecDeque<u64>) -> Roll {
        Roll {
            reason,
            started: now,
            of: olds.len() as u32,
            pending: olds,
            current: None,
            replaced: 0,
        }
    }

    /// The replacement being waited for, if any.
    pub fn replacement(&self) -> Option<u64> {
        self.current.map(|(_, new)| new)
    }

    /// Add a worker to replace (a memory recycle during a roll), unless it is already planned.
    pub fn also(&mut self, id: u64) {
        if self.current.is_none_or(|(old, _)| old != id) && !self.pending.contains(&id) {
            self.pending.push_back(id);
            self.of += 1;
        }
    }

    /// Another roll was asked for while this one runs (a reload, a preloader ready, a watched
    /// file): every worker running now — the replacement in flight too, started from what
    /// is now old — is replaced again once this roll has done what it planned. One roll at a
    /// time per program, never two overwriting each other.
    pub fn merge(&mut self, reason: StopReason, ids: impl IntoIterator<Item = u64>) {
        self.reason = reason;
        for id in ids {
            if !self.pending.contains(&id) {
                self.pending.push_back(id);
                self.of += 1;
            }
        }
    }

    /// The replacement for `old` has been started.
    pub fn replacing(&mut self, old: u64, new: u64) {
        self.current = Some((old, new));
    }

    pub fn next(&mut self, seen: impl Fn(u64) -> Option<Seen>) -> Step {
        if let Some((old, new)) = self.current {
            let s = seen(new);
            match s.as_ref().map(|s| s.phase) {
                Some(PhaseKind::Running) => {
                    self.current = None;
                    self.replaced += 1;
                    return Step::Retire { old };
                }
                // a preloaded replacement waits for its fork: not ready yet, not failed
                Some(PhaseKind::Starting | PhaseKind::Idle | PhaseKind::Waiting) => {
                    return Step::Wait
                }
                // the replacement and its old worker are going together (the program was
                // scaled down past this index): nothing to replace there, the roll goes on
                _ if matches!(seen(old).map(|o| o.phase), None | Some(PhaseKind::Stopping)) => {
                    self.current = None;
                    self.of = self.of.saturating_sub(1);
                }
                other => {
                    self.pending.clear();
                    self.current = None;
                    let why = match (other, s.as_ref().and_then(|s| s.last_exit.clone())) {
                        (_, Some(e)) => e,
                        (None, _) => "it was removed".into(),
                        _ => "it stopped".into(),
                    };
                    let index = s.map_or(0, |s| s.index);
                    return Step::Abandon { new, index, why };
                }
            }
        }
        while let Some(old) = self.pending.pop_front() {
            match seen(old).map(|s| s.phase) {
                None | Some(PhaseKind::Stopping) => {
                    // gone or leaving since it was planned: nothing to replace
                    self.of = self.of.saturating_sub(1);
                    continue;
                }
                Some(PhaseKind::Starting | PhaseKind::Running) => return Step::Replace { old },
                Some(_) => {
                    self.replaced += 1;
                    return Step::RestartInPlace { old };
                }
            }
        }
        Step::Done
    }
}

impl Supervisor {
    pub(super) fn start_roll(&mut self, pi: usize, reason: StopReason, now: Instant) {
        if self.roll_needs_new_preloader(pi, reason, now) {
            // the roll begins once the new preloader is ready (or is abandoned if it fails);
            // it counts from now
            let p = &mut self.programs[pi];
            let since = p.roll_deferred.map_or(now, |(_, t)| t);
            p.roll_deferred = Some((reason, since));
            return;
        }
        self.begin_roll(pi, reason, now);
    }

    /// The roll itself, its code in place (a preloaded program's new preloader is ready).
    pub(super) fn begin_roll(&mut self, pi: usize, reason: StopReason, now: Instant) {
        let p = &mut self.programs[pi];
        let asked = p.roll_deferred.take().map_or(now, |(_, t)| t);
        let mut olds: Vec<(u32, u64)> = p
            .workers
            .iter()
            .filter(|w| !w.slot.is_leaving())
            .map(|w| (w.slot.index(), w.id()))
            .collect();
        olds.sort_unstable();
        let (name, n) = (&p.cfg.name, olds.len());
        let ids = olds.into_iter().map(|(_, id)| id);
        match p.roll.as_mut() {
            Some(r) => {
                info!(program = %name, "program {name}: rolling {} of {n} worker{} after the roll in progress ({})", reason.as_str(), plural(n), r.reason.as_str());
                r.merge(reason, ids);
            }
            None => {
                info!(program = %name, "program {name}: rolling {} of {n} worker{}", reason.as_str(), plural(n));
                p.roll = Some(Roll::new(reason, asked, ids.collect()));
                let program = name.clone();
                self.emit(crate::api::events::Event::RollStarted {
                    program,
                    reason: reason.as_str(),
                    workers: n,
                });
            }
        }
    }

    /// Workers older than their program's max_lifetime are replaced through a roll, one at a
    /// time, their replacements ready first. A program already rolling waits for it to end.
    pub(super) fn check_lifetimes(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let p = &mut self.programs[pi];
            if p.cfg.max_lifetime.is_none() || p.roll.is_some() || p.removing {
                continue;
            }
            let mut due: Vec<(Instant, u64)> = p
                .workers
                .iter()
                .filter(|w| w.slot.is_ready() && w.memory.is_none())
                .filter_map(|w| w.retire_at.filter(|t| now >= *t).map(|t| (t, w.id())))
                .collect();
            if due.is_empty() {
                continue;
            }
            due.sort_unstable();
            let name = &p.cfg.name;
            let life = p.cfg.max_lifetime.unwrap_or_default();
            info!(program = %name, "program {name}: {} worker{} older than max_lifetime {life:?}: replacing, ready first", due.len(), plural(due.len()));
            let ids = due.into_iter().map(|(_, id)| id).collect();
            p.roll = Some(Roll::new(StopReason::Lifetime, now, ids));
            let (program, workers) = (name.clone(), p.roll.as_ref().map_or(0, |r| r.of as usize));
            self.emit(crate::api::events::Event::RollStarted {
                program,
                reason: StopReason::Lifetime.as_str(),
                workers,
            });
            self.advance_rolls(now);
        }
    }

    pub(super) fn advance_rolls(&mut self, now: Instant) {
        if self.run != RunState::Running {
            for p in &mut self.programs {
                p.roll = None;
            }
            return;
        }
        for pi in 0..self.programs.len() {
            while self.roll_step(pi, now) {}
        }
    }

    /// Carry out one step of the program's roll; true to ask for the next one at once.
    fn roll_step(&mut self, pi: usize, now: Instant) -> bool {
        let p = &mut self.programs[pi];
        let Some(roll) = p.roll.as_mut() else {
            return false;
        };
        let reason = roll.reason;
        let workers = &p.workers;
        let timeout = p.cfg.readiness.timeout;
        let step = roll.next(|id| {
            workers.iter().find(|w| w.id() == id).map(|w| Seen {
                // a replacement waiting for its fork or its preloader is `Waiting`: the roll
                // waits for it too
                phase: w.slot.phase().kind(),
                index: w.slot.index(),
                last_exit: match w.slot.phase() {
                    Phase::Stopping {
                        reason: StopReason::StartTimeout,
                        ..
                    } => Some(format!(
                        "not ready within readiness.timeout {timeout:?}; stopped"
                    )),
                    Phase::Stopping { reason, .. } => {
                        Some(format!("drover stopped it: {}", reason.as_str()))
                    }
                    _ => w.slot.last_exit().map(|e| e.to_string()),
                },
            })
        });
        let name = p.cfg.name.clone();
        match step {
            Step::Wait => false,
            Step::Retire { old } => {
                if self.stop_worker(pi, old, AfterStop::Remove, reason, now) {
                    self.metrics.restart(&name, reason.as_str());
                }
                true
            }
            Step::Abandon { new, index, why } => {
                self.abandon_roll(pi, new, index, &why, now);
                false
            }
            // a job (it runs to an end: restart = "never", or a `succeeded` dependency) is
            // never doubled: its running process is stopped, then run again in place
            Step::Replace { old } if self.is_job(pi) => {
                if let Some(r) = self.programs[pi].roll.as_mut() {
                    r.replaced += 1;
                }
                let sc = self.programs[pi].slot_cfg;
                if let Some(w) = self.programs[pi].worker_mut(old) {
                    let acts = w.slot.restart_in_place(now, &sc, reason);
                    self.apply(pi, old, acts, now);
                }
                true
            }
            Step::Replace { old } => {
                if let Some(new) = self.add_replacement(pi, old, now) {
                    if let Some(r) = self.programs[pi].roll.as_mut() {
                        r.replacing(old, new);
                    }
                }
                false
            }
            Step::RestartInPlace { old } => {
                let sc = self.programs[pi].slot_cfg;
                if let Some(w) = self.programs[pi].worker_mut(old) {
                    let acts = w.slot.restart_in_place(now, &sc, reason);
                    self.apply(pi, old, acts, now);
                }
                true
            }
            Step::Done => {
                self.end_roll(pi, End::Done, now);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use PhaseKind::*;

    fn seen(map: &HashMap<u64, PhaseKind>) -> impl Fn(u64) -> Option<Seen> + '_ {
        |id| {
            map.get(&id).map(|p| Seen {
                phase: *p,
                index: id as u32,
                last_exit: (*p == Backoff).then(|| "exit code 1".to_string()),
            })
        }
    }

    #[test]
    fn a_roll_replaces_one_worker_at_a_time_ready_first() {
        let mut w: HashMap<u64, PhaseKind> = [(1, Running), (2, Running)].into();
        let mut r = Roll::new(StopReason::Reload, Instant::now(), VecDeque::from([1, 2]));
        // (what the workers look like before the step, the step)
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 1 });
        r.replacing(1, 11);
        w.insert(11, Waiting);
        assert_eq!(
            r.next(seen(&w)),
            Step::Wait,
            "its fork is asked of the preloader"
        );
        w.insert(11, Starting);
        assert_eq!(r.next(seen(&w)), Step::Wait, "the replacement is not ready");
        assert_eq!(r.next(seen(&w)), Step::Wait);
        w.insert(11, Running);
        assert_eq!(r.next(seen(&w)), Step::Retire { old: 1 });
        w.insert(1, Stopping);
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 2 });
        r.replacing(2, 12);
        w.insert(12, Running);
        assert_eq!(r.next(seen(&w)), Step::Retire { old: 2 });
        assert_eq!(r.next(seen(&w)), Step::Done);
    }

    #[test]
    fn a_replacement_that_fails_abandons_the_roll() {
        let mut w: HashMap<u64, PhaseKind> = [(1, Running), (2, Running)].into();
        let mut r = Roll::new(StopReason::Restart, Instant::now(), VecDeque::from([1, 2]));
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 1 });
        r.replacing(1, 11);
        w.insert(11, Backoff);
        assert_eq!(
            r.next(seen(&w)),
            Step::Abandon {
                new: 11,
                index: 11,
                why: "exit code 1".into()
            }
        );
        assert_eq!(r.next(seen(&w)), Step::Done, "nothing else is replaced");
        // a replacement removed under the roll (scaled away)
        let mut r = Roll::new(StopReason::Restart, Instant::now(), VecDeque::from([1]));
        r.next(seen(&w));
        r.replacing(1, 99);
        assert!(
            matches!(r.next(seen(&w)), Step::Abandon { new: 99, why, .. } if why == "it was removed")
        );
    }

    #[test]
    fn workers_gone_or_leaving_are_skipped_and_waiting_ones_restart_in_place() {
        let w: HashMap<u64, PhaseKind> = [(2, Stopping), (3, Backoff), (4, Done)].into();
        let mut r = Roll::new(
            StopReason::Reload,
            Instant::now(),
            VecDeque::from([1, 2, 3, 4]),
        );
        assert_eq!(r.next(seen(&w)), Step::RestartInPlace { old: 3 });
        assert_eq!(r.next(seen(&w)), Step::RestartInPlace { old: 4 });
        assert_eq!(r.next(seen(&w)), Step::Done);
    }

    #[test]
    fn a_replacement_scaled_away_with_its_old_worker_is_not_a_failed_roll() {
        let mut w: HashMap<u64, PhaseKind> = [(1, Running), (2, Running)].into();
        let mut r = Roll::new(StopReason::Reload, Instant::now(), VecDeque::from([1, 2]));
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 1 });
        r.replacing(1, 11);
        // scaled down past index 1's position: both go (here: the replacement removed, the old
        // one stopping)
        w.insert(1, Stopping);
        assert_eq!(
            r.next(seen(&w)),
            Step::Replace { old: 2 },
            "the roll goes on"
        );
    }

    #[test]
    fn a_roll_asked_for_during_a_roll_replaces_everything_once_more() {
        let mut w: HashMap<u64, PhaseKind> = [(1, Running), (2, Running)].into();
        let mut r = Roll::new(StopReason::Reload, Instant::now(), VecDeque::from([1, 2]));
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 1 });
        r.replacing(1, 11);
        w.insert(11, Starting);
        // a second reload now: 1, 2 and the replacement 11 are all from before it
        r.merge(StopReason::Reload, [1, 2, 11]);
        w.insert(11, Running);
        assert_eq!(r.next(seen(&w)), Step::Retire { old: 1 });
        w.remove(&1);
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 2 });
        r.replacing(2, 12);
        w.insert(12, Running);
        assert_eq!(r.next(seen(&w)), Step::Retire { old: 2 });
        w.remove(&2);
        // 1 is gone (skipped); 11 is replaced in its turn; 2 was pending already
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 11 });
        r.replacing(11, 21);
        w.insert(21, Running);
        assert_eq!(r.next(seen(&w)), Step::Retire { old: 11 });
        w.remove(&11);
        assert_eq!(r.next(seen(&w)), Step::Done);
    }

    #[test]
    fn a_memory_recycle_joins_a_roll_once() {
        let mut r = Roll::new(StopReason::Memory, Instant::now(), VecDeque::from([1]));
        r.also(1);
        r.also(2);
        r.also(2);
        let w: HashMap<u64, PhaseKind> = [(1, Running), (2, Running)].into();
        assert_eq!(r.next(seen(&w)), Step::Replace { old: 1 });
        r.replacing(1, 11);
        r.also(1);
        assert_eq!(r.pending, VecDeque::from([2]));
    }
}

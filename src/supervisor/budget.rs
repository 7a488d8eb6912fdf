//! Budgets: each worker's memory against `memory_soft` (replaced gracefully through the rolling
//! path) and `memory_hard` (killed, where no cgroup has the kernel do it), CPU sampled for
//! `/status` and the autoscaler. What to do with a figure is `memory_decision`, pure and
//! table-tested; the cgroup v1 threshold eventfd reports a crossing the moment it happens.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use tracing::{debug, error, info, warn};

use super::rolling::Roll;
use super::{Event, RunState, Supervisor};
use crate::config::{fmt_size, WorkerBudget};
use crate::resources::autoscale::{Decision, Inputs};
use crate::resources::usage;
use crate::state::{KillCause, StopReason};

/// What drover does about a worker's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MemoryAction {
    /// above memory_soft: replace it gracefully (its replacement ready first)
    Recycle,
    /// above memory_hard, and no cgroup enforces it: kill its group
    Kill,
}

/// Sampled usage of one worker.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub memory: Option<u64>,
    pub cpu_percent: Option<f64>,
    ticks: u64,
    at: Option<Instant>,
}

impl Usage {
    /// A new sample: CPU % over the time since the previous one.
    pub fn sampled(&mut self, memory: Option<u64>, cpu_ticks: u64, hz: f64, now: Instant) {
        if let Some(at) = self.at {
            let dt = now.duration_since(at).as_secs_f64();
            if dt > 0.0 && cpu_ticks >= self.ticks {
                self.cpu_percent = Some((cpu_ticks - self.ticks) as f64 / hz / dt * 100.0);
            }
        }
        self.ticks = cpu_ticks;
        self.at = Some(now);
        self.memory = memory;
    }
}

/// What to do about a worker using `used` bytes, given its budget, whether the kernel enforces
/// memory_hard (a memory cgroup), and what drover is already doing about it.
pub(super) fn memory_decision(
    used: u64,
    budget: &WorkerBudget,
    kernel_enforces_hard: bool,
    already: Option<MemoryAction>,
) -> Option<MemoryAction> {
    if let Some(hard) = budget.memory_hard {
        if !kernel_enforces_hard && used > hard && already != Some(MemoryAction::Kill) {
            return Some(MemoryAction::Kill);
        }
    }
    match budget.memory_soft {
        Some(soft) if used >= soft && already.is_none() => Some(MemoryAction::Recycle),
        _ => None,
    }
}

impl Supervisor {
    /// The slot's cgroup `cgroup.procs` fds (created on first use); none without cgroups.
    pub(super) fn worker_cgroup(
        &mut self,
        pi: usize,
        id: u64,
        index: u32,
    ) -> std::io::Result<Vec<i32>> {
        let Some(cgs) = self.cx.budget.cgroups.clone() else {
            return Ok(vec![]);
        };
        let events = self.events.clone();
        let p = &mut self.programs[pi];
        let (prog, name, budget) = (p.id, p.cfg.name.clone(), p.cfg.budget.clone());
        let Some(w) = p.worker_mut(id) else {
            return Ok(vec![]);
        };
        if let Some((cg, _)) = &w.cgroup {
            return Ok(cg.procs_fds());
        }
        let cg = cgs.slot(&format!("{name}.{index}-{id}"), &budget)?;
        // v1 can tell us the moment usage crosses the soft budget
        if let (Some(soft), true) = (budget.memory_soft, cg.memory.is_some()) {
            match cg.usage_notifier(soft) {
                Ok(efd) => {
                    tokio::spawn(watch_threshold(efd, events, prog, id));
                }
                Err(e) => debug!(
                    "program {name}: no memory threshold notification ({e}); sampling will notice"
                ),
            }
        }
        let fds = cg.procs_fds();
        let base = cg.oom_kills();
        w.cgroup = Some((cg, base));
        Ok(fds)
    }

    /// A cgroup's usage crossed the soft budget (v1 eventfd threshold).
    pub(super) fn on_memory_notice(&mut self, prog: u64, slot: u64, now: Instant) {
        let Some(pi) = self.pidx(prog) else { return };
        let p = &self.programs[pi];
        let Some(soft) = p.cfg.budget.memory_soft else {
            return;
        };
        let used = p
            .worker(slot)
            .and_then(|w| w.cgroup.as_ref())
            .and_then(|(cg, _)| cg.memory_bytes());
        if let Some(m) = used.filter(|m| *m >= soft) {
            self.memory_recycle(pi, slot, m, soft, now);
        }
    }

    /// Replace a worker above its soft budget through the rolling path: never KILL.
    fn memory_recycle(&mut self, pi: usize, id: u64, used: u64, soft: u64, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let Some(w) = p.worker_mut(id) else { return };
        if w.memory.is_some() || !w.slot.is_ready() {
            return;
        }
        let (idx, pid) = (w.slot.index(), w.slot.pid().unwrap_or(0));
        warn!(
            program = %name, worker = idx, pid,
            "worker {name}.{idx} uses {}, above memory_soft {}: replacing it gracefully",
            fmt_size(used), fmt_size(soft)
        );
        w.memory = Some(MemoryAction::Recycle);
        let ev = crate::api::events::Event::BudgetRecycle {
            program: name,
            worker: idx,
            pid,
            memory_bytes: used,
            memory_soft: soft,
        };
        match p.roll.as_mut() {
            Some(r) => r.also(id),
            None => p.roll = Some(Roll::new(StopReason::Memory, now, VecDeque::from([id]))),
        }
        self.emit(ev);
    }

    /// Every sample interval: usage, enforcement where no cgroup does it, autoscaling.
    pub(super) fn check_budgets(&mut self, now: Instant) {
        if !self.cx.budget.sample
            || self.run != RunState::Running
            || self.next_sample.is_none_or(|t| now < t)
        {
            return;
        }
        self.next_sample = Some(now + self.cfg.budget.sample_interval);
        let groups: HashSet<i32> = self
            .programs
            .iter()
            .flat_map(|p| p.workers.iter().filter_map(|w| w.slot.pid()))
            .collect();
        let proc_memory = self
            .programs
            .iter()
            .any(|p| p.workers.iter().any(|w| w.cgroup.is_none()));
        let sampled = usage::scan(&groups, proc_memory);
        let hz = usage::clock_ticks_per_sec();
        let mut todo: Vec<(usize, u64, MemoryAction, u64)> = vec![];
        for (pi, p) in self.programs.iter_mut().enumerate() {
            for w in &mut p.workers {
                let Some(pid) = w.slot.pid() else { continue };
                let g = sampled.get(&pid).copied().unwrap_or_default();
                let in_cgroup = w.cgroup.as_ref().is_some_and(|(cg, _)| cg.memory.is_some());
                let memory = match &w.cgroup {
                    Some((cg, _)) if in_cgroup => cg.memory_bytes(),
                    _ => (g.procs > 0).then_some(g.memory),
                };
                w.usage.sampled(memory, g.cpu_ticks, hz, now);
                let Some(m) = memory else { continue };
                if let Some(a) = memory_decision(m, &p.cfg.budget, in_cgroup, w.memory) {
                    todo.push((pi, w.id(), a, m));
                }
            }
        }
        for (pi, id, action, used) in todo {
            let b = self.programs[pi].cfg.budget.clone();
            match action {
                MemoryAction::Kill => {
                    self.memory_kill(pi, id, used, b.memory_hard.unwrap_or(0), now)
                }
                MemoryAction::Recycle => {
                    self.memory_recycle(pi, id, used, b.memory_soft.unwrap_or(0), now)
                }
            }
        }
        self.autoscale(now);
    }

    /// Above memory_hard where no cgroup enforces it: the state machine kills the group.
    fn memory_kill(&mut self, pi: usize, id: u64, used: u64, hard: u64, now: Instant) {
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let Some(w) = p.worker_mut(id) else { return };
        let (idx, pid) = (w.slot.index(), w.slot.pid().unwrap_or(0));
        error!(
            program = %name, worker = idx, pid,
            "worker {name}.{idx} (pid {pid}) uses {}, above memory_hard {}: killing its process group",
            fmt_size(used), fmt_size(hard)
        );
        w.memory = Some(MemoryAction::Kill);
        let acts = w.slot.kill(KillCause::MemoryHard);
        self.emit(crate::api::events::Event::BudgetKill {
            program: name,
            worker: idx,
            pid,
            memory_bytes: used,
            memory_hard: hard,
        });
        self.apply(pi, id, acts, now);
    }

    fn autoscale(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            let waiting = self.waiting(pi);
            let p = &mut self.programs[pi];
            if p.removing || p.roll.is_some() {
                continue;
            }
            let per_worker = p.cfg.budget.cpu.unwrap_or(1.0);
            let samples: Vec<f64> = p
                .workers
                .iter()
                .filter(|w| w.slot.is_ready())
                .filter_map(|w| w.usage.cpu_percent)
                .collect();
            let Some(a) = p.autoscaler.as_mut() else {
                continue;
            };
            let current = p.desired;
            let seen = Inputs {
                cpu: (!samples.is_empty())
                    .then(|| samples.iter().sum::<f64>() / samples.len() as f64 / per_worker),
                queue: waiting.map(|n| n as f64 / current.max(1) as f64),
            };
            // the budget caps how many workers fit
            let mut cap = u32::MAX;
            if let (Some(node), Some(hard)) = (self.cfg.budget.memory, p.cfg.budget.memory_hard) {
                cap = cap.min((node / hard) as u32);
            }
            if let (Some(node), Some(c)) = (self.cfg.budget.cpu, p.cfg.budget.cpu) {
                cap = cap.min((node / c + 1e-9).floor() as u32);
            }
            let Some(d) = a.decide(now, current, seen, cap) else {
                continue;
            };
            let name = &p.cfg.name;
            let inputs = describe(&d);
            if d.desired != current {
                info!(
                    program = %name,
                    "autoscale {name}: {current} -> {} workers ({inputs}; recommended {}, {})",
                    d.desired, d.recommended, d.why
                );
                self.scale(pi, d.desired, now, StopReason::Scale);
            } else {
                debug!("autoscale {name}: hold at {current} ({inputs}: {})", d.why);
            }
        }
    }

    /// Remove every slot cgroup and drover's parents, waiting briefly for the last exits.
    pub(super) async fn remove_cgroups(&mut self) {
        for p in &mut self.programs {
            for w in &mut p.workers {
                if let Some((cg, _)) = w.cgroup.take() {
                    self.cgroup_gc.push(cg);
                }
            }
        }
        for _ in 0..50 {
            self.cgroup_gc.retain(|cg| {
                cg.kill_all();
                !cg.remove()
            });
            if self.cgroup_gc.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(cg) = &self.cx.budget.cgroups {
            cg.remove();
        }
    }

    /// The guard empties and removes drover's cgroups if drover is killed.
    pub(super) fn guard_cgroups(&mut self) {
        if let (Some(g), Some(cg)) = (self.children.guard(), &self.cx.budget.cgroups) {
            let keep = cg.version == crate::resources::cgroup::Version::V2;
            let mut dirs: Vec<&std::path::PathBuf> =
                cg.memory.iter().chain(cg.cpu.iter()).collect();
            dirs.dedup();
            for d in dirs {
                g.cgroup(d, keep);
            }
        }
    }
}

/// Wait on a cgroup v1 memory threshold eventfd; each crossing becomes an `Event`.
async fn watch_threshold(
    efd: nix::sys::eventfd::EventFd,
    events: super::Events,
    prog: u64,
    slot: u64,
) {
    // SAFETY: the AsyncFd owns the eventfd, so the fd stays open for as long as it is registered.
    let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register(efd) }) else {
        return;
    };
    loop {
        let Ok(mut g) = afd.readable().await else {
            return;
        };
        match afd.get_ref().read() {
            Ok(_) => {
                if events.send(Event::MemoryCrossed { prog, slot }).is_err() {
                    return;
                }
            }
            Err(nix::errno::Errno::EAGAIN) => g.clear_ready(),
            Err(_) => return,
        }
    }
}

/// A decision's inputs, as the log says them: `cpu 80% of budget vs target 50% -> 4, queue 6.0
/// waiting per worker vs target 2 -> 6`.
fn describe(d: &Decision) -> String {
    let mut parts = vec![];
    if let Some(r) = &d.cpu {
        parts.push(format!(
            "cpu {:.0}% of budget vs target {:.0}% -> {}",
            r.value, r.target, r.recommended
        ));
    }
    if let Some(r) = &d.queue {
        parts.push(format!(
            "queue {:.1} waiting per worker vs target {} -> {}",
            r.value, r.target, r.recommended
        ));
    }
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_decisions() {
        const M: u64 = 1 << 20;
        let b = WorkerBudget {
            memory_soft: Some(400 * M),
            memory_hard: Some(512 * M),
            cpu: None,
        };
        use MemoryAction::*;
        // (used, kernel enforces hard, already doing, expected)
        let cases = [
            (100 * M, false, None, None),
            (400 * M, false, None, Some(Recycle)),
            (450 * M, false, Some(Recycle), None),
            (600 * M, false, None, Some(Kill)),
            (600 * M, false, Some(Recycle), Some(Kill)),
            (600 * M, false, Some(Kill), None),
            // a memory cgroup: the kernel kills above memory_hard, drover only recycles
            (600 * M, true, None, Some(Recycle)),
            (600 * M, true, Some(Recycle), None),
        ];
        for (used, kernel, already, want) in cases {
            assert_eq!(
                memory_decision(used, &b, kernel, already),
                want,
                "used {} MiB, kernel {kernel}, already {already:?}",
                used / M
            );
        }
        assert_eq!(
            memory_decision(u64::MAX, &WorkerBudget::default(), false, None),
            None
        );
    }

    #[test]
    fn cpu_percent_is_over_the_time_between_samples() {
        let t = Instant::now();
        let mut u = Usage::default();
        u.sampled(Some(5), 100, 100.0, t);
        assert_eq!(u.cpu_percent, None, "one sample says nothing about rate");
        u.sampled(Some(6), 150, 100.0, t + Duration::from_secs(1));
        assert_eq!(u.cpu_percent, Some(50.0));
        assert_eq!(u.memory, Some(6));
    }
}

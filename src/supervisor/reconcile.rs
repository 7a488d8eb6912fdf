//! Converge on exactly the configured workers, whatever happened before: one live worker per
//! index `0..desired`, as gunicorn's `manage_workers` and a Deployment's rollover do. Rolls,
//! scaling, reloads, preloaders coming and going all try to keep that true; this is the check
//! that does not trust them to — computed from what runs, never from what was meant to happen.
//!
//! It runs after every wake-up for each program that is running and not rolling (a roll has
//! two workers at one index on purpose). `plan` is pure and table-tested.

use std::collections::BTreeMap;
use std::time::Instant;

use tracing::warn;

use super::{RunState, Supervisor};
use crate::state::{AfterStop, StopReason};

/// What reconciliation sees of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    pub id: u64,
    pub index: u32,
    pub ready: bool,
    /// being stopped for good already: it does not count
    pub leaving: bool,
}

/// What to do: workers to stop for good, indexes to start a worker at.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Plan {
    pub stop: Vec<u64>,
    pub start: Vec<u32>,
}

/// One worker per index below `desired`: beyond it, everything goes; where two share an index,
/// the newest ready one stays (else the newest); a missing index gets a worker.
pub(super) fn plan(workers: &[Seen], desired: u32) -> Plan {
    let mut by_index: BTreeMap<u32, Vec<Seen>> = BTreeMap::new();
    for w in workers.iter().filter(|w| !w.leaving) {
        by_index.entry(w.index).or_default().push(*w);
    }
    let mut p = Plan::default();
    for (index, mut ws) in by_index.iter_mut().map(|(i, w)| (*i, std::mem::take(w))) {
        if index >= desired {
            p.stop.extend(ws.iter().map(|w| w.id));
            continue;
        }
        // the keeper last: ready before not, then newest (slot ids only grow)
        ws.sort_by_key(|w| (w.ready, w.id));
        ws.pop();
        p.stop.extend(ws.iter().map(|w| w.id));
    }
    p.start = (0..desired).filter(|i| !by_index.contains_key(i)).collect();
    p.stop.sort_unstable();
    p
}

impl Supervisor {
    pub(super) fn reconcile(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let p = &self.programs[pi];
            if p.roll.is_some() || p.removing || !p.started() {
                continue;
            }
            let seen: Vec<Seen> = p
                .workers
                .iter()
                .map(|w| Seen {
                    id: w.id(),
                    index: w.slot.index(),
                    ready: w.slot.is_ready(),
                    leaving: w.slot.is_leaving(),
                })
                .collect();
            let plan = plan(&seen, p.desired);
            if plan == Plan::default() {
                continue;
            }
            let name = p.cfg.name.clone();
            warn!(program = %name, "program {name}: {} worker(s) beyond the {} configured, {} missing: stopping {:?}, starting index(es) {:?}", plan.stop.len(), p.desired, plan.start.len(), plan.stop, plan.start);
            for id in plan.stop {
                self.stop_worker(pi, id, AfterStop::Remove, StopReason::Scale, now);
            }
            for index in plan.start {
                self.add_worker(pi, index, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: u64, index: u32, ready: bool) -> Seen {
        Seen {
            id,
            index,
            ready,
            leaving: false,
        }
    }

    /// (workers, desired, workers to stop, indexes to start)
    type Case = (Vec<Seen>, u32, Vec<u64>, Vec<u32>);

    #[test]
    fn converges_on_one_worker_per_index() {
        let cases: Vec<Case> = vec![
            (vec![w(1, 0, true), w(2, 1, true)], 2, vec![], vec![]),
            // the leak the issue found: six workers for workers = 2, five at index 0
            (
                vec![
                    w(1, 0, true),
                    w(2, 1, true),
                    w(3, 0, true),
                    w(4, 0, true),
                    w(5, 0, false),
                    w(6, 0, true),
                ],
                2,
                vec![1, 3, 4, 5],
                vec![],
            ),
            // the newest *ready* one stays, even if a newer one is still starting
            (vec![w(7, 0, true), w(9, 0, false)], 1, vec![9], vec![]),
            // none ready: the newest stays
            (vec![w(7, 0, false), w(9, 0, false)], 1, vec![7], vec![]),
            // beyond desired: gone; a hole: filled
            (vec![w(1, 0, true), w(3, 2, true)], 2, vec![3], vec![1]),
            (vec![], 3, vec![], vec![0, 1, 2]),
            (vec![w(1, 0, true)], 0, vec![1], vec![]),
        ];
        for (ws, desired, stop, start) in cases {
            assert_eq!(
                plan(&ws, desired),
                Plan { stop, start },
                "{ws:?} desired {desired}"
            );
        }
        // a worker already leaving neither counts nor is stopped again
        let leaving = Seen {
            leaving: true,
            ..w(1, 0, true)
        };
        assert_eq!(
            plan(&[leaving, w(2, 0, false)], 1),
            Plan::default(),
            "the leaving one is replaced by the starting one"
        );
    }
}

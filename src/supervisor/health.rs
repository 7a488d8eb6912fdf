//! Health: periodic checks of ready workers (hang detection from /proc, exec checks, an HTTP GET
//! through the shared socket attributed to the worker that accepted it); `failures` in a row
//! recycle the worker. The counting is `HealthState::record`, pure and table-tested.

use std::time::Instant;

use tracing::{debug, error, warn};

use super::readiness::ProbeKind;
use super::{plural, Event, RunState, Supervisor};
use crate::process::probe;
use crate::state::{AfterStop, StopReason};

/// A worker's health record.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct HealthState {
    /// consecutive failed checks
    pub failures: u32,
    /// an exec or HTTP check has passed (what `depends_on … = "healthy"` waits for)
    pub passed: bool,
    /// the last liveness sample, to compare the next one with
    pub sample: Option<probe::Sample>,
}

/// What one check result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Healthy,
    /// failed `n` in a row, below the threshold
    Failing(u32),
    /// failed `n` in a row: recycle it
    Recycle(u32),
}

impl HealthState {
    /// Count one result against `threshold` failures in a row; a recycle starts the count anew.
    pub fn record(&mut self, ok: bool, threshold: u32) -> Verdict {
        if ok {
            self.failures = 0;
            self.passed = true;
            return Verdict::Healthy;
        }
        self.failures += 1;
        if self.failures < threshold {
            return Verdict::Failing(self.failures);
        }
        let n = self.failures;
        *self = HealthState::default();
        Verdict::Recycle(n)
    }
}

/// A program's health checks: when the next round is due, whether an HTTP probe is out, and a
/// program-level problem (probes that no worker answered).
#[derive(Debug, Default)]
pub(super) struct ProgramHealth {
    pub next: Option<Instant>,
    pub http_inflight: bool,
    /// consecutive HTTP probes nobody accepted or answered
    pub unattributed: u32,
    pub note: Option<String>,
}

impl Supervisor {
    pub(super) fn schedule_health(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        p.health.next = p.cfg.health.as_ref().map(|h| now + h.interval);
    }

    pub(super) fn check_health(&mut self, now: Instant) {
        self.kill_overdue_probes(now);
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let Some(h) = self.programs[pi].cfg.health.clone() else {
                continue;
            };
            if self.programs[pi].health.next.is_none_or(|t| now < t) {
                continue;
            }
            self.programs[pi].health.next = Some(now + h.interval);
            let ready: Vec<(u64, i32)> = self.programs[pi]
                .workers
                .iter()
                .filter(|w| w.slot.is_ready())
                .filter_map(|w| w.slot.pid().map(|p| (w.id(), p)))
                .collect();
            if h.hung {
                self.check_hangs(pi, &ready, now);
            }
            if let Some(cmd) = &h.exec {
                for &(id, pid) in &ready {
                    let busy = self
                        .probes
                        .values()
                        .any(|p| p.slot == id && p.kind == ProbeKind::Health);
                    if !busy {
                        self.spawn_exec_probe(pi, id, pid, cmd, ProbeKind::Health, h.timeout, now);
                    }
                }
            }
            // HTTP through the shared socket, attributed to the worker that accepted it
            let p = &mut self.programs[pi];
            if let (Some(path), Some(target)) = (h.http.clone(), p.probe_target.clone()) {
                if !p.health.http_inflight && !ready.is_empty() {
                    p.health.http_inflight = true;
                    let (events, prog, timeout) = (self.events.clone(), p.id, h.timeout);
                    let workers: Vec<i32> = ready.iter().map(|(_, p)| *p).collect();
                    tokio::spawn(async move {
                        let outcome = probe::http(target, path, timeout, workers).await;
                        let _ = events.send(Event::Probed { prog, outcome });
                    });
                }
            }
        }
    }

    /// Per-worker hang detection from /proc: stopped, or running without ever blocking.
    fn check_hangs(&mut self, pi: usize, ready: &[(u64, i32)], now: Instant) {
        for &(id, pid) in ready {
            let cur = probe::sample(pid);
            let Some(w) = self.programs[pi].worker_mut(id) else {
                continue;
            };
            let verdict = cur
                .as_ref()
                .and_then(|c| probe::hung(w.health.sample.as_ref(), c));
            w.health.sample = cur;
            if let Some(why) = verdict {
                self.worker_health_result(pi, id, false, &format!("hung: {why}"), now);
            }
        }
    }

    pub(super) fn on_http_result(&mut self, prog: u64, outcome: probe::HttpOutcome, now: Instant) {
        let Some(pi) = self.pidx(prog) else { return };
        self.programs[pi].health.http_inflight = false;
        if self.run != RunState::Running {
            return;
        }
        let Some(h) = self.programs[pi].cfg.health.clone() else {
            return;
        };
        // the probe task found the owner while its connection was still open; by now the
        // worker may have closed its end, so no second lookup here
        let owner = outcome.owner.and_then(|pid| {
            let p = &self.programs[pi];
            p.workers
                .iter()
                .find(|w| w.slot.pid() == Some(pid))
                .map(|w| w.id())
        });
        let name = self.programs[pi].cfg.name.clone();
        debug!(
            "program {name}: health probe {} (server socket inode {:?}, accepted by {:?})",
            outcome.detail, outcome.server_inode, owner
        );
        if !outcome.ok {
            *self.metrics.probe_failures.entry(name.clone()).or_default() += 1;
        }
        let path = h.http.as_deref().unwrap_or("");
        let ph = &mut self.programs[pi].health;
        match owner {
            Some(id) => {
                ph.unattributed = 0;
                ph.note = None;
                let detail = format!("http {path} {}", outcome.detail);
                self.worker_health_result(pi, id, outcome.ok, &detail, now);
            }
            None if outcome.ok => {
                ph.unattributed = 0;
                ph.note = None;
            }
            None => {
                ph.unattributed += 1;
                if ph.unattributed >= h.failures {
                    let note = format!(
                        "health probe {path} not answered by any worker {} times in a row ({})",
                        ph.unattributed, outcome.detail
                    );
                    if ph.note.as_deref() != Some(note.as_str()) {
                        error!(program = %name, "program {name}: {note}");
                    }
                    ph.note = Some(note);
                }
            }
        }
    }

    pub(super) fn worker_health_result(
        &mut self,
        pi: usize,
        id: u64,
        ok: bool,
        detail: &str,
        now: Instant,
    ) {
        let p = &mut self.programs[pi];
        let Some(threshold) = p.cfg.health.as_ref().map(|h| h.failures) else {
            return;
        };
        let name = p.cfg.name.clone();
        let Some(w) = p.worker_mut(id) else { return };
        let (idx, pid) = (w.slot.index(), w.slot.pid().unwrap_or(0));
        match w.health.record(ok, threshold) {
            Verdict::Healthy => {}
            Verdict::Failing(n) => {
                warn!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) failed a health check ({n}/{threshold}): {detail}")
            }
            Verdict::Recycle(_) if !w.slot.is_ready() => {}
            Verdict::Recycle(n) => {
                error!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) failed {n} health check{} in a row ({detail}); recycling it", plural(n as usize));
                self.stop_worker(pi, id, AfterStop::Respawn, StopReason::Health, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_verdicts_count_failures_in_a_row() {
        // (results, threshold, the verdict of each)
        let cases: &[(&[bool], u32, &[Verdict])] = &[
            (&[true, true], 3, &[Verdict::Healthy, Verdict::Healthy]),
            (
                &[false, false, false],
                3,
                &[
                    Verdict::Failing(1),
                    Verdict::Failing(2),
                    Verdict::Recycle(3),
                ],
            ),
            // a success in between starts the count again
            (
                &[false, false, true, false],
                3,
                &[
                    Verdict::Failing(1),
                    Verdict::Failing(2),
                    Verdict::Healthy,
                    Verdict::Failing(1),
                ],
            ),
            (&[false], 1, &[Verdict::Recycle(1)]),
            // after a recycle the count starts anew
            (
                &[false, false, false],
                2,
                &[
                    Verdict::Failing(1),
                    Verdict::Recycle(2),
                    Verdict::Failing(1),
                ],
            ),
        ];
        for (results, threshold, want) in cases {
            let mut h = HealthState::default();
            let got: Vec<Verdict> = results.iter().map(|ok| h.record(*ok, *threshold)).collect();
            assert_eq!(&got, want, "results {results:?} threshold {threshold}");
        }
    }
}

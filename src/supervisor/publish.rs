//! Publishing: after every event the loop sends a fresh `Snapshot` to the API, and tells
//! systemd (READY once ready, STATUS when it changes, WATCHDOG from the loop's own timer, so it
//! stops exactly when the loop stops turning).

use std::sync::Arc;
use std::time::Instant;

use tracing::info;

use super::depends::Stage;
use super::{RunState, Supervisor};
use crate::api::sd_notify::Notifier;
use crate::api::snapshot::{
    PreloaderStatus, ProgramStatus, RollStatus, Snapshot, SocketStatus, WorkerStatus,
};

/// What drover has told systemd.
pub(super) struct Systemd {
    /// READY=1 has been sent
    ready_sent: bool,
    last_status: String,
    pub next_watchdog: Option<Instant>,
}

impl Systemd {
    pub fn new(n: Option<&Notifier>, now: Instant) -> Systemd {
        Systemd {
            ready_sent: false,
            last_status: String::new(),
            next_watchdog: n.and_then(|n| n.watchdog).map(|w| now + w),
        }
    }
}

impl Supervisor {
    /// `4/4 api ready; 2/2 web ready` (what `systemctl status` shows).
    pub(super) fn status_line(&self) -> String {
        let mut parts: Vec<String> = self
            .programs
            .iter()
            .map(|p| {
                let mut s = format!(
                    "{}/{} {} workers ready",
                    p.ready_count(),
                    p.desired,
                    p.cfg.name
                );
                if p.rolling() {
                    s.push_str(" (rolling)");
                }
                if p.crash.reported {
                    s.push_str(" (CRASH LOOP)");
                }
                match &p.stage {
                    Stage::Waiting { on, .. } if !on.is_empty() => {
                        s.push_str(&format!(" (waiting for {})", on.join(", ")))
                    }
                    Stage::WillNotStart { .. } => s.push_str(" (WILL NOT START)"),
                    _ => {}
                }
                s
            })
            .collect();
        if matches!(self.run, RunState::Draining { .. }) {
            parts.insert(0, "draining".into());
        }
        parts.join("; ")
    }

    pub(super) fn notify_systemd(&mut self, now: Instant) {
        let Some(n) = &self.cx.notify else { return };
        if let (Some(due), Some(every)) = (self.systemd.next_watchdog, n.watchdog) {
            if now >= due {
                n.watchdog();
                self.systemd.next_watchdog = Some(now + every);
            }
        }
        if !matches!(self.run, RunState::Running | RunState::Draining { .. }) {
            return;
        }
        let status = self.status_line();
        let ready = self
            .programs
            .iter()
            .all(|p| p.ready_count() as u32 >= p.cfg.min_ready);
        if !self.systemd.ready_sent && ready {
            n.ready(&status);
            self.systemd.ready_sent = true;
            info!("ready: {status}");
        } else if status != self.systemd.last_status {
            n.status(&status);
        }
        self.systemd.last_status = status;
    }

    fn program_status(&self, now: Instant) -> Vec<ProgramStatus> {
        self.programs
            .iter()
            .map(|p| ProgramStatus {
                name: p.cfg.name.clone(),
                desired: p.desired,
                min_ready: p.cfg.min_ready,
                ready_workers: p.ready_count() as u32,
                crash_looping: p.crash.reported,
                rolling: p.rolling(),
                health: p.health.note.clone(),
                budget: (p.cfg.budget != Default::default()).then(|| {
                    serde_json::json!({
                        "memory_soft": p.cfg.budget.memory_soft,
                        "memory_hard": p.cfg.budget.memory_hard,
                        "cpu": p.cfg.budget.cpu,
                    })
                }),
                autoscale: p.autoscaler.as_ref().and_then(|a| a.last.clone()),
                preloader: p.cfg.preload.then(|| {
                    let l = p.preload.current.as_ref();
                    PreloaderStatus {
                        pid: l.map(|l| l.pid),
                        state: match l {
                            Some(l) if l.ready.is_some() => "ready",
                            Some(_) => "loading",
                            None if p.preload.error.is_some() => "failed",
                            // before the workers start (pre-start steps), or at shutdown
                            None => "stopped",
                        },
                        since_s: l.map(|l| now.duration_since(l.since).as_secs_f64()),
                        error: p.preload.error.as_ref().map(|e| e.summary.clone()),
                        error_detail: p.preload.error.as_ref().and_then(|e| e.detail.clone()),
                    }
                }),
                roll: roll_status(p, now),
                last_roll: p.last_roll.clone(),
                waiting_for: match &p.stage {
                    Stage::Waiting { on, .. } if !on.is_empty() => Some(on.join(", ")),
                    _ => None,
                },
                will_not_start: match &p.stage {
                    Stage::WillNotStart { why, .. } => Some(format!("its dependency {why}")),
                    _ => None,
                },
                shedding: p.shedding.map(|s| {
                    serde_json::json!({
                        "queue": s.queue,
                        "max_queue": p.cfg.readiness.max_queue,
                        "since_s": now.duration_since(s.since).as_secs_f64(),
                    })
                }),
                workers: p
                    .workers
                    .iter()
                    .map(|w| WorkerStatus {
                        index: w.slot.index(),
                        pid: w.slot.pid(),
                        state: w.slot.state_name(),
                        ready: w.slot.is_ready(),
                        restarts: w.slot.restarts(),
                        uptime_s: w.slot.since().map(|t| now.duration_since(t).as_secs_f64()),
                        last_exit: w.slot.last_exit().map(|e| {
                            let mut j = e.to_json();
                            if let Some(words) = self.last_words.of(p.id, w.slot.index()) {
                                j["last_words"] = serde_json::json!(*words);
                            }
                            j
                        }),
                        health_failures: w.health.failures,
                        // read when served (`api/server.rs::read_live`)
                        memory_bytes: None,
                        cpu_seconds: None,
                        cpu_percent: w.usage.cpu_percent,
                        cgroup: w
                            .cgroup
                            .as_ref()
                            .map(|(cg, _)| {
                                let mut v: Vec<String> = cg
                                    .memory
                                    .iter()
                                    .chain(cg.cpu.iter())
                                    .map(|d| d.display().to_string())
                                    .collect();
                                v.dedup();
                                v
                            })
                            .unwrap_or_default(),
                        memory_cgroup: w.cgroup.as_ref().and_then(|(cg, _)| cg.memory_gauge()),
                        status: w.notify_status.clone(),
                    })
                    .collect(),
            })
            .collect()
    }

    pub(super) fn publish(&self) {
        let now = Instant::now();
        let programs = self.program_status(now);
        let ready = self.run == RunState::Running
            && self.steps.all_succeeded()
            && programs
                .iter()
                .all(|p| p.ready_workers >= p.min_ready && p.shedding.is_none());
        let b = &self.cx.budget;
        let snap = Snapshot {
            state: match self.run {
                RunState::Steps if self.steps.stopping() => "stopping",
                RunState::Steps => "starting",
                RunState::Running => "running",
                RunState::Draining { .. } => "draining",
                RunState::Stopping { .. } => "stopping",
            },
            ready,
            pid: std::process::id(),
            pid1: self.cx.pid1,
            config: self.cx.config_label.clone(),
            uptime_s: now.duration_since(self.started).as_secs_f64(),
            control: self.cx.control_mode,
            last_reload: self.last_reload.clone(),
            budget: Some(serde_json::json!({
                "mode": b.mode.as_str(),
                "why": b.notes,
                "memory": self.cfg.budget.memory,
                "cpu": self.cfg.budget.cpu,
                "sample_interval_s": b.sample.then_some(self.cfg.budget.sample_interval.as_secs_f64()),
                "cpu_throttling": if b.cgroups.as_ref().is_some_and(|c| c.cpu.is_some()) { "cgroup quota" } else { "none: CPU is measured and reported, not throttled" },
            })),
            steps: self.steps.status_at(now),
            sockets: self
                .sockets
                .iter()
                .map(|b| SocketStatus {
                    name: b.name.clone(),
                    listen: b.local.clone(),
                    queue: None,
                    queue_max: None,
                    queue_unknown: None,
                })
                .collect(),
            node: None,
            programs,
            metrics: self.metrics.clone(),
            history: self.history.as_ref().map(|r| r.ring.clone()),
            published: Some(now),
        };
        self.cx.snapshot.send_replace(Arc::new(snap));
    }
}

/// The roll in progress, or the one waiting for its new preloader.
fn roll_status(p: &super::program::Program, now: Instant) -> Option<RollStatus> {
    let started_at = |t: Instant| super::unix_now().saturating_sub(now.duration_since(t).as_secs());
    if let Some(r) = &p.roll {
        return Some(RollStatus {
            reason: r.reason.as_str(),
            started_at: started_at(r.started),
            replaced: r.replaced,
            of: r.of,
            waiting_for: None,
        });
    }
    let (reason, since) = p.roll_deferred?;
    Some(RollStatus {
        reason: reason.as_str(),
        started_at: started_at(since),
        replaced: 0,
        of: p.workers.iter().filter(|w| !w.slot.is_leaving()).count() as u32,
        waiting_for: Some("a new preloader to load the app"),
    })
}

//! Saturation: how many connections wait in a program's accept queues (`resources::queue`), and
//! load shedding on it. A program with `[program.X.readiness] max_queue` has its queues read once
//! a second while drover runs; above the limit, /readyz answers 503 (so Kubernetes sends new
//! connections to other pods) until a sample finds the queue back at or below it. Both changes
//! are logged. The autoscaler (`budget.rs`) reads the same figure for `target_queue`.

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{RunState, Supervisor};
use crate::api::events::Event;
use crate::resources::queue::Reader;

/// How often queues are read for shedding.
pub const QUEUE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Saturation {
    pub reader: Reader,
    next_check: Option<Instant>,
}

/// A program shedding load: since when, and the queue at the last sample.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shedding {
    pub since: Instant,
    pub queue: u32,
}

impl Supervisor {
    /// Connections waiting in the accept queues of program `pi`'s sockets; None when none of
    /// them can be read.
    pub(super) fn waiting(&mut self, pi: usize) -> Option<u32> {
        let mut total = None;
        for (name, _) in &self.programs[pi].sockets {
            let Some(b) = self.sockets.iter().find(|b| b.name == *name) else {
                continue;
            };
            if let Ok(q) = self
                .saturation
                .reader
                .read(std::os::fd::AsFd::as_fd(&b.fd), b.kind)
            {
                total = Some(total.unwrap_or(0) + q.len);
            }
        }
        total
    }

    fn sheds(&self) -> bool {
        self.run == RunState::Running
            && self
                .programs
                .iter()
                .any(|p| p.cfg.readiness.max_queue.is_some())
    }

    /// When the loop must next read queues for shedding.
    pub(super) fn queue_due(&self, now: Instant) -> Option<Instant> {
        self.sheds()
            .then(|| self.saturation.next_check.unwrap_or(now))
    }

    pub(super) fn check_queues(&mut self, now: Instant) {
        if !self.sheds() || self.saturation.next_check.is_some_and(|t| now < t) {
            return;
        }
        self.saturation.next_check = Some(now + QUEUE_INTERVAL);
        for pi in 0..self.programs.len() {
            let Some(max) = self.programs[pi].cfg.readiness.max_queue else {
                self.programs[pi].shedding = None;
                continue;
            };
            let Some(queue) = self.waiting(pi) else {
                continue;
            };
            let p = &mut self.programs[pi];
            let name = &p.cfg.name;
            match (&mut p.shedding, queue > max) {
                (None, true) => {
                    warn!(program = %name, queue, max_queue = max, "{name}: {queue} connections waiting, above max_queue {max}: /readyz answers 503 until the queue falls back to {max}");
                    p.shedding = Some(Shedding { since: now, queue });
                    let program = name.clone();
                    self.emit(Event::SheddingOn {
                        program,
                        queue,
                        max_queue: max,
                    });
                }
                (Some(s), true) => s.queue = queue,
                (Some(s), false) => {
                    let after = now.duration_since(s.since).as_secs_f64();
                    info!(program = %name, queue, max_queue = max, "{name}: queue back to {queue} (max_queue {max}) after {after:.1}s of shedding: /readyz ready again");
                    let program = name.clone();
                    p.shedding = None;
                    self.emit(Event::SheddingOff {
                        program,
                        queue,
                        max_queue: max,
                        after_seconds: after,
                    });
                }
                (None, false) => {}
            }
        }
    }
}

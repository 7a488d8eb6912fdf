//! The history sampler: every `supervisor.history_interval` while some worker runs, one `Sample`
//! into the ring (`api/history.rs`) — per program its ready and desired workers, restarts so far,
//! CPU and memory of all its workers; per socket its accept queue. With no worker running, or with
//! `history = "0s"`, the timer is not armed: drover still sleeps with no wake-ups.
//!
//! The ring lives behind an `Arc` that every published snapshot shares; a sample copies it only
//! when the API still holds the previous one (at most once per interval).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{unix_now, RunState, Supervisor};
use crate::api::history::{History, ProgramPoint, Sample, SocketPoint};
use crate::resources::usage;

pub(super) struct Recorder {
    pub ring: Arc<History>,
    interval: Duration,
    window: Duration,
    next: Option<Instant>,
    /// each worker's CPU ticks at the last sample, and when that was
    ticks: HashMap<i32, u64>,
    last: Option<Instant>,
    /// program and socket names, shared by every sample
    names: HashMap<String, Arc<str>>,
}

impl Recorder {
    /// None when the configuration keeps no history.
    pub fn new(window: Duration, interval: Duration) -> Option<Recorder> {
        (!window.is_zero()).then(|| Recorder {
            ring: Arc::new(History::new(window, interval)),
            interval,
            window,
            next: None,
            ticks: HashMap::new(),
            last: None,
            names: HashMap::new(),
        })
    }

    fn name(&mut self, n: &str) -> Arc<str> {
        self.names
            .entry(n.to_string())
            .or_insert_with(|| n.into())
            .clone()
    }
}

impl Supervisor {
    /// A reload may change the window or the interval: the newest samples that fit are kept.
    pub(super) fn history_configured(&mut self) {
        let (window, interval) = (
            self.cfg.supervisor.history,
            self.cfg.supervisor.history_interval,
        );
        if self
            .history
            .as_ref()
            .is_some_and(|r| r.window == window && r.interval == interval)
        {
            return;
        }
        let old = self.history.take();
        self.history = Recorder::new(window, interval);
        if let (Some(old), Some(new)) = (old, self.history.as_mut()) {
            let ring = Arc::make_mut(&mut new.ring);
            for s in old.ring.samples.iter().cloned() {
                ring.push(s);
            }
            new.names = old.names;
        }
    }

    /// When the next sample is due: never while no worker runs (`pids` holds the live ones).
    pub(super) fn history_due(&self, now: Instant) -> Option<Instant> {
        let r = self.history.as_ref()?;
        let sampling = matches!(self.run, RunState::Running | RunState::Draining { .. });
        (sampling && !self.pids.is_empty()).then(|| r.next.unwrap_or(now))
    }

    pub(super) fn record_history(&mut self, now: Instant) {
        if self.history_due(now).is_none_or(|t| now < t) {
            return;
        }
        let reader = &mut self.saturation.reader;
        let queues: Vec<(String, Option<crate::resources::queue::Queue>)> = self
            .sockets
            .iter()
            .map(|b| {
                let fd = std::os::fd::AsFd::as_fd(&b.fd);
                (b.name.clone(), reader.read(fd, b.kind).ok())
            })
            .collect();
        let Some(r) = self.history.as_mut() else {
            return;
        };
        r.next = Some(now + r.interval);
        let elapsed = r.last.map(|t| now.duration_since(t).as_secs_f64());
        r.last = Some(now);
        let hz = usage::clock_ticks_per_sec();
        let page = usage::page_size();
        let mut ticks = HashMap::new();
        let mut programs = vec![];
        for p in &self.programs {
            let (mut cpu, mut mem, mut seen_cpu, mut seen_mem) = (0u64, 0u64, false, false);
            for w in &p.workers {
                let Some(pid) = w.slot.pid() else { continue };
                let st = usage::open_stat(pid).and_then(|f| usage::pread_stat(&f));
                if let Some(m) = w.usage.memory.or(st.map(|s| s.rss_pages * page)) {
                    mem += m;
                    seen_mem = true;
                }
                if let Some(s) = st {
                    ticks.insert(pid, s.cpu_ticks);
                    if let Some(before) = r.ticks.get(&pid) {
                        cpu += s.cpu_ticks.saturating_sub(*before);
                        seen_cpu = true;
                    }
                }
            }
            let restarts = self
                .metrics
                .restarts
                .iter()
                .filter(|((prog, _), _)| *prog == p.cfg.name)
                .map(|(_, n)| *n)
                .sum();
            programs.push(ProgramPoint {
                name: r.name(&p.cfg.name),
                ready: p.ready_count() as u32,
                desired: p.desired,
                restarts,
                cpu_percent: elapsed
                    .filter(|e| *e > 0.0 && seen_cpu)
                    .map(|e| (cpu as f64 / hz / e * 100.0) as f32),
                memory_bytes: seen_mem.then_some(mem),
            });
        }
        r.ticks = ticks;
        let sockets = queues
            .into_iter()
            .map(|(n, q)| SocketPoint {
                name: r.name(&n),
                queue: q.map(|q| q.len),
                queue_max: q.map(|q| q.max),
            })
            .collect();
        Arc::make_mut(&mut r.ring).push(Sample {
            t: unix_now(),
            programs,
            sockets,
        });
    }
}

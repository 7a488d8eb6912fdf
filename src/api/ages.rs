//! Ages as of the moment they are served. The loop publishes a snapshot when it wakes, and an
//! idle drover does not wake (no ticks): a snapshot published at start would say "up 1s" for
//! hours. So every age in it (drover's uptime, each worker's, a preloader's, a running step's
//! duration, how long a program has shed load) is published as of `Snapshot::published`, and
//! `Snapshot::at` moves them all to the moment of the request: the age of something that began
//! at a fixed instant grows exactly as the clock does, so no wake-up of the loop is needed.

use std::time::Instant;

use super::snapshot::{Snapshot, StepState};

impl Snapshot {
    /// Seconds from its publication to `now`: what each of its ages has grown by since.
    pub fn age_at(&self, now: Instant) -> f64 {
        self.published.map_or(0.0, |then| {
            now.saturating_duration_since(then).as_secs_f64()
        })
    }

    /// The snapshot as it would have been published at `now` (no earlier than `published`).
    pub fn at(mut self, now: Instant) -> Snapshot {
        let Some(then) = self.published else {
            return self;
        };
        let d = self.age_at(now);
        self.published = Some(then.max(now));
        self.uptime_s += d;
        for st in &mut self.steps {
            if st.state == StepState::Running {
                if let Some(s) = &mut st.duration_s {
                    *s += d;
                }
            }
        }
        for p in &mut self.programs {
            if let Some(s) = p.preloader.as_mut().and_then(|l| l.since_s.as_mut()) {
                *s += d;
            }
            p.shedding = p.shedding.take().map(|sh| shedding_after(sh, d));
            for w in &mut p.workers {
                if let Some(s) = &mut w.uptime_s {
                    *s += d;
                }
            }
        }
        self
    }
}

/// A program's `shedding` (`{queue, max_queue, since_s}`) `d` seconds later.
pub fn shedding_after(mut sh: serde_json::Value, d: f64) -> serde_json::Value {
    if let Some(s) = sh["since_s"].as_f64() {
        sh["since_s"] = (s + d).into();
    }
    sh
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::snapshot::{PreloaderStatus, ProgramStatus, StepStatus, WorkerStatus};
    use std::time::Duration;

    fn worker(uptime_s: Option<f64>) -> WorkerStatus {
        WorkerStatus {
            index: 0,
            pid: uptime_s.map(|_| 42),
            state: "running",
            ready: true,
            restarts: 0,
            uptime_s,
            last_exit: None,
            health_failures: 0,
            memory_bytes: None,
            cpu_seconds: None,
            cpu_percent: None,
            cgroup: vec![],
            memory_cgroup: None,
            status: None,
        }
    }

    fn step(state: StepState, duration_s: Option<f64>) -> StepStatus {
        StepStatus {
            name: "migrate".into(),
            state,
            exit: None,
            attempts: 1,
            duration_s,
        }
    }

    #[test]
    fn every_age_grows_with_the_clock_and_nothing_else_changes() {
        let t0 = Instant::now();
        let snap = Snapshot {
            uptime_s: 1.0,
            published: Some(t0),
            steps: vec![
                step(StepState::Succeeded, Some(2.0)),
                step(StepState::Running, Some(0.5)),
                step(StepState::Pending, None),
            ],
            programs: vec![ProgramStatus {
                name: "api".into(),
                desired: 2,
                min_ready: 1,
                ready_workers: 1,
                crash_looping: false,
                rolling: false,
                health: None,
                budget: None,
                autoscale: None,
                shedding: Some(serde_json::json!({"queue": 9, "max_queue": 8, "since_s": 0.25})),
                preloader: Some(PreloaderStatus {
                    pid: Some(41),
                    state: "ready",
                    since_s: Some(3.0),
                    error: None,
                    error_detail: None,
                }),
                roll: None,
                last_roll: None,
                waiting_for: None,
                will_not_start: None,
                workers: vec![worker(Some(1.0)), worker(None)],
            }],
            ..Default::default()
        };
        let later = snap.clone().at(t0 + Duration::from_millis(1500));
        assert_eq!(later.uptime_s, 2.5);
        assert_eq!(
            later.steps[0].duration_s,
            Some(2.0),
            "a finished step's took"
        );
        assert_eq!(
            later.steps[1].duration_s,
            Some(2.0),
            "a running step's grows"
        );
        assert_eq!(later.steps[2].duration_s, None);
        let p = &later.programs[0];
        assert_eq!(p.preloader.as_ref().unwrap().since_s, Some(4.5));
        assert_eq!(p.shedding.as_ref().unwrap()["since_s"], 1.75);
        assert_eq!(p.shedding.as_ref().unwrap()["queue"], 9);
        assert_eq!(p.workers[0].uptime_s, Some(2.5));
        assert_eq!(p.workers[1].uptime_s, None, "no process, no uptime");
        // served twice: counted from the first serving, not twice over
        let again = later.at(t0 + Duration::from_secs(2));
        assert_eq!(again.uptime_s, 3.0);
        // a clock reading older than the snapshot changes nothing
        let early = snap.clone().at(t0 - Duration::from_millis(1));
        assert_eq!(early.uptime_s, 1.0);
        // a snapshot that does not say when it was published is left as it is
        let unknown = Snapshot {
            published: None,
            ..snap
        }
        .at(t0 + Duration::from_secs(60));
        assert_eq!(unknown.uptime_s, 1.0);
    }
}

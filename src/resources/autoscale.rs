//! The local autoscaler: Kubernetes' HPA rule on one node.
//!
//! For each metric, desired = ceil(current × value / target), unchanged while the ratio is within
//! 10 % of 1 (the HPA tolerance). The metrics are CPU (the ready workers' mean, percent of the
//! per-worker budget) and the accept queue (connections waiting per worker); with both, the larger
//! recommendation wins, as the HPA does with several metrics. Then bounds (min/max and the
//! budget). Scale-up happens at once; scale-down follows the highest recommendation of the last
//! `scale_down_window` (the HPA's stabilization window), so a short lull does not drop workers that
//! a burst will want back.

use std::collections::VecDeque;
use std::time::Instant;

use serde::Serialize;

use crate::config::AutoscaleCfg;

pub const TOLERANCE: f64 = 0.1;

/// The HPA recommendation before bounds.
pub fn recommend(current: u32, utilization: f64, target: f64) -> u32 {
    if current == 0 || target <= 0.0 {
        return current;
    }
    let ratio = utilization / target;
    if (ratio - 1.0).abs() <= TOLERANCE {
        return current;
    }
    (current as f64 * ratio).ceil().max(0.0) as u32
}

/// One metric's reading and what the HPA rule recommends from it alone.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Reading {
    pub value: f64,
    pub target: f64,
    pub recommended: u32,
}

/// What the autoscaler saw this sample; a metric without a target or a value is left out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Inputs {
    /// mean CPU of the ready workers, percent of the per-worker budget (or of one core)
    pub cpu: Option<f64>,
    /// connections waiting in the program's accept queues, per worker
    pub queue: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub current: u32,
    pub cpu: Option<Reading>,
    pub queue: Option<Reading>,
    /// the larger of the metrics' recommendations, before bounds and stabilization
    pub recommended: u32,
    pub desired: u32,
    pub why: String,
}

#[derive(Debug, Clone)]
pub struct Autoscaler {
    pub cfg: AutoscaleCfg,
    recs: VecDeque<(Instant, u32)>,
    pub last: Option<Decision>,
}

impl Autoscaler {
    pub fn new(cfg: AutoscaleCfg) -> Autoscaler {
        Autoscaler {
            cfg,
            recs: VecDeque::new(),
            last: None,
        }
    }

    /// One decision, or None when no configured metric has a value. `cap` is the most workers
    /// the budget allows.
    pub fn decide(
        &mut self,
        now: Instant,
        current: u32,
        seen: Inputs,
        cap: u32,
    ) -> Option<Decision> {
        let reading = |value: Option<f64>, target: Option<f64>| {
            let (value, target) = (value?, target?);
            Some(Reading {
                value,
                target,
                recommended: recommend(current, value, target),
            })
        };
        let cpu = reading(seen.cpu, self.cfg.target_cpu);
        let queue = reading(seen.queue, self.cfg.target_queue);
        let raw = cpu
            .iter()
            .chain(queue.iter())
            .map(|r| r.recommended)
            .max()?;
        let upper = self.cfg.max.min(cap.max(self.cfg.min));
        let bounded = raw.clamp(self.cfg.min, upper);
        self.recs.push_back((now, bounded));
        while self
            .recs
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.cfg.scale_down_window)
        {
            self.recs.pop_front();
        }
        let stabilized = self.recs.iter().map(|(_, r)| *r).max().unwrap_or(bounded);
        let (desired, why) = if bounded > current {
            (
                bounded,
                if raw > upper {
                    format!("scale up, capped at {upper}")
                } else {
                    "scale up".into()
                },
            )
        } else if stabilized < current {
            (
                stabilized,
                "scale down (highest recommendation in the window)".into(),
            )
        } else if bounded < current {
            (
                current,
                format!("hold: a recommendation of {stabilized} within the scale-down window"),
            )
        } else if current < self.cfg.min || current > upper {
            (current.clamp(self.cfg.min, upper), "into bounds".into())
        } else {
            (current, "hold: within tolerance".into())
        };
        let d = Decision {
            current,
            cpu,
            queue,
            recommended: raw,
            desired,
            why,
        };
        self.last = Some(d.clone());
        Some(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn hpa_rule_table() {
        // (current, utilization %, target %, expected)
        let cases = [
            (2, 100.0, 50.0, 4),
            (2, 50.0, 50.0, 2),
            (2, 54.0, 50.0, 2), // within 10 %: unchanged
            (2, 56.0, 50.0, 3), // ceil(2.24)
            (4, 10.0, 50.0, 1), // ceil(0.8)
            (3, 0.0, 50.0, 0),
            (1, 300.0, 50.0, 6),
            (0, 100.0, 50.0, 0),
        ];
        for (cur, u, t, want) in cases {
            assert_eq!(
                recommend(cur, u, t),
                want,
                "current={cur} util={u} target={t}"
            );
        }
    }

    fn scaler(min: u32, max: u32, window_s: u64) -> Autoscaler {
        Autoscaler::new(AutoscaleCfg {
            min,
            max,
            target_cpu: Some(50.0),
            target_queue: None,
            scale_down_window: Duration::from_secs(window_s),
        })
    }

    fn cpu(v: f64) -> Inputs {
        Inputs {
            cpu: Some(v),
            queue: None,
        }
    }

    /// `a.decide(...)` for a scaler that has a target for what it is given.
    fn desired(a: &mut Autoscaler, t: Instant, current: u32, i: Inputs, cap: u32) -> u32 {
        a.decide(t, current, i, cap).expect("a decision").desired
    }

    #[test]
    fn the_larger_recommendation_wins() {
        let t0 = Instant::now();
        let mut a = Autoscaler::new(AutoscaleCfg {
            min: 1,
            max: 20,
            target_cpu: Some(50.0),
            target_queue: Some(4.0),
            scale_down_window: Duration::from_secs(60),
        });
        // CPU says 2 -> 2 (at target), the queue (12 waiting per worker vs 4) says 6
        let both = Inputs {
            cpu: Some(50.0),
            queue: Some(12.0),
        };
        let d = a.decide(t0, 2, both, 100).unwrap();
        assert_eq!(d.cpu.as_ref().unwrap().recommended, 2);
        assert_eq!(d.queue.as_ref().unwrap().recommended, 6);
        assert_eq!((d.recommended, d.desired), (6, 6));
        // CPU high, queue empty: CPU wins
        let d = a
            .decide(
                t0,
                6,
                Inputs {
                    cpu: Some(100.0),
                    queue: Some(0.0),
                },
                100,
            )
            .unwrap();
        assert_eq!(d.desired, 12);
        // no metric with both a target and a value: no decision
        let mut q = scaler(1, 4, 0);
        assert!(q
            .decide(
                t0,
                2,
                Inputs {
                    cpu: None,
                    queue: Some(9.0)
                },
                100
            )
            .is_none());
    }

    #[test]
    fn queue_alone_scales_up_and_back_down_after_the_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut a = Autoscaler::new(AutoscaleCfg {
            min: 1,
            max: 8,
            target_cpu: None,
            target_queue: Some(2.0),
            scale_down_window: Duration::from_secs(30),
        });
        let q = |v| Inputs {
            cpu: Some(99.0),
            queue: Some(v),
        };
        assert_eq!(
            desired(&mut a, s(0), 1, q(6.0), 100),
            3,
            "6 waiting vs 2 per worker"
        );
        assert_eq!(
            desired(&mut a, s(10), 3, q(0.0), 100),
            3,
            "within the window"
        );
        assert_eq!(desired(&mut a, s(41), 3, q(0.0), 100), 1, "after it");
    }

    #[test]
    fn up_at_once_down_after_the_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut a = scaler(1, 8, 60);
        assert_eq!(desired(&mut a, s(0), 2, cpu(100.0), 100), 4, "up at once");
        // the load goes away: recommendations of 1, but 4 was recommended within the window
        assert_eq!(desired(&mut a, s(10), 4, cpu(5.0), 100), 4);
        assert_eq!(desired(&mut a, s(50), 4, cpu(5.0), 100), 4);
        // 61 s after the last high recommendation, the window has forgotten it
        assert_eq!(desired(&mut a, s(61), 4, cpu(5.0), 100), 1);
    }

    #[test]
    fn bounds_and_budget_cap() {
        let t0 = Instant::now();
        let mut a = scaler(2, 5, 0);
        assert_eq!(desired(&mut a, t0, 2, cpu(500.0), 100), 5, "max");
        let d = a.decide(t0, 2, cpu(500.0), 3).unwrap();
        assert_eq!(d.desired, 3, "the budget allows only 3");
        assert!(d.why.contains("capped at 3"), "{}", d.why);
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(desired(&mut a, t1, 5, cpu(0.0), 100), 2, "min");
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(desired(&mut a, t2, 2, cpu(52.0), 100), 2, "tolerance");
    }
}

//! The local autoscaler: Kubernetes' HPA rule on one node.
//!
//! desired = ceil(current × utilization / target), unchanged while the ratio is within 10 % of 1
//! (the HPA tolerance); bounded by min/max and the budget. Scale-up happens at once; scale-down
//! follows the highest recommendation of the last `scale_down_window` (the HPA's stabilization
//! window), so a short lull does not drop workers that a burst will want back.

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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Decision {
    pub current: u32,
    /// mean CPU of the ready workers, percent of the per-worker budget (or of one core)
    pub utilization: f64,
    pub target: f64,
    /// the HPA rule's answer before bounds and stabilization
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

    /// One decision. `cap` is the most workers the budget allows.
    pub fn decide(&mut self, now: Instant, current: u32, utilization: f64, cap: u32) -> Decision {
        let raw = recommend(current, utilization, self.cfg.target_cpu);
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
            utilization,
            target: self.cfg.target_cpu,
            recommended: raw,
            desired,
            why,
        };
        self.last = Some(d.clone());
        d
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
            target_cpu: 50.0,
            scale_down_window: Duration::from_secs(window_s),
        })
    }

    #[test]
    fn up_at_once_down_after_the_window() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut a = scaler(1, 8, 60);
        assert_eq!(a.decide(s(0), 2, 100.0, 100).desired, 4, "up at once");
        // the load goes away: recommendations of 1, but 4 was recommended within the window
        assert_eq!(a.decide(s(10), 4, 5.0, 100).desired, 4);
        assert_eq!(a.decide(s(50), 4, 5.0, 100).desired, 4);
        // 61 s after the last high recommendation, the window has forgotten it
        assert_eq!(a.decide(s(61), 4, 5.0, 100).desired, 1);
    }

    #[test]
    fn bounds_and_budget_cap() {
        let t0 = Instant::now();
        let mut a = scaler(2, 5, 0);
        assert_eq!(a.decide(t0, 2, 500.0, 100).desired, 5, "max");
        let d = a.decide(t0, 2, 500.0, 3);
        assert_eq!(d.desired, 3, "the budget allows only 3");
        assert!(d.why.contains("capped at 3"), "{}", d.why);
        assert_eq!(
            a.decide(t0 + Duration::from_secs(1), 5, 0.0, 100).desired,
            2,
            "min"
        );
        assert_eq!(
            a.decide(t0 + Duration::from_secs(2), 2, 52.0, 100).desired,
            2,
            "tolerance"
        );
    }
}

//! Counters the supervisor keeps, and their Prometheus text rendering.

use std::collections::BTreeMap;
use std::fmt::Write;

/// Upper bounds (seconds) of the spawn-to-ready histogram.
pub const READY_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Debug, Clone, Default)]
pub struct Histogram {
    /// cumulative counts per bucket of READY_BUCKETS
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; READY_BUCKETS.len()];
        }
        for (i, b) in READY_BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// (program, reason) -> restarts
    pub restarts: BTreeMap<(String, String), u64>,
    pub ready_latency: BTreeMap<String, Histogram>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// program -> health probes that failed
    pub probe_failures: BTreeMap<String, u64>,
}

impl Metrics {
    pub fn restart(&mut self, program: &str, reason: &str) {
        *self
            .restarts
            .entry((program.to_string(), reason.to_string()))
            .or_default() += 1;
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric with a sample per worker that has a value.
fn per_worker(
    o: &mut String,
    s: &crate::status::Snapshot,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&crate::status::WorkerStatus) -> Option<String>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for p in &s.programs {
        for w in &p.workers {
            if let Some(v) = value(w) {
                let _ = writeln!(
                    o,
                    "{name}{{program=\"{}\",worker=\"{}\"}} {v}",
                    esc(&p.name),
                    w.index
                );
            }
        }
    }
}

/// One metric family with a sample per program that has a value.
fn per_program(
    o: &mut String,
    s: &crate::status::Snapshot,
    name: &str,
    help: &str,
    value: impl Fn(&crate::status::ProgramStatus) -> Option<String>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
    for p in &s.programs {
        if let Some(v) = value(p) {
            let _ = writeln!(o, "{name}{{program=\"{}\"}} {v}", esc(&p.name));
        }
    }
}

/// Render the snapshot's figures in the Prometheus text format.
pub fn render(s: &crate::status::Snapshot) -> String {
    let m = &s.metrics;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP drover_up 1 while drover runs.\n# TYPE drover_up gauge\ndrover_up 1"
    );
    let _ = writeln!(o, "# HELP drover_ready 1 when /readyz answers 200.\n# TYPE drover_ready gauge\ndrover_ready {}", u8::from(s.ready));
    let _ = writeln!(
        o,
        "# HELP drover_workers Workers by program and state.\n# TYPE drover_workers gauge"
    );
    for p in &s.programs {
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for st in [
            "starting", "running", "stopping", "backoff", "failed", "stopped",
        ] {
            by_state.insert(st, 0);
        }
        for w in &p.workers {
            *by_state.entry(w.state).or_default() += 1;
        }
        for (st, n) in by_state {
            let _ = writeln!(
                o,
                "drover_workers{{program=\"{}\",state=\"{st}\"}} {n}",
                esc(&p.name)
            );
        }
    }
    per_program(
        &mut o,
        s,
        "drover_workers_desired",
        "Workers each program should have.",
        |p| Some(p.desired.to_string()),
    );
    per_program(
        &mut o,
        s,
        "drover_workers_ready",
        "Workers that passed their readiness check.",
        |p| Some(p.ready_workers.to_string()),
    );
    let _ = writeln!(o, "# HELP drover_restarts_total Worker restarts by program and reason.\n# TYPE drover_restarts_total counter");
    for ((prog, reason), n) in &m.restarts {
        let _ = writeln!(
            o,
            "drover_restarts_total{{program=\"{}\",reason=\"{}\"}} {n}",
            esc(prog),
            esc(reason)
        );
    }
    per_worker(
        &mut o,
        s,
        "drover_worker_memory_bytes",
        "gauge",
        "Resident memory of each worker (its cgroup or process group when sampled).",
        |w| w.memory_bytes.map(|b| b.to_string()),
    );
    per_worker(
        &mut o,
        s,
        "drover_worker_cpu_seconds_total",
        "counter",
        "CPU time of each worker's lead process.",
        |w| w.cpu_seconds.map(|c| c.to_string()),
    );
    per_worker(
        &mut o,
        s,
        "drover_worker_cpu_percent",
        "gauge",
        "CPU of each worker's process group over the last sample, percent of one core.",
        |w| w.cpu_percent.map(|c| format!("{c:.2}")),
    );
    // each family's samples right after its own HELP/TYPE, as the text format wants
    per_program(
        &mut o,
        s,
        "drover_autoscale_desired_workers",
        "The autoscaler's last decision.",
        |p| p.autoscale.as_ref().map(|d| d.desired.to_string()),
    );
    per_program(
        &mut o,
        s,
        "drover_autoscale_utilization_percent",
        "Mean CPU of ready workers, percent of the per-worker budget.",
        |p| {
            p.autoscale
                .as_ref()
                .map(|d| format!("{:.2}", d.utilization))
        },
    );
    let _ = writeln!(o, "# HELP drover_spawn_to_ready_seconds Time from spawn to passing readiness.\n# TYPE drover_spawn_to_ready_seconds histogram");
    for (prog, h) in &m.ready_latency {
        for (i, b) in READY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "drover_spawn_to_ready_seconds_bucket{{program=\"{}\",le=\"{b}\"}} {}",
                esc(prog),
                h.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_bucket{{program=\"{}\",le=\"+Inf\"}} {}",
            esc(prog),
            h.count
        );
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_sum{{program=\"{}\"}} {}",
            esc(prog),
            h.sum
        );
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_count{{program=\"{}\"}} {}",
            esc(prog),
            h.count
        );
    }
    let _ = writeln!(o, "# HELP drover_step_duration_seconds How long each pre-start step took.\n# TYPE drover_step_duration_seconds gauge");
    for st in &s.steps {
        if let Some(d) = st.duration_s {
            let _ = writeln!(
                o,
                "drover_step_duration_seconds{{step=\"{}\",state=\"{}\"}} {d}",
                esc(&st.name),
                st.state
            );
        }
    }
    let _ = writeln!(o, "# HELP drover_reloads_total Configuration reloads by result.\n# TYPE drover_reloads_total counter");
    let _ = writeln!(
        o,
        "drover_reloads_total{{result=\"ok\"}} {}\ndrover_reloads_total{{result=\"error\"}} {}",
        m.reloads_ok, m.reloads_failed
    );
    let _ = writeln!(o, "# HELP drover_health_probe_failures_total Failed health probes by program.\n# TYPE drover_health_probe_failures_total counter");
    for (prog, n) in &m.probe_failures {
        let _ = writeln!(
            o,
            "drover_health_probe_failures_total{{program=\"{}\"}} {n}",
            esc(prog)
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.07);
        h.observe(0.3);
        h.observe(100.0);
        assert_eq!(h.counts[0], 0); // <= 0.05
        assert_eq!(h.counts[1], 1); // <= 0.1
        assert_eq!(h.counts[3], 2); // <= 0.5
        assert_eq!(*h.counts.last().unwrap(), 2); // <= 60
        assert_eq!(h.count, 3);
    }
}

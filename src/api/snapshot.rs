//! What the loop publishes after every event: a plain, cloneable picture of drover's state, read
//! by the HTTP server, the metrics renderer and `drover status`. Nothing here refers back to the
//! loop, so the API cannot touch worker state.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    /// starting | running | draining | stopping
    pub state: &'static str,
    /// what /readyz answers
    pub ready: bool,
    pub pid: u32,
    pub pid1: bool,
    pub config: String,
    /// drover's, and every other age below, as of `published`; `Snapshot::at` brings them to the
    /// moment they are served (`ages.rs`)
    pub uptime_s: f64,
    /// how the mutating routes are protected: token | unix-socket | off
    pub control: &'static str,
    pub last_reload: Option<serde_json::Value>,
    /// how budgets are enforced, and why
    pub budget: Option<serde_json::Value>,
    pub steps: Vec<StepStatus>,
    pub sockets: Vec<SocketStatus>,
    /// the kernel's listen-queue overflow counters: node-wide (the network namespace), not
    /// drover's alone
    pub node: Option<NodeCounters>,
    pub programs: Vec<ProgramStatus>,
    #[serde(skip)]
    pub metrics: Counters,
    /// the history ring, shared with the loop (served by GET /history)
    #[serde(skip)]
    pub history: Option<std::sync::Arc<super::history::History>>,
    /// when the loop published it: an idle loop does not wake to publish again, so the ages
    /// grow from here to the moment they are served
    #[serde(skip)]
    pub published: Option<std::time::Instant>,
}

impl Snapshot {
    /// What anyone who can connect may see: the snapshot without its private fields, which only
    /// an authenticated caller (the unix socket, or the bearer token) gets. Every private field
    /// is removed here, in one place.
    /// `keep_output`: the caller may read workers' output (`server::may_read_output`), so a
    /// crashed worker's last words stay.
    pub fn public(mut self, keep_output: bool) -> Snapshot {
        for p in &mut self.programs {
            if !keep_output {
                for w in &mut p.workers {
                    if let Some(serde_json::Value::Object(e)) = &mut w.last_exit {
                        e.remove("last_words");
                    }
                }
            }
            if let Some(pre) = &mut p.preloader {
                pre.error_detail = None;
            }
        }
        if !keep_output {
            if let Some(serde_json::Value::Object(r)) = &mut self.last_reload {
                if let Some(serde_json::Value::String(m)) = r.get_mut("message") {
                    *m = without_quotes(m);
                }
            }
        }
        self
    }
}

/// A configuration error as those who may not read the configuration see it (`/events`, and
/// `/status` without the token): every quoted text — a command, a value as written — becomes
/// `"…"`, so a secret written inline is not told; where and what is wrong stays.
pub fn without_quotes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            out.push('…');
            let mut escaped = false;
            for c in chars.by_ref() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        out.push('"');
                        break;
                    }
                    _ => escaped = false,
                }
            }
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCounters {
    pub listen_overflows: u64,
    pub listen_drops: u64,
    /// what the counters cover
    pub scope: &'static str,
}

/// Where a pre-start step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Succeeded,
    Failed,
    /// drover was told to stop while it ran (or waited to retry): it got its stop signal
    Interrupted,
    Skipped,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Interrupted => "interrupted",
            StepState::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStatus {
    pub name: String,
    pub state: StepState,
    pub exit: Option<serde_json::Value>,
    pub attempts: u32,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketStatus {
    pub name: String,
    pub listen: String,
    /// connections waiting to be accepted (read at request time)
    pub queue: Option<u32>,
    /// the most the kernel queues for it (the backlog, capped by net.core.somaxconn)
    pub queue_max: Option<u32>,
    /// why the queue is not known, when it is not
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_unknown: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    pub desired: u32,
    pub min_ready: u32,
    pub ready_workers: u32,
    pub crash_looping: bool,
    pub rolling: bool,
    /// a program-level health problem (probes no worker answered), if any
    pub health: Option<String>,
    /// the per-worker budget, if any
    pub budget: Option<serde_json::Value>,
    /// the last autoscaling decision, with its inputs
    pub autoscale: Option<crate::resources::autoscale::Decision>,
    /// above max_queue: `{queue, max_queue, since_s}`; /readyz answers 503 meanwhile
    pub shedding: Option<serde_json::Value>,
    /// preload = true: its pid, state, since when, and last error
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preloader: Option<PreloaderStatus>,
    /// the roll in progress (`rolling`), if any
    pub roll: Option<RollStatus>,
    /// how the program's last roll ended, if one has
    pub last_roll: Option<LastRoll>,
    /// its workers have not started: what it waits for (`depends_on`), `db: ready 0/1, …`
    pub waiting_for: Option<String>,
    /// it never will: the dependency that failed for good
    pub will_not_start: Option<String>,
    pub workers: Vec<WorkerStatus>,
}

/// A rolling restart in progress.
#[derive(Debug, Clone, Serialize)]
pub struct RollStatus {
    /// restart | reload | memory | lifetime
    pub reason: &'static str,
    /// when it was asked for (unix seconds)
    pub started_at: u64,
    /// old workers replaced so far, of how many
    pub replaced: u32,
    pub of: u32,
    /// what it waits for before it can replace anything, when that is not a replacement
    pub waiting_for: Option<&'static str>,
}

/// How a program's last rolling restart ended (`done`, `abandoned`: a replacement, or the new
/// preloader, never became ready and the old workers keep serving; `cancelled`: the program was
/// stopped or removed meanwhile).
#[derive(Debug, Clone, Serialize)]
pub struct LastRoll {
    /// one more for every roll of the program that ends: what `drover ctl … --wait` compares
    pub seq: u64,
    pub reason: &'static str,
    /// done | abandoned | cancelled
    pub outcome: &'static str,
    /// unix seconds
    pub started_at: u64,
    pub ended_at: u64,
    pub took_s: f64,
    pub replaced: u32,
    pub of: u32,
    /// abandoned: the index of the worker whose replacement failed (null: the new preloader did)
    pub worker: Option<u32>,
    /// abandoned or cancelled: why, in drover's words
    pub why: Option<String>,
    /// the workers running before the roll still serve (abandoned)
    pub old_workers_kept: bool,
    /// all of it in one line, as logged
    pub message: String,
}

impl LastRoll {
    pub fn abandoned(&self) -> bool {
        self.outcome == "abandoned"
    }
}

/// A program's preloader (`preload = true`).
#[derive(Debug, Clone, Serialize)]
pub struct PreloaderStatus {
    pub pid: Option<i32>,
    /// loading | ready | failed | stopped (none runs: before the workers start, at shutdown)
    pub state: &'static str,
    pub since_s: Option<f64>,
    /// why the last preloader failed, in one line
    pub error: Option<String>,
    /// more about that failure (e.g. the end of its output), which may quote the application's
    /// data: private (`Snapshot::public` removes it)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub index: u32,
    pub pid: Option<i32>,
    pub state: &'static str,
    pub ready: bool,
    pub restarts: u32,
    pub uptime_s: Option<f64>,
    pub last_exit: Option<serde_json::Value>,
    pub health_failures: u32,
    /// read when served: its memory cgroup's working set where drover manages one, else its
    /// process's resident set
    pub memory_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
    /// percent of one core over the last sample interval (when budgets are sampled)
    pub cpu_percent: Option<f64>,
    /// the worker's cgroup directories, where drover manages one
    pub cgroup: Vec<String>,
    /// its memory cgroup, read for `memory_bytes` when served
    #[serde(skip)]
    pub memory_cgroup: Option<crate::resources::cgroup::MemoryGauge>,
    /// the last STATUS= it sent to NOTIFY_SOCKET
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

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
pub struct Counters {
    /// (program, reason) -> restarts
    pub restarts: BTreeMap<(String, String), u64>,
    pub ready_latency: BTreeMap<String, Histogram>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// program -> health probes that failed
    pub probe_failures: BTreeMap<String, u64>,
}

impl Counters {
    pub fn restart(&mut self, program: &str, reason: &str) {
        *self
            .restarts
            .entry((program.to_string(), reason.to_string()))
            .or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_preloader(detail: Option<&str>) -> Snapshot {
        Snapshot {
            programs: vec![ProgramStatus {
                name: "api".into(),
                desired: 1,
                min_ready: 0,
                ready_workers: 0,
                crash_looping: false,
                rolling: false,
                health: None,
                budget: None,
                autoscale: None,
                shedding: None,
                preloader: Some(PreloaderStatus {
                    pid: None,
                    state: "failed",
                    since_s: None,
                    error: Some("preloader exited with code 1".into()),
                    error_detail: detail.map(String::from),
                }),
                roll: None,
                last_roll: None,
                waiting_for: None,
                will_not_start: None,
                workers: vec![],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_config_error_loses_its_quoted_values() {
        let m = "drover.toml:5:11: program.s.command: unclosed `${` in \"sleep --token=SECRET6 ${NOPE\"\nand \"a \\\"quoted\\\" one\" here";
        let w = super::without_quotes(m);
        assert!(!w.contains("SECRET6") && !w.contains("quoted"), "{w}");
        assert_eq!(
            w,
            "drover.toml:5:11: program.s.command: unclosed `${` in \"…\"\nand \"…\" here"
        );
    }

    #[test]
    fn the_public_snapshot_has_no_preloader_error_detail() {
        let full = serde_json::to_value(with_preloader(Some("KeyError: 'DATABASE_URL'"))).unwrap();
        assert_eq!(
            full["programs"][0]["preloader"]["error_detail"],
            "KeyError: 'DATABASE_URL'"
        );
        let public = serde_json::to_value(with_preloader(Some("KeyError")).public(false)).unwrap();
        let pre = &public["programs"][0]["preloader"];
        assert!(pre.get("error_detail").is_none(), "{pre}");
        assert_eq!(pre["error"], "preloader exited with code 1");
        // absent when there is none, as before the field existed
        let none = serde_json::to_value(with_preloader(None)).unwrap();
        assert!(none["programs"][0]["preloader"]
            .get("error_detail")
            .is_none());
    }

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

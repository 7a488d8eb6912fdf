//! What happens, as records a client can follow (`GET /events`, `drover events`, the page).
//!
//! The loop emits an `Event` where it already logs what happened (`supervisor/emit.rs`); `Feed`
//! numbers it (ids from 1, monotonic for the life of this drover), stamps it, renders its SSE
//! frame once and keeps it in a backlog of the last `BACKLOG` events, shared with the status
//! thread, which streams from it (`event_stream.rs`). Emitting is O(1) whatever the clients do:
//! one short lock (the status thread holds it only to copy out at most `MAX_PER_CHUNK` frames),
//! a push, a pop when full, and one `Notify` permit for the status thread's hub task, which
//! wakes the streams there (`hub`): the loop never touches a stream, however many there are.
//! Nothing here waits on a client.
//!
//! Events are public (served without the token, like /status): they carry names, indexes,
//! pids, exit statuses, counts and drover's own reasons — never an environment value, argv or a
//! worker's output.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde::Serialize;
use tokio::sync::{watch, Notify};

/// Events kept for replay (`Last-Event-ID`); a stream that falls further behind is dropped.
pub const BACKLOG: usize = 1000;
/// At most this many events are copied into one chunk of a stream per wake-up.
pub const MAX_PER_CHUNK: usize = 256;

/// What happened. Serialized with its `type` beside its fields.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    WorkerStarted {
        program: String,
        worker: u32,
        pid: i32,
        /// forked by the program's preloader rather than spawned
        forked: bool,
    },
    /// follows `worker_started` when the slot had a process before (a restart)
    WorkerRestarted {
        program: String,
        worker: u32,
        pid: i32,
        /// restarts of this slot so far
        restarts: u32,
    },
    WorkerReady {
        program: String,
        worker: u32,
        pid: i32,
        after_seconds: f64,
    },
    WorkerExited {
        program: String,
        worker: u32,
        pid: i32,
        /// the exit code, when it exited
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<i32>,
        /// the signal's name (`SIGKILL`), when a signal ended it
        #[serde(skip_serializing_if = "Option::is_none")]
        signal: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        signal_number: Option<i32>,
        /// why it ended: `crashed`, `exited`, `oom`, `memory`, or the stop's reason (`shutdown`, `scale`, ...)
        reason: &'static str,
        uptime_seconds: f64,
        /// whether drover starts it again
        restart: bool,
        /// when, if it does
        #[serde(skip_serializing_if = "Option::is_none")]
        restart_in_seconds: Option<f64>,
    },
    RollStarted {
        program: String,
        reason: &'static str,
        workers: usize,
    },
    RollFinished {
        program: String,
        /// `done`, `abandoned` or `cancelled`
        outcome: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        why: Option<String>,
    },
    Scaled {
        program: String,
        from: u32,
        to: u32,
        why: &'static str,
    },
    BudgetRecycle {
        program: String,
        worker: u32,
        pid: i32,
        memory_bytes: u64,
        memory_soft: u64,
    },
    BudgetKill {
        program: String,
        worker: u32,
        pid: i32,
        memory_bytes: u64,
        memory_hard: u64,
    },
    SheddingOn {
        program: String,
        queue: u32,
        max_queue: u32,
    },
    SheddingOff {
        program: String,
        queue: u32,
        max_queue: u32,
        after_seconds: f64,
    },
    ReloadApplied {
        message: String,
    },
    ReloadRejected {
        why: String,
    },
    DependencyWaiting {
        program: String,
        on: Vec<String>,
    },
    DependencySatisfied {
        program: String,
        held: Vec<String>,
    },
    ShuttingDown {
        why: String,
        fast: bool,
    },
}

impl Event {
    /// The `type` word, as the SSE `event:` field and the metric's label.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::WorkerStarted { .. } => "worker_started",
            Event::WorkerRestarted { .. } => "worker_restarted",
            Event::WorkerReady { .. } => "worker_ready",
            Event::WorkerExited { .. } => "worker_exited",
            Event::RollStarted { .. } => "roll_started",
            Event::RollFinished { .. } => "roll_finished",
            Event::Scaled { .. } => "scaled",
            Event::BudgetRecycle { .. } => "budget_recycle",
            Event::BudgetKill { .. } => "budget_kill",
            Event::SheddingOn { .. } => "shedding_on",
            Event::SheddingOff { .. } => "shedding_off",
            Event::ReloadApplied { .. } => "reload_applied",
            Event::ReloadRejected { .. } => "reload_rejected",
            Event::DependencyWaiting { .. } => "dependency_waiting",
            Event::DependencySatisfied { .. } => "dependency_satisfied",
            Event::ShuttingDown { .. } => "shutting_down",
        }
    }
}

/// The record as it is sent: `{"id": N, "time": "...", "type": "...", fields...}`.
#[derive(Serialize)]
struct Record<'a> {
    id: u64,
    time: &'a str,
    #[serde(flatten)]
    event: &'a Event,
}

/// One SSE frame, `id: N\nevent: TYPE\ndata: {json}\n\n`.
pub fn frame(id: u64, time: &str, event: &Event) -> Bytes {
    let json = serde_json::to_string(&Record { id, time, event }).unwrap_or_default();
    Bytes::from(format!(
        "id: {id}\nevent: {}\ndata: {json}\n\n",
        event.kind()
    ))
}

/// The backlog and its counts.
#[derive(Default)]
struct Ring {
    /// (id, frame), oldest first; ids are consecutive
    frames: VecDeque<(u64, Bytes)>,
    /// events emitted per type
    totals: BTreeMap<&'static str, u64>,
}

/// Where a stream resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// the ids after this one are all still kept: replay them
    After(u64),
    /// `missed` events after the given id are gone; replay from the oldest kept
    Lost { missed: u64, from: u64 },
    /// the id was never issued by this drover (ahead of the newest: another run's); replay
    /// everything kept
    Unknown { newest: u64, from: u64 },
}

/// The events of this drover run: the backlog, its counters, and a `watch` that carries the
/// newest id to the streams.
pub struct Feed {
    ring: Mutex<Ring>,
    /// the newest id issued, as the loop left it
    last: AtomicU64,
    /// the loop's one wake-up for the hub, whatever the number of streams
    wake: Notify,
    hub_running: AtomicBool,
    /// the newest id, as the hub passes it on to the streams
    newest: watch::Sender<u64>,
    closed: watch::Sender<bool>,
    /// streams closed for falling more than `BACKLOG` behind
    pub dropped_clients: AtomicU64,
    /// open event streams
    pub streams: AtomicUsize,
    capacity: usize,
}

impl Default for Feed {
    fn default() -> Self {
        Feed::with_capacity(BACKLOG)
    }
}

impl Feed {
    pub fn with_capacity(capacity: usize) -> Feed {
        Feed {
            ring: Mutex::default(),
            last: AtomicU64::new(0),
            wake: Notify::new(),
            hub_running: AtomicBool::new(false),
            newest: watch::channel(0).0,
            closed: watch::channel(false).0,
            dropped_clients: AtomicU64::new(0),
            streams: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number, stamp and keep `event`, and wake the hub. O(1).
    pub fn emit(&self, event: Event) -> u64 {
        let time = crate::logs::now_rfc3339();
        let id = {
            let mut r = self.lock();
            // only the loop emits: the id is the newest plus one
            let id = self.last.load(Ordering::Relaxed) + 1;
            r.frames.push_back((id, frame(id, &time, &event)));
            if r.frames.len() > self.capacity {
                r.frames.pop_front();
            }
            *r.totals.entry(event.kind()).or_default() += 1;
            self.last.store(id, Ordering::Release);
            id
        };
        self.wake.notify_one();
        id
    }

    /// The newest id issued (0: none yet).
    pub fn newest(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }

    /// The streams' view of the newest id and of the end, with the hub running to move them
    /// (started by the first stream, on the status thread's runtime).
    pub fn subscribe(self: &Arc<Self>) -> (watch::Receiver<u64>, watch::Receiver<bool>) {
        if !self.hub_running.swap(true, Ordering::Relaxed) {
            tokio::spawn(hub(self.clone()));
        }
        (self.newest.subscribe(), self.closed.subscribe())
    }

    /// drover is exiting: streams send what is left and end.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Where a client that last saw `seen` resumes (`None`: it saw nothing, start now).
    pub fn resume(&self, seen: Option<u64>) -> Resume {
        let newest = self.newest();
        let Some(seen) = seen else {
            return Resume::After(newest);
        };
        let oldest = self.lock().frames.front().map_or(newest + 1, |f| f.0);
        if seen > newest {
            Resume::Unknown {
                newest,
                from: oldest.saturating_sub(1),
            }
        } else if seen + 1 < oldest {
            Resume::Lost {
                missed: oldest - 1 - seen,
                from: oldest - 1,
            }
        } else {
            Resume::After(seen)
        }
    }

    /// The frames after id `after`, at most `max`, and the last id among them; `Err` when some
    /// after `after` are no longer kept (the client fell more than the backlog behind).
    pub fn since(&self, after: u64, max: usize) -> Result<(Vec<Bytes>, u64), u64> {
        let r = self.lock();
        let Some(&(oldest, _)) = r.frames.front() else {
            return Ok((vec![], after));
        };
        if after + 1 < oldest {
            return Err(oldest - 1 - after);
        }
        let skip = (after + 1 - oldest) as usize;
        let out: Vec<Bytes> = r
            .frames
            .iter()
            .skip(skip)
            .take(max)
            .map(|f| f.1.clone())
            .collect();
        Ok((
            out,
            after + r.frames.len().saturating_sub(skip).min(max) as u64,
        ))
    }

    /// Whether a client that has been handed every id up to `at` has fallen out of the backlog.
    pub fn behind(&self, at: u64) -> bool {
        self.lock().frames.front().is_some_and(|f| at + 1 < f.0)
    }

    /// `drover_events_total{type}` and `drover_events_dropped_clients_total`, Prometheus text.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP drover_events_total Events emitted on /events, by type.\n# TYPE drover_events_total counter\n",
        );
        for (t, n) in &self.lock().totals {
            out.push_str(&format!("drover_events_total{{type=\"{t}\"}} {n}\n"));
        }
        out.push_str(&format!(
            "# HELP drover_events_dropped_clients_total Event streams closed for falling more than {} events behind.\n# TYPE drover_events_dropped_clients_total counter\ndrover_events_dropped_clients_total {}\n",
            self.capacity,
            self.dropped_clients.load(Ordering::Relaxed)
        ));
        out.push_str(&format!(
            "# HELP drover_events_streams Event streams open now.\n# TYPE drover_events_streams gauge\ndrover_events_streams {}\n",
            self.streams.load(Ordering::Relaxed)
        ));
        out
    }
}

/// On the status thread: each wake-up from the loop (however many emits it stands for) moves
/// the streams' `watch` to the newest id, waking them all there. One task; no timer.
async fn hub(feed: Arc<Feed>) {
    loop {
        feed.wake.notified().await;
        feed.newest.send_replace(feed.newest());
    }
}

/// The feed the loop and the status thread share.
pub type Shared = Arc<Feed>;

#[cfg(test)]
mod tests;

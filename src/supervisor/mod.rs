//! The event loop. It owns every worker's state; nothing else does.
//!
//! One task `select!`s over four sources and one timer: exits from the reaper, signals, control
//! requests from the API, and `Event`s from the I/O tasks the loop started (HTTP probes, cgroup
//! memory thresholds, file changes, a step's output) — and `/healthz`'s liveness pings, answered
//! on the spot; the timer is armed for the nearest deadline
//! of every part (backoff, stop and start timeouts, readiness and health checks, sampling, queue
//! checks, history samples, drain, debounce, a step's timeout or retry, the watchdog). After each wake-up `advance` lets every
//! concern act on `now`, then the loop publishes a fresh `Snapshot` and tells systemd.
//!
//! The concerns, one file each, are plain parts of `Supervisor` that take `now` and decide:
//! `steps` (pre-start steps, the first phase), `workers` (spawn, stop, exit, scaling),
//! `crash_loop` (every worker failing: `on_exhausted`, and the app that never started),
//! `depends` (the dependency gate: a program starts once what it `depends_on` holds),
//! `essential` (an essential program's end ends drover),
//! `readiness`, `health`, `rolling` (ready-first replacement; `roll_outcome`: how each roll
//! ended, logged once and kept for /status), `budget` (memory, sampling,
//! autoscaling), `saturation` (accept queues, load shedding), `history` (the ring's samples),
//! `reload` (config diff), `shutdown` (signals, drain, stop), `publish` (snapshot, sd_notify,
//! watchdog). `program` holds the per-program and per-worker data they share.

mod app_metrics;
mod budget;
mod crash_loop;
mod depends;
mod emit;
mod essential;
mod health;
mod history;
mod last_words;
mod preload;
mod program;
mod publish;
mod readiness;
mod reconcile;
mod reload;
mod roll_outcome;
mod rolling;
mod saturation;
mod shutdown;
mod steps;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info};

use crate::api::control::{Refused, Reply, Request};
use crate::api::snapshot::{Counters, Snapshot};
use crate::config::{Config, OnExhausted};
use crate::logs::output::Output;
use crate::process::guard::Guard;
use crate::process::probe;
use crate::process::reaper::{ExitStatus, Reaper};
use crate::process::signals::Signals;
use crate::process::sockets::Bound;
use crate::resources::cgroup::SlotCgroup;
use crate::resources::enforcement::Enforcement;

pub use program::watch_paths;

/// Exit codes (SPEC §1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_STEP: i32 = 3;

/// After the shutdown timeout everything was KILLed; wait this much more for the reaper.
pub const KILL_GRACE: Duration = Duration::from_secs(5);

/// Before exiting, worker output still in pipes has this long to be read and written.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

/// Re-reads the configuration for a reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, String>>;

/// What the loop's I/O tasks report. Each carries the ids it is about, so a report on a
/// program or worker that has gone since is dropped.
#[derive(Debug)]
pub enum Event {
    /// an HTTP health probe through a program's socket finished
    Probed {
        prog: u64,
        outcome: probe::HttpOutcome,
    },
    /// a worker's memory cgroup crossed memory_soft (cgroup v1 threshold)
    MemoryCrossed { prog: u64, slot: u64 },
    /// files under a program's watch paths changed (or the watch queue overflowed)
    FilesChanged {
        program: String,
        changes: crate::watch::Changes,
    },
    /// a pre-start step's output reached its end; its last lines
    StepOutput { run: u64, tail: Vec<String> },
    /// workers sent sd_notify messages to drover's NOTIFY_SOCKET: they wait in its inbox
    Notified,
    /// program `prog`'s preloader `pid` (or a worker it forked) sent a message
    Preloader {
        prog: u64,
        pid: i32,
        said: crate::process::preload::Said,
    },
    /// the output pipe of worker `slot`'s process `pid` reached its end
    OutputEnded { prog: u64, slot: u64, pid: i32 },
}

/// Where tasks send their `Event`s.
pub type Events = mpsc::UnboundedSender<Event>;

/// The one channel from tasks to the loop.
pub fn events() -> (Events, mpsc::UnboundedReceiver<Event>) {
    mpsc::unbounded_channel()
}

pub struct Context {
    pub config_label: String,
    pub pid1: bool,
    pub guard: Option<Guard>,
    pub output: Output,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub control: mpsc::Receiver<Request>,
    /// where the loop's I/O tasks report (`run` takes the receiving end)
    pub events: Events,
    pub token: watch::Sender<Option<Arc<str>>>,
    /// the status listener's TLS configuration, re-read on reload
    pub tls: watch::Sender<Option<crate::api::tls::ServerConfig>>,
    pub control_mode: &'static str,
    pub reload: Reloader,
    pub budget: Enforcement,
    /// systemd's notification socket, when started as Type=notify
    pub notify: Option<crate::api::sd_notify::Notifier>,
    /// answers `/healthz`'s pings: the loop is alive while it comes back to its `select!`
    pub liveness: crate::api::liveness::Responder,
    /// what happens, for `GET /events` (`emit.rs`)
    pub feed: Arc<crate::api::events::Feed>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunState {
    /// pre-start steps run; no worker yet
    Steps,
    Running,
    /// /readyz says 503; workers keep serving until `until`
    Draining {
        until: Instant,
        fast: bool,
    },
    Stopping {
        hard_deadline: Instant,
    },
}

/// How long drover waits at start for the programs' log files to open.
const LOG_FILES_OPEN: Duration = Duration::from_secs(2);

pub struct Supervisor {
    cx: Context,
    /// every unreaped child, held by a pidfd: the only way drover signals a process
    children: crate::process::children::Children,
    events: Events,
    cfg: Config,
    programs: Vec<program::Program>,
    sockets: Vec<Bound>,
    /// live worker pid -> (program id, slot id)
    pids: HashMap<i32, (u64, u64)>,
    probes: HashMap<i32, readiness::ExecProbe>,
    steps: steps::Steps,
    run: RunState,
    exit_code: i32,
    /// drover ends now with this code (a step failed, shutdown before any worker)
    finished: Option<i32>,
    started: Instant,
    rng: u64,
    next_id: u64,
    metrics: Counters,
    last_reload: Option<serde_json::Value>,
    /// slot cgroups waiting to be removed (processes still leaving)
    cgroup_gc: Vec<SlotCgroup>,
    next_sample: Option<Instant>,
    saturation: saturation::Saturation,
    /// NOTIFY_SOCKET for workers of programs with readiness check "notify", once bound, and
    /// the inbox its reader fills
    notify_socket: HashMap<u32, String>,
    notify_inbox: std::sync::Arc<crate::process::notify::Inbox>,
    /// the history ring and its sampler (None: `history = "0s"`)
    history: Option<history::Recorder>,
    systemd: publish::Systemd,
    /// how the last worker that ended for good (no restart) ended: the exit code when all are done
    last_ended: Option<ExitStatus>,
    /// drover's runtime directory (the notify socket, default metrics directories), once needed
    rundir: Option<crate::process::rundir::RunDir>,
    /// workers given up on, still not reaped after SIGKILL (`Action::Abandon`)
    lost: std::collections::HashSet<i32>,
    /// exit records waiting for their worker's last lines; the words `/status` shows
    last_words: last_words::LastWords,
}

impl Supervisor {
    pub fn new(cfg: Config, sockets: Vec<Bound>, cx: Context) -> Supervisor {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let systemd = publish::Systemd::new(cx.notify.as_ref(), Instant::now());
        let mut cx = cx;
        let children = crate::process::children::Children::new(cx.guard.take());
        let mut s = Supervisor {
            children,
            events: cx.events.clone(),
            cx,
            steps: steps::Steps::new(&cfg.prestart),
            cfg: cfg.clone(),
            programs: Vec::new(),
            sockets,
            pids: HashMap::new(),
            probes: HashMap::new(),
            run: RunState::Steps,
            exit_code: EXIT_OK,
            finished: None,
            started: Instant::now(),
            rng: seed,
            next_id: 1,
            metrics: Counters::default(),
            last_reload: None,
            cgroup_gc: Vec::new(),
            next_sample: None,
            saturation: Default::default(),
            notify_socket: HashMap::new(),
            notify_inbox: Default::default(),
            history: history::Recorder::new(
                cfg.supervisor.history,
                cfg.supervisor.history_interval,
            ),
            systemd,
            last_ended: None,
            rundir: None,
            lost: Default::default(),
            last_words: Default::default(),
        };
        for p in &cfg.programs {
            let id = s.new_id();
            let prog = program::Program::new(id, p.clone(), &s.sockets);
            s.programs.push(prog);
        }
        s.cx.output.rings().configure(&cfg.programs);
        // before any worker starts, so its first lines land in its file, or the error is said
        s.cx.output.files().configure(&cfg.programs);
        s.cx.output.files().wait_opened(LOG_FILES_OPEN);
        s
    }

    fn on_exhausted(&self) -> OnExhausted {
        self.cfg.supervisor.on_exhausted.unwrap_or(if self.cx.pid1 {
            OnExhausted::Exit
        } else {
            OnExhausted::Stay
        })
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: backoff jitter needs no quality, only spread
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pidx(&self, prog: u64) -> Option<usize> {
        self.programs.iter().position(|p| p.id == prog)
    }

    /// drover's runtime directory, created on first need (the guard removes it if drover is
    /// killed; `run` removes it at exit).
    fn runtime_dir(&mut self) -> Result<std::path::PathBuf, String> {
        if let Some(r) = &self.rundir {
            return Ok(r.path().to_path_buf());
        }
        let r = crate::process::rundir::RunDir::create()?;
        if let Some(g) = self.children.guard() {
            g.runtime_dir(r.path());
        }
        debug!("runtime directory {}", r.path().display());
        let path = r.path().to_path_buf();
        self.rundir = Some(r);
        Ok(path)
    }

    /// Workers' parent-death signal: checked against drover's pid (none as PID 1).
    fn parent_pid(&self) -> Option<i32> {
        (!self.cx.pid1).then(|| std::process::id() as i32)
    }

    /// Run steps, then supervise until shutdown. Returns the process exit code.
    pub async fn run(
        mut self,
        mut reaper: Reaper,
        mut signals: Signals,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> i32 {
        self.guard_cgroups();
        self.ensure_notify_socket();
        self.steps_begin(Instant::now());
        self.publish();
        loop {
            if let Some(code) = self.exit_now() {
                self.publish();
                self.remove_cgroups().await;
                if let Some(r) = &self.rundir {
                    r.remove();
                }
                self.cx.output.settle(OUTPUT_GRACE).await;
                // every pipe has been read: the exit records still waiting get their last words
                self.last_words_due(Instant::now(), true);
                self.close_streams().await;
                return code;
            }
            let deadline = self.next_deadline(Instant::now());
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exits = reaper.next() => {
                    let now = Instant::now();
                    for (pid, st) in exits {
                        self.on_exit(pid.as_raw(), st, now);
                    }
                }
                sig = signals.recv() => self.on_signal(sig, Instant::now()),
                Some(req) = self.cx.control.recv() => {
                    let answer = self.on_control(req.command, Instant::now());
                    // what the client reads next already shows what it asked for (a roll
                    // started: `drover ctl … --wait` polls /status right after the answer)
                    self.publish();
                    let _ = req.reply.send(answer);
                }
                Some(ev) = events.recv() => self.on_event(ev, Instant::now()),
                // answered in O(1); nothing changed, so nothing to advance or publish
                _ = self.cx.liveness.answer() => continue,
                _ = sleep => {}
            }
            self.advance(Instant::now());
            // one turn each: the tasks this wake-up spawned or woke (output pumps, probes,
            // readers) run before the loop takes its next wake-up. Without it a loop woken
            // without pause (workers that exit as fast as they start) kept the runtime for up
            // to tokio's budget of 128 wake-ups per turn, spawned pumps faster than they were
            // polled, and held one pipe per restart that no pump had opened yet
            tokio::task::yield_now().await;
        }
    }

    /// The code to exit with, once there is nothing left to wait for.
    fn exit_now(&mut self) -> Option<i32> {
        if let Some(code) = self.finished {
            return Some(code);
        }
        match self.run {
            RunState::Stopping { .. } if self.programs.iter().all(|p| p.workers.is_empty()) => {
                info!("all workers stopped; exiting with code {}", self.exit_code);
                Some(self.exit_code)
            }
            RunState::Stopping { hard_deadline } if Instant::now() >= hard_deadline => {
                let left: Vec<_> = self.pids.keys().copied().collect();
                error!(
                    "shutdown: {} worker process(es) {left:?} still not reaped {}s after SIGKILL; exiting anyway",
                    left.len(),
                    KILL_GRACE.as_secs()
                );
                Some(self.exit_code.max(EXIT_RUNTIME))
            }
            _ => None,
        }
    }

    fn on_exit(&mut self, pid: i32, status: ExitStatus, now: Instant) {
        // whatever it was, what it left in its process group goes with it, and drover lets go
        // of its pidfd
        self.children.reaped(pid);
        if self.steps.owns(pid) {
            self.on_step_exit(pid, status, now);
        } else if let Some(p) = self.probes.remove(&pid) {
            self.on_exec_probe(p, status, now);
        } else if let Some((prog, slot)) = self.pids.remove(&pid) {
            self.on_worker_exit(prog, slot, pid, status, now);
        } else if let Some(pi) = self.preloader_of(pid) {
            self.on_preloader_exit(pi, pid, status, now);
        } else if self.lost.remove(&pid) {
            info!("pid {pid}, a worker drover had given up on, was finally reaped ({status})");
        } else if self.children.guard_pid() == Some(pid) {
            error!("the guard process (pid {pid}) exited with {status}: workers will not be cleaned up if drover is killed");
        } else {
            debug!("reaped orphan pid {pid} ({status})");
        }
    }

    fn on_event(&mut self, ev: Event, now: Instant) {
        match ev {
            Event::Probed { prog, outcome } => self.on_http_result(prog, outcome, now),
            Event::MemoryCrossed { prog, slot } => self.on_memory_notice(prog, slot, now),
            Event::FilesChanged { program, changes } => {
                self.on_files_changed(&program, changes, now)
            }
            Event::StepOutput { run, tail } => self.on_step_output(run, tail, now),
            Event::Notified => self.on_notified(now),
            Event::Preloader { prog, pid, said } => self.on_preloader_said(prog, pid, said, now),
            Event::OutputEnded { prog, slot, pid } => self.on_output_ended(prog, slot, pid),
        }
    }

    fn on_control(&mut self, cmd: crate::api::control::Command, now: Instant) -> Reply {
        match self.run {
            RunState::Steps => Err(Refused::Unavailable(format!(
                "pre-start step {} is still running",
                self.steps.current_name()
            ))),
            RunState::Running => self.control(cmd, now),
            _ => Err(Refused::Unavailable("drover is shutting down".into())),
        }
    }

    /// After every wake-up: each concern acts on `now`.
    fn advance(&mut self, now: Instant) {
        self.last_words_due(now, false);
        match self.run {
            RunState::Steps => self.advance_steps(now),
            RunState::Draining { until, fast } if now >= until => self.stop_everything(fast, now),
            _ => {}
        }
        if self.run != RunState::Steps {
            self.tick(now);
            self.stop_in_order(now);
            self.check_exhausted(now);
            self.check_readiness(now);
            self.check_health(now);
            self.start_gated(now);
            self.check_watch(now);
            self.check_budgets(now);
            self.check_queues(now);
            self.check_preloaders(now);
            self.record_history(now);
            self.advance_rolls(now);
            self.check_lifetimes(now);
            self.reconcile(now);
            self.check_essential(now);
            self.check_done(now);
            self.cgroup_gc.retain(|cg| !cg.remove());
            self.children.flush_guard();
            self.programs
                .retain(|p| !(p.removing && p.workers.is_empty()));
        }
        self.publish();
        self.notify_systemd(now);
    }

    /// The nearest instant at which some part has something to do.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        };
        take(self.steps.deadline());
        for p in &self.programs {
            for w in &p.workers {
                take(w.slot.deadline());
                take(p.readiness_due(w));
            }
            take(p.health.next);
            take(p.watch_due);
            if p.roll.is_none() {
                // during a roll, its own progress wakes the loop; lifetimes are looked at after
                take(
                    p.workers
                        .iter()
                        .filter(|w| w.slot.is_ready())
                        .filter_map(|w| w.retire_at)
                        .min(),
                );
            }
        }
        if self.cx.budget.sample && self.run == RunState::Running {
            take(self.next_sample);
        }
        take(self.queue_due(now));
        take(self.history_due(now));
        take(self.preload_due());
        take(self.last_words.due());
        if !self.cgroup_gc.is_empty() {
            take(Some(now + Duration::from_millis(200)));
        }
        take(self.systemd.next_watchdog);
        for pr in self.probes.values() {
            if !pr.killed {
                take(Some(pr.deadline));
            }
        }
        match self.run {
            RunState::Stopping { hard_deadline } => take(Some(hard_deadline)),
            RunState::Draining { until, .. } => take(Some(until)),
            _ => {}
        }
        d.map(|t| t.max(now))
    }
}

pub(crate) fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// drover's environment minus what is drover's own business (socket activation, sd_notify,
/// its config path); steps and workers start from this.
fn base_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "LISTEN_FDS"
                    | "LISTEN_PID"
                    | "LISTEN_FDNAMES"
                    | "NOTIFY_SOCKET"
                    | "WATCHDOG_USEC"
                    | "WATCHDOG_PID"
                    | "DROVER_CONFIG"
            )
        })
        .collect()
}

//! The event loop. It owns every worker's state; nothing else does.
//!
//! One task `select!`s over: exits from the reaper, signals, control requests from the API,
//! results of asynchronous HTTP probes, file-change notices, and one timer armed for the nearest
//! deadline (backoff, stop timeout, start timeout, readiness and health checks, drain, debounce).
//! After each event it advances rolling restarts and publishes a fresh `Snapshot`.
//!
//! Rolling restart (reload, `POST …/restart`, a watched file): for each old worker in turn a
//! replacement is started *beside* it in the same index; only when the replacement has passed
//! its readiness check is the old one stopped gracefully. The listening socket is held by drover
//! throughout, so the number of ready workers never drops and no connection is refused. If a
//! replacement fails to become ready, the roll is abandoned and the old workers keep serving.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::api::control::{self, Command, Reply, Request};
use crate::api::snapshot::Counters as Metrics;
use crate::api::snapshot::{ProgramStatus, Snapshot, SocketStatus, StepStatus, WorkerStatus};
use crate::config::{
    fmt_size, signal_name, Config, ListenAddr, LogMode, OnExhausted, ProgramCfg, ReadyCheck,
    StepCfg,
};
use crate::logs::output::{color_for, Output, Source};
use crate::process::guard::Guard;
use crate::process::probe;
use crate::process::reaper::Reaper;
use crate::process::signals::Signals;
use crate::process::sockets::Bound;
use crate::process::spawn::{self, SpawnSpec, Stdio};
use crate::resources::autoscale::Autoscaler;
use crate::resources::cgroup::{Cgroups, SlotCgroup};
use crate::state::{Action, AfterStop, ExitStatus, LastExit, Phase, Slot, SlotCfg, StopReason};

/// Exit codes (SPEC §1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_STEP: i32 = 3;

/// Lines of a failed step's output quoted in the error.
const STEP_TAIL: usize = 10;
/// After the shutdown timeout everything was KILLed; wait this much more for the reaper.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// Changes under a watched path within this window make one rolling restart.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// Re-reads the configuration for a reload.
pub type Reloader = Box<dyn Fn() -> Result<Config, String>>;

pub struct Context {
    pub config_label: String,
    pub pid1: bool,
    pub guard: Option<Guard>,
    pub output: Output,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub control: mpsc::Receiver<Request>,
    pub token: watch::Sender<Option<Arc<str>>>,
    /// the status listener's TLS configuration, re-read on reload
    pub tls: watch::Sender<Option<crate::api::tls::ServerConfig>>,
    pub control_mode: &'static str,
    pub reload: Reloader,
    /// program name -> changes under its watch paths
    pub watch: Option<mpsc::UnboundedReceiver<String>>,
    pub budget: BudgetRuntime,
    /// systemd's notification socket, when started as Type=notify
    pub notify: Option<crate::api::sd_notify::Notifier>,
}

/// How budgets are enforced in this run (decided at start, reported in /status).
#[derive(Debug, Clone)]
pub struct BudgetRuntime {
    /// "cgroup v2" | "cgroup v1" | "sampling" | "off"
    pub mode: &'static str,
    pub notes: Vec<String>,
    pub cgroups: Option<Cgroups>,
    /// the /proc sampling loop runs (CPU %, memory where no cgroup, autoscaling)
    pub sample: bool,
}

/// Sampled usage of one slot.
#[derive(Debug, Clone, Copy, Default)]
struct SlotUsage {
    memory: Option<u64>,
    cpu_percent: Option<f64>,
    ticks: u64,
    at: Option<Instant>,
}

struct Roll {
    reason: StopReason,
    started: Instant,
    /// old slot ids still to replace
    pending: VecDeque<u64>,
    /// (old slot id, its replacement's slot id)
    current: Option<(u64, u64)>,
}

struct Program {
    id: u64,
    cfg: ProgramCfg,
    slot_cfg: SlotCfg,
    slots: Vec<Slot>,
    desired: u32,
    /// drover's environment plus the program's, computed once
    env: Vec<(String, String)>,
    sockets: Vec<(String, RawFd)>,
    inodes: Vec<u64>,
    probe_target: Option<probe::Target>,
    crash_reported: bool,
    roll: Option<Roll>,
    /// being removed by a reload: dropped once its slots are gone
    removing: bool,
    /// slot id -> next readiness check
    ready_next: HashMap<u64, Instant>,
    next_health: Option<Instant>,
    http_inflight: bool,
    /// consecutive HTTP probes nobody accepted or answered
    unattributed_failures: u32,
    health_note: Option<String>,
    /// slot id -> (consecutive failures, last liveness sample)
    health: HashMap<u64, (u32, Option<probe::Sample>)>,
    watch_due: Option<Instant>,
    /// slot id -> its cgroup(s) and the OOM-kill count when its process started
    cgroups: HashMap<u64, (SlotCgroup, u64)>,
    usage: HashMap<u64, SlotUsage>,
    /// slots drover is killing or recycling for memory, and why
    memory_action: HashMap<u64, &'static str>,
    autoscaler: Option<Autoscaler>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunState {
    Starting,
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Ready,
    Health,
}

struct ExecProbe {
    prog: u64,
    slot: u64,
    kind: ProbeKind,
    deadline: Instant,
    killed: bool,
}

struct HttpResult {
    prog: u64,
    outcome: probe::HttpOutcome,
}

pub struct Supervisor {
    cx: Context,
    cfg: Config,
    programs: Vec<Program>,
    sockets: Vec<Bound>,
    /// live worker pid -> (program id, slot id)
    pids: HashMap<libc::pid_t, (u64, u64)>,
    probes: HashMap<libc::pid_t, ExecProbe>,
    http_tx: mpsc::UnboundedSender<HttpResult>,
    http_rx: mpsc::UnboundedReceiver<HttpResult>,
    steps: Vec<StepStatus>,
    run: RunState,
    exit_code: i32,
    started: Instant,
    rng: u64,
    next_id: u64,
    metrics: Metrics,
    last_reload: Option<serde_json::Value>,
    /// slot cgroups waiting to be removed (processes still leaving)
    cgroup_gc: Vec<SlotCgroup>,
    next_sample: Option<Instant>,
    mem_tx: mpsc::UnboundedSender<(u64, u64)>,
    mem_rx: mpsc::UnboundedReceiver<(u64, u64)>,
    /// READY=1 has been sent
    ready_sent: bool,
    last_status: String,
    next_watchdog: Option<Instant>,
}

enum StepEnd {
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(String),
    Shutdown,
}

fn slot_cfg(p: &ProgramCfg) -> SlotCfg {
    SlotCfg {
        policy: p.restart,
        backoff: p.backoff,
        stop_signal: p.stop_signal,
        stop_timeout: p.stop_timeout,
        start_timeout: p.readiness.timeout,
    }
}

impl Supervisor {
    pub fn new(cfg: Config, sockets: Vec<Bound>, cx: Context) -> Supervisor {
        let steps = cfg
            .prestart
            .iter()
            .map(|s| StepStatus {
                name: s.name.clone(),
                state: "pending",
                exit: None,
                attempts: 0,
                duration_s: None,
            })
            .collect();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let (http_tx, http_rx) = mpsc::unbounded_channel();
        let (mem_tx, mem_rx) = mpsc::unbounded_channel();
        let mut s = Supervisor {
            cx,
            cfg: cfg.clone(),
            programs: Vec::new(),
            sockets,
            pids: HashMap::new(),
            probes: HashMap::new(),
            http_tx,
            http_rx,
            steps,
            run: RunState::Starting,
            exit_code: EXIT_OK,
            started: Instant::now(),
            rng: seed,
            next_id: 1,
            metrics: Metrics::default(),
            last_reload: None,
            cgroup_gc: Vec::new(),
            next_sample: None,
            mem_tx,
            mem_rx,
            ready_sent: false,
            last_status: String::new(),
            next_watchdog: None,
        };
        s.next_watchdog =
            s.cx.notify
                .as_ref()
                .and_then(|n| n.watchdog)
                .map(|w| Instant::now() + w);
        for p in &cfg.programs {
            let prog = s.make_program(p.clone());
            s.programs.push(prog);
        }
        s
    }

    fn on_exhausted(&self) -> OnExhausted {
        self.cfg.supervisor.on_exhausted.unwrap_or(if self.cx.pid1 {
            OnExhausted::Exit
        } else {
            OnExhausted::Stay
        })
    }

    fn make_program(&mut self, p: ProgramCfg) -> Program {
        let mut env = base_env();
        // as systemd does for User=: the worker's own USER, LOGNAME and HOME, not drover's
        if let Some(id) = &p.identity {
            let mut set = |k: &str, v: &Option<String>| {
                if let Some(v) = v {
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.into(), v.clone()));
                }
            };
            set("USER", &id.name);
            set("LOGNAME", &id.name);
            set("HOME", &id.home);
        }
        for (k, v) in &p.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let bound: Vec<&Bound> = p
            .sockets
            .iter()
            .filter_map(|n| self.sockets.iter().find(|b| &b.name == n))
            .collect();
        let sockets: Vec<(String, RawFd)> =
            bound.iter().map(|b| (b.name.clone(), b.raw())).collect();
        let inodes = probe::inodes(&sockets.iter().map(|(_, fd)| *fd).collect::<Vec<_>>());
        let probe_target = bound.first().and_then(|b| match &b.cfg_listen {
            ListenAddr::Tcp(_) => b.local.parse().ok().map(|mut a: std::net::SocketAddr| {
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                probe::Target::Tcp(a)
            }),
            ListenAddr::Unix(path) => Some(probe::Target::Unix(path.clone())),
        });
        let id = self.next_id;
        self.next_id += 1;
        let autoscaler = p.autoscale.clone().map(Autoscaler::new);
        Program {
            id,
            slot_cfg: slot_cfg(&p),
            desired: p.workers,
            cfg: p,
            slots: Vec::new(),
            env,
            sockets,
            inodes,
            probe_target,
            crash_reported: false,
            roll: None,
            removing: false,
            ready_next: HashMap::new(),
            next_health: None,
            http_inflight: false,
            unattributed_failures: 0,
            health_note: None,
            health: HashMap::new(),
            watch_due: None,
            cgroups: HashMap::new(),
            usage: HashMap::new(),
            memory_action: HashMap::new(),
            autoscaler,
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: backoff jitter needs no quality, only spread
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn new_slot_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn pidx(&self, prog: u64) -> Option<usize> {
        self.programs.iter().position(|p| p.id == prog)
    }

    fn slot_mut(&mut self, pi: usize, id: u64) -> Option<&mut Slot> {
        self.programs[pi].slots.iter_mut().find(|s| s.id == id)
    }

    /// Run steps, then supervise until shutdown. Returns the process exit code.
    pub async fn run(mut self, mut reaper: Reaper, mut signals: Signals) -> i32 {
        self.publish();
        if let (Some(g), Some(cg)) = (self.cx.guard.as_mut(), &self.cx.budget.cgroups) {
            let keep = cg.version == crate::resources::cgroup::Version::V2;
            let mut dirs: Vec<&PathBuf> = cg.memory.iter().chain(cg.cpu.iter()).collect();
            dirs.dedup();
            for d in dirs {
                g.cgroup(d, keep);
            }
        }
        if let Err(code) = self.run_steps(&mut reaper, &mut signals).await {
            self.publish();
            return code;
        }
        let now = Instant::now();
        for pi in 0..self.programs.len() {
            let n = self.programs[pi].desired;
            for i in 0..n {
                self.add_slot(pi, i, now);
            }
            self.schedule_health(pi, now);
        }
        self.run = RunState::Running;
        if self.cx.budget.sample {
            self.next_sample = Some(now + self.cfg.budget.sample_interval);
        }
        let total: u32 = self.programs.iter().map(|p| p.desired).sum();
        info!(
            "supervising {} program{} with {} worker{} in all",
            self.programs.len(),
            plural(self.programs.len()),
            total,
            plural(total as usize)
        );
        self.publish();
        let mut watch = self.cx.watch.take();

        loop {
            if let RunState::Stopping { .. } = self.run {
                if self.programs.iter().all(|p| p.slots.is_empty()) {
                    info!("all workers stopped; exiting with code {}", self.exit_code);
                    self.publish();
                    self.remove_cgroups().await;
                    return self.exit_code;
                }
            }
            let deadline = self.next_deadline(Instant::now());
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let watch_next = async {
                match watch.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                exits = reaper.next() => {
                    let now = Instant::now();
                    for (pid, st) in exits {
                        self.on_exit(pid, st, now);
                    }
                    self.check_exhausted();
                }
                sig = signals.recv() => self.on_signal(sig),
                Some(req) = self.cx.control.recv() => {
                    let answer = self.on_control(req.command);
                    let _ = req.reply.send(answer);
                }
                Some(r) = self.http_rx.recv() => self.on_http_result(r, Instant::now()),
                Some((prog, slot)) = self.mem_rx.recv() => self.on_memory_notice(prog, slot, Instant::now()),
                Some(name) = watch_next => self.on_watch(&name),
                _ = sleep => {}
            }
            let now = Instant::now();
            if let RunState::Stopping { hard_deadline } = self.run {
                if now >= hard_deadline {
                    let left: Vec<_> = self.pids.keys().copied().collect();
                    error!(
                        "shutdown: {} worker process(es) {:?} still not reaped {}s after SIGKILL; exiting anyway",
                        left.len(),
                        left,
                        KILL_GRACE.as_secs()
                    );
                    return self.exit_code.max(EXIT_RUNTIME);
                }
            }
            if let RunState::Draining { until, fast } = self.run {
                if now >= until {
                    self.stop_everything(fast);
                }
            }
            self.tick(now);
            self.check_readiness(now);
            self.check_health(now);
            self.check_watch(now);
            self.check_budgets(now);
            self.advance_rolls(now);
            self.cgroup_gc.retain(|cg| !cg.remove());
            self.programs
                .retain(|p| !(p.removing && p.slots.is_empty()));
            self.publish();
            self.notify_systemd(now);
        }
    }

    // ---- steps ------------------------------------------------------------------------------

    async fn run_steps(&mut self, reaper: &mut Reaper, signals: &mut Signals) -> Result<(), i32> {
        for i in 0..self.cfg.prestart.len() {
            let step = self.cfg.prestart[i].clone();
            let attempts = step.retries + 1;
            let started = Instant::now();
            for attempt in 1..=attempts {
                self.steps[i].state = "running";
                self.steps[i].attempts = attempt;
                self.publish();
                if let Some(n) = &self.cx.notify {
                    n.status(&format!(
                        "pre-start step {} (attempt {attempt}/{attempts})",
                        step.name
                    ));
                }
                info!(step = %step.name, "pre-start step {} starting (attempt {attempt}/{attempts}): {}", step.name, step.command);
                let (end, tail) = self.run_step_once(&step, reaper, signals).await;
                let reason = match &end {
                    StepEnd::Exited(st) if st.success() => {
                        self.steps[i].state = "succeeded";
                        self.steps[i].exit = Some(exit_json(&LastExit::Exited(*st)));
                        self.steps[i].duration_s = Some(started.elapsed().as_secs_f64());
                        info!(step = %step.name, "pre-start step {} succeeded in {:.2}s", step.name, started.elapsed().as_secs_f64());
                        break;
                    }
                    StepEnd::Exited(st) => {
                        self.steps[i].exit = Some(exit_json(&LastExit::Exited(*st)));
                        st.to_string()
                    }
                    StepEnd::TimedOut => {
                        self.steps[i].exit = Some(serde_json::json!({"reason": "timeout"}));
                        format!(
                            "timed out after {:?} (its process group was killed)",
                            step.timeout.unwrap_or_default()
                        )
                    }
                    StepEnd::SpawnFailed(e) => {
                        self.steps[i].exit =
                            Some(serde_json::json!({"reason": "spawn", "error": e}));
                        format!("could not be started: {e}")
                    }
                    StepEnd::Shutdown => {
                        self.steps[i].state = "failed";
                        info!(
                            "shutdown requested during pre-start step {}; no worker was started",
                            step.name
                        );
                        return Err(EXIT_OK);
                    }
                };
                if attempt < attempts {
                    warn!(step = %step.name, "pre-start step {} failed: {reason} (attempt {attempt}/{attempts}; retrying in {:?})", step.name, step.retry_delay);
                    let delay = tokio::time::sleep(step.retry_delay);
                    tokio::pin!(delay);
                    loop {
                        tokio::select! {
                            _ = &mut delay => break,
                            _ = Self::watchdog_sleep(self.next_watchdog) => self.watchdog_ping(Instant::now()),
                            _ = reaper.next() => {}
                            sig = signals.recv() => {
                                if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                                    info!("shutdown requested while waiting to retry step {}; no worker was started", step.name);
                                    return Err(EXIT_OK);
                                }
                            }
                            Some(req) = self.cx.control.recv() => {
                                let _ = req.reply.send(control::err(503, "pre-start steps are still running"));
                            }
                        }
                    }
                    continue;
                }
                self.steps[i].state = "failed";
                self.steps[i].duration_s = Some(started.elapsed().as_secs_f64());
                for later in self.steps.iter_mut().skip(i + 1) {
                    later.state = "skipped";
                }
                let quoted = if tail.is_empty() {
                    "  (it printed nothing)".to_string()
                } else {
                    tail.iter()
                        .map(|l| format!("  | {l}"))
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                error!(
                    step = %step.name,
                    "pre-start step {} failed after {attempts} attempt{}: {reason}; no worker was started; exiting with code {EXIT_STEP}. Last output:\n{quoted}",
                    step.name,
                    plural(attempts as usize)
                );
                return Err(EXIT_STEP);
            }
        }
        Ok(())
    }

    async fn run_step_once(
        &mut self,
        step: &StepCfg,
        reaper: &mut Reaper,
        signals: &mut Signals,
    ) -> (StepEnd, Vec<String>) {
        let (r, w) = match spawn::pipe() {
            Ok(p) => p,
            Err(e) => return (StepEnd::SpawnFailed(format!("pipe: {e}")), vec![]),
        };
        let mut env = base_env();
        for (k, v) in &step.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        env.push(("DROVER_STEP".into(), step.name.clone()));
        let spec = SpawnSpec {
            argv: step.command.argv(),
            env,
            cwd: step.cwd.clone(),
            sockets: vec![], // steps never receive the listening sockets
            stdio: Stdio::Pipe(std::os::fd::AsRawFd::as_raw_fd(&w)),
            parent: self.parent_pid(),
            cgroup_procs: vec![],
            identity: None, // steps run as drover (migrations usually need its credentials)
        };
        let pid = match spawn::spawn(&spec) {
            Ok(pid) => pid,
            Err(e) => return (StepEnd::SpawnFailed(e.to_string()), vec![]),
        };
        drop(w);
        if let Some(g) = self.cx.guard.as_mut() {
            g.watch(pid);
        }
        let source = Arc::new(Source {
            label: format!("step.{}", step.name),
            program: step.name.clone(),
            worker: None,
            color: color_for(&step.name),
        });
        let out = self.cx.output.clone();
        let pump = tokio::spawn(async move { out.pump(source, r, STEP_TAIL).await });

        let deadline = step.timeout.map(|t| Instant::now() + t);
        let mut timed_out = false;
        let mut shutdown = false;
        let status = loop {
            let sleep = async {
                match deadline {
                    Some(d) if !timed_out => tokio::time::sleep_until(d.into()).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                exits = reaper.next() => {
                    if let Some((_, st)) = exits.iter().find(|(p, _)| *p == pid) {
                        break *st;
                    }
                }
                sig = signals.recv() => match sig {
                    libc::SIGTERM | libc::SIGINT | libc::SIGQUIT => {
                        info!("{} received: stopping pre-start step {}", signal_name(sig), step.name);
                        spawn::signal_group(pid, libc::SIGKILL);
                        shutdown = true;
                    }
                    other => debug!("{} ignored while pre-start steps run", signal_name(other)),
                },
                Some(req) = self.cx.control.recv() => {
                    let _ = req.reply.send(control::err(503, format!("pre-start step {} is still running", step.name)));
                }
                _ = Self::watchdog_sleep(self.next_watchdog) => self.watchdog_ping(Instant::now()),
                _ = sleep => {
                    warn!(step = %step.name, "pre-start step {} timed out; killing its process group", step.name);
                    spawn::signal_group(pid, libc::SIGKILL);
                    timed_out = true;
                }
            }
        };
        // nothing the step started outlives it
        spawn::signal_group(pid, libc::SIGKILL);
        if let Some(g) = self.cx.guard.as_mut() {
            g.unwatch(pid);
        }
        let tail = match tokio::time::timeout(Duration::from_secs(2), pump).await {
            Ok(Ok(t)) => t.into_iter().collect(),
            _ => vec![],
        };
        let end = if shutdown {
            StepEnd::Shutdown
        } else if timed_out {
            StepEnd::TimedOut
        } else {
            StepEnd::Exited(status)
        };
        (end, tail)
    }

    // ---- workers ----------------------------------------------------------------------------

    fn parent_pid(&self) -> Option<libc::pid_t> {
        if self.cx.pid1 {
            None
        } else {
            // SAFETY: getpid has no preconditions.
            Some(unsafe { libc::getpid() })
        }
    }

    /// A new slot at `index`, spawned at once. Returns its id.
    fn add_slot(&mut self, pi: usize, index: u32, now: Instant) -> u64 {
        let id = self.new_slot_id();
        self.programs[pi].slots.push(Slot::new(id, index));
        self.spawn_slot(pi, id, now);
        id
    }

    fn spawn_slot(&mut self, pi: usize, id: u64, now: Instant) {
        let jitter = self.jitter();
        let parent = self.parent_pid();
        let prog = &self.programs[pi];
        let Some(index) = prog.slots.iter().find(|s| s.id == id).map(|s| s.index) else {
            return;
        };
        let name = format!("{}.{}", prog.cfg.name, index);
        let mut env = prog.env.clone();
        env.push(("DROVER_PROGRAM".into(), prog.cfg.name.clone()));
        env.push(("DROVER_WORKER".into(), index.to_string()));
        let pipe = match prog.cfg.log {
            LogMode::Capture => match spawn::pipe() {
                Ok(p) => Some(p),
                Err(e) => {
                    error!("worker {name}: cannot create its output pipe: {e}; its output goes to drover's");
                    None
                }
            },
            LogMode::Inherit => None,
        };
        let spec = SpawnSpec {
            argv: prog.cfg.command.argv(),
            env,
            cwd: prog.cfg.cwd.clone(),
            sockets: prog.sockets.clone(),
            stdio: match &pipe {
                Some((_, w)) => Stdio::Pipe(std::os::fd::AsRawFd::as_raw_fd(w)),
                None => Stdio::Inherit,
            },
            parent,
            cgroup_procs: vec![],
            identity: prog.cfg.identity.as_ref().map(|i| (i.uid, i.gid)),
        };
        let sc = prog.slot_cfg;
        let prog_id = prog.id;
        let program_name = prog.cfg.name.clone();
        let first_check = now + prog.cfg.readiness.interval.min(Duration::from_millis(20));
        let mut spec = spec;
        match self.slot_cgroup(pi, id, index) {
            Ok(fds) => spec.cgroup_procs = fds,
            Err(e) => {
                self.metrics.restart(&program_name, "spawn");
                if let Some(slot) = self.slot_mut(pi, id) {
                    slot.spawn_failed(format!("cgroup: {e}"), now, &sc.backoff, jitter);
                    let delay = slot.last_delay;
                    error!(program = %program_name, worker = index, "worker {name}: cannot set up its cgroup: {e} (retrying in {delay:.1?})");
                }
                return;
            }
        }
        match spawn::spawn(&spec) {
            Ok(pid) => {
                if let Some((r, w)) = pipe {
                    drop(w);
                    let source = Arc::new(Source {
                        label: name.clone(),
                        program: program_name.clone(),
                        worker: Some(index),
                        color: color_for(&program_name),
                    });
                    let out = self.cx.output.clone();
                    tokio::spawn(async move {
                        out.pump(source, r, 0).await;
                    });
                }
                if let Some(g) = self.cx.guard.as_mut() {
                    g.watch(pid);
                }
                self.pids.insert(pid, (prog_id, id));
                let p = &mut self.programs[pi];
                p.ready_next.insert(id, first_check);
                p.health.remove(&id);
                p.usage.remove(&id);
                p.memory_action.remove(&id);
                if let Some((cg, base)) = p.cgroups.get_mut(&id) {
                    *base = cg.oom_kills();
                }
                if let Some(slot) = p.slots.iter_mut().find(|s| s.id == id) {
                    slot.spawned(pid, now, &sc);
                }
                info!(program = %program_name, worker = index, pid, "worker {name} started (pid {pid})");
            }
            Err(e) => {
                self.metrics.restart(&program_name, "spawn");
                if let Some(slot) = self.slot_mut(pi, id) {
                    slot.spawn_failed(e.to_string(), now, &sc.backoff, jitter);
                    let delay = slot.last_delay;
                    error!(program = %program_name, worker = index, "worker {name}: spawn {e} (retrying in {delay:.1?})");
                }
            }
        }
    }

    /// Stop one slot's process with its program's stop signal and timeout, then carry out what
    /// the state machine answers (a respawn, a removal). False if the slot is gone.
    fn stop_slot(
        &mut self,
        pi: usize,
        id: u64,
        then: AfterStop,
        reason: StopReason,
        now: Instant,
    ) -> bool {
        let sc = self.programs[pi].slot_cfg;
        self.stop_slot_with(pi, id, sc.stop_signal, sc.stop_timeout, then, reason, now)
    }

    /// `stop_slot` with an explicit signal and KILL timeout (shutdown, abandoned replacements).
    #[allow(clippy::too_many_arguments)]
    fn stop_slot_with(
        &mut self,
        pi: usize,
        id: u64,
        signal: i32,
        timeout: Duration,
        then: AfterStop,
        reason: StopReason,
        now: Instant,
    ) -> bool {
        let Some(s) = self.slot_mut(pi, id) else {
            return false;
        };
        let acts = s.stop(now, signal, timeout, then, reason);
        self.apply(pi, id, acts, now);
        true
    }

    /// The slot's cgroup `cgroup.procs` fds (created on first use); none without cgroups.
    fn slot_cgroup(&mut self, pi: usize, id: u64, index: u32) -> std::io::Result<Vec<RawFd>> {
        let Some(cgs) = self.cx.budget.cgroups.clone() else {
            return Ok(vec![]);
        };
        let p = &mut self.programs[pi];
        if let Some((cg, _)) = p.cgroups.get(&id) {
            return Ok(cg.procs_fds());
        }
        let cg = cgs.slot(&format!("{}.{index}-{id}", p.cfg.name), &p.cfg.budget)?;
        // v1 can tell us the moment usage crosses the soft budget
        if let (Some(soft), true) = (p.cfg.budget.memory_soft, cg.memory.is_some()) {
            match cg.usage_notifier(soft) {
                Ok(efd) => {
                    let tx = self.mem_tx.clone();
                    let prog = p.id;
                    tokio::spawn(async move {
                        // SAFETY: the eventfd is ours and owned by the AsyncFd for its life.
                        let Ok(afd) = (unsafe { tokio::io::unix::AsyncFd::register(efd) }) else {
                            return;
                        };
                        loop {
                            let Ok(mut g) = afd.readable().await else {
                                return;
                            };
                            let mut v = [0u8; 8];
                            // SAFETY: reading 8 bytes from our non-blocking eventfd.
                            let n = unsafe {
                                libc::read(
                                    std::os::fd::AsRawFd::as_raw_fd(afd.get_ref()),
                                    v.as_mut_ptr() as *mut libc::c_void,
                                    8,
                                )
                            };
                            if n == 8 {
                                if tx.send((prog, id)).is_err() {
                                    return;
                                }
                            } else {
                                g.clear_ready();
                            }
                        }
                    });
                }
                Err(e) => debug!(
                    "program {}: no memory threshold notification ({e}); sampling will notice",
                    p.cfg.name
                ),
            }
        }
        let fds = cg.procs_fds();
        let base = cg.oom_kills();
        p.cgroups.insert(id, (cg, base));
        Ok(fds)
    }

    fn on_exit(&mut self, pid: libc::pid_t, status: ExitStatus, now: Instant) {
        if let Some(p) = self.probes.remove(&pid) {
            spawn::signal_group(pid, libc::SIGKILL);
            self.on_exec_probe(p, status, now);
            return;
        }
        let Some((prog_id, id)) = self.pids.remove(&pid) else {
            if self.cx.guard.as_ref().is_some_and(|g| g.pid == pid) {
                error!("the guard process (pid {pid}) exited with {status}: workers will not be cleaned up if drover is killed");
            } else {
                debug!("reaped orphan pid {pid} ({status})");
            }
            return;
        };
        // anything the worker left in its process group goes with it
        spawn::signal_group(pid, libc::SIGKILL);
        if let Some(g) = self.cx.guard.as_mut() {
            g.unwatch(pid);
        }
        let Some(pi) = self.pidx(prog_id) else { return };
        // memory: did the kernel OOM-kill it in its cgroup, or did drover kill it for its budget?
        let mut killed_for: Option<&'static str> = None;
        if let Some((cg, base)) = self.programs[pi].cgroups.get(&id) {
            cg.kill_all();
            if cg.oom_kills() > *base {
                killed_for = Some("oom");
            }
        }
        if killed_for.is_none() && self.programs[pi].memory_action.get(&id) == Some(&"kill") {
            killed_for = Some("memory");
        }
        self.programs[pi].memory_action.remove(&id);
        let jitter = self.jitter();
        let sc = self.programs[pi].slot_cfg;
        let name = self.programs[pi].cfg.name.clone();
        let running =
            self.run == RunState::Running || matches!(self.run, RunState::Draining { .. });
        let Some(slot) = self.slot_mut(pi, id) else {
            return;
        };
        let idx = slot.index;
        let was_stopping = matches!(slot.phase, Phase::Stopping { .. });
        let uptime = slot
            .since()
            .map(|s| now.duration_since(s))
            .unwrap_or_default();
        let acts = slot.exited(status, now, &sc, jitter);
        if let (Some(why), Some(LastExit::Exited(st))) = (killed_for, slot.last_exit.clone()) {
            slot.last_exit = Some(LastExit::Killed(st, why));
        }
        let label = format!("{name}.{idx}");
        let status_text = match killed_for {
            Some("oom") => {
                format!("{status} (OOM-killed by the kernel: above memory_hard in its cgroup)")
            }
            Some(_) => format!("{status} (killed by drover: above memory_hard)"),
            None => status.to_string(),
        };
        let status = status_text;
        let restart_reason = match &slot.last_exit {
            Some(LastExit::Stopped(_, r))
                if acts.contains(&Action::Spawn) || matches!(slot.phase, Phase::Backoff { .. }) =>
            {
                Some(r.as_str().to_string())
            }
            Some(LastExit::Exited(_)) if !matches!(slot.phase, Phase::Done { .. }) => {
                Some("exit".to_string())
            }
            Some(LastExit::Killed(_, why)) => Some(why.to_string()),
            _ => None,
        };
        if was_stopping {
            let why = match &slot.last_exit {
                Some(LastExit::Stopped(_, r)) => r.as_str(),
                _ => "",
            };
            info!(program = %name, worker = idx, pid, "worker {label} (pid {pid}) stopped ({why}): {status}");
        } else {
            match &slot.phase {
                Phase::Backoff { .. } if slot.last_delay.is_zero() => warn!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting now"
                ),
                Phase::Backoff { .. } => warn!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting in {:.1?} ({} consecutive quick failure{})",
                    slot.last_delay, slot.failures, plural(slot.failures as usize)
                ),
                _ => info!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status}; restart = {:?}: not restarting", sc.policy
                ),
            }
        }
        // a rolling replacement inherits the history of the worker it replaced
        let inherited = match &slot.last_exit {
            Some(LastExit::Stopped(
                _,
                StopReason::Restart | StopReason::Reload | StopReason::Memory,
            )) => slot.last_exit.clone(),
            _ => None,
        };
        if let Some(last) = inherited {
            if let Some(succ) = self.programs[pi]
                .slots
                .iter_mut()
                .find(|s| s.index == idx && s.id != id)
            {
                succ.last_exit = Some(last);
            }
        }
        if let Some(r) = restart_reason {
            if running {
                self.metrics.restart(&name, &r);
            }
        }
        if !running && acts.contains(&Action::Spawn) {
            // never respawn during shutdown
            self.programs[pi].slots.retain(|s| s.id != id);
            return;
        }
        self.apply(pi, id, acts, now);
    }

    fn apply(&mut self, pi: usize, id: u64, acts: Vec<Action>, now: Instant) {
        for a in acts {
            match a {
                Action::Spawn => self.spawn_slot(pi, id, now),
                Action::SignalGroup { pid, signal } => {
                    spawn::signal_group(pid, signal);
                    if signal != libc::SIGKILL {
                        // a SIGSTOPped worker must be continued to act on its stop signal
                        spawn::signal_group(pid, libc::SIGCONT);
                    }
                }
                Action::Remove => {
                    let p = &mut self.programs[pi];
                    p.slots.retain(|s| s.id != id);
                    p.ready_next.remove(&id);
                    p.health.remove(&id);
                    p.usage.remove(&id);
                    if let Some((cg, _)) = p.cgroups.remove(&id) {
                        self.cgroup_gc.push(cg);
                    }
                }
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            let sc = self.programs[pi].slot_cfg;
            let pname = self.programs[pi].cfg.name.clone();
            let check = self.programs[pi].cfg.readiness.check;
            let mut todo = Vec::new();
            for s in &mut self.programs[pi].slots {
                let acts = s.tick(now, &sc);
                if !acts.is_empty() {
                    if acts.contains(&Action::SignalGroup {
                        pid: s.pid().unwrap_or(0),
                        signal: libc::SIGKILL,
                    }) {
                        warn!(
                            "worker {}.{} (pid {}) did not stop in time; sending SIGKILL to its process group",
                            pname,
                            s.index,
                            s.pid().unwrap_or(0)
                        );
                    }
                    if matches!(
                        s.phase,
                        Phase::Stopping {
                            reason: StopReason::StartTimeout,
                            killed: false,
                            ..
                        }
                    ) {
                        warn!(
                            "worker {}.{} did not become ready within {:?} ({:?} check); recycling it",
                            pname, s.index, sc.start_timeout, check
                        );
                    }
                    todo.push((s.id, acts));
                }
            }
            for (id, acts) in todo {
                if self.run != RunState::Running && acts.contains(&Action::Spawn) {
                    self.programs[pi].slots.retain(|s| s.id != id);
                    continue;
                }
                self.apply(pi, id, acts, now);
            }
        }
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut take = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        };
        for p in &self.programs {
            for s in &p.slots {
                take(s.deadline());
                if let Phase::Starting { since, .. } = s.phase {
                    match p.cfg.readiness.check {
                        ReadyCheck::Uptime => take(Some(since + p.cfg.readiness.min_uptime)),
                        _ => take(p.ready_next.get(&s.id).copied()),
                    }
                }
            }
            take(p.next_health);
            take(p.watch_due);
        }
        if self.cx.budget.sample && self.run == RunState::Running {
            take(self.next_sample);
        }
        if !self.cgroup_gc.is_empty() {
            take(Some(now + Duration::from_millis(200)));
        }
        take(self.next_watchdog);
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

    fn check_exhausted(&mut self) {
        if self.run != RunState::Running {
            return;
        }
        let threshold = self.cfg.supervisor.exhausted_after;
        let on_exhausted = self.on_exhausted();
        let mut exit_for = None;
        for p in &mut self.programs {
            let looping = !p.slots.is_empty() && p.slots.iter().all(|s| s.crash_looping(threshold));
            if looping && !p.crash_reported {
                p.crash_reported = true;
                let last = p
                    .slots
                    .first()
                    .and_then(|s| s.last_exit.as_ref())
                    .map(describe_exit)
                    .unwrap_or_default();
                match on_exhausted {
                    OnExhausted::Exit => {
                        error!(program = %p.cfg.name, "program {}: all {} workers are crash-looping ({threshold}+ consecutive quick failures each; last: {last}); on_exhausted = \"exit\": shutting down with exit code {EXIT_RUNTIME}", p.cfg.name, p.slots.len());
                        exit_for = Some(p.cfg.name.clone());
                    }
                    OnExhausted::Stay => {
                        error!(program = %p.cfg.name, "program {}: all {} workers are crash-looping ({threshold}+ consecutive quick failures each; last: {last}); on_exhausted = \"stay\": still retrying with backoff up to {:?}", p.cfg.name, p.slots.len(), p.cfg.backoff.max);
                    }
                }
            } else if !looping && p.crash_reported && p.slots.iter().any(|s| s.failures == 0) {
                p.crash_reported = false;
                info!(program = %p.cfg.name, "program {} recovered from its crash loop", p.cfg.name);
            }
        }
        if exit_for.is_some() {
            self.exit_code = EXIT_RUNTIME;
            self.begin_shutdown(false);
        }
    }

    // ---- readiness ----------------------------------------------------------------------------

    fn check_readiness(&mut self, now: Instant) {
        if matches!(self.run, RunState::Stopping { .. }) {
            return;
        }
        for pi in 0..self.programs.len() {
            let rc = self.programs[pi].cfg.readiness.clone();
            let mut ready = vec![];
            let mut exec_due = vec![];
            {
                let p = &mut self.programs[pi];
                for s in &p.slots {
                    let Phase::Starting { pid, since, .. } = s.phase else {
                        continue;
                    };
                    if now.duration_since(since) < rc.min_uptime && rc.check != ReadyCheck::Uptime {
                        continue;
                    }
                    match rc.check {
                        ReadyCheck::Uptime => {
                            if now >= since + rc.min_uptime {
                                ready.push(s.id);
                            }
                        }
                        ReadyCheck::Listening => {
                            let due = p.ready_next.get(&s.id).copied().unwrap_or(now);
                            if now >= due {
                                if probe::listening(pid, &p.inodes) {
                                    ready.push(s.id);
                                } else {
                                    p.ready_next.insert(s.id, now + rc.interval);
                                }
                            }
                        }
                        ReadyCheck::Exec => {
                            let due = p.ready_next.get(&s.id).copied().unwrap_or(now);
                            if now >= due {
                                // no second check while this one runs; its result reschedules
                                p.ready_next.insert(s.id, now + Duration::from_secs(3600));
                                exec_due.push((s.id, pid));
                            }
                        }
                    }
                }
            }
            for id in ready {
                self.mark_ready(pi, id, now);
            }
            for (id, pid) in exec_due {
                let argv = self.programs[pi].cfg.readiness.exec.clone();
                let timeout = self.programs[pi]
                    .cfg
                    .readiness
                    .interval
                    .max(Duration::from_secs(5));
                self.spawn_exec_probe(pi, id, pid, &argv, ProbeKind::Ready, timeout, now);
            }
        }
    }

    fn mark_ready(&mut self, pi: usize, id: u64, now: Instant) {
        let name = self.programs[pi].cfg.name.clone();
        let Some(slot) = self.slot_mut(pi, id) else {
            return;
        };
        let (idx, pid) = (slot.index, slot.pid().unwrap_or(0));
        if let Some(lat) = slot.ready(now) {
            self.programs[pi].ready_next.remove(&id);
            self.metrics
                .ready_latency
                .entry(name.clone())
                .or_default()
                .observe(lat.as_secs_f64());
            info!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) ready in {:.2}s", lat.as_secs_f64());
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn_exec_probe(
        &mut self,
        pi: usize,
        slot: u64,
        pid: i32,
        argv: &[String],
        kind: ProbeKind,
        timeout: Duration,
        now: Instant,
    ) {
        let argv: Vec<String> = argv
            .iter()
            .map(|a| a.replace("{pid}", &pid.to_string()))
            .collect();
        let p = &self.programs[pi];
        let spec = SpawnSpec {
            argv,
            env: p.env.clone(),
            cwd: p.cfg.cwd.clone(),
            sockets: vec![],
            stdio: Stdio::Null,
            parent: self.parent_pid(),
            cgroup_procs: vec![],
            identity: p.cfg.identity.as_ref().map(|i| (i.uid, i.gid)),
        };
        let prog = p.id;
        match spawn::spawn(&spec) {
            Ok(ppid) => {
                self.probes.insert(
                    ppid,
                    ExecProbe {
                        prog,
                        slot,
                        kind,
                        deadline: now + timeout,
                        killed: false,
                    },
                );
            }
            Err(e) => {
                warn!(
                    "program {}: {} check could not start: {e}",
                    p.cfg.name,
                    if kind == ProbeKind::Ready {
                        "readiness"
                    } else {
                        "health"
                    }
                );
                let ok = false;
                self.exec_probe_done(pi, slot, kind, ok, format!("could not start: {e}"), now);
            }
        }
    }

    fn on_exec_probe(&mut self, p: ExecProbe, status: ExitStatus, now: Instant) {
        let Some(pi) = self.pidx(p.prog) else { return };
        let detail = if p.killed {
            "timed out".to_string()
        } else {
            status.to_string()
        };
        self.exec_probe_done(
            pi,
            p.slot,
            p.kind,
            status.success() && !p.killed,
            detail,
            now,
        );
    }

    fn exec_probe_done(
        &mut self,
        pi: usize,
        slot: u64,
        kind: ProbeKind,
        ok: bool,
        detail: String,
        now: Instant,
    ) {
        match kind {
            ProbeKind::Ready => {
                if ok {
                    self.mark_ready(pi, slot, now);
                } else {
                    let next = now + self.programs[pi].cfg.readiness.interval;
                    self.programs[pi].ready_next.insert(slot, next);
                    debug!(
                        "program {}: readiness check failed ({detail})",
                        self.programs[pi].cfg.name
                    );
                }
            }
            ProbeKind::Health => {
                self.worker_health_result(pi, slot, ok, &format!("exec check {detail}"), now)
            }
        }
    }

    fn kill_overdue_probes(&mut self, now: Instant) {
        for (pid, p) in self.probes.iter_mut() {
            if !p.killed && now >= p.deadline {
                p.killed = true;
                spawn::signal_group(*pid, libc::SIGKILL);
            }
        }
    }

    // ---- health -------------------------------------------------------------------------------

    fn schedule_health(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        p.next_health = p.cfg.health.as_ref().map(|h| now + h.interval);
    }

    fn check_health(&mut self, now: Instant) {
        self.kill_overdue_probes(now);
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let Some(h) = self.programs[pi].cfg.health.clone() else {
                continue;
            };
            if self.programs[pi].next_health.is_none_or(|t| now < t) {
                continue;
            }
            self.programs[pi].next_health = Some(now + h.interval);
            let ready: Vec<(u64, i32)> = self.programs[pi]
                .slots
                .iter()
                .filter(|s| s.is_ready())
                .filter_map(|s| s.pid().map(|p| (s.id, p)))
                .collect();
            // per-worker hang detection from /proc
            if h.hung {
                for &(id, pid) in &ready {
                    let cur = probe::sample(pid);
                    let prev = self.programs[pi].health.get(&id).and_then(|(_, s)| *s);
                    let verdict = cur.as_ref().and_then(|c| probe::hung(prev.as_ref(), c));
                    if let Some(e) = self.programs[pi].health.get_mut(&id) {
                        e.1 = cur;
                    } else {
                        self.programs[pi].health.insert(id, (0, cur));
                    }
                    if let Some(why) = verdict {
                        self.worker_health_result(pi, id, false, &format!("hung: {why}"), now);
                    }
                }
            }
            // exec checks per worker
            if let Some(argv) = h.exec.clone() {
                for &(id, pid) in &ready {
                    if !self
                        .probes
                        .values()
                        .any(|p| p.slot == id && p.kind == ProbeKind::Health)
                    {
                        self.spawn_exec_probe(
                            pi,
                            id,
                            pid,
                            &argv,
                            ProbeKind::Health,
                            h.timeout,
                            now,
                        );
                    }
                }
            }
            // HTTP through the shared socket, attributed to the worker that accepted it
            if let (Some(path), Some(target)) =
                (h.http.clone(), self.programs[pi].probe_target.clone())
            {
                if !self.programs[pi].http_inflight && !ready.is_empty() {
                    self.programs[pi].http_inflight = true;
                    let tx = self.http_tx.clone();
                    let prog = self.programs[pi].id;
                    let timeout = h.timeout;
                    let workers: Vec<i32> = ready.iter().map(|(_, p)| *p).collect();
                    tokio::spawn(async move {
                        let outcome = probe::http(target, path, timeout, workers).await;
                        let _ = tx.send(HttpResult { prog, outcome });
                    });
                }
            }
        }
    }

    fn on_http_result(&mut self, r: HttpResult, now: Instant) {
        let Some(pi) = self.pidx(r.prog) else { return };
        self.programs[pi].http_inflight = false;
        if self.run != RunState::Running {
            return;
        }
        let Some(h) = self.programs[pi].cfg.health.clone() else {
            return;
        };
        let pids: Vec<(u64, i32)> = self.programs[pi]
            .slots
            .iter()
            .filter_map(|s| s.pid().map(|p| (s.id, p)))
            .collect();
        // the probe task found the owner while its connection was still open; by now the
        // worker may have closed its end, so no second lookup here
        let owner = r
            .outcome
            .owner
            .and_then(|pid| pids.iter().find(|(_, p)| *p == pid).map(|(id, _)| *id));
        let name = self.programs[pi].cfg.name.clone();
        debug!(
            "program {name}: health probe {} (server socket inode {:?}, accepted by {:?})",
            r.outcome.detail, r.outcome.server_inode, owner
        );
        if !r.outcome.ok {
            *self.metrics.probe_failures.entry(name.clone()).or_default() += 1;
        }
        match owner {
            Some(id) => {
                self.programs[pi].unattributed_failures = 0;
                self.programs[pi].health_note = None;
                let detail = format!(
                    "http {} {}",
                    h.http.as_deref().unwrap_or(""),
                    r.outcome.detail
                );
                self.worker_health_result(pi, id, r.outcome.ok, &detail, now);
            }
            None if r.outcome.ok => {
                self.programs[pi].unattributed_failures = 0;
                self.programs[pi].health_note = None;
            }
            None => {
                let p = &mut self.programs[pi];
                p.unattributed_failures += 1;
                if p.unattributed_failures >= h.failures {
                    let note = format!(
                        "health probe {} not answered by any worker {} times in a row ({})",
                        h.http.as_deref().unwrap_or(""),
                        p.unattributed_failures,
                        r.outcome.detail
                    );
                    if p.health_note.as_deref() != Some(note.as_str()) {
                        error!(program = %name, "program {name}: {note}");
                    }
                    p.health_note = Some(note);
                }
            }
        }
    }

    fn worker_health_result(&mut self, pi: usize, id: u64, ok: bool, detail: &str, now: Instant) {
        let Some(h) = self.programs[pi].cfg.health.clone() else {
            return;
        };
        let entry = self.programs[pi].health.entry(id).or_insert((0, None));
        if ok {
            entry.0 = 0;
            return;
        }
        entry.0 += 1;
        let n = entry.0;
        let name = self.programs[pi].cfg.name.clone();
        let Some(slot) = self.programs[pi].slots.iter().find(|s| s.id == id) else {
            return;
        };
        let (idx, pid) = (slot.index, slot.pid().unwrap_or(0));
        if n < h.failures {
            warn!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) failed a health check ({n}/{}): {detail}", h.failures);
            return;
        }
        if !slot.is_ready() {
            return;
        }
        error!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) failed {n} health check{} in a row ({detail}); recycling it", plural(n as usize));
        self.programs[pi].health.insert(id, (0, None));
        self.stop_slot(pi, id, AfterStop::Respawn, StopReason::Health, now);
    }

    // ---- budgets ------------------------------------------------------------------------------

    /// A cgroup's usage crossed the soft budget (v1 eventfd threshold).
    fn on_memory_notice(&mut self, prog: u64, slot: u64, now: Instant) {
        let Some(pi) = self.pidx(prog) else { return };
        let p = &self.programs[pi];
        let (Some(soft), Some((cg, _))) = (p.cfg.budget.memory_soft, p.cgroups.get(&slot)) else {
            return;
        };
        if let Some(m) = cg.memory_bytes() {
            if m >= soft {
                self.memory_recycle(pi, slot, m, soft, now);
            }
        }
    }

    /// Replace a worker above its soft budget through the rolling path: never KILL.
    fn memory_recycle(&mut self, pi: usize, id: u64, used: u64, soft: u64, now: Instant) {
        if self.run != RunState::Running || self.programs[pi].memory_action.contains_key(&id) {
            return;
        }
        let p = &mut self.programs[pi];
        let Some(slot) = p.slots.iter().find(|s| s.id == id) else {
            return;
        };
        if !slot.is_ready() {
            return;
        }
        warn!(
            program = %p.cfg.name, worker = slot.index, pid = slot.pid().unwrap_or(0),
            "worker {}.{} uses {}, above memory_soft {}: replacing it gracefully",
            p.cfg.name, slot.index, fmt_size(used), fmt_size(soft)
        );
        p.memory_action.insert(id, "recycle");
        match p.roll.as_mut() {
            Some(r) => {
                if r.current.is_none_or(|(old, _)| old != id) && !r.pending.contains(&id) {
                    r.pending.push_back(id);
                }
            }
            None => {
                p.roll = Some(Roll {
                    reason: StopReason::Memory,
                    started: now,
                    pending: VecDeque::from([id]),
                    current: None,
                });
            }
        }
    }

    /// Every sample interval: usage, enforcement where no cgroup does it, autoscaling.
    fn check_budgets(&mut self, now: Instant) {
        if !self.cx.budget.sample
            || self.run != RunState::Running
            || self.next_sample.is_none_or(|t| now < t)
        {
            return;
        }
        let interval = self.cfg.budget.sample_interval;
        self.next_sample = Some(now + interval);
        let mut groups = std::collections::HashSet::new();
        for p in &self.programs {
            for s in &p.slots {
                if let Some(pid) = s.pid() {
                    groups.insert(pid);
                }
            }
        }
        let proc_memory = self
            .programs
            .iter()
            .any(|p| p.cgroups.is_empty() && !p.slots.is_empty());
        let usage = crate::resources::usage::scan(&groups, proc_memory);
        let hz = crate::resources::usage::clock_ticks_per_sec();
        let mut actions: Vec<(usize, u64, &'static str, u64, u64)> = vec![];
        for (pi, p) in self.programs.iter_mut().enumerate() {
            for s in &p.slots {
                let Some(pid) = s.pid() else { continue };
                let g = usage.get(&pid).copied().unwrap_or_default();
                let memory = match p.cgroups.get(&s.id) {
                    Some((cg, _)) if cg.memory.is_some() => cg.memory_bytes(),
                    _ => (g.procs > 0).then_some(g.memory),
                };
                let u = p.usage.entry(s.id).or_default();
                if let Some(at) = u.at {
                    let dt = now.duration_since(at).as_secs_f64();
                    if dt > 0.0 && g.cpu_ticks >= u.ticks {
                        u.cpu_percent = Some((g.cpu_ticks - u.ticks) as f64 / hz / dt * 100.0);
                    }
                }
                u.ticks = g.cpu_ticks;
                u.at = Some(now);
                u.memory = memory;
                let Some(m) = memory else { continue };
                let in_cgroup = p
                    .cgroups
                    .get(&s.id)
                    .is_some_and(|(cg, _)| cg.memory.is_some());
                if let Some(hard) = p.cfg.budget.memory_hard {
                    // with a memory cgroup the kernel enforces the hard limit itself
                    if !in_cgroup && m > hard && p.memory_action.get(&s.id) != Some(&"kill") {
                        actions.push((pi, s.id, "kill", m, hard));
                        continue;
                    }
                }
                if let Some(soft) = p.cfg.budget.memory_soft {
                    if m >= soft && !p.memory_action.contains_key(&s.id) {
                        actions.push((pi, s.id, "recycle", m, soft));
                    }
                }
            }
        }
        for (pi, id, what, used, limit) in actions {
            if what == "kill" {
                let p = &mut self.programs[pi];
                let Some(slot) = p.slots.iter().find(|s| s.id == id) else {
                    continue;
                };
                let pid = slot.pid().unwrap_or(0);
                error!(
                    program = %p.cfg.name, worker = slot.index, pid,
                    "worker {}.{} (pid {pid}) uses {}, above memory_hard {}: killing its process group",
                    p.cfg.name, slot.index, fmt_size(used), fmt_size(limit)
                );
                p.memory_action.insert(id, "kill");
                spawn::signal_group(pid, libc::SIGKILL);
            } else {
                self.memory_recycle(pi, id, used, limit, now);
            }
        }
        self.autoscale(now);
    }

    fn autoscale(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            let p = &mut self.programs[pi];
            if p.removing || p.roll.is_some() {
                continue;
            }
            let per_worker = p.cfg.budget.cpu.unwrap_or(1.0);
            let samples: Vec<f64> = p
                .slots
                .iter()
                .filter(|s| s.is_ready())
                .filter_map(|s| p.usage.get(&s.id).and_then(|u| u.cpu_percent))
                .collect();
            let Some(a) = p.autoscaler.as_mut() else {
                continue;
            };
            if samples.is_empty() {
                continue;
            }
            let utilization = samples.iter().sum::<f64>() / samples.len() as f64 / per_worker;
            // the budget caps how many workers fit
            let mut cap = u32::MAX;
            if let (Some(node), Some(hard)) = (self.cfg.budget.memory, p.cfg.budget.memory_hard) {
                cap = cap.min((node / hard) as u32);
            }
            if let (Some(node), Some(c)) = (self.cfg.budget.cpu, p.cfg.budget.cpu) {
                cap = cap.min((node / c + 1e-9).floor() as u32);
            }
            let current = p.desired;
            let d = a.decide(now, current, utilization, cap);
            if d.desired != current {
                info!(
                    program = %p.cfg.name,
                    "autoscale {}: {current} -> {} workers (cpu {:.0}% of budget vs target {:.0}%, recommended {}, {})",
                    p.cfg.name, d.desired, d.utilization, d.target, d.recommended, d.why
                );
                self.scale_with(pi, d.desired, now, StopReason::Scale);
            } else {
                debug!(
                    "autoscale {}: hold at {current} (cpu {:.0}% vs target {:.0}%: {})",
                    p.cfg.name, d.utilization, d.target, d.why
                );
            }
        }
    }

    /// Remove every slot cgroup and drover's parents, waiting briefly for the last exits.
    async fn remove_cgroups(&mut self) {
        for p in &mut self.programs {
            for (_, (cg, _)) in p.cgroups.drain() {
                self.cgroup_gc.push(cg);
            }
        }
        for _ in 0..50 {
            self.cgroup_gc.retain(|cg| {
                cg.kill_all();
                !cg.remove()
            });
            if self.cgroup_gc.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(cg) = &self.cx.budget.cgroups {
            cg.remove();
        }
    }

    // ---- rolling restarts ---------------------------------------------------------------------

    fn start_roll(&mut self, pi: usize, reason: StopReason, now: Instant) {
        let p = &mut self.programs[pi];
        let mut olds: Vec<(u32, u64)> = p
            .slots
            .iter()
            .filter(|s| !s.is_leaving())
            .map(|s| (s.index, s.id))
            .collect();
        olds.sort_unstable();
        info!(program = %p.cfg.name, "program {}: rolling {} of {} worker{}", p.cfg.name, reason.as_str(), olds.len(), plural(olds.len()));
        p.roll = Some(Roll {
            reason,
            started: now,
            pending: olds.into_iter().map(|(_, id)| id).collect(),
            current: None,
        });
    }

    fn advance_rolls(&mut self, now: Instant) {
        if self.run != RunState::Running {
            for p in &mut self.programs {
                p.roll = None;
            }
            return;
        }
        for pi in 0..self.programs.len() {
            while let Some(roll) = self.programs[pi].roll.as_mut() {
                let reason = roll.reason;
                if let Some((old, new)) = roll.current {
                    let p = &self.programs[pi];
                    let new_slot = p.slots.iter().find(|s| s.id == new);
                    match new_slot.map(|s| &s.phase) {
                        Some(Phase::Running { .. }) => {
                            self.programs[pi].roll.as_mut().unwrap().current = None;
                            let name = self.programs[pi].cfg.name.clone();
                            if self.stop_slot(pi, old, AfterStop::Remove, reason, now) {
                                self.metrics.restart(&name, reason.as_str());
                            }
                            continue;
                        }
                        Some(Phase::Starting { .. }) | Some(Phase::Idle) => break,
                        other => {
                            let why = match (other, new_slot.and_then(|s| s.last_exit.as_ref())) {
                                (_, Some(e)) => describe_exit(e),
                                (None, _) => "it was removed".into(),
                                _ => "it stopped".into(),
                            };
                            let name = self.programs[pi].cfg.name.clone();
                            let idx = new_slot.map(|s| s.index).unwrap_or(0);
                            let msg = format!(
                                "rolling {} of {name} abandoned: the replacement for {name}.{idx} did not become ready ({why}); the old workers keep running",
                                reason.as_str()
                            );
                            error!(program = %name, "{msg}");
                            if reason == StopReason::Reload {
                                self.last_reload = Some(
                                    serde_json::json!({"ok": false, "message": msg, "at": unix_now()}),
                                );
                            }
                            self.programs[pi].roll = None;
                            self.stop_slot_with(
                                pi,
                                new,
                                libc::SIGKILL,
                                Duration::ZERO,
                                AfterStop::Remove,
                                reason,
                                now,
                            );
                            break;
                        }
                    }
                }
                let next = self.programs[pi].roll.as_mut().unwrap().pending.pop_front();
                let Some(old) = next else {
                    let roll = self.programs[pi].roll.take().unwrap();
                    info!(
                        program = %self.programs[pi].cfg.name,
                        "program {}: rolling {} done in {:.2}s",
                        self.programs[pi].cfg.name,
                        roll.reason.as_str(),
                        now.duration_since(roll.started).as_secs_f64()
                    );
                    break;
                };
                let Some(s) = self.programs[pi].slots.iter().find(|s| s.id == old) else {
                    continue;
                };
                let index = s.index;
                match s.phase {
                    Phase::Starting { .. } | Phase::Running { .. } => {
                        let restarts = s.restarts + 1;
                        let new = self.add_slot(pi, index, now);
                        if let Some(n) = self.slot_mut(pi, new) {
                            n.restarts = restarts;
                        }
                        self.programs[pi].roll.as_mut().unwrap().current = Some((old, new));
                        break;
                    }
                    Phase::Stopping { .. } => continue,
                    // nothing running to preserve: restart it in place
                    _ => {
                        if let Some(s) = self.slot_mut(pi, old) {
                            s.failures = 0;
                        }
                        self.stop_slot(pi, old, AfterStop::Respawn, reason, now);
                    }
                }
            }
        }
    }

    // ---- control ------------------------------------------------------------------------------

    fn on_control(&mut self, cmd: Command) -> Reply {
        let now = Instant::now();
        if self.run != RunState::Running {
            return control::err(503, "drover is shutting down");
        }
        let find = |s: &Self, name: &str| -> Result<usize, Reply> {
            s.programs
                .iter()
                .position(|p| p.cfg.name == name && !p.removing)
                .ok_or_else(|| {
                    let names: Vec<&str> = s.programs.iter().map(|p| p.cfg.name.as_str()).collect();
                    control::err(
                        404,
                        format!("no program named `{name}` (programs: {})", names.join(", ")),
                    )
                })
        };
        match cmd {
            Command::Restart { program } => {
                let pi = match find(self, &program) {
                    Ok(pi) => pi,
                    Err(r) => return r,
                };
                if self.programs[pi].roll.is_some() {
                    return control::err(
                        409,
                        format!("program {program} is already rolling; try again when it is done"),
                    );
                }
                self.start_roll(pi, StopReason::Restart, now);
                self.advance_rolls(now);
                control::ok(format!(
                    "rolling restart of {program} started ({} workers)",
                    self.programs[pi].desired
                ))
            }
            Command::Scale { program, workers } => {
                let pi = match find(self, &program) {
                    Ok(pi) => pi,
                    Err(r) => return r,
                };
                let min = self.programs[pi].cfg.min_ready;
                if workers < min {
                    return control::err(400, format!("{workers} workers is below min_ready ({min}) for program {program}; use /programs/{program}/stop to stop it"));
                }
                let from = self.programs[pi].desired;
                self.scale(pi, workers, now);
                control::ok(format!("program {program}: {from} -> {workers} workers"))
            }
            Command::Stop { program } => {
                let pi = match find(self, &program) {
                    Ok(pi) => pi,
                    Err(r) => return r,
                };
                self.programs[pi].roll = None;
                self.scale_with(pi, 0, now, StopReason::Stop);
                control::ok(format!(
                    "program {program}: stopping every worker (scale up to start it again)"
                ))
            }
            Command::Reload => match self.reload(now) {
                Ok(msg) => control::ok(msg),
                Err(msg) => control::err(400, msg),
            },
        }
    }

    fn on_watch(&mut self, program: &str) {
        if let Some(p) = self.programs.iter_mut().find(|p| p.cfg.name == program) {
            p.watch_due = Some(Instant::now() + WATCH_DEBOUNCE);
        }
    }

    fn check_watch(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            if self.programs[pi].watch_due.is_some_and(|t| now >= t) {
                self.programs[pi].watch_due = None;
                if self.programs[pi].roll.is_some() {
                    // a change during a roll: roll again once this one is done
                    self.programs[pi].watch_due = Some(now + WATCH_DEBOUNCE);
                    continue;
                }
                info!(
                    "program {}: change under its watch paths; rolling restart",
                    self.programs[pi].cfg.name
                );
                self.start_roll(pi, StopReason::Restart, now);
            }
        }
    }

    /// Re-read the configuration and apply what changed. On any error nothing changes.
    fn reload(&mut self, now: Instant) -> Result<String, String> {
        if let Some(n) = &self.cx.notify {
            n.reloading();
        }
        let result = self.try_reload(now);
        if let Some(n) = &self.cx.notify {
            // done reloading; rolls proceed in the background, as ExecReload= expects
            n.ready(&self.status_line());
        }
        match &result {
            Ok(msg) => {
                self.metrics.reloads_ok += 1;
                info!("reload: {msg}");
                self.last_reload =
                    Some(serde_json::json!({"ok": true, "message": msg, "at": unix_now()}));
            }
            Err(msg) => {
                self.metrics.reloads_failed += 1;
                error!("reload failed, the running configuration is unchanged: {msg}");
                self.last_reload =
                    Some(serde_json::json!({"ok": false, "message": msg, "at": unix_now()}));
            }
        }
        result
    }

    fn try_reload(&mut self, now: Instant) -> Result<String, String> {
        let new = (self.cx.reload)()?;
        if new.sockets != self.cfg.sockets {
            return Err("the [socket.*] sections changed; sockets are bound once, so changing them needs a restart of drover".into());
        }
        let token = match &new.supervisor.control_token_file {
            Some(p) => Some(Arc::<str>::from(control::read_token(p)?)),
            None => None,
        };
        let tls = match (&new.supervisor.tls_cert, &new.supervisor.tls_key) {
            (Some(c), Some(k)) => Some(crate::api::tls::load(c, k)?),
            _ => None,
        };
        if tls.is_some() != self.cx.tls.borrow().is_some() {
            return Err("supervisor.tls_cert/tls_key were added or removed; switching the status endpoint between http and https needs a restart of drover".into());
        }
        if new.supervisor.status != self.cfg.supervisor.status {
            warn!("reload: supervisor.status changed; the status endpoint moves only when drover restarts");
        }
        if new
            .prestart
            .iter()
            .map(|s| (&s.name, s.command.to_string()))
            .ne(self
                .cfg
                .prestart
                .iter()
                .map(|s| (&s.name, s.command.to_string())))
        {
            warn!("reload: [[prestart]] changed; steps run once at start, so the change applies at the next start");
        }
        let mut changes = vec![];
        // programs removed
        for pi in 0..self.programs.len() {
            let name = self.programs[pi].cfg.name.clone();
            if !new.programs.iter().any(|p| p.name == name) && !self.programs[pi].removing {
                self.programs[pi].removing = true;
                self.programs[pi].roll = None;
                self.scale_with(pi, 0, now, StopReason::Reload);
                changes.push(format!("{name} removed"));
            }
        }
        for np in &new.programs {
            match self
                .programs
                .iter()
                .position(|p| p.cfg.name == np.name && !p.removing)
            {
                None => {
                    let prog = self.make_program(np.clone());
                    self.programs.push(prog);
                    let pi = self.programs.len() - 1;
                    for i in 0..np.workers {
                        self.add_slot(pi, i, now);
                    }
                    self.schedule_health(pi, now);
                    changes.push(format!("{} added ({} workers)", np.name, np.workers));
                }
                Some(pi) => {
                    let old = self.programs[pi].cfg.clone();
                    if old == *np {
                        continue;
                    }
                    let only_count = ProgramCfg {
                        workers: np.workers,
                        min_ready: np.min_ready,
                        ..old.clone()
                    } == *np;
                    let fresh = self.make_program(np.clone());
                    let p = &mut self.programs[pi];
                    p.cfg = np.clone();
                    p.slot_cfg = fresh.slot_cfg;
                    p.env = fresh.env;
                    p.sockets = fresh.sockets;
                    p.inodes = fresh.inodes;
                    p.probe_target = fresh.probe_target;
                    self.schedule_health(pi, now);
                    if np.workers != self.programs[pi].desired {
                        let from = self.programs[pi].desired;
                        self.scale_with(pi, np.workers, now, StopReason::Reload);
                        changes.push(format!("{} scaled {from} -> {}", np.name, np.workers));
                    }
                    if !only_count {
                        self.start_roll(pi, StopReason::Reload, now);
                        changes.push(format!("{} rolling", np.name));
                    }
                }
            }
        }
        self.cfg = new;
        let _ = self.cx.token.send(token);
        if tls.is_some() {
            info!("reload: the status endpoint's TLS certificate and key were re-read");
            let _ = self.cx.tls.send(tls);
        }
        Ok(if changes.is_empty() {
            "no changes".into()
        } else {
            changes.join("; ")
        })
    }

    // ---- signals and shutdown ---------------------------------------------------------------

    fn on_signal(&mut self, sig: i32) {
        let now = Instant::now();
        match sig {
            libc::SIGTERM | libc::SIGINT => match self.run {
                RunState::Stopping { .. } | RunState::Draining { .. } => {
                    info!(
                        "{} received again: fast shutdown (SIGKILL to every worker)",
                        signal_name(sig)
                    );
                    self.begin_shutdown(true);
                }
                _ => {
                    info!("{} received: graceful shutdown", signal_name(sig));
                    self.begin_shutdown(false);
                }
            },
            libc::SIGQUIT => {
                info!("QUIT received: fast shutdown (SIGKILL to every worker)");
                self.begin_shutdown(true);
            }
            libc::SIGHUP if self.run == RunState::Running => {
                info!("HUP received: reloading the configuration");
                let _ = self.reload(now);
            }
            libc::SIGTTIN | libc::SIGTTOU if self.run == RunState::Running => {
                for pi in 0..self.programs.len() {
                    if self.programs[pi].removing {
                        continue;
                    }
                    let d = self.programs[pi].desired;
                    if sig == libc::SIGTTIN {
                        self.scale(pi, d + 1, now);
                    } else if d > 1 && d > self.programs[pi].cfg.min_ready {
                        self.scale(pi, d - 1, now);
                    }
                }
            }
            libc::SIGUSR1 | libc::SIGUSR2 => {
                let n = self.pids.len();
                for &pid in self.pids.keys() {
                    spawn::signal_group(pid, sig);
                }
                info!(
                    "{} forwarded to {n} worker process group(s)",
                    signal_name(sig)
                );
            }
            other => debug!("{} ignored now", signal_name(other)),
        }
    }

    fn scale(&mut self, pi: usize, to: u32, now: Instant) {
        self.scale_with(pi, to, now, StopReason::Scale)
    }

    fn scale_with(&mut self, pi: usize, to: u32, now: Instant, reason: StopReason) {
        let from = self.programs[pi].desired;
        self.programs[pi].desired = to;
        if from != to {
            info!(program = %self.programs[pi].cfg.name, "program {}: scaling from {from} to {to} workers", self.programs[pi].cfg.name);
        }
        // the live slots, one per index (a rolling replacement shares its old one's index)
        let mut indexes: Vec<u32> = self.programs[pi]
            .slots
            .iter()
            .filter(|s| !s.is_leaving())
            .map(|s| s.index)
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let live = indexes.len() as u32;
        if to > live {
            let mut next = 0;
            for _ in live..to {
                while indexes.contains(&next) {
                    next += 1;
                }
                indexes.push(next);
                self.add_slot(pi, next, now);
            }
        } else if to < live {
            // the newest (highest index) workers go first
            let drop: Vec<u32> = indexes
                .iter()
                .rev()
                .take((live - to) as usize)
                .copied()
                .collect();
            let ids: Vec<u64> = self.programs[pi]
                .slots
                .iter()
                .filter(|s| drop.contains(&s.index))
                .map(|s| s.id)
                .collect();
            for id in ids {
                self.stop_slot(pi, id, AfterStop::Remove, reason, now);
            }
        }
    }

    fn begin_shutdown(&mut self, fast: bool) {
        let now = Instant::now();
        if let Some(n) = &self.cx.notify {
            n.stopping();
        }
        let drain = self.cfg.supervisor.drain_delay;
        if !fast && !drain.is_zero() && self.run == RunState::Running {
            info!("draining for {drain:?}: /readyz answers 503 while workers keep serving");
            self.run = RunState::Draining {
                until: now + drain,
                fast,
            };
            return;
        }
        self.stop_everything(fast);
    }

    fn stop_everything(&mut self, fast: bool) {
        let now = Instant::now();
        let total = self.cfg.supervisor.shutdown_timeout;
        let hard_deadline = match self.run {
            RunState::Stopping { hard_deadline } if !fast => hard_deadline,
            _ => now + if fast { Duration::ZERO } else { total } + KILL_GRACE,
        };
        self.run = RunState::Stopping { hard_deadline };
        for pi in 0..self.programs.len() {
            self.programs[pi].roll = None;
            let (sig, timeout) = if fast {
                (libc::SIGKILL, Duration::ZERO)
            } else {
                let c = &self.programs[pi].cfg;
                (c.stop_signal, c.stop_timeout.min(total))
            };
            let ids: Vec<u64> = self.programs[pi].slots.iter().map(|s| s.id).collect();
            for id in ids {
                self.stop_slot_with(
                    pi,
                    id,
                    sig,
                    timeout,
                    AfterStop::Remove,
                    StopReason::Shutdown,
                    now,
                );
            }
        }
        for (pid, p) in self.probes.iter_mut() {
            p.killed = true;
            spawn::signal_group(*pid, libc::SIGKILL);
        }
    }

    // ---- systemd ------------------------------------------------------------------------------

    async fn watchdog_sleep(at: Option<Instant>) {
        match at {
            Some(t) => tokio::time::sleep_until(t.into()).await,
            None => std::future::pending().await,
        }
    }

    fn watchdog_ping(&mut self, now: Instant) {
        let (Some(n), Some(due)) = (&self.cx.notify, self.next_watchdog) else {
            return;
        };
        if now >= due {
            n.watchdog();
            self.next_watchdog = n.watchdog.map(|w| now + w);
        }
    }

    /// `4/4 api ready; 2/2 web ready` (what `systemctl status` shows).
    fn status_line(&self) -> String {
        let mut parts: Vec<String> = self
            .programs
            .iter()
            .map(|p| {
                let ready = p.slots.iter().filter(|s| s.is_ready()).count();
                let mut s = format!("{ready}/{} {} workers ready", p.desired, p.cfg.name);
                if p.roll.is_some() {
                    s.push_str(" (rolling)");
                }
                if p.crash_reported {
                    s.push_str(" (CRASH LOOP)");
                }
                s
            })
            .collect();
        if matches!(self.run, RunState::Draining { .. }) {
            parts.insert(0, "draining".into());
        }
        parts.join("; ")
    }

    fn notify_systemd(&mut self, now: Instant) {
        self.watchdog_ping(now);
        if self.cx.notify.is_none()
            || !matches!(self.run, RunState::Running | RunState::Draining { .. })
        {
            return;
        }
        let status = self.status_line();
        let ready = self
            .programs
            .iter()
            .all(|p| p.slots.iter().filter(|s| s.is_ready()).count() as u32 >= p.cfg.min_ready);
        let n = self.cx.notify.as_ref().expect("checked above");
        if !self.ready_sent && ready {
            n.ready(&status);
            self.ready_sent = true;
            info!("ready: {status}");
        } else if status != self.last_status {
            n.status(&status);
        }
        self.last_status = status;
    }

    // ---- status -----------------------------------------------------------------------------

    fn publish(&self) {
        let now = Instant::now();
        let steps_ok = self.steps.iter().all(|s| s.state == "succeeded");
        let programs: Vec<ProgramStatus> = self
            .programs
            .iter()
            .map(|p| ProgramStatus {
                name: p.cfg.name.clone(),
                desired: p.desired,
                min_ready: p.cfg.min_ready,
                ready_workers: p.slots.iter().filter(|s| s.is_ready()).count() as u32,
                crash_looping: p.crash_reported,
                rolling: p.roll.is_some(),
                health: p.health_note.clone(),
                budget: (p.cfg.budget != Default::default()).then(|| {
                    serde_json::json!({
                        "memory_soft": p.cfg.budget.memory_soft,
                        "memory_hard": p.cfg.budget.memory_hard,
                        "cpu": p.cfg.budget.cpu,
                    })
                }),
                autoscale: p.autoscaler.as_ref().and_then(|a| a.last.clone()),
                workers: p
                    .slots
                    .iter()
                    .map(|s| WorkerStatus {
                        index: s.index,
                        pid: s.pid(),
                        state: s.state_name(),
                        ready: s.is_ready(),
                        restarts: s.restarts,
                        uptime_s: s.since().map(|t| now.duration_since(t).as_secs_f64()),
                        last_exit: s.last_exit.as_ref().map(exit_json),
                        health_failures: p.health.get(&s.id).map(|h| h.0).unwrap_or(0),
                        memory_bytes: p.usage.get(&s.id).and_then(|u| u.memory),
                        cpu_seconds: None,
                        cpu_percent: p.usage.get(&s.id).and_then(|u| u.cpu_percent),
                        cgroup: p
                            .cgroups
                            .get(&s.id)
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
                    })
                    .collect(),
            })
            .collect();
        let ready = self.run == RunState::Running
            && steps_ok
            && programs.iter().all(|p| p.ready_workers >= p.min_ready);
        let snap = Snapshot {
            state: match self.run {
                RunState::Starting => "starting",
                RunState::Running => "running",
                RunState::Draining { .. } => "draining",
                RunState::Stopping { .. } => "stopping",
            },
            ready,
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() } as u32,
            pid1: self.cx.pid1,
            config: self.cx.config_label.clone(),
            uptime_s: now.duration_since(self.started).as_secs_f64(),
            control: self.cx.control_mode,
            last_reload: self.last_reload.clone(),
            budget: Some(serde_json::json!({
                "mode": self.cx.budget.mode,
                "why": self.cx.budget.notes,
                "memory": self.cfg.budget.memory,
                "cpu": self.cfg.budget.cpu,
                "sample_interval_s": self.cx.budget.sample.then_some(self.cfg.budget.sample_interval.as_secs_f64()),
                "cpu_throttling": if self.cx.budget.cgroups.as_ref().is_some_and(|c| c.cpu.is_some()) { "cgroup quota" } else { "none: CPU is measured and reported, not throttled" },
            })),
            steps: self.steps.clone(),
            sockets: self
                .sockets
                .iter()
                .map(|b| SocketStatus {
                    name: b.name.clone(),
                    listen: b.local.clone(),
                })
                .collect(),
            programs,
            metrics: self.metrics.clone(),
        };
        self.cx.snapshot.send_replace(Arc::new(snap));
    }
}

fn plural(n: usize) -> &'static str {
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

fn exit_json(e: &LastExit) -> serde_json::Value {
    match e {
        LastExit::SpawnFailed(err) => serde_json::json!({"reason": "spawn", "error": err}),
        LastExit::Exited(st) => status_json(st),
        LastExit::Stopped(st, reason) => {
            let mut v = status_json(st);
            v["reason"] = reason.as_str().into();
            v
        }
        LastExit::Killed(st, why) => {
            let mut v = status_json(st);
            v["reason"] = (*why).into();
            v
        }
    }
}

fn status_json(st: &ExitStatus) -> serde_json::Value {
    match st {
        ExitStatus::Code(c) => serde_json::json!({"code": c}),
        ExitStatus::Signal(s) => serde_json::json!({"signal": signal_name(*s)}),
    }
}

fn describe_exit(e: &LastExit) -> String {
    match e {
        LastExit::SpawnFailed(err) => format!("spawn failed: {err}"),
        LastExit::Exited(st) => st.to_string(),
        LastExit::Stopped(st, r) => format!("{st} (stopped: {})", r.as_str()),
        LastExit::Killed(st, why) => format!("{st} ({why})"),
    }
}

/// The watch paths of a program, resolved against its cwd.
pub fn watch_paths(p: &ProgramCfg) -> Vec<PathBuf> {
    p.watch
        .iter()
        .map(|w| match (&p.cwd, w.is_relative()) {
            (Some(c), true) => c.join(w),
            _ => w.clone(),
        })
        .collect()
}

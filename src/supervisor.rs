//! The event loop. It owns every worker's state; nothing else does.
//!
//! One task `select!`s over: exits from the reaper, signals, and one timer armed for the nearest
//! deadline of any slot (backoff, stop timeout, starting grace). Between events it sleeps; it
//! never polls. After each event it publishes a fresh `Snapshot` for the status endpoint.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::{signal_name, Config, LogMode, OnExhausted, ProgramCfg, StepCfg};
use crate::guard::Guard;
use crate::output::{color_for, Output, Source};
use crate::reaper::Reaper;
use crate::signals::Signals;
use crate::sockets::Bound;
use crate::spawn::{self, SpawnSpec, Stdio};
use crate::state::{Action, AfterStop, ExitStatus, LastExit, Phase, Slot};
use crate::status::{ProgramStatus, Snapshot, SocketStatus, StepStatus, WorkerStatus};

/// Exit codes (SPEC §1).
pub const EXIT_OK: i32 = 0;
pub const EXIT_RUNTIME: i32 = 1;
pub const EXIT_STEP: i32 = 3;

/// Lines of a failed step's output quoted in the error.
const STEP_TAIL: usize = 10;
/// After the shutdown timeout everything was KILLed; wait this much more for the reaper.
const KILL_GRACE: Duration = Duration::from_secs(5);

pub struct Context {
    pub config_label: String,
    pub pid1: bool,
    pub guard: Option<Guard>,
    pub output: Output,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
}

struct Program {
    cfg: ProgramCfg,
    slots: Vec<Slot>,
    desired: u32,
    /// drover's environment plus the program's, computed once
    env: Vec<(String, String)>,
    sockets: Vec<(String, RawFd)>,
    crash_reported: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RunState {
    Starting,
    Running,
    Stopping { hard_deadline: Instant },
}

pub struct Supervisor {
    cx: Context,
    cfg: Config,
    programs: Vec<Program>,
    sockets: Vec<Bound>,
    /// live worker pid -> (program index, slot index)
    pids: HashMap<libc::pid_t, (usize, u32)>,
    steps: Vec<StepStatus>,
    run: RunState,
    exit_code: i32,
    started: Instant,
    rng: u64,
    on_exhausted: OnExhausted,
}

enum StepEnd {
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(String),
    Shutdown,
}

impl Supervisor {
    pub fn new(cfg: Config, sockets: Vec<Bound>, cx: Context) -> Supervisor {
        let base_env = base_env();
        let programs = cfg
            .programs
            .iter()
            .map(|p| {
                let mut env = base_env.clone();
                for (k, v) in &p.env {
                    env.retain(|(ek, _)| ek != k);
                    env.push((k.clone(), v.clone()));
                }
                let socks = p
                    .sockets
                    .iter()
                    .filter_map(|n| sockets.iter().find(|b| &b.name == n))
                    .map(|b| (b.name.clone(), b.raw()))
                    .collect();
                Program {
                    cfg: p.clone(),
                    slots: Vec::new(),
                    desired: p.workers,
                    env,
                    sockets: socks,
                    crash_reported: false,
                }
            })
            .collect();
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
        let on_exhausted = cfg.supervisor.on_exhausted.unwrap_or(if cx.pid1 {
            OnExhausted::Exit
        } else {
            OnExhausted::Stay
        });
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        Supervisor {
            cx,
            cfg,
            programs,
            sockets,
            pids: HashMap::new(),
            steps,
            run: RunState::Starting,
            exit_code: EXIT_OK,
            started: Instant::now(),
            rng: seed,
            on_exhausted,
        }
    }

    fn jitter(&mut self) -> f64 {
        // xorshift64: backoff jitter needs no quality, only spread
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Run steps, then supervise until shutdown. Returns the process exit code.
    pub async fn run(mut self, mut reaper: Reaper, mut signals: Signals) -> i32 {
        self.publish();
        if let Err(code) = self.run_steps(&mut reaper, &mut signals).await {
            self.publish();
            return code;
        }
        let now = Instant::now();
        for pi in 0..self.programs.len() {
            let n = self.programs[pi].desired;
            for i in 0..n {
                self.programs[pi].slots.push(Slot::new(i));
                self.spawn_slot(pi, i, now);
            }
        }
        self.run = RunState::Running;
        let total: u32 = self.programs.iter().map(|p| p.desired).sum();
        info!(
            "supervising {} program{} with {} worker{} in all",
            self.programs.len(),
            if self.programs.len() == 1 { "" } else { "s" },
            total,
            if total == 1 { "" } else { "s" }
        );
        self.publish();

        loop {
            if let RunState::Stopping { .. } = self.run {
                if self.programs.iter().all(|p| p.slots.is_empty()) {
                    info!("all workers stopped; exiting with code {}", self.exit_code);
                    return self.exit_code;
                }
            }
            let deadline = self.next_deadline();
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
                        self.on_exit(pid, st, now);
                    }
                    self.check_exhausted();
                }
                sig = signals.recv() => self.on_signal(sig),
                _ = sleep => {}
            }
            if let RunState::Stopping { hard_deadline } = self.run {
                if Instant::now() >= hard_deadline {
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
            self.tick(Instant::now());
            self.publish();
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
                            _ = reaper.next() => {}
                            sig = signals.recv() => {
                                if matches!(sig, libc::SIGTERM | libc::SIGINT | libc::SIGQUIT) {
                                    info!("shutdown requested while waiting to retry step {}; no worker was started", step.name);
                                    return Err(EXIT_OK);
                                }
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
                    if attempts == 1 { "" } else { "s" }
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

    fn slot_mut(&mut self, pi: usize, idx: u32) -> Option<&mut Slot> {
        self.programs[pi].slots.iter_mut().find(|s| s.index == idx)
    }

    fn spawn_slot(&mut self, pi: usize, idx: u32, now: Instant) {
        let jitter = self.jitter();
        let parent = self.parent_pid();
        let prog = &self.programs[pi];
        let name = format!("{}.{}", prog.cfg.name, idx);
        let mut env = prog.env.clone();
        env.push(("DROVER_PROGRAM".into(), prog.cfg.name.clone()));
        env.push(("DROVER_WORKER".into(), idx.to_string()));
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
        };
        let backoff = prog.cfg.backoff;
        let program_name = prog.cfg.name.clone();
        match spawn::spawn(&spec) {
            Ok(pid) => {
                if let Some((r, w)) = pipe {
                    drop(w);
                    let source = Arc::new(Source {
                        label: name.clone(),
                        program: program_name.clone(),
                        worker: Some(idx),
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
                self.pids.insert(pid, (pi, idx));
                if let Some(slot) = self.slot_mut(pi, idx) {
                    slot.spawned(pid, now);
                }
                info!(program = %program_name, worker = idx, pid, "worker {name} started (pid {pid})");
            }
            Err(e) => {
                if let Some(slot) = self.slot_mut(pi, idx) {
                    slot.spawn_failed(e.to_string(), now, &backoff, jitter);
                    let delay = slot.last_delay;
                    error!(program = %program_name, worker = idx, "worker {name}: spawn {e} (retrying in {delay:.1?})");
                }
            }
        }
    }

    fn on_exit(&mut self, pid: libc::pid_t, status: ExitStatus, now: Instant) {
        let Some((pi, idx)) = self.pids.remove(&pid) else {
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
        let jitter = self.jitter();
        let (policy, backoff, name) = {
            let p = &self.programs[pi].cfg;
            (p.restart, p.backoff, p.name.clone())
        };
        let stopping = self.run != RunState::Running;
        let Some(slot) = self.slot_mut(pi, idx) else {
            return;
        };
        let was_stopping = matches!(slot.phase, Phase::Stopping { .. });
        let uptime = slot
            .since()
            .map(|s| now.duration_since(s))
            .unwrap_or_default();
        let acts = slot.exited(status, now, policy, &backoff, jitter);
        let label = format!("{name}.{idx}");
        if was_stopping {
            info!(program = %name, worker = idx, pid, "worker {label} (pid {pid}) stopped: {status}");
        } else {
            match &slot.phase {
                Phase::Backoff { .. } if slot.last_delay.is_zero() => warn!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting now"
                ),
                Phase::Backoff { .. } => warn!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting in {:.1?} ({} consecutive quick failure{})",
                    slot.last_delay, slot.failures, if slot.failures == 1 { "" } else { "s" }
                ),
                _ => info!(
                    program = %name, worker = idx, pid,
                    "worker {label} (pid {pid}) exited with {status}; restart = {policy:?}: not restarting"
                ),
            }
        }
        if stopping && acts.contains(&Action::Spawn) {
            // never respawn during shutdown
            if let Some(slot) = self.slot_mut(pi, idx) {
                slot.phase = Phase::Done { failed: false };
            }
            self.programs[pi].slots.retain(|s| s.index != idx);
            return;
        }
        self.apply(pi, idx, acts, now);
    }

    fn apply(&mut self, pi: usize, idx: u32, acts: Vec<Action>, now: Instant) {
        for a in acts {
            match a {
                Action::Spawn => self.spawn_slot(pi, idx, now),
                Action::SignalGroup { pid, signal } => {
                    if signal == libc::SIGKILL {
                        warn!(
                            "worker {}.{idx} (pid {pid}) did not stop in time; sending SIGKILL to its process group",
                            self.programs[pi].cfg.name
                        );
                    }
                    spawn::signal_group(pid, signal);
                }
                Action::Remove => self.programs[pi].slots.retain(|s| s.index != idx),
            }
        }
    }

    fn tick(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            let mut todo = Vec::new();
            for s in &mut self.programs[pi].slots {
                let acts = s.tick(now);
                if !acts.is_empty() {
                    todo.push((s.index, acts));
                }
            }
            for (idx, acts) in todo {
                if self.run != RunState::Running && acts.contains(&Action::Spawn) {
                    self.programs[pi].slots.retain(|s| s.index != idx);
                    continue;
                }
                self.apply(pi, idx, acts, now);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let slots = self
            .programs
            .iter()
            .flat_map(|p| p.slots.iter())
            .filter_map(|s| s.deadline())
            .min();
        match self.run {
            RunState::Stopping { hard_deadline } => {
                Some(slots.map_or(hard_deadline, |s| s.min(hard_deadline)))
            }
            _ => slots,
        }
    }

    fn check_exhausted(&mut self) {
        if self.run != RunState::Running {
            return;
        }
        let threshold = self.cfg.supervisor.exhausted_after;
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
                match self.on_exhausted {
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

    // ---- signals and shutdown ---------------------------------------------------------------

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGTERM | libc::SIGINT => {
                if let RunState::Stopping { .. } = self.run {
                    info!("{} received again: fast shutdown (SIGKILL to every worker)", signal_name(sig));
                    self.begin_shutdown(true);
                } else {
                    info!("{} received: graceful shutdown", signal_name(sig));
                    self.begin_shutdown(false);
                }
            }
            libc::SIGQUIT => {
                info!("QUIT received: fast shutdown (SIGKILL to every worker)");
                self.begin_shutdown(true);
            }
            libc::SIGHUP => warn!(
                "HUP received: reload is not supported yet in this version of drover; the running configuration is unchanged"
            ),
            libc::SIGTTIN | libc::SIGTTOU if self.run == RunState::Running => {
                let now = Instant::now();
                for pi in 0..self.programs.len() {
                    if sig == libc::SIGTTIN {
                        self.scale(pi, self.programs[pi].desired + 1, now);
                    } else if self.programs[pi].desired > 1 {
                        self.scale(pi, self.programs[pi].desired - 1, now);
                    }
                }
            }
            libc::SIGUSR1 | libc::SIGUSR2 => {
                let n = self.pids.len();
                for &pid in self.pids.keys() {
                    spawn::signal_group(pid, sig);
                }
                info!("{} forwarded to {n} worker process group(s)", signal_name(sig));
            }
            other => debug!("{} ignored", signal_name(other)),
        }
    }

    fn scale(&mut self, pi: usize, to: u32, now: Instant) {
        let from = self.programs[pi].desired;
        self.programs[pi].desired = to;
        info!(program = %self.programs[pi].cfg.name, "program {}: scaling from {from} to {to} workers", self.programs[pi].cfg.name);
        if to > from {
            for _ in from..to {
                let idx = self.programs[pi]
                    .slots
                    .iter()
                    .map(|s| s.index + 1)
                    .max()
                    .unwrap_or(0);
                self.programs[pi].slots.push(Slot::new(idx));
                self.spawn_slot(pi, idx, now);
            }
        } else {
            // the newest workers go first
            let (sig, timeout) = (
                self.programs[pi].cfg.stop_signal,
                self.programs[pi].cfg.stop_timeout,
            );
            let mut live: Vec<u32> = self.programs[pi]
                .slots
                .iter()
                .filter(|s| {
                    !matches!(
                        s.phase,
                        Phase::Stopping {
                            then: AfterStop::Remove,
                            ..
                        }
                    )
                })
                .map(|s| s.index)
                .collect();
            live.sort_unstable();
            for idx in live.into_iter().rev().take((from - to) as usize) {
                if let Some(s) = self.slot_mut(pi, idx) {
                    let acts = s.stop(now, sig, timeout, AfterStop::Remove);
                    self.apply(pi, idx, acts, now);
                }
            }
        }
    }

    fn begin_shutdown(&mut self, fast: bool) {
        let now = Instant::now();
        let total = self.cfg.supervisor.shutdown_timeout;
        let hard_deadline = match self.run {
            RunState::Stopping { hard_deadline } if !fast => hard_deadline,
            _ => now + if fast { Duration::ZERO } else { total } + KILL_GRACE,
        };
        self.run = RunState::Stopping { hard_deadline };
        for pi in 0..self.programs.len() {
            let (sig, timeout) = if fast {
                (libc::SIGKILL, Duration::ZERO)
            } else {
                let c = &self.programs[pi].cfg;
                (c.stop_signal, c.stop_timeout.min(total))
            };
            let idxs: Vec<u32> = self.programs[pi].slots.iter().map(|s| s.index).collect();
            for idx in idxs {
                if let Some(s) = self.slot_mut(pi, idx) {
                    let acts = s.stop(now, sig, timeout, AfterStop::Remove);
                    self.apply(pi, idx, acts, now);
                }
            }
        }
    }

    // ---- status -----------------------------------------------------------------------------

    fn publish(&self) {
        let now = Instant::now();
        let snap = Snapshot {
            state: match self.run {
                RunState::Starting => "starting",
                RunState::Running => "running",
                RunState::Stopping { .. } => "stopping",
            },
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() } as u32,
            pid1: self.cx.pid1,
            config: self.cx.config_label.clone(),
            uptime_s: now.duration_since(self.started).as_secs_f64(),
            steps: self.steps.clone(),
            sockets: self
                .sockets
                .iter()
                .map(|b| SocketStatus {
                    name: b.name.clone(),
                    listen: b.local.clone(),
                })
                .collect(),
            programs: self
                .programs
                .iter()
                .map(|p| ProgramStatus {
                    name: p.cfg.name.clone(),
                    desired: p.desired,
                    crash_looping: p.crash_reported,
                    workers: p
                        .slots
                        .iter()
                        .map(|s| WorkerStatus {
                            index: s.index,
                            pid: s.pid(),
                            state: s.state_name(),
                            restarts: s.restarts,
                            uptime_s: s.since().map(|t| now.duration_since(t).as_secs_f64()),
                            last_exit: s.last_exit.as_ref().map(exit_json),
                            memory_bytes: None,
                            cpu_percent: None,
                        })
                        .collect(),
                })
                .collect(),
        };
        self.cx.snapshot.send_replace(Arc::new(snap));
    }
}

/// drover's environment minus what is drover's own business (socket activation, sd_notify,
/// its config path); steps and workers start from this.
fn base_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "LISTEN_FDS" | "LISTEN_PID" | "LISTEN_FDNAMES" | "NOTIFY_SOCKET" | "DROVER_CONFIG"
            )
        })
        .collect()
}

fn exit_json(e: &LastExit) -> serde_json::Value {
    let (st, by_drover) = match e {
        LastExit::SpawnFailed(err) => return serde_json::json!({"reason": "spawn", "error": err}),
        LastExit::Exited(st) => (st, false),
        LastExit::Stopped(st) => (st, true),
    };
    let mut v = match st {
        ExitStatus::Code(c) => serde_json::json!({"code": c}),
        ExitStatus::Signal(s) => serde_json::json!({"signal": signal_name(*s)}),
    };
    if by_drover {
        v["reason"] = "stopped".into();
    }
    v
}

fn describe_exit(e: &LastExit) -> String {
    match e {
        LastExit::SpawnFailed(err) => format!("spawn failed: {err}"),
        LastExit::Exited(st) | LastExit::Stopped(st) => st.to_string(),
    }
}

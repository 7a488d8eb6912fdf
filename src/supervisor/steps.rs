//! Pre-start steps: the loop's first phase. One step runs at a time, in order, with its timeout
//! and retries; its exit comes from the reaper and its last lines from its output task, like
//! every other event, so signals, control requests and the watchdog are handled by the one loop
//! while a migration runs. When the last step succeeds the workers start; when one fails for
//! good drover exits 3 and starts nothing. Shutdown while a step runs stops it gracefully
//! (`stop`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use super::{plural, Event, RunState, Supervisor, EXIT_OK, EXIT_STEP};
use crate::api::snapshot::{StepState, StepStatus};
use crate::config::StepCfg;
use crate::logs::output::{color_for, Source};
use crate::process::reaper::ExitStatus;
use crate::process::spawn::{self, SpawnSpec, Stdio};
use crate::state::LastExit;

mod stop;
use stop::Stop;

/// Lines of a failed step's output quoted in the error.
const STEP_TAIL: usize = 10;
/// After a step exits, its output has this long to reach its end (a grandchild may hold it).
const OUTPUT_GRACE: Duration = Duration::from_secs(2);

pub(super) struct Steps {
    cfg: Vec<StepCfg>,
    pub status: Vec<StepStatus>,
    /// the step running or about to
    at: usize,
    attempt: u32,
    started: Instant,
    run: Run,
    runs: u64,
}

enum Run {
    /// start the next attempt at this instant
    Waiting(Instant),
    Running(Attempt),
    /// no step left
    Finished,
}

struct Attempt {
    id: u64,
    pid: i32,
    timeout_at: Option<Instant>,
    timed_out: bool,
    /// drover was told to stop while this attempt ran
    stop: Option<Stop>,
    exit: Option<ExitStatus>,
    tail: Option<Vec<String>>,
    output_by: Option<Instant>,
}

/// How an attempt ended.
enum End {
    Exited(ExitStatus),
    TimedOut,
    SpawnFailed(String),
    /// drover was told to stop while it ran (and it may have reached its own timeout meanwhile)
    Interrupted {
        status: ExitStatus,
        stop: Stop,
        timed_out: bool,
    },
}

impl Steps {
    pub fn new(cfg: &[StepCfg]) -> Steps {
        Steps {
            status: cfg
                .iter()
                .map(|s| StepStatus {
                    name: s.name.clone(),
                    state: StepState::Pending,
                    exit: None,
                    attempts: 0,
                    duration_s: None,
                })
                .collect(),
            cfg: cfg.to_vec(),
            at: 0,
            attempt: 1,
            started: Instant::now(),
            run: Run::Waiting(Instant::now()),
            runs: 0,
        }
    }

    pub fn owns(&self, pid: i32) -> bool {
        matches!(&self.run, Run::Running(a) if a.pid == pid)
    }

    pub fn current_name(&self) -> &str {
        self.cfg.get(self.at).map_or("", |s| s.name.as_str())
    }

    pub fn all_succeeded(&self) -> bool {
        self.status.iter().all(|s| s.state == StepState::Succeeded)
    }

    /// Each step's status at `now`: the running one's duration so far (its attempts included).
    pub fn status_at(&self, now: Instant) -> Vec<StepStatus> {
        let mut status = self.status.clone();
        for st in status.iter_mut().filter(|s| s.state == StepState::Running) {
            st.duration_s = Some(now.saturating_duration_since(self.started).as_secs_f64());
        }
        status
    }

    /// A step is being stopped because drover was told to stop.
    pub fn stopping(&self) -> bool {
        matches!(&self.run, Run::Running(a) if a.stop.is_some())
    }

    pub fn deadline(&self) -> Option<Instant> {
        match &self.run {
            Run::Waiting(t) => Some(*t),
            Run::Running(a) if a.exit.is_some() => a.output_by,
            Run::Running(a) => {
                let timeout = a.timeout_at.filter(|_| !a.timed_out);
                let kill = a.stop.and_then(|s| s.deadline());
                timeout.into_iter().chain(kill).min()
            }
            Run::Finished => None,
        }
    }
}

impl Supervisor {
    /// The first phase: run the steps, or start the workers if there are none.
    pub(super) fn steps_begin(&mut self, now: Instant) {
        self.run = RunState::Steps;
        self.steps.started = now;
        self.advance_steps(now);
    }

    pub(super) fn advance_steps(&mut self, now: Instant) {
        loop {
            if self.steps.at >= self.steps.cfg.len() {
                self.steps.run = Run::Finished;
            }
            match &mut self.steps.run {
                Run::Finished => return self.start_workers(now),
                Run::Waiting(t) if now >= *t => self.start_attempt(now),
                Run::Waiting(_) => return,
                Run::Running(a) => {
                    if a.exit.is_none() && !a.timed_out && a.timeout_at.is_some_and(|t| now >= t) {
                        a.timed_out = true;
                        let (pid, name) = (a.pid, self.steps.current_name().to_string());
                        warn!(step = %name, "pre-start step {name} timed out; killing its process group");
                        self.children.signal_group(pid, Signal::SIGKILL);
                    }
                    self.check_stopping_step(now);
                    let Run::Running(a) = &self.steps.run else {
                        return;
                    };
                    let output_done = a.tail.is_some() || a.output_by.is_some_and(|t| now >= t);
                    let end = match (a.exit, output_done, a.stop) {
                        (Some(status), true, Some(stop)) => End::Interrupted {
                            status,
                            stop,
                            timed_out: a.timed_out,
                        },
                        (Some(_), true, _) if a.timed_out => End::TimedOut,
                        (Some(st), true, _) => End::Exited(st),
                        _ => return,
                    };
                    let tail = a.tail.clone().unwrap_or_default();
                    if !self.conclude(end, tail, now) {
                        return;
                    }
                }
            }
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        let step = self.steps.cfg[self.steps.at].clone();
        let (i, attempt, attempts) = (self.steps.at, self.steps.attempt, step.retries + 1);
        if attempt == 1 {
            self.steps.started = now;
        }
        self.steps.status[i].state = StepState::Running;
        self.steps.status[i].attempts = attempt;
        if let Some(n) = &self.cx.notify {
            n.status(&format!(
                "pre-start step {} (attempt {attempt}/{attempts})",
                step.name
            ));
        }
        info!(step = %step.name, "pre-start step {} starting (attempt {attempt}/{attempts}): {}", step.name, step.command);
        self.steps.runs += 1;
        match self.spawn_step(&step, self.steps.runs) {
            Ok(pid) => {
                self.steps.run = Run::Running(Attempt {
                    id: self.steps.runs,
                    pid,
                    timeout_at: step.timeout.map(|t| now + t),
                    timed_out: false,
                    stop: None,
                    exit: None,
                    tail: None,
                    output_by: None,
                });
            }
            Err(e) => {
                self.conclude(End::SpawnFailed(e), vec![], now);
            }
        }
    }

    /// Spawn one attempt of a step, its output pumped to drover's with the step's prefix.
    fn spawn_step(&mut self, step: &StepCfg, run: u64) -> Result<i32, String> {
        let (r, w) = spawn::pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut env = super::base_env();
        let mut set = |k: &str, v: &str| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v.into()));
        };
        for (k, v) in step.identity.iter().flat_map(|id| id.env()) {
            set(k, v);
        }
        for (k, v) in &step.file_env.vars {
            set(k, v);
        }
        for (k, v) in &step.env {
            set(k, v);
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
            extra_fds: vec![],
            // `user`/`group` on the step; without them it runs as drover does
            identity: step.identity.as_ref().map(|i| (i.uid, i.gid)),
        };
        let pid = spawn::spawn(&spec).map_err(|e| step.command.mask_program(&e.to_string()))?;
        drop(w);
        self.children
            .adopt(pid)
            .map_err(|e| format!("cannot hold pid {pid} by a pidfd ({e}); killed it"))?;
        let source = Arc::new(Source {
            label: format!("step.{}", step.name),
            program: step.name.clone(),
            worker: None,
            color: color_for(&step.name),
            ring: None,
            pid: Default::default(),
        });
        let pumping = self.cx.output.pump(source, r, STEP_TAIL);
        let events = self.events.clone();
        tokio::spawn(async move {
            let tail = pumping.await.into_iter().collect();
            let _ = events.send(Event::StepOutput { run, tail });
        });
        Ok(pid)
    }

    pub(super) fn on_step_exit(&mut self, _pid: i32, status: ExitStatus, now: Instant) {
        // nothing the step started outlives it: its group was killed when it was reaped
        if let Run::Running(a) = &mut self.steps.run {
            a.exit = Some(status);
            a.output_by = Some(now + OUTPUT_GRACE);
        }
    }

    pub(super) fn on_step_output(&mut self, run: u64, tail: Vec<String>, _now: Instant) {
        if let Run::Running(a) = &mut self.steps.run {
            if a.id == run {
                a.tail = Some(tail);
            }
        }
    }

    /// An attempt is over. True if the steps go on (another attempt or the next step).
    fn conclude(&mut self, end: End, tail: Vec<String>, now: Instant) -> bool {
        let i = self.steps.at;
        let step = self.steps.cfg[i].clone();
        let attempts = step.retries + 1;
        let elapsed = now.duration_since(self.steps.started).as_secs_f64();
        let st = &mut self.steps.status[i];
        let reason = match end {
            End::Exited(s) if s.success() => {
                st.state = StepState::Succeeded;
                st.exit = Some(LastExit::Exited(s).to_json());
                st.duration_s = Some(elapsed);
                info!(step = %step.name, "pre-start step {} succeeded in {elapsed:.2}s", step.name);
                self.steps.at += 1;
                self.steps.attempt = 1;
                self.steps.run = Run::Waiting(now);
                return true;
            }
            End::Exited(s) => {
                st.exit = Some(LastExit::Exited(s).to_json());
                s.to_string()
            }
            End::TimedOut => {
                st.exit = Some(serde_json::json!({"reason": "timeout"}));
                format!(
                    "timed out after {:?} (its process group was killed)",
                    step.timeout.unwrap_or_default()
                )
            }
            End::SpawnFailed(e) => {
                st.exit = Some(serde_json::json!({"reason": "spawn", "error": e}));
                format!("could not be started: {e}")
            }
            End::Interrupted {
                status,
                stop,
                timed_out,
            } => {
                let timed_out = step.timeout.filter(|_| timed_out);
                return self.interrupted(status, stop, timed_out, tail, elapsed);
            }
        };
        let attempt = self.steps.attempt;
        if attempt < attempts {
            warn!(step = %step.name, "pre-start step {} failed: {reason} (attempt {attempt}/{attempts}; retrying in {:?})", step.name, step.retry_delay);
            self.steps.attempt += 1;
            self.steps.run = Run::Waiting(now + step.retry_delay);
            return true;
        }
        st.state = StepState::Failed;
        st.duration_s = Some(elapsed);
        for later in self.steps.status.iter_mut().skip(i + 1) {
            later.state = StepState::Skipped;
        }
        let quoted = quote(&tail);
        error!(
            step = %step.name,
            "pre-start step {} failed after {attempts} attempt{}: {reason}; no worker was started; exiting with code {EXIT_STEP}. Last output:\n{quoted}",
            step.name,
            plural(attempts as usize)
        );
        self.finished = Some(EXIT_STEP);
        self.steps.run = Run::Finished;
        false
    }

    /// The step drover was told to stop has ended: drover exits, 0 if the step exited 0 (it
    /// finished its work in its TERM handler), else 3. Never retried. Always false: nothing
    /// goes on.
    fn interrupted(
        &mut self,
        status: ExitStatus,
        stop: Stop,
        timed_out: Option<Duration>,
        tail: Vec<String>,
        elapsed: f64,
    ) -> bool {
        let i = self.steps.at;
        let step = self.steps.cfg[i].clone();
        let st = &mut self.steps.status[i];
        st.state = StepState::Interrupted;
        let mut exit = LastExit::Exited(status).to_json();
        exit["reason"] = "shutdown".into();
        st.exit = Some(exit);
        st.duration_s = Some(elapsed);
        for later in self.steps.status.iter_mut().skip(i + 1) {
            later.state = StepState::Skipped;
        }
        self.steps.run = Run::Finished;
        let name = &step.name;
        if status.success() {
            let after = stop.signal.map_or("as shutdown came".to_string(), |s| {
                format!("after {}", crate::process::signals::name(s))
            });
            info!(step = %name, "pre-start step {name} exited 0 {after}; no worker was started; exiting with code {EXIT_OK}");
            self.finished = Some(EXIT_OK);
            return false;
        }
        error!(
            step = %name,
            "pre-start step {name} was interrupted by shutdown: {}; no worker was started; exiting with code {EXIT_STEP}. Last output:\n{}",
            stop.how(status, timed_out),
            quote(&tail)
        );
        self.finished = Some(EXIT_STEP);
        false
    }

    /// Every step succeeded: start every program whose dependencies hold (those without any,
    /// and a chain of `started` ones, in this one pass); the others start when theirs do.
    fn start_workers(&mut self, now: Instant) {
        if self.run != RunState::Steps || self.finished.is_some() {
            return;
        }
        self.run = RunState::Running;
        self.start_gated(now);
        if self.cx.budget.sample {
            self.next_sample = Some(now + self.cfg.budget.sample_interval);
        }
        let total: u32 = self.programs.iter().map(|p| p.desired).sum();
        let n = self.programs.len();
        let waiting = self.programs.iter().filter(|p| !p.started()).count();
        let gated = match waiting {
            0 => String::new(),
            w => format!(
                " ({w} program{} waiting for {} dependencies)",
                plural(w),
                if w == 1 { "its" } else { "their" }
            ),
        };
        info!(
            "supervising {n} program{} with {total} worker{} in all{gated}",
            plural(n),
            plural(total as usize)
        );
    }
}

/// A step's last output lines, quoted for the log.
fn quote(tail: &[String]) -> String {
    if tail.is_empty() {
        return "  (it printed nothing)".to_string();
    }
    tail.iter()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

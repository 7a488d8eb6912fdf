//! A program and its workers: what the loop keeps per program, and per worker beside its slot
//! (readiness schedule, health record, cgroup, sampled usage, memory decision), so a worker's
//! data goes when the worker goes.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{ListenAddr, ProgramCfg, ReadyCheck};
use crate::process::probe;
use crate::process::sockets::Bound;
use crate::resources::autoscale::Autoscaler;
use crate::resources::cgroup::SlotCgroup;
use crate::state::{Phase, Slot, SlotCfg, StopReason};

use super::budget::{MemoryAction, Usage};
use super::crash_loop::CrashLoop;
use super::depends::Stage;
use super::health::{HealthState, ProgramHealth};
use super::preload::PreloadState;
use super::rolling::Roll;
use super::saturation::Shedding;

pub(super) struct Program {
    pub id: u64,
    pub cfg: ProgramCfg,
    pub slot_cfg: SlotCfg,
    pub workers: Vec<Worker>,
    pub desired: u32,
    /// drover's environment plus the program's, computed once
    pub env: Vec<(String, String)>,
    pub sockets: Vec<(String, RawFd)>,
    pub inodes: Vec<u64>,
    pub probe_target: Option<probe::Target>,
    pub crash: CrashLoop,
    pub roll: Option<Roll>,
    /// a roll asked for that waits for its new preloader (preload = true): why, and when asked
    pub roll_deferred: Option<(StopReason, Instant)>,
    /// how the program's last roll ended (`roll_outcome.rs`)
    pub last_roll: Option<crate::api::snapshot::LastRoll>,
    /// some worker of it has been ready once: a crash loop after that is not a failed deployment
    pub ever_ready: bool,
    /// added by a reload while drover ran: its never starting is its own trouble, not a
    /// deployment that cannot start (other programs are serving)
    pub added_by_reload: bool,
    /// `depends_on` conditions it has met since it started: (ready, healthy)
    pub met: (bool, bool),
    /// being removed by a reload: dropped once its workers are gone
    pub removing: bool,
    /// waiting for its dependencies, started, or never to start (`depends.rs`)
    pub stage: Stage,
    /// a process of it has run (its dependents' `started`)
    pub ran: bool,
    /// shutting down: its stop waits until its dependents' workers are gone (`shutdown.rs`)
    pub stop_held: bool,
    pub health: ProgramHealth,
    pub watch_due: Option<Instant>,
    /// what changed under its watch paths since its last roll (named when the roll starts)
    pub watch_changes: crate::watch::Changes,
    pub autoscaler: Option<Autoscaler>,
    /// above its max_queue: /readyz answers 503
    pub shedding: Option<Shedding>,
    /// its preloader (preload = true)
    pub preload: PreloadState,
    /// its open prometheus_multiproc_dir: (the setting, the path workers get, the directory)
    pub metrics_dir: Option<(
        crate::config::MetricsDirCfg,
        PathBuf,
        crate::resources::metrics_dir::MetricsDir,
    )>,
}

/// One worker: its slot (the state machine) and what the loop knows about its process.
pub(super) struct Worker {
    pub slot: Slot,
    /// next readiness check (listening and exec checks)
    pub ready_next: Option<Instant>,
    pub health: HealthState,
    /// its cgroup(s), where drover manages them, and the OOM-kill count when its process started
    pub cgroup: Option<(SlotCgroup, u64)>,
    pub usage: Usage,
    /// drover is recycling it for its memory
    pub memory: Option<MemoryAction>,
    /// when it has lived its program's max_lifetime (jittered), if it has one
    pub retire_at: Option<Instant>,
    /// it sent READY=1 (readiness check "notify")
    pub notified: bool,
    /// the last STATUS= it sent
    pub notify_status: Option<String>,
    /// postponed until its program's preloader is ready
    pub awaiting_preloader: bool,
    /// a fork was asked of the preloader for it; the answer is due by then
    pub forking: Option<Instant>,
    /// the task reading its current process's output pipe
    pub pump: Option<tokio::task::AbortHandle>,
    /// where that pipe's lines go (its pid is set once known)
    pub output: Option<std::sync::Arc<crate::logs::output::Source>>,
}

impl Worker {
    pub fn new(slot: Slot) -> Worker {
        Worker {
            slot,
            ready_next: None,
            health: HealthState::default(),
            cgroup: None,
            usage: Usage::default(),
            memory: None,
            retire_at: None,
            notified: false,
            notify_status: None,
            awaiting_preloader: false,
            forking: None,
            pump: None,
            output: None,
        }
    }

    /// A new process started in this slot: what was known of the previous one is forgotten.
    pub fn fresh_process(&mut self, first_check: Instant, retire_at: Option<Instant>) {
        self.ready_next = Some(first_check);
        self.retire_at = retire_at;
        self.notified = false;
        self.notify_status = None;
        self.awaiting_preloader = false;
        self.forking = None;
        self.health = HealthState::default();
        self.usage = Usage::default();
        self.memory = None;
        if let Some((cg, base)) = &mut self.cgroup {
            *base = cg.oom_kills();
        }
    }

    /// The kernel OOM-killed something in its cgroup since its process started.
    pub fn oom_killed(&self) -> bool {
        self.cgroup
            .as_ref()
            .is_some_and(|(cg, base)| cg.oom_kills() > *base)
    }

    pub fn id(&self) -> u64 {
        self.slot.id()
    }
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

impl Program {
    pub fn new(id: u64, cfg: ProgramCfg, bound: &[Bound]) -> Program {
        let mut p = Program {
            id,
            slot_cfg: slot_cfg(&cfg),
            desired: cfg.workers,
            autoscaler: cfg.autoscale.clone().map(Autoscaler::new),
            shedding: None,
            preload: PreloadState::default(),
            metrics_dir: None,
            cfg,
            workers: Vec::new(),
            env: vec![],
            sockets: vec![],
            inodes: vec![],
            probe_target: None,
            crash: CrashLoop::default(),
            roll: None,
            roll_deferred: None,
            last_roll: None,
            ever_ready: false,
            added_by_reload: false,
            met: (false, false),
            removing: false,
            stage: Stage::fresh(),
            ran: false,
            stop_held: false,
            health: ProgramHealth::default(),
            watch_due: None,
            watch_changes: Default::default(),
        };
        p.derive(bound);
        p
    }

    /// A reloaded configuration for the same program; workers keep running until rolled.
    pub fn reconfigure(&mut self, cfg: ProgramCfg, bound: &[Bound]) {
        self.slot_cfg = slot_cfg(&cfg);
        self.cfg = cfg;
        self.derive(bound);
    }

    /// What follows from the configuration: environment (drover's, the user's `USER`/`HOME`,
    /// the env files, then `env`: a later one wins), socket fds, probe target.
    fn derive(&mut self, bound: &[Bound]) {
        let p = &self.cfg;
        let mut env = super::base_env();
        let mut set = |k: &str, v: &str| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v.into()));
        };
        for (k, v) in p.identity.iter().flat_map(|id| id.env()) {
            set(k, v);
        }
        for (k, v) in &p.file_env.vars {
            set(k, v);
        }
        for (k, v) in &p.env {
            set(k, v);
        }
        let mine: Vec<&Bound> = p
            .sockets
            .iter()
            .filter_map(|n| bound.iter().find(|b| &b.name == n))
            .collect();
        self.sockets = mine.iter().map(|b| (b.name.clone(), b.raw())).collect();
        self.inodes = probe::inodes(mine.iter().map(|b| &b.fd));
        self.probe_target = mine.first().and_then(|b| probe_target(b));
        self.env = env;
    }

    /// A new worker in this slot.
    pub fn push(&mut self, slot: Slot) {
        self.workers.push(Worker::new(slot));
    }

    pub fn worker(&self, id: u64) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id() == id)
    }

    pub fn worker_mut(&mut self, id: u64) -> Option<&mut Worker> {
        self.workers.iter_mut().find(|w| w.id() == id)
    }

    /// Its dependencies held and its workers were started.
    pub fn started(&self) -> bool {
        self.stage == Stage::Started
    }

    /// A roll runs, or waits for its new preloader.
    pub fn rolling(&self) -> bool {
        self.roll.is_some() || self.roll_deferred.is_some()
    }

    pub fn ready_count(&self) -> usize {
        self.workers.iter().filter(|w| w.slot.is_ready()).count()
    }

    /// When the worker's next readiness check is due (the loop's timer includes it).
    pub fn readiness_due(&self, w: &Worker) -> Option<Instant> {
        let Phase::Starting { since, .. } = w.slot.phase() else {
            return None;
        };
        match self.cfg.readiness.check {
            ReadyCheck::Uptime => Some(*since + self.cfg.readiness.min_uptime),
            ReadyCheck::Notify => w.notified.then(|| *since + self.cfg.readiness.min_uptime),
            _ => w.ready_next,
        }
    }

    /// The first readiness check of a process spawned `now`.
    pub fn first_check(&self, now: Instant) -> Instant {
        now + self.cfg.readiness.interval.min(Duration::from_millis(20))
    }
}

/// Where the health probe connects: the program's first socket, loopback for a wildcard.
fn probe_target(b: &Bound) -> Option<probe::Target> {
    match &b.cfg_listen {
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

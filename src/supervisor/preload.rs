//! Preload: a program with `preload = true` has its command started once as a *preloader*
//! that imports the application and never serves; each worker is forked from it on request
//! (`process/preload.rs` speaks the protocol). The forked worker is re-parented to drover (a child
//! subreaper, or PID 1), has its own process group, joins its cgroup from here before it is told
//! to serve, and is from then on a worker like any other.
//!
//! Until the preloader has said "ready", the program's slots wait (`Slot::postpone`), without
//! counting failures. A preloader that fails to load is logged with the reason and restarted
//! after the program's backoff. One that dies later is replaced, and the workers roll onto the
//! new one; so do reloads, restarts and watched files (new code needs a new preloader), while
//! memory and lifetime recycling fork from the current one.
//!
//! Also here: the Prometheus multiprocess directory (`prometheus_multiproc_dir`), emptied before
//! a program's first worker starts; a dead worker's live-gauge files are removed (what
//! `prometheus_client`'s `mark_process_dead` does).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use super::{RunState, Supervisor};
use crate::process::preload::{self, Channel, Loaded};
use crate::process::reaper::ExitStatus;
use crate::process::spawn;
use crate::state::{backoff_delay, StopReason};

/// How long a fork request may take before the preloader counts as broken.
const FORK_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a loading preloader is asked whether it is ready.
const POLL: Duration = Duration::from_millis(20);

pub(super) struct Preloader {
    pub pid: i32,
    ch: Channel,
    pub since: Instant,
    pub ready: Option<Instant>,
    poll_at: Instant,
    /// started for a roll: the roll begins once it is ready
    pub then_roll: Option<StopReason>,
}

/// Per program: its preloader and what happened to the last ones.
#[derive(Default)]
pub(super) struct PreloadState {
    pub current: Option<Preloader>,
    /// consecutive failures to load
    pub failures: u32,
    /// start the next preloader then (after a failure)
    pub retry_at: Option<Instant>,
    /// the last failure, shown in /status
    pub error: Option<String>,
}

/// Why a preloaded worker could not be forked now.
pub(super) enum ForkError {
    /// no preloader is ready yet: wait for it
    NotYet,
    Failed(String),
}

impl Supervisor {
    /// A program is about to start its workers: empty its metrics directory, start its
    /// preloader.
    pub(super) fn prepare_program(&mut self, pi: usize, now: Instant) {
        if let Some(dir) = self.programs[pi].cfg.prometheus_multiproc_dir.clone() {
            let name = self.programs[pi].cfg.name.clone();
            match empty_metrics_dir(&dir) {
                Ok(n) => {
                    info!(program = %name, "program {name}: prometheus_multiproc_dir {}: {n} metric file(s) from an earlier run removed", dir.display())
                }
                Err(e) => {
                    error!(program = %name, "program {name}: prometheus_multiproc_dir {}: {e}; the app's /metrics may count old processes", dir.display())
                }
            }
        }
        if self.programs[pi].cfg.preload && self.programs[pi].preload.current.is_none() {
            self.start_preloader(pi, None, now);
        }
    }

    fn start_preloader(&mut self, pi: usize, then_roll: Option<StopReason>, now: Instant) {
        let name = self.programs[pi].cfg.name.clone();
        let label = format!("{name}.preload");
        let (ch, theirs) = match preload::pair() {
            Ok(p) => p,
            Err(e) => {
                return self.preload_failed(pi, format!("cannot create its socket: {e}"), now)
            }
        };
        let pipe = spawn::pipe().ok();
        let out = pipe
            .as_ref()
            .map(|(_, w)| std::os::fd::AsRawFd::as_raw_fd(w));
        let mut spec = self.spawn_spec(pi, 0, out);
        spec.env.retain(|(k, _)| k != "DROVER_WORKER");
        let fd = 3 + spec.sockets.len();
        spec.env.push(("DROVER_PRELOAD_FD".into(), fd.to_string()));
        spec.extra_fds = vec![std::os::fd::AsRawFd::as_raw_fd(&theirs)];
        match spawn::spawn(&spec) {
            Ok(pid) => {
                drop(theirs);
                if let Some((r, w)) = pipe {
                    drop(w);
                    self.pump(label, &name, None, r);
                }
                if let Some(g) = self.cx.guard.as_mut() {
                    g.watch(pid);
                }
                info!(program = %name, pid, "program {name}: preloader started (pid {pid}); its workers are forked from it once it has loaded the app");
                self.programs[pi].preload.current = Some(Preloader {
                    pid,
                    ch,
                    since: now,
                    ready: None,
                    poll_at: now + POLL,
                    then_roll,
                });
            }
            Err(e) => {
                let e = self.programs[pi].cfg.command.mask_program(&e.to_string());
                self.preload_failed(pi, format!("cannot start: {e}"), now)
            }
        }
    }

    pub(super) fn preload_failed(&mut self, pi: usize, why: String, now: Instant) {
        let jitter = self.jitter();
        let p = &mut self.programs[pi];
        let name = &p.cfg.name;
        p.preload.failures += 1;
        let delay = backoff_delay(&p.cfg.backoff, p.preload.failures, jitter);
        error!(program = %name, "program {name}: the preloader failed: {why}; its workers wait; trying again in {delay:.1?} (preload = true needs a command that speaks drover's preload protocol, docs/worker-protocol.md: drover-uvicorn does)");
        p.preload.error = Some(why);
        p.preload.retry_at = Some(now + delay);
        if let Some(old) = p.preload.current.take() {
            spawn::signal_group(old.pid, Signal::SIGKILL);
        }
    }

    /// The nearest thing the preloaders need: a poll while one loads, a retry after a failure.
    pub(super) fn preload_due(&self) -> Option<Instant> {
        self.programs
            .iter()
            .filter_map(|p| match &p.preload.current {
                Some(l) if l.ready.is_none() => {
                    Some(l.poll_at.min(l.since + p.cfg.readiness.timeout))
                }
                Some(_) => None,
                None => p.preload.retry_at,
            })
            .min()
    }

    pub(super) fn check_preloaders(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let p = &mut self.programs[pi];
            if !p.cfg.preload || p.removing {
                if let Some(old) = p.preload.current.take() {
                    spawn::signal_group(old.pid, Signal::SIGKILL);
                }
                continue;
            }
            match &mut p.preload.current {
                None if p.preload.retry_at.is_some_and(|t| now >= t) => {
                    p.preload.retry_at = None;
                    self.start_preloader(pi, Some(StopReason::Restart), now);
                }
                Some(l) if l.ready.is_none() && now >= l.poll_at => {
                    l.poll_at = now + POLL;
                    let timeout = p.cfg.readiness.timeout;
                    match l.ch.poll_loaded() {
                        Some(Loaded::Ready) => self.preloader_ready(pi, now),
                        Some(Loaded::Failed(why)) => self.preload_failed(pi, why, now),
                        Some(Loaded::Closed) => {
                            self.preload_failed(pi, "it closed DROVER_PRELOAD_FD without saying ready".into(), now)
                        }
                        None if now.duration_since(l.since) >= timeout => self.preload_failed(
                            pi,
                            format!("it did not say ready on DROVER_PRELOAD_FD within {timeout:?} (readiness.timeout)"),
                            now,
                        ),
                        None => {}
                    }
                }
                _ => {}
            }
        }
    }

    fn preloader_ready(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let Some(l) = p.preload.current.as_mut() else {
            return;
        };
        l.ready = Some(now);
        let took = now.duration_since(l.since).as_secs_f64();
        info!(program = %name, pid = l.pid, "program {name}: preloader (pid {}) loaded the app in {took:.2}s", l.pid);
        p.preload.failures = 0;
        p.preload.error = None;
        let roll = l.then_roll;
        let waiting: Vec<u64> = p
            .workers
            .iter()
            .filter(|w| w.awaiting_preloader)
            .map(|w| w.id())
            .collect();
        for id in waiting {
            self.spawn_worker(pi, id, now);
        }
        if let Some(reason) = roll {
            if self.programs[pi]
                .workers
                .iter()
                .any(|w| !w.awaiting_preloader && w.slot.pid().is_some())
            {
                self.start_roll(pi, reason, now);
            }
        }
    }

    /// Does a roll for `reason` need new code, so a new preloader first? Then start it and
    /// roll when it is ready (true: the roll is deferred).
    pub(super) fn roll_needs_new_preloader(
        &mut self,
        pi: usize,
        reason: StopReason,
        now: Instant,
    ) -> bool {
        let p = &mut self.programs[pi];
        if !p.cfg.preload || !matches!(reason, StopReason::Reload | StopReason::Restart) {
            return false;
        }
        if let Some(l) = &mut p.preload.current {
            if l.then_roll.take().is_some() && l.ready.is_some() {
                return false; // this preloader was started for this roll
            }
        }
        if let Some(old) = p.preload.current.take() {
            spawn::signal_group(old.pid, Signal::SIGTERM);
        }
        let name = p.cfg.name.clone();
        info!(program = %name, "program {name}: starting a new preloader; the workers roll onto it once it has loaded the app");
        self.start_preloader(pi, Some(reason), now);
        true
    }

    /// Ask the preloader for worker `index` (its output on `out`), place it in its cgroup and
    /// let it serve.
    pub(super) fn fork_preloaded(
        &mut self,
        pi: usize,
        id: u64,
        index: u32,
        out: Option<i32>,
    ) -> Result<i32, ForkError> {
        let ready = self.programs[pi]
            .preload
            .current
            .as_ref()
            .is_some_and(|l| l.ready.is_some());
        if !ready {
            return Err(ForkError::NotYet);
        }
        self.worker_cgroup(pi, id, index)
            .map_err(|e| ForkError::Failed(format!("cannot set up its cgroup: {e}")))?;
        let p = &self.programs[pi];
        let l = p.preload.current.as_ref().expect("checked above");
        let pid =
            l.ch.fork(index, out, FORK_TIMEOUT)
                .map_err(|e| ForkError::Failed(format!("the preloader could not fork: {e}")))?;
        if let Some((cg, _)) = p.worker(id).and_then(|w| w.cgroup.as_ref()) {
            if let Err(e) = cg.join(pid) {
                l.ch.abort(pid);
                return Err(ForkError::Failed(format!(
                    "cannot move pid {pid} into its cgroup: {e}"
                )));
            }
        }
        l.ch.go(pid).map_err(ForkError::Failed)?;
        Ok(pid)
    }

    /// The program whose current preloader is `pid`.
    pub(super) fn preloader_of(&self, pid: i32) -> Option<usize> {
        self.programs
            .iter()
            .position(|p| p.preload.current.as_ref().is_some_and(|l| l.pid == pid))
    }

    /// Program `pi`'s preloader `pid` exited: a new one takes its place.
    pub(super) fn on_preloader_exit(
        &mut self,
        pi: usize,
        pid: i32,
        status: ExitStatus,
        now: Instant,
    ) {
        let Some(l) = self.programs[pi].preload.current.take() else {
            return;
        };
        if self.run != RunState::Running {
            return;
        }
        let name = self.programs[pi].cfg.name.clone();
        if l.ready.is_none() {
            let why = format!("it exited with {status} before saying ready");
            self.preload_failed(pi, why, now);
        } else {
            warn!(program = %name, "program {name}: its preloader (pid {pid}) exited with {status}; starting a new one, the workers keep serving and roll onto it");
            self.start_preloader(pi, Some(StopReason::Restart), now);
        }
    }

    /// At shutdown: preloaders serve nothing, so they go at once.
    pub(super) fn kill_preloaders(&mut self) {
        for p in &mut self.programs {
            if let Some(l) = p.preload.current.take() {
                spawn::signal_group(l.pid, Signal::SIGKILL);
            }
        }
    }

    /// A worker ended: its live gauges go (counters and histograms keep their totals).
    pub(super) fn metrics_files_of_dead(&self, pi: usize, pid: i32) {
        let Some(dir) = &self.programs[pi].cfg.prometheus_multiproc_dir else {
            return;
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        let suffix = format!("_{pid}.db");
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with("gauge_live") && n.ends_with(&suffix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Remove the `*.db` files prometheus_client writes; create the directory if it is missing.
fn empty_metrics_dir(dir: &std::path::Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut n = 0;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.path().extension().is_some_and(|x| x == "db") {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    Ok(n)
}

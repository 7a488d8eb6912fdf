//! Preload: a program with `preload = true` has its command started once as a *preloader*
//! that imports the application and never serves; each worker is forked from it on request
//! (`process/preload.rs` speaks the protocol). The forked worker is re-parented to drover (a child
//! subreaper, or PID 1), has its own process group, joins its cgroup from here before it is told
//! to serve, and is from then on a worker like any other.
//!
//! The preloader is application code, so nothing it says is believed or waited for:
//!
//! - its messages are read by a task and arrive as `Event::Preloader`; the task reads one only
//!   when one is expected (the first `ready`, one answer per fork request), so a chatty
//!   preloader fills its own socket, never drover's memory;
//! - a fork is a request and a deadline (`FORK_TIMEOUT`), not a wait: the slot waits, the loop
//!   goes on; a preloader that does not answer in time is killed and retried after its backoff;
//! - a `pid N` answer is a claim `process/claim.rs` checks against the kernel's facts before
//!   drover touches N (cgroup, guard, signals); a false claim kills the preloader.
//!
//! Until the preloader has said "ready", the program's slots wait (`Slot::postpone`), without
//! counting failures. A preloader that fails to load, or dies, is logged with the reason and
//! restarted after the program's backoff (one that had run `backoff.reset_after` is restarted
//! at once); the workers roll onto the new one.
//!
//! New code (a reload, a restart, a watched file) needs a new preloader: it loads as `next`
//! while `current` keeps forking the old code (a crashed worker is still replaced at once), and
//! only once it is ready does it become `current`, the old one is asked to stop, and the workers
//! roll onto it. A `next` that fails to load abandons that roll: the old workers and the old
//! preloader keep serving, as any failed deploy leaves them. Memory and lifetime recycling fork
//! from the current one.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use super::roll_outcome::End;
use super::{Event, RunState, Supervisor};
use crate::process::claim::{self, Expected};
use crate::process::preload::{self, Channel, Said};
use crate::process::reaper::ExitStatus;
use crate::process::spawn;
use crate::resources::cgroup::SlotCgroup;
use crate::state::{backoff_delay, StopReason};

/// How long a fork request may take before the preloader counts as broken.
pub(super) const FORK_TIMEOUT: Duration = Duration::from_secs(10);

/// How long after a loading preloader's exit drover waits for its last words (an `error` it sent
/// just before exiting may be reaped before it is read), or for its socket's end.
const LAST_WORDS: Duration = Duration::from_secs(1);

pub(super) struct Preloader {
    pub pid: i32,
    ch: Channel,
    /// the task reading its socket, and the messages it may read
    reader: tokio::task::JoinHandle<()>,
    expect: Arc<tokio::sync::Semaphore>,
    pub since: Instant,
    pub ready: Option<Instant>,
    /// it exited while loading: how, and when (its last words are still read)
    exited: Option<(ExitStatus, Instant)>,
    /// fork requests not answered yet, oldest first (the preloader answers in order)
    pending: VecDeque<Pending>,
    /// the task reading its output
    pump: Option<tokio::task::AbortHandle>,
    /// its own cgroup where drover manages them: what it forks and leaves behind (a helper
    /// that left its process group) goes with it
    cgroup: Option<SlotCgroup>,
}

/// A fork drover asked for and has not had an answer to.
struct Pending {
    slot: u64,
    index: u32,
    /// clock ticks since boot when it was asked: the worker cannot have started earlier
    asked_at: u64,
    deadline: Instant,
}

impl Drop for Preloader {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A preloader failure, as /status shows it: drover's own words, and the preloader's (application
/// text, which may quote configuration or data: shown to authenticated clients only).
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub summary: String,
    pub detail: Option<String>,
    /// what the failure says of the command
    pub cause: Cause,
    /// how it exited, when it exited on its own (the code drover exits with if the app never
    /// started: `check_exhausted`)
    pub status: Option<ExitStatus>,
}

/// Whose failure it was: the log points at the preload protocol only when the command did not
/// speak it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// drover could not start or reach it, or it died or stopped answering after it had loaded
    Drover,
    /// it spoke the protocol and said the app cannot load (`error TEXT`)
    App,
    /// it never said `ready` (closed its socket or exited first), or broke the protocol: maybe
    /// not a preloader at all
    Protocol,
}

/// Per program: its preloader and what happened to the last ones.
#[derive(Default)]
pub(super) struct PreloadState {
    pub current: Option<Preloader>,
    /// loading new code for a roll while `current` keeps forking; current once it is ready
    pub next: Option<Preloader>,
    /// consecutive failures
    pub failures: u32,
    /// start the next preloader then (after a failure)
    pub retry_at: Option<Instant>,
    /// the last failure, shown in /status
    pub error: Option<Failure>,
    /// old preloaders asked to stop (TERM), when they get SIGKILL if still there, and their
    /// cgroups
    pub retiring: Vec<(i32, Instant, Option<SlotCgroup>)>,
}

impl Supervisor {
    /// A program is about to start its workers: empty its metrics directory, start its
    /// preloader.
    pub(super) fn prepare_program(&mut self, pi: usize, now: Instant) {
        self.prepare_metrics_dir(pi);
        if self.programs[pi].cfg.preload && self.programs[pi].preload.current.is_none() {
            self.start_preloader(pi, now);
        }
    }

    /// Start a preloader: the program's `current` one when it has none, else its `next` (new
    /// code for a roll, replacing a `next` still loading older code).
    fn start_preloader(&mut self, pi: usize, now: Instant) {
        let name = self.programs[pi].cfg.name.clone();
        let label = format!("{name}.preload");
        let (ch, theirs) = match preload::pair() {
            Ok(p) => p,
            Err(e) => {
                let f = drover_words(format!("cannot create its socket: {e}"));
                return self.preload_failed(pi, f, now);
            }
        };
        // log = "inherit": the preloader, and the workers it forks (which keep its stdout), write
        // to drover's own; no pipe of drover's sits between them to outlive
        let pipe = match self.programs[pi].cfg.log {
            crate::config::LogMode::Capture => spawn::pipe().ok(),
            crate::config::LogMode::Inherit => None,
        };
        let out = pipe
            .as_ref()
            .map(|(_, w)| std::os::fd::AsRawFd::as_raw_fd(w));
        let cgroup = match self.cx.budget.cgroups.clone() {
            Some(cgs) => {
                let slot = format!("{name}.preload-{}", self.new_id());
                match cgs.slot(&slot, &self.programs[pi].cfg.budget) {
                    Ok(cg) => Some(cg),
                    Err(e) => {
                        let f = drover_words(format!("cannot set up its cgroup: {e}"));
                        return self.preload_failed(pi, f, now);
                    }
                }
            }
            None => None,
        };
        let mut spec = self.spawn_spec(pi, 0, out);
        spec.cgroup_procs = cgroup.as_ref().map(|c| c.procs_fds()).unwrap_or_default();
        spec.env.retain(|(k, _)| k != "DROVER_WORKER");
        let fd = 3 + spec.sockets.len();
        spec.env.push(("DROVER_PRELOAD_FD".into(), fd.to_string()));
        spec.extra_fds = vec![std::os::fd::AsRawFd::as_raw_fd(&theirs)];
        let pid = match spawn::spawn(&spec) {
            Ok(pid) => pid,
            Err(e) => {
                let e = self.programs[pi].cfg.command.mask_program(&e.to_string());
                return self.preload_failed(pi, drover_words(format!("cannot start: {e}")), now);
            }
        };
        drop(theirs);
        let pump = pipe.map(|(r, w)| {
            drop(w);
            self.pump(label, &name, None, r)
        });
        if let Err(e) = self.children.adopt(pid) {
            let f = drover_words(format!("cannot hold it by a pidfd ({e}); killed"));
            return self.preload_failed(pi, f, now);
        }
        let expect = Arc::new(tokio::sync::Semaphore::new(1)); // its "ready" (or "error")
        let reader = tokio::spawn(read_preloader(
            ch.clone(),
            expect.clone(),
            self.events.clone(),
            self.programs[pi].id,
            pid,
        ));
        let l = Preloader {
            pid,
            ch,
            reader,
            expect,
            since: now,
            ready: None,
            exited: None,
            pending: VecDeque::new(),
            pump,
            cgroup,
        };
        if self.programs[pi].preload.current.is_none() {
            info!(program = %name, pid, "program {name}: preloader started (pid {pid}); its workers are forked from it once it has loaded the app");
            self.programs[pi].preload.current = Some(l);
        } else {
            info!(program = %name, pid, "program {name}: a new preloader started (pid {pid}) for new code; the current one keeps forking until it has loaded the app, then the workers roll onto it");
            self.drop_next(pi, now);
            self.programs[pi].preload.next = Some(l);
        }
    }

    /// Which of the program's preloaders is `pid`.
    fn role(&self, pi: usize, pid: i32) -> Option<Role> {
        let p = &self.programs[pi].preload;
        if p.current.as_ref().is_some_and(|l| l.pid == pid) {
            Some(Role::Current)
        } else if p.next.as_ref().is_some_and(|l| l.pid == pid) {
            Some(Role::Next)
        } else {
            None
        }
    }

    /// Kill the `next` preloader (it serves nothing yet) and what it left.
    fn drop_next(&mut self, pi: usize, _now: Instant) {
        let Some(mut l) = self.programs[pi].preload.next.take() else {
            return;
        };
        Self::retire_pump(l.pump.take());
        self.children.signal_group(l.pid, Signal::SIGKILL);
        if let Some(cg) = l.cgroup.take() {
            cg.kill_all();
            self.cgroup_gc.push(cg);
        }
    }

    /// The `next` preloader failed to load the new code: the roll it was for is abandoned, and
    /// the old preloader and workers keep serving (no retry: the deploy failed, as a roll whose
    /// replacement never gets ready does).
    fn next_failed(&mut self, pi: usize, why: Failure, now: Instant) {
        self.drop_next(pi, now);
        let p = &mut self.programs[pi];
        let name = p.cfg.name.clone();
        let said = why
            .detail
            .as_ref()
            .map(|d| format!(" (it said: {d})"))
            .unwrap_or_default();
        let hint = if why.cause == Cause::Protocol {
            " (preload = true needs a command that speaks drover's preload protocol, docs/worker-protocol.md: drover-uvicorn does)"
        } else {
            ""
        };
        let keeps = if p.preload.current.is_some() {
            "the current preloader and the workers keep serving the old code"
        } else {
            "the workers keep serving"
        };
        error!(program = %name, "program {name}: the new preloader failed: {}{said}; {keeps}{hint}", why.summary);
        let abandoned = End::Abandoned {
            worker: None,
            why: format!("the new preloader failed: {}", why.summary),
        };
        p.preload.error = Some(why);
        if p.preload.current.is_none() && p.preload.retry_at.is_none() {
            // nothing loaded at all: something must, after the backoff
            let jitter = self.jitter();
            let p = &mut self.programs[pi];
            p.preload.failures += 1;
            p.preload.retry_at =
                Some(now + backoff_delay(&p.cfg.backoff, p.preload.failures, jitter));
        }
        self.end_deferred_roll(pi, abandoned, now);
    }

    /// Take the program's preloader away (killed with `sig`); slots waiting for one of its forks
    /// wait for the next preloader instead.
    fn drop_preloader(&mut self, pi: usize, sig: Signal, now: Instant) -> Option<Preloader> {
        let mut old = self.programs[pi].preload.current.take()?;
        Self::retire_pump(old.pump.take());
        self.children.signal_group(old.pid, sig);
        let cgroup = old.cgroup.take();
        if sig != Signal::SIGKILL {
            // one that ignores it is killed at its program's stop_timeout, not kept forever
            let at = now + self.programs[pi].cfg.stop_timeout;
            self.programs[pi]
                .preload
                .retiring
                .push((old.pid, at, cgroup));
        } else if let Some(cg) = cgroup {
            cg.kill_all();
            self.cgroup_gc.push(cg);
        }
        for f in &old.pending {
            if let Some(w) = self.programs[pi].worker_mut(f.slot) {
                w.forking = None;
                w.awaiting_preloader = true;
                w.slot.postpone(now + Duration::from_secs(1));
            }
        }
        Some(old)
    }

    pub(super) fn preload_failed(&mut self, pi: usize, mut why: Failure, now: Instant) {
        // how it exited, if it did before the failure was declared (its last words awaited)
        if why.status.is_none() {
            why.status = self.programs[pi]
                .preload
                .current
                .as_ref()
                .and_then(|l| l.exited.map(|(st, _)| st));
        }
        self.drop_preloader(pi, Signal::SIGKILL, now);
        let jitter = self.jitter();
        let p = &mut self.programs[pi];
        let name = &p.cfg.name;
        p.preload.failures += 1;
        let delay = backoff_delay(&p.cfg.backoff, p.preload.failures, jitter);
        let said = why
            .detail
            .as_ref()
            .map(|d| format!(" (it said: {d})"))
            .unwrap_or_default();
        let hint = if why.cause == Cause::Protocol {
            " (preload = true needs a command that speaks drover's preload protocol, docs/worker-protocol.md: drover-uvicorn does)"
        } else {
            ""
        };
        error!(program = %name, "program {name}: the preloader failed: {}{said}; its workers wait; trying again in {delay:.1?}{hint}", why.summary);
        let abandoned = End::Abandoned {
            worker: None,
            why: format!("the new preloader failed: {}", why.summary),
        };
        p.preload.error = Some(why);
        p.preload.retry_at = Some(now + delay);
        // a roll that waited for this preloader will not happen
        self.end_deferred_roll(pi, abandoned, now);
        // workers forked from a preloader that is gone roll onto the one that loads next
        let p = &mut self.programs[pi];
        if p.preload.next.is_none() && p.workers.iter().any(|w| w.slot.pid().is_some()) {
            p.roll_deferred = Some((StopReason::Restart, now));
        }
    }

    /// The nearest thing the preloaders need: a loading timeout, a fork deadline, a retry.
    pub(super) fn preload_due(&self) -> Option<Instant> {
        self.programs
            .iter()
            .flat_map(|p| {
                let own = match &p.preload.current {
                    Some(l) if l.ready.is_none() => {
                        let last_words = l.exited.map(|(_, at)| at + LAST_WORDS);
                        let timeout = l.since + p.cfg.readiness.timeout;
                        Some(last_words.map_or(timeout, |t| t.min(timeout)))
                    }
                    Some(l) => l.pending.front().map(|f| f.deadline),
                    None => p.preload.retry_at,
                };
                let next = p.preload.next.as_ref().map(|l| {
                    let timeout = l.since + p.cfg.readiness.timeout;
                    l.exited
                        .map_or(timeout, |(_, at)| (at + LAST_WORDS).min(timeout))
                });
                own.into_iter()
                    .chain(next)
                    .chain(p.preload.retiring.iter().map(|(_, at, _)| *at))
            })
            .min()
    }

    /// Timers: retries, loading timeouts, fork deadlines; and preloaders of programs that no
    /// longer preload.
    pub(super) fn check_preloaders(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let retiring = std::mem::take(&mut self.programs[pi].preload.retiring);
            for (pid, at, cg) in retiring {
                let overdue = now >= at;
                if overdue {
                    self.children.signal_group(pid, Signal::SIGKILL);
                }
                if overdue || !self.children.holds(pid) {
                    // gone (or made to go): so is anything it left in its cgroup
                    if let Some(cg) = cg {
                        cg.kill_all();
                        self.cgroup_gc.push(cg);
                    }
                } else {
                    self.programs[pi].preload.retiring.push((pid, at, cg));
                }
            }
            let p = &mut self.programs[pi];
            if !p.cfg.preload || p.removing {
                self.drop_preloader(pi, Signal::SIGKILL, now);
                self.drop_next(pi, now);
                continue;
            }
            let timeout = p.cfg.readiness.timeout;
            // one that has served reset_after is forgiven its earlier failures
            if p.preload.failures > 0
                && p.preload.current.as_ref().is_some_and(|l| {
                    l.ready
                        .is_some_and(|r| now.duration_since(r) >= p.cfg.backoff.reset_after)
                })
            {
                p.preload.failures = 0;
            }
            if let Some(l) = &p.preload.next {
                if let Some((status, at)) = l.exited.filter(|(_, at)| now >= *at + LAST_WORDS) {
                    let _ = at;
                    let f = protocol_words(format!(
                        "it (pid {}) exited with {status} before saying ready",
                        l.pid
                    ));
                    self.next_failed(pi, f, now);
                } else if now.duration_since(l.since) >= timeout {
                    let f = protocol_words(format!("it did not say ready on DROVER_PRELOAD_FD within {timeout:?} (readiness.timeout)"));
                    self.next_failed(pi, f, now);
                }
            }
            let p = &mut self.programs[pi];
            match &p.preload.current {
                None if p.preload.next.is_none()
                    && p.preload.retry_at.is_some_and(|t| now >= t) =>
                {
                    p.preload.retry_at = None;
                    self.start_preloader(pi, now);
                }
                Some(l) if l.exited.is_some_and(|(_, at)| now >= at + LAST_WORDS) => {
                    let (status, _) = l.exited.expect("checked");
                    let f = protocol_words(format!(
                        "it (pid {}) exited with {status} before saying ready",
                        l.pid
                    ));
                    self.preload_failed(pi, f, now);
                }
                Some(l) if l.ready.is_none() && now.duration_since(l.since) >= timeout => {
                    let f = protocol_words(format!("it did not say ready on DROVER_PRELOAD_FD within {timeout:?} (readiness.timeout)"));
                    self.preload_failed(pi, f, now);
                }
                Some(l) if l.pending.front().is_some_and(|f| now >= f.deadline) => {
                    let f = drover_words(format!(
                        "it did not answer a fork request within {FORK_TIMEOUT:?}"
                    ));
                    self.preload_failed(pi, f, now);
                }
                _ => {}
            }
        }
    }

    /// A message from program `prog`'s preloader `pid` (or from a worker it forked).
    pub(super) fn on_preloader_said(&mut self, prog: u64, pid: i32, said: Said, now: Instant) {
        let Some(pi) = self.pidx(prog) else { return };
        // while draining, workers are still started (a worker's answer must get its `go`)
        if !matches!(self.run, RunState::Running | RunState::Draining { .. }) {
            return;
        }
        match self.role(pi, pid) {
            Some(Role::Current) => {}
            Some(Role::Next) => return self.on_next_said(pi, pid, said, now),
            None => return, // a preloader replaced since
        }
        let Some(l) = self.programs[pi].preload.current.as_ref() else {
            return;
        };
        let loading = l.ready.is_none();
        match said {
            Said::Ready if loading => match l.exited {
                // read after its exit: it cannot fork anything
                Some((status, _)) => {
                    let f = drover_words(format!(
                        "it (pid {pid}) said ready and exited with {status}"
                    ));
                    self.preload_failed(pi, f, now)
                }
                None => self.preloader_ready(pi, now),
            },
            Said::Error(text) if loading => {
                self.preload_failed(pi, app_words("it could not load the app", text), now)
            }
            Said::Closed if loading => {
                let f = protocol_words(match l.exited {
                    Some((status, _)) => {
                        format!("it (pid {pid}) exited with {status} before saying ready")
                    }
                    None => "it closed DROVER_PRELOAD_FD without saying ready".into(),
                });
                self.preload_failed(pi, f, now)
            }
            Said::Pid {
                pid: claimed,
                sender,
            } if !l.pending.is_empty() => self.on_fork_claim(pi, claimed, sender, now),
            Said::Error(text) if !l.pending.is_empty() => self.on_fork_error(pi, text, now),
            Said::Closed => {
                // it said ready, so it speaks the protocol: it died, or dropped its socket
                let f = drover_words(
                    "it closed DROVER_PRELOAD_FD after loading (it exited, or closed the socket)"
                        .into(),
                );
                self.preload_failed(pi, f, now)
            }
            other => {
                let f = protocol_words(format!(
                    "it broke the preload protocol ({} while {})",
                    describe(&other),
                    if loading {
                        "loading"
                    } else {
                        "no fork was asked for"
                    }
                ));
                self.preload_failed(pi, f, now)
            }
        }
    }

    /// A message from the `next` preloader, loading new code: only its loading can be spoken of.
    fn on_next_said(&mut self, pi: usize, pid: i32, said: Said, now: Instant) {
        let Some(l) = self.programs[pi].preload.next.as_ref() else {
            return;
        };
        match said {
            Said::Ready => match l.exited {
                Some((status, _)) => {
                    let f = drover_words(format!(
                        "it (pid {pid}) said ready and exited with {status}"
                    ));
                    self.next_failed(pi, f, now)
                }
                None => self.promote_next(pi, now),
            },
            Said::Error(text) => {
                self.next_failed(pi, app_words("it could not load the app", text), now)
            }
            Said::Closed => {
                let f = protocol_words(match l.exited {
                    Some((status, _)) => {
                        format!("it (pid {pid}) exited with {status} before saying ready")
                    }
                    None => "it closed DROVER_PRELOAD_FD without saying ready".into(),
                });
                self.next_failed(pi, f, now)
            }
            other => {
                let f = protocol_words(format!(
                    "it broke the preload protocol ({} while loading)",
                    describe(&other)
                ));
                self.next_failed(pi, f, now)
            }
        }
    }

    /// The `next` preloader has loaded the new code: it becomes current, the old one is asked to
    /// stop, and the roll that waited for it begins.
    fn promote_next(&mut self, pi: usize, now: Instant) {
        let Some(mut l) = self.programs[pi].preload.next.take() else {
            return;
        };
        l.ready = Some(now);
        let name = self.programs[pi].cfg.name.clone();
        let took = now.duration_since(l.since).as_secs_f64();
        info!(program = %name, pid = l.pid, "program {name}: the new preloader (pid {}) loaded the app in {took:.2}s; the old one stops and the workers roll onto it", l.pid);
        // forks asked of the old one are asked again of the new one
        self.drop_preloader(pi, Signal::SIGTERM, now);
        let p = &mut self.programs[pi];
        p.preload.current = Some(l);
        p.preload.error = None;
        self.spawn_waiting(pi, now);
        if let Some((reason, _)) = self.programs[pi].roll_deferred {
            self.begin_roll(pi, reason, now);
        }
    }

    /// Slots that waited for a ready preloader are forked now.
    fn spawn_waiting(&mut self, pi: usize, now: Instant) {
        let waiting: Vec<u64> = self.programs[pi]
            .workers
            .iter()
            .filter(|w| w.awaiting_preloader)
            .map(|w| w.id())
            .collect();
        for id in waiting {
            self.spawn_worker(pi, id, now);
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
        p.preload.error = None;
        let roll = p.roll_deferred.map(|(reason, _)| reason);
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
                // this preloader has the new code: the roll needs no other
                self.begin_roll(pi, reason, now);
            } else {
                // a roll was asked for, but no worker ran from the old code: nothing to replace
                self.end_deferred_roll(pi, End::Done, now);
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
        match &p.preload.current {
            // none loaded (it failed, and waits for its retry): retry now, with the new code
            None => {
                if p.preload.next.is_none() {
                    p.preload.retry_at = Some(now);
                }
            }
            // one still loading may have read the old code: start again
            Some(l) if l.ready.is_none() => {
                self.drop_preloader(pi, Signal::SIGKILL, now);
                self.start_preloader(pi, now);
            }
            // a `next` loads the new code while this one keeps forking
            Some(_) => self.start_preloader(pi, now),
        }
        true
    }

    /// Ask the preloader for worker `index` of slot `id`, its output on `out`. Never waits: the
    /// answer arrives as an event. False when no preloader is ready (the slot waits for one).
    pub(super) fn request_fork(
        &mut self,
        pi: usize,
        id: u64,
        index: u32,
        out: Option<i32>,
        now: Instant,
    ) -> Result<bool, String> {
        let ready = self.programs[pi]
            .preload
            .current
            .as_ref()
            .is_some_and(|l| l.ready.is_some());
        if !ready {
            return Ok(false);
        }
        self.worker_cgroup(pi, id, index)
            .map_err(|e| format!("cannot set up its cgroup: {e}"))?;
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let asked_at = claim::boot_ticks();
        if let Err(e) = l.ch.fork(index, out) {
            let f = drover_words(format!("it could not be asked for a worker: {e}"));
            self.preload_failed(pi, f, now);
            return Ok(false);
        }
        l.expect.add_permits(1);
        let deadline = now + FORK_TIMEOUT;
        l.pending.push_back(Pending {
            slot: id,
            index,
            asked_at,
            deadline,
        });
        if let Some(w) = self.programs[pi].worker_mut(id) {
            w.forking = Some(deadline);
            // the slot's own timer stays quiet until the answer or the fork deadline
            w.slot.postpone(deadline + Duration::from_secs(1));
        }
        Ok(true)
    }

    /// `pid N` arrived for the oldest request: place the worker if the kernel agrees it is one.
    fn on_fork_claim(&mut self, pi: usize, claimed: i32, sender: Option<i32>, now: Instant) {
        let uid = self.programs[pi]
            .cfg
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::getuid().as_raw(), |i| i.uid);
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let f = l.pending.pop_front().expect("checked");
        let expected = Expected {
            drover: std::process::id() as i32,
            guard: self.children.guard_pid(),
            preloader: l.pid,
            uid,
            asked_at: f.asked_at,
        };
        let ch = l.ch.clone();
        let name = self.programs[pi].cfg.name.clone();
        let children = &self.children;
        let held = |p: i32| children.holds(p);
        let verified = claim::verify(claimed, sender.unwrap_or(0), held, &expected);
        let fd = match verified {
            Ok(fd) => fd,
            // the worker died before drover read its claim (OOM-killed while it waited for
            // `go`, say): a failed fork of that slot, not a lie
            Err(claim::Refused::Exited(_) | claim::Refused::NoProcess(_)) => {
                ch.abort(claimed);
                let why = format!("worker pid {claimed} was gone before it could be placed");
                return self.fork_failed_for(pi, f.slot, f.index, why, now);
            }
            Err(refused) => {
                error!(program = %name, "program {name}: the preloader's answer for worker {name}.{} is refused: {refused}; drover does not act on that pid. The preloader is killed and retried", f.index);
                ch.abort(claimed);
                let hint = if matches!(refused, claim::Refused::NotSelf { .. }) {
                    " (the worker must send `pid PID` itself: docs/worker-protocol.md; drover-uvicorn does)"
                } else {
                    ""
                };
                let failure = drover_words(format!(
                    "it claimed a worker drover refused: {refused}{hint}"
                ));
                self.reset_forking(pi, f.slot, now);
                return self.preload_failed(pi, failure, now);
            }
        };
        self.children.hold(fd);
        let placed = match self.programs[pi].worker(f.slot) {
            None => Err("its slot is gone (scaled down or replaced)".to_string()),
            Some(w) => match &w.cgroup {
                Some((cg, _)) => cg
                    .join(claimed)
                    .map_err(|e| format!("cannot move pid {claimed} into its cgroup: {e}")),
                None => Ok(()),
            },
        };
        if let Err(why) = placed {
            info!(program = %name, "worker {name}.{} (pid {claimed}) not started: {why}; it exits without serving", f.index);
            ch.abort(claimed);
            self.reset_forking(pi, f.slot, now);
            return;
        }
        if let Err(e) = ch.go(claimed) {
            warn!(program = %name, "worker {name}.{} (pid {claimed}): cannot tell the preloader to let it serve ({e}); it will exit, and be restarted", f.index);
        }
        self.started(pi, f.slot, claimed, now);
    }

    /// The preloader could not fork the oldest request: that slot backs off, counted.
    fn on_fork_error(&mut self, pi: usize, text: String, now: Instant) {
        let l = self.programs[pi].preload.current.as_mut().expect("checked");
        let f = l.pending.pop_front().expect("checked");
        let why = format!("the preloader could not fork it: {text}");
        self.fork_failed_for(pi, f.slot, f.index, why, now);
    }

    /// A fork for slot `slot` came to nothing: it backs off, counted, as a failed spawn does.
    fn fork_failed_for(&mut self, pi: usize, slot: u64, index: u32, why: String, now: Instant) {
        let jitter = self.jitter();
        let (name, sc) = (
            self.programs[pi].cfg.name.clone(),
            self.programs[pi].slot_cfg,
        );
        self.metrics.restart(&name, "spawn");
        if let Some(w) = self.programs[pi].worker_mut(slot) {
            w.forking = None;
            w.awaiting_preloader = false;
            w.slot.spawn_failed(why.clone(), now, &sc.backoff, jitter);
            let delay = w.slot.last_delay();
            error!(program = %name, worker = index, "worker {name}.{index}: {why} (retrying in {delay:.1?})");
        }
    }

    /// A slot whose fork came to nothing waits for the preloader again, uncounted.
    fn reset_forking(&mut self, pi: usize, slot: u64, now: Instant) {
        if let Some(w) = self.programs[pi].worker_mut(slot) {
            w.forking = None;
            w.awaiting_preloader = true;
            w.slot.postpone(now + Duration::from_secs(1));
        }
    }

    /// The program whose current or next preloader is `pid`.
    pub(super) fn preloader_of(&self, pid: i32) -> Option<usize> {
        (0..self.programs.len()).find(|&pi| self.role(pi, pid).is_some())
    }

    /// Program `pi`'s preloader `pid` exited: a new one takes its place, after the backoff
    /// unless it had run long enough to be forgiven.
    pub(super) fn on_preloader_exit(
        &mut self,
        pi: usize,
        pid: i32,
        status: ExitStatus,
        now: Instant,
    ) {
        if self.run != RunState::Running {
            self.programs[pi].preload.current = None;
            self.programs[pi].preload.next = None;
            return;
        }
        if self.role(pi, pid) == Some(Role::Next) {
            // its last words (an `error` before it exited) are still read; `check_preloaders`
            // gives up after LAST_WORDS
            if let Some(l) = self.programs[pi].preload.next.as_mut() {
                l.exited = Some((status, now));
            }
            return;
        }
        let name = self.programs[pi].cfg.name.clone();
        let Some(l) = self.programs[pi].preload.current.as_mut() else {
            return;
        };
        let Some(ready) = l.ready else {
            // an `error` it sent before exiting may still be unread: its reader delivers that,
            // or the end of its socket, and `check_preloaders` gives up after LAST_WORDS
            l.exited = Some((status, now));
            return;
        };
        let reset_after = self.programs[pi].cfg.backoff.reset_after;
        if now.duration_since(ready) >= reset_after {
            self.programs[pi].preload.failures = 0;
            warn!(program = %name, "program {name}: its preloader (pid {pid}) exited with {status}; starting a new one, the workers keep serving and roll onto it");
            self.drop_preloader(pi, Signal::SIGKILL, now);
            self.restart_after_loss(pi, now);
        } else {
            let f = drover_words(format!(
                "it (pid {pid}) exited with {status} {:.1?} after loading (less than backoff.reset_after {reset_after:?}); the workers keep serving",
                now.duration_since(ready)
            ));
            self.preload_failed(pi, f, now);
        }
    }

    /// The current preloader is lost (it died): start another, and roll the workers onto it
    /// once it has loaded — they run code from a preloader that is gone. A `next` already
    /// loading new code takes its place instead.
    fn restart_after_loss(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        if p.preload.next.is_none() {
            if p.roll_deferred.is_none() {
                p.roll_deferred = Some((StopReason::Restart, now));
            }
            self.start_preloader(pi, now);
        }
    }

    /// At shutdown: preloaders serve nothing, so they go at once (old ones asked to stop too).
    pub(super) fn kill_preloaders(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            self.drop_preloader(pi, Signal::SIGKILL, now);
            self.drop_next(pi, now);
            for (pid, _, cg) in std::mem::take(&mut self.programs[pi].preload.retiring) {
                self.children.signal_group(pid, Signal::SIGKILL);
                if let Some(cg) = cg {
                    cg.kill_all();
                    self.cgroup_gc.push(cg);
                }
            }
        }
    }
}

/// Which of a program's preloaders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Current,
    Next,
}

/// Read a preloader's socket, one expected message at a time, into the loop's events.
async fn read_preloader(
    ch: Channel,
    expect: Arc<tokio::sync::Semaphore>,
    events: super::Events,
    prog: u64,
    pid: i32,
) {
    loop {
        let Ok(permit) = expect.acquire().await else {
            return;
        };
        permit.forget();
        let said = ch.recv().await;
        let closed = said == Said::Closed;
        if events.send(Event::Preloader { prog, pid, said }).is_err() || closed {
            return;
        }
    }
}

fn drover_words(summary: String) -> Failure {
    Failure {
        summary,
        detail: None,
        cause: Cause::Drover,
        status: None,
    }
}

/// The command did not speak the protocol: the log says what does.
fn protocol_words(summary: String) -> Failure {
    Failure {
        cause: Cause::Protocol,
        ..drover_words(summary)
    }
}

fn app_words(summary: &str, detail: String) -> Failure {
    Failure {
        summary: format!(
            "{summary} (its message is in drover's log and in /status for authenticated clients)"
        ),
        detail: Some(detail),
        cause: Cause::App,
        status: None,
    }
}

fn describe(s: &Said) -> String {
    match s {
        Said::Ready => "`ready`".into(),
        Said::Error(_) => "`error`".into(),
        Said::Pid { pid, .. } => format!("`pid {pid}`"),
        Said::Unknown(t) => format!("{t:?}"),
        Said::Closed => "its socket closed".into(),
    }
}

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
//!
//! Here: the types, starting a preloader, and whether a roll needs a new one. The fork exchange
//! is in `preload/fork.rs`, what a preloader says in `preload/said.rs`, its failures, exit and
//! removal in `preload/exit.rs`, its deadlines in `preload/timers.rs`.

mod exit;
mod fork;
mod said;
mod timers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::info;

use super::{Event, Supervisor};
use crate::process::preload::{self, Channel, Said};
use crate::process::reaper::ExitStatus;
use crate::process::spawn;
use crate::resources::cgroup::SlotCgroup;
use crate::state::StopReason;

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

    /// The program whose current or next preloader is `pid`.
    pub(super) fn preloader_of(&self, pid: i32) -> Option<usize> {
        (0..self.programs.len()).find(|&pi| self.role(pi, pid).is_some())
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

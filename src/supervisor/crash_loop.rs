//! Crash loops: a program is crash-looping when every worker has failed `exhausted_after` times
//! in a row, each before its `reset_after` (or its preloader has, with no worker running: nothing
//! can start until it loads). `CrashLoop` reports when one begins and ends (pure); the loop's
//! `check_exhausted` logs it once and lets `on_exhausted` decide. A program none of whose workers
//! has ever been ready is a deployment error, not a transient crash: drover exits with the app's
//! own exit code (uvicorn's 3 for an app it cannot import) unless `on_exhausted = "stay"` is set
//! explicitly.

use std::time::Instant;

use tracing::{error, info};

use super::{RunState, Supervisor, EXIT_RUNTIME};
use crate::config::OnExhausted;
use crate::process::reaper::ExitStatus;
use crate::state::Slot;

/// A program's crash loop, as reported: it begins when every worker is crash-looping and ends
/// when one has run long enough to forgive its failures.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CrashLoop {
    pub reported: bool,
}

/// A change worth a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CrashChange {
    Began,
    Recovered,
}

impl CrashLoop {
    /// Look at the program's slots after an event. `preloader_looping`: its preloader has failed
    /// `threshold` times in a row and no worker runs (nothing can start until it loads).
    pub fn update<'a>(
        &mut self,
        slots: impl Iterator<Item = &'a Slot> + Clone,
        threshold: u32,
        preloader_looping: bool,
    ) -> Option<CrashChange> {
        let mut all = slots.clone().peekable();
        let looping =
            preloader_looping || (all.peek().is_some() && all.all(|s| s.crash_looping(threshold)));
        if looping && !self.reported {
            self.reported = true;
            return Some(CrashChange::Began);
        }
        if !looping && self.reported && slots.into_iter().any(|s| s.failures() == 0) {
            self.reported = false;
            return Some(CrashChange::Recovered);
        }
        None
    }
}

impl Supervisor {
    /// Crash loops: every worker of a program failing `exhausted_after` times in a row (or its
    /// preloader, with no worker running). `on_exhausted` decides — and a program none of whose
    /// workers has ever been ready is a deployment error, not a transient crash: drover exits
    /// with its workers' code unless `on_exhausted = "stay"` is set explicitly.
    pub(super) fn check_exhausted(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        let threshold = self.cfg.supervisor.exhausted_after;
        let (explicit, on_exhausted) = (self.cfg.supervisor.on_exhausted, self.on_exhausted());
        let mut exit = None;
        // the programs that wait for each one that has not started its dependents (few: only
        // programs that have not started themselves are looked at)
        let waiting: Vec<(String, Vec<String>)> = if self.programs.iter().all(|p| p.started()) {
            vec![]
        } else {
            self.programs
                .iter()
                .map(|p| (p.cfg.name.clone(), self.waiting_on(&p.cfg.name)))
                .filter(|(_, w)| !w.is_empty())
                .collect()
        };
        for p in &mut self.programs {
            let preloader_looping = p.cfg.preload
                && p.preload.failures >= threshold
                && p.preload.current.as_ref().is_none_or(|l| l.ready.is_none())
                && p.workers.iter().all(|w| w.slot.pid().is_none());
            let slots = p.workers.iter().map(|w| &w.slot);
            let change = p.crash.update(slots, threshold, preloader_looping);
            let name = &p.cfg.name;
            match change {
                Some(CrashChange::Began) => {
                    let (what, last, code) = if preloader_looping {
                        let e = p.preload.error.as_ref();
                        (
                            "its preloader is failing".to_string(),
                            e.map(|e| e.summary.clone()).unwrap_or_default(),
                            e.and_then(|e| e.status).map(never_ready_code),
                        )
                    } else {
                        let last = p.workers.first().and_then(|w| w.slot.last_exit());
                        (
                            format!("all {} workers are crash-looping", p.workers.len()),
                            last.map(|e| e.to_string()).unwrap_or_default(),
                            last.and_then(last_code).map(never_ready_code),
                        )
                    };
                    let head = format!("program {name}: {what} ({threshold}+ consecutive quick failures; last: {last})");
                    let backoff = p.cfg.backoff.max;
                    let dependents = waiting
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, w)| w.join(", "));
                    let (never, wait) = match &dependents {
                        Some(w) => (
                            format!("; {w} will not start (depends_on {name})"),
                            format!(
                                "; {w} keep{} waiting for it (depends_on)",
                                if w.contains(',') { "" } else { "s" }
                            ),
                        ),
                        None => (String::new(), String::new()),
                    };
                    if !p.ever_ready && !p.added_by_reload && explicit != Some(OnExhausted::Stay) {
                        let code = code.unwrap_or(EXIT_RUNTIME);
                        error!(program = %name, "{head}, and none of its workers has ever been ready: the app cannot start, a deployment error; shutting down with exit code {code} (its own; on_exhausted = \"stay\" keeps drover up and retrying){never}");
                        exit = exit.or(Some(code));
                    } else if on_exhausted == OnExhausted::Exit {
                        // an essential program's end is drover's: its own code
                        let code = match (p.cfg.essential, code) {
                            (true, Some(c)) => c,
                            _ => EXIT_RUNTIME,
                        };
                        let essential = if p.cfg.essential {
                            " (its own: it is essential)"
                        } else {
                            ""
                        };
                        error!(program = %name, "{head}; on_exhausted = \"exit\": shutting down with exit code {code}{essential}{never}");
                        exit = exit.or(Some(code));
                    } else {
                        error!(program = %name, "{head}; on_exhausted = \"stay\": still retrying with backoff up to {backoff:?}{wait}");
                    }
                }
                Some(CrashChange::Recovered) => {
                    info!(program = %name, "program {name} recovered from its crash loop")
                }
                None => {}
            }
        }
        if let Some(code) = exit {
            self.exit_code = code;
            let why = format!("a crash loop (on_exhausted = \"exit\"): exit code {code}");
            self.begin_shutdown(false, now, why);
        }
    }
}

/// The code a process that never ran as a worker exited with, as a shell reports it.
fn last_code(last: &crate::state::LastExit) -> Option<ExitStatus> {
    use crate::state::LastExit::*;
    match last {
        Exited(st) | Stopped(st, _) | Killed(st, _) => Some(*st),
        SpawnFailed(_) | Unreaped(_) => None,
    }
}

/// drover's exit code for an app that never started: its own (uvicorn's 3 for an app it cannot
/// import), 128 + N for a signal; 1 where it said 0.
fn never_ready_code(st: ExitStatus) -> i32 {
    match st.shell_code() {
        0 => EXIT_RUNTIME,
        c => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{BackoffCfg, RestartPolicy};
    use crate::state::SlotCfg;
    use nix::sys::signal::Signal;
    use std::time::Duration;

    fn cfg() -> SlotCfg {
        SlotCfg {
            policy: RestartPolicy::Always,
            backoff: BackoffCfg::default(),
            stop_signal: Signal::SIGTERM,
            stop_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
        }
    }

    /// Fail a slot `n` times quickly, starting at `t`.
    fn failing(id: u64, n: u32, t: Instant) -> Slot {
        let mut s = Slot::new(id, id as u32);
        for i in 0..n {
            s.spawned(100 + i as i32, t, &cfg());
            s.exited(ExitStatus::Code(1), false, t, &cfg(), 0.5);
        }
        s
    }

    #[test]
    fn a_crash_loop_is_every_worker_failing_and_ends_when_one_recovers() {
        let t = Instant::now();
        let mut c = CrashLoop::default();
        let (a, b) = (failing(1, 5, t), failing(2, 4, t));
        assert_eq!(
            c.update([&a, &b].into_iter(), 5, false),
            None,
            "one worker is not looping yet"
        );
        let b = failing(2, 5, t);
        assert_eq!(
            c.update([&a, &b].into_iter(), 5, false),
            Some(CrashChange::Began)
        );
        assert_eq!(
            c.update([&a, &b].into_iter(), 5, false),
            None,
            "reported once"
        );
        // one worker comes up and stays up past reset_after: its failures are forgiven
        let mut up = failing(2, 5, t);
        up.spawned(7, t, &cfg());
        up.exited(
            ExitStatus::Code(1),
            false,
            t + Duration::from_secs(60),
            &cfg(),
            0.5,
        );
        assert_eq!(up.failures(), 0);
        assert_eq!(
            c.update([&a, &up].into_iter(), 5, false),
            Some(CrashChange::Recovered)
        );
        assert_eq!(
            c.update(std::iter::empty(), 5, false),
            None,
            "no workers, no loop"
        );
        // a failing preloader with workers that wait (never failing themselves) is a loop too
        let waiting = Slot::new(3, 0);
        let mut c = CrashLoop::default();
        assert_eq!(
            c.update([&waiting].into_iter(), 5, true),
            Some(CrashChange::Began)
        );
        assert_eq!(
            c.update([&waiting].into_iter(), 5, false),
            Some(CrashChange::Recovered),
            "the preloader loaded"
        );
    }
}

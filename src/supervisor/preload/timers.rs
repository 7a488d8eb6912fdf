//! The preloaders' timers: the nearest deadline the loop sleeps to (`preload_due`), and what
//! is due then (`check_preloaders`): a retry after a failure, a loading timeout, an exited
//! preloader's last words given up on, a fork deadline, a retired preloader's SIGKILL; and the
//! preloaders of programs that no longer preload.

use std::time::Instant;

use nix::sys::signal::Signal;

use super::{drover_words, protocol_words, FORK_TIMEOUT, LAST_WORDS};
use crate::supervisor::{RunState, Supervisor};

impl Supervisor {
    /// The nearest thing the preloaders need: a loading timeout, a fork deadline, a retry.
    pub(in crate::supervisor) fn preload_due(&self) -> Option<Instant> {
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
    pub(in crate::supervisor) fn check_preloaders(&mut self, now: Instant) {
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
}

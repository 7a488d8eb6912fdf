//! Essential programs (`essential = true`), as ECS ends a task when an essential container
//! stops: when one ends for good — every worker ended and its restart policy starts none again,
//! or it will never start because a dependency failed — drover stops everything gracefully
//! (dependents first, `shutdown.rs`) and exits with that program's code (128 + N for signal N).
//! Its crash loop under `on_exhausted = "exit"` is `crash_loop.rs`'s, with the same code.

use std::time::Instant;

use tracing::error;

use super::depends::{shell_code, Stage};
use super::program::Program;
use super::{RunState, Supervisor};
use crate::state::Phase;

/// An essential program's end, if it has ended for good: how, in words, and its exit code.
fn ended(p: &Program) -> Option<(String, i32)> {
    match &p.stage {
        Stage::WillNotStart { why, code } => {
            Some((format!("will never start (its dependency {why})"), *code))
        }
        Stage::Started
            if p.desired > 0
                && !p.workers.is_empty()
                && p.workers
                    .iter()
                    .all(|w| matches!(w.slot.phase(), Phase::Done { .. })) =>
        {
            let ends: Vec<_> = p
                .workers
                .iter()
                .filter_map(|w| w.slot.last_exit())
                .collect();
            // a failure's code wins over another worker's 0
            let last = ends
                .iter()
                .find(|e| shell_code(e) != 0)
                .or(ends.last())
                .copied();
            let code = last.map_or(0, shell_code);
            let how = last.map_or("no exit status".into(), |e| e.to_string());
            Some((
                format!(
                    "has ended ({how}; restart = \"{}\" starts no more)",
                    p.cfg.restart.word()
                ),
                code,
            ))
        }
        _ => None,
    }
}

impl Supervisor {
    /// An essential program that has ended for good ends drover, with its code.
    pub(super) fn check_essential(&mut self, now: Instant) {
        if self.run != RunState::Running {
            return;
        }
        let Some((name, how, code)) = self
            .programs
            .iter()
            .filter(|p| p.cfg.essential && !p.removing)
            .find_map(|p| ended(p).map(|(how, code)| (p.cfg.name.clone(), how, code)))
        else {
            return;
        };
        error!(program = %name, "program {name} is essential and {how}: stopping every program, dependents first, and exiting with its code {code}");
        self.exit_code = code;
        let why = format!("program {name} is essential and {how}: exit code {code}");
        self.begin_shutdown(false, now, why);
    }
}

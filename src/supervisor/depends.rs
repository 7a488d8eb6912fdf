//! The dependency gate (`depends_on`): a program's workers start only once the condition it
//! names holds for each program it depends on — `started` (a process of it has run), `ready`
//! (`min_ready` ready workers, at least one), `healthy` (ready, one health check passed and none
//! failing) or `succeeded` (a one-shot program whose workers all exited 0).
//!
//! `gate` is pure and table-tested: from a `View` of each dependency (what the loop knows: ready
//! counts, health, how its workers ended) it says go, wait (and for what, in words for /status),
//! or never (a dependency failed for good). `start_gated` runs in `advance` after readiness and
//! health have been looked at, in dependency order, so a chain of programs whose conditions
//! hold starts in one pass; it needs no timer of its own, since conditions change only on events
//! the loop already wakes for. Once started, a program is never stopped because a dependency
//! stopped being ready (Compose's and systemd's `After=`): the gate is for starting only.

use std::time::Instant;

use tracing::{error, info};

use super::program::Program;
use super::{plural, RunState, Supervisor};
use crate::config::{Condition, OnAllExited, ProgramCfg, RestartPolicy};
use crate::state::{LastExit, Phase};

/// Where a program is with respect to its dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Stage {
    /// its workers have not started: since when it waits (once looked at), and for what
    Waiting {
        since: Option<Instant>,
        on: Vec<String>,
    },
    Started,
    /// a dependency failed for good: why, and the exit code of the failure behind it
    WillNotStart {
        why: String,
        code: i32,
    },
}

impl Stage {
    pub fn fresh() -> Stage {
        Stage::Waiting {
            since: None,
            on: vec![],
        }
    }
}

/// What the gate sees of one dependency.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct View {
    /// its own workers have started (its own dependencies held)
    pub started: bool,
    /// it will never start: the exit code of the failure behind that
    pub blocked: Option<i32>,
    /// a process of it has run
    pub ran: bool,
    pub ready: u32,
    /// the ready workers it needs: its min_ready, at least one
    pub need: u32,
    /// ready, and its health checks pass: one has passed and none is failing (without health
    /// checks: ready)
    pub healthy: bool,
    /// every worker has ended and none will run again: how the last one ended
    pub ended: Option<String>,
    /// a worker ended for good with a failure: how, and its exit code as a shell gives it
    pub failed: Option<(String, i32)>,
    pub crash_looping: bool,
    /// it has met `ready` (or `healthy`) since it started, whatever it is now: a condition
    /// once met stays met for the gate (`After=`), so a dependency that was ready and then
    /// ended (a seeding job) does not block its dependents
    pub was_ready: bool,
    pub was_healthy: bool,
}

/// One dependency's condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Holds {
    Yes,
    /// not yet: what it waits for, `db: ready 0/1`
    No(String),
    /// never will: why, and the exit code of the failure
    Never {
        why: String,
        code: i32,
    },
}

/// A program's dependencies together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Gate {
    Open,
    Wait(Vec<String>),
    Never { why: String, code: i32 },
}

/// Whether `cond` holds for the program `name`, seen as `v`.
pub(super) fn holds(name: &str, cond: Condition, v: &View) -> Holds {
    if let Some(code) = v.blocked {
        return Holds::Never {
            why: format!("{name} will not start"),
            code,
        };
    }
    let ended = |v: &View| -> Option<Holds> {
        let how = v.ended.as_ref()?;
        let code = v.failed.as_ref().map_or(super::EXIT_RUNTIME, |(_, c)| *c);
        Some(Holds::Never {
            why: format!("{name} ended ({how}) before it was {}", cond.word()),
            code,
        })
    };
    let progress = match cond {
        Condition::Started if v.ran => return Holds::Yes,
        Condition::Started => "started".to_string(),
        Condition::Ready if v.started && (v.ready >= v.need || v.was_ready) => return Holds::Yes,
        Condition::Ready => match ended(v) {
            Some(never) => return never,
            None => format!("ready {}/{}", v.ready, v.need),
        },
        Condition::Healthy if v.started && (v.healthy || v.was_healthy) => return Holds::Yes,
        Condition::Healthy => match ended(v) {
            Some(never) => return never,
            None if v.ready >= v.need => "healthy (ready, no health check passed yet)".into(),
            None => format!("healthy (ready {}/{})", v.ready, v.need),
        },
        Condition::Succeeded => {
            if let Some((how, code)) = &v.failed {
                return Holds::Never {
                    why: format!("{name} failed ({how}) and will not run again"),
                    code: *code,
                };
            }
            if v.ended.is_some() {
                return Holds::Yes;
            }
            "succeeded".to_string()
        }
    };
    let mut text = format!("{name}: {progress}");
    if !v.started {
        text.push_str(" (not started: it waits for its own dependencies)");
    } else if v.crash_looping {
        text.push_str(" (crash-looping)");
    }
    Holds::No(text)
}

/// May a program with these dependencies start now? `view` finds a program by name.
pub(super) fn gate(deps: &[(String, Condition)], view: impl Fn(&str) -> Option<View>) -> Gate {
    let mut wait = vec![];
    for (name, cond) in deps {
        let Some(v) = view(name) else {
            // a reload removed it (a file that names it does not load): nothing to wait for
            continue;
        };
        match holds(name, *cond, &v) {
            Holds::Yes => {}
            Holds::No(w) => wait.push(w),
            Holds::Never { why, code } => {
                return Gate::Never {
                    why: format!("{why} (depends_on {name} = \"{}\")", cond.word()),
                    code,
                }
            }
        }
    }
    if wait.is_empty() {
        Gate::Open
    } else {
        Gate::Wait(wait)
    }
}

/// What the gate sees of a program.
pub(super) fn view(p: &Program) -> View {
    let started = p.stage == Stage::Started;
    let ready = p.ready_count() as u32;
    let need = p.cfg.min_ready.max(1);
    let checks = p
        .cfg
        .health
        .as_ref()
        .is_some_and(|h| h.http.is_some() || h.exec.is_some());
    let ready_ones = || p.workers.iter().filter(|w| w.slot.is_ready());
    let healthy = ready >= need
        && p.health.note.is_none()
        && ready_ones().all(|w| w.health.failures == 0)
        && (!checks || ready_ones().any(|w| w.health.passed));
    let done = |w: &super::program::Worker| matches!(w.slot.phase(), Phase::Done { .. });
    let all_done = started && p.desired > 0 && !p.workers.is_empty() && p.workers.iter().all(done);
    let how = |w: &super::program::Worker| w.slot.last_exit().map(|e| e.to_string());
    let failed = p
        .workers
        .iter()
        .filter(|w| matches!(w.slot.phase(), Phase::Done { failed: true }))
        .find_map(|w| Some((how(w)?, shell_code(w.slot.last_exit()?))));
    View {
        started,
        blocked: match &p.stage {
            Stage::WillNotStart { code, .. } => Some(*code),
            _ => None,
        },
        ran: p.ran,
        ready,
        need,
        healthy,
        ended: all_done.then(|| {
            p.workers
                .iter()
                .rev()
                .find_map(how)
                .unwrap_or_else(|| "no exit".into())
        }),
        failed,
        crash_looping: p.crash.reported,
        was_ready: p.met.0,
        was_healthy: p.met.1,
    }
}

/// A process's end as a shell reports it (128 + N for signal N); 1 where there is no status.
pub(super) fn shell_code(e: &LastExit) -> i32 {
    match e {
        LastExit::Exited(st) | LastExit::Stopped(st, _) | LastExit::Killed(st, _) => {
            st.shell_code()
        }
        LastExit::SpawnFailed(_) | LastExit::Unreaped(_) => super::EXIT_RUNTIME,
    }
}

/// A job runs to an end rather than serving: `restart = "never"`, or a program another one
/// needs to have `succeeded`. A reload rolls it only when its settings changed, and a roll
/// stops its running process before running it again, never doubling it (a migration).
pub(super) fn job(cfg: &ProgramCfg, all: &[ProgramCfg]) -> bool {
    cfg.restart == RestartPolicy::Never
        || all.iter().any(|q| {
            q.depends_on
                .iter()
                .any(|(d, c)| *d == cfg.name && *c == Condition::Succeeded)
        })
}

impl Supervisor {
    /// Program `pi` is a job (`job`), by the configuration it runs now.
    pub(super) fn is_job(&self, pi: usize) -> bool {
        job(&self.programs[pi].cfg, &self.cfg.programs)
    }

    /// The gate's view of the program named `name` (one not being removed).
    fn view_of(&self, name: &str) -> Option<View> {
        self.programs
            .iter()
            .find(|p| p.cfg.name == name && !p.removing)
            .map(view)
    }

    /// Start every program whose dependencies hold, dependencies first; note what the others
    /// wait for, and log once each that will never start.
    pub(super) fn start_gated(&mut self, now: Instant) {
        if self.run != RunState::Running
            || self
                .programs
                .iter()
                .all(|p| p.removing || p.stage == Stage::Started)
        {
            return;
        }
        // what each program has met so far, kept for later (`View::was_ready`)
        for p in &mut self.programs {
            let v = view(p);
            p.met.0 |= v.started && v.ready >= v.need;
            p.met.1 |= v.started && v.healthy;
        }
        let live: Vec<usize> = (0..self.programs.len())
            .filter(|&i| !self.programs[i].removing)
            .collect();
        let cfgs: Vec<&crate::config::ProgramCfg> =
            live.iter().map(|&i| &self.programs[i].cfg).collect();
        let order: Vec<usize> = crate::config::start_order(&cfgs)
            .into_iter()
            .map(|(i, _)| live[i])
            .collect();
        for pi in order {
            if self.programs[pi].stage == Stage::Started {
                continue;
            }
            let verdict = gate(&self.programs[pi].cfg.depends_on, |n| self.view_of(n));
            match verdict {
                Gate::Open => self.start_program(pi, now),
                Gate::Wait(on) => self.waits(pi, on, now),
                Gate::Never { why, code } => self.will_not_start(pi, why, code),
            }
        }
    }

    fn waits(&mut self, pi: usize, on: Vec<String>, now: Instant) {
        let p = &mut self.programs[pi];
        let since = match &p.stage {
            Stage::Waiting { since: Some(t), .. } => *t,
            _ => {
                let name = &p.cfg.name;
                info!(program = %name, "program {name} waits for {} before it starts (depends_on)", on.join(", "));
                let (program, on) = (name.clone(), on.clone());
                self.cx
                    .feed
                    .emit(crate::api::events::Event::DependencyWaiting { program, on });
                now
            }
        };
        p.stage = Stage::Waiting {
            since: Some(since),
            on,
        };
    }

    fn will_not_start(&mut self, pi: usize, why: String, code: i32) {
        let on_all_exited = self.cfg.supervisor.on_all_exited;
        let p = &mut self.programs[pi];
        if matches!(&p.stage, Stage::WillNotStart { why: w, .. } if *w == why) {
            return;
        }
        let name = &p.cfg.name;
        let next = if p.cfg.essential {
            "it is essential: drover stops everything and exits".to_string()
        } else {
            match on_all_exited {
                OnAllExited::Exit => "it counts as ended: drover exits once every other program has ended too (on_all_exited = \"exit\")".to_string(),
                OnAllExited::Stay => "drover stays up (on_all_exited = \"stay\")".to_string(),
            }
        };
        error!(program = %name, "program {name} will not start: its dependency {why}; {next}");
        p.stage = Stage::WillNotStart { why, code };
    }

    /// A program's dependencies hold: its workers start now.
    fn start_program(&mut self, pi: usize, now: Instant) {
        let p = &mut self.programs[pi];
        let waited = match &p.stage {
            Stage::Waiting { since: Some(t), .. } => Some(now.duration_since(*t)),
            _ => None,
        };
        p.stage = Stage::Started;
        let (name, n) = (p.cfg.name.clone(), p.desired);
        if !p.cfg.depends_on.is_empty() {
            let held: Vec<String> = p
                .cfg
                .depends_on
                .iter()
                .map(|(d, c)| format!("{d} {}", c.word()))
                .collect();
            let after = waited.map_or(String::new(), |w| format!(" after waiting {w:.2?}"));
            info!(program = %name, "program {name}: its dependencies hold ({}){after}; starting {n} worker{}", held.join(", "), plural(n as usize));
            let program = name.clone();
            self.emit(crate::api::events::Event::DependencySatisfied { program, held });
        }
        self.prepare_program(pi, now);
        for i in 0..n {
            self.add_worker(pi, i, now);
        }
        self.schedule_health(pi, now);
    }

    /// The programs that have not started and wait for `name`, by name.
    pub(super) fn waiting_on(&self, name: &str) -> Vec<String> {
        self.programs
            .iter()
            .filter(|p| !p.removing && p.stage != Stage::Started)
            .filter(|p| p.cfg.depends_on.iter().any(|(d, _)| d == name))
            .map(|p| p.cfg.name.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(ready: u32, need: u32) -> View {
        View {
            started: true,
            ran: true,
            ready,
            need,
            ..Default::default()
        }
    }

    /// (condition, what the dependency looks like, what the gate says of it)
    #[test]
    fn each_condition_holds_waits_or_never_will() {
        use Condition::*;
        let no = |s: &str| Holds::No(s.to_string());
        let never = |s: &str, code: i32| Holds::Never {
            why: s.to_string(),
            code,
        };
        let not_started = View {
            need: 1,
            ..Default::default()
        };
        let ended_ok = View {
            ended: Some("exit code 0".into()),
            ..running(0, 1)
        };
        let failed = View {
            ended: Some("exit code 3".into()),
            failed: Some(("exit code 3".into(), 3)),
            ..running(0, 1)
        };
        let cases: Vec<(Condition, View, Holds)> = vec![
            (
                Started,
                not_started.clone(),
                no("db: started (not started: it waits for its own dependencies)"),
            ),
            (Started, running(0, 1), Holds::Yes),
            (Ready, running(0, 1), no("db: ready 0/1")),
            (Ready, running(1, 2), no("db: ready 1/2")),
            (Ready, running(2, 2), Holds::Yes),
            (
                Ready,
                View {
                    crash_looping: true,
                    ..running(0, 1)
                },
                no("db: ready 0/1 (crash-looping)"),
            ),
            (
                Ready,
                ended_ok.clone(),
                never("db ended (exit code 0) before it was ready", 1),
            ),
            // ready once, then ended (a seeding job): the condition was met
            (
                Ready,
                View {
                    was_ready: true,
                    ..ended_ok.clone()
                },
                Holds::Yes,
            ),
            (
                Healthy,
                View {
                    was_ready: true,
                    ..ended_ok.clone()
                },
                never("db ended (exit code 0) before it was healthy", 1),
            ),
            (
                Healthy,
                View {
                    was_healthy: true,
                    ..running(0, 1)
                },
                Holds::Yes,
            ),
            (
                Healthy,
                running(1, 1),
                no("db: healthy (ready, no health check passed yet)"),
            ),
            (Healthy, running(0, 1), no("db: healthy (ready 0/1)")),
            (
                Healthy,
                View {
                    healthy: true,
                    ..running(1, 1)
                },
                Holds::Yes,
            ),
            (Succeeded, running(1, 1), no("db: succeeded")),
            (Succeeded, ended_ok, Holds::Yes),
            (
                Succeeded,
                failed.clone(),
                never("db failed (exit code 3) and will not run again", 3),
            ),
            // a failure of one worker is enough, even while another runs
            (
                Succeeded,
                View {
                    ended: None,
                    ..failed
                },
                never("db failed (exit code 3) and will not run again", 3),
            ),
            (
                Started,
                View {
                    blocked: Some(3),
                    ..not_started
                },
                never("db will not start", 3),
            ),
        ];
        for (cond, v, want) in cases {
            assert_eq!(holds("db", cond, &v), want, "{cond:?} {v:?}");
        }
    }

    #[test]
    fn the_gate_waits_for_every_dependency_and_names_a_failure() {
        let deps = vec![
            ("db".to_string(), Condition::Ready),
            ("migrate".to_string(), Condition::Succeeded),
        ];
        let views = |db: View, migrate: View| {
            move |n: &str| match n {
                "db" => Some(db.clone()),
                "migrate" => Some(migrate.clone()),
                _ => None,
            }
        };
        let done = View {
            ended: Some("exit code 0".into()),
            ..running(0, 1)
        };
        assert_eq!(
            gate(&deps, views(running(0, 1), running(0, 1))),
            Gate::Wait(vec!["db: ready 0/1".into(), "migrate: succeeded".into()])
        );
        assert_eq!(
            gate(&deps, views(running(1, 1), running(0, 1))),
            Gate::Wait(vec!["migrate: succeeded".into()])
        );
        assert_eq!(gate(&deps, views(running(1, 1), done)), Gate::Open);
        let failed = View {
            failed: Some(("exit code 1".into(), 1)),
            ended: Some("exit code 1".into()),
            ..running(0, 1)
        };
        assert_eq!(
            gate(&deps, views(running(0, 1), failed)),
            Gate::Never {
                why: "migrate failed (exit code 1) and will not run again (depends_on migrate = \"succeeded\")".into(),
                code: 1
            }
        );
        assert_eq!(gate(&[], |_| None), Gate::Open, "no dependencies");
    }
}

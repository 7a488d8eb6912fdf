//! Reload (HUP, `POST /reload`, `systemctl reload`): the file is read again and compared with
//! what runs. `diff` is pure: it says what changes (programs added, removed, scaled, rolled) or
//! why the new file cannot be applied, in which case nothing changes at all. Control commands
//! (restart, scale, stop) and file watching live here too: they are the other ways to change
//! what runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};

use super::program::Program;
use super::roll_outcome::End;
use super::{unix_now, Supervisor};
use crate::api::control::{self, Command, Refused, Reply};
use crate::config::{Config, ProgramCfg};
use crate::state::StopReason;

/// Changes under a watched path within this window make one rolling restart.
const WATCH_DEBOUNCE: Duration = Duration::from_millis(300);

/// What a new configuration changes, program by program.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Diff {
    /// said in the log: settings that apply only when drover restarts
    pub warnings: Vec<String>,
    pub removed: Vec<String>,
    pub added: Vec<String>,
    /// programs whose settings differ (each takes the new ones)
    pub changed: Vec<String>,
    /// (program, workers now, workers in the new file)
    pub scaled: Vec<(String, u32, u32)>,
    /// programs whose workers must be rolled onto the new settings
    pub rolled: Vec<String>,
}

/// Compare the running configuration (and each running program's current worker count) with a
/// new one. `tls_now`: the status listener speaks TLS now.
pub(super) fn diff(
    old: &Config,
    running: &[(&ProgramCfg, u32)],
    new: &Config,
    tls_now: bool,
) -> Result<Diff, String> {
    if new.sockets != old.sockets {
        return Err("the [socket.*] sections changed; sockets are bound once, so changing them needs a restart of drover".into());
    }
    let tls_new = new.supervisor.tls_cert.is_some() && new.supervisor.tls_key.is_some();
    if tls_new != tls_now {
        return Err("supervisor.tls_cert/tls_key were added or removed; switching the status endpoint between http and https needs a restart of drover".into());
    }
    let mut d = Diff::default();
    if new.supervisor.status != old.supervisor.status {
        d.warnings.push(
            "supervisor.status changed; the status endpoint moves only when drover restarts".into(),
        );
    }
    if new.supervisor.status_hosts != old.supervisor.status_hosts {
        d.warnings.push("supervisor.status_hosts changed; the status endpoint answers the new names only when drover restarts".into());
    }
    let steps = |c: &Config| -> Vec<(String, crate::config::CommandSpec)> {
        c.prestart
            .iter()
            .map(|s| (s.name.clone(), s.command.clone()))
            .collect()
    };
    if steps(new) != steps(old) {
        d.warnings.push("[[prestart]] changed; steps run once at start, so the change applies at the next start".into());
    }
    for (cfg, _) in running {
        if !new.programs.iter().any(|p| p.name == cfg.name) {
            d.removed.push(cfg.name.clone());
        }
    }
    for np in &new.programs {
        let Some((old, desired)) = running.iter().find(|(c, _)| c.name == np.name) else {
            d.added.push(np.name.clone());
            continue;
        };
        if *old == np {
            continue;
        }
        d.changed.push(np.name.clone());
        if np.workers != *desired {
            d.scaled.push((np.name.clone(), *desired, np.workers));
        }
        let only_count = ProgramCfg {
            workers: np.workers,
            min_ready: np.min_ready,
            // the writer reopens the file: nothing to restart for
            log_file: np.log_file.clone(),
            ..(*old).clone()
        } == *np;
        if !only_count {
            d.rolled.push(np.name.clone());
        }
    }
    Ok(d)
}

impl Supervisor {
    fn find(&self, name: &str) -> Result<usize, Refused> {
        self.programs
            .iter()
            .position(|p| p.cfg.name == name && !p.removing)
            .ok_or_else(|| {
                let names: Vec<&str> = self.programs.iter().map(|p| p.cfg.name.as_str()).collect();
                Refused::NotFound(format!(
                    "no program named `{name}` (programs: {})",
                    names.join(", ")
                ))
            })
    }

    /// A control command while running.
    pub(super) fn control(&mut self, cmd: Command, now: Instant) -> Reply {
        match cmd {
            Command::Restart { program } => {
                let pi = self.find(&program)?;
                match &self.programs[pi].stage {
                    super::depends::Stage::Waiting { on, .. } => {
                        return Err(Refused::Busy(format!(
                            "program {program} has not started yet: it waits for {}",
                            on.join(", ")
                        )))
                    }
                    super::depends::Stage::WillNotStart { why, .. } => {
                        return Err(Refused::Busy(format!(
                            "program {program} will not start: its dependency {why}; fix that and reload"
                        )))
                    }
                    super::depends::Stage::Started => {}
                }
                if self.programs[pi].rolling() {
                    return Err(Refused::Busy(format!(
                        "program {program} is already rolling; try again when it is done"
                    )));
                }
                self.start_roll(pi, StopReason::Restart, now);
                self.advance_rolls(now);
                Ok(format!(
                    "rolling restart of {program} started ({} workers)",
                    self.programs[pi].desired
                ))
            }
            Command::Scale { program, workers } => {
                let pi = self.find(&program)?;
                let min = self.programs[pi].cfg.min_ready;
                if workers < min {
                    return Err(Refused::Invalid(format!("{workers} workers is below min_ready ({min}) for program {program}; use /programs/{program}/stop to stop it")));
                }
                let from = self.programs[pi].desired;
                self.scale(pi, workers, now, StopReason::Scale);
                Ok(format!("program {program}: {from} -> {workers} workers"))
            }
            Command::Stop { program } => {
                let pi = self.find(&program)?;
                self.cancel_rolls(
                    pi,
                    "the program was stopped (POST /programs/NAME/stop)",
                    now,
                );
                self.scale(pi, 0, now, StopReason::Stop);
                Ok(format!(
                    "program {program}: stopping every worker (scale up to start it again)"
                ))
            }
            Command::Reload => self.reload(now).map_err(Refused::Invalid),
        }
    }

    pub(super) fn on_files_changed(
        &mut self,
        program: &str,
        changes: crate::watch::Changes,
        now: Instant,
    ) {
        if let Some(p) = self.programs.iter_mut().find(|p| p.cfg.name == program) {
            p.watch_due = Some(now + WATCH_DEBOUNCE);
            p.watch_changes.merge(changes);
        }
    }

    pub(super) fn check_watch(&mut self, now: Instant) {
        if self.run != super::RunState::Running {
            return;
        }
        for pi in 0..self.programs.len() {
            let p = &mut self.programs[pi];
            if p.watch_due.is_none_or(|t| now < t) {
                continue;
            }
            if p.roll.is_some() {
                // a change during a roll: roll again once this one is done
                p.watch_due = Some(now + WATCH_DEBOUNCE);
                continue;
            }
            p.watch_due = None;
            let changes = std::mem::take(&mut p.watch_changes);
            if !p.started() {
                // nothing runs yet (it waits for its dependencies): it starts on the new code
                info!(
                    "program {}: {}; it has not started yet (depends_on): nothing to roll",
                    p.cfg.name,
                    changes.describe()
                );
                continue;
            }
            info!(
                "program {}: {}; rolling restart",
                p.cfg.name,
                changes.describe()
            );
            self.start_roll(pi, StopReason::Restart, now);
        }
    }

    /// Re-read the configuration and apply what changed. On any error nothing changes.
    pub(super) fn reload(&mut self, now: Instant) -> Result<String, String> {
        if let Some(n) = &self.cx.notify {
            n.reloading();
        }
        let result = self.try_reload(now);
        if let Some(n) = &self.cx.notify {
            // done reloading; rolls proceed in the background, as ExecReload= expects
            n.ready(&self.status_line());
        }
        let ok = result.is_ok();
        let msg = match &result {
            Ok(m) => {
                self.metrics.reloads_ok += 1;
                info!("reload: {m}");
                self.emit(crate::api::events::Event::ReloadApplied { message: m.clone() });
                m
            }
            Err(m) => {
                self.metrics.reloads_failed += 1;
                error!("reload failed, the running configuration is unchanged: {m}");
                // public: what is wrong and where, not the values quoted
                self.emit(crate::api::events::Event::ReloadRejected {
                    why: crate::api::snapshot::without_quotes(m),
                });
                m
            }
        };
        self.last_reload = Some(serde_json::json!({"ok": ok, "message": msg, "at": unix_now()}));
        result
    }

    fn try_reload(&mut self, now: Instant) -> Result<String, String> {
        let new = (self.cx.reload)()?;
        let token = match &new.supervisor.control_token_file {
            Some(p) => Some(Arc::<str>::from(control::read_token(p)?)),
            None => None,
        };
        let tls = match (&new.supervisor.tls_cert, &new.supervisor.tls_key) {
            (Some(c), Some(k)) => Some(crate::api::tls::load(c, k)?),
            _ => None,
        };
        let running: Vec<(&ProgramCfg, u32)> = self
            .programs
            .iter()
            .filter(|p| !p.removing)
            .map(|p| (&p.cfg, p.desired))
            .collect();
        let d = diff(&self.cfg, &running, &new, self.cx.tls.borrow().is_some())?;
        for w in &d.warnings {
            warn!("reload: {w}");
        }
        let mut changes = vec![];
        let mut rolling = vec![];
        for name in &d.removed {
            let pi = self.find(name).map_err(|e| e.to_string())?;
            self.programs[pi].removing = true;
            self.cancel_rolls(pi, "the program was removed from the configuration", now);
            self.scale(pi, 0, now, StopReason::Reload);
            changes.push(format!("{name} removed"));
        }
        for np in &new.programs {
            let name = &np.name;
            if d.added.contains(name) {
                let id = self.new_id();
                // it starts below, through the dependency gate, as at start-up
                self.programs
                    .push(Program::new(id, np.clone(), &self.sockets));
                let pi = self.programs.len() - 1;
                self.programs[pi].added_by_reload = true;
                changes.push(format!("{name} added ({} workers)", np.workers));
                continue;
            }
            let pi = self.find(name).map_err(|e| e.to_string())?;
            if d.changed.contains(name) {
                self.programs[pi].reconfigure(np.clone(), &self.sockets);
                // a changed prometheus_multiproc_dir is opened (and emptied) before the roll
                self.prepare_metrics_dir(pi);
                self.schedule_health(pi, now);
                if let Some((_, from, to)) = d.scaled.iter().find(|(n, ..)| n == name) {
                    self.scale(pi, *to, now, StopReason::Reload);
                    changes.push(format!("{name} scaled {from} -> {to}"));
                }
            }
            // every program rolls onto the file as re-read, changed or not: a reload is how new
            // code is deployed (`git pull && systemctl reload drover`), as gunicorn's and
            // uvicorn's HUP restart their workers. Jobs (restart = "never", or what another
            // program needs to have `succeeded`) roll only when their settings changed: a
            // finished job is then run again, a running one stopped first, never doubled.
            // A program waiting for its dependencies has nothing to roll: it starts on the new
            // settings when they hold
            let started = self.programs[pi].started();
            if started && (d.rolled.contains(name) || !super::depends::job(np, &new.programs)) {
                self.start_roll(pi, StopReason::Reload, now);
                rolling.push(format!("{name} rolling"));
            }
        }
        self.cfg = new;
        self.cx.output.rings().configure(&self.cfg.programs);
        // each log file reopened: a changed path, or one logrotate moved away
        self.cx.output.files().configure(&self.cfg.programs);
        self.history_configured();
        self.ensure_notify_socket();
        // added programs, and waiting ones whose depends_on changed, start if theirs hold
        self.start_gated(now);
        let _ = self.cx.token.send(token);
        if tls.is_some() {
            info!("reload: the status endpoint's TLS certificate and key were re-read");
            let _ = self.cx.tls.send(tls);
        }
        if changes.is_empty() && d.changed.is_empty() {
            changes.push("no program's settings changed".into());
        }
        changes.extend(rolling);
        Ok(changes.join("; "))
    }

    /// The program's roll, running or waiting for its preloader, ends here: `why`.
    fn cancel_rolls(&mut self, pi: usize, why: &str, now: Instant) {
        let end = || End::Cancelled { why: why.into() };
        self.end_roll(pi, end(), now);
        self.end_deferred_roll(pi, end(), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Config {
        crate::config::parse("t.toml", text, &|_| None).unwrap()
    }

    const BASE: &str = "[socket.http]\nlisten = \"127.0.0.1:0\"\n[program.api]\ncommand = \"x\"\nsockets = [\"http\"]\nworkers = 2\n[program.jobs]\ncommand = \"y\"\n";

    fn run(old: &Config, new: &str) -> Result<Diff, String> {
        let running: Vec<(&ProgramCfg, u32)> =
            old.programs.iter().map(|p| (p, p.workers)).collect();
        diff(old, &running, &cfg(new), false)
    }

    #[test]
    fn reload_diffs() {
        let old = cfg(BASE);
        assert_eq!(
            run(&old, BASE).unwrap(),
            Diff::default(),
            "the same file changes nothing"
        );
        let d = run(&old, &BASE.replace("workers = 2", "workers = 4")).unwrap();
        assert_eq!(
            (d.scaled, d.rolled),
            (vec![("api".into(), 2, 4)], vec![]),
            "a count only scales"
        );
        let d = run(
            &old,
            &BASE.replace("workers = 2", "workers = 2\nmin_ready = 2"),
        )
        .unwrap();
        assert_eq!(
            (d.changed, d.scaled, d.rolled),
            (vec!["api".into()], vec![], vec![]),
            "min_ready: new settings, nothing restarted"
        );
        let d = run(&old, &BASE.replace("command = \"x\"", "command = \"x2\"")).unwrap();
        assert_eq!(d.rolled, vec!["api".to_string()], "a new command rolls");
        let d = run(
            &old,
            &BASE.replace(
                "[program.jobs]\ncommand = \"y\"\n",
                "[program.cron]\ncommand = \"z\"\n",
            ),
        )
        .unwrap();
        assert_eq!(
            (d.removed, d.added),
            (vec!["jobs".into()], vec!["cron".into()])
        );
        let d = run(&old, &format!("{BASE}[[prestart]]\ncommand = \"true\"\n")).unwrap();
        assert_eq!(d.warnings.len(), 1, "steps run once: said, not applied");
        let e = run(&old, &BASE.replace("127.0.0.1:0", "127.0.0.1:1")).unwrap_err();
        assert!(e.contains("[socket.*] sections changed"), "{e}");
    }

    #[test]
    fn scaling_compares_with_what_runs_not_with_the_old_file() {
        let old = cfg(BASE);
        // autoscaled to 5 since: the file's 2 is a change to make
        let running: Vec<(&ProgramCfg, u32)> = old
            .programs
            .iter()
            .map(|p| (p, if p.name == "api" { 5 } else { p.workers }))
            .collect();
        let d = diff(
            &old,
            &running,
            &cfg(&BASE.replace("command = \"x\"", "command = \"x2\"")),
            false,
        )
        .unwrap();
        assert_eq!(d.scaled, vec![("api".into(), 5, 2)]);
    }
}

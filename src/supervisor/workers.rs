//! Workers: spawn, stop, exit, the state machine's actions carried out, scaling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{error, info, warn};

use super::depends::Stage;
use super::{RunState, Supervisor};
use crate::config::{LogMode, OnAllExited, ReadyCheck};

/// After a process is reaped, its output pipe is read this much longer, then closed.
const PUMP_GRACE: Duration = Duration::from_secs(2);
use crate::logs::output::{color_for, Source};
use crate::process::reaper::ExitStatus;
use crate::process::spawn::{self, SpawnSpec, Stdio};
use crate::state::{Action, AfterStop, Next, Phase, Slot, StopReason, Why};

impl Supervisor {
    /// A new worker at `index`, spawned at once. Returns its slot id.
    pub(super) fn add_worker(&mut self, pi: usize, index: u32, now: Instant) -> u64 {
        let id = self.new_id();
        self.programs[pi].push(Slot::new(id, index));
        self.spawn_worker(pi, id, now);
        id
    }

    /// A rolling replacement beside `old`, spawned at once. Returns its slot id.
    pub(super) fn add_replacement(&mut self, pi: usize, old: u64, now: Instant) -> Option<u64> {
        let id = self.new_id();
        let slot = Slot::replacing(id, &self.programs[pi].worker(old)?.slot);
        self.programs[pi].push(slot);
        self.spawn_worker(pi, id, now);
        Some(id)
    }

    pub(super) fn spawn_spec(
        &self,
        pi: usize,
        index: u32,
        out: Option<std::os::fd::RawFd>,
    ) -> SpawnSpec {
        let prog = &self.programs[pi];
        let mut env = prog.env.clone();
        env.push(("DROVER_PROGRAM".into(), prog.cfg.name.clone()));
        env.push(("DROVER_WORKER".into(), index.to_string()));
        let uid = prog
            .cfg
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |i| i.uid);
        if let (ReadyCheck::Notify, Some(s)) =
            (prog.cfg.readiness.check, self.notify_socket.get(&uid))
        {
            env.push(("NOTIFY_SOCKET".into(), s.clone()));
        }
        if let Some((_, d, _)) = &prog.metrics_dir {
            // prometheus_client reads the first; versions before 0.10 the second
            let d = d.display().to_string();
            env.retain(|(k, _)| k != "PROMETHEUS_MULTIPROC_DIR" && k != "prometheus_multiproc_dir");
            env.push(("PROMETHEUS_MULTIPROC_DIR".into(), d.clone()));
            env.push(("prometheus_multiproc_dir".into(), d));
        }
        SpawnSpec {
            argv: prog.cfg.command.argv(),
            env,
            cwd: prog.cfg.cwd.clone(),
            sockets: prog.sockets.clone(),
            stdio: out.map_or(Stdio::Inherit, Stdio::Pipe),
            parent: self.parent_pid(),
            cgroup_procs: vec![],
            extra_fds: vec![],
            identity: prog.cfg.identity.as_ref().map(|i| (i.uid, i.gid)),
        }
    }

    pub(super) fn spawn_worker(&mut self, pi: usize, id: u64, now: Instant) {
        let jitter = self.jitter();
        let prog = &self.programs[pi];
        let Some(w) = prog.worker(id) else {
            return;
        };
        let index = w.slot.index();
        if let Some(deadline) = w.forking {
            // a fork was asked for this slot: its answer (or the deadline) decides
            if let Some(w) = self.programs[pi].worker_mut(id) {
                w.slot.postpone(deadline.max(now) + Duration::from_secs(1));
            }
            return;
        }
        let (pname, sc) = (prog.cfg.name.clone(), prog.slot_cfg);
        let name = format!("{pname}.{index}");
        let pipe = match prog.cfg.log {
            LogMode::Capture => spawn::pipe()
                .inspect_err(|e| error!("worker {name}: cannot create its output pipe: {e}; its output goes to drover's"))
                .ok(),
            LogMode::Inherit => None,
        };
        let out = pipe
            .as_ref()
            .map(|(_, w)| std::os::fd::AsRawFd::as_raw_fd(w));
        let result = if self.programs[pi].cfg.preload {
            match self.request_fork(pi, id, index, out, now) {
                Ok(true) => {
                    // the preloader holds the write end now; the lines come once it forks
                    if let Some((r, w)) = pipe {
                        drop(w);
                        self.pump_worker(pi, id, index, 0, r);
                    }
                    return;
                }
                Ok(false) => {
                    // no preloader ready: wait for one, without counting a failure
                    if let Some(w) = self.programs[pi].worker_mut(id) {
                        w.awaiting_preloader = true;
                        w.slot.postpone(now + Duration::from_secs(1));
                    }
                    return;
                }
                Err(e) => Err(e),
            }
        } else {
            self.spawn_process(pi, id, index, out)
        };
        match result {
            Ok(pid) => {
                if let Some((r, w)) = pipe {
                    drop(w);
                    self.pump_worker(pi, id, index, pid, r);
                }
                self.started(pi, id, pid, now);
            }
            Err(e) => {
                self.metrics.restart(&pname, "spawn");
                if let Some(w) = self.programs[pi].worker_mut(id) {
                    w.slot.spawn_failed(e.clone(), now, &sc.backoff, jitter);
                    let delay = w.slot.last_delay();
                    error!(program = %pname, worker = index, "worker {name}: {e} (retrying in {delay:.1?})");
                }
            }
        }
    }

    /// Slot `id`'s new process `pid` (spawned, or forked by the preloader and verified) runs:
    /// drover holds it by a pidfd already.
    pub(super) fn started(&mut self, pi: usize, id: u64, pid: i32, now: Instant) {
        let first_check = self.programs[pi].first_check(now);
        let j = self.jitter();
        let p = &mut self.programs[pi];
        let spread = p.cfg.max_lifetime_jitter.mul_f64(j);
        let retire_at = p.cfg.max_lifetime.map(|l| now + l + spread);
        let (sc, pname, prog) = (p.slot_cfg, p.cfg.name.clone(), p.id);
        let forked = p.cfg.preload;
        p.ran = true;
        let Some(w) = p.worker_mut(id) else { return };
        let index = w.slot.index();
        w.fresh_process(first_check, retire_at);
        if let Some(src) = &w.output {
            // a forked worker's pipe was pumped before its pid was known
            src.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
        }
        w.slot.spawned(pid, now, &sc);
        let restarts = w.slot.restarts();
        self.pids.insert(pid, (prog, id));
        // its process group may speak on NOTIFY_SOCKET, as its user
        let uid = self.programs[pi]
            .cfg
            .identity
            .as_ref()
            .map_or_else(|| nix::unistd::geteuid().as_raw(), |i| i.uid);
        self.notify_inbox.allow(pid, uid);
        let how = if forked {
            ", forked by the preloader"
        } else {
            ""
        };
        info!(program = %pname, worker = index, pid, "worker {pname}.{index} started (pid {pid}{how})");
        self.emit_started(pname, index, pid, forked, restarts);
    }

    /// Pump a pipe's lines into drover's output under `label`.
    pub(super) fn pump(
        &self,
        label: String,
        program: &str,
        worker: Option<u32>,
        r: std::os::fd::OwnedFd,
    ) -> tokio::task::AbortHandle {
        let pumping = self
            .cx
            .output
            .pump(self.source(label, program, worker), r, 0);
        tokio::spawn(pumping).abort_handle()
    }

    /// Where a pipe's lines go: drover's output under `label`, and `program`'s ring.
    fn source(&self, label: String, program: &str, worker: Option<u32>) -> Arc<Source> {
        Arc::new(Source {
            label,
            program: program.to_string(),
            worker,
            color: color_for(program),
            ring: self.cx.output.rings().get(program),
            pid: Default::default(),
        })
    }

    /// Pump worker `id`'s pipe (`pid` 0: a preloader forks it later, `started` sets it); when
    /// the pipe ends the loop is told, for the worker's last words (`last_words.rs`).
    fn pump_worker(&mut self, pi: usize, id: u64, index: u32, pid: i32, r: std::os::fd::OwnedFd) {
        let (pname, prog) = (self.programs[pi].cfg.name.clone(), self.programs[pi].id);
        let source = self.source(format!("{pname}.{index}"), &pname, Some(index));
        source.pid.store(pid, std::sync::atomic::Ordering::Relaxed);
        let pumping = self.cx.output.pump(source.clone(), r, 0);
        let (events, src) = (self.events.clone(), source.clone());
        let pump = tokio::spawn(async move {
            pumping.await;
            let pid = src.pid.load(std::sync::atomic::Ordering::Relaxed);
            let _ = events.send(super::Event::OutputEnded {
                prog,
                slot: id,
                pid,
            });
        })
        .abort_handle();
        if let Some(w) = self.programs[pi].worker_mut(id) {
            Self::retire_pump(w.pump.replace(pump));
            w.output = Some(source);
        }
    }

    /// A process is gone: its output pump has `PUMP_GRACE` more to read what it left in the
    /// pipe, then stops. A pipe still held open by something that outlived the process (a
    /// `setsid` helper keeping its stdout) would otherwise cost drover a pipe and a task for
    /// ever, one per restart.
    pub(super) fn retire_pump(pump: Option<tokio::task::AbortHandle>) {
        if let Some(h) = pump.filter(|h| !h.is_finished()) {
            tokio::spawn(async move {
                tokio::time::sleep(PUMP_GRACE).await;
                h.abort();
            });
        }
    }

    /// Spawn the worker's process in its cgroup, held by a pidfd.
    fn spawn_process(
        &mut self,
        pi: usize,
        id: u64,
        index: u32,
        out: Option<std::os::fd::RawFd>,
    ) -> Result<i32, String> {
        let mut spec = self.spawn_spec(pi, index, out);
        spec.cgroup_procs = self
            .worker_cgroup(pi, id, index)
            .map_err(|e| format!("cannot set up its cgroup: {e}"))?;
        let cmd = &self.programs[pi].cfg.command;
        let pid = spawn::spawn(&spec)
            .map_err(|e| format!("spawn {}", cmd.mask_program(&e.to_string())))?;
        self.children
            .adopt(pid)
            .map_err(|e| format!("cannot hold pid {pid} by a pidfd ({e}); killed it"))?;
        Ok(pid)
    }

    /// Stop one worker with its program's stop signal and timeout, then carry out what the
    /// state machine answers (a respawn, a removal). False if the worker is gone.
    pub(super) fn stop_worker(
        &mut self,
        pi: usize,
        id: u64,
        then: AfterStop,
        reason: StopReason,
        now: Instant,
    ) -> bool {
        let sc = self.programs[pi].slot_cfg;
        self.stop_worker_with(pi, id, (sc.stop_signal, sc.stop_timeout), then, reason, now)
    }

    /// `stop_worker` with an explicit signal and KILL timeout (shutdown, abandoned replacements).
    pub(super) fn stop_worker_with(
        &mut self,
        pi: usize,
        id: u64,
        (signal, timeout): (Signal, Duration),
        then: AfterStop,
        reason: StopReason,
        now: Instant,
    ) -> bool {
        let Some(w) = self.programs[pi].worker_mut(id) else {
            return false;
        };
        let acts = w.slot.stop(now, signal, timeout, then, reason);
        self.apply(pi, id, acts, now);
        true
    }

    pub(super) fn on_worker_exit(
        &mut self,
        prog: u64,
        id: u64,
        pid: i32,
        status: ExitStatus,
        now: Instant,
    ) {
        // what the worker left in its process group was killed when it was reaped (`on_exit`);
        // its output pipe gets a moment more, then is closed
        let mut output_done = true;
        if let Some(pi) = self.pidx(prog) {
            let pump = self.programs[pi].worker_mut(id).and_then(|w| w.pump.take());
            output_done = pump.as_ref().is_none_or(|h| h.is_finished());
            Self::retire_pump(pump);
        }
        self.notify_inbox.forget(pid);
        if let Some(pi) = self.pidx(prog) {
            self.metrics_files_of_dead(pi, pid);
        }
        let Some(pi) = self.pidx(prog) else { return };
        let jitter = self.jitter();
        let running = matches!(self.run, RunState::Running | RunState::Draining { .. });
        let p = &mut self.programs[pi];
        let (sc, name) = (p.slot_cfg, p.cfg.name.clone());
        let replacement = p.roll.as_ref().and_then(|r| r.replacement()) == Some(id);
        let Some(w) = p.worker_mut(id) else { return };
        if let Some((cg, _)) = &w.cgroup {
            cg.kill_all();
        }
        let oom = w.oom_killed();
        w.memory = None;
        let uptime = w
            .slot
            .since()
            .map(|s| now.duration_since(s))
            .unwrap_or_default();
        let exit = w.slot.exited(status, oom, now, &sc, jitter);
        let (idx, last) = (w.slot.index(), w.slot.last_exit().cloned());
        if exit.next != Next::Ignored {
            let restarting = running && !replacement;
            let how = (status, last.as_ref(), exit.next);
            self.emit(super::emit::exited(
                (&name, idx, pid),
                how,
                uptime,
                restarting,
            ));
        }
        let p = &mut self.programs[pi];
        if replacement && !matches!(exit.next, Next::Stopped(_) | Next::Ignored) {
            // a roll's replacement that exits before it is ready is not restarted: the roll is
            // abandoned, said in one line (not a "restarting in …" that would not happen)
            let how = last.as_ref().map(|l| l.to_string()).unwrap_or_default();
            let why = format!("pid {pid} exited with {how} after {uptime:.1?}");
            self.abandon_roll(pi, id, idx, &why, now);
            return;
        }
        let said = super::last_words::exit_record(
            &name,
            (idx, pid),
            &exit,
            last.as_ref(),
            uptime,
            &sc,
            !running,
        );
        let ended = (exit.next == Next::NotRestarting).then_some(status);
        // a rolling replacement inherits the history of the worker it replaced
        if let (Next::Stopped(r), Some(last)) = (exit.next, last) {
            if r.is_roll() {
                if let Some(succ) = p
                    .workers
                    .iter_mut()
                    .find(|s| s.slot.index() == idx && s.id() != id)
                {
                    succ.slot.inherit(last);
                }
            }
        }
        if let Some(record) = said {
            self.record_exit(prog, id, record, output_done, now);
        }
        self.last_ended = ended.or(self.last_ended);
        if let (Some(reason), true) = (exit.counted, running) {
            self.metrics.restart(&name, reason);
        }
        if !running && exit.actions.contains(&Action::Spawn) {
            // never respawn during shutdown
            self.programs[pi].workers.retain(|w| w.id() != id);
            return;
        }
        self.apply(pi, id, exit.actions, now);
    }

    pub(super) fn apply(&mut self, pi: usize, id: u64, acts: Vec<Action>, now: Instant) {
        for a in acts {
            match a {
                Action::Spawn => self.spawn_worker(pi, id, now),
                Action::Signal { pid, signal, why } => {
                    self.log_signal(pi, id, pid, why);
                    self.children.signal_group(pid, signal);
                    if signal != Signal::SIGKILL {
                        // a SIGSTOPped worker must be continued to act on its stop signal
                        self.children.signal_group(pid, Signal::SIGCONT);
                    }
                }
                Action::Abandon { pid } => self.abandon(pi, id, pid),
                Action::Remove => {
                    let p = &mut self.programs[pi];
                    if let Some(i) = p.workers.iter().position(|w| w.id() == id) {
                        let w = p.workers.remove(i);
                        if let Some((cg, _)) = w.cgroup {
                            self.cgroup_gc.push(cg);
                        }
                    }
                }
            }
        }
    }

    /// A worker that did not exit `UNREAPED_AFTER` after its SIGKILL: the slot goes on without
    /// it. drover still holds it (its pidfd, the guard) and reaps it if it ever ends.
    fn abandon(&mut self, pi: usize, id: u64, pid: i32) {
        self.pids.remove(&pid);
        self.lost.insert(pid);
        let p = &self.programs[pi];
        let idx = p.worker(id).map(|w| w.slot.index()).unwrap_or(0);
        let name = &p.cfg.name;
        let state = crate::resources::usage::proc_state(pid);
        error!(
            program = %name, worker = idx, pid,
            "worker {name}.{idx} (pid {pid}) is still not reaped {:?} after SIGKILL ({state}); drover stops waiting for it and the slot goes on without it (reaped if it ever ends)",
            crate::state::UNREAPED_AFTER
        );
    }

    /// The signals the state machine decides on its own say why; the others were logged by
    /// whoever asked for the stop.
    fn log_signal(&self, pi: usize, id: u64, pid: i32, why: Why) {
        let p = &self.programs[pi];
        let idx = p.worker(id).map(|w| w.slot.index()).unwrap_or(0);
        let name = &p.cfg.name;
        match why {
            Why::StopTimedOut => warn!(
                program = %name, worker = idx, pid,
                "worker {name}.{idx} (pid {pid}) did not stop in time; sending SIGKILL to its process group"
            ),
            Why::Stop(StopReason::StartTimeout) => warn!(
                program = %name, worker = idx, pid,
                "worker {name}.{idx} did not become ready within {:?} ({:?} check); {}",
                p.slot_cfg.start_timeout, p.cfg.readiness.check,
                if p.roll.as_ref().and_then(|r| r.replacement()) == Some(id) {
                    "stopping it: it was a rolling restart's replacement, so the roll is abandoned"
                } else {
                    "recycling it"
                }
            ),
            _ => {}
        }
    }

    /// Timers of every worker: start timeouts, backoffs, stop timeouts.
    pub(super) fn tick(&mut self, now: Instant) {
        for pi in 0..self.programs.len() {
            let sc = self.programs[pi].slot_cfg;
            let due: Vec<(u64, Vec<Action>)> = self.programs[pi]
                .workers
                .iter_mut()
                .map(|w| (w.id(), w.slot.tick(now, &sc)))
                .filter(|(_, a)| !a.is_empty())
                .collect();
            for (id, acts) in due {
                if self.run != RunState::Running && acts.contains(&Action::Spawn) {
                    self.programs[pi].workers.retain(|w| w.id() != id);
                    continue;
                }
                self.apply(pi, id, acts, now);
            }
        }
    }

    /// Every worker of every program has ended and none will run again (`restart = "never"`, or
    /// exit 0 under `"on-failure"`): the work is done, and drover exits with the code of the last
    /// worker that ended, as a shell would. A program scaled to zero is not done; one that will
    /// never start (a dependency failed for good) has ended, and drover's exit is then a
    /// failure's even if the last worker exited 0.
    pub(super) fn check_done(&mut self, now: Instant) {
        if self.run != RunState::Running || self.cfg.supervisor.on_all_exited == OnAllExited::Stay {
            return;
        }
        let ended = |p: &super::program::Program| {
            matches!(p.stage, Stage::WillNotStart { .. })
                || (p.desired > 0
                    && !p.workers.is_empty()
                    && p.workers
                        .iter()
                        .all(|w| matches!(w.slot.phase(), Phase::Done { .. })))
        };
        let Some(last) = self.last_ended else { return };
        if self.programs.is_empty() || !self.programs.iter().all(ended) {
            return;
        }
        let blocked = self.programs.iter().find_map(|p| match &p.stage {
            Stage::WillNotStart { code, .. } => Some((p.cfg.name.as_str(), *code)),
            _ => None,
        });
        self.exit_code = match (last.shell_code(), blocked) {
            (0, Some((_, code))) => code.max(super::EXIT_RUNTIME),
            (code, _) => code,
        };
        match blocked {
            None => info!(
                "every worker has ended and none will run again; exiting with the last one's code {} ({last}); on_all_exited = \"stay\" keeps drover up",
                self.exit_code
            ),
            Some((name, _)) => info!(
                "every worker has ended and none will run again, and {name} never started (a dependency failed for good); exiting with code {} (the last worker ended with {last}); on_all_exited = \"stay\" keeps drover up",
                self.exit_code
            ),
        }
        if let Some(n) = &self.cx.notify {
            n.stopping();
        }
        let why = format!(
            "every worker has ended for good: exit code {}",
            self.exit_code
        );
        self.emit_shutting_down(why, false);
        self.stop_everything(false, now);
    }

    pub(super) fn scale(&mut self, pi: usize, to: u32, now: Instant, reason: StopReason) {
        let from = self.programs[pi].desired;
        self.programs[pi].desired = to;
        let name = self.programs[pi].cfg.name.clone();
        if from != to {
            info!(program = %name, "program {name}: scaling from {from} to {to} workers");
            self.emit_scaled(&name, (from, to), reason);
        }
        if !self.programs[pi].started() {
            // it waits for its dependencies: it starts with `desired` workers when they hold
            return;
        }
        // the live workers, one per index (a rolling replacement shares its old one's index)
        let mut indexes: Vec<u32> = self.programs[pi]
            .workers
            .iter()
            .filter(|w| !w.slot.is_leaving())
            .map(|w| w.slot.index())
            .collect();
        indexes.sort_unstable();
        indexes.dedup();
        let live = indexes.len() as u32;
        if to > live {
            let mut next = 0;
            for _ in live..to {
                while indexes.contains(&next) {
                    next += 1;
                }
                indexes.push(next);
                self.add_worker(pi, next, now);
            }
        } else if to < live {
            // the newest (highest index) workers go first
            let drop: Vec<u32> = indexes
                .iter()
                .rev()
                .take((live - to) as usize)
                .copied()
                .collect();
            let ids: Vec<u64> = self.programs[pi]
                .workers
                .iter()
                .filter(|w| drop.contains(&w.slot.index()))
                .map(|w| w.id())
                .collect();
            for id in ids {
                self.stop_worker(pi, id, AfterStop::Remove, reason, now);
            }
        }
    }
}

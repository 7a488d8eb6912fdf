//! Readiness: when a starting worker counts as serving (up for `min_uptime`, accepting on its
//! socket as seen in /proc, or an exec check that exits 0), and the exec checks themselves, which
//! health shares. An exec check is a child like any other: the reaper reports its exit.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tracing::{debug, error, info, warn};

use super::{RunState, Supervisor};
use crate::config::ReadyCheck;
use crate::process::probe;
use crate::process::reaper::ExitStatus;
use crate::process::spawn::{self, SpawnSpec, Stdio};
use crate::state::Phase;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum ProbeKind {
    Ready,
    Health,
}

/// A running exec check.
pub(super) struct ExecProbe {
    pub prog: u64,
    pub slot: u64,
    pub kind: ProbeKind,
    pub deadline: Instant,
    pub killed: bool,
}

impl Supervisor {
    pub(super) fn check_readiness(&mut self, now: Instant) {
        if matches!(self.run, RunState::Stopping { .. }) {
            return;
        }
        for pi in 0..self.programs.len() {
            let rc = self.programs[pi].cfg.readiness.clone();
            let mut ready = vec![];
            let mut exec_due = vec![];
            let p = &mut self.programs[pi];
            for w in &mut p.workers {
                let Phase::Starting { pid, since, .. } = *w.slot.phase() else {
                    continue;
                };
                let due = w.ready_next.unwrap_or(now);
                match rc.check {
                    ReadyCheck::Uptime if now >= since + rc.min_uptime => ready.push(w.id()),
                    ReadyCheck::Uptime => {}
                    ReadyCheck::Notify if w.notified && now >= since + rc.min_uptime => {
                        ready.push(w.id())
                    }
                    ReadyCheck::Notify => {}
                    _ if now.duration_since(since) < rc.min_uptime || now < due => {}
                    ReadyCheck::Listening if probe::listening(pid, &p.inodes) => ready.push(w.id()),
                    ReadyCheck::Listening => w.ready_next = Some(now + rc.interval),
                    ReadyCheck::Exec => {
                        // no second check while this one runs; its result reschedules
                        w.ready_next = Some(now + Duration::from_secs(3600));
                        exec_due.push((w.id(), pid));
                    }
                }
            }
            for id in ready {
                self.mark_ready(pi, id, now);
            }
            let timeout = rc.interval.max(Duration::from_secs(5));
            if let Some(cmd) = &rc.exec {
                for (id, pid) in exec_due {
                    self.spawn_exec_probe(pi, id, pid, cmd, ProbeKind::Ready, timeout, now);
                }
            }
        }
    }

    /// Bind a NOTIFY_SOCKET for each user notify programs' workers run as, the first time one
    /// needs it (at start, or when a reload adds one), in drover's runtime directory: owned by
    /// that user, mode 0600, so only that user's processes (and root) can send to it. Each is
    /// read by a task that fills the one inbox and wakes the loop.
    pub(super) fn ensure_notify_socket(&mut self) {
        let me = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        let mut wanted: Vec<(u32, u32)> = self
            .programs
            .iter()
            .filter(|p| p.cfg.readiness.check == ReadyCheck::Notify)
            .map(|p| p.cfg.identity.as_ref().map_or(me, |i| (i.uid, i.gid)))
            .filter(|(uid, _)| !self.notify_socket.contains_key(uid))
            .collect();
        wanted.sort_unstable();
        wanted.dedup_by_key(|(uid, _)| *uid);
        if wanted.is_empty() {
            return;
        }
        let consequence =
            "those workers cannot report ready and will be recycled at their readiness timeout";
        let dir = match self.runtime_dir() {
            Ok(d) => d,
            Err(e) => {
                error!("readiness check \"notify\": {e}; {consequence}");
                return;
            }
        };
        for owner in wanted {
            let name = crate::process::rundir::RunDir::random_name("notify");
            let sock = match crate::process::notify::NotifySocket::bind(&dir, &name, owner) {
                Ok(s) => s,
                Err(e) => {
                    error!("cannot bind the notify socket for uid {} in {} for readiness check \"notify\": {e}; {consequence}", owner.0, dir.display());
                    continue;
                }
            };
            info!(
                "readiness by notification: workers running as uid {} get NOTIFY_SOCKET={}",
                owner.0, sock.name
            );
            self.notify_socket.insert(owner.0, sock.name.clone());
            let events = self.events.clone();
            let wake = move || events.send(super::Event::Notified).is_ok();
            tokio::spawn(sock.serve(self.notify_inbox.clone(), wake));
        }
    }

    /// Workers said something on NOTIFY_SOCKET (already filtered to workers' process groups
    /// and merged per worker by the inbox).
    pub(super) fn on_notified(&mut self, now: Instant) {
        let mut any_ready = false;
        for (pid, msg) in self.notify_inbox.take() {
            let Some(&(prog, slot)) = self.pids.get(&pid) else {
                debug!("notify socket: a message from worker pid {pid}, gone since; ignored");
                continue;
            };
            let Some(pi) = self.pidx(prog) else { continue };
            let check = self.programs[pi].cfg.readiness.check;
            let Some(w) = self.programs[pi].worker_mut(slot) else {
                continue;
            };
            if msg.status.is_some() {
                w.notify_status = msg.status;
            }
            if msg.ready && check == ReadyCheck::Notify && !w.notified {
                w.notified = true;
                any_ready = true;
            }
        }
        if any_ready {
            self.check_readiness(now);
        }
    }

    pub(super) fn mark_ready(&mut self, pi: usize, id: u64, now: Instant) {
        let name = self.programs[pi].cfg.name.clone();
        let Some(w) = self.programs[pi].worker_mut(id) else {
            return;
        };
        let (idx, pid) = (w.slot.index(), w.slot.pid().unwrap_or(0));
        if let Some(lat) = w.slot.ready(now) {
            w.ready_next = None;
            self.programs[pi].ever_ready = true;
            self.metrics
                .ready_latency
                .entry(name.clone())
                .or_default()
                .observe(lat.as_secs_f64());
            info!(program = %name, worker = idx, pid, "worker {name}.{idx} (pid {pid}) ready in {:.2}s", lat.as_secs_f64());
            self.emit(crate::api::events::Event::WorkerReady {
                program: name,
                worker: idx,
                pid,
                after_seconds: lat.as_secs_f64(),
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn spawn_exec_probe(
        &mut self,
        pi: usize,
        slot: u64,
        pid: i32,
        cmd: &crate::config::CommandSpec,
        kind: ProbeKind,
        timeout: Duration,
        now: Instant,
    ) {
        let argv: Vec<String> = cmd
            .argv()
            .iter()
            .map(|a| a.replace("{pid}", &pid.to_string()))
            .collect();
        let p = &self.programs[pi];
        let spec = SpawnSpec {
            argv,
            env: p.env.clone(),
            cwd: p.cfg.cwd.clone(),
            sockets: vec![],
            stdio: Stdio::Null,
            parent: self.parent_pid(),
            cgroup_procs: vec![],
            extra_fds: vec![],
            identity: p.cfg.identity.as_ref().map(|i| (i.uid, i.gid)),
        };
        let prog = p.id;
        match spawn::spawn(&spec)
            .map_err(|e| e.to_string())
            .and_then(|ppid| {
                self.children
                    .adopt(ppid)
                    .map(|_| ppid)
                    .map_err(|e| format!("cannot hold pid {ppid} by a pidfd ({e}); killed it"))
            }) {
            Ok(ppid) => {
                let deadline = now + timeout;
                let probe = ExecProbe {
                    prog,
                    slot,
                    kind,
                    deadline,
                    killed: false,
                };
                self.probes.insert(ppid, probe);
            }
            Err(e) => {
                let what = if kind == ProbeKind::Ready {
                    "readiness"
                } else {
                    "health"
                };
                let e = cmd.mask_program(&e.to_string());
                warn!("program {}: {what} check could not start: {e}", p.cfg.name);
                self.exec_probe_done(pi, slot, kind, false, format!("could not start: {e}"), now);
            }
        }
    }

    pub(super) fn on_exec_probe(&mut self, p: ExecProbe, status: ExitStatus, now: Instant) {
        let Some(pi) = self.pidx(p.prog) else { return };
        let detail = if p.killed {
            "timed out".to_string()
        } else {
            status.to_string()
        };
        let ok = status.success() && !p.killed;
        self.exec_probe_done(pi, p.slot, p.kind, ok, detail, now);
    }

    fn exec_probe_done(
        &mut self,
        pi: usize,
        slot: u64,
        kind: ProbeKind,
        ok: bool,
        detail: String,
        now: Instant,
    ) {
        match kind {
            ProbeKind::Ready if ok => self.mark_ready(pi, slot, now),
            ProbeKind::Ready => {
                let p = &mut self.programs[pi];
                let next = now + p.cfg.readiness.interval;
                if let Some(w) = p.worker_mut(slot) {
                    w.ready_next = Some(next);
                }
                debug!("program {}: readiness check failed ({detail})", p.cfg.name);
            }
            ProbeKind::Health => {
                self.worker_health_result(pi, slot, ok, &format!("exec check {detail}"), now)
            }
        }
    }

    pub(super) fn kill_overdue_probes(&mut self, now: Instant) {
        for (pid, p) in self.probes.iter_mut() {
            if !p.killed && now >= p.deadline {
                p.killed = true;
                self.children.signal_group(*pid, Signal::SIGKILL);
            }
        }
    }
}

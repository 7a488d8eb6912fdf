//! The loop's one way to say what happened to `GET /events`: `emit` hands an `Event` to the
//! feed (`api/events.rs`: numbered, kept in a bounded backlog, streams woken), O(1) and never
//! waiting on a client. Called where the loop logs the same thing.

use std::time::{Duration, Instant};

use super::Supervisor;
use crate::api::events::Event;
use crate::process::reaper::ExitStatus;
use crate::state::{LastExit, Next, StopReason};

/// At exit, open event streams have this long to send their last events and end.
const STREAMS_GRACE: Duration = Duration::from_secs(1);

impl Supervisor {
    pub(super) fn emit(&self, event: Event) {
        self.cx.feed.emit(event);
    }

    /// `worker_started`, and `worker_restarted` when the slot had a process before.
    pub(super) fn emit_started(
        &self,
        program: String,
        worker: u32,
        pid: i32,
        forked: bool,
        restarts: u32,
    ) {
        self.emit(Event::WorkerStarted {
            program: program.clone(),
            worker,
            pid,
            forked,
        });
        if restarts > 0 {
            self.emit(Event::WorkerRestarted {
                program,
                worker,
                pid,
                restarts,
            });
        }
    }

    pub(super) fn emit_scaled(&self, program: &str, (from, to): (u32, u32), why: StopReason) {
        self.emit(Event::Scaled {
            program: program.to_string(),
            from,
            to,
            why: why.as_str(),
        });
    }

    pub(super) fn emit_shutting_down(&self, why: String, fast: bool) {
        self.emit(Event::ShuttingDown { why, fast });
    }

    /// drover exits: streams send what is left and end with their final chunk; wait for them
    /// a moment (a client that does not read does not hold drover up).
    pub(super) async fn close_streams(&self) {
        let feed = &self.cx.feed;
        feed.close();
        let deadline = Instant::now() + STREAMS_GRACE;
        while feed.streams.load(std::sync::atomic::Ordering::Relaxed) > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An exit status as the event's `code`, `signal` (its name) and `signal_number`.
pub(super) fn status_fields(st: Option<ExitStatus>) -> (Option<i32>, Option<String>, Option<i32>) {
    match st {
        Some(ExitStatus::Code(c)) => (Some(c), None, None),
        Some(ExitStatus::Signal(s)) => (None, Some(s.as_str().to_string()), Some(s as i32)),
        Some(ExitStatus::OtherSignal(n)) => (None, Some(format!("SIG{n}")), Some(n)),
        None => (None, None, None),
    }
}

/// The `worker_exited` event of an exit: what ended it and what drover does next.
pub(super) fn exited(
    (program, worker, pid): (&str, u32, i32),
    (status, last, next): (ExitStatus, Option<&LastExit>, Next),
    uptime: Duration,
    restarting: bool,
) -> Event {
    let reason = match (last, next) {
        (Some(LastExit::Killed(_, cause)), _) => cause.as_str(),
        (Some(LastExit::Stopped(_, r)), _) => r.as_str(),
        (_, Next::Stopped(r)) => r.as_str(),
        _ if status.success() => "exited",
        _ => "crashed",
    };
    let restart_in = match next {
        Next::RestartNow if restarting => Some(0.0),
        Next::RestartIn { delay, .. } if restarting => Some(delay.as_secs_f64()),
        _ => None,
    };
    let (code, signal, signal_number) = status_fields(Some(status));
    Event::WorkerExited {
        program: program.to_string(),
        worker,
        pid,
        code,
        signal,
        signal_number,
        reason,
        uptime_seconds: uptime.as_secs_f64(),
        restart: restart_in.is_some(),
        restart_in_seconds: restart_in,
    }
}

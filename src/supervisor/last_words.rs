//! A worker's last words: the last lines it printed before it exited unasked (a Python
//! traceback, a panic), in drover's exit log record and in `/status` beside its `last_exit`.
//!
//! The reaper can see an exit before the worker's pump has read the last lines from its pipe.
//! Nothing waits for them: the state change and the restart happen at once. Only the exit log
//! record may wait, for the pump's end of the pipe (`Event::OutputEnded`) or `WAIT_FOR_EOF`,
//! whichever comes first (a grandchild holding the pipe open must not hold the record longer);
//! the deadline is one of the loop's (`next_deadline`), so the loop never blocks on it. The lines
//! come from the program's ring (`logs/ring.rs`): a worker whose program keeps no lines
//! (`lines = 0`, `log = "inherit"`) has none.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{plural, Supervisor};
use crate::state::{Exit, Next};

/// At most this many of a worker's last lines are kept,
pub const LAST_LINES: usize = 20;
/// and at most this many bytes of them.
pub const LAST_BYTES: usize = 4096;
/// How long an exit log record waits for the rest of the worker's output.
pub const WAIT_FOR_EOF: Duration = Duration::from_millis(100);

/// One exit's log record, before its last words are known.
pub struct Record {
    warn: bool,
    program: String,
    index: u32,
    pid: i32,
    message: String,
    /// the exit was not asked for: its last words belong in the record
    unasked: bool,
}

struct Pending {
    prog: u64,
    slot: u64,
    due: Instant,
    record: Record,
}

/// Exit records waiting for their worker's last lines, and the last words `/status` shows.
#[derive(Default)]
pub struct LastWords {
    pending: Vec<Pending>,
    /// by (program id, worker index): the words of that index's last unasked exit
    shown: HashMap<(u64, u32), Arc<Vec<String>>>,
}

impl LastWords {
    pub fn due(&self) -> Option<Instant> {
        self.pending.iter().map(|p| p.due).min()
    }

    /// What `/status` shows beside worker `index`'s `last_exit`.
    pub fn of(&self, prog: u64, index: u32) -> Option<Arc<Vec<String>>> {
        self.shown.get(&(prog, index)).cloned()
    }
}

impl Supervisor {
    /// Log `record` now if worker `slot`'s output has ended (`output_done`) or it needs no last
    /// words; else when it ends, or at `WAIT_FOR_EOF`.
    pub(super) fn record_exit(
        &mut self,
        prog: u64,
        slot: u64,
        record: Record,
        output_done: bool,
        now: Instant,
    ) {
        if output_done || !record.unasked {
            self.log_record(prog, record);
        } else {
            self.last_words.pending.push(Pending {
                prog,
                slot,
                due: now + WAIT_FOR_EOF,
                record,
            });
        }
    }

    /// Worker `slot`'s pipe ended: its exit record, if it waits, is logged.
    pub(super) fn on_output_ended(&mut self, prog: u64, slot: u64, pid: i32) {
        let (ready, rest) = std::mem::take(&mut self.last_words.pending)
            .into_iter()
            .partition(|p| p.prog == prog && p.slot == slot && p.record.pid == pid);
        self.last_words.pending = rest;
        for p in ready {
            self.log_record(p.prog, p.record);
        }
    }

    /// Records whose wait is over (all of them when `all`: drover is exiting) are logged with
    /// what the ring has.
    pub(super) fn last_words_due(&mut self, now: Instant, all: bool) {
        let (ready, rest) = std::mem::take(&mut self.last_words.pending)
            .into_iter()
            .partition(|p| all || p.due <= now);
        self.last_words.pending = rest;
        for p in ready {
            self.log_record(p.prog, p.record);
        }
    }

    fn log_record(&mut self, prog: u64, r: Record) {
        let words = if r.unasked {
            self.cx
                .output
                .rings()
                .get(&r.program)
                .map(|ring| ring.last_words(r.index, r.pid, LAST_LINES, LAST_BYTES))
                .unwrap_or_default()
        } else {
            vec![]
        };
        let live: Vec<u64> = self.programs.iter().map(|p| p.id).collect();
        self.last_words.shown.retain(|(p, _), _| live.contains(p));
        if words.is_empty() {
            self.last_words.shown.remove(&(prog, r.index));
        } else {
            self.last_words
                .shown
                .insert((prog, r.index), Arc::new(words.clone()));
        }
        let mut message = r.message;
        if !words.is_empty() {
            message.push_str(&format!(
                "; its last {} line{}:",
                words.len(),
                plural(words.len())
            ));
            for w in &words {
                message.push_str("\n    | ");
                message.push_str(&crate::logs::printable(w));
            }
        }
        let (name, idx, pid) = (&r.program, r.index, r.pid);
        if r.warn {
            warn!(program = %name, worker = idx, pid, "{message}");
        } else {
            info!(program = %name, worker = idx, pid, "{message}");
        }
    }
}

/// One line per exit, saying what happens next (its last words are added by `log_record`);
/// None for an exit that is not said.
pub fn exit_record(
    name: &str,
    (idx, pid): (u32, i32),
    exit: &Exit,
    last: Option<&crate::state::LastExit>,
    uptime: Duration,
    sc: &crate::state::SlotCfg,
    shutting_down: bool,
) -> Option<Record> {
    let label = format!("{name}.{idx}");
    let status = last.map(|l| l.to_string()).unwrap_or_default();
    let status = match last {
        Some(crate::state::LastExit::Killed(st, crate::state::KillCause::Oom)) => {
            format!("{st} (OOM-killed by the kernel: above memory_hard in its cgroup)")
        }
        Some(crate::state::LastExit::Killed(st, _)) => {
            format!("{st} (killed by drover: above memory_hard)")
        }
        Some(crate::state::LastExit::Stopped(st, _)) => st.to_string(),
        _ => status,
    };
    let record = |warn: bool, message: String| {
        Some(Record {
            warn,
            program: name.to_string(),
            index: idx,
            pid,
            message,
            unasked: !matches!(exit.next, Next::Stopped(_)),
        })
    };
    match exit.next {
        // a worker not yet told to stop (its dependents stop first) that ends meanwhile
        Next::RestartNow | Next::RestartIn { .. } if shutting_down => record(true, format!("worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; drover is shutting down: not restarting")),
        Next::Stopped(why) => record(false, format!("worker {label} (pid {pid}) stopped ({}): {status}", why.as_str())),
        Next::RestartNow => record(true, format!("worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting now")),
        Next::RestartIn { delay, failures } => record(true, format!(
            "worker {label} (pid {pid}) exited with {status} after {uptime:.1?}; restarting in {delay:.1?} ({failures} consecutive quick failure{})",
            plural(failures as usize)
        )),
        Next::NotRestarting => record(false, format!("worker {label} (pid {pid}) exited with {status}; restart = \"{}\": not restarting", sc.policy.word())),
        Next::Ignored => None,
    }
}

//! Program output to files (`[program.NAME.log] file = ...`): one writer thread per file, fed by
//! the program's pumps through a bounded queue, rotating by size on a line boundary.
//!
//! A pump hands each line to its program's `Sink`. While the disk keeps up and the queue is full,
//! the pump waits (as it would on a terminal: the pipe fills, the worker blocks on write). When
//! the writer has made no progress for `STALL` (a hung disk, a dead NFS server), the pump drops
//! the line instead and counts it (`stalled`), and goes on dropping without waiting while the
//! queue stays full: a worker is never stalled by its log file. Lines the writer cannot write
//! (`ENOSPC`/`EDQUOT`: `disk_full`; any other error: `io_error`; no file open: `unwritable`) are
//! dropped and counted by the writer, which keeps taking lines, so the queue never fills on a
//! full disk. When writing works again, a marker line `[drover: N lines dropped: why]` comes
//! first. The counts are drover's metrics (`api/metrics.rs`).
//!
//! A program whose file cannot be opened (at start or when a reload names a new one) has its
//! lines on drover's stdout instead, as without a file, and an error names the file; a reload
//! tries again.

mod open;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::output::Line;
use crate::config::log::LogFileCfg;
use crate::config::{LogMode, ProgramCfg};

/// The writer made no progress for this long: the disk is stalled and lines are dropped.
pub const STALL: Duration = Duration::from_millis(500);
/// Lines queued for one file before a pump waits (or, the disk stalled, drops).
const QUEUE: usize = 1024;

/// Why lines were dropped instead of written, as `drover_log_file_lines_dropped_total`'s `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// the file system is full (ENOSPC) or the user's quota is (EDQUOT)
    DiskFull = 0,
    /// the writer made no progress for `STALL`
    Stalled = 1,
    /// a write failed otherwise (EIO, ...)
    IoError = 2,
    /// no file is open: reopening after a rotation failed
    Unwritable = 3,
}

impl Dropped {
    pub const ALL: [Dropped; 4] = [
        Dropped::DiskFull,
        Dropped::Stalled,
        Dropped::IoError,
        Dropped::Unwritable,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Dropped::DiskFull => "disk_full",
            Dropped::Stalled => "stalled",
            Dropped::IoError => "io_error",
            Dropped::Unwritable => "unwritable",
        }
    }

    /// The marker line's words.
    fn why(self) -> &'static str {
        match self {
            Dropped::DiskFull => "the disk was full",
            Dropped::Stalled => "the disk made no progress for 500ms",
            Dropped::IoError => "writing failed",
            Dropped::Unwritable => "the file could not be opened",
        }
    }
}

/// A program's file figures, process-wide (as `writer::dropped_total`), for /metrics.
#[derive(Default)]
pub struct Stats {
    pub bytes: AtomicU64,
    pub rotations: AtomicU64,
    dropped: [AtomicU64; 4],
}

impl Stats {
    pub fn dropped(&self, why: Dropped) -> u64 {
        self.dropped[why as usize].load(Ordering::Relaxed)
    }

    fn count(&self, why: Dropped, n: u64) {
        self.dropped[why as usize].fetch_add(n, Ordering::Relaxed);
    }
}

static STATS: Mutex<BTreeMap<String, Arc<Stats>>> = Mutex::new(BTreeMap::new());

/// Every program that has had a log file, with its figures.
pub fn stats() -> Vec<(String, Arc<Stats>)> {
    let s = STATS.lock().unwrap_or_else(|e| e.into_inner());
    s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn stats_for(program: &str) -> Arc<Stats> {
    let mut s = STATS.lock().unwrap_or_else(|e| e.into_inner());
    s.entry(program.to_string()).or_default().clone()
}

/// A line on its way to a file: the time it was read, for its timestamp.
pub(super) struct Entry {
    pub line: Line,
    pub at: SystemTime,
}

pub(super) enum Msg {
    Line(Entry),
    /// the configuration changed (a reload): look at `Shared::want`
    Wake,
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// What a program's pumps, the registry and its writer thread share.
pub(super) struct Shared {
    program: String,
    /// a file is open: pumps send lines here rather than to drover's stdout
    open: AtomicBool,
    /// the writer made no progress for `STALL` while the queue was full: drop without waiting
    stalled: AtomicBool,
    /// stalled drops not yet told in a marker line
    unmarked: AtomicU64,
    stats: Arc<Stats>,
    /// the file to write (None: none any more), and how many configurations were asked for
    want: Mutex<(Option<LogFileCfg>, u64)>,
    /// how many the writer has acted on, and a wake-up for whoever waits for that
    done: (Mutex<u64>, Condvar),
}

/// One program's file: where its pumps hand lines.
pub struct Sink {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
}

impl Sink {
    fn start(program: &str) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            program: program.to_string(),
            open: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            unmarked: AtomicU64::new(0),
            stats: stats_for(program),
            want: Mutex::new((None, 0)),
            done: (Mutex::new(0), Condvar::new()),
        });
        writer::spawn(shared.clone(), rx);
        Sink { tx, shared }
    }

    fn want(&self, cfg: Option<LogFileCfg>) {
        let mut w = self.shared.want.lock().unwrap_or_else(|e| e.into_inner());
        w.0 = cfg;
        w.1 += 1;
        drop(w);
        // a full queue means the writer is busy and looks at `want` before its next batch
        let _ = self.tx.try_send(Msg::Wake);
    }

    /// Hand `line` to the file. Gives it back when no file is open (it goes to stdout then).
    pub async fn write(&self, line: Line) -> Option<Line> {
        if !self.shared.open.load(Ordering::Acquire) {
            return Some(line);
        }
        let e = Entry {
            line,
            at: SystemTime::now(),
        };
        let e = match self.tx.try_send(Msg::Line(e)) {
            Ok(()) => return None,
            Err(mpsc::error::TrySendError::Full(m)) => m,
            Err(mpsc::error::TrySendError::Closed(Msg::Line(e))) => return Some(e.line),
            Err(mpsc::error::TrySendError::Closed(_)) => return None,
        };
        if self.shared.stalled.load(Ordering::Acquire) {
            self.drop_stalled();
            return None;
        }
        match tokio::time::timeout(STALL, self.tx.send(e)).await {
            Ok(Ok(())) => None,
            Ok(Err(mpsc::error::SendError(Msg::Line(e)))) => Some(e.line),
            Ok(Err(_)) => None,
            Err(_) => {
                self.shared.stalled.store(true, Ordering::Release);
                self.drop_stalled();
                None
            }
        }
    }

    fn drop_stalled(&self) {
        self.shared.stats.count(Dropped::Stalled, 1);
        self.shared.unmarked.fetch_add(1, Ordering::Relaxed);
    }

    /// Wait (a blocking wait: at start, before the loop runs) until the writer has acted on the
    /// last configuration, for at most `within`.
    fn wait_acted(&self, within: Duration) {
        let asked = self.shared.want.lock().unwrap_or_else(|e| e.into_inner()).1;
        let (m, cv) = &self.shared.done;
        let done = m.lock().unwrap_or_else(|e| e.into_inner());
        let _ = cv.wait_timeout_while(done, within, |d| *d < asked);
    }
}

/// Every program's sink, by program name. A sink outlives reloads: pumps of workers started
/// before a reload write to the file the reload named.
#[derive(Default)]
pub struct Files {
    sinks: Mutex<HashMap<String, Arc<Sink>>>,
}

impl Files {
    /// Open (or reopen: a reload, or logrotate moved the file away) each program's file, close
    /// those no longer configured. Never waits: the writers do the file work.
    pub fn configure(&self, programs: &[ProgramCfg]) {
        let mut sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        for p in programs {
            let file = p.log_file.clone().filter(|_| p.log == LogMode::Capture);
            match (sinks.get(&p.name), file) {
                (Some(s), f) => s.want(f),
                (None, Some(f)) => {
                    let s = Sink::start(&p.name);
                    s.want(Some(f));
                    sinks.insert(p.name.clone(), Arc::new(s));
                }
                (None, None) => {}
            }
        }
        for (name, s) in sinks.iter() {
            if !programs.iter().any(|p| &p.name == name) {
                s.want(None);
            }
        }
    }

    /// At start: give the writers up to `within` to open their files, so a program's first lines
    /// land in its file and an unopenable file is reported before any worker starts.
    pub fn wait_opened(&self, within: Duration) {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        let deadline = std::time::Instant::now() + within;
        for s in sinks.values() {
            s.wait_acted(deadline.saturating_duration_since(std::time::Instant::now()));
        }
    }

    /// The sink of `program`'s lines, if it has (had) a file.
    pub fn sink(&self, program: &str) -> Option<Arc<Sink>> {
        let sinks = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
        sinks.get(program).cloned()
    }

    /// Have every writer write what it was given, by `by`. False if one did not.
    pub async fn flush(&self, by: tokio::time::Instant) -> bool {
        let sinks: Vec<Arc<Sink>> = {
            let s = self.sinks.lock().unwrap_or_else(|e| e.into_inner());
            s.values().cloned().collect()
        };
        let mut ok = true;
        for s in sinks {
            let (ack, done) = tokio::sync::oneshot::channel();
            let asked = tokio::time::timeout_at(by, s.tx.send(Msg::Flush(ack))).await;
            ok &= matches!(asked, Ok(Ok(())))
                && matches!(tokio::time::timeout_at(by, done).await, Ok(Ok(())));
        }
        ok
    }
}

//! Each program's recent output lines, kept in memory for `GET /programs/NAME/logs`,
//! `drover logs` and a crashed worker's last words.
//!
//! One `ProgramRing` per program whose output drover captures, in the `Rings` registry shared by
//! the output pumps (which push) and the status server (which reads and follows). A push takes
//! the ring's mutex for a few pointer moves (no I/O, no await under it), then hands the line to
//! a bounded `broadcast` channel that every follower of the program shares: a follower that falls
//! behind loses the oldest lines *it* had not read (it is told how many), never the pump's time
//! or anyone else's lines.
//!
//! Memory is bounded twice: at most `lines` entries, and at most `byte_budget(lines)` bytes of
//! text plus `ENTRY_OVERHEAD` per entry (the oldest go first); the broadcast channels hold at
//! most `FOLLOW_BUFFER` entries each, shared by all their receivers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{broadcast, watch, Semaphore};

use crate::config::{LogMode, ProgramCfg};

/// Bytes an entry costs beside its text (the struct, its Arc, the deque's slot), roughly.
pub const ENTRY_OVERHEAD: usize = 96;
/// The most text one program's ring holds, whatever its `lines`.
pub const MAX_RING_BYTES: usize = 1 << 20;
/// Lines a follower may fall behind before it skips (per channel, shared by its receivers).
pub const FOLLOW_BUFFER: usize = 1024;
/// Followers at once, across all programs; more are answered 503.
pub const MAX_FOLLOWERS: usize = 128;
/// Ends a last word cut to fit.
const CUT: &str = " [cut]";

/// The bytes a ring of `lines` lines may hold: ~512 a line, at most `MAX_RING_BYTES`, and always
/// room for one line of the longest kind (16 KiB, as the pump splits them, counted twice: as
/// read and as JSON).
pub fn byte_budget(lines: usize) -> usize {
    (lines.saturating_mul(512)).clamp(2 * super::output::MAX_LINE + ENTRY_OVERHEAD, MAX_RING_BYTES)
}

/// One line a worker printed.
#[derive(Debug)]
pub struct Entry {
    /// per program, from 1, never reused while drover runs
    pub seq: u64,
    /// unix time in milliseconds, when the pump read it
    pub time_ms: u64,
    pub program: Arc<str>,
    /// None for a line not from a worker
    pub worker: Option<u32>,
    pub pid: Option<i32>,
    /// lossy UTF-8, without its newline (or a carriage return before it)
    pub text: String,
    /// the line was longer than the pump's 16 KiB: more of it follows in the next entry
    pub split: bool,
    /// `json()`, made once by the first reader that needs it (on the status thread, never by
    /// the pump), then shared by every follower
    json: OnceLock<String>,
}

impl Entry {
    /// What it holds in the ring: its text, and its JSON form once made.
    fn cost(&self) -> usize {
        2 * self.text.len() + ENTRY_OVERHEAD
    }

    /// `drover.0`, as drover's own stdout labels it.
    pub fn label(&self) -> String {
        match self.worker {
            Some(w) => format!("{}.{w}", self.program),
            None => self.program.to_string(),
        }
    }

    /// The entry as one JSON object. `stream` is "output": a worker's stdout and stderr share one
    /// pipe, so which of the two a line came from is not known.
    pub fn json(&self) -> &str {
        self.json.get_or_init(|| self.to_json())
    }

    fn to_json(&self) -> String {
        serde_json::json!({
            "seq": self.seq,
            "time": self.time_ms,
            "program": &*self.program,
            "worker": self.worker,
            "pid": self.pid,
            "stream": "output",
            "line": self.text,
            "split": self.split,
        })
        .to_string()
    }
}

struct State {
    lines: VecDeque<Arc<Entry>>,
    bytes: usize,
    cap_lines: usize,
    cap_bytes: usize,
    next_seq: u64,
}

impl State {
    fn evict(&mut self) {
        while self.lines.len() > self.cap_lines
            || (self.bytes > self.cap_bytes && self.lines.len() > 1)
        {
            match self.lines.pop_front() {
                Some(e) => self.bytes -= e.cost(),
                None => break,
            }
        }
    }
}

/// One program's ring and its followers' channel.
pub struct ProgramRing {
    pub name: Arc<str>,
    state: Mutex<State>,
    tx: broadcast::Sender<Arc<Entry>>,
    /// every program's lines, for `GET /logs`
    all: broadcast::Sender<Arc<Entry>>,
    inherit: AtomicBool,
    /// lines the pump handed over (kept, or pushed out of the ring since)
    pub captured: AtomicU64,
    /// lines followers of this program skipped because they read slower than it printed
    pub skipped: AtomicU64,
}

impl std::fmt::Debug for ProgramRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProgramRing({})", self.name)
    }
}

impl ProgramRing {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep a line the pump read and pass it to the followers.
    pub fn push(&self, worker: Option<u32>, pid: Option<i32>, text: String, split: bool) {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let entry = {
            let mut st = self.lock();
            st.next_seq += 1;
            let e = Arc::new(Entry {
                seq: st.next_seq,
                time_ms,
                program: self.name.clone(),
                worker,
                pid,
                text,
                split,
                json: OnceLock::new(),
            });
            if st.cap_lines > 0 {
                st.bytes += e.cost();
                st.lines.push_back(e.clone());
                st.evict();
            }
            e
        };
        self.captured.fetch_add(1, Ordering::Relaxed);
        // no receiver is not an error: nobody follows
        let _ = self.tx.send(entry.clone());
        let _ = self.all.send(entry);
    }

    /// Whether drover does not capture this program's output (`log = "inherit"`).
    pub fn inherited(&self) -> bool {
        self.inherit.load(Ordering::Relaxed)
    }

    /// How many lines the ring holds at most.
    pub fn capacity(&self) -> usize {
        self.lock().cap_lines
    }

    /// The last `n` entries that `keep` accepts, oldest first.
    pub fn last(&self, n: usize, keep: impl Fn(&Entry) -> bool) -> Vec<Arc<Entry>> {
        self.last_and_subscribe(n, keep, false).0
    }

    /// `last`, and (if `follow`) a receiver of every line pushed after them: taken under the same
    /// lock, so no line is missed or sent twice between the two.
    pub fn last_and_subscribe(
        &self,
        n: usize,
        keep: impl Fn(&Entry) -> bool,
        follow: bool,
    ) -> (Vec<Arc<Entry>>, Option<broadcast::Receiver<Arc<Entry>>>) {
        let st = self.lock();
        let rx = follow.then(|| self.tx.subscribe());
        let mut out: Vec<Arc<Entry>> = st
            .lines
            .iter()
            .rev()
            .filter(|e| keep(e))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        (out, rx)
    }

    /// A worker's last lines: at most `lines` of them and `bytes` of text, oldest first.
    pub fn last_words(&self, worker: u32, pid: i32, lines: usize, bytes: usize) -> Vec<String> {
        let st = self.lock();
        let mut out = vec![];
        let mut total = 0;
        for e in st.lines.iter().rev() {
            if e.worker != Some(worker) || e.pid != Some(pid) {
                continue;
            }
            if out.len() == lines {
                break;
            }
            // a line longer than a quarter of the budget is cut to that, so one long line (an
            // exception's message, a JSON record) does not hide the traceback before it
            let text = if e.text.len() > bytes / 4 {
                let cut = e
                    .text
                    .floor_char_boundary((bytes / 4).saturating_sub(CUT.len()));
                format!("{}{CUT}", &e.text[..cut])
            } else {
                e.text.clone()
            };
            if total + text.len() > bytes {
                break;
            }
            total += text.len();
            out.push(text);
        }
        out.reverse();
        out
    }

    fn configure(&self, cfg: &ProgramCfg) {
        self.inherit
            .store(cfg.log == LogMode::Inherit, Ordering::Relaxed);
        let mut st = self.lock();
        st.cap_lines = cfg.log_lines;
        st.cap_bytes = byte_budget(cfg.log_lines);
        st.evict();
    }
}

/// Every program's ring, by name; shared by the pumps and the status server.
pub struct Rings {
    map: Mutex<HashMap<String, Arc<ProgramRing>>>,
    all: broadcast::Sender<Arc<Entry>>,
    /// one permit per follower
    pub followers: Arc<Semaphore>,
    /// true once drover is about to exit: followers end their responses
    closing: watch::Sender<bool>,
    /// lines followers of every program (`GET /logs`) skipped
    pub skipped_all: AtomicU64,
}

impl Default for Rings {
    fn default() -> Self {
        Rings {
            map: Mutex::default(),
            all: broadcast::channel(FOLLOW_BUFFER).0,
            followers: Arc::new(Semaphore::new(MAX_FOLLOWERS)),
            closing: watch::channel(false).0,
            skipped_all: AtomicU64::new(0),
        }
    }
}

impl Rings {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<ProgramRing>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make the rings match the configured programs: one each (new ones empty), resized to
    /// their `log_lines`; a program no longer configured loses its ring (its workers' pumps
    /// still hold it until they end).
    pub fn configure(&self, programs: &[ProgramCfg]) {
        let mut map = self.lock();
        map.retain(|name, _| programs.iter().any(|p| &p.name == name));
        for p in programs {
            let ring = map.entry(p.name.clone()).or_insert_with(|| {
                Arc::new(ProgramRing {
                    name: Arc::from(p.name.as_str()),
                    state: Mutex::new(State {
                        lines: VecDeque::new(),
                        bytes: 0,
                        cap_lines: 0,
                        cap_bytes: 0,
                        next_seq: 0,
                    }),
                    tx: broadcast::channel(FOLLOW_BUFFER).0,
                    all: self.all.clone(),
                    inherit: AtomicBool::new(false),
                    captured: AtomicU64::new(0),
                    skipped: AtomicU64::new(0),
                })
            });
            ring.configure(p);
        }
    }

    pub fn get(&self, program: &str) -> Option<Arc<ProgramRing>> {
        self.lock().get(program).cloned()
    }

    /// Every ring, by name.
    pub fn all(&self) -> Vec<Arc<ProgramRing>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    pub fn subscribe_all(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.all.subscribe()
    }

    /// Followers end their responses (drover is exiting).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Followers still streaming.
    pub fn following(&self) -> usize {
        MAX_FOLLOWERS - self.followers.available_permits()
    }

    /// `drover_log_lines_total` and `drover_log_follow_skipped_total`, in Prometheus text.
    pub fn metrics(&self) -> String {
        use std::fmt::Write;
        let rings = self.all();
        let mut o = String::from("# HELP drover_log_lines_total Output lines read from each program's workers (kept in its ring, or passed through when it keeps none).\n# TYPE drover_log_lines_total counter\n");
        for r in &rings {
            let n = r.captured.load(Ordering::Relaxed);
            let _ = writeln!(o, "drover_log_lines_total{{program=\"{}\"}} {n}", r.name);
        }
        o.push_str("# HELP drover_log_follow_skipped_total Lines followers of a program's output skipped because they read slower than it printed (the line is still in the ring and the output).\n# TYPE drover_log_follow_skipped_total counter\n");
        for r in &rings {
            let n = r.skipped.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "drover_log_follow_skipped_total{{program=\"{}\"}} {n}",
                r.name
            );
        }
        let _ = writeln!(o, "# HELP drover_log_follow_all_skipped_total Lines followers of every program's output (GET /logs) skipped because they read slower than drover's programs printed.\n# TYPE drover_log_follow_all_skipped_total counter\ndrover_log_follow_all_skipped_total {}", self.skipped_all.load(Ordering::Relaxed));
        let _ = writeln!(o, "# HELP drover_log_followers Clients following output now.\n# TYPE drover_log_followers gauge\ndrover_log_followers {}", self.following());
        o
    }
}

#[cfg(test)]
mod tests;

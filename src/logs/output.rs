//! Worker and step output: read from a pipe per process, split into lines, prefixed, written by
//! one writer thread.
//!
//! Memory is bounded: each reader holds one read buffer and at most `MAX_LINE` bytes of a pending
//! line (longer lines are split and marked, never lost), and the channel to the writer is
//! bounded. When the terminal or log collector is slower than a worker, the reader waits, the
//! pipe fills and the worker blocks on write, as it would on a terminal; drover's event loop is
//! never in that path.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::io::AsyncReadExt;

use tokio::sync::{mpsc, Notify};
use tracing::error;

use super::file::{Files, Sink};
use super::{now_rfc3339, Style};

pub const MAX_LINE: usize = 16 * 1024;
const READ_BUF: usize = 4096;

pub struct Line {
    pub source: Arc<Source>,
    pub text: Vec<u8>,
    /// the line was split because it exceeded MAX_LINE; more of it follows
    pub split: bool,
}

#[derive(Debug)]
pub struct Source {
    /// `api.0` or `step.migrate`
    pub label: String,
    pub program: String,
    pub worker: Option<u32>,
    pub color: u8,
    /// the program's ring, when its lines are kept (`ring.rs`)
    pub ring: Option<Arc<super::ring::ProgramRing>>,
    /// the process writing to the pipe, once known (0 before: a preloader forks it later)
    pub pid: AtomicI32,
}

/// What the writer thread receives: a line, or a request to flush and say so.
enum Msg {
    Line(Line),
    Flush(tokio::sync::oneshot::Sender<()>),
}

#[derive(Clone)]
pub struct Output {
    tx: mpsc::Sender<Msg>,
    /// pumps still reading a pipe, and a wake-up for `settle` when one ends
    pumps: Arc<(AtomicUsize, Notify)>,
    /// each program's recent lines, shared with the status server
    rings: Arc<super::ring::Rings>,
    /// programs' log files (`file.rs`): a program's lines go there instead of `tx` when open
    files: Arc<Files>,
}

/// Counts a pump while it runs, on every path out of it.
struct Pumping(Arc<(AtomicUsize, Notify)>);

impl Pumping {
    fn new(p: &Arc<(AtomicUsize, Notify)>) -> Pumping {
        p.0.fetch_add(1, Ordering::SeqCst);
        Pumping(p.clone())
    }
}

impl Drop for Pumping {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }
}

impl Output {
    /// Start the writer thread.
    pub fn start(style: Style) -> Output {
        let (tx, mut rx) = mpsc::channel::<Msg>(256);
        std::thread::Builder::new()
            .name("drover-output".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                let mut out = std::io::BufWriter::with_capacity(16 * 1024, stdout.lock());
                let mut acks = vec![];
                while let Some(first) = rx.blocking_recv() {
                    let mut next = Some(first);
                    while let Some(m) = next {
                        match m {
                            Msg::Line(l) => write_line(&mut out, style, &l),
                            Msg::Flush(ack) => acks.push(ack),
                        }
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                    for ack in acks.drain(..) {
                        let _ = ack.send(());
                    }
                }
            })
            .expect("spawning the output thread");
        Output {
            tx,
            pumps: Arc::new((AtomicUsize::new(0), Notify::new())),
            rings: Arc::default(),
            files: Arc::default(),
        }
    }

    /// The rings the pumps fill, for the status server and the loop.
    pub fn rings(&self) -> &Arc<super::ring::Rings> {
        &self.rings
    }

    /// The programs' log files, to (re)configure at start and on reload.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Before drover exits: let every pump read its pipe to the end (a worker's last lines are
    /// still in it when its exit is reaped), for at most `within`, then have the writer flush, for
    /// at most `within` again: a stdout nobody reads (a full pipe, a stalled log collector) keeps
    /// the writer and the pumps blocked, and must not keep drover from exiting. Logs what was
    /// left undone.
    pub async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // registered before the count is read, so a pump that ends in between still wakes us
            let woken = self.pumps.1.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.pumps.0.load(Ordering::SeqCst) == 0
                || tokio::time::timeout_at(deadline, woken).await.is_err()
            {
                break;
            }
        }
        let open = self.pumps.0.load(Ordering::SeqCst);
        let (ack, flushed) = tokio::sync::oneshot::channel();
        let by = tokio::time::Instant::now() + within;
        let asked = tokio::time::timeout_at(by, self.tx.send(Msg::Flush(ack))).await;
        let flushed = matches!(asked, Ok(Ok(())))
            && matches!(tokio::time::timeout_at(by, flushed).await, Ok(Ok(())));
        if !self.files.flush(by).await {
            error!("worker output: a log file took no line for {within:?} (a stalled disk); the lines still queued for it are lost");
        }
        if !flushed {
            error!("worker output: stdout took no line for {within:?} (a full pipe, a stalled log collector, a paused terminal); the output still queued is lost");
        } else if open > 0 {
            error!("{open} output pipe(s) still open {within:?} after their workers ended (held by a process that outlived its worker); their last lines may be lost");
        }
        self.end_followers(within).await;
    }

    /// Every line is in the rings now: followers end their responses, and get at most `within`
    /// to do so (a follower that does not read is not waited for longer).
    async fn end_followers(&self, within: Duration) {
        self.rings.close();
        let by = tokio::time::Instant::now() + within;
        while self.rings.following() > 0 && tokio::time::Instant::now() < by {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Read `fd` to EOF, forwarding lines. Returns the last `keep` lines (for step errors).
    ///
    /// The pump counts as running from this call, not from when its task is first polled: a
    /// worker that prints and exits before the loop yields even once must still have its lines
    /// read before `settle` lets drover exit.
    pub fn pump(
        &self,
        source: Arc<Source>,
        fd: OwnedFd,
        keep: usize,
    ) -> impl std::future::Future<Output = VecDeque<String>> + Send + 'static {
        let pumping = Pumping::new(&self.pumps);
        let this = self.clone();
        async move {
            let _pumping = pumping;
            this.read_pipe(source, fd, keep).await
        }
    }

    async fn read_pipe(&self, source: Arc<Source>, fd: OwnedFd, keep: usize) -> VecDeque<String> {
        let mut tail = VecDeque::new();
        // a worker's or its preloader's lines go to the program's file, if it has one; a
        // step's (`step.NAME`, no worker) never do
        let preloader =
            source.worker.is_none() && source.label == format!("{}.preload", source.program);
        let file = (source.worker.is_some() || preloader)
            .then(|| self.files.sink(&source.program))
            .flatten();
        let file = file.as_deref();
        let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return tail;
        };
        let mut buf = vec![0u8; READ_BUF];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            let n = match rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut chunk = &buf[..n];
            while !chunk.is_empty() {
                if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
                    pending.extend_from_slice(&chunk[..i]);
                    chunk = &chunk[i + 1..];
                    let text = std::mem::take(&mut pending);
                    self.emit(&source, file, text, false, keep, &mut tail).await;
                } else {
                    let room = MAX_LINE - pending.len();
                    let take = room.min(chunk.len());
                    pending.extend_from_slice(&chunk[..take]);
                    chunk = &chunk[take..];
                    if pending.len() >= MAX_LINE {
                        let text = std::mem::take(&mut pending);
                        self.emit(&source, file, text, true, keep, &mut tail).await;
                    }
                }
            }
        }
        if !pending.is_empty() {
            self.emit(&source, file, pending, false, keep, &mut tail)
                .await;
        }
        tail
    }

    async fn emit(
        &self,
        source: &Arc<Source>,
        file: Option<&Sink>,
        text: Vec<u8>,
        split: bool,
        keep: usize,
        tail: &mut VecDeque<String>,
    ) {
        if let Some(ring) = &source.ring {
            let pid = source.pid.load(Ordering::Relaxed);
            let mut line = String::from_utf8_lossy(&text).into_owned();
            if line.ends_with('\r') {
                line.pop();
            }
            ring.push(source.worker, (pid > 0).then_some(pid), line, split);
        }
        if keep > 0 {
            if tail.len() == keep {
                tail.pop_front();
            }
            let mut s = String::from_utf8_lossy(&text).into_owned();
            s.truncate(s.floor_char_boundary(512));
            tail.push_back(s);
        }
        let mut line = Line {
            source: source.clone(),
            text,
            split,
        };
        if let Some(f) = file {
            match f.write(line).await {
                Some(back) => line = back,
                None => return,
            }
        }
        let _ = self.tx.send(Msg::Line(line)).await;
    }
}

const COLORS: [u8; 6] = [36, 32, 33, 35, 34, 31];

pub fn color_for(name: &str) -> u8 {
    let h = name
        .bytes()
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    COLORS[(h as usize) % COLORS.len()]
}

fn write_line(out: &mut impl Write, style: Style, l: &Line) {
    let text = String::from_utf8_lossy(&l.text);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let marker = if l.split { " [line continues]" } else { "" };
    let _ = match style {
        Style::Text { color: true } => writeln!(
            out,
            "\x1b[{}m{} |\x1b[0m {}{}",
            l.source.color, l.source.label, text, marker
        ),
        Style::Text { color: false } => writeln!(out, "{} | {}{}", l.source.label, text, marker),
        Style::Json => {
            let mut v = serde_json::json!({
                "timestamp": now_rfc3339(),
                "program": l.source.program,
                "source": l.source.label,
                "line": text,
            });
            if let Some(w) = l.source.worker {
                v["worker"] = w.into();
            }
            if l.split {
                v["split"] = true.into();
            }
            writeln!(out, "{v}")
        }
    };
}

//! drover's own log lines reach stderr (or the journal) through here, never by a write on the
//! thread that logs: that thread formats the line and queues it without waiting; one thread,
//! `drover-log`, does the writes that can block. A full pipe, a stalled log collector or a paused
//! terminal then stops only that thread, never the event loop.
//!
//! The queue holds at most `MAX_LINES` lines and `MAX_BYTES` bytes. A line that does not fit is
//! dropped and counted (`dropped_total`, exported as `drover_log_lines_dropped_total`); the line
//! queued after the gap carries the count, and the writer writes a marker saying how many lines
//! are missing right where they are missing (a gap at the end of the queue is marked when the
//! queue empties). So a line is never dropped without a marker, and the memory held is bounded:
//! the queue plus the one entry the writer is writing.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// 1,024 lines: a burst of a few hundred workers starting or exiting at once (2-4 lines each), at
/// ~250 bytes a JSON line about 256 KiB.
pub const MAX_LINES: usize = 1024;
/// 1 MiB: caps the memory when lines are long (a failed step's last output lines, a list of
/// configuration errors), whatever their number. A single entry larger than this is still taken
/// when the queue is empty, so no line is too long ever to be written.
pub const MAX_BYTES: usize = 1 << 20;

const THREAD: &str = "drover-log";

static QUEUE: OnceLock<&'static Queue> = OnceLock::new();

/// Lines of drover's own log dropped since drover started: the queue was full, or the write
/// failed.
pub fn dropped_total() -> u64 {
    QUEUE.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// Where the writer thread delivers entries. Its calls may block: only `drover-log` makes them.
pub trait Sink: Send + 'static {
    /// Deliver one entry (a formatted line, a journal datagram).
    fn write(&mut self, entry: &[u8]) -> io::Result<()>;
    /// The entry that says `n` entries were dropped, in the same format as the others.
    fn marker(&mut self, n: u64) -> Vec<u8>;
}

/// Start the writer thread on `sink`; entries queued from now on go to it. Once per process: if
/// the thread cannot be started, entries keep being written to stderr directly.
pub fn start(sink: impl Sink) -> io::Result<()> {
    if QUEUE.get().is_some() {
        return Err(io::Error::other("the log writer is already running"));
    }
    // lives as long as the process: the thread and every logging thread share it
    let q: &'static Queue = Box::leak(Box::default());
    std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || q.run(sink))?;
    let _ = QUEUE.set(q);
    Ok(())
}

/// Queue one entry without waiting: dropped and counted when the queue is full. Before `start`
/// (nothing else runs yet) the entry is written to stderr directly.
pub fn send(bytes: Vec<u8>) {
    match QUEUE.get() {
        Some(q) => q.push(bytes),
        None => {
            let _ = write_stderr(&bytes);
        }
    }
}

/// Wait, at most `within`, until every queued entry is written: before drover exits, so its last
/// lines are not lost. False when the writer could not finish in time (stderr still blocked).
pub fn flush(within: Duration) -> bool {
    match QUEUE.get() {
        Some(_) if std::thread::current().name() == Some(THREAD) => false,
        Some(q) => q.flush(within),
        None => true,
    }
}

struct Entry {
    /// entries dropped just before this one
    gap: u64,
    bytes: Vec<u8>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Entry>,
    bytes: usize,
    /// dropped since the last queued entry: the next entry carries it
    gap: u64,
    /// the writer holds an entry or a marker it has not finished writing
    busy: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    /// the writer waits here for entries
    work: Condvar,
    /// `flush` waits here for the writer to be idle
    idle: Condvar,
    dropped: AtomicU64,
}

enum Next {
    Entry(Entry),
    /// a gap at the end of the queue
    Marker(u64),
}

impl Queue {
    /// Every critical section is a few pointer moves: no I/O is ever done under this lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, bytes: Vec<u8>) {
        let mut st = self.lock();
        let fits = st.queue.is_empty()
            || (st.queue.len() < MAX_LINES && st.bytes + bytes.len() <= MAX_BYTES);
        if !fits {
            st.gap += 1;
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let gap = std::mem::take(&mut st.gap);
        st.bytes += bytes.len();
        st.queue.push_back(Entry { gap, bytes });
        if !st.busy {
            self.work.notify_one();
        }
    }

    fn flush(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut st = self.lock();
        while st.busy || !st.queue.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }

    /// The next thing to write, waiting for one.
    fn next(&self, failing: bool) -> Next {
        let mut st = self.lock();
        loop {
            if let Some(e) = st.queue.pop_front() {
                st.bytes -= e.bytes.len();
                st.busy = true;
                return Next::Entry(e);
            }
            // after a failed write, a gap at the end waits for the next entry instead of being
            // retried at once (which would spin while stderr is closed)
            if st.gap > 0 && !failing {
                st.busy = true;
                return Next::Marker(std::mem::take(&mut st.gap));
            }
            st.busy = false;
            self.idle.notify_all();
            st = self.work.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The writer thread: take the next entry under the lock, write it without the lock.
    fn run(&self, mut sink: impl Sink) {
        let mut failing = false;
        loop {
            let (gap, entry) = match self.next(failing) {
                Next::Entry(e) => (e.gap, Some(e.bytes)),
                Next::Marker(n) => (n, None),
            };
            let mut lost = 0;
            if gap > 0 {
                let marker = sink.marker(gap);
                if sink.write(&marker).is_err() {
                    // still unmarked: counted in the next marker, not in the total twice
                    lost += gap;
                }
            }
            if let Some(bytes) = entry {
                if sink.write(&bytes).is_err() {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    lost += 1;
                }
            }
            failing = lost > 0;
            if lost > 0 {
                self.lock().gap += lost;
            }
        }
    }
}

/// Write all of `bytes` to fd 2, waiting while it is non-blocking and full (an O_NONBLOCK set
/// by whoever shares the file description must not lose lines).
pub fn write_stderr(mut bytes: &[u8]) -> io::Result<()> {
    let mut err = io::stderr().lock();
    while !bytes.is_empty() {
        match err.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let mut fd = libc::pollfd {
                    fd: libc::STDERR_FILENO,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, borrowed for the call; fd 2 is open (ensure_stdio).
                unsafe { libc::poll(&mut fd, 1, -1) };
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `MakeWriter` of drover's fmt subscriber: each event's formatted text is queued as one
/// entry when the writer the subscriber made for it is dropped.
pub struct Queued;

/// One event's text, queued on drop.
pub struct Line(Vec<u8>);

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            send(std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Queued {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::sync::Arc;

    /// A sink that writes one entry per token it receives (all of them once the sender is gone),
    /// like a pipe that is read only when the test says so.
    struct Gated {
        tokens: mpsc::Receiver<()>,
        out: Arc<Mutex<Vec<String>>>,
    }

    impl Sink for Gated {
        fn write(&mut self, entry: &[u8]) -> io::Result<()> {
            let _ = self.tokens.recv();
            let line = String::from_utf8(entry.to_vec()).unwrap();
            self.out.lock().unwrap().push(line);
            Ok(())
        }

        fn marker(&mut self, n: u64) -> Vec<u8> {
            format!("marker {n}").into_bytes()
        }
    }

    fn gated() -> (&'static Queue, mpsc::Sender<()>, Arc<Mutex<Vec<String>>>) {
        let q: &'static Queue = Box::leak(Box::default());
        let (tx, tokens) = mpsc::channel();
        let out = Arc::new(Mutex::new(vec![]));
        let sink = Gated {
            tokens,
            out: out.clone(),
        };
        std::thread::spawn(move || q.run(sink));
        (q, tx, out)
    }

    /// Until the writer has taken what it was given (it then blocks on its next token).
    fn taken(q: &Queue, left: usize) {
        let end = Instant::now() + Duration::from_secs(10);
        while q.lock().queue.len() > left {
            assert!(Instant::now() < end, "the writer took nothing");
            std::thread::yield_now();
        }
    }

    fn lines(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("{prefix}{i}")).collect()
    }

    #[test]
    fn a_gap_is_marked_where_it_is_and_counted() {
        let (q, tokens, out) = gated();
        q.push(b"first".to_vec());
        taken(q, 0); // the writer holds "first", waiting to write it
        for l in lines("l", MAX_LINES) {
            q.push(l.into_bytes());
        }
        q.push(b"lost 1".to_vec());
        q.push(b"lost 2".to_vec());
        assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
        tokens.send(()).unwrap(); // "first" written; the writer takes l0
        taken(q, MAX_LINES - 1);
        q.push(b"after the gap".to_vec());
        drop(tokens); // the reader reads everything now
        assert!(q.flush(Duration::from_secs(10)));
        let mut want = vec!["first".to_string()];
        want.extend(lines("l", MAX_LINES));
        want.extend(["marker 2".into(), "after the gap".into()]);
        assert_eq!(*out.lock().unwrap(), want);
    }

    #[test]
    fn a_gap_at_the_end_is_marked_when_the_queue_empties() {
        let (q, tokens, out) = gated();
        q.push(b"first".to_vec());
        taken(q, 0);
        q.push(vec![b'x'; MAX_BYTES - 10]);
        q.push(vec![b'y'; 20]); // two lines, but over the byte bound
        assert_eq!(q.dropped.load(Ordering::Relaxed), 1);
        drop(tokens);
        assert!(q.flush(Duration::from_secs(10)));
        let out = out.lock().unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[2], "marker 1");
    }

    #[test]
    fn flush_gives_up_at_its_deadline_while_the_sink_is_blocked() {
        let (q, _tokens, _) = gated();
        q.push(b"stuck".to_vec());
        let t = Instant::now();
        assert!(!q.flush(Duration::from_millis(100)));
        assert!(t.elapsed() >= Duration::from_millis(100));
    }
}

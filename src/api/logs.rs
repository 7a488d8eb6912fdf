//! `GET /programs/NAME/logs` and `GET /logs` (every program): a program's recent output from its
//! ring (`logs/ring.rs`), as JSON lines (`application/x-ndjson`), one object per line:
//! `{"seq", "time", "program", "worker", "pid", "stream", "line", "split"}`.
//!
//! `n` (default 100, at most the ring's size) last lines, `worker=I` only worker I's, and with
//! `follow=1` the response goes on with every new line until the client leaves or drover exits
//! (the response then ends cleanly).
//!
//! # Followers and the status thread
//!
//! A follower is a task on the status thread that reads the program's `broadcast` channel
//! (bounded, shared by all followers) and hands the body one chunk at a time through a channel of
//! one: each wake-up gathers what has arrived, up to `CHUNK_BYTES`, into one chunk (each line's JSON is made once and
//! shared by every follower), and a follower
//! wakes at most every `CHUNK_EVERY`, so 100 followers of a program printing as fast as it can
//! cost the thread at most 100 × 50 short wake-ups a second, and `/healthz` keeps answering. A
//! follower that falls more than the channel's size behind gets `{"skipped": N}` in place of the
//! lines it missed and goes on (counted in `drover_log_follow_skipped_total`). A client that
//! stops reading holds one chunk in the channel and one in hyper's buffer, no more; after
//! `STALLED` without taking a chunk its follow ends. At most `MAX_FOLLOWERS` follow at once
//! (more: 503); each holds one of the listener's connections, counted as a request in flight
//! (never evicted as idle, not closed at the connection lifetime).

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};

use super::server::{error, Api};
use crate::logs::ring::{Entry, ProgramRing, MAX_FOLLOWERS};

/// Lines answered when `n` is not given.
pub const DEFAULT_LINES: usize = 100;
/// A follower's chunk holds at most this much (one more line may take it past): the work of one
/// wake-up, so the status thread's other tasks (`/healthz`) wait behind at most this per
/// follower.
const CHUNK_BYTES: usize = 8 * 1024;
/// A follower wakes at most this often.
const CHUNK_EVERY: Duration = Duration::from_millis(20);
/// A follower whose client has taken no chunk for this long is ended.
const STALLED: Duration = Duration::from_secs(60);
const NDJSON: &str = "application/x-ndjson";

/// What the query asks.
#[derive(Debug)]
struct Ask {
    n: usize,
    worker: Option<u32>,
    follow: bool,
}

fn parse(query: Option<&str>) -> Result<Ask, String> {
    let mut ask = Ask {
        n: DEFAULT_LINES,
        worker: None,
        follow: false,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "n" => {
                ask.n = v
                    .parse()
                    .map_err(|_| format!("n={v:?} is not a number of lines (n=100)"))?
            }
            "worker" => {
                ask.worker = Some(
                    v.parse()
                        .map_err(|_| format!("worker={v:?} is not a worker index (worker=0)"))?,
                )
            }
            "follow" => {
                ask.follow = match v {
                    "1" | "true" | "" => true,
                    "0" | "false" => false,
                    _ => return Err(format!("follow={v:?}: write follow=1 or follow=0")),
                }
            }
            _ => {
                return Err(format!(
                    "unknown parameter {k:?}; the parameters are n, worker, follow"
                ))
            }
        }
    }
    Ok(ask)
}

/// `GET /programs/NAME/logs`
pub async fn program(
    State(api): State<Api>,
    Path(name): Path<String>,
    headers: HeaderMap,
    req: Request,
) -> Response {
    if let Some(r) = super::server::output_refused(&api, &headers) {
        return r;
    }
    let ask = match parse(req.uri().query()) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let Some(ring) = api.rings.get(&name) else {
        let known: Vec<String> = api.rings.all().iter().map(|r| r.name.to_string()).collect();
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no program named {name:?}; drover runs: {}",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ),
        );
    };
    if ring.inherited() {
        return error(
            StatusCode::CONFLICT,
            format!("{name}'s output is inherited (log = \"inherit\"): drover does not capture it; see drover's stdout or the platform's log"),
        );
    }
    let worker = ask.worker;
    let keep = move |e: &Entry| worker.is_none_or(|w| e.worker == Some(w));
    let n = ask.n.min(ring.capacity());
    let permit = match follow_permit(&api, ask.follow) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    let (lines, rx) = ring.last_and_subscribe(n, keep, ask.follow);
    respond(
        &api,
        &req,
        lines,
        rx.map(|rx| (rx, Some(ring))),
        keep,
        permit,
    )
}

/// `GET /logs`: every program's lines, by time.
pub async fn all(State(api): State<Api>, headers: HeaderMap, req: Request) -> Response {
    if let Some(r) = super::server::output_refused(&api, &headers) {
        return r;
    }
    let ask = match parse(req.uri().query()) {
        Ok(Ask {
            worker: Some(_), ..
        }) => {
            return error(
                StatusCode::BAD_REQUEST,
                "worker= needs a program: GET /programs/NAME/logs?worker=I",
            )
        }
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let permit = match follow_permit(&api, ask.follow) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e),
    };
    // subscribed first: a line pushed meanwhile is in both, and sent once (by its seq)
    let rx = ask.follow.then(|| api.rings.subscribe_all());
    let rings = api.rings.all();
    let n = ask
        .n
        .min(rings.iter().map(|r| r.capacity()).max().unwrap_or(0));
    let mut lines: Vec<Arc<Entry>> = rings
        .iter()
        .filter(|r| !r.inherited())
        .flat_map(|r| r.last(n, |_| true))
        .collect();
    lines.sort_by_key(|e| e.time_ms);
    let lines = lines.split_off(lines.len().saturating_sub(n));
    respond(&api, &req, lines, rx.map(|rx| (rx, None)), |_| true, permit)
}

/// A follower's place, if it follows; why not, when every place is taken.
fn follow_permit(
    api: &Api,
    follow: bool,
) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, String> {
    if !follow {
        return Ok(None);
    }
    api.rings.followers.clone().try_acquire_owned().map(Some).map_err(|_| {
        format!("{MAX_FOLLOWERS} clients already follow drover's output (the cap); try again when one leaves, or ask without follow=1")
    })
}

type Follow = (broadcast::Receiver<Arc<Entry>>, Option<Arc<ProgramRing>>);

fn respond(
    api: &Api,
    req: &Request,
    lines: Vec<Arc<Entry>>,
    follow: Option<Follow>,
    keep: impl Fn(&Entry) -> bool + Send + 'static,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
) -> Response {
    let Some((rx, ring)) = follow else {
        let mut body = String::new();
        for e in &lines {
            body.push_str(e.json());
            body.push('\n');
        }
        return ([(header::CONTENT_TYPE, NDJSON)], body).into_response();
    };
    let (tx, body_rx) = mpsc::channel(1);
    let streaming = super::listener::Streaming::start(req.extensions());
    let closing = api.rings.closing();
    let rings = api.rings.clone();
    tokio::spawn(async move {
        let _held = (permit, streaming);
        let f = Follower {
            rx,
            ring,
            keep,
            sent: lines.iter().map(|e| (e.program.clone(), e.seq)).collect(),
            tx,
            closing,
        };
        f.run(lines, &rings).await
    });
    (
        [
            (header::CONTENT_TYPE, NDJSON),
            // a proxy must pass each chunk on as it comes
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::new(Chunks(body_rx)),
    )
        .into_response()
}

struct Follower<K> {
    rx: broadcast::Receiver<Arc<Entry>>,
    /// the program followed (None: every program)
    ring: Option<Arc<ProgramRing>>,
    keep: K,
    /// the last seq already sent, by program: a line both in the backlog and the channel is sent once
    sent: HashMap<Arc<str>, u64>,
    tx: mpsc::Sender<Bytes>,
    /// true when drover is exiting
    closing: tokio::sync::watch::Receiver<bool>,
}

impl<K: Fn(&Entry) -> bool> Follower<K> {
    async fn run(mut self, backlog: Vec<Arc<Entry>>, rings: &crate::logs::ring::Rings) {
        let mut chunk = String::new();
        for e in &backlog {
            chunk.push_str(e.json());
            chunk.push('\n');
            if chunk.len() >= CHUNK_BYTES && !self.send(&mut chunk).await {
                return;
            }
        }
        if !chunk.is_empty() && !self.send(&mut chunk).await {
            return;
        }
        drop(backlog);
        let mut woke = tokio::time::Instant::now();
        loop {
            if *self.closing.borrow_and_update() {
                return;
            }
            let first = tokio::select! {
                r = self.rx.recv() => r,
                _ = self.closing.changed() => return,
            };
            match first {
                Ok(e) => self.add(&mut chunk, &e),
                Err(RecvError::Lagged(n)) => self.skipped(&mut chunk, n, rings),
                Err(RecvError::Closed) => return,
            }
            // what else has arrived, within one chunk: the work of one wake-up is bounded
            while chunk.len() < CHUNK_BYTES {
                match self.rx.try_recv() {
                    Ok(e) => self.add(&mut chunk, &e),
                    Err(TryRecvError::Lagged(n)) => self.skipped(&mut chunk, n, rings),
                    Err(_) => break,
                }
            }
            if !chunk.is_empty() && !self.send(&mut chunk).await {
                return;
            }
            woke += CHUNK_EVERY;
            let now = tokio::time::Instant::now();
            if woke > now {
                tokio::time::sleep_until(woke).await;
            } else {
                woke = now;
            }
        }
    }

    fn add(&mut self, chunk: &mut String, e: &Entry) {
        if !(self.keep)(e) {
            return;
        }
        let last = self.sent.entry(e.program.clone()).or_insert(0);
        if e.seq <= *last {
            return;
        }
        *last = e.seq;
        chunk.push_str(e.json());
        chunk.push('\n');
    }

    fn skipped(&mut self, chunk: &mut String, n: u64, rings: &crate::logs::ring::Rings) {
        match &self.ring {
            Some(r) => r.skipped.fetch_add(n, Ordering::Relaxed),
            None => rings.skipped_all.fetch_add(n, Ordering::Relaxed),
        };
        chunk.push_str(&format!("{{\"skipped\":{n}}}\n"));
    }

    /// Hand the chunk to the body; false when the client is gone or stalled, or drover exits
    /// meanwhile (a client that does not read must not hold drover's exit).
    async fn send(&mut self, chunk: &mut String) -> bool {
        let bytes = Bytes::from(std::mem::take(chunk));
        let closing = async {
            while !*self.closing.borrow_and_update() {
                if self.closing.changed().await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(STALLED, self.tx.send(bytes)) => matches!(r, Ok(Ok(()))),
            _ = closing => false,
        }
    }
}

/// The response body: the follower's chunks, ending when it ends.
struct Chunks(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn parameters() {
        let a = parse(Some("n=5&worker=2&follow=1")).unwrap();
        assert_eq!((a.n, a.worker, a.follow), (5, Some(2), true));
        let a = parse(None).unwrap();
        assert_eq!(
            (a.n, a.worker, a.follow),
            (super::DEFAULT_LINES, None, false)
        );
        assert!(parse(Some("n=x")).unwrap_err().contains("n=\"x\""));
        assert!(parse(Some("lines=3"))
            .unwrap_err()
            .contains("unknown parameter"));
        assert!(parse(Some("follow=yes")).is_err());
    }
}

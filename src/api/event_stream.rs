//! `GET /events`: the feed (`events.rs`) as Server-Sent Events.
//!
//! Each stream is one task on the status thread that waits for the feed's newest id to move,
//! copies out what is new (at most `MAX_PER_CHUNK` events, one chunk per wake-up: bounded work
//! per poll, so `/healthz` keeps its turn beside a hundred streams) and hands the chunk to its
//! response body through a channel of one. A client whose socket does not drain stops taking
//! chunks; while its task waits to hand one over it watches the feed, and once the client has
//! fallen more than the backlog behind its connection is closed (`Closer`) and counted in
//! `drover_events_dropped_clients_total`: it never holds more than a chunk or two, and it never
//! slows the loop, which only ever pushes into the backlog.
//!
//! `Last-Event-ID` (or `?since=N`) replays what is still kept; an id the backlog no longer
//! covers, or one this drover never issued, is answered first with an `events_lost` event that
//! says so. A comment line is sent every `KEEPALIVE` while the stream is open (no timer
//! otherwise). When drover exits the streams send what is left and end with the final chunk.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, Extensions, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use hyper::body::Frame;
use tokio::sync::mpsc;

use super::events::{Feed, Resume, BACKLOG, MAX_PER_CHUNK};
use super::listener::{Closer, Streaming};
use super::server::{error, Api};

/// At most this many event streams are open at once (503 beyond).
pub const MAX_STREAMS: usize = 128;
/// Of those, this many are kept for callers with the token (when one is configured): anyone who
/// can connect may follow events, but cannot take every place from the operator.
pub const RESERVED_STREAMS: usize = 16;
/// A comment line this often while a stream is open, so proxies and clients see it alive.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// What the client says it saw last.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Nothing,
    Id(u64),
    /// a `Last-Event-ID` that is not a number
    Bad(String),
}

/// `Last-Event-ID` first (what EventSource sends on reconnecting), else `?since=N`.
fn seen(headers: &HeaderMap, uri: &Uri) -> Result<Seen, String> {
    if let Some(v) = headers.get("last-event-id") {
        let v = String::from_utf8_lossy(v.as_bytes()).trim().to_string();
        return Ok(match v.parse() {
            Ok(n) => Seen::Id(n),
            Err(_) if v.is_empty() => Seen::Nothing,
            Err(_) => Seen::Bad(v),
        });
    }
    let since = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="));
    match since {
        None => Ok(Seen::Nothing),
        Some(s) => s.parse().map(Seen::Id).map_err(|_| {
            format!("?since= must be an event id (a whole number), got `{s}`; send ?since=0 to replay every event kept")
        }),
    }
}

/// The `events_lost` event (no `id:`, so the client's last id stays what it saw).
fn lost_frame(missed: Option<u64>, after: &str, why: String) -> Bytes {
    let data = serde_json::json!({
        "type": "events_lost",
        "time": crate::logs::now_rfc3339(),
        "missed": missed,
        "after": after,
        "why": why,
    });
    Bytes::from(format!("event: events_lost\ndata: {data}\n\n"))
}

/// Where the stream starts, and the `events_lost` to send first if any.
fn start(feed: &Feed, seen: Seen) -> (u64, Option<Bytes>) {
    let (seen_id, shown) = match seen {
        Seen::Nothing => return (feed.newest(), None),
        Seen::Id(n) => (n, n.to_string()),
        Seen::Bad(v) => {
            let from = match feed.resume(Some(0)) {
                Resume::Lost { from, .. } | Resume::Unknown { from, .. } => from,
                Resume::After(n) => n,
            };
            let why = format!(
                "Last-Event-ID `{}` is not an event id; replaying the {} events kept",
                crate::logs::printable(&v),
                feed.newest() - from
            );
            return (from, Some(lost_frame(None, &v, why)));
        }
    };
    match feed.resume(Some(seen_id)) {
        Resume::After(n) => (n, None),
        Resume::Lost { missed, from } => {
            let why = format!("{missed} events after id {seen_id} are no longer kept (the backlog holds the last {BACKLOG}); replaying from id {}", from + 1);
            (from, Some(lost_frame(Some(missed), &shown, why)))
        }
        Resume::Unknown { newest, from } => {
            let why = format!("id {seen_id} was not issued by this drover (its newest is {newest}: drover restarted?); replaying the {} events kept", newest - from);
            (from, Some(lost_frame(None, &shown, why)))
        }
    }
}

/// One open stream, counted against `MAX_STREAMS` while it lives.
struct Counted(Arc<Feed>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The response body: chunks from the stream's task; ends when the task does.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
    _streaming: Option<Streaming>,
    _counted: Counted,
}

impl hyper::body::Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

pub async fn events(
    State(api): State<Api>,
    headers: HeaderMap,
    uri: Uri,
    ext: Extensions,
) -> Response {
    let seen = match seen(&headers, &uri) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let feed = api.events.clone();
    // without the token (when one is configured) the last places are not for this caller
    let public = super::server::output_refused(&api, &headers).is_some();
    let cap = if public {
        MAX_STREAMS - RESERVED_STREAMS
    } else {
        MAX_STREAMS
    };
    if feed.streams.fetch_add(1, Ordering::Relaxed) >= cap {
        feed.streams.fetch_sub(1, Ordering::Relaxed);
        let why = if public {
            format!("{cap} event streams are open already, and the last {RESERVED_STREAMS} are kept for callers with the control token; try again later, or send the token")
        } else {
            format!("{MAX_STREAMS} event streams are open already; try again later")
        };
        return error(StatusCode::SERVICE_UNAVAILABLE, why);
    }
    let counted = Counted(feed.clone());
    let streaming = Streaming::start(&ext);
    let closer = streaming.as_ref().map(Streaming::closer);
    let (at, lost) = start(&feed, seen);
    let mut hello = String::from(": drover events\nretry: 1000\n\n");
    if let Some(l) = lost {
        hello.push_str(std::str::from_utf8(&l).unwrap_or_default());
    }
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(follow(feed, at, Bytes::from(hello), tx, closer));
    let body = EventBody {
        rx,
        _streaming: streaming,
        _counted: counted,
    };
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // the stream is the connection's last response
            (header::CONNECTION, "close"),
        ],
        Body::new(body),
    )
        .into_response()
}

/// The stream's task: hand `first`, then every event after `at`, to the body, chunk by chunk.
async fn follow(
    feed: Arc<Feed>,
    mut at: u64,
    first: Bytes,
    tx: mpsc::Sender<Bytes>,
    closer: Option<Closer>,
) {
    let (mut newest, mut closed) = feed.subscribe();
    let mut pending = Some(first);
    loop {
        if pending.is_none() {
            match feed.since(at, MAX_PER_CHUNK) {
                Err(_) => return drop_client(&feed, closer.as_ref(), at),
                Ok((frames, last)) if !frames.is_empty() => {
                    pending = Some(Bytes::from(frames.concat()));
                    at = last;
                }
                Ok(_) => {}
            }
        }
        if let Some(chunk) = pending.take() {
            // wait for the client to take it; it must not fall out of the backlog meanwhile
            let mut chunk = Some(chunk);
            while let Some(c) = chunk.take() {
                tokio::select! {
                    permit = tx.reserve() => match permit {
                        Ok(p) => p.send(c),
                        Err(_) => return, // the client has gone
                    },
                    moved = newest.changed() => {
                        if moved.is_err() {
                            return;
                        }
                        if feed.behind(at) {
                            return drop_client(&feed, closer.as_ref(), at);
                        }
                        chunk = Some(c);
                    }
                }
            }
            continue;
        }
        if *closed.borrow_and_update() {
            return; // drover exits: the body ends with its final chunk
        }
        tokio::select! {
            moved = newest.changed() => if moved.is_err() { return },
            _ = closed.changed() => {}
            _ = tokio::time::sleep(KEEPALIVE) => pending = Some(Bytes::from_static(b": keep-alive\n\n")),
            _ = tx.closed() => return,
        }
    }
}

/// A client that fell more than the backlog behind: close its connection and count it.
fn drop_client(feed: &Feed, closer: Option<&Closer>, at: u64) {
    feed.dropped_clients.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = closer {
        c.close();
    }
    tracing::warn!(
        "/events: a client fell more than {BACKLOG} events behind (it had taken up to id {at}, the newest is {}); closing its stream (it may reconnect with Last-Event-ID)",
        feed.newest()
    );
}

#[cfg(test)]
mod tests {
    use super::{seen, Seen};
    use axum::http::{HeaderMap, HeaderValue, Uri};

    #[test]
    fn the_header_wins_over_the_query_and_bad_values_are_named() {
        let uri: Uri = "/events?since=5".parse().unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(seen(&h, &uri), Ok(Seen::Id(5)));
        assert_eq!(seen(&h, &"/events".parse().unwrap()), Ok(Seen::Nothing));
        let e = seen(&h, &"/events?since=x".parse().unwrap()).unwrap_err();
        assert!(e.contains("`x`"), "{e}");
        h.insert("last-event-id", HeaderValue::from_static("9"));
        assert_eq!(seen(&h, &uri), Ok(Seen::Id(9)));
        h.insert("last-event-id", HeaderValue::from_static("nope"));
        assert_eq!(seen(&h, &uri), Ok(Seen::Bad("nope".into())));
    }
}

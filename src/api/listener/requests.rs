//! A connection's requests in flight, as the connection cap sees them: counted from the moment
//! a request has arrived whole (`received`) until its response is ready, or, for a streaming
//! response, until its body ends (`Streaming`).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ConnState, OnConn, HEADER_TIMEOUT};
use crate::api::server::{self, MAX_BODY};

/// A request in flight on its connection; ended on drop.
pub(super) struct InFlight(Arc<ConnState>);

impl InFlight {
    pub(super) fn start(state: Arc<ConnState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// A response that streams (`GET /events`), held by its body: while it lasts its connection
/// has a request in flight (never evicted as idle) and is not cut at `CONNECTION_LIFETIME`;
/// `Closer::close` ends the connection at once (no final chunk), for a client that does not
/// keep up.
pub struct Streaming {
    _in_flight: InFlight,
    closer: Closer,
}

/// Closes a streaming response's connection.
#[derive(Clone)]
pub struct Closer(Arc<ConnState>);

impl Closer {
    pub fn close(&self) {
        self.0.close.notify_one();
    }
}

impl Streaming {
    /// For the request whose extensions these are (None outside the listener, in unit tests).
    pub fn start(ext: &axum::http::Extensions) -> Option<Streaming> {
        let conn = ext.get::<OnConn>()?.0.clone();
        conn.streaming.fetch_add(1, Ordering::Relaxed);
        Some(Streaming {
            _in_flight: InFlight::start(conn.clone()),
            closer: Closer(conn),
        })
    }

    pub fn closer(&self) -> Closer {
        self.closer.clone()
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        self.closer.0.streaming.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Middleware (the router's outermost layer but the Host check): read the whole body, within
/// `HEADER_TIMEOUT` and `MAX_BODY`, before the request counts as in flight. A client trickling
/// a body stays evictable, and cannot hold a slot past the timeout.
pub async fn received(req: Request, next: Next) -> Response {
    use http_body_util::{BodyExt, LengthLimitError, Limited};
    let conn = req.extensions().get::<OnConn>().cloned();
    let (parts, body) = req.into_parts();
    let read = Limited::new(body, MAX_BODY).collect();
    let body = match tokio::time::timeout(HEADER_TIMEOUT, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return server::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large (limit {MAX_BODY} bytes)"),
            )
        }
        Ok(Err(e)) => {
            return server::error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
        }
        Err(_) => {
            return server::error(
                StatusCode::REQUEST_TIMEOUT,
                format!("the request body did not arrive within {HEADER_TIMEOUT:?}; closing"),
            )
        }
    };
    let _in_flight = conn.map(|c| InFlight::start(c.0));
    next.run(Request::from_parts(parts, Body::from(body)))
        .await
        .into_response()
}

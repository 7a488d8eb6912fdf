//! The status and control endpoint (axum). Reads go to the snapshot the loop publishes;
//! mutating routes send a `control::Request` to the loop and wait for its answer. Nothing here
//! touches worker state.
//!
//! Mutating routes need `Authorization: Bearer <token>` (the scheme in any case, the token
//! compared in constant time) when the token file is configured, or a unix-socket listener (its
//! file mode is the access control). With neither, they answer 403 and say how to turn them on.
//! Reads are open, but what is private in the snapshot (`Snapshot::public`) is shown only to the
//! same authenticated callers. Every route checks `Host` first (`hosts.rs`); the sockets,
//! connections and their limits are `listener.rs`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use tokio::sync::{mpsc, oneshot, watch};

use super::hosts::Hosts;
use super::liveness::{Liveness, Probe, LIVENESS_TIMEOUT};
use super::snapshot::Snapshot;
use crate::api::control::{self, Command, Refused, Reply, Request};

/// Largest request body the control API reads.
pub const MAX_BODY: usize = 4096;

#[derive(Clone)]
pub struct Api {
    pub snap: watch::Receiver<Arc<Snapshot>>,
    pub control: mpsc::Sender<Request>,
    pub token: watch::Receiver<Option<Arc<str>>>,
    /// served on a unix socket: the file mode already decides who may connect
    pub unix: bool,
    /// /proc/PID/stat of each worker, kept open between requests (see `live`)
    pub stat_files: Arc<std::sync::Mutex<Vec<HashMap<i32, std::fs::File>>>>,
    /// Some: TCP connections speak TLS with the current configuration (replaced on reload)
    pub tls: watch::Receiver<Option<crate::api::tls::ServerConfig>>,
    /// the listening sockets, whose accept queues are read at request time
    pub listeners: Arc<crate::resources::queue::Listeners>,
    /// asks the supervisor loop whether it still answers (`/healthz`)
    pub liveness: Probe,
    /// the `Host` values answered (`supervisor.status_hosts`; any on a unix socket)
    pub hosts: Arc<Hosts>,
    /// each program's recent output (`GET /programs/NAME/logs`)
    pub rings: Arc<crate::logs::ring::Rings>,
    /// what happens, for `GET /events` (`events.rs`, `event_stream.rs`)
    pub events: Arc<super::events::Feed>,
}

pub fn router(api: Api) -> Router {
    let hosts = api.hosts.clone();
    Router::new()
        .route("/", get(page))
        .route("/page.js", get(page_js))
        .route("/page.css", get(page_css))
        .route("/history", get(history))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/logs", get(super::logs::all))
        .route("/programs/{name}/logs", get(super::logs::program))
        .route("/events", get(super::event_stream::events))
        .route("/reload", post(reload))
        .route("/programs/{name}/restart", post(restart))
        .route("/programs/{name}/reload", post(reload_program))
        .route("/programs/{name}/scale", post(scale))
        .route("/programs/{name}/stop", post(stop))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(super::listener::received))
        .layer(middleware::from_fn_with_state(hosts, super::hosts::check))
        .with_state(api)
}

/// An HTTP-level refusal: `{"ok": false, "error": ...}` with its status code.
pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    Rejection(code, message.into()).into_response()
}

/// A request refused before it reaches the loop.
struct Rejection(StatusCode, String);

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "ok": false, "error": self.1 });
        (self.0, Json(body)).into_response()
    }
}

/// The loop's answer as HTTP.
fn reply(r: Reply) -> Response {
    match r {
        Ok(message) => Json(serde_json::json!({ "ok": true, "message": message })).into_response(),
        Err(e) => {
            let code = match e {
                Refused::NotFound(_) => StatusCode::NOT_FOUND,
                Refused::Busy(_) => StatusCode::CONFLICT,
                Refused::Invalid(_) => StatusCode::BAD_REQUEST,
                Refused::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            };
            error(code, e.to_string())
        }
    }
}

/// 200 when the supervisor loop answered a ping within `LIVENESS_TIMEOUT`, 503 otherwise: the
/// liveness probe restarts a drover whose loop is stuck, not one whose server merely answers.
async fn healthz(State(api): State<Api>) -> Response {
    match api.liveness.check(LIVENESS_TIMEOUT).await {
        Liveness::Alive => Json(serde_json::json!({"status": "ok"})).into_response(),
        Liveness::Unresponsive(t) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unresponsive",
                "why": format!("the supervisor loop has not answered for {t:?}"),
            })),
        )
            .into_response(),
    }
}

async fn readyz(State(api): State<Api>) -> Response {
    let s = api.snap.borrow().clone();
    // the ages as of now, without copying the whole snapshot for every probe
    let d = s.age_at(Instant::now());
    let body = serde_json::json!({
        "ready": s.ready,
        "state": s.state,
        "why": (!s.ready).then(|| not_ready_because(&s, d)),
        "programs": s.programs.iter().map(|p| serde_json::json!({
            "name": p.name, "ready_workers": p.ready_workers, "min_ready": p.min_ready,
            "shedding": p.shedding.clone().map(|sh| super::ages::shedding_after(sh, d)),
        })).collect::<Vec<_>>(),
    });
    let code = if s.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Why /readyz answers 503, in words; `d`: seconds since the snapshot was published.
fn not_ready_because(s: &Snapshot, d: f64) -> String {
    let mut why = vec![];
    if s.state != "running" {
        why.push(format!("drover is {}", s.state));
    }
    for p in &s.programs {
        if p.ready_workers < p.min_ready {
            let waiting = p
                .preloader
                .as_ref()
                .and_then(|pre| super::preloader_words::waiting_on(pre, d))
                .map(|w| format!(": {w}"))
                .unwrap_or_default();
            let waiting = match (&p.waiting_for, &p.will_not_start) {
                (Some(w), _) => format!(": waiting for {w}"),
                (_, Some(n)) => format!(": will not start: {n}"),
                _ => waiting,
            };
            why.push(format!(
                "{}: {} of min_ready {} workers ready{waiting}",
                p.name, p.ready_workers, p.min_ready
            ));
        }
        if let Some(sh) = &p.shedding {
            why.push(format!(
                "{}: shedding load, {} connections waiting (max_queue {})",
                p.name, sh["queue"], sh["max_queue"]
            ));
        }
    }
    why.join("; ")
}

/// The snapshot with per-process figures read from /proc at request time: RSS and CPU time from
/// /proc/PID/stat. Each worker's stat file stays open between requests and is re-read with
/// pread(2): at 1,000 workers, opening and closing the files was half of a request's cost. A
/// file whose process has gone reads as an error and is reopened for the pid's new owner.
///
/// The reads run on a thread of their own, not on the status server's thread, which keeps
/// answering probes meanwhile: 1,000 stat files take the kernel a few milliseconds to format.
/// Where no thread can be created (a pids limit, RLIMIT_NPROC) they run inline instead: tokio's
/// spawn_blocking would panic there, and a full process table is exactly when /status must keep
/// answering.
async fn live(api: &Api) -> Snapshot {
    let a = api.clone();
    let (tx, rx) = oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("drover-proc".into())
        .spawn(move || {
            let _ = tx.send(read_live(&a));
        });
    match spawned {
        Ok(_) => match rx.await {
            Ok(s) => s,
            Err(_) => (**api.snap.borrow()).clone().at(Instant::now()),
        },
        Err(_) => read_live(api),
    }
}

/// The published snapshot as of now: its ages (`ages.rs`), each worker's memory, CPU time and
/// each socket's queue read at this moment.
fn read_live(api: &Api) -> Snapshot {
    let mut snap: Snapshot = (**api.snap.borrow()).clone().at(Instant::now());
    let pids: Vec<i32> = snap
        .programs
        .iter()
        .flat_map(|p| p.workers.iter().filter_map(|w| w.pid))
        .collect();
    // Above a few hundred workers the reads are split across the cores.
    let threads = if pids.len() >= 256 {
        std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
    } else {
        1
    };
    let mut shards = api.stat_files.lock().unwrap_or_else(|e| e.into_inner());
    shards.resize_with(threads, HashMap::new);
    let chunk = pids.len().div_ceil(threads).max(1);
    let stats: HashMap<i32, crate::resources::usage::ProcStat> = if threads == 1 {
        read_stats(&mut shards[0], &pids)
    } else {
        std::thread::scope(|sc| {
            let mut out = HashMap::with_capacity(pids.len());
            let mut running = vec![];
            for (files, part) in shards.iter_mut().zip(pids.chunks(chunk)) {
                // the work is handed over only once the thread exists; a chunk whose thread
                // cannot be created is read here instead
                let (tx, rx) = std::sync::mpsc::channel();
                let spawned = std::thread::Builder::new().spawn_scoped(sc, move || {
                    rx.recv().map(|(f, p)| read_stats(f, p)).unwrap_or_default()
                });
                match spawned {
                    Ok(h) => {
                        let _ = tx.send((files, part));
                        running.push(h);
                    }
                    Err(_) => out.extend(read_stats(files, part)),
                }
            }
            for h in running {
                out.extend(h.join().unwrap_or_default());
            }
            out
        })
    };
    read_queues(api, &mut snap);
    let page = crate::resources::usage::page_size();
    let hz = crate::resources::usage::clock_ticks_per_sec();
    for p in &mut snap.programs {
        for w in &mut p.workers {
            let st = w.pid.and_then(|pid| stats.get(&pid));
            let rss = st.map(|s| s.rss_pages * page);
            w.memory_bytes = match (&w.memory_cgroup, w.pid) {
                (Some(cg), Some(_)) => cg.read().or(rss),
                _ => rss,
            };
            w.cpu_seconds = st.map(|s| s.cpu_ticks as f64 / hz);
        }
    }
    snap
}

/// Each socket's accept queue (one syscall each) and the node's overflow counters.
fn read_queues(api: &Api, snap: &mut Snapshot) {
    for (name, q) in api.listeners.read() {
        let Some(s) = snap.sockets.iter_mut().find(|s| s.name == name) else {
            continue;
        };
        match q {
            Ok(q) => (s.queue, s.queue_max) = (Some(q.len), Some(q.max)),
            Err(e) => s.queue_unknown = Some(e),
        }
    }
    snap.node = crate::resources::queue::overflows().map(|o| super::snapshot::NodeCounters {
        listen_overflows: o.listen_overflows,
        listen_drops: o.listen_drops,
        scope: "the network namespace: every listener of the node or pod, not only drover's",
    });
}

/// /proc/PID/stat of each of `pids`, through (and updating) one shard of the open files.
fn read_stats(
    files: &mut HashMap<i32, std::fs::File>,
    pids: &[i32],
) -> HashMap<i32, crate::resources::usage::ProcStat> {
    let mut out = HashMap::with_capacity(pids.len());
    for &pid in pids {
        let st = match files
            .get(&pid)
            .and_then(crate::resources::usage::pread_stat)
        {
            Some(st) => Some(st),
            None => crate::resources::usage::open_stat(pid).and_then(|f| {
                let st = crate::resources::usage::pread_stat(&f);
                files.insert(pid, f);
                st
            }),
        };
        if let Some(st) = st {
            out.insert(pid, st);
        }
    }
    let wanted: HashSet<i32> = pids.iter().copied().collect();
    files.retain(|pid, _| wanted.contains(pid));
    out
}

/// The live snapshot, without its private fields for a caller who is not authenticated.
async fn shown(api: &Api, headers: &HeaderMap) -> Snapshot {
    let snap = live(api).await;
    if authenticated(api, headers) {
        snap
    } else {
        snap.public(output_refused(api, headers).is_none())
    }
}

/// Workers' output (`/programs/NAME/logs`, a crashed worker's last words in `/status`) is read
/// by anyone who may connect, unless `control_token_file` is set: then only with the token (or
/// on the unix socket), like the control API. A traceback can hold what a worker should not
/// tell everyone. The refusal, if the caller may not.
pub(crate) fn output_refused(api: &Api, headers: &HeaderMap) -> Option<Response> {
    if api.unix || api.token.borrow().is_none() {
        return None;
    }
    authorize(api, headers).err().map(|Rejection(code, m)| {
        error(code, format!("{m}: reading workers' output needs the control token (supervisor.control_token_file is set)"))
    })
}

async fn status(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    Json(shown(&api, &headers).await)
}

async fn metrics(State(api): State<Api>, headers: HeaderMap) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::api::metrics::render(&shown(&api, &headers).await)
            + &api.rings.metrics()
            + &api.events.render_metrics(),
    )
}

/// The page loads nothing from elsewhere and runs no inline code, so it can send a strict
/// Content-Security-Policy: its script and style come from this server, its data from
/// /status and /history, and its charts are SVG built in the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(include_str!("page/status.html")),
    )
}

async fn page_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("page/status.js"),
    )
}

async fn page_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("page/status.css"),
    )
}

async fn history(State(api): State<Api>) -> Response {
    let h = api.snap.borrow().history.clone();
    match h {
        Some(h) => Json(h).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "no history is kept: supervisor.history = \"0s\" (set a window such as \"15m\")",
        ),
    }
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "no such route; GET /, /status, /history, /events, /healthz, /readyz, /metrics, /logs, /programs/NAME/logs; POST /reload, /programs/NAME/{restart,reload,scale,stop}")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method not allowed on this route (reads are GET, control actions are POST)",
    )
}

/// Whether the caller is authenticated: on the unix socket, or with the right bearer token.
/// Says no without answering 401: for reads that show more to those who may control drover.
fn authenticated(api: &Api, headers: &HeaderMap) -> bool {
    authorize(api, headers).is_ok()
}

/// Ok if the caller may use mutating routes.
fn authorize(api: &Api, headers: &HeaderMap) -> Result<(), Rejection> {
    if api.unix {
        return Ok(());
    }
    let token = api.token.borrow().clone();
    let Some(token) = token else {
        return Err(Rejection(
            StatusCode::FORBIDDEN,
            "the control API is off: set supervisor.control_token_file (then send Authorization: Bearer <token>) or serve status on a unix socket".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .unwrap_or("");
    if given.is_empty() {
        return Err(Rejection(
            StatusCode::UNAUTHORIZED,
            "missing Authorization: Bearer <token>".into(),
        ));
    }
    if !control::constant_time_eq(given.as_bytes(), token.as_bytes()) {
        return Err(Rejection(StatusCode::UNAUTHORIZED, "wrong token".into()));
    }
    Ok(())
}

/// The credentials of `Authorization: Bearer <token>`; the scheme is case-insensitive
/// (RFC 9110 §11.1), so `bearer` and `BEARER` are the same.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once([' ', '\t'])?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

async fn ask(api: &Api, command: Command) -> Response {
    let (tx, rx) = oneshot::channel();
    if api
        .control
        .send(Request { command, reply: tx })
        .await
        .is_err()
    {
        return error(StatusCode::SERVICE_UNAVAILABLE, "drover is shutting down");
    }
    match rx.await {
        Ok(r) => reply(r),
        Err(_) => error(StatusCode::SERVICE_UNAVAILABLE, "drover is shutting down"),
    }
}

fn body_or_error(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Rejection> {
    body.map_err(|e| {
        let code = e.status();
        let msg = if code == StatusCode::PAYLOAD_TOO_LARGE {
            format!("request body too large (limit {MAX_BODY} bytes)")
        } else {
            format!("cannot read the request body: {}", e.body_text())
        };
        Rejection(code, msg)
    })
}

/// The mutating routes without a body to parse: authorize, read (and bound) the body, ask.
async fn simple(
    api: &Api,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    command: Command,
) -> Response {
    if let Err(r) = authorize(api, headers).and(body_or_error(body).map(|_| ())) {
        return r.into_response();
    }
    ask(api, command).await
}

async fn reload(
    State(api): State<Api>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    simple(&api, &headers, body, Command::Reload).await
}

/// `POST /programs/NAME/reload` reloads the whole file (programs are not reloaded one by one).
async fn reload_program(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(_name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    simple(&api, &headers, body, Command::Reload).await
}

async fn restart(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    simple(&api, &headers, body, Command::Restart { program: name }).await
}

async fn stop(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    simple(&api, &headers, body, Command::Stop { program: name }).await
}

/// `{"workers": N}`, 0..=10000, nothing else.
fn scale_body(body: &[u8]) -> Result<u32, Rejection> {
    let bad = |m: String| Rejection(StatusCode::BAD_REQUEST, m);
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| bad(format!("body is not JSON ({e}); send {{\"workers\": N}}")))?;
    let Some(obj) = v.as_object() else {
        return Err(bad("send a JSON object {\"workers\": N}".into()));
    };
    if let Some(k) = obj.keys().find(|k| *k != "workers") {
        return Err(bad(format!("unknown field `{k}`; send {{\"workers\": N}}")));
    }
    let n = match obj.get("workers") {
        Some(serde_json::Value::Number(n)) => n.as_i64(),
        Some(_) => return Err(bad("`workers` must be an integer".into())),
        None => return Err(bad("missing `workers`; send {\"workers\": N}".into())),
    };
    match n {
        Some(n) if (0..=10_000).contains(&n) => Ok(n as u32),
        _ => Err(bad(format!(
            "`workers` must be between 0 and 10000, got {}",
            obj["workers"]
        ))),
    }
}

async fn scale(
    State(api): State<Api>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(r) = authorize(&api, &headers) {
        return r.into_response();
    }
    let workers = match body_or_error(body).and_then(|b| scale_body(&b)) {
        Ok(n) => n,
        Err(r) => return r.into_response(),
    };
    let command = Command::Scale {
        program: name,
        workers,
    };
    ask(&api, command).await
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        for v in [
            "Bearer tok",
            "bearer tok",
            "BEARER tok",
            "  Bearer   tok  ",
            "bEaReR\ttok",
        ] {
            assert_eq!(bearer(v), Some("tok"), "{v:?}");
        }
        assert_eq!(bearer("Bearer TOK"), Some("TOK"));
        assert_eq!(bearer("Basic dG9r"), None);
        assert_eq!(bearer("Bearertok"), None);
        assert_eq!(bearer("tok"), None);
    }
}

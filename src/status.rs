//! The status endpoint (axum) over the snapshot the supervisor loop publishes.
//! It only reads; it never touches worker state.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use tokio::sync::watch;

#[derive(Debug, Clone, Serialize, Default)]
pub struct Snapshot {
    /// starting | running | stopping
    pub state: &'static str,
    pub pid: u32,
    pub pid1: bool,
    pub config: String,
    pub uptime_s: f64,
    pub steps: Vec<StepStatus>,
    pub sockets: Vec<SocketStatus>,
    pub programs: Vec<ProgramStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStatus {
    pub name: String,
    /// pending | running | succeeded | failed | skipped
    pub state: &'static str,
    pub exit: Option<serde_json::Value>,
    pub attempts: u32,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketStatus {
    pub name: String,
    pub listen: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramStatus {
    pub name: String,
    pub desired: u32,
    pub crash_looping: bool,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkerStatus {
    pub index: u32,
    pub pid: Option<i32>,
    pub state: &'static str,
    pub restarts: u32,
    pub uptime_s: Option<f64>,
    pub last_exit: Option<serde_json::Value>,
    pub memory_bytes: Option<u64>,
    /// needs two samples over time: reported by the budgets capability
    pub cpu_percent: Option<f64>,
}

pub enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

#[derive(Clone)]
struct AppState {
    snap: watch::Receiver<Arc<Snapshot>>,
}

pub fn router(snap: watch::Receiver<Arc<Snapshot>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/status", get(status))
        .fallback(not_found)
        .with_state(AppState { snap })
}

pub async fn serve(listener: Listener, snap: watch::Receiver<Arc<Snapshot>>) {
    let app = router(snap);
    let r = match listener {
        Listener::Tcp(l) => axum::serve(l, app).await,
        Listener::Unix(l) => axum::serve(l, app).await,
    };
    if let Err(e) = r {
        tracing::error!("status endpoint stopped: {e}");
    }
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn status(State(st): State<AppState>) -> impl IntoResponse {
    let mut snap: Snapshot = (**st.snap.borrow()).clone();
    for p in &mut snap.programs {
        for w in &mut p.workers {
            w.memory_bytes = w.pid.and_then(rss_bytes);
        }
    }
    Json(snap)
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({"error": "no such route; try /status or /healthz"})),
    )
        .into_response()
}

/// Resident set size of one process from /proc (the process group's total is the budgets
/// capability's job).
pub fn rss_bytes(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    Some(pages * page)
}

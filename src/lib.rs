//! drover: a node-level process supervisor for API workers.
//!
//! # Layout
//!
//! ARCHITECTURE.md is the map; one line per module here.
//!
//! - `config`     TOML -> typed `Config`, every problem collected with its line and column
//! - `plan`       the resolved plan `drover check` prints, and its warnings
//! - `state`      the pure worker-slot state machine and backoff; no I/O
//! - `supervisor` the event loop: owns all state, executes decisions, publishes a `Snapshot`
//! - `process`    spawn (raw syscalls only between fork and exec), the reaper (the only
//!   `waitpid`), signals, the guard, user/group identity, listening sockets, /proc probes
//! - `resources`  cgroups v2/v1, /proc usage sampling, `workers = "auto"`, autoscale arithmetic
//! - `api`        snapshot types, the status/control server (on its own thread; connection
//!   cap, Host allow-list, the loop's liveness), the event backlog and `GET /events`, metrics,
//!   control requests, the command-line clients (`status`, `top`, `ctl`, `events`), TLS,
//!   sd_notify
//! - `logs`       drover's own logs (queued, written by a thread of their own; the journal's
//!   datagrams), and worker/step output (prefixes, one writer thread)
//! - `watch`      dev runner: inotify on `watch` paths, include/exclude globs -> rolling restart
//! - `oneline`    `drover run [flags] -- COMMAND`: flags -> the TOML a file would hold
//! - `demo`       `drover demo-worker`, a tiny HTTP worker on the inherited fd 3

pub mod api;
pub mod config;
pub mod demo;
pub mod logs;
pub mod oneline;
pub mod plan;
pub mod process;
pub mod resources;
pub mod state;
pub mod supervisor;
pub mod watch;

/// The configuration `drover run` uses when none is found: a step, a socket, two demo workers.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

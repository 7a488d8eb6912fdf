//! drover: a node-level process supervisor for API workers.
//!
//! # Layout
//!
//! - `config`     TOML -> typed `Config`, every problem collected with its line and column
//! - `plan`       the resolved plan `drover check` prints, and its warnings
//! - `state`      the pure worker-slot state machine and backoff; no I/O
//! - `supervisor` the event loop: owns all state, executes actions, publishes a `Snapshot`
//! - `spawn`      `SpawnSpec` -> pid; raw syscalls only between fork and exec; never waits
//! - `identity`   `user`/`group` resolved to ids at load time; dropped in the child before exec
//! - `reaper`     the only caller of `waitpid`
//! - `signals`    signals -> events
//! - `sockets`    bind once, keep the fds, lay them out at 3.. for each spawn
//! - `guard`      the process that kills worker groups if drover itself is SIGKILLed
//! - `output`     worker/step output: line splitting, prefixes, one writer thread
//! - `probe`      per-worker readiness and liveness from /proc; HTTP probes through the socket
//! - `control`    requests from the API to the loop; token handling
//! - `metrics`    counters and the Prometheus text format
//! - `watch`      dev runner: inotify on `watch` paths -> rolling restart
//! - `budget`     `workers = "auto"` from the cgroup's CPU quota and the memory budget
//! - `cgroup`     v2 / v1 detection, per-worker cgroups joined before exec, OOM counters
//! - `usage`      /proc sampling of each worker's process group, where no cgroup can be written
//! - `autoscale`  the HPA rule and its scale-down window, pure
//! - `status`     axum router over the `Snapshot`: status, health, readiness, metrics, control
//! - `notify`     sd_notify: READY, STATUS, RELOADING, STOPPING, WATCHDOG
//! - `logging`    drover's own logs: text on a TTY, JSON otherwise
//! - `demo`       `drover demo-worker`, a tiny HTTP worker on the inherited fd 3
//! - `client`     `drover status` and `drover ctl`: the endpoint from the command line

pub mod autoscale;
pub mod budget;
pub mod cgroup;
pub mod client;
pub mod config;
pub mod control;
pub mod demo;
pub mod guard;
pub mod identity;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod plan;
pub mod probe;
pub mod reaper;
pub mod signals;
pub mod sockets;
pub mod spawn;
pub mod state;
pub mod status;
pub mod supervisor;
pub mod tls;
pub mod usage;
pub mod watch;

/// The configuration `drover run` uses when none is found: a step, a socket, two demo workers.
pub const DEMO_CONFIG: &str = include_str!("../config/demo.toml");

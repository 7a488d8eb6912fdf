//! TOML -> typed configuration, collecting *every* problem with its line and column.
//!
//! `tree` turns the document into a spanned tree and reads typed values through a positioned
//! reader; `sections` and `program` read one table each; `cross` checks what spans sections;
//! `values` parses durations, sizes, addresses and `${VAR}`; `command` holds a command as it
//! runs (`${VAR}` expanded) and as it is shown (as written); `dotenv` reads the `.env` format and
//! `env_file` the entries that name such files. Parsing does no I/O: user and group names are
//! resolved, and env files read, by `plan`.
//!
//! serde stops at the first error, so the file is parsed with `toml_edit` (which keeps spans)
//! into a small tree and walked by hand. Each typed field is read through a `Ctx` that records
//! problems instead of returning early; the caller gets either a whole `Config` or the whole list.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod budgets;
mod command;
mod cross;
mod depends;
pub mod dotenv;
mod env_file;
mod keys;
pub mod log;
mod paths;
mod program;
mod sections;
mod tree;
pub mod values;

pub use command::CommandSpec;
pub use depends::start_order;
pub use env_file::{EnvFile, FileEnv, ReadFile};
pub use paths::anchor as anchor_paths;
pub use tree::line_col;
pub use values::{did_you_mean, expand_env, fmt_size, parse_duration, parse_listen, parse_size};

use keys::{TOP_KEYS, TOP_LATER};
use tree::{from_table, kind, Ctx, V};

/// One problem in a configuration file, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{} found; nothing was started",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}:{}:{}: {}", self.file, p.line, p.col, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    Exit,
    Stay,
}

/// What drover does when every worker has ended and none will run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnAllExited {
    /// exit with the last worker's code (a container's or a Job's work is done)
    Exit,
    /// stay up, serving status, until told to stop
    Stay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl RestartPolicy {
    /// The value as the file writes it (for the log: `restart = "never"`, never `Never`).
    pub fn word(self) -> &'static str {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
    }
}

/// What a program waits for in a program it `depends_on` before its own workers start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// a worker of it has started
    Started,
    /// it has `min_ready` ready workers (at least one)
    Ready,
    /// ready, and its health checks pass
    Healthy,
    /// a one-shot program (`restart = "never"` or `"on-failure"`) whose workers all exited 0
    Succeeded,
}

impl Condition {
    /// The value as the file writes it.
    pub fn word(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Ready => "ready",
            Condition::Healthy => "healthy",
            Condition::Succeeded => "succeeded",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Capture,
    Inherit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffCfg {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffCfg {
    fn default() -> Self {
        BackoffCfg {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorCfg {
    pub status: Option<ListenAddr>,
    /// names the TCP status listener answers besides IP literals and localhost (`"*"`: any)
    pub status_hosts: Vec<String>,
    pub control_token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the status listener speaks HTTPS
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// `None`: chosen by mode (exit as PID 1, stay otherwise).
    pub on_exhausted: Option<OnExhausted>,
    /// consecutive quick failures of every replica before a program counts as crash-looping
    pub exhausted_after: u32,
    /// after shutdown begins, /readyz says 503 this long before workers are stopped
    pub drain_delay: Duration,
    pub on_all_exited: OnAllExited,
    /// how far back /history and the page's charts reach (zero: no history is kept)
    pub history: Duration,
    /// how often a history sample is taken
    pub history_interval: Duration,
    /// read for every program and step, before their own
    pub env_file: Vec<EnvFile>,
}

impl Default for SupervisorCfg {
    fn default() -> Self {
        SupervisorCfg {
            status: Some(ListenAddr::Tcp("127.0.0.1:9900".parse().unwrap())),
            status_hosts: Vec::new(),
            control_token_file: None,
            tls_cert: None,
            tls_key: None,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Auto,
            on_exhausted: None,
            exhausted_after: 5,
            drain_delay: Duration::ZERO,
            on_all_exited: OnAllExited::Exit,
            history: Duration::from_secs(15 * 60),
            history_interval: Duration::from_secs(10),
            env_file: Vec::new(),
        }
    }
}

/// Where a program's `prometheus_client` multiprocess files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetricsDirCfg {
    /// this directory (absolute)
    Path(PathBuf),
    /// `true`: one of drover's own, under its runtime directory, fresh every run
    Auto,
}

#[derive(Debug, Clone)]
pub struct StepCfg {
    pub name: String,
    pub command: CommandSpec,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub env: Vec<(String, String)>,
    /// its own env files (after the supervisor's)
    pub env_file: Vec<EnvFile>,
    /// what the supervisor's and its own env files set, read by `plan` (under `env`)
    pub file_env: FileEnv,
    pub cwd: Option<PathBuf>,
    /// sent to the step's process group when drover is told to stop while it runs
    pub stop_signal: nix::sys::signal::Signal,
    /// then SIGKILL this long after; `None`: `supervisor.shutdown_timeout`
    pub stop_timeout: Option<Duration>,
    /// `user` / `group` as written, with where (resolved by `plan`, as a program's are)
    pub run_as: Option<RunAs>,
    /// who the step runs as, resolved from `run_as` by `plan` (None: drover's own ids)
    pub identity: Option<crate::process::identity::Identity>,
}

impl StepCfg {
    /// How long the step has to stop once it got its stop signal: its `stop_timeout`, capped by
    /// `supervisor.shutdown_timeout` as every program's is (the orchestrator's grace period is
    /// computed from it).
    pub fn stop_grace(&self, supervisor: &SupervisorCfg) -> Duration {
        let t = supervisor.shutdown_timeout;
        self.stop_timeout.map_or(t, |s| s.min(t))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SocketCfg {
    pub name: String,
    pub listen: ListenAddr,
    pub backlog: i32,
    /// file mode of a unix socket
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum ReadyCheck {
    /// the worker polls or accepts on one of its sockets (seen in /proc)
    Listening,
    /// up for `min_uptime`
    Uptime,
    /// an exec check (`{pid}` replaced) exits 0
    Exec,
    /// the worker sends `READY=1` to `NOTIFY_SOCKET` (systemd's sd_notify protocol)
    Notify,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessCfg {
    pub check: ReadyCheck,
    pub min_uptime: Duration,
    /// `{pid}` replaced in each word
    pub exec: Option<CommandSpec>,
    pub interval: Duration,
    /// not ready this long after spawn: recycled (reason start-timeout)
    pub timeout: Duration,
    /// /readyz answers 503 while more connections than this wait in the program's sockets
    pub max_queue: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCfg {
    /// GET through the program's first TCP/unix socket
    pub http: Option<String>,
    /// `{pid}` replaced in each word
    pub exec: Option<CommandSpec>,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
    /// per-worker hang detection from /proc (stopped, or running without ever blocking)
    pub hung: bool,
}

/// Per-worker budget, `[program.NAME.budget]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerBudget {
    /// above this: graceful recycle
    pub memory_soft: Option<u64>,
    /// above this: killed (by the kernel in a cgroup, by drover when sampling)
    pub memory_hard: Option<u64>,
    /// cores
    pub cpu: Option<f64>,
}

/// `[program.NAME.autoscale]`: the HPA rule, locally.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleCfg {
    pub min: u32,
    pub max: u32,
    /// percent of the per-worker CPU budget (or of one core)
    pub target_cpu: Option<f64>,
    /// connections waiting in the program's accept queues, per worker
    pub target_queue: Option<f64>,
    pub scale_down_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetMode {
    Auto,
    Cgroup,
    Sample,
    Off,
}

/// `[budget]`: the whole node or pod.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBudget {
    pub memory: Option<u64>,
    pub cpu: Option<f64>,
    pub mode: BudgetMode,
    pub sample_interval: Duration,
}

impl Default for NodeBudget {
    fn default() -> Self {
        NodeBudget {
            memory: None,
            cpu: None,
            mode: BudgetMode::Auto,
            sample_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgramCfg {
    pub name: String,
    pub command: CommandSpec,
    pub sockets: Vec<String>,
    pub workers: u32,
    pub restart: RestartPolicy,
    pub backoff: BackoffCfg,
    pub stop_signal: nix::sys::signal::Signal,
    pub stop_timeout: Duration,
    pub env: Vec<(String, String)>,
    /// its own env files (after the supervisor's)
    pub env_file: Vec<EnvFile>,
    /// what the supervisor's and its own env files set, read by `plan` (under `env`)
    pub file_env: FileEnv,
    pub cwd: Option<PathBuf>,
    pub log: LogMode,
    /// a file the captured output is also written to, rotated by size (`[program.NAME.log]`)
    pub log_file: Option<log::LogFileCfg>,
    /// how many recent output lines the program's ring keeps (`drover logs`)
    pub log_lines: usize,
    pub min_ready: u32,
    /// `None`: chosen by whether the program has sockets
    pub readiness: ReadinessCfg,
    pub health: Option<HealthCfg>,
    pub watch: Vec<PathBuf>,
    /// which files under `watch` roll the workers (globs; default `*.py`, as `uvicorn --reload`)
    pub watch_include: Vec<String>,
    /// files and directories under `watch` that never do
    pub watch_exclude: Vec<String>,
    /// replace a worker older than this (plus up to `max_lifetime_jitter`) through the rolling path
    pub max_lifetime: Option<Duration>,
    pub max_lifetime_jitter: Duration,
    /// the command is started once as a preloader that forks the workers (docs/worker-protocol.md)
    pub preload: bool,
    /// emptied at start, given to every worker as PROMETHEUS_MULTIPROC_DIR, a dead worker's
    /// live-gauge files removed
    pub prometheus_multiproc_dir: Option<MetricsDirCfg>,
    /// `workers = "auto"`: `workers` is filled in by `budget::resolve_auto`
    pub workers_auto: bool,
    pub budget: WorkerBudget,
    pub autoscale: Option<AutoscaleCfg>,
    /// `user` / `group` as written, with where (resolved by `plan`)
    pub run_as: Option<RunAs>,
    /// who the workers run as, resolved from `run_as` by `plan` (None: drover's own ids)
    pub identity: Option<crate::process::identity::Identity>,
    /// programs whose condition must hold before this one's workers start (file order)
    pub depends_on: Vec<(String, Condition)>,
    /// when it ends for good, drover stops everything and exits with its code
    pub essential: bool,
}

/// `user` / `group` of a program or a step as the file gives them, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: Option<String>,
    pub group: Option<String>,
    pub line: usize,
    pub col: usize,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub supervisor: SupervisorCfg,
    pub budget: NodeBudget,
    pub prestart: Vec<StepCfg>,
    pub sockets: Vec<SocketCfg>,
    pub programs: Vec<ProgramCfg>,
}

/// Bytes -> text, or the position of the first byte that is not UTF-8.
pub fn decode(file: &str, bytes: &[u8]) -> Result<String, ConfigErrors> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            let (line, col) = line_col(good, good.len());
            Err(ConfigErrors {
                file: file.into(),
                problems: vec![Problem {
                    line,
                    col,
                    message: format!(
                        "byte 0x{:02x} is not valid UTF-8; a configuration file must be UTF-8 text",
                        bytes[e.valid_up_to()]
                    ),
                }],
            })
        }
    }
}

/// Parse and type-check one configuration text. `env` resolves `${VAR}`.
pub fn parse(
    file: &str,
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let doc = match toml_edit::Document::parse(src) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = line_col(src, e.span().map(|s| s.start).unwrap_or(0));
            let msg = e.message().trim().replace('\n', " ");
            return Err(ConfigErrors {
                file: file.into(),
                problems: vec![Problem {
                    line,
                    col,
                    message: format!("TOML syntax error: {msg}"),
                }],
            });
        }
    };
    let root = from_table(doc.as_table(), &(0..0));
    let mut cx = Ctx {
        src,
        problems: Vec::new(),
        env,
    };
    let mut cfg = Config::default();
    let V::Table(top) = &root.v else {
        unreachable!("the root of a TOML document is a table")
    };
    cx.keys("top level", top, TOP_KEYS, TOP_LATER);
    for (k, _, n) in top {
        read_section(&mut cx, k, n, &mut cfg);
    }
    cross::cross_check(&mut cx, &cfg, top);
    if cx.problems.is_empty() {
        Ok(cfg)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.col));
        Err(ConfigErrors {
            file: file.into(),
            problems: cx.problems,
        })
    }
}

/// One top-level section into `cfg`.
fn read_section(cx: &mut Ctx, k: &str, n: &tree::Node, cfg: &mut Config) {
    match k {
        "supervisor" => sections::read_supervisor(cx, n, &mut cfg.supervisor),
        "budget" => sections::read_budget(cx, n, &mut cfg.budget),
        "prestart" => match &n.v {
            V::Arr(items) => {
                for (i, it) in items.iter().enumerate() {
                    if let Some(s) = sections::read_step(cx, i, it) {
                        cfg.prestart.push(s);
                    }
                }
            }
            _ => cx.err(
                &n.span,
                format!("prestart: expected [[prestart]] entries, found {}", kind(n)),
            ),
        },
        "socket" => {
            if let Some(t) = cx.table("socket", n) {
                for (name, ks, sn) in t {
                    if !values::is_name(name) {
                        cx.err(
                            ks,
                            format!("socket `{name}`: names use letters, digits, `-` and `_`"),
                        );
                    }
                    if let Some(s) = sections::read_socket(cx, name, sn) {
                        cfg.sockets.push(s);
                    }
                }
            }
        }
        "program" => {
            if let Some(t) = cx.table("program", n) {
                for (name, ks, pn) in t {
                    if !values::is_name(name) {
                        cx.err(
                            ks,
                            format!("program `{name}`: names use letters, digits, `-` and `_`"),
                        );
                    }
                    if let Some(p) = program::read_program(cx, name, pn) {
                        cfg.programs.push(p);
                    }
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests;

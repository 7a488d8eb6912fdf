//! The keys each table accepts (anything else is an error with a "did you mean").

pub(super) const TOP_KEYS: &[&str] = &["supervisor", "prestart", "socket", "program", "budget"];
pub(super) const TOP_LATER: &[&str] = &[];
pub(super) const BUDGET_KEYS: &[&str] = &["memory", "cpu", "mode", "sample_interval"];
pub(super) const WORKER_BUDGET_KEYS: &[&str] = &["memory_soft", "memory_hard", "cpu"];
pub(super) const AUTOSCALE_KEYS: &[&str] = &[
    "min",
    "max",
    "target_cpu",
    "target_queue",
    "scale_down_window",
];
pub(super) const SUP_KEYS: &[&str] = &[
    "status",
    "status_hosts",
    "control_token_file",
    "tls_cert",
    "tls_key",
    "shutdown_timeout",
    "log_format",
    "on_exhausted",
    "exhausted_after",
    "drain_delay",
    "on_all_exited",
    "history",
    "history_interval",
    "env_file",
];
pub(super) const STEP_KEYS: &[&str] = &[
    "name",
    "command",
    "timeout",
    "retries",
    "retry_delay",
    "env",
    "env_file",
    "cwd",
    "stop_signal",
    "stop_timeout",
    "user",
    "group",
];
pub(super) const SOCKET_KEYS: &[&str] = &["listen", "backlog", "mode"];
pub(super) const PROGRAM_KEYS: &[&str] = &[
    "command",
    "sockets",
    "workers",
    "restart",
    "backoff",
    "stop_signal",
    "stop_timeout",
    "env",
    "env_file",
    "cwd",
    "user",
    "group",
    "log",
    "min_ready",
    "readiness",
    "health",
    "watch",
    "watch_include",
    "watch_exclude",
    "budget",
    "autoscale",
    "max_lifetime",
    "max_lifetime_jitter",
    "preload",
    "prometheus_multiproc_dir",
    "depends_on",
    "essential",
];
pub(super) const LOG_KEYS: &[&str] = &["mode", "file", "max_size", "backups", "lines"];
pub(super) const PROGRAM_LATER: &[&str] = &[];
pub(super) const READINESS_KEYS: &[&str] = &[
    "check",
    "min_uptime",
    "exec",
    "interval",
    "timeout",
    "max_queue",
];
pub(super) const HEALTH_KEYS: &[&str] =
    &["http", "exec", "interval", "timeout", "failures", "hung"];
pub(super) const BACKOFF_KEYS: &[&str] = &["initial", "max", "reset_after"];

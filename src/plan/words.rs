//! What `drover check` says for a setting chosen from a list: the value as the file writes it,
//! and what it means where that is not obvious. Never a Rust name (`Always`, `Json`).

use crate::config::{BudgetMode, LogFormat, LogMode, RestartPolicy};

pub fn restart(r: RestartPolicy) -> &'static str {
    match r {
        RestartPolicy::Always => "always (whatever the exit)",
        RestartPolicy::OnFailure => "on-failure (a non-zero exit or a signal; exit 0 is done)",
        RestartPolicy::Never => "never",
    }
}

pub fn log_mode(l: LogMode) -> &'static str {
    match l {
        LogMode::Capture => "capture: each line through drover, tagged with its worker",
        LogMode::Inherit => "inherit: written straight to drover's stdout and stderr",
    }
}

pub fn log_format(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Auto => {
            "auto (the journal under systemd, text on a terminal, JSON lines otherwise)"
        }
        LogFormat::Text => "text",
        LogFormat::Json => "json (JSON lines)",
        LogFormat::Journald => "journald",
    }
}

pub fn budget_mode(m: BudgetMode) -> &'static str {
    match m {
        BudgetMode::Auto => "auto",
        BudgetMode::Cgroup => "cgroup",
        BudgetMode::Sample => "sample",
        BudgetMode::Off => "off",
    }
}

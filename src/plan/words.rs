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

/// Where a program's output goes, as `drover check` says it.
pub fn log_mode(p: &crate::config::ProgramCfg) -> String {
    let ring = match p.log_lines {
        0 => "no lines kept for `drover logs`".to_string(),
        n => format!("the last {n} lines kept for `drover logs`"),
    };
    match (p.log, &p.log_file) {
        (LogMode::Inherit, _) => {
            "inherit: written straight to drover's stdout and stderr; not captured, so `drover logs` has none".into()
        }
        (LogMode::Capture, None) => {
            format!("capture: each line through drover, tagged with its worker, to drover's stdout; {ring}")
        }
        (LogMode::Capture, Some(f)) => format!(
            "capture: each line through drover to {} (rotated at {}, {} old file{} kept), not to drover's stdout; {ring}",
            f.path.display(),
            crate::config::values::fmt_size(f.max_size),
            f.backups,
            if f.backups == 1 { "" } else { "s" }
        ),
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

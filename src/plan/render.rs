//! What `drover check` prints: the plan in the file's words (`words.rs`), section by section:
//! the supervisor, sockets and steps, each program with its checks, the start order, budgets.

use std::fmt::Write;

use super::{order, words};
use crate::config::{Config, ListenAddr, OnExhausted};
use crate::process::identity;
use crate::process::signals;

pub fn render(cfg: &Config, source: &str) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "configuration: {source}");
    render_supervisor(&mut o, cfg);
    render_sockets_and_steps(&mut o, cfg);
    let _ = writeln!(o, "programs ({}):", cfg.programs.len());
    for p in &cfg.programs {
        render_program(&mut o, p);
        render_checks(&mut o, p);
    }
    order::render(&mut o, cfg);
    render_budgets(&mut o, cfg);
    o
}

fn render_supervisor(o: &mut String, cfg: &Config) {
    let s = &cfg.supervisor;
    let _ = writeln!(
        o,
        "supervisor: status {}, shutdown timeout {:?}, log format {}",
        s.status
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        s.shutdown_timeout,
        words::log_format(s.log_format)
    );
    let _ = writeln!(
        o,
        "  crash loop: a program whose every worker (or its preloader) failed {} times in a row, each before its reset_after -> {}",
        s.exhausted_after,
        match s.on_exhausted {
            Some(OnExhausted::Exit) => "exit 1; the app's own exit code if it never became ready",
            Some(OnExhausted::Stay) => "stay up, degraded, retrying (even if it never became ready)",
            None => "the app's own exit code if it never became ready (a failed deployment); once it had served: exit 1 as PID 1 (containers), stay up otherwise",
        }
    );
    let _ = writeln!(
        o,
        "  control API: {}",
        match (&s.control_token_file, &s.status) {
            (_, Some(ListenAddr::Unix(_))) =>
                "on: the status listener is a unix socket (mode 0600)".to_string(),
            (Some(f), _) => format!("on: Authorization: Bearer <token from {}>", f.display()),
            (None, _) =>
                "off (set control_token_file, or serve status on a unix socket)".to_string(),
        }
    );
    if let Some(ListenAddr::Tcp(_)) = &s.status {
        let _ = writeln!(
            o,
            "  status answers Host: {}",
            if s.status_hosts.iter().any(|h| h == "*") {
                "any (status_hosts = [\"*\"])".to_string()
            } else {
                ["IP addresses", "localhost"]
                    .into_iter()
                    .chain(s.status_hosts.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
    }
    let _ = writeln!(
        o,
        "  history: {}",
        if s.history.is_zero() {
            "off".to_string()
        } else {
            format!(
                "the last {:?}, a sample every {:?} while a worker runs ({} samples; GET /history, the page's charts)",
                s.history,
                s.history_interval,
                (s.history.as_millis() / s.history_interval.as_millis().max(1))
            )
        }
    );
}

fn render_sockets_and_steps(o: &mut String, cfg: &Config) {
    let _ = writeln!(
        o,
        "sockets ({}), bound once before the steps run:",
        cfg.sockets.len()
    );
    for k in &cfg.sockets {
        let kind = match &k.listen {
            ListenAddr::Tcp(_) => "tcp, SO_REUSEADDR, TCP_NODELAY".to_string(),
            ListenAddr::Unix(_) => format!(
                "unix, mode {}",
                k.mode
                    .map(|m| format!("{m:o}"))
                    .unwrap_or_else(|| "default".into())
            ),
        };
        let _ = writeln!(
            o,
            "  {:<12} {} ({kind}, backlog {})",
            k.name, k.listen, k.backlog
        );
    }
    let _ = writeln!(
        o,
        "pre-start steps ({}), in order, without the sockets:",
        cfg.prestart.len()
    );
    for (i, st) in cfg.prestart.iter().enumerate() {
        let _ = writeln!(
            o,
            "  {}. {:<12} {} (timeout {}, {} retr{}, delay {:?})",
            i + 1,
            st.name,
            st.command,
            st.timeout
                .map(|t| format!("{t:?}"))
                .unwrap_or_else(|| "none".into()),
            st.retries,
            if st.retries == 1 { "y" } else { "ies" },
            st.retry_delay
        );
        if let Some(id) = &st.identity {
            let _ = writeln!(o, "     {:<12} runs as {}", "", runs_as(id));
        }
        if let Some(files) = env_files_shown(&st.file_env) {
            let _ = writeln!(o, "     {:<12} env file {files}", "");
        }
        let grace = st.stop_grace(&cfg.supervisor);
        let _ = writeln!(
            o,
            "     {:<12} on shutdown: SIG{} to its process group, SIGKILL after {grace:?}{}",
            "",
            signals::name(st.stop_signal),
            match st.stop_timeout {
                None => " (supervisor.shutdown_timeout)",
                Some(t) if t > grace => " (stop_timeout capped by supervisor.shutdown_timeout)",
                Some(_) => "",
            }
        );
    }
}

/// The env files a program or step reads, in order, with the keys each sets: never a value
/// (they hold secrets).
fn env_files_shown(e: &crate::config::FileEnv) -> Option<String> {
    if e.files.is_empty() {
        return None;
    }
    let each: Vec<String> = e
        .files
        .iter()
        .map(|f| match &f.keys {
            Some(k) if k.is_empty() => format!("{} (sets nothing)", f.path.display()),
            Some(k) => format!("{} ({})", f.path.display(), k.join(", ")),
            None => format!("{} (optional, not there)", f.path.display()),
        })
        .collect();
    Some(format!(
        "{}; then `env`; values not shown",
        each.join(", then ")
    ))
}

/// `uid 33 gid 33 (www-data), no supplementary groups`
fn runs_as(id: &identity::Identity) -> String {
    format!(
        "uid {} gid {}{}, no supplementary groups",
        id.uid,
        id.gid,
        id.name
            .as_ref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    )
}

fn render_program(o: &mut String, p: &crate::config::ProgramCfg) {
    let _ = writeln!(
        o,
        "  {}: {} worker{} ({})",
        p.name,
        p.workers,
        if p.workers == 1 { "" } else { "s" },
        if p.workers_auto {
            "workers = \"auto\": see `derived`"
        } else {
            "as configured"
        }
    );
    let _ = writeln!(o, "    command  {}", p.command);
    if let Some(files) = env_files_shown(&p.file_env) {
        let _ = writeln!(o, "    env file {files}");
    }
    if p.preload {
        let _ = writeln!(o, "    preload  the command runs once as a preloader (DROVER_PRELOAD_FD) and forks each worker; it must speak drover's preload protocol (drover-uvicorn does)");
    }
    match &p.prometheus_multiproc_dir {
        Some(crate::config::MetricsDirCfg::Path(d)) => {
            let _ = writeln!(o, "    metrics  PROMETHEUS_MULTIPROC_DIR={} (opened without following symlinks, owned by the program's user, emptied at start; a dead worker's live gauges removed)", d.display());
        }
        Some(crate::config::MetricsDirCfg::Auto) => {
            let _ = writeln!(o, "    metrics  PROMETHEUS_MULTIPROC_DIR=a fresh directory under drover's runtime directory, owned by the program's user (a dead worker's live gauges removed)");
        }
        None => {}
    }
    if let Some(id) = &p.identity {
        let _ = writeln!(o, "    runs as  {}", runs_as(id));
    }
    if !p.sockets.is_empty() {
        let fds: Vec<String> = p
            .sockets
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} at fd {}", 3 + i))
            .collect();
        let _ = writeln!(
            o,
            "    sockets  {} (LISTEN_FDS={})",
            fds.join(", "),
            p.sockets.len()
        );
    }
    let _ = writeln!(
        o,
        "    restart  {}; backoff {:?} doubling to {:?}, reset after {:?} up",
        words::restart(p.restart),
        p.backoff.initial,
        p.backoff.max,
        p.backoff.reset_after
    );
    let _ = writeln!(
        o,
        "    stop     SIG{} to the process group, SIGKILL after {:?}",
        signals::name(p.stop_signal),
        p.stop_timeout
    );
    let _ = writeln!(o, "    output   {}", words::log_mode(p));
}

/// Readiness, health and watch lines of one program.
fn render_checks(o: &mut String, p: &crate::config::ProgramCfg) {
    let r = &p.readiness;
    let how = match r.check {
        crate::config::ReadyCheck::Listening => {
            "accepting on its socket (seen in /proc)".to_string()
        }
        crate::config::ReadyCheck::Uptime => format!("up for {:?}", r.min_uptime),
        crate::config::ReadyCheck::Exec => format!(
            "`{}` exits 0",
            r.exec.as_ref().map(|c| c.to_string()).unwrap_or_default()
        ),
        crate::config::ReadyCheck::Notify => {
            "it sends READY=1 to NOTIFY_SOCKET (sd_notify)".to_string()
        }
    };
    let _ = writeln!(
        o,
        "    ready    when {how}; checked every {:?}; not ready within {:?} -> recycled; /readyz needs {} ready",
        r.interval, r.timeout, p.min_ready
    );
    if let Some(m) = r.max_queue {
        let _ = writeln!(
            o,
            "    shed     /readyz answers 503 while more than {m} connections wait in its sockets (read every second)"
        );
    }
    match &p.health {
        Some(h) => {
            let mut what = vec![];
            if let Some(path) = &h.http {
                what.push(format!("GET {path} through the socket"));
            }
            if let Some(e) = &h.exec {
                what.push(format!("`{e}`"));
            }
            if h.hung {
                what.push("hang detection from /proc".into());
            }
            let _ = writeln!(
                o,
                "    health   {} every {:?} (timeout {:?}); {} failures in a row -> recycled",
                what.join(" + "),
                h.interval,
                h.timeout,
                h.failures
            );
        }
        None => {
            let _ = writeln!(
                o,
                "    health   no checks (add [program.{}.health])",
                p.name
            );
        }
    }
    if !p.watch.is_empty() {
        let w: Vec<String> = p.watch.iter().map(|x| x.display().to_string()).collect();
        let except = match p.watch_exclude.as_slice() {
            [] => String::new(),
            x => format!(" (not {})", x.join(", ")),
        };
        let _ = writeln!(
            o,
            "    watch    {} -> rolling restart on a change to {}{except}",
            w.join(", "),
            p.watch_include.join(" or ")
        );
    }
}

fn render_budgets(o: &mut String, cfg: &Config) {
    let b = &cfg.budget;
    let _ = writeln!(
        o,
        "node budget: memory {}, cpu {}, mode {}, sampling every {:?}",
        b.memory
            .map(crate::config::fmt_size)
            .unwrap_or_else(|| "unlimited".into()),
        b.cpu
            .map(|c| format!("{c} cores"))
            .unwrap_or_else(|| "unlimited".into()),
        words::budget_mode(b.mode),
        b.sample_interval
    );
    for p in &cfg.programs {
        let w = &p.budget;
        if *w != Default::default() {
            let _ = writeln!(
                o,
                "  {} per worker: memory_soft {} (graceful recycle), memory_hard {} (killed), cpu {}",
                p.name,
                w.memory_soft.map(crate::config::fmt_size).unwrap_or_else(|| "-".into()),
                w.memory_hard.map(crate::config::fmt_size).unwrap_or_else(|| "-".into()),
                w.cpu.map(|c| format!("{c} cores")).unwrap_or_else(|| "-".into())
            );
        }
        if let Some(a) = &p.autoscale {
            let of = if w.cpu.is_some() {
                "the per-worker budget"
            } else {
                "one core"
            };
            let targets: Vec<String> = a
                .target_cpu
                .map(|c| format!("target cpu {c}% of {of}"))
                .into_iter()
                .chain(
                    a.target_queue
                        .map(|q| format!("target queue {q} waiting per worker")),
                )
                .collect();
            let _ = writeln!(
                o,
                "  {} autoscale: {}..={} workers, {} (the larger recommendation wins), scale-down window {:?}",
                p.name,
                a.min,
                a.max,
                targets.join(", "),
                a.scale_down_window
            );
        }
    }
}

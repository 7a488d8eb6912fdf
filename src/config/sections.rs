//! Readers for `[supervisor]`, `[budget]`, `[[prestart]]` and `[socket.NAME]`.

use std::path::PathBuf;
use std::time::Duration;

use super::keys::*;
use super::program;
use super::tree::{kind, Ctx, Node, V};
use super::values::{is_name, parse_listen};
use super::*;

pub(super) fn read_supervisor(cx: &mut Ctx, n: &Node, s: &mut SupervisorCfg) {
    let Some(t) = cx.table("supervisor", n) else {
        return;
    };
    cx.keys("[supervisor]", t, SUP_KEYS, &[]);
    for (k, _, v) in t {
        match k.as_str() {
            "status" => read_status(cx, v, s),
            "status_hosts" => s.status_hosts = read_status_hosts(cx, v),
            "control_token_file" => {
                // empty (e.g. "${DROVER_TOKEN_FILE:-}" unset): no token, the control API is off
                s.control_token_file = cx
                    .string("supervisor.control_token_file", v)
                    .filter(|f| !f.is_empty())
                    .map(PathBuf::from)
            }
            "tls_cert" => s.tls_cert = cx.string("supervisor.tls_cert", v).map(PathBuf::from),
            "tls_key" => s.tls_key = cx.string("supervisor.tls_key", v).map(PathBuf::from),
            "shutdown_timeout" => {
                if let Some(d) =
                    cx.positive("supervisor.shutdown_timeout", v, Duration::from_millis(1))
                {
                    s.shutdown_timeout = d
                }
            }
            "log_format" => {
                if let Some(f) = cx.choice(
                    "supervisor.log_format",
                    v,
                    &[
                        ("auto", LogFormat::Auto),
                        ("text", LogFormat::Text),
                        ("json", LogFormat::Json),
                        ("journald", LogFormat::Journald),
                    ],
                ) {
                    s.log_format = f
                }
            }
            "on_exhausted" => {
                s.on_exhausted = cx.choice(
                    "supervisor.on_exhausted",
                    v,
                    &[("exit", OnExhausted::Exit), ("stay", OnExhausted::Stay)],
                )
            }
            "on_all_exited" => {
                let options = [("exit", OnAllExited::Exit), ("stay", OnAllExited::Stay)];
                let w = "supervisor.on_all_exited";
                s.on_all_exited = cx.choice(w, v, &options).unwrap_or(s.on_all_exited)
            }
            "exhausted_after" => {
                if let Some(i) = cx.uint("supervisor.exhausted_after", v, 1, 1000) {
                    s.exhausted_after = i as u32
                }
            }
            "drain_delay" => {
                if let Some(d) = cx.duration("supervisor.drain_delay", v) {
                    s.drain_delay = d
                }
            }
            "env_file" => s.env_file = env_file::read(cx, "supervisor.env_file", v),
            "history" => s.history = cx.duration("supervisor.history", v).unwrap_or(s.history),
            "history_interval" => {
                let w = "supervisor.history_interval";
                let d = cx.positive(w, v, Duration::from_secs(1));
                s.history_interval = d.unwrap_or(s.history_interval)
            }
            _ => {}
        }
    }
    check_tls(cx, t, s);
    check_history(cx, t, s);
}

/// Most samples a history keeps per series (a day at 10 s, an hour at 1 s).
pub const HISTORY_MAX_SAMPLES: u64 = 8640;

/// The history window holds at least one sample and at most `HISTORY_MAX_SAMPLES`.
fn check_history(cx: &mut Ctx, t: &[(String, std::ops::Range<usize>, Node)], s: &SupervisorCfg) {
    if s.history.is_zero() {
        return;
    }
    let Some((_, span, _)) = t
        .iter()
        .find(|(k, _, _)| k == "history" || k == "history_interval")
    else {
        return;
    };
    let n = s.history.as_millis() / s.history_interval.as_millis().max(1);
    if n < 1 {
        cx.err(span, format!("supervisor.history ({:?}) is shorter than supervisor.history_interval ({:?}); write history = \"0s\" to keep none", s.history, s.history_interval));
    } else if n as u64 > HISTORY_MAX_SAMPLES {
        cx.err(span, format!("supervisor.history ({:?}) at history_interval {:?} is {n} samples, more than {HISTORY_MAX_SAMPLES}; sample less often or keep less (long-term history belongs in Prometheus)", s.history, s.history_interval));
    }
}

/// `status`: an address, or "off" / "" for none.
fn read_status(cx: &mut Ctx, v: &Node, s: &mut SupervisorCfg) {
    if let Some(st) = cx.string("supervisor.status", v) {
        if st.is_empty() || st == "off" {
            s.status = None;
        } else if let Ok(a) = parse_listen(&st) {
            s.status = Some(a);
        } else {
            s.status = cx.listen("supervisor.status", v);
        }
    }
}

/// `status_hosts`: host names (no port, no scheme), or `"*"` for any.
fn read_status_hosts(cx: &mut Ctx, v: &Node) -> Vec<String> {
    let w = "supervisor.status_hosts";
    let hosts = super::program::strings(cx, w, v, "host names");
    let bad = |h: &String| {
        h.is_empty()
            || (h.contains('*') && h != "*")
            || h.chars()
                .any(|c| c.is_whitespace() || matches!(c, ':' | '/' | '@' | '[' | ']' | '?' | '#'))
    };
    if let Some(h) = hosts.iter().find(|h| bad(h)) {
        cx.err(&v.span, format!("{w}: `{h}` is not a host name; write names as in the Host header without the port (\"drover.internal\"), or \"*\" to allow any (IP addresses and localhost are always allowed)"));
        return vec![];
    }
    hosts
}

/// TLS needs both files, and a TCP listener to speak it on.
fn check_tls(cx: &mut Ctx, t: &[(String, std::ops::Range<usize>, Node)], s: &SupervisorCfg) {
    let span_of = |key: &str| {
        t.iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, ks, _)| ks.clone())
    };
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => cx.err(
            &span_of("tls_cert").unwrap(),
            "supervisor.tls_cert needs supervisor.tls_key (the certificate's private key, PEM)",
        ),
        (None, Some(_)) => cx.err(
            &span_of("tls_key").unwrap(),
            "supervisor.tls_key needs supervisor.tls_cert (the certificate chain, PEM)",
        ),
        (Some(_), Some(_)) if !matches!(s.status, Some(ListenAddr::Tcp(_))) => cx.err(
            &span_of("tls_cert").unwrap(),
            "supervisor.tls_cert: TLS needs a TCP status address (a unix socket is protected by its file mode)",
        ),
        _ => {}
    }
}

pub(super) fn read_budget(cx: &mut Ctx, n: &Node, b: &mut NodeBudget) {
    let Some(t) = cx.table("budget", n) else {
        return;
    };
    cx.keys("[budget]", t, BUDGET_KEYS, &[]);
    for (k, _, v) in t {
        let w = format!("budget.{k}");
        match k.as_str() {
            "memory" => b.memory = cx.size(&w, v),
            "cpu" => b.cpu = cx.cores(&w, v),
            "mode" => {
                if let Some(m) = cx.choice(
                    &w,
                    v,
                    &[
                        ("auto", BudgetMode::Auto),
                        ("cgroup", BudgetMode::Cgroup),
                        ("sample", BudgetMode::Sample),
                        ("off", BudgetMode::Off),
                    ],
                ) {
                    b.mode = m
                }
            }
            "sample_interval" => {
                if let Some(d) = cx.duration(&w, v) {
                    if d < Duration::from_millis(50) || d > Duration::from_secs(60) {
                        cx.err(&v.span, format!("{w}: {d:?} is out of range (50ms..=60s)"));
                    } else {
                        b.sample_interval = d
                    }
                }
            }
            _ => {}
        }
    }
}

pub(super) fn read_step(cx: &mut Ctx, i: usize, n: &Node) -> Option<StepCfg> {
    let t = cx.table("[[prestart]]", n)?;
    let what = format!("[[prestart]] #{}", i + 1);
    cx.keys(&what, t, STEP_KEYS, &[]);
    let mut name = None;
    let mut command = None;
    let mut step = StepCfg {
        name: String::new(),
        command: CommandSpec::literal(vec![]),
        timeout: None,
        retries: 0,
        retry_delay: Duration::from_secs(1),
        env: vec![],
        env_file: vec![],
        file_env: FileEnv::default(),
        cwd: None,
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        stop_timeout: None,
        run_as: None,
        identity: None,
    };
    let mut ok = true;
    let (mut user, mut group) = (None, None);
    for (k, _, v) in t {
        let w = format!("{what}.{k}");
        match k.as_str() {
            "name" => {
                name = cx.string(&w, v);
                if let Some(nm) = &name {
                    if !is_name(nm) {
                        cx.err(
                            &v.span,
                            format!("{w}: `{nm}` is not a valid name (letters, digits, `-`, `_`)"),
                        );
                    }
                }
            }
            "command" => {
                command = cx.command(&w, v);
                ok &= command.is_some();
            }
            "timeout" => step.timeout = cx.positive(&w, v, Duration::from_millis(1)),
            "retries" => step.retries = cx.uint(&w, v, 0, 1000).unwrap_or(0) as u32,
            "retry_delay" => {
                if let Some(d) = cx.duration(&w, v) {
                    step.retry_delay = d
                }
            }
            "env" => step.env = cx.env_table(&w, v),
            "env_file" => step.env_file = env_file::read(cx, &w, v),
            "cwd" => step.cwd = cx.string(&w, v).map(PathBuf::from),
            "stop_signal" => {
                step.stop_signal = program::stop_signal(cx, &w, v).unwrap_or(step.stop_signal)
            }
            "stop_timeout" => step.stop_timeout = program::stop_timeout(cx, &w, v),
            "user" => user = program::id_name(cx, &w, k, v),
            "group" => group = program::id_name(cx, &w, k, v),
            _ => {}
        }
    }
    step.run_as = program::run_as(cx, user, group);
    if !t.iter().any(|(k, _, _)| k == "command") {
        cx.err(&n.span, format!("{what}: `command` is missing"));
        ok = false;
    }
    step.name = name.unwrap_or_else(|| format!("step{}", i + 1));
    step.command = command?;
    ok.then_some(step)
}

pub(super) fn read_socket(cx: &mut Ctx, name: &str, n: &Node) -> Option<SocketCfg> {
    let what = format!("[socket.{name}]");
    let t = cx.table(&what, n)?;
    cx.keys(&what, t, SOCKET_KEYS, &[]);
    let mut listen = None;
    let mut backlog = 1024;
    let mut mode = None;
    for (k, _, v) in t {
        let w = format!("socket.{name}.{k}");
        match k.as_str() {
            "listen" => listen = cx.listen(&w, v),
            "backlog" => backlog = cx.uint(&w, v, 1, 65535).unwrap_or(1024) as i32,
            "mode" => {
                mode = match &v.v {
                    V::Str(s) => match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
                        Ok(m) if m <= 0o777 => Some(m),
                        _ => {
                            cx.err(
                                &v.span,
                                format!("{w}: `{s}` is not an octal file mode like \"0660\""),
                            );
                            None
                        }
                    },
                    _ => {
                        cx.err(
                            &v.span,
                            format!(
                                "{w}: expected an octal string like \"0660\", found {}",
                                kind(v)
                            ),
                        );
                        None
                    }
                }
            }
            _ => {}
        }
    }
    if !t.iter().any(|(k, _, _)| k == "listen") {
        cx.err(&n.span, format!("{what}: `listen` is missing"));
    }
    if let (Some(_), Some(ListenAddr::Tcp(_))) = (mode, &listen) {
        let span = t
            .iter()
            .find(|(k, _, _)| k == "mode")
            .map(|(_, _, v)| v.span.clone());
        cx.err(
            &span.unwrap_or(n.span.clone()),
            format!("socket.{name}.mode: a file mode applies to a unix socket; `listen` is a TCP address"),
        );
    }
    Some(SocketCfg {
        name: name.into(),
        listen: listen?,
        backlog,
        mode,
    })
}

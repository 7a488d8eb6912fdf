//! The reader for `[program.NAME]`, one function per sub-table.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use super::budgets::{read_autoscale, read_worker_budget};
use super::keys::*;
use super::tree::{kind, Ctx, Node, V};
use super::*;

/// What the readers of one program's keys found, beyond the values themselves.
#[derive(Default)]
struct Seen {
    check: bool,
    min_uptime: bool,
    min_ready: bool,
}

fn defaults(name: &str) -> ProgramCfg {
    ProgramCfg {
        name: name.into(),
        command: CommandSpec::literal(vec![]),
        sockets: vec![],
        workers: 1,
        restart: RestartPolicy::Always,
        backoff: BackoffCfg::default(),
        stop_signal: nix::sys::signal::Signal::SIGTERM,
        stop_timeout: Duration::from_secs(10),
        env: vec![],
        env_file: vec![],
        file_env: FileEnv::default(),
        cwd: None,
        log: LogMode::Capture,
        log_file: None,
        log_lines: super::log::DEFAULT_RING_LINES,
        min_ready: 1,
        readiness: ReadinessCfg {
            check: ReadyCheck::Uptime,
            min_uptime: Duration::from_secs(1),
            exec: None,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(60),
            max_queue: None,
        },
        health: None,
        watch: vec![],
        watch_include: crate::watch::filter::DEFAULT_INCLUDE
            .iter()
            .map(|s| s.to_string())
            .collect(),
        watch_exclude: vec![],
        workers_auto: false,
        budget: WorkerBudget::default(),
        autoscale: None,
        max_lifetime: None,
        max_lifetime_jitter: Duration::ZERO,
        preload: false,
        prometheus_multiproc_dir: None,
        run_as: None,
        identity: None,
        depends_on: vec![],
        essential: false,
    }
}

pub(super) fn read_program(cx: &mut Ctx, name: &str, n: &Node) -> Option<ProgramCfg> {
    let what = format!("[program.{name}]");
    let t = cx.table(&what, n)?;
    cx.keys(&what, t, PROGRAM_KEYS, PROGRAM_LATER);
    let mut p = defaults(name);
    let mut command = None;
    let mut user: Option<(String, Range<usize>)> = None;
    let mut group: Option<(String, Range<usize>)> = None;
    let mut seen = Seen::default();
    let mut globs_at = None;
    for (k, _, v) in t {
        let w = format!("program.{name}.{k}");
        match k.as_str() {
            "command" => command = cx.command(&w, v),
            "sockets" => p.sockets = strings(cx, &w, v, "socket names"),
            "workers" => workers(cx, &w, v, &mut p),
            "restart" => p.restart = restart(cx, &w, v).unwrap_or(p.restart),
            "backoff" => read_backoff(cx, &w, v, &mut p.backoff),
            "stop_signal" => p.stop_signal = stop_signal(cx, &w, v).unwrap_or(p.stop_signal),
            "stop_timeout" => p.stop_timeout = stop_timeout(cx, &w, v).unwrap_or(p.stop_timeout),
            "env" => p.env = cx.env_table(&w, v),
            "env_file" => p.env_file = env_file::read(cx, &w, v),
            "cwd" => p.cwd = cx.string(&w, v).map(PathBuf::from),
            "user" => user = id_name(cx, &w, k, v),
            "group" => group = id_name(cx, &w, k, v),
            "log" => super::log::read(cx, &w, v, &mut p),
            "min_ready" => {
                if let Some(i) = cx.uint(&w, v, 0, 10_000) {
                    p.min_ready = i as u32;
                    seen.min_ready = true;
                }
            }
            "watch" => {
                p.watch = strings(cx, &w, v, "paths")
                    .into_iter()
                    .map(PathBuf::from)
                    .collect()
            }
            "watch_include" | "watch_exclude" => {
                let globs = watch_globs(cx, &w, v);
                globs_at = globs_at.or(Some((w.clone(), v.span.clone())));
                match k.as_str() {
                    "watch_include" => p.watch_include = globs,
                    _ => p.watch_exclude = globs,
                }
            }
            "readiness" => read_readiness(cx, &w, v, &mut p.readiness, &mut seen),
            "budget" => {
                if let Some(b) = read_worker_budget(cx, &w, v) {
                    p.budget = b
                }
            }
            "autoscale" => p.autoscale = read_autoscale(cx, &w, v),
            "health" => p.health = read_health(cx, &w, v),
            "max_lifetime" | "max_lifetime_jitter" | "preload" | "prometheus_multiproc_dir" => {
                read_lifetime_and_preload(cx, &w, k, v, &mut p)
            }
            "depends_on" => p.depends_on = super::depends::read(cx, &w, v),
            "essential" => match v.v {
                V::Bool(b) => p.essential = b,
                _ => cx.err(
                    &v.span,
                    format!("{w}: expected true or false, found {}", kind(v)),
                ),
            },
            _ => {}
        }
    }
    finish(cx, &what, t, n, &mut p, &seen);
    if let (Some((w, span)), true) = (globs_at, p.watch.is_empty()) {
        cx.err(
            &span,
            format!("{w}: set without `watch`, so nothing is watched; add the directories, e.g. watch = [\"src\"]"),
        );
    }
    p.run_as = run_as(cx, user, group);
    p.command = command?;
    Some(p)
}

/// `user` and `group` as read, positioned at the first of them (for `plan`'s look-up errors).
pub(super) fn run_as(
    cx: &Ctx,
    user: Option<(String, Range<usize>)>,
    group: Option<(String, Range<usize>)>,
) -> Option<RunAs> {
    let at = user
        .as_ref()
        .or(group.as_ref())
        .map(|(_, span)| span.start)?;
    let (line, col) = line_col(cx.src, at);
    Some(RunAs {
        user: user.map(|(u, _)| u),
        group: group.map(|(g, _)| g),
        line,
        col,
    })
}

/// `max_lifetime`, `max_lifetime_jitter`, `preload`, `prometheus_multiproc_dir`.
fn read_lifetime_and_preload(cx: &mut Ctx, w: &str, k: &str, v: &Node, p: &mut ProgramCfg) {
    match k {
        "max_lifetime" => p.max_lifetime = cx.positive(w, v, Duration::from_secs(1)),
        "preload" => match v.v {
            V::Bool(b) => p.preload = b,
            _ => cx.err(
                &v.span,
                format!("{w}: expected true or false, found {}", kind(v)),
            ),
        },
        "prometheus_multiproc_dir" => match v.v {
            V::Bool(true) => p.prometheus_multiproc_dir = Some(MetricsDirCfg::Auto),
            V::Bool(false) => p.prometheus_multiproc_dir = None,
            _ => {
                if let Some(d) = cx.string(w, v) {
                    if d.starts_with('/') {
                        p.prometheus_multiproc_dir = Some(MetricsDirCfg::Path(PathBuf::from(d)));
                    } else {
                        cx.err(
                            &v.span,
                            format!("{w}: `{d}` must be an absolute path (drover empties it at start), or true for a directory of drover's own"),
                        );
                    }
                }
            }
        },
        "max_lifetime_jitter" => {
            p.max_lifetime_jitter = cx.duration(w, v).unwrap_or(p.max_lifetime_jitter)
        }
        _ => {}
    }
}

fn restart(cx: &mut Ctx, w: &str, v: &Node) -> Option<RestartPolicy> {
    let options = [
        ("always", RestartPolicy::Always),
        ("on-failure", RestartPolicy::OnFailure),
        ("never", RestartPolicy::Never),
    ];
    cx.choice(w, v, &options)
}

/// `workers`: a count, or `"auto"` (derived when planning), or a string that expands to one of
/// them: `"${WEB_CONCURRENCY:-auto}"`.
fn workers(cx: &mut Ctx, w: &str, v: &Node, p: &mut ProgramCfg) {
    let V::Str(raw) = &v.v else {
        p.workers = cx.uint(w, v, 0, 10_000).map_or(p.workers, |i| i as u32);
        return;
    };
    let Some(x) = cx.string(w, v) else { return };
    let from = if x == *raw {
        String::new()
    } else {
        format!(" (from {raw:?})")
    };
    match x.trim() {
        "auto" => p.workers_auto = true,
        t => match t.parse::<i64>() {
            Ok(i) if (0..=10_000).contains(&i) => p.workers = i as u32,
            Ok(i) => cx.err(
                &v.span,
                format!("{w}: {i}{from} is out of range (allowed 0..=10000)"),
            ),
            Err(_) => cx.err(
                &v.span,
                format!("{w}: `{x}`{from} is neither a number of workers nor \"auto\""),
            ),
        },
    }
}

/// `stop_signal` of a program or a step.
pub(super) fn stop_signal(cx: &mut Ctx, w: &str, v: &Node) -> Option<nix::sys::signal::Signal> {
    let s = cx.string(w, v)?;
    let sig = crate::process::signals::parse(&s);
    if sig.is_none() {
        cx.err(&v.span, format!("{w}: `{s}` is not a signal drover sends (TERM, INT, QUIT, HUP, KILL, USR1, USR2, WINCH, ABRT)"));
    }
    sig
}

/// `stop_timeout` of a program or a step: more than zero.
pub(super) fn stop_timeout(cx: &mut Ctx, w: &str, v: &Node) -> Option<Duration> {
    let d = cx.duration(w, v)?;
    if d.is_zero() {
        cx.err(
            &v.span,
            format!("{w}: must be more than zero; to kill at once, write stop_signal = \"KILL\""),
        );
        return None;
    }
    Some(d)
}

/// An array of strings (socket names, paths, host names).
pub(super) fn strings(cx: &mut Ctx, w: &str, v: &Node, what: &str) -> Vec<String> {
    match &v.v {
        V::Arr(items) => items.iter().filter_map(|it| cx.string(w, it)).collect(),
        _ => {
            cx.err(
                &v.span,
                format!("{w}: expected an array of {what}, found {}", kind(v)),
            );
            vec![]
        }
    }
}

/// `watch_include` / `watch_exclude`: glob patterns (`watch/filter.rs`), each checked here.
fn watch_globs(cx: &mut Ctx, w: &str, v: &Node) -> Vec<String> {
    let items = match &v.v {
        V::Arr(items) => items.as_slice(),
        _ => std::slice::from_ref(v),
    };
    let mut out = vec![];
    for it in items {
        let Some(g) = cx.string(w, it) else { continue };
        match crate::watch::filter::pattern(&g) {
            Ok(_) => out.push(g),
            Err(e) => cx.err(&it.span, format!("{w}: {e}")),
        }
    }
    out
}

/// `user` or `group`: a name or a numeric id, looked up by `plan`.
pub(super) fn id_name(cx: &mut Ctx, w: &str, k: &str, v: &Node) -> Option<(String, Range<usize>)> {
    let id = match &v.v {
        V::Str(s) if !s.is_empty() => Some(s.clone()),
        V::Int(i) if *i >= 0 && *i < u32::MAX as i64 => Some(i.to_string()),
        _ => {
            cx.err(
                &v.span,
                format!(
                    "{w}: expected a {k} name or a numeric id, found {}",
                    kind(v)
                ),
            );
            None
        }
    };
    id.map(|s| (s, v.span.clone()))
}

/// Defaults that follow from other keys, and the checks between keys of one program.
fn finish(
    cx: &mut Ctx,
    what: &str,
    t: &[(String, Range<usize>, Node)],
    n: &Node,
    p: &mut ProgramCfg,
    seen: &Seen,
) {
    let span_of = |key: &str| {
        t.iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, _, v)| v.span.clone())
            .unwrap_or(n.span.clone())
    };
    if !seen.check && !p.sockets.is_empty() {
        p.readiness.check = ReadyCheck::Listening;
    }
    if !seen.min_uptime && p.readiness.check != ReadyCheck::Uptime {
        p.readiness.min_uptime = Duration::ZERO;
    }
    if !seen.min_ready {
        p.min_ready = p.min_ready.min(p.workers);
    } else if p.min_ready > p.workers {
        cx.err(
            &span_of("min_ready"),
            format!(
                "{what}: min_ready ({}) is more than workers ({})",
                p.min_ready, p.workers
            ),
        );
    }
    if p.readiness.check == ReadyCheck::Listening && p.sockets.is_empty() && seen.check {
        cx.err(
            &span_of("readiness"),
            format!("{what}: readiness check \"listening\" needs the program to have `sockets`"),
        );
    }
    if !p.max_lifetime_jitter.is_zero() && p.max_lifetime.is_none() {
        cx.err(
            &span_of("max_lifetime_jitter"),
            format!("{what}: max_lifetime_jitter spreads max_lifetime, which is not set"),
        );
    }
    if p.health.as_ref().is_some_and(|h| h.http.is_some()) && p.sockets.is_empty() {
        cx.err(
            &span_of("health"),
            format!("{what}: health check `http` goes through the program's socket, and it has no `sockets`; use `exec` instead, or give it a socket"),
        );
    }
    if !t.iter().any(|(k, _, _)| k == "command") {
        cx.err(&n.span, format!("{what}: `command` is missing"));
    }
}

fn read_backoff(cx: &mut Ctx, w: &str, v: &Node, b: &mut BackoffCfg) {
    let Some(bt) = cx.table(w, v) else { return };
    cx.keys(w, bt, BACKOFF_KEYS, &[]);
    for (bk, _, bv) in bt {
        let bw = format!("{w}.{bk}");
        let d = match bk.as_str() {
            "initial" => &mut b.initial,
            "max" => &mut b.max,
            "reset_after" => &mut b.reset_after,
            _ => continue,
        };
        // zero would restart a crashing worker at once, forever: a busy loop
        if let Some(x) = cx.positive(&bw, bv, Duration::from_millis(1)) {
            *d = x
        }
    }
    if b.max < b.initial {
        cx.err(
            &v.span,
            format!(
                "{w}: `max` ({:?}) is below `initial` ({:?})",
                b.max, b.initial
            ),
        );
    }
}

fn read_readiness(cx: &mut Ctx, w: &str, v: &Node, r: &mut ReadinessCfg, seen: &mut Seen) {
    let Some(t) = cx.table(w, v) else { return };
    cx.keys(w, t, READINESS_KEYS, &[]);
    for (rk, _, rv) in t {
        let rw = format!("{w}.{rk}");
        match rk.as_str() {
            "check" => {
                let options = [
                    ("listening", ReadyCheck::Listening),
                    ("uptime", ReadyCheck::Uptime),
                    ("exec", ReadyCheck::Exec),
                    ("notify", ReadyCheck::Notify),
                ];
                if let Some(c) = cx.choice(&rw, rv, &options) {
                    r.check = c;
                    seen.check = true;
                }
            }
            "min_uptime" => {
                if let Some(d) = cx.duration(&rw, rv) {
                    r.min_uptime = d;
                    seen.min_uptime = true;
                }
            }
            "exec" => match rv.v {
                V::Str(_) => cx.err(
                    &rv.span,
                    format!("{rw}: give an argv array, e.g. [\"sh\", \"-c\", \"…{{pid}}…\"]"),
                ),
                _ => r.exec = cx.command(&rw, rv),
            },
            "interval" => {
                if let Some(d) = cx.positive(&rw, rv, Duration::from_millis(10)) {
                    r.interval = d
                }
            }
            "timeout" => {
                if let Some(d) = cx.positive(&rw, rv, Duration::from_millis(1)) {
                    r.timeout = d
                }
            }
            "max_queue" => r.max_queue = cx.uint(&rw, rv, 1, 1_000_000).map(|n| n as u32),
            _ => {}
        }
    }
    if !seen.check && r.exec.is_some() {
        // an exec check given alone is the check
        r.check = ReadyCheck::Exec;
        seen.check = true;
    }
    if r.check != ReadyCheck::Exec && r.exec.is_some() && seen.check {
        cx.err(
            &v.span,
            format!(
                "{w}: `exec` is only run with check = \"exec\" (this check is {:?})",
                r.check
            ),
        );
    }
    if r.check == ReadyCheck::Exec && r.exec.is_none() {
        cx.err(
            &v.span,
            format!("{w}: check = \"exec\" needs `exec = [...]`"),
        );
    }
}

fn read_health(cx: &mut Ctx, w: &str, v: &Node) -> Option<HealthCfg> {
    let t = cx.table(w, v)?;
    cx.keys(w, t, HEALTH_KEYS, &[]);
    let mut h = HealthCfg {
        http: None,
        exec: None,
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(2),
        failures: 3,
        hung: true,
    };
    for (hk, _, hv) in t {
        let hw = format!("{w}.{hk}");
        match hk.as_str() {
            "http" => {
                if let Some(path) = cx.string(&hw, hv) {
                    if path.starts_with('/') && !path.contains(char::is_whitespace) {
                        h.http = Some(path)
                    } else {
                        cx.err(
                            &hv.span,
                            format!("{hw}: `{path}` is not a request path like \"/healthz\""),
                        );
                    }
                }
            }
            "exec" => h.exec = cx.command(&hw, hv),
            "interval" => {
                if let Some(d) = cx.positive(&hw, hv, Duration::from_millis(50)) {
                    h.interval = d
                }
            }
            "timeout" => {
                if let Some(d) = cx.positive(&hw, hv, Duration::from_millis(1)) {
                    h.timeout = d
                }
            }
            "failures" => {
                if let Some(i) = cx.uint(&hw, hv, 1, 1000) {
                    h.failures = i as u32
                }
            }
            "hung" => match hv.v {
                V::Bool(b) => h.hung = b,
                _ => cx.err(
                    &hv.span,
                    format!("{hw}: expected true or false, found {}", kind(hv)),
                ),
            },
            _ => {}
        }
    }
    Some(h)
}

//! `drover run`: read the secrets, start the guard, bind the sockets and the status listener,
//! and hand everything to the supervisor's loop on a single-threaded runtime.

use std::sync::Arc;

use tracing::{error, info, warn};

use drover::api::snapshot::Snapshot;
use drover::api::{listener, server as status};
use drover::config::{Config, ListenAddr};
use drover::logs::{self as logging, output};
use drover::process::{guard, reaper, signals, sockets};
use drover::resources::enforcement;
use drover::{plan, supervisor};

use crate::{load, read_config, Source};

/// What is read before anything starts: a problem here is exit 2 with nothing started.
pub(crate) struct Secrets {
    token: Option<Arc<str>>,
    tls: Option<drover::api::tls::ServerConfig>,
}

/// Every problem, not the first: `check` lists them all, as it does for the file.
pub(crate) fn secrets(cfg: &Config) -> Result<Secrets, Vec<String>> {
    let token = match &cfg.supervisor.control_token_file {
        Some(p) => drover::api::control::read_token(p).map(|t| Some(Arc::<str>::from(t))),
        None => Ok(None),
    };
    let tls = match (&cfg.supervisor.tls_cert, &cfg.supervisor.tls_key) {
        (Some(c), Some(k)) => drover::api::tls::load(c, k).map(Some),
        _ => Ok(None),
    };
    match (token, tls) {
        (Ok(token), Ok(tls)) => Ok(Secrets { token, tls }),
        (token, tls) => Err(token.err().into_iter().chain(tls.err()).collect()),
    }
}

/// Not PID 1: become the subreaper of everything drover starts, and fork the guard that kills
/// the workers if drover is SIGKILLed. Must run while drover is single-threaded.
fn guard(pid1: bool) -> Result<Option<guard::Guard>, String> {
    if pid1 {
        return Ok(None);
    }
    let _ = nix::sys::prctl::set_child_subreaper(true);
    guard::Guard::start()
        .map(Some)
        .map_err(|e| format!("cannot start the guard process: {e}; workers would outlive a killed drover, so not starting"))
}

pub(crate) fn run(src: Source) -> i32 {
    let (cfg, derived) = match load(&src) {
        Ok(c) => c,
        Err(c) => return c as i32,
    };
    let secrets = match secrets(&cfg) {
        Ok(s) => s,
        Err(errors) => {
            for e in errors {
                eprintln!("drover: {e}; nothing was started");
            }
            return 2;
        }
    };
    drover::process::spawn::raise_nofile();
    let pid1 = std::process::id() == 1;
    let guard = match guard(pid1) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("drover: {e}");
            return supervisor::EXIT_RUNTIME;
        }
    };
    let style = logging::init(cfg.supervisor.log_format);
    match &src {
        Source::Demo => info!(
            "no configuration found (-c, $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml): running the embedded demo config; try http://127.0.0.1:8000/ and `drover status`"
        ),
        Source::File(p) => info!("drover {} starting with {}", env!("CARGO_PKG_VERSION"), p.display()),
        Source::CommandLine(_) => info!("drover {} starting in one-line mode (--print-config shows it as a file)", env!("CARGO_PKG_VERSION")),
    }
    for d in &derived {
        info!("{d}");
    }
    // what `drover check` would warn about, said where one-line users look: the log
    for w in plan::warnings(&cfg) {
        warn!("{w}");
    }
    let budget = match enforcement::decide(&cfg, true, guard.as_ref().map(|g| g.pid)) {
        Ok(b) => b,
        Err(e) => {
            error!("{e}; nothing was started; exiting with code 1");
            return supervisor::EXIT_RUNTIME;
        }
    };
    info!(
        "budgets: {} ({})",
        budget.mode.as_str(),
        budget.notes.join("; ")
    );
    if let Some(cg) = &budget.cgroups {
        if let Err(e) = cg.set_node_limits(cfg.budget.memory, cfg.budget.cpu) {
            warn!("budget: cannot set the node limits on drover's cgroup: {e}; per-worker budgets still apply");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the event loop: {e}");
            return supervisor::EXIT_RUNTIME;
        }
    };
    let start = Start {
        src,
        cfg,
        secrets,
        pid1,
        guard,
        style,
        budget,
    };
    rt.block_on(supervise(start))
}

/// Everything decided before the event loop starts.
struct Start {
    src: Source,
    cfg: Config,
    secrets: Secrets,
    pid1: bool,
    guard: Option<guard::Guard>,
    style: drover::logs::Style,
    budget: drover::resources::enforcement::Enforcement,
}

/// Inside the runtime: handlers first (so no exit and no signal is missed), then the sockets,
/// the status endpoint and the file watcher, then the loop.
async fn supervise(s: Start) -> i32 {
    let notify = drover::api::sd_notify::Notifier::from_env();
    let passed = sockets::from_systemd();
    let (reaper, signals) = match (reaper::Reaper::new(), signals::Signals::new()) {
        (Ok(r), Ok(sig)) => (r, sig),
        (Err(e), _) | (_, Err(e)) => {
            error!("cannot install signal handlers: {e}");
            return supervisor::EXIT_RUNTIME;
        }
    };
    let bound = match sockets::bind_or_adopt(&s.cfg.sockets, passed) {
        Ok(b) => b,
        // the file and the unit disagree: no retry can fix that, so the configuration's code
        Err(e @ sockets::AdoptError::Mismatch { .. }) => {
            error!("{e}; no step or worker was started; exiting with code 2");
            return 2;
        }
        Err(e) => {
            error!("{e}; no step or worker was started; exiting with code 1");
            return supervisor::EXIT_RUNTIME;
        }
    };
    for b in &bound {
        info!("socket {} listening on {}", b.name, b.local);
    }
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(Snapshot::default()));
    let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(16);
    let (token_tx, token_rx) = tokio::sync::watch::channel(s.secrets.token.clone());
    let https = s.secrets.tls.is_some();
    let (tls_tx, tls_rx) = tokio::sync::watch::channel(s.secrets.tls);
    let unix_status = matches!(s.cfg.supervisor.status, Some(ListenAddr::Unix(_)));
    let control_mode = match (unix_status, s.secrets.token.is_some()) {
        (true, _) => "unix-socket",
        (false, true) => "token",
        _ => "off",
    };
    let (liveness, liveness_answers) = drover::api::liveness::pair();
    let output = output::Output::start(s.style);
    let feed = Arc::new(drover::api::events::Feed::default());
    if let Some(addr) = &s.cfg.supervisor.status {
        let hosts = match addr {
            ListenAddr::Tcp(_) => drover::api::hosts::Hosts::new(&s.cfg.supervisor.status_hosts),
            ListenAddr::Unix(_) => drover::api::hosts::Hosts::any(),
        };
        let api = status::Api {
            snap: snap_rx,
            control: ctl_tx,
            token: token_rx,
            unix: unix_status,
            stat_files: Default::default(),
            tls: tls_rx,
            listeners: Arc::new(drover::resources::queue::Listeners::new(
                bound
                    .iter()
                    .map(|b| (b.name.as_str(), std::os::fd::AsFd::as_fd(&b.fd), b.kind)),
            )),
            liveness,
            hosts: Arc::new(hosts),
            rings: output.rings().clone(),
            events: feed.clone(),
        };
        if let Err(e) = serve_status(addr, api, https, control_mode) {
            let fix = match e.kind() {
                std::io::ErrorKind::AddrInUse => status_in_use(&s.src, addr),
                _ => String::new(),
            };
            error!("status endpoint: cannot listen on {addr}: {e}{fix}; no step or worker was started; exiting with code 1");
            return supervisor::EXIT_RUNTIME;
        }
    }
    let (events, events_rx) = supervisor::events();
    watch_files(&s.cfg, events.clone());
    let src = s.src;
    let cx = supervisor::Context {
        config_label: src.label(),
        pid1: s.pid1,
        guard: s.guard,
        output,
        snapshot: snap_tx,
        control: ctl_rx,
        events,
        token: token_tx,
        tls: tls_tx,
        control_mode,
        reload: Box::new(move || {
            let (c, derived) = read_config(&src)?;
            for d in derived {
                info!("reload: {d}");
            }
            Ok(c)
        }),
        budget: s.budget,
        notify,
        liveness: liveness_answers,
        feed,
    };
    supervisor::Supervisor::new(s.cfg, bound, cx)
        .run(reaper, signals, events_rx)
        .await
}

/// The dev runner: changes under a program's watch paths become events for the loop.
fn watch_files(cfg: &Config, events: supervisor::Events) {
    let mut watched = vec![];
    for p in &cfg.programs {
        match drover::watch::Filter::new(&p.watch_include, &p.watch_exclude) {
            Ok(filter) => watched.push(drover::watch::Watched {
                program: p.name.clone(),
                paths: supervisor::watch_paths(p),
                filter,
            }),
            Err(e) => error!("program {}: {e}; its files are not watched", p.name),
        }
    }
    let on_change = move |program, changes| {
        let _ = events.send(supervisor::Event::FilesChanged { program, changes });
    };
    if let Err(e) = drover::watch::start(watched, on_change) {
        error!("cannot watch files for the dev runner: {e}; changes will not restart workers");
    }
}

/// Bind the status endpoint and serve it on a thread of its own (`api/listener.rs`), so that
/// nothing the loop does can starve it. An error here stops drover before anything starts.
fn serve_status(
    addr: &ListenAddr,
    api: status::Api,
    https: bool,
    control_mode: &str,
) -> std::io::Result<()> {
    let (bound, local) = listener::bind(addr)?;
    let scheme = if https { "https" } else { "http" };
    info!("status endpoint on {local} ({scheme}; GET /, /status, /history, /healthz, /readyz, /metrics; control API: {control_mode})");
    listener::start(bound, api)
}

/// What to do when the status address is taken (most often by another drover).
fn status_in_use(src: &Source, addr: &ListenAddr) -> String {
    let url = match addr {
        ListenAddr::Tcp(a) => format!("http://{a}"),
        ListenAddr::Unix(p) => format!("unix:{}", p.display()),
    };
    let (ask, how) = match src {
        Source::CommandLine(_) => (
            format!("drover status --url {url}"),
            "pass --status off (no status endpoint) or --status 127.0.0.1:PORT (another port)".into(),
        ),
        Source::File(p) => (
            format!("drover status -c {}", p.display()),
            format!(
                "set supervisor.status in {} to another address (\"127.0.0.1:PORT\", \"unix:PATH\") or \"off\"",
                p.display()
            ),
        ),
        Source::Demo => (
            "drover status".into(),
            "stop the drover that runs it, or run your own configuration with -c FILE".into(),
        ),
    };
    format!(
        " (another drover may be running there: `{ask}` asks it); to run this one anyway, {how}"
    )
}

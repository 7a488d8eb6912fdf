//! The `drover` command: parse, configure, guard, bind, supervise. Exit codes follow SPEC §1:
//! 0 clean shutdown, 1 runtime failure, 2 bad configuration or usage, 3 a pre-start step failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use drover::api::{client, server as status};
use drover::config::{self, Config, ListenAddr};
use drover::logs::{self as logging, output};
use drover::process::{guard, reaper, signals, sockets};
use drover::{plan, supervisor};

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Supervise replicated API workers on one node"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Supervise: run pre-start steps, bind sockets, run and restart workers.
    Run {
        /// Configuration file (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml, else the demo)
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the resolved plan (exit 0 good, 2 bad).
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show programs and workers from a running drover's status endpoint.
    Status {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL or http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// Print the raw /status JSON document.
        #[arg(long)]
        json: bool,
    },
    /// A tiny built-in HTTP worker serving on the inherited fd 3 (for the demo and tests).
    DemoWorker,
    /// Control a running drover: restart, reload, scale, stop.
    Ctl {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL or http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// File holding the bearer token (default: $DROVER_TOKEN)
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Rolling restart of a program's workers.
    Restart { program: String },
    /// Re-read the configuration file and apply it (like SIGHUP).
    Reload,
    /// Set a program's number of workers.
    Scale { program: String, workers: u32 },
    /// Stop every worker of a program.
    Stop { program: String },
}

enum Source {
    File(PathBuf),
    Demo,
}

impl Source {
    fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Demo => "embedded demo".into(),
        }
    }
}

fn find_config(flag: Option<PathBuf>) -> Source {
    if let Some(p) = flag {
        return Source::File(p);
    }
    if let Some(p) = std::env::var_os("DROVER_CONFIG").filter(|p| !p.is_empty()) {
        return Source::File(p.into());
    }
    for p in ["./drover.toml", "/etc/drover/drover.toml"] {
        if std::path::Path::new(p).exists() {
            return Source::File(p.into());
        }
    }
    Source::Demo
}

/// Read and validate; every problem in one message.
fn read_config(src: &Source) -> Result<Config, String> {
    let (name, text) = match src {
        Source::Demo => (
            "<embedded demo>".to_string(),
            drover::DEMO_CONFIG.to_string(),
        ),
        Source::File(p) => match std::fs::read(p) {
            Ok(bytes) => match config::decode(&p.display().to_string(), &bytes) {
                Ok(t) => (p.display().to_string(), t),
                Err(e) => return Err(e.to_string()),
            },
            Err(e) => {
                return Err(format!(
                    "cannot read configuration {}: {e}; nothing was started\n",
                    p.display()
                ))
            }
        },
    };
    config::parse(&name, &text, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())
}

/// Load and validate; on failure print every problem and return exit code 2.
fn load(src: &Source) -> Result<Config, u8> {
    if std::env::var_os("DROVER_EXE").is_none() {
        if let Ok(exe) = std::env::current_exe() {
            std::env::set_var("DROVER_EXE", exe);
        }
    }
    read_config(src).map_err(|e| {
        eprint!("drover: {e}");
        2
    })
}

/// fds 0-2 must be open, or the first pipe or socket would land on one of them; every fd drover
/// inherited above them is marked close-on-exec so no worker or step receives it.
fn ensure_stdio() {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = dir
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: setting FD_CLOEXEC on an fd number; harmless if it was the dir's own fd.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) only queries; open of /dev/null fills the lowest free fd.
        unsafe {
            if libc::fcntl(fd, libc::F_GETFD) < 0 {
                libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
            }
        }
    }
}

fn main() -> ExitCode {
    ensure_stdio();
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Run { .. } | Cmd::DemoWorker) {
        // one-shot commands piped into `head` end quietly, as other CLI tools do, instead of
        // panicking on EPIPE (Rust ignores SIGPIPE by default)
        // SAFETY: restoring a default disposition before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let code = match cli.cmd {
        Cmd::Run { config } => run(find_config(config)),
        Cmd::Check { config } => check(find_config(config)),
        Cmd::Status { url, json } => {
            let url = status_url(url);
            match client::status(&url, json) {
                Ok(s) => {
                    print!("{s}");
                    if json {
                        println!();
                    }
                    0
                }
                Err(e) => {
                    eprintln!("drover status: {e}");
                    1
                }
            }
        }
        Cmd::DemoWorker => drover::demo::main(),
        Cmd::Ctl {
            url,
            token_file,
            action,
        } => ctl(url, token_file, action),
    };
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn status_url(url: Option<String>) -> String {
    url.or_else(|| std::env::var("DROVER_STATUS_URL").ok())
        .unwrap_or_else(|| client::DEFAULT_URL.into())
}

fn ctl(url: Option<String>, token_file: Option<PathBuf>, action: CtlAction) -> i32 {
    let url = status_url(url);
    let token = match token_file {
        Some(p) => match drover::api::control::read_token(&p) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("drover ctl: {e}");
                return 2;
            }
        },
        None => std::env::var("DROVER_TOKEN").ok().filter(|t| !t.is_empty()),
    };
    let (path, body) = match &action {
        CtlAction::Restart { program } => (format!("/programs/{program}/restart"), None),
        CtlAction::Reload => ("/reload".to_string(), None),
        CtlAction::Scale { program, workers } => (
            format!("/programs/{program}/scale"),
            Some(format!("{{\"workers\": {workers}}}")),
        ),
        CtlAction::Stop { program } => (format!("/programs/{program}/stop"), None),
    };
    match client::request(&url, "POST", &path, body.as_deref(), token.as_deref()) {
        Ok((code, status, body)) => {
            let v: serde_json::Value =
                serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
            let msg = v["message"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or(body.trim());
            if (200..300).contains(&code) {
                println!("{msg}");
                0
            } else {
                eprintln!("drover ctl: {status}: {msg}");
                1
            }
        }
        Err(e) => {
            eprintln!("drover ctl: {e}");
            1
        }
    }
}

fn any_budget(cfg: &Config) -> bool {
    cfg.budget.memory.is_some()
        || cfg.budget.cpu.is_some()
        || cfg
            .programs
            .iter()
            .any(|p| p.budget != Default::default() || p.autoscale.is_some())
}

/// Decide how budgets are enforced; `create` makes the cgroup directories (run, not check).
fn budget_runtime(
    cfg: &Config,
    create: bool,
    guard: Option<i32>,
) -> Result<supervisor::BudgetRuntime, String> {
    use drover::config::BudgetMode;
    let off = |why: &str| supervisor::BudgetRuntime {
        mode: "off",
        notes: vec![why.to_string()],
        cgroups: None,
        sample: false,
    };
    match cfg.budget.mode {
        BudgetMode::Off => return Ok(off("budget.mode = \"off\": nothing is enforced or sampled")),
        BudgetMode::Auto if !any_budget(cfg) => return Ok(off("no budgets or autoscaling configured: nothing to enforce, nothing sampled")),
        BudgetMode::Sample => {
            return Ok(supervisor::BudgetRuntime {
                mode: "sampling",
                notes: vec![format!("budget.mode = \"sample\": /proc every {:?}; memory budgets enforced by drover, CPU measured, not throttled", cfg.budget.sample_interval)],
                cgroups: None,
                sample: true,
            })
        }
        _ => {}
    }
    let also: Vec<i32> = guard.into_iter().collect();
    let det = drover::resources::cgroup::detect(create, &also);
    match det.cgroups {
        Some(cg) => Ok(supervisor::BudgetRuntime {
            mode: match cg.version {
                drover::resources::cgroup::Version::V1 => "cgroup v1",
                drover::resources::cgroup::Version::V2 => "cgroup v2",
            },
            notes: det.notes,
            cgroups: Some(cg),
            sample: true,
        }),
        None if cfg.budget.mode == BudgetMode::Cgroup => Err(format!(
            "budget.mode = \"cgroup\" but no cgroup can be written here: {}",
            det.notes.join("; ")
        )),
        None => {
            let mut notes = det.notes;
            notes.push(format!("so: sampling /proc every {:?}; memory budgets enforced by drover, CPU measured, not throttled", cfg.budget.sample_interval));
            Ok(supervisor::BudgetRuntime {
                mode: "sampling",
                notes,
                cgroups: None,
                sample: true,
            })
        }
    }
}

fn check(src: Source) -> i32 {
    let mut cfg = match load(&src) {
        Ok(c) => c,
        Err(c) => return c as i32,
    };
    let derived = drover::resources::sizing::resolve(&mut cfg);
    print!("{}", plan::render(&cfg, &src.label()));
    for d in &derived {
        println!("derived: {d}");
    }
    match budget_runtime(&cfg, false, None) {
        Ok(b) => {
            println!("budget enforcement: {}", b.mode);
            for n in b.notes {
                println!("  {n}");
            }
        }
        Err(e) => println!("budget enforcement: at run time drover will exit 1: {e}"),
    }
    let warns = plan::warnings(&cfg);
    if !warns.is_empty() {
        println!("warnings:");
        for w in warns {
            println!("  {w}");
        }
    }
    println!("ok: {} is valid", src.label());
    0
}

fn run(src: Source) -> i32 {
    let mut cfg = match load(&src) {
        Ok(c) => c,
        Err(c) => return c as i32,
    };
    let derived = drover::resources::sizing::resolve(&mut cfg);
    let token = match &cfg.supervisor.control_token_file {
        Some(p) => match drover::api::control::read_token(p) {
            Ok(t) => Some(Arc::<str>::from(t)),
            Err(e) => {
                eprintln!("drover: {e}; nothing was started");
                return 2;
            }
        },
        None => None,
    };
    let tls = match (&cfg.supervisor.tls_cert, &cfg.supervisor.tls_key) {
        (Some(c), Some(k)) => match drover::api::tls::load(c, k) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("drover: {e}; nothing was started");
                return 2;
            }
        },
        _ => None,
    };
    drover::process::spawn::raise_nofile();
    // SAFETY: getpid has no preconditions.
    let pid1 = unsafe { libc::getpid() } == 1;
    // The guard must be forked while drover is still single-threaded.
    let guard = if pid1 {
        None
    } else {
        // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only sets a process attribute.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        match guard::Guard::start() {
            Ok(g) => Some(g),
            Err(e) => {
                eprintln!("drover: cannot start the guard process: {e}; workers would outlive a killed drover, so not starting");
                return supervisor::EXIT_RUNTIME;
            }
        }
    };
    let style = logging::init(cfg.supervisor.log_format);
    match &src {
        Source::Demo => info!(
            "no configuration found (-c, $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml): running the embedded demo config; try http://127.0.0.1:8000/ and `drover status`"
        ),
        Source::File(p) => info!("drover {} starting with {}", env!("CARGO_PKG_VERSION"), p.display()),
    }
    for d in &derived {
        info!("{d}");
    }
    let budget = match budget_runtime(&cfg, true, guard.as_ref().map(|g| g.pid)) {
        Ok(b) => b,
        Err(e) => {
            error!("{e}; nothing was started; exiting with code 1");
            return supervisor::EXIT_RUNTIME;
        }
    };
    info!("budgets: {} ({})", budget.mode, budget.notes.join("; "));
    if let Some(cg) = &budget.cgroups {
        if let Err(e) = cg.set_node_limits(cfg.budget.memory, cfg.budget.cpu) {
            warn!("budget: cannot set the node limits on drover's cgroup: {e}; per-worker budgets still apply");
        }
    }
    let notify = drover::api::sd_notify::Notifier::from_env();
    let passed = sockets::from_systemd();
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
    rt.block_on(async move {
        // handlers first, so no exit and no signal is missed
        let (reaper, signals) = match (reaper::Reaper::new(), signals::Signals::new()) {
            (Ok(r), Ok(s)) => (r, s),
            (Err(e), _) | (_, Err(e)) => {
                error!("cannot install signal handlers: {e}");
                return supervisor::EXIT_RUNTIME;
            }
        };
        let bound = match sockets::bind_or_adopt(&cfg.sockets, passed) {
            Ok(b) => b,
            Err(e) => {
                error!("{e}; no step or worker was started; exiting with code 1");
                return supervisor::EXIT_RUNTIME;
            }
        };
        for b in &bound {
            info!("socket {} listening on {}", b.name, b.local);
        }
        let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(drover::api::snapshot::Snapshot::default()));
        let (ctl_tx, ctl_rx) = tokio::sync::mpsc::channel(16);
        let (token_tx, token_rx) = tokio::sync::watch::channel(token.clone());
        let https = tls.is_some();
        let (tls_tx, tls_rx) = tokio::sync::watch::channel(tls);
        let unix_status = matches!(cfg.supervisor.status, Some(ListenAddr::Unix(_)));
        let control_mode = if unix_status {
            "unix-socket"
        } else if token.is_some() {
            "token"
        } else {
            "off"
        };
        if let Some(addr) = &cfg.supervisor.status {
            let listener = match addr {
                ListenAddr::Tcp(a) => tokio::net::TcpListener::bind(a).await.map(|l| {
                    let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    (status::Listener::Tcp(l), local)
                }),
                ListenAddr::Unix(p) => {
                    let _ = std::fs::remove_file(p);
                    tokio::net::UnixListener::bind(p).and_then(|l| {
                        // only drover's own user may control it through the socket
                        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
                        Ok((status::Listener::Unix(l), format!("unix:{}", p.display())))
                    })
                }
            };
            match listener {
                Ok((l, local)) => {
                    let scheme = if https { "https" } else { "http" };
                    info!("status endpoint on {local} ({scheme}; GET /, /status, /healthz, /readyz, /metrics; control API: {control_mode})");
                    let api = status::Api { snap: snap_rx, control: ctl_tx, token: token_rx, unix: unix_status, stat_files: Default::default(), tls: tls_rx };
                    tokio::spawn(status::serve(l, api));
                }
                Err(e) => {
                    error!("status endpoint: cannot listen on {addr}: {e}; no step or worker was started; exiting with code 1");
                    return supervisor::EXIT_RUNTIME;
                }
            }
        }
        let watched: Vec<(String, Vec<PathBuf>)> = cfg
            .programs
            .iter()
            .map(|p| (p.name.clone(), supervisor::watch_paths(p)))
            .collect();
        let watch = match drover::watch::start(&watched) {
            Ok(w) => w,
            Err(e) => {
                error!("cannot watch files for the dev runner: {e}; changes will not restart workers");
                None
            }
        };
        let label = src.label();
        let cx = supervisor::Context {
            config_label: label,
            pid1,
            guard,
            output: output::Output::start(style),
            snapshot: snap_tx,
            control: ctl_rx,
            token: token_tx,
            tls: tls_tx,
            control_mode,
            reload: Box::new(move || {
                let mut c = read_config(&src)?;
                for d in drover::resources::sizing::resolve(&mut c) {
                    info!("reload: {d}");
                }
                Ok(c)
            }),
            watch,
            budget,
            notify,
        };
        supervisor::Supervisor::new(cfg, bound, cx).run(reaper, signals).await
    })
}

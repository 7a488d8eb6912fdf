//! The `drover` command: parse, configure, guard, bind, supervise. Exit codes follow SPEC §1:
//! 0 clean shutdown, 1 runtime failure, 2 bad configuration or usage, 3 a pre-start step failed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tracing::{error, info, warn};

use drover::api::locate::locate;
use drover::api::snapshot::Snapshot;
use drover::api::{client, listener, rolls, server as status};
use drover::config::{self, Config, ListenAddr};
use drover::logs::{self as logging, output};
use drover::process::{guard, reaper, signals, sockets};
use drover::resources::enforcement;
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
    /// Supervise: run pre-start steps, bind sockets, run and restart workers. With a command
    /// after `--`, no file: the flags build the configuration (one-line mode).
    #[command(after_help = ONE_LINE_HELP)]
    Run {
        /// Configuration file (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml, else the demo)
        #[arg(short, long, conflicts_with = "command")]
        config: Option<PathBuf>,
        /// One-line mode: workers of COMMAND, a number or `auto` (default ${WEB_CONCURRENCY:-1})
        #[arg(long, value_name = "N|auto", requires = "command")]
        workers: Option<String>,
        /// One-line mode: a socket to bind and pass at fd 3.. (HOST:PORT, :PORT, unix:PATH); repeatable
        #[arg(long, value_name = "ADDR", requires = "command")]
        bind: Vec<String>,
        /// One-line mode: the status endpoint (ADDR or `off`; default 127.0.0.1:9900, off for a bare command)
        #[arg(long, value_name = "ADDR|off", requires = "command")]
        status: Option<String>,
        /// One-line mode: a pre-start step, run by /bin/sh -c before any worker; repeatable
        #[arg(long, value_name = "CMD", requires = "command")]
        prestart: Vec<String>,
        /// One-line mode: TERM, then KILL after this (e.g. 20s)
        #[arg(long, value_name = "DURATION", requires = "command")]
        stop_timeout: Option<String>,
        /// One-line mode: roll the workers when a *.py file under PATH changes (a dev runner); repeatable
        #[arg(long, value_name = "PATH", requires = "command")]
        watch: Vec<String>,
        /// Print the configuration the one-line flags stand for, as TOML, and exit
        #[arg(long, requires = "command")]
        print_config: bool,
        /// The worker command (one-line mode)
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate a configuration and print the resolved plan (exit 0 good, 2 bad).
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show programs and workers from a running drover's status endpoint. Exit 0 when drover
    /// is ready, 1 when it runs but is not ready (starting, draining, a program below
    /// min_ready), 2 when it cannot be reached: usable as a container healthcheck.
    Status {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose supervisor.status to ask (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print the raw /status JSON document.
        #[arg(long)]
        json: bool,
        /// Print nothing; only the exit code says (a healthcheck).
        #[arg(long, short)]
        quiet: bool,
        /// Only whether drover is ready: exit 0 ready, 1 not, 2 unreachable. An abandoned roll
        /// (exit 3 otherwise) is ready: the old workers serve. For container healthchecks.
        #[arg(long)]
        ready: bool,
    },
    /// Follow what a running drover does (GET /events): one line per event, or its JSON with
    /// --json. Exit 0 when drover exits or on Ctrl-C, 2 when it cannot be reached.
    Events {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose supervisor.status to ask (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print each event's JSON as sent.
        #[arg(long)]
        json: bool,
        /// File holding the bearer token (default: $DROVER_TOKEN, else the configuration's control_token_file when readable); events need none, it only gives one of the places kept for it
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// A live terminal view of a running drover (programs, workers, CPU, memory, socket
    /// queues), redrawn every second; q quits. One snapshot when stdout is not a terminal.
    Top {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose supervisor.status to ask (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// A running drover's recent worker output, as tail shows a file's: the last N lines, then
    /// with -f every new one until Ctrl-C. Exit 0 ok, 1 program unknown or its output not
    /// captured, 2 drover unreachable.
    Logs(drover::api::tail::Ask),
    /// A tiny built-in HTTP worker serving on the inherited fd 3 (for the demo and tests).
    DemoWorker,
    /// Control a running drover: restart, reload, scale, stop.
    Ctl {
        /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
        #[arg(long)]
        url: Option<String>,
        /// The configuration whose supervisor.status and control_token_file to use (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// File holding the bearer token (default: $DROVER_TOKEN, else the configuration's control_token_file)
        #[arg(long)]
        token_file: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Rolling restart of a program's workers, one at a time, each replacement ready before the
    /// worker it replaces is stopped.
    #[command(after_help = WAIT_HELP)]
    Restart {
        program: String,
        /// Wait until the roll has ended: exit 0 when every worker was replaced, 3 when it was
        /// abandoned (a replacement never became ready; the old workers keep serving)
        #[arg(long)]
        wait: bool,
    },
    /// Re-read the configuration file, apply it, and roll every program's workers ready-first
    /// onto it, changed or not (like SIGHUP and `systemctl reload`): the way to deploy new code.
    /// An invalid file changes nothing. Programs with restart = "never" roll only when their
    /// settings changed.
    #[command(after_help = WAIT_HELP)]
    Reload {
        /// Wait until every roll the reload started has ended: exit 0 when all were done, 3 when
        /// one was abandoned (its old workers keep serving)
        #[arg(long)]
        wait: bool,
    },
    /// Set a program's number of workers.
    Scale { program: String, workers: u32 },
    /// Stop every worker of a program.
    Stop { program: String },
}

enum Source {
    File(PathBuf),
    Demo,
    /// one-line mode: the TOML the flags stand for
    CommandLine(String),
}

const WAIT_HELP: &str = "\
Exit codes: 0 done; 1 the request was refused, drover could not be reached, or it began to shut
down while waiting; 2 a bad --token-file; 3 (--wait) a roll was abandoned (a replacement, or the
new preloader, never became ready: the old workers keep serving) or cancelled (the program was
stopped or removed meanwhile). With --wait, progress is printed as workers are replaced.";

const ONE_LINE_HELP: &str = "\
One-line mode, no file (drover binds the socket and passes it at fd 3 with LISTEN_FDS):
  uvicorn main:app --workers 4 --port 8000
      drover run --workers 4 --bind :8000 -- uvicorn main:app --fd 3
  gunicorn -w 4 -b :8000 -k uvicorn.workers.UvicornWorker main:app
      drover run --workers 4 --bind :8000 -- gunicorn -k uvicorn.workers.UvicornWorker main:app
  tini -- python job.py          (exits with the job's code; 128 + signal if it was killed)
      drover run -- python job.py
--workers defaults to ${WEB_CONCURRENCY:-1}. --print-config shows the file these flags make,
to start from when you outgrow the flags (drover run -c drover.toml).";

impl Source {
    fn label(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Demo => "embedded demo".into(),
            Source::CommandLine(_) => "command line".into(),
        }
    }
}

fn find_config(flag: Option<PathBuf>) -> Source {
    match drover::api::locate::config_file(flag) {
        Some((p, _)) => Source::File(p),
        None => Source::Demo,
    }
}

/// Read, validate and plan; every problem in one message. With the lines that say what was
/// derived (`workers = "auto"`).
fn read_config(src: &Source) -> Result<(Config, Vec<String>), String> {
    let (name, text) = match src {
        Source::Demo => (
            "<embedded demo>".to_string(),
            drover::DEMO_CONFIG.to_string(),
        ),
        Source::CommandLine(text) => ("<command line>".to_string(), text.clone()),
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
    let mut cfg =
        config::parse(&name, &text, &|k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    // relative paths in a file are the file's directory's; with no file, the current one's
    // (the directory as the kernel sees it: `..` and symlinked directories resolved, the file
    // itself, if a symlink, not followed)
    let dir = match src {
        Source::File(p) => std::path::absolute(p).ok().and_then(|p| {
            let dir = p.parent()?;
            Some(std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()))
        }),
        Source::Demo | Source::CommandLine(_) => std::env::current_dir().ok(),
    };
    if let Some(dir) = dir {
        config::anchor_paths(&mut cfg, &dir);
    }
    let derived = plan::resolve(&name, &mut cfg).map_err(|e| e.to_string())?;
    Ok((cfg, derived))
}

/// Load and validate; on failure print every problem and return exit code 2.
fn load(src: &Source) -> Result<(Config, Vec<String>), u8> {
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
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // /dev/null opens at the lowest free number: keep it while that is 0, 1 or 2
    while let Ok(f) = std::fs::File::open("/dev/null") {
        if std::os::fd::AsRawFd::as_raw_fd(&f) > 2 {
            break;
        }
        std::mem::forget(f);
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        if !std::path::Path::new(&format!("/proc/self/fd/{fd}")).exists() {
            continue; // the listing's own fd, closed since
        }
        // SAFETY: `fd` is open (drover is single-threaded here, nothing closes it meanwhile) and
        // is only borrowed for two fcntl calls.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        if let Ok(flags) = fcntl(fd, FcntlArg::F_GETFD) {
            let flags = FdFlag::from_bits_truncate(flags) | FdFlag::FD_CLOEXEC;
            let _ = fcntl(fd, FcntlArg::F_SETFD(flags));
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
        Cmd::Run {
            config,
            workers,
            bind,
            status,
            prestart,
            stop_timeout,
            watch,
            print_config,
            command,
        } => {
            if command.is_empty() {
                run(find_config(config))
            } else {
                let one = drover::oneline::OneLine {
                    workers,
                    bind,
                    status,
                    prestart,
                    stop_timeout,
                    watch,
                    command,
                };
                if print_config {
                    print!("{}", one.to_toml());
                    0
                } else {
                    run(Source::CommandLine(one.to_toml()))
                }
            }
        }
        Cmd::Check { config } => check(find_config(config)),
        Cmd::Status {
            url,
            config,
            json,
            quiet,
            ready,
        } => match locate(url, config) {
            Ok(t) => client::status_command(&t.url, json, quiet, ready),
            Err(e) => {
                if !quiet {
                    eprintln!("drover status: {e}");
                }
                2
            }
        },
        Cmd::Events {
            url,
            config,
            json,
            token_file,
        } => match locate(url, config) {
            Ok(t) => {
                let named = token_file.is_some();
                match drover::api::locate::token(token_file, &t) {
                    Ok(token) => {
                        drover::api::events_cli::events_command(&t.url, token.as_deref(), json)
                    }
                    // a token named on the command line must be read; the configuration's is
                    // a bonus (events are public)
                    Err(e) if named => {
                        eprintln!("drover events: {e}");
                        2
                    }
                    Err(_) => drover::api::events_cli::events_command(&t.url, None, json),
                }
            }
            Err(e) => {
                eprintln!("drover events: {e}");
                2
            }
        },
        Cmd::Top { url, config } => match locate(url, config) {
            Ok(t) => drover::api::top::top_command(&t.url),
            Err(e) => {
                eprintln!("drover top: {e}");
                2
            }
        },
        Cmd::Logs(ask) => drover::api::tail::logs_command(ask),
        Cmd::DemoWorker => drover::demo::main(),
        Cmd::Ctl {
            url,
            config,
            token_file,
            action,
        } => ctl(url, config, token_file, action),
    };
    // drover's own lines are written by a thread of their own: the last ones ("exiting with code
    // 0") reach stderr before the process ends, unless stderr stays blocked
    logging::flush(std::time::Duration::from_secs(2));
    ExitCode::from(code.clamp(0, 255) as u8)
}

fn ctl(
    url: Option<String>,
    config: Option<PathBuf>,
    token_file: Option<PathBuf>,
    action: CtlAction,
) -> i32 {
    let (url, token) = match locate(url, config).and_then(|t| {
        let token = drover::api::locate::token(token_file, &t)?;
        Ok((t.url, token))
    }) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("drover ctl: {e}");
            return 2;
        }
    };
    let (path, body) = match &action {
        CtlAction::Restart { program, .. } => (format!("/programs/{program}/restart"), None),
        CtlAction::Reload { .. } => ("/reload".to_string(), None),
        CtlAction::Scale { program, workers } => (
            format!("/programs/{program}/scale"),
            Some(format!("{{\"workers\": {workers}}}")),
        ),
        CtlAction::Stop { program } => (format!("/programs/{program}/stop"), None),
    };
    let wait = match &action {
        CtlAction::Restart {
            program,
            wait: true,
        } => Some(rolls::Target::Program(program.clone())),
        CtlAction::Reload { wait: true } => Some(rolls::Target::All),
        _ => None,
    };
    // which rolls had ended before the request: the ones after it are what --wait waits for
    let before = match &wait {
        Some(_) => match rolls::before(&url) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("drover ctl: {e}");
                return 1;
            }
        },
        None => Default::default(),
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
                match &wait {
                    Some(target) => rolls::wait(&url, target, &before),
                    None => 0,
                }
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

fn check(src: Source) -> i32 {
    let (cfg, derived) = match load(&src) {
        Ok(c) => c,
        Err(c) => return c as i32,
    };
    print!("{}", plan::render(&cfg, &src.label()));
    for d in &derived {
        println!("derived: {d}");
    }
    // what `run` reads or decides before anything starts, and refuses to start without
    let mut refused = vec![];
    if let Err(e) = secrets(&cfg) {
        refused.extend(e);
    }
    match enforcement::decide(&cfg, false, None) {
        Ok(b) => {
            println!("budget enforcement: {}", b.mode.as_str());
            for n in b.notes {
                println!("  {n}");
            }
        }
        Err(e) => refused.push(format!("budgets: {e}")),
    }
    let warns = plan::warnings(&cfg);
    if !warns.is_empty() {
        println!("warnings:");
        for w in warns {
            println!("  {w}");
        }
    }
    if !refused.is_empty() {
        for r in &refused {
            eprintln!("drover: {r}");
        }
        eprintln!(
            "drover: {}: `drover run` would refuse to start with this; nothing was started",
            src.label()
        );
        return 2;
    }
    println!("ok: {} is valid", src.label());
    0
}

/// What is read before anything starts: a problem here is exit 2 with nothing started.
struct Secrets {
    token: Option<Arc<str>>,
    tls: Option<drover::api::tls::ServerConfig>,
}

/// Every problem, not the first: `check` lists them all, as it does for the file.
fn secrets(cfg: &Config) -> Result<Secrets, Vec<String>> {
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

fn run(src: Source) -> i32 {
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

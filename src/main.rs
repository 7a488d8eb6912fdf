//! The `drover` command: parse, configure, guard, bind, supervise. Exit codes follow SPEC §1:
//! 0 clean shutdown, 1 runtime failure, 2 bad configuration or usage, 3 a pre-start step failed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use drover::api::locate::locate;
use drover::api::{client, rolls};
use drover::config::{self, Config};
use drover::logs as logging;
use drover::plan;
use drover::resources::enforcement;

mod cli;
mod run;

use cli::{Cli, Cmd, CtlAction};
use run::{run, secrets};

enum Source {
    File(PathBuf),
    Demo,
    /// one-line mode: the TOML the flags stand for
    CommandLine(String),
}

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
            at: cli::Where { url, config },
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
            at: cli::Where { url, config },
            json,
            token_file,
        } => match locate(url, config) {
            Ok(t) => drover::api::events_cli::events_main(&t, token_file, json),
            Err(e) => {
                eprintln!("drover events: {e}");
                2
            }
        },
        Cmd::Top(cli::Where { url, config }) => match locate(url, config) {
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

//! drover's command line: its subcommands, their flags and help texts (`main.rs` dispatches).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Where a running drover is found: `--url`, else the configuration's `supervisor.status`.
#[derive(Args)]
pub(crate) struct Where {
    /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
    #[arg(long)]
    pub(crate) url: Option<String>,
    /// The configuration whose supervisor.status to ask (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
    #[arg(short, long)]
    pub(crate) config: Option<PathBuf>,
}

#[derive(Parser)]
#[command(
    name = "drover",
    version,
    about = "Supervise replicated API workers on one node"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
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
        #[command(flatten)]
        at: Where,
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
        #[command(flatten)]
        at: Where,
        /// Print each event's JSON as sent.
        #[arg(long)]
        json: bool,
        /// File holding the bearer token (default: $DROVER_TOKEN, else the configuration's control_token_file when readable); events need none, it only gives one of the places kept for it
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// A live terminal view of a running drover (programs, workers, CPU, memory, socket
    /// queues), redrawn every second; q quits. One snapshot when stdout is not a terminal.
    Top(Where),
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
pub(crate) enum CtlAction {
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

pub(crate) const WAIT_HELP: &str = "\
Exit codes: 0 done; 1 the request was refused, drover could not be reached, or it began to shut
down while waiting; 2 a bad --token-file; 3 (--wait) a roll was abandoned (a replacement, or the
new preloader, never became ready: the old workers keep serving) or cancelled (the program was
stopped or removed meanwhile). With --wait, progress is printed as workers are replaced.";

pub(crate) const ONE_LINE_HELP: &str = "\
One-line mode, no file (drover binds the socket and passes it at fd 3 with LISTEN_FDS):
  uvicorn main:app --workers 4 --port 8000
      drover run --workers 4 --bind :8000 -- uvicorn main:app --fd 3
  gunicorn -w 4 -b :8000 -k uvicorn.workers.UvicornWorker main:app
      drover run --workers 4 --bind :8000 -- gunicorn -k uvicorn.workers.UvicornWorker main:app
  tini -- python job.py          (exits with the job's code; 128 + signal if it was killed)
      drover run -- python job.py
--workers defaults to ${WEB_CONCURRENCY:-1}. --print-config shows the file these flags make,
to start from when you outgrow the flags (drover run -c drover.toml).";

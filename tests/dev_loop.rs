//! The first day at a terminal: `drover status`, `top` and `ctl` find the drover that `run`
//! started from the same configuration; a taken status port says how to get past it; a run
//! without a terminal says once why its logs are JSON. (Watching files: tests/watch.rs.)

mod common;
use common::*;

use std::path::Path;
use std::process::{Command, Output};

/// `drover ARGS` in `cwd`, with none of the variables that would choose for it.
fn drover(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args)
        .current_dir(cwd)
        .env_remove("DROVER_STATUS_URL")
        .env_remove("DROVER_CONFIG")
        .env_remove("DROVER_TOKEN");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

const PROGRAM: &str = "[program.app]\ncommand = [\"sleep\", \"1000\"]\nstop_timeout = \"2s\"\nreadiness = { check = \"uptime\", min_uptime = \"100ms\" }\n";

/// `drover status` (with `args`) in `cwd` until it says drover is ready (exit 0); its output.
fn status_ready(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    wait_until(T, &format!("drover {all:?} exits 0"), || {
        let o = drover(cwd, &all, env);
        o.status.success().then_some(o)
    })
}

#[test]
fn status_top_and_ctl_ask_the_address_of_the_configuration() {
    // a unix status socket: nothing at the default address, nothing to guess
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"unix:{{dir}}/status.sock\"\nshutdown_timeout = \"10s\"\n\n{PROGRAM}"
    ));
    let file = d.path("drover.toml");
    let file = file.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let o = status_ready(elsewhere.path(), &["-c", file], &[]);
    assert!(text(&o).contains("\napp "), "{}", text(&o));
    // ./drover.toml, as `run` reads it, and $DROVER_CONFIG
    status_ready(d.dir.path(), &[], &[]);
    status_ready(elsewhere.path(), &[], &[("DROVER_CONFIG", file)]);
    // top prints one snapshot when stdout is not a terminal
    let o = drover(elsewhere.path(), &["top", "-c", file], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("app"),
        "{}",
        text(&o)
    );
    // ctl: control over the unix socket needs no token
    let old = Drover::worker_pids(&json_status(elsewhere.path(), file), "app");
    let o = drover(
        elsewhere.path(),
        &["ctl", "-c", file, "restart", "app"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    wait_until(T, "app rolled onto a new worker", || {
        let v = json_status(elsewhere.path(), file);
        let pids = Drover::worker_pids(&v, "app");
        (pids.len() == 1 && pids != old && v["ready"] == true).then_some(())
    });
    // --url still wins: a wrong one is not reached
    let o = drover(
        elsewhere.path(),
        &[
            "status",
            "-c",
            file,
            "--url",
            "unix:/nonexistent/drover.sock",
        ],
        &[],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    d.stop_ok();
    // once drover has gone, the error names the address it asked
    let o = drover(elsewhere.path(), &["status", "-c", file], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("status.sock"), "{}", text(&o));
}

fn json_status(cwd: &Path, file: &str) -> serde_json::Value {
    let o = drover(cwd, &["status", "-c", file, "--json"], &[]);
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn ctl_takes_the_port_and_the_token_file_from_the_configuration() {
    let port = free_port();
    let tokens = tempfile::tempdir().unwrap();
    let token = tokens.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:{port}\"\ncontrol_token_file = \"{}\"\nshutdown_timeout = \"10s\"\n\n{PROGRAM}",
        token.display()
    ));
    let file = d.path("drover.toml");
    let file = file.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    status_ready(elsewhere.path(), &["-c", file], &[]);
    let o = drover(
        elsewhere.path(),
        &["ctl", "-c", file, "scale", "app", "2"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 -> 2 workers"), "{}", text(&o));
    d.wait_status("two workers", T, |v| all_ready(v, 2));
    d.stop_ok();
}

#[test]
fn a_taken_status_port_says_how_to_get_past_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    // one-line mode: the flag that moves it or turns it off
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "1",
            "--status",
            &addr,
            "--",
            "sleep",
            "1000",
        ],
        &[],
        &[],
    );
    assert_eq!(d.wait_exit(T), 1, "{}", d.stderr());
    let said = d.messages().join("\n");
    assert!(said.contains(&format!("cannot listen on {addr}")), "{said}");
    assert!(said.contains("--status off"), "{said}");
    assert!(said.contains("--status 127.0.0.1:PORT"), "{said}");
    // a file: the setting, in that file
    let mut d = Drover::start(&format!("[supervisor]\nstatus = \"{addr}\"\n\n{PROGRAM}"));
    assert_eq!(d.wait_exit(T), 1, "{}", d.stderr());
    let said = d.messages().join("\n");
    let file = d.path("drover.toml");
    assert!(
        said.contains(&format!("set supervisor.status in {}", file.display())),
        "{said}"
    );
    drop(taken);
}

#[test]
fn a_run_without_a_terminal_says_once_why_its_logs_are_json() {
    const SAID: &str = "logs are JSON lines because stderr is not a terminal";
    let mut d = Drover::start(&one_program(PROGRAM.trim_start_matches("[program.app]\n")));
    d.wait_status("ready", T, |v| v["ready"] == true);
    d.stop_ok();
    let said = d.messages();
    assert!(said[0].starts_with(SAID), "first line: {:?}", said[0]);
    assert!(
        said[0].contains("log_format"),
        "how to choose: {:?}",
        said[0]
    );
    assert_eq!(said.iter().filter(|m| m.contains(SAID)).count(), 1);
    // chosen: nothing to explain, and DROVER_LOG_FORMAT chooses where the file does not
    let cfg = one_program(PROGRAM.trim_start_matches("[program.app]\n"));
    let mut d =
        Drover::start(&cfg.replace("[supervisor]\n", "[supervisor]\nlog_format = \"json\"\n"));
    d.wait_status("ready", T, |v| v["ready"] == true);
    d.stop_ok();
    assert!(!d.logged(SAID), "{}", d.stderr());
    let mut d = Drover::start_with(&cfg, &[("DROVER_LOG_FORMAT", "text")], &[]);
    d.wait_status("ready", T, |v| v["ready"] == true);
    d.stop_ok();
    let log = d.stderr();
    assert!(log.contains("status endpoint on"), "{log}");
    assert!(d.log().is_empty(), "text lines, not JSON: {log}");
    assert!(!log.contains(SAID), "{log}");
}

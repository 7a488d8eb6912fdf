//! For people switching from uvicorn, gunicorn and tini: the one-line mode, exit codes that end
//! a container, `workers` from WEB_CONCURRENCY, `check` knowing the servers it runs, and
//! `drover status` as a healthcheck. (PID-1 behaviour of the one-line mode: tests/pid1.rs;
//! lifetime recycling under load: tests/load.rs.)

mod common;
use common::*;

use std::process::Command;

#[test]
fn one_line_mode_serves_the_demo_worker_on_two_binds() {
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:0",
            "--bind",
            "127.0.0.1:0",
            "--status",
            "127.0.0.1:0",
            "--",
            "{bin}",
            "demo-worker",
        ],
        &[],
        &[],
    );
    let first = d.logged_addr("socket http listening on ");
    let second = d.logged_addr("socket http1 listening on ");
    d.wait_status("two ready workers", T, |v| all_ready(v, 2));
    for addr in [&first, &second] {
        let body = http_get(addr, "/").unwrap_or_default();
        assert!(
            body.starts_with("hello from drover demo-worker app."),
            "{addr}: {body}"
        );
    }
    let st = d.status();
    assert_eq!(st["programs"][0]["name"], "app");
    assert_eq!(st["config"], "command line");
    d.stop_ok();
}

#[test]
fn print_config_is_a_file_that_drover_check_accepts() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--workers",
            "3",
            "--bind",
            ":8000",
            "--prestart",
            "echo ${HOME} migrated",
        ])
        .args(["--stop-timeout", "5s", "--print-config", "--"])
        .args(["uvicorn", "main:app", "--fd", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let toml = String::from_utf8(out.stdout).unwrap();
    assert!(toml.contains("listen = \"0.0.0.0:8000\""), "{toml}");
    // a number as a number, as a file would have it
    assert!(toml.contains("\nworkers = 3\n"), "{toml}");
    assert!(
        toml.contains("echo $${HOME} migrated"),
        "the user's text stays literal: {toml}"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drover.toml");
    std::fs::write(&file, &toml).unwrap();
    let check = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{plan}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(plan.contains("app: 3 workers"), "{plan}");
    assert!(plan.contains("prestart1"), "{plan}");
    // without --workers: WEB_CONCURRENCY, else 1
    let out = Command::new(BIN)
        .args(["run", "--bind", ":8000", "--print-config", "--", "app"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("workers = \"${WEB_CONCURRENCY:-1}\""));
    // `auto` stays a string
    let out = Command::new(BIN)
        .args(["run", "--workers", "auto", "--print-config", "--", "app"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("workers = \"auto\"\n"));
    // --help says what to type instead of uvicorn's, gunicorn's and tini's lines
    let help = Command::new(BIN).args(["run", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in [
        "drover run --workers 4 --bind :8000 -- uvicorn main:app --fd 3",
        "gunicorn -w 4 -b :8000 -k uvicorn.workers.UvicornWorker main:app",
        "drover run -- python job.py",
    ] {
        assert!(help.contains(line), "{line} missing from\n{help}");
    }
    // one-line flags need a command; a command and -c do not go together: usage errors
    for args in [
        &["run", "--workers", "2"][..],
        &["run", "-c", "x.toml", "--", "app"][..],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

#[test]
fn a_one_shot_program_makes_drover_exit_with_its_code() {
    let mut d = Drover::start(&one_program(
        "command = \"echo done; exit 3\"\nrestart = \"never\"",
    ));
    assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
    assert!(d.logged(
        "every worker has ended and none will run again; exiting with the last one's code 3"
    ));
    assert!(
        d.stdout().contains("\"line\":\"done\""),
        "its output is all there: {}",
        d.stdout()
    );
    // the log names the policy as the file writes it, not as Rust does (`restart = Never`)
    assert!(
        d.logged("exited with exit code 3; restart = \"never\": not restarting"),
        "{}",
        d.stderr()
    );
    // exit 0 under on-failure is done too; with on_all_exited = "stay" drover stays up
    let mut d = Drover::start(&one_program(
        "command = \"exit 0\"\nrestart = \"on-failure\"\nworkers = 2",
    ));
    assert_eq!(d.wait_exit(T), 0);
    assert!(
        d.logged("restart = \"on-failure\": not restarting"),
        "{}",
        d.stderr()
    );
    let mut d = Drover::start(
        &one_program("command = \"exit 3\"\nrestart = \"never\"")
            .replace("[supervisor]\n", "[supervisor]\non_all_exited = \"stay\"\n"),
    );
    d.wait_status("the worker failed, drover still up", T, |v| {
        v["programs"][0]["workers"][0]["state"] == "failed"
    });
    d.stop_ok();
}

#[test]
fn a_program_scaled_to_zero_is_not_done() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("drover.sock");
    let cfg = one_program("command = [\"sleep\", \"1000\"]\nreadiness = { check = \"uptime\", min_uptime = \"100ms\" }")
        .replace("status = \"127.0.0.1:0\"", &format!("status = \"unix:{}\"", sock.display()));
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    wait_until(T, "the control socket", || sock.exists().then_some(()));
    let url = format!("unix:{}", sock.display());
    let out = Command::new(BIN)
        .args(["ctl", "--url", &url, "stop", "w"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // the worker is gone, and drover stays: a scale to zero is an operator's choice, not the end
    let status = || {
        Command::new(BIN)
            .args(["status", "--url", &url, "--json"])
            .output()
            .unwrap()
    };
    wait_until(T, "no worker left", || {
        let doc: serde_json::Value = serde_json::from_slice(&status().stdout).ok()?;
        doc["programs"][0]["workers"]
            .as_array()?
            .is_empty()
            .then_some(())
    });
    assert!(
        d.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "drover is still running"
    );
    d.stop_ok();
}

#[test]
fn web_concurrency_sets_the_worker_count() {
    let mut d = Drover::start_with(
        &demo_web("\"${WEB_CONCURRENCY:-auto}\"", "", ""),
        &[("WEB_CONCURRENCY", "3")],
        &[],
    );
    d.wait_status("three ready workers", T, |v| all_ready(v, 3));
    d.stop_ok();
}

/// `drover check` on a program that runs `command` with a socket: its warnings.
fn check_warnings(command: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drover.toml");
    let cfg = format!("[socket.http]\nlisten = \"127.0.0.1:8000\"\n[program.api]\ncommand = {command}\nsockets = [\"http\"]\n");
    std::fs::write(&file, cfg).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "warnings, not errors");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_warns_about_server_flags_that_fight_drover() {
    // (command, what the warning must say)
    let cases = [
        (r#"["uvicorn", "main:app", "--workers", "4", "--fd", "3"]"#, "uvicorn `--workers 4`: drover runs the workers, each a single uvicorn process: remove it and set `workers = 4`"),
        (r#"["uvicorn", "main:app", "--host", "0.0.0.0", "--fd", "3"]"#, "uvicorn `--host 0.0.0.0`: uvicorn would bind its own socket beside drover's"),
        (r#"["uvicorn", "main:app", "--port=8000", "--fd", "3"]"#, "uvicorn `--port 8000`: uvicorn would bind its own socket"),
        (r#"["uvicorn", "main:app", "--uds", "/tmp/a.sock", "--fd", "3"]"#, "uvicorn `--uds /tmp/a.sock`"),
        (r#"["uvicorn", "main:app", "--reload", "--fd", "3"]"#, "uvicorn's reloader is a second supervisor: remove it and use `watch"),
        (r#"["python", "-m", "uvicorn", "main:app"]"#, "uvicorn without `--fd 3` binds its own socket"),
        (r#""gunicorn -w 4 -b :8000 main:app""#, "gunicorn `-w 4`: drover runs the workers"),
        (r#""gunicorn -w 4 -b :8000 main:app""#, "gunicorn `-b :8000`: gunicorn would bind its own socket: remove it; gunicorn takes drover's from LISTEN_FDS"),
        (r#"["gunicorn", "--bind", "0.0.0.0:8000", "main:app"]"#, "gunicorn `--bind 0.0.0.0:8000`"),
        (r#"["hypercorn", "--bind", "0.0.0.0:8000", "main:app"]"#, "hypercorn would bind its own socket: use `--bind fd://3`"),
        (r#"["hypercorn", "--workers", "2", "--bind", "fd://3", "main:app"]"#, "hypercorn `--workers 2`"),
    ];
    for (command, want) in cases {
        let out = check_warnings(command);
        assert!(out.contains(want), "{command}: wanted `{want}` in\n{out}");
    }
    // what drover wants draws no warning
    for command in [
        r#"["uvicorn", "main:app", "--fd", "3"]"#,
        r#"["hypercorn", "--bind", "fd://3", "main:app"]"#,
    ] {
        let out = check_warnings(command);
        let warnings = out.split_once("warnings:").map_or("", |(_, w)| w);
        assert!(
            !warnings.contains("api: uvicorn") && !warnings.contains("api: hypercorn"),
            "{command}:\n{out}"
        );
    }
}

#[test]
fn drover_status_exit_codes_make_a_healthcheck() {
    let status = |url: &str, quiet: bool| {
        let mut c = Command::new(BIN);
        c.args(["status", "--url", url]);
        if quiet {
            c.arg("--quiet");
        }
        let out = c.output().unwrap();
        (out.status.code(), out.stdout.len() + out.stderr.len())
    };
    // unreachable: 2
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(status(&format!("http://{free}"), false).0, Some(2));
    assert_eq!(
        status(&format!("http://{free}"), true),
        (Some(2), 0),
        "--quiet says nothing"
    );
    // running but not ready (a step still running): 1; ready: 0
    let mut d = Drover::start(&format!(
        "[[prestart]]\nname = \"wait\"\ncommand = \"while [ ! -e {{dir}}/go ]; do sleep 0.05; done\"\n{}",
        demo_web("1", "", "")
    ));
    let url = format!("http://{}", d.status_addr());
    wait_until(T, "the step to run", || {
        (status(&url, true).0 == Some(1)).then_some(())
    });
    std::fs::write(d.path("go"), "").unwrap();
    wait_until(T, "ready", || {
        (status(&url, true).0 == Some(0)).then_some(())
    });
    assert_eq!(status(&url, true), (Some(0), 0));
    d.stop_ok();
}

#[test]
fn a_worker_that_prints_and_exits_at_once_never_loses_its_line() {
    // the worker can be gone before the loop first yields: its pipe's pump must count as
    // running from the spawn, or drover exits with the line unread (6 runs in 20 did)
    for run in 0..15 {
        let mut d = Drover::start(&one_program(
            "command = \"echo done; exit 3\"\nrestart = \"never\"",
        ));
        assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
        assert!(
            d.stdout().contains("\"line\":\"done\""),
            "run {run}: the line is lost: {}",
            d.stdout()
        );
    }
}

/// A stand-in for a server: an executable named `name` in a temp dir that sleeps.
fn fake_server(name: &str) -> (tempfile::TempDir, String) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, "#!/bin/sh\nexec sleep 1000\n").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = path.display().to_string();
    (dir, p)
}

/// How many of drover's log lines at `level` contain `text`.
fn logged_times(d: &Drover, level: &str, text: &str) -> usize {
    d.log()
        .iter()
        .filter(|l| l["level"] == level && l["message"].as_str().is_some_and(|m| m.contains(text)))
        .count()
}

#[test]
fn run_logs_what_check_warns_about_once_in_one_line_and_file_mode() {
    // one-line users never run `check`: uvicorn without `--fd 3` binds its own socket
    let (bin, uvicorn) = fake_server("uvicorn");
    let mut d = Drover::start_args(
        &[
            "run",
            "--bind",
            "127.0.0.1:0",
            "--status",
            "127.0.0.1:0",
            "--",
            &uvicorn,
            "main:app",
        ],
        &[],
        &[],
    );
    d.keep.push(bin);
    d.wait_status("the worker started", T, |v| {
        v["programs"][0]["workers"][0]["pid"].is_i64()
    });
    let said = "uvicorn without `--fd 3` binds its own socket";
    assert_eq!(logged_times(&d, "WARN", said), 1, "{}", d.stderr());
    d.stop_ok();
    // a file: a command not installed here is said at start, not only at each failed spawn
    let mut d = Drover::start(&one_program(
        "command = [\"no-such-command-drover\", \"serve\"]\nbackoff = { initial = \"10s\" }",
    ));
    d.status_addr();
    let said = "program w: command `no-such-command-drover` not found in PATH";
    wait_until(T, "the warning", || {
        (logged_times(&d, "WARN", said) > 0).then_some(())
    });
    assert_eq!(logged_times(&d, "WARN", said), 1, "{}", d.stderr());
    d.stop_ok();
}

/// `drover check` on a whole file: its output, whatever the exit code.
fn check_file(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("drover.toml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new(BIN)
        .arg("check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warnings, not errors: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_warns_about_what_cannot_work_as_written() {
    let sock = "[socket.http]\nlisten = \"127.0.0.1:8000\"\n";
    // (file, what the warning must say)
    let cases = [
        // fd 3 with nothing passed at fd 3
        (
            "[program.api]\ncommand = [\"uvicorn\", \"main:app\", \"--fd\", \"3\"]\n".to_string(),
            "program api: uvicorn `--fd` serves a socket drover passes, but [program.api] has no `sockets`",
        ),
        (
            "[program.api]\ncommand = [\"drover-uvicorn\", \"main:app\"]\n".to_string(),
            "program api: drover-uvicorn serves the socket drover passes at fd 3",
        ),
        // a socket nobody serves
        (
            format!("{sock}[socket.admin]\nlisten = \"127.0.0.1:8001\"\n[program.api]\ncommand = [\"drover-uvicorn\", \"main:app\"]\nsockets = [\"http\"]\n"),
            "socket admin: no program lists it in `sockets`",
        ),
        // a protocol the command cannot speak
        (
            format!("{sock}[program.api]\ncommand = [\"uvicorn\", \"main:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]\npreload = true\n"),
            "program api: preload = true, but uvicorn does not speak drover's preload protocol",
        ),
        (
            format!("{sock}[program.api]\ncommand = \"gunicorn -k uvicorn.workers.UvicornWorker main:app\"\nsockets = [\"http\"]\npreload = true\n"),
            "program api: preload = true, but gunicorn does not speak",
        ),
        (
            format!("{sock}[program.api]\ncommand = [\"uvicorn\", \"main:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]\nreadiness = {{ check = \"notify\" }}\n"),
            "program api: readiness check = \"notify\", but uvicorn never sends READY=1",
        ),
        // uvicorn's own backlog in a script drover cannot add to
        (
            format!("{sock}[program.api]\ncommand = \"exec uvicorn main:app --fd 3\"\nsockets = [\"http\"]\n"),
            "uvicorn listen()s socket http again with its own backlog (2048 unless told), not the socket's 1024: add `--backlog 1024`",
        ),
    ];
    for (file, want) in &cases {
        let out = check_file(file);
        assert!(out.contains(want), "wanted `{want}` in\n{out}");
    }
    // what the reference setup writes draws none of them; drover passes uvicorn the backlog
    let out = check_file(&format!("{sock}[program.api]\ncommand = [\"drover-uvicorn\", \"main:app\"]\nsockets = [\"http\"]\npreload = true\nreadiness = {{ check = \"notify\" }}\n"));
    let warnings = out.split_once("warnings:").map_or("", |(_, w)| w);
    assert!(
        warnings
            .lines()
            .filter(|l| l.starts_with("  "))
            .all(|l| l.contains("not found in PATH")),
        "only drover-uvicorn not being installed here: {out}"
    );
    assert!(
        out.contains("command  drover-uvicorn main:app --backlog 1024"),
        "{out}"
    );
    assert!(
        out.contains("derived: program api: drover-uvicorn gets `--backlog 1024`"),
        "{out}"
    );
}

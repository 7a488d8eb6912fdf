//! What drover says about preloaded workers and their preloader (issue 19, item 8): a fresh
//! worker forked from the preloader has not restarted; workers waiting for a loading preloader
//! say so in `/status`, `drover status`, `drover top` and the page; `/readyz` names the loading
//! or failed preloader and its public error; the log's pointer to the preload protocol appears
//! only when the command did not speak it; `drover status` never prints `null`.
//!
//! The preloaders are real processes: `tests/fixtures/fake_preloader.py` (honest mode) behind a
//! shell that waits for a file before it loads, a Python script that says `error …` and exits
//! as drover-uvicorn does when the app cannot be imported, and drover-uvicorn itself with the
//! FastAPI example when `.venv` has it.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

const FAKE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/fake_preloader.py"
);

const HINT: &str = "needs a command that speaks drover's preload protocol";

fn python3() -> bool {
    Command::new("python3")
        .args(["-c", "import socket; socket.recv_fds"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A preloaded program `api` of `workers` run by `command` (TOML array items).
fn preloaded(command: &str, workers: u32) -> String {
    format!(
        r#"[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "5s"
# these apps fail on purpose, over and over: drover must stay up to show it (an app that never
# started would otherwise end drover with its code, as it should in production)
on_exhausted = "stay"
[program.api]
command = [{command}]
preload = true
workers = {workers}
stop_timeout = "2s"
backoff = {{ initial = "50ms", max = "400ms" }}
readiness = {{ check = "uptime", min_uptime = "100ms", timeout = "30s" }}
env = {{ FAKE_MODES = "honest" }}
"#
    )
}

/// The fake preloader, once `{dir}/load` exists (until then it is "loading the app").
fn loads_when_told() -> String {
    let script = format!("while [ ! -e {{dir}}/load ]; do sleep 0.05; done; exec python3 '{FAKE}'");
    format!("\"sh\", \"-c\", {script:?}")
}

fn cli(d: &Drover, cmd: &str) -> (i32, String) {
    let out = Command::new(BIN)
        .args([cmd, "--url", &format!("http://{}", d.status_addr())])
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn readyz(d: &Drover) -> (u16, serde_json::Value) {
    let (code, body) = http_get_status(&d.status_addr(), "/readyz").expect("GET /readyz");
    (code, serde_json::from_str(&body).unwrap())
}

fn workers(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["programs"][0]["workers"].as_array().unwrap().clone()
}

#[test]
fn fresh_preloaded_workers_have_not_restarted_and_a_crashed_one_has_once() {
    if !python3() {
        skip("python3 with socket.recv_fds is not installed");
        return;
    }
    let d = Drover::start(&preloaded(&format!("\"python3\", \"{FAKE}\""), 2));
    let v = d.wait_status("2 preloaded workers ready", T, |v| all_ready(v, 2));
    for w in workers(&v) {
        assert_eq!(w["restarts"], 0, "a worker's first process: {w}");
    }
    let victim = workers(&v)[0].clone();
    kill(victim["pid"].as_i64().unwrap(), libc::SIGKILL);
    let v = d.wait_status("worker 0 forked again and ready", T, |v| {
        all_ready(v, 2) && workers(v)[0]["pid"] != victim["pid"]
    });
    let restarts: Vec<_> = workers(&v).iter().map(|w| w["restarts"].clone()).collect();
    assert_eq!(restarts, [1, 0], "{v}");
}

#[test]
fn workers_waiting_for_a_loading_preloader_say_so_everywhere() {
    if !python3() {
        skip("python3 with socket.recv_fds is not installed");
        return;
    }
    let d = Drover::start(&preloaded(&loads_when_told(), 2));
    let v = d.wait_status("2 workers waiting for the preloader", T, |v| {
        let ws = workers(v);
        ws.len() == 2 && ws.iter().all(|w| w["state"] == "waiting-for-preloader")
    });
    let pre = v["programs"][0]["preloader"].clone();
    assert_eq!(pre["state"], "loading", "{pre}");
    let pid = pre["pid"].as_i64().unwrap();
    let (code, r) = readyz(&d);
    assert_eq!(code, 503);
    let why = r["why"].as_str().unwrap();
    assert!(
        why.contains(&format!(
            "its preloader is loading the app (pid {pid}, for "
        )),
        "{why}"
    );
    let (code, status) = cli(&d, "status");
    assert_eq!(code, 1, "running, not ready: {status}");
    assert!(!status.contains("null"), "{status}");
    assert!(
        status.contains(&format!("loading the app (pid {pid}, for ")),
        "{status}"
    );
    assert_eq!(
        status.matches(" waiting-for-preloader ").count(),
        2,
        "{status}"
    );
    let (_, top) = cli(&d, "top");
    assert!(!top.contains("null"), "{top}");
    assert!(top.contains("preloader loading the app (pid"), "{top}");
    assert_eq!(top.matches(" waiting-for-preloader ").count(), 2, "{top}");
    page_shows(
        &d,
        &["waiting-for-preloader", "preloader loading the app (pid"],
    );
    // loaded: the workers are forked, their first processes
    std::fs::write(d.path("load"), "").unwrap();
    let v = d.wait_status("2 workers forked and ready", T, |v| all_ready(v, 2));
    for w in workers(&v) {
        assert_eq!(w["restarts"], 0, "{w}");
    }
    assert_eq!(readyz(&d).0, 200);
    let (code, status) = cli(&d, "status");
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains(&format!("ready (pid {pid}, up ")),
        "{status}"
    );
}

/// The page, rendered by headless Chromium, contains every one of `texts`. The page is opened
/// with `?poll` (it polls /status instead of following /events: virtual time stands still while
/// a stream is open), and chromium is killed, failing the test, after 60 s.
fn page_shows(d: &Drover, texts: &[&str]) {
    let Some(chrome) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        skip("chromium is not installed: the page is not checked (tests/run.sh installs it)");
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/?poll", d.status_addr());
    let child = Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run chromium");
    let deadline = Duration::from_secs(60);
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if finished.recv_timeout(deadline).is_err() {
            // SAFETY: kill(2) on the chromium this test started: it has run for the whole
            // deadline, so it is not reaped (`done` follows wait_with_output at once)
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait for chromium");
    let _ = done.send(());
    assert!(
        started.elapsed() < deadline,
        "chromium did not finish within {deadline:?} on {url} (killed)"
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    for t in texts {
        assert!(dom.contains(t), "the page does not show `{t}`:\n{dom}");
    }
}

/// As drover-uvicorn does when the app cannot be imported: `error …` on DROVER_PRELOAD_FD, exit 1.
const IMPORT_ERROR: &str = r#"import os, socket, sys
ctl = socket.socket(fileno=int(os.environ["DROVER_PRELOAD_FD"]))
ctl.send(b"error cannot load the app 'main:app': KeyError: 'DATABASE_URL'")
sys.exit(1)
"#;

#[test]
fn a_preloader_that_cannot_import_the_app_is_named_without_the_protocol_hint() {
    if !python3() {
        skip("python3 with socket.recv_fds is not installed");
        return;
    }
    let d = Drover::start(&preloaded(
        &format!("\"python3\", \"-c\", {IMPORT_ERROR:?}"),
        1,
    ));
    // several failures in a row (50 ms backoff): the `error` and the exit race every time
    wait_until(T, "5 preloader failures logged", || {
        let n = d
            .messages()
            .iter()
            .filter(|m| m.contains("the preloader failed"))
            .count();
        (n >= 5).then_some(())
    });
    let failures: Vec<String> = d
        .messages()
        .into_iter()
        .filter(|m| m.contains("the preloader failed"))
        .collect();
    for m in &failures {
        assert!(m.contains("it could not load the app"), "{m}");
        assert!(
            m.contains("KeyError: 'DATABASE_URL'"),
            "the app's words are logged: {m}"
        );
        assert!(!m.contains(HINT), "it spoke the protocol: {m}");
    }
    let v = d.wait_status("the preloader failed", T, |v| {
        v["programs"][0]["preloader"]["state"] == "failed"
    });
    assert!(v["programs"][0]["preloader"]["pid"].is_null());
    let (code, r) = readyz(&d);
    assert_eq!(code, 503);
    let why = r["why"].as_str().unwrap();
    assert!(why.contains("its preloader"), "{why}");
    assert!(why.contains("it could not load the app"), "{why}");
    assert!(
        !why.contains("DATABASE_URL"),
        "public: drover's words only: {why}"
    );
    let (_, status) = cli(&d, "status");
    assert!(!status.contains("null"), "{status}");
    assert!(status.contains("preloader api"), "{status}");
    assert!(status.contains("it could not load the app"), "{status}");
    let (_, top) = cli(&d, "top");
    assert!(!top.contains("null"), "{top}");
    page_shows(&d, &["it could not load the app"]);
}

#[test]
fn a_command_that_never_speaks_the_protocol_gets_the_hint() {
    // it exits at once without a word on DROVER_PRELOAD_FD: no Python needed
    let d = Drover::start(&preloaded("\"sh\", \"-c\", \"exit 4\"", 1));
    let m = wait_until(T, "the preloader's failure logged", || {
        d.messages()
            .into_iter()
            .find(|m| m.contains("the preloader failed"))
    });
    assert!(m.contains(HINT), "{m}");
    assert!(
        m.contains("exit code 4 before saying ready")
            || m.contains("closed DROVER_PRELOAD_FD without saying ready"),
        "{m}"
    );
    let (_, status) = cli(&d, "status");
    assert!(!status.contains("null"), "{status}");
}

/// drover-uvicorn from `.venv` (None, and a recorded skip, without it).
fn drover_uvicorn() -> Option<String> {
    let Some(py) = fastapi_python() else {
        skip("no Python with fastapi and uvicorn (tests/run.sh makes .venv)");
        return None;
    };
    let bin = std::path::Path::new(&py).with_file_name("drover-uvicorn");
    if !bin.exists() {
        skip("drover-uvicorn is not installed in .venv (tests/run.sh runs pip install ./python)");
        return None;
    }
    Some(bin.display().to_string())
}

#[test]
fn drover_uvicorn_with_an_app_that_does_not_import_gets_no_protocol_hint() {
    let Some(bin) = drover_uvicorn() else { return };
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi");
    let cfg = preloaded(
        &format!("\"{bin}\", \"no_such_module:app\", \"--log-level\", \"warning\""),
        1,
    )
    .replace("workers = 1", &format!("workers = 1\ncwd = \"{app}\""));
    let d = Drover::start(&cfg);
    let m = wait_until(T, "the preloader's failure logged", || {
        d.messages()
            .into_iter()
            .find(|m| m.contains("the preloader failed"))
    });
    assert!(m.contains("it could not load the app"), "{m}");
    assert!(m.contains("no_such_module"), "{m}");
    assert!(!m.contains(HINT), "{m}");
    let (code, r) = readyz(&d);
    assert_eq!(code, 503);
    let why = r["why"].as_str().unwrap();
    assert!(why.contains("its preloader"), "{why}");
    assert!(why.contains("it could not load the app"), "{why}");
}

#[test]
fn fresh_workers_forked_by_drover_uvicorn_have_not_restarted() {
    let Some(bin) = drover_uvicorn() else { return };
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi");
    let cfg = format!(
        r#"[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "20s"
[socket.http]
listen = "127.0.0.1:0"
[program.api]
command = ["{bin}", "main:app", "--no-access-log", "--log-level", "warning"]
sockets = ["http"]
workers = 2
cwd = "{app}"
preload = true
readiness = {{ check = "notify", timeout = "30s" }}
"#
    );
    let mut d = Drover::start(&cfg);
    let v = d.wait_status("2 preloaded workers ready", T, |v| all_ready(v, 2));
    for w in workers(&v) {
        assert_eq!(w["restarts"], 0, "{w}");
    }
    d.stop_ok();
}

#[test]
fn a_roll_of_preloaded_workers_waits_for_each_fork_while_other_events_arrive() {
    if !python3() {
        skip("python3 with socket.recv_fds is not installed");
        return;
    }
    // `noise` exits every few milliseconds, so the loop wakes between a fork request and its
    // answer: the roll must not take a replacement waiting for its fork for a failed one
    let cfg = preloaded(&format!("\"python3\", \"{FAKE}\""), 2)
        .replace("env = {", "watch = [\"{dir}/code.py\"]\nenv = {")
        + "[program.noise]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\nbackoff = { initial = \"1ms\", max = \"5ms\" }\n";
    let d = Drover::start(&cfg);
    std::fs::write(d.path("code.py"), "0").unwrap();
    let v = d.wait_status("2 preloaded workers ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&v, "api");
    for round in 1..=3 {
        std::fs::write(d.path("code.py"), round.to_string()).unwrap();
        wait_until(T, "the roll to end", || {
            let logged = d.messages();
            if let Some(a) = logged.iter().find(|m| m.contains("abandoned")) {
                panic!("roll {round}: {a}");
            }
            let done = logged
                .iter()
                .filter(|m| m.starts_with("program api: rolling") && m.contains(" done in "))
                .count();
            (done >= round).then_some(())
        });
    }
    let v = d.wait_status("2 ready, every one replaced", T, |v| {
        all_ready(v, 2)
            && Drover::worker_pids(v, "api")
                .iter()
                .all(|p| !old.contains(p))
    });
    assert_eq!(v["programs"][0]["rolling"], false);
}

#[test]
fn a_preloader_not_started_yet_is_stopped_not_failed() {
    // a pre-start step runs first: no preloader exists yet, and none has failed
    let cfg = preloaded("\"sleep\", \"100000\"", 1)
        + "[[prestart]]\nname = \"migrate\"\ncommand = [\"sleep\", \"100000\"]\n";
    let d = Drover::start(&cfg);
    let v = d.wait_status("the step running", T, |v| {
        v["steps"][0]["state"] == "running"
    });
    let pre = &v["programs"][0]["preloader"];
    assert_eq!(pre["state"], "stopped", "{pre}");
    assert!(pre["error"].is_null(), "{pre}");
    let (code, status) = cli(&d, "status");
    assert_eq!(code, 1, "{status}");
    assert!(status.contains("preloader api"), "{status}");
    assert!(!status.contains("failed"), "{status}");
    assert!(!status.contains("null"), "{status}");
}

/// Says `ready`, then exits at once: it spoke the protocol, whichever drover sees first.
const READY_THEN_EXIT: &str = r#"import os, socket, sys
ctl = socket.socket(fileno=int(os.environ["DROVER_PRELOAD_FD"]))
ctl.send(b"ready")
sys.exit(5)
"#;

#[test]
fn a_preloader_that_exits_right_after_ready_gets_no_protocol_hint() {
    if !python3() {
        skip("python3 with socket.recv_fds is not installed");
        return;
    }
    let d = Drover::start(&preloaded(
        &format!("\"python3\", \"-c\", {READY_THEN_EXIT:?}"),
        1,
    ));
    let failures = wait_until(T, "3 preloader failures logged", || {
        let f: Vec<String> = d
            .messages()
            .into_iter()
            .filter(|m| m.contains("the preloader failed"))
            .collect();
        (f.len() >= 3).then_some(f)
    });
    println!("{failures:#?}");
    for m in &failures {
        assert!(!m.contains(HINT), "it spoke the protocol: {m}");
    }
    let (_, status) = cli(&d, "status");
    assert!(!status.contains("null"), "{status}");
}

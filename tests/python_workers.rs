//! drover's worker side with the real FastAPI example app under `drover-uvicorn` (python/,
//! installed into .venv by tests/run.sh): preloaded workers forked from one preloader, readiness
//! by READY=1, a rolling restart under keep-alive load that loses nothing, and the app's own
//! Prometheus metrics across workers.

mod common;
use common::*;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi");

/// `.venv/bin/drover-uvicorn`, or None (and a recorded skip).
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

/// drover running the example app under drover-uvicorn in `cwd`.
fn config(bin: &str, cwd: &str, workers: u32, program_extra: &str) -> String {
    format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "20s"
[socket.http]
listen = "127.0.0.1:0"
backlog = 2048
[program.api]
command = ["{bin}", "main:app", "--no-access-log", "--log-level", "warning"]
sockets = ["http"]
workers = {workers}
cwd = "{cwd}"
stop_timeout = "10s"
readiness = {{ check = "notify", timeout = "30s" }}
{program_extra}
"#
    )
}

fn stat_field(pid: i64, n: usize) -> i64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = s.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n).unwrap().parse().unwrap()
}

fn ppid(pid: i64) -> i64 {
    stat_field(pid, 1)
}

fn pgid(pid: i64) -> i64 {
    stat_field(pid, 2)
}

fn preloader(v: &serde_json::Value) -> serde_json::Value {
    v["programs"][0]["preloader"].clone()
}

#[test]
fn preloaded_workers_are_reparented_grouped_placed_restarted_and_stopped() {
    let Some(bin) = drover_uvicorn() else { return };
    let cfg = config(
        &bin,
        APP,
        2,
        "preload = true\nbudget = { memory_hard = \"1GiB\" }",
    );
    let mut d = Drover::start(&cfg);
    let st = d.wait_status("2 preloaded workers ready", T, |v| all_ready(v, 2));
    let me = st["pid"].as_i64().unwrap();
    let pre = preloader(&st);
    assert_eq!(pre["state"], "ready", "{pre}");
    let pre_pid = pre["pid"].as_i64().unwrap();
    let pids = Drover::worker_pids(&st, "api");
    for (i, &pid) in pids.iter().enumerate() {
        assert_ne!(pid, pre_pid);
        assert_eq!(
            ppid(pid),
            me,
            "worker {pid} is drover's child, not the preloader's"
        );
        assert_eq!(pgid(pid), pid, "worker {pid} leads its own process group");
        let w = &st["programs"][0]["workers"][i];
        assert!(
            w["status"].as_str().unwrap_or("").starts_with("serving"),
            "READY=1/STATUS= from drover-uvicorn: {w}"
        );
        match w["cgroup"].as_array().and_then(|c| c.first()) {
            Some(dir) => {
                let dir = dir.as_str().unwrap();
                let mine = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
                let leaf = dir.rsplit('/').next().unwrap();
                assert!(mine.contains(leaf), "worker {pid} not in {dir}:\n{mine}");
            }
            None => {
                skip("no writable cgroup here: the preloaded workers' cgroup join is not shown")
            }
        }
    }
    assert_eq!(
        pgid(pre_pid),
        pre_pid,
        "the preloader has its own group too"
    );
    // they serve, as separate processes
    let http = d.logged_addr("socket http listening on ");
    let served = wait_until(T, "both workers answering", || {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let b = http_get(&http, "/")?;
            let v: serde_json::Value = serde_json::from_str(&b).ok()?;
            seen.insert(v["pid"].as_i64()?);
        }
        (seen.len() == 2).then_some(seen)
    });
    assert!(
        served.iter().all(|p| pids.contains(p)),
        "{served:?} vs {pids:?}"
    );
    // killed: a replacement forked from the same preloader
    kill(pids[0], libc::SIGKILL);
    let st = d.wait_status("a replacement", T, |v| {
        let now = Drover::worker_pids(v, "api");
        all_ready(v, 2) && !now.contains(&pids[0])
    });
    let new = Drover::worker_pids(&st, "api");
    let fresh = *new.iter().find(|p| !pids.contains(p)).unwrap();
    assert_eq!(ppid(fresh), me);
    assert_eq!(
        preloader(&st)["pid"].as_i64(),
        Some(pre_pid),
        "the same preloader"
    );
    // stopped cleanly: workers and preloader gone, exit 0
    d.stop_ok();
    for p in new.iter().chain([&pre_pid]) {
        wait_until(T, "every process gone", || (!alive(*p)).then_some(()));
    }
}

#[test]
fn a_code_change_rolls_the_workers_onto_a_new_preloader() {
    let Some(bin) = drover_uvicorn() else { return };
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main.py");
    std::fs::copy(format!("{APP}/main.py"), &main).unwrap();
    let cwd = dir.path().display().to_string();
    let cfg = config(
        &bin,
        &cwd,
        2,
        &format!("preload = true\nwatch = [\"{}\"]", main.display()),
    );
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let (old_pre, old) = (
        preloader(&st)["pid"].clone(),
        Drover::worker_pids(&st, "api"),
    );
    let code = std::fs::read_to_string(&main).unwrap();
    std::fs::write(
        &main,
        code.replace("\"hello\": \"world\"", "\"hello\": \"changed\""),
    )
    .unwrap();
    let http = d.logged_addr("socket http listening on ");
    let st = d.wait_status("rolled onto a new preloader", T, |v| {
        let now = Drover::worker_pids(v, "api");
        all_ready(v, 2)
            && v["programs"][0]["rolling"] == false
            && preloader(v)["pid"] != old_pre
            && now.iter().all(|p| !old.contains(p))
    });
    assert_eq!(preloader(&st)["state"], "ready");
    let body = http_get(&http, "/").unwrap();
    assert!(body.contains("changed"), "the new code serves: {body}");
    assert!(d.logged("a new preloader started"));
    assert!(d.logged("the old one stops and the workers roll onto it"));
    d.stop_ok();
}

#[test]
fn a_preloader_that_runs_a_thread_gets_a_clear_error() {
    let Some(bin) = drover_uvicorn() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("threaded.py"),
        format!(
            "import sys, threading, time\nsys.path.insert(0, {APP:?})\nthreading.Thread(target=time.sleep, args=(1000,), name=\"cache-warmer\", daemon=True).start()\nfrom main import app\n"
        ),
    )
    .unwrap();
    let cwd = dir.path().display().to_string();
    let cfg = config(&bin, &cwd, 1, "preload = true").replace("main:app", "threaded:app");
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let st = d.wait_status("the preloader's failure", T, |v| {
        preloader(v)["error"].is_string()
    });
    // /status says what happened in drover's words; the preloader's own text (application
    // output) is in the log, and in /status only for authenticated clients
    let err = preloader(&st)["error"].as_str().unwrap().to_string();
    assert!(err.contains("it could not load the app"), "{err}");
    assert!(!err.contains("cache-warmer"), "{err}");
    let logged = d
        .messages()
        .into_iter()
        .find(|m| m.contains("the preloader failed: it could not load the app"))
        .expect("the failure is logged");
    for part in [
        "runs 2 threads",
        "cache-warmer",
        "lifespan startup",
        "preload = false",
    ] {
        assert!(logged.contains(part), "`{part}` not in: {logged}");
    }
    assert_eq!(st["programs"][0]["ready_workers"], 0);
    d.stop_ok();
}

/// Keep-alive clients like wrk's: each keeps one connection, sends requests back to back, and
/// reconnects when a response says `Connection: close`. A connection closed or reset without a
/// full response is an error.
fn keepalive_load(
    addr: &str,
    conns: usize,
    stop: Arc<AtomicBool>,
    served: Arc<std::sync::atomic::AtomicU64>,
) -> Vec<std::thread::JoinHandle<(u64, u64, Vec<String>)>> {
    (0..conns)
        .map(|_| {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let stop = stop.clone();
            let served = served.clone();
            std::thread::spawn(move || {
                let (mut ok, mut bad, mut why) = (0u64, 0u64, vec![]);
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut conn: Option<std::net::TcpStream> = None;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let s = match conn.take() {
                        Some(s) => s,
                        None => match std::net::TcpStream::connect(addr) {
                            Ok(s) => {
                                s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                                s
                            }
                            Err(e) => {
                                bad += 1;
                                why.push(format!("connect: {e}"));
                                continue;
                            }
                        },
                    };
                    match one_request(&s) {
                        Ok(keep) => {
                            ok += 1;
                            served.fetch_add(1, Ordering::Relaxed);
                            if keep {
                                conn = Some(s);
                            }
                        }
                        Err(e) => {
                            bad += 1;
                            why.push(e);
                        }
                    }
                }
                (ok, bad, why)
            })
        })
        .collect()
}

/// One keep-alive request: Ok(the connection may be reused).
fn one_request(mut s: &std::net::TcpStream) -> Result<bool, String> {
    s.write_all(b"GET / HTTP/1.1\r\nHost: load\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("closed after {} bytes of a response", buf.len()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no content-length")?;
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("closed mid-body".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(!head.contains("connection: close"))
}

fn rolling_restart_under_keepalive_load(preload: bool) {
    let Some(bin) = drover_uvicorn() else { return };
    let extra = if preload { "preload = true" } else { "" };
    let mut d = Drover::start(&config(&bin, APP, 2, extra));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "api");
    let http = d.logged_addr("socket http listening on ");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let load = keepalive_load(&http, 16, stop.clone(), served.clone());
    // every client busy on its keep-alive connection before the roll begins
    wait_until(T, "the load running", || {
        (served.load(Ordering::Relaxed) >= 500).then_some(())
    });
    // a reload with a changed environment rolls both workers
    let path = d.path("drover.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        cfg.replace(
            "stop_timeout = \"10s\"",
            "stop_timeout = \"10s\"\nenv = { ROLL = \"1\" }",
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    d.wait_status("both workers replaced", Duration::from_secs(90), |v| {
        let now = Drover::worker_pids(v, "api");
        all_ready(v, 2)
            && v["programs"][0]["rolling"] == false
            && now.iter().all(|p| !old.contains(p))
    });
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad, mut why) = (0, 0, vec![]);
    for h in load {
        let (o, b, w) = h.join().unwrap();
        ok += o;
        bad += b;
        why.extend(w);
    }
    println!("rolling restart under keep-alive load (preload {preload}): {ok} ok, {bad} failed");
    assert!(ok > 100, "the load ran: {ok} requests");
    assert_eq!(bad, 0, "requests lost during the roll: {why:?}");
    d.stop_ok();
}

#[test]
fn a_rolling_restart_under_keepalive_load_loses_no_request() {
    rolling_restart_under_keepalive_load(false);
}

#[test]
fn a_rolling_restart_of_preloaded_workers_under_keepalive_load_loses_no_request() {
    rolling_restart_under_keepalive_load(true);
}

#[test]
fn the_apps_own_metrics_stay_right_across_restarts() {
    let Some(bin) = drover_uvicorn() else { return };
    let dir = tempfile::tempdir().unwrap();
    let prom = dir.path().join("prom");
    std::fs::create_dir(&prom).unwrap();
    // left over from an earlier run: counted by the app's /metrics unless removed
    std::fs::write(prom.join("counter_999999.db"), b"stale").unwrap();
    let cfg = config(
        &bin,
        APP,
        2,
        &format!(
            "preload = true\nprometheus_multiproc_dir = \"{}\"",
            prom.display()
        ),
    );
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    assert!(!prom.join("counter_999999.db").exists(), "emptied at start");
    let http = d.logged_addr("socket http listening on ");
    for _ in 0..20 {
        http_get(&http, "/").unwrap();
    }
    let value = |text: &str, name: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(name) && !l.starts_with(&format!("{name}_created")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(-1.0)
    };
    let m = http_get(&http, "/metrics").unwrap();
    assert_eq!(value(&m, "app_workers"), 2.0, "{m}");
    assert_eq!(value(&m, "app_requests_total"), 20.0, "{m}");
    // a worker dies: its live gauge goes, its counter's total stays
    let victim = Drover::worker_pids(&st, "api")[0];
    let gauge = prom.join(format!("gauge_livesum_{victim}.db"));
    assert!(gauge.exists(), "the worker's live gauge file");
    kill(victim, libc::SIGKILL);
    d.wait_status("a replacement", T, |v| {
        all_ready(v, 2) && !Drover::worker_pids(v, "api").contains(&victim)
    });
    assert!(!gauge.exists(), "the dead worker's live gauge was removed");
    let m = http_get(&http, "/metrics").unwrap();
    assert_eq!(
        value(&m, "app_workers"),
        2.0,
        "two live workers, not three: {m}"
    );
    assert!(
        value(&m, "app_requests_total") >= 20.0,
        "the dead worker's requests still counted: {m}"
    );
    d.stop_ok();
}

#[test]
fn a_dead_preloader_is_replaced_and_the_workers_roll_onto_the_new_one() {
    let Some(bin) = drover_uvicorn() else { return };
    let d = Drover::start(&config(&bin, APP, 2, "preload = true"));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let (pre, old) = (
        preloader(&st)["pid"].as_i64().unwrap(),
        Drover::worker_pids(&st, "api"),
    );
    kill(pre, libc::SIGKILL);
    let st = d.wait_status("a new preloader and the workers rolled onto it", T, |v| {
        let now = Drover::worker_pids(v, "api");
        preloader(v)["state"] == "ready"
            && preloader(v)["pid"].as_i64() != Some(pre)
            && all_ready(v, 2)
            && v["programs"][0]["rolling"] == false
            && now.iter().all(|p| !old.contains(p))
    });
    assert_eq!(st["programs"][0]["ready_workers"], 2);
    assert!(d.logged(&format!("(pid {pre}) exited with signal KILL")));
}

#[test]
fn a_command_that_does_not_speak_the_preload_protocol_gets_a_clear_error() {
    // no Python needed: `sleep` never says "ready" on DROVER_PRELOAD_FD
    let cfg = "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.api]\ncommand = [\"sleep\", \"1000\"]\npreload = true\nreadiness = { timeout = \"1s\" }\nbackoff = { initial = \"100ms\" }\n";
    let d = Drover::start(cfg);
    let st = d.wait_status("the preloader's error", T, |v| {
        preloader(v)["error"].is_string()
    });
    let err = preloader(&st)["error"].as_str().unwrap().to_string();
    assert!(
        err.contains("did not say ready on DROVER_PRELOAD_FD within 1s"),
        "{err}"
    );
    assert_eq!(st["programs"][0]["ready_workers"], 0);
    assert!(
        d.logged("needs a command that speaks drover's preload protocol"),
        "{:#?}",
        d.messages()
    );
    // the workers waited without counting failures
    assert_eq!(st["programs"][0]["workers"][0]["restarts"], 0, "{st}");
}

#[test]
fn uvicorn_with_a_mistyped_app_makes_drover_exit_3_like_uvicorn() {
    let Some(py) = fastapi_python() else {
        skip("no Python with fastapi and uvicorn (tests/run.sh makes .venv)");
        return;
    };
    // `uvicorn app:ap` exits 3 ("Attribute "ap" not found"); under drover with several workers,
    // a first-day typo must not leave drover retrying forever with nothing serving
    let app = tempfile::tempdir().unwrap();
    std::fs::write(app.path().join("main.py"), "app = None\n").unwrap();
    let app_dir = app.path().display().to_string();
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "2",
            "--bind",
            "127.0.0.1:0",
            "--status",
            "off",
            "--",
            &py,
            "-m",
            "uvicorn",
            "main:ap",
            "--app-dir",
            &app_dir,
            "--fd",
            "3",
        ],
        &[],
        &[],
    );
    d.keep.push(app);
    assert_eq!(d.wait_exit(Duration::from_secs(60)), 3, "{}", d.stderr());
    assert!(
        d.logged("the app cannot start, a deployment error; shutting down with exit code 3"),
        "{}",
        d.stderr()
    );
}

#[test]
fn a_preloaded_app_that_cannot_import_makes_drover_exit_non_zero() {
    let Some(bin) = drover_uvicorn() else { return };
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("broken.py"), "def oops(:\n").unwrap();
    let cwd = dir.path().display().to_string();
    // no on_exhausted: not PID 1, the default would be "stay" for an app that had started
    let cfg = config(
        &bin,
        &cwd,
        2,
        "preload = true\nbackoff = { initial = \"50ms\", max = \"200ms\" }",
    )
    .replace("main:app", "broken:app")
    .replace("[socket.http]", "exhausted_after = 3\n[socket.http]");
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let code = d.wait_exit(Duration::from_secs(60));
    assert_ne!(code, 0, "{}", d.stderr());
    assert!(
        d.logged("program api: its preloader is failing (3+ consecutive quick failures"),
        "{}",
        d.stderr()
    );
    assert!(
        d.logged("none of its workers has ever been ready"),
        "{}",
        d.stderr()
    );
    println!("drover exited {code} for a preloaded app that cannot import");
}

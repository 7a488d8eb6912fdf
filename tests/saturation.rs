//! Saturation signals with real sockets and stopped workers: the accept queue in /status and
//! /metrics, load shedding on /readyz, autoscaling on the queue. Workers are frozen with SIGSTOP
//! so connections wait in the kernel's queue exactly as they do when every worker is busy.

mod common;
use common::*;
use std::net::TcpStream;

/// SIGSTOP or SIGCONT every one of `pids`.
fn freeze(pids: &[i64], sig: i32) {
    for &p in pids {
        kill(p, sig);
    }
}

fn socket<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["sockets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no socket {name} in {st}"))
}

/// `n` connections that the kernel accepts into the listener's queue.
fn connect(addr: &str, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect()
}

#[test]
fn the_queue_rises_with_waiting_connections_and_falls_when_served() {
    let cfg = demo_web("2", "", "").replace(
        "listen = \"127.0.0.1:0\"",
        "listen = \"127.0.0.1:0\"\nbacklog = 50",
    );
    let mut d = Drover::start(&cfg);
    let st = d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    let q = socket(&st, "http");
    assert_eq!(q["queue"], 0, "{q}");
    assert_eq!(q["queue_max"], 50, "{q}");
    let http = d.logged_addr("socket http listening on ");
    let pids = Drover::worker_pids(&st, "web");
    freeze(&pids, libc::SIGSTOP);
    let conns = connect(&http, 5);
    d.wait_status("5 connections queued", T, |v| {
        socket(v, "http")["queue"] == 5
    });
    let metrics = http_get(&d.status_addr(), "/metrics").unwrap();
    for line in [
        "drover_socket_queue{socket=\"http\"} 5",
        "drover_socket_queue_max{socket=\"http\"} 50",
        "# TYPE drover_listen_overflows_total counter",
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    let node = &d.status()["node"];
    assert!(node["listen_overflows"].is_u64(), "{node}");
    assert!(node["scope"]
        .as_str()
        .unwrap()
        .contains("not only drover's"));
    // `drover status` shows it too
    let out = std::process::Command::new(BIN)
        .args(["status", "--url", &format!("http://{}", d.status_addr())])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("queue 5/50"), "{text}");
    freeze(&pids, libc::SIGCONT);
    d.wait_status("the queue served", T, |v| socket(v, "http")["queue"] == 0);
    drop(conns);
    d.stop_ok();
}

#[test]
fn a_unix_listener_reports_its_queue_or_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.sock");
    let cfg = demo_web("1", "", "").replace(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"unix:{}\"\nbacklog = 20", path.display()),
    );
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let st = d.wait_status("1 ready worker", T, |v| all_ready(v, 1));
    let q = socket(&st, "http").clone();
    if q["queue"].is_null() {
        let why = q["queue_unknown"].as_str().unwrap_or_default().to_string();
        assert!(why.contains("unix_diag"), "{q}");
        skip(&format!("unix listener queues: {why}"));
        return;
    }
    assert_eq!(q["queue_max"], 20, "{q}");
    let pids = Drover::worker_pids(&st, "web");
    freeze(&pids, libc::SIGSTOP);
    let _c: Vec<_> = (0..3)
        .map(|_| std::os::unix::net::UnixStream::connect(&path).unwrap())
        .collect();
    d.wait_status("3 connections queued", T, |v| {
        socket(v, "http")["queue"] == 3
    });
    freeze(&pids, libc::SIGCONT);
    d.wait_status("the queue served", T, |v| socket(v, "http")["queue"] == 0);
    d.stop_ok();
}

#[test]
fn readyz_sheds_above_max_queue_and_recovers() {
    let cfg = demo_web("1", "", "readiness = { max_queue = 2 }");
    let mut d = Drover::start(&cfg);
    let st = d.wait_status("1 ready worker", T, |v| all_ready(v, 1));
    let status = d.status_addr();
    assert_eq!(http_get_status(&status, "/readyz").unwrap().0, 200);
    let http = d.logged_addr("socket http listening on ");
    let pids = Drover::worker_pids(&st, "web");
    freeze(&pids, libc::SIGSTOP);
    let conns = connect(&http, 4);
    let body = wait_until(T, "/readyz 503 while shedding", || {
        let (code, body) = http_get_status(&status, "/readyz")?;
        (code == 503).then_some(body)
    });
    assert!(
        body.contains("shedding load, 4 connections waiting (max_queue 2)"),
        "{body}"
    );
    let metrics = http_get(&status, "/metrics").unwrap();
    assert!(
        metrics.contains("drover_shedding{program=\"web\"} 1"),
        "{metrics}"
    );
    assert!(d.logged("4 connections waiting, above max_queue 2"));
    freeze(&pids, libc::SIGCONT);
    wait_until(T, "/readyz 200 again", || {
        (http_get_status(&status, "/readyz")?.0 == 200).then_some(())
    });
    wait_until(T, "the recovery logged", || {
        d.logged("/readyz ready again").then_some(())
    });
    drop(conns);
    d.stop_ok();
}

#[test]
fn autoscaling_on_the_queue_adds_workers_and_removes_them_after_the_window() {
    let cfg = demo_web(
        "1",
        "",
        "[program.web.autoscale]\nmin = 1\nmax = 3\ntarget_queue = 1\nscale_down_window = \"3s\"",
    );
    let mut d = Drover::start(&cfg);
    let st = d.wait_status("1 ready worker", T, |v| all_ready(v, 1));
    let http = d.logged_addr("socket http listening on ");
    let pids = Drover::worker_pids(&st, "web");
    freeze(&pids, libc::SIGSTOP);
    let conns = connect(&http, 3);
    // 3 waiting for 1 worker vs a target of 1 per worker: 3 workers
    d.wait_status("scaled to 3", T, |v| {
        v["programs"][0]["desired"] == 3 && v["programs"][0]["ready_workers"] == 3
    });
    assert!(
        d.logged("autoscale web: 1 -> 3 workers (queue 3.0 waiting per worker vs target 1 -> 3"),
        "{:#?}",
        d.messages()
    );
    // the new workers drain the queue; with it empty, back to 1 once the window forgets the 3
    d.wait_status("the queue served", T, |v| socket(v, "http")["queue"] == 0);
    freeze(&pids, libc::SIGCONT);
    let st = d.wait_status("scaled back to 1", T, |v| {
        v["programs"][0]["desired"] == 1
            && v["programs"][0]["workers"].as_array().unwrap().len() == 1
    });
    let a = &st["programs"][0]["autoscale"];
    assert_eq!(a["queue"]["target"], 1.0, "{a}");
    assert!(a["cpu"].is_null(), "CPU has no target here: {a}");
    drop(conns);
    d.stop_ok();
}

#[test]
fn history_fills_and_a_reload_resizes_it_keeping_the_newest_samples() {
    let mut d = Drover::start(&demo_web("1", "history_interval = \"1s\"", ""));
    let status = d.status_addr();
    let history = || -> Option<serde_json::Value> {
        serde_json::from_str(&http_get(&status, "/history")?).ok()
    };
    let h = wait_until(T, "4 samples", || {
        history().filter(|h| h["samples"].as_array().is_some_and(|s| s.len() >= 4))
    });
    let times: Vec<u64> = h["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["t"].as_u64().unwrap())
        .collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {times:?}"
    );
    // keep 2 samples from now on
    let path = d.path("drover.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        cfg.replace(
            "history_interval = \"1s\"",
            "history_interval = \"1s\"\nhistory = \"2s\"",
        ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let h = wait_until(T, "the ring resized", || {
        history().filter(|h| h["capacity"] == 2)
    });
    let kept: Vec<u64> = h["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["t"].as_u64().unwrap())
        .collect();
    assert!(kept.len() <= 2 && !kept.is_empty(), "{kept:?}");
    assert!(
        kept[0] >= times[times.len() - 2],
        "the newest kept: {kept:?} of {times:?}"
    );
    // history = "0s": none kept, and /history says how to turn it on
    let cfg = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, cfg.replace("history = \"2s\"", "history = \"0s\"")).unwrap();
    d.signal(libc::SIGHUP);
    let (code, body) = wait_until(T, "history off", || {
        http_get_status(&status, "/history").filter(|(c, _)| *c == 404)
    });
    assert_eq!(code, 404);
    assert!(body.contains("supervisor.history"), "{body}");
    d.stop_ok();
}

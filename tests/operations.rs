//! Operations on the built-in demo worker: readiness, the control API (auth and validation),
//! rolling restarts, reload (good and bad), scaling, drain, health checks, metrics, file watch.

mod common;
use common::*;
use std::time::Duration;

const TOKEN: &str = "test-token-0123456789abcdef";

fn demo_cfg(workers: u32, extra_sup: &str, extra_prog: &str) -> String {
    demo_web(&workers.to_string(), extra_sup, extra_prog)
}

/// Start drover with a token file written first.
fn start_with_token(cfg: &str) -> Drover {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("token");
    std::fs::write(&tok, format!("{TOKEN}\n")).unwrap();
    let cfg = cfg.replace("TOKEN_FILE", tok.to_str().unwrap());
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    d
}

#[test]
fn readiness_follows_the_workers_and_readyz_says_so() {
    let mut d = Drover::start(&demo_cfg(2, "", "min_ready = 2"));
    let st = d.wait_status("2 ready workers", T, |v| all_ready(v, 2));
    assert_eq!(st["ready"], true);
    assert_eq!(st["programs"][0]["ready_workers"], 2);
    let addr = d.status_addr();
    let (code, body) = http_get_status(&addr, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    // one worker killed: below min_ready until its replacement is listening again
    let pid = Drover::worker_pids(&st, "web")[0];
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    d.wait_status("ready again with a new pid", T, |v| {
        all_ready(v, 2) && !Drover::worker_pids(v, "web").contains(&pid)
    });
    assert_eq!(http_get_status(&addr, "/readyz").unwrap().0, 200);
    d.stop_ok();
}

#[test]
fn control_api_is_off_without_a_token_and_says_so() {
    let d = Drover::start(&demo_cfg(1, "", ""));
    d.wait_status("ready", T, |v| all_ready(v, 1));
    let (code, body) =
        http_req(&d.status_addr(), "POST", "/programs/web/restart", b"", None).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("control API is off") && body.contains("control_token_file"),
        "{body}"
    );
    assert_eq!(d.status()["control"], "off");
}

#[test]
fn control_api_auth_and_validation() {
    let d = start_with_token(&demo_cfg(2, "control_token_file = \"TOKEN_FILE\"", ""));
    d.wait_status("ready", T, |v| all_ready(v, 2));
    let a = d.status_addr();
    let post =
        |path: &str, body: &[u8], tok: Option<&str>| http_req(&a, "POST", path, body, tok).unwrap();
    // (path, body, token, expected code, expected message)
    type Case<'a> = (&'a str, &'a [u8], Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "/programs/web/scale",
            b"{\"workers\": 3}",
            None,
            401,
            "missing Authorization",
        ),
        (
            "/programs/web/scale",
            b"{\"workers\": 3}",
            Some("wrong-token-0123456789"),
            401,
            "wrong token",
        ),
        (
            "/programs/web/scale",
            b"{\"workers\": -1}",
            Some(TOKEN),
            400,
            "between 0 and 10000",
        ),
        (
            "/programs/web/scale",
            b"{\"workers\": 100000}",
            Some(TOKEN),
            400,
            "between 0 and 10000",
        ),
        (
            "/programs/web/scale",
            b"{\"workers\": \"3\"}",
            Some(TOKEN),
            400,
            "must be an integer",
        ),
        (
            "/programs/web/scale",
            b"{workers: 3",
            Some(TOKEN),
            400,
            "not JSON",
        ),
        (
            "/programs/web/scale",
            b"{\"replicas\": 3}",
            Some(TOKEN),
            400,
            "unknown field `replicas`",
        ),
        (
            "/programs/nope/scale",
            b"{\"workers\": 3}",
            Some(TOKEN),
            404,
            "no program named `nope`",
        ),
        (
            "/programs/nope/restart",
            b"",
            Some(TOKEN),
            404,
            "no program named `nope`",
        ),
        (
            "/programs/web/explode",
            b"",
            Some(TOKEN),
            404,
            "no such route",
        ),
    ];
    for (path, body, tok, code, msg) in cases {
        let (c, b) = post(path, body, tok);
        assert_eq!(c, code, "{path} {}: {b}", String::from_utf8_lossy(body));
        assert!(b.contains(msg), "{path}: {b}");
        let v: serde_json::Value = serde_json::from_str(&b).expect("errors are JSON");
        assert_eq!(v["ok"], false);
    }
    // nothing changed
    assert_eq!(d.status()["programs"][0]["desired"], 2);
    // wrong method, oversized body
    let (c, b) = http_req(&a, "GET", "/programs/web/scale", b"", Some(TOKEN)).unwrap();
    assert_eq!(c, 405, "{b}");
    let big = vec![b'x'; 10_000];
    let (c, b) = post("/programs/web/scale", &big, Some(TOKEN));
    assert_eq!(c, 413, "{b}");
    // the token never shows in /status
    let raw = http_get(&a, "/status").unwrap();
    assert!(!raw.contains(TOKEN));
    assert!(!d.stderr().contains(TOKEN), "the token is never logged");
    // a good call works
    let (c, b) = post("/programs/web/scale", b"{\"workers\": 3}", Some(TOKEN));
    assert_eq!(c, 200, "{b}");
    d.wait_status("3 ready workers", T, |v| all_ready(v, 3));
}

#[test]
fn rolling_restart_replaces_every_worker_keeping_indexes() {
    let d = start_with_token(&demo_cfg(3, "control_token_file = \"TOKEN_FILE\"", ""));
    let st = d.wait_status("3 ready", T, |v| all_ready(v, 3));
    let old = Drover::worker_pids(&st, "web");
    let out = std::process::Command::new(BIN)
        .args([
            "ctl",
            "--url",
            &format!("http://{}", d.status_addr()),
            "restart",
            "web",
        ])
        .env("DROVER_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("rolling restart of web started"));
    let st = d.wait_status("every pid replaced, all ready", T, |v| {
        let now = Drover::worker_pids(v, "web");
        all_ready(v, 3)
            && v["programs"][0]["rolling"] == false
            && now.iter().all(|p| !old.contains(p))
    });
    let mut idx: Vec<i64> = st["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["index"].as_i64().unwrap())
        .collect();
    idx.sort();
    assert_eq!(idx, vec![0, 1, 2]);
    for w in st["programs"][0]["workers"].as_array().unwrap() {
        assert_eq!(w["last_exit"]["reason"], "restart", "{w}");
    }
    let metrics = http_get(&d.status_addr(), "/metrics").unwrap();
    assert!(
        metrics.contains("drover_restarts_total{program=\"web\",reason=\"restart\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("drover_spawn_to_ready_seconds_count{program=\"web\"} 6"),
        "{metrics}"
    );
    assert!(metrics.contains("drover_workers_ready{program=\"web\"} 3"));
}

#[test]
fn sighup_with_a_bad_config_keeps_the_old_one_and_a_good_one_applies() {
    let mut d = Drover::start(&demo_cfg(2, "", "env = { GREETING = \"one\" }"));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    let path = d.path("drover.toml");
    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("workers = 2", "workers = \"two\"")).unwrap();
    d.signal(libc::SIGHUP);
    let st = d.wait_status("the reload error in status", T, |v| {
        v["last_reload"]["ok"] == false
    });
    let msg = st["last_reload"]["message"].as_str().unwrap();
    assert!(
        msg.contains("drover.toml:") && msg.contains("program.web.workers"),
        "{msg}"
    );
    assert_eq!(Drover::worker_pids(&st, "web"), old, "nothing changed");
    assert!(d
        .stderr()
        .contains("reload failed, the running configuration is unchanged"));
    // now a real change: 3 workers and a new environment -> scale + roll
    std::fs::write(
        &path,
        good.replace("workers = 2", "workers = 3")
            .replace("\"one\"", "\"two\""),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let st = d.wait_status("3 new ready workers", T, |v| {
        v["last_reload"]["ok"] == true
            && all_ready(v, 3)
            && v["programs"][0]["rolling"] == false
            && Drover::worker_pids(v, "web")
                .iter()
                .all(|p| !old.contains(p))
    });
    assert!(st["last_reload"]["message"]
        .as_str()
        .unwrap()
        .contains("web rolling"));
    let metrics = http_get(&d.status_addr(), "/metrics").unwrap();
    assert!(
        metrics.contains("drover_reloads_total{result=\"ok\"} 1")
            && metrics.contains("drover_reloads_total{result=\"error\"} 1"),
        "{metrics}"
    );
    d.stop_ok();
}

#[test]
fn a_replacement_that_never_becomes_ready_abandons_the_roll() {
    let d = Drover::start(&demo_cfg(2, "", ""));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    let path = d.path("drover.toml");
    let cfg = std::fs::read_to_string(&path).unwrap();
    // the new version crashes at start
    std::fs::write(
        &path,
        cfg.replace("command = [", "command = [\"sh\", \"-c\", \"exit 3\", ")
            .replace(
                "stop_timeout",
                "backoff = { initial = \"50ms\" }\nstop_timeout",
            ),
    )
    .unwrap();
    d.signal(libc::SIGHUP);
    let st = d.wait_status("the roll to be abandoned", T, |v| {
        v["last_reload"]["ok"] == false && v["programs"][0]["rolling"] == false
    });
    assert!(
        st["last_reload"]["message"]
            .as_str()
            .unwrap()
            .contains("did not become ready"),
        "{}",
        st["last_reload"]
    );
    let now = Drover::worker_pids(&st, "web");
    assert_eq!(now, old, "the old workers keep serving");
    let http = d.logged_addr("socket http listening on ");
    assert!(http_get(&http, "/").unwrap().contains("demo-worker web."));
}

#[test]
fn ttin_and_scale_keep_min_ready_and_stop_stops() {
    let d = start_with_token(&demo_cfg(
        2,
        "control_token_file = \"TOKEN_FILE\"",
        "min_ready = 1",
    ));
    d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let a = d.status_addr();
    let (c, b) = http_req(
        &a,
        "POST",
        "/programs/web/scale",
        b"{\"workers\": 0}",
        Some(TOKEN),
    )
    .unwrap();
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("below min_ready"), "{b}");
    let (c, b) = http_req(&a, "POST", "/programs/web/stop", b"", Some(TOKEN)).unwrap();
    assert_eq!(c, 200, "{b}");
    let st = d.wait_status("no workers", T, |v| {
        v["programs"][0]["workers"].as_array().unwrap().is_empty()
    });
    assert_eq!(st["ready"], false, "below min_ready: not ready");
    assert_eq!(http_get_status(&a, "/readyz").unwrap().0, 503);
}

#[test]
fn drain_delay_turns_readyz_503_while_workers_still_serve() {
    let mut d = Drover::start(&demo_cfg(1, "drain_delay = \"1500ms\"", ""));
    d.wait_status("ready", T, |v| all_ready(v, 1));
    let http = d.logged_addr("socket http listening on ");
    let a = d.status_addr();
    d.signal(libc::SIGTERM);
    wait_until(T, "/readyz 503", || {
        (http_get_status(&a, "/readyz")?.0 == 503).then_some(())
    });
    assert!(
        http_get(&http, "/").is_some(),
        "workers keep serving while draining"
    );
    assert_eq!(d.wait_exit(T), 0);
}

#[test]
fn a_sigstopped_worker_is_detected_and_replaced() {
    let mut d = Drover::start(&demo_cfg(
        2,
        "",
        "[program.web.health]\ninterval = \"200ms\"\nfailures = 3\ntimeout = \"500ms\"",
    ));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let victim = Drover::worker_pids(&st, "web")[1];
    let t0 = std::time::Instant::now();
    unsafe { libc::kill(victim as i32, libc::SIGSTOP) };
    let st = d.wait_status("the stopped worker replaced", T, |v| {
        let pids = Drover::worker_pids(v, "web");
        all_ready(v, 2) && !pids.contains(&victim)
    });
    let took = t0.elapsed();
    let w = st["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["index"] == 1)
        .unwrap()
        .clone();
    assert_eq!(w["last_exit"]["reason"], "health", "{w}");
    assert!(d.logged("hung: stopped"), "{}", d.stderr());
    println!("SIGSTOPped worker replaced after {took:?} (interval 200ms x 3 failures)");
    assert!(!alive(victim));
    d.stop_ok();
}

#[test]
fn http_health_failures_are_attributed_to_the_worker_that_answered() {
    let d = Drover::start(&demo_cfg(
        2,
        "",
        "env = { DEMO_UNHEALTHY_WORKER = \"1\" }\n[program.web.health]\nhttp = \"/healthz\"\ninterval = \"50ms\"\nfailures = 1\nhung = false",
    ));
    let st = d.wait_status("worker 1 recycled for health", T, |v| {
        v["programs"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["index"] == 1 && w["last_exit"]["reason"] == "health")
    });
    let w0 = st["programs"][0]["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["index"] == 0)
        .unwrap()
        .clone();
    assert_eq!(
        w0["restarts"], 0,
        "the healthy worker is never blamed: {w0}"
    );
    assert!(
        d.stderr()
            .contains("failed 1 health check in a row (http /healthz answered \\\"HTTP/1.1 503"),
        "{}",
        d.stderr()
    );
}

#[test]
fn the_status_page_is_self_contained_and_metrics_are_prometheus_text() {
    let d = Drover::start(&demo_cfg(2, "", ""));
    d.wait_status("ready", T, |v| all_ready(v, 2));
    let a = d.status_addr();
    let page = http_get(&a, "/").unwrap();
    let js = http_get(&a, "/page.js").unwrap();
    let css = http_get(&a, "/page.css").unwrap();
    assert!(
        page.contains("<table") && page.contains("<script src=\"page.js\">"),
        "the page loads its script from drover"
    );
    assert!(
        js.contains("fetch(\"status\"") && js.contains("fetch(\"history\""),
        "the page renders /status and /history"
    );
    // the SVG namespace is a name, not a fetch
    let js = js.replace("\"http://www.w3.org/2000/svg\"", "SVG_NS");
    for text in [&page, &js, &css] {
        assert!(
            !text.contains("http://") && !text.contains("https://") && !text.contains("//cdn"),
            "no external assets"
        );
    }
    let m = http_get(&a, "/metrics").unwrap();
    for name in [
        "drover_workers{program=\"web\",state=\"running\"} 2",
        "drover_workers_ready",
        "drover_restarts_total",
        "drover_worker_memory_bytes",
        "drover_spawn_to_ready_seconds_bucket",
        "drover_reloads_total",
    ] {
        assert!(m.contains(name), "{name} missing from\n{m}");
    }
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("drover_"), "{line}");
        let v = line.rsplit(' ').next().unwrap();
        assert!(v.parse::<f64>().is_ok(), "{line}");
    }
}

#[test]
fn a_change_under_a_watched_path_rolls_the_workers() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("app.py"), "v = 1\n").unwrap();
    let mut d = Drover::start(&demo_cfg(
        2,
        "",
        &format!("watch = [\"{}\"]", src.display()),
    ));
    let st = d.wait_status("2 ready", T, |v| all_ready(v, 2));
    let old = Drover::worker_pids(&st, "web");
    std::fs::write(src.join("app.py"), "v = 2\n").unwrap();
    d.wait_status("workers rolled after the change", T, |v| {
        all_ready(v, 2)
            && v["programs"][0]["rolling"] == false
            && Drover::worker_pids(v, "web")
                .iter()
                .all(|p| !old.contains(p))
    });
    let said = format!("{} changed; rolling restart", src.join("app.py").display());
    assert!(d.logged(&said), "the roll names the file: {said}");
    d.stop_ok();
}

#[test]
fn a_unix_socket_status_listener_allows_control_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("drover.sock");
    let cfg = demo_cfg(1, "", "").replace(
        "status = \"127.0.0.1:0\"",
        &format!("status = \"unix:{}\"", sock.display()),
    );
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    wait_until(T, "the control socket", || sock.exists().then_some(()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let url = format!("unix:{}", sock.display());
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(BIN)
            .args(["ctl", "--url", &url])
            .args(args)
            .env_remove("DROVER_TOKEN")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    wait_until(T, "the worker ready", || {
        let out = std::process::Command::new(BIN)
            .args(["status", "--json", "--url", &url])
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["programs"][0]["ready_workers"] == 1 && v["control"] == "unix-socket").then_some(())
    });
    let (code, out) = ctl(&["scale", "web", "2"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("web: 1 -> 2 workers"), "{out}");
    let (code, out) = ctl(&["scale", "nope", "2"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("404") && out.contains("no program named `nope`"),
        "{out}"
    );
    d.stop_ok();
}

#[test]
fn ctrl_c_once_is_graceful_twice_is_fast() {
    // the worker ignores its stop signal: a graceful stop would wait the whole 60 s stop_timeout
    let mut d = Drover::start(&one_program("command = \"trap '' TERM; echo $$ > {dir}/w; while true; do sleep 0.05; done\"\nstop_timeout = \"60s\""));
    let pid = wait_until(T, "worker pid", || read_pids(&d.path("w")).first().copied());
    d.wait_status("running", T, |v| {
        v["programs"][0]["workers"][0]["state"] == "running"
    });
    d.signal(libc::SIGINT);
    d.wait_status("stopping", T, |v| v["state"] == "stopping");
    assert!(alive(pid), "the first Ctrl-C only asks");
    d.signal(libc::SIGINT);
    assert_eq!(
        d.wait_exit(Duration::from_secs(20)),
        0,
        "the second Ctrl-C kills at once"
    );
    assert!(!alive(pid));
    assert!(d.logged("INT received again: fast shutdown"));
}

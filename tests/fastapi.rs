//! The reference workload: a real FastAPI app under `uvicorn main:app --fd 3`, 2 workers on
//! drover's shared socket. Needs a Python with fastapi and uvicorn: `tests/run.sh` makes one in
//! .venv and points DROVER_TEST_PYTHON at it.

mod common;
use common::*;
use std::collections::BTreeSet;
use std::time::Duration;

#[test]
fn fastapi_under_uvicorn_fd_3_answers_from_both_workers() {
    let Some(py) = fastapi_python() else {
        skip("no Python with fastapi and uvicorn (run tests/run.sh, or set DROVER_TEST_PYTHON)");
        return;
    };
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi");
    let mut d = Drover::start(&format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
[socket.http]
listen = "127.0.0.1:0"
[program.api]
command = ["{py}", "-m", "uvicorn", "main:app", "--fd", "3", "--no-access-log"]
sockets = ["http"]
workers = 2
cwd = "{app}"
stop_timeout = "10s"
"#
    ));
    let http = d.logged_addr("socket http listening on ");
    let st = d.wait_status("2 workers", Duration::from_secs(30), |v| {
        Drover::worker_pids(v, "api").len() == 2
    });
    let want: BTreeSet<i64> = Drover::worker_pids(&st, "api").into_iter().collect();
    let mut seen = BTreeSet::new();
    wait_until(
        Duration::from_secs(60),
        "answers from both uvicorn workers",
        || {
            // bursts of concurrent connections so both workers' accept loops take some
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    let a = http.clone();
                    std::thread::spawn(move || http_get(&a, "/slow?seconds=0.05"))
                })
                .collect();
            for h in handles {
                if let Some(body) = h.join().unwrap() {
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    seen.insert(v["pid"].as_i64().unwrap());
                }
            }
            (seen == want).then_some(())
        },
    );
    let body = http_get(&http, "/").unwrap();
    assert!(body.contains("\"hello\":\"world\""), "{body}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), 0, "{}", d.stderr());
}

/// uvicorn calls `listen()` again on the socket it is given, with its own `--backlog` (2048):
/// drover passes the socket's `backlog` instead, so the kernel's queue is the one configured.
#[test]
fn uvicorn_listens_with_the_sockets_backlog() {
    let Some(py) = fastapi_python() else {
        skip("no Python with fastapi and uvicorn (run tests/run.sh, or set DROVER_TEST_PYTHON)");
        return;
    };
    let cfg = fastapi_cfg(&py, 1, "").replace("backlog = 2048", "backlog = 100");
    let mut d = Drover::start(&cfg);
    let v = d.wait_status("the worker ready", Duration::from_secs(60), |v| {
        all_ready(v, 1)
    });
    // ready means uvicorn waits on the socket, so it has called listen() by now; /status reads
    // the queue's limit from the socket when it is served
    println!(
        "queue_max after uvicorn started: {}",
        v["sockets"][0]["queue_max"]
    );
    assert_eq!(v["sockets"][0]["queue_max"], 100, "{}", d.stderr());
    assert!(d.logged("uvicorn gets `--backlog 100`"), "{}", d.stderr());
    d.stop_ok();
}

//! config/dev.toml, the local stack the README points to, runs as shipped: the queue (the
//! database-like program), then the migration, then the API and the queue worker; a job given to
//! the queue is done by the worker into the migrated database; Ctrl-C's TERM stops the worker and
//! the API before the queue. Only what cannot be the same on a test machine is changed: the
//! three ports (free ones), `${PWD}/.venv` (the test's venv), the config-relative paths (made
//! absolute, since the copy lives in a temp dir) and the database file (in the temp dir).

mod common;
use common::*;

use std::net::TcpListener;
use std::process::Command;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_shipped_dev_stack_starts_in_order_does_a_job_and_stops_dependents_first() {
    let Some(py) = fastapi_python() else {
        return skip("no Python with fastapi and uvicorn (tests/run.sh makes .venv)");
    };
    let bin = std::path::Path::new(&py)
        .parent()
        .unwrap()
        .display()
        .to_string();
    let root = env!("CARGO_MANIFEST_DIR");
    let shipped = std::fs::read_to_string(format!("{root}/config/dev.toml")).unwrap();
    let (http, queue) = (free_port(), free_port());
    let cfg = shipped
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{http}"))
        .replace("127.0.0.1:6390", &format!("127.0.0.1:{queue}"))
        .replace("\"6390\"", &format!("\"{queue}\""))
        .replace("127.0.0.1:9900", "127.0.0.1:0")
        .replace("${PWD}/.venv/bin", &bin)
        .replace(
            "\"../examples/fastapi\"",
            &format!("\"{root}/examples/fastapi\""),
        )
        .replace("\"-../.env\"", &format!("\"-{root}/.env\""))
        .replace("\"var/app.db\"", "\"{dir}/app.db\"");
    for (what, from) in [
        ("http port", "127.0.0.1:8000"),
        ("queue port", "127.0.0.1:6390"),
        ("queue port", "\"6390\""),
        ("venv", "${PWD}"),
        ("cwd", "\"../examples"),
        ("database", "var/app.db"),
    ] {
        assert!(
            !cfg.contains(from),
            "config/dev.toml changed: the test no longer replaces its {what} ({from})"
        );
    }
    let mut d = Drover::start(&cfg);
    d.wait_status("every program of the stack up", T, |v| {
        let ready = |name: &str| {
            v["programs"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .is_some_and(|p| {
                    let ws = p["workers"].as_array().unwrap();
                    !ws.is_empty() && ws.iter().all(|w| w["ready"] == true)
                })
        };
        ready("queue") && ready("api") && ready("worker")
    });
    // the order it started in, from drover's own account of each start (its log is text here:
    // the file says log_format = "text")
    let log = d.stderr();
    let started = |who: &str| {
        log.find(&format!("worker {who} started"))
            .unwrap_or_else(|| panic!("no start of {who} in\n{log}"))
    };
    let (q, m) = (started("queue.0"), started("migrate.0"));
    let migrated = log
        .find("worker migrate.0 (pid ")
        .filter(|&i| {
            log[i..]
                .lines()
                .next()
                .unwrap()
                .contains("exited with exit code 0")
        })
        .unwrap_or_else(|| panic!("the migration did not exit 0:\n{log}"));
    assert!(q < m && migrated < started("api.0") && migrated < started("worker.0"));

    let body = http_get(&format!("127.0.0.1:{http}"), "/").expect("GET / of the API");
    assert!(body.contains("\"hello\":\"world\""), "{body}");

    let put = Command::new(&py)
        .args([
            "examples/fastapi/jobqueue.py",
            "put",
            "job-42",
            &queue.to_string(),
        ])
        .current_dir(root)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout).trim(), "OK", "{put:?}");
    wait_until(T, "the worker to do job-42", || {
        d.stdout().contains("worker: did job-42").then_some(())
    });
    let rows = Command::new(&py)
        .args([
            "-c",
            "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select job from done').fetchall())",
        ])
        .arg(d.path("app.db"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rows.stdout).contains("job-42"),
        "{rows:?}"
    );

    d.stop_ok();
    // the programs' own words on the way out: the worker and the API go before the queue
    let out = d.stdout();
    let at = |what: &str| {
        out.find(what)
            .unwrap_or_else(|| panic!("no {what:?} in\n{out}"))
    };
    let queue_stop = at("queue: stopped");
    assert!(at("worker: stopped") < queue_stop, "{out}");
    assert!(at("Finished server process") < queue_stop, "{out}");
}

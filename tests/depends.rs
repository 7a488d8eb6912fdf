//! Programs that work together (issue 20): `depends_on` gated on readiness or success, ordered
//! shutdown, essential programs. Real processes: each writes what happened to it, with a
//! timestamp, from its own shell (and its own TERM handler), so the order is observed from the
//! processes, not from drover's log.

mod common;
use common::*;
use std::process::Command;
use std::time::Instant;

/// A shell command for a worker: `body` runs in `sh -c`, `{dir}` is the test's directory.
fn sh(body: &str) -> String {
    format!("[\"sh\", \"-c\", {}]", toml_str(body))
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The seconds-since-epoch timestamp a process wrote with `date +%s.%N` into `file`.
fn stamp(d: &Drover, file: &str) -> Option<f64> {
    std::fs::read_to_string(d.path(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn program<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no program {name} in {v}"))
}

fn cli(d: &Drover, args: &[&str]) -> String {
    let url = format!("http://{}", d.status_addr());
    let o = Command::new(BIN)
        .args(args)
        .args(["--url", &url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `api` depends on `db` being ready: while db is not, no api process exists and /status,
/// `drover status` and `drover top` say what api waits for; the moment db is ready, api starts.
#[test]
fn no_api_worker_exists_until_db_is_ready_then_it_starts_at_once() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.db]
command = {db}
readiness = {{ check = "exec", exec = ["test", "-e", "{{dir}}/db-ready"], interval = "50ms" }}
[program.api]
command = {api}
depends_on = {{ db = "ready" }}
"#,
        db = sh("sleep 2; date +%s.%N > {dir}/db-ready; exec sleep 1000"),
        api = sh("date +%s.%N > {dir}/api-started; exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    // while db is not ready: no api process, and everything says what api waits for
    let v = d.wait_status("db running, api waiting", T, |v| {
        !Drover::worker_pids(v, "db").is_empty()
            && program(v, "api")["waiting_for"] == "db: ready 0/1"
    });
    assert!(
        program(&v, "api")["workers"].as_array().unwrap().is_empty(),
        "{v}"
    );
    let status = cli(&d, &["status"]);
    let top = cli(&d, &["top"]);
    let readyz = http_get_status(&d.status_addr(), "/readyz").expect("GET /readyz");
    let checked_at = Instant::now();
    assert!(
        stamp(&d, "db-ready").is_none(),
        "the test's premise: db took 2 s to be ready, and it already is"
    );
    assert!(
        status.contains("waiting for db: ready 0/1") && top.contains("waiting for db: ready 0/1"),
        "drover status:\n{status}\ndrover top:\n{top}"
    );
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(
        readyz
            .1
            .contains("api: 0 of min_ready 1 workers ready: waiting for db: ready 0/1"),
        "{readyz:?}"
    );
    let mut polls = 0;
    let ready_at = wait_until(T, "db to be ready", || {
        polls += 1;
        if stamp(&d, "db-ready").is_none() {
            // nothing of api exists before db is ready, whatever the moment we look
            assert!(
                stamp(&d, "api-started").is_none(),
                "api started before db was ready"
            );
        }
        stamp(&d, "db-ready")
    });
    let api_at = wait_until(T, "api to start", || stamp(&d, "api-started"));
    let gap = api_at - ready_at;
    println!(
        "db ready at {ready_at:.3}, api started {:.0} ms later (readiness checked every 50 ms; {polls} polls over {:.1?} before)",
        gap * 1000.0,
        checked_at.elapsed()
    );
    assert!(gap >= 0.0, "api started {gap:.3} s before db was ready");
    assert!(
        gap < 5.0,
        "api started {gap:.1} s after db was ready: not at once"
    );
    let v = d.wait_status("api running", T, |v| {
        program(v, "api")["waiting_for"].is_null() && Drover::worker_pids(v, "api").len() == 1
    });
    assert!(program(&v, "api")["will_not_start"].is_null());
    assert!(d.logged("program api waits for db: ready 0/1 before it starts"));
    d.stop_ok();
}

/// `healthy` waits past readiness for a health check to pass: db is ready at once, and api
/// starts only once db's exec health check has passed.
#[test]
fn healthy_waits_for_a_passing_health_check() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.db]
command = {db}
readiness = {{ check = "uptime", min_uptime = "100ms" }}
health = {{ exec = ["test", "-e", "{{dir}}/db-healthy"], interval = "100ms", failures = 1000 }}
[program.api]
command = {api}
depends_on = {{ db = "healthy" }}
"#,
        db = sh("exec sleep 1000"),
        api = sh("date +%s.%N > {dir}/api-started; exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    d.wait_status("db ready, api waiting for its health", T, |v| {
        program(v, "db")["ready_workers"] == 1
            && program(v, "api")["waiting_for"] == "db: healthy (ready, no health check passed yet)"
    });
    // its checks fail meanwhile (the file is missing): api still waits
    wait_until(T, "a failed health check of db", || {
        d.logged("worker db.0")
            .then_some(())
            .filter(|_| d.logged("failed a health check"))
    });
    assert!(stamp(&d, "api-started").is_none());
    std::fs::write(d.path("db-healthy"), "").unwrap();
    let healthy = Instant::now();
    wait_until(T, "api to start", || stamp(&d, "api-started"));
    println!(
        "api started {:?} after db's health check could pass (checked every 100 ms)",
        healthy.elapsed()
    );
    d.stop_ok();
}

/// A one-shot migration that must succeed gates the API: the API starts after it exited 0.
#[test]
fn a_succeeded_migration_gates_the_api() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.migrate]
command = {migrate}
restart = "never"
[program.api]
command = {api}
depends_on = {{ migrate = "succeeded" }}
"#,
        migrate = sh("sleep 1.5; date +%s.%N > {dir}/migrated"),
        api = sh("date +%s.%N > {dir}/api-started; exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    d.wait_status("api waiting for the migration", T, |v| {
        program(v, "api")["waiting_for"] == "migrate: succeeded"
    });
    let migrated = wait_until(T, "the migration to finish", || stamp(&d, "migrated"));
    let api = wait_until(T, "api to start", || stamp(&d, "api-started"));
    println!(
        "migration exited 0 at {migrated:.3}; api started {:.0} ms later",
        (api - migrated) * 1000.0
    );
    assert!(api >= migrated, "api started before the migration ended");
    d.wait_status("api running, migrate done", T, |v| {
        Drover::worker_pids(v, "api").len() == 1
            && program(v, "migrate")["workers"][0]["state"] == "stopped"
    });
    d.stop_ok();
}

/// A migration that fails keeps the API from ever starting, says why in one line, and drover
/// follows on_all_exited as for a failure: it exits with the migration's code (default), or
/// stays up showing why the API will not start (`on_all_exited = "stay"`).
#[test]
fn a_failing_migration_keeps_the_api_from_starting_and_says_why() {
    let cfg = |sup: &str| {
        format!(
            r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
{sup}
[program.migrate]
command = {migrate}
restart = "never"
[program.api]
command = {api}
depends_on = {{ migrate = "succeeded" }}
"#,
            migrate = sh("sleep 0.5; echo 'relation users already exists' >&2; exit 4"),
            api = sh("date +%s.%N > {dir}/api-started; exec sleep 1000"),
        )
    };
    let mut d = Drover::start(&cfg(""));
    let code = d.wait_exit(T);
    let log = d.stderr();
    assert_eq!(code, 4, "drover exits with the migration's code\n{log}");
    assert!(stamp(&d, "api-started").is_none(), "api ran\n{log}");
    assert!(
        d.logged("program api will not start: its dependency migrate failed (exit code 4) and will not run again (depends_on migrate = \"succeeded\")"),
        "{log}"
    );
    assert!(d.logged("api never started"), "{log}");

    // on_all_exited = "stay": drover stays up, and /status and `drover status` say why
    let mut d = Drover::start(&cfg("on_all_exited = \"stay\""));
    let v = d.wait_status("api will not start", T, |v| {
        !program(v, "api")["will_not_start"].is_null()
    });
    assert_eq!(
        program(&v, "api")["will_not_start"],
        "its dependency migrate failed (exit code 4) and will not run again (depends_on migrate = \"succeeded\")"
    );
    let status = cli(&d, &["status"]);
    assert!(
        status.contains("blocked") && status.contains("will not start: its dependency migrate"),
        "{status}"
    );
    assert!(stamp(&d, "api-started").is_none());
    d.stop_ok();
}

/// A dependency crash-looping (an app that never became ready) ends drover with its own code,
/// as before, and the log names the programs that will not start because of it.
#[test]
fn a_crash_looping_dependency_names_the_dependents_that_will_not_start() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
exhausted_after = 2
[program.db]
command = {db}
backoff = {{ initial = "10ms", max = "20ms" }}
[program.api]
command = {api}
depends_on = {{ db = "ready" }}
"#,
        db = sh("exit 5"),
        api = sh("date +%s.%N > {dir}/api-started; exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    let code = d.wait_exit(T);
    let log = d.stderr();
    assert_eq!(code, 5, "{log}");
    assert!(d.logged("api will not start (depends_on db)"), "{log}");
    assert!(stamp(&d, "api-started").is_none(), "{log}");
}

/// One line of the order file: (who, what, when).
fn events(d: &Drover) -> Vec<(String, String, f64)> {
    std::fs::read_to_string(d.path("order"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w[0].to_string(), w[1].to_string(), w[2].parse().unwrap())
        })
        .collect()
}

fn at(ev: &[(String, String, f64)], who: &str, what: &str) -> f64 {
    ev.iter()
        .find(|(w, x, _)| w == who && x == what)
        .unwrap_or_else(|| panic!("no `{who} {what}` in {ev:?}"))
        .2
}

/// A worker that, on TERM, writes `NAME term TIME`, takes `delay` to finish, writes
/// `NAME exit TIME` and exits 0.
fn trapping(name: &str, delay: &str) -> String {
    sh(&format!(
        "trap 'echo \"{name} term $(date +%s.%N)\" >> {{dir}}/order; sleep {delay}; echo \"{name} exit $(date +%s.%N)\" >> {{dir}}/order; exit 0' TERM; echo \"{name} up $(date +%s.%N)\" >> {{dir}}/order; while :; do sleep 0.05; done"
    ))
}

/// Shutdown stops the dependent first (its TERM, its drain), its dependency only once the
/// dependent has exited; an unrelated program gets its TERM at once, in parallel.
#[test]
fn shutdown_stops_the_dependent_before_its_dependency() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "20s"
[program.db]
command = {db}
readiness = {{ check = "uptime", min_uptime = "200ms" }}
[program.api]
command = {api}
depends_on = {{ db = "ready" }}
readiness = {{ check = "uptime", min_uptime = "200ms" }}
[program.cron]
command = {cron}
"#,
        db = trapping("db", "0.3"),
        api = trapping("api", "1"),
        cron = trapping("cron", "0.3"),
    );
    let mut d = Drover::start(&cfg);
    d.wait_status("all three ready", T, |v| {
        ["db", "api", "cron"]
            .iter()
            .all(|n| program(v, n)["ready_workers"] == 1)
    });
    wait_until(T, "the three processes' own lines", || {
        (events(&d).len() >= 3).then_some(())
    });
    d.stop_ok();
    let ev = events(&d);
    println!("{ev:?}");
    let (api_term, api_exit) = (at(&ev, "api", "term"), at(&ev, "api", "exit"));
    let (db_term, cron_term) = (at(&ev, "db", "term"), at(&ev, "cron", "term"));
    assert!(
        api_exit <= db_term,
        "db got TERM {:.3} s before api had exited: {ev:?}",
        api_exit - db_term
    );
    assert!(
        cron_term < api_exit,
        "the unrelated cron waited for api: {ev:?}"
    );
    println!(
        "api TERM -> exit {:.0} ms; db TERM {:.0} ms after api's exit; cron TERM {:.0} ms after api's",
        (api_exit - api_term) * 1000.0,
        (db_term - api_exit) * 1000.0,
        (cron_term - api_term) * 1000.0
    );
    assert!(at(&ev, "db", "exit") >= db_term);
    assert!(d.logged("shutdown: program db is stopped once api has stopped"));
}

/// An essential program that ends ends drover, with its exit code (128 + N for a signal), after
/// the others were stopped gracefully.
#[test]
fn an_essential_programs_exit_ends_drover_with_its_code_and_stops_the_others() {
    let cfg = |sidecar: &str| {
        format!(
            r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.sidecar]
command = {sidecar}
restart = "never"
essential = true
[program.api]
command = {api}
"#,
            sidecar = sh(sidecar),
            api = trapping("api", "0.2"),
        )
    };
    let mut d = Drover::start(&cfg("sleep 1; exit 7"));
    let code = d.wait_exit(T);
    let log = d.stderr();
    assert_eq!(code, 7, "{log}");
    let ev = events(&d);
    assert!(
        at(&ev, "api", "exit") >= at(&ev, "api", "term"),
        "api stopped through its TERM handler: {ev:?}"
    );
    assert!(
        d.logged("program sidecar is essential and has ended (exit code 7"),
        "{log}"
    );

    let mut d = Drover::start(&cfg("sleep 1; kill -KILL $$"));
    let code = d.wait_exit(T);
    assert_eq!(code, 128 + 9, "{}", d.stderr());
    at(&events(&d), "api", "term");

    // crash-looping under on_exhausted = "exit" after it had been ready: its own code, where
    // any other program's crash loop exits 1
    let looping = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
on_exhausted = "exit"
exhausted_after = 2
[program.sidecar]
command = {sidecar}
essential = true
backoff = {{ initial = "10ms", max = "20ms" }}
readiness = {{ check = "uptime", min_uptime = "300ms" }}
[program.api]
command = {api}
"#,
        sidecar = sh("if [ -e {dir}/ran ]; then exit 6; fi; touch {dir}/ran; sleep 1; exit 6"),
        api = trapping("api", "0.2"),
    );
    let mut d = Drover::start(&looping);
    let code = d.wait_exit(T);
    let log = d.stderr();
    assert_eq!(code, 6, "{log}");
    assert!(d.logged("(its own: it is essential)"), "{log}");
    at(&events(&d), "api", "term");
}

/// A reload that adds a program with depends_on applies the gate to it: it waits for what it
/// names, then starts.
#[test]
fn a_program_added_by_reload_waits_for_its_dependencies() {
    let base = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.db]
command = {db}
readiness = {{ check = "exec", exec = ["test", "-e", "{{dir}}/db-ready"], interval = "50ms" }}
"#,
        db = sh("exec sleep 1000"),
    );
    let mut d = Drover::start(&base);
    d.wait_status("db running", T, |v| Drover::worker_pids(v, "db").len() == 1);
    let added = format!(
        "{}[program.api]\ncommand = {}\ndepends_on = {{ db = \"ready\" }}\n",
        base.replace("{dir}", d.dir.path().to_str().unwrap()),
        sh(&format!(
            "date +%s.%N > {}/api-started; exec sleep 1000",
            d.dir.path().display()
        ))
    );
    std::fs::write(d.path("drover.toml"), added).unwrap();
    d.signal(libc::SIGHUP);
    let v = d.wait_status("api added, waiting", T, |v| {
        v["programs"].as_array().unwrap().len() == 2
            && program(v, "api")["waiting_for"] == "db: ready 0/1"
    });
    assert!(program(&v, "api")["workers"].as_array().unwrap().is_empty());
    assert!(stamp(&d, "api-started").is_none());
    std::fs::write(d.path("db-ready"), "").unwrap();
    let made_ready = Instant::now();
    d.wait_status("api started", T, |v| {
        Drover::worker_pids(v, "api").len() == 1
    });
    println!(
        "api started {:?} after db's ready file appeared",
        made_ready.elapsed()
    );
    wait_until(T, "api's own line", || stamp(&d, "api-started"));
    d.stop_ok();
}

/// `drover check` prints the start order it will use; a bad graph is a positioned error.
#[test]
fn check_prints_the_start_order_and_positions_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[program.api]\ncommand = \"sleep 1\"\ndepends_on = { db = \"ready\", migrate = \"succeeded\" }\n[program.migrate]\ncommand = \"true\"\nrestart = \"never\"\ndepends_on = { db = \"ready\" }\n[program.db]\ncommand = \"sleep 1\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&good)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{plan}");
    let order: Vec<&str> = plan
        .lines()
        .skip_while(|l| !l.starts_with("start order"))
        .skip(1)
        .take(3)
        .map(str::trim)
        .collect();
    assert_eq!(
        order,
        vec![
            "1. db",
            "2. migrate        after db is ready",
            "3. api            after db is ready, migrate has succeeded (exited 0)"
        ],
        "{plan}"
    );
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[program.api]\ncommand = \"x\"\ndepends_on = { db = \"ready\" }\n[program.db]\ncommand = \"y\"\ndepends_on = { api = \"started\" }\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.toml:3:16: program.api.depends_on: a dependency cycle: api -> db -> api"),
        "{err}"
    );
    assert!(err.contains("nothing was started"), "{err}");
}

/// A token file for the control API (0600), in a directory kept as long as `d`.
fn with_token(cfg: &str) -> (Drover, String) {
    use std::os::unix::fs::PermissionsExt;
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("token");
    let tok = "a-token-long-enough-for-drover-0123456789";
    std::fs::write(&file, tok).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cfg = cfg.replace("{token}", file.to_str().unwrap());
    let mut d = Drover::start(&cfg);
    d.keep.push(keep);
    (d, tok.to_string())
}

fn lines(d: &Drover, file: &str) -> Vec<String> {
    std::fs::read_to_string(d.path(file))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// A failed migration blocks the API (and `ctl restart api` says why it cannot); once the
/// migration is fixed, `ctl restart migrate` runs the finished job again, and the API starts.
/// Before, the restart of a finished job was counted as done and nothing ran.
#[test]
fn a_fixed_migration_restarted_runs_again_and_the_api_starts() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
on_all_exited = "stay"
control_token_file = "{{token}}"
[program.migrate]
command = {migrate}
restart = "never"
[program.api]
command = {api}
depends_on = {{ migrate = "succeeded" }}
"#,
        migrate =
            sh("echo run >> {dir}/migrate-runs; exit $(cat {dir}/code 2>/dev/null || echo 4)"),
        api = sh("exec sleep 1000"),
    );
    let (d, tok) = with_token(&cfg);
    let addr = d.status_addr();
    d.wait_status("api will not start", T, |v| {
        !program(v, "api")["will_not_start"].is_null()
    });
    let (code, body) =
        http_req(&addr, "POST", "/programs/api/restart", b"", Some(&tok)).expect("POST");
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("api will not start: its dependency migrate failed"),
        "{body}"
    );
    std::fs::write(d.path("code"), "0").unwrap();
    let (code, body) =
        http_req(&addr, "POST", "/programs/migrate/restart", b"", Some(&tok)).expect("POST");
    assert_eq!(code, 200, "{body}");
    let v = d.wait_status("api to start after the migration ran again", T, |v| {
        Drover::worker_pids(v, "api").len() == 1
    });
    assert!(program(&v, "api")["will_not_start"].is_null(), "{v}");
    assert_eq!(lines(&d, "migrate-runs"), ["run", "run"]);
    let mut d = d;
    d.stop_ok();
}

/// A reload while a migration (`restart = "on-failure"`, a `succeeded` dependency) runs does
/// not start a second one beside it, nor stop the first: a job is rolled only when its settings
/// changed. Before, the reload started a second run and then sent the first TERM.
#[test]
fn a_reload_never_doubles_a_running_migration() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.migrate]
command = {migrate}
restart = "on-failure"
[program.api]
command = {api}
depends_on = {{ migrate = "succeeded" }}
"#,
        migrate = sh(
            "echo start >> {dir}/runs; trap 'echo term >> {dir}/runs; exit 0' TERM; sleep 2 & wait; echo done >> {dir}/runs"
        ),
        api = sh("exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    wait_until(T, "the migration to start", || {
        (!lines(&d, "runs").is_empty()).then_some(())
    });
    d.signal(libc::SIGHUP);
    wait_until(T, "the reload", || d.logged("reload").then_some(()));
    d.wait_status("api to start", T, |v| {
        Drover::worker_pids(v, "api").len() == 1
    });
    assert_eq!(lines(&d, "runs"), ["start", "done"], "{}", d.stderr());
    d.stop_ok();
}

/// A `ready` dependency that was ready and then ended (a seeding job) has met its condition: the
/// API starts once its other dependency is ready too. Before, it was "ended before it was
/// ready" and the API never started.
#[test]
fn a_dependency_that_was_ready_and_then_ended_has_met_ready() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.seed]
command = {seed}
restart = "never"
readiness = {{ check = "uptime", min_uptime = "100ms" }}
[program.slow]
command = {slow}
readiness = {{ check = "exec", exec = ["test", "-e", "{{dir}}/slow-ready"], interval = "100ms" }}
[program.api]
command = {api}
depends_on = {{ seed = "ready", slow = "ready" }}
"#,
        seed = sh("sleep 1; exit 0"),
        slow = sh("exec sleep 1000"),
        api = sh("exec sleep 1000"),
    );
    let mut d = Drover::start(&cfg);
    d.wait_status("seed to have ended", T, |v| {
        program(v, "seed")["workers"][0]["state"] == "stopped"
    });
    std::fs::write(d.path("slow-ready"), "").unwrap();
    let v = d.wait_status("api to start", T, |v| {
        Drover::worker_pids(v, "api").len() == 1 || !program(v, "api")["will_not_start"].is_null()
    });
    assert!(
        program(&v, "api")["will_not_start"].is_null(),
        "{}",
        program(&v, "api")
    );
    d.stop_ok();
}

/// A watched file that changes while its program waits for its dependencies rolls nothing (a
/// preloaded program would have imported the app before its dependencies held).
#[test]
fn a_watched_change_while_waiting_rolls_nothing() {
    let cfg = format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
[program.db]
command = {db}
readiness = {{ check = "exec", exec = ["false"], interval = "200ms" }}
[program.api]
command = {api}
watch = ["{{dir}}/src"]
depends_on = {{ db = "ready" }}
"#,
        db = sh("exec sleep 1000"),
        api = sh("exec sleep 1000"),
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg.replace("{dir}/src", dir.path().to_str().unwrap());
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    d.wait_status("api waiting", T, |v| {
        program(v, "api")["waiting_for"] == "db: ready 0/1"
    });
    std::fs::write(d.keep[0].path().join("app.py"), "x = 1\n").unwrap();
    // the change is debounced, then looked at: before, it rolled the waiting program
    wait_until(T, "the change to be looked at", || {
        d.logged("it has not started yet (depends_on): nothing to roll")
            .then_some(())
    });
    let log = d.stderr();
    assert!(!d.logged("rolling restart"), "{log}");
    let v = d.status();
    assert!(Drover::worker_pids(&v, "api").is_empty(), "{v}");
    assert!(program(&v, "api")["roll"].is_null(), "{v}");
    d.stop_ok();
}

//! Replicated workers: restarts, backoff, crash loops, stop escalation, cleanup, signals, output.

mod common;
use common::*;
use std::time::Duration;

fn demo(workers: u32, extra: &str) -> String {
    demo_web(&workers.to_string(), extra, "")
}

#[test]
fn kill_9_gets_a_replacement_and_the_socket_keeps_serving() {
    let mut d = Drover::start(&demo(2, ""));
    let http = d.logged_addr("socket http listening on ");
    let st = d.wait_status("2 running workers", T, |v| {
        v["programs"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == "running")
            .count()
            == 2
    });
    let old = st["programs"][0]["workers"][0]["pid"].as_i64().unwrap();
    // SAFETY: killing a worker we just read from the status endpoint.
    unsafe { libc::kill(old as i32, libc::SIGKILL) };
    let st = d.wait_status("a replacement in slot 0", T, |v| {
        let w = &v["programs"][0]["workers"][0];
        w["pid"].as_i64().is_some_and(|p| p != old) && w["restarts"] == 1
    });
    let w = &st["programs"][0]["workers"][0];
    assert_eq!(w["last_exit"]["signal"], "KILL");
    let body = wait_until(T, "the socket to serve", || http_get(&http, "/"));
    assert!(
        body.starts_with("hello from drover demo-worker web."),
        "{body}"
    );
    // `drover status` renders the same as a table
    let out = std::process::Command::new(BIN)
        .args(["status", "--url", &format!("http://{}", d.status_addr())])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let new = w["pid"].as_i64().unwrap().to_string();
    assert!(table.contains(&new) && table.contains("SIGKILL"), "{table}");
    d.stop_ok();
}

/// `one_program`, with `on_exhausted = "stay"`: a program that never starts keeps drover up.
fn staying(program: &str) -> String {
    one_program(program).replace("[supervisor]\n", "[supervisor]\non_exhausted = \"stay\"\n")
}

#[test]
fn a_crash_loop_backs_off_instead_of_spinning() {
    // never ready: without on_exhausted = "stay" drover would exit (a failed deployment)
    let d = Drover::start(&staying(
        "command = \"echo x >> {dir}/spawns; exit 1\"\nbackoff = { initial = \"100ms\", max = \"1s\", reset_after = \"10s\" }",
    ));
    // the delays drover chose, from its log: wait for six quick failures in a row
    let delays = wait_until(T, "six restarts after quick failures", || {
        let ms: Vec<f64> = d
            .messages()
            .iter()
            .filter_map(|m| m.split("; restarting in ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next().map(ms))
            .collect();
        (ms.len() >= 6).then_some(ms)
    });
    // 100, 200, 400, 800, 1000, 1000 ms, each ±25 %: doubling to the cap, never a busy loop
    for (i, d) in delays.iter().take(6).enumerate() {
        let base = (100.0 * 2f64.powi(i as i32)).min(1000.0);
        assert!(
            *d >= base * 0.75 - 1.0 && *d <= (base * 1.25).min(1000.0) + 1.0,
            "delay {i}: {d} ms (of {delays:?})"
        );
    }
    // every spawn was an exit drover logged, plus the one running or waiting now
    let spawns = std::fs::read_to_string(d.path("spawns"))
        .unwrap_or_default()
        .lines()
        .count();
    let exits = d
        .messages()
        .iter()
        .filter(|m| m.contains("exited with exit code 1"))
        .count();
    assert!(spawns <= exits + 1, "{spawns} spawns for {exits} exits");
    let st = d.status();
    let w = &st["programs"][0]["workers"][0];
    assert_eq!(w["last_exit"]["code"], 1);
    assert!(w["restarts"].as_u64().unwrap() >= 5);
}

/// `1.6s`, `400.0ms`, `812µs` (Rust's Debug of a Duration) in milliseconds.
fn ms(s: &str) -> f64 {
    let s = s.trim_end_matches([')', ',', ';']);
    let (num, unit) = s.split_at(
        s.find(|c: char| c.is_alphabetic() || c == '\u{b5}')
            .unwrap_or(s.len()),
    );
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "s" => n * 1000.0,
        "ms" => n,
        "µs" | "us" => n / 1000.0,
        _ => f64::NAN,
    }
}

/// Workers that serve once (ready after 200 ms up, gone after 1.5 s), then exit 7 at once every
/// time: a program that did start, then broke.
const SERVED_ONCE: &str = "command = \"if [ -e {dir}/served ]; then exit 7; fi; touch {dir}/served; sleep 1.5; exit 7\"\nworkers = 2\nreadiness = { check = \"uptime\", min_uptime = \"200ms\" }\nbackoff = { initial = \"10ms\", max = \"50ms\" }\n";

#[test]
fn on_exhausted_exit_stops_drover_with_code_1() {
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"exit\"\nexhausted_after = 3\n[program.bad]\n{SERVED_ONCE}"
    ));
    assert_eq!(d.wait_exit(T), 1, "{}", d.stderr());
    let err = d.stderr();
    assert!(
        err.contains("program bad: all 2 workers are crash-looping"),
        "{err}"
    );
    assert!(err.contains("exit code 7"), "{err}");
    assert!(err.contains("on_exhausted = \\\"exit\\\""), "{err}");
}

#[test]
fn a_program_that_served_and_then_crash_loops_keeps_drover_up_by_default() {
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nexhausted_after = 3\n[program.bad]\n{SERVED_ONCE}"
    ));
    let st = d.wait_status("the crash loop to be reported", T, |v| {
        v["programs"][0]["crash_looping"] == true
    });
    assert_eq!(st["state"], "running", "not PID 1, it had served: stay");
    d.stop_ok();
}

#[test]
fn an_app_that_never_started_exits_with_its_code_without_on_exhausted() {
    // the one-line mode users start with: several workers, restarted when they crash
    let mut d = Drover::start_args(
        &[
            "run",
            "--workers",
            "3",
            "--status",
            "off",
            "--",
            "sh",
            "-c",
            "echo 'Error loading ASGI app. Attribute \"ap\" not found in module \"app\".' >&2; exit 3",
        ],
        &[],
        &[],
    );
    assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
    assert!(
        d.logged("none of its workers has ever been ready: the app cannot start, a deployment error; shutting down with exit code 3"),
        "{}",
        d.stderr()
    );
    // with a file and on_exhausted = "exit" too: the app's own code, not 1
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"exit\"\nexhausted_after = 3\n[program.bad]\ncommand = \"exit 7\"\nworkers = 2\nbackoff = { initial = \"10ms\", max = \"50ms\" }\n",
    );
    assert_eq!(d.wait_exit(T), 7, "{}", d.stderr());
}

#[test]
fn on_exhausted_stay_keeps_running_degraded() {
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"stay\"\nexhausted_after = 2\n[program.bad]\ncommand = \"exit 7\"\nbackoff = { initial = \"10ms\", max = \"50ms\" }\n",
    );
    let st = d.wait_status("the crash loop to be reported", T, |v| {
        v["programs"][0]["crash_looping"] == true
    });
    assert_eq!(st["state"], "running");
    d.stop_ok();
}

#[test]
fn a_term_ignoring_worker_and_its_grandchild_are_killed_after_stop_timeout() {
    let mut d = Drover::start(&one_program(
        "command = \"trap '' TERM; sleep 1000 & echo $! > {dir}/gc; echo $$ > {dir}/w; wait\"\nstop_timeout = \"500ms\"",
    ));
    let pids = wait_until(T, "worker and grandchild pids", || {
        let p = [read_pids(&d.path("w")), read_pids(&d.path("gc"))].concat();
        (p.len() == 2).then_some(p)
    });
    assert!(pids.iter().all(|p| alive(*p)));
    d.stop_ok();
    assert!(
        d.stderr()
            .contains("did not stop in time; sending SIGKILL to its process group"),
        "{}",
        d.stderr()
    );
    for p in pids {
        assert!(!alive(p), "pid {p} survived the stop");
    }
}

#[test]
fn sigkill_of_drover_leaves_nothing_behind() {
    let mut d = Drover::start(&demo(
        2,
        "[[prestart]]\nname = \"noop\"\ncommand = \"true\"\n",
    ));
    // add a grandchild to each worker's group by running a side program too
    let http = d.logged_addr("socket http listening on ");
    let st = d.wait_status("2 workers", T, |v| Drover::worker_pids(v, "web").len() == 2);
    let mut pids = Drover::worker_pids(&st, "web");
    let gc = Drover::start(&one_program(
        "command = \"sleep 1000 & echo $! > {dir}/gc; exec sleep 1000\"",
    ));
    let gpids = wait_until(T, "grandchild", || {
        let p = read_pids(&gc.path("gc"));
        (!p.is_empty()).then_some(p)
    });
    let gst = gc.wait_status("worker", T, |v| Drover::worker_pids(v, "w").len() == 1);
    pids.extend(Drover::worker_pids(&gst, "w"));
    pids.extend(gpids);
    // SAFETY: SIGKILL to both drovers we started.
    unsafe {
        libc::kill(d.pid, libc::SIGKILL);
        libc::kill(gc.pid, libc::SIGKILL);
    }
    d.wait_exit(T);
    wait_until(T, "every worker and grandchild to die", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
    wait_until(T, "the port to be free", || port_free(&http).then_some(()));
}

#[test]
fn ttin_ttou_scale_and_usr1_is_forwarded() {
    let mut d = Drover::start(&one_program(
        "command = \"trap 'echo usr1 >> {dir}/usr1.$DROVER_WORKER' USR1; echo $$ > {dir}/ready.$DROVER_WORKER; while true; do sleep 0.05; done\"\nworkers = 1\nstop_timeout = \"2s\"",
    ));
    d.wait_status("1 worker", T, |v| Drover::worker_pids(v, "w").len() == 1);
    d.signal(libc::SIGTTIN);
    d.wait_status("2 workers", T, |v| {
        Drover::worker_pids(v, "w").len() == 2 && v["programs"][0]["desired"] == 2
    });
    // the trap must be installed before USR1 arrives (its default action is to terminate)
    let st = d.status();
    for w in 0..2 {
        let pid = Drover::worker_pids(&st, "w")[w];
        wait_until(T, "worker trap installed", || {
            (read_pids(&d.path(&format!("ready.{w}"))) == vec![pid]).then_some(())
        });
    }
    d.signal(libc::SIGUSR1);
    for w in 0..2 {
        wait_until(T, "USR1 to reach each worker", || {
            d.path(&format!("usr1.{w}")).exists().then_some(())
        });
    }
    d.signal(libc::SIGTTOU);
    let st = d.wait_status("back to 1 worker", T, |v| {
        let ws = v["programs"][0]["workers"].as_array().unwrap();
        ws.len() == 1 && ws[0]["index"] == 0
    });
    assert_eq!(st["programs"][0]["desired"], 1);
    d.stop_ok();
}

#[test]
fn captured_output_is_prefixed_and_long_lines_are_split_not_lost() {
    // a one-shot program: drover exits with its code once it has ended, and every line of its
    // output is written before drover goes
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nlog_format = \"text\"\n[program.talk]\nrestart = \"never\"\ncommand = \"echo hello; head -c 40000 /dev/zero | tr '\\\\0' a; echo; echo bye\"\n",
    );
    assert_eq!(d.wait_exit(T), 0, "the work is done: the worker's code");
    let out = d.stdout();
    assert!(out.contains("talk.0 | bye"), "{out}");
    assert!(out.contains("talk.0 | hello\n"), "{out}");
    let a_count: usize = out
        .lines()
        .filter_map(|l| l.strip_prefix("talk.0 | a"))
        .map(|l| 1 + l.matches('a').count())
        .sum();
    assert_eq!(a_count, 40000, "every byte of the long line arrives");
    assert!(
        out.lines()
            .filter(|l| l.ends_with("[line continues]"))
            .count()
            >= 2
    );
}

#[test]
fn a_missing_command_backs_off_with_a_clear_reason() {
    let d = Drover::start(&one_program(
        "command = [\"/no/such/server\"]\nbackoff = { initial = \"50ms\", max = \"200ms\" }",
    ));
    let st = d.wait_status("spawn failure in status", T, |v| {
        v["programs"][0]["workers"][0]["last_exit"]["reason"] == "spawn"
    });
    let w = &st["programs"][0]["workers"][0];
    assert!(
        w["last_exit"]["error"]
            .as_str()
            .unwrap()
            .contains("/no/such/server"),
        "{w}"
    );
    assert!(
        d.logged("worker w.0: spawn /no/such/server"),
        "{}",
        d.stderr()
    );
}

#[test]
fn running_out_of_file_descriptors_is_a_clear_error_and_a_backoff_not_a_panic() {
    if !installed("prlimit") {
        skip("prlimit (util-linux) is not installed");
        return;
    }
    // a hard limit drover cannot raise: some of the 40 workers cannot get their pipes
    let mut d = Drover::start_with(
        &one_program("command = [\"sleep\", \"100000\"]\nworkers = 40\nbackoff = { initial = \"200ms\", max = \"2s\" }"),
        &[],
        &["prlimit", "--nofile=40:40"],
    );
    wait_until(T, "a spawn to fail for want of fds, and be retried", || {
        let log = d.stderr();
        (log.contains("Too many open files")
            && log.contains("open-files limit is 40")
            && log.contains("retrying in"))
        .then_some(())
    });
    let addr = d.status_addr();
    wait_until(T, "the health endpoint to keep answering", || {
        http_get(&addr, "/healthz").filter(|b| b.contains("ok"))
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
}

#[test]
fn a_log_flood_of_huge_invalid_lines_is_split_kept_and_does_not_stall_health() {
    // 2 workers, each 10 MB of random bytes (invalid UTF-8) with no newline, then a marker line
    let d = Drover::start(&one_program(
        "command = [\"sh\", \"-c\", \"tr -d '\\\\n' < /dev/urandom | head -c 10000000; printf '\\\\nflood-done\\\\n'; exec sleep 100000\"]\nworkers = 2",
    ));
    let addr = d.status_addr();
    let mut peak_kib = 0u64;
    wait_until(
        Duration::from_secs(120),
        "both floods written through",
        || {
            // during the flood: health answers, drover's memory stays bounded
            assert!(
                http_get(&addr, "/healthz").is_some_and(|b| b.contains("ok")),
                "/healthz failed during the flood"
            );
            let rss = rss_kib(d.pid);
            peak_kib = peak_kib.max(rss);
            // workers' output goes to drover's stdout, its own log to stderr
            (d.stdout().matches("flood-done").count() == 2).then_some(())
        },
    );
    assert!(
        peak_kib < 64 * 1024,
        "drover's RSS peaked at {peak_kib} KiB"
    );
    let out = d.stdout();
    // 10 MB in 16 KiB pieces: every piece is kept and marked as continuing
    let pieces = out.matches("\"split\":true").count();
    assert!(pieces >= 2 * 600, "only {pieces} split markers");
}

/// The storm for minutes, with its CPU and restart-rate figures, is bench/soak.py; here, a count:
/// memory stays flat across a thousand restarts of 100 workers crashing together.
#[test]
fn a_crash_storm_of_100_workers_keeps_memory_flat() {
    // every worker exits after 0.5 s, all together, again and again
    let d = Drover::start(&staying(
        "command = [\"sh\", \"-c\", \"sleep 0.5; exit 1\"]\nworkers = 100\nbackoff = { initial = \"100ms\", max = \"1s\" }",
    ));
    let restarts = |v: &serde_json::Value| -> u64 {
        v["programs"][0]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["restarts"].as_u64().unwrap_or(0))
            .sum()
    };
    // warm up: every worker has crashed a few times and its backoff has grown
    d.wait_status("3 crashes per worker", T, |v| restarts(v) >= 300);
    let rss0 = rss_kib(d.pid);
    let r0 = restarts(&d.status());
    d.wait_status("1,000 more restarts", Duration::from_secs(90), |v| {
        restarts(v) >= r0 + 1000
    });
    let rss1 = rss_kib(d.pid);
    println!("FIGURE crash storm, 100 workers, 1,000 restarts: RSS {rss0} -> {rss1} KiB");
    assert!(
        rss1 < rss0 + 1024,
        "drover's memory grew from {rss0} to {rss1} KiB"
    );
    let addr = d.status_addr();
    assert!(
        http_get(&addr, "/healthz").is_some(),
        "drover answers throughout"
    );
}

/// A pids cgroup made for one test, removed (with anything left in it) when dropped.
struct PidsCgroup(std::path::PathBuf);

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
                for p in procs.split_whitespace() {
                    // SAFETY: kill(2) on pids read from the test's own cgroup.
                    unsafe { libc::kill(p.parse().unwrap_or(0), libc::SIGKILL) };
                }
            }
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn a_full_process_table_is_a_clear_error_and_a_backoff_and_status_keeps_answering() {
    let cg = std::path::PathBuf::from(format!(
        "/sys/fs/cgroup/pids/drover-test-{}",
        std::process::id()
    ));
    if std::fs::create_dir(&cg).is_err() {
        skip("no writable cgroup v1 pids hierarchy here");
        return;
    }
    let cg = PidsCgroup(cg);
    // drover (2 threads), its guard and a few workers fit; 20 workers do not
    std::fs::write(cg.0.join("pids.max"), "10").unwrap();
    let join = format!("echo $$ > {}/cgroup.procs && exec \"$@\"", cg.0.display());
    let mut d = Drover::start_with(
        &one_program("command = [\"sleep\", \"100000\"]\nworkers = 20\nbackoff = { initial = \"200ms\", max = \"2s\" }"),
        &[],
        &["sh", "-c", &join, "sh"],
    );
    wait_until(
        T,
        "a spawn to fail at the pids limit, and be retried",
        || {
            let log = d.stderr();
            (log.contains("Resource temporarily unavailable")
                && log.contains("the process limit")
                && log.contains("retrying in"))
            .then_some(())
        },
    );
    let full = || {
        let cur: u32 = std::fs::read_to_string(cg.0.join("pids.current"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        cur >= 10
    };
    assert!(full(), "the cgroup should be at its limit");
    // /status needs a thread for its /proc reads; with none to be had it reads inline
    let addr = d.status_addr();
    let st = http_get(&addr, "/status").expect("/status answers with the process table full");
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert!(Drover::worker_pids(&v, "w").len() >= 5, "{v}");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
    assert!(!d.stderr().contains("panicked"), "{}", d.stderr());
}

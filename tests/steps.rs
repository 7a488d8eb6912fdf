//! Pre-start steps and socket binding, with the real binary.

mod common;
use common::*;
use std::time::Duration;

#[test]
fn steps_run_in_order_before_any_worker() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "first"
command = "sleep 0.2; echo first >> {dir}/order; echo first step says hello"
[[prestart]]
name = "second"
command = ["sh", "-c", "echo second >> {dir}/order; echo \"sockets=${LISTEN_FDS:-none}\" >> {dir}/order"]
[socket.http]
listen = "127.0.0.1:0"
[program.w]
command = "echo worker$DROVER_WORKER >> {dir}/order; exec sleep 1000"
sockets = ["http"]
workers = 2
"#,
    );
    wait_until(T, "two workers to write", || {
        let s = std::fs::read_to_string(d.path("order")).ok()?;
        (s.lines().count() >= 5).then_some(())
    });
    let order = std::fs::read_to_string(d.path("order")).unwrap();
    let lines: Vec<&str> = order.lines().collect();
    assert_eq!(
        &lines[..3],
        &["first", "second", "sockets=none"],
        "steps first, without sockets: {order}"
    );
    let mut workers = lines[3..].to_vec();
    workers.sort();
    assert_eq!(workers, vec!["worker0", "worker1"]);
    let st = d.status();
    assert_eq!(st["steps"][0]["state"], "succeeded");
    assert_eq!(st["steps"][1]["state"], "succeeded");
    // step output is streamed into the log under the step's name (by the output thread: it may
    // land a moment after the workers start)
    wait_until(T, "the step's line on stdout, under its name", || {
        let out = d.stdout();
        out.lines()
            .any(|l| l.contains("step.first") && l.contains("first step says hello"))
            .then_some(())
    });
    d.stop_ok();
}

#[test]
fn failing_step_exits_3_and_starts_no_worker() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = "echo attempt >> {dir}/attempts; echo 'connecting to db'; echo 'FATAL: relation users does not exist' >&2; exit 4"
retries = 2
retry_delay = "50ms"
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
    );
    assert_eq!(d.wait_exit(T), 3, "stderr: {}", d.stderr());
    let err = d.stderr();
    assert!(
        err.contains("pre-start step migrate failed after 3 attempts: exit code 4"),
        "{err}"
    );
    assert!(
        err.contains("FATAL: relation users does not exist"),
        "the last output lines are quoted: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.path("attempts"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(
        !d.path("worker-started").exists(),
        "no worker may start after a failed step"
    );
}

#[test]
fn step_timeout_kills_its_whole_process_group() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "hang"
command = "sleep 1000 & echo $! > {dir}/gc; echo $$ > {dir}/step; wait"
timeout = "300ms"
[program.w]
command = "exec sleep 1000"
"#,
    );
    assert_eq!(d.wait_exit(T), 3);
    assert!(
        d.stderr()
            .contains("pre-start step hang failed after 1 attempt: timed out"),
        "{}",
        d.stderr()
    );
    let pids = [read_pids(&d.path("gc")), read_pids(&d.path("step"))].concat();
    assert_eq!(pids.len(), 2);
    wait_until(T, "step and its child to be gone", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn step_that_cannot_start_is_named() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "missing"
command = ["/nonexistent/migrate-tool", "up"]
[program.w]
command = "exec sleep 1000"
"#,
    );
    assert_eq!(d.wait_exit(T), 3);
    let err = d.stderr();
    assert!(
        err.contains("pre-start step missing failed") && err.contains("/nonexistent/migrate-tool"),
        "{err}"
    );
}

#[test]
fn address_in_use_exits_1_before_any_step() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let mut d = Drover::start(&format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "m"
command = "touch {{dir}}/step-ran"
[socket.http]
listen = "{addr}"
[program.w]
command = "exec sleep 1000"
sockets = ["http"]
"#
    ));
    assert_eq!(d.wait_exit(T), 1);
    let err = d.stderr();
    assert!(
        err.contains(&format!("socket http: cannot listen on {addr}")),
        "{err}"
    );
    assert!(!d.path("step-ran").exists());
}

#[test]
fn sockets_are_passed_like_systemd() {
    let d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[socket.http]
listen = "127.0.0.1:0"
[socket.admin]
listen = "unix:{dir}/admin.sock"
mode = "0600"
[program.w]
command = "echo \"$LISTEN_FDS $LISTEN_PID $$ $LISTEN_FDNAMES\" > {dir}/env.$DROVER_WORKER; exec sleep 1000"
sockets = ["http", "admin"]
workers = 2
"#,
    );
    for w in 0..2 {
        let env = wait_until(T, "worker env", || {
            let s = std::fs::read_to_string(d.path(&format!("env.{w}"))).ok()?;
            s.ends_with('\n').then_some(s)
        });
        let f: Vec<&str> = env.split_whitespace().collect();
        assert_eq!(f[0], "2", "LISTEN_FDS");
        assert_eq!(f[1], f[2], "LISTEN_PID is the worker's own pid");
        assert_eq!(f[3], "http:admin", "LISTEN_FDNAMES");
        // the exec'd worker holds exactly what it inherited: stdio and the two sockets
        let pid = f[2];
        let fds = wait_until(T, "the worker to exec sleep", || {
            let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).ok()?;
            cmd.starts_with("sleep").then(|| {
                let mut v: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                    .collect();
                v.sort();
                v
            })
        });
        assert_eq!(
            fds,
            vec![0, 1, 2, 3, 4],
            "only stdio and the two sockets are inherited"
        );
        for fd in [3, 4] {
            let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).unwrap();
            assert!(
                link.to_string_lossy().starts_with("socket:["),
                "fd {fd} is {link:?}"
            );
        }
    }
    let meta = std::fs::metadata(d.path("admin.sock")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn ipv6_and_unix_sockets_serve_the_demo_worker() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        skip("no IPv6 loopback on this machine");
        return;
    }
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[socket.v6]
listen = "[::1]:0"
[program.web]
command = ["{bin}", "demo-worker"]
sockets = ["v6"]
[socket.local]
listen = "unix:{dir}/web.sock"
[program.local]
command = ["{bin}", "demo-worker"]
sockets = ["local"]
"#,
    );
    let addr = d.logged_addr("socket v6 listening on ");
    assert!(addr.starts_with("[::1]:"), "{addr}");
    let body = wait_until(T, "an answer over IPv6", || http_get(&addr, "/"));
    assert!(body.contains("demo-worker web.0"), "{body}");
    let sock = d.path("web.sock");
    let body = wait_until(T, "an answer over the unix socket", || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut b = String::new();
        s.read_to_string(&mut b).ok()?;
        Some(b)
    });
    assert!(body.contains("demo-worker local.0"), "{body}");
    d.stop_ok();
}

/// Wait until the step's output (streamed to drover's stdout) contains `text`.
fn wait_output(d: &Drover, text: &str) {
    wait_until(T, text, || d.stdout().contains(text).then_some(()));
}

/// The one line of drover's log that contains `text`.
fn log_line(d: &Drover, text: &str) -> String {
    d.messages()
        .into_iter()
        .find(|m| m.contains(text))
        .unwrap_or_else(|| panic!("no log line with {text:?} in:\n{}", d.stderr()))
}

#[test]
fn term_during_a_step_lets_it_finish_its_term_handler() {
    let sd = tempfile::tempdir().unwrap();
    let notify = sd.path().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut d = Drover::start_with(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = 'trap "echo cleaning up; while [ ! -e {dir}/finish ]; do sleep 0.05; done; echo done; exit 0" TERM; echo started; while :; do sleep 0.1; done'
[[prestart]]
name = "after"
command = "touch {dir}/after-ran"
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
        &[],
    );
    d.keep.push(sd);
    wait_output(&d, "started");
    d.signal(libc::SIGTERM);
    wait_output(&d, "cleaning up");
    // systemd hears that drover is stopping while the step still runs
    let mut buf = [0u8; 4096];
    wait_until(T, "STOPPING=1 on NOTIFY_SOCKET", || {
        let n = sock.recv(&mut buf).ok()?;
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .any(|l| l == "STOPPING=1")
            .then_some(())
    });
    // while its handler runs, /status says the step was interrupted and drover is stopping
    let st = d.wait_status("the step shown as interrupted", T, |v| {
        v["steps"][0]["state"] == "interrupted"
    });
    assert_eq!(st["state"], "stopping", "{st}");
    assert_eq!(st["steps"][1]["state"], "pending", "{st}");
    assert!(
        d.logged("TERM received: stopping pre-start step migrate with TERM; SIGKILL in 30s"),
        "{}",
        d.stderr()
    );
    std::fs::write(d.path("finish"), "").unwrap();
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
    assert!(d.stdout().contains("done"), "{}", d.stdout());
    assert!(
        d.logged("pre-start step migrate exited 0 after TERM; no worker was started"),
        "{}",
        d.stderr()
    );
    assert!(!d.path("after-ran").exists(), "no later step runs");
    assert!(!d.path("worker-started").exists(), "no worker starts");
}

#[test]
fn a_step_that_fails_in_its_term_handler_exits_3() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = 'trap "echo cleaning up; sleep 0.5; echo rollback failed; exit 1" TERM; echo started; while :; do sleep 0.1; done'
retries = 3
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
    );
    wait_output(&d, "started");
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
    let line = log_line(&d, "was interrupted");
    assert!(
        line.contains("pre-start step migrate was interrupted by shutdown: exit code 1 after TERM")
            && line.contains("exiting with code 3")
            && line.contains("| cleaning up")
            && line.contains("| rollback failed"),
        "the line says how it ended and quotes its last output: {line}"
    );
    assert_eq!(
        d.stdout().matches("started").count(),
        1,
        "an interrupted step is not retried: {}",
        d.stdout()
    );
    assert!(!d.path("worker-started").exists(), "no worker starts");
}

#[test]
fn a_step_that_ignores_term_is_killed_at_its_stop_timeout() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "stubborn"
command = 'trap "" TERM; echo $$ > {dir}/step; echo started; while :; do sleep 0.1; done'
stop_timeout = "1s"
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
    );
    wait_output(&d, "started");
    let pid = read_pids(&d.path("step"))[0];
    let sent = std::time::Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
    println!("TERM to exit with stop_timeout = 1s: {:?}", sent.elapsed());
    assert!(!alive(pid), "the step is gone");
    assert!(
        d.logged("pre-start step stubborn did not stop within 1s after TERM; killing its process group (SIGKILL)"),
        "{}",
        d.stderr()
    );
    let line = log_line(&d, "was interrupted");
    assert!(
        line.contains("killed by SIGKILL 1s after TERM") && line.contains("exiting with code 3"),
        "{line}"
    );
    assert!(!d.path("worker-started").exists(), "no worker starts");
}

#[test]
fn a_second_term_or_quit_kills_a_stopping_step_at_once() {
    for (signals, said) in [
        (&[libc::SIGTERM, libc::SIGTERM][..], "TERM received again"),
        (&[libc::SIGQUIT][..], "QUIT received"),
    ] {
        let mut d = Drover::start(
            r#"
[supervisor]
status = "127.0.0.1:0"
# the step's stop_timeout defaults to this
shutdown_timeout = "60s"
[[prestart]]
name = "stubborn"
command = 'trap "" TERM; echo started; while :; do sleep 0.1; done'
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
        );
        wait_output(&d, "started");
        let sent = std::time::Instant::now();
        for (i, sig) in signals.iter().enumerate() {
            if i > 0 {
                wait_until(T, "the first TERM to be handled", || {
                    d.logged("stopping pre-start step stubborn").then_some(())
                });
            }
            d.signal(*sig);
        }
        // well before the 60 s stop_timeout
        assert_eq!(d.wait_exit(Duration::from_secs(20)), 3, "{}", d.stderr());
        println!("{said}: ended {:?} after the first signal", sent.elapsed());
        assert!(
            d.logged(&format!(
                "{said}: killing pre-start step stubborn now (SIGKILL)"
            )),
            "{}",
            d.stderr()
        );
        assert!(!d.path("worker-started").exists(), "no worker starts");
    }
}

#[test]
fn shutdown_while_a_step_waits_to_retry_exits_3() {
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = "echo attempt >> {dir}/attempts; exit 2"
retries = 1
retry_delay = "60s"
[program.w]
command = "touch {dir}/worker-started; exec sleep 1000"
"#,
    );
    d.wait_status("the first attempt to fail", T, |v| {
        v["steps"][0]["exit"]["code"] == 2
    });
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 3, "{}", d.stderr());
    assert!(
        d.logged(
            "pre-start step migrate did not complete: it failed and shutdown came before its retry"
        ),
        "{}",
        d.stderr()
    );
    assert!(!d.path("worker-started").exists(), "no worker starts");
}

#[test]
fn expanded_variables_in_commands_are_never_shown() {
    const SECRET: &str = "hunter2-xyz";
    let config = r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = "echo ${SECRET} > {dir}/step-got; echo migrated"
[program.w]
command = ["sh", "-c", "echo $1 > {dir}/worker-got; exec sleep 1000", "w", "--dsn=postgres://app:${SECRET}@db/app"]
[program.broken]
command = ["/nonexistent/${SECRET}/tool", "${SECRET}"]
"#;
    let env = [("SECRET", SECRET)];
    let mut d = Drover::start_with(config, &env, &[]);
    // the processes get the expanded values
    for (file, want) in [
        ("step-got", SECRET.to_string()),
        (
            "worker-got",
            format!("--dsn=postgres://app:{SECRET}@db/app"),
        ),
    ] {
        let got = wait_until(T, file, || {
            let s = std::fs::read_to_string(d.path(file)).ok()?;
            s.ends_with('\n').then_some(s)
        });
        assert_eq!(got.trim(), want, "{file}");
    }
    // the broken program failed to start at least once, and said why
    let st = d.wait_status("the broken program's spawn failure", T, |v| {
        v["programs"][1]["workers"][0]["last_exit"]["reason"] == "spawn"
    });
    let status_body = http_get(&d.status_addr(), "/status").unwrap();
    assert!(!status_body.contains(SECRET), "/status: {status_body}");
    assert!(
        status_body.contains("/nonexistent/${SECRET}/tool"),
        "the error names the command as written: {st}"
    );
    let check = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(d.path("drover.toml"))
        .env("SECRET", SECRET)
        .output()
        .unwrap();
    let plan = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{plan}");
    assert!(!plan.contains(SECRET), "drover check: {plan}");
    assert!(
        plan.contains("echo ${SECRET} > ")
            && plan.contains("--dsn=postgres://app:${SECRET}@db/app"),
        "the plan shows the commands as written: {plan}"
    );
    d.stop_ok();
    let (err, out) = (d.stderr(), d.stdout());
    assert!(
        d.logged("pre-start step migrate starting (attempt 1/1): sh -c \"echo ${SECRET} >"),
        "the step's command as written: {err}"
    );
    assert!(!err.contains(SECRET), "drover's log: {err}");
    assert!(!out.contains(SECRET), "drover's output: {out}");
}

#[test]
fn a_step_with_user_and_group_runs_as_them() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("running a step as another user needs drover to run as root");
        return;
    }
    // Debian's nobody (65534) and nogroup (65534); drover itself is root with groups to clear
    let mut d = Drover::start(
        r#"
[supervisor]
status = "127.0.0.1:0"
[[prestart]]
name = "migrate"
command = "echo \"step-ids $(id -u) $(id -g) $(id -G) $USER $HOME\""
user = "nobody"
group = "nogroup"
[program.w]
command = "echo \"worker-ids $(id -u)\"; exec sleep 1000"
"#,
    );
    wait_output(&d, "worker-ids 0");
    let out = d.stdout();
    assert!(
        out.contains("step-ids 65534 65534 65534 nobody /nonexistent"),
        "the step ran as nobody:nogroup, no supplementary group, its own USER and HOME:\n{out}"
    );
    assert_eq!(d.status()["steps"][0]["state"], "succeeded");
    d.stop_ok();
}

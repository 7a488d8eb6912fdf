//! Pre-start steps and socket binding, with the real binary.

mod common;
use common::*;

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
    // step output is streamed into the log under the step's name
    let out = d.stdout();
    assert!(
        out.contains("first step says hello") && out.contains("step.first"),
        "{out}"
    );
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

//! Readiness by notification: workers get NOTIFY_SOCKET and count as ready when they send
//! READY=1 (systemd's sd_notify protocol); STATUS= shows in /status; a process that is not one of
//! drover's workers cannot make a worker ready.

mod common;
use common::*;

/// A python3 one-liner that sends `msg` to $NOTIFY_SOCKET (abstract names start with `@`).
fn send(msg: &str) -> String {
    format!(
        "python3 -c 'import os,socket; a=os.environ[\"NOTIFY_SOCKET\"]; a=\"\\0\"+a[1:] if a[0]==\"@\" else a; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b\"{msg}\", a)'"
    )
}

fn worker(v: &serde_json::Value) -> &serde_json::Value {
    &v["programs"][0]["workers"][0]
}

#[test]
fn a_worker_is_ready_when_it_says_so_and_not_before() {
    let script = format!(
        "env > {{dir}}/env; {}; while [ ! -e {{dir}}/go1 ]; do sleep 0.02; done; {}; while [ ! -e {{dir}}/go2 ]; do sleep 0.02; done; {}; exec sleep 1000",
        send("STATUS=warming"),
        send("STATUS=second"),
        send("READY=1\\nSTATUS=serving"),
    );
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"sh\", \"-c\", {}]\nreadiness = {{ check = \"notify\" }}\n",
        serde_json::to_string(&script).unwrap()
    );
    let d = Drover::start(&cfg);
    let st = d.wait_status("STATUS=warming", T, |v| worker(v)["status"] == "warming");
    assert_eq!(worker(&st)["state"], "starting", "{st}");
    assert_eq!(st["programs"][0]["ready_workers"], 0);
    // another process sends READY=1 to the same socket: not a worker, ignored
    let env = std::fs::read_to_string(d.path("env")).unwrap();
    let sock = env
        .lines()
        .find_map(|l| l.strip_prefix("NOTIFY_SOCKET="))
        .expect("the worker got NOTIFY_SOCKET")
        .to_string();
    // a file with a random name in drover's runtime directory, not a name in the abstract
    // namespace anything in the network namespace could reach
    assert!(
        sock.starts_with('/') && sock.contains("/drover-") && sock.contains("/notify-"),
        "{sock}"
    );
    let spoof = std::process::Command::new("sh")
        .args(["-c", &send("READY=1")])
        .env("NOTIFY_SOCKET", &sock)
        .status()
        .unwrap();
    assert!(spoof.success());
    // the worker's next message comes after the spoofed one on the same socket
    std::fs::write(d.path("go1"), "").unwrap();
    let st = d.wait_status("STATUS=second", T, |v| worker(v)["status"] == "second");
    assert_eq!(
        st["programs"][0]["ready_workers"], 0,
        "a stranger's READY=1 counted: {st}"
    );
    std::fs::write(d.path("go2"), "").unwrap();
    let st = d.wait_status("ready by READY=1", T, |v| all_ready(v, 1));
    assert_eq!(worker(&st)["status"], "serving");
    assert!(d.logged(&format!("get NOTIFY_SOCKET={sock}")));
    // only the workers' user (and root) may send to it: its path is no secret
    let md = std::fs::metadata(&sock).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777,
        0o600
    );
    assert!(d
        .messages()
        .iter()
        .any(|m| m.contains("web.0") && m.contains("ready in")));
}

#[test]
fn a_worker_that_never_notifies_is_recycled_at_its_readiness_timeout() {
    let cfg = "[supervisor]\nstatus = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"sleep\", \"1000\"]\nreadiness = { check = \"notify\", timeout = \"500ms\" }\nbackoff = { initial = \"50ms\" }\n";
    let d = Drover::start(cfg);
    let st = d.wait_status("a start-timeout recycle", T, |v| {
        worker(v)["restarts"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(st["programs"][0]["ready_workers"], 0);
    let exit = &worker(&st)["last_exit"];
    assert!(exit.to_string().contains("start-timeout"), "{exit}");
}

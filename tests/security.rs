//! Privilege dropping (workers run as their program's `user` and `group`) and the status
//! listener under hostile clients (slow, malformed, oversized, floods).

mod common;
use common::*;
use std::time::Duration;

/// Run a drover command that must refuse to start (exit 2); its stderr.
fn refused_with_2(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

fn proc_field(pid: i64, field: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn environ(pid: i64) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn workers_run_as_their_user_and_group_with_no_supplementary_groups() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        skip("changing a worker's user needs drover to run as root");
        return;
    }
    // Debian's nobody (65534) and nogroup (65534); root starts with supplementary groups to clear
    let mut d = Drover::start(&one_program(
        "command = [\"sleep\", \"100000\"]\nworkers = 2\nuser = \"nobody\"\ngroup = \"nogroup\"\nreadiness = { check = \"uptime\", min_uptime = \"100ms\" }\n[program.probe]\ncommand = [\"sleep\", \"100000\"]\nuser = 65534\n",
    ));
    let st = d.wait_status("3 workers running", T, |v| {
        Drover::worker_pids(v, "w").len() == 2 && Drover::worker_pids(v, "probe").len() == 1
    });
    for pid in Drover::worker_pids(&st, "w") {
        // real, effective, saved and filesystem ids
        assert_eq!(
            proc_field(pid, "Uid"),
            "65534 65534 65534 65534",
            "worker {pid}"
        );
        assert_eq!(
            proc_field(pid, "Gid"),
            "65534 65534 65534 65534",
            "worker {pid}"
        );
        assert_eq!(
            proc_field(pid, "Groups"),
            "",
            "worker {pid}: supplementary groups"
        );
        let env = environ(pid);
        for want in ["USER=nobody", "LOGNAME=nobody", "HOME=/nonexistent"] {
            assert!(
                env.iter().any(|e| e == want),
                "worker {pid} lacks {want}: {env:?}"
            );
        }
        // still its own process group
        assert_eq!(proc_field(pid, "NSpgid"), pid.to_string());
    }
    // a numeric user takes its primary group from the passwd entry
    let pid = Drover::worker_pids(&st, "probe")[0];
    assert_eq!(proc_field(pid, "Uid"), "65534 65534 65534 65534");
    assert_eq!(proc_field(pid, "Gid"), "65534 65534 65534 65534");
    // drover itself stays root
    assert_eq!(proc_field(d.pid as i64, "Uid"), "0 0 0 0");

    // workers running as another user still go with a SIGKILLed drover
    let pids = Drover::worker_pids(&st, "w");
    d.signal(libc::SIGKILL);
    d.wait_exit(T);
    wait_until(T, "workers gone after drover was SIGKILLed", || {
        pids.iter().all(|p| !alive(*p)).then_some(())
    });
}

#[test]
fn a_drover_that_is_not_root_refuses_another_user_before_starting_anything() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || !std::path::Path::new("/usr/bin/setpriv").exists() {
        skip("needs root and setpriv to run drover as nobody");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let conf = dir.path().join("drover.toml");
    std::fs::write(
        &conf,
        "[program.w]\ncommand = [\"sleep\", \"1000\"]\nuser = \"root\"\n",
    )
    .unwrap();
    let err = refused_with_2(
        std::process::Command::new("/usr/bin/setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                BIN,
                "run",
                "-c",
            ])
            .arg(&conf),
    );
    assert!(
        err.contains("drover.toml:3:8: [program.w]: drover runs as uid 65534, not root, so it cannot start workers as uid 0 gid 0"),
        "{err}"
    );
}

/// Read until EOF or error; true if the server closed the connection within `within`.
fn closed_within(s: &mut std::net::TcpStream, within: Duration) -> bool {
    use std::io::Read;
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false, // timed out: still open
        }
    }
}

fn raw(addr: &str, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn the_status_listener_survives_slow_malformed_oversized_and_flooding_clients() {
    use std::io::Write;
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    let healthy = || http_get(&addr, "/healthz").is_some_and(|b| b.contains("ok"));

    // slowloris: headers never finished -> closed after the header timeout, others unaffected
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    assert!(healthy(), "a slow client must not block others");
    assert!(
        closed_within(&mut slow, Duration::from_secs(15)),
        "a client that never finishes its headers is disconnected"
    );

    // malformed request line, oversized headers, oversized body: an HTTP error, never a panic
    assert!(raw(&addr, b"\x00\x01\xffgarbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let mut big = b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 64 * 1024));
    big.extend(b"\r\n\r\n");
    assert!(raw(&addr, &big).starts_with("HTTP/1.1 431"));
    let mut body =
        b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10000000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'{', 64 * 1024));
    let r = raw(&addr, &body);
    assert!(
        r.starts_with("HTTP/1.1 403") || r.starts_with("HTTP/1.1 413"),
        "{r}"
    );
    assert!(healthy());

    // a flood of idle connections: memory stays bounded, the endpoint answers while they are
    // open (each new connection closes the oldest silent one: tests/status_listener.rs), and
    // every one of them is closed once it has sent nothing for the first-byte timeout
    let before = rss_kib(d.pid);
    let mut flood: Vec<std::net::TcpStream> = (0..300)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    assert!(healthy(), "/healthz while 300 idle connections are open");
    let grown = rss_kib(d.pid).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "drover grew by {grown} KiB holding 256 idle connections"
    );
    for (i, s) in flood.iter_mut().enumerate() {
        assert!(closed_within(s, T), "idle connection {i} is never closed");
    }
    assert!(healthy());
}

#[test]
fn secrets_never_reach_status_metrics_the_page_or_the_log() {
    let secret = "s3cr3t-env-value-8c1f";
    let token = "tok-7f3a9b2c4d5e6f708192a3b4";
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ncontrol_token_file = \"{}\"\n[program.w]\ncommand = [\"sh\", \"-c\", \"echo started; exec sleep 100000\"]\nenv = {{ API_KEY = \"{secret}\" }}\n",
        token_file.display()
    ));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    // a mutating request with the token, and one with a wrong token, so both paths are logged
    let (ok, _) = http_req(&addr, "POST", "/programs/w/restart", b"", Some(token)).unwrap();
    assert_eq!(ok, 200);
    let (bad, _) = http_req(
        &addr,
        "POST",
        "/programs/w/restart",
        b"",
        Some("wrong-token-0000000"),
    )
    .unwrap();
    assert_eq!(bad, 401);
    wait_until(T, "the restart to finish", || {
        let v = d.status();
        (v["programs"][0]["workers"][0]["restarts"] == 1 && v["programs"][0]["rolling"] == false)
            .then_some(())
    });
    let mut seen = String::new();
    for path in ["/status", "/metrics", "/", "/readyz", "/healthz"] {
        seen += &http_get(&addr, path).unwrap();
    }
    seen += &d.stderr();
    seen += &d.stdout();
    let check = std::process::Command::new(BIN)
        .args(["check", "-c"])
        .arg(d.path("drover.toml"))
        .output()
        .unwrap();
    seen += &String::from_utf8_lossy(&check.stdout);
    assert!(seen.contains("started"), "the worker's own output is there");
    assert!(!seen.contains(secret), "an environment value leaked");
    assert!(!seen.contains(token), "the control token leaked");
    // the worker still got it
    let pid = Drover::worker_pids(&d.status(), "w")[0];
    assert!(environ(pid)
        .iter()
        .any(|e| e == &format!("API_KEY={secret}")));
}

/// A self-signed certificate for 127.0.0.1 into `dir` as NAME.crt / NAME.key.
fn self_signed(dir: &std::path::Path, name: &str) -> bool {
    std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(dir.join(format!("{name}.key")))
        .arg("-out")
        .arg(dir.join(format!("{name}.crt")))
        .args([
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// GET over HTTPS with curl, trusting only `ca`: the body, or None if TLS or HTTP failed.
fn curl_https(addr: &str, path: &str, ca: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .arg(format!("https://{addr}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_status_listener_speaks_tls_and_rereads_its_certificate_on_hup() {
    if !cfg!(feature = "tls") {
        skip("built without the `tls` feature (tests/run.sh builds with it)");
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    if !self_signed(certs.path(), "first") || !self_signed(certs.path(), "second") {
        skip("openssl cannot make a test certificate here");
        return;
    }
    if !installed("curl") {
        skip("curl is not installed");
        return;
    }
    let (cert, key) = (certs.path().join("live.crt"), certs.path().join("live.key"));
    std::fs::copy(certs.path().join("first.crt"), &cert).unwrap();
    std::fs::copy(certs.path().join("first.key"), &key).unwrap();
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n[program.w]\ncommand = [\"sleep\", \"100000\"]\n",
        cert.display(),
        key.display()
    ));
    let addr = d.logged_addr("status endpoint on ");
    assert!(d.logged("(https;"), "{}", d.stderr());
    let first = certs.path().join("first.crt");
    let second = certs.path().join("second.crt");
    let body = wait_until(T, "/healthz over https", || {
        curl_https(&addr, "/healthz", &first)
    });
    assert!(body.contains("ok"));
    assert!(curl_https(&addr, "/status", &first).is_some_and(|b| b.contains("\"programs\"")));
    // plain HTTP on the TLS port gets nothing useful, and drover keeps serving TLS
    assert!(http_get(&addr, "/healthz").is_none_or(|b| !b.contains("ok")));
    assert!(
        curl_https(&addr, "/healthz", &second).is_none(),
        "not yet the second certificate"
    );

    // a broken key on reload: the reload fails, the first certificate stays
    std::fs::write(&key, "not a key").unwrap();
    d.signal(libc::SIGHUP);
    wait_until(T, "the failed reload to be logged", || {
        d.logged("reload failed").then_some(())
    });
    assert!(curl_https(&addr, "/healthz", &first).is_some());

    // the second certificate and key, then HUP: served from then on
    std::fs::copy(certs.path().join("second.crt"), &cert).unwrap();
    std::fs::copy(certs.path().join("second.key"), &key).unwrap();
    d.signal(libc::SIGHUP);
    wait_until(T, "the second certificate served after HUP", || {
        curl_https(&addr, "/healthz", &second)
    });
    assert!(curl_https(&addr, "/healthz", &first).is_none());
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "{}", d.stderr());
}

#[test]
fn an_unreadable_certificate_stops_drover_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("drover.toml");
    std::fs::write(
        &conf,
        format!(
            "[supervisor]\nstatus = \"127.0.0.1:0\"\ntls_cert = \"{0}/missing.crt\"\ntls_key = \"{0}/missing.key\"\n[program.w]\ncommand = [\"touch\", \"{0}/started\"]\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let err = refused_with_2(
        std::process::Command::new(BIN)
            .args(["run", "-c"])
            .arg(&conf),
    );
    assert!(
        err.contains("supervisor.tls_cert")
            && err.contains("missing.crt")
            && err.contains("nothing was started"),
        "{err}"
    );
    assert!(!dir.path().join("started").exists());
}

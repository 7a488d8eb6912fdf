//! systemd integration: sd_notify to a real NOTIFY_SOCKET listener, socket activation through
//! `systemd-socket-activate`, and `systemd-analyze verify` on the shipped units (any output is a
//! failure: it exits 0 on parse warnings).

mod common;
use common::*;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn demo(extra: &str) -> String {
    format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n{extra}\n[socket.http]\nlisten = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"sh\", \"-c\", \"env > {{dir}}/env.$DROVER_WORKER; exec {{bin}} demo-worker\"]\nsockets = [\"http\"]\nworkers = 2\n"
    )
}

/// Collect notification datagrams until `pred` holds on everything received so far.
fn collect_until(
    sock: &UnixDatagram,
    got: &mut Vec<String>,
    what: &str,
    pred: impl Fn(&[String]) -> bool,
) {
    let end = Instant::now() + T;
    let mut buf = [0u8; 4096];
    while !pred(got) {
        assert!(
            Instant::now() < end,
            "timed out waiting for {what}; got {got:#?}"
        );
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn sd_notify_ready_status_watchdog_reloading_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let p = path.to_str().unwrap().to_string();
    // min_ready defaults to 1; READY=1 waiting for both workers needs min_ready = 2
    let cfg = demo("").replace("workers = 2\n", "workers = 2\nmin_ready = 2\n");
    let mut d = Drover::start_with(
        &cfg,
        &[("NOTIFY_SOCKET", &p), ("WATCHDOG_USEC", "400000")],
        &[],
    );
    d.keep.push(dir);
    let mut got = vec![];
    collect_until(&sock, &mut got, "READY=1", |g| {
        g.iter().any(|m| m.starts_with("READY=1"))
    });
    let ready = got
        .iter()
        .find(|m| m.starts_with("READY=1"))
        .unwrap()
        .clone();
    assert!(ready.contains("STATUS=2/2 web workers ready"), "{ready}");
    // READY only once min_ready (both) workers passed readiness, which /status confirms
    assert_eq!(d.status()["programs"][0]["ready_workers"], 2);
    // watchdog pings every WATCHDOG_USEC/2 from the event loop
    let before = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    collect_until(&sock, &mut got, "3 more watchdog pings", |g| {
        g.iter().filter(|m| *m == "WATCHDOG=1").count() >= before + 3
    });
    d.signal(libc::SIGHUP);
    collect_until(&sock, &mut got, "RELOADING=1 then READY=1", |g| {
        g.iter()
            .position(|m| m.starts_with("RELOADING=1"))
            .is_some_and(|i| g[i..].iter().any(|m| m.starts_with("READY=1")))
    });
    let reloading = got.iter().find(|m| m.starts_with("RELOADING=1")).unwrap();
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    d.signal(libc::SIGTERM);
    collect_until(&sock, &mut got, "STOPPING=1", |g| {
        g.iter().any(|m| m == "STOPPING=1")
    });
    assert_eq!(d.wait_exit(T), 0);
    // workers never see drover's systemd variables
    let env = std::fs::read_to_string(d.path("env.0")).unwrap();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC"] {
        assert!(
            !env.lines().any(|l| l.starts_with(&format!("{var}="))),
            "{var} leaked to a worker"
        );
    }
}

#[test]
fn socket_activation_adopts_the_named_socket() {
    if !installed("systemd-socket-activate") {
        skip("systemd-socket-activate is not installed (Debian package systemd)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let s = sock.to_str().unwrap().to_string();
    // the file says the address systemd listens on (drover would refuse any other)
    let mut d = Drover::start_with(
        &demo("").replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"unix:{s}\""),
        ),
        &[],
        &["systemd-socket-activate", "-l", &s, "--fdname=http"],
    );
    d.keep.push(dir);
    // systemd-socket-activate execs drover on the first connection
    let body = wait_until(T, "an answer through the activated socket", || {
        use std::io::{Read, Write};
        let mut c = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        c.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
        let mut b = String::new();
        c.read_to_string(&mut b).ok()?;
        b.contains("demo-worker web.").then_some(b)
    });
    assert!(body.contains("200 OK"), "{body}");
    assert!(
        d.stderr()
            .contains("socket http: adopted from systemd socket activation"),
        "{}",
        d.stderr()
    );
    d.stop_ok();
}

/// A socket systemd passes on another address than the file's `listen` is refused before
/// anything starts: `ListenStream=8000` listens on every address, and a file that says
/// 127.0.0.1:8000 (behind nginx) must not end up serving the world.
#[test]
fn a_passed_socket_on_another_address_than_listen_is_refused() {
    if !installed("systemd-socket-activate") {
        skip("systemd-socket-activate is not installed (Debian package systemd)");
        return;
    }
    // a port free on every address, for systemd-socket-activate to listen on
    let port = wait_until(T, "a free port", || {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        port_free(&format!("[::]:{p}")).then_some(p)
    });
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("activated.sock");
    let s = sock.to_str().unwrap().to_string();
    let every = port.to_string();
    // (what systemd listens on, the file's listen, how to connect to wake it, what it says)
    let cases = [
        (
            every.clone(),
            format!("127.0.0.1:{port}"),
            format!("tcp:127.0.0.1:{port}"),
            format!("systemd passed a socket listening on [::]:{port}, but [socket.http] says listen = \"127.0.0.1:{port}\""),
        ),
        (
            s.clone(),
            "unix:/nonexistent/never-bound.sock".to_string(),
            format!("unix:{s}"),
            format!("systemd passed a socket listening on unix:{s}, but [socket.http] says listen = \"unix:/nonexistent/never-bound.sock\""),
        ),
    ];
    for (activate, listen, wake, says) in cases {
        let mut d = Drover::start_with(
            &demo("").replace(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{listen}\""),
            ),
            &[],
            &["systemd-socket-activate", "-l", &activate, "--fdname=http"],
        );
        // systemd-socket-activate execs drover on the first connection
        wait_until(T, "drover woken by a connection", || {
            let connected = match wake.split_once(':').unwrap() {
                ("tcp", a) => std::net::TcpStream::connect(a).is_ok(),
                (_, p) => std::os::unix::net::UnixStream::connect(p).is_ok(),
            };
            connected.then_some(())
        });
        let code = d.wait_exit(T);
        let err = d.stderr();
        assert_eq!(code, 2, "{err}");
        assert!(d.logged(&says), "{err}");
        assert!(
            d.logged("no step or worker was started; exiting with code 2"),
            "{err}"
        );
        assert!(!d.logged("worker web.0 started"), "{err}");
    }
    drop(dir);
}

/// The shipped socket unit listens where the shipped systemd config says, so the pair starts.
#[test]
fn the_shipped_socket_unit_and_config_agree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/drover.socket")).unwrap();
    let stream: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ListenStream="))
        .collect();
    let cfg = std::fs::read_to_string(format!("{root}/config/systemd.toml")).unwrap();
    let listen = cfg
        .split("[socket.http]")
        .nth(1)
        .and_then(|rest| {
            rest.lines()
                .find_map(|l| l.trim().strip_prefix("listen = \""))
                .and_then(|v| v.split('"').next())
        })
        .expect("config/systemd.toml: [socket.http] listen");
    assert_eq!(
        stream,
        vec![listen],
        "drover.socket ListenStream= vs config/systemd.toml listen"
    );
}

#[test]
fn systemd_analyze_verify_is_silent_on_the_units() {
    if !installed("systemd-analyze") {
        skip("systemd-analyze is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let units = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd");
    for u in ["drover.service", "drover.socket"] {
        // the units name /usr/bin/drover; verify them against the binary under test
        let text = std::fs::read_to_string(format!("{units}/{u}"))
            .unwrap()
            .replace("/usr/bin/drover", BIN);
        std::fs::write(dir.path().join(u), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("drover.service"))
        .arg(dir.path().join("drover.socket"))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify said:\n{text}"
    );
}

#[test]
fn the_service_unit_exposure_stays_ok() {
    // `--offline` needs systemd 250+; anything older prints its usage and is skipped
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/drover.service");
    let out = match std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager", unit])
        .output()
    {
        Ok(o) => o,
        Err(_) => {
            skip("systemd-analyze is not installed");
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(level) = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for drover.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
    else {
        skip("this systemd-analyze cannot score a unit offline");
        return;
    };
    // 8.3 ("EXPOSED") before the hardening; 3.4 now (3.3 before CAP_DAC_READ_SEARCH, which
    // reading the /proc fd directories of workers running as another user needs), with drover
    // still working under a real systemd (packaging/verify-systemd.sh)
    assert!(
        level <= 3.5,
        "drover.service exposure rose to {level}:\n{text}"
    );
}

/// The shipped unit and config work together as shipped (packaging/verify-systemd.sh boots them
/// under a real systemd): the config's status socket is in the directory the unit creates, so
/// `drover status` / `drover ctl --url unix:/run/drover/status.sock` work as root with nothing
/// else to set up; the workers and the pre-start step do not run as root.
#[test]
fn the_shipped_config_has_a_control_path_the_shipped_unit_provides() {
    let root = env!("CARGO_MANIFEST_DIR");
    let unit = std::fs::read_to_string(format!("{root}/systemd/drover.service")).unwrap();
    let text = std::fs::read_to_string(format!("{root}/config/systemd.toml")).unwrap();
    let cfg = drover::config::parse("config/systemd.toml", &text, &|_| None).unwrap();
    let Some(drover::config::ListenAddr::Unix(sock)) = &cfg.supervisor.status else {
        panic!(
            "config/systemd.toml: status is not a unix socket: {:?}",
            cfg.supervisor.status
        );
    };
    let dir = sock.parent().unwrap().strip_prefix("/run").unwrap();
    assert!(
        unit.lines()
            .any(|l| l == format!("RuntimeDirectory={}", dir.display())),
        "the unit does not create {}:\n{unit}",
        sock.parent().unwrap().display()
    );
    assert!(
        cfg.programs.iter().all(|p| p.run_as.is_some()),
        "a program runs as root"
    );
    assert!(
        cfg.prestart.iter().all(|s| s.run_as.is_some()),
        "a step runs as root"
    );
}

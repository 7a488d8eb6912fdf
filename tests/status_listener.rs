//! The status listener under abuse, and what `/healthz` measures: idle-connection floods, the
//! connection cap's eviction order, the first-byte timeout, liveness of the supervisor loop
//! (frozen from outside with ptrace), the Host allow-list, the bearer scheme's case, and the
//! unix socket's mode from the moment it exists.

mod common;
use common::*;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request on a new connection with an optional `Host`; (status code, body).
fn request(addr: &str, method: &str, path: &str, headers: &[&str]) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: 0\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Read until EOF or error; true if the peer closed the connection within `within`.
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
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

/// For each loopback connection to `port`, by its client's port: the bytes the server side has
/// not read yet (/proc/net/tcp's rx_queue).
fn unread_by_server(port: u16) -> std::collections::HashMap<u16, u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_of = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if port_of(f.get(1)?)? != port {
                return None;
            }
            let rx = u64::from_str_radix(f.get(4)?.split(':').nth(1)?, 16).ok()?;
            Some((port_of(f[2])?, rx))
        })
        .collect()
}

/// Wait until drover has read everything each of `conns` sent.
fn read_by_server(port: u16, conns: &[&TcpStream]) {
    let clients: Vec<u16> = conns
        .iter()
        .map(|s| s.local_addr().unwrap().port())
        .collect();
    wait_until(T, "drover to read what the connections sent", || {
        let unread = unread_by_server(port);
        clients
            .iter()
            .all(|c| unread.get(c) == Some(&0))
            .then_some(())
    });
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

// ------------------------------------------------------------------------ freezing the loop

/// Stops one thread (and only it) with PTRACE_SEIZE + PTRACE_INTERRUPT, until told to detach.
const TRACER: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
tid = int(sys.argv[1])
def check(r, what):
    if r != 0:
        print(what, os.strerror(ctypes.get_errno()), flush=True)
        sys.exit(1)
check(libc.ptrace(PTRACE_SEIZE, tid, None, None), "seize")
check(libc.ptrace(PTRACE_INTERRUPT, tid, None, None), "interrupt")
os.waitpid(tid, 0x40000000)  # __WALL: until it is in its ptrace stop
print("frozen", flush=True)
sys.stdin.read()             # until the test closes our stdin
check(libc.ptrace(PTRACE_DETACH, tid, None, None), "detach")
"#;

/// drover's supervisor loop (its main thread, tid = pid) stopped while its other threads run
/// on; it resumes on drop (the tracer detaches; were it killed, the kernel would detach too).
struct Frozen {
    tracer: std::process::Child,
}

impl Frozen {
    /// None (and a skip) where this machine does not allow it.
    fn loop_of(d: &Drover) -> Option<Frozen> {
        if !installed("python3") {
            skip("needs python3 to ptrace drover's loop thread");
            return None;
        }
        let script = d.path("tracer.py");
        std::fs::write(&script, TRACER).unwrap();
        let mut tracer = std::process::Command::new("python3")
            .arg(&script)
            .arg(d.pid.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let mut out = std::io::BufReader::new(tracer.stdout.take().unwrap());
        let _ = std::io::BufRead::read_line(&mut out, &mut line);
        if line.trim() != "frozen" {
            let _ = tracer.wait();
            skip(&format!("cannot ptrace drover's loop thread here: {line}"));
            return None;
        }
        Some(Frozen { tracer })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        drop(self.tracer.stdin.take());
        let _ = self.tracer.wait();
    }
}

// ------------------------------------------------------------------------ the hold

/// `n` connections that never send a byte; each one the server closes is opened again at once
/// (at most `per_s` a second). Returns the reconnects made.
fn hold(addr: SocketAddr, n: usize, per_s: u64, opened: &AtomicBool, stop: &AtomicBool) -> u64 {
    let connect = || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_nonblocking(true).ok()?;
        Some(s)
    };
    let mut conns: Vec<Option<TcpStream>> = (0..n).map(|_| connect()).collect();
    opened.store(true, Ordering::SeqCst);
    let (mut reconnects, t0) = (0u64, Instant::now());
    while !stop.load(Ordering::SeqCst) {
        let mut fds: Vec<libc::pollfd> = conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `fds` is a valid array of pollfd of the given length for the call's duration.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 5) };
        for (c, p) in conns.iter_mut().zip(&fds) {
            let Some(s) = c.as_mut().filter(|_| p.revents != 0) else {
                continue;
            };
            let gone = match s.read(&mut [0u8; 64]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            if gone {
                *c = None;
            }
        }
        for c in conns.iter_mut().filter(|c| c.is_none()) {
            if reconnects >= per_s * (t0.elapsed().as_millis() as u64 + 1000) / 1000 {
                break;
            }
            *c = connect();
            reconnects += 1;
        }
    }
    reconnects
}

#[test]
fn healthz_answers_every_probe_while_300_idle_connections_are_held_and_reopened() {
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    let sa: SocketAddr = addr.parse().unwrap();
    let (opened, stop) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let attacker = {
        let (opened, stop) = (opened.clone(), stop.clone());
        std::thread::spawn(move || hold(sa, 300, 200, &opened, &stop))
    };
    wait_until(T, "300 idle connections opened", || {
        opened.load(Ordering::SeqCst).then_some(())
    });
    // ~200 probes over ~10 s, a new connection each, each given 3 s (the kubelet gives 2)
    let (mut answered, mut failed) = (vec![], vec![]);
    let t0 = Instant::now();
    for i in 0..200 {
        let start = Instant::now();
        let got = (|| {
            let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(3)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .ok()?;
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            Some(String::from_utf8_lossy(&buf).into_owned())
        })();
        let took = start.elapsed();
        match got {
            Some(r) if r.starts_with("HTTP/1.1 200") && took <= Duration::from_secs(3) => {
                answered.push(took)
            }
            other => failed.push((i, took, other.unwrap_or_default())),
        }
        std::thread::sleep(Duration::from_millis(50).saturating_sub(start.elapsed()));
    }
    let seconds = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let reconnects = attacker.join().unwrap();
    answered.sort();
    let pct = |q: f64| {
        answered
            .get(((answered.len() as f64 - 1.0) * q) as usize)
            .copied()
    };
    println!(
        "/healthz under the hold: {} of 200 answered, p50 {:?}, p99 {:?}, max {:?}; the flood reconnected {:.0}/s",
        answered.len(),
        pct(0.5),
        pct(0.99),
        answered.last(),
        reconnects as f64 / seconds
    );
    assert!(
        failed.is_empty(),
        "{} of 200 probes failed, e.g. {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(http_get(&addr, "/healthz").is_some());
}

// ------------------------------------------------------------------------ eviction

#[test]
fn at_the_cap_half_a_request_line_is_evicted_and_a_request_in_flight_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-eviction-0123456789";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ncontrol_token_file = \"{}\"\n[program.w]\ncommand = [\"sleep\", \"100000\"]\n",
        token_file.display()
    ));
    d.wait_status("ready", T, |v| all_ready(v, 1));
    let addr = d.status_addr();
    let port = port_of(&addr);
    let Some(frozen) = Frozen::loop_of(&d) else {
        return;
    };
    // A request in flight: a restart the frozen loop cannot answer yet. (A slow /status cannot be
    // made slow on demand from outside; a request waiting on the loop is in flight the same way:
    // the connection's request has arrived whole and its response is not ready.)
    let mut in_flight = TcpStream::connect(&addr).unwrap();
    write!(
        in_flight,
        "POST /programs/w/restart HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_by_server(port, &[&in_flight]);
    // then, younger: a client that sent half a request line, and 254 more that sent a byte
    let setup = Instant::now();
    let mut half = TcpStream::connect(&addr).unwrap();
    half.write_all(b"GET /sta").unwrap();
    read_by_server(port, &[&half]);
    let mut others: Vec<TcpStream> = (0..254)
        .map(|_| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(b"G").unwrap();
            s
        })
        .collect();
    read_by_server(port, &others.iter().collect::<Vec<_>>());
    // `half` is closed by the 5 s header timeout anyway: only a closure well before it shows
    // the eviction
    let took = setup.elapsed();
    if took > Duration::from_millis(1500) {
        skip(&format!("this machine took {took:?} to set up 256 connections: too slow to tell an eviction from the header timeout"));
        return;
    }
    // 256 open: the 257th must evict the oldest that is not in a request: `half`
    let readyz = request(&addr, "GET", "/readyz", &["Host: 127.0.0.1"]);
    assert_eq!(
        readyz.as_ref().map(|r| r.0),
        Some(200),
        "a new connection at the cap is served: {readyz:?}"
    );
    assert!(
        closed_within(&mut half, Duration::from_millis(2500)),
        "the connection with half a request line was not evicted ({:?} after it opened)",
        setup.elapsed()
    );
    assert!(
        !closed_within(&mut others[0], Duration::from_millis(100)),
        "only one connection is evicted for one new one"
    );
    // the request in flight was kept, and is answered once the loop runs again
    drop(frozen);
    in_flight
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = in_flight.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "the request in flight at the cap was cut: {answer:?}"
    );
    others.clear();
}

#[test]
fn a_connection_that_sends_nothing_is_closed_before_one_that_sent_half_its_headers() {
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut slow = TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /status HTTP/1.1\r\n").unwrap();
    let t0 = Instant::now();
    assert!(
        closed_within(&mut silent, T),
        "a silent connection is closed"
    );
    let silent_closed = t0.elapsed();
    println!("a connection that sent nothing was closed after {silent_closed:?}");
    // the first-byte timeout (2 s) comes well before the header timeout (5 s)
    assert!(
        !closed_within(&mut slow, Duration::from_secs(1)),
        "a connection that sent part of its headers is given the header timeout, not the first-byte one ({silent_closed:?})"
    );
    assert!(closed_within(&mut slow, T), "and is closed after it");
}

#[test]
fn a_request_body_that_does_not_arrive_is_refused_instead_of_holding_its_slot() {
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"POST /reload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let t0 = Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    println!("a trickled body answered after {:?}", t0.elapsed());
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("did not arrive within 5s"), "{answer}");
}

// ------------------------------------------------------------------------ liveness

#[test]
fn healthz_says_whether_the_supervisor_loop_answers() {
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("ready", T, |v| all_ready(v, 1));
    let addr = d.status_addr();
    let (code, body) = http_get_status(&addr, "/healthz").unwrap();
    assert_eq!((code, body.as_str()), (200, r#"{"status":"ok"}"#));

    let Some(frozen) = Frozen::loop_of(&d) else {
        return;
    };
    // the server runs on its own thread: it answers, and says the loop does not
    let t0 = Instant::now();
    let got = http_get_status(&addr, "/healthz");
    let took = t0.elapsed();
    println!("/healthz with the loop frozen: {got:?} after {took:?}");
    let (code, body) = got.expect("/healthz answers with the loop frozen");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unresponsive");
    assert_eq!(v["why"], "the supervisor loop has not answered for 1s");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // reads of the published snapshot do not need the loop
    assert_eq!(http_get_status(&addr, "/readyz").map(|r| r.0), Some(200));
    assert!(http_get(&addr, "/status").is_some());

    drop(frozen);
    wait_until(T, "/healthz 200 once the loop runs again", || {
        http_get(&addr, "/healthz")
    });
}

// ------------------------------------------------------------------------ Host and bearer

#[test]
fn only_ip_addresses_localhost_and_the_listed_names_are_answered() {
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]"));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    let port = port_of(&addr);
    // a DNS-rebinding page: its own name, on every route
    for path in ["/status", "/healthz", "/metrics", "/", "/nonexistent"] {
        let (code, body) = request(&addr, "GET", path, &["Host: evil.example:9900"]).unwrap();
        assert_eq!(code, 421, "{path}: {body}");
        assert!(body.contains("supervisor.status_hosts"), "{path}: {body}");
    }
    let (code, _) = request(&addr, "POST", "/reload", &["Host: EVIL.example"]).unwrap();
    assert_eq!(code, 421);
    for host in [
        format!("Host: 127.0.0.1:{port}"),
        "Host: 127.0.0.1".into(),
        format!("Host: localhost:{port}"),
        "Host: LocalHost".into(),
        "Host: [::1]:9900".into(),
    ] {
        let r = request(&addr, "GET", "/status", &[&host]).map(|r| r.0);
        assert_eq!(r, Some(200), "{host}");
    }
    // no Host at all (HTTP/1.0): allowed
    let (code, _) = http_get_status(&addr, "/healthz").unwrap();
    assert_eq!(code, 200);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /status HTTP/1.0\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(
        out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200"),
        "{out}"
    );

    // a name of one's own
    let d = Drover::start(&one_program("command = [\"sleep\", \"100000\"]").replace(
        "[supervisor]\n",
        "[supervisor]\nstatus_hosts = [\"api.internal\"]\n",
    ));
    let addr = d.status_addr();
    let get = |host: &str| request(&addr, "GET", "/status", &[host]).map(|r| r.0);
    assert_eq!(get("Host: api.internal:9900"), Some(200));
    assert_eq!(get("Host: API.Internal"), Some(200));
    assert_eq!(get("Host: 127.0.0.1"), Some(200));
    assert_eq!(get("Host: evil.example"), Some(421));

    // any name
    let d = Drover::start(
        &one_program("command = [\"sleep\", \"100000\"]")
            .replace("[supervisor]\n", "[supervisor]\nstatus_hosts = [\"*\"]\n"),
    );
    let addr = d.status_addr();
    let r = request(&addr, "GET", "/status", &["Host: evil.example:9900"]).map(|r| r.0);
    assert_eq!(r, Some(200));
}

#[test]
fn the_bearer_scheme_is_accepted_in_any_case() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-lowercase-bearer-0123";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).unwrap();
    let d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ncontrol_token_file = \"{}\"\n[program.w]\ncommand = [\"sleep\", \"100000\"]\n",
        token_file.display()
    ));
    d.wait_status("running", T, |v| Drover::worker_pids(v, "w").len() == 1);
    let addr = d.status_addr();
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let auth = format!("Authorization: {scheme} {token}");
        let r = request(
            &addr,
            "POST",
            "/programs/w/restart",
            &["Host: 127.0.0.1", &auth],
        );
        let (code, body) = r.unwrap();
        assert_eq!(code, 200, "{scheme}: {body}");
        d.wait_status("the restart to finish", T, |v| {
            v["programs"][0]["rolling"] == false
        });
    }
    let auth = format!("Authorization: bearer {}", token.to_uppercase());
    let r = request(
        &addr,
        "POST",
        "/programs/w/restart",
        &["Host: 127.0.0.1", &auth],
    );
    assert_eq!(
        r.map(|r| r.0),
        Some(401),
        "the token itself is compared exactly"
    );
}

// ------------------------------------------------------------------------ the unix socket

#[test]
fn the_unix_status_socket_is_never_world_connectable_even_under_umask_000() {
    if !installed("strace") {
        skip("needs strace to hold drover between creating the socket and its chmod");
        return;
    }
    // strace delays drover's chmod(2) by 2 s: the socket file's mode in between is what bind(2)
    // gave it, the window any other local user had to connect
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("status.sock");
    let config = format!(
        "[supervisor]\nstatus = \"unix:{}\"\n[program.w]\ncommand = [\"sh\", \"-c\", \"umask > {{dir}}/umask; exec sleep 100000\"]\n",
        sock.display()
    );
    let d = Drover::start_with(
        &config,
        &[],
        &[
            "strace",
            "-f",
            "-qq",
            "-o",
            "/dev/null",
            "-e",
            "trace=chmod,fchmodat",
            "-e",
            "inject=chmod,fchmodat:delay_enter=2000000",
            "sh",
            "-c",
            "umask 000; exec \"$0\" \"$@\"",
        ],
    );
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let meta = wait_until(T, "the status socket to exist", || {
        std::fs::symlink_metadata(&sock).ok()
    });
    assert!(meta.file_type().is_socket());
    let mode = meta.permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "the status socket was created {mode:o} (before its chmod) under umask 000"
    );
    // and once drover runs: still 0600, and the workers have the umask drover was given
    let url = format!("unix:{}", sock.display());
    wait_until(T, "drover status over the unix socket", || {
        let out = std::process::Command::new(BIN)
            .args(["status", "--url", &url])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let umask = wait_until(T, "the worker to write its umask", || {
        std::fs::read_to_string(d.path("umask"))
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert_eq!(
        umask.trim(),
        "0000",
        "drover restores its umask after the bind"
    );
}

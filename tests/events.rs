//! `GET /events` and `drover events` with a real drover, real workers and real signals.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{http_get, kill, wait_until, Drover, T};

/// One event as read off the stream.
#[derive(Debug, Clone)]
struct Ev {
    id: Option<u64>,
    kind: String,
    data: serde_json::Value,
}

/// An SSE client on its own thread: each event read is sent on `rx`; `raw` gets every byte.
struct Stream {
    rx: mpsc::Receiver<Ev>,
    /// the whole response once the connection has ended
    done: mpsc::Receiver<String>,
}

fn connect(addr: &str, path: &str, headers: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect to the status endpoint");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{headers}\r\n"
    )
    .unwrap();
    s
}

/// `drover events ARGS`, its stdout's lines arriving on the receiver.
fn events_cli(args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut cli = std::process::Command::new(common::BIN)
        .arg("events")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = cli.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (cli, rx)
}

/// A stream of /events whose client never reads, with a 1 KiB receive window.
fn stalled_stream(addr: &str) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(1024).unwrap();
    let a: std::net::SocketAddr = addr.parse().unwrap();
    sock.connect(&a.into()).unwrap();
    let mut s: TcpStream = sock.into();
    write!(s, "GET /events HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    s
}

fn follow(addr: &str, path: &str, headers: &str) -> Stream {
    let s = connect(addr, path, headers);
    let (tx, rx) = mpsc::channel();
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(s);
        let mut all = String::new();
        let (mut id, mut kind, mut data) = (None, String::new(), String::new());
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            all.push_str(&line);
            let l = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = l.strip_prefix("id: ") {
                id = v.parse().ok();
            } else if let Some(v) = l.strip_prefix("event: ") {
                kind = v.to_string();
            } else if let Some(v) = l.strip_prefix("data: ") {
                data = v.to_string();
            } else if l.is_empty() && !kind.is_empty() {
                let ev = Ev {
                    id: id.take(),
                    kind: std::mem::take(&mut kind),
                    data: serde_json::from_str(&data).unwrap_or_default(),
                };
                let _ = tx.send(ev);
            }
        }
        let _ = done_tx.send(all);
    });
    Stream { rx, done }
}

impl Stream {
    /// The next event that satisfies `want`, skipping others.
    fn next_where(&self, what: &str, want: impl Fn(&Ev) -> bool) -> Ev {
        let end = Instant::now() + T;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) if want(&ev) => return ev,
                Ok(_) => {}
                Err(_) => panic!("timed out waiting on /events for {what}"),
            }
        }
    }

    /// Every event already read, without waiting.
    fn drain(&self) -> Vec<Ev> {
        self.rx.try_iter().collect()
    }
}

fn metric(addr: &str, name: &str) -> Option<f64> {
    let m = http_get(addr, "/metrics")?;
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn pid_of(d: &Drover, program: &str) -> i64 {
    let v = d.wait_status("a worker running", T, |v| {
        !Drover::worker_pids(v, program).is_empty()
    });
    Drover::worker_pids(&v, program)[0]
}

const SECRET: &str = "s3cr3t-env-value-7731";
const ARGV_SECRET: &str = "argv-secret-5512";

/// A SIGKILLed worker's exit arrives on /events, then its replacement's start; /events is
/// public even with a token configured, and never shows the environment or argv.
#[test]
fn a_killed_worker_exit_and_its_replacement_arrive_without_the_token_or_secrets() {
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\ncontrol_token_file = \"{{dir}}/token\"\n\n[program.w]\ncommand = [\"sh\", \"-c\", \"exec sleep 1000\", \"{ARGV_SECRET}\"]\nenv = {{ SECRET = \"{SECRET}\" }}\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-123456789012345678901234567890\n").unwrap();
    let cfg = cfg.replace("{dir}", dir.path().to_str().unwrap());
    let mut d = Drover::start(&cfg);
    d.keep.push(dir);
    let addr = d.status_addr();
    let pid = pid_of(&d, "w");
    // no Authorization header: events are public, like /status
    let s = follow(&addr, "/events?since=0", "");
    s.next_where("the first worker's start", |e| {
        e.kind == "worker_started" && e.data["pid"] == pid
    });
    kill(pid, libc::SIGKILL);
    let exited = s.next_where("worker_exited of the killed worker", |e| {
        e.kind == "worker_exited" && e.data["pid"] == pid
    });
    assert_eq!(exited.data["signal"], "SIGKILL", "{:?}", exited.data);
    assert_eq!(exited.data["signal_number"], 9);
    assert_eq!(exited.data["program"], "w");
    assert_eq!(exited.data["worker"], 0);
    assert_eq!(exited.data["restart"], true);
    assert!(exited.data["time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(exited.data["id"].as_u64(), exited.id);
    let started = s.next_where("the replacement's worker_started", |e| {
        e.kind == "worker_started"
    });
    assert_eq!(started.data["worker"], 0);
    assert_ne!(started.data["pid"], pid);
    assert!(started.id > exited.id);
    d.stop_ok();
    let all = s
        .done
        .recv_timeout(T)
        .expect("the stream ends when drover exits");
    assert!(!all.contains(SECRET), "an env value on /events:\n{all}");
    assert!(!all.contains(ARGV_SECRET), "argv on /events:\n{all}");
}

/// Reconnecting with Last-Event-ID replays exactly the events missed, in order; TERM sends
/// shutting_down and ends the stream with HTTP's final chunk.
#[test]
fn last_event_id_replays_what_was_missed_and_term_ends_the_stream() {
    let mut d = Drover::start(&common::one_program(
        "command = \"sleep 1000\"\nworkers = 2",
    ));
    let addr = d.status_addr();
    let pid = pid_of(&d, "w");
    let s = follow(&addr, "/events?since=0", "");
    let seen = s.next_where("worker_started", |e| e.kind == "worker_started");
    let last = seen.id.unwrap();
    drop(s);
    // while nobody listens: a kill, its exit and the replacement
    kill(pid, libc::SIGKILL);
    let replacement = wait_until(T, "the replacement to start", || {
        let v = d.status();
        let pids = Drover::worker_pids(&v, "w");
        let new: Vec<i64> = pids.iter().copied().filter(|p| *p != pid).collect();
        (pids.len() == 2 && new.len() == 2).then_some(v)
    });
    let known = Drover::worker_pids(&replacement, "w");
    let again = follow(&addr, "/events", &format!("Last-Event-ID: {last}\r\n"));
    // exactly the ids after `last`, in order, through the exit and the replacement's start
    let mut got = vec![];
    loop {
        let e = again.next_where("a replayed event", |_| true);
        assert_ne!(e.kind, "events_lost", "{e:?}");
        got.push(e.clone());
        if e.kind == "worker_started"
            && e.data["pid"] != pid
            && known.contains(&e.data["pid"].as_i64().unwrap_or(0))
            && got.iter().any(|g| g.kind == "worker_exited")
        {
            break;
        }
    }
    let ids: Vec<u64> = got.iter().map(|e| e.id.unwrap()).collect();
    let want: Vec<u64> = (last + 1..=last + ids.len() as u64).collect();
    assert_eq!(ids, want, "{got:?}");
    let exit = got.iter().find(|e| e.kind == "worker_exited").unwrap();
    assert_eq!(exit.data["pid"], pid);
    d.signal(libc::SIGTERM);
    let sd = again.next_where("shutting_down", |e| e.kind == "shutting_down");
    assert_eq!(sd.data["why"], "TERM received");
    let all = again.done.recv_timeout(T).expect("the stream ends");
    assert!(all.ends_with("0\r\n\r\n"), "not a clean end:\n{all}");
    assert_eq!(d.wait_exit(T), 0);
}

/// An id the backlog no longer holds gives events_lost first; one never issued too; a client
/// whose socket does not drain is closed and counted while another keeps receiving.
#[test]
fn a_stalled_client_is_dropped_and_an_old_id_gives_events_lost() {
    let mut d = Drover::start(&common::one_program("command = \"sleep 1000\""));
    let addr = d.status_addr();
    pid_of(&d, "w");
    // a client that never reads, with a small receive window
    let stalled = stalled_stream(&addr);
    let live = follow(&addr, "/events", "");
    wait_until(T, "two streams open", || {
        (metric(&addr, "drover_events_streams")? >= 2.0).then_some(())
    });
    // bursts of 3,000 workers that exit at once (6,000 events each, far beyond the backlog)
    // until the stalled client is dropped: how much its socket buffers hold is the kernel's
    let file = d.path("drover.toml");
    let base = std::fs::read_to_string(&file)
        .unwrap()
        .replace("[supervisor]\n", "[supervisor]\non_all_exited = \"stay\"\n");
    let mut round = 0;
    let (dropped, last) = loop {
        round += 1;
        let burst = format!(
            "\n[program.burst{round}]\ncommand = \"true\"\nrestart = \"never\"\nworkers = 3000\n"
        );
        std::fs::write(&file, format!("{base}{burst}")).unwrap();
        d.signal(libc::SIGHUP);
        let name = format!("burst{round}");
        let last = live.next_where("the burst's last exit", |e| {
            e.kind == "worker_exited"
                && e.data["program"] == name.as_str()
                && e.data["worker"] == 2999
        });
        let dropped = metric(&addr, "drover_events_dropped_clients_total").unwrap_or(0.0);
        if dropped >= 1.0 || round == 4 {
            break (dropped, last);
        }
    };
    assert_eq!(
        dropped,
        1.0,
        "the stalled client was not dropped after {round} bursts\n{}",
        d.stderr()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // the live one kept receiving through it all
    assert!(last.id.unwrap() > 6000, "{last:?}");
    // the stalled one's connection was closed: what it has buffered ends in EOF
    let mut stalled = stalled;
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut sink = vec![];
    let ended = stalled.read_to_end(&mut sink);
    assert!(
        ended.is_ok()
            || matches!(&ended, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "{ended:?}"
    );
    // an id older than the backlog
    let old = follow(&addr, "/events", "Last-Event-ID: 1\r\n");
    let lost = old.next_where("events_lost", |_| true);
    assert_eq!(lost.kind, "events_lost", "{lost:?}");
    assert!(lost.id.is_none());
    assert!(
        lost.data["missed"].as_u64().unwrap() > 4000,
        "{:?}",
        lost.data
    );
    let next = old.next_where("the oldest kept event", |_| true);
    assert_eq!(
        next.id.unwrap(),
        1 + lost.data["missed"].as_u64().unwrap() + 1
    );
    // an id never issued (another run's, or garbage)
    for bad in [u64::MAX.to_string(), "12abc".to_string()] {
        let s = follow(&addr, "/events", &format!("Last-Event-ID: {bad}\r\n"));
        let lost = s.next_where("events_lost", |_| true);
        assert_eq!(lost.kind, "events_lost", "{bad}: {lost:?}");
        assert!(
            lost.data["why"].as_str().unwrap().contains("replaying"),
            "{lost:?}"
        );
    }
    let _ = live.drain();
    d.stop_ok();
}

/// `drover events --json` prints each event's JSON as it happens and exits 0 when drover does;
/// unreachable, it exits 2 and says where it looked.
#[test]
fn drover_events_prints_json_lines_and_exits_with_drover() {
    let mut d = Drover::start(&common::one_program("command = \"sleep 1000\""));
    let addr = d.status_addr();
    let pid = pid_of(&d, "w");
    let (mut cli, rx) = events_cli(&["--json", "--url", &format!("http://{addr}")]);
    // the stream is open once drover counts it: then the kill is surely seen
    wait_until(T, "drover events connected", || {
        (metric(&addr, "drover_events_streams")? >= 1.0).then_some(())
    });
    kill(pid, libc::SIGKILL);
    let end = Instant::now() + T;
    let exited = loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("worker_exited printed by drover events");
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object a line");
        if v["type"] == "worker_exited" {
            break v;
        }
    };
    assert_eq!(exited["pid"], pid);
    assert_eq!(exited["signal_number"], 9);
    // Ctrl-C ends a follow with 0
    let mut second = std::process::Command::new(common::BIN)
        .args(["events", "--url", &format!("http://{addr}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until(T, "the second follower connected", || {
        (metric(&addr, "drover_events_streams")? >= 2.0).then_some(())
    });
    kill(second.id() as i64, libc::SIGINT);
    let st = wait_until(T, "drover events to end on SIGINT", || {
        second.try_wait().ok().flatten()
    });
    assert_eq!(st.code(), Some(0), "{st:?}");
    d.stop_ok();
    let st = wait_until(T, "drover events to exit", || cli.try_wait().ok().flatten());
    assert_eq!(st.code(), Some(0));

    let out = std::process::Command::new(common::BIN)
        .args(["events", "--url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("http://127.0.0.1:1"), "{err}");
}

/// 127 streams and a stalled one are open: the next is refused with 503, and /healthz and
/// /status keep answering while events flow to all of them.
#[test]
fn streams_are_capped_and_healthz_answers_beside_them() {
    let d = Drover::start(&common::one_program("command = \"sleep 1000\""));
    let addr = d.status_addr();
    let pid = pid_of(&d, "w");
    let mut open: Vec<TcpStream> = (0..127).map(|_| connect(&addr, "/events", "")).collect();
    let stalled = stalled_stream(&addr);
    open.push(stalled);
    wait_until(T, "128 streams open", || {
        (metric(&addr, "drover_events_streams")? == 128.0).then_some(())
    });
    let (code, body) = common::http_get_status(&addr, "/events").expect("an answer");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("128 event streams"), "{body}");
    // `drover events` at the cap says why and exits 1
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drover"))
        .args(["events", "--url", &format!("http://{addr}")])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("answered 503") && err.contains("128 event streams"),
        "{err}"
    );
    let live = follow_after_cap(&addr, &mut open);
    kill(pid, libc::SIGKILL);
    live.next_where("the kill on a stream beside 127 others", |e| {
        e.kind == "worker_exited" && e.data["pid"] == pid
    });
    for _ in 0..20 {
        let (code, body) = common::http_get_status(&addr, "/healthz").expect("/healthz answers");
        assert_eq!(code, 200, "{body}");
    }
    assert!(http_get(&addr, "/status").is_some());
    drop(open);
    wait_until(T, "every stream closed", || {
        (metric(&addr, "drover_events_streams")? <= 1.0).then_some(())
    });
}

/// Close one of the `open` streams to make room for a reader.
fn follow_after_cap(addr: &str, open: &mut Vec<TcpStream>) -> Stream {
    drop(open.remove(0));
    wait_until(T, "a slot free", || {
        (metric(addr, "drover_events_streams")? < 128.0).then_some(())
    });
    let s = follow(addr, "/events", "");
    // it starts from the newest event when drover takes it: counted, it sees what follows
    wait_until(T, "the reader's stream open", || {
        (metric(addr, "drover_events_streams")? == 128.0).then_some(())
    });
    s
}

/// Over a unix status socket too: `drover events` prints the events in words.
#[test]
fn drover_events_follows_over_a_unix_socket_in_words() {
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"unix:{dir}/status.sock\"\nshutdown_timeout = \"10s\"\n\n[program.w]\ncommand = \"sleep 1000\"\n",
    );
    let sock = d.path("status.sock");
    wait_until(T, "the status socket", || sock.exists().then_some(()));
    let url = format!("unix:{}", sock.display());
    let (mut cli, rx) = events_cli(&["--url", &url]);
    // drover's own answer over the socket says when the stream is open
    let status = |path: &str| -> Option<String> {
        let mut s = std::os::unix::net::UnixStream::connect(&sock).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
        let mut b = String::new();
        s.read_to_string(&mut b).ok()?;
        Some(b.split_once("\r\n\r\n")?.1.to_string())
    };
    wait_until(T, "drover events connected", || {
        let m = status("/metrics")?;
        m.lines()
            .any(|l| l == "drover_events_streams 1")
            .then_some(())
    });
    let pid = wait_until(T, "a worker", || {
        let v: serde_json::Value = serde_json::from_str(&status("/status")?).ok()?;
        Drover::worker_pids(&v, "w").first().copied()
    });
    kill(pid, libc::SIGKILL);
    let want = format!(" w.0 exited (SIGKILL, pid {pid}), restarting in ");
    let end = Instant::now() + T;
    loop {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no line with `{want}`"));
        if line.contains(&want) {
            break;
        }
    }
    d.stop_ok();
    let st = wait_until(T, "drover events to exit", || cli.try_wait().ok().flatten());
    assert_eq!(st.code(), Some(0));
}

/// With a token configured, callers without it get at most 112 of the 128 streams: the last
/// 16 are for the operator (`drover events` sends the token it can read), so anyone who can
/// connect cannot lock them out.
#[test]
fn the_last_streams_are_kept_for_callers_with_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tok-123456789012345678901234567890\n").unwrap();
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ncontrol_token_file = \"{}\"\n[program.w]\ncommand = \"sleep 1000\"\n",
        token.display()
    );
    let mut d = Drover::start(&cfg);
    let addr = d.status_addr();
    let open: Vec<TcpStream> = (0..112).map(|_| connect(&addr, "/events", "")).collect();
    wait_until(T, "112 public streams open", || {
        (metric(&addr, "drover_events_streams")? == 112.0).then_some(())
    });
    let (code, body) = common::http_get_status(&addr, "/events").expect("an answer");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("kept for callers with the control token"),
        "{body}"
    );
    // the operator's `drover events` still gets a place, and the events
    let token_file = token.to_str().unwrap();
    let (mut ev, rx) = events_cli(&[
        "--json",
        "--url",
        &format!("http://{addr}"),
        "--token-file",
        token_file,
    ]);
    wait_until(T, "the operator's stream counted", || {
        (metric(&addr, "drover_events_streams")? == 113.0).then_some(())
    });
    let pid = pid_of(&d, "w");
    kill(pid, libc::SIGKILL);
    let by = Instant::now() + T;
    let mut seen = None;
    while let Ok(line) = rx.recv_timeout(by.saturating_duration_since(Instant::now())) {
        if line.contains("\"worker_exited\"") && line.contains(&format!("\"pid\":{pid}")) {
            seen = Some(line);
            break;
        }
    }
    let _ = ev.kill();
    let _ = ev.wait();
    drop(open);
    d.stop_ok();
    assert!(seen.is_some(), "drover events with the token saw no exit");
}

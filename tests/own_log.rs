//! drover's own log never stops the event loop: with its stderr a pipe nobody reads, or its
//! journal socket not read, `/healthz` still answers, a killed worker is still replaced, what
//! could not be written is dropped, counted in `/metrics` and marked in the log, and the last
//! line still arrives at a clean exit.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::*;

/// A port nothing listens on now: drover's log, which would say the address, is not readable.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Two demo workers on fixed ports; `sup` goes into `[supervisor]`.
fn config(status: u16, http: u16, sup: &str) -> String {
    demo_web("2", sup, "")
        .replace(
            "status = \"127.0.0.1:0\"",
            &format!("status = \"127.0.0.1:{status}\""),
        )
        .replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{http}\""),
        )
}

fn pids(status: &str) -> Option<Vec<i64>> {
    let body = http_get(status, "/status")?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(Drover::worker_pids(&v, "web"))
}

/// Poll /status (not the log, which cannot be read) until both workers run.
fn two_workers(status: &str) -> Vec<i64> {
    wait_until(T, "two workers in /status", || {
        pids(status).filter(|p| p.len() == 2)
    })
}

/// `GET /exit/1` on the workers' socket: the worker that takes it exits 1; its pid, once drover
/// has reaped it (and so logs its exit next).
fn kill_a_worker(http: &str) -> i64 {
    let body = http_get(http, "/exit/1").expect("GET /exit/1 from a worker");
    let pid = body
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a pid in {body:?}"));
    wait_until(T, "drover to reap the killed worker", || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    });
    pid
}

/// The killed worker is gone from /status and a new one fills its place.
fn replaced(status: &str, killed: i64) -> Vec<i64> {
    wait_until(
        Duration::from_secs(10),
        "the killed worker replaced",
        || pids(status).filter(|p| p.len() == 2 && !p.contains(&killed)),
    )
}

fn dropped_total(status: &str) -> Option<u64> {
    let m = http_get(status, "/metrics")?;
    m.lines()
        .find_map(|l| l.strip_prefix("drover_log_lines_dropped_total "))?
        .trim()
        .parse()
        .ok()
}

/// `/healthz` answers; how long it took.
fn healthz_answers(status: &str) -> Duration {
    let t = Instant::now();
    let answer = http_get_status(status, "/healthz");
    let took = t.elapsed();
    assert!(
        answer.is_some() && took < Duration::from_secs(5),
        "/healthz with drover's log blocked: {answer:?} after {took:?}"
    );
    took
}

/// HUP until lines are dropped: each reload logs two lines, and the queue holds 1,024.
fn reload_until_dropped(d: &Drover, status: &str) -> (u64, u32) {
    let end = Instant::now() + Duration::from_secs(60);
    let mut hups = 0;
    loop {
        for _ in 0..50 {
            d.signal(libc::SIGHUP);
            hups += 1;
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Some(n) = dropped_total(status).filter(|n| *n > 0) {
            return (n, hups);
        }
        assert!(
            Instant::now() < end,
            "no log line dropped after {hups} HUPs"
        );
    }
}

fn pipe_size(fd: &OwnedFd) -> usize {
    // SAFETY: F_GETPIPE_SZ on a pipe this test owns; no memory is passed.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) as usize }
}

fn unread(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int, to `n`, which outlives the call.
    unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    n as usize
}

/// Everything the (non-blocking) read end holds now; None at end of file.
fn read_some(fd: &OwnedFd, into: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 65536];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => return None,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(nix::errno::Errno::EAGAIN) => return Some(()),
            Err(e) => panic!("reading drover's stderr: {e}"),
        }
    }
}

/// Fill what room is left in the pipe with newlines (drover writes each JSON line whole, so empty
/// lines land only between them) until not even one byte fits: drover's next line blocks.
fn top_off(w: &OwnedFd, r: &OwnedFd) {
    // the kernel merges a write into the last page only by its size modulo a page: fill the page
    // drover's lines are in first, then whole pages
    let page = 4096;
    let mut room = page - unread(r) % page;
    loop {
        match nix::unistd::write(w, &vec![b'\n'; room]) {
            Ok(_) => room = page,
            Err(nix::errno::Errno::EAGAIN) if room > 1 => room = 1,
            Err(nix::errno::Errno::EAGAIN) => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
}

fn json_lines(bytes: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn markers(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("log line(s) dropped: stderr was not being read"))
        })
        .map(|v| {
            assert_eq!(v["level"], "WARN", "{v}");
            v["dropped"].as_u64().unwrap_or(0)
        })
        .collect()
}

#[test]
fn a_full_stderr_pipe_does_not_stop_health_or_restarts_and_drops_are_counted_and_marked() {
    use nix::fcntl::OFlag;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
    let (sp, hp) = (free_port(), free_port());
    let (status, http) = (format!("127.0.0.1:{sp}"), format!("127.0.0.1:{hp}"));
    // drover's stderr is the pipe, opened anew through /proc: a blocking file description of its
    // own (the test's ends are non-blocking), and nothing else the test starts inherits it
    let redirect = format!(
        "exec \"$0\" \"$@\" 2>/proc/{}/fd/{}",
        std::process::id(),
        w.as_raw_fd()
    );
    let mut d = Drover::start_with(&config(sp, hp, ""), &[], &["sh", "-c", &redirect]);
    let size = pipe_size(&r);
    let first = two_workers(&status);
    println!(
        "pipe size {size} bytes, {} bytes of log at start",
        unread(&r)
    );
    wait_until(T, "drover's start-up lines in the pipe", || {
        (unread(&r) > 0).then_some(())
    });

    top_off(&w, &r);
    let full = unread(&r);
    println!("pipe full: {full} of {size} bytes unread");
    assert!(
        full > size - 4096,
        "the pipe is full: {full} of {size} bytes"
    );
    assert_eq!(
        nix::unistd::write(&w, b"\n"),
        Err(nix::errno::Errno::EAGAIN),
        "not one more byte fits"
    );
    // drover's end alone keeps the pipe open now, so its exit ends the file
    drop(w);

    // a worker's exit is logged: where drover writes on its loop, the loop now blocks for good
    let killed = kill_a_worker(&http);
    let took = healthz_answers(&status);
    println!("/healthz answered in {took:?} with stderr's pipe full");
    let now = replaced(&status, killed);
    println!("worker pid {killed} replaced while the pipe was full: {first:?} -> {now:?}");

    let (dropped, hups) = reload_until_dropped(&d, &status);
    println!("{dropped} log line(s) dropped after {hups} HUPs");
    assert_eq!(unread(&r), full, "nothing read the pipe meanwhile");
    let killed = kill_a_worker(&http);
    let took = healthz_answers(&status);
    println!("/healthz answered in {took:?} while lines were being dropped");
    replaced(&status, killed);

    // read the pipe: the queued lines arrive, then the marker of the gap
    let mut out = Vec::new();
    wait_until(T, "the dropped-lines marker on stderr", || {
        read_some(&r, &mut out);
        (!markers(&json_lines(&out)).is_empty()).then_some(())
    });
    let first_marker = markers(&json_lines(&out))[0];
    assert!(first_marker > 0, "the marker counts the dropped lines");
    let total = dropped_total(&status).expect("GET /metrics");
    assert!(
        total >= dropped,
        "the counter only grows: {total} < {dropped}"
    );

    d.signal(libc::SIGTERM);
    wait_until(T, "drover's stderr to close", || {
        read_some(&r, &mut out).is_none().then_some(())
    });
    assert_eq!(d.wait_exit(T), 0, "drover's exit after TERM");
    let lines = json_lines(&out);
    let marked: u64 = markers(&lines).iter().sum();
    println!(
        "markers: {:?}, {} JSON lines read",
        markers(&lines),
        lines.len()
    );
    assert!(
        marked >= total,
        "every dropped line is marked: {marked} marked, {total} counted"
    );
    assert_eq!(
        lines.last().and_then(|v| v["message"].as_str()),
        Some("all workers stopped; exiting with code 0"),
        "drover's last line"
    );
}

/// One native-protocol datagram's fields (`KEY=VALUE\n`, or `KEY\n<u64 LE length><bytes>\n`).
fn fields(mut d: &[u8]) -> Vec<(String, String)> {
    let mut out = vec![];
    while !d.is_empty() {
        let nl = d
            .iter()
            .position(|&b| b == b'\n')
            .expect("a field ends in \\n");
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            let k = String::from_utf8_lossy(&line[..eq]).into_owned();
            out.push((k, String::from_utf8_lossy(&line[eq + 1..]).into_owned()));
            d = &d[nl + 1..];
        } else {
            let k = String::from_utf8_lossy(line).into_owned();
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            let v = &d[nl + 9..nl + 9 + len];
            out.push((k, String::from_utf8_lossy(v).into_owned()));
            assert_eq!(d[nl + 9 + len], b'\n', "a binary field ends in \\n");
            d = &d[nl + 10 + len..];
        }
    }
    out
}

fn field<'a>(f: &'a [(String, String)], key: &str) -> Option<&'a str> {
    f.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Every datagram waiting on `sock` now (non-blocking), parsed.
fn receive(sock: &UnixDatagram, into: &mut Vec<Vec<(String, String)>>) {
    let mut buf = vec![0u8; 1 << 17];
    while let Ok(n) = sock.recv(&mut buf) {
        if n > 0 {
            into.push(fields(&buf[..n]));
        }
    }
}

#[test]
fn journald_lines_are_queued_and_a_stalled_journal_does_not_stop_drover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_nonblocking(true).unwrap();
    let (sp, hp) = (free_port(), free_port());
    let (status, http) = (format!("127.0.0.1:{sp}"), format!("127.0.0.1:{hp}"));
    let mut d = Drover::start_with(
        &config(sp, hp, "log_format = \"journald\""),
        &[("DROVER_JOURNAL_SOCKET", path.to_str().unwrap())],
        &[],
    );
    let mut got = vec![];
    let ready = wait_until(T, "a worker's ready line in the journal", || {
        receive(&sock, &mut got);
        got.iter()
            .find(|f| field(f, "MESSAGE").is_some_and(|m| m.contains(") ready in")))
            .cloned()
    });
    println!("{ready:?}");
    assert_eq!(field(&ready, "SYSLOG_IDENTIFIER"), Some("drover"));
    assert_eq!(field(&ready, "PRIORITY"), Some("5"), "info is notice");
    assert_eq!(field(&ready, "PROGRAM"), Some("web"));
    assert!(matches!(field(&ready, "WORKER"), Some("0" | "1")));
    assert!(field(&ready, "PID").is_some_and(|p| p.parse::<u32>().is_ok()));
    assert!(
        !d.stderr().contains(") ready in"),
        "the lines go to the journal, not stderr:\n{}",
        d.stderr()
    );
    two_workers(&status);

    // the journal stops reading: its socket fills, then drover's queue
    let (dropped, hups) = reload_until_dropped(&d, &status);
    println!("{dropped} journal entries dropped after {hups} HUPs");
    let killed = kill_a_worker(&http);
    let took = healthz_answers(&status);
    println!("/healthz answered in {took:?} with the journal stalled");
    replaced(&status, killed);

    let marker = wait_until(T, "the dropped-entries marker in the journal", || {
        receive(&sock, &mut got);
        got.iter()
            .find(|f| field(f, "MESSAGE").is_some_and(|m| m.contains("log line(s) dropped")))
            .cloned()
    });
    println!("{marker:?}");
    assert_eq!(
        field(&marker, "PRIORITY"),
        Some("4"),
        "the marker is a warning"
    );
    let n: u64 = field(&marker, "DROPPED").unwrap().parse().unwrap();
    assert!(n > 0, "the marker counts the dropped entries");

    d.signal(libc::SIGTERM);
    assert_eq!(d.wait_exit(T), 0, "drover's exit after TERM");
    receive(&sock, &mut got);
    assert_eq!(
        got.last().and_then(|f| field(f, "MESSAGE")),
        Some("all workers stopped; exiting with code 0"),
        "drover's last entry"
    );
}

#[test]
fn a_full_stdout_pipe_does_not_keep_drover_from_exiting() {
    use nix::fcntl::OFlag;
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap();
    // workers' output goes to drover's stdout: a pipe nobody reads, filled by a flooding worker
    let redirect = format!(
        "exec \"$0\" \"$@\" 1>/proc/{}/fd/{}",
        std::process::id(),
        w.as_raw_fd()
    );
    let mut d = Drover::start_with(
        &one_program("command = [\"sh\", \"-c\", \"yes flood\"]\nstop_timeout = \"2s\""),
        &[],
        &["sh", "-c", &redirect],
    );
    let st = d.wait_status("the flooding worker running", T, |v| {
        Drover::worker_pids(v, "w").len() == 1
    });
    let worker = Drover::worker_pids(&st, "w")[0];
    wait_until(T, "drover's stdout full", || {
        top_off(&w, &r);
        (nix::unistd::write(&w, b"\n") == Err(nix::errno::Errno::EAGAIN)).then_some(())
    });
    // the backpressure has reached the worker: `yes` is blocked writing to its own pipe, so
    // drover's writer holds lines it cannot write when TERM comes
    wait_until(T, "the flooding worker blocked on its output pipe", || {
        let yes = std::fs::read_to_string(format!("/proc/{worker}/task/{worker}/children"))
            .unwrap_or_default();
        let own = worker.to_string();
        let blocked = yes.split_whitespace().chain([own.as_str()]).any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/wchan"))
                .is_ok_and(|w| w.contains("pipe_write"))
        });
        blocked.then_some(())
    });
    println!(
        "stdout full: {} of {} bytes unread",
        unread(&r),
        pipe_size(&r)
    );

    d.signal(libc::SIGTERM);
    let t = Instant::now();
    assert_eq!(
        d.wait_exit(T),
        0,
        "drover's exit after TERM\n{}",
        d.stderr()
    );
    println!(
        "drover exited {:?} after TERM with stdout full",
        t.elapsed()
    );
    assert!(
        d.logged("stdout took no line for"),
        "the lost output is said:\n{}",
        d.stderr()
    );
    assert!(d.logged("all workers stopped; exiting with code 0"));
}

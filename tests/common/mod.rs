//! Shared helpers for the integration tests: run the real binary in a temp dir, read back the
//! addresses it bound (port 0), poll with deadlines, and kill everything on drop.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_drover");

/// Poll `cond` until it returns Some or the deadline passes.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub struct Drover {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub pid: i32,
    exit: Option<std::process::ExitStatus>,
    /// other temp dirs that must live as long as this drover
    pub keep: Vec<tempfile::TempDir>,
}

impl Drover {
    /// Start `drover run -c <dir>/drover.toml` with the given config text. `{dir}` in the text
    /// is replaced by the temp dir, `{bin}` by the drover binary.
    pub fn start(config: &str) -> Drover {
        Self::start_with(config, &[], &[])
    }

    /// `prefix` runs drover under another command (e.g. `unshare --pid --fork`).
    pub fn start_with(config: &str, env: &[(&str, &str)], prefix: &[&str]) -> Drover {
        let dir = tempfile::tempdir().unwrap();
        let text = config
            .replace("{dir}", dir.path().to_str().unwrap())
            .replace("{bin}", BIN);
        let file = dir.path().join("drover.toml");
        std::fs::write(&file, text).unwrap();
        let args = ["run".to_string(), "-c".into(), file.display().to_string()];
        Self::spawn(dir, &args, env, prefix)
    }

    /// `drover <args>` (one-line mode: `run [flags] -- COMMAND`) in a temp dir; `{bin}` in the
    /// arguments is the drover binary.
    pub fn start_args(args: &[&str], env: &[(&str, &str)], prefix: &[&str]) -> Drover {
        let dir = tempfile::tempdir().unwrap();
        let args: Vec<String> = args.iter().map(|a| a.replace("{bin}", BIN)).collect();
        Self::spawn(dir, &args, env, prefix)
    }

    fn spawn(
        dir: tempfile::TempDir,
        args: &[String],
        env: &[(&str, &str)],
        prefix: &[&str],
    ) -> Drover {
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.args(args);
        // its own process group, so a failed test can kill everything it started (and, under
        // `unshare --kill-child`, the namespace with it)
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.current_dir(dir.path())
            .env_remove("DROVER_CONFIG")
            .env("DROVER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn drover");
        let pid = child.id() as i32;
        Drover {
            child: Some(child),
            dir,
            pid,
            exit: None,
            keep: vec![],
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.log")).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.path("stdout.log")).unwrap_or_default()
    }

    /// The address logged after `marker` (e.g. "socket http listening on ").
    pub fn logged_addr(&self, marker: &str) -> String {
        wait_until(Duration::from_secs(20), marker, || {
            let log = self.stderr();
            let i = log.find(marker)?;
            let rest = &log[i + marker.len()..];
            let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == ',')?;
            Some(rest[..end].to_string())
        })
    }

    pub fn status_addr(&self) -> String {
        self.logged_addr("status endpoint on ")
    }

    pub fn status(&self) -> serde_json::Value {
        let addr = self.status_addr();
        let body = http_get(&addr, "/status").expect("GET /status");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// Poll /status until `cond` holds on it.
    pub fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let addr = self.status_addr();
        let end = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(body) = http_get(&addr, "/status") {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                    if cond(&v) {
                        return v;
                    }
                }
                last = body;
            }
            if Instant::now() > end {
                // show what drover saw and said, so a failure in CI explains itself
                let log = self.stderr();
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                panic!("timed out after {timeout:?} waiting for: {what}\nlast /status: {last}\ndrover log (tail):\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn worker_pids(v: &serde_json::Value, program: &str) -> Vec<i64> {
        v["programs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == program)
            .flat_map(|p| p["workers"].as_array().unwrap().iter())
            .filter_map(|w| w["pid"].as_i64())
            .collect()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Wait for drover to exit; returns its exit code (or 128+signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        if let Some(st) = self.exit {
            return code_of(st);
        }
        let child = self.child.as_mut().unwrap();
        let st = wait_until(timeout, "drover to exit", || {
            child.try_wait().ok().flatten()
        });
        self.exit = Some(st);
        code_of(st)
    }
}

fn code_of(st: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

impl Drop for Drover {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.exit.is_none() {
                // SIGKILL to drover's group (drover, or unshare and the drover it forked): the
                // guard, or the end of the namespace, then kills every worker group it started
                // SAFETY: kill(2) on the process group this test started.
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A tiny HTTP/1.0 GET; None if the connection fails.
pub fn http_get(addr: &str, path: &str) -> Option<String> {
    let (status, body) = http_get_status(addr, path)?;
    (status == 200).then_some(body)
}

pub fn http_get_status(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // the address connected to, as a real client sends it (the status listener answers only
    // IP addresses, localhost and the names in supervisor.status_hosts)
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Send `sig` to process `pid` (panics when it is gone: the tests send to processes they saw).
pub fn kill(pid: i64, sig: i32) {
    let sig = nix::sys::signal::Signal::try_from(sig).expect("a signal number");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).expect("kill(2)");
}

/// Alive and not a zombie.
pub fn alive(pid: i64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X') | None)
        }
        Err(_) => false,
    }
}

pub fn read_pids(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

pub fn port_free(addr: &str) -> bool {
    std::net::TcpListener::bind(addr).is_ok()
}

/// Minimal config around one program.
pub fn one_program(program: &str) -> String {
    format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\nshutdown_timeout = \"10s\"\n\n[program.w]\n{program}\n"
    )
}

/// A raw HTTP/1.0 request with optional body and bearer token: (status code, body).
pub fn http_req(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).ok()?;
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

/// Outcome counts of a bounded loopback load.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadStats {
    pub ok: u64,
    /// a non-2xx answer
    pub failed: u64,
    /// connect() refused
    pub refused: u64,
    /// connection reset or closed without a full answer, after connecting
    pub inflight_errors: u64,
}

impl LoadStats {
    pub fn total(&self) -> u64 {
        self.ok + self.failed + self.refused + self.inflight_errors
    }
}

impl std::fmt::Display for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "requests {}, ok {}, failed {}, refused {}, in-flight errors {}",
            self.total(),
            self.ok,
            self.failed,
            self.refused,
            self.inflight_errors
        )
    }
}

/// `concurrency` threads each doing one request per connection until `stop` is set.
pub fn start_load(
    addr: &str,
    path: &str,
    concurrency: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<std::thread::JoinHandle<LoadStats>> {
    (0..concurrency)
        .map(|_| {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            let path = path.to_string();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut st = LoadStats::default();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline
                {
                    let mut s =
                        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                            Ok(s) => s,
                            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                                st.refused += 1;
                                continue;
                            }
                            Err(_) => {
                                st.inflight_errors += 1;
                                continue;
                            }
                        };
                    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
                    let req =
                        format!("GET {path} HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n");
                    if s.write_all(req.as_bytes()).is_err() {
                        st.inflight_errors += 1;
                        continue;
                    }
                    let mut buf = Vec::with_capacity(512);
                    match s.read_to_end(&mut buf) {
                        Ok(_)
                            if buf.starts_with(b"HTTP/1.1 2") || buf.starts_with(b"HTTP/1.0 2") =>
                        {
                            st.ok += 1
                        }
                        Ok(_) if buf.is_empty() => st.inflight_errors += 1,
                        Ok(_) => st.failed += 1,
                        Err(_) => st.inflight_errors += 1,
                    }
                }
                st
            })
        })
        .collect()
}

pub fn finish_load(handles: Vec<std::thread::JoinHandle<LoadStats>>) -> LoadStats {
    let mut total = LoadStats::default();
    for h in handles {
        let s = h.join().unwrap();
        total.ok += s.ok;
        total.failed += s.failed;
        total.refused += s.refused;
        total.inflight_errors += s.inflight_errors;
    }
    total
}

/// A Python with fastapi and uvicorn (tests/run.sh makes one in .venv), or None.
pub fn fastapi_python() -> Option<String> {
    let cand = std::env::var("DROVER_TEST_PYTHON")
        .ok()
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let ok = std::process::Command::new(&cand)
        .args(["-c", "import fastapi, uvicorn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok.then_some(cand)
}

/// drover config running the example FastAPI app under `uvicorn --fd 3`.
pub fn fastapi_cfg(py: &str, workers: u32, sup_extra: &str) -> String {
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/fastapi");
    format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "20s"
{sup_extra}
[socket.http]
listen = "127.0.0.1:0"
backlog = 2048
[program.api]
command = ["{py}", "-m", "uvicorn", "main:app", "--fd", "3", "--no-access-log", "--log-level", "warning"]
sockets = ["http"]
workers = {workers}
cwd = "{app}"
stop_timeout = "10s"
"#
    )
}

/// drover config with one program `web` of demo workers on a port-0 socket. `workers` is TOML
/// (`2` or `"auto"`); the extras go at the end of `[supervisor]` and of `[program.web]`.
pub fn demo_web(workers: &str, supervisor_extra: &str, program_extra: &str) -> String {
    format!(
        r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "10s"
{supervisor_extra}
[socket.http]
listen = "127.0.0.1:0"
[program.web]
command = ["{{bin}}", "demo-worker"]
sockets = ["http"]
workers = {workers}
stop_timeout = "5s"
{program_extra}
"#
    )
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

/// Whether `program` can be run here (tests print SKIPPED without it).
pub fn installed(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok()
}

/// A test that cannot run here says why: `SKIPPED: reason` on its output, and a line in the
/// skip log (`$DROVER_SKIP_LOG`, else target/skipped.log) that `tests/run.sh` counts and prints
/// at the end, because `cargo test` hides the output of a test that passes.
pub fn skip(reason: &str) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unknown test")
        .to_string();
    println!("SKIPPED: {reason}");
    let log = std::env::var("DROVER_SKIP_LOG")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/skipped.log").to_string());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
    {
        let _ = writeln!(f, "{test}: {reason}");
    }
}

/// How long a test waits for anything drover should do within seconds.
pub const T: Duration = Duration::from_secs(30);

/// The first program has exactly `n` workers and every one is ready.
pub fn all_ready(v: &serde_json::Value, n: usize) -> bool {
    let ws = v["programs"][0]["workers"].as_array().unwrap();
    ws.len() == n && ws.iter().all(|w| w["ready"] == true)
}

impl Drover {
    /// TERM, then drover exits 0 within `T`: the clean shutdown every test ends with.
    pub fn stop_ok(&mut self) {
        self.signal(libc::SIGTERM);
        let code = self.wait_exit(T);
        assert_eq!(code, 0, "drover's exit after TERM\n{}", self.stderr());
    }

    /// drover's own log, parsed: it writes JSON lines when stderr is not a terminal, as here.
    /// Lines that are not JSON (a worker's output under `log = "inherit"`) are left out.
    pub fn log(&self) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// The message of every log line, in order.
    pub fn messages(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter_map(|v| v["message"].as_str().map(String::from))
            .collect()
    }

    /// Some log message contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.messages().iter().any(|m| m.contains(text))
    }
}

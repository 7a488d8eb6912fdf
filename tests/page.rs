//! The web status page, rendered for real in headless Chromium (tests/run.sh installs Debian's
//! chromium): its worker table must show the live pids, and its history charts must draw data
//! under the page's own Content-Security-Policy.
//!
//! These pages are opened with `?poll`: the page then polls /status instead of following
//! /events, since headless chromium's `--virtual-time-budget` never runs out while a request
//! (the event stream) is open. `the_page_follows_events` opens it without, in a browser left
//! open, and sees drover count its stream. Every run is killed (and fails) after 60 s.

mod common;
use common::*;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// One headless run against `url` with `extra` flags, in virtual time (5 s of it).
fn headless(
    chrome: &str,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
    let mut flags = vec!["--virtual-time-budget=5000"];
    flags.extend_from_slice(extra);
    chromium_run(chrome, profile, &flags, url)
}

/// Chromium's command line for one headless run against `url`, with `extra` flags, started.
fn chromium_start(
    chrome: &str,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
    out: std::process::Stdio,
) -> std::process::Child {
    std::process::Command::new(chrome)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run chromium")
}

/// One headless run to its end; killed, and the test failed, after `CHROMIUM_DEADLINE`.
fn chromium_run(
    chrome: &str,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
    let child = chromium_start(chrome, profile, extra, url, std::process::Stdio::piped());
    // a page that never lets virtual time run out (a request left open) must fail the test,
    // not hang it: chromium is killed at the deadline
    let pid = child.id() as i32;
    let (done, finished) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if finished.recv_timeout(CHROMIUM_DEADLINE).is_err() {
            // SAFETY: kill(2) on the chromium this test started: it has run for the whole
            // deadline, so it is not reaped (`done` follows wait_with_output at once)
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let started = std::time::Instant::now();
    let out = child.wait_with_output().expect("wait for chromium");
    let _ = done.send(());
    assert!(
        started.elapsed() < CHROMIUM_DEADLINE,
        "chromium did not finish within {CHROMIUM_DEADLINE:?} on {url} (killed): a request the page keeps open stops its virtual time"
    );
    out
}

/// Longest a headless chromium run may take before it is killed and the test fails.
const CHROMIUM_DEADLINE: Duration = Duration::from_secs(60);

/// The response head of `GET path`.
fn head(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(c, "GET {path} HTTP/1.0\r\n\r\n").unwrap();
    let mut b = String::new();
    c.read_to_string(&mut b).unwrap();
    b.split("\r\n\r\n").next().unwrap().to_lowercase()
}

#[test]
fn history_charts_draw_data_under_a_strict_csp() {
    let Some(chrome) = chromium() else {
        skip("chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    let d = Drover::start(&demo_web("2", "history_interval = \"1s\"", ""));
    let status = d.status_addr();
    wait_until(T, "4 history samples", || {
        let h: serde_json::Value = serde_json::from_str(&http_get(&status, "/history")?).ok()?;
        (h["samples"].as_array()?.len() >= 4).then_some(())
    });
    let h: serde_json::Value =
        serde_json::from_str(&http_get(&status, "/history").unwrap()).unwrap();
    assert_eq!(h["interval_s"], 1.0);
    assert_eq!(h["capacity"], 900, "15 minutes at 1 s");
    let last = h["samples"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["programs"][0]["name"], "web");
    assert_eq!(last["programs"][0]["ready"], 2, "{last}");
    assert!(
        last["programs"][0]["memory_bytes"].as_u64().unwrap() > 0,
        "{last}"
    );
    assert_eq!(last["sockets"][0]["queue"], 0, "{last}");
    // the page sends a strict policy: no inline script or style, nothing from elsewhere
    let page = head(&status, "/");
    assert!(
        page.contains(
            "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'"
        ),
        "{page}"
    );
    let html = http_get(&status, "/").unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "inline code in the page"
    );
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{status}/?poll");
    let out = headless(
        chrome,
        profile.path(),
        &["--dump-dom", "--enable-logging=stderr", "--v=0"],
        &url,
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("Content Security Policy"),
        "the page broke its own policy:\n{log}"
    );
    for series in [
        "web ready workers",
        "web CPU",
        "web memory",
        "web restarts",
        "socket http queue",
    ] {
        let at = dom
            .find(&format!("data-series=\"{series}\""))
            .unwrap_or_else(|| panic!("no chart `{series}` in:\n{dom}"));
        let chart = &dom[at..];
        let points = chart
            .split("points=\"")
            .nth(1)
            .and_then(|p| p.split('"').next())
            .unwrap_or("");
        if series != "web restarts" {
            // a point per sample after the first for restarts; every sample for the others
            assert!(points.split(' ').count() >= 3, "`{series}` drew {points:?}");
        }
    }
    // a screenshot to look at (target/page.png)
    let png = concat!(env!("CARGO_MANIFEST_DIR"), "/target/page.png");
    let shot = headless(
        chrome,
        profile.path(),
        &[
            &format!("--screenshot={png}"),
            "--window-size=1280,1000",
            "--hide-scrollbars",
        ],
        &url,
    );
    assert!(
        shot.status.success(),
        "{}",
        String::from_utf8_lossy(&shot.stderr)
    );
    assert!(
        std::fs::metadata(png).unwrap().len() > 10_000,
        "an empty screenshot"
    );
}

#[test]
fn status_page_shows_live_pids_in_chromium() {
    let Some(chrome) = chromium() else {
        skip("chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    let d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n[socket.http]\nlisten = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"{BIN}\", \"demo-worker\"]\nsockets = [\"http\"]\nworkers = 2\n"
    ));
    let st = d.wait_status("2 workers", Duration::from_secs(30), |v| {
        Drover::worker_pids(v, "web").len() == 2
    });
    let pids = Drover::worker_pids(&st, "web");
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/?poll", d.status_addr());
    let out = headless(chrome, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    for pid in pids {
        assert!(
            dom.contains(&format!("<td class=\"pid\">{pid}</td>")),
            "pid {pid} not in the rendered table:\n{dom}"
        );
    }
    assert!(dom.contains("running"), "{dom}");
}

#[test]
fn the_page_shows_an_abandoned_roll() {
    let Some(chrome) = chromium() else {
        skip("chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    // the next start of a worker fails while {dir}/broken exists; a watched file asks the roll
    let app = tempfile::tempdir().unwrap();
    let mut d = Drover::start(&format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\n[socket.http]\nlisten = \"127.0.0.1:0\"\n[program.web]\ncommand = [\"sh\", \"-c\", \"if [ -e {{dir}}/broken ]; then exit 3; fi; exec {BIN} demo-worker\"]\nsockets = [\"http\"]\nworkers = 2\nwatch = [\"{}\"]\n",
        app.path().display()
    ));
    d.wait_status("2 ready", Duration::from_secs(30), |v| all_ready(v, 2));
    std::fs::write(d.path("broken"), "").unwrap();
    std::fs::write(app.path().join("main.py"), "def oops(:\n").unwrap();
    d.keep.push(app);
    d.wait_status("an abandoned roll", Duration::from_secs(30), |v| {
        v["programs"][0]["last_roll"]["outcome"] == "abandoned"
    });
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/?poll", d.status_addr());
    let out = headless(chrome, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    let line = dom
        .split("class=\"bad roll-abandoned\">")
        .nth(1)
        .and_then(|r| r.split('<').next())
        .unwrap_or_else(|| panic!("no abandoned roll on the page:\n{dom}"));
    assert!(
        line.starts_with("last roll abandoned ")
            && line.contains("the replacement for web.0 did not become ready")
            && line.contains("the old workers keep serving"),
        "{line}"
    );
}

#[test]
fn the_page_shows_a_crashed_workers_last_words_as_text() {
    let Some(chrome) = chromium() else {
        skip("chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    let d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"stay\"\n[program.app]\ncommand = \"sh -c 'echo \\\"<b>Traceback</b>\\\"; echo ValueError: boom; sleep 0.3; exit 1'\"\n",
    );
    d.wait_status("last words", Duration::from_secs(30), |v| {
        v["programs"][0]["workers"][0]["last_exit"]["last_words"]
            .as_array()
            .is_some_and(|w| w.len() == 2)
    });
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/?poll", d.status_addr());
    let out = headless(chrome, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    // what the worker printed is the text of a <pre>, its markup shown, never parsed
    assert!(
        dom.contains("<pre>&lt;b&gt;Traceback&lt;/b&gt;\nValueError: boom</pre>"),
        "{dom}"
    );
    assert!(!dom.contains("<b>Traceback</b>"), "{dom}");
}

#[test]
fn the_page_follows_events() {
    let Some(chrome) = chromium() else {
        skip("chromium is not installed (tests/run.sh installs Debian's chromium)");
        return;
    };
    let d = Drover::start(&one_program("command = \"sleep 1000\""));
    let status = d.status_addr();
    d.wait_status("a worker", T, |v| !Drover::worker_pids(v, "w").is_empty());
    let streams = move || -> Option<f64> {
        let m = http_get(&status, "/metrics")?;
        m.lines()
            .find_map(|l| l.strip_prefix("drover_events_streams "))
            .and_then(|n| n.parse().ok())
    };
    assert_eq!(streams(), Some(0.0));
    // the page in a browser that stays open (no dump: nothing ends it) until it is killed
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/", d.status_addr());
    let devtools = ["--remote-debugging-port=0"];
    let mut page = Killed(chromium_start(
        chrome,
        profile.path(),
        &devtools,
        &url,
        std::process::Stdio::null(),
    ));
    wait_until(T, "drover to count the page's /events stream", || {
        (streams()? >= 1.0).then_some(())
    });
    let _ = page.0.kill();
    let _ = page.0.wait();
    // the browser gone, its stream ends too
    wait_until(T, "the page's stream to end", || {
        (streams()? == 0.0).then_some(())
    });
}

/// A browser killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

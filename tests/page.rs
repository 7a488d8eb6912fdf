//! The web status page, rendered for real in headless Chromium (tests/run.sh installs Debian's
//! chromium): its worker table must show the live pids, and its history charts must draw data
//! under the page's own Content-Security-Policy.

mod common;
use common::*;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
}

/// Chromium's command line for one headless run against `url`, with `extra` flags.
fn headless(
    chrome: &str,
    profile: &std::path::Path,
    extra: &[&str],
    url: &str,
) -> std::process::Output {
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
            "--virtual-time-budget=5000",
        ])
        .args(extra)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .output()
        .expect("run chromium")
}

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
    let url = format!("http://{status}/");
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
    let url = format!("http://{}/", d.status_addr());
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
    let url = format!("http://{}/", d.status_addr());
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
    let url = format!("http://{}/", d.status_addr());
    let out = headless(chrome, profile.path(), &["--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout);
    // what the worker printed is the text of a <pre>, its markup shown, never parsed
    assert!(
        dom.contains("<pre>&lt;b&gt;Traceback&lt;/b&gt;\nValueError: boom</pre>"),
        "{dom}"
    );
    assert!(!dom.contains("<b>Traceback</b>"), "{dom}");
}

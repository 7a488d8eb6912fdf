//! The web status page, rendered for real in headless Chromium (tests/run.sh installs Debian's
//! chromium): its worker table must show the live pids.

mod common;
use common::*;
use std::time::Duration;

fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
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
    let out = std::process::Command::new(chrome)
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
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://{}/", d.status_addr()))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    for pid in pids {
        assert!(
            dom.contains(&format!("<td class=\"pid\">{pid}</td>")),
            "pid {pid} not in the rendered table:\n{dom}"
        );
    }
    assert!(dom.contains("running"), "{dom}");
}

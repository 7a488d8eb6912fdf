//! `/status` is current when it is served (issue 19, item 5). The loop publishes a snapshot only
//! when it wakes, and an idle drover does not wake; so the ages in it (drover's uptime, each
//! worker's, a running step's duration) and each worker's memory are brought to the moment of
//! the request, and `drover status`, `drover top` and the page show them so.

mod common;
use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// An idle drover: one sleeping worker, no budgets, no history sampler, nothing to wake for.
fn idle() -> String {
    one_program("command = [\"sleep\", \"100000\"]\nreadiness = { check = \"uptime\", min_uptime = \"100ms\" }")
        .replace("[supervisor]\n", "[supervisor]\nhistory = \"0s\"\n")
}

/// (drover's uptime, the first worker's), from `/status`.
fn uptimes(d: &Drover) -> (f64, f64) {
    let v = d.status();
    (
        v["uptime_s"].as_f64().unwrap(),
        v["programs"][0]["workers"][0]["uptime_s"].as_f64().unwrap(),
    )
}

/// `drover <cmd> --url …` (status, top: one snapshot, stdout is not a terminal).
fn cli(d: &Drover, cmd: &str) -> String {
    let out = Command::new(BIN)
        .args([cmd, "--url", &format!("http://{}", d.status_addr())])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The whole seconds of `up 12s` in a header line of `drover status` / `drover top`.
fn up_seconds(text: &str) -> u64 {
    let rest = &text[text.find("up ").expect("an `up` in the header") + 3..];
    let word: String = rest
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    word.strip_suffix('s')
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("`up {word}` is not seconds: {text}"))
}

#[test]
fn an_idle_drovers_uptimes_advance_with_the_clock() {
    let d = Drover::start(&idle());
    d.wait_status("the worker ready", T, |v| all_ready(v, 1));
    // nothing happens from here on: no event, no timer
    let t1 = Instant::now();
    let (up1, w1) = uptimes(&d);
    std::thread::sleep(Duration::from_millis(1500));
    let gap = t1.elapsed().as_secs_f64();
    let (up2, w2) = uptimes(&d);
    println!("over {gap:.3}s of wall time: drover's uptime {up1:.3} -> {up2:.3}, the worker's {w1:.3} -> {w2:.3}");
    for (what, a, b) in [("drover's uptime", up1, up2), ("the worker's", w1, w2)] {
        assert!(
            (b - a - gap).abs() < 0.75,
            "{what} grew by {:.3}s over {gap:.3}s",
            b - a
        );
    }
    // the command-line views say the same: wait until the worker is a few seconds old
    wait_until(T, "drover up 3s", || (uptimes(&d).0 >= 3.0).then_some(()));
    let status = cli(&d, "status");
    assert!(up_seconds(&status) >= 3, "{status}");
    let top = cli(&d, "top");
    assert!(up_seconds(&top) >= 3, "{top}");
    let line = status
        .lines()
        .find(|l| l.starts_with("w "))
        .unwrap_or_else(|| panic!("no worker line in: {status}"));
    assert!(
        !line.split_whitespace().any(|w| w == "0s" || w == "1s"),
        "the worker's uptime: {line}"
    );
}

#[test]
fn a_running_steps_duration_grows_while_it_runs() {
    let cfg = format!(
        "{}\n[[prestart]]\nname = \"migrate\"\ncommand = [\"sleep\", \"100000\"]\n",
        idle()
    );
    let d = Drover::start(&cfg);
    let first = d.wait_status("the step running", T, |v| {
        v["steps"][0]["state"] == "running" && v["steps"][0]["duration_s"].is_f64()
    });
    let d1 = first["steps"][0]["duration_s"].as_f64().unwrap();
    let t1 = Instant::now();
    let v = d.wait_status("the step's duration to grow by a second", T, |v| {
        v["steps"][0]["duration_s"]
            .as_f64()
            .is_some_and(|d2| d2 >= d1 + 1.0)
    });
    let d2 = v["steps"][0]["duration_s"].as_f64().unwrap();
    let gap = t1.elapsed().as_secs_f64();
    println!("a running step: {d1:.3}s, then {d2:.3}s ({gap:.3}s later)");
    assert!(d2 - d1 <= gap + 0.5, "{d1} -> {d2} over {gap:.3}s");
    assert_eq!(v["state"], "starting");
}

/// A worker that allocates (and touches) 96 MiB when `{dir}/grow` appears, then says so in
/// `{dir}/grown`.
const GROWER: &str = r#"import os, time
d = os.environ["DIR"]
while not os.path.exists(d + "/grow"):
    time.sleep(0.02)
block = bytearray(96 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
open(d + "/grown", "w").write("1")
time.sleep(100000)
"#;

#[test]
fn a_workers_memory_is_read_when_served() {
    if !installed("python3") {
        skip("python3 is not installed");
        return;
    }
    // budgets sampled every 3 s: between two samples the loop sleeps, and /status still says
    // what the worker uses now
    let program = format!(
        "command = [\"python3\", \"-c\", {GROWER:?}]\nenv = {{ DIR = \"{{dir}}\" }}\nreadiness = {{ check = \"uptime\", min_uptime = \"100ms\" }}\nbudget = {{ memory_hard = \"4GiB\" }}"
    );
    let cfg = one_program(&program).replace("[supervisor]\n", "[supervisor]\nhistory = \"0s\"\n")
        + "\n[budget]\nmode = \"sample\"\nsample_interval = \"3s\"\n";
    let d = Drover::start(&cfg);
    let v = d.wait_status("the worker ready", T, |v| all_ready(v, 1));
    let pid = Drover::worker_pids(&v, "w")[0] as i32;
    // just after a sample (the loop woke for it): the next one is 3 s away
    let before = d.wait_status("the first budget sample", T, |v| {
        v["uptime_s"].as_f64().is_some_and(|u| u >= 3.0)
    });
    let m0 = before["programs"][0]["workers"][0]["memory_bytes"]
        .as_u64()
        .unwrap();
    std::fs::write(d.path("grow"), "").unwrap();
    wait_until(T, "the worker to grow", || {
        d.path("grown").exists().then_some(())
    });
    let rss = rss_kib(pid) * 1024;
    let v = d.status();
    let m1 = v["programs"][0]["workers"][0]["memory_bytes"]
        .as_u64()
        .unwrap();
    println!(
        "memory_bytes {} MiB before, {} MiB after growing 96 MiB; /proc says {} MiB",
        m0 >> 20,
        m1 >> 20,
        rss >> 20
    );
    assert!(m1 >= m0 + (80 << 20), "{m0} -> {m1}: not read when served");
    assert!(
        m1.abs_diff(rss) < 16 << 20,
        "memory_bytes {m1} is not the worker's resident set now ({rss})"
    );
}

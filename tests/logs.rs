//! `drover logs` and `GET /programs/NAME/logs` against a real drover and real workers: the last
//! lines, following, the worker filter, the errors and exit codes, the token, the unix socket,
//! a crashed worker's last words, and what a worker prints being escaped for the terminal.

mod common;

use std::io::BufRead;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// `drover logs ARGS` against `url`; its exit code, stdout and stderr.
fn logs(url: &str, args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(BIN)
        .arg("logs")
        .args(args)
        .args(["--url", url])
        .env_remove("DROVER_TOKEN")
        .env_remove("DROVER_STATUS_URL")
        .env_remove("DROVER_CONFIG")
        .output()
        .expect("run drover logs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// A `drover logs -f` running, its lines gathered by a thread.
struct Following {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Following {
    fn start(url: &str, args: &[&str]) -> Following {
        let mut child = Command::new(BIN)
            .arg("logs")
            .args(args)
            .args(["--url", url])
            .env_remove("DROVER_TOKEN")
            .env_remove("DROVER_STATUS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run drover logs -f");
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(vec![]));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        Following { child, lines }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Ctrl-C; its exit code.
    fn interrupt(mut self) -> i32 {
        kill(self.child.id() as i64, libc::SIGINT);
        let status = wait_until(T, "drover logs -f to exit on SIGINT", || {
            self.child.try_wait().unwrap()
        });
        status.code().unwrap_or(-1)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url(d: &Drover) -> String {
    format!("http://{}", d.status_addr())
}

const COUNTER: &str = r#"
[supervisor]
status = "127.0.0.1:0"
[program.count]
command = "sh -c 'i=0; while [ $i -lt 50 ]; do i=$((i+1)); echo \"w$DROVER_WORKER line $i\"; done; printf \"esc \\033[2J bidi \\342\\200\\256 end\\n\"; exec sleep 1000'"
workers = 2
"#;

#[test]
fn the_last_lines_by_worker_with_control_characters_escaped() {
    let mut d = Drover::start(COUNTER);
    let url = url(&d);
    // both workers have printed everything once each has printed its last line
    wait_until(T, "both workers' last lines in the ring", || {
        let (_, out, _) = logs(&url, &["count", "-n", "1000"]);
        (out.matches("esc ").count() == 2).then_some(())
    });
    let (code, out, err) = logs(&url, &["count", "-n", "5", "--worker", "1"]);
    assert_eq!(code, 0, "{err}");
    let want: Vec<String> = (47..=50)
        .map(|i| format!("count.1 | w1 line {i}"))
        .chain(["count.1 | esc \\u{1b}[2J bidi \\u{202e} end".to_string()])
        .collect();
    assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    assert!(
        !out.contains('\x1b') && !out.contains('\u{202e}'),
        "{out:?}"
    );
    // --json gives the endpoint's objects, the text as printed
    let (code, out, _) = logs(&url, &["count", "-n", "1", "--worker", "0", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["line"], "esc \x1b[2J bidi \u{202e} end");
    assert_eq!(v["worker"], 0);
    assert_eq!(v["stream"], "output");
    assert!(v["pid"].as_i64().unwrap() > 0 && v["seq"].as_u64().unwrap() > 0);
    // the same over HTTP, capped at n
    let body = http_get(&d.status_addr(), "/programs/count/logs?n=3").unwrap();
    assert_eq!(body.lines().count(), 3, "{body}");
    d.stop_ok();
}

const TICKER: &str = r#"
[supervisor]
status = "127.0.0.1:0"
[program.tick]
command = "sh -c 'i=0; while :; do i=$((i+1)); echo \"tick $i\"; if [ -e {dir}/go ]; then rm -f {dir}/go; echo GO; fi; sleep 0.05; done'"
[program.quiet]
command = "sleep 1000"
log = "inherit"
"#;

fn tick(line: &str) -> Option<u64> {
    line.strip_prefix("tick.0 | tick ")?.parse().ok()
}

#[test]
fn follow_prints_only_new_lines_and_ends_with_0_on_ctrl_c() {
    let mut d = Drover::start(TICKER);
    let url = url(&d);
    let seen = wait_until(T, "a tick in the ring", || {
        let (_, out, _) = logs(&url, &["tick", "-n", "1"]);
        out.lines().next().and_then(tick)
    });
    let f = Following::start(&url, &["tick", "-n", "0", "-f"]);
    let first = wait_until(T, "the follower's first line", || {
        f.lines().first().cloned()
    });
    assert!(
        tick(&first).is_some_and(|n| n > seen),
        "-n 0 printed an old line: {first:?} (tick {seen} was already printed)"
    );
    std::fs::write(d.path("go"), "").unwrap();
    wait_until(Duration::from_secs(1), "GO through the follower", || {
        f.lines().iter().any(|l| l == "tick.0 | GO").then_some(())
    });
    assert_eq!(f.interrupt(), 0, "drover logs -f after Ctrl-C");
    d.stop_ok();
}

#[test]
fn follow_ends_cleanly_when_drover_exits() {
    let mut d = Drover::start(TICKER);
    let url = url(&d);
    let mut f = Following::start(&url, &["-n", "2", "-f"]);
    wait_until(T, "lines through the follower", || {
        (f.lines().len() >= 3).then_some(())
    });
    d.stop_ok();
    let status = wait_until(T, "drover logs -f to end with drover", || {
        f.child.try_wait().unwrap()
    });
    assert_eq!(status.code(), Some(0), "{:?}", f.lines());
}

#[test]
fn unknown_inherited_and_unreachable() {
    let mut d = Drover::start(TICKER);
    let url = url(&d);
    let (code, _, err) = logs(&url, &["nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no program named \"nope\"") && err.contains("tick"),
        "{err}"
    );
    let (code, _, err) = logs(&url, &["quiet"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("log = \"inherit\""), "{err}");
    let (code, body) = http_get_status(&d.status_addr(), "/programs/quiet/logs").unwrap();
    assert_eq!(code, 409, "{body}");
    d.stop_ok();
    // nothing listens there now
    let (code, _, err) = logs(&url, &["tick"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot reach drover at") && err.contains(&url),
        "{err}"
    );
}

#[test]
fn the_token_is_needed_when_configured() {
    let secret = tempfile::tempdir().unwrap();
    let token = secret.path().join("token");
    std::fs::write(&token, "0123456789abcdef0123").unwrap();
    let cfg = format!(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\ncontrol_token_file = \"{}\"\n[program.tick]\ncommand = \"sh -c 'echo hello; exec sleep 1000'\"\n",
        token.display()
    );
    let mut d = Drover::start(&cfg);
    d.keep.push(secret);
    let url = url(&d);
    let (code, _, err) = logs(&url, &["tick"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401") && err.contains("token"), "{err}");
    let t = token.display().to_string();
    let (code, out, err) = wait_until(T, "hello with the token", || {
        let r = logs(&url, &["tick", "--token-file", &t]);
        r.1.contains("tick.0 | hello").then_some(r)
    });
    assert_eq!(code, 0, "{out}{err}");
    d.stop_ok();
}

#[test]
fn over_the_unix_status_socket() {
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"unix:{dir}/status.sock\"\n[program.tick]\ncommand = \"sh -c 'echo over the socket; exec sleep 1000'\"\n",
    );
    let url = format!("unix:{}", d.path("status.sock").display());
    let (code, out, err) = wait_until(T, "the line over the unix socket", || {
        let r = logs(&url, &["tick"]);
        r.1.contains("tick.0 | over the socket").then_some(r)
    });
    assert_eq!(code, 0, "{out}{err}");
    d.stop_ok();
}

#[test]
fn a_traceback_is_in_status_and_in_the_exit_record() {
    if !installed("python3") {
        skip("python3 is not installed");
        return;
    }
    let mut d = Drover::start(
        "[supervisor]\nstatus = \"127.0.0.1:0\"\non_exhausted = \"stay\"\n[program.app]\ncommand = \"python3 -c 'import time; time.sleep(0.3); raise ValueError(\\\"boom\\\")'\"\n",
    );
    let words = wait_until(T, "last words in /status", || {
        let v = d.status();
        let words = v["programs"][0]["workers"][0]["last_exit"]["last_words"].clone();
        words.as_array().filter(|w| !w.is_empty()).cloned()
    });
    let words: Vec<&str> = words.iter().filter_map(|w| w.as_str()).collect();
    assert_eq!(
        words.first(),
        Some(&"Traceback (most recent call last):"),
        "{words:?}"
    );
    assert_eq!(words.last(), Some(&"ValueError: boom"), "{words:?}");
    let record = wait_until(T, "the exit record with the traceback", || {
        d.messages()
            .into_iter()
            .find(|m| m.contains("exited with exit code 1") && m.contains("ValueError: boom"))
    });
    assert!(
        record.contains("| Traceback (most recent call last):"),
        "{record}"
    );
    // `drover status` and `drover top` show them under the worker's row
    for cmd in ["status", "top"] {
        let out = Command::new(BIN)
            .args([cmd, "--url", &url(&d)])
            .env_remove("DROVER_STATUS_URL")
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.contains("      | ValueError: boom"),
            "drover {cmd}:\n{out}"
        );
    }
    d.stop_ok();
}

const FLOOD: &str = r#"
[supervisor]
status = "127.0.0.1:0"
[program.flood]
command = "yes 0123456789012345678901234567890123456789012345678901234567890123456789"
"#;

/// A raw `GET /programs/flood/logs?follow=1`, its response not read yet.
fn follow_raw(addr: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /programs/flood/logs?n=0&follow=1 HTTP/1.1\r\nHost: {addr}\r\n\r\n"
    )
    .unwrap();
    s
}

fn lines_printed(addr: &str) -> u64 {
    let m = http_get(addr, "/metrics").unwrap_or_default();
    m.lines()
        .find_map(|l| l.strip_prefix("drover_log_lines_total{program=\"flood\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_follower_that_stops_reading_is_told_what_it_skipped() {
    use std::io::Read;
    let mut d = Drover::start(FLOOD);
    let addr = d.status_addr();
    let mut s = follow_raw(&addr);
    s.set_read_timeout(Some(T)).unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    // not reading while the program prints far more than the follow buffer holds
    let from = lines_printed(&addr);
    wait_until(T, "100,000 more lines printed", || {
        (lines_printed(&addr) > from + 100_000).then_some(())
    });
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    wait_until(T, "a skipped marker in the follow", || {
        let n = s.read(&mut buf).ok()?;
        got.extend_from_slice(&buf[..n]);
        String::from_utf8_lossy(&got)
            .contains("{\"skipped\":")
            .then_some(())
    });
    let m = http_get(&addr, "/metrics").unwrap();
    let skipped: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("drover_log_follow_skipped_total{program=\"flood\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(skipped > 0, "{m}");
    drop(s);
    d.stop_ok();
}

#[test]
fn followers_are_capped_and_healthz_still_answers() {
    use std::io::Read;
    let mut d = Drover::start(FLOOD);
    let addr = d.status_addr();
    let mut held = vec![];
    for _ in 0..128 {
        let mut s = follow_raw(&addr);
        s.set_read_timeout(Some(T)).unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).unwrap();
        assert_eq!(&head[..12], b"HTTP/1.1 200", "a follower under the cap");
        held.push(s);
    }
    let (code, body) = http_get_status(&addr, "/programs/flood/logs?follow=1").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("128 clients already follow"), "{body}");
    // 128 streams, most of them not read: the probe and a plain read still answer
    let (code, _) = http_get_status(&addr, "/healthz").unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_get_status(&addr, "/programs/flood/logs?n=3").unwrap();
    assert_eq!((code, body.lines().count()), (200, 3), "{body}");
    held.clear();
    // their places come back once they leave
    wait_until(T, "a follower's place again", || {
        let mut s = follow_raw(&addr);
        s.set_read_timeout(Some(T)).unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        (&head == b"HTTP/1.1 200").then_some(())
    });
    d.stop_ok();
}

#[test]
fn reload_resizes_a_ring_and_drops_a_removed_programs() {
    let cfg = |lines: u32, with_old: bool| {
        let old = if with_old {
            "[program.old]\ncommand = \"sh -c 'echo old; exec sleep 1000'\"\n"
        } else {
            ""
        };
        format!(
            "[supervisor]\nstatus = \"unix:{{dir}}/s.sock\"\n[program.long]\ncommand = \"sh -c 'head -c 20000 /dev/zero | tr \\\\\\\\0 x; echo; for i in 1 2 3 4 5 6; do echo short $i; done; exec sleep 1000'\"\n[program.long.log]\nlines = {lines}\n{old}"
        )
    };
    let mut d = Drover::start(&cfg(100, true));
    let url = format!("unix:{}", d.path("s.sock").display());
    let out = wait_until(T, "the long line and old's line", || {
        let (_, out, _) = logs(&url, &["-n", "100"]);
        (out.contains("old.0 | old") && out.contains("[line continues]")).then_some(out)
    });
    // 20,000 bytes: one entry of 16 KiB marked as continuing, then the rest
    let long: Vec<&str> = out.lines().filter(|l| l.contains("xxxx")).collect();
    assert_eq!(long.len(), 2, "{out}");
    assert!(long[0].ends_with("x [line continues]") && !long[1].ends_with("[line continues]"));
    let text = cfg(2, false).replace("{dir}", d.dir.path().to_str().unwrap());
    std::fs::write(d.path("drover.toml"), text).unwrap();
    let reload = Command::new(BIN)
        .args(["ctl", "--url", &url, "reload"])
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    let (code, _, err) = logs(&url, &["old"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no program named \"old\""), "{err}");
    // `long` rolled with the reload and printed its lines again; the ring keeps 2 of them
    wait_until(T, "the last 2 lines of long", || {
        let (_, out, _) = logs(&url, &["long", "-n", "100"]);
        (out == "long.0 | short 5\nlong.0 | short 6\n").then_some(())
    });
    d.stop_ok();
}

//! `drover top`: a live terminal view of a running drover — programs, workers, CPU, memory,
//! socket queues, restarts, last exits — from its `/status`, redrawn every second. `q` (or
//! Ctrl-C) quits and gives the terminal back as it was. Plain escape sequences and termios only,
//! so it works over ssh on any VT100-like terminal. When stdout is not a terminal it prints one
//! snapshot and exits, like `top -b -n 1`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{self, ClientError};

const REFRESH: Duration = Duration::from_secs(1);

/// `drover top`: 0 when quit (or the snapshot printed), 2 when drover cannot be reached at
/// start.
pub fn top_command(url: &str) -> i32 {
    let first = match fetch(url) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("drover top: {e}");
            return 2;
        }
    };
    let out = std::io::stdout();
    if !out.is_terminal() {
        print!("{}", frame(&first, &HashMap::new(), None, 0).join("\n"));
        println!();
        return 0;
    }
    let stdin = std::io::stdin();
    let saved = nix::sys::termios::tcgetattr(stdin.as_fd()).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        // keep output post-processing off too; frames end lines with \r\n themselves
        let _ =
            nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, &raw);
    }
    // the alternate screen, cursor hidden: the shell's screen comes back on exit
    let mut o = out.lock();
    let _ = write!(o, "\x1b[?1049h\x1b[?25l");
    let _ = o.flush();
    live(url, first, &mut o);
    let _ = write!(o, "\x1b[?25h\x1b[?1049l");
    let _ = o.flush();
    if let Some(t) = &saved {
        let _ = nix::sys::termios::tcsetattr(stdin.as_fd(), nix::sys::termios::SetArg::TCSANOW, t);
    }
    0
}

fn fetch(url: &str) -> Result<Value, ClientError> {
    let body = client::get(url, "/status")?;
    serde_json::from_str(&body).map_err(|e| ClientError::Json(e, url.into()))
}

/// Redraw every second until `q` or Ctrl-C.
fn live(url: &str, first: Value, o: &mut impl Write) {
    let mut doc = Ok(first);
    let mut cpu_before: HashMap<i64, (f64, Instant)> = HashMap::new();
    loop {
        let now = Instant::now();
        let (lines, cpu_now) = match &doc {
            Ok(d) => {
                let cpu = cpu_seconds(d, now);
                (frame(d, &cpu_before, Some(now), width()), cpu)
            }
            Err(e) => (
                vec![format!("drover top: {e} (retrying; q quits)")],
                HashMap::new(),
            ),
        };
        cpu_before = cpu_now;
        let _ = write!(o, "\x1b[H\x1b[2J{}", lines.join("\r\n"));
        let _ = o.flush();
        if quit_within(REFRESH) {
            return;
        }
        doc = fetch(url);
    }
}

/// Wait up to `d` for a key; true on `q`, `Q` or Ctrl-C (raw mode delivers it as a byte), or
/// when the terminal is gone.
fn quit_within(d: Duration) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        let ms = PollTimeout::from(left.as_millis().min(60_000) as u16);
        match poll(&mut fds, ms) {
            Ok(0) => return false,
            Ok(_) => {
                let mut b = [0u8; 64];
                match nix::unistd::read(stdin.as_fd(), &mut b) {
                    Ok(0) | Err(_) => return true,
                    Ok(n) => {
                        if b[..n].iter().any(|c| matches!(c, b'q' | b'Q' | 3)) {
                            return true;
                        }
                    }
                }
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return true,
        }
    }
}

/// The terminal's width in columns (80 when it does not say).
fn width() -> usize {
    let mut ws = nix::pty::Winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`, which outlives the call.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) };
    if rc == 0 && ws.ws_col >= 40 {
        ws.ws_col as usize
    } else {
        80
    }
}

/// Each worker's CPU seconds (by pid) at `now`.
fn cpu_seconds(doc: &Value, now: Instant) -> HashMap<i64, (f64, Instant)> {
    workers(doc)
        .filter_map(|(_, w)| Some((w["pid"].as_i64()?, (w["cpu_seconds"].as_f64()?, now))))
        .collect()
}

fn workers(doc: &Value) -> impl Iterator<Item = (&Value, &Value)> {
    doc["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |w| (p, w))
        })
}

fn mib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.1}MiB", b as f64 / 1048576.0))
        .unwrap_or_else(|| "-".into())
}

/// One screen: a header, the sockets, then a line per program and per worker, cut to `width`
/// columns (0: no cut). `now` is None for a one-off snapshot.
pub fn frame(
    doc: &Value,
    before: &HashMap<i64, (f64, Instant)>,
    now: Option<Instant>,
    width: usize,
) -> Vec<String> {
    let mut l = header(doc, now.is_some());
    l.push(String::new());
    let sw = client::state_width(doc);
    l.push(format!(
        "{:<14} {:>3} {:>8} {:<sw$} {:>6} {:>10} {:>8} {:>8}  {}",
        "PROGRAM", "#", "PID", "STATE", "CPU%", "MEMORY", "RESTARTS", "UPTIME", "LAST EXIT"
    ));
    for p in doc["programs"].as_array().into_iter().flatten() {
        let mut flags = vec![];
        for (key, word) in [("rolling", "rolling"), ("crash_looping", "CRASH LOOP")] {
            if p[key] == true {
                flags.push(word.to_string());
            }
        }
        if !p["shedding"].is_null() {
            flags.push(format!("SHEDDING (queue {})", p["shedding"]["queue"]));
        }
        if p["roll"].is_object() {
            flags.push(format!(
                "{}/{} replaced",
                p["roll"]["replaced"], p["roll"]["of"]
            ));
        }
        if p["last_roll"]["outcome"] == "abandoned" {
            // the why names the worker whose replacement failed, or the new preloader
            flags.push(format!(
                "LAST ROLL ABANDONED: {}",
                text(&p["last_roll"]["why"])
            ));
        }
        l.push(format!(
            "{:<14} {}/{} ready  {}",
            text(&p["name"]),
            p["ready_workers"],
            p["desired"],
            flags.join(" ")
        ));
        if let Some(f) = super::preloader_words::Facts::from_json(&p["preloader"]) {
            l.push(format!("{:<14} preloader {}", "", f.describe()));
        }
        if let Some((state, why)) = client::gate_words(p) {
            l.push(format!("{:<14} {} {why}", "", state.to_uppercase()));
        }
        for w in p["workers"].as_array().into_iter().flatten() {
            l.push(worker_line(w, before, now, sw));
            // a worker that is not running now: what it said before it went
            if w["state"] != "running" {
                l.extend(client::last_words(w, 3));
            }
        }
    }
    for line in &mut l {
        line.truncate(line.trim_end().len());
        if let Some((i, _)) = line.char_indices().nth(width).filter(|_| width > 0) {
            line.truncate(i);
        }
    }
    l
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_string()
}

/// drover's state, its sockets' queues, the node's overflow counters.
fn header(doc: &Value, live: bool) -> Vec<String> {
    let mut l = vec![format!(
        "drover {}{}  pid {}  up {}  {}{}",
        text(&doc["state"]),
        if doc["ready"] == true {
            " · ready"
        } else {
            " · NOT READY"
        },
        doc["pid"],
        client::fmt_uptime(doc["uptime_s"].as_f64().unwrap_or(0.0)),
        text(&doc["config"]),
        if live { "   (q quits)" } else { "" }
    )];
    for so in doc["sockets"].as_array().into_iter().flatten() {
        let q = match (so["queue"].as_u64(), so["queue_max"].as_u64()) {
            (Some(q), Some(m)) => format!("queue {q}/{m}"),
            _ => "queue unknown".into(),
        };
        l.push(format!(
            "socket {:<12} {:<28} {q}",
            text(&so["name"]),
            text(&so["listen"])
        ));
    }
    if let Some(n) = doc["node"].as_object() {
        l.push(format!(
            "node listen overflows {} drops {} (whole network namespace)",
            n["listen_overflows"], n["listen_drops"]
        ));
    }
    l
}

/// One worker, its state in a column `sw` wide. CPU % is drover's own sample when budgets are
/// sampled, else the change in its CPU seconds since the previous frame (`before`).
fn worker_line(
    w: &Value,
    before: &HashMap<i64, (f64, Instant)>,
    now: Option<Instant>,
    sw: usize,
) -> String {
    let pid = w["pid"].as_i64();
    let cpu = w["cpu_percent"].as_f64().or_else(|| {
        let (was, at) = before.get(&pid?)?;
        let dt = now?.duration_since(*at).as_secs_f64();
        let used = w["cpu_seconds"].as_f64()? - was;
        (dt > 0.0).then_some(used / dt * 100.0)
    });
    format!(
        "{:<14} {:>3} {:>8} {:<sw$} {:>6} {:>10} {:>8} {:>8}  {}",
        "",
        w["index"].to_string(),
        pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        text(&w["state"]),
        cpu.map(|c| format!("{c:.1}")).unwrap_or_else(|| "-".into()),
        mib(&w["memory_bytes"]),
        w["restarts"].to_string(),
        w["uptime_s"]
            .as_f64()
            .map(client::fmt_uptime)
            .unwrap_or_else(|| "-".into()),
        client::fmt_exit(&w["last_exit"])
    )
}

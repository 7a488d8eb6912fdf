//! `drover status`: fetch `/status` and print it as a table (or raw with `--json`).

use std::io::{Read, Write};
use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:9900";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not a status URL (write http://HOST:PORT or unix:/path)")]
    BadUrl(String),
    #[error("cannot reach drover at {url}: {err} (is it running, and is supervisor.status set to this address?)")]
    Connect { url: String, err: std::io::Error },
    #[error("reading from {url}: {err}")]
    Io { url: String, err: std::io::Error },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: String,
        body: String,
    },
    #[error("{url} did not answer with status JSON: {0}", url = .1)]
    Json(serde_json::Error, String),
}

/// GET `path` from a drover status endpoint, returning the body.
pub fn get(url: &str, path: &str) -> Result<String, ClientError> {
    let (code, status, body) = request(url, "GET", path, None, None)?;
    if code != 200 {
        return Err(ClientError::Status {
            url: url.into(),
            status,
            body: body.trim().into(),
        });
    }
    Ok(body)
}

/// One HTTP/1.0 request; returns (status code, status line, body).
pub fn request(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Result<(u16, String, String), ClientError> {
    let timeout = Duration::from_secs(10);
    let req = |host: &str| {
        let mut r = format!("{method} {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(t) = token {
            r.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let b = body.unwrap_or("");
        if body.is_some() {
            r.push_str("Content-Type: application/json\r\n");
        }
        r.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        r
    };
    let io = |err| ClientError::Io {
        url: url.to_string(),
        err,
    };
    let raw = if let Some(p) = url.strip_prefix("unix:") {
        let mut s =
            std::os::unix::net::UnixStream::connect(p).map_err(|err| ClientError::Connect {
                url: url.into(),
                err,
            })?;
        s.set_read_timeout(Some(timeout)).ok();
        s.write_all(req("localhost").as_bytes()).map_err(io)?;
        let mut v = Vec::new();
        s.read_to_end(&mut v).map_err(io)?;
        v
    } else {
        let hostport = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') {
            return Err(ClientError::BadUrl(url.into()));
        }
        let addrs: Vec<std::net::SocketAddr> = std::net::ToSocketAddrs::to_socket_addrs(hostport)
            .map_err(|_| ClientError::BadUrl(url.into()))?
            .collect();
        let addr = addrs
            .first()
            .ok_or_else(|| ClientError::BadUrl(url.into()))?;
        let mut s = std::net::TcpStream::connect_timeout(addr, timeout).map_err(|err| {
            ClientError::Connect {
                url: url.into(),
                err,
            }
        })?;
        s.set_read_timeout(Some(timeout)).ok();
        s.write_all(req(hostport).as_bytes()).map_err(io)?;
        let mut v = Vec::new();
        s.read_to_end(&mut v).map_err(io)?;
        v
    };
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .unwrap_or("")
        .split_once(' ')
        .map(|(_, r)| r.to_string())
        .unwrap_or_default();
    let code = status
        .split_whitespace()
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, status, body.to_string()))
}

pub fn fmt_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
    }
}

pub fn fmt_exit(v: &serde_json::Value) -> String {
    if v.is_null() {
        return "-".into();
    }
    let mut parts = vec![];
    if let Some(c) = v.get("code") {
        parts.push(format!("code {c}"));
    }
    if let Some(s) = v.get("signal").and_then(|s| s.as_str()) {
        parts.push(format!("SIG{s}"));
    }
    if let Some(r) = v.get("reason").and_then(|s| s.as_str()) {
        parts.push(format!("({r})"));
    }
    if let Some(e) = v.get("error").and_then(|s| s.as_str()) {
        parts.push(e.to_string());
    }
    parts.join(" ")
}

/// A worker's last words (the last lines it printed before it exited unasked), at most `max`
/// of the newest, escaped for a terminal and indented under its row.
pub fn last_words(w: &serde_json::Value, max: usize) -> Vec<String> {
    let words: Vec<&str> = w["last_exit"]["last_words"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.as_str())
        .collect();
    let skip = words.len().saturating_sub(max);
    let mut out: Vec<String> = words[skip..]
        .iter()
        .map(|l| format!("      | {}", super::tail::escape(l)))
        .collect();
    if skip > 0 {
        out.insert(
            0,
            format!("      ({skip} earlier lines: drover status --json, drover logs)"),
        );
    }
    out
}

/// Render the status document as a table.
pub fn render(doc: &serde_json::Value) -> String {
    let mut out = String::new();
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    out.push_str(&format!(
        "drover {} (pid {}, up {}, config {})\n",
        s(&doc["state"]),
        doc["pid"],
        fmt_uptime(doc["uptime_s"].as_f64().unwrap_or(0.0)),
        s(&doc["config"])
    ));
    if let Some(steps) = doc["steps"].as_array() {
        for st in steps {
            let took = st["duration_s"]
                .as_f64()
                .map(fmt_uptime)
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "step {:<20} {:<11} {took:>6}  {}\n",
                s(&st["name"]),
                s(&st["state"]),
                fmt_exit(&st["exit"])
            ));
        }
    }
    if let Some(socks) = doc["sockets"].as_array() {
        for so in socks {
            let queue = match (so["queue"].as_u64(), so["queue_max"].as_u64()) {
                (Some(q), Some(m)) => format!("queue {q}/{m}"),
                _ => format!("queue unknown: {}", s(&so["queue_unknown"])),
            };
            out.push_str(&format!(
                "socket {:<18} {:<28} {queue}\n",
                s(&so["name"]),
                s(&so["listen"])
            ));
        }
    }
    preloaders(&mut out, doc);
    for l in super::rolls::lines(doc) {
        out.push_str(&l);
        out.push('\n');
    }
    let sw = state_width(doc);
    out.push_str(&format!(
        "\n{:<16} {:>3} {:>8} {:<sw$} {:>8} {:>8} {:>9}  {}\n",
        "PROGRAM", "#", "PID", "STATE", "RESTARTS", "UPTIME", "RSS", "LAST EXIT"
    ));
    for p in doc["programs"].as_array().into_iter().flatten() {
        if let Some((state, why)) = gate_words(p) {
            out.push_str(&format!(
                "{:<16} {:>3} {:>8} {:<sw$} {:>8} {:>8} {:>9}  {why}\n",
                s(&p["name"]),
                "-",
                "-",
                state,
                "-",
                "-",
                "-"
            ));
        }
        for w in p["workers"].as_array().into_iter().flatten() {
            let pid = w["pid"]
                .as_i64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into());
            let up = w["uptime_s"]
                .as_f64()
                .map(fmt_uptime)
                .unwrap_or_else(|| "-".into());
            let rss = w["memory_bytes"]
                .as_u64()
                .map(|b| format!("{:.1}MiB", b as f64 / 1048576.0))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<16} {:>3} {:>8} {:<sw$} {:>8} {:>8} {:>9}  {}\n",
                s(&p["name"]),
                w["index"].to_string(),
                pid,
                s(&w["state"]),
                w["restarts"].to_string(),
                up,
                rss,
                fmt_exit(&w["last_exit"])
            ));
            for l in last_words(w, 5) {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out
}

/// A program that has not started (`depends_on`): `waiting` and what for, or `blocked` and
/// why it never will.
pub fn gate_words(p: &serde_json::Value) -> Option<(&'static str, String)> {
    if let Some(w) = p["waiting_for"].as_str() {
        return Some(("waiting", format!("waiting for {w}")));
    }
    let n = p["will_not_start"].as_str()?;
    Some(("blocked", format!("will not start: {n}")))
}

/// The STATE column's width: the longest state shown (`waiting-for-preloader`), at least 9.
pub fn state_width(doc: &serde_json::Value) -> usize {
    doc["programs"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["workers"].as_array().into_iter().flatten())
        .filter_map(|w| w["state"].as_str().map(str::len))
        .fold(9, usize::max)
}

/// A line per program with a preloader: its state, pid, age and last error (never `pid null`:
/// a preloader that failed has none).
fn preloaders(out: &mut String, doc: &serde_json::Value) {
    for p in doc["programs"].as_array().into_iter().flatten() {
        if let Some(f) = super::preloader_words::Facts::from_json(&p["preloader"]) {
            out.push_str(&format!(
                "preloader {:<15} {}\n",
                p["name"].as_str().unwrap_or("?"),
                f.describe()
            ));
        }
    }
}

/// What `drover status` found: the document as text (a table, or the raw JSON), whether drover
/// is ready (what /readyz would answer: `ready` in the document), and the programs whose last
/// roll was abandoned.
pub struct Found {
    pub text: String,
    pub ready: bool,
    pub abandoned: Vec<String>,
}

pub fn status(url: &str, json: bool) -> Result<Found, ClientError> {
    let body = get(url, "/status")?;
    let doc: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| ClientError::Json(e, url.into()))?;
    Ok(Found {
        ready: doc["ready"] == true,
        abandoned: super::rolls::abandoned(&doc)
            .into_iter()
            .map(String::from)
            .collect(),
        text: if json { body } else { render(&doc) },
    })
}

/// `drover status`: 0 ready, 1 running but not ready, 2 unreachable, 3 ready but the last roll
/// of some program was abandoned (a deploy that did not happen: the old workers serve) — unless
/// `ready_only` (a container healthcheck: serving is healthy, whatever the last deploy did).
pub fn status_command(url: &str, json: bool, quiet: bool, ready_only: bool) -> i32 {
    match status(url, json) {
        Ok(Found {
            text,
            ready,
            abandoned,
        }) => {
            if !quiet {
                print!("{text}");
                if json {
                    println!();
                }
            }
            match (ready, abandoned.is_empty() || ready_only) {
                (false, _) => 1,
                (true, true) => 0,
                (true, false) => super::rolls::ROLL_ABANDONED,
            }
        }
        Err(e) => {
            if !quiet {
                eprintln!("drover status: {e}");
            }
            2
        }
    }
}

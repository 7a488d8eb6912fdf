//! `drover events [--json]`: follow a running drover's `GET /events` and print one line per
//! event — in words (`07:21:03 api.1 exited (SIGKILL, pid 123), restarting in 0.1s`, the time
//! in UTC, control characters escaped) or the event's JSON as sent.
//!
//! Exit codes: 0 when drover ends the stream (it exits) or on Ctrl-C; 1 when it refuses the
//! stream (too many open); 2 when it cannot be reached, saying where it looked. A connection
//! lost while drover still runs (a stream closed for falling behind, a proxy's timeout) is
//! resumed with `Last-Event-ID`, so nothing is missed that drover still keeps (what it no
//! longer keeps is said by an `events_lost` line).

use std::io::{BufRead, BufReader, Read, Write};
use std::time::{Duration, Instant};

/// A lost connection is retried for this long before `drover events` gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(5);

/// How the stream ended.
enum End {
    /// drover ended it with the final chunk: it exits
    Clean,
    /// cut short; `String` says how
    Lost(String),
}

/// `drover events` against `target`: with the token it can read (one named by `--token-file`
/// must be read; the configuration's is a bonus, as events are public and the token only gives
/// one of the places kept for it).
pub fn events_main(
    target: &super::locate::Target,
    token_file: Option<std::path::PathBuf>,
    json: bool,
) -> i32 {
    let named = token_file.is_some();
    match super::locate::token(token_file, target) {
        Ok(token) => events_command(&target.url, token.as_deref(), json),
        Err(e) if named => {
            eprintln!("drover events: {e}");
            2
        }
        Err(_) => events_command(&target.url, None, json),
    }
}

pub fn events_command(url: &str, token: Option<&str>, json: bool) -> i32 {
    // Ctrl-C ends a follow normally: exit 0 (every line printed is already flushed)
    extern "C" fn interrupted(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: the handler only calls _exit.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGINT,
            nix::sys::signal::SigHandler::Handler(interrupted),
        );
    }
    let mut last: Option<u64> = None;
    let mut lost_since: Option<Instant> = None;
    loop {
        let stream = match open(url, last, token) {
            Ok(s) => s,
            Err(Open::Refused(code, body)) => {
                eprintln!("drover events: {url} answered {code}: {}", body.trim());
                return 1;
            }
            Err(Open::Unreachable(e)) => match lost_since {
                Some(t) if t.elapsed() < RECONNECT_FOR => {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
                Some(_) => {
                    eprintln!("drover events: lost drover at {url} and cannot reconnect: {e}");
                    return 2;
                }
                None => {
                    eprintln!("drover events: cannot reach drover at {url}: {e} (is it running, and is supervisor.status set to this address? --url or $DROVER_STATUS_URL say where to look)");
                    return 2;
                }
            },
        };
        match follow(stream, json, &mut last) {
            End::Clean => return 0,
            End::Lost(how) => {
                eprintln!(
                    "drover events: {how}; resuming after id {}",
                    last.unwrap_or(0)
                );
                lost_since = Some(Instant::now());
            }
        }
    }
}

enum Open {
    Unreachable(String),
    Refused(u16, String),
}

/// Connect and send the request; the response's head is read and checked, the body left.
fn open(url: &str, last: Option<u64>, token: Option<&str>) -> Result<Box<dyn BufRead>, Open> {
    let unreachable = |e: std::io::Error| Open::Unreachable(e.to_string());
    let (mut s, host): (Box<dyn ReadWrite>, String) = if let Some(p) = url.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(p).map_err(unreachable)?;
        (Box::new(s), "localhost".into())
    } else {
        let hostport = url
            .strip_prefix("http://")
            .unwrap_or(url)
            .trim_end_matches('/');
        let s = std::net::TcpStream::connect(hostport).map_err(unreachable)?;
        let _ = s.set_nodelay(true);
        (Box::new(s), hostport.to_string())
    };
    let resume = last.map_or(String::new(), |n| format!("Last-Event-ID: {n}\r\n"));
    // events are public; the token only gives one of the places kept for it
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET /events HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n{resume}{auth}\r\n"
    )
    .map_err(unreachable)?;
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).map_err(unreachable)? == 0 {
            return Err(Open::Unreachable(
                "the connection closed before an answer".into(),
            ));
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if code != 200 {
        // an error answer has a length (read that much, at once) or is chunked
        let length = head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<u64>().ok())?
        });
        let mut body = String::new();
        let _ = match length {
            Some(n) => r.take(n.min(64 * 1024)).read_to_string(&mut body),
            None => Chunked::new(r).read_to_string(&mut body),
        };
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(body);
        return Err(Open::Refused(code, reason));
    }
    Ok(Box::new(BufReader::new(Chunked::new(r))))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Print each event of the stream; `last` keeps the id of the last one.
fn follow(mut body: Box<dyn BufRead>, json: bool, last: &mut Option<u64>) -> End {
    let (mut id, mut data) = (None, String::new());
    let mut line = String::new();
    let mut out = std::io::stdout();
    loop {
        line.clear();
        match body.read_line(&mut line) {
            Ok(0) => return End::Clean,
            Ok(_) => {}
            Err(e) => return End::Lost(format!("the connection to drover was lost ({e})")),
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("id: ") {
            id = v.parse().ok();
        } else if let Some(v) = l.strip_prefix("data: ") {
            data = v.to_string();
        } else if l.is_empty() && !data.is_empty() {
            let text = if json {
                std::mem::take(&mut data)
            } else {
                let v = serde_json::from_str(&data).unwrap_or_default();
                data.clear();
                crate::logs::printable(&words(&v))
            };
            if writeln!(out, "{text}").and_then(|_| out.flush()).is_err() {
                return End::Clean; // stdout closed (a pipe to head): nothing more to do
            }
            if let Some(n) = id.take() {
                *last = Some(n);
            }
        }
    }
}

/// An event in one line of words.
pub fn words(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
    let time = v["time"]
        .as_str()
        .and_then(|t| t.get(11..19))
        .unwrap_or("--:--:--");
    let worker = format!("{}.{}", s("program"), v["worker"]);
    let pid = &v["pid"];
    let what = match s("type").as_str() {
        "worker_started" => format!("{worker} started (pid {pid})"),
        "worker_restarted" => format!("{worker} restarted (pid {pid}, restart {})", v["restarts"]),
        "worker_ready" => format!("{worker} ready (pid {pid}) in {:.2}s", n("after_seconds")),
        "worker_exited" => {
            let how = match (v["signal"].as_str(), v["code"].as_i64()) {
                (Some(sig), _) => sig.to_string(),
                (None, Some(c)) => format!("code {c}"),
                _ => "?".into(),
            };
            let next = match v["restart_in_seconds"].as_f64() {
                Some(d) if v["restart"] == true => format!("restarting in {d:.1}s"),
                _ => "not restarting".into(),
            };
            let verb = match s("reason").as_str() {
                "crashed" | "exited" => "exited".to_string(),
                r => format!("stopped for {r}"),
            };
            format!("{worker} {verb} ({how}, pid {pid}), {next}")
        }
        "roll_started" => format!(
            "{} rolling {} of {} workers",
            s("program"),
            s("reason"),
            v["workers"]
        ),
        "roll_finished" => match v["why"].as_str() {
            Some(why) => format!("{} roll {}: {why}", s("program"), s("outcome")),
            None => format!("{} roll {}", s("program"), s("outcome")),
        },
        "scaled" => format!(
            "{} scaled from {} to {} ({})",
            s("program"),
            v["from"],
            v["to"],
            s("why")
        ),
        "budget_recycle" => format!(
            "{worker} (pid {pid}) above memory_soft ({} > {} bytes): replacing",
            v["memory_bytes"], v["memory_soft"]
        ),
        "budget_kill" => format!(
            "{worker} (pid {pid}) above memory_hard ({} > {} bytes): killed",
            v["memory_bytes"], v["memory_hard"]
        ),
        "shedding_on" => format!(
            "{} shedding: {} connections waiting (max_queue {})",
            s("program"),
            v["queue"],
            v["max_queue"]
        ),
        "shedding_off" => format!(
            "{} no longer shedding after {:.1}s (queue {})",
            s("program"),
            n("after_seconds"),
            v["queue"]
        ),
        "reload_applied" => format!("reload applied: {}", s("message")),
        "reload_rejected" => format!("reload rejected: {}", s("why")),
        "dependency_waiting" => format!("{} waits for {}", s("program"), join(&v["on"])),
        "dependency_satisfied" => format!("{} may start: {} hold", s("program"), join(&v["held"])),
        "shutting_down" => format!("drover shutting down: {}", s("why")),
        "events_lost" => format!("events lost: {}", s("why")),
        other => format!("{other} {v}"),
    };
    format!("{time} {what}")
}

fn join(v: &serde_json::Value) -> String {
    let parts: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str())
        .collect();
    parts.join(", ")
}

/// HTTP/1.1 chunked transfer decoding; EOF at the final chunk, an error when the connection
/// ends before it.
struct Chunked<R> {
    inner: R,
    left: usize,
    done: bool,
}

impl<R: BufRead> Chunked<R> {
    fn new(inner: R) -> Self {
        Chunked {
            inner,
            left: 0,
            done: false,
        }
    }
}

impl<R: BufRead> Read for Chunked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let cut = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stream ended before its final chunk",
            )
        };
        while self.left == 0 {
            if self.done {
                return Ok(0);
            }
            let mut line = String::new();
            if self.inner.read_line(&mut line)? == 0 {
                return Err(cut());
            }
            let size = line.trim().split(';').next().unwrap_or("");
            if size.is_empty() {
                continue; // the CRLF after a chunk's data
            }
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "a bad chunk size")
            })?;
            if self.left == 0 {
                self.done = true;
            }
        }
        let want = buf.len().min(self.left);
        let got = self.inner.read(&mut buf[..want])?;
        if got == 0 {
            return Err(cut());
        }
        self.left -= got;
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::{words, Chunked};
    use std::io::Read;

    #[test]
    fn an_exit_in_words() {
        let v = serde_json::json!({"id": 5, "time": "2026-12-05T07:21:03.5Z", "type": "worker_exited", "program": "api", "worker": 1, "pid": 123, "signal": "SIGKILL", "signal_number": 9, "reason": "crashed", "restart": true, "restart_in_seconds": 0.1});
        assert_eq!(
            words(&v),
            "07:21:03 api.1 exited (SIGKILL, pid 123), restarting in 0.1s"
        );
    }

    #[test]
    fn chunked_bodies_decode_and_a_cut_one_is_an_error() {
        let mut s = String::new();
        Chunked::new(&b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..])
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "abcde");
        let mut s = String::new();
        assert!(Chunked::new(&b"3\r\nabc\r\n"[..])
            .read_to_string(&mut s)
            .is_err());
    }
}

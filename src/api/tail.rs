//! `drover logs [NAME] [-n N] [-f] [--worker I] [--json]`: a running drover's recent output, as
//! `tail` shows a file's: the last `n` lines (10 by default, as tail), then with `-f` every new
//! one until Ctrl-C (exit 0). Without NAME, every program's lines, by time. Each line is shown
//! with its label as drover's stdout shows it (`api.0 | ...`); what a worker printed is shown
//! with its control characters escaped (ESC, carriage return, bidi overrides such as U+202E),
//! so a worker cannot rewrite the reader's terminal. `--json` prints the endpoint's objects.
//!
//! Exit codes: 0 done (or Ctrl-C), 1 the program is unknown or its output is not captured (or
//! the endpoint refused: a token is needed), 2 drover cannot be reached.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Lines shown when `-n` is not given (tail's default).
pub const DEFAULT_LINES: usize = 10;

/// What `drover logs` was asked (its command-line arguments).
#[derive(clap::Args)]
pub struct Ask {
    /// The program (default: every program, by time)
    pub program: Option<String>,
    /// Lines to show first (0 with -f: only new ones)
    #[arg(short, default_value_t = DEFAULT_LINES)]
    pub n: usize,
    /// Go on printing new lines as they come, until Ctrl-C
    #[arg(short, long)]
    pub follow: bool,
    /// Only worker I's lines (with a program)
    #[arg(long, value_name = "I", requires = "program")]
    pub worker: Option<u32>,
    /// Print the endpoint's JSON objects, one a line
    #[arg(long)]
    pub json: bool,
    /// http://HOST:PORT or unix:/path (default: $DROVER_STATUS_URL, else the configuration's supervisor.status, else http://127.0.0.1:9900)
    #[arg(long)]
    pub url: Option<String>,
    /// The configuration whose supervisor.status and control_token_file to use (default: $DROVER_CONFIG, ./drover.toml, /etc/drover/drover.toml)
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// File holding the bearer token, needed when control_token_file is set (default: $DROVER_TOKEN, else the configuration's control_token_file)
    #[arg(long)]
    pub token_file: Option<PathBuf>,
}

pub fn logs_command(ask: Ask) -> i32 {
    let target = match super::locate::locate(ask.url.clone(), ask.config.clone()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("drover logs: {e}");
            return 2;
        }
    };
    // the token is sent only where it is needed: a missing one is the endpoint's to refuse
    let token = match super::locate::token(ask.token_file.clone(), &target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("drover logs: {e}");
            return 2;
        }
    };
    if ask.follow {
        end_on_interrupt();
    }
    let path = path(&ask);
    let stream = match connect(&target.url, ask.follow) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("drover logs: cannot reach drover at {}: {e} (from --url, $DROVER_STATUS_URL, the configuration's supervisor.status, else the default {}); is it running?", target.url, super::client::DEFAULT_URL);
            return 2;
        }
    };
    match read(stream, &target.url, &path, token.as_deref(), ask.json) {
        Ok(()) => 0,
        Err(Failed::Refused(m)) => {
            eprintln!("drover logs: {m}");
            1
        }
        Err(Failed::Io(e)) => {
            eprintln!("drover logs: reading from {}: {e}", target.url);
            2
        }
    }
}

fn path(ask: &Ask) -> String {
    let mut q = format!("n={}", ask.n);
    if let Some(w) = ask.worker {
        q.push_str(&format!("&worker={w}"));
    }
    if ask.follow {
        q.push_str("&follow=1");
    }
    match &ask.program {
        Some(p) => format!("/programs/{}/logs?{q}", escape_path(p)),
        None => format!("/logs?{q}"),
    }
}

/// A program name as one path segment.
fn escape_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Ctrl-C (or TERM) ends a follow with exit 0, as `tail -f`'s reader expects; each line is
/// written whole before the next is read, so nothing is left half-written.
fn end_on_interrupt() {
    extern "C" fn done(_: libc::c_int) {
        // SAFETY: _exit is async-signal-safe; nothing else runs in the handler.
        unsafe { libc::_exit(0) }
    }
    // SAFETY: installing a handler that only calls _exit, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGINT, done as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, done as *const () as libc::sighandler_t);
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

fn connect(url: &str, follow: bool) -> std::io::Result<(Box<dyn Stream>, String)> {
    // a follow waits for lines as long as it takes; a plain read gets 10 s
    let timeout = (!follow).then_some(Duration::from_secs(10));
    if let Some(p) = url.strip_prefix("unix:") {
        let s = std::os::unix::net::UnixStream::connect(p)?;
        s.set_read_timeout(timeout)?;
        return Ok((Box::new(s), "localhost".into()));
    }
    let hostport = url
        .strip_prefix("http://")
        .unwrap_or(url)
        .trim_end_matches('/')
        .to_string();
    let bad = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a status URL (write http://HOST:PORT or unix:/path)",
        )
    };
    if hostport.is_empty() || hostport.contains('/') {
        return Err(bad());
    }
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&hostport)?
        .next()
        .ok_or_else(bad)?;
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(timeout)?;
    Ok((Box::new(s), hostport))
}

enum Failed {
    Refused(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Self {
        Failed::Io(e)
    }
}

fn read(
    (mut s, host): (Box<dyn Stream>, String),
    url: &str,
    path: &str,
    token: Option<&str>,
    json: bool,
) -> Result<(), Failed> {
    let mut req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    if code != 200 {
        let mut body = String::new();
        r.read_to_string(&mut body)?;
        let why = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(String::from))
            .unwrap_or_else(|| body.trim().to_string());
        return Err(Failed::Refused(format!(
            "{url} answered {}: {why}",
            status.trim().split_once(' ').map_or("", |x| x.1)
        )));
    }
    let out = std::io::stdout();
    let mut line = Vec::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches('\n');
        if text.is_empty() {
            continue;
        }
        let shown = if json { text.to_string() } else { render(text) };
        let mut o = out.lock();
        writeln!(o, "{shown}")?;
        o.flush()?;
    }
}

/// One object of the endpoint as a line of text: `api.0 | what it printed`.
pub fn render(json: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return escape(json);
    };
    if let Some(n) = v["skipped"].as_u64() {
        return format!(
            "[drover: {n} lines skipped: this reader is slower than the program prints]"
        );
    }
    let program = v["program"].as_str().unwrap_or("?");
    let label = match v["worker"].as_u64() {
        Some(w) => format!("{program}.{w}"),
        None => program.to_string(),
    };
    let more = if v["split"] == true {
        " [line continues]"
    } else {
        ""
    };
    format!(
        "{} | {}{more}",
        escape(&label),
        escape(v["line"].as_str().unwrap_or(""))
    )
}

/// Text a worker printed, safe for a terminal: control characters (but tab) and the invisible
/// characters that reorder or hide text (bidi overrides and isolates, zero-width marks) are
/// shown as escapes.
pub fn escape(s: &str) -> String {
    crate::logs::printable_line(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_would_rewrite_a_terminal() {
        assert_eq!(
            escape("ok\x1b[2J\r\u{202E}evil\u{7}\té"),
            "ok\\u{1b}[2J\\r\\u{202e}evil\\u{7}\té"
        );
    }

    #[test]
    fn renders_lines_markers_and_splits() {
        let l = r#"{"program":"api","worker":2,"line":"hi\u001b[31m","split":true}"#;
        assert_eq!(render(l), "api.2 | hi\\u{1b}[31m [line continues]");
        assert_eq!(
            render(r#"{"skipped":7}"#),
            "[drover: 7 lines skipped: this reader is slower than the program prints]"
        );
        assert_eq!(
            render(r#"{"program":"pre","worker":null,"line":"x"}"#),
            "pre | x"
        );
    }

    #[test]
    fn paths() {
        let mut a = Ask {
            url: None,
            config: None,
            token_file: None,
            program: Some("a b".into()),
            n: 5,
            follow: true,
            worker: Some(1),
            json: false,
        };
        assert_eq!(path(&a), "/programs/a%20b/logs?n=5&worker=1&follow=1");
        a.program = None;
        a.worker = None;
        a.follow = false;
        assert_eq!(path(&a), "/logs?n=5");
    }
}

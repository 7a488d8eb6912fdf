//! drover's own logs through `tracing`: human text on a TTY, JSON lines otherwise, journald under
//! systemd. Lines are formatted on the thread that logs and written by `writer`'s thread, so a
//! blocked stderr or journal never stops the event loop. `output` carries the workers' and steps'
//! lines; both use the `Style` chosen here.

pub mod file;
pub mod journald;
pub mod output;
pub mod ring;
pub mod writer;

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing::level_filters::LevelFilter;
use tracing::{info, warn, Dispatch};
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// How lines are written: drover's own log and the workers' output match.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Style {
    Text { color: bool },
    Json,
}

/// `log_format = "auto"` (the default) settled by `$DROVER_LOG_FORMAT` (`text`, `json`,
/// `journald`): the one way to choose in one-line mode. A file's explicit setting wins.
fn chosen(format: LogFormat) -> (LogFormat, Option<String>) {
    let Ok(v) = std::env::var("DROVER_LOG_FORMAT") else {
        return (format, None);
    };
    match (format, v.as_str()) {
        (LogFormat::Auto, "text") => (LogFormat::Text, None),
        (LogFormat::Auto, "json") => (LogFormat::Json, None),
        (LogFormat::Auto, "journald") => (LogFormat::Journald, None),
        (LogFormat::Auto, "auto" | "") => (format, None),
        (LogFormat::Auto, other) => (format, Some(format!("DROVER_LOG_FORMAT={other:?} is none of text, json, journald, auto; choosing by whether stderr is a terminal"))),
        _ => (format, None),
    }
}

/// Install the subscriber and start the writer thread; returns the style worker output should use
/// to match.
pub fn init(format: LogFormat) -> Style {
    let (format, bad_env) = chosen(format);
    let level = match std::env::var("DROVER_LOG").as_deref() {
        Ok("error") => LevelFilter::ERROR,
        Ok("warn") => LevelFilter::WARN,
        Ok("debug") => LevelFilter::DEBUG,
        Ok("trace") => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    let journald = match format {
        LogFormat::Journald => true,
        LogFormat::Auto => under_journald(),
        _ => false,
    };
    let mut unreachable = None;
    if journald {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        match journald::Journal::connect().and_then(writer::start) {
            Ok(()) => {
                tracing_subscriber::registry()
                    .with(level)
                    .with(journald::Layer)
                    .init();
                flush_on_abort();
                return Style::Text { color: false };
            }
            Err(e) => unreachable = Some(e),
        }
    }
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text | LogFormat::Journald => false,
    };
    let ansi = !json && std::io::stderr().is_terminal();
    let captured = Captured::default();
    let stderr = Stderr {
        marker: formatter(json, ansi, LevelFilter::WARN, captured.clone()),
        captured,
    };
    // without the thread (it could not be started) lines are written directly, as before
    let _ = writer::start(stderr);
    let _ = tracing::dispatcher::set_global_default(formatter(json, ansi, level, writer::Queued));
    flush_on_abort();
    if let Some(e) = unreachable {
        warn!("journald is not reachable ({e}); logging to stderr instead");
    }
    if let Some(w) = bad_env {
        warn!("{w}");
    }
    if json && format == LogFormat::Auto {
        // said once, first: a person who runs drover under a pipe or a service sees why
        info!("logs are JSON lines because stderr is not a terminal; to choose, set log_format = \"text\" or \"json\" in [supervisor] (or DROVER_LOG_FORMAT=text|json in the environment)");
    }
    if json {
        Style::Json
    } else {
        Style::Text {
            color: std::io::stdout().is_terminal(),
        }
    }
}

/// Before drover exits: write what is still queued, for at most `within`. False when stderr (or
/// the journal) did not take it in time.
pub fn flush(within: Duration) -> bool {
    writer::flush(within)
}

/// A panic ends the process where it aborts (the release profile): write what is queued first,
/// so the lines before the panic are not lost. Where a panic unwinds it may be caught, so it must
/// not wait for stderr.
fn flush_on_abort() {
    if cfg!(panic = "abort") {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            writer::flush(Duration::from_secs(2));
            previous(info)
        }));
    }
}

/// tracing-subscriber's text or JSON format (JSON: `message`, `level`, the event's fields
/// flattened; no target, no spans), writing to `w`.
fn formatter<W>(json: bool, ansi: bool, level: LevelFilter, w: W) -> Dispatch
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let b = tracing_subscriber::fmt()
        .with_writer(w)
        .with_max_level(level)
        .with_target(false);
    if json {
        Dispatch::new(
            b.json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .finish(),
        )
    } else {
        Dispatch::new(b.with_ansi(ansi).finish())
    }
}

/// stderr as the writer thread's sink; its marker line is formatted by the same formatter as
/// every other line, so it is JSON where they are.
struct Stderr {
    marker: Dispatch,
    captured: Captured,
}

impl writer::Sink for Stderr {
    fn write(&mut self, entry: &[u8]) -> std::io::Result<()> {
        writer::write_stderr(entry)
    }

    fn marker(&mut self, n: u64) -> Vec<u8> {
        tracing::dispatcher::with_default(&self.marker, || {
            warn!(
                dropped = n,
                "{n} log line(s) dropped: stderr was not being read (a full pipe, a stalled log collector, a paused terminal)"
            )
        });
        std::mem::take(&mut *self.captured.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// A `MakeWriter` into a buffer the marker is taken from.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

struct CapturedWriter<'a>(MutexGuard<'a, Vec<u8>>);

impl std::io::Write for CapturedWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = CapturedWriter<'a>;

    fn make_writer(&'a self) -> CapturedWriter<'a> {
        CapturedWriter(self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// stderr is connected to the journal: $JOURNAL_STREAM names its device and inode.
fn under_journald() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Text from a less trusted process (a preloader's error, a worker's STATUS=), fit for drover's
/// own log and a terminal: control characters (a carriage return that would overwrite the line,
/// escape sequences) and the invisible characters that reorder or hide text (`hidden`: a bidi
/// override that would make `exe.txt` read `txt.exe`) are shown escaped, the rest as it is.
pub fn printable(s: &str) -> String {
    escaped(s, false)
}

/// `printable`, keeping tabs: a line of a worker's output as `drover logs` and `status` show it.
pub fn printable_line(s: &str) -> String {
    escaped(s, true)
}

/// Characters that reorder or hide text without being control characters: bidi marks,
/// embeddings, overrides and isolates, zero-width marks, line and paragraph separators.
fn hidden(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

fn escaped(s: &str, keep_tab: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c.is_control() && !(keep_tab && c == '\t')) || hidden(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// UTC now as RFC 3339 with microseconds, without a date library.
pub fn now_rfc3339() -> String {
    rfc3339_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// `d` after the epoch as `2026-12-05T07:20:01.123456Z`.
pub fn rfc3339_at(d: Duration) -> String {
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60,
        d.subsec_micros()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable_escapes_control_and_hidden_characters_only() {
        assert_eq!(
            super::printable("ok: é\rX\x1b[2J\t"),
            "ok: é\\rX\\u{1b}[2J\\t"
        );
        assert_eq!(
            super::printable("a\u{202E}b\u{061C}c\u{200B}d\u{2066}e\u{2028}f"),
            "a\\u{202e}b\\u{61c}c\\u{200b}d\\u{2066}e\\u{2028}f"
        );
        assert_eq!(super::printable_line("a\tb\u{1b}"), "a\tb\\u{1b}");
    }

    #[test]
    fn rfc3339_shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}

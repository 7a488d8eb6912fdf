//! drover's own logs through `tracing`: human text on a TTY, JSON lines otherwise, journald under
//! systemd. `output` carries the workers' and steps' lines; both use the `Style` chosen here.

pub mod output;

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;

use crate::config::LogFormat;

/// How lines are written: drover's own log and the workers' output match.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Style {
    Text { color: bool },
    Json,
}

/// Install the subscriber; returns the style worker output should use to match.
pub fn init(format: LogFormat) -> Style {
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
    if journald {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        match tracing_journald::layer() {
            Ok(layer) => {
                // fields go in as PROGRAM=, WORKER=, PID=, STEP= (no prefix)
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier("drover".into());
                tracing_subscriber::registry()
                    .with(level)
                    .with(layer)
                    .init();
                return Style::Text { color: false };
            }
            Err(e) => {
                eprintln!("drover: journald is not reachable ({e}); logging text to stderr instead")
            }
        }
    }
    let json = match format {
        LogFormat::Auto => !std::io::stderr().is_terminal(),
        LogFormat::Json => true,
        LogFormat::Text | LogFormat::Journald => false,
    };
    let b = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false);
    if json {
        b.json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init();
        Style::Json
    } else {
        b.with_ansi(std::io::stderr().is_terminal()).init();
        Style::Text {
            color: std::io::stdout().is_terminal(),
        }
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

/// UTC now as RFC 3339 with microseconds, without a date library.
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
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
    fn rfc3339_shape() {
        let s = super::now_rfc3339();
        assert_eq!(s.len(), 27, "{s}");
        assert!(s.starts_with("20") && s.ends_with('Z'), "{s}");
    }
}

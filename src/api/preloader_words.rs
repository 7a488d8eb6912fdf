//! A program's preloader in words, the same wherever it is shown: `/readyz`'s `why` (from the
//! snapshot) and `drover status` (from the JSON). Only the public fields are used: `error` is
//! drover's own summary, never the application's text (`error_detail`).

use super::client::fmt_uptime;
use super::snapshot::PreloaderStatus;

/// What a preloader is doing, as the facts `/status` publishes about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts<'a> {
    /// loading | ready | failed | stopped
    pub state: &'a str,
    pub pid: Option<i64>,
    pub since_s: Option<f64>,
    /// why the last one failed (drover's words)
    pub error: Option<&'a str>,
}

impl<'a> Facts<'a> {
    pub fn of(p: &'a PreloaderStatus) -> Facts<'a> {
        Facts {
            state: p.state,
            pid: p.pid.map(i64::from),
            since_s: p.since_s,
            error: p.error.as_deref(),
        }
    }

    pub fn from_json(v: &'a serde_json::Value) -> Option<Facts<'a>> {
        Some(Facts {
            state: v["state"].as_str()?,
            pid: v["pid"].as_i64(),
            since_s: v["since_s"].as_f64(),
            error: v["error"].as_str(),
        })
    }

    /// `loading the app (pid 7, for 3s); the last one failed: …`, `ready (pid 7, up 5m02s)`,
    /// `failed: …; tried again after its backoff`. Never a null: what is not known is left out.
    pub fn describe(&self) -> String {
        let mut about = vec![];
        if let Some(pid) = self.pid {
            about.push(format!("pid {pid}"));
        }
        let (what, since) = match self.state {
            "loading" => ("loading the app", "for"),
            "ready" => ("ready", "up"),
            other => (other, "for"),
        };
        if let Some(s) = self.since_s {
            about.push(format!("{since} {}", fmt_uptime(s)));
        }
        let mut out = what.to_string();
        if !about.is_empty() {
            out.push_str(&format!(" ({})", about.join(", ")));
        }
        match (self.state, self.error) {
            ("failed", Some(e)) => out.push_str(&format!(": {e}; tried again after its backoff")),
            ("failed", None) => out.push_str("; tried again after its backoff"),
            ("loading", Some(e)) => out.push_str(&format!("; the last one failed: {e}")),
            _ => {}
        }
        out
    }
}

/// Why a program's workers wait, when its preloader is the reason: `its preloader is loading
/// the app (pid 7, for 3s)`, `its preloader failed: …`. None when it is ready. `d`: seconds
/// since the snapshot was published (its ages are as of then).
pub fn waiting_on(p: &PreloaderStatus, d: f64) -> Option<String> {
    let facts = Facts {
        since_s: p.since_s.map(|s| s + d),
        ..Facts::of(p)
    };
    match facts.state {
        "ready" | "stopped" => None,
        "failed" => Some(format!("its preloader {}", facts.describe())),
        _ => Some(format!("its preloader is {}", facts.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(state: &'static str, pid: Option<i32>, error: Option<&str>) -> PreloaderStatus {
        PreloaderStatus {
            pid,
            state,
            since_s: pid.map(|_| 2.5),
            error: error.map(String::from),
            error_detail: Some("KeyError: 'DATABASE_URL'".into()),
        }
    }

    #[test]
    fn a_preloader_reads_the_same_everywhere_and_never_as_null() {
        let cases = [
            (pre("ready", Some(7), None), 0.0, None),
            (
                pre("loading", Some(7), None),
                1.0,
                Some("its preloader is loading the app (pid 7, for 3s)"),
            ),
            (
                pre("loading", Some(8), Some("it could not load the app")),
                0.0,
                Some("its preloader is loading the app (pid 8, for 2s); the last one failed: it could not load the app"),
            ),
            (
                pre("failed", None, Some("it could not load the app")),
                0.0,
                Some("its preloader failed: it could not load the app; tried again after its backoff"),
            ),
        ];
        for (p, d, want) in cases {
            let got = waiting_on(&p, d);
            assert_eq!(got.as_deref(), want, "{p:?}");
            let text = got.unwrap_or_default();
            assert!(
                !text.contains("null") && !text.contains("KeyError"),
                "{text}"
            );
            // the JSON /status publishes reads the same
            let json = serde_json::to_value(&p).unwrap();
            assert_eq!(
                Facts::from_json(&json).unwrap().describe(),
                Facts::of(&p).describe()
            );
        }
        assert_eq!(
            Facts::of(&pre("ready", Some(7), None)).describe(),
            "ready (pid 7, up 2s)"
        );
        let stopped = pre("stopped", None, None);
        assert_eq!(Facts::of(&stopped).describe(), "stopped");
        assert_eq!(waiting_on(&stopped, 0.0), None, "not why workers wait");
    }
}

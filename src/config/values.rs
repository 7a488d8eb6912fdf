//! Value parsers: durations, sizes, addresses, `${VAR}` expansion, names, and the "did you
//! mean" suggestion for unknown keys. Pure functions of their text.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ListenAddr;

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

pub fn did_you_mean<'a>(word: &str, options: &[&'a str]) -> Option<&'a str> {
    // of several prefixes (`status` and `status_hosts` for `status_host`), the nearest
    if let Some(o) = options
        .iter()
        .filter(|o| {
            o.len() >= 3 && (word.starts_with(**o) || o.starts_with(word)) && word.len() >= 3
        })
        .min_by_key(|o| levenshtein(word, o))
    {
        return Some(o);
    }
    options
        .iter()
        .map(|o| (levenshtein(word, o), *o))
        .filter(|(d, o)| *d <= 2.max(o.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, o)| o)
}

/// `${VAR}`, `${VAR:-default}`; `$${` is a literal `${`. Any other `$` is left alone, so shell
/// commands keep their `$1`, `$$` and `$HOME`.
pub fn expand_env(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    scan(s, &mut |name, default| {
        resolve(env, name, default).ok_or_else(|| unset(name))
    })
}

/// `expand_env` for text that may be a secret (an env file's value): an error names the
/// variable at most, never quotes the text.
pub(super) fn expand_quiet(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut missing = None;
    scan(s, &mut |name, default| {
        resolve(env, name, default).ok_or_else(|| {
            missing = Some(name.to_string());
            String::new()
        })
    })
    .map_err(|_| match missing {
        Some(name) => unset(&name),
        None => "a `${` that does not start a `${NAME}` reference (a name is letters, digits and `_`; write `$${` for a literal `${`)".into(),
    })
}

/// A `${NAME}` or `${NAME:-default}`: empty counts as unset when there is a default, as in a
/// shell. `None`: unset, no default.
fn resolve(
    env: &dyn Fn(&str) -> Option<String>,
    name: &str,
    default: Option<&str>,
) -> Option<String> {
    match (env(name), default) {
        (Some(v), _) if !(v.is_empty() && default.is_some()) => Some(v),
        (_, Some(d)) => Some(d.to_string()),
        (v, None) => v,
    }
}

fn unset(name: &str) -> String {
    format!("environment variable {name} is not set (write ${{{name}:-default}} to give a default)")
}

/// `s` as a human is shown it: every `${VAR}` kept as written (its value may be a secret, a DSN
/// with its password), `$${` read as the `${` it stands for. Text `expand_env` rejects is shown
/// as is.
pub fn template(s: &str) -> String {
    scan(s, &mut |name, default| {
        Ok(match default {
            Some(d) => format!("${{{name}:-{d}}}"),
            None => format!("${{{name}}}"),
        })
    })
    .unwrap_or_else(|_| s.to_string())
}

/// What a `${NAME}` or `${NAME:-default}` becomes, given its name and default.
type Resolve<'a> = dyn FnMut(&str, Option<&str>) -> Result<String, String> + 'a;

/// The one reader of `${...}`: text is copied, each reference replaced by what `resolve` says
/// for its name and default.
fn scan(s: &str, resolve: &mut Resolve) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix("${") {
            out.push_str("${");
            rest = a;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in {s:?}"));
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("`${{{inner}}}` is not a valid variable reference"));
            }
            out.push_str(&resolve(name, default)?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `"500ms"`, `"30s"`, `"5m"`, `"1h"`, `"1m30s"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || format!("`{s}` is not a duration (write e.g. \"500ms\", \"30s\", \"5m\", \"1h\")");
    let mut total = Duration::ZERO;
    let mut rest = t;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_end == 0 {
            return Err(bad());
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        let unit_rest = &rest[num_end..];
        let unit_end = unit_rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(unit_rest.len());
        let unit = &unit_rest[..unit_end];
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            "us" => n / 1_000_000.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(secs).map_err(|_| bad())?;
        rest = &unit_rest[unit_end..];
    }
    Ok(total)
}

/// `"512MiB"`, `"2GiB"`, `"100MB"`, `"4096"` (bytes).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let bad = || format!("`{s}` is not a size (write e.g. \"512MiB\", \"2GiB\")");
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: f64 = t[..num_end].parse().map_err(|_| bad())?;
    let mult: f64 = match t[num_end..].trim() {
        "" | "B" => 1.0,
        "K" | "KiB" => 1024.0,
        "KB" => 1e3,
        "M" | "MiB" => 1024.0 * 1024.0,
        "MB" => 1e6,
        "G" | "GiB" => 1024.0 * 1024.0 * 1024.0,
        "GB" => 1e9,
        "T" | "TiB" => 1024f64.powi(4),
        "TB" => 1e12,
        _ => return Err(bad()),
    };
    let v = n * mult;
    if !v.is_finite() || v >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as u64)
}

pub fn parse_listen(s: &str) -> Result<ListenAddr, String> {
    if let Some(p) = s.strip_prefix("unix:") {
        if p.is_empty() {
            return Err("`unix:` needs a path, e.g. \"unix:/run/app.sock\"".into());
        }
        return Ok(ListenAddr::Unix(PathBuf::from(p)));
    }
    s.parse::<SocketAddr>().map(ListenAddr::Tcp).map_err(|_| {
        format!("`{s}` is not an address (write \"host:port\", \"[::1]:port\" or \"unix:/path\")")
    })
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub fn fmt_size(b: u64) -> String {
    const U: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (n, m) in U {
        if b >= m && b.is_multiple_of((m / 16).max(1)) {
            let v = b as f64 / m as f64;
            return if v.fract() == 0.0 {
                format!("{v:.0}{n}")
            } else {
                format!("{v:.2}{n}")
            };
        }
    }
    format!("{b}B")
}

//! The Host allow-list (`supervisor.status_hosts`): a defence against DNS rebinding.
//!
//! A page on `evil.example` can re-point its own name at 127.0.0.1 (or a pod IP) and then read
//! the status listener as if it were its own origin: the browser sends `Host: evil.example`.
//! So a TCP listener answers only requests whose `Host` (port stripped, case-insensitive) is an
//! IP literal, `localhost`, or a name listed in `status_hosts`; anything else gets 421 on every
//! route — a rebinding page reads `/status`, it need not POST. `"*"` allows any name. A request
//! without `Host` (HTTP/1.0) is allowed: a browser always sends one. A unix-socket listener is
//! not checked (no browser reaches it).
//!
//! IP literals are always allowed: they include the listener's own address, and are what the
//! kubelet's probes and Prometheus send; no DNS answer can make a browser send one for a name.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

/// Which `Host` values the status listener answers.
#[derive(Debug, Clone)]
pub struct Hosts {
    any: bool,
    /// lower-case, without a trailing dot
    names: Vec<String>,
}

impl Hosts {
    /// From `supervisor.status_hosts` (already validated by the config reader).
    pub fn new(configured: &[String]) -> Hosts {
        Hosts {
            any: configured.iter().any(|h| h == "*"),
            names: configured.iter().map(|h| normalize(h)).collect(),
        }
    }

    /// Every host allowed: a unix-socket listener.
    pub fn any() -> Hosts {
        Hosts {
            any: true,
            names: vec![],
        }
    }

    /// Whether a request with this `Host` value may be answered.
    pub fn allows(&self, host: &str) -> bool {
        if self.any {
            return true;
        }
        let name = normalize(strip_port(host));
        if name == "localhost" || is_ip(&name) {
            return true;
        }
        self.names.contains(&name)
    }
}

fn normalize(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `example.com:9900` -> `example.com`; `[::1]:9900` -> `[::1]`; `::1` stays (no port on an
/// unbracketed IPv6 address).
fn strip_port(h: &str) -> &str {
    let h = h.trim();
    if h.starts_with('[') {
        return h.find(']').map_or(h, |i| &h[..=i]);
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => h,
    }
}

fn is_ip(name: &str) -> bool {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    bare.parse::<IpAddr>().is_ok()
}

/// Middleware on every route: 421 for a `Host` (or an absolute-form request target) that is
/// not allowed.
pub async fn check(State(hosts): State<Arc<Hosts>>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get_all(header::HOST)
        .iter()
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_string())
        .chain(req.uri().authority().map(|a| a.as_str().to_string()))
        .find(|h| !hosts.allows(h));
    match given {
        None => next.run(req).await,
        Some(h) => super::server::error(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "Host `{}` is not a name this status listener answers to (a defence against DNS rebinding); if it is yours, add it to supervisor.status_hosts",
                h.chars().take(255).collect::<String>()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_ip_literals_and_localhost_are_allowed_and_names_are_not() {
        let h = Hosts::new(&[]);
        for ok in [
            "127.0.0.1",
            "127.0.0.1:9900",
            "10.1.2.3:80",
            "[::1]:9900",
            "[::1]",
            "::1",
            "[fe80::1]",
            "localhost",
            "LOCALHOST:9900",
            "localhost.",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:9900",
            "127.0.0.1.evil.example",
            "localhost.evil.example",
            "foo.localhost",
            "",
            "[evil.example]",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
    }

    #[test]
    fn listed_names_are_allowed_case_insensitively_with_any_port() {
        let h = Hosts::new(&["api.internal".into(), "Drover.Example.COM".into()]);
        assert!(h.allows("api.internal"));
        assert!(h.allows("API.INTERNAL:9900"));
        assert!(h.allows("drover.example.com."));
        assert!(h.allows("127.0.0.1:1"));
        assert!(!h.allows("api.internal.evil.example"));
        assert!(!h.allows("evil.example"));
    }

    #[test]
    fn a_star_allows_any_name() {
        let h = Hosts::new(&["*".into()]);
        assert!(h.allows("evil.example:9900"));
        assert!(Hosts::any().allows("anything"));
    }
}

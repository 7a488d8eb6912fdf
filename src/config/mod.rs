//! TOML -> typed configuration, collecting *every* problem with its line and column.
//!
//! serde stops at the first error, so the file is parsed with `toml_edit` (which keeps spans)
//! into a small tree and walked by hand. Each typed field is read through a `Ctx` that records
//! problems instead of returning early; the caller gets either a whole `Config` or the whole list.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

/// One problem in a configuration file, with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// Every problem found in one file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "{}: {} problem{} found; nothing was started",
            self.file,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {}:{}:{}: {}", self.file, p.line, p.col, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandSpec {
    /// exec'd directly
    Argv(Vec<String>),
    /// run by `/bin/sh -c`
    Shell(String),
}

impl CommandSpec {
    pub fn argv(&self) -> Vec<String> {
        match self {
            CommandSpec::Argv(v) => v.clone(),
            CommandSpec::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
        }
    }
}

impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandSpec::Argv(v) => write!(f, "{}", v.join(" ")),
            CommandSpec::Shell(s) => write!(f, "sh -c {s:?}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Text,
    Json,
    Journald,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnExhausted {
    Exit,
    Stay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogMode {
    Capture,
    Inherit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffCfg {
    pub initial: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for BackoffCfg {
    fn default() -> Self {
        BackoffCfg {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SupervisorCfg {
    pub status: Option<ListenAddr>,
    pub control_token_file: Option<PathBuf>,
    /// PEM certificate chain and key: the status listener speaks HTTPS
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// `None`: chosen by mode (exit as PID 1, stay otherwise).
    pub on_exhausted: Option<OnExhausted>,
    /// consecutive quick failures of every replica before a program counts as crash-looping
    pub exhausted_after: u32,
    /// after shutdown begins, /readyz says 503 this long before workers are stopped
    pub drain_delay: Duration,
}

impl Default for SupervisorCfg {
    fn default() -> Self {
        SupervisorCfg {
            status: Some(ListenAddr::Tcp("127.0.0.1:9900".parse().unwrap())),
            control_token_file: None,
            tls_cert: None,
            tls_key: None,
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Auto,
            on_exhausted: None,
            exhausted_after: 5,
            drain_delay: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone)]
pub struct StepCfg {
    pub name: String,
    pub command: CommandSpec,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub retry_delay: Duration,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SocketCfg {
    pub name: String,
    pub listen: ListenAddr,
    pub backlog: i32,
    /// file mode of a unix socket
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Copy)]
pub enum ReadyCheck {
    /// the worker polls or accepts on one of its sockets (seen in /proc)
    Listening,
    /// up for `min_uptime`
    Uptime,
    /// an exec check (`{pid}` replaced) exits 0
    Exec,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadinessCfg {
    pub check: ReadyCheck,
    pub min_uptime: Duration,
    pub exec: Vec<String>,
    pub interval: Duration,
    /// not ready this long after spawn: recycled (reason start-timeout)
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthCfg {
    /// GET through the program's first TCP/unix socket
    pub http: Option<String>,
    /// argv with `{pid}` replaced
    pub exec: Option<Vec<String>>,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
    /// per-worker hang detection from /proc (stopped, or running without ever blocking)
    pub hung: bool,
}

/// Per-worker budget, `[program.NAME.budget]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WorkerBudget {
    /// above this: graceful recycle
    pub memory_soft: Option<u64>,
    /// above this: killed (by the kernel in a cgroup, by drover when sampling)
    pub memory_hard: Option<u64>,
    /// cores
    pub cpu: Option<f64>,
}

/// `[program.NAME.autoscale]`: the HPA rule, locally.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoscaleCfg {
    pub min: u32,
    pub max: u32,
    /// percent of the per-worker CPU budget (or of one core)
    pub target_cpu: f64,
    pub scale_down_window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetMode {
    Auto,
    Cgroup,
    Sample,
    Off,
}

/// `[budget]`: the whole node or pod.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBudget {
    pub memory: Option<u64>,
    pub cpu: Option<f64>,
    pub mode: BudgetMode,
    pub sample_interval: Duration,
}

impl Default for NodeBudget {
    fn default() -> Self {
        NodeBudget {
            memory: None,
            cpu: None,
            mode: BudgetMode::Auto,
            sample_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProgramCfg {
    pub name: String,
    pub command: CommandSpec,
    pub sockets: Vec<String>,
    pub workers: u32,
    pub restart: RestartPolicy,
    pub backoff: BackoffCfg,
    pub stop_signal: i32,
    pub stop_timeout: Duration,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    pub log: LogMode,
    pub min_ready: u32,
    /// `None`: chosen by whether the program has sockets
    pub readiness: ReadinessCfg,
    pub health: Option<HealthCfg>,
    pub watch: Vec<PathBuf>,
    /// `workers = "auto"`: `workers` is filled in by `budget::resolve_auto`
    pub workers_auto: bool,
    pub budget: WorkerBudget,
    pub autoscale: Option<AutoscaleCfg>,
    /// `user` / `group`: who the workers run as (None: drover's own ids)
    pub identity: Option<crate::process::identity::Identity>,
}

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub supervisor: SupervisorCfg,
    pub budget: NodeBudget,
    pub prestart: Vec<StepCfg>,
    pub sockets: Vec<SocketCfg>,
    pub programs: Vec<ProgramCfg>,
}

// ---------------------------------------------------------------------------------------------
// A spanned tree, so tables and inline tables read the same way.

#[derive(Debug, Clone)]
enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<Node>),
    Table(Vec<(String, Range<usize>, Node)>),
    Other(&'static str),
}

#[derive(Debug, Clone)]
struct Node {
    v: V,
    span: Range<usize>,
}

fn span_or(s: Option<Range<usize>>, fallback: &Range<usize>) -> Range<usize> {
    s.unwrap_or_else(|| fallback.clone())
}

fn from_value(v: &toml_edit::Value, parent: &Range<usize>) -> Node {
    use toml_edit::Value as TV;
    let span = span_or(v.span(), parent);
    let v = match v {
        TV::String(s) => V::Str(s.value().clone()),
        TV::Integer(i) => V::Int(*i.value()),
        TV::Float(f) => V::Float(*f.value()),
        TV::Boolean(b) => V::Bool(*b.value()),
        TV::Datetime(_) => V::Other("a date-time"),
        TV::Array(a) => V::Arr(a.iter().map(|x| from_value(x, &span)).collect()),
        TV::InlineTable(t) => V::Table(
            t.iter()
                .map(|(k, val)| {
                    let ks = span_or(t.key(k).and_then(|k| k.span()), &span);
                    (k.to_string(), ks.clone(), from_value(val, &ks))
                })
                .collect(),
        ),
    };
    Node { v, span }
}

fn from_table(t: &toml_edit::Table, parent: &Range<usize>) -> Node {
    let span = span_or(t.span(), parent);
    let entries = t
        .iter()
        .map(|(k, item)| {
            let ks = span_or(t.key(k).and_then(|k| k.span()), &span);
            (k.to_string(), ks.clone(), from_item(item, &ks))
        })
        .collect();
    Node {
        v: V::Table(entries),
        span,
    }
}

fn from_item(item: &toml_edit::Item, parent: &Range<usize>) -> Node {
    match item {
        toml_edit::Item::Value(v) => from_value(v, parent),
        toml_edit::Item::Table(t) => from_table(t, parent),
        toml_edit::Item::ArrayOfTables(a) => {
            let span = span_or(a.span(), parent);
            Node {
                v: V::Arr(a.iter().map(|t| from_table(t, &span)).collect()),
                span,
            }
        }
        toml_edit::Item::None => Node {
            v: V::Other("nothing"),
            span: parent.clone(),
        },
    }
}

fn kind(n: &Node) -> &'static str {
    match &n.v {
        V::Str(_) => "a string",
        V::Int(_) => "an integer",
        V::Float(_) => "a float",
        V::Bool(_) => "a boolean",
        V::Arr(_) => "an array",
        V::Table(_) => "a table",
        V::Other(k) => k,
    }
}

// ---------------------------------------------------------------------------------------------

struct Ctx<'a> {
    src: &'a str,
    problems: Vec<Problem>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.src, span.start);
        self.problems.push(Problem {
            line,
            col,
            message: message.into(),
        });
    }

    /// Check a table's keys against the allowed list; `later` are known keys another
    /// capability will implement (an error that says so, never silently ignored).
    fn keys(
        &mut self,
        what: &str,
        entries: &[(String, Range<usize>, Node)],
        allowed: &[&str],
        later: &[&str],
    ) {
        for (k, ks, _) in entries {
            if allowed.contains(&k.as_str()) {
                continue;
            }
            if later.contains(&k.as_str()) {
                self.err(
                    ks,
                    format!("{what}: `{k}` is not supported yet in this version of drover; remove it to run"),
                );
                continue;
            }
            let hint = did_you_mean(k, allowed)
                .map(|s| format!("; did you mean `{s}`?"))
                .unwrap_or_default();
            self.err(ks, format!("{what}: unknown key `{k}`{hint}"));
        }
    }

    fn expand(&mut self, what: &str, n: &Node, s: &str) -> Option<String> {
        match expand_env(s, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }

    fn string(&mut self, what: &str, n: &Node) -> Option<String> {
        match &n.v {
            V::Str(s) => self.expand(what, n, s),
            _ => {
                self.err(
                    &n.span,
                    format!("{what}: expected a string, found {}", kind(n)),
                );
                None
            }
        }
    }

    fn duration(&mut self, what: &str, n: &Node) -> Option<Duration> {
        let s = self.string(what, n)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }

    fn size(&mut self, what: &str, n: &Node) -> Option<u64> {
        let s = match &n.v {
            V::Int(i) if *i > 0 => return Some(*i as u64),
            V::Str(s) => self.expand(what, n, s)?,
            _ => {
                self.err(
                    &n.span,
                    format!("{what}: expected a size like \"512MiB\", found {}", kind(n)),
                );
                return None;
            }
        };
        match parse_size(&s) {
            Ok(0) => {
                self.err(
                    &n.span,
                    format!("{what}: a size of 0 is no budget; leave the key out instead"),
                );
                None
            }
            Ok(b) => Some(b),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }

    fn cores(&mut self, what: &str, n: &Node) -> Option<f64> {
        let x = match n.v {
            V::Int(i) => i as f64,
            V::Float(f) => f,
            _ => {
                self.err(
                    &n.span,
                    format!(
                        "{what}: expected a number of cores like 0.5 or 2, found {}",
                        kind(n)
                    ),
                );
                return None;
            }
        };
        if x > 0.0 && x <= 1024.0 {
            Some(x)
        } else {
            self.err(
                &n.span,
                format!("{what}: {x} cores is out of range (0, 1024]"),
            );
            None
        }
    }

    fn uint(&mut self, what: &str, n: &Node, min: i64, max: i64) -> Option<i64> {
        match &n.v {
            V::Int(i) if (min..=max).contains(i) => Some(*i),
            V::Int(i) => {
                self.err(
                    &n.span,
                    format!("{what}: {i} is out of range (allowed {min}..={max})"),
                );
                None
            }
            _ => {
                self.err(
                    &n.span,
                    format!("{what}: expected an integer, found {}", kind(n)),
                );
                None
            }
        }
    }

    fn choice<T: Copy>(&mut self, what: &str, n: &Node, options: &[(&str, T)]) -> Option<T> {
        let s = self.string(what, n)?;
        if let Some((_, v)) = options.iter().find(|(k, _)| *k == s) {
            return Some(*v);
        }
        let names: Vec<&str> = options.iter().map(|(k, _)| *k).collect();
        self.err(
            &n.span,
            format!("{what}: `{s}` is not one of {}", names.join(" | ")),
        );
        None
    }

    fn table<'n>(&mut self, what: &str, n: &'n Node) -> Option<&'n [(String, Range<usize>, Node)]> {
        match &n.v {
            V::Table(t) => Some(t),
            _ => {
                self.err(
                    &n.span,
                    format!("{what}: expected a table, found {}", kind(n)),
                );
                None
            }
        }
    }

    fn command(&mut self, what: &str, n: &Node) -> Option<CommandSpec> {
        match &n.v {
            V::Str(s) => {
                let s = self.expand(what, n, s)?;
                if s.trim().is_empty() {
                    self.err(&n.span, format!("{what}: the command is empty"));
                    return None;
                }
                Some(CommandSpec::Shell(s))
            }
            V::Arr(items) => {
                if items.is_empty() {
                    self.err(&n.span, format!("{what}: the command is empty"));
                    return None;
                }
                let mut out = Vec::new();
                let mut ok = true;
                for it in items {
                    match self.string(what, it) {
                        Some(s) => out.push(s),
                        None => ok = false,
                    }
                }
                if ok && out[0].is_empty() {
                    self.err(&n.span, format!("{what}: the program name is empty"));
                    return None;
                }
                ok.then_some(CommandSpec::Argv(out))
            }
            _ => {
                self.err(
                    &n.span,
                    format!(
                        "{what}: expected an argv array or a shell string, found {}",
                        kind(n)
                    ),
                );
                None
            }
        }
    }

    fn env_table(&mut self, what: &str, n: &Node) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let Some(t) = self.table(what, n) else {
            return out;
        };
        for (k, ks, v) in t {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                self.err(
                    ks,
                    format!("{what}: `{k}` is not a valid environment variable name"),
                );
                continue;
            }
            let val = match &v.v {
                V::Str(s) => self.expand(&format!("{what}.{k}"), v, s),
                V::Int(i) => Some(i.to_string()),
                V::Float(f) => Some(f.to_string()),
                V::Bool(b) => Some(b.to_string()),
                _ => {
                    self.err(
                        &v.span,
                        format!("{what}.{k}: expected a string, found {}", kind(v)),
                    );
                    None
                }
            };
            if let Some(val) = val {
                out.push((k.clone(), val));
            }
        }
        out
    }

    fn listen(&mut self, what: &str, n: &Node) -> Option<ListenAddr> {
        let s = self.string(what, n)?;
        match parse_listen(&s) {
            Ok(a) => Some(a),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }
}

pub fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map(|i| before[i + 1..].chars().count() + 1)
        .unwrap_or_else(|| before.chars().count() + 1);
    (line, col)
}

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
    if let Some(o) = options
        .iter()
        .find(|o| o.len() >= 3 && (word.starts_with(**o) || o.starts_with(word)) && word.len() >= 3)
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
            match (env(name), default) {
                (Some(v), _) if !(v.is_empty() && default.is_some()) => out.push_str(&v),
                (_, Some(d)) => out.push_str(d),
                (Some(v), None) => out.push_str(&v),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                    ))
                }
            }
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

pub fn parse_signal(s: &str) -> Option<i32> {
    let s = s.trim().to_ascii_uppercase();
    let s = s.strip_prefix("SIG").unwrap_or(&s);
    Some(match s {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "HUP" => libc::SIGHUP,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "WINCH" => libc::SIGWINCH,
        "ABRT" => libc::SIGABRT,
        _ => return None,
    })
}

pub fn signal_name(sig: i32) -> String {
    let n = match sig {
        libc::SIGHUP => "HUP",
        libc::SIGINT => "INT",
        libc::SIGQUIT => "QUIT",
        libc::SIGILL => "ILL",
        libc::SIGTRAP => "TRAP",
        libc::SIGABRT => "ABRT",
        libc::SIGBUS => "BUS",
        libc::SIGFPE => "FPE",
        libc::SIGKILL => "KILL",
        libc::SIGUSR1 => "USR1",
        libc::SIGSEGV => "SEGV",
        libc::SIGUSR2 => "USR2",
        libc::SIGPIPE => "PIPE",
        libc::SIGALRM => "ALRM",
        libc::SIGTERM => "TERM",
        libc::SIGCHLD => "CHLD",
        libc::SIGCONT => "CONT",
        libc::SIGSTOP => "STOP",
        libc::SIGTSTP => "TSTP",
        libc::SIGTTIN => "TTIN",
        libc::SIGTTOU => "TTOU",
        libc::SIGXCPU => "XCPU",
        libc::SIGXFSZ => "XFSZ",
        libc::SIGWINCH => "WINCH",
        libc::SIGSYS => "SYS",
        _ => return format!("SIG{sig}"),
    };
    n.to_string()
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

const TOP_KEYS: &[&str] = &["supervisor", "prestart", "socket", "program", "budget"];
const TOP_LATER: &[&str] = &[];
const BUDGET_KEYS: &[&str] = &["memory", "cpu", "mode", "sample_interval"];
const WORKER_BUDGET_KEYS: &[&str] = &["memory_soft", "memory_hard", "cpu"];
const AUTOSCALE_KEYS: &[&str] = &["min", "max", "target_cpu", "scale_down_window"];
const SUP_KEYS: &[&str] = &[
    "status",
    "control_token_file",
    "tls_cert",
    "tls_key",
    "shutdown_timeout",
    "log_format",
    "on_exhausted",
    "exhausted_after",
    "drain_delay",
];
const STEP_KEYS: &[&str] = &[
    "name",
    "command",
    "timeout",
    "retries",
    "retry_delay",
    "env",
    "cwd",
];
const SOCKET_KEYS: &[&str] = &["listen", "backlog", "mode"];
const PROGRAM_KEYS: &[&str] = &[
    "command",
    "sockets",
    "workers",
    "restart",
    "backoff",
    "stop_signal",
    "stop_timeout",
    "env",
    "cwd",
    "user",
    "group",
    "log",
    "min_ready",
    "readiness",
    "health",
    "watch",
    "budget",
    "autoscale",
];
const PROGRAM_LATER: &[&str] = &[];
const READINESS_KEYS: &[&str] = &["check", "min_uptime", "exec", "interval", "timeout"];
const HEALTH_KEYS: &[&str] = &["http", "exec", "interval", "timeout", "failures", "hung"];
const BACKOFF_KEYS: &[&str] = &["initial", "max", "reset_after"];

/// Bytes -> text, or the position of the first byte that is not UTF-8.
pub fn decode(file: &str, bytes: &[u8]) -> Result<String, ConfigErrors> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_string()),
        Err(e) => {
            let good = std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or("");
            let (line, col) = line_col(good, good.len());
            Err(ConfigErrors {
                file: file.into(),
                problems: vec![Problem {
                    line,
                    col,
                    message: format!(
                        "byte 0x{:02x} is not valid UTF-8; a configuration file must be UTF-8 text",
                        bytes[e.valid_up_to()]
                    ),
                }],
            })
        }
    }
}

/// Parse and type-check one configuration text. `env` resolves `${VAR}`.
pub fn parse(
    file: &str,
    src: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let doc = match toml_edit::Document::parse(src) {
        Ok(d) => d,
        Err(e) => {
            let (line, col) = line_col(src, e.span().map(|s| s.start).unwrap_or(0));
            let msg = e.message().trim().replace('\n', " ");
            return Err(ConfigErrors {
                file: file.into(),
                problems: vec![Problem {
                    line,
                    col,
                    message: format!("TOML syntax error: {msg}"),
                }],
            });
        }
    };
    let root = from_table(doc.as_table(), &(0..0));
    let mut cx = Ctx {
        src,
        problems: Vec::new(),
        env,
    };
    let mut cfg = Config::default();
    let V::Table(top) = &root.v else {
        unreachable!("the root of a TOML document is a table")
    };
    cx.keys("top level", top, TOP_KEYS, TOP_LATER);
    for (k, _, n) in top {
        match k.as_str() {
            "supervisor" => read_supervisor(&mut cx, n, &mut cfg.supervisor),
            "budget" => read_budget(&mut cx, n, &mut cfg.budget),
            "prestart" => match &n.v {
                V::Arr(items) => {
                    for (i, it) in items.iter().enumerate() {
                        if let Some(s) = read_step(&mut cx, i, it) {
                            cfg.prestart.push(s);
                        }
                    }
                }
                _ => cx.err(
                    &n.span,
                    format!("prestart: expected [[prestart]] entries, found {}", kind(n)),
                ),
            },
            "socket" => {
                if let Some(t) = cx.table("socket", n) {
                    for (name, ks, sn) in t {
                        if !is_name(name) {
                            cx.err(
                                ks,
                                format!("socket `{name}`: names use letters, digits, `-` and `_`"),
                            );
                        }
                        if let Some(s) = read_socket(&mut cx, name, sn) {
                            cfg.sockets.push(s);
                        }
                    }
                }
            }
            "program" => {
                if let Some(t) = cx.table("program", n) {
                    for (name, ks, pn) in t {
                        if !is_name(name) {
                            cx.err(
                                ks,
                                format!("program `{name}`: names use letters, digits, `-` and `_`"),
                            );
                        }
                        if let Some(p) = read_program(&mut cx, name, pn) {
                            cfg.programs.push(p);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    cross_check(&mut cx, &cfg, top);
    if cx.problems.is_empty() {
        Ok(cfg)
    } else {
        cx.problems.sort_by_key(|p| (p.line, p.col));
        Err(ConfigErrors {
            file: file.into(),
            problems: cx.problems,
        })
    }
}

fn read_supervisor(cx: &mut Ctx, n: &Node, s: &mut SupervisorCfg) {
    let Some(t) = cx.table("supervisor", n) else {
        return;
    };
    cx.keys("[supervisor]", t, SUP_KEYS, &[]);
    for (k, _, v) in t {
        match k.as_str() {
            "status" => {
                if let Some(st) = cx.string("supervisor.status", v) {
                    if st.is_empty() || st == "off" {
                        s.status = None;
                    } else if let Ok(a) = parse_listen(&st) {
                        s.status = Some(a);
                    } else {
                        s.status = cx.listen("supervisor.status", v);
                    }
                }
            }
            "control_token_file" => {
                s.control_token_file = cx
                    .string("supervisor.control_token_file", v)
                    .map(PathBuf::from)
            }
            "tls_cert" => s.tls_cert = cx.string("supervisor.tls_cert", v).map(PathBuf::from),
            "tls_key" => s.tls_key = cx.string("supervisor.tls_key", v).map(PathBuf::from),
            "shutdown_timeout" => {
                if let Some(d) = cx.duration("supervisor.shutdown_timeout", v) {
                    s.shutdown_timeout = d
                }
            }
            "log_format" => {
                if let Some(f) = cx.choice(
                    "supervisor.log_format",
                    v,
                    &[
                        ("auto", LogFormat::Auto),
                        ("text", LogFormat::Text),
                        ("json", LogFormat::Json),
                        ("journald", LogFormat::Journald),
                    ],
                ) {
                    s.log_format = f
                }
            }
            "on_exhausted" => {
                s.on_exhausted = cx.choice(
                    "supervisor.on_exhausted",
                    v,
                    &[("exit", OnExhausted::Exit), ("stay", OnExhausted::Stay)],
                )
            }
            "exhausted_after" => {
                if let Some(i) = cx.uint("supervisor.exhausted_after", v, 1, 1000) {
                    s.exhausted_after = i as u32
                }
            }
            "drain_delay" => {
                if let Some(d) = cx.duration("supervisor.drain_delay", v) {
                    s.drain_delay = d
                }
            }
            _ => {}
        }
    }
    // TLS needs both files, and a TCP listener to speak it on
    let span_of = |key: &str| {
        t.iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, ks, _)| ks.clone())
    };
    match (&s.tls_cert, &s.tls_key) {
        (Some(_), None) => cx.err(
            &span_of("tls_cert").unwrap(),
            "supervisor.tls_cert needs supervisor.tls_key (the certificate's private key, PEM)",
        ),
        (None, Some(_)) => cx.err(
            &span_of("tls_key").unwrap(),
            "supervisor.tls_key needs supervisor.tls_cert (the certificate chain, PEM)",
        ),
        (Some(_), Some(_)) if !matches!(s.status, Some(ListenAddr::Tcp(_))) => cx.err(
            &span_of("tls_cert").unwrap(),
            "supervisor.tls_cert: TLS needs a TCP status address (a unix socket is protected by its file mode)",
        ),
        _ => {}
    }
}

fn read_budget(cx: &mut Ctx, n: &Node, b: &mut NodeBudget) {
    let Some(t) = cx.table("budget", n) else {
        return;
    };
    cx.keys("[budget]", t, BUDGET_KEYS, &[]);
    for (k, _, v) in t {
        let w = format!("budget.{k}");
        match k.as_str() {
            "memory" => b.memory = cx.size(&w, v),
            "cpu" => b.cpu = cx.cores(&w, v),
            "mode" => {
                if let Some(m) = cx.choice(
                    &w,
                    v,
                    &[
                        ("auto", BudgetMode::Auto),
                        ("cgroup", BudgetMode::Cgroup),
                        ("sample", BudgetMode::Sample),
                        ("off", BudgetMode::Off),
                    ],
                ) {
                    b.mode = m
                }
            }
            "sample_interval" => {
                if let Some(d) = cx.duration(&w, v) {
                    if d < Duration::from_millis(50) || d > Duration::from_secs(60) {
                        cx.err(&v.span, format!("{w}: {d:?} is out of range (50ms..=60s)"));
                    } else {
                        b.sample_interval = d
                    }
                }
            }
            _ => {}
        }
    }
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

fn read_step(cx: &mut Ctx, i: usize, n: &Node) -> Option<StepCfg> {
    let t = cx.table("[[prestart]]", n)?;
    let what = format!("[[prestart]] #{}", i + 1);
    cx.keys(&what, t, STEP_KEYS, &[]);
    let mut name = None;
    let mut command = None;
    let mut step = StepCfg {
        name: String::new(),
        command: CommandSpec::Argv(vec![]),
        timeout: None,
        retries: 0,
        retry_delay: Duration::from_secs(1),
        env: vec![],
        cwd: None,
    };
    let mut ok = true;
    for (k, _, v) in t {
        let w = format!("{what}.{k}");
        match k.as_str() {
            "name" => {
                name = cx.string(&w, v);
                if let Some(nm) = &name {
                    if !is_name(nm) {
                        cx.err(
                            &v.span,
                            format!("{w}: `{nm}` is not a valid name (letters, digits, `-`, `_`)"),
                        );
                    }
                }
            }
            "command" => {
                command = cx.command(&w, v);
                ok &= command.is_some();
            }
            "timeout" => step.timeout = cx.duration(&w, v),
            "retries" => step.retries = cx.uint(&w, v, 0, 1000).unwrap_or(0) as u32,
            "retry_delay" => {
                if let Some(d) = cx.duration(&w, v) {
                    step.retry_delay = d
                }
            }
            "env" => step.env = cx.env_table(&w, v),
            "cwd" => step.cwd = cx.string(&w, v).map(PathBuf::from),
            _ => {}
        }
    }
    if !t.iter().any(|(k, _, _)| k == "command") {
        cx.err(&n.span, format!("{what}: `command` is missing"));
        ok = false;
    }
    step.name = name.unwrap_or_else(|| format!("step{}", i + 1));
    step.command = command?;
    ok.then_some(step)
}

fn read_socket(cx: &mut Ctx, name: &str, n: &Node) -> Option<SocketCfg> {
    let what = format!("[socket.{name}]");
    let t = cx.table(&what, n)?;
    cx.keys(&what, t, SOCKET_KEYS, &[]);
    let mut listen = None;
    let mut backlog = 1024;
    let mut mode = None;
    for (k, _, v) in t {
        let w = format!("socket.{name}.{k}");
        match k.as_str() {
            "listen" => listen = cx.listen(&w, v),
            "backlog" => backlog = cx.uint(&w, v, 1, 65535).unwrap_or(1024) as i32,
            "mode" => {
                mode = match &v.v {
                    V::Str(s) => match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
                        Ok(m) if m <= 0o777 => Some(m),
                        _ => {
                            cx.err(
                                &v.span,
                                format!("{w}: `{s}` is not an octal file mode like \"0660\""),
                            );
                            None
                        }
                    },
                    _ => {
                        cx.err(
                            &v.span,
                            format!(
                                "{w}: expected an octal string like \"0660\", found {}",
                                kind(v)
                            ),
                        );
                        None
                    }
                }
            }
            _ => {}
        }
    }
    if !t.iter().any(|(k, _, _)| k == "listen") {
        cx.err(&n.span, format!("{what}: `listen` is missing"));
    }
    Some(SocketCfg {
        name: name.into(),
        listen: listen?,
        backlog,
        mode,
    })
}

/// `user` / `group` resolved to ids now, so a typo is a plan error and the forked child only
/// makes syscalls. A drover that is not root can only run workers as itself.
fn identity(
    cx: &mut Ctx,
    what: &str,
    user: Option<(String, Range<usize>)>,
    group: Option<(String, Range<usize>)>,
) -> Option<crate::process::identity::Identity> {
    let span = user.as_ref().or(group.as_ref())?.1.clone();
    // without `user`, only the group changes: the user stays drover's own
    let resolved = crate::process::identity::resolve(
        user.as_ref().map(|(u, _)| u.as_str()),
        group.as_ref().map(|(g, _)| g.as_str()),
    );
    let id = match resolved {
        Ok(id) => id,
        Err(e) => {
            cx.err(&span, format!("{what}: {e}"));
            return None;
        }
    };
    let (euid, egid) = crate::process::identity::current();
    if euid != 0 && (id.uid != euid || id.gid != egid) {
        cx.err(
            &span,
            format!(
                "{what}: drover runs as uid {euid}, not root, so it cannot start workers as uid {} gid {}; run drover as root or remove `user`/`group`",
                id.uid, id.gid
            ),
        );
        return None;
    }
    Some(id)
}

fn read_program(cx: &mut Ctx, name: &str, n: &Node) -> Option<ProgramCfg> {
    let what = format!("[program.{name}]");
    let t = cx.table(&what, n)?;
    cx.keys(&what, t, PROGRAM_KEYS, PROGRAM_LATER);
    let mut p = ProgramCfg {
        name: name.into(),
        command: CommandSpec::Argv(vec![]),
        sockets: vec![],
        workers: 1,
        restart: RestartPolicy::Always,
        backoff: BackoffCfg::default(),
        stop_signal: libc::SIGTERM,
        stop_timeout: Duration::from_secs(10),
        env: vec![],
        cwd: None,
        log: LogMode::Capture,
        min_ready: 1,
        readiness: ReadinessCfg {
            check: ReadyCheck::Uptime,
            min_uptime: Duration::from_secs(1),
            exec: vec![],
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(60),
        },
        health: None,
        watch: vec![],
        workers_auto: false,
        budget: WorkerBudget::default(),
        autoscale: None,
        identity: None,
    };
    let mut command = None;
    let mut user: Option<(String, Range<usize>)> = None;
    let mut group: Option<(String, Range<usize>)> = None;
    let mut check_set = false;
    let mut min_uptime_set = false;
    let mut min_ready_set = false;
    for (k, _, v) in t {
        let w = format!("program.{name}.{k}");
        match k.as_str() {
            "command" => command = cx.command(&w, v),
            "sockets" => match &v.v {
                V::Arr(items) => {
                    for it in items {
                        if let Some(s) = cx.string(&w, it) {
                            p.sockets.push(s);
                        }
                    }
                }
                _ => cx.err(
                    &v.span,
                    format!("{w}: expected an array of socket names, found {}", kind(v)),
                ),
            },
            "workers" => match &v.v {
                V::Str(s) if s == "auto" => p.workers_auto = true,
                _ => {
                    if let Some(i) = cx.uint(&w, v, 0, 10_000) {
                        p.workers = i as u32
                    }
                }
            },
            "restart" => {
                if let Some(r) = cx.choice(
                    &w,
                    v,
                    &[
                        ("always", RestartPolicy::Always),
                        ("on-failure", RestartPolicy::OnFailure),
                        ("never", RestartPolicy::Never),
                    ],
                ) {
                    p.restart = r
                }
            }
            "backoff" => {
                if let Some(bt) = cx.table(&w, v) {
                    cx.keys(&w, bt, BACKOFF_KEYS, &[]);
                    for (bk, _, bv) in bt {
                        let bw = format!("{w}.{bk}");
                        let d = match bk.as_str() {
                            "initial" => &mut p.backoff.initial,
                            "max" => &mut p.backoff.max,
                            "reset_after" => &mut p.backoff.reset_after,
                            _ => continue,
                        };
                        if let Some(x) = cx.duration(&bw, bv) {
                            *d = x
                        }
                    }
                    if p.backoff.max < p.backoff.initial {
                        cx.err(
                            &v.span,
                            format!(
                                "{w}: `max` ({:?}) is below `initial` ({:?})",
                                p.backoff.max, p.backoff.initial
                            ),
                        );
                    }
                }
            }
            "stop_signal" => {
                if let Some(s) = cx.string(&w, v) {
                    match parse_signal(&s) {
                        Some(sig) => p.stop_signal = sig,
                        None => cx.err(&v.span, format!("{w}: `{s}` is not a signal drover sends (TERM, INT, QUIT, HUP, KILL, USR1, USR2, WINCH, ABRT)")),
                    }
                }
            }
            "stop_timeout" => {
                if let Some(d) = cx.duration(&w, v) {
                    p.stop_timeout = d
                }
            }
            "env" => p.env = cx.env_table(&w, v),
            "cwd" => p.cwd = cx.string(&w, v).map(PathBuf::from),
            "user" | "group" => {
                let id = match &v.v {
                    V::Str(s) if !s.is_empty() => Some(s.clone()),
                    V::Int(i) if *i >= 0 && *i < u32::MAX as i64 => Some(i.to_string()),
                    _ => {
                        cx.err(
                            &v.span,
                            format!(
                                "{w}: expected a {k} name or a numeric id, found {}",
                                kind(v)
                            ),
                        );
                        None
                    }
                };
                let slot = if k == "user" { &mut user } else { &mut group };
                *slot = id.map(|s| (s, v.span.clone()));
            }
            "log" => {
                if let Some(m) = cx.choice(
                    &w,
                    v,
                    &[("capture", LogMode::Capture), ("inherit", LogMode::Inherit)],
                ) {
                    p.log = m
                }
            }
            "min_ready" => {
                if let Some(i) = cx.uint(&w, v, 0, 10_000) {
                    p.min_ready = i as u32;
                    min_ready_set = true;
                }
            }
            "watch" => match &v.v {
                V::Arr(items) => {
                    for it in items {
                        if let Some(s) = cx.string(&w, it) {
                            p.watch.push(PathBuf::from(s));
                        }
                    }
                }
                _ => cx.err(
                    &v.span,
                    format!("{w}: expected an array of paths, found {}", kind(v)),
                ),
            },
            "readiness" => {
                if let Some(t) = cx.table(&w, v) {
                    cx.keys(&w, t, READINESS_KEYS, &[]);
                    for (rk, _, rv) in t {
                        let rw = format!("{w}.{rk}");
                        match rk.as_str() {
                            "check" => {
                                if let Some(c) = cx.choice(
                                    &rw,
                                    rv,
                                    &[
                                        ("listening", ReadyCheck::Listening),
                                        ("uptime", ReadyCheck::Uptime),
                                        ("exec", ReadyCheck::Exec),
                                    ],
                                ) {
                                    p.readiness.check = c;
                                    check_set = true;
                                }
                            }
                            "min_uptime" => {
                                if let Some(d) = cx.duration(&rw, rv) {
                                    p.readiness.min_uptime = d;
                                    min_uptime_set = true;
                                }
                            }
                            "exec" => {
                                if let Some(CommandSpec::Argv(a)) = cx.command(&rw, rv) {
                                    p.readiness.exec = a
                                } else if let V::Str(_) = rv.v {
                                    cx.err(&rv.span, format!("{rw}: give an argv array, e.g. [\"sh\", \"-c\", \"…{{pid}}…\"]"));
                                }
                            }
                            "interval" => {
                                if let Some(d) = cx.duration(&rw, rv) {
                                    p.readiness.interval = d.max(Duration::from_millis(10))
                                }
                            }
                            "timeout" => {
                                if let Some(d) = cx.duration(&rw, rv) {
                                    p.readiness.timeout = d
                                }
                            }
                            _ => {}
                        }
                    }
                    if p.readiness.check == ReadyCheck::Exec && p.readiness.exec.is_empty() {
                        cx.err(
                            &v.span,
                            format!("{w}: check = \"exec\" needs `exec = [...]`"),
                        );
                    }
                }
            }
            "budget" => {
                if let Some(t) = cx.table(&w, v) {
                    cx.keys(&w, t, WORKER_BUDGET_KEYS, &[]);
                    for (bk, _, bv) in t {
                        let bw = format!("{w}.{bk}");
                        match bk.as_str() {
                            "memory_soft" => p.budget.memory_soft = cx.size(&bw, bv),
                            "memory_hard" => p.budget.memory_hard = cx.size(&bw, bv),
                            "cpu" => p.budget.cpu = cx.cores(&bw, bv),
                            _ => {}
                        }
                    }
                    if let (Some(s), Some(h)) = (p.budget.memory_soft, p.budget.memory_hard) {
                        if s > h {
                            cx.err(
                                &v.span,
                                format!(
                                    "{w}: memory_soft ({}) is above memory_hard ({})",
                                    fmt_size(s),
                                    fmt_size(h)
                                ),
                            );
                        }
                    }
                }
            }
            "autoscale" => {
                if let Some(t) = cx.table(&w, v) {
                    cx.keys(&w, t, AUTOSCALE_KEYS, &[]);
                    let mut a = AutoscaleCfg {
                        min: 1,
                        max: 1,
                        target_cpu: 50.0,
                        scale_down_window: Duration::from_secs(300),
                    };
                    let mut have_max = false;
                    for (ak, _, av) in t {
                        let aw = format!("{w}.{ak}");
                        match ak.as_str() {
                            "min" => a.min = cx.uint(&aw, av, 1, 10_000).unwrap_or(1) as u32,
                            "max" => {
                                a.max = cx.uint(&aw, av, 1, 10_000).unwrap_or(1) as u32;
                                have_max = true;
                            }
                            "target_cpu" => {
                                let x = match av.v {
                                    V::Int(i) => Some(i as f64),
                                    V::Float(f) => Some(f),
                                    _ => None,
                                };
                                match x {
                                    Some(x) if x > 0.0 && x <= 100.0 => a.target_cpu = x,
                                    _ => cx.err(
                                        &av.span,
                                        format!(
                                            "{aw}: expected a percentage in (0, 100], found {}",
                                            kind(av)
                                        ),
                                    ),
                                }
                            }
                            "scale_down_window" => {
                                if let Some(d) = cx.duration(&aw, av) {
                                    a.scale_down_window = d
                                }
                            }
                            _ => {}
                        }
                    }
                    if !have_max {
                        cx.err(&v.span, format!("{w}: `max` is missing"));
                    } else if a.min > a.max {
                        cx.err(
                            &v.span,
                            format!("{w}: min ({}) is above max ({})", a.min, a.max),
                        );
                    }
                    p.autoscale = Some(a);
                }
            }
            "health" => {
                if let Some(t) = cx.table(&w, v) {
                    cx.keys(&w, t, HEALTH_KEYS, &[]);
                    let mut h = HealthCfg {
                        http: None,
                        exec: None,
                        interval: Duration::from_secs(5),
                        timeout: Duration::from_secs(2),
                        failures: 3,
                        hung: true,
                    };
                    for (hk, _, hv) in t {
                        let hw = format!("{w}.{hk}");
                        match hk.as_str() {
                            "http" => {
                                if let Some(path) = cx.string(&hw, hv) {
                                    if path.starts_with('/') && !path.contains(char::is_whitespace)
                                    {
                                        h.http = Some(path)
                                    } else {
                                        cx.err(&hv.span, format!("{hw}: `{path}` is not a request path like \"/healthz\""));
                                    }
                                }
                            }
                            "exec" => match cx.command(&hw, hv) {
                                Some(CommandSpec::Argv(a)) => h.exec = Some(a),
                                Some(CommandSpec::Shell(sh)) => {
                                    h.exec = Some(vec!["/bin/sh".into(), "-c".into(), sh])
                                }
                                None => {}
                            },
                            "interval" => {
                                if let Some(d) = cx.duration(&hw, hv) {
                                    h.interval = d.max(Duration::from_millis(50))
                                }
                            }
                            "timeout" => {
                                if let Some(d) = cx.duration(&hw, hv) {
                                    h.timeout = d
                                }
                            }
                            "failures" => {
                                if let Some(i) = cx.uint(&hw, hv, 1, 1000) {
                                    h.failures = i as u32
                                }
                            }
                            "hung" => match hv.v {
                                V::Bool(b) => h.hung = b,
                                _ => cx.err(
                                    &hv.span,
                                    format!("{hw}: expected true or false, found {}", kind(hv)),
                                ),
                            },
                            _ => {}
                        }
                    }
                    p.health = Some(h);
                }
            }
            _ => {}
        }
    }
    if !check_set && !p.sockets.is_empty() {
        p.readiness.check = ReadyCheck::Listening;
    }
    if !min_uptime_set && p.readiness.check != ReadyCheck::Uptime {
        p.readiness.min_uptime = Duration::ZERO;
    }
    if !min_ready_set {
        p.min_ready = p.min_ready.min(p.workers);
    } else if p.min_ready > p.workers {
        let span = t
            .iter()
            .find(|(k, _, _)| k == "min_ready")
            .map(|(_, _, v)| v.span.clone())
            .unwrap_or(n.span.clone());
        cx.err(
            &span,
            format!(
                "{what}: min_ready ({}) is more than workers ({})",
                p.min_ready, p.workers
            ),
        );
    }
    if p.readiness.check == ReadyCheck::Listening && p.sockets.is_empty() && check_set {
        let span = t
            .iter()
            .find(|(k, _, _)| k == "readiness")
            .map(|(_, _, v)| v.span.clone())
            .unwrap_or(n.span.clone());
        cx.err(
            &span,
            format!("{what}: readiness check \"listening\" needs the program to have `sockets`"),
        );
    }
    if !t.iter().any(|(k, _, _)| k == "command") {
        cx.err(&n.span, format!("{what}: `command` is missing"));
    }
    p.identity = identity(cx, &what, user, group);
    p.command = command?;
    Some(p)
}

/// Checks that span several sections: references, duplicates.
fn cross_check(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    let budget_span = top
        .iter()
        .find(|(k, _, _)| k == "budget")
        .map(|(_, ks, _)| ks.clone())
        .unwrap_or(0..0);
    if let Some(node) = cfg.budget.memory {
        let sum: u64 = cfg
            .programs
            .iter()
            .filter(|p| !p.workers_auto)
            .map(|p| {
                p.budget.memory_hard.unwrap_or(0)
                    * p.autoscale.as_ref().map_or(p.workers, |a| a.min) as u64
            })
            .sum();
        if sum > node {
            cx.err(&budget_span, format!("budget.memory: the workers' memory_hard budgets add up to {}, more than the node's {}", fmt_size(sum), fmt_size(node)));
        }
    }
    if let Some(node) = cfg.budget.cpu {
        let sum: f64 = cfg
            .programs
            .iter()
            .filter(|p| !p.workers_auto)
            .map(|p| {
                p.budget.cpu.unwrap_or(0.0)
                    * p.autoscale.as_ref().map_or(p.workers, |a| a.min) as f64
            })
            .sum();
        if sum > node + 1e-9 {
            cx.err(&budget_span, format!("budget.cpu: the workers' cpu budgets add up to {sum} cores, more than the node's {node}"));
        }
    }
    let socket_names: Vec<&str> = cfg.sockets.iter().map(|s| s.name.as_str()).collect();
    let find = |sect: &str, name: &str| -> Option<Range<usize>> {
        let (_, _, n) = top.iter().find(|(k, _, _)| k == sect)?;
        let V::Table(t) = &n.v else { return None };
        let (_, _, pn) = t.iter().find(|(k, _, _)| k == name)?;
        let V::Table(pt) = &pn.v else {
            return Some(pn.span.clone());
        };
        pt.iter()
            .find(|(k, _, _)| k == "sockets")
            .map(|(_, _, v)| v.span.clone())
            .or(Some(pn.span.clone()))
    };
    for p in &cfg.programs {
        for s in &p.sockets {
            if !socket_names.contains(&s.as_str()) {
                let span = find("program", &p.name).unwrap_or(0..0);
                let hint = did_you_mean(s, &socket_names)
                    .map(|x| format!("; did you mean `{x}`?"))
                    .unwrap_or_else(|| {
                        if socket_names.is_empty() {
                            "; define it with a [socket.NAME] section".into()
                        } else {
                            format!("; defined sockets: {}", socket_names.join(", "))
                        }
                    });
                cx.err(
                    &span,
                    format!("program.{}.sockets: no socket named `{s}`{hint}", p.name),
                );
            }
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &cfg.prestart {
        *seen.entry(&s.name).or_default() += 1;
    }
    for (name, count) in seen {
        if count > 1 {
            let span = top
                .iter()
                .find(|(k, _, _)| k == "prestart")
                .map(|(_, _, n)| n.span.clone())
                .unwrap_or(0..0);
            cx.err(&span, format!("[[prestart]]: the name `{name}` is used {count} times; step names must be unique"));
        }
    }
    let mut addrs: BTreeMap<String, &str> = BTreeMap::new();
    for s in &cfg.sockets {
        let key = s.listen.to_string();
        if let Some(other) = addrs.insert(key.clone(), &s.name) {
            let span = find("socket", &s.name).unwrap_or(0..0);
            cx.err(
                &span,
                format!(
                    "socket.{}.listen: {key} is also the address of socket `{other}`",
                    s.name
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME_DIR" => Some("/home/x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn durations() {
        let cases = [
            ("500ms", Some(500)),
            ("30s", Some(30_000)),
            ("5m", Some(300_000)),
            ("1h", Some(3_600_000)),
            ("1m30s", Some(90_000)),
            ("1.5s", Some(1500)),
            ("0", Some(0)),
            ("", None),
            ("10", None),
            ("s", None),
            ("5 parsecs", None),
            ("-1s", None),
        ];
        for (s, want) in cases {
            let got = parse_duration(s).ok().map(|d| d.as_millis() as u64);
            assert_eq!(got, want, "{s:?}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12XB").is_err());
    }

    #[test]
    fn expansion() {
        assert_eq!(expand_env("${HOME_DIR}/app", &env).unwrap(), "/home/x/app");
        assert_eq!(expand_env("${NOPE:-d}", &env).unwrap(), "d");
        assert_eq!(expand_env("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand_env("$${HOME}", &env).unwrap(), "${HOME}");
        assert_eq!(
            expand_env("echo $$ $1 $HOME", &env).unwrap(),
            "echo $$ $1 $HOME"
        );
        assert_eq!(expand_env("a$b", &env).unwrap(), "a$b");
        assert!(expand_env("${NOPE}", &env)
            .unwrap_err()
            .contains("NOPE is not set"));
        assert!(expand_env("${OPEN", &env).unwrap_err().contains("unclosed"));
        assert!(expand_env("${a b}", &env)
            .unwrap_err()
            .contains("not a valid"));
    }

    #[test]
    fn suggestions() {
        assert_eq!(did_you_mean("comand", PROGRAM_KEYS), Some("command"));
        assert_eq!(did_you_mean("worker", PROGRAM_KEYS), Some("workers"));
        assert_eq!(did_you_mean("zzzzzz", PROGRAM_KEYS), None);
        assert_eq!(did_you_mean("maximum", BACKOFF_KEYS), Some("max"));
    }

    fn problems(src: &str) -> Vec<String> {
        match parse("t.toml", src, &env) {
            Ok(_) => vec![],
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
                .collect(),
        }
    }

    /// Table-driven: bad input -> the exact message with its position.
    #[test]
    fn plan_errors() {
        let cases: &[(&str, &str)] = &[
            ("[program.a]\ncomand = \"x\"\n", "2:1: [program.a]: unknown key `comand`; did you mean `command`?"),
            ("[program.a]\ncommand = \"x\"\nworkers = -1\n", "3:11: program.a.workers: -1 is out of range (allowed 0..=10000)"),
            ("[program.a]\ncommand = []\n", "2:11: program.a.command: the command is empty"),
            ("[program.a]\ncommand = 5\n", "2:11: program.a.command: expected an argv array or a shell string, found an integer"),
            ("[program.a]\ncommand = \"x\"\nrestart = \"sometimes\"\n", "3:11: program.a.restart: `sometimes` is not one of always | on-failure | never"),
            ("[program.a]\ncommand = \"x\"\nstop_timeout = \"forever\"\n", "3:16: program.a.stop_timeout: `forever` is not a duration (write e.g. \"500ms\", \"30s\", \"5m\", \"1h\")"),
            ("[program.a]\ncommand = \"x\"\nsockets = [\"web\"]\n", "3:11: program.a.sockets: no socket named `web`; define it with a [socket.NAME] section"),
            ("[socket.http]\nlisten = \"localhost\"\n", "2:10: socket.http.listen: `localhost` is not an address (write \"host:port\", \"[::1]:port\" or \"unix:/path\")"),
            ("[socket.http]\nbacklog = 10\n", "1:1: [socket.http]: `listen` is missing"),
            ("[program.a]\ncommand = \"${DB_URL}\"\n", "2:11: program.a.command: environment variable DB_URL is not set (write ${DB_URL:-default} to give a default)"),
            ("[supervisor]\ntls_cert = \"/c.pem\"\n", "2:1: supervisor.tls_cert needs supervisor.tls_key (the certificate's private key, PEM)"),
            ("[supervisor]\nstatus = \"unix:/tmp/s.sock\"\ntls_cert = \"/c.pem\"\ntls_key = \"/k.pem\"\n", "3:1: supervisor.tls_cert: TLS needs a TCP status address (a unix socket is protected by its file mode)"),
            ("[program.a]\ncommand = \"x\"\nuser = \"no-such-user-drover\"\n", "3:8: [program.a]: no user `no-such-user-drover` on this system"),
            ("[program.a]\ncommand = \"x\"\ngroup = [1]\n", "3:9: program.a.group: expected a group name or a numeric id, found an array"),
            ("[program.a]\ncommand = \"x\"\n[program.a.health]\nhttp = \"healthz\"\n", "4:8: program.a.health.http: `healthz` is not a request path like \"/healthz\""),
            ("[program.a]\ncommand = \"x\"\nworkers = 2\nmin_ready = 3\n", "4:13: [program.a]: min_ready (3) is more than workers (2)"),
            ("[program.a]\ncommand = \"x\"\nreadiness = { check = \"listening\" }\n", "3:13: [program.a]: readiness check \"listening\" needs the program to have `sockets`"),
            ("[program.a]\ncommand = \"x\"\nreadiness = { check = \"exec\" }\n", "3:13: program.a.readiness: check = \"exec\" needs `exec = [...]`"),
            ("[budget]\nmemory = \"1GiB\"\n[program.a]\ncommand = \"x\"\nworkers = 3\nbudget = { memory_hard = \"512MiB\" }\n", "1:2: budget.memory: the workers' memory_hard budgets add up to 1.50GiB, more than the node's 1GiB"),
            ("[program.a]\ncommand = \"x\"\nbudget = { memory_soft = \"1GiB\", memory_hard = \"512MiB\" }\n", "3:10: program.a.budget: memory_soft (1GiB) is above memory_hard (512MiB)"),
            ("[program.a]\ncommand = \"x\"\nbudget = { cpu = 0 }\n", "3:18: program.a.budget.cpu: 0 cores is out of range (0, 1024]"),
            ("[program.a]\ncommand = \"x\"\nautoscale = { min = 4, max = 2 }\n", "3:13: program.a.autoscale: min (4) is above max (2)"),
            ("[budget]\nmode = \"cgroups\"\n", "2:8: budget.mode: `cgroups` is not one of auto | cgroup | sample | off"),
            ("[supervisor]\nshutdown_timout = \"1s\"\n", "2:1: [supervisor]: unknown key `shutdown_timout`; did you mean `shutdown_timeout`?"),
            ("[supervisor]\non_exhausted = \"die\"\n", "2:16: supervisor.on_exhausted: `die` is not one of exit | stay"),
            ("[[prestart]]\nname = \"m\"\n", "1:1: [[prestart]] #1: `command` is missing"),
            ("[program.a]\ncommand = \"x\"\nstop_signal = \"BANANA\"\n", "3:15: program.a.stop_signal: `BANANA` is not a signal drover sends (TERM, INT, QUIT, HUP, KILL, USR1, USR2, WINCH, ABRT)"),
            ("[program.a\n", "1:11: TOML syntax error"),
            ("[program.a]\ncommand = \"x\"\nbackoff = { initial = \"2s\", max = \"1s\" }\n", "3:11: program.a.backoff: `max` (1s) is below `initial` (2s)"),
        ];
        for (src, want) in cases {
            let got = problems(src);
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "input:\n{src}\nwanted a problem starting with:\n  {want}\ngot:\n  {got:#?}"
            );
        }
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let src = "[supervisor]\nbogus = 1\n[program.a]\ncommand = []\nworkers = \"many\"\n[program.b]\nrestart = \"x\"\n";
        let got = problems(src);
        assert_eq!(got.len(), 5, "{got:#?}");
    }

    #[test]
    fn good_config_parses() {
        let src = r#"
[supervisor]
status = "127.0.0.1:0"
shutdown_timeout = "5s"
[[prestart]]
name = "migrate"
command = ["true"]
timeout = "5m"
retries = 2
env = { A = "${HOME_DIR}" }
[socket.http]
listen = "[::1]:8000"
[program.api]
command = "exec sleep 10"
sockets = ["http"]
workers = 3
backoff = { initial = "50ms", max = "5s", reset_after = "2s" }
stop_signal = "INT"
"#;
        let cfg = parse("t.toml", src, &env).unwrap();
        assert_eq!(cfg.prestart[0].env, vec![("A".into(), "/home/x".into())]);
        assert_eq!(cfg.programs[0].workers, 3);
        assert_eq!(cfg.programs[0].stop_signal, libc::SIGINT);
        assert_eq!(cfg.programs[0].backoff.initial, Duration::from_millis(50));
        assert_eq!(
            cfg.sockets[0].listen,
            ListenAddr::Tcp("[::1]:8000".parse().unwrap())
        );
    }
}

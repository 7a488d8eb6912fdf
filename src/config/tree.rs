//! A spanned tree of the TOML document, so tables and inline tables read the same way, and the
//! positioned reader `Ctx`: each typed read records a problem with its line and column instead
//! of returning early, so every problem in a file is reported at once.

use std::ops::Range;
use std::time::Duration;

use super::values::{did_you_mean, expand_env, parse_duration, parse_listen, parse_size, template};
use super::{CommandSpec, ListenAddr, Problem};

#[derive(Debug, Clone)]
pub(super) enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Arr(Vec<Node>),
    Table(Vec<(String, Range<usize>, Node)>),
    Other(&'static str),
}

#[derive(Debug, Clone)]
pub(super) struct Node {
    pub v: V,
    pub span: Range<usize>,
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

pub(super) fn from_table(t: &toml_edit::Table, parent: &Range<usize>) -> Node {
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

pub(super) fn kind(n: &Node) -> &'static str {
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

pub(super) struct Ctx<'a> {
    pub src: &'a str,
    pub problems: Vec<Problem>,
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    pub(super) fn err(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.src, span.start);
        self.problems.push(Problem {
            line,
            col,
            message: message.into(),
        });
    }

    /// Check a table's keys against the allowed list; `later` are known keys another
    /// capability will implement (an error that says so, never silently ignored).
    pub(super) fn keys(
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

    pub(super) fn expand(&mut self, what: &str, n: &Node, s: &str) -> Option<String> {
        match expand_env(s, self.env) {
            Ok(v) => Some(v),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }

    pub(super) fn string(&mut self, what: &str, n: &Node) -> Option<String> {
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

    pub(super) fn duration(&mut self, what: &str, n: &Node) -> Option<Duration> {
        let s = self.string(what, n)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.err(&n.span, format!("{what}: {e}"));
                None
            }
        }
    }

    /// A duration that must be positive and at least `min`: zero, or less than drover can act
    /// on, is an error with its position, never silently raised.
    pub(super) fn positive(&mut self, what: &str, n: &Node, min: Duration) -> Option<Duration> {
        let d = self.duration(what, n)?;
        if d.is_zero() {
            self.err(
                &n.span,
                format!("{what}: must be more than zero (write e.g. \"5s\")"),
            );
            return None;
        }
        if d < min {
            self.err(
                &n.span,
                format!("{what}: {d:?} is below the shortest drover allows here, {min:?}"),
            );
            return None;
        }
        Some(d)
    }

    pub(super) fn size(&mut self, what: &str, n: &Node) -> Option<u64> {
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

    pub(super) fn cores(&mut self, what: &str, n: &Node) -> Option<f64> {
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

    pub(super) fn uint(&mut self, what: &str, n: &Node, min: i64, max: i64) -> Option<i64> {
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

    pub(super) fn choice<T: Copy>(
        &mut self,
        what: &str,
        n: &Node,
        options: &[(&str, T)],
    ) -> Option<T> {
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

    pub(super) fn table<'n>(
        &mut self,
        what: &str,
        n: &'n Node,
    ) -> Option<&'n [(String, Range<usize>, Node)]> {
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

    /// A command: an argv array or a shell string, `${VAR}` expanded in what runs and kept in
    /// what is shown.
    pub(super) fn command(&mut self, what: &str, n: &Node) -> Option<CommandSpec> {
        match &n.v {
            V::Str(s) => {
                let run = self.process_text(what, n, s)?;
                if run.trim().is_empty() {
                    self.err(&n.span, format!("{what}: the command is empty"));
                    return None;
                }
                Some(CommandSpec::shell(run, template(s)))
            }
            V::Arr(items) => {
                if items.is_empty() {
                    self.err(&n.span, format!("{what}: the command is empty"));
                    return None;
                }
                let (mut run, mut shown) = (Vec::new(), Vec::new());
                let mut ok = true;
                for it in items {
                    let word = match &it.v {
                        V::Str(s) => self.process_text(what, it, s).map(|w| (w, template(s))),
                        _ => {
                            self.err(
                                &it.span,
                                format!("{what}: expected a string, found {}", kind(it)),
                            );
                            None
                        }
                    };
                    match word {
                        Some((w, s)) => {
                            run.push(w);
                            shown.push(s);
                        }
                        None => ok = false,
                    }
                }
                if ok && run[0].is_empty() {
                    self.err(&n.span, format!("{what}: the program name is empty"));
                    return None;
                }
                ok.then(|| CommandSpec::exec(run, shown))
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

    /// Text handed to a process (a command word, an environment value): expanded, and without
    /// a NUL byte, which exec cannot pass. The error never quotes the expanded text.
    fn process_text(&mut self, what: &str, n: &Node, s: &str) -> Option<String> {
        let v = self.expand(what, n, s)?;
        if v.contains('\0') {
            self.err(
                &n.span,
                format!("{what}: contains a NUL byte, which cannot be passed to a process"),
            );
            return None;
        }
        Some(v)
    }

    pub(super) fn env_table(&mut self, what: &str, n: &Node) -> Vec<(String, String)> {
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
                V::Str(s) => self.process_text(&format!("{what}.{k}"), v, s),
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

    pub(super) fn listen(&mut self, what: &str, n: &Node) -> Option<ListenAddr> {
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

//! The dotenv format (`.env`), read as python-dotenv reads it — the reader FastAPI apps already
//! use through pydantic-settings — so a file means the same to drover as to the app. Pure: text
//! in, variables out.
//!
//! - `KEY=value`, `export KEY=value`, spaces around `=`, blank lines, `#` comment lines;
//! - unquoted: the rest of the line, trimmed; ` # comment` (a `#` after a space or tab) ends it,
//!   `a#b` keeps its `#`; no escapes; `${VAR}` expanded;
//! - `"double"`: `\n` `\t` `\r` `\\` `\"` `\'` `\a` `\b` `\f` `\v` escapes (any other backslash is
//!   kept), `${VAR}` expanded, may span lines;
//! - `'single'`: literal — no escape, no expansion, as a shell, systemd and Compose read them —
//!   and may span lines. python-dotenv reads `\\` and `\'` inside single quotes as escapes and
//!   expands `${VAR}` there: a value where the two readings of a backslash differ is refused
//!   (write it in double quotes); `${VAR}` stays literal on purpose;
//! - `${VAR}` and `${VAR:-default}` as in drover's configuration (`values::expand_env`): a
//!   variable set earlier in the same file wins, then the caller's (earlier files, drover's
//!   environment); an unset one without a default is an error; `$${` is a literal `${`.
//!
//! Refused, with the line: a key without `=` (python-dotenv gives it no value), text after a
//! closing quote, a quote never closed, a NUL byte, a byte-order mark. An error never quotes the
//! file's text: a malformed line may be half of a secret.

use std::fmt;

/// A problem at a line of the file (1-based); the message quotes nothing from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// Every `KEY=value` of `text` in order (a key set twice appears twice: the last one wins when
/// applied). `outer` resolves a `${VAR}` the file has not set itself.
pub fn parse(
    text: &str,
    outer: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<(String, String)>, LineError> {
    if text.starts_with('\u{feff}') {
        return Err(LineError {
            line: 1,
            message: "the file starts with a byte-order mark; save it as UTF-8 without one".into(),
        });
    }
    // as Python's text mode reads it: \r\n and \r are \n
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut r = Reader {
        s: text.as_bytes(),
        text: &text,
        at: 0,
    };
    let mut out: Vec<(String, String)> = Vec::new();
    while r.at < r.s.len() {
        let line = r.line();
        let Some((key, value)) = binding(&mut r).map_err(|message| LineError { line, message })?
        else {
            continue;
        };
        let value = match value {
            Value::Literal(v) => v,
            Value::Expand(v) => {
                let mine = |k: &str| {
                    out.iter()
                        .rev()
                        .find(|(ok, _)| ok == k)
                        .map(|(_, v)| v.clone())
                };
                let env = |k: &str| mine(k).or_else(|| outer(k));
                super::values::expand_quiet(&v, &env).map_err(|e| LineError {
                    line,
                    message: format!("{key}: {e}"),
                })?
            }
        };
        if value.contains('\0') {
            return Err(LineError {
                line,
                message: format!(
                    "{key}: the value contains a NUL byte, which cannot be passed to a process"
                ),
            });
        }
        out.push((key, value));
    }
    Ok(out)
}

enum Value {
    /// single-quoted: as written
    Literal(String),
    /// unquoted or double-quoted: `${VAR}` still to expand
    Expand(String),
}

struct Reader<'a> {
    s: &'a [u8],
    text: &'a str,
    at: usize,
}

/// Python's `str.isspace`, which its `\s` follows: Rust's White_Space and the four
/// information separators.
fn space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

/// Whitespace that is not a line break (`[^\S\r\n]`; `\r` is gone by now).
fn blank(c: char) -> bool {
    c != '\n' && space(c)
}

impl Reader<'_> {
    fn line(&self) -> usize {
        self.text[..self.at].matches('\n').count() + 1
    }

    fn peek(&self) -> Option<char> {
        self.text[self.at..].chars().next()
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    /// Skip characters while `f` holds; what was skipped.
    fn skip(&mut self, f: impl Fn(char) -> bool) -> &str {
        let start = self.at;
        let n = self
            .rest()
            .find(|c: char| !f(c))
            .unwrap_or(self.rest().len());
        self.at += n;
        &self.text[start..self.at]
    }

    /// The rest of the line, without its `\n` (consumed).
    fn line_rest(&mut self) -> &str {
        let start = self.at;
        let end = self.rest().find('\n').map_or(self.s.len(), |i| self.at + i);
        self.at = (end + 1).min(self.s.len());
        &self.text[start..end]
    }
}

const TEXT_AFTER: &str = "text after the closing quote (a comment after a value starts with ` #`)";

/// One binding: `None` for a blank or comment line.
fn binding(r: &mut Reader) -> Result<Option<(String, Value)>, String> {
    r.skip(space);
    if r.at >= r.s.len() {
        return Ok(None);
    }
    if r.peek() == Some('#') {
        r.line_rest();
        return Ok(None);
    }
    // `export` and at least one blank, as python-dotenv's `(?:export[^\S\r\n]+)?`
    if let Some(after) = r.rest().strip_prefix("export") {
        if after.starts_with(blank) {
            r.at += "export".len();
            r.skip(blank);
            if r.peek() == Some('#') {
                r.line_rest();
                return Ok(None);
            }
        }
    }
    let key = key(r)?;
    r.skip(blank);
    if r.peek() != Some('=') {
        return Err(
            "a key without `=` (python-dotenv leaves it unset; write KEY= for an empty value)"
                .into(),
        );
    }
    r.at += 1;
    r.skip(blank);
    let value = match r.peek() {
        Some('\'') => Value::Literal(single_quoted(r)?),
        Some('"') => Value::Expand(double_quoted(r)?),
        _ => {
            let part = r.line_rest();
            return Ok(Some((key, Value::Expand(unquoted(part)))));
        }
    };
    // after a quoted value: blanks, an optional comment, the end of the line
    r.skip(blank);
    match r.peek() {
        None => {}
        Some('\n') => r.at += 1,
        Some('#') => {
            r.line_rest();
        }
        Some(_) => return Err(TEXT_AFTER.into()),
    }
    Ok(Some((key, value)))
}

/// `[^=#\s]+`, or `'…'`; a name a process can be given.
fn key(r: &mut Reader) -> Result<String, String> {
    let key = if r.peek() == Some('\'') {
        let body = &r.rest()[1..];
        match body.find('\'') {
            Some(n) if n > 0 => {
                let k = body[..n].to_string();
                r.at += n + 2;
                k
            }
            _ => return Err("a quoted key that is empty or never closed".into()),
        }
    } else {
        r.skip(|c| c != '=' && c != '#' && !space(c)).to_string()
    };
    if key.is_empty() {
        return Err("a line that starts with `=`: expected KEY=value".into());
    }
    if key.contains('=') || key.contains('\0') {
        return Err(
            "a key with `=` or a NUL byte in it cannot name an environment variable".into(),
        );
    }
    Ok(key)
}

/// An unquoted value: the comment (whitespace, then `#`) cut, the rest trimmed at the end.
fn unquoted(part: &str) -> String {
    let mut cut = part.len();
    let mut run_start = None;
    for (i, c) in part.char_indices() {
        if space(c) {
            run_start.get_or_insert(i);
        } else if c == '#' && run_start.is_some() {
            cut = run_start.unwrap_or(i);
            break;
        } else {
            run_start = None;
        }
    }
    part[..cut].trim_end_matches(space).to_string()
}

/// `'…'` up to the next `'`, as written.
fn single_quoted(r: &mut Reader) -> Result<String, String> {
    let body = &r.rest()[1..];
    let Some(n) = body.find('\'') else {
        return Err("a single quote that is never closed".into());
    };
    let v = &body[..n];
    if v.contains("\\\\") || v.ends_with('\\') {
        return Err("a single-quoted value with `\\\\` in it or `\\` before its closing quote: drover reads single quotes literally, python-dotenv reads `\\\\` and `\\'` there as escapes; write the value in double quotes".into());
    }
    let v = v.to_string();
    r.at += n + 2;
    Ok(v)
}

/// `"…"` with its escapes decoded. Matches python-dotenv's `"((?:\\"|[^"])*)"`, backtracking
/// included: without a bare closing quote, the value ends at the last `\"`.
fn double_quoted(r: &mut Reader) -> Result<String, String> {
    let body = &r.rest()[1..];
    let b = body.as_bytes();
    let (mut i, mut last_pair) = (0, None);
    let end = loop {
        match b.get(i) {
            None => match last_pair {
                Some(p) => break p,
                None => return Err("a double quote that is never closed".into()),
            },
            Some(b'\\') if b.get(i + 1) == Some(&b'"') => {
                last_pair = Some(i + 1);
                i += 2;
            }
            Some(b'"') => break i,
            Some(_) => i += 1,
        }
    };
    let v = unescape(&body[..end]);
    r.at += end + 2;
    Ok(v)
}

/// python-dotenv's double-quote escapes, left to right; any other backslash is kept.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = match it.peek() {
            Some('\\') => '\\',
            Some('\'') => '\'',
            Some('"') => '"',
            Some('a') => '\x07',
            Some('b') => '\x08',
            Some('f') => '\x0c',
            Some('n') => '\n',
            Some('r') => '\r',
            Some('t') => '\t',
            Some('v') => '\x0b',
            _ => {
                out.push('\\');
                continue;
            }
        };
        it.next();
        out.push(e);
    }
    out
}

#[cfg(test)]
mod tests;

//! `env_file = ["path", "-optional/path"]` in `[supervisor]`, `[program.NAME]` and
//! `[[prestart]]`: the files as the configuration names them (read by `plan::env_files`, which
//! does the I/O), and what they set once read. Their values are secrets: nothing here prints
//! one, `Debug` included.

use std::fmt;
use std::path::PathBuf;

use super::tree::{kind, Ctx, Node, V};

/// One entry of an `env_file` list.
#[derive(Clone)]
pub struct EnvFile {
    /// as the file writes it (for messages), `-` included
    pub written: String,
    /// the path, made absolute by `paths::anchor`
    pub path: PathBuf,
    /// written with a leading `-` (systemd's convention): a missing file is skipped
    pub optional: bool,
    /// where the entry is in the configuration
    pub line: usize,
    pub col: usize,
}

impl PartialEq for EnvFile {
    /// The same file, wherever the entry moved in the configuration (a reload that only moves
    /// lines changes nothing).
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.optional == other.optional
    }
}

impl Eq for EnvFile {}

impl fmt::Debug for EnvFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.written)
    }
}

/// One file as it was read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReadFile {
    pub path: PathBuf,
    /// the keys it sets, in order; `None`: optional and not there
    pub keys: Option<Vec<String>>,
}

/// What a program's or step's env files set: the supervisor's files, then its own, in order.
/// Applied over drover's environment (and the `user`'s `USER`/`LOGNAME`/`HOME`), under `env`.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct FileEnv {
    pub files: Vec<ReadFile>,
    /// every `KEY=value`, in order: a later one wins
    pub vars: Vec<(String, String)>,
}

impl fmt::Debug for FileEnv {
    /// Files and keys; never a value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileEnv")
            .field("files", &self.files)
            .field(
                "vars",
                &format_args!("<{} values not shown>", self.vars.len()),
            )
            .finish()
    }
}

/// The `env_file` key: a list of paths, each optional with a leading `-`.
pub(super) fn read(cx: &mut Ctx, what: &str, n: &Node) -> Vec<EnvFile> {
    let V::Arr(items) = &n.v else {
        cx.err(
            &n.span,
            format!(
                "{what}: expected a list of paths like [\".env\", \"-.env.local\"], found {}",
                kind(n)
            ),
        );
        return vec![];
    };
    let mut out = vec![];
    for it in items {
        let Some(s) = cx.string(what, it) else {
            continue;
        };
        let (optional, path) = match s.strip_prefix('-') {
            Some(p) => (true, p),
            None => (false, s.as_str()),
        };
        if path.is_empty() {
            cx.err(&it.span, format!("{what}: an empty path"));
            continue;
        }
        let (line, col) = super::line_col(cx.src, it.span.start);
        out.push(EnvFile {
            written: s.clone(),
            path: PathBuf::from(path),
            optional,
            line,
            col,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn entries_keep_their_position_and_a_dash_makes_them_optional() {
        let text = "[supervisor]\nenv_file = [\".env\", \"-/etc/app.env\"]\n[program.a]\ncommand = \"x\"\nenv_file = [\"${DIR}/a.env\"]\n";
        let env = |k: &str| (k == "DIR").then(|| "conf".to_string());
        let cfg = parse("t.toml", text, &env).unwrap();
        let s = &cfg.supervisor.env_file;
        assert_eq!((s[0].path.to_str(), s[0].optional), (Some(".env"), false));
        assert_eq!(
            (s[1].path.to_str(), s[1].optional),
            (Some("/etc/app.env"), true)
        );
        assert_eq!((s[1].line, s[1].col), (2, 21));
        assert_eq!(
            cfg.programs[0].env_file[0].path.to_str(),
            Some("conf/a.env")
        );
        // moved in the file, the same entry: a reload does not count it as a change
        let moved = parse("t.toml", &format!("\n\n{text}"), &env).unwrap();
        assert_eq!(moved.supervisor.env_file, cfg.supervisor.env_file);
    }

    #[test]
    fn a_bad_entry_is_a_positioned_error() {
        for (text, at, says) in [
            (
                "[supervisor]\nenv_file = \".env\"\n",
                (2, 12),
                "expected a list of paths",
            ),
            (
                "[supervisor]\nenv_file = [\"-\"]\n",
                (2, 13),
                "an empty path",
            ),
            (
                "[program.a]\ncommand = \"x\"\nenv_file = [1]\n",
                (3, 13),
                "expected a string",
            ),
            (
                "[[prestart]]\ncommand = \"x\"\nenv_fil = []\n",
                (3, 1),
                "did you mean `env_file`",
            ),
        ] {
            let e = parse("t.toml", text, &|_| None).unwrap_err();
            let p = &e.problems[0];
            assert_eq!((p.line, p.col), at, "{text:?}: {}", p.message);
            assert!(p.message.contains(says), "{text:?}: {}", p.message);
        }
    }
}

//! A command as it runs and as it is shown. Strings in a file expand `${VAR}` when they are
//! read; a command keeps beside the expanded words the words as written, and everything that
//! shows a command to a human (the log, `drover check`, errors that land in `/status`) uses
//! those, so a secret passed through the environment — a DSN with its password — is never
//! printed while the process still gets it.

use std::fmt;

#[derive(Clone, PartialEq)]
pub struct CommandSpec {
    /// run by `/bin/sh -c` (`words` is the one script), else exec'd directly
    shell: bool,
    /// what runs: `${VAR}` expanded
    words: Vec<String>,
    /// the same words as written: `${VAR}` kept, `$${` read as `${`
    shown: Vec<String>,
}

impl CommandSpec {
    /// An argv exec'd directly, with its words as written.
    pub fn exec(words: Vec<String>, shown: Vec<String>) -> CommandSpec {
        debug_assert_eq!(words.len(), shown.len());
        CommandSpec {
            shell: false,
            words,
            shown,
        }
    }

    /// A script run by `/bin/sh -c`, with the script as written.
    pub fn shell(script: String, shown: String) -> CommandSpec {
        CommandSpec {
            shell: true,
            words: vec![script],
            shown: vec![shown],
        }
    }

    /// An argv with nothing expanded in it: shown as it runs.
    pub fn literal(words: Vec<String>) -> CommandSpec {
        CommandSpec::exec(words.clone(), words)
    }

    /// Add words that drover chose (nothing to expand or hide) to an argv command, where they
    /// run and where they are shown; a shell script is left as it is.
    pub fn push_literal(&mut self, words: &[String]) {
        if !self.shell {
            self.words.extend_from_slice(words);
            self.shown.extend_from_slice(words);
        }
    }

    pub fn is_shell(&self) -> bool {
        self.shell
    }

    /// What to exec. Never print it: show the command with `Display` or `shown_argv`.
    pub fn argv(&self) -> Vec<String> {
        Self::full(self.shell, &self.words)
    }

    /// The words of an argv command as they run (None for a shell script), to look the program up.
    pub fn exec_words(&self) -> Option<&[String]> {
        (!self.shell).then_some(&self.words[..])
    }

    /// What is exec'd, as written.
    pub fn shown_argv(&self) -> Vec<String> {
        Self::full(self.shell, &self.shown)
    }

    fn full(shell: bool, words: &[String]) -> Vec<String> {
        if shell {
            let script = words.first().cloned().unwrap_or_default();
            vec!["/bin/sh".into(), "-c".into(), script]
        } else {
            words.to_vec()
        }
    }

    /// `text`, an error about starting this command (which names its program, or the path the
    /// program was found at), with the program put back as written when it was expanded from
    /// the environment. Only the program: the other words are never quoted by such an error.
    pub fn mask_program(&self, text: &str) -> String {
        match (self.shell, self.words.first(), self.shown.first()) {
            (false, Some(w), Some(s)) if !w.is_empty() && w != s => text.replace(w.as_str(), s),
            _ => text.to_string(),
        }
    }
}

/// As written: `uvicorn main:app --fd 3`, `sh -c "alembic upgrade head"`.
impl fmt::Display for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.shell {
            write!(
                f,
                "sh -c {:?}",
                self.shown.first().map_or("", String::as_str)
            )
        } else {
            write!(f, "{}", self.shown.join(" "))
        }
    }
}

/// As written too: a `{:?}` of a configuration must not print a secret either.
impl fmt::Debug for CommandSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandSpec")
            .field("shell", &self.shell)
            .field("shown", &self.shown)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_as_written_run_as_expanded() {
        let c = CommandSpec::exec(
            vec!["psql".into(), "postgres://u:pw@db/app".into()],
            vec!["psql".into(), "postgres://u:${PW}@db/app".into()],
        );
        assert_eq!(c.argv(), vec!["psql", "postgres://u:pw@db/app"]);
        assert_eq!(c.to_string(), "psql postgres://u:${PW}@db/app");
        assert!(!format!("{c:?}").contains("pw@"), "{c:?}");
        let s = CommandSpec::shell("migrate --dsn pw".into(), "migrate --dsn ${DSN}".into());
        assert_eq!(s.argv(), vec!["/bin/sh", "-c", "migrate --dsn pw"]);
        assert_eq!(
            s.shown_argv(),
            vec!["/bin/sh", "-c", "migrate --dsn ${DSN}"]
        );
        assert_eq!(s.to_string(), "sh -c \"migrate --dsn ${DSN}\"");
        assert_eq!(s.exec_words(), None);
    }

    #[test]
    fn mask_puts_an_expanded_program_back_as_written() {
        let c = CommandSpec::exec(
            vec!["/opt/s3cret/bin/tool".into(), "up".into()],
            vec!["/opt/${DIR}/bin/tool".into(), "up".into()],
        );
        assert_eq!(
            c.mask_program("/opt/s3cret/bin/tool: command not found"),
            "/opt/${DIR}/bin/tool: command not found"
        );
        let plain = CommandSpec::literal(vec!["tool".into()]);
        assert_eq!(plain.mask_program("tool: x"), "tool: x");
        let empty = CommandSpec::exec(vec!["".into()], vec!["${EMPTY:-}".into()]);
        assert_eq!(
            empty.mask_program(": x"),
            ": x",
            "an empty expansion replaces nothing"
        );
    }
}

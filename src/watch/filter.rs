//! Which changed files roll a program: `watch_include` / `watch_exclude` globs.
//!
//! A pattern is matched against the end of the file's path below the watched directory, as
//! uvicorn's `--reload-include` reads it (Python's `Path.match`): `*.py` is any file name,
//! `templates/*.html` a file directly in any directory named `templates`, and `**` any number
//! of directories (`templates/**/*.html`). `*` and `?` never cross a `/`.
//!
//! The default include is `*.py`, what `uvicorn --reload` reloads for, so a log file or an
//! SQLite database the app writes under a watched directory does not roll it. Editor droppings
//! and bytecode (dot files, `~`, `.swp`, `.pyc`, `__pycache__`, `.tmp`) are never a change,
//! except a dot file that an include pattern starting with a dot names (`.env`, `.env.*`).
//! An exclude pattern that matches a directory skips it whole: it is not even watched.
//!
//! The glob syntax is the `glob` crate's (rust-lang's own: `*`, `?`, `[abc]`, `[!abc]`, `**`;
//! no dependencies, a few hundred lines): a hand-written matcher would need the same classes
//! (`.py[cod]`), and `globset` brings a regex engine for what are a handful of short patterns.

use std::path::{Component, Path};

use glob::{MatchOptions, Pattern};

/// What `uvicorn --reload` watches when given no `--reload-include`.
pub const DEFAULT_INCLUDE: &[&str] = &["*.py"];

const OPTIONS: MatchOptions = MatchOptions {
    case_sensitive: true,
    require_literal_separator: true,
    require_literal_leading_dot: false,
};

/// One program's include and exclude patterns, compiled.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

/// Compile one pattern; the error says what is wrong with it.
pub fn pattern(text: &str) -> Result<Pattern, String> {
    if text.is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    if text.starts_with('/') {
        return Err(format!(
            "`{text}`: a pattern matches the end of a path below the watched directory, so it cannot start with `/` (write `{}`)",
            text.trim_start_matches('/')
        ));
    }
    Pattern::new(text).map_err(|e| format!("`{text}` is not a glob: {e}"))
}

/// Editor droppings, bytecode and hidden names: never a change unless a dotted include names it.
pub fn dropping(name: &str) -> bool {
    name.starts_with('.')
        || name.ends_with('~')
        || name.ends_with(".swp")
        || name.ends_with(".swx")
        || name.ends_with(".pyc")
        || name.ends_with(".pyo")
        || name == "__pycache__"
        || name.ends_with(".tmp")
}

impl Filter {
    /// From the program's settings (already checked by the config reader).
    pub fn new(include: &[String], exclude: &[String]) -> Result<Filter, String> {
        let compile = |v: &[String]| v.iter().map(|p| pattern(p)).collect::<Result<Vec<_>, _>>();
        Ok(Filter {
            include: compile(include)?,
            exclude: compile(exclude)?,
        })
    }

    /// A change to the file at `rel` (its path below the watched directory) rolls the program.
    pub fn wants_file(&self, rel: &Path) -> bool {
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy()) else {
            return false;
        };
        let dotted = dropping(&name);
        let included = self.include.iter().any(|p| {
            // a dropping is only ever included by a pattern that itself starts with a dot
            (!dotted || last_part(p.as_str()).starts_with('.')) && matches_end(p, rel)
        });
        included && !self.exclude.iter().any(|p| matches_end(p, rel))
    }

    /// The directory at `rel` below the watched one is not watched for this program.
    pub fn skips_dir(&self, rel: &Path) -> bool {
        let hidden = rel
            .file_name()
            .is_some_and(|n| dropping(&n.to_string_lossy()));
        hidden || self.exclude.iter().any(|p| matches_end(p, rel))
    }
}

fn last_part(pattern: &str) -> &str {
    pattern.rsplit('/').next().unwrap_or(pattern)
}

/// `p` matches the last one, two, … components of `rel`.
fn matches_end(p: &Pattern, rel: &Path) -> bool {
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    (0..parts.len())
        .rev()
        .any(|from| p.matches_with(&parts[from..].join("/"), OPTIONS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(include: &[&str], exclude: &[&str]) -> Filter {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Filter::new(&v(include), &v(exclude)).unwrap()
    }

    #[test]
    fn the_default_rolls_for_python_files_only() {
        let f = filter(DEFAULT_INCLUDE, &[]);
        for (path, rolls) in [
            ("main.py", true),
            ("app/routes/users.py", true),
            ("app.log", false),
            ("data/app.db", false),
            ("app.db-journal", false),
            ("templates/index.html", false),
            ("main.pyc", false),
            (".main.py.swp", false),
            ("main.py~", false),
            (".hidden.py", false),
            ("4913", false), // vim's probe file
        ] {
            assert_eq!(f.wants_file(Path::new(path)), rolls, "{path}");
        }
    }

    #[test]
    fn patterns_match_the_end_of_the_path() {
        let f = filter(
            &[
                "*.py",
                "templates/*.html",
                "static/**/*.css",
                ".env",
                ".env.*",
            ],
            &["migrations/*.py", "generated"],
        );
        for (path, rolls) in [
            ("templates/index.html", true),
            ("app/templates/index.html", true),
            ("templates/partials/nav.html", false), // `*` does not cross a `/`
            ("index.html", false),
            ("static/site.css", true),
            ("static/css/deep/site.css", true),
            (".env", true),
            ("config/.env.local", true),
            ("migrations/0001_init.py", false),
            ("app/migrations/0001_init.py", false),
            ("app/migrations.py", true),
            ("generated/models.py", true), // a directory exclude skips the directory (below)
        ] {
            assert_eq!(f.wants_file(Path::new(path)), rolls, "{path}");
        }
        for (dir, skipped) in [
            ("generated", true),
            ("app/generated", true),
            ("app", false),
            (".git", true),
            (".venv", true),
            ("app/__pycache__", true),
            ("migrations", false),
        ] {
            assert_eq!(f.skips_dir(Path::new(dir)), skipped, "{dir}");
        }
    }

    #[test]
    fn every_file_with_a_star_but_still_no_droppings() {
        let f = filter(&["*"], &["*.log", "*.db", "*.sqlite3*"]);
        assert!(f.wants_file(Path::new("config.yaml")));
        assert!(f.wants_file(Path::new("a/b/c.txt")));
        assert!(!f.wants_file(Path::new("var/app.log")));
        assert!(!f.wants_file(Path::new("db.sqlite3-journal")));
        assert!(!f.wants_file(Path::new(".gitignore")));
        assert!(!f.wants_file(Path::new("x.swp")));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert!(pattern("").unwrap_err().contains("empty"));
        assert!(pattern("/src/*.py")
            .unwrap_err()
            .contains("write `src/*.py`"));
        assert!(pattern("[a").unwrap_err().contains("not a glob"));
        assert!(pattern("a**b").unwrap_err().contains("not a glob"));
        assert!(pattern(".py[cod]").is_ok());
    }
}

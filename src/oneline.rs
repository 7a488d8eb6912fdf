//! One-line mode: `drover run [flags] -- COMMAND [ARGS...]`, no file. The flags become the TOML
//! a file would hold, which then goes through the same parser and plan as any file (so
//! `--print-config` prints exactly what runs, and a user can graduate to a file with it).
//!
//! With none of `--workers`, `--bind` or `--prestart`, it is a tini-style init: one worker,
//! `restart = "never"`, its output passed through, no status endpoint unless `--status` asks;
//! drover reaps every orphan, forwards signals, and exits with the child's code (128 + the
//! signal if it was killed) once it has ended. With any of them it is the uvicorn/gunicorn
//! replacement: a program `app` of `--workers` workers (default `${WEB_CONCURRENCY:-1}`), one
//! socket per `--bind` passed at fd 3.. with LISTEN_FDS, restarted when they crash.

/// The flags of `drover run` that build a configuration.
#[derive(Debug, Default, Clone)]
pub struct OneLine {
    pub workers: Option<String>,
    pub bind: Vec<String>,
    pub status: Option<String>,
    pub prestart: Vec<String>,
    pub stop_timeout: Option<String>,
    /// `--watch`: the dev runner's paths (rolling restart when a `*.py` under them changes)
    pub watch: Vec<String>,
    pub command: Vec<String>,
}

/// A TOML basic string, with `${` written as `$${` so the text stays literal (drover expands
/// `${VAR}` in every string of a file).
fn lit(s: &str) -> String {
    quoted(&s.replace("${", "$${"))
}

/// A TOML basic string as is: `${VAR}` in it expands (for `--workers`).
fn quoted(s: &str) -> String {
    // JSON string escapes are TOML basic-string escapes
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// `--bind` as `listen`: `HOST:PORT`, `:PORT` (every address, as gunicorn reads it), `[::]:PORT`,
/// `unix:PATH`.
fn listen(bind: &str) -> String {
    match bind.strip_prefix(':') {
        Some(port) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => {
            format!("0.0.0.0:{port}")
        }
        _ => bind.to_string(),
    }
}

impl OneLine {
    /// A tini-style init: nothing asked beyond the command (status and stop timeout aside).
    pub fn is_init(&self) -> bool {
        self.workers.is_none()
            && self.bind.is_empty()
            && self.prestart.is_empty()
            && self.watch.is_empty()
    }

    /// The configuration these flags stand for, as a file would hold it.
    pub fn to_toml(&self) -> String {
        let argv: Vec<String> = self.command.iter().map(|a| lit(a)).collect();
        let mut o = format!(
            "# drover run {} -- {} (one-line mode)\n\n[supervisor]\n",
            self.flags(),
            self.command.join(" ")
        );
        let status = match (&self.status, self.is_init()) {
            (Some(s), _) => s.clone(),
            (None, true) => "off".into(),
            (None, false) => "127.0.0.1:9900".into(),
        };
        o.push_str(&format!("status = {}\n", lit(&status)));
        if let Some(t) = &self.stop_timeout {
            // the shutdown waits as long as a worker's stop may take
            o.push_str(&format!("shutdown_timeout = {}\n", lit(t)));
        }
        for (i, cmd) in self.prestart.iter().enumerate() {
            o.push_str(&format!(
                "\n[[prestart]]\nname = \"prestart{}\"\ncommand = {}\n",
                i + 1,
                lit(cmd)
            ));
        }
        let names: Vec<String> = (0..self.bind.len()).map(socket_name).collect();
        for (name, bind) in names.iter().zip(&self.bind) {
            o.push_str(&format!(
                "\n[socket.{name}]\nlisten = {}\n",
                lit(&listen(bind))
            ));
        }
        o.push_str(&format!(
            "\n[program.app]\ncommand = [{}]\n",
            argv.join(", ")
        ));
        if self.is_init() {
            o.push_str("workers = 1\nrestart = \"never\"\nlog = \"inherit\"\n");
        } else {
            let workers = self.workers.as_deref().unwrap_or("${WEB_CONCURRENCY:-1}");
            let sockets: Vec<String> = names.iter().map(|n| quoted(n)).collect();
            // a number as a number, as a file would write it; `auto` and `${...}` are strings
            let workers = match workers.parse::<u32>() {
                Ok(n) => n.to_string(),
                Err(_) => quoted(workers),
            };
            o.push_str(&format!("workers = {workers}\n"));
            if !sockets.is_empty() {
                o.push_str(&format!("sockets = [{}]\n", sockets.join(", ")));
            }
        }
        if let Some(t) = &self.stop_timeout {
            o.push_str(&format!("stop_timeout = {}\n", lit(t)));
        }
        if !self.watch.is_empty() {
            let paths: Vec<String> = self.watch.iter().map(|p| lit(p)).collect();
            o.push_str(&format!("watch = [{}]\n", paths.join(", ")));
        }
        o
    }

    /// The flags as given, for the header comment.
    fn flags(&self) -> String {
        let mut f = vec![];
        if let Some(w) = &self.workers {
            f.push(format!("--workers {w}"));
        }
        f.extend(self.bind.iter().map(|b| format!("--bind {b}")));
        if let Some(s) = &self.status {
            f.push(format!("--status {s}"));
        }
        f.extend(self.prestart.iter().map(|p| format!("--prestart {p:?}")));
        if let Some(t) = &self.stop_timeout {
            f.push(format!("--stop-timeout {t}"));
        }
        f.extend(self.watch.iter().map(|w| format!("--watch {w}")));
        f.join(" ")
    }
}

/// `http` for the first socket, then `http1`, `http2`…: the names in LISTEN_FDNAMES.
fn socket_name(i: usize) -> String {
    if i == 0 {
        "http".into()
    } else {
        format!("http{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(o: &OneLine, env: &dyn Fn(&str) -> Option<String>) -> crate::config::Config {
        let text = o.to_toml();
        crate::config::parse("<command line>", &text, env)
            .unwrap_or_else(|e| panic!("{e}\nin:\n{text}"))
    }

    #[test]
    fn a_bare_command_is_a_tini_style_init() {
        let o = OneLine {
            command: vec!["sh".into(), "-c".into(), "echo ${HOME} $1; exit 3".into()],
            ..Default::default()
        };
        assert!(o.is_init());
        let c = parse(&o, &|_| None);
        let p = &c.programs[0];
        assert_eq!(p.name, "app");
        assert_eq!(p.workers, 1);
        assert_eq!(p.restart, crate::config::RestartPolicy::Never);
        assert_eq!(p.log, crate::config::LogMode::Inherit);
        assert_eq!(c.supervisor.status, None, "no status endpoint unless asked");
        // the command is passed as written: no ${...} expansion of the user's text
        let written = ["sh", "-c", "echo ${HOME} $1; exit 3"];
        assert_eq!(p.command.argv(), written);
        // and shown as typed: `$${` in the file is the `${` the user wrote
        assert_eq!(p.command.shown_argv(), written);
        assert_eq!(p.command.to_string(), "sh -c echo ${HOME} $1; exit 3");
    }

    #[test]
    fn flags_build_sockets_workers_steps_and_timeouts() {
        let o = OneLine {
            workers: Some("${WEB_CONCURRENCY:-auto}".into()),
            bind: vec![":8000".into(), "unix:/run/app.sock".into()],
            status: Some("127.0.0.1:0".into()),
            prestart: vec!["alembic upgrade head".into()],
            stop_timeout: Some("20s".into()),
            command: vec![
                "uvicorn".into(),
                "main:app".into(),
                "--fd".into(),
                "3".into(),
            ],
            ..Default::default()
        };
        let c = parse(&o, &|k| (k == "WEB_CONCURRENCY").then(|| "3".to_string()));
        let p = &c.programs[0];
        assert_eq!(p.workers, 3, "WEB_CONCURRENCY=3");
        assert_eq!(p.sockets, vec!["http".to_string(), "http1".to_string()]);
        assert_eq!(c.sockets[0].listen.to_string(), "0.0.0.0:8000");
        assert_eq!(c.sockets[1].listen.to_string(), "unix:/run/app.sock");
        assert_eq!(
            c.prestart[0].command.to_string(),
            "sh -c \"alembic upgrade head\""
        );
        let o = OneLine {
            prestart: vec!["echo ${HOME} migrated".into()],
            ..o
        };
        let step = &parse(&o, &|k| (k == "HOME").then(|| "/root".into())).prestart[0].command;
        assert_eq!(step.argv()[2], "echo ${HOME} migrated", "nothing expands");
        assert_eq!(step.to_string(), "sh -c \"echo ${HOME} migrated\"");
        assert_eq!(p.stop_timeout, std::time::Duration::from_secs(20));
        assert_eq!(
            c.supervisor.shutdown_timeout,
            std::time::Duration::from_secs(20)
        );
        assert_eq!(p.restart, crate::config::RestartPolicy::Always);
        // without WEB_CONCURRENCY: auto
        assert!(parse(&o, &|_| None).programs[0].workers_auto);
    }

    #[test]
    fn watch_makes_a_dev_runner_that_rolls_for_python_files() {
        let o = OneLine {
            watch: vec!["src".into(), "${HOME}/lib".into()],
            command: vec!["python".into(), "worker.py".into()],
            ..Default::default()
        };
        assert!(
            !o.is_init(),
            "a dev runner restarts its workers, it is no init"
        );
        let c = parse(&o, &|_| None);
        let p = &c.programs[0];
        let paths: Vec<_> = p.watch.iter().map(|w| w.display().to_string()).collect();
        assert_eq!(paths, ["src", "${HOME}/lib"], "paths stay as typed");
        assert_eq!(p.watch_include, ["*.py"]);
        assert_eq!(p.restart, crate::config::RestartPolicy::Always);
        assert!(o
            .to_toml()
            .contains("# drover run --watch src --watch ${HOME}/lib -- python"));
    }
}

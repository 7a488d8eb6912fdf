//! What drover can tell from a program's words about the server it runs — uvicorn,
//! drover-uvicorn, gunicorn, hypercorn — and what follows: flags that fight drover's own job,
//! `--fd 3` with no socket to serve, a protocol it is asked to speak and cannot, and the backlog
//! it will `listen()` drover's socket again with. Pure: the command's words and the file only.

use crate::config::{CommandSpec, Config, ProgramCfg, ReadyCheck, SocketCfg};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Uvicorn,
    /// drover-uvicorn (`python -m drover_worker.cli`): uvicorn's options, drover's protocols
    DroverUvicorn,
    Gunicorn,
    Hypercorn,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Uvicorn => "uvicorn",
            Server::DroverUvicorn => "drover-uvicorn",
            Server::Gunicorn => "gunicorn",
            Server::Hypercorn => "hypercorn",
        }
    }

    /// The backlog it passes to `listen()` on every socket it serves unless told otherwise.
    fn default_backlog(self) -> i32 {
        match self {
            Server::Uvicorn | Server::DroverUvicorn | Server::Gunicorn => 2048,
            Server::Hypercorn => 100,
        }
    }
}

/// A server found in a command.
#[derive(Debug)]
pub struct Seen {
    pub server: Server,
    /// the words as written (a shell script split at whitespace)
    argv: Vec<String>,
    /// found inside a `/bin/sh -c` script: drover cannot safely add a word to it
    in_script: bool,
}

impl Seen {
    fn name(&self) -> &'static str {
        self.server.name()
    }

    /// The value of `flag` (`--fd 3` or `--fd=3`), if given.
    fn value(&self, flag: &str) -> Option<&str> {
        self.argv.iter().enumerate().find_map(|(i, a)| {
            if a == flag {
                self.argv.get(i + 1).map(String::as_str)
            } else {
                a.strip_prefix(flag)?.strip_prefix('=')
            }
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.argv
            .iter()
            .any(|a| a == flag || a.strip_prefix(flag).is_some_and(|r| r.starts_with('=')))
    }

    /// It serves the socket drover passes (fd 3 and on) rather than one of its own.
    fn serves_passed_socket(&self) -> bool {
        match self.server {
            Server::Uvicorn => self.has("--fd"),
            // drover-uvicorn serves fd 3 unless told another address
            Server::DroverUvicorn => !["--host", "--port", "--uds"].iter().any(|f| self.has(f)),
            // gunicorn takes LISTEN_FDS over its --bind
            Server::Gunicorn => true,
            Server::Hypercorn => self.value("--bind").is_some_and(|b| b.starts_with("fd://")),
        }
    }
}

/// The server a command runs, from its words as written.
pub fn seen(cmd: &CommandSpec) -> Option<Seen> {
    let shown = cmd.shown_argv();
    let (argv, in_script): (Vec<String>, bool) = if cmd.is_shell() {
        let script = shown.last().map_or("", String::as_str);
        (script.split_whitespace().map(String::from).collect(), true)
    } else {
        (shown, false)
    };
    let base = |a: &str| a.rsplit('/').next().unwrap_or(a).to_string();
    let server = argv.iter().find_map(|a| match base(a).as_str() {
        "uvicorn" => Some(Server::Uvicorn),
        "drover-uvicorn" | "drover_worker.cli" => Some(Server::DroverUvicorn),
        "gunicorn" => Some(Server::Gunicorn),
        "hypercorn" => Some(Server::Hypercorn),
        _ => None,
    })?;
    Some(Seen {
        server,
        argv,
        in_script,
    })
}

/// Everything this module warns about in one program, each with what to do instead.
pub fn warnings(cfg: &Config, p: &ProgramCfg) -> Vec<String> {
    let Some(seen) = seen(&p.command) else {
        return vec![];
    };
    let mut w = vec![];
    if p.sockets.is_empty() {
        w.extend(no_socket_to_serve(p, &seen));
    } else {
        w.extend(flags(p, &seen));
        w.extend(backlog(cfg, p, &seen).and_then(|b| b.warning));
    }
    w.extend(protocols(p, &seen));
    w
}

/// `--fd 3` (or drover-uvicorn, which serves fd 3 by default) where no socket is passed.
fn no_socket_to_serve(p: &ProgramCfg, seen: &Seen) -> Option<String> {
    let how = match seen.server {
        Server::Uvicorn if seen.has("--fd") => "uvicorn `--fd` serves a socket drover passes",
        Server::DroverUvicorn if seen.serves_passed_socket() => {
            "drover-uvicorn serves the socket drover passes at fd 3 (unless given --host, --port or --uds)"
        }
        Server::Hypercorn if seen.serves_passed_socket() => {
            "hypercorn `--bind fd://` serves a socket drover passes"
        }
        _ => return None,
    };
    let name = &p.name;
    Some(format!(
        "program {name}: {how}, but [program.{name}] has no `sockets`, so fd 3 is not a listening socket and every worker fails at start: give it one (`--bind ADDR` in one-line mode; in a file, `sockets = [\"http\"]` and a [socket.http] `listen`)"
    ))
}

/// uvicorn, gunicorn and hypercorn flags that fight drover's own job in a program with sockets.
fn flags(p: &ProgramCfg, seen: &Seen) -> Vec<String> {
    let (name, server) = (&p.name, seen.name());
    let mut out = vec![];
    for (i, a) in seen.argv.iter().enumerate() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with('-') => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let value = inline
            .or_else(|| seen.argv.get(i + 1).cloned())
            .unwrap_or_default();
        let advice = match (seen.server, flag) {
            (_, "--workers") | (Server::Gunicorn | Server::Hypercorn, "-w") => format!(
                "drover runs the workers, each a single {server} process: remove it and set `workers = {value}` in [program.{name}]"
            ),
            (Server::Uvicorn | Server::DroverUvicorn, "--host" | "--port" | "--uds") => format!(
                "{server} would bind its own socket beside drover's: remove it, and serve drover's with `--fd 3` (set the address in [socket.*] `listen`)"
            ),
            (Server::Gunicorn, "--bind" | "-b") => "gunicorn would bind its own socket: remove it; gunicorn takes drover's from LISTEN_FDS (set the address in [socket.*] `listen`)".to_string(),
            (Server::Hypercorn, "--bind" | "-b") if !value.starts_with("fd://") => "hypercorn would bind its own socket: use `--bind fd://3` to serve drover's (set the address in [socket.*] `listen`)".to_string(),
            (_, "--reload") => format!(
                "{server}'s reloader is a second supervisor: remove it and use `watch = [\"src/\"]` in [program.{name}] (a rolling restart on change)"
            ),
            _ => continue,
        };
        out.push(format!(
            "program {name}: {server} `{flag} {value}`: {advice}"
        ));
    }
    if seen.server == Server::Uvicorn && !seen.has("--fd") {
        out.push(format!(
            "program {name}: uvicorn without `--fd 3` binds its own socket (127.0.0.1:8000 unless told otherwise), not drover's: add `--fd 3`"
        ));
    }
    out
}

/// `preload = true` or `check = "notify"` with a server known not to speak it.
fn protocols(p: &ProgramCfg, seen: &Seen) -> Vec<String> {
    let (name, server) = (&p.name, seen.name());
    let mut out = vec![];
    if p.preload && seen.server != Server::DroverUvicorn {
        out.push(format!(
            "program {name}: preload = true, but {server} does not speak drover's preload protocol (docs/worker-protocol.md): the preloader never says it has loaded, so no worker starts (it is killed after readiness.timeout, {:?}, and retried); run drover-uvicorn with the same options, or remove `preload`",
            p.readiness.timeout
        ));
    }
    // gunicorn's arbiter sends READY=1 itself; hypercorn's behaviour is not known here
    if p.readiness.check == ReadyCheck::Notify && seen.server == Server::Uvicorn {
        out.push(format!(
            "program {name}: readiness check = \"notify\", but uvicorn never sends READY=1: no worker becomes ready, each is recycled after readiness.timeout ({:?}); run drover-uvicorn (it says READY=1 after the app's startup), or use check = \"listening\"",
            p.readiness.timeout
        ));
    }
    out
}

/// What to do about the backlog a server `listen()`s drover's socket again with.
#[derive(Debug, PartialEq)]
pub struct Backlog {
    /// words to add to the command: `--backlog N`
    pub add: Option<[String; 2]>,
    pub warning: Option<String>,
}

/// uvicorn, gunicorn and hypercorn call `listen()` again on the socket they are given, with
/// their own `--backlog` (2048, or 100 for hypercorn): the kernel's queue then holds that, not
/// the `backlog` of drover's [socket]. Where drover can add `--backlog` to an argv it does;
/// in a shell script it says what to add; a different `--backlog` given is said.
pub fn backlog(cfg: &Config, p: &ProgramCfg, seen: &Seen) -> Option<Backlog> {
    if !seen.serves_passed_socket() {
        return None;
    }
    let sock: &SocketCfg = cfg
        .sockets
        .iter()
        .find(|s| Some(&s.name) == p.sockets.first())?;
    let (name, server, want) = (&p.name, seen.name(), sock.backlog);
    if let Some(given) = seen.value("--backlog") {
        if given.parse::<i32>().ok() == Some(want) {
            return None;
        }
        return Some(Backlog {
            add: None,
            warning: Some(format!(
                "program {name}: {server} `--backlog {given}` listen()s socket {} again: its queue holds {given}, not the socket's backlog {want}; make them the same",
                sock.name
            )),
        });
    }
    let default = seen.server.default_backlog();
    if default == want {
        return None;
    }
    if seen.in_script {
        return Some(Backlog {
            add: None,
            warning: Some(format!(
                "program {name}: {server} listen()s socket {} again with its own backlog ({default} unless told), not the socket's {want}: add `--backlog {want}` to the command",
                sock.name
            )),
        });
    }
    Some(Backlog {
        add: Some(["--backlog".into(), want.to_string()]),
        warning: None,
    })
}

/// Add `--backlog` to the commands that need it (see `backlog`); one line per program changed.
pub fn pass_backlog(cfg: &mut Config) -> Vec<String> {
    let mut adds = vec![];
    for (i, p) in cfg.programs.iter().enumerate() {
        let Some(seen) = seen(&p.command) else {
            continue;
        };
        if p.sockets.is_empty() {
            continue;
        }
        if let Some(Backlog { add: Some(w), .. }) = backlog(cfg, p, &seen) {
            let line = format!(
                "program {}: {} gets `{} {}`, socket {}'s backlog ({} listen()s drover's socket again, with {} unless told)",
                p.name,
                seen.name(),
                w[0],
                w[1],
                p.sockets[0],
                seen.name(),
                seen.server.default_backlog()
            );
            adds.push((i, w, line));
        }
    }
    let mut lines = vec![];
    for (i, w, line) in adds {
        cfg.programs[i].command.push_literal(&w);
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(program: &str) -> Config {
        let text = format!(
            "[socket.http]\nlisten = \"127.0.0.1:0\"\nbacklog = 512\n[socket.spare]\nlisten = \"127.0.0.1:0\"\n[program.api]\n{program}\n"
        );
        crate::config::parse("t.toml", &text, &|_| None).expect("parses")
    }

    #[test]
    fn the_backlog_is_passed_said_or_left_alone() {
        // (program, words added, a warning containing)
        let cases: [(&str, Option<&str>, Option<&str>); 9] = [
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]", Some("--backlog 512"), None),
            ("command = [\"python\", \"-m\", \"uvicorn\", \"m:app\", \"--fd=3\"]\nsockets = [\"http\"]", Some("--backlog 512"), None),
            ("command = [\"drover-uvicorn\", \"m:app\"]\nsockets = [\"http\"]", Some("--backlog 512"), None),
            ("command = [\"gunicorn\", \"-k\", \"uvicorn.workers.UvicornWorker\", \"m:app\"]\nsockets = [\"http\"]", Some("--backlog 512"), None),
            // uvicorn serving a socket of its own: not drover's business
            ("command = [\"uvicorn\", \"m:app\", \"--port\", \"9000\"]\nsockets = [\"http\"]", None, None),
            ("command = [\"drover-uvicorn\", \"m:app\", \"--uds\", \"/tmp/x\"]\nsockets = [\"http\"]", None, None),
            // a script: said, not changed
            ("command = \"exec uvicorn m:app --fd 3\"\nsockets = [\"http\"]", None, Some("add `--backlog 512` to the command")),
            // given: the same is fine, another is said
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\", \"--backlog\", \"512\"]\nsockets = [\"http\"]", None, None),
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\", \"--backlog=64\"]\nsockets = [\"http\"]", None, Some("`--backlog 64` listen()s socket http again: its queue holds 64, not the socket's backlog 512")),
        ];
        for (program, added, warned) in cases {
            let mut c = cfg(program);
            let before = c.programs[0].command.to_string();
            let lines = pass_backlog(&mut c);
            let after = c.programs[0].command.to_string();
            match added {
                Some(w) => {
                    assert_eq!(after, format!("{before} {w}"), "{program}");
                    assert_eq!(lines.len(), 1, "{program}: said in `derived`");
                }
                None => assert_eq!(after, before, "{program}"),
            }
            let warns = warnings(&c, &c.programs[0]).join("\n");
            match warned {
                Some(w) => assert!(warns.contains(w), "{program}: {warns}"),
                None => assert!(!warns.contains("backlog"), "{program}: {warns}"),
            }
        }
        // the socket's backlog is the server's own default: nothing to do
        let mut c =
            cfg("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]");
        c.sockets[0].backlog = 2048;
        assert!(pass_backlog(&mut c).is_empty());
    }

    #[test]
    fn protocols_and_fds_a_server_cannot_use_are_said() {
        // (program, a warning containing; None: no warning from this module at all)
        let cases: [(&str, Option<&str>); 8] = [
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\"]", Some("has no `sockets`, so fd 3 is not a listening socket")),
            ("command = [\"drover-uvicorn\", \"m:app\"]", Some("drover-uvicorn serves the socket drover passes at fd 3")),
            ("command = [\"drover-uvicorn\", \"m:app\", \"--port\", \"9000\"]", None),
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]\npreload = true", Some("preload = true, but uvicorn does not speak drover's preload protocol")),
            ("command = \"gunicorn m:app\"\nsockets = [\"http\"]\npreload = true", Some("preload = true, but gunicorn does not speak")),
            ("command = [\"uvicorn\", \"m:app\", \"--fd\", \"3\"]\nsockets = [\"http\"]\nreadiness = { check = \"notify\" }", Some("uvicorn never sends READY=1")),
            ("command = [\"drover-uvicorn\", \"m:app\", \"--backlog\", \"512\"]\nsockets = [\"http\"]\npreload = true\nreadiness = { check = \"notify\" }", None),
            ("command = [\"gunicorn\", \"m:app\", \"--backlog\", \"512\"]\nsockets = [\"http\"]\nreadiness = { check = \"notify\" }", None),
        ];
        for (program, want) in cases {
            let c = cfg(program);
            let warns = warnings(&c, &c.programs[0]);
            match want {
                Some(w) => assert!(warns.iter().any(|x| x.contains(w)), "{program}: {warns:?}"),
                None => assert!(warns.is_empty(), "{program}: {warns:?}"),
            }
        }
    }
}

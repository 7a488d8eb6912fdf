use super::keys::{BACKOFF_KEYS, PROGRAM_KEYS};
use super::values::template;
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
        ("[supervisor]\nstatus_host = [\"a\"]\n", "2:1: [supervisor]: unknown key `status_host`; did you mean `status_hosts`?"),
        ("[supervisor]\nstatus_hosts = \"api.internal\"\n", "2:16: supervisor.status_hosts: expected an array of host names, found a string"),
        ("[supervisor]\nstatus_hosts = [\"api.internal:9900\"]\n", "2:16: supervisor.status_hosts: `api.internal:9900` is not a host name; write names as in the Host header without the port (\"drover.internal\"), or \"*\" to allow any (IP addresses and localhost are always allowed)"),
        ("[[prestart]]\nname = \"m\"\n", "1:1: [[prestart]] #1: `command` is missing"),
        ("[program.a]\ncommand = \"x\"\nstop_signal = \"BANANA\"\n", "3:15: program.a.stop_signal: `BANANA` is not a signal drover sends (TERM, INT, QUIT, HUP, KILL, USR1, USR2, WINCH, ABRT)"),
        ("[program.a\n", "1:11: TOML syntax error"),
        ("[program.a]\ncommand = \"x\"\nbackoff = { initial = \"2s\", max = \"1s\" }\n", "3:11: program.a.backoff: `max` (1s) is below `initial` (2s)"),        ("[[prestart]]\ncommand = \"x\"\nstop_timout = \"1s\"\n", "3:1: [[prestart]] #1: unknown key `stop_timout`; did you mean `stop_timeout`?"),
        ("[[prestart]]\ncommand = \"x\"\nstop_signal = \"STOP\"\n", "3:15: [[prestart]] #1.stop_signal: `STOP` is not a signal drover sends"),
        ("[[prestart]]\ncommand = \"x\"\nstop_timeout = \"0s\"\n", "3:16: [[prestart]] #1.stop_timeout: must be more than zero"),
        ("[program.a]\ncommand = [\"x\", \"a\\u0000${HOME_DIR}\"]\n", "2:17: program.a.command: contains a NUL byte, which cannot be passed to a process"),
        ("[program.a]\ncommand = \"x\"\nenv = { A = \"${HOME_DIR}\\u0000\" }\n", "3:13: program.a.env.A: contains a NUL byte"),
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
fn problems_never_quote_an_expanded_value() {
    let src = "[program.a]\ncommand = [\"x\", \"${HOME_DIR}\\u0000\"]\nenv = { A = \"\\u0000${HOME_DIR}\" }\n";
    let got = problems(src);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got.iter().all(|p| !p.contains("/home/x")), "{got:#?}");
}

#[test]
fn commands_are_shown_as_written() {
    assert_eq!(
        template("psql ${HOME_DIR} ${X:-d} $$ $1 $${Y}"),
        "psql ${HOME_DIR} ${X:-d} $$ $1 ${Y}"
    );
    let src = r#"
[[prestart]]
command = "migrate --dsn ${HOME_DIR} --literal $${HOME_DIR}"
[program.a]
command = ["${HOME_DIR}/bin/app", "--x=${NOPE:-1}"]
[program.a.health]
exec = ["check", "${HOME_DIR}", "{pid}"]
"#;
    let cfg = parse("t.toml", src, &env).unwrap();
    let step = &cfg.prestart[0].command;
    assert_eq!(
        step.argv()[2],
        "migrate --dsn /home/x --literal ${HOME_DIR}"
    );
    assert_eq!(
        step.to_string(),
        "sh -c \"migrate --dsn ${HOME_DIR} --literal ${HOME_DIR}\""
    );
    let p = &cfg.programs[0];
    assert_eq!(p.command.argv(), vec!["/home/x/bin/app", "--x=1"]);
    assert_eq!(p.command.to_string(), "${HOME_DIR}/bin/app --x=${NOPE:-1}");
    let h = p.health.as_ref().unwrap().exec.as_ref().unwrap();
    assert_eq!(h.argv(), vec!["check", "/home/x", "{pid}"]);
    assert_eq!(h.to_string(), "check ${HOME_DIR} {pid}");
    let plan = crate::plan::render(&cfg, "t.toml");
    assert!(!plan.contains("/home/x"), "{plan}");
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
[[prestart]]
name = "seed"
command = "true"
stop_signal = "INT"
stop_timeout = "2s"
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
    let step = &cfg.prestart[0];
    assert_eq!(step.stop_signal, nix::sys::signal::Signal::SIGTERM);
    assert_eq!(
        step.stop_grace(&cfg.supervisor),
        Duration::from_secs(5),
        "a step's stop_timeout defaults to the shutdown timeout"
    );
    let seed = &cfg.prestart[1];
    assert_eq!(seed.stop_signal, nix::sys::signal::Signal::SIGINT);
    assert_eq!(seed.stop_grace(&cfg.supervisor), Duration::from_secs(2));
    let longer = StepCfg {
        stop_timeout: Some(Duration::from_secs(120)),
        ..seed.clone()
    };
    assert_eq!(
        longer.stop_grace(&cfg.supervisor),
        Duration::from_secs(5),
        "capped by the shutdown timeout, as a program's stop_timeout is"
    );
    assert_eq!(cfg.programs[0].workers, 3);
    assert_eq!(
        cfg.programs[0].stop_signal,
        nix::sys::signal::Signal::SIGINT
    );
    assert_eq!(cfg.programs[0].backoff.initial, Duration::from_millis(50));
    assert_eq!(
        cfg.sockets[0].listen,
        ListenAddr::Tcp("[::1]:8000".parse().unwrap())
    );
}

#[test]
fn log_table_sets_file_rotation_and_ring() {
    let c = parse(
        "t.toml",
        "[program.api]\ncommand = [\"x\"]\n[program.api.log]\nfile = \"/var/log/drover/api.log\"\nmax_size = \"1MiB\"\nbackups = 3\nlines = 50\n",
        &env,
    )
    .unwrap();
    let p = &c.programs[0];
    assert_eq!(p.log, LogMode::Capture);
    assert_eq!(p.log_lines, 50);
    let f = p.log_file.as_ref().unwrap();
    assert_eq!(f.path, std::path::PathBuf::from("/var/log/drover/api.log"));
    assert_eq!((f.max_size, f.backups), (1024 * 1024, 3));
}

#[test]
fn log_word_still_works_and_defaults_hold() {
    let c = parse(
        "t.toml",
        "[program.api]\ncommand = [\"x\"]\nlog = \"inherit\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(c.programs[0].log, LogMode::Inherit);
    assert_eq!(c.programs[0].log_lines, 1000);
    assert!(c.programs[0].log_file.is_none());
}

#[test]
fn log_table_errors_name_the_key() {
    for (body, says) in [
        (
            "mode = \"inherit\"\nfile = \"/tmp/a.log\"",
            "inherited output never passes",
        ),
        ("max_size = \"1MiB\"", "no `file` is set"),
        ("file = \"/tmp/a.log\"\nmax_size = 10", "too small"),
        ("file = \"/tmp/\"", "names a directory"),
        ("lines = -1", "program.api.log.lines"),
        ("colour = true", "colour"),
    ] {
        let e = problems(&format!(
            "[program.api]\ncommand = [\"x\"]\n[program.api.log]\n{body}\n"
        ))
        .join("\n");
        assert!(e.contains(says), "{body:?}: {e}");
    }
}

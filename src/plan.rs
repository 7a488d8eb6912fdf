//! From a parsed configuration to the plan drover runs: user and group names looked up (a
//! problem is a positioned error, like any other in the file), `workers = "auto"` derived from
//! the machine, and the warnings a valid file can still earn (a command that is not installed
//! here: at run time that worker backs off and retries; a socket nobody serves; what `servers`
//! sees in a command). `render` (`render.rs`) is what `drover check` prints, in the file's words (`words`).

use crate::config::{CommandSpec, Config, ConfigErrors, Problem};
use crate::process::identity;
use crate::process::spawn;
use crate::resources::sizing;

mod env_files;
mod order;
mod render;
mod servers;
mod words;

pub use render::render;

/// Resolve what parsing left to the machine: identities, then worker counts. Returns one line per
/// derived figure, or every problem found, positioned in `file`.
pub fn resolve(file: &str, cfg: &mut Config) -> Result<Vec<String>, ConfigErrors> {
    let mut problems = vec![];
    let mut resolve = |r: &Option<crate::config::RunAs>, what: String, whom: &str| {
        let r = r.as_ref()?;
        run_as(r, whom)
            .map_err(|message| {
                problems.push(Problem {
                    line: r.line,
                    col: r.col,
                    message: format!("{what}: {message}"),
                })
            })
            .ok()
    };
    for s in &mut cfg.prestart {
        s.identity = resolve(&s.run_as, format!("[[prestart]] {}", s.name), "the step");
    }
    for p in &mut cfg.programs {
        p.identity = resolve(&p.run_as, format!("[program.{}]", p.name), "workers");
    }
    if problems.is_empty() {
        // who runs what is known: the env files can be checked against it
        problems = env_files::load(cfg, &|k| std::env::var(k).ok());
    }
    if !problems.is_empty() {
        problems.sort_by_key(|p| (p.line, p.col));
        return Err(ConfigErrors {
            file: file.into(),
            problems,
        });
    }
    let mut derived = derive_workers(cfg);
    derived.extend(servers::pass_backlog(cfg));
    Ok(derived)
}

/// `user` / `group` to ids. A drover that is not root can only run workers and steps as itself.
fn run_as(r: &crate::config::RunAs, whom: &str) -> Result<identity::Identity, String> {
    // without `user`, only the group changes: the user stays drover's own
    let id = identity::resolve(r.user.as_deref(), r.group.as_deref())?;
    let (euid, egid) = identity::current();
    if euid != 0 && (id.uid != euid || id.gid != egid) {
        return Err(format!(
            "drover runs as uid {euid}, not root, so it cannot start {whom} as uid {} gid {}; run drover as root or remove `user`/`group`",
            id.uid, id.gid
        ));
    }
    Ok(id)
}

const RETRY: &str = " (at run time: logged, backed off and retried)";

/// Problems a valid file can still have on this machine, each with what will happen.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut w = Vec::new();
    let path = std::env::var("PATH").ok();
    let mut check = |what: String,
                     cmd: &CommandSpec,
                     env: &[(String, String)],
                     files: &crate::config::FileEnv,
                     cwd: Option<&std::path::Path>| {
        let Some(argv) = cmd.exec_words() else { return };
        // `env` over the env files over drover's own
        let p = env
            .iter()
            .chain(files.vars.iter().rev())
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone())
            .or_else(|| path.clone());
        let problem = match spawn::resolve(&argv[0], p.as_deref(), cwd) {
            Some(exe) if spawn::is_executable(&exe) => return,
            Some(exe) if exe.exists() => format!("{} is not executable", exe.display()),
            Some(exe) => format!("{} does not exist here", exe.display()),
            None => format!("command `{}` not found in PATH", argv[0]),
        };
        // the program's path as written: a `${VAR}` in it stays unexpanded
        w.push(format!("{what}: {}{RETRY}", cmd.mask_program(&problem)));
    };
    for s in &cfg.prestart {
        check(
            format!("pre-start step {}", s.name),
            &s.command,
            &s.env,
            &s.file_env,
            s.cwd.as_deref(),
        );
    }
    for p in &cfg.programs {
        check(
            format!("program {}", p.name),
            &p.command,
            &p.env,
            &p.file_env,
            p.cwd.as_deref(),
        );
    }
    for p in &cfg.programs {
        w.extend(servers::warnings(cfg, p));
    }
    w.extend(order::warnings(cfg));
    for s in &cfg.sockets {
        if !cfg.programs.iter().any(|p| p.sockets.contains(&s.name)) {
            w.push(format!(
                "socket {}: no program lists it in `sockets`: drover binds {} and nothing accepts, so connections wait in its queue until the client gives up; add it to a program's `sockets` or remove [socket.{}]",
                s.name, s.listen, s.name
            ));
        }
    }
    for p in &cfg.programs {
        if let Some(c) = &p.cwd {
            if !c.is_dir() {
                w.push(format!(
                    "program {}: cwd {} is not a directory here{RETRY}",
                    p.name,
                    c.display()
                ));
            }
        }
    }
    w
}

/// Fill in `workers` for every `auto` program (and clamp autoscaled ones into their bounds).
/// Returns one log line per program it decided for.
fn derive_workers(cfg: &mut Config) -> Vec<String> {
    let mut lines = vec![];
    let needs_cpu = cfg.programs.iter().any(|p| p.workers_auto);
    let (cores, src) = if needs_cpu {
        sizing::cpu_capacity()
    } else {
        (0.0, String::new())
    };
    for p in &mut cfg.programs {
        if p.workers_auto {
            let (n, why) =
                sizing::auto_workers(cores, &src, cfg.budget.memory, p.budget.memory_hard);
            p.workers = n;
            lines.push(format!(
                "program {}: workers = \"auto\" -> {n} ({why})",
                p.name
            ));
        }
        if let Some(a) = &p.autoscale {
            let clamped = p.workers.clamp(a.min, a.max);
            if clamped != p.workers {
                lines.push(format!(
                    "program {}: starting with {clamped} workers (autoscale min {} max {})",
                    p.name, a.min, a.max
                ));
                p.workers = clamped;
            }
        }
        if p.min_ready > p.workers {
            lines.push(format!(
                "program {}: min_ready {} lowered to {} (its worker count)",
                p.name, p.min_ready, p.workers
            ));
            p.min_ready = p.workers;
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(src: &str) -> Result<Config, Vec<String>> {
        let mut cfg = crate::config::parse("t.toml", src, &|_| None).expect("parses");
        resolve("t.toml", &mut cfg).map(|_| cfg).map_err(|e| {
            e.problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
                .collect()
        })
    }

    #[test]
    fn users_are_looked_up_when_planning_with_their_position() {
        let src = "[program.a]\ncommand = \"x\"\nuser = \"no-such-user-drover\"\n[program.b]\ncommand = \"y\"\ngroup = \"no-such-group-drover\"\n";
        assert_eq!(
            planned(src).unwrap_err(),
            vec![
                "3:8: [program.a]: no user `no-such-user-drover` on this system".to_string(),
                "6:9: [program.b]: no group `no-such-group-drover` on this system".to_string(),
            ],
            "every problem, each where it is written"
        );
        let me = nix::unistd::geteuid();
        let ok = planned(&format!(
            "[program.a]\ncommand = \"x\"\nuser = {me}\ngroup = {}\n",
            nix::unistd::getegid()
        ))
        .unwrap();
        let id = ok.programs[0].identity.as_ref().expect("resolved");
        assert_eq!(id.uid, me.as_raw());
    }

    #[test]
    fn a_steps_user_is_looked_up_like_a_programs() {
        let src = "[[prestart]]\nname = \"migrate\"\ncommand = \"x\"\nuser = \"no-such-user-drover\"\n[program.a]\ncommand = \"y\"\n";
        assert_eq!(
            planned(src).unwrap_err(),
            vec!["4:8: [[prestart]] migrate: no user `no-such-user-drover` on this system"]
        );
        let me = nix::unistd::geteuid();
        let ok = planned(&format!(
            "[[prestart]]\ncommand = \"x\"\nuser = {me}\ngroup = {}\n[program.a]\ncommand = \"y\"\n",
            nix::unistd::getegid()
        ))
        .unwrap();
        let id = ok.prestart[0].identity.as_ref().expect("resolved");
        assert_eq!(id.uid, me.as_raw());
        assert!(
            ok.programs[0].identity.is_none(),
            "the program keeps drover's ids"
        );
        assert!(render(&ok, "t.toml").contains(&format!("runs as uid {me} ")));
    }

    #[test]
    fn auto_workers_are_derived_and_said() {
        let mut cfg = crate::config::parse(
            "t.toml",
            "[program.a]\ncommand = \"x\"\nworkers = \"auto\"\n",
            &|_| None,
        )
        .unwrap();
        let lines = resolve("t.toml", &mut cfg).unwrap();
        assert!(cfg.programs[0].workers >= 1);
        assert!(
            lines[0].starts_with("program a: workers = \"auto\" -> "),
            "{lines:?}"
        );
    }
}

//! What `drover check` says about `depends_on` and `essential`: the start order drover will
//! follow (the loop computes it the same way, `config::start_order`), and what a valid file can
//! still get wrong.

use std::fmt::Write;

use crate::config::{Condition, Config, ProgramCfg};

/// `start order` lines: each program with its step (programs of one step start together once
/// what they wait for holds) and its conditions; then the essential programs.
pub fn render(o: &mut String, cfg: &Config) {
    let all: Vec<&ProgramCfg> = cfg.programs.iter().collect();
    if all.iter().all(|p| p.depends_on.is_empty()) {
        let _ = writeln!(
            o,
            "start order: every program at once (none has depends_on); shutdown stops them all at once"
        );
    } else {
        let _ = writeln!(o, "start order (depends_on; a program starts once every condition it names holds, programs of one step together; shutdown is the reverse, dependents first):");
        for (i, step) in crate::config::start_order(&all) {
            let p = all[i];
            let after: Vec<String> = p
                .depends_on
                .iter()
                .map(|(d, c)| format!("{d} {}", condition(*c)))
                .collect();
            let after = if after.is_empty() {
                String::new()
            } else {
                format!("after {}", after.join(", "))
            };
            let line = format!("  {:>3}. {:<14} {after}", step + 1, p.name);
            let _ = writeln!(o, "{}", line.trim_end());
        }
    }
    for p in all.iter().filter(|p| p.essential) {
        let _ = writeln!(o, "  essential: {} (when it ends for good, drover stops every program and exits with its exit code)", p.name);
    }
}

fn condition(c: Condition) -> &'static str {
    match c {
        Condition::Started => "has started",
        Condition::Ready => "is ready",
        Condition::Healthy => "is healthy",
        Condition::Succeeded => "has succeeded (exited 0)",
    }
}

/// `healthy` asked of a program without health checks means ready: said, since it is likely
/// a forgotten `[program.X.health]`.
pub fn warnings(cfg: &Config) -> Vec<String> {
    let mut w = vec![];
    for p in &cfg.programs {
        for (d, c) in &p.depends_on {
            let Some(dep) = cfg.programs.iter().find(|q| &q.name == d) else {
                continue;
            };
            let checks = dep
                .health
                .as_ref()
                .is_some_and(|h| h.http.is_some() || h.exec.is_some());
            if *c == Condition::Healthy && !checks {
                w.push(format!("program {}: depends_on {d} = \"healthy\", and {d} has no http or exec health check, so healthy means ready; add [program.{d}.health] or write \"ready\"", p.name));
            }
        }
    }
    w
}

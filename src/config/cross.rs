//! Checks that span several sections: references between them, duplicates, budgets that must
//! fit the node's.

use std::collections::BTreeMap;
use std::ops::Range;

use super::tree::{Ctx, Node, V};
use super::values::{did_you_mean, fmt_size};
use super::Config;

pub(super) fn cross_check(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    node_budget(cx, cfg, top);
    socket_references(cx, cfg, top);
    duplicates(cx, cfg, top);
    super::depends::check(cx, cfg, top);
}

/// The workers' budgets must fit the node's.
fn node_budget(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    let budget_span = top
        .iter()
        .find(|(k, _, _)| k == "budget")
        .map(|(_, ks, _)| ks.clone())
        .unwrap_or(0..0);
    if let Some(node) = cfg.budget.memory {
        let sum: u64 = cfg
            .programs
            .iter()
            .filter(|p| !p.workers_auto)
            .map(|p| {
                p.budget.memory_hard.unwrap_or(0)
                    * p.autoscale.as_ref().map_or(p.workers, |a| a.min) as u64
            })
            .sum();
        if sum > node {
            cx.err(&budget_span, format!("budget.memory: the workers' memory_hard budgets add up to {}, more than the node's {}", fmt_size(sum), fmt_size(node)));
        }
    }
    if let Some(node) = cfg.budget.cpu {
        let sum: f64 = cfg
            .programs
            .iter()
            .filter(|p| !p.workers_auto)
            .map(|p| {
                p.budget.cpu.unwrap_or(0.0)
                    * p.autoscale.as_ref().map_or(p.workers, |a| a.min) as f64
            })
            .sum();
        if sum > node + 1e-9 {
            cx.err(&budget_span, format!("budget.cpu: the workers' cpu budgets add up to {sum} cores, more than the node's {node}"));
        }
    }
}

/// Every socket a program names exists.
fn socket_references(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    let socket_names: Vec<&str> = cfg.sockets.iter().map(|s| s.name.as_str()).collect();
    for p in &cfg.programs {
        let queue_keys = [
            ("readiness.max_queue", p.readiness.max_queue.is_some()),
            (
                "autoscale.target_queue",
                p.autoscale
                    .as_ref()
                    .is_some_and(|a| a.target_queue.is_some()),
            ),
        ];
        for (key, set) in queue_keys {
            if set && p.sockets.is_empty() {
                let span = find(top, "program", &p.name).unwrap_or(0..0);
                cx.err(&span, format!("program.{}.{key}: the program has no sockets, so no accept queue to read; add sockets = [\"NAME\"] or remove it", p.name));
            }
        }
        for s in &p.sockets {
            if !socket_names.contains(&s.as_str()) {
                let span = find(top, "program", &p.name).unwrap_or(0..0);
                let hint = did_you_mean(s, &socket_names)
                    .map(|x| format!("; did you mean `{x}`?"))
                    .unwrap_or_else(|| {
                        if socket_names.is_empty() {
                            "; define it with a [socket.NAME] section".into()
                        } else {
                            format!("; defined sockets: {}", socket_names.join(", "))
                        }
                    });
                cx.err(
                    &span,
                    format!("program.{}.sockets: no socket named `{s}`{hint}", p.name),
                );
            }
        }
    }
}

/// Step names and socket addresses are unique.
fn duplicates(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &cfg.prestart {
        *seen.entry(&s.name).or_default() += 1;
    }
    for (name, count) in seen {
        if count > 1 {
            let span = top
                .iter()
                .find(|(k, _, _)| k == "prestart")
                .map(|(_, _, n)| n.span.clone())
                .unwrap_or(0..0);
            cx.err(&span, format!("[[prestart]]: the name `{name}` is used {count} times; step names must be unique"));
        }
    }
    let mut addrs: BTreeMap<String, &str> = BTreeMap::new();
    for s in &cfg.sockets {
        if matches!(&s.listen, crate::config::ListenAddr::Tcp(a) if a.port() == 0) {
            continue; // port 0: each gets a port of its own
        }
        let key = s.listen.to_string();
        if let Some(other) = addrs.insert(key.clone(), &s.name) {
            let span = find(top, "socket", &s.name).unwrap_or(0..0);
            cx.err(
                &span,
                format!(
                    "socket.{}.listen: {key} is also the address of socket `{other}`",
                    s.name
                ),
            );
        }
    }
}

/// Where to point at a section's entry (a program's `sockets`, else the entry itself).
fn find(top: &[(String, Range<usize>, Node)], sect: &str, name: &str) -> Option<Range<usize>> {
    let (_, _, n) = top.iter().find(|(k, _, _)| k == sect)?;
    let V::Table(t) = &n.v else { return None };
    let (_, _, pn) = t.iter().find(|(k, _, _)| k == name)?;
    let V::Table(pt) = &pn.v else {
        return Some(pn.span.clone());
    };
    pt.iter()
        .find(|(k, _, _)| k == "sockets")
        .map(|(_, _, v)| v.span.clone())
        .or(Some(pn.span.clone()))
}

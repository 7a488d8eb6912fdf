//! `depends_on`: the reader of one program's dependencies, the checks on the graph they make
//! together (every name a program, no cycle, `succeeded` only on a program that ends), and the
//! start order `drover check` prints and the loop follows.

use std::collections::HashMap;
use std::ops::Range;

use super::tree::{kind, Ctx, Node, V};
use super::values::did_you_mean;
use super::{Condition, Config, ProgramCfg, RestartPolicy};

const CONDITIONS: &[(&str, Condition)] = &[
    ("started", Condition::Started),
    ("ready", Condition::Ready),
    ("healthy", Condition::Healthy),
    ("succeeded", Condition::Succeeded),
];

/// `depends_on = { db = "ready", migrate = "succeeded" }` (or a `[program.X.depends_on]` table).
pub(super) fn read(cx: &mut Ctx, w: &str, v: &Node) -> Vec<(String, Condition)> {
    let t = match &v.v {
        V::Table(t) => t,
        _ => {
            cx.err(
                &v.span,
                format!("{w}: expected a table of program = condition, e.g. {{ db = \"ready\" }}, found {}", kind(v)),
            );
            return vec![];
        }
    };
    let mut out = vec![];
    for (name, _, cv) in t {
        let what = format!("{w}.{name}");
        let Some(word) = cx.string(&what, cv) else {
            continue;
        };
        match CONDITIONS.iter().find(|(k, _)| *k == word) {
            Some((_, c)) => out.push((name.clone(), *c)),
            None => {
                let names: Vec<&str> = CONDITIONS.iter().map(|(k, _)| *k).collect();
                let hint = did_you_mean(&word, &names)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                cx.err(
                    &cv.span,
                    format!("{what}: `{word}` is not one of {}{hint}", names.join(" | ")),
                );
            }
        }
    }
    out
}

/// Every dependency names a program, `succeeded` is asked only of a program that ends, and no
/// program waits, through others, for itself.
pub(super) fn check(cx: &mut Ctx, cfg: &Config, top: &[(String, Range<usize>, Node)]) {
    let names: Vec<&str> = cfg.programs.iter().map(|p| p.name.as_str()).collect();
    for p in &cfg.programs {
        for (dep, cond) in &p.depends_on {
            let (key, value) = spans(top, &p.name, dep);
            let Some(d) = cfg.programs.iter().find(|q| &q.name == dep) else {
                let hint = did_you_mean(dep, &names)
                    .map(|x| format!("; did you mean `{x}`?"))
                    .unwrap_or_else(|| format!("; programs: {}", names.join(", ")));
                cx.err(
                    &key,
                    format!(
                        "program.{}.depends_on: no program named `{dep}`{hint}",
                        p.name
                    ),
                );
                continue;
            };
            if *cond == Condition::Succeeded && d.restart == RestartPolicy::Always {
                cx.err(&value, format!("program.{}.depends_on.{dep}: \"succeeded\" waits for {dep} to exit 0, and it has restart = \"always\", so it never ends; give {dep} restart = \"never\" (a one-shot job) or \"on-failure\", or wait for it to be \"ready\"", p.name));
            }
        }
    }
    let all: Vec<&ProgramCfg> = cfg.programs.iter().collect();
    for cycle in cycles(&all) {
        let first = &cfg.programs[cycle[0]];
        let next = &cfg.programs[cycle[1 % cycle.len()]].name;
        let (key, _) = spans(top, &first.name, next);
        let path: Vec<&str> = cycle
            .iter()
            .chain(std::iter::once(&cycle[0]))
            .map(|&i| cfg.programs[i].name.as_str())
            .collect();
        cx.err(
            &key,
            format!(
                "program.{}.depends_on: a dependency cycle: {}; none of them could ever start; remove one of these dependencies",
                first.name,
                path.join(" -> ")
            ),
        );
    }
}

/// The key and the value of `dep` in program `name`'s depends_on, for positioned errors.
fn spans(
    top: &[(String, Range<usize>, Node)],
    name: &str,
    dep: &str,
) -> (Range<usize>, Range<usize>) {
    let table = |n: &Node| match &n.v {
        V::Table(t) => Some(t.clone()),
        _ => None,
    };
    let found = (|| {
        let (_, _, progs) = top.iter().find(|(k, _, _)| k == "program")?;
        let (_, _, p) = table(progs)?.into_iter().find(|(k, _, _)| k == name)?;
        let (_, _, d) = table(&p)?.into_iter().find(|(k, _, _)| k == "depends_on")?;
        let entry = table(&d)?.into_iter().find(|(k, _, _)| k == dep);
        Some(match entry {
            Some((_, ks, v)) => (ks, v.span),
            None => (d.span.clone(), d.span),
        })
    })();
    found.unwrap_or((0..0, 0..0))
}

/// Index of every program by name.
fn index<'a>(programs: &[&'a ProgramCfg]) -> HashMap<&'a str, usize> {
    programs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name.as_str(), i))
        .collect()
}

/// Each dependency cycle once, as program indexes starting at the one first in the file.
fn cycles(programs: &[&ProgramCfg]) -> Vec<Vec<usize>> {
    let by_name = index(programs);
    let edges: Vec<Vec<usize>> = programs
        .iter()
        .map(|p| {
            p.depends_on
                .iter()
                .filter_map(|(d, _)| by_name.get(d.as_str()).copied())
                .collect()
        })
        .collect();
    // iterative depth-first search: 0 not seen, 1 on the path, 2 done
    let mut color = vec![0u8; programs.len()];
    let mut found: Vec<Vec<usize>> = vec![];
    for root in 0..programs.len() {
        if color[root] != 0 {
            continue;
        }
        let mut path: Vec<(usize, usize)> = vec![(root, 0)];
        color[root] = 1;
        while let Some((node, next)) = path.last_mut() {
            let node = *node;
            if let Some(&to) = edges[node].get(*next) {
                *next += 1;
                match color[to] {
                    0 => {
                        color[to] = 1;
                        path.push((to, 0));
                    }
                    1 => {
                        let at = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                        let mut c: Vec<usize> = path[at..].iter().map(|(n, _)| *n).collect();
                        let min = c
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, n)| **n)
                            .map(|(i, _)| i);
                        c.rotate_left(min.unwrap_or(0));
                        if !found.contains(&c) {
                            found.push(c);
                        }
                    }
                    _ => {}
                }
            } else {
                color[node] = 2;
                path.pop();
            }
        }
    }
    found
}

/// The order programs start in: each program's index in `programs` and its level (0: depends on
/// nothing; else one more than its deepest dependency). Programs of one level start together
/// once theirs hold; within a level, file order. Names that are not programs are ignored, and
/// programs in a cycle (a file that fails `check`) come last.
pub fn start_order(programs: &[&ProgramCfg]) -> Vec<(usize, u32)> {
    let by_name = index(programs);
    let mut waiting: Vec<usize> = vec![0; programs.len()];
    let mut dependents: Vec<Vec<usize>> = vec![vec![]; programs.len()];
    for (i, p) in programs.iter().enumerate() {
        for (d, _) in &p.depends_on {
            if let Some(&j) = by_name.get(d.as_str()) {
                waiting[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut level = vec![0u32; programs.len()];
    let mut queue: std::collections::VecDeque<usize> =
        (0..programs.len()).filter(|&i| waiting[i] == 0).collect();
    let mut placed = vec![false; programs.len()];
    while let Some(j) = queue.pop_front() {
        placed[j] = true;
        for &i in &dependents[j] {
            level[i] = level[i].max(level[j] + 1);
            waiting[i] -= 1;
            if waiting[i] == 0 {
                queue.push_back(i);
            }
        }
    }
    let last = level.iter().copied().max().unwrap_or(0) + 1;
    let mut order: Vec<(usize, u32)> = (0..programs.len())
        .map(|i| (i, if placed[i] { level[i] } else { last }))
        .collect();
    order.sort_by_key(|&(i, l)| (l, i));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(src: &str) -> Vec<String> {
        match crate::config::parse("t.toml", src, &|_| None) {
            Ok(_) => vec![],
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
                .collect(),
        }
    }

    #[test]
    fn dependencies_are_read_in_both_table_forms() {
        let inline = "[program.db]\ncommand = \"x\"\n[program.migrate]\ncommand = \"m\"\nrestart = \"never\"\n[program.api]\ncommand = \"y\"\ndepends_on = { db = \"ready\", migrate = \"succeeded\" }\nessential = true\n";
        let cfg = crate::config::parse("t.toml", inline, &|_| None).unwrap();
        let api = &cfg.programs[2];
        assert_eq!(
            api.depends_on,
            vec![
                ("db".to_string(), Condition::Ready),
                ("migrate".to_string(), Condition::Succeeded)
            ]
        );
        assert!(api.essential && !cfg.programs[0].essential);
        let table = "[program.db]\ncommand = \"x\"\n[program.api]\ncommand = \"y\"\n[program.api.depends_on]\ndb = \"healthy\"\n";
        let cfg = crate::config::parse("t.toml", table, &|_| None).unwrap();
        assert_eq!(
            cfg.programs[1].depends_on,
            vec![("db".to_string(), Condition::Healthy)]
        );
    }

    /// Table-driven: a bad graph -> the exact message at its position.
    #[test]
    fn bad_graphs_are_positioned_errors() {
        let cases: &[(&str, &[&str])] = &[
            (
                "[program.db]\ncommand = \"x\"\n[program.api]\ncommand = \"y\"\ndepends_on = { dbb = \"ready\" }\n",
                &["5:16: program.api.depends_on: no program named `dbb`; did you mean `db`?"],
            ),
            (
                "[program.db]\ncommand = \"x\"\n[program.api]\ncommand = \"y\"\ndepends_on = { cache = \"ready\" }\n",
                &["5:16: program.api.depends_on: no program named `cache`; programs: db, api"],
            ),
            (
                "[program.db]\ncommand = \"x\"\n[program.api]\ncommand = \"y\"\ndepends_on = { db = \"redy\" }\n",
                &["5:21: program.api.depends_on.db: `redy` is not one of started | ready | healthy | succeeded; did you mean `ready`?"],
            ),
            (
                "[program.db]\ncommand = \"x\"\n[program.api]\ncommand = \"y\"\ndepends_on = { db = \"succeeded\" }\n",
                &["5:21: program.api.depends_on.db: \"succeeded\" waits for db to exit 0, and it has restart = \"always\", so it never ends; give db restart = \"never\" (a one-shot job) or \"on-failure\", or wait for it to be \"ready\""],
            ),
            (
                "[program.api]\ncommand = \"y\"\ndepends_on = [\"db\"]\n",
                &["3:14: program.api.depends_on: expected a table of program = condition, e.g. { db = \"ready\" }, found an array"],
            ),
            (
                "[program.api]\ncommand = \"y\"\ndepends_on = { api = \"started\" }\n",
                &["3:16: program.api.depends_on: a dependency cycle: api -> api; none of them could ever start; remove one of these dependencies"],
            ),
            (
                "[program.api]\ncommand = \"y\"\ndepends_on = { db = \"ready\" }\n[program.db]\ncommand = \"x\"\ndepends_on = { cache = \"ready\" }\n[program.cache]\ncommand = \"z\"\ndepends_on = { api = \"started\" }\n",
                &["3:16: program.api.depends_on: a dependency cycle: api -> db -> cache -> api; none of them could ever start; remove one of these dependencies"],
            ),
            (
                "[program.api]\ncommand = \"y\"\nessential = \"yes\"\n",
                &["3:13: program.api.essential: expected true or false, found a string"],
            ),
        ];
        for (src, want) in cases {
            assert_eq!(problems(src), *want, "{src}");
        }
        // every problem at once: two separate cycles and an unknown name
        let many = "[program.a]\ncommand = \"x\"\ndepends_on = { b = \"ready\", zz = \"ready\" }\n[program.b]\ncommand = \"x\"\ndepends_on = { a = \"ready\" }\n[program.c]\ncommand = \"x\"\ndepends_on = { c = \"ready\" }\n";
        let got = problems(many);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].contains("a -> b -> a"), "{got:?}");
        assert!(got[1].contains("no program named `zz`"), "{got:?}");
        assert!(got[2].contains("c -> c"), "{got:?}");
    }

    #[test]
    fn the_start_order_puts_each_program_after_its_dependencies() {
        let src = "[program.api]\ncommand = \"y\"\ndepends_on = { db = \"ready\", migrate = \"succeeded\" }\n[program.worker]\ncommand = \"w\"\ndepends_on = { api = \"started\" }\n[program.migrate]\ncommand = \"m\"\nrestart = \"never\"\ndepends_on = { db = \"ready\" }\n[program.db]\ncommand = \"d\"\n[program.cron]\ncommand = \"c\"\n";
        let cfg = crate::config::parse("t.toml", src, &|_| None).unwrap();
        let all: Vec<&ProgramCfg> = cfg.programs.iter().collect();
        let order: Vec<(&str, u32)> = start_order(&all)
            .into_iter()
            .map(|(i, l)| (cfg.programs[i].name.as_str(), l))
            .collect();
        assert_eq!(
            order,
            vec![
                ("db", 0),
                ("cron", 0),
                ("migrate", 1),
                ("api", 2),
                ("worker", 3)
            ]
        );
        // a chain of 1,000 costs no recursion
        let mut chain = String::new();
        for i in 0..1000 {
            chain.push_str(&format!("[program.p{i}]\ncommand = \"x\"\n"));
            if i > 0 {
                chain.push_str(&format!("depends_on = {{ p{} = \"started\" }}\n", i - 1));
            }
        }
        let cfg = crate::config::parse("t.toml", &chain, &|_| None).unwrap();
        let all: Vec<&ProgramCfg> = cfg.programs.iter().collect();
        let order = start_order(&all);
        assert_eq!(order.last(), Some(&(999, 999)));
    }
}

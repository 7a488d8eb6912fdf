//! `workers = "auto"`: how many workers a program gets, derived from where drover runs.
//!
//! ceil(CPU quota of drover's cgroup) — v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`,
//! the smallest along its path — else the CPUs drover may run on; capped by the node memory
//! budget divided by the per-worker hard limit; at least 1.

use std::fs;

use super::cgroup::{read_u64, v1_own_dir, v2_own_dir};

/// What the machine offers: (cores, where that number came from).
pub fn cpu_capacity() -> (f64, String) {
    match own_cpu_quota() {
        Some((q, src)) => (q, format!("cpu quota {} cores from {src}", trim(q))),
        None => {
            let n = available_cores();
            (n as f64, format!("{n} available cores, no cpu quota"))
        }
    }
}

/// CPU quota of drover's own cgroup in cores (the smallest along the path), and where it came from.
pub fn own_cpu_quota() -> Option<(f64, String)> {
    let mut best: Option<(f64, String)> = None;
    let mut consider = |cores: f64, src: String| {
        if best.as_ref().is_none_or(|(b, _)| cores < *b) {
            best = Some((cores, src));
        }
    };
    if let Some((dir, _)) = v2_own_dir() {
        let mut d = Some(dir.as_path());
        while let Some(p) = d {
            if let Ok(s) = fs::read_to_string(p.join("cpu.max")) {
                let mut f = s.split_whitespace();
                if let (Some(q), Some(per)) =
                    (f.next(), f.next().and_then(|x| x.parse::<f64>().ok()))
                {
                    if let Ok(q) = q.parse::<f64>() {
                        consider(q / per, format!("{}/cpu.max", p.display()));
                    }
                }
            }
            if p.parent()
                .is_none_or(|pp| !pp.join("cgroup.controllers").exists())
            {
                break;
            }
            d = p.parent();
        }
    }
    if let Some((dir, _)) = v1_own_dir("cpu") {
        let mut d = Some(dir.as_path());
        while let Some(p) = d {
            let q = fs::read_to_string(p.join("cpu.cfs_quota_us"))
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok());
            let per = read_u64(&p.join("cpu.cfs_period_us"));
            match (q, per) {
                (Some(q), Some(per)) if q > 0 && per > 0 => consider(
                    q as f64 / per as f64,
                    format!("{}/cpu.cfs_quota_us", p.display()),
                ),
                (None, _) | (_, None) => break,
                _ => {}
            }
            d = p.parent();
        }
    }
    best
}

/// CPUs this process may run on.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The worker count for `auto`, and the sentence that explains it.
pub fn auto_workers(
    cores: f64,
    cores_src: &str,
    node_memory: Option<u64>,
    memory_hard: Option<u64>,
) -> (u32, String) {
    let by_cpu = (cores - 1e-9).ceil().max(1.0) as u32;
    let mut n = by_cpu;
    let mut why = cores_src.to_string();
    if let (Some(node), Some(hard)) = (node_memory, memory_hard) {
        let by_mem = (node / hard).max(1) as u32;
        if by_mem < n {
            n = by_mem;
            why = format!(
                "{why}; capped by budget.memory {} / memory_hard {} = {by_mem}",
                crate::config::fmt_size(node),
                crate::config::fmt_size(hard)
            );
        }
    }
    (n.max(1), why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_worker_table() {
        let g = 1u64 << 30;
        // (cores, node memory, hard, expected)
        let cases = [
            (1.5, None, None, 2),
            (2.0, None, None, 2),
            (0.2, None, None, 1),
            (8.0, Some(2 * g), Some(g / 2), 4),
            (8.0, Some(g), Some(2 * g), 1),
            (3.0, Some(4 * g), Some(g), 3),
        ];
        for (cores, mem, hard, want) in cases {
            assert_eq!(
                auto_workers(cores, "x", mem, hard).0,
                want,
                "cores={cores} mem={mem:?} hard={hard:?}"
            );
        }
        let (_, why) = auto_workers(8.0, "cpu quota 8 cores", Some(2 * g), Some(g / 2));
        assert!(
            why.contains("capped by budget.memory 2GiB / memory_hard 512MiB = 4"),
            "{why}"
        );
    }
}

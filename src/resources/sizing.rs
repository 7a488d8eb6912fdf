//! `workers = "auto"`: how many workers a program gets, derived from where drover runs.
//!
//! ceil(CPU quota of drover's cgroup) — v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`,
//! the smallest along its path — else the CPUs drover may run on; capped by the node memory
//! budget divided by the per-worker hard limit; at least 1.

/// What the machine offers: (cores, where that number came from).
pub fn cpu_capacity() -> (f64, String) {
    match crate::resources::cgroup::own_cpu_quota() {
        Some((q, src)) => (q, format!("cpu quota {} cores from {src}", trim(q))),
        None => {
            let n = crate::resources::cgroup::available_cores();
            (n as f64, format!("{n} available cores, no cpu quota"))
        }
    }
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

//! Sampling, where no cgroup can be written (a typical pod): memory and CPU of each worker's
//! whole process group, from /proc, without spawning anything.
//!
//! One pass over /proc per sample: each process's process group and CPU ticks from
//! /proc/PID/stat; for members of a worker group, PSS from /proc/PID/smaps_rollup (shared pages
//! divided among their users, so forked workers are not counted twice), RSS where that file is
//! missing.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupUsage {
    /// PSS (or RSS) of every process in the group
    pub memory: u64,
    /// utime + stime of every process in the group, in clock ticks
    pub cpu_ticks: u64,
    pub procs: u32,
}

/// Usage of each process group in `groups`.
pub fn scan(groups: &HashSet<i32>, want_memory: bool) -> HashMap<i32, GroupUsage> {
    let mut out: HashMap<i32, GroupUsage> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let mut buf = String::with_capacity(512);
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        buf.clear();
        if std::io::Read::read_to_string(
            &mut match std::fs::File::open(format!("/proc/{pid}/stat")) {
                Ok(f) => f,
                Err(_) => continue,
            },
            &mut buf,
        )
        .is_err()
        {
            continue;
        }
        let Some((pgrp, ticks)) = parse_stat(&buf) else {
            continue;
        };
        if !groups.contains(&pgrp) {
            continue;
        }
        let u = out.entry(pgrp).or_default();
        u.cpu_ticks += ticks;
        u.procs += 1;
        if want_memory {
            u.memory += pss(pid).or_else(|| rss(pid)).unwrap_or(0);
        }
    }
    out
}

/// (process group, utime + stime) from a /proc/PID/stat line.
pub fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after the comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    let pgrp = f.get(2)?.parse().ok()?;
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((pgrp, ticks))
}

fn pss(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn rss(pid: i32) -> Option<u64> {
    crate::status::rss_bytes(pid)
}

pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "4242 (my (weird) prog) S 1 4200 4200 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 200";
        assert_eq!(parse_stat(line), Some((4200, 300)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn scanning_finds_our_own_group() {
        // SAFETY: getpgrp has no preconditions.
        let me = unsafe { libc::getpgrp() };
        let got = scan(&HashSet::from([me]), true);
        let u = got.get(&me).expect("this test's process group");
        assert!(u.procs >= 1 && u.memory > 0, "{u:?}");
    }
}

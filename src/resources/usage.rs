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
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Some(st) = read_stat(pid) else {
            continue;
        };
        if !groups.contains(&st.pgrp) {
            continue;
        }
        let u = out.entry(st.pgrp).or_default();
        u.cpu_ticks += st.cpu_ticks;
        u.procs += 1;
        if want_memory {
            u.memory += pss(pid).unwrap_or(st.rss_pages * page_size());
        }
    }
    out
}

/// (process group, utime + stime) from a /proc/PID/stat line.
pub fn parse_stat(stat: &str) -> Option<(i32, u64)> {
    parse_stat_full(stat).map(|s| (s.pgrp, s.cpu_ticks))
}

/// The figures drover reads from one /proc/PID/stat line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pgrp: i32,
    /// utime + stime, in clock ticks
    pub cpu_ticks: u64,
    /// resident set size, in pages
    pub rss_pages: u64,
}

pub fn parse_stat_full(stat: &str) -> Option<ProcStat> {
    let rest = stat.rsplit_once(')')?.1;
    // after the comm: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
    let mut f = rest.split_ascii_whitespace();
    let pgrp = f.nth(2)?.parse().ok()?;
    let utime: u64 = f.nth(8)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    let rss_pages = f.nth(8)?.parse().ok()?;
    Some(ProcStat {
        pgrp,
        cpu_ticks: utime + stime,
        rss_pages,
    })
}

/// One process's /proc/PID/stat: one open and one read(2) into a stack buffer (std's
/// `read_to_string` adds an fstat and an lseek per file, which at 1,000 workers is most of the
/// cost of a `/status` request).
pub fn read_stat(pid: i32) -> Option<ProcStat> {
    pread_stat(&open_stat(pid)?)
}

/// /proc/PID/stat opened for `pread_stat`.
pub fn open_stat(pid: i32) -> Option<std::fs::File> {
    std::fs::File::open(format!("/proc/{pid}/stat")).ok()
}

/// A /proc/PID/stat file re-read from its start; None once its process has gone.
pub fn pread_stat(f: &std::fs::File) -> Option<ProcStat> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 1024];
    let len = f.read_at(&mut buf, 0).ok()?;
    parse_stat_full(std::str::from_utf8(&buf[..len]).ok()?)
}

pub fn page_size() -> u64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096)
        .max(1) as u64
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

pub fn clock_ticks_per_sec() -> f64 {
    use nix::unistd::{sysconf, SysconfVar};
    sysconf(SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as f64
}

/// A process's state in words, for a log line about a process that will not end: its state
/// letter from /proc/PID/stat and, when it sleeps in the kernel, where (wchan).
pub fn proc_state(pid: i32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let letter = stat
        .rsplit_once(')')
        .and_then(|(_, r)| r.trim_start().chars().next());
    let what = match letter {
        Some('D') => "uninterruptible sleep",
        Some('Z') => "a zombie its tracer has not released",
        Some('T') => "stopped",
        Some('t') => "stopped by a tracer",
        Some('R') => "running",
        Some('S') => "sleeping",
        Some(_) => "other",
        None => return "gone from /proc".into(),
    };
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan"))
        .ok()
        .filter(|w| !w.is_empty() && w != "0");
    match wchan {
        Some(w) => format!("state {}: {what} in {w}", letter.unwrap_or('?')),
        None => format!("state {}: {what}", letter.unwrap_or('?')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_odd_names() {
        let line = "4242 (my (weird) prog) S 1 4200 4200 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 12345 1000000 200";
        assert_eq!(parse_stat(line), Some((4200, 300)));
        assert_eq!(parse_stat("garbage"), None);
        // fields up to rss (the 24th): 52 pages resident
        let full =
            "99 (a) b) S 1 99 99 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 5 4096 52 18446744073709551615";
        assert_eq!(
            parse_stat_full(full),
            Some(ProcStat {
                pgrp: 99,
                cpu_ticks: 10,
                rss_pages: 52
            })
        );
        // the stat of this very process parses, and reads the same through pread
        let me = std::process::id() as i32;
        let a = read_stat(me).expect("own stat");
        let b = pread_stat(&open_stat(me).unwrap()).expect("own stat by pread");
        assert_eq!(a.pgrp, b.pgrp);
        assert!(a.rss_pages > 0);
    }

    #[test]
    fn scanning_finds_our_own_group() {
        let me = nix::unistd::getpgrp().as_raw();
        let got = scan(&HashSet::from([me]), true);
        let u = got.get(&me).expect("this test's process group");
        assert!(u.procs >= 1 && u.memory > 0, "{u:?}");
    }
}

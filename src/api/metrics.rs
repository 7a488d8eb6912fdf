//! The snapshot in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::snapshot::{ProgramStatus, Snapshot, SocketStatus, WorkerStatus, READY_BUCKETS};

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric with a sample per worker that has a value.
fn per_worker(
    o: &mut String,
    s: &Snapshot,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&WorkerStatus) -> Option<String>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for p in &s.programs {
        for w in &p.workers {
            if let Some(v) = value(w) {
                let _ = writeln!(
                    o,
                    "{name}{{program=\"{}\",worker=\"{}\"}} {v}",
                    esc(&p.name),
                    w.index
                );
            }
        }
    }
}

/// One metric family with a sample per program that has a value.
fn per_program(
    o: &mut String,
    s: &Snapshot,
    name: &str,
    help: &str,
    value: impl Fn(&ProgramStatus) -> Option<String>,
) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
    for p in &s.programs {
        if let Some(v) = value(p) {
            let _ = writeln!(o, "{name}{{program=\"{}\"}} {v}", esc(&p.name));
        }
    }
}

/// Render the snapshot's figures in the Prometheus text format.
pub fn render(s: &Snapshot) -> String {
    let m = &s.metrics;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP drover_up 1 while drover runs.\n# TYPE drover_up gauge\ndrover_up 1"
    );
    let _ = writeln!(o, "# HELP drover_ready 1 when /readyz answers 200.\n# TYPE drover_ready gauge\ndrover_ready {}", u8::from(s.ready));
    let _ = writeln!(
        o,
        "# HELP drover_workers Workers by program and state.\n# TYPE drover_workers gauge"
    );
    workers_by_state(&mut o, s);
    per_program(
        &mut o,
        s,
        "drover_workers_desired",
        "Workers each program should have.",
        |p| Some(p.desired.to_string()),
    );
    per_program(
        &mut o,
        s,
        "drover_workers_ready",
        "Workers that passed their readiness check.",
        |p| Some(p.ready_workers.to_string()),
    );
    let _ = writeln!(o, "# HELP drover_restarts_total Worker restarts by program and reason.\n# TYPE drover_restarts_total counter");
    for ((prog, reason), n) in &m.restarts {
        let _ = writeln!(
            o,
            "drover_restarts_total{{program=\"{}\",reason=\"{}\"}} {n}",
            esc(prog),
            esc(reason)
        );
    }
    worker_families(&mut o, s);
    // each family's samples right after its own HELP/TYPE, as the text format wants
    per_program(
        &mut o,
        s,
        "drover_autoscale_desired_workers",
        "The autoscaler's last decision.",
        |p| p.autoscale.as_ref().map(|d| d.desired.to_string()),
    );
    per_program(
        &mut o,
        s,
        "drover_autoscale_utilization_percent",
        "Mean CPU of ready workers, percent of the per-worker budget.",
        |p| {
            let d = p.autoscale.as_ref()?;
            d.cpu.as_ref().map(|r| format!("{:.2}", r.value))
        },
    );
    per_program(
        &mut o,
        s,
        "drover_autoscale_queue_per_worker",
        "Connections waiting in the program's accept queues per worker, as the autoscaler saw them.",
        |p| {
            let d = p.autoscale.as_ref()?;
            d.queue.as_ref().map(|r| format!("{:.2}", r.value))
        },
    );
    per_program(
        &mut o,
        s,
        "drover_shedding",
        "1 while the program's accept queue is above its max_queue (/readyz answers 503).",
        |p| Some(u8::from(p.shedding.is_some()).to_string()),
    );
    ready_histogram(&mut o, s);
    steps_reloads_probes(&mut o, s);
    sockets(&mut o, s);
    let _ = writeln!(
        o,
        "# HELP drover_notify_dropped_total Datagrams on NOTIFY_SOCKET from processes that are not drover's workers, dropped.\n# TYPE drover_notify_dropped_total counter\ndrover_notify_dropped_total {}",
        crate::process::notify::dropped_total()
    );
    // a process-wide count kept by the log writer, not a figure of the loop's snapshot
    let _ = writeln!(o, "# HELP drover_log_lines_dropped_total Lines of drover's own log dropped because stderr or the journal was not taking them (each gap is marked in the log).\n# TYPE drover_log_lines_dropped_total counter\ndrover_log_lines_dropped_total {}", crate::logs::writer::dropped_total());
    log_files(&mut o);
    o
}

/// Programs' log files (`logs/file.rs`): process-wide counts kept by their writers.
fn log_files(o: &mut String) {
    use crate::logs::file::{stats, Dropped};
    use std::sync::atomic::Ordering::Relaxed;
    let all = stats();
    let _ = writeln!(o, "# HELP drover_log_file_bytes_total Bytes of program output written to its log file.\n# TYPE drover_log_file_bytes_total counter");
    for (p, st) in &all {
        let _ = writeln!(
            o,
            "drover_log_file_bytes_total{{program=\"{}\"}} {}",
            esc(p),
            st.bytes.load(Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP drover_log_file_rotations_total Times a program's log file was rotated (or truncated, backups = 0).\n# TYPE drover_log_file_rotations_total counter");
    for (p, st) in &all {
        let _ = writeln!(
            o,
            "drover_log_file_rotations_total{{program=\"{}\"}} {}",
            esc(p),
            st.rotations.load(Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP drover_log_file_lines_dropped_total Lines of program output not written to its log file, by reason (disk_full, stalled, io_error, unwritable); each gap is marked in the file.\n# TYPE drover_log_file_lines_dropped_total counter");
    for (p, st) in &all {
        for why in Dropped::ALL {
            let _ = writeln!(
                o,
                "drover_log_file_lines_dropped_total{{program=\"{}\",reason=\"{}\"}} {}",
                esc(p),
                why.label(),
                st.dropped(why)
            );
        }
    }
}

/// Each socket's accept queue and its limit; the node's listen-queue overflows.
fn sockets(o: &mut String, s: &Snapshot) {
    type Family = (&'static str, &'static str, fn(&SocketStatus) -> Option<u32>);
    let families: [Family; 2] = [
        (
            "drover_socket_queue",
            "Connections waiting in each listening socket's accept queue.",
            |so| so.queue,
        ),
        (
            "drover_socket_queue_max",
            "The most connections each listening socket's accept queue holds (its backlog).",
            |so| so.queue_max,
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} gauge");
        for so in &s.sockets {
            if let Some(v) = value(so) {
                let _ = writeln!(o, "{name}{{socket=\"{}\"}} {v}", esc(&so.name));
            }
        }
    }
    if let Some(n) = &s.node {
        let _ = writeln!(o, "# HELP drover_listen_overflows_total Connections the kernel dropped because an accept queue was full (TcpExt ListenOverflows): node-wide, every listener of the network namespace, not only drover's.\n# TYPE drover_listen_overflows_total counter\ndrover_listen_overflows_total {}", n.listen_overflows);
    }
}

/// `drover_workers{program, state}`, every state present (zero included).
fn workers_by_state(o: &mut String, s: &Snapshot) {
    for p in &s.programs {
        let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
        for st in [
            "starting", "running", "stopping", "backoff", "failed", "stopped",
        ] {
            by_state.insert(st, 0);
        }
        for w in &p.workers {
            *by_state.entry(w.state).or_default() += 1;
        }
        for (st, n) in by_state {
            let _ = writeln!(
                o,
                "drover_workers{{program=\"{}\",state=\"{st}\"}} {n}",
                esc(&p.name)
            );
        }
    }
}

/// `drover_spawn_to_ready_seconds`, a histogram per program.
fn ready_histogram(o: &mut String, s: &Snapshot) {
    let m = &s.metrics;
    let _ = writeln!(o, "# HELP drover_spawn_to_ready_seconds Time from spawn to passing readiness.\n# TYPE drover_spawn_to_ready_seconds histogram");
    for (prog, h) in &m.ready_latency {
        for (i, b) in READY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                o,
                "drover_spawn_to_ready_seconds_bucket{{program=\"{}\",le=\"{b}\"}} {}",
                esc(prog),
                h.counts.get(i).copied().unwrap_or(0)
            );
        }
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_bucket{{program=\"{}\",le=\"+Inf\"}} {}",
            esc(prog),
            h.count
        );
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_sum{{program=\"{}\"}} {}",
            esc(prog),
            h.sum
        );
        let _ = writeln!(
            o,
            "drover_spawn_to_ready_seconds_count{{program=\"{}\"}} {}",
            esc(prog),
            h.count
        );
    }
}

/// Step durations, reloads by result, failed health probes.
fn steps_reloads_probes(o: &mut String, s: &Snapshot) {
    let m = &s.metrics;
    let _ = writeln!(o, "# HELP drover_step_duration_seconds How long each pre-start step took.\n# TYPE drover_step_duration_seconds gauge");
    for st in &s.steps {
        if let Some(d) = st.duration_s {
            let _ = writeln!(
                o,
                "drover_step_duration_seconds{{step=\"{}\",state=\"{}\"}} {d}",
                esc(&st.name),
                st.state.as_str()
            );
        }
    }
    let _ = writeln!(o, "# HELP drover_reloads_total Configuration reloads by result.\n# TYPE drover_reloads_total counter");
    let _ = writeln!(
        o,
        "drover_reloads_total{{result=\"ok\"}} {}\ndrover_reloads_total{{result=\"error\"}} {}",
        m.reloads_ok, m.reloads_failed
    );
    let _ = writeln!(o, "# HELP drover_health_probe_failures_total Failed health probes by program.\n# TYPE drover_health_probe_failures_total counter");
    for (prog, n) in &m.probe_failures {
        let _ = writeln!(
            o,
            "drover_health_probe_failures_total{{program=\"{}\"}} {n}",
            esc(prog)
        );
    }
}

/// Memory and CPU of each worker.
fn worker_families(o: &mut String, s: &Snapshot) {
    per_worker(
        o,
        s,
        "drover_worker_memory_bytes",
        "gauge",
        "Resident memory of each worker (its cgroup or process group when sampled).",
        |w| w.memory_bytes.map(|b| b.to_string()),
    );
    per_worker(
        o,
        s,
        "drover_worker_cpu_seconds_total",
        "counter",
        "CPU time of each worker's lead process.",
        |w| w.cpu_seconds.map(|c| c.to_string()),
    );
    per_worker(
        o,
        s,
        "drover_worker_cpu_percent",
        "gauge",
        "CPU of each worker's process group over the last sample, percent of one core.",
        |w| w.cpu_percent.map(|c| format!("{c:.2}")),
    );
}

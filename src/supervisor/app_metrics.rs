//! The application's own Prometheus metrics (`prometheus_multiproc_dir`): the directory is
//! opened once, safely (`resources/metrics_dir.rs`), before the program's first worker; emptied
//! of an earlier run's files; and a dead worker's live-gauge files are removed (what
//! `prometheus_client`'s `mark_process_dead` does). `true` gives the program a fresh directory
//! under drover's runtime directory.

use tracing::{error, info};

use super::Supervisor;
use crate::config::MetricsDirCfg;
use crate::resources::metrics_dir::{MetricsDir, Owners};

impl Supervisor {
    /// Before a program's first worker (and when a reload changes the setting).
    pub(super) fn prepare_metrics_dir(&mut self, pi: usize) {
        let p = &self.programs[pi];
        let name = p.cfg.name.clone();
        let Some(cfg) = p.cfg.prometheus_multiproc_dir.clone() else {
            self.programs[pi].metrics_dir = None;
            return;
        };
        if self.programs[pi]
            .metrics_dir
            .as_ref()
            .is_some_and(|(c, _, _)| *c == cfg)
        {
            return; // already open
        }
        let owners = Owners {
            drover: nix::unistd::geteuid().as_raw(),
            program: p.cfg.identity.as_ref().map(|i| (i.uid, i.gid)),
        };
        let path = match &cfg {
            MetricsDirCfg::Path(d) => d.clone(),
            MetricsDirCfg::Auto => match self.runtime_dir() {
                Ok(r) => r.join(format!("prometheus-{name}")),
                Err(e) => {
                    error!(program = %name, "program {name}: prometheus_multiproc_dir = true: {e}; its workers start without PROMETHEUS_MULTIPROC_DIR");
                    return;
                }
            },
        };
        let dir = match MetricsDir::open(&path, owners) {
            Ok(d) => d,
            Err(e) => {
                error!(program = %name, "program {name}: prometheus_multiproc_dir: {e}; its workers start without PROMETHEUS_MULTIPROC_DIR (the app's /metrics will not add up its workers)");
                self.programs[pi].metrics_dir = None;
                return;
            }
        };
        match dir.empty() {
            Ok(n) => {
                info!(program = %name, "program {name}: prometheus_multiproc_dir {}: {n} metric file(s) from an earlier run removed", path.display())
            }
            Err(e) => {
                error!(program = %name, "program {name}: prometheus_multiproc_dir {}: {e}; the app's /metrics may count old processes", path.display())
            }
        }
        self.programs[pi].metrics_dir = Some((cfg, path, dir));
    }

    /// A worker ended: its live gauges go (counters and histograms keep their totals).
    pub(super) fn metrics_files_of_dead(&self, pi: usize, pid: i32) {
        if let Some((_, _, dir)) = &self.programs[pi].metrics_dir {
            let _ = dir.remove_live_gauges(pid);
        }
    }
}

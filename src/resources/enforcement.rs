//! How budgets are enforced in this run, decided once at start and reported by `check`, the log
//! and `/status`: a cgroup (v2 or v1) where one can be written, /proc sampling where not, or
//! nothing when no budget or autoscaler needs it.

use super::cgroup::{self, Cgroups, Version};
use crate::config::{BudgetMode, Config};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    CgroupV2,
    CgroupV1,
    Sampling,
    Off,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::CgroupV2 => "cgroup v2",
            Mode::CgroupV1 => "cgroup v1",
            Mode::Sampling => "sampling",
            Mode::Off => "off",
        }
    }
}

/// How budgets are enforced in this run (decided at start, reported in /status).
#[derive(Debug, Clone)]
pub struct Enforcement {
    pub mode: Mode,
    /// one line per controller: how it is (or is not) enforced, and why
    pub notes: Vec<String>,
    pub cgroups: Option<Cgroups>,
    /// the /proc sampling loop runs (CPU %, memory where no cgroup, autoscaling)
    pub sample: bool,
}

impl Enforcement {
    fn off(why: &str) -> Enforcement {
        Enforcement {
            mode: Mode::Off,
            notes: vec![why.to_string()],
            cgroups: None,
            sample: false,
        }
    }

    fn sampling(notes: Vec<String>) -> Enforcement {
        Enforcement {
            mode: Mode::Sampling,
            notes,
            cgroups: None,
            sample: true,
        }
    }
}

fn any_budget(cfg: &Config) -> bool {
    cfg.budget.memory.is_some()
        || cfg.budget.cpu.is_some()
        || cfg
            .programs
            .iter()
            .any(|p| p.budget != Default::default() || p.autoscale.is_some())
}

/// Decide how budgets are enforced; `create` makes the cgroup directories (run, not check);
/// `guard` is moved into drover's own leaf under cgroup v2. An error means budget.mode =
/// "cgroup" cannot be honoured here.
pub fn decide(cfg: &Config, create: bool, guard: Option<i32>) -> Result<Enforcement, String> {
    let every = cfg.budget.sample_interval;
    match cfg.budget.mode {
        BudgetMode::Off => {
            return Ok(Enforcement::off(
                "budget.mode = \"off\": nothing is enforced or sampled",
            ))
        }
        BudgetMode::Auto if !any_budget(cfg) => return Ok(Enforcement::off(
            "no budgets or autoscaling configured: nothing to enforce, nothing sampled",
        )),
        BudgetMode::Sample => return Ok(Enforcement::sampling(vec![format!(
            "budget.mode = \"sample\": /proc every {every:?}; memory budgets enforced by drover, CPU measured, not throttled"
        )])),
        _ => {}
    }
    let also: Vec<i32> = guard.into_iter().collect();
    let det = cgroup::detect(create, &also);
    match det.cgroups {
        Some(cg) => Ok(Enforcement {
            mode: match cg.version {
                Version::V1 => Mode::CgroupV1,
                Version::V2 => Mode::CgroupV2,
            },
            notes: det.notes,
            cgroups: Some(cg),
            sample: true,
        }),
        None if cfg.budget.mode == BudgetMode::Cgroup => Err(format!(
            "budget.mode = \"cgroup\" but no cgroup can be written here: {}",
            det.notes.join("; ")
        )),
        None => {
            let mut notes = det.notes;
            notes.push(format!("so: sampling /proc every {every:?}; memory budgets enforced by drover, CPU measured, not throttled"));
            Ok(Enforcement::sampling(notes))
        }
    }
}

//! Resources: cgroups (v2, v1), /proc usage sampling, worker counts sized from the CPU quota,
//! and the autoscaler's arithmetic.

pub mod autoscale;
pub mod cgroup;
pub mod enforcement;
pub mod metrics_dir;
pub mod queue;
pub mod sizing;
pub mod usage;

//! The readers of a program's `memory`/`cpu` budgets and its `[program.NAME.autoscale]` table.

use super::keys::*;
use super::tree::{kind, Ctx, Node, V};
use super::values::fmt_size;
use super::*;

pub(super) fn read_worker_budget(cx: &mut Ctx, w: &str, v: &Node) -> Option<WorkerBudget> {
    let t = cx.table(w, v)?;
    cx.keys(w, t, WORKER_BUDGET_KEYS, &[]);
    let mut b = WorkerBudget::default();
    for (bk, _, bv) in t {
        let bw = format!("{w}.{bk}");
        match bk.as_str() {
            "memory_soft" => b.memory_soft = cx.size(&bw, bv),
            "memory_hard" => b.memory_hard = cx.size(&bw, bv),
            "cpu" => b.cpu = cx.cores(&bw, bv),
            _ => {}
        }
    }
    if let (Some(s), Some(h)) = (b.memory_soft, b.memory_hard) {
        if s > h {
            cx.err(
                &v.span,
                format!(
                    "{w}: memory_soft ({}) is above memory_hard ({})",
                    fmt_size(s),
                    fmt_size(h)
                ),
            );
        }
    }
    Some(b)
}

/// An autoscaling target: a number in (0, max].
fn target(cx: &mut Ctx, w: &str, v: &Node, max: f64, what: &str) -> Option<f64> {
    let x = match v.v {
        V::Int(i) => i as f64,
        V::Float(f) => f,
        _ => {
            cx.err(
                &v.span,
                format!("{w}: expected {what} in (0, {max}], found {}", kind(v)),
            );
            return None;
        }
    };
    if x > 0.0 && x <= max {
        Some(x)
    } else {
        cx.err(
            &v.span,
            format!("{w}: {x} is out of range: {what}, more than 0 and at most {max}"),
        );
        None
    }
}

pub(super) fn read_autoscale(cx: &mut Ctx, w: &str, v: &Node) -> Option<AutoscaleCfg> {
    let t = cx.table(w, v)?;
    cx.keys(w, t, AUTOSCALE_KEYS, &[]);
    let mut a = AutoscaleCfg {
        min: 1,
        max: 1,
        target_cpu: None,
        target_queue: None,
        scale_down_window: Duration::from_secs(300),
    };
    let mut have_max = false;
    for (ak, _, av) in t {
        let aw = format!("{w}.{ak}");
        match ak.as_str() {
            "min" => a.min = cx.uint(&aw, av, 1, 10_000).unwrap_or(1) as u32,
            "max" => {
                a.max = cx.uint(&aw, av, 1, 10_000).unwrap_or(1) as u32;
                have_max = true;
            }
            "target_cpu" => a.target_cpu = target(cx, &aw, av, 100.0, "a percentage"),
            "target_queue" => {
                a.target_queue = target(cx, &aw, av, 100_000.0, "waiting connections per worker")
            }
            "scale_down_window" => {
                if let Some(d) = cx.positive(&aw, av, Duration::from_millis(1)) {
                    a.scale_down_window = d
                }
            }
            _ => {}
        }
    }
    if a.target_cpu.is_none() && a.target_queue.is_none() {
        // neither given: CPU at 50 %, the HPA's usual target
        a.target_cpu = Some(50.0);
    }
    if !have_max {
        cx.err(&v.span, format!("{w}: `max` is missing"));
    } else if a.min > a.max {
        cx.err(
            &v.span,
            format!("{w}: min ({}) is above max ({})", a.min, a.max),
        );
    }
    Some(a)
}

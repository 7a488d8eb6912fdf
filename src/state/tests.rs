use super::*;

fn cfg() -> SlotCfg {
    SlotCfg {
        policy: RestartPolicy::Always,
        backoff: BackoffCfg {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        },
        stop_signal: Signal::SIGTERM,
        stop_timeout: Duration::from_secs(5),
        start_timeout: Duration::from_secs(60),
    }
}
fn with(policy: RestartPolicy) -> SlotCfg {
    SlotCfg { policy, ..cfg() }
}
const SEC: Duration = Duration::from_secs(1);
const KILL9: ExitStatus = ExitStatus::Signal(Signal::SIGKILL);

fn sig(pid: i32, signal: Signal, why: Why) -> Action {
    Action::Signal { pid, signal, why }
}

#[test]
fn backoff_table() {
    let c = cfg().backoff;
    // (failures, jitter, expected ms)
    let cases = [
        (0, 0.5, 0),
        (1, 0.5, 100),
        (2, 0.5, 200),
        (3, 0.5, 400),
        (4, 0.0, 600),  // 800 * 0.75
        (4, 1.0, 1000), // 800 * 1.25
        (20, 0.5, 30_000),
        (20, 1.0, 30_000), // jitter never exceeds max
        (u32::MAX, 0.5, 30_000),
    ];
    for (f, j, ms) in cases {
        assert_eq!(
            backoff_delay(&c, f, j).as_millis() as u64,
            ms,
            "failures={f} jitter={j}"
        );
    }
}

#[test]
fn the_transition_table_covers_every_phase_once() {
    use PhaseKind::*;
    for k in [Idle, Starting, Running, Stopping, Backoff, Waiting, Done] {
        assert_eq!(
            TRANSITIONS.iter().filter(|(f, _)| *f == k).count(),
            1,
            "{k:?}"
        );
    }
    // Done is final but for a job asked to run again, which starts from a backoff of zero
    let done = TRANSITIONS.iter().find(|(f, _)| *f == Done).unwrap().1;
    assert_eq!(done, &[Backoff], "Done leads only to a new run");
}

/// Every sequence of four events from a fresh slot (10,000 sequences): none takes a slot where
/// the table forbids (`enter` asserts it in tests). A spawn (or a failed one) is delivered only to
/// a slot waiting for one, as the loop does: it spawns only on `Action::Spawn` or a new slot.
#[test]
fn no_event_breaks_the_table() {
    type Event = fn(&mut Slot, Instant);
    let waiting = |s: &Slot| {
        matches!(
            s.phase(),
            Phase::Idle | Phase::Backoff { .. } | Phase::Waiting { .. }
        )
    };
    let events: [(bool, Event); 11] = [
        (true, |s, t| s.postpone(t + SEC)),
        (true, |s, t| s.spawned(7, t, &cfg())),
        (true, |s, t| {
            s.spawn_failed("x".into(), t, &cfg().backoff, 0.5)
        }),
        (false, |s, t| {
            s.ready(t);
        }),
        (false, |s, t| {
            s.exited(ExitStatus::Code(1), false, t, &cfg(), 0.5);
        }),
        (false, |s, t| {
            s.exited(KILL9, true, t + 60 * SEC, &with(RestartPolicy::Never), 0.5);
        }),
        (false, |s, t| {
            s.stop(
                t,
                Signal::SIGTERM,
                SEC,
                AfterStop::Respawn,
                StopReason::Health,
            );
        }),
        (false, |s, t| {
            s.stop(
                t,
                Signal::SIGKILL,
                SEC,
                AfterStop::Remove,
                StopReason::Shutdown,
            );
        }),
        (false, |s, _| {
            s.kill(KillCause::MemoryHard);
        }),
        (false, |s, t| {
            s.restart_in_place(t, &cfg(), StopReason::Reload);
        }),
        (false, |s, t| {
            s.tick(t + 100 * SEC, &cfg());
        }),
    ];
    let t0 = Instant::now();
    let n = events.len();
    for seq in 0..n.pow(4) {
        let mut s = Slot::new(1, 0);
        let mut code = seq;
        for step in 0..4 {
            let (is_spawn, e) = events[code % n];
            code /= n;
            if !is_spawn || waiting(&s) {
                e(&mut s, t0 + SEC * step);
            }
        }
    }
}

#[test]
fn ready_moves_starting_to_running_and_reports_latency() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawned(10, t0, &cfg());
    assert_eq!(s.state_name(), "starting");
    assert!(!s.is_ready());
    assert_eq!(
        s.ready(t0 + Duration::from_millis(250)),
        Some(Duration::from_millis(250))
    );
    assert_eq!(s.state_name(), "running");
    assert_eq!(s.ready(t0 + SEC), None, "ready once");
}

#[test]
fn stable_worker_restarts_at_once() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawned(10, t0, &cfg());
    s.ready(t0 + SEC);
    let e = s.exited(KILL9, false, t0 + 60 * SEC, &cfg(), 0.5);
    assert_eq!(e.actions, vec![Action::Spawn]);
    assert_eq!(e.next, Next::RestartNow);
    assert_eq!(e.counted, Some("exit"));
    assert_eq!(s.failures(), 0);
    assert_eq!(s.last_exit(), Some(&LastExit::Exited(KILL9)));
    s.spawned(11, t0 + 60 * SEC, &cfg());
    assert_eq!(s.restarts(), 1);
}

#[test]
fn crash_loop_backs_off_exponentially() {
    let mut now = Instant::now();
    let mut s = Slot::new(1, 0);
    let mut delays = vec![];
    for pid in 1..=6 {
        s.spawned(pid, now, &cfg());
        let e = s.exited(
            ExitStatus::Code(1),
            false,
            now + Duration::from_millis(5),
            &cfg(),
            0.5,
        );
        assert_eq!(
            e.actions,
            vec![],
            "a quick failure never respawns synchronously"
        );
        let Phase::Backoff { until } = *s.phase() else {
            panic!("{:?}", s.phase())
        };
        assert_eq!(
            e.next,
            Next::RestartIn {
                delay: s.last_delay(),
                failures: pid as u32
            }
        );
        delays.push((until - now - Duration::from_millis(5)).as_millis() as u64);
        // nothing happens before the deadline, the spawn comes at it
        assert_eq!(s.tick(until - Duration::from_millis(1), &cfg()), vec![]);
        assert_eq!(s.tick(until, &cfg()), vec![Action::Spawn]);
        now = until;
    }
    assert_eq!(delays, vec![100, 200, 400, 800, 1600, 3200]);
    assert!(s.crash_looping(5));
    assert_eq!(s.restarts(), 5);
}

#[test]
fn policy_decides_restart() {
    let t0 = Instant::now();
    let later = t0 + 60 * SEC;
    let cases = [
        (RestartPolicy::Always, ExitStatus::Code(0), true, "backoff"),
        (
            RestartPolicy::OnFailure,
            ExitStatus::Code(0),
            false,
            "stopped",
        ),
        (
            RestartPolicy::OnFailure,
            ExitStatus::Code(2),
            true,
            "backoff",
        ),
        (RestartPolicy::OnFailure, KILL9, true, "backoff"),
        (RestartPolicy::Never, ExitStatus::Code(1), false, "failed"),
        (RestartPolicy::Never, ExitStatus::Code(0), false, "stopped"),
    ];
    for (policy, st, restarts, state) in cases {
        let mut s = Slot::new(1, 0);
        s.spawned(5, t0, &with(policy));
        let e = s.exited(st, false, later, &with(policy), 0.5);
        assert_eq!(
            e.actions == vec![Action::Spawn],
            restarts,
            "{policy:?} {st:?}"
        );
        assert_eq!(s.state_name(), state, "{policy:?} {st:?}");
        if !restarts {
            assert_eq!(e.next, Next::NotRestarting);
            assert_eq!(e.counted, None, "nothing to count");
        }
    }
}

#[test]
fn stop_escalates_to_kill_and_removes() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 1);
    s.spawned(42, t0, &cfg());
    let acts = s.stop(
        t0,
        Signal::SIGTERM,
        5 * SEC,
        AfterStop::Remove,
        StopReason::Scale,
    );
    assert_eq!(
        acts,
        vec![sig(42, Signal::SIGTERM, Why::Stop(StopReason::Scale))]
    );
    assert_eq!(s.deadline(), Some(t0 + 5 * SEC));
    assert_eq!(s.tick(t0 + 4 * SEC, &cfg()), vec![]);
    assert_eq!(
        s.tick(t0 + 5 * SEC, &cfg()),
        vec![sig(42, Signal::SIGKILL, Why::StopTimedOut)]
    );
    assert_eq!(s.tick(t0 + 6 * SEC, &cfg()), vec![], "KILL is sent once");
    assert_eq!(
        s.deadline(),
        Some(t0 + 5 * SEC + UNREAPED_AFTER),
        "then only the deadline for giving up on it"
    );
    let e = s.exited(KILL9, false, t0 + 6 * SEC, &cfg(), 0.5);
    assert_eq!(e.actions, vec![Action::Remove]);
    assert_eq!(e.next, Next::Stopped(StopReason::Scale));
    assert_eq!(e.counted, None, "a removal is not a restart");
    assert_eq!(
        s.last_exit(),
        Some(&LastExit::Stopped(KILL9, StopReason::Scale))
    );
}

#[test]
fn start_timeout_recycles_with_its_reason_and_backs_off() {
    let t0 = Instant::now();
    let c = SlotCfg {
        start_timeout: 10 * SEC,
        ..cfg()
    };
    let mut s = Slot::new(1, 0);
    s.spawned(7, t0, &c);
    assert_eq!(s.deadline(), Some(t0 + 10 * SEC));
    assert_eq!(s.tick(t0 + 9 * SEC, &c), vec![]);
    assert_eq!(
        s.tick(t0 + 10 * SEC, &c),
        vec![sig(7, Signal::SIGTERM, Why::Stop(StopReason::StartTimeout))]
    );
    let term = ExitStatus::Signal(Signal::SIGTERM);
    let e = s.exited(term, false, t0 + 10 * SEC, &c, 0.5);
    assert_eq!(
        s.last_exit(),
        Some(&LastExit::Stopped(term, StopReason::StartTimeout))
    );
    // up 10 s = reset_after: counts as stable, so immediate; a quicker one would back off
    assert_eq!(e.actions, vec![Action::Spawn]);
    assert_eq!(e.counted, Some("start-timeout"));
    let mut s = Slot::new(2, 0);
    let c2 = SlotCfg {
        start_timeout: SEC,
        ..cfg()
    };
    s.spawned(8, t0, &c2);
    s.tick(t0 + SEC, &c2);
    assert_eq!(s.exited(term, false, t0 + SEC, &c2, 0.5).actions, vec![]);
    assert_eq!(s.state_name(), "backoff");
}

#[test]
fn stop_of_a_waiting_slot_removes_it_at_once() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawned(1, t0, &cfg());
    s.exited(ExitStatus::Code(1), false, t0, &cfg(), 0.5);
    assert_eq!(s.state_name(), "backoff");
    assert_eq!(
        s.stop(
            t0,
            Signal::SIGTERM,
            SEC,
            AfterStop::Remove,
            StopReason::Shutdown
        ),
        vec![Action::Remove]
    );
}

#[test]
fn a_second_stop_brings_the_kill_forward() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawned(7, t0, &cfg());
    s.stop(
        t0,
        Signal::SIGTERM,
        30 * SEC,
        AfterStop::Remove,
        StopReason::Scale,
    );
    assert_eq!(
        s.stop(
            t0,
            Signal::SIGTERM,
            Duration::ZERO,
            AfterStop::Respawn,
            StopReason::Health
        ),
        vec![]
    );
    assert_eq!(s.deadline(), Some(t0));
    assert!(matches!(
        s.phase(),
        Phase::Stopping {
            then: AfterStop::Remove,
            reason: StopReason::Scale,
            ..
        }
    ));
    // a fast shutdown's KILL goes out at once
    assert_eq!(
        s.stop(
            t0,
            Signal::SIGKILL,
            Duration::ZERO,
            AfterStop::Remove,
            StopReason::Shutdown
        ),
        vec![sig(7, Signal::SIGKILL, Why::Stop(StopReason::Scale))]
    );
}

#[test]
fn spawn_failure_backs_off() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawn_failed("no such file".into(), t0, &cfg().backoff, 0.5);
    assert_eq!(
        *s.phase(),
        Phase::Backoff {
            until: t0 + Duration::from_millis(100)
        }
    );
    assert_eq!(s.state_name(), "backoff");
}

#[test]
fn a_memory_kill_is_reported_as_such_and_restarts_by_policy() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.spawned(9, t0, &cfg());
    s.ready(t0 + SEC);
    assert_eq!(
        s.kill(KillCause::MemoryHard),
        vec![sig(9, Signal::SIGKILL, Why::Kill(KillCause::MemoryHard))]
    );
    assert_eq!(s.kill(KillCause::MemoryHard), vec![], "killed once");
    let e = s.exited(KILL9, false, t0 + 60 * SEC, &cfg(), 0.5);
    assert_eq!(
        s.last_exit(),
        Some(&LastExit::Killed(KILL9, KillCause::MemoryHard))
    );
    assert_eq!(e.counted, Some("memory"));
    assert_eq!(e.actions, vec![Action::Spawn]);
    // the next process starts clean: a plain exit is a plain exit again
    s.spawned(10, t0 + 60 * SEC, &cfg());
    s.exited(ExitStatus::Code(1), false, t0 + 120 * SEC, &cfg(), 0.5);
    assert_eq!(s.last_exit(), Some(&LastExit::Exited(ExitStatus::Code(1))));
    // the kernel's OOM kill, seen in the cgroup's counter, under restart = "never"
    let mut s = Slot::new(2, 0);
    let never = with(RestartPolicy::Never);
    s.spawned(11, t0, &never);
    let e = s.exited(KILL9, true, t0 + SEC, &never, 0.5);
    assert_eq!(
        s.last_exit(),
        Some(&LastExit::Killed(KILL9, KillCause::Oom))
    );
    assert_eq!((e.next, e.counted), (Next::NotRestarting, Some("oom")));
}

#[test]
fn a_replacement_carries_the_position_and_its_history() {
    let t0 = Instant::now();
    let mut old = Slot::new(1, 3);
    old.spawned(5, t0, &cfg());
    old.exited(ExitStatus::Code(1), false, t0 + 60 * SEC, &cfg(), 0.5);
    old.spawned(6, t0 + 60 * SEC, &cfg());
    let mut new = Slot::replacing(2, &old);
    assert_eq!((new.id(), new.index(), new.restarts()), (2, 3, 2));
    new.spawned(7, t0 + 61 * SEC, &cfg());
    assert_eq!(new.restarts(), 2, "spawning a fresh slot is not a restart");
    old.stop(
        t0 + 62 * SEC,
        Signal::SIGTERM,
        SEC,
        AfterStop::Remove,
        StopReason::Reload,
    );
    old.exited(ExitStatus::Code(0), false, t0 + 62 * SEC, &cfg(), 0.5);
    new.inherit(old.last_exit().unwrap().clone());
    assert_eq!(
        new.last_exit(),
        Some(&LastExit::Stopped(ExitStatus::Code(0), StopReason::Reload))
    );
}

#[test]
fn a_roll_restarts_a_waiting_slot_in_place_and_forgives_its_failures() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    for i in 0..3 {
        s.spawned(5 + i, t0, &cfg());
        s.exited(ExitStatus::Code(1), false, t0, &cfg(), 0.5);
    }
    assert_eq!(s.failures(), 3);
    assert_eq!(
        s.restart_in_place(t0, &cfg(), StopReason::Reload),
        vec![Action::Spawn]
    );
    assert_eq!(s.failures(), 0);
}

/// A finished job (restart = "never") asked to run again — `ctl restart`, or a reload that
/// changed it — runs once more; before, the roll counted it replaced and nothing ran.
#[test]
fn a_finished_job_restarted_in_place_runs_again() {
    let t0 = Instant::now();
    let never = SlotCfg {
        policy: RestartPolicy::Never,
        ..cfg()
    };
    let mut s = Slot::new(1, 0);
    s.spawned(5, t0, &never);
    s.exited(ExitStatus::Code(4), false, t0, &never, 0.5);
    assert!(matches!(s.phase(), Phase::Done { failed: true }));
    assert_eq!(
        s.restart_in_place(t0, &never, StopReason::Restart),
        vec![Action::Spawn]
    );
    s.spawned(6, t0, &never);
    assert_eq!(s.pid(), Some(6));
}

#[test]
fn a_process_that_outlives_its_sigkill_is_given_up_on() {
    let t = Instant::now();
    // removal: the slot is done without it
    let mut s = Slot::new(1, 0);
    s.spawned(42, t, &cfg());
    s.stop(
        t,
        Signal::SIGTERM,
        SEC,
        AfterStop::Remove,
        StopReason::Scale,
    );
    assert_eq!(
        s.tick(t + SEC, &cfg()),
        vec![sig(42, Signal::SIGKILL, Why::StopTimedOut)]
    );
    assert_eq!(s.deadline(), Some(t + SEC + UNREAPED_AFTER));
    assert!(s.tick(t + SEC + UNREAPED_AFTER / 2, &cfg()).is_empty());
    assert_eq!(
        s.tick(t + SEC + UNREAPED_AFTER, &cfg()),
        vec![Action::Abandon { pid: 42 }, Action::Remove]
    );
    assert_eq!(s.last_exit(), Some(&LastExit::Unreaped(StopReason::Scale)));
    assert!(matches!(s.phase(), Phase::Done { .. }));
    // a recycle: the slot starts a new process without waiting for the old one
    let mut s = Slot::new(2, 0);
    s.spawned(43, t, &cfg());
    s.stop(
        t,
        Signal::SIGTERM,
        SEC,
        AfterStop::Respawn,
        StopReason::Health,
    );
    s.tick(t + SEC, &cfg());
    let acts = s.tick(t + 20 * SEC, &cfg());
    assert_eq!(acts[0], Action::Abandon { pid: 43 });
    assert!(matches!(s.phase(), Phase::Backoff { .. }));
    assert!(acts.contains(&Action::Spawn), "{acts:?}");
    // a late reap of the abandoned pid is not the slot's business any more
    let e = s.exited(KILL9, false, t + 30 * SEC, &cfg(), 0.5);
    assert_eq!(e.next, Next::Ignored);
}

/// A preloaded worker waits for its preloader (loading, or asked to fork it) before its first
/// process: that process is not a restart, and the slot says what it waits for.
#[test]
fn a_fresh_slot_that_waited_for_its_preloader_has_not_restarted() {
    let t0 = Instant::now();
    let mut s = Slot::new(1, 0);
    s.postpone(t0 + SEC);
    assert_eq!(s.state_name(), "waiting-for-preloader");
    assert_eq!(s.deadline(), Some(t0 + SEC));
    assert_eq!(s.tick(t0 + SEC, &cfg()), vec![Action::Spawn]);
    // still loading when the timer came: it waits again, then a fork is asked for
    s.postpone(t0 + 2 * SEC);
    s.postpone(t0 + 12 * SEC);
    s.spawned(7, t0 + 3 * SEC, &cfg());
    assert_eq!(s.restarts(), 0, "its first process");
    assert_eq!(s.failures(), 0);
    assert!(!s.crash_looping(1));
    // after a crash it waits for a fork again: the next process is a restart, counted once
    s.exited(ExitStatus::Code(1), false, t0 + 4 * SEC, &cfg(), 0.5);
    assert_eq!(s.state_name(), "backoff");
    s.postpone(t0 + 15 * SEC);
    assert_eq!(s.state_name(), "waiting-for-preloader");
    assert!(
        s.crash_looping(1),
        "a crash loop waiting for a fork is still one"
    );
    s.spawned(8, t0 + 5 * SEC, &cfg());
    assert_eq!(s.restarts(), 1);
    // a rolling replacement carries the count; waiting for its fork adds nothing
    let mut new = Slot::replacing(2, &s);
    new.postpone(t0 + 16 * SEC);
    new.spawned(9, t0 + 6 * SEC, &cfg());
    assert_eq!(new.restarts(), 2);
    // a fork the preloader could not make is a failed start, not a restart, the first time
    let mut f = Slot::new(3, 1);
    f.postpone(t0 + SEC);
    f.spawn_failed(
        "the preloader could not fork".into(),
        t0,
        &cfg().backoff,
        0.5,
    );
    assert_eq!((f.restarts(), f.failures()), (0, 1));
    // a roll that restarts a slot still waiting for its first process starts that process
    let mut r = Slot::new(4, 2);
    r.postpone(t0 + SEC);
    assert_eq!(
        r.restart_in_place(t0, &cfg(), StopReason::Reload),
        vec![Action::Spawn]
    );
    r.spawned(10, t0, &cfg());
    assert_eq!(r.restarts(), 0);
}

//! What `/healthz` measures: whether the supervisor loop still comes back to its `select!`.
//!
//! The status server runs on a thread of its own, so answering at all proves nothing about the
//! loop. A probe asks the loop instead, through a coalescing ping/pong pair:
//!
//! - **ping**: a channel of capacity 1. Its one slot is the "ping wanted" flag: a probe
//!   `try_send`s into it, and a full channel means a wake-up is already pending, which answers
//!   this probe too. However many probes run at once, the loop is woken at most once per answer,
//!   and there is no queue an attacker could fill.
//! - **pong**: a `watch` counter the loop bumps when it takes the ping (O(1), no publish).
//!
//! A probe reads the counter *before* it pings; any later bump was made after the probe began,
//! so the loop was alive during the probe. Nothing runs while no probe asks: an idle drover is
//! not woken periodically.
//!
//! An answer is good for `FRESH` (100 ms): a probe that comes sooner after the last answer is
//! answered from it, so probes back to back wake the loop at most ten times a second (a flood
//! of `/healthz` costs the loop nothing more), and "alive" still means "answered within the
//! last 100 ms".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

/// How long an answer from the loop stands for later probes.
pub const FRESH: Duration = Duration::from_millis(100);

/// How long a probe waits for the loop. The shipped Kubernetes probes give `/healthz` 2 s
/// (`timeoutSeconds: 2`); the loop answers in microseconds when it runs at all.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

/// The server's end: cloned into every request.
#[derive(Clone, Debug)]
pub struct Probe {
    ping: mpsc::Sender<()>,
    pong: watch::Receiver<u64>,
    /// when the loop last answered, in ms since `epoch` (0: never)
    answered_ms: Arc<AtomicU64>,
    epoch: Instant,
}

/// The loop's end, carried in `supervisor::Context`.
#[derive(Debug)]
pub struct Responder {
    ping: mpsc::Receiver<()>,
    pong: watch::Sender<u64>,
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// the loop answered within the timeout
    Alive,
    /// it did not answer within this long (or it has ended)
    Unresponsive(Duration),
}

pub fn pair() -> (Probe, Responder) {
    let (ping_tx, ping_rx) = mpsc::channel(1);
    let (pong_tx, pong_rx) = watch::channel(0);
    (
        Probe {
            ping: ping_tx,
            pong: pong_rx,
            answered_ms: Arc::new(AtomicU64::new(0)),
            epoch: Instant::now(),
        },
        Responder {
            ping: ping_rx,
            pong: pong_tx,
        },
    )
}

impl Probe {
    /// Ping the loop and wait up to `timeout` for its answer (or use one from the last `FRESH`).
    pub async fn check(&self, timeout: Duration) -> Liveness {
        let now_ms = |p: &Probe| p.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.answered_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms(self).saturating_sub(last) < FRESH.as_millis() as u64 {
            return Liveness::Alive;
        }
        let mut pong = self.pong.clone();
        let seen = *pong.borrow_and_update();
        if let Err(mpsc::error::TrySendError::Closed(())) = self.ping.try_send(()) {
            return Liveness::Unresponsive(timeout); // the loop has ended
        }
        // Full: a ping is pending; the loop has not taken it yet, so its answer comes after `seen`
        let answered = tokio::time::timeout(timeout, pong.wait_for(|n| *n != seen))
            .await
            .is_ok_and(|r| r.is_ok());
        if answered {
            self.answered_ms.store(now_ms(self), Ordering::Relaxed);
            Liveness::Alive
        } else {
            Liveness::Unresponsive(timeout)
        }
    }
}

impl Responder {
    /// Wait for a ping and answer it. Cancel-safe (a `select!` branch of the loop); pending
    /// forever once no server holds a `Probe` (no status listener, or it has gone).
    pub async fn answer(&mut self) {
        match self.ping.recv().await {
            Some(()) => self.pong.send_modify(|n| *n = n.wrapping_add(1)),
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_never_answers_is_unresponsive_after_the_timeout() {
        let (probe, _responder) = pair();
        let t0 = tokio::time::Instant::now();
        let got = probe.check(LIVENESS_TIMEOUT).await;
        assert_eq!(got, Liveness::Unresponsive(LIVENESS_TIMEOUT));
        assert_eq!(t0.elapsed(), LIVENESS_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_answers_is_alive() {
        let (probe, mut responder) = pair();
        let answering = tokio::spawn(async move {
            loop {
                responder.answer().await;
            }
        });
        for _ in 0..3 {
            assert_eq!(probe.check(LIVENESS_TIMEOUT).await, Liveness::Alive);
        }
        answering.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_loop_that_has_ended_is_unresponsive_at_once() {
        let (probe, responder) = pair();
        drop(responder);
        let t0 = tokio::time::Instant::now();
        assert!(matches!(
            probe.check(LIVENESS_TIMEOUT).await,
            Liveness::Unresponsive(_)
        ));
        assert_eq!(t0.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn many_concurrent_probes_cost_the_loop_one_wake_up() {
        let (probe, mut responder) = pair();
        let mut probes = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let p = probe.clone();
            probes.spawn(async move { p.check(LIVENESS_TIMEOUT).await });
        }
        // with the clock paused, this returns only once every probe task waits for its pong
        tokio::time::sleep(Duration::from_millis(10)).await;
        responder.answer().await; // one wake-up...
        let mut alive = 0;
        while let Some(r) = probes.join_next().await {
            alive += (r.unwrap() == Liveness::Alive) as usize;
        }
        assert_eq!(alive, 100, "...answers all 100 probes");
        assert!(
            responder.ping.try_recv().is_err(),
            "no second wake-up is pending"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_stands_for_100ms_then_the_loop_is_asked_again() {
        let (probe, mut responder) = pair();
        let answering = tokio::spawn(async move {
            responder.answer().await;
            responder // answers once, then never again
        });
        assert_eq!(probe.check(LIVENESS_TIMEOUT).await, Liveness::Alive);
        let _responder = answering.await.unwrap();
        // within FRESH the answer stands (real time: the epoch is a std Instant)
        assert_eq!(probe.check(LIVENESS_TIMEOUT).await, Liveness::Alive);
        std::thread::sleep(FRESH + Duration::from_millis(20));
        assert_eq!(
            probe.check(LIVENESS_TIMEOUT).await,
            Liveness::Unresponsive(LIVENESS_TIMEOUT),
            "a loop that stopped answering is found out once the answer is stale"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pong_from_before_the_probe_does_not_count() {
        let (probe, mut responder) = pair();
        // an earlier probe's ping, answered before this probe begins
        probe.ping.try_send(()).unwrap();
        responder.answer().await;
        assert_eq!(
            probe.check(LIVENESS_TIMEOUT).await,
            Liveness::Unresponsive(LIVENESS_TIMEOUT)
        );
    }
}

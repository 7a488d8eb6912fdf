//! The history ring: what the status page's charts and `GET /history` show. The loop takes one
//! `Sample` every `history_interval` (`supervisor/history.rs`) and the ring keeps the last
//! `history / history_interval` of them, oldest first; nothing grows past that.
//!
//! A sample is 56 bytes, plus 56 per program and 32 per socket (`Sample::bytes`): the default
//! 15 minutes at 10 s is 90 samples, 13,016 bytes for one program and one socket (the test below
//! prints it), 18 KB for two programs and a socket.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub interval_s: f64,
    pub window_s: f64,
    /// the most samples kept
    pub capacity: usize,
    pub samples: VecDeque<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    /// seconds since the Unix epoch
    pub t: u64,
    pub programs: Vec<ProgramPoint>,
    pub sockets: Vec<SocketPoint>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProgramPoint {
    pub name: Arc<str>,
    pub ready: u32,
    pub desired: u32,
    /// restarts since drover started (a counter: the page draws its increase per interval)
    pub restarts: u64,
    /// all its workers together, percent of one core over the last interval
    pub cpu_percent: Option<f32>,
    /// all its workers together
    pub memory_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SocketPoint {
    pub name: Arc<str>,
    pub queue: Option<u32>,
    pub queue_max: Option<u32>,
}

impl History {
    pub fn new(window: Duration, interval: Duration) -> History {
        let capacity = (window.as_millis() / interval.as_millis().max(1)).max(1) as usize;
        History {
            interval_s: interval.as_secs_f64(),
            window_s: window.as_secs_f64(),
            capacity,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    pub fn push(&mut self, s: Sample) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(s);
    }

    /// Bytes the ring holds (its samples, their vectors; names are shared with the loop).
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<History>()
            + self.samples.capacity() * std::mem::size_of::<Sample>()
            + self.samples.iter().map(Sample::bytes).sum::<usize>()
    }
}

impl Sample {
    /// Heap bytes of one sample beyond its own struct.
    pub fn bytes(&self) -> usize {
        self.programs.capacity() * std::mem::size_of::<ProgramPoint>()
            + self.sockets.capacity() * std::mem::size_of::<SocketPoint>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: u64) -> Sample {
        Sample {
            t,
            programs: vec![ProgramPoint {
                name: "api".into(),
                ready: 2,
                desired: 2,
                restarts: t,
                cpu_percent: Some(1.5),
                memory_bytes: Some(1 << 20),
            }],
            sockets: vec![SocketPoint {
                name: "http".into(),
                queue: Some(0),
                queue_max: Some(128),
            }],
        }
    }

    #[test]
    fn the_ring_keeps_the_last_window_oldest_first() {
        let mut h = History::new(Duration::from_secs(30), Duration::from_secs(10));
        assert_eq!(h.capacity, 3);
        for t in 0..5 {
            h.push(sample(t));
        }
        let ts: Vec<u64> = h.samples.iter().map(|s| s.t).collect();
        assert_eq!(ts, [2, 3, 4]);
        let before = h.bytes();
        for t in 5..100 {
            h.push(sample(t));
        }
        assert_eq!(h.bytes(), before, "a full ring does not grow");
    }

    #[test]
    fn memory_of_the_default_ring() {
        // 15 minutes at 10 s, one program and one socket: the figure README and BENCHMARKS state
        let mut h = History::new(Duration::from_secs(900), Duration::from_secs(10));
        for t in 0..200 {
            h.push(sample(t));
        }
        assert_eq!(h.samples.len(), 90);
        let b = h.bytes();
        println!("the default ring, one program and one socket: {b} bytes");
        assert!((4_000..16_000).contains(&b), "{b} bytes");
    }
}

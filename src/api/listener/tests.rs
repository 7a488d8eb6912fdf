use super::*;

fn c(id: u64, age_ms: u64, sent: bool, in_flight: u32, now: Instant) -> Candidate {
    Candidate {
        id,
        opened: now - Duration::from_millis(age_ms),
        sent,
        in_flight,
    }
}

#[test]
fn eviction_takes_the_oldest_silent_connection_first() {
    let now = Instant::now();
    let open = [
        c(1, 900, true, 0, now),  // idle keep-alive, oldest
        c(2, 500, false, 0, now), // never sent a byte
        c(3, 100, false, 0, now), // never sent a byte, younger
        c(4, 950, true, 1, now),  // in a request
    ];
    assert_eq!(victim(open).map(|v| v.id), Some(2));
}

#[test]
fn without_a_silent_connection_the_oldest_without_a_request_in_flight_goes() {
    let now = Instant::now();
    let open = [
        c(1, 300, true, 0, now), // sent half a request line
        c(2, 800, true, 0, now), // idle keep-alive
        c(3, 999, true, 2, now), // in the middle of a slow /status, oldest of all
    ];
    assert_eq!(victim(open).map(|v| v.id), Some(2));
}

#[test]
fn a_connection_in_a_request_is_never_evicted() {
    let now = Instant::now();
    let open = [c(1, 999, true, 1, now), c(2, 10, true, 1, now)];
    assert!(victim(open).is_none());
    assert!(victim([]).is_none());
}

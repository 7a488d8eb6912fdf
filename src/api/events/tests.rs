use super::{Event, Feed, Resume};

fn ev(n: u32) -> Event {
    Event::Scaled {
        program: "api".into(),
        from: n,
        to: n + 1,
        why: "scale",
    }
}

fn ids(frames: &[axum::body::Bytes]) -> Vec<u64> {
    frames
        .iter()
        .map(|f| {
            let s = std::str::from_utf8(f).unwrap();
            s.strip_prefix("id: ")
                .unwrap()
                .split('\n')
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

#[test]
fn ids_start_at_one_and_the_ring_keeps_the_newest_capacity() {
    let f = Feed::with_capacity(3);
    assert_eq!(f.newest(), 0);
    for n in 0..5 {
        assert_eq!(f.emit(ev(n)), n as u64 + 1);
    }
    assert_eq!(f.newest(), 5);
    let (frames, last) = f.since(2, 100).unwrap();
    assert_eq!(ids(&frames), vec![3, 4, 5]);
    assert_eq!(last, 5);
    // id 1 was pushed out: a client that saw only 1 missed 2, which is gone
    assert_eq!(f.since(1, 100), Err(1));
    assert_eq!(f.since(0, 100), Err(2));
    assert!(f.behind(1));
    assert!(!f.behind(2));
}

#[test]
fn since_is_bounded_per_call_and_resumes_where_it_stopped() {
    let f = Feed::with_capacity(10);
    for n in 0..7 {
        f.emit(ev(n));
    }
    let (a, last) = f.since(0, 3).unwrap();
    assert_eq!(ids(&a), vec![1, 2, 3]);
    let (b, last) = f.since(last, 3).unwrap();
    assert_eq!(ids(&b), vec![4, 5, 6]);
    let (c, last) = f.since(last, 3).unwrap();
    assert_eq!(ids(&c), vec![7]);
    let (d, last) = f.since(last, 3).unwrap();
    assert!(d.is_empty());
    assert_eq!(last, 7);
}

#[test]
fn resume_says_what_was_lost_and_never_replays_silently() {
    let f = Feed::with_capacity(3);
    assert_eq!(f.resume(None), Resume::After(0));
    assert_eq!(f.resume(Some(0)), Resume::After(0));
    for n in 0..5 {
        f.emit(ev(n));
    }
    assert_eq!(f.resume(None), Resume::After(5));
    assert_eq!(f.resume(Some(5)), Resume::After(5));
    assert_eq!(f.resume(Some(2)), Resume::After(2));
    assert_eq!(f.resume(Some(1)), Resume::Lost { missed: 1, from: 2 });
    assert_eq!(f.resume(Some(0)), Resume::Lost { missed: 2, from: 2 });
    assert_eq!(f.resume(Some(6)), Resume::Unknown { newest: 5, from: 2 });
    assert_eq!(
        f.resume(Some(u64::MAX)),
        Resume::Unknown { newest: 5, from: 2 }
    );
}

#[test]
fn a_frame_is_one_sse_event_with_the_type_and_fields_in_its_json() {
    let f = super::frame(7, "2026-01-01T00:00:00Z", &ev(1));
    let s = std::str::from_utf8(&f).unwrap();
    let (head, data) = s.split_once("data: ").unwrap();
    assert_eq!(head, "id: 7\nevent: scaled\n");
    assert!(data.ends_with("\n\n") && !data.trim_end().contains('\n'));
    let v: serde_json::Value = serde_json::from_str(data.trim_end()).unwrap();
    assert_eq!(v["id"], 7);
    assert_eq!(v["type"], "scaled");
    assert_eq!(v["time"], "2026-01-01T00:00:00Z");
    assert_eq!(v["program"], "api");
    assert_eq!(v["to"], 2);
}

#[test]
fn metrics_count_events_by_type() {
    let f = Feed::with_capacity(2);
    for n in 0..3 {
        f.emit(ev(n));
    }
    f.emit(Event::ReloadRejected { why: "x".into() });
    let m = f.render_metrics();
    assert!(
        m.contains("drover_events_total{type=\"scaled\"} 3\n"),
        "{m}"
    );
    assert!(
        m.contains("drover_events_total{type=\"reload_rejected\"} 1\n"),
        "{m}"
    );
    assert!(m.contains("drover_events_dropped_clients_total 0\n"), "{m}");
}

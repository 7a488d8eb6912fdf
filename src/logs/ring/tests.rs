use super::*;

fn programs(text: &str) -> Vec<ProgramCfg> {
    crate::config::parse("t.toml", text, &|_| None)
        .unwrap()
        .programs
}

fn rings(lines: usize) -> (Rings, Arc<ProgramRing>) {
    let r = Rings::default();
    r.configure(&programs(&format!(
        "[program.api]\ncommand = \"x\"\n[program.api.log]\nlines = {lines}\n"
    )));
    let ring = r.get("api").unwrap();
    (r, ring)
}

fn texts(v: &[Arc<Entry>]) -> Vec<&str> {
    v.iter().map(|e| e.text.as_str()).collect()
}

#[test]
fn keeps_the_last_lines_in_order_with_rising_seq() {
    let (_r, ring) = rings(3);
    for i in 0..5 {
        ring.push(Some(0), Some(10), format!("l{i}"), false);
    }
    let last = ring.last(10, |_| true);
    assert_eq!(texts(&last), ["l2", "l3", "l4"]);
    assert_eq!(last.iter().map(|e| e.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(texts(&ring.last(2, |_| true)), ["l3", "l4"]);
    assert_eq!(ring.captured.load(Ordering::Relaxed), 5);
}

#[test]
fn zero_lines_keeps_none_but_still_counts_and_broadcasts() {
    let (_r, ring) = rings(0);
    let (_, rx) = ring.last_and_subscribe(10, |_| true, true);
    let mut rx = rx.unwrap();
    ring.push(Some(0), Some(1), "x".into(), false);
    assert!(ring.last(10, |_| true).is_empty());
    assert_eq!(rx.try_recv().unwrap().text, "x");
    assert_eq!(ring.captured.load(Ordering::Relaxed), 1);
}

#[test]
fn the_byte_budget_evicts_long_lines_but_keeps_the_newest() {
    let (_r, ring) = rings(100);
    let cap = byte_budget(100);
    let long = "y".repeat(16 * 1024);
    for _ in 0..10 {
        ring.push(Some(0), Some(1), long.clone(), true);
    }
    let kept = ring.last(100, |_| true);
    assert!(!kept.is_empty());
    let bytes: usize = kept.iter().map(|e| e.cost()).sum();
    assert!(bytes <= cap, "{bytes} > {cap}");
    assert_eq!(kept.last().unwrap().seq, 10);
}

#[test]
fn the_byte_budget_is_bounded_and_fits_one_long_line() {
    assert_eq!(byte_budget(1_000), 512_000);
    assert_eq!(byte_budget(100_000), MAX_RING_BYTES);
    assert!(byte_budget(1) >= 2 * crate::logs::output::MAX_LINE + ENTRY_OVERHEAD);
}

#[test]
fn worker_filter_and_last_words() {
    let (_r, ring) = rings(100);
    for i in 0..30 {
        ring.push(
            Some(i % 2),
            Some(100 + (i % 2) as i32),
            format!("w{}-{i}", i % 2),
            false,
        );
    }
    let w1 = ring.last(3, |e| e.worker == Some(1));
    assert_eq!(texts(&w1), ["w1-25", "w1-27", "w1-29"]);
    let words = ring.last_words(0, 100, 20, 4096);
    assert_eq!(words.len(), 15);
    assert_eq!(words.last().unwrap(), "w0-28");
    // another pid at the same index is another process: not its words
    assert!(ring.last_words(0, 999, 20, 4096).is_empty());
    // the byte cap keeps the newest
    assert_eq!(
        ring.last_words(0, 100, 20, 20),
        ["w0-22", "w0-24", "w0-26", "w0-28"]
    );
    // a line longer than a quarter of the cap is cut to that, not dropped with everything
    // before it
    ring.push(Some(0), Some(100), "x".repeat(10_000), false);
    let words = ring.last_words(0, 100, 20, 4096);
    assert_eq!(words.len(), 16);
    assert_eq!(words[14], "w0-28");
    assert!(words[15].len() <= 1024 && words[15].ends_with(" [cut]"));
}

#[test]
fn reload_resizes_and_drops_removed_programs() {
    let (r, ring) = rings(10);
    for i in 0..10 {
        ring.push(None, None, format!("{i}"), false);
    }
    r.configure(&programs(
        "[program.api]\ncommand = \"x\"\n[program.api.log]\nlines = 4\n[program.web]\ncommand = \"y\"\nlog = \"inherit\"\n",
    ));
    assert_eq!(texts(&ring.last(10, |_| true)), ["6", "7", "8", "9"]);
    assert!(Arc::ptr_eq(&ring, &r.get("api").unwrap()));
    assert!(r.get("web").unwrap().inherited());
    r.configure(&programs("[program.web]\ncommand = \"y\"\n"));
    assert!(r.get("api").is_none());
    assert!(!r.get("web").unwrap().inherited());
}

#[test]
fn a_slow_receiver_lags_without_holding_more_than_the_buffer() {
    let (r, ring) = rings(10);
    let mut all = r.subscribe_all();
    for i in 0..(FOLLOW_BUFFER + 5) {
        ring.push(None, None, format!("{i}"), false);
    }
    match all.try_recv() {
        Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 5),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert_eq!(all.try_recv().unwrap().text, "5");
}

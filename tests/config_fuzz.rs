//! Property tests for configuration parsing and validation (hostile input): whatever the text,
//! `parse` returns a config or positioned problems, never panics, and `check`'s rendering of an
//! accepted config never panics either.

use drover::config::{decode, parse, Config, ConfigErrors};
use proptest::prelude::*;

const SEEDS: &[&str] = &[
    include_str!("../config/demo.toml"),
    include_str!("../config/container.toml"),
    include_str!("../config/systemd.toml"),
    include_str!("../config/dev.toml"),
];

/// The variables the seed files use; any other is unset (so `${X}` errors get exercised too).
fn env(name: &str) -> Option<String> {
    match name {
        "DROVER_EXE" => Some("/bin/true".into()),
        "DROVER_MEMORY" => Some("1GiB".into()),
        "PWD" => Some("/tmp".into()),
        _ => None,
    }
}

/// Every problem points inside the text (1-based line and column), with a message.
fn assert_positioned(src: &str, r: &Result<Config, ConfigErrors>) {
    if let Err(e) = r {
        assert!(!e.problems.is_empty(), "an error without problems");
        let lines = src.split('\n').count();
        for p in &e.problems {
            assert!(
                p.line >= 1 && p.line <= lines && p.col >= 1,
                "{}:{}: {} is outside the text ({lines} lines)",
                p.line,
                p.col,
                p.message
            );
            assert!(!p.message.trim().is_empty());
        }
    }
}

/// TOML-ish fragments that make mutations reach the validator, not only the TOML parser.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\n[program.x]\n".to_string()),
        Just("\ncommand = []\n".to_string()),
        Just("workers = -1\n".to_string()),
        Just("workers = \"auto\"\n".to_string()),
        Just("user = 1.5\n".to_string()),
        Just("listen = \"unix:\"\n".to_string()),
        Just("timeout = \"5 parsecs\"\n".to_string()),
        Just("\"${UNSET}\"".to_string()),
        Just("${".to_string()),
        Just("= {".to_string()),
        Just("]]".to_string()),
        Just("sockets = [\"nope\"]\n".to_string()),
        Just("memory_soft = \"1TiB\"\n".to_string()),
        Just("\u{feff}é\u{0}".to_string()),
        "[a-z_.\\[\\]={}\"0-9 \n,$-]{0,12}",
    ]
}

proptest! {
    // 512 cases in the suite; PROPTEST_CASES=100000 for a longer hunt
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,300}") {
        let r = parse("fuzz.toml", &src, &env);
        assert_positioned(&src, &r);
    }

    #[test]
    fn arbitrary_bytes_decode_or_are_positioned(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        match decode("fuzz.toml", &bytes) {
            Ok(text) => assert_positioned(&text, &parse("fuzz.toml", &text, &env)),
            Err(e) => prop_assert!(e.problems.iter().all(|p| p.line >= 1 && p.col >= 1)),
        }
    }

    #[test]
    fn mutated_real_configs_never_panic(
        seed in 0..SEEDS.len(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..40, fragment()), 1..6),
    ) {
        let mut src = SEEDS[seed].to_string();
        for (at, cut, insert) in edits {
            let mut i = at.index(src.len() + 1);
            while !src.is_char_boundary(i) { i -= 1; }
            let mut j = (i + cut).min(src.len());
            while !src.is_char_boundary(j) { j -= 1; }
            src.replace_range(i..j, &insert);
        }
        let r = parse("fuzz.toml", &src, &env);
        assert_positioned(&src, &r);
        if let Ok(cfg) = r {
            let _ = drover::plan::render(&cfg, "fuzz.toml");
        }
    }
}

#[test]
fn the_seeds_themselves_are_valid() {
    for s in SEEDS {
        let r = parse("seed.toml", s, &env);
        assert!(r.is_ok(), "{:?}", r.err().map(|e| e.to_string()));
    }
}

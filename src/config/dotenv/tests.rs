//! The parser against python-dotenv 1.2.2: every expected value in `SAME` is what
//! `dotenv_values(stream=io.StringIO(text))` returned for the text, with `OUTER=o` and `EMPTY=`
//! in the environment and `NOPE` unset (an empty result there: python-dotenv skipped the line as
//! unparsable, which drover refuses with the line). `DIFFERENT` lists where drover differs on
//! purpose, each with python-dotenv's value.

use super::*;

fn outer(k: &str) -> Option<String> {
    match k {
        "OUTER" => Some("o".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// What drover makes of `text`: the variables as applied (a later one wins), or the line of
/// the error.
fn read(text: &str) -> Result<Vec<(String, String)>, usize> {
    let vars = parse(text, &outer).map_err(|e| e.line)?;
    let mut out: Vec<(String, String)> = vec![];
    for (k, v) in vars {
        out.retain(|(ok, _)| *ok != k);
        out.push((k, v));
    }
    Ok(out)
}

enum Want {
    Vars(&'static [(&'static str, &'static str)]),
    /// refused, at this line
    Refused(usize),
}
use Want::*;

const SAME: &[(&str, Want)] = &[
    ("A=1", Vars(&[("A", "1")])),
    ("export A=1", Vars(&[("A", "1")])),
    ("  A = 1  ", Vars(&[("A", "1")])),
    ("A=", Vars(&[("A", "")])),
    ("A=a b c", Vars(&[("A", "a b c")])),
    ("A=val # comment", Vars(&[("A", "val")])),
    ("A=val#x", Vars(&[("A", "val#x")])),
    ("A= #x", Vars(&[("A", "#x")])),
    ("A=#x", Vars(&[("A", "#x")])),
    ("A=\"v\" # c", Vars(&[("A", "v")])),
    ("A='v' # c", Vars(&[("A", "v")])),
    ("A=\"v\"#c", Vars(&[("A", "v")])),
    ("# only\n\nA=1\n", Vars(&[("A", "1")])),
    ("A=\"a\\nb\"", Vars(&[("A", "a\nb")])),
    ("A=\"a\\\\b\"", Vars(&[("A", "a\\b")])),
    ("A=\"a\\\"b\"", Vars(&[("A", "a\"b")])),
    ("A=\"a\\'b\"", Vars(&[("A", "a'b")])),
    (
        "A=\"\\t\\r\\v\\f\\a\\b\"",
        Vars(&[("A", "\t\r\x0b\x0c\x07\x08")]),
    ),
    ("A=\"a\\$b\\x\"", Vars(&[("A", "a\\$b\\x")])),
    ("A=a\\nb", Vars(&[("A", "a\\nb")])),
    ("A=\"line1\nline2\"", Vars(&[("A", "line1\nline2")])),
    ("A='line1\nline2'", Vars(&[("A", "line1\nline2")])),
    ("A='x $OUTER \\n'", Vars(&[("A", "x $OUTER \\n")])),
    ("A=${OUTER}", Vars(&[("A", "o")])),
    ("A=\"${OUTER}\"", Vars(&[("A", "o")])),
    ("A=1\nB=${A}2", Vars(&[("A", "1"), ("B", "12")])),
    ("A=${NOPE:-d}", Vars(&[("A", "d")])),
    ("'A'=1", Vars(&[("A", "1")])),
    ("A=1\r\nB=2\r\n", Vars(&[("A", "1"), ("B", "2")])),
    ("A=\"a\\\\\"", Vars(&[("A", "a\\")])),
    // no bare closing quote: python-dotenv's regex backtracks to the last `\"`
    ("A=\"abc\\\"", Vars(&[("A", "abc\\")])),
    ("exportA=1", Vars(&[("exportA", "1")])),
    ("export  # c\nA=1", Vars(&[("A", "1")])),
    ("A=1\nA=2", Vars(&[("A", "2")])),
    ("A=\"x\"junk", Refused(1)),
    ("=1", Refused(1)),
    ("A=\"unterminated", Refused(1)),
    ("A=\"x\" \nB=2", Vars(&[("A", "x"), ("B", "2")])),
    ("A=  spaced value  ", Vars(&[("A", "spaced value")])),
    ("A=a\tb # c", Vars(&[("A", "a\tb")])),
    ("A=a\t#c", Vars(&[("A", "a")])),
    ("A=é ü", Vars(&[("A", "é ü")])),
    ("A.B=1", Vars(&[("A.B", "1")])),
    ("A=\"a\" \"b\"", Refused(1)),
    (
        "A=1\nB=\"${A}-${OUTER}\"",
        Vars(&[("A", "1"), ("B", "1-o")]),
    ),
    ("A=\"abc\\\"def\nB=2\"", Vars(&[("A", "abc\"def\nB=2")])),
    ("A=x\x0b#c", Vars(&[("A", "x")])),
];

/// (text, what drover does, what python-dotenv gives, why)
const DIFFERENT: &[(&str, Want, &str, &str)] = &[
    (
        "A='${OUTER}'",
        Vars(&[("A", "${OUTER}")]),
        "o",
        "single quotes are literal, as in a shell, systemd and Compose",
    ),
    (
        "A='a\\\\b'",
        Refused(1),
        "a\\b",
        "a backslash in single quotes: the two readings differ",
    ),
    (
        "A='a\\'b'",
        Refused(1),
        "a'b",
        "a backslash in single quotes: the two readings differ",
    ),
    (
        "A",
        Refused(1),
        "None (left unset)",
        "a key without `=` is most likely a mistake",
    ),
    (
        "A=${NOPE}",
        Refused(1),
        "",
        "an unset variable without a default, as in drover's configuration",
    ),
    (
        "A=${EMPTY:-d}",
        Vars(&[("A", "d")]),
        "",
        "empty counts as unset before `:-`, as in a shell and drover's configuration",
    ),
    (
        "A=\"$${OUTER}\"",
        Vars(&[("A", "${OUTER}")]),
        "$o",
        "`$${` is a literal `${`, as in drover's configuration",
    ),
];

fn check(text: &str, want: &Want) -> Option<String> {
    let got = read(text);
    let ok = match (want, &got) {
        (Vars(w), Ok(g)) => {
            w.len() == g.len()
                && w.iter()
                    .zip(g)
                    .all(|((wk, wv), (gk, gv))| wk == gk && wv == gv)
        }
        (Refused(l), Err(gl)) => l == gl,
        _ => false,
    };
    (!ok).then(|| format!("{text:?}: got {got:?}"))
}

#[test]
fn reads_what_python_dotenv_reads() {
    let wrong: Vec<String> = SAME.iter().filter_map(|(t, w)| check(t, w)).collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn differs_from_python_dotenv_only_where_it_says() {
    let wrong: Vec<String> = DIFFERENT
        .iter()
        .filter_map(|(t, w, _, _)| check(t, w))
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn errors_name_the_line_and_never_quote_the_text() {
    let secret = "hunter2-9f8e";
    for (text, line) in [
        (format!("A=1\nB=\"{secret}"), 2),
        (format!("A=1\n\nB=ok\n{secret}"), 4),
        (format!("A=\"{secret}\"{secret}"), 1),
        (format!("A='{secret}\\\\'"), 1),
        (format!("A=\"{secret}${{\""), 1),
        (format!("A=\"{secret}${{X Y}}\""), 1),
        (format!("A={secret}${{NOPE}}"), 1),
        (format!("A={secret}\0"), 1),
    ] {
        match parse(&text, &outer) {
            Ok(v) => panic!("{text:?} was read as {} variables", v.len()),
            Err(e) => {
                assert_eq!(e.line, line, "{text:?}: {e}");
                assert!(!e.message.contains(secret), "{text:?}: {e}");
            }
        }
    }
    // a byte-order mark at the start is refused by name
    let e = parse("\u{feff}A=1", &outer).unwrap_err();
    assert!(e.message.contains("byte-order mark"), "{e}");
}

#[test]
fn a_variable_set_earlier_wins_over_the_callers() {
    let vars = parse("OUTER=mine\nB=${OUTER}", &outer).unwrap();
    assert_eq!(vars[1], ("B".into(), "mine".into()));
    // and what the caller knows (earlier files, drover's environment) is used after that
    let vars = parse("B=${OUTER}-${EMPTY}", &outer).unwrap();
    assert_eq!(vars[0], ("B".into(), "o-".into()));
}

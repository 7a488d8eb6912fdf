//! Rolling restarts seen from the command line: the lines `drover status` and `drover top` show
//! for a roll in progress and for one that was abandoned, and `drover ctl restart|reload --wait`,
//! which polls `/status` until the roll it asked for has ended.
//!
//! What it reads: per program, `roll` (in progress: reason, replaced, of, waiting_for),
//! `rolling` (a roll runs or waits for its new preloader) and `last_roll` (how the last one
//! ended: `seq` grows by one per roll that ends, `outcome` done | abandoned | cancelled).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::client::{self, ClientError};

/// `ctl … --wait`: every roll finished.
pub const WAIT_DONE: i32 = 0;
/// `ctl … --wait`: the request was refused, or drover went away or began to shut down.
pub const WAIT_FAILED: i32 = 1;
/// `ctl … --wait` and `drover status`: a roll was abandoned (the old workers keep serving) or
/// cancelled.
pub const ROLL_ABANDONED: i32 = 3;

const POLL: Duration = Duration::from_millis(200);

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `3m10s ago`
fn ago(at: &Value) -> String {
    let secs = unix_now().saturating_sub(at.as_u64().unwrap_or(0));
    format!("{} ago", client::fmt_uptime(secs as f64))
}

fn programs(doc: &Value) -> impl Iterator<Item = &Value> {
    doc["programs"].as_array().into_iter().flatten()
}

fn name(p: &Value) -> &str {
    p["name"].as_str().unwrap_or("?")
}

/// `1 of 4 replaced` (and what it waits for, when that is not a replacement).
fn progress(roll: &Value) -> String {
    let mut s = format!(
        "{} of {} replaced",
        roll["replaced"].as_u64().unwrap_or(0),
        roll["of"].as_u64().unwrap_or(0)
    );
    if let Some(w) = roll["waiting_for"].as_str() {
        s.push_str(&format!(", waiting for {w}"));
    }
    s
}

/// The programs whose last roll was abandoned: `drover status` exits `ROLL_ABANDONED`.
pub fn abandoned(doc: &Value) -> Vec<&str> {
    programs(doc)
        .filter(|p| p["last_roll"]["outcome"] == "abandoned")
        .map(name)
        .collect()
}

/// One line per program that is rolling or whose last roll was abandoned.
pub fn lines(doc: &Value) -> Vec<String> {
    let mut out = vec![];
    for p in programs(doc) {
        let roll = &p["roll"];
        if roll.is_object() {
            out.push(format!(
                "roll {:<20} {} in progress: {}",
                name(p),
                roll["reason"].as_str().unwrap_or("?"),
                progress(roll)
            ));
        }
        let last = &p["last_roll"];
        if last["outcome"] == "abandoned" {
            out.push(format!(
                "roll {:<20} ABANDONED {}: {}",
                name(p),
                ago(&last["ended_at"]),
                last["message"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

fn fetch(url: &str) -> Result<Value, ClientError> {
    let body = client::get(url, "/status")?;
    serde_json::from_str(&body).map_err(|e| ClientError::Json(e, url.into()))
}

/// Each program's `last_roll.seq` (0: none has ended yet).
pub fn seqs(doc: &Value) -> HashMap<String, u64> {
    programs(doc)
        .map(|p| {
            (
                name(p).to_string(),
                p["last_roll"]["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// What `--wait` waits for: one program's roll (`ctl restart NAME`), or every roll (`ctl
/// reload`: every program rolls).
pub enum Target {
    Program(String),
    All,
}

/// Poll `/status` until the rolls asked for have ended; print progress when it changes and one
/// line per program at the end. `before`: every program's `last_roll.seq` before the request.
pub fn wait(url: &str, target: &Target, before: &HashMap<String, u64>) -> i32 {
    let mut said: HashMap<String, String> = HashMap::new();
    loop {
        let doc = match fetch(url) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("drover ctl: {e}; the roll's end is not known");
                return WAIT_FAILED;
            }
        };
        if doc["state"] != "running" {
            eprintln!(
                "drover ctl: drover is {}: its rolls end with it",
                doc["state"].as_str().unwrap_or("?")
            );
            return WAIT_FAILED;
        }
        let mine: Vec<&Value> = programs(&doc)
            .filter(|p| match target {
                Target::Program(n) => name(p) == n,
                Target::All => true,
            })
            .collect();
        if let Target::Program(n) = target {
            if mine.is_empty() {
                eprintln!("drover ctl: program {n} is gone (removed by a reload)");
                return ROLL_ABANDONED;
            }
        }
        for p in &mine {
            if p["roll"].is_object() {
                let line = progress(&p["roll"]);
                if said.get(name(p)) != Some(&line) {
                    println!(
                        "{}: rolling {}: {line}",
                        name(p),
                        p["roll"]["reason"].as_str().unwrap_or("?")
                    );
                    said.insert(name(p).to_string(), line);
                }
            }
        }
        let ended = |p: &&Value| {
            let seq = p["last_roll"]["seq"].as_u64().unwrap_or(0);
            p["rolling"] == false && seq > before.get(name(p)).copied().unwrap_or(0)
        };
        let done = match target {
            Target::Program(_) => mine.iter().all(ended),
            // every roll the reload started has ended: nothing rolls any more
            Target::All => mine.iter().all(|p| p["rolling"] == false),
        };
        if done {
            return report(mine.into_iter().filter(ended));
        }
        std::thread::sleep(POLL);
    }
}

/// One line per roll that ended; the exit code.
fn report<'a>(ended: impl Iterator<Item = &'a Value>) -> i32 {
    let mut code = WAIT_DONE;
    for p in ended {
        let last = &p["last_roll"];
        let message = last["message"].as_str().unwrap_or("?");
        if last["outcome"] == "done" {
            println!("{message}");
        } else {
            eprintln!("drover ctl: {message}");
            code = ROLL_ABANDONED;
        }
    }
    code
}

/// The status document before a request, for `wait`'s `before`.
pub fn before(url: &str) -> Result<HashMap<String, u64>, ClientError> {
    fetch(url).map(|d| seqs(&d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rolls_are_shown_in_progress_and_abandoned() {
        let doc = json!({"programs": [
            {"name": "api", "rolling": true, "roll": {"reason": "reload", "replaced": 1, "of": 4, "waiting_for": null}, "last_roll": null},
            {"name": "web", "rolling": false, "roll": null, "last_roll": {"seq": 2, "outcome": "abandoned", "ended_at": unix_now() - 130, "message": "rolling restart of web abandoned: the replacement for web.1 did not become ready (pid 7 exited with exit code 3 after 0.2s); the old workers keep serving"}},
            {"name": "jobs", "rolling": false, "roll": null, "last_roll": {"seq": 1, "outcome": "done", "message": "done"}},
        ]});
        let l = lines(&doc);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            l[0],
            "roll api                  reload in progress: 1 of 4 replaced"
        );
        assert!(
            l[1].starts_with("roll web                  ABANDONED 2m1")
                && l[1].ends_with("the old workers keep serving"),
            "{}",
            l[1]
        );
        assert_eq!(abandoned(&doc), vec!["web"]);
        assert_eq!(
            seqs(&doc),
            HashMap::from([("api".into(), 0), ("web".into(), 2), ("jobs".into(), 1)])
        );
    }
}

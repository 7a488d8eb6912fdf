//! The deployment files read together: the manifests, the Compose file and drover's container
//! configuration must agree — grace periods that add up, ConfigMaps that are the files they
//! stand for, a versioned image, probes that mean something, replicas a disruption budget can
//! live with. (kubernetes-validate and hadolint check each file's form in tests/run.sh.)

use std::time::Duration;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

/// The value of the first `key:` line (YAML, as these files write it).
fn value<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no `{key}:` in the file"))
        .trim()
}

/// The block scalar under `key: |`, dedented.
fn block(text: &str, key: &str) -> String {
    let mut lines = text.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    let head = lines.next().expect("the block's key");
    let indent = head.len() - head.trim_start().len() + 2;
    let mut out = String::new();
    for l in lines {
        if !l.trim().is_empty() && l.len() - l.trim_start().len() < indent {
            break;
        }
        out.push_str(l.get(indent..).unwrap_or(""));
        out.push('\n');
    }
    out
}

fn secs(v: &str) -> u64 {
    v.trim_end_matches('s').trim_matches('"').parse().unwrap()
}

/// config/container.toml as drover reads it (defaults for its ${VARS}).
fn container_config() -> drover::config::Config {
    let text = read("config/container.toml");
    drover::config::parse("container.toml", &text, &|_| None).expect("config/container.toml parses")
}

/// How long drover may take from TERM to exit: every worker stopped (stop_timeout, capped by
/// shutdown_timeout), after the drain, plus the grace to reap what was KILLed.
fn drover_stop_budget() -> Duration {
    let c = container_config();
    let stop = c
        .programs
        .iter()
        .map(|p| p.stop_timeout)
        .max()
        .unwrap_or_default();
    let workers = c.supervisor.drain_delay
        + stop.min(c.supervisor.shutdown_timeout)
        + drover::supervisor::KILL_GRACE;
    // TERM during a pre-start step: its stop_timeout, then SIGKILL and the reaper
    let step = c
        .prestart
        .iter()
        .map(|s| s.stop_grace(&c.supervisor))
        .max()
        .unwrap_or_default();
    workers.max(step + drover::supervisor::KILL_GRACE)
}

#[test]
fn grace_periods_add_up() {
    let api = read("packaging/kubernetes/api.yaml");
    let grace = Duration::from_secs(
        value(&api, "terminationGracePeriodSeconds")
            .parse()
            .unwrap(),
    );
    let pre_stop = api
        .lines()
        .find_map(|l| l.trim().strip_prefix("command: [\"sleep\", \""))
        .map(|v| Duration::from_secs(v.trim_end_matches("\"]").parse().unwrap()))
        .expect("a preStop sleep");
    let drover = drover_stop_budget();
    println!("FIGURE Kubernetes: preStop {pre_stop:?} + drover {drover:?} <= terminationGracePeriodSeconds {grace:?}");
    assert!(
        pre_stop + drover <= grace,
        "preStop {pre_stop:?} + drover {drover:?} > {grace:?}"
    );
    // Compose has no preStop: its stop grace covers drover alone
    let compose = read("packaging/compose.yaml");
    let stop_grace = Duration::from_secs(secs(value(&compose, "stop_grace_period")));
    assert!(
        drover <= stop_grace,
        "drover {drover:?} > stop_grace_period {stop_grace:?}"
    );
    // the drain belongs to preStop, where endpoints are really removed
    assert_eq!(container_config().supervisor.drain_delay, Duration::ZERO);
}

#[test]
fn config_maps_are_the_files_they_stand_for() {
    let cm = read("packaging/kubernetes/config.yaml");
    assert_eq!(
        block(&cm, "drover.toml"),
        read("config/container.toml"),
        "kf-api-drover"
    );
    let lt = read("packaging/kubernetes/loadtest/locust.yaml");
    assert_eq!(
        block(&lt, "locustfile.py"),
        read("packaging/loadtest/locustfile.py"),
        "kf-api-locustfile"
    );
    // the ConfigMap is mounted where drover reads its configuration
    let api = read("packaging/kubernetes/api.yaml");
    assert!(api.contains("name: drover-config\n              mountPath: /etc/drover\n"));
    assert!(api.contains("name: kf-api-drover"));
}

#[test]
fn images_are_versioned_with_the_crate() {
    let want = format!("kf-api:{}", env!("CARGO_PKG_VERSION"));
    for f in [
        "packaging/kubernetes/api.yaml",
        "packaging/kubernetes/migrate.yaml",
        "packaging/compose.yaml",
    ] {
        let text = read(f);
        let images: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .collect();
        assert!(!images.is_empty(), "{f}");
        for i in images {
            assert!(!i.ends_with(":latest"), "{f}: {i}");
            if i.starts_with("kf-api") {
                assert_eq!(i, want, "{f}");
            }
        }
    }
}

#[test]
fn probes_mean_something() {
    let api = read("packaging/kubernetes/api.yaml");
    let startup = &api[api.find("startupProbe:").unwrap()..];
    assert_eq!(
        value(startup, "path"),
        "/readyz",
        "/healthz answers before the steps run"
    );
    let window = secs(value(startup, "periodSeconds")) * secs(value(startup, "failureThreshold"));
    // the steps' worst case (every attempt timing out, with its delays) and a worker's readiness
    let c = container_config();
    let steps: Duration = c
        .prestart
        .iter()
        .map(|s| s.timeout.unwrap_or_default() * (s.retries + 1) + s.retry_delay * s.retries)
        .sum();
    let ready = c
        .programs
        .iter()
        .map(|p| p.readiness.timeout)
        .max()
        .unwrap_or_default();
    assert!(
        Duration::from_secs(window) >= steps + ready,
        "startupProbe allows {window}s, steps and readiness need {:?}",
        steps + ready
    );
    let liveness = &api[api.find("livenessProbe:").unwrap()..];
    assert_eq!(value(liveness, "path"), "/healthz");
}

#[test]
fn replicas_leave_room_for_the_disruption_budget() {
    let hpa = read("packaging/kubernetes/autoscale.yaml");
    let pdb = read("packaging/kubernetes/disruption.yaml");
    let api = read("packaging/kubernetes/api.yaml");
    let min: u32 = value(&hpa, "minReplicas").parse().unwrap();
    let available: u32 = value(&pdb, "minAvailable").parse().unwrap();
    let replicas: u32 = value(&api, "replicas").parse().unwrap();
    assert!(
        available < min,
        "a drain must be able to evict one pod: minAvailable {available} < minReplicas {min}"
    );
    assert!(
        replicas >= min,
        "the Deployment starts at the HPA's minimum"
    );
    assert_eq!(value(&hpa, "maxReplicas"), "10");
    assert_eq!(value(&hpa, "averageUtilization"), "50");
}

#[test]
fn only_monitoring_reaches_the_status_port() {
    let np = read("packaging/kubernetes/network.yaml");
    let ingress = &np[np.find("ingress:").expect("ingress rules")..];
    // each rule starts at `    - ` under ingress: the app's has no `from`, the status port's
    // admits only the monitoring namespace
    let rules: Vec<&str> = ingress.split("\n    - ").skip(1).collect();
    let app = rules
        .iter()
        .find(|r| r.contains("port: 8000"))
        .expect("a rule for 8000");
    assert!(!app.contains("from:"), "the app from anywhere: {app}");
    let status = rules
        .iter()
        .find(|r| r.contains("port: 9900"))
        .expect("a rule for 9900");
    assert!(
        status.starts_with("from:") && status.contains("kubernetes.io/metadata.name: monitoring"),
        "{status}"
    );
    assert!(
        !app.contains("9900"),
        "9900 is not open with the app: {app}"
    );
    let api = read("packaging/kubernetes/api.yaml");
    assert!(api.contains("prometheus.io/scrape: \"true\""));
}

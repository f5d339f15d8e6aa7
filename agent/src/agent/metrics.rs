//! `GET /metrics` in the Prometheus text format 0.0.4: the fleet's numbers from the
//! supervisor's published [`FleetSnapshot`] and the API's request counts and refused peers,
//! which the transport keeps in [`ApiCounts`]. Rendering is pure, so its format is
//! unit-tested here.
//!
//! Counters count since the agent started, except `herd_service_replacements_total`, which
//! is the service's own count and survives agent restarts like the service does.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::snapshot::{
    BOOT_BUCKETS_MS, END_REASONS, FleetSnapshot, SNAPSHOT_STAGES, START_KINDS, reason_name,
    start_name,
};

/// The Content-Type of the answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// API requests answered, by route (`GET /v1/services/{name}`) and status, and connections
/// refused by the peer policy (they never became requests).
#[derive(Debug, Default)]
pub struct ApiCounts {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    peers_denied: AtomicU64,
}

impl ApiCounts {
    pub fn add(&self, route: &str, status: u16) {
        let mut counts = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *counts.entry((route.to_owned(), status)).or_default() += 1;
    }

    /// The counts now.
    pub fn get(&self) -> BTreeMap<(String, u16), u64> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Counts one connection refused by the peer policy.
    pub fn deny_peer(&self) {
        self.peers_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Connections refused by the peer policy so far.
    pub fn peers_denied(&self) -> u64 {
        self.peers_denied.load(Ordering::Relaxed)
    }
}

/// One metric family being written: its HELP and TYPE lines, then samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl<'a> Family<'a> {
    fn new(out: &'a mut String, name: &'static str, kind: &str, help: &str) -> Self {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Self { out, name }
    }

    /// A sample of this family (`suffix` for a histogram's `_bucket`, `_sum`, `_count`).
    fn sample(&mut self, suffix: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let _ = write!(self.out, "{}{suffix}", self.name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

/// The whole `/metrics` page.
pub fn render(
    fleet: &FleetSnapshot,
    api: &BTreeMap<(String, u16), u64>,
    peers_denied: u64,
) -> String {
    let mut out = String::new();
    render_services(&mut out, fleet);
    render_instances(&mut out, fleet);
    render_snapshots(&mut out, fleet);
    let mut f = Family::new(
        &mut out,
        "herd_api_requests_total",
        "counter",
        "API requests answered, by route and HTTP status.",
    );
    for ((route, status), n) in api {
        f.sample("", &[("route", route), ("status", &status.to_string())], n);
    }
    Family::new(
        &mut out,
        "herd_api_peers_denied_total",
        "counter",
        "API connections closed unanswered because the peer is not allowed.",
    )
    .sample("", &[], peers_denied);
    out
}

type ServiceValue = fn(&super::snapshot::ServiceSnapshot) -> u64;

fn render_services(out: &mut String, fleet: &FleetSnapshot) {
    let families: [(&str, &str, &str, ServiceValue); 5] = [
        (
            "herd_service_replicas_desired",
            "gauge",
            "Instances the service asks for.",
            |s| s.replicas_desired.into(),
        ),
        (
            "herd_service_instances_running",
            "gauge",
            "Instances running (starting, healthy or unhealthy).",
            |s| s.running.into(),
        ),
        (
            "herd_service_instances_healthy",
            "gauge",
            "Instances that passed their last health check (or have none).",
            |s| s.healthy.into(),
        ),
        (
            "herd_service_replacements_total",
            "counter",
            "Failed instances replaced since the service was created.",
            |s| s.replacements,
        ),
        (
            "herd_service_rollbacks_total",
            "counter",
            "Rollouts rolled back since the agent started.",
            |s| s.rollbacks,
        ),
    ];
    for (name, kind, help, value) in families {
        let mut f = Family::new(out, name, kind, help);
        for s in &fleet.services {
            f.sample("", &[("service", &s.name)], value(s));
        }
    }
}

fn render_instances(out: &mut String, fleet: &FleetSnapshot) {
    let c = &fleet.counters;
    Family::new(
        out,
        "herd_instances_started_total",
        "counter",
        "herd-vmm processes started since the agent started.",
    )
    .sample("", &[], c.instances_started);
    let mut f = Family::new(
        out,
        "herd_instance_starts_total",
        "counter",
        "Instances started since the agent started, by kind: boot, or snapshot (restored).",
    );
    for kind in START_KINDS.map(start_name) {
        let n = c.starts.get(kind).copied().unwrap_or(0);
        f.sample("", &[("kind", kind)], n);
    }
    let mut f = Family::new(
        out,
        "herd_instance_exits_total",
        "counter",
        "Instances that ended since the agent started, by reason.",
    );
    for reason in END_REASONS.map(reason_name) {
        let n = c.exits.get(reason).copied().unwrap_or(0);
        f.sample("", &[("reason", reason)], n);
    }
    let mut f = Family::new(
        out,
        "herd_instance_boot_seconds",
        "histogram",
        "herd-vmm's start to the guest's boot-complete signal, observed when the agent \
         learns it (first passing health check, or the exit).",
    );
    let boot = &c.boot_times;
    let mut cumulative = 0;
    for (bound, n) in BOOT_BUCKETS_MS.iter().zip(&boot.counts) {
        cumulative += n;
        f.sample("_bucket", &[("le", &seconds(*bound))], cumulative);
    }
    f.sample("_bucket", &[("le", "+Inf")], boot.count);
    f.sample("_sum", &[], seconds(boot.sum_ms));
    f.sample("_count", &[], boot.count);
}

fn render_snapshots(out: &mut String, fleet: &FleetSnapshot) {
    let c = &fleet.counters;
    Family::new(
        out,
        "herd_snapshots_taken_total",
        "counter",
        "VM snapshots taken and installed since the agent started.",
    )
    .sample("", &[], c.snapshots_taken);
    let mut f = Family::new(
        out,
        "herd_snapshot_failures_total",
        "counter",
        "VM snapshots that failed since the agent started, by stage: take (taking or \
         installing it), restore (an instance restored from it failed before its first \
         passed check; the snapshot was removed).",
    );
    for stage in SNAPSHOT_STAGES {
        let n = c.snapshot_failures.get(stage).copied().unwrap_or(0);
        f.sample("", &[("stage", stage)], n);
    }
    Family::new(out, "herd_snapshots", "gauge", "VM snapshots installed.").sample(
        "",
        &[],
        fleet.vm_snapshots,
    );
    Family::new(
        out,
        "herd_snapshot_memory_bytes",
        "gauge",
        "Guest memory bytes the installed VM snapshots hold (holes not counted).",
    )
    .sample("", &[], fleet.vm_snapshot_bytes);
}

/// Milliseconds as seconds, exactly (`0.05`, `2.5`, `10`).
fn seconds(ms: u64) -> String {
    let (s, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        return s.to_string();
    }
    let frac = format!("{frac:03}");
    format!("{s}.{}", frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use super::*;
    use crate::agent::snapshot::{Counters, ServiceSnapshot};
    use crate::fleet::{EndReason, StartKind};

    fn fleet() -> FleetSnapshot {
        let mut counters = Counters {
            instances_started: 7,
            ..Default::default()
        };
        counters.count_exit(EndReason::Exited);
        counters.count_exit(EndReason::Exited);
        counters.boot_times.observe(40);
        counters.boot_times.observe(3000);
        counters.count_start(StartKind::Boot);
        counters.count_start(StartKind::Snapshot);
        counters.count_start(StartKind::Snapshot);
        counters.snapshots_taken = 1;
        counters.snapshot_failures.insert("restore", 2);
        let web = ServiceSnapshot {
            name: "web".into(),
            replicas_desired: 3,
            running: 3,
            healthy: 2,
            replacements: 1,
            rollbacks: 0,
            digests: BTreeSet::new(),
        };
        let odd = ServiceSnapshot {
            name: "a\"b\\c\nd".into(),
            ..web.clone()
        };
        FleetSnapshot {
            services: vec![web, odd],
            instances: Default::default(),
            counters,
            vm_snapshots: 1,
            vm_snapshot_bytes: 1 << 20,
        }
    }

    /// One parsed sample line.
    #[derive(Debug)]
    struct Sample {
        name: String,
        labels: Vec<(String, String)>,
        value: f64,
    }

    fn is_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parses `{k="v",...}` (with escapes); returns the labels and the rest of the line.
    fn parse_labels(s: &str) -> (Vec<(String, String)>, &str) {
        let mut labels = Vec::new();
        let mut rest = s.strip_prefix('{').unwrap();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                return (labels, after);
            }
            let (key, after) = rest.split_once("=\"").expect("label=\"");
            assert!(is_name(key), "label name {key:?}");
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next().expect("closing quote") {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().unwrap().1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => panic!("bad escape \\{c}"),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key.to_owned(), value));
            rest = &after[end + 1..];
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }

    /// Parses the text format strictly: every sample's family has HELP and TYPE first.
    fn parse(text: &str) -> Vec<Sample> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = BTreeSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(help) = line.strip_prefix("# HELP ") {
                let (name, doc) = help.split_once(' ').unwrap();
                assert!(is_name(name) && !doc.is_empty(), "{line}");
                helped.insert(name.to_owned());
                continue;
            }
            if let Some(ty) = line.strip_prefix("# TYPE ") {
                let (name, kind) = ty.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                    "{line}"
                );
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let split = line.find(['{', ' ']).unwrap();
            let name = &line[..split];
            assert!(is_name(name), "{line}");
            let (labels, rest) = if line[split..].starts_with('{') {
                parse_labels(&line[split..])
            } else {
                (Vec::new(), &line[split..])
            };
            let value = rest.strip_prefix(' ').expect("one space before the value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| types.contains_key(*f)))
                .unwrap_or(name);
            assert!(types.contains_key(family), "no TYPE for {line}");
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .collect();
        assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
        found[0].value
    }

    #[test]
    fn the_page_parses_as_prometheus_text_with_every_family_described() {
        let api = BTreeMap::from([
            (("GET /v1/services".to_owned(), 200), 5),
            (("unmatched".to_owned(), 404), 1),
        ]);
        let text = render(&fleet(), &api, 4);
        let samples = parse(&text);
        let web = [("service", "web")];
        assert_eq!(value(&samples, "herd_service_replicas_desired", &web), 3.0);
        assert_eq!(value(&samples, "herd_service_instances_healthy", &web), 2.0);
        assert_eq!(
            value(&samples, "herd_service_replacements_total", &web),
            1.0
        );
        let odd = [("service", "a\"b\\c\nd")];
        assert_eq!(value(&samples, "herd_service_instances_running", &odd), 3.0);
        assert_eq!(value(&samples, "herd_instances_started_total", &[]), 7.0);
        let exited = [("reason", "exited")];
        assert_eq!(value(&samples, "herd_instance_exits_total", &exited), 2.0);
        let vanished = [("reason", "vanished")];
        assert_eq!(value(&samples, "herd_instance_exits_total", &vanished), 0.0);
        let route = [("route", "GET /v1/services"), ("status", "200")];
        assert_eq!(value(&samples, "herd_api_requests_total", &route), 5.0);
        assert_eq!(value(&samples, "herd_api_peers_denied_total", &[]), 4.0);
    }

    #[test]
    fn starts_by_kind_and_snapshots_are_counted() {
        let samples = parse(&render(&fleet(), &BTreeMap::new(), 0));
        let kind = |k| value(&samples, "herd_instance_starts_total", &[("kind", k)]);
        assert_eq!((kind("boot"), kind("snapshot")), (1.0, 2.0));
        assert_eq!(value(&samples, "herd_snapshots_taken_total", &[]), 1.0);
        let stage = |s| value(&samples, "herd_snapshot_failures_total", &[("stage", s)]);
        assert_eq!((stage("take"), stage("restore")), (0.0, 2.0));
        assert_eq!(value(&samples, "herd_snapshots", &[]), 1.0);
        assert_eq!(
            value(&samples, "herd_snapshot_memory_bytes", &[]),
            f64::from(1 << 20)
        );
    }

    #[test]
    fn the_boot_histogram_is_cumulative_and_in_seconds() {
        let samples = parse(&render(&fleet(), &BTreeMap::new(), 0));
        let bucket = |le| value(&samples, "herd_instance_boot_seconds_bucket", &[("le", le)]);
        assert_eq!(bucket("0.025"), 0.0);
        assert_eq!(bucket("0.05"), 1.0);
        assert_eq!(bucket("2.5"), 1.0);
        assert_eq!(bucket("5"), 2.0);
        assert_eq!(bucket("+Inf"), 2.0);
        assert_eq!(value(&samples, "herd_instance_boot_seconds_sum", &[]), 3.04);
        assert_eq!(
            value(&samples, "herd_instance_boot_seconds_count", &[]),
            2.0
        );
        let les: Vec<f64> = samples
            .iter()
            .filter(|s| s.name.ends_with("_bucket"))
            .map(|s| s.labels[0].1.parse::<f64>().unwrap())
            .collect();
        assert!(les.windows(2).all(|w| w[0] < w[1]), "{les:?}");
    }

    #[test]
    fn milliseconds_print_as_exact_seconds() {
        assert_eq!(seconds(0), "0");
        assert_eq!(seconds(5), "0.005");
        assert_eq!(seconds(50), "0.05");
        assert_eq!(seconds(2500), "2.5");
        assert_eq!(seconds(10_000), "10");
    }
}

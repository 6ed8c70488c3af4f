"""deploy/ checked for real: Debian's Prometheus scrapes a running quantd and answers a
histogram_quantile query through its HTTP API; promtool checks quantd's exposition, the alert rules
and the scrape config; the Kubernetes manifests validate against the Kubernetes schemas
(kubernetes-validate); hadolint lints the Dockerfile; the Grafana dashboard and the alert rules
name only metrics quantd exports."""
from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import yaml

from conftest import REPO
from test_grpc_interop import recorded_ticks

DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.33.0"


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} not found: `make setup` installs it"
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def test_prometheus_scrapes_quantd_and_computes_p99(pb, quantd, tmp_path):
    pb2, pb2_grpc = pb
    server = quantd()
    assert server.addr, "".join(server.log)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "prometheus/alerts.yml")],
        "scrape_configs": [{"job_name": "quantd", "static_configs": [{"targets": [server.metrics_addr]}]}],
    }))
    prom = subprocess.Popen([tool("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stop = threading.Event()

    def stream():  # ticks keep flowing while Prometheus scrapes
        ticks = list(recorded_ticks(pb2, 3000))
        with grpc.insecure_channel(server.addr) as ch:
            stub = pb2_grpc.SignalServiceStub(ch)
            while not stop.is_set():
                for _ in stub.StreamTicks(iter(ticks), timeout=60):
                    pass
                time.sleep(0.2)

    feeder = threading.Thread(target=stream, daemon=True)
    feeder.start()
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.time() + 60
        up = value = None
        while time.time() < deadline and value is None:
            time.sleep(1)
            try:
                targets = get_json(f"{api}/targets")["data"]["activeTargets"]
            except OSError:
                continue  # Prometheus still starting
            up = [t for t in targets if t["labels"]["job"] == "quantd" and t["health"] == "up"]
            if not up:
                continue
            q = "histogram_quantile(0.99, rate(quantd_tick_to_signal_seconds_bucket[10s]))"
            result = get_json(f"{api}/query?" + urllib.parse.urlencode({"query": q}))["data"]["result"]
            if result and math.isfinite(float(result[0]["value"][1])):
                value = float(result[0]["value"][1])
        assert up, f"Prometheus never scraped quantd: {targets if 'targets' in dir() else 'no API'}"
        assert value is not None, "histogram_quantile over quantd_tick_to_signal_seconds returned no number"
        assert 0 < value < 1, value  # seconds
        rules = get_json(f"{api}/rules")["data"]["groups"]
        assert any(g["name"] == "quantd" and len(g["rules"]) >= 8 for g in rules), rules
        assert all(r["health"] == "ok" for g in rules for r in g["rules"]), rules
    finally:
        stop.set()
        prom.terminate()
        prom.wait(timeout=20)
    feeder.join(timeout=70)


def test_promtool_checks_exposition_rules_and_config(quantd, tmp_path):
    promtool = tool("promtool")
    server = quantd()
    assert server.metrics_addr, "".join(server.log)
    time.sleep(1.2)  # one metrics publication
    text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read()
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
    check = subprocess.run([promtool, "check", "rules", str(DEPLOY / "prometheus/alerts.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The rules' own unit tests (alerts_test.yml: the quantization-collapse alert fires, and only where it should).
    check = subprocess.run([promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus",
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    # The compose scrape config names the rules at their in-container path; check it with the repo's.
    cfg = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    cfg["rule_files"] = [str(DEPLOY / "prometheus/alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    check = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_kubernetes_manifests_validate_against_the_schemas():
    import kubernetes_validate

    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                docs.append((path.name, doc))
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    kinds = {d["kind"] for _, d in docs}
    assert {"StatefulSet", "Service", "ConfigMap", "PodDisruptionBudget", "Secret"} <= kinds, kinds
    sts = next(d for _, d in docs if d["kind"] == "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    main = pod["containers"][0]
    # Guaranteed QoS with whole CPUs, for the static CPU manager: requests == limits, integers.
    for c in pod["containers"] + pod.get("initContainers", []):
        assert c["resources"]["requests"] == c["resources"]["limits"], c["name"]
        assert re.fullmatch(r"[1-9][0-9]*", str(c["resources"]["limits"]["cpu"])), c["resources"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert main[probe]["grpc"]["port"] == 50051, probe
    env = {e["name"]: e for e in main["env"]}
    assert env["QUANTD_SHARD_COUNT"]["value"] == str(sts["spec"]["replicas"]), "shard count must equal replicas"
    assert "pod-index" in env["QUANTD_SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    # The ConfigMap's TOML is a valid quantd config section set.
    cm = next(d for _, d in docs if d["kind"] == "ConfigMap")
    import tomllib
    cfg = tomllib.loads(cm["data"]["quantd.toml"])
    assert cfg["engine"]["pin_last_core"] is True
    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert all((DEPLOY / "k8s" / r).is_file() for r in kustomization["resources"])


def test_k8s_config_map_is_accepted_by_quantd(tmp_path):
    """The ConfigMap's quantd.toml parses and validates with the real binary (models dir swapped)."""
    cm = next(d for d in yaml.safe_load_all((DEPLOY / "k8s/configmap.yaml").read_text()))
    text = cm["data"]["quantd.toml"].replace('"/var/lib/quantd/models"', json.dumps(str(REPO / "models")))
    (tmp_path / "quantd.toml").write_text(text)
    out = subprocess.run([str(REPO / "target/release/quantd"), "serve", "--config", str(tmp_path / "quantd.toml"),
                          "--listen", "0.0.0.0:0", "--admin-listen", "0.0.0.0:0", "--metrics-listen", "127.0.0.1:0"],
                         capture_output=True, text=True, timeout=30)
    # Without an admin token on a network listener the server must refuse to start, naming why.
    assert out.returncode != 0 and "open to the network" in out.stderr, out.stderr


def test_dockerfile_passes_hadolint():
    out = subprocess.run([tool("hadolint"), "--failure-threshold", "warning", str(DEPLOY / "Dockerfile")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_file_wires_the_stack():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert set(compose["services"]) == {"quantd", "prometheus", "grafana"}
    for svc in compose["services"].values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), vol
    assert compose["services"]["quantd"]["build"]["dockerfile"] == "deploy/Dockerfile"


def exported_metrics() -> set[str]:
    src = (REPO / "src/telemetry/exporter.rs").read_text()
    return set(re.findall(r'"(quantd_[a-z_]+)"', src))


def used_metrics(text: str) -> set[str]:
    names = set(re.findall(r"\b(quantd_[a-z_]+)", text))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def test_dashboard_and_alerts_use_only_exported_metrics():
    exported = exported_metrics()
    dashboard = json.loads((DEPLOY / "grafana/dashboards/quantd.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("latency", "heatmap", "stage", "rejects", "batch", "model", "var"):
        assert needed in titles, needed
    alerts = (DEPLOY / "prometheus/alerts.yml").read_text()
    unknown = (used_metrics(" ".join(exprs)) | used_metrics(alerts)) - exported
    assert not unknown, f"not exported by quantd: {unknown}"
    names = {r["alert"] for g in yaml.safe_load(alerts)["groups"] for r in g["rules"]}
    for needed in ("P99", "Reject", "Queue", "ModelLoad", "Stale"):
        assert any(needed in n for n in names), needed

"""Prometheus scrape configuration, alert rules and the Grafana dashboard:
promtool's checks and rule unit tests, the scrape config's relabeling run
against pods the chart renders, every query's PromQL, and every metric name
against what the daemons register."""

import importlib.util
import json
import re
import subprocess

import pytest
import yaml

from conftest import REPO, YAMLLINT_CONFIG, manifests, render, tool
from metric_names import dashboard_expressions, metric_names_in_deploy, names_in

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "ringattn-dashboard.json"
JOBS = {"ringattn-coordinator": "coordinator", "ringattn-worker": "worker"}


def promtool(*args, cwd=None):
    return subprocess.run([tool("promtool"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_yaml_files_pass_yamllint():
    r = subprocess.run([tool("yamllint"), "-s", "-d", YAMLLINT_CONFIG, str(PROM)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_pass_promtool_check():
    r = promtool("check", "rules", str(PROM / "alerts.yml"))
    assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_fire_as_their_unit_tests_say():
    r = promtool("test", "rules", "alerts_test.yml", cwd=PROM)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_unit_test_that_fires_it():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    fired = {c["alertname"] for t in tests["tests"] for c in t.get("alert_rule_test", [])
             if c.get("exp_alerts")}
    assert alerts == fired, f"alerts never tested firing: {sorted(alerts - fired)}"
    for g in rules["groups"]:
        for r in g["rules"]:
            assert r["labels"]["severity"] in ("critical", "warning", "info"), r["alert"]
            assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_scrape_config_passes_promtool_check(tmp_path):
    """Debian's promtool is built without Kubernetes discovery: it checks a
    copy whose kubernetes_sd_configs become file_sd_configs (everything else
    untouched), and the Kubernetes blocks are checked here."""
    text = (PROM / "prometheus.yml").read_text()
    config = yaml.safe_load(text)
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert set(jobs) == set(JOBS)
    for job in jobs.values():
        (sd,) = job["kubernetes_sd_configs"]
        assert sd["role"] == "pod"
        assert set(sd) <= {"role", "namespaces", "selectors", "api_server", "kubeconfig_file",
                           "attach_metadata"}
        job["file_sd_configs"] = [{"files": [str(tmp_path / "targets.json")]}]
        del job["kubernetes_sd_configs"]
    (tmp_path / "targets.json").write_text("[]")
    (tmp_path / "alerts.yml").write_text((PROM / "alerts.yml").read_text())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    r = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 rule files found" in r.stdout + r.stderr

    r = promtool("check", "config", str(PROM / "prometheus.yml"))
    if r.returncode != 0:  # Only the missing discovery may fail it.
        assert "kubernetes_sd_configs not found" in r.stdout + r.stderr, r.stdout + r.stderr


# --- The scrape config's relabeling against the chart's pods ---------------

def _sanitize(name):
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(pod, namespace, ip, ordinal=None, phase="Running"):
    """What Kubernetes pod discovery yields for a rendered pod template: one
    target per container port. The StatefulSet controller's pod-index label
    is added for workers."""
    meta = pod["metadata"]
    labels = dict(meta.get("labels", {}))
    name = f"pod-{ordinal if ordinal is not None else 'x'}"
    if ordinal is not None:
        labels["apps.kubernetes.io/pod-index"] = str(ordinal)
    base = {"__meta_kubernetes_namespace": namespace, "__meta_kubernetes_pod_name": name,
            "__meta_kubernetes_pod_phase": phase, "__meta_kubernetes_pod_node_name": "node-1",
            "__meta_kubernetes_pod_ip": ip}
    for k, v in labels.items():
        base["__meta_kubernetes_pod_label_" + _sanitize(k)] = v
    for k, v in meta.get("annotations", {}).items():
        base["__meta_kubernetes_pod_annotation_" + _sanitize(k)] = v
    targets = []
    for c in pod["spec"]["containers"]:
        for p in c["ports"]:
            t = dict(base)
            t["__meta_kubernetes_pod_container_port_name"] = p["name"]
            t["__address__"] = f"{ip}:{p['containerPort']}"
            targets.append(t)
    return targets


def relabel(target, rules):
    """Prometheus' relabeling (keep, drop, replace) of one target; None if dropped."""
    labels = dict(target)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(labels.get(s, "")
                                                for s in rule.get("source_labels", []))
        m = re.fullmatch(rule.get("regex", "(.*)"), value)
        if action == "keep" and not m:
            return None
        if action == "drop" and m:
            return None
        if action == "replace" and m:
            out = m.expand(rule.get("replacement", "$1").replace("$1", r"\1"))
            if out:
                labels[rule["target_label"]] = out
            else:
                labels.pop(rule["target_label"], None)
        assert action in ("keep", "drop", "replace"), action
    return {k: v for k, v in labels.items() if not k.startswith("__") or k == "__address__"}


def scrape(targets):
    """{job: [labels of each target it scrapes]} under deploy/prometheus/prometheus.yml."""
    config = yaml.safe_load((PROM / "prometheus.yml").read_text())
    out = {}
    for job in config["scrape_configs"]:
        kept = [relabel(t, job["relabel_configs"]) for t in targets]
        out[job["job_name"]] = [k for k in kept if k is not None]
    return out


def chart_pods(values=None, release="demo", namespace="ml"):
    objs = manifests(render(values, name=release, namespace=namespace))
    pods = {}
    for o in objs:
        if o["kind"] in ("Deployment", "StatefulSet"):
            pods[o["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]] = (
                o["spec"]["template"])
    return pods


def test_scrape_config_finds_the_metrics_port_of_each_chart_pod():
    pods = chart_pods()
    targets = pod_targets(pods["coordinator"], "ml", "10.0.0.1")
    for i in range(4):
        targets += pod_targets(pods["worker"], "ml", f"10.0.1.{i}", ordinal=i)
    jobs = scrape(targets)
    (coord,) = jobs["ringattn-coordinator"]
    assert coord == {"__address__": "10.0.0.1:9464", "namespace": "ml", "pod": "pod-x",
                     "release": "demo", "node": "node-1"}
    workers = sorted(jobs["ringattn-worker"], key=lambda t: t["ordinal"])
    assert [w["__address__"] for w in workers] == [f"10.0.1.{i}:9465" for i in range(4)]
    assert [w["ordinal"] for w in workers] == ["0", "1", "2", "3"]
    assert all(w["release"] == "demo" and w["namespace"] == "ml" for w in workers)


def test_scrape_config_ignores_other_pods_ports_and_opt_outs():
    pods = chart_pods()
    # The gRPC ports: present in discovery, never scraped.
    assert sum(len(v) for v in scrape(pod_targets(pods["worker"], "ml", "10.0.1.9",
                                                  ordinal=0)).values()) == 1
    # Another application's pod with a port named metrics.
    other = json.loads(json.dumps(pods["worker"]))
    other["metadata"]["labels"]["app.kubernetes.io/name"] = "something-else"
    assert scrape(pod_targets(other, "ml", "10.0.2.1")) == {j: [] for j in JOBS}
    # A pod that opts out, and a finished one.
    quiet = chart_pods({"worker": {"podAnnotations": {"prometheus.io/scrape": "false"}}})
    assert scrape(pod_targets(quiet["worker"], "ml", "10.0.2.2", ordinal=0))[
        "ringattn-worker"] == []
    assert scrape(pod_targets(pods["coordinator"], "ml", "10.0.2.3", phase="Failed")) == {
        j: [] for j in JOBS}


def test_scrape_config_follows_the_chart_ports():
    pods = chart_pods({"coordinator": {"metricsPort": 19464}, "worker": {"metricsPort": 19465}},
                      release="prod", namespace="serving")
    jobs = scrape(pod_targets(pods["coordinator"], "serving", "10.0.0.5")
                  + pod_targets(pods["worker"], "serving", "10.0.0.6", ordinal=0))
    assert [t["__address__"] for t in jobs["ringattn-coordinator"]] == ["10.0.0.5:19464"]
    assert [t["__address__"] for t in jobs["ringattn-worker"]] == ["10.0.0.6:19465"]
    assert jobs["ringattn-worker"][0]["release"] == "prod"


# --- The dashboard --------------------------------------------------------

def load_dashboard():
    return json.loads(DASHBOARD.read_text())


def test_dashboard_is_what_its_generator_writes():
    path = REPO / "deploy" / "grafana" / "make_dashboard.py"
    spec = importlib.util.spec_from_file_location("make_dashboard", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.render() == DASHBOARD.read_text(), (
        "ringattn-dashboard.json is stale: run python3 deploy/grafana/make_dashboard.py")


def test_dashboard_structure():
    d = load_dashboard()
    assert d["schemaVersion"] >= 36 and d["uid"] and d["title"]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert 'namespace=~"$namespace"' in t["expr"], (p["title"], t["expr"])


def test_dashboard_has_the_panels_operators_need():
    titles = " | ".join(p["title"].lower() for p in load_dashboard()["panels"])
    for want in ["request rate by method and code", "error ratio", "call latency",
                 "compute vs comm wait", "bytes/s by channel", "achieved flop/s",
                 "sessions open", "memory held vs budget", "ring generation and rebuilds",
                 "workers registered / up", "control-plane requests",
                 "compute per allowed pair by worker", "cpu by daemon", "memory by daemon",
                 "open file descriptors"]:
        assert want in titles, want


def _as_promql(expr):
    """A dashboard query with Grafana's variables filled in, as Prometheus sees it."""
    return (expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
            .replace("$release", ".*"))


def test_every_dashboard_query_is_valid_promql(tmp_path):
    exprs = []
    for e in dashboard_expressions(load_dashboard()):
        m = re.fullmatch(r"label_values\((.*), *\w+\)", e)
        exprs.append(m.group(1) if m else e)
    assert len(exprs) > 30
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]}]}
    f = tmp_path / "dashboard_queries.yml"
    f.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr


# --- Metric names -----------------------------------------------------------

def registered_metric_names():
    """Names the daemons register with prometheus-cpp, and the process metrics
    they collect (string literals in server/)."""
    names = set()
    for src in (REPO / "server").rglob("*.cc"):
        names |= set(re.findall(r'"((?:ringattn|process)_[a-z0-9_]+)"', src.read_text()))
    return names


def test_metric_name_extraction_reads_histograms_and_ignores_label_values():
    exprs = ['histogram_quantile(0.9, sum by (le) (rate(ringattn_x_seconds_bucket[5m])))',
             'rate(ringattn_x_seconds_sum{job="ringattn-worker"}[5m]) / '
             'rate(ringattn_x_seconds_count[5m])',
             'up{job="ringattn-coordinator"} == 0 and on() ringattn_ring_size > 1']
    assert names_in(exprs) == {"ringattn_x_seconds", "ringattn_ring_size"}


def test_dashboard_and_alerts_query_only_metrics_the_daemons_export():
    used = metric_names_in_deploy(REPO)
    exported = registered_metric_names()
    assert len(exported) >= 15, "did not find the daemons' metric definitions"
    assert used <= exported, f"not exported by any daemon: {sorted(used - exported)}"
    # And the dashboard shows every metric there is.
    shown = names_in(dashboard_expressions(load_dashboard()))
    assert exported <= shown, f"not on the dashboard: {sorted(exported - shown)}"


@pytest.mark.parametrize("job", sorted(JOBS))
def test_alerts_select_the_scrape_jobs(job):
    text = (PROM / "alerts.yml").read_text()
    assert f'job="{job}"' in text
    jobs_used = set(re.findall(r'job="([^"]+)"', text))
    assert jobs_used <= set(JOBS)

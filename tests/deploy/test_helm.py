"""The Helm chart, rendered by Helm's own engine (Helm 4's Go SDK) and
checked against the Kubernetes API schemas, yamllint, and what the
daemons expect: flags, ports, probes, ranks, accelerators."""

import base64
import json
import re
import subprocess

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, YAMLLINT_CONFIG, find, manifests, render, tool

# The oldest Kubernetes the chart supports (pod-index label) and the newest
# schemas at hand.
KUBE_VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]

TLS_ON = {"tls": {"enabled": True, "secretName": "ringattn-tls"},
          "auth": {"enabled": True, "secretName": "ringattn-tokens"}}
MONITOR_ON = {"metrics": {"serviceMonitor": {"enabled": True,
                                             "labels": {"release": "kube-prometheus"}},
                          "prometheusRule": {"enabled": True,
                                             "labels": {"release": "kube-prometheus"}},
                          "grafanaDashboard": {"enabled": True,
                                               "annotations": {"grafana_folder": "ML"}}}}
CONFIGS = {
    "default": {},
    "tls_auth": TLS_ON,
    "service_monitor": MONITOR_ON,
    "cpu_only_cp2": {"cp": 2, "worker": {"gpus": 0, "rankFromOrdinal": False,
                                         "podManagementPolicy": "OrderedReady"},
                     "podDisruptionBudget": {"enabled": False},
                     "serviceAccount": {"create": False}},
    "open_network_spread": {"networkPolicy": {"enabled": False},
                            "worker": {"placement": "spread", "hostIPC": True,
                                       "nccl": {"env": {"NCCL_SOCKET_IFNAME": "eth0"}}},
                            "test": {"enabled": False}},
}


def flags(text):
    """The flags of an absl flag file: {name: value}."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name] = value
    return out


def container(obj):
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def daemon_flags(objs, role):
    """Everything a daemon is started with: flag file, then the command line."""
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and f"{role}.flags" in o["data"]]
    c = container(find(objs, "Deployment" if role == "coordinator" else "StatefulSet"))
    args = c["args"]
    assert args[0] == role
    assert args[1] == f"--flagfile=/etc/ringattn/config/{role}.flags"
    out = flags(cm["data"][f"{role}.flags"])
    out.update(flags("\n".join(args[2:])))
    return out


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def rendered(request):
    return request.param, render(CONFIGS[request.param])


def test_chart_lints_clean():
    import helm_python

    result = helm_python.lint(str(CHART), strict=True)
    assert result["errors"] == [], result
    # Only the missing icon is worth a note, and it is only informational.
    assert all(m["severity"] <= 1 for m in result["messages"]), result["messages"]


def test_values_yaml_matches_its_schema_and_documents_every_value():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.validate(values, schema)

    # Every key of values.yaml has a comment line right above it, except the
    # fields of Kubernetes' own objects (resources, seccompProfile, ...).
    kubernetes_objects = {"resources", "seccompProfile", "capabilities", "clients", "metricsFrom"}
    stack = []  # (indent, key) of the enclosing keys
    previous = ""
    keys = 0
    for n, line in enumerate((CHART / "values.yaml").read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        m = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if m:
            indent, key = len(m.group(1)), m.group(2)
            stack = [(i, k) for i, k in stack if i < indent]
            if not kubernetes_objects & {k for _, k in stack}:
                keys += 1
                assert previous.startswith("#"), f"values.yaml:{n}: {key} has no comment"
            stack.append((indent, key))
        previous = stripped
    assert keys > 50


@pytest.mark.parametrize("bad", [
    {"cp": 0},
    {"worker": {"gpus": -1}},
    {"tls": {"enabled": True}},
    {"auth": {"enabled": True}},
    {"auth": {"enabled": True, "secretName": "tokens"}},  # Tokens need TLS.
    {"worker": {"advertise": "hostname"}},
    {"coordinator": {"port": 70000}},
    {"worker": {"extraArgs": ["threads=4"]}},
    {"workers": {}},
    {"worker": {"placement": "anywhere"}},
    {"worker": {"nccl": {"env": {"LD_PRELOAD": "x.so"}}}},  # NCCL's variables only.
    {"networkPolicy": {"clients": [{"pods": {}}]}},
    {"test": {"seqLen": 0}},
])
def test_helm_rejects_values_the_schema_forbids(bad):
    import helm_python

    with pytest.raises(helm_python.HelmError):
        render(bad)


def test_manifests_are_valid_kubernetes_objects(rendered):
    name, out = rendered
    objs = manifests(out)
    for obj in objs:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # A CRD: checked in test_service_monitor.
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
    kinds = sorted(o["kind"] for o in objs)
    assert {"ConfigMap", "Deployment", "Service", "StatefulSet"} <= set(kinds), (name, kinds)


def test_rendered_manifests_pass_yamllint(rendered, tmp_path):
    _, out = rendered
    files, json_payload = [], []
    for path, text in out.items():
        if path.endswith(".yaml") and text.strip():
            f = tmp_path / path.replace("/", "_")
            f.write_text(text)
            # The dashboard ConfigMap carries generated JSON, whose query
            # lines are longer than YAML's line limit.
            (json_payload if path.endswith("dashboard-configmap.yaml") else files).append(str(f))
    for batch, config in ((files, YAMLLINT_CONFIG),
                          (json_payload, YAMLLINT_CONFIG.replace("max: 160", "max: 1000"))):
        if not batch:
            continue
        r = subprocess.run([tool("yamllint"), "-s", "-d", config, *batch],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_chart_files_pass_yamllint():
    r = subprocess.run([tool("yamllint"), "-s", "-d", YAMLLINT_CONFIG,
                        str(CHART / "values.yaml"), str(CHART / "Chart.yaml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_coordinator_serves_the_api_and_metrics_on_its_service():
    objs = manifests(render())
    f = daemon_flags(objs, "coordinator")
    assert f["--host"] == "0.0.0.0"
    assert f["--port"] == "50051"
    assert f["--cp"] == "4"
    assert f["--metrics_port"] == "9464"
    assert f["--advertise_host"] == "demo-ringattn-coordinator.ml.svc"
    assert f["--memory_budget_bytes"] == str(16 << 30)
    assert f["--max_call_bytes"] == str(4 << 30)

    dep = find(objs, "Deployment", "-coordinator")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    svc = find(objs, "Service", "-coordinator")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9464}
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"]


def test_workers_dial_the_coordinator_service_and_take_their_ordinal_as_rank():
    objs = manifests(render())
    sts = find(objs, "StatefulSet", "-worker")
    assert sts["spec"]["replicas"] == 4
    headless = find(objs, "Service", "-worker")
    assert headless["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]

    f = daemon_flags(objs, "worker")
    coord_svc = find(objs, "Service", "-coordinator")["metadata"]["name"]
    assert f["--coordinator"] == f"{coord_svc}.ml.svc:50051"
    assert f["--port"] == "50052"
    assert f["--metrics_port"] == "9465"
    # Listens on and advertises the pod IP; the rank is the pod's ordinal.
    assert f["--host"] == "$(POD_IP)"
    assert f["--advertise_host"] == "$(POD_IP)"
    assert f["--rank"] == "$(RINGATTN_RANK)"
    env = {e["name"]: e for e in container(sts).get("env", [])}
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert (env["RINGATTN_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
            == "metadata.labels['apps.kubernetes.io/pod-index']")


@pytest.mark.parametrize("values", [TLS_ON, {"worker": {"advertise": "dnsName"}}])
def test_workers_can_advertise_their_stable_dns_name(values):
    objs = manifests(render(values))
    headless = find(objs, "Service", "-worker")
    f = daemon_flags(objs, "worker")
    assert f["--advertise_host"] == f"$(POD_NAME).{headless['metadata']['name']}.ml.svc"
    assert f["--host"] == "$(POD_IP)"
    env = {e["name"]: e for e in container(find(objs, "StatefulSet"))["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The name resolves before the pod is ready: the ring forms before readiness.
    assert headless["spec"]["publishNotReadyAddresses"] is True


def test_rank_flag_is_left_out_when_not_pinned():
    objs = manifests(render(CONFIGS["cpu_only_cp2"]))
    f = daemon_flags(objs, "worker")
    assert "--rank" not in f
    env = {e["name"] for e in container(find(objs, "StatefulSet")).get("env", [])}
    assert "RINGATTN_RANK" not in env
    assert find(objs, "StatefulSet")["spec"]["replicas"] == 2
    assert daemon_flags(objs, "coordinator")["--cp"] == "2"


@pytest.mark.parametrize("gpus", [0, 1, 2])
def test_each_worker_requests_its_accelerators(gpus):
    objs = manifests(render({"worker": {"gpus": gpus}}))
    limits = container(find(objs, "StatefulSet"))["resources"].get("limits", {})
    if gpus:
        assert limits["nvidia.com/gpu"] == gpus
    else:
        assert "nvidia.com/gpu" not in limits
    assert limits["memory"] == "32Gi"
    # The coordinator never asks for an accelerator.
    coord = container(find(objs, "Deployment"))["resources"]
    assert "nvidia.com/gpu" not in coord.get("limits", {})


def test_probes_use_grpc_health_on_the_grpc_port():
    objs = manifests(render())
    for kind, port in (("Deployment", 50051), ("StatefulSet", 50052)):
        c = container(find(objs, kind))
        assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
            "grpc": port, "metrics": port - 50051 + 9464}
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": port}, (kind, probe)


def test_tls_mounts_the_secrets_and_passes_their_files():
    objs = manifests(render(TLS_ON))
    for role, kind in (("coordinator", "Deployment"), ("worker", "StatefulSet")):
        f = daemon_flags(objs, role)
        assert f["--tls_cert_file"] == "/etc/ringattn/tls/tls.crt"
        assert f["--tls_key_file"] == "/etc/ringattn/tls/tls.key"
        assert f["--tls_ca_file"] == "/etc/ringattn/tls/ca.crt"
        assert f["--cluster_token_file"] == "/etc/ringattn/auth/cluster-token"
        assert ("--auth_token_file" in f) == (role == "coordinator")
        pod = find(objs, kind)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "ringattn-tls"
        assert volumes["auth"]["secret"]["secretName"] == "ringattn-tokens"
        mounts = {m["name"]: m["mountPath"] for m in container(find(objs, kind))["volumeMounts"]}
        assert mounts["tls"] == "/etc/ringattn/tls" and mounts["auth"] == "/etc/ringattn/auth"
        # The kubelet's gRPC probe speaks plaintext only: a TLS port gets TCP probes.
        c = container(find(objs, kind))
        assert "grpc" not in c["livenessProbe"] and "tcpSocket" in c["livenessProbe"]
    plain = manifests(render())
    for role, kind in (("coordinator", "Deployment"), ("worker", "StatefulSet")):
        f = daemon_flags(plain, role)
        assert not any(k.startswith(("--tls", "--auth")) for k in f)
        # Without tokens the daemons still share a secret: the chart's own.
        assert f["--cluster_token_file"] == "/etc/ringattn/cluster/cluster-token"
        pod = find(plain, kind)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["cluster-secret"]["secret"]["secretName"] == "demo-ringattn-cluster-secret"
    secret = next(o for o in plain if o["kind"] == "Secret")
    token = base64.b64decode(secret["data"]["cluster-token"])
    assert len(token) == 32 and token.isalnum()
    assert not any(o["kind"] == "Secret" for o in objs)  # With tokens, the operator's secret.


def test_pods_run_as_non_root_without_privileges(rendered):
    _, out = rendered
    for obj in manifests(out):
        if obj["kind"] == "Pod":
            pod = obj["spec"]
        elif obj["kind"] in ("Deployment", "StatefulSet"):
            pod = obj["spec"]["template"]["spec"]
        else:
            continue
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # The image's USER.
        assert pod["automountServiceAccountToken"] is False
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]["memory"]


def test_disruption_budget_covers_the_workers():
    objs = manifests(render())
    pdb = find(objs, "PodDisruptionBudget")
    sts = find(objs, "StatefulSet")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert not [o for o in manifests(render({"podDisruptionBudget": {"enabled": False}}))
                if o["kind"] == "PodDisruptionBudget"]


def test_config_change_rolls_the_pods():
    def checksum(values):
        objs = manifests(render(values))
        return {k: find(objs, k)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
                for k in ("Deployment", "StatefulSet")}

    a, b = checksum({}), checksum({"coordinator": {"sessionTtlSeconds": 60}})
    assert a["Deployment"] != b["Deployment"] and a["StatefulSet"] != b["StatefulSet"]
    assert checksum({}) == a


def test_service_monitor_is_off_by_default_and_scrapes_both_jobs_when_on():
    assert not [o for o in manifests(render()) if o["kind"] == "ServiceMonitor"]
    objs = manifests(render(MONITOR_ON))
    monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
    assert len(monitors) == 2
    for sm in monitors:
        assert sm["apiVersion"] == "monitoring.coreos.com/v1"
        assert sm["metadata"]["labels"]["release"] == "kube-prometheus"
        spec = sm["spec"]
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        # The Service it selects carries the job name under jobLabel.
        services = [o for o in objs if o["kind"] == "Service" and all(
            o["metadata"]["labels"].get(k) == v for k, v in spec["selector"]["matchLabels"].items())]
        assert len(services) == 1
        role = sm["metadata"]["labels"]["app.kubernetes.io/component"]
        assert services[0]["metadata"]["labels"][spec["jobLabel"]] == f"ringattn-{role}"
        assert "metrics" in {p["name"] for p in services[0]["spec"]["ports"]}
        targets = {r["targetLabel"] for r in endpoint["relabelings"]}
        assert {"release", "ordinal"} <= targets


def test_pods_carry_scrape_annotations():
    objs = manifests(render())
    for kind, port in (("Deployment", "9464"), ("StatefulSet", "9465")):
        ann = find(objs, kind)["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true"
        assert ann["prometheus.io/port"] == port
    objs = manifests(render({"metrics": {"podAnnotations": False}}))
    ann = find(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in ann


def test_notes_tell_how_to_reach_the_service():
    notes = render()["ringattn/templates/NOTES.txt"]
    assert "demo-ringattn-coordinator.ml.svc:50051" in notes
    assert "ringattn status --coordinator=" in notes
    assert "helm test demo -n ml" in notes


def test_long_release_names_stay_within_dns_limits():
    out = render(name="a-release-name-that-is-rather-long-for-a-cluster", namespace="ml")
    for obj in manifests(out):
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        if obj["kind"] == "StatefulSet":
            # Pod names add "-<ordinal>" and must stay a DNS label.
            assert len(name) + 4 <= 63


# --- Monitoring objects from deploy/ ----------------------------------------

REPO = CHART.parents[1]


@pytest.mark.parametrize("source, copy", [
    ("deploy/prometheus/alerts.yml", "files/alerts.yml"),
    ("deploy/grafana/ringattn-dashboard.json", "files/ringattn-dashboard.json"),
])
def test_chart_serves_the_deploy_files_unchanged(source, copy):
    """One source: the chart's copies (helm packages only files inside the
    chart) are byte for byte the files in deploy/."""
    assert (CHART / copy).read_bytes() == (REPO / source).read_bytes(), (
        f"helm/ringattn/{copy} drifted from {source}: python3 deploy/grafana/make_dashboard.py "
        f"rewrites the dashboard's copy; cp deploy/prometheus/alerts.yml helm/ringattn/files/")


def test_prometheus_rule_holds_the_alert_rules(tmp_path):
    assert not [o for o in manifests(render()) if o["kind"] == "PrometheusRule"]
    rule = find(manifests(render(MONITOR_ON)), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus"
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    # Helm passes the rules' own {{ $labels... }} templates through untouched.
    assert rule["spec"]["groups"] == alerts["groups"]
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    r = subprocess.run([tool("promtool"), "check", "rules", str(f)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dashboard_config_map_holds_the_dashboard():
    assert not [o for o in manifests(render()) if o["metadata"]["name"].endswith("-dashboard")]
    cm = find(manifests(render(MONITOR_ON)), "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    text = (REPO / "deploy" / "grafana" / "ringattn-dashboard.json").read_text()
    assert json.loads(cm["data"]["ringattn-dashboard.json"]) == json.loads(text)


# --- NetworkPolicy ------------------------------------------------------------

def _selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(objs, to_labels, port, from_labels, from_namespace="ml"):
    """Whether the release's NetworkPolicies let a pod (labels, namespace) reach
    `port` of a pod labelled `to_labels` in namespace ml (podSelector and
    namespaceSelector peers; a namespace's labels are its name label)."""
    policies = [o for o in objs if o["kind"] == "NetworkPolicy"
                and _selects(o["spec"]["podSelector"], to_labels)]
    if not policies:
        return True  # Not isolated.
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            ports = [q["port"] for q in rule.get("ports", [])]
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers:
                return True
            for peer in peers:
                ns = peer.get("namespaceSelector")
                ns_ok = (from_namespace == "ml" if ns is None else
                         _selects(ns, {"kubernetes.io/metadata.name": from_namespace}))
                if ns_ok and _selects(peer.get("podSelector", {}), from_labels):
                    return True
    return False


def _pod_labels(objs, kind):
    return find(objs, kind)["spec"]["template"]["metadata"]["labels"]


def test_network_policy_keeps_the_ring_and_grpc_ports_to_the_release():
    objs = manifests(render())
    coord, worker = _pod_labels(objs, "Deployment"), _pod_labels(objs, "StatefulSet")
    tester = find(objs, "Pod")["metadata"]["labels"]
    other_release = dict(worker, **{"app.kubernetes.io/instance": "other"})
    stranger = {"app": "something"}
    client = {"ringattn-client": "true"}
    ring_port = 41234  # Gloo and NCCL pick their ports at run time.
    # The ring: workers of this release only, on any port.
    assert admitted(objs, worker, ring_port, worker)
    for who in (coord, tester, other_release, stranger, client):
        assert not admitted(objs, worker, ring_port, who), who
    # A worker's gRPC port: the coordinator (and its ring peers).
    assert admitted(objs, worker, 50052, coord)
    assert not admitted(objs, worker, 50052, client)
    assert not admitted(objs, worker, 50052, other_release)
    # The coordinator's gRPC port: release pods and the named clients.
    for who in (worker, tester, client):
        assert admitted(objs, coord, 50051, who), who
    for who in (stranger, other_release):
        assert not admitted(objs, coord, 50051, who), who
    assert not admitted(objs, coord, 50051, client, from_namespace="elsewhere")
    assert not admitted(objs, coord, 4000, worker)
    # Metrics: anyone by default.
    assert admitted(objs, coord, 9464, stranger, from_namespace="monitoring")
    assert admitted(objs, worker, 9465, stranger, from_namespace="monitoring")


def test_network_policy_takes_the_clients_and_scrapers_values_name():
    values = {"networkPolicy": {
        "clients": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "training"}}}],
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "monitoring"}}}]}}
    objs = manifests(render(values))
    coord, worker = _pod_labels(objs, "Deployment"), _pod_labels(objs, "StatefulSet")
    trainer = {"app": "trainer"}
    assert admitted(objs, coord, 50051, trainer, from_namespace="training")
    assert not admitted(objs, coord, 50051, {"ringattn-client": "true"})
    assert not admitted(objs, worker, 50052, trainer, from_namespace="training")
    assert admitted(objs, worker, 9465, {}, from_namespace="monitoring")
    assert not admitted(objs, worker, 9465, {}, from_namespace="training")
    assert not [o for o in manifests(render({"networkPolicy": {"enabled": False}}))
                if o["kind"] == "NetworkPolicy"]


# --- GPU pods and placement ---------------------------------------------------

def test_gpu_workers_get_shared_memory_and_nccl_settings():
    objs = manifests(render({"worker": {"nccl": {"env": {"NCCL_IB_DISABLE": 1}}}}))
    sts = find(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    assert mounts["shm"] == "/dev/shm"
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    assert env["NCCL_DEBUG"] == "WARN" and env["NCCL_IB_DISABLE"] == "1"
    assert "hostIPC" not in pod
    assert pod_of(render({"worker": {"hostIPC": True}}))["hostIPC"] is True
    # CPU workers need neither.
    cpu = find(manifests(render({"worker": {"gpus": 0}})), "StatefulSet")
    assert "shm" not in {v["name"] for v in cpu["spec"]["template"]["spec"]["volumes"]}
    assert not [e for e in container(cpu)["env"] if e["name"].startswith("NCCL_")]
    off = pod_of(render({"worker": {"shm": {"enabled": False}}}))
    assert "shm" not in {v["name"] for v in off["volumes"]}


def pod_of(out):
    return find(manifests(out), "StatefulSet")["spec"]["template"]["spec"]


def test_ranks_pack_onto_one_node_by_default():
    objs = manifests(render())
    affinity = pod_of(render())["affinity"]
    assert set(affinity) == {"podAffinity"}
    (term,) = affinity["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    # It attracts to this release's workers; a preference, so a ring larger
    # than a node still schedules.
    assert (term["podAffinityTerm"]["labelSelector"]["matchLabels"]
            == find(objs, "StatefulSet")["spec"]["selector"]["matchLabels"])
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in affinity["podAffinity"]

    zone = pod_of(render({"worker": {"topologyKey": "topology.kubernetes.io/zone"}}))
    (term,) = zone["affinity"]["podAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    spread = pod_of(render({"worker": {"placement": "spread"}}))["affinity"]
    assert set(spread) == {"podAntiAffinity"}
    assert "affinity" not in pod_of(render({"worker": {"placement": "none"}}))
    own = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "gpu", "operator": "In", "values": ["h200"]}]}]}}}
    assert pod_of(render({"worker": {"affinity": own}}))["affinity"] == own


# --- helm test ------------------------------------------------------------------

def test_helm_test_checks_status_and_a_verified_forward():
    objs = manifests(render())
    pod = find(objs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    address = "--coordinator=demo-ringattn-coordinator.ml.svc:50051"
    (status,) = pod["spec"]["initContainers"]
    assert status["args"] == ["ringattn", "status", address]
    (forward,) = pod["spec"]["containers"]
    # `ringattn synthetic` compares forward and backward with the fp64
    # oracle and exits non-zero on a mismatch.
    assert forward["args"] == ["ringattn", "synthetic", address, "--seq_len=256"]
    assert status["image"] == forward["image"] == container(find(objs, "StatefulSet"))["image"]
    # Not a daemon: no Service or scrape job selects it.
    component = pod["metadata"]["labels"]["app.kubernetes.io/component"]
    assert component == "test"
    assert not [o for o in manifests(render({"test": {"enabled": False}})) if o["kind"] == "Pod"]


def test_helm_test_speaks_tls_and_presents_the_api_token():
    pod = find(manifests(render(TLS_ON)), "Pod")
    for c in pod["spec"]["containers"] + pod["spec"]["initContainers"]:
        f = flags("\n".join(c["args"][2:]))
        assert f["--tls_ca_file"] == "/etc/ringattn/tls/ca.crt"
        assert f["--tls_cert_file"] == "/etc/ringattn/tls/tls.crt"
        assert f["--tls_key_file"] == "/etc/ringattn/tls/tls.key"
        assert f["--auth_token_file"] == "/etc/ringattn/auth/api-token"
        mounts = {m["name"] for m in c["volumeMounts"]}
        assert {"tls", "auth"} <= mounts
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == "ringattn-tokens"

"""The Helm chart, rendered by Helm's own engine (Helm 4's Go SDK) and
checked against the Kubernetes API schemas, yamllint, and what the
daemons expect: flags, ports, probes, ranks, accelerators."""

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
                                             "labels": {"release": "kube-prometheus"}}}}
CONFIGS = {
    "default": {},
    "tls_auth": TLS_ON,
    "service_monitor": MONITOR_ON,
    "cpu_only_cp2": {"cp": 2, "worker": {"gpus": 0, "rankFromOrdinal": False,
                                         "podManagementPolicy": "OrderedReady"},
                     "podDisruptionBudget": {"enabled": False},
                     "serviceAccount": {"create": False}},
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
    cm = find(objs, "ConfigMap")
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
    kubernetes_objects = {"resources", "seccompProfile", "capabilities"}
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
    files = []
    for path, text in out.items():
        if path.endswith(".yaml") and text.strip():
            f = tmp_path / path.replace("/", "_")
            f.write_text(text)
            files.append(str(f))
    r = subprocess.run([tool("yamllint"), "-s", "-d", YAMLLINT_CONFIG, *files],
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
    for role in ("coordinator", "worker"):
        assert not any(k.startswith(("--tls", "--auth", "--cluster")) for k in
                       daemon_flags(plain, role))


def test_pods_run_as_non_root_without_privileges(rendered):
    _, out = rendered
    for obj in manifests(out):
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        pod = obj["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001  # The image's USER.
        assert pod["automountServiceAccountToken"] is False
        c = container(obj)
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


def test_long_release_names_stay_within_dns_limits():
    out = render(name="a-release-name-that-is-rather-long-for-a-cluster", namespace="ml")
    for obj in manifests(out):
        name = obj["metadata"]["name"]
        assert len(name) <= 63, name
        if obj["kind"] == "StatefulSet":
            # Pod names add "-<ordinal>" and must stay a DNS label.
            assert len(name) + 4 <= 63

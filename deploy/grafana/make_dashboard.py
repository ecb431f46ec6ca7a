#!/usr/bin/env python3
"""Writes ringattn-dashboard.json, the Grafana dashboard of the service.

The dashboard is generated so its queries stay consistent (one selector per
job, one rate window); edit this file, then run

    python3 deploy/grafana/make_dashboard.py

It writes the JSON beside this file and the Helm chart's copy
(helm/ringattn/files/, which the chart's dashboard ConfigMap serves);
tests/deploy checks that both are what it generates.
"""

import json
import pathlib
import sys

# Every query is scoped by the dashboard's namespace and release variables.
SCOPE = 'namespace=~"$namespace", release=~"$release"'
COORD = 'job="ringattn-coordinator", ' + SCOPE
WORKER = 'job="ringattn-worker", ' + SCOPE
BOTH = 'job=~"ringattn-coordinator|ringattn-worker", ' + SCOPE
RATE = "$__rate_interval"
# Status codes that mean the service failed a call, not that its caller
# asked for something wrong (INVALID_ARGUMENT, NOT_FOUND, ...) or gave up
# (CANCELLED); the alert rules use the same list.
SERVER_ERRORS = 'code=~"UNAVAILABLE|INTERNAL|UNKNOWN|DEADLINE_EXCEEDED|ABORTED|DATA_LOSS"'
CLIENT_ERRORS = ('code=~"INVALID_ARGUMENT|NOT_FOUND|FAILED_PRECONDITION|OUT_OF_RANGE|'
                 'ALREADY_EXISTS|PERMISSION_DENIED|UNAUTHENTICATED|RESOURCE_EXHAUSTED"')
API_CALLS = 'method=~"Forward|Backward|Release"'
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


class Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self):
        self.panels = []
        self.x = 0
        self.y = 0
        self.row_height = 0
        self.next_id = 1

    def _place(self, panel, w, h):
        if self.x + w > 24:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        panel["id"] = self.next_id
        self.next_id += 1
        panel["gridPos"] = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_height = max(self.row_height, h)
        self.panels.append(panel)

    def row(self, title):
        if self.x:
            self.x = 0
            self.y += self.row_height
            self.row_height = 0
        self._place({"type": "row", "title": title, "collapsed": False, "panels": []}, 24, 1)
        self.x = 0
        self.y += 1
        self.row_height = 0

    def add(self, panel, w, h):
        self._place(panel, w, h)


def target(expr, legend, ref, instant=False):
    t = {"datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
        t["format"] = "table"
    return t


def targets(*pairs):
    return [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(pairs)]


def timeseries(title, description, unit, queries, overrides=(), stack=False, min0=True):
    defaults = {
        "unit": unit,
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if min0:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": {
            "legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                       "calcs": ["lastNotNull", "max"]},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
        "targets": targets(*queries),
    }


def stat(title, description, unit, queries, thresholds=None, decimals=None):
    defaults = {"unit": unit, "color": {"mode": "thresholds"},
                "thresholds": {"mode": "absolute",
                               "steps": thresholds or [{"color": "green", "value": None}]}}
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "value", "graphMode": "area", "textMode": "value_and_name",
                    "justifyMode": "auto", "orientation": "auto"},
        "targets": targets(*queries),
    }


def by_name(regex, props):
    return {"matcher": {"id": "byRegexp", "options": regex},
            "properties": [{"id": k, "value": v} for k, v in props.items()]}


def table(title, description, queries, hidden, renames):
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": {}, "overrides": []},
        "options": {"showHeader": True, "cellHeight": "sm"},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {h: True for h in hidden},
                                           "renameByName": renames}},
        ],
        "targets": [target(e, l, chr(ord("A") + i), instant=True)
                    for i, (e, l) in enumerate(queries)],
    }


def quantiles(metric, sel, by, what):
    """p50 and p99 of a histogram, per `by` label."""
    out = []
    for q in ("0.5", "0.99"):
        out.append((f"histogram_quantile({q}, sum by (le, {by}) "
                    f"(rate({metric}_bucket{{{sel}}}[{RATE}])))",
                    f"p{int(float(q) * 100)} {what}"))
    return out


def mean_per_step(metric, by):
    return (f"sum by ({by}) (rate({metric}_sum{{{WORKER}}}[{RATE}])) / "
            f"sum by ({by}) (rate({metric}_count{{{WORKER}}}[{RATE}]))")


def build():
    g = Layout()

    # Overview: the numbers an on-call looks at first.
    g.add(stat("Workers up / ring size",
               "Healthy workers the coordinator sees, and the ranks the ring needs (--cp).",
               "none",
               [(f"sum(ringattn_workers_up{{{COORD}}})", "up"),
                (f"sum(ringattn_ring_size{{{COORD}}})", "ring size")]), 4, 4)
    g.add(stat("Ring generation", "Current ring; it grows by one on every rebuild.", "none",
               [(f"max(ringattn_ring_generation{{{COORD}}})", "generation")]), 4, 4)
    g.add(stat("Calls/s", "Forward and backward calls completed per second.", "reqps",
               [(f"sum(rate(ringattn_call_duration_seconds_count{{{COORD}}}[{RATE}]))",
                 "calls/s")]), 4, 4)
    g.add(stat("Server error ratio",
               "Share of Forward, Backward and Release calls ending in a server-side error.",
               "percentunit",
               [(f"sum(rate(ringattn_requests_total{{{COORD}, {API_CALLS}, {SERVER_ERRORS}}}[{RATE}])) "
                 f"/ sum(rate(ringattn_requests_total{{{COORD}, {API_CALLS}}}[{RATE}]))", "errors")],
               thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.01},
                           {"color": "red", "value": 0.05}]), 4, 4)
    g.add(stat("Sessions open", "Forward sessions held for backward.", "none",
               [(f"sum(ringattn_sessions_open{{{COORD}}})", "sessions")]), 4, 4)
    g.add(stat("Memory held / budget",
               "Session state held on the workers as a share of --memory_budget_bytes.",
               "percentunit",
               [(f"sum(ringattn_memory_held_bytes{{{COORD}}}) / "
                 f"sum(ringattn_memory_budget_bytes{{{COORD}}})", "held")],
               thresholds=[{"color": "green", "value": None}, {"color": "orange", "value": 0.75},
                           {"color": "red", "value": 0.9}]), 4, 4)

    g.row("Requests")
    g.add(timeseries(
        "Request rate by method and code",
        "API calls handled per second by each daemon, by RPC and status code: the public "
        "API on the coordinator, shard calls on the workers. Control traffic is apart.",
        "reqps",
        [(f"sum by (job, method, code) (rate(ringattn_requests_total{{{BOTH}}}[{RATE}]))",
          "{{job}} {{method}} {{code}}")]), 12, 8)
    g.add(timeseries(
        "Error ratio",
        "Share of API calls ending in a server-side error (UNAVAILABLE, INTERNAL, "
        "DEADLINE_EXCEEDED, ...), by daemon, and, dashed, in a client mistake "
        "(INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, ...). CANCELLED counts as neither.",
        "percentunit",
        [(f"sum by (job) (rate(ringattn_requests_total{{{BOTH}, {SERVER_ERRORS}}}[{RATE}])) / "
          f"sum by (job) (rate(ringattn_requests_total{{{BOTH}}}[{RATE}]))", "server {{job}}"),
         (f"sum by (job) (rate(ringattn_requests_total{{{BOTH}, {CLIENT_ERRORS}}}[{RATE}])) / "
          f"sum by (job) (rate(ringattn_requests_total{{{BOTH}}}[{RATE}]))", "client {{job}}")],
        overrides=[by_name("client .*", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}})]),
        8, 8)
    g.add(timeseries(
        "Calls in flight", "Client calls the coordinator is serving now.", "none",
        [(f"sum by (op) (ringattn_calls_in_flight{{{COORD}}})", "{{op}}")]), 4, 8)
    g.add(timeseries(
        "Control-plane requests",
        "Worker registration and heartbeats, the ring's rendezvous store (coordinator) and "
        "JoinRing (workers), per second by method and code.",
        "reqps",
        [(f"sum by (job, method, code) (rate(ringattn_control_requests_total{{{BOTH}}}[{RATE}]))",
          "{{job}} {{method}} {{code}}")]), 24, 8)

    g.row("Latency")
    g.add(timeseries(
        "Call latency (client calls)",
        "Whole forward and backward calls at the coordinator, from first byte in to last "
        "byte out: p50 and p99.",
        "s",
        quantiles("ringattn_call_duration_seconds", COORD, "op", "{{op}}")), 12, 8)
    g.add(timeseries(
        "Shard call latency (workers)",
        "A worker's whole ring call for its shard: p50 and p99 over all workers.",
        "s",
        quantiles("ringattn_shard_call_duration_seconds", WORKER, "op", "{{op}}")), 12, 8)

    g.row("Ring steps")
    g.add(timeseries(
        "Ring step: compute vs comm wait (mean)",
        "Mean time per ring step spent computing one K/V chunk, and waiting on the ring "
        "for the next one. Waiting longer than computing means the network (or a "
        "straggler) bounds the ring.",
        "s",
        [(mean_per_step("ringattn_ring_step_compute_seconds", "op"), "compute {{op}}"),
         (mean_per_step("ringattn_ring_step_comm_wait_seconds", "op"), "comm wait {{op}}")]),
        12, 8)
    g.add(timeseries(
        "Ring step: compute vs comm wait (p99)",
        "Slowest 1% of ring steps.",
        "s",
        quantiles("ringattn_ring_step_compute_seconds", WORKER, "op", "compute {{op}}")
        + quantiles("ringattn_ring_step_comm_wait_seconds", WORKER, "op", "comm wait {{op}}")),
        12, 8)
    g.add(timeseries(
        "Comm wait share by worker",
        "Share of each worker's ring-step time spent waiting on the ring. A straggler "
        "waits least: the others wait for it.",
        "percentunit",
        [(f"sum by (pod) (rate(ringattn_ring_step_comm_wait_seconds_sum{{{WORKER}}}[{RATE}])) / "
          f"(sum by (pod) (rate(ringattn_ring_step_comm_wait_seconds_sum{{{WORKER}}}[{RATE}])) + "
          f"sum by (pod) (rate(ringattn_ring_step_compute_seconds_sum{{{WORKER}}}[{RATE}])))",
          "{{pod}}")]), 12, 8)
    g.add(timeseries(
        "Compute per computed ring step by worker (mean)",
        "Mean compute time of the steps each worker computes (skipped ones left out). Ranks "
        "differ by design: causal shards give later ranks fuller steps.",
        "s",
        [(mean_per_step("ringattn_ring_step_compute_seconds", "pod, op"), "{{pod}} {{op}}")]),
        12, 8)
    g.add(timeseries(
        "Compute per allowed pair by worker",
        "Compute time per (query, key) pair the position rules allow: the work each rank's "
        "schedule gives it divided out. A worker well above the others (and above them per "
        "computed step too) is a straggler: every step waits for it.",
        "s",
        [(f"sum by (pod, op) (rate(ringattn_ring_step_compute_seconds_sum{{{WORKER}}}[{RATE}])) / "
          f"sum by (pod, op) (rate(ringattn_ring_pairs_computed_total{{{WORKER}}}[{RATE}]))",
          "{{pod}} {{op}}")]), 12, 8)
    g.add(timeseries(
        "Forwards by shard layout",
        "Completed forwards per second by the layout their sequence was sharded in: "
        "contiguous (sliding layers, non-causal ones) or zigzag (full causal layers, "
        "balanced across ranks). A full causal layer on contiguous shards leaves the last "
        "rank doing about cp times the first's work.",
        "reqps",
        [(f"sum by (layout) (rate(ringattn_layout_calls_total{{{COORD}}}[{RATE}]))",
          "{{layout}}")], stack=True), 24, 6)

    g.row("Throughput")
    g.add(timeseries(
        "Bytes/s by channel",
        "Tensor payload bytes per second, sent (up) and received (down): api = clients <-> "
        "coordinator, shard = coordinator <-> workers, ring = worker <-> worker.",
        "Bps",
        [(f"sum by (channel) (rate(ringattn_sent_bytes_total{{{BOTH}}}[{RATE}]))",
          "sent {{channel}}"),
         (f"sum by (channel) (rate(ringattn_received_bytes_total{{{BOTH}}}[{RATE}]))",
          "received {{channel}}")],
        overrides=[by_name("received .*", {"custom.transform": "negative-Y"})], min0=False),
        12, 8)
    g.add(timeseries(
        "Ring bytes/s by worker",
        "K/V chunks (and gradients in backward) each worker sends to its ring neighbour.",
        "Bps",
        [(f'sum by (pod) (rate(ringattn_sent_bytes_total{{{WORKER}, channel="ring"}}[{RATE}]))',
          "{{pod}}")]), 12, 8)
    g.add(timeseries(
        "Achieved FLOP/s",
        "Attention FLOP/s of the last completed call (counting only pairs the mask allows), "
        "and FLOP/s delivered on average over the window.",
        "flops",
        [(f"max by (op) (ringattn_achieved_flops_per_second{{{COORD}}})", "last call {{op}}"),
         (f"sum by (op) (rate(ringattn_flops_total{{{COORD}}}[{RATE}]))", "delivered {{op}}")]),
        24, 8)

    g.row("Capacity and ring")
    g.add(timeseries(
        "Memory held vs budget",
        "Session state held for backward: the coordinator's account of the whole ring "
        "against --memory_budget_bytes, and each worker's own.",
        "bytes",
        [(f"sum(ringattn_memory_held_bytes{{{COORD}}})", "held (ring)"),
         (f"sum(ringattn_memory_budget_bytes{{{COORD}}})", "budget"),
         (f"sum by (pod) (ringattn_memory_held_bytes{{{WORKER}}})", "held {{pod}}")],
        overrides=[by_name("budget", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
                                      "custom.fillOpacity": 0, "color": {"mode": "fixed",
                                                                         "fixedColor": "red"}})]),
        12, 8)
    g.add(timeseries(
        "Sessions open", "Forward sessions held for backward, by daemon.", "none",
        [(f"sum by (job, pod) (ringattn_sessions_open{{{BOTH}}})", "{{job}} {{pod}}")]), 12, 8)
    g.add(timeseries(
        "Ring generation and rebuilds",
        "The ring's generation (coordinator and every worker should agree) and rebuilds "
        "in the window. Each rebuild fails the calls in flight and drops sessions.",
        "none",
        [(f"max(ringattn_ring_generation{{{COORD}}})", "generation (coordinator)"),
         (f"max by (pod) (ringattn_ring_generation{{{WORKER}}})", "generation {{pod}}"),
         (f"sum(increase(ringattn_ring_rebuilds_total{{{COORD}}}[{RATE}]))", "rebuilds")],
        overrides=[by_name("rebuilds", {"custom.drawStyle": "bars", "custom.axisPlacement": "right",
                                        "custom.fillOpacity": 60})]), 12, 8)
    g.add(timeseries(
        "Workers registered / up",
        "Workers registered with the coordinator and healthy, against the ring size; "
        "and worker scrape targets up.",
        "none",
        [(f"sum(ringattn_workers_registered{{{COORD}}})", "registered"),
         (f"sum(ringattn_workers_up{{{COORD}}})", "up"),
         (f"sum(ringattn_ring_size{{{COORD}}})", "ring size"),
         (f"count(up{{{WORKER}}} == 1)", "worker targets up")],
        overrides=[by_name("ring size", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]}})]),
        12, 8)
    g.add(table(
        "Daemons",
        "Every scraped daemon: its build, role, compute backend (workers) and, for workers, "
        "the rank it holds now.",
        [(f"max by (job, pod, version, role, backend) (ringattn_build_info{{{BOTH}}})", "build"),
         (f"max by (job, pod) (ringattn_ring_rank{{{WORKER}}})", "rank")],
        hidden=["Time", "Value #A"], renames={"Value #B": "rank"}), 24, 6)

    g.row("Processes")
    g.add(timeseries(
        "CPU by daemon", "CPU seconds per second each daemon uses (1 = one core).", "none",
        [(f"sum by (job, pod) (rate(process_cpu_seconds_total{{{BOTH}}}[{RATE}]))",
          "{{pod}}")]), 8, 8)
    g.add(timeseries(
        "Memory by daemon",
        "Resident set size of each daemon (session state, staged tensors, buffers) and, "
        "dashed, its virtual memory size.",
        "bytes",
        [(f"sum by (job, pod) (process_resident_memory_bytes{{{BOTH}}})", "resident {{pod}}"),
         (f"sum by (job, pod) (process_virtual_memory_bytes{{{BOTH}}})", "virtual {{pod}}")],
        overrides=[by_name("virtual .*", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
                                          "custom.fillOpacity": 0})]), 8, 8)
    g.add(timeseries(
        "Open file descriptors",
        "Open descriptors of each daemon (sockets of the ring and gRPC included) as a share "
        "of its limit.",
        "percentunit",
        [(f"sum by (job, pod) (process_open_fds{{{BOTH}}}) / "
          f"sum by (job, pod) (process_max_fds{{{BOTH}}})", "{{pod}}")]), 8, 8)
    g.add(timeseries(
        "Uptime by daemon", "Time since each daemon started; a drop is a restart.", "s",
        [(f"time() - max by (job, pod) (process_start_time_seconds{{{BOTH}}})", "{{pod}}")]),
        24, 6)

    g.row("GPU workers")
    g.add(timeseries(
        "Device memory",
        "GPU memory each worker's backend holds, and what its device had free at the last "
        "admission check (a call that does not fit fails with RESOURCE_EXHAUSTED). Zero on "
        "CPU workers.",
        "bytes",
        [(f"sum by (pod) (ringattn_device_memory_bytes{{state=\"held\", {WORKER}}})",
          "held {{pod}}"),
         (f"sum by (pod) (ringattn_device_memory_bytes{{state=\"free\", {WORKER}}})",
          "free {{pod}}")],
        overrides=[by_name("free .*", {"custom.lineStyle": {"fill": "dash", "dash": [10, 10]},
                                       "custom.fillOpacity": 0})]), 12, 8)
    g.add(timeseries(
        "Host <-> device copies",
        "Bytes per second each worker's backend copies between host and device memory. The "
        "ring stages chunks through the host today, so this grows with ring traffic; a "
        "device-resident ring keeps it near zero after the upload.",
        "Bps",
        [(f"sum by (pod, direction) (rate(ringattn_host_device_copy_bytes_total{{{WORKER}}}"
          f"[{RATE}]))", "{{direction}} {{pod}}")]), 12, 8)
    return g.panels


def variables():
    def query_var(name, label, query):
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": query,
            "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
            "refresh": 2,
            "includeAll": True,
            "allValue": ".*",
            "multi": True,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
            "hide": 0,
            "options": [],
        }

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource",
         "query": "prometheus", "refresh": 1, "hide": 0, "current": {}, "options": [],
         "regex": ""},
        query_var("namespace", "Namespace", "label_values(ringattn_build_info, namespace)"),
        query_var("release", "Release",
                  'label_values(ringattn_build_info{namespace=~"$namespace"}, release)'),
    ]


def dashboard():
    return {
        "__inputs": [],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.4.0"},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "table", "name": "Table", "version": ""},
        ],
        "uid": "ringattn-service",
        "title": "ringattn",
        "description": "Ring attention service: requests, latency, ring steps, throughput, "
                       "memory, the ring's membership and the daemons' processes.",
        "tags": ["ringattn"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "refresh": "30s",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": variables()},
        "panels": build(),
    }


def render():
    return json.dumps(dashboard(), indent=2) + "\n"


CHART_COPY = pathlib.Path(__file__).resolve().parents[2] / "helm" / "ringattn" / "files"


def main():
    text = render()
    for out in (pathlib.Path(__file__).with_name("ringattn-dashboard.json"),
                CHART_COPY / "ringattn-dashboard.json"):
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()

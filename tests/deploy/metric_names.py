"""The ringattn metric names that the deployment files query.

`metric_names_in_deploy(repo_root)` reads every PromQL expression of the
Grafana dashboard (panel targets and template variable queries) and of the
Prometheus alert rules, and returns the `ringattn_*` and `process_*` metric
names they use,
as the daemons export them: a histogram's `_bucket`, `_sum` and `_count`
series count as the histogram's base name. Tests check these names against
what the service really exports.
"""

import json
import pathlib
import re

import yaml

DASHBOARD = pathlib.Path("deploy/grafana/ringattn-dashboard.json")
ALERT_RULES = pathlib.Path("deploy/prometheus/alerts.yml")

# A metric name in PromQL: starts a token, never preceded by a name
# character (so a label value like "ringattn-worker" never matches).
_METRIC = re.compile(r"(?<![A-Za-z0-9_:])(?:ringattn|process)_[A-Za-z0-9_:]*")
_HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def base_name(series):
    """The exported metric a series belongs to (histogram series to their base)."""
    return _HISTOGRAM_SERIES.sub("", series)


def dashboard_expressions(dashboard):
    """Every PromQL expression of a Grafana dashboard (dict), nested panels included."""
    exprs = []

    def panels(items):
        for p in items:
            for t in p.get("targets", []):
                if t.get("expr"):
                    exprs.append(t["expr"])
            panels(p.get("panels", []))

    panels(dashboard.get("panels", []))
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        for text in (q, v.get("definition")):
            if text:
                exprs.append(text)
    return exprs


def alert_expressions(rules):
    """Every `expr` of a Prometheus rule file (dict)."""
    return [r["expr"] for g in rules.get("groups", []) for r in g.get("rules", []) if "expr" in r]


def names_in(exprs):
    return {base_name(m) for e in exprs for m in _METRIC.findall(e)}


def metric_names_in_deploy(repo_root):
    """Base names of every ringattn_* and process_* metric the dashboard and alert rules query."""
    root = pathlib.Path(repo_root)
    dashboard = json.loads((root / DASHBOARD).read_text())
    rules = yaml.safe_load((root / ALERT_RULES).read_text())
    return names_in(dashboard_expressions(dashboard)) | names_in(alert_expressions(rules))

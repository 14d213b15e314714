"""grafana/dashboards/rabbit-serve.json charts only metrics that exist.

Every metric name in every panel's PromQL must be one the project defines
(``metrics.Counter/Gauge/Histogram("name", ...)`` in its own source) or one Ray Serve defines
in the installed Ray, as Ray's Prometheus export names it: ``ray_`` in front, ``_total`` after
a counter, ``_bucket``/``_sum``/``_count`` after a histogram. Both sets are read from the
source, so renaming a metric, or a tag the dashboard filters on, fails here rather than
leaving a panel that silently says "No data". tests/integration/test_metrics_export.py
evaluates the same expressions against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "rabbit-serve.json"
PROJECT_PACKAGES = ("rabbit_serve", "consumer", "ingress", "deployments")
RAY_SERVE = Path(ray.__file__).parent / "serve"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Tags every metric carries: ray.serve.metrics adds the replica's context; Ray's exporter
# adds the rest; Prometheus adds job and instance.
CONTEXT_TAGS = {"deployment", "replica", "application", "route"}
EXPORT_TAGS = {"Component", "NodeAddress", "SessionName", "Version", "WorkerId"}
EXPORT_TAGS |= {"job", "instance"}
# Serve formats some names per protocol: f"serve_num_{protocol_name}_requests".
PROTOCOLS = ("http", "grpc")
# What the dashboard's variables stand for when an expression is evaluated outside Grafana.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$application": ".*",
    "$deployment": ".*",
}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_WORDS |= {"and", "or", "unless", "offset", "inf", "nan"}

DEFINITION = re.compile(
    r"\bmetrics\.(?P<kind>Counter|Gauge|Histogram)\(\s*(?:name=)?f?\"(?P<name>[^\"]+)\""
)
TAG_KEYS = re.compile(r"tag_keys=\(([^)]*)\)")


@dataclass(frozen=True)
class Metric:
    name: str  # as exported: ray_..._total, ..._bucket
    tags: frozenset[str] | None  # None: not readable from the source (a variable)


def defined_metrics(files: list[Path]) -> dict[str, Metric]:
    """Exported series names, with their tags, of every metric defined in ``files``."""
    out: dict[str, Metric] = {}
    for path in files:
        text = path.read_text(encoding="utf-8")
        for match in DEFINITION.finditer(text):
            # The tag keys belong to this call: look no further than the next definition.
            rest = text[match.end() :]
            following = DEFINITION.search(rest)
            call = rest[: following.start() if following else 1500][:1500]
            keys = TAG_KEYS.search(call)
            tags: frozenset[str] | None = frozenset()  # no tag_keys: no tags of its own
            if keys is not None:
                tags = frozenset(re.findall(r"\"([^\"]+)\"", keys[1]))
            elif "tag_keys=" in call:
                tags = None  # tag_keys from a variable
            names = [match["name"]]
            if "{protocol_name}" in match["name"]:
                names = [match["name"].replace("{protocol_name}", p) for p in PROTOCOLS]
            for name in names:
                if "{" in name:
                    continue  # another formatted name: not one the dashboard can use
                suffixes = {"Counter": ["_total"], "Gauge": [""]}.get(
                    match["kind"], ["_bucket", "_sum", "_count"]
                )
                for suffix in suffixes:
                    series = f"ray_{name}{suffix}"
                    extra = {"le"} if suffix == "_bucket" else set()
                    out[series] = Metric(series, None if tags is None else tags | extra)
    return out


def project_metrics() -> dict[str, Metric]:
    files = [p for pkg in PROJECT_PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return defined_metrics(files)


def serve_metrics() -> dict[str, Metric]:
    return defined_metrics(sorted(RAY_SERVE.rglob("*.py")))


def known_metrics() -> dict[str, Metric]:
    return {**serve_metrics(), **project_metrics()}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows too; rows themselves are not panels that query."""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def panel_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title + refId, expr) for every query of every panel."""
    return [
        (f"{panel['title']} [{target['refId']}]", target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def substitute(expr: str) -> str:
    """The expression as Grafana sends it with "All" selected."""
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    return expr


def _strip_strings(expr: str) -> str:
    return re.sub(r"\"(?:[^\"\\]|\\.)*\"", '""', expr)


def balance_error(expr: str) -> str | None:
    """Why the brackets do not nest, or None; quoted strings are skipped."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _strip_strings(expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return f"unexpected {char!r}"
    return f"unclosed {stack[-1]!r}" if stack else None


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, labels it matches on) for every series selector in ``expr``."""
    text = _strip_strings(expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range durations
    text = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    found = []
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?(\s*\()?", text):
        name, matchers, call = match[1], match[2], match[3]
        if call or name.lower() in PROMQL_WORDS:
            continue  # a function or an operator, not a metric
        labels = set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", matchers or ""))
        found.append((name, labels))
    return found


def grouping_labels(expr: str) -> set[str]:
    text = _strip_strings(expr)
    groups = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", text)
    return {label.strip() for group in groups for label in group.split(",") if label.strip()}


def problems(expr: str, known: dict[str, Metric]) -> list[str]:
    """What is wrong with one expression: brackets, unknown metrics, unknown tags."""
    out = []
    error = balance_error(expr)
    if error:
        out.append(error)
    found = selectors(expr)
    if not found:
        out.append("no metric")
    allowed: set[str] = set()
    for name, labels in found:
        metric = known.get(name)
        if metric is None:
            out.append(f"unknown metric {name}")
            continue
        if metric.tags is None:
            allowed = set()  # one metric's tags unknown: grouping cannot be checked
            continue
        tags = metric.tags | CONTEXT_TAGS | EXPORT_TAGS
        allowed |= tags
        out += [f"{name} has no tag {label}" for label in sorted(labels - tags)]
    if allowed:
        out += [f"grouping by unknown tag {g}" for g in sorted(grouping_labels(expr) - allowed)]
    return out


# --------------------------------------------------------------------------- the checker


def test_the_source_scan_finds_the_projects_and_serves_metrics():
    project = project_metrics()
    assert project["ray_rabbit_serve_batch_size_bucket"].tags == frozenset({"le"})
    assert project["ray_rabbit_serve_consumer_messages_total"].tags == frozenset({"outcome"})
    serve = serve_metrics()
    assert {"route", "status_code", "application"} <= serve[
        "ray_serve_num_http_requests_total"
    ].tags
    assert "ray_serve_http_request_latency_ms_bucket" in serve
    assert "ray_serve_deployment_replica_healthy" in serve


def test_the_contracts_queue_depth_gauges_are_defined():
    # The queue-depth panels need these; they are the consumer's (consumer/backlog.py).
    project = project_metrics()
    for name, tags in (
        ("ray_rabbit_serve_queue_messages_ready", {"queue"}),
        ("ray_rabbit_serve_queue_consumers", {"queue"}),
        ("ray_rabbit_serve_consumer_unacked", set()),
    ):
        assert name in project, f"{name} is not defined in the project's source"
        assert tags <= (project[name].tags or set()), name


def test_the_checker_catches_renamed_metrics_tags_and_brackets():
    known = known_metrics()
    good = 'sum by (outcome) (rate(ray_rabbit_serve_consumer_messages_total{outcome="x"}[1m]))'
    assert problems(good, known) == []
    assert problems(good.replace("messages_total", "message_total"), known) == [
        "unknown metric ray_rabbit_serve_consumer_message_total"
    ]
    assert problems(good.replace('{outcome="x"}', '{result="x"}'), known) == [
        "ray_rabbit_serve_consumer_messages_total has no tag result"
    ]
    assert problems(good.replace("by (outcome)", "by (kind)"), known) == [
        "grouping by unknown tag kind"
    ]
    assert problems(good[:-1], known) == ["unclosed '('"]
    # A counter without Ray's _total suffix is not what Prometheus stores.
    assert problems("rate(ray_serve_num_http_requests[1m])", known) == [
        "unknown metric ray_serve_num_http_requests"
    ]
    assert "]" not in _strip_strings('x{route=~"/v1]"}')


# --------------------------------------------------------------------------- the dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_is_a_grafana_dashboard(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "rabbit-serve" and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None  # an id would clash on import
    ids = [p["id"] for p in dashboard["panels"]] + [
        p["id"] for row in dashboard["panels"] for p in row.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]


def test_dashboard_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("application", "deployment"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["includeAll"] and variable["allValue"] == ".*"
        assert (
            problems(
                re.sub(r"label_values\((.*), \w+\)", r"\1", variable["definition"]),
                {**known_metrics()},
            )
            == []
        )
    used = set(re.findall(r"\$(\w+)", json.dumps([e for _, e in panel_exprs(dashboard)])))
    assert used - {"__rate_interval", "__range"} <= set(variables), used


def test_every_panel_and_query_uses_the_datasource_variable(dashboard):
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_expression_parses_and_names_real_metrics(dashboard):
    known = known_metrics()
    found = {where: problems(expr, known) for where, expr in panel_exprs(dashboard)}
    assert {where: p for where, p in found.items() if p} == {}
    assert len(found) >= 10


def test_the_dashboard_covers_what_issue_11_asks_for(dashboard):
    used = {name for _, expr in panel_exprs(dashboard) for name, _ in selectors(expr)}
    assert {
        "ray_serve_num_http_requests_total",
        "ray_serve_http_request_latency_ms_bucket",
        "ray_rabbit_serve_batch_size_bucket",
        "ray_rabbit_serve_queue_wait_ms_bucket",
        "ray_rabbit_serve_consumer_messages_total",
        "ray_rabbit_serve_consumer_rework_total",
        "ray_rabbit_serve_queue_messages_ready",
        "ray_rabbit_serve_consumer_unacked",
        "ray_rabbit_serve_queue_consumers",
        "ray_serve_deployment_replica_healthy",
    } <= used
    exprs = " ".join(expr for _, expr in panel_exprs(dashboard))
    # Every consumer replica samples the same queue: ready is a max, unacked a sum.
    assert "max by (queue) (ray_rabbit_serve_queue_messages_ready" in exprs
    assert "sum(ray_rabbit_serve_consumer_unacked" in exprs
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le, route, status_code)" in exprs


def test_substitution_leaves_no_grafana_variable():
    for _, expr in panel_exprs(load_dashboard()):
        assert "$" not in substitute(expr), expr

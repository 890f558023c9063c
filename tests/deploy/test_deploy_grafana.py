"""The Grafana dashboard and its provisioning fit together and cover the issue's panels.

(The dashboard's queries are run against a real Prometheus in
tests/test_prometheus_scrape.py; here the JSON itself is checked.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import generate_latest

from streamcell.core.quantiles import Scores
from streamcell.service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana"


def dashboard() -> dict[str, Any]:
    return json.loads((GRAFANA / "dashboards" / "streamcell.json").read_text())


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_provisioning_points_at_the_dashboard_and_datasource() -> None:
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"  # the compose service
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": source["uid"]}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == source["uid"]
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/streamcell.yml").read_text())
    assert provider["providers"][0]["type"] == "file"


def test_layout_is_sound() -> None:
    dash = dashboard()
    assert dash["uid"] == "streamcell"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
    refs = [t["refId"] for p in panels() for t in p["targets"]]
    assert all(refs)


def test_the_issues_panels_are_there() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    legends = {p["title"]: " ".join(t["legendFormat"] for t in p["targets"]) for p in panels()}

    def panel_with(pattern: str) -> str:
        found = [t for t, e in exprs.items() if re.search(pattern, e)]
        assert found, f"no panel queries {pattern!r}"
        return found[0]

    panel_with(r"rate\(streamcell_(events|predictions)_total")  # throughput
    panel_with(r"histogram_quantile\(0\.99, sum by \(le, source\) \(rate\(streamcell_event_latency")
    panel_with(r"streamcell_consumer_lag_messages")
    panel_with(r"streamcell_active_streams")
    online = panel_with(r"streamcell_online_abs_error_sum")
    assert "by (model, version)" in exprs[online]
    assert "{{version}}" in legends[online]
    assert "streamcell_model_validation_mae" in exprs[online]
    coverage = panel_with(r"streamcell_interval_inside_total")
    assert "streamcell_interval_scored_total" in exprs[coverage]
    assert "{{interval}}" in legends[coverage] and "{{version}}" in legends[coverage]
    panel_with(r"streamcell_pinball_loss_sum")


def test_every_series_the_dashboard_reads_is_exported() -> None:
    metrics = Metrics()
    with metrics.restoring(1):
        pass
    metrics.online_abs_error.observe_many(np.ones(1), "m", "v")
    metrics.event_latency.observe_many(np.ones(1), "kafka")
    metrics.online_mae.labels("m", "v").set(1)
    metrics.validation_mae.labels("m", "v").set(1)
    metrics.dead_letters.labels("bad_json").inc()
    metrics.consumer_lag.labels("events", "0").set(1)
    metrics.model_reloads.labels("failed").inc()
    metrics.grpc_requests.labels("Predict", "OK").inc()
    metrics.grpc_seconds.labels("Predict").observe(0.01)
    metrics.record_model("m", "v", 1.0)
    metrics.record_scores(Scores(4, np.array([3]), np.ones(3)), (0.1, 0.5, 0.9), "m", "v")
    text = generate_latest(metrics.registry).decode()
    exported = set(re.findall(r"^([a-z_]+)", text, re.M))
    used = {
        name
        for p in panels()
        for t in p["targets"]
        for name in re.findall(r"\b((?:streamcell|process)_\w+)", t["expr"])
    }
    assert used and not used - exported, f"not exported: {sorted(used - exported)}"

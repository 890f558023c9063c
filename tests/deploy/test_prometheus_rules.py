"""deploy/prometheus passes promtool: the config, the rules, and the rules' own unit tests.

Each check runs the Debian ``promtool`` (``make system-deps`` installs it) and
fails on its non-zero exit; a broken config, a rule that does not parse, or an
alert that no longer fires where its unit test says it must, each fail here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package prometheus; make system-deps)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_config_is_valid() -> None:
    done = promtool("check", "config", PROM / "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 rule files found" in done.stdout + done.stderr


@needs_promtool
def test_rules_are_valid() -> None:
    rule_files = sorted((PROM / "rules").glob("*.yml"))
    assert rule_files
    done = promtool("check", "rules", *rule_files)
    assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_rules_unit_tests_pass() -> None:
    done = promtool("test", "rules", *sorted((PROM / "tests").glob("*.yml")))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_rules_unit_tests_catch_a_broken_rule(tmp_path: Path) -> None:
    """The unit tests can fail: loosen one threshold and promtool must say so."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "tests").mkdir()
    rules = (PROM / "rules" / "streamcell.yml").read_text()
    assert "> 0.05" in rules
    (tmp_path / "rules" / "streamcell.yml").write_text(rules.replace("> 0.05", "> 0.5"))
    for test in (PROM / "tests").glob("*.yml"):
        shutil.copy(test, tmp_path / "tests" / test.name)
    done = promtool("test", "rules", *sorted((tmp_path / "tests").glob("*.yml")))
    assert done.returncode != 0
    assert "StreamcellDeadLetterRateHigh" in done.stdout + done.stderr


def test_every_required_alert_exists_and_is_tested() -> None:
    """The issue's alerts are all there, and each one appears in the rules' unit tests."""
    groups = yaml.safe_load((PROM / "rules" / "streamcell.yml").read_text())["groups"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    required = {
        "StreamcellConsumerLagGrowing": "streamcell_consumer_lag_messages",
        "StreamcellDeadLetterRateHigh": "streamcell_dead_letters",
        "StreamcellOnlineErrorHigh": "streamcell_online_mae",
        "StreamcellNoModelLoaded": "streamcell_model_loaded",
        "StreamcellChangelogRestoreHanging": "streamcell_changelog_restor",
        "StreamcellIntervalCoverageOff": "streamcell_interval_inside_total",
    }
    for name in required:
        assert name in alerts, f"missing alert {name}"
        assert alerts[name]["labels"]["severity"] in {"warning", "critical"}
        assert alerts[name]["annotations"]["summary"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    exprs = " ".join([*recorded.values(), *(a["expr"] for a in alerts.values())])
    for needle in required.values():
        assert needle in exprs
    assert "streamcell_model_validation_mae" in exprs
    tested = set()
    for test_file in (PROM / "tests").glob("*.yml"):
        for case in yaml.safe_load(test_file.read_text())["tests"]:
            tested |= {t["alertname"] for t in case.get("alert_rule_test", [])}
    assert set(alerts) <= tested, f"alerts without a unit test: {sorted(set(alerts) - tested)}"


def test_metrics_named_in_rules_exist() -> None:
    """Every streamcell_* series a rule reads is one the service exports."""
    from prometheus_client import generate_latest

    from streamcell.core.quantiles import Scores
    from streamcell.service.metrics import Metrics

    metrics = Metrics()
    with metrics.restoring(1):
        pass
    metrics.online_abs_error.observe_many(np.ones(1), "m", "v")
    metrics.online_mae.labels("m", "v").set(1)
    metrics.validation_mae.labels("m", "v").set(1)
    metrics.dead_letters.labels("bad_json").inc()
    metrics.consumer_lag.labels("events", "0").set(1)
    metrics.model_reloads.labels("failed").inc()
    scores = Scores(4, np.array([3]), np.ones(3))
    metrics.record_scores(scores, (0.1, 0.5, 0.9), "m", "v")
    exposed = set(
        re.findall(r"^(streamcell_\w+)", generate_latest(metrics.registry).decode(), re.M)
    )
    groups = yaml.safe_load((PROM / "rules" / "streamcell.yml").read_text())["groups"]
    exprs = " ".join(r["expr"] for g in groups for r in g["rules"])
    used = set(re.findall(r"(?<![:\w])(streamcell_\w+)", exprs))  # not job:streamcell_...:rate
    assert "streamcell_online_mae" in used
    missing = sorted(u for u in used if u not in exposed)
    assert not missing, f"rules read series the service does not export: {missing}"

"""Write deploy/k8s/41-prometheusrule.yaml from rules/streamcell.yml (one source of the rules).

    python deploy/prometheus/to_prometheusrule.py

tests/test_deploy_k8s.py fails if the two disagree.
"""

from __future__ import annotations

from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules" / "streamcell.yml"
OUT = HERE.parent / "k8s" / "41-prometheusrule.yaml"
HEADER = """\
# The rules of deploy/prometheus/rules/streamcell.yml for the Prometheus operator.
# Generated: edit the rules there, then run deploy/prometheus/to_prometheusrule.py.
"""


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = ">" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "streamcell",
            "namespace": "streamcell",
            "labels": {
                "app.kubernetes.io/name": "streamcell",
                "app.kubernetes.io/part-of": "streamcell",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=100)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")

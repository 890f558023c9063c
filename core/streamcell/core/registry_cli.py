"""`streamcell models`: list the versions in a model registry."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "list model versions in a registry (newest last; the newest is served)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, type=Path, help="registry directory")
    parser.add_argument("--model", help="model name (default: every model in the registry)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from streamcell.core.checkpoint import check_name, list_versions, read_config
    from streamcell.core.errors import ConfigError

    if not args.registry.is_dir():
        raise ConfigError(f"registry {args.registry} is not a directory")
    names = (
        [check_name(args.model)]
        if args.model
        else sorted(
            p.name for p in args.registry.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
    )
    rows = []
    for name in names:
        for version in list_versions(args.registry, name):
            cfg = read_config(args.registry / name / version)
            rows.append(
                {
                    "model": name,
                    "version": version,
                    "layers": cfg.num_layers,
                    "hidden": cfg.hidden_size,
                    "features": list(cfg.features),
                    "targets": list(cfg.targets),
                    "metrics": cfg.metrics,
                }
            )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(f"{r['model']}\t{r['version']}\tlayers={r['layers']} hidden={r['hidden']}")
    return 0

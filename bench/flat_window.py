"""Recipe version 1 against version 2 on one trained model (docs/BENCHMARKS.md).

Each data set's ``lstm_default`` is trained once; the same weights and the
same calibration are then served with the recipe's ``version`` set to 1 and
to 2 (streamcell.core.recipe.level: a flat window served as its value), both
protocols through bench.accuracy's own scoring (the Predictor, Forecast and
the offline scorer). Besides the whole set's scores, the 80 % coverage on
the streams that are flat (one value from the last full scale window before
their test part to its end) and on the others.

    PYTHONPATH=core:service:trainer:demo:protos:. python -m bench.flat_window \
        heldout_aus_livestock heldout_pbs tourism_quarterly
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np


def flat_streams(ds: Any, window: int) -> set[str]:
    """Streams whose values from ``window`` rows before the test part on are all one."""
    out = set()
    for stream, y, n in ds.series():
        tail = np.asarray(y[max(0, n - window) :])
        if n < len(y) and len(tail) and (tail == tail[0]).all():
            out.add(stream)
    return out


def coverage(ds: Any, forecasts: dict[str, Any], streams: set[str]) -> dict[str, float]:
    """The 80 % interval's coverage of ``streams`` in both protocols (NaN: no points)."""
    from bench.accuracy import b_origins
    from bench.metrics import HIGH, LOW

    spec = b_origins(ds)
    inside = {"a": 0, "b": 0}
    points = {"a": 0, "b": 0}
    for stream, y, n in ds.series():
        f = forecasts[stream]
        if stream not in streams or n >= len(y):
            continue
        if f.one_step_q is not None:
            q = np.sort(np.asarray(f.one_step_q), axis=1)
            inside["a"] += int(((q[:, LOW] <= y[n:]) & (y[n:] <= q[:, HIGH])).sum())
            points["a"] += len(q)
        if spec is not None and f.origin_q is not None and spec[0].get(stream):
            truth = np.concatenate([y[o : o + spec[1]] for o in spec[0][stream]])
            q = np.sort(np.asarray(f.origin_q).reshape(len(truth), -1), axis=1)
            inside["b"] += int(((q[:, LOW] <= truth) & (truth <= q[:, HIGH])).sum())
            points["b"] += len(q)
    return {p: inside[p] / points[p] if points[p] else float("nan") for p in inside}


def run(name: str) -> dict[str, Any]:
    from bench import lstm
    from bench.accuracy import recipe_forecasts, recipe_settings, summarize
    from streamcell.trainer import datasets
    from streamcell.trainer.api import TrainResult

    ds = datasets.load(name)
    started = time.perf_counter()
    trained, _ = lstm.train(ds, recipe_settings("lstm_default"))
    config = trained.config
    flat = flat_streams(ds, config.history.scale_window)
    others = {s for s, _, _ in ds.series()} - flat
    out: dict[str, Any] = {
        "streams": len(others) + len(flat),
        "flat_streams": len(flat),
        "horizon": config.horizon,
        "train_seconds": round(time.perf_counter() - started, 1),
    }
    for version in (1, 2):
        cfg = replace(config, recipe={**config.recipe, "version": version})
        result = TrainResult(trained.model, cfg, trained.history)
        forecasts, _ = recipe_forecasts(ds, result)
        summary = summarize(ds, forecasts)
        keys = ("a_mase", "b_mase", "a_coverage80", "a_wql", "b_coverage80", "b_wql")
        row = {k: summary.get(k) for k in keys}
        row["flat_coverage80"] = coverage(ds, forecasts, flat)
        row["other_coverage80"] = coverage(ds, forecasts, others)
        out[f"v{version}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datasets", nargs="+")
    args = parser.parse_args()
    for name in args.datasets:
        print(name, json.dumps(run(name)), flush=True)


if __name__ == "__main__":
    main()

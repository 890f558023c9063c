"""vic_elec's protocol B from many origins (one filter) against statsmodels from a few.

    .venv/bin/python -m bench.origins_check              # origins 0, 182 and 364
    .venv/bin/python -m bench.origins_check --origins 0  # one: each is a filter of 35,000+ points

SARIMA: bench.baselines.sarima_origins (all 365 midnights, one filter) against
statsmodels' own forecast and get_forecast variance, one filter of y[:o] per
origin checked. ETS: bench.baselines.ets_origins against statsmodels'
forecast from a smoothing of y[:o] and its simulate from the same errors.
Prints the largest relative differences as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from bench import baselines
from bench.accuracy import b_origins
from streamcell.trainer import datasets


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--origins", default="0,182,364", help="indices among the 365")
    args = parser.parse_args(argv)
    picks = [int(k) for k in args.origins.split(",") if k]
    ds = datasets.load("vic_elec")
    ((stream, y, n),) = list(ds.series())
    spec = b_origins(ds)
    assert spec is not None
    starts, h = spec[0][stream], spec[1]
    m = ds.period
    out: dict[str, object] = {"origins": [starts[k] for k in picks]}

    started = time.perf_counter()
    params = baselines._fit_sarima(y[:n], m).params
    out["sarima_fit_s"] = round(time.perf_counter() - started, 1)
    print(out, file=sys.stderr, flush=True)
    started = time.perf_counter()
    mean, var = baselines.sarima_origins(y, n, m, starts, h, params=params)
    out["sarima_365_origins_s"] = round(time.perf_counter() - started, 1)
    diffs = []
    for k in picks:
        want_mean, want_var = baselines.sarima_statsmodels_origin(
            y[: starts[k]], m, params, h, low_memory=True
        )
        diffs.append((rel(mean[k], want_mean), rel(var[k], want_var)))
        print(starts[k], diffs[-1], file=sys.stderr, flush=True)
    out["sarima_max_rel_diff_mean"] = max(d[0] for d in diffs)
    out["sarima_max_rel_diff_var"] = max(d[1] for d in diffs)

    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    ets_spec = baselines._ets_spec(y, m)
    fitted = baselines._fit_ets(y[:n], ets_spec)
    started = time.perf_counter()
    sim = baselines.ets_origins(y, n, m, starts, h, fitted=fitted)
    out["ets_365_origins_s"] = round(time.perf_counter() - started, 1)
    full = ETSModel(y, **ets_spec).smooth(fitted.params)
    draws = np.random.default_rng(0).standard_normal((len(starts), h, baselines.ETS_PATHS))
    sigma = np.sqrt(fitted.scale)
    mean_d, path_d = [], []
    for k in picks:
        o = starts[k]
        own = ETSModel(y[:o], **ets_spec).smooth(fitted.params).forecast(h)
        mean_d.append(rel(sim.mean[k], np.asarray(own)))
        errors = draws[k] * sigma
        paths = full.simulate(
            h, anchor=o - 1, repetitions=baselines.ETS_PATHS, random_errors=errors
        )
        path_d.append(rel(sim.paths[k], np.asarray(paths)))
    out["ets_max_rel_diff_mean"] = max(mean_d)
    out["ets_max_rel_diff_paths"] = max(path_d)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

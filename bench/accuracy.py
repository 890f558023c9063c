"""The accuracy benchmark: the LSTM against baselines on four real data sets.

    .venv/bin/python -m bench.accuracy                 # everything, table to stdout
    .venv/bin/python -m bench.accuracy --datasets vic_elec --methods last_value,lstm
    .venv/bin/python -m bench.accuracy --tune          # LSTM settings on validation only

Protocol A (online, h = 1, as serving sees it): warm up on the training part;
then for each test step predict, score, and only then reveal the value. Mean
MASE over series (scale: the in-sample seasonal-naive MAE, m = 12, 4, 12, 48)
and RMSE pooled over every test point. Protocol B (fixed origin): Tourism's
official horizons (24, 8) and aus_retail's h = 24 from the end of the
training part; vic_elec h = 48 from each midnight of the test year, MASE
averaged over the 365 origins (and so any set with ``origin_every``: the
hourly and 5-minute held-out ones from each day's start); mean MASE over series.

``lstm_default`` is ``streamcell train``'s defaults (TrainSettings() with the
CLI's time budget and candidates: nothing per data set); ``lstm_tuned`` the
same with a wider candidate set and budget, chosen on validation only.

SARIMA, ETS and River results are cached under bench/accuracy_cache/;
SARIMA's and ETS's vic_elec protocol B (365 origins) comes from one filter
over the series each (bench.baselines.many_origins), cached apart. SARIMA is
left out past a period of 100 (:data:`SARIMA_MAX_PERIOD`).
The LSTM rows run ``--jobs`` at a time (2), each in a process of its own with
``--threads`` torch threads (the CPUs over the jobs), the costliest first.
Results go to bench/accuracy_results.json; the table is printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np

from bench import cache
from bench.baselines import CACHED, MANY_ORIGINS, METHODS, Forecasts, many_origins
from bench.metrics import (
    LEVELS,
    interval_scores,
    mase,
    mase_scale,
    mean_ignoring_nan,
    quantile_sums,
    rmse,
)
from streamcell.trainer import datasets, heldout_datasets
from streamcell.trainer.datasets import Dataset

RESULTS = Path(__file__).with_name("accuracy_results.json")

# Chosen on the validation split of the training part (see docs/BENCHMARKS.md).
# "lstm": the value alone in (vic_elec: with the temperature), the next value
# out (autoregressive: protocols A and B). "lstm_lags": each event also carries
# the stream's previous values (lags - 1 of them: two seasons, one day + 1),
# protocol A only: its targets are not its features, so it has no Forecast.
_BASE = dict(hidden=64, layers=2, lr=1e-3, batch_size=16, window=24, epochs=60, patience=15)
_VIC = {**_BASE, "batch_size": 1, "window": 48, "epochs": 10, "patience": 4}  # one stream
LSTM_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "lstm": {
        "tourism_monthly": {**_BASE, "window": 36},
        "tourism_quarterly": _BASE,
        "aus_retail": _BASE,
        "vic_elec": _VIC,
    },
    "lstm_lags": {
        "tourism_monthly": {**_BASE, "hidden": 128, "layers": 1, "lags": 24},
        "aus_retail": {**_BASE, "hidden": 128, "layers": 1, "lags": 24},
        "vic_elec": {**_VIC, "epochs": 15, "lags": 49},
    },
}
RECIPE_METHODS = ("lstm_default", "lstm_tuned")
ALL_METHODS = (*METHODS, *LSTM_SETTINGS, *RECIPE_METHODS)
# The run's default: the earlier per-data-set variants (lstm, lstm_lags) on request only.
DEFAULT_METHODS = (*METHODS, *RECIPE_METHODS)
# What lstm_tuned tries (overrides of the defaults), chosen by validation MASE.
TUNED_CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    {"horizon": 1},
    {"hidden": 64},
    {"hidden": 64, "horizon": 1},
    {"horizon": 1, "seed": 1},
)
TUNED_BUDGET = 300.0
# The best candidates of the chosen head averaged where that validates better.
TUNED_AVERAGE_TOP = 3
# The chosen candidate's runs in all (other seeds), joining that average where it
# validates better still (streamcell.trainer.select.train_seeds). Two, as the
# defaults: a third was no better on their sets and doubles the tuned rows' time.
TUNED_SEEDS = 2
# lstm_tuned chooses once per protocol (A: online validation, B: fixed origin).
TUNED_PER_PROTOCOL = True


def recipe_settings(method: str):
    """The TrainSettings of lstm_default / lstm_tuned (the same for every data set)."""
    from streamcell.trainer.api import TrainSettings
    from streamcell.trainer.cli import DEFAULT_SEEDS, DEFAULT_TIME_BUDGET
    from streamcell.trainer.settings import DEFAULT_CANDIDATES

    if method == "lstm_default":
        return TrainSettings(
            time_budget=DEFAULT_TIME_BUDGET, candidates=DEFAULT_CANDIDATES, seeds=DEFAULT_SEEDS
        )
    return TrainSettings(
        time_budget=TUNED_BUDGET,
        candidates=TUNED_CANDIDATES,
        average_top=TUNED_AVERAGE_TOP,
        seeds=TUNED_SEEDS,
    )


def b_origins(ds: Dataset) -> tuple[dict[str, list[int]], int] | None:
    """Protocol B: per stream the rows its forecasts start at, and the horizon.

    A data set with ``origin_every`` (vic_elec's 48, a day) is forecast that many
    steps ahead from every that many steps of each stream's test part; the rest
    from the end of the training part, ``horizon`` ahead.
    """
    every = ds.origin_every
    if every is not None:
        spans = {s: list(range(n, len(y) - every + 1, every)) for s, y, n in ds.series()}
        return {s: starts for s, starts in spans.items() if starts}, every
    if ds.horizon is None:
        return None
    return {s: [n] for s, y, n in ds.series() if n + ds.horizon <= len(y)}, ds.horizon


def naive_origins(
    ds: Dataset, method: str
) -> dict[str, tuple[np.ndarray | None, np.ndarray | None]]:
    """Last value / seasonal naive from every protocol-B origin (``origin_every``'s many).

    Seasonal naive also gets its empirical intervals (its errors over the training part).
    """
    from bench.baselines import _lag_error_quantiles

    spec = b_origins(ds)
    assert spec is not None
    starts, h = spec
    out: dict[str, tuple[np.ndarray | None, np.ndarray | None]] = {}
    for stream, y, n in ds.series():
        paths, bands = [], []
        m = ds.period
        errs = np.stack([_lag_error_quantiles(y[:n], (1 + k // m) * m) for k in range(h)])
        for o in starts.get(stream, []):
            if method == "last_value":
                paths.append(np.full(h, y[o - 1]))
            else:
                paths.append(np.array([y[o - m + (k % m)] for k in range(h)]))
                bands.append(paths[-1][:, None] + errs)
        out[stream] = (
            np.concatenate(paths) if paths else None,
            np.concatenate(bands) if bands else None,
        )
    return out


def model_origins(ds: Dataset, method: str, fp: str) -> cache.Origins:
    """SARIMA / ETS from every protocol-B origin (``origin_every``'s many), cached.

    One fit on the training part and one filter over the whole series
    (bench.baselines.many_origins), not one filter per origin.
    """
    name = f"{method}_origins"
    key = cache.cache_key(fp, name)
    hit = cache.load_origins(ds, name, key)
    if hit is not None:
        return hit
    spec = b_origins(ds)
    assert spec is not None
    starts, h = spec
    out: cache.Origins = {
        stream: many_origins(method, y, n, ds.period, starts[stream], h)
        for stream, y, n in ds.series()
        if starts.get(stream)
    }
    cache.save_origins(ds, name, key, out)
    return out


# What --tune tries by default (overrides of the "lstm" settings).
TUNE_GRID: list[dict[str, Any]] = [
    {},
    {"hidden": 128, "layers": 1},
    {"lags": 12},
    {"lags": 24},
]
COMMON = dict(scaling="stream_mean_abs", val_fraction=0.2, seed=0)


def settings_for(method: str, name: str, **overrides: Any):
    """The TrainSettings of a data set's LSTM (``lags`` is the benchmark's, not the trainer's)."""
    from streamcell.trainer.api import TrainSettings

    merged = {**COMMON, **LSTM_SETTINGS[method][name], **overrides}
    merged.pop("lags", None)
    return TrainSettings(**merged)


def lags_for(method: str, name: str, **overrides: Any) -> int:
    return int({**LSTM_SETTINGS[method][name], **overrides}.get("lags", 1))


# ------------------------------------------------------------------- baselines
def _run_series(args: tuple[str, np.ndarray, int, int, int | None]) -> Forecasts:
    method, y, n, m, horizon = args
    if n >= len(y):  # training-only series (aus_retail's discontinued ones): not scored
        levels = len(LEVELS)
        return Forecasts(
            np.empty(0),
            None if horizon is None else np.full(horizon, np.nan),
            np.empty((0, levels)),
            None if horizon is None else np.full((horizon, levels), np.nan),
        )
    return METHODS[method](y, n, m, horizon)


def baseline(ds: Dataset, method: str, jobs: int, fp: str) -> dict[str, Forecasts]:
    key = cache.cache_key(fp, method)
    if method in CACHED:
        hit = cache.load(ds, method, key)
        if hit is not None:
            return hit
    series = list(ds.series())
    work = [(method, y, n, ds.period, ds.horizon) for _, y, n in series]
    if jobs > 1 and method in CACHED:
        with ProcessPoolExecutor(jobs) as pool:
            out = list(pool.map(_run_series, work, chunksize=4))
    else:
        out = [_run_series(w) for w in work]
    result = {stream: f for (stream, _, _), f in zip(series, out, strict=True)}
    if method in CACHED:
        cache.save(ds, method, key, result)
    return result


# --------------------------------------------------------------------- scoring
def summarize(ds: Dataset, forecasts: dict[str, Forecasts]) -> dict[str, Any]:
    """Protocol A mean MASE and pooled RMSE; protocol B mean MASE where there is one.

    Where the method has quantiles: the 80% interval's coverage and the mean
    weighted quantile loss (bench.metrics), pooled over series, both protocols.
    """
    a_mase, b_mase, actual, predicted = [], [], [], []
    a_q = b_q = None
    spec = b_origins(ds)
    width = len(LEVELS) + 3
    for stream, y, n in ds.series():
        if n >= len(y):
            continue
        f = forecasts[stream]
        scale = mase_scale(y[:n], ds.period)
        a_mase.append(mase(y[n:], f.one_step, scale))
        actual.append(y[n:])
        predicted.append(f.one_step)
        if f.one_step_q is not None:
            a_q = (np.zeros(width) if a_q is None else a_q) + quantile_sums(y[n:], f.one_step_q)
        if spec is not None and f.origin is not None and spec[0].get(stream):
            starts, h = spec[0][stream], spec[1]
            paths = np.asarray(f.origin, np.float64).reshape(len(starts), h)
            scores = [mase(y[o : o + h], p, scale) for o, p in zip(starts, paths, strict=True)]
            b_mase.append(float(np.mean(scores)))
            if f.origin_q is not None:
                truth = np.concatenate([y[o : o + h] for o in starts])
                q = np.asarray(f.origin_q, np.float64).reshape(len(truth), len(LEVELS))
                b_q = (np.zeros(width) if b_q is None else b_q) + quantile_sums(truth, q)
    out: dict[str, Any] = {
        "a_mase": mean_ignoring_nan(a_mase),
        # Beside the mean, which one series far outside its own history can decide.
        "a_mase_median": float(np.nanmedian(a_mase)) if a_mase else float("nan"),
        "a_rmse": rmse(np.concatenate(actual), np.concatenate(predicted)),
        "series_scored": len(a_mase),
    }
    if b_mase:
        out["b_mase"] = mean_ignoring_nan(b_mase)
        out["b_mase_median"] = float(np.nanmedian(b_mase))
    for prefix, sums in (("a", a_q), ("b", b_q)):
        if sums is not None:
            band = interval_scores(sums)
            out[f"{prefix}_coverage80"], out[f"{prefix}_wql"] = band["coverage80"], band["wql"]
    return out


def run(
    names: list[str], methods: list[str], jobs: int, save: Any = None, threads: int = 1
) -> dict[str, Any]:
    """Every method on every data set; ``save(results)`` after each row (a crash keeps them).

    With ``jobs`` > 1 the LSTM rows run in that many processes of ``threads``
    torch threads each, the costliest first (each trains on its own budget's
    CPU clock, so running beside another changes its time, not its model),
    and the baselines meanwhile in this process.
    """
    loaded = {name: datasets.load(name) for name in names}
    rows = [(n, m) for n in names for m in methods if _applies(n, m, loaded[n])]
    slow = sorted(
        (r for r in rows if r[1] in TRAINED), key=lambda r: _cost(loaded[r[0]], r[1]), reverse=True
    )
    done: dict[tuple[str, str], dict[str, Any]] = {}

    def finish(row: tuple[str, str], summary: dict[str, Any]) -> None:
        done[row] = summary
        print(f"{row[0]:18s} {row[1]:20s} {_fmt(summary)}", file=sys.stderr, flush=True)
        if save is not None:
            save(_in_order(rows, done))

    if jobs > 1 and slow:
        spawn = multiprocessing.get_context("spawn")  # no forked torch threads
        with ProcessPoolExecutor(
            min(jobs, len(slow)), mp_context=spawn, initializer=_set_threads, initargs=(threads,)
        ) as pool:
            futures = {pool.submit(row_summary, n, m, 1): (n, m) for n, m in slow}
            for name, method in rows:
                if (name, method) not in slow:
                    finish((name, method), row_summary(name, method, jobs, loaded[name]))
            for future in as_completed(futures):
                finish(futures[future], future.result())
    else:
        for name, method in rows:
            finish((name, method), row_summary(name, method, jobs, loaded[name]))
    return _in_order(rows, done)


# The rows that train an LSTM (the rest are baselines, cached or quick).
TRAINED = (*RECIPE_METHODS, *LSTM_SETTINGS)


def _applies(name: str, method: str, ds: Dataset | None = None) -> bool:
    if method == "sarima" and ds is not None and ds.period > SARIMA_MAX_PERIOD:
        return False
    return method not in LSTM_SETTINGS or name in LSTM_SETTINGS[method]


# SARIMA's state is m + 1 wide and a Kalman step costs its cube: past this period
# (bank_calls' day of 169 five-minute steps) its fit takes too long to run here
# (docs/BENCHMARKS.md, "Hourly and five-minute data"), so the row is left out.
SARIMA_MAX_PERIOD = 100


def _cost(ds: Dataset, method: str) -> tuple[float, int]:
    """What orders the LSTM rows, costliest first: the training budget, then the
    protocol-B steps to forecast (vic_elec's 365 origins), then the rows."""
    from streamcell.trainer.cli import DEFAULT_TIME_BUDGET

    budget = TUNED_BUDGET if method == "lstm_tuned" else DEFAULT_TIME_BUDGET
    starts, h = b_origins(ds) or ({}, 0)
    return budget, sum(map(len, starts.values())) * (h or 0) + len(ds.part("train"))


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _in_order(rows: list[tuple[str, str]], done: dict[tuple[str, str], Any]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, method in rows:
        if (name, method) in done:
            results.setdefault(name, {})[method] = done[(name, method)]
    return results


def row_summary(name: str, method: str, jobs: int, ds: Dataset | None = None) -> dict[str, Any]:
    """One method's scores on one data set, with its training record and seconds."""
    ds = datasets.load(name) if ds is None else ds
    started = time.perf_counter()
    info: dict[str, Any] = {}
    if method in RECIPE_METHODS and (method != "lstm_tuned" or not TUNED_PER_PROTOCOL):
        from bench import lstm

        trained, info = lstm.train(ds, recipe_settings(method))
        forecasts, extra = recipe_forecasts(ds, trained)
        info.update(extra)
    elif method in RECIPE_METHODS:
        forecasts, info = per_protocol(ds, recipe_settings(method))
    elif method in LSTM_SETTINGS:
        from bench import lstm

        lags = lags_for(method, name)
        trained, info = lstm.train(ds, settings_for(method, name), lags=lags)
        forecasts = lstm.score(ds, trained, f"bench-{name}", lags=lags)
    else:
        fp = cache.fingerprint(ds)
        forecasts = baseline(ds, method, jobs, fp)
        paths: cache.Origins | None = None
        many = ds.origin_every is not None
        if many and method in ("last_value", "seasonal_naive"):
            paths = naive_origins(ds, method)
        elif many and method in MANY_ORIGINS:
            paths = model_origins(ds, method, fp)
        if paths is not None:
            forecasts = {
                s: Forecasts(f.one_step, paths[s][0], f.one_step_q, paths[s][1])
                for s, f in forecasts.items()
            }
    summary = summarize(ds, forecasts)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if info:
        summary["training"] = info
    return summary


def recipe_forecasts(ds: Dataset, trained: Any) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """Both protocols of a recipe model, through the Predictor and the offline scorer."""
    from bench import lstm

    info: dict[str, Any] = {}
    forecasts = lstm.score(ds, trained, f"bench-{ds.name}", every_row=True)
    # The offline path (serving's functions): A's quantiles everywhere, and
    # vic_elec's B from every midnight with the temperature known.
    many = ds.origin_every is not None
    starts, h = b_origins(ds) or ({}, None)
    if not many:
        starts = {}
    offline = lstm.score_recipe(ds, trained, starts, h)
    info["offline_a_max_diff"] = max(
        float(np.max(np.abs(offline[s].one_step - f.one_step), initial=0.0))
        for s, f in forecasts.items()
    )
    forecasts = {
        s: Forecasts(
            f.one_step,
            offline[s].origin if many else f.origin,
            offline[s].one_step_q,
            offline[s].origin_q if many else f.origin_q,
        )
        for s, f in forecasts.items()
    }
    if trained.config.calibration is not None:
        info["uncalibrated"] = uncalibrated_intervals(ds, trained, forecasts)
    return forecasts, info


def per_protocol(ds: Dataset, settings: Any) -> tuple[dict[str, Forecasts], dict[str, Any]]:
    """lstm_tuned: protocol A from the model chosen on online validation, B from the one
    chosen on fixed-origin validation (one set of candidates; two models where they differ).

    ``info`` is the B model's record, with the A model's under ``online_model`` and
    each model's scores in both protocols under ``models``.
    """
    from bench import lstm

    made = lstm.train_per_protocol(ds, settings)
    scored = {}
    for protocol, (trained, info) in made.items():
        if protocol == "online" and trained is made["origin"][0]:
            scored[protocol] = scored["origin"]
            continue
        forecasts, extra = recipe_forecasts(ds, trained)
        scored[protocol] = (forecasts, {**info, **extra})
    a, b = scored["online"][0], scored["origin"][0]
    forecasts = {
        s: Forecasts(a[s].one_step, f.origin, a[s].one_step_q, f.origin_q) for s, f in b.items()
    }
    info = dict(scored["origin"][1])
    info["online_model"] = (
        scored["online"][1] if made["online"][0] is not made["origin"][0] else "the same"
    )
    info["models"] = {
        p: {k: v for k, v in summarize(ds, f).items() if k != "series_scored"}
        for p, (f, _) in scored.items()
    }
    return forecasts, info


def uncalibrated_intervals(
    ds: Dataset, trained: Any, forecasts: dict[str, Forecasts]
) -> dict[str, Any]:
    """Coverage and wQL of the same model with its calibration left out (both protocols,
    through the offline scorer: the functions serving calls, seeded as it seeds)."""
    from bench import lstm

    starts, h = b_origins(ds) or ({}, None)
    raw = lstm.score_recipe(ds, lstm.uncalibrated(trained), starts, h)
    summary = summarize(
        ds,
        {
            s: Forecasts(f.one_step, f.origin, raw[s].one_step_q, raw[s].origin_q)
            for s, f in forecasts.items()
        },
    )
    keys = ("a_coverage80", "a_wql", "b_coverage80", "b_wql")
    return {k: summary[k] for k in keys if k in summary}


def tune(names: list[str], grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train each grid point (overrides of "lstm"'s settings) on the training part.

    Reports validation scores only (the last 20% of each training part,
    one step ahead, MASE against the last-value scale): the test part is
    never looked at.
    """
    from bench import lstm

    rows = []
    for name in names:
        ds = datasets.load(name)
        for point in grid:
            settings = settings_for("lstm", name, **point)
            _, info = lstm.train(ds, settings, lags=lags_for("lstm", name, **point))
            row = {"dataset": name, **point, **{k: info[k] for k in _TUNE_KEYS}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


_TUNE_KEYS = ("val_mase_last_value_scale", "val_mae", "best_epoch", "seconds")


def _fmt(summary: dict[str, Any]) -> str:
    parts = [f"A MASE {summary['a_mase']:.3f}", f"A RMSE {summary['a_rmse']:.1f}"]
    if "b_mase" in summary:
        parts.append(f"B MASE {summary['b_mase']:.3f}")
    return "  ".join(parts) + f"  ({summary['seconds']} s)"


# Figures from issue 5: protocol A measured there (mean MASE, h = 1), and
# protocol B as published (statsforecast AutoETS / AutoARIMA, seasonal naive).
REFERENCE: dict[tuple[str, str], str] = {
    ("tourism_monthly", "last_value"): "2.83",
    ("tourism_monthly", "seasonal_naive"): "1.42 / 1.631",
    ("tourism_monthly", "sarima"): "1.15 / 1.483 (AutoARIMA)",
    ("tourism_monthly", "ets"): "1.18 / 1.531 (AutoETS)",
    ("tourism_quarterly", "last_value"): "3.91",
    ("tourism_quarterly", "seasonal_naive"): "1.38 / 1.699",
    ("tourism_quarterly", "sarima"): "1.14 / 1.597 (AutoARIMA)",
    ("tourism_quarterly", "ets"): "1.14 / 1.599 (AutoETS)",
    ("aus_retail", "last_value"): "2.26",
    ("aus_retail", "seasonal_naive"): "1.15",
    ("aus_retail", "sarima"): "0.66",
    ("vic_elec", "last_value"): "0.31",
    ("vic_elec", "seasonal_naive"): "0.99",
    ("vic_elec", "river_snarimax"): "0.086 (tuned SNARIMAX)",
}


def markdown(results: dict[str, Any]) -> str:
    """One table: data set x method, protocol A MASE and RMSE, protocol B MASE, references."""
    lines = [
        "| data set | method | A: MASE (h=1) | A: RMSE | B: MASE (fixed origin) "
        "| issue 5: A / published B |",
        "|---|---|---:|---:|---:|---|",
    ]
    order = [*datasets.LOADERS, *heldout_datasets.LOADERS]
    names = sorted(results, key=order.index)
    for name in names:
        by_method = results[name]
        for method in sorted(by_method, key=ALL_METHODS.index):
            s = by_method[method]
            b = f"{s['b_mase']:.3f}" if "b_mase" in s else "-"
            ref = REFERENCE.get((name, method), "")
            lines.append(
                f"| {name} | {method} | {s['a_mase']:.3f} | {s['a_rmse']:.1f} | {b} | {ref} |"
            )
    lines += [
        "",
        "| data set | method | A: coverage 80% | A: wQL | B: coverage 80% | B: wQL |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name in names:
        by_method = results[name]
        for method in sorted(by_method, key=ALL_METHODS.index):
            s = by_method[method]
            if "a_wql" not in s and "b_wql" not in s:
                continue
            cells = [
                f"{s[key]:.3f}" if key in s else "-"
                for key in ("a_coverage80", "a_wql", "b_coverage80", "b_wql")
            ]
            lines.append(f"| {name} | {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(datasets.LOADERS))
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument(
        "--jobs", type=int, default=2, help="processes for the LSTM rows and uncached baselines"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per LSTM process (default: the CPUs over --jobs, at least 1)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--tune", action="store_true", help="LSTM settings grid, validation only")
    parser.add_argument(
        "--table", action="store_true", help="print the table of the last results file and exit"
    )
    parser.add_argument(
        "--grid", default=json.dumps(TUNE_GRID), help="--tune's grid: a JSON list of overrides"
    )
    args = parser.parse_args(argv)
    names = [n for n in args.datasets.split(",") if n]
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {', '.join(ALL_METHODS)}")
    if args.table:
        print(markdown(json.loads(args.output.read_text())["results"]))
        return 0
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    threads = (
        args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) // args.jobs)
    )
    if threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    _set_threads(threads)
    if args.tune:
        tune(names, json.loads(args.grid))
        return 0
    started = time.perf_counter()

    def save(results: dict[str, Any], complete: bool = False) -> None:
        record = {
            "results": results,
            "complete": complete,
            "seconds": round(time.perf_counter() - started, 1),
            "cpus": os.cpu_count(),
            "jobs": args.jobs,
            "threads": threads,
            "load_average": os.getloadavg(),
            "command": "python -m bench.accuracy " + " ".join(argv or sys.argv[1:]),
        }
        args.output.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")

    results = run(names, methods, args.jobs, save, threads)
    save(results, complete=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A new user's path, end to end: `streamcell train` at its defaults, `streamcell serve`, gRPC only.

    python bench/user_path.py --dataset heldout_prison [--train-args "--no-ray"] [--keep DIR]

What bench.accuracy measures through the trainer's Python API and the
Predictor in-process, this measures the way a user meets it: the data set's
training part written to a CSV in long format (stream, seq, value), trained
by the CLI with no flags but the required ones, served by the CLI (gRPC on a
loopback port, no Kafka), and driven over gRPC only. Every event of the data
set is sent in calendar order with PredictBatch, one calendar step a request;
each stream's Forecast (the data set's horizon) is asked for just before its
first test event. Scored as bench.accuracy scores (MASE over the in-sample
seasonal-naive MAE, mean over series): protocol A from the prediction
emitted after each event before a test point, protocol B from the Forecast,
beside last value, seasonal naive and, where bench/accuracy_cache holds it,
ETS.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.metrics import mase, mase_scale
from streamcell.service.broker import free_port
from streamcell.service.client import Client, event
from streamcell.trainer import datasets

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "streamcell.cli"]


def write_training_part(ds: datasets.Dataset, path: Path) -> None:
    frame = ds.part("train")[["stream", "seq", *ds.features]]
    frame.to_csv(path, index=False)


def train(csv: Path, registry: Path, extra: list[str]) -> float:
    started = time.perf_counter()
    command = [*CLI, "train", "--data", str(csv), "--registry", str(registry), "--model", "m"]
    subprocess.run([*command, *extra], check=True, cwd=ROOT)
    return time.perf_counter() - started


def serve(registry: Path, port: int) -> subprocess.Popen[bytes]:
    command = [*CLI, "serve", "--registry", str(registry), "--model", "m"]
    command += ["--grpc-host", "127.0.0.1", "--grpc-port", str(port), "--no-metrics"]
    command += ["--state-dir", str(registry.parent / "state")]  # not the shared default
    return subprocess.Popen(command, cwd=ROOT)


def wait_serving(client: Client, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"streamcell serve exited with {process.returncode}")
        try:
            if client.health(timeout=1.0) == "SERVING":
                return
        except Exception:  # not listening yet
            time.sleep(0.2)
    raise SystemExit(f"streamcell serve was not SERVING after {seconds} s")


def drive(client: Client, ds: datasets.Dataset) -> tuple[dict, dict]:
    """Every event in calendar order; (one-step predictions by (stream, seq), Forecasts)."""
    frame = ds.frame
    step = ds.step[frame.index.to_numpy()]
    ids = frame["stream"].astype(str).to_numpy()
    seqs = frame["seq"].to_numpy(np.int64)
    x = frame[list(ds.features)].to_numpy(np.float64)
    bounds = np.flatnonzero(np.diff(step)) + 1
    predicted: dict[tuple[str, int], float] = {}
    forecasts: dict[str, np.ndarray] = {}
    for rows in np.split(np.arange(len(frame)), bounds):
        for r in rows:
            if ds.horizon and seqs[r] == ds.n_train[ids[r]]:
                made = client.forecast(ids[r], ds.horizon)
                forecasts[ids[r]] = np.array([s.yhat[0] for s in made.steps])
        events = [event(ids[r], x[r].tolist(), seq=int(seqs[r])) for r in rows]
        for r, p in zip(rows, client.predict_batch(events), strict=True):
            predicted[(ids[r], int(seqs[r]))] = p.yhat[0]
    return predicted, forecasts


def score(ds: datasets.Dataset, predicted: dict, forecasts: dict) -> dict[str, tuple[float, float]]:
    from bench import cache

    ets = cache.load(ds, "ets", cache.cache_key(cache.fingerprint(ds), "ets"))  # None: not cached
    rows: dict[str, tuple[list[float], list[float]]] = {
        m: ([], []) for m in ("streamcell", "last_value", "seasonal_naive", "ets")
    }
    m, h = ds.period, ds.horizon
    for stream, y, n in ds.series():
        if n >= len(y):
            continue
        scale = mase_scale(y[:n], m)
        test = y[n:]
        one = np.array([predicted[(stream, q - 1)] for q in range(n, len(y))])
        a = {
            "streamcell": one,
            "last_value": y[n - 1 : len(y) - 1],
            "seasonal_naive": y[n - m : len(y) - m],
        }
        b = {
            "streamcell": forecasts.get(stream),
            "last_value": np.full(h, y[n - 1]),
            "seasonal_naive": np.array([y[n - m + (k % m)] for k in range(h)]),
        }
        if ets is not None:
            a["ets"], b["ets"] = ets[stream].one_step, ets[stream].origin
        for method, path in a.items():
            rows[method][0].append(mase(test, np.asarray(path)[: len(test)], scale))
        for method, path in b.items():
            if path is not None and n + h <= len(y):
                rows[method][1].append(mase(y[n : n + h], np.asarray(path)[:h], scale))
    return {
        k: (float(np.nanmean(a)), float(np.nanmean(b)) if b else float("nan"))
        for k, (a, b) in rows.items()
        if a
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="heldout_prison")
    p.add_argument("--train-args", default="", help="extra `streamcell train` flags")
    p.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = p.parse_args()
    ds = datasets.load(args.dataset)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        csv, registry = work / "train.csv", work / "registry"
        write_training_part(ds, csv)
        seconds = train(csv, registry, shlex.split(args.train_args))
        port = free_port()
        process = serve(registry, port)
        try:
            with Client(f"127.0.0.1:{port}", timeout=60.0) as client:
                wait_serving(client, process, 120.0)
                predicted, forecasts = drive(client, ds)
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    print(f"{ds.name}: streamcell train {seconds:.0f} s; mean MASE, A online / B fixed origin:")
    for method, (a, b) in score(ds, predicted, forecasts).items():
        print(f"  {method:15s} {a:7.3f} / {b:7.3f}")
    print(f"load average {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

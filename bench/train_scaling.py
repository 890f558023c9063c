"""Training throughput with 1 and 2 Ray workers (and the plain loop) on the same data.

    .venv/bin/python bench/train_scaling.py                # defaults below, ~2-3 minutes
    .venv/bin/python bench/train_scaling.py --json out.json

Samples are trained target points (one per stream per step of the training
part, all workers together); samples/s divides them by the training time of
the epochs (rank 0's clock; evaluation and Ray start-up excluded, reported
apart as wall time). Same synthetic data (noisy sines), same settings, same
epochs for every row. Numbers are noisy on a shared machine: run it when the
machine is otherwise idle, and compare rows of one run only.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=128)
    p.add_argument("--length", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32, help="streams per batch per worker")
    p.add_argument("--workers", default="1,2", help="comma-separated Ray worker counts")
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args()

    import ray

    from streamcell.trainer.api import TrainSettings, load_long_frame, train_local, train_with_ray
    from streamcell.trainer.synthetic import noisy_sines

    data = load_long_frame(noisy_sines(streams=args.streams, length=args.length, seed=0))
    settings = TrainSettings(
        hidden=args.hidden,
        layers=args.layers,
        epochs=args.epochs,
        window=args.window,
        batch_size=args.batch_size,
        patience=args.epochs,
    )
    rows = []

    def record(label: str, result, wall: float) -> None:
        t = result.config.training
        steady = result.history[1:] or result.history  # the first epoch warms kernels up
        row = {
            "run": label,
            "workers": t["workers"],
            "samples": sum(r["samples"] for r in result.history),
            "train_seconds": t["train_seconds"],
            "samples_per_s": t["samples_per_s"],
            "steady_samples_per_s": round(
                sum(r["samples"] for r in steady) / sum(r["seconds"] for r in steady), 1
            ),
            "wall_seconds": round(wall, 1),
            "val_mae": result.metrics["val_mae"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    for threads in (1, args.num_cpus):
        t0 = time.perf_counter()
        result = train_local(data, settings, threads=threads)
        record(f"plain loop, {threads} torch thread(s)", result, time.perf_counter() - t0)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        for workers in (int(w) for w in args.workers.split(",")):
            for threads in sorted({1, args.num_cpus // workers}):
                t0 = time.perf_counter()
                result = train_with_ray(data, settings, workers=workers, threads=threads)
                label = f"Ray Train, {workers} worker(s) x {threads} thread(s)"
                record(label, result, time.perf_counter() - t0)
    finally:
        ray.shutdown()

    print()
    print(
        f"data: {args.streams} streams x {args.length} steps; LSTM {args.layers}x{args.hidden}, "
        f"window {args.window}, batch {args.batch_size} streams/worker, {args.epochs} epochs; "
        f"torch {torch.__version__}, {torch.get_num_threads()} default threads"
    )
    print(
        "| run | samples/s, all epochs | samples/s, epochs 2+ | training s "
        "| wall s (with start-up, eval) | val MAE |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['run']} | {r['samples_per_s']:,.0f} | {r['steady_samples_per_s']:,.0f} "
            f"| {r['train_seconds']:.1f} | "
            f"{r['wall_seconds']:.1f} | {r['val_mae']:.4f} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()

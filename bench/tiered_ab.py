"""The 95 %-hot ratio of two (or more) code trees, measured side by side in one run.

    nice -n 10 .venv/bin/python bench/tiered_ab.py --trees /tmp/main-tree,. \
        --hot 100000 --streams 1000000 --warmup 1000 --rounds 100

For an old tree, e.g. ``git archive main core service trainer demo protos bench
| tar -x -C /tmp/main-tree`` and a ``.venv`` link in it. One worker process
per tree, each importing its own tree's code (PYTHONPATH under that tree),
builds as bench/tiered_state.py does (hidden 64, 2 layers, ``--hot`` streams
of room, ``--streams`` in all, the rest put in the cold tier directly): a
Predictor without a cold tier (all hot), one with a cold tier on all-hot
traffic, and one on 95 %-hot traffic (5 % uniform over the cold streams);
warms each on ``--warmup`` batches of its own traffic and settles the
RocksDB stores (tiered_state.settle_store). The workers are set up one after
the other; then the driver has them apply one batch of one mode at a time,
the order of the (tree, mode) pairs turned every round, so that all of them
share the machine's load. A worker times only ``predict`` (wall clock and
its thread's CPU time). Per tree: the medians and the ratio 95 % hot / all
hot, of the medians, of the means (a cost paid in some batches only, as a
write of spills held behind, counts there) and per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

MODES = ("all hot, no cold tier", "all hot, with the cold tier", "95 % hot")
BATCH = 1024


def worker(hot: int, streams: int, warmup: int) -> None:
    """Serve batches of the three modes on stdin/stdout, in this tree's code."""
    import shutil
    import tempfile

    import numpy as np

    sys.path.insert(0, str(Path.cwd() / "bench"))
    import tiered_state as ts

    from streamcell.service import gc_pauses

    root = Path(tempfile.mkdtemp(prefix="tiered-ab-"))
    rng = np.random.default_rng(1)
    gc_pauses.settle()
    cold_n = streams - hot
    plain = ts.make_predictor(hot, None)
    ts.fill_hot(plain, hot, rng)
    tiered = []
    for name in ("all-hot", "mixed"):
        p = ts.make_predictor(hot, root / name)
        ts.fill_hot(p, hot, rng)
        ts.fill_cold(p, cold_n)
        tiered.append(p)
    all_hot, mixed = tiered
    shares = {MODES[0]: (plain, 1.0), MODES[1]: (all_hot, 1.0), MODES[2]: (mixed, 0.95)}

    def batch(share: float, t: float):
        return ts.mixed_batch(rng, BATCH, hot, cold_n if share < 1 else 0, share, t)

    t = 1.5e9
    for _ in range(warmup):
        for p, share in shares.values():
            t += 1
            p.predict(batch(share, t))
    for p in tiered:
        ts.settle_store(p.tiers.cold)
    counts = mixed.tiers.counts
    before = (counts.hits, counts.loads)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        p, share = shares[line.strip()]
        t += 1
        b = batch(share, t)  # made outside the timing
        wall, cpu = time.perf_counter(), time.thread_time()
        p.predict(b)
        print(json.dumps([time.perf_counter() - wall, time.thread_time() - cpu]), flush=True)
    hits, loads = counts.hits - before[0], counts.loads - before[1]
    print(json.dumps({"hit_ratio": hits / max(hits + loads, 1)}), flush=True)
    for p in tiered:
        p.tiers.cold.close()
    shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trees", required=True, help="comma-separated tree roots, each with .venv")
    ap.add_argument("--hot", type=int, default=100_000)
    ap.add_argument("--streams", type=int, default=1_000_000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.hot, a.streams, a.warmup)
        return
    import numpy as np

    trees = [str(Path(t).resolve()) for t in a.trees.split(",")]
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"{stamp} UTC, load average {os.getloadavg()}", flush=True)
    workers = []
    for tree in trees:  # one after the other: the fills do not overlap
        env = dict(os.environ, PYTHONPATH="core:service:trainer:demo:protos:.")
        env["OMP_WAIT_POLICY"] = "PASSIVE"
        args = ["--worker", "--trees", tree, "--hot", str(a.hot), "--streams", str(a.streams)]
        w = subprocess.Popen(
            [os.path.join(tree, ".venv/bin/python"), os.path.abspath(__file__), *args,
             "--warmup", str(a.warmup)],
            cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert w.stdout is not None and w.stdout.readline().strip() == "ready"
        workers.append(w)
    print(f"set up; load average {os.getloadavg()}", flush=True)
    jobs = [(i, m) for i in range(len(trees)) for m in MODES]
    times: dict[tuple[int, str], list[list[float]]] = {j: [] for j in jobs}
    for r in range(a.rounds):
        for i, mode in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
            w = workers[i]
            assert w.stdin is not None and w.stdout is not None
            w.stdin.write(mode + "\n")
            w.stdin.flush()
            times[(i, mode)].append(json.loads(w.stdout.readline()))
    hit_ratios = []
    for w in workers:
        assert w.stdin is not None and w.stdout is not None
        w.stdin.write("quit\n")
        w.stdin.flush()
        hit_ratios.append(json.loads(w.stdout.readline())["hit_ratio"])
        w.wait()
    stamp = time.strftime("%H:%M:%S", time.gmtime())
    print(f"{stamp} UTC, load average {os.getloadavg()}")
    for i, tree in enumerate(trees):
        print(f"{tree}: 95 % hot batches' streams found in memory {hit_ratios[i]:.3f}")
        arr = {m: np.array(times[(i, m)]) for m in MODES}
        for m in MODES:
            wall, cpu = np.median(arr[m][:, 0]), np.median(arr[m][:, 1])
            mean = arr[m][:, 1].mean()
            print(
                f"  {m:28s} median {wall * 1e3:6.2f} ms wall, {cpu * 1e3:6.2f} ms CPU "
                f"(mean {mean * 1e3:6.2f})"
            )
        for k, clock in ((1, "CPU"), (0, "wall")):
            mixed = arr[MODES[2]][:, k]
            for twin in MODES[:2]:
                per_round = np.percentile(arr[twin][:, k] / mixed, [25, 50, 75])
                of_medians = np.median(arr[twin][:, k]) / np.median(mixed)
                of_means = arr[twin][:, k].mean() / mixed.mean()  # every batch's time counts
                print(
                    f"  95 % hot / {twin} ({clock}): {of_medians:.3f} of the medians, "
                    f"{of_means:.3f} of the means; per round {per_round[1]:.3f} "
                    f"(quartiles {per_round[0]:.3f} to {per_round[2]:.3f})"
                )


if __name__ == "__main__":
    main()

"""Per-phase timings of the serve loop and of the garbage collector (bench only).

    STEP_PROBE=/tmp/probe.txt PYTHONPATH=bench/step_probe .venv/bin/python \\
        bench/kafka_e2e.py --events 20000 --naive-seconds 1 --clients confluent \\
        --latency --latency-rate 32000

Python imports this ``sitecustomize`` in every process started with that
``PYTHONPATH`` (the bench, the echo worker, each serve). Where ``STEP_PROBE``
is set, it wraps the Pipeline's phases, the confluent consumer's poll and
producer's send_many, the codec's decode and encode, and the snapshot calls,
records each collector pass through ``gc.callbacks``, and at exit appends one
block per process to the file: count, mean, p99 and max in ms, how many took
over 10 ms, and the total in seconds. docs/BENCHMARKS.md ("The latency tail,
found and cut", "Where the time goes") quotes its output.
"""

from __future__ import annotations

import atexit
import collections
import functools
import gc
import os
import sys
import time

PHASES = {  # class path -> its methods timed
    "pipeline.Pipeline": ("step", "process", "_expire"),
    "checkpointing.Checkpointer": ("advance", "begin", "_commit", "_take_changelog", "_send_paced"),
}
timings: dict[str, list[float]] = collections.defaultdict(list)


def _wrap(cls: type, name: str) -> None:
    fn = getattr(cls, name)

    @functools.wraps(fn)
    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timings[name].append((time.perf_counter() - start) * 1000)

    setattr(cls, name, timed)


def _on_gc(phase: str, info: dict, started: list[float] = [0.0]) -> None:  # noqa: B006
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        timings[f"gc{info['generation']}"].append((time.perf_counter() - started[0]) * 1000)


def _report() -> None:
    import numpy as np

    with open(os.environ["STEP_PROBE"], "a") as out:
        out.write(f"--- pid {os.getpid()} {' '.join(sys.argv)[:80]}\n")
        for name, values in timings.items():
            ms = np.array(values)
            out.write(
                f"{name:24s} n={len(ms):6d} mean={ms.mean():7.2f} "
                f"p99={np.percentile(ms, 99):7.2f} max={ms.max():7.2f} "
                f"over10={int((ms > 10).sum())} total={ms.sum() / 1000:7.3f}s\n"
            )


if os.environ.get("STEP_PROBE"):
    from streamcell.core import predictor, state
    from streamcell.service import changelog, checkpointing, codec, confluent_client, pipeline

    modules = {"pipeline": pipeline, "checkpointing": checkpointing}
    for path, names in PHASES.items():
        module, cls = path.split(".")
        for name in names:
            _wrap(getattr(modules[module], cls), name)
    _wrap(predictor.Predictor, "predict")
    _wrap(pipeline, "record_lag")  # the pipeline calls it through its own module
    _wrap(confluent_client.ConfluentConsumer, "poll")
    _wrap(confluent_client.ConfluentProducer, "send_many")
    _wrap(codec, "decode")  # the pipeline calls them through the module
    _wrap(codec, "encode_predictions")
    _wrap(state.StateStore, "snapshot_block")
    _wrap(state.StateStore, "contains")
    _wrap(changelog.Snapshots, "__init__")
    gc.callbacks.append(_on_gc)
    atexit.register(_report)

"""Serve's loop work under two (or more) code trees, in one process, poll by poll in turn.

    cd bench && ../.venv/bin/python process_ab.py ROUNDS LABEL=ROOT LABEL=ROOT ...

e.g. ``process_ab.py 3 main=/tmp/main new=..`` with ``/tmp/main`` a ``git archive``
of main. Each ROOT is a checkout (its ``core``, ``service`` and ``protos`` go first
on the import path while its objects are built); each tree gets its own Predictor
and Pipeline, made by its own modules, with the model of process_bench.py. Every
tree processes the same polls: the carried polls of process_bench.py (1,024
records, as serve's loop takes them when it is behind its input), each poll by
every tree one after the other, the order turned around every poll. What is
timed is the thread's CPU time of each ``Pipeline.process`` call.

Why: on a machine shared with other jobs, runs of process_bench.py one after
the other differ by tens of per cent (other processes' load comes and goes, and
takes the caches and the sibling hyperthread with it). Polls taken in turn in
one process meet the same load, so the difference between the trees' medians
is the code's. Two trees at a time: with more, their stores and models no
longer share the caches the way one serve's would.
"""

from __future__ import annotations

import importlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = list(sys.path)
NAMES = ("streamcell", "kafka_e2e", "kafka_bench", "process_bench")


def use(root: str) -> None:
    """Import from ``root`` from now on (the modules imported so far are dropped)."""
    for name in [m for m in sys.modules if m.startswith(NAMES)]:
        del sys.modules[name]
    sys.path[:] = [f"{root}/core", f"{root}/service", f"{root}/protos", ".", *BENCH]


def main() -> None:
    rounds = int(sys.argv[1])
    trees = [arg.split("=", 1) for arg in sys.argv[2:]]
    torch.set_num_threads(1)
    use(trees[0][1])
    kafka_e2e = importlib.import_module("kafka_e2e")
    registry = kafka_e2e.make_registry(Path(tempfile.mkdtemp()))
    pipelines = {}
    for label, root in trees:
        use(root)
        checkpoint = importlib.import_module("streamcell.core.checkpoint")
        predictor = importlib.import_module("streamcell.core.predictor")
        metrics = importlib.import_module("streamcell.service.metrics")
        pipeline = importlib.import_module("streamcell.service.pipeline")
        settings = importlib.import_module("streamcell.service.settings")
        bench = importlib.import_module("process_bench")
        if not Path(checkpoint.__file__).resolve().is_relative_to(Path(root).resolve()):
            raise SystemExit(f"{label}: streamcell came from {checkpoint.__file__}, not {root}")
        loaded = checkpoint.load_latest(registry, kafka_e2e.MODEL)
        pipelines[label] = pipeline.Pipeline(
            settings.PipelineSettings(input_topic="events"), None, bench.DropProducer(),
            None, predictor.Predictor(loaded, max_streams=20_000), metrics.Metrics(),
        )  # fmt: skip
        if label == trees[0][0]:
            carry = importlib.import_module("streamcell.service.carry")
            work = bench.Workload(51_200, 10_000, 1024)
    gc_pauses = importlib.import_module("streamcell.service.gc_pauses")

    def carried(polls: list, batch: int = 1024) -> list:
        records = [r for poll in polls for r in poll]
        held: list = []
        at, out = 0, []
        while at < len(records) or held:
            new = records[at : at + batch - len(held)]
            at += len(new)
            now, held = held + new, []
            if len(now) >= batch:
                now, held = carry.split(now, batch // 4)
            out.append(now)
        return out

    for p in pipelines.values():  # warm up: every stream exists from here on
        for poll in work.polls():
            p.process(poll)
    gc_pauses.settle()
    labels = [label for label, _ in trees]
    per_event: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(rounds):
        for k, poll in enumerate(carried(work.polls())):
            for label in labels if (k + r) % 2 == 0 else labels[::-1]:
                start = time.thread_time()
                pipelines[label].process(poll)
                per_event[label].append((time.thread_time() - start) / len(poll))
    first = None
    for label in labels:
        us = np.array(per_event[label]) * 1e6
        median = float(np.median(us))
        first = first or median
        print(
            f"  {label:<10} median {median:6.2f}  mean {us.mean():6.2f}  "
            f"p10 {np.percentile(us, 10):6.2f} us CPU per event ({len(us)} polls); "
            f"median against {labels[0]}: {median / first - 1:+.1%}"
        )


if __name__ == "__main__":
    main()

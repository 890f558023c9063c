"""Wall and thread-CPU time per event of each phase of serve's loop, over its busy window.

    LOOP_PROBE=/tmp/loop.txt PYTHONPATH=core:service:trainer:demo:protos:bench/loop_probe \\
        .venv/bin/python bench/kafka_e2e.py --events 200000 --naive-seconds 1 --clients confluent

Python imports this ``sitecustomize`` in every process started with that
``PYTHONPATH``; in each ``streamcell serve`` it times the loop's steps and,
inside them, the consumer's poll, ``Pipeline.process`` and its decode,
predict, encode and sends, the producer's acknowledgement checks and the
checkpoint's ``begin`` and ``advance``: wall-clock (``perf_counter``) and
the loop thread's CPU time (``thread_time``). At exit it appends, per serve,
the sums over the steps from the first that read records to the last, in
microseconds per event read: where the loop's time goes, and whether it
waited (wall above CPU) or worked. Indented phases are inside ``process``;
``send_many (all)`` counts the predictions' sends (inside ``process``) and the
changelog's (inside ``advance``). bench/step_probe gives the per-call
distribution (p99, max) instead.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import sys
import time

if os.environ.get("LOOP_PROBE") and "serve" in sys.argv:
    from streamcell.core import predictor
    from streamcell.service import checkpointing, codec, confluent_client, pipeline

    steps: list[tuple[float, int, dict[str, list[float]]]] = []
    current: dict[str, list[float]] = {}

    def _wrap(owner: object, name: str, key: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                acc = current.setdefault(key, [0.0, 0.0])
                acc[0] += time.perf_counter() - wall
                acc[1] += time.thread_time() - cpu

        setattr(owner, name, timed)

    PHASES = (
        "poll",
        "process",
        "  decode",
        "  predict",
        "  encode",
        "send_many (all)",
        "acknowledged",
        "checkpoint begin",
        "checkpoint advance",
    )
    for owner, name, key in (
        (confluent_client.ConfluentConsumer, "poll", "poll"),
        (pipeline.Pipeline, "process", "process"),
        (codec, "decode", "  decode"),  # the pipeline calls them through the module
        (predictor.Predictor, "predict", "  predict"),
        (codec, "encode_predictions", "  encode"),
        (confluent_client.ConfluentProducer, "send_many", "send_many (all)"),
        (confluent_client.ConfluentProducer, "acknowledged", "acknowledged"),
        (checkpointing.Checkpointer, "begin", "checkpoint begin"),
        (checkpointing.Checkpointer, "advance", "checkpoint advance"),
    ):
        _wrap(owner, name, key)
    _step = pipeline.Pipeline.step

    def _timed_step(self) -> int:
        current.clear()
        wall, cpu = time.perf_counter(), time.thread_time()
        n = _step(self)
        current["step (all)"] = [time.perf_counter() - wall, time.thread_time() - cpu]
        steps.append((wall, n, dict(current)))
        return n

    pipeline.Pipeline.step = _timed_step  # type: ignore[method-assign]

    def _report() -> None:
        busy = [k for k, (_, n, _) in enumerate(steps) if n > 0]
        if not busy:
            return
        window = steps[busy[0] : busy[-1] + 1]
        events = sum(n for _, n, _ in window)
        span = window[-1][0] - window[0][0]
        totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
        for _, _, phases in window:
            for key, (wall, cpu) in phases.items():
                totals[key][0] += wall
                totals[key][1] += cpu
        with open(os.environ["LOOP_PROBE"], "a") as out:
            out.write(
                f"--- serve pid {os.getpid()}: {len(window)} steps, {events} events in "
                f"{span:.3f} s ({events / max(span, 1e-9):,.0f}/s), us per event:\n"
            )
            for key in ["step (all)", *PHASES]:  # nested ones indented under process
                wall, cpu = totals[key]
                out.write(
                    f"  {key:20s} wall {wall / events * 1e6:6.2f}  cpu {cpu / events * 1e6:6.2f}\n"
                )

    atexit.register(_report)

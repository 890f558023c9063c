"""Per-event CPU cost of the serve loop's work, without a broker: where serve's time goes.

    cd bench && ../.venv/bin/python process_bench.py [--batch 1024] [--streams 10000]

The events of the end-to-end benchmark (JSON, 8 features, a seq per stream,
keys ``stream-N``), in polls of ``--batch`` records, go through
``Pipeline.process`` as serve runs it (decode, predict, encode, send) with a
producer that drops what it is sent: the figures are serve's own Python and
torch work per event, no Kafka client in them. The phases are also timed
alone: decode, the LSTM step (``Predictor.predict``), encode. Every timed
call gets events the state has not seen (later seqs and offsets), so every
event is stepped; rounds alternate the phases, best round of each.
The garbage collector is set as serve sets it once started (``gc_pauses.settle``).
"process, carried" runs the same records as serve's loop takes them when it
is behind its input: polls topped up to ``--batch`` after the records that
``carry.split`` held back from the poll before (their streams' second events).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from kafka_bench import FEATURES
from kafka_e2e import MODEL, make_registry

from streamcell.core.checkpoint import load_latest
from streamcell.core.predictor import PREDICTED, Predictor
from streamcell.service import carry, codec
from streamcell.service.gc_pauses import settle
from streamcell.service.kafka import Record
from streamcell.service.metrics import Metrics
from streamcell.service.pipeline import Pipeline
from streamcell.service.replay import Events, encode
from streamcell.service.settings import PipelineSettings

TOPIC = "events"
PARTITIONS = 3


class DropProducer:
    """The producer calls the loop makes, doing nothing: no client cost is measured."""

    def send(self, topic, key, value, headers=None, partition=None) -> None:
        pass

    def send_many(self, topic, records, headers=None, partition=None) -> None:
        pass


class Workload:
    """Fixed streams and features; each ``polls()`` call continues every stream's seq."""

    def __init__(self, events: int, streams: int, batch: int) -> None:
        rng = np.random.default_rng(0)
        ids = rng.integers(0, streams, size=events)
        self.names = [f"stream-{k}" for k in ids.tolist()]
        self.x = rng.standard_normal((events, FEATURES)).astype(np.float32)
        _, counts = np.unique(ids, return_counts=True)
        order = np.argsort(ids, kind="stable")  # rank of each event within its stream:
        rank = np.empty(events, np.int64)
        rank[order] = np.arange(events) - np.repeat(np.cumsum(counts) - counts, counts)
        self.rank, self.per_call = rank, int(counts.max())
        self.batch, self.calls = batch, 0

    def polls(self) -> list[list[Record]]:
        base = self.calls * self.per_call
        self.calls += 1
        messages = encode(Events(self.names, self.x, self.rank + base, None))
        offset0 = base * len(messages)
        records = [
            Record(TOPIC, k % PARTITIONS, offset0 + k, key, value, 1_000, ())
            for k, (key, value) in enumerate(messages)
        ]
        return [records[k : k + self.batch] for k in range(0, len(records), self.batch)]


CPU: dict[str, float] = {}  # the thread's CPU time of each phase's best round


def seconds(fn, *args):
    start, cpu = time.perf_counter(), time.thread_time()
    out = fn(*args)
    name = fn.__name__
    CPU[name] = min(CPU.get(name, float("inf")), time.thread_time() - cpu)
    return time.perf_counter() - start, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--streams", type=int, default=10_000)
    p.add_argument("--events", type=int, default=51_200)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (serve's default: 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_latest(make_registry(Path(tmp)), MODEL)
    work = Workload(args.events, args.streams, args.batch)
    predictor = Predictor(loaded, max_streams=args.streams * 2)
    pipeline = Pipeline(
        PipelineSettings(input_topic=TOPIC), None, DropProducer(), None, predictor, Metrics()
    )
    size = predictor.config.input_size

    def process(polls):
        for poll in polls:
            pipeline.process(poll)

    def process_carried(polls):
        records = [r for poll in polls for r in poll]
        held: list[Record] = []
        at = 0
        while at < len(records) or held:
            new = records[at : at + args.batch - len(held)]
            at += len(new)
            now, held = held + new, []
            if len(now) >= args.batch:
                now, held = carry.split(now, args.batch // 4)
            pipeline.process(now)

    def decode(polls):
        return [codec.decode(poll, size) for poll in polls]

    def predict(decoded):
        return [predictor.predict(d.batch) for d in decoded]

    def encode_all(decoded, results):
        for d, r in zip(decoded, results, strict=True):
            rows = np.flatnonzero(r.outcome == PREDICTED)
            assert len(rows) == len(r.outcome), "every event must be stepped"
            codec.encode_predictions(d.batch, r.yhat, rows, r.model, r.version)

    process(work.polls())  # warm up: every stream exists from here on
    settle()  # as serve after start-up: what exists now is out of the collector's scans
    names = ("process (all)", "decode", "predict", "encode", "process, carried")
    best = dict.fromkeys(names, float("inf"))
    for _ in range(args.rounds):
        t_all, _ = seconds(process, work.polls())
        t_carried, _ = seconds(process_carried, work.polls())
        t_decode, decoded = seconds(decode, work.polls())
        t_predict, results = seconds(predict, decoded)
        t_encode, _ = seconds(encode_all, decoded, results)
        times = (t_all, t_decode, t_predict, t_encode, t_carried)
        for name, t in zip(best, times, strict=True):
            best[name] = min(best[name], t / args.events * 1e6)
    print(
        f"{args.events:,} events in polls of {args.batch}, {args.streams:,} streams, "
        f"{args.threads} torch thread(s); best of {args.rounds} rounds, us per event:"
    )
    for (name, us), fn in zip(
        best.items(), ("process", "decode", "predict", "encode_all", "process_carried"), strict=True
    ):
        print(f"  {name:<16} {us:6.2f}  (CPU {CPU[fn] / args.events * 1e6:6.2f})")
    rest = best["process (all)"] - best["decode"] - best["predict"] - best["encode"]
    print(f"  {'rest':<14} {rest:6.2f}  (bookkeeping: metrics, changed streams, positions)")


if __name__ == "__main__":
    main()

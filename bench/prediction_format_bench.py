"""Per-event cost of encoding a poll's predictions: JSON, protobuf by numpy, protobuf per message.

    PYTHONPATH=core:service:demo:protos .venv/bin/python bench/prediction_format_bench.py
    # --batch 1024 --targets 8 --rounds 300

A poll of ``--batch`` predictions of kafka_e2e's model (8 targets, keys
``stream-N``, a seq per event), point-only and with the levels 0.1/0.5/0.9,
encoded three ways in turn, call by call (so a burst of load from
elsewhere hits every variant alike); the best of ``--rounds`` calls each,
thread CPU time:

- json: ``codec.encode_predictions`` as serve calls it by default;
- protobuf: ``codec.encode_predictions(..., prediction_format="protobuf")``,
  the wire bytes of the whole poll built with numpy;
- protobuf, per message: a ``streamcell.v1.Prediction`` built and
  serialized per record by the protobuf library (upb), the same bytes.

Also prints each variant's bytes per record.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from streamcell.core.events import NO_SEQ, EventBatch
from streamcell.service import codec
from streamcell.v1.predictor_pb2 import Prediction, Quantile

LEVELS = (0.1, 0.5, 0.9)


def per_message(batch, yhat, rows, model, version, quantiles=None, levels=()):
    """The library's way: one message per record (the reference of the tests, as a loop)."""
    out = []
    streams, seqs = batch.streams, batch.seq.tolist()
    parts, offsets = batch.partition.tolist(), batch.offset.tolist()
    for row in rows.tolist():
        m = Prediction(
            stream=streams[row],
            yhat=yhat[row].tolist(),
            model=model,
            version=version,
            partition=parts[row],
            offset=offsets[row],
        )
        if seqs[row] != NO_SEQ:
            m.seq = seqs[row]
        if quantiles is not None:
            q = quantiles[row].tolist()
            m.quantiles.extend(Quantile(level=lv, yhat=q[j]) for j, lv in enumerate(levels))
        out.append((streams[row].encode(), m.SerializeToString()))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--targets", type=int, default=8)
    p.add_argument("--rounds", type=int, default=300)
    args = p.parse_args()
    n, t = args.batch, args.targets
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 10_000, n)
    batch = EventBatch.of(
        [f"stream-{k}" for k in ids.tolist()],
        np.zeros((n, 1), np.float32),
        seq=rng.integers(0, 100, n),
        partition=np.arange(n) % 3,
        offset=10_000 + np.arange(n),
    )
    yhat = rng.normal(size=(n, t)).astype(np.float32)
    quantiles = np.stack([yhat - 1.3, yhat, yhat + 1.3], axis=1).astype(np.float32)
    rows = np.arange(n)
    heads = {"point-only": (None, ()), "3 levels": (quantiles, LEVELS)}
    variants = {
        "json": lambda q, lv: codec.encode_predictions(batch, yhat, rows, "m", "v1", q, lv),
        "protobuf": lambda q, lv: codec.encode_predictions(
            batch, yhat, rows, "m", "v1", q, lv, codec.FORMAT_PROTOBUF
        ),
        "protobuf, per message": lambda q, lv: per_message(batch, yhat, rows, "m", "v1", q, lv),
    }
    for head, (q, lv) in heads.items():
        pb = variants["protobuf"](q, lv)
        assert pb == variants["protobuf, per message"](q, lv)  # the same bytes
        best = dict.fromkeys(variants, float("inf"))
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.thread_time()
                fn(q, lv)
                best[name] = min(best[name], time.thread_time() - start)
        for name, fn in variants.items():
            size = np.mean([len(v) for _, v in fn(q, lv)])
            print(
                f"{head:<10} {name:<22} {best[name] / n * 1e6:6.3f} us per event "
                f"({best[name] / best['json']:.2f}x json), {size:5.1f} bytes per record"
            )


if __name__ == "__main__":
    main()

"""What a recipe (history features) costs the serving path, against a plain model.

    python bench/recipe_bench.py [--streams 100000] [--threads 1] [--batch 1024]

One process. Each model serves ``--streams`` streams of one value each
(hidden 64, 2 layers); a call is ``Predictor.predict`` on ``--batch`` events
of random streams (repeats give several waves), as bench/step_bench.py's
full path. Models: no recipe (global scaling), no recipe with
stream_mean_abs, and a DeepAR-style lag recipe (lags 1-7 and 11-13, 23-25,
35-37 for a period of 12; a 12-value scale window and its log; the season;
the age: 19 inputs, a ring of 37 values). Also a 24-step Forecast of one
stream, and each model's snapshot (changelog record) size. Designs run
round-robin for ``--rounds`` rounds, best kept, so load from elsewhere hits
all alike.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel, ModelConfig
from streamcell.core.events import EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import Predictor
from streamcell.core.recipe import Recipe

HIDDEN, LAYERS = 64, 2
LAG_RECIPE = {
    "target": 0,
    "lags": [1, 2, 3, 4, 5, 6, 7, 11, 12, 13, 23, 24, 25, 35, 36, 37],
    "scale_window": 12,
    "log_scale": True,
    "periods": [12],
    "age": True,
}


def predictor(scaling: str, recipe: dict | None, streams: int) -> Predictor:
    inputs = 1 if recipe is None else Recipe.from_json(recipe, width=1, scale_floor=1e-3)
    size = inputs if isinstance(inputs, int) else inputs.num_features
    cfg = ModelConfig(
        1, HIDDEN, LAYERS, 1, ("y",), ("y",), [0.0] * size, [1.0] * size, [0.0], [1.0],
        scaling=scaling, recipe=recipe,
    )  # fmt: skip
    torch.manual_seed(0)
    model = StreamingLSTM(size, HIDDEN, LAYERS, 1).eval()
    loaded = LoadedModel("bench", "v1", None, cfg, model)  # type: ignore[arg-type]
    p = Predictor(loaded, max_streams=streams, initial_capacity=streams)
    ids = [f"s{k}" for k in range(streams)]
    rng = np.random.default_rng(0)
    for _ in range(40):  # every stream past its ring's length
        for k in range(0, streams, 8192):
            chunk = ids[k : k + 8192]
            x = (rng.normal(size=(len(chunk), 1)) * 10 + 100).astype(np.float32)
            p.predict(EventBatch.of(chunk, x))
    return p


def timed(fn: Callable[[], None], seconds: float) -> float:
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        if time.perf_counter() - start >= seconds:
            return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = {
        "no recipe, global": predictor("global", None, args.streams),
        "no recipe, stream_mean_abs": predictor("stream_mean_abs", None, args.streams),
        "lag recipe (19 inputs, ring 37)": predictor("window_mean_abs", LAG_RECIPE, args.streams),
    }
    rng = np.random.default_rng(1)
    ids = [f"s{k}" for k in range(args.streams)]
    designs: dict[str, tuple[Callable[[], None], int]] = {}
    for name, p in models.items():

        def one(p: Predictor = p) -> None:
            pick = [ids[k] for k in rng.integers(0, args.streams, size=args.batch)]
            x = (rng.normal(size=(args.batch, 1)) * 10 + 100).astype(np.float32)
            p.predict(EventBatch.of(pick, x))

        def forecast(p: Predictor = p) -> None:
            p.forecast("s1", 24)

        designs[f"predict B={args.batch}: {name}"] = (one, args.batch)
        designs[f"forecast h=24: {name}"] = (forecast, 1)
    best = dict.fromkeys(designs, 0.0)
    for _ in range(args.rounds):
        for name, (fn, events) in designs.items():
            best[name] = max(best[name], events / timed(fn, args.seconds))
    print(
        f"torch {torch.__version__}, threads={args.threads}, {args.streams} streams, "
        f"hidden={HIDDEN} layers={LAYERS}, best of {args.rounds} rounds"
    )
    for name, rate in best.items():
        unit = "events/s" if name.startswith("predict") else "forecasts/s"
        print(f"{name:<60}{rate:>12,.0f} {unit}")
    for name, p in models.items():
        print(f"snapshot bytes per stream, {name:<34}{p.store.snapshot_size:>6}")
        print(f"state bytes per stream,    {name:<34}{p.store.nbytes / args.streams:>6.0f}")


if __name__ == "__main__":
    main()

"""What one Ray Train run costs before any training: a TorchTrainer whose loop does nothing.

    nice -n 5 .venv/bin/python bench/ray_run_overhead.py --runs 2

Starts a local Ray (2 CPUs), fits ``--runs`` TorchTrainers of two workers in a row and
prints each fit's wall time: the fixed cost that every candidate, final fit or
restart pays in `streamcell train` on Ray.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def _nothing(config: dict) -> None:
    """The training loop: nothing, so the fit's time is Ray's."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    started = time.monotonic()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.monotonic() - started:.1f} s")
    try:
        with tempfile.TemporaryDirectory() as storage:
            for k in range(args.runs):
                t0 = time.monotonic()
                TorchTrainer(
                    _nothing,
                    scaling_config=ScalingConfig(num_workers=2),
                    run_config=RunConfig(name=f"overhead-{k}", storage_path=storage),
                ).fit()
                print(f"run {k + 1}: fit {time.monotonic() - t0:.1f} s")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()

"""bench.accuracy with TrainSettings overrides on the recipe rows (an experiment, not defaults).

    .venv/bin/python -m bench.accuracy_overrides '{"periods": [52]}' --datasets heldout_ansett \
        --methods lstm_default --jobs 1 --threads 1 --output /tmp/p52.json

The first argument is a JSON object of TrainSettings fields (lists become tuples);
the rest are bench.accuracy's. With --jobs 1 every row trains in this process,
so the override reaches it.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from bench import accuracy


def main(argv: list[str]) -> int:
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(argv[0]).items()}
    plain = accuracy.recipe_settings

    def settings(method: str):
        return dataclasses.replace(plain(method), **overrides)

    accuracy.recipe_settings = settings
    return accuracy.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

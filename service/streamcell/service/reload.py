"""Model reloads: notice a newer complete version in the registry and switch to it.

:class:`ModelWatcher` only finds and loads versions; :func:`reload_if_newer`,
the one reload path of both modes, swaps between two calls of the Predictor.
The Kafka loop passes its blocking checkpoint, so that the swap happens right
after one and no event is dropped or applied twice (the committed offsets
mark exactly where the new version starts); gRPC-only mode passes none. A
version that fails to load or to run one step is refused with a log line,
counted as ``failed`` and not tried again; the old version keeps serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from streamcell.core.checkpoint import LoadedModel, latest_version, load_checkpoint
from streamcell.core.errors import CheckpointError
from streamcell.core.predictor import Predictor
from streamcell.service.metrics import Metrics

log = logging.getLogger(__name__)

KEPT = "state_kept"
RESET = "state_reset"
FAILED = "failed"


class ModelWatcher:
    """Polls ``REGISTRY/NAME`` for a version newer than the one served."""

    def __init__(
        self,
        registry: Path,
        name: str,
        poll_s: float,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = Path(registry)
        self.name = name
        self.poll_s = poll_s
        self.metrics = metrics
        self._clock = clock
        self._next = 0.0
        self._refused: set[str] = set()

    def due(self) -> bool:
        """True once per poll interval (0 or less disables polling after the first load)."""
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self.poll_s if self.poll_s > 0 else float("inf")
        return True

    def newer(self, current: str | None) -> LoadedModel | None:
        """Load the newest complete version if it is newer than ``current`` and sound."""
        try:
            version = latest_version(self.registry, self.name)
        except OSError as exc:
            log.warning("cannot list registry %s: %s", self.registry, exc)
            return None
        if version is None or version in self._refused:
            return None
        if current is not None and version <= current:
            return None
        path = self.registry / self.name / version
        try:
            loaded = load_checkpoint(path)
            _smoke_test(loaded)
        except (CheckpointError, RuntimeError, ValueError) as exc:
            self._refused.add(version)
            if self.metrics is not None:
                self.metrics.model_reloads.labels(FAILED).inc()
            log.error(
                "refusing model %s version %s at %s: %s; %s",
                self.name,
                version,
                path,
                exc,
                "still serving " + current if current else "no model is served yet",
            )
            return None
        return loaded


def _smoke_test(loaded: LoadedModel) -> None:
    """One step from zero state must give finite numbers of the right shape."""
    cfg = loaded.config
    h, c = loaded.model.zero_state(1)
    y = loaded.model.step(torch.zeros(1, cfg.lstm_input_size), h, c).y
    if y.shape != (1, cfg.head_width) or not bool(torch.isfinite(y).all()):
        raise CheckpointError("one step from zero state does not give finite predictions")


def apply(predictor: Predictor, loaded: LoadedModel, metrics: Metrics | None = None) -> bool:
    """Swap the predictor to ``loaded``; True if the streams kept their state."""
    old = predictor.loaded.version
    with predictor.lock:
        streams = len(predictor.store)
        kept = predictor.swap(loaded)
    if metrics is not None:
        metrics.model_reloads.labels(KEPT if kept else RESET).inc()
        metrics.record_model(loaded.name, loaded.version, validation_mae(loaded))
    if kept:
        log.info(
            "model %s: switched from version %s to %s; %d streams keep their state",
            loaded.name,
            old,
            loaded.version,
            streams,
        )
    else:
        log.warning(
            "model %s: switched from version %s to %s with another architecture; "
            "%d streams were reset",
            loaded.name,
            old,
            loaded.version,
            streams,
        )
    return kept


def reload_if_newer(
    watcher: ModelWatcher,
    predictor: Predictor,
    metrics: Metrics | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> bool | None:
    """If a poll is due and a newer sound version exists, swap to it.

    ``checkpoint`` runs before the swap and, when the swap reset the streams
    (another architecture), once more after it to write their tombstones.
    Returns whether the streams kept their state; None when nothing was swapped.
    """
    if not watcher.due():
        return None
    loaded = watcher.newer(predictor.loaded.version)
    if loaded is None:
        return None
    if checkpoint is not None:
        checkpoint()
    kept = apply(predictor, loaded, metrics)
    if not kept and checkpoint is not None:
        checkpoint()
    return kept


def validation_mae(loaded: LoadedModel) -> float | None:
    value = loaded.config.metrics.get("val_mae", loaded.config.metrics.get("validation_mae"))
    return float(value) if isinstance(value, int | float) else None

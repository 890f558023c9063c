"""Choosing among a few candidate settings on validation, then the final fit.

Each candidate (``settings.candidates``: overrides of the settings; none: the
settings alone) is trained with early stopping on the validation split and
scored by ``settings.monitor``; the time budget is shared out between them
and the final fit. The best one is then refitted from scratch on every row of
the training part (validation rows included: the most recent data) for its
best epoch count where ``settings.final_fit`` asks for it and the budget left
allows it at the pace measured; otherwise the validated model itself is the
one exported. The record says which happened. The final fit is off by
default: without a validation split to stop it, it was worse on held-out
data than the validated model (docs/BENCHMARKS.md, "Accuracy").
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from streamcell.core.model import StreamingLSTM
from streamcell.trainer.data import LongFrame
from streamcell.trainer.loop import LoopState, fit, new_model, restore_best
from streamcell.trainer.prepare import Prepared
from streamcell.trainer.settings import TrainSettings

# Share of the budget kept for the final fit (it sees 1 / (1 - val_fraction) more rows).
FINAL_SHARE = 0.3


@dataclass(frozen=True)
class Chosen:
    settings: TrainSettings
    prepared: Prepared
    state: LoopState
    model: StreamingLSTM  # the trained model (its best epoch is in state.best_state)
    final: StreamingLSTM | None  # refitted on every training row, or None
    record: dict[str, Any]


def candidate_settings(settings: TrainSettings) -> list[TrainSettings]:
    """The settings of each candidate (the settings alone when there are none)."""
    overrides = settings.candidates or ({},)
    return [replace(settings, candidates=(), **o) for o in overrides]


def select_and_fit(
    frame: LongFrame,
    settings: TrainSettings,
    prepare_frame: Callable[[LongFrame, TrainSettings], Prepared],
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Chosen:
    started = time.monotonic()
    budget = float(settings.time_budget)
    deadline = started + budget if budget > 0 else None
    options = candidate_settings(settings)
    share = (1 - FINAL_SHARE) if settings.final_fit else 1.0
    tried: list[dict[str, Any]] = []
    best: tuple[float, TrainSettings, Prepared, LoopState, StreamingLSTM] | None = None
    cache: dict[str, Prepared] = {}
    for k, option in enumerate(options):
        key = repr((option.periods, option.lags, option.scale_window, option.age, option.scaling))
        prepared = cache.get(key) or prepare_frame(frame, option)
        cache[key] = prepared
        model = new_model(prepared, option).to(device)
        until = None
        if deadline is not None:
            now = time.monotonic()
            left = started + budget * share - now
            until = now + max(left / (len(options) - k), 0.0)

        def report(state: LoopState, _opt: torch.optim.Optimizer, k: int = k) -> None:
            if on_epoch is not None:
                on_epoch({**state.history[-1], "candidate": k, "candidates": len(options)})

        t0 = time.monotonic()
        state = fit(
            model,
            prepared,
            replace(option, time_budget=0.0),
            shard=list(range(len(prepared))),
            on_epoch=report,
            deadline=until,
        )
        score = state.best_score
        tried.append(
            {
                "overrides": dict((settings.candidates or ({},))[k]),
                "score": score,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epoch,
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        if best is None or score < best[0]:
            best = (score, option, prepared, state, model)
    assert best is not None
    _, option, prepared, state, model = best
    record: dict[str, Any] = {"monitor": settings.monitor, "candidates": tried}
    final = None
    if settings.final_fit and state.best_epoch > 0:
        per_epoch = state.train_seconds / max(state.epoch, 1)
        rows = prepared.whole().train_pairs() / max(prepared.train_pairs(), 1)
        need = per_epoch * rows * state.best_epoch
        left = float("inf") if deadline is None else deadline - time.monotonic()
        if need <= left:
            final = _refit(prepared, option, state.best_epoch, device, on_epoch)
            record["final_fit"] = f"whole training part, {state.best_epoch} epochs"
        else:
            record["final_fit"] = (
                f"skipped: {need:.0f} s needed, {max(left, 0):.0f} s of the budget left"
            )
    else:
        record["final_fit"] = "off"
    return Chosen(option, prepared, state, model, final, record)


def _refit(
    prepared: Prepared,
    settings: TrainSettings,
    epochs: int,
    device: str | torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> StreamingLSTM:
    whole = prepared.whole()
    model = new_model(whole, settings).to(device)

    def report(state: LoopState, _opt: torch.optim.Optimizer) -> None:
        if on_epoch is not None:
            on_epoch({**state.history[-1], "final_fit": True})

    state = fit(
        model,
        whole,
        replace(settings, epochs=epochs, time_budget=0.0),
        shard=list(range(len(whole))),
        on_epoch=report,
        validate=False,
    )
    return restore_best(model, state)

"""Choosing among a few candidate settings on validation, then the final fit.

Each candidate (``settings.candidates``: overrides of the settings; none: the
settings alone) is trained with early stopping on the validation split and
scored by ``settings.monitor``; the time budget is shared out between them
and the final fit. The best one is then refitted from scratch on every row of
the training part (validation rows included: the most recent data) for its
best epoch count where ``settings.final_fit`` asks for it and the budget left
allows it at the pace measured; otherwise the validated model itself is the
one exported. The record says which happened. By default (``blend``) the
export is the validated model and the refit averaged, as the two members of
one model: the refit alone, with no validation split to stop it, was worse
on held-out data than the validated model on some sets and better on others;
the two together were ahead of the validated model on held-out data on most
(docs/BENCHMARKS.md, "Accuracy").

Each candidate's epochs are validated with their raw weights and, for a
one-step head under ``auto``, with a moving average of them
(``settings.weight_average``, streamcell.trainer.loop);
the record of each says which its best epoch kept (``weights``), and its
final fit keeps the same.

Refinements, each taken only on validation's word: with
``settings.average_top`` > 1 the best few candidates of the chosen one's head
are averaged as one model where the average scores better at fixed origin;
with ``settings.seeds`` > 1 the chosen candidate is trained again from other
seeds in the budget the candidates left (``train_seeds``) and those runs join
that average, kept on the same condition;
and where the chosen model has a direct head but another candidate predicts
one step ahead better (``settings.online_first_step``), the served model is
both side by side: that one's first step online, the chosen one's later
steps for a Forecast (``ensemble.splice_first_step``). A direct head's first
step is a by-product of its horizon's loss; it was well behind the one-step
head online where the direct head won at fixed origin (vic_elec).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from streamcell.core.model import StreamingLSTM
from streamcell.trainer.budget import Deadline, budget_clock
from streamcell.trainer.data import LongFrame
from streamcell.trainer.ensemble import average_models, merge_members, splice_first_step
from streamcell.trainer.evaluate import evaluate
from streamcell.trainer.loop import LoopState, fit, new_model, restore_best
from streamcell.trainer.model_config import as_loaded
from streamcell.trainer.origin import origin_mase
from streamcell.trainer.prepare import Prepared
from streamcell.trainer.settings import TrainSettings

Trained = tuple[TrainSettings, Prepared, LoopState, StreamingLSTM]
# Share of the budget kept for the final fit (it sees 1 / (1 - val_fraction) more rows).
FINAL_SHARE = 0.3
# Extra seed j of a candidate trains with its seed + j * SEED_STRIDE: apart from
# the small seeds candidates are given by hand.
SEED_STRIDE = 1000


class Fitter:
    """Trains one model, here in this process; ray_train's trains it as a Ray Train run.

    Selection (which candidates, their budget shares, the choice, the final
    fits) is the same wherever the training runs; only this differs.
    """

    def clock(self) -> float:
        """The time budget's clock for the work this fitter does (streamcell.trainer.budget)."""
        return budget_clock()

    def fit(
        self,
        model: StreamingLSTM,
        prepared: Prepared,
        settings: TrainSettings,
        *,
        deadline: Deadline | None,
        validate: bool,
        on_record: Callable[[dict[str, Any]], None] | None,
    ) -> LoopState:
        """Train ``model`` (its best epoch in the state returned) on every stream of
        ``prepared``; ``on_record`` sees each epoch's record."""

        def report(state: LoopState, _opt: torch.optim.Optimizer) -> None:
            if on_record is not None:
                on_record(state.history[-1])

        return fit(
            model,
            prepared,
            replace(settings, time_budget=0.0),
            shard=list(range(len(prepared))),
            on_epoch=report,
            deadline=deadline,
            validate=validate,
        )


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


def resolve_head(settings: TrainSettings, prepared: Prepared) -> tuple[TrainSettings, Prepared]:
    """The head's horizon settled (None: the data's default for a recipe model, else 1)."""
    horizon = settings.horizon
    if horizon is None:
        horizon = prepared.default_horizon if prepared.recipe is not None else 1
    return (
        replace(settings, horizon=horizon),
        replace(prepared, horizon=horizon, quantile_levels=tuple(settings.quantile_levels)),
    )


def select_and_fit(
    frame: LongFrame,
    settings: TrainSettings,
    prepare_frame: Callable[[LongFrame, TrainSettings], Prepared],
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Chosen:
    """Train each candidate; keep the one with the best fixed-origin validation MASE.

    Every candidate's best epoch is picked by ``settings.monitor`` (one step
    ahead, online). Between candidates the fixed-origin validation MASE
    (:mod:`streamcell.trainer.origin`, a Forecast's own code) decides, over
    the horizon a direct head of the defaults would have, so a direct head and
    one fed back are compared on the same forecasts; where the model cannot
    forecast (covariates without a recipe) the monitor decides.
    """
    trials = train_candidates(frame, settings, prepare_frame, device=device, on_epoch=on_epoch)
    return choose(trials, "origin", device=device, on_epoch=on_epoch)


@dataclass(frozen=True)
class Trials:
    """The candidates trained and validated, before one is chosen."""

    frame: LongFrame
    settings: TrainSettings
    tried: list[dict[str, Any]]  # each candidate's record (validation scores)
    trained: list[Trained]
    keys: list[str]  # each candidate's features (candidates of one key share them)
    eval_horizon: int
    deadline: Deadline | None
    # Each candidate's final fit once made (a second choice reuses it).
    finals: dict[int, tuple[StreamingLSTM | None, str]] = field(default_factory=dict)
    fitter: Fitter = field(default_factory=Fitter)
    costs: list[float] = field(default_factory=list)  # each candidate's budget seconds
    # A candidate's extra seeds once trained (settings.seeds): their indices in
    # ``trained`` (after the candidates) and their records.
    seeded: dict[int, list[tuple[int, dict[str, Any]]]] = field(default_factory=dict)


def train_candidates(
    frame: LongFrame,
    settings: TrainSettings,
    prepare_frame: Callable[[LongFrame, TrainSettings], Prepared],
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    fitter: Fitter | None = None,
) -> Trials:
    """Each candidate trained with early stopping and scored both ways on validation.

    ``fitter``: where each candidate trains (default: in this process).
    """
    fitter = fitter or Fitter()
    budget = float(settings.time_budget)
    deadline = Deadline.after(budget, fitter.clock) if budget > 0 else None
    options = candidate_settings(settings)
    share = (1 - FINAL_SHARE) if settings.final_fit != "off" else 1.0
    tried: list[dict[str, Any]] = []
    trained: list[Trained] = []
    cache: dict[str, Prepared] = {}
    keys: list[str] = []  # each candidate's features (candidates of one key share them)
    eval_horizon = 0
    costs: list[float] = []
    for k, option in enumerate(options):
        c0 = fitter.clock()
        key = repr((option.periods, option.lags, option.scale_window, option.age, option.scaling))
        prepared = cache.get(key) or prepare_frame(frame, option)
        cache[key] = prepared
        keys.append(key)
        option, prepared = resolve_head(option, prepared)
        if not eval_horizon:
            given = [o.horizon for o in options if o.horizon is not None]
            eval_horizon = max([prepared.default_horizon, *given])
        model = new_model(prepared, option).to(device)
        until = None
        if deadline is not None:
            left = deadline.left() - budget * (1 - share)  # the final fit's share kept
            until = Deadline.after(left / (len(options) - k), fitter.clock)

        def report(record: dict[str, Any], k: int = k) -> None:
            if on_epoch is not None:
                on_epoch({**record, "candidate": k, "candidates": len(options)})

        t0 = time.monotonic()
        state = fitter.fit(model, prepared, option, deadline=until, validate=True, on_record=report)
        best_model = restore_best(model, state)
        origin = origin_mase(as_loaded(frame, prepared, best_model, option), prepared, eval_horizon)
        tried.append(
            {
                "overrides": dict((settings.candidates or ({},))[k]),
                "horizon": prepared.horizon,
                "score": state.best_score,
                "origin_score": origin,
                "best_epoch": state.best_epoch,
                "epochs_run": state.epoch,
                # raw or ema: what the best epoch kept (settings.weight_average)
                "weights": state.best_metrics.get("weights", "raw"),
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        trained.append((option, prepared, state, model))
        costs.append(fitter.clock() - c0)
    return Trials(
        frame, settings, tried, trained, keys, eval_horizon, deadline, fitter=fitter, costs=costs
    )


def train_seeds(
    trials: Trials,
    pick: int,
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[tuple[int, dict[str, Any]]]:
    """Up to ``settings.seeds - 1`` more runs of candidate ``pick`` with other seeds.

    Each starts only where the budget left holds its pace (the candidate's own
    cost) and the final fits of every run so far and its own
    (``refit_seconds``), so the seeds never cost the final fit; a second
    choice of the same candidate reuses them.
    """
    if trials.settings.seeds == 1 or pick in trials.seeded:
        return trials.seeded.get(pick, [])
    settings, deadline, fitter = trials.settings, trials.deadline, trials.fitter
    option, prepared, state, _model = trials.trained[pick]
    refit = refit_seconds(state, prepared) if settings.final_fit != "off" else 0.0
    # The final fit of the candidate whose first step may be served beside pick's.
    first = first_step_pick(trials.tried, trials.keys, pick) if settings.online_first_step else None
    other = 0.0
    if first is not None and settings.final_fit != "off":
        other = refit_seconds(trials.trained[first][2], trials.trained[first][1])
    runs: list[tuple[int, dict[str, Any]]] = []
    for j in range(1, settings.seeds):
        keep = refit * (j + 1) + other  # the final fits of pick, the seeds so far and this one
        until = None
        if deadline is not None:
            left = deadline.left() - keep
            if left < trials.costs[pick]:
                break
            until = Deadline.after(left, fitter.clock)
        seeded = replace(option, seed=option.seed + j * SEED_STRIDE)
        model = new_model(prepared, seeded).to(device)
        t0 = time.monotonic()
        run = fitter.fit(model, prepared, seeded, deadline=until, validate=True, on_record=on_epoch)
        if run.best_epoch == 0:
            break
        trials.trained.append((seeded, prepared, run, model))
        runs.append(
            (
                len(trials.trained) - 1,
                {
                    "seed": seeded.seed,
                    "score": run.best_score,
                    "best_epoch": run.best_epoch,
                    "epochs_run": run.epoch,
                    "weights": run.best_metrics.get("weights", "raw"),
                    "seconds": round(time.monotonic() - t0, 1),
                },
            )
        )
    trials.seeded[pick] = runs
    return runs


def choose(
    trials: Trials,
    protocol: str,
    *,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> Chosen:
    """The candidate best on validation for ``protocol``, then its final fit.

    ``origin``: the fixed-origin validation MASE (the monitor where a model
    cannot forecast), a Forecast's score; ``online``: the monitor, one step
    ahead, the online predictions' score.
    """
    frame, settings, tried, trained = trials.frame, trials.settings, trials.tried, trials.trained
    keys, eval_horizon, deadline = trials.keys, trials.eval_horizon, trials.deadline
    finite = all(math.isfinite(t["origin_score"]) for t in tried)
    by = "origin_score" if protocol == "origin" and finite else "score"
    pick = min(range(len(tried)), key=lambda k: (not math.isfinite(tried[k][by]), tried[k][by]))
    option, prepared, state, model = trained[pick]
    record: dict[str, Any] = {
        "monitor": settings.monitor,
        "chosen_by": "val_origin_mase" if by == "origin_score" else settings.monitor,
        "origin_horizon": eval_horizon,
        "chosen": pick,
        "forecast": forecast_kind(prepared.horizon),
        "candidates": tried,
    }

    def budget_left() -> float:
        return float("inf") if deadline is None else deadline.left()

    def final_of(k: int) -> tuple[StreamingLSTM | None, str]:
        if k not in trials.finals:
            validated = _validated(trained, [k])
            trials.finals[k] = _final(
                settings, trained[k], validated, budget_left, device, on_epoch, trials.fitter
            )
        return trials.finals[k]

    def averaged(members: list[int]) -> tuple[StreamingLSTM, dict[str, Any]]:
        model = _validated(trained, members)
        scores = {
            "candidates": [k for k in members if k < len(tried)],
            "seeds": sum(k >= len(tried) for k in members),
            "score": evaluate(model, prepared, list(range(len(prepared))))
            .metrics()
            .get(settings.monitor, math.nan),
            "origin_score": origin_mase(
                as_loaded(frame, prepared, model, option), prepared, eval_horizon
            ),
        }
        return model, scores

    group = average_group(tried, keys, pick, by, settings.average_top)
    validated = _validated(trained, [pick])
    best, avg_score = tried[pick][by], math.nan
    if len(group) > 1:
        model_avg, avg = averaged(group)
        avg["kept"] = bool(avg[by] < best)
        record["average"] = avg
        if avg["kept"]:
            validated, best, avg_score = model_avg, avg[by], avg["score"]
        else:
            group = [pick]
    # The seeds join what validation kept, on the same condition: they never undo it.
    seeds = train_seeds(trials, pick, device=device, on_epoch=on_epoch)
    if seeds:
        record["seeds"] = [r for _, r in seeds]
        model_avg, avg = averaged(group + [k for k, _ in seeds])
        avg["kept"] = bool(avg[by] < best)
        record["seeds_average"] = avg
        if avg["kept"]:
            group = group + [k for k, _ in seeds]
            validated, avg_score = model_avg, avg["score"]
    record["served"] = {
        "candidates": sorted(k for k in group if k < len(tried)),
        "seeds": sum(k >= len(tried) for k in group),
    }
    finals = [final_of(k) for k in group]
    record["final_fit"] = "; ".join(note for _, note in finals)
    final = _combined(trained, group, [f for f, _ in finals])
    if len(group) > 1:
        state = replace(state, best_state=validated.state_dict(), best_score=avg_score)
        model = validated
    first = (
        first_step_pick(tried, keys, pick, state.best_score) if settings.online_first_step else None
    )
    if first is not None:
        f_validated = _validated(trained, [first])
        f_final, note = final_of(first)
        width = prepared.streams[0].z.shape[1] * max(1, len(prepared.quantile_levels))
        model = splice_first_step(f_validated, validated, width)
        state = replace(state, best_state=model.state_dict())
        if final is not None or f_final is not None:
            final = splice_first_step(f_final or f_validated, final or validated, width)
        record["first_step"] = {"candidate": first, "final_fit": note}
    if prepared.horizon > 1 and math.isfinite(tried[pick]["origin_score"]):
        # The validated model as served: ``model`` alone is still the last epoch's.
        served = model if first is not None else validated
        record["forecast_blend"] = blend_choice(
            frame, prepared, served, option, eval_horizon, tried[pick]["origin_score"]
        )
        if record["forecast_blend"]["kept"]:
            record["forecast"] = forecast_kind(prepared.horizon, blend=True)
    return Chosen(option, prepared, state, model, final, record)


def blend_choice(
    frame: LongFrame,
    prepared: Prepared,
    model: StreamingLSTM,
    option: TrainSettings,
    eval_horizon: int,
    chosen_score: float,
) -> dict[str, Any]:
    """Whether the served direct head's Forecasts blend in its first step fed back
    (``ModelConfig.forecast_blend``): kept where that scores better at fixed origin.

    Both are scored on the validated model as it is served (the averages and the
    first-step splice made), ``chosen_score`` being the chosen run's own figure.
    """
    scores = {
        blend: origin_mase(as_loaded(frame, prepared, model, option, blend), prepared, eval_horizon)
        for blend in (False, True)
    }
    return {
        "origin_score": scores[True],
        "without": scores[False],
        "chosen_run": chosen_score,
        "kept": bool(scores[True] < scores[False]),
    }


def _validated(trained: list[Trained], group: list[int]) -> StreamingLSTM:
    """The best epoch of one candidate, or of several averaged as one model."""
    models = [restore_best(trained[k][3], trained[k][2]) for k in group]
    return models[0] if len(models) == 1 else average_models(models)


def _combined(
    trained: list[Trained], group: list[int], finals: list[StreamingLSTM | None]
) -> StreamingLSTM | None:
    """The group's final fits averaged (a member without one: its validated model)."""
    if all(f is None for f in finals):
        return None
    if len(group) == 1:
        return finals[0]
    parts = [f or _validated(trained, [k]) for k, f in zip(group, finals, strict=True)]
    return average_models(parts)


def average_group(
    tried: list[dict[str, Any]], keys: list[str], pick: int, by: str, top: int
) -> list[int]:
    """``pick`` and the next best candidates by ``by`` of its head and features (``top`` in all)."""
    same = [
        k
        for k in range(len(tried))
        if keys[k] == keys[pick]
        and tried[k]["horizon"] == tried[pick]["horizon"]
        and math.isfinite(tried[k][by])
    ]
    return sorted(same, key=lambda k: (k != pick, tried[k][by]))[:top]


def first_step_pick(
    tried: list[dict[str, Any]], keys: list[str], pick: int, score: float | None = None
) -> int | None:
    """The candidate whose first step to serve beside ``pick``'s later steps, if any.

    Only where ``pick`` has a direct head (a fed-back head's Forecast is its
    first step) and another candidate of the same features scored better one
    step ahead on validation: then online predictions come from that one.
    """
    if tried[pick]["horizon"] == 1:
        return None
    same = [k for k in range(len(tried)) if keys[k] == keys[pick]]
    best = min(same, key=lambda k: (not math.isfinite(tried[k]["score"]), tried[k]["score"]))
    chosen = tried[pick]["score"] if score is None else score  # the chosen model's own
    return best if tried[best]["score"] < chosen else None


def _final(
    settings: TrainSettings,
    trained: tuple[TrainSettings, Prepared, LoopState, StreamingLSTM],
    validated: StreamingLSTM,
    left: Callable[[], float],
    device: str | torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    fitter: Fitter,
) -> tuple[StreamingLSTM | None, str]:
    """The final fit of one trained candidate (None: none) and what the record says of it."""
    option, prepared, state, _model = trained
    if settings.final_fit == "off" or state.best_epoch == 0:
        return None, "off"
    need = refit_seconds(state, prepared)
    if need > left():
        return None, f"skipped: {need:.0f} s needed, {max(left(), 0):.0f} s of the budget left"
    refit = _refit(
        prepared, refit_settings(option, state), state.best_epoch, device, on_epoch, fitter
    )
    return final_model(settings.final_fit, validated, refit), final_note(
        settings.final_fit, state.best_epoch
    )


def refit_settings(settings: TrainSettings, state: LoopState) -> TrainSettings:
    """A final fit's settings: it has no validation to choose weights by, so it keeps
    what the validated model's best epoch kept (raw or the moving average)."""
    averaged = state.best_metrics.get("weights") == "ema"
    return replace(settings, weight_average="ema" if averaged else "off")


def refit_seconds(state: LoopState, prepared: Prepared) -> float:
    """What a refit for the best epoch count on every training row takes at the pace so far.

    On the budget's clock, as the budget left it is compared with: on the wall clock a
    busy machine skipped refits that a quiet one made, so the model depended on the load.
    """
    per_epoch = state.fit_budget_seconds / max(state.epoch, 1)
    rows = prepared.whole().train_pairs() / max(prepared.train_pairs(), 1)
    return per_epoch * rows * state.best_epoch


def final_model(mode: str, validated: StreamingLSTM, refit: StreamingLSTM) -> StreamingLSTM:
    """What is exported after a refit: the refit alone, or both averaged (``blend``).

    The blend keeps the validated model's selection on held-out rows and adds
    what the refit learnt from the most recent ones, the validation rows; as
    two members of one model (streamcell.trainer.ensemble) it is served as one.
    """
    return merge_members([validated, refit]) if mode == "blend" else refit


def final_note(mode: str, epochs: int) -> str:
    note = f"whole training part, {epochs} epochs"
    return f"{note}, averaged with the validated model" if mode == "blend" else note


def forecast_kind(horizon: int, blend: bool = False) -> str:
    """How a Forecast of this head runs, in words."""
    if horizon == 1:
        return "feedback (one-step head, predictions fed back)"
    direct = f"direct ({horizon} steps per LSTM step, fed back in chunks beyond)"
    if blend:
        return f"{direct}, averaged with its first step fed back"
    return direct


def _refit(
    prepared: Prepared,
    settings: TrainSettings,
    epochs: int,
    device: str | torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None,
    fitter: Fitter,
) -> StreamingLSTM:
    whole = prepared.whole()
    model = new_model(whole, settings).to(device)
    again = replace(settings, epochs=epochs)
    state = fitter.fit(model, whole, again, deadline=None, validate=False, on_record=on_epoch)
    return restore_best(model, state)

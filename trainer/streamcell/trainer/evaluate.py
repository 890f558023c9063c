"""Validation as serving sees it: one step ahead, online, state warmed on the past.

Each stream's model is run over its whole history with state carried; the
predictions of its last rows (from ``n_train`` on) are scored in target units
against the actual next values and against the last-value forecast. MASE
divides a stream's MAE by its in-sample last-value MAE (training part), and is
averaged over streams. Statistics are kept as sums (:class:`EvalStats`) so
that workers holding disjoint shards can add theirs up.

Two code paths give the same numbers to float32 rounding: ``forward``
(torch.nn.LSTM over padded batches, fast; used every epoch) and ``step``
(the streaming step the Predictor calls; used for the exported metrics).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from streamcell.core.model import StreamingLSTM
from streamcell.core.quantiles import median_index
from streamcell.core.recipe import levels
from streamcell.trainer.prepare import Prepared, StreamArrays

EVAL_BATCH = 256  # streams per evaluation batch
EVAL_CHUNK = 4096  # time steps per forward call (bounds memory on long streams)
STATS = (
    "abs_sum",
    "sq_sum",
    "count",
    "naive_abs_sum",
    "naive_sq_sum",
    "mase_sum",
    "naive_mase_sum",
    "mase_streams",
    "snaive_abs_sum",
    "snaive_mase_sum",
)


@dataclass(frozen=True)
class EvalStats:
    """Summable validation statistics; ``values`` follows :data:`STATS`."""

    values: np.ndarray  # float64 [len(STATS)]

    @classmethod
    def zero(cls) -> EvalStats:
        return cls(np.zeros(len(STATS), dtype=np.float64))

    def __add__(self, other: EvalStats) -> EvalStats:
        return EvalStats(self.values + other.values)

    def metrics(self) -> dict[str, float]:
        v = dict(zip(STATS, self.values.tolist(), strict=True))
        n, m = v["count"], v["mase_streams"]
        nan = float("nan")
        return {
            "val_mae": v["abs_sum"] / n if n else nan,
            "val_rmse": math.sqrt(v["sq_sum"] / n) if n else nan,
            "val_mase": v["mase_sum"] / m if m else nan,
            "last_value_mae": v["naive_abs_sum"] / n if n else nan,
            "last_value_rmse": math.sqrt(v["naive_sq_sum"] / n) if n else nan,
            "last_value_mase": v["naive_mase_sum"] / m if m else nan,
            "seasonal_naive_mae": v["snaive_abs_sum"] / n if n else nan,
            "seasonal_naive_mase": v["snaive_mase_sum"] / m if m else nan,
            "val_points": int(n),
        }


@torch.no_grad()
def predict_streams(
    model: StreamingLSTM, prepared: Prepared, indices: Sequence[int], path: str = "forward"
) -> list[np.ndarray]:
    """Forecasts in target units, per stream ``[T-1, O]`` (row t forecasts y_{t+1})."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    outputs = prepared.streams[0].z.shape[1] if prepared.streams else 1
    levels = prepared.quantile_levels
    median = median_index(levels) if levels else 0
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(indices), EVAL_BATCH):
            group = [prepared.streams[i] for i in indices[start : start + EVAL_BATCH]]
            z = _run(model, group, device, path)
            for k, s in enumerate(group):
                # Step 1 at the median, its levels sorted first as the Predictor serves
                # them (a positive scale and std keep the order); a point head: all.
                step1 = z[k, : len(s.u), : max(1, len(levels)) * outputs]
                p = np.sort(step1.reshape(len(step1), -1, outputs), axis=1)[:, median]
                p = (p * prepared.norm.target_std + prepared.norm.target_mean) * s.target_scale
                out.append(held_rows(prepared, s, p))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def predict_levels(
    model: StreamingLSTM, prepared: Prepared, indices: Sequence[int]
) -> list[np.ndarray]:
    """A quantile head's step-1 quantiles in target units, per stream ``[T-1, levels, O]``,
    sorted along levels as the Predictor serves them (row t forecasts y_{t+1})."""
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    outputs = prepared.streams[0].z.shape[1] if prepared.streams else 1
    levels = max(1, len(prepared.quantile_levels))
    norm = prepared.norm
    out: list[np.ndarray] = []
    try:
        for start in range(0, len(indices), EVAL_BATCH):
            group = [prepared.streams[i] for i in indices[start : start + EVAL_BATCH]]
            z = _run(model, group, device, "forward")
            for k, s in enumerate(group):
                step1 = z[k, : len(s.u), : levels * outputs].reshape(len(s.u), levels, outputs)
                q = step1 * norm.target_std + norm.target_mean
                out.append(held_rows(prepared, s, np.sort(q * s.target_scale[:, None, :], axis=1)))
    finally:
        model.train(was_training)
    return out


def held_rows(prepared: Prepared, s: StreamArrays, values: np.ndarray) -> np.ndarray:
    """``values`` ``[T-1, ...]`` (row t: after event t) with each row whose recipe window
    is flat set to its level, as the Predictor serves it (streamcell.core.recipe.level)."""
    if prepared.recipe is None:
        return values
    at = levels(prepared.recipe, s.y[:, 0])
    if at is None:
        return values
    at = at[: len(values)].reshape(-1, *([1] * (values.ndim - 1)))
    return np.where(np.isnan(at), values, at).astype(values.dtype)


def _run(model: StreamingLSTM, group: list[StreamArrays], device, path: str) -> np.ndarray:
    longest = max(len(s.u) for s in group)
    u = np.zeros((len(group), longest, group[0].u.shape[1]), dtype=np.float32)
    for k, s in enumerate(group):
        u[k, : len(s.u)] = s.u
    x = torch.from_numpy(u).to(device)
    h, c = model.zero_state(len(group), device)
    parts = []
    if path == "forward":
        for t in range(0, longest, EVAL_CHUNK):
            y, (h, c) = model(x[:, t : t + EVAL_CHUNK], (h, c))
            parts.append(y)
    elif path == "step":
        for t in range(longest):
            res = model.step(x[:, t], h, c)
            h, c = res.h, res.c
            parts.append(res.y.unsqueeze(1))
    else:
        raise ValueError(f"path must be forward or step, got {path!r}")
    return torch.cat(parts, dim=1).cpu().numpy()


def evaluate(
    model: StreamingLSTM, prepared: Prepared, indices: Sequence[int], path: str = "forward"
) -> EvalStats:
    """Validation statistics of the given streams."""
    preds = predict_streams(model, prepared, indices, path)
    total = np.zeros(len(STATS), dtype=np.float64)
    for i, yhat in zip(indices, preds, strict=True):
        total += _stream_stats(prepared.streams[i], yhat, prepared.season)
    return EvalStats(total)


def _stream_stats(s: StreamArrays, yhat: np.ndarray, season: int = 1) -> np.ndarray:
    y = s.y.astype(np.float64)
    n = s.n_train
    actual = y[n:]
    pred = yhat[n - 1 :].astype(np.float64)
    naive = y[n - 1 : -1]
    # Seasonal naive: the value one season back (the last value where there is none yet).
    back = np.arange(n, len(y)) - season
    snaive = np.where((back >= 0)[:, None], y[np.maximum(back, 0)], naive)
    err, nerr, serr = np.abs(actual - pred), np.abs(actual - naive), np.abs(actual - snaive)
    in_sample = np.abs(np.diff(y[:n], axis=0)).mean(axis=0)
    ok = in_sample > 0
    mase = naive_mase = snaive_mase = 0.0
    streams = 0.0
    if ok.any() and len(actual):
        mase = float((err.mean(axis=0)[ok] / in_sample[ok]).mean())
        naive_mase = float((nerr.mean(axis=0)[ok] / in_sample[ok]).mean())
        snaive_mase = float((serr.mean(axis=0)[ok] / in_sample[ok]).mean())
        streams = 1.0
    return np.array(
        [
            err.sum(),
            (err**2).sum(),
            err.size,
            nerr.sum(),
            (nerr**2).sum(),
            mase,
            naive_mase,
            streams,
            serr.sum(),
            snaive_mase,
        ]
    )


def worse_than_baselines(metrics: dict[str, float]) -> str | None:
    """Why a model should not be published (worse than both baselines), or None."""
    model = metrics["val_mase"]
    last, seasonal = metrics["last_value_mase"], metrics["seasonal_naive_mase"]
    if not math.isfinite(model):
        return "its validation MASE is not a number"
    if model >= last and model >= seasonal:
        return (
            f"its validation MASE {model:.4f} is worse than both last value ({last:.4f}) "
            f"and seasonal naive ({seasonal:.4f})"
        )
    return None

"""An event whose step would overflow the model is refused alone; the batch goes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from streamcell.core.checkpoint import LoadedModel, ModelConfig, load_checkpoint, save_checkpoint
from streamcell.core.events import REASON_NON_FINITE_STATE, EventBatch
from streamcell.core.model import StreamingLSTM
from streamcell.core.predictor import PREDICTED, REFUSED, Predictor

F = 3
HUGE = 3e38  # finite in float32; infinite once divided by an input std below 1


def save(tmp_path: Path, scaling: str = "global") -> LoadedModel:
    """A tiny model whose inputs are normalised by stds below 1, as real features often are.

    x = (HUGE, -HUGE, HUGE) normalises to (inf, -inf, inf): the gates sum
    infinities of both signs, NaN, which a step would carry into h and c.
    """
    torch.manual_seed(0)
    model = StreamingLSTM(F, 8, 1, F)
    names = ["a", "b", "c"]
    cfg = ModelConfig(
        F, 8, 1, F, names, names, [0.0] * F, [0.5] * F, [0.0] * F, [1.0] * F, scaling=scaling
    )
    return load_checkpoint(save_checkpoint(tmp_path, "m", model, cfg))


def test_an_overflowing_event_is_refused_and_its_stream_left_as_it_was(tmp_path):
    loaded = save(tmp_path)
    # One event time for all: a refused event still counts as seen (last_seen).
    p, ref = Predictor(loaded, clock=lambda: 1e9), Predictor(loaded, clock=lambda: 1e9)
    warm = EventBatch.of(["a", "z"], [[1.0, 2.0, 3.0], [0.5, 0.5, 0.5]])
    p.predict(warm)
    ref.predict(warm)
    before = p.store.snapshot(["z"])
    streams = ["a", "z", "b", "a"]
    x = np.array(
        [[1.0, 1.0, 1.0], [HUGE, -HUGE, HUGE], [0.0, 1.0, 2.0], [2.0, 0.0, 1.0]], np.float32
    )
    result = p.predict(EventBatch.of(streams, x))
    assert result.outcome.tolist() == [PREDICTED, REFUSED, PREDICTED, PREDICTED]
    assert [(k, reason) for k, reason, _ in result.refused] == [(1, REASON_NON_FINITE_STATE)]
    assert "'z'" in result.refused[0][2] and "overflowed the model" in result.refused[0][2]
    assert p.store.snapshot(["z"]) == before
    assert "z" not in result.touched
    # The other events are applied exactly as without the refused one.
    good = [0, 2, 3]
    expected = ref.predict(EventBatch.of([streams[k] for k in good], x[good]))
    np.testing.assert_array_equal(result.yhat[good], expected.yhat)
    assert np.isfinite(p.store.h.cpu().numpy()).all() and np.isfinite(p.store.c.cpu().numpy()).all()
    assert p.store.snapshot(["a", "b"]) == ref.store.snapshot(["a", "b"])
    # The stream still takes a normal event afterwards, from its old state.
    again = EventBatch.of(["z"], [[0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(p.predict(again).yhat, ref.predict(again).yhat)


def test_a_wave_of_only_refused_events_changes_nothing(tmp_path):
    p = Predictor(save(tmp_path), clock=lambda: 1e9)
    p.predict(EventBatch.of(["z"], [[0.5, 0.5, 0.5]]))
    before = p.store.snapshot(["z"])
    result = p.predict(EventBatch.of(["z"], [[HUGE, -HUGE, HUGE]]))
    assert result.outcome.tolist() == [REFUSED]
    assert p.store.snapshot(["z"]) == before and result.touched == []


def test_rows_are_told_apart_when_a_sum_of_finite_values_overflows():
    """The wave's one sum may overflow with every value finite: the row check decides."""
    from streamcell.core.predictor import _finite_rows

    h = torch.zeros(2, 3, 4)
    c = torch.full((2, 3, 4), 3e38)  # finite, but their sum is not
    c[1, 2, 0] = float("nan")
    yhat = torch.zeros(3, 2)
    yhat[0, 1] = float("inf")
    assert not np.isfinite(float(h.sum() + c.sum() + yhat.sum()))
    assert _finite_rows(h, c, yhat).tolist() == [False, True, False]

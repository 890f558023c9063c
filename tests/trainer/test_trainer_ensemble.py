"""Ensembles trained side by side in one wide LSTM and served as that LSTM."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from streamcell.core.errors import ConfigError
from streamcell.core.model import StreamingLSTM
from streamcell.trainer.api import TrainSettings, load_long_frame, train_local
from streamcell.trainer.ensemble import (
    average_models,
    block_masks,
    init_members,
    merge_members,
    splice_first_step,
)
from streamcell.trainer.loop import _HeadLoss


def test_the_plain_head_is_the_mean_of_the_members() -> None:
    torch.manual_seed(0)
    model = StreamingLSTM(5, 3 * 8, 2, 4)
    init_members(model, 3)
    x = torch.randn(2, 6, 5)
    y, _ = model(x)
    per, _ = model(x, None, 3)
    assert per.shape == (2, 6, 3, 4)
    torch.testing.assert_close(per.mean(dim=2), y)


def test_a_member_reads_nothing_of_the_others() -> None:
    torch.manual_seed(1)
    model = StreamingLSTM(3, 2 * 6, 2, 1)
    init_members(model, 2)
    x = torch.randn(2, 9, 3)
    before, _ = model(x, None, 2)
    with torch.no_grad():  # move every weight row of member 2, even off its block
        for p in model.lstm.parameters():
            p.view(4, 12, -1)[:, 6:] += 1.0
    after, _ = model(x, None, 2)
    torch.testing.assert_close(after[:, :, 0], before[:, :, 0])
    assert not torch.allclose(after[:, :, 1], before[:, :, 1])


def test_merged_models_serve_their_mean_step_by_step() -> None:
    torch.manual_seed(2)
    models = [StreamingLSTM(4, 6, 2, 3).eval() for _ in range(3)]
    merged = merge_members(models)
    assert merged.hidden_size == 18
    x = torch.randn(5, 8, 4)
    want = torch.stack([m(x)[0] for m in models]).mean(dim=0)
    h, c = merged.zero_state(5)
    for t in range(8):
        step = merged.step(x[:, t], h, c)
        h, c = step.h, step.c
        torch.testing.assert_close(step.y, want[:, t], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="share one shape"):
        merge_members([models[0], StreamingLSTM(4, 7, 2, 3)])


def test_models_of_any_widths_average_as_one() -> None:
    torch.manual_seed(5)
    models = [StreamingLSTM(4, w, 2, 3).eval() for w in (6, 3, 8)]
    merged = average_models(models)
    assert merged.hidden_size == 17
    x = torch.randn(2, 5, 4)
    want = torch.stack([m(x)[0] for m in models]).mean(dim=0)
    torch.testing.assert_close(merged(x)[0], want, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="one head"):
        average_models([models[0], StreamingLSTM(4, 6, 2, 6)])


def test_a_spliced_model_serves_one_first_step_and_the_others_later_steps() -> None:
    torch.manual_seed(4)
    first, rest = StreamingLSTM(4, 6, 2, 3).eval(), StreamingLSTM(4, 5, 2, 12).eval()
    spliced = splice_first_step(first, rest, 3)  # 3 outputs a step: [4 steps, 3]
    assert (spliced.hidden_size, spliced.output_size) == (11, 12)
    x = torch.randn(2, 7, 4)
    want = torch.cat([first(x)[0], rest(x)[0][..., 3:]], dim=-1)
    h, c = spliced.zero_state(2)
    for t in range(7):
        step = spliced.step(x[:, t], h, c)
        h, c = step.h, step.c
        torch.testing.assert_close(step.y, want[:, t], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="share inputs and layers"):
        splice_first_step(StreamingLSTM(4, 6, 1, 3), rest, 3)
    with pytest.raises(ValueError, match="outputs"):
        splice_first_step(first, StreamingLSTM(4, 5, 2, 3), 3)


def test_masks_cover_the_recurrent_and_upper_input_weights_only() -> None:
    model = StreamingLSTM(3, 2 * 4, 2, 1)
    names = {id(p): n for n, p in model.lstm.named_parameters()}
    masked = sorted(names[id(p)] for p, _ in block_masks(model, 2))
    assert masked == ["weight_hh_l0", "weight_hh_l1", "weight_ih_l1"]
    assert block_masks(model, 1) == []
    with pytest.raises(ValueError, match="do not split"):
        init_members(StreamingLSTM(3, 7, 1, 1), 2)


def test_each_member_is_scored_on_its_own_loss() -> None:
    data = load_long_frame(_series(streams=2, length=40))
    from streamcell.trainer.api import prepare_frame

    prepared = prepare_frame(data, TrainSettings(horizon=2))
    loss = _HeadLoss(prepared, torch.device("cpu"))
    width = 2 * len(prepared.quantile_levels)
    y = torch.randn(2, 3, 2, width)  # two members
    z, m = torch.randn(2, 3, 2, 1), torch.ones(2, 3, 2)
    alone = [loss(y[:, :, k], z, m) for k in range(2)]
    torch.testing.assert_close(loss(y, z, m, 2), (alone[0] + alone[1]) / 2)
    # The loss of the mean is not the mean of the losses: members are not one model.
    assert not torch.allclose(loss(y.mean(dim=2), z, m), loss(y, z, m, 2))


def test_training_keeps_the_blocks_and_serves_one_wide_model() -> None:
    data = load_long_frame(_series(streams=3, length=60))
    result = train_local(
        data, TrainSettings(hidden=4, members=2, layers=2, epochs=2, final_fit="off"), threads=1
    )
    model = result.model
    assert model.hidden_size == 8
    for name, p in model.lstm.named_parameters():
        if name.startswith("weight_hh") or name == "weight_ih_l1":
            off = p.detach().view(4, 2, 4, 2, 4)  # gate, member row, unit, member column, unit
            assert torch.count_nonzero(off[:, 0, :, 1]) == 0
            assert torch.count_nonzero(off[:, 1, :, 0]) == 0
    assert result.config.metrics["val_mase"] < float("inf")
    with pytest.raises(ConfigError, match="members"):
        TrainSettings(members=0)


def _series(streams: int, length: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    t = np.arange(length)
    return pd.concat(
        [
            pd.DataFrame(
                {
                    "stream": f"s{k}",
                    "seq": t,
                    "value": 10 * (k + 1) + np.sin(2 * np.pi * t / 12) + rng.normal(0, 0.1, length),
                }
            )
            for k in range(streams)
        ],
        ignore_index=True,
    )

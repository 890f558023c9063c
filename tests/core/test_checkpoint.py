"""The checkpoint format: plain-PyTorch loadable, atomic versions, no pickle, clear errors."""

from __future__ import annotations

import json
import os
import struct
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from streamcell.core.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelConfig,
    latest_version,
    list_versions,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from streamcell.core.errors import CheckpointError
from streamcell.core.model import StreamingLSTM


def config(inputs: int = 3, hidden: int = 8, layers: int = 2, outputs: int = 3) -> ModelConfig:
    names = [f"f{k}" for k in range(inputs)]
    return ModelConfig(
        input_size=inputs,
        hidden_size=hidden,
        num_layers=layers,
        output_size=outputs,
        features=names,
        targets=names[:outputs],
        input_mean=[0.5] * inputs,
        input_std=[2.0] * inputs,
        target_mean=[0.5] * outputs,
        target_std=[2.0] * outputs,
        metrics={"val_mae": 0.25},
    )


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, StreamingLSTM]:
    torch.manual_seed(0)
    model = StreamingLSTM(3, 8, 2, 3)
    return save_checkpoint(tmp_path, "demo", model, config()), model


def test_loads_into_plain_torch_modules_strictly(saved):
    path, model = saved
    from safetensors.torch import load_file

    tensors = load_file(str(path / WEIGHTS_FILE))
    cfg = json.loads((path / CONFIG_FILE).read_text())
    lstm = torch.nn.LSTM(cfg["input_size"], cfg["hidden_size"], cfg["num_layers"], batch_first=True)
    head = torch.nn.Linear(cfg["hidden_size"], cfg["output_size"])
    lstm.load_state_dict(
        {k[5:]: v for k, v in tensors.items() if k.startswith("lstm.")}, strict=True
    )
    head.load_state_dict(
        {k[5:]: v for k, v in tensors.items() if k.startswith("head.")}, strict=True
    )
    assert sorted(tensors) == sorted(
        [f"lstm.{w}_l{k}" for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh") for k in (0, 1)]
        + ["head.weight", "head.bias"]
    )
    x = torch.randn(2, 5, 3)
    out, _ = lstm(x)
    expected, _ = model(x)
    assert torch.equal(head(out), expected)


def test_config_round_trips_with_the_required_fields(saved):
    path, _ = saved
    data = json.loads((path / CONFIG_FILE).read_text())
    for key in (
        "input_size",
        "hidden_size",
        "num_layers",
        "output_size",
        "features",
        "targets",
        "input_mean",
        "input_std",
        "target_mean",
        "target_std",
        "created_at",
        "metrics",
    ):
        assert key in data, key
    loaded = load_checkpoint(path)
    assert loaded.config == replace(config(), created_at=data["created_at"])
    assert loaded.name == "demo" and loaded.version == path.name


def test_newest_complete_version_wins_and_half_written_ones_are_ignored(tmp_path):
    model = StreamingLSTM(3, 8, 2, 3)
    first = save_checkpoint(tmp_path, "m", model, config(), version="20260101T000000.000000Z")
    second = save_checkpoint(tmp_path, "m", model, config(), version="20260102T000000.000000Z")
    # A later version still being written (temporary name) and one missing its weights.
    (tmp_path / "m" / ".tmp-20260103T000000.000000Z-1").mkdir()
    partial = tmp_path / "m" / "20260104T000000.000000Z"
    partial.mkdir()
    (partial / CONFIG_FILE).write_text(config().to_json())
    assert list_versions(tmp_path, "m") == [first.name, second.name]
    assert latest_version(tmp_path, "m") == second.name
    assert load_latest(tmp_path, "m").version == second.name


def test_versions_sort_by_creation_time(tmp_path):
    model = StreamingLSTM(3, 8, 2, 3)
    made = [save_checkpoint(tmp_path, "m", model, config()).name for _ in range(3)]
    assert list_versions(tmp_path, "m") == made == sorted(made)


def test_missing_registry_or_model_says_so(tmp_path):
    with pytest.raises(CheckpointError, match="no complete version of model 'nope'"):
        load_latest(tmp_path, "nope")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope" / "v1")


@pytest.mark.parametrize("name", ["../escape", "", "a/b", ".hidden", "x" * 200])
def test_hostile_names_are_refused(tmp_path, name):
    with pytest.raises(CheckpointError, match="must be 1-128 characters"):
        save_checkpoint(tmp_path, name, StreamingLSTM(3, 8, 2, 3), config())


def test_truncated_weights_file(saved):
    path, _ = saved
    data = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_hostile_header_length(saved):
    path, _ = saved
    (path / WEIGHTS_FILE).write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(path)


def test_a_pickle_is_never_loaded(saved, tmp_path):
    path, _ = saved
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, path / WEIGHTS_FILE)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


def test_shape_mismatch_between_weights_and_config(saved):
    path, _ = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    cfg["hidden_size"] = 16
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"tensor lstm.weight_ih_l0 is torch.float32 \(32, 3\)"
    ):
        load_checkpoint(path)


def test_extra_or_missing_tensors(saved):
    path, model = saved
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors.pop("head.bias")
    tensors["evil"] = torch.zeros(1)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(
        CheckpointError, match=r"missing tensors \['head.bias'\], unexpected tensors \['evil'\]"
    ):
        load_checkpoint(path)


def test_non_finite_weights(saved):
    path, model = saved
    tensors = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    tensors["head.bias"][0] = float("nan")
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("targets"), "missing targets"),
        (lambda c: c.update(input_std=[1.0, 0.0, 1.0]), "input_std must be positive"),
        (lambda c: c.update(features=["a", "b"]), "features has 2 entries, expected 3"),
        (lambda c: c.update(num_layers="2"), "num_layers must be a positive integer"),
        (lambda c: c.update(scaling="magic"), "scaling must be one of"),
        (lambda c: c.update(format_version=9), "format_version 9 is not supported"),
        (lambda c: c.update(input_mean=[0, "x", 0]), "input_mean must hold finite numbers"),
    ],
)
def test_bad_configs_get_clear_errors(saved, edit, message):
    path, _ = saved
    cfg = json.loads((path / CONFIG_FILE).read_text())
    edit(cfg)
    (path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_config_that_is_not_json(saved):
    path, _ = saved
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_checkpoint(path)


def test_per_stream_scaling_needs_targets_among_features():
    with pytest.raises(CheckpointError, match="per-stream scaling needs every target"):
        replace(config(), targets=("other", "f1", "f2"), scaling="stream_mean_abs")


def recipe_config(**recipe: object) -> ModelConfig:
    spec = {"target": 0, "lags": [1, 2, 12], "scale_window": 12, "log_scale": True, **recipe}
    return ModelConfig(
        input_size=1,
        hidden_size=8,
        num_layers=1,
        output_size=1,
        features=["y"],
        targets=["y"],
        input_mean=[0.0] * 4,
        input_std=[1.0] * 4,
        target_mean=[0.0],
        target_std=[1.0],
        scaling="window_mean_abs",
        recipe=spec,
    )


def test_a_recipe_model_round_trips_and_its_lstm_takes_the_features(tmp_path):
    cfg = recipe_config()
    assert cfg.lstm_input_size == 4
    assert cfg.model_inputs == ("lag_1", "lag_2", "lag_12", "log_scale")
    path = save_checkpoint(tmp_path, "lags", StreamingLSTM(4, 8, 1, 1), cfg)
    loaded = load_checkpoint(path)
    assert replace(loaded.config, created_at="") == cfg
    assert loaded.config.history == cfg.history is not None
    assert loaded.config.history.buffer_size == 12
    assert loaded.model.input_size == 4


def test_a_config_without_a_recipe_is_written_as_before(saved):
    path, _ = saved
    assert "recipe" not in json.loads((path / CONFIG_FILE).read_text())
    assert load_checkpoint(path).config.history is None


@pytest.mark.parametrize(
    ("recipe", "scaling", "message"),
    [
        ({"lags": [0]}, "window_mean_abs", "recipe.lags"),
        ({"target": 1}, "window_mean_abs", "recipe.target"),
        (
            {"scale_window": 0, "log_scale": False, "lags": [1, 2, 3, 4]},
            "window_mean_abs",
            "positive",
        ),
        ({}, "global", "scale_window is positive"),
    ],
)
def test_a_bad_recipe_in_config_json_names_the_field(saved, recipe, scaling, message):
    path, _ = saved
    data = json.loads(recipe_config().to_json())
    data["recipe"].update(recipe)
    data["scaling"] = scaling
    (path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(path)
    assert str(path / CONFIG_FILE) in str(err.value)


def test_a_huge_hidden_size_is_refused_before_anything_is_allocated(saved):
    """16 TB of LSTM weights if allocated first; the file's header refutes it at once."""
    path, _ = saved
    data = json.loads((path / CONFIG_FILE).read_text())
    data["hidden_size"] = 1_000_000
    (path / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"lstm.weight_ih_l0 is torch.float32 \(32, 3\)"):
        load_checkpoint(path)

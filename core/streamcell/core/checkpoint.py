"""The checkpoint format and the model registry (a directory tree).

A version is ``REGISTRY/NAME/VERSION/`` holding ``model.safetensors`` (tensor
names exactly ``lstm.*`` and ``head.*`` as torch.nn.LSTM and nn.Linear name
them) and ``config.json`` (:class:`ModelConfig`). Versions are written under a
hidden temporary name and renamed into place, so a reader never sees half a
version; version names sort by creation time, and the newest complete one is
the one to serve. Loading goes through safetensors and json only: no pickle.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from streamcell.core.adaptive import Adaptive
from streamcell.core.calibration import Calibration
from streamcell.core.errors import CheckpointError
from streamcell.core.model import StreamingLSTM
from streamcell.core.normalization import SCALING_GLOBAL, SCALING_WINDOW, SCALINGS
from streamcell.core.quantiles import check_levels
from streamcell.core.recipe import Recipe, RecipeError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1
MAX_HORIZON = 1000  # steps a Forecast may ask for, and so the most a head may predict at once
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelConfig:
    """Everything besides the weights that serving needs to reproduce training.

    ``input_size`` is the number of values in an event (``features`` names
    them). Without a recipe the LSTM takes those values; with one it takes the
    recipe's history features (``model_inputs``), which ``input_mean`` and
    ``input_std`` then normalise.
    """

    input_size: int
    hidden_size: int
    num_layers: int
    output_size: int
    features: tuple[str, ...]
    targets: tuple[str, ...]
    input_mean: tuple[float, ...]
    input_std: tuple[float, ...]
    target_mean: tuple[float, ...]
    target_std: tuple[float, ...]
    scaling: str = SCALING_GLOBAL
    scale_floor: float = 1e-3
    created_at: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    recipe: dict[str, Any] | None = None  # streamcell.core.recipe's config.json form
    # The head (docs/ARCHITECTURE.md): quantile levels (empty: a point head) and
    # the steps ahead it predicts from one LSTM step (1: the next step only).
    quantile_levels: tuple[float, ...] = ()
    horizon: int = 1
    # Factors fitted on validation that widen or narrow the quantiles about the
    # median (streamcell.core.calibration's config.json form); None: served raw.
    calibration: dict[str, Any] | None = None
    # A direct head's Forecast: its point path the mean of the head's chunks and its
    # first step fed back (streamcell.core.forecast); False: the chunks alone.
    forecast_blend: bool = False

    def __post_init__(self) -> None:
        for name in ("features", "targets", "input_mean", "input_std", "target_mean", "target_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        try:
            object.__setattr__(self, "quantile_levels", check_levels(self.quantile_levels))
        except ValueError as exc:
            raise CheckpointError(f"invalid model config: {exc}") from None
        self.validate()

    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise CheckpointError(f"invalid model config: {msg}")

        for name in ("input_size", "hidden_size", "num_layers", "output_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                fail(f"{name} must be a positive integer, got {value!r}")
        history = self._parse_recipe(fail)
        inputs = self.input_size if history is None else history.num_features
        for name, size in (
            ("features", self.input_size),
            ("input_mean", inputs),
            ("input_std", inputs),
            ("targets", self.output_size),
            ("target_mean", self.output_size),
            ("target_std", self.output_size),
        ):
            if len(getattr(self, name)) != size:
                fail(f"{name} has {len(getattr(self, name))} entries, expected {size}")
        for name in ("features", "targets"):
            values = getattr(self, name)
            if not all(isinstance(v, str) and v for v in values):
                fail(f"{name} must be non-empty strings")
            if len(set(values)) != len(values):
                fail(f"{name} has repeated names")
        for name in ("input_mean", "input_std", "target_mean", "target_std"):
            for v in getattr(self, name):
                if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                    fail(f"{name} must hold finite numbers, got {v!r}")
        for name in ("input_std", "target_std"):
            if any(v <= 0 for v in getattr(self, name)):
                fail(f"{name} must be positive")
        if self.scaling not in SCALINGS:
            fail(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
        if self.scaling != SCALING_GLOBAL and self.target_index is None:
            fail("per-stream scaling needs every target to be one of the features")
        windowed = history is not None and history.scale_window > 0
        if (self.scaling == SCALING_WINDOW) != windowed:
            fail(
                f"scaling {SCALING_WINDOW!r} goes with a recipe whose scale_window is positive "
                f"(got scaling {self.scaling!r}, recipe {self.recipe!r})"
            )
        if history is not None and self.scaling not in (SCALING_GLOBAL, SCALING_WINDOW):
            fail(f"scaling {self.scaling!r} cannot go with a recipe (its scale is the recipe's)")
        if history is not None and self.targets != (self.features[history.target],):
            fail(
                f"a model with a recipe predicts the column it follows: targets must be "
                f"[{self.features[history.target]!r}], got {list(self.targets)}"
            )
        if not (isinstance(self.scale_floor, int | float) and self.scale_floor > 0):
            fail(f"scale_floor must be positive, got {self.scale_floor!r}")
        if self.format_version != FORMAT_VERSION:
            fail(f"format_version {self.format_version!r} is not supported (expected 1)")
        problem = check_head(self.horizon)
        if problem:
            fail(problem)
        if not isinstance(self.forecast_blend, bool):
            fail(f"forecast_blend must be true or false, got {self.forecast_blend!r}")
        if self.forecast_blend and self.horizon == 1:
            fail(
                "forecast_blend needs a direct head (horizon above 1): a one-step head "
                "is fed back already"
            )
        if self.calibration is not None:
            try:
                table = Calibration.from_json(self.calibration, self.quantile_levels)
            except ValueError as exc:
                fail(str(exc))
                raise  # fail() raises; this keeps type checkers informed
            object.__setattr__(self, "_calibration", table)
            object.__setattr__(self, "calibration", table.to_json())  # canonical floats

    def _parse_recipe(self, fail: Any) -> Recipe | None:
        if self.recipe is None:
            return None
        if not isinstance(self.input_size, int) or isinstance(self.input_size, bool):
            return None  # reported by the caller's own check
        try:
            history = Recipe.from_json(
                self.recipe, width=self.input_size, scale_floor=self.scale_floor
            )
        except RecipeError as exc:
            fail(str(exc))
            raise  # fail() raises; this keeps type checkers informed
        object.__setattr__(self, "_history", history)
        object.__setattr__(self, "recipe", history.to_json())  # canonical: defaults written out
        return history

    @property
    def history(self) -> Recipe | None:
        """The parsed recipe, or None for a model that sees the event's values as they are."""
        return getattr(self, "_history", None)

    @property
    def calibration_table(self) -> Calibration | None:
        """The parsed calibration, or None for quantiles served as the head gives them."""
        return getattr(self, "_calibration", None)

    @property
    def adaptive(self) -> Adaptive | None:
        """Each stream's adaptive width (streamcell.core.adaptive), or None: none kept."""
        table = self.calibration_table
        return None if table is None else table.adaptive

    @property
    def n_levels(self) -> int:
        """Values per target and step in the head: its quantile levels, or 1 (a point)."""
        return max(1, len(self.quantile_levels))

    @property
    def head_width(self) -> int:
        """Outputs of the head, laid out row-major as ``[horizon, n_levels, output_size]``."""
        return self.output_size * self.horizon * self.n_levels

    @property
    def lstm_input_size(self) -> int:
        """Inputs of the LSTM per step: the event's values, or the recipe's features."""
        history = self.history
        return self.input_size if history is None else history.num_features

    @property
    def model_inputs(self) -> tuple[str, ...]:
        """Names of the LSTM's inputs, in order."""
        history = self.history
        return self.features if history is None else history.feature_names(self.features)

    @property
    def target_index(self) -> tuple[int, ...] | None:
        """Position of each target among the features, or None if one is not a feature."""
        try:
            return tuple(self.features.index(t) for t in self.targets)
        except ValueError:
            return None

    @property
    def autoregressive(self) -> bool:
        """Targets are exactly the features: predictions can be fed back (Forecast)."""
        return self.targets == self.features

    def architecture(self) -> tuple[Any, ...]:
        """What must match for per-stream state to carry over to another version."""
        return (
            self.input_size,
            self.hidden_size,
            self.num_layers,
            self.output_size,
            self.scaling,
            self.features,
            self.targets,
            # The recipe's version changes how outputs are served, not the state.
            json.dumps(_without_version(self.recipe), sort_keys=True),
            self.quantile_levels,
            self.horizon,
            self.adaptive is not None,  # a stream's adaptive width is state too
        )

    def to_json(self) -> str:
        data = asdict(self)
        if data["recipe"] is None:
            del data["recipe"]  # a model without one writes the config it always has
        # A point head of one step writes neither field: the config it always had.
        if not data["quantile_levels"]:
            del data["quantile_levels"]
        else:
            data["quantile_levels"] = list(data["quantile_levels"])
        if data["horizon"] == 1:
            del data["horizon"]
        if data["calibration"] is None:
            del data["calibration"]
        if not data["forecast_blend"]:
            del data["forecast_blend"]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> ModelConfig:
        if not isinstance(data, dict):
            raise CheckpointError("invalid model config: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        required = {
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
        }
        missing = sorted(required - data.keys())
        if missing:
            raise CheckpointError(f"invalid model config: missing {', '.join(missing)}")
        for name in ("features", "targets", "input_mean", "input_std", "target_mean", "target_std"):
            if not isinstance(data[name], list):
                raise CheckpointError(f"invalid model config: {name} must be a list")
        for name in ("metrics", "training"):
            if name in data and not isinstance(data[name], dict):
                raise CheckpointError(f"invalid model config: {name} must be an object")
        levels = data.get("quantile_levels")
        if levels is not None and not isinstance(levels, list):
            raise CheckpointError("invalid model config: quantile_levels must be a list or null")
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to serve."""

    name: str
    version: str
    path: Path
    config: ModelConfig
    model: StreamingLSTM


def new_version() -> str:
    """A version name that sorts by creation time (UTC, microseconds)."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def check_name(name: str, what: str = "model name") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise CheckpointError(
            f"{what} {name!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def save_checkpoint(
    registry: str | os.PathLike[str],
    name: str,
    model: StreamingLSTM,
    config: ModelConfig,
    version: str | None = None,
) -> Path:
    """Write a complete version atomically and return its directory."""
    check_name(name)
    version = check_name(version or new_version(), "version")
    arch = (model.input_size, model.hidden_size, model.num_layers, model.output_size)
    expected = (config.lstm_input_size, config.hidden_size, config.num_layers, config.head_width)
    if arch != expected:
        raise CheckpointError(f"model shape {arch} does not match its config")
    if not config.created_at:
        config = ModelConfig(**{**asdict(config), "created_at": new_iso_time()})
    base = Path(registry) / name
    base.mkdir(parents=True, exist_ok=True)
    final = base / version
    if final.exists():
        raise CheckpointError(f"version {version} of {name} already exists at {final}")
    tmp = base / f".tmp-{version}-{os.getpid()}"
    tmp.mkdir()
    try:
        tensors = {
            k: v.detach().to("cpu", torch.float32).contiguous()
            for k, v in model.state_dict().items()
        }
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "streamcell-v1"})
        (tmp / CONFIG_FILE).write_text(config.to_json() + "\n")
        for f in (tmp / WEIGHTS_FILE, tmp / CONFIG_FILE):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def new_iso_time() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def list_versions(registry: str | os.PathLike[str], name: str) -> list[str]:
    """Complete versions of a model, oldest first."""
    base = Path(registry) / check_name(name)
    if not base.is_dir():
        return []
    return sorted(
        p.name
        for p in base.iterdir()
        if not p.name.startswith(".")
        and p.is_dir()
        and (p / WEIGHTS_FILE).is_file()
        and (p / CONFIG_FILE).is_file()
    )


def latest_version(registry: str | os.PathLike[str], name: str) -> str | None:
    versions = list_versions(registry, name)
    return versions[-1] if versions else None


def read_config(path: str | os.PathLike[str]) -> ModelConfig:
    file = Path(path) / CONFIG_FILE
    try:
        text = file.read_text()
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file} is not valid JSON: {exc}") from None
    try:
        return ModelConfig.from_dict(data)
    except TypeError as exc:  # a field of the wrong kind reached the dataclass
        raise CheckpointError(f"invalid model config in {file}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{file}: {exc}") from None


def load_checkpoint(path: str | os.PathLike[str]) -> LoadedModel:
    """Load one version directory, checking every tensor's name, dtype and shape."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    config = read_config(path)
    file = path / WEIGHTS_FILE
    # The file's header is checked against the config before anything is
    # allocated: a config.json asking for a huge hidden_size must not make
    # the process allocate it before the weights prove it wrong.
    _check_header(file, expected_shapes(config))
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
    for key, got in tensors.items():
        if not torch.isfinite(got).all():
            raise CheckpointError(f"{file}: tensor {key} holds NaN or infinite values")
    model = StreamingLSTM(
        config.lstm_input_size, config.hidden_size, config.num_layers, config.head_width
    )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return LoadedModel(path.parent.name, path.name, path, config, model)


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a model with this config, as torch.nn.LSTM names them."""
    hidden, gates = config.hidden_size, 4 * config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in range(config.num_layers):
        width = config.lstm_input_size if layer == 0 else hidden
        shapes[f"lstm.weight_ih_l{layer}"] = (gates, width)
        shapes[f"lstm.weight_hh_l{layer}"] = (gates, hidden)
        shapes[f"lstm.bias_ih_l{layer}"] = (gates,)
        shapes[f"lstm.bias_hh_l{layer}"] = (gates,)
    shapes["head.weight"] = (config.head_width, hidden)
    shapes["head.bias"] = (config.head_width,)
    return shapes


def check_head(horizon: object) -> str | None:
    """What is wrong with a head's ``horizon`` (its levels: quantiles.check_levels)."""
    if not isinstance(horizon, int) or isinstance(horizon, bool) or not 1 <= horizon <= MAX_HORIZON:
        return f"horizon must be an integer in 1..{MAX_HORIZON}, got {horizon!r}"
    return None


def _check_header(file: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Names, dtypes and shapes from the safetensors header (no tensor is read)."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            found = {key: handle.get_slice(key) for key in handle.keys()}  # noqa: SIM118
            header = {k: (v.get_dtype(), tuple(v.get_shape())) for k, v in found.items()}
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors file: {exc}") from None
    missing = sorted(expected.keys() - header.keys())
    unexpected = sorted(header.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{file} does not match its config: missing tensors {missing}, "
            f"unexpected tensors {unexpected}"
        )
    for key, shape in expected.items():
        dtype, got = header[key]
        if dtype != "F32" or got != shape:
            raise CheckpointError(
                f"{file}: tensor {key} is {_DTYPES.get(dtype, dtype)} {got}, "
                f"expected float32 {shape}"
            )


_DTYPES = {"F32": "torch.float32", "F64": "torch.float64", "F16": "torch.float16"}


def load_latest(registry: str | os.PathLike[str], name: str) -> LoadedModel:
    version = latest_version(registry, name)
    if version is None:
        raise CheckpointError(f"no complete version of model {name!r} in registry {registry}")
    return load_checkpoint(Path(registry) / name / version)


def _without_version(recipe: Any) -> Any:
    if not isinstance(recipe, dict):
        return recipe
    return {k: v for k, v in recipe.items() if k != "version"}

"""Serving on a device: the same predictions, state and snapshots on a GPU as on the CPU.

Where torch sees no GPU (CI) the CUDA cases are skipped and ``auto`` must
mean the CPU; on a GPU machine the same file checks the CUDA path against the
CPU one (docs/BENCHMARKS.md, "GPU", says where it ran).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recipe_support import make_recipe_model
from test_predictor import F, save

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.errors import ConfigError
from streamcell.core.events import EventBatch
from streamcell.core.model import resolve_device
from streamcell.core.predictor import PREDICTED, Predictor

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="torch sees no CUDA GPU here")


def test_auto_is_the_gpu_where_there_is_one_and_the_cpu_otherwise():
    assert resolve_device("auto").type == ("cuda" if GPU else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "CPU", "", "cuda:-1"])
def test_a_malformed_device_is_refused(spec):
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


@pytest.mark.skipif(GPU, reason="a GPU is here")
def test_naming_a_gpu_without_one_is_an_error_not_a_fallback():
    with pytest.raises(ConfigError, match="sees no CUDA GPU"):
        resolve_device("cuda")


def events(rng: np.random.Generator, n: int, streams: int) -> EventBatch:
    ids = [f"s{k}" for k in rng.integers(0, streams, n)]  # repeats: several waves
    return EventBatch.of(ids, list((rng.normal(size=(n, F)) * 20).astype(np.float32)))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
@pytest.mark.parametrize("scaling", ["global", "stream_mean_abs"])
def test_a_device_predicts_what_the_cpu_predicts(tmp_path, device, scaling):
    cpu = Predictor(save(tmp_path / "a", scaling), keep_gates=True)
    dev = Predictor(save(tmp_path / "b", scaling), keep_gates=True, device=device)
    assert dev.store.h.device.type == device
    rng = np.random.default_rng(3)
    for _ in range(6):
        batch = events(rng, 200, 40)
        want, got = cpu.predict(batch), dev.predict(batch)
        assert (got.outcome == PREDICTED).all()
        np.testing.assert_allclose(got.yhat, want.yhat, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.abs_errors, want.abs_errors, rtol=1e-5, atol=1e-5)
    info = dev.info("s1")
    assert info.h.device.type == "cpu" and info.gates is not None
    torch.testing.assert_close(info.h, cpu.info("s1").h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dev.forecast("s1", 5), cpu.forecast("s1", 5), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_snapshots_move_between_devices_byte_for_byte(tmp_path, device):
    dev = Predictor(save(tmp_path / "a"), device=device)
    dev.predict(events(np.random.default_rng(4), 100, 20))
    streams = dev.store.stream_ids()
    block = dev.store.snapshot_block(streams)
    cpu = Predictor(save(tmp_path / "b"))
    cpu.store.restore(zip(streams, dev.store.snapshot(streams), strict=True))
    assert cpu.store.snapshot_block(streams) == block
    back = Predictor(save(tmp_path / "c"), device=device)
    back.store.restore(zip(streams, cpu.store.snapshot(streams), strict=True))
    assert back.store.snapshot_block(streams) == block
    assert back.info(streams[0]).h.equal(dev.info(streams[0]).h)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_a_recipe_model_on_a_device_predicts_what_the_cpu_predicts(tmp_path, device):
    """The histories stay in host memory; only the features travel to the device."""
    recipe = {"target": 0, "lags": [1, 2, 12], "scale_window": 12, "log_scale": True,
              "periods": [12], "age": True}  # fmt: skip
    version = make_recipe_model(tmp_path, recipe, features=("y",))
    cpu = Predictor(load_checkpoint(version))
    dev = Predictor(load_checkpoint(version), device=device)
    rng = np.random.default_rng(5)
    for _ in range(4):
        ids = [f"s{k}" for k in rng.integers(0, 30, 150)]
        batch = EventBatch.of(ids, list((rng.normal(size=(150, 1)) * 50 + 100).astype(np.float32)))
        want, got = cpu.predict(batch), dev.predict(batch)
        np.testing.assert_allclose(got.yhat, want.yhat, rtol=1e-5, atol=1e-4)
    streams = cpu.store.stream_ids()
    for s in streams:
        a, b = cpu.info(s), dev.info(s)
        assert (a.history, a.scale) == (b.history, b.scale), "the same bits on either"
    np.testing.assert_allclose(dev.forecast("s1", 30), cpu.forecast("s1", 30), rtol=1e-4, atol=1e-3)

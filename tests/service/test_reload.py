"""Model reloads: finding newer versions, refusing broken ones, swapping with or without state."""

from __future__ import annotations

import json
import logging

import numpy as np
from pipeline_support import LAG_RECIPE, make_model

from streamcell.core.checkpoint import load_checkpoint
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.service import reload
from streamcell.service.metrics import Metrics


def reloads(metrics: Metrics, result: str) -> float:
    return (
        metrics.registry.get_sample_value("streamcell_model_reloads_total", {"result": result})
        or 0.0
    )


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watcher_finds_only_newer_complete_versions(tmp_path):
    watcher = reload.ModelWatcher(tmp_path, "m", poll_s=5)
    assert watcher.newer(None) is None  # nothing yet
    make_model(tmp_path, version="v1")
    (tmp_path / "m" / ".tmp-v9-123").mkdir()  # a version being written is invisible
    first = watcher.newer(None)
    assert first is not None and first.version == "v1"
    assert watcher.newer("v1") is None
    make_model(tmp_path, version="v2")
    second = watcher.newer("v1")
    assert second is not None and second.version == "v2"


def test_watcher_polls_once_per_interval():
    clock = Clock()
    watcher = reload.ModelWatcher("unused", "m", poll_s=5, clock=clock)
    assert watcher.due()
    assert not watcher.due()
    clock.now = 4.9
    assert not watcher.due()
    clock.now = 5.0
    assert watcher.due()


def test_broken_version_is_refused_once_and_the_old_one_keeps_serving(tmp_path, caplog):
    metrics = Metrics()
    watcher = reload.ModelWatcher(tmp_path, "m", poll_s=1, metrics=metrics)
    make_model(tmp_path, version="v1")
    bad = make_model(tmp_path / "staging", version="v2")
    (bad / "config.json").write_text('{"input_size": 3')
    bad.rename(tmp_path / "m" / "v2")
    with caplog.at_level(logging.ERROR, logger="streamcell.service.reload"):
        assert watcher.newer("v1") is None
        assert watcher.newer("v1") is None  # not retried
    refusals = [r.getMessage() for r in caplog.records]
    assert len(refusals) == 1
    assert "refusing model m version v2" in refusals[0] and "still serving v1" in refusals[0]
    assert reloads(metrics, "failed") == 1
    make_model(tmp_path, version="v3")  # a good newer one is taken
    newest = watcher.newer("v1")
    assert newest is not None and newest.version == "v3"


def test_apply_keeps_state_for_the_same_architecture_and_resets_otherwise(tmp_path):
    metrics = Metrics()
    predictor = Predictor(load_checkpoint(make_model(tmp_path, seed=1, version="v1")))
    batch = EventBatch.of(["a", "b"], np.ones((2, 3), dtype=np.float32))
    predictor.predict(batch)
    before = predictor.info("a").h.clone()

    same = load_checkpoint(make_model(tmp_path, seed=2, version="v2"))
    assert reload.apply(predictor, same, metrics) is True
    assert predictor.loaded.version == "v2" and len(predictor.store) == 2
    assert predictor.info("a").h.equal(before)
    assert reloads(metrics, "state_kept") == 1

    other = load_checkpoint(make_model(tmp_path, seed=3, hidden=8, version="v3"))
    assert reload.apply(predictor, other, metrics) is False
    assert len(predictor.store) == 0 and predictor.resets == 2
    assert reloads(metrics, "state_reset") == 1
    assert metrics.registry.get_sample_value("streamcell_model_info", {"model": "m",
                                              "version": "v3"}) == 1  # fmt: skip
    assert predictor.predict(batch).version == "v3"


def test_a_recipe_model_passes_the_smoke_test_and_a_bad_recipe_is_refused(tmp_path, caplog):
    """The smoke test steps the LSTM with the recipe's inputs; a bad recipe names its field."""
    watcher = reload.ModelWatcher(tmp_path, "m", poll_s=1)
    make_model(tmp_path, version="v1", recipe=LAG_RECIPE)
    first = watcher.newer(None)
    assert first is not None and first.config.lstm_input_size == 9
    bad = make_model(tmp_path / "staging", version="v2", recipe=LAG_RECIPE)
    config = json.loads((bad / "config.json").read_text())
    config["recipe"]["lags"] = [1, 0]
    (bad / "config.json").write_text(json.dumps(config))
    bad.rename(tmp_path / "m" / "v2")
    with caplog.at_level(logging.ERROR, logger="streamcell.service.reload"):
        assert watcher.newer("v1") is None
    (refusal,) = [r.getMessage() for r in caplog.records]
    assert "refusing model m version v2" in refusal and "recipe.lags" in refusal

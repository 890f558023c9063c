"""Training data as a Ray Dataset: the same statistics, the same score as in memory.

The tests above the fixture need no Ray: the exact median from bit
histograms, merged moments, the worker's disk-backed streams. The Ray tests
share one local Ray (2 CPUs, on 127.0.0.2) for the module.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamcell.cli import main
from streamcell.core.checkpoint import load_latest
from streamcell.core.errors import DataError
from streamcell.trainer.api import (
    TrainSettings,
    load_long_frame,
    prepare_frame,
    train_local,
    train_with_ray,
    train_with_ray_data,
)
from streamcell.trainer.data import parquet_files, read_table
from streamcell.trainer.dataset_plan import BINS, Moments, high_bits, median_from_bits
from streamcell.trainer.periods import median_of_counts
from streamcell.trainer.prepare import StreamArrays
from streamcell.trainer.ray_cluster import local_node_ip
from streamcell.trainer.ray_data import read_streams
from streamcell.trainer.stream_store import StreamStore
from streamcell.trainer.synthetic import noisy_sines


def write_parts(frame: pd.DataFrame, where: Path, parts: int = 3) -> Path:
    """Rows dealt round-robin into ``parts`` files, so that every stream spans them all."""
    where.mkdir()
    for k in range(parts):
        frame.iloc[k::parts].to_parquet(where / f"part-{k}.parquet")
    return where


# -- no Ray needed -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 7, 1000, 1001])
def test_the_median_from_bit_histograms_is_numpys(size: int) -> None:
    rng = np.random.default_rng(size)
    values = np.exp(rng.normal(0, 3, size)).astype(np.float32)
    values[: size // 3] = values[0]  # ties
    high = np.bincount(high_bits(values), minlength=BINS)
    bits = values.view(np.uint32)
    low = {
        int(b): np.bincount(bits[(bits >> 16) == b] & 0xFFFF, minlength=BINS)
        for b in set(bits >> 16)
    }
    assert median_from_bits(high, low, size) == float(np.median(values))


def test_moments_merge_to_the_whole_arrays_mean_and_std() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.normal(5, 3, (n, 4)).astype(np.float32) for n in (1, 17, 300, 0, 42)]
    total = sum((Moments.of(p) for p in parts), Moments())
    whole = np.concatenate(parts)
    mean, std = total.mean_std()
    np.testing.assert_array_equal(mean, whole.mean(axis=0, dtype=np.float64).astype(np.float32))
    np.testing.assert_allclose(std, whole.std(axis=0, dtype=np.float64), rtol=1e-6)


def test_median_of_counts_is_numpys() -> None:
    values = [3, 1, 4, 1, 5, 9, 2, 6]
    for n in range(1, len(values) + 1):
        assert median_of_counts(Counter(values[:n])) == float(np.median(values[:n]))


def test_the_stream_store_reads_back_what_it_was_given(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)

    def stream(name: str, t: int, weighted: bool) -> StreamArrays:
        def a(*shape: int) -> np.ndarray:
            return rng.normal(size=shape).astype(np.float32)

        return StreamArrays(
            name,
            a(t - 1, 3),
            a(t - 1, 1),
            a(t, 1),
            a(t - 1, 1),
            t - 2,
            a(t - 1) if weighted else None,
        )

    given = [stream("b", 5, True), stream("a", 9, False), stream("c", 3, True)]
    with StreamStore(str(tmp_path)) as store:
        for s in given:
            store.append(s)
        store.seal()
        assert [s.stream for s in store] == ["a", "b", "c"]  # sorted: order-free runs
        for s in given:
            got = store[["a", "b", "c"].index(s.stream)]
            for field in ("u", "z", "y", "target_scale", "weight"):
                want = getattr(s, field)
                if want is None:
                    assert getattr(got, field) is None
                else:
                    np.testing.assert_array_equal(getattr(got, field), want)
            assert got.n_train == s.n_train
    assert list(tmp_path.iterdir()) == []  # closing removes the file


def test_a_directory_of_parquet_reads_in_memory_too(tmp_path: Path) -> None:
    frame = noisy_sines(streams=3, length=30)
    where = write_parts(frame, tmp_path / "parts")
    (where / "notes.txt").write_text("not data")
    assert [f.name for f in parquet_files(where)] == [f"part-{k}.parquet" for k in range(3)]
    a, b = load_long_frame(read_table(where)), load_long_frame(frame)
    assert a.streams == b.streams and a.rows == b.rows
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet files"):
        parquet_files(tmp_path / "empty")


def test_files_that_disagree_fail_before_any_ray_task(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    where = tmp_path / "parts"
    where.mkdir()
    noisy_sines(streams=2, length=10).to_parquet(where / "a.parquet")
    other = noisy_sines(streams=2, length=10).assign(value=lambda f: f["value"].astype(str))
    other.to_parquet(where / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet does not match .*'value' is double"):
        read_streams(where, val_fraction=0.2)
    with pytest.raises(DataError, match="order column 'time' is missing"):
        read_streams(where / "a.parquet", order_column="time", val_fraction=0.2)


def test_a_final_fit_asked_of_a_ray_dataset_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = write_parts(noisy_sines(streams=2, length=30), tmp_path / "parts")
    code = main(
        [
            *("train", "--data", str(where), "--registry", str(tmp_path / "r")),
            *("--model", "m", "--final-fit", "blend"),
        ]
    )
    assert code == 2
    assert "--final-fit blend is not offered with a Ray Dataset" in capsys.readouterr().err


# -- one local Ray for the rest -------------------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    ray = pytest.importorskip("ray")
    ip = local_node_ip()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        **({} if ip is None else {"_node_ip_address": ip}),
    )
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_the_ray_data_path_scores_as_the_in_memory_path(ray_cluster: None, tmp_path: Path) -> None:
    """Same seed, same data (three files, each stream across them): the same statistics,
    the same candidate chosen and the same validation score, to 1e-4.

    One worker, so that the batches are those of the local loop (streams in id order in
    both); two workers against the in-memory path's two are the next test's.
    """
    frame = noisy_sines(streams=6, length=100, period=20, seed=9)
    where = write_parts(frame, tmp_path / "sines")
    settings = TrainSettings(
        hidden=8,
        layers=1,
        epochs=3,
        window=16,
        lr=0.01,
        batch_size=8,
        patience=10,
        candidates=({}, {"hidden": 12}),
        # A Ray Dataset run exports the validated model, whose factors it fits; in memory
        # a final fit would be the model calibrated.
        final_fit="off",
    )
    ours = train_with_ray_data(where, settings, workers=1)
    local = train_local(load_long_frame(frame), settings, threads=1)
    a, b = ours.config, local.config
    assert a.recipe == b.recipe and a.recipe is not None and a.recipe["periods"]  # by ACF
    for name in ("input_mean", "input_std", "target_mean", "target_std"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-6)
    for key in ("rows", "streams", "streams_left_out", "train_pairs"):
        assert a.training[key] == b.training[key], key
    picked = [c["score"] for c in a.training["selection"]["candidates"]]
    want = [c["score"] for c in b.training["selection"]["candidates"]]
    np.testing.assert_allclose(picked, want, atol=1e-4)
    assert abs(a.metrics["val_mase"] - b.metrics["val_mase"]) <= 1e-4
    assert a.metrics["val_points"] == b.metrics["val_points"]
    # The online factors from counts the worker summed, as in memory; no Forecast table.
    ours, theirs = a.calibration_table, b.calibration_table
    assert ours is not None and theirs is not None and ours.forecast == ()
    np.testing.assert_allclose(ours.online, theirs.online, atol=0.02)
    assert "why" in a.metrics["calibration"]["forecast"]
    got = a.metrics["calibration"]["online"]["coverage_after"]["0.8"]
    assert abs(got - b.metrics["calibration"]["online"]["coverage_after"]["0.8"]) < 0.02


@pytest.mark.ray
@pytest.mark.slow
def test_cli_trains_a_parquet_directory_on_two_workers(
    ray_cluster: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hourly timestamps (the period from their spacing), two workers: the in-memory
    path's statistics and, against its two workers, its validation score."""
    frame = noisy_sines(streams=8, length=96, period=24, seed=3)
    frame["ts"] = pd.Timestamp("2026-01-01") + pd.to_timedelta(frame["seq"], unit="h")
    frame = frame.drop(columns="seq")
    where = write_parts(frame, tmp_path / "hourly")
    registry = tmp_path / "registry"
    code = main(
        [
            "train",
            *("--data", str(where), "--order-column", "ts", "--registry", str(registry)),
            *("--model", "hourly", "--workers", "2", "--epochs", "2", "--hidden", "8"),
            *("--layers", "1", "--window", "16", "--no-candidates", "--allow-worse"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "epoch 2/2: loss" in captured.err
    loaded = load_latest(registry, "hourly")
    training = loaded.config.training
    assert training["workers"] == 2 and training["streams"] == 8
    in_memory = prepare_frame(
        load_long_frame(frame, order_column="ts"), TrainSettings(hidden=8, layers=1)
    )
    assert in_memory.recipe is not None
    assert loaded.config.recipe == in_memory.recipe.to_json()  # periods (24,) from spacing
    np.testing.assert_allclose(loaded.config.input_mean, in_memory.norm.input_mean, rtol=1e-6)
    assert training["train_pairs"] == in_memory.train_pairs()
    # Between them the two workers validated every stream: 8 x the last 20 of 96 rows.
    assert loaded.config.metrics["val_points"] == 8 * 20
    # Four streams each, as round-robin deals them; equal lengths, so DDP averages the
    # same gradients as the in-memory path's two workers do.
    # No final fit, as the Ray Dataset path has none: the validated models compared.
    settings = TrainSettings(
        hidden=8, layers=1, epochs=2, window=16, time_budget=120.0, final_fit="off"
    )
    memory = train_with_ray(load_long_frame(frame, order_column="ts"), settings, workers=2)
    assert abs(loaded.config.metrics["val_mase"] - memory.metrics["val_mase"]) <= 1e-4
    with pytest.raises(DataError, match=r"holds NaN or infinite values .*stream 's1'"):
        bad = frame.copy()
        bad.loc[bad["stream"] == "s1", "value"] = np.nan
        train_with_ray_data(
            write_parts(bad, tmp_path / "bad"),
            TrainSettings(),
            workers=1,
            order_column="ts",
        )

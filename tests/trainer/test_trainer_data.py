"""Bad training data and bad flags fail early, with a message naming what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streamcell.cli import main
from streamcell.core.errors import ConfigError, DataError
from streamcell.trainer.api import TrainSettings, load_long_frame, prepare_frame, train_with_ray
from streamcell.trainer.data import split_point
from streamcell.trainer.kafka_replay import replay_topic
from streamcell.trainer.synthetic import noisy_sines


@pytest.fixture
def frame() -> pd.DataFrame:
    return noisy_sines(streams=3, length=60)


def test_reads_csv_and_parquet_alike(tmp_path: Path, frame: pd.DataFrame) -> None:
    frame = frame.assign(other=np.arange(len(frame), dtype=np.float64))
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    a = load_long_frame(tmp_path / "d.csv")
    b = load_long_frame(tmp_path / "d.parquet")
    assert a.features == ("value", "other") and a.targets == a.features
    assert a.streams == ("s0", "s1", "s2")
    assert a.fingerprint == b.fingerprint
    assert [len(x) for x in a.x] == [60, 60, 60]
    # The fingerprint follows the numbers, not the file.
    frame.loc[5, "value"] += 1.0
    assert load_long_frame(frame).fingerprint != a.fingerprint


def test_rows_are_ordered_within_each_stream(frame: pd.DataFrame) -> None:
    shuffled = frame.sample(frac=1.0, random_state=1)
    a, b = load_long_frame(frame), load_long_frame(shuffled)
    assert set(a.streams) == set(b.streams)
    for s, x in zip(a.streams, a.x, strict=True):
        np.testing.assert_array_equal(x, b.x[b.streams.index(s)])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.csv", None, "does not exist"),
        ("data.txt", "stream,seq,value\na,0,1\n", "must be CSV"),
        ("broken.parquet", "not parquet at all", "cannot read"),
        ("empty.csv", "stream,seq,value\n", "holds no rows"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_long_frame(path)


def test_missing_columns_are_named(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="stream column 'sensor' is missing"):
        load_long_frame(frame, stream_column="sensor")
    with pytest.raises(DataError, match="order column 'ts' is missing"):
        load_long_frame(frame, order_column="ts")
    with pytest.raises(DataError, match="feature column 'temp' is missing"):
        load_long_frame(frame, features=["value", "temp"])
    with pytest.raises(DataError, match="target column 'load' is missing"):
        load_long_frame(frame, targets=["load"])


def test_non_numeric_feature_is_named(frame: pd.DataFrame) -> None:
    frame["label"] = "x"
    assert load_long_frame(frame).features == ("value",)  # skipped when not asked for
    with pytest.raises(DataError, match="feature column 'label' is not numeric"):
        load_long_frame(frame, features=["value", "label"])


def test_nan_names_column_and_stream(frame: pd.DataFrame) -> None:
    frame.loc[(frame["stream"] == "s1") & (frame["seq"] == 7), "value"] = np.nan
    with pytest.raises(DataError, match=r"'value' holds NaN.*stream 's1', seq=7"):
        load_long_frame(frame)


def test_duplicate_order_values(frame: pd.DataFrame) -> None:
    frame.loc[frame.index[3], "seq"] = 2
    with pytest.raises(DataError, match="stream 's0' has two rows with seq=2"):
        load_long_frame(frame)


def test_short_streams_never_stop_a_run(frame: pd.DataFrame) -> None:
    tiny = pd.DataFrame({"stream": "tiny", "seq": range(2), "value": [1.0, 2.0]})
    short = pd.DataFrame({"stream": "short", "seq": range(10), "value": np.arange(10.0) + 1})
    data = load_long_frame(pd.concat([frame, short, tiny]))
    for scaling in ("window_mean_abs", "global"):
        prepared = prepare_frame(data, TrainSettings(window=64, scaling=scaling))
        names = [s.stream for s in prepared.streams]
        assert "short" in names and "tiny" not in names  # trained on what it has / left out
    only_tiny = load_long_frame(tiny)
    with pytest.raises(DataError, match="every stream is too short"):
        prepare_frame(only_tiny, TrainSettings())


def test_split_leaves_at_least_one_validation_row() -> None:
    assert split_point(100, 0.2) == 80
    assert split_point(10, 0.01) == 9
    assert split_point(3, 0.5) == 1


def test_per_stream_scaling_needs_targets_among_features(frame: pd.DataFrame) -> None:
    frame["load"] = frame["value"] * 2
    data = load_long_frame(frame, features=["value"], targets=["load"])
    with pytest.raises(DataError, match="needs every target to be a feature"):
        prepare_frame(data, TrainSettings(window=8, scaling="stream_mean_abs"))


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        TrainSettings(val_fraction=1.0)
    with pytest.raises(ConfigError, match="window"):
        TrainSettings(window=0)
    with pytest.raises(ConfigError, match="scaling"):
        TrainSettings(scaling="per_stream")
    with pytest.raises(ConfigError, match="weight_average"):
        TrainSettings(weight_average="swa")
    for decay in (0.0, 1.0, 1.5, True):
        with pytest.raises(ConfigError, match="ema_decay"):
            TrainSettings(ema_decay=decay)


def test_more_workers_than_streams_fails_before_ray(frame: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="--workers 4 needs at least as many streams"):
        train_with_ray(load_long_frame(frame), TrainSettings(window=8), workers=4)
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_kafka_uri_needs_features_and_servers() -> None:
    with pytest.raises(DataError, match="--features is required"):
        replay_topic("kafka://events", "localhost:9092", [])
    with pytest.raises(DataError, match="needs --bootstrap-servers"):
        replay_topic("kafka://events", "", ["value"])
    with pytest.raises(DataError, match="names no topic"):
        replay_topic("kafka://", "localhost:9092", ["value"])


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(["train", *argv])
    except SystemExit as exc:  # argparse
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_cli_reports_bad_data_and_flags(
    tmp_path: Path, frame: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "d.csv"
    frame.to_csv(csv, index=False)
    reg = str(tmp_path / "reg")
    common = ["--registry", reg, "--model", "m", "--no-ray"]
    code, err = run_cli(capsys, "--data", str(tmp_path / "nope.csv"), *common)
    assert code == 2 and "data file" in err and "does not exist" in err
    code, err = run_cli(capsys, "--data", str(csv), "--features", "value,temp", *common)
    assert code == 2 and "feature column 'temp' is missing" in err
    code, err = run_cli(capsys, "--data", str(csv), "--val-fraction", "1.5", *common)
    assert code == 2 and "strictly between 0 and 1" in err
    code, err = run_cli(capsys, "--data", str(csv), "--epochs", "0", *common)
    assert code == 2 and "must be at least 1" in err
    code, err = run_cli(capsys, "--data", str(csv), "--registry", reg, "--model", "no good")
    assert code == 2 and "model name 'no good'" in err
    code, err = run_cli(capsys, "--data", str(csv), *common, "--workers", "2")
    assert code == 2 and "--no-ray" in err
    assert not (tmp_path / "reg" / "m").exists()


def test_cli_module_imports_nothing_heavy() -> None:
    code = (
        "import sys, streamcell.cli, streamcell.trainer.cli; "
        "heavy = {'torch', 'ray', 'pandas'} & set(sys.modules); "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

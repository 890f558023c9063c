"""`streamcell train`: train on a long-format file or a replayed topic, export a version.

Everything is checked (flags, file, columns, stream lengths, registry) before
Ray starts, but for data read as a Ray Dataset (a directory of Parquet files,
or ``--ray-data``), which the same checks go through in Ray tasks.
Environment variables (RAY_ADDRESS, KAFKA_BOOTSTRAP_SERVERS) are read here
and nowhere else in the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from streamcell.core.errors import StreamcellError
from streamcell.service.kafka import CLIENTS, DEFAULT_CLIENT

HELP = "train the LSTM (locally or with Ray Train) and export a version to a registry"
DEFAULT_TIME_BUDGET = 120.0
# The chosen candidate's runs in all (other seeds), as the budget left allows, averaged
# where that validates better (streamcell.trainer.select.train_seeds).
DEFAULT_SEEDS = 2


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of column names")
    return names


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be strictly between 0 and 1, got {value}")
    return value


def _periods(text: str) -> tuple[int, ...]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        msg = f"expected integers like 12 or 48,336, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if values == [0]:
        return ()
    if not values or any(v < 2 for v in values):
        raise argparse.ArgumentTypeError(f"periods must be at least 2 (or 0: none), got {text!r}")
    return tuple(values)


def _levels(text: str) -> tuple[float, ...]:
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        msg = f"expected levels like 0.1,0.5,0.9 (or none: a point head), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        required=True,
        help="CSV or Parquet file in long format, a directory of Parquet files (read as a Ray "
        "Dataset: whole streams streamed to each worker, statistics computed in a distributed "
        "pass, so the driver need not hold the data; with --no-ray read into memory), "
        "or kafka://TOPIC",
    )
    data.add_argument(
        "--ray-data",
        action="store_true",
        help="read a single Parquet file as a Ray Dataset too (the default for a directory)",
    )
    data.add_argument(
        "--stream-column", default="stream", help="stream id column (default: stream)"
    )
    data.add_argument("--order-column", default="seq", help="order within a stream (default: seq)")
    data.add_argument(
        "--features",
        type=_names,
        help="comma-separated input columns (default: every other numeric)",
    )
    data.add_argument("--targets", type=_names, help="comma-separated targets (default: features)")
    data.add_argument(
        "--bootstrap-servers", help="Kafka for kafka:// data (or KAFKA_BOOTSTRAP_SERVERS)"
    )
    data.add_argument(
        "--kafka-client",
        choices=tuple(CLIENTS),
        default=DEFAULT_CLIENT,
        help="Kafka client for kafka:// data (default %(default)s, as serve)",
    )
    data.add_argument(
        "--val-fraction", type=_fraction, default=0.2, help="validated tail (default 0.2)"
    )
    data.add_argument(
        "--scaling",
        choices=["window_mean_abs", "global", "stream_mean_abs"],
        default="window_mean_abs",
        help="window_mean_abs (default): the model takes each stream's history (lags, a scale "
        "from its recent mean |y|, season; one target); global: the event's values, "
        "z-scored; stream_mean_abs: the values over their running mean |x| first",
    )
    data.add_argument("--scale-floor", type=float, default=1e-3, help="least per-stream scale")
    data.add_argument(
        "--period",
        type=_periods,
        help="seasonal period(s), comma-separated, e.g. 48,336 (default: found from the "
        "timestamps' spacing or the data's autocorrelation; 0: none)",
    )

    model = parser.add_argument_group("model and optimisation")
    model.add_argument(
        "--hidden",
        type=_positive,
        default=32,
        help="LSTM hidden size of each model (default 32; the default --final-fit blend "
        "serves two side by side: 64 units)",
    )
    model.add_argument("--layers", type=_positive, default=2, help="LSTM layers (default 2)")
    model.add_argument(
        "--members",
        type=_positive,
        default=1,
        help="LSTMs of --hidden units trained side by side and served as one that averages "
        "them (default 1)",
    )
    model.add_argument("--epochs", type=_positive, default=20, help="most epochs (default 20)")
    model.add_argument(
        "--window", "--tbptt", type=_positive, default=32, help="TBPTT window in steps (default 32)"
    )
    model.add_argument(
        "--batch-size", type=_positive, default=32, help="streams per batch (default 32)"
    )
    model.add_argument(
        "--epoch-steps",
        type=_positive,
        default=50,
        help="at least this many updates an epoch: a small data set is passed over again "
        "(default 50)",
    )
    model.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    model.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    model.add_argument(
        "--seeds",
        type=_positive,
        default=DEFAULT_SEEDS,
        help="the chosen candidate trained this many times in all with other seeds, as the "
        "budget left allows, and served averaged where that validates better (default "
        f"{DEFAULT_SEEDS})",
    )
    model.add_argument(
        "--patience", type=_positive, default=5, help="early-stopping patience (default 5)"
    )
    model.add_argument(
        "--weight-average",
        choices=["auto", "ema", "off"],
        default="auto",
        help="auto (default): a one-step head validates a moving average of the weights "
        "beside them each epoch and keeps the better (a direct head keeps its own); "
        "ema: the average always; off: the weights as trained",
    )
    model.add_argument(
        "--ema-decay",
        type=_fraction,
        default=0.99,
        help="the moving average's decay per optimiser step, in (0, 1) (default 0.99)",
    )
    model.add_argument(
        "--monitor",
        choices=["val_mae", "val_rmse", "val_mase"],
        default="val_mase",
        help="validation metric that picks the best epoch and candidate (default val_mase)",
    )
    model.add_argument(
        "--loss",
        choices=["mae", "mse"],
        default="mae",
        help="mae (default): absolute error, each stream weighed as MASE weighs it; mse",
    )
    model.add_argument(
        "--time-budget",
        type=float,
        default=DEFAULT_TIME_BUDGET,
        help=f"seconds for training, candidates and final fit together (default "
        f"{DEFAULT_TIME_BUDGET:g}; 0: no limit)",
    )
    model.add_argument(
        "--no-candidates",
        action="store_true",
        help="train the settings given only (default with a recipe: also try the candidates "
        "of streamcell.trainer.settings.DEFAULT_CANDIDATES, each a run of its own)",
    )
    model.add_argument(
        "--final-fit",
        choices=["off", "refit", "blend"],
        help="after choosing on validation: off exports the validated model; refit exports "
        "the chosen settings refitted on every training row (validation rows included); "
        "blend (default; off on a Ray Dataset) exports both as one model that averages them",
    )
    model.add_argument(
        "--horizon",
        type=_positive,
        help="steps the head predicts at once (default: two of the longest season found, at "
        "most 96, tried against 1 with --no-ray; 1: one step, fed back to forecast further)",
    )
    model.add_argument(
        "--quantiles",
        type=_levels,
        help="quantile levels of the head, strictly increasing, with 0.5 (default "
        "0.1,0.2,...,0.9; none: a point head trained on the absolute error)",
    )
    model.add_argument(
        "--age", action="store_true", help="give the model the stream's age, log(1 + n)"
    )
    model.add_argument(
        "--allow-worse",
        action="store_true",
        help="publish even a model that validates worse than both last value and seasonal naive",
    )

    run = parser.add_argument_group("where it runs and where it goes")
    run.add_argument("--registry", required=True, type=Path, help="model registry directory")
    run.add_argument("--model", required=True, help="model name in the registry")
    run.add_argument("--workers", type=_positive, default=1, help="Ray Train workers (default 1)")
    run.add_argument(
        "--gpu",
        choices=["auto", "on", "off"],
        default="auto",
        help="auto (default): a GPU per worker if Ray has enough; on: require them; off",
    )
    run.add_argument("--no-ray", action="store_true", help="train in this process, without Ray")
    run.add_argument(
        "--ray-address",
        help="join this running Ray cluster, host:port of its GCS as `ray start --head` prints "
        "(default: RAY_ADDRESS, which Ray sets inside `ray job submit`); Ray's token comes from "
        "RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. --storage-path must then be "
        "a directory every node and this driver share (checked first), and --registry one "
        "this driver and the service share",
    )
    run.add_argument(
        "--max-failures", type=int, default=1, help="worker-group restarts (default 1)"
    )
    run.add_argument("--storage-path", help="Ray checkpoint storage (default: a temp dir)")
    run.add_argument(
        "--threads",
        type=_positive,
        help="torch threads per Ray worker (default 1), or of this process with --no-ray",
    )
    run.add_argument(
        "--num-cpus", type=_positive, help="CPUs of the local Ray (default: workers x threads)"
    )
    run.add_argument("--ray-logs", action="store_true", help="show Ray's worker logs")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    from streamcell.core.checkpoint import check_name
    from streamcell.core.errors import ConfigError
    from streamcell.trainer.settings import DEFAULT_CANDIDATES, DEFAULT_LEVELS, TrainSettings

    check_name(args.model)
    recipe = args.scaling == "window_mean_abs"
    dataset = _as_dataset(args)
    if dataset and args.final_fit not in (None, "off"):
        raise ConfigError(
            f"--final-fit {args.final_fit} is not offered with a Ray Dataset (a refit needs "
            "every row of a stream at once: train in memory, or --final-fit off)"
        )
    settings = TrainSettings(
        hidden=args.hidden,
        layers=args.layers,
        members=args.members,
        epochs=args.epochs,
        window=args.window,
        batch_size=args.batch_size,
        epoch_steps=args.epoch_steps,
        lr=args.lr,
        seed=args.seed,
        seeds=args.seeds,
        val_fraction=args.val_fraction,
        patience=args.patience,
        monitor=args.monitor,
        weight_average=args.weight_average,
        ema_decay=args.ema_decay,
        scaling=args.scaling,
        scale_floor=args.scale_floor,
        loss=args.loss,
        periods=args.period,
        time_budget=args.time_budget,
        candidates=(
            DEFAULT_CANDIDATES if recipe and not args.no_candidates and args.horizon is None else ()
        ),
        final_fit=args.final_fit or ("off" if dataset else "blend"),
        age=args.age,
        horizon=args.horizon,
        quantile_levels=DEFAULT_LEVELS if args.quantiles is None else args.quantiles,
    )
    if args.no_ray and args.workers != 1:
        raise ConfigError("--no-ray trains in this process: it takes no --workers")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, got {args.max_failures}")
    _check_registry(args.registry)
    from streamcell.trainer import api

    ray_options = {
        "max_failures": args.max_failures,
        "storage_path": args.storage_path,
        "ray_address": args.ray_address or os.environ.get("RAY_ADDRESS") or None,
        "num_cpus": args.num_cpus,
        "log_to_driver": args.ray_logs,
        "on_epoch": lambda r: _print_epoch(r, settings),
        "threads": args.threads or 1,
    }
    if dataset:
        result = api.train_with_ray_data(
            args.data,
            settings,
            workers=args.workers,
            gpu=args.gpu,
            stream_column=args.stream_column,
            order_column=args.order_column,
            features=args.features,
            targets=args.targets,
            **ray_options,
        )
        return _publish(args, result)
    frame = _load(args)
    if args.no_ray:
        result = api.train_local(
            frame, settings, threads=args.threads, on_epoch=lambda r: _print_epoch(r, settings)
        )
    else:
        result = api.train_with_ray(
            frame, settings, workers=args.workers, gpu=args.gpu, **ray_options
        )
    return _publish(args, result)


def _as_dataset(args: argparse.Namespace) -> bool:
    """Whether --data is read as a Ray Dataset: a directory, or a file with --ray-data."""
    from streamcell.core.errors import ConfigError
    from streamcell.trainer.kafka_replay import is_kafka_uri

    if is_kafka_uri(args.data):
        if args.ray_data:
            raise ConfigError("--ray-data reads Parquet; a kafka:// topic is replayed in memory")
        return False
    if args.ray_data and args.no_ray:
        raise ConfigError("--ray-data reads the data with Ray: it takes no --no-ray")
    return not args.no_ray and (args.ray_data or Path(args.data).is_dir())


def _publish(args: argparse.Namespace, result) -> int:
    from streamcell.trainer import api
    from streamcell.trainer.evaluate import worse_than_baselines

    verdict = worse_than_baselines(result.metrics)
    if verdict and not args.allow_worse:
        _print_skill(result)
        raise TrainingRefused(f"not published: {verdict} (--allow-worse publishes it anyway)")
    path = api.export(result, args.registry, args.model)
    _summary(path, result, args.json)
    return 0


def _check_registry(registry: Path) -> None:
    from streamcell.core.errors import ConfigError

    try:
        registry.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create registry {registry}: {exc.strerror or exc}") from None
    if not os.access(registry, os.W_OK):
        raise ConfigError(f"registry {registry} is not writable")


def _load(args: argparse.Namespace):
    from streamcell.service.settings import ENV_BOOTSTRAP
    from streamcell.trainer.data import load_long_frame
    from streamcell.trainer.kafka_replay import is_kafka_uri, replay_topic

    if is_kafka_uri(args.data):
        bootstrap = args.bootstrap_servers or os.environ.get(ENV_BOOTSTRAP, "")
        replay = replay_topic(args.data, bootstrap, args.features or [], client=args.kafka_client)
        print(
            f"replayed {replay.events} events of {args.data} ({replay.skipped} invalid skipped)",
            file=sys.stderr,
        )
        return load_long_frame(
            replay.frame, "stream", replay.order_column, args.features, args.targets
        )
    return load_long_frame(
        args.data, args.stream_column, args.order_column, args.features, args.targets
    )


class TrainingRefused(StreamcellError):
    """The model trained but validates worse than the baselines: not published (exit 2)."""


def _print_skill(result) -> None:
    print(skill_line(result.config.metrics), file=sys.stderr)


def skill_line(m: dict) -> str:
    return (
        f"validation MASE {m['val_mase']:.4f}: last value {m['last_value_mase']:.4f}, "
        f"seasonal naive (lag {m.get('season', 1)}) {m['seasonal_naive_mase']:.4f} "
        f"(skill {1 - m['val_mase'] / m['last_value_mase']:+.1%} and "
        f"{1 - m['val_mase'] / m['seasonal_naive_mase']:+.1%})"
    )


def _print_epoch(record: dict, settings) -> None:
    from streamcell.trainer.loop import epoch_line

    print(epoch_line(record, settings.epochs), file=sys.stderr, flush=True)


def calibration_line(record: dict) -> str | None:
    """The 80% interval's validation coverage before and after calibration, in words."""
    if "skipped" in record:
        return f"calibration: none ({record['skipped']})"
    parts = []
    for name in ("online", "forecast"):
        part = record.get(name) or {}
        before, after = part.get("coverage_before", {}), part.get("coverage_after", {})
        if "0.8" in before and "0.8" in after:
            parts.append(f"{name} {before['0.8']:.3f} -> {after['0.8']:.3f}")
    if not parts:
        return None
    return "calibrated on validation, 80% interval coverage: " + ", ".join(parts)


def _summary(path: Path, result, as_json: bool) -> None:
    m, t = result.config.metrics, result.config.training
    if as_json:
        print(json.dumps({"version": str(path), "metrics": m, "training": t}, default=str))
        return
    print(f"exported {path}")
    print(
        f"best epoch {m['epoch']} of {m['epochs_run']}: val MAE {m['val_mae']:.6g} "
        f"RMSE {m['val_rmse']:.6g} MASE {m['val_mase']:.4f} "
        f"(last value: MAE {m['last_value_mae']:.6g} MASE {m['last_value_mase']:.4f})"
    )
    print(skill_line(m))
    if "val_origin_mase" in m and m["val_origin_mase"] == m["val_origin_mase"]:
        print(
            f"forecast: {m['forecast']}; fixed-origin validation MASE over {m['origin_horizon']} "
            f"steps {m['val_origin_mase']:.4f} (last value {m['last_value_origin_mase']:.4f}, "
            f"seasonal naive {m['seasonal_naive_origin_mase']:.4f})"
        )
    levels = result.config.quantile_levels
    if levels:
        print(
            f"quantiles: {', '.join(f'{v:g}' for v in levels)} (pinball loss; the median is yhat)"
        )
        line = calibration_line(m.get("calibration") or {})
        if line:
            print(line)
    recipe = result.config.recipe
    if recipe is not None:
        print(
            f"recipe: periods {recipe['periods']}, lags {recipe['lags']}, "
            f"scale window {recipe['scale_window']}"
        )
    selection = t.get("selection") or {}
    if selection.get("candidates"):
        tried = ", ".join(
            f"{c['overrides'] or 'base'} (horizon {c['horizon']}): {c['score']:.4f} / "
            f"{c['origin_score']:.4f}"
            for c in selection["candidates"]
        )
        print(
            f"candidates ({selection['monitor']} / fixed-origin MASE): {tried}; chosen by "
            f"{selection['chosen_by']}: {selection['forecast']}"
        )
    if selection.get("seeds"):
        avg, runs = selection["seeds_average"], len(selection["seeds"]) + 1
        score = "origin_score" if selection["chosen_by"] == "val_origin_mase" else "score"
        before = selection.get("average") or {}
        without = before if before.get("kept") else selection["candidates"][selection["chosen"]]
        print(
            f"seeds: the chosen candidate trained {runs} times, averaged "
            f"{avg[score]:.4f} against {without[score]:.4f} without the extra runs on "
            "validation: " + ("served averaged" if avg["kept"] else "served without them")
        )
    if selection.get("final_fit", "off") != "off":
        print(f"final fit: {selection['final_fit']}")
    first = selection.get("first_step")
    if first:
        c = selection["candidates"][first["candidate"]]
        print(
            f"online (the first step) from candidate {c['overrides'] or 'base'} (horizon "
            f"{c['horizon']}), better one step ahead on validation; its final fit: "
            f"{first['final_fit']}"
        )
    print(
        f"{t['rows']} rows, {t['streams']} streams ({t.get('streams_left_out', 0)} too short "
        f"to train on, served all the same), {t['workers']} worker(s) on {t['device']}, "
        f"{t['samples_per_s']:.0f} samples/s, {t['seconds']:.1f} s"
    )

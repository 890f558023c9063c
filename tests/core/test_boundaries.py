"""Module boundaries: the core is I/O-free, the service never loads Ray."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from streamcell.core.normalization import scale_from_sums, stream_scales

CORE = [
    "streamcell.core.model",
    "streamcell.core.state",
    "streamcell.core.checkpoint",
    "streamcell.core.normalization",
    "streamcell.core.events",
    "streamcell.core.predictor",
    "streamcell.core.recipe",
    "streamcell.core.coldstore",
    "streamcell.core.tiers",
]
FORBIDDEN_IN_CORE = ["ray", "kafka", "confluent_kafka", "grpc", "prometheus_client"]


def loaded_modules(imports: list[str]) -> set[str]:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in imports)
        + "print('\\n'.join(sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_no_io_libraries():
    mods = loaded_modules(CORE)
    leaked = [m for m in FORBIDDEN_IN_CORE if m in mods]
    assert not leaked, f"the core pulled in {leaked}"


def test_the_service_never_imports_ray():
    import pkgutil

    import streamcell.service

    service_modules = [
        f"streamcell.service.{m.name}" for m in pkgutil.iter_modules(streamcell.service.__path__)
    ]
    assert service_modules, "no service modules found"
    mods = loaded_modules(["streamcell.cli", *service_modules])
    assert "ray" not in mods


def test_cli_lists_its_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    from streamcell.cli import SUBCOMMANDS

    for name in SUBCOMMANDS:
        assert name in out.stdout


def test_cli_reports_bad_arguments_clearly():
    out = subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "models", "--registry", "/nonexistent/registry"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "registry /nonexistent/registry is not a directory" in out.stderr


def test_incremental_scale_equals_the_cumulative_one_bit_for_bit():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(200, 4)) * rng.uniform(0.01, 1000, size=4)).astype(np.float32)
    whole = stream_scales(x, 1e-3)
    sums = np.zeros((1, 4))
    for t in range(len(x)):
        sums += np.abs(x[t : t + 1].astype(np.float64))
        assert scale_from_sums(sums, np.array([t + 1]), 1e-3)[0].tobytes() == whole[t].tobytes()

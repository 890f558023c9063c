"""`streamcell train` on a Ray cluster started the way a user starts one: `ray start`.

The cluster (module fixture) is a head and a second node joining it, one CPU
each, with token authentication on. Each node has its own --temp-dir, which
every one of its processes names on its command line: that is how they are
found and stopped, by pid, afterwards (never `ray stop`: it ends every Ray
process on the machine). The training runs as a user runs it, in a
subprocess: `streamcell train --ray-address`, two workers (so one per node).
The tests above the fixture need no cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from streamcell.core.checkpoint import load_latest
from streamcell.core.errors import ConfigError
from streamcell.core.events import EventBatch
from streamcell.core.predictor import Predictor
from streamcell.trainer import ray_cluster
from streamcell.trainer.ray_cluster import Auth, find_auth
from streamcell.trainer.synthetic import interleaved, noisy_sines

RAY_VARS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
START_TIMEOUT_S = 120
RAY_CLI = Path(sys.executable).with_name("ray")  # the one installed with this interpreter's Ray
STOP_GRACE_S = 5.0
NODE_IP = "127.0.0.2"  # loopback that Ray keeps (it rewrites 127.0.0.1 to the interface's)


# -- no cluster needed ---------------------------------------------------------------


def test_token_sources_in_rays_order(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    file = home / ".ray" / "auth_token"
    assert find_auth({}, home) == Auth(None, None)
    file.write_text("from-file\n")
    assert find_auth({}, home).token == f"Ray's token file {file}"
    named = tmp_path / "token"
    named.write_text(" t ")
    env = {"RAY_AUTH_TOKEN_PATH": str(named), "RAY_AUTH_MODE": "Token"}
    assert find_auth(env, home) == Auth("token", f"RAY_AUTH_TOKEN_PATH={named}")
    assert find_auth({**env, "RAY_AUTH_TOKEN": "t"}, home).token == "RAY_AUTH_TOKEN"
    # Ray ignores empty variables, but a blank token or a bad path ends its search.
    assert find_auth({"RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": ""}, home).token is not None
    assert find_auth({"RAY_AUTH_TOKEN": " "}, home).problem == "RAY_AUTH_TOKEN is set but blank"
    missing = find_auth({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}, home)
    assert missing.token is None and "cannot be read" in (missing.problem or "")


def test_join_fails_at_once_and_names_what_to_set(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="dashboard's URL") as info:
        ray_cluster.join("http://127.0.0.1:8265", environ={})
    assert "leave --ray-address out" in str(info.value)

    env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "nope")}
    with pytest.raises(ConfigError, match="cannot be read") as info:
        ray_cluster.join("127.0.0.1:1", environ=env)
    assert "address tried: 127.0.0.1:1" in str(info.value)

    env = {"RAY_AUTH_MODE": "token"}
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token but no token"):
        ray_cluster.join("127.0.0.1:1", environ=env, home=tmp_path)

    env = {"RAY_AUTH_TOKEN": "t"}
    started = time.monotonic()
    with pytest.raises(ConfigError, match="nothing accepts connections") as info:
        ray_cluster.join(f"127.0.0.1:{_closed_port()}", environ=env)
    assert time.monotonic() - started < 10  # ray.init alone retries for 20 s
    text = str(info.value)
    assert "token: from RAY_AUTH_TOKEN" in text and "set by streamcell" in text
    assert env["RAY_AUTH_MODE"] == "token"


def test_storage_on_a_cluster_must_be_an_absolute_path() -> None:
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="absolute path"):
        ray_cluster.check_storage("relative/ckpt")


# -- a real cluster ------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    address: str
    token: str
    root: Path  # the nodes' temp dirs are under it


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    pytest.importorskip("ray")
    if not RAY_CLI.exists():
        pytest.skip(f"no `ray` command beside {sys.executable}")
    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="sc-ray-", dir="/tmp"))
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    port = _free_port()
    address = f"{NODE_IP}:{port}"
    try:
        _ray_start(
            [
                "--head",
                f"--port={port}",
                f"--temp-dir={root / 'head'}",
                "--num-cpus=1",
                "--include-dashboard=false",
                f"--dashboard-port={_free_port()}",
                f"--ray-client-server-port={_free_port()}",
            ],
            env,
        )
        _ray_start([f"--address={address}", f"--temp-dir={root / 'node'}", "--num-cpus=1"], env)
        yield Cluster(address, token, root)
    finally:
        left = _stop(root)
        shutil.rmtree(root, ignore_errors=True)
        assert not left, f"Ray processes still running after the test: {left}"


@pytest.mark.ray
@pytest.mark.slow
def test_trains_on_the_cluster_and_the_service_serves_the_version(
    cluster: Cluster, tmp_path: Path
) -> None:
    csv = tmp_path / "sines.csv"
    interleaved(noisy_sines(streams=4, length=80, period=10, seed=3)).to_csv(csv, index=False)
    registry, storage = tmp_path / "registry", tmp_path / "ray-storage"
    # The token in RAY_AUTH_TOKEN alone: streamcell turns Ray's token mode on itself.
    proc = _train(
        cluster,
        tmp_path,
        {"RAY_AUTH_TOKEN": cluster.token},
        f"--ray-address={cluster.address}",
        f"--data={csv}",
        f"--registry={registry}",
        "--model=sines",
        f"--storage-path={storage}",
        *("--workers=2", "--epochs=2", "--hidden=8", "--layers=1", "--window=8"),
        *("--batch-size=2", "--json", "--allow-worse"),  # two epochs of a tiny model
        *("--no-candidates", "--final-fit=off", "--seeds=1"),  # one Ray Train run
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "epoch 2/2" in proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["training"]["workers"] == 2
    assert not list(storage.glob(f"{ray_cluster.PROBE_PREFIX}*"))  # the probes are removed

    loaded = load_latest(registry, "sines")
    assert str(loaded.path) == summary["version"]
    batch = EventBatch.of(["s0", "s1"], np.array([[0.1], [0.2]], np.float32))
    yhat = Predictor(loaded).predict(batch, now=0.0).yhat
    assert yhat.shape == (2, 1) and np.isfinite(yhat).all()


@pytest.mark.ray
@pytest.mark.slow
def test_a_wrong_token_is_named(cluster: Cluster, tmp_path: Path) -> None:
    proc = _train(cluster, tmp_path, {"RAY_AUTH_TOKEN": "not-the-token"}, *_args(cluster, tmp_path))
    assert proc.returncode == 2, proc.stderr[-4000:]
    err = proc.stderr
    assert f"cannot join the Ray cluster at {cluster.address}: the cluster refused" in err
    assert "token: from RAY_AUTH_TOKEN" in err
    assert "RAY_AUTH_MODE: token (set by streamcell" in err
    assert "is not this cluster's" in err and "ray get-auth-token" in err


@pytest.mark.ray
@pytest.mark.slow
def test_a_missing_token_is_named_also_from_ray_address(cluster: Cluster, tmp_path: Path) -> None:
    home = tmp_path / "home"  # no ~/.ray/auth_token there
    home.mkdir()
    env = {"HOME": str(home), "RAY_ADDRESS": cluster.address}  # as inside `ray job submit`
    proc = _train(cluster, tmp_path, env, *_args(cluster, tmp_path)[1:])
    assert proc.returncode == 2, proc.stderr[-4000:]
    err = proc.stderr
    assert "the cluster refused this client" in err
    assert "token: none found (looked at RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH" in err
    assert "RAY_AUTH_MODE: unset" in err and "set RAY_AUTH_TOKEN to the cluster's token" in err


@pytest.mark.ray
@pytest.mark.slow
def test_storage_a_node_cannot_write_fails_before_training(
    cluster: Cluster, tmp_path: Path
) -> None:
    # /proc/self/cwd is each process's own working directory: the same path names another
    # directory on the Ray workers than in this driver, as a path that is not shared would.
    storage = f"/proc/self/cwd/{tmp_path.name}-storage"
    args = [*_args(cluster, tmp_path), f"--storage-path={storage}"]
    proc = _train(cluster, tmp_path, {"RAY_AUTH_TOKEN": cluster.token}, *args)
    assert proc.returncode == 2, proc.stderr[-4000:]
    err = proc.stderr
    assert f"Ray Train storage {storage} must be one directory shared by" in err
    assert "cannot write it" in err or "does not see it" in err
    assert "epoch 1" not in err


# -- helpers -------------------------------------------------------------------------


def _args(cluster: Cluster, tmp_path: Path) -> list[str]:
    csv = tmp_path / "tiny.csv"
    noisy_sines(streams=2, length=40, seed=1).to_csv(csv, index=False)
    return [
        f"--ray-address={cluster.address}",
        f"--data={csv}",
        f"--registry={tmp_path / 'registry'}",
        "--model=tiny",
        "--workers=2",
        "--epochs=1",
        "--window=8",
    ]


def _train(
    cluster: Cluster, cwd: Path, extra_env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_VARS}
    env.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "streamcell.cli", "train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run(
        # On loopback (Ray rewrites 127.0.0.1 to the interface's address, not
        # 127.0.0.2), so that the test's traffic stays in 127.0.0.0/8.
        [str(RAY_CLI), "start", *args, f"--node-ip-address={NODE_IP}", "--disable-usage-stats"],
        env=env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"ray start {' '.join(args)} failed:\n{proc.stderr[-4000:]}"


def _pids_naming(root: Path) -> list[int]:
    """Processes whose command line names ``root``: every process of a node under it does."""
    needle = str(root).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def _stop(root: Path) -> list[int]:
    """SIGTERM the cluster's processes by pid, SIGKILL what is left; returns any survivor."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
        for pid in _pids_naming(root):
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while _pids_naming(root) and time.monotonic() < deadline:
            time.sleep(0.2)
    return _pids_naming(root)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return int(s.getsockname()[1])


def _closed_port() -> int:
    return _free_port()  # bound, then released: nothing listens there

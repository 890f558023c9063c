"""Joining a running Ray cluster: its address, Ray's token, and what to set when it fails.

``streamcell train --ray-address`` (or ``RAY_ADDRESS``, which Ray itself sets
inside ``ray job submit``) joins a cluster through :func:`join`. Ray's client
takes its token from ``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; but for an explicit
address it sends that token only when ``RAY_AUTH_MODE=token``, while
``ray start --head`` turns token mode on by itself wherever a token file
exists. A client holding the right token was therefore refused, and Ray said
only "Failed to connect". :func:`join` turns token mode on when a token is
found and ``RAY_AUTH_MODE`` is unset (what Ray does for a cluster it finds
locally), asks the cluster's GCS first so that a refusal is reported at once
and by name, and lists what it tried. Ray reads these variables from the
process environment, so this module reads and sets them there.

:func:`check_storage` proves that Ray Train's checkpoint storage, which rank 0
writes wherever it runs and this driver reads, is one directory for all of
them: a task on every node writes a probe file there, the driver reads it,
and the task removes it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamcell.core.errors import ConfigError
from streamcell.service.settings import is_loopback

log = logging.getLogger(__name__)

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"
TOKEN_FILE = Path(".ray") / "auth_token"  # Ray's own token file, under the home directory
GCS_DEFAULT_PORT = 6379
CONNECT_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 120.0  # a node may first have to start a worker process
PROBE_PREFIX = ".streamcell-probe-"

STORAGE_FIX = (
    "pass --storage-path a directory that every node and this driver mount at the same "
    "path (NFS, a shared volume), or a URI such as s3://bucket/prefix"
)


@dataclass(frozen=True)
class Auth:
    """What Ray's client will present: ``RAY_AUTH_MODE`` and where its token comes from."""

    mode: str | None  # RAY_AUTH_MODE as set (lower case); None when unset
    token: str | None  # where the token comes from; None when there is none
    problem: str | None = None  # a token source that is set but unusable
    mode_set_here: bool = False  # token mode turned on by join() because a token was found

    def describe(self) -> list[str]:
        token = self.problem or (
            f"from {self.token}"
            if self.token
            else f"none found (looked at {TOKEN_VAR}, {TOKEN_PATH_VAR}, ~/{TOKEN_FILE})"
        )
        mode = self.mode or "unset (Ray then sends no token to an explicit address)"
        if self.mode_set_here:
            mode = "token (set by streamcell because a token was found)"
        return [f"token: {token}", f"{AUTH_MODE_VAR}: {mode}"]


def find_auth(environ: Mapping[str, str], home: Path) -> Auth:
    """The token source Ray's loader picks, in its order (tokens are stripped of blanks)."""
    mode = environ.get(AUTH_MODE_VAR, "").strip().lower() or None
    if environ.get(TOKEN_VAR):  # set and non-empty: Ray uses it and looks no further
        if environ[TOKEN_VAR].strip():
            return Auth(mode, TOKEN_VAR)
        return Auth(mode, None, f"{TOKEN_VAR} is set but blank")
    path = environ.get(TOKEN_PATH_VAR)
    if path:
        try:
            text = Path(path).expanduser().read_text()
        except OSError as exc:
            return Auth(mode, None, f"{TOKEN_PATH_VAR}={path} cannot be read ({exc.strerror})")
        if not text.strip():
            return Auth(mode, None, f"{TOKEN_PATH_VAR}={path} is empty")
        return Auth(mode, f"{TOKEN_PATH_VAR}={path}")
    file = home / TOKEN_FILE
    try:
        if file.read_text().strip():
            return Auth(mode, f"Ray's token file {file}")
    except OSError:
        pass
    return Auth(mode, None)


def join(
    address: str,
    *,
    log_to_driver: bool = False,
    environ: MutableMapping[str, str] = os.environ,
    home: Path | None = None,
) -> Auth:
    """``ray.init(address=...)`` with Ray's token passed; ConfigError saying what to set if not.

    ``environ`` and ``home`` are where Ray looks for its settings and token file
    (tests pass their own).
    """
    import ray

    if address.startswith(("http://", "https://")):
        raise ConfigError(
            _explain(
                address,
                None,
                "that is the dashboard's URL (what `ray job submit --address` takes)",
                "give the GCS address `ray start --head` prints, host:port (port "
                f"{GCS_DEFAULT_PORT} by default); inside `ray job submit` leave --ray-address "
                "out: Ray sets RAY_ADDRESS for the job",
            )
        )
    auth = find_auth(environ, home or Path.home())
    if auth.problem:
        raise ConfigError(_explain(address, auth, auth.problem, _token_fix(auth)))
    if auth.mode is None and auth.token:
        _enable_token_mode(environ)
        auth = Auth("token", auth.token, mode_set_here=True)
        log.info("joining %s with the Ray token from %s", address, auth.token)
    if auth.mode == "token" and not auth.token:
        raise ConfigError(
            _explain(address, auth, f"{AUTH_MODE_VAR}=token but no token", _token_fix(auth))
        )
    host_port = _host_port(address)
    if host_port is not None:
        _precheck(address, *host_port, auth)
    options: dict[str, Any] = {}
    if host_port is not None and is_loopback(host_port[0]):
        # A cluster on this machine's loopback: the driver's node is that address
        # too (Ray would otherwise advertise the network interface's address).
        options["_node_ip_address"] = host_port[0]
    try:
        ray.init(address=address, log_to_driver=log_to_driver, **options)
    except (ConnectionError, ValueError, RuntimeError, ray.exceptions.RayError) as exc:
        raise ConfigError(
            _explain(
                address,
                auth,
                str(exc),
                "check that the address is the cluster's GCS and that its Ray version "
                f"({ray.__version__} here) matches",
            )
        ) from None
    return auth


def check_storage(path: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Check that every Ray node with CPUs or GPUs writes ``path`` and this driver sees it.

    Ray Train's rank 0 writes checkpoints into ``path`` on whichever node it
    runs, and this driver reads them; a URI (s3://...) is reached by every node
    through Ray's filesystem layer and is not probed.
    """
    if "://" in path:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    base = Path(path)
    if not base.is_absolute():
        raise ConfigError(
            f"Ray Train storage {path} must be an absolute path on a cluster: each node would "
            "resolve it against its own working directory"
        )
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create Ray Train storage {path}: {exc.strerror}") from None
    nodes = [
        n
        for n in ray.nodes()
        if n["Alive"] and (n["Resources"].get("CPU", 0) > 0 or n["Resources"].get("GPU", 0) > 0)
    ]
    tag = uuid.uuid4().hex[:12]
    probes = {n["NodeID"]: base / f"{PROBE_PREFIX}{tag}-{n['NodeID'][:12]}" for n in nodes}

    def on(node_id: str, fn: Callable[..., Any]) -> Any:
        """``fn`` as a task pinned to the node (no CPU held: training may have them all)."""
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return ray.remote(num_cpus=0, max_retries=0)(fn).options(scheduling_strategy=strategy)

    try:
        written = ray.get(
            [on(i, _write_probe).remote(str(p), i) for i, p in probes.items()], timeout=timeout_s
        )
        problems = []
        for node, error in zip(nodes, written, strict=True):
            where = f"node {node['NodeManagerAddress']} (id {node['NodeID'][:12]})"
            probe = probes[node["NodeID"]]
            if error is not None:
                problems.append(f"{where} cannot write it: {error}")
            elif not _holds(probe, node["NodeID"]):
                problems.append(f"{where} wrote {probe.name} there but this driver does not see it")
        ray.get([on(i, _remove_probe).remote(str(p)) for i, p in probes.items()], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise ConfigError(
            f"the probe of Ray Train storage {path} did not finish on every node within "
            f"{timeout_s:g} s (is a node busy or gone?)"
        ) from None
    except ray.exceptions.RayError as exc:  # e.g. a node that left before its probe ran
        raise ConfigError(f"the probe of Ray Train storage {path} failed: {exc}") from None
    if problems:
        raise ConfigError(
            f"Ray Train storage {path} must be one directory shared by this driver and every "
            f"Ray node: {'; '.join(problems)}. To fix: {STORAGE_FIX}"
        )


def _write_probe(path: str, text: str) -> str | None:
    try:
        Path(path).write_text(text)
    except OSError as exc:
        return str(exc.strerror or exc)
    return None


def _remove_probe(path: str) -> None:
    Path(path).unlink(missing_ok=True)


def _holds(probe: Path, text: str) -> bool:
    try:
        return probe.read_text() == text
    except OSError:
        return False


def _enable_token_mode(environ: MutableMapping[str, str]) -> None:
    from ray._raylet import Config  # type: ignore[attr-defined]

    environ[AUTH_MODE_VAR] = "token"
    if environ is os.environ:
        Config.initialize("")  # Ray caches its config; re-read so this process sees the mode


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of a plain GCS address; None for "auto", "ray://..." and the like."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or "/" in address or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def local_node_ip() -> str | None:
    """The address a Ray instance of streamcell's own (``address="local"``) runs on.

    Ray replaces 127.0.0.1 and localhost with the network interface's
    address; any other loopback address it keeps. On Linux all of
    127.0.0.0/8 is loopback, so a local instance stays off the network. On
    macOS and Windows Ray keeps to loopback by itself (None: Ray's choice).
    """
    return "127.0.0.2" if sys.platform.startswith("linux") else None


def _precheck(address: str, host: str, port: int, auth: Auth) -> None:
    """Fail fast and by name where ray.init would retry for 20 s and say "Failed to connect"."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ConfigError(
            _explain(
                address,
                auth,
                f"nothing accepts connections there ({exc.strerror or exc})",
                "start the head with `ray start --head --port=PORT`, or give the address it "
                f"printed (its GCS port, {GCS_DEFAULT_PORT} by default)",
            )
        ) from None
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]  # names a refusal
        from ray.exceptions import AuthenticationError
    except ImportError:
        return
    try:
        GcsClient(address=address)
    except AuthenticationError as exc:
        reason = f"the cluster refused this client: {exc.message}"
        raise ConfigError(_explain(address, auth, reason, _token_fix(auth))) from None
    except Exception:  # anything else: ray.init reports it in its own words
        return


def _token_fix(auth: Auth) -> str:
    get = "`ray get-auth-token` on the head node prints the cluster's token"
    if auth.problem:
        return f"fix or unset that variable ({get})"
    if auth.mode == "disabled":
        then = (
            f"(or set it to token): the token from {auth.token} is then sent"
            if auth.token
            else f"and set {TOKEN_VAR} to the cluster's token ({get})"
        )
        return (
            f"{AUTH_MODE_VAR}=disabled keeps Ray from sending a token, but this cluster "
            f"requires one: unset {AUTH_MODE_VAR} {then}"
        )
    if auth.token:
        return (
            f"the token from {auth.token} is not this cluster's: set {TOKEN_VAR} to the "
            f"cluster's token ({get}), or {TOKEN_PATH_VAR} to a file holding it"
        )
    return (
        f"set {TOKEN_VAR} to the cluster's token ({get}), or {TOKEN_PATH_VAR} to a file "
        f"holding it, or copy the head's ~/{TOKEN_FILE} here"
    )


def _explain(address: str, auth: Auth | None, reason: str, fix: str) -> str:
    lines = [
        f"cannot join the Ray cluster at {address}: {reason}",
        f"address tried: {address} (--ray-address, else RAY_ADDRESS)",
        *(auth.describe() if auth else []),
        f"to fix: {fix}",
    ]
    return "\n  ".join(lines)

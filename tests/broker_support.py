"""The embedded broker (`streamcell broker`) as a test's subprocess, and stopping processes.

Shared by the session fixture (conftest.py, on a free port) and the tests that
need a broker of their own on a port chosen before it runs (a service started
before its broker).
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import time

BROKER_START_TIMEOUT_S = 30.0


def start_embedded_broker(listen: str = "127.0.0.1:0") -> tuple[subprocess.Popen, str]:
    """Start the broker on ``listen``; returns the process and its bootstrap address."""
    cmd = [sys.executable, "-m", "streamcell.cli", "broker", "--listen", listen, "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + BROKER_START_TIMEOUT_S
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("broker listening on "):
                return proc, line.split()[-1]
        if proc.poll() is not None:
            break
    stop_process(proc)
    err = proc.stderr.read() if proc.stderr else ""
    raise RuntimeError(f"streamcell broker did not start on {listen}: {err.strip()[-2000:]}")


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM by pid, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

"""Child processes of the demo: started with their output in a log, always stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from streamcell.core.errors import StreamcellError


class ChildFailed(StreamcellError):
    """A child process exited or never became ready."""


class Child:
    """A `streamcell ...` subprocess in its own process group, logging to a file."""

    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.args = [sys.executable, "-m", "streamcell.cli", *args]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ChildFailed(f"{self.name} exited before {what}:\n{self.tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise ChildFailed(
            f"{self.name} did not get {what} within {timeout_s:.0f} s:\n{self.tail()}"
        )

    def run_to_end(self, timeout_s: float, echo: Callable[[str], None]) -> None:
        """Run in the foreground, echoing new log lines, until it exits (0 or raise)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            done = self.proc.poll() is not None
            text = self.log.read_text(errors="replace") if self.log.exists() else ""
            lines = text.splitlines()
            for line in lines[seen:]:
                echo(line)
            seen = len(lines)
            if done:
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ChildFailed(f"{self.name} took longer than {timeout_s:.0f} s")
            time.sleep(0.5)
        if self.proc.returncode != 0:
            raise ChildFailed(f"{self.name} failed (exit {self.proc.returncode}):\n{self.tail()}")

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM the process group, then SIGKILL it if it lingers; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()
        except ProcessLookupError:
            return self.proc.wait()

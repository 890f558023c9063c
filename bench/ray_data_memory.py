"""Peak resident memory of the trainer's driver and workers as the data grows 10x.

    python bench/ray_data_memory.py [--streams 400] [--length 500] [--scale 10]
        [--workers 2] [--epochs 1] [--in-memory] [--json]

Writes two synthetic Parquet directories (noisy sines; ``--streams`` and
``--scale`` x that many streams of ``--length`` rows, 100 streams a file, so
the files grow in number, not size), then for each runs
``streamcell train --data DIR`` (the Ray Data path) in a fresh process and
samples, every 0.2 s, the resident set of that process (the driver) and of
every process below it (Ray's own and its workers), from /proc. Reported per
size: the driver's peak, the largest peak of a Ray Train worker
(``ray::RayTrainWorker``) and of any other Ray worker (the Ray Data tasks),
and each peak's ratio between the sizes: the target is within 1.2x. Resident
set is VmRSS (anonymous, file-backed and shared pages a process has touched;
pages of Ray's object store that a process maps count in it); RssAnon, its
private part, is reported beside it. ``--in-memory`` also runs
``--no-ray`` (the whole directory read into the driver), for contrast.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ROOTS = ["core", "service", "trainer", "demo", "protos"]
STREAMS_PER_FILE = 100


def write_data(where: Path, streams: int, length: int, seed: int) -> None:
    import pandas as pd

    where.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    t = np.arange(length)
    for start in range(0, streams, STREAMS_PER_FILE):
        n = min(STREAMS_PER_FILE, streams - start)
        phase = rng.uniform(0, 2 * np.pi, (n, 1))
        level = rng.uniform(-1, 1, (n, 1))
        value = level + np.sin(2 * np.pi * t / 24 + phase) + 0.1 * rng.normal(size=(n, length))
        frame = pd.DataFrame(
            {
                "stream": np.repeat([f"s{start + k}" for k in range(n)], length),
                "seq": np.tile(t, n),
                "value": value.ravel(),
            }
        )
        frame.to_parquet(where / f"part-{start // STREAMS_PER_FILE:05d}.parquet")


def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "PPid"):
                out[key] = int(rest.split()[0])
    return out


def _cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()


def _role(cmd: str) -> str:
    if cmd.startswith("ray::RayTrainWorker"):
        return "train_worker"
    if cmd.startswith("ray::"):
        return "other_worker"
    return "ray_system"  # gcs_server, raylet, dashboard agents, log monitor


@dataclass
class Peaks:
    rss: dict[str, int] = field(default_factory=dict)  # role -> peak VmRSS (kB) of a process
    anon: dict[str, int] = field(default_factory=dict)
    samples: int = 0

    def note(self, role: str, status: dict[str, int]) -> None:
        self.rss[role] = max(self.rss.get(role, 0), status.get("VmRSS", 0))
        self.anon[role] = max(self.anon.get(role, 0), status.get("RssAnon", 0))


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = _status(int(entry)).get("PPid", 0)
            except OSError:
                continue
    found, frontier = [], [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p]
        found += kids
        frontier += kids
    return found


def run(cmd: list[str], env: dict[str, str]) -> tuple[Peaks, float, str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peaks = Peaks()
    done = threading.Event()
    out: list[bytes] = []

    def read() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())
        done.set()

    threading.Thread(target=read, daemon=True).start()
    started = time.perf_counter()
    while proc.poll() is None:
        try:
            peaks.note("driver", _status(proc.pid))
            for pid in _descendants(proc.pid):
                try:
                    peaks.note(_role(_cmdline(pid)), _status(pid))
                except OSError:
                    continue
        except OSError:
            pass
        peaks.samples += 1
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    done.wait(10)
    text = b"".join(out).decode(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return peaks, seconds, text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--streams", type=int, default=400)
    p.add_argument("--length", type=int, default=500)
    p.add_argument("--scale", type=int, default=10)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--in-memory", action="store_true", help="also run --no-ray for contrast")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(REPO / r) for r in ROOTS)
    results: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory(prefix="streamcell-raydata-bench-") as tmp:
        sizes = {"1x": args.streams, f"{args.scale}x": args.streams * args.scale}
        for label, streams in sizes.items():
            write_data(Path(tmp) / label, streams, args.length, seed=1)
        paths = [("ray_data", [])] + ([("in_memory", ["--no-ray"])] if args.in_memory else [])
        for path, extra in paths:
            for label, streams in sizes.items():
                cmd = [
                    sys.executable,
                    "-m",
                    "streamcell.cli",
                    "train",
                    *("--data", str(Path(tmp) / label), "--registry", str(Path(tmp) / "reg")),
                    *("--model", f"bench-{path}-{label}", "--epochs", str(args.epochs)),
                    *("--hidden", "16", "--layers", "1", "--no-candidates", "--allow-worse"),
                    *("--time-budget", "0", "--json"),
                    *(extra or ["--workers", str(args.workers), "--num-cpus", str(args.workers)]),
                ]
                peaks, seconds, _ = run(cmd, env)
                results.setdefault(path, {})[label] = {
                    "streams": streams,
                    "rows": streams * args.length,
                    "seconds": round(seconds, 1),
                    "peak_rss_mib": {k: round(v / 1024) for k, v in sorted(peaks.rss.items())},
                    "peak_anon_mib": {k: round(v / 1024) for k, v in sorted(peaks.anon.items())},
                }
                print(f"{path} {label}: {json.dumps(results[path][label])}", file=sys.stderr)
    big = f"{args.scale}x"
    for by_size in results.values():
        small, large = by_size["1x"], by_size[big]
        for kind in ("peak_rss_mib", "peak_anon_mib"):
            a, b = small[kind], large[kind]
            assert isinstance(a, dict) and isinstance(b, dict)
            by_size.setdefault("ratio", {})[kind] = {  # type: ignore[index]
                role: round(b[role] / a[role], 2) for role in a if role in b and a[role]
            }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    roles = "driver, train worker, other worker"
    print(f"{'path':<10} {'size':<5} {'rows':>9} {'s':>6}  peak VmRSS MiB (RssAnon): {roles}")
    for path, by_size in results.items():
        for label in ("1x", big):
            r = by_size[label]
            rss, anon = r["peak_rss_mib"], r["peak_anon_mib"]
            assert isinstance(rss, dict) and isinstance(anon, dict)
            cells = ", ".join(
                f"{rss.get(k, '-')} ({anon.get(k, '-')})"
                for k in ("driver", "train_worker", "other_worker")
            )
            print(f"{path:<10} {label:<5} {r['rows']:>9} {r['seconds']:>6}  {cells}")
        ratio = by_size["ratio"]
        assert isinstance(ratio, dict)
        rss, anon = ratio["peak_rss_mib"], ratio["peak_anon_mib"]
        print(f"{path:<10} {big}/1x ratios: VmRSS {rss}, RssAnon {anon}")


if __name__ == "__main__":
    main()

"""Which embedded store holds the cold tier: RocksDB (rocksdict) against LMDB.

    nice -n 5 .venv/bin/python -m bench.cold_backends --keys 200000 --batch 1024

The cold tier's work, at the cold tier's grain: a micro-batch spills and
loads a batch of ~1 KB snapshots at once, so each backend gets the same
three batched operations, in one run, side by side: a write of ``--batch``
new keys, a multi-get of ``--batch`` random keys (nine in ten present), and
the get-and-delete of a batch (a load). Both run as a cache would (no
fsync; RocksDB without its write-ahead log). Prints a Markdown table, and
the resident memory and bytes on disk each ended with.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class Rocks:
    def __init__(self, path: Path) -> None:
        from rocksdict import Options, Rdict, WriteBatch, WriteOptions

        opts = Options(raw_mode=True)
        opts.create_if_missing(True)
        self.db = Rdict(str(path), opts)
        self.wo = WriteOptions()
        self.wo.disable_wal = True
        self.batch = WriteBatch

    def put(self, keys: list[bytes], values: list[bytes]) -> None:
        wb = self.batch(raw_mode=True)
        for k, v in zip(keys, values, strict=True):
            wb.put(k, v)
        self.db.write(wb, self.wo)

    def get(self, keys: list[bytes]) -> list[bytes | None]:
        return self.db.get(keys)

    def take(self, keys: list[bytes]) -> list[bytes | None]:
        out = self.db.get(keys)
        wb = self.batch(raw_mode=True)
        for k, v in zip(keys, out, strict=True):
            if v is not None:
                wb.delete(k)
        self.db.write(wb, self.wo)
        return out

    def close(self) -> None:
        self.db.close()


class Lmdb:
    def __init__(self, path: Path) -> None:
        import lmdb

        self.env = lmdb.open(
            str(path), map_size=1 << 36, sync=False, metasync=False, readahead=False, lock=True
        )

    def put(self, keys: list[bytes], values: list[bytes]) -> None:
        with self.env.begin(write=True) as txn:
            cur = txn.cursor()
            cur.putmulti(list(zip(keys, values, strict=True)))

    def get(self, keys: list[bytes]) -> list[bytes | None]:
        with self.env.begin(buffers=False) as txn:
            get = txn.get
            return [get(k) for k in keys]

    def take(self, keys: list[bytes]) -> list[bytes | None]:
        with self.env.begin(write=True) as txn:
            out = [txn.pop(k) for k in keys]
        return out

    def close(self) -> None:
        self.env.close()


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of one call."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def run(store, keys: int, batch: int, values: list[bytes], rng) -> dict[str, float]:
    names = [f"stream-{k:09d}".encode() for k in range(keys)]
    pool = len(values)
    t = time.perf_counter()
    for k in range(0, keys, batch):
        ids = names[k : k + batch]
        store.put(ids, [values[(k + j) % pool] for j in range(len(ids))])
    fill = (time.perf_counter() - t) / (keys / batch)
    fresh = iter(range(keys, keys + 10**8))

    def new_batch() -> None:
        ids = [f"stream-{next(fresh):09d}".encode() for _ in range(batch)]
        store.put(ids, values[:batch])

    def lookup() -> None:
        pick = rng.integers(0, int(keys / 0.9), batch)
        store.get([f"stream-{k:09d}".encode() for k in pick])

    def load() -> None:
        pick = rng.integers(0, keys, batch)
        store.take([names[k] for k in pick])

    return {
        "fill": fill,
        "put": timed(new_batch, 50),
        "get": timed(lookup, 50),
        "take": timed(load, 50),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--value-bytes", type=int, default=1024)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    # Distinct incompressible values (a snapshot's floats barely compress).
    values = [rng.bytes(args.value_bytes) for _ in range(4096)]
    print(f"load average {os.getloadavg()}, {args.keys} keys of {args.value_bytes} B")
    print("| backend | fill (ms/batch) | put (ms/batch) | multi-get (ms/batch) | load: get+delete "
          "(ms/batch) | RSS after (MiB) | on disk (MiB) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, kind in (("rocksdict (RocksDB)", Rocks), ("lmdb", Lmdb)):
        root = Path(tempfile.mkdtemp(prefix="cold-backend-"))
        before = rss_mib()
        store = kind(root / "db")
        try:
            r = run(store, args.keys, args.batch, values, rng)
            grown = rss_mib() - before
        finally:
            store.close()
        size = dir_bytes(root) / 2**20
        shutil.rmtree(root)
        print(
            f"| {name} | {r['fill'] * 1e3:.2f} | {r['put'] * 1e3:.2f} | {r['get'] * 1e3:.2f} "
            f"| {r['take'] * 1e3:.2f} | +{grown:.0f} | {size:.0f} |"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()

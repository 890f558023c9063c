"""The two tiers of stream state: memory with many cold streams, throughput, restore.

    nice -n 5 .venv/bin/python bench/tiered_state.py memory --cold 0,1000000
    nice -n 5 .venv/bin/python bench/tiered_state.py throughput --hot 100000 --streams 1000000
    nice -n 5 .venv/bin/python bench/tiered_state.py restore --streams 1000000
    nice -n 5 .venv/bin/python bench/tiered_state.py kafka --hot 10000 --cold 20000
    nice -n 5 .venv/bin/python bench/tiered_state.py drop --cold 1000000 --partitions 100

memory: for each cold count C, a fresh process builds a Predictor (hidden 64,
2 layers, 8 inputs and outputs) with ``--hot`` streams of room in memory and a
cold tier in a temporary directory; drives ``--hot`` distinct streams through
``Predictor.predict`` (the hot tier full), fills the cold tier directly with C
streams (real snapshots under new ids, ``ColdStore.put`` in chunks of 4,096:
the embedded broker holds everything in memory, so no changelog), then runs
50 batches of 4,096 events, 95 % on the hot streams and 5 % on cold ones, and
notes the resident set (VmRSS) and its peak (VmHWM) against the target of
twice the hot state plus 1 GiB.

throughput: one process, one model (as above), the tiers prefilled as for
memory, then compacted so that timing starts from a settled store (``--hot``
in memory, ``--streams`` in all, the rest cold). Batches of ``--batch``
events, each mode a round at a time in turn (its rate: the batch over its
median batch time) so that they share the
machine's load, each on a Predictor of its own (one mode's traffic would
change which streams another finds hot), the garbage collector set as
``streamcell serve`` sets it (``gc_pauses.settle``): all-hot (every event on
a hot stream; once with the cold tier, once with a Predictor without one),
95 % hot (5 % uniform over the cold streams, after ``--warmup`` such
batches), uniform over every stream; and the naive design, which gets and puts
each event's state in the same RocksDB store one event at a time: per event a
get, one LSTM step of that event, a put (``naive``), and the same with the
storage per event but the step batched (``naive, batched step``).

restore: ``--streams`` snapshots of a small model (``--hidden``, ``--layers``;
default hidden 8, 1 layer) written to a 3-partition changelog on the embedded
broker, then read and restored as the pipeline does (``changelog.read``, then
``Predictor.restore``) into a Predictor with ``--hot`` streams of room, the
rest going to the cold tier; a sample of streams from both tiers is compared
byte for byte with the source.

kafka: the Kafka path, ``streamcell serve`` as bench/kafka_e2e.py runs it
(events/s from its first prediction to the commit covering every event, and
events per CPU second of serve) with ``--max-streams --hot``, on two
preloaded topics of ``--events`` JSON events (hidden 64, 2 layers): every
event on the ``--hot`` streams, and 95 % on them with 5 % on ``--cold`` other
streams (first seen in the run, so the early ones are created and spilled,
the later ones loaded too). ``--repeat`` runs of each topic, a fresh serve
and state directory each, the order turned each round; ``--trees`` (comma
separated roots) serves each tree's code in turn, side by side.

drop: a partition let go (a rebalance): ``--cold`` streams of 1,196-byte
snapshots put in a cold tier over ``--partitions`` partitions (round robin),
compacted, then ``ColdStore.drop_tags`` of one partition, then of another
``--rounds`` times; the seconds of each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

INPUT = 8
CHUNK = 4096
GIB = 1 << 30
MIB = 1 << 20


def status(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_predictor(hot: int, cold_dir: Path | None, hidden: int = 64, layers: int = 2):
    import torch

    from streamcell.core.checkpoint import LoadedModel, ModelConfig
    from streamcell.core.coldstore import ColdStore
    from streamcell.core.model import StreamingLSTM
    from streamcell.core.predictor import Predictor

    torch.set_num_threads(1)
    torch.manual_seed(0)
    names = tuple(f"f{k}" for k in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    cfg = ModelConfig(INPUT, hidden, layers, INPUT, names, names, zeros, ones, zeros, ones)
    model = StreamingLSTM(INPUT, hidden, layers, INPUT)
    loaded = LoadedModel("bench", "v1", None, cfg, model)  # type: ignore[arg-type]
    cold = None if cold_dir is None else ColdStore(cold_dir)
    return Predictor(loaded, max_streams=hot, initial_capacity=hot, cold=cold, clock=lambda: 2e9)


def batch_of(ids: list[str], rng: np.random.Generator, t: float):
    from streamcell.core.events import EventBatch

    x = rng.standard_normal((len(ids), INPUT)).astype(np.float32)
    return EventBatch.of(ids, x, time=np.full(len(ids), t))


def fill_hot(predictor, hot: int, rng) -> None:
    for start in range(0, hot, CHUNK):
        ids = [f"h{k}" for k in range(start, min(hot, start + CHUNK))]
        predictor.predict(batch_of(ids, rng, 1e9))


def fill_cold(predictor, cold: int) -> float:
    """Put ``cold`` streams into the cold tier directly: real snapshots under new ids."""
    store = predictor.store
    size = store.snapshot_size
    some = bytes(store.snapshot_block(store.stream_ids()[:CHUNK]))
    template = (some * (CHUNK * size // len(some) + 1))[: CHUNK * size]  # CHUNK whole records
    tier = predictor.tiers.cold
    start = time.perf_counter()
    for first in range(0, cold, CHUNK):
        n = min(CHUNK, cold - first)
        ids = [f"c{k}" for k in range(first, first + n)]
        ages = np.full(n, 1e9 - 1 - first / max(cold, 1))
        tier.put(ids, template[: n * size], ages, np.zeros(n), size=size, known_absent=True)
    # Timed runs start from a settled store, not amid the fill's compactions.
    tier.compact()
    return time.perf_counter() - start


def mixed_batch(rng, size: int, hot: int, cold: int, hot_share: float, t: float):
    """``size`` distinct streams: ``hot_share`` of them from h*, the rest from c*."""
    n_hot = round(size * hot_share) if cold else size
    ids = [f"h{k}" for k in rng.choice(hot, n_hot, replace=False)]
    if size > n_hot:
        ids += [f"c{k}" for k in rng.choice(cold, size - n_hot, replace=False)]
    return batch_of(ids, rng, t)


# --------------------------------------------------------------------- memory
def memory_child(hot: int, cold: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="tiers-memory-"))
    try:
        rng = np.random.default_rng(0)
        predictor = make_predictor(hot, root / "state")
        base = status("VmRSS")
        fill_hot(predictor, hot, rng)
        fill_s = fill_cold(predictor, cold)
        t0 = time.perf_counter()
        for k in range(50):
            predictor.predict(mixed_batch(rng, CHUNK, hot, cold, 0.95, 1e9 + k))
        traffic_s = time.perf_counter() - t0
        hot_state = predictor.store.nbytes
        out = {
            "hot": hot,
            "cold": len(predictor.tiers.cold),
            "hot_state_bytes": hot_state,
            "base_rss": base,
            "rss": status("VmRSS"),
            "peak_rss": status("VmHWM"),
            "target": 2 * hot_state + GIB,
            "disk_bytes": dir_bytes(root),
            "cold_fill_seconds": fill_s,
            "traffic_events_per_s": 50 * CHUNK / traffic_s,
        }
        predictor.tiers.cold.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def memory(args) -> list[dict]:
    rows = []
    for cold in [int(c) for c in args.cold.split(",")]:
        done = subprocess.run(
            [sys.executable, __file__, "memory-child", str(args.hot), str(cold)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"hot {row['hot']:,} cold {row['cold']:,}: hot state "
            f"{row['hot_state_bytes'] / MIB:.1f} MiB; RSS {row['rss'] / MIB:.0f} MiB "
            f"(peak {row['peak_rss'] / MIB:.0f}, base {row['base_rss'] / MIB:.0f}); target "
            f"{row['target'] / MIB:.0f} MiB; disk {row['disk_bytes'] / MIB:.0f} MiB; cold fill "
            f"{row['cold_fill_seconds']:.1f} s; 95 % hot traffic "
            f"{row['traffic_events_per_s']:,.0f} events/s",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------- throughput
def naive_per_event(predictor_one, cold, batch) -> None:
    """Get, step and put each event's state one at a time (the design to beat)."""
    from streamcell.core.events import EventBatch

    store = predictor_one.store
    for k, stream in enumerate(batch.streams):
        (value,) = cold.get([stream])
        store.clear()
        if value is not None:
            store.restore([(stream, value)])
        one = EventBatch.of([stream], batch.x[k : k + 1], time=batch.time[k : k + 1])
        predictor_one.predict(one)
        slot = store.slot_of(stream)
        cold.put([stream], store.snapshot([stream]), store.last_seen[[slot]], [0])


def naive_batched_step(predictor_many, cold, batch) -> None:
    """Storage per event (a get, later a put, each alone), the step batched."""
    store = predictor_many.store
    store.clear()
    for stream in batch.streams:
        (value,) = cold.get([stream])
        if value is not None:
            store.restore([(stream, value)])
    predictor_many.predict(batch)
    for stream in batch.streams:
        slot = store.slot_of(stream)
        cold.put([stream], store.snapshot([stream]), store.last_seen[[slot]], [0])


def throughput(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="tiers-throughput-"))
    try:
        return _throughput(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def settle_store(cold) -> float:
    """Flush, compact, and wait until RocksDB's background threads are idle; the seconds.

    The spills pending in memory (write-behind) stay as the traffic left them:
    written now, they would leave the timed batches an empty buffer that no
    steady state has.
    """
    start = time.perf_counter()
    db = cold._db
    db.flush()
    db.compact_range(None, None)
    while busy(cold):
        time.sleep(0.05)
    return time.perf_counter() - start


def busy(cold) -> bool:
    """Whether a flush or compaction runs (or waits) in RocksDB's background threads."""
    db = cold._db
    return any(
        db.property_int_value(name)
        for name in (
            "rocksdb.num-running-compactions",
            "rocksdb.num-running-flushes",
            "rocksdb.compaction-pending",
        )
    )


def spread(values: list[float]) -> str:
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return f"median {q[2]:.2f} (quartiles {q[1]:.2f} to {q[3]:.2f}, range {q[0]:.2f} to {q[4]:.2f})"


def _throughput(args, root: Path) -> dict:
    import gc

    from streamcell.core.coldstore import ColdStore

    rng = np.random.default_rng(1)
    hot, total, size = args.hot, args.streams, args.batch
    cold_n = total - hot

    from streamcell.service import gc_pauses

    def tiered(name: str):
        p = make_predictor(hot, root / name)
        fill_hot(p, hot, rng)
        print(f"{name}: cold tier filled with {cold_n:,} in {fill_cold(p, cold_n):.1f} s")
        return p

    # A Predictor per mode: one mode's traffic would change which streams another finds hot.
    # The collector set as `streamcell serve` sets it once started (before any stream).
    gc_pauses.settle()
    plain = make_predictor(hot, None)
    fill_hot(plain, hot, rng)
    all_hot_p, mixed_p, uniform_p = tiered("all-hot"), tiered("mixed"), tiered("uniform")
    # The naive designs' own store, filled with the same streams.
    naive_cold = ColdStore(root / "naive")
    ssize = plain.store.snapshot_size
    some = bytes(plain.store.snapshot_block(plain.store.stream_ids()[:CHUNK]))
    block = (some * (CHUNK * ssize // len(some) + 1))[: CHUNK * ssize]
    for first in range(0, total, CHUNK):
        n = min(CHUNK, total - first)
        ids = [f"h{k}" if k < hot else f"c{k - hot}" for k in range(first, first + n)]
        naive_cold.put(ids, block[: n * ssize], np.full(n, 1e9), np.zeros(n), size=ssize)
    one = make_predictor(1, None)
    many = make_predictor(size, None)

    def uniform(t):
        ids = rng.choice(total, size, replace=False)
        names = [f"h{k}" if k < hot else f"c{k - hot}" for k in ids]
        return batch_of(names, rng, t)

    # name: (make a batch, apply it, every how many rounds)
    modes = {
        "all hot, no cold tier": (
            lambda t: mixed_batch(rng, size, hot, 0, 1.0, t), plain.predict, 1,
        ),
        "all hot, with the cold tier": (
            lambda t: mixed_batch(rng, size, hot, 0, 1.0, t), all_hot_p.predict, 1,
        ),
        "95 % hot": (
            lambda t: mixed_batch(rng, size, hot, cold_n, 0.95, t), mixed_p.predict, 1,
        ),
        "uniform over all streams": (uniform, uniform_p.predict, 1),
        "naive: get, step, put per event": (
            uniform, lambda b: naive_per_event(one, naive_cold, b), max(1, args.rounds // 10),
        ),
        "naive: get and put per event, step batched": (
            uniform, lambda b: naive_batched_step(many, naive_cold, b), 1,
        ),
    }  # fmt: skip
    t = 1.5e9
    # Toward each Predictor's steady state of which streams are hot (and which of them
    # the tier has on probation), each on its own traffic.
    for k in range(max(args.warmup, 1)):
        for name, (make, run, _) in modes.items():
            if k == 0 or not name.startswith("naive"):  # the naive designs keep no hot set
                t += 1
                run(make(t))
    # Timing starts on settled stores: the fills' and the warm-up's flushes and
    # compactions done, not running in background threads beside the timed batches.
    stores = [p.tiers.cold for p in (all_hot_p, mixed_p, uniform_p)] + [naive_cold]
    print(f"stores settled in {sum(settle_store(c) for c in stores):.1f} s", flush=True)
    names = list(modes)
    seconds: dict[str, list[float]] = {name: [] for name in modes}
    per_round: dict[str, list[float]] = {name: [] for name in modes}  # rate, rounds with all
    # The loop thread's own CPU time: leaves out the waits for a core on a loaded machine.
    cpu_seconds: dict[str, list[float]] = {name: [] for name in modes}
    counts = mixed_p.tiers.counts
    before = (counts.hits, counts.loads)
    background = 0  # 95 % hot batches that left RocksDB with background work
    gc_before = [g["collections"] for g in gc.get_stats()]
    for r in range(args.rounds):
        # The order turns each round: no mode always runs right after the naive ones
        # (which evict the caches) or first in a round.
        order = names if args.fixed_order else names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            make, run, every = modes[name]
            if r % every:
                continue
            t += 1
            batch = make(t)  # made outside the timing: only the Predictor's work is timed
            start, cpu = time.perf_counter(), time.thread_time()
            run(batch)
            seconds[name].append(time.perf_counter() - start)
            cpu_seconds[name].append(time.thread_time() - cpu)
            per_round[name].append(size / seconds[name][-1])
            if name == "95 % hot" and busy(mixed_p.tiers.cold):
                background += 1
    gc_after = [g["collections"] for g in gc.get_stats()]
    # The median batch: a round that another helper's burst slowed counts once, not in full.
    rates = {name: size / float(np.median(seconds[name])) for name in modes}
    base = rates["all hot, no cold tier"]
    for name, rate in rates.items():
        q = np.percentile(per_round[name], [25, 75])
        print(
            f"{name:45s} {rate:>10,.0f} events/s  {rate / base:5.2f} x all hot  "
            f"(quartiles {q[0]:,.0f} to {q[1]:,.0f}, {len(seconds[name])} batches)",
            flush=True,
        )
    cpu_rates = {name: size / float(np.median(cpu_seconds[name])) for name in modes}
    cpu_base = cpu_rates["all hot, no cold tier"]
    for name, rate in cpu_rates.items():
        print(f"{name:45s} {rate:>10,.0f} events per CPU second  {rate / cpu_base:5.2f} x all hot")
    mixed = np.array(per_round["95 % hot"])
    ratios = {}
    for twin in ("all hot, no cold tier", "all hot, with the cold tier"):
        ratio = mixed / np.array(per_round[twin])
        ratios[twin] = float(np.median(ratio))
        print(f"95 % hot / {twin}, per round: {spread(ratio.tolist())}")
    twins = np.array(per_round["all hot, with the cold tier"]) / np.array(
        per_round["all hot, no cold tier"]
    )
    print(f"all hot with / without the cold tier, per round: {spread(twins.tolist())}")
    hits, loads = counts.hits - before[0], counts.loads - before[1]
    ratio = hits / max(hits + loads, 1)
    print(f"95 % hot: the share of a batch's streams found in memory: {ratio:.3f}")
    print(f"95 % hot batches after which RocksDB had background work: {background}")
    print(f"garbage collections while timing, by generation: "
          f"{[a - b for a, b in zip(gc_after, gc_before, strict=True)]}")  # fmt: skip
    for name in ("naive: get, step, put per event", "naive: get and put per event, step batched"):
        print(f"uniform / {name}: {rates['uniform over all streams'] / rates[name]:.1f} x")
    naive_cold.close()
    for p in (all_hot_p, mixed_p, uniform_p):
        p.tiers.cold.close()
    return {
        "rates": rates, "hot": hot, "streams": total, "batch": size, "hit_ratio": ratio,
        "per_round_ratio": ratios, "twins": float(np.median(twins)), "cpu_rates": cpu_rates,
    }  # fmt: skip


# -------------------------------------------------------------------- restore
def restore(args) -> dict:
    from streamcell.service import changelog
    from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
    from streamcell.service.kafka import (
        KafkaClientConfig,
        TopicSpec,
        open_admin,
        open_producer,
        open_reader,
    )

    rng = np.random.default_rng(2)
    source = make_predictor(args.streams, None, args.hidden, args.layers)
    for start in range(0, args.streams, CHUNK):
        ids = [f"s{k}" for k in range(start, min(args.streams, start + CHUNK))]
        source.predict(batch_of(ids, rng, 1e9 + start))
    root = Path(tempfile.mkdtemp(prefix="tiers-restore-"))
    try:
        with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
            cfg = KafkaClientConfig(broker.bootstrap, client=args.client)
            topic = f"changelog-{uuid.uuid4().hex[:8]}"
            admin = open_admin(cfg)
            admin.ensure_topics([TopicSpec(topic, 3, compacted=True)])
            admin.close()
            producer = open_producer(cfg)
            ids = source.store.stream_ids()
            start = time.perf_counter()
            changelog.Snapshots(topic, source.store, {s: k % 3 for k, s in enumerate(ids)}).send(
                producer
            )
            producer.flush(600)
            producer.close()
            write_s = time.perf_counter() - start
            target = make_predictor(args.hot, root / "state", args.hidden, args.layers)
            start = time.perf_counter()
            items, where, _ = changelog.read(lambda: open_reader(cfg), topic, [0, 1, 2], 300)
            read_s = time.perf_counter() - start
            done = target.restore(items, where)
            total_s = time.perf_counter() - start
        assert len(done.streams) == args.streams and done.cold == args.streams - args.hot
        sample = ids[:: max(1, args.streams // 1000)]
        assert bytes(target.snapshots.snapshot_block(sample)) == bytes(
            source.store.snapshot_block(sample)
        )
        row = {
            "streams": args.streams,
            "hot": len(target.store),
            "cold": done.cold,
            "snapshot_bytes": source.store.snapshot_size,
            "write_seconds": write_s,
            "read_seconds": read_s,
            "restore_seconds": total_s,
            "client": args.client,
        }
        print(
            f"restore of {row['streams']:,} streams ({row['snapshot_bytes']} B snapshots, hidden "
            f"{args.hidden}, {args.layers} layer(s)) with {args.client}: {total_s:.1f} s "
            f"(read {read_s:.1f} s, then {row['hot']:,} hot and {row['cold']:,} cold in "
            f"{total_s - read_s:.1f} s); written in {write_s:.1f} s",
            flush=True,
        )
        target.tiers.cold.close()
        return row
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------- kafka
def kafka(args) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from kafka_e2e import bench_serve, make_registry, produce_all

    from streamcell.service.broker import BrokerSettings, EmbeddedBroker, free_port
    from streamcell.service.replay import Events, encode

    rng = np.random.default_rng(3)
    root = Path(tempfile.mkdtemp(prefix="tiers-kafka-"))
    try:
        registry = make_registry(root / "registry")

        def messages(hot_share: float):
            n_hot = round(args.events * hot_share)
            ids = [f"h{k}" for k in rng.integers(0, args.hot, n_hot)]
            ids += [f"c{k}" for k in rng.integers(0, args.cold, args.events - n_hot)]
            ids = [ids[k] for k in rng.permutation(len(ids))]
            seen: dict[str, int] = {}
            seq = np.array([seen.setdefault(s, -1) + 1 for s in ids], np.int64)
            for s, q in zip(ids, seq.tolist(), strict=True):
                seen[s] = q
            x = rng.standard_normal((len(ids), INPUT)).astype(np.float32)
            return encode(Events(ids, x, seq, None))

        trees = [str(Path(t).resolve()) for t in args.trees.split(",")] if args.trees else [""]
        names = ("all hot", "95 % hot")
        runs: dict[tuple[str, str], list[dict]] = {(t, n): [] for t in trees for n in names}
        with EmbeddedBroker(BrokerSettings(port=free_port())) as broker:
            topics = {}
            for name, share in zip(names, (1.0, 0.95), strict=True):
                topics[name] = f"tiers-{uuid.uuid4().hex[:8]}"
                produce_all(broker.bootstrap, topics[name], messages(share), args.partitions)
            jobs = [(t, n) for t in trees for n in names]
            for r in range(args.repeat):  # the order turned each round: they share the load
                for tree, name in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
                    run = argparse.Namespace(
                        partitions=args.partitions, events=args.events, timeout=600.0,
                        streams=args.hot, max_batch=1024,
                        serve_args=f"--max-streams {args.hot} --state-dir "
                        f"{root / uuid.uuid4().hex[:8]}",
                    )  # fmt: skip
                    saved = os.environ.get("PYTHONPATH")
                    if tree:  # serve runs that tree's code (a subprocess inherits the path)
                        os.environ["PYTHONPATH"] = ":".join(
                            f"{tree}/{d}" for d in ("core", "service", "trainer", "demo", "protos")
                        )
                    try:
                        out = bench_serve(
                            broker.bootstrap, registry, args.client, topics[name], run
                        )
                    finally:
                        if saved is None:
                            os.environ.pop("PYTHONPATH", None)
                        else:
                            os.environ["PYTHONPATH"] = saved
                    runs[(tree, name)].append(out)
                    print(
                        f"{tree or '.'}: {name:10s} {out['serve_to_commit']:>9,.0f} events/s, "
                        f"{out['serve_cpu']:>9,.0f} per CPU second (serve, {args.client}); "
                        f"load average {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
        rates = {}
        for tree in trees:
            wall = {
                n: float(np.median([o["serve_to_commit"] for o in runs[(tree, n)]])) for n in names
            }
            cpu = {n: float(np.median([o["serve_cpu"] for o in runs[(tree, n)]])) for n in names}
            rates[tree or "."] = {"wall": wall, "cpu": cpu}
            print(
                f"{tree or '.'}: 95 % hot / all hot on the Kafka path: "
                f"{wall['95 % hot'] / wall['all hot']:.2f} (events/s, medians of {args.repeat}), "
                f"{cpu['95 % hot'] / cpu['all hot']:.2f} (per CPU second of serve)"
            )
        return rates
    finally:
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------- drop
def drop(args) -> dict:
    from streamcell.core.coldstore import ColdStore

    root = Path(tempfile.mkdtemp(prefix="tiers-drop-"))
    try:
        cold = ColdStore(root / "state")
        size = 1196
        block = np.random.default_rng(4).integers(0, 256, CHUNK * size, np.uint8).tobytes()
        for first in range(0, args.cold, CHUNK):
            n = min(CHUNK, args.cold - first)
            ids = [f"c{k}" for k in range(first, first + n)]
            tags = np.arange(first, first + n) % args.partitions
            cold.put(ids, block[: n * size], np.full(n, 1e9), tags, size=size, known_absent=True)
        cold.compact()
        seconds = []
        for p in range(min(args.rounds, args.partitions)):
            start = time.perf_counter()
            gone = cold.drop_tags({p})
            seconds.append(time.perf_counter() - start)
            assert len(gone) == len(range(p, args.cold, args.partitions))
        cold.close()
        print(
            f"drop one of {args.partitions} partitions ({args.cold // args.partitions:,} of "
            f"{args.cold:,} cold streams): median {np.median(seconds) * 1e3:.1f} ms "
            f"(range {min(seconds) * 1e3:.1f} to {max(seconds) * 1e3:.1f}, {len(seconds)} drops)",
            flush=True,
        )
        return {"seconds": seconds, "cold": args.cold, "partitions": args.partitions}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "memory-child":
        print(json.dumps(memory_child(int(sys.argv[2]), int(sys.argv[3]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--hot", type=int, default=100_000)
    m.add_argument("--cold", default="0,1000000")
    t = sub.add_parser("throughput")
    t.add_argument("--hot", type=int, default=100_000)
    t.add_argument("--streams", type=int, default=1_000_000)
    t.add_argument("--batch", type=int, default=1024)
    t.add_argument("--rounds", type=int, default=40)
    t.add_argument("--warmup", type=int, default=100, help="batches of each mode before timing")
    t.add_argument("--fixed-order", action="store_true", help="the same order of modes each round")
    r = sub.add_parser("restore")
    r.add_argument("--streams", type=int, default=1_000_000)
    r.add_argument("--hot", type=int, default=100_000)
    r.add_argument("--hidden", type=int, default=8)
    r.add_argument("--layers", type=int, default=1)
    r.add_argument("--client", default="confluent")
    k = sub.add_parser("kafka")
    k.add_argument("--hot", type=int, default=10_000)
    k.add_argument("--cold", type=int, default=20_000)
    k.add_argument("--events", type=int, default=300_000)
    k.add_argument("--partitions", type=int, default=3)
    k.add_argument("--client", default="confluent")
    k.add_argument("--repeat", type=int, default=1, help="runs of each topic, alternated")
    k.add_argument("--trees", default="", help="code trees to serve from, alternated")
    d = sub.add_parser("drop")
    d.add_argument("--cold", type=int, default=1_000_000)
    d.add_argument("--partitions", type=int, default=100)
    d.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", help="write the results here too")
    args = p.parse_args()
    print(f"load average {os.getloadavg()}", flush=True)
    jobs = {
        "memory": memory, "throughput": throughput, "restore": restore, "kafka": kafka,
        "drop": drop,
    }  # fmt: skip
    out = jobs[args.what](args)
    print(f"load average {os.getloadavg()}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

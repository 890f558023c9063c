"""gRPC benchmark: streamcell's servicer against an echo servicer on the same stack.

    .venv/bin/python bench/grpc_bench.py [--seconds 3] [--streams 10000]

Each server runs in its own process (so the load generator does not share
its GIL) on the same sync ``grpc.server`` thread pool, options and
interceptors as ``streamcell serve``. The echo servicer parses the request and
returns a prebuilt reply of the same shape (one Prediction per event), so it
is the stack's own limit for these messages. Measured in one run:

- unary Predict latency p50/p99 (and calls/s) at concurrency 1, 8, 32
  (grpc.aio client tasks, one event per call, streams cycled);
- PredictBatch events/s at batch 1, 100, 1000 (concurrency 2);

and the ratio streamcell / echo for each. The model: 8 inputs, hidden 64,
2 layers, 8 outputs (random weights; speed does not depend on them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from concurrent import futures

import numpy as np

INPUT, HIDDEN, LAYERS = 8, 64, 2


# ------------------------------------------------------------------ servers
def _serve(kind: str, registry: str, workers: int) -> None:
    """Run one server until stdin closes; print its port first."""
    import grpc

    from streamcell.service.grpc_api import GrpcSettings, start_grpc_server
    from streamcell.service.metrics import Metrics

    metrics = Metrics()
    settings = GrpcSettings(port=0, host="127.0.0.1", workers=workers)
    if kind == "streamcell":
        import torch

        from streamcell.core.checkpoint import load_latest
        from streamcell.core.predictor import Predictor

        torch.set_num_threads(1)
        predictor = Predictor(load_latest(registry, "bench"), max_streams=1_000_000)
        handle = start_grpc_server(settings, lambda: predictor, metrics)
        port, stop = handle.port, lambda: handle.stop(0)
    else:
        from streamcell.service.grpc_interceptors import MetricsInterceptor
        from streamcell.v1 import predictor_pb2 as pb
        from streamcell.v1 import predictor_pb2_grpc as pb_grpc

        yhat = [0.5] * INPUT

        def reply(k: int) -> pb.Prediction:
            return pb.Prediction(stream=f"s{k}", seq=k, yhat=yhat, model="m", version="v", events=k)

        replies: dict[int, pb.PredictionBatch] = {}
        single = reply(1)

        class Echo(pb_grpc.PredictorServicer):
            def Predict(self, request, context):  # type: ignore[no-untyped-def]
                return single

            def PredictBatch(self, request, context):  # type: ignore[no-untyped-def]
                n = len(request.events)
                if n not in replies:
                    replies[n] = pb.PredictionBatch(predictions=[reply(k) for k in range(n)])
                return replies[n]

        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers),
            interceptors=[MetricsInterceptor(metrics)],
            options=[("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=settings.max_in_flight,
        )
        pb_grpc.add_PredictorServicer_to_server(Echo(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()

        def stop() -> None:
            server.stop(0).wait()

    print(port, flush=True)
    sys.stdin.read()
    stop()


class Server:
    def __init__(self, kind: str, registry: str, workers: int) -> None:
        cmd = [sys.executable, __file__, "--serve", kind, "--registry", registry]
        cmd += ["--workers", str(workers)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.target = f"127.0.0.1:{int(self.proc.stdout.readline())}"

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -------------------------------------------------------------------- load
async def _unary(target: str, concurrency: int, seconds: float, streams: int) -> dict[str, float]:
    import grpc

    from streamcell.v1 import event_pb2
    from streamcell.v1 import predictor_pb2 as pb
    from streamcell.v1 import predictor_pb2_grpc as pb_grpc

    rng = np.random.default_rng(0)
    xs = rng.normal(size=(streams, INPUT)).astype(np.float32).tolist()
    requests = [event_pb2.Event(stream=f"s{k}", x=xs[k]) for k in range(streams)]
    latencies: list[float] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PredictorStub(channel)
        for k in range(0, streams, 1000):  # every stream exists: measure the steady state
            await stub.PredictBatch(pb.EventBatch(events=requests[k : k + 1000]))
        for k in range(50):
            await stub.Predict(requests[k])
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            k = w
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                await stub.Predict(requests[k % streams])
                latencies.append(time.perf_counter() - t0)
                k += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {
        "calls_per_s": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


async def _batch(
    target: str, batch: int, seconds: float, streams: int, concurrency: int = 2
) -> dict[str, float]:
    import grpc

    from streamcell.v1 import event_pb2
    from streamcell.v1 import predictor_pb2 as pb
    from streamcell.v1 import predictor_pb2_grpc as pb_grpc

    rng = np.random.default_rng(1)
    requests = []
    for r in range(16):
        ids = rng.choice(streams, size=batch, replace=False)
        xs = rng.normal(size=(batch, INPUT)).astype(np.float32).tolist()
        events = [event_pb2.Event(stream=f"s{k}", seq=r, x=x) for k, x in zip(ids, xs, strict=True)]
        requests.append(pb.EventBatch(events=events))
    done = 0
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.PredictorStub(channel)
        for request in requests[:4]:
            await stub.PredictBatch(request)
        end = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal done
            k = w
            while time.perf_counter() < end:
                reply = await stub.PredictBatch(requests[k % len(requests)])
                done += len(reply.predictions)
                k += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    return {"events_per_s": done / elapsed}


def _make_registry(root: str) -> None:
    import torch

    from streamcell.core.checkpoint import ModelConfig, save_checkpoint
    from streamcell.core.model import StreamingLSTM

    torch.manual_seed(0)
    names = tuple(f"f{k}" for k in range(INPUT))
    zeros, ones = (0.0,) * INPUT, (1.0,) * INPUT
    config = ModelConfig(INPUT, HIDDEN, LAYERS, INPUT, names, names, zeros, ones, zeros, ones)
    save_checkpoint(root, "bench", StreamingLSTM(INPUT, HIDDEN, LAYERS, INPUT), config)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=16, help="server threads")
    parser.add_argument("--serve", choices=["streamcell", "echo"], help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.registry, args.workers)
        return 0

    print(f"machine: {os.cpu_count()} CPUs, {sys.platform}, python {sys.version.split()[0]}")
    print(f"model: input {INPUT}, hidden {HIDDEN}, {LAYERS} layers; {args.streams} streams")
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as registry:
        _make_registry(registry)
        for kind in ("echo", "streamcell"):
            server = Server(kind, registry, args.workers)
            try:
                r = results[kind] = {}
                for c in (1, 8, 32):
                    r[f"unary c={c}"] = asyncio.run(
                        _unary(server.target, c, args.seconds, args.streams)
                    )
                for b in (1, 100, 1000):
                    r[f"batch {b}"] = asyncio.run(
                        _batch(server.target, b, args.seconds, args.streams)
                    )
            finally:
                server.close()

    print(f"load average after the run: {os.getloadavg()[0]:.2f} (other processes share the CPUs)")
    print()
    print("| measurement | streamcell | echo | streamcell / echo |")
    print("|---|---|---|---|")
    ours, echo = results["streamcell"], results["echo"]
    for c in (1, 8, 32):
        key = f"unary c={c}"
        for metric, unit in (("p50_ms", "ms"), ("p99_ms", "ms"), ("calls_per_s", "calls/s")):
            a, b = ours[key][metric], echo[key][metric]
            print(f"| Predict {metric.split('_')[0]} at concurrency {c} | {a:,.2f} {unit} "
                  f"| {b:,.2f} {unit} | {a / b:.2f} |")  # fmt: skip
    for b in (1, 100, 1000):
        key = f"batch {b}"
        x, y = ours[key]["events_per_s"], echo[key]["events_per_s"]
        print(
            f"| PredictBatch at batch {b} | {x:,.0f} events/s | {y:,.0f} events/s | {x / y:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

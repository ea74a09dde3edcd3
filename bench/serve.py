"""Latency and throughput of `imf serve` against calling the network directly in one process.

  direct  imf_core's Generator.images in this process: for c clients, one call of c images (the batch a
          perfect server would form), so every client waits the whole call
  serve   the Serve application of `imf serve` (pipelines/serve) on a local Ray instance: one generator
          replica, requests of one image each (a new seed each) sent back to back over HTTP by c client
          threads with keep-alive connections; batches form across clients

Levels are interleaved over repeats; the table gives the median of the repeats' percentiles and rates. The
model is a randomly initialised network on pixels (nothing is downloaded).

  CPU:  OMP_NUM_THREADS=1 python bench/serve.py --model Tiny/2 --input-size 32 --clients 1,8,32
"""

import argparse
import concurrent.futures
import http.client
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from common import randomize
from imf_core import build_model, load_generator, save_generator

PIXELS = {"codec": "pixels", "weights": "", "channels": 3, "channel_mean": [0.0] * 3, "channel_std": [1.0] * 3}
GUIDANCE = {"omega": 2.0, "t_min": 0.2, "t_max": 0.8, "steps": 1}


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Tiny/2")
    p.add_argument("--input-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--clients", default="1,8,32")
    p.add_argument("--requests", type=int, default=4, help="requests per client per repeat (at least 32 in all)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--format", default="npz", choices=("npz", "png", "json"))
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-wait-ms", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads in this process (a replica of 1 CPU "
                   "gets 1 from Ray)")
    return p.parse_args()


def model_folder(args, folder) -> Path:
    torch.manual_seed(0)
    net = randomize(build_model(args.model, input_size=args.input_size, in_channels=3, num_classes=args.num_classes))
    size = args.input_size
    return save_generator(folder, net, PIXELS, (3, size, size), size, args.num_classes, guidance=GUIDANCE)


def direct(generator, clients: int, calls: int) -> tuple[list[float], float]:
    """Latencies (s) and images/s of `calls` calls of `clients` images each."""
    latencies, start = [], time.perf_counter()
    for k in range(calls):
        t = time.perf_counter()
        generator.images(list(range(k * clients, (k + 1) * clients)), [0] * clients,
                         [i % generator.num_classes for i in range(clients)])
        latencies.append(time.perf_counter() - t)
    return latencies, calls * clients / (time.perf_counter() - start)


def served(port: int, clients: int, per_client: int, fmt: str, offset: int) -> tuple[list[float], float, float]:
    """Latencies (s), images/s and the mean network batch (images) of `clients` threads each sending
    `per_client` one-image requests."""
    def client(c):
        conn, out = http.client.HTTPConnection("127.0.0.1", port, timeout=300), []
        for k in range(per_client):
            body = json.dumps({"class": c % 10, "seeds": [offset + c * per_client + k], "format": fmt})
            t = time.perf_counter()
            conn.request("POST", "/", body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            assert reply.status == 200, reply.status
            out.append((time.perf_counter() - t, int(reply.headers["X-IMF-Batch-Images"])))
        conn.close()
        return out

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        answers = [x for part in pool.map(client, range(clients)) for x in part]
    rate = clients * per_client / (time.perf_counter() - start)
    return [t for t, _ in answers], rate, statistics.mean(b for _, b in answers)


def ceiling(port: int, clients: int, per_client: int) -> float:
    """Requests/s of GET / (the model's description): both hops of a request, no network call."""
    def client(_):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        for _ in range(per_client):
            conn.request("GET", "/")
            conn.getresponse().read()
        conn.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return clients * per_client / (time.perf_counter() - start)


def percentiles(latencies) -> list[float]:
    return [1000 * float(np.percentile(latencies, q)) for q in (50, 90, 99)]


def start_server(folder, args) -> int:
    from pipelines.runtime import start_ray
    from pipelines.serve.server import ServeSpec, start_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray runs its workers at niceness 15 and this process runs at 0: on a shared machine that alone would
    # favour the direct rows.
    os.environ.setdefault("RAY_worker_niceness", "0")
    start_ray(None)
    start_app(ServeSpec(model=str(folder), port=port, max_batch_size=args.max_batch_size,
                        max_images=min(32, args.max_batch_size), batch_wait_ms=args.batch_wait_ms))
    return port


def measure(args, generator, port, levels):
    rows = {c: {"direct": [], "serve": [], "batch": []} for c in levels}
    for repeat in range(args.repeats):
        for c in levels:
            per_client = max(args.requests, -(-32 // c))
            lat, rate = direct(generator, c, max(2, per_client))
            rows[c]["direct"].append((percentiles(lat), rate))
            lat, rate, batch = served(port, c, per_client, args.format, offset=(repeat * 100 + c) * 10_000)
            rows[c]["serve"].append((percentiles(lat), rate))
            rows[c]["batch"].append(batch)
    return rows


def median_row(runs):
    return [statistics.median(r[0][q] for r in runs) for q in range(3)], statistics.median(r[1] for r in runs)


def main():
    args = parse()
    torch.set_num_threads(args.threads)
    levels = [int(c) for c in args.clients.split(",")]
    folder = model_folder(args, Path(tempfile.mkdtemp(prefix="imf_bench_serve_")) / "model")
    generator = load_generator(folder, "cpu")
    port = start_server(folder, args)
    served(port, 4, 4, args.format, offset=10**9)  # warm-up: first batches, connections
    direct(generator, 4, 2)
    rows = measure(args, generator, port, levels)
    print(f"{args.model} at {args.input_size}px ({args.num_classes} classes), format {args.format}, "
          f"max batch {args.max_batch_size}, wait {args.batch_wait_ms} ms, {args.repeats} repeats, "
          f"{os.cpu_count()} CPUs\n")
    print("| clients | direct p50 / p90 / p99 ms | direct img/s | serve p50 / p90 / p99 ms | serve img/s "
          "| serve / direct img/s | mean batch (images) |")
    print("|---|---|---|---|---|---|---|")
    summary = {}
    for c in levels:
        (dp, dr), (sp, sr) = median_row(rows[c]["direct"]), median_row(rows[c]["serve"])
        summary[c] = (dp, dr, sp, sr)
        print(f"| {c} | {dp[0]:.1f} / {dp[1]:.1f} / {dp[2]:.1f} | {dr:.1f} | {sp[0]:.1f} / {sp[1]:.1f} / {sp[2]:.1f} "
              f"| {sr:.1f} | {sr / dr:.2f} | {statistics.median(rows[c]['batch']):.1f} |")
    if 1 in summary:
        print(f"\nsingle-client latency overhead (serve p50 - direct p50): "
              f"{summary[1][2][0] - summary[1][0][0]:.1f} ms "
              "(target <= 20 ms)")
    top = max(levels)
    print(f"throughput at {top} clients: serve / direct batched = {summary[top][3] / summary[top][1]:.2f} "
          "(target >= 0.7)")
    rates = [ceiling(port, top, max(args.requests, -(-32 // top))) for _ in range(args.repeats)]
    print(f"Serve alone (GET /: proxy, ingress and generator replica, no network) at {top} clients: "
          f"{statistics.median(rates):.1f} requests/s")
    from ray import serve

    from pipelines.serve.server import ServeSpec

    serve.delete(ServeSpec.name)  # as `imf serve` ends: serve.shutdown() kills the controller mid-call


if __name__ == "__main__":
    main()

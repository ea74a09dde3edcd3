"""Encode throughput: `imf encode` through Ray Data versus a bare loop over the same files.

Both sides use the same code (decode_shard, write_encoded_shard), the same codec, shards and
decode parallelism: the bare loop decodes shards in a process pool of --workers and runs one
codec replica in the main process; the Ray side gets --workers CPUs for decode tasks plus
one codec actor. Prints images/s of each and the ratio Ray / bare (target >= 0.9). A third row reads
the same images from, and writes the shards to, a bucket on a local S3 server (moto's, over HTTP on
127.0.0.1): the cost of the object-storage path beside the local one (--no-s3 skips it).
    python bench/encode.py                                   # CPU, pixel codec, synthetic JPEGs
    python bench/encode.py --codec sd-vae --resolution 256   # SD-VAE architecture (random weights)
Without --images it writes a synthetic class-folder tree of JPEGs of mixed sizes.
"""

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from imf_core.codecs import codec_from_description
from pipelines.data.encode import plan_encode, run_encode, write_encoded_shard
from pipelines.data.sources import decode_shard
from pipelines.runtime import start_ray


def synthetic_tree(root: Path, count: int, size: int, classes: int = 10, seed: int = 0):
    """Smooth random JPEGs (short side `size`, various aspect ratios) in `classes` folders."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / f"class{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = (int(size * rng.uniform(1.0, 1.5)), size) if i % 2 else (size, int(size * rng.uniform(1.0, 1.5)))
        coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        coarse.resize((w, h), Image.BICUBIC).save(folder / f"{i:06d}.jpg", quality=90)


def sd_vae_architecture(path: Path) -> str:
    """SD-VAE's architecture (diffusers AutoencoderKL defaults of SD 1.x) with random weights: same cost."""
    from diffusers import AutoencoderKL

    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256).save_pretrained(path)
    return str(path)


def _decode_job(job):
    source, resolution, shard, paths, where, indices, labels = job
    return shard, decode_shard(source, paths, where, indices, labels, resolution)


def bare_loop(plan, workers: int, batch_size: int, dtype: str) -> tuple:
    """A process pool decoding shards, feeding one codec in this process.
    -> (images, seconds, (seconds, images) when the first shard was written)."""
    start = time.time()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    codec = codec_from_description(plan.codec, device, dtype=getattr(torch, dtype))
    jobs = []
    for k in range(plan.num_shards):
        index = range(k * plan.shard_size, min((k + 1) * plan.shard_size, len(plan.files)))
        jobs.append((plan.source, plan.resolution, k, [plan.files[i][0] for i in index],
                     [plan.where[i] for i in index], list(index), [plan.files[i][1] for i in index]))
    encoded, first = 0, None
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for shard, decoded in pool.imap(_decode_job, jobs):
            encoded += write_encoded_shard(codec, plan.out, plan.shard_meta(), shard, decoded, batch_size)
            first = first or (time.time() - start, encoded)
    if device == "cuda":
        torch.cuda.synchronize()
    return encoded, time.time() - start, first


def steady_rate(images: int, seconds: float, first: tuple) -> float:
    """images/s after the first shard was written: the rate a long job runs at, start-up excluded."""
    return (images - first[1]) / max(seconds - first[0], 1e-9)


def s3_run(images: Path, args, vae) -> tuple:
    """The same encode with --images and --out in a bucket of a local S3 server (moto, HTTP on 127.0.0.1).
    The upload is not timed; the listing, the reads and the shard writes are. -> (images, seconds, first)."""
    import os

    from tests.s3_server import S3Server

    server = S3Server()
    os.environ["AWS_ENDPOINT_URL"] = server.endpoint
    try:
        bucket = server.bucket("bench")
        server.upload(images, f"{bucket}/images")
        start = time.time()
        plan = plan_encode(f"{bucket}/images", f"{bucket}/latents", codec=args.codec, vae=vae,
                           resolution=args.resolution, shard_size=args.shard_size)
        listed = time.time() - start
        summary = run_encode(plan, actors=1, batch_size=args.batch_size, dtype=args.dtype)
        print(f"  (S3: listing {len(plan.files)} objects took {listed:.2f} s, not in the row below)")
        return summary["encoded_this_run"], summary["seconds"], summary["first_shard"]
    finally:
        server.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", default=None, help="a class-folder tree (default: synthetic JPEGs)")
    parser.add_argument("--count", type=int, default=8000, help="synthetic images")
    parser.add_argument("--source-size", type=int, default=320, help="short side of the synthetic images")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--codec", choices=["pixels", "sd-vae"], default="pixels")
    parser.add_argument("--vae", default=None, help="sd-vae weights (default: SD-VAE architecture, random weights)")
    parser.add_argument("--workers", type=int, default=2, help="decode processes (bare) = decode CPUs (Ray)")
    parser.add_argument("--shard-size", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-s3", action="store_true", help="skip the row through a local S3 server")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="imf_bench_encode_"))
    try:
        images = Path(args.images) if args.images else scratch / "images"
        if not args.images:
            synthetic_tree(images, args.count, args.source_size)
        vae = args.vae or (sd_vae_architecture(scratch / "vae") if args.codec == "sd-vae" else None)

        def plan(name):
            return plan_encode(images, scratch / name, codec=args.codec, vae=vae, resolution=args.resolution,
                               shard_size=args.shard_size)

        if not args.no_s3:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/s3_server.py
            from tests.s3_server import use_test_keys

            use_test_keys()  # fake keys for the local server, before Ray starts its workers with this environment
        gpu = torch.cuda.is_available()
        # The codec actor takes 1 CPU beside its GPU, or 2 CPUs without one (see encode.actor_pool).
        start_ray(None, num_cpus=args.workers + (1 if gpu else 2), object_store_bytes=2 << 30)
        warm = plan_encode(images, scratch / "warmup", codec=args.codec, vae=vae, resolution=args.resolution,
                           shard_size=max(1, args.shard_size // 4))
        warm.files = warm.files[: 2 * warm.shard_size]  # starts Ray's worker processes, as on a running cluster
        run_encode(warm, actors=1, batch_size=args.batch_size, dtype=args.dtype)

        bare = plan("bare")
        bare_run = bare_loop(bare, args.workers, args.batch_size, args.dtype)
        summary = run_encode(plan("ray"), actors=1, batch_size=args.batch_size, dtype=args.dtype)
        ray_run = summary["encoded_this_run"], summary["seconds"], summary["first_shard"]
        rows = [("bare loop (process pool + codec)", bare_run), ("Ray Data (imf encode)", ray_run)]
        if not args.no_s3:
            rows.append(("Ray Data, S3 in and out (moto)", s3_run(images, args, vae)))
        print(f"\nencode {len(bare.files)} images, codec {args.codec}, {args.resolution} px, {args.workers} decode "
              f"workers, 1 codec replica on {'GPU' if gpu else 'CPU'}")
        print(f"{'':34s} {'images/s':>9s} {'seconds':>8s} {'1st shard at s':>15s} {'images/s after':>15s}")
        for name, (n, seconds, first) in rows:
            after = steady_rate(n, seconds, first)
            print(f"  {name:32s} {n / seconds:9.1f} {seconds:8.1f} {first[0]:15.1f} {after:15.1f}")
        ratio = (ray_run[0] / ray_run[1]) / (bare_run[0] / bare_run[1])
        steady = steady_rate(*ray_run) / steady_rate(*bare_run)
        print(f"  ratio Ray / bare: {ratio:.3f} whole run (start-up included, mostly the codec actor's process and "
              f"imports), {steady:.3f} after the first shard   (target >= 0.9)")
        if len(rows) > 2:
            s3 = rows[2][1]
            print(f"  ratio S3 / local (Ray Data): {(s3[0] / s3[1]) / (ray_run[0] / ray_run[1]):.3f} whole run, "
                  f"{steady_rate(*s3) / steady_rate(*ray_run):.3f} after the first shard")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()

"""The Serve application of `imf serve`: an HTTP ingress in front of a batched, replicated generator.

    HTTP proxy ──▶ ImageIngress    the HTTP API (api.py, FastAPI): checks the request (schema.py), encodes the
                       │           answer (responses.py), serves the playground page and /openapi.json;
                       │           gathers the requests that arrive while its calls are out into one call
                       │           (gather.py: a Ray call per request costs as much CPU as a small batch);
                       │           a call whose replica died is sent again (Serve replaces the replica)
                       ▼
                   ImageGenerator  one replica per GPU when the cluster has them (or --num-replicas auto:
                                   autoscaled on the calls it holds); class names and guidance defaults of the
                                   version it serves, then serve.batch across calls: one Generator.images
                                   call per batch (at most --max-batch-size images, waiting --batch-wait-ms)

`app_builder` is the same application for a Serve config file (KubeRay's RayService): its `args` are AppSpec's
fields.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, fields

import numpy as np
from ray import serve

from ..data.images import as_rgb_uint8
from ..errors import UserError
from .gather import Gatherer
from .spec import QUIET, AppSpec
from .versions import follows, load_served, pointed_label

logger = logging.getLogger("ray.serve")
RETRIES = 4  # calls per request when replicas die under it
CALLS_PER_REPLICA = 2  # generator calls an ingress keeps out per replica: one running, one gathering the next batch


@dataclass
class Rows:
    """A checked request on its replica: the version it is answered by and one label per image."""
    served: object
    labels: list
    seeds: list
    indices: list
    guidance: dict


def make_images(batch: list[Rows]) -> list[dict]:
    """One Generator.images call per (version, steps) group of the batch; the answer of each request."""
    groups = {}
    for k, rows in enumerate(batch):
        groups.setdefault((id(rows.served), rows.guidance["steps"]), []).append(k)
    out = [None] * len(batch)
    for (_, steps), members in groups.items():
        part = [batch[k] for k in members]

        def column(get, dtype=None, part=part):
            values = [v for rows in part for v in get(rows)]
            return values if dtype is None else np.asarray(values, dtype)

        per_image = {key: column(lambda r, key=key: [r.guidance[key]] * len(r.seeds), np.float32)
                     for key in ("omega", "t_min", "t_max")}
        images = as_rgb_uint8(part[0].served.generator.images(
            column(lambda r: r.seeds), column(lambda r: r.indices), column(lambda r: r.labels), steps=steps,
            batch_size=max(1, sum(len(r.seeds) for r in part)), **per_image))
        start = 0
        for k, rows in zip(members, part):
            n = len(rows.seeds)
            out[k] = {"images": images[start:start + n].copy(), "labels": rows.labels, "seeds": rows.seeds,
                      "indices": rows.indices, "guidance": rows.guidance, "model_version": rows.served.label,
                      "batch_requests": len(part), "batch_images": len(images)}
            start += n
    return out


@serve.deployment(name="ImageGenerator", logging_config=QUIET)
class ImageGenerator:
    def __init__(self, spec: dict):
        self.spec = AppSpec(**spec)
        self.served = load_served(self.spec.model, self.spec.tracking_uri)
        self.follow, self.checked, self.refreshing = follows(self.spec.model), time.monotonic(), None
        self.busy, self.idle = False, asyncio.Event()
        self.run_batch.set_max_batch_size(self.spec.max_batch_size)
        self.run_batch.set_batch_wait_timeout_s(self.spec.batch_wait_ms / 1000)

    async def info(self) -> dict:
        self._maybe_refresh()
        return self.served.info()

    async def generate(self, requests: list[dict]) -> list[dict]:
        """The images of each checked request (its schema rows()), or {"error": why}."""
        self._maybe_refresh()
        served, checked = self.served, []
        for request in requests:
            try:
                checked.append(Rows(served, served.labels(request["classes"]), request["seeds"], request["indices"],
                                    served.guidance(request["guidance"])))
            except (UserError, ValueError) as err:
                checked.append({"error": str(err)})
        # important: serve.batch closes a batch --batch-wait-ms after its first request even while the previous
        # one still runs; held here instead, the requests that came in meanwhile form the next batch together.
        while self.busy:
            await self.idle.wait()
        done = iter(await asyncio.gather(*(self.run_batch(rows) for rows in checked if isinstance(rows, Rows))))
        return [rows if isinstance(rows, dict) else next(done) for rows in checked]

    @serve.batch(batch_size_fn=lambda batch: sum(len(rows.seeds) for rows in batch))
    async def run_batch(self, batch: list[Rows]) -> list[dict]:
        self.busy = True
        self.idle.clear()
        try:
            return await asyncio.to_thread(make_images, batch)  # the event loop keeps taking requests
        finally:
            self.busy = False
            self.idle.set()

    def _maybe_refresh(self):
        if self.follow and self.refreshing is None and time.monotonic() - self.checked >= self.spec.poll_seconds:
            self.checked = time.monotonic()
            self.refreshing = asyncio.get_running_loop().create_task(self._refresh())

    async def _refresh(self):
        try:
            label = await asyncio.to_thread(pointed_label, self.spec.model, self.spec.tracking_uri)
            if label != self.served.label:
                self.served = await asyncio.to_thread(load_served, self.spec.model, self.spec.tracking_uri)
                logger.warning("imf serve: %s now points at %s", self.spec.model, self.served.label)
        except Exception as err:  # noqa: BLE001 - a registry hiccup keeps the version being served
            logger.warning("imf serve: could not check %s (%s); still serving %s", self.spec.model, err,
                           self.served.label)
        finally:
            self.checked, self.refreshing = time.monotonic(), None


@serve.deployment(name="ImageIngress", logging_config=QUIET)
@serve.ingress()
class ImageIngress:
    def __init__(self, generator, max_images: int, max_batch_size: int, in_flight: int):
        self.generator, self.max_images = generator, max_images
        self.gatherer = Gatherer(lambda requests: self._call("generate", requests), in_flight, max_batch_size,
                                 items=lambda request: len(request["seeds"]))

    def __serve_build_asgi_app__(self):
        from .api import build_api

        return build_api(self, self.max_images)

    async def images(self, rows: dict) -> dict:
        return await self.gatherer.submit(rows)

    async def info(self) -> dict:
        return await self._call("info")

    async def _call(self, method: str, *args):
        from ray.exceptions import RayActorError

        for attempt in range(RETRIES):
            try:
                return await getattr(self.generator, method).remote(*args)
            except RayActorError:  # the replica died with this request on it: Serve starts another
                if attempt == RETRIES - 1:
                    raise
                logger.warning("imf serve: a generator replica died; sending its requests again")
                await asyncio.sleep(0.2 * (attempt + 1))


def generator_options(spec: AppSpec, cluster_gpus: float) -> dict:
    """ImageGenerator's deployment options: replicas (fixed or autoscaled), CPUs and GPUs per replica."""
    gpus = spec.gpus_per_replica if spec.gpus_per_replica is not None else (1 if cluster_gpus > 0 else 0)
    options = {"ray_actor_options": {"num_cpus": spec.cpus_per_replica, "num_gpus": gpus},
               "max_ongoing_requests": 2 * spec.max_batch_size}
    if str(spec.num_replicas) == "auto":
        options["autoscaling_config"] = {
            "min_replicas": spec.min_replicas, "max_replicas": spec.max_replicas,
            "target_ongoing_requests": spec.target_ongoing_requests or CALLS_PER_REPLICA}
        if spec.upscale_delay_s is not None:
            options["autoscaling_config"]["upscale_delay_s"] = spec.upscale_delay_s
    else:
        options["num_replicas"] = int(spec.num_replicas)
    return options


def build_app(spec: AppSpec):
    import ray

    spec.check()
    gpus = ray.cluster_resources().get("GPU", 0) if ray.is_initialized() else 0
    app = {f.name: getattr(spec, f.name) for f in fields(AppSpec)}  # spec may be a ServeSpec
    options = generator_options(spec, gpus)
    generator = ImageGenerator.options(**options).bind(app)
    replicas = options.get("num_replicas") or options["autoscaling_config"]["max_replicas"]
    return ImageIngress.options(num_replicas=spec.ingress_replicas, max_ongoing_requests=1024,
                                ray_actor_options={"num_cpus": 0.5}).bind(
        generator, spec.max_images, spec.max_batch_size, in_flight=CALLS_PER_REPLICA * replicas)


def app_builder(args: dict):
    """The application for a Serve config file: `import_path: pipelines.serve.app:app_builder`, `args`: AppSpec."""
    names = {f.name for f in fields(AppSpec)}
    unknown = sorted(set(args) - names)
    if unknown or "model" not in args:
        raise UserError(f"Serve args {unknown or 'without model'}: the args are {', '.join(sorted(names))} "
                        "(model is required)")
    return build_app(AppSpec(**args))

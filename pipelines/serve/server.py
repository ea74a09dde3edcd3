"""`imf serve`: start the Serve application (app.py) on a local Ray instance or the given cluster.

    imf serve --model models:/NAME@champion                   # http://127.0.0.1:8000/, Ctrl-C stops it
    curl -s 127.0.0.1:8000/ -d '{"class": 3, "count": 4}' -o grid.png
    curl -s 127.0.0.1:8000/openapi.json                        # the contract; a browser at / gets a playground
    imf serve --model models:/NAME@champion --address auto --num-replicas auto --max-replicas 8 --detach

The HTTP proxy binds 127.0.0.1 unless --host says otherwise; the endpoint has no authentication.
"""

import logging
import time
from dataclasses import dataclass, replace

from ..errors import UserError
from .schema import FORMATS
from .spec import QUIET, AppSpec


@dataclass
class ServeSpec(AppSpec):
    """`imf serve`: the application (AppSpec) and where it listens."""
    address: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    name: str = "imf"
    detach: bool = False

    def check(self):
        super().check()
        if not 0 < self.port < 65536:
            raise UserError(f"--port {self.port}: a TCP port 1..65535")
        if not self.route_prefix.startswith("/"):
            raise UserError(f"--route-prefix {self.route_prefix!r} must start with /")
        if self.detach and self.address in (None, "", "local"):
            raise UserError("--detach needs --address (a cluster that outlives this command): a local Ray "
                            "instance stops with imf serve")


def start_app(spec: ServeSpec) -> tuple[str, str]:
    """Deploy the application (the model is checked before Ray starts); returns its URL and the version served."""
    from ray import serve

    from ..runtime import start_ray
    from .app import build_app
    from .versions import check_reference

    spec.check()
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up lines would read as problems
    label, uri = check_reference(spec.model, spec.tracking_uri)
    spec = replace(spec, tracking_uri=uri, model=label if not spec.model.startswith("models:/") else spec.model)
    start_ray(spec.address)
    serve.start(http_options={"host": spec.host, "port": spec.port}, logging_config=QUIET)
    try:
        serve.run(build_app(spec), name=spec.name, route_prefix=spec.route_prefix, logging_config=QUIET)
    except RuntimeError as err:  # Serve's message ends with the replica's error, after its traceback
        lines = [line for line in str(err).splitlines() if line.strip()]
        raise UserError(f"the Serve application {spec.name!r} did not start: {lines[-1] if lines else err} "
                        "(the replica logs under the Ray session folder have the rest)") from err
    return f"http://{spec.host}:{spec.port}{spec.route_prefix}", label


def run_serve(spec: ServeSpec) -> int:
    url, label = start_app(spec)
    print(f"imf serve: {spec.model} ({label}) at {url}  (a page for a browser; POST JSON {{class, count | seeds | "
          f"indices, seed, omega, t_min, t_max, steps, format: {'|'.join(FORMATS)}}}; the API: {url.rstrip('/')}"
          "/openapi.json)", flush=True)
    if spec.detach:
        print(f"imf serve: left running on the cluster; stop it with `serve delete {spec.name}` "
              "(or `serve shutdown`)")
        return 0
    from ray import serve

    try:  # until Ctrl-C or SIGTERM (runtime.Stopped), a service manager's stop
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(spec.name)
        print("imf serve: stopped", flush=True)
    return 0


def register(steps):
    from ..cli import add_shared_flags, spec_from_args

    p = steps.add_parser("serve", help="answer HTTP requests for images (Ray Serve, dynamic batching)")
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS (followed when the alias moves), "
                   "models:/NAME/VERSION, or a model folder")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy binds (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--route-prefix", default="/")
    p.add_argument("--name", default="imf", help="the Serve application's name")
    p.add_argument("--max-batch-size", type=int, default=32, help="images per network call across requests")
    p.add_argument("--batch-wait-ms", type=float, default=1.0, help="how long a batch waits for more requests")
    p.add_argument("--max-images", type=int, default=32, help="images per request at most")
    p.add_argument("--num-replicas", default="1", help="generator replicas: a number, or auto (autoscaled)")
    p.add_argument("--min-replicas", type=int, default=1, help="with --num-replicas auto")
    p.add_argument("--max-replicas", type=int, default=4, help="with --num-replicas auto")
    p.add_argument("--target-ongoing-requests", type=float, default=None,
                   help="with --num-replicas auto: calls per replica to scale at (a call: the requests an "
                        "ingress gathered; default 2, one running and one gathering)")
    p.add_argument("--upscale-delay-s", type=float, default=None,
                   help="with --num-replicas auto: seconds of load above the target before a replica is added "
                        "(default Serve's, 30)")
    p.add_argument("--gpus-per-replica", type=float, default=None, help="default 1 when the cluster has GPUs")
    p.add_argument("--cpus-per-replica", type=float, default=1.0)
    p.add_argument("--ingress-replicas", type=int, default=1, help="HTTP ingress replicas")
    p.add_argument("--poll-seconds", type=float, default=10.0,
                   help="how often (on a request) replicas check where the alias points")
    p.add_argument("--detach", action="store_true", help="return once deployed (with --address)")
    add_shared_flags(p, address=True, tracking=lambda args: str(args.model).startswith("models:/"))
    p.set_defaults(func=lambda args: run_serve(spec_from_args(ServeSpec, args)), service=True)  # a stop is status 0

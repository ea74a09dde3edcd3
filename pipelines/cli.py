"""The `imf` command line: one sub-command per pipeline step.

STEPS lists the steps' modules in pipeline order. Each has `register(steps)`, which adds its parser
(the flags every step shares come from `add_shared_flags`) and sets `func`: a function of the parsed
arguments that builds the step's typed spec and runs it. A new step is one module and one line here.
Steps of other installed packages (the `tune` package) join through the `imf.commands` entry-point
group; a `register.after` attribute names the STEPS module they follow in the help.
"""

import argparse
import sys
from importlib import import_module
from importlib.metadata import entry_points

from .errors import UserError

STEPS = [
    "pipelines.data.digits",        # imf data
    "pipelines.data.encode",        # imf encode
    "pipelines.train.driver",       # imf train
    "pipelines.models.registry",    # imf models
    "pipelines.generate.sample",    # imf sample
    "pipelines.evaluation.evaluate",  # imf evaluate
    "pipelines.serve.server",       # imf serve
    "pipelines.ops.jobs",           # imf submit, imf jobs
    "pipelines.ops.demo",           # imf demo
]
ADDRESS_HELP = ("Ray cluster: auto (the cluster this machine is part of) or ray://HOST:10001; "
                "default a new local instance")
TRACKING_HELP = "MLflow tracking URI, e.g. http://mlflow:5000; default a local store (SQLite) under ./mlruns"


def add_shared_flags(parser, *, address=False, tracking=False, storage=None):
    """The flags that mean the same in every step, defined once.

    address: True (the step runs on Ray) or "unused" (accepted so that every step takes it).
    tracking: False, True (the step always reads or writes MLflow), or a function(args) -> bool telling
      whether this run, without --tracking-uri, would use the local store (`imf submit` refuses those).
    storage: the default of --storage (checkpoints: a local folder or a URI), or None for no flag.
    Every step takes --endpoint-url: the S3-compatible server its s3:// paths live on (storage.py).
    """
    parser.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// paths, e.g. "
                        "http://minio:9000 (default $AWS_ENDPOINT_URL, else AWS); keys come from the environment")
    if address:
        parser.add_argument("--address", default=None, help=ADDRESS_HELP if address is True else
                            "accepted like every step's; this step does not use Ray")
    if tracking:
        parser.add_argument("--tracking-uri", default=None, help=TRACKING_HELP)
        parser.set_defaults(uses_local_store=tracking if callable(tracking) else (lambda args: True))
    if storage is not None:
        parser.add_argument("--storage", default=storage, help="where checkpoints go: a local folder or a URI "
                            f"such as s3://bucket/runs (default {storage})")


def spec_from_args(spec_type, args):
    """A step's typed spec (a dataclass) from the parsed flags of the same names."""
    from dataclasses import fields

    return spec_type(**{f.name: getattr(args, f.name) for f in fields(spec_type) if hasattr(args, f.name)})


def _plugins():
    found = []
    for ep in entry_points(group="imf.commands"):
        try:
            found.append(ep.load())
        except ModuleNotFoundError as err:
            if not (err.name and ep.value.startswith(err.name)):
                raise  # a missing module inside an installed step is a real error
    return found


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the whole usage of a step fills a screen)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="imf", description="improved MeanFlow: encode, train, tune, sample, evaluate")
    steps = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    plugins = _plugins()
    for module in STEPS:
        import_module(module).register(steps)
        for register in [p for p in plugins if getattr(p, "after", None) == module]:
            register(steps)
            plugins.remove(register)
    for register in plugins:
        register(steps)
    return parser


def main(argv=None):
    from .runtime import stop_on_sigterm

    stop_on_sigterm()
    args = build_parser().parse_args(argv)
    if getattr(args, "endpoint_url", None):  # read by storage.Location; Ray workers get it with each Location
        import os

        os.environ["AWS_ENDPOINT_URL"] = args.endpoint_url
    try:
        status = args.func(args)
    except (UserError, ValueError, OSError) as err:  # OSError: a file the step could not read or write
        print(f"imf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        return stopped(args, stop, exit_on_next=argv is None)  # argv None: the `imf` process itself
    return status if isinstance(status, int) else 0  # a step's run may return its summary


def stopped(args, stop: KeyboardInterrupt, exit_on_next: bool) -> int:
    """Ctrl-C (SIGINT) or SIGTERM ended the step: one line, and 130 / 143 (0 for a service asked to stop). With
    exit_on_next, a second signal while Ray shuts down ends the process at once (Ray's own processes end with it)."""
    import os
    import signal

    from .runtime import Stopped

    sigterm = isinstance(stop, Stopped)
    status = 0 if getattr(args, "service", False) else 143 if sigterm else 130
    hint = getattr(args, "on_stop", None)
    print(f"imf {args.command}: stopped ({'SIGTERM' if sigterm else 'Ctrl-C'}){f'; {hint}' if hint else ''}",
          file=sys.stderr, flush=True)
    for signum in (signal.SIGINT, signal.SIGTERM) if exit_on_next else ():
        signal.signal(signum, lambda *_: os._exit(status))
    return status


if __name__ == "__main__":
    sys.exit(main())

"""The `imf` command line.

Each step registers itself through the `imf.commands` entry-point group (see
pyproject.toml) with a `register(subparsers)` function that adds its parser and
sets `func`. A step whose module is not installed is left out of the help.
"""

import argparse
import sys
from importlib.metadata import entry_points

from .errors import UserError

ORDER = ["data", "encode", "train", "tune", "models", "sample", "evaluate", "submit", "jobs", "demo"]


def _commands():
    found = {ep.name: ep for ep in entry_points(group="imf.commands")}
    return [found[name] for name in sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imf", description="improved MeanFlow: encode, train, tune, sample, evaluate")
    steps = parser.add_subparsers(dest="command", required=True, metavar="STEP")
    for ep in _commands():
        try:
            register = ep.load()
        except ModuleNotFoundError as err:
            if err.name and ep.value.startswith(err.name):
                continue  # that step is not part of this installation
            raise
        register(steps)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except (UserError, ValueError, FileNotFoundError, NotADirectoryError) as err:
        print(f"imf {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imf {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())

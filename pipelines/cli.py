"""The `imf` command line."""

import argparse
import sys
from pathlib import Path


def _demo(args):
    from .demo import run_core_demo

    run_core_demo(Path(args.out), seconds=args.seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imf", description="improved MeanFlow: encode, train, sample, evaluate")
    steps = parser.add_subparsers(dest="command", required=True)

    demo = steps.add_parser("demo", help="train a small model on the embedded dataset and write sample grids")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--seconds", type=float, default=90.0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"imf {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

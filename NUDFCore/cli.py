"""The ``nudf`` command line: ``nudf --help`` and ``nudf <command> --help`` are the documentation.

Each subcommand has an ``_add_<name>(subparsers)`` that defines its arguments and a ``_run_<name>(args)``
that does the work by calling the library; the library raises typed :class:`NUDFError` s for user
mistakes, which :func:`main` prints as one clear line (exit code 2) instead of a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import __version__
from .errors import NUDFError

EPILOG = (
    "Coordinates are millimetres. Files (CT, meshes) are in LPS unless a --frame option says otherwise; "
    "Slicer shows RAS (x and y negated)."
)


# ------------------------------------------------------------------------------------------ phantom
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "phantom",
        help="generate synthetic cardiac CTA phantoms with exact LAA ground truth",
        description="Generate synthetic contrast-enhanced cardiac CT cases, each with an exact open LAA "
        "surface mesh (cut at the ostium) and metadata. A folder of cases is a training dataset.",
        epilog=EPILOG,
    )
    p.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per case)")
    p.add_argument("--count", type=int, default=1, help="number of cases (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed; case i uses seed+i (default: 0)")
    p.set_defaults(func=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    raise NUDFError("phantom generation is not implemented yet")


# ------------------------------------------------------------------------------------------ registry
_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_phantom]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nudf",
        description="NUDF Segmentation: segment the left atrial appendage (LAA) from cardiac CT as an open "
        "surface mesh with a Neural Unsigned Distance Field.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="<command>")
    for add in _COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except NUDFError as exc:
        print(f"nudf {getattr(args, 'command_name', '')}: error: {exc}".replace("  ", " "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nudf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

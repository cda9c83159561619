"""The ``skyinfer`` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``add_parser(subparsers)`` which registers its
parser and sets ``func`` to a callable ``(args) -> int``. Only :func:`main`
turns errors into exit codes: :class:`~skyinfer.errors.InputError` becomes a
one-line message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from skyinfer import __version__
from skyinfer.errors import InputError, SkyinferError

# Subcommand modules, in the order `skyinfer --help` lists them.
SUBCOMMANDS: tuple[str, ...] = (
    "skyinfer.cli.windows",
    "skyinfer.cli.plan",
    "skyinfer.cli.serve",
    "skyinfer.cli.agent",
    "skyinfer.cli.replay",
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors keep the exit code 2 and a one-line message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise SystemExit(f"{self.prog}: error: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skyinfer", description="Schedule and run ML inference on satellites in orbit.")
    parser.add_argument("--version", action="version", version=f"skyinfer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
            return EXIT_USAGE
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except InputError as exc:
        print(f"skyinfer {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SkyinferError as exc:
        print(f"skyinfer {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

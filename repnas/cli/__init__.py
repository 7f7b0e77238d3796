"""The ``repnas`` command line: a thin layer that parses arguments and calls the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module is
imported only when the command line is built, so ``import repnas`` stays light.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from repnas.errors import UserError

#: subcommand name -> module under ``repnas.cli`` that defines ``register(subparsers)``.
COMMANDS = {
    "describe": "describe",
    "train": "train",
    "search": "search",
    "export": "export",
    "report": "report",
    "table": "table",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (argparse prints usage + message)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"repnas: error: {message}\n")


def plain_text(docstring: str | None) -> str:
    """A help text from a module docstring: its first paragraph, without reST's double backticks
    (``--help`` is read in a terminal, not rendered)."""
    first = (docstring or "").strip().split("\n\n")[0]
    return re.sub(r"``(.*?)``", r"\1", " ".join(first.split()))


def build_parser() -> argparse.ArgumentParser:
    from repnas import __version__

    parser = OneLineErrorParser(prog="repnas", description=plain_text(__doc__))
    parser.add_argument("--version", action="version", version=f"repnas {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for module_name in COMMANDS.values():
        try:
            module = importlib.import_module(f"repnas.cli.{module_name}")
        except ModuleNotFoundError as exc:  # a command whose module is not written yet
            if exc.name != f"repnas.cli.{module_name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``repnas`` console script; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


def run_command(func, args: argparse.Namespace) -> int:
    """Run a command; every failure becomes one line and an exit code (docs/design.md, "Exit codes"):
    bad input (UserError, ValueError, OSError) 2, a failure of the machine (full disk, storage, GPU,
    a dead worker) 3, Ctrl-C or SIGTERM 130."""
    from repnas._infra import EXIT_INFRASTRUCTURE, EXIT_INTERRUPTED, EXIT_USAGE, describe, is_infrastructure

    try:
        return int(func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"repnas: {str(exc).splitlines()[0] if str(exc) else 'interrupted'}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if os.environ.get("REPNAS_DEBUG"):
            raise
        if is_infrastructure(exc):
            print(f"repnas: error: {describe(exc)}", file=sys.stderr)
            return EXIT_INFRASTRUCTURE
        if not isinstance(exc, (UserError, ValueError, OSError)):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"repnas: error: {message}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

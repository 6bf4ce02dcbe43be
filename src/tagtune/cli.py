"""Command line: each subcommand parses its arguments and calls ONE library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

EXIT_USER_ERROR = 2


def _selftest(a) -> int:
    from .selftest import run_selftest

    return run_selftest(a.fixture, verbose=a.verbose)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tagtune", description=__doc__ and "Teach IndexTTS 1.0/1.5 expressive tags.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("selftest", help="check this install against a parity fixture folder")
    s.add_argument("--fixture", type=Path, required=True,
                   help="folder with checkpoint/, inputs/, expected.safetensors, README.md")
    s.set_defaults(func=_selftest)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    from .errors import UserError

    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"tagtune {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"tagtune {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
